//! Configuration warnings: listeners and the console open wider than their protection (see the parent module).
//!
//! - a TCP control listener on an address other than loopback without `control_password`;
//! - an ESMTP or HTTP listener on every address (`0.0.0.0`, `::`, `:PORT`) with no address restriction and, for
//!   HTTP, no API key. An `always_allow` list alone restricts nothing (an address outside it is refused only when
//!   it matches `always_deny`): the restriction is an `always_deny` list (with `always_allow` for the clients);
//! - an empty `api_key` or `api_keys` entry; a `dashboard_admin_keys` key an HTTP listen or peer stanza does not
//!   accept (it gives no right there);
//! - a control socket `file_mode` wider than 0660;
//! - a NATS token, credentials file or password in `spool_nats_url` sent without TLS to a server on another
//!   machine; likewise API keys on an HTTP listener (in its listen stanza, itself or a `peer` stanza of either),
//!   or `control_password` on a TCP control listener, without `tls_certificate`, on an address other than loopback;
//! - `tls_certificate` on a control listener's Unix socket (a Unix socket takes no TLS: herald refuses to start);
//! - an outcome webhook without `outcome_webhook_secret`, or over plain HTTP to another machine.
//!
//! One finding is an error, not a warning: an empty `control_password`. herald's console would take it as a
//! password (`auth ""` logs in), while this module, like a reader of the file, takes it for "no password": which
//! one was meant cannot be told, so the configuration is refused, at the line that sets it. It is looked for in a
//! file with other errors too ([`errors`]).

use crate::{
    diag::{Diagnostics, Location},
    net::{Cidr, ListenAddr},
    options::Opt,
    scopes::ScopeKind,
    tree::{Node, Setting},
    value::Value,
};

/// The setting of `name` in the listen stanza, else in its listener.
/// The setting in force for a listen stanza (its own, else its listener's); `None` when neither sets it or the one
/// in force unsets it (`tls_certificate = none`).
fn resolved<'a>(listen: &'a Node, listener: &'a Node, opt: Opt) -> Option<&'a Setting> {
    listen
        .get(opt.id())
        .or_else(|| listener.get(opt.id()))
        .filter(|s| !s.value.is_unset())
}

fn enabled(n: &Node) -> bool {
    n.get(Opt::Enable.id())
        .and_then(|s| s.value.as_bool())
        .unwrap_or(true)
}

fn non_empty_str(s: Option<&Setting>) -> bool {
    s.is_some_and(|s| matches!(&s.value, Value::Str(v) if !v.is_empty()))
}

fn non_empty_list(s: Option<&Setting>) -> bool {
    s.is_some_and(|s| match &s.value {
        Value::List(l) => l.iter().any(|k| !k.is_empty()),
        Value::Cidrs(c) => !c.is_empty(),
        _ => false,
    })
}

pub(super) fn check(root: &Node, diags: &mut Diagnostics) {
    for listener in root.children().iter().filter(|c| c.kind.is_listener()) {
        if !enabled(listener) {
            continue;
        }
        for listen in listener.children_of(ScopeKind::Listen) {
            let Some(address) = listen.name.as_deref() else {
                continue;
            };
            let Ok(addr) = address.parse::<ListenAddr>() else {
                continue;
            };
            let Some(at) = listen.at.clone().or_else(|| listener.at.clone()) else {
                continue;
            };
            if !enabled(listen) {
                continue;
            }
            check_listen(listener, listen, address, &addr, at, diags);
        }
    }
    empty_api_keys(root, diags);
    admin_keys_not_accepted(root, diags);
    empty_control_password(root, diags);
    nats_secrets_in_clear(root, diags);
    webhooks(root, root, diags);
}

