//! herald-conf: Momentum's `ecelerity.conf` configuration language, as herald reads it.
//!
//! Owns the lexer ([`lexer`]), the parser ([`parser`], syntax tree in [`ast`]), `include` handling ([`loader`]), the
//! scope tree ([`tree`]) with Momentum's fallback rules ([`eval`]), the typed option table ([`options`]), typed
//! views for the rest of herald ([`settings`]) and diagnostics ([`diag`]). Every diagnostic reads
//! `FILE:LINE:COL: error: …` (or `warning:`), and one load reports every error, not just the first.
//!
//! # Using it
//!
//! ```
//! use herald_conf::{Config, ScopePath, Value};
//!
//! let config = Config::parse_str("inline.conf", r#"
//!     max_outbound_connections = 30
//!     binding_group "group1" {
//!       max_outbound_connections = 5
//!       binding "example" { max_outbound_connections = 15  domain "example.com" { } }
//!     }
//!     domain "apn.example" { delivery_method = apn  routes = ( "https://api.push.apple.com" ) }
//! "#).expect("valid configuration");
//!
//! // Evaluate one option along a scope path, with fallback (what `herald config eval` prints).
//! let path = ScopePath::parse_scope_words(&["binding_group", "group1", "binding", "example", "domain", "example.com"])?;
//! assert_eq!(config.eval(&path, "max_outbound_connections")?, Value::Int(15));
//!
//! // Or get every delivery option of a (binding, domain) at once, resolved and cached.
//! let d = config.domain_settings(None, None, "apn.example");
//! assert_eq!(d.max_outbound_connections, 30);
//! assert_eq!(d.routes[0].port, 443);
//! # Ok::<(), herald_conf::EvalError>(())
//! ```
//!
//! - [`Config::load`] / [`Config::parse_str`]: read and validate; `Err(Diagnostics)` holds every error (and the
//!   warnings), `Ok` keeps the warnings in [`Config::warnings`].
//! - [`Config::eval`] (by path and option name) and [`Config::eval_words`] (Momentum's `config eval` word order).
//! - Typed views: [`Config::domain_settings`] (cached per (binding group, binding, domain): resolve once, then a
//!   hash lookup), [`Config::domains`], [`Config::bindings`], [`Config::listeners`], [`Config::apn_module`],
//!   [`Config::apn_loggers`], [`Config::ec_loggers`], [`Config::spool`].
//! - [`Config::render`] / [`Config::show`]: the tree written back in the language (includes expanded, repeated
//!   stanzas merged); the output parses to the same tree.
//!
//! # Language decisions
//!
//! Where Momentum's documentation is silent (docs/momentum-compat.md#gaps), herald decides: single-quoted strings are
//! accepted and taken literally; in double-quoted strings `\"` and `\\` are escapes and any other backslash is kept
//! as written (so regexes need no doubling); a string ends on its line; `yes`/`no` are booleans too; file modes are
//! always octal; an option set twice in one scope keeps the last value; domain and host names are case-insensitive.

pub mod ast;
pub mod diag;
pub mod eval;
pub mod lexer;
mod lint;
mod loader;
pub mod net;
pub mod options;
pub mod parser;
pub mod scopes;
pub mod secrets;
pub mod settings;
mod suggest;
pub mod tree;
pub mod value;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

pub use diag::{Diagnostic, Diagnostics, Location, Severity};
pub use eval::{EvalError, ScopePath};
pub use net::{Cidr, ListenAddr};
pub use options::{OPTIONS, Opt, OptId, OptionDef};
pub use scopes::ScopeKind;
pub use settings::{
    Acl, ApnBinaryFormat, ApnLoggerSettings, DeliveryMethod, DomainSettings, EcLoggerSettings,
    HttpServices, ListenerKind, ListenerSettings, LogFormat, McmtReception, ModuleSettings,
    PeerSettings, RetryPolicy, SpoolBackend, SpoolSettings, TlsMode, TlsVerify,
};
pub use tree::Node;
pub use value::{Kind, MaxRetries, Route, RouteProtocol, Value};

/// Resolved domain settings kept at most this many; past it they are resolved on each call.
const CACHE_LIMIT: usize = 100_000;

/// A loaded, validated configuration.
#[derive(Debug)]
pub struct Config {
    root: Node,
    warnings: Vec<Diagnostic>,
    cache: RwLock<HashMap<String, Arc<DomainSettings>>>,
}

