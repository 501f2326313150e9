//! The loader: reads a file, expands `include` / `readonly_include` (files and directories, relative to the
//! including file first, cycles refused), and builds the scope tree while checking every statement against the
//! scope and option tables. Every problem becomes a diagnostic and loading goes on, so one run reports them all.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use regex::RegexBuilder;

use crate::{
    ast::{Pos, RawValue, Scalar, Stmt},
    diag::{Diagnostics, Location, quote},
    net::{Cidr, ListenAddr},
    options, parser,
    scopes::{SCOPES, ScopeKind, is_regex_name},
    suggest,
    tree::{Node, Setting},
    value::{Value, parse_value},
};

/// The most files one load reads (guards against include fan-out).
const MAX_FILES: usize = 10_000;
/// The deepest chain of includes (each level holds its file while the next is read).
const MAX_INCLUDE_DEPTH: usize = 32;

/// A file's identity (device, inode): the same for every path and hard link to it.
type FileId = (u64, u64);

#[cfg(unix)]
fn file_id(path: &Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_id(_path: &Path) -> Option<FileId> {
    None
}
/// The largest configuration file read, in bytes (each file, includes too).
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Reads a configuration file: a regular file (not a FIFO, device, socket or directory) of at most
/// [`MAX_FILE_BYTES`]. Checked before opening (opening a FIFO would wait for a writer) and on the opened file, and
/// the read itself stops past the limit (files such as those of /proc report no size).
pub fn read_config_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let not_regular = |m: &std::fs::Metadata| {
        let t = m.file_type();
        let what = if t.is_dir() {
            "a directory"
        } else {
            #[cfg(unix)]
            {
                use std::os::unix::fs::FileTypeExt;
                if t.is_fifo() {
                    "a FIFO"
                } else if t.is_char_device() || t.is_block_device() {
                    "a device"
                } else if t.is_socket() {
                    "a socket"
                } else {
                    "not a regular file"
                }
            }
            #[cfg(not(unix))]
            {
                "not a regular file"
            }
        };
        format!("not a regular file ({what}); a configuration must be a regular file")
    };
    let too_big =
        || format!("larger than {MAX_FILE_BYTES} bytes; a configuration file may not be larger");
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_big());
    }
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    let mut bytes = Vec::with_capacity(meta.len().min(MAX_FILE_BYTES) as usize);
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_big());
    }
    Ok(bytes)
}
/// The largest compiled form of one regex domain or host name, in bytes (256 KiB). A domain pattern needs a few
/// KiB at most; Unicode classes repeated (`\w{20}`) are what reach it.
pub const REGEX_SIZE_LIMIT: usize = 256 << 10;
/// The most regex domain and host stanzas one configuration declares: a lookup tries each of its container's.
pub const MAX_REGEX_STANZAS: usize = 1_000;
/// The most bytes the compiled regex names of one configuration take together (64 MiB). Each counts as the
/// smallest power of two from [`REGEX_PROBE_START`] up that holds its compiled form.
pub const REGEX_BUDGET_BYTES: usize = 64 << 20;
/// The size limit a regex is first compiled with; each retry doubles it, up to [`REGEX_SIZE_LIMIT`].
const REGEX_PROBE_START: usize = 1 << 10;

/// Why a regex name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum RegexRefusal {
    #[error("not a valid regular expression: {0}")]
    Invalid(String),
    #[error(
        "the regular expression compiles to more than {REGEX_SIZE_LIMIT} bytes (256 KiB), the most one regex name \
         may take; write a smaller one (Unicode classes such as `\\w` are large: `[a-z0-9-]` is enough for a \
         domain name)"
    )]
    TooBig,
    #[error(
        "more than {MAX_REGEX_STANZAS} regex domain and host stanzas: a configuration may declare at most \
         {MAX_REGEX_STANZAS} (a lookup tries each one); this and any later regex stanza are refused"
    )]
    TooMany,
    #[error(
        "the regex domain and host names compile to more than {REGEX_BUDGET_BYTES} bytes (64 MiB) together, the \
         most a configuration may hold; this and any later regex stanza are refused"
    )]
    OverBudget,
}

/// What the regex names of one load have taken: how many, and their compiled size ([`REGEX_BUDGET_BYTES`]).
#[derive(Debug, Default)]
struct RegexBudget {
    count: usize,
    bytes: usize,
    /// Set once a stanza went over the budget: later ones are refused without another message.
    spent: bool,
}

