//! A log file that many tasks append lines to: buffered, flushed on a short interval and on demand, and reopened
//! on request so logrotate can move it away.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// How many bytes of lines a log holds in memory before it writes them out; while its file takes no writes (a full
/// disk), lines past this are dropped and counted.
const BUFFER: usize = 256 * 1024;

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
}

/// Whether `path` could be opened for appending, as [`LogFile::open`] would (creating it and its missing
/// parents), without creating or changing anything: an existing file must open for appending; otherwise the
/// nearest existing ancestor must be a directory a file can be created in (checked with a probe file that is
/// removed at once).
pub fn check_writable(path: &Path) -> Result<(), String> {
    if path.as_os_str().is_empty() {
        return Err("no file name".into());
    }
    if path.is_dir() {
        return Err("is a directory".into());
    }
    if path.exists() {
        return OpenOptions::new()
            .append(true)
            .open(path)
            .map(|_| ())
            .map_err(|e| format!("cannot be opened for appending: {e}"));
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
                    Ok(())
                }
                Err(e) => Err(format!("cannot create files in {}: {e}", d.display())),
            };
        }
        dir = d.parent();
    }
    Err("no existing parent directory".into())
}

/// An append-only log file. Lines are kept in memory, whole, until a flush (or a full buffer) writes them out; a line
/// is never split between two writes that could land apart: when the file takes only part of the buffer, the rest
/// (beginning with the end of the torn line) waits for the next write, and while the file takes nothing, new lines
/// past [`BUFFER`] bytes are dropped, counted, and reported (a warning when dropping starts and when the file takes
/// writes again, the count in [`LogFile::flush`]'s error and [`LogFile::dropped_lines`]).
pub struct LogFile {
    path: PathBuf,
    mode: u32,
    capacity: usize,
    out: Mutex<Out>,
    /// Lines dropped since the file was opened.
    dropped: AtomicU64,
}

struct Out {
    sink: Box<dyn Write + Send>,
    /// Lines not yet taken by the file. Whole lines, except that when `torn` it begins with the end of a line
    /// whose beginning the file took.
    buf: Vec<u8>,
    torn: bool,
    /// Whether the last write failed.
    failing: bool,
    /// Lines dropped since the file last took a write.
    dropped_now: u64,
}

impl std::fmt::Debug for LogFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogFile")
            .field("path", &self.path)
            .field("mode", &format_args!("{:o}", self.mode))
            .field("dropped", &self.dropped_lines())
            .finish_non_exhaustive()
    }
}

impl LogFile {
    /// Opens (creating with `mode`, e.g. 0o644) `path` for appending; creates missing parent directories.
    pub fn open(path: &Path, mode: u32) -> Result<Self, LogFileError> {
        let file = open_append(path, mode)?;
        Ok(Self::with_sink(path, mode, Box::new(file), BUFFER))
    }

