//! Opening the TLS connection under either protocol: a fresh DNS lookup per connection (Apple asks for
//! uncached lookups, docs/apns-protocol.md#http2-connection), TCP with Nagle off and the system's liveness checks
//! on, then TLS with the caller's rustls configuration. The addresses of a name are tried in the order the resolver
//! gives them, each with its share of what is left of the connect timeout ([`attempt_budget`]), so one that drops
//! the connection attempt without a word (an IPv6 route that goes nowhere) does not use up the time of the others.
//!
//! Liveness: a connection whose peer vanished without a word (a NAT that forgot it, a host powered off) must end
//! before it takes the next notification. TCP keepalive probes an idle connection ([`TCP_KEEPALIVE_IDLE`]), and
//! `TCP_USER_TIMEOUT` ends one whose written bytes stay unacknowledged ([`TCP_USER_TIMEOUT`]), so a write into a
//! dead connection fails within a bounded time instead of the system's ~15 minutes of retransmissions. HTTP/2 adds
//! its own PINGs on top; the binary protocol has nothing else (docs/apns-protocol.md#binary-transport).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::ConnectionError;

/// An outbound connection idle this long gets its first TCP keepalive probe.
pub const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// Time between unanswered keepalive probes.
pub const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered keepalive probes after which the system ends the connection.
pub const TCP_KEEPALIVE_PROBES: u32 = 3;
/// How long written bytes may stay unacknowledged by the peer before the system ends the connection (Linux).
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);
/// The least time a TCP connect to one address of several is given before the next address is tried (unless less
/// is left of the connect timeout).
pub const MIN_ATTEMPT: Duration = Duration::from_secs(1);

/// Where to connect: a host name or address and a port, and the local address to connect from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// `bind_address`: the local address outbound sockets are bound to (port chosen by the system); `None` lets
    /// the system choose.
    pub bind: Option<IpAddr>,
}

impl Endpoint {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Endpoint {
            host: host.into(),
            port,
            bind: None,
        }
    }

    /// The same endpoint, connected to from `bind` (see [`Endpoint::bind`]).
    pub fn bound_to(mut self, bind: Option<IpAddr>) -> Self {
        self.bind = bind;
        self
    }

    /// `host:port`, with IPv6 literals bracketed: the HTTP/2 `:authority`.
    pub fn authority(&self) -> String {
        if self.needs_brackets() {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The length of [`Endpoint::authority`] in bytes, without building it (per-notification size accounting).
    pub fn authority_len(&self) -> usize {
        let brackets = if self.needs_brackets() { 2 } else { 0 };
        self.host.len() + brackets + 1 + self.port.checked_ilog10().map_or(1, |d| d as usize + 1)
    }

    fn needs_brackets(&self) -> bool {
        self.host.contains(':') && !self.host.starts_with('[')
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.authority())
    }
}

/// A TCP connection to `addr`, from `bind` (any port) when given.
async fn connect_from(bind: Option<IpAddr>, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let Some(local) = bind else {
        return TcpStream::connect(addr).await;
    };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(local, 0)).map_err(|e| {
        std::io::Error::new(e.kind(), format!("binding to bind_address {local}: {e}"))
    })?;
    socket.connect(addr).await
}

