//! `herald serve -c FILE`: runs the daemon until SIGTERM or SIGINT. A second SIGTERM or SIGINT during the stop ends
//! its grace period at once. The exit status is non-zero when the stop left something undone (a spool that did not
//! close, a log that did not flush, outcomes not stored), each named on stderr; deliveries cut off by the end of the
//! grace period stay spooled for the next start, as a stop provides for, and are only logged.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use herald::server::{ReloadReport, Server};
use tokio::task::JoinHandle;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The configuration file.
    #[arg(short = 'c', long = "config")]
    pub config: PathBuf,
    /// Seconds to let sessions and in-flight deliveries finish on shutdown; a second SIGTERM or SIGINT ends them at
    /// once.
    #[arg(long, default_value_t = 10)]
    pub grace: u64,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    // SIGHUP is caught from here on, before anything reads the configuration: one that arrives while herald starts
    // (reading a large configuration, the spool read back) must not end the process; it is acted on (reload,
    // reopen logs) once the server runs. SIGTERM and SIGINT keep their default action until then, so that a start
    // that takes long can be stopped at once (what was acknowledged is in the spool either way).
    let hup = {
        let _context = runtime.enter();
        Signals::hangup()?
    };
    // The module stanzas' debug_level set the level of their part (a reload applies them again); RUST_LOG, when
    // set, overrides them for the life of the process. A configuration that does not load is reported by
    // Server::start below.
    let levels = herald_conf::Config::load(&args.config)
        .map(|c| herald::logs::levels::directives(&c, "info"))
        .unwrap_or_else(|_| "info".to_owned());
    herald::logs::stderr::init_with_levels(&levels);
    runtime.block_on(async {
        let server = Server::start(&args.config).await?;
        // The other handlers are in place before the ready line, so a signal sent as soon as it is read is handled.
        let signals = Signals::install(hup)?;
        // One line on stdout once every listener is bound: scripts and tests read the addresses from it. Nobody
        // reading it (a closed pipe) does not stop the server.
        super::print_stdout(&format!(
            "{}\n",
            serde_json::to_string(&server.addrs().await)?
        ))?;
        let (term, int) = run_until_stopped(&server, signals).await?;
        tracing::info!("shutting down");
        let report = server
            .shutdown_until(Duration::from_secs(args.grace), stop_again(term, int))
            .await;
        if report.is_clean() {
            return Ok(ExitCode::SUCCESS);
        }
        for undone in &report.undone {
            eprintln!("herald serve: the stop left this undone: {undone}");
        }
        Ok(ExitCode::FAILURE)
    })
}

/// Resolves at the next SIGTERM or SIGINT: during the stop, the one that ends its grace period at once.
async fn stop_again(mut term: tokio::signal::unix::Signal, mut int: tokio::signal::unix::Signal) {
    tokio::select! {
        Some(()) = term.recv() => {}
        Some(()) = int.recv() => {}
        else => std::future::pending().await,
    }
}

/// Serves until SIGTERM or SIGINT; SIGHUP reopens the logs and reloads the configuration (an invalid one is
/// reported and ignored). The SIGHUP work runs on a task of its own, so that a stop asked for meanwhile is acted on
/// at once; SIGHUPs that arrive while it runs are folded into one more round after it. Gives back the SIGTERM and
/// SIGINT handlers, for the stop to hear a second one.
async fn run_until_stopped(
    server: &Arc<Server>,
    signals: Signals,
) -> anyhow::Result<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)> {
    let Signals {
        mut term,
        mut int,
        mut hup,
    } = signals;
    let mut hangup: Option<JoinHandle<()>> = None;
    let mut again = false;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok((term, int)),
            _ = int.recv() => return Ok((term, int)),
            _ = server.stop_requested() => return Ok((term, int)),
            _ = hup.recv() => {
                if hangup.is_some() {
                    again = true;
                } else {
                    hangup = Some(tokio::spawn(on_hangup(server.clone())));
                }
            }
            _ = finished(&mut hangup) => {
                hangup = std::mem::take(&mut again).then(|| tokio::spawn(on_hangup(server.clone())));
            }
        }
    }
}

