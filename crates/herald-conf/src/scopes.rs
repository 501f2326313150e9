//! The kinds of scope herald knows, whether each takes a name, and where each may appear
//! (docs/momentum-compat.md#scope-containment, plus the module scopes herald reads: `apn`, `apn_logger`, `ec_logger`,
//! `httpsrv`, `restinjector`).

use std::fmt;

use crate::net::{Cidr, ListenAddr};

/// A kind of scope. `Global` is the top level of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScopeKind {
    Global,
    BindingGroup,
    Binding,
    Domain,
    Host,
    EsmtpListener,
    HttpListener,
    ControlListener,
    EcstreamListener,
    Listen,
    Peer,
    Apn,
    ApnLogger,
    EcLogger,
    Httpsrv,
    Restinjector,
    PathwayGroup,
    Pathway,
}

/// Whether a scope is written with a name (`domain "x" {}`) or without (`apn {}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    Named,
    Anonymous,
}

/// What the scope table says about one kind.
#[derive(Debug, Clone, Copy)]
pub struct ScopeDef {
    pub kind: ScopeKind,
    /// The keyword, lower case.
    pub keyword: &'static str,
    pub naming: Naming,
    /// The scopes this one may appear directly inside.
    pub parents: &'static [ScopeKind],
    /// Whether names compare case-insensitively (domain and host names do; binding names do not).
    pub fold_case: bool,
}

use ScopeKind::*;

const LISTENERS: &[ScopeKind] = &[
    EsmtpListener,
    HttpListener,
    ControlListener,
    EcstreamListener,
];
const LISTENERS_AND_LISTEN: &[ScopeKind] = &[
    EsmtpListener,
    HttpListener,
    ControlListener,
    EcstreamListener,
    Listen,
];

/// Every scope kind except `Global`.
pub const SCOPES: &[ScopeDef] = &[
    ScopeDef {
        kind: BindingGroup,
        keyword: "binding_group",
        naming: Naming::Named,
        parents: &[Global],
        fold_case: false,
    },
    ScopeDef {
        kind: Binding,
        keyword: "binding",
        naming: Naming::Named,
        parents: &[Global, BindingGroup],
        fold_case: false,
    },
    ScopeDef {
        kind: Domain,
        keyword: "domain",
        naming: Naming::Named,
        parents: &[Global, BindingGroup, Binding],
        fold_case: true,
    },
    ScopeDef {
        kind: Host,
        keyword: "host",
        naming: Naming::Named,
        parents: &[Global, BindingGroup, Binding],
        fold_case: true,
    },
    ScopeDef {
        kind: EsmtpListener,
        keyword: "esmtp_listener",
        naming: Naming::Anonymous,
        parents: &[Global],
        fold_case: false,
    },
    ScopeDef {
        kind: HttpListener,
        keyword: "http_listener",
        naming: Naming::Anonymous,
        parents: &[Global],
        fold_case: false,
    },
    ScopeDef {
        kind: ControlListener,
        keyword: "control_listener",
        naming: Naming::Anonymous,
        parents: &[Global],
        fold_case: false,
    },
    ScopeDef {
        kind: EcstreamListener,
        keyword: "ecstream_listener",
        naming: Naming::Anonymous,
        parents: &[Global],
        fold_case: false,
    },
    ScopeDef {
        kind: Listen,
        keyword: "listen",
        naming: Naming::Named,
        parents: LISTENERS,
        fold_case: false,
    },
    ScopeDef {
        kind: Peer,
        keyword: "peer",
        naming: Naming::Named,
        parents: LISTENERS_AND_LISTEN,
        fold_case: false,
    },
    ScopeDef {
        kind: Apn,
        keyword: "apn",
        naming: Naming::Anonymous,
        parents: &[Global],
        fold_case: false,
    },
    ScopeDef {
        kind: ApnLogger,
        keyword: "apn_logger",
        naming: Naming::Named,
        parents: &[Global],
        fold_case: false,
    },
    ScopeDef {
        kind: EcLogger,
        keyword: "ec_logger",
        naming: Naming::Named,
        parents: &[Global],
        fold_case: false,
    },
    ScopeDef {
        kind: Httpsrv,
        keyword: "httpsrv",
        naming: Naming::Anonymous,
        parents: &[Global],
        fold_case: false,
    },
    ScopeDef {
        kind: Restinjector,
        keyword: "restinjector",
        naming: Naming::Anonymous,
        parents: &[Global],
        fold_case: false,
    },
    ScopeDef {
        kind: PathwayGroup,
        keyword: "pathway_group",
        naming: Naming::Named,
        parents: &[Global],
        fold_case: false,
    },
    ScopeDef {
        kind: Pathway,
        keyword: "pathway",
        naming: Naming::Named,
        parents: &[Global, PathwayGroup],
        fold_case: false,
    },
];

