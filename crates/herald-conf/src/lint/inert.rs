//! Configuration warnings: see the parent module. Settings that are valid where they are written but that herald
//! (like Momentum) does not act on there: `mcmt_reception` under an `http_listener` (the REST listener always
//! takes MCMT), a listener option in a `listen` or `peer` stanza of a listener that does not read it
//! (`max_message_size` under an `http_listener`, `api_key` under an `esmtp_listener`: Momentum gives every
//! listener's listen and peer stanzas the ESMTP options, so herald accepts them), and a `routes` list of several
//! routes (herald delivers to the first). Modules turned off with `enabled = false` are reported with what that
//! turns off, so that nothing changes silently.

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
    for listener in root.children().iter().filter(|c| c.kind.is_listener()) {
        for c in listener.children() {
            other_listeners_options(listener.kind, c, diags);
        }
    }
    routes(root, diags);
    modules_off(root, diags);
}

/// Options in a `listen` or `peer` stanza (`n`, anywhere under a listener of kind `listener`) that only other
/// kinds of listener read. (In the listener's own scope they are errors: only the stanzas below it take any
/// listener's options.)
fn other_listeners_options(listener: ScopeKind, n: &Node, diags: &mut Diagnostics) {
    for s in n.settings() {
        let def = s.id.def();
        // An option no listener reads is already a warning of its own.
        if def.scopes.contains(listener) || def.inert.is_some() {
            continue;
        }
        let readers: Vec<&str> = def
            .scopes
            .kinds()
            .filter(|k| k.is_listener())
            .map(ScopeKind::keyword)
            .collect();
        diags.warning(
            s.at.clone(),
            format!(
                "`{}` has no effect in a {} of {listener}: only {} read{} it; set it there, or remove it",
                def.name,
                n.kind,
                readers.join(" and "),
                if readers.len() == 1 { "s" } else { "" },
            ),
        );
    }
    for c in n.children() {
        other_listeners_options(listener, c, diags);
    }
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
    fn mcmt_reception_in_the_http_listener_itself_loads_with_one_warning() {
        let w = warnings(
            "http_listener {\n  mcmt_reception = allow\n  listen \"127.0.0.1:8081\" { }\n}\n",
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("t.conf:2:3: warning:"), "{w:?}");
        assert!(
            w[0].contains("`mcmt_reception` has no effect in an http_listener"),
            "{w:?}"
        );
    }

    #[test]
    fn another_listeners_option_in_a_listen_or_peer_stanza_warns() {
        let w = warnings(
            r#"http_listener {
  listen "127.0.0.1:8081" {
    max_message_size = 1048576
    api_key = "k"
  }
}
esmtp_listener {
  listen "127.0.0.1:25" {
    api_key = "k"
    control_password = "p"
    max_message_size = 1048576
    peer "10.0.0.0/8" { dashboard_admin_keys = ( "k" ) }
  }
  peer "10.1.0.0/16" { api_keys = ( "k" ) }
}
control_listener { listen "/tmp/herald.ctl" { control_password = "p" timeout = 5 max_request_size = 10 } }"#,
        );
        let want = [
            (
                "t.conf:3:5:",
                "`max_message_size` has no effect in a listen of http_listener: only esmtp_listener reads it",
            ),
            (
                "t.conf:9:5:",
                "`api_key` has no effect in a listen of esmtp_listener: only http_listener reads it",
            ),
            (
                "t.conf:10:5:",
                "`control_password` has no effect in a listen of esmtp_listener: only control_listener reads it",
            ),
            (
                "t.conf:12:25:",
                "`dashboard_admin_keys` has no effect in a peer of esmtp_listener",
            ),
            (
                "t.conf:14:24:",
                "`api_keys` has no effect in a peer of esmtp_listener",
            ),
            (
                "t.conf:16:82:",
                "`max_request_size` has no effect in a listen of control_listener",
            ),
        ];
        assert_eq!(w.len(), want.len(), "{w:#?}");
        for (w, (at, what)) in w.iter().zip(want) {
            assert!(w.starts_with(&format!("{at} warning: ")), "{w}");
            assert!(w.contains(what), "{w}");
        }
    }

    #[test]
    fn every_option_of_listen_or_peer_stanzas_has_a_listener_that_reads_it() {
        use crate::{options::OPTIONS, scopes::ScopeKind};
        for def in OPTIONS {
            if def.scopes.contains(ScopeKind::Listen) || def.scopes.contains(ScopeKind::Peer) {
                assert!(
                    def.scopes.kinds().any(ScopeKind::is_listener),
                    "{}",
                    def.name
                );
            }
        }
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
