//! Momentum-format logs: the `ec_logger` mainlog (R, D, T, P and M lines, docs/momentum-compat.md#mainlog) and the
//! `apn_logger` push log (D, T, P and M lines with configurable formats, docs/momentum-compat.md#apn-logger). Each
//! outcome of a notification is written exactly once, by the code that decides it.

pub mod apnlog;
pub mod file;
pub mod levels;
pub mod mainlog;
pub mod stderr;
pub mod throttle;

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use crate::model::message::Notification;

/// What happened to a notification, as the logs record it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeKind {
    Delivered,
    /// A transient failure: it will be retried.
    Transient,
    /// A permanent failure: it is removed.
    Permanent,
}

/// Everything an outcome line needs.
#[derive(Debug, Clone, Copy)]
pub struct OutcomeRecord<'a> {
    pub kind: OutcomeKind,
    pub notification: &'a Notification,
    pub binding_group: &'a str,
    pub binding: &'a str,
    /// Retries made before this attempt (0 = first attempt).
    pub retries: u32,
    pub remote_ip: Option<IpAddr>,
    /// APNs' transaction id: the `apns-id` (HTTP/2) or the notification identifier (binary). The apn_logger's
    /// `%ti` leaves it out of an outcome that reached no connection (`connected` false: nothing was sent).
    pub transaction_id: Option<&'a str>,
    /// APNs status (HTTP status or binary status byte) for failures.
    pub status: Option<u16>,
    /// Failure text (APNs reason, or herald's own reason when APNs was never reached).
    pub error: &'a str,
    /// Whether the failure happened with a connection (mainlog connection stage 9) or without one (stage 0).
    pub connected: bool,
    /// The notification's size as sent, headers included (apn_logger `%B`; see `DeliverySettings::wire_bytes`).
    /// The apn_logger writes 0 for an outcome that reached no connection (`connected` false), as the mainlog does.
    pub bytes: usize,
    /// Unix time of the event.
    pub at: u64,
    /// APNs' `apns-unique-id` of a delivery (development environment only).
    pub apns_unique_id: Option<&'a str>,
    /// The time APNs gave with an `Unregistered` (410) answer: when the token stopped being valid, Unix ms.
    pub apns_timestamp_ms: Option<u64>,
}

/// One broadcast outcome, for [`Logs::broadcast`] (formats in docs/operations.md, "Broadcast lines").
#[derive(Debug, Clone, Copy)]
pub struct BroadcastRecord<'a> {
    /// Unix time of the event.
    pub at: u64,
    /// herald's id of the broadcast (also its `apns-request-id`).
    pub id: &'a str,
    pub domain: &'a str,
    pub channel: &'a str,
    /// `D` delivered, `T` transient failure (retried), `P` permanent failure.
    pub result: char,
    /// Retries made before this attempt.
    pub retries: u32,
    /// Seconds since acceptance.
    pub secs: u64,
    /// Payload bytes.
    pub bytes: usize,
    pub status: Option<u16>,
    /// APNs' reason or herald's own, for failures.
    pub error: &'a str,
    /// The `apns-request-id` APNs answered, for deliveries.
    pub request_id: Option<&'a str>,
}

