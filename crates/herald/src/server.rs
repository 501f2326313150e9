//! The running daemon (`herald serve`): wires inbound -> spool -> queue -> outbound from one configuration.
//!
//! [`Server::start`] opens the logs and the spool, queues again whatever the spool holds, binds every enabled
//! listener and returns a [`Server`] that knows its bound addresses. [`Server::shutdown`] stops accepting, lets
//! sessions and in-flight deliveries finish for a moment, and flushes the spool: whatever did not finish stays
//! spooled and is delivered after the next start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use herald_conf::{Config, ListenerKind, SpoolBackend};
use herald_spool::{DiskSpool, Spool, SpoolOptions};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::delivery::ConfigResolver;
use crate::inbound::accept::Intake;
use crate::inbound::{rest, smtp};
use crate::logs::Logs;
use crate::metrics;
use crate::queue::message::IdGenerator;
use crate::queue::{Engine, EngineLimits, MemoryInvalidTokens};
use crate::spool::{SpoolBridge, restore};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{path}: the configuration has errors:\n{diagnostics}")]
    Config { path: PathBuf, diagnostics: String },
    #[error("opening logs: {0}")]
    Logs(#[from] crate::logs::LogSetupError),
    #[error("spool {dir}: {source}")]
    Spool {
        dir: PathBuf,
        source: herald_spool::SpoolError,
    },
    #[error("spool_backend = jetstream is not available in this build; use the embedded spool")]
    JetStreamUnavailable,
    #[error("{0}")]
    Listener(String),
}

/// The addresses the listeners are bound to (what `herald serve` prints when ready).
#[derive(Debug, Clone, Default, Serialize)]
pub struct BoundAddrs {
    pub esmtp: Vec<SocketAddr>,
    pub http: Vec<SocketAddr>,
}

/// A running herald.
pub struct Server {
    pub addrs: BoundAddrs,
    pub engine: Arc<Engine>,
    pub intake: Arc<Intake>,
    pub spool: Arc<dyn Spool>,
    pub config: Arc<Config>,
    pub invalid_tokens: Arc<MemoryInvalidTokens>,
    shutdown: watch::Sender<bool>,
    listeners: JoinSet<()>,
    logs: Logs,
}

