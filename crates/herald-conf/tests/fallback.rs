//! Fallback along scope paths: every worked example of docs/momentum-compat.md#fallback with its documented results,
//! plus regex domains (docs/momentum-compat.md#lexical-rules), the host exception and listener fallback.

use herald_conf::{Config, ScopePath, Value};

fn eval(config: &Config, words: &[&str]) -> Value {
    config
        .eval_words(words)
        .unwrap_or_else(|e| panic!("{words:?}: {e}"))
        .1
}

// docs/momentum-compat.md#fallback, first worked example.
const EXAMPLE_1: &str = r#"
message_expiration = 86400
binding "example"  { message_expiration = 3600 }
domain "example.com" { message_expiration = 120 }
binding "example2" { message_expiration = 7200
   domain example.com { message_expiration = 86400 }
   domain "anotherexample.com" { max_resident_active_queue_size = 500 } }
binding "example3" { domain "example.com" { max_resident_active_queue_size = 500 }
   domain "anotherexample.com" { message_expiration = 86400 } }
"#;

#[test]
fn example_1_binding_example_uses_its_own_value() {
    let c = Config::parse_str("ex1.conf", EXAMPLE_1).unwrap();
    assert_eq!(
        eval(&c, &["binding", "example", "message_expiration"]),
        Value::Int(3600)
    );
    // The binding's value beats the global domain stanza.
    assert_eq!(
        eval(
            &c,
            &[
                "binding",
                "example",
                "domain",
                "example.com",
                "message_expiration"
            ]
        ),
        Value::Int(3600)
    );
    assert_eq!(
        eval(
            &c,
            &[
                "binding",
                "example",
                "domain",
                "other.org",
                "message_expiration"
            ]
        ),
        Value::Int(3600)
    );
}

#[test]
fn example_1_example2_binding_and_its_domains() {
    let c = Config::parse_str("ex1.conf", EXAMPLE_1).unwrap();
    assert_eq!(
        eval(&c, &["binding", "example2", "message_expiration"]),
        Value::Int(7200)
    );
    assert_eq!(
        eval(
            &c,
            &[
                "binding",
                "example2",
                "domain",
                "example.com",
                "message_expiration"
            ]
        ),
        Value::Int(86400)
    );
    // anotherexample.com sets another option only: falls back to the binding.
    assert_eq!(
        eval(
            &c,
            &[
                "binding",
                "example2",
                "domain",
                "anotherexample.com",
                "message_expiration"
            ]
        ),
        Value::Int(7200)
    );
    assert_eq!(
        eval(
            &c,
            &[
                "binding",
                "example2",
                "domain",
                "anotherexample.com",
                "max_resident_active_queue_size"
            ]
        ),
        Value::Int(500)
    );
}

#[test]
fn example_1_example3_falls_back_to_global_domain_then_global() {
    let c = Config::parse_str("ex1.conf", EXAMPLE_1).unwrap();
    assert_eq!(
        eval(
            &c,
            &[
                "binding",
                "example3",
                "domain",
                "anotherexample.com",
                "message_expiration"
            ]
        ),
        Value::Int(86400)
    );
    // example3 sets nothing for example.com's expiration: the global domain stanza (120) wins over global.
    assert_eq!(
        eval(
            &c,
            &[
                "binding",
                "example3",
                "domain",
                "example.com",
                "message_expiration"
            ]
        ),
        Value::Int(120)
    );
    assert_eq!(
        eval(
            &c,
            &[
                "binding",
                "example3",
                "domain",
                "elsewhere.net",
                "message_expiration"
            ]
        ),
        Value::Int(86400)
    );
    // The same through the typed, cached view.
    let d = c.domain_settings(None, Some("example3"), "example.com");
    assert_eq!(d.retry.message_expiration.as_secs(), 120);
    let d = c.domain_settings(None, Some("example3"), "elsewhere.net");
    assert_eq!(d.retry.message_expiration.as_secs(), 86400);
    let d = c.domain_settings(None, Some("example2"), "EXAMPLE.com");
    assert_eq!(d.retry.message_expiration.as_secs(), 86400);
}

// docs/momentum-compat.md#fallback, binding-group example.
const EXAMPLE_2: &str = r#"
max_outbound_connections = 30
binding_group "group1" { max_outbound_connections = 5
  binding "example" { bind_address = 10.10.10.10  max_outbound_connections = 15
    domain "example.com" { } } }
