//! Scenarios: what the simulator does beyond validating — device tokens that are unregistered, expired or bad,
//! random transient errors and dropped connections (seeded, so runs reproduce), response latency, GOAWAY every
//! N requests, idle close, and overrides of the environment, authentication policy, stream limits and HTTP/2
//! settings.
//!
//! A scenario is a JSON file (`herald sim --scenario FILE`); every field is optional:
//! ```json
//! {
//!   "seed": 7,
//!   "unregistered": ["<hex token>"], "expired": ["<hex>"], "bad": ["<hex>"],
//!   "tokens": [{"token": "<hex>", "state": "unregistered", "topic": "com.example.app", "timestamp_ms": 1700000000000}],
//!   "errors": {"InternalServerError": 0.01, "ServiceUnavailable": 0.01, "TooManyRequests": 0.01},
//!   "binary_errors": {"1": 0.01},
//!   "drop_rate": 0.001,
//!   "latency_ms": 5, "latency_jitter_ms": 10, "rate": 1000,
//!   "goaway_every": 1000, "goaway_reason": "Shutdown", "goaway_first_request": false,
//!   "idle_timeout_secs": 60,
//!   "environment": "production", "auth": "allow-unauthenticated",
//!   "max_concurrent_streams": 100, "choppy_streams": true, "stream_overrun": "goaway",
//!   "apple_settings": true, "initial_window_size": 65535, "connection_window_size": 65535,
//!   "max_header_list_size": 8000
//! }
//! ```
//! `apple_settings` applies the HTTP/2 settings observed from APNs ([`crate::SimConfig::apple_settings`]); the
//! three settings named after it override it one by one.

use std::collections::BTreeMap;
use std::path::Path;

use herald_apns::binary::Status;
use herald_apns::reason::Reason;
use serde::{Deserialize, Serialize};

use crate::config::{
    AuthPolicy, CONNECTION_WINDOW_RANGE, ConfigError, Environment, HEADER_LIST_RANGE,
    INITIAL_WINDOW_RANGE, StreamOverrun, check_setting,
};

/// The longest `idle_timeout_secs` a scenario may set: a year (a longer one is as good as none, and one beyond the
/// clock's range cannot be scheduled).
const MAX_IDLE_TIMEOUT_SECS: u64 = 365 * 86_400;

/// The state a scenario gives a device token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenState {
    /// Deliverable (useful with `topic`, to make other topics DeviceTokenNotForTopic).
    Active,
    /// HTTP/2: 410 Unregistered with a timestamp. Binary: accepted, and listed by the feedback service.
    Unregistered,
    /// HTTP/2: 410 ExpiredToken with a timestamp (as every 410).
    Expired,
    /// HTTP/2: 400 BadDeviceToken. Binary: error packet status 8.
    Bad,
}

/// One token rule of a scenario.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRule {
    /// Hex, either case.
    pub token: String,
    pub state: TokenState,
    /// The topic the token belongs to; a push for another topic gets DeviceTokenNotForTopic. For unregistered
    /// tokens it also selects which certificate's feedback connection lists it (none = every topic).
    #[serde(default)]
    pub topic: Option<String>,
    /// When the token became invalid (ms since the epoch); default: when the simulator started.
    #[serde(default)]
    pub timestamp_ms: Option<u64>,
}

