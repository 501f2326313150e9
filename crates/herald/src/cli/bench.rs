//! `herald bench -c FILE --domain D -n N`: drives the delivery engine with generated notifications, without a
//! spool or a listener, and reports throughput and outcomes. Same engine, pools and connections as `serve`; the
//! configuration's log files are written only with `--logs`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use herald::delivery::ConfigResolver;
use herald::inbound::accept::{Intake, NotDurable, Source, Submission};
use herald::logs::Logs;
use herald::queue::message::{IdGenerator, MessageId, Notification, unix_now};
use herald::queue::stats::DomainStats;
use herald::queue::{Engine, EngineLimits, MemoryInvalidTokens};
use herald_apns::client::PushRequest;
use herald_apns::notification::PushHeaders;
use herald_apns::push::{Priority, PushType};
use herald_apns::token_hex::DeviceToken;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The configuration file; the domain's routes, credentials and connection options apply.
    #[arg(short = 'c', long = "config")]
    pub config: PathBuf,
    /// The domain (app) to send to.
    #[arg(long)]
    pub domain: String,
    /// How many notifications to send (at least 1). The exit status is non-zero unless every one was delivered.
    #[arg(short = 'n', long, default_value_t = 100_000, value_parser = parse_count)]
    pub count: u64,
    /// Payload size in bytes (a valid alert payload padded to this size).
    #[arg(long, default_value_t = 128)]
    pub payload_size: usize,
    /// Distinct device tokens to cycle through.
    #[arg(long, default_value_t = 10_000)]
    pub tokens: usize,
    /// `apns-topic` to send (default: the domain's `apn_topic`, or the certificate's).
    #[arg(long)]
    pub topic: Option<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Give every notification its own payload buffer (as received notifications have), instead of sharing one.
    #[arg(long)]
    pub distinct_payloads: bool,
    /// Build each notification as `herald serve` does for a REST push (through the same door: validation, a
    /// generated `apns-id`, the domain's topic, shared strings), so that memory and speed compare like for like.
    #[arg(long)]
    pub serve_fields: bool,
    /// Also write the deliveries to the configuration's logs (each ec_logger's mainlog and each apn_logger's file).
    /// Without it, bench writes no log: its generated deliveries stay out of the accounting of the configuration it
    /// borrows.
    #[arg(long)]
    pub logs: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Also print, every 50 ms to standard error, the time since the start, notifications finished, streams in
    /// flight, the sum of the connections' in-flight limits and the connections open.
    #[arg(long)]
    pub timeline: bool,
}

/// `--count`: a whole number of notifications, at least 1.
fn parse_count(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(0) => Err("at least 1 notification: there is nothing to measure in 0".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("not a number of notifications: {e}")),
    }
}

