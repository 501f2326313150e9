//! Scope paths and fallback: which scopes are consulted, most specific first, when an option is evaluated at a
//! path (docs/momentum-compat.md#fallback, docs/architecture.md#configuration):
//!
//! - delivery: binding_group::binding::domain > binding::domain > binding_group::domain > binding > binding_group >
//!   global domain > global > default; a binding named without its group is looked up in the group that declares it,
//!   and a path that names neither a binding nor a binding group (`domain D`, `host H`) is the default binding's, as
//!   delivery resolves a notification that names no binding;
//! - host: only the host stanzas (binding_group::binding::host > binding::host > binding_group::host > host); unset
//!   `max_outbound_connections` is -1 there, other options take their default;
//! - listeners: listener::listen::peer > listener::listen > listener::peer > listener > default; a peer given as
//!   an IP address selects, in each of the two containers, the most specific CIDR stanza containing it, and the
//!   narrower of the two is consulted first (the listen stanza's on a tie);
//! - pathways: pathway_group::pathway > pathway > pathway_group > global > default;
//! - modules: the module stanza > default.

use std::fmt;

use crate::{
    diag::quote,
    net::Cidr,
    options::{self, Opt, OptId},
    scopes::{SCOPES, ScopeKind},
    suggest,
    tree::Node,
    value::Value,
};

/// One step of a scope path: a scope kind and, for named kinds, its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Segment {
    pub kind: ScopeKind,
    pub name: Option<String>,
}

/// A path from the global scope down to a scope, e.g. `binding_group g binding b domain example.com`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ScopePath {
    segments: Vec<Segment>,
}

/// Why a scope path or option could not be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("unknown option {}{}{}", quote(.name), invisible(.name, false), did_you_mean(.suggestion))]
    UnknownOption {
        name: String,
        suggestion: Option<&'static str>,
    },
    #[error("option `{option}` is not valid in a {scope} scope; it is valid in: {valid}")]
    NotInScope {
        option: &'static str,
        scope: ScopeKind,
        valid: String,
    },
    #[error("unknown scope {}{}{}", quote(.word), invisible(.word, true), did_you_mean(.suggestion))]
    UnknownScope {
        word: String,
        suggestion: Option<&'static str>,
    },
    #[error("scope `{0}` needs a name")]
    MissingName(ScopeKind),
    #[error("a `{scope}` scope is not valid inside {parent}")]
    Misplaced { scope: ScopeKind, parent: String },
    #[error("no option given: the last word must be an option name")]
    NoOption,
    #[error("no such scope in the configuration: {0}")]
    NotFound(String),
}

/// What is wrong with an option name (`scope`: a scope keyword) that holds an invisible character, if it does.
fn invisible(word: &str, scope: bool) -> String {
    suggest::invisible_note(word, |w| {
        if scope {
            ScopeKind::from_keyword(w).is_some()
        } else {
            options::lookup(w).is_some()
        }
    })
    .unwrap_or_default()
}

fn did_you_mean(s: &Option<&'static str>) -> String {
    s.map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default()
}

impl ScopePath {
    /// The global scope.
    pub fn global() -> Self {
        Self::default()
    }

    /// `binding_group NAME` (global only).
    pub fn binding_group(name: &str) -> Self {
        Self::global().then(ScopeKind::BindingGroup, Some(name))
    }

    /// `binding NAME` (global, or after `binding_group`).
    pub fn binding(name: &str) -> Self {
        Self::global().then(ScopeKind::Binding, Some(name))
    }

    /// `domain NAME`.
    pub fn domain(name: &str) -> Self {
        Self::global().then(ScopeKind::Domain, Some(name))
    }

    /// `host NAME`.
    pub fn host(name: &str) -> Self {
        Self::global().then(ScopeKind::Host, Some(name))
    }

