//! The control listener (`control_listener` stanza): the socket `herald console` talks to.
//!
//! A `listen "/path"` stanza is a Unix socket created with the stanza's `file_mode`; `listen "host:port"` is TCP,
//! filtered by `always_allow`/`always_deny`, and speaks TLS when the stanza has `tls_certificate` (and `tls_key`),
//! so that its password and commands cross the network encrypted (`herald console --tls`). Where `control_password` is set, a connection must send
//! `auth PASSWORD` before anything else, within `timeout` seconds of connecting, whatever else it sends meanwhile.
//! A connection that sends nothing for `timeout` seconds (default 60) is closed. These and the connection caps are
//! the listener's [`ControlRules`]: read from its `listen` stanza in the configuration in force, and put in force
//! for new connections by every reload whose configuration still has that stanza. A listener the configuration in
//! force no longer has (one kept on its old address because its new one could not be bound, or one a reload is
//! about to stop) keeps the rules it last ran with: it is never judged by the defaults. The wire format is in
//! [`protocol`]; the commands in [`commands`].
//!
//! The listener keeps at most `max_connections` connections open, `max_connections_per_client` from one TCP
//! client address; a client beyond them is told so (at most [`MAX_REFUSALS`] such answers are being written at
//! once; beyond, the connection is closed without one). A wrong password is logged with the client's address (a
//! Unix socket client's user id); after [`AUTH_FAILURES`] of them within [`AUTH_WINDOW`], that address (that local
//! user) is refused every `auth` (right or wrong) until [`AUTH_WINDOW`] has passed since its last failure. After
//! [`LISTENER_AUTH_FAILURES`] from all clients not on loopback together, every `auth` from those is refused for
//! [`AUTH_WINDOW`]; clients on loopback (127.0.0.0/8, `::1`) have a budget of their own, so that neither group
//! can lock the other out (see [`lockout`]). A listener whose `control_password` is empty (an error of
//! herald-conf's checks) lets nobody in.

pub mod commands;
mod handle;
mod lockout;
pub mod protocol;

pub use handle::ServerHandle;
pub use lockout::LISTENER_AUTH_FAILURES;

use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use herald_conf::{Config, ListenAddr, ListenerKind, ListenerSettings, ScopeKind, ScopePath};
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::access::{Client, same_secret};
use crate::inbound::doors::{ConnLimiter, DoorLimits};
use commands::Command;
use lockout::{AuthGate, Refusal};
use protocol::Reply;

/// How long a client of a TLS control listener has to complete its handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The idle timeout when the configuration does not say (docs/momentum-compat.md#console).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Wrong passwords one client address may send within [`AUTH_WINDOW`] before it is locked out.
pub const AUTH_FAILURES: usize = crate::access::MAX_GUESSES;
/// The window over which wrong passwords are counted, and how long a lockout lasts after the last one.
pub const AUTH_WINDOW: Duration = crate::access::GUESS_WINDOW;
/// "Too many connections" answers a listener writes at once; a connection refused beyond them is closed at once.
pub const MAX_REFUSALS: usize = 16;
/// How long a "Too many connections" answer may take to be written before its connection is closed regardless.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a control socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("{path}: another process is listening on this socket")]
    InUse { path: PathBuf },
    #[error("{path}: exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("setting the mode of {path} to {mode:04o}: {source}")]
    Mode {
        path: PathBuf,
        mode: u32,
        source: std::io::Error,
    },
    #[error("listen {addr}: its TLS identity: {source}")]
    Tls {
        addr: String,
        source: crate::inbound::smtp::tls::TlsSetupError,
    },
    #[error(
        "listen {addr}: a Unix socket takes no TLS (tls_certificate is for a host:port listener)"
    )]
    TlsOnUnixSocket { addr: String },
}

/// A bound control socket.
pub enum ControlSocket {
    Unix {
        listener: UnixListener,
        path: PathBuf,
    },
    Tcp {
        listener: TcpListener,
        /// Set when the listen stanza has `tls_certificate`: every connection speaks TLS.
        tls: Option<tokio_rustls::TlsAcceptor>,
    },
}

