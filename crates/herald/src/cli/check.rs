//! `herald check -c FILE`: loads the configuration, prints every error and warning as `FILE:LINE:COL: …` on
//! stderr, and a one-line summary on stdout when it is valid. Exit status 0 when valid, 1 otherwise.

use std::{path::PathBuf, process::ExitCode};

use herald_conf::{Config, Location, Opt, ScopeKind};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The configuration file.
    #[arg(short = 'c', long = "config")]
    pub config: PathBuf,
    /// Also open a TLS connection to every domain's route with its credentials (5 s timeout each).
    #[arg(long)]
    pub connect: bool,
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let name = args.config.display();
    match Config::load(&args.config) {
        Ok(config) => {
            for w in config.warnings() {
                eprintln!("{w}");
            }
            // What `herald serve` would refuse when it opens the logs. Reported with the credential findings
            // below, not instead of them: one run names every error.
            let log_errors = herald::logs::check(&config);
            for e in &log_errors {
                match log_problem_location(&config, e) {
                    Some(at) => eprintln!("{at}: error: {e}"),
                    None => eprintln!("{name}: error: {e}"),
                }
            }
            let config = std::sync::Arc::new(config);
            let mut findings = herald::credentials::check(&config, std::time::SystemTime::now());
            let checked_offline = findings.len();
            if args.connect {
                let resolver = herald::delivery::ConfigResolver::new(config.clone());
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                findings.extend(runtime.block_on(herald::credentials::check_reachable(
                    &resolver,
                    std::time::Duration::from_secs(5),
                )));
            }
            // Each at the statement or stanza it is about (`FILE:LINE:COL: domain D: error: …`).
            for f in &findings {
                match &f.at {
                    Some(at) => eprintln!("{at}: {f}"),
                    None => eprintln!("{name}: {f}"),
                }
            }
            let listener_findings = herald::credentials::check_listeners(&config);
            for f in &listener_findings {
                match &f.at {
                    Some(at) => eprintln!("{at}: {f}"),
                    None => eprintln!("{name}: {f}"),
                }
            }
            let errors = |found: &[herald::credentials::Finding]| {
                found
                    .iter()
                    .filter(|f| f.severity == herald::credentials::Severity::Error)
                    .count()
            };
            // What `--connect` found (a route that cannot be reached, a handshake refused) is counted apart from
            // what the files themselves hold.
            let (offline, online) = findings.split_at(checked_offline);
            let credential_errors = errors(offline)
                + listener_findings
                    .iter()
                    .filter(|f| f.severity == herald::credentials::Severity::Error)
                    .count();
            let connection_errors = errors(online);
            if !log_errors.is_empty() || credential_errors > 0 || connection_errors > 0 {
                let n = log_errors.len();
                if n > 0 {
                    eprintln!("{name}: {n} error{}", if n == 1 { "" } else { "s" });
                }
                if credential_errors > 0 {
                    eprintln!("{name}: {credential_errors} credential error(s)");
                }
                if connection_errors > 0 {
                    eprintln!("{name}: {connection_errors} connection error(s) (--connect)");
                }
                std::mem::forget(config);
                return Ok(ExitCode::FAILURE);
            }
            // Every warning printed above: the configuration's and the credential findings'.
            let warnings = config.warnings().len() + findings.len() + listener_findings.len();
            super::print_stdout(&format!(
                "{name}: ok: {} domains, {} listeners, {} warnings\n",
                config.domains().len(),
                config.listeners().len(),
                warnings
            ))?;
            // The process ends here: freeing a large tree node by node would only add to the run time.
            std::mem::forget(config);
            Ok(ExitCode::SUCCESS)
        }
        Err(diags) => {
            for d in diags.all() {
                eprintln!("{d}");
            }
            let n = diags.error_count();
            eprintln!("{name}: {n} error{}", if n == 1 { "" } else { "s" });
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Where the configuration names what a log problem is about (`herald::logs::check` words each as `ec_logger "N"
/// mainlog …`, `apn_logger "N" OPTION …` or `feedback_logfile …`): the statement that sets the option, else the
/// logger's stanza.
fn log_problem_location(config: &Config, problem: &str) -> Option<Location> {
    let root = config.tree();
    if problem.starts_with("feedback_logfile ") {
        return root.get(Opt::FeedbackLogfile.id()).map(|s| s.at.clone());
    }
    for kind in [ScopeKind::EcLogger, ScopeKind::ApnLogger] {
        for n in root.children_of(kind) {
            let Some(name) = n.name.as_deref() else {
                continue;
            };
            let Some(rest) = problem.strip_prefix(&format!("{} {name:?} ", kind.keyword())) else {
                continue;
            };
            let option = rest.split([' ', ':']).next().unwrap_or("");
            let set = herald_conf::options::lookup(option).and_then(|id| n.get(id));
            return set.map(|s| s.at.clone()).or_else(|| n.at.clone());
        }
    }
    None
}
