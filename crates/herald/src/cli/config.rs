//! `herald config eval|show`.

use std::{path::PathBuf, process::ExitCode};

#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Evaluate OPTION along a scope path with Momentum's fallback.
    Eval {
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
        /// `[SCOPE [NAME]]… OPTION`
        #[arg(required = true, num_args = 1..)]
        words: Vec<String>,
    },
    /// Print the configuration as parsed.
    Show {
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
        words: Vec<String>,
    },
}

pub fn run(_cmd: ConfigCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("config is not implemented yet")
}