    /// Appends a scope without checking where it may appear (use [`ScopePath::push`] for a checked append);
    /// e.g. `ScopePath::binding_group("g").then(ScopeKind::Binding, Some("b")).then(ScopeKind::Domain, Some("x"))`.
    /// Scopes that cannot be there are ignored by evaluation.
    pub fn then(mut self, kind: ScopeKind, name: Option<&str>) -> Self {
        let name = if kind.is_named() {
            name.map(|n| kind.normalize_name(n))
        } else {
            None
        };
        self.segments.push(Segment { kind, name });
        self
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The kind of the innermost scope (`Global` for the empty path).
    pub fn kind(&self) -> ScopeKind {
        self.segments
            .last()
            .map(|s| s.kind)
            .unwrap_or(ScopeKind::Global)
    }

    /// Appends a scope, checking that it may appear there and has a name if it needs one.
    pub fn push(mut self, kind: ScopeKind, name: Option<&str>) -> Result<Self, EvalError> {
        let parent = self.kind();
        if !kind.may_appear_in(parent) {
            let parent = if parent == ScopeKind::Global {
                "the global scope".to_string()
            } else {
                format!("`{parent}`")
            };
            return Err(EvalError::Misplaced {
                scope: kind,
                parent,
            });
        }
        let name = match (kind.is_named(), name) {
            (true, None) => return Err(EvalError::MissingName(kind)),
            (true, Some(n)) => Some(kind.normalize_name(n)),
            (false, _) => None,
        };
        self.segments.push(Segment { kind, name });
        Ok(self)
    }

    /// Reads Momentum's `config eval` word order: `[SCOPE [NAME]]… OPTION`. Returns the path and the option word.
    pub fn parse_words<S: AsRef<str>>(words: &[S]) -> Result<(ScopePath, String), EvalError> {
        let (option, scopes) = words.split_last().ok_or(EvalError::NoOption)?;
        let last = option.as_ref();
        let is_option = options::lookup(last).is_some();
        match Self::parse_scope_words(scopes) {
            // `esmtp_listener` alone: the words name a scope and no option
            Ok(_) if !is_option && ScopeKind::from_keyword(last).is_some() => {
                Self::parse_scope_words(words)?;
                Err(EvalError::NoOption)
            }
            Ok(path) => Ok((path, last.to_string())),
            // `domain x` alone: the last word is the scope's name, not an option
            Err(_) if !is_option && Self::parse_scope_words(words).is_ok() => {
                Err(EvalError::NoOption)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads `[SCOPE [NAME]]…` (no option at the end), as `config show` takes it.
    pub fn parse_scope_words<S: AsRef<str>>(words: &[S]) -> Result<ScopePath, EvalError> {
        let mut path = ScopePath::global();
        let mut i = 0;
        while i < words.len() {
            let w = words[i].as_ref();
            let kind = ScopeKind::from_keyword(w).ok_or_else(|| EvalError::UnknownScope {
                word: w.to_string(),
                suggestion: suggest::closest(w, SCOPES.iter().map(|d| d.keyword)),
            })?;
            i += 1;
            let name = if kind.is_named() {
                let n = words.get(i).ok_or(EvalError::MissingName(kind))?.as_ref();
                i += 1;
                // Accept a name still wrapped in the quotes of the configuration file (`listen '":25"'`).
                Some(
                    n.strip_prefix('"')
                        .and_then(|n| n.strip_suffix('"'))
                        .unwrap_or(n),
                )
            } else {
                None
            };
            path = path.push(kind, name)?;
        }
        Ok(path)
    }

    fn name_of(&self, kind: ScopeKind) -> Option<&str> {
        self.segments
            .iter()
            .find(|s| s.kind == kind)
            .and_then(|s| s.name.as_deref())
    }

    fn has(&self, kind: ScopeKind) -> bool {
        self.segments.iter().any(|s| s.kind == kind)
    }
}

/// Reads `[SCOPE [NAME]]…` separated by whitespace, e.g. `"binding_group g binding b domain example.com"`.
impl std::str::FromStr for ScopePath {
    type Err = EvalError;

    fn from_str(s: &str) -> Result<Self, EvalError> {
        let words: Vec<&str> = s.split_whitespace().collect();
        Self::parse_scope_words(&words)
    }
}

impl fmt::Display for ScopePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.segments.is_empty() {
            return f.write_str("global");
        }
        for (i, s) in self.segments.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(s.kind.keyword())?;
            if let Some(n) = &s.name {
                write!(f, " {n}")?;
            }
        }
        Ok(())
    }
}

/// The scopes consulted for `path`, most specific first, and whether the path ends in a host stanza.
pub(crate) struct Candidates<'a> {
    pub nodes: Vec<&'a Node>,
    pub host: bool,
}

