//! Runs the REST application on a TCP listener: plain HTTP/1.1 and HTTP/2 (prior knowledge), or HTTPS with
//! ALPN when the listener has `tls_certificate` / `tls_key`. Each connection gets an id and its peer address
//! for the handlers; on shutdown the listener stops accepting and in-flight requests finish.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use herald_conf::ListenerSettings;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::Service;

use super::{ConnId, RestState, router};
use crate::inbound::accept::Intake;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's headers (HTTP/1).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the listener's TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("tls_certificate is set but tls_key is not (or the reverse); set both for HTTPS")]
    Incomplete,
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path}: no PEM certificate in the file ({detail})")]
    Certificate { path: String, detail: String },
    #[error("{path}: no usable PEM private key in the file ({detail})")]
    Key { path: String, detail: String },
    #[error("the certificate and key do not make a TLS server identity: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The listener's TLS server configuration, when it has `tls_certificate` and `tls_key` (aws-lc-rs, ALPN `h2`
/// and `http/1.1`).
pub fn tls_config(
    settings: &ListenerSettings,
) -> Result<Option<Arc<rustls::ServerConfig>>, TlsSetupError> {
    let (cert, key) = match (&settings.tls_certificate, &settings.tls_key) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        _ => return Err(TlsSetupError::Incomplete),
    };
    let chain = read(cert).and_then(|pem| {
        let chain = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsSetupError::Certificate {
                path: cert.display().to_string(),
                detail: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(TlsSetupError::Certificate {
                path: cert.display().to_string(),
                detail: "the file holds no CERTIFICATE block".into(),
            });
        }
        Ok(chain)
    })?;
    let key = read(key).and_then(|pem| {
        PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsSetupError::Key {
            path: key.display().to_string(),
            detail: e.to_string(),
        })
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsSetupError> {
    std::fs::read(path).map_err(|source| TlsSetupError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Serves the REST API of one `http_listener` `listen` stanza until `shutdown` turns `true` (or its sender is
/// dropped), then waits for in-flight requests to finish.
pub async fn serve(
    listener: TcpListener,
    settings: ListenerSettings,
    intake: Arc<Intake>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let app = router(RestState::new(settings, intake.clone()));
    serve_app(listener, app, intake, tls, shutdown).await
}

/// [`serve`] for an application built with [`super::router_with`] (extra routes).
pub async fn serve_app(
    listener: TcpListener,
    app: Router,
    intake: Arc<Intake>,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let acceptor = tls.map(TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let local = listener.local_addr()?;
    tracing::info!(%local, tls = acceptor.is_some(), "REST listener accepting");
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors and the like: back off a little rather than spin.
                    tracing::warn!(%local, error = %e, "REST listener cannot accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            app: app.clone(),
            peer,
            conn_id: intake.next_id(),
            builder: builder.clone(),
            watcher: graceful.watcher(),
        };
        match &acceptor {
            None => {
                tokio::spawn(conn.run(stream));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => conn.run(tls).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
    tracing::info!(%local, "REST listener stopped");
    Ok(())
}

/// Resolves when `shutdown` turns `true` or its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// One accepted connection.
struct Conn {
    app: Router,
    peer: SocketAddr,
    conn_id: crate::queue::message::MessageId,
    builder: auto::Builder<TokioExecutor>,
    watcher: Watcher,
}

impl Conn {
    async fn run<S>(self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Conn {
            app,
            peer,
            conn_id,
            builder,
            watcher,
        } = self;
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            let extensions = request.extensions_mut();
            extensions.insert(ConnectInfo(peer));
            extensions.insert(ConnId(conn_id));
            let mut app = app.clone();
            async move { app.call(request).await }
        });
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        if let Err(e) = watcher.watch(connection.into_owned()).await {
            tracing::debug!(%peer, error = %e, "REST connection ended with an error");
        }
    }
}
