//! `herald console [SOCKET] [COMMAND…]`: talks to a running herald's control listener, like Momentum's
//! ec_console.
//!
//! With `--tls`, a `host:port` socket is reached over TLS (a control listener with `tls_certificate`), its
//! certificate checked against `--ca FILE` (else the web's public roots) and the host name.
//!
//! SOCKET is a Unix socket path (default `/tmp/2025`, or `$HERALD_CONSOLE_SOCKET`) or `[user@]host:port`. With a
//! command, or when standard input is not a terminal, it runs in batch mode: it sends the command (or each line of
//! standard input, as it is read), prints the answers and exits 1 if any command failed. Otherwise it is
//! interactive, with line editing, history (`~/.herald_console_history`, which never keeps an `auth` line) and a
//! prompt like `10:47:35 /tmp/2025>` (UTC time); `quit` or `exit` leaves. A password for a listener with
//! `control_password` comes from `--password-file` or `$HERALD_CONSOLE_PASSWORD`, or from an `auth PASSWORD` the
//! listener accepted; it is sent again on every new connection. Over a Unix socket, a password (given, or typed in
//! an `auth` line) is sent only to a socket owned by the console's user or root, whose listening process runs as
//! one of them too: the default `/tmp/2025` is a path any local user could have put a socket at, to catch it.
//! Without `--tls`, no password (given, or typed in an `auth` line) goes to a TCP host other than loopback unless
//! `--plain` says so: anyone on the way could read it.
//!
//! The listener closes a connection left idle for its `timeout`, with an `Idle timeout` answer nobody asked for.
//! Before a command goes out on a connection that has been idle, the console looks whether the server has written
//! anything or closed it meanwhile; if so, it connects again and the command goes out on the new connection.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use herald::control::commands::{self, Command};
use herald::control::protocol::{self, Reply};
use tokio::io::{AsyncBufRead, AsyncWrite, BufReader};
use tokio::runtime::Runtime;

/// The socket used when none is named (Momentum's default).
pub const DEFAULT_SOCKET: &str = "/tmp/2025";

#[derive(Debug, clap::Args)]
pub struct ConsoleArgs {
    /// A file holding the control listener's password (else `$HERALD_CONSOLE_PASSWORD`).
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// Speak TLS to a `host:port` control listener (one with `tls_certificate`).
    #[arg(long)]
    pub tls: bool,
    /// The CA certificate (PEM) that signed the control listener's certificate; implies `--tls`. Without it, `--tls`
    /// trusts the web's public roots.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Send a password over plain TCP to a host other than loopback (refused without it: anyone on the way could
    /// read it; prefer `--tls`).
    #[arg(long, conflicts_with_all = ["tls", "ca"])]
    pub plain: bool,
    /// `[SOCKET] [COMMAND…]`: SOCKET is a path or `[user@]host:port` (a first word with `/` or `:`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Where the console connects.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Unix(PathBuf),
    Tcp(String),
}

impl Target {
    fn parse(word: &str) -> Target {
        if word.contains('/') {
            return Target::Unix(PathBuf::from(word));
        }
        let host = word.rsplit_once('@').map(|(_, h)| h).unwrap_or(word);
        Target::Tcp(host.to_string())
    }

    fn label(&self) -> String {
        match self {
            Target::Unix(p) => p.display().to_string(),
            Target::Tcp(a) => a.clone(),
        }
    }
}

/// The host part of a console address, read as the connection reads it: `name:port` and `192.0.2.1:port` give
/// what is before the last colon, `[2001:db8::1]:port` and `[2001:db8::1]` the address inside the brackets, and
/// text without a colon is taken whole. An IPv6 address without brackets has its last group read as the port
/// (`::1:2025` is host `::1`, port 2025), as by the connection. The port is not checked here.
fn host_of(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(host, _)| host);
    }
    address.rsplit_once(':').map_or(address, |(h, _)| h)
}

