//! herald-sim: an APNs simulator strict enough to stand in for Apple in tests, benchmarks and staging.
//!
//! It serves, on 127.0.0.1 by default and each on an ephemeral port unless told otherwise:
//! - the HTTP/2 provider API (`POST /3/device/<token>`, TLS with ALPN `h2` or prior knowledge), checking every
//!   header rule in Apple's order with Apple's reason strings, certificate and provider-token authentication,
//!   stream limits, GOAWAY and configurable HTTP/2 settings (Apple's observed ones with
//!   [`SimConfig::apple_settings`]; [`h2`] module docs list the order);
//! - the legacy binary gateway (commands 0/1/2, error packets) and the feedback service ([`binary`]);
//! - channel management and broadcast push on two ports of their own ([`broadcast`]);
//! - an admin HTTP/1.1 port: `GET /stats`, `GET /record`, `POST /tokens`, `POST /shutdown-binary`,
//!   `POST /goaway`, `GET`/`POST /pace` ([`admin`]).
//!
//! Behaviour beyond validation comes from a [`Scenario`]: bad/unregistered/expired tokens, seeded random
//! transient errors and dropped connections, latency and an overall request rate (both changeable while running,
//! [`pace`]), GOAWAY every N requests or at the first one, idle close.
//! Everything accepted is counted ([`StatsSnapshot`]) and recorded exactly once ([`DeliveryRecord`], optionally
//! as JSON lines in a file).
//!
//! # In a Rust test
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use herald_sim::{Pki, SimConfig, Simulator};
//! let dir = tempfile::tempdir()?;
//! // CA, server cert for 127.0.0.1/localhost, client certs per topic, a .p8 key; dir/pki.json names them all.
//! let pki = Pki::generate(dir.path(), &["com.example.app".to_string()])?;
//! let mut config = SimConfig::from_pki(&pki.manifest)?;
//! config.scenario.unregistered.push("aa".repeat(32));
//! let sim = Simulator::start(config).await?;
//! // ... point a client at sim.addrs.h2, trusting pki.manifest.ca_cert ...
//! sim.wait_for_accepted(1, std::time::Duration::from_secs(5)).await;
//! let delivered = sim.record();
//! println!("{}", sim.stats().accepted.total);
//! sim.shutdown().await;
//! # let _ = delivered; Ok(()) }
//! ```
//!
//! # From the command line
//! `herald sim pki DIR` writes the PKI; `herald sim --pki DIR` serves it and prints one JSON line with the
//! six addresses once ready.

mod accept;
pub mod admin;
pub mod binary;
pub mod broadcast;
pub mod config;
pub mod h2;
pub mod pace;
pub mod pki;
pub mod record;
pub mod registry;
pub mod scenario;
mod sim;
pub mod stats;
pub mod tls;

pub use config::{
    AuthPolicy, ConfigError, Environment, ProviderKey, STREAM_OVERRUN_DEBUG, SimConfig,
    StreamOverrun, TlsMaterial,
};
pub use pace::PaceSettings;
pub use pki::{
    CertVariant, ClientCertSpec, ClientFiles, DEFAULT_TOPIC, P12_PASSWORD, Pki, PkiError,
    PkiManifest,
};
pub use record::{DeliveryRecord, RecordProtocol};
pub use scenario::{Scenario, TokenRule, TokenState};
pub use sim::{SimAddrs, SimError, SimHandle, Simulator};
pub use stats::{BroadcastStats, StatsSnapshot};
