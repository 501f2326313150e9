//! Console commands: parsing a command line into a [`Command`], and running it on a [`Server`] with output shaped
//! like Momentum's ec_console (docs/momentum-compat.md#console).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use herald_conf::{Config, DomainSettings, EvalError, ScopePath, Value, options};

use super::protocol::Reply;
use crate::control::ServerHandle;
use crate::queue::message::DEFAULT_BINDING;
use crate::queue::{MessageAction, QueueEntry};

/// The reason `fail domain` and `message fail` record, as Momentum words it.
pub const MANUAL_FAIL_REASON: &str = "554 Message manually purged.";
/// `showqueue`'s default `limit,offset`.
const SHOWQUEUE_DEFAULT: (usize, usize) = (100, 0);
/// `mailq`'s default row limit.
const MAILQ_DEFAULT_LIMIT: usize = 20;

/// One parsed console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Summary,
    SummaryReset,
    ConfigReload(Option<PathBuf>),
    ConfigEval(Vec<String>),
    ConfigShow(Vec<String>),
    /// `domain NAME`; `None` for `domain all`.
    Domain(Option<String>),
    Mailq {
        domains: Vec<String>,
        /// `--binding NAME`: only these bindings' queues (empty: every binding's).
        bindings: Vec<String>,
        limit: usize,
    },
    Showqueue {
        /// `binding NAME`: only that binding's queue of the domain; `None` (or `all`): every binding's.
        binding: Option<String>,
        domain: String,
        limit: usize,
        offset: usize,
    },
    /// `flush domain NAME`; `None` for `all`.
    FlushDomain(Option<String>),
    FailDomain {
        domain: String,
        quiet: bool,
    },
    MessageDetails(String),
    MessageRetry(String),
    MessageFail {
        id: String,
        quiet: bool,
    },
    /// `tokens invalid [DOMAIN] [SINCE]` (SINCE in Unix seconds).
    TokensInvalid {
        domain: Option<String>,
        since: Option<u64>,
    },
    /// `status ID`: one notification's or broadcast's state or final outcome.
    Status(String),
    /// `webhooks`: each domain's outcome webhook backlog and counters.
    Webhooks,
    /// `channels DOMAIN`: the Live Activity channels of a domain's app, asked of APNs.
    Channels(String),
    ReopenLogs,
    Version,
    Pid,
    Shutdown,
    Help,
    Quit,
    Auth(String),
}

/// Why a command line was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unknown command `{0}`; type `help` for the list of commands")]
    Unknown(String),
    #[error("usage: {0}")]
    Usage(&'static str),
    #[error("{what}: `{word}` is not a number")]
    NotANumber { what: &'static str, word: String },
}

const HELP: &str = "\
Commands:
  summary [reset]                       global counters; `reset` starts them again from zero
  config reload [PATH]                  read the configuration again (or PATH, read from then on) and put it in force if valid
  config eval [SCOPE [NAME]]... OPTION  an option's effective value, with fallback
  config show [SCOPE [NAME]]... [OPTION] the configuration as parsed, one scope of it, or one option set there
  domain NAME|all                       counters, queues and connections of a domain
  mailq [-d DOMAIN]... [-b BINDING]... [-l LIMIT]  queue sizes per binding and domain (default limit 20)
  showqueue [binding NAME|all] DOMAIN [LIMIT,OFFSET]  queued notifications (default 100,0)
  flush domain NAME|all                 make delayed notifications due now
  fail domain NAME [quiet]              fail every queued notification of a domain (554 Message manually purged.)
  message details [full] ID             one queued notification
  message retry ID                      make one queued notification due now
  message fail [quiet] ID               fail one queued notification
  tokens invalid [DOMAIN] [SINCE]       device tokens APNs reported invalid (SINCE: Unix seconds)
  status ID                             a notification's or broadcast's state or final outcome
  webhooks                              each domain's outcome webhook: backlog, delivered, dropped, failures
  channels DOMAIN                       the domain's Live Activity broadcast channels (asked of APNs)
  reopen logs                           reopen every log file (after logrotate)
  version                               herald's version
  pid                                   the server's process id
  shutdown                              stop the server (in-flight deliveries finish, the queue stays spooled)
  auth PASSWORD                         authenticate on a listener with control_password
  help                                  this list
  quit | exit                           close the console
";

/// `status ID`. On the JetStream spool, an id this node's book does not hold (unknown, or taken for pruned: any
/// node stores outcomes of another node's run) is asked of the other nodes, as the status routes do. A broadcast's
/// id (a UUID) is answered by this node alone, which holds the broadcasts it accepted and their outcomes.
async fn notification_status(server: &dyn ServerHandle, id: &str) -> Reply {
    use crate::outcomes::book::Found;
    let Some(book) = server.status_book() else {
        return Reply::err("this server keeps no notification status\n");
    };
    let Some(key) = crate::outcomes::parse_id(id) else {
        if let Some(value) = crate::outcomes::book::broadcast_id(id) {
            return broadcast_status(book, id, value);
        }
        return Reply::err(format!(
            "{id:?} is not a notification id (they look like 01/00-12345-0000002A) nor a broadcast id (a UUID, as \
             POST /api/v1/broadcast answered it)\n"
        ));
    };
    let found = match book.lookup(&key) {
        Ok(Found::Status(s)) => return Reply::ok(status_lines(&s)),
        Ok(found) => found,
        Err(e) => return Reply::err(format!("{id}: {e}\n")),
    };
    let held = match server.status_peers() {
        Some(peers) => crate::outcomes::peers::ask(peers, &[id.to_owned()]).await,
        None => Default::default(),
    };
    if let Found::InStream(local) = found {
        let s = crate::outcomes::peers::settle(*local, held.get(&key));
        return Reply::ok(status_lines(&s));
    }
    if let Some(s) = held.get(&key) {
        return Reply::ok(status_lines(s));
    }
    match found {
        Found::Expired => Reply::err(format!(
            "{id}: expired (finished longer than outcome_retention, {} s, ago)\n",
            book.retention().as_secs()
        )),
        _ => Reply::err(format!("{id}: unknown\n")),
    }
}

/// `status ID` for broadcast `id` (its value `value`).
fn broadcast_status(book: &crate::outcomes::book::StatusBook, id: &str, value: u128) -> Reply {
    match book.lookup_broadcast(value) {
        Ok(Some(s)) => Reply::ok(status_lines(&s)),
        Ok(None) if book.retention().is_zero() => Reply::err(format!(
            "{id}: unknown (status lookups are off: outcome_retention = 0)\n"
        )),
        Ok(None) => Reply::err(format!(
            "{id}: unknown (no broadcast with this id is held here, nor its outcome kept: never accepted by this \
             node, or finished longer than outcome_retention, {} s, ago)\n",
            book.retention().as_secs()
        )),
        Err(e) => Reply::err(format!("{id}: {e}\n")),
    }
}

/// A notification's or broadcast's state, a `name: value` line per field.
fn status_lines(status: &impl serde::Serialize) -> String {
    let mut out = String::new();
    if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(status) {
        for (k, v) in fields {
            let v = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            out.push_str(&format!("{:<16} {v}\n", format!("{k}:")));
        }
    }
    out
}

/// `webhooks`.
fn webhooks(server: &dyn ServerHandle) -> Reply {
    let Some(hooks) = server.webhooks() else {
        return Reply::err("this server runs no outcome webhooks\n");
    };
    let mut out = format!(
        "{:<32} {:>10} {:>12} {:>10} {:>10}  last error\n",
        "domain", "backlog", "delivered", "dropped", "failures"
    );
    for s in hooks.stats() {
        out.push_str(&format!(
            "{:<32} {:>10} {:>12} {:>10} {:>10}  {}\n",
            s.domain,
            s.backlog,
            s.delivered,
            s.dropped,
            s.failures,
            s.last_error.as_deref().unwrap_or("-")
        ));
    }
    Reply::ok(out)
}

/// `channels DOMAIN`: one channel id per line after a header naming the app, or why APNs could not be asked.
async fn channels(server: &dyn ServerHandle, domain: &str) -> Reply {
    let Some(manager) = server.channels() else {
        return Reply::err("this server does not manage channels\n");
    };
    match manager.list(domain).await {
        Ok((bundle, ids)) => {
            let mut out = format!(
                "{} channel(s) of {bundle} (domain {}):\n",
                ids.len(),
                domain.to_ascii_lowercase()
            );
            for id in ids {
                out.push_str(&format!("  {id}\n"));
            }
            Reply::ok(out)
        }
        Err(e) => Reply::err(format!("{e}\n")),
    }
}

/// Splits a command line into words; double quotes group words with spaces.
pub fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// The password of an `auth` line, taken as written after the command (a password may hold any character,
/// double quotes included, which word splitting would drop): one wrapped in double quotes loses them. `None` for
/// another command, or `auth` with nothing after it (a usage error).
fn auth_password(line: &str) -> Option<String> {
    let line = line.trim();
    let (command, rest) = line.split_once(char::is_whitespace)?;
    if !command.eq_ignore_ascii_case("auth") {
        return None;
    }
    let rest = rest.trim();
    let password = match rest.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) => inner,
        None => rest,
    };
    (!rest.is_empty()).then(|| password.to_owned())
}