impl ScopeKind {
    /// Every kind, `Global` first, in a fixed order (the bit order of [`crate::options::Scopes`]).
    pub const ALL: [ScopeKind; 18] = [
        Global,
        BindingGroup,
        Binding,
        Domain,
        Host,
        EsmtpListener,
        HttpListener,
        ControlListener,
        EcstreamListener,
        Listen,
        Peer,
        Apn,
        ApnLogger,
        EcLogger,
        Httpsrv,
        Restinjector,
        PathwayGroup,
        Pathway,
    ];

    /// The scope keyword (`global` for the top level).
    pub fn keyword(self) -> &'static str {
        self.def().map(|d| d.keyword).unwrap_or("global")
    }

    pub fn def(self) -> Option<&'static ScopeDef> {
        SCOPES.iter().find(|d| d.kind == self)
    }

    /// Looks a keyword up, case-insensitively. `global` is not a keyword one can write.
    pub fn from_keyword(word: &str) -> Option<ScopeKind> {
        SCOPES
            .iter()
            .find(|d| d.keyword.eq_ignore_ascii_case(word))
            .map(|d| d.kind)
    }

    pub fn is_named(self) -> bool {
        self.def().is_some_and(|d| d.naming == Naming::Named)
    }

    pub fn may_appear_in(self, parent: ScopeKind) -> bool {
        self.def().is_some_and(|d| d.parents.contains(&parent))
    }

    /// The listener kinds: `esmtp_listener`, `http_listener`, `control_listener`, `ecstream_listener`.
    pub fn is_listener(self) -> bool {
        LISTENERS.contains(&self)
    }

    /// Module scopes (`apn`, `apn_logger`, …), which take `enabled` and `debug_level`.
    pub fn is_module(self) -> bool {
        matches!(self, Apn | ApnLogger | EcLogger | Httpsrv | Restinjector)
    }

    /// Normalises a scope name for comparison: domain and host names are case-insensitive (regex names excepted).
    pub fn normalize_name(self, name: &str) -> String {
        if self.def().is_some_and(|d| d.fold_case) && !is_regex_name(name) {
            name.to_ascii_lowercase()
        } else {
            name.to_string()
        }
    }
}

impl ScopeKind {
    /// The identity of a (normalised) scope name within its container: stanzas whose names have the same key are
    /// the same scope. A `listen` name is keyed by the address it parses to (`":25"`, `"*:25"` and `"0.0.0.0:25"`
    /// are one address, as in Momentum), a `peer` name by its address block (`"127.0.0.1"` is `"127.0.0.1/32"`);
    /// other names, and names that do not parse, are their own key.
    pub fn index_key(self, name: &str) -> String {
        match self {
            Listen => name
                .parse::<ListenAddr>()
                .map_or_else(|_| name.to_string(), |a| a.to_string()),
            Peer => name
                .parse::<Cidr>()
                .map_or_else(|_| name.to_string(), |c| c.network().to_string()),
            _ => name.to_string(),
        }
    }
}

impl fmt::Display for ScopeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.keyword())
    }
}

/// A domain (or host) name written `/regex/`.
pub fn is_regex_name(name: &str) -> bool {
    name.len() >= 2 && name.starts_with('/') && name.ends_with('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_covers_every_kind_but_global() {
        for k in ScopeKind::ALL.iter().skip(1) {
            assert!(k.def().is_some(), "{k:?}");
            assert_eq!(
                ScopeKind::from_keyword(&k.keyword().to_uppercase()),
                Some(*k)
            );
        }
        assert_eq!(SCOPES.len(), ScopeKind::ALL.len() - 1);
    }

    #[test]
    fn containment_follows_momentum() {
        // docs/momentum-compat.md#scope-containment
        assert!(Domain.may_appear_in(Binding));
        assert!(Binding.may_appear_in(BindingGroup));
        assert!(!BindingGroup.may_appear_in(Binding));
        assert!(!Domain.may_appear_in(Domain));
        assert!(Peer.may_appear_in(Listen));
        assert!(!Listen.may_appear_in(Global));
    }

    #[test]
    fn names() {
        assert_eq!(Domain.normalize_name("Example.COM"), "example.com");
        assert_eq!(Domain.normalize_name("/A/"), "/A/");
        assert_eq!(Binding.normalize_name("Bx"), "Bx");
    }
}