impl RegexBudget {
    /// Compiles `pattern` (case-insensitively: domain names are) and charges it to the budget. The compiled size
    /// is found by compiling with a size limit that doubles from [`REGEX_PROBE_START`] until the pattern fits,
    /// never past [`REGEX_SIZE_LIMIT`] or what is left of the budget; a failed try stops at its limit, so the
    /// tries cost less than the final compilation twice over.
    fn compile(&mut self, pattern: &str) -> Result<regex::Regex, RegexRefusal> {
        if self.count >= MAX_REGEX_STANZAS {
            return Err(RegexRefusal::TooMany);
        }
        let left = REGEX_BUDGET_BYTES - self.bytes;
        if left == 0 {
            return Err(RegexRefusal::OverBudget);
        }
        let cap = REGEX_SIZE_LIMIT.min(left);
        let mut limit = REGEX_PROBE_START.min(cap);
        loop {
            let built = RegexBuilder::new(pattern)
                .case_insensitive(true)
                .size_limit(limit)
                .dfa_size_limit(REGEX_SIZE_LIMIT)
                .build();
            match built {
                Ok(re) => {
                    self.count += 1;
                    self.bytes += limit;
                    return Ok(re);
                }
                Err(regex::Error::CompiledTooBig(_)) if limit < cap => limit = (limit * 2).min(cap),
                Err(regex::Error::CompiledTooBig(_)) if cap < REGEX_SIZE_LIMIT => {
                    return Err(RegexRefusal::OverBudget);
                }
                Err(regex::Error::CompiledTooBig(_)) => return Err(RegexRefusal::TooBig),
                Err(e) => return Err(RegexRefusal::Invalid(first_line(&e.to_string()))),
            }
        }
    }
}

pub(crate) struct Loader {
    pub diags: Diagnostics,
    /// Syntax errors of the files being read (innermost last), reported in text order among the semantic ones.
    pending: Vec<std::collections::VecDeque<parser::SyntaxError>>,
    /// The files being read, outermost first: canonical path and file identity (for cycle detection: a hard link
    /// is another path to the same file).
    stack: Vec<(PathBuf, Option<FileId>)>,
    files: usize,
    /// The kinds of the scopes being applied, outermost first (the global scope left out).
    scopes: Vec<ScopeKind>,
    /// Where each binding was first declared, and the binding group that holds it (`None`: the top level). A
    /// binding name is one binding: delivery and `config eval` find it by name alone.
    bindings: HashMap<String, (Option<String>, Location)>,
    /// What the regex domain and host names declared so far have taken.
    regexes: RegexBudget,
}

struct FileCtx {
    name: Arc<str>,
    dir: PathBuf,
}

impl FileCtx {
    fn loc(&self, p: Pos) -> Location {
        Location {
            file: self.name.clone(),
            line: p.line,
            col: p.col,
        }
    }
}

impl Loader {
    pub fn new() -> Self {
        Loader {
            diags: Diagnostics::new(),
            pending: Vec::new(),
            stack: Vec::new(),
            files: 0,
            scopes: Vec::new(),
            bindings: HashMap::new(),
            regexes: RegexBudget::default(),
        }
    }

    /// Loads the file at `path` into `root`.
    pub fn load_path(&mut self, path: &Path, root: &mut Node) {
        let name: Arc<str> = Arc::from(path.display().to_string());
        match read_config_file(path) {
            Ok(bytes) => {
                let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
                self.stack.push((canonical, file_id(path)));
                self.load_text(name, dir_of(path), &bytes, root, true);
                self.stack.pop();
            }
            Err(e) => self.diags.error(
                Location {
                    file: name,
                    line: 1,
                    col: 1,
                },
                format!("cannot read the file: {e}"),
            ),
        }
    }

    /// Loads text that did not come from a file (its includes resolve against `dir`, then the working directory).
    pub fn load_bytes(&mut self, name: Arc<str>, dir: PathBuf, bytes: &[u8], root: &mut Node) {
        self.load_text(name, dir, bytes, root, false);
    }