fn number(what: &'static str, word: &str) -> Result<usize, ParseError> {
    word.parse().map_err(|_| ParseError::NotANumber {
        what,
        word: word.to_string(),
    })
}

/// Parses one command line. `Ok(None)` for an empty line.
pub fn parse(line: &str) -> Result<Option<Command>, ParseError> {
    if let Some(password) = auth_password(line) {
        return Ok(Some(Command::Auth(password)));
    }
    let w = words(line);
    let Some(first) = w.first() else {
        return Ok(None);
    };
    let first = first.to_ascii_lowercase();
    let rest = keywords(&first, &w[1..]);
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    let cmd = match (first.as_str(), rest.as_slice()) {
        ("summary", []) => Command::Summary,
        ("summary", ["reset"]) => Command::SummaryReset,
        ("summary", _) => return Err(ParseError::Usage("summary [reset]")),
        ("config", ["reload"]) => Command::ConfigReload(None),
        ("config", ["reload", path]) => Command::ConfigReload(Some(PathBuf::from(path))),
        ("config", ["eval", words @ ..]) if !words.is_empty() => {
            Command::ConfigEval(words.iter().map(|s| s.to_string()).collect())
        }
        ("config", ["show", words @ ..]) => {
            Command::ConfigShow(words.iter().map(|s| s.to_string()).collect())
        }
        ("config", _) => {
            return Err(ParseError::Usage(
                "config reload [PATH] | config eval [SCOPE [NAME]]... OPTION | config show [SCOPE [NAME]]... [OPTION]",
            ));
        }
        ("domain", ["all"]) => Command::Domain(None),
        ("domain", [name]) => Command::Domain(Some(name.to_string())),
        ("domain", _) => return Err(ParseError::Usage("domain NAME|all")),
        ("mailq", args) => parse_mailq(args)?,
        ("showqueue", args) => parse_showqueue(args)?,
        ("flush", ["domain", "all"]) => Command::FlushDomain(None),
        ("flush", ["domain", d]) => Command::FlushDomain(Some(d.to_string())),
        ("flush", _) => return Err(ParseError::Usage("flush domain NAME|all")),
        ("fail", ["domain", d]) => Command::FailDomain {
            domain: d.to_string(),
            quiet: false,
        },
        ("fail", ["domain", "quiet", d]) | ("fail", ["domain", d, "quiet"]) => {
            Command::FailDomain {
                domain: d.to_string(),
                quiet: true,
            }
        }
        ("fail", _) => return Err(ParseError::Usage("fail domain NAME [quiet]")),
        ("message", ["details", id]) | ("message", ["details", "full", id]) => {
            Command::MessageDetails(id.to_string())
        }
        ("message", ["retry", id]) => Command::MessageRetry(id.to_string()),
        ("message", ["fail", id]) => Command::MessageFail {
            id: id.to_string(),
            quiet: false,
        },
        ("message", ["fail", "quiet", id]) => Command::MessageFail {
            id: id.to_string(),
            quiet: true,
        },
        ("message", _) => {
            return Err(ParseError::Usage(
                "message details [full] ID | message retry ID | message fail [quiet] ID",
            ));
        }
        ("tokens", ["invalid", args @ ..]) if args.len() <= 2 => parse_tokens(args)?,
        ("tokens", _) => return Err(ParseError::Usage("tokens invalid [DOMAIN] [SINCE]")),
        ("status", [id]) => Command::Status(id.to_string()),
        ("status", _) => return Err(ParseError::Usage("status ID")),
        ("webhooks", []) => Command::Webhooks,
        ("webhooks", _) => return Err(ParseError::Usage("webhooks")),
        ("channels", [domain]) => Command::Channels(domain.to_string()),
        ("channels", _) => return Err(ParseError::Usage("channels DOMAIN")),
        ("reopen", ["logs"]) => Command::ReopenLogs,
        ("reopen", _) => return Err(ParseError::Usage("reopen logs")),
        ("version", []) => Command::Version,
        ("pid", []) => Command::Pid,
        ("shutdown", []) => Command::Shutdown,
        ("help", _) => Command::Help,
        ("quit" | "exit", []) => Command::Quit,
        ("auth", [password]) => Command::Auth(password.to_string()),
        ("auth", _) => return Err(ParseError::Usage("auth PASSWORD")),
        _ => return Err(ParseError::Unknown(line.trim().to_string())),
    };
    Ok(Some(cmd))
}