impl ControlSocket {
    /// Binds what `settings` names. A stale Unix socket file (nobody listening) is replaced.
    pub async fn bind(settings: &ListenerSettings) -> Result<ControlSocket, ControlError> {
        match &settings.addr {
            ListenAddr::Tcp(a) => {
                let tls = match &settings.tls_certificate {
                    Some(cert) => Some(tokio_rustls::TlsAcceptor::from(
                        crate::inbound::smtp::tls::server_config(cert, settings.tls_key.as_deref())
                            .map_err(|source| ControlError::Tls {
                                addr: settings.address.clone(),
                                source,
                            })?,
                    )),
                    None => None,
                };
                let listener = TcpListener::bind(a)
                    .await
                    .map_err(|source| ControlError::Bind {
                        addr: settings.address.clone(),
                        source,
                    })?;
                Ok(ControlSocket::Tcp { listener, tls })
            }
            ListenAddr::Unix(_) if settings.tls_certificate.is_some() => {
                Err(ControlError::TlsOnUnixSocket {
                    addr: settings.address.clone(),
                })
            }
            ListenAddr::Unix(path) => bind_unix(path, settings.file_mode).await,
        }
    }

    /// The bound TCP address; `0.0.0.0:0` for a Unix socket.
    pub fn local_addr(&self) -> SocketAddr {
        match self {
            ControlSocket::Tcp { listener: l, .. } => l
                .local_addr()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
            ControlSocket::Unix { .. } => SocketAddr::from(([0, 0, 0, 0], 0)),
        }
    }
}

async fn bind_unix(path: &Path, mode: u32) -> Result<ControlSocket, ControlError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ControlError::NotASocket {
                path: path.to_owned(),
            });
        }
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(ControlError::InUse {
                path: path.to_owned(),
            });
        }
        let _ = std::fs::remove_file(path);
    }
    let bind_err = |source| ControlError::Bind {
        addr: path.display().to_string(),
        source,
    };
    let mode_err = |source| ControlError::Mode {
        path: path.to_owned(),
        mode,
        source,
    };
    // The socket is made in a directory only herald may enter, given its mode there, then moved into place: at
    // `path` it never has the default (umask) mode, under which another local user could connect in between.
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let private = tempfile::Builder::new()
        .prefix(".herald-control")
        .tempdir_in(parent)
        .map_err(bind_err)?;
    let staged = private.path().join("s");
    if staged.as_os_str().len() >= UNIX_PATH_MAX {
        // Too long a name for a socket: bind in place (the mode is then set right after the bind).
        drop(private);
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(mode_err)?;
        return Ok(ControlSocket::Unix {
            listener,
            path: path.to_owned(),
        });
    }
    let listener = UnixListener::bind(&staged).map_err(bind_err)?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode)).map_err(mode_err)?;
    std::fs::rename(&staged, path).map_err(bind_err)?;
    Ok(ControlSocket::Unix {
        listener,
        path: path.to_owned(),
    })
}

/// Bytes a Unix socket's path may have (`sun_path`, with its terminating zero).
const UNIX_PATH_MAX: usize = 108;

/// What the connections of one control listener are held to: its `listen` stanza's `control_password`, `timeout`
/// and connection caps (each falling back to the `control_listener` scope, then the defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlRules {
    password: Option<String>,
    /// Set when `control_password` is empty: why nobody may use the listener, and where that is set. An empty
    /// password is no password to guess, and "no password" is said by leaving the option out; herald-conf's checks
    /// make it an error, and a listener given one anyway answers every command with this.
    unusable: Option<String>,
    timeout: Duration,
    limits: DoorLimits,
}

impl ControlRules {
    /// The rules `config` gives the listener of `settings` (by its address).
    pub fn from_config(config: &Config, settings: &ListenerSettings) -> ControlRules {
        let path = ScopePath::global()
            .then(ScopeKind::ControlListener, None)
            .then(ScopeKind::Listen, Some(&settings.address));
        let password = config
            .eval_opt(&path, herald_conf::Opt::ControlPassword)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned));
        let unusable = password.as_deref().filter(|p| p.is_empty()).map(|_| {
            let scopes = [path.clone(), ScopePath::global().then(ScopeKind::ControlListener, None)];
            let at = scopes.iter().find_map(|p| {
                config
                    .node(p)?
                    .get(herald_conf::Opt::ControlPassword.id())
                    .map(|s| format!(" ({})", s.at))
            });
            format!(
                "This control listener takes no commands: its control_password is empty{}. Remove control_password \
                 for a listener without a password, or set one, then reload the configuration.",
                at.unwrap_or_default()
            )
        });
        let timeout = config
            .eval_opt(&path, herald_conf::Opt::Timeout)
            .ok()
            .and_then(|v| v.as_int())
            .and_then(|s| u64::try_from(s).ok())
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TIMEOUT);
        ControlRules {
            password,
            unusable,
            timeout,
            limits: DoorLimits::from_config(config, settings),
        }
    }

    /// Whether `config` has a `listen` stanza for the control listener at `settings`' address: only then may its
    /// rules come from `config` (elsewhere its option lookups would fall back to the defaults, such as no password).
    pub fn has_stanza(config: &Config, settings: &ListenerSettings) -> bool {
        config
            .listeners()
            .iter()
            .any(|l| l.kind == ListenerKind::Control && l.address == settings.address)
    }
}