/// Resolves `endpoint`, connects over TCP and completes the TLS handshake, all within `timeout`.
pub async fn connect_tls(
    endpoint: &Endpoint,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<(TlsStream<TcpStream>, SocketAddr), ConnectionError> {
    connect_tls_over(endpoint, tls, timeout, |tcp| tcp).await
}

/// [`connect_tls`] with TLS running over `wrap(tcp)`: a layer that watches the raw socket's traffic.
pub(crate) async fn connect_tls_over<S>(
    endpoint: &Endpoint,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
    wrap: impl FnOnce(TcpStream) -> S,
) -> Result<(TlsStream<S>, SocketAddr), ConnectionError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let secs = timeout.as_secs();
    let host = endpoint.host.trim_start_matches('[').trim_end_matches(']');
    let connected = async {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, endpoint.port))
            .await
            .map_err(|source| ConnectionError::Resolve {
                host: endpoint.host.clone(),
                source,
            })?
            .collect();
        // A bind address of the other family cannot reach an address: such addresses are skipped.
        let reachable: Vec<SocketAddr> = addrs
            .iter()
            .copied()
            .filter(|addr| endpoint.bind.is_none_or(|b| b.is_ipv4() == addr.is_ipv4()))
            .collect();
        let (stream, last_err) = match connect_any(&reachable, deadline, |addr| {
            connect_from(endpoint.bind, addr)
        })
        .await
        {
            Ok(s) => (Some(s), None),
            Err(e) => (None, e),
        };
        let (tcp, remote) = match (stream, last_err) {
            (Some(s), _) => s,
            (None, Some((addr, source))) => {
                return Err(ConnectionError::Connect {
                    addr: addr.to_string(),
                    source,
                });
            }
            (None, None) if endpoint.bind.is_some() && !addrs.is_empty() => {
                return Err(ConnectionError::Connect {
                    addr: endpoint.authority(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::AddrNotAvailable,
                        format!(
                            "no address of the route has the family of bind_address {}",
                            endpoint.bind.map(|b| b.to_string()).unwrap_or_default()
                        ),
                    ),
                });
            }
            (None, None) => {
                return Err(ConnectionError::NoAddress {
                    host: endpoint.host.clone(),
                });
            }
        };
        Ok((tcp, remote))
    };
    let (tcp, remote) = tokio::time::timeout_at(deadline, connected)
        .await
        .map_err(|_| ConnectionError::Timeout {
            host: endpoint.host.clone(),
            secs,
        })??;
    // Nagle would hold small frames back; both protocols batch their own writes.
    let _ = tcp.set_nodelay(true);
    set_liveness(&tcp);
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| ConnectionError::ServerName(endpoint.host.clone()))?;
    // What is left of the connect timeout: a server that takes the TCP connection and never completes TLS is told
    // apart from one that cannot be reached.
    let tls_stream =
        tokio::time::timeout_at(deadline, TlsConnector::from(tls).connect(name, wrap(tcp)))
            .await
            .map_err(|_| ConnectionError::TlsTimeout {
                host: endpoint.host.clone(),
                secs,
            })?
            .map_err(|source| ConnectionError::Tls {
                host: endpoint.host.clone(),
                source,
            })?;
    Ok((tls_stream, remote))
}

/// Whether the TLS handshake of `tls` agreed on ALPN `h2` (`Ok(true)`) or on no protocol (`Ok(false)`: the server
/// may still speak HTTP/2 by prior knowledge); a server that chose another protocol (`http/1.1`) does not speak
/// HTTP/2, and `host` names it in the error.
pub fn alpn_h2<S>(tls: &TlsStream<S>, host: &str) -> Result<bool, ConnectionError> {
    match tls.get_ref().1.alpn_protocol() {
        Some(b"h2") => Ok(true),
        None => Ok(false),
        Some(other) => Err(ConnectionError::NotHttp2 {
            host: host.to_owned(),
            detail: format!(
                "it chose the ALPN protocol {:?}, not h2",
                String::from_utf8_lossy(other)
            ),
        }),
    }
}

/// A failed HTTP/2 handshake with a server that agreed on no ALPN protocol (herald offers `h2`): a server that
/// answers the connection preface with something other than HTTP/2 is one that does not speak it, and is
/// reported so. Timeouts and TLS failures are left as they are.
pub fn without_alpn(error: ConnectionError, host: &str) -> ConnectionError {
    let why = match error {
        ConnectionError::NotHttp2 { detail, .. } => detail,
        ConnectionError::Handshake { source, .. } => {
            format!("its answer to the HTTP/2 connection preface is not HTTP/2 ({source})")
        }
        ConnectionError::Preface { detail, .. } => detail,
        other => return other,
    };
    ConnectionError::NotHttp2 {
        host: host.to_owned(),
        detail: format!("it agreed on no ALPN protocol (herald offers h2), and {why}"),
    }
}