    /// Loads one file's bytes. With `from_file`, a file that is not a configuration (not UTF-8, or errors, not one
    /// statement without a syntax error and not starting like a configuration: a key, a password file) is reported
    /// without quoting any of it.
    fn load_text(
        &mut self,
        name: Arc<str>,
        dir: PathBuf,
        bytes: &[u8],
        root: &mut Node,
        from_file: bool,
    ) {
        self.files += 1;
        let ctx = FileCtx { name, dir };
        let mark = self.diags.len();
        let text = match std::str::from_utf8(bytes) {
            Ok(t) => std::borrow::Cow::Borrowed(t),
            Err(e) => {
                let good = &bytes[..e.valid_up_to()];
                let line = good.iter().filter(|b| **b == b'\n').count() as u32 + 1;
                let last = good
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map(|i| i + 1)
                    .unwrap_or(0);
                // A byte-order mark at the start is not a column (the lexer skips it too).
                let first = if last == 0 {
                    good.strip_prefix("\u{feff}".as_bytes()).unwrap_or(good)
                } else {
                    &good[last..]
                };
                let col = String::from_utf8_lossy(first).chars().count() as u32 + 1;
                if from_file {
                    // Not text: nothing of it is parsed or quoted.
                    self.diags.error(
                        ctx.loc(Pos { line, col }),
                        "the file is not valid UTF-8, so it is not a configuration; its contents are not shown",
                    );
                    return;
                }
                self.diags
                    .error(ctx.loc(Pos { line, col }), "the file is not valid UTF-8");
                String::from_utf8_lossy(bytes)
            }
        };
        // Statements are applied as they are parsed: a large file never exists as a whole syntax tree.
        let mut parser = parser::Parser::new(&text);
        self.pending.push(Default::default());
        // Statements that parsed without a syntax error: a configuration with mistakes has some. Counted by
        // errors found, since past the parser's cap errors are counted but not returned.
        let mut well_formed = 0usize;
        let mut found = 0usize;
        while let Some(stmt) = parser.next_statement() {
            self.queue(parser.take_errors());
            if parser.errors_found() == found {
                well_formed += 1;
            }
            found = parser.errors_found();
            self.apply_one(stmt, root, &ctx, false);
            if self.diags.is_full() {
                break;
            }
        }
        self.queue(parser.take_errors());
        self.queue(parser.hidden_errors().into_iter().collect());
        self.flush(&ctx, None);
        self.pending.pop();
        let errors_here = self.diags.all()[mark..]
            .iter()
            .filter(|d| d.severity == crate::diag::Severity::Error)
            .count();
        if from_file && errors_here > 0 && well_formed == 0 && !starts_like_a_configuration(&text) {
            let line = self.diags.all()[mark..]
                .iter()
                .find(|d| d.severity == crate::diag::Severity::Error && d.location.file == ctx.name)
                .map_or(1, |d| d.location.line);
            self.diags.truncate(mark);
            self.diags.error(
                ctx.loc(Pos { line, col: 1 }),
                format!(
                    "the file does not look like a herald configuration ({errors_here} errors and not one \
                     well-formed statement); its contents are not shown"
                ),
            );
        }
    }

    /// Adds syntax errors (in text order) to the current file's queue, keeping the queue in text order.
    fn queue(&mut self, errors: Vec<parser::SyntaxError>) {
        let Some(queue) = self.pending.last_mut() else {
            return;
        };
        for e in errors {
            let key = (e.pos.line, e.pos.col);
            let at = queue
                .iter()
                .rposition(|q| (q.pos.line, q.pos.col) <= key)
                .map_or(0, |i| i + 1);
            queue.insert(at, e);
        }
    }

    /// Reports the current file's syntax errors that come before `until` (all of them for `None`).
    fn flush(&mut self, ctx: &FileCtx, until: Option<Pos>) {
        let Some(queue) = self.pending.last_mut() else {
            return;
        };
        while let Some(e) = queue.front() {
            if until.is_some_and(|u| (e.pos.line, e.pos.col) >= (u.line, u.col)) {
                return;
            }
            if let Some(e) = queue.pop_front() {
                self.diags.error(ctx.loc(e.pos), e.message);
            }
        }
    }

    fn apply(&mut self, stmts: Vec<Stmt>, node: &mut Node, ctx: &FileCtx, discard: bool) {
        for stmt in stmts {
            if self.diags.is_full() {
                return;
            }
            self.apply_one(stmt, node, ctx, discard);
        }
    }

    fn apply_one(&mut self, stmt: Stmt, node: &mut Node, ctx: &FileCtx, discard: bool) {
        {
            let at = match &stmt {
                Stmt::Option { name_pos, .. } => *name_pos,
                Stmt::Scope { kind_pos, .. } => *kind_pos,
                Stmt::Include { pos, .. } => *pos,
            };
            self.flush(ctx, Some(at));
            match stmt {
                Stmt::Option {
                    name,
                    name_pos,
                    value,
                    value_pos,
                } => {
                    if !discard {
                        self.option(node, &name, name_pos, value, value_pos, ctx);
                    }
                }
                // Inside a refused scope, nested scopes set nothing either.
                Stmt::Scope { body, .. } if discard => self.apply(body, node, ctx, true),
                Stmt::Scope {
                    kind,
                    kind_pos,
                    name,
                    body,
                } => self.scope(node, &kind, kind_pos, &name, body, ctx),
                Stmt::Include {
                    path,
                    pos,
                    readonly,
                } => {
                    if !discard {
                        self.include(node, &path, pos, readonly, ctx);
                    }
                }
            }
        }
    }

