//! The ESMTP listener (momentum.md §1.3, design §6): accepts connections on a bound socket, checks the peer
//! against the listener's access lists, and runs one [`session`] per connection, which turns MCMT messages into
//! notifications through the [`Intake`].
//!
//! Entry points for `herald serve`: [`bind`] a `listen` stanza, build an [`SmtpConfig`] with
//! [`SmtpConfig::new`] (loads the STARTTLS identity), then [`serve`] it. Configuration reload: send a new
//! `Arc<SmtpConfig>` on the watch channel; new connections use it and sessions opened before it answer their next
//! command `421 4.3.2 Reconfiguration in progress` (momentum.md §6.1). Shutdown: set the shutdown watch to `true`;
//! sessions answer `421` and [`serve`] returns once every session has ended.

pub mod command;
pub mod io;
pub mod reply;
pub mod session;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herald_conf::{ListenAddr, ListenerSettings};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::accept::Intake;
pub use tls::TlsSetupError;

/// Limits of an ESMTP listener. herald-conf has no options for them yet; these defaults are documented in
/// docs/smtp.md.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpLimits {
    /// Largest message accepted, in bytes after dot-unstuffing (advertised as `SIZE`).
    pub max_message_size: u64,
    /// Recipients per message; further `RCPT`s get `452 4.5.3`.
    pub max_recipients: usize,
    /// Longest command line, including CRLF (RFC 5321 §4.5.3.1.4: 512; herald allows the text-line limit).
    pub max_command_line: usize,
    /// Longest message line, including CRLF (RFC 5321 §4.5.3.1.6: 1000).
    pub max_text_line: usize,
    /// How long a client may stay silent while herald waits for a command or message data.
    pub idle_timeout: Duration,
    /// The name herald gives itself in the greeting and in EHLO.
    pub hostname: String,
    /// Open sessions per listener; a client beyond it gets `421 4.7.0` at connect.
    pub max_connections: usize,
}

/// Default `SIZE`: 10 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 10 * 1024 * 1024;
/// Default recipients per message.
pub const DEFAULT_MAX_RECIPIENTS: usize = 1000;
/// RFC 5321's line limit, CRLF included.
pub const DEFAULT_MAX_LINE: usize = 1000;
/// Default open sessions per listener.
pub const DEFAULT_MAX_CONNECTIONS: usize = 2000;
/// Default idle timeout (RFC 5321 §4.5.3.2.7 suggests 5 minutes for the server).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

impl Default for SmtpLimits {
    fn default() -> Self {
        SmtpLimits {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_recipients: DEFAULT_MAX_RECIPIENTS,
            max_command_line: DEFAULT_MAX_LINE,
            max_text_line: DEFAULT_MAX_LINE,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            hostname: "herald".into(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Everything a session needs from the configuration of its `listen` stanza.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub listener: ListenerSettings,
    pub limits: SmtpLimits,
    /// Offered as STARTTLS when present.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl SmtpConfig {
    /// Loads the STARTTLS identity when the stanza has a `tls_certificate`.
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

/// Accepts connections until `shutdown` turns `true`, then waits for the open sessions (each answers `421`) and
/// returns.
pub async fn serve(
    listener: TcpListener,
    config: watch::Receiver<Arc<SmtpConfig>>,
    intake: Arc<Intake>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut sessions = JoinSet::new();
    loop {
        if *shutdown.borrow() {
            break;
        }
        tokio::select! {
            _ = session::until_shutdown(&mut shutdown) => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let limits = config.borrow().limits.clone();
                    if sessions.len() >= limits.max_connections {
                        tracing::info!(%peer, open = sessions.len(), "ESMTP connection refused: too many sessions");
                        tokio::spawn(session::refuse_busy(stream, limits));
                        continue;
                    }
                    let session = session::Session::new(
                        stream,
                        peer,
                        config.clone(),
                        intake.clone(),
                        shutdown.clone(),
                    );
                    sessions.spawn(session.run());
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
