//! `herald send`: injects notifications through a running herald's REST API (`POST /api/v1/push`): one from the
//! command line, or many from a CSV of tokens or JSON lines (a file or stdin), in batches, with a progress bar on
//! a terminal and a closing summary. The exit status is non-zero when anything was refused or a request failed.

pub mod client;
pub mod input;

use std::io::{BufReader, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use client::{PushClient, Report, Request};
use input::{Format, Item, Options};

#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// The http_listener's URL.
    #[arg(long, default_value = "http://127.0.0.1:2081")]
    pub url: String,
    /// For an https:// URL: trust the CA certificates in this PEM file instead of the system's.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// The listener's API key (sent as `Authorization: Bearer KEY`). Visible to `ps`: prefer --api-key-file or
    /// the HERALD_API_KEY environment variable.
    #[arg(long, conflicts_with = "api_key_file")]
    pub api_key: Option<String>,
    /// Read the API key from this file (its first line; surrounding whitespace is ignored).
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
    /// Send the API key over plain http:// to a host other than loopback (refused without it: anyone on the way
    /// could read the key and the tokens).
    #[arg(long)]
    pub plain: bool,
    /// The app's domain (a `domain` stanza of the configuration).
    #[arg(long)]
    pub domain: String,
    /// One device token (hex); use --file for many.
    #[arg(long, conflicts_with = "file")]
    pub token: Option<String>,
    /// Send one broadcast to this Live Activity channel (`POST /api/v1/broadcast`) instead of device pushes;
    /// the payload comes from --payload, --priority and --expiration apply.
    #[arg(long, conflicts_with_all = ["token", "file", "alert", "wait", "push_type", "collapse_id", "topic"])]
    pub channel: Option<String>,
    /// The payload, a JSON object sent byte for byte. With --file, a CSV row's `alert` column is set as its
    /// aps.alert (the rest of the payload, such as a badge, stays; that row's payload is then written anew).
    #[arg(long, conflicts_with = "alert")]
    pub payload: Option<String>,
    /// Shorthand for --payload '{"aps":{"alert":TEXT}}'.
    #[arg(long)]
    pub alert: Option<String>,
    /// apns-push-type (alert, background, voip, …); default: from the topic's suffix, else the payload.
    #[arg(long)]
    pub push_type: Option<String>,
    /// apns-priority (10, 5 or 1).
    #[arg(long)]
    pub priority: Option<u8>,
    /// apns-expiration, epoch seconds.
    #[arg(long)]
    pub expiration: Option<u64>,
    /// apns-collapse-id.
    #[arg(long)]
    pub collapse_id: Option<String>,
    /// apns-topic; default: the domain's apn_topic (with the push type's suffix, if it has one).
    #[arg(long)]
    pub topic: Option<String>,
    /// Read notifications from this file (`-` for stdin).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// The format of --file. In a CSV, a line starting with `#` is a comment before the header row, or anywhere in
    /// a list of tokens without one; after a header row every line is a notification.
    #[arg(long, value_enum, default_value = "csv")]
    pub format: Format,
    /// Notifications per request.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch: u32,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub parallel: u32,
    /// Print the id of every accepted notification, one per line (done anyway for up to 10).
    #[arg(long)]
    pub ids: bool,
    /// Wait for the final outcomes (POST /api/v1/notifications/query) and print them grouped by reason; the wait
    /// ends once no answer can change. The exit status is non-zero unless every one was delivered: when any failed,
    /// is still pending, expired (its outcome was pruned after outcome_retention: unknown), unknown to herald for
    /// 60 s on end, or could not be looked up (as when status lookups are off: the wait ends at once).
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds (those still pending are counted as such).
    #[arg(long, default_value_t = 600)]
    pub wait_timeout: u64,
    /// The prefix of each request's Idempotency-Key (`PREFIX-N`, N the batch's number from 0); default: a random
    /// one, printed when anything was not accepted. A rerun with the same prefix, input and --batch within 24 hours
    /// sends only the batches herald did not accept: those it did are answered again, not queued again.
    #[arg(long, value_parser = parse_key_prefix)]
    pub idempotency_key: Option<String>,
    /// How long a batch answered 503 (spool or queue full) or 429, or whose request got no answer once herald had
    /// answered an earlier one (connection refused, reset or timed out), is tried again (with its Idempotency-Key,
    /// honouring retry-after, else pauses doubling from 0.5 s to 30 s), counted from its first such failure; 0: not
    /// tried again.
    #[arg(long, default_value_t = 60)]
    pub retry_for: u64,
}

