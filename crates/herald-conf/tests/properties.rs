//! Property tests: the configuration `config show` prints parses back to the same tree (for generated
//! configurations using every option kind, scope kind, quoting style and merge), and no input, however broken,
//! makes the parser panic.

use herald_conf::{Config, Kind, OPTIONS, ScopeKind, lexer::render_value};
use proptest::prelude::*;

fn case_variant(name: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        Just(name.to_string()),
        Just(name.to_uppercase()),
        Just(name[..1].to_uppercase() + &name[1..]),
    ]
}

fn text_value() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 ./:@%\"\\\\#=_(){}\\[\\]'-]{0,16}"
}

fn quoted_or_bare(text: String) -> impl Strategy<Value = String> {
    any::<bool>().prop_map(move |q| render_value(&text, q))
}

/// A value `name` takes: any of its kind, but for an option whose empty value refuses the configuration (an empty
/// `control_password`, herald-conf's whole-configuration checks).
fn value_for_option(name: &str, kind: Kind) -> BoxedStrategy<String> {
    if name == "control_password" {
        return "[a-zA-Z0-9]{1,16}".prop_flat_map(quoted_or_bare).boxed();
    }
    value_for(kind)
}

fn value_for(kind: Kind) -> BoxedStrategy<String> {
    match kind {
        Kind::Bool => prop::sample::select(vec![
            "on", "off", "TRUE", "false", "yes", "No", "0", "1", "enabled",
        ])
        .prop_map(str::to_string)
        .boxed(),
        Kind::Int { min, max } => (min..=max.min(100_000)).prop_map(|n| n.to_string()).boxed(),
        Kind::Seconds | Kind::Millis | Kind::Bytes => (0u64..10_000_000)
            .prop_flat_map(|n| quoted_or_bare(n.to_string()))
            .boxed(),
        Kind::Mode => (0u32..0o7777).prop_map(|m| format!("0{m:o}")).boxed(),
        Kind::Str => text_value().prop_flat_map(quoted_or_bare).boxed(),
        Kind::Path => "/[a-z]{1,8}(/[a-z.]{1,8}){0,3}"
            .prop_flat_map(quoted_or_bare)
            .boxed(),
        Kind::PathOrNone => prop_oneof![
            3 => "/[a-z]{1,8}(/[a-z.]{1,8}){0,3}",
            1 => prop::sample::select(vec!["none", "NONE", "None"]).prop_map(str::to_string),
        ]
        .prop_flat_map(quoted_or_bare)
        .boxed(),
        Kind::Enum(words) => (prop::sample::select(words.to_vec()), any::<bool>())
            .prop_map(|(w, up)| {
                if up {
                    w.to_uppercase()
                } else {
                    w.to_lowercase()
                }
            })
            .boxed(),
        Kind::Words(words) => prop::sample::subsequence(words.to_vec(), 1..=words.len())
            .prop_map(|items| format!("( {} )", items.join(" ")))
            .boxed(),
        Kind::List => prop::collection::vec(text_value(), 0..4)
            .prop_map(|items| {
                let items: Vec<String> = items.iter().map(|i| render_value(i, false)).collect();
                format!("( {} )", items.join(" "))
            })
            .boxed(),
        Kind::Pairs => prop::collection::vec(("[a-z]{1,6}", text_value()), 0..3)
            .prop_map(|pairs| {
                let p: Vec<String> = pairs
                    .iter()
                    .map(|(k, v)| format!("{k} = {}", render_value(v, false)))
                    .collect();
                format!("[ {} ]", p.join(" "))
            })
            .boxed(),
        Kind::Routes => prop::collection::vec(
            prop_oneof![
                ("[a-z]{1,8}", 1u16..).prop_map(|(h, p)| format!("\"apn://{h}.example?port={p}\"")),
                ("[a-z]{1,8}", 1u16..).prop_map(|(h, p)| format!("\"https://{h}.example:{p}\"")),
                "[a-z]{1,8}".prop_map(|h| format!("\"https://{h}.example\"")),
            ],
            1..3,
        )
        .prop_map(|r| format!("( {} )", r.join(" ")))
        .boxed(),
        Kind::MaxRetries => prop_oneof![
            Just("auto".to_string()),
            Just("NONE".to_string()),
            (0u32..50).prop_map(|n| n.to_string())
        ]
        .boxed(),
        Kind::Cidrs => prop::collection::vec((any::<[u8; 4]>(), 0u8..=32), 0..3)
            .prop_map(|c| {
                let items: Vec<String> = c
                    .iter()
                    .map(|(a, p)| format!("{}.{}.{}.{}/{p}", a[0], a[1], a[2], a[3]))
                    .collect();
                format!("( {} )", items.join(" "))
            })
            .boxed(),
        Kind::HttpUrl => (
            "(http|HTTPS|https)",
            "[a-z]{1,8}",
            "(/[a-z0-9._~-]{0,8}){0,2}",
        )
            .prop_map(|(scheme, host, path)| {
                render_value(&format!("{scheme}://{host}.example{path}"), true)
            })
            .boxed(),
        Kind::Ip => any::<[u8; 4]>()
            .prop_map(|a| format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3]))
            .boxed(),
    }
}

