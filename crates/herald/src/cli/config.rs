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

use herald_conf::secrets::{self, render_option_value};
use herald_conf::{Config, EvalError, ScopePath, Value, options};

#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Evaluate OPTION along a scope path with Momentum's fallback.
    Eval {
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
        /// `[SCOPE [NAME]]… OPTION`, e.g. `binding_group g binding b domain example.com max_outbound_connections`.
        /// Flags may come before or after the words; a word that begins with `-` goes after `--`.
        #[arg(required = true, num_args = 1..)]
        words: Vec<String>,
    },
    /// Print the configuration as parsed, or the scope `[SCOPE [NAME]]…`, or one option set in it. Secret values
    /// (API keys, passwords) are masked unless --secrets is given.
    Show {
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
        // The help names every option `config show` masks, from the lists it masks with (`secrets_help`).
        #[arg(long, help = secrets_help())]
        secrets: bool,
        /// `[SCOPE [NAME]]… [OPTION]`. Flags may come before or after the words; a word that begins with `-` goes
        /// after `--`.
        words: Vec<String>,
    },
}

const USAGE_ERROR: u8 = 2;

/// The help of `config show --secrets`: every secret option, and every option whose URLs' credentials are masked,
/// named from the lists herald-conf masks with, so that the help cannot leave one out.
fn secrets_help() -> String {
    format!(
        "Print the values of secret options ({}) and the credentials in the URLs of {} in clear",
        secrets::SECRET_OPTIONS.join(", "),
        secrets::URL_OPTIONS.join(" and ")
    )
}

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
            super::print_stdout(&out)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// A command line with `config`'s subcommands, as `herald config` has them.
    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        config: ConfigCommand,
    }

    /// Flags after the words are flags, not words: `--secrets` and `-c` after a scope path are parsed as such.
    #[test]
    fn flags_after_the_words_are_parsed_as_flags() {
        use clap::Parser;
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cli = Cli::try_parse_from([
            "config",
            "show",
            "domain",
            "d.example",
            "outcome_webhook_url",
            "--secrets",
            "-c",
            "f.conf",
        ])
        .unwrap();
        match cli.config {
            ConfigCommand::Show {
                config,
                secrets,
                words: w,
            } => {
                assert!(secrets);
                assert_eq!(config, PathBuf::from("f.conf"));
                assert_eq!(w, words(&["domain", "d.example", "outcome_webhook_url"]));
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from([
            "config",
            "eval",
            "domain",
            "d.example",
            "retry_interval",
            "-c",
            "f.conf",
        ])
        .unwrap();
        match cli.config {
            ConfigCommand::Eval { config, words: w } => {
                assert_eq!(config, PathBuf::from("f.conf"));
                assert_eq!(w, words(&["domain", "d.example", "retry_interval"]));
            }
            other => panic!("{other:?}"),
        }
        // `eval` has no --secrets: clap names the flag, instead of it being taken for a scope.
        let err = Cli::try_parse_from(["config", "eval", "-c", "f", "retry_interval", "--secrets"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--secrets"), "{err}");
        assert!(!err.contains("scope"), "{err}");
    }

    /// `herald config show --help` names every option whose value `config show` masks.
    #[test]
    fn the_help_of_secrets_names_every_masked_option() {
        let mut cmd = Cli::command();
        let show = cmd.find_subcommand_mut("show").expect("a show subcommand");
        let help = show.render_long_help().to_string();
        for name in secrets::SECRET_OPTIONS.iter().chain(secrets::URL_OPTIONS) {
            assert!(help.contains(name), "{name} not in {help}");
        }
    }

    /// The docs' sentences on what `config show` masks (operations.md's `config show` row of the console's
    /// commands, configuration.md's paragraph on secret options) name every secret option.
    #[test]
    fn the_docs_name_every_masked_option() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
        // The file, where the passage opens, and what ends it.
        for (file, opening, end) in [
            ("operations.md", "| `config show ", "\n"),
            ("configuration.md", "The values of secret options (", "\n\n"),
        ] {
            let text = std::fs::read_to_string(docs.join(file)).unwrap();
            let at = text
                .find(opening)
                .unwrap_or_else(|| panic!("{opening:?} not in {file}"));
            let passage = text[at..].split(end).next().unwrap_or_default();
            for name in secrets::SECRET_OPTIONS {
                assert!(
                    passage.contains(&format!("`{name}`")),
                    "{file}: {name} not in {passage}"
                );
            }
        }
    }
}