/// An outcome webhook without a secret (its signature is then an HMAC with an empty key: anyone can forge it), or
/// sent over plain HTTP to another machine (the events carry whole device tokens).
fn webhooks(root: &Node, node: &Node, diags: &mut Diagnostics) {
    if let Some(url) = node.get(Opt::OutcomeWebhookUrl.id())
        && let Some(text) = url.value.as_str()
    {
        let scope = node.name.as_deref().map_or_else(
            || "globally".to_owned(),
            |n| format!("for {} {n:?}", node.kind.keyword()),
        );
        let secret = [node, root]
            .iter()
            .any(|n| non_empty_str(n.get(Opt::OutcomeWebhookSecret.id())));
        if !secret {
            diags.warning(
                url.at.clone(),
                format!(
                    "outcome_webhook_url is set {scope} without outcome_webhook_secret: the herald-signature of \
                     each batch is then keyed with nothing, and anyone can forge one; set outcome_webhook_secret"
                ),
            );
        }
        // The scheme in any case (`HTTP://` is plain HTTP too).
        if let Some((scheme, rest)) = text.split_once("://")
            && scheme.eq_ignore_ascii_case("http")
        {
            let (_, host_port, local) = url_authority(rest);
            if !local {
                diags.warning(
                    url.at.clone(),
                    format!(
                        "outcome_webhook_url {scope} sends device tokens to {host_port:?} over plain HTTP: use \
                         https://"
                    ),
                );
            }
        }
    }
    for child in node.children() {
        webhooks(root, child, diags);
    }
}

/// The authority of a URL given without its scheme (`user:pw@host:port/path?q`): its user information, `host:port`,
/// and whether the host is this machine (`localhost` or a loopback address).
fn url_authority(rest: &str) -> (Option<&str>, &str, bool) {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let (userinfo, host_port) = match authority.rsplit_once('@') {
        Some((user, host)) => (Some(user), host),
        None => (None, authority),
    };
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => host_port.rsplit_once(':').map_or(host_port, |(h, _)| h),
    };
    let local = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    (userinfo, host_port, local)
}

/// The NATS servers of `spool_nats_url` not on this machine that would be reached without TLS, when a secret
/// (`spool_nats_token`, `spool_nats_credentials`, a password in the URL) goes to them.
fn nats_secrets_in_clear(root: &Node, diags: &mut Diagnostics) {
    let Some(urls) = root.get(Opt::SpoolNatsUrl.id()) else {
        return;
    };
    let Some(text) = urls.value.as_str() else {
        return;
    };
    if root.get(Opt::SpoolNatsTlsCa.id()).is_some() {
        return;
    }
    let secret = [Opt::SpoolNatsToken, Opt::SpoolNatsCredentials]
        .into_iter()
        .find_map(|o| root.get(o.id()).map(|s| (s.id.def().name, s.at.clone())));
    for url in text.split([',', ' ']).filter(|u| !u.is_empty()) {
        let (scheme, rest) = url.split_once("://").unwrap_or(("nats", url));
        if scheme.eq_ignore_ascii_case("tls") {
            continue;
        }
        let (userinfo, host_port, local) = url_authority(rest);
        if local {
            continue;
        }
        let what = match (&secret, userinfo) {
            (Some((name, _)), _) => name.to_string(),
            (None, Some(_)) => "the user and password in spool_nats_url".to_string(),
            (None, None) => continue,
        };
        let at = secret
            .as_ref()
            .map_or_else(|| urls.at.clone(), |(_, at)| at.clone());
        diags.warning(
            at,
            format!(
                "{what} goes to the NATS server {host_port:?} in clear: nothing encrypts the connection; set \
                 spool_nats_tls_ca (the CA of the servers' certificates) or use tls:// URLs"
            ),
        );
        return;
    }
}

