//! A log file that many tasks append lines to: buffered in memory, written out by a thread of its own (when a buffer
//! fills, on a short interval and on demand), and reopened on request so logrotate can move it away.
//!
//! No caller ever waits for the disk: [`LogFile::write_line`] only appends to a memory buffer under a short lock,
//! and the file's writer thread takes the buffer out under that lock and writes it with the lock released. A file
//! that takes no writes (a full disk, a hung NFS server, a FIFO nobody reads) only makes its lines wait in memory,
//! then be dropped and counted.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How many bytes of lines wait in memory before the writer thread is woken to write them out (otherwise it
/// writes them at the next flush, every 200 ms).
const FILL: usize = 256 * 1024;

/// How many bytes of lines a log holds in memory at most, those being written included: while its file takes no
/// writes (a full disk, a blocked write), lines past this are dropped and counted. Big enough for a burst at
/// 80,000 lines a second to wait out a disk that stalls for a few hundred milliseconds.
pub const CAP: usize = 8 * 1024 * 1024;

/// How often a file whose last write failed is tried again while lines wait for it.
const RETRY: Duration = Duration::from_millis(200);

/// How long one write to the file may take before it counts as blocked (a hung NFS server, a FIFO whose reader
/// stopped), an outage like a failed write; a shorter one is a file that takes writes, however slowly.
const STALL: Duration = Duration::from_secs(1);

/// How long [`LogFile::flush`] waits for the writer thread before it reports the file as stalled.
const FLUSH_WAIT: Duration = Duration::from_secs(5);

/// How long [`LogFile::reopen`] waits for the writer thread (busy with a write to the old file) before it returns.
const REOPEN_WAIT: Duration = Duration::from_secs(1);

/// How long the flush at shutdown waits for the files ([`flush_all_within`]); lines not written by then are
/// dropped and counted.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// Why a log file could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum LogFileError {
    #[error("opening log file {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "writing log file {path}: {source} ({dropped} line(s) dropped since it last took a write)"
    )]
    Write {
        path: PathBuf,
        source: std::io::Error,
        /// Lines dropped since the file last took a write (the memory buffer was full).
        dropped: u64,
    },
    /// A write to the file did not return within `waited` (a hung network file system, a FIFO whose reader
    /// stopped); lines wait in memory meanwhile, up to [`CAP`], and are dropped past that.
    #[error(
        "log file {path}: a write did not return within {:.1} s; new lines wait in memory ({dropped} line(s) \
         dropped since it last took a write)",
        .waited.as_secs_f64()
    )]
    Stalled {
        path: PathBuf,
        waited: Duration,
        dropped: u64,
    },
    /// At shutdown the file did not take its lines within `waited` (its write did not return, or kept failing):
    /// they are dropped (and counted), the end of a line it took only the beginning of included.
    #[error(
        "log file {path} took no writes within {:.1} s: {lines} line(s) dropped{}",
        .waited.as_secs_f64(),
        last_error_note(.last_error.as_ref())
    )]
    Abandoned {
        path: PathBuf,
        waited: Duration,
        lines: u64,
        /// Why its last write failed, when one failed (none for a write that did not return).
        last_error: Option<std::io::Error>,
    },
}

/// The end of [`LogFileError::Abandoned`]'s text: the failure of the file's last write, when it failed.
fn last_error_note(error: Option<&std::io::Error>) -> String {
    error.map_or_else(String::new, |e| format!(" (its last write failed: {e})"))
}

/// Whether `path` could be opened for appending, as [`LogFile::open`] would (creating it and its missing
/// parents), without creating or changing anything: an existing file must open for appending; otherwise the
/// nearest existing ancestor must be a directory a file can be created in (checked with a probe file that is
/// removed at once). `Ok(Some(note))` when it can be used but deserves a word: a FIFO that no process reads yet
/// (it is opened without waiting for a reader; `herald serve` waits for one at start).
pub fn check_writable(path: &Path) -> Result<Option<String>, String> {
    if path.as_os_str().is_empty() {
        return Err("no file name".into());
    }
    if path.is_dir() {
        return Err("is a directory".into());
    }
    if path.exists() {
        let mut options = OpenOptions::new();
        options.append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            // A plain open of a FIFO blocks until a process opens it for reading.
            options.custom_flags(libc::O_NONBLOCK);
        }
        return match options.open(path) {
            Ok(_) => Ok(None),
            #[cfg(unix)]
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) && is_fifo(path) => Ok(Some(
                "is a FIFO that no process reads yet: herald serve waits at start until one opens it for reading"
                    .into(),
            )),
            Err(e) => Err(format!("cannot be opened for appending: {e}")),
        };
    }
    let mut dir = path.parent();
    while let Some(d) = dir {
        let d = if d.as_os_str().is_empty() {
            Path::new(".")
        } else {
            d
        };
        if d.exists() {
            if !d.is_dir() {
                return Err(format!("{} is not a directory", d.display()));
            }
            let probe = d.join(format!(".herald-check-{}", std::process::id()));
            return match OpenOptions::new().write(true).create_new(true).open(&probe) {
                Ok(_) => {
                    let _ = std::fs::remove_file(&probe);
                    Ok(None)
                }
                Err(e) => Err(format!("cannot create files in {}: {e}", d.display())),
            };
        }
        dir = d.parent();
    }
    Err("no existing parent directory".into())
}

#[cfg(unix)]
fn is_fifo(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo())
}

/// An append-only log file. Lines are kept in memory, whole, until its writer thread writes them out (when
/// [`FILL`] bytes wait, at a flush, at a reopen); a line is never split between two writes that could land apart:
/// when the file takes only part of the buffer, the rest (beginning with the end of the torn line) is written before
/// anything else, and while the file takes nothing, new lines past [`CAP`] bytes are dropped, counted, and reported
/// (a warning when dropping starts and when the file takes writes again, the count in [`LogFile::flush`]'s error
/// and [`LogFile::dropped_lines`]). So are lines past [`CAP`] while the file takes its writes only slower than lines
/// come, with a warning when dropping starts and a note once the file caught up. A file whose last write failed is
/// tried again every 200 ms.
pub struct LogFile {
    shared: Arc<Shared>,
}

/// What a log file's callers and its writer thread share.
struct Shared {
    path: PathBuf,
    mode: u32,
    /// Bytes waiting in `front` that wake the writer thread.
    fill: usize,
    /// Bytes held in memory at most (see [`CAP`]).
    cap: usize,
    /// How long a write may take before it counts as blocked (see [`STALL`]).
    stall: Duration,
    state: Mutex<State>,
    /// Wakes the writer thread.
    work: Condvar,
    /// Wakes those waiting for a flush or a reopen to be done.
    done: Condvar,
    /// Lines dropped since the file was opened.
    dropped: AtomicU64,
}

struct State {
    /// Lines appended since the writer thread last took them.
    front: Vec<u8>,
    /// Bytes held elsewhere: in the writer thread's buffer (not yet taken by the file; when the last write tore a
    /// line it begins with that line's end) and in `reopen`.
    held: usize,
    /// Lines (newlines) held in memory, in `front` and elsewhere.
    lines: u64,
    /// Whether the writer was woken for a full `front` and has not taken it yet.
    woken: bool,
    /// Flushes asked for, and the last one the writer thread finished (it wrote or tried to write everything
    /// appended before it was asked for).
    flush_asked: u64,
    flush_done: u64,
    /// A reopen asked for and not yet begun: the lines appended before it, for the old file.
    reopen: Option<Vec<u8>>,
    reopen_asked: u64,
    reopen_done: u64,
    /// Why the last reopen failed (`Ok` when it did not).
    reopen_result: Result<(), Failure>,
    /// Why the last write failed, while the file takes no writes.
    error: Option<std::io::Error>,
    /// Lines dropped since the last outage ended, or the file caught up after it took its writes slower than lines
    /// came (or since it was opened).
    dropped_now: u64,
    /// A write failed, or blocked for longer than [`STALL`], since the last outage ended: the next write that goes
    /// through ends this one.
    outage: bool,
    /// The writer thread ends after its next round.
    closing: bool,
    /// Given up at shutdown: nothing more is written, new lines are dropped.
    abandoned: bool,
    /// The warnings given about the file, in order.
    #[cfg(test)]
    warned: Vec<Warned>,
}