/// See the module documentation for the file format.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    pub seed: u64,
    pub unregistered: Vec<String>,
    pub expired: Vec<String>,
    pub bad: Vec<String>,
    pub tokens: Vec<TokenRule>,
    /// Reason name -> probability per otherwise valid HTTP/2 request.
    pub errors: BTreeMap<String, f64>,
    /// Binary status code (one of the error packet's statuses; there is no 9) -> probability per otherwise valid
    /// binary notification.
    pub binary_errors: BTreeMap<String, f64>,
    /// Probability per otherwise valid request that the connection is dropped without an answer.
    pub drop_rate: f64,
    /// At most [`crate::pace::MAX_LATENCY_MS`] (one hour), as `latency_jitter_ms`.
    pub latency_ms: u64,
    pub latency_jitter_ms: u64,
    /// HTTP/2 requests answered per second over all connections (0 = no limit); see [`crate::pace`].
    pub rate: u64,
    /// Send GOAWAY (and close) after this many requests on a connection.
    pub goaway_every: Option<u64>,
    /// The `reason` in the GOAWAY debug data (default "Shutdown").
    pub goaway_reason: Option<String>,
    /// Answer a connection's first request with GOAWAY (last stream id 0, so nothing processed; with
    /// `goaway_reason`) and close: a server that takes connections and processes nothing on them.
    pub goaway_first_request: bool,
    /// Close a connection (GOAWAY `{"reason":"IdleTimeout"}`) after this many seconds without a request or a PING
    /// from the client.
    pub idle_timeout_secs: Option<u64>,
    pub environment: Option<Environment>,
    pub auth: Option<AuthPolicy>,
    pub max_concurrent_streams: Option<u32>,
    pub choppy_streams: Option<bool>,
    /// What a stream beyond the acknowledged stream limit gets: `refuse` (RST_STREAM REFUSED_STREAM, the default)
    /// or `goaway` (GOAWAY with Apple's plain-text debug data, then close).
    pub stream_overrun: Option<StreamOverrun>,
    /// Serve the HTTP/2 settings observed from APNs (stream and connection windows 65,535, header lists of
    /// 8000 bytes); the three fields below override it.
    pub apple_settings: bool,
    /// `SETTINGS_INITIAL_WINDOW_SIZE`, 1..=2^31-1.
    pub initial_window_size: Option<u32>,
    /// The connection's receive window, 65535..=2^31-1.
    pub connection_window_size: Option<u32>,
    /// `SETTINGS_MAX_HEADER_LIST_SIZE`, at least 1.
    pub max_header_list_size: Option<u32>,
    /// Bundle ids whose broadcast capability is off: every management and broadcast request for them answers
    /// FeatureNotEnabled.
    pub broadcast_disabled: Vec<String>,
    /// Channels per bundle id (default 10,000, Apple's limit); one more answers CannotCreateChannelConfig.
    pub max_channels: Option<usize>,
}

/// A scenario checked and compiled for the hot path.
#[derive(Debug, Clone, Default)]
pub(crate) struct CompiledScenario {
    /// Cumulative probabilities: roll < bound picks the reason.
    pub errors: Vec<(f64, Reason)>,
    pub binary_errors: Vec<(f64, Status)>,
    pub drop_rate: f64,
    pub goaway_every: Option<u64>,
    pub goaway_first_request: bool,
    pub goaway_debug: bytes::Bytes,
    pub idle_timeout_secs: Option<u64>,
    pub seed: u64,
}

fn check_rate(name: &str, rate: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&rate) {
        Ok(())
    } else {
        Err(format!("rate {rate} for {name} is not within 0..=1"))
    }
}

