//! Network-shaped values: CIDR blocks for peer scopes and access lists, and listen addresses (`":25"`,
//! `"127.0.0.1:25"`, `"[::]:25"`, `"/tmp/2025"`) as Momentum writes them (docs/momentum-compat.md#lexical-rules).
//! Block arithmetic (prefix validity, membership) is the `ipnet` crate's.

use ipnet::IpNet;
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    str::FromStr,
};

/// An address block: `10.0.0.0/8`, `::1/128`, or a single address (`127.0.0.1`, a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

/// Why a CIDR or listen address was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    #[error("not an IP address or CIDR block (expected e.g. 10.0.0.0/8 or ::1)")]
    BadCidr,
    #[error("prefix length {0} is too long for this address family")]
    PrefixTooLong(u8),
    #[error(
        "not a listen address (expected \":PORT\", \"IP:PORT\", \"[IPv6]:PORT\" or a /unix/socket path)"
    )]
    BadListen,
}

impl Cidr {
    /// How narrow the block is, on the IPv6 scale: an IPv4 block counts as the mapped block it stands for
    /// (`10.0.0.0/8` is `::ffff:10.0.0.0/104`), so that of blocks of both families matching one client, the
    /// narrower wins.
    pub fn specificity(&self) -> u8 {
        match self.addr {
            IpAddr::V4(_) => self.prefix.saturating_add(96),
            IpAddr::V6(_) => self.prefix,
        }
    }

    /// The block with its address's host bits cleared: `10.0.0.1/8` is `10.0.0.0/8`.
    pub fn network(&self) -> Cidr {
        match IpNet::new(self.addr, self.prefix) {
            Ok(net) => Cidr {
                addr: net.network(),
                prefix: self.prefix,
            },
            Err(_) => *self,
        }
    }

    /// Whether `ip` is in the block; an IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) counts as its IPv4 address,
    /// and a block written in the mapped form (within `::ffff:0:0/96`, such as `::ffff:10.0.0.0/104`) holds the
    /// IPv4 addresses it maps. A wider IPv6 block (`::/0`) holds IPv6 clients only.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let Ok(net) = IpNet::new(self.addr, self.prefix) else {
            return false;
        };
        match (net, ip) {
            (IpNet::V4(_), IpAddr::V6(v6)) => v6
                .to_ipv4_mapped()
                .is_some_and(|v4| net.contains(&IpAddr::V4(v4))),
            (IpNet::V6(v6net), IpAddr::V4(v4)) => {
                v6net.prefix_len() >= 96
                    && v6net.network().to_ipv4_mapped().is_some()
                    && net.contains(&IpAddr::V6(v4.to_ipv6_mapped()))
            }
            _ => net.contains(&ip),
        }
    }
}

impl FromStr for Cidr {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self, NetError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| NetError::BadCidr)?)),
            None => (s, None),
        };
        let addr = addr.trim_start_matches('[').trim_end_matches(']');
        let addr: IpAddr = addr.parse().map_err(|_| NetError::BadCidr)?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        IpNet::new(addr, prefix).map_err(|_| NetError::PrefixTooLong(prefix))?;
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Where a listener accepts connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self, NetError> {
        if s.starts_with('/') {
            return Ok(ListenAddr::Unix(PathBuf::from(s)));
        }
        let (host, port) = s.rsplit_once(':').ok_or(NetError::BadListen)?;
        let port: u16 = port.parse().map_err(|_| NetError::BadListen)?;
        let ip: IpAddr = match host {
            "" | "*" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            "[*]" => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            h if h.starts_with('[') && h.ends_with(']') => {
                IpAddr::V6(h[1..h.len() - 1].parse().map_err(|_| NetError::BadListen)?)
            }
            h => IpAddr::V4(h.parse().map_err(|_| NetError::BadListen)?),
        };
        Ok(ListenAddr::Tcp(SocketAddr::new(ip, port)))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dual-stack listener sees an IPv4 client as `::ffff:a.b.c.d` and herald as `a.b.c.d`: a block written in
    /// the mapped form still holds it, while `::/0` stays a block of IPv6 clients.
    #[test]
    fn a_block_in_the_mapped_form_holds_the_ipv4_addresses_it_maps() {
        let v4 = |s: &str| s.parse::<IpAddr>().unwrap();
        let all_mapped: Cidr = "::ffff:0:0/96".parse().unwrap();
        assert!(all_mapped.contains(v4("10.0.0.1")));
        let ten: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert!(ten.contains(v4("10.1.2.3")));
        assert!(!ten.contains(v4("11.0.0.1")));
        let one: Cidr = "::ffff:192.0.2.7".parse().unwrap();
        assert!(one.contains(v4("192.0.2.7")));
        assert!(!one.contains(v4("192.0.2.8")));
        let any_v6: Cidr = "::/0".parse().unwrap();
        assert!(!any_v6.contains(v4("10.0.0.1")));
        assert!(any_v6.contains(v4("2001:db8::1")));
    }

    #[test]
    fn cidr_contains() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.0.0.1".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert_eq!(one.prefix, 32);
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe00::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        assert!(!c.contains("fd00::1".parse().unwrap()));
        let any6: Cidr = "::/0".parse().unwrap();
        assert!(any6.contains("2001:db8::1".parse().unwrap()));
        let host: Cidr = "10.0.0.1/8".parse().unwrap();
        assert!(host.contains("10.200.0.1".parse().unwrap()));
        assert_eq!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(NetError::PrefixTooLong(33))
        );
        assert_eq!("::/129".parse::<Cidr>(), Err(NetError::PrefixTooLong(129)));
        assert!("nope".parse::<Cidr>().is_err());
    }

    #[test]
    fn listen_addresses() {
        // docs/momentum-compat.md#lexical-rules: ":25" = "*:25" = INADDR_ANY; IPv6 bracketed; unix sockets by path
        assert_eq!(
            ":25".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("0.0.0.0:25".parse().unwrap())
        );
        assert_eq!(
            "*:25".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("0.0.0.0:25".parse().unwrap())
        );
        assert_eq!(
            "[::]:25".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("[::]:25".parse().unwrap())
        );
        assert_eq!(
            "[*]:25".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("[::]:25".parse().unwrap())
        );
        assert_eq!(
            "127.0.0.1:2025".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("127.0.0.1:2025".parse().unwrap())
        );
        assert_eq!(
            "/tmp/2025".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix("/tmp/2025".into())
        );
        assert!("25".parse::<ListenAddr>().is_err());
        assert!("host:99999".parse::<ListenAddr>().is_err());
    }
}
