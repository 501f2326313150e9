//! Configuration error: a listen stanza of a listener that takes TLS (ESMTP, HTTP, control over TCP) with
//! `tls_key` in force but no `tls_certificate`. A key alone makes no TLS identity: the listener would serve plain
//! text, which its operator meant to encrypt. `tls_certificate` alone is no error: the certificate file may hold
//! the key too (one rule for every listener), and whether it does is known only when herald reads the file.
//!
//! A stanza that unsets the certificate (`tls_certificate = none`) turns TLS off on purpose, and a control
//! listener's Unix socket takes no TLS at all: a key that reaches either from its listener has nothing to do
//! there, and is not reported.

use crate::{diag::Diagnostics, net::ListenAddr, options::Opt, scopes::ScopeKind, tree::Node};

/// The listener kinds that speak TLS with `tls_certificate` and `tls_key`.
fn takes_tls(kind: ScopeKind) -> bool {
    matches!(
        kind,
        ScopeKind::EsmtpListener | ScopeKind::HttpListener | ScopeKind::ControlListener
    )
}

/// Reports every listen stanza with a key and no certificate, at the line that sets the key, naming the stanza.
pub(super) fn errors(root: &Node, diags: &mut Diagnostics) {
    for listener in root.children().iter().filter(|c| takes_tls(c.kind)) {
        for listen in listener.children_of(ScopeKind::Listen) {
            let Some(address) = listen.name.as_deref() else {
                continue;
            };
            let unix = matches!(address.parse::<ListenAddr>(), Ok(ListenAddr::Unix(_)));
            if unix && listener.kind == ScopeKind::ControlListener {
                continue;
            }
            let setting = |opt: Opt| listen.get(opt.id()).or_else(|| listener.get(opt.id()));
            // `tls_certificate = none` turns TLS off on purpose: a key left from the listener is then unused.
            let (Some(key), None) = (
                setting(Opt::TlsKey).filter(|s| !s.value.is_unset()),
                setting(Opt::TlsCertificate),
            ) else {
                continue;
            };
            diags.error(
                key.at.clone(),
                format!(
                    "{} listen {address:?}: tls_key is set but tls_certificate is not: the listener would serve \
                     plain text; set tls_certificate (its file may hold the key too) or remove tls_key",
                    listener.kind.keyword()
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    fn errors(text: &str) -> Vec<String> {
        match Config::parse_str("t.conf", text) {
            Ok(_) => Vec::new(),
            Err(d) => d.to_string().lines().map(str::to_owned).collect(),
        }
    }

    /// A key without a certificate is refused at the key's line for every listener kind that takes TLS, set in
    /// the listen stanza or in the listener; a certificate alone (a combined file), both, a key unset, or a
    /// certificate unset on purpose are not.
    #[test]
    fn a_key_without_a_certificate_is_refused_on_every_listener() {
        for kind in ["esmtp_listener", "http_listener", "control_listener"] {
            let e = errors(&format!(
                "{kind} {{\n listen \"127.0.0.1:2025\" {{\n  tls_key = \"/k.pem\"\n }}\n}}\n"
            ));
            assert!(
                e.iter().any(|l| l.starts_with("t.conf:3:")
                    && l.contains(&format!(
                        "{kind} listen \"127.0.0.1:2025\": tls_key is set but tls_certificate is not"
                    ))),
                "{kind}: {e:?}"
            );
            let e = errors(&format!(
                "{kind} {{\n tls_key = \"/k.pem\"\n listen \"127.0.0.1:2025\" {{ }}\n}}\n"
            ));
            assert!(
                e.iter().any(|l| l.starts_with("t.conf:2:")),
                "{kind}: {e:?}"
            );
        }
        for fine in [
            "esmtp_listener { listen \"127.0.0.1:2525\" { tls_certificate = \"/both.pem\" } }\n",
            "http_listener { listen \"127.0.0.1:8080\" { tls_certificate = \"/c.pem\"\n tls_key = \"/k.pem\" } }\n",
            "control_listener { tls_certificate = \"/c.pem\"\n listen \"127.0.0.1:2025\" { } }\n",
            "http_listener { tls_key = \"/k.pem\"\n listen \"127.0.0.1:8080\" { tls_key = none } }\n",
            "http_listener { tls_certificate = \"/c.pem\"\n tls_key = \"/k.pem\"\n listen \"10.0.0.5:8080\" { \
             tls_certificate = none } }\n",
            "control_listener { tls_certificate = \"/c.pem\"\n tls_key = \"/k.pem\"\n listen \"/tmp/c.sock\" { \
             tls_certificate = none } }\n",
        ] {
            assert!(
                !errors(fine).iter().any(|l| l.contains("tls_key is set")),
                "{fine}: {:?}",
                errors(fine)
            );
        }
    }
}
