//! What every listener holds its clients to before any protocol starts: how many connections it keeps open in
//! all and per client address (`max_connections`, `max_connections_per_client`), the HTTP timeouts
//! (`first_byte_timeout`, `header_timeout`, `body_timeout`, `keepalive_timeout`), an HTTP listener's address
//! lists ([`AddressLists`], checked before a connection takes a slot), and the process-wide budget of file
//! descriptors network clients may use, which leaves a reserve for the spool, the logs and the console.
//!
//! [`raise_fd_limit`] runs once at start: it raises the soft `RLIMIT_NOFILE` to the hard limit and sets the
//! budget to that limit minus [`FD_RESERVE`]. Every ESMTP and HTTP connection takes a slot of the budget, its
//! listener's and its client's ([`ConnLimiter::admit`]); the control listener counts against its own caps only,
//! so a console still connects while the network listeners are full. A client is an IPv4 address or an IPv6 /64
//! (the block one host is usually given), an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, an IPv4 client of a
//! dual-stack listener) counting as the IPv4 address it is.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_conf::{Config, ListenerKind, ListenerSettings, Opt, ScopeKind, ScopePath};

/// Descriptors kept out of the network budget: the spool, logs, outbound APNs connections, the console.
pub const FD_RESERVE: usize = 512;
/// Default `max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1000;
/// Default `max_connections_per_client`.
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 100;
/// Default `first_byte_timeout`.
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `header_timeout`.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `body_timeout`.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `keepalive_timeout`.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `max_notifications_per_request` and `max_notifications_per_message`.
pub const DEFAULT_MAX_NOTIFICATIONS: usize = 100_000;

/// Network connections (ESMTP and HTTP) open in the whole process.
static NETWORK_OPEN: AtomicUsize = AtomicUsize::new(0);
/// How many network connections the descriptor limit allows; set by [`raise_fd_limit`].
static NETWORK_BUDGET: AtomicUsize = AtomicUsize::new(usize::MAX);

/// What [`raise_fd_limit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimits {
    /// The soft limit before.
    pub before: u64,
    /// The soft limit now.
    pub soft: u64,
    pub hard: u64,
    /// Network connections allowed at once in the whole process.
    pub network_budget: usize,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit where the system allows it, and sets the budget of network
/// connections to the soft limit minus [`FD_RESERVE`] (at least 64). Returns what it found and did.
pub fn raise_fd_limit() -> std::io::Result<FdLimits> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given, nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let wanted = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
    }
    let soft: u64 = limit.rlim_cur;
    let budget = usize::try_from(soft)
        .unwrap_or(usize::MAX)
        .saturating_sub(FD_RESERVE)
        .max(64);
    NETWORK_BUDGET.store(budget, Ordering::Relaxed);
    Ok(FdLimits {
        before,
        soft,
        hard: limit.rlim_max,
        network_budget: budget,
    })
}

/// The limits of one `listen` stanza, read from it, else its listener, else the option table's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoorLimits {
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    /// HTTP: how long a new connection may send nothing.
    pub first_byte_timeout: Duration,
    /// HTTP: how long a request's headers may take from its first byte.
    pub header_timeout: Duration,
    /// HTTP: how long a request's body may take once the headers arrived.
    pub body_timeout: Duration,
    /// HTTP: how long a connection may stay idle between requests.
    pub keepalive_timeout: Duration,
    /// Notifications one request (`max_notifications_per_request`) or message (`max_notifications_per_message`)
    /// may carry.
    pub max_notifications: usize,
    /// HTTP: the `always_allow` / `always_deny` lists a connection is checked against as soon as it is accepted,
    /// before it takes a slot or starts TLS; `None`: none at connect (each request is still checked).
    pub addresses: Option<AddressLists>,
}

/// The address lists of one listener (`always_allow` / `always_deny`, with its `peer` stanzas' overrides), as
/// [`ListenerSettings::permits`] applies them.
#[derive(Clone, PartialEq, Eq)]
pub struct AddressLists(Arc<ListenerSettings>);

impl AddressLists {
    /// The lists of `listener`.
    pub fn of(listener: &ListenerSettings) -> AddressLists {
        AddressLists(Arc::new(listener.clone()))
    }

