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

/// Runs herald with `args`, failing the test if it has not finished within 20 s (a FIFO must not hang it).
fn herald_within_deadline(args: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .env_remove("HERALD_CONSOLE_PASSWORD")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(20)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("herald {args:?} did not finish within 20 s");
        }
    }
}

fn mkfifo(path: &Path) {
    assert!(Command::new("mkfifo").arg(path).status().unwrap().success());
}

/// A file that is not a configuration, with a line that must never be echoed.
const NOT_A_CONFIG: &str =
    "root:$6$Sekr1tSaltHash$abcdefghijklmnop:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n";

#[test]
fn check_refuses_fifos_devices_huge_files_and_never_quotes_a_file_that_is_not_a_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.conf");
    mkfifo(&fifo);
    let o = herald_within_deadline(&["check", "-c", fifo.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("not a regular file (a FIFO)"),
        "{}",
        text(&o.stderr)
    );

    let o = herald_within_deadline(&["check", "-c", "/dev/zero"]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("not a regular file (a device)"),
        "{}",
        text(&o.stderr)
    );

    // Sparse: 17 MiB that take no room.
    let huge = dir.path().join("huge.conf");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(17 << 20)
        .unwrap();
    let o = herald_within_deadline(&["check", "-c", huge.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("larger than 16777216 bytes"),
        "{}",
        text(&o.stderr)
    );

    let shadow = dir.path().join("shadow");
    std::fs::write(&shadow, NOT_A_CONFIG).unwrap();
    let o = herald_within_deadline(&["check", "-c", shadow.to_str().unwrap()]);
    let all = text(&o.stdout) + &text(&o.stderr);
    assert!(!o.status.success());
    assert!(
        all.contains("does not look like a herald configuration"),
        "{all}"
    );
    assert!(!all.contains("Sekr1t") && !all.contains("root"), "{all}");

    // The same limits hold for includes.
    let main = dir.path().join("main.conf");
    std::fs::write(
        &main,
        format!(
            "spool_dir = \"{}\"\ninclude \"{}\"\ninclude \"{}\"\ninclude \"{}\"\n",
            dir.path().join("spool").display(),
            fifo.display(),
            huge.display(),
            shadow.display()
        ),
    )
    .unwrap();
    let o = herald_within_deadline(&["check", "-c", main.to_str().unwrap()]);
    let all = text(&o.stdout) + &text(&o.stderr);
    assert!(!o.status.success());
    assert!(
        all.contains("a FIFO") && all.contains("larger than"),
        "{all}"
    );
    assert!(
        all.contains("does not look like a herald configuration"),
        "{all}"
    );
    assert!(!all.contains("Sekr1t"), "{all}");
}

#[test]
fn console_config_reload_of_another_path_is_limited_quoted_safely_and_logged_with_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let mut daemon = serve(&config);
    let sock = dir.path().join("control.sock");
    let sock = sock.to_str().unwrap();
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let shadow = dir.path().join("shadow");
    std::fs::write(&shadow, NOT_A_CONFIG).unwrap();

    for (path, want) in [
        (fifo.to_str().unwrap(), "not a regular file (a FIFO)"),
        ("/dev/zero", "not a regular file (a device)"),
        (
            shadow.to_str().unwrap(),
            "does not look like a herald configuration",
        ),
    ] {
        let o = herald_within_deadline(&["console", sock, "config", "reload", path]);
        let all = text(&o.stdout) + &text(&o.stderr);
        assert!(!o.status.success(), "{all}");
        assert!(all.contains(want), "{path}: {all}");
        assert!(!all.contains("Sekr1t"), "{all}");
        // Still answering.
        let o = herald_within_deadline(&["console", sock, "version"]);
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    // A real configuration under another name is still allowed.
    let copy = dir.path().join("copy.conf");
    std::fs::copy(&config, &copy).unwrap();
    let o = herald_within_deadline(&["console", sock, "config", "reload", copy.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stdout) + &text(&o.stderr));

    let _ = daemon.0.kill();
    let _ = daemon.0.wait();
    let mut err = String::new();
    if let Some(mut stderr) = daemon.0.stderr.take() {
        use std::io::Read;
        let _ = stderr.read_to_string(&mut err);
    }
    assert!(!err.contains("Sekr1t"), "{err}");
    let logged = err
        .lines()
        .filter(|l| l.contains("reloads the configuration from"))
        .collect::<Vec<_>>();
    assert_eq!(logged.len(), 4, "{err}");
    assert!(
        logged.iter().all(|l| l.contains("unix client uid=")),
        "{logged:?}"
    );
    assert!(
        logged[0].contains(&fifo.display().to_string()),
        "{logged:?}"
    );
}

#[test]
fn check_shows_the_syntax_error_of_an_included_file_that_starts_like_a_configuration() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("conf.d")).unwrap();
    std::fs::write(
        dir.path().join("conf.d/app.conf"),
        "# app\n\ndomain \"x\" { routes = ( apn://h?port=2195 ) }\n",
    )
    .unwrap();
    let main = dir.path().join("herald.conf");
    std::fs::write(&main, "include \"conf.d/app.conf\"\n").unwrap();
    let o = herald(&["check", "-c", main.to_str().unwrap()]);
    let all = text(&o.stdout) + &text(&o.stderr);
    assert!(!o.status.success(), "{all}");
    assert!(all.contains("app.conf:3:37: error:"), "{all}");
    assert!(all.contains("must be quoted"), "{all}");
    assert!(!all.contains("does not look like"), "{all}");
}

#[test]
fn check_accepts_files_saved_with_a_byte_order_mark() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("app.conf"),
        "\u{feff}domain \"x\" { max_outbound_connections = 3 }\n",
    )
    .unwrap();
    let main = dir.path().join("herald.conf");
    std::fs::write(
        &main,
        format!(
            "\u{feff}max_outbound_connections = 4\nspool_dir = \"{}\"\ninclude \"app.conf\"\n",
            dir.path().join("spool").display()
        ),
    )
    .unwrap();
    let o = herald(&["check", "-c", main.to_str().unwrap()]);
    let all = text(&o.stdout) + &text(&o.stderr);
    assert!(o.status.success(), "{all}");
    assert!(!all.contains("unknown option"), "{all}");
}