/// How long a connect to the next of `left` addresses may take when `remaining` is left of the connect timeout: an
/// equal share of it, at least [`MIN_ATTEMPT`], never more than is left. The last address gets all that is left.
fn attempt_budget(remaining: Duration, left: usize) -> Duration {
    let share = remaining / u32::try_from(left.max(1)).unwrap_or(u32::MAX);
    share.max(MIN_ATTEMPT).min(remaining)
}

/// Connects to the first of `addrs` that answers, in order, each attempt but the last cut off after its
/// [`attempt_budget`] of the time left until `deadline` (the last one runs until the caller's own timeout). Returns
/// the connection and its address, or the last address's error (`None` when there was no address).
async fn connect_any<T, F, Fut>(
    addrs: &[SocketAddr],
    deadline: tokio::time::Instant,
    mut connect: F,
) -> Result<(T, SocketAddr), Option<(SocketAddr, std::io::Error)>>
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<T>>,
{
    let mut last_err = None;
    for (i, &addr) in addrs.iter().enumerate() {
        let left = addrs.len() - i;
        let attempt = connect(addr);
        let result = if left == 1 {
            attempt.await
        } else {
            let budget = attempt_budget(
                deadline.saturating_duration_since(tokio::time::Instant::now()),
                left,
            );
            match tokio::time::timeout(budget, attempt).await {
                Ok(result) => result,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "no answer within {} ms; trying the next address",
                        budget.as_millis()
                    ),
                )),
            }
        };
        match result {
            Ok(s) => return Ok((s, addr)),
            Err(e) => {
                tracing::debug!(%addr, error = %e, "TCP connect failed");
                last_err = Some((addr, e));
            }
        }
    }
    Err(last_err)
}

