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
    // The module stanzas' debug_level set the level of their part (a reload applies them again); RUST_LOG, when
    // set, overrides them for the life of the process. A configuration that does not load is reported by
    // Server::start below.
    let levels = herald_conf::Config::load(&args.config)
        .map(|c| herald::logs::levels::directives(&c, "info"))
        .unwrap_or_else(|_| "info".to_owned());
    herald::logs::stderr::init_with_levels(&levels);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    runtime.block_on(async {
        // SIGHUP is caught from here on: one that arrives while the server starts (which can take long while the
        // spool is read back) must not end the process; it is acted on (reload, reopen logs) once the server runs.
        // SIGTERM and SIGINT keep their default action until then, so that a start that takes long can be
        // stopped at once (what was acknowledged is in the spool either way).
        let hup = Signals::hangup()?;
        let server = Server::start(&args.config).await?;
        // The other handlers are in place before the ready line, so a signal sent as soon as it is read is handled.
        let signals = Signals::install(hup)?;
        // One line on stdout once every listener is bound: scripts and tests read the addresses from it.
        println!("{}", serde_json::to_string(&server.addrs().await)?);
        run_until_stopped(&server, signals).await?;
        tracing::info!("shutting down");
        server.shutdown(Duration::from_secs(args.grace)).await;
        Ok(ExitCode::SUCCESS)
    })
}

/// Serves until SIGTERM or SIGINT; SIGHUP reloads the configuration (an invalid one is reported and ignored)
/// and reopens the logs.
async fn run_until_stopped(server: &Server, signals: Signals) -> anyhow::Result<()> {
    let Signals {
        mut term,
        mut int,
        mut hup,
    } = signals;
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
                    Ok(report) => {
                        for e in &report.listener_errors {
                            tracing::error!("SIGHUP: reload: listener {e}");
                        }
                        tracing::info!(?report, "SIGHUP: configuration reloaded");
                    }
                    Err(e) => tracing::error!("SIGHUP: {e}"),
                }
            }
        }
    }
}

/// The signals `serve` acts on.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn hangup() -> anyhow::Result<tokio::signal::unix::Signal> {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::hangup()).context("installing the SIGHUP handler")
    }

    fn install(hup: tokio::signal::unix::Signal) -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup,
        })
    }
}
