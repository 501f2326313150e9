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
    /// The payload, a JSON object sent byte for byte.
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
    /// The format of --file.
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
    /// Wait for the final outcomes (GET /api/v1/notifications) and print them grouped by reason; the exit status
    /// is non-zero when any failed.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds (those still pending are counted as such).
    #[arg(long, default_value_t = 600)]
    pub wait_timeout: u64,
}

pub fn run(args: SendArgs) -> anyhow::Result<ExitCode> {
    if let Some(channel) = &args.channel {
        return broadcast(&args, channel);
    }
    let (defaults, items, what) = prepare(&args)?;
    let ca = match &args.ca {
        Some(path) => Some(
            std::fs::read(path).with_context(|| format!("--ca {}: cannot read", path.display()))?,
        ),
        None => None,
    };
    let api_key = api_key(&args, std::env::var_os(API_KEY_ENV))?;
    let client = PushClient::with_ca(&args.url, api_key, ca.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    let progress = progress_bar(items.len() as u64, "sending");
    let bar = progress.clone();
    let report = runtime.block_on(client::send_all(
        &client,
        &args.domain,
        &defaults,
        items,
        args.batch as usize,
        args.parallel as usize,
        move |n| bar.set_position(n as u64),
    ));
    progress.finish_and_clear();
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
        let finals = runtime.block_on(wait_for_outcomes(&client, &ids, deadline))?;
        write_outcomes(&mut out, &finals, ids.len())?;
        out.flush()?;
        if finals.failed > 0 || finals.pending > 0 {
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
    let ca = match &args.ca {
        Some(path) => Some(
            std::fs::read(path).with_context(|| format!("--ca {}: cannot read", path.display()))?,
        ),
        None => None,
    };
    let api_key = api_key(args, std::env::var_os(API_KEY_ENV))?;
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
                out,
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
            if defaults.payload.is_none() {
                input::check_payloads(&items, &what)?;
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
    writeln!(
        out,
        "sent {} notification{} from {what} to {domain} in {} request{}",
        report.sent,
        plural(report.sent),
        report.requests,
        plural(report.requests)
    )?;
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
    let secs = report.elapsed.as_secs_f64();
    writeln!(
        out,
        "elapsed: {secs:.3} s ({:.0} notifications/s)",
        report.sent as f64 / secs.max(1e-6)
    )
}

/// Final outcomes of the notifications a run sent.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Finals {
    pub delivered: usize,
    pub failed: usize,
    /// Failure reason -> count.
    pub reasons: std::collections::BTreeMap<String, usize>,
    /// Not final when the wait ended, or not found.
    pub pending: usize,
}

/// Polls the status of `ids` (1,000 per request) until every one is final or `deadline` passes.
async fn wait_for_outcomes(
    client: &PushClient,
    ids: &[String],
    deadline: std::time::Instant,
) -> anyhow::Result<Finals> {
    let mut finals = Finals::default();
    let mut waiting: Vec<String> = ids.to_vec();
    let mut pause = std::time::Duration::from_millis(50);
    loop {
        let mut still = Vec::new();
        for chunk in waiting.chunks(1000) {
            let (found, not_found) = client.statuses(chunk).await?;
            for s in found {
                match s["state"].as_str() {
                    Some("delivered") => finals.delivered += 1,
                    Some("failed") => {
                        finals.failed += 1;
                        let reason = s["reason"].as_str().unwrap_or("unknown reason").to_owned();
                        *finals.reasons.entry(reason).or_default() += 1;
                    }
                    _ => still.extend(s["id"].as_str().map(str::to_owned)),
                }
            }
            still.extend(
                not_found
                    .iter()
                    .filter_map(|v| v["id"].as_str().map(str::to_owned)),
            );
        }
        waiting = still;
        if waiting.is_empty() || std::time::Instant::now() >= deadline {
            finals.pending = waiting.len();
            return Ok(finals);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_secs(2));
    }
}

/// The outcomes after --wait, failures grouped by reason.
pub fn write_outcomes(out: &mut impl Write, f: &Finals, total: usize) -> std::io::Result<()> {
    writeln!(out, "outcomes of {total} notification{}:", plural(total))?;
    writeln!(out, "delivered: {}", f.delivered)?;
    writeln!(out, "failed: {}", f.failed)?;
    let mut reasons: Vec<_> = f.reasons.iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (reason, n) in reasons {
        writeln!(out, "  {n:>8}  {reason}")?;
    }
    if f.pending > 0 {
        writeln!(
            out,
            "pending: {} (no final outcome when the wait ended)",
            f.pending
        )?;
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
    fn summary_lists_counts_and_grouped_reasons() {
        let report = Report {
            sent: 3,
            requests: 1,
            outcomes: vec![
                Outcome::Accepted("a".into()),
                Outcome::Rejected("device token: too short (3 hex digits)".into()),
                Outcome::Rejected("device token: too short (5 hex digits)".into()),
            ],
            elapsed: std::time::Duration::from_millis(10),
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
}
