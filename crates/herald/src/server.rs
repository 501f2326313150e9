//! The running daemon (`herald serve`): wires inbound -> spool -> queue -> outbound from one configuration.
//!
//! [`Server::start`] opens the logs and the spool, queues again whatever the spool holds, binds every enabled
//! listener and returns a [`Server`] that knows its bound addresses. [`Server::reload`] reads the configuration
//! again and, only if it is valid, puts it in force: domains drain their old connections and open new ones with
//! the new values, ESMTP sessions of the old generation are told `421 4.3.2`, changed listeners are rebound, and
//! spooled notifications the start left in the spool (their domain could not be delivered) are queued once their
//! domain can be. A reload runs on a task of its own, so that a caller that goes away does not stop it half-way.
//! [`Server::shutdown`] stops accepting, lets sessions and in-flight deliveries finish for a moment, and flushes
//! the spool: whatever did not finish stays spooled and is delivered after the next start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herald_conf::{Config, ListenAddr, ListenerKind, ListenerSettings, SpoolBackend};
use herald_spool::{
    DiskSpool, JetStreamOptions, JetStreamSpool, OutcomeStore, Spool, SpoolOptions,
};

use crate::inbound::rest::idempotency::Idempotency;
use crate::outcomes::Fanout;
use crate::outcomes::book::StatusBook;
use crate::outcomes::webhook::{HookResolver, HookSettings, Webhooks};
use serde::Serialize;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::delivery::ConfigResolver;
use crate::inbound::accept::Intake;
use crate::inbound::doors::DoorLimits;
use crate::inbound::{rest, smtp};
use crate::logs::Logs;
use crate::queue::message::{IdGenerator, MessageId};
use crate::queue::{Engine, EngineLimits, ResolveError, SettingsResolver};
use crate::spool::{
    FinalOutcomes, LeftInSpool, RestoreFrom, RestoreProgress, SpoolBridge, spawn_pull,
    spawn_requeue, spawn_restore,
};
use crate::tokens::InvalidTokenStore;

pub use crate::status::{ReloadError, ReloadReport, Summary};

/// The start time the last run's message ids carried, kept in `spool_dir`: printed ids carry only their run's start
/// second, so a run must not start within an earlier run's second, even when the spool no longer holds anything of
/// it (its outcomes, status answers and webhook events still name its ids).
mod id_epoch {
    use std::path::Path;

    /// The file, in `spool_dir`.
    pub const FILE: &str = "id-epoch";

