//! `herald check -c FILE`: loads the configuration, prints every error and warning as `FILE:LINE:COL: …` on
//! stderr, and a one-line summary on stdout when it is valid. Exit status 0 when valid, 1 otherwise.

use std::{path::PathBuf, process::ExitCode};

use herald_conf::Config;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The configuration file.
    #[arg(short = 'c', long = "config")]
    pub config: PathBuf,
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let name = args.config.display();
    match Config::load(&args.config) {
        Ok(config) => {
            for w in config.warnings() {
                eprintln!("{w}");
            }
            println!(
                "{name}: ok: {} domains, {} listeners, {} warnings",
                config.domains().len(),
                config.listeners().len(),
                config.warnings().len()
            );
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