/// The words after command `first` with its keywords in lower case, in whatever case they were typed (`SUMMARY
/// RESET`, `flush domain ALL`): a word is taken for a keyword only where the command has one, and only when it is
/// one. Arguments (paths, ids, binding and scope names) stay as typed; domain names compare without case anyway.
fn keywords(first: &str, rest: &[String]) -> Vec<String> {
    let at = |i: usize, rest: &[String]| -> &'static [&'static str] {
        match (first, i) {
            ("summary", 0) => &["reset"],
            ("config", 0) => &["reload", "eval", "show"],
            ("domain", 0) => &["all"],
            ("showqueue", 0) => &["binding", "all"],
            ("flush", 0) | ("fail", 0) => &["domain"],
            ("flush", 1) => &["all"],
            ("fail", 1 | 2) => &["quiet"],
            ("message", 0) => &["details", "retry", "fail"],
            ("message", 1) if rest[0] == "details" => &["full"],
            ("message", 1) if rest[0] == "fail" => &["quiet"],
            ("tokens", 0) => &["invalid"],
            ("reopen", 0) => &["logs"],
            // Its options, wherever they stand (a domain or binding name never starts with `-`).
            ("mailq", _) => &["--domain", "-d", "--binding", "-b", "--limit", "-l"],
            _ => &[],
        }
    };
    let mut out: Vec<String> = Vec::with_capacity(rest.len());
    for (i, word) in rest.iter().enumerate() {
        let lower = word.to_ascii_lowercase();
        if at(i, &out).contains(&lower.as_str()) {
            out.push(lower);
        } else {
            out.push(word.clone());
        }
    }
    out
}

fn parse_mailq(args: &[&str]) -> Result<Command, ParseError> {
    const USAGE: &str = "mailq [--domain|-d DOMAIN]... [--binding|-b BINDING]... [--limit|-l N]";
    let mut domains = Vec::new();
    let mut bindings = Vec::new();
    let mut limit = MAILQ_DEFAULT_LIMIT;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--domain" | "-d" => {
                domains.push(it.next().ok_or(ParseError::Usage(USAGE))?.to_string())
            }
            "--binding" | "-b" => {
                bindings.push(it.next().ok_or(ParseError::Usage(USAGE))?.to_string())
            }
            "--limit" | "-l" => {
                limit = number("mailq --limit", it.next().ok_or(ParseError::Usage(USAGE))?)?
            }
            _ => return Err(ParseError::Usage(USAGE)),
        }
    }
    Ok(Command::Mailq {
        domains,
        bindings,
        limit,
    })
}

fn parse_tokens(args: &[&str]) -> Result<Command, ParseError> {
    let is_number = |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit());
    let (domain, since) = match args {
        [] => (None, None),
        [w] if is_number(w) => (None, Some(*w)),
        [d] => (Some(*d), None),
        [d, s] => (Some(*d), Some(*s)),
        _ => return Err(ParseError::Usage("tokens invalid [DOMAIN] [SINCE]")),
    };
    let since = since
        .map(|s| number("tokens invalid SINCE", s).map(|n| n as u64))
        .transpose()?;
    Ok(Command::TokensInvalid {
        domain: domain.map(str::to_string),
        since,
    })
}

fn parse_showqueue(args: &[&str]) -> Result<Command, ParseError> {
    const USAGE: &str = "showqueue [binding NAME|all] DOMAIN [LIMIT,OFFSET]";
    // Momentum's binding selector: one binding's queue of the domain (by its name or mailq's `group/binding`), or
    // every binding's (`binding all`, `all`, or no selector).
    let (binding, args) = match args {
        ["binding", name, rest @ ..] if name.eq_ignore_ascii_case("all") => (None, rest),
        ["binding", name, rest @ ..] => {
            // mailq prints a grouped binding as `group/binding`; the queue is the binding's.
            let name = name.rsplit_once('/').map_or(*name, |(_, b)| b);
            (Some(name.to_string()), rest)
        }
        ["all", rest @ ..] => (None, rest),
        _ => (None, args),
    };
    let (domain, window) = match args {
        [d] => (d, None),
        [d, w] => (d, Some(*w)),
        _ => return Err(ParseError::Usage(USAGE)),
    };
    let (limit, offset) = match window {
        None => SHOWQUEUE_DEFAULT,
        Some(w) => match w.split_once(',') {
            Some((l, o)) => (
                number("showqueue limit", l)?,
                number("showqueue offset", o)?,
            ),
            None => (number("showqueue limit", w)?, 0),
        },
    };
    Ok(Command::Showqueue {
        binding,
        domain: domain.to_string(),
        limit,
        offset,
    })
}