    /// The last run's id start time (Unix ms), if recorded and readable.
    pub fn last(dir: &Path) -> Option<u64> {
        std::fs::read_to_string(dir.join(FILE))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Records `epoch_ms` (written to a temporary file, synced, then renamed over the old one).
    pub fn record(dir: &Path, epoch_ms: u64) -> std::io::Result<()> {
        use std::io::Write as _;
        let tmp = dir.join(format!("{FILE}.tmp"));
        // Private like the rest of the spool directory's files, whatever the umask.
        let mut f = herald_spool::state_dir::file_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        writeln!(f, "{epoch_ms}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(FILE))?;
        std::fs::File::open(dir)?.sync_all()
    }

    #[cfg(test)]
    mod tests {
        /// The start time is read back as written, and a missing or garbled file is no start time.
        #[test]
        fn the_last_start_is_read_back() {
            let dir = tempfile::tempdir().unwrap();
            assert_eq!(super::last(dir.path()), None);
            super::record(dir.path(), 1_800_000_000_123).unwrap();
            assert_eq!(super::last(dir.path()), Some(1_800_000_000_123));
            super::record(dir.path(), 1_800_000_001_000).unwrap();
            assert_eq!(super::last(dir.path()), Some(1_800_000_001_000));
            std::fs::write(dir.path().join(super::FILE), "garbage").unwrap();
            assert_eq!(super::last(dir.path()), None);
        }

        /// The file is for herald's user only, as the spool's other files (docs/operations.md), whatever the umask.
        #[cfg(unix)]
        #[test]
        fn the_file_is_private() {
            use std::os::unix::fs::PermissionsExt;
            let dir = tempfile::tempdir().unwrap();
            super::record(dir.path(), 1_800_000_000_123).unwrap();
            let mode = std::fs::metadata(dir.path().join(super::FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, herald_spool::state_dir::FILE_MODE);
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{path}: the configuration has errors:\n{diagnostics}")]
    Config { path: PathBuf, diagnostics: String },
    // The messages carry the inner error's text and name no source, so `{:#}` prints each cause once.
    #[error("opening logs: {0}")]
    Logs(crate::logs::LogSetupError),
    #[error("spool {dir}: {error}")]
    Spool {
        dir: PathBuf,
        error: herald_spool::SpoolError,
    },
    #[error("spool_backend = jetstream: {0}")]
    JetStream(herald_spool::SpoolError),
    #[error("{0}")]
    Listener(String),
    #[error(transparent)]
    InvalidTokens(#[from] crate::tokens::TokenStoreError),
}

impl From<crate::logs::LogSetupError> for StartError {
    fn from(e: crate::logs::LogSetupError) -> Self {
        StartError::Logs(e)
    }
}

/// The addresses the listeners are bound to (what `herald serve` prints when ready).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct BoundAddrs {
    pub esmtp: Vec<SocketAddr>,
    pub http: Vec<SocketAddr>,
    /// Control listeners: the socket path, or the bound TCP address.
    pub control: Vec<String>,
}

struct RunningListener {
    kind: ListenerKind,
    settings: ListenerSettings,
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
    /// ESMTP: sessions see a new configuration generation through this.
    smtp_config: Option<watch::Sender<Arc<smtp::SmtpConfig>>>,
    /// What the listener's `tls_certificate` and `tls_key` files held when it started or its certificate was last
    /// replaced (HTTP and control listeners): a reload acts when they hold something else (a certificate renewed in
    /// place).
    tls_files: Option<u64>,
    /// HTTP over TLS: the certificate a reload replaces in place when its files were renewed.
    certificate: Option<Arc<rest::ListenerCertificate>>,
    /// HTTP: told once the stopped listener closed its socket (its open requests may still be finishing), so that
    /// a reload binds the address again without waiting for them.
    closed: Option<oneshot::Receiver<()>>,
    /// Control: the rules its new connections are held to, replaced by each reload whose configuration has the
    /// listener's stanza (and kept as they are by one that has not).
    control_rules: Option<watch::Sender<Arc<crate::control::ControlRules>>>,
}

impl RunningListener {
    /// A control listener's rules in force.
    fn control_rules(&self) -> Option<Arc<crate::control::ControlRules>> {
        self.control_rules.as_ref().map(|tx| tx.borrow().clone())
    }
}

/// A hash of the files of a listener's TLS identity (`None` without one; an unreadable file hashes as empty: loading
/// it reports why).
fn tls_files_hash(settings: &ListenerSettings) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let cert = settings.tls_certificate.as_ref()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for path in [Some(cert), settings.tls_key.as_ref()]
        .into_iter()
        .flatten()
    {
        std::fs::read(path).unwrap_or_default().hash(&mut h);
    }
    Some(h.finish())
}

/// Counter values at the last `summary reset`.
#[derive(Debug, Clone, Copy, Default)]
struct Baseline {
    received: u64,
    delivered: u64,
    failed: u64,
    transient: u64,
    rejected: u64,
    at: u64,
    instant: Option<Instant>,
}

/// A running herald.
pub struct Server {
    pub engine: Arc<Engine>,
    pub intake: Arc<Intake>,
    pub spool: Arc<dyn Spool>,
    /// Keeps the spool in step with the queue; holds final outcomes' removals until their records are stored.
    bridge: Arc<SpoolBridge>,
    /// Every device token APNs or its feedback service reported invalid.
    pub invalid_tokens: Arc<InvalidTokenStore>,
    /// The background restore of what the spool held at start.
    /// What a reload's requeue of notifications left in the spool reads ([`spawn_requeue`]).
    restore_from: RestoreFrom,
    pub restore_progress: Arc<RestoreProgress>,
    /// What the web dashboard keeps (recent outcomes, history), for every listener that serves it.
    pub dashboard: Arc<crate::dashboard::Hub>,
    /// Every notification's state and, for `outcome_retention`, its final outcome (status lookups).
    pub status_book: Arc<StatusBook>,
    /// On the JetStream spool: the other nodes, asked for the ids the book does not know, and answered from it.
    status_peers: Option<Arc<herald_spool::PeerLookup>>,
    /// `Idempotency-Key`s of the REST listeners.
    pub idempotency: Arc<Idempotency>,
    /// The domains' outcome webhooks.
    pub webhooks: Arc<Webhooks>,
    /// Live Activity channel management (REST `/api/v1/channels`, the console's `channels`).
    pub channels: Arc<crate::channels::ChannelManager>,
    /// Broadcast pushes (REST `/api/v1/broadcast`), durable in the outcome store.
    pub broadcasts: Arc<crate::broadcasts::Broadcaster>,
    /// The configuration file: the one herald started with, or the one the last successful `config reload PATH`
    /// read. A reload without a path reads it.
    path: RwLock<PathBuf>,
    /// The spooled notifications the start-up restore could not queue (their domain could not be delivered); a
    /// reload queues those whose domain it makes deliverable. Held by whichever restore runs.
    left_in_spool: Arc<tokio::sync::Mutex<LeftInSpool>>,
    resolver: Arc<ConfigResolver>,
    logs: Logs,
    listeners: tokio::sync::Mutex<Vec<RunningListener>>,
    config: RwLock<Arc<Config>>,
    /// The configuration herald started with: the options read at start only (the loggers, the spool, …) run with
    /// its values until a restart, so each reload compares with it, not with the one last reloaded.
    start_config: Arc<Config>,
    started: Instant,
    baseline: Mutex<Baseline>,
    generation: AtomicU64,
    stop_requested: tokio::sync::Notify,
    /// Held by a reload from start to end: reloads asked for at once (SIGHUP, the console, the dashboard) run one
    /// after the other, so the configuration in force and the running listeners always come from the same one.
    reloading: tokio::sync::Mutex<()>,
    /// A reload's check of the log files is running (or stuck on a file system): the next reload starts none.
    log_check: Arc<std::sync::atomic::AtomicBool>,
    /// Parent of every listener's stop token: cancelled at shutdown.
    stop_listeners: CancellationToken,
    /// Orders a reload's release of the hold on delivery with a stop's hold ([`Server::set_held_unless_stopping`],
    /// [`Server::hold_for_stop`]): once a stop began, no reload releases it, whether or not the stop waited for it.
    hold_order: Mutex<()>,
    /// The spool's close is given at least this long at shutdown: its own limit (the JetStream spool waits for the
    /// pull under way to end before it gives back what it holds), and no less than 5 seconds.
    spool_close_limit: Duration,
    /// The server itself, for listener tasks that call back into it (the control listener).
    me: std::sync::Weak<Server>,
}

/// A domain's webhook options from the configuration in force.
fn hook_resolver(resolver: Arc<ConfigResolver>) -> Box<HookResolver> {
    Box::new(move |domain: &str| {
        let config = resolver.config();
        let scope = herald_conf::ScopePath::domain(domain);
        let get = |name: &str| config.eval(&scope, name).ok();
        let url = match get("outcome_webhook_url")? {
            herald_conf::Value::Str(u) if !u.is_empty() => u,
            _ => return None,
        };
        let secret = match get("outcome_webhook_secret") {
            Some(herald_conf::Value::Str(s)) => s,
            _ => String::new(),
        };
        let events = match get("outcome_webhook_events") {
            Some(herald_conf::Value::List(l)) => l,
            _ => vec!["delivered".into(), "failed".into(), "invalid_token".into()],
        };
        let int = |name: &str, default: u64| {
            get(name)
                .and_then(|v| v.as_int())
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(default)
        };
        Some(Arc::new(HookSettings {
            url,
            secret,
            delivered: events.iter().any(|e| e == "delivered"),
            failed: events.iter().any(|e| e == "failed"),
            invalid_token: events.iter().any(|e| e == "invalid_token"),
            max_age: Duration::from_secs(int("outcome_webhook_max_age", 86_400)),
            backlog: int("outcome_webhook_backlog", 100_000),
        }))
    })
}

impl Server {
    /// The metric families of the status book and the webhooks.
    fn more_metrics(&self) -> crate::ops::MoreMetrics {
        let book = self.status_book.clone();
        let hooks = self.webhooks.clone();
        let channels = self.channels.clone();
        let broadcasts = self.broadcasts.clone();
        let logs = self.engine.logs().clone();
        let tokens = self.invalid_tokens.clone();
        let bridge = self.bridge.clone();
        Arc::new(move |out: &mut String| {
            let dropped_lines =
                logs.dropped_lines() + tokens.feedback_log().map_or(0, |f| f.dropped_lines());
            out.push_str(&format!(
                "# HELP herald_log_lines_dropped_total Lines of the mainlog, apn_logger and feedback log files dropped because their disk took no writes while their buffers were full.\n# TYPE herald_log_lines_dropped_total counter\nherald_log_lines_dropped_total {dropped_lines}\n"
            ));
            let s = book.stats();
            out.push_str(&format!(
                "# HELP herald_outcomes_stored Final outcomes kept for status lookups.\n# TYPE herald_outcomes_stored gauge\nherald_outcomes_stored {}\n\
                 # HELP herald_outcomes_tracked Notifications followed in memory by the status book.\n# TYPE herald_outcomes_tracked gauge\nherald_outcomes_tracked {}\n\
                 # HELP herald_outcomes_dropped_total Final outcomes not stored because the writer fell 100,000 behind (refused writes are tried again, not dropped).\n# TYPE herald_outcomes_dropped_total counter\nherald_outcomes_dropped_total {}\n",
                s.stored, s.tracked, s.dropped + hooks.handoff_dropped()
            ));
            out.push_str(&format!(
                "# HELP herald_spool_removals_waiting_for_outcomes Finished notifications whose removal from the spool waits until their outcome is stored.\n# TYPE herald_spool_removals_waiting_for_outcomes gauge\nherald_spool_removals_waiting_for_outcomes {}\n",
                bridge.held_removals()
            ));
            out.push_str(&format!(
                "# HELP herald_spool_removals_forced_total Removals made without waiting for their outcomes because 1,000,000 already waited (those notifications would not be delivered again after a crash).\n# TYPE herald_spool_removals_forced_total counter\nherald_spool_removals_forced_total {}\n",
                bridge.forced_removals()
            ));
            if let Some(dropped) = tokens.share_dropped() {
                out.push_str(&format!(
                    "# HELP herald_invalid_tokens_share_dropped_total Invalid tokens not shared with the other nodes because 10,000 waited for NATS already (JetStream spool).\n# TYPE herald_invalid_tokens_share_dropped_total counter\nherald_invalid_tokens_share_dropped_total {dropped}\n"
                ));
            }
            hooks.render_metrics(out);
            channels.render_metrics(out);
            broadcasts.render_metrics(out);
        })
    }

    /// Starts everything `path` configures.
    pub async fn start(path: &Path) -> Result<Arc<Server>, StartError> {
        let config = Config::load(path).map_err(|d| StartError::Config {
            path: path.to_owned(),
            diagnostics: d.to_string(),
        })?;
        crate::logs::stderr::apply(config.log_format());
        for w in config.warnings() {
            tracing::warn!("{w}");
        }
        let config = Arc::new(config);
        match crate::inbound::doors::raise_fd_limit() {
            Ok(fd) => tracing::info!(
                before = fd.before,
                soft = fd.soft,
                hard = fd.hard,
                network_connections = fd.network_budget,
                "file descriptor limit"
            ),
            Err(e) => tracing::warn!("cannot read the file descriptor limit: {e}"),
        }
        let (mut logs, heartbeat) = Logs::open(&config)?;
        let dashboard = Arc::new(crate::dashboard::Hub::default());
        logs.recent = Some(dashboard.outcomes.clone());
        logs.spawn_maintenance(Duration::from_millis(200), heartbeat);

        let spool_settings = config.spool();
        let dir = spool_settings.dir.clone();
        let (spool, jetstream): (Arc<dyn Spool>, Option<Arc<JetStreamSpool>>) =
            if spool_settings.backend == SpoolBackend::JetStream {
                let options = node_options(&spool_settings, &config);
                let js = JetStreamSpool::connect(options)
                    .await
                    .map_err(StartError::JetStream)?;
                (js.clone(), Some(js))
            } else {
                let disk = DiskSpool::open(&dir, SpoolOptions::default()).map_err(|error| {
                    StartError::Spool {
                        dir: dir.clone(),
                        error,
                    }
                })?;
                (Arc::new(disk), None)
            };

        let resolver = Arc::new(ConfigResolver::new(config.clone()));
        warn_undeliverable(&config, &resolver);
        let global = herald_conf::ScopePath::global();
        let path_option = |opt: herald_conf::Opt| match config.eval_opt(&global, opt) {
            Ok(herald_conf::Value::Str(p)) if !p.is_empty() => Some(PathBuf::from(p)),
            _ => None,
        };
        let feedback_log = match path_option(herald_conf::Opt::FeedbackLogfile) {
            Some(p) => Some(crate::logs::open_feedback_log(&p)?),
            None => None,
        };
        let tokens_file = path_option(herald_conf::Opt::InvalidTokensFile)
            .unwrap_or_else(|| dir.join("invalid-tokens.jsonl"));
        let invalid_tokens = Arc::new(InvalidTokenStore::open(&tokens_file, feedback_log)?);
        if let Some(js) = &jetstream {
            share_invalid_tokens(js, &invalid_tokens);
        }
        let engine = Arc::new(Engine::new(
            resolver.clone(),
            logs.clone(),
            invalid_tokens.clone(),
            EngineLimits::from_config(&config),
        ));
        let bridge = Arc::new(match &jetstream {
            Some(_) => SpoolBridge::shared(spool.clone()),
            None => SpoolBridge::new(spool.clone()),
        });
        engine.set_observer(bridge.clone());
        let outcome_store =
            Arc::new(OutcomeStore::open(&dir).map_err(|error| StartError::Spool {
                dir: dir.clone(),
                error,
            })?);
        let int_option = |name: &str| config.eval(&global, name).ok().and_then(|v| v.as_int());
        let retention = int_option("outcome_retention")
            .and_then(|s| u64::try_from(s).ok())
            .map_or(
                crate::outcomes::book::DEFAULT_RETENTION,
                Duration::from_secs,
            );
        let max_outcomes = int_option("outcome_max_entries")
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(crate::outcomes::book::DEFAULT_MAX_ENTRIES);
        let status_book = StatusBook::new(outcome_store.clone(), retention, max_outcomes);
        if jetstream.is_some() {
            status_book.follow_the_stream();
        }
        let webhooks = Webhooks::start(outcome_store.clone(), hook_resolver(resolver.clone()));
        // outcome_retention = 0 turns status lookups off: the book is not told anything.
        let mut listeners: Vec<Arc<dyn crate::outcomes::OutcomeListener>> = vec![webhooks.clone()];
        if !retention.is_zero() {
            listeners.push(status_book.clone());
        }
        engine.set_outcome_listener(Arc::new(Fanout(listeners)));
        // A notification leaves the spool only once its status record and webhook event are stored.
        let mut writers: Vec<Arc<dyn crate::outcomes::OutcomeWriter>> = vec![webhooks.clone()];
        if !retention.is_zero() {
            writers.push(status_book.clone());
        }
        bridge.gate_removals_on(writers);
        // On JetStream, each node's book knows what that node delivered: the nodes answer each other's lookups.
        let status_peers = match &jetstream {
            Some(js) if !retention.is_zero() => {
                Some(crate::outcomes::peers::serve(js, status_book.clone()))
            }
            _ => None,
        };
        let broadcasts = crate::broadcasts::Broadcaster::start(
            outcome_store.clone(),
            resolver.clone(),
            logs.clone(),
        )
        .map_err(|error| StartError::Spool {
            dir: dir.clone(),
            error,
        })?;
        status_book.attach_broadcasts(&broadcasts);
        // With JetStream, every node reads and writes the keys in one shared bucket: a retry may reach another node.
        let idempotency = Arc::new(match &jetstream {
            Some(js) => Idempotency::shared(js.clone()),
            None => Idempotency::local(outcome_store),
        });
        let started = Instant::now();
        // New message ids sort after everything spooled; the backlog is queued again while the server serves.
        // Nodes sharing a JetStream stream issue ids in one space: each puts a byte of its name in the first field,
        // so that two nodes started in the same millisecond do not issue the same ids.
        let node = jetstream
            .as_ref()
            .map_or(0, |js| IdGenerator::node_of(js.node_name()));
        let ids = {
            let spooled = spool.recovery_bound().map(|k| MessageId(k.0));
            let earlier_run = id_epoch::last(&dir).map(|ms| MessageId::from_parts(node, ms, 0));
            let floor = [spooled, earlier_run]
                .into_iter()
                .flatten()
                .max_by_key(|id| id.epoch_ms());
            let ids = IdGenerator::above(node, floor);
            // Not recorded (a full disk, at a start that still delivers what the spool holds): the next run may
            // then start in this run's second only if it starts within it.
            if let Err(e) = id_epoch::record(&dir, ids.epoch_ms()) {
                tracing::warn!(
                    "{}: the start time of this run's message ids is not recorded: {e}",
                    dir.join(id_epoch::FILE).display()
                );
            }
            ids
        };
        let restore_progress = Arc::new(RestoreProgress::default());
        let left_in_spool = Arc::new(tokio::sync::Mutex::new(LeftInSpool::default()));
        // A spooled notification whose final outcome the book stored before the restart is not sent again (the
        // JetStream spool reads nothing back locally).
        let restore_from = RestoreFrom {
            spool: spool.clone(),
            finals: (!retention.is_zero() && jetstream.is_none())
                .then(|| status_book.clone() as Arc<dyn FinalOutcomes>),
        };
        spawn_restore(
            restore_from.clone(),
            engine.clone(),
            restore_progress.clone(),
            left_in_spool.clone(),
        );
        if let Some(js) = &jetstream {
            spawn_pull(js.clone(), engine.clone());
        }
        tokio::spawn(crate::tokens::feedback::run_poller(
            resolver.clone(),
            invalid_tokens.clone(),
        ));
        let intake = Arc::new(Intake::new(
            resolver.clone(),
            bridge.clone(),
            engine.clone(),
            ids,
        ));

        let spool_close_limit = jetstream
            .as_ref()
            .map_or(Duration::ZERO, |js| js.close_limit())
            .max(Duration::from_secs(5));
        let server = Arc::new_cyclic(|me| Server {
            me: me.clone(),
            engine,
            intake,
            spool,
            bridge,
            restore_from,
            restore_progress,
            dashboard,
            invalid_tokens,
            status_book,
            status_peers,
            webhooks,
            idempotency,
            channels: crate::channels::ChannelManager::new(resolver.clone()),
            broadcasts,
            path: RwLock::new(path.to_owned()),
            left_in_spool,
            resolver,
            logs,
            listeners: tokio::sync::Mutex::new(Vec::new()),
            config: RwLock::new(config.clone()),
            start_config: config.clone(),
            started,
            baseline: Mutex::new(Baseline {
                at: unix_now(),
                instant: Some(started),
                ..Baseline::default()
            }),
            generation: AtomicU64::new(0),
            stop_requested: tokio::sync::Notify::new(),
            reloading: tokio::sync::Mutex::new(()),
            log_check: Arc::default(),
            stop_listeners: CancellationToken::new(),
            hold_order: Mutex::new(()),
            spool_close_limit,
        });
        crate::dashboard::spawn_sampler(
            server.dashboard.clone(),
            Arc::downgrade(&server) as std::sync::Weak<dyn crate::control::ServerHandle>,
        );
        server.engine.set_held(apn_held(&config));
        if apn_held(&config) {
            tracing::warn!(
                "apn {{ enabled = false }}: notifications are accepted and spooled but not delivered until the apn \
                 module is enabled"
            );
        }
        let mut running = Vec::new();
        for settings in wanted_listeners(&config) {
            if let Some(listener) = server.start_listener(settings, None).await? {
                running.push(listener);
            }
        }
        *server.listeners.lock().await = running;
        Ok(server)
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The file a reload without a path reads: the one herald started with, or the one the last successful reload
    /// from another path read.
    pub fn config_path(&self) -> PathBuf {
        self.path.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn logs(&self) -> &Logs {
        &self.logs
    }

    /// How many times a new configuration was put in force.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The bound address of every listener.
    pub async fn addrs(&self) -> BoundAddrs {
        let mut addrs = BoundAddrs::default();
        for l in self.listeners.lock().await.iter() {
            match l.kind {
                ListenerKind::Esmtp => addrs.esmtp.push(l.addr),
                ListenerKind::Http => addrs.http.push(l.addr),
                ListenerKind::Control => addrs.control.push(match &l.settings.addr {
                    ListenAddr::Unix(path) => path.display().to_string(),
                    ListenAddr::Tcp(_) => l.addr.to_string(),
                }),
                ListenerKind::Ecstream => {}
            }
        }
        addrs
    }

    /// Starts the listener of `settings`. A control listener is held to `control_rules` where given (a listener
    /// started again with its previous settings keeps the rules it ran with) and the configuration in force has no
    /// stanza for its address; otherwise to the rules the configuration in force gives it.
    async fn start_listener(
        &self,
        settings: ListenerSettings,
        control_rules: Option<Arc<crate::control::ControlRules>>,
    ) -> Result<Option<RunningListener>, StartError> {
        let listener_err = |e: String| {
            StartError::Listener(format!(
                "{:?} listen {}: {e}",
                settings.kind, settings.address
            ))
        };
        // One token per listener, a child of the server's: `shutdown` stops all of them, a reload one.
        let stop = self.stop_listeners.child_token();
        let stop_rx = stop.clone();
        match settings.kind {
            ListenerKind::Esmtp => {
                let socket = smtp::bind(&settings)
                    .await
                    .map_err(|e| StartError::Listener(e.to_string()))?;
                let addr = socket
                    .local_addr()
                    .map_err(|e| listener_err(e.to_string()))?;
                let smtp_config = smtp::SmtpConfig::from_config(&self.config(), settings.clone())
                    .map_err(|e| listener_err(e.to_string()))?;
                let (config_tx, config_rx) = watch::channel(Arc::new(smtp_config));
                let task =
                    tokio::spawn(smtp::serve(socket, config_rx, self.intake.clone(), stop_rx));
                Ok(Some(RunningListener {
                    kind: settings.kind,
                    settings,
                    addr,
                    stop,
                    task,
                    smtp_config: Some(config_tx),
                    tls_files: None,
                    certificate: None,
                    closed: None,
                    control_rules: None,
                }))
            }
            ListenerKind::Http => {
                let bind_to = match &settings.addr {
                    ListenAddr::Tcp(a) => *a,
                    ListenAddr::Unix(_) => {
                        return Err(listener_err("Unix sockets are not supported here".into()));
                    }
                };
                let socket = tokio::net::TcpListener::bind(bind_to)
                    .await
                    .map_err(|e| listener_err(e.to_string()))?;
                let addr = socket
                    .local_addr()
                    .map_err(|e| listener_err(e.to_string()))?;
                let tls_files = tls_files_hash(&settings);
                let (tls, certificate) =
                    match rest::tls_server(&settings).map_err(|e| listener_err(e.to_string()))? {
                        Some((config, certificate)) => (Some(config), Some(certificate)),
                        None => (None, None),
                    };
                let mut extra = crate::ops::routes(
                    self.engine.clone(),
                    self.spool.clone(),
                    self.invalid_tokens.clone(),
                    self.resolver.clone(),
                    self.restore_progress.clone(),
                    settings.http_services,
                    Some(self.more_metrics()),
                );
                let guesses = Arc::new(crate::access::GuessThrottle::default());
                if settings.http_services.dashboard {
                    extra = extra.merge(crate::dashboard::routes(
                        self.dashboard.clone(),
                        self.me.clone() as std::sync::Weak<dyn crate::control::ServerHandle>,
                        Arc::new(settings.clone()),
                        guesses.clone(),
                        stop.clone(),
                    ));
                }
                if settings.http_services.push || settings.http_services.inject {
                    extra = extra.merge(crate::outcomes::api::routes(
                        crate::outcomes::api::StatusState {
                            book: self.status_book.clone(),
                            peers: self.status_peers.clone(),
                        },
                    ));
                }
                if settings.http_services.push {
                    extra = extra.merge(crate::channels::api::routes(self.channels.clone()));
                    extra = extra.merge(crate::broadcasts::api::routes(
                        self.broadcasts.clone(),
                        Some(self.idempotency.clone()),
                    ));
                }
                let limits = Arc::new(DoorLimits::from_config(&self.config(), &settings));
                let state = rest::RestState::new(settings.clone(), self.intake.clone())
                    .with_limits(limits.clone())
                    .with_injection_off(injection_off(&self.config()))
                    .with_guesses(guesses)
                    .with_idempotency(Some(self.idempotency.clone()));
                let app = rest::router_with(state, extra);
                let intake = self.intake.clone();
                let (closed_tx, closed) = oneshot::channel();
                let task = tokio::spawn(async move {
                    if let Err(e) = rest::server::serve_limited_closing(
                        socket, app, intake, tls, limits, stop_rx, closed_tx,
                    )
                    .await
                    {
                        tracing::error!("REST listener stopped: {e}");
                    }
                });
                Ok(Some(RunningListener {
                    kind: settings.kind,
                    settings,
                    addr,
                    stop,
                    task,
                    smtp_config: None,
                    tls_files,
                    certificate,
                    closed: Some(closed),
                    control_rules: None,
                }))
            }
            ListenerKind::Control => {
                let tls_files = tls_files_hash(&settings);
                let socket = crate::control::ControlSocket::bind(&settings)
                    .await
                    .map_err(|e| listener_err(e.to_string()))?;
                let addr = socket.local_addr();
                let config = self.config();
                let rules = match control_rules {
                    Some(rules)
                        if !crate::control::ControlRules::has_stanza(&config, &settings) =>
                    {
                        rules
                    }
                    _ => Arc::new(crate::control::ControlRules::from_config(
                        &config, &settings,
                    )),
                };
                let (rules_tx, rules_rx) = watch::channel(rules);
                let task = tokio::spawn(crate::control::serve(
                    socket,
                    settings.clone(),
                    rules_rx,
                    self.me.clone() as std::sync::Weak<dyn crate::control::ServerHandle>,
                    stop_rx,
                ));
                Ok(Some(RunningListener {
                    kind: settings.kind,
                    settings,
                    addr,
                    stop,
                    task,
                    smtp_config: None,
                    tls_files,
                    certificate: None,
                    closed: None,
                    control_rules: Some(rules_tx),
                }))
            }
            ListenerKind::Ecstream => Ok(None),
        }
    }

    /// Reads the configuration again (from `path`, or [`Server::config_path`]) and, if it is valid, puts it in
    /// force; from then on, a reload without a path reads `path`. If it is not valid, nothing changes and the error
    /// lists every problem.
    ///
    /// The work runs on a task of its own and finishes even if the caller goes away meanwhile (a dashboard request
    /// whose client hung up, its watchdog): stopped half-way, it would leave listeners running that the server no
    /// longer knows of.
    pub async fn reload(&self, path: Option<&Path>) -> Result<ReloadReport, ReloadError> {
        let path = path.map(Path::to_owned);
        let Some(me) = self.me.upgrade() else {
            return self.reload_now(path).await;
        };
        let shown = path.clone().unwrap_or_else(|| self.config_path());
        match tokio::spawn(async move { me.reload_now(path).await }).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(ReloadError::Interrupted {
                path: shown,
                why: e.to_string(),
            }),
        }
    }

    /// [`Server::reload`]'s work.
    async fn reload_now(&self, path: Option<PathBuf>) -> Result<ReloadReport, ReloadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let path = path.unwrap_or_else(|| self.config_path());
        // A stop began while this reload waited: it would start listeners and deliveries the stop is ending.
        if self.stop_listeners.is_cancelled() {
            return Err(ReloadError::Interrupted {
                path,
                why: "a stop began before it could start".to_owned(),
            });
        }
        // Read and validated on a blocking thread: a slow disk or a large file never stalls the listeners.
        let load_path = path.clone();
        let loaded = tokio::task::spawn_blocking(move || Config::load(&load_path))
            .await
            .map_err(|e| ReloadError::Invalid {
                path: path.clone(),
                diagnostics: format!("loading the configuration failed: {e}"),
            })?;
        let config = loaded.map_err(|d| ReloadError::Invalid {
            path: path.clone(),
            diagnostics: d.to_string(),
        })?;
        crate::logs::stderr::apply(config.log_format());
        let config = Arc::new(config);
        // Alongside the rest of the reload, which does not wait for it to put the configuration in force.
        let logs_checked = tokio::spawn(check_logs(config.clone(), self.log_check.clone()));
        let old_config = self.config();
        let rest_toggled = injection_off(&self.config()) != injection_off(&config);
        crate::logs::levels::apply(&config);
        self.set_held_unless_stopping(apn_held(&config));
        let mut report = ReloadReport {
            path: path.clone(),
            warnings: config.warnings().iter().map(|w| w.to_string()).collect(),
            ..ReloadReport::default()
        };
        // Against the configuration herald started with: a value a reload did not apply stays pending (and named)
        // at every later reload, until herald restarts or the file has the running value again.
        for (option, scope) in Config::start_only_changes(&self.start_config, &config) {
            report.warnings.push(format!(
                "{option} changed in scope '{scope}': it is read at start only; the running value stays until \
                 herald restarts"
            ));
        }
        self.resolver.replace(config.clone());
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config.clone();
        *self.path.write().unwrap_or_else(|p| p.into_inner()) = path.clone();
        self.generation.fetch_add(1, Ordering::Relaxed);
        let failed = self.engine.reconfigure().await;
        // Every queue the new configuration cannot deliver, named or not in the report.
        let mut not_in_force: std::collections::HashSet<String> =
            failed.iter().map(|(q, _)| q.clone()).collect();
        report.unroutable = unroutable_queues(&self.engine, failed);
        // Domains without a queue now (idle, or not used since the start) are checked as well: a reload that
        // breaks one says so now, not at its next notification.
        let named = not_in_force.clone();
        let (checked, resolver) = (config.clone(), self.resolver.clone());
        let idle =
            tokio::task::spawn_blocking(move || undeliverable_domains(&checked, &resolver, &named))
                .await
                .unwrap_or_default();
        not_in_force.extend(idle.iter().map(|(q, _)| q.clone()));
        report.unroutable.extend(idle);
        for (queue, why) in &report.unroutable {
            tracing::warn!("reload: domain {queue} cannot be delivered: {why}");
        }
        // Spooled notifications the start left in the spool are queued once their domain can be delivered.
        spawn_requeue(
            self.restore_from.clone(),
            self.engine.clone(),
            self.restore_progress.clone(),
            self.left_in_spool.clone(),
            self.resolver.clone() as Arc<dyn SettingsResolver>,
        );
        self.webhooks.reconfigure();
        // A domain's new settings are in force when at least one of its (binding, domain) queues took them.
        let in_force: std::collections::HashSet<Arc<str>> = self
            .engine
            .queues()
            .into_iter()
            .filter(|(b, d)| !not_in_force.contains(&Engine::queue_name(b, d)))
            .map(|(_, d)| d)
            .collect();
        report.domains = in_force.len();

        let wanted = wanted_listeners(&config);
        let mut listeners = self.listeners.lock().await;
        let mut keep = Vec::new();
        // Listeners restarted above (whether or not they came back): not started a second time below.
        let mut tried = Vec::new();
        // Listeners whose address the new configuration no longer has: stopped below, once what replaces them is
        // bound (or kept, when it cannot be).
        let mut orphans = Vec::new();
        for running in listeners.drain(..) {
            let name = format!("{:?} {}", running.kind, running.settings.address);
            match wanted
                .iter()
                .find(|w| w.kind == running.kind && w.address == running.settings.address)
            {
                None => orphans.push(running),
                Some(new) if running.kind == ListenerKind::Esmtp => {
                    // Sessions notice the new generation and answer 421 4.3.2 at their next command.
                    let c = match smtp::SmtpConfig::from_config(&config, new.clone()) {
                        Ok(c) => c,
                        Err(e) => {
                            // The other new settings (address lists, limits, …) apply; only the TLS identity
                            // stays the one that loaded.
                            report.listener_errors.push(format!(
                                "{name}: its new TLS identity cannot be loaded ({e}); it keeps the old one, with \
                                 its other new settings"
                            ));
                            let old_tls = running
                                .smtp_config
                                .as_ref()
                                .and_then(|tx| tx.borrow().tls.clone());
                            smtp::SmtpConfig {
                                listener: new.clone(),
                                limits: smtp::SmtpLimits::from_config(&config, new),
                                tls: old_tls,
                            }
                        }
                    };
                    if let Some(tx) = &running.smtp_config {
                        let _ = tx.send(Arc::new(c));
                    }
                    let mut running = running;
                    running.settings = new.clone();
                    keep.push(running);
                }
                Some(new)
                    if *new == running.settings
                        && DoorLimits::from_config(&config, new)
                            == DoorLimits::from_config(&old_config, new)
                        && !(running.kind == ListenerKind::Http && rest_toggled)
                        && (running.kind == ListenerKind::Esmtp
                            || tls_files_hash(new) == running.tls_files) =>
                {
                    keep.push(running)
                }
                Some(new)
                    if *new == running.settings
                        && DoorLimits::from_config(&config, new)
                            == DoorLimits::from_config(&old_config, new)
                        && !(running.kind == ListenerKind::Http && rest_toggled)
                        && running.certificate.is_some() =>
                {
                    // Only the certificate's files changed (renewed in place): the new one is put in force without
                    // a restart, so the port never closes and the listener's sessions stay.
                    let mut running = running;
                    match rest::certified_key(new) {
                        Ok(Some(key)) => {
                            if let Some(certificate) = &running.certificate {
                                certificate.replace(key);
                            }
                            running.tls_files = tls_files_hash(new);
                            report.certificates_reloaded.push(name);
                        }
                        Ok(None) => {}
                        Err(e) => report.listener_errors.push(format!(
                            "{name}: its renewed TLS identity cannot be loaded ({e}); it keeps serving the previous \
                             one"
                        )),
                    }
                    keep.push(running);
                }
                Some(new) => {
                    let new = new.clone();
                    // What can fail before the old listener stops: a new TLS identity that does not load keeps
                    // the old listener running as it was.
                    let identity = match (running.kind, &new.tls_certificate) {
                        (ListenerKind::Http, _) => rest::tls_config(&new)
                            .map(|_| ())
                            .map_err(|e| e.to_string()),
                        (ListenerKind::Control, Some(cert)) => {
                            smtp::tls::server_config(cert, new.tls_key.as_deref())
                                .map(|_| ())
                                .map_err(|e| e.to_string())
                        }
                        _ => Ok(()),
                    };
                    if let Err(e) = identity {
                        report.listener_errors.push(format!(
                            "{name}: its new TLS identity cannot be loaded ({e}); it keeps running with its \
                             previous settings"
                        ));
                        keep.push(running);
                        continue;
                    }
                    let previous = running.settings.clone();
                    let previous_rules = running.control_rules();
                    tried.push((running.kind, running.settings.address.clone()));
                    stop_listener(running).await;
                    match self.start_listener(new, None).await {
                        Ok(Some(l)) => {
                            keep.push(l);
                            report.listeners_restarted.push(name);
                        }
                        Ok(None) => report.listeners_restarted.push(name),
                        Err(e) => match self.start_listener(previous, previous_rules).await {
                            Ok(Some(l)) => {
                                keep.push(l);
                                report.listener_errors.push(format!(
                                    "{name}: {e}; it runs again with its previous settings"
                                ));
                            }
                            Ok(None) => report.listener_errors.push(format!("{name}: {e}")),
                            Err(again) => report.listener_errors.push(format!(
                                "{name}: {e}; with its previous settings: {again}; it is down"
                            )),
                        },
                    }
                }
            }
        }
        let fresh: Vec<ListenerSettings> = wanted
            .into_iter()
            .filter(|new| {
                !keep
                    .iter()
                    .any(|k| k.kind == new.kind && k.settings.address == new.address)
                    && !tried.contains(&(new.kind, new.address.clone()))
            })
            .collect();
        // Each new listener replaces an orphan of its kind, if there is one (the one on an overlapping address
        // first, then in the order of the files): the orphan keeps its address until the new one is bound, and
        // keeps it when the new one cannot be. The orphans nothing replaces stop first, freeing their addresses.
        let mut pairs = Vec::new();
        for new in fresh {
            let replaced = orphans
                .iter()
                .position(|o| o.kind == new.kind && overlaps(&o.settings.addr, &new.addr))
                .or_else(|| orphans.iter().position(|o| o.kind == new.kind))
                .map(|i| orphans.remove(i));
            pairs.push((new, replaced));
        }
        for orphan in orphans {
            let name = format!("{:?} {}", orphan.kind, orphan.settings.address);
            stop_listener(orphan).await;
            report.listeners_stopped.push(name);
        }
        for (new, replaced) in pairs {
            self.replace_listener(new, replaced, &mut keep, &mut report)
                .await;
        }
        // The control listeners the new configuration has a stanza for take its rules; the others (kept on their old
        // address) keep theirs.
        for l in &keep {
            if let Some(tx) = &l.control_rules
                && crate::control::ControlRules::has_stanza(&config, &l.settings)
            {
                tx.send_replace(Arc::new(crate::control::ControlRules::from_config(
                    &config,
                    &l.settings,
                )));
            }
        }
        *listeners = keep;
        drop(listeners);
        match logs_checked.await {
            Ok(problems) => report.warnings.extend(problems),
            Err(e) => report
                .warnings
                .push(format!("the log files were not checked: {e}")),
        }
        tracing::info!(path = %path.display(), "configuration reloaded");
        Ok(report)
    }

    /// Starts `new` at a reload, in place of `replaced` (a listener whose address the new configuration no longer
    /// has), which stops once `new` is bound. When `new` cannot be bound, `replaced` keeps running with its
    /// previous settings; when their addresses overlap (the same port), `replaced` lets go of it for a second try
    /// and, if that fails too, is started again.
    async fn replace_listener(
        &self,
        new: ListenerSettings,
        replaced: Option<RunningListener>,
        keep: &mut Vec<RunningListener>,
        report: &mut ReloadReport,
    ) {
        let name = format!("{:?} {}", new.kind, new.address);
        let e = match self.start_listener(new.clone(), None).await {
            Ok(started) => {
                if let Some(l) = started {
                    keep.push(l);
                    report.listeners_started.push(name);
                }
                if let Some(old) = replaced {
                    let old_name = format!("{:?} {}", old.kind, old.settings.address);
                    stop_listener(old).await;
                    report.listeners_stopped.push(old_name);
                }
                return;
            }
            Err(e) => e,
        };
        let Some(old) = replaced else {
            report.listener_errors.push(format!("{name}: {e}"));
            return;
        };
        let old_name = format!("{:?} {}", old.kind, old.settings.address);
        if !overlaps(&old.settings.addr, &new.addr) {
            report.listener_errors.push(format!(
                "{name}: {e}; {old_name} keeps running with its previous settings"
            ));
            keep.push(old);
            return;
        }
        let previous = old.settings.clone();
        let previous_rules = old.control_rules();
        stop_listener(old).await;
        match self.start_listener(new, None).await {
            Ok(started) => {
                if let Some(l) = started {
                    keep.push(l);
                    report.listeners_started.push(name);
                }
                report.listeners_stopped.push(old_name);
            }
            Err(e) => match self.start_listener(previous, previous_rules).await {
                Ok(Some(l)) => {
                    keep.push(l);
                    report.listener_errors.push(format!(
                        "{name}: {e}; {old_name} runs again with its previous settings"
                    ));
                }
                Ok(None) => report.listener_errors.push(format!("{name}: {e}")),
                Err(again) => {
                    report.listener_errors.push(format!(
                        "{name}: {e}; {old_name} with its previous settings: {again}; it is down"
                    ));
                    report.listeners_stopped.push(old_name);
                }
            },
        }
    }

    /// Totals since start or the last [`Server::reset_summary`].
    pub fn summary(&self) -> Summary {
        let base = *self.baseline.lock().unwrap_or_else(|p| p.into_inner());
        let mut s = Summary::default();
        for (_, d) in self.engine.all_stats() {
            s.received += d.received.load(Ordering::Relaxed);
            s.delivered += d.delivered.load(Ordering::Relaxed);
            s.failed += d.permanent.load(Ordering::Relaxed);
            s.transient_failures += d.transient.load(Ordering::Relaxed);
            s.active_queue += d.active.load(Ordering::Relaxed) as u64;
            s.delayed_queue += d.delayed.load(Ordering::Relaxed) as u64;
            s.outbound_connections += d.connections.load(Ordering::Relaxed) as u64;
            if d.active.load(Ordering::Relaxed) + d.delayed.load(Ordering::Relaxed) > 0 {
                s.active_domains += 1;
            }
        }
        s.rejected = self.intake.refused();
        s.received -= base.received.min(s.received);
        s.delivered -= base.delivered.min(s.delivered);
        s.failed -= base.failed.min(s.failed);
        s.transient_failures -= base.transient.min(s.transient_failures);
        s.rejected -= base.rejected.min(s.rejected);
        let window = base
            .instant
            .unwrap_or(self.started)
            .elapsed()
            .as_secs_f64()
            .max(1e-3);
        s.delivery_rate = s.delivered as f64 / window;
        s.reception_rate = s.received as f64 / window;
        s.since = base.at;
        s.uptime = self.started.elapsed();
        s
    }

    /// `summary reset`: counters start again from zero.
    pub fn reset_summary(&self) {
        let mut base = Baseline {
            at: unix_now(),
            instant: Some(Instant::now()),
            ..Baseline::default()
        };
        for (_, d) in self.engine.all_stats() {
            base.received += d.received.load(Ordering::Relaxed);
            base.delivered += d.delivered.load(Ordering::Relaxed);
            base.failed += d.permanent.load(Ordering::Relaxed);
            base.transient += d.transient.load(Ordering::Relaxed);
        }
        base.rejected = self.intake.refused();
        *self.baseline.lock().unwrap_or_else(|p| p.into_inner()) = base;
    }

    /// Asks the process to shut down (console `shutdown`); whoever runs the server waits on
    /// [`Server::stop_requested`].
    pub fn request_stop(&self) {
        self.stop_requested.notify_one();
    }

    /// Resolves once [`Server::request_stop`] was called.
    pub async fn stop_requested(&self) {
        self.stop_requested.notified().await;
    }

    /// `reopen logs`: reopens the mainlogs, the apn_logger files and the feedback log (`feedback_logfile`); returns
    /// what could not be reopened.
    pub fn reopen_logs(&self) -> Vec<String> {
        let mut errors = self.logs.reopen();
        errors.extend(self.invalid_tokens.reopen_log());
        errors.into_iter().map(|e| e.to_string()).collect()
    }

    /// Stops accepting and holds delivery (of notifications and broadcasts), waits up to `grace` for sessions and for
    /// the notifications and broadcasts already on their way to APNs, then stores the last final outcomes and
    /// flushes the spool (which keeps the rest). What it leaves undone is logged; [`Server::shutdown_until`] also
    /// returns it.
    pub async fn shutdown(&self, grace: Duration) {
        self.shutdown_until(grace, std::future::pending()).await;
    }

    /// [`Server::shutdown`], with the grace period ended early once `cut` resolves (`herald serve` on a second SIGTERM
    /// or SIGINT): the sessions and the deliveries and broadcasts still on their way are waited for no longer, and the
    /// last outcomes, the spool and the logs are closed as when the grace period runs out. Returns what the stop
    /// left undone (each thing also logged).
    pub async fn shutdown_until(
        &self,
        grace: Duration,
        cut: impl std::future::Future<Output = ()>,
    ) -> ShutdownReport {
        let deadline = crate::model::instant_after(grace);
        // Every listener stops accepting at once (the dashboard's event streams end); the sessions and requests
        // still open finish within the grace period while the deliveries on their way do, not before them: a
        // slow client cannot take the time those deliveries are given. Delivery is held from now on: no reload
        // under way can release it any more (see `hold_for_stop`).
        self.hold_for_stop();
        // The listener tasks (and, through them, their sessions) this stop waits for: aborted should a second
        // signal end the wait, rather than left running detached when the wait is dropped.
        let waited: Mutex<Vec<tokio::task::AbortHandle>> = Mutex::new(Vec::new());
        let waited = &waited;
        let waits = async move {
            // A reload under way (a SIGHUP just before the stop) finishes first, within the grace period, and none
            // starts after: it would start listeners this stop does not wait for, and release the hold on delivery
            // below.
            let _no_reload = tokio::time::timeout(
                deadline.saturating_duration_since(Instant::now()),
                self.reloading.lock(),
            )
            .await;
            self.engine.set_held(true);
            let running: Vec<RunningListener> = self.listeners.lock().await.drain(..).collect();
            waited
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(running.iter().map(|l| l.task.abort_handle()));
            let sessions =
                futures_util::future::join_all(running.into_iter().map(|l| async move {
                    let mut task = l.task;
                    if tokio::time::timeout(
                        deadline.saturating_duration_since(Instant::now()),
                        &mut task,
                    )
                    .await
                    .is_err()
                    {
                        task.abort();
                    }
                }));
            // Nothing more goes out: what is queued stays in the spool for the next start (or, with JetStream,
            // goes back to the stream for another node), and only what is already on its way out finishes.
            // Delivering the backlog meanwhile would send notifications whose outcome may come after the spool
            // closed, to be sent again after the restart.
            self.engine.set_held(true);
            let deliveries = self.wait_for_deliveries(deadline);
            // Broadcasts alike: none starts any more, and those being sent finish, so that their outcomes are
            // stored before the last flush (a broadcast answered after it would be sent again at the next start).
            let broadcasts = self.broadcasts.hold(deadline);
            let (_, on_the_way, broadcasts_left) = tokio::join!(sessions, deliveries, broadcasts);
            (deadline, on_the_way, broadcasts_left, _no_reload.ok())
        };
        // The guard keeps a reload from starting until the stop is over.
        let (deadline, on_the_way, broadcasts_left, _no_reload) = tokio::select! {
            biased;
            left = waits => left,
            () = cut => {
                tracing::warn!("at shutdown: stop asked again: the grace period ends now");
                // Held, whatever point the wait had reached. A reload still under way is not waited for: it
                // cannot release the hold any more (`set_held_unless_stopping`), and the listeners it starts stop
                // at once (their tokens are children of the cancelled `stop_listeners`).
                let no_reload = self.reloading.try_lock().ok();
                self.engine.set_held(true);
                // The listeners and their sessions are waited for no longer: stopped, not left running detached.
                for task in waited.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
                    task.abort();
                }
                if let Ok(mut left) = self.listeners.try_lock() {
                    for l in left.drain(..) {
                        l.task.abort();
                    }
                }
                let now = Instant::now();
                let broadcasts_left = self.broadcasts.hold(now).await;
                (now, self.notifications_on_the_way(), broadcasts_left, no_reload)
            }
        };
        // Cut off by the end of the grace period: they stay spooled (stored) and go out again after the restart, as
        // a stop provides for; not something the stop failed to do.
        if on_the_way > 0 {
            tracing::warn!(
                "at shutdown: {on_the_way} notification(s) still on their way to APNs after the grace period; they \
                 may be sent again after the restart"
            );
        }
        if broadcasts_left > 0 {
            tracing::warn!(
                "at shutdown: {broadcasts_left} broadcast(s) still on their way to APNs after the grace period; they \
                 may be sent again after the restart"
            );
        }
        let undone = self.finish_shutdown(deadline).await;
        ShutdownReport {
            undone,
            on_the_way,
            broadcasts_on_the_way: broadcasts_left,
        }
    }

    /// A reload's hold on delivery (`apn { enabled = false }`) or its release, unless a stop began. A reload that
    /// passed its check of the stop before the stop began (or that the stop no longer waits for, after a second
    /// signal) must not release the hold: deliveries would start again while the stop stores the last outcomes and
    /// closes the spool, and be sent again after the restart. The check and the set are one step under
    /// `hold_order`, which [`Server::hold_for_stop`] takes too: either this comes wholly before the stop's hold
    /// (which then wins), or it sees the stop and leaves delivery held.
    fn set_held_unless_stopping(&self, held: bool) {
        let _order = self.hold_order.lock().unwrap_or_else(|p| p.into_inner());
        if !self.stop_listeners.is_cancelled() {
            self.engine.set_held(held);
        }
    }

    /// Begins a stop: every listener stops accepting, and delivery is held for good (no reload releases it any more,
    /// see [`Server::set_held_unless_stopping`]).
    fn hold_for_stop(&self) {
        let _order = self.hold_order.lock().unwrap_or_else(|p| p.into_inner());
        self.stop_listeners.cancel();
        self.engine.set_held(true);
    }

    /// Notifications handed to a connection and not answered yet, over every queue.
    fn notifications_on_the_way(&self) -> usize {
        self.engine
            .all_stats()
            .iter()
            .map(|(_, s)| s.dispatched.load(Ordering::Relaxed))
            .sum()
    }

    /// At shutdown: waits until no notification is on its way to APNs any more, or `deadline`; returns how many
    /// still are.
    async fn wait_for_deliveries(&self, deadline: Instant) -> usize {
        // Quiet twice in a row, a little apart: a queue that was dispatching as delivery was held publishes what
        // it handed out right after.
        let mut quiet_once = false;
        while Instant::now() < deadline {
            if self.notifications_on_the_way() == 0 {
                if quiet_once {
                    break;
                }
                quiet_once = true;
            } else {
                quiet_once = false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.notifications_on_the_way()
    }

    /// At shutdown, once the listeners and the deliveries are done: stores the last outcomes, closes the spool and
    /// flushes the logs. Returns what it could not do (each also logged).
    async fn finish_shutdown(&self, deadline: Instant) -> Vec<String> {
        let mut undone = Vec::new();
        // The outcomes of the last deliveries: stored now, so that status lookups and webhooks have them after the
        // restart.
        // Each step gets what is left of the grace period (at least a second): a store that takes no writes must
        // not make the stop last twice the grace.
        let left = || {
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(1))
        };
        if !self.status_book.flush(left()).await {
            let u = "final outcomes still waiting for the outcome store were not stored".to_owned();
            tracing::warn!("at shutdown: {u}");
            undone.push(u);
        }
        // Webhook batches in flight get what is left of the grace period for their answer, recorded so that a batch
        // taken is not sent again after the restart; no batch starts from here. Cut off, like a delivery: logged.
        let cut = self.webhooks.finish_sending(left()).await;
        if cut > 0 {
            tracing::warn!(
                "at shutdown: {cut} webhook batch(es) in flight got no answer within the grace period; they are sent \
                 again after the restart"
            );
        }
        if !self.webhooks.flush(left()).await {
            let u = "webhook outcomes still waiting for their queue were not stored".to_owned();
            tracing::warn!("at shutdown: {u}");
            undone.push(u);
        }
        let kept = self.bridge.release_removals();
        if kept > 0 {
            let u = format!(
                "{kept} delivered notification(s) stay spooled because their outcomes were not stored; they are sent \
                 again after the restart"
            );
            tracing::warn!("at shutdown: {u}");
            undone.push(u);
        }
        // A store that does not answer (a disk that hangs) must not keep herald from stopping: the close gets what
        // is left of the grace period, at least the spool's own limit on its close and 5 seconds (the JetStream
        // spool waits for its pull to end before it gives back what it holds: cut shorter, it gives back nothing).
        // That is enough for a store that is merely behind with its flushes or compactions too: once closing, the
        // spool no longer waits for them (its last commit is one write and one fsync), and should that commit fail,
        // it lists the removals still waiting for the next start.
        match tokio::time::timeout(left().max(self.spool_close_limit), self.spool.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!("closing the spool: {e}");
                undone.push(format!("the spool did not close: {e}"));
            }
            Err(_) => {
                let st = self.spool.stats();
                undone.push(format!(
                    "the spool did not close in time (its store does not answer); the removals of {} delivered \
                     notification(s) may not be written",
                    st.pending_removals
                ));
                tracing::error!(
                    pending_removals = st.pending_removals,
                    unwritable = st.unwritable,
                    "at shutdown: the spool did not close in time (its store does not answer); the removals of \
                     {} delivered notification(s) may not be written and those are sent again after the restart, \
                     and notifications not yet acknowledged are sent again by their senders",
                    st.pending_removals
                );
            }
        }
        match tokio::time::timeout(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(1)),
            self.broadcasts.flush(),
        )
        .await
        {
            Ok(Ok(())) => {}
            // Logged by the flush.
            Ok(Err(e)) => undone.push(format!("flushing broadcasts: {e}")),
            Err(_) => {
                let u = "the broadcasts' last writes were not flushed in time".to_owned();
                tracing::error!("at shutdown: {u}");
                undone.push(u);
            }
        }
        for e in self
            .logs
            .flush_at_shutdown(self.invalid_tokens.feedback_log())
            .await
        {
            tracing::error!("at shutdown: {e}");
            undone.push(e.to_string());
        }
        undone
    }
}

/// What a stop left undone ([`Server::shutdown_until`]): nothing after a clean stop.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// One sentence for each thing the stop failed to do (a spool that did not close, a log that did not flush,
    /// final outcomes or webhook events not stored, delivered notifications left spooled), as logged.
    pub undone: Vec<String>,
    /// Notifications still on their way to APNs when the grace period ended (they stay spooled and may be sent
    /// again after the restart): not a failure of the stop.
    pub on_the_way: usize,
    /// Broadcasts still being sent when the grace period ended, likewise.
    pub broadcasts_on_the_way: usize,
}

impl ShutdownReport {
    /// Whether the stop did everything it had to (deliveries cut off by the grace period aside).
    pub fn is_clean(&self) -> bool {
        self.undone.is_empty()
    }
}

/// How long a reload waits for a stopped listener to let go of its address before giving up on it (aborting it).
const STOP_WAIT: Duration = Duration::from_secs(5);

/// Stops a listener at a reload. Returns once its socket is closed, so that its address can be bound again at
/// once: an HTTP listener's open requests finish meanwhile in the background (within [`rest::server::DRAIN`]; its
/// dashboard event streams end at once), other listeners are waited for (at most [`STOP_WAIT`]).
async fn stop_listener(l: RunningListener) {
    l.stop.cancel();
    let mut task = l.task;
    if let Some(closed) = l.closed {
        if tokio::time::timeout(STOP_WAIT, closed).await.is_err() {
            task.abort();
        }
        return;
    }
    if tokio::time::timeout(STOP_WAIT, &mut task).await.is_err() {
        task.abort();
    }
}

/// Whether two listen addresses may take the same socket: the same Unix path, or the same TCP port (not 0, any
/// free one) on the same address or where one of them is the wildcard address.
fn overlaps(a: &ListenAddr, b: &ListenAddr) -> bool {
    match (a, b) {
        (ListenAddr::Tcp(a), ListenAddr::Tcp(b)) => {
            a.port() == b.port()
                && a.port() != 0
                && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
        }
        (ListenAddr::Unix(a), ListenAddr::Unix(b)) => a == b,
        _ => false,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether a module stanza is declared with `enabled = false`.
fn module_off(config: &Config, kind: herald_conf::ScopeKind) -> bool {
    config.module(kind).is_some_and(|m| !m.enabled)
}

/// `apn { enabled = false }`: delivery is held (notifications are accepted and spooled, not sent).
fn apn_held(config: &Config) -> bool {
    module_off(config, herald_conf::ScopeKind::Apn)
}

/// Why REST injection is refused, when `restinjector { enabled = false }`.
fn injection_off(config: &Config) -> Option<&'static str> {
    module_off(config, herald_conf::ScopeKind::Restinjector).then_some(
        "REST injection is turned off in this configuration (restinjector { enabled = false })",
    )
}

/// Logs at start, as a reload does, every domain the configuration cannot deliver (a provider key or certificate
/// file that cannot be read, no credentials at all, …): said at once, not at the domain's first notification. The
/// check reads every APNs domain's credential files, so it runs in the background: the start does not wait for it.
fn warn_undeliverable(config: &Arc<Config>, resolver: &Arc<ConfigResolver>) {
    let (checked, resolver) = (config.clone(), resolver.clone());
    tokio::task::spawn_blocking(move || {
        let none = std::collections::HashSet::new();
        for (queue, why) in undeliverable_domains(&checked, &resolver, &none) {
            tracing::warn!("domain {queue} cannot be delivered: {why}");
        }
    });
}

/// The (binding, domain) pairs `herald check` checks — every exactly named domain from every declared binding that
/// delivers it with `delivery_method = apn`, a binding with the same route and credentials as one already tried
/// not tried again — whose settings cannot be resolved under `config`, each as its queue's name
/// ([`Engine::queue_name`]: the domain for `default`, `BINDING:DOMAIN` otherwise) with why; queues named in `skip`
/// (already reported) are left out. Blocking: credential files are read.
fn undeliverable_domains(
    config: &Config,
    resolver: &ConfigResolver,
    skip: &std::collections::HashSet<String>,
) -> Vec<(String, String)> {
    let bindings = config.bindings();
    let mut out = Vec::new();
    for domain in config.domains().into_iter().filter(|d| !d.starts_with('/')) {
        let mut tried: Vec<Arc<herald_conf::DomainSettings>> = Vec::new();
        for &(group, binding) in &bindings {
            let d = config.domain_settings(group, Some(binding), domain);
            if d.delivery_method != herald_conf::DeliveryMethod::Apn
                || tried
                    .iter()
                    .any(|t| crate::credentials::same_credentials(t, &d))
            {
                continue;
            }
            let queue = Engine::queue_name(binding, domain);
            if skip.contains(&queue) {
                tried.push(d);
                continue;
            }
            if let Err(e) = resolver.resolve_binding(binding, domain) {
                out.push((queue, e.to_string()));
            } else {
                // Settings that load can still be refused by APNs for good: a client certificate expired or not
                // yet valid, a topic it does not carry, a production certificate for the sandbox host, … (what
                // `herald check` calls errors).
                let mut errors = Vec::new();
                crate::credentials::check_domain(&d, SystemTime::now(), &mut |severity, _, m| {
                    if severity == crate::credentials::Severity::Error {
                        errors.push(m);
                    }
                });
                if !errors.is_empty() {
                    out.push((queue, errors.join("; ")));
                }
            }
            tried.push(d);
        }
    }
    out
}

/// The queues a reload left without settings ([`Engine::reconfigure`]'s verdicts) that the reload's report names,
/// each with why. A queue of a domain the configuration no longer declares for its binding (removed, or left only
/// inside other bindings) is named only while the engine holds notifications of the domain, as removed from the
/// configuration: an idle queue of a removed domain lingers until `idle_queue_timeout`, and naming it at every
/// reload until then would only be noise.
fn unroutable_queues(
    engine: &Engine,
    failed: Vec<(String, ResolveError)>,
) -> Vec<(String, String)> {
    let keys: std::collections::HashMap<String, Arc<str>> = engine
        .queues()
        .into_iter()
        .map(|(b, d)| (Engine::queue_name(&b, &d), d))
        .collect();
    failed
        .into_iter()
        .filter_map(|(queue, why)| {
            let removed = matches!(
                why,
                ResolveError::UnknownDomain(_) | ResolveError::OnlyInBindings(_)
            );
            if !removed {
                return Some((queue, why.to_string()));
            }
            let held = keys.get(&queue).map_or(0, |d| engine.resident_in(d));
            (held > 0).then(|| (queue, removed_domain(&why, held)))
        })
        .collect()
}

/// What a reload says of a queue whose domain the configuration no longer declares for its binding (`why`, an
/// [`ResolveError::UnknownDomain`] or [`ResolveError::OnlyInBindings`]) while `held` notifications of the domain wait.
fn removed_domain(why: &ResolveError, held: usize) -> String {
    let waiting = if held == 1 {
        "1 notification of it waits".to_owned()
    } else {
        format!("{held} notifications of it wait")
    };
    let now = match why {
        ResolveError::OnlyInBindings(bindings) => format!(
            " for this binding (it is declared only for {})",
            crate::queue::binding_list(bindings)
        ),
        _ => String::new(),
    };
    format!(
        "it was removed from the configuration{now}; {waiting} until a reload declares it again (or \
         herald restarts)"
    )
}

#[cfg(test)]
mod removed_domain_tests {
    use super::*;

    /// A removed domain is said to be removed, with what waits, never with a delivery method's Rust name.
    #[test]
    fn a_removed_domain_is_named_as_removed() {
        let unknown = ResolveError::UnknownDomain("k.example".into());
        assert_eq!(
            removed_domain(&unknown, 2),
            "it was removed from the configuration; 2 notifications of it wait until a reload declares \
             it again (or herald restarts)"
        );
        let moved = ResolveError::OnlyInBindings(vec!["b1".into()]);
        assert_eq!(
            removed_domain(&moved, 1),
            "it was removed from the configuration for this binding (it is declared only for binding \"b1\"); 1 \
             notification of it waits until a reload declares it again (or herald restarts)"
        );
    }
}

#[cfg(test)]
mod undeliverable_domains_tests {
    use super::*;

    /// A binding whose own domain stanza breaks the credentials is named, with its binding, though the `default`
    /// binding delivers the domain; bindings that change nothing are not reported again.
    #[test]
    fn every_binding_that_delivers_a_domain_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let pki = herald_sim::Pki::generate(dir.path(), &[]).unwrap();
        let key = &pki.manifest.token_key;
        let text = format!(
            "domain \"app.example\" {{\n delivery_method = apn\n routes = ( \"https://127.0.0.1:1\" )\n \
             tls_verify = ca\n tls_ca = \"{ca}\"\n apn_key = \"{p8}\"\n apn_key_id = \"{kid}\"\n \
             apn_team_id = \"{tid}\"\n apn_topic = \"com.example.app\"\n}}\n\
             binding \"same\" {{ }}\n\
             binding_group \"g\" {{ binding \"b2\" {{ domain \"app.example\" {{ apn_key = \"/etc/passwd\" }} }} }}\n",
            ca = pki.manifest.ca_cert.display(),
            p8 = key.p8.display(),
            kid = key.key_id,
            tid = key.team_id,
        );
        let config = Arc::new(Config::parse_str("t.conf", &text).unwrap());
        let resolver = ConfigResolver::new(config.clone());
        let none = std::collections::HashSet::new();
        let found = undeliverable_domains(&config, &resolver, &none);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "b2:app.example");
        assert!(found[0].1.contains("/etc/passwd"), "{found:?}");
        // Already reported by its queue: not again.
        let skip = std::collections::HashSet::from(["b2:app.example".to_owned()]);
        assert!(undeliverable_domains(&config, &resolver, &skip).is_empty());
    }
}

