//! The invalid-token store's file writer: a thread of its own that appends the lines the store hands it, so that
//! no caller (a delivery task, the feedback poller, the task applying other nodes' entries) waits for the disk, and
//! none does under the store's lock.
//!
//! [`Writer::append`] only adds a whole line to a memory buffer under a short lock of its own. The thread takes the
//! buffer and writes it with no lock held, as soon as lines arrive (no batching delay). A line is never lost to a
//! failed write: what the file did not take (all of it, or the end of a line torn by a short write) stays first in
//! line and is written again every [`RETRY`] until the file takes it, and new lines wait behind it. A file that keeps
//! failing is warned about once per [`WARN_EVERY`] while it lasts, and once more when it takes writes again.
//! [`Writer::sync`] has the thread write everything appended so far and `fdatasync` it (the feedback poller's
//! batches: APNs forgets a list once read); a rewrite without dead lines ([`Writer::compact`]) is done by the thread
//! too, between two writes.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often a file whose last write failed is tried again while lines wait for it.
pub const RETRY: Duration = Duration::from_millis(200);

/// How often a file that keeps failing is warned about while it lasts.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// Where the writer thread writes: the store's file (tests put other sinks in its place).
pub trait Sink: Write + Send {
    /// Makes what was written durable (`fdatasync` for a file).
    fn sync(&mut self) -> std::io::Result<()>;
}

impl Sink for File {
    fn sync(&mut self) -> std::io::Result<()> {
        self.sync_data()
    }
}

/// Rewrites the file at the path with only its live entries, dropping those learnt before the cutoff (ms since the
/// epoch); the writer opens the path again after it.
pub type Compactor = fn(&Path, u64) -> std::io::Result<()>;

/// What the writer thread reports after each round: lines written to the file, and lines made durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Progress {
    written: u64,
    synced: u64,
}

struct State {
    /// Lines appended since the thread last took them.
    front: Vec<u8>,
    /// Lines appended since the start.
    appended: u64,
    /// Lines appended that the file took (all lines up to this count).
    written: u64,
    /// Lines appended that were synced.
    synced: u64,
    /// Sync everything up to this count.
    sync_asked: u64,
    /// A rewrite asked for: its cutoff. Counted as asked and done for those who wait for it.
    compact: Option<u64>,
    compact_asked: u64,
    compact_done: u64,
    /// Why the last write failed, while lines wait for the file.
    error: Option<String>,
    /// The thread is asked to write what it holds and end.
    closing: bool,
    /// The thread ended.
    ended: bool,
    /// Failed writes and warnings given, as tests see them.
    #[cfg(test)]
    failures: u64,
    #[cfg(test)]
    warnings: u64,
}

