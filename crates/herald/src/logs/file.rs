//! A log file that many tasks append lines to: buffered, flushed on a short interval and on demand, and reopened
//! on request so logrotate can move it away.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Why a log file could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum LogFileError {
    #[error("opening log file {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing log file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
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

/// An append-only log file.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    mode: u32,
    out: Mutex<BufWriter<File>>,
}

impl LogFile {
    /// Opens (creating with `mode`, e.g. 0o644) `path` for appending; creates missing parent directories.
    pub fn open(path: &Path, mode: u32) -> Result<Self, LogFileError> {
        let file = open_append(path, mode)?;
        Ok(LogFile {
            path: path.to_owned(),
            mode,
            out: Mutex::new(BufWriter::with_capacity(256 * 1024, file)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line (the newline is added here).
    pub fn write_line(&self, line: &str) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        // A full disk must not stop deliveries; the error surfaces on the next flush.
        let _ = out
            .write_all(line.as_bytes())
            .and_then(|_| out.write_all(b"\n"));
    }

    pub fn flush(&self) -> Result<(), LogFileError> {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        out.flush().map_err(|source| LogFileError::Write {
            path: self.path.clone(),
            source,
        })
    }

    /// Flushes, then reopens the path: after logrotate renamed the file, new lines go to a new file. Lines the old
    /// file did not take (a full disk) are not lost: they go to the new one, and the old file's error is returned.
    pub fn reopen(&self) -> Result<(), LogFileError> {
        let file = open_append(&self.path, self.mode)?;
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let flushed = out.flush();
        let old = std::mem::replace(&mut *out, BufWriter::with_capacity(256 * 1024, file));
        // Without flushing again (the dropped writer would): what is left is written once, to the new file.
        let (_, pending) = old.into_parts();
        let pending = pending.unwrap_or_else(|p| p.into_inner());
        let carried = out.write_all(&pending);
        flushed.and(carried).map_err(|source| LogFileError::Write {
            path: self.path.clone(),
            source,
        })
    }

    /// Bytes written and not yet taken by the file.
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.out
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .buffer()
            .len()
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
    for c in field.chars() {
        match c {
            '@' => line.push_str("\\@"),
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

    #[test]
    fn escaping_keeps_one_line_and_the_field_count() {
        let mut line = String::new();
        push_escaped(&mut line, "a@b\\c\nd\u{1}");
        assert_eq!(line, "a\\@b\\\\c\\nd\\x01");
        assert!(!line.contains('\n'));
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
