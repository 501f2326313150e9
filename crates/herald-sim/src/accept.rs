//! The accept step every simulator port shares: the next TCP connection, or none once the simulator stops; and the
//! accept loop of the TLS ports (HTTP/2, broadcast, binary gateway and feedback).

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;

use crate::stats::Stats;

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits for the next connection on `listener`. A failed accept (out of descriptors, a connection reset before it
/// was taken) is logged with `port` and retried after a short pause; `None` once `stop` changes.
pub(crate) async fn next_connection(
    listener: &TcpListener,
    stop: &mut watch::Receiver<bool>,
    port: impl Display,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => return Some(x),
                Err(e) => {
                    tracing::warn!("{port} listener: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            _ = stop.changed() => return None,
        }
    }
}

/// Accepts TLS connections on `listener` until `stop` changes. For each, `connection` is called at once with the
/// peer's address (in accept order) and returns what serves the connection; a task of its own finishes the
/// handshake within [`HANDSHAKE_TIMEOUT`] (a failure or a timeout is counted in `stats.tls_failures`) and then runs it.
pub(crate) async fn serve_tls<C, S, F>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    mut stop: watch::Receiver<bool>,
    port: impl Display,
    stats: Arc<Stats>,
    mut connection: C,
) where
    C: FnMut(SocketAddr) -> S,
    S: FnOnce(TlsStream<TcpStream>) -> F + Send + 'static,
    F: Future<Output = ()> + Send,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let port = port.to_string();
    loop {
        let Some((tcp, peer)) = next_connection(&listener, &mut stop, &port).await else {
            return;
        };
        let _ = tcp.set_nodelay(true);
        stats.peer_connected(peer.ip());
        let serve = connection(peer);
        let acceptor = acceptor.clone();
        let stats = stats.clone();
        let port = port.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => serve(stream).await,
                Ok(Err(e)) => {
                    stats.tls_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("{port}: TLS handshake with {peer} failed: {e}");
                }
                Err(_) => {
                    stats.tls_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("{port}: TLS handshake with {peer} timed out");
                }
            }
        });
    }
}
