//! Configuration error: two listen stanzas that cannot both be bound (see the parent module). Each is valid alone,
//! and a stanza written twice in one scope is refused as it is read; but an ESMTP and an HTTP listener on one port,
//! or `":2081"` beside `"127.0.0.1:2081"`, would only fail when herald binds the second (at start, or at a reload),
//! with a bare "address in use". Two stanzas clash when they name the same Unix socket path, or the same TCP port
//! (not 0: any free port) on the same address, or on addresses of one family where either is the wildcard address.
//! A disabled listener or listen stanza binds nothing and clashes with none.

use crate::{
    diag::{Diagnostics, Location},
    net::ListenAddr,
    options::Opt,
    tree::Node,
};

fn enabled(n: &Node) -> bool {
    n.get(Opt::Enable.id())
        .and_then(|s| s.value.as_bool())
        .unwrap_or(true)
}

/// Whether binding both `a` and `b` fails (see the module's documentation).
pub(crate) fn clash(a: &ListenAddr, b: &ListenAddr) -> bool {
    match (a, b) {
        (ListenAddr::Tcp(a), ListenAddr::Tcp(b)) => {
            a.port() == b.port()
                && a.port() != 0
                && (a.ip() == b.ip()
                    || (a.is_ipv4() == b.is_ipv4()
                        && (a.ip().is_unspecified() || b.ip().is_unspecified())))
        }
        (ListenAddr::Unix(a), ListenAddr::Unix(b)) => a == b,
        _ => false,
    }
}

/// Reports every listen stanza that clashes with one before it, at its own line, naming the other and where it is.
pub(super) fn errors(root: &Node, diags: &mut Diagnostics) {
    // (listener keyword, address as written, parsed, where)
    let mut seen: Vec<(&'static str, &str, ListenAddr, Option<Location>)> = Vec::new();
    for listener in root.children().iter().filter(|c| c.kind.is_listener()) {
        if !enabled(listener) {
            continue;
        }
        for listen in listener.children_of(crate::scopes::ScopeKind::Listen) {
            let Some(address) = listen.name.as_deref() else {
                continue;
            };
            let Ok(addr) = address.parse::<ListenAddr>() else {
                continue;
            };
            if !enabled(listen) {
                continue;
            }
            let at = listen.at.clone().or_else(|| listener.at.clone());
            let keyword = listener.kind.keyword();
            if let Some((other_kind, other, _, other_at)) =
                seen.iter().find(|(_, _, a, _)| clash(a, &addr))
                && let Some(at) = at.clone()
            {
                diags.error(
                    at,
                    format!(
                        "{keyword} listen {address:?} takes the same socket as {other_kind} listen {other:?}{}: \
                         only one of them could be bound; give each its own address or port",
                        other_at
                            .as_ref()
                            .map(|a| format!(" at {a}"))
                            .unwrap_or_default()
                    ),
                );
                continue;
            }
            seen.push((keyword, address, addr, at));
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

    /// An ESMTP and an HTTP listener on one port, a wildcard beside a specific address of one family, and one Unix
    /// path twice are refused at the second stanza's line, naming the first; distinct ports, port 0, the two
    /// families' wildcards and a disabled stanza are not.
    #[test]
    fn listen_stanzas_that_take_one_socket_are_refused() {
        let e = errors(
            "esmtp_listener {\n listen \"127.0.0.1:2525\" { }\n}\nhttp_listener {\n listen \"127.0.0.1:2525\" { }\n}\n",
        );
        assert!(
            e.iter().any(|l| l.contains("t.conf:5")
                && l.contains("http_listener listen \"127.0.0.1:2525\" takes the same socket as esmtp_listener listen \"127.0.0.1:2525\" at t.conf:2")),
            "{e:?}"
        );
        let e =
            errors("http_listener {\n listen \":2081\" { }\n listen \"127.0.0.1:2081\" { }\n}\n");
        assert!(
            e.iter()
                .any(|l| l.contains("t.conf:3") && l.contains("\":2081\"")),
            "{e:?}"
        );
        let e = errors(
            "control_listener {\n listen \"/tmp/h.sock\" { }\n}\nesmtp_listener {\n listen \"/tmp/h.sock\" { }\n}\n",
        );
        assert!(e.iter().any(|l| l.contains("t.conf:5")), "{e:?}");
        for fine in [
            "esmtp_listener { listen \"127.0.0.1:2525\" { } }\nhttp_listener { listen \"127.0.0.1:2081\" { } }\n",
            "esmtp_listener { listen \"127.0.0.1:0\" { } }\nhttp_listener { listen \"127.0.0.1:0\" { } }\n",
            "esmtp_listener { listen \"127.0.0.1:25\" { } }\nhttp_listener { listen \"127.0.0.2:25\" { } }\n",
            "esmtp_listener { listen \"[::]:25\" { } }\nhttp_listener { listen \"127.0.0.1:25\" { } }\n",
            "esmtp_listener { listen \":25\" { } }\nhttp_listener { listen \"127.0.0.1:25\" { enable = false } }\n",
            "esmtp_listener { enable = false\n listen \":25\" { } }\nhttp_listener { listen \"127.0.0.1:25\" { } }\n",
        ] {
            assert!(errors(fine).is_empty(), "{fine}: {:?}", errors(fine));
        }
    }
}