/// Runs `cmd` on `server`. `Quit` and `Auth` are the connection's business and answer here only generically.
pub async fn execute(server: &dyn ServerHandle, cmd: Command) -> Reply {
    match cmd {
        Command::Summary => Reply::ok(summary(server)),
        Command::SummaryReset => {
            server.reset_summary();
            Reply::ok("Statistics reset.\n")
        }
        Command::ConfigReload(path) => config_reload(server, path).await,
        Command::ConfigEval(words) => match config_eval(&server.config(), &words) {
            Ok(s) => Reply::ok(s),
            Err(e) => Reply::err(format!("{e}\n")),
        },
        Command::ConfigShow(words) => match config_show(&server.config(), &words) {
            Ok(s) => Reply::ok(s),
            Err(e) => Reply::err(format!("{e}\n")),
        },
        Command::Domain(name) => domain(server, name.as_deref()),
        Command::Mailq {
            domains,
            bindings,
            limit,
        } => Reply::ok(mailq(server, &domains, &bindings, limit)),
        Command::Showqueue {
            binding,
            domain,
            limit,
            offset,
        } => match server
            .engine()
            .showqueue_binding(binding.as_deref(), &domain, limit, offset)
            .await
        {
            Some(entries) => Reply::ok(showqueue(&entries)),
            None => match binding {
                // The domain has queues, just none from this binding: say which of the two is missing.
                Some(binding)
                    if server
                        .engine()
                        .showqueue_binding(None, &domain, 0, 0)
                        .await
                        .is_some() =>
                {
                    Reply::err(format!(
                        "Binding {binding} has no queue for domain {} (no traffic from it since start).\n",
                        domain.to_ascii_lowercase()
                    ))
                }
                _ => Reply::err(no_queue(&domain)),
            },
        },
        Command::FlushDomain(name) => flush(server, name.as_deref()),
        Command::FailDomain { domain, quiet: _ } => {
            // Named as herald keys its queues (and `domain` prints it), in lower case: found in any case.
            let domain = domain.to_ascii_lowercase();
            match server
                .engine()
                .fail_domain(&domain, MANUAL_FAIL_REASON)
                .await
            {
                Some(n) => Reply::ok(format!(
                    "Failed {n} message(s) of domain {domain}: {MANUAL_FAIL_REASON}\n"
                )),
                None => Reply::err(no_queue(&domain)),
            }
        }
        Command::MessageDetails(id) => message(server, &id, MessageAction::Details).await,
        Command::MessageRetry(id) => message(server, &id, MessageAction::Retry).await,
        Command::MessageFail { id, quiet: _ } => {
            message(
                server,
                &id,
                MessageAction::Fail(MANUAL_FAIL_REASON.to_string()),
            )
            .await
        }
        Command::TokensInvalid { domain, since } => {
            Reply::ok(invalid_tokens(server, domain.as_deref(), since))
        }
        Command::ReopenLogs => {
            // It waits for each log's writer thread (up to a second for one whose write blocks): off the async
            // threads, so that the console and the listeners keep answering meanwhile.
            let errors = crate::queue::in_place(|| server.reopen_logs());
            if errors.is_empty() {
                Reply::ok("Logs reopened.\n")
            } else {
                Reply::err(errors.iter().map(|e| format!("{e}\n")).collect::<String>())
            }
        }
        Command::Version => Reply::ok(format!("herald {}\n", env!("CARGO_PKG_VERSION"))),
        Command::Pid => Reply::ok(format!("{}\n", std::process::id())),
        Command::Status(id) => notification_status(server, &id).await,
        Command::Webhooks => webhooks(server),
        Command::Channels(domain) => channels(server, &domain).await,
        Command::Shutdown => {
            server.request_stop();
            Reply::ok("Shutdown requested.\n")
        }
        Command::Help => Reply::ok(HELP),
        Command::Quit => Reply::ok(""),
        Command::Auth(_) => Reply::ok("Already authenticated.\n"),
    }
}

/// The answer for a domain without a queue, naming it in lower case as herald keys its queues (it may be typed in
/// any case).
fn no_queue(domain: &str) -> String {
    let domain = domain.to_ascii_lowercase();
    format!("Domain {domain} has no queue (no traffic since start).\n")
}

fn row(out: &mut String, label: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{:<34}{value}", format!("{label}:"));
}

fn duration_words(d: Duration) -> String {
    let s = d.as_secs();
    let (days, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days} days, {h:02}:{m:02}:{sec:02}")
    } else {
        format!("{h:02}:{m:02}:{sec:02}")
    }
}

fn summary(server: &dyn ServerHandle) -> String {
    let s = server.summary();
    let mut out = String::new();
    row(&mut out, "Outbound Concurrency", s.outbound_connections);
    row(&mut out, "Active Domains", s.active_domains);
    row(&mut out, "Active Queue Size", s.active_queue);
    row(&mut out, "Delayed Queue Size", s.delayed_queue);
    row(
        &mut out,
        "Total Queue Size",
        s.active_queue + s.delayed_queue,
    );
    row(&mut out, "Successfully Delivered Messages", s.delivered);
    row(&mut out, "Failed Messages", s.failed);
    row(&mut out, "Transient Failures", s.transient_failures);
    row(&mut out, "Rejected Messages", s.rejected);
    row(&mut out, "Received Messages", s.received);
    row(
        &mut out,
        "Delivery Rate",
        format!("{:.2}/sec", s.delivery_rate),
    );
    row(
        &mut out,
        "Reception Rate",
        format!("{:.2}/sec", s.reception_rate),
    );
    let ago = crate::queue::message::unix_now().saturating_sub(s.since);
    row(
        &mut out,
        "Statistics Last Reset",
        format!(
            "{} ago ({})",
            duration_words(Duration::from_secs(ago)),
            s.since
        ),
    );
    row(&mut out, "Uptime", duration_words(s.uptime));
    let spool = server.spool().stats();
    row(&mut out, "Spool State", spool_state(server.spool()));
    row(&mut out, "Spool Pending Removals", spool.pending_removals);
    if let Some(j) = server.spool().stream_stats() {
        row(
            &mut out,
            "Stream Connection",
            if j.connected {
                "connected"
            } else {
                "not connected: refusing new notifications, reconnecting"
            },
        );
        row(&mut out, "Stream Messages", j.stream_messages);
        row(&mut out, "Stream Pending", j.consumer_pending);
        row(&mut out, "Stream Ack Pending", j.consumer_ack_pending);
        row(&mut out, "Stream Redelivered", j.consumer_redelivered);
        row(&mut out, "Stream Held By This Node", j.held);
    }
    out
}

/// The summary's `Spool State`: `writable`, or `refusing new notifications: …` with the cause (a full disk; else
/// what the spool says, such as a write its disk has not completed for some seconds, or a failed one).
fn spool_state(spool: &dyn herald_spool::Spool) -> String {
    let stats = spool.stats();
    if !stats.unwritable {
        return "writable".to_owned();
    }
    if stats.disk_full {
        return "refusing new notifications: disk full (held ones are still delivered)".to_owned();
    }
    match spool.write_error() {
        Some(cause) => {
            format!("refusing new notifications: {cause} (held ones are still delivered)")
        }
        None => {
            "refusing new notifications: the store refuses writes (held ones are still delivered)"
                .to_owned()
        }
    }
}

/// Boxed: reloading may start a control listener, whose connections run this very function.
fn config_reload(
    server: &dyn ServerHandle,
    path: Option<PathBuf>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Reply> + Send + '_>> {
    Box::pin(async move { config_reload_inner(server, path).await })
}

