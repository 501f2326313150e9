//! The durable invalid-token store: an append-only JSON-lines file read back on start, with an in-memory index
//! that keeps one entry per (domain, token) — the latest report — and, per domain, the order in which herald learnt
//! them (for `since` and the dashboard's newest few).
//!
//! A report that tells nothing new is not written: the same or an older APNs timestamp for a token known with an
//! APNs timestamp, or a report without an APNs timestamp (HTTP/2 `BadDeviceToken`, binary status 8) of a token
//! herald learnt less than [`UNTIMED_REPORT_AGAIN_AFTER`] ago. So a sender that keeps sending to a bad token adds
//! nothing to the file, the feedback log or the shared bucket, and the entry keeps the time herald first learnt it.
//! An entry records whether its time is APNs' ([`InvalidTokenEntry::timestamp_from_apns`]): the first report with an
//! APNs timestamp replaces one timed by herald (whatever the two times), since that is the time a sender compares
//! with a token's registration.
//!
//! Writing: the index changes under the store's lock, and the line goes to the file's writer thread
//! ([`super::writer`]): no caller waits for the disk. A line the file did not take stays in memory and is written
//! again until the file takes it; a feedback poll syncs its batch ([`InvalidTokenStore::sync`]), since APNs forgets
//! a list once read, while an entry from an answer to a notification lost in a crash is reported again by APNs at
//! the next notification to that token.
//!
//! Removing: `DELETE /api/v1/tokens/invalid` ([`InvalidTokenStore::delete`]) writes a tombstone line (and puts it
//! in the shared bucket, in place of the entry), so a restart does not bring the entry back, nor another node's copy
//! of it; a later report lists the token again. [`InvalidTokenStore::expire`] drops the entries herald last learnt
//! before a time. The dead lines (superseded, deleted, expired) leave the file when it is rewritten with its live
//! entries: at open, or while herald runs, once they are more than [`COMPACT_MIN_SUPERSEDED`] and more than the
//! entries.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::writer::{Sink, Writer};
use crate::logs::file::{LogFile, LogFileError, push_escaped};
use crate::queue::{InvalidToken, InvalidTokenSink};

/// One invalid token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredEntry")]
pub struct InvalidTokenEntry {
    pub domain: String,
    /// Lowercase hex.
    pub token: String,
    /// APNs' reason (`Unregistered`, `BadDeviceToken`, `invalid token`, `feedback`).
    pub reason: String,
    /// When APNs found the token invalid, ms since the epoch (410 timestamp, feedback tuple time), else when
    /// herald learnt it. A sender compares it with the token's registration (a token registered again after it
    /// is valid again).
    pub timestamp_ms: u64,
    /// When this herald learnt it, ms since the epoch: what `since` compares with and lists are ordered by. An
    /// entry written before herald kept it reads it as `timestamp_ms`. The store sets it when it records an entry.
    pub learnt_ms: u64,
    /// `apns` (an answer to a notification) or `feedback` (the binary feedback service).
    pub source: String,
    /// Whether `timestamp_ms` is APNs' (a 410's timestamp, a feedback tuple's time) rather than when herald learnt
    /// the token (`BadDeviceToken`, binary status 8). A line written before herald kept it reads it from the
    /// entry: `feedback` entries are APNs-timed; `apns` ones are unless their reason is `BadDeviceToken` or
    /// `invalid token`, or their time is the time herald learnt them.
    pub timestamp_from_apns: bool,
}

/// An entry as a line holds it: the fields a herald of an earlier version did not write are optional.
#[derive(Deserialize)]
struct StoredEntry {
    domain: String,
    token: String,
    reason: String,
    timestamp_ms: u64,
    #[serde(default)]
    learnt_ms: Option<u64>,
    source: String,
    #[serde(default)]
    timestamp_from_apns: Option<bool>,
}

/// Reasons APNs gives without a timestamp: HTTP/2 `BadDeviceToken`, binary status 8.
const UNTIMED_REASONS: [&str; 2] = ["BadDeviceToken", "invalid token"];

impl From<StoredEntry> for InvalidTokenEntry {
    fn from(s: StoredEntry) -> Self {
        let learnt = s.learnt_ms.filter(|&l| l != 0);
        let timestamp_from_apns = s.timestamp_from_apns.unwrap_or_else(|| {
            s.source == "feedback"
                || !(UNTIMED_REASONS.contains(&s.reason.as_str()) || learnt == Some(s.timestamp_ms))
        });
        InvalidTokenEntry {
            learnt_ms: learnt.unwrap_or(s.timestamp_ms),
            domain: s.domain,
            token: s.token,
            reason: s.reason,
            timestamp_ms: s.timestamp_ms,
            source: s.source,
            timestamp_from_apns,
        }
    }
}

/// A removed entry: a line of the file, and the value of its key in the shared bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Tombstone {
    domain: String,
    token: String,
    /// When it was removed, ms since the epoch.
    deleted_ms: u64,
}

/// A line of the file (or a value of the shared bucket).
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredLine {
    Entry(InvalidTokenEntry),
    Deleted(Tombstone),
}

/// A report without an APNs timestamp (BadDeviceToken, binary status 8) of a token already listed is written again
/// (file, feedback log, shared bucket; its `learnt_ms` renewed) only once this long has passed since herald learnt
/// it: a sender that keeps sending to a bad token writes one line a day for it, not one per notification, and a
/// client polling with `since` is told again about a token that still fails a day later.
pub const UNTIMED_REPORT_AGAIN_AFTER: std::time::Duration =
    std::time::Duration::from_secs(24 * 3600);

/// The key of an entry in the shared bucket: the token, then the domain in hex (a subject token allows no other
/// characters a domain may hold).
fn shared_key(domain: &str, token: &str) -> String {
    let mut key = format!("{token}.");
    for b in domain.bytes() {
        key.push_str(&format!("{b:02x}"));
    }
    key
}

/// How often a feedback log that keeps failing to take writes is warned about (as the other logs are).
const LOG_ERROR_EVERY: Duration = Duration::from_secs(10);

/// Dead lines (superseded, deleted, expired) the file may hold beyond its live entries before the store rewrites
/// it: it is rewritten when they are more than this and more than the live entries.
pub const COMPACT_MIN_SUPERSEDED: usize = 1000;

/// How long a feedback poll's [`InvalidTokenStore::sync`] waits for the disk.
const SYNC_WAIT: Duration = Duration::from_secs(10);

/// How long dropping the store waits for its writer to write what it holds.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Why the store could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum TokenStoreError {
    #[error("invalid-token store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The entries of one domain.
#[derive(Debug, Default)]
struct DomainEntries {
    by_token: HashMap<String, InvalidTokenEntry>,
    /// (learnt_ms, token) of each entry: the domain's entries in the order herald learnt them.
    by_learnt: BTreeSet<(u64, String)>,
    /// Tokens removed (a `DELETE`, another node's), with when: a copy of the entry learnt before then (the shared
    /// bucket's, read again when NATS reconnects) does not bring it back.
    deleted: HashMap<String, u64>,
}

/// Every entry, by domain.
#[derive(Debug, Default)]
struct Index {
    domains: HashMap<String, DomainEntries>,
    len: usize,
    /// Tombstones held (in `deleted`).
    tombstones: usize,
    /// Entries learnt before this were expired: a copy from another node learnt before it is not taken.
    expired_before: u64,
}

impl Index {
    fn get(&self, domain: &str, token: &str) -> Option<&InvalidTokenEntry> {
        self.domains.get(domain)?.by_token.get(token)
    }