fn check_listen(
    listener: &Node,
    listen: &Node,
    address: &str,
    addr: &ListenAddr,
    at: Location,
    diags: &mut Diagnostics,
) {
    let keyword = listener.kind.keyword();
    if listener.kind == ScopeKind::ControlListener
        && matches!(addr, ListenAddr::Unix(_))
        && let Some(cert) = resolved(listen, listener, Opt::TlsCertificate)
    {
        diags.warning(
            cert.at.clone(),
            format!(
                "tls_certificate on {keyword} listen {address:?}: a Unix socket takes no TLS, and herald refuses \
                 to open it so; set it only in the stanzas of host:port control listeners"
            ),
        );
    }
    if let ListenAddr::Tcp(sa) = addr
        && !sa.ip().is_loopback()
    {
        let (secret, advice) = match listener.kind {
            ScopeKind::HttpListener
                if resolved(listen, listener, Opt::TlsCertificate).is_none() =>
            {
                (
                    api_key_in_force(listen, listener),
                    "set tls_certificate and tls_key in this listener, or listen on loopback behind a TLS proxy",
                )
            }
            ScopeKind::ControlListener
                if resolved(listen, listener, Opt::TlsCertificate).is_none() =>
            {
                (
                    Some(Opt::ControlPassword)
                        .filter(|o| non_empty_str(resolved(listen, listener, *o)))
                        .map(|o| (o, None)),
                    "set tls_certificate and tls_key in this listener (and use herald console --tls), or listen \
                     on 127.0.0.1 or a Unix socket and reach it over SSH",
                )
            }
            _ => (None, ""),
        };
        if let Some((opt, peer)) = secret {
            let name = opt.id().def().name;
            let what = match peer {
                Some(block) => format!("{name} (of its peer {block:?})"),
                None => name.to_owned(),
            };
            diags.warning(
                at.clone(),
                format!(
                    "{keyword} listen {address:?} takes {what} from other machines in clear: nothing encrypts the \
                     connection; {advice}"
                ),
            );
        }
    }
    match (listener.kind, addr) {
        (ScopeKind::ControlListener, ListenAddr::Tcp(sa))
            if !sa.ip().is_loopback()
                && !non_empty_str(resolved(listen, listener, Opt::ControlPassword)) =>
        {
            diags.warning(
                at,
                format!(
                    "{keyword} listen {address:?} accepts console connections from other machines without \
                     control_password: anyone who reaches it can run every command, shutdown included; set \
                     control_password in this listen stanza, or listen on 127.0.0.1 or a Unix socket"
                ),
            );
        }
        (ScopeKind::ControlListener, ListenAddr::Unix(_)) => {
            if let Some(mode) = resolved(listen, listener, Opt::FileMode)
                && let Value::Mode(m) = mode.value
                && m & !0o660 != 0
            {
                diags.warning(
                            mode.at.clone(),
                            format!(
                                "file_mode = {m:04o} makes the console socket of {keyword} listen {address:?} \
                                 usable by more than its owner and group (wider than 0660): every local user could \
                                 run console commands; set file_mode = 0660 or narrower"
                            ),
                        );
            }
        }
        (ScopeKind::EsmtpListener | ScopeKind::HttpListener, ListenAddr::Tcp(sa))
            if sa.ip().is_unspecified() =>
        {
            // Only a deny list refuses anyone: an address outside `always_allow` is still accepted unless it
            // matches `always_deny` (settings::Acl::permits).
            let deny_list = non_empty_list(resolved(listen, listener, Opt::AlwaysDeny));
            let http = listener.kind == ScopeKind::HttpListener;
            let keys = non_empty_str(resolved(listen, listener, Opt::ApiKey))
                || non_empty_list(resolved(listen, listener, Opt::ApiKeys));
            if !(deny_list || (http && keys)) {
                let protect = if http {
                    "set api_key (or api_keys), or always_deny = ( 0.0.0.0/0 ::/0 ) with an always_allow list of \
                     the clients' addresses"
                } else {
                    "set always_deny = ( 0.0.0.0/0 ::/0 ) with an always_allow list of the clients' addresses (an \
                     always_allow list alone refuses no one)"
                };
                diags.warning(
                    at,
                    format!(
                        "{keyword} listen {address:?} takes notifications from every address with nothing to \
                         restrict who sends them: {protect}, or listen on a specific address"
                    ),
                );
            }
        }
        _ => {}
    }
}

/// The first API key option (`api_key`, `api_keys`, `dashboard_admin_keys`) an HTTP listen stanza takes from some
/// client: set in the listen stanza or its listener, or else in a `peer` stanza of either (keys for the clients of
/// that block), with the peer's block. A peer of loopback addresses only is left out: its keys never cross the
/// network.
fn api_key_in_force<'a>(listen: &'a Node, listener: &'a Node) -> Option<(Opt, Option<&'a str>)> {
    const KEYS: [Opt; 3] = [Opt::ApiKey, Opt::ApiKeys, Opt::DashboardAdminKeys];
    if let Some(opt) = KEYS
        .into_iter()
        .find(|o| resolved(listen, listener, *o).is_some())
    {
        return Some((opt, None));
    }
    listen
        .children_of(ScopeKind::Peer)
        .chain(listener.children_of(ScopeKind::Peer))
        .filter(|peer| !loopback_only(peer))
        .find_map(|peer| {
            KEYS.into_iter()
                .find(|o| peer.get(o.id()).is_some_and(|s| !s.value.is_unset()))
                .map(|o| (o, peer.name.as_deref()))
        })
}