/// Lines `name = value` valid in `scope`.
fn settings(scope: ScopeKind, max: usize) -> BoxedStrategy<Vec<String>> {
    settings_where(scope, max, true)
}

/// Lines `name = value` valid in `scope`; without `top_level`, for a domain stanza inside a binding or binding
/// group (no option herald reads for the domain alone). No `tls_key` in a listener or listen stanza: one without
/// `tls_certificate` refuses the configuration (herald-conf's whole-configuration checks).
fn settings_where(scope: ScopeKind, max: usize, top_level: bool) -> BoxedStrategy<Vec<String>> {
    let listener_scope = scope.is_listener() || scope == ScopeKind::Listen;
    let defs: Vec<_> = OPTIONS
        .iter()
        .filter(|d| d.scopes.contains(scope) && (top_level || !d.top_level_domain_only))
        .filter(|d| !(listener_scope && d.name == "tls_key"))
        .collect();
    let one = prop::sample::select(defs)
        .prop_flat_map(|d| (case_variant(d.name), value_for_option(d.name, d.kind)))
        .prop_map(|(n, v)| format!("{n} = {v}"));
    prop::collection::vec(one, 0..max).boxed()
}

fn scope(
    keyword: &'static str,
    name: Option<String>,
    lines: Vec<String>,
    children: Vec<String>,
) -> String {
    let header = match name {
        Some(n) => format!("{keyword} {n}"),
        None => keyword.to_string(),
    };
    format!(
        "{header} {{\n{}\n{}\n}}",
        lines.join("\n"),
        children.join("\n")
    )
}

fn named(
    keyword: &'static str,
    names: Vec<&'static str>,
    kind: ScopeKind,
    kids: BoxedStrategy<Vec<String>>,
) -> BoxedStrategy<String> {
    (
        prop::sample::select(names),
        any::<bool>(),
        settings(kind, 4),
        kids,
    )
        .prop_map(move |(n, q, lines, children)| {
            scope(keyword, Some(render_value(n, q)), lines, children)
        })
        .boxed()
}

fn none() -> BoxedStrategy<Vec<String>> {
    Just(Vec::new()).boxed()
}

const DOMAINS: &[&str] = &["a.com", "B.example", "c.org", "/[.]net$/", "/^x/"];

/// A domain stanza inside a binding or binding group: it may not set what herald reads for the domain alone.
fn nested_domain() -> BoxedStrategy<String> {
    (
        prop::sample::select(DOMAINS.to_vec()),
        any::<bool>(),
        settings_where(ScopeKind::Domain, 4, false),
    )
        .prop_map(|(n, q, lines)| scope("domain", Some(render_value(n, q)), lines, vec![]))
        .boxed()
}

fn domains(parent_max: usize) -> BoxedStrategy<Vec<String>> {
    let d = nested_domain();
    let h = named(
        "host",
        vec!["mx.a.com", "mx2.b.com"],
        ScopeKind::Host,
        none(),
    );
    prop::collection::vec(prop_oneof![3 => d, 1 => h], 0..parent_max).boxed()
}

