//! The durable invalid-token store: an append-only JSON-lines file read back on start, with an in-memory index
//! that keeps one entry per (domain, token) — the one with the latest invalidation time.

use std::collections::HashMap;
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
    /// herald learnt it.
    pub timestamp_ms: u64,
    /// `apns` (an answer to a notification) or `feedback` (the binary feedback service).
    pub source: String,
}

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

/// Why the store could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum TokenStoreError {
    #[error("invalid-token store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

struct Inner {
    index: HashMap<(String, String), InvalidTokenEntry>,
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

impl InvalidTokenStore {
    /// Opens (or creates) the store at `path`, reading every entry back; unreadable lines are skipped with a
    /// warning. `feedback_log` receives one line per new entry.
    pub fn open(path: &Path, feedback_log: Option<LogFile>) -> Result<Self, TokenStoreError> {
        let io = |source| TokenStoreError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let mut index = HashMap::new();
        if let Ok(file) = File::open(path) {
            for (n, line) in BufReader::new(file).lines().enumerate() {
                let line = line.map_err(io)?;
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<InvalidTokenEntry>(&line) {
                    Ok(e) => merge(&mut index, e),
                    Err(e) => tracing::warn!(
                        "{}:{}: skipping an unreadable entry: {e}",
                        path.display(),
                        n + 1
                    ),
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
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

    /// Records an entry unless the same (domain, token) is known with the same or a later time. Returns whether
    /// it was new.
    pub fn record(&self, entry: InvalidTokenEntry) -> bool {
        let shared = self.shared.get();
        let copy = shared.map(|_| entry.clone());
        let new = self.record_here(entry, true);
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

    /// Records an entry another node learnt (from the shared bucket): no feedback log line (that node wrote it),
    /// and not put back in the bucket.
    pub fn record_from_peer(&self, value: &[u8]) -> bool {
        match serde_json::from_slice::<InvalidTokenEntry>(value) {
            Ok(entry) => self.record_here(entry, false),
            Err(e) => {
                tracing::warn!("an invalid-token entry of the shared bucket is unreadable: {e}");
                false
            }
        }
    }

    fn record_here(&self, entry: InvalidTokenEntry, learnt_here: bool) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let key = (entry.domain.clone(), entry.token.clone());
        if inner
            .index
            .get(&key)
            .is_some_and(|old| old.timestamp_ms >= entry.timestamp_ms)
        {
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
        inner.index.insert(key, entry);
        true
    }

    /// Entries of `domain` (all domains when `None`) invalidated at or after `since_ms`, oldest first.
    pub fn list(&self, domain: Option<&str>, since_ms: u64) -> Vec<InvalidTokenEntry> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<InvalidTokenEntry> = inner
            .index
            .values()
            .filter(|e| domain.is_none_or(|d| e.domain == d) && e.timestamp_ms >= since_ms)
            .cloned()
            .collect();
        out.sort_by(|a, b| {
            (a.timestamp_ms, &a.domain, &a.token).cmp(&(b.timestamp_ms, &b.domain, &b.token))
        });
        out
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .index
            .len()
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

fn merge(index: &mut HashMap<(String, String), InvalidTokenEntry>, e: InvalidTokenEntry) {
    let key = (e.domain.clone(), e.token.clone());
    if index
        .get(&key)
        .is_none_or(|old| old.timestamp_ms < e.timestamp_ms)
    {
        index.insert(key, e);
    }
}

/// `ts@domain@token@reason@apns-timestamp-ms@source`.
fn feedback_line(e: &InvalidTokenEntry) -> String {
    let mut line = format!("{}@", now_ms() / 1000);
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
    fn record(&self, token: InvalidToken) {
        InvalidTokenStore::record(
            self,
            InvalidTokenEntry {
                domain: token.domain.to_string(),
                token: token.token.to_hex(),
                reason: token.reason,
                timestamp_ms: token.timestamp_ms.unwrap_or_else(now_ms),
                source: "apns".into(),
            },
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
            source: "apns".into(),
        }
    }

    #[test]
    fn entries_are_deduplicated_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("invalid.jsonl");
        let log_path = dir.path().join("feedback.log");
        let store =
            InvalidTokenStore::open(&path, Some(LogFile::open(&log_path, 0o644).unwrap())).unwrap();
        assert!(store.record(entry("aa", 10)));
        assert!(
            !store.record(entry("aa", 10)),
            "the same report twice is one entry"
        );
        assert!(
            !store.record(entry("aa", 5)),
            "an older report adds nothing"
        );
        assert!(
            store.record(entry("aa", 20)),
            "a later invalidation replaces the entry"
        );
        assert!(store.record(entry("bb", 15)));
        // Dropping the store writes out its feedback log.
        drop(store);
        let store = InvalidTokenStore::open(&path, None).unwrap();
        let all = store.list(None, 0);
        assert_eq!(
            all.iter()
                .map(|e| (e.token.as_str(), e.timestamp_ms))
                .collect::<Vec<_>>(),
            [("bb", 15), ("aa", 20)]
        );
        assert_eq!(store.list(Some("apps.example"), 16).len(), 1);
        assert!(store.list(Some("other.example"), 0).is_empty());
        let log = std::fs::read_to_string(log_path).unwrap();
        assert_eq!(log.lines().count(), 3);
        assert!(
            log.lines()
                .next()
                .unwrap()
                .ends_with("@apps.example@aa@Unregistered@10@apns")
        );
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
    }
}
