//! Secrets never appear in diagnostics: an error inside a statement whose option is a secret (`control_password`,
//! `api_key`, `tls_pkcs12_password`, …) quotes `********` instead of the value's tokens, while still naming the file,
//! the line and the option. These diagnostics reach the log on reload, the console, `herald check` and the
//! dashboard.

use herald_conf::Config;

/// The diagnostics of `text`, displayed (as every consumer prints them).
fn shown(text: &str) -> String {
    match Config::parse_str("t.conf", text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(d) => d.to_string(),
    }
}

/// The backticked spans of `text` (what the diagnostics quote).
fn quoted_spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// Asserts that the displayed diagnostics of `text` show none of `secret` (not the words, not a quoted excerpt
/// of three characters or more), and that they still name `t.conf:LINE:` and `option`.
fn assert_masked(text: &str, secret: &[&str], line: u32, option: &str) -> String {
    let out = shown(text);
    for word in secret {
        assert!(!out.contains(word), "{word:?} shown:\n{out}");
        let chars: Vec<char> = word.chars().collect();
        for window in chars.windows(3) {
            let piece: String = window.iter().collect();
            for span in quoted_spans(&out) {
                assert!(
                    !span.contains(&piece),
                    "excerpt {piece:?} of {word:?} quoted in `{span}`:\n{out}"
                );
            }
        }
    }
    assert!(
        out.contains(&format!("t.conf:{line}:")),
        "no t.conf:{line}:\n{out}"
    );
    assert!(out.contains(option), "{option} not named:\n{out}");
    out
}

fn control(stmt: &str) -> String {
    format!("control_listener {{\n  listen \"127.0.0.1:2025\" {{\n    {stmt}\n  }}\n}}\n")
}

#[test]
fn a_password_of_several_words_is_not_quoted() {
    let out = assert_masked(
        &control("control_password = correct horse battery"),
        &["correct", "horse", "battery"],
        3,
        "control_password",
    );
    assert!(out.contains("one word or a quoted string"), "{out}");
    // At the top level too (where the option is also out of its scope).
    assert_masked(
        "control_password = correct horse battery\n",
        &["correct", "horse", "battery"],
        1,
        "control_password",
    );
}

#[test]
fn a_pkcs12_password_with_punctuation_is_not_quoted() {
    assert_masked(
        "tls_pkcs12_password = Tr0ub4dor &3x\n",
        &["Tr0ub4dor", "&3x"],
        1,
        "tls_pkcs12_password",
    );
    assert_masked(
        "domain \"a.example\" {\n  tls_pkcs12_password = Tr0ub4dor &3x\n}\n",
        &["Tr0ub4dor", "&3x"],
        2,
        "tls_pkcs12_password",
    );
}

#[test]
fn open_sesame_is_not_quoted() {
    let out = assert_masked(
        &control("control_password = open sesame"),
        &["sesame"],
        3,
        "control_password",
    );
    assert!(!out.contains("`open`"), "{out}");
    // Without `=`, on the same line and on the next.
    let out = assert_masked(
        &control("control_password open sesame"),
        &["sesame"],
        3,
        "control_password",
    );
    assert!(out.contains("its value `********`"), "{out}");
    let out = assert_masked(
        &control("control_password\n    \"open sesame\""),
        &["sesame"],
        3,
        "control_password",
    );
    assert!(!out.contains("`open"), "{out}");
}

#[test]
fn an_unterminated_quote_after_a_secret_does_not_echo_the_rest() {
    let out = assert_masked(
        &control("control_password = \"Gl0rious d4ylight\nhorsE Battery st4ple\" ok"),
        &["Gl0rious", "d4ylight", "horsE", "Battery", "st4ple"],
        4,
        "control_password",
    );
    assert!(out.contains("unterminated string"), "{out}");
    // A single quote, and a `{` at the end of the line (which a scope name may end in).
    assert_masked(
        "spool_nats_token = 'n4tsT0kn {\nwh4tever c0mes next\n",
        &["n4tsT0kn", "wh4tever", "c0mes"],
        1,
        "spool_nats_token",
    );
}

