//! Bad input: each error is reported as `FILE:LINE:COL: error: …` at the right place, every error of a file is
//! reported, and hostile input (a 10 MB line) neither panics nor produces huge messages.

use std::time::Instant;

use herald_conf::{Config, Diagnostics, Severity};

fn errors(text: &str) -> Diagnostics {
    match Config::parse_str("t.conf", text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(d) => d,
    }
}

/// The (line, col, message) of each error.
fn error_list(text: &str) -> Vec<(u32, u32, String)> {
    errors(text)
        .errors()
        .map(|d| (d.location.line, d.location.col, d.message.clone()))
        .collect()
}

fn single(text: &str) -> (u32, u32, String) {
    let list = error_list(text);
    assert_eq!(list.len(), 1, "{list:?}");
    list.into_iter().next().unwrap()
}

#[test]
fn unterminated_string() {
    let (l, c, m) = single("domain \"apn.example {\n}\n");
    assert_eq!((l, c), (1, 8));
    assert!(m.contains("unterminated string"), "{m}");
}

#[test]
fn unterminated_comment() {
    let (l, c, m) = single("retry_interval = 5\n  /* a comment\nnever closed\n");
    assert_eq!((l, c), (2, 3));
    assert!(m.contains("unterminated comment"), "{m}");
}

#[test]
fn unterminated_scope() {
    let (l, c, m) = single("domain \"a.com\" {\n  retry_interval = 5\n");
    assert_eq!((l, c), (1, 16));
    assert!(m.contains("unterminated scope"), "{m}");
    assert!(m.contains("domain"), "{m}");
}

#[test]
fn missing_equals() {
    let (l, c, m) = single("domain \"a.com\" {\n  retry_interval 5\n}\n");
    assert_eq!((l, c), (2, 18));
    assert!(m.contains("missing `=`"), "{m}");
}

#[test]
fn value_of_the_wrong_type() {
    let (l, c, m) = single("domain a.com {\n  max_outbound_connections = many\n}\n");
    assert_eq!((l, c), (2, 30));
    assert!(
        m.contains("`many`") && m.contains("max_outbound_connections"),
        "{m}"
    );
    let (l, c, m) = single("\ntls_verify = maybe\n");
    assert_eq!((l, c), (2, 14));
    assert!(m.contains("no, ca, host"), "{m}");
    let (_, _, m) = single("routes = ( \"smtp://mx.example\" )\n");
    assert!(m.contains("unsupported route scheme"), "{m}");
    let (_, _, m) = single("max_retries = sometimes\n");
    assert!(m.contains("auto"), "{m}");
    let (_, _, m) = single("apn_logger x { log_delivery = perhaps }\n");
    assert!(m.contains("boolean"), "{m}");
}

#[test]
fn an_integer_out_of_range_names_its_maximum() {
    let (l, c, m) = single("domain a.com {\n  max_outbound_connections = 5000000000\n}\n");
    assert_eq!((l, c), (2, 30));
    assert_eq!(
        m,
        "invalid value `5000000000` for `max_outbound_connections`: 5000000000 is out of range (expected \
         integer -1..4294967295)"
    );
}

#[test]
fn syntax_errors_past_the_cap_are_counted_not_kept() {
    // 8 MiB of stray `}`: every one is an error; the load reports the cap's worth and says there were more.
    let d = errors(&"}\n".repeat(1 << 22));
    assert_eq!(d.error_count(), herald_conf::diag::MAX_ERRORS + 1);
    let last = d.errors().last().unwrap().to_string();
    assert!(
        last.starts_with("t.conf:201:1: error: too many errors (200)"),
        "{last}"
    );
}

#[test]
fn option_in_the_wrong_scope() {
    let (l, c, m) = single("binding_group g {\n  delivery_response_timeout = 100\n}\n");
    assert_eq!((l, c), (2, 3));
    assert!(m.contains("not valid in a binding_group scope"), "{m}");
    assert!(m.contains("valid in: global, binding, domain"), "{m}");
}

#[test]
fn unknown_option_with_suggestion() {
    let (l, c, m) = single("domain a.com {\n    max_outbound_conections = 3\n}\n");
    assert_eq!((l, c), (2, 5));
    assert!(
        m.contains("unknown option `max_outbound_conections`"),
        "{m}"
    );
    assert!(
        m.contains("did you mean `max_outbound_connections`?"),
        "{m}"
    );
}