/// The group that declares binding `name`, if any.
pub(crate) fn group_of<'a>(root: &'a Node, binding: &str) -> Option<&'a str> {
    root.children_of(ScopeKind::BindingGroup)
        .find(|g| g.child(ScopeKind::Binding, Some(binding)).is_some())
        .and_then(|g| g.name.as_deref())
}

/// The binding of notifications that name none (docs/configuration.md#bindings-in-delivery).
pub const DEFAULT_BINDING: &str = "default";

/// The binding a delivery lookup for (`group`, `binding`) resolves in: `binding`; when neither a binding nor a
/// binding group is given, the default binding, as delivery resolves a notification that names no binding, so that
/// a `binding "default"` stanza (and its group) applies to it. A group given alone stays a group without binding.
pub(crate) fn delivery_binding<'a>(
    group: Option<&str>,
    binding: Option<&'a str>,
) -> Option<&'a str> {
    match (group, binding) {
        (None, None) => Some(DEFAULT_BINDING),
        (_, b) => b,
    }
}

/// Delivery candidates for (group, binding, domain), in precedence order; neither group nor binding is the default
/// binding ([`delivery_binding`]).
pub(crate) fn delivery_nodes<'a>(
    root: &'a Node,
    group: Option<&str>,
    binding: Option<&str>,
    domain: Option<&str>,
) -> Vec<&'a Node> {
    let binding = delivery_binding(group, binding);
    let group = group.or_else(|| binding.and_then(|b| group_of(root, b)));
    let g = group.and_then(|g| root.child(ScopeKind::BindingGroup, Some(g)));
    let gb = g
        .zip(binding)
        .and_then(|(g, b)| g.child(ScopeKind::Binding, Some(b)));
    let b = binding.and_then(|b| root.child(ScopeKind::Binding, Some(b)));
    // In each container the exact domain stanza comes first, then every matching regex stanza in declaration order
    // (docs/momentum-compat.md#lexical-rules), so an option unset in the exact stanza is looked up in the regex ones
    // before any outer scope.
    let mut nodes = Vec::with_capacity(8);
    let dom = |n: Option<&'a Node>, nodes: &mut Vec<&'a Node>| {
        if let (Some(n), Some(d)) = (n, domain) {
            nodes.extend(n.matching_named(ScopeKind::Domain, d));
        }
    };
    dom(gb, &mut nodes);
    dom(b, &mut nodes);
    dom(g, &mut nodes);
    nodes.extend([gb, b, g].into_iter().flatten());
    dom(Some(root), &mut nodes);
    nodes.push(root);
    nodes
}

