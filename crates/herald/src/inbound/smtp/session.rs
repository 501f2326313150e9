//! One ESMTP connection: the command state machine (greeting, EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT,
//! VRFY, HELP, STARTTLS), the idle timeout, the shutdown and reconfiguration `421`s, and the end of DATA, where
//! the message is read as MCMT and its notifications are prepared and committed in one batch.
//!
//! Protocol choices (docs/smtp.md): lines must end in CRLF (a bare LF in a command is refused, a bare LF in
//! message data refuses the message, and only CRLF.CRLF ends the data, never LF.CRLF); `VRFY` is answered `502`;
//! replies are sent once the pipelined commands are answered or past a bound, and a client that does not take
//! them within `timeout` is disconnected; a recipient whose domain herald does not deliver is refused at `RCPT`
//! ([`Intake::check_domain`]), and one whose domain's credentials cannot be used now is told to retry; the room a
//! message needs is taken before its notifications are built ([`Intake::reserve`]); the transaction is
//! all-or-nothing: one refused notification refuses the message. Text of the client's echoed in a reply is cut
//! to [`mcmt::echo`]'s length, and a session that makes `max_errors` errors without a message accepted is closed
//! ([`SmtpLimits`](super::SmtpLimits)); herald's own temporary refusals (queue full, storage failing) are not the
//! client's errors. A client that `always_deny` refuses gets `554` instead of the greeting and `503` to anything but
//! `QUIT` (RFC 5321 §3.1), for a short while at most. Reading a message and building its notifications is CPU
//! work: it runs with the runtime's other tasks moved off the thread ([`crate::queue::in_place`]).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use herald_conf::McmtReception;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::SmtpConfig;
use super::command::{self, Command};
use super::io::{LineIo, ReadLine};
use super::reply::Reply;
use crate::inbound::accept::{DomainRefusal, Intake, NoRoom, Refusal, Source, Unavailable};
use crate::inbound::mcmt::{self, McmtError, Parsed, echo};
use crate::queue::message::MessageId;

/// What waiting for the client produced.
enum Event {
    Read(ReadLine),
    Idle,
    Shutdown,
}

/// What a command leads to.
enum Step {
    Reply(Reply),
    /// Send the reply, then close.
    Close(Reply),
    /// Close without a reply (the client left).
    Gone,
    /// Nothing to send (after STARTTLS the client speaks first).
    Silent,
}

/// The envelope of the open transaction.
#[derive(Default)]
struct Envelope {
    from: Option<String>,
    /// The message size the client announced (`MAIL … SIZE=`), within the listener's limit.
    size: Option<u64>,
    /// The accepted recipients, as written.
    recipients: Vec<String>,
    /// The [`recipient_key`] of each accepted recipient: a recipient given again is found in one look-up,
    /// however many came before it.
    keys: HashSet<String>,
    /// Recipients given again in this transaction: as many as one transaction may give recipients are not held
    /// against the client (a message may list a device more than once), each one past them is a command that does
    /// nothing.
    repeats: usize,
    /// `RCPT`s of this transaction that herald deferred for its own state (`4.3.x`, [`herald_side`]).
    deferred_recipients: usize,
    /// Whether an `RCPT` of this transaction was refused for anything else.
    other_refusal: bool,
}

impl Envelope {
    /// Whether every `RCPT` of the open transaction was deferred for herald's own state (and there was one): a
    /// `DATA` the client pipelined after them is refused through no fault of its own.
    fn all_recipients_deferred(&self) -> bool {
        self.from.is_some()
            && self.recipients.is_empty()
            && self.deferred_recipients > 0
            && !self.other_refusal
    }
}

pub(crate) struct Session {
    io: LineIo,
    peer: SocketAddr,
    config: Arc<SmtpConfig>,
    config_rx: watch::Receiver<Arc<SmtpConfig>>,
    intake: Arc<Intake>,
    shutdown: CancellationToken,
    conn_id: MessageId,
    reception: McmtReception,
    /// The EHLO/HELO name; `None` until the client greeted (again after STARTTLS).
    greeted: Option<String>,
    envelope: Envelope,
    /// What the client did wrong since it last had a message accepted.
    strikes: Strikes,
}

/// The counts behind the limits `max_errors` and `max_junk` ([`SmtpLimits`](super::SmtpLimits)), since the last
/// message accepted.
#[derive(Debug, Default)]
struct Strikes {
    /// Refusals of commands and messages (4xx, 5xx), refused recipients past the listener's recipient limit, and
    /// junk commands past `max_junk`.
    errors: usize,
    /// Commands that did nothing: `NOOP`, `RSET`, `VRFY`, `HELP`, `EHLO`, `HELO`, a recipient given again past
    /// the transaction's allowance ([`Envelope::repeats`]), and commands and messages herald deferred for its own
    /// state (queue full, storage failing, its configuration), a `DATA` after `RCPT`s all so deferred included.
    junk: usize,
    /// Recipients refused: as many as one transaction may give are not held against the client (a message to
    /// many recipients, some of them unknown, is no misbehaviour).
    refused_recipients: usize,
    /// Set when herald deferred the last `MAIL` for its own state: the `RCPT`s and the `DATA` a client pipelined
    /// after it are answered `503` through no fault of its own. Holds how many such `RCPT`s came since; as many
    /// as one transaction may give are not held against the client.
    deferred_mail: Option<usize>,
}

impl Strikes {
    /// Counts a command that did nothing; each one past `max_junk` is an error.
    fn junk(&mut self, max_junk: usize) {
        self.junk += 1;
        if self.junk > max_junk {
            self.errors += 1;
        }
    }
}

/// What kind of command a reply answers, for [`Strikes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A command that does nothing (`NOOP`, `RSET`, `VRFY`, `HELP`, `EHLO`, `HELO`).
    Junk,
    Mail,
    Rcpt,
    Data,
    Other,
}

/// Whether a reply tells of herald's own temporary state rather than of anything the client did: RFC 3463's mail
/// system status (`4.3.x`: queue or storage full, storage failing, herald's configuration at fault).
fn herald_side(reply: &Reply) -> bool {
    (400..500).contains(&reply.code) && reply.status.starts_with("4.3.")
}

impl Session {
    pub(crate) fn new(
        stream: TcpStream,
        peer: SocketAddr,
        mut config_rx: watch::Receiver<Arc<SmtpConfig>>,
        intake: Arc<Intake>,
        shutdown: CancellationToken,
    ) -> Session {
        let config = config_rx.borrow_and_update().clone();
        // A listener on `[::]` sees IPv4 clients as IPv4-mapped addresses; access lists are written in IPv4.
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let reception = config.listener.mcmt_reception_for(peer.ip());
        Session {
            io: LineIo::new(stream, config.limits.idle_timeout),
            peer,
            config,
            config_rx,
            conn_id: intake.next_id(),
            intake,
            shutdown,
            reception,
            greeted: None,
            envelope: Envelope::default(),
            strikes: Strikes::default(),
        }
    }