/// The listeners to run: every enabled one, except HTTP listeners when `httpsrv { enabled = false }` turns the
/// HTTP server off.
fn wanted_listeners(config: &Config) -> Vec<ListenerSettings> {
    let http_off = module_off(config, herald_conf::ScopeKind::Httpsrv);
    config
        .listeners()
        .into_iter()
        .filter(|l| l.enabled && !(http_off && l.kind == ListenerKind::Http))
        .collect()
}

/// What the console may do with the running server (the control listener holds only this handle).
impl crate::control::ServerHandle for Server {
    fn config_path(&self) -> PathBuf {
        Server::config_path(self)
    }

    fn status_book(&self) -> Option<&StatusBook> {
        Some(&self.status_book)
    }
    fn status_peers(&self) -> Option<&herald_spool::PeerLookup> {
        self.status_peers.as_deref()
    }

    fn webhooks(&self) -> Option<&Webhooks> {
        Some(&self.webhooks)
    }

    fn channels(&self) -> Option<&crate::channels::ChannelManager> {
        Some(&self.channels)
    }

    fn config(&self) -> Arc<Config> {
        Server::config(self)
    }

    fn generation(&self) -> u64 {
        Server::generation(self)
    }

    fn engine(&self) -> &Engine {
        &self.engine
    }

