//! `herald config eval|show`: Momentum's `config eval` and `config show` on a configuration file.
//!
//! - `eval -c FILE [SCOPE [NAME]]… OPTION` prints `option = value` with fallback applied (lists as `(`, one item
//!   per line, `)`).
//! - `show -c FILE [SCOPE [NAME]]… [OPTION]` prints the configuration as parsed (includes expanded, repeated
//!   stanzas merged) in the configuration language, or one scope of it, or one option as set in that scope. The
//!   values of secret options are masked; `--secrets` prints them.
//!
//! Exit status: 0 on success, 1 when the configuration does not load, 2 for a bad scope path or option.

use std::{path::PathBuf, process::ExitCode};

use herald_conf::secrets::render_option_value;
use herald_conf::{Config, EvalError, ScopePath, Value, options};

#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Evaluate OPTION along a scope path with Momentum's fallback.
    Eval {
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
        /// `[SCOPE [NAME]]… OPTION`, e.g. `binding_group g binding b domain example.com max_outbound_connections`
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
        words: Vec<String>,
    },
    /// Print the configuration as parsed, or the scope `[SCOPE [NAME]]…`, or one option set in it. Secret values
    /// (API keys, passwords) are masked unless --secrets is given.
    Show {
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
        /// Print the values of secret options (api_key, api_keys, control_password, tls_pkcs12_password) in clear.
        #[arg(long)]
        secrets: bool,
        /// `[SCOPE [NAME]]… [OPTION]`
        #[arg(allow_hyphen_values = true)]
        words: Vec<String>,
    },
}

const USAGE_ERROR: u8 = 2;

pub fn run(cmd: ConfigCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCommand::Eval { config, words } => with_config(&config, |c| eval(c, &words)),
        ConfigCommand::Show {
            config,
            words,
            secrets,
        } => with_config(&config, |c| show(c, &words, secrets)),
    }
}

fn with_config(
    path: &PathBuf,
    f: impl FnOnce(&Config) -> Result<String, EvalError>,
) -> anyhow::Result<ExitCode> {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(diags) => {
            for d in diags.all() {
                eprintln!("{d}");
            }
            eprintln!(
                "herald: error: {} does not load ({} errors)",
                path.display(),
                diags.error_count()
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    match f(&config) {
        Ok(out) => {
            print!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("herald: error: {e}");
            Ok(ExitCode::from(USAGE_ERROR))
        }
    }
}

fn eval(config: &Config, words: &[String]) -> Result<String, EvalError> {
    let (path, option) = ScopePath::parse_words(words)?;
    let value = config.eval(&path, &option)?;
    let name = options::lookup(&option)
        .map(|id| id.def().name)
        .unwrap_or("?");
    Ok(match value {
        Value::Unset => {
            format!("Option '{name}' is not set in scope '{path}' and has no default.\n")
        }
        v => format!("{name} = {}\n", render_option_value(name, &v, true)),
    })
}

fn show(config: &Config, words: &[String], secrets: bool) -> Result<String, EvalError> {
    match ScopePath::parse_scope_words(words) {
        Ok(path) if secrets => config.show_secrets(&path),
        Ok(path) => config.show(&path),
        Err(scope_err) => {
            // `config show [SCOPE [NAME]]… OPTION`: the option as set in that very scope.
            let Some((option, scopes)) = words.split_last() else {
                return Err(scope_err);
            };
            if options::lookup(option).is_none() {
                return Err(scope_err);
            }
            let path = ScopePath::parse_scope_words(scopes)?;
            let name = options::lookup(option)
                .map(|id| id.def().name)
                .unwrap_or("?");
            Ok(match config.get(&path, option)? {
                Some(v) => format!("{name} = {}\n", render_option_value(name, &v, !secrets)),
                None => format!("Option '{name}' is not set in scope '{path}'.\n"),
            })
        }
    }
}