    /// Whether a client at `ip` may connect. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, an IPv4 client of a
    /// dual-stack listener) is checked as the IPv4 address it is, as each request is.
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.0.permits(ip.to_canonical())
    }
}

/// Shows the lists, not the rest of the listener's settings (its API keys).
impl std::fmt::Debug for AddressLists {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressLists")
            .field("listener", &self.0.address)
            .field("allow", &self.0.acl.allow)
            .field("deny", &self.0.acl.deny)
            .field("peers", &self.0.peers.len())
            .finish()
    }
}

impl Default for DoorLimits {
    fn default() -> Self {
        DoorLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_client: DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
            first_byte_timeout: DEFAULT_FIRST_BYTE_TIMEOUT,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            max_notifications: DEFAULT_MAX_NOTIFICATIONS,
            addresses: None,
        }
    }
}

impl DoorLimits {
    /// The limits of `listener` as `config` has them.
    pub fn from_config(config: &Config, listener: &ListenerSettings) -> DoorLimits {
        let scope = match listener.kind {
            ListenerKind::Esmtp => ScopeKind::EsmtpListener,
            ListenerKind::Http => ScopeKind::HttpListener,
            ListenerKind::Control => ScopeKind::ControlListener,
            ListenerKind::Ecstream => ScopeKind::EcstreamListener,
        };
        let path = ScopePath::global()
            .then(scope, None)
            .then(ScopeKind::Listen, Some(&listener.address));
        let int = |opt: Opt| -> Option<u64> {
            config
                .eval_opt(&path, opt)
                .ok()
                .and_then(|v| v.as_int())
                .and_then(|n| u64::try_from(n).ok())
                .filter(|n| *n > 0)
        };
        let count = |opt: Opt, default: usize| {
            int(opt)
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(default)
        };
        let secs = |opt: Opt, default: Duration| int(opt).map_or(default, Duration::from_secs);
        let mut limits = DoorLimits {
            max_connections: count(Opt::MaxConnections, DEFAULT_MAX_CONNECTIONS),
            max_connections_per_client: count(
                Opt::MaxConnectionsPerClient,
                DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
            ),
            ..DoorLimits::default()
        };
        match listener.kind {
            ListenerKind::Http => {
                limits.first_byte_timeout = secs(Opt::FirstByteTimeout, DEFAULT_FIRST_BYTE_TIMEOUT);
                limits.header_timeout = secs(Opt::HeaderTimeout, DEFAULT_HEADER_TIMEOUT);
                limits.body_timeout = secs(Opt::BodyTimeout, DEFAULT_BODY_TIMEOUT);
                limits.keepalive_timeout = secs(Opt::KeepaliveTimeout, DEFAULT_KEEPALIVE_TIMEOUT);
                limits.max_notifications =
                    count(Opt::MaxNotificationsPerRequest, DEFAULT_MAX_NOTIFICATIONS);
                limits.addresses = Some(AddressLists::of(listener));
            }
            ListenerKind::Esmtp => {
                limits.max_notifications =
                    count(Opt::MaxNotificationsPerMessage, DEFAULT_MAX_NOTIFICATIONS);
            }
            ListenerKind::Control | ListenerKind::Ecstream => {}
        }
        limits
    }
}

/// Why a connection was refused at connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Busy {
    #[error("this listener holds {0} connections, its max_connections")]
    Listener(usize),
    #[error(
        "this client address (its /64 for IPv6) holds {0} connections, the listener's max_connections_per_client"
    )]
    Client(usize),
    #[error("herald holds {0} network connections, all its file descriptors allow")]
    Process(usize),
}

/// Counts the open connections of one listener, in all and per client: an IPv4 address, or an IPv6 /64 (see
/// [`client_key`]).
#[derive(Debug)]
pub struct ConnLimiter {
    /// Whether connections also count against the process's network budget (ESMTP, HTTP; not control).
    network: bool,
    open: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    /// Open connections per [`client_key`].
    per_client: HashMap<IpAddr, usize>,
}