/// A warning about a log file, as tests see it.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Warned {
    /// The file, when opened, ended in a partial line: new lines start on the next one.
    PartialLine,
    Dropping,
    TakesWritesAgain,
    /// Not a warning: the note that a file slower than its lines caught up with them.
    CaughtUp,
}

enum Failure {
    Open(std::io::Error),
    Write(std::io::Error),
}

impl std::fmt::Debug for LogFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogFile")
            .field("path", &self.shared.path)
            .field("mode", &format_args!("{:o}", self.shared.mode))
            .field("dropped", &self.dropped_lines())
            .finish_non_exhaustive()
    }
}

impl LogFile {
    /// Opens (creating with `mode`, e.g. 0o644) `path` for appending; creates missing parent directories. Starts
    /// the file's writer thread.
    pub fn open(path: &Path, mode: u32) -> Result<Self, LogFileError> {
        Self::open_sized(path, mode, FILL, CAP)
    }

    /// [`LogFile::open`] holding at most `cap` bytes in memory (and woken at that much).
    #[cfg(test)]
    pub(crate) fn open_with_cap(path: &Path, mode: u32, cap: usize) -> Result<Self, LogFileError> {
        Self::open_sized(path, mode, cap, cap)
    }

    fn open_sized(path: &Path, mode: u32, fill: usize, cap: usize) -> Result<Self, LogFileError> {
        open_append(path, mode)
            .and_then(|file| {
                let partial = ends_in_partial_line(&file, path);
                Self::start_with(path, mode, Box::new(file), fill, cap, STALL, partial)
            })
            .map_err(|source| LogFileError::Open {
                path: path.to_owned(),
                source,
            })
    }

    /// A log file writing to `sink` (tests), its writer thread woken when `fill` bytes wait and holding at most `cap`.
    #[cfg(test)]
    pub(crate) fn with_sink(
        path: &Path,
        mode: u32,
        sink: Box<dyn Write + Send>,
        fill: usize,
        cap: usize,
    ) -> Self {
        Self::with_sink_and_stall(path, mode, sink, fill, cap, STALL)
    }

    /// [`LogFile::with_sink`], a write counting as blocked once it took `stall`.
    #[cfg(test)]
    fn with_sink_and_stall(
        path: &Path,
        mode: u32,
        sink: Box<dyn Write + Send>,
        fill: usize,
        cap: usize,
        stall: Duration,
    ) -> Self {
        Self::start_with(path, mode, sink, fill, cap, stall, false)
            .expect("starting a log writer thread")
    }

