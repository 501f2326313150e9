//! Edges of the command-line tools run as processes: a SIGHUP while `herald serve` reads its configuration, the
//! subcommands' output into a pipe closed early (check, config, demo, sim pki), flags after `config show`'s and
//! `config eval`'s words, and `herald bench` leaving the configuration's log files alone.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

fn herald() -> Command {
    Command::new(env!("CARGO_BIN_EXE_herald"))
}

/// A child process killed and reaped when the test ends, however it ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A valid configuration with `domains` domains (a large one takes a while to parse) and an HTTP listener.
fn write_config(dir: &Path, domains: usize) -> PathBuf {
    let mut text = format!(
        "spool_dir = \"{}\"\nhttp_listener {{ listen \"127.0.0.1:0\" {{ }} }}\n",
        dir.join("spool").display()
    );
    for i in 0..domains {
        text.push_str(&format!(
            "domain \"d{i}.example\" {{ retry_interval = 60 }}\n"
        ));
    }
    let path = dir.join("herald.conf");
    std::fs::write(&path, text).unwrap();
    path
}

/// Bytes the process has read so far (`rchar` of /proc/PID/io), or None once it is gone.
fn bytes_read(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("rchar:"))
        .and_then(|v| v.trim().parse().ok())
}

/// A SIGHUP that arrives while `herald serve` reads its configuration (before the server starts) does not end the
/// process: it starts, prints its ready line, and then reloads (docs/operations.md: a SIGHUP during the start is
/// kept and acted on once the start is over). The signal is sent once herald has read the whole file, while it
/// still parses it.
#[test]
fn a_sighup_while_the_configuration_is_read_is_acted_on_once_herald_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 3000);
    let size = std::fs::metadata(&config).unwrap().len();
    let mut running = Running(
        herald()
            .args(["serve", "-c"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let child = &mut running.0;
    let (lines, logged) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });

    let deadline = Instant::now() + WAIT;
    loop {
        match bytes_read(child.id()) {
            Some(n) if n >= size => break,
            Some(_) => {}
            None => panic!("herald ended before reading its configuration"),
        }
        assert!(
            Instant::now() < deadline,
            "herald never read its configuration"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill sends a signal to the child this test started and still holds (not yet waited for).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);

    let mut ready = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert!(
        ready.starts_with('{'),
        "no ready line ({ready:?}); herald: {:?}",
        child.wait()
    );
    loop {
        let line = logged
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|e| panic!("no reload after the SIGHUP: {e}"));
        if line.contains("SIGHUP: configuration reloaded") {
            break;
        }
    }
    assert!(child.try_wait().unwrap().is_none(), "herald ended");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert!(status.success(), "herald serve exited with {status}");
}

/// A pipe whose reading end is already closed: whatever writes to the other end gets EPIPE.
fn closed_pipe() -> Stdio {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: pipe fills the two descriptors of the array it is given.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just opened by pipe and are owned by nothing else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    Stdio::from(write)
}

/// `herald check` and `herald config show|eval` whose reader went away (`| head -0`) end quietly with their usual
/// status, as Unix tools do, instead of panicking.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), 3);
    let config = config.to_str().unwrap();
    for args in [
        &["check", "-c", config][..],
        &["config", "show", "-c", config],
        &["config", "eval", "-c", config, "retry_interval"],
    ] {
        let out = herald()
            .args(args)
            .stdout(closed_pipe())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}

/// `herald demo` and `herald sim pki` whose reader went away end with their usual status too: the demo's verdict
/// does not change because nobody reads its table, and neither panics.
#[test]
fn the_demo_and_the_simulator_s_pki_into_a_closed_pipe_end_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let out = herald()
        .args(["demo", "--count", "4", "--smtp-count", "1", "--dir"])
        .arg(dir.path().join("demo"))
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");

    let out = herald()
        .args(["sim", "pki"])
        .arg(dir.path().join("pki"))
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    assert!(dir.path().join("pki").join("pki.json").is_file());
}

/// Flags after `config show`'s words are flags: `--secrets` there prints the secret in clear, and `-c` there names
/// the file. `config eval`, which has no `--secrets`, names the flag instead of taking it for a scope.
#[test]
fn config_flags_after_the_words() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.conf");
    std::fs::write(
        &config,
        "domain \"d.example\" { outcome_webhook_url = \"https://u:pw@hooks.example/x?k=secret\" }\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let out = herald()
        .args([
            "config",
            "show",
            "domain",
            "d.example",
            "outcome_webhook_url",
        ])
        .args(["--secrets", "-c", config])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("https://u:pw@hooks.example/x?k=secret"),
        "{stdout}"
    );

    let out = herald()
        .args([
            "config",
            "eval",
            "-c",
            config,
            "retry_interval",
            "--secrets",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--secrets"), "{stderr}");
    assert!(!stderr.contains("unknown scope"), "{stderr}");
}