"#;

#[test]
fn example_2_binding_group() {
    let c = Config::parse_str("ex2.conf", EXAMPLE_2).unwrap();
    let words = [
        "binding_group",
        "group1",
        "binding",
        "example",
        "domain",
        "example.com",
        "max_outbound_connections",
    ];
    assert_eq!(eval(&c, &words), Value::Int(15));
    // Without the group on the command line the binding's group is found.
    assert_eq!(eval(&c, &words[2..]), Value::Int(15));
    assert_eq!(
        c.domain_settings(Some("group1"), Some("example"), "example.com")
            .max_outbound_connections,
        15
    );
    assert_eq!(
        c.domain_settings(Some("group1"), Some("example"), "example.com")
            .bind_address,
        Some("10.10.10.10".parse().unwrap())
    );

    // With the binding's value removed, the group's value applies.
    let without = EXAMPLE_2.replace("max_outbound_connections = 15", "");
    let c = Config::parse_str("ex2b.conf", &without).unwrap();
    assert_eq!(eval(&c, &words), Value::Int(5));
    // Outside the group, the global value.
    assert_eq!(
        eval(&c, &["domain", "example.com", "max_outbound_connections"]),
        Value::Int(30)
    );
}

/// Removes the levels of `levels` one at a time, most specific first, and checks that `retry_interval` comes from
/// the most specific level left for (`group`, `binding`, d.com), in delivery and in `config eval`. `text` writes
/// the configuration from the line of each level (empty when removed).
fn precedence(
    levels: &[&str],
    text: impl Fn(&dyn Fn(&str) -> String) -> String,
    group: Option<&str>,
    binding: &str,
) {
    for skip in 0..=levels.len() {
        let v = |tag: &str| {
            let n = levels.iter().position(|t| *t == tag).unwrap() + 1;
            if levels[..skip].contains(&tag) {
                String::new()
            } else {
                format!("retry_interval = {n}")
            }
        };
        let text = text(&v);
        let c = Config::parse_str("order.conf", &text).unwrap_or_else(|d| panic!("{d}\n{text}"));
        let expected = if skip < levels.len() {
            skip as u64 + 1
        } else {
            1200
        };
        // With its group named, or found from the binding.
        for g in [group, None] {
            let got = c
                .domain_settings(g, Some(binding), "d.com")
                .retry
                .retry_interval
                .as_secs();
            assert_eq!(got, expected, "skip {skip}\n{text}");
        }
        let mut words = Vec::new();
        if let Some(g) = group {
            words.extend(["binding_group", g]);
        }
        words.extend(["binding", binding, "domain", "d.com", "retry_interval"]);
        assert_eq!(eval(&c, &words), Value::Int(expected as i64));
        assert_eq!(
            eval(&c, &words[words.len() - 5..]),
            Value::Int(expected as i64)
        );
    }
}

#[test]
fn full_precedence_order() {
    // docs/architecture.md#configuration: binding_group::binding::domain > binding::domain > binding_group::domain >
    // binding > binding_group > global domain > global > default. A binding is declared in one place, so a binding
    // in a group goes binding_group::binding::domain > binding_group::domain > binding > binding_group > …, and a
    // top-level one binding::domain > binding > …; the other group and binding of each configuration are there to
    // show they do not apply.
    precedence(
        &["GBD", "GD", "GB", "G", "D", "GLOBAL"],
        |v| {
            format!(
                "{}\ndomain d.com {{ {} }}\nbinding_group g {{ {} domain d.com {{ {} }} binding b {{ {} domain d.com {{ {} }} }} }}\n\
                 binding other {{ retry_interval = 99 domain d.com {{ retry_interval = 98 }} }}\n",
                v("GLOBAL"),
                v("D"),
                v("G"),
                v("GD"),
                v("GB"),
                v("GBD"),
            )
        },
        Some("g"),
        "b",
    );
    precedence(
        &["BD", "B", "D", "GLOBAL"],
        |v| {
            format!(
                "{}\ndomain d.com {{ {} }}\nbinding b {{ {} domain d.com {{ {} }} }}\n\
                 binding_group g {{ retry_interval = 99 domain d.com {{ retry_interval = 98 }} binding o {{ }} }}\n",
                v("GLOBAL"),
                v("D"),
                v("B"),
                v("BD"),
            )
        },
        None,
        "b",
    );
}

