//! A `herald serve` child process for the integration tests that run the binary.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A `herald serve` process, killed when dropped so that a failed test leaves no server running.
pub struct Daemon {
    pub child: Child,
    /// The first HTTP and ESMTP listener addresses from the ready line.
    pub http: String,
    pub esmtp: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A test that failed must not leave a server running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Starts `herald serve -c CONFIG` and returns once it printed its ready line.
    pub fn start(config: &Path) -> Daemon {
        Daemon::start_with(config, &[])
    }

    /// [`Daemon::start`] with more arguments to `herald serve` (`--grace N`).
    pub fn start_with(config: &Path, args: &[&str]) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["serve", "-c"])
            .arg(config)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("ready line {line:?}: {e}"));
        Daemon {
            child,
            http: v["http"][0].as_str().unwrap().to_owned(),
            esmtp: v["esmtp"][0].as_str().unwrap().to_owned(),
        }
    }

    /// Sends `signal` (`-TERM`, `-HUP`, …) with kill(1).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// SIGTERM, then the exit status must be success.
    pub fn terminate(mut self) {
        self.signal("-TERM");
        let status = self.child.wait().unwrap();
        assert!(status.success(), "herald serve exited with {status}");
    }

    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