/// `--idempotency-key`: 1 to 200 visible ASCII characters (the batch number follows, within the server's 255).
fn parse_key_prefix(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > client::MAX_KEY_PREFIX_LEN {
        return Err(format!(
            "the prefix has {} characters; give 1 to {}",
            s.len(),
            client::MAX_KEY_PREFIX_LEN
        ));
    }
    if let Some((at, c)) = s.char_indices().find(|(_, c)| !c.is_ascii_graphic()) {
        return Err(format!(
            "{c:?} at position {at} is not a visible ASCII character"
        ));
    }
    Ok(s.to_owned())
}

/// An error in the arguments: printed, exit status 2.
fn usage_error(message: &str) -> ExitCode {
    eprintln!("herald send: {message}");
    ExitCode::from(2)
}

/// Why the API key may not go to `url`: a plain `http://` URL whose host is not this machine (`localhost` or a
/// loopback address), without `--plain`. `None` when it may (https, loopback, `--plain`, no key, or a URL the
/// client itself will refuse).
fn key_in_clear(url: &str, has_key: bool, plain: bool) -> Option<String> {
    if !has_key || plain {
        return None;
    }
    let parsed = reqwest::Url::parse(url).ok()?;
    if parsed.scheme() != "http" {
        return None;
    }
    let host = parsed.host_str()?;
    let local = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    (!local).then(|| {
        format!(
            "refusing to send the API key in clear to {} over http://: anyone on the way could read it; use an \
             https:// URL (the listener needs tls_certificate), or --plain to send it anyway",
            parsed.host_str().unwrap_or_default()
        )
    })
}

/// The PEM text of --ca, checked against the URL: an error for a usage mistake (a file without a certificate, a
/// CA for a plain http:// URL).
fn read_ca(args: &SendArgs) -> anyhow::Result<Result<Option<Vec<u8>>, String>> {
    let Some(path) = &args.ca else {
        return Ok(Ok(None));
    };
    if !args.url.to_ascii_lowercase().starts_with("https://") {
        return Ok(Err(format!(
            "--ca {}: the URL {} is not https://, so no certificate is checked; drop --ca or use https://",
            path.display(),
            args.url
        )));
    }
    let pem =
        std::fs::read(path).with_context(|| format!("--ca {}: cannot read", path.display()))?;
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(Ok(Some(pem))),
        Ok(_) => Ok(Err(format!(
            "--ca {}: no CA certificate found (the file holds no PEM CERTIFICATE block)",
            path.display()
        ))),
        Err(e) => Ok(Err(format!("--ca {}: {e}", path.display()))),
    }
}