/// Turns on the system's dead-peer checks on an outbound socket (see the module comment). A system that refuses
/// one is not worth failing the connection for: the protocols' own timeouts still apply.
fn set_liveness(tcp: &TcpStream) {
    let sock = socket2::SockRef::from(tcp);
    let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE_IDLE);
    #[cfg(target_os = "linux")]
    let keepalive = keepalive
        .with_interval(TCP_KEEPALIVE_INTERVAL)
        .with_retries(TCP_KEEPALIVE_PROBES);
    if let Err(e) = sock.set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "TCP keepalive not set");
    }
    #[cfg(target_os = "linux")]
    if let Err(e) = sock.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT)) {
        tracing::debug!(error = %e, "TCP_USER_TIMEOUT not set");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every outbound socket probes an idle peer and bounds unacknowledged writes, so a dead APNs connection ends
    /// on its own instead of taking notifications (module comment).
    #[tokio::test]
    async fn outbound_sockets_have_keepalive_and_a_bound_on_unacknowledged_writes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        set_liveness(&tcp);
        let sock = socket2::SockRef::from(&tcp);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), TCP_KEEPALIVE_IDLE);
        #[cfg(target_os = "linux")]
        {
            assert_eq!(
                sock.tcp_keepalive_interval().unwrap(),
                TCP_KEEPALIVE_INTERVAL
            );
            assert_eq!(sock.tcp_keepalive_retries().unwrap(), TCP_KEEPALIVE_PROBES);
            assert_eq!(sock.tcp_user_timeout().unwrap(), Some(TCP_USER_TIMEOUT));
        }
    }

    #[test]
    fn authority_len_is_the_length_of_the_authority() {
        for (host, port) in [
            ("api.push.apple.com", 443),
            ("127.0.0.1", 2197),
            ("::1", 8),
            ("[::1]", 65535),
            ("h", 0),
            ("h", 10),
        ] {
            let endpoint = Endpoint::new(host, port);
            assert_eq!(
                endpoint.authority_len(),
                endpoint.authority().len(),
                "{host} {port}"
            );
        }
    }

    #[test]
    fn each_address_gets_its_share_of_the_time_left() {
        let s = Duration::from_secs;
        assert_eq!(attempt_budget(s(10), 2), s(5));
        assert_eq!(attempt_budget(s(9), 3), s(3));
        assert_eq!(attempt_budget(s(10), 1), s(10));
        // At least a second each, never more than is left.
        assert_eq!(attempt_budget(s(3), 8), MIN_ATTEMPT);
        assert_eq!(
            attempt_budget(Duration::from_millis(400), 2),
            Duration::from_millis(400)
        );
        assert_eq!(attempt_budget(Duration::ZERO, 2), Duration::ZERO);
        assert_eq!(attempt_budget(s(10), 0), s(10));
    }

    /// A first address that drops the connection attempt without a word (a black-holed IPv6 route) gets its share
    /// of the connect timeout, not all of it: the next address is tried in time, and gets all that is left.
    #[tokio::test]
    async fn a_silent_first_address_leaves_time_for_the_next() {
        let silent: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let answers: SocketAddr = "192.0.2.1:443".parse().unwrap();
        // Two addresses: a second each.
        let timeout = 2 * MIN_ATTEMPT;
        let started = tokio::time::Instant::now();
        let tried = std::sync::Mutex::new(Vec::new());
        let outcome = tokio::time::timeout(
            timeout,
            connect_any(&[silent, answers], started + timeout, |addr| {
                tried.lock().unwrap().push((addr, started.elapsed()));
                async move {
                    if addr == silent {
                        std::future::pending::<std::io::Result<()>>().await
                    } else {
                        Ok(())
                    }
                }
            }),
        )
        .await
        .expect("an address answered within the connect timeout");
        assert!(matches!(outcome, Ok(((), addr)) if addr == answers));
        let tried = tried.into_inner().unwrap();
        assert_eq!(
            tried.iter().map(|(addr, _)| *addr).collect::<Vec<_>>(),
            [silent, answers]
        );
        // The silent one had its whole share.
        assert!(tried[1].1 >= MIN_ATTEMPT, "{tried:?}");
        // Addresses that refuse at once leave the time to the next.
        let refused = connect_any(
            &[silent, answers],
            tokio::time::Instant::now() + timeout,
            |_| async { Err::<(), _>(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)) },
        )
        .await;
        match refused {
            Err(Some((addr, e))) => {
                assert_eq!(addr, answers);
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            connect_any(&[], tokio::time::Instant::now(), |_| async { Ok(()) }).await,
            Err(None)
        ));
    }

    /// A server that accepts the TCP connection and never answers the TLS handshake: the attempt times out, and
    /// says it was the TLS handshake that did, not the connection.
    #[tokio::test]
    async fn a_server_that_never_completes_tls_is_a_tls_handshake_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (held_tx, held) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            // Held open, unanswered, until the test has its error.
            let (sock, _) = listener.accept().await.unwrap();
            let _ = held.await;
            drop(sock);
        });
        let tls = crate::identity::client_config(None, crate::identity::RootSource::NoVerify, true)
            .unwrap();
        let e = connect_tls(
            &Endpoint::new("127.0.0.1", port),
            tls,
            Duration::from_millis(300),
        )
        .await
        .map(|_| ())
        .unwrap_err();
        let _ = held_tx.send(());
        assert!(
            matches!(&e, ConnectionError::TlsTimeout { host, .. } if host == "127.0.0.1"),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with("TLS handshake with 127.0.0.1 timed out"),
            "{e}"
        );
    }

    /// The ALPN protocol a TLS handshake agreed on: `h2`, none (prior knowledge may still work), or another one,
    /// which means the server does not speak HTTP/2; a failed HTTP/2 handshake without ALPN says so too.
    #[test]
    fn a_server_without_h2_is_named_as_not_speaking_http2() {
        let preface = ConnectionError::Preface {
            host: "h".to_owned(),
            detail: "the server's first frame is not SETTINGS".to_owned(),
        };
        assert_eq!(
            without_alpn(preface, "h").to_string(),
            "h does not speak HTTP/2: it agreed on no ALPN protocol (herald offers h2), and the server's first \
             frame is not SETTINGS"
        );
        let timeout = ConnectionError::Timeout {
            host: "h".to_owned(),
            secs: 10,
        };
        assert!(matches!(
            without_alpn(timeout, "h"),
            ConnectionError::Timeout { .. }
        ));
    }
}