    /// Starts the writer thread of a file writing to `sink`; `partial` when the file ends in a partial line (see
    /// [`ends_in_partial_line`]): it is said, and the first line written starts on a line of its own.
    fn start_with(
        path: &Path,
        mode: u32,
        sink: Box<dyn Write + Send>,
        fill: usize,
        cap: usize,
        stall: Duration,
        partial: bool,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            path: path.to_owned(),
            mode,
            fill,
            cap,
            stall,
            state: Mutex::new(State {
                front: Vec::with_capacity(fill),
                held: 0,
                lines: 0,
                woken: false,
                flush_asked: 0,
                flush_done: 0,
                reopen: None,
                reopen_asked: 0,
                reopen_done: 0,
                reopen_result: Ok(()),
                error: None,
                dropped_now: 0,
                outage: false,
                closing: false,
                abandoned: false,
                #[cfg(test)]
                warned: Vec::new(),
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            dropped: AtomicU64::new(0),
        });
        if partial {
            shared.note_partial_line(&mut shared.lock());
        }
        let writer = Writer {
            shared: shared.clone(),
            sink,
            back: Vec::with_capacity(fill),
            torn: false,
            after_partial_line: partial,
            taken: 0,
        };
        std::thread::Builder::new()
            .name("herald-log".into())
            .spawn(move || writer.run())?;
        Ok(LogFile { shared })
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Lines dropped since the file was opened because it took no writes (a full disk, a blocked write) while the
    /// memory buffer was full, or because it still held them when the flush at shutdown gave up on it.
    pub fn dropped_lines(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Appends one line (the newline is added here). Never waits for the disk: the line waits in memory for the
    /// writer thread, or is dropped and counted when memory is full. Wakes the writer thread when [`FILL`] bytes
    /// wait (once, not for every line past that).
    pub fn write_line(&self, line: &str) {
        let shared = &*self.shared;
        let len = line.len() + 1;
        let mut st = shared.lock();
        let pending = st.front.len() + st.held;
        if st.abandoned || (pending > 0 && pending + len > shared.cap) {
            shared.drop_lines(&mut st, 1);
            return;
        }
        st.front.extend_from_slice(line.as_bytes());
        st.front.push(b'\n');
        st.lines += 1;
        let wake = st.front.len() >= shared.fill && !st.woken;
        if wake {
            st.woken = true;
        }
        drop(st);
        if wake {
            shared.work.notify_one();
        }
    }

    /// Has the writer thread write out the lines held in memory, and waits for it (at most 5 s: a file whose write
    /// does not return is reported as [`LogFileError::Stalled`]). Blocks the calling thread: async tasks use
    /// [`LogFile::flush_soon`] (or [`flush_all_within`]).
    pub fn flush(&self) -> Result<(), LogFileError> {
        let asked = self.ask_flush();
        self.wait_flushed(asked, Instant::now() + FLUSH_WAIT)
    }

    /// Has the writer thread write out the lines held in memory, without waiting for it; returns the error of the
    /// file's last write while the file takes no writes.
    pub fn flush_soon(&self) -> Result<(), LogFileError> {
        let shared = &*self.shared;
        let mut st = shared.lock();
        st.flush_asked += 1;
        shared.work.notify_one();
        match &st.error {
            Some(e) => Err(shared.write_error(&st, copy_error(e))),
            None => Ok(()),
        }
    }

    /// Asks for a flush; returns its number for [`LogFile::wait_flushed`].
    fn ask_flush(&self) -> u64 {
        let mut st = self.shared.lock();
        st.flush_asked += 1;
        self.shared.work.notify_one();
        st.flush_asked
    }

    /// Whether flush `asked` is done and left nothing unwritten: its writes went through, or it held nothing
    /// (or the file was given up). A file whose write failed is not settled while lines wait for it: its writer
    /// tries again every 200 ms.
    fn settled(&self, asked: u64) -> bool {
        let st = self.shared.lock();
        let nothing_held = st.front.is_empty() && st.held == 0;
        st.abandoned || (st.flush_done >= asked && (st.error.is_none() || nothing_held))
    }

    /// Waits until flush `asked` is done, or `deadline`.
    fn wait_flushed(&self, asked: u64, deadline: Instant) -> Result<(), LogFileError> {
        let shared = &*self.shared;
        let st = self.wait_until(deadline, |st| Ok(st.flush_done >= asked || st.abandoned))?;
        match &st.error {
            Some(e) => Err(shared.write_error(&st, copy_error(e))),
            None => Ok(()),
        }
    }

    /// Writes out what the file holds, then reopens the path: after logrotate renamed the file, new lines go to a
    /// new file. Lines written before the call go to the old file, later ones to the new file. Whole lines the old
    /// file did not take (a full disk) are not lost: they go to the new one, and the old file's error is returned.
    /// The end of a line the old file took only the beginning of is dropped (and counted), not written as a
    /// fragment at the top of the new file. The writer thread opens the new file; this waits for it at most 1 s (a
    /// write to the old file that does not return: [`LogFileError::Stalled`], and the reopen happens when it
    /// returns).
    pub fn reopen(&self) -> Result<(), LogFileError> {
        let asked = self.ask_reopen();
        self.wait_reopened(asked, Instant::now() + REOPEN_WAIT)
    }

    /// Asks for a reopen; returns its number for [`LogFile::wait_reopened`].
    fn ask_reopen(&self) -> u64 {
        let shared = &*self.shared;
        let mut st = shared.lock();
        let before = std::mem::replace(&mut st.front, Vec::with_capacity(shared.fill));
        st.held += before.len();
        match &mut st.reopen {
            // Asked again before the writer thread began the first one: these lines go to the old file too.
            Some(old) => old.extend_from_slice(&before),
            None => st.reopen = Some(before),
        }
        st.reopen_asked += 1;
        shared.work.notify_one();
        st.reopen_asked
    }

    fn wait_reopened(&self, asked: u64, deadline: Instant) -> Result<(), LogFileError> {
        let shared = &*self.shared;
        let st = self.wait_until(deadline, |st| {
            if st.reopen_done < asked && st.abandoned {
                Err(())
            } else {
                Ok(st.reopen_done >= asked)
            }
        })?;
        match &st.reopen_result {
            Ok(()) => Ok(()),
            Err(Failure::Open(e)) => Err(LogFileError::Open {
                path: shared.path.clone(),
                source: copy_error(e),
            }),
            Err(Failure::Write(e)) => Err(shared.write_error(&st, copy_error(e))),
        }
    }

    /// Waits on the writer thread until `done` says so, or `deadline` ([`LogFileError::Stalled`]). `done` may also
    /// say the wait is hopeless (`Err`), which is reported as a stall at once.
    fn wait_until(
        &self,
        deadline: Instant,
        mut done: impl FnMut(&State) -> Result<bool, ()>,
    ) -> Result<MutexGuard<'_, State>, LogFileError> {
        let shared = &*self.shared;
        let started = Instant::now();
        let mut st = shared.lock();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match done(&st) {
                Ok(true) => return Ok(st),
                Ok(false) if !left.is_zero() => {}
                _ => {
                    return Err(LogFileError::Stalled {
                        path: shared.path.clone(),
                        waited: started.elapsed(),
                        dropped: st.dropped_now,
                    });
                }
            }
            st = shared
                .done
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Gives the file up after `waited` at shutdown ([`LogFile::abandon`]), saying how many lines that dropped and
    /// why its last write failed, if it did.
    fn give_up(&self, waited: Duration) -> LogFileError {
        let last_error = self.shared.lock().error.as_ref().map(copy_error);
        let lines = self.abandon();
        LogFileError::Abandoned {
            path: self.shared.path.clone(),
            waited,
            lines,
            last_error,
        }
    }

    /// Gives the file up (the flush at shutdown ran out of time): the lines it holds are dropped and counted, and so
    /// are later ones; its writer thread ends when its write returns. Returns the lines dropped here.
    fn abandon(&self) -> u64 {
        let shared = &*self.shared;
        let mut st = shared.lock();
        if st.abandoned {
            return 0;
        }
        st.abandoned = true;
        let lines = st.lines;
        st.lines = 0;
        st.front = Vec::new();
        st.reopen = None;
        shared.dropped.fetch_add(lines, Ordering::Relaxed);
        st.dropped_now += lines;
        shared.work.notify_one();
        shared.done.notify_all();
        lines
    }

    /// Bytes written and not yet taken by the file.
    #[cfg(test)]
    fn pending(&self) -> usize {
        let st = self.shared.lock();
        st.front.len() + st.held
    }
}

impl Drop for LogFile {
    /// Writes out what the file holds (waiting at most 5 s), then lets its writer thread end.
    fn drop(&mut self) {
        let _ = self.flush();
        let mut st = self.shared.lock();
        st.closing = true;
        self.shared.work.notify_one();
    }
}

/// Has every file write out what it holds, and waits (without blocking the runtime) until they did or `limit`
/// passed: the files that did not take their lines by then (a write that does not return, or that keeps failing:
/// a full disk, tried again every 200 ms meanwhile) are given up, their lines dropped and counted, the end of a
/// torn line included ([`LogFileError::Abandoned`]). For the flush at shutdown, with [`SHUTDOWN_WAIT`]. Returns the
/// errors of the files that could not be written.
pub async fn flush_all_within(files: &[&LogFile], limit: Duration) -> Vec<LogFileError> {
    let started = Instant::now();
    let asked: Vec<u64> = files.iter().map(|f| f.ask_flush()).collect();
    while !files.iter().zip(&asked).all(|(f, &a)| f.settled(a)) && started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut errors = Vec::new();
    for (f, &a) in files.iter().zip(&asked) {
        if f.settled(a) {
            // Done: its result (at once).
            errors.extend(f.wait_flushed(a, Instant::now()).err());
        } else {
            errors.push(f.give_up(started.elapsed()));
        }
    }
    errors
}

/// Waits for flushes asked for with [`LogFile::ask_flush`], all until `deadline` (blocking).
fn wait_all_flushed(files: &[&LogFile], asked: &[u64], deadline: Instant) -> Vec<LogFileError> {
    files
        .iter()
        .zip(asked)
        .filter_map(|(f, &a)| f.wait_flushed(a, deadline).err())
        .collect()
}

/// Has every file write out what it holds and waits for them (at most 5 s together; a file whose write does not
/// return is reported as [`LogFileError::Stalled`]). Blocks the calling thread.
pub fn flush_all(files: &[&LogFile]) -> Vec<LogFileError> {
    let asked: Vec<u64> = files.iter().map(|f| f.ask_flush()).collect();
    wait_all_flushed(files, &asked, Instant::now() + FLUSH_WAIT)
}

/// Reopens every file (see [`LogFile::reopen`]), waiting at most 1 s for them together.
pub fn reopen_all(files: &[&LogFile]) -> Vec<LogFileError> {
    let asked: Vec<u64> = files.iter().map(|f| f.ask_reopen()).collect();
    let deadline = Instant::now() + REOPEN_WAIT;
    files
        .iter()
        .zip(&asked)
        .filter_map(|(f, &a)| f.wait_reopened(a, deadline).err())
        .collect()
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write_error(&self, st: &State, source: std::io::Error) -> LogFileError {
        LogFileError::Write {
            path: self.path.clone(),
            source,
            dropped: st.dropped_now,
        }
    }

    /// Says that the file, as opened, ends in a partial line (a write cut short, by an earlier herald or by this
    /// one before a reopen dropped the line's end): it is left as it is, and the next line starts on a line of its own.
    fn note_partial_line(&self, _st: &mut State) {
        tracing::warn!(
            "log file {} ended in a partial line (a write cut short earlier); it is left as is and new lines start on \
             the next line",
            self.path.display()
        );
        #[cfg(test)]
        _st.warned.push(Warned::PartialLine);
    }

    fn drop_lines(&self, st: &mut State, n: u64) {
        st.dropped_now += n;
        self.dropped.fetch_add(n, Ordering::Relaxed);
        if st.dropped_now == n && !st.abandoned {
            tracing::warn!(
                "log file {}: {} KiB of lines wait in memory, the most it holds (the file takes no writes, or takes \
                 them slower than lines come): new lines are dropped until it takes writes again",
                self.path.display(),
                (st.front.len() + st.held) / 1024
            );
            #[cfg(test)]
            st.warned.push(Warned::Dropping);
        }
    }
}

/// A copy of `e` (an `io::Error` is not `Clone`): the same OS error, or the same kind and text.
fn copy_error(e: &std::io::Error) -> std::io::Error {
    match e.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code),
        None => std::io::Error::new(e.kind(), e.to_string()),
    }
}

/// A log file's writer thread: the only one that touches the file.
struct Writer {
    shared: Arc<Shared>,
    sink: Box<dyn Write + Send>,
    /// Lines taken out of `front` and not yet taken by the file. Whole lines, except that when `torn` it begins
    /// with the end of a line whose beginning the file took.
    back: Vec<u8>,
    torn: bool,
    /// The file ends in a partial line this writer will not finish (left by an earlier herald, or by this one when a
    /// reopen dropped its end): a newline goes before the next line, so that it does not run into that one.
    after_partial_line: bool,
    /// Lines the file took since it was opened.
    taken: u64,
}

