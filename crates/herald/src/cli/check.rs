//! `herald check -c FILE`.

use std::{path::PathBuf, process::ExitCode};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The configuration file.
    #[arg(short = 'c', long = "config")]
    pub config: PathBuf,
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("check of {} is not implemented yet", args.config.display())
}