#[test]
fn unconfigured_domain_gets_global_and_defaults() {
    let c = Config::parse_str("g.conf", "retry_interval = 60\n").unwrap();
    let d = c.domain_settings(None, None, "never.configured");
    assert_eq!(d.retry.retry_interval.as_secs(), 60);
    assert_eq!(d.max_outbound_connections, 32);
    assert_eq!(d.idle_timeout.as_secs(), 5);
    assert_eq!(d.retry.max_retry_interval.as_secs(), 43200);
    assert_eq!(
        eval(
            &c,
            &["domain", "never.configured", "delivery_response_timeout"]
        ),
        Value::Int(5000)
    );
    assert_eq!(
        eval(&c, &["binding", "nope", "domain", "x.y", "retry_interval"]),
        Value::Int(60)
    );
}

#[test]
fn host_scope_does_not_fall_back() {
    // docs/momentum-compat.md#fallback: undefined max_outbound_connections in a host stanza is -1, no fallback.
    let c = Config::parse_str(
        "h.conf",
        "max_outbound_connections = 30\nhost \"example.com\" { }\nhost \"limited.com\" { max_outbound_connections = 4 }\n",
    )
    .unwrap();
    assert_eq!(
        eval(&c, &["host", "example.com", "max_outbound_connections"]),
        Value::Int(-1)
    );
    assert_eq!(
        eval(&c, &["host", "unknown.com", "max_outbound_connections"]),
        Value::Int(-1)
    );
    assert_eq!(
        eval(&c, &["host", "limited.com", "max_outbound_connections"]),
        Value::Int(4)
    );
    assert_eq!(eval(&c, &["max_outbound_connections"]), Value::Int(30));
}

#[test]
fn regex_domains_after_exact_in_declaration_order() {
    // docs/momentum-compat.md#lexical-rules
    let c = Config::parse_str(
        "re.conf",
        r#"
domain "/(?:^|[.])example[.](?:com|co[.]uk)$/" { retry_interval = 1 }
domain "/example/" { retry_interval = 2 }
domain "www.example.com" { retry_interval = 3 }
binding "b" { domain "/[.]org$/" { retry_interval = 4 } }
"#,
    )
    .unwrap();
    let r = |b: Option<&str>, d: &str| c.domain_settings(None, b, d).retry.retry_interval.as_secs();
    assert_eq!(r(None, "www.example.com"), 3, "exact beats regex");
    assert_eq!(r(None, "mail.example.co.uk"), 1, "first matching regex");
    assert_eq!(r(None, "example.net"), 2, "second regex");
    assert_eq!(
        r(None, "MAIL.EXAMPLE.COM"),
        1,
        "domains are case-insensitive"
    );
    assert_eq!(r(None, "nothing.net"), 1200);
    assert_eq!(r(Some("b"), "x.org"), 4);
    assert_eq!(
        r(Some("b"), "a.example.com"),
        1,
        "binding without a match falls back to the global regex stanza"
    );
    assert_eq!(c.domains().len(), 4);
}

/// docs/momentum-compat.md#lexical-rules: in one container, an option unset in the exact domain stanza is looked up in
/// the matching regex stanzas (in declaration order) before any outer scope. `container` wraps the stanzas in a scope
/// (or none).
fn regex_fills_what_exact_leaves_unset(
    open: &str,
    close: &str,
    group: Option<&str>,
    binding: Option<&str>,
) {
    let text = format!(
        r#"
max_outbound_connections = 32
retry_interval = 99
max_retries = 11
{open}
  domain "push.example.org" {{ retry_interval = 5 }}
  domain "/[.]example[.]org$/" {{ max_outbound_connections = 4 }}
  domain "/^push[.]/" {{ max_outbound_connections = 9  max_retries = 3 }}
  domain "/org$/" {{ max_retries = 7  message_expiration = 60 }}
{close}
"#
    );
    let c = Config::parse_str("re.conf", &text).unwrap_or_else(|e| panic!("{e}"));
    let d = c.domain_settings(group, binding, "push.example.org");
    assert_eq!(d.retry.retry_interval.as_secs(), 5, "{open}: exact stanza");
    assert_eq!(
        d.max_outbound_connections, 4,
        "{open}: first matching regex, not the global value"
    );
    assert_eq!(
        d.retry.max_retries,
        herald_conf::MaxRetries::Count(3),
        "{open}: second regex sets what the first leaves unset"
    );
    assert_eq!(
        d.retry.message_expiration.as_secs(),
        60,
        "{open}: third regex"
    );
    // config eval resolves along the same path.
    let mut words: Vec<&str> = Vec::new();
    if let Some(g) = group {
        words.extend(["binding_group", g]);
    }
    if let Some(b) = binding {
        words.extend(["binding", b]);
    }
    words.extend(["domain", "push.example.org", "max_outbound_connections"]);
    assert_eq!(eval(&c, &words), Value::Int(4), "{open}: config eval");
    // A domain with no exact stanza goes straight to the regexes, in order.
    let other = c.domain_settings(group, binding, "www.example.org");
    assert_eq!(other.max_outbound_connections, 4);
    assert_eq!(other.retry.max_retries, herald_conf::MaxRetries::Count(7));
    assert_eq!(
        other.retry.retry_interval.as_secs(),
        99,
        "{open}: outer scope"
    );
}

