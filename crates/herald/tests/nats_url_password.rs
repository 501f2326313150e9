//! The password of `spool_nats_url` shows in no log line at any level: `herald serve` at debug level (and the NATS
//! client at trace level, which logs the CONNECT message it sends) names the NATS server it tries as
//! `nats://user:***@host:port`, never with the password as written.
//!
//! Those credentials are what herald connects with (the NATS client sends none a URL carries by itself).
//!
//! The test starts its own `nats-server` (JetStream, a user with a password) on a loopback port; without
//! `nats-server` on PATH it is skipped with a message (failing under `CI`).

mod support;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald_testkit::{free_port, nats};

const WAIT: Duration = Duration::from_secs(30);
const USER: &str = "herald";
const PASSWORD: &str = "s3cr3t-nats-pw";

/// A child process killed when dropped, so that a failed test leaves nothing running.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `nats-server` with JetStream that takes only [`USER`] with [`PASSWORD`]; returns once it takes connections.
fn nats_with_password(dir: &Path) -> (Killed, u16) {
    let port = free_port();
    let config = dir.join("nats.conf");
    std::fs::write(
        &config,
        format!(
            "listen: \"127.0.0.1:{port}\"\n\
             jetstream {{ store_dir: \"{store}\" }}\n\
             authorization {{ user: \"{USER}\", password: \"{PASSWORD}\" }}\n",
            store = dir.join("nats-store").display(),
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("nats.log")).unwrap();
    let child = Command::new("nats-server")
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let server = Killed(child);
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nats-server did not take connections: {}",
            std::fs::read_to_string(dir.join("nats.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (server, port)
}

/// Starts `herald serve` on a JetStream spool at `127.0.0.1:port` with [`USER`] and [`PASSWORD`] in the URL, standard
/// error into a file at `log`; returns it once ready, with that file.
fn herald(dir: &Path, port: u16, log: &str) -> (Killed, PathBuf) {
    let config = dir.join("herald.conf");
    std::fs::write(
        &config,
        format!(
            "spool_backend = jetstream\n\
             spool_nats_url = \"nats://{USER}:{PASSWORD}@127.0.0.1:{port}\"\n\
             spool_nats_timeout = 1\n\
             spool_dir = \"{spool}\"\n\
             http_listener {{ listen \"127.0.0.1:0\" {{ }} }}\n",
            spool = dir.join("spool").display(),
        ),
    )
    .unwrap();
    let (child, err_path) = support::serve_until_ready(&config, dir, log);
    (Killed(child), err_path)
}

/// Waits until standard error holds a line with `want`; returns the whole text then.
fn text_with(err_path: &Path, want: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(err_path).unwrap();
        if text.contains(want) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no line with {want:?} in:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// At debug level, with the NATS client at trace level: the client's attempts name the server with the password
/// masked, its CONNECT message shows none, and no line anywhere holds the password.
#[test]
fn no_log_line_shows_the_password_of_the_nats_url() {
    if !nats::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_nats, port) = nats_with_password(dir.path());
    let (_herald, err_path) = herald(dir.path(), port, "debug,async_nats=trace");
    // The CONNECT message goes out after the attempt that names the server (what the server answers does not
    // matter here).
    let text = text_with(&err_path, "write operation: CONNECT");
    assert!(!text.contains(PASSWORD), "the password is shown:\n{text}");
    let masked = format!("server=ServerAddr(nats://{USER}:***@127.0.0.1:{port})");
    assert!(text.contains(&masked), "no {masked:?} in:\n{text}");
}

/// The NATS client sends none of the credentials a URL carries by itself: herald hands them over, so a server that
/// takes only that user and password lets the node in, and its spool becomes ready.
#[test]
fn the_user_and_password_of_the_nats_url_are_used() {
    if !nats::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_nats, port) = nats_with_password(dir.path());
    let (_herald, err_path) = herald(dir.path(), port, "info");
    let text = text_with(&err_path, "created the JetStream consumer");
    assert!(
        !text
            .to_ascii_lowercase()
            .contains("authorization violation"),
        "{text}"
    );
}