impl Config {
    /// Reads and validates the file at `path`, following its includes.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, Diagnostics> {
        let mut loader = loader::Loader::new();
        let mut root = Node::root();
        loader.load_path(path.as_ref(), &mut root);
        Self::finish(loader.diags, root)
    }

    /// Reads configuration text. `name` is used in diagnostics; relative includes resolve against the directory
    /// part of `name`, then the working directory.
    pub fn parse_str(name: &str, text: &str) -> Result<Config, Diagnostics> {
        Self::parse_bytes(name, text.as_bytes())
    }

    /// Like [`Config::parse_str`] for bytes that may not be UTF-8 (reported as an error, never a panic).
    pub fn parse_bytes(name: &str, bytes: &[u8]) -> Result<Config, Diagnostics> {
        let mut loader = loader::Loader::new();
        let mut root = Node::root();
        let dir = match Path::new(name).parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        loader.load_bytes(Arc::from(name), dir, bytes, &mut root);
        Self::finish(loader.diags, root)
    }

    fn finish(mut diags: Diagnostics, root: Node) -> Result<Config, Diagnostics> {
        // The whole-configuration checks that refuse a file (an empty `control_password`, see `lint`) run on what
        // loaded even when the load found errors, so that one run reports every error; their warnings only run on
        // a file that loaded without errors (on a partial tree they could name what is only missing for an error).
        let loaded_clean = !diags.has_errors();
        lint::run(&root, &mut diags, loaded_clean);
        if diags.has_errors() {
            return Err(diags);
        }
        Ok(Config {
            root,
            warnings: diags.into_warnings(),
            cache: RwLock::new(HashMap::new()),
        })
    }

    /// Warnings found while loading (options without effect in herald, verification turned off, …).
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    /// The scope tree (global scope at the root).
    pub fn tree(&self) -> &Node {
        &self.root
    }

    /// Evaluates `option` at `path` with Momentum's fallback; the default when nothing sets it. Scopes on the path
    /// that the configuration does not declare are simply skipped.
    pub fn eval(&self, path: &ScopePath, option: &str) -> Result<Value, EvalError> {
        let id = eval::resolve_option(option, path.kind())?;
        Ok(self.eval_id(path, id).clone())
    }

    /// [`Config::eval`] for a typed option id: the same fallback and scope check, without the name lookup or a
    /// copy. This is how herald's own code reads an option; a misspelt option does not compile.
    pub fn eval_opt(&self, path: &ScopePath, opt: Opt) -> Result<&Value, EvalError> {
        let id = eval::in_scope(opt.id(), path.kind())?;
        Ok(self.eval_id(path, id))
    }

    /// [`Config::eval`] for a typed option id ([`Opt`]), without the name lookup or a copy: the path for code
    /// that reads an option it knows, where a misspelt name would not compile.
    pub fn eval_id(&self, path: &ScopePath, id: impl Into<OptId>) -> &Value {
        let c = eval::candidates(&self.root, path);
        eval::first_value(&c, id.into())
    }

    /// The scopes [`Config::eval`] consults at `path`, most specific first (the first that sets an option gives its
    /// value), each with the path it is declared at: a regular-expression `domain` stanza's path names it as
    /// written (`domain /…/`), the global scope's path is empty. What shows where an effective value came from.
    pub fn eval_scopes(&self, path: &ScopePath) -> Vec<(ScopePath, &Node)> {
        eval::candidates(&self.root, path)
            .nodes
            .into_iter()
            .map(|n| (declared_path(&self.root, n).unwrap_or_default(), n))
            .collect()
    }

    /// The scope at `path` exactly as declared (no fallback), if the configuration has it. A binding named without
    /// its group (`binding b`) is found in the group that declares it, as [`Config::eval`] finds it.
    pub fn node(&self, path: &ScopePath) -> Option<&Node> {
        self.chain(path).and_then(|c| c.last().copied())
    }

    /// The scopes from the global one down to the scope at `path`, as declared; a binding named without its group
    /// at the top of the path is looked up in the group that declares it, which then stands in the chain too.
    fn chain(&self, path: &ScopePath) -> Option<Vec<&Node>> {
        let mut chain = vec![&self.root];
        for (i, seg) in path.segments().iter().enumerate() {
            let parent = chain[chain.len() - 1];
            let name = seg.name.as_deref();
            let child = match parent.child(seg.kind, name) {
                Some(c) => c,
                None if i == 0 && seg.kind == ScopeKind::Binding => {
                    let group = eval::group_of(&self.root, name?)?;
                    let group = self.root.child(ScopeKind::BindingGroup, Some(group))?;
                    chain.push(group);
                    group.child(seg.kind, name)?
                }
                None => return None,
            };
            chain.push(child);
        }
        Some(chain)
    }

    /// Momentum's `config get`: the value of `option` set in the scope at `path` itself, without fallback;
    /// `Ok(None)` when that scope does not set it.
    pub fn get(&self, path: &ScopePath, option: &str) -> Result<Option<Value>, EvalError> {
        let id = eval::resolve_option(option, path.kind())?;
        Ok(self
            .node(path)
            .and_then(|n| n.get(id))
            .map(|s| s.value.clone()))
    }

    /// Evaluates Momentum's `config eval` words, `[SCOPE [NAME]]… OPTION`; returns the option's canonical name and
    /// its value.
    pub fn eval_words<S: AsRef<str>>(
        &self,
        words: &[S],
    ) -> Result<(&'static str, Value), EvalError> {
        let (path, option) = ScopePath::parse_words(words)?;
        let id = eval::resolve_option(&option, path.kind())?;
        Ok((id.def().name, self.eval_id(&path, id).clone()))
    }

    /// Every delivery option for mail from (`binding_group`, `binding`) to `domain`, resolved with fallback. A
    /// binding given without its group is looked up in the group that declares it; neither a binding nor a group
    /// is the default binding (and its group), as delivery resolves a notification that names no binding.
    /// Resolved once per key, then served from a cache.
    pub fn domain_settings(
        &self,
        binding_group: Option<&str>,
        binding: Option<&str>,
        domain: &str,
    ) -> Arc<DomainSettings> {
        let binding = eval::delivery_binding(binding_group, binding);
        let (group, domain_lc, key) = self.settings_key(binding_group, binding, domain);
        if let Ok(cache) = self.cache.read()
            && let Some(hit) = cache.get(&key)
        {
            return hit.clone();
        }
        let nodes = eval::delivery_nodes(&self.root, group, binding, Some(&domain_lc));
        let settings = Arc::new(DomainSettings::resolve(nodes, group, binding, &domain_lc));
        if let Ok(mut cache) = self.cache.write()
            && cache.len() < CACHE_LIMIT
        {
            cache.insert(key, settings.clone());
        }
        settings
    }

    /// Where the configuration decides delivery from (`binding_group`, `binding`) to `domain`, for diagnostics
    /// about it: with `opt`, the statement that sets the option's effective value (the first along the fallback of
    /// [`Config::domain_settings`] that sets it); otherwise, or when the option has its default, the most specific
    /// `domain` stanza on that path, else the first `domain` stanza of that name anywhere. `None` when the
    /// configuration declares no such stanza.
    pub fn delivery_location(
        &self,
        binding_group: Option<&str>,
        binding: Option<&str>,
        domain: &str,
        opt: Option<Opt>,
    ) -> Option<Location> {
        let binding = eval::delivery_binding(binding_group, binding);
        let (group, domain_lc, _) = self.settings_key(binding_group, binding, domain);
        let nodes = eval::delivery_nodes(&self.root, group, binding, Some(&domain_lc));
        let set = opt.and_then(|opt| nodes.iter().find_map(|n| n.get(opt.id())));
        if let Some(s) = set {
            return Some(s.at.clone());
        }
        let stanza = nodes.iter().find(|n| n.kind == ScopeKind::Domain).copied();
        stanza
            .or_else(|| find_domain_stanza(&self.root, &domain_lc))
            .and_then(|n| n.at.clone())
    }

    /// Drops the cached [`Config::domain_settings`] of (`binding_group`, `binding`, `domain`): the caller no longer
    /// needs them (a queue that retired); they are resolved again if asked for.
    pub fn forget_domain_settings(
        &self,
        binding_group: Option<&str>,
        binding: Option<&str>,
        domain: &str,
    ) {
        let binding = eval::delivery_binding(binding_group, binding);
        let (_, _, key) = self.settings_key(binding_group, binding, domain);
        if let Ok(mut cache) = self.cache.write() {
            cache.remove(&key);
        }
    }

    /// The group a lookup resolves in, the lower-cased domain, and the cache key of the lookup.
    fn settings_key<'a>(
        &'a self,
        binding_group: Option<&'a str>,
        binding: Option<&str>,
        domain: &str,
    ) -> (Option<&'a str>, String, String) {
        let group = binding_group.or_else(|| binding.and_then(|b| eval::group_of(&self.root, b)));
        let domain_lc = domain.to_ascii_lowercase();
        let key = format!(
            "{}\0{}\0{}",
            group.unwrap_or(""),
            binding.unwrap_or(""),
            domain_lc
        );
        (group, domain_lc, key)
    }

    /// `max_outbound_connections` of the `host` stanzas for connections to `host` from (`binding_group`,
    /// `binding`): binding_group::binding::host > binding::host > binding_group::host > host; -1 (no limit) when
    /// none sets it, without falling back to the delivery scopes (docs/momentum-compat.md#fallback).
    pub fn host_max_outbound_connections(
        &self,
        binding_group: Option<&str>,
        binding: Option<&str>,
        host: &str,
    ) -> i64 {
        let mut path = ScopePath::global();
        if let Some(g) = binding_group {
            path = path.then(ScopeKind::BindingGroup, Some(g));
        }
        if let Some(b) = binding {
            path = path.then(ScopeKind::Binding, Some(b));
        }
        let path = path.then(ScopeKind::Host, Some(host));
        self.eval_id(&path, Opt::MaxOutboundConnections.id())
            .as_int()
            .unwrap_or(-1)
    }

    /// The `host` stanza that caps connections to `host` from (`binding_group`, `binding`), searched in the order
    /// of [`Config::host_max_outbound_connections`]: its cap and the scope that holds it. Every connection to
    /// `host` whose cap comes from the same stanza shares that cap (docs/momentum-compat.md#fallback: a host stanza
    /// limits the connections to the host, whichever domain they serve). `None` when no host stanza sets the option.
    pub fn host_connection_cap(
        &self,
        binding_group: Option<&str>,
        binding: Option<&str>,
        host: &str,
    ) -> Option<HostConnectionCap> {
        let id = Opt::MaxOutboundConnections.id();
        let group = binding_group
            .map(str::to_owned)
            .or_else(|| binding.and_then(|b| eval::group_of(&self.root, b).map(str::to_owned)));
        let g = group
            .as_deref()
            .and_then(|g| self.root.child(ScopeKind::BindingGroup, Some(g)));
        let gb = g
            .zip(binding)
            .and_then(|(g, b)| g.child(ScopeKind::Binding, Some(b)));
        let b = binding.and_then(|b| self.root.child(ScopeKind::Binding, Some(b)));
        let owners = [
            (
                gb,
                format!(
                    "binding_group {:?} binding {:?} ",
                    group.as_deref().unwrap_or(""),
                    binding.unwrap_or("")
                ),
            ),
            (b, format!("binding {:?} ", binding.unwrap_or(""))),
            (
                g,
                format!("binding_group {:?} ", group.as_deref().unwrap_or("")),
            ),
            (Some(&self.root), String::new()),
        ];
        for (node, owner) in owners {
            let Some(node) = node else { continue };
            for h in node.matching_named(ScopeKind::Host, host) {
                if let Some(limit) = h.get(id).and_then(|s| s.value.as_int()) {
                    let stanza = h.name.as_deref().unwrap_or(host);
                    return Some(HostConnectionCap {
                        limit,
                        scope: format!("{owner}host {stanza:?}"),
                    });
                }
            }
        }
        None
    }

    /// Whether `binding` is declared (at the top level or in a binding group); `default` always is.
    pub fn has_binding(&self, binding: &str) -> bool {
        self.bindings().iter().any(|(_, b)| *b == binding)
    }

    /// The names of every `domain` stanza, anywhere (global, binding group, binding), each once, in order of first
    /// appearance; regex domains as written (`/…/`).
    pub fn domains(&self) -> Vec<&str> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        collect_domains(&self.root, &mut seen, &mut out);
        out
    }

    /// Every declared binding as (group, binding), each once (a binding name is declared in one place only);
    /// `default` always exists and comes first, with its group if a binding group declares it.
    pub fn bindings(&self) -> Vec<(Option<&str>, &str)> {
        let mut out = vec![(eval::group_of(&self.root, "default"), "default")];
        for c in self.root.children() {
            match c.kind {
                ScopeKind::Binding => {
                    if let Some(n) = c.name.as_deref().filter(|n| *n != "default") {
                        out.push((None, n));
                    }
                }
                ScopeKind::BindingGroup => {
                    for b in c.children_of(ScopeKind::Binding) {
                        if let Some(n) = b.name.as_deref().filter(|n| *n != "default") {
                            out.push((c.name.as_deref(), n));
                        }
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// Every `listen` stanza of every listener, resolved (listen → listener → default).
    pub fn listeners(&self) -> Vec<ListenerSettings> {
        settings::listeners(&self.root)
    }

    /// The `apn {}` module, if declared.
    pub fn apn_module(&self) -> Option<ModuleSettings> {
        settings::module(&self.root, ScopeKind::Apn)
    }

    /// Any singleton module (`apn`, `httpsrv`, `restinjector`), if declared.
    pub fn module(&self, kind: ScopeKind) -> Option<ModuleSettings> {
        settings::module(&self.root, kind)
    }

    pub fn apn_loggers(&self) -> Vec<ApnLoggerSettings> {
        settings::apn_loggers(&self.root)
    }

    pub fn ec_loggers(&self) -> Vec<EcLoggerSettings> {
        settings::ec_loggers(&self.root)
    }

    pub fn spool(&self) -> SpoolSettings {
        settings::spool(&self.root)
    }

    /// `log_format`: how diagnostics are written to standard error.
    pub fn log_format(&self) -> LogFormat {
        settings::log_format(&self.root)
    }

    /// The options read only at start (the option table's [`OptionDef::start_only`]: the spool, the status book,
    /// the invalid-token store, the loggers, …) whose effective value differs between `old` and `new`, each with
    /// the scope where it does, in the order of `new`'s scopes (then those only `old` has) and of the option table.
    /// A reload from `old` to `new` does not apply them: the daemon warns that they take effect at the next start.
    /// A logger stanza added or removed counts as its `enabled` changing (a missing stanza is a logger that does
    /// not run), along with the options it sets. Values are not returned, so no secret is exposed.
    pub fn start_only_changes(old: &Config, new: &Config) -> Vec<(&'static str, ScopePath)> {
        let mut out = Vec::new();
        start_only_walk(
            old,
            new,
            Some(&old.root),
            Some(&new.root),
            &ScopePath::global(),
            &mut out,
        );
        out
    }

    /// The whole configuration written in the language, secrets included (see [`Config::render_masked`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.root.render(0, &mut out);
        out
    }

    /// The whole configuration written in the language, with the values of secret options masked
    /// ([`secrets::SECRET_OPTIONS`]).
    pub fn render_masked(&self) -> String {
        let mut out = String::new();
        self.root.render_with(0, &mut out, true);
        out
    }

    /// The scope at `path` exactly as configured (no fallback), wrapped in its enclosing scopes so that the output
    /// is itself a valid configuration. Secret values are masked: see [`Config::show_secrets`].
    pub fn show(&self, path: &ScopePath) -> Result<String, EvalError> {
        self.show_with(path, true)
    }

    /// [`Config::show`] with secret values in clear (`herald config show --secrets`).
    pub fn show_secrets(&self, path: &ScopePath) -> Result<String, EvalError> {
        self.show_with(path, false)
    }

    fn show_with(&self, path: &ScopePath, mask: bool) -> Result<String, EvalError> {
        let chain = self
            .chain(path)
            .ok_or_else(|| EvalError::NotFound(path.to_string()))?;
        let mut out = String::new();
        let depth = chain.len() - 1;
        if depth == 0 {
            let mut out = String::new();
            self.root.render_with(0, &mut out, mask);
            return Ok(out);
        }
        for (i, n) in chain[1..depth].iter().enumerate() {
            out.push_str(&"  ".repeat(i));
            out.push_str(n.kind.keyword());
            if let Some(name) = &n.name {
                out.push(' ');
                out.push_str(&lexer::render_value(name, true));
            }
            out.push_str(" {\n");
        }
        chain[depth].render_with(depth - 1, &mut out, mask);
        for i in (0..depth - 1).rev() {
            out.push_str(&"  ".repeat(i));
            out.push_str("}\n");
        }
        Ok(out)
    }
}

/// Same as [`Config::parse_str`] with the name `<string>`.
/// [`Config::start_only_changes`] for the scope at `path` (`old_node` / `new_node`: its stanza in each, if any) and
/// the scopes below it.
fn start_only_walk(
    old: &Config,
    new: &Config,
    old_node: Option<&Node>,
    new_node: Option<&Node>,
    path: &ScopePath,
    out: &mut Vec<(&'static str, ScopePath)>,
) {
    let Some(kind) = new_node.or(old_node).map(|n| n.kind) else {
        return;
    };
    /// The value in force at `path`; `enabled` is false where the stanza is missing (nothing of it runs).
    fn effective<'a>(
        config: &'a Config,
        node: Option<&Node>,
        path: &ScopePath,
        id: OptId,
    ) -> &'a Value {
        static NOT_RUNNING: Value = Value::Bool(false);
        if node.is_none() && id == Opt::Enabled.id() {
            return &NOT_RUNNING;
        }
        config.eval_id(path, id)
    }
    // A stanza turned off (or missing) on both sides runs neither before nor after: its other options do not matter.
    let enabled = Opt::Enabled.id();
    let off = |config, node| *effective(config, node, path, enabled) == Value::Bool(false);
    let idle = enabled.def().is_start_only_in(kind) && off(old, old_node) && off(new, new_node);
    for (i, def) in OPTIONS.iter().enumerate() {
        if idle || !def.is_start_only_in(kind) {
            continue;
        }
        let id = OptId(i as u16);
        if effective(old, old_node, path, id) != effective(new, new_node, path, id) {
            out.push((def.name, path.clone()));
        }
    }
    fn child<'a>(node: Option<&'a Node>, c: &Node) -> Option<&'a Node> {
        node.and_then(|n| n.child(c.kind, c.name.as_deref()))
    }
    for c in new_node.map(Node::children).unwrap_or_default() {
        let below = path.clone().then(c.kind, c.name.as_deref());
        start_only_walk(old, new, child(old_node, c), Some(c), &below, out);
    }
    for c in old_node.map(Node::children).unwrap_or_default() {
        if child(new_node, c).is_none() {
            let below = path.clone().then(c.kind, c.name.as_deref());
            start_only_walk(old, new, Some(c), None, &below, out);
        }
    }
}