#[test]
fn regex_stanza_fills_options_unset_in_exact_stanza_global() {
    regex_fills_what_exact_leaves_unset("", "", None, None);
}

#[test]
fn regex_stanza_fills_options_unset_in_exact_stanza_binding() {
    regex_fills_what_exact_leaves_unset(r#"binding "b" {"#, "}", None, Some("b"));
}

#[test]
fn regex_stanza_fills_options_unset_in_exact_stanza_binding_group() {
    regex_fills_what_exact_leaves_unset(r#"binding_group "g" {"#, "}", Some("g"), None);
}

#[test]
fn regex_stanza_fills_options_unset_in_exact_stanza_grouped_binding() {
    regex_fills_what_exact_leaves_unset(
        r#"binding_group "g" { binding "b" {"#,
        "} }",
        Some("g"),
        Some("b"),
    );
    regex_fills_what_exact_leaves_unset(
        r#"binding_group "g" { binding "b" {"#,
        "} }",
        None,
        Some("b"),
    );
}

#[test]
fn inner_container_regex_beats_outer_exact_stanza() {
    // The binding's regex stanza is in a more specific container than the global exact stanza.
    let c = Config::parse_str(
        "re.conf",
        r#"
domain "push.example.org" { max_outbound_connections = 2  retry_interval = 5 }
binding "b" { domain "/example/" { max_outbound_connections = 6 } }
"#,
    )
    .unwrap();
    let d = c.domain_settings(None, Some("b"), "push.example.org");
    assert_eq!(d.max_outbound_connections, 6);
    assert_eq!(d.retry.retry_interval.as_secs(), 5);
    assert_eq!(
        c.domain_settings(None, None, "push.example.org")
            .max_outbound_connections,
        2
    );
}

#[test]
fn host_regex_stanzas_fill_what_the_exact_host_leaves_unset() {
    let c = Config::parse_str(
        "re.conf",
        r#"
host "api.push.apple.com" { }
host "/apple[.]com$/" { max_outbound_connections = 64 }
binding "b" { host "api.push.apple.com" { max_outbound_connections = 8 } }
"#,
    )
    .unwrap();
    assert_eq!(
        eval(
            &c,
            &["host", "api.push.apple.com", "max_outbound_connections"]
        ),
        Value::Int(64)
    );
    assert_eq!(
        eval(
            &c,
            &[
                "binding",
                "b",
                "host",
                "api.push.apple.com",
                "max_outbound_connections"
            ]
        ),
        Value::Int(8)
    );
    assert_eq!(
        eval(&c, &["host", "other.example", "max_outbound_connections"]),
        Value::Int(-1)
    );
}

#[test]
fn listener_fallback_listen_then_listener() {
    // docs/momentum-compat.md#fallback: listen -> listener; peer -> listen -> listener, most specific CIDR.
    let c = Config::parse_str(
        "l.conf",
        r#"
esmtp_listener {
  mcmt_reception = reject
  always_deny = ( 0.0.0.0/0 )
  listen ":25" { mcmt_reception = "allow"
    peer "10.0.0.0/8" { always_allow = ( 10.0.0.0/8 ) }
    peer "10.1.0.0/16" { mcmt_reception = passthru } }
  listen "127.0.0.1:2525" { }
  peer "192.168.0.0/16" { mcmt_reception = allow }
}
"#,
    )
    .unwrap();
    let e = |w: &[&str]| eval(&c, w);
    assert_eq!(
        e(&["esmtp_listener", "listen", ":25", "mcmt_reception"]),
        Value::Str("allow".into())
    );
    assert_eq!(
        e(&[
            "esmtp_listener",
            "listen",
            "127.0.0.1:2525",
            "mcmt_reception"
        ]),
        Value::Str("reject".into())
    );
    assert_eq!(
        e(&[
            "esmtp_listener",
            "listen",
            ":25",
            "peer",
            "10.1.2.3",
            "mcmt_reception"
        ]),
        Value::Str("passthru".into())
    );
    assert_eq!(
        e(&[
            "esmtp_listener",
            "listen",
            ":25",
            "peer",
            "10.2.2.3",
            "mcmt_reception"
        ]),
        Value::Str("allow".into())
    );
    assert_eq!(
        e(&["esmtp_listener", "peer", "192.168.1.1", "mcmt_reception"]),
        Value::Str("allow".into())
    );

    let ls = c.listeners();
    assert_eq!(ls.len(), 2);
    let l25 = &ls[0];
    assert_eq!(l25.address, ":25");
    assert!(l25.permits("10.9.9.9".parse().unwrap()));
    assert!(!l25.permits("8.8.8.8".parse().unwrap()));
    assert_eq!(
        l25.mcmt_reception_for("10.1.0.1".parse().unwrap()),
        herald_conf::McmtReception::Passthru
    );
    assert_eq!(
        l25.mcmt_reception_for("8.8.8.8".parse().unwrap()),
        herald_conf::McmtReception::Allow
    );
    // the listener-level peer is inherited by both listen stanzas
    assert_eq!(
        ls[1].mcmt_reception_for("192.168.3.3".parse().unwrap()),
        herald_conf::McmtReception::Allow
    );
}

/// `config eval` answers what the listener applies: a listener-level `peer` wins over its listen stanza for the
/// addresses it contains (docs/momentum-compat.md#fallback: peer -> listen -> listener), and the most specific peer
/// wins wherever it is declared.
#[test]
fn a_listener_level_peer_wins_over_the_listen_stanza_in_eval_as_at_run_time() {
    let c = Config::parse_str(
        "p.conf",
        r#"
esmtp_listener {
  peer "10.0.0.0/8" { mcmt_reception = reject }
  peer "10.1.0.0/16" { mcmt_reception = passthru }
  listen ":25" {
    mcmt_reception = allow
    peer "10.0.0.0/8" { mcmt_reception = allow }
  }
}
"#,
    )
    .unwrap();
    let e = |ip: &str| {
        eval(
            &c,
            &[
                "esmtp_listener",
                "listen",
                ":25",
                "peer",
                ip,
                "mcmt_reception",
            ],
        )
    };
    let listener = &c.listeners()[0];
    for (ip, want) in [
        // The listen stanza's own 10/8 overrides the listener's 10/8.
        ("10.9.9.9", "allow"),
        // The listener's 10.1/16 is more specific than the listen stanza's 10/8.
        ("10.1.2.3", "passthru"),
        // No peer: the listen stanza.
        ("8.8.8.8", "allow"),
    ] {
        assert_eq!(e(ip), Value::Str(want.into()), "eval for {ip}");
        assert_eq!(
            listener.mcmt_reception_for(ip.parse().unwrap()).word(),
            want,
            "run time for {ip}"
        );
    }
}

/// A listener-level `peer` still applies where a listen-level `peer` matches the client too: an option the listen
/// stanza's peer and the listen stanza leave unset comes from the listener's peer before the listener
/// (listener::listen::peer > listener::listen > listener::peer > listener), in `config eval` as in the settings the
/// listeners use.
#[test]
fn a_listener_peer_is_consulted_after_the_listen_stanza_when_a_listen_peer_matches() {
    let c = Config::parse_str(
        "p.conf",
        r#"
esmtp_listener {
  peer "10.0.0.0/8" { mcmt_reception = allow }
  listen "127.0.0.1:2525" {
    peer "10.1.0.0/16" { always_allow = ( 10.1.0.0/16 ) }
  }
}
"#,
    )
    .unwrap();
    let e = |ip: &str, option: &str| {
        eval(
            &c,
            &[
                "esmtp_listener",
                "listen",
                "127.0.0.1:2525",
                "peer",
                ip,
                option,
            ],
        )
    };
    let listener = &c.listeners()[0];
    for ip in ["10.1.2.3", "10.2.2.3", "::ffff:10.1.2.3"] {
        assert_eq!(
            e(ip, "mcmt_reception"),
            Value::Str("allow".into()),
            "eval for {ip}"
        );
        assert_eq!(
            listener.mcmt_reception_for(ip.parse().unwrap()),
            herald_conf::McmtReception::Allow,
            "run time for {ip}"
        );
    }
    // The listen stanza's peer still comes first for what it sets.
    assert_eq!(
        e("10.1.2.3", "always_allow"),
        Value::Cidrs(vec!["10.1.0.0/16".parse().unwrap()])
    );
    assert!(listener.always_allowed("10.1.2.3".parse().unwrap()));
    // Outside every peer: the listen stanza, then the listener, then the default.
    assert_eq!(
        e("192.0.2.1", "mcmt_reception"),
        Value::Str("passthru".into())
    );
    assert_eq!(
        listener.mcmt_reception_for("192.0.2.1".parse().unwrap()),
        herald_conf::McmtReception::Passthru
    );
}

/// The mirror case: the listener's peer is the narrower, so it applies first, and what it leaves unset comes from
/// the listen stanza's peer (then the listen stanza, then the listener), in `config eval` as at run time.
#[test]
fn a_listen_peer_is_consulted_after_a_narrower_listener_peer() {
    let c = Config::parse_str(
        "p.conf",
        r#"
esmtp_listener {
  mcmt_reception = reject
  peer "10.1.0.0/16" { always_allow = ( 10.1.0.0/16 ) }
  listen ":25" {
    always_deny = ( 0.0.0.0/0 )
    peer "10.0.0.0/8" { mcmt_reception = allow }
  }
}
"#,
    )
    .unwrap();
    let e =
        |ip: &str, option: &str| eval(&c, &["esmtp_listener", "listen", ":25", "peer", ip, option]);
    let listener = &c.listeners()[0];
    for (ip, want) in [
        ("10.1.2.3", "allow"),
        ("10.2.2.3", "allow"),
        ("8.8.8.8", "reject"),
    ] {
        assert_eq!(
            e(ip, "mcmt_reception"),
            Value::Str(want.into()),
            "eval for {ip}"
        );
        assert_eq!(
            listener.mcmt_reception_for(ip.parse().unwrap()).word(),
            want,
            "run time for {ip}"
        );
    }
    // The listener's 10.1/16 applies first for what it sets; the listen stanza's deny list comes after it.
    assert_eq!(
        e("10.1.2.3", "always_allow"),
        Value::Cidrs(vec!["10.1.0.0/16".parse().unwrap()])
    );
    assert!(listener.permits("10.1.2.3".parse().unwrap()));
    assert!(!listener.permits("10.2.2.3".parse().unwrap()));
}

#[test]
fn scope_path_errors() {
    let c = Config::parse_str("e.conf", "").unwrap();
    let err = c
        .eval_words(&["domian", "x", "retry_interval"])
        .unwrap_err();
    assert!(err.to_string().contains("did you mean `domain`"), "{err}");
    let err = c
        .eval_words(&["domain", "x", "retry_intervall"])
        .unwrap_err();
    assert!(
        err.to_string().contains("did you mean `retry_interval`"),
        "{err}"
    );
    let err = c
        .eval_words(&["domain", "x", "mcmt_reception"])
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("valid in: esmtp_listener, http_listener, listen, peer"),
        "{err}"
    );
    let err = c
        .eval_words(&["domain", "x", "domain", "y", "tls"])
        .unwrap_err();
    assert!(err.to_string().contains("not valid inside"), "{err}");
    assert!(c.eval_words::<&str>(&[]).is_err());
    assert!(ScopePath::parse_scope_words(&["binding"]).is_err());
}

#[test]
fn option_and_scope_names_case_insensitive_binding_names_not() {
    let c = Config::parse_str(
        "c.conf",
        "BINDING \"Bx\" { Retry_Interval = 7 }\nDomain Example.COM { TLS_Verify = CA }",
    )
    .unwrap();
    assert_eq!(
        eval(&c, &["binding", "Bx", "retry_interval"]),
        Value::Int(7)
    );
    assert_eq!(
        eval(&c, &["binding", "bx", "retry_interval"]),
        Value::Int(1200)
    );
    assert_eq!(
        eval(&c, &["domain", "example.com", "tls_verify"]),
        Value::Str("ca".into())
    );
}

#[test]
fn repeated_stanzas_merge_and_last_assignment_wins() {
    let c = Config::parse_str(
        "m.conf",
        "binding_group g { retry_interval = 1 }\nbinding_group g { max_retries = 3 }\nbinding_group g { retry_interval = 9 }\n",
    )
    .unwrap();
    assert_eq!(
        eval(&c, &["binding_group", "g", "retry_interval"]),
        Value::Int(9)
    );
    assert_eq!(
        eval(&c, &["binding_group", "g", "max_retries"]),
        Value::MaxRetries(herald_conf::MaxRetries::Count(3))
    );
    assert_eq!(c.tree().children().len(), 1);
}

#[test]
fn scope_words_may_keep_their_quotes() {
    let c = Config::parse_str(
        "q.conf",
        "esmtp_listener { listen \":25\" { mcmt_reception = allow } }",
    )
    .unwrap();
    assert_eq!(
        eval(
            &c,
            &["esmtp_listener", "listen", "\":25\"", "mcmt_reception"]
        ),
        Value::Str("allow".into())
    );
    assert_eq!(
        eval(&c, &["ESMTP_Listener", "Listen", ":25", "MCMT_Reception"]),
        Value::Str("allow".into())
    );
}

#[test]
fn pathway_fallback() {
    // docs/momentum-compat.md#fallback: Pathway_Group::Pathway > Pathway > Pathway_Group > Global
    let c = Config::parse_str(
        "p.conf",
        r#"
tls_certificate = /global.pem
pathway_group pg { mcmt_reception = reject  tls_certificate = /group.pem
  pathway p { mcmt_reception = allow } }
pathway p { tls_certificate = /top.pem }
pathway q { }
"#,
    )
    .unwrap();
    let e = |w: &[&str]| eval(&c, w);
    assert_eq!(
        e(&["pathway_group", "pg", "pathway", "p", "mcmt_reception"]),
        Value::Str("allow".into())
    );
    assert_eq!(
        e(&["pathway_group", "pg", "pathway", "p", "tls_certificate"]),
        Value::Str("/top.pem".into())
    );
    assert_eq!(
        e(&["pathway_group", "pg", "pathway", "q", "tls_certificate"]),
        Value::Str("/group.pem".into())
    );
    assert_eq!(
        e(&["pathway", "q", "tls_certificate"]),
        Value::Str("/global.pem".into())
    );
    assert_eq!(
        e(&["pathway", "q", "mcmt_reception"]),
        Value::Str("passthru".into())
    );
    // attaching a pathway to a listener loads, with a warning that herald does not apply it
    let c =
        Config::parse_str("p2.conf", "pathway p { }\nesmtp_listener { pathway = p }\n").unwrap();
    assert_eq!(c.warnings().len(), 1);
    assert!(
        c.warnings()[0].message.contains("pathway"),
        "{}",
        c.warnings()[0]
    );
}

/// The host stanza that caps connections to a host, and its scope: connections whose cap comes from the same
/// stanza share it (docs/configuration.md, "Bindings in delivery").
#[test]
fn host_connection_cap_names_the_stanza_that_sets_it() {
    let c = Config::parse_str(
        "t",
        r#"
host "h" { max_outbound_connections = 3 }
host "unset" { }
binding "b" { host "h" { max_outbound_connections = 5 } }
binding_group "g" {
  host "h" { max_outbound_connections = 7 }
  binding "in_g" { }
}
"#,
    )
    .unwrap();
    let cap = |g: Option<&str>, b: Option<&str>, h: &str| {
        c.host_connection_cap(g, b, h).map(|c| (c.limit, c.scope))
    };
    assert_eq!(
        cap(None, Some("default"), "h"),
        Some((3, r#"host "h""#.into()))
    );
    assert_eq!(
        cap(None, Some("b"), "h"),
        Some((5, r#"binding "b" host "h""#.into()))
    );
    assert_eq!(
        cap(None, Some("in_g"), "h"),
        Some((7, r#"binding_group "g" host "h""#.into()))
    );
    assert_eq!(cap(None, None, "unset"), None);
    assert_eq!(cap(None, None, "elsewhere"), None);
}

#[test]
fn listen_and_peer_stanzas_are_found_by_address_however_written() {
    let c = Config::parse_str(
        "t.conf",
        r#"esmtp_listener {
             mcmt_reception = allow
             listen ":25" { mcmt_reception = reject  peer "10.1.2.3/16" { mcmt_reception = passthru } }
             listen "[*]:26" { mcmt_reception = reject }
             peer "192.168.1.1" { always_deny = ( 0.0.0.0/0 ) }
           }"#,
    )
    .unwrap_or_else(|d| panic!("{d}"));
    for addr in [":25", "*:25", "0.0.0.0:25", "\":25\""] {
        assert_eq!(
            eval(&c, &["esmtp_listener", "listen", addr, "mcmt_reception"]),
            Value::Str("reject".into()),
            "{addr}"
        );
    }
    assert_eq!(
        eval(
            &c,
            &["esmtp_listener", "listen", "[::]:26", "mcmt_reception"]
        ),
        Value::Str("reject".into())
    );
    // A peer block however written.
    for peer in ["10.1.0.0/16", "10.1.2.3/16", "10.1.9.9"] {
        assert_eq!(
            eval(
                &c,
                &[
                    "esmtp_listener",
                    "listen",
                    "*:25",
                    "peer",
                    peer,
                    "mcmt_reception"
                ]
            ),
            Value::Str("passthru".into()),
            "{peer}"
        );
    }
    assert_eq!(
        eval(
            &c,
            &["esmtp_listener", "peer", "192.168.1.1/32", "always_deny"]
        )
        .render(),
        "(\n  0.0.0.0/0\n)"
    );
    // The listener keeps the address as written.
    let l = c.listeners();
    assert_eq!(l[0].address, ":25");
}

#[test]
fn none_unsets_a_certificate_or_key_in_its_scope() {
    let c = Config::parse_str(
        "t.conf",
        r#"tls_certificate = "/etc/herald/c.pem"
           tls_key = "/etc/herald/k.pem"
           apn_key = "/etc/herald/a.p8"
           tls_ca = "/etc/herald/ca.pem"
           domain "plain.example" { tls_certificate = none  tls_key = "NONE"  apn_key = None  tls_ca = none
                                    tls_pkcs12 = none }
           domain "file.example" { tls_certificate = "./none" }
           binding b { tls_certificate = none }
           http_listener {
             tls_certificate = "/etc/herald/server.pem"
             tls_key = "/etc/herald/server.key"
             listen "127.0.0.1:8080" { tls_certificate = none  tls_key = none }
             listen "127.0.0.1:8443" { }
           }"#,
    )
    .unwrap_or_else(|d| panic!("{d}"));
    let d = c.domain_settings(None, None, "plain.example");
    assert_eq!(d.tls_certificate, None);
    assert_eq!(d.tls_key, None);
    assert_eq!(d.apn_key, None);
    assert_eq!(d.tls_ca, None);
    assert_eq!(d.tls_pkcs12, None);
    assert_eq!(
        eval(&c, &["domain", "plain.example", "tls_certificate"]),
        Value::Unset
    );
    // Elsewhere the global values still apply; `./none` is a file.
    let other = c.domain_settings(None, None, "other.example");
    assert_eq!(
        other.tls_certificate.as_deref(),
        Some(std::path::Path::new("/etc/herald/c.pem"))
    );
    assert_eq!(
        c.domain_settings(None, None, "file.example")
            .tls_certificate
            .as_deref(),
        Some(std::path::Path::new("./none"))
    );
    // A binding unsets it for all its domains; its domain stanzas could set it again.
    assert_eq!(
        c.domain_settings(None, Some("b"), "other.example")
            .tls_certificate,
        None
    );
    let l = c.listeners();
    assert_eq!(
        (l[0].tls_certificate.as_ref(), l[0].tls_key.as_ref()),
        (None, None)
    );
    assert!(l[1].tls_certificate.is_some());
    // `config show` writes `none` back, and it reads the same.
    let again = Config::parse_str("shown.conf", &c.render()).unwrap();
    assert_eq!(again.tree(), c.tree());
}
