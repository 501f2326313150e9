//! herald's own diagnostics on standard error (not the Momentum-format logs): the `tracing` subscriber of the
//! `serve`, `sim` and `demo` commands.
//!
//! - Colour (ANSI escapes) only when standard error is a terminal and `NO_COLOR` is unset or empty, so files,
//!   journald and pipes get plain text.
//! - `log_format = json` writes one JSON object per line for log shippers; [`apply`] switches the format when a
//!   configuration is loaded or reloaded.
//! - The level comes from `RUST_LOG` (default: the level the command passes to [`init`]).

use std::io::IsTerminal;
use std::sync::OnceLock;

use herald_conf::LogFormat;
use tracing_subscriber::{
    EnvFilter, Layer, Registry, layer::SubscriberExt, reload, util::SubscriberInitExt,
};

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

struct Installed {
    handle: reload::Handle<BoxedLayer, Registry>,
    format: std::sync::Mutex<LogFormat>,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// Whether text output may carry colour: a terminal, and no `NO_COLOR` (see no-color.org) with a value.
pub fn colour_wanted(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

fn layer(format: LogFormat) -> BoxedLayer {
    match format {
        LogFormat::Text => {
            let ansi = colour_wanted(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            );
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
                .boxed()
        }
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .boxed(),
    }
}

/// Installs the subscriber (text format until [`apply`] says otherwise). `default_level` applies when `RUST_LOG`
/// is unset or invalid. A second call, or a subscriber installed by someone else, leaves things as they are.
pub fn init(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    install(filter);
}

/// Like [`init`] for `herald serve`: without `RUST_LOG`, the filter is `directives` (the levels the module stanzas'
/// `debug_level` set, see [`super::levels`]) and a reload may replace it; `RUST_LOG`, when set, stays in force.
pub fn init_with_levels(directives: &str) {
    match EnvFilter::try_from_default_env() {
        Ok(filter) => {
            install(filter);
        }
        Err(_) => {
            let (filter, handle) = reload::Layer::new(EnvFilter::new(directives));
            if install(filter) {
                super::levels::install_reload(Box::new(move |directives| {
                    let filter = EnvFilter::try_new(directives).map_err(|e| e.to_string())?;
                    handle.reload(filter).map_err(|e| e.to_string())
                }));
            }
        }
    }
}

type Formatted = tracing_subscriber::layer::Layered<reload::Layer<BoxedLayer, Registry>, Registry>;

/// Installs the formatting layer (text until [`apply`]) under `filter`; false when a subscriber was already set.
fn install<F: Layer<Formatted> + Send + Sync + 'static>(filter: F) -> bool {
    let (fmt, handle) = reload::Layer::new(layer(LogFormat::Text));
    let installed = Registry::default()
        .with(fmt)
        .with(filter)
        .try_init()
        .is_ok();
    if installed {
        let _ = INSTALLED.set(Installed {
            handle,
            format: std::sync::Mutex::new(LogFormat::Text),
        });
    }
    installed
}

/// Switches the output format to the configuration's `log_format` (no effect when [`init`] was not called).
pub fn apply(format: LogFormat) {
    let Some(installed) = INSTALLED.get() else {
        return;
    };
    let mut current = installed.format.lock().unwrap_or_else(|p| p.into_inner());
    if *current == format {
        return;
    }
    if installed.handle.reload(layer(format)).is_ok() {
        *current = format;
    }
}

#[cfg(test)]
mod tests {
    use super::colour_wanted;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour_wanted(true, None));
        assert!(!colour_wanted(false, None), "a file, a pipe or journald");
        assert!(!colour_wanted(true, Some(OsStr::new("1"))));
        assert!(
            colour_wanted(true, Some(OsStr::new(""))),
            "an empty NO_COLOR does not count"
        );
    }
}