    fn spool(&self) -> &dyn Spool {
        self.spool.as_ref()
    }

    fn invalid_tokens(&self) -> &InvalidTokenStore {
        &self.invalid_tokens
    }

    fn summary(&self) -> Summary {
        Server::summary(self)
    }

    fn reset_summary(&self) {
        Server::reset_summary(self)
    }

    fn request_stop(&self) {
        Server::request_stop(self)
    }

    fn reopen_logs(&self) -> Vec<String> {
        Server::reopen_logs(self)
    }

    fn reload<'a>(
        &'a self,
        path: Option<&'a Path>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<ReloadReport, ReloadError>> + Send + 'a>,
    > {
        Box::pin(Server::reload(self, path))
    }
}

/// How long a reload waits for [`check_logs`]: a log file on a hung network file system must not hold the reload
/// (and every later one) up.
const LOG_CHECK_WAIT: Duration = Duration::from_secs(5);

/// What `herald check` finds wrong with the loggers of `config` (an apn_logger format that does not parse, a log
/// file that cannot be written), as reload warnings: the loggers are read at start only, so the running ones keep
/// their settings and nothing is refused, but the next start would fail. Runs on a thread of its own, waited for at
/// most [`LOG_CHECK_WAIT`]; a thread stuck on a file is left behind (it holds no lock and does not delay the stop),
/// and while it is, later reloads do not start another (one stuck thread at most, not one per reload).
async fn check_logs(
    config: Arc<Config>,
    checking: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<String> {
    if checking.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return vec![
            "the log files were not checked: the check of an earlier reload has not returned yet (a log directory on \
             a file system that does not answer?)"
                .into(),
        ];
    }
    let (tx, rx) = oneshot::channel();
    let done = checking.clone();
    let spawned = std::thread::Builder::new()
        .name("herald-log-check".into())
        .spawn(move || {
            let problems = crate::logs::inspect(&config).problems;
            done.store(false, std::sync::atomic::Ordering::Release);
            let _ = tx.send(problems);
        });
    if let Err(e) = spawned {
        checking.store(false, std::sync::atomic::Ordering::Release);
        return vec![format!("the log files were not checked: {e}")];
    }
    match tokio::time::timeout(LOG_CHECK_WAIT, rx).await {
        Ok(Ok(problems)) => problems
            .into_iter()
            .map(|p| {
                format!(
                    "{p}: herald would not start with it (the loggers are read at start only: the running ones \
                     keep their settings)"
                )
            })
            .collect(),
        Ok(Err(_)) => vec!["the log files were not checked: the check ended early".into()],
        Err(_) => vec![format!(
            "the log files were not checked: the check took longer than {} s (a log directory on a file system \
             that does not answer?)",
            LOG_CHECK_WAIT.as_secs()
        )],
    }
}