    pub(crate) async fn run(mut self) {
        let host = self.config.limits.hostname.clone();
        if !self.config.listener.permits(self.peer.ip()) {
            tracing::info!(peer = %self.peer, "ESMTP connection refused by always_deny");
            self.refused(&host).await;
            return;
        }
        Reply::new(220, "", format!("{host} ESMTP herald ready")).write_to(self.io.queue());
        if !self.flush().await {
            return;
        }
        loop {
            let limit = self.config.limits.max_command_line;
            let step = match self.next(limit).await {
                Err(e) => {
                    tracing::debug!(peer = %self.peer, error = %e, "ESMTP connection failed");
                    Step::Gone
                }
                Ok(Event::Shutdown) => Step::Close(shutting_down(&host)),
                Ok(Event::Idle) => {
                    Step::Close(self.timed_out(&host, self.config.limits.idle_timeout))
                }
                Ok(Event::Read(ReadLine::Eof)) => Step::Gone,
                Ok(Event::Read(ReadLine::TooLong { .. })) => {
                    self.strikes.errors += 1;
                    Step::Reply(Reply::new(
                        500,
                        "5.5.2",
                        format!("command line too long: the limit is {limit} bytes including CRLF"),
                    ))
                }
                Ok(Event::Read(ReadLine::Line(line))) => {
                    if self.config_rx.has_changed().unwrap_or(false) {
                        Step::Close(reconfiguration(&self.config_rx))
                    } else {
                        self.line(&line).await
                    }
                }
            };
            match step {
                Step::Reply(r) => {
                    r.write_to(self.io.queue());
                    let max_errors = self.config.limits.max_errors;
                    if self.strikes.errors >= max_errors {
                        tracing::info!(peer = %self.peer, errors = self.strikes.errors, "ESMTP session closed after too many errors");
                        Reply::new(
                            421,
                            "4.7.0",
                            format!(
                                "{host}: too many errors ({max_errors} refused commands or messages without a message accepted); closing"
                            ),
                        )
                        .write_to(self.io.queue());
                        break;
                    }
                    if self.io.flush_due() && !self.flush().await {
                        return;
                    }
                }
                Step::Close(r) => {
                    r.write_to(self.io.queue());
                    break;
                }
                Step::Gone => break,
                Step::Silent => {}
            }
        }
        if let Err(e) = self.io.close().await {
            tracing::debug!(peer = %self.peer, error = %e, "ESMTP last reply not sent");
        }
    }