impl BroadcastRecord<'_> {
    /// The mainlog line: `TIME@ID@B@DOMAIN@CHANNEL@RESULT@BYTES@RETRIES@SECS@STATUS@ERROR`.
    pub fn mainlog_line(&self) -> String {
        let mut line = String::with_capacity(160);
        let _ = write!(line, "{}@", self.at);
        file::push_escaped(&mut line, self.id);
        line.push_str("@B@");
        file::push_escaped(&mut line, self.domain);
        line.push('@');
        file::push_escaped(&mut line, self.channel);
        let _ = write!(
            line,
            "@{}@{}@{}@{}@",
            self.result, self.bytes, self.retries, self.secs
        );
        if let Some(s) = self.status {
            let _ = write!(line, "{s}");
        }
        line.push('@');
        file::push_escaped(&mut line, self.error);
        line
    }

    /// The apn_logger line: `TIME@B@ID@DOMAIN@CHANNEL@RESULT@APNS_REQUEST_ID@STATUS@ERROR`.
    pub fn apnlog_line(&self) -> String {
        let mut line = String::with_capacity(160);
        let _ = write!(line, "{}@B@", self.at);
        file::push_escaped(&mut line, self.id);
        line.push('@');
        file::push_escaped(&mut line, self.domain);
        line.push('@');
        file::push_escaped(&mut line, self.channel);
        let _ = write!(line, "@{}@", self.result);
        file::push_escaped(&mut line, self.request_id.unwrap_or(""));
        line.push('@');
        if let Some(s) = self.status {
            let _ = write!(line, "{s}");
        }
        line.push('@');
        file::push_escaped(&mut line, self.error);
        line
    }
}

/// The configured logs; either may be absent.
#[derive(Debug, Default, Clone)]
pub struct Logs {
    /// One per enabled `ec_logger` with a mainlog, each with its own file and options.
    pub mainlog: Vec<Arc<mainlog::MainLog>>,
    pub apnlog: Vec<Arc<apnlog::ApnLog>>,
    /// The web dashboard's ring of recent outcomes (kept small; see `dashboard::outcomes`).
    pub recent: Option<Arc<crate::dashboard::outcomes::RecentOutcomes>>,
}

impl Logs {
    pub fn outcome(&self, record: &OutcomeRecord<'_>) {
        if let Some(r) = &self.recent {
            r.record(record);
        }
        for m in &self.mainlog {
            m.outcome(record);
        }
        for a in &self.apnlog {
            a.outcome(record);
        }
    }

    /// A broadcast's outcome, in the mainlog and every apn_logger (each writes its outcome kinds as for device
    /// pushes: a log that leaves deliveries out leaves delivered broadcasts out too).
    pub fn broadcast(&self, record: &BroadcastRecord<'_>) {
        for m in self.mainlog.iter().filter(|m| m.logs_result(record.result)) {
            m.file().write_line(&record.mainlog_line());
        }
        for a in &self.apnlog {
            if a.logs_result(record.result) {
                a.file().write_line(&record.apnlog_line());
            }
        }
    }

    /// The R line of `n` (see [`mainlog::MainLog::reception`]).
    pub fn reception(
        &self,
        n: &Notification,
        source_ip: Option<IpAddr>,
        protocol: &str,
        binding_group: &str,
    ) {
        for m in &self.mainlog {
            m.reception(n, source_ip, protocol, binding_group);
        }
    }

    pub fn heartbeat(&self, at: u64) {
        for m in &self.mainlog {
            m.heartbeat(at);
        }
        for a in &self.apnlog {
            a.heartbeat(at);
        }
    }

    /// The files of the mainlogs and apn_loggers.
    fn files(&self) -> Vec<&file::LogFile> {
        let main = self.mainlog.iter().map(|m| m.file());
        main.chain(self.apnlog.iter().map(|a| a.file())).collect()
    }

    /// Writes out what every log holds in memory and waits for it (blocking the calling thread, at most 5 s
    /// together); returns the errors of the files that could not take it (a full disk, a removed directory, a write
    /// that does not return), each with the lines it dropped since it last took a write. Whole lines that could not
    /// be written stay in memory, up to [`file::CAP`] bytes per file; later lines are dropped and counted
    /// ([`Logs::dropped_lines`]).
    pub fn flush(&self) -> Vec<file::LogFileError> {
        file::flush_all(&self.files())
    }

    /// Has every log's writer thread write out what it holds, without waiting; returns the errors of the files
    /// whose last write failed.
    pub fn flush_soon(&self) -> Vec<file::LogFileError> {
        self.files()
            .into_iter()
            .filter_map(|f| f.flush_soon().err())
            .collect()
    }