struct Shared {
    path: PathBuf,
    state: Mutex<State>,
    /// Wakes the thread.
    work: Condvar,
    /// Wakes those waiting for a round to end.
    done: Condvar,
    progress: tokio::sync::watch::Sender<Progress>,
    compactor: Compactor,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The writer of one store file.
pub struct Writer {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Writer {
    /// Starts the thread writing to `sink` (the file at `path`, opened for appending).
    pub fn start(path: &Path, sink: Box<dyn Sink>, compactor: Compactor) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            path: path.to_owned(),
            state: Mutex::new(State {
                front: Vec::new(),
                appended: 0,
                written: 0,
                synced: 0,
                sync_asked: 0,
                compact: None,
                compact_asked: 0,
                compact_done: 0,
                error: None,
                closing: false,
                ended: false,
                #[cfg(test)]
                failures: 0,
                #[cfg(test)]
                warnings: 0,
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            progress: tokio::sync::watch::Sender::new(Progress::default()),
            compactor,
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("herald-tokens".into())
                .spawn(move || run(&shared, sink))?
        };
        Ok(Writer {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Appends one line (the newline is added here). Never waits for the disk.
    pub fn append(&self, line: &str) {
        let mut st = self.shared.lock();
        st.front.extend_from_slice(line.as_bytes());
        st.front.push(b'\n');
        st.appended += 1;
        drop(st);
        self.shared.work.notify_one();
    }

    /// Has the thread rewrite the file with only its live entries (those learnt at or after `cutoff_ms`), once
    /// what waits before it is written.
    pub fn compact(&self, cutoff_ms: u64) {
        let mut st = self.shared.lock();
        st.compact = Some(st.compact.map_or(cutoff_ms, |c| c.max(cutoff_ms)));
        st.compact_asked += 1;
        drop(st);
        self.shared.work.notify_one();
    }

    /// Lines appended that the file has not taken yet.
    pub fn pending(&self) -> u64 {
        let st = self.shared.lock();
        st.appended - st.written
    }

    /// Waits (blocking the calling thread) until every line appended before the call is in the file and a rewrite
    /// asked for before it is done, at most `wait`; else why not.
    pub fn flush(&self, wait: Duration) -> Result<(), String> {
        let deadline = Instant::now() + wait;
        let shared = &*self.shared;
        let mut st = shared.lock();
        let (lines, compactions) = (st.appended, st.compact_asked);
        shared.work.notify_one();
        while st.written < lines || st.compact_done < compactions {
            if st.ended {
                return Err(self.why_waiting(&st, lines));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.why_waiting(&st, lines));
            }
            st = shared
                .done
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    /// Has the thread write every line appended so far and sync the file, and waits for it (without blocking an
    /// async thread), at most `wait`; else why not (the lines stay in memory and are written once the file takes
    /// them).
    pub async fn sync(&self, wait: Duration) -> Result<(), String> {
        let shared = &*self.shared;
        let asked = {
            let mut st = shared.lock();
            if st.synced >= st.appended {
                return Ok(());
            }
            st.sync_asked = st.appended;
            st.appended
        };
        shared.work.notify_one();
        let mut progress = shared.progress.subscribe();
        let synced = tokio::time::timeout(wait, progress.wait_for(|p| p.synced >= asked)).await;
        match synced {
            Ok(Ok(_)) => Ok(()),
            _ => {
                let st = shared.lock();
                if st.synced >= asked {
                    return Ok(());
                }
                Err(self.why_waiting(&st, asked))
            }
        }
    }

    fn why_waiting(&self, st: &State, lines: u64) -> String {
        let waiting = lines.saturating_sub(st.written);
        match &st.error {
            Some(e) => format!(
                "writing the invalid-token store {}: {e} ({waiting} entries wait in memory and are written once it \
                 takes them)",
                self.shared.path.display()
            ),
            None if st.ended => format!(
                "the invalid-token store {}: its writer ended with {waiting} entries not written",
                self.shared.path.display()
            ),
            None => format!(
                "the invalid-token store {}: a write or sync has not returned yet ({waiting} entries wait in memory)",
                self.shared.path.display()
            ),
        }
    }

    /// Has the thread write what it holds, sync the file and end; waits for it at most `wait` (a file that takes
    /// no writes then keeps its lines in memory until the process ends).
    pub fn close(&self, wait: Duration) {
        let shared = &*self.shared;
        let deadline = Instant::now() + wait;
        let mut st = shared.lock();
        st.closing = true;
        shared.work.notify_one();
        while !st.ended {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::error!(
                    "the invalid-token store {}: {} entries not written within {:.0} s at the end",
                    shared.path.display(),
                    st.appended - st.written,
                    wait.as_secs_f64()
                );
                return;
            }
            st = shared
                .done
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(st);
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
    }

    /// Waits until `cond` holds of the writer's counters (tests), at most `wait`; returns them then.
    #[cfg(test)]
    pub fn wait_for(&self, wait: Duration, cond: impl Fn(&Counts) -> bool) -> Option<Counts> {
        let deadline = Instant::now() + wait;
        let shared = &*self.shared;
        let mut st = shared.lock();
        loop {
            let counts = Counts {
                written: st.written,
                failures: st.failures,
                warnings: st.warnings,
            };
            if cond(&counts) {
                return Some(counts);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            st = shared
                .done
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// The writer's counters, as tests see them.
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub struct Counts {
    pub written: u64,
    pub failures: u64,
    pub warnings: u64,
}

/// A file that takes no writes: since when, when it was last warned about.
struct Outage {
    since: Instant,
    warned: Instant,
    retry_at: Instant,
}

/// Writes what `back` holds; what was written is taken off its front, so after a failure `back` begins with what
/// the file has not taken (the end of a torn line included).
fn write_out(sink: &mut dyn Sink, back: &mut Vec<u8>) -> std::io::Result<()> {
    let mut off = 0;
    let result = loop {
        if off == back.len() {
            break sink.flush();
        }
        match sink.write(&back[off..]) {
            Ok(0) => break Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => off += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    back.drain(..off);
    result
}

fn run(shared: &Shared, mut sink: Box<dyn Sink>) {
    // Bytes taken from `front` the file has not taken yet.
    let mut back: Vec<u8> = Vec::new();
    let mut outage: Option<Outage> = None;
    loop {
        let (upto, sync_to, compact, closing) = {
            let mut st = shared.lock();
            loop {
                let asked = !st.front.is_empty()
                    || st.sync_asked > st.synced
                    || st.compact.is_some()
                    || st.closing;
                match &outage {
                    None if asked => break,
                    None => {
                        st = shared.work.wait(st).unwrap_or_else(|p| p.into_inner());
                    }
                    Some(_) if st.closing => break,
                    Some(o) => {
                        let left = o.retry_at.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        st = shared
                            .work
                            .wait_timeout(st, left)
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                    }
                }
            }
            back.append(&mut st.front);
            (st.appended, st.sync_asked, st.compact.take(), st.closing)
        };
        let mut result = write_out(&mut *sink, &mut back);
        let all_written = back.is_empty();
        let mut synced = false;
        if result.is_ok() && (closing || sync_to > shared.lock().synced) {
            result = sink.sync();
            synced = result.is_ok();
        }
        let mut compacted = false;
        if let Some(cutoff) = compact
            && result.is_ok()
            && all_written
        {
            if let Err(e) = (shared.compactor)(&shared.path, cutoff) {
                tracing::warn!(
                    "the invalid-token store {}: could not rewrite it without its dead lines: {e}",
                    shared.path.display()
                );
            }
            // Whatever became of the rewrite, the path holds the file to append to: the new one once it was put in
            // place, the old one otherwise.
            match OpenOptions::new().append(true).open(&shared.path) {
                Ok(file) => sink = Box::new(file),
                Err(e) => tracing::warn!(
                    "the invalid-token store {}: could not open it again after a rewrite: {e}",
                    shared.path.display()
                ),
            }
            compacted = true;
        }
        let mut st = shared.lock();
        if all_written {
            st.written = upto;
        }
        if synced {
            st.synced = upto;
        }
        if compacted {
            st.compact_done = st.compact_asked;
        } else if let Some(cutoff) = compact {
            st.compact = Some(st.compact.map_or(cutoff, |c| c.max(cutoff)));
        }
        let now = Instant::now();
        match result {
            Ok(()) => {
                st.error = None;
                if let Some(o) = outage.take() {
                    tracing::info!(
                        "the invalid-token store {} takes writes again after {:.0} s; the entries that waited are written",
                        shared.path.display(),
                        now.duration_since(o.since).as_secs_f64()
                    );
                }
            }
            Err(e) => {
                #[cfg(test)]
                {
                    st.failures += 1;
                }
                let waiting = st.appended - st.written;
                let warn = match &mut outage {
                    None => {
                        outage = Some(Outage {
                            since: now,
                            warned: now,
                            retry_at: now + RETRY,
                        });
                        true
                    }
                    Some(o) => {
                        o.retry_at = now + RETRY;
                        let due = now.duration_since(o.warned) >= WARN_EVERY;
                        if due {
                            o.warned = now;
                        }
                        due
                    }
                };
                if warn {
                    #[cfg(test)]
                    {
                        st.warnings += 1;
                    }
                    tracing::error!(
                        "writing the invalid-token store {}: {e}; {waiting} entries wait in memory and are tried \
                         again every {} ms",
                        shared.path.display(),
                        RETRY.as_millis()
                    );
                }
                st.error = Some(e.to_string());
            }
        }
        let progress = Progress {
            written: st.written,
            synced: st.synced,
        };
        let end = closing;
        if end {
            if st.written < st.appended {
                tracing::error!(
                    "the invalid-token store {}: {} entries not written at the end",
                    shared.path.display(),
                    st.appended - st.written
                );
            }
            st.ended = true;
        }
        drop(st);
        shared.progress.send_replace(progress);
        shared.done.notify_all();
        if end {
            return;
        }
    }
}
