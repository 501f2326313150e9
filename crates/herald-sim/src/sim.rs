//! Starting and stopping a simulator: binds the six listeners, builds the shared state, spawns the tasks, and
//! hands back a [`SimHandle`] to read statistics and the delivery record, change token states and stop.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{self, AdminContext};
use crate::binary::{self, BinaryContext, Service};
use crate::broadcast::{self, BroadcastContext, ChannelStore, Port};
use crate::config::{ConfigError, SimConfig};
use crate::h2::{self as h2srv, ConnSettings, H2Context, KeyRing};
use crate::pace::{Pace, PaceSettings};
use crate::record::{DeliveryRecord, Recorder};
use crate::registry::TokenRegistry;
use crate::scenario::TokenState;
use crate::stats::{Stats, StatsSnapshot};
use crate::tls::{TlsSetupError, server_config};

/// Why a simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error("cannot listen on {addr} ({service}): {source}")]
    Bind {
        service: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open the delivery record: {0}")]
    Record(std::io::Error),
    #[error("invalid scenario: {0}")]
    Scenario(String),
}

/// Where each service listens. Serialized, this is the line `herald sim` prints when ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimAddrs {
    pub h2: SocketAddr,
    pub binary: SocketAddr,
    pub feedback: SocketAddr,
    pub admin: SocketAddr,
    /// Channel management (docs/apns-protocol.md §6.2).
    pub management: SocketAddr,
    /// Broadcast sends.
    pub broadcast: SocketAddr,
}

/// The APNs simulator. See the crate documentation for an example.
pub struct Simulator;

/// A running simulator. Dropping it stops the listeners (open connections end when the runtime does).
pub struct SimHandle {
    pub addrs: SimAddrs,
    stats: Arc<Stats>,
    recorder: Arc<Recorder>,
    registry: Arc<TokenRegistry>,
    stop: watch::Sender<bool>,
    shutdown_binary: watch::Sender<u64>,
    goaway_all: watch::Sender<u64>,
    pace: Arc<Pace>,
    broadcast: Arc<BroadcastContext>,
    tasks: Vec<JoinHandle<()>>,
}

async fn bind(service: &'static str, addr: SocketAddr) -> Result<TcpListener, SimError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| SimError::Bind {
            service,
            addr,
            source,
        })
}

