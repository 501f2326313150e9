//! The scope tree: the configuration after includes are expanded and repeated stanzas merged. Each node is one
//! scope (global, a domain, a listener, …) holding its typed settings and its child scopes, indexed by name so that
//! merging and lookups stay linear in the size of the configuration. Regex-named domains and hosts are kept in
//! declaration order and tried only after exact names (docs/momentum-compat.md#lexical-rules).

use std::{collections::HashMap, net::IpAddr};

use regex::Regex;

use crate::{
    ast::RawValue,
    diag::Location,
    lexer::render_value,
    net::Cidr,
    options::{FnvBuild, OptId},
    scopes::{ScopeKind, is_regex_name},
    value::Value,
};

/// One option as set in one scope.
#[derive(Debug, Clone)]
pub struct Setting {
    pub id: OptId,
    /// The typed value.
    pub value: Value,
    /// The value as written (kept so that `config show` writes what the file said).
    pub raw: RawValue,
    /// Where it was set (the last assignment wins when an option is set twice).
    pub at: Location,
}

/// Settings compare by option and typed value; where they were written does not matter.
impl PartialEq for Setting {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.value == other.value
    }
}

/// One scope with its settings and child scopes.
#[derive(Debug, Clone)]
pub struct Node {
    pub kind: ScopeKind,
    /// The scope's name, normalised (domain and host names lower-cased); `None` for anonymous scopes and global.
    pub name: Option<String>,
    settings: Vec<Setting>,
    children: Vec<Node>,
    index: HashMap<(ScopeKind, String), usize, FnvBuild>,
    regexes: Vec<(ScopeKind, Regex, usize)>,
    /// Where the scope was first opened.
    pub at: Option<Location>,
}

/// Nodes compare by kind, name, settings and children (in order); positions do not matter.
impl PartialEq for Node {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
            && self.name == other.name
            && self.settings == other.settings
            && self.children == other.children
    }
}

impl Node {
    pub fn new(kind: ScopeKind, name: Option<String>, at: Option<Location>) -> Self {
        Node {
            kind,
            name,
            settings: Vec::new(),
            children: Vec::new(),
            index: HashMap::default(),
            regexes: Vec::new(),
            at,
        }
    }

    /// The global scope.
    pub fn root() -> Self {
        Node::new(ScopeKind::Global, None, None)
    }

    pub fn settings(&self) -> &[Setting] {
        &self.settings
    }

    pub fn children(&self) -> &[Node] {
        &self.children
    }

    /// The value of an option set in this very scope (no fallback).
    pub fn get(&self, id: OptId) -> Option<&Setting> {
        self.settings.iter().find(|s| s.id == id)
    }

    /// Sets an option; a later assignment replaces an earlier one in place.
    pub fn set(&mut self, setting: Setting) {
        match self.settings.iter_mut().find(|s| s.id == setting.id) {
            Some(s) => *s = setting,
            None => self.settings.push(setting),
        }
    }

    /// The child scope `kind name`, created if absent (repeated stanzas merge into one node, keyed by
    /// [`ScopeKind::index_key`]; the node keeps the name as first written). `regex` is the compiled pattern of a
    /// `/…/` domain or host name (compiled case-insensitively: it is matched against the lower-cased name).
    pub fn child_mut(
        &mut self,
        kind: ScopeKind,
        name: Option<String>,
        regex: Option<Regex>,
        at: Location,
    ) -> &mut Node {
        let key = (kind, kind.index_key(name.as_deref().unwrap_or_default()));
        let i = match self.index.get(&key) {
            Some(&i) => i,
            None => {
                let i = self.children.len();
                self.children.push(Node::new(kind, name, Some(at)));
                self.index.insert(key, i);
                if let Some(re) = regex {
                    self.regexes.push((kind, re, i));
                }
                i
            }
        };
        &mut self.children[i]
    }

    /// The child scope with exactly this kind and (normalised) name; a `listen` or `peer` name matches the stanza
    /// of the same address however either is written ([`ScopeKind::index_key`]).
    pub fn child(&self, kind: ScopeKind, name: Option<&str>) -> Option<&Node> {
        let key = (kind, kind.index_key(name.unwrap_or_default()));
        self.index.get(&key).map(|&i| &self.children[i])
    }

