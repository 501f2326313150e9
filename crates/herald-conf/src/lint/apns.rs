//! Delivery options that are valid one by one but misbehave with APNs, checked for every domain stanza that
//! delivers with `delivery_method = apn` (along the same fallback path delivery uses: a top-level domain stanza
//! through binding `default`, which notifications naming no binding use):
//!
//! - `idle_timeout = 0` keeps idle connections open for good; APNs closes idle connections itself, so a connection
//!   kept forever is found dead by the next notification.
//! - On a binary-protocol route, a notification counts as delivered once `delivery_response_timeout` (ms) passes
//!   without an error packet; that wait must end before the connection's `idle_timeout` (s) closes it.
//! - A binary-protocol domain that never polls the feedback service (`apn_feedback_interval = 0`) never learns of
//!   uninstalled apps; Apple asks providers to poll it regularly.
//! - `retry_interval = 0` makes every retry due at once: a notification APNs keeps refusing is sent again without a
//!   pause until `max_retries` or `message_expiration` ends it.
//!
//! A warning points at the line that set the effective value (or the domain stanza when the value is the default),
//! names the option and says what to do. A value set once and inherited by several domains is reported once.

use std::collections::BTreeMap;

use crate::{
    diag::{Diagnostics, Location},
    eval,
    options::{self, Opt, OptId},
    scopes::ScopeKind,
    tree::Node,
    value::{RouteProtocol, Value},
};

/// The binding of notifications that name none; delivery resolves top-level domain stanzas through it.
const DEFAULT_BINDING: &str = "default";

/// A domain stanza and the containers it sits in.
struct DomainSite<'a> {
    group: Option<&'a str>,
    binding: Option<&'a str>,
    node: &'a Node,
}

fn domain_sites(root: &Node) -> Vec<DomainSite<'_>> {
    fn add<'a>(
        out: &mut Vec<DomainSite<'a>>,
        container: &'a Node,
        group: Option<&'a str>,
        binding: Option<&'a str>,
    ) {
        for node in container.children_of(ScopeKind::Domain) {
            out.push(DomainSite {
                group,
                binding,
                node,
            });
        }
    }
    let mut out = Vec::new();
    // A top-level domain stanza is delivered through binding `default` (a notification that names no binding),
    // so a `binding "default"` stanza (and its group) is on its path, as in delivery.
    add(&mut out, root, None, Some(DEFAULT_BINDING));
    for b in root.children_of(ScopeKind::Binding) {
        add(&mut out, b, None, b.name.as_deref());
    }
    for g in root.children_of(ScopeKind::BindingGroup) {
        add(&mut out, g, g.name.as_deref(), None);
        for b in g.children_of(ScopeKind::Binding) {
            add(&mut out, b, g.name.as_deref(), b.name.as_deref());
        }
    }
    out
}

/// The effective value of an option for a domain stanza and where it was set (`None`: the default).
fn lookup<'a>(nodes: &[&'a Node], id: OptId) -> (&'a Value, Option<&'a Location>) {
    for n in nodes {
        if let Some(s) = n.get(id) {
            return (&s.value, Some(&s.at));
        }
    }
    (options::default_value(id), None)
}

/// One finding: reported once per place, with the domains it applies to.
struct Finding {
    at: Location,
    message: Box<dyn Fn(&str) -> String>,
    domains: Vec<String>,
}