impl Simulator {
    /// Starts every service on the current tokio runtime (which must have the timer and I/O drivers enabled).
    pub async fn start(mut config: SimConfig) -> Result<SimHandle, SimError> {
        let sc = config.scenario.clone();
        if let Some(e) = sc.environment {
            config.environment = e;
        }
        if let Some(a) = sc.auth {
            config.auth = a;
        }
        if let Some(m) = sc.max_concurrent_streams {
            config.max_concurrent_streams = m;
        }
        if let Some(c) = sc.choppy_streams {
            config.choppy_streams = c;
        }
        if let Some(o) = sc.stream_overrun {
            config.stream_overrun = o;
        }
        if sc.apple_settings {
            config.apple_settings();
        }
        if let Some(w) = sc.initial_window_size {
            config.initial_window_size = w;
        }
        if let Some(w) = sc.connection_window_size {
            config.connection_window_size = w;
        }
        if let Some(m) = sc.max_header_list_size {
            config.max_header_list_size = m;
        }
        let compiled = sc.compile().map_err(SimError::Scenario)?;
        config.check_settings()?;
        let settings = ConnSettings::of(&config);
        // Capped at a year, a deadline the clock can hold.
        let body_timeout = config.body_timeout.min(Duration::from_secs(365 * 86_400));

        let h2_tls = server_config(&config.tls, false, true)?;
        let bin_tls = server_config(&config.tls, true, false)?;
        let keys = Arc::new(KeyRing::new(&config.provider_keys)?);

        let ip = config.listen_ip;
        let h2_l = bind("h2", SocketAddr::new(ip, config.h2_port)).await?;
        let bin_l = bind("binary", SocketAddr::new(ip, config.binary_port)).await?;
        let fb_l = bind("feedback", SocketAddr::new(ip, config.feedback_port)).await?;
        // The admin API has no authentication: it listens on its own address, local by default.
        let admin_ip = config.admin_ip;
        let admin_l = bind("admin", SocketAddr::new(admin_ip, config.admin_port)).await?;
        let manage_l = bind("management", SocketAddr::new(ip, config.management_port)).await?;
        let bcast_l = bind("broadcast", SocketAddr::new(ip, config.broadcast_port)).await?;
        let local = |l: &TcpListener, service, port| {
            l.local_addr().map_err(|source| SimError::Bind {
                service,
                addr: SocketAddr::new(if service == "admin" { admin_ip } else { ip }, port),
                source,
            })
        };
        let addrs = SimAddrs {
            h2: local(&h2_l, "h2", config.h2_port)?,
            binary: local(&bin_l, "binary", config.binary_port)?,
            feedback: local(&fb_l, "feedback", config.feedback_port)?,
            admin: local(&admin_l, "admin", config.admin_port)?,
            management: local(&manage_l, "management", config.management_port)?,
            broadcast: local(&bcast_l, "broadcast", config.broadcast_port)?,
        };

        let stats = Arc::new(Stats::default());
        let recorder = Arc::new(
            Recorder::start(
                config.record_path.as_deref(),
                config.record_in_memory,
                config.record_memory_limit,
            )
            .map_err(SimError::Record)?,
        );
        let registry = Arc::new(TokenRegistry::new(&sc.token_rules()));
        let (stop, stop_rx) = watch::channel(false);
        let (shutdown_binary, shutdown_binary_rx) = watch::channel(0u64);
        let (goaway_all, goaway_all_rx) = watch::channel(0u64);

        let pace = Arc::new(Pace::new(sc.latency_ms, sc.latency_jitter_ms, sc.rate));
        let bc_ctx = Arc::new(BroadcastContext {
            stats: stats.clone(),
            recorder: recorder.clone(),
            keys: keys.clone(),
            environment: config.environment,
            auth: config.auth,
            token_max_age: config.token_max_age,
            token_update_interval: config.token_update_interval,
            channels: ChannelStore::new(sc.max_channels.unwrap_or(10_000)),
            disabled: sc.broadcast_disabled.clone(),
            fail_next: Mutex::default(),
            settings,
            body_timeout,
            goaway_all: goaway_all_rx.clone(),
        });
        let h2_ctx = Arc::new(H2Context {
            stats: stats.clone(),
            recorder: recorder.clone(),
            registry: registry.clone(),
            keys,
            scenario: compiled.clone(),
            pace: pace.clone(),
            environment: config.environment,
            auth: config.auth,
            settings,
            choppy_streams: config.choppy_streams,
            stream_overrun: config.stream_overrun,
            token_max_age: config.token_max_age,
            token_update_interval: config.token_update_interval,
            body_timeout,
            unique_id: config.sends_unique_id(),
            ordinal: AtomicU64::new(0),
            goaway_all: goaway_all_rx,
        });
        let bin_ctx = Arc::new(BinaryContext {
            stats: stats.clone(),
            recorder: recorder.clone(),
            registry: registry.clone(),
            scenario: compiled,
            environment: config.environment,
            ordinal: AtomicU64::new(0),
            shutdown: shutdown_binary_rx,
        });
        let admin_ctx = Arc::new(AdminContext {
            stats: stats.clone(),
            registry: registry.clone(),
            memory: config.record_in_memory.then(|| recorder.memory.clone()),
            shutdown_binary: shutdown_binary.clone(),
            goaway_all: goaway_all.clone(),
            pace: pace.clone(),
        });
        let tasks = vec![
            tokio::spawn(h2srv::serve(h2_l, h2_tls.clone(), h2_ctx, stop_rx.clone())),
            tokio::spawn(binary::serve(
                bin_l,
                bin_tls.clone(),
                bin_ctx.clone(),
                Service::Gateway,
                stop_rx.clone(),
            )),
            tokio::spawn(binary::serve(
                fb_l,
                bin_tls,
                bin_ctx,
                Service::Feedback,
                stop_rx.clone(),
            )),
            tokio::spawn(broadcast::serve(
                manage_l,
                h2_tls.clone(),
                bc_ctx.clone(),
                Port::Management,
                stop_rx.clone(),
            )),
            tokio::spawn(broadcast::serve(
                bcast_l,
                h2_tls.clone(),
                bc_ctx.clone(),
                Port::Broadcast,
                stop_rx.clone(),
            )),
            tokio::spawn(admin::serve(admin_l, admin_ctx, stop_rx)),
        ];
        tracing::info!(
            h2 = %addrs.h2, management = %addrs.management, broadcast = %addrs.broadcast, binary = %addrs.binary, feedback = %addrs.feedback, admin = %addrs.admin,
            environment = config.environment.as_str(), "APNs simulator listening"
        );
        Ok(SimHandle {
            addrs,
            stats,
            recorder,
            registry,
            stop,
            shutdown_binary,
            goaway_all,
            pace,
            broadcast: bc_ctx,
            tasks,
        })
    }
}

