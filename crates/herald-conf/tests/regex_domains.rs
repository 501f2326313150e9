//! Regex domain and host stanzas: matched case-insensitively, and bounded in number and compiled size so that a
//! hostile configuration cannot take unbounded memory or make every lookup slow
//! (docs/configuration.md, "Regex domains").

use herald_conf::{Config, Value};

fn only_error(text: &str) -> String {
    let d = Config::parse_str("t.conf", text).unwrap_err();
    let errors: Vec<String> = d.errors().map(|e| e.to_string()).collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    errors[0].clone()
}

#[test]
fn a_regex_domain_matches_whatever_the_case_of_either_side() {
    let c = Config::parse_str(
        "t.conf",
        "max_outbound_connections = 32\n\
         domain \"/^Push[.]Example[.]com$/\" { max_outbound_connections = 3 }\n\
         host \"/^API[.]push[.]apple[.]com$/\" { max_outbound_connections = 7 }\n",
    )
    .unwrap_or_else(|d| panic!("{d}"));
    for domain in ["push.example.com", "PUSH.Example.COM"] {
        assert_eq!(
            c.domain_settings(None, None, domain)
                .max_outbound_connections,
            3,
            "{domain}"
        );
        assert_eq!(
            c.eval_words(&["domain", domain, "max_outbound_connections"])
                .unwrap()
                .1,
            Value::Int(3),
            "{domain}"
        );
    }
    assert_eq!(
        c.eval_words(&["host", "api.push.apple.com", "max_outbound_connections"])
            .unwrap()
            .1,
        Value::Int(7)
    );
    assert_eq!(
        c.domain_settings(None, None, "other.example.com")
            .max_outbound_connections,
        32
    );
}

#[test]
fn at_most_a_thousand_regex_stanzas() {
    let mut text: String = (0..1000)
        .map(|i| format!("domain \"/^d{i}[.]example$/\" {{ }}\n"))
        .collect();
    // A repeated stanza is the same stanza: it takes nothing more.
    text.push_str("domain \"/^d0[.]example$/\" { max_outbound_connections = 2 }\n");
    let c = Config::parse_str("t.conf", &text).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(
        c.domain_settings(None, None, "d0.example")
            .max_outbound_connections,
        2
    );
    // The 1001st is refused where it is written, naming the limit; the ones after it add no message.
    text.push_str("host \"/^h[.]example$/\" { }\n");
    text.push_str("domain \"/^later[.]example$/\" { max_outbound_connections = 1 }\n");
    let e = only_error(&text);
    assert!(
        e.starts_with("t.conf:1002:6: error: host `/^h[.]example$/`: "),
        "{e}"
    );
    assert!(
        e.contains("more than 1000 regex domain and host stanzas"),
        "{e}"
    );
}

#[test]
fn regex_stanzas_share_a_budget_of_compiled_size() {
    // `\w` is a large Unicode class: three of them compile to about 150 KB, which counts as 256 KiB. 256 such
    // stanzas take the 64 MiB (the one error is on the 257th); the 257th is over the budget, and so are the ones
    // after it, however small, without another message.
    let stanza = |i: usize| format!("domain \"/^\\w{{3}}-{i}$/\" {{ }}\n");
    let mut text: String = (0..258).map(stanza).collect();
    text.push_str("domain \"/^small$/\" { }\n");
    let e = only_error(&text);
    assert!(
        e.starts_with("t.conf:257:8: error: domain `/^\\w{3}-256$/`: "),
        "{e}"
    );
    assert!(
        e.contains("more than 67108864 bytes (64 MiB) together"),
        "{e}"
    );
}

#[test]
fn one_regex_may_not_compile_to_more_than_256_kib() {
    let e = only_error("domain \"/\\w{20}0/\" { }\n");
    assert!(e.starts_with("t.conf:1:8: error: bad domain name"), "{e}");
    assert!(e.contains("more than 262144 bytes (256 KiB)"), "{e}");
    // A bad pattern is still reported as such.
    let e = only_error("domain \"/(unclosed/\" { }\n");
    assert!(e.contains("not a valid regular expression"), "{e}");
}