    /// A client that `always_deny` refuses: `554 5.7.1` instead of the greeting, then, as RFC 5321 §3.1 asks of a
    /// server that does so, the connection stays open until the client sends `QUIT` (`221`), every other command
    /// answered `503 5.5.1`. The session holds one of the listener's connection slots meanwhile, so it is short:
    /// at most `refused_answers` answers, then `421 4.7.0`; each command waited for at most `refused_wait` (or
    /// `timeout`, when shorter), then `421 4.4.2`; the whole at most `refused_stay`, then `421 4.7.0`
    /// ([`SmtpLimits`](super::SmtpLimits)). Writes wait no longer than reads. Either way the connection closes.
    async fn refused(&mut self, host: &str) {
        let limits = self.config.limits.clone();
        let wait = limits.idle_timeout.min(limits.refused_wait);
        let deadline = crate::model::instant_after(limits.refused_stay);
        self.io.set_write_timeout(wait);
        let why = format!(
            "{host}: connections from {} are not allowed on this listener (always_deny)",
            self.peer.ip()
        );
        Reply::new(554, "5.7.1", why.clone()).write_to(self.io.queue());
        if !self.flush().await {
            return;
        }
        let stayed_too_long = || {
            Reply::new(
                421,
                "4.7.0",
                format!(
                    "{host}: a refused client may stay {:?} at most; closing",
                    limits.refused_stay
                ),
            )
        };
        let mut answered = 0;
        let last = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break stayed_too_long();
            }
            let quit = match self
                .next_within(limits.max_command_line, wait.min(left))
                .await
            {
                Err(_) | Ok(Event::Read(ReadLine::Eof)) => return,
                Ok(Event::Shutdown) => break shutting_down(host),
                Ok(Event::Idle) if left <= wait => break stayed_too_long(),
                Ok(Event::Idle) => break self.timed_out(host, wait),
                Ok(Event::Read(ReadLine::TooLong { .. })) => false,
                Ok(Event::Read(ReadLine::Line(line))) => line
                    .strip_suffix(b"\r\n")
                    .is_some_and(|text| command::parse(text) == Ok(Command::Quit)),
            };
            if quit {
                break Reply::new(221, "2.0.0", format!("{host} closing"));
            }
            Reply::new(503, "5.5.1", format!("{why}; only QUIT is accepted"))
                .write_to(self.io.queue());
            answered += 1;
            if answered >= limits.refused_answers {
                break Reply::new(
                    421,
                    "4.7.0",
                    format!("{host}: too many commands from a refused client; closing"),
                );
            }
            if self.io.flush_due() && !self.flush().await {
                return;
            }
        };
        last.write_to(self.io.queue());
        if let Err(e) = self.io.close().await {
            tracing::debug!(peer = %self.peer, error = %e, "ESMTP last reply not sent");
        }
    }

    /// Sends the queued replies; `false` when they could not be sent, the client having left or read nothing for
    /// `timeout` (the session then ends).
    async fn flush(&mut self) -> bool {
        match self.io.flush().await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "ESMTP replies not sent; closing");
                false
            }
        }
    }

    /// The `421 4.4.2` after a wait of `waited` for a line ([`Event::Idle`]). The timeout is per line: the text
    /// says whether nothing came or a line was begun and not finished within it (a client trickling bytes without
    /// an end of line). The session ends, so the unfinished line is dropped.
    fn timed_out(&mut self, host: &str, waited: std::time::Duration) -> Reply {
        let unfinished = self.io.discard_buffered_input();
        idle(host, waited, unfinished)
    }

    /// The next line, unless the client stays silent for `timeout` or herald shuts down first.
    async fn next(&mut self, limit: usize) -> std::io::Result<Event> {
        self.next_within(limit, self.config.limits.idle_timeout)
            .await
    }

    /// The next line, unless the client stays silent for `idle` or herald shuts down first.
    async fn next_within(
        &mut self,
        limit: usize,
        idle: std::time::Duration,
    ) -> std::io::Result<Event> {
        if self.shutdown.is_cancelled() {
            return Ok(Event::Shutdown);
        }
        tokio::select! {
            () = self.shutdown.cancelled() => Ok(Event::Shutdown),
            read = tokio::time::timeout(idle, self.io.read_line(limit)) => match read {
                Err(_) => Ok(Event::Idle),
                Ok(r) => r.map(Event::Read),
            },
        }
    }

    async fn line(&mut self, line: &[u8]) -> Step {
        let Some(text) = line.strip_suffix(b"\r\n") else {
            self.strikes.errors += 1;
            return Step::Reply(Reply::new(
                500,
                "5.5.2",
                "bare LF in a command: lines must end with CRLF",
            ));
        };
        match command::parse(text) {
            Err(e) => {
                self.strikes.errors += 1;
                let (code, status) = e.code();
                Step::Reply(Reply::new(code, status, e.to_string()))
            }
            Ok(cmd) => {
                let kind = match cmd {
                    Command::Noop
                    | Command::Rset
                    | Command::Vrfy
                    | Command::Help
                    | Command::Ehlo(_)
                    | Command::Helo(_) => Kind::Junk,
                    Command::Mail { .. } => Kind::Mail,
                    Command::Rcpt { .. } => Kind::Rcpt,
                    Command::Data => Kind::Data,
                    _ => Kind::Other,
                };
                let step = self.command(cmd).await;
                self.tally(&step, kind);
                step
            }
        }
    }

    /// Counts what a command's answer holds against the client ([`Strikes`]). A refusal for herald's own
    /// temporary state ([`herald_side`]) is no error of the client's: it counts as a command that did nothing, so
    /// a client retrying on its connection while herald is full is not closed for it after `max_errors`, yet
    /// cannot hold the session for good either.
    fn tally(&mut self, step: &Step, kind: Kind) {
        let limits = &self.config.limits;
        let s = &mut self.strikes;
        let deferred_mail = s.deferred_mail.take();
        if kind == Kind::Junk {
            s.junk(limits.max_junk);
        }
        let Step::Reply(reply) = step else {
            return;
        };
        if reply.code < 400 {
            return;
        }
        match (kind, deferred_mail) {
            // Pipelined after a MAIL that herald deferred: the client could not know.
            (Kind::Rcpt, Some(n)) if reply.code == 503 => {
                s.deferred_mail = Some(n + 1);
                if n + 1 > limits.max_recipients {
                    s.errors += 1;
                }
            }
            (Kind::Data, Some(_)) if reply.code == 503 => {}
            // Every RCPT before it was deferred for herald's own state: back-pressure, as those RCPTs were.
            (Kind::Data, None) if reply.code == 503 && self.envelope.all_recipients_deferred() => {
                s.junk(limits.max_junk);
            }
            (Kind::Rcpt, _) => {
                s.refused_recipients += 1;
                if s.refused_recipients > limits.max_recipients {
                    s.errors += 1;
                }
            }
            _ if herald_side(reply) => {
                if kind == Kind::Mail {
                    s.deferred_mail = Some(0);
                }
                if kind != Kind::Junk {
                    s.junk(limits.max_junk);
                }
            }
            _ => s.errors += 1,
        }
    }

    async fn command(&mut self, cmd: Command) -> Step {
        let host = self.config.limits.hostname.clone();
        let reply = match cmd {
            Command::Ehlo(name) => {
                self.envelope = Envelope::default();
                let mut lines = vec![
                    format!("{host} greets {}", echo(&name)),
                    "PIPELINING".into(),
                    format!("SIZE {}", self.config.limits.max_message_size),
                    "8BITMIME".into(),
                    "ENHANCEDSTATUSCODES".into(),
                ];
                if self.config.tls.is_some() && !self.io.is_tls() {
                    lines.push("STARTTLS".into());
                }
                lines.push("HELP".into());
                self.greeted = Some(name);
                Reply::multi(250, lines)
            }
            Command::Helo(name) => {
                self.envelope = Envelope::default();
                self.greeted = Some(name);
                Reply::new(250, "", host)
            }
            Command::Mail { from, size } => self.mail(from, size),
            Command::Rcpt { to } => self.rcpt(to).await,
            Command::Data => return self.data().await,
            Command::Rset => {
                self.envelope = Envelope::default();
                Reply::new(250, "2.0.0", "reset")
            }
            Command::Noop => Reply::new(250, "2.0.0", "ok"),
            Command::Quit => {
                return Step::Close(Reply::new(221, "2.0.0", format!("{host} closing")));
            }
            Command::Vrfy => Reply::new(
                502,
                "5.5.1",
                "VRFY is not supported: herald does not verify addresses",
            ),
            Command::Help => Reply::new(
                214,
                "2.0.0",
                "herald takes push notifications as MCMT messages: EHLO, MAIL FROM, RCPT TO:<token@app-domain>, DATA",
            ),
            Command::StartTls => return self.starttls().await,
        };
        Step::Reply(reply)
    }

    fn mail(&mut self, from: String, size: Option<u64>) -> Reply {
        if self.greeted.is_none() {
            return Reply::new(503, "5.5.1", "say EHLO or HELO first");
        }
        if self.envelope.from.is_some() {
            return Reply::new(
                503,
                "5.5.1",
                "a transaction is already open: RSET or finish it first",
            );
        }
        let max = self.config.limits.max_message_size;
        if let Some(size) = size.filter(|s| *s > max) {
            return Reply::new(
                552,
                "5.3.4",
                format!("message size {size} exceeds the limit of {max} bytes"),
            );
        }
        // Back-pressure: while the queue is full in memory, say so before the client sends the message.
        if let Err(refusal) = self.intake.has_room(1) {
            return Reply::new(452, "4.3.1", refusal.to_string());
        }
        let reply = Reply::new(250, "2.1.0", format!("sender <{}> ok", echo(&from)));
        self.envelope.from = Some(from);
        self.envelope.size = size;
        reply
    }

    async fn rcpt(&mut self, to: String) -> Reply {
        if self.envelope.from.is_none() {
            return Reply::new(503, "5.5.1", "RCPT before MAIL");
        }
        let reply = self.recipient(to).await;
        if herald_side(&reply) {
            self.envelope.deferred_recipients += 1;
        } else if reply.code >= 400 {
            self.envelope.other_refusal = true;
        }
        reply
    }

    /// `RCPT` within a transaction.
    async fn recipient(&mut self, to: String) -> Reply {
        // The same recipient again would send the same notification to the same device twice.
        let key = recipient_key(&to);
        if self.envelope.keys.contains(&key) {
            // It does nothing. A transaction may give as many repeats as recipients; past them each counts as a
            // command that does nothing, so that repeating it cannot hold the session for good.
            self.envelope.repeats += 1;
            if self.envelope.repeats > self.config.limits.max_recipients {
                self.strikes.junk(self.config.limits.max_junk);
            }
            return Reply::new(
                250,
                "2.1.5",
                format!(
                    "recipient <{}> ok (already given: it gets one notification per push part)",
                    echo(&to)
                ),
            );
        }
        let max = self.config.limits.max_recipients;
        if self.envelope.recipients.len() >= max {
            return Reply::new(
                452,
                "4.5.3",
                format!("too many recipients: the limit is {max} per message"),
            );
        }
        let domain = match to.rsplit_once('@') {
            Some((local, domain)) if !local.is_empty() && !domain.is_empty() => domain,
            // RFC 5321 §4.5.1: a valid address, the reserved mailbox, which herald has no use for.
            None if to.eq_ignore_ascii_case("postmaster") => {
                return Reply::new(
                    550,
                    "5.1.1",
                    format!(
                        "<{}>: herald has no mailboxes: it takes only device-token recipients of push domains, <token-or-name@app-domain>",
                        echo(&to)
                    ),
                );
            }
            _ => {
                return Reply::new(
                    501,
                    "5.1.3",
                    format!(
                        "recipient <{}> must be <token-or-name@app-domain>: the domain picks the app",
                        echo(&to)
                    ),
                );
            }
        };
        if domain.len() > MAX_DOMAIN {
            return Reply::new(
                501,
                "5.1.3",
                format!(
                    "recipient <{}>: its domain is {} octets long, over the {MAX_DOMAIN} a domain may have (RFC 5321 §4.5.3.1.2)",
                    echo(&to),
                    domain.len()
                ),
            );
        }
        self.intake.warm(None, domain).await;
        if let Err(e) = self.intake.check_domain(domain) {
            return unknown_domain(&to, &e);
        }
        let reply = Reply::new(250, "2.1.5", format!("recipient <{}> ok", echo(&to)));
        self.envelope.recipients.push(to);
        self.envelope.keys.insert(key);
        reply
    }

    async fn starttls(&mut self) -> Step {
        let Some(tls) = self.config.tls.clone() else {
            return Step::Reply(Reply::new(
                502,
                "5.5.1",
                "STARTTLS is not offered on this listener (it has no tls_certificate)",
            ));
        };
        if self.io.is_tls() {
            return Step::Reply(Reply::new(503, "5.5.1", "TLS is already active"));
        }
        if self.envelope.from.is_some() {
            return Step::Reply(Reply::new(
                503,
                "5.5.1",
                "STARTTLS inside a transaction: RSET first",
            ));
        }
        Reply::new(220, "2.0.0", "ready to start TLS").write_to(self.io.queue());
        if !self.flush().await {
            return Step::Gone;
        }
        let dropped = self.io.discard_buffered_input();
        if dropped > 0 {
            tracing::info!(peer = %self.peer, bytes = dropped, "dropped plaintext pipelined after STARTTLS");
        }
        // The handshake is bounded like any other wait for the client, and gives way to shutdown.
        let idle = self.config.limits.idle_timeout;
        let handshake = tokio::select! {
            () = self.shutdown.cancelled() => return Step::Gone,
            r = tokio::time::timeout(idle, self.io.upgrade(tls)) => r,
        };
        match handshake {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::info!(peer = %self.peer, error = %e, "STARTTLS failed");
                return Step::Gone;
            }
            Err(_) => {
                tracing::info!(peer = %self.peer, "STARTTLS handshake timed out");
                return Step::Gone;
            }
        }
        self.greeted = None;
        self.envelope = Envelope::default();
        Step::Silent
    }

    async fn data(&mut self) -> Step {
        if self.envelope.from.is_none() {
            return Step::Reply(Reply::new(503, "5.5.1", "DATA before MAIL"));
        }
        if self.envelope.all_recipients_deferred() {
            return Step::Reply(Reply::new(
                503,
                "5.5.1",
                "DATA needs at least one accepted RCPT (every RCPT was deferred: retry later)",
            ));
        }
        if self.envelope.recipients.is_empty() {
            return Step::Reply(Reply::new(
                503,
                "5.5.1",
                "DATA needs at least one accepted RCPT",
            ));
        }
        Reply::new(354, "", "send the MCMT message; end with <CRLF>.<CRLF>")
            .write_to(self.io.queue());
        if !self.flush().await {
            return Step::Gone;
        }
        let envelope = std::mem::take(&mut self.envelope);
        let limits = self.config.limits.clone();
        let host = limits.hostname.clone();
        let mut message = Vec::new();
        let (mut too_big, mut long_line, mut bare_lf) = (false, false, false);
        // The DATA command's CRLF precedes the first line.
        let mut after_crlf = true;
        // Each line must come within `timeout`, and the whole message within DATA_TIMEOUTS of them (RFC 5321
        // §4.5.3.2.6: 10 minutes with the default), so a client trickling lines cannot hold a session for good.
        let data_limit = limits.idle_timeout.saturating_mul(DATA_TIMEOUTS);
        // A `timeout` too large for the clock (a configuration may give any number of seconds) means no deadline
        // in practice.
        let data_deadline = crate::model::instant_after(data_limit);
        loop {
            if std::time::Instant::now() > data_deadline {
                return Step::Close(Reply::new(
                    421,
                    "4.4.2",
                    format!(
                        "{host}: the message did not arrive within {} s ({DATA_TIMEOUTS} times this listener's timeout); closing",
                        data_limit.as_secs()
                    ),
                ));
            }
            // A line the client dot-stuffed may be one byte longer on the wire: read up to that, then hold every
            // line to the limit without its transparency dot (below).
            let line = match self.next(limits.max_text_line.saturating_add(1)).await {
                Err(_) | Ok(Event::Read(ReadLine::Eof)) => return Step::Gone,
                Ok(Event::Shutdown) => return Step::Close(shutting_down(&host)),
                Ok(Event::Idle) => {
                    return Step::Close(self.timed_out(&host, self.config.limits.idle_timeout));
                }
                Ok(Event::Read(ReadLine::TooLong { crlf })) => {
                    long_line = true;
                    after_crlf = crlf;
                    continue;
                }
                Ok(Event::Read(ReadLine::Line(line))) => line,
            };
            if ends_data(&line, after_crlf) {
                break;
            }
            after_crlf = line.ends_with(b"\r\n");
            let body = line.strip_prefix(b".").unwrap_or(&line);
            if body.len() > limits.max_text_line {
                long_line = true;
                continue;
            }
            if !after_crlf {
                bare_lf = true;
            }
            if message.len() as u64 + body.len() as u64 > limits.max_message_size {
                too_big = true;
            } else if !too_big {
                make_room(
                    &mut message,
                    body.len(),
                    envelope.size,
                    limits.max_message_size,
                );
                message.extend_from_slice(body);
            }
        }
        let max_line = limits.max_text_line;
        let reply = if too_big {
            Reply::new(
                552,
                "5.3.4",
                format!(
                    "message exceeds the size limit of {} bytes",
                    limits.max_message_size
                ),
            )
        } else if long_line {
            Reply::new(
                550,
                "5.6.0",
                format!(
                    "a message line is longer than {max_line} bytes including CRLF; send long payloads base64-encoded"
                ),
            )
        } else if bare_lf {
            Reply::new(
                550,
                "5.6.0",
                "the message contains a bare LF: lines must end with CRLF",
            )
        } else {
            self.deliver(&message, envelope).await
        };
        if reply.code == 250 {
            self.strikes = Strikes::default();
        }
        Step::Reply(reply)
    }

    /// Reads the message as MCMT, prepares one notification per push part per recipient and commits them all, or
    /// refuses the whole message.
    async fn deliver(&mut self, message: &[u8], envelope: Envelope) -> Reply {
        // Reading the message, and below building its notifications, is CPU work that grows with the message (up
        // to `max_notifications_per_message` notifications): the runtime moves its other tasks off this thread
        // meanwhile.
        let parsed = crate::queue::in_place(|| {
            #[cfg(test)]
            tests::parse_gate::pass(message);
            mcmt::parse_with(message, mcmt::EmptyValue::Refused)
        });
        let is_mcmt_container = match &parsed {
            Ok(Parsed::Mcmt(_)) => true,
            Ok(Parsed::NotMcmt) | Err(McmtError::NoHeaders) => false,
            Err(_) => true,
        };
        if !is_mcmt_container {
            return not_mcmt();
        }
        match self.reception {
            McmtReception::Allow => {}
            McmtReception::Reject => {
                return Reply::new(
                    550,
                    "5.7.1",
                    "MCMT messages are refused on this listener (mcmt_reception = reject)",
                );
            }
            // Not the sender's fault: herald can never pass mail through, so the listener is misconfigured (passthru
            // is the option's default). The sender retries while the operator sets `allow`.
            McmtReception::Passthru => {
                return Reply::new(
                    451,
                    "4.3.5",
                    "herald delivers push notifications only, and this listener passes MCMT messages through as ordinary mail (mcmt_reception = passthru); set mcmt_reception = \"allow\" to deliver push parts",
                );
            }
        }
        let message = match parsed {
            Ok(Parsed::Mcmt(m)) => m,
            Err(e @ McmtError::NoPushPart) => return Reply::new(554, "5.6.0", e.to_string()),
            Err(e @ McmtError::Part { .. }) => return Reply::new(550, "5.6.0", e.to_string()),
            Err(e) => {
                return Reply::new(550, "5.6.0", format!("malformed MCMT message: {e}"));
            }
            Ok(Parsed::NotMcmt) => return not_mcmt(),
        };
        let from = envelope.from.unwrap_or_default();
        let source = Source {
            ip: Some(self.peer.ip()),
            protocol: "esmtp",
            batch_id: self.intake.next_id(),
            conn_id: self.conn_id,
        };
        // Checked at RCPT; checked again because a reload may have removed a domain since.
        for rcpt in &envelope.recipients {
            let domain = rcpt.rsplit_once('@').map_or("", |(_, d)| d);
            self.intake.warm(None, domain).await;
            if let Err(e) = self.intake.check_domain(domain) {
                return unknown_domain(rcpt, &e);
            }
        }
        let count = message
            .push_parts
            .len()
            .saturating_mul(envelope.recipients.len());
        if count > self.config.limits.max_notifications {
            return Reply::new(
                552,
                "5.3.4",
                format!(
                    "the message would make {} ({} times {}); this listener's max_notifications_per_message is {}",
                    counted(count, "notification"),
                    counted(message.push_parts.len(), "push part"),
                    counted(envelope.recipients.len(), "recipient"),
                    self.config.limits.max_notifications
                ),
            );
        }
        // The room is taken before anything is built: sessions cannot all build on one look at the room left.
        let room = match self.intake.reserve(count) {
            Ok(room) => room,
            Err(NoRoom::Never { max, .. }) => {
                return Reply::new(
                    552,
                    "5.3.4",
                    format!(
                        "the message would make {} ({} times {}), more than herald ever holds in memory at once (max_resident_notifications = {max}); send it as smaller messages (this listener's max_notifications_per_message is {}, above max_resident_notifications)",
                        counted(count, "notification"),
                        counted(message.push_parts.len(), "push part"),
                        counted(envelope.recipients.len(), "recipient"),
                        self.config.limits.max_notifications
                    ),
                );
            }
            Err(NoRoom::Now(why)) => return temporary(&why),
        };
        let subs = crate::queue::in_place(|| message.submissions(&envelope.recipients, &from));
        // Parts may name a binding of their own (X-Binding): build those settings off the async threads too.
        let mut pairs: Vec<(Option<&str>, &str)> = subs
            .iter()
            .filter(|s| s.submission.binding.is_some())
            .map(|s| {
                (
                    s.submission.binding.as_deref(),
                    s.submission.domain.as_str(),
                )
            })
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        for (binding, domain) in pairs {
            self.intake.warm(binding, domain).await;
        }
        // Each notification's payload is read again as it is prepared: CPU work too.
        let intake = &self.intake;
        let batch = crate::queue::in_place(|| {
            let mut batch = Vec::with_capacity(subs.len());
            for s in subs {
                match intake.prepare(s.submission, &source) {
                    Ok(n) => batch.push(n),
                    Err(Refusal::Permanent(text)) => {
                        return Err(Reply::new(
                            550,
                            "5.6.0",
                            format!(
                                "part {}, recipient <{}>: {text}",
                                s.part,
                                echo(&s.recipient)
                            ),
                        ));
                    }
                    Err(Refusal::Temporary(why)) => return Err(temporary(&why)),
                }
            }
            Ok(batch)
        });
        let batch = match batch {
            Ok(batch) => batch,
            Err(reply) => return reply,
        };
        let count = batch.len();
        match self.intake.commit_within(batch, &source, room).await {
            Ok(()) => Reply::new(
                250,
                "2.0.0",
                format!(
                    "accepted {count} notification{} as batch {}",
                    if count == 1 { "" } else { "s" },
                    source.batch_id
                ),
            ),
            // The room taken above covers every notification of the message, so this is for a batch that grew
            // past it: refused as the reservation refuses one.
            Err(never @ NoRoom::Never { .. }) => Reply::new(
                552,
                "5.3.4",
                format!("{never}; send it as smaller messages"),
            ),
            Err(NoRoom::Now(why)) => temporary(&why),
        }
    }
}

