//! Momentum options herald accepts without acting on them load in every scope Momentum documents them in, each with
//! a warning that says why it has no effect; `reconfig_message` is read; `max_outbound_connections = 0` loads with
//! a warning that herald takes it as 1. A Momentum configuration that uses all of them loads
//! (docs/momentum-compat.md).

use herald_conf::{Config, Opt, ScopeKind, ScopePath, Value};

fn warnings(text: &str) -> Vec<String> {
    Config::parse_str("t.conf", text)
        .unwrap_or_else(|d| panic!("{text}\n{d}"))
        .warnings()
        .iter()
        .map(|w| w.to_string())
        .collect()
}

/// `setting` written in a stanza of `kind` (inside the stanzas it needs), on line 2.
fn in_scope(kind: ScopeKind, setting: &str) -> String {
    match kind {
        ScopeKind::Global => format!("\n{setting}\n"),
        ScopeKind::BindingGroup => format!("binding_group \"g\" {{\n{setting}\n}}\n"),
        ScopeKind::Binding => format!("binding \"b\" {{\n{setting}\n}}\n"),
        ScopeKind::Domain => format!("domain \"d.example\" {{\n{setting}\n}}\n"),
        ScopeKind::Host => format!("host \"h.example\" {{\n{setting}\n}}\n"),
        ScopeKind::Restinjector => format!("restinjector {{\n{setting}\n}}\n"),
        ScopeKind::HttpListener => {
            format!("http_listener {{\n{setting}\nlisten \"127.0.0.1:8081\" {{ }}\n}}\n")
        }
        ScopeKind::EsmtpListener => {
            format!("esmtp_listener {{\n{setting}\nlisten \"127.0.0.1:2525\" {{ }}\n}}\n")
        }
        other => panic!("no stanza written for {other}"),
    }
}

/// The Momentum options of momentum.md §1.2 (`http_uri`) and §3 (`dot_stuff` of the restinjector, the
/// HTTP_Listener's `log_requests_to_paniclog` and `disable_chunked`), each in every scope herald accepts it in
/// (Momentum's), loads with one warning, at its line, naming it and why herald does not act on it.
#[test]
fn inert_momentum_options_load_in_their_scopes_with_a_warning() {
    let cases: [(Opt, &str, &[ScopeKind], &str); 4] = [
        (
            Opt::HttpUri,
            "http_uri = \"\"",
            &[
                ScopeKind::Global,
                ScopeKind::BindingGroup,
                ScopeKind::Binding,
                ScopeKind::Domain,
            ],
            "`/3/device/TOKEN`",
        ),
        (
            Opt::DotStuff,
            "Dot_stuff = \"true\"",
            &[ScopeKind::Restinjector],
            "never relays an injected message as SMTP data",
        ),
        (
            Opt::LogRequestsToPaniclog,
            "Log_Requests_to_Paniclog = false",
            &[ScopeKind::HttpListener, ScopeKind::Listen],
            "no paniclog",
        ),
        (
            Opt::DisableChunked,
            "disable_chunked = false",
            &[ScopeKind::HttpListener, ScopeKind::Listen],
            "frames its answers itself",
        ),
    ];
    for (opt, setting, scopes, why) in cases {
        let def = opt.def();
        assert!(def.inert.is_some(), "{}", def.name);
        assert_eq!(
            def.scopes.kinds().collect::<Vec<_>>(),
            scopes.to_vec(),
            "{}",
            def.name
        );
        for &kind in scopes {
            let text = match kind {
                ScopeKind::Listen => {
                    format!("http_listener {{\nlisten \"127.0.0.1:8081\" {{\n{setting}\n}}\n}}\n")
                }
                _ => in_scope(kind, setting),
            };
            let w = warnings(&text);
            assert_eq!(w.len(), 1, "{text}\n{w:#?}");
            let line = if kind == ScopeKind::Listen { 3 } else { 2 };
            assert!(
                w[0].starts_with(&format!(
                    "t.conf:{line}:1: warning: `{}` is accepted but has no effect in herald: ",
                    def.name
                )),
                "{text}\n{w:#?}"
            );
            assert!(w[0].contains(why), "{w:#?}");
        }
    }
    // Outside those scopes they are errors, as any option is.
    for bad in [
        "esmtp_listener { disable_chunked = false }",
        "restinjector { http_uri = \"\" }",
        "domain \"d.example\" { dot_stuff = true }",
        "httpsrv { dot_stuff = true }",
    ] {
        let err = Config::parse_str("t.conf", bad).unwrap_err().to_string();
        assert!(err.contains("is not valid in a"), "{bad}: {err}");
    }
}

