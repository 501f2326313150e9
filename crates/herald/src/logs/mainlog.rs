//! The `ec_logger` mainlog (docs/momentum-compat.md#mainlog): `@`-delimited lines with the entry type in field 4.
//!
//! ```text
//! R: ts@msgid@batch@conn@R@rcpt-local@rcpt-domain@sender-local@sender-domain@source-ip@size@protocol@bgroup@binding
//! D: ts@msgid@batch@conn@D@domain@size@bgroup@binding@retries@secs-since-reception@remote-ip
//! T: ts@msgid@batch@conn@T@domain@bytes@bgroup@binding@stage@retries@secs@remote-ip@error
//! P: the fields of T with P
//! M: ts@@@@M1
//! ```

use std::fmt::Write as _;
use std::net::IpAddr;

use super::file::{LogFile, push_escaped};
use super::{OutcomeKind, OutcomeRecord};
use crate::model::message::Notification;

/// Connection stage of a failure that happened with a connection: "reading confirmation"
/// (docs/momentum-compat.md#mainlog).
const STAGE_READING_CONFIRMATION: u8 = 9;
/// Connection stage of a failure with no connection.
const STAGE_NOT_CONNECTED: u8 = 0;

#[derive(Debug)]
pub struct MainLog {
    file: LogFile,
    pub log_receptions: bool,
    pub log_deliveries: bool,
    pub log_transient_failures: bool,
    pub log_permanent_failures: bool,
    /// The ec_logger's `heartbeat`: how often an `M` line is written; `None` (0) writes none.
    pub heartbeat: Option<std::time::Duration>,
}

impl MainLog {
    pub fn new(file: LogFile) -> Self {
        MainLog {
            file,
            log_receptions: true,
            log_deliveries: true,
            log_transient_failures: true,
            log_permanent_failures: true,
            heartbeat: None,
        }
    }

    pub fn file(&self) -> &LogFile {
        &self.file
    }

    /// The R line of `n`, accepted from `source_ip` over `protocol`, to be delivered from `binding_group`'s
    /// `n.binding`.
    pub fn reception(
        &self,
        n: &Notification,
        source_ip: Option<IpAddr>,
        protocol: &str,
        binding_group: &str,
    ) {
        if !self.log_receptions {
            return;
        }
        let mut line = String::with_capacity(160);
        let _ = write!(
            line,
            "{}@{}@{}@{}@R@",
            n.received_at, n.id, n.batch_id, n.conn_id
        );
        let recipient = n.recipient();
        let (rl, rd) = split_address(&recipient, &n.domain);
        push_escaped(&mut line, rl);
        line.push('@');
        push_escaped(&mut line, rd);
        line.push('@');
        let (sl, sd) = split_address(&n.sender, "");
        push_escaped(&mut line, sl);
        line.push('@');
        push_escaped(&mut line, sd);
        line.push('@');
        match source_ip {
            Some(ip) => {
                let _ = write!(line, "{ip}");
            }
            None => line.push_str("unknown"),
        }
        let _ = write!(line, "@{}@", n.push.payload.len());
        push_escaped(&mut line, protocol);
        line.push('@');
        push_escaped(&mut line, binding_group);
        line.push('@');
        push_escaped(&mut line, &n.binding);
        self.file.write_line(&line);
    }

    pub fn outcome(&self, r: &OutcomeRecord<'_>) {
        let (enabled, code) = match r.kind {
            OutcomeKind::Delivered => (self.log_deliveries, 'D'),
            OutcomeKind::Transient => (self.log_transient_failures, 'T'),
            OutcomeKind::Permanent => (self.log_permanent_failures, 'P'),
        };
        if !enabled {
            return;
        }
        let n = r.notification;
        let secs = r.at.saturating_sub(n.received_at);
        let mut line = String::with_capacity(160);
        let _ = write!(
            line,
            "{}@{}@{}@{}@{code}@",
            r.at, n.id, n.batch_id, n.conn_id
        );
        push_escaped(&mut line, &n.domain);
        match r.kind {
            OutcomeKind::Delivered => {
                let _ = write!(line, "@{}@", n.push.payload.len());
                push_escaped(&mut line, r.binding_group);
                line.push('@');
                push_escaped(&mut line, r.binding);
                let _ = write!(line, "@{}@{secs}@", r.retries);
                push_ip(&mut line, r.remote_ip);
            }
            OutcomeKind::Transient | OutcomeKind::Permanent => {
                let (bytes, stage) = if r.connected {
                    (n.push.payload.len(), STAGE_READING_CONFIRMATION)
                } else {
                    (0, STAGE_NOT_CONNECTED)
                };
                let _ = write!(line, "@{bytes}@");
                push_escaped(&mut line, r.binding_group);
                line.push('@');
                push_escaped(&mut line, r.binding);
                let _ = write!(line, "@{stage}@{}@{secs}@", r.retries);
                push_ip(&mut line, r.remote_ip);
                line.push('@');
                if let Some(status) = r.status {
                    let _ = write!(line, "{status} ");
                }
                push_escaped(&mut line, r.error);
            }
        }
        self.file.write_line(&line);
    }

    /// Whether outcomes of this kind (`D`, `T`, `P`) are logged.
    pub fn logs_result(&self, result: char) -> bool {
        match result {
            'D' => self.log_deliveries,
            'T' => self.log_transient_failures,
            _ => self.log_permanent_failures,
        }
    }

    pub fn heartbeat(&self, at: u64) {
        self.file.write_line(&format!("{at}@@@@M1"));
    }
}

fn push_ip(line: &mut String, ip: Option<IpAddr>) {
    if let Some(ip) = ip {
        let _ = write!(line, "{ip}");
    }
}

/// Splits `local@domain`; an address without `@` is all local part, with `default_domain`.
fn split_address<'a>(address: &'a str, default_domain: &'a str) -> (&'a str, &'a str) {
    match address.rsplit_once('@') {
        Some((l, d)) => (l, d),
        None => (address, default_domain),
    }
}