    fn with_sink(path: &Path, mode: u32, sink: Box<dyn Write + Send>, capacity: usize) -> Self {
        LogFile {
            path: path.to_owned(),
            mode,
            capacity,
            out: Mutex::new(Out {
                sink,
                buf: Vec::with_capacity(capacity),
                torn: false,
                failing: false,
                dropped_now: 0,
            }),
            dropped: AtomicU64::new(0),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lines dropped since the file was opened because it took no writes (a full disk) while the memory buffer was
    /// full.
    pub fn dropped_lines(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Appends one line (the newline is added here). A full disk does not stop the caller: the line waits in
    /// memory, or is dropped and counted when memory is full too.
    pub fn write_line(&self, line: &str) {
        let len = line.len() + 1;
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        if !out.buf.is_empty() && out.buf.len() + len > self.capacity {
            // The error is reported by the next flush.
            let _ = self.write_out(&mut out);
            if !out.buf.is_empty() && out.buf.len() + len > self.capacity {
                self.drop_line(&mut out);
                return;
            }
        }
        out.buf.extend_from_slice(line.as_bytes());
        out.buf.push(b'\n');
        if out.buf.len() >= self.capacity {
            // A line longer than the buffer: written at once.
            let _ = self.write_out(&mut out);
        }
    }

    /// Writes out the lines held in memory.
    pub fn flush(&self) -> Result<(), LogFileError> {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        self.write_out(&mut out)
            .map_err(|source| self.write_error(&out, source))
    }

    /// Flushes, then reopens the path: after logrotate renamed the file, new lines go to a new file. Whole lines the
    /// old file did not take (a full disk) are not lost: they go to the new one, and the old file's error is
    /// returned. The end of a line the old file took only the beginning of is dropped (and counted), not written as
    /// a fragment at the top of the new file.
    pub fn reopen(&self) -> Result<(), LogFileError> {
        let file = open_append(&self.path, self.mode)?;
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let flushed = self.write_out(&mut out);
        if out.torn {
            let end = out
                .buf
                .iter()
                .position(|&b| b == b'\n')
                .map_or(out.buf.len(), |i| i + 1);
            out.buf.drain(..end);
            out.torn = false;
            self.drop_line(&mut out);
        }
        out.sink = Box::new(file);
        let carried = self.write_out(&mut out);
        flushed
            .and(carried)
            .map_err(|source| self.write_error(&out, source))
    }

    fn write_error(&self, out: &Out, source: std::io::Error) -> LogFileError {
        LogFileError::Write {
            path: self.path.clone(),
            source,
            dropped: out.dropped_now,
        }
    }

    fn drop_line(&self, out: &mut Out) {
        out.dropped_now += 1;
        self.dropped.fetch_add(1, Ordering::Relaxed);
        if out.dropped_now == 1 {
            tracing::warn!(
                "log file {}: the file takes no writes and {} KiB of lines wait in memory: new lines are dropped \
                 until it takes writes again",
                self.path.display(),
                out.buf.len() / 1024
            );
        }
    }

    /// Writes what the buffer holds, keeping in it what the file did not take.
    fn write_out(&self, out: &mut Out) -> std::io::Result<()> {
        let mut written = 0;
        let mut result = Ok(());
        while written < out.buf.len() {
            match out.sink.write(&out.buf[written..]) {
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
            out.torn = out.buf[written - 1] != b'\n';
            out.buf.drain(..written);
        }
        let result = result.and_then(|_| out.sink.flush());
        match &result {
            Ok(()) if out.failing => {
                out.failing = false;
                if out.dropped_now > 0 {
                    tracing::warn!(
                        "log file {} takes writes again; {} line(s) were dropped meanwhile",
                        self.path.display(),
                        out.dropped_now
                    );
                }
                out.dropped_now = 0;
            }
            Ok(()) => {}
            Err(_) => out.failing = true,
        }
        result
    }

    /// Bytes written and not yet taken by the file.
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.out.lock().unwrap_or_else(|p| p.into_inner()).buf.len()
    }
}

impl Drop for LogFile {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

fn open_append(path: &Path, mode: u32) -> Result<File, LogFileError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| LogFileError::Open {
            path: path.to_owned(),
            source,
        })?;
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
    options.open(path).map_err(|source| LogFileError::Open {
        path: path.to_owned(),
        source,
    })
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
        let log = LogFile::with_sink(Path::new("test.log"), 0o644, Box::new(disk.clone()), 64);
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
        let log = LogFile::with_sink(Path::new("exact.log"), 0o644, Box::new(disk.clone()), 64);
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
        let log = LogFile::with_sink(&path, 0o644, Box::new(disk.clone()), 1024);
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

    /// A line longer than the buffer is written whole.
    #[test]
    fn a_line_longer_than_the_buffer_is_written_whole() {
        let disk = Disk::with_room(1 << 20);
        let log = LogFile::with_sink(Path::new("big.log"), 0o644, Box::new(disk.clone()), 16);
        log.write_line("short");
        let long = "x".repeat(100);
        log.write_line(&long);
        log.flush().unwrap();
        assert_eq!(disk.text(), format!("short\n{long}\n"));
        assert_eq!(log.dropped_lines(), 0);
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
}