    fn option(
        &mut self,
        node: &mut Node,
        name: &str,
        at: Pos,
        raw: RawValue,
        value_pos: Pos,
        ctx: &FileCtx,
    ) {
        let Some(id) = options::lookup(name) else {
            let mut msg = format!("unknown option {}", quote(name));
            if let Some(note) = self.momentum_auth_note(name) {
                msg.push_str(&note);
            } else if let Some(kind) = ScopeKind::from_keyword(name) {
                let keyword = name.to_ascii_lowercase();
                let form = if kind.is_named() {
                    format!("{keyword} NAME {{ … }}")
                } else {
                    format!("{keyword} {{ … }}")
                };
                msg.push_str(&format!("; {} is a scope: write `{form}`", quote(name)));
            } else {
                if let Some(note) = suggest::invisible_note(name, |w| options::lookup(w).is_some())
                {
                    msg.push_str(&note);
                }
                if let Some(s) = options::suggest_option(name) {
                    msg.push_str(&format!("; did you mean `{s}`?"));
                }
            }
            self.diags.error(ctx.loc(at), msg);
            return;
        };
        let def = id.def();
        if !def.scopes.contains(node.kind) {
            self.diags.error(
                ctx.loc(at),
                format!(
                    "option `{}` is not valid in a {} scope; it is valid in: {}",
                    def.name,
                    node.kind,
                    def.scopes.describe()
                ),
            );
            return;
        }
        if def.top_level_domain_only
            && node.kind == ScopeKind::Domain
            && let Some(&outer) = self.scopes.iter().rev().nth(1)
        {
            let domain = node.name.as_deref().unwrap_or_default();
            self.diags.error(
                ctx.loc(at),
                format!(
                    "option `{}` is not valid in a domain stanza inside a {outer}: herald reads it for the domain \
                     whatever the binding, so it would have no effect here; set it in the top-level `domain {}` \
                     stanza",
                    def.name,
                    crate::lexer::render_value(domain, true)
                ),
            );
            return;
        }
        let value = match parse_value(def.kind, &raw) {
            Ok(v) => v,
            Err(e) => {
                self.diags.error(
                    ctx.loc(if e.at == Pos::default() {
                        value_pos
                    } else {
                        e.at
                    }),
                    format!(
                        "invalid value {} for `{}`: {}",
                        // A secret's value is never quoted (its reason does not quote it either).
                        if crate::secrets::is_secret(id) {
                            parser::MASKED.to_string()
                        } else {
                            quote(&e.text)
                        },
                        def.name,
                        e.reason
                    ),
                );
                return;
            }
        };
        if let Some(why) = def.inert {
            self.diags.warning(
                ctx.loc(at),
                format!(
                    "`{}` is accepted but has no effect in herald: {why}",
                    def.name
                ),
            );
        }
        if def.name == "tls_verify" && value == Value::Str("no".into()) {
            self.diags.warning(
                ctx.loc(value_pos),
                "`tls_verify = no` turns off verification of the server's certificate: herald will not notice an \
                 impostor APNs server (use `host`, herald's default, or `ca` with `tls_ca`)",
            );
        }
        if let Some(warning) = value_warning(id, node, &value) {
            self.diags.warning(ctx.loc(value_pos), warning);
        }
        node.set(Setting {
            id,
            value,
            raw,
            at: ctx.loc(at),
        });
    }

    /// A scope statement to apply (not in a discarded part): checked, then its body applied to its node.
    fn scope(
        &mut self,
        node: &mut Node,
        kind_word: &str,
        at: Pos,
        name: &Option<Scalar>,
        body: Vec<Stmt>,
        ctx: &FileCtx,
    ) {
        let Some(kind) = ScopeKind::from_keyword(kind_word) else {
            let mut msg = format!("unknown scope {}", quote(kind_word));
            if options::lookup(kind_word).is_some() {
                msg.push_str(&format!(
                    "; {} is an option: write `{} = value`",
                    quote(kind_word),
                    kind_word
                ));
            } else {
                if let Some(note) =
                    suggest::invisible_note(kind_word, |w| ScopeKind::from_keyword(w).is_some())
                {
                    msg.push_str(&note);
                }
                if let Some(s) = suggest::closest(kind_word, SCOPES.iter().map(|d| d.keyword)) {
                    msg.push_str(&format!("; did you mean `{s}`?"));
                }
            }
            self.diags.error(ctx.loc(at), msg);
            return self.apply(body, node, ctx, true);
        };
        if !kind.may_appear_in(node.kind) {
            let valid = kind.def().map(|d| {
                d.parents
                    .iter()
                    .map(|p| p.keyword())
                    .collect::<Vec<_>>()
                    .join(", ")
            });
            self.diags.error(
                ctx.loc(at),
                format!(
                    "a `{kind}` scope is not valid inside {}; it is valid inside: {}",
                    if node.kind == ScopeKind::Global {
                        "the global scope".to_string()
                    } else {
                        format!("`{}`", node.kind)
                    },
                    valid.unwrap_or_default()
                ),
            );
            return self.apply(body, node, ctx, true);
        }
        match (kind.is_named(), name) {
            (true, None) => {
                self.diags.error(
                    ctx.loc(at),
                    format!("a `{kind}` scope needs a name: `{kind} NAME {{ … }}`"),
                );
                return self.apply(body, node, ctx, true);
            }
            (false, Some(n)) => {
                self.diags.error(
                    ctx.loc(n.pos),
                    format!("a `{kind}` scope takes no name, found {}", quote(&n.text)),
                );
                return self.apply(body, node, ctx, true);
            }
            _ => {}
        }
        if let Some(n) = name
            && let Err(why) = check_name(kind, &n.text)
        {
            self.diags.error(
                ctx.loc(n.pos),
                format!("bad {kind} name {}: {why}", quote(&n.text)),
            );
            return self.apply(body, node, ctx, true);
        }
        let norm = name.as_ref().map(|n| kind.normalize_name(&n.text));
        // A regex name is compiled when its stanza is first declared (a repeated stanza merges into it).
        let mut regex = None;
        if let (Some(n), Some(written)) = (name, norm.as_deref())
            && matches!(kind, ScopeKind::Domain | ScopeKind::Host)
            && is_regex_name(written)
            && node.child(kind, Some(written)).is_none()
        {
            if self.regexes.spent {
                return self.apply(body, node, ctx, true);
            }
            match self.regexes.compile(&written[1..written.len() - 1]) {
                Ok(re) => regex = Some(re),
                Err(why) => {
                    let message = match why {
                        RegexRefusal::Invalid(_) | RegexRefusal::TooBig => {
                            format!("bad {kind} name {}: {why}", quote(&n.text))
                        }
                        RegexRefusal::TooMany | RegexRefusal::OverBudget => {
                            self.regexes.spent = true;
                            format!("{kind} {}: {why}", quote(&n.text))
                        }
                    };
                    self.diags.error(ctx.loc(n.pos), message);
                    return self.apply(body, node, ctx, true);
                }
            }
        }
        if let (Some(n), Some(written)) = (name, norm.as_deref())
            && let Err(why) = self.check_identity(node, kind, written, ctx.loc(n.pos))
        {
            self.diags.error(ctx.loc(n.pos), why);
            return self.apply(body, node, ctx, true);
        }
        let child = node.child_mut(kind, norm, regex, ctx.loc(at));
        self.scopes.push(kind);
        self.apply(body, child, ctx, false);
        self.scopes.pop();
    }