/// The JetStream spool's options from the configuration.
/// This node's JetStream options: the configuration's, holding no more than the engine takes in memory (beyond,
/// its pull would wait on the engine while messages it fetched go unacknowledged, to be redelivered to another node
/// and sent twice).
fn node_options(s: &herald_conf::SpoolSettings, config: &herald_conf::Config) -> JetStreamOptions {
    let mut options = jetstream_options(s);
    let max_resident = EngineLimits::from_config(config).max_resident;
    if options.max_held > max_resident {
        tracing::warn!(
            "spool_nats_max_held = {} is above max_resident_notifications = {max_resident}; this node holds at \
             most {max_resident}",
            options.max_held
        );
        options.max_held = max_resident;
    }
    // Parked notifications take engine memory too: as many as held ones at most, within what is left of it.
    options.max_parked = options.max_held.min(max_resident - options.max_held);
    options
}

fn jetstream_options(s: &herald_conf::SpoolSettings) -> JetStreamOptions {
    let mut o = JetStreamOptions::new(s.nats_servers(), &s.nats_stream);
    o.replicas = s.nats_replicas as usize;
    o.credentials = s.nats_credentials.clone();
    o.token = s.nats_token.clone();
    o.tls_ca = s.nats_tls_ca.clone();
    o.tls_cert = s.nats_tls_cert.clone();
    o.tls_key = s.nats_tls_key.clone();
    o.connect_timeout = s.nats_timeout.max(Duration::from_secs(1));
    o.request_timeout = s.nats_timeout.max(Duration::from_secs(1));
    o.ack_wait = s.nats_ack_wait.max(Duration::from_secs(1));
    o.max_ack_pending = i64::from(s.nats_max_ack_pending);
    o.max_held = s.nats_max_held as usize;
    o.max_parked = o.max_held;
    o
}