pub(crate) fn candidates<'a>(root: &'a Node, path: &ScopePath) -> Candidates<'a> {
    let first = path
        .segments
        .first()
        .map(|s| s.kind)
        .unwrap_or(ScopeKind::Global);
    match first {
        ScopeKind::Global => Candidates {
            nodes: vec![root],
            host: false,
        },
        ScopeKind::BindingGroup | ScopeKind::Binding | ScopeKind::Domain | ScopeKind::Host => {
            let group = path.name_of(ScopeKind::BindingGroup);
            let binding = path.name_of(ScopeKind::Binding);
            if path.has(ScopeKind::Host) {
                let host = path.name_of(ScopeKind::Host).unwrap_or_default();
                // `host H` alone is the host as the default binding reaches it, as for a domain.
                let binding = delivery_binding(group, binding);
                let group = group.or_else(|| binding.and_then(|b| group_of(root, b)));
                let g = group.and_then(|g| root.child(ScopeKind::BindingGroup, Some(g)));
                let gb = g
                    .zip(binding)
                    .and_then(|(g, b)| g.child(ScopeKind::Binding, Some(b)));
                let b = binding.and_then(|b| root.child(ScopeKind::Binding, Some(b)));
                let nodes = [gb, b, g, Some(root)]
                    .into_iter()
                    .flatten()
                    .flat_map(|n| n.matching_named(ScopeKind::Host, host))
                    .collect();
                return Candidates { nodes, host: true };
            }
            let domain = path.name_of(ScopeKind::Domain);
            Candidates {
                nodes: delivery_nodes(root, group, binding, domain),
                host: false,
            }
        }
        listener if listener.is_listener() => {
            let l = root.child(listener, None);
            let a = path.name_of(ScopeKind::Listen);
            let la = l
                .zip(a)
                .and_then(|(l, a)| l.child(ScopeKind::Listen, Some(a)));
            let p = path.name_of(ScopeKind::Peer);
            let lap = la.zip(p).and_then(|(la, p)| la.find_peer(p));
            let lp = l.zip(p).and_then(|(l, p)| l.find_peer(p));
            // As the listeners apply them (settings::listeners): the most specific peer stanza containing the
            // address (the listen stanza's own on a tie), then the rest of the chain (listener_nodes).
            let peer = match (lap, lp) {
                (Some(a), Some(b)) if peer_prefix(b) > peer_prefix(a) => Some(b),
                (Some(a), _) => Some(a),
                (None, b) => b,
            };
            Candidates {
                nodes: l.map(|l| listener_nodes(l, la, peer)).unwrap_or_default(),
                host: false,
            }
        }
        ScopeKind::PathwayGroup | ScopeKind::Pathway => {
            // Pathway_Group::Pathway > Pathway > Pathway_Group > global (docs/momentum-compat.md#fallback)
            let g = path
                .name_of(ScopeKind::PathwayGroup)
                .and_then(|g| root.child(ScopeKind::PathwayGroup, Some(g)));
            let p = path.name_of(ScopeKind::Pathway);
            let gp = g
                .zip(p)
                .and_then(|(g, p)| g.child(ScopeKind::Pathway, Some(p)));
            let top = p.and_then(|p| root.child(ScopeKind::Pathway, Some(p)));
            Candidates {
                nodes: [gp, top, g, Some(root)].into_iter().flatten().collect(),
                host: false,
            }
        }
        module => {
            let m = root.child(module, path.name_of(module));
            Candidates {
                nodes: m.into_iter().collect(),
                host: false,
            }
        }
    }
}

/// Looks an option name up for evaluation at a scope of kind `scope`.
pub(crate) fn resolve_option(name: &str, scope: ScopeKind) -> Result<OptId, EvalError> {
    let id = options::lookup(name).ok_or_else(|| EvalError::UnknownOption {
        name: name.to_string(),
        suggestion: options::suggest_option(name),
    })?;
    in_scope(id, scope)
}

/// `id` if the option may be set at a scope of kind `scope`.
pub(crate) fn in_scope(id: OptId, scope: ScopeKind) -> Result<OptId, EvalError> {
    let def = id.def();
    if !def.scopes.contains(scope) {
        return Err(EvalError::NotInScope {
            option: def.name,
            scope,
            valid: def.scopes.describe(),
        });
    }
    Ok(id)
}

/// The first value of `id` along `c`, else the default (or -1 for `max_outbound_connections` in a host stanza).
pub(crate) fn first_value<'a>(c: &Candidates<'a>, id: OptId) -> &'a Value {
    static UNLIMITED: Value = Value::Int(-1);
    for n in &c.nodes {
        if let Some(s) = n.get(id) {
            return &s.value;
        }
    }
    if c.host && id == Opt::MaxOutboundConnections.id() {
        return &UNLIMITED;
    }
    options::default_value(id)
}