impl Writer {
    fn run(mut self) {
        let shared = self.shared.clone();
        let mut last_try = Instant::now();
        // Lines dropped (in all) when the last round ended.
        let mut dropped_seen = 0;
        loop {
            let mut st = shared.lock();
            loop {
                if st.abandoned {
                    return;
                }
                let waiting = !st.front.is_empty() || st.held > 0;
                let failing = st.error.is_some() && waiting;
                // A full `front` does not hasten the retry of a file whose last write failed: the round would only
                // fail again, at once and for as long as the outage lasts.
                if (st.front.len() >= shared.fill && !failing)
                    || st.flush_asked > st.flush_done
                    || st.reopen.is_some()
                    || st.closing
                {
                    break;
                }
                if failing {
                    // Tried again every RETRY while lines wait for a file whose last write failed.
                    let left = RETRY.saturating_sub(last_try.elapsed());
                    if left.is_zero() {
                        break;
                    }
                    // Asleep until then; a full `front` wakes it no sooner (nor every line past it).
                    st.woken = st.front.len() >= shared.fill;
                    st = shared
                        .work
                        .wait_timeout(st, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                } else {
                    // Asleep from here: the next line that fills `front` wakes it.
                    st.woken = false;
                    st = shared.work.wait(st).unwrap_or_else(|p| p.into_inner());
                }
            }
            let taken = self.taken;
            let flush = st.flush_asked;
            let closing = st.closing;
            if let Some(before) = st.reopen.take() {
                let asked = st.reopen_asked;
                drop(st);
                let result = self.reopen(before);
                let mut st = shared.lock();
                st.reopen_done = asked;
                st.reopen_result = result;
                shared.done.notify_all();
            } else {
                drop(st);
            }
            // Whatever the file holds after the reopen, then what was appended meanwhile.
            let mut st = shared.lock();
            let took = self.back.is_empty();
            if took {
                std::mem::swap(&mut st.front, &mut self.back);
                st.held = self.held(&st);
            }
            drop(st);
            let mut result = self.write_out();
            // Whether this round wrote (or tried to write) everything appended before it began.
            let mut whole = true;
            if result.is_ok() && !took {
                let mut st = shared.lock();
                if st.reopen.is_none() {
                    std::mem::swap(&mut st.front, &mut self.back);
                    st.held = self.held(&st);
                    drop(st);
                    result = self.write_out();
                } else {
                    // A reopen was asked for while the earlier lines went out: the lines appended since it belong
                    // to the new file, after those appended before it. The next round (at once) writes both.
                    whole = false;
                }
            }
            last_try = Instant::now();
            let mut st = shared.lock();
            let wrote = result.is_ok() && self.taken > taken;
            self.settle(&mut st, result.err());
            // Caught up: this round's writes went through, no line was dropped since the last round ended, and less
            // than a buffer's fill waits now.
            let dropped = shared.dropped.load(Ordering::Relaxed);
            if wrote && dropped == dropped_seen && st.front.len() + st.held < shared.fill {
                self.caught_up(&mut st);
            }
            dropped_seen = dropped;
            if whole {
                st.flush_done = st.flush_done.max(flush);
            }
            shared.done.notify_all();
            drop(st);
            if self.back.is_empty() && self.back.capacity() > 2 * shared.fill {
                // A long outage grew the buffers: give the memory back.
                self.back.shrink_to(shared.fill);
            }
            if closing && whole {
                return;
            }
        }
    }

    /// Writes `back` to the old file, opens the path again, and writes to the new file what the old one did not
    /// take (except the end of a torn line); `before` holds the lines appended before the reopen was asked for.
    fn reopen(&mut self, before: Vec<u8>) -> Result<(), Failure> {
        if self.back.is_empty() {
            self.back = before;
        } else {
            self.back.extend_from_slice(&before);
        }
        // When the path cannot be opened, the lines stay for the old file.
        let file = open_append(&self.shared.path, self.shared.mode).map_err(Failure::Open)?;
        let flushed = self.write_out();
        let mut st = self.shared.lock();
        self.settle(&mut st, flushed.as_ref().err().map(copy_error));
        if st.abandoned {
            // Given up at shutdown meanwhile: every line it held, the torn one's end included, was counted as
            // dropped then; none goes to the new file.
            self.back.clear();
            self.torn = false;
            st.held = self.held(&st);
            drop(st);
            self.sink = Box::new(file);
            return flushed.map_err(Failure::Write);
        }
        if self.torn {
            let end = memchr::memchr(b'\n', &self.back).map_or(self.back.len(), |i| i + 1);
            self.back.drain(..end);
            self.torn = false;
            st.held = self.held(&st);
            st.lines = st.lines.saturating_sub(1);
            self.shared.drop_lines(&mut st, 1);
        }
        drop(st);
        // Looked at only now (and not under the lock): when the path still names the old file (reopened with no
        // rotation), it ends in the beginning of the line just dropped.
        self.after_partial_line = ends_in_partial_line(&file, &self.shared.path);
        if self.after_partial_line {
            self.shared.note_partial_line(&mut self.shared.lock());
        }
        self.sink = Box::new(file);
        let carried = self.write_out();
        let mut st = self.shared.lock();
        self.settle(&mut st, carried.as_ref().err().map(copy_error));
        flushed.and(carried).map_err(Failure::Write)
    }

    /// Bytes held outside `front`.
    fn held(&self, st: &State) -> usize {
        self.back.len() + st.reopen.as_ref().map_or(0, Vec::len)
    }

    /// Records a write's outcome: what is held, and whether the file takes writes. A write that went through ends
    /// an outage, whether the writes before it failed (a full disk) or did not return for a while (a write blocked
    /// past [`STALL`], which sets no error): the lines dropped meanwhile are reported, and counting starts again,
    /// so that the next outage warns when it starts dropping and reports only its own drops. Lines dropped while
    /// the file takes its writes, only slower than lines come, end no outage: nothing is said when a write goes
    /// through; their episode ends once the file caught up ([`Writer::caught_up`]), else they are counted with the
    /// outage that follows.
    fn settle(&self, st: &mut State, error: Option<std::io::Error>) {
        st.held = self.held(st);
        match error {
            None => {
                st.error = None;
                if st.outage {
                    // Said after every outage, whether it dropped lines or not: the errors reported while it lasted
                    // (or a write that took longer than STALL) get their end. Given up at shutdown: its lines were
                    // counted as dropped, and nothing more is said about it.
                    if !st.abandoned {
                        tracing::warn!(
                            "log file {} takes writes again; {} line(s) were dropped meanwhile",
                            self.shared.path.display(),
                            st.dropped_now
                        );
                        #[cfg(test)]
                        st.warned.push(Warned::TakesWritesAgain);
                    }
                    st.dropped_now = 0;
                    st.outage = false;
                }
            }
            Some(e) => {
                st.error = Some(e);
                st.outage = true;
            }
        }
    }

    /// Ends an episode of lines dropped while the file took its writes, only slower than lines came, once it caught
    /// up with them (a round wrote lines with none dropped since the round before, and less than a buffer's fill
    /// waits): a note says how many were dropped, and counting starts again, so that a later episode (a slow one, or
    /// an outage: a full disk) warns when it starts dropping and reports only its own drops. No `takes writes again`:
    /// writes never stopped. A slow file that stays behind (its buffer full again before it drained) does not
    /// catch up, and does not warn at every round.
    fn caught_up(&self, st: &mut State) {
        if st.outage || st.abandoned || st.dropped_now == 0 {
            return;
        }
        tracing::info!(
            "log file {} caught up with its lines; {} line(s) were dropped while it took writes slower than lines came",
            self.shared.path.display(),
            st.dropped_now
        );
        st.dropped_now = 0;
        #[cfg(test)]
        st.warned.push(Warned::CaughtUp);
    }

    /// Writes what `back` holds, keeping in it what the file did not take; the lines it took are no longer
    /// counted as held.
    fn write_out(&mut self) -> std::io::Result<()> {
        let mut written = 0;
        let mut result = Ok(());
        let mut blocked = false;
        if self.after_partial_line && !self.back.is_empty() {
            let started = Instant::now();
            // Nothing of `back` goes out before the newline did.
            result = self.break_partial_line();
            blocked |= started.elapsed() >= self.shared.stall;
        }
        while result.is_ok() && written < self.back.len() {
            let started = Instant::now();
            let wrote = self.sink.write(&self.back[written..]);
            blocked |= started.elapsed() >= self.shared.stall;
            match wrote {
                Ok(0) => {
                    result = Err(ErrorKind::WriteZero.into());
                    break;
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if written > 0 {
            self.torn = self.back[written - 1] != b'\n';
            let lines = memchr::memchr_iter(b'\n', &self.back[..written]).count() as u64;
            self.taken += lines;
            self.back.drain(..written);
            let mut st = self.shared.lock();
            st.lines = st.lines.saturating_sub(lines);
            st.held = self.held(&st);
        }
        if blocked {
            self.shared.lock().outage = true;
        }
        result.and_then(|_| self.sink.flush())
    }

    /// Writes the newline that ends a partial line the file was found with, so that the next line starts on a
    /// line of its own; the torn line stays as it is, visibly torn.
    fn break_partial_line(&mut self) -> std::io::Result<()> {
        loop {
            match self.sink.write(b"\n") {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(_) => {
                    self.after_partial_line = false;
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Opens `path` for appending, creating it with `mode` and its missing parent directories.
fn open_append(path: &Path, mode: u32) -> std::io::Result<File> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    options.open(path)
}

/// Whether `file`, just opened at `path` for appending, ends in a partial line: a regular file, not empty, whose last
/// byte is no newline (a write cut short by a full disk, in a herald that then stopped, or before a reopen dropped
/// the line's end). What cannot be told (a FIFO, a file that cannot be read, a path that names another file by now)
/// counts as not.
fn ends_in_partial_line(file: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{FileExt, MetadataExt};
        let Ok(opened) = file.metadata() else {
            return false;
        };
        if !opened.is_file() || opened.len() == 0 {
            return false;
        }
        // The file was opened for appending only: it is read through the path, if that still names it.
        let Ok(reader) = File::open(path) else {
            return false;
        };
        let same = reader
            .metadata()
            .is_ok_and(|m| m.dev() == opened.dev() && m.ino() == opened.ino());
        let mut last = [0u8];
        same && reader.read_exact_at(&mut last, opened.len() - 1).is_ok() && last[0] != b'\n'
    }
    #[cfg(not(unix))]
    {
        let _ = (file, path);
        false
    }
}

/// Appends `field` to `line`, escaping what would break the `@`-delimited layout: `@`, `\`, and control
/// characters get a backslash (newline as `\n`), the rule Momentum documents for its acctlog
/// (docs/momentum-compat.md#mainlog).
pub fn push_escaped(line: &mut String, field: &str) {
    escape(line, field, false);
}

/// [`push_escaped`] for a field written between double quotes (the apn_logger's default `"%sa"`): `"` gets a
/// backslash too, so the field cannot end the quotes early.
pub fn push_escaped_in_quotes(line: &mut String, field: &str) {
    escape(line, field, true);
}

fn escape(line: &mut String, field: &str, in_quotes: bool) {
    for c in field.chars() {
        match c {
            '@' => line.push_str("\\@"),
            '"' if in_quotes => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            c if c.is_control() => {
                use std::fmt::Write as _;
                let _ = write!(line, "\\x{:02x}", c as u32);
            }
            c => line.push(c),
        }
    }
}

/// Sinks for tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::io::Write;
    use std::sync::{Arc, Condvar, Mutex};

    /// A file whose writes block while its gate is closed (a FIFO whose reader was stopped, a hung NFS server), and
    /// keeps what it is given once the gate is open.
    #[derive(Clone, Default)]
    pub struct Gate {
        open: Arc<(Mutex<bool>, Condvar)>,
        data: Arc<Mutex<Vec<u8>>>,
    }

    impl Gate {
        pub fn open(&self) {
            *self.open.0.lock().unwrap() = true;
            self.open.1.notify_all();
        }

        pub fn text(&self) -> String {
            String::from_utf8(self.data.lock().unwrap().clone()).unwrap()
        }
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (open, opened) = &*self.open;
            let mut is_open = open.lock().unwrap();
            while !*is_open {
                is_open = opened.wait(is_open).unwrap();
            }
            self.data.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reopen whose flush fails (the disk is full: `/dev/full`) reports it, and keeps the lines for the new file
    /// instead of dropping them.
    #[test]
    fn a_reopen_that_cannot_flush_keeps_the_lines_and_says_so() {
        let file = LogFile::open(Path::new("/dev/full"), 0o644).unwrap();
        file.write_line("a line the full disk does not take");
        let err = file.reopen().unwrap_err();
        assert!(err.to_string().contains("/dev/full"), "{err}");
        assert_eq!(file.pending(), "a line the full disk does not take\n".len());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("main.ec");
        let ok = LogFile::open(&path, 0o644).unwrap();
        ok.write_line("kept");
        ok.reopen().unwrap();
        ok.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "kept\n");
    }

    /// A disk with `room` bytes left: it takes what fits (a short write) and then refuses with ENOSPC.
    #[derive(Clone, Default)]
    struct Disk {
        data: std::sync::Arc<Mutex<Vec<u8>>>,
        room: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Disk {
        fn with_room(room: usize) -> Self {
            let disk = Disk::default();
            disk.room.store(room, Ordering::Relaxed);
            disk
        }

        fn text(&self) -> String {
            String::from_utf8(self.data.lock().unwrap().clone()).unwrap()
        }
    }

    impl Write for Disk {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.room.load(Ordering::Relaxed));
            if n == 0 {
                return Err(std::io::Error::from_raw_os_error(28));
            }
            self.room.fetch_sub(n, Ordering::Relaxed);
            self.data.lock().unwrap().extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// While the disk is full, lines wait in memory up to the buffer's size and later ones are dropped and counted;
    /// once it has room again every line the file holds is whole: no record lacks its newline or runs into the next
    /// (a line that filled the buffer to the byte used to be kept without its newline and merged with the next one).
    #[test]
    fn a_full_disk_drops_whole_lines_counts_them_and_never_merges_two() {
        let disk = Disk::with_room(30);
        let log = LogFile::with_sink(Path::new("test.log"), 0o644, Box::new(disk.clone()), 64, 64);
        let lines: Vec<String> = (0..40)
            .map(|i| format!("record {i:0>width$}", width = 1 + i % 4))
            .collect();
        for (i, line) in lines.iter().enumerate() {
            log.write_line(line);
            if i == 10 {
                let err = log.flush().unwrap_err();
                assert!(err.to_string().contains("test.log"), "{err}");
            }
        }
        let err = log.flush().unwrap_err();
        let dropped = log.dropped_lines();
        assert!(dropped > 0, "nothing was dropped");
        assert!(
            err.to_string()
                .contains(&format!("{dropped} line(s) dropped")),
            "{err}"
        );
        assert!(log.pending() <= 64);

        disk.room.store(usize::MAX / 2, Ordering::Relaxed);
        log.flush().unwrap();
        assert_eq!(log.pending(), 0);
        let text = disk.text();
        assert!(text.ends_with('\n'), "{text:?}");
        let written: Vec<&str> = text.lines().collect();
        let mut expected = lines.iter();
        for line in &written {
            assert!(
                expected.any(|l| l == line),
                "{line:?} is not one of the records, in order: {text:?}"
            );
        }
        assert_eq!(
            written.len() as u64 + dropped,
            lines.len() as u64,
            "{text:?}"
        );

        // Counting starts again: a later outage reports only its own drops.
        log.write_line("after");
        log.flush().unwrap();
        assert!(disk.text().ends_with("\nafter\n"));
        assert_eq!(log.dropped_lines(), dropped);
    }

    /// On a full disk, a line exactly as long as the room left in the buffer used to be kept without its newline
    /// (which no longer fitted), and ran into the next line once the disk had room again. Now it is dropped whole.
    #[test]
    fn a_line_that_would_fill_the_buffer_to_the_byte_is_not_kept_without_its_newline() {
        let disk = Disk::with_room(0);
        let log = LogFile::with_sink(
            Path::new("exact.log"),
            0o644,
            Box::new(disk.clone()),
            64,
            64,
        );
        let first = "a".repeat(31);
        let second = "b".repeat(32);
        log.write_line(&first);
        log.write_line(&second);
        log.write_line("c");
        assert!(log.flush().is_err());
        disk.room.store(1 << 20, Ordering::Relaxed);
        log.flush().unwrap();
        log.write_line("d");
        log.flush().unwrap();
        assert_eq!(disk.text(), format!("{first}\nc\nd\n"));
        assert_eq!(log.dropped_lines(), 1);
    }

    /// A reopen after the old file took only the beginning of a line does not write the rest of it at the top of the
    /// new file: it is counted as dropped, and the whole lines after it go to the new file.
    #[test]
    fn a_reopen_does_not_carry_the_end_of_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apnlog.ec");
        let disk = Disk::with_room(5);
        let log = LogFile::with_sink(&path, 0o644, Box::new(disk.clone()), 1024, 1024);
        log.write_line("first line");
        log.write_line("second line");
        assert!(log.flush().is_err());
        assert_eq!(disk.text(), "first");
        let err = log.reopen().unwrap_err();
        assert!(err.to_string().contains("apnlog.ec"), "{err}");
        assert_eq!(log.dropped_lines(), 1);
        log.write_line("third line");
        log.flush().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "second line\nthird line\n"
        );
    }

    /// A line longer than the buffer is written whole; so is a line longer than what memory holds when nothing
    /// else waits.
    #[test]
    fn a_line_longer_than_the_buffer_is_written_whole() {
        let disk = Disk::with_room(1 << 20);
        let log = LogFile::with_sink(
            Path::new("big.log"),
            0o644,
            Box::new(disk.clone()),
            16,
            1024,
        );
        log.write_line("short");
        let long = "x".repeat(100);
        log.write_line(&long);
        log.flush().unwrap();
        assert_eq!(disk.text(), format!("short\n{long}\n"));
        assert_eq!(log.dropped_lines(), 0);

        let disk = Disk::with_room(1 << 20);
        let log = LogFile::with_sink(Path::new("big.log"), 0o644, Box::new(disk.clone()), 16, 16);
        log.write_line(&long);
        log.flush().unwrap();
        assert_eq!(disk.text(), format!("{long}\n"));
        assert_eq!(log.dropped_lines(), 0);
    }

    /// The flush at shutdown does not wait for a file whose write does not return: after its time limit it gives
    /// the file up and counts the lines it held as dropped (the stop used to hang in the flush until SIGKILL).
    #[test]
    fn the_flush_at_shutdown_gives_up_on_a_blocked_file_in_time() {
        let gate = testing::Gate::default();
        let log = LogFile::with_sink(
            Path::new("blocked.log"),
            0o644,
            Box::new(gate.clone()),
            16,
            1024,
        );
        for i in 0..10 {
            log.write_line(&format!("line {i}"));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let started = Instant::now();
        let errors = runtime.block_on(flush_all_within(&[&log], Duration::from_millis(300)));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        let text = errors[0].to_string();
        assert!(
            text.contains("blocked.log") && text.contains("line(s) dropped"),
            "{text}"
        );
        // Every line is accounted for: those the blocked write held and those still waiting are dropped.
        assert_eq!(log.dropped_lines(), 10);
        log.write_line("after the stop");
        assert_eq!(log.dropped_lines(), 11);
        gate.open();
    }

    /// `herald check` on a log path that is a FIFO nobody reads: opening it for writing used to wait for a reader
    /// forever. It is now noted at once, and a FIFO with a reader is fine.
    #[cfg(unix)]
    #[test]
    fn checking_a_fifo_without_a_reader_does_not_hang() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("mainlog.fifo");
        let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o644) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || {
            let _ = tx.send(check_writable(&path));
        });
        let checked = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("checking a FIFO without a reader hangs");
        let note = checked.unwrap().expect("a note about the missing reader");
        assert!(note.contains("FIFO"), "{note}");

        use std::os::unix::fs::OpenOptionsExt;
        let _reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        assert_eq!(check_writable(&fifo), Ok(None));
    }

    #[test]
    fn escaping_keeps_one_line_and_the_field_count() {
        let mut line = String::new();
        push_escaped(&mut line, "a@b\\c\nd\u{1}");
        assert_eq!(line, "a\\@b\\\\c\\nd\\x01");
        assert!(!line.contains('\n'));
        let mut quoted = String::new();
        push_escaped_in_quotes(&mut quoted, "x\" y@z");
        assert_eq!(quoted, "x\\\" y\\@z");
        let mut plain = String::new();
        push_escaped(&mut plain, "x\" y");
        assert_eq!(plain, "x\" y");
    }

    #[test]
    fn reopen_follows_a_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mainlog.ec");
        let log = LogFile::open(&path, 0o644).unwrap();
        log.write_line("one");
        log.flush().unwrap();
        std::fs::rename(&path, dir.path().join("mainlog.ec.1")).unwrap();
        log.reopen().unwrap();
        log.write_line("two");
        log.flush().unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("mainlog.ec.1")).unwrap(),
            "one\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
    }

    /// What a [`Scripted`] file does with one write.
    #[derive(Clone, Copy, Debug)]
    enum Step {
        /// Takes the first `n` bytes (a short write).
        Take(usize),
        /// Refuses with ENOSPC.
        Fail,
        /// Waits until the gate is open, then takes everything.
        HoldThenTake,
        /// Waits until the gate is open, then refuses with ENOSPC.
        HoldThenFail,
    }

    /// A file whose writes follow a script (then take everything), and that tells when a write waits at its gate.
    #[derive(Clone, Default)]
    struct Scripted {
        state: std::sync::Arc<(Mutex<Script>, Condvar)>,
    }

    #[derive(Default)]
    struct Script {
        steps: std::collections::VecDeque<Step>,
        open: bool,
        /// Writes that reached the gate.
        held: u64,
        data: Vec<u8>,
    }

    impl Scripted {
        fn new(steps: &[Step]) -> Self {
            let s = Scripted::default();
            s.state.0.lock().unwrap().steps.extend(steps);
            s
        }

        fn then(&self, step: Step) {
            self.state.0.lock().unwrap().steps.push_back(step);
        }

        fn set_open(&self, open: bool) {
            self.state.0.lock().unwrap().open = open;
            self.state.1.notify_all();
        }

        /// Waits (at most 10 s) until `n` writes have reached the gate.
        fn wait_held(&self, n: u64) {
            let (script, changed) = &*self.state;
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut st = script.lock().unwrap();
            while st.held < n {
                let left = deadline.saturating_duration_since(Instant::now());
                assert!(!left.is_zero(), "no write reached the gate");
                st = changed.wait_timeout(st, left).unwrap().0;
            }
        }

        fn text(&self) -> String {
            String::from_utf8(self.state.0.lock().unwrap().data.clone()).unwrap()
        }
    }

    impl Write for Scripted {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (script, changed) = &*self.state;
            let mut st = script.lock().unwrap();
            let step = st.steps.pop_front();
            if matches!(step, Some(Step::HoldThenTake | Step::HoldThenFail)) {
                st.held += 1;
                changed.notify_all();
                while !st.open {
                    st = changed.wait(st).unwrap();
                }
            }
            let n = match step {
                Some(Step::Fail | Step::HoldThenFail) => {
                    return Err(std::io::Error::from_raw_os_error(28));
                }
                Some(Step::Take(n)) => n.min(buf.len()),
                Some(Step::HoldThenTake) | None => buf.len(),
            };
            st.data.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The count of lines dropped "since it last took a write", as a flush reports it while the file's write
    /// does not return (without waiting for it).
    fn dropped_while_stalled(log: &LogFile) -> u64 {
        let asked = log.ask_flush();
        match log.wait_flushed(asked, Instant::now()) {
            Err(LogFileError::Stalled { dropped, .. }) => dropped,
            other => panic!("the file is not stalled: {other:?}"),
        }
    }

    /// The warnings given about `log` so far.
    fn warned(log: &LogFile) -> Vec<Warned> {
        log.shared.lock().warned.clone()
    }

    /// A file whose write blocks for a while (a FIFO whose reader stopped, a hung NFS server) sets no write error;
    /// once the write returns, the drops of that stall are reported and counting starts again. The count used to be
    /// reset only after a failed write, so a second stall neither warned when it started dropping nor reported its
    /// own drops: it reported both stalls' as "since it last took a write".
    #[test]
    fn each_stall_of_a_blocked_file_counts_its_own_drops() {
        let file = Scripted::new(&[Step::HoldThenTake]);
        // Every write that waits at the gate counts as blocked, however soon it is opened.
        let log = LogFile::with_sink_and_stall(
            Path::new("stall.log"),
            0o644,
            Box::new(file.clone()),
            64,
            64,
            Duration::ZERO,
        );
        let fill = "a".repeat(63);
        log.write_line(&fill);
        file.wait_held(1);
        for i in 0..3 {
            log.write_line(&format!("dropped {i}"));
        }
        assert_eq!(dropped_while_stalled(&log), 3);
        file.set_open(true);
        log.flush().unwrap();

        file.set_open(false);
        file.then(Step::HoldThenTake);
        log.write_line(&fill);
        file.wait_held(2);
        for i in 0..2 {
            log.write_line(&format!("dropped again {i}"));
        }
        assert_eq!(
            dropped_while_stalled(&log),
            2,
            "the first stall's drops count again"
        );
        file.set_open(true);
        log.flush().unwrap();
        assert_eq!(log.dropped_lines(), 5);
        assert_eq!(file.text(), format!("{fill}\n{fill}\n"));
        use Warned::{Dropping, TakesWritesAgain};
        assert_eq!(
            warned(&log),
            [Dropping, TakesWritesAgain, Dropping, TakesWritesAgain]
        );
    }

    /// Lines dropped while the file takes its writes, only slower than lines come (its writes return, neither
    /// failing nor blocking past the stall threshold), are counted, but end no outage: a write that goes through
    /// says nothing, and the next round's drops do not warn again. Every round used to warn that the file took
    /// no writes and then that it took writes again.
    #[test]
    fn a_file_slower_than_its_lines_does_not_warn_at_every_round() {
        let file = Scripted::new(&[Step::HoldThenTake]);
        // A write waiting at the gate stands for a slow one: it never counts as blocked.
        let log = LogFile::with_sink_and_stall(
            Path::new("busy.log"),
            0o644,
            Box::new(file.clone()),
            64,
            64,
            Duration::from_secs(24 * 3600),
        );
        let fill = "a".repeat(63);
        for round in 1..=3u64 {
            file.set_open(false);
            if round > 1 {
                file.then(Step::HoldThenTake);
            }
            log.write_line(&fill);
            file.wait_held(round);
            for i in 0..2 {
                log.write_line(&format!("dropped {round}.{i}"));
            }
            file.set_open(true);
            log.flush().unwrap();
        }
        assert_eq!(log.dropped_lines(), 6);
        assert_eq!(file.text(), format!("{fill}\n{fill}\n{fill}\n"));
        assert_eq!(warned(&log), [Warned::Dropping]);

        // A failed write is an outage: the write that goes through after it reports every drop and ends it.
        file.then(Step::Fail);
        log.write_line("refused once");
        assert!(log.flush().is_err());
        log.flush().unwrap();
        assert_eq!(warned(&log), [Warned::Dropping, Warned::TakesWritesAgain]);
        assert!(file.text().ends_with("\nrefused once\n"));
    }

    /// A file slower than its lines drops some, then catches up (a write goes through with nothing dropped since):
    /// that ends the slow episode, without `takes writes again`. A later outage (a full disk) then warns when it
    /// starts dropping, and reports only its own drops. The slow episode's drops used to be counted until the next
    /// outage ended, so the outage's first drops gave no warning and its errors reported the old drops as "dropped
    /// since it last took a write".
    #[test]
    fn an_outage_after_a_slow_file_caught_up_warns_when_it_starts_dropping() {
        let file = Scripted::new(&[Step::HoldThenTake]);
        // A write waiting at the gate stands for a slow one: it never counts as blocked.
        let log = LogFile::with_sink_and_stall(
            Path::new("later.log"),
            0o644,
            Box::new(file.clone()),
            64,
            64,
            Duration::from_secs(24 * 3600),
        );
        let fill = "a".repeat(63);
        log.write_line(&fill);
        file.wait_held(1);
        for i in 0..2 {
            log.write_line(&format!("slow {i}"));
        }
        file.set_open(true);
        log.flush().unwrap();
        assert_eq!(warned(&log), [Warned::Dropping]);

        // Caught up: a line goes through, nothing dropped meanwhile.
        log.write_line("caught up");
        log.flush().unwrap();
        assert_eq!(warned(&log), [Warned::Dropping, Warned::CaughtUp]);

        // A full disk: the write fails, and its retry waits at the (closed) gate until the disk has room.
        file.set_open(false);
        file.then(Step::Fail);
        file.then(Step::HoldThenTake);
        log.write_line("refused");
        assert!(log.flush().is_err());
        log.write_line(&fill);
        match log.flush_soon() {
            Err(LogFileError::Write { dropped, .. }) => {
                assert_eq!(dropped, 1, "the slow episode's drops count again")
            }
            other => panic!("the file takes writes: {other:?}"),
        }
        use Warned::{CaughtUp, Dropping, TakesWritesAgain};
        assert_eq!(warned(&log), [Dropping, CaughtUp, Dropping]);

        file.set_open(true);
        log.flush().unwrap();
        assert_eq!(
            warned(&log),
            [Dropping, CaughtUp, Dropping, TakesWritesAgain]
        );
        assert_eq!(log.dropped_lines(), 3);
        assert_eq!(file.text(), format!("{fill}\ncaught up\nrefused\n"));
    }

    /// A reopen asked for while the writer writes the lines an earlier failed write left (the lock released): the
    /// lines appended after the reopen request go to the new file, after the old file got every line appended
    /// before it. They used to be written to the old (rotated) file, ahead of lines appended before them.
    #[test]
    fn lines_after_a_reopen_asked_during_a_retry_go_to_the_new_file_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apnlog.ec");
        let old = Scripted::new(&[Step::Fail, Step::HoldThenTake]);
        let log = LogFile::with_sink(&path, 0o644, Box::new(old.clone()), 1024, 1024);
        log.write_line("before 1");
        assert!(log.flush().is_err());
        // The retry (200 ms later) writes "before 1" again, and waits at the gate.
        old.wait_held(1);
        log.write_line("before 2");
        let asked = log.ask_reopen();
        log.write_line("after 1");
        old.set_open(true);
        log.wait_reopened(asked, Instant::now() + Duration::from_secs(10))
            .unwrap();
        log.flush().unwrap();
        assert_eq!(old.text(), "before 1\nbefore 2\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after 1\n");
    }

    /// A shutdown that gives a file up while its writer reopens it with a torn line pending: the lines were all
    /// counted as dropped already; dropping the torn line's end then used to underflow the count of lines held (a
    /// panic on the writer thread in debug builds, which then never finished the reopen).
    #[test]
    fn giving_a_file_up_during_a_reopen_with_a_torn_line_does_not_underflow() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("torn.ec");
        let old = Scripted::new(&[Step::Take(5), Step::HoldThenFail]);
        let log = LogFile::with_sink(&path, 0o644, Box::new(old.clone()), 1024, 1024);
        log.write_line("first line");
        log.write_line("second line");
        let asked = log.ask_reopen();
        // The reopen writes to the old file, which takes "first" and then holds the next write.
        old.wait_held(1);
        assert_eq!(log.abandon(), 2);
        old.set_open(true);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut st = log.shared.lock();
        while st.reopen_done < asked {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the reopen did not finish");
            st = log
                .shared
                .done
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(st);
        assert!(
            !log.shared.state.is_poisoned(),
            "the writer thread panicked"
        );
        assert_eq!(old.text(), "first");
        // Each line counted once, and neither carried to the new file.
        assert_eq!(log.dropped_lines(), 2);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }
}

/// Full disks and torn lines: a file found ending in a partial line, the flush at shutdown of a file that refuses
/// writes, and the end of an outage that dropped nothing.
#[cfg(test)]
mod disk_trouble_tests {
    use super::*;