    /// The scope that applies first to domain (or host) `name` in this container: an exact stanza, else the first
    /// regex stanza, in declaration order, that matches.
    pub fn find_named(&self, kind: ScopeKind, name: &str) -> Option<&Node> {
        self.matching_named(kind, name).next()
    }

    /// Every scope of this container that applies to domain (or host) `name`, in the order options are looked up
    /// in them: the exact stanza first, then each matching regex stanza in declaration order. An option unset in
    /// the exact stanza is taken from the first matching regex stanza that sets it, before any outer scope.
    pub fn matching_named<'a>(
        &'a self,
        kind: ScopeKind,
        name: &str,
    ) -> impl Iterator<Item = &'a Node> + 'a {
        let name = kind.normalize_name(name);
        let exact = self.child(kind, Some(&name));
        // A regex-looking name is looked up only as written, never matched against other regexes.
        let regexes = if is_regex_name(&name) {
            &self.regexes[..0]
        } else {
            &self.regexes[..]
        };
        exact.into_iter().chain(
            regexes
                .iter()
                .filter(move |(k, re, _)| *k == kind && re.is_match(&name))
                .map(|(_, _, i)| &self.children[*i]),
        )
    }

    /// The most specific `peer` child whose CIDR contains `ip`, or the peer named exactly `name`.
    pub fn find_peer(&self, name: &str) -> Option<&Node> {
        if let Some(n) = self.child(ScopeKind::Peer, Some(name)) {
            return Some(n);
        }
        let ip: IpAddr = name.parse().ok()?;
        self.children
            .iter()
            .filter(|c| c.kind == ScopeKind::Peer)
            .filter_map(|c| Some((c, c.name.as_deref()?.parse::<Cidr>().ok()?)))
            .filter(|(_, cidr)| cidr.contains(ip))
            .max_by_key(|(_, cidr)| cidr.specificity())
            .map(|(c, _)| c)
    }

    /// Children of one kind, in declaration order.
    pub fn children_of(&self, kind: ScopeKind) -> impl Iterator<Item = &Node> {
        self.children.iter().filter(move |c| c.kind == kind)
    }

    /// Writes the scope's contents (settings, then child scopes) in the configuration language.
    pub fn render_body(&self, indent: usize, out: &mut String) {
        self.render_body_with(indent, out, false);
    }

    /// [`Node::render_body`]; with `mask`, the values of secret options are written as
    /// [`crate::secrets::MASK`].
    pub fn render_body_with(&self, indent: usize, out: &mut String, mask: bool) {
        let pad = "  ".repeat(indent);
        for s in &self.settings {
            out.push_str(&pad);
            out.push_str(s.id.def().name);
            out.push_str(" = ");
            if mask && crate::secrets::is_secret(s.id) {
                render_masked(&s.raw, out);
            } else if let (true, RawValue::Scalar(v)) = (
                mask && crate::secrets::is_url_option_name(s.id.def().name),
                &s.raw,
            ) && let Some(masked) = crate::secrets::mask_url_credentials(&v.text)
            {
                out.push_str(&render_value(&masked, true));
            } else {
                render_raw(&s.raw, out);
            }
            out.push('\n');
        }
        for c in &self.children {
            c.render_with(indent, out, mask);
        }
    }

    /// Writes the scope itself, header and body, in the configuration language.
    pub fn render(&self, indent: usize, out: &mut String) {
        self.render_with(indent, out, false);
    }

    /// [`Node::render`]; with `mask`, the values of secret options are masked.
    pub fn render_with(&self, indent: usize, out: &mut String, mask: bool) {
        if self.kind == ScopeKind::Global {
            self.render_body_with(indent, out, mask);
            return;
        }
        let pad = "  ".repeat(indent);
        out.push_str(&pad);
        out.push_str(self.kind.keyword());
        if let Some(name) = &self.name {
            out.push(' ');
            out.push_str(&render_value(name, true));
        }
        out.push_str(" {\n");
        self.render_body_with(indent + 1, out, mask);
        out.push_str(&pad);
        out.push_str("}\n");
    }
}

/// A secret value: its shape (a list keeps its length), never its text.
fn render_masked(raw: &RawValue, out: &mut String) {
    use crate::secrets::MASK;
    match raw {
        RawValue::Scalar(_) => out.push_str(MASK),
        RawValue::List(items) => {
            out.push('(');
            for _ in items {
                out.push(' ');
                out.push_str(MASK);
            }
            out.push_str(" )");
        }
        RawValue::Pairs(pairs) => {
            out.push('[');
            for (k, _) in pairs {
                out.push(' ');
                out.push_str(&render_value(&k.text, k.quoted));
                out.push_str(" = ");
                out.push_str(MASK);
            }
            out.push_str(" ]");
        }
    }
}