/// The scopes a listener consults, most specific first, for a client whose most specific matching `peer` stanza
/// is `peer` (declared in the listen stanza `la` or in the listener `l`; `None`: no peer matches): that peer, then
/// listener::listen::peer > listener::listen > listener::peer > listener, where the peer of each container is its
/// most specific one containing the chosen peer's block (so every stanza that contains the client is consulted).
/// `config eval` and the listeners' settings ([`crate::settings`]) both take their scopes from here.
pub(crate) fn listener_nodes<'a>(
    l: &'a Node,
    la: Option<&'a Node>,
    peer: Option<&'a Node>,
) -> Vec<&'a Node> {
    let Some(peer) = peer else {
        return la.into_iter().chain([l]).collect();
    };
    let in_listen = la.is_some_and(|la| la.children().iter().any(|c| std::ptr::eq(c, peer)));
    let block = peer_cidr(peer);
    let covering = |container: &'a Node| block.and_then(|b| covering_peer(container, &b));
    let (lap, lp) = if in_listen {
        (Some(peer), covering(l))
    } else {
        (la.and_then(covering), Some(peer))
    };
    let mut nodes = vec![peer];
    for n in [lap, la, lp, Some(l)].into_iter().flatten() {
        if !nodes.iter().any(|m| std::ptr::eq(*m, n)) {
            nodes.push(n);
        }
    }
    nodes
}

/// The most specific `peer` child of `container` whose block holds all of `block`.
fn covering_peer<'a>(container: &'a Node, block: &Cidr) -> Option<&'a Node> {
    container
        .children_of(ScopeKind::Peer)
        .filter_map(|c| Some((c, peer_cidr(c)?)))
        .filter(|(_, c)| covers(c, block))
        .max_by_key(|(_, c)| c.specificity())
        .map(|(c, _)| c)
}

/// Whether block `outer` holds every address of `inner` (on the scale of [`Cidr::specificity`]; a wider IPv6
/// block such as `::/0` holds no IPv4 block, as it holds no IPv4 client).
pub(crate) fn covers(outer: &Cidr, inner: &Cidr) -> bool {
    outer.specificity() <= inner.specificity() && outer.contains(inner.network().addr)
}

/// A `peer` stanza's block, if its name is one.
fn peer_cidr(peer: &Node) -> Option<Cidr> {
    peer.name.as_deref().and_then(|n| n.parse::<Cidr>().ok())
}

