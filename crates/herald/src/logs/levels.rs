//! Diagnostic verbosity per part of herald from the module stanzas' `debug_level` (docs/momentum-compat.md#modules,
//! docs/momentum-compat.md#rest-injector): `apn` sets the level of delivery (queue, pools, APNs connections), `httpsrv`
//! the HTTP listeners, `restinjector` the REST injection handlers, `apn_logger` and `ec_logger` instances the log
//! writers. A module that does not set `debug_level` leaves its part at the process's level. `RUST_LOG`, when set,
//! overrides all of this. `herald serve` sets the levels at start and again at each reload ([`install_reload`],
//! [`apply`]).

use std::sync::OnceLock;

use herald_conf::{Config, ScopeKind, ScopePath, Value};

/// Puts a new directive list in force (set by `herald serve` when it owns the diagnostics filter).
type Reloader = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

static RELOADER: OnceLock<Reloader> = OnceLock::new();

/// Lets [`apply`] change the process's diagnostics filter; the first call wins.
pub fn install_reload(reload: Reloader) {
    let _ = RELOADER.set(reload);
}

/// Puts the levels `config` sets in force (after a reload), when the process installed a reloadable filter.
pub fn apply(config: &Config) {
    if let Some(reload) = RELOADER.get()
        && let Err(e) = reload(&directives(config, "info"))
    {
        tracing::warn!("debug_level: the new levels could not be applied: {e}");
    }
}

/// The tracing targets each module governs.
const PARTS: &[(ScopeKind, &[&str])] = &[
    (
        ScopeKind::Apn,
        &["herald::queue", "herald::outbound", "herald_apns"],
    ),
    (ScopeKind::Httpsrv, &["herald::inbound::rest"]),
    (
        ScopeKind::Restinjector,
        &[
            "herald::inbound::rest::inject",
            "herald::inbound::rest::push",
        ],
    ),
];

/// Momentum's level words as tracing levels (notice is info; crit, critical, alert and emerg are error).
pub fn tracing_level(word: &str) -> &'static str {
    match word.to_ascii_lowercase().as_str() {
        "debug" => "debug",
        "info" | "notice" => "info",
        "warning" => "warn",
        _ => "error",
    }
}

/// An `EnvFilter` directive list: `base`, then one `target=level` per target of each module that sets
/// `debug_level` (more specific targets last, so they win).
pub fn directives(config: &Config, base: &str) -> String {
    let mut out = vec![base.to_owned()];
    for (kind, targets) in PARTS {
        let path = ScopePath::global().then(*kind, None);
        if let Ok(Some(Value::Str(word))) = config.get(&path, "debug_level") {
            let level = tracing_level(&word);
            out.extend(targets.iter().map(|t| format!("{t}={level}")));
        }
    }
    // Logger instances: the most verbose level any of them sets.
    let loggers = config
        .tree()
        .children()
        .iter()
        .filter(|n| matches!(n.kind, ScopeKind::ApnLogger | ScopeKind::EcLogger))
        .filter_map(|n| {
            let path = ScopePath::global().then(n.kind, n.name.as_deref());
            match config.get(&path, "debug_level") {
                Ok(Some(Value::Str(word))) => Some(tracing_level(&word)),
                _ => None,
            }
        })
        .min_by_key(|l| {
            ["debug", "info", "warn", "error"]
                .iter()
                .position(|x| x == l)
        });
    if let Some(level) = loggers {
        out.push(format!("herald::logs={level}"));
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_modules_that_set_debug_level_change_their_targets() {
        let config = Config::parse_str(
            "t.conf",
            r#"apn { debug_level = "debug" }
httpsrv { }
restinjector { debug_level = "warning" }
apn_logger "a" { debug_level = "info" }
ec_logger "m" { debug_level = "debug" }"#,
        )
        .unwrap();
        let d = directives(&config, "info");
        assert_eq!(
            d,
            "info,herald::queue=debug,herald::outbound=debug,herald_apns=debug,\
             herald::inbound::rest::inject=warn,herald::inbound::rest::push=warn,herald::logs=debug"
        );
        // The result is a filter tracing accepts.
        tracing_subscriber::EnvFilter::try_new(&d).unwrap();
        let none = Config::parse_str("t.conf", "apn { }").unwrap();
        assert_eq!(directives(&none, "info"), "info");
    }

    #[test]
    fn momentum_levels_map_to_tracing_levels() {
        assert_eq!(tracing_level("notice"), "info");
        assert_eq!(tracing_level("crit"), "error");
        assert_eq!(tracing_level("emerg"), "error");
        assert_eq!(tracing_level("Warning"), "warn");
    }
}
