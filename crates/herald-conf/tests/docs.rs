//! The documentation cannot drift from the option table: docs/configuration.md carries the generated option
//! reference, and examples/herald.conf mentions every option. Run with `HERALD_UPDATE_DOCS=1` to rewrite the
//! generated part of the document after changing the table.

use std::path::PathBuf;

use herald_conf::{Config, OPTIONS, options::options_markdown};

const BEGIN: &str = "<!-- BEGIN OPTIONS: generated from crates/herald-conf/src/options.rs; refresh with \
                     HERALD_UPDATE_DOCS=1 cargo test -p herald-conf --test docs -->";
const END: &str = "<!-- END OPTIONS -->";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn configuration_md_carries_the_generated_option_table() {
    let path = root().join("docs/configuration.md");
    let doc = std::fs::read_to_string(&path).expect("docs/configuration.md exists");
    let start = doc.find(BEGIN).expect("BEGIN OPTIONS marker present") + BEGIN.len();
    let end = doc.find(END).expect("END OPTIONS marker present");
    let want = format!("\n{}", options_markdown());
    if std::env::var_os("HERALD_UPDATE_DOCS").is_some() {
        let updated = format!("{}{}{}", &doc[..start], want, &doc[end..]);
        std::fs::write(&path, updated).expect("write docs/configuration.md");
        return;
    }
    assert_eq!(
        &doc[start..end],
        want,
        "docs/configuration.md is stale: run HERALD_UPDATE_DOCS=1 cargo test -p herald-conf --test docs"
    );
    for d in OPTIONS {
        assert!(
            doc.contains(&format!("`{}`", d.name)),
            "docs/configuration.md does not mention {}",
            d.name
        );
    }
}

#[test]
fn example_herald_conf_shows_every_option_and_loads() {
    let path = root().join("examples/herald.conf");
    let text = std::fs::read_to_string(&path).expect("examples/herald.conf exists");
    for d in OPTIONS {
        assert!(
            text.contains(d.name),
            "examples/herald.conf does not show {}",
            d.name
        );
    }
    let c = Config::load(&path).unwrap_or_else(|d| panic!("{d}"));
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
}

#[test]
fn momentum_sample_loads_unchanged() {
    // docs/momentum-compat.md#sample-configuration
    let c =
        Config::load(root().join("examples/momentum-apns.conf")).unwrap_or_else(|d| panic!("{d}"));
    let d = c.domain_settings(None, None, "apn_example.com");
    assert_eq!(d.delivery_method, herald_conf::DeliveryMethod::Apn);
    assert_eq!(d.routes[0].protocol, herald_conf::RouteProtocol::Binary);
    assert_eq!(d.routes[0].host, "gateway.push.apple.com");
    assert_eq!(d.routes[0].port, 2195);
    assert_eq!(d.max_outbound_connections, 20);
    assert_eq!(d.delivery_response_timeout.as_millis(), 1000);
    assert_eq!(d.tls_verify, herald_conf::TlsVerify::No);
    let l = c.listeners();
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].mcmt_reception, herald_conf::McmtReception::Allow);
    assert!(c.apn_module().is_some_and(|m| m.enabled));
    let loggers = c.apn_loggers();
    assert_eq!(loggers[0].logmode, 0o644);
    assert_eq!(loggers[0].heartbeat.map(|h| h.as_secs()), Some(60));
    // tls, tls_ciphers (no effect), tls_verify = no (verification off), the ESMTP listener open to every address
    // with no always_allow list and a binary domain that never polls the feedback service are warned about.
    assert_eq!(c.warnings().len(), 5, "{:?}", c.warnings());
    assert!(
        c.warnings()
            .iter()
            .any(|w| w.location.line == 6 && w.message.contains("always_allow")),
        "{:?}",
        c.warnings()
    );
}