    /// A real file on a disk with `room` bytes left: it takes what fits (a short write), then refuses with ENOSPC.
    struct NearlyFull {
        file: File,
        room: usize,
    }

    impl Write for NearlyFull {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.room);
            if n == 0 {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.room -= n;
            self.file.write(&buf[..n])
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A file that refuses its first `refusals` writes with ENOSPC, then takes everything.
    #[derive(Clone, Default)]
    struct RefusesFirst {
        refusals: Arc<AtomicU64>,
        data: Arc<Mutex<Vec<u8>>>,
    }

    impl RefusesFirst {
        fn new(refusals: u64) -> Self {
            let file = RefusesFirst::default();
            file.refusals.store(refusals, Ordering::Relaxed);
            file
        }

        fn text(&self) -> String {
            String::from_utf8(self.data.lock().unwrap().clone()).unwrap()
        }
    }

    impl Write for RefusesFirst {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let refuse = self
                .refusals
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok();
            if refuse {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.data.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn warned(log: &LogFile) -> Vec<Warned> {
        log.shared.lock().warned.clone()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    /// A herald stopped while its disk was full left the file ending in part of a line; the next herald appended
    /// its first line to that part (`…@00/00-8679` then `1796687024@00/…`, one line). Now it says so and starts on
    /// the next line, leaving the torn line as it is.
    #[test]
    fn a_file_found_ending_in_a_partial_line_gets_new_lines_on_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mainlog.ec");
        std::fs::write(&path, "1796687000@00/00-1111@whole\n1796687001@00/00-8679").unwrap();
        let log = LogFile::open(&path, 0o644).unwrap();
        log.write_line("1796687024@00/00-2222@next");
        log.flush().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "1796687000@00/00-1111@whole\n1796687001@00/00-8679\n1796687024@00/00-2222@next\n"
        );
        assert_eq!(warned(&log), [Warned::PartialLine]);

        // A file ending in a whole line, or empty, gets nothing before its next line.
        for (name, before) in [("whole.ec", "a whole line\n"), ("empty.ec", "")] {
            let path = dir.path().join(name);
            std::fs::write(&path, before).unwrap();
            let log = LogFile::open(&path, 0o644).unwrap();
            log.write_line("next");
            log.flush().unwrap();
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                format!("{before}next\n")
            );
            assert_eq!(warned(&log), []);
        }
    }

    /// A file whose disk refuses even the newline that ends the partial line it was found with: no line goes
    /// before that newline, and it is written first once the disk takes writes.
    #[test]
    fn the_newline_after_a_partial_line_waits_for_the_disk_like_the_lines() {
        let file = RefusesFirst::new(1);
        let log = LogFile::start_with(
            Path::new("apnlog.ec"),
            0o644,
            Box::new(file.clone()),
            1024,
            1024,
            STALL,
            true,
        )
        .unwrap();
        log.write_line("next");
        assert!(log.flush().is_err());
        assert_eq!(file.text(), "");
        log.flush().unwrap();
        assert_eq!(file.text(), "\nnext\n");
    }

    /// `reopen logs` with no rotation (the path still names the file) after the disk took only the beginning of a
    /// line: the reopen drops that line's end, and the lines after it used to run into its beginning in the same
    /// file (`firstsecond line`). They now start on the next line.
    #[test]
    fn a_reopen_of_the_same_file_after_a_torn_write_starts_on_a_new_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mainlog.ec");
        let file = NearlyFull {
            file: open_append(&path, 0o644).unwrap(),
            room: 5,
        };
        let log = LogFile::with_sink(&path, 0o644, Box::new(file), 1024, 1024);
        log.write_line("first line");
        log.write_line("second line");
        assert!(log.flush().is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "first");
        assert!(log.reopen().is_err(), "the old file's error is reported");
        log.write_line("third line");
        log.flush().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "first\nsecond line\nthird line\n"
        );
        assert_eq!(log.dropped_lines(), 1);
        assert!(
            warned(&log).contains(&Warned::PartialLine),
            "{:?}",
            warned(&log)
        );
    }