pub fn run(args: SendArgs) -> anyhow::Result<ExitCode> {
    if let Some(channel) = &args.channel {
        return broadcast(&args, channel);
    }
    let (defaults, items, what) = prepare(&args)?;
    let ca = match read_ca(&args)? {
        Ok(ca) => ca,
        Err(e) => return Ok(usage_error(&e)),
    };
    let api_key = api_key(&args, std::env::var_os(API_KEY_ENV))?;
    if let Some(why) = key_in_clear(&args.url, api_key.is_some(), args.plain) {
        return Ok(usage_error(&why));
    }
    let client = PushClient::with_ca(&args.url, api_key, ca.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    let lines: Vec<Option<usize>> = items.iter().map(|i| i.line).collect();
    let progress = progress_bar(items.len() as u64, "sending");
    let bar = progress.clone();
    let retry = client::Retry {
        key_prefix: Some(
            args.idempotency_key
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
        ),
        retry_for: std::time::Duration::from_secs(args.retry_for),
    };
    let report = runtime.block_on(client::send_all_with(
        &client,
        &args.domain,
        &defaults,
        items,
        args.batch as usize,
        args.parallel as usize,
        &retry,
        move |n| bar.set_position(n as u64),
    ));
    progress.finish_and_clear();
    {
        let mut err = std::io::stderr().lock();
        write_rejections(&mut err, &report, &lines, &what)?;
        if let Some(failure) = &report.first_failure {
            writeln!(err, "herald send: a request failed: {failure}")?;
        }
        write_unsent(&mut err, &report, &lines, &what, args.batch)?;
    }
    let mut out = std::io::stdout().lock();
    write_summary(&mut out, &report, &args.domain, &what)?;
    let ids: Vec<String> = report
        .outcomes
        .iter()
        .filter_map(|o| match o {
            client::Outcome::Accepted(id) => Some(id.clone()),
            _ => None,
        })
        .collect();
    // Up to 10 ids without --ids; a single notification's id is already in the summary's `accepted` line.
    let in_summary = report.sent == 1 && ids.len() == 1;
    if args.ids || (!ids.is_empty() && ids.len() <= 10 && !in_summary) {
        writeln!(out, "ids:")?;
        for id in &ids {
            writeln!(out, "  {id}")?;
        }
    }
    out.flush()?;
    if args.wait && !ids.is_empty() {
        let deadline =
            herald::model::instant_after(std::time::Duration::from_secs(args.wait_timeout));
        let finals = runtime.block_on(wait_for_outcomes(&client, &ids, deadline));
        write_outcomes(&mut out, &finals, ids.len())?;
        out.flush()?;
        if !finals.all_delivered() {
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `herald send --channel ID`: one broadcast; prints its id.
fn broadcast(args: &SendArgs, channel: &str) -> anyhow::Result<ExitCode> {
    let payload = args
        .payload
        .as_deref()
        .context("--channel needs the Live Activity update as --payload JSON")?;
    // Byte for byte, as a device push's --payload: not read into a JSON value, which would drop a repeated key
    // (the server refuses it), reorder the keys and round big numbers.
    let payload = input::parse_payload(payload)?;
    let body = broadcast_body(args, channel, &payload)?;
    let ca = match read_ca(args)? {
        Ok(ca) => ca,
        Err(e) => return Ok(usage_error(&e)),
    };
    let api_key = api_key(args, std::env::var_os(API_KEY_ENV))?;
    if let Some(why) = key_in_clear(&args.url, api_key.is_some(), args.plain) {
        return Ok(usage_error(&why));
    }
    let client = PushClient::with_ca(&args.url, api_key, ca.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    let mut out = std::io::stdout().lock();
    match runtime.block_on(client.broadcast(body)) {
        Ok(id) => {
            writeln!(
                out,
                "broadcast to channel {channel} of {}: accepted, id {id}",
                args.domain
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            writeln!(
                std::io::stderr().lock(),
                "broadcast to channel {channel} of {}: refused: {e}",
                args.domain
            )?;
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The JSON body of `POST /api/v1/broadcast` for `--channel`: the payload as its text, as written.
fn broadcast_body(
    args: &SendArgs,
    channel: &str,
    payload: &serde_json::value::RawValue,
) -> anyhow::Result<String> {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        domain: &'a str,
        channel_id: &'a str,
        payload: &'a serde_json::value::RawValue,
        #[serde(skip_serializing_if = "Option::is_none")]
        priority: Option<u8>,
        #[serde(skip_serializing_if = "Option::is_none")]
        expiration: Option<u64>,
    }
    serde_json::to_string(&Body {
        domain: &args.domain,
        channel_id: channel,
        payload,
        priority: args.priority,
        expiration: args.expiration,
    })
    .context("writing the broadcast request")
}

/// The environment variable `herald send` reads the API key from when neither --api-key nor --api-key-file is given.
pub const API_KEY_ENV: &str = "HERALD_API_KEY";

/// The API key to send: --api-key, else the first line of --api-key-file, else `env` (the value of
/// [`API_KEY_ENV`]); `None` when none is given or the one given is empty.
fn api_key(args: &SendArgs, env: Option<std::ffi::OsString>) -> anyhow::Result<Option<String>> {
    let key = if let Some(key) = &args.api_key {
        key.clone()
    } else if let Some(path) = &args.api_key_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--api-key-file {}: cannot read", path.display()))?;
        let key = text.lines().next().unwrap_or("").trim();
        if key.is_empty() {
            anyhow::bail!("--api-key-file {}: the file holds no key", path.display());
        }
        key.to_owned()
    } else if let Some(value) = env {
        value
            .into_string()
            .map_err(|_| anyhow::anyhow!("{API_KEY_ENV} is not valid UTF-8"))?
            .trim()
            .to_owned()
    } else {
        return Ok(None);
    };
    if key.bytes().any(|b| b.is_ascii_control()) {
        anyhow::bail!("the API key contains control characters; it cannot be sent in a header");
    }
    Ok(Some(key).filter(|k| !k.is_empty()))
}

/// The shared payload and options, the items, and a description of the input for the summary.
fn prepare(args: &SendArgs) -> anyhow::Result<(Request, Vec<Item>, String)> {
    let payload = match (&args.payload, &args.alert) {
        (Some(p), _) => Some(input::parse_payload(p)?),
        (None, Some(a)) => Some(input::alert_payload(a)),
        (None, None) => None,
    };
    let defaults = Request {
        payload,
        options: Options {
            apns_id: None,
            topic: args.topic.clone(),
            push_type: args.push_type.clone(),
            priority: args.priority,
            expiration: args.expiration,
            collapse_id: args.collapse_id.clone(),
        },
    };
    let (items, what) = match (&args.token, &args.file) {
        (Some(token), _) => {
            if defaults.payload.is_none() {
                anyhow::bail!(
                    "give the notification's payload with --payload JSON or --alert TEXT"
                );
            }
            (
                vec![Item::plain(token.trim())],
                "the command line".to_owned(),
            )
        }
        (None, Some(path)) => {
            let items = if path.as_os_str() == "-" {
                input::read(std::io::stdin().lock(), args.format, "stdin")?
            } else {
                let name = path.display().to_string();
                let file =
                    std::fs::File::open(path).with_context(|| format!("{name}: cannot open"))?;
                input::read(BufReader::new(file), args.format, &name)?
            };
            let what = if path.as_os_str() == "-" {
                "stdin".to_owned()
            } else {
                path.display().to_string()
            };
            let mut items = items;
            match &defaults.payload {
                Some(shared) => input::merge_alerts(&mut items, shared)?,
                None => input::check_payloads(&items, &what)?,
            }
            (items, what)
        }
        (None, None) => anyhow::bail!(
            "nothing to send: give --token TOKEN (with --payload or --alert) or --file PATH|-"
        ),
    };
    Ok((defaults, items, what))
}

/// A progress bar on stderr when it is a terminal; hidden otherwise (the summary is printed either way).
pub fn progress_bar(len: u64, message: &'static str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg:>9} [{bar:40}] {human_pos}/{human_len}  {elapsed_precise}  eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message);
    bar
}

/// The closing summary: accepted, rejected by reason, failed requests, elapsed time and rate.
pub fn write_summary(
    out: &mut impl Write,
    report: &Report,
    domain: &str,
    what: &str,
) -> std::io::Result<()> {
    write!(
        out,
        "sent {} notification{} from {what} to {domain} in {} request{}",
        report.sent,
        plural(report.sent),
        report.requests,
        plural(report.requests)
    )?;
    let again = report.requests.saturating_sub(report.batches_sent);
    if again > 0 {
        write!(
            out,
            " ({} batch{}, {again} tried again)",
            report.batches_sent,
            if report.batches_sent == 1 { "" } else { "es" }
        )?;
    }
    writeln!(out)?;
    match (report.sent, report.outcomes.first()) {
        (1, Some(client::Outcome::Accepted(id))) => writeln!(out, "accepted: 1 (id {id})")?,
        _ => writeln!(out, "accepted: {}", report.accepted())?,
    }
    writeln!(out, "rejected: {}", report.rejected())?;
    for (reason, n) in report.grouped(false) {
        writeln!(out, "  {n:>8}  {reason}")?;
    }
    writeln!(out, "failed: {}", report.failed())?;
    for (reason, n) in report.grouped(true) {
        writeln!(out, "  {n:>8}  {reason}")?;
    }
    if !report.not_sent.is_empty() {
        writeln!(
            out,
            "not sent: {} (in {} batch{} never sent: sending stopped after a request failed)",
            report.not_sent.len(),
            report.batches_not_sent,
            if report.batches_not_sent == 1 {
                ""
            } else {
                "es"
            }
        )?;
    }
    let secs = report.elapsed.as_secs_f64();
    // A rate only when something was accepted: a run all refused or failed sent nothing worth timing.
    if report.accepted() == 0 {
        return writeln!(out, "elapsed: {secs:.3} s");
    }
    writeln!(
        out,
        "elapsed: {secs:.3} s ({:.0} notifications/s)",
        report.sent as f64 / secs.max(1e-6)
    )
}

/// Rejected notifications named one per line on standard error, at most this many (the others are counted).
const MAX_REJECTIONS_SHOWN: usize = 20;

/// `FILE:LINE: reason` for each rejected notification read from a file or stdin (the first
/// [`MAX_REJECTIONS_SHOWN`], then how many more); `lines` are the items' lines, in input order.
pub fn write_rejections(
    out: &mut impl Write,
    report: &Report,
    lines: &[Option<usize>],
    what: &str,
) -> std::io::Result<()> {
    let mut rejected = report
        .outcomes
        .iter()
        .zip(lines)
        .filter_map(|(o, line)| match (o, line) {
            (client::Outcome::Rejected(reason), Some(line)) => Some((*line, reason)),
            _ => None,
        });
    for (line, reason) in rejected.by_ref().take(MAX_REJECTIONS_SHOWN) {
        writeln!(out, "{what}:{line}: {reason}")?;
    }
    let more = rejected.count();
    if more > 0 {
        writeln!(
            out,
            "… and {more} more rejected notification{} not shown",
            plural(more)
        )?;
    }
    Ok(())
}

/// On standard error, for notifications read from a file or stdin, the lines whose request failed and those never
/// sent, as ranges (`FILE lines 1002-1501, 2002-2501`), and the Idempotency-Key prefix to resend them with.
pub fn write_unsent(
    out: &mut impl Write,
    report: &Report,
    lines: &[Option<usize>],
    what: &str,
    batch: u32,
) -> std::io::Result<()> {
    let mut unsent = report.not_sent.iter().copied().peekable();
    let mut failed = Vec::new();
    for (i, o) in report.outcomes.iter().enumerate() {
        if unsent.next_if(|&u| u == i).is_some() {
            continue;
        }
        if matches!(o, client::Outcome::Failed(_)) {
            failed.push(i);
        }
    }
    let mut any = false;
    for (label, indexes) in [
        (
            "failed (sent; herald's answer unknown or a refusal)",
            &failed,
        ),
        ("not sent", &report.not_sent),
    ] {
        if indexes.is_empty() {
            continue;
        }
        any = true;
        let ranges = line_ranges(indexes, lines);
        if !ranges.is_empty() {
            writeln!(out, "herald send: {label}: {what} lines {ranges}")?;
        }
    }
    if let (true, Some(prefix)) = (any, &report.key_prefix) {
        writeln!(
            out,
            "herald send: Idempotency-Key prefix {prefix}: rerun with --idempotency-key {prefix} --batch {batch} and \
             the same input within 24 hours to send only what herald did not accept"
        )?;
    }
    Ok(())
}

/// The input lines of the items `indexes` (ascending), runs of consecutive items as `FIRST-LAST`.
fn line_ranges(indexes: &[usize], lines: &[Option<usize>]) -> String {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut prev: Option<usize> = None;
    for &i in indexes {
        let Some(Some(line)) = lines.get(i) else {
            continue;
        };
        match (runs.last_mut(), prev) {
            (Some(run), Some(p)) if p + 1 == i => run.1 = *line,
            _ => runs.push((*line, *line)),
        }
        prev = Some(i);
    }
    runs.iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Final outcomes of the notifications a run sent.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Finals {
    pub delivered: usize,
    pub failed: usize,
    /// Failure reason -> count.
    pub reasons: std::collections::BTreeMap<String, usize>,
    /// Not final when the wait ended, or not known to herald yet (`found: unknown`).
    pub pending: usize,
    /// Final, but the outcome is unknown: herald pruned it after `outcome_retention` (`found: expired`).
    pub expired: usize,
    /// Asked about and answered with an error that asking again would not change (a `400`, a `500`, a refused
    /// request): lookup error -> count.
    pub not_looked_up: std::collections::BTreeMap<String, usize>,
    /// Answered `found: unknown` for [`UNKNOWN_FOR`] on end after it was accepted: not queued yet, or lost.
    pub unknown: usize,
}

impl Finals {
    /// Whether every notification was delivered (nothing failed, pending, expired or not looked up).
    pub fn all_delivered(&self) -> bool {
        self.failed == 0
            && self.pending == 0
            && self.expired == 0
            && self.unknown == 0
            && self.not_looked_up.is_empty()
    }

    /// Counts `lookup`; `Pending` is the caller's to ask again.
    fn count(&mut self, lookup: Lookup) {
        match lookup {
            Lookup::Delivered => self.delivered += 1,
            Lookup::Failed(reason) => {
                self.failed += 1;
                *self.reasons.entry(reason).or_default() += 1;
            }
            Lookup::Expired => self.expired += 1,
            Lookup::Error(e) => *self.not_looked_up.entry(e).or_default() += 1,
            Lookup::Off => {
                *self
                    .not_looked_up
                    .entry(LOOKUPS_OFF.to_owned())
                    .or_default() += 1
            }
            Lookup::Pending | Lookup::AskAlone => {}
        }
    }
}

/// The text of a `found: unknown` answer from a herald that keeps no outcomes (crates/herald/src/outcomes/api.rs).
const LOOKUPS_OFF: &str = "status lookups are off on this herald (outcome_retention = 0)";

/// How long an id may stay `found: unknown` (no state held for it) before the wait stops asking about it.
const UNKNOWN_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// What a status answer says of one notification.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Lookup {
    Delivered,
    Failed(String),
    /// Not final yet (queued, in flight, retried), or `found: unknown` (not queued yet): ask again.
    Pending,
    /// `found: expired`: final, outcome unknown.
    Expired,
    /// An error that asking again will not change.
    Error(String),
    /// `found: unknown` because the server keeps no outcomes (`outcome_retention = 0`): no id can be looked up.
    Off,
    /// An error in the batch answer, which does not say whether it is for now (a `503`: ask again) or for good (a
    /// `400` or `500`): asked again alone, whose HTTP status tells.
    AskAlone,
}

/// A state of `notifications` in a query's answer (or the `200` answer for one id).
fn lookup_of_state(s: &serde_json::Value) -> Lookup {
    match s["state"].as_str() {
        Some("delivered") => Lookup::Delivered,
        Some("failed") => {
            Lookup::Failed(s["reason"].as_str().unwrap_or("unknown reason").to_owned())
        }
        _ => Lookup::Pending,
    }
}

/// An entry of `not_found` in a query's answer: `found: unknown` or `expired`, or an error.
fn lookup_of_missing(v: &serde_json::Value) -> Lookup {
    match v["found"].as_str() {
        Some("unknown") if error_text(v).contains(LOOKUPS_OFF) => Lookup::Off,
        Some("unknown") => Lookup::Pending,
        Some("expired") => Lookup::Expired,
        _ => Lookup::AskAlone,
    }
}

/// The answer for one id (`GET /api/v1/notifications/ID`) with its HTTP status.
fn lookup_of_answer(status: u16, v: &serde_json::Value) -> Lookup {
    match status {
        200 => lookup_of_state(v),
        404 => match lookup_of_missing(v) {
            Lookup::AskAlone => Lookup::Error(format!("HTTP 404: {}", error_text(v))),
            l => l,
        },
        // The outcome store cannot be read for now (a full disk): herald asks to ask again.
        503 => Lookup::Pending,
        _ => Lookup::Error(format!("HTTP {status}: {}", error_text(v))),
    }
}

fn error_text(v: &serde_json::Value) -> String {
    match v["error"].as_str() {
        Some(e) => e.to_owned(),
        None => v.to_string(),
    }
}

/// Polls the status of `ids` (1,000 per request) until every one is final (delivered, failed, expired, or answered
/// with an error that asking again would not change) or `deadline` passes. A `503` (the outcome store cannot be
/// read for now) is asked again; any other failed request ends the wait, the ids not yet final counted as not
/// looked up.
async fn wait_for_outcomes(
    client: &PushClient,
    ids: &[String],
    deadline: std::time::Instant,
) -> Finals {
    let mut finals = Finals::default();
    let mut waiting: Vec<String> = ids.to_vec();
    let mut pause = std::time::Duration::from_millis(50);
    // Since when each id has been answered `unknown`, without a break.
    let mut unknown_since: std::collections::HashMap<String, std::time::Instant> =
        std::collections::HashMap::new();
    loop {
        let mut still = Vec::new();
        let mut broken: Option<String> = None;
        let mut off = false;
        for chunk in waiting.chunks(1000) {
            if let Some(e) = &broken {
                *finals.not_looked_up.entry(e.clone()).or_default() += chunk.len();
                continue;
            }
            let (found, not_found) = match client.statuses(chunk).await {
                Ok(answer) => answer,
                Err(client::RequestError::Status { status: 503, .. }) => {
                    still.extend_from_slice(chunk);
                    continue;
                }
                Err(e) => {
                    *finals.not_looked_up.entry(e.to_string()).or_default() += chunk.len();
                    broken = Some(e.to_string());
                    continue;
                }
            };
            let answered = found
                .iter()
                .map(|s| (s, lookup_of_state(s)))
                .chain(not_found.iter().map(|v| (v, lookup_of_missing(v))));
            for (v, mut lookup) in answered {
                let Some(id) = v["id"].as_str() else { continue };
                let unknown = v["found"].as_str() == Some("unknown");
                if lookup == Lookup::Off {
                    off = true;
                }
                if lookup == Lookup::Pending && unknown {
                    let since = *unknown_since
                        .entry(id.to_owned())
                        .or_insert_with(std::time::Instant::now);
                    if since.elapsed() >= UNKNOWN_FOR {
                        finals.unknown += 1;
                        continue;
                    }
                } else {
                    unknown_since.remove(id);
                }
                if lookup == Lookup::AskAlone {
                    lookup = match client.status(id).await {
                        Ok((status, v)) => lookup_of_answer(status, &v),
                        Err(e) => Lookup::Error(e.to_string()),
                    };
                }
                if lookup == Lookup::Pending {
                    still.push(id.to_owned());
                } else {
                    finals.count(lookup);
                }
            }
        }
        waiting = still;
        if off {
            // No id can be looked up on this server: those not final are not looked up either.
            *finals
                .not_looked_up
                .entry(LOOKUPS_OFF.to_owned())
                .or_default() += waiting.len();
            finals.pending = 0;
            return finals;
        }
        let now = std::time::Instant::now();
        if waiting.is_empty() || broken.is_some() || now >= deadline {
            finals.pending = waiting.len();
            return finals;
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(std::time::Duration::from_secs(2));
    }
}

/// The outcomes after --wait, failures grouped by reason.
pub fn write_outcomes(out: &mut impl Write, f: &Finals, total: usize) -> std::io::Result<()> {
    writeln!(out, "outcomes of {total} notification{}:", plural(total))?;
    writeln!(out, "delivered: {}", f.delivered)?;
    writeln!(out, "failed: {}", f.failed)?;
    let by_count = |map: &std::collections::BTreeMap<String, usize>| {
        let mut v: Vec<(String, usize)> = map.iter().map(|(r, n)| (r.clone(), *n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    };
    for (reason, n) in by_count(&f.reasons) {
        writeln!(out, "  {n:>8}  {reason}")?;
    }
    if f.pending > 0 {
        writeln!(
            out,
            "pending: {} (no final outcome when the wait ended)",
            f.pending
        )?;
    }
    if f.expired > 0 {
        writeln!(
            out,
            "expired: {} (outcome unknown: herald kept it for outcome_retention and pruned it)",
            f.expired
        )?;
    }
    if f.unknown > 0 {
        writeln!(
            out,
            "unknown: {} (outcome unknown: herald held no state for it for {} s on end after it was accepted: not \
             queued yet, or lost)",
            f.unknown,
            UNKNOWN_FOR.as_secs()
        )?;
    }
    let not_looked_up: usize = f.not_looked_up.values().sum();
    if not_looked_up > 0 {
        writeln!(out, "not looked up: {not_looked_up} (outcome unknown)")?;
        for (reason, n) in by_count(&f.not_looked_up) {
            writeln!(out, "  {n:>8}  {reason}")?;
        }
    }
    Ok(())
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::client::Outcome;
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        send: SendArgs,
    }

    fn args(extra: &[&str]) -> SendArgs {
        let mut argv = vec!["send", "--domain", "d.example", "--token", "00"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().send
    }

    /// The API key goes in clear only to this machine, or with --plain; https and a request without a key are
    /// never held back.
    #[test]
    fn an_api_key_goes_in_clear_only_to_loopback_or_with_plain() {
        for url in [
            "http://127.0.0.1:2081",
            "http://localhost:2081",
            "HTTP://LOCALHOST:2081",
            "http://[::1]:2081",
            "http://127.0.0.2:2081",
            "https://push.example:2081",
        ] {
            assert_eq!(key_in_clear(url, true, false), None, "{url}");
        }
        for url in [
            "http://push.example:2081",
            "HTTP://10.0.0.1",
            "http://[2001:db8::1]:80",
        ] {
            let why = key_in_clear(url, true, false).expect(url);
            assert!(
                why.contains("refusing to send the API key in clear to"),
                "{why}"
            );
            assert!(why.contains("--plain"), "{why}");
            assert_eq!(key_in_clear(url, true, true), None, "{url}");
            assert_eq!(key_in_clear(url, false, false), None, "{url}");
        }
    }

    #[test]
    fn the_api_key_comes_from_the_flag_the_file_or_the_environment() {
        let env = || Some(std::ffi::OsString::from("from-env\n"));
        assert_eq!(api_key(&args(&[]), None).unwrap(), None);
        assert_eq!(
            api_key(&args(&[]), env()).unwrap().as_deref(),
            Some("from-env")
        );
        assert_eq!(
            api_key(&args(&["--api-key", "flag"]), env())
                .unwrap()
                .as_deref(),
            Some("flag")
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "  from-file  \nsecond line\n").unwrap();
        let f = file.to_str().unwrap();
        assert_eq!(
            api_key(&args(&["--api-key-file", f]), env())
                .unwrap()
                .as_deref(),
            Some("from-file")
        );
        std::fs::write(&file, "\n").unwrap();
        let err = api_key(&args(&["--api-key-file", f]), None).unwrap_err();
        assert!(err.to_string().contains("holds no key"), "{err}");
        let missing = dir.path().join("missing");
        let err = api_key(&args(&["--api-key-file", missing.to_str().unwrap()]), None).unwrap_err();
        assert!(err.to_string().contains("--api-key-file"), "{err}");
        assert!(
            Cli::try_parse_from([
                "send",
                "--domain",
                "d",
                "--api-key",
                "a",
                "--api-key-file",
                f
            ])
            .is_err(),
            "--api-key and --api-key-file exclude each other"
        );
    }

    #[test]
    fn rejected_items_are_named_by_their_line_twenty_at_most() {
        let mut outcomes = vec![Outcome::Accepted("a".into())];
        outcomes.extend((0..23).map(|i| Outcome::Rejected(format!("device token: bad {i}"))));
        outcomes.push(Outcome::Failed("HTTP 500: boom".into()));
        let lines: Vec<Option<usize>> = (0..outcomes.len()).map(|i| Some(i + 2)).collect();
        let report = Report {
            sent: outcomes.len(),
            outcomes,
            ..Report::default()
        };
        let mut out = Vec::new();
        write_rejections(&mut out, &report, &lines, "t.csv").unwrap();
        let text = String::from_utf8(out).unwrap();
        let shown: Vec<&str> = text.lines().collect();
        assert_eq!(shown.len(), 21, "{text}");
        assert_eq!(shown[0], "t.csv:3: device token: bad 0");
        assert_eq!(shown[19], "t.csv:22: device token: bad 19");
        assert_eq!(shown[20], "… and 3 more rejected notifications not shown");

        // Nothing for an item not read from a file (--token: its reason is in the summary).
        let report = Report {
            sent: 1,
            outcomes: vec![Outcome::Rejected("device token: too short".into())],
            ..Report::default()
        };
        let mut out = Vec::new();
        write_rejections(&mut out, &report, &[None], "the command line").unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn wait_answers_are_final_pending_or_errors() {
        use serde_json::json;
        assert_eq!(
            lookup_of_state(&json!({"id": "x", "state": "delivered"})),
            Lookup::Delivered
        );
        assert_eq!(
            lookup_of_state(&json!({"id": "x", "state": "failed", "reason": "Unregistered"})),
            Lookup::Failed("Unregistered".into())
        );
        assert_eq!(
            lookup_of_state(&json!({"id": "x", "state": "queued"})),
            Lookup::Pending
        );
        assert_eq!(
            lookup_of_missing(&json!({"id": "x", "found": "unknown", "error": "later"})),
            Lookup::Pending
        );
        // A herald that keeps no outcomes: nothing can be looked up, asking again will not change that.
        assert_eq!(
            lookup_of_missing(
                &json!({"id": "x", "found": "unknown", "error": format!("x: unknown: {LOOKUPS_OFF}: it keeps no outcome to look up")})
            ),
            Lookup::Off
        );
        // Expired is final: asking again cannot bring the outcome back.
        assert_eq!(
            lookup_of_missing(&json!({"id": "x", "found": "expired", "error": "gone"})),
            Lookup::Expired
        );
        // An error in a batch answer does not say whether to ask again: the id is asked alone.
        assert_eq!(
            lookup_of_missing(&json!({"id": "x", "error": "store broken"})),
            Lookup::AskAlone
        );
        assert_eq!(
            lookup_of_answer(503, &json!({"id": "x", "error": "disk full"})),
            Lookup::Pending
        );
        assert_eq!(
            lookup_of_answer(500, &json!({"id": "x", "error": "does not decode"})),
            Lookup::Error("HTTP 500: does not decode".into())
        );
        assert_eq!(
            lookup_of_answer(400, &json!({"id": "x", "error": "not an id"})),
            Lookup::Error("HTTP 400: not an id".into())
        );
        assert_eq!(
            lookup_of_answer(404, &json!({"id": "x", "found": "expired"})),
            Lookup::Expired
        );
        assert_eq!(
            lookup_of_answer(200, &json!({"id": "x", "state": "delivered"})),
            Lookup::Delivered
        );
    }

    #[test]
    fn outcomes_name_expired_and_lookup_errors_after_the_old_lines() {
        let mut f = Finals::default();
        f.count(Lookup::Delivered);
        f.count(Lookup::Failed("BadDeviceToken".into()));
        f.count(Lookup::Expired);
        f.count(Lookup::Error("HTTP 500: broken".into()));
        f.count(Lookup::Error("HTTP 500: broken".into()));
        f.pending = 1;
        assert!(!f.all_delivered());
        let mut out = Vec::new();
        write_outcomes(&mut out, &f, 6).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "outcomes of 6 notifications:\ndelivered: 1\nfailed: 1\n         1  BadDeviceToken\n\
             pending: 1 (no final outcome when the wait ended)\n\
             expired: 1 (outcome unknown: herald kept it for outcome_retention and pruned it)\n\
             not looked up: 2 (outcome unknown)\n         2  HTTP 500: broken\n"
        );
        let mut only_delivered = Finals::default();
        only_delivered.count(Lookup::Delivered);
        assert!(only_delivered.all_delivered());
        let mut expired = Finals::default();
        expired.count(Lookup::Expired);
        assert!(
            !expired.all_delivered(),
            "an unknown outcome is not a success"
        );
    }

    #[test]
    fn summary_lists_counts_and_grouped_reasons() {
        let report = Report {
            sent: 3,
            requests: 1,
            batches_sent: 1,
            outcomes: vec![
                Outcome::Accepted("a".into()),
                Outcome::Rejected("device token: too short (3 hex digits)".into()),
                Outcome::Rejected("device token: too short (5 hex digits)".into()),
            ],
            elapsed: std::time::Duration::from_millis(10),
            ..Report::default()
        };
        let mut out = Vec::new();
        write_summary(&mut out, &report, "d.example", "t.csv").unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("sent 3 notifications from t.csv to d.example in 1 request\n"),
            "{text}"
        );
        assert!(text.contains("accepted: 1\n"), "{text}");
        assert!(
            text.contains("rejected: 2\n         2  device token: too short\n"),
            "{text}"
        );
        assert!(text.contains("failed: 0\n"));
        assert!(
            text.contains("elapsed: 0.010 s (300 notifications/s)"),
            "{text}"
        );
    }

    /// Nothing accepted (all rejected, or every request failed): the elapsed time, but no rate.
    #[test]
    fn summary_gives_no_rate_when_nothing_was_accepted() {
        let report = Report {
            sent: 7,
            requests: 1,
            batches_sent: 1,
            outcomes: vec![Outcome::Rejected("device token: too short".into()); 7],
            elapsed: std::time::Duration::from_secs(1),
            ..Report::default()
        };
        let mut out = Vec::new();
        write_summary(&mut out, &report, "d.example", "t.csv").unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("elapsed: 1.000 s\n"), "{text}");
        assert!(!text.contains("notifications/s"), "{text}");
    }
}
