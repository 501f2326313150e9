//! The configuration commands of the `herald` binary, run as a user would: `herald check`, `herald config eval`
//! and `herald config show` on real files, checking exit codes, stdout and stderr.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

fn herald(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .output()
        .expect("run herald")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

// docs/momentum-compat.md#fallback, binding-group example.
const GROUP_EXAMPLE: &str = r#"
max_outbound_connections = 30
binding_group "group1" { max_outbound_connections = 5
  binding "example" { bind_address = 10.10.10.10  max_outbound_connections = 15
    domain "example.com" { } } }
host "example.com" { }
"#;

#[test]
fn check_passes_every_example() {
    let mut seen = 0;
    for entry in std::fs::read_dir(examples()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "conf") {
            let p = path.display().to_string();
            let o = herald(&["check", "-c", &p]);
            assert!(o.status.success(), "{p}: {}", stderr(&o));
            assert!(
                stdout(&o).starts_with(&format!("{p}: ok:")),
                "{}",
                stdout(&o)
            );
            seen += 1;
        }
    }
    assert!(seen >= 2);
}

#[test]
fn check_momentum_sample_summary_and_warnings() {
    // docs/momentum-compat.md#sample-configuration: one domain, one listen stanza.
    let p = examples().join("momentum-apns.conf").display().to_string();
    let o = herald(&["check", "-c", &p]);
    assert_eq!(o.status.code(), Some(0));
    let out = stdout(&o);
    assert!(
        out.contains("1 domains") && out.contains("1 listeners"),
        "{out}"
    );
    assert_eq!(out.lines().count(), 1);
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{p}:16:16: warning: `tls_verify = no`")),
        "{err}"
    );
    assert!(err.contains("warning: `tls`"), "{err}");
    assert!(err.contains("warning: `tls_ciphers`"), "{err}");
    // The binary-protocol domain (line 10) never polls the feedback service.
    assert!(
        err.contains(&format!(
            "{p}:10:1: warning: `apn_feedback_interval` is 0 for domain `apn_example.com`"
        )),
        "{err}"
    );
}

#[test]
fn check_fails_with_every_error_on_stderr() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(
        tmp.path(),
        "bad.conf",
        "domain a.com {\n  max_outbound_conections = 3\n  tls_verify = sometimes\n}\nbinding_group g { delivery_response_timeout = 5 }\n",
    );
    let o = herald(&["check", "-c", &p]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(err.contains(&format!("{p}:2:3: error: unknown option `max_outbound_conections`; did you mean `max_outbound_connections`?")), "{err}");
    assert!(
        err.contains(&format!("{p}:3:16: error: invalid value `sometimes`")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{p}:5:19: error: option `delivery_response_timeout` is not valid"
        )),
        "{err}"
    );
    assert!(err.contains("3 errors"), "{err}");
}

/// An empty `control_password` (an error of the whole-configuration checks) is reported with the other errors of
/// the file, not only once they are fixed; the warnings of those checks wait for a file without errors.
#[test]
fn check_reports_an_empty_control_password_with_the_other_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(
        tmp.path(),
        "bad.conf",
        "bogus_opt = 1\ncontrol_listener {\n  listen \"0.0.0.0:2025\" {\n    control_password = \"\"\n  }\n}\n",
    );
    let o = herald(&["check", "-c", &p]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{p}:1:1: error: unknown option `bogus_opt`")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{p}:4:5: error: control_password is empty")),
        "{err}"
    );
    assert!(err.contains("2 errors"), "{err}");
    assert!(!err.contains("warning"), "{err}");
}

/// A log problem and a domain's credential error of one file are reported together: neither waits for the other
/// to be fixed.
#[test]
fn check_reports_log_and_credential_errors_together() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(
        tmp.path(),
        "t.conf",
        "apn_logger \"a\" {\n  logfile = \"/dev/null\"\n  log_delivery_format = \"%t@%vctx_mess{x}\"\n}\n\
         domain \"x.example\" {\n  delivery_method = apn\n}\n",
    );
    let o = herald(&["check", "-c", &p]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));
    let err = stderr(&o);
    for want in [
        format!("{p}:3:3: error: apn_logger \"a\" log_delivery_format: unknown apn_logger macro"),
        format!("{p}:5:1: domain x.example: error: no routes: set routes"),
        format!("{p}: 1 error\n"),
        format!("{p}: 1 credential error(s)\n"),
    ] {
        assert!(err.contains(&want), "{want:?} not in {err}");
    }
}