/// Whether a `peer` stanza's block holds loopback addresses only (`127.0.0.1`, `127.0.0.0/8`, `::1`).
fn loopback_only(peer: &Node) -> bool {
    peer.name
        .as_deref()
        .and_then(|n| n.parse::<Cidr>().ok())
        .is_some_and(|c| {
            let min = if c.addr.is_ipv4() { 8 } else { 128 };
            c.prefix >= min && c.network().addr.is_loopback()
        })
}

/// An empty `api_key` (or `api_keys` entry) anywhere: a key nobody has to know.
fn empty_api_keys(node: &Node, diags: &mut Diagnostics) {
    for s in node.settings() {
        let name = s.id.def().name;
        let empty = match (&s.value, s.id.opt()) {
            (Value::Str(v), Some(Opt::ApiKey)) => v.trim().is_empty(),
            (Value::List(l), Some(Opt::ApiKeys)) => l.iter().any(|k| k.trim().is_empty()),
            _ => false,
        };
        if empty {
            diags.warning(
                s.at.clone(),
                format!(
                    "{name} has an empty key: a client sending an empty key is let in; set a long random key or \
                     remove the empty one"
                ),
            );
        }
    }
    for c in node.children() {
        empty_api_keys(c, diags);
    }
}

/// A key of `dashboard_admin_keys` that an HTTP listen stanza (or a `peer` stanza of it) does not accept: the
/// dashboard takes only the listener's API keys, so it gives no right there (it was left when the key was taken
/// out of `api_keys`, or a listen or peer stanza's `api_keys` replace the listener's). Named by position, not
/// value: keys are secrets.
fn admin_keys_not_accepted(root: &Node, diags: &mut Diagnostics) {
    use crate::settings::ListenerKind;
    let listeners = crate::settings::listeners(root);
    for listener in root
        .children()
        .iter()
        .filter(|c| c.kind == ScopeKind::HttpListener)
    {
        for listen in listener.children_of(ScopeKind::Listen) {
            let Some(address) = listen.name.as_deref() else {
                continue;
            };
            let Some(settings) = listeners
                .iter()
                .find(|s| s.kind == ListenerKind::Http && s.address == address)
            else {
                continue;
            };
            let Some(at) = listen.at.clone().or_else(|| listener.at.clone()) else {
                continue;
            };
            let stray = |admin: &[String], keys: &[String]| -> Vec<usize> {
                admin
                    .iter()
                    .enumerate()
                    .filter(|(_, k)| !keys.contains(k))
                    .map(|(i, _)| i + 1)
                    .collect()
            };
            let mut report = |whom: String, positions: Vec<usize>| {
                if positions.is_empty() {
                    return;
                }
                let which = positions
                    .iter()
                    .map(|p| format!("#{p}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                diags.warning(
                    at.clone(),
                    format!(
                        "dashboard_admin_keys of http_listener listen {address:?}{whom}: key {which} (by position) \
                         is not one of the API keys accepted there (api_key, api_keys), so it gives no right on the \
                         dashboard; add it to api_keys or remove it"
                    ),
                );
            };
            report(
                String::new(),
                stray(&settings.admin_keys, &settings.api_keys),
            );
            for peer in &settings.peers {
                report(
                    format!(" (for its peer {})", peer.cidr),
                    stray(&peer.admin_keys, &peer.api_keys),
                );
            }
        }
    }
}

/// The checks of this module that find errors, alone: what [`check`] reports as errors, for the tree of a file
/// that has other errors (its warnings are looked for only in a file without errors).
pub(super) fn errors(root: &Node, diags: &mut Diagnostics) {
    empty_control_password(root, diags);
}

/// An empty `control_password` anywhere: an error (see the module's documentation).
fn empty_control_password(node: &Node, diags: &mut Diagnostics) {
    for s in node.settings() {
        if s.id.opt() == Some(Opt::ControlPassword)
            && matches!(&s.value, Value::Str(v) if v.is_empty())
        {
            diags.error(
                s.at.clone(),
                "control_password is empty: herald would take it as a password (a console sending `auth \"\"` \
                 would be let in), not as \"no password\"; remove control_password for a control listener without a \
                 password, or set a long random one",
            );
        }
    }
    for c in node.children() {
        empty_control_password(c, diags);
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    /// A listener's server certificate, so that the keys and passwords of a test travel encrypted.
    const TLS: &str = "tls_certificate = \"/c.pem\"\n tls_key = \"/k.pem\"\n";

    fn warnings(text: &str) -> Vec<String> {
        let config = Config::parse_str("t.conf", text).unwrap_or_else(|d| panic!("{d:?}"));
        config.warnings().iter().map(|d| d.to_string()).collect()
    }

    fn one(text: &str, wants: &[&str]) {
        let w = warnings(text);
        assert_eq!(w.len(), 1, "{w:?}");
        for want in wants {
            assert!(w[0].contains(want), "{want:?} not in {:?}", w[0]);
        }
    }

    #[test]
    fn a_tcp_control_listener_off_loopback_needs_a_password() {
        one(
            "control_listener {\n  listen \"0.0.0.0:2025\" { }\n}\n",
            &["t.conf:2", "control_password", "127.0.0.1"],
        );
        // With a password and no certificate, only the warning that it travels in clear.
        for config in [
            "control_listener { listen \"0.0.0.0:2025\" { control_password = \"s3\" } }",
            "control_listener { control_password = \"s3\"\n listen \"10.0.0.1:2025\" { } }",
        ] {
            let w = warnings(config);
            assert!(w.len() == 1 && w[0].contains("in clear"), "{config}: {w:?}");
        }
        assert!(warnings("control_listener { listen \"127.0.0.1:2025\" { } }").is_empty());
    }

    #[test]
    fn listeners_open_to_every_address_need_keys_or_an_allow_list() {
        one(
            "http_listener {\n  listen \":8080\" { }\n}\n",
            &["t.conf:2", "api_key", "always_deny", "always_allow"],
        );
        one(
            "esmtp_listener {\n\n  listen \"0.0.0.0:25\" { }\n}\n",
            &["t.conf:3", "always_allow"],
        );
        // (With TLS: keys are not taken in clear, see secrets_taken_in_clear_from_other_machines_are_named.)
        assert!(
            warnings(&format!(
                "http_listener {{ {TLS} listen \":8080\" {{ api_key = \"k\" }} }}"
            ))
            .is_empty()
        );
        assert!(
            warnings(&format!(
                "http_listener {{ {TLS} api_keys = ( \"k\" )\n listen \"[::]:8080\" {{ }} }}"
            ))
            .is_empty()
        );
        // An allow list alone lets every address in (docs/momentum-compat.md: always_allow wins over always_deny,
        // and what neither names is accepted): still open.
        one(
            "esmtp_listener { always_allow = ( 10.0.0.0/8 )\n listen \":25\" { } }",
            &["t.conf:2", "always_deny", "refuses no one"],
        );
        assert!(
            warnings(
                "esmtp_listener { always_allow = ( 10.0.0.0/8 ) always_deny = ( 0.0.0.0/0 ::/0 )\n listen \":25\" { } }"
            )
            .is_empty()
        );
        assert!(warnings("esmtp_listener { listen \"127.0.0.1:25\" { } }").is_empty());
        assert!(
            warnings("http_listener { listen \"0.0.0.0:8080\" { enable = false } }").is_empty()
        );
    }

    #[test]
    fn empty_api_keys_are_named_with_their_line() {
        one(
            "http_listener {\n  listen \"127.0.0.1:8080\" {\n    api_key = \"\"\n  }\n}\n",
            &["t.conf:3", "api_key has an empty key"],
        );
        one(
            "http_listener {\n  api_keys = ( \"a\" \"\" )\n  listen \"127.0.0.1:8080\" { }\n}\n",
            &["t.conf:2", "api_keys"],
        );
    }

    #[test]
    fn a_nats_secret_sent_in_clear_to_another_machine_is_named() {
        one(
            "spool_nats_url = \"nats://10.0.0.1:4222, nats://10.0.0.2:4222\"\nspool_nats_token = \"t0k\"\n",
            &[
                "t.conf:2",
                "spool_nats_token",
                "10.0.0.1:4222",
                "spool_nats_tls_ca",
            ],
        );
        one(
            "spool_nats_url = \"nats://herald:pw@nats.example:4222\"\n",
            &[
                "t.conf:1",
                "password in spool_nats_url",
                "nats.example:4222",
            ],
        );
        // TLS, a server on this machine, or no secret at all: nothing to say.
        for quiet in [
            "spool_nats_url = \"nats://10.0.0.1:4222\"\nspool_nats_token = \"t\"\nspool_nats_tls_ca = \"/ca.pem\"\n",
            "spool_nats_url = \"tls://10.0.0.1:4222\"\nspool_nats_token = \"t\"\n",
            "spool_nats_url = \"nats://127.0.0.1:4222, localhost:4223, nats://[::1]:4224\"\nspool_nats_token = \"t\"\n",
            "spool_nats_url = \"nats://10.0.0.1:4222\"\n",
        ] {
            assert!(warnings(quiet).is_empty(), "{quiet}: {:?}", warnings(quiet));
        }
    }

    #[test]
    fn secrets_taken_in_clear_from_other_machines_are_named() {
        one(
            "http_listener {\n  api_key = \"k\"\n  listen \"10.0.0.5:8080\" { }\n}\n",
            &["t.conf:3", "api_key", "in clear", "tls_certificate"],
        );
        one(
            "control_listener {\n  listen \"10.0.0.5:2025\" { control_password = \"s3\" }\n}\n",
            &["t.conf:2", "control_password", "in clear", "SSH"],
        );
        // With a certificate the console speaks TLS: the password no longer crosses in clear.
        let w = warnings(
            "control_listener {\n  tls_certificate = \"/c.pem\"\n  tls_key = \"/k.pem\"\n  listen \"10.0.0.5:2025\" { control_password = \"s3\" }\n}\n",
        );
        assert!(w.is_empty(), "{w:?}");
        // A Unix socket takes none.
        one(
            "control_listener {\n  tls_certificate = \"/c.pem\"\n  listen \"/tmp/c.sock\" { }\n}\n",
            &["t.conf:2", "Unix socket takes no TLS"],
        );
        // A listen stanza that unsets the listener's certificate (`none`) has none: its socket is fine, and a TCP
        // one takes the password in clear.
        assert!(
            warnings(
                "control_listener {\n  tls_certificate = \"/c.pem\"\n  listen \"/tmp/c.sock\" { tls_certificate = none }\n}\n"
            )
            .is_empty()
        );
        one(
            "control_listener {\n  tls_certificate = \"/c.pem\"\n  tls_key = \"/k.pem\"\n  listen \"10.0.0.5:2025\" { \
             control_password = \"s3\"  tls_certificate = \"NONE\" }\n}\n",
            &["t.conf:4", "control_password", "in clear"],
        );
        for quiet in [
            "http_listener { api_key = \"k\"\n listen \"127.0.0.1:8080\" { } }",
            "http_listener { api_key = \"k\"\n tls_certificate = \"/c.pem\"\n tls_key = \"/k.pem\"\n listen \"10.0.0.5:8080\" { } }",
            "control_listener { listen \"127.0.0.1:2025\" { control_password = \"s3\" } }",
        ] {
            assert!(warnings(quiet).is_empty(), "{quiet}: {:?}", warnings(quiet));
        }
    }

    /// Keys set for the clients of a `peer` block travel as the listener's own do (docs/configuration.md: the
    /// peer stanza falls back listen::peer > listen > listener::peer > listener).
    #[test]
    fn api_keys_of_a_peer_taken_in_clear_are_named() {
        one(
            "http_listener {\n  peer \"10.0.0.0/8\" { api_key = \"x\" }\n  listen \"192.0.2.2:1\" { }\n}\n",
            &[
                "t.conf:3",
                "api_key (of its peer \"10.0.0.0/8\")",
                "in clear",
                "tls_certificate",
            ],
        );
        one(
            "http_listener {\n  listen \"192.0.2.2:1\" {\n    peer \"2001:db8::/32\" { api_keys = ( \"x\" ) }\n  }\n}\n",
            &["t.conf:2", "api_keys", "2001:db8::/32", "in clear"],
        );
        for quiet in [
            // The listener's certificate encrypts the peer's clients' connections too.
            "http_listener { tls_certificate = \"/c.pem\"\n tls_key = \"/k.pem\"\n peer \"10.0.0.0/8\" { api_key = \"x\" }\n \
             listen \"192.0.2.2:1\" { } }",
            // A peer of this machine's own addresses: the key never crosses the network.
            "http_listener { peer \"127.0.0.0/8\" { api_key = \"x\" }\n listen \"192.0.2.2:1\" { } }",
            "http_listener { listen \"[::]:1\" { always_deny = ( 0.0.0.0/0 ::/0 )\n peer \"::1\" { api_key = \"x\" } } }",
            // A loopback listen stanza.
            "http_listener { peer \"10.0.0.0/8\" { api_key = \"x\" }\n listen \"127.0.0.1:1\" { } }",
        ] {
            assert!(warnings(quiet).is_empty(), "{quiet}: {:?}", warnings(quiet));
        }
    }

    /// The dashboard takes only keys the listener accepts from the client (docs/operations.md, web dashboard): a
    /// `dashboard_admin_keys` key outside them gives no right, and is named by position, never by value.
    #[test]
    fn admin_keys_the_listener_does_not_accept_are_named() {
        one(
            "http_listener {\n  api_keys = ( \"r\" \"a\" )\n  dashboard_admin_keys = ( \"a\" \"gone\" )\n  \
             listen \"127.0.0.1:1\" { }\n}\n",
            &[
                "t.conf:4",
                "listen \"127.0.0.1:1\"",
                "key #2 (by position)",
                "gives no right",
            ],
        );
        one(
            "http_listener {\n  api_keys = ( \"r\" \"a\" )\n  dashboard_admin_keys = ( \"a\" )\n  \
             listen \"127.0.0.1:1\" {\n    peer \"10.0.0.0/8\" { api_keys = ( \"r2\" ) }\n  }\n}\n",
            &["t.conf:4", "for its peer 10.0.0.0/8", "key #1"],
        );
        let listen_keys = "http_listener {\n  api_keys = ( \"a\" )\n  dashboard_admin_keys = ( \"a\" )\n  \
                           listen \"127.0.0.1:1\" { api_keys = ( \"b\" ) }\n}\n";
        one(listen_keys, &["t.conf:4", "key #1"]);
        assert!(
            warnings(listen_keys).iter().all(|w| !w.contains("\"a\"")),
            "a key's value is never shown"
        );
        for quiet in [
            "http_listener { api_keys = ( \"r\" \"a\" ) dashboard_admin_keys = ( \"a\" )\n listen \"127.0.0.1:1\" { } }",
            "http_listener { api_key = \"a\" dashboard_admin_keys = ( \"a\" )\n listen \"127.0.0.1:1\" { \
             peer \"10.0.0.0/8\" { always_allow = ( 10.0.0.0/8 ) } } }",
        ] {
            assert!(warnings(quiet).is_empty(), "{quiet}: {:?}", warnings(quiet));
        }
    }

    #[test]
    fn webhooks_without_a_secret_or_over_plain_http_are_named() {
        one(
            "domain \"a.example\" {\n  outcome_webhook_url = \"https://h.example/x\"\n}\n",
            &["t.conf:2", "domain \"a.example\"", "outcome_webhook_secret"],
        );
        one(
            "outcome_webhook_secret = \"s\"\ndomain \"a.example\" {\n  outcome_webhook_url = \"http://h.example/x\"\n}\n",
            &["t.conf:3", "plain HTTP", "h.example"],
        );
        // The scheme is read in any case, as the web client reads it.
        for scheme in ["HTTP", "Http"] {
            one(
                &format!(
                    "outcome_webhook_secret = \"s\"\ndomain \"a.example\" {{\n  outcome_webhook_url = \
                     \"{scheme}://192.0.2.2:28118/hook\"\n}}\n"
                ),
                &["t.conf:3", "plain HTTP", "192.0.2.2:28118"],
            );
        }
        for quiet in [
            "domain \"a.example\" { outcome_webhook_url = \"https://h.example/x\"\n outcome_webhook_secret = \"s\" }",
            "outcome_webhook_secret = \"s\"\ndomain \"a.example\" { outcome_webhook_url = \"http://127.0.0.1:9/x\" }",
            "outcome_webhook_secret = \"s\"\ndomain \"a.example\" { outcome_webhook_url = \"HTTPS://h.example/x\" }",
        ] {
            assert!(warnings(quiet).is_empty(), "{quiet}: {:?}", warnings(quiet));
        }
    }

    /// The diagnostics of the whole-configuration checks for `text` (which must load), errors included.
    fn findings(text: &str) -> Vec<crate::Diagnostic> {
        let mut loader = crate::loader::Loader::new();
        let mut root = crate::tree::Node::root();
        loader.load_bytes(
            std::sync::Arc::from("t.conf"),
            ".".into(),
            text.as_bytes(),
            &mut root,
        );
        assert!(!loader.diags.has_errors(), "{}", loader.diags);
        let mut diags = crate::Diagnostics::new();
        super::check(&root, &mut diags);
        diags.all().to_vec()
    }

    #[test]
    fn an_empty_control_password_is_an_error_at_its_line() {
        for text in [
            "control_listener {\n  listen \"/tmp/h.sock\" {\n    control_password = \"\"\n  }\n}\n",
            "control_listener {\n  listen \"127.0.0.1:2025\" {\n    control_password = ''\n  }\n}\n",
        ] {
            let found = findings(text);
            let errors: Vec<_> = found
                .iter()
                .filter(|d| d.severity == crate::Severity::Error)
                .collect();
            assert_eq!(errors.len(), 1, "{found:?}");
            let e = errors[0].to_string();
            for want in [
                "t.conf:3:5: error: control_password is empty",
                "remove control_password",
                "set a long random one",
            ] {
                assert!(e.contains(want), "{want:?} not in {e:?}");
            }
        }
        // Set on the listener, for every listen stanza of it.
        let found = findings(
            "control_listener {\n control_password = \"\"\n listen \"/tmp/h.sock\" { }\n}\n",
        );
        assert!(
            found
                .iter()
                .any(|d| d.severity == crate::Severity::Error && d.location.line == 2),
            "{found:?}"
        );
        // A password, or none at all: no error.
        for text in [
            "control_listener { listen \"/tmp/h.sock\" { control_password = \" \" } }",
            "control_listener { listen \"/tmp/h.sock\" { } }",
        ] {
            assert!(
                findings(text)
                    .iter()
                    .all(|d| d.severity != crate::Severity::Error),
                "{text}"
            );
        }
    }

    /// An empty `control_password` is refused with the other errors of the file (one run reports every error),
    /// wherever it stands; the warnings of these checks are left for a file without errors.
    #[test]
    fn an_empty_control_password_is_reported_with_the_other_errors() {
        let text = "bogus_opt = 1\ncontrol_listener {\n  listen \"0.0.0.0:2025\" {\n    control_password = \"\"\n  }\n}\n\
                    max_retries = many\n";
        let Err(diags) = crate::Config::parse_str("t.conf", text) else {
            panic!("loaded");
        };
        let all: Vec<String> = diags.all().iter().map(|d| d.to_string()).collect();
        assert_eq!(diags.error_count(), 3, "{all:?}");
        for want in [
            "t.conf:1:1: error: unknown option `bogus_opt`",
            "t.conf:4:5: error: control_password is empty",
            "t.conf:7:15: error: invalid value `many`",
        ] {
            assert!(
                all.iter().any(|d| d.starts_with(want)),
                "{want:?} not in {all:?}"
            );
        }
        // The listener on every address without a password would be warned about in a file without errors.
        assert!(diags.warnings().next().is_none(), "{all:?}");
    }

    #[test]
    fn a_control_socket_wider_than_0660_is_named() {
        one(
            "control_listener {\n  listen \"/tmp/h.sock\" {\n    file_mode = 0666\n  }\n}\n",
            &["t.conf:3", "file_mode = 0666", "0660"],
        );
        assert!(
            warnings("control_listener { listen \"/tmp/h.sock\" { file_mode = 0600 } }").is_empty()
        );
        assert!(warnings("control_listener { listen \"/tmp/h.sock\" { } }").is_empty());
    }
}
