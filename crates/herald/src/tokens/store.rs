//! The durable invalid-token store: an append-only JSON-lines file read back on start, with an in-memory index
//! that keeps one entry per (domain, token) — the one with the latest invalidation time — and, per domain, the
//! order in which herald learnt them (for `since` and the dashboard's newest few).
//!
//! A report that tells nothing new is not written: the same or an older APNs timestamp for a known token, or a
//! report without an APNs timestamp (HTTP/2 `BadDeviceToken`, binary status 8) of a token already known for that
//! reason. So a sender that keeps sending to a bad token adds nothing to the file, the feedback log or the shared
//! bucket, and the entry keeps the time herald first learnt it. A file that holds more superseded lines than live
//! entries (past [`COMPACT_MIN_SUPERSEDED`]) is rewritten with the live entries when the store opens.

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::logs::file::{LogFile, LogFileError, push_escaped};
use crate::queue::{InvalidToken, InvalidTokenSink};

/// One invalid token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    #[serde(default)]
    pub learnt_ms: u64,
    /// `apns` (an answer to a notification) or `feedback` (the binary feedback service).
    pub source: String,
}

/// A report without an APNs timestamp (BadDeviceToken, binary status 8) of a token already listed is written again
/// (file, feedback log, shared bucket; its `learnt_ms` renewed) only once this long has passed since herald learnt
/// it: a sender that keeps sending to a bad token writes one line a day for it, not one per notification, and a
/// client polling with `since` is told again about a token that still fails a day later.
pub const UNTIMED_REPORT_AGAIN_AFTER: std::time::Duration =
    std::time::Duration::from_secs(24 * 3600);

/// The key of an entry in the shared bucket: the token, then the domain in hex (a subject token allows no other
/// characters a domain may hold).
fn shared_key(entry: &InvalidTokenEntry) -> String {
    let mut key = format!("{}.", entry.token);
    for b in entry.domain.bytes() {
        key.push_str(&format!("{b:02x}"));
    }
    key
}

/// How often a feedback log that keeps failing to take writes is warned about (as the other logs are).
const LOG_ERROR_EVERY: Duration = Duration::from_secs(10);

/// Superseded lines the file may hold beyond its live entries before the store rewrites it at open: it is
/// rewritten when the superseded lines are more than this and more than the live entries.
pub const COMPACT_MIN_SUPERSEDED: usize = 1000;

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
}

/// Every entry, by domain.
#[derive(Debug, Default)]
struct Index {
    domains: HashMap<String, DomainEntries>,
    len: usize,
}

impl Index {
    fn get(&self, domain: &str, token: &str) -> Option<&InvalidTokenEntry> {
        self.domains.get(domain)?.by_token.get(token)
    }

    /// Puts `entry` in, in place of the domain's entry of its token.
    fn insert(&mut self, entry: InvalidTokenEntry) {
        let d = self.domains.entry(entry.domain.clone()).or_default();
        let learnt = (entry.learnt_ms, entry.token.clone());
        match d.by_token.insert(entry.token.clone(), entry) {
            Some(old) => {
                d.by_learnt.remove(&(old.learnt_ms, old.token));
            }
            None => self.len += 1,
        }
        d.by_learnt.insert(learnt);
    }

