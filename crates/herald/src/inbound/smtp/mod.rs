//! The ESMTP listener (docs/momentum-compat.md#mcmt-reception, docs/architecture.md#inbound): accepts connections on a
//! bound socket, checks the peer against the listener's access lists, and runs one [`session`] per connection, which
//! turns MCMT messages into notifications through the [`Intake`].
//!
//! Entry points for `herald serve`: [`bind`] a `listen` stanza, build an [`SmtpConfig`] with
//! [`SmtpConfig::from_config`] (reads the stanza's [`limits`], loads the STARTTLS identity), then [`serve`] it.
//! Configuration reload: send a new `Arc<SmtpConfig>` on the watch channel; new connections use it (its limits
//! included) and sessions opened before it keep theirs and answer their next command `421` with the new
//! configuration's `reconfig_message`, by default `4.3.2 Reconfiguration in progress`
//! (docs/momentum-compat.md#console-config). Shutdown: cancel the shutdown token;
//! sessions answer `421` and [`serve`] returns once every session has ended.

pub mod command;
pub mod io;
pub mod limits;
pub mod reply;
pub mod session;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herald_conf::{Config, ListenAddr, ListenerSettings};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::accept::Intake;
use super::doors::{ConnLimiter, DoorLimits};
pub use limits::{
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_ERRORS, DEFAULT_MAX_JUNK,
    DEFAULT_MAX_LINE, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_RECIPIENTS, DEFAULT_REFUSED_ANSWERS,
    DEFAULT_REFUSED_STAY, DEFAULT_REFUSED_WAIT, SmtpLimits,
};
pub use tls::TlsSetupError;

/// Everything a session needs from the configuration of its `listen` stanza.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub listener: ListenerSettings,
    pub limits: SmtpLimits,
    /// Offered as STARTTLS when present.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl SmtpConfig {
    /// The configuration of one `listen` stanza as `config` has it: its limits ([`SmtpLimits::from_config`]) and
    /// its STARTTLS identity. What `herald serve` builds at start and at every reload.
    pub fn from_config(config: &Config, listener: ListenerSettings) -> Result<Self, TlsSetupError> {
        let limits = SmtpLimits::from_config(config, &listener);
        SmtpConfig::new(listener, limits)
    }

    /// A listen stanza with the given limits (used as they are); loads the STARTTLS identity when the stanza has a
    /// `tls_certificate`.
    pub fn new(listener: ListenerSettings, limits: SmtpLimits) -> Result<Self, TlsSetupError> {
        let tls = match &listener.tls_certificate {
            Some(cert) => Some(tls::server_config(cert, listener.tls_key.as_deref())?),
            None => None,
        };
        Ok(SmtpConfig {
            listener,
            limits,
            tls,
        })
    }
}

/// Why a listen stanza could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("listen {0:?}: ESMTP listeners take an address:port, not a Unix socket")]
    Unix(String),
    #[error("listen {address:?}: cannot bind {addr}: {source}")]
    Io {
        address: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the TCP socket of a `listen` stanza.
pub async fn bind(settings: &ListenerSettings) -> Result<TcpListener, BindError> {
    match &settings.addr {
        ListenAddr::Tcp(addr) => TcpListener::bind(addr)
            .await
            .map_err(|source| BindError::Io {
                address: settings.address.clone(),
                addr: *addr,
                source,
            }),
        ListenAddr::Unix(_) => Err(BindError::Unix(settings.address.clone())),
    }
}

/// Clients refused by `always_deny` being answered at once (`554`, then `503` until `QUIT`, for 30 s at most). They
/// take none of the listener's connection slots, which stay for the clients it serves; beyond this many, a refused
/// client's connection is closed without a word.
pub const MAX_REFUSED_SESSIONS: usize = 64;

/// Accepts connections until `shutdown` is cancelled, then waits for the open sessions (each answers `421`) and
/// returns.
pub async fn serve(
    listener: TcpListener,
    config: watch::Receiver<Arc<SmtpConfig>>,
    intake: Arc<Intake>,
    shutdown: CancellationToken,
) {
    let mut sessions = JoinSet::new();
    let conns = ConnLimiter::network();
    let refusals = Arc::new(Semaphore::new(MAX_REFUSED_SESSIONS));
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    // A client `always_deny` refuses is answered without one of the slots (the session checks the
                    // lists again, and answers it 554).
                    if !config.borrow().listener.permits(peer.ip().to_canonical()) {
                        let Ok(permit) = refusals.clone().try_acquire_owned() else {
                            tracing::debug!(%peer, "ESMTP connection refused by always_deny, closed unanswered");
                            continue;
                        };
                        let session = session::Session::new(
                            stream,
                            peer,
                            config.clone(),
                            intake.clone(),
                            shutdown.clone(),
                        );
                        sessions.spawn(async move {
                            let _permit = permit;
                            session.run().await
                        });
                        continue;
                    }
                    let limits = config.borrow().limits.clone();
                    let caps = DoorLimits {
                        max_connections: limits.max_connections,
                        max_connections_per_client: limits.max_connections_per_client,
                        ..DoorLimits::default()
                    };
                    // An IPv4 client of a dual-stack listener counts as its IPv4 address, not as ::ffff:0:0/64.
                    let guard = match conns.admit(Some(peer.ip().to_canonical()), &caps) {
                        Ok(guard) => guard,
                        Err(busy) => {
                            tracing::debug!(%peer, "ESMTP connection refused: {busy}");
                            // Say why, but never wait long on a client that does not read.
                            tokio::spawn(tokio::time::timeout(
                                Duration::from_secs(2),
                                session::refuse_busy(stream, limits, busy),
                            ));
                            continue;
                        }
                    };
                    let session = session::Session::new(
                        stream,
                        peer,
                        config.clone(),
                        intake.clone(),
                        shutdown.clone(),
                    );
                    sessions.spawn(async move {
                        let _slot = guard;
                        session.run().await
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "ESMTP accept failed");
                    // Out of descriptors or similar: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    while sessions.join_next().await.is_some() {}
}
