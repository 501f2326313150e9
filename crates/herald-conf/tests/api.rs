//! The typed API other crates use: builders, string entry points, typed views of listeners, loggers and the spool,
//! and the per-domain cache.

use std::sync::Arc;

use herald_conf::{
    ApnBinaryFormat, Config, DeliveryMethod, ListenerKind, MaxRetries, RouteProtocol, ScopeKind,
    ScopePath, SpoolBackend, TlsVerify, Value,
};

const TEXT: &str = r#"
spool_dir = /var/spool/h
spool_backend = JetStream
spool_nats_url = "nats://127.0.0.1:4222"
binding_group g { binding b { domain "app.example" { apn_binary_format = enhanced } } }
domain "app.example" {
  delivery_method = APN
  routes = ( "https://api.sandbox.push.apple.com" "apn://gateway.sandbox.push.apple.com" )
  apn_topic = com.example.app
  apn_key = /k.p8
  apn_key_id = ABC
  apn_team_id = DEF
  tls_verify = ca
  tls_ca = /ca.pem
  max_retries = 4
  apn_feedback_interval = 3600
}
http_listener {
  api_key = k1
  api_keys = ( k2 k3 )
  max_request_size = 1024
  listen "127.0.0.1:8081" { enable = off }
  listen "[::1]:8082" { peer "::1" { api_key = only } }
}
control_listener { listen "/tmp/h.sock" { file_mode = 0600 } }
ec_logger main { mainlog = /l/main.ec  log_receptions = no }
apn_logger a1 { log_delivery = 0  heartbeat = 0 }
restinjector { enabled = false }
"#;

#[test]
fn config_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Config>();
}

#[test]
fn domain_settings_are_typed_and_cached() {
    let c: Config = TEXT.parse().unwrap();
    let d = c.domain_settings(None, None, "APP.example");
    assert_eq!(d.delivery_method, DeliveryMethod::Apn);
    assert_eq!(d.routes.len(), 2);
    assert_eq!(
        (d.routes[0].protocol, d.routes[0].port),
        (RouteProtocol::Http2, 443)
    );
    assert_eq!(
        (d.routes[1].protocol, d.routes[1].port),
        (RouteProtocol::Binary, 2195)
    );
    assert_eq!(d.apn_topic.as_deref(), Some("com.example.app"));
    assert_eq!(d.apn_key.as_deref(), Some(std::path::Path::new("/k.p8")));
    assert_eq!(d.tls_verify, TlsVerify::Ca);
    assert_eq!(d.retry.max_retries, MaxRetries::Count(4));
    assert_eq!(d.apn_feedback_interval.map(|i| i.as_secs()), Some(3600));
    assert_eq!(d.apn_binary_format, ApnBinaryFormat::Frame);
    assert_eq!(d.apn_expiry.as_secs(), 604_800);
    let again = c.domain_settings(None, None, "app.example");
    assert!(
        Arc::ptr_eq(&d, &again),
        "second lookup is served from the cache"
    );
    let in_b = c.domain_settings(Some("g"), Some("b"), "app.example");
    assert_eq!(in_b.apn_binary_format, ApnBinaryFormat::Enhanced);
    assert_eq!(in_b.apn_topic.as_deref(), Some("com.example.app"));
    assert_eq!(c.bindings(), vec![(None, "default"), (Some("g"), "b")]);
    // Forgotten (a queue that retired): the next lookup resolves again, to the same values; other keys stay.
    c.forget_domain_settings(None, None, "App.Example");
    let fresh = c.domain_settings(None, None, "app.example");
    assert!(!Arc::ptr_eq(&d, &fresh), "resolved again after forget");
    assert_eq!(*fresh, *d);
    c.forget_domain_settings(None, Some("b"), "app.example");
    let in_b_again = c.domain_settings(Some("g"), Some("b"), "app.example");
    assert!(
        !Arc::ptr_eq(&in_b, &in_b_again),
        "the binding's group is found as in a lookup"
    );
    assert!(Arc::ptr_eq(
        &fresh,
        &c.domain_settings(None, None, "app.example")
    ));
}

#[test]
fn listeners_modules_loggers_spool() {
    let c = Config::parse_str("api.conf", TEXT).unwrap();
    let ls = c.listeners();
    assert_eq!(ls.len(), 3);
    assert_eq!(ls[0].kind, ListenerKind::Http);
    assert!(!ls[0].enabled);
    assert_eq!(ls[0].api_keys, vec!["k1", "k2", "k3"]);
    assert_eq!(ls[0].max_request_size, Some(1024));
    assert!(ls[1].enabled);
    // each option falls back on its own: the peer's api_key, the listener's api_keys
    assert_eq!(
        ls[1].api_keys_for("::1".parse().unwrap()),
        ["only", "k2", "k3"]
    );
    assert_eq!(ls[1].api_keys_for("::2".parse().unwrap()).len(), 3);
    assert_eq!(ls[2].kind, ListenerKind::Control);
    assert_eq!(ls[2].file_mode, 0o600);
    assert_eq!(ls[2].addr.to_string(), "/tmp/h.sock");

    let ec = c.ec_loggers();
    assert_eq!(ec[0].mainlog.to_str(), Some("/l/main.ec"));
    assert!(!ec[0].log_receptions && ec[0].log_deliveries);
    assert_eq!(
        ec[0].paniclog.to_str(),
        Some("/var/log/ecelerity/paniclog.ec")
    );
    let apn = c.apn_loggers();
    assert!(!apn[0].log_delivery && apn[0].log_permfail);
    assert_eq!(apn[0].heartbeat, None);
    assert_eq!(apn[0].log_heartbeat_format, "%t@M");
    assert!(c.apn_module().is_none());
    assert_eq!(
        c.module(ScopeKind::Restinjector).map(|m| m.enabled),
        Some(false)
    );

    let s = c.spool();
    assert_eq!(s.dir.to_str(), Some("/var/spool/h"));
    assert_eq!(s.backend, SpoolBackend::JetStream);
    assert_eq!(s.nats_stream, "herald");
}

