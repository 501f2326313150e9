//! `herald demo`: herald at work in one command. It makes a test PKI in a scratch directory, starts the APNs
//! simulator with some unregistered and bad tokens, writes an ordinary configuration with three apps (HTTP/2 with
//! a provider token, HTTP/2 with a certificate, the legacy binary protocol), starts the gateway from it, sends
//! notifications through the REST API (with `herald send`'s client) and MCMT messages over SMTP, waits for every
//! final outcome and checks each one: every deliverable notification delivered exactly once, each unregistered
//! or bad token failed with its reason and listed as invalid, each malformed token refused at the door.

use herald::queue::stats::FailureKind;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use herald::demo::config::{self, DemoPaths};
use herald::demo::plan::{APPS, AppOutcome, Door, Expect, Observed, Plan, Planned, verify};
use herald::demo::smtp_client::SmtpClient;
use herald::server::Server;
use herald_sim::{Pki, SimConfig, SimHandle, Simulator};

use super::send::client::{self as rest, Outcome, PushClient, Request};
use super::send::input::{Item, alert_payload};
use super::send::progress_bar;

const API_KEY: &str = "demo-key";
/// Notifications per REST request.
const BATCH: usize = 500;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Notifications to send through the REST API.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    pub count: u64,
    /// MCMT messages to send over SMTP.
    #[arg(
        long,
        default_value_t = 100,
        value_parser = clap::value_parser!(u64).range(0..=1_000_000),
        conflicts_with = "cluster"
    )]
    pub smtp_count: u64,
    /// Scratch directory for the PKI, configuration, spool and logs (default: a new temporary directory, kept
    /// so the logs can be read afterwards). The spool and logs an earlier demo left there are cleared first; a
    /// directory with a herald.conf, pki/, spool or logs that no demo wrote is refused (exit 2).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep herald and the simulator running this many seconds after the run has been checked and its table and
    /// result printed (Ctrl-C ends it early), to look at the web dashboard; the exit code is the run's. Not with
    /// `--cluster`, whose nodes serve no dashboard.
    #[arg(long, default_value_t = 0, conflicts_with = "cluster")]
    pub linger: u64,
    /// Scale-out instead: a three-server NATS cluster, three herald nodes sharing one JetStream stream and the
    /// simulator; one node is killed with SIGKILL halfway (docs/scale-out.md). Needs `nats-server` on PATH. Sends
    /// over REST only (`--count`), so `--smtp-count` and `--linger` are refused with it.
    #[arg(long)]
    pub cluster: bool,
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    herald::logs::stderr::init("error");
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.canonicalize()
                .with_context(|| format!("resolving {}", d.display()))?
        }
        None => tempfile::Builder::new()
            .prefix("herald-demo-")
            .tempdir()
            .context("creating a scratch directory")?
            .keep(),
    };
    if args.cluster {
        return super::demo_cluster::run(args.count, dir);
    }
    if let Err(e) = clear_previous_run(&dir) {
        if let Some(refused) = e.downcast_ref::<DirRefused>() {
            eprintln!("herald: error: {refused}");
            return Ok(ExitCode::from(2));
        }
        return Err(e);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    let plan = Plan::new(args.count as usize, args.smtp_count as usize);
    runtime.block_on(demo(dir, plan, args.linger))
}

/// The first line of the configuration a demo writes: what marks a directory as a demo's own.
const DEMO_CONFIG_HEADER: &str = "# herald demo:";

/// Whether `config` is a configuration written by `herald demo`.
fn is_demo_config(config: &Path) -> bool {
    std::fs::read_to_string(config).is_ok_and(|text| text.starts_with(DEMO_CONFIG_HEADER))
}

/// Whether `pki` is a test PKI a demo wrote: its `pki.json` manifest (which every generated PKI has) names a
/// client certificate for each demo app's topic and for nothing else.
fn is_demo_pki(pki: &Path) -> bool {
    herald_sim::Pki::load_manifest(pki).is_ok_and(|m| {
        m.clients.keys().map(String::as_str).collect::<HashSet<_>>()
            == APPS.iter().map(|a| a.topic).collect::<HashSet<_>>()
    })
}