    /// Entries learnt at or after `since_ms`, in the order herald learnt them (then by domain and token).
    fn list(&self, domain: Option<&str>, since_ms: u64) -> Vec<InvalidTokenEntry> {
        let of = |d: &DomainEntries| -> Vec<InvalidTokenEntry> {
            d.by_learnt
                .range((since_ms, String::new())..)
                .filter_map(|(_, token)| d.by_token.get(token).cloned())
                .collect()
        };
        match domain {
            Some(name) => self.domains.get(name).map(of).unwrap_or_default(),
            None => {
                let mut out: Vec<InvalidTokenEntry> = self.domains.values().flat_map(of).collect();
                out.sort_by(|a, b| {
                    (a.learnt_ms, &a.domain, &a.token).cmp(&(b.learnt_ms, &b.domain, &b.token))
                });
                out
            }
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
}

struct Inner {
    index: Index,
    out: BufWriter<File>,
}

/// The store. Writes are appended and flushed at once (an entry lost in a crash is reported again by APNs).
pub struct InvalidTokenStore {
    path: PathBuf,
    inner: Mutex<Inner>,
    feedback_log: Option<LogFile>,
    /// When a failed write of the feedback log was last warned about (once per [`LOG_ERROR_EVERY`] while it lasts).
    log_warned: Mutex<Option<Instant>>,
    /// With the JetStream spool: the key-value bucket every node shares (new entries are put there too).
    shared: std::sync::OnceLock<herald_spool::SharedMap>,
}

/// What reading the file found.
struct Read {
    index: Index,
    /// Entries read (each line that holds one, superseded or not).
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
        match serde_json::from_slice::<InvalidTokenEntry>(&line) {
            Ok(e) => {
                read.lines += 1;
                merge(&mut read.index, e);
            }
            Err(e) => tracing::warn!("{}:{n}: skipping an unreadable entry: {e}", path.display()),
        }
    }
    Ok(read)
}

/// Writes `index` to a new file beside `path`, then puts it in its place.
fn rewrite(path: &Path, index: &Index) -> Result<(), std::io::Error> {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".compact");
    let tmp = path.with_file_name(name);
    let written = (|| {
        let mut out = BufWriter::new(File::create(&tmp)?);
        for entry in index.list(None, 0) {
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

impl InvalidTokenStore {
    /// Opens (or creates) the store at `path`, reading every entry back; unreadable lines are skipped with a
    /// warning. A last line cut off (by a crash) is cut from the file, so that the next entry starts a line of its
    /// own; the file is rewritten with only the live entries when it holds many superseded ones.
    /// `feedback_log` receives one line per new entry.
    pub fn open(path: &Path, feedback_log: Option<LogFile>) -> Result<Self, TokenStoreError> {
        let io = |source| TokenStoreError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let Read {
            mut index,
            lines,
            whole,
            tail,
        } = read_file(path).map_err(io)?;
        // A last line without its newline: kept (with a newline added) if it is a whole entry, else cut off.
        let tail_entry = (!tail.is_empty())
            .then(|| serde_json::from_slice::<InvalidTokenEntry>(&tail).ok())
            .flatten();
        if !tail.is_empty() && tail_entry.is_none() {
            tracing::warn!(
                "{}: cutting off a last line that is not a whole entry ({} bytes)",
                path.display(),
                tail.len()
            );
        }
        let lines = lines + usize::from(tail_entry.is_some());
        if let Some(e) = tail_entry.clone() {
            merge(&mut index, e);
        }
        let superseded = lines.saturating_sub(index.len);
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
                }
                Err(e) => tracing::warn!(
                    "{}: could not rewrite it without its {superseded} superseded lines: {e}",
                    path.display()
                ),
            }
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        if !compacted && !tail.is_empty() {
            if tail_entry.is_some() {
                file.write_all(b"\n").map_err(io)?;
            } else {
                file.set_len(whole).map_err(io)?;
            }
        }
        Ok(InvalidTokenStore {
            path: path.to_owned(),
            inner: Mutex::new(Inner {
                index,
                out: BufWriter::new(file),
            }),
            feedback_log,
            log_warned: Mutex::new(None),
            shared: std::sync::OnceLock::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records an entry whose `timestamp_ms` is APNs' (a 410's, a feedback tuple's) unless the same (domain,
    /// token) is known with the same or a later time; `learnt_ms` is set to now. Returns whether it was new.
    pub fn record(&self, entry: InvalidTokenEntry) -> bool {
        self.record_learnt(entry, true, now_ms())
    }

    /// [`InvalidTokenStore::record`], for an entry learnt at `learnt_ms`; `timed`: whether `timestamp_ms` is
    /// APNs' (else a report of the token for a reason already known for it adds nothing).
    pub(crate) fn record_learnt(
        &self,
        entry: InvalidTokenEntry,
        timed: bool,
        learnt_ms: u64,
    ) -> bool {
        let entry = InvalidTokenEntry { learnt_ms, ..entry };
        let shared = self.shared.get();
        let copy = shared.map(|_| entry.clone());
        let new = self.record_here(entry, true, timed);
        if let (true, Some(map), Some(entry)) = (new, shared, copy)
            && let Ok(value) = serde_json::to_vec(&entry)
        {
            map.put(shared_key(&entry), value.into());
        }
        new
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
    /// polling this node with `since` sees it even when it arrives late.
    pub fn record_from_peer(&self, value: &[u8]) -> bool {
        match serde_json::from_slice::<InvalidTokenEntry>(value) {
            Ok(entry) => self.record_here(
                InvalidTokenEntry {
                    learnt_ms: now_ms(),
                    ..entry
                },
                false,
                true,
            ),
            Err(e) => {
                tracing::warn!("an invalid-token entry of the shared bucket is unreadable: {e}");
                false
            }
        }
    }

    fn record_here(&self, entry: InvalidTokenEntry, learnt_here: bool, timed: bool) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // News: a token not known, a later APNs timestamp (invalidated again after it was registered again), or a
        // report without a timestamp (whatever its reason: two bindings may name one failure differently) once
        // [`UNTIMED_REPORT_AGAIN_AFTER`] has passed since herald learnt the known one.
        let news = match inner.index.get(&entry.domain, &entry.token) {
            None => true,
            Some(old) if timed => old.timestamp_ms < entry.timestamp_ms,
            Some(old) => {
                entry.learnt_ms.saturating_sub(old.learnt_ms)
                    >= UNTIMED_REPORT_AGAIN_AFTER.as_millis() as u64
            }
        };
        if !news {
            return false;
        }
        if let Ok(line) = serde_json::to_string(&entry) {
            let written = writeln!(inner.out, "{line}").and_then(|_| inner.out.flush());
            if let Err(e) = written {
                tracing::error!(
                    "writing the invalid-token store {}: {e}",
                    self.path.display()
                );
            }
        }
        if let Some(log) = self.feedback_log.as_ref().filter(|_| learnt_here) {
            // Appended in memory and handed to the log's writer thread at once: no wait for its disk here, under
            // the store's lock.
            log.write_line(&feedback_line(&entry));
            if let Err(e) = log.flush_soon() {
                self.warn_log_error(&e);
            }
        }
        inner.index.insert(entry);
        true
    }

    /// Entries of `domain` (all domains when `None`) herald learnt at or after `since_ms`, in the order it learnt
    /// them.
    pub fn list(&self, domain: Option<&str>, since_ms: u64) -> Vec<InvalidTokenEntry> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.index.list(domain, since_ms)
    }

    /// The `n` entries of `domain` herald learnt last, newest first: only those are read and copied, whatever the
    /// size of the store.
    pub fn newest(&self, domain: &str, n: usize) -> Vec<InvalidTokenEntry> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.index.newest(domain, n)
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .index
            .len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

/// Adds an entry read from the file: the one with the later invalidation time stays.
fn merge(index: &mut Index, mut e: InvalidTokenEntry) {
    if e.learnt_ms == 0 {
        e.learnt_ms = e.timestamp_ms;
    }
    if index
        .get(&e.domain, &e.token)
        .is_none_or(|old| old.timestamp_ms < e.timestamp_ms)
    {
        index.insert(e);
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
            },
            token.timestamp_ms.is_some(),
            now,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(token: &str, ts: u64) -> InvalidTokenEntry {
        InvalidTokenEntry {
            domain: "apps.example".into(),
            token: token.into(),
            reason: "Unregistered".into(),
            timestamp_ms: ts,
            learnt_ms: 0,
            source: "apns".into(),
        }
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
        assert_eq!(lines(&path).len(), 1);
        // Nor another reason without a timestamp, in turn with the first (a domain with an HTTP/2 binding and a
        // binary one naming the same failure differently).
        for _ in 0..500 {
            sink.record(report(1, "invalid token", None));
            sink.record(report(1, "BadDeviceToken", None));
        }
        assert_eq!(lines(&path).len(), 1);
        // An APNs timestamp later than what is known is news (the token was registered again, and dropped).
        let later = now_ms() + 60_000;
        sink.record(report(1, "Unregistered", Some(later)));
        sink.record(report(1, "Unregistered", Some(later)));
        assert_eq!(lines(&path).len(), 2);
        store.feedback_log().unwrap().flush().unwrap();
        assert_eq!(lines(&log_path).len(), 2);
        assert_eq!(store.len(), 1);
        // After a restart the bad token is still known: no new line.
        drop(store);
        let store = InvalidTokenStore::open(&path, None).unwrap();
        let sink: &dyn InvalidTokenSink = &store;
        sink.record(report(2, "BadDeviceToken", None));
        sink.record(report(2, "BadDeviceToken", None));
        assert_eq!(lines(&path).len(), 3);
        // A day after herald learnt it, a token still reported bad is news again (learnt anew).
        let first = store.list(None, 0)[0].clone();
        let day_later = first.learnt_ms + UNTIMED_REPORT_AGAIN_AFTER.as_millis() as u64;
        let again = InvalidTokenEntry {
            reason: "invalid token".into(),
            ..first.clone()
        };
        assert!(!store.record_learnt(again.clone(), false, day_later - 1));
        assert!(store.record_learnt(again, false, day_later));
        assert_eq!(lines(&path).len(), 4);
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
}