/// The longest domain (RFC 5321 §4.5.3.1.2), in octets.
const MAX_DOMAIN: usize = 255;

/// How many idle timeouts (`timeout`) the whole message of a DATA command may take.
pub const DATA_TIMEOUTS: u32 = 10;

/// Whether a data line ends the data: a lone dot after a CRLF (RFC 5321 §4.1.1.4, §2.3.8: `<CRLF>.<CRLF>`). After
/// a bare LF (`x<LF>.<CRLF>`) the dot line is message content, which the bare LF refuses at the real end: ending
/// there would let a client, or a relay passing bare LFs, end a message early and have the rest read as commands
/// (SMTP smuggling).
fn ends_data(line: &[u8], after_crlf: bool) -> bool {
    after_crlf && line == b".\r\n"
}

/// The least a message buffer holds once it holds anything, in bytes.
const MIN_MESSAGE_BUFFER: usize = 4096;

/// Makes room in `message` for `more` bytes of data: its capacity doubles, as a vector's does, but never past the
/// size the client announced (`MAIL … SIZE=`, while the message is within it) nor past `max` (the listener's
/// `max_message_size`, which the caller keeps the message within), so a message of the largest size takes what it
/// needs and no more.
fn make_room(message: &mut Vec<u8>, more: usize, announced: Option<u64>, max: u64) {
    let needed = message.len().saturating_add(more);
    if needed <= message.capacity() {
        return;
    }
    let bound = match announced {
        Some(size) if needed as u64 <= size => size.min(max),
        _ => max,
    };
    let bound = usize::try_from(bound).unwrap_or(usize::MAX);
    let grown = message
        .capacity()
        .saturating_mul(2)
        .max(MIN_MESSAGE_BUFFER)
        .min(bound)
        .max(needed);
    message.reserve_exact(grown - message.len());
}