impl Server {
    /// Starts everything `path` configures.
    pub async fn start(path: &Path) -> Result<Server, StartError> {
        let config = Config::load(path).map_err(|d| StartError::Config {
            path: path.to_owned(),
            diagnostics: d.to_string(),
        })?;
        for w in config.warnings() {
            tracing::warn!("{w}");
        }
        let config = Arc::new(config);
        let (logs, heartbeat) = Logs::open(&config)?;
        logs.spawn_maintenance(Duration::from_millis(200), heartbeat);

        let spool_settings = config.spool();
        if spool_settings.backend == SpoolBackend::JetStream {
            return Err(StartError::JetStreamUnavailable);
        }
        let dir = spool_settings.dir.clone();
        let spool: Arc<dyn Spool> = Arc::new(
            DiskSpool::open(&dir, SpoolOptions::default()).map_err(|source| StartError::Spool {
                dir: dir.clone(),
                source,
            })?,
        );

        let resolver = Arc::new(ConfigResolver::new(config.clone()));
        let invalid_tokens = Arc::new(MemoryInvalidTokens::default());
        let engine = Arc::new(Engine::new(
            resolver.clone(),
            logs.clone(),
            invalid_tokens.clone(),
            EngineLimits::default(),
        ));
        let bridge = Arc::new(SpoolBridge::new(spool.clone()));
        engine.set_observer(bridge.clone());
        let started = Instant::now();
        let restored = restore(spool.clone(), engine.clone())
            .await
            .map_err(|source| StartError::Spool {
                dir: dir.clone(),
                source,
            })?;
        if restored.report.recovered > 0 || restored.report.skipped > 0 {
            tracing::info!(
                queued = restored.queued,
                dropped = restored.dropped,
                skipped = restored.report.skipped,
                "recovered the spool in {:?}",
                started.elapsed()
            );
        }
        let ids = IdGenerator::above(0, restored.max_id);
        let intake = Arc::new(Intake::new(resolver, bridge, engine.clone(), ids));

        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut listeners = JoinSet::new();
        let mut addrs = BoundAddrs::default();
        for settings in config.listeners().into_iter().filter(|l| l.enabled) {
            match settings.kind {
                ListenerKind::Esmtp => {
                    let socket = smtp::bind(&settings)
                        .await
                        .map_err(|e| StartError::Listener(e.to_string()))?;
                    addrs.esmtp.push(
                        socket
                            .local_addr()
                            .map_err(|e| StartError::Listener(e.to_string()))?,
                    );
                    let smtp_config = smtp::SmtpConfig::new(settings, smtp::SmtpLimits::default())
                        .map_err(|e| StartError::Listener(e.to_string()))?;
                    let (_config_tx, config_rx) = watch::channel(Arc::new(smtp_config));
                    listeners.spawn(smtp::serve(
                        socket,
                        config_rx,
                        intake.clone(),
                        shutdown_rx.clone(),
                    ));
                }
                ListenerKind::Http => {
                    let addr = match &settings.addr {
                        herald_conf::ListenAddr::Tcp(a) => *a,
                        herald_conf::ListenAddr::Unix(p) => {
                            return Err(StartError::Listener(format!(
                                "http_listener listen {}: Unix sockets are not supported",
                                p.display()
                            )));
                        }
                    };
                    let socket = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                        StartError::Listener(format!("http_listener listen {addr}: {e}"))
                    })?;
                    addrs.http.push(
                        socket
                            .local_addr()
                            .map_err(|e| StartError::Listener(e.to_string()))?,
                    );
                    let tls = rest::tls_config(&settings)
                        .map_err(|e| StartError::Listener(e.to_string()))?;
                    let extra = ops_routes(engine.clone(), spool.clone(), invalid_tokens.clone());
                    let app =
                        rest::router_with(rest::RestState::new(settings, intake.clone()), extra);
                    let intake = intake.clone();
                    let rx = shutdown_rx.clone();
                    listeners.spawn(async move {
                        if let Err(e) = rest::serve_app(socket, app, intake, tls, rx).await {
                            tracing::error!("REST listener stopped: {e}");
                        }
                    });
                }
                ListenerKind::Control | ListenerKind::Ecstream => {
                    tracing::warn!(listener = %settings.address, "{:?} listeners are not served by herald yet", settings.kind);
                }
            }
        }
        Ok(Server {
            addrs,
            engine,
            intake,
            spool,
            config,
            invalid_tokens,
            shutdown,
            listeners,
            logs,
        })
    }

    /// Stops accepting, waits up to `grace` for sessions and in-flight deliveries, then flushes the spool.
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.shutdown.send(true);
        let deadline = Instant::now() + grace;
        let _ = tokio::time::timeout(grace, async {
            while self.listeners.join_next().await.is_some() {}
        })
        .await;
        self.listeners.abort_all();
        while Instant::now() < deadline {
            let busy: usize = self
                .engine
                .all_stats()
                .iter()
                .map(|(_, s)| s.in_flight.load(std::sync::atomic::Ordering::Relaxed))
                .sum();
            if busy == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Err(e) = self.spool.close().await {
            tracing::error!("closing the spool: {e}");
        }
        self.logs.flush();
    }
}

/// Routes for operators on the http listener: Prometheus metrics and readiness.
fn ops_routes(
    engine: Arc<Engine>,
    spool: Arc<dyn Spool>,
    invalid: Arc<MemoryInvalidTokens>,
) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let engine = engine.clone();
                let spool = spool.clone();
                let invalid = invalid.clone();
                async move {
                    let stats = spool.stats();
                    let extra = metrics::Extra {
                        certificate_expiry: Vec::new(),
                        spool: Some((stats.records, stats.bytes_on_disk)),
                        invalid_tokens: Some(invalid.0.lock().map(|v| v.len() as u64).unwrap_or(0)),
                    };
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        metrics::render(&engine, &extra),
                    )
                }
            }),
        )
        .route("/readyz", get(|| async { "ready" }))
}
