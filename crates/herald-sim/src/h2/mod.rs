//! The HTTP/2 provider API: `POST /3/device/<token>` over TLS (apns.md §3), served with `h2` on a multi-threaded
//! tokio runtime. One task per connection; the requests of a connection run as futures inside that task, so the
//! hot path takes no lock (counters are atomics, the delivery record is a channel).

mod auth;
mod conn;
pub mod io;
mod request;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub(crate) use auth::KeyRing;

use crate::config::{AuthPolicy, Environment};
use crate::record::Recorder;
use crate::registry::TokenRegistry;
use crate::scenario::CompiledScenario;
use crate::stats::Stats;

/// Everything a connection needs, shared by all of them.
pub(crate) struct H2Context {
    pub stats: Arc<Stats>,
    pub recorder: Arc<Recorder>,
    pub registry: Arc<TokenRegistry>,
    pub keys: Arc<KeyRing>,
    pub scenario: CompiledScenario,
    pub environment: Environment,
    pub auth: AuthPolicy,
    pub max_streams: u32,
    pub choppy_streams: bool,
    pub token_max_age: Duration,
    pub token_update_interval: Duration,
    pub unique_id: bool,
    pub ordinal: AtomicU64,
    /// Bumped to make every connection send GOAWAY `{"reason":"Shutdown"}` and close.
    pub goaway_all: watch::Receiver<u64>,
}

/// Accepts TLS connections until `stop` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    ctx: Arc<H2Context>,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("h2 listener: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let ctx = ctx.clone();
        let ordinal = ctx.ordinal.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => conn::serve_connection(ctx, stream, ordinal).await,
                Ok(Err(e)) => {
                    ctx.stats.tls_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("h2 TLS handshake with {peer} failed: {e}");
                }
                Err(_) => {
                    ctx.stats.tls_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("h2 TLS handshake with {peer} timed out");
                }
            }
        });
    }
}