/// Resolves once `task` ended (never without one); a panic in it goes on here, as it did when the work ran in
/// this loop.
async fn finished(task: &mut Option<JoinHandle<()>>) {
    match task {
        Some(t) => {
            if let Err(e) = t.await
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        None => std::future::pending().await,
    }
}

/// What SIGHUP does: reopens the logs (off the async threads: a log file whose write blocks is waited for up to a
/// second), then reloads the configuration, logging what went wrong at error level and the reload's warnings at
/// warn level.
async fn on_hangup(server: Arc<Server>) {
    let reopening = server.clone();
    match tokio::task::spawn_blocking(move || reopening.reopen_logs()).await {
        Ok(errors) => {
            for e in errors {
                tracing::error!("reopening logs: {e}");
            }
        }
        Err(e) => tracing::error!("reopening logs: {e}"),
    }
    match server.reload(None).await {
        Ok(report) => {
            for e in &report.listener_errors {
                tracing::error!("SIGHUP: reload: listener {e}");
            }
            for w in &report.warnings {
                tracing::warn!("SIGHUP: reload: {w}");
            }
            tracing::info!("SIGHUP: {}", reload_summary(&report));
        }
        Err(e) => tracing::error!("SIGHUP: {e}"),
    }
}

/// One line saying what a reload did, as the console's `config reload` says it: the file, the domains
/// reconfigured, the listeners started, stopped, restarted or given a renewed certificate, the domains it cannot
/// deliver and why, and how many listener errors and warnings (each logged on a line of its own).
fn reload_summary(report: &ReloadReport) -> String {
    let mut out = format!(
        "configuration reloaded from {}: domains reconfigured: {}",
        report.path.display(),
        report.domains
    );
    for (what, list) in [
        ("listeners started", &report.listeners_started),
        ("listeners stopped", &report.listeners_stopped),
        ("listeners restarted", &report.listeners_restarted),
        ("certificates reloaded", &report.certificates_reloaded),
    ] {
        if !list.is_empty() {
            out.push_str(&format!("; {what}: {}", list.join(", ")));
        }
    }
    if !report.unroutable.is_empty() {
        let domains: Vec<String> = report
            .unroutable
            .iter()
            .map(|(domain, why)| format!("{domain} ({why})"))
            .collect();
        out.push_str(&format!(
            "; domains that cannot be delivered: {}",
            domains.join(", ")
        ));
    }
    for (what, n) in [
        ("listener errors", report.listener_errors.len()),
        ("warnings", report.warnings.len()),
    ] {
        if n > 0 {
            out.push_str(&format!("; {what}: {n}"));
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The reload's line reads as the console's answer does, not as a Rust debug dump.
    #[test]
    fn a_reload_is_summed_up_in_words() {
        let report = ReloadReport {
            path: PathBuf::from("/etc/herald/herald.conf"),
            domains: 3,
            unroutable: vec![("b.example".into(), "no credentials".into())],
            listeners_started: vec!["http_listener 127.0.0.1:8081".into()],
            listeners_restarted: vec!["esmtp_listener 127.0.0.1:25".into()],
            warnings: vec!["w1".into(), "w2".into()],
            ..ReloadReport::default()
        };
        assert_eq!(
            reload_summary(&report),
            "configuration reloaded from /etc/herald/herald.conf: domains reconfigured: 3; listeners started: \
             http_listener 127.0.0.1:8081; listeners restarted: esmtp_listener 127.0.0.1:25; domains that cannot be \
             delivered: b.example (no credentials); warnings: 2"
        );
        assert_eq!(
            reload_summary(&ReloadReport::default()),
            "configuration reloaded from : domains reconfigured: 0"
        );
    }
}
