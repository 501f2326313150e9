//! The limits an ESMTP session is held to, and how they are read from a `listen` stanza (falling back to its
//! `esmtp_listener`, then to the option table's default): `max_message_size`, `max_recipients_per_message`,
//! `max_line_length`, `timeout`, `max_connections`, `max_connections_per_client` and
//! `max_notifications_per_message`, and the text of the reply to sessions opened before a reload,
//! `reconfig_message`. The server name, the error limits and the limits of a refused client are not configuration
//! options.

use std::time::Duration;

use herald_conf::{Config, ListenerSettings, Opt, ScopeKind, ScopePath};

/// Limits of an ESMTP listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpLimits {
    /// Largest message accepted, in bytes after dot-unstuffing (advertised as `SIZE`). `max_message_size`.
    pub max_message_size: u64,
    /// Recipients per message; further `RCPT`s get `452 4.5.3`. `max_recipients_per_message`.
    pub max_recipients: usize,
    /// Longest command line, including CRLF (RFC 5321 §4.5.3.1.4: 512; herald allows the text-line limit).
    /// `max_line_length`.
    pub max_command_line: usize,
    /// Longest message line, including CRLF and not counting a leading dot the client doubled for transparency
    /// (RFC 5321 §4.5.3.1.6: 1000): such a line may be one byte longer on the wire. `max_line_length`.
    pub max_text_line: usize,
    /// How long a client may stay silent while herald waits for a command, message data or the STARTTLS
    /// handshake. `timeout`.
    pub idle_timeout: Duration,
    /// The name herald gives itself in the greeting and in EHLO.
    pub hostname: String,
    /// Open sessions per listener; a client beyond it gets `421 4.7.0` at connect. `max_connections`.
    pub max_connections: usize,
    /// Open sessions per client address; beyond it `421 4.7.0`. `max_connections_per_client`.
    pub max_connections_per_client: usize,
    /// Notifications one message may become (push parts × recipients); beyond it `552 5.3.4`.
    /// `max_notifications_per_message`.
    pub max_notifications: usize,
    /// Errors a session may make without a message accepted: the one that reaches it is answered, then the
    /// session gets `421 4.7.0` and is closed (as Postfix's `smtpd_hard_error_limit`).
    pub max_errors: usize,
    /// Commands that do nothing (`NOOP`, `RSET`, `VRFY`, `HELP`, `EHLO`, `HELO`) a session may send without a
    /// message accepted; each one past it is an error (as Postfix's `smtpd_junk_command_limit`), so a client
    /// cannot hold a session open for good with a `NOOP` now and then.
    pub max_junk: usize,
    /// Commands other than `QUIT` a client that `always_deny` refuses gets answered (`503`); after the last one
    /// the session gets `421 4.7.0` and is closed.
    pub refused_answers: usize,
    /// The longest herald waits for each command of a refused client: this or `timeout`, whichever is shorter;
    /// then `421 4.4.2` and the connection closes.
    pub refused_wait: Duration,
    /// The longest a refused client may keep its connection, from the `554`: then `421 4.7.0` and the connection
    /// closes. Together with the two limits above, it bounds how long refused clients hold the listener's
    /// connection slots (`max_connections`).
    pub refused_stay: Duration,
    /// What follows `421` in the reply a session opened before a reload gets at its next command: the enhanced
    /// status code, then the text, on one line. `reconfig_message`.
    pub reconfig_message: String,
}

/// Default `SIZE` (`max_message_size`): 10 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 10 * 1024 * 1024;
/// Default recipients per message (`max_recipients_per_message`).
pub const DEFAULT_MAX_RECIPIENTS: usize = 1000;
/// RFC 5321's text line limit, CRLF included (`max_line_length`).
pub const DEFAULT_MAX_LINE: usize = 1000;
/// Default open sessions per listener (`max_connections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = crate::inbound::doors::DEFAULT_MAX_CONNECTIONS;
/// Default [`SmtpLimits::max_errors`].
pub const DEFAULT_MAX_ERRORS: usize = 20;
/// Default [`SmtpLimits::max_junk`].
pub const DEFAULT_MAX_JUNK: usize = 100;
/// Default [`SmtpLimits::refused_answers`].
pub const DEFAULT_REFUSED_ANSWERS: usize = 3;
/// Default [`SmtpLimits::refused_wait`].
pub const DEFAULT_REFUSED_WAIT: Duration = Duration::from_secs(10);
/// Default [`SmtpLimits::refused_stay`].
pub const DEFAULT_REFUSED_STAY: Duration = Duration::from_secs(30);
/// Default [`SmtpLimits::reconfig_message`]: Momentum's `Reconfig_Message`.
pub const DEFAULT_RECONFIG_MESSAGE: &str = "4.3.2 Reconfiguration in progress";
/// Default idle timeout: Momentum's documented `timeout` default, which herald applies to every listener it reads
/// `timeout` for (docs/smtp.md explains why not RFC 5321's 5 minutes).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for SmtpLimits {
    fn default() -> Self {
        SmtpLimits {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_recipients: DEFAULT_MAX_RECIPIENTS,
            max_command_line: DEFAULT_MAX_LINE,
            max_text_line: DEFAULT_MAX_LINE,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            hostname: "herald".into(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_client: crate::inbound::doors::DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
            max_notifications: crate::inbound::doors::DEFAULT_MAX_NOTIFICATIONS,
            max_errors: DEFAULT_MAX_ERRORS,
            max_junk: DEFAULT_MAX_JUNK,
            refused_answers: DEFAULT_REFUSED_ANSWERS,
            refused_wait: DEFAULT_REFUSED_WAIT,
            refused_stay: DEFAULT_REFUSED_STAY,
            reconfig_message: DEFAULT_RECONFIG_MESSAGE.to_string(),
        }
    }
}