#[test]
fn secrets_inside_stanzas_are_not_quoted() {
    let peer = |stmt: &str| {
        format!(
            "http_listener {{\n  listen \"127.0.0.1:8080\" {{\n    peer \"10.0.0.0/8\" {{\n      {stmt}\n    }}\n  }}\n}}\n"
        )
    };
    assert_masked(
        &peer("api_key = s3cr3tK3y and m0re"),
        &["s3cr3tK3y", "m0re"],
        4,
        "api_key",
    );
    assert_masked(&peer("api_key \"s3cr3tK3y\""), &["s3cr3tK3y"], 4, "api_key");
    assert_masked(
        &peer("api_keys = ( k3yOne\n        k3yTwo = k3yThree\n        k3yFour )"),
        &["k3yOne", "k3yTwo", "k3yThree", "k3yFour"],
        5,
        "api_keys",
    );
    let out = assert_masked(
        &peer("api_keys = [ k3yA = k3yB ]"),
        &["k3yA", "k3yB"],
        4,
        "api_keys",
    );
    assert!(
        out.contains("invalid value `********` for `api_keys`"),
        "{out}"
    );
    assert_masked(
        &peer("api_keys = [ k3yA k3yB ]"),
        &["k3yA", "k3yB"],
        4,
        "api_keys",
    );
    assert_masked(
        &peer("dashboard_admin_k3ys = x\n      dashboard_admin_keys = ( k1ngP1n ) extraW0rd"),
        &["k1ngP1n", "extraW0rd"],
        5,
        "dashboard_admin_keys",
    );
    assert_masked(
        "domain \"a.example\" {\n  outcome_webhook_secret = hm4c k3y = v4lue\n}\n",
        &["hm4c", "k3y", "v4lue"],
        2,
        "outcome_webhook_secret",
    );
    assert_masked(
        "spool_nats_token = w1dget domain m0re\n",
        &["w1dget", "m0re"],
        1,
        "spool_nats_token",
    );
}

#[test]
fn a_secret_scope_name_is_not_quoted() {
    assert_masked(
        "control_password s3same {\n",
        &["s3same"],
        1,
        "control_password",
    );
}

#[test]
fn other_options_still_quote_their_tokens() {
    let out = shown("max_outbound_connections = correct horse battery\n");
    assert!(
        out.contains("`horse`") && out.contains("`battery`"),
        "{out}"
    );
    let out = shown("domain \"a.example\" {\n  apn_topic = Tr0ub4dor &3x\n}\n");
    assert!(out.contains("`&3x`"), "{out}");
    assert!(!out.contains("********"), "{out}");
    let out = shown("max_outbound_connections = many\n");
    assert!(out.contains("invalid value `many`"), "{out}");
    // A secret well written, then a mistake of its own on a later line: that mistake is quoted.
    let out = shown(&control(
        "control_password = \"correct horse\"\n    file_mode = 0999",
    ));
    assert!(out.contains("`0999`") && !out.contains("horse"), "{out}");
    let out = shown(&control(
        "control_password = \"correct horse\"\n    file_mode 0999",
    ));
    assert!(out.contains("`0999`") && !out.contains("horse"), "{out}");
}

#[test]
fn a_secret_followed_by_another_statement_on_its_line_is_fine() {
    let text = control("control_password = \"s3\"  timeout = 30");
    let config = Config::parse_str("t.conf", &text).unwrap_or_else(|d| panic!("{d}"));
    let (_, v) = config
        .eval_words(&["control_listener", "listen", "127.0.0.1:2025", "timeout"])
        .unwrap();
    assert_eq!(v, herald_conf::Value::Int(30));
    Config::parse_str(
        "t.conf",
        "http_listener {\n  api_keys = ( a\n    b ) listen \"127.0.0.1:8080\" { }\n}\n",
    )
    .unwrap_or_else(|d| panic!("{d}"));
}
