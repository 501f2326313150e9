//! herald's diagnostics on standard error: plain text (no ANSI colour) when standard error is not a terminal, and
//! one JSON object per line with `log_format = json`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `herald serve` with standard error into a file, waits until it is ready, stops it with SIGTERM and returns
/// what it wrote on standard error.
fn serve_stderr(dir: &Path, extra: &str, env: &[(&str, &str)]) -> String {
    let config = dir.join("herald.conf");
    std::fs::write(
        &config,
        format!(
            "spool_dir = \"{}\"\n{extra}\nhttp_listener {{ listen \"127.0.0.1:0\" {{ }} }}\n\
             domain \"log.example\" {{ tls = required }}\n",
            dir.join("spool").display()
        ),
    )
    .unwrap();
    let err_path = dir.join("stderr.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(["serve", "-c"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&err_path).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("http"), "ready line: {line:?}");
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "herald did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::read_to_string(&err_path).unwrap()
}

#[test]
fn text_diagnostics_carry_no_colour_codes_off_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let err = serve_stderr(dir.path(), "", &[]);
    assert!(
        err.contains("`tls` is accepted but has no effect"),
        "the start-up warning is logged: {err}"
    );
    assert!(err.contains("shutting down"), "{err}");
    assert!(!err.contains('\x1b'), "ANSI escape in {err:?}");
}

#[test]
fn json_diagnostics_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let err = serve_stderr(dir.path(), "log_format = json", &[]);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    let mut messages = Vec::new();
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}"));
        assert!(v["level"].is_string(), "{l}");
        assert!(v["timestamp"].is_string(), "{l}");
        messages.push(v["fields"]["message"].as_str().unwrap_or("").to_owned());
    }
    assert!(
        messages
            .iter()
            .any(|m| m.contains("`tls` is accepted but has no effect")),
        "{messages:#?}"
    );
    assert!(
        messages.iter().any(|m| m == "shutting down"),
        "{messages:#?}"
    );
}