/// An inert option in a listen stanza of a listener that would not read it anyway is one warning, not two.
#[test]
fn an_inert_http_option_under_an_esmtp_listen_stanza_warns_once() {
    let w = warnings(
        "esmtp_listener {\n  listen \"127.0.0.1:2525\" {\n    disable_chunked = false\n  }\n}\n",
    );
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(
        w[0].starts_with("t.conf:3:5: warning: `disable_chunked` is accepted but has no effect"),
        "{w:#?}"
    );
}

/// `reconfig_message` (momentum.md §6.1: the text of the `421` sessions on an old configuration get at a reload)
/// is read in `esmtp_listener` and `listen` scope, falls back from listen to listener to Momentum's default, and
/// is no inert option.
#[test]
fn reconfig_message_is_read_with_fallback_and_warns_only_when_malformed() {
    let def = Opt::ReconfigMessage.def();
    assert!(def.inert.is_none());
    assert_eq!(def.default, Some("4.3.2 Reconfiguration in progress"));
    let text = "esmtp_listener {\n  reconfig_message = \"4.3.2 Reloading\"\n  \
                listen \"127.0.0.1:25\" { Reconfig_Message = \"4.7.0 Back soon\" }\n  \
                listen \"127.0.0.1:26\" { }\n}\n";
    let c = Config::parse_str("t.conf", text).unwrap();
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    let listen = |addr: &str| {
        ScopePath::global()
            .then(ScopeKind::EsmtpListener, None)
            .then(ScopeKind::Listen, Some(addr))
    };
    let ev = |addr: &str| c.eval(&listen(addr), "reconfig_message").unwrap();
    assert_eq!(ev("127.0.0.1:25"), Value::Str("4.7.0 Back soon".into()));
    assert_eq!(ev("127.0.0.1:26"), Value::Str("4.3.2 Reloading".into()));
    let bare = Config::parse_str("t.conf", "esmtp_listener { listen \":25\" { } }").unwrap();
    assert_eq!(
        bare.eval(&listen(":25"), "reconfig_message").unwrap(),
        Value::Str("4.3.2 Reconfiguration in progress".into())
    );

    // A value without a class 4 enhanced status code, or an empty one, loads with a warning at the value.
    for (value, what) in [
        (
            "\"Reconfiguration in progress\"",
            "does not begin with an enhanced status code of class 4",
        ),
        (
            "\"5.3.2 Reconfiguration\"",
            "does not begin with an enhanced status code of class 4",
        ),
        (
            "\"4.3 Reconfiguration\"",
            "does not begin with an enhanced status code of class 4",
        ),
        (
            "\"4.3.2.1 Reconfiguration\"",
            "does not begin with an enhanced status code of class 4",
        ),
        ("\"\"", "is empty"),
    ] {
        let w = warnings(&format!(
            "esmtp_listener {{\n  reconfig_message = {value}\n}}\n"
        ));
        assert_eq!(w.len(), 1, "{value}: {w:#?}");
        assert!(
            w[0].starts_with("t.conf:2:22: warning: `reconfig_message` in esmtp_listener "),
            "{w:#?}"
        );
        assert!(w[0].contains(what), "{value}: {w:#?}");
    }
    for good in ["\"4.3.2\"", "\"4.7.0 Back soon\"", "\"  4.3.2 Reloading\""] {
        let w = warnings(&format!(
            "esmtp_listener {{\n  reconfig_message = {good}\n}}\n"
        ));
        assert!(w.is_empty(), "{good}: {w:#?}");
    }

    // Where no ESMTP listener reads it: a warning under an HTTP listen stanza, an error elsewhere.
    let w = warnings(
        "http_listener {\n  listen \"127.0.0.1:8081\" {\n    reconfig_message = \"4.3.2 x\"\n  }\n}\n",
    );
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(
        w[0].contains("`reconfig_message` has no effect in a listen of http_listener"),
        "{w:#?}"
    );
    for bad in [
        "reconfig_message = \"4.3.2 x\"",
        "domain \"d.example\" { reconfig_message = \"4.3.2 x\" }",
        "control_listener { reconfig_message = \"4.3.2 x\" }",
    ] {
        let err = Config::parse_str("t.conf", bad).unwrap_err().to_string();
        assert!(
            err.contains("`reconfig_message` is not valid in a"),
            "{bad}: {err}"
        );
    }
}