    /// The flush at shutdown: writes out what every log and `also` (the feedback log) hold, waiting at most
    /// [`file::SHUTDOWN_WAIT`] without blocking the runtime; a file that has not taken its lines by then (a write
    /// that does not return) is given up and its lines are counted as dropped. Returns the errors.
    pub async fn flush_at_shutdown(&self, also: Option<&file::LogFile>) -> Vec<file::LogFileError> {
        let mut files = self.files();
        files.extend(also);
        file::flush_all_within(&files, file::SHUTDOWN_WAIT).await
    }

    /// Lines the mainlogs and apn_logger files dropped since they were opened because their files took no writes
    /// (a full disk, a blocked write) while their memory buffers were full.
    pub fn dropped_lines(&self) -> u64 {
        let main = self.mainlog.iter().map(|m| m.file().dropped_lines());
        let apn = self.apnlog.iter().map(|a| a.file().dropped_lines());
        main.chain(apn).sum()
    }

    /// Reopens every log file (after logrotate); returns the errors of those that failed. Waits at most 1 s for
    /// their writer threads ([`file::LogFile::reopen`]).
    pub fn reopen(&self) -> Vec<file::LogFileError> {
        file::reopen_all(&self.files())
    }
}

/// Mode of a newly created feedback log (`feedback_logfile`): it lists device tokens, so it is for herald's user
/// only. A herald addition, it has no mode option of its own, unlike the mainlog (`mainlog_mode`) and the
/// apn_logger (`logmode`); an existing file keeps its mode, and a file reopened after logrotate moved it away is
/// created with this mode again.
pub const FEEDBACK_LOG_MODE: u32 = 0o600;

/// Opens the feedback log `path` (`feedback_logfile`) for appending, creating it with [`FEEDBACK_LOG_MODE`].
pub fn open_feedback_log(path: &std::path::Path) -> Result<file::LogFile, LogSetupError> {
    Ok(file::LogFile::open(path, FEEDBACK_LOG_MODE)?)
}

