//! Operator-facing checks of listener TLS and of the SIGHUP reload's log line, run through the built binary as an
//! operator would: `herald check` refuses a listener's `tls_key` without `tls_certificate` (which would serve
//! plain text) at its line; a certificate file that is to hold the key too (no `tls_key`) is accepted when it does,
//! and refused, naming `tls_certificate` and what the file lacks, when it does not; and `herald serve` sums up a
//! SIGHUP reload in words, not as a Rust debug dump.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use herald_sim::Pki;

fn check(config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["check", "-c"])
        .arg(config)
        .output()
        .expect("run herald check")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A server certificate (the simulator PKI's) alone in one file, and with its key in another.
struct Files {
    _dir: tempfile::TempDir,
    config: PathBuf,
    cert_only: PathBuf,
    combined: PathBuf,
}

fn files() -> Files {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &["com.example.tls".to_owned()]).unwrap();
    let cert = std::fs::read_to_string(&pki.manifest.server_cert).unwrap();
    let key = std::fs::read_to_string(&pki.manifest.server_key).unwrap();
    let cert_only = dir.path().join("cert-only.pem");
    let combined = dir.path().join("server.pem");
    std::fs::write(&cert_only, &cert).unwrap();
    std::fs::write(&combined, format!("{cert}{key}")).unwrap();
    Files {
        config: dir.path().join("herald.conf"),
        _dir: dir,
        cert_only,
        combined,
    }
}

/// A control (or any) listener with a key and no certificate would serve plain text: `herald check` refuses it
/// at the key's line, as it would refuse the configuration at start.
#[test]
fn a_listener_key_without_a_certificate_is_refused_at_its_line() {
    let f = files();
    for kind in ["control_listener", "esmtp_listener", "http_listener"] {
        std::fs::write(
            &f.config,
            format!(
                "{kind} {{\n  listen \"127.0.0.1:2025\" {{\n    tls_key = \"{}\"\n  }}\n}}\n",
                f.combined.display()
            ),
        )
        .unwrap();
        let o = check(&f.config);
        let out = text(&o);
        assert!(!o.status.success(), "{kind}: {out}");
        assert!(
            out.contains(&format!(
                "{}:3:5: error: {kind} listen \"127.0.0.1:2025\": tls_key is set but tls_certificate is not",
                f.config.display()
            )),
            "{kind}: {out}"
        );
    }
}

/// `tls_certificate` alone: its file holds the key too (docs/smtp.md), or the error names `tls_certificate`, the
/// option set, and says what the file lacks.
#[test]
fn a_certificate_file_must_hold_the_key_when_tls_key_is_not_set() {
    let f = files();
    for kind in ["esmtp_listener", "control_listener", "http_listener"] {
        let conf = |cert: &Path| {
            format!(
                "{kind} {{\n  listen \"127.0.0.1:2025\" {{\n    tls_certificate = \"{}\"\n  }}\n}}\n",
                cert.display()
            )
        };
        std::fs::write(&f.config, conf(&f.combined)).unwrap();
        let o = check(&f.config);
        assert!(o.status.success(), "{kind}: {}", text(&o));

        std::fs::write(&f.config, conf(&f.cert_only)).unwrap();
        let o = check(&f.config);
        let out = text(&o);
        assert!(!o.status.success(), "{kind}: {out}");
        assert!(
            out.contains(&format!(
                "tls_certificate {}: holds no private key (PEM PRIVATE KEY block)",
                f.cert_only.display()
            )),
            "{kind}: {out}"
        );
        assert!(
            !out.contains("no items found")
                && !out.contains(&format!("tls_key {}", f.cert_only.display())),
            "{kind}: names an option the operator did not set: {out}"
        );
    }
}

/// A SIGHUP reload is logged as the console's `config reload` reads: the file and what changed, in words.
#[test]
fn a_sighup_reload_is_logged_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.conf");
    let write = |extra: &str| {
        std::fs::write(
            &config,
            format!(
                "spool_dir = \"{}\"\nhttp_listener {{ listen \"127.0.0.1:0\" {{ }} }}\n{extra}",
                dir.path().join("spool").display()
            ),
        )
        .unwrap()
    };
    write("");
    let (mut child, err_path) = support::serve_until_ready(&config, dir.path(), "info");
    write("esmtp_listener { listen \"127.0.0.1:0\" { } }\n");
    let kill = |signal: &str| {
        Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success())
    };
    let logged = (|| {
        if !kill("-HUP") {
            return Err("kill -HUP failed".to_owned());
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = std::fs::read_to_string(&err_path).unwrap_or_default();
            if let Some(line) = log
                .lines()
                .find(|l| l.contains("SIGHUP: configuration reloaded"))
            {
                return Ok(line.to_owned());
            }
            if Instant::now() >= deadline {
                return Err(format!("no reload line:\n{log}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })();
    let stopped = kill("-TERM");
    let status = child.wait().unwrap();
    let line = logged.unwrap();
    assert!(
        stopped && status.success(),
        "herald serve exited with {status}"
    );
    assert!(
        line.contains(&format!(
            "SIGHUP: configuration reloaded from {}: domains reconfigured: 0; listeners started: Esmtp \
             127.0.0.1:0",
            config.display()
        )),
        "{line}"
    );
    assert!(!line.contains("ReloadReport"), "{line}");
}