/// Why the demo will not use a `--dir`: it holds files the demo would overwrite or remove and did not write.
#[derive(Debug, thiserror::Error)]
enum DirRefused {
    #[error(
        "{config}: a configuration herald demo did not write (its first line is not {DEMO_CONFIG_HEADER:?}): refusing to overwrite it; give --dir an empty directory or one an earlier demo used"
    )]
    ForeignConfig { config: PathBuf },
    #[error(
        "{pki}: not a test PKI herald demo wrote (no pki.json naming the demo apps' certificates): refusing to overwrite it; give --dir an empty directory or one an earlier demo used"
    )]
    ForeignPki { pki: PathBuf },
    #[error(
        "{dir}: holds {left}, and no configuration written by herald demo ({config} missing or not a demo's): refusing to touch it; give --dir an empty directory or one an earlier demo used"
    )]
    ForeignState {
        dir: PathBuf,
        left: String,
        config: PathBuf,
    },
    #[error(
        "{spool}: a running herald holds this spool (another demo in {dir}?); stop it or use another --dir"
    )]
    Running { spool: PathBuf, dir: PathBuf },
}

/// Clears what an earlier demo run left in `dir` and a new run would read back: its spool (spooled
/// notifications, stored outcomes, the invalid-token list) and its logs (which would count twice). The test PKI
/// and the configuration are written anew by every run. A `dir` holding a `herald.conf` or a `pki/` that no demo
/// wrote is refused ([`DirRefused`]), untouched, since the run would overwrite them; so is one that holds a spool
/// or logs but no demo's `herald.conf`, and one whose spool a running herald (another demo, still lingering)
/// holds.
fn clear_previous_run(dir: &Path) -> anyhow::Result<()> {
    let paths = DemoPaths::new(dir);
    if paths.config.symlink_metadata().is_ok() && !is_demo_config(&paths.config) {
        return Err(DirRefused::ForeignConfig {
            config: paths.config,
        }
        .into());
    }
    let pki = dir.join("pki");
    let pki_is_empty = std::fs::read_dir(&pki).is_ok_and(|mut d| d.next().is_none());
    if pki.symlink_metadata().is_ok() && !pki_is_empty && !is_demo_pki(&pki) {
        return Err(DirRefused::ForeignPki { pki }.into());
    }
    let left: Vec<&Path> = [&paths.spool, &paths.mainlog, &paths.apnlog]
        .into_iter()
        .map(PathBuf::as_path)
        .filter(|p| p.symlink_metadata().is_ok())
        .collect();
    if left.is_empty() {
        return Ok(());
    }
    if !is_demo_config(&paths.config) {
        return Err(DirRefused::ForeignState {
            dir: dir.to_owned(),
            left: left
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" and "),
            config: paths.config.clone(),
        }
        .into());
    }
    if let Ok(lock) = std::fs::File::open(paths.spool.join("LOCK")) {
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(DirRefused::Running {
                    spool: paths.spool.clone(),
                    dir: dir.to_owned(),
                }
                .into());
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| {
                    format!("checking whether herald runs on {}", paths.spool.display())
                });
            }
        }
    }
    stage(&format!(
        "clearing the spool and logs of an earlier run in {}",
        dir.display()
    ));
    for path in left {
        let removed = if path.symlink_metadata().is_ok_and(|m| m.is_dir()) {
            std::fs::remove_dir_all(path)
        } else {
            std::fs::remove_file(path)
        };
        removed.with_context(|| format!("removing {} of an earlier demo run", path.display()))?;
    }
    Ok(())
}

fn stage(text: &str) {
    eprintln!("herald demo: {text}");
}