#[test]
fn check_missing_file_fails() {
    let o = herald(&["check", "-c", "/nonexistent/herald.conf"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("/nonexistent/herald.conf:1:1: error: cannot read"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn config_eval_momentum_word_order() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(tmp.path(), "f.conf", GROUP_EXAMPLE);
    let o = herald(&[
        "config",
        "eval",
        "-c",
        &p,
        "binding_group",
        "group1",
        "binding",
        "example",
        "domain",
        "example.com",
        "max_outbound_connections",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "max_outbound_connections = 15\n");
    let o = herald(&[
        "config",
        "eval",
        "-c",
        &p,
        "domain",
        "example.com",
        "max_outbound_connections",
    ]);
    assert_eq!(stdout(&o), "max_outbound_connections = 30\n");
    // docs/momentum-compat.md#fallback: the host scope does not fall back.
    let o = herald(&[
        "config",
        "eval",
        "-c",
        &p,
        "host",
        "example.com",
        "max_outbound_connections",
    ]);
    assert_eq!(stdout(&o), "max_outbound_connections = -1\n");
    // Option names are case-insensitive; the canonical name is printed.
    let o = herald(&["config", "eval", "-c", &p, "Max_Outbound_Connections"]);
    assert_eq!(stdout(&o), "max_outbound_connections = 30\n");
}

#[test]
fn config_eval_lists_listeners_and_defaults() {
    let p = examples().join("momentum-apns.conf").display().to_string();
    let o = herald(&[
        "config",
        "eval",
        "-c",
        &p,
        "domain",
        "apn_example.com",
        "routes",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "routes = (\n  \"apn://gateway.push.apple.com?port=2195\"\n)\n"
    );
    let o = herald(&[
        "config",
        "eval",
        "-c",
        &p,
        "esmtp_listener",
        "listen",
        ":25",
        "mcmt_reception",
    ]);
    assert_eq!(stdout(&o), "mcmt_reception = allow\n", "{}", stderr(&o));
    // The listen name may keep the quotes it has in the file.
    let o = herald(&[
        "config",
        "eval",
        "-c",
        &p,
        "esmtp_listener",
        "listen",
        "\":25\"",
        "mcmt_reception",
    ]);
    assert_eq!(stdout(&o), "mcmt_reception = allow\n", "{}", stderr(&o));
    let o = herald(&[
        "config",
        "eval",
        "-c",
        &p,
        "domain",
        "other.example",
        "retry_interval",
    ]);
    assert_eq!(stdout(&o), "retry_interval = 1200\n");
    let o = herald(&[
        "config",
        "eval",
        "-c",
        &p,
        "apn_logger",
        "apn_logger1",
        "logmode",
    ]);
    assert_eq!(stdout(&o), "logmode = 0644\n");
}

#[test]
fn config_eval_errors_exit_non_zero_with_a_message() {
    let p = examples().join("momentum-apns.conf").display().to_string();
    let o = herald(&[
        "config",
        "eval",
        "-c",
        &p,
        "domain",
        "apn_example.com",
        "max_outbound_conections",
    ]);
    assert!(!o.status.success());
    assert!(stdout(&o).is_empty());
    assert!(
        stderr(&o).contains(
            "unknown option `max_outbound_conections`; did you mean `max_outbound_connections`?"
        ),
        "{}",
        stderr(&o)
    );
    let o = herald(&["config", "eval", "-c", &p, "domain", "apn_example.com"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no option given"), "{}", stderr(&o));
    let o = herald(&[
        "config",
        "eval",
        "-c",
        &p,
        "domian",
        "apn_example.com",
        "routes",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("unknown scope `domian`; did you mean `domain`?"),
        "{}",
        stderr(&o)
    );
    let o = herald(&[
        "config",
        "eval",
        "-c",
        &p,
        "binding_group",
        "g",
        "delivery_response_timeout",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("valid in: global, binding, domain"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn config_show_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["momentum-apns.conf", "herald.conf"] {
        let p = examples().join(name).display().to_string();
        let o = herald(&["config", "show", "-c", &p]);
        assert!(o.status.success(), "{}", stderr(&o));
        let shown = stdout(&o);
        assert!(
            shown.contains("domain \"apn_example.com\"") || name != "momentum-apns.conf",
            "{shown}"
        );
        let again_path = write(tmp.path(), name, &shown);
        let o = herald(&["check", "-c", &again_path]);
        assert!(o.status.success(), "{}", stderr(&o));
        let o = herald(&["config", "show", "-c", &again_path]);
        assert_eq!(
            stdout(&o),
            shown,
            "show of the shown configuration differs for {name}"
        );
    }
}

#[test]
fn config_show_one_scope_and_one_option() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(tmp.path(), "f.conf", GROUP_EXAMPLE);
    let o = herald(&[
        "config",
        "show",
        "-c",
        &p,
        "binding_group",
        "group1",
        "binding",
        "example",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.starts_with("binding_group \"group1\" {\n  binding \"example\" {\n"),
        "{text}"
    );
    assert!(text.contains("max_outbound_connections = 15"), "{text}");
    let o = herald(&[
        "config",
        "show",
        "-c",
        &p,
        "binding_group",
        "group1",
        "max_outbound_connections",
    ]);
    assert_eq!(stdout(&o), "max_outbound_connections = 5\n");
    let o = herald(&["config", "show", "-c", &p, "domain", "nowhere.com"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no such scope"), "{}", stderr(&o));
}

/// `herald check` loads the TLS identity of HTTP and ESMTP listeners as `herald serve` does: a file that is not a
/// certificate is an error naming the listener; a file missing on this machine is a warning.
#[test]
fn check_loads_the_tls_identity_of_listeners() {
    let tmp = tempfile::tempdir().unwrap();
    let garbage = write(tmp.path(), "garbage.pem", "not a certificate\n");
    let text = format!(
        "http_listener {{ listen \"127.0.0.1:8443\" {{ tls_certificate = \"{garbage}\" tls_key = \"{garbage}\" }} }}\n\
         esmtp_listener {{ listen \"127.0.0.1:2525\" {{ tls_certificate = \"/nowhere/smtp.pem\" tls_key = \"/nowhere/smtp.key\" }} }}\n\
         control_listener {{ listen \"127.0.0.1:2026\" {{ tls_certificate = \"{garbage}\" tls_key = \"{garbage}\" }} }}\n"
    );
    let p = write(tmp.path(), "l.conf", &text);
    let o = herald(&["check", "-c", &p]);
    assert!(!o.status.success(), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.contains("http_listener 127.0.0.1:8443: error:"),
        "{err}"
    );
    assert!(
        err.contains(
            "esmtp_listener 127.0.0.1:2525: warning: /nowhere/smtp.pem does not exist here"
        ),
        "{err}"
    );
}

/// `config show binding NAME` (and `config show binding NAME OPTION`, Momentum's `config get`) find a binding
/// declared inside a binding group by its name alone, as `config eval binding NAME …` does.
#[test]
fn config_show_finds_a_grouped_binding_by_its_name() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(tmp.path(), "f.conf", GROUP_EXAMPLE);
    let o = herald(&["config", "show", "-c", &p, "binding", "example"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.starts_with("binding_group \"group1\" {\n  binding \"example\" {\n"),
        "{text}"
    );
    assert!(text.contains("max_outbound_connections = 15"), "{text}");
    let o = herald(&[
        "config",
        "show",
        "-c",
        &p,
        "binding",
        "example",
        "max_outbound_connections",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "max_outbound_connections = 15\n");
    let o = herald(&[
        "config",
        "show",
        "-c",
        &p,
        "binding",
        "example",
        "domain",
        "example.com",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("domain \"example.com\""),
        "{}",
        stdout(&o)
    );
    let o = herald(&["config", "show", "-c", &p, "binding", "nobody"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no such scope"), "{}", stderr(&o));
}

/// `config eval` consults a listener-level `peer` after the listen stanza when a listen-level `peer` matches the
/// address too (listener::listen::peer > listener::listen > listener::peer > listener).
#[test]
fn config_eval_consults_the_listener_peer_after_the_listen_stanza() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(
        tmp.path(),
        "p.conf",
        "esmtp_listener {\n  peer \"10.0.0.0/8\" { mcmt_reception = allow }\n  listen \"127.0.0.1:2525\" {\n    \
         peer \"10.1.0.0/16\" { always_allow = ( 10.1.0.0/16 ) }\n  }\n}\n",
    );
    for ip in ["10.1.2.3", "10.2.2.3"] {
        let o = herald(&[
            "config",
            "eval",
            "-c",
            &p,
            "esmtp_listener",
            "listen",
            "127.0.0.1:2525",
            "peer",
            ip,
            "mcmt_reception",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(stdout(&o), "mcmt_reception = allow\n", "{ip}");
    }
}

/// Every error `herald check` reports carries the position it is about: a domain's credential findings point at
/// the statement or the domain stanza, a log problem at the logger's option.
#[test]
fn check_findings_carry_a_position() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(
        tmp.path(),
        "t.conf",
        "domain \"x.example\" {\n  delivery_method = apn\n}\n",
    );
    let o = herald(&["check", "-c", &p]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "{p}:1:1: domain x.example: error: no routes: set routes"
        )),
        "{err}"
    );
    assert!(!err.contains(&format!("{p}: domain")), "{err}");

    let p = write(
        tmp.path(),
        "l.conf",
        "apn_logger \"a\" {\n  logfile = \"/dev/null\"\n  log_delivery_format = \"%t@%vctx_mess{x}\"\n}\n",
    );
    let o = herald(&["check", "-c", &p]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "{p}:3:3: error: apn_logger \"a\" log_delivery_format: unknown apn_logger macro"
        )),
        "{err}"
    );
}