    /// Refuses a stanza naming what another stanza already names under another identity: a binding declared in
    /// two places (the top level and a binding group, or two groups), or a `listen` / `peer` stanza whose address
    /// another stanza of the same scope writes differently (`":25"` and `"*:25"`). Records a binding's first
    /// declaration.
    fn check_identity(
        &mut self,
        node: &Node,
        kind: ScopeKind,
        name: &str,
        at: Location,
    ) -> Result<(), String> {
        match kind {
            ScopeKind::Binding => {
                let group = (node.kind == ScopeKind::BindingGroup)
                    .then(|| node.name.clone())
                    .flatten();
                let place = |g: &Option<String>| match g {
                    Some(g) => format!("binding_group {}", crate::lexer::render_value(g, true)),
                    None => "the top level".to_string(),
                };
                match self.bindings.get(name) {
                    Some((first, first_at)) if *first != group => Err(format!(
                        "binding {} is already declared in {} at {first_at}; a binding name names one binding \
                         (delivery and `config eval` find it by its name alone): declare it in one place, or \
                         give this one another name",
                        crate::lexer::render_value(name, true),
                        place(first),
                    )),
                    Some(_) => Ok(()),
                    None => {
                        self.bindings.insert(name.to_string(), (group, at));
                        Ok(())
                    }
                }
            }
            ScopeKind::Listen | ScopeKind::Peer => match node.child(kind, Some(name)) {
                Some(other) if other.name.as_deref() != Some(name) => {
                    let what = if kind == ScopeKind::Listen {
                        "address"
                    } else {
                        "address block"
                    };
                    Err(format!(
                        "{kind} {} names the same {what} ({}) as {kind} {}{}; write one stanza for it",
                        crate::lexer::render_value(name, true),
                        kind.index_key(name),
                        crate::lexer::render_value(other.name.as_deref().unwrap_or_default(), true),
                        other
                            .at
                            .as_ref()
                            .map(|a| format!(" at {a}"))
                            .unwrap_or_default(),
                    ))
                }
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// For Momentum's authentication options, which herald does not implement, what to write instead.
    fn momentum_auth_note(&self, name: &str) -> Option<String> {
        let is = |options: &[&str]| options.iter().any(|o| o.eq_ignore_ascii_case(name));
        if is(&[
            "TLS_Client_CA",
            "TLS_Verify_Mode",
            "TLS_Verified_Peer_Is_Authorized",
        ]) {
            // Not a near miss of herald's `tls_verify`, which is about the certificates of APNs' hosts.
            return Some(
                "; herald does not implement Momentum's client certificate options (`TLS_Client_CA`, \
                 `TLS_Verify_Mode`, `TLS_Verified_Peer_Is_Authorized`): restrict a listener by address \
                 (`always_allow`, `always_deny`) and, on an HTTP listener, by API key (`api_key`, `api_keys`)"
                    .to_string(),
            );
        }
        if !is(&[
            "Enable_Authentication",
            "AuthDigestMD5Parameters",
            "AuthPlainParameters",
        ]) {
            return None;
        }
        let control = self.scopes.first() == Some(&ScopeKind::ControlListener);
        Some(if control {
            "; herald does not implement Momentum's console authentication (`Enable_Authentication`, \
             `AuthPlainParameters`, `AuthDigestMD5Parameters`): to require a password on this control listener, \
             set `control_password = \"…\"` in its `control_listener` or `listen` stanza (a console then sends \
             `auth PASSWORD` first)"
                .to_string()
        } else {
            "; herald does not implement Momentum's authentication options (`Enable_Authentication`, \
             `AuthPlainParameters`, `AuthDigestMD5Parameters`): a control listener requires a password with \
             `control_password`, an HTTP listener an API key with `api_key`"
                .to_string()
        })
    }

    fn include(&mut self, node: &mut Node, path: &Scalar, at: Pos, readonly: bool, ctx: &FileCtx) {
        if path.text.trim().is_empty() {
            // Joined to a directory, an empty path is that directory: every file in it would be read.
            self.diags.error(
                ctx.loc(path.pos),
                format!(
                    "`{} {}`: the path is empty{}; name the file or directory to include",
                    if readonly {
                        "readonly_include"
                    } else {
                        "include"
                    },
                    crate::lexer::render_value(&path.text, true),
                    if path.text.is_empty() {
                        ""
                    } else {
                        " (only spaces)"
                    },
                ),
            );
            return;
        }
        let wanted = Path::new(&path.text);
        let mut tried = Vec::new();
        let found = if wanted.is_absolute() {
            tried.push(wanted.to_path_buf());
            wanted.exists().then(|| wanted.to_path_buf())
        } else {
            let mut candidates = vec![ctx.dir.join(wanted)];
            if let Ok(cwd) = std::env::current_dir() {
                let c = cwd.join(wanted);
                if !candidates.contains(&c) {
                    candidates.push(c);
                }
            }
            tried.clone_from(&candidates);
            candidates.into_iter().find(|c| c.exists())
        };
        let Some(found) = found else {
            let looked: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
            self.diags.error(
                ctx.loc(at),
                format!(
                    "cannot include {}: no such file or directory (looked for {})",
                    quote(&path.text),
                    looked.join(", ")
                ),
            );
            return;
        };
        if found.is_dir() {
            let entries = match std::fs::read_dir(&found) {
                Ok(e) => e,
                Err(e) => {
                    self.diags.error(
                        ctx.loc(at),
                        format!("cannot read directory {}: {e}", quote(&path.text)),
                    );
                    return;
                }
            };
            let mut files: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| e.path())
                .filter(|p| !p.is_dir())
                .collect();
            files.sort();
            for f in files {
                self.include_file(node, &f, at, ctx);
            }
        } else {
            self.include_file(node, &found, at, ctx);
        }
    }

    fn include_file(&mut self, node: &mut Node, path: &Path, at: Pos, ctx: &FileCtx) {
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let id = file_id(path);
        if let Some(i) = self
            .stack
            .iter()
            .position(|(p, f)| *p == canonical || (id.is_some() && *f == id))
        {
            let chain: Vec<String> = self.stack[i..]
                .iter()
                .map(|(p, _)| p)
                .chain(std::iter::once(&canonical))
                .map(|p| p.display().to_string())
                .collect();
            self.diags.error(
                ctx.loc(at),
                format!("include cycle: {}", chain.join(" includes ")),
            );
            return;
        }
        if self.stack.len() >= MAX_INCLUDE_DEPTH {
            self.diags.error(
                ctx.loc(at),
                format!(
                    "includes nested more than {MAX_INCLUDE_DEPTH} files deep; stopping at {}",
                    quote(&path.display().to_string())
                ),
            );
            return;
        }
        if self.files >= MAX_FILES {
            self.diags.error(
                ctx.loc(at),
                format!("more than {MAX_FILES} files included; stopping"),
            );
            return;
        }
        let bytes = match read_config_file(path) {
            Ok(b) => b,
            Err(e) => {
                self.diags.error(
                    ctx.loc(at),
                    format!("cannot include {}: {e}", quote(&path.display().to_string())),
                );
                return;
            }
        };
        self.stack.push((canonical, id));
        self.load_text(
            Arc::from(path.display().to_string()),
            dir_of(path),
            &bytes,
            node,
            true,
        );
        self.stack.pop();
    }
}

fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Checks a scope name. A `/…/` domain or host name is checked when it is compiled ([`RegexBudget::compile`]).
fn check_name(kind: ScopeKind, name: &str) -> Result<(), String> {
    match kind {
        ScopeKind::Domain | ScopeKind::Host if is_regex_name(name) => Ok(()),
        ScopeKind::Domain | ScopeKind::Host => {
            if name.is_empty() || name.chars().any(char::is_whitespace) {
                Err("a domain name cannot be empty or contain spaces".into())
            } else {
                Ok(())
            }
        }
        ScopeKind::Binding | ScopeKind::BindingGroup => {
            if name.is_empty() || name.contains([' ', '\t', ':']) {
                Err(
                    "binding and binding group names cannot be empty or contain spaces or colons"
                        .into(),
                )
            } else {
                Ok(())
            }
        }
        ScopeKind::Listen => name
            .parse::<ListenAddr>()
            .map(|_| ())
            .map_err(|e| e.to_string()),
        ScopeKind::Peer => name.parse::<Cidr>().map(|_| ()).map_err(|e| e.to_string()),
        _ => Ok(()),
    }
}

fn first_line(s: &str) -> String {
    let line = s.lines().rfind(|l| !l.trim().is_empty()).unwrap_or(s);
    quote(line.trim()).trim_matches('`').to_string()
}

/// True if the text's first word is one a configuration starts with: a scope keyword, an option name or an
/// include. Such a file is a configuration with mistakes, whose errors are worth showing in full; a key or a password
/// file does not start that way.
fn starts_like_a_configuration(text: &str) -> bool {
    match crate::lexer::Lexer::new(text).next() {
        Some(t) if t.kind == crate::lexer::TokenKind::Word => {
            let w = t.value.as_ref();
            ScopeKind::from_keyword(w).is_some()
                || options::lookup(w).is_some()
                || w.eq_ignore_ascii_case("include")
                || w.eq_ignore_ascii_case("readonly_include")
        }
        _ => false,
    }
}

/// A warning about a valid value that herald does not take as written or that makes a faulty reply:
/// `max_outbound_connections = 0` (no connection at all, to which Momentum gives no meaning: herald opens one), an
/// empty `reconfig_message` (the default is sent) and one that does not begin with a class 4 enhanced status code,
/// which the `421` it follows needs (RFC 3463).
fn value_warning(id: options::OptId, node: &Node, value: &Value) -> Option<String> {
    let scope = match &node.name {
        Some(name) => format!("{} {}", node.kind, crate::lexer::render_value(name, true)),
        None if node.kind == ScopeKind::Global => "the global scope".to_string(),
        None => node.kind.to_string(),
    };
    match (id.opt()?, value) {
        (options::Opt::MaxOutboundConnections, Value::Int(0)) => Some(format!(
            "`max_outbound_connections = 0` in {scope} would allow no connection at all (Momentum gives 0 no \
             meaning): herald takes it as 1 ({}); write 1 for one connection, a larger cap, or -1 for no limit",
            if node.kind == ScopeKind::Host {
                "one connection to the host at a time, over every binding and domain"
            } else {
                "one connection per binding and domain at a time"
            }
        )),
        (options::Opt::ReconfigMessage, Value::Str(text)) if text.trim().is_empty() => {
            let default = options::Opt::ReconfigMessage.def().default;
            Some(format!(
                "`reconfig_message` in {scope} is empty: sessions opened before a reload are answered with the \
                 default, `421 {}`",
                default.unwrap_or_default()
            ))
        }
        (options::Opt::ReconfigMessage, Value::Str(text)) if !starts_with_class4_status(text) => {
            Some(format!(
                "`reconfig_message` in {scope} does not begin with an enhanced status code of class 4 (`4.X.Y`, as \
                 Momentum's default `4.3.2 Reconfiguration in progress`): herald sends `421` and the text as \
                 written, so a client that reads enhanced status codes (herald offers ENHANCEDSTATUSCODES) finds \
                 none of the reply's class (RFC 2034, RFC 3463)"
            ))
        }
        _ => None,
    }
}

/// Whether `text` begins with an RFC 3463 status code of class 4 (`4.X.Y`, X and Y of one to three digits),
/// followed by a space (or a control character, which herald sends as one) or nothing.
fn starts_with_class4_status(text: &str) -> bool {
    let code = text
        .trim_start()
        .split(|c: char| c.is_whitespace() || c.is_control())
        .next()
        .unwrap_or_default();
    let mut parts = code.split('.');
    parts.next() == Some("4")
        && parts
            .by_ref()
            .take(2)
            .filter(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
            .count()
            == 2
        && parts.next().is_none()
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use crate::Config;

    fn write(dir: &Path, name: &str, text: &[u8]) -> PathBuf {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn a_syntax_error_in_an_included_configuration_is_shown_with_its_position_and_hint() {
        // The file's one statement has a syntax error, but it starts like a configuration: its real error is
        // shown, not "does not look like a herald configuration".
        let tmp = tempfile::tempdir().unwrap();
        write(
            tmp.path(),
            "conf.d/app.conf",
            b"# app\n\ndomain \"x\" { routes = ( apn://h?port=2195 ) }\n",
        );
        let p = write(tmp.path(), "main.conf", b"include \"conf.d/app.conf\"\n");
        let d = Config::load(&p).unwrap_err();
        let errs: Vec<String> = d.errors().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("app.conf:3:37: error:"), "{errs:?}");
        assert!(errs[0].contains("must be quoted"), "{errs:?}");
        assert!(!errs[0].contains("does not look like"), "{errs:?}");
        // The same file loaded on its own.
        let d = Config::load(tmp.path().join("conf.d/app.conf")).unwrap_err();
        assert!(d.to_string().contains("app.conf:3:37: error:"), "{d}");

        // A file that does not start like a configuration is still not quoted.
        write(tmp.path(), "conf.d/app.conf", b"secret = ( a=b )\n");
        let all = Config::load(&p).unwrap_err().to_string();
        assert!(
            all.contains("does not look like a herald configuration"),
            "{all}"
        );
        assert!(!all.contains("secret"), "{all}");
    }

    #[test]
    fn a_byte_order_mark_at_the_start_of_a_file_or_an_include_is_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        write(
            tmp.path(),
            "conf.d/app.conf",
            "\u{feff}domain \"x\" { max_outbound_connections = 3 }\n".as_bytes(),
        );
        let p = write(
            tmp.path(),
            "main.conf",
            "\u{feff}max_outbound_connections = 4\ninclude \"conf.d/app.conf\"\n".as_bytes(),
        );
        let c = Config::load(&p).unwrap_or_else(|d| panic!("{d}"));
        let eval = |words: &[&str]| c.eval_words(words).unwrap().1;
        assert_eq!(eval(&["max_outbound_connections"]), crate::Value::Int(4));
        assert_eq!(
            eval(&["domain", "x", "max_outbound_connections"]),
            crate::Value::Int(3)
        );
        // Positions after the mark count from its end.
        let d = Config::parse_str("t.conf", "\u{feff}retry_interval = x\n").unwrap_err();
        assert!(d.to_string().starts_with("t.conf:1:18: error:"), "{d}");
        let d = Config::parse_bytes("t.conf", b"\xef\xbb\xbfab\xff").unwrap_err();
        assert!(d.to_string().starts_with("t.conf:1:3: error:"), "{d}");
    }

    /// A scope's keyword written as an option is told the scope's own form: with a name for a named scope, without
    /// one for a scope that takes none (the form the hint gives must load).
    #[test]
    fn a_scope_written_as_an_option_is_told_the_scope_s_form() {
        let m = Config::parse_str("t.conf", "apn = 5\n")
            .unwrap_err()
            .to_string();
        assert!(m.contains("`apn` is a scope: write `apn { … }`"), "{m}");
        assert!(Config::parse_str("t.conf", "apn { }\n").is_ok());
        let m = Config::parse_str("t.conf", "domain = 5\n")
            .unwrap_err()
            .to_string();
        assert!(
            m.contains("`domain` is a scope: write `domain NAME { … }`"),
            "{m}"
        );
    }

    #[test]
    fn an_invisible_character_in_a_name_is_named_and_never_suggested_away() {
        let d = Config::parse_str("t.conf", "max_\u{200b}outbound_connections = 4\n").unwrap_err();
        let m = d.to_string();
        assert!(
            m.contains("unknown option `max_\\u{200b}outbound_connections`"),
            "{m}"
        );
        assert!(m.contains("invisible character U+200B"), "{m}");
        assert!(
            m.contains("delete it to write `max_outbound_connections`"),
            "{m}"
        );
        assert!(!m.contains("did you mean"), "{m}");
        // Not at the start of the file, a byte-order mark is a character of the word.
        let d =
            Config::parse_str("t.conf", "idle_timeout = 5\n\u{feff}domain x { }\n").unwrap_err();
        let m = d.to_string();
        assert!(m.contains("unknown scope `\\u{feff}domain`"), "{m}");
        assert!(m.contains("U+FEFF (a byte-order mark"), "{m}");
        assert!(m.contains("delete it to write `domain`"), "{m}");
        assert!(!m.contains("did you mean"), "{m}");
        // A typo as well: the invisible character is named and the typo gets its suggestion.
        let m = Config::parse_str("t.conf", "\u{200b}idle_timout = 5\n")
            .unwrap_err()
            .to_string();
        assert!(m.contains("U+200B"), "{m}");
        assert!(m.contains("did you mean `idle_timeout`?"), "{m}");
    }

    /// RFC 3463 status codes of class 4, as `reconfig_message` should begin with (its `421`'s class).
    #[test]
    fn class4_status_codes() {
        for good in [
            "4.3.2 Reconfiguration in progress",
            "4.3.2",
            "  4.7.0 later",
            "4.3.2\tx",
            "4.999.999 x",
        ] {
            assert!(super::starts_with_class4_status(good), "{good:?}");
        }
        for bad in [
            "",
            "Reconfiguration in progress",
            "5.3.2 x",
            "2.0.0 x",
            "4.3 x",
            "4.3.2.1 x",
            "4.3.2x",
            "4.1000.2 x",
            "4..2 x",
            "44.3.2 x",
            "4.a.2 x",
        ] {
            assert!(!super::starts_with_class4_status(bad), "{bad:?}");
        }
    }
}