/// How narrow a `peer` stanza's CIDR is ([`crate::net::Cidr::specificity`]; 0 when its name is not one).
fn peer_prefix(peer: &Node) -> u8 {
    peer_cidr(peer).map_or(0, |c| c.specificity())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_parse_and_display() {
        let (p, opt) = ScopePath::parse_words(&[
            "Binding_Group",
            "g",
            "binding",
            "b",
            "domain",
            "Ex.COM",
            "tls",
        ])
        .unwrap();
        assert_eq!(opt, "tls");
        assert_eq!(p.to_string(), "binding_group g binding b domain ex.com");
        assert_eq!(p.kind(), ScopeKind::Domain);
        assert_eq!(ScopePath::global().to_string(), "global");
        let p =
            ScopePath::parse_scope_words(&["esmtp_listener", "listen", ":25", "peer", "10.0.0.1"])
                .unwrap();
        assert_eq!(p.segments().len(), 3);
        assert!(matches!(
            ScopePath::parse_scope_words(&["listen", ":25"]),
            Err(EvalError::Misplaced {
                scope: ScopeKind::Listen,
                ..
            })
        ));
        assert!(matches!(
            ScopePath::parse_scope_words(&["domain"]),
            Err(EvalError::MissingName(ScopeKind::Domain))
        ));
        assert!(matches!(
            ScopePath::parse_words::<&str>(&[]),
            Err(EvalError::NoOption)
        ));
        assert!(matches!(
            ScopePath::parse_words(&["esmtp_listener"]),
            Err(EvalError::NoOption)
        ));
        assert!(matches!(
            ScopePath::parse_words(&["binding_group", "g", "domain", "x.com"]),
            Err(EvalError::NoOption)
        ));
        assert!(matches!(
            ScopePath::parse_words(&["domain"]),
            Err(EvalError::MissingName(ScopeKind::Domain))
        ));
    }

    /// A path that names neither a binding nor a binding group is the default binding's, as delivery resolves a
    /// notification that names no binding: a `binding "default"` stanza, its domain stanzas and its group apply to
    /// `domain D` and `host H`, to [`crate::Config::domain_settings`] without a binding, and to where
    /// [`crate::Config::eval_scopes`] says a value came from. A group named alone stays that group.
    #[test]
    fn a_path_without_a_binding_is_the_default_binding_s() {
        let c = crate::Config::parse_str(
            "t.conf",
            r#"
max_retries = 5
apn_topic = "com.example.a"
domain "ok.example" { retry_interval = 60 }
binding_group "gdef" {
  idle_timeout = 7
  binding "default" {
    max_retries = 0
    apn_topic = "com.example.b"
    domain "ok.example" { retry_interval = 30 }
    host "h" { max_outbound_connections = 2 }
  }
}
"#,
        )
        .unwrap();
        let eval = |words: &[&str]| c.eval_words(words).unwrap().1;
        let retries = |n| Value::MaxRetries(crate::value::MaxRetries::Count(n));
        assert_eq!(eval(&["domain", "ok.example", "max_retries"]), retries(0));
        assert_eq!(
            eval(&["domain", "ok.example", "apn_topic"]),
            Value::Str("com.example.b".into())
        );
        assert_eq!(
            eval(&["domain", "ok.example", "retry_interval"]),
            Value::Int(30)
        );
        assert_eq!(
            eval(&["domain", "ok.example", "idle_timeout"]),
            Value::Int(7)
        );
        assert_eq!(
            eval(&["domain", "other.example", "max_retries"]),
            retries(0)
        );
        assert_eq!(
            eval(&["domain", "ok.example", "max_retries"]),
            eval(&["binding", "default", "domain", "ok.example", "max_retries"])
        );
        assert_eq!(
            eval(&["host", "h", "max_outbound_connections"]),
            Value::Int(2)
        );
        // The group alone, and the global scope, are not the binding.
        assert_eq!(
            eval(&[
                "binding_group",
                "gdef",
                "domain",
                "ok.example",
                "max_retries"
            ]),
            retries(5)
        );
        assert_eq!(eval(&["max_retries"]), retries(5));

        let d = c.domain_settings(None, None, "ok.example");
        assert_eq!(d, c.domain_settings(None, Some("default"), "ok.example"));
        assert_eq!(d.apn_topic.as_deref(), Some("com.example.b"));
        assert_eq!(d.binding_group.as_deref(), Some("gdef"));
        assert_eq!(d.binding.as_deref(), Some("default"));

        let scopes: Vec<String> = c
            .eval_scopes(&ScopePath::domain("ok.example"))
            .iter()
            .map(|(p, _)| p.to_string())
            .collect();
        assert_eq!(
            scopes,
            [
                "binding_group gdef binding default domain ok.example",
                "binding_group gdef binding default",
                "binding_group gdef",
                "domain ok.example",
                "global",
            ]
        );
    }

    #[test]
    fn option_must_be_valid_in_the_innermost_scope() {
        assert!(resolve_option("routes", ScopeKind::Domain).is_ok());
        assert!(matches!(
            resolve_option("routes", ScopeKind::Binding),
            Err(EvalError::NotInScope {
                option: "routes",
                ..
            })
        ));
        let e = resolve_option("rotues", ScopeKind::Domain).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown option `rotues`; did you mean `routes`?"
        );
        // An invisible character is named and escaped; the same visible word is never suggested.
        let e = resolve_option("\u{feff}routes", ScopeKind::Domain).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown option `\\u{feff}routes`; it contains the invisible character U+FEFF (a byte-order mark, or \
             zero-width no-break space), which is not part of any name: delete it to write `routes`"
        );
        let e = ScopePath::parse_scope_words(&["dom\u{200b}ain", "x"]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("unknown scope `dom\\u{200b}ain`; it contains"),
            "{e}"
        );
        assert!(!e.to_string().contains("did you mean"), "{e}");
    }
}