impl SmtpLimits {
    /// The limits of one ESMTP `listen` stanza: each option is read from the stanza, else from the
    /// `esmtp_listener`, else its default; `hostname` keeps its default.
    pub fn from_config(config: &Config, listener: &ListenerSettings) -> SmtpLimits {
        let path = ScopePath::global()
            .then(ScopeKind::EsmtpListener, None)
            .then(ScopeKind::Listen, Some(&listener.address));
        let int = |opt: Opt| -> Option<u64> {
            config
                .eval_opt(&path, opt)
                .ok()
                .and_then(|v| v.as_int())
                .and_then(|n| u64::try_from(n).ok())
        };
        let doors = crate::inbound::doors::DoorLimits::from_config(config, listener);
        let mut limits = SmtpLimits {
            max_connections: doors.max_connections,
            max_connections_per_client: doors.max_connections_per_client,
            max_notifications: doors.max_notifications,
            ..SmtpLimits::default()
        };
        if let Some(n) = int(Opt::MaxMessageSize).filter(|n| *n > 0) {
            limits.max_message_size = n;
        }
        if let Some(n) = int(Opt::MaxRecipientsPerMessage)
            .filter(|n| *n > 0)
            .and_then(|n| usize::try_from(n).ok())
        {
            limits.max_recipients = n;
        }
        if let Some(n) = int(Opt::MaxLineLength)
            .filter(|n| *n > 0)
            .and_then(|n| usize::try_from(n).ok())
        {
            limits.max_command_line = n;
            limits.max_text_line = n;
        }
        // 0 means the default, as on the control listener.
        if let Some(s) = int(Opt::Timeout).filter(|s| *s > 0) {
            limits.idle_timeout = Duration::from_secs(s);
        }
        if let Some(text) = config
            .eval_opt(&path, Opt::ReconfigMessage)
            .ok()
            .and_then(|v| v.as_str().and_then(reply_text))
        {
            limits.reconfig_message = text;
        }
        limits
    }
}

/// A configured reply text as one line: control characters (line breaks included) become spaces, and the ends
/// are trimmed; `None` when nothing is left.
fn reply_text(text: &str) -> Option<String> {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let line = line.trim();
    (!line.is_empty()).then(|| line.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits_of(text: &str, address: &str) -> SmtpLimits {
        let config = Config::parse_str("t.conf", text).unwrap();
        let listener = config
            .listeners()
            .into_iter()
            .find(|l| l.address == address)
            .unwrap();
        SmtpLimits::from_config(&config, &listener)
    }

    #[test]
    fn defaults_match_the_option_table() {
        let unset = limits_of(r#"esmtp_listener { listen ":25" { } }"#, ":25");
        assert_eq!(unset, SmtpLimits::default());
    }

    #[test]
    fn listen_stanza_overrides_the_listener() {
        let text = r#"esmtp_listener {
              max_message_size = 5000
              max_recipients_per_message = 7
              timeout = 30
              listen ":25" { max_line_length = 600 max_recipients_per_message = 2 }
              listen ":26" { timeout = 0 }
            }"#;
        let a = limits_of(text, ":25");
        assert_eq!(a.max_message_size, 5000);
        assert_eq!(a.max_recipients, 2);
        assert_eq!((a.max_command_line, a.max_text_line), (600, 600));
        assert_eq!(a.idle_timeout, Duration::from_secs(30));
        assert_eq!(a.hostname, "herald");
        assert_eq!(a.max_connections, DEFAULT_MAX_CONNECTIONS);
        let b = limits_of(text, ":26");
        assert_eq!(b.max_recipients, 7);
        assert_eq!(b.max_text_line, DEFAULT_MAX_LINE);
        assert_eq!(
            b.idle_timeout, DEFAULT_IDLE_TIMEOUT,
            "timeout = 0 means the default"
        );
    }

    /// `reconfig_message` (Momentum's `Reconfig_Message`, docs/momentum-compat.md#console-config): the listen
    /// stanza's, else the listener's, else Momentum's default; one line, whatever the configuration holds.
    #[test]
    fn reconfig_message_falls_back_and_is_one_line() {
        let text = "esmtp_listener {\n  reconfig_message = \"4.3.2 Reloading, come back\"\n  \
                    listen \":25\" { reconfig_message = \"4.7.0 Be right back\" }\n  listen \":26\" { }\n  \
                    listen \":27\" { reconfig_message = \"  \" }\n  \
                    listen \":28\" { reconfig_message = \"4.3.2 one\ttwo\u{7}three\u{1b}\" }\n}\n";
        assert_eq!(
            limits_of(text, ":25").reconfig_message,
            "4.7.0 Be right back"
        );
        assert_eq!(
            limits_of(text, ":26").reconfig_message,
            "4.3.2 Reloading, come back"
        );
        assert_eq!(
            limits_of(text, ":27").reconfig_message,
            DEFAULT_RECONFIG_MESSAGE,
            "an empty value is the default"
        );
        assert_eq!(
            limits_of(text, ":28").reconfig_message,
            "4.3.2 one two three"
        );
        assert_eq!(
            limits_of(r#"esmtp_listener { listen ":25" { } }"#, ":25").reconfig_message,
            "4.3.2 Reconfiguration in progress"
        );
    }
}