#[test]
fn scope_in_the_wrong_place_and_unknown_scope() {
    let (l, c, m) = single("domain a.com {\n  domain b.com { }\n}\n");
    assert_eq!((l, c), (2, 3));
    assert!(m.contains("not valid inside `domain`"), "{m}");
    let (_, _, m) = single("domian a.com { }\n");
    assert!(m.contains("did you mean `domain`?"), "{m}");
    let (_, _, m) = single("apn \"x\" { }\n");
    assert!(m.contains("takes no name"), "{m}");
    let (_, _, m) = single("domain \"/([a-z/\" { }\n");
    assert!(m.contains("regular expression"), "{m}");
    let (_, _, m) = single("esmtp_listener { listen \"nowhere\" { } }\n");
    assert!(m.contains("listen address"), "{m}");
}

#[test]
fn display_format_is_file_line_col() {
    let d = errors("x = 1\n");
    let text = d.to_string();
    assert!(
        text.starts_with("t.conf:1:1: error: unknown option `x`"),
        "{text}"
    );
}

#[test]
fn all_errors_of_a_file_are_reported() {
    let text = "\
retry_interval = soon
domain a.com {
  tls_verfy = host
  routes = ( \"https://api.push.apple.com\" )
  max_retries = 3
  mcmt_reception = allow
}
bogus_scope { x = 1 }
idle_timeout 4
message_expiration = 10
";
    let list = error_list(text);
    let at: Vec<(u32, u32)> = list.iter().map(|(l, c, _)| (*l, *c)).collect();
    assert_eq!(
        at,
        vec![(1, 18), (3, 3), (6, 3), (8, 1), (9, 14)],
        "{list:?}"
    );
}

#[test]
fn warnings_for_inert_options_and_verification_off() {
    let c = Config::parse_str(
        "w.conf",
        "domain a.com {\n  tls = required\n  tls_ciphers = \"DEFAULT\"\n  tls_verify = \"no\"\n}\n",
    )
    .unwrap();
    let w: Vec<String> = c.warnings().iter().map(|d| d.to_string()).collect();
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(w[0].starts_with("w.conf:2:3: warning: `tls`"), "{}", w[0]);
    assert!(
        w[1].starts_with("w.conf:3:3: warning: `tls_ciphers`"),
        "{}",
        w[1]
    );
    assert!(
        w[2].starts_with("w.conf:4:16: warning: `tls_verify = no`"),
        "{}",
        w[2]
    );
    assert!(c.warnings().iter().all(|d| d.severity == Severity::Warning));
}

#[test]
fn ten_megabyte_line_is_handled() {
    // A 10 MB bare value, a 10 MB unterminated string, 10 MB of braces and 10 MB of one unknown word.
    let cases = [
        format!("tls_certificate = {}", "a".repeat(10 << 20)),
        format!("tls_key = \"{}", "b".repeat(10 << 20)),
        "{".repeat(10 << 20),
        "x".repeat(10 << 20),
        format!("retry_interval = {}", "9".repeat(10 << 20)),
    ];
    for (i, text) in cases.iter().enumerate() {
        let start = Instant::now();
        let result = Config::parse_str("big.conf", text);
        // Reported, not asserted (tests do not assert on speed); the linear lexer keeps each case well under a
        // second in a release build.
        eprintln!("case {i}: {:?}", start.elapsed());
        if let Err(d) = result {
            for e in d.all() {
                assert!(
                    e.to_string().len() < 600,
                    "case {i}: diagnostic too long: {} bytes",
                    e.to_string().len()
                );
            }
            assert!(d.all().len() <= herald_conf::diag::MAX_ERRORS + 1);
        }
    }
    // The one valid case loaded; the unterminated string is at 1:11.
    assert!(Config::parse_str("big.conf", &cases[0]).is_ok());
    let d = Config::parse_str("big.conf", &cases[1]).unwrap_err();
    let first = d.errors().next().unwrap();
    assert_eq!((first.location.line, first.location.col), (1, 11));
    let d = Config::parse_str("big.conf", &cases[4]).unwrap_err();
    assert!(d.to_string().contains("characters)"), "{d}");
}

#[test]
fn non_utf8_is_an_error_not_a_panic() {
    let d = Config::parse_bytes("bin.conf", b"retry_interval = 5\nx = \xff\xfe\n").unwrap_err();
    let first = d.errors().next().unwrap();
    assert_eq!((first.location.line, first.location.col), (2, 5));
    assert!(first.message.contains("UTF-8"));
}

#[test]
fn unquoted_equals_in_a_list_gets_a_hint() {
    let (l, c, m) = single("domain x {\n  routes = ( apn://gw.example?port=2195 )\n}\n");
    assert_eq!((l, c), (2, 35));
    assert!(m.contains("must be quoted"), "{m}");
}

#[test]
fn a_binding_declared_in_two_places_is_refused_naming_both() {
    // Two binding groups.
    let (l, c, m) = single(
        "binding_group g1 { binding b { max_outbound_connections = 1 } }\n\
         binding_group g2 { binding b { max_outbound_connections = 2 } }\n",
    );
    assert_eq!((l, c), (2, 28));
    assert!(
        m.contains("binding \"b\" is already declared in binding_group \"g1\" at t.conf:1:28"),
        "{m}"
    );
    // The top level and a group, in either order.
    let (l, c, m) = single("binding b { }\nbinding_group g { binding b { } }\n");
    assert_eq!((l, c), (2, 27));
    assert!(
        m.contains("binding \"b\" is already declared in the top level at t.conf:1:9"),
        "{m}"
    );
    let (l, c, m) =
        single("binding_group g { binding \"b\" { } }\nbinding b { idle_timeout = 3 }\n");
    assert_eq!((l, c), (2, 9));
    assert!(
        m.contains("already declared in binding_group \"g\" at t.conf:1:27"),
        "{m}"
    );
    // Repeated in the same place, stanzas merge as before; names are case-sensitive.
    let c = Config::parse_str(
        "t.conf",
        "binding_group g { binding b { idle_timeout = 3 } }\nbinding_group g { binding b { retry_interval = 4 } }\n\
         binding x { }\nbinding x { }\nbinding B { }\n",
    )
    .unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(
        c.bindings(),
        [
            (None, "default"),
            (Some("g"), "b"),
            (None, "x"),
            (None, "B")
        ]
    );
    // `default`, declared in a group, is listed once, with its group.
    let c = Config::parse_str("t.conf", "binding_group g { binding default { } }\n").unwrap();
    assert_eq!(c.bindings(), [(Some("g"), "default")]);
    let (_, _, m) = single("binding default { }\nbinding_group g { binding default { } }\n");
    assert!(m.contains("binding \"default\" is already declared"), "{m}");
}

#[test]
fn per_domain_options_are_refused_in_a_domain_stanza_inside_a_binding_or_group() {
    for (text, outer) in [
        (
            "binding \"b\" {\n  domain \"x\" { outcome_webhook_url = \"https://h/x\" }\n}\n",
            "binding",
        ),
        (
            "binding_group g {\n  domain \"x\" { outcome_webhook_url = \"https://h/x\" }\n}\n",
            "binding_group",
        ),
        (
            "binding_group g { binding b {\n  domain \"x\" { outcome_webhook_url = \"https://h/x\" }\n} }\n",
            "binding",
        ),
    ] {
        let (l, c, m) = single(text);
        assert_eq!((l, c), (2, 16), "{text}");
        assert!(
            m.contains(&format!(
                "option `outcome_webhook_url` is not valid in a domain stanza inside a {outer}"
            )),
            "{m}"
        );
        assert!(
            m.contains("set it in the top-level `domain \"x\"` stanza"),
            "{m}"
        );
    }
    for name in [
        "apn_channel_route = \"https://m.example\"",
        "apn_broadcast_route = \"https://b.example\"",
        "outcome_webhook_secret = s",
        "outcome_webhook_events = delivered",
        "outcome_webhook_max_age = 60",
        "outcome_webhook_backlog = 5",
    ] {
        let (_, _, m) = single(&format!("binding b {{ domain x {{ {name} }} }}\n"));
        assert!(m.contains("top-level `domain \"x\"`"), "{name}: {m}");
    }
    // At the top level they stay valid, and delivery options stay valid in nested domain stanzas.
    Config::parse_str(
        "t.conf",
        "domain x { outcome_webhook_url = \"https://h/x\"  apn_broadcast_route = \"https://b.example\" }\n\
         domain \"/^y/\" { outcome_webhook_backlog = 5 }\n\
         binding b { domain x { routes = ( \"https://api.push.apple.com\" )  mx_failures_to_delay = 3 } }\n",
    )
    .unwrap_or_else(|d| panic!("{d}"));
}

#[test]
fn durations_are_bounded_at_a_hundred_years() {
    let (l, c, m) = single("retry_interval = 9223372036854775000\n");
    assert_eq!((l, c), (1, 18));
    assert!(
        m.contains("`retry_interval`: more than the maximum of 3153600000 seconds (100 years)"),
        "{m}"
    );
    // Past what 64 bits hold, the same reason.
    let (_, _, m) = single("ec_logger m { heartbeat = 99999999999999999999999 }\n");
    assert!(
        m.contains("`heartbeat`: more than the maximum of 3153600000 seconds"),
        "{m}"
    );
    let (_, _, m) = single("delivery_response_timeout = 3153600000001\n");
    assert!(
        m.contains("`delivery_response_timeout`: more than the maximum of 3153600000000 milliseconds (100 years)"),
        "{m}"
    );
    // The maximum itself is accepted; words are still words.
    let c = Config::parse_str(
        "t.conf",
        "retry_interval = 3153600000\ndelivery_response_timeout = 3153600000000\n",
    )
    .unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(
        c.domain_settings(None, None, "x")
            .retry
            .retry_interval
            .as_secs(),
        3_153_600_000
    );
    let (_, _, m) = single("retry_interval = soon\n");
    assert!(
        m.contains("expected a non-negative whole number of seconds"),
        "{m}"
    );
}

#[test]
fn momentum_console_authentication_points_to_control_password() {
    // Momentum's own Control_Listener example.
    let list = error_list(
        "Control_Listener {\n  Listen \"/tmp/2025\" { File_Mode = 0666 }\n  Listen \":2025\" {\n    \
         Enable_Authentication = \"true\"\n    \
         AuthDigestMD5Parameters = [ uri = \"digest:///opt/msys/ecelerity/etc/console_passwd\" ]\n  }\n}\n",
    );
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!((list[0].0, list[0].1), (4, 5));
    assert_eq!((list[1].0, list[1].1), (5, 5));
    for (_, _, m) in &list {
        assert!(m.starts_with("unknown option `"), "{m}");
        assert!(
            m.contains("to require a password on this control listener, set `control_password"),
            "{m}"
        );
        assert!(!m.contains("did you mean"), "{m}");
    }
    // Elsewhere, the same options still name herald's ways.
    let (_, _, m) = single("esmtp_listener { enable_authentication = true }\n");
    assert!(
        m.contains("`control_password`") && m.contains("`api_key`"),
        "{m}"
    );
}

/// Momentum's HTTP listener options for client authentication and client certificates are refused, each named
/// with what herald offers instead, and never taken for a misspelling of an option of herald's.
#[test]
fn momentum_http_listener_authentication_and_client_certificates_name_herald_s_ways() {
    let (_, _, m) =
        single("http_listener { AuthPlainParameters = [ uri = \"file:///etc/passwd\" ] }\n");
    assert!(m.starts_with("unknown option `AuthPlainParameters`"), "{m}");
    assert!(
        m.contains("an HTTP listener an API key with `api_key`"),
        "{m}"
    );
    for option in [
        "TLS_Client_CA = \"/etc/ca.pem\"",
        "TLS_Verify_Mode = \"require\"",
        "TLS_Verified_Peer_Is_Authorized = true",
    ] {
        let (_, _, m) = single(&format!("http_listener {{ {option} }}\n"));
        assert!(m.starts_with("unknown option `TLS_"), "{m}");
        assert!(m.contains("client certificate options"), "{m}");
        assert!(
            m.contains("`always_deny`") && m.contains("`api_key`"),
            "{m}"
        );
        assert!(!m.contains("did you mean"), "{m}");
    }
}

#[test]
fn two_stanzas_naming_one_listen_address_or_peer_block_are_refused() {
    let (l, c, m) = single("esmtp_listener {\n  listen \":25\" { }\n  listen \"*:25\" { }\n}\n");
    assert_eq!((l, c), (3, 10));
    assert!(
        m.contains(
            "listen \"*:25\" names the same address (0.0.0.0:25) as listen \":25\" at t.conf:2:3"
        ),
        "{m}"
    );
    let (_, _, m) = single("http_listener { listen \"[*]:80\" { } listen \"[::]:80\" { } }\n");
    assert!(m.contains("([::]:80)"), "{m}");
    let (l, c, m) = single(
        "esmtp_listener {\n  peer \"10.0.0.0/8\" { }\n  listen \":25\" { peer \"10.0.0.0/8\" { } }\n  peer \"10.1.2.3/8\" { }\n}\n",
    );
    assert_eq!((l, c), (4, 8));
    assert!(
        m.contains(
            "peer \"10.1.2.3/8\" names the same address block (10.0.0.0/8) as peer \"10.0.0.0/8\""
        ),
        "{m}"
    );
    // The same spelling twice merges, as any repeated stanza.
    let c = Config::parse_str(
        "t.conf",
        "esmtp_listener { listen \":25\" { } listen \":25\" { enable = false } peer \"127.0.0.1\" { } }\n",
    )
    .unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(c.listeners().len(), 1);
}

/// List items are separated by blanks (docs/momentum-compat.md#configuration-language): a comma between API keys
/// would otherwise be read as a key of its own that any client could send.
#[test]
fn a_comma_between_list_items_is_refused_where_it_stands() {
    let (l, c, m) = single(
        "http_listener {\n  listen \"127.0.0.1:8081\" {\n    api_keys = ( \"k1-aaaa\", \"k2-bbbb\" )\n  }\n}\n",
    );
    assert_eq!((l, c), (3, 27));
    assert!(m.contains("a comma in a list"), "{m}");
    let (l, c, m) = single("http_listener {\n  dashboard_hosts = ( a.example, b.example )\n}\n");
    assert_eq!((l, c), (2, 23));
    assert!(m.contains("separated by blanks"), "{m}");
    // A quoted item may contain one; blanks alone separate items.
    let config = Config::parse_str(
        "t.conf",
        "http_listener {\n  listen \"127.0.0.1:8081\" {\n    api_keys = ( \"k1,aaaa\" \"k2\" )\n  }\n}\n",
    )
    .expect("a quoted comma is part of its item");
    drop(config);
}

/// A route's host must be one a connection can be opened to as written: an IPv6 address in brackets, else a DNS
/// name or an IPv4 address.
#[test]
fn a_route_host_that_is_no_host_is_refused() {
    for route in [
        "https://fe80::1",
        "https://user@api.example",
        "apn://::1?port=2195",
    ] {
        let (l, _, m) = single(&format!(
            "domain \"a.example\" {{\n  routes = ( \"{route}\" )\n}}\n"
        ));
        assert_eq!(l, 2, "{route}");
        assert!(
            m.contains("neither a DNS name nor an IP address"),
            "{route}: {m}"
        );
    }
}

/// An empty `control_password` would be taken as a password (`auth ""`) by the console, and as none by a reader:
/// the configuration is refused at the line that sets it.
#[test]
fn an_empty_control_password_refuses_the_configuration() {
    let (l, c, m) = single(
        "control_listener {\n  listen \"127.0.0.1:2025\" {\n    control_password = \"\"\n  }\n}\n",
    );
    assert_eq!((l, c), (3, 5));
    assert!(m.contains("control_password is empty"), "{m}");
}

/// `outcome_webhook_url` takes only an http:// or https:// URL a web client can post to (the scheme in any case):
/// anything else is an error at its line naming the option and what is wrong, instead of a webhook that fails at
/// every attempt. A password or query in the URL is not repeated.
#[test]
fn an_outcome_webhook_url_must_be_an_http_url() {
    let cases = [
        ("ftp://hooks.example/h", "unsupported scheme `ftp`"),
        ("not a url", "expected an http:// or https:// URL"),
        ("hooks.example/h", "expected an http:// or https:// URL"),
        ("https://", "no host"),
        ("https:///path", "no host"),
        ("https://hooks example/h", "blanks"),
        ("https://hooks.example:0/h", "bad port `0`"),
        ("https://hooks.example:99999/h", "bad port `99999`"),
        ("https://hooks.example:x/h", "bad port `x`"),
        ("https://192.0.2.300/h", "host `192.0.2.300`"),
        ("https://hooks!.example/h", "host `hooks!.example`"),
        ("https://[::g]/h", "host `::g`"),
    ];
    for (url, want) in cases {
        let text = format!("domain \"a.example\" {{\n  outcome_webhook_url = \"{url}\"\n}}\n");
        let (line, _, m) = single(&text);
        assert_eq!(line, 2, "{url}: {m}");
        assert!(m.contains("outcome_webhook_url"), "{url}: {m}");
        assert!(m.contains(want), "{url}: {want:?} not in {m}");
    }
    let shown =
        errors("outcome_webhook_url = \"ftp://hook:s3cr3t@hooks.example/h?key=k3y\"\n").to_string();
    assert!(shown.contains("t.conf:1:"), "{shown}");
    assert!(
        !shown.contains("s3cr3t") && !shown.contains("k3y"),
        "{shown}"
    );

    for url in [
        "HTTP://192.0.2.2:28118/hook",
        "https://hooks.example/h?key=k",
        "Https://user:pw@hooks.example:8443/a/b#f",
        "http://[2001:db8::1]:8080/h",
        "http://127.1/h",
        "https://hooks.example./h",
        "",
    ] {
        let text = format!("domain \"a.example\" {{\n  outcome_webhook_url = \"{url}\"\n}}\n");
        if let Err(d) = Config::parse_str("t.conf", &text) {
            panic!("{url:?} refused: {d}");
        }
    }
}