/// What a client's connections are counted under for `max_connections_per_client`: an IPv4 address as it is, an
/// IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, how a dual-stack listener sees an IPv4 client) as that IPv4
/// address, any other IPv6 address as its /64, the block one host is usually given, so that a host cannot take
/// a fresh share of the listener from each address of its block. The same grouping as the guess throttle's.
fn client_key(ip: IpAddr) -> Option<IpAddr> {
    crate::access::bucket(Some(ip.to_canonical()))
}

impl ConnLimiter {
    /// A limiter for a network listener (ESMTP, HTTP): its connections count against the process budget too.
    pub fn network() -> Arc<ConnLimiter> {
        Arc::new(ConnLimiter {
            network: true,
            open: Mutex::new(Counts::default()),
        })
    }

    /// A limiter for a control listener: only its own caps apply, so a console gets in when the others are full.
    pub fn control() -> Arc<ConnLimiter> {
        Arc::new(ConnLimiter {
            network: false,
            open: Mutex::new(Counts::default()),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).total
    }

    /// Takes a slot for a connection from `client`, or says which cap is reached; the client's share is counted
    /// per [`client_key`] (IPv4 address or IPv6 /64). The slot is given back when the guard is dropped.
    pub fn admit(
        self: &Arc<Self>,
        client: Option<IpAddr>,
        limits: &DoorLimits,
    ) -> Result<ConnGuard, Busy> {
        let client = client.and_then(client_key);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.total >= limits.max_connections {
            return Err(Busy::Listener(open.total));
        }
        if let Some(ip) = client {
            let n = open.per_client.get(&ip).copied().unwrap_or(0);
            if n >= limits.max_connections_per_client {
                return Err(Busy::Client(n));
            }
        }
        if self.network {
            let budget = NETWORK_BUDGET.load(Ordering::Relaxed);
            let taken = NETWORK_OPEN.fetch_add(1, Ordering::Relaxed);
            if taken >= budget {
                NETWORK_OPEN.fetch_sub(1, Ordering::Relaxed);
                return Err(Busy::Process(taken));
            }
        }
        open.total += 1;
        if let Some(ip) = client {
            *open.per_client.entry(ip).or_insert(0) += 1;
        }
        Ok(ConnGuard {
            limiter: self.clone(),
            client,
        })
    }
}

/// One admitted connection; dropping it frees its slots.
#[derive(Debug)]
pub struct ConnGuard {
    limiter: Arc<ConnLimiter>,
    /// The [`client_key`] the connection counts under.
    client: Option<IpAddr>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(ip) = self.client
            && let Some(n) = open.per_client.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                open.per_client.remove(&ip);
            }
        }
        if self.limiter.network {
            NETWORK_OPEN.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_listener_and_per_client_are_given_back_on_drop() {
        let limits = DoorLimits {
            max_connections: 3,
            max_connections_per_client: 2,
            ..DoorLimits::default()
        };
        let l = ConnLimiter::control();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = l.admit(Some(a), &limits).unwrap();
        let _a2 = l.admit(Some(a), &limits).unwrap();
        assert_eq!(l.admit(Some(a), &limits).unwrap_err(), Busy::Client(2));
        let _b1 = l.admit(Some(b), &limits).unwrap();
        assert_eq!(l.admit(Some(b), &limits).unwrap_err(), Busy::Listener(3));
        drop(a1);
        assert_eq!(l.open(), 2);
        let _a3 = l.admit(Some(a), &limits).unwrap();
        let err = l.admit(None, &limits).unwrap_err();
        assert!(err.to_string().contains("max_connections"), "{err}");
    }

    #[test]
    fn ipv6_clients_count_per_64_and_ipv4_mapped_ones_as_ipv4() {
        let limits = DoorLimits {
            max_connections: 100,
            max_connections_per_client: 2,
            ..DoorLimits::default()
        };
        let l = ConnLimiter::control();
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // Two addresses of one /64 share its two slots; the next /64 is another client.
        let _a = l.admit(ip("2001:db8:1:2::1"), &limits).unwrap();
        let b = l
            .admit(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"), &limits)
            .unwrap();
        assert_eq!(
            l.admit(ip("2001:db8:1:2::3"), &limits).unwrap_err(),
            Busy::Client(2)
        );
        let _c = l.admit(ip("2001:db8:1:3::1"), &limits).unwrap();
        drop(b);
        let _d = l.admit(ip("2001:db8:1:2::4"), &limits).unwrap();
        // An IPv4 client of a dual-stack listener counts as its IPv4 address, not as one of ::ffff:0:0/64.
        let _e = l.admit(ip("::ffff:192.0.2.1"), &limits).unwrap();
        let _f = l.admit(ip("192.0.2.1"), &limits).unwrap();
        assert_eq!(
            l.admit(ip("::ffff:192.0.2.1"), &limits).unwrap_err(),
            Busy::Client(2)
        );
        let _g = l.admit(ip("::ffff:192.0.2.2"), &limits).unwrap();
        let _h = l.admit(ip("::ffff:192.0.2.3"), &limits).unwrap();
        // IPv4 addresses are not grouped.
        let _i = l.admit(ip("192.0.2.4"), &limits).unwrap();
        let _j = l.admit(ip("192.0.2.5"), &limits).unwrap();
        assert_eq!(l.open(), 9);
    }

    #[test]
    fn limits_come_from_the_listen_stanza_then_the_listener() {
        let config = Config::parse_str(
            "t.conf",
            r#"http_listener {
                 max_connections = 7
                 body_timeout = 3
                 listen "127.0.0.1:1" { max_connections_per_client = 2 keepalive_timeout = 0 }
               }
               esmtp_listener { listen "127.0.0.1:2" { max_notifications_per_message = 9 } }"#,
        )
        .unwrap();
        let listeners = config.listeners();
        let http = DoorLimits::from_config(&config, &listeners[0]);
        assert_eq!(http.max_connections, 7);
        assert_eq!(http.max_connections_per_client, 2);
        assert_eq!(http.body_timeout, Duration::from_secs(3));
        assert_eq!(
            http.keepalive_timeout, DEFAULT_KEEPALIVE_TIMEOUT,
            "0 = default"
        );
        assert_eq!(http.max_notifications, DEFAULT_MAX_NOTIFICATIONS);
        let smtp = listeners
            .iter()
            .find(|l| l.kind == ListenerKind::Esmtp)
            .unwrap();
        let smtp = DoorLimits::from_config(&config, smtp);
        assert_eq!(smtp.max_notifications, 9);
        assert_eq!(smtp.max_connections, DEFAULT_MAX_CONNECTIONS);
    }

    /// An HTTP listener's limits carry its address lists, peer stanzas included, for the check at connect; an
    /// IPv4 client of a dual-stack listener is checked as its IPv4 address.
    #[test]
    fn an_http_listeners_limits_carry_its_address_lists() {
        let config = Config::parse_str(
            "t.conf",
            r#"http_listener {
                 listen "127.0.0.1:1" {
                   api_key = "secret-key"
                   always_deny = ( "192.0.2.0/24" )
                   peer "192.0.2.7" { always_allow = ( "192.0.2.7" ) }
                 }
               }
               esmtp_listener { listen "127.0.0.1:2" { always_deny = ( "192.0.2.0/24" ) } }"#,
        )
        .unwrap();
        let listeners = config.listeners();
        let http = listeners
            .iter()
            .find(|l| l.kind == ListenerKind::Http)
            .unwrap();
        let lists = DoorLimits::from_config(&config, http).addresses.unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(!lists.permits(ip("192.0.2.1")));
        assert!(!lists.permits(ip("::ffff:192.0.2.1")));
        assert!(lists.permits(ip("192.0.2.7")));
        assert!(lists.permits(ip("198.51.100.1")));
        // Its Debug shows the lists, not the listener's keys.
        let shown = format!("{lists:?}");
        assert!(
            shown.contains("prefix: 24") && !shown.contains("secret-key"),
            "{shown}"
        );
        let smtp = listeners
            .iter()
            .find(|l| l.kind == ListenerKind::Esmtp)
            .unwrap();
        assert_eq!(DoorLimits::from_config(&config, smtp).addresses, None);
    }

    #[test]
    fn the_descriptor_limit_is_raised_to_the_hard_limit() {
        let limits = raise_fd_limit().unwrap();
        assert!(limits.soft >= limits.before);
        assert!(limits.network_budget >= 64);
    }
}
