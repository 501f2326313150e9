//! The accept step every simulator port shares: the next TCP connection, or none once the simulator stops.

use std::fmt::Display;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

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