/// Tells a client over the listener's session limit to come back later, and closes.
pub(crate) async fn refuse_busy(
    stream: TcpStream,
    limits: super::SmtpLimits,
    busy: crate::inbound::doors::Busy,
) {
    let mut io = LineIo::new(stream, limits.idle_timeout);
    Reply::new(
        421,
        "4.7.0",
        format!(
            "{}: too many connections ({busy}); try again later",
            limits.hostname
        ),
    )
    .write_to(io.queue());
    let _ = io.close().await;
}

/// What tells a recipient from another: the domain in lower case; the local part as written (RFC 5321 §2.4: it
/// may be case-sensitive), unless it is hex digits, a device token that names one device in any case: then in
/// lower case too. Two addresses are one recipient when their keys are equal.
fn recipient_key(address: &str) -> String {
    #[cfg(test)]
    tests::KEYS_MADE.with(|n| n.set(n.get() + 1));
    let Some((local, domain)) = address.rsplit_once('@') else {
        return address.to_owned();
    };
    let mut key = String::with_capacity(address.len());
    if !local.is_empty() && local.bytes().all(|c| c.is_ascii_hexdigit()) {
        key.extend(local.chars().map(|c| c.to_ascii_lowercase()));
    } else {
        key.push_str(local);
    }
    key.push('@');
    key.push_str(&domain.to_ascii_lowercase());
    key
}