/// The answer: `OK` once the new configuration is in force, naming on lines of their own the domains it cannot
/// deliver, with why (a warning: the configuration is valid, and a domain's credentials may be put in place
/// after it); `ERR` (with the same first line: the configuration is in force all the same) when a listener could
/// not take its new settings.
async fn config_reload_inner(server: &dyn ServerHandle, path: Option<PathBuf>) -> Reply {
    match server.reload(path.as_deref()).await {
        Ok(report) => {
            let mut out = format!(
                "Configuration reloaded from {} (generation {}).\n",
                report.path.display(),
                server.generation()
            );
            if path.is_some() {
                let _ = writeln!(
                    out,
                    "Later reloads (config reload without a path, SIGHUP, the dashboard) read {}.",
                    report.path.display()
                );
            }
            let _ = writeln!(out, "Domains reconfigured: {}", report.domains);
            for (d, why) in &report.unroutable {
                let _ = writeln!(out, "Domain {d} cannot be delivered: {why}");
            }
            for (what, list) in [
                ("started", &report.listeners_started),
                ("stopped", &report.listeners_stopped),
                ("restarted", &report.listeners_restarted),
                ("certificate reloaded", &report.certificates_reloaded),
            ] {
                for l in list {
                    let _ = writeln!(out, "Listener {what}: {l}");
                }
            }
            for e in &report.listener_errors {
                let _ = writeln!(out, "Listener error: {e}");
            }
            for w in &report.warnings {
                let _ = writeln!(out, "{w}");
            }
            if report.listener_errors.is_empty() {
                Reply::ok(out)
            } else {
                Reply::err(out)
            }
        }
        Err(e) => {
            // The console's answer in the log at warn; the whole of it, with the text it quotes from the file (which
            // a console user may have pointed at a key file), only at debug.
            let reply = refused_reload(&e);
            tracing::warn!("console: config reload refused: {}", reply.trim_end());
            tracing::debug!("console: config reload refused: {e}");
            Reply::err(reply)
        }
    }
}

/// The console's answer to a reload refused for errors in the file: the usual first line (`PATH: the new
/// configuration has errors; the running one stays in force:`), then each error's `FILE:LINE:COL: error` and what
/// kind of error it is, without any text quoted from the file; the full messages go to herald's log at debug level (this answer at warn).
///
/// The parser quotes the text at each error (up to 60 characters of it, for up to 200 errors), so a reload of a
/// file that is no configuration at all (`config reload /etc/herald/AuthKey_X.p8`, a TLS key) would show a console
/// user most of a private key, when the console otherwise keeps secrets from its users (`config show` and
/// `config eval` mask them). This holds for a reload without a path too: the file it reads is the one herald
/// started with, or one an earlier `config reload PATH` from the console put in force, and nothing here tells the
/// two apart. The operator who wrote the file reads every message in the log, or with `herald check --config FILE`.
pub fn refused_reload(e: &crate::status::ReloadError) -> String {
    let crate::status::ReloadError::Invalid { path, diagnostics } = e else {
        // (A reload cut short by a stop: no text of the file in it.)
        return format!("{e}\n");
    };
    let mut out = format!(
        "{}: the new configuration has errors; the running one stays in force:\n",
        path.display()
    );
    // Each diagnostic is a line `FILE:LINE:COL: SEVERITY: MESSAGE`; a line that is not (a message of several
    // lines, as a regex error's) is left out whole.
    let mut shown = 0;
    for line in diagnostics.lines() {
        let Some((at, severity, message)) = [": error: ", ": warning: "]
            .iter()
            .filter_map(|sep| line.find(sep).map(|i| (i, *sep)))
            .min()
            .map(|(i, sep)| {
                (
                    &line[..i],
                    sep.trim_matches([':', ' ']),
                    &line[i + sep.len()..],
                )
            })
        else {
            continue;
        };
        shown += 1;
        match error_kind(message) {
            ("", _) => {
                let _ = writeln!(out, "{at}: {severity}");
            }
            (kind, whole) => {
                let _ = writeln!(
                    out,
                    "{at}: {severity}: {kind}{}",
                    if whole { "" } else { " …" }
                );
            }
        }
    }
    if shown == 0 {
        out.push_str("(the configuration could not be read)\n");
    }
    out.push_str(
        "The messages, which quote the file, are in herald's log at debug level (or run herald check --config FILE).\n",
    );
    out
}

/// What kind of error a configuration message names, without anything it quotes from the file: herald-conf
/// quotes the file's text between backquotes (an option name, a value, the word found where another was
/// expected), and that text may itself hold backquotes, so a message with one is cut before it, at its first
/// words up to the first character that is not a letter, an underscore or a blank (`unknown option`, `invalid
/// value`, `expected`, `control_password is empty`; empty when the message opens with a quotation). Underscores are
/// kept for herald's option names; what a file's text could show through them it could show through letters. A message without a backquote quotes nothing of
/// the file (what herald says of it: "cannot read the file: not a regular file (a FIFO)") and stays whole. Also
/// whether the message is whole.
fn error_kind(message: &str) -> (&str, bool) {
    if !message.contains('`') {
        return (message.trim_end(), true);
    }
    match message.find(|c: char| !(c.is_ascii_alphabetic() || c == ' ' || c == '_')) {
        Some(end) => (message[..end].trim_end(), false),
        None => (message.trim_end(), true),
    }
}

/// `config eval`: `name = value` with fallback, as `herald config eval` prints it; secret values masked.
pub fn config_eval(config: &Config, words: &[String]) -> Result<String, EvalError> {
    let (path, option) = ScopePath::parse_words(words)?;
    let value = config.eval(&path, &option)?;
    let name = options::lookup(&option)
        .map(|id| id.def().name)
        .unwrap_or("?");
    Ok(match value {
        Value::Unset => {
            format!("Option '{name}' is not set in scope '{path}' and has no default.\n")
        }
        v => format!(
            "{name} = {}\n",
            herald_conf::secrets::render_option_value(name, &v, true)
        ),
    })
}

/// `config show`: a scope as configured, or one option as set in that scope; secret values masked.
pub fn config_show(config: &Config, words: &[String]) -> Result<String, EvalError> {
    match ScopePath::parse_scope_words(words) {
        Ok(path) => config.show(&path),
        Err(scope_err) => {
            let Some((option, scopes)) = words.split_last() else {
                return Err(scope_err);
            };
            let Some(id) = options::lookup(option) else {
                return Err(scope_err);
            };
            let path = ScopePath::parse_scope_words(scopes)?;
            let name = id.def().name;
            Ok(match config.get(&path, option)? {
                Some(v) => format!(
                    "{name} = {}\n",
                    herald_conf::secrets::render_option_value(name, &v, true)
                ),
                None => format!("Option '{name}' is not set in scope '{path}'.\n"),
            })
        }
    }
}