/// With the JetStream spool the invalid-token store is shared through a key-value bucket named after the stream.
fn share_invalid_tokens(js: &Arc<JetStreamSpool>, store: &Arc<InvalidTokenStore>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let bucket = format!("{}_invalid_tokens", js.stream_name());
    store.share(herald_spool::SharedMap::open(js, &bucket, tx));
    let store = store.clone();
    tokio::spawn(async move {
        while let Some(entry) = rx.recv().await {
            store.record_from_peer(&entry.value);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stop that begins while a reload runs (a SIGHUP just before a SIGTERM) waits for it, then holds delivery:
    /// the reload's release of the hold (`apn_held` off) cannot undo it, and a reload asked once the stop began is
    /// refused rather than starting listeners the stop does not wait for.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stop_waits_for_a_running_reload_and_keeps_delivery_held() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("herald.conf");
        std::fs::write(
            &config,
            format!("spool_dir = \"{}\"\n", dir.path().join("spool").display()),
        )
        .unwrap();
        let server = Server::start(&config).await.unwrap();
        // A reload under way: it holds the reload lock, and releases delivery as it finishes.
        let reload = server.reloading.lock().await;
        let stopping = server.clone();
        let stop = tokio::spawn(async move { stopping.shutdown(Duration::from_secs(30)).await });
        let deadline = Instant::now() + Duration::from_secs(20);
        while !server.stop_listeners.is_cancelled() {
            assert!(Instant::now() < deadline, "the stop did not begin");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server.engine.set_held(false);
        drop(reload);
        tokio::time::timeout(Duration::from_secs(30), stop)
            .await
            .expect("the stop ends")
            .unwrap();
        assert!(
            server.engine.is_held(),
            "the reload released delivery during the stop"
        );
        let refused = server.reload(None).await;
        assert!(
            matches!(refused, Err(ReloadError::Interrupted { .. })),
            "{refused:?}"
        );
    }

    /// A reload that passed its check of the stop before the stop began (or one a second signal no longer waits
    /// for) releases the hold on delivery through `set_held_unless_stopping`: before the stop it does, once the stop
    /// began it cannot, and racing the stop it never leaves delivery released.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reload_racing_a_stop_never_leaves_delivery_released() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("herald.conf");
        std::fs::write(
            &config,
            format!("spool_dir = \"{}\"\n", dir.path().join("spool").display()),
        )
        .unwrap();
        let server = Server::start(&config).await.unwrap();
        server.set_held_unless_stopping(true);
        assert!(server.engine.is_held());
        server.set_held_unless_stopping(false);
        assert!(
            !server.engine.is_held(),
            "before a stop, a reload releases the hold"
        );

        // Reloads releasing the hold over and over on other threads while the stop begins: whichever comes first,
        // delivery is held once the stop began, and stays held.
        let go = std::sync::Barrier::new(5);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    go.wait();
                    for _ in 0..2000 {
                        server.set_held_unless_stopping(false);
                    }
                });
            }
            go.wait();
            server.hold_for_stop();
            assert!(server.engine.is_held(), "the stop did not hold delivery");
        });
        assert!(server.stop_listeners.is_cancelled());
        assert!(
            server.engine.is_held(),
            "a reload released delivery after the stop began"
        );
        server.set_held_unless_stopping(false);
        assert!(server.engine.is_held());
        server.shutdown(Duration::from_secs(1)).await;
        assert!(server.engine.is_held());
    }

    /// A second signal while a reload is under way: the stop does not wait for it, and the reload, finishing
    /// during or after the cut stop, does not release delivery.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cut_stop_keeps_delivery_held_against_a_reload_it_did_not_wait_for() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("herald.conf");
        std::fs::write(
            &config,
            format!("spool_dir = \"{}\"\n", dir.path().join("spool").display()),
        )
        .unwrap();
        let server = Server::start(&config).await.unwrap();
        // A reload under way, past its check of the stop: it holds the reload lock and releases delivery later.
        let reload = server.reloading.lock().await;
        tokio::time::timeout(
            Duration::from_secs(30),
            server.shutdown_until(Duration::from_secs(30), std::future::ready(())),
        )
        .await
        .expect("a cut stop does not wait for the reload");
        // The reload reaches its release of the hold only now.
        server.set_held_unless_stopping(false);
        drop(reload);
        assert!(
            server.engine.is_held(),
            "the reload released delivery after the stop"
        );
    }

    /// The console's `reopen logs` waits for each log's writer thread, up to a second for one that cannot open its file (here a
    /// FIFO no process reads: the open waits for a reader). It used to wait on an async worker thread, so with one
    /// worker nothing else ran meanwhile (the listeners, the other console clients). The other task must run
    /// before the reopen gives up on the file (after a second).
    #[cfg(unix)]
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn reopen_logs_does_not_hold_an_async_worker_while_a_log_blocks() {
        use std::os::unix::fs::OpenOptionsExt;
        use std::sync::atomic::AtomicBool;
        use std::sync::mpsc::channel;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("mainlog.fifo");
        let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o644) }, 0);
        let read_fifo = || {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo)
                .unwrap()
        };
        let config = dir.path().join("herald.conf");
        std::fs::write(
            &config,
            format!(
                "spool_dir = \"{}\"\nec_logger \"main\" {{ mainlog = \"{}\" }}\n",
                dir.path().join("spool").display(),
                fifo.display()
            ),
        )
        .unwrap();
        // A reader while the server starts (its open of the FIFO waits for one), gone before the reopen.
        let reader = read_fifo();
        let server = Server::start(&config).await.unwrap();
        drop(reader);

        let (started, reopening) = channel();
        let done = Arc::new(AtomicBool::new(false));
        let (handle, finished) = (server.clone(), done.clone());
        let reopen = tokio::spawn(async move {
            let _ = started.send(());
            let reply = crate::control::commands::execute(
                &*handle,
                crate::control::commands::Command::ReopenLogs,
            )
            .await;
            finished.store(true, Ordering::SeqCst);
            reply
        });
        reopening
            .recv_timeout(Duration::from_secs(10))
            .expect("the reopen did not start");
        let (ran, other_ran) = channel();
        tokio::spawn(async move {
            let _ = ran.send(());
        });
        other_ran
            .recv_timeout(Duration::from_secs(10))
            .expect("no other task ran");
        assert!(
            !done.load(Ordering::SeqCst),
            "another task ran only once the reopen was over: it held the only async worker"
        );
        let reply = reopen.await.unwrap();
        assert!(!reply.ok, "{}", reply.text);
        assert!(reply.text.contains("mainlog.fifo"), "{}", reply.text);
        // A reader again: the writer thread's open returns, and the stop does not wait for the file.
        let _reader = read_fifo();
        server.shutdown(Duration::from_secs(1)).await;
    }
}