impl Scenario {
    /// Reads a JSON scenario file.
    pub fn from_file(path: &Path) -> Result<Scenario, ConfigError> {
        let text = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let scenario: Scenario =
            serde_json::from_slice(&text).map_err(|e| ConfigError::Scenario {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        scenario
            .compile()
            .map_err(|message| ConfigError::Scenario {
                path: path.to_owned(),
                message,
            })?;
        Ok(scenario)
    }

    /// Every token rule, shorthand lists included.
    pub fn token_rules(&self) -> Vec<TokenRule> {
        fn short(list: &[String], state: TokenState) -> impl Iterator<Item = TokenRule> + '_ {
            list.iter().map(move |t| TokenRule {
                token: t.clone(),
                state,
                topic: None,
                timestamp_ms: None,
            })
        }
        short(&self.unregistered, TokenState::Unregistered)
            .chain(short(&self.expired, TokenState::Expired))
            .chain(short(&self.bad, TokenState::Bad))
            .chain(self.tokens.iter().cloned())
            .collect()
    }

    pub(crate) fn compile(&self) -> Result<CompiledScenario, String> {
        let mut errors = Vec::new();
        let mut acc = 0.0;
        for (name, rate) in &self.errors {
            let reason: Reason = name
                .parse()
                .map_err(|_| format!("unknown reason {name:?} in errors"))?;
            check_rate(name, *rate)?;
            acc += rate;
            errors.push((acc, reason));
        }
        if acc > 1.0 {
            return Err(format!("error rates add up to {acc}, more than 1"));
        }
        let mut binary_errors = Vec::new();
        let mut acc = 0.0;
        for (code, rate) in &self.binary_errors {
            let status = code
                .parse::<u8>()
                .ok()
                .and_then(Status::from_code)
                .ok_or_else(|| {
                    format!("binary_errors key {code:?} is not a status code of the error packet")
                })?;
            check_rate(code, *rate)?;
            acc += rate;
            binary_errors.push((acc, status));
        }
        if acc > 1.0 {
            return Err(format!("binary error rates add up to {acc}, more than 1"));
        }
        check_rate("drop_rate", self.drop_rate)?;
        crate::pace::PaceSettings {
            latency_ms: Some(self.latency_ms),
            latency_jitter_ms: Some(self.latency_jitter_ms),
            rate: Some(self.rate),
        }
        .check()?;
        for rule in self.token_rules() {
            herald_apns::token_hex::DeviceToken::from_hex(&rule.token)
                .map_err(|e| format!("token {:?}: {e}", rule.token))?;
        }
        if self.goaway_every == Some(0) {
            return Err("goaway_every must be at least 1".into());
        }
        if let Some(secs) = self.idle_timeout_secs
            && !(1..=MAX_IDLE_TIMEOUT_SECS).contains(&secs)
        {
            return Err(format!(
                "idle_timeout_secs {secs} is not within 1..={MAX_IDLE_TIMEOUT_SECS} (leave it out for no idle timeout)"
            ));
        }
        for (name, value, range) in [
            (
                "initial_window_size",
                self.initial_window_size,
                INITIAL_WINDOW_RANGE,
            ),
            (
                "connection_window_size",
                self.connection_window_size,
                CONNECTION_WINDOW_RANGE,
            ),
            (
                "max_header_list_size",
                self.max_header_list_size,
                HEADER_LIST_RANGE,
            ),
        ] {
            if let Some(v) = value {
                check_setting(name, v, range).map_err(|e| e.to_string())?;
            }
        }
        let reason = self.goaway_reason.as_deref().unwrap_or("Shutdown");
        let goaway_debug = serde_json::json!({ "reason": reason }).to_string().into();
        Ok(CompiledScenario {
            errors,
            binary_errors,
            drop_rate: self.drop_rate,
            goaway_every: self.goaway_every,
            goaway_first_request: self.goaway_first_request,
            goaway_debug,
            idle_timeout_secs: self.idle_timeout_secs,
            seed: self.seed,
        })
    }
}

/// SplitMix64: small, fast, seedable; one per connection, seeded from the scenario seed and the connection's
/// ordinal so a run reproduces.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64, stream: u64) -> Rng {
        let mut rng = Rng(seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F));
        rng.next_u64();
        rng
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl CompiledScenario {
    pub fn roll_error(&self, rng: &mut Rng) -> Option<Reason> {
        if self.errors.is_empty() {
            return None;
        }
        let x = rng.next_f64();
        self.errors
            .iter()
            .find(|(bound, _)| x < *bound)
            .map(|(_, r)| *r)
    }

    pub fn roll_binary_error(&self, rng: &mut Rng) -> Option<Status> {
        if self.binary_errors.is_empty() {
            return None;
        }
        let x = rng.next_f64();
        self.binary_errors
            .iter()
            .find(|(bound, _)| x < *bound)
            .map(|(_, s)| *s)
    }

    pub fn roll_drop(&self, rng: &mut Rng) -> bool {
        self.drop_rate > 0.0 && rng.next_f64() < self.drop_rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_compile_cumulatively_and_rolls_reproduce() {
        let s: Scenario = serde_json::from_str(
            r#"{"seed": 3, "errors": {"InternalServerError": 0.5, "ServiceUnavailable": 0.5}}"#,
        )
        .unwrap();
        let c = s.compile().unwrap();
        let rolls = |seed| {
            let mut rng = Rng::new(seed, 1);
            (0..64).map(|_| c.roll_error(&mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(rolls(3), rolls(3));
        assert!(rolls(3).iter().all(Option::is_some));
        assert!(rolls(3).contains(&Some(Reason::ServiceUnavailable)));
        assert!(rolls(3).contains(&Some(Reason::InternalServerError)));
    }

    #[test]
    fn bad_scenarios_are_refused_with_the_reason() {
        let bad = |json: &str| {
            serde_json::from_str::<Scenario>(json)
                .unwrap()
                .compile()
                .unwrap_err()
        };
        assert!(bad(r#"{"errors": {"NoSuchReason": 0.1}}"#).contains("NoSuchReason"));
        assert!(
            bad(r#"{"errors": {"InternalServerError": 0.7, "Shutdown": 0.7}}"#)
                .contains("more than 1")
        );
        assert!(bad(r#"{"drop_rate": 2}"#).contains("drop_rate"));
        // There is no status 9 (docs/apns-protocol.md#binary-error-packet), nor 11: refused, not dropped silently.
        assert!(bad(r#"{"binary_errors": {"9": 0.1}}"#).contains(r#""9""#));
        assert!(bad(r#"{"binary_errors": {"1": 0.1, "11": 0.1}}"#).contains(r#""11""#));
        assert!(bad(r#"{"binary_errors": {"x": 0.1}}"#).contains(r#""x""#));
        // A latency or jitter beyond an hour is refused, naming the field and the maximum.
        for field in ["latency_ms", "latency_jitter_ms"] {
            let e = bad(&format!(r#"{{"{field}": 18446744073709551615}}"#));
            assert!(e.contains(field) && e.contains("3600000"), "{e}");
            let e = bad(&format!(r#"{{"{field}": 3600001}}"#));
            assert!(e.contains(field), "{e}");
        }
        assert!(bad(r#"{"bad": ["xyz"]}"#).contains("xyz"));
        assert!(bad(r#"{"idle_timeout_secs": 0}"#).contains("idle_timeout_secs 0"));
        assert!(
            bad(r#"{"idle_timeout_secs": 18446744073709551615}"#).contains("idle_timeout_secs")
        );
        assert!(serde_json::from_str::<Scenario>(r#"{"nope": 1}"#).is_err());
        // HTTP/2 settings out of range are refused, naming the setting and its range.
        let e = bad(r#"{"initial_window_size": 0}"#);
        assert!(
            e.contains("initial_window_size 0") && e.contains("2147483647"),
            "{e}"
        );
        let e = bad(r#"{"initial_window_size": 2147483648}"#);
        assert!(e.contains("initial_window_size"), "{e}");
        let e = bad(r#"{"connection_window_size": 65534}"#);
        assert!(
            e.contains("connection_window_size 65534") && e.contains("65535.."),
            "{e}"
        );
        assert!(bad(r#"{"max_header_list_size": 0}"#).contains("max_header_list_size 0"));
        assert!(serde_json::from_str::<Scenario>(r#"{"stream_overrun": "drop"}"#).is_err());
    }

    #[test]
    fn connection_options_parse() {
        let s: Scenario = serde_json::from_str(
            r#"{"stream_overrun": "goaway", "apple_settings": true, "initial_window_size": 65535,
                "connection_window_size": 65535, "max_header_list_size": 8000}"#,
        )
        .unwrap();
        s.compile().unwrap();
        assert_eq!(s.stream_overrun, Some(StreamOverrun::Goaway));
        assert!(s.apple_settings);
        assert_eq!(
            (
                s.initial_window_size,
                s.connection_window_size,
                s.max_header_list_size
            ),
            (Some(65535), Some(65535), Some(8000))
        );
        let s: Scenario = serde_json::from_str(r#"{"stream_overrun": "refuse"}"#).unwrap();
        assert_eq!(s.stream_overrun, Some(StreamOverrun::Refuse));
    }

    #[test]
    fn every_error_packet_status_compiles_and_an_hour_of_latency_is_allowed() {
        let s: Scenario = serde_json::from_str(
            r#"{"binary_errors": {"1": 0.2, "10": 0.2, "128": 0.2, "255": 0.2},
                "latency_ms": 3600000, "latency_jitter_ms": 3600000}"#,
        )
        .unwrap();
        let c = s.compile().unwrap();
        let statuses: Vec<Status> = c.binary_errors.iter().map(|(_, s)| *s).collect();
        assert_eq!(
            statuses,
            [
                Status::ProcessingError,
                Status::Shutdown,
                Status::ProtocolError,
                Status::Unknown
            ]
        );
    }

    #[test]
    fn shorthand_lists_become_rules() {
        let s: Scenario =
            serde_json::from_str(r#"{"unregistered": ["aa"], "bad": ["bb"]}"#).unwrap();
        let rules = s.token_rules();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].state, TokenState::Unregistered);
        assert_eq!(rules[1].state, TokenState::Bad);
    }

    #[test]
    fn uniform_floats_stay_in_range() {
        let mut rng = Rng::new(0, 0);
        assert!(
            (0..1000)
                .map(|_| rng.next_f64())
                .all(|x| (0.0..1.0).contains(&x))
        );
    }
}