fn domain(server: &dyn ServerHandle, name: Option<&str>) -> Reply {
    let chosen: Vec<_> = server
        .engine()
        .binding_stats_all()
        .into_iter()
        .filter(|(_, d, _)| name.is_none_or(|n| d.eq_ignore_ascii_case(n)))
        .collect();
    if chosen.is_empty() {
        return match name {
            Some(n) => Reply::err(no_queue(n)),
            None => Reply::ok("No domains have seen traffic.\n"),
        };
    }
    let config = server.config();
    let mut out = String::new();
    let mut previous: Option<Arc<str>> = None;
    // One block per binding the domain is delivered from (`default` first): its routes, then its counters.
    for (b, d, s) in chosen {
        if previous.as_deref() != Some(&*d) {
            let _ = writeln!(out, "Domain: {d}");
            previous = Some(d.clone());
        }
        let settings = binding_settings(&config, &b, &d);
        for r in &settings.routes {
            let _ = writeln!(out, "  Route: {r}");
        }
        let _ = writeln!(out, "  Binding: {b}");
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let loadu = |a: &std::sync::atomic::AtomicUsize| a.load(Ordering::Relaxed);
        for (label, v) in [
            ("Receptions", load(&s.received)),
            ("Deliveries", load(&s.delivered)),
            ("Failures (5xx)", load(&s.permanent)),
            ("Trans. Failures (4xx)", load(&s.transient)),
            ("Active Queue", loadu(&s.active) as u64),
            ("Delayed Queue", loadu(&s.delayed) as u64),
            ("Active Connections", loadu(&s.connections) as u64),
            ("In Flight", loadu(&s.in_flight) as u64),
        ] {
            let _ = writeln!(out, "    {:<24}{v}", format!("{label}:"));
        }
        let mut reasons: Vec<_> = s.failures().into_iter().collect();
        reasons.sort();
        for ((kind, reason), n) in reasons {
            let _ = writeln!(out, "    Failure {kind} {reason}: {n}");
        }
    }
    Reply::ok(out)
}

/// The delivery settings of `domain` from `binding` (looked up in the group that declares it).
fn binding_settings(config: &Config, binding: &str, domain: &str) -> Arc<DomainSettings> {
    if binding == DEFAULT_BINDING {
        config.domain_settings(None, None, domain)
    } else {
        config.domain_settings(None, Some(binding), domain)
    }
}

/// `mailq`'s Group/Binding: `group/binding` for a binding declared in a `binding_group`, else the binding's name.
fn group_binding(config: &Config, binding: &str, domain: &str) -> String {
    match &binding_settings(config, binding, domain).binding_group {
        Some(group) => format!("{group}/{binding}"),
        None => binding.to_owned(),
    }
}

fn mailq(
    server: &dyn ServerHandle,
    domains: &[String],
    bindings: &[String],
    limit: usize,
) -> String {
    let mut out = format!(
        "{:<24} {:<32} {:>8} {:>8}\n",
        "Group/Binding", "Domain", "AQ", "DQ"
    );
    let config = server.config();
    // One row per (binding, domain) queue; a binding is selected by its name or by its `group/binding`.
    let rows = server
        .engine()
        .binding_stats_all()
        .into_iter()
        .filter(|(_, d, _)| domains.is_empty() || domains.iter().any(|w| w.eq_ignore_ascii_case(d)))
        .filter(|(_, _, s)| {
            !domains.is_empty()
                || s.active.load(Ordering::Relaxed) + s.delayed.load(Ordering::Relaxed) > 0
        })
        .map(|(b, d, s)| (group_binding(&config, &b, &d), b, d, s))
        .filter(|(label, b, _, _)| {
            bindings.is_empty() || bindings.iter().any(|w| w == &**b || w == label)
        })
        .take(limit);
    for (label, _, d, s) in rows {
        let _ = writeln!(
            out,
            "{:<24} {:<32} {:>8} {:>8}",
            label,
            d,
            s.active.load(Ordering::Relaxed),
            s.delayed.load(Ordering::Relaxed)
        );
    }
    out
}

fn showqueue(entries: &[QueueEntry]) -> String {
    let mut out = String::new();
    for e in entries {
        let _ = writeln!(
            out,
            "[{}/{}] {} Created: {}",
            e.queue, e.binding, e.id, e.received_at
        );
        let _ = writeln!(out, "  From: <{}> To: <{}>", e.sender, e.recipient);
    }
    out
}

fn flush(server: &dyn ServerHandle, name: Option<&str>) -> Reply {
    match name.map(str::to_ascii_lowercase).as_deref() {
        Some(d) => {
            if server.engine().flush(d) {
                Reply::ok(format!("Domain {d} flushed.\n"))
            } else {
                Reply::err(no_queue(d))
            }
        }
        None => {
            let n = server
                .engine()
                .all_stats()
                .iter()
                .filter(|(d, _)| server.engine().flush(d))
                .count();
            Reply::ok(format!("{n} domain(s) flushed.\n"))
        }
    }
}

async fn message(server: &dyn ServerHandle, id: &str, action: MessageAction) -> Reply {
    let verb = match &action {
        MessageAction::Details => None,
        MessageAction::Retry => Some("scheduled for immediate retry"),
        MessageAction::Fail(_) => Some("failed: 554 Message manually purged."),
    };
    let Some(e) = server.engine().message(id, action).await else {
        return Reply::err(format!("Message {id} is not in the queue.\n"));
    };
    if let Some(verb) = verb {
        return Reply::ok(format!("Message {} {verb}\n", e.id));
    }
    let mut out = String::new();
    let _ = writeln!(out, "Message ID: {}", e.id);
    let _ = writeln!(out, "Domain: {}", e.domain);
    let _ = writeln!(out, "Queue: {}/{}", e.queue, e.binding);
    let _ = writeln!(out, "Created: {}", e.received_at);
    let _ = writeln!(out, "From: <{}>", e.sender);
    let _ = writeln!(out, "To: <{}>", redacted_recipient(&e.recipient, &e.token));
    let _ = writeln!(out, "Device Token: {}", e.token);
    let _ = writeln!(out, "Retries: {}", e.retries);
    let _ = writeln!(out, "Payload Size: {} bytes", e.payload_len);
    if let Some(due) = e.due_in_secs {
        let _ = writeln!(out, "Next Attempt: in {due} s");
    }
    Reply::ok(out)
}

/// The recipient as `message details` shows it: one whose local part is the device token in hex (the recipient
/// herald builds from the token and the domain, or one given so, in either case) has it redacted as the token is
/// (`ab12cd34…@domain`); any other is shown whole. `token` is the token redacted: its first hex digits, then `…`.
fn redacted_recipient<'a>(recipient: &'a str, token: &str) -> std::borrow::Cow<'a, str> {
    let shown = token.trim_end_matches('…');
    if let Some((local, domain)) = recipient.rsplit_once('@')
        && local.len() >= 2 * herald_apns::token_hex::TOKEN_MIN_LEN
        && local.len() % 2 == 0
        && local.bytes().all(|b| b.is_ascii_hexdigit())
        && !shown.is_empty()
        && local
            .get(..shown.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(shown))
    {
        return std::borrow::Cow::Owned(format!("{token}@{domain}"));
    }
    std::borrow::Cow::Borrowed(recipient)
}