/// A temporary refusal: `452 4.3.1` when storage or memory is full (RFC 3463 "mail system full"), `451 4.3.5`
/// when herald's configuration is at fault ("system incorrectly configured"), else `451 4.3.0`; chosen by the
/// kind of refusal, never by its text.
fn temporary(why: &Unavailable) -> Reply {
    if why.is_full() {
        Reply::new(452, "4.3.1", why.to_string())
    } else if why.is_misconfigured() {
        Reply::new(451, "4.3.5", why.to_string())
    } else {
        Reply::new(451, "4.3.0", why.to_string())
    }
}

/// A recipient whose domain herald cannot deliver (RFC 3463 5.1.2, bad destination system); `451 4.3.5` when
/// the domain is configured but its credentials cannot be used now, which the operator fixes.
fn unknown_domain(recipient: &str, refusal: &DomainRefusal) -> Reply {
    let recipient = echo(recipient);
    if refusal.is_temporary() {
        Reply::new(
            451,
            "4.3.5",
            format!("<{recipient}>: {refusal} (herald's configuration must be fixed; retry later)"),
        )
    } else {
        Reply::new(550, "5.1.2", format!("<{recipient}>: {refusal}"))
    }
}

/// `n` and `noun`, plural unless `n` is 1: `1 push part`, `2 push parts`.
fn counted(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

fn not_mcmt() -> Reply {
    Reply::new(
        554,
        "5.6.0",
        "herald delivers push notifications only: this message is not MCMT (multipart/vnd.msys.mcmt with message/vnd.msys.apn parts)",
    )
}

fn shutting_down(host: &str) -> Reply {
    Reply::new(
        421,
        "4.3.0",
        format!("{host} is shutting down; try again later"),
    )
}

/// The reply to a session opened before a reload: `421` and the `reconfig_message` (status code and text, one
/// line) of the configuration the reload published.
fn reconfiguration(config: &watch::Receiver<Arc<SmtpConfig>>) -> Reply {
    Reply::new(421, "", config.borrow().limits.reconfig_message.clone())
}

/// The `421 4.4.2` of a line not received within `waited`: nothing came, or `unfinished` bytes of a line came
/// without its end.
fn idle(host: &str, waited: std::time::Duration, unfinished: usize) -> Reply {
    let text = match unfinished {
        0 => format!("{host} closing: no data from the client for {waited:?} (idle timeout)"),
        n => format!(
            "{host} closing: the client's line was not finished within {waited:?} ({n} bytes without an end of \
             line; each line must end within the idle timeout)"
        ),
    };
    Reply::new(421, "4.4.2", text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Holds the reading of a message that contains [`MARKER`](parse_gate::MARKER) until the test lets it go, or
    /// until a deadline passes.
    pub(super) mod parse_gate {
        use std::sync::{Condvar, Mutex, MutexGuard};
        use std::time::{Duration, Instant};

        /// A message containing this is held.
        pub const MARKER: &[u8] = b"parse-gate-holds-this-message";
        /// How long a held message waits for the test at most.
        const HOLD: Duration = Duration::from_secs(60);

        struct State {
            entered: bool,
            released: bool,
            expired: bool,
        }

        static STATE: Mutex<State> = Mutex::new(State {
            entered: false,
            released: false,
            expired: false,
        });
        static CHANGED: Condvar = Condvar::new();

        fn state() -> MutexGuard<'static, State> {
            STATE.lock().unwrap_or_else(|e| e.into_inner())
        }

        /// Called where the message is read: holds a marked one.
        pub fn pass(message: &[u8]) {
            if !message.windows(MARKER.len()).any(|w| w == MARKER) {
                return;
            }
            let mut s = state();
            s.entered = true;
            CHANGED.notify_all();
            let deadline = Instant::now() + HOLD;
            while !s.released {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    s.expired = true;
                    return;
                }
                s = CHANGED
                    .wait_timeout(s, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }

        /// Waits until a marked message is being read; `false` if none is within `wait`.
        pub fn wait_entered(wait: Duration) -> bool {
            let deadline = Instant::now() + wait;
            let mut s = state();
            while !s.entered {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return false;
                }
                s = CHANGED
                    .wait_timeout(s, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            true
        }

        /// Lets the held message go; `true` when it was still held (its deadline had not passed).
        pub fn release() -> bool {
            let mut s = state();
            s.released = true;
            CHANGED.notify_all();
            !s.expired
        }
    }

    /// Reads one reply; returns its last line.
    async fn reply(r: &mut tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>) -> String {
        use tokio::io::AsyncBufReadExt;
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(WAIT, r.read_line(&mut line)).await;
            assert!(matches!(read, Ok(Ok(n)) if n > 0), "no reply: {read:?}");
            if line.as_bytes().get(3) != Some(&b'-') {
                return line;
            }
        }
    }

    async fn cmd(
        c: &mut (
            tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
            tokio::net::tcp::OwnedWriteHalf,
        ),
        line: &str,
    ) -> String {
        use tokio::io::AsyncWriteExt;
        c.1.write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        reply(&mut c.0).await
    }

    async fn connect(
        port: u16,
    ) -> (
        tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
        tokio::net::tcp::OwnedWriteHalf,
    ) {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (r, w) = stream.into_split();
        let mut c = (tokio::io::BufReader::new(r), w);
        assert!(reply(&mut c.0).await.starts_with("220 "));
        c
    }

    const WAIT: std::time::Duration = std::time::Duration::from_secs(60);

    /// An intake for `apps.example` that keeps nothing durable, over an engine of its own.
    fn test_intake() -> Arc<Intake> {
        use crate::queue::{Engine, EngineLimits, MemoryInvalidTokens, StaticResolver};
        let resolver = Arc::new(StaticResolver::default().with(
            crate::outbound::settings::DeliverySettings::for_tests("apps.example", 1),
        ));
        let engine = Arc::new(Engine::new(
            resolver.clone(),
            crate::logs::Logs::default(),
            Arc::new(MemoryInvalidTokens::default()),
            EngineLimits::default(),
        ));
        Arc::new(Intake::new(
            resolver,
            Arc::new(crate::inbound::accept::NotDurable),
            engine,
            crate::queue::message::IdGenerator::new(1),
        ))
    }

    /// While one session reads a message (held there), a runtime of one worker thread still serves another
    /// session: the reading runs with the runtime's tasks moved off the thread.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn another_session_is_served_while_a_message_is_read() {
        let intake = test_intake();
        let conf = herald_conf::Config::parse_str(
            "t.conf",
            r#"esmtp_listener { listen "127.0.0.1:0" { mcmt_reception = "allow" } }"#,
        )
        .unwrap();
        let settings = conf.listeners().into_iter().next().unwrap();
        let listener = super::super::bind(&settings).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let config =
            Arc::new(SmtpConfig::new(settings, super::super::SmtpLimits::default()).unwrap());
        let (_config_tx, config_rx) = watch::channel(config);
        let stop = CancellationToken::new();
        let server = tokio::spawn(super::super::serve(
            listener,
            config_rx,
            intake,
            stop.clone(),
        ));

        let mut a = connect(port).await;
        assert!(cmd(&mut a, "EHLO a.example").await.starts_with("250 "));
        assert!(
            cmd(&mut a, "MAIL FROM:<app@backend.example>")
                .await
                .starts_with("250 ")
        );
        let rcpt = format!("RCPT TO:<{}@apps.example>", "ab".repeat(32));
        assert!(cmd(&mut a, &rcpt).await.starts_with("250 "));
        assert!(cmd(&mut a, "DATA").await.starts_with("354 "));
        let marker = String::from_utf8_lossy(parse_gate::MARKER);
        let message = format!(
            "MIME-Version: 1.0\r\nContent-Type: multipart/vnd.msys.mcmt; boundary=\"B\"\r\n\r\n\
             --B\r\nContent-Type: message/vnd.msys.apn\r\n\r\n{{\"aps\":{{\"alert\":\"{marker}\"}}}}\r\n--B--\r\n."
        );
        // The end of the data is sent; its reply waits while the message is held.
        {
            use tokio::io::AsyncWriteExt;
            a.1.write_all(format!("{message}\r\n").as_bytes())
                .await
                .unwrap();
        }
        assert!(parse_gate::wait_entered(WAIT), "the message was never read");

        // Another session, on the runtime's one worker thread.
        let mut b = connect(port).await;
        assert!(cmd(&mut b, "NOOP").await.starts_with("250 "));
        assert!(
            parse_gate::release(),
            "the other session was served only after the message being read let the thread go"
        );
        let accepted = reply(&mut a.0).await;
        assert!(
            accepted.starts_with("250 2.0.0 accepted 1 notification"),
            "{accepted}"
        );
        stop.cancel();
        let _ = tokio::time::timeout(WAIT, server).await;
    }

    /// After a reload, a session opened before it is answered `421` and the published configuration's
    /// `reconfig_message` (Momentum's `Reconfig_Message`, docs/momentum-compat.md#console-config); unset, Momentum's
    /// default, `4.3.2 Reconfiguration in progress`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_opened_before_a_reload_gets_the_reconfig_message() {
        let intake = test_intake();
        let smtp_config = |text: &str| {
            let conf = herald_conf::Config::parse_str("t.conf", text).unwrap();
            let settings = conf.listeners().into_iter().next().unwrap();
            Arc::new(SmtpConfig::from_config(&conf, settings).unwrap())
        };
        let first = smtp_config(r#"esmtp_listener { listen "127.0.0.1:0" { } }"#);
        let listener = super::super::bind(&first.listener).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (config_tx, config_rx) = watch::channel(first);
        let stop = CancellationToken::new();
        let server = tokio::spawn(super::super::serve(
            listener,
            config_rx,
            intake,
            stop.clone(),
        ));

        let mut a = connect(port).await;
        assert!(cmd(&mut a, "NOOP").await.starts_with("250 "));
        config_tx
            .send(smtp_config(
                "esmtp_listener {\n  reconfig_message = \"4.3.2 Reloading, come back\"\n  \
                 listen \"127.0.0.1:0\" { reconfig_message = \"4.7.0 Back in a moment\" }\n}\n",
            ))
            .unwrap();
        assert_eq!(cmd(&mut a, "NOOP").await, "421 4.7.0 Back in a moment\r\n");

        // Opened under that configuration, and reloaded to one without the option: the default.
        let mut b = connect(port).await;
        assert!(cmd(&mut b, "NOOP").await.starts_with("250 "));
        config_tx
            .send(smtp_config(
                r#"esmtp_listener { listen "127.0.0.1:0" { } }"#,
            ))
            .unwrap();
        assert_eq!(
            cmd(&mut b, "NOOP").await,
            "421 4.3.2 Reconfiguration in progress\r\n"
        );
        stop.cancel();
        let _ = tokio::time::timeout(WAIT, server).await;
    }

    thread_local! {
        /// How many recipient keys this thread has made.
        pub(super) static KEYS_MADE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    #[test]
    fn a_recipient_is_the_same_whatever_the_case_of_its_domain_and_of_a_hex_local_part() {
        let same = |a: &str, b: &str| recipient_key(a) == recipient_key(b);
        assert!(same("ab12@Apps.Example", "ab12@apps.example"));
        // A device token names one device in any case.
        assert!(same("AB12@apps.example", "ab12@apps.example"));
        assert!(!same("ab12@apps.example", "ab12@other.example"));
        assert!(!same("ab12@apps.example", "ab13@apps.example"));
        // Any other local part is compared as written.
        assert!(!same("Alice@apps.example", "alice@apps.example"));
        assert!(!same("AB1G@apps.example", "ab1g@apps.example"));
        // The domain is what follows the last `@`.
        assert!(same("\"a@b\"@Apps.Example", "\"a@b\"@apps.example"));
        assert!(!same("a@b@apps.example", "a@B@apps.example"));
        assert_eq!(recipient_key("AB12@Apps.Example"), "ab12@apps.example");
        assert_eq!(recipient_key("Alice@Apps.Example"), "Alice@apps.example");
    }

    /// An `RCPT` makes its recipient's key once, however many recipients came before it: the work of checking
    /// for a repeat does not grow with the transaction (1000 recipients of the longest token a command line
    /// holds would otherwise be a billion byte comparisons).
    #[tokio::test(flavor = "current_thread")]
    async fn a_repeated_recipient_is_found_without_comparing_it_to_each_earlier_one() {
        let intake = test_intake();
        let conf = herald_conf::Config::parse_str(
            "t.conf",
            r#"esmtp_listener { listen "127.0.0.1:0" { mcmt_reception = "allow" } }"#,
        )
        .unwrap();
        let settings = conf.listeners().into_iter().next().unwrap();
        let config =
            Arc::new(SmtpConfig::new(settings, super::super::SmtpLimits::default()).unwrap());
        let (_config_tx, config_rx) = watch::channel(config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let mut session = Session::new(stream, peer, config_rx, intake, CancellationToken::new());
        session.envelope.from = Some("app@backend.example".into());
        const N: usize = 1000;
        let address = |i: usize| format!("{i:0975x}@apps.example");
        let before = KEYS_MADE.with(|n| n.get());
        for i in 0..N {
            let reply = session.rcpt(address(i)).await;
            assert_eq!(reply.code, 250, "{:?}", reply.lines);
        }
        // Each given again, in upper case: the same recipients.
        for i in 0..N {
            let reply = session.rcpt(address(i).to_ascii_uppercase()).await;
            assert!(
                reply.lines.concat().contains("already given"),
                "{:?}",
                reply.lines
            );
        }
        assert_eq!(KEYS_MADE.with(|n| n.get()) - before, 2 * N);
        assert_eq!(session.envelope.recipients.len(), N);
        assert_eq!(session.envelope.recipients[7], address(7));
        drop(client);
    }

    /// A message buffer grows as data comes, to the size announced with `MAIL … SIZE=`, else to the size limit,
    /// never past them: a message of exactly the limit holds that much, not the next power of two.
    #[test]
    fn a_message_buffer_never_grows_past_the_announced_size_or_the_limit() {
        const MAX: u64 = 10 * 1024 * 1024;
        let line = [b'a'; 998];
        let fill = |announced: Option<u64>, total: usize| {
            let mut message = Vec::new();
            while message.len() < total {
                let n = line.len().min(total - message.len());
                make_room(&mut message, n, announced, MAX);
                message.extend_from_slice(&line[..n]);
            }
            message
        };
        let full = fill(None, MAX as usize);
        assert_eq!(full.capacity(), MAX as usize);
        let announced = fill(Some(MAX), MAX as usize);
        assert_eq!(announced.capacity(), MAX as usize);
        // Announced truly: just that. Announced too small: the limit still bounds it. Announced too large: the limit.
        assert_eq!(fill(Some(600_000), 600_000).capacity(), 600_000);
        assert!(fill(Some(1000), 600_000).capacity() <= MAX as usize);
        assert!(fill(Some(u64::MAX), 5000).capacity() <= 8192);
        // A small message does not take the limit.
        assert_eq!(fill(None, 100).capacity(), MIN_MESSAGE_BUFFER);
    }

    #[test]
    fn only_a_dot_line_after_crlf_ends_the_data() {
        // The first line of the data follows the CRLF of the DATA command.
        assert!(ends_data(b".\r\n", true));
        assert!(!ends_data(b".\r\n", false), "x<LF>.<CRLF> is content");
        assert!(!ends_data(b".\n", true), "<CRLF>.<LF> is content");
        assert!(!ends_data(b"..\r\n", true), "a stuffed dot is content");
        assert!(!ends_data(b". \r\n", true));
    }

    #[test]
    fn full_storage_or_memory_is_452_other_temporary_failures_451() {
        let full =
            herald_spool::SpoolError::from_io("appending", std::io::Error::from_raw_os_error(28));
        let r = temporary(&Unavailable::Spool(full));
        assert_eq!((r.code, r.status), (452, "4.3.1"));
        let r = temporary(&Unavailable::QueueFull {
            held: 10,
            max: 10,
            wanted: 1,
        });
        assert_eq!((r.code, r.status), (452, "4.3.1"));
        // The text is not searched: an I/O error that merely mentions space is not a full disk.
        let other = herald_spool::SpoolError::from_io(
            "appending",
            std::io::Error::other("no space for excuses"),
        );
        let r = temporary(&Unavailable::Spool(other));
        assert_eq!((r.code, r.status), (451, "4.3.0"));
        let r = temporary(&Unavailable::Queueing(
            crate::queue::SubmitError::ShuttingDown,
        ));
        assert_eq!((r.code, r.status), (451, "4.3.0"));
        let r = temporary(&Unavailable::Building {
            building: 10,
            max: 10,
            wanted: 1,
        });
        assert_eq!((r.code, r.status), (452, "4.3.1"));
        // One domain holding more than its share of memory: full for that domain, as the queue is for all.
        let r = temporary(&Unavailable::OverShare(crate::queue::OverShare {
            domain: "apps.example".into(),
            held: 6,
            wanted: 1,
            share: 5,
            max: 10,
            holding: 2,
        }));
        assert_eq!((r.code, r.status), (452, "4.3.1"));
        assert!(
            r.lines.concat().contains("domain apps.example holds 6"),
            "{:?}",
            r.lines
        );
        // Credentials that cannot be read: herald's configuration is at fault (RFC 3463 4.3.5).
        let r = temporary(&Unavailable::Configuration(DomainRefusal::NotPush {
            domain: "apps.example".into(),
            reason: crate::queue::ResolveError::Credentials("apn_key /k.p8: missing".into()),
        }));
        assert_eq!((r.code, r.status), (451, "4.3.5"));
    }
}
