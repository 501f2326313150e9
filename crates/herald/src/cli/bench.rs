//! `herald bench -c FILE --domain D -n N`: drives the delivery engine with generated notifications, without a
//! spool or a listener, and reports throughput and outcomes. Same engine, pools and connections as `serve`.

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
    /// How many notifications to send.
    #[arg(short = 'n', long, default_value_t = 100_000)]
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
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Also print, every 50 ms to standard error, the time since the start, notifications finished, streams in
    /// flight, the sum of the connections' in-flight limits and the connections open.
    #[arg(long)]
    pub timeline: bool,
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let config = match herald_conf::Config::load(&args.config) {
        Ok(c) => c,
        Err(diags) => {
            eprint!("{diags}");
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
    let (logs, heartbeat) = Logs::open(&config).context("opening logs")?;
    logs.spawn_maintenance(Duration::from_millis(200), heartbeat);
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
            let task = tokio::spawn(sample_streams(stats, started, args.timeline, stopped));
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
    let (mean_in_flight, max_stream_limit) = match sampler {
        Some((stop, task)) => {
            // The sampler ends at the signal, or by itself when the signal's sender is gone.
            let _ = stop.send(());
            task.await.context("the stream sampler failed")?
        }
        None => (0.0, 0),
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
    if args.json {
        println!(
            "{{\"domain\":{:?},\"count\":{},\"seconds\":{:.3},\"per_second\":{:.0},\"delivered\":{},\"transient\":{},\"permanent\":{},\"invalid_tokens\":{},\"queued\":{},\"peak_rss_kib\":{},\"mean_in_flight\":{:.0},\"max_stream_limit\":{}}}",
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
            mean_in_flight,
            max_stream_limit
        );
    } else {
        println!(
            "{} notifications to {} in {:.3} s: {:.0} notifications/s",
            args.count,
            args.domain,
            elapsed.as_secs_f64(),
            rate
        );
        println!(
            "delivered {delivered}, transient {transient}, permanent {permanent}, invalid tokens {invalid_count}"
        );
        let mut failures: Vec<_> = stats.failures().into_iter().collect();
        failures.sort();
        for ((kind, reason), count) in failures {
            println!("  {count:>8}  {kind} {reason}");
        }
    }
    if stats.finished() < args.count {
        eprintln!(
            "herald bench: timed out with {} of {} finished",
            stats.finished(),
            args.count
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Samples the domain's streams every 5 ms from `started` until `stop`: returns the mean streams in flight (how much
/// of the server's concurrency the engine kept busy) and the largest sum of the connections' in-flight limits seen.
/// With `timeline`, prints a line to standard error every 50 ms.
async fn sample_streams(
    stats: Arc<DomainStats>,
    started: Instant,
    timeline: bool,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> (f64, usize) {
    let (mut in_flight_sum, mut samples, mut max_stream_limit) = (0u64, 0u64, 0usize);
    let mut next_line = Duration::ZERO;
    let mut interval = tokio::time::interval(Duration::from_millis(5));
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = interval.tick() => {}
        }
        let in_flight = stats.in_flight.load(Ordering::Relaxed);
        let limit = stats.stream_limit.load(Ordering::Relaxed);
        in_flight_sum += in_flight as u64;
        samples += 1;
        max_stream_limit = max_stream_limit.max(limit);
        let at = started.elapsed();
        if timeline && at >= next_line {
            next_line = at + Duration::from_millis(50);
            eprintln!(
                "{:>6} ms  finished {:>8}  in flight {:>5}  limit {:>5}  connections {}",
                at.as_millis(),
                stats.finished(),
                in_flight,
                limit,
                stats.connections.load(Ordering::Relaxed)
            );
        }
    }
    (
        in_flight_sum as f64 / samples.max(1) as f64,
        max_stream_limit,
    )
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