/// momentum.md §5 and §4.3 give `max_outbound_connections` a default of 32 and -1 (unlimited) in a host stanza,
/// and 0 no meaning. herald loads 0 in every scope (`config eval` shows it as written) and warns, naming the
/// scope, that it opens one connection.
#[test]
fn max_outbound_connections_zero_loads_with_a_warning_in_every_scope() {
    let scopes = Opt::MaxOutboundConnections.def().scopes;
    assert_eq!(
        scopes.kinds().collect::<Vec<_>>(),
        [
            ScopeKind::Global,
            ScopeKind::BindingGroup,
            ScopeKind::Binding,
            ScopeKind::Domain,
            ScopeKind::Host
        ]
    );
    for (kind, named, one) in [
        (
            ScopeKind::Global,
            "in the global scope",
            "per binding and domain",
        ),
        (
            ScopeKind::BindingGroup,
            "in binding_group \"g\"",
            "per binding and domain",
        ),
        (
            ScopeKind::Binding,
            "in binding \"b\"",
            "per binding and domain",
        ),
        (
            ScopeKind::Domain,
            "in domain \"d.example\"",
            "per binding and domain",
        ),
        (ScopeKind::Host, "in host \"h.example\"", "to the host"),
    ] {
        let text = in_scope(kind, "max_outbound_connections = 0");
        let c = Config::parse_str("t.conf", &text).unwrap();
        let w: Vec<String> = c.warnings().iter().map(|w| w.to_string()).collect();
        assert_eq!(w.len(), 1, "{text}\n{w:#?}");
        assert!(
            w[0].starts_with(&format!(
                "t.conf:2:28: warning: `max_outbound_connections = 0` {named} would allow no connection"
            )),
            "{w:#?}"
        );
        assert!(
            w[0].contains("herald takes it as 1") && w[0].contains(one),
            "{w:#?}"
        );
    }
    // Other values say nothing.
    for n in ["-1", "1", "32"] {
        let w = warnings(&format!(
            "max_outbound_connections = {n}\nhost \"h.example\" {{ max_outbound_connections = {n} }}\n"
        ));
        assert!(w.is_empty(), "{n}: {w:#?}");
    }
    // The value stays as written for `config eval` and the typed view; delivery reads it as 1.
    let c = Config::parse_str(
        "t.conf",
        "domain \"d.example\" { max_outbound_connections = 0 }",
    )
    .unwrap();
    assert_eq!(
        c.eval(
            &ScopePath::global().then(ScopeKind::Domain, Some("d.example")),
            "max_outbound_connections"
        )
        .unwrap(),
        Value::Int(0)
    );
}

/// A Momentum APNs configuration (momentum.md §1.6) with the REST injector of §3, its HTTP_Listener options, an
/// ESMTP `Reconfig_Message` (§6.1) and `http_uri` (§1.2), written as Momentum's documentation writes them (mixed
/// case, quoted booleans): it loads, and every option herald does not act on is a warning.
#[test]
fn a_momentum_configuration_with_all_of_them_loads() {
    let text = r#"esmtp_listener {
  Reconfig_Message = "4.3.2 Reconfiguration in progress"
  listen "127.0.0.1:25" {
    mcmt_reception = "allow"
  }
}
HTTP_Listener {
  Listen "127.0.0.1:8081" {
    Log_Requests_to_Paniclog = false
    disable_chunked = false
  }
}
httpsrv { debug_level = "debug" }
restinjector { Dot_stuff = "true" }
http_uri = ""
domain "apn_example.com" {
  tls = "required"
  tls_verify = "no"
  tls_certificate = "/path/to/cert"
  tls_key = "/path/to/key"
  tls_ciphers = "DEFAULT"
  max_outbound_connections = 20
  delivery_response_timeout = 1000
  delivery_method = "apn"
  routes = ("apn://gateway.push.apple.com?port=2195")
  http_uri = ""
}
apn {}
apn_logger "apn_logger1" {
  logmode = 0644
  logfile = "/var/log/ecelerity/apnlog.ec"
  heartbeat = 60
}
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ecelerity.conf");
    std::fs::write(&path, text).unwrap();
    let c = Config::load(&path).unwrap_or_else(|d| panic!("{d}"));
    let w: Vec<(u32, String)> = c
        .warnings()
        .iter()
        .map(|w| (w.location.line, w.message.clone()))
        .collect();
    let warned = |line: u32, name: &str| {
        w.iter()
            .any(|(l, m)| *l == line && m.starts_with(&format!("`{name}`")))
    };
    for (line, name) in [
        (9, "log_requests_to_paniclog"),
        (10, "disable_chunked"),
        (14, "dot_stuff"),
        (15, "http_uri"),
        (17, "tls"),
        (18, "tls_verify = no"),
        (21, "tls_ciphers"),
        (26, "http_uri"),
        // A binary-protocol domain that never polls the feedback service (herald's own advice).
        (16, "apn_feedback_interval"),
    ] {
        assert!(
            warned(line, name),
            "no warning for {name} at line {line}: {w:#?}"
        );
    }
    assert_eq!(w.len(), 9, "{w:#?}");
    let d = c.domain_settings(None, None, "apn_example.com");
    assert_eq!(d.max_outbound_connections, 20);
    assert_eq!(c.listeners().len(), 2);
}