    /// Puts `entry` in, in place of the domain's entry of its token; returns whether it replaced one.
    fn insert(&mut self, entry: InvalidTokenEntry) -> bool {
        let d = self.domains.entry(entry.domain.clone()).or_default();
        let learnt = (entry.learnt_ms, entry.token.clone());
        let replaced = match d.by_token.insert(entry.token.clone(), entry) {
            Some(old) => {
                d.by_learnt.remove(&(old.learnt_ms, old.token));
                true
            }
            None => {
                self.len += 1;
                false
            }
        };
        d.by_learnt.insert(learnt);
        replaced
    }

    fn remove(&mut self, domain: &str, token: &str) -> Option<InvalidTokenEntry> {
        let d = self.domains.get_mut(domain)?;
        let old = d.by_token.remove(token)?;
        d.by_learnt.remove(&(old.learnt_ms, old.token.clone()));
        self.len -= 1;
        Some(old)
    }

    /// When `token` of `domain` was removed, if it was.
    fn deleted_at(&self, domain: &str, token: &str) -> Option<u64> {
        self.domains.get(domain)?.deleted.get(token).copied()
    }

    /// Notes that `token` of `domain` was removed at `at`; returns whether that is news (not known as removed then
    /// or later).
    fn mark_deleted(&mut self, domain: &str, token: &str, at: u64) -> bool {
        let d = self.domains.entry(domain.to_owned()).or_default();
        match d.deleted.get_mut(token) {
            Some(known) if *known >= at => false,
            Some(known) => {
                *known = at;
                true
            }
            None => {
                d.deleted.insert(token.to_owned(), at);
                self.tombstones += 1;
                true
            }
        }
    }

    /// Applies a tombstone: the entry learnt at or before it goes. Returns whether it was news.
    fn apply_tombstone(&mut self, t: &Tombstone) -> (bool, Option<InvalidTokenEntry>) {
        let removed = match self.get(&t.domain, &t.token) {
            Some(e) if e.learnt_ms <= t.deleted_ms => self.remove(&t.domain, &t.token),
            _ => None,
        };
        let news = self.mark_deleted(&t.domain, &t.token, t.deleted_ms);
        (news || removed.is_some(), removed)
    }

    /// Drops the entries learnt before `cutoff_ms` and the tombstones older than it; returns how many entries went.
    fn expire(&mut self, cutoff_ms: u64) -> usize {
        self.expired_before = self.expired_before.max(cutoff_ms);
        let mut gone = 0;
        for d in self.domains.values_mut() {
            let keep = d.by_learnt.split_off(&(cutoff_ms, String::new()));
            for (_, token) in std::mem::replace(&mut d.by_learnt, keep) {
                d.by_token.remove(&token);
                gone += 1;
            }
            let before = d.deleted.len();
            d.deleted.retain(|_, at| *at >= cutoff_ms);
            self.tombstones -= before - d.deleted.len();
        }
        self.domains
            .retain(|_, d| !d.by_token.is_empty() || !d.deleted.is_empty());
        self.len -= gone;
        gone
    }

    /// Copies of the entries learnt at or after `since_ms`, one list per domain, each in the order herald learnt
    /// them: what is done under the store's lock (the merge of the lists is done outside it).
    fn parts(&self, domain: Option<&str>, since_ms: u64) -> Vec<Vec<InvalidTokenEntry>> {
        let of = |d: &DomainEntries| -> Vec<InvalidTokenEntry> {
            d.by_learnt
                .range((since_ms, String::new())..)
                .filter_map(|(_, token)| d.by_token.get(token).cloned())
                .collect()
        };
        match domain {
            Some(name) => self.domains.get(name).map(of).into_iter().collect(),
            None => self
                .domains
                .values()
                .map(of)
                .filter(|l| !l.is_empty())
                .collect(),
        }
    }

    /// The `n` entries of `domain` herald learnt last, newest first.
    fn newest(&self, domain: &str, n: usize) -> Vec<InvalidTokenEntry> {
        let Some(d) = self.domains.get(domain) else {
            return Vec::new();
        };
        d.by_learnt
            .iter()
            .rev()
            .take(n)
            .filter_map(|(_, token)| d.by_token.get(token).cloned())
            .collect()
    }

    fn tombstone_list(&self) -> Vec<Tombstone> {
        let mut out: Vec<Tombstone> = self
            .domains
            .iter()
            .flat_map(|(domain, d)| {
                d.deleted.iter().map(|(token, &at)| Tombstone {
                    domain: domain.clone(),
                    token: token.clone(),
                    deleted_ms: at,
                })
            })
            .collect();
        out.sort_by_key(|t| t.deleted_ms);
        out
    }
}

/// The per-domain lists of [`Index::parts`] as one, in the order herald learnt them (then by domain and token).
fn merge_parts(parts: Vec<Vec<InvalidTokenEntry>>) -> Vec<InvalidTokenEntry> {
    if parts.len() <= 1 {
        return parts.into_iter().next().unwrap_or_default();
    }
    let mut out = parts.concat();
    // Each list is sorted already: the stable sort merges the runs.
    out.sort_by(|a, b| (a.learnt_ms, &a.domain, &a.token).cmp(&(b.learnt_ms, &b.domain, &b.token)));
    out
}

struct Inner {
    index: Index,
    /// Dead lines in the file (superseded, deleted, expired entries) since it was last rewritten.
    dead: usize,
}

/// The store.
pub struct InvalidTokenStore {
    path: PathBuf,
    inner: Mutex<Inner>,
    writer: Writer,
    feedback_log: Option<LogFile>,
    /// When a failed write of the feedback log was last warned about (once per [`LOG_ERROR_EVERY`] while it lasts).
    log_warned: Mutex<Option<Instant>>,
    /// With the JetStream spool: the key-value bucket every node shares (new entries are put there too).
    shared: std::sync::OnceLock<herald_spool::SharedMap>,
}

/// What reading the file found.
struct Read {
    index: Index,
    /// Lines read that hold an entry or a tombstone (superseded or not).
    lines: usize,
    /// Bytes up to the end of the last whole line.
    whole: u64,
    /// The bytes after it: a line cut off by a crash (or written without its newline).
    tail: Vec<u8>,
}

/// Reads the store's file; unreadable lines are skipped with a warning.
fn read_file(path: &Path) -> Result<Read, std::io::Error> {
    let mut read = Read {
        index: Index::default(),
        lines: 0,
        whole: 0,
        tail: Vec::new(),
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(read),
        Err(e) => return Err(e),
    };
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    let mut n = 0usize;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        n += 1;
        if line.last() != Some(&b'\n') {
            read.tail = line.clone();
            break;
        }
        read.whole += line.len() as u64;
        if line.trim_ascii().is_empty() {
            continue;
        }
        match serde_json::from_slice::<StoredLine>(&line) {
            Ok(l) => {
                read.lines += 1;
                merge(&mut read.index, l);
            }
            Err(e) => tracing::warn!("{}:{n}: skipping an unreadable entry: {e}", path.display()),
        }
    }
    Ok(read)
}

