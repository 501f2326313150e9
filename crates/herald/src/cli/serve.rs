//! `herald serve -c FILE`: runs the daemon until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use herald::server::Server;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The configuration file.
    #[arg(short = 'c', long = "config")]
    pub config: PathBuf,
    /// Seconds to let sessions and in-flight deliveries finish on shutdown.
    #[arg(long, default_value_t = 10)]
    pub grace: u64,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    // The module stanzas' debug_level set the level of their part; a configuration that does not load is
    // reported by Server::start below.
    // A reload applies them again; RUST_LOG, when set, overrides them for the life of the process.
    match tracing_subscriber::EnvFilter::try_from_default_env() {
        Ok(filter) => {
            let _ = tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_env_filter(filter)
                .try_init();
        }
        Err(_) => {
            use tracing_subscriber::layer::SubscriberExt as _;
            use tracing_subscriber::util::SubscriberInitExt as _;
            let levels = herald_conf::Config::load(&args.config)
                .map(|c| herald::logs::levels::directives(&c, "info"))
                .unwrap_or_else(|_| "info".to_owned());
            let (filter, handle) =
                tracing_subscriber::reload::Layer::new(tracing_subscriber::EnvFilter::new(levels));
            let installed = tracing_subscriber::registry()
                .with(filter)
                .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
                .try_init();
            if installed.is_ok() {
                herald::logs::levels::install_reload(Box::new(move |directives| {
                    let filter = tracing_subscriber::EnvFilter::try_new(directives)
                        .map_err(|e| e.to_string())?;
                    handle.reload(filter).map_err(|e| e.to_string())
                }));
            }
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    runtime.block_on(async {
        let server = Server::start(&args.config).await?;
        // One line on stdout once every listener is bound: scripts and tests read the addresses from it.
        println!("{}", serde_json::to_string(&server.addrs().await)?);
        run_until_stopped(&server).await?;
        tracing::info!("shutting down");
        server.shutdown(Duration::from_secs(args.grace)).await;
        Ok(ExitCode::SUCCESS)
    })
}

/// Serves until SIGTERM or SIGINT; SIGHUP reloads the configuration (an invalid one is reported and ignored)
/// and reopens the logs.
async fn run_until_stopped(server: &Server) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = server.stop_requested() => return Ok(()),
            _ = hup.recv() => {
                for e in server.reopen_logs() {
                    tracing::error!("reopening logs: {e}");
                }
                match server.reload(None).await {
                    Ok(report) => tracing::info!(?report, "SIGHUP: configuration reloaded"),
                    Err(e) => tracing::error!("SIGHUP: {e}"),
                }
            }
        }
    }
}