/// How often a log that keeps failing to flush is warned about.
const FLUSH_ERROR_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Why the configured logs could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LogSetupError {
    #[error(transparent)]
    File(#[from] file::LogFileError),
    #[error("apn_logger {name:?} {option}: {error}")]
    Format {
        name: String,
        /// The format option (`log_delivery_format`, …).
        option: &'static str,
        error: apnlog::FormatError,
    },
}

impl Logs {
    /// Opens the logs the configuration declares: each enabled `ec_logger`'s mainlog and each enabled
    /// `apn_logger`, each with its own `heartbeat`. Returns them with the shortest heartbeat interval (`None` when
    /// no logger writes heartbeats).
    pub fn open(
        config: &herald_conf::Config,
    ) -> Result<(Logs, Option<std::time::Duration>), LogSetupError> {
        let mut logs = Logs::default();
        let mut heartbeat: Option<std::time::Duration> = None;
        for ec in config.ec_loggers().iter().filter(|e| e.enabled) {
            if ec.mainlog.as_os_str().is_empty() {
                continue;
            }
            let mut m = mainlog::MainLog::new(file::LogFile::open(&ec.mainlog, ec.mainlog_mode)?);
            m.log_receptions = ec.log_receptions;
            m.log_deliveries = ec.log_deliveries;
            m.log_transient_failures = ec.log_transient_failures;
            m.log_permanent_failures = ec.log_permanent_failures;
            m.heartbeat = ec.heartbeat;
            logs.mainlog.push(Arc::new(m));
            heartbeat = min_opt(heartbeat, ec.heartbeat);
        }
        for a in config.apn_loggers().iter().filter(|a| a.enabled) {
            let formats = apn_formats(a)?;
            let file = file::LogFile::open(&a.logfile, a.logmode)?;
            logs.apnlog.push(Arc::new(
                apnlog::ApnLog::new(file, formats).with_heartbeat(a.heartbeat),
            ));
            heartbeat = min_opt(heartbeat, a.heartbeat);
        }
        Ok((logs, heartbeat))
    }

    /// Flushes the logs every `flush_every` and has each logger write its heartbeat line on its own interval, until
    /// the runtime ends. `heartbeat` is what [`Logs::open`] returned: `None` means no logger writes heartbeats.
    pub fn spawn_maintenance(
        &self,
        flush_every: std::time::Duration,
        heartbeat: Option<std::time::Duration>,
    ) {
        let logs = self.clone();
        tokio::spawn(async move {
            let mut flush = tokio::time::interval(flush_every);
            let start = tokio::time::Instant::now();
            let every = |h: Option<std::time::Duration>| h.filter(|_| heartbeat.is_some());
            let mut main_next: Vec<_> = logs
                .mainlog
                .iter()
                .map(|m| every(m.heartbeat).map(|h| (start + h, h)))
                .collect();
            let mut last_warned: Option<tokio::time::Instant> = None;
            let mut apn_next: Vec<_> = logs
                .apnlog
                .iter()
                .map(|a| every(a.heartbeat_interval()).map(|h| (start + h, h)))
                .collect();
            loop {
                flush.tick().await;
                let now = tokio::time::Instant::now();
                let at = crate::model::message::unix_now();
                for (m, next) in logs.mainlog.iter().zip(main_next.iter_mut()) {
                    if let Some((due, h)) = *next
                        && now >= due
                    {
                        m.heartbeat(at);
                        *next = Some((due + h, h));
                    }
                }
                for (a, next) in logs.apnlog.iter().zip(apn_next.iter_mut()) {
                    if let Some((due, h)) = *next
                        && now >= due
                    {
                        a.heartbeat(at);
                        *next = Some((due + h, h));
                    }
                }
                // The writer threads write; this task never waits for a disk.
                let errors = logs.flush_soon();
                // Said once per FLUSH_ERROR_EVERY while it lasts, not at every flush.
                if !errors.is_empty()
                    && last_warned
                        .is_none_or(|t: tokio::time::Instant| t.elapsed() >= FLUSH_ERROR_EVERY)
                {
                    for e in &errors {
                        tracing::warn!("log flush failed: {e}");
                    }
                    last_warned = Some(now);
                }
            }
        });
    }
}

/// The parsed formats of one apn_logger instance; errors name the instance and the option.
fn apn_formats(a: &herald_conf::ApnLoggerSettings) -> Result<apnlog::ApnLogFormats, LogSetupError> {
    let parse = |option: &'static str, f: &str| {
        apnlog::LogFormat::parse(f).map_err(|error| LogSetupError::Format {
            name: a.name.clone(),
            option,
            error,
        })
    };
    Ok(apnlog::ApnLogFormats {
        delivery: a
            .log_delivery
            .then(|| parse("log_delivery_format", &a.log_delivery_format))
            .transpose()?,
        tempfail: a
            .log_tempfail
            .then(|| parse("log_tempfail_format", &a.log_tempfail_format))
            .transpose()?,
        permfail: a
            .log_permfail
            .then(|| parse("log_permfail_format", &a.log_permfail_format))
            .transpose()?,
        heartbeat: parse("log_heartbeat_format", &a.log_heartbeat_format)?,
    })
}

/// What [`inspect`] finds in a configuration's logs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LogCheck {
    /// What `herald serve` would refuse when opening the logs: each names the logger and option, or the file.
    pub problems: Vec<String>,
    /// What is no error but deserves a word (a log file that is a FIFO no process reads yet): `WHAT PATH: NOTE`.
    pub notes: Vec<String>,
}