async fn demo(dir: PathBuf, plan: Plan, linger: u64) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    stage(&format!("scratch directory {}", dir.display()));
    let topics: Vec<String> = APPS.iter().map(|a| a.topic.to_string()).collect();
    let pki = Pki::generate(&dir.join("pki"), &topics).context("making the test PKI")?;

    let mut sim_config = SimConfig::from_pki(&pki.manifest).context("configuring the simulator")?;
    sim_config.scenario.unregistered = plan.unregistered();
    sim_config.scenario.bad = plan.bad();
    sim_config.record_memory_limit = record_limit(&plan);
    let sim = Simulator::start(sim_config)
        .await
        .context("starting the APNs simulator")?;
    stage(&format!(
        "APNs simulator on {} (HTTP/2) and {} (binary)",
        sim.addrs.h2, sim.addrs.binary
    ));

    let paths = DemoPaths::new(&dir);
    config::write(
        &paths,
        &pki.manifest,
        sim.addrs.h2,
        sim.addrs.binary,
        API_KEY,
    )?;
    let server = Server::start(&paths.config)
        .await
        .context("starting herald")?;
    let addrs = server.addrs().await;
    let (Some(http), Some(esmtp)) = (addrs.http.first().copied(), addrs.esmtp.first().copied())
    else {
        anyhow::bail!("the demo configuration should have opened an http and an esmtp listener");
    };
    stage(&format!(
        "herald listening on http://{http} (REST) and {esmtp} (SMTP), configuration {}",
        paths.config.display()
    ));
    stage(&format!(
        "web dashboard: http://{http}/dashboard/ (log in with the API key {API_KEY:?})"
    ));

    let result = drive(&server, &sim, &plan, http, esmtp).await;
    // The run ends here: lingering is not part of it.
    let elapsed = started.elapsed();
    let code = result.map(|seen| report(&plan, &seen, &paths, elapsed));
    if linger > 0 {
        if let Err(e) = &code {
            stage(&format!("the run failed: {e:#}"));
        }
        linger_for(Duration::from_secs(linger), http).await;
    }
    server.shutdown(Duration::from_secs(5)).await;
    sim.shutdown().await;
    code
}

/// How many delivered notifications the simulator keeps in memory for the check: twice what the plan sends
/// (its default at the least), so that every deliverable notification is still there to be checked, even in a run
/// that delivers each one twice. Each kept notification costs about half a kilobyte while the simulator runs, and
/// as much again while the check reads them: some 10 GB at the largest `--count`.
fn record_limit(plan: &Plan) -> usize {
    (plan.rest.len() + plan.smtp.len())
        .saturating_mul(2)
        .max(herald_sim::config::DEFAULT_RECORD_MEMORY_LIMIT)
}

/// Prints the outcome table, where the logs are and the result line (with `elapsed`, the time the run took); the
/// exit code says whether every outcome is the expected one.
fn report(plan: &Plan, seen: &Observed, paths: &DemoPaths, elapsed: Duration) -> ExitCode {
    use std::fmt::Write as _;
    let problems = verify(plan, seen);
    let mut out = String::new();
    summary_table(&mut out, plan, seen);
    let _ = writeln!(
        out,
        "logs: mainlog {}, apn_logger {}; configuration {}; spool {}",
        paths.mainlog.display(),
        paths.apnlog.display(),
        paths.config.display(),
        paths.spool.display()
    );
    let total = plan.rest.len() + plan.smtp.len();
    let elapsed = elapsed.as_secs_f64();
    let code = if problems.is_empty() {
        let _ = writeln!(
            out,
            "result: every outcome is the expected one ({total} notifications, {elapsed:.1} s)"
        );
        ExitCode::SUCCESS
    } else {
        let _ = writeln!(out, "result: {} unexpected outcomes:", problems.len());
        for p in problems.iter().take(50) {
            let _ = writeln!(out, "  {p}");
        }
        ExitCode::FAILURE
    };
    // Shown now, not when the demo exits after lingering. A reader that went away is no reason to change the
    // verdict; any other failure to write is said on standard error.
    if let Err(e) = super::print_stdout(&out) {
        eprintln!("herald demo: {e:#}");
    }
    code
}

/// Keeps herald and the simulator up for `linger` after the run was reported, to look at the web dashboard on
/// `http`; Ctrl-C (or SIGTERM) ends it early.
async fn linger_for(linger: Duration, http: std::net::SocketAddr) {
    // Installed before saying how to stop: a Ctrl-C from then on ends the lingering rather than the process.
    let stop = stop_signal();
    stage(&format!(
        "lingering for {} s: herald and the simulator stay up, web dashboard http://{http}/dashboard/; Ctrl-C stops them sooner",
        linger.as_secs()
    ));
    tokio::select! {
        _ = tokio::time::sleep(linger) => {}
        _ = stop => {}
    }
    stage("stopping herald and the simulator");
}