impl std::str::FromStr for Config {
    type Err = Diagnostics;

    fn from_str(text: &str) -> Result<Self, Diagnostics> {
        Config::parse_str("<string>", text)
    }
}

fn collect_domains<'a>(
    n: &'a Node,
    seen: &mut std::collections::HashSet<&'a str>,
    out: &mut Vec<&'a str>,
) {
    for c in n.children() {
        match c.kind {
            ScopeKind::Domain => {
                if let Some(name) = c.name.as_deref()
                    && seen.insert(name)
                {
                    out.push(name);
                }
            }
            ScopeKind::Binding | ScopeKind::BindingGroup => collect_domains(c, seen, out),
            _ => {}
        }
    }
}

/// The path from `root` down to the scope `target` (the very node, not one of the same name), if `target` is in
/// the tree; the empty path for `root` itself.
fn declared_path(root: &Node, target: &Node) -> Option<ScopePath> {
    if std::ptr::eq(root, target) {
        return Some(ScopePath::global());
    }
    root.children().iter().find_map(|c| {
        let inner = declared_path(c, target)?;
        let mut path = ScopePath::global().then(c.kind, c.name.as_deref());
        for s in inner.segments() {
            path = path.then(s.kind, s.name.as_deref());
        }
        Some(path)
    })
}