/// Whether `host:port` names this machine (`localhost`, or a loopback address).
fn is_loopback(address: &str) -> bool {
    let host = host_of(address);
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Splits `[SOCKET] [COMMAND…]`: the first word names a socket when it has a `/` or a `:`.
fn split_args(args: &[String]) -> (Target, Vec<String>) {
    match args.first() {
        Some(first) if first.contains('/') || first.contains(':') => {
            (Target::parse(first), args[1..].to_vec())
        }
        _ => {
            let default = std::env::var("HERALD_CONSOLE_SOCKET")
                .unwrap_or_else(|_| DEFAULT_SOCKET.to_string());
            (Target::parse(&default), args.to_vec())
        }
    }
}

/// Joins command words into one line, quoting words with blanks so the server splits them back the same way. A
/// command given as one argument (`herald console SOCKET 'config reload'`, as scripts write it) is that line as is.
fn command_line(words: &[String]) -> String {
    if let [line] = words {
        return line.clone();
    }
    words
        .iter()
        .map(|w| {
            if w.is_empty() || w.chars().any(char::is_whitespace) {
                format!("\"{w}\"")
            } else {
                w.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

struct Connection {
    reader: Box<dyn AsyncBufRead + Unpin + Send>,
    writer: Box<dyn AsyncWrite + Unpin + Send>,
    /// Over a Unix socket another user may have put in place: why no password may be sent on it.
    distrusted: Option<String>,
}

/// Whether the console may send a password to the Unix socket at `path`, reached by `stream`: `None` when the
/// socket file belongs to the console's user or root and the process listening on it runs as one of them,
/// else why not. Any local user may create a socket in a shared directory such as `/tmp` (the default path):
/// a password sent there would go to whoever put it there.
fn distrust(path: &std::path::Path, stream: &tokio::net::UnixStream) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid takes nothing, cannot fail and touches no memory of this process.
    let me = unsafe { libc::geteuid() };
    let owner = match std::fs::metadata(path) {
        Ok(m) => m.uid(),
        Err(e) => return Some(format!("who owns it cannot be read ({e})")),
    };
    let listening = stream.peer_cred().ok().map(|c| c.uid());
    untrusted(me, owner, listening)
}

/// [`distrust`]'s verdict, for the console's user `me`, the socket file's owner and the listening process's user.
fn untrusted(me: u32, owner: u32, listening: Option<u32>) -> Option<String> {
    let trusted = |uid: u32| uid == me || uid == 0;
    if !trusted(owner) {
        return Some(format!(
            "the socket belongs to uid {owner}, neither you (uid {me}) nor root"
        ));
    }
    match listening {
        Some(uid) if trusted(uid) => None,
        Some(uid) => Some(format!(
            "the process listening on it runs as uid {uid}, neither you (uid {me}) nor root"
        )),
        None => Some("the user of the process listening on it cannot be read".to_owned()),
    }
}

/// The error for a password not sent to the Unix socket at `path`, because of `why`.
fn refused_password(path: &std::path::Path, why: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{}: refusing to send the console password over this socket: {why}. Another local user could have put it \
         there to catch the password. Name the socket herald listens on (the path of its control_listener), or run \
         the console as the user herald runs as",
        path.display()
    )
}

/// The error for a password not sent in clear to `address`, a host other than loopback.
fn refused_in_clear(address: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{address}: refusing to send the console password in clear to another machine: use --tls (the control \
         listener needs tls_certificate), or --plain to send it anyway"
    )
}

/// Whether `line` is an `auth` command (its first word, in any case, quoted or not): a line that carries a
/// password.
fn is_auth_line(line: &str) -> bool {
    commands::words(line)
        .first()
        .is_some_and(|w| w.eq_ignore_ascii_case("auth"))
}

/// How the console reaches a TCP control listener over TLS.
#[derive(Clone)]
struct TlsClient {
    connector: tokio_rustls::TlsConnector,
}

impl TlsClient {
    fn new(ca: Option<&std::path::Path>) -> anyhow::Result<TlsClient> {
        use herald_apns::identity::{RootSource, client_config};
        let roots = match ca {
            Some(path) => RootSource::CaFile(path.to_owned()),
            None => RootSource::System,
        };
        let config =
            client_config(None, roots, false).context("the console's TLS configuration")?;
        Ok(TlsClient {
            connector: tokio_rustls::TlsConnector::from(config),
        })
    }

    /// The name the listener's certificate must carry: the host of `host:port` (`[v6]:port` too).
    fn server_name(address: &str) -> anyhow::Result<rustls_pki_types::ServerName<'static>> {
        let host = host_of(address);
        rustls_pki_types::ServerName::try_from(host.to_owned())
            .with_context(|| format!("{address}: {host:?} is not a host name or an address"))
    }
}

impl Connection {
    async fn open(
        target: &Target,
        password: Option<&str>,
        tls: Option<&TlsClient>,
    ) -> anyhow::Result<Connection> {
        let mut conn = match target {
            Target::Unix(p) => {
                let s = tokio::net::UnixStream::connect(p)
                    .await
                    .with_context(|| format!("connecting to {}", p.display()))?;
                let distrusted = distrust(p, &s);
                if let (Some(why), Some(_)) = (&distrusted, password) {
                    // Not sent, but not a failure either: a listener without a password (the usual Unix socket,
                    // reached by an operator of herald's group) still answers; one that needs it says so.
                    eprintln!("{}", refused_password(p, why));
                }
                let (r, w) = s.into_split();
                Connection {
                    reader: Box::new(BufReader::new(r)),
                    writer: Box::new(w),
                    distrusted,
                }
            }
            Target::Tcp(a) => {
                let s = tokio::net::TcpStream::connect(a)
                    .await
                    .with_context(|| format!("connecting to {a}"))?;
                match tls {
                    Some(tls) => {
                        let name = TlsClient::server_name(a)?;
                        let s = tls
                            .connector
                            .connect(name, s)
                            .await
                            .with_context(|| format!("TLS handshake with {a}"))?;
                        let (r, w) = tokio::io::split(s);
                        Connection {
                            reader: Box::new(BufReader::new(r)),
                            writer: Box::new(w),
                            distrusted: None,
                        }
                    }
                    None => {
                        let (r, w) = s.into_split();
                        Connection {
                            reader: Box::new(BufReader::new(r)),
                            writer: Box::new(w),
                            distrusted: None,
                        }
                    }
                }
            }
        };
        let password = password.filter(|_| conn.distrusted.is_none());
        if let Some(p) = password {
            // Always quoted: the listener takes what is between the quotes as written, so that any password
            // (spaces, double quotes) arrives whole.
            let reply = conn.send(&format!("auth \"{p}\"")).await?;
            if !reply.ok {
                bail!("{}: {}", target.label(), reply.text.trim_end());
            }
        }
        Ok(conn)
    }

    async fn send(&mut self, line: &str) -> Result<Reply, protocol::ProtocolError> {
        protocol::write_request(&mut self.writer, line).await?;
        protocol::read_reply(&mut self.reader).await
    }

    /// Whether the server wrote something or closed the connection while no command was waiting for an answer
    /// (what a listener does to a connection idle for its `timeout`): such a connection must not carry the next
    /// command, whose answer would be read from what is already there. Looks without waiting.
    async fn is_stale(&mut self) -> bool {
        // One turn of the runtime first, so that what arrived while the console was idle has been taken in.
        tokio::task::yield_now().await;
        let reader = &mut self.reader;
        std::future::poll_fn(|cx| {
            // Bytes, the end of the stream and an error all mean the connection is done with.
            std::task::Poll::Ready(
                std::pin::Pin::new(&mut *reader)
                    .poll_fill_buf(cx)
                    .is_ready(),
            )
        })
        .await
    }
}

/// A connection that reconnects when the server closed it (idle timeout).
struct Session {
    runtime: Runtime,
    target: Target,
    /// Sent on every new connection: from `--password-file` or the environment, or the last `auth` accepted.
    password: Option<String>,
    tls: Option<TlsClient>,
    /// Set to the address when the target is a TCP host other than loopback reached without TLS and without
    /// `--plain`: no password may go there, neither in an `auth` line nor on a new connection.
    in_clear: Option<String>,
    conn: Option<Connection>,
}

impl Session {
    fn run(&mut self, line: &str) -> anyhow::Result<Reply> {
        let reply = self.exchange(line)?;
        if reply.ok
            && let Ok(Some(Command::Auth(password))) = commands::parse(line)
        {
            self.password = Some(password);
        }
        Ok(reply)
    }

    fn exchange(&mut self, line: &str) -> anyhow::Result<Reply> {
        if let Some(address) = &self.in_clear
            && is_auth_line(line)
        {
            return Err(refused_in_clear(address));
        }
        if let Some(conn) = self.conn.as_mut()
            && self.runtime.block_on(conn.is_stale())
        {
            tracing::debug!(
                "{}: the server closed the idle connection; connecting again",
                self.target.label()
            );
            self.conn = None;
        }
        for attempt in 0..2 {
            if self.conn.is_none() {
                if let (Some(address), Some(_)) = (&self.in_clear, &self.password) {
                    return Err(refused_in_clear(address));
                }
                let conn = self.runtime.block_on(Connection::open(
                    &self.target,
                    self.password.as_deref(),
                    self.tls.as_ref(),
                ))?;
                self.conn = Some(conn);
            }
            let Some(conn) = self.conn.as_mut() else {
                continue;
            };
            if let (Some(why), Target::Unix(p)) = (&conn.distrusted, &self.target)
                && matches!(commands::parse(line), Ok(Some(Command::Auth(_))))
            {
                return Err(refused_password(p, why));
            }
            match self.runtime.block_on(conn.send(line)) {
                Ok(reply) => return Ok(reply),
                Err(e) if attempt == 0 => {
                    self.conn = None;
                    tracing::debug!("reconnecting after: {e}");
                }
                Err(e) => return Err(e).context(format!("talking to {}", self.target.label())),
            }
        }
        bail!(
            "talking to {}: the connection keeps closing",
            self.target.label()
        )
    }
}

fn password(args: &ConsoleArgs) -> anyhow::Result<Option<String>> {
    if let Some(f) = &args.password_file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading the password file {}", f.display()))?;
        return Ok(Some(text.trim_end_matches(['\r', '\n']).to_string()));
    }
    Ok(std::env::var("HERALD_CONSOLE_PASSWORD").ok())
}

