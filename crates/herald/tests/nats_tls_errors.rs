//! A JetStream spool whose NATS connection fails in TLS names the cause at the default log level: the warning
//! that NATS is not reachable says why connecting failed (a server certificate from another CA, a server that does
//! not speak TLS), not only that a request timed out, and so do the client's own connection events. The password
//! of `spool_nats_url` is not shown.
//!
//! Each test starts its own `nats-server` on a loopback port; without `nats-server` on PATH they are skipped with a
//! message (failing under `CI`).

mod support;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald_sim::Pki;
use herald_testkit::{free_port, nats};

const WAIT: Duration = Duration::from_secs(30);
const PASSWORD: &str = "s3cr3t-nats-pw";

/// A child process killed when dropped, so that a failed test leaves nothing running.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `nats-server` with JetStream that speaks only TLS, with the certificate of `pki`'s server (127.0.0.1);
/// returns once it takes connections.
fn tls_nats(dir: &Path, pki: &Pki) -> (Killed, u16) {
    let port = free_port();
    let log = std::fs::File::create(dir.join("nats-tls.log")).unwrap();
    let child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.join("nats-tls-store"))
        .arg("--tls")
        .arg("--tlscert")
        .arg(&pki.manifest.server_cert)
        .arg("--tlskey")
        .arg(&pki.manifest.server_key)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let server = Killed(child);
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nats-server with TLS did not take connections: {}",
            std::fs::read_to_string(dir.join("nats-tls.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (server, port)
}

/// Starts `herald serve` on a JetStream spool at `127.0.0.1:port` (with a password in the URL) that trusts only
/// `ca`, standard error into a file at the default level; returns it once ready, with that file.
fn herald(dir: &Path, port: u16, ca: &Path) -> (Killed, PathBuf) {
    let config = dir.join("herald.conf");
    std::fs::write(
        &config,
        format!(
            "spool_backend = jetstream\n\
             spool_nats_url = \"nats://herald:{PASSWORD}@127.0.0.1:{port}\"\n\
             spool_nats_tls_ca = \"{ca}\"\n\
             spool_nats_timeout = 1\n\
             spool_dir = \"{spool}\"\n\
             http_listener {{ listen \"127.0.0.1:0\" {{ }} }}\n",
            ca = ca.display(),
            spool = dir.join("spool").display(),
        ),
    )
    .unwrap();
    let (child, err_path) = support::serve_until_ready(&config, dir, "info");
    (Killed(child), err_path)
}

/// Waits until standard error holds a line with `want`; returns that line.
fn line_with(err_path: &Path, want: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(err_path).unwrap();
        if let Some(l) = text.lines().find(|l| l.contains(want)) {
            return l.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no line with {want:?} in:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The warning and the client's events name the cause; no line shows the password.
fn assert_cause_named(err_path: &Path, cause: &str) {
    let warning = line_with(err_path, "NATS JetStream");
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains(&format!("connecting failed: IO error: {cause}")),
        "{warning}"
    );
    let event = line_with(err_path, "client error");
    assert!(event.contains(cause), "{event}");
    let all = std::fs::read_to_string(err_path).unwrap();
    assert!(!all.contains(PASSWORD), "the password is shown:\n{all}");
}

/// A TLS server whose certificate comes from another CA than `spool_nats_tls_ca`: the warning says that the peer
/// certificate is invalid (here `BadSignature`: the two test CAs bear the same name).
#[test]
fn a_server_certificate_of_another_ca_is_named() {
    if !nats::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server_pki = Pki::generate(&dir.path().join("server-pki"), &[]).unwrap();
    let other_pki = Pki::generate(&dir.path().join("other-pki"), &[]).unwrap();
    let (_nats, port) = tls_nats(dir.path(), &server_pki);
    let (_herald, err_path) = herald(dir.path(), port, &other_pki.manifest.ca_cert);
    assert_cause_named(&err_path, "invalid peer certificate: ");
}

/// TLS required (`spool_nats_tls_ca`) of a server that does not speak it: the warning says what the TLS handshake
/// got instead, not only that a request timed out.
#[test]
fn tls_to_a_plaintext_server_is_named() {
    if !nats::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[]).unwrap();
    let plain = nats::single(dir.path());
    let (_herald, err_path) = herald(dir.path(), plain.port, &pki.manifest.ca_cert);
    let warning = line_with(&err_path, "NATS JetStream");
    assert!(warning.contains("connecting failed: "), "{warning}");
    let cause = warning
        .split("connecting failed: ")
        .nth(1)
        .unwrap_or_default();
    assert!(
        !cause.starts_with("IO error)") && !cause.starts_with("IO error;"),
        "a cause beyond the kind: {warning}"
    );
    let all = std::fs::read_to_string(&err_path).unwrap();
    assert!(!all.contains(PASSWORD), "the password is shown:\n{all}");
    eprintln!("{warning}");
}