    /// The flush at shutdown on a full disk: the lines it could not write (the end of the torn one included) used to
    /// be thrown away uncounted, reported as `0 line(s) dropped since it last took a write`. They are now counted
    /// and reported as dropped, with the disk's error.
    #[test]
    fn the_flush_at_shutdown_counts_the_lines_a_full_disk_did_not_take() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mainlog.ec");
        let file = NearlyFull {
            file: open_append(&path, 0o644).unwrap(),
            room: 5,
        };
        let log = LogFile::with_sink(&path, 0o644, Box::new(file), 1024, 1024);
        for line in ["first line", "second line", "third line"] {
            log.write_line(line);
        }
        let errors = runtime().block_on(flush_all_within(&[&log], Duration::from_millis(300)));
        assert_eq!(errors.len(), 1, "{errors:?}");
        match &errors[0] {
            LogFileError::Abandoned {
                lines, last_error, ..
            } => {
                assert_eq!(*lines, 3);
                assert_eq!(
                    last_error.as_ref().and_then(|e| e.raw_os_error()),
                    Some(libc::ENOSPC)
                );
            }
            other => panic!("not given up: {other}"),
        }
        let text = errors[0].to_string();
        assert!(
            text.contains("mainlog.ec took no writes within")
                && text.contains(": 3 line(s) dropped (its last write failed: "),
            "{text}"
        );
        assert_eq!(log.dropped_lines(), 3);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "first");
    }

    /// A disk that has room again within the shutdown's wait takes the lines: the flush at shutdown waits for a
    /// refused file (tried again every 200 ms) as it does for a blocked one, instead of giving up at the first
    /// refusal.
    #[test]
    fn the_flush_at_shutdown_waits_for_a_refused_file_to_take_its_lines() {
        let file = RefusesFirst::new(1);
        let log = LogFile::with_sink(
            Path::new("retried.log"),
            0o644,
            Box::new(file.clone()),
            1024,
            1024,
        );
        log.write_line("kept");
        let errors = runtime().block_on(flush_all_within(&[&log], Duration::from_secs(10)));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(file.text(), "kept\n");
        assert_eq!(log.dropped_lines(), 0);
    }

    /// An outage that dropped nothing (the disk refused a write, the line waited in memory, then went out) ends with
    /// `takes writes again` too, as it does when lines were dropped; it used to end silently after the errors.
    #[test]
    fn an_outage_that_dropped_nothing_still_says_it_ended() {
        let file = RefusesFirst::new(1);
        let log = LogFile::with_sink(
            Path::new("brief.log"),
            0o644,
            Box::new(file.clone()),
            1024,
            1024,
        );
        log.write_line("waited");
        match log.flush() {
            Err(LogFileError::Write { dropped, .. }) => assert_eq!(dropped, 0),
            other => panic!("the write was not refused: {other:?}"),
        }
        log.flush().unwrap();
        assert_eq!(file.text(), "waited\n");
        assert_eq!(log.dropped_lines(), 0);
        assert_eq!(warned(&log), [Warned::TakesWritesAgain]);
    }
}
