//! `herald sim`: run the APNs simulator, or write a test PKI for it (`herald sim pki DIR`).
//!
//! `herald sim --pki DIR [flags]` serves HTTP/2, binary, feedback, admin, channel management and broadcast ports
//! and, once ready, prints exactly one JSON line on stdout — `{"h2":"127.0.0.1:P1","binary":"127.0.0.1:P2",
//! "feedback":"127.0.0.1:P3","admin":"127.0.0.1:P4","management":"127.0.0.1:P5","broadcast":"127.0.0.1:P6"}` —
//! then serves until killed. Diagnostics go to stderr. `--listen-ip` places every port but the admin one, which
//! `--admin-ip` places (127.0.0.1 by default: the admin API has no authentication).

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use herald_sim::{AuthPolicy, Environment, Pki, Scenario, SimConfig, Simulator, StreamOverrun};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SimArgs {
    #[command(subcommand)]
    command: Option<SimCommand>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum SimCommand {
    /// Write a test PKI: CA, server certificate, client certificates per topic, a .p8 key, and DIR/pki.json.
    Pki(PkiArgs),
}

#[derive(Debug, Args)]
struct PkiArgs {
    /// Directory to write into (created if missing).
    dir: PathBuf,
    /// A topic (bundle id) to issue client certificates for; repeatable. Default: com.example.herald.
    #[arg(long = "topic")]
    topics: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum EnvArg {
    Production,
    Sandbox,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AuthArg {
    /// Client certificate or provider token on every request, as APNs.
    Required,
    /// Testing aid (h2load): accept requests without `authorization` on connections without a certificate.
    None,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OverrunArg {
    /// RST_STREAM(REFUSED_STREAM) for the stream; the connection carries on.
    Refuse,
    /// GOAWAY (PROTOCOL_ERROR, "Maximum active streams violated for this endpoint."), then close.
    Goaway,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The PKI directory written by `herald sim pki` (its pki.json is read).
    #[arg(long)]
    pki: Option<PathBuf>,
    /// The address of the APNs-facing ports (HTTP/2, binary, feedback, management, broadcast).
    #[arg(long, default_value = "127.0.0.1")]
    listen_ip: IpAddr,
    /// The address of the admin port only. The admin API has no authentication (it serves the record and changes
    /// token states, GOAWAY and pace), so it stays on 127.0.0.1 unless this says otherwise, whatever --listen-ip is.
    #[arg(long, default_value = "127.0.0.1")]
    admin_ip: IpAddr,
    /// 0 = ephemeral.
    #[arg(long, default_value_t = 0)]
    h2_port: u16,
    #[arg(long, default_value_t = 0)]
    binary_port: u16,
    #[arg(long, default_value_t = 0)]
    feedback_port: u16,
    #[arg(long, default_value_t = 0)]
    admin_port: u16,
    /// Channel management (`/1/apps/<bundle>/channels`).
    #[arg(long, default_value_t = 0)]
    management_port: u16,
    /// Broadcast sends (`/4/broadcasts/apps/<bundle>`).
    #[arg(long, default_value_t = 0)]
    broadcast_port: u16,
    /// A JSON scenario file (see herald-sim's scenario module); the flags below override it.
    #[arg(long)]
    scenario: Option<PathBuf>,
    #[arg(long, value_enum)]
    environment: Option<EnvArg>,
    #[arg(long, value_enum)]
    auth: Option<AuthArg>,
    /// SETTINGS_MAX_CONCURRENT_STREAMS once authenticated (default 1000).
    #[arg(long)]
    max_streams: Option<u32>,
    /// Drop the stream limit to 1 after a rejection and restore it after a success.
    #[arg(long)]
    choppy_streams: bool,
    /// What a stream beyond the acknowledged stream limit gets (default refuse).
    #[arg(long, value_enum)]
    stream_overrun: Option<OverrunArg>,
    /// Serve the HTTP/2 settings observed from APNs: stream and connection windows 65535, header lists of at most
    /// 8000 bytes (the three flags below override it).
    #[arg(long)]
    apple_settings: bool,
    /// SETTINGS_INITIAL_WINDOW_SIZE, each stream's receive window (default 1048576).
    #[arg(long)]
    initial_window_size: Option<u32>,
    /// The connection's receive window, at least 65535 (default 8388608).
    #[arg(long)]
    connection_window_size: Option<u32>,
    /// SETTINGS_MAX_HEADER_LIST_SIZE (default 16384).
    #[arg(long)]
    max_header_list_size: Option<u32>,
    /// Seed of the scenario's random choices.
    #[arg(long)]
    seed: Option<u64>,
    /// A device token (hex) that is unregistered; repeatable.
    #[arg(long = "unregistered")]
    unregistered: Vec<String>,
    /// A device token (hex) that is bad; repeatable.
    #[arg(long = "bad-token")]
    bad: Vec<String>,
    /// Probability of 500 InternalServerError per valid request.
    #[arg(long)]
    error_500_rate: Option<f64>,
    /// Probability of 503 ServiceUnavailable per valid request.
    #[arg(long)]
    error_503_rate: Option<f64>,
    /// Probability of 429 TooManyRequests per valid request.
    #[arg(long)]
    error_429_rate: Option<f64>,
    /// Probability of dropping the connection per valid request.
    #[arg(long)]
    drop_rate: Option<f64>,
    /// Response latency in milliseconds, from the request's arrival to its answer, kept to a fraction of a
    /// millisecond (changeable while running: admin `POST /pace`).
    #[arg(long)]
    latency_ms: Option<u64>,
    /// Random extra latency, 0 to this many milliseconds, per answer.
    #[arg(long)]
    latency_jitter_ms: Option<u64>,
    /// Process at most this many HTTP/2 requests per second over all connections; the others wait for their turn
    /// (answers slow down, as at a busy APNs; no 429). 0 = no limit. Changeable while running: admin `POST /pace`.
    #[arg(long)]
    rate: Option<u64>,
    /// GOAWAY (reason Shutdown) after this many requests on a connection.
    #[arg(long)]
    goaway_every: Option<u64>,
    /// Answer every connection's first request with GOAWAY (nothing processed) and close: a server that takes
    /// connections and refuses all work on them.
    #[arg(long)]
    goaway_first_request: bool,
    /// Close connections idle for this many seconds (GOAWAY reason IdleTimeout).
    #[arg(long)]
    idle_timeout: Option<u64>,
    /// Append every accepted notification to FILE as JSON lines.
    #[arg(long)]
    record: Option<PathBuf>,
    /// Keep the record in memory too (served at admin GET /record).
    #[arg(long)]
    record_in_memory: bool,
    /// The most notifications kept in memory; beyond, the oldest are dropped and counted (default 100000).
    #[arg(long)]
    record_memory_limit: Option<usize>,
}

pub fn run(args: SimArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(SimCommand::Pki(p)) => {
            let pki = Pki::generate(&p.dir, &p.topics)
                .with_context(|| format!("writing a PKI to {}", p.dir.display()))?;
            super::print_stdout(&format!(
                "{}\n",
                pki.manifest.dir.join("pki.json").display()
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        None => serve(args.serve),
    }
}

fn build_config(a: ServeArgs) -> anyhow::Result<SimConfig> {
    let dir = a
        .pki
        .context("--pki DIR is required (write one with `herald sim pki DIR`)")?;
    let manifest = Pki::load_manifest(&dir)?;
    let mut config = SimConfig::from_pki(&manifest)?;
    config.listen_ip = a.listen_ip;
    config.admin_ip = a.admin_ip;
    config.h2_port = a.h2_port;
    config.binary_port = a.binary_port;
    config.feedback_port = a.feedback_port;
    config.admin_port = a.admin_port;
    config.management_port = a.management_port;
    config.broadcast_port = a.broadcast_port;
    let mut sc = match &a.scenario {
        Some(p) => Scenario::from_file(p)?,
        None => Scenario::default(),
    };
    if let Some(e) = a.environment {
        sc.environment = Some(match e {
            EnvArg::Production => Environment::Production,
            EnvArg::Sandbox => Environment::Sandbox,
        });
    }
    if let Some(auth) = a.auth {
        sc.auth = Some(match auth {
            AuthArg::Required => AuthPolicy::Required,
            AuthArg::None => AuthPolicy::AllowUnauthenticated,
        });
    }
    if a.max_streams.is_some() {
        sc.max_concurrent_streams = a.max_streams;
    }
    if a.choppy_streams {
        sc.choppy_streams = Some(true);
    }
    if let Some(o) = a.stream_overrun {
        sc.stream_overrun = Some(match o {
            OverrunArg::Refuse => StreamOverrun::Refuse,
            OverrunArg::Goaway => StreamOverrun::Goaway,
        });
    }
    if a.apple_settings {
        sc.apple_settings = true;
    }
    if a.initial_window_size.is_some() {
        sc.initial_window_size = a.initial_window_size;
    }
    if a.connection_window_size.is_some() {
        sc.connection_window_size = a.connection_window_size;
    }
    if a.max_header_list_size.is_some() {
        sc.max_header_list_size = a.max_header_list_size;
    }
    if let Some(s) = a.seed {
        sc.seed = s;
    }
    sc.unregistered.extend(a.unregistered);
    sc.bad.extend(a.bad);
    for (reason, rate) in [
        ("InternalServerError", a.error_500_rate),
        ("ServiceUnavailable", a.error_503_rate),
        ("TooManyRequests", a.error_429_rate),
    ] {
        if let Some(r) = rate {
            sc.errors.insert(reason.to_owned(), r);
        }
    }
    if let Some(d) = a.drop_rate {
        sc.drop_rate = d;
    }
    if let Some(l) = a.latency_ms {
        sc.latency_ms = l;
    }
    if let Some(j) = a.latency_jitter_ms {
        sc.latency_jitter_ms = j;
    }
    if let Some(r) = a.rate {
        sc.rate = r;
    }
    if a.goaway_every.is_some() {
        sc.goaway_every = a.goaway_every;
    }
    if a.goaway_first_request {
        sc.goaway_first_request = true;
    }
    if a.idle_timeout.is_some() {
        sc.idle_timeout_secs = a.idle_timeout;
    }
    config.scenario = sc;
    config.record_path = a.record;
    config.record_in_memory = a.record_in_memory;
    if let Some(n) = a.record_memory_limit {
        config.record_memory_limit = n;
    }
    Ok(config)
}

fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    herald::logs::stderr::init("info");
    let config = build_config(a)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    runtime.block_on(async move {
        let sim = Simulator::start(config).await?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", sim.addrs_json())?;
            out.flush()?;
        }
        wait_for_signal().await;
        tracing::info!("stopping the simulator");
        let _ = tokio::time::timeout(Duration::from_secs(2), sim.shutdown()).await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    #[test]
    fn scenario_flags_reach_the_simulators_scenario() {
        let dir = tempfile::tempdir().unwrap();
        Pki::generate(dir.path(), &["com.example.flags".to_owned()]).unwrap();
        let pki = dir.path().to_str().unwrap();
        let config = |extra: &[&str]| {
            let mut argv = vec!["sim", "--pki", pki];
            argv.extend_from_slice(extra);
            build_config(Serve::try_parse_from(argv).unwrap().args).unwrap()
        };
        let plain = config(&[]);
        assert!(!plain.scenario.goaway_first_request);
        assert_eq!(plain.scenario.goaway_every, None);
        let set = config(&["--goaway-first-request", "--goaway-every", "7"]);
        assert!(set.scenario.goaway_first_request);
        assert_eq!(set.scenario.goaway_every, Some(7));
    }

    #[test]
    fn connection_flags_reach_the_scenario_and_config() {
        let dir = tempfile::tempdir().unwrap();
        Pki::generate(dir.path(), &["com.example.flags".to_owned()]).unwrap();
        let pki = dir.path().to_str().unwrap();
        let config = |extra: &[&str]| {
            let mut argv = vec!["sim", "--pki", pki];
            argv.extend_from_slice(extra);
            build_config(Serve::try_parse_from(argv).unwrap().args).unwrap()
        };
        let plain = config(&[]);
        assert_eq!(plain.scenario.stream_overrun, None);
        assert!(!plain.scenario.apple_settings);
        assert_eq!(plain.record_memory_limit, 100_000);
        let set = config(&[
            "--stream-overrun",
            "goaway",
            "--apple-settings",
            "--initial-window-size",
            "1000",
            "--connection-window-size",
            "70000",
            "--max-header-list-size",
            "9000",
            "--record-memory-limit",
            "5",
        ]);
        let sc = &set.scenario;
        assert_eq!(sc.stream_overrun, Some(StreamOverrun::Goaway));
        assert!(sc.apple_settings);
        assert_eq!(
            (
                sc.initial_window_size,
                sc.connection_window_size,
                sc.max_header_list_size
            ),
            (Some(1000), Some(70000), Some(9000))
        );
        assert_eq!(set.record_memory_limit, 5);
    }

    /// The admin port stays on 127.0.0.1 when `--listen-ip` opens the other ports to every interface; `--admin-ip`
    /// moves it.
    #[test]
    fn the_admin_port_has_its_own_address() {
        let dir = tempfile::tempdir().unwrap();
        Pki::generate(dir.path(), &["com.example.flags".to_owned()]).unwrap();
        let pki = dir.path().to_str().unwrap();
        let config = |extra: &[&str]| {
            let mut argv = vec!["sim", "--pki", pki];
            argv.extend_from_slice(extra);
            build_config(Serve::try_parse_from(argv).unwrap().args).unwrap()
        };
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        let plain = config(&[]);
        assert_eq!((plain.listen_ip, plain.admin_ip), (local, local));
        let staging = config(&["--listen-ip", "0.0.0.0"]);
        assert_eq!((staging.listen_ip, staging.admin_ip), (any, local));
        let both = config(&["--listen-ip", "0.0.0.0", "--admin-ip", "0.0.0.0"]);
        assert_eq!((both.listen_ip, both.admin_ip), (any, any));
    }
}