/// What `herald serve` would refuse when opening the logs, found without opening them: every apn_logger format
/// that does not parse, and every log file (mainlog, apn_logger logfile, feedback_logfile) that cannot be
/// written. Nothing is created or changed. A log file that is a FIFO no process reads yet is no error (`herald
/// serve` waits for a reader at start): it is a note. `herald check` and every reload run it.
pub fn inspect(config: &herald_conf::Config) -> LogCheck {
    let mut found = LogCheck::default();
    let mut files: Vec<(String, std::path::PathBuf)> = Vec::new();
    for ec in config.ec_loggers().iter().filter(|e| e.enabled) {
        if !ec.mainlog.as_os_str().is_empty() {
            files.push((
                format!("ec_logger {:?} mainlog", ec.name),
                ec.mainlog.clone(),
            ));
        }
    }
    for a in config.apn_loggers().iter().filter(|a| a.enabled) {
        if let Err(e) = apn_formats(a) {
            found.problems.push(e.to_string());
        }
        files.push((
            format!("apn_logger {:?} logfile", a.name),
            a.logfile.clone(),
        ));
    }
    if let Ok(herald_conf::Value::Str(p)) = config.eval_opt(
        &herald_conf::ScopePath::global(),
        herald_conf::Opt::FeedbackLogfile,
    ) && !p.is_empty()
    {
        files.push(("feedback_logfile".into(), p.into()));
    }
    for (what, path) in files {
        match file::check_writable(&path) {
            Ok(None) => {}
            Ok(Some(note)) => found
                .notes
                .push(format!("{what} {}: {note}", path.display())),
            Err(e) => found
                .problems
                .push(format!("{what} {}: {e}", path.display())),
        }
    }
    found
}

/// [`inspect`] for `herald check`: returns the problems; the notes go to standard error (`note: …`).
pub fn check(config: &herald_conf::Config) -> Vec<String> {
    let found = inspect(config);
    for note in &found.notes {
        eprintln!("note: {note}");
    }
    found.problems
}