/// Why a run of `count` notifications fails, one line each (none when every one was delivered): some had not
/// finished when `--timeout` ran out, and some were not delivered. `transient` counts failed attempts (retried).
fn shortfall(
    count: u64,
    finished: u64,
    delivered: u64,
    transient: u64,
    permanent: u64,
) -> Vec<String> {
    let mut lines = Vec::new();
    if finished < count {
        lines.push(format!("timed out with {finished} of {count} finished"));
    }
    if delivered < count {
        lines.push(format!(
            "delivered {delivered} of {count} notifications: {permanent} failed permanently, {} not finished \
             ({transient} transient failure(s) on the way)",
            count.saturating_sub(finished)
        ));
    }
    lines
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let config = match herald_conf::Config::load(&args.config) {
        Ok(c) => c,
        Err(diags) => {
            for d in diags.all() {
                eprintln!("{d}");
            }
            bail!("{} is not a valid configuration", args.config.display());
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    runtime.block_on(bench(args, Arc::new(config)))
}

async fn bench(args: BenchArgs, config: Arc<herald_conf::Config>) -> anyhow::Result<ExitCode> {
    let logs = if args.logs {
        let (logs, heartbeat) = Logs::open(&config).context("opening logs")?;
        logs.spawn_maintenance(Duration::from_millis(200), heartbeat);
        logs
    } else {
        Logs::default()
    };
    let resolver = Arc::new(ConfigResolver::new(config));
    resolver
        .build(&args.domain)
        .map_err(|e| anyhow::anyhow!("domain {}: {e}", args.domain))?;
    let invalid = Arc::new(MemoryInvalidTokens::default());
    let engine = Arc::new(Engine::new(
        resolver.clone(),
        logs.clone(),
        invalid.clone(),
        EngineLimits::default(),
    ));
    let intake = Intake::new(
        resolver,
        Arc::new(NotDurable),
        engine.clone(),
        IdGenerator::new(0),
    );
    let source = Source {
        ip: None,
        protocol: "rest",
        batch_id: intake.next_id(),
        conn_id: intake.next_id(),
    };

    let payload = make_payload(args.payload_size);
    let tokens = make_tokens(args.tokens.max(1));
    let hex: Vec<String> = if args.serve_fields {
        tokens.iter().map(DeviceToken::to_hex).collect()
    } else {
        Vec::new()
    };
    let domain: Arc<str> = Arc::from(args.domain.as_str());
    let topic: Option<Arc<str>> = args.topic.as_deref().map(Arc::from);
    let ids = IdGenerator::new(0);
    let sender: Arc<str> = Arc::from("bench@herald");
    let binding: Arc<str> = Arc::from(herald::queue::message::DEFAULT_BINDING);
    let started = Instant::now();
    let mut sampler = None;
    for i in 0..args.count {
        if i == 1 {
            // The domain's statistics exist once the first notification is in.
            let stats = engine
                .stats(&args.domain)
                .context("the domain received nothing")?;
            let (stop, stopped) = tokio::sync::oneshot::channel();
            let task = tokio::spawn(sample_streams(
                stats,
                started,
                args.count,
                args.timeline,
                stopped,
            ));
            sampler = Some((stop, task));
        }
        let payload = if args.distinct_payloads {
            Bytes::copy_from_slice(&payload)
        } else {
            payload.clone()
        };
        if args.serve_fields {
            let token = &hex[(i as usize) % hex.len()];
            let submission = Submission {
                domain: args.domain.clone(),
                token: token.clone(),
                payload,
                headers: PushHeaders {
                    topic: args.topic.clone(),
                    ..PushHeaders::default()
                },
                sender: sender.to_string(),
                recipient: format!("{token}@{}", args.domain),
                ..Submission::default()
            };
            let n = intake
                .prepare(submission, &source)
                .map_err(|e| anyhow::anyhow!("notification refused: {e}"))?;
            engine.submit(n).await?;
            continue;
        }
        let token = tokens[(i as usize) % tokens.len()].clone();
        let n = Notification {
            id: ids.next(),
            batch_id: MessageId::NONE,
            conn_id: MessageId::NONE,
            domain: domain.clone(),
            binding: binding.clone(),
            recipient_given: None,
            push: PushRequest {
                token,
                topic: topic.clone(),
                push_type: Some(PushType::Alert),
                priority: Some(Priority::Immediate),
                expiration: None,
                collapse_id: None,
                apns_id: None,
                payload,
            },
            sender: sender.clone(),
            received_at: unix_now(),
        };
        engine.submit(n).await?;
    }
    if args.timeline {
        eprintln!(
            "{:>6} ms  all {} notifications handed to the engine",
            started.elapsed().as_millis(),
            args.count
        );
    }
    let stats = engine
        .stats(&args.domain)
        .context("the domain received nothing")?;
    let deadline = started + Duration::from_secs(args.timeout);
    while stats.finished() < args.count {
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let samples = match sampler {
        Some((stop, task)) => {
            // The sampler ends at the signal, or by itself when the signal's sender is gone.
            let _ = stop.send(());
            task.await.context("the stream sampler failed")?
        }
        None => StreamSamples {
            mean_in_flight: 0.0,
            max_stream_limit: 0,
            at_full_limit_per_second: None,
        },
    };
    let elapsed = started.elapsed();
    for e in logs.flush() {
        eprintln!("herald bench: {e}");
    }
    let delivered = stats.delivered.load(Ordering::Relaxed);
    let transient = stats.transient.load(Ordering::Relaxed);
    let permanent = stats.permanent.load(Ordering::Relaxed);
    let rate = delivered as f64 / elapsed.as_secs_f64();
    let invalid_count = invalid.0.lock().map(|v| v.len()).unwrap_or(0);
    let peak_rss_kib = peak_rss_kib();
    let queued = stats.active.load(Ordering::Relaxed) + stats.delayed.load(Ordering::Relaxed);
    let mut out = String::new();
    if args.json {
        let _ = writeln!(
            out,
            "{{\"domain\":{:?},\"count\":{},\"seconds\":{:.3},\"per_second\":{:.0},\"delivered\":{},\"transient\":{},\"permanent\":{},\"invalid_tokens\":{},\"queued\":{},\"peak_rss_kib\":{},\"mean_in_flight\":{:.0},\"max_stream_limit\":{},\"at_full_limit_per_second\":{}}}",
            args.domain,
            args.count,
            elapsed.as_secs_f64(),
            rate,
            delivered,
            transient,
            permanent,
            invalid_count,
            queued,
            peak_rss_kib.unwrap_or(0),
            samples.mean_in_flight,
            samples.max_stream_limit,
            samples
                .at_full_limit_per_second
                .map_or_else(|| "null".to_string(), |r| format!("{r:.0}"))
        );
    } else {
        let _ = writeln!(
            out,
            "{} notifications to {} in {:.3} s: {:.0} notifications/s",
            args.count,
            args.domain,
            elapsed.as_secs_f64(),
            rate
        );
        if let Some(r) = samples.at_full_limit_per_second {
            let _ = writeln!(
                out,
                "{r:.0} notifications/s while the connections carried their full {} streams",
                samples.max_stream_limit
            );
        }
        let _ = writeln!(
            out,
            "delivered {delivered}, transient {transient}, permanent {permanent}, invalid tokens {invalid_count}"
        );
        let mut failures: Vec<_> = stats.failures().into_iter().collect();
        failures.sort();
        for ((kind, reason), count) in failures {
            let _ = writeln!(out, "  {count:>8}  {kind} {reason}");
        }
    }
    super::print_stdout(&out)?;
    let short = shortfall(
        args.count,
        stats.finished(),
        delivered,
        transient,
        permanent,
    );
    for why in &short {
        eprintln!("herald bench: {why}");
    }
    Ok(if short.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What the stream sampler saw over a run.
struct StreamSamples {
    /// Mean streams in flight: how much of the server's concurrency the engine kept busy.
    mean_in_flight: f64,
    /// The largest sum of the connections' in-flight limits seen.
    max_stream_limit: usize,
    /// Notifications finished per second while the connections carried their full limits (see [`full_limit_rate`]).
    at_full_limit_per_second: Option<f64>,
}

/// One look at the domain's streams.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Sample {
    at: Duration,
    finished: u64,
    limit: usize,
}

/// Samples the domain's streams every 5 ms from `started` until `stop`. With `timeline`, prints a line to standard
/// error every 50 ms.
async fn sample_streams(
    stats: Arc<DomainStats>,
    started: Instant,
    count: u64,
    timeline: bool,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> StreamSamples {
    let (mut in_flight_sum, mut max_stream_limit) = (0u64, 0usize);
    let mut samples = Vec::new();
    let mut next_line = Duration::ZERO;
    let mut interval = tokio::time::interval(Duration::from_millis(5));
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = interval.tick() => {}
        }
        let in_flight = stats.in_flight.load(Ordering::Relaxed);
        let limit = stats.stream_limit.load(Ordering::Relaxed);
        let at = started.elapsed();
        let finished = stats.finished();
        in_flight_sum += in_flight as u64;
        max_stream_limit = max_stream_limit.max(limit);
        samples.push(Sample {
            at,
            finished,
            limit,
        });
        if timeline && at >= next_line {
            next_line = at + Duration::from_millis(50);
            eprintln!(
                "{:>6} ms  finished {:>8}  in flight {:>5}  limit {:>5}  connections {}",
                at.as_millis(),
                finished,
                in_flight,
                limit,
                stats.connections.load(Ordering::Relaxed)
            );
        }
    }
    StreamSamples {
        mean_in_flight: in_flight_sum as f64 / samples.len().max(1) as f64,
        max_stream_limit,
        at_full_limit_per_second: full_limit_rate(&samples, count),
    }
}

/// The rate at which notifications finished while the connections carried all they were allowed: from the first
/// sample at the run's largest summed limit (connections open, slow start over) to the last sample with more than
/// that limit still unfinished (after it, the connections cannot be full any more). This is the rate to set
/// against the bound of streams / round trip; the whole run's rate also pays for connecting and for the slow start.
/// `None` when that stretch is shorter than 100 ms, too short to time.
fn full_limit_rate(samples: &[Sample], count: u64) -> Option<f64> {
    let top = samples.iter().map(|s| s.limit).max().filter(|&l| l > 0)?;
    let first = samples.iter().find(|s| s.limit == top)?;
    let last = samples
        .iter()
        .rev()
        .find(|s| count.saturating_sub(s.finished) > top as u64)?;
    let span = last.at.checked_sub(first.at)?;
    if span < Duration::from_millis(100) {
        return None;
    }
    Some((last.finished - first.finished) as f64 / span.as_secs_f64())
}

fn make_payload(size: usize) -> Bytes {
    let head = "{\"aps\":{\"alert\":\"herald bench\"},\"pad\":\"";
    let tail = "\"}";
    let pad = size.saturating_sub(head.len() + tail.len());
    let mut s = String::with_capacity(size);
    s.push_str(head);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str(tail);
    Bytes::from(s)
}

/// Distinct 32-byte tokens from a fixed-seed generator, so runs are repeatable.
fn make_tokens(n: usize) -> Vec<DeviceToken> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .filter_map(|_| {
            let mut bytes = Vec::with_capacity(32);
            for _ in 0..4 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                bytes.extend_from_slice(&state.to_be_bytes());
            }
            DeviceToken::from_bytes(bytes).ok()
        })
        .collect()
}

/// The process's peak resident set size (Linux `VmHWM`), in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ms: u64, finished: u64, limit: usize) -> Sample {
        Sample {
            at: Duration::from_millis(ms),
            finished,
            limit,
        }
    }

    #[test]
    fn a_run_fails_unless_every_notification_was_delivered() {
        assert!(shortfall(100, 100, 100, 3, 0).is_empty());
        // Every one failed: finished, but nothing delivered (this used to exit 0).
        assert_eq!(
            shortfall(100, 100, 0, 0, 100),
            [
                "delivered 0 of 100 notifications: 100 failed permanently, 0 not finished (0 transient failure(s) on \
                 the way)"
            ]
        );
        // The timeout keeps its line, and the shortfall follows.
        assert_eq!(
            shortfall(100, 60, 50, 7, 10),
            [
                "timed out with 60 of 100 finished",
                "delivered 50 of 100 notifications: 10 failed permanently, 40 not finished (7 transient failure(s) \
                 on the way)"
            ]
        );
    }

    #[test]
    fn a_count_of_0_is_a_usage_error() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        use clap::Parser;
        let parse =
            |n: &str| Cli::try_parse_from(["bench", "-c", "x.conf", "--domain", "d", "-n", n]);
        let err = parse("0").err().expect("--count 0 is refused").to_string();
        assert!(err.contains("at least 1 notification"), "{err}");
        assert!(parse("x").is_err());
        assert_eq!(parse("1").unwrap().bench.count, 1);
    }

    #[test]
    fn the_full_limit_rate_leaves_out_the_ramp_and_the_tail() {
        // Slow start to 4,000 streams by 200 ms, then 100 per ms until fewer than 4,000 are left, then a fast tail.
        let samples = [
            sample(0, 0, 80),
            sample(100, 500, 1_000),
            sample(200, 3_000, 4_000),
            sample(300, 13_000, 4_000),
            sample(1_000, 83_000, 4_000),
            sample(1_050, 97_000, 4_000),
            sample(1_100, 100_000, 3_000),
        ];
        let rate = full_limit_rate(&samples, 100_000);
        assert_eq!(
            rate,
            Some(100_000.0),
            "80,000 finished in the 800 ms at full limit"
        );
    }

    #[test]
    fn no_full_limit_rate_when_the_stretch_is_too_short_or_nothing_was_allowed() {
        let short = [sample(0, 0, 100), sample(50, 10, 100), sample(90, 500, 100)];
        assert_eq!(full_limit_rate(&short, 1_000), None);
        let none = [sample(0, 0, 0), sample(500, 0, 0)];
        assert_eq!(full_limit_rate(&none, 1_000), None);
        assert_eq!(full_limit_rate(&[], 1_000), None);
    }
}
