//! Configuration hardening over real CLI runs and a running `herald serve`: secret options are masked wherever a
//! running herald prints configuration (`config show`/`config eval`, on the command line and through the console)
//! and `herald config show --secrets` is the one way to see them; `herald check` and `herald serve` warn about
//! risky listener settings, naming the option, the line and what to do.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

const SECRETS: &[&str] = &[
    "sekrit-api-key-1",
    "sekrit-api-key-2",
    "sekrit-control-pw",
    "sekrit-pkcs12-pw",
];

fn herald(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .env_remove("HERALD_CONSOLE_PASSWORD")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn assert_no_secret(what: &str, out: &str) {
    for s in SECRETS {
        assert!(!out.contains(s), "{what} shows the secret {s}:\n{out}");
    }
}

/// A configuration with every kind of secret, a control socket and an HTTP listener; ports chosen by the kernel.
fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("herald.conf");
    let text = format!(
        r#"spool_dir = "{spool}"
http_listener {{
  api_key = "sekrit-api-key-1"
  api_keys = ( "sekrit-api-key-2" )
  listen "127.0.0.1:0" {{ }}
}}
control_listener {{
  listen "{sock}" {{ file_mode = 0600 }}
  listen "127.0.0.1:0" {{ control_password = "sekrit-control-pw" }}
}}
domain "secret.example" {{
  delivery_method = apn
  tls_pkcs12_password = "sekrit-pkcs12-pw"
}}
"#,
        spool = dir.join("spool").display(),
        sock = dir.join("control.sock").display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn config_show_and_eval_mask_secrets_and_show_secrets_reveals_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let c = config.to_str().unwrap();

    let o = herald(&["config", "show", "-c", c]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let shown = text(&o.stdout);
    assert_no_secret("config show", &shown);
    assert!(shown.contains(r#"api_key = "********""#), "{shown}");
    assert!(shown.contains(r#"api_keys = ( "********" )"#), "{shown}");
    assert!(
        shown.contains(r#"control_password = "********""#),
        "{shown}"
    );
    assert!(
        shown.contains(r#"tls_pkcs12_password = "********""#),
        "{shown}"
    );
    // Other values are untouched.
    assert!(shown.contains(r#"domain "secret.example""#), "{shown}");

    let o = herald(&["config", "show", "-c", c, "domain", "secret.example"]);
    assert_no_secret("config show SCOPE", &text(&o.stdout));
    let o = herald(&[
        "config",
        "show",
        "-c",
        c,
        "domain",
        "secret.example",
        "tls_pkcs12_password",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "tls_pkcs12_password = \"********\"\n");
    let o = herald(&[
        "config",
        "eval",
        "-c",
        c,
        "domain",
        "secret.example",
        "tls_pkcs12_password",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "tls_pkcs12_password = \"********\"\n");

    // The one way to see them.
    let o = herald(&["config", "show", "--secrets", "-c", c]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let all = text(&o.stdout);
    for s in SECRETS {
        assert!(all.contains(s), "--secrets does not show {s}:\n{all}");
    }
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `herald serve`; returns it once its ready line is out, with what it wrote to stderr up to then.
fn serve(config: &Path) -> Daemon {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "-c"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with('{'), "ready line {line:?}");
    Daemon(child)
}

#[test]
fn the_console_masks_secrets_in_config_show_and_eval() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let _daemon = serve(&config);
    let sock = dir.path().join("control.sock");
    let sock = sock.to_str().unwrap();
    let o = herald(&["console", sock, "config", "show"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let shown = text(&o.stdout);
    assert_no_secret("console config show", &shown);
    assert!(shown.contains(r#"api_key = "********""#), "{shown}");
    assert!(
        shown.contains(r#"control_password = "********""#),
        "{shown}"
    );
    let o = herald(&[
        "console",
        sock,
        "config",
        "eval",
        "domain",
        "secret.example",
        "tls_pkcs12_password",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim(), "tls_pkcs12_password = \"********\"");
    let o = herald(&[
        "console",
        sock,
        "config",
        "show",
        "domain",
        "secret.example",
        "tls_pkcs12_password",
    ]);
    assert_eq!(text(&o.stdout).trim(), "tls_pkcs12_password = \"********\"");
}

const RISKY: &str = r#"http_listener {
  listen "0.0.0.0:0" { }
}
esmtp_listener {
  listen ":0" { }
}
control_listener {
  listen "0.0.0.0:0" { }
  listen "SOCK" {
    file_mode = 0666
  }
}
http_listener {
  listen "127.0.0.1:0" {
    api_key = ""
  }
}
"#;

fn write_risky(dir: &Path) -> PathBuf {
    let path = dir.join("risky.conf");
    let text = format!(
        "spool_dir = \"{}\"\n{}",
        dir.join("spool").display(),
        RISKY.replace("SOCK", &dir.join("c.sock").display().to_string())
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The warnings of the risky configuration, each with its file and line.
fn assert_risky_warnings(path: &str, err: &str) {
    let expect: &[(u32, &[&str])] = &[
        (
            3,
            &["http_listener", "0.0.0.0:0", "api_key", "always_allow"],
        ),
        (6, &["esmtp_listener", "always_allow"]),
        (9, &["control_listener", "control_password", "127.0.0.1"]),
        (11, &["file_mode = 0666", "0660"]),
        (16, &["api_key has an empty key"]),
    ];
    for (line, words) in expect {
        let prefix = format!("{path}:{line}:");
        let w = err
            .lines()
            .find(|l| l.contains(&prefix) && l.contains("warning"))
            .unwrap_or_else(|| panic!("no warning at {prefix}:\n{err}"));
        for word in *words {
            assert!(w.contains(word), "{word:?} not in {w:?}");
        }
    }
}

#[test]
fn check_warns_about_risky_listeners_with_option_line_and_advice() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_risky(dir.path());
    let p = path.to_str().unwrap();
    let o = herald(&["check", "-c", p]);
    assert!(
        o.status.success(),
        "warnings do not fail check: {}",
        text(&o.stderr)
    );
    assert_risky_warnings(p, &text(&o.stderr));
}

#[test]
fn serve_warns_about_risky_listeners_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_risky(dir.path());
    let mut daemon = serve(&path);
    let _ = daemon.0.kill();
    let _ = daemon.0.wait();
    let mut err = String::new();
    if let Some(mut stderr) = daemon.0.stderr.take() {
        use std::io::Read;
        let _ = stderr.read_to_string(&mut err);
    }
    // serve logs the warnings with the same text (the location may be written as a field of the log line).
    for needle in [
        "control_password",
        "file_mode = 0666",
        "api_key has an empty key",
        "always_allow",
    ] {
        assert!(
            err.contains(needle),
            "{needle:?} not in serve's output:\n{err}"
        );
    }
}