/// `tokens invalid [DOMAIN] [SINCE]`: one line per token, `TIMESTAMP_MS DOMAIN TOKEN REASON SOURCE` (APNs'
/// time), in the order herald learnt them, then a total. SINCE is Unix seconds, compared with when herald learnt
/// each token.
fn invalid_tokens(server: &dyn ServerHandle, domain: Option<&str>, since: Option<u64>) -> String {
    let since_ms = since.unwrap_or(0).saturating_mul(1000);
    let list = server
        .invalid_tokens()
        .list(domain.map(str::to_ascii_lowercase).as_deref(), since_ms);
    let mut out = String::new();
    for t in &list {
        let _ = writeln!(
            out,
            "{} {} {} {} {}",
            t.timestamp_ms, t.domain, t.token, t.reason, t.source
        );
    }
    let _ = writeln!(out, "Total: {} invalid token(s)", list.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The summary's `Spool State` names a write the spool's disk has not completed, and says `writable` again
    /// once it returns.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_spool_state_names_a_write_the_disk_does_not_complete() {
        use crate::ops::tests::{sample, spool_on_stuck_disk, wait_for};
        use herald_spool::Spool as _;
        let (spool, disk) = spool_on_stuck_disk();
        assert_eq!(spool_state(&*spool), "writable");
        let stuck = tokio::spawn(spool.append(vec![sample(spool.next_key())]));
        wait_for("the spool state to change", || {
            spool_state(&*spool) != "writable"
        })
        .await;
        let state = spool_state(&*spool);
        assert!(
            state.starts_with("refusing new notifications: ")
                && state.contains("the spool's disk has not completed a write for ")
                && state.contains("(a commit is stuck in write/fsync)")
                && state.ends_with("(held ones are still delivered)"),
            "{state}"
        );
        disk.answer();
        stuck.await.unwrap().unwrap();
        wait_for("the spool state to be writable again", || {
            spool_state(&*spool) == "writable"
        })
        .await;
    }

    #[test]
    fn a_password_is_taken_as_written() {
        let auth = |line: &str| match parse(line) {
            Ok(Some(Command::Auth(p))) => p,
            other => panic!("{line:?}: {other:?}"),
        };
        assert_eq!(auth("auth s3cret"), "s3cret");
        assert_eq!(auth(r#"auth a"b"#), r#"a"b"#);
        assert_eq!(auth(r#"AUTH "two words""#), "two words");
        assert_eq!(auth("auth two words"), "two words");
        assert_eq!(auth(r#"auth """#), "");
        assert!(matches!(parse("auth"), Err(ParseError::Usage(_))));
        assert!(matches!(parse("auth   "), Err(ParseError::Usage(_))));
    }

    #[test]
    fn words_split_on_blanks_and_keep_quoted_groups() {
        assert_eq!(
            words(r#"  config eval  domain "a b" max_retries "#),
            vec!["config", "eval", "domain", "a b", "max_retries"]
        );
        assert_eq!(words(r#"x """#), vec!["x", ""]);
        assert!(words("   ").is_empty());
        // As Momentum's console reads a line (and unlike a POSIX shell, `shlex`): single quotes and backslashes
        // are ordinary characters, and a quote left open runs to the end of the line.
        assert_eq!(
            words(r#"config reload /etc/it's\here"#),
            vec!["config", "reload", r#"/etc/it's\here"#]
        );
        assert_eq!(words(r#"status "a b"#), vec!["status", "a b"]);
    }

    #[test]
    fn momentum_command_forms_parse() {
        let p = |s: &str| parse(s).unwrap().unwrap();
        assert_eq!(p("summary"), Command::Summary);
        assert_eq!(p("SUMMARY reset"), Command::SummaryReset);
        assert_eq!(p("config reload"), Command::ConfigReload(None));
        assert_eq!(
            p("config reload /etc/h.conf"),
            Command::ConfigReload(Some("/etc/h.conf".into()))
        );
        assert_eq!(
            p("config eval domain x.example max_retries"),
            Command::ConfigEval(vec![
                "domain".into(),
                "x.example".into(),
                "max_retries".into()
            ])
        );
        assert_eq!(p("config show"), Command::ConfigShow(vec![]));
        assert_eq!(p("domain all"), Command::Domain(None));
        assert_eq!(
            p("domain a.example"),
            Command::Domain(Some("a.example".into()))
        );
        assert_eq!(
            p("mailq -d a.example --limit 5"),
            Command::Mailq {
                domains: vec!["a.example".into()],
                bindings: vec![],
                limit: 5
            }
        );
        assert_eq!(
            p("mailq --binding b -b c"),
            Command::Mailq {
                domains: vec![],
                bindings: vec!["b".into(), "c".into()],
                limit: MAILQ_DEFAULT_LIMIT
            }
        );
        assert_eq!(
            p("showqueue a.example"),
            Command::Showqueue {
                binding: None,
                domain: "a.example".into(),
                limit: 100,
                offset: 0
            }
        );
        assert_eq!(
            p("showqueue binding default a.example 10,20"),
            Command::Showqueue {
                binding: Some("default".into()),
                domain: "a.example".into(),
                limit: 10,
                offset: 20
            }
        );
        assert_eq!(p("flush domain all"), Command::FlushDomain(None));
        assert_eq!(
            p("fail domain a.example quiet"),
            Command::FailDomain {
                domain: "a.example".into(),
                quiet: true
            }
        );
        assert_eq!(
            p("message details full 00/00-1-2"),
            Command::MessageDetails("00/00-1-2".into())
        );
        assert_eq!(
            p("message fail quiet X"),
            Command::MessageFail {
                id: "X".into(),
                quiet: true
            }
        );
        assert_eq!(
            p("tokens invalid 1700000000"),
            Command::TokensInvalid {
                domain: None,
                since: Some(1_700_000_000)
            }
        );
        assert_eq!(
            p("tokens invalid a.example 5"),
            Command::TokensInvalid {
                domain: Some("a.example".into()),
                since: Some(5)
            }
        );
        assert_eq!(p("reopen logs"), Command::ReopenLogs);
        assert_eq!(
            p("channels apps.example"),
            Command::Channels("apps.example".into())
        );
        assert!(parse("channels").is_err());
        assert_eq!(p("exit"), Command::Quit);
        assert_eq!(parse("  ").unwrap(), None);
    }

    /// Keywords after the command's name are taken in any case, as the name is; arguments stay as typed.
    #[test]
    fn keywords_are_taken_in_any_case_and_arguments_as_typed() {
        let p = |s: &str| parse(s).unwrap_or_else(|e| panic!("{s}: {e}")).unwrap();
        assert_eq!(p("SUMMARY RESET"), Command::SummaryReset);
        assert_eq!(p("summary Reset"), Command::SummaryReset);
        assert_eq!(p("flush domain ALL"), Command::FlushDomain(None));
        assert_eq!(
            p("FLUSH DOMAIN Push.Example.com"),
            Command::FlushDomain(Some("Push.Example.com".into()))
        );
        assert_eq!(
            p("fail DOMAIN a.example QUIET"),
            Command::FailDomain {
                domain: "a.example".into(),
                quiet: true
            }
        );
        assert_eq!(p("Domain ALL"), Command::Domain(None));
        assert_eq!(
            p("config RELOAD /etc/Herald/Reset.conf"),
            Command::ConfigReload(Some("/etc/Herald/Reset.conf".into()))
        );
        // A path that reads like a keyword is still a path, as typed.
        assert_eq!(
            p("config reload Reset"),
            Command::ConfigReload(Some("Reset".into()))
        );
        assert_eq!(
            p("config EVAL binding Full max_retries"),
            Command::ConfigEval(vec!["binding".into(), "Full".into(), "max_retries".into()])
        );
        assert_eq!(p("CONFIG SHOW"), Command::ConfigShow(vec![]));
        assert_eq!(
            p("message DETAILS FULL 01/00-1-2A"),
            Command::MessageDetails("01/00-1-2A".into())
        );
        assert_eq!(
            p("message Fail Quiet 01/00-1-2A"),
            Command::MessageFail {
                id: "01/00-1-2A".into(),
                quiet: true
            }
        );
        assert_eq!(
            p("message retry FULL"),
            Command::MessageRetry("FULL".into()),
            "`full` is a keyword of `details` only"
        );
        assert_eq!(
            p("showqueue BINDING Blue A.example 5"),
            Command::Showqueue {
                binding: Some("Blue".into()),
                domain: "A.example".into(),
                limit: 5,
                offset: 0
            }
        );
        assert_eq!(
            p("mailq -D A.example --LIMIT 3 -B Blue"),
            Command::Mailq {
                domains: vec!["A.example".into()],
                bindings: vec!["Blue".into()],
                limit: 3
            }
        );
        assert_eq!(
            p("TOKENS INVALID A.example"),
            Command::TokensInvalid {
                domain: Some("A.example".into()),
                since: None
            }
        );
        assert_eq!(p("Reopen LOGS"), Command::ReopenLogs);
    }

    /// A refused reload answers with where each error is and its kind, never with text quoted from the file.
    #[test]
    fn a_refused_reload_quotes_nothing_of_the_file() {
        let secret = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgSeCrEt";
        let text = format!(
            "max_retries = 3\n{secret}\nx`{secret}` = 1\ndomain \"/(?P<{secret}/\" {{ }}\nmax_retries = \"{secret}\"\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("AuthKey_X.p8");
        std::fs::write(&path, &text).unwrap();
        let diagnostics = Config::load(&path).unwrap_err().to_string();
        assert!(
            diagnostics.contains(&secret[..40]),
            "the parser quotes it: {diagnostics}"
        );
        let e = crate::status::ReloadError::Invalid {
            path: path.clone(),
            diagnostics,
        };
        let answer = refused_reload(&e);
        let first = format!(
            "{}: the new configuration has errors; the running one stays in force:\n",
            path.display()
        );
        assert!(answer.starts_with(&first), "{answer}");
        // The fewest characters of it that would still say something.
        for i in 0..secret.len() - 8 {
            assert!(
                !answer.contains(&secret[i..i + 8]),
                "{:?} shown: {answer}",
                &secret[i..i + 8]
            );
        }
        let p = path.display();
        for want in [
            format!("{p}:2:1: error"),
            format!("{p}:5:15: error: invalid value …"),
            "herald's log".to_owned(),
        ] {
            assert!(answer.contains(&want), "{want:?} not in {answer}");
        }
        // Other errors carry no text of a file: as they are.
        let e = crate::status::ReloadError::Interrupted {
            path: path.clone(),
            why: "stopping".into(),
        };
        assert_eq!(refused_reload(&e), format!("{e}\n"));
        assert_eq!(error_kind("unknown option `x`"), ("unknown option", false));
        // An option name herald's message opens with is shown whole.
        assert_eq!(
            error_kind("control_password is empty: `auth \"\"` would log in; set a password"),
            ("control_password is empty", false)
        );
        assert_eq!(error_kind("`x` has no value"), ("", false));
        assert_eq!(
            error_kind("cannot read the file: not a regular file (a FIFO)"),
            ("cannot read the file: not a regular file (a FIFO)", true)
        );
        assert_eq!(error_kind("unterminated list"), ("unterminated list", true));
    }

    #[test]
    fn a_recipient_made_of_the_token_is_redacted_as_the_token_is() {
        let hex = "c0ffee01".to_owned() + &"ab".repeat(28);
        let token = herald_apns::token_hex::DeviceToken::from_hex(&hex).unwrap();
        let shown = token.redacted().to_string();
        assert_eq!(
            redacted_recipient(&format!("{hex}@push.example"), &shown),
            format!("{shown}@push.example")
        );
        assert_eq!(
            redacted_recipient(
                &format!("{}@Push.Example", hex.to_ascii_uppercase()),
                &shown
            ),
            format!("{shown}@Push.Example")
        );
        for other in ["user@push.example", "c0ffee01@push.example", "no-at-sign"] {
            assert_eq!(redacted_recipient(other, &shown), other);
        }
        let other_hex = "0123456789".repeat(7) + "01";
        let r = format!("{other_hex}@push.example");
        assert_eq!(redacted_recipient(&r, &shown), r, "another token's hex");
    }

    #[test]
    fn mistakes_name_the_usage_or_point_to_help() {
        let e = parse("frobnicate now").unwrap_err();
        assert!(e.to_string().contains("frobnicate now"), "{e}");
        assert!(e.to_string().contains("help"), "{e}");
        assert_eq!(
            parse("showqueue a.example ten,0").unwrap_err(),
            ParseError::NotANumber {
                what: "showqueue limit",
                word: "ten".into()
            }
        );
        assert!(
            parse("flush")
                .unwrap_err()
                .to_string()
                .contains("flush domain")
        );
    }

    #[test]
    fn config_eval_and_show_print_momentum_lines() {
        let c = Config::parse_str("t.conf", r#"domain "a.example" { max_retries = 7 }"#).unwrap();
        let w = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            config_eval(&c, &w("domain a.example max_retries")).unwrap(),
            "max_retries = 7\n"
        );
        assert_eq!(
            config_show(&c, &w("domain a.example max_retries")).unwrap(),
            "max_retries = 7\n"
        );
        assert!(
            config_show(&c, &w("domain a.example retry_interval"))
                .unwrap()
                .starts_with("Option 'retry_interval' is not set in scope")
        );
        assert!(config_eval(&c, &w("domain a.example no_such_option")).is_err());
    }
}