/// Accepts console connections until `stop` is cancelled; each connection runs commands on the server (while it
/// still exists), held to the rules `rules` holds when it arrives (see [`ControlRules`]). The Unix socket file is
/// removed when the listener stops.
pub async fn serve(
    socket: ControlSocket,
    settings: ListenerSettings,
    rules: watch::Receiver<Arc<ControlRules>>,
    server: Weak<dyn ServerHandle>,
    stop: CancellationToken,
) {
    let settings = Arc::new(settings);
    let conns = ConnLimiter::control();
    let gate = Arc::new(AuthGate::default());
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    // The rules last said to be unusable (an empty password), so that it is logged once per configuration: at
    // start, and at the first connection after a reload that gave them.
    let mut told: Option<Arc<ControlRules>> = None;
    {
        let first = rules.borrow().clone();
        if let Some(why) = &first.unusable {
            tracing::error!("control listener {}: {why}", settings.address);
            told = Some(first);
        }
    }
    loop {
        let conn_stop = stop.clone();
        tokio::select! {
            () = stop.cancelled() => break,
            accepted = accept(&socket, &settings) => match accepted {
                Ok(Some(stream)) => {
                    if server.strong_count() == 0 {
                        continue;
                    }
                    let rules = rules.borrow().clone();
                    if let Some(why) = &rules.unusable
                        && !told.as_ref().is_some_and(|t| Arc::ptr_eq(t, &rules))
                    {
                        tracing::error!("control listener {}: {why}", settings.address);
                        told = Some(rules.clone());
                    }
                    let client = match &stream {
                        Stream::Unix(_) => None,
                        Stream::Tcp(s) => s.peer_addr().ok().map(|a| a.ip().to_canonical()),
                    };
                    let guard = match conns.admit(client, &rules.limits) {
                        Ok(guard) => guard,
                        Err(busy) => {
                            tracing::warn!(
                                "control listener {}: refused {}: {busy}",
                                settings.address,
                                Client::from(client)
                            );
                            if matches!(&socket, ControlSocket::Tcp { tls: Some(_), .. }) {
                                // A TLS client would read plain text as garbage: it is closed without a word.
                                continue;
                            }
                            refuse(stream, format!("Too many connections ({busy}).\n"), &refusals);
                            continue;
                        }
                    };
                    let server = server.clone();
                    let settings = settings.clone();
                    let tls = match &socket {
                        ControlSocket::Tcp { tls, .. } => tls.clone(),
                        ControlSocket::Unix { .. } => None,
                    };
                    let gate = gate.clone();
                    tokio::spawn(async move {
                        let _slot = guard;
                        match stream {
                            Stream::Unix(s) => {
                                let (client, who) = unix_client(&s);
                                let peer = Peer { who, gate };
                                connection(s, client, server, settings, rules, peer, conn_stop).await
                            }
                            Stream::Tcp(s) => {
                                let (client, who) = tcp_client(&s);
                                let peer = Peer { who, gate };
                                let Some(tls) = tls else {
                                    return connection(s, client, server, settings, rules, peer, conn_stop).await;
                                };
                                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(s)).await {
                                    Ok(Ok(s)) => {
                                        connection(s, client, server, settings, rules, peer, conn_stop).await
                                    }
                                    Ok(Err(e)) => tracing::info!(
                                        "control listener {}: TLS handshake with {client} failed: {e}",
                                        settings.address
                                    ),
                                    Err(_) => tracing::info!(
                                        "control listener {}: {client} did not complete its TLS handshake within {} s",
                                        settings.address,
                                        TLS_HANDSHAKE_TIMEOUT.as_secs()
                                    ),
                                }
                            }
                        }
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!("control listener {}: accept: {e}", settings.address);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    if let ControlSocket::Unix { path, .. } = &socket {
        let _ = std::fs::remove_file(path);
    }
}

/// Answers a connection refused for want of a slot with `text`, on a task of its own that holds one of `slots`
/// for at most [`REFUSAL_TIMEOUT`]; with every slot taken (a flood of connections), closes it at once instead, so
/// that the refused connections cannot pile up. Returns whether an answer is on its way.
fn refuse(stream: Stream, text: String, slots: &Arc<Semaphore>) -> bool {
    let Ok(slot) = slots.clone().try_acquire_owned() else {
        return false;
    };
    tokio::spawn(async move {
        let _slot = slot;
        let reply = Reply::err(text);
        let _ = tokio::time::timeout(REFUSAL_TIMEOUT, async move {
            match stream {
                Stream::Unix(mut s) => protocol::write_reply(&mut s, &reply).await,
                Stream::Tcp(mut s) => protocol::write_reply(&mut s, &reply).await,
            }
        })
        .await;
    });
    true
}

/// A Unix socket client: how the logs name it, and who its wrong passwords count against (its user id).
fn unix_client(s: &tokio::net::UnixStream) -> (String, Client) {
    match s.peer_cred() {
        Ok(c) => (
            format!(
                "unix client uid={} pid={}",
                c.uid(),
                c.pid().map_or_else(|| "?".to_owned(), |p| p.to_string())
            ),
            Client::LocalUser(Some(c.uid())),
        ),
        Err(_) => (
            "unix client (credentials unknown)".to_owned(),
            Client::LocalUser(None),
        ),
    }
}

/// A TCP client: how the logs name it, and who its wrong passwords count against: its address (an IPv4-mapped one
/// as IPv4), or, when it cannot be read, one client for all such (never one on loopback).
fn tcp_client(s: &tokio::net::TcpStream) -> (String, Client) {
    match s.peer_addr() {
        Ok(a) => (
            format!("tcp client {a}"),
            Client::Address(a.ip().to_canonical()),
        ),
        Err(_) => (
            "tcp client (address unknown)".to_owned(),
            Client::LocalUser(None),
        ),
    }
}

/// Who is on the other end of a connection (what its wrong passwords count against), and the listener's record of
/// wrong passwords.
struct Peer {
    who: Client,
    gate: Arc<AuthGate>,
}

enum Stream {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

/// One accepted connection; `None` when the peer's address is refused by the listener's ACL.
async fn accept(
    socket: &ControlSocket,
    settings: &ListenerSettings,
) -> std::io::Result<Option<Stream>> {
    match socket {
        ControlSocket::Unix { listener, .. } => {
            let (s, _) = listener.accept().await?;
            Ok(Some(Stream::Unix(s)))
        }
        ControlSocket::Tcp { listener, .. } => {
            let (s, peer) = listener.accept().await?;
            if settings.permits(peer.ip().to_canonical()) {
                Ok(Some(Stream::Tcp(s)))
            } else {
                tracing::info!("control listener {}: refused {peer}", settings.address);
                Ok(None)
            }
        }
    }
}

/// Reads commands and answers them until `quit`, end of stream, the idle timeout, the login deadline (where a
/// password is required: `timeout` from the connection's arrival), or the listener stops.
async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    client: String,
    server: Weak<dyn ServerHandle>,
    settings: Arc<ListenerSettings>,
    rules: Arc<ControlRules>,
    peer: Peer,
    stop: CancellationToken,
) {
    let (r, mut w) = tokio::io::split(stream);
    let mut r = BufReader::new(r);
    let mut authenticated = rules.password.is_none();
    // Where a password is required, the connection has `timeout` from its arrival to log in, however busy it is
    // meanwhile: commands refused for want of `auth` must not keep it (and its slot) open for good.
    let login_deadline = tokio::time::Instant::now() + rules.timeout;
    loop {
        // The login deadline is never later than the idle one (`timeout` from the last request, which came after
        // the connection's arrival), and often the same instant (a client silent since it connected): until the
        // client has logged in, the end of its time is told as the login deadline, whichever timer fires.
        let line = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(login_deadline), if !authenticated => {
                not_authenticated(&mut w, &client, &settings, &rules, &stop).await;
                return;
            }
            read = tokio::time::timeout(rules.timeout, protocol::read_request(&mut r)) => match read {
                Err(_) if !authenticated => {
                    not_authenticated(&mut w, &client, &settings, &rules, &stop).await;
                    return;
                }
                Err(_) => {
                    send(&mut w, &Reply::err("Idle timeout; closing.\n"), rules.timeout, &stop).await;
                    return;
                }
                Ok(Ok(Some(line))) => line,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    send(&mut w, &Reply::err(format!("{e}\n")), rules.timeout, &stop).await;
                    return;
                }
            },
        };
        let (reply, close) = match commands::parse(&line) {
            Ok(None) => (Reply::ok(""), false),
            Err(e) => (Reply::err(format!("{e}\n")), false),
            Ok(Some(Command::Quit)) => (Reply::ok(""), true),
            Ok(Some(Command::Auth(_))) if let Some(why) = &rules.unusable => {
                (Reply::err(format!("{why}\n")), true)
            }
            Ok(Some(Command::Auth(given))) => match &rules.password {
                Some(p) => {
                    let (reply, close) = authenticate(p, &given, &peer, &settings.address);
                    authenticated |= reply.ok;
                    (reply, close)
                }
                None => (Reply::ok("No password is required here.\n"), false),
            },
            Ok(Some(_)) if !authenticated => match &rules.unusable {
                Some(why) => (Reply::err(format!("{why}\n")), false),
                None => (
                    Reply::err("Authentication required: send `auth PASSWORD` first.\n"),
                    false,
                ),
            },
            Ok(Some(cmd)) => {
                let Some(server) = server.upgrade() else {
                    return;
                };
                let close = cmd == Command::Shutdown;
                if let Command::ConfigReload(Some(path)) = &cmd {
                    // Another file than the one herald started with: allowed (as Momentum), and on record.
                    tracing::warn!(
                        "control listener {}: {client} reloads the configuration from {}",
                        settings.address,
                        path.display()
                    );
                }
                (commands::execute(server.as_ref(), cmd).await, close)
            }
        };
        if !send(&mut w, &reply, rules.timeout, &stop).await || close {
            return;
        }
    }
}

/// Closes a connection that has not logged in within `timeout` of connecting, with a word saying so.
async fn not_authenticated<W: AsyncWrite + Unpin>(
    w: &mut W,
    client: &str,
    settings: &ListenerSettings,
    rules: &ControlRules,
    stop: &CancellationToken,
) {
    tracing::info!(
        "control listener {}: closed {client}: no `auth` within {} s of connecting",
        settings.address,
        rules.timeout.as_secs()
    );
    let text = format!(
        "Not authenticated within {} s of connecting (timeout); closing.\n",
        rules.timeout.as_secs()
    );
    send(w, &Reply::err(text), rules.timeout, stop).await;
}

/// `auth GIVEN` on a listener whose password is `password`: the answer, and whether to close the connection. The
/// check of the lockouts and the count of a failure are one step ([`AuthGate::begin`]); the password is compared
/// only then, and a right one takes its count back.
fn authenticate(password: &str, given: &str, peer: &Peer, listener: &str) -> (Reply, bool) {
    let attempt = match peer.gate.begin(peer.who) {
        Ok(attempt) => attempt,
        Err(Refusal::Client { wait }) => {
            tracing::warn!(
                "control listener {listener}: auth from {} refused: locked out after {AUTH_FAILURES} wrong passwords",
                peer.who
            );
            let text = format!(
                "Too many failed authentications from {}; try again in {} s.\n",
                peer.who,
                wait.as_secs().max(1)
            );
            return (Reply::err(text), true);
        }
        Err(Refusal::Listener { wait, loopback }) => {
            // Logged at warn when the budget was spent, once; each refusal meanwhile only at debug.
            tracing::debug!(
                "control listener {listener}: auth from {} refused: too many wrong passwords from all {}",
                peer.who,
                clients(loopback)
            );
            let text = if loopback {
                format!(
                    "Too many failed authentications on this listener from loopback; every `auth` from loopback is \
                     refused for {} s.\n",
                    wait.as_secs().max(1)
                )
            } else {
                format!(
                    "Too many failed authentications on this listener; every `auth` not from loopback is refused for \
                     {} s.\n",
                    wait.as_secs().max(1)
                )
            };
            return (Reply::err(text), true);
        }
    };
    if same_secret(password.as_bytes(), given.as_bytes()) {
        attempt.succeeded();
        return (Reply::ok("Authenticated.\n"), false);
    }
    let failure = attempt.failed();
    tracing::warn!(
        "control listener {listener}: wrong password from {} ({} within {} s)",
        peer.who,
        failure.client,
        AUTH_WINDOW.as_secs()
    );
    if let Some(closed) = failure.closed_for {
        tracing::warn!(
            "control listener {listener}: {} wrong passwords within {} s from all {}: every `auth` from them is \
             refused for {} s (the last from {})",
            failure.listener,
            AUTH_WINDOW.as_secs(),
            clients(failure.loopback),
            closed.as_secs(),
            peer.who
        );
    }
    (Reply::err("Authentication failed.\n"), true)
}

/// The clients of a budget of wrong passwords, as the logs name them.
fn clients(loopback: bool) -> &'static str {
    if loopback {
        "clients on loopback"
    } else {
        "clients not on loopback"
    }
}

/// Writes `reply`; false when it could not be written within `timeout` (a client that does not read its replies
/// must not hold its connection slot for good), the connection failed, or the listener stops meanwhile.
async fn send<W: AsyncWrite + Unpin>(
    w: &mut W,
    reply: &Reply,
    timeout: std::time::Duration,
    stop: &CancellationToken,
) -> bool {
    // The reply first: a command that stops this very listener (a reload that rebinds it, `shutdown`) still gets
    // its answer when the client reads it.
    tokio::select! {
        biased;
        written = tokio::time::timeout(timeout, protocol::write_reply(w, reply)) => match written {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                tracing::debug!("control connection closed: its client did not read a reply for {timeout:?}");
                false
            }
        },
        () = stop.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control_settings(config: &Config) -> ListenerSettings {
        config.listeners().into_iter().next().unwrap()
    }

    #[test]
    fn password_and_timeout_come_from_the_listen_stanza_or_the_listener() {
        let c = Config::parse_str(
            "t.conf",
            r#"control_listener {
                 control_password = "outer"
                 listen "127.0.0.1:2025" { timeout = 5 }
               }"#,
        )
        .unwrap();
        let rules = ControlRules::from_config(&c, &control_settings(&c));
        assert_eq!(rules.password.as_deref(), Some("outer"));
        assert_eq!(rules.timeout, Duration::from_secs(5));
        assert!(ControlRules::has_stanza(&c, &control_settings(&c)));

        let c = Config::parse_str("t.conf", r#"control_listener { listen "/tmp/x.sock" { } }"#)
            .unwrap();
        let s = control_settings(&c);
        assert_eq!(s.file_mode, 0o660);
        let rules = ControlRules::from_config(&c, &s);
        assert_eq!(rules.password, None);
        assert_eq!(rules.timeout, DEFAULT_TIMEOUT);

        // Another configuration without a stanza for that address has no say over it.
        let other = Config::parse_str("t.conf", r#"control_listener { listen "/tmp/y.sock" { } }"#)
            .unwrap();
        assert!(!ControlRules::has_stanza(&other, &s));
    }

    /// An empty `control_password` is refused at load (herald-conf's check); a listener given one anyway lets nobody
    /// in, and says why and where.
    #[test]
    fn an_empty_password_makes_the_listener_unusable() {
        let text = "control_listener {\n  listen \"127.0.0.1:2025\" {\n    control_password = \"\"\n  }\n}\n";
        match Config::parse_str("t.conf", text) {
            Err(d) => assert!(
                d.to_string()
                    .contains("t.conf:3:5: error: control_password is empty"),
                "{d}"
            ),
            Ok(c) => {
                let rules = ControlRules::from_config(&c, &control_settings(&c));
                let why = rules.unusable.expect("unusable");
                assert!(
                    why.contains("control_password is empty (t.conf:3:5)"),
                    "{why}"
                );
                assert!(why.contains("Remove control_password"), "{why}");
            }
        }
        let c = Config::parse_str(
            "t.conf",
            r#"control_listener { listen "127.0.0.1:2025" { control_password = "x" } }"#,
        )
        .unwrap();
        assert_eq!(
            ControlRules::from_config(&c, &control_settings(&c)).unusable,
            None
        );
    }

    #[tokio::test]
    async fn a_unix_socket_gets_its_mode_and_a_stale_file_is_replaced_but_a_live_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let text = format!(
            r#"control_listener {{ listen "{}" {{ file_mode = 0600 }} }}"#,
            path.display()
        );
        let c = Config::parse_str("t.conf", &text).unwrap();
        let s = control_settings(&c);
        let live = ControlSocket::bind(&s).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // It was made in a private directory and moved into place; nothing of that is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["control.sock"]);
        let client = tokio::net::UnixStream::connect(&path).await;
        assert!(client.is_ok(), "the socket answers at its path");
        assert!(matches!(
            ControlSocket::bind(&s).await,
            Err(ControlError::InUse { .. })
        ));
        drop(live); // the file stays behind, as after a crash
        assert!(path.exists());
        let again = ControlSocket::bind(&s).await.unwrap();
        assert!(matches!(again, ControlSocket::Unix { .. }));

        // A path too long to stage in a private directory is bound in place, with its mode.
        let deep = dir
            .path()
            .join("d".repeat(92 - dir.path().as_os_str().len().min(80)));
        std::fs::create_dir(&deep).unwrap();
        let long = deep.join("c.sock");
        assert!(long.as_os_str().len() < UNIX_PATH_MAX);
        let text = format!(
            r#"control_listener {{ listen "{}" {{ file_mode = 0640 }} }}"#,
            long.display()
        );
        let c = Config::parse_str("t.conf", &text).unwrap();
        let _bound = ControlSocket::bind(&control_settings(&c)).await.unwrap();
        let mode = std::fs::metadata(&long).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);

        let plain = dir.path().join("plain");
        std::fs::write(&plain, "x").unwrap();
        let text = format!(
            r#"control_listener {{ listen "{}" {{ }} }}"#,
            plain.display()
        );
        let c = Config::parse_str("t.conf", &text).unwrap();
        assert!(matches!(
            ControlSocket::bind(&control_settings(&c)).await,
            Err(ControlError::NotASocket { .. })
        ));
    }

    /// A Unix socket client's wrong passwords count against its user: the one this process runs as here.
    #[tokio::test]
    async fn a_unix_client_is_known_by_its_user_id() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let mine = std::fs::metadata(dir.path()).unwrap().uid();
        let (server_side, _client_side) = tokio::net::UnixStream::pair().unwrap();
        let (name, who) = unix_client(&server_side);
        assert_eq!(who, Client::LocalUser(Some(mine)));
        assert!(
            name.starts_with(&format!("unix client uid={mine} pid=")),
            "{name}"
        );
    }

    /// A server that is gone: connections that only authenticate never reach it.
    struct Gone;

    impl ServerHandle for Gone {
        fn config(&self) -> Arc<Config> {
            unreachable!("no command runs")
        }
        fn config_path(&self) -> PathBuf {
            unreachable!("no command runs")
        }
        fn generation(&self) -> u64 {
            unreachable!("no command runs")
        }
        fn engine(&self) -> &crate::queue::Engine {
            unreachable!("no command runs")
        }
        fn spool(&self) -> &dyn herald_spool::Spool {
            unreachable!("no command runs")
        }
        fn invalid_tokens(&self) -> &crate::tokens::InvalidTokenStore {
            unreachable!("no command runs")
        }
        fn summary(&self) -> crate::status::Summary {
            unreachable!("no command runs")
        }
        fn reset_summary(&self) {}
        fn request_stop(&self) {}
        fn reopen_logs(&self) -> Vec<String> {
            Vec::new()
        }
        fn reload<'a>(
            &'a self,
            _path: Option<&'a Path>,
        ) -> std::pin::Pin<
            Box<
                dyn std::future::Future<
                        Output = Result<crate::status::ReloadReport, crate::status::ReloadError>,
                    > + Send
                    + 'a,
            >,
        > {
            unreachable!("no command runs")
        }
    }

    /// Runs one connection accepted on `listener` (a real TCP listener on 127.0.0.1), judged as `who` (or as what
    /// its socket says), and answers one `auth PASSWORD` on it.
    async fn auth_over_tcp(
        listener: &TcpListener,
        gate: &Arc<AuthGate>,
        who: Option<Client>,
        password: &str,
    ) -> Reply {
        use protocol::{read_reply, write_request};
        let c = Config::parse_str(
            "t.conf",
            r#"control_listener { listen "127.0.0.1:2025" { control_password = "pw" } }"#,
        )
        .unwrap();
        let settings = control_settings(&c);
        let rules = Arc::new(ControlRules::from_config(&c, &settings));
        let addr = listener.local_addr().unwrap();
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (server_side, _) = accepted.unwrap();
        let (name, seen) = tcp_client(&server_side);
        assert_eq!(seen, Client::Address([127, 0, 0, 1].into()), "{name}");
        let peer = Peer {
            who: who.unwrap_or(seen),
            gate: gate.clone(),
        };
        let gone: Weak<dyn ServerHandle> = Weak::<Gone>::new();
        let stop = CancellationToken::new();
        let task = tokio::spawn(connection(
            server_side,
            name,
            gone,
            Arc::new(settings),
            rules,
            peer,
            stop.clone(),
        ));
        let (r, mut w) = client.unwrap().into_split();
        let mut r = BufReader::new(r);
        write_request(&mut w, &format!("auth {password}"))
            .await
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(30), read_reply(&mut r))
            .await
            .expect("an answer")
            .unwrap();
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the connection ends")
            .unwrap();
        reply
    }

    /// Over a TCP control listener: once guessers elsewhere (one wrong password from each of as many /64s as the
    /// listener's budget) spent it, a client connecting from 127.0.0.1 with the right password still gets in, and
    /// one from elsewhere is refused; the loopback client is still locked out by its own wrong passwords.
    #[tokio::test]
    async fn guessers_elsewhere_do_not_lock_a_loopback_operator_out_of_a_tcp_listener() {
        let gate = Arc::new(AuthGate::default());
        for i in 0..LISTENER_AUTH_FAILURES {
            let who = Client::Address(format!("2001:db8:{i:x}::1").parse().unwrap());
            let _ = gate.begin(who).expect("within the budget").failed();
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let elsewhere = Client::Address([192, 0, 2, 1].into());
        let refused = auth_over_tcp(&listener, &gate, Some(elsewhere), "pw").await;
        assert_eq!(
            (refused.ok, refused.text.as_str()),
            (
                false,
                "Too many failed authentications on this listener; every `auth` not from loopback is refused for \
                 60 s.\n"
            )
        );
        let mine = auth_over_tcp(&listener, &gate, None, "pw").await;
        assert_eq!((mine.ok, mine.text.as_str()), (true, "Authenticated.\n"));

        for _ in 0..AUTH_FAILURES {
            let wrong = auth_over_tcp(&listener, &gate, None, "wrong").await;
            assert_eq!(
                (wrong.ok, wrong.text.as_str()),
                (false, "Authentication failed.\n")
            );
        }
        let locked = auth_over_tcp(&listener, &gate, None, "pw").await;
        assert_eq!(
            (locked.ok, locked.text.as_str()),
            (
                false,
                "Too many failed authentications from 127.0.0.1; try again in 60 s.\n"
            )
        );
        gate.advance(AUTH_WINDOW);
        assert!(auth_over_tcp(&listener, &gate, None, "pw").await.ok);
    }

    /// A refused connection is answered on a task holding one of a fixed number of slots; with every slot taken
    /// (answers to clients that do not read), the next one is closed at once, without an answer.
    #[tokio::test]
    async fn refusals_beyond_the_cap_are_closed_at_once() {
        use tokio::io::AsyncReadExt;
        let slots = Arc::new(Semaphore::new(2));
        let mut stalled = Vec::new();
        for _ in 0..2 {
            let (server_side, client_side) = tokio::net::UnixStream::pair().unwrap();
            // A client that reads nothing while its buffers are full: its answer waits.
            let filler = vec![0u8; 64 * 1024];
            while server_side.try_write(&filler).is_ok() {}
            assert!(refuse(
                Stream::Unix(server_side),
                "Too many connections (test).\n".into(),
                &slots
            ));
            stalled.push(client_side);
        }
        assert_eq!(slots.available_permits(), 0);
        let (server_side, mut client_side) = tokio::net::UnixStream::pair().unwrap();
        assert!(!refuse(
            Stream::Unix(server_side),
            "Too many connections (test).\n".into(),
            &slots
        ));
        let mut answer = Vec::new();
        let read = tokio::time::timeout(
            Duration::from_secs(30),
            client_side.read_to_end(&mut answer),
        )
        .await;
        assert!(matches!(read, Ok(Ok(0))), "{read:?} {answer:?}");

        // Once the stalled answers give up, their slots come back and refusals are answered again.
        drop(stalled);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while slots.available_permits() < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the slots never came back"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (server_side, mut client_side) = tokio::net::UnixStream::pair().unwrap();
        assert!(refuse(
            Stream::Unix(server_side),
            "Too many connections (test).\n".into(),
            &slots
        ));
        let mut answer = String::new();
        tokio::time::timeout(
            Duration::from_secs(30),
            client_side.read_to_string(&mut answer),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(answer, "ERR 29\nToo many connections (test).\n");
    }
}
