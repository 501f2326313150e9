//! Configuration warnings: see the parent module. Settings that are valid where they are written but that herald
//! (like Momentum) does not act on there: `mcmt_reception` under an `http_listener` (the REST listener always
//! takes MCMT), and a `routes` list of several routes (herald delivers to the first). Modules turned off with
//! `enabled = false` are reported with what that turns off, so that nothing changes silently.

use crate::{
    diag::Diagnostics,
    options::Opt,
    scopes::ScopeKind,
    tree::{Node, Setting},
    value::Value,
};

pub(super) fn check(root: &Node, diags: &mut Diagnostics) {
    if let Some(http) = root.child(ScopeKind::HttpListener, None) {
        mcmt_under_http(http, diags);
    }
    routes(root, diags);
    modules_off(root, diags);
}

/// `enabled = false` in the `apn`, `httpsrv` and `restinjector` stanzas.
fn modules_off(root: &Node, diags: &mut Diagnostics) {
    let has_http = root.child(ScopeKind::HttpListener, None).is_some();
    for (kind, effect) in [
        (
            ScopeKind::Apn,
            "APNs delivery is held: notifications are accepted and spooled but not sent until the apn module is \
             enabled again",
        ),
        (
            ScopeKind::Httpsrv,
            if has_http {
                "the HTTP server is off: no http_listener is started (REST injection, metrics and health checks \
                 are not served)"
            } else {
                "the HTTP server is off"
            },
        ),
        (
            ScopeKind::Restinjector,
            "REST injection is refused: /v1.0/inject and /api/v1/push answer 403",
        ),
    ] {
        let Some(m) = root.child(kind, None) else {
            continue;
        };
        if let Some(s) = m.get(Opt::Enabled.id())
            && s.value.as_bool() == Some(false)
        {
            diags.warning(
                s.at.clone(),
                format!("{kind} {{ enabled = false }}: {effect}"),
            );
        }
    }
}

/// `mcmt_reception` anywhere in the `http_listener` tree (listener, listen, peer).
fn mcmt_under_http(n: &Node, diags: &mut Diagnostics) {
    if let Some(s) = n.get(Opt::McmtReception.id()) {
        diags.warning(
            s.at.clone(),
            "`mcmt_reception` has no effect in an http_listener: the REST listener always takes MCMT messages \
             (as Momentum's); set it in an esmtp_listener, or remove it",
        );
    }
    for c in n.children() {
        mcmt_under_http(c, diags);
    }
}

/// Every `routes` setting (global, domains anywhere) that lists more than one route.
fn routes(n: &Node, diags: &mut Diagnostics) {
    if let Some(s) = n.get(Opt::Routes.id()) {
        several_routes(s, diags);
    }
    for c in n.children() {
        if matches!(
            c.kind,
            ScopeKind::Domain | ScopeKind::Binding | ScopeKind::BindingGroup
        ) {
            routes(c, diags);
        }
    }
}

fn several_routes(s: &Setting, diags: &mut Diagnostics) {
    if let Value::Routes(list) = &s.value
        && list.len() > 1
    {
        diags.warning(
            s.at.clone(),
            format!(
                "`routes` lists {} routes: herald delivers to the first ({}) only and never fails over to the \
                 others; list one route per domain",
                list.len(),
                list[0]
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    fn warnings(text: &str) -> Vec<String> {
        Config::parse_str("t.conf", text)
            .unwrap()
            .warnings()
            .iter()
            .map(|w| w.to_string())
            .collect()
    }

    #[test]
    fn mcmt_reception_under_an_http_listener_warns() {
        let w = warnings(
            r#"http_listener { listen "127.0.0.1:8081" { mcmt_reception = allow } }
esmtp_listener { listen "127.0.0.1:25" { mcmt_reception = allow } }"#,
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("t.conf:1:"), "{w:?}");
        assert!(w[0].contains("mcmt_reception") && w[0].contains("http_listener"));
    }

    #[test]
    fn modules_turned_off_say_what_they_turn_off() {
        let w = warnings(
            r#"apn { enabled = false }
httpsrv { enabled = true }
restinjector { enabled = false }"#,
        );
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].starts_with("t.conf:1:") && w[0].contains("held"),
            "{w:?}"
        );
        assert!(
            w[1].starts_with("t.conf:3:") && w[1].contains("403"),
            "{w:?}"
        );
    }

    #[test]
    fn several_routes_warn_that_only_the_first_is_used() {
        let w = warnings(
            r#"domain "a.example" { routes = ( "https://one.example" "https://two.example" ) }
domain "b.example" { routes = ( "https://one.example" ) }"#,
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("2 routes") && w[0].contains("https://one.example"),
            "{w:?}"
        );
    }
}