pub fn run(args: ConsoleArgs) -> anyhow::Result<ExitCode> {
    let (target, command) = split_args(&args.args);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    let tls = match (&target, args.tls || args.ca.is_some()) {
        (Target::Unix(p), true) => bail!(
            "{}: --tls is for a host:port control listener, not a Unix socket",
            p.display()
        ),
        (_, true) => Some(TlsClient::new(args.ca.as_deref())?),
        (_, false) => None,
    };
    let password = password(&args)?;
    let in_clear = match &target {
        Target::Tcp(address) if tls.is_none() && !args.plain && !is_loopback(address) => {
            Some(address.clone())
        }
        _ => None,
    };
    if let (Some(address), Some(_)) = (&in_clear, &password) {
        return Err(refused_in_clear(address));
    }
    let mut session = Session {
        runtime,
        target,
        password,
        tls,
        in_clear,
        conn: None,
    };
    if !command.is_empty() {
        return batch(&mut session, std::iter::once(Ok(command_line(&command))));
    }
    if !std::io::stdin().is_terminal() {
        // Line by line as they come: a script may pause between commands, longer than the listener's timeout.
        return batch(&mut session, std::io::stdin().lock().lines());
    }
    interactive(&mut session)
}

/// Prints each answer (failures on standard error); exit status 1 if any command failed.
fn batch(
    session: &mut Session,
    lines: impl Iterator<Item = std::io::Result<String>>,
) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for line in lines {
        let line = line.context("reading commands from standard input")?;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if matches!(trimmed, "quit" | "exit") {
            break;
        }
        let reply = session.run(trimmed)?;
        if reply.ok {
            super::print_stdout(&reply.text)?;
        } else {
            failed = true;
            eprint!("{}", reply.text);
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn clock() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        % 86_400;
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// Whether a command line goes into the history file: not `auth PASSWORD`, whose password would stay there in
/// clear text (the session keeps it in memory, for the connections it opens later).
fn kept_in_history(line: &str) -> bool {
    !is_auth_line(line)
}

fn interactive(session: &mut Session) -> anyhow::Result<ExitCode> {
    use rustyline::error::ReadlineError;
    let mut editor = rustyline::DefaultEditor::new().context("starting the line editor")?;
    let history =
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".herald_console_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    // Connect at once so that a wrong socket is reported before the first prompt.
    session.run("")?;
    let label = session.target.label();
    loop {
        match editor.readline(&format!("{} {label}> ", clock())) {
            Ok(line) => {
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                if kept_in_history(line) {
                    let _ = editor.add_history_entry(line);
                }
                if matches!(line, "quit" | "exit") {
                    break;
                }
                match session.run(line) {
                    Ok(reply) => super::print_stdout(&reply.text)?,
                    Err(e) => eprintln!("herald: error: {e:#}"),
                }
                if line == "shutdown" {
                    break;
                }
            }
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e).context("reading a command"),
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_is_read_from_each_address_form() {
        assert_eq!(host_of("127.0.0.1:2025"), "127.0.0.1");
        assert_eq!(host_of("[::1]:2025"), "::1");
        assert_eq!(host_of("[2001:db8::1]:2025"), "2001:db8::1");
        assert_eq!(host_of("mta.example.net:2025"), "mta.example.net");
        assert_eq!(host_of("localhost:"), "localhost");
        assert_eq!(host_of("localhost"), "localhost");
        // Without brackets, an IPv6 address's last group is its port, as when connecting.
        assert_eq!(host_of("::1:2025"), "::1");
        assert_eq!(host_of("[::1]"), "::1");
    }

    #[test]
    fn the_server_name_is_the_host_of_the_address() {
        use rustls_pki_types::ServerName;
        assert_eq!(
            TlsClient::server_name("mta.example.net:2025").unwrap(),
            ServerName::try_from("mta.example.net").unwrap()
        );
        assert_eq!(
            TlsClient::server_name("192.0.2.1:2025").unwrap(),
            ServerName::try_from("192.0.2.1").unwrap()
        );
        assert_eq!(
            TlsClient::server_name("[2001:db8::1]:2025").unwrap(),
            ServerName::try_from("2001:db8::1").unwrap()
        );
        assert_eq!(
            TlsClient::server_name("2001:db8::1:2025").unwrap(),
            ServerName::try_from("2001:db8::1").unwrap()
        );
    }

    #[test]
    fn loopback_hosts_are_told_apart_from_other_machines() {
        for here in [
            "127.0.0.1:2025",
            "localhost:2025",
            "[::1]:2025",
            "127.3.4.5:1",
        ] {
            assert!(is_loopback(here), "{here}");
        }
        for there in [
            "10.0.0.1:2025",
            "mta.example.net:2025",
            "[2001:db8::1]:2025",
        ] {
            assert!(!is_loopback(there), "{there}");
        }
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn the_first_word_is_a_socket_only_when_it_looks_like_one() {
        let (t, c) = split_args(&s(&["/run/herald/control.sock", "summary"]));
        assert_eq!(t, Target::Unix("/run/herald/control.sock".into()));
        assert_eq!(c, s(&["summary"]));
        let (t, c) = split_args(&s(&["admin@127.0.0.1:2025", "pid"]));
        assert_eq!(t, Target::Tcp("127.0.0.1:2025".into()));
        assert_eq!(c, s(&["pid"]));
        let (_, c) = split_args(&s(&["summary", "reset"]));
        assert_eq!(c, s(&["summary", "reset"]));
    }

    /// A password goes only to a socket of the console's user or root, served by a process of one of them.
    #[test]
    fn a_password_goes_only_to_a_socket_of_the_user_or_root() {
        assert_eq!(untrusted(1000, 1000, Some(1000)), None);
        assert_eq!(untrusted(1000, 0, Some(0)), None);
        assert_eq!(untrusted(1000, 1000, Some(0)), None);
        assert_eq!(untrusted(0, 0, Some(0)), None);
        let why = untrusted(1000, 1001, Some(1000)).expect("another user's socket");
        assert!(
            why.contains("uid 1001") && why.contains("uid 1000"),
            "{why}"
        );
        let why = untrusted(0, 65534, Some(0)).expect("root trusts only its own and its user's");
        assert!(why.contains("uid 65534"), "{why}");
        let why = untrusted(1000, 1000, Some(1001)).expect("served by another user");
        assert!(why.contains("listening on it runs as uid 1001"), "{why}");
        assert!(untrusted(1000, 1000, None).is_some());
        let e = refused_password(std::path::Path::new("/tmp/2025"), &why).to_string();
        assert!(
            e.starts_with("/tmp/2025: refusing to send the console password"),
            "{e}"
        );
    }

    /// A session with a TCP host other than loopback, reached without TLS or `--plain`: an `auth` line is refused
    /// before any connection, and so is a new connection that would log in with a password (a reconnection).
    #[test]
    fn no_password_goes_in_clear_to_another_machine() {
        let session = |password: Option<&str>| Session {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            target: Target::Tcp("192.0.2.1:2025".into()),
            password: password.map(str::to_owned),
            tls: None,
            in_clear: Some("192.0.2.1:2025".into()),
            conn: None,
        };
        let refused =
            "192.0.2.1:2025: refusing to send the console password in clear to another machine";
        for line in ["auth s3cret", "AUTH s3cret", "\"auth\" s3cret", "auth"] {
            let e = session(None).run(line).unwrap_err().to_string();
            assert!(e.starts_with(refused), "{line}: {e}");
        }
        let mut with_password = session(Some("s3cret"));
        let e = with_password.run("version").unwrap_err().to_string();
        assert!(e.starts_with(refused), "{e}");
        assert!(with_password.conn.is_none());
    }

    #[test]
    fn auth_lines_stay_out_of_the_history() {
        for secret in [
            "auth s3cret",
            "AUTH s3cret",
            "  auth   \"two words\"",
            "\"auth\" s3cret",
            "auth",
        ] {
            assert!(!kept_in_history(secret), "{secret}");
        }
        for kept in ["summary", "showqueue auth.example 10,0", "authors", "mailq"] {
            assert!(kept_in_history(kept), "{kept}");
        }
    }

    #[test]
    fn words_with_blanks_are_quoted_for_the_server() {
        assert_eq!(
            command_line(&s(&["config", "eval", "domain", "a b", "max_retries"])),
            r#"config eval domain "a b" max_retries"#
        );
        assert_eq!(
            herald::control::commands::words(&command_line(&s(&["x", "a b", ""]))),
            s(&["x", "a b", ""])
        );
    }

    /// A whole command in one argument (`herald console SOCKET 'config reload'`) is sent as the line it is, as
    /// Momentum's console takes `ec_console /tmp/2025 "showqueue example.com"`.
    #[test]
    fn a_command_in_one_argument_is_sent_as_its_line() {
        assert_eq!(command_line(&s(&["config reload"])), "config reload");
        assert_eq!(
            command_line(&s(&[r#"config eval domain "a b" max_retries"#])),
            r#"config eval domain "a b" max_retries"#
        );
        assert_eq!(command_line(&s(&["summary"])), "summary");
    }
}