impl SimHandle {
    /// The counters now.
    pub fn stats(&self) -> StatsSnapshot {
        let mut snapshot = self.stats.snapshot();
        snapshot.records_dropped = self.record_dropped();
        snapshot
    }

    /// The live counters (cheaper than a snapshot for polling one number).
    pub fn counters(&self) -> &Stats {
        &self.stats
    }

    /// The accepted notifications recorded so far, oldest first: the latest [`SimConfig::record_memory_limit`]
    /// (requires `record_in_memory`, the default). A notification is in it before the simulator answers it; the
    /// `--record` file trails slightly ([`SimHandle::wait_for_records`]).
    pub fn record(&self) -> Vec<DeliveryRecord> {
        // Copied out of the lock, which every accepted request takes.
        let (records, _) = self
            .recorder
            .memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .snapshot();
        records.iter().map(|r| DeliveryRecord::clone(r)).collect()
    }

    /// Notifications dropped from the in-memory record, oldest first, to keep it within
    /// [`SimConfig::record_memory_limit`]; [`SimHandle::record`] holds the ones after them.
    pub fn record_dropped(&self) -> u64 {
        self.recorder
            .memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .dropped()
    }

    /// Waits until at least `n` notifications were recorded (file and memory), or `timeout`. Returns the count.
    pub async fn wait_for_records(&self, n: u64, timeout: Duration) -> u64 {
        let mut rx = self.recorder.written.clone();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n)).await;
        *rx.borrow()
    }

    /// Waits until at least `n` notifications were accepted (both protocols), or `timeout`. Returns the count.
    pub async fn wait_for_accepted(&self, n: u64, timeout: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let c = self.stats.accepted();
            if c >= n || tokio::time::Instant::now() >= deadline {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Sets a token's state at run time (as the admin `POST /tokens`).
    pub fn set_token(
        &self,
        token_hex: &str,
        state: TokenState,
        topic: Option<String>,
        timestamp_ms: Option<u64>,
    ) {
        self.registry.set(token_hex, state, topic, timestamp_ms);
    }

    /// Changes the HTTP/2 latency or rate while running (as the admin `POST /pace`, but a latency or jitter over
    /// [`crate::pace::MAX_LATENCY_MS`] is capped rather than refused); returns every value now.
    pub fn set_pace(&self, settings: PaceSettings) -> PaceSettings {
        self.pace.set(settings);
        self.pace.get()
    }

    /// Every binary connection answers status 10 (shutdown) and closes.
    pub fn shutdown_binary(&self) {
        self.shutdown_binary.send_modify(|g| *g += 1);
    }

    /// Every HTTP/2 connection sends GOAWAY `{"reason":"Shutdown"}` and closes.
    pub fn goaway_all(&self) {
        self.goaway_all.send_modify(|g| *g += 1);
    }

    /// The next broadcasts that pass every check are answered with these reasons, one each, in order (for
    /// tests of reasons a simulator has no other way to produce, such as TooManyRequests or Shutdown).
    pub fn fail_next_broadcasts(&self, reasons: &[herald_apns::broadcast::BroadcastReason]) {
        self.broadcast
            .fail_next
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(reasons.iter().copied());
    }

    /// Channels that exist now, over every bundle id.
    pub fn channel_count(&self) -> usize {
        self.broadcast.channels.count()
    }

    /// The channel ids of `bundle` that exist now, sorted.
    pub fn channels(&self, bundle: &str) -> Vec<String> {
        let mut ids = self.broadcast.channels.list(bundle);
        ids.sort();
        ids
    }

    /// The line `herald sim` prints:
    /// `{"h2":"…","binary":"…","feedback":"…","admin":"…","management":"…","broadcast":"…"}`.
    pub fn addrs_json(&self) -> String {
        serde_json::to_string(&self.addrs).unwrap_or_default()
    }

    /// Stops accepting, asks open HTTP/2 connections to go away, and waits for the listeners to end.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        self.goaway_all.send_modify(|g| *g += 1);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