fn render_raw(raw: &RawValue, out: &mut String) {
    match raw {
        RawValue::Scalar(s) => out.push_str(&render_value(&s.text, s.quoted)),
        RawValue::List(items) => {
            out.push('(');
            for s in items {
                out.push(' ');
                out.push_str(&render_value(&s.text, s.quoted));
            }
            out.push_str(" )");
        }
        RawValue::Pairs(pairs) => {
            out.push('[');
            for (k, v) in pairs {
                out.push(' ');
                out.push_str(&render_value(&k.text, k.quoted));
                out.push_str(" = ");
                out.push_str(&render_value(&v.text, v.quoted));
            }
            out.push_str(" ]");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn at() -> Location {
        Location {
            file: Arc::from("t"),
            line: 1,
            col: 1,
        }
    }

    #[test]
    fn repeated_children_merge_and_lookups() {
        let mut root = Node::root();
        root.child_mut(ScopeKind::Domain, Some("a.com".into()), None, at());
        root.child_mut(ScopeKind::Domain, Some("a.com".into()), None, at());
        let re = Regex::new("[.]com$").unwrap();
        root.child_mut(ScopeKind::Domain, Some("/[.]com$/".into()), Some(re), at());
        let re = Regex::new("^b").unwrap();
        root.child_mut(ScopeKind::Domain, Some("/^b/".into()), Some(re), at());
        assert_eq!(root.children().len(), 3);
        assert_eq!(
            root.find_named(ScopeKind::Domain, "A.com")
                .and_then(|n| n.name.as_deref()),
            Some("a.com")
        );
        // regexes in declaration order: b.com matches both, the first wins
        assert_eq!(
            root.find_named(ScopeKind::Domain, "b.com")
                .and_then(|n| n.name.as_deref()),
            Some("/[.]com$/")
        );
        assert_eq!(
            root.find_named(ScopeKind::Domain, "b.org")
                .and_then(|n| n.name.as_deref()),
            Some("/^b/")
        );
        assert!(root.find_named(ScopeKind::Domain, "c.org").is_none());
        assert!(root.find_named(ScopeKind::Host, "a.com").is_none());
    }

    #[test]
    fn most_specific_peer() {
        let mut l = Node::new(ScopeKind::Listen, Some(":25".into()), None);
        l.child_mut(ScopeKind::Peer, Some("10.0.0.0/8".into()), None, at());
        l.child_mut(ScopeKind::Peer, Some("10.1.0.0/16".into()), None, at());
        let name = |ip: &str| l.find_peer(ip).and_then(|n| n.name.clone());
        assert_eq!(name("10.1.2.3").as_deref(), Some("10.1.0.0/16"));
        assert_eq!(name("10.2.2.3").as_deref(), Some("10.0.0.0/8"));
        assert_eq!(name("10.0.0.0/8").as_deref(), Some("10.0.0.0/8"));
        assert_eq!(name("11.0.0.1"), None);
        // A block of mapped IPv6 addresses is as wide as the IPv4 block it stands for: `::ffff:10.0.0.0/104` is a
        // /8, wider than 10.1.0.0/16, whichever is declared first and whichever form the address takes.
        l.child_mut(
            ScopeKind::Peer,
            Some("::ffff:10.0.0.0/104".into()),
            None,
            at(),
        );
        let name = |ip: &str| l.find_peer(ip).and_then(|n| n.name.clone());
        assert_eq!(name("10.1.2.3").as_deref(), Some("10.1.0.0/16"));
        assert_eq!(name("::ffff:10.1.2.3").as_deref(), Some("10.1.0.0/16"));
        let mut m = Node::new(ScopeKind::Listen, Some(":25".into()), None);
        m.child_mut(ScopeKind::Peer, Some("10.1.0.0/16".into()), None, at());
        m.child_mut(
            ScopeKind::Peer,
            Some("::ffff:10.0.0.0/104".into()),
            None,
            at(),
        );
        assert_eq!(
            m.find_peer("10.1.2.3")
                .and_then(|n| n.name.clone())
                .as_deref(),
            Some("10.1.0.0/16")
        );
    }
}