fn min_opt(
    a: Option<std::time::Duration>,
    b: Option<std::time::Duration>,
) -> Option<std::time::Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The feedback log is created for herald's user only whatever the umask, also when logrotate moved it away.
    #[test]
    fn the_feedback_log_is_created_for_the_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        // SAFETY: umask only sets the process's file creation mask; 022 is what most systems run with.
        unsafe {
            libc::umask(0o022);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("feedback.log");
        let log = open_feedback_log(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        std::fs::rename(&path, dir.path().join("feedback.log.1")).unwrap();
        log.reopen().unwrap();
        assert_eq!(mode(&path), 0o600, "created again by the reopen");
    }

    /// A log whose disk is full (`/dev/full` answers every write with ENOSPC) is reported by `flush`, not dropped.
    #[test]
    fn flush_reports_the_files_that_could_not_be_written() {
        let file = file::LogFile::open(std::path::Path::new("/dev/full"), 0o644).unwrap();
        file.write_line("a line that cannot be written");
        let logs = Logs {
            mainlog: vec![Arc::new(mainlog::MainLog::new(file))],
            apnlog: Vec::new(),
            recent: None,
        };
        let errors = logs.flush();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].to_string().contains("/dev/full"), "{}", errors[0]);
        assert!(Logs::default().flush().is_empty());
    }

    /// Lines a full disk makes a log drop (its memory buffer is full too) are counted, and the flush error says how
    /// many (they used to be dropped without a trace).
    #[test]
    fn lines_dropped_on_a_full_disk_are_counted_and_reported() {
        let file =
            file::LogFile::open_with_cap(std::path::Path::new("/dev/full"), 0o644, 256 * 1024)
                .unwrap();
        let line = "x".repeat(1023);
        for _ in 0..300 {
            file.write_line(&line);
        }
        let logs = Logs {
            mainlog: Vec::new(),
            apnlog: vec![Arc::new(apnlog::ApnLog::new(file, Default::default()))],
            recent: None,
        };
        // 256 lines of 1 KiB fill the buffer; the other 44 are dropped.
        assert_eq!(logs.dropped_lines(), 44);
        let errors = logs.flush();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].to_string().contains("44 line(s) dropped"),
            "{}",
            errors[0]
        );
    }

    /// A log file whose writes block (a FIFO whose reader was stopped, a hung NFS server) does not stop the runtime:
    /// with two workers, tasks writing lines far past the buffer and the 200 ms flush task used to block in the
    /// file's write (or on its lock) and nothing else ran (`/readyz`, the console, the stop). Once the file takes
    /// writes again, every line memory held arrives, in order.
    #[test]
    fn a_file_whose_writes_block_does_not_stop_the_runtime() {
        use std::sync::mpsc::channel;
        use std::time::Duration;
        const LINES: usize = 5_000;
        let gate = file::testing::Gate::default();
        let file = file::LogFile::with_sink(
            std::path::Path::new("blocked.ec"),
            0o644,
            Box::new(gate.clone()),
            4 * 1024,
            64 * 1024,
        );
        let logs = Logs {
            mainlog: vec![Arc::new(mainlog::MainLog::new(file))],
            apnlog: Vec::new(),
            recent: None,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (wrote, writers_done) = channel();
        runtime.block_on(async { logs.spawn_maintenance(Duration::from_millis(10), None) });
        for task in 0..2 {
            let (logs, wrote) = (logs.clone(), wrote.clone());
            runtime.spawn(async move {
                for i in 0..LINES {
                    logs.mainlog[0]
                        .file()
                        .write_line(&format!("task {task} line {i:05}"));
                    if i % 500 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                let _ = wrote.send(());
            });
        }
        let writers = (0..2).all(|_| writers_done.recv_timeout(Duration::from_secs(2)).is_ok());
        let (slept, sleeper_done) = channel();
        runtime.spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let _ = slept.send(());
        });
        let sleeper = sleeper_done.recv_timeout(Duration::from_secs(2)).is_ok();
        // Unblocked before asserting, so that a failure does not leave the runtime stuck.
        gate.open();
        assert!(writers, "the tasks writing lines were blocked");
        assert!(
            sleeper,
            "a 10 ms sleep did not end within 2 s: the runtime was blocked"
        );

        assert!(logs.flush().is_empty());
        let dropped = logs.dropped_lines();
        assert!(dropped > 0, "the lines did not fill memory");
        let text = gate.text();
        assert!(text.len() <= 64 * 1024, "{}", text.len());
        let mut next = [0usize; 2];
        for line in text.lines() {
            let task = usize::from(line.as_bytes()[5] - b'0');
            assert_eq!(
                line,
                format!("task {task} line {:05}", next[task]),
                "out of order"
            );
            next[task] += 1;
        }
        assert_eq!((next[0] + next[1]) as u64 + dropped, 2 * LINES as u64);
        runtime.shutdown_timeout(Duration::from_secs(1));
    }

    /// Every enabled `ec_logger` writes its own mainlog, with its own options (the last one used to be the only one
    /// written: the others' files were created and stayed empty).
    #[test]
    fn every_ec_logger_writes_its_mainlog() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.ec"), dir.path().join("b.ec"));
        let text = format!(
            "ec_logger \"a\" {{ mainlog = \"{}\" }}\nec_logger \"b\" {{ mainlog = \"{}\" }}\n",
            a.display(),
            b.display()
        );
        let config = herald_conf::Config::parse_str("logs.conf", &text).unwrap();
        let (logs, _) = Logs::open(&config).unwrap();
        assert_eq!(logs.mainlog.len(), 2);
        let n = crate::outcomes::fixtures::notification(
            crate::model::message::MessageId::from_parts(0, 1_800_000_000_000, 1),
            "logs.example",
            1,
        );
        logs.reception(&n, None, "rest", "default");
        assert!(logs.flush().is_empty());
        for path in [&a, &b] {
            let text = std::fs::read_to_string(path).unwrap();
            assert!(text.contains("@R@"), "{}: {text:?}", path.display());
        }
    }
}
