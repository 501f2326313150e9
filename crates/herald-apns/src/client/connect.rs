//! Opening the TLS connection under either protocol: a fresh DNS lookup per connection (Apple asks for
//! uncached lookups, docs/apns-protocol.md#http2-connection), TCP with Nagle off, then TLS with the caller's rustls
//! configuration.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::ConnectionError;

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
    let fut = async {
        let host = endpoint.host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, endpoint.port))
            .await
            .map_err(|source| ConnectionError::Resolve {
                host: endpoint.host.clone(),
                source,
            })?
            .collect();
        let mut last_err = None;
        let mut stream = None;
        for addr in &addrs {
            // A bind address of the other family cannot reach this address: skip it.
            if endpoint.bind.is_some_and(|b| b.is_ipv4() != addr.is_ipv4()) {
                continue;
            }
            match connect_from(endpoint.bind, *addr).await {
                Ok(s) => {
                    stream = Some((s, *addr));
                    break;
                }
                Err(e) => last_err = Some((addr, e)),
            }
        }
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
        // Nagle would hold small frames back; both protocols batch their own writes.
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| ConnectionError::ServerName(endpoint.host.clone()))?;
        let tls_stream = TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|source| ConnectionError::Tls {
                host: endpoint.host.clone(),
                source,
            })?;
        Ok((tls_stream, remote))
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(ConnectionError::Timeout {
            host: endpoint.host.clone(),
            secs: timeout.as_secs(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::Endpoint;

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
}