/// Completes at Ctrl-C (SIGINT) or SIGTERM. The handlers are installed by this call, not at the first poll.
fn stop_signal() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            return Box::pin(async move {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            });
        }
    }
    Box::pin(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// Sends everything, waits for the outcomes and collects what herald and the simulator report.
async fn drive(
    server: &Server,
    sim: &SimHandle,
    plan: &Plan,
    http: std::net::SocketAddr,
    esmtp: std::net::SocketAddr,
) -> anyhow::Result<Observed> {
    let rest = send_rest(plan, http).await?;
    let smtp = send_smtp(plan, esmtp).await?;

    let mut accepted = vec![0u64; APPS.len()];
    for (p, door) in plan
        .rest
        .iter()
        .zip(&rest)
        .chain(plan.smtp.iter().zip(&smtp))
    {
        if *door == Door::Accepted {
            accepted[p.app] += 1;
        }
    }
    wait_for_outcomes(server, &accepted).await;
    let deliverable = plan.all().filter(|p| p.expect == Expect::Deliver).count();
    let record = wait_for_record(sim, deliverable).await;
    let invalid = invalid_tokens(http).await?;

    let mut apps = Vec::new();
    for (a, app) in APPS.iter().enumerate() {
        let mut o = AppOutcome {
            accepted: accepted[a],
            ..AppOutcome::default()
        };
        if let Some(s) = server.engine.stats(app.domain) {
            o.delivered = s.delivered.load(Ordering::Relaxed);
            o.transient = s.transient.load(Ordering::Relaxed);
            o.permanent = s.permanent.load(Ordering::Relaxed);
            for ((kind, reason), n) in s.failures() {
                if kind == FailureKind::Permanent {
                    o.permanent_by_reason.insert(reason, n);
                }
            }
        }
        if let Some(lists) = &invalid.per_app {
            o.invalid_tokens = lists[a].clone();
        }
        o.refused = plan
            .rest
            .iter()
            .zip(&rest)
            .chain(plan.smtp.iter().zip(&smtp))
            .filter(|(p, d)| p.app == a && matches!(d, Door::Refused(_)))
            .count() as u64;
        apps.push(o);
    }
    Ok(Observed {
        rest,
        smtp,
        apps,
        record,
        invalid_per_app: invalid.per_app.is_some(),
        invalid_total: invalid.total,
    })
}

/// Invalid tokens as an operator reads them from the http listener.
struct InvalidTokens {
    /// Per app (`GET /api/v1/tokens/invalid?domain=`), in [`APPS`] order; `None` when herald has no such list.
    per_app: Option<Vec<HashSet<String>>>,
    /// `herald_invalid_tokens_total` from `GET /metrics`.
    total: Option<u64>,
}

#[derive(serde::Deserialize)]
struct InvalidList {
    tokens: Vec<InvalidEntry>,
}

#[derive(serde::Deserialize)]
struct InvalidEntry {
    token: String,
}

async fn invalid_tokens(http: std::net::SocketAddr) -> anyhow::Result<InvalidTokens> {
    let client = reqwest::Client::new();
    let get = |path: String| {
        client
            .get(format!("http://{http}{path}"))
            .bearer_auth(API_KEY)
            .send()
    };
    let mut per_app = Some(Vec::new());
    for app in APPS {
        let answer = get(format!("/api/v1/tokens/invalid?domain={}", app.domain))
            .await
            .context("listing invalid tokens")?;
        if answer.status() == reqwest::StatusCode::NOT_FOUND {
            per_app = None;
            break;
        }
        let list: InvalidList = answer
            .error_for_status()
            .context("listing invalid tokens")?
            .json()
            .await
            .context("reading the list of invalid tokens")?;
        if let Some(v) = per_app.as_mut() {
            v.push(list.tokens.into_iter().map(|e| e.token).collect());
        }
    }
    let metrics = get("/metrics".to_owned())
        .await
        .context("reading /metrics")?
        .text()
        .await
        .context("reading /metrics")?;
    let total = metrics
        .lines()
        .find_map(|l| l.strip_prefix("herald_invalid_tokens_total "))
        .and_then(|n| n.trim().parse().ok());
    Ok(InvalidTokens { per_app, total })
}

/// Sends the REST part: each app's notifications through `herald send`'s client, the apps side by side.
async fn send_rest(plan: &Plan, http: std::net::SocketAddr) -> anyhow::Result<Vec<Door>> {
    stage(&format!(
        "sending {} notifications through the REST API",
        plan.rest.len()
    ));
    let client = PushClient::new(&format!("http://{http}"), Some(API_KEY.to_owned()))?;
    let bar = progress_bar(plan.rest.len() as u64, "REST");
    let counters: Arc<Vec<AtomicUsize>> =
        Arc::new(APPS.iter().map(|_| AtomicUsize::new(0)).collect());
    let defaults = Request {
        payload: Some(alert_payload("Hello from the herald demo")),
        ..Request::default()
    };
    let mut runs = tokio::task::JoinSet::new();
    for (a, app) in APPS.iter().enumerate() {
        let indexes: Vec<usize> = (0..plan.rest.len())
            .filter(|&i| plan.rest[i].app == a)
            .collect();
        let items: Vec<Item> = indexes
            .iter()
            .map(|&i| Item::plain(plan.rest[i].token.clone()))
            .collect();
        let (client, defaults, counters, bar) = (
            client.clone(),
            defaults.clone(),
            counters.clone(),
            bar.clone(),
        );
        runs.spawn(async move {
            let progress = move |n: usize| {
                counters[a].store(n, Ordering::Relaxed);
                bar.set_position(
                    counters
                        .iter()
                        .map(|c| c.load(Ordering::Relaxed))
                        .sum::<usize>() as u64,
                );
            };
            let report =
                rest::send_all(&client, app.domain, &defaults, items, BATCH, 2, progress).await;
            (indexes, report)
        });
    }
    let mut doors = vec![Door::Refused("not sent".into()); plan.rest.len()];
    let mut failures = Vec::new();
    while let Some(joined) = runs.join_next().await {
        let (indexes, report) = joined.context("a REST sender stopped")?;
        for (i, outcome) in indexes.into_iter().zip(report.outcomes) {
            doors[i] = match outcome {
                Outcome::Accepted(_) => Door::Accepted,
                Outcome::Rejected(reason) => Door::Refused(reason),
                Outcome::Failed(reason) => {
                    failures.push(reason.clone());
                    Door::Refused(reason)
                }
            };
        }
    }
    bar.finish_and_clear();
    if let Some(first) = failures.first() {
        anyhow::bail!(
            "{} REST notifications could not be sent: {first}",
            failures.len()
        );
    }
    Ok(doors)
}

/// The MCMT message for one planned notification (docs/momentum-compat.md#mcmt-push-part).
fn mcmt_message(p: &Planned, n: usize) -> (String, String) {
    let app = &APPS[p.app];
    let to = format!("demo-{n}@{}", app.domain);
    let message = format!(
        "From: demo@herald.example\nTo: {to}\nSubject: herald demo {n}\nMIME-Version: 1.0\n\
         Content-Type: multipart/vnd.msys.mcmt; boundary=\"HERALD_DEMO\"\n\n\
         --HERALD_DEMO\nContent-Type: message/vnd.msys.apn\n\n\
         X-Device-Token: {token}\n\n\
         {{\"aps\":{{\"alert\":\"Hello over SMTP\"}},\"n\":{n}}}\n--HERALD_DEMO--\n",
        token = p.token
    );
    (to, message)
}

/// Sends the SMTP part over one session.
async fn send_smtp(plan: &Plan, esmtp: std::net::SocketAddr) -> anyhow::Result<Vec<Door>> {
    stage(&format!(
        "sending {} MCMT messages over SMTP",
        plan.smtp.len()
    ));
    let bar = progress_bar(plan.smtp.len() as u64, "SMTP");
    let mut client = SmtpClient::connect(esmtp, "demo.herald.example").await?;
    let mut doors = Vec::with_capacity(plan.smtp.len());
    for (n, p) in plan.smtp.iter().enumerate() {
        let (to, message) = mcmt_message(p, n);
        let reply = client.send("demo@herald.example", &to, &message).await?;
        doors.push(if reply.code == 250 {
            Door::Accepted
        } else {
            Door::Refused(reply.to_string())
        });
        bar.inc(1);
    }
    client.quit().await?;
    bar.finish_and_clear();
    Ok(doors)
}

/// Waits until every accepted notification has a final outcome (delivered or failed), or gives up after a
/// deadline that grows with the traffic; [`verify`] then names whatever is missing.
async fn wait_for_outcomes(server: &Server, accepted: &[u64]) {
    let total: u64 = accepted.iter().sum();
    stage(&format!(
        "waiting for the final outcome of {total} notifications"
    ));
    let bar = progress_bar(total, "delivery");
    let deadline = Instant::now() + Duration::from_secs(60) + Duration::from_millis(total);
    loop {
        let finished: u64 = APPS
            .iter()
            .zip(accepted)
            .map(|(app, &want)| {
                server
                    .engine
                    .stats(app.domain)
                    .map(|s| s.finished())
                    .unwrap_or(0)
                    .min(want)
            })
            .sum();
        bar.set_position(finished);
        if finished >= total || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bar.finish_and_clear();
}

/// The simulator's delivery record by token: how often, and with which topic. Read once the simulator has
/// recorded as many notifications as were deliverable (or after a deadline), since a copy of the record is
/// costly in a large run.
async fn wait_for_record(sim: &SimHandle, deliverable: usize) -> HashMap<String, (usize, String)> {
    sim.wait_for_records(deliverable as u64, Duration::from_secs(10))
        .await;
    let mut by_token: HashMap<String, (usize, String)> = HashMap::new();
    for r in sim.record() {
        let e = by_token.entry(r.token).or_insert((0, r.topic));
        e.0 += 1;
    }
    by_token
}

/// The per-app table: accepted, delivered, transient, permanent (by reason), invalid tokens, refused at the door.
fn summary_table(out: &mut String, plan: &Plan, seen: &Observed) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "{:<22} {:<24} {:>8} {:>9} {:>9} {:>9} {:>8} {:>8}",
        "app", "protocol", "accepted", "delivered", "transient", "permanent", "invalid", "refused"
    );
    let mut totals = AppOutcome::default();
    for (app, o) in APPS.iter().zip(&seen.apps) {
        let _ = writeln!(
            out,
            "{:<22} {:<24} {:>8} {:>9} {:>9} {:>9} {:>8} {:>8}",
            app.domain,
            app.label(),
            o.accepted,
            o.delivered,
            o.transient,
            o.permanent,
            if seen.invalid_per_app {
                o.invalid_tokens.len().to_string()
            } else {
                "-".to_owned()
            },
            o.refused
        );
        for (reason, n) in &o.permanent_by_reason {
            let _ = writeln!(out, "{:<22}   permanent: {n} {reason}", "");
        }
        totals.accepted += o.accepted;
        totals.delivered += o.delivered;
        totals.transient += o.transient;
        totals.permanent += o.permanent;
        totals.refused += o.refused;
    }
    let invalid = match seen.invalid_total {
        Some(n) => n.to_string(),
        None => "-".to_owned(),
    };
    let _ = writeln!(
        out,
        "{:<22} {:<24} {:>8} {:>9} {:>9} {:>9} {:>8} {:>8}",
        "total",
        format!("{} REST + {} SMTP", plan.rest.len(), plan.smtp.len()),
        totals.accepted,
        totals.delivered,
        totals.transient,
        totals.permanent,
        invalid,
        totals.refused
    );
    let smtp_refused = seen
        .smtp
        .iter()
        .filter(|d| matches!(d, Door::Refused(_)))
        .count();
    let rest_refused = seen
        .rest
        .iter()
        .filter(|d| matches!(d, Door::Refused(_)))
        .count();
    let _ = writeln!(
        out,
        "refused at the door (malformed tokens): {rest_refused} over REST, {smtp_refused} over SMTP"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_configuration_carries_the_demo_header() {
        let dir = tempfile::tempdir().unwrap();
        let topics: Vec<String> = APPS.iter().map(|a| a.topic.to_string()).collect();
        let pki = Pki::generate(&dir.path().join("pki"), &topics).unwrap();
        let paths = DemoPaths::new(dir.path());
        let addr: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        config::write(&paths, &pki.manifest, addr, addr, API_KEY).unwrap();
        assert!(is_demo_config(&paths.config));
    }

    #[test]
    fn an_earlier_run_s_spool_and_logs_are_cleared_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let paths = DemoPaths::new(dir.path());
        std::fs::create_dir_all(paths.spool.join("outcomes")).unwrap();
        std::fs::write(paths.spool.join("invalid-tokens.jsonl"), "{}\n").unwrap();
        std::fs::create_dir_all(paths.mainlog.parent().unwrap()).unwrap();
        std::fs::write(&paths.mainlog, "R\n").unwrap();
        std::fs::write(&paths.apnlog, "D\n").unwrap();
        std::fs::write(&paths.config, format!("{DEMO_CONFIG_HEADER} …\n")).unwrap();
        let notes = dir.path().join("logs/notes.txt");
        std::fs::write(&notes, "mine").unwrap();

        clear_previous_run(dir.path()).unwrap();
        assert!(!paths.spool.exists());
        assert!(!paths.mainlog.exists() && !paths.apnlog.exists());
        assert_eq!(std::fs::read_to_string(&notes).unwrap(), "mine");
        assert!(paths.config.exists());
        // Nothing left to clear: a second call does nothing.
        clear_previous_run(dir.path()).unwrap();
    }

    #[test]
    fn a_directory_with_a_spool_no_demo_wrote_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let paths = DemoPaths::new(dir.path());
        std::fs::create_dir_all(&paths.spool).unwrap();
        std::fs::write(paths.spool.join("precious"), "keep").unwrap();
        let err = clear_previous_run(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("no configuration written by herald demo"),
            "{err}"
        );
        assert!(err.contains(&paths.spool.display().to_string()), "{err}");
        assert!(err.contains("not a demo's): refusing to touch it"), "{err}");
        std::fs::write(&paths.config, "spool_dir = \"/elsewhere\"\n").unwrap();
        assert!(clear_previous_run(dir.path()).is_err());
        assert_eq!(
            std::fs::read_to_string(paths.spool.join("precious")).unwrap(),
            "keep"
        );
    }

    #[test]
    fn the_simulator_keeps_every_notification_of_a_large_run() {
        for (count, smtp) in [(120_000, 0), (1_000_000, 100), (10_000_000, 1_000_000)] {
            let plan = Plan::new(count, smtp);
            assert!(
                record_limit(&plan) >= 2 * (count + smtp),
                "{count} + {smtp}"
            );
        }
        assert_eq!(
            record_limit(&Plan::new(3, 0)),
            herald_sim::config::DEFAULT_RECORD_MEMORY_LIMIT
        );
    }

    #[test]
    fn a_configuration_no_demo_wrote_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let paths = DemoPaths::new(dir.path());
        std::fs::write(&paths.config, "my production config\n").unwrap();
        let err = clear_previous_run(dir.path()).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<DirRefused>(),
                Some(DirRefused::ForeignConfig { .. })
            ),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains(&paths.config.display().to_string()), "{text}");
        assert!(text.contains("refusing to overwrite it"), "{text}");
        assert_eq!(
            std::fs::read_to_string(&paths.config).unwrap(),
            "my production config\n"
        );
    }

    #[test]
    fn a_pki_no_demo_wrote_is_refused_and_a_demo_s_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        // Empty: nothing to overwrite.
        std::fs::create_dir_all(&pki).unwrap();
        clear_previous_run(dir.path()).unwrap();
        std::fs::write(pki.join("ca.pem"), "mine").unwrap();
        let err = clear_previous_run(dir.path()).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<DirRefused>(),
                Some(DirRefused::ForeignPki { .. })
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains(&pki.display().to_string()),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(pki.join("ca.pem")).unwrap(), "mine");
        // A PKI of other topics is not the demo's either.
        let other = dir.path().join("other");
        Pki::generate(&other.join("pki"), &["com.example.mine".to_owned()]).unwrap();
        assert!(clear_previous_run(&other).is_err());
        // The PKI and configuration a demo writes.
        let ours = dir.path().join("ours");
        let topics: Vec<String> = APPS.iter().map(|a| a.topic.to_string()).collect();
        let generated = Pki::generate(&ours.join("pki"), &topics).unwrap();
        clear_previous_run(&ours).unwrap();
        let addr: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        config::write(
            &DemoPaths::new(&ours),
            &generated.manifest,
            addr,
            addr,
            API_KEY,
        )
        .unwrap();
        clear_previous_run(&ours).unwrap();
    }

    #[test]
    fn a_spool_a_running_herald_holds_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let paths = DemoPaths::new(dir.path());
        std::fs::create_dir_all(&paths.spool).unwrap();
        std::fs::write(&paths.config, format!("{DEMO_CONFIG_HEADER} …\n")).unwrap();
        let lock = std::fs::File::create(paths.spool.join("LOCK")).unwrap();
        lock.lock().unwrap();
        let err = clear_previous_run(dir.path()).unwrap_err().to_string();
        assert!(err.contains("a running herald holds this spool"), "{err}");
        assert!(paths.spool.exists());
        drop(lock);
        clear_previous_run(dir.path()).unwrap();
        assert!(!paths.spool.exists());
    }
}