/// The first `domain` stanza named exactly `name` (lower-cased), at any depth (global, binding group, binding).
fn find_domain_stanza<'a>(n: &'a Node, name: &str) -> Option<&'a Node> {
    n.children().iter().find_map(|c| match c.kind {
        ScopeKind::Domain if c.name.as_deref() == Some(name) => Some(c),
        ScopeKind::Binding | ScopeKind::BindingGroup => find_domain_stanza(c, name),
        _ => None,
    })
}

/// A `host` stanza's `max_outbound_connections` and where it is set (see [`Config::host_connection_cap`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostConnectionCap {
    /// The cap; negative for none.
    pub limit: i64,
    /// The stanza that sets it, as a scope path (`host "h"`, `binding "b" host "h"`, …).
    pub scope: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(old: &str, new: &str) -> Vec<String> {
        let old = Config::parse_str("old.conf", old).unwrap_or_else(|d| panic!("{d}"));
        let new = Config::parse_str("new.conf", new).unwrap_or_else(|d| panic!("{d}"));
        Config::start_only_changes(&old, &new)
            .into_iter()
            .map(|(name, path)| format!("{name} @ {path}"))
            .collect()
    }

    #[test]
    fn options_read_only_at_start_are_listed_when_a_reload_changes_them() {
        let base =
            "spool_dir = \"/var/spool/a\"\noutcome_retention = 60\nmax_outbound_connections = 3\n";
        assert!(changes(base, base).is_empty());
        // Start-only options changed, set or unset.
        assert_eq!(
            changes(
                base,
                "spool_dir = \"/var/spool/b\"\nmax_outbound_connections = 3\nspool_backend = jetstream\n\
                 spool_nats_url = \"nats://n:4222\"\ninvalid_tokens_file = \"/t\"\n"
            ),
            // In the option table's order.
            [
                "outcome_retention @ global",
                "invalid_tokens_file @ global",
                "spool_dir @ global",
                "spool_backend @ global",
                "spool_nats_url @ global"
            ]
        );
        // A reload applies these: not listed.
        assert!(
            changes(
                base,
                "spool_dir = \"/var/spool/a\"\noutcome_retention = 60\nmax_outbound_connections = 9\n\
                 log_format = json\nmax_queued_broadcasts = 5\n"
            )
            .is_empty()
        );
        // Writing out the default changes nothing.
        assert!(changes("", "spool_dir = \"/var/spool/herald\"\n").is_empty());
    }

    #[test]
    fn logger_changes_are_listed_per_logger() {
        let one = "apn_logger \"a\" {\n  logfile = \"/l/a\"\n  debug_level = error\n}\n\
                   apn { enabled = true }\n";
        assert_eq!(
            changes(
                one,
                "apn_logger \"a\" {\n  logfile = \"/l/b\"\n  debug_level = debug\n}\n\
                 apn { enabled = false }\nec_logger \"m\" { mainlog = \"/l/main\" }\n"
            ),
            [
                "logfile @ apn_logger a",
                "enabled @ ec_logger m",
                "mainlog @ ec_logger m"
            ]
        );
        // A logger removed stops only at the next start.
        assert_eq!(
            changes(one, "apn { }\n"),
            ["enabled @ apn_logger a", "logfile @ apn_logger a"]
        );
        // A logger that does not run before or after: nothing of it matters.
        let off = "apn_logger \"a\" {\n  enabled = false\n  logfile = \"/l/a\"\n}\n";
        assert!(changes(off, "").is_empty());
        assert!(changes(off, &off.replace("/l/a", "/l/b")).is_empty());
        assert_eq!(
            changes(off, &off.replace("false", "true")),
            ["enabled @ apn_logger a"]
        );
    }

    #[test]
    fn the_option_table_marks_what_is_read_only_at_start() {
        for name in [
            "spool_dir",
            "spool_backend",
            "spool_nats_url",
            "spool_nats_max_held",
            "outcome_retention",
            "outcome_max_entries",
            "invalid_tokens_file",
            "feedback_logfile",
            "max_resident_notifications",
            "idle_queue_timeout",
            "mainlog",
            "logfile",
        ] {
            let def = options::lookup(name).unwrap().def();
            assert!(!def.start_only.is_empty(), "{name}");
            assert!(
                options::options_markdown()
                    .lines()
                    .any(|l| l.starts_with(&format!("| `{name}` |"))
                        && l.contains("**Read at start only")),
                "{name}"
            );
        }
        for name in [
            "max_outbound_connections",
            "log_format",
            "outcome_webhook_url",
            "debug_level",
        ] {
            assert!(
                options::lookup(name).unwrap().def().start_only.is_empty(),
                "{name}"
            );
        }
        let enabled = Opt::Enabled.def();
        assert!(enabled.is_start_only_in(ScopeKind::ApnLogger));
        assert!(enabled.is_start_only_in(ScopeKind::EcLogger));
        assert!(!enabled.is_start_only_in(ScopeKind::Apn));
    }
}