fn config() -> impl Strategy<Value = String> {
    // A binding name is declared in one place: the top level, or one binding group (which may repeat).
    let binding =
        |names: Vec<&'static str>, max| named("binding", names, ScopeKind::Binding, domains(max));
    let group = prop::sample::select(vec!["g1", "g2"]).prop_flat_map(move |g| {
        let names = if g == "g1" {
            vec!["g1b1", "g1b2"]
        } else {
            vec!["g2b1", "G2b1"]
        };
        (
            any::<bool>(),
            settings(ScopeKind::BindingGroup, 4),
            prop::collection::vec(prop_oneof![binding(names, 2), nested_domain()], 0..3),
        )
            .prop_map(move |(q, lines, children)| {
                scope("binding_group", Some(render_value(g, q)), lines, children)
            })
    });
    let peer = named(
        "peer",
        vec!["10.0.0.0/8", "192.168.1.1", "::1"],
        ScopeKind::Peer,
        none(),
    );
    // Each kind of listener its own addresses: two listen stanzas taking one socket are refused.
    let listen = |addresses: Vec<&'static str>| {
        named(
            "listen",
            addresses,
            ScopeKind::Listen,
            prop::collection::vec(peer.clone(), 0..2).boxed(),
        )
    };
    let listener = prop_oneof![
        (
            Just(("esmtp_listener", ScopeKind::EsmtpListener)),
            prop::collection::vec(
                prop_oneof![
                    listen(vec![
                        ":25",
                        "127.0.0.1:2525",
                        "[::1]:26",
                        "/tmp/herald-smtp.sock"
                    ]),
                    peer.clone()
                ],
                0..3
            ),
        ),
        (
            Just(("http_listener", ScopeKind::HttpListener)),
            prop::collection::vec(
                prop_oneof![
                    listen(vec![
                        ":80",
                        "127.0.0.1:2081",
                        "[::1]:81",
                        "/tmp/herald-http.sock"
                    ]),
                    peer.clone()
                ],
                0..3
            ),
        ),
        (
            Just(("control_listener", ScopeKind::ControlListener)),
            prop::collection::vec(
                prop_oneof![
                    listen(vec![
                        ":2025",
                        "127.0.0.1:2026",
                        "[::1]:2027",
                        "/tmp/herald.sock"
                    ]),
                    peer.clone()
                ],
                0..3
            ),
        ),
    ]
    .prop_flat_map(|((kw, kind), kids)| {
        settings(kind, 3).prop_map(move |lines| scope(kw, None, lines, kids.clone()))
    });
    let module = prop_oneof![
        settings(ScopeKind::Apn, 2).prop_map(|l| scope("apn", None, l, vec![])),
        (
            prop::sample::select(vec!["l1", "l2"]),
            settings(ScopeKind::ApnLogger, 5)
        )
            .prop_map(|(n, l)| scope("apn_logger", Some(render_value(n, true)), l, vec![])),
        (
            prop::sample::select(vec!["main"]),
            settings(ScopeKind::EcLogger, 5)
        )
            .prop_map(|(n, l)| scope("ec_logger", Some(n.to_string()), l, vec![])),
    ];
    let item = prop_oneof![
        settings(ScopeKind::Global, 2).prop_map(|l| l.join("\n")),
        named("domain", DOMAINS.to_vec(), ScopeKind::Domain, none()),
        group,
        binding(vec!["b1", "b2", "Bx"], 3),
        listener.boxed(),
        module,
        Just("# a comment\n/* and\n another */".to_string()),
        (
            prop::sample::select(vec!["pg1", "pg2"]),
            settings(ScopeKind::PathwayGroup, 3),
            settings(ScopeKind::Pathway, 3)
        )
            .prop_map(|(g, gl, pl)| scope(
                "pathway_group",
                Some(g.to_string()),
                gl,
                vec![scope("pathway", Some("p".into()), pl, vec![])]
            )),
    ];
    prop::collection::vec(item, 0..10).prop_map(|items| items.join("\n"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn show_output_parses_to_the_same_tree(text in config()) {
        let first = Config::parse_str("gen.conf", &text)
            .unwrap_or_else(|d| panic!("generated configuration rejected:\n{d}\n---\n{text}"));
        let shown = first.render();
        let second = Config::parse_str("shown.conf", &shown)
            .unwrap_or_else(|d| panic!("show output rejected:\n{d}\n---\n{shown}"));
        prop_assert_eq!(first.tree(), second.tree(), "\n--- input\n{}\n--- shown\n{}", text, shown);
        prop_assert_eq!(second.render(), shown);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let _ = Config::parse_bytes("fuzz.conf", &bytes);
    }

    #[test]
    fn token_soup_never_panics(tokens in prop::collection::vec(prop::sample::select(vec![
        "{", "}", "(", ")", "[", "]", "=", "\"", "'", "#", "/*", "*/", "\n", " ", "domain", "binding", "listen",
        "esmtp_listener", "peer", "host", "apn", "apn_logger", "tls", "routes", "\"/re(/\"", "\"/x/\"", "\":25\"",
        "a.com", "5", "-1", "0644", "yes", "\\", "é", "\t", "readonly_include",
    ]), 0..200)) {
        let text: String = tokens.concat();
        match Config::parse_str("soup.conf", &text) {
            Err(d) => {
                for e in d.all() {
                    prop_assert!(e.location.line >= 1 && e.location.col >= 1);
                }
            }
            Ok(c) => {
                // Whatever loads must also survive the round trip through `config show`.
                let shown = c.render();
                match Config::parse_str("shown.conf", &shown) {
                    Ok(again) => prop_assert_eq!(again.tree(), c.tree()),
                    Err(d) => prop_assert!(false, "{}\n{}", d, shown),
                }
            }
        }
    }
}