pub(super) fn check(root: &Node, diags: &mut Diagnostics) {
    // Keyed by (kind of finding, place) so a value inherited by many domains is reported once.
    let mut findings: BTreeMap<(u8, String, u32, u32), Finding> = BTreeMap::new();
    let mut report =
        |kind: u8, at: Location, domain: &str, message: Box<dyn Fn(&str) -> String>| {
            let key = (kind, at.file.to_string(), at.line, at.col);
            let f = findings.entry(key).or_insert_with(|| Finding {
                at,
                message,
                domains: Vec::new(),
            });
            // The same domain in several stanzas on one path (top level and in `binding "default"`) counts once.
            if !f.domains.iter().any(|d| d == domain) {
                f.domains.push(domain.to_string());
            }
        };
    for site in domain_sites(root) {
        let Some(domain) = site.node.name.as_deref() else {
            continue;
        };
        let nodes = eval::delivery_nodes(root, site.group, site.binding, Some(domain));
        // Only the stanza itself and what it inherits: the path's own domain stanza leads the list.
        let (method, _) = lookup(&nodes, Opt::DeliveryMethod.id());
        if !matches!(method, Value::Str(m) if m.eq_ignore_ascii_case("apn")) {
            continue;
        }
        let stanza_at = site.node.at.clone().unwrap_or_else(|| Location {
            file: "".into(),
            line: 0,
            col: 0,
        });
        let where_set = |at: Option<&Location>| at.cloned().unwrap_or_else(|| stanza_at.clone());

        let (idle, idle_at) = lookup(&nodes, Opt::IdleTimeout.id());
        let idle_secs = idle.as_int().unwrap_or(0);
        if idle_secs == 0 {
            report(
                0,
                where_set(idle_at),
                domain,
                Box::new(|domains| {
                    format!(
                        "`idle_timeout = 0` keeps idle APNs connections open forever for {domains}: APNs closes idle \
                         connections itself, and a connection kept past that fails the next notification; never use \
                         0 for Apple push, set a few minutes (e.g. `idle_timeout = 300`)"
                    )
                }),
            );
        }

        let (interval, interval_at) = lookup(&nodes, Opt::RetryInterval.id());
        if interval.as_int() == Some(0) {
            report(
                3,
                where_set(interval_at),
                domain,
                Box::new(|domains| {
                    format!(
                        "`retry_interval = 0` makes every retry of {domains} due at once: a notification APNs keeps \
                         refusing (a 429, an APNs outage) is sent again and again without a pause until max_retries \
                         or message_expiration ends it; set the first retry's wait in seconds (Momentum's default is \
                         1200)"
                    )
                }),
            );
        }

        let (routes, _) = lookup(&nodes, Opt::Routes.id());
        let binary = matches!(routes, Value::Routes(r) if r.iter().any(|r| r.protocol == RouteProtocol::Binary));
        if !binary {
            continue;
        }
        let (response, response_at) = lookup(&nodes, Opt::DeliveryResponseTimeout.id());
        let response_ms = response.as_int().unwrap_or(0);
        if idle_secs > 0 && response_ms >= idle_secs.saturating_mul(1000) {
            let at = response_at.or(idle_at);
            report(
                1,
                where_set(at),
                domain,
                Box::new(move |domains| {
                    format!(
                        "`delivery_response_timeout = {response_ms}` (milliseconds) is not less than `idle_timeout = \
                         {idle_secs}` (seconds) on the binary route of {domains}: the connection may close before \
                         the wait that confirms delivery ends; make delivery_response_timeout smaller than \
                         idle_timeout × 1000"
                    )
                }),
            );
        }
        let (feedback, feedback_at) = lookup(&nodes, Opt::ApnFeedbackInterval.id());
        if feedback.as_int().unwrap_or(0) == 0 {
            report(
                2,
                where_set(feedback_at),
                domain,
                Box::new(|domains| {
                    format!(
                        "`apn_feedback_interval` is 0 for {domains}, a binary-protocol domain: the feedback service \
                         is never polled, so tokens of uninstalled apps are never learnt; Apple asks providers to \
                         poll it regularly (set e.g. `apn_feedback_interval = 3600`)"
                    )
                }),
            );
        }
    }
    for f in findings.into_values() {
        let domains = match f.domains.as_slice() {
            [one] => format!("domain `{one}`"),
            [first, rest @ ..] => format!("domain `{first}` (and {} more)", rest.len()),
            [] => continue,
        };
        diags.warning(f.at, (f.message)(&domains));
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    fn warnings(text: &str) -> Vec<String> {
        Config::parse_str("t.conf", text)
            .unwrap_or_else(|e| panic!("{e}"))
            .warnings()
            .iter()
            .map(|w| w.to_string())
            .collect()
    }

    const BINARY: &str = r#"routes = ( "apn://127.0.0.1?port=2195" )"#;

    #[test]
    fn idle_timeout_zero_on_an_apns_domain() {
        // docs/momentum-compat.md#options: a zero idle_timeout should never be used for Apple push.
        let w = warnings(
            "idle_timeout = 0\ndomain \"a.example\" { delivery_method = apn routes = ( \"https://h\" ) }\n\
             domain \"b.example\" { delivery_method = apn routes = ( \"https://h\" ) }\n\
             domain \"mail.example\" { }\n",
        );
        assert_eq!(w.len(), 1, "{w:#?}");
        assert!(
            w[0].starts_with("t.conf:1:1: warning: `idle_timeout = 0` keeps idle APNs connections open forever for domain `a.example` (and 1 more)"),
            "{w:#?}"
        );
        assert!(w[0].contains("idle_timeout = 300"), "{w:#?}");
        // Not an APNs domain: no warning.
        assert!(warnings("idle_timeout = 0\ndomain \"mail.example\" { }\n").is_empty());
    }

    #[test]
    fn retry_interval_zero_on_an_apns_domain() {
        let w = warnings(
            "domain \"a.example\" {\n  delivery_method = apn\n  routes = ( \"https://h\" )\n  retry_interval = 0\n}\n",
        );
        assert_eq!(w.len(), 1, "{w:#?}");
        assert!(
            w[0].starts_with("t.conf:4:3: warning: `retry_interval = 0` makes every retry of domain `a.example` due at once"),
            "{w:#?}"
        );
        assert!(
            warnings("domain \"a.example\" { delivery_method = apn routes = ( \"https://h\" ) retry_interval = 1 }\n")
                .is_empty()
        );
    }

    #[test]
    fn response_timeout_not_below_idle_timeout_on_a_binary_route() {
        // docs/momentum-compat.md#routes: delivery_response_timeout must be less than idle_timeout.
        let text = format!(
            "domain \"legacy.example\" {{\n  delivery_method = apn\n  {BINARY}\n  apn_feedback_interval = 60\n  \
             idle_timeout = 2\n  delivery_response_timeout = 2000\n}}\n"
        );
        let w = warnings(&text);
        assert_eq!(w.len(), 1, "{w:#?}");
        assert!(
            w[0].starts_with("t.conf:6:3: warning: `delivery_response_timeout = 2000` (milliseconds) is not less than `idle_timeout = 2` (seconds) on the binary route of domain `legacy.example`"),
            "{w:#?}"
        );
        assert!(warnings(&text.replace("= 2000", "= 1999")).is_empty());
        // HTTP/2 routes answer each request: the rule is for the binary protocol.
        assert!(warnings(&text.replace(BINARY, "routes = ( \"https://h\" )")).is_empty());
    }

    #[test]
    fn top_level_domains_are_checked_through_binding_default() {
        // Delivery resolves a top-level domain stanza through binding `default`: its settings apply.
        let w = warnings(
            "binding \"default\" {\n  idle_timeout = 0\n}\n\
             domain \"a.example\" { delivery_method = apn routes = ( \"https://h\" ) }\n",
        );
        assert_eq!(w.len(), 1, "{w:#?}");
        assert!(
            w[0].starts_with("t.conf:2:3: warning: `idle_timeout = 0` keeps idle APNs connections open forever for domain `a.example`:"),
            "{w:#?}"
        );
        // Also when `default` sits in a binding group, and for the binary route's response timeout.
        let w = warnings(&format!(
            "binding_group \"g\" {{\n  binding \"default\" {{\n    idle_timeout = 2\n    \
             delivery_response_timeout = 2000\n    apn_feedback_interval = 60\n  }}\n}}\n\
             domain \"legacy.example\" {{ delivery_method = apn {BINARY} }}\n"
        ));
        assert_eq!(w.len(), 1, "{w:#?}");
        assert!(
            w[0].starts_with("t.conf:4:5: warning: `delivery_response_timeout = 2000`"),
            "{w:#?}"
        );
        // Another binding's settings are not on the path of a top-level domain.
        assert!(
            warnings(
                "binding \"other\" {\n  idle_timeout = 0\n}\n\
                 domain \"a.example\" { delivery_method = apn routes = ( \"https://h\" ) }\n",
            )
            .is_empty()
        );
        // The same domain at the top level and in `binding "default"` is one domain.
        let w = warnings(
            "idle_timeout = 0\nbinding \"default\" {\n  domain \"a.example\" { routes = ( \"https://h\" ) }\n}\n\
             domain \"a.example\" { delivery_method = apn routes = ( \"https://h\" ) }\n",
        );
        assert_eq!(w.len(), 1, "{w:#?}");
        assert!(w[0].contains("for domain `a.example`:"), "{w:#?}");
    }

    #[test]
    fn binary_domain_that_never_polls_feedback() {
        let w = warnings(&format!(
            "delivery_response_timeout = 1000\nbinding \"b\" {{\n domain \"legacy.example\" {{ delivery_method = apn {BINARY} }}\n}}\n"
        ));
        assert_eq!(w.len(), 1, "{w:#?}");
        assert!(
            w[0].starts_with(
                "t.conf:3:2: warning: `apn_feedback_interval` is 0 for domain `legacy.example`"
            ),
            "{w:#?}"
        );
        assert!(w[0].contains("apn_feedback_interval = 3600"), "{w:#?}");
        let w = warnings(&format!(
            "apn_feedback_interval = 0\ndomain \"legacy.example\" {{ delivery_method = apn {BINARY} }}\n"
        ));
        // Momentum's defaults (5 s idle, 5000 ms response) break the rule too: the warning points at the stanza.
        assert!(
            w.iter()
                .any(|w| w.starts_with("t.conf:2:1: warning: `delivery_response_timeout = 5000`")),
            "{w:#?}"
        );
        let w: Vec<_> = w
            .into_iter()
            .filter(|w| w.contains("apn_feedback_interval"))
            .collect();
        assert!(
            w[0].starts_with("t.conf:1:1: warning: `apn_feedback_interval`"),
            "{w:#?}"
        );
    }
}