/// Writes `index` (its tombstones, then its entries) to a new file beside `path`, then puts it in its place.
fn rewrite(path: &Path, index: &Index) -> Result<(), std::io::Error> {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".compact");
    let tmp = path.with_file_name(name);
    let written = (|| {
        let mut out = BufWriter::new(create_like(&tmp, path)?);
        for t in index.tombstone_list() {
            serde_json::to_writer(&mut out, &t)?;
            out.write_all(b"\n")?;
        }
        for entry in merge_parts(index.parts(None, 0)) {
            serde_json::to_writer(&mut out, &entry)?;
            out.write_all(b"\n")?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Opens the store's file for appending, creating it for herald's user only ([`herald_spool::state_dir`]): it
/// lists device tokens.
fn open_append(path: &Path) -> std::io::Result<File> {
    herald_spool::state_dir::file_options()
        .create(true)
        .append(true)
        .open(path)
}

/// Creates (or truncates) `tmp`, the rewrite of `path`, with the mode `path` has (so that a rewrite keeps what the
/// operator set), or for herald's user only when `path` is missing.
fn create_like(tmp: &Path, path: &Path) -> std::io::Result<File> {
    let file = herald_spool::state_dir::file_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)?;
    // A leftover `tmp` keeps its old mode on open: set it in all cases.
    let permissions = match std::fs::metadata(path) {
        Ok(meta) => meta.permissions(),
        Err(_) => {
            use std::os::unix::fs::PermissionsExt;
            std::fs::Permissions::from_mode(herald_spool::state_dir::FILE_MODE)
        }
    };
    file.set_permissions(permissions)?;
    Ok(file)
}

/// The writer thread's rewrite ([`super::writer::Compactor`]): the file read back, without the entries learnt
/// before `cutoff_ms`, written anew. The file holds every line the store handed the
/// writer before (it writes nothing else meanwhile), so what it keeps is what the index holds.
fn compact_file(path: &Path, cutoff_ms: u64) -> std::io::Result<()> {
    let mut read = read_file(path)?;
    let expired = read.index.expire(cutoff_ms);
    let dropped = read
        .lines
        .saturating_sub(read.index.len + read.index.tombstones);
    rewrite(path, &read.index)?;
    tracing::info!(
        "{}: rewritten with its {} entries ({dropped} dead lines dropped, {expired} of them expired)",
        path.display(),
        read.index.len,
    );
    Ok(())
}

impl InvalidTokenStore {
    /// Opens (or creates) the store at `path`, reading every entry back; unreadable lines are skipped with a
    /// warning. A last line cut off (by a crash) is cut from the file, so that the next entry starts a line of its
    /// own; the file is rewritten with only the live entries when it holds many dead lines. Starts the file's
    /// writer thread. `feedback_log` receives one line per new entry.
    pub fn open(path: &Path, feedback_log: Option<LogFile>) -> Result<Self, TokenStoreError> {
        Self::open_with(path, feedback_log, |file| Box::new(file) as Box<dyn Sink>)
    }

    /// [`InvalidTokenStore::open`], the writer writing to what `sink` makes of the file (tests).
    fn open_with(
        path: &Path,
        feedback_log: Option<LogFile>,
        sink: impl FnOnce(File) -> Box<dyn Sink>,
    ) -> Result<Self, TokenStoreError> {
        let io = |source| TokenStoreError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            herald_spool::state_dir::create_dir(parent).map_err(io)?;
        }
        let Read {
            mut index,
            lines,
            whole,
            tail,
        } = read_file(path).map_err(io)?;
        // A last line without its newline: kept (with a newline added) if it is a whole entry, else cut off.
        let tail_line = (!tail.is_empty())
            .then(|| serde_json::from_slice::<StoredLine>(&tail).ok())
            .flatten();
        if !tail.is_empty() && tail_line.is_none() {
            tracing::warn!(
                "{}: cutting off a last line that is not a whole entry ({} bytes)",
                path.display(),
                tail.len()
            );
        }
        let whole_tail = tail_line.is_some();
        let lines = lines + usize::from(whole_tail);
        if let Some(l) = tail_line {
            merge(&mut index, l);
        }
        let mut superseded = lines.saturating_sub(index.len + index.tombstones);
        let mut compacted = false;
        if superseded > COMPACT_MIN_SUPERSEDED && superseded > index.len {
            match rewrite(path, &index) {
                Ok(()) => {
                    tracing::info!(
                        "{}: rewritten with its {} entries ({superseded} superseded lines dropped)",
                        path.display(),
                        index.len
                    );
                    compacted = true;
                    superseded = 0;
                }
                Err(e) => tracing::warn!(
                    "{}: could not rewrite it without its {superseded} superseded lines: {e}",
                    path.display()
                ),
            }
        }
        let mut file = open_append(path).map_err(io)?;
        if !compacted && !tail.is_empty() {
            if whole_tail {
                file.write_all(b"\n").map_err(io)?;
            } else {
                file.set_len(whole).map_err(io)?;
            }
        }
        let writer = Writer::start(path, sink(file), compact_file).map_err(io)?;
        Ok(InvalidTokenStore {
            path: path.to_owned(),
            inner: Mutex::new(Inner {
                index,
                dead: superseded,
            }),
            writer,
            feedback_log,
            log_warned: Mutex::new(None),
            shared: std::sync::OnceLock::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an entry whose `timestamp_ms` is APNs' (a 410's, a feedback tuple's) unless the same (domain,
    /// token) is known with an APNs time the same or later; `learnt_ms` is set to now. Returns whether it was new.
    pub fn record(&self, entry: InvalidTokenEntry) -> bool {
        self.record_learnt(entry, true, now_ms())
    }

    /// [`InvalidTokenStore::record`], for an entry learnt at `learnt_ms`; `timed`: whether `timestamp_ms` is
    /// APNs' (else a report of a token herald learnt less than [`UNTIMED_REPORT_AGAIN_AFTER`] ago adds nothing).
    pub(crate) fn record_learnt(
        &self,
        entry: InvalidTokenEntry,
        timed: bool,
        learnt_ms: u64,
    ) -> bool {
        let entry = InvalidTokenEntry {
            learnt_ms,
            timestamp_from_apns: timed,
            ..entry
        };
        match self.record_here(entry, true, None) {
            Some(stored) => {
                if let Some(map) = self.shared.get()
                    && let Ok(value) = serde_json::to_vec(&stored)
                {
                    map.put(shared_key(&stored.domain, &stored.token), value.into());
                }
                true
            }
            None => false,
        }
    }

    /// Shares the store with the other nodes of a JetStream spool: new entries go to `map` as well. Entries of
    /// other nodes come back through [`InvalidTokenStore::record_from_peer`].
    pub fn share(&self, map: herald_spool::SharedMap) {
        let _ = self.shared.set(map);
    }

    /// With a JetStream spool: entries not shared with the other nodes because too many waited for NATS already
    /// ([`herald_spool::SharedMap::dropped_puts`]); `None` when the store is not shared.
    pub fn share_dropped(&self) -> Option<u64> {
        self.shared.get().map(herald_spool::SharedMap::dropped_puts)
    }

    /// Records an entry another node learnt (from the shared bucket): no feedback log line (that node wrote it),
    /// and not put back in the bucket. Its `learnt_ms` is when this node learnt it (now), so that a client
    /// polling this node with `since` sees it even when it arrives late. A tombstone (another node's `DELETE`)
    /// removes the entry that node learnt it after; an entry learnt before a removal or an expiry this node knows
    /// of is not taken back.
    pub fn record_from_peer(&self, value: &[u8]) -> bool {
        match serde_json::from_slice::<StoredLine>(value) {
            Ok(StoredLine::Entry(entry)) => {
                let origin = entry.learnt_ms;
                self.record_here(
                    InvalidTokenEntry {
                        learnt_ms: now_ms(),
                        ..entry
                    },
                    false,
                    Some(origin),
                )
                .is_some()
            }
            Ok(StoredLine::Deleted(t)) => {
                let mut inner = self.lock();
                let (news, removed) = inner.index.apply_tombstone(&t);
                if news {
                    inner.dead += usize::from(removed.is_some());
                    self.append(&mut inner, &t);
                }
                news
            }
            Err(e) => {
                tracing::warn!("an invalid-token entry of the shared bucket is unreadable: {e}");
                false
            }
        }
    }

    /// Hands the line of `value` to the writer (under the store's lock, so that the file has the lines in the
    /// order the index took them), and has the file rewritten once its dead lines are many.
    fn append(&self, inner: &mut Inner, value: &impl Serialize) {
        if let Ok(line) = serde_json::to_string(value) {
            self.writer.append(&line);
        }
        if inner.dead > COMPACT_MIN_SUPERSEDED && inner.dead > inner.index.len {
            self.writer.compact(inner.index.expired_before);
            inner.dead = 0;
        }
    }

    /// Records `entry` if it is news; returns what was stored. `origin_learnt`: for an entry of another node, when
    /// that node learnt it.
    fn record_here(
        &self,
        mut entry: InvalidTokenEntry,
        learnt_here: bool,
        origin_learnt: Option<u64>,
    ) -> Option<InvalidTokenEntry> {
        let mut inner = self.lock();
        if let Some(origin) = origin_learnt
            && (origin < inner.index.expired_before
                || inner
                    .index
                    .deleted_at(&entry.domain, &entry.token)
                    .is_some_and(|at| origin <= at))
        {
            return None;
        }
        // A report of a token deleted within the same millisecond (or while the clock stepped back) is learnt after
        // the deletion: a tombstone removes what was learnt at or before it, here after a restart and on the other
        // nodes.
        if origin_learnt.is_none()
            && let Some(at) = inner.index.deleted_at(&entry.domain, &entry.token)
            && entry.learnt_ms <= at
        {
            entry.learnt_ms = at + 1;
        }
        // News: a token not known; an APNs timestamp for a token known with herald's time only (the first time a
        // sender can compare with a registration) or a later one than known (invalidated again after it was
        // registered again); a report without a timestamp (whatever its reason: two bindings may name one failure
        // differently) once [`UNTIMED_REPORT_AGAIN_AFTER`] has passed since herald learnt the known one. That one
        // renews an entry with APNs' time only in when herald learnt it: APNs' time stays what a sender compares.
        let old = inner.index.get(&entry.domain, &entry.token);
        let news = match old {
            None => true,
            Some(old) if entry.timestamp_from_apns => {
                !old.timestamp_from_apns || old.timestamp_ms < entry.timestamp_ms
            }
            Some(old) => {
                entry.learnt_ms.saturating_sub(old.learnt_ms)
                    >= UNTIMED_REPORT_AGAIN_AFTER.as_millis() as u64
            }
        };
        if !news {
            return None;
        }
        if let Some(old) = old.filter(|old| old.timestamp_from_apns && !entry.timestamp_from_apns) {
            entry = InvalidTokenEntry {
                learnt_ms: entry.learnt_ms,
                ..old.clone()
            };
        }
        self.append(&mut inner, &entry);
        if let Some(log) = self.feedback_log.as_ref().filter(|_| learnt_here) {
            // Appended in memory and handed to the log's writer thread at once: no wait for its disk here, under
            // the store's lock.
            log.write_line(&feedback_line(&entry));
            if let Err(e) = log.flush_soon() {
                self.warn_log_error(&e);
            }
        }
        if inner.index.insert(entry.clone()) {
            inner.dead += 1;
        }
        Some(entry)
    }

    /// Removes the entry of `token` (lowercase hex) of `domain`, and returns it; `None` when there is none. A
    /// tombstone is written (and put in the shared bucket in place of the entry), so that neither a restart nor
    /// another node's copy brings it back; a later report of the token lists it again.
    pub fn delete(&self, domain: &str, token: &str) -> Option<InvalidTokenEntry> {
        let mut inner = self.lock();
        let removed = inner.index.remove(domain, token)?;
        // After the entry's learnt time, even should the clock have stepped back.
        let t = Tombstone {
            domain: domain.to_owned(),
            token: token.to_owned(),
            deleted_ms: now_ms().max(removed.learnt_ms),
        };
        inner.index.mark_deleted(domain, token, t.deleted_ms);
        inner.dead += 1;
        self.append(&mut inner, &t);
        drop(inner);
        if let Some(map) = self.shared.get()
            && let Ok(value) = serde_json::to_vec(&t)
        {
            map.put(shared_key(domain, token), value.into());
        }
        Some(removed)
    }

    /// Drops the entries herald last learnt before `cutoff_ms` (ms since the epoch), and the tombstones older than
    /// it; an entry another node learnt before it is not taken from the shared bucket either. Their lines leave the
    /// file when it is next rewritten. Returns how many entries went.
    pub fn expire(&self, cutoff_ms: u64) -> usize {
        let mut inner = self.lock();
        let gone = inner.index.expire(cutoff_ms);
        inner.dead += gone;
        if inner.dead > COMPACT_MIN_SUPERSEDED && inner.dead > inner.index.len {
            self.writer.compact(inner.index.expired_before);
            inner.dead = 0;
        }
        gone
    }

    /// Entries of `domain` (all domains when `None`) herald learnt at or after `since_ms`, in the order it learnt
    /// them. Only the copy is made under the store's lock; a caller on an async thread runs it on the blocking pool
    /// when the store is large.
    pub fn list(&self, domain: Option<&str>, since_ms: u64) -> Vec<InvalidTokenEntry> {
        let parts = self.lock().index.parts(domain, since_ms);
        merge_parts(parts)
    }

    /// The `n` entries of `domain` herald learnt last, newest first: only those are read and copied, whatever the
    /// size of the store.
    pub fn newest(&self, domain: &str, n: usize) -> Vec<InvalidTokenEntry> {
        self.lock().index.newest(domain, n)
    }

    pub fn len(&self) -> usize {
        self.lock().index.len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries recorded that the file has not taken yet (its disk is slow, or fails: they are written once it
    /// takes writes again).
    pub fn pending_writes(&self) -> u64 {
        self.writer.pending()
    }

    /// Waits until the file took every entry recorded before the call (blocking the calling thread), at most
    /// `wait`; else why not (the entries wait in memory meanwhile).
    pub fn flush(&self, wait: Duration) -> Result<(), String> {
        self.writer.flush(wait)
    }

    /// Has every entry recorded so far written and synced to disk (`fdatasync`), waiting without blocking an async
    /// thread, at most 10 s; else why not (the entries wait in memory, and are written once the file takes them).
    /// The feedback poller calls it after each poll: the service forgets what it listed.
    pub async fn sync(&self) -> Result<(), String> {
        self.writer.sync(SYNC_WAIT).await
    }

    /// Reopens the feedback log (logrotate).
    pub fn reopen_log(&self) -> Option<LogFileError> {
        self.feedback_log.as_ref().and_then(|l| l.reopen().err())
    }

    /// The feedback log (`feedback_logfile`), when one is configured: its path and the lines it dropped
    /// ([`LogFile::dropped_lines`]).
    pub fn feedback_log(&self) -> Option<&LogFile> {
        self.feedback_log.as_ref()
    }

    /// A failed write of the feedback log, warned about as the other logs' (once per [`LOG_ERROR_EVERY`] while it
    /// lasts; the lines wait in memory, and past its buffer are dropped and counted).
    fn warn_log_error(&self, e: &LogFileError) {
        let mut last = self.log_warned.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= LOG_ERROR_EVERY) {
            tracing::warn!("feedback log: {e}");
            *last = Some(Instant::now());
        }
    }
}

impl Drop for InvalidTokenStore {
    /// Has the writer write (and sync) what it holds, waiting for it at most 5 s.
    fn drop(&mut self) {
        self.writer.close(CLOSE_WAIT);
    }
}

/// Whether `e`, read after `old` from the file (which holds lines in the order herald took them), takes its place:
/// an APNs time over herald's, a later APNs time, or the same entry learnt again later.
fn replaces_on_read(e: &InvalidTokenEntry, old: &InvalidTokenEntry) -> bool {
    match (e.timestamp_from_apns, old.timestamp_from_apns) {
        (true, false) => true,
        (false, true) => false,
        (true, true) => (e.timestamp_ms, e.learnt_ms) > (old.timestamp_ms, old.learnt_ms),
        (false, false) => (e.learnt_ms, e.timestamp_ms) > (old.learnt_ms, old.timestamp_ms),
    }
}

/// Adds a line read from the file: an entry as [`replaces_on_read`] says, a tombstone removing the entry learnt
/// before it.
fn merge(index: &mut Index, line: StoredLine) {
    match line {
        StoredLine::Entry(e) => {
            if index
                .get(&e.domain, &e.token)
                .is_none_or(|old| replaces_on_read(&e, old))
            {
                index.insert(e);
            }
        }
        StoredLine::Deleted(t) => {
            index.apply_tombstone(&t);
        }
    }
}

/// `ts@domain@token@reason@apns-timestamp-ms@source`, `ts` when herald learnt it (Unix seconds).
fn feedback_line(e: &InvalidTokenEntry) -> String {
    let mut line = format!("{}@", e.learnt_ms / 1000);
    push_escaped(&mut line, &e.domain);
    line.push('@');
    line.push_str(&e.token);
    line.push('@');
    push_escaped(&mut line, &e.reason);
    line.push_str(&format!("@{}@{}", e.timestamp_ms, e.source));
    line
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl InvalidTokenSink for InvalidTokenStore {
    /// A report of delivery: with APNs' timestamp for a 410, else (`BadDeviceToken`, binary status 8) timed now,
    /// and not recorded again while the token is known for the same reason.
    fn record(&self, token: InvalidToken) {
        let now = now_ms();
        self.record_learnt(
            InvalidTokenEntry {
                domain: token.domain.to_string(),
                token: token.token.to_hex(),
                reason: token.reason,
                timestamp_ms: token.timestamp_ms.unwrap_or(now),
                learnt_ms: now,
                source: "apns".into(),
                timestamp_from_apns: token.timestamp_ms.is_some(),
            },
            token.timestamp_ms.is_some(),
            now,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    fn entry(token: &str, ts: u64) -> InvalidTokenEntry {
        InvalidTokenEntry {
            domain: "apps.example".into(),
            token: token.into(),
            reason: "Unregistered".into(),
            timestamp_ms: ts,
            learnt_ms: 0,
            source: "apns".into(),
            timestamp_from_apns: true,
        }
    }

    const WAIT: Duration = Duration::from_secs(30);

    /// The lines of the store's file once its writer wrote every entry recorded so far.
    fn written(store: &InvalidTokenStore) -> Vec<String> {
        store.flush(WAIT).unwrap();
        lines(store.path())
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn entries_are_deduplicated_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("invalid.jsonl");
        let log_path = dir.path().join("feedback.log");
        let store =
            InvalidTokenStore::open(&path, Some(LogFile::open(&log_path, 0o644).unwrap())).unwrap();
        assert!(store.record_learnt(entry("aa", 10), true, 100_000));
        assert!(
            !store.record_learnt(entry("aa", 10), true, 101_000),
            "the same report twice is one entry"
        );
        assert!(
            !store.record_learnt(entry("aa", 5), true, 102_000),
            "an older report adds nothing"
        );
        assert!(
            store.record_learnt(entry("aa", 20), true, 105_000),
            "a later invalidation replaces the entry"
        );
        assert!(store.record_learnt(entry("bb", 15), true, 103_000));
        // Dropping the store writes out its feedback log.
        drop(store);
        let store = InvalidTokenStore::open(&path, None).unwrap();
        let all = store.list(None, 0);
        // In the order herald learnt them.
        assert_eq!(
            all.iter()
                .map(|e| (e.token.as_str(), e.timestamp_ms, e.learnt_ms))
                .collect::<Vec<_>>(),
            [("bb", 15, 103_000), ("aa", 20, 105_000)]
        );
        assert_eq!(store.list(Some("apps.example"), 104_000).len(), 1);
        assert!(store.list(Some("other.example"), 0).is_empty());
        let log = std::fs::read_to_string(log_path).unwrap();
        assert_eq!(log.lines().count(), 3);
        assert_eq!(
            log.lines().next().unwrap(),
            "100@apps.example@aa@Unregistered@10@apns"
        );
    }

    /// `since` is when herald learnt a token, not APNs' timestamp: a 410 answered today for a token APNs
    /// invalidated last week is listed to a client that polled a second ago.
    #[test]
    fn since_is_when_herald_learnt_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("invalid.jsonl");
        let store = InvalidTokenStore::open(&path, None).unwrap();
        let now = now_ms();
        let week_ago = now - 7 * 24 * 3600 * 1000;
        assert!(store.record(entry("aa", week_ago)));
        let listed = store.list(None, now - 1000);
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].timestamp_ms, week_ago, "APNs' timestamp is kept");
        assert!(listed[0].learnt_ms >= now);
        assert_eq!(store.list(Some("apps.example"), now - 1000).len(), 1);
        // Both times survive a restart.
        drop(store);
        let store = InvalidTokenStore::open(&path, None).unwrap();
        assert_eq!(store.list(None, now - 1000), listed);
        // A line of a herald that did not keep the learnt time: learnt when APNs invalidated it.
        let old = dir.path().join("old.jsonl");
        std::fs::write(
            &old,
            "{\"domain\":\"apps.example\",\"token\":\"bb\",\"reason\":\"Unregistered\",\"timestamp_ms\":7000,\"source\":\"apns\"}\n",
        )
        .unwrap();
        let store = InvalidTokenStore::open(&old, None).unwrap();
        assert_eq!(store.list(None, 0)[0].learnt_ms, 7000);
        assert!(store.list(None, 7001).is_empty());
    }

    fn report(token: u8, reason: &str, timestamp_ms: Option<u64>) -> InvalidToken {
        InvalidToken {
            domain: "apps.example".into(),
            token: herald_apns::token_hex::DeviceToken::from_bytes(vec![token; 32]).unwrap(),
            reason: reason.into(),
            timestamp_ms,
        }
    }

    /// A sender that keeps sending to a bad token: each answer (BadDeviceToken, binary status 8) has no APNs
    /// timestamp, and only the first is written (file and feedback log).
    #[test]
    fn a_bad_token_reported_again_and_again_is_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("invalid.jsonl");
        let log_path = dir.path().join("feedback.log");
        let store =
            InvalidTokenStore::open(&path, Some(LogFile::open(&log_path, 0o644).unwrap())).unwrap();
        let sink: &dyn InvalidTokenSink = &store;
        for _ in 0..1000 {
            sink.record(report(1, "BadDeviceToken", None));
        }
        assert_eq!(written(&store).len(), 1);
        // Nor another reason without a timestamp, in turn with the first (a domain with an HTTP/2 binding and a
        // binary one naming the same failure differently).
        for _ in 0..500 {
            sink.record(report(1, "invalid token", None));
            sink.record(report(1, "BadDeviceToken", None));
        }
        assert_eq!(written(&store).len(), 1);
        // An APNs timestamp later than what is known is news (the token was registered again, and dropped).
        let later = now_ms() + 60_000;
        sink.record(report(1, "Unregistered", Some(later)));
        sink.record(report(1, "Unregistered", Some(later)));
        assert_eq!(written(&store).len(), 2);
        store.feedback_log().unwrap().flush().unwrap();
        assert_eq!(lines(&log_path).len(), 2);
        assert_eq!(store.len(), 1);
        // After a restart the bad token is still known: no new line.
        drop(store);
        let store = InvalidTokenStore::open(&path, None).unwrap();
        let sink: &dyn InvalidTokenSink = &store;
        sink.record(report(2, "BadDeviceToken", None));
        sink.record(report(2, "BadDeviceToken", None));
        assert_eq!(written(&store).len(), 3);
        // A day after herald learnt it, a token still reported bad is news again (learnt anew).
        let first = store.list(None, 0)[0].clone();
        let day_later = first.learnt_ms + UNTIMED_REPORT_AGAIN_AFTER.as_millis() as u64;
        let again = InvalidTokenEntry {
            reason: "invalid token".into(),
            ..first.clone()
        };
        assert!(!store.record_learnt(again.clone(), false, day_later - 1));
        assert!(store.record_learnt(again, false, day_later));
        assert_eq!(written(&store).len(), 4);
        assert_eq!(store.list(None, day_later).len(), 1);
    }

    /// A file grown by superseded lines (by a herald that wrote every report) is rewritten at open with the live
    /// entries only.
    #[test]
    fn a_file_of_superseded_lines_is_compacted_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("invalid.jsonl");
        let mut text = String::new();
        let superseded = 2 * COMPACT_MIN_SUPERSEDED;
        for i in 0..=superseded as u64 {
            text.push_str(&serde_json::to_string(&entry("aa", 1000 + i)).unwrap());
            text.push('\n');
        }
        text.push_str(&serde_json::to_string(&entry("bb", 5)).unwrap());
        text.push('\n');
        std::fs::write(&path, text).unwrap();
        let store = InvalidTokenStore::open(&path, None).unwrap();
        assert_eq!(store.len(), 2);
        assert_eq!(lines(&path).len(), 2);
        assert!(store.record(entry("cc", 1)));
        drop(store);
        let store = InvalidTokenStore::open(&path, None).unwrap();
        let all = store.list(None, 0);
        assert_eq!(
            all.iter()
                .map(|e| (e.token.as_str(), e.timestamp_ms))
                .collect::<Vec<_>>(),
            [("bb", 5), ("aa", 1000 + superseded as u64), ("cc", 1)]
        );
        // A few superseded lines are left as they are.
        std::fs::write(
            &path,
            format!(
                "{}\n{}\n",
                serde_json::to_string(&entry("aa", 1)).unwrap(),
                serde_json::to_string(&entry("aa", 2)).unwrap()
            ),
        )
        .unwrap();
        drop(InvalidTokenStore::open(&path, None).unwrap());
        assert_eq!(lines(&path).len(), 2);
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// The store's file and the directories made for it are for herald's user only whatever the umask (it lists
    /// device tokens); a rewrite keeps the mode the file has, one an operator set included.
    #[test]
    fn the_file_and_its_directory_are_for_the_owner_only() {
        // SAFETY: umask only sets the process's file creation mask; 022 is what most systems run with, and what
        // the other tests here create does not depend on it.
        unsafe {
            libc::umask(0o022);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/tokens/invalid.jsonl");
        let store = InvalidTokenStore::open(&path, None).unwrap();
        assert!(store.record(entry("aa", 1)));
        drop(store);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("state")), 0o700);
        assert_eq!(mode(&dir.path().join("state/tokens")), 0o700);

        // Rewritten at open (many superseded lines): still 0600, then 0640 as the operator set it.
        let superseded = (0..=2 * COMPACT_MIN_SUPERSEDED as u64)
            .map(|i| serde_json::to_string(&entry("aa", 1000 + i)).unwrap() + "\n")
            .collect::<String>();
        let rewritten = || {
            std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap()
                .write_all(superseded.as_bytes())
                .unwrap();
            drop(InvalidTokenStore::open(&path, None).unwrap());
            assert_eq!(lines(&path).len(), 1, "rewritten");
            mode(&path)
        };
        assert_eq!(rewritten(), 0o600);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(rewritten(), 0o640);
    }

    /// The dashboard's newest few of a domain, newest first, whatever the size of the store.
    #[test]
    fn newest_gives_the_last_learnt_entries_of_a_domain() {
        let dir = tempfile::tempdir().unwrap();
        let store = InvalidTokenStore::open(&dir.path().join("invalid.jsonl"), None).unwrap();
        for i in 0..200u64 {
            let mut e = entry(&format!("{i:04}"), 10);
            if i % 2 == 1 {
                e.domain = "other.example".into();
            }
            assert!(store.record_learnt(e, true, 1000 + i));
        }
        let tokens = |list: Vec<InvalidTokenEntry>| {
            list.into_iter()
                .map(|e| (e.domain, e.token))
                .collect::<Vec<_>>()
        };
        let a = |t: &str| ("apps.example".to_owned(), t.to_owned());
        assert_eq!(
            tokens(store.newest("apps.example", 3)),
            [a("0198"), a("0196"), a("0194")]
        );
        assert_eq!(store.newest("apps.example", 500).len(), 100);
        assert!(store.newest("none.example", 3).is_empty());
        // A later invalidation of an old token makes it the newest; it is listed once.
        assert!(store.record_learnt(entry("0000", 20), true, 5000));
        assert_eq!(
            tokens(store.newest("apps.example", 2)),
            [a("0000"), a("0198")]
        );
        assert_eq!(store.newest("apps.example", 500).len(), 100);
        assert_eq!(store.list(Some("apps.example"), 0).len(), 100);
        assert_eq!(store.len(), 200);
    }

    /// After logrotate renamed the feedback log, `reopen_log` sends the next lines to a new file at the configured
    /// path.
    #[test]
    fn the_feedback_log_follows_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("feedback.log");
        let store = InvalidTokenStore::open(
            &dir.path().join("invalid.jsonl"),
            Some(LogFile::open(&log_path, 0o644).unwrap()),
        )
        .unwrap();
        assert!(store.record(entry("aa", 10)));
        std::fs::rename(&log_path, dir.path().join("feedback.log.1")).unwrap();
        assert!(store.reopen_log().is_none());
        assert!(store.record(entry("bb", 11)));
        store.feedback_log().unwrap().flush().unwrap();
        let old = std::fs::read_to_string(dir.path().join("feedback.log.1")).unwrap();
        let new = std::fs::read_to_string(&log_path).unwrap();
        assert!(old.contains("@aa@") && !old.contains("@bb@"), "{old}");
        assert!(new.contains("@bb@") && !new.contains("@aa@"), "{new}");
        assert_eq!(store.feedback_log().map(LogFile::dropped_lines), Some(0));
    }

    /// A feedback log on a full disk does not stop the store; the lines it cannot keep are counted.
    #[test]
    fn a_feedback_log_on_a_full_disk_counts_what_it_drops() {
        let dir = tempfile::tempdir().unwrap();
        let store = InvalidTokenStore::open(
            &dir.path().join("invalid.jsonl"),
            Some(LogFile::open_with_cap(Path::new("/dev/full"), 0o644, 256 * 1024).unwrap()),
        )
        .unwrap();
        // About 90 bytes a line: 4000 lines are more than the 256 KiB this log keeps in memory.
        for i in 0..4000u64 {
            assert!(store.record(entry(&format!("{i:064x}"), i + 1)));
        }
        assert_eq!(store.len(), 4000);
        let dropped = store.feedback_log().map_or(0, LogFile::dropped_lines);
        assert!(dropped > 0 && dropped < 4000, "{dropped}");
    }

    /// A last line cut off by a crash is skipped, and cut from the file: the next entry is a line of its own, read
    /// at the next start.
    #[test]
    fn a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("invalid.jsonl");
        std::fs::write(
            &path,
            format!(
                "{}\n{{\"domain\":\"x",
                serde_json::to_string(&entry("aa", 1)).unwrap()
            ),
        )
        .unwrap();
        let store = InvalidTokenStore::open(&path, None).unwrap();
        assert_eq!(store.len(), 1);
        assert!(store.record(entry("bb", 2)));
        drop(store);
        let store = InvalidTokenStore::open(&path, None).unwrap();
        let all = store.list(None, 0);
        assert_eq!(
            all.iter().map(|e| e.token.as_str()).collect::<Vec<_>>(),
            ["aa", "bb"]
        );
        // A whole last entry written without its newline is kept, and the next one starts a line.
        std::fs::write(&path, serde_json::to_string(&entry("cc", 3)).unwrap()).unwrap();
        let store = InvalidTokenStore::open(&path, None).unwrap();
        assert!(store.record(entry("dd", 4)));
        drop(store);
        assert_eq!(InvalidTokenStore::open(&path, None).unwrap().len(), 2);
    }

    /// A disk that stalls (a hung NFS server, a device that takes seconds per write).
    struct Gate {
        open: Arc<(Mutex<bool>, std::sync::Condvar)>,
        file: File,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (open, turn) = &*self.open;
            let mut is_open = open.lock().unwrap();
            while !*is_open {
                is_open = turn.wait(is_open).unwrap();
            }
            self.file.write(buf)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            self.file.flush()
        }
    }

    impl Sink for Gate {
        fn sync(&mut self) -> std::io::Result<()> {
            self.file.sync_data()
        }
    }

    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Delivery tasks record invalid tokens while the store's disk does not return a write: they neither wait for
    /// it nor for the store's lock, nor does a listing; the entries are written once the disk takes writes again.
    #[test]
    fn recording_does_not_wait_for_a_stalled_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("invalid.jsonl");
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let open = gate.clone();
        let store = Arc::new(
            InvalidTokenStore::open_with(&path, None, move |file| {
                Box::new(Gate { open, file }) as Box<dyn Sink>
            })
            .unwrap(),
        );
        let (done, finished) = std::sync::mpsc::channel();
        let recording = store.clone();
        std::thread::spawn(move || {
            let sink: &dyn InvalidTokenSink = &*recording;
            for i in 0..100u8 {
                sink.record(report(i, "Unregistered", Some(1_000 + u64::from(i))));
            }
            let _ = done.send(recording.list(None, 0).len());
        });
        let listed = finished
            .recv_timeout(WAIT)
            .expect("recording waited for a disk that does not take writes");
        assert_eq!(listed, 100);
        assert_eq!(store.len(), 100);
        assert!(store.pending_writes() > 0);
        let stalled = store.flush(Duration::from_millis(10)).unwrap_err();
        assert!(stalled.contains("has not returned"), "{stalled}");
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        assert_eq!(written(&store).len(), 100);
        assert_eq!(store.pending_writes(), 0);
    }

    /// A disk that fails writes for a while (`/dev/full` in place of the file, then the file again).
    struct Switch {
        full: Arc<AtomicBool>,
        dev_full: File,
        file: File,
    }

    impl Write for Switch {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.full.load(Ordering::SeqCst) {
                self.dev_full.write(buf)
            } else {
                self.file.write(buf)
            }
        }

        fn flush(&mut self) -> std::io::Result<()> {
            self.file.flush()
        }
    }

    impl Sink for Switch {
        fn sync(&mut self) -> std::io::Result<()> {
            self.file.sync_data()
        }
    }

    /// An entry whose write failed is not lost: it stays pending and is written once the disk takes writes
    /// again (so it is there after a restart), though a report of it meanwhile is no news; the failure is warned
    /// about once, not at every retry.
    #[test]
    fn a_failed_write_is_retried_until_written_and_warned_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("invalid.jsonl");
        let full = Arc::new(AtomicBool::new(true));
        let switch = full.clone();
        let store = InvalidTokenStore::open_with(&path, None, move |file| {
            Box::new(Switch {
                full: switch,
                dev_full: OpenOptions::new().write(true).open("/dev/full").unwrap(),
                file,
            }) as Box<dyn Sink>
        })
        .unwrap();
        assert!(store.record(entry("aa", 10)));
        assert!(!store.record(entry("aa", 10)), "known in memory");
        let counts = store
            .writer
            .wait_for(WAIT, |c| c.failures >= 3)
            .expect("the failed write is tried again");
        assert_eq!(counts.warnings, 1, "{counts:?}");
        assert_eq!(counts.written, 0);
        let error = store.flush(Duration::ZERO).unwrap_err();
        assert!(error.contains("1 entries wait in memory"), "{error}");
        assert!(lines(&path).is_empty());
        full.store(false, Ordering::SeqCst);
        assert_eq!(written(&store).len(), 1);
        drop(store);
        let store = InvalidTokenStore::open(&path, None).unwrap();
        assert_eq!(store.list(None, 0)[0].token, "aa");
    }

    /// A 410 (or feedback record) whose APNs time is older than the time herald gave a `BadDeviceToken` of the
    /// same token replaces it: the list then holds APNs' time, the one a sender compares with the token's
    /// registration; a restart keeps it so.
    #[test]
    fn an_apns_timestamp_replaces_herald_s_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("invalid.jsonl");
        let store = InvalidTokenStore::open(&path, None).unwrap();
        let sink: &dyn InvalidTokenSink = &store;
        sink.record(report(1, "BadDeviceToken", None));
        let first = store.list(None, 0)[0].clone();
        assert!(!first.timestamp_from_apns);
        let day_ago = first.timestamp_ms - 24 * 3600 * 1000;
        sink.record(report(1, "Unregistered", Some(day_ago)));
        let check = |store: &InvalidTokenStore| {
            let e = store.list(None, 0)[0].clone();
            assert_eq!(
                (e.timestamp_ms, e.reason.as_str(), e.timestamp_from_apns),
                (day_ago, "Unregistered", true),
                "{e:?}"
            );
        };
        check(&store);
        // An older APNs time, or no time at all, tells nothing new.
        sink.record(report(1, "Unregistered", Some(day_ago - 1000)));
        sink.record(report(1, "BadDeviceToken", None));
        check(&store);
        assert_eq!(written(&store).len(), 2);
        drop(store);
        let store = InvalidTokenStore::open(&path, None).unwrap();
        check(&store);
        // A feedback record does the same.
        let store2 = InvalidTokenStore::open(&dir.path().join("two.jsonl"), None).unwrap();
        let sink: &dyn InvalidTokenSink = &store2;
        sink.record(report(2, "invalid token", None));
        assert!(store2.record(InvalidTokenEntry {
            reason: "feedback".into(),
            source: "feedback".into(),
            token: "02".repeat(32),
            ..entry("", 5_000)
        }));
        let e = store2.list(None, 0)[0].clone();
        assert_eq!((e.timestamp_ms, e.source.as_str()), (5_000, "feedback"));
    }

    /// Lines of a herald that did not write `timestamp_from_apns` still read, and tell whether their time is
    /// APNs': a `BadDeviceToken` or `invalid token` entry, or one whose time is when herald learnt it, is
    /// herald-timed; a 410 with a timestamp or a feedback record is APNs-timed. A `BadDeviceToken` line followed by
    /// an older 410 reads as the 410.
    #[test]
    fn lines_of_an_earlier_herald_read_whether_their_time_is_apns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("invalid.jsonl");
        let line = |token: &str, reason: &str, ts: u64, learnt: Option<u64>, source: &str| {
            let mut v = serde_json::json!({
                "domain": "apps.example", "token": token, "reason": reason, "timestamp_ms": ts, "source": source,
            });
            if let Some(l) = learnt {
                v["learnt_ms"] = l.into();
            }
            v.to_string()
        };
        let text = [
            line("aa", "BadDeviceToken", 5_000, Some(5_000), "apns"),
            line("bb", "Unregistered", 3_000, Some(9_000), "apns"),
            line("cc", "Unregistered", 9_000, Some(9_000), "apns"),
            line("dd", "feedback", 1_000, None, "feedback"),
            line("ee", "invalid token", 7_000, None, "apns"),
            line("ff", "BadDeviceToken", 8_000, Some(8_000), "apns"),
            line("ff", "Unregistered", 2_000, Some(8_500), "apns"),
        ]
        .join("\n")
            + "\n";
        std::fs::write(&path, text).unwrap();
        let store = InvalidTokenStore::open(&path, None).unwrap();
        let got: HashMap<String, (bool, u64, String)> = store
            .list(None, 0)
            .into_iter()
            .map(|e| (e.token, (e.timestamp_from_apns, e.timestamp_ms, e.reason)))
            .collect();
        let want = |apns: bool, ts: u64, reason: &str| (apns, ts, reason.to_owned());
        assert_eq!(got["aa"], want(false, 5_000, "BadDeviceToken"));
        assert_eq!(got["bb"], want(true, 3_000, "Unregistered"));
        assert_eq!(got["cc"], want(false, 9_000, "Unregistered"));
        assert_eq!(got["dd"], want(true, 1_000, "feedback"));
        assert_eq!(got["ee"], want(false, 7_000, "invalid token"));
        assert_eq!(got["ff"], want(true, 2_000, "Unregistered"));
        // And an APNs-timed report of `aa` replaces herald's time, as with an entry written now.
        assert!(store.record(entry("aa", 4_000)));
    }

    /// `delete` removes an entry for good: not listed, not back after a restart (a tombstone line); a later
    /// report lists the token again, and that survives a restart too.
    #[test]
    fn a_deleted_entry_stays_deleted_until_reported_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("invalid.jsonl");
        let store = InvalidTokenStore::open(&path, None).unwrap();
        assert!(store.record(entry("aa", 10)));
        assert!(store.record(entry("bb", 11)));
        let gone = store.delete("apps.example", "aa").unwrap();
        assert_eq!(gone.timestamp_ms, 10);
        assert!(store.delete("apps.example", "aa").is_none());
        assert!(store.delete("other.example", "bb").is_none());
        assert_eq!(store.len(), 1);
        let file = written(&store);
        assert_eq!(file.len(), 3);
        assert!(file[2].contains("\"deleted_ms\""), "{file:?}");
        drop(store);
        let store = InvalidTokenStore::open(&path, None).unwrap();
        let tokens = |s: &InvalidTokenStore| {
            s.list(None, 0)
                .into_iter()
                .map(|e| e.token)
                .collect::<Vec<_>>()
        };
        assert_eq!(tokens(&store), ["bb"]);
        // Reported again (the same APNs time): listed again, learnt after the deletion even within its millisecond
        // (else the tombstone would remove it again on the other nodes).
        let deleted_ms = store.lock().index.deleted_at("apps.example", "aa").unwrap();
        assert!(store.record_learnt(entry("aa", 10), true, deleted_ms));
        let again = store.list(None, 0);
        assert!(
            again
                .iter()
                .any(|e| e.token == "aa" && e.learnt_ms > deleted_ms),
            "{again:?}"
        );
        drop(store);
        let store = InvalidTokenStore::open(&path, None).unwrap();
        assert_eq!(tokens(&store), ["bb", "aa"]);
    }

    /// With JetStream: a copy of a deleted entry another node learnt before the delete (the shared bucket read
    /// again after a reconnection or a restart) does not bring it back, before or after a restart; one learnt after
    /// it does. Another node's tombstone removes the entry here, once.
    #[test]
    fn a_peer_copy_learnt_before_a_delete_does_not_bring_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("invalid.jsonl");
        let store = InvalidTokenStore::open(&path, None).unwrap();
        let copy = |token: &str, learnt_ms: u64| {
            serde_json::to_vec(&InvalidTokenEntry {
                learnt_ms,
                ..entry(token, 10)
            })
            .unwrap()
        };
        assert!(store.record_from_peer(&copy("aa", 1_000)));
        assert!(store.delete("apps.example", "aa").is_some());
        assert!(!store.record_from_peer(&copy("aa", 1_000)));
        drop(store);
        let store = InvalidTokenStore::open(&path, None).unwrap();
        assert!(!store.record_from_peer(&copy("aa", 1_000)));
        assert!(store.is_empty());
        assert!(store.record_from_peer(&copy("aa", now_ms() + 60_000)));
        assert_eq!(store.len(), 1);

        assert!(store.record_from_peer(&copy("bb", 2_000)));
        let tombstone = serde_json::to_vec(&Tombstone {
            domain: "apps.example".into(),
            token: "bb".into(),
            deleted_ms: now_ms() + 30_000,
        })
        .unwrap();
        assert!(store.record_from_peer(&tombstone));
        assert!(!store.record_from_peer(&tombstone), "the echo is no news");
        assert_eq!(
            store
                .list(None, 0)
                .into_iter()
                .map(|e| e.token)
                .collect::<Vec<_>>(),
            ["aa"]
        );
        drop(store);
        let store = InvalidTokenStore::open(&path, None).unwrap();
        assert_eq!(store.len(), 1);
        assert!(!store.record_from_peer(&copy("bb", 2_000)));
    }

    /// `expire` drops the entries herald learnt before a time; once their dead lines are many, the file is
    /// rewritten without them while herald runs, and a restart does not bring them back. Another node's copy
    /// learnt before the cutoff is not taken.
    #[test]
    fn expired_entries_leave_memory_and_then_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("invalid.jsonl");
        let store = InvalidTokenStore::open(&path, None).unwrap();
        let old = 2 * COMPACT_MIN_SUPERSEDED as u64;
        for i in 0..old + 10 {
            assert!(store.record_learnt(entry(&format!("{i:064x}"), 10), true, 1_000 + i));
        }
        assert_eq!(written(&store).len() as u64, old + 10);
        // A few: gone from memory, their lines kept until there are more.
        assert_eq!(store.expire(1_005), 5);
        assert_eq!(store.len() as u64, old + 5);
        assert_eq!(written(&store).len() as u64, old + 10);
        assert_eq!(store.expire(1_000 + old), old as usize - 5);
        assert_eq!(store.len(), 10);
        assert_eq!(written(&store).len(), 10);
        assert!(
            !store.record_from_peer(
                &serde_json::to_vec(&InvalidTokenEntry {
                    learnt_ms: 1_000,
                    ..entry(&format!("{:064x}", 0), 10)
                })
                .unwrap()
            )
        );
        assert!(store.record(entry("cc", 20)));
        drop(store);
        let store = InvalidTokenStore::open(&path, None).unwrap();
        assert_eq!(store.len(), 11);
    }
}