#[test]
fn scope_path_builders_and_get() {
    let c = Config::parse_str("api.conf", TEXT).unwrap();
    let p = ScopePath::binding_group("g")
        .then(ScopeKind::Binding, Some("b"))
        .then(ScopeKind::Domain, Some("APP.EXAMPLE"));
    assert_eq!(
        c.eval(&p, "apn_binary_format").unwrap(),
        Value::Str("enhanced".into())
    );
    let p: ScopePath = "binding_group g binding b".parse().unwrap();
    assert_eq!(
        c.eval(&p, "apn_binary_format").unwrap(),
        Value::Str("frame".into())
    );
    // `get` reads one scope only: no fallback.
    assert_eq!(
        c.get(&ScopePath::domain("app.example"), "apn_topic")
            .unwrap(),
        Some(Value::Str("com.example.app".into()))
    );
    assert_eq!(c.get(&p, "apn_topic").unwrap(), None);
    assert_eq!(
        c.eval(&ScopePath::domain("app.example"), "routes")
            .unwrap()
            .as_routes()
            .len(),
        2
    );
    assert!(c.eval(&ScopePath::host("x"), "retry_interval").is_err());
}

#[test]
fn momentums_http_route_is_the_binary_protocol_on_port_2195() {
    // docs/momentum-compat.md#routes: "Specifying the protocol as mm7, apn and gcm is optional. Instead, you can
    // use http".
    let c = Config::parse_str(
        "t.conf",
        r#"domain "apn_example.com" {
  delivery_method = "apn"
  routes = ("http://gateway.push.apple.com?port=2195")
}
domain "sandbox.example" { delivery_method = apn  routes = ( "http://gateway.sandbox.push.apple.com" ) }
domain "h2.example" { delivery_method = apn  routes = ( "https://api.push.apple.com" ) }
"#,
    )
    .unwrap_or_else(|d| panic!("{d}"));
    let route = |d: &str| c.domain_settings(None, None, d).routes[0].clone();
    let r = route("apn_example.com");
    assert_eq!(
        (r.protocol, r.host.as_str(), r.port),
        (RouteProtocol::Binary, "gateway.push.apple.com", 2195)
    );
    let r = route("sandbox.example");
    assert_eq!((r.protocol, r.port), (RouteProtocol::Binary, 2195));
    let r = route("h2.example");
    assert_eq!((r.protocol, r.port), (RouteProtocol::Http2, 443));
}

/// `config get` and `config show` find a binding declared inside a binding group by its name alone, as `config
/// eval` does (the group that declares it); `show` wraps it in its group, so that the output still parses to the
/// same stanza.
#[test]
fn a_grouped_binding_is_found_by_its_name_alone() {
    let c = Config::parse_str("api.conf", TEXT).unwrap();
    let bare: ScopePath = "binding b domain app.example".parse().unwrap();
    let full: ScopePath = "binding_group g binding b domain app.example"
        .parse()
        .unwrap();
    assert_eq!(
        c.get(&bare, "apn_binary_format").unwrap(),
        Some(Value::Str("enhanced".into()))
    );
    assert_eq!(
        c.get(&bare, "apn_binary_format").unwrap(),
        c.get(&full, "apn_binary_format").unwrap()
    );
    assert!(c.node(&ScopePath::binding("b")).is_some());
    let shown = c.show(&ScopePath::binding("b")).unwrap();
    assert_eq!(
        shown,
        c.show(&"binding_group g binding b".parse().unwrap())
            .unwrap()
    );
    assert!(
        shown.starts_with("binding_group \"g\" {\n  binding \"b\" {\n"),
        "{shown}"
    );
    assert!(Config::parse_str("shown.conf", &shown).is_ok(), "{shown}");
    assert_eq!(
        c.show(&bare).unwrap(),
        c.show(&full).unwrap(),
        "a path below the binding too"
    );
    // A binding nobody declares is still not found; a group's binding is not found under another group.
    assert!(c.show(&ScopePath::binding("nope")).is_err());
    assert!(
        c.node(&"binding_group other binding b".parse().unwrap())
            .is_none()
    );
}

/// Diagnostics about delivery point at the statement that sets an option's effective value, else at the domain
/// stanza that applies.
#[test]
fn delivery_location_points_at_the_statement_or_the_stanza() {
    let c = Config::parse_str("api.conf", TEXT).unwrap();
    let at = |b: Option<&str>, opt| {
        c.delivery_location(None, b, "APP.example", opt)
            .map(|l| (l.line, l.col))
    };
    // `apn_key = /k.p8` on line 10; the grouped binding's own `apn_binary_format` on line 5.
    assert_eq!(at(None, Some(herald_conf::Opt::ApnKey)), Some((10, 3)));
    assert_eq!(
        at(Some("b"), Some(herald_conf::Opt::ApnBinaryFormat)),
        Some((5, 54))
    );
    // Unset (its default applies), or no option: the most specific domain stanza.
    assert_eq!(
        at(None, Some(herald_conf::Opt::TlsCertificate)),
        Some((6, 1))
    );
    assert_eq!(at(Some("b"), None), Some((5, 31)));
    assert_eq!(c.delivery_location(None, None, "other.example", None), None);
}
