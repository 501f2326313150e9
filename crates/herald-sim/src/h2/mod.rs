//! The HTTP/2 provider API: `POST /3/device/<token>` over TLS (docs/apns-protocol.md#http2), served with `h2` on a
//! multi-threaded tokio runtime. One task per connection; the requests of a connection run as futures inside that task,
//! so the hot path takes no lock (counters are atomics, the delivery record is a channel).
//!
//! Requests are checked in this order, the first failure wins (docs/apns-protocol.md#simulator):
//!
//! 1. a repeated `apns-*` or `authorization` header -> DuplicateHeaders
//! 2. `apns-id` not a canonical lowercase UUID -> BadMessageId
//! 3. `:method` not POST -> 405 MethodNotAllowed
//! 4. no `apns-topic` where one is required (token connections, certificates listing several topics) -> MissingTopic
//! 5. `apns-collapse-id` over 64 bytes -> BadCollapseId (only its size: UTF-8 within 64 bytes passes)
//! 6. `apns-priority` not 10, 5 or 1 -> BadPriority
//! 7. unknown `apns-push-type` -> InvalidPushType
//! 8. `apns-expiration` not an integer -> BadExpirationDate; then push type and values that Apple calls errors
//!    together: `background` with `apns-priority: 10`, `liveactivity` with `apns-priority: 1` (it takes 5 or
//!    10) or `pushtotalk` with another priority -> BadPriority, `pushtotalk` with an expiration other than 0 ->
//!    BadExpirationDate
//! 9. `:path` with a query, or not `/3/device/…` -> 404 BadPath; empty token -> MissingDeviceToken; not hex of 32
//!    to 100 bytes (64 to 200 digits, either case) -> BadDeviceToken
//! 10. authentication: certificate (BadCertificate, BadCertificateEnvironment) or token (MissingProviderToken,
//!     InvalidProviderToken (also another team's token on a connection bound to a team), UnrelatedKeyIdInToken,
//!     BadEnvironmentKeyIdInToken, ExpiredProviderToken,
//!     429 TooManyProviderTokenUpdates)
//! 11. topic: malformed (not printable ASCII, so never before authentication) -> BadTopic; not covered by the
//!     certificate or key -> TopicDisallowed (topic-specific key: InvalidProviderToken); not matching the push
//!     type -> TopicDisallowed: a push type with a suffix needs it, and `alert`, `background` or `mdm` may not go
//!     to a topic whose suffix names another type. A two-label suffix (`.push-type.liveactivity`, `.push-type.widgets`,
//!     `.push-type.controls`, `.pushkit.fileprovider`) always names its type; a one-label one (`.voip`, `.voip-ptt`,
//!     `.complication`, `.location-query`) may also end a bundle id, so it does only where the connection knows its
//!     apps' bundle ids (certificate, topic-specific key) and the topic is not one of them
//! 12. token state from the scenario: bad -> BadDeviceToken; registered to another topic ->
//!     DeviceTokenNotForTopic; unregistered -> 410 Unregistered + timestamp; expired -> 410 ExpiredToken +
//!     timestamp
//! 13. (after the body) empty -> PayloadEmpty; over 4096 bytes (voip 5120: push type `voip`, or none and a
//!     `.voip` topic) -> 413 PayloadTooLarge (only a body within its limit is kept; a longer one is only
//!     counted). A body that has not ended [`crate::SimConfig::body_timeout`] (10 s) after the request's HEADERS
//!     gets its stream reset (`REFUSED_STREAM`, unprocessed).
//! 14. pace ([`crate::pace`]): under a rate, wait for the request's turn; then the scenario's dropped connections
//!     and random transient errors (an injected 410 carries the time of the answer as its `timestamp`); then the
//!     request is accepted and recorded, and the answer leaves after the latency (a stream the client resets before
//!     its answer stays accepted; only the answer is left out).
//!
//! Connections: a token connection (no client certificate) advertises `SETTINGS_MAX_CONCURRENT_STREAMS` 1 until its
//! first valid token, then the configured limit (default 1000); with `choppy_streams` any connection drops to 1
//! after a rejection and goes back up after the next success. Streams beyond the acknowledged limit get
//! `RST_STREAM(REFUSED_STREAM)`, or with `stream_overrun` `goaway` (once the client has acknowledged the first
//! SETTINGS) a GOAWAY with `PROTOCOL_ERROR` and the plain-text debug data
//! [`crate::config::STREAM_OVERRUN_DEBUG`], as APNs has answered. A stream the client resets stops counting
//! against the limit as soon as the reset is seen, even while it waits its turn under a rate; such a stream is
//! still processed in its turn, so a connection holds at most twice its configured limit of requests, reset ones
//! included, and refuses streams beyond (`REFUSED_STREAM`) instead of queueing without bound. GOAWAY carries JSON
//! debug data: `{"reason":"Shutdown"}` (every N requests, or at the first request with nothing processed, with the
//! scenario's `goaway_reason`; admin `POST /goaway`, simulator shutdown) or `{"reason":"IdleTimeout"}`; the
//! connection then finishes what it took and closes. The SETTINGS changes and GOAWAY debug data go through
//! [`io::FrameIo`], since `h2` has no API for them. The stream window, connection window and header list size
//! come from [`crate::SimConfig`] (1 MiB, 8 MiB and 16,384 by default; APNs' 65,535, 65,535 and 8000 with
//! [`crate::SimConfig::apple_settings`]).

pub(crate) mod auth;
mod conn;
mod delay;
pub mod io;
pub(crate) mod request;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub(crate) use auth::KeyRing;

use crate::config::{AuthPolicy, Environment, SimConfig, StreamOverrun};
use crate::record::Recorder;
use crate::registry::TokenRegistry;
use crate::scenario::CompiledScenario;
use crate::stats::Stats;

/// The HTTP/2 limits a port serves with (from [`SimConfig`]): the device port and the broadcast ports alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnSettings {
    /// The stream limit (at least 1).
    pub max_streams: u32,
    pub initial_window_size: u32,
    pub connection_window_size: u32,
    pub max_header_list_size: u32,
}

impl ConnSettings {
    pub fn of(config: &SimConfig) -> ConnSettings {
        ConnSettings {
            max_streams: config.max_concurrent_streams.max(1),
            initial_window_size: config.initial_window_size,
            connection_window_size: config.connection_window_size,
            max_header_list_size: config.max_header_list_size,
        }
    }

    /// An `h2` server builder with these limits (checked by [`SimConfig`] beforehand: `h2` panics on a window
    /// beyond 2^31-1).
    pub fn builder(&self) -> ::h2::server::Builder {
        let mut builder = ::h2::server::Builder::new();
        builder
            .max_concurrent_streams(self.max_streams)
            .initial_window_size(self.initial_window_size)
            .initial_connection_window_size(self.connection_window_size)
            .max_header_list_size(self.max_header_list_size);
        builder
    }
}

/// Everything a connection needs, shared by all of them.
pub(crate) struct H2Context {
    pub stats: Arc<Stats>,
    pub recorder: Arc<Recorder>,
    pub registry: Arc<TokenRegistry>,
    pub keys: Arc<KeyRing>,
    pub scenario: CompiledScenario,
    pub pace: Arc<crate::pace::Pace>,
    pub environment: Environment,
    pub auth: AuthPolicy,
    pub settings: ConnSettings,
    pub choppy_streams: bool,
    pub stream_overrun: StreamOverrun,
    pub token_max_age: Duration,
    pub token_update_interval: Duration,
    /// How long a request's body may take to end, from its HEADERS.
    pub body_timeout: Duration,
    pub unique_id: bool,
    pub ordinal: AtomicU64,
    /// Bumped to make every connection send GOAWAY `{"reason":"Shutdown"}` and close.
    pub goaway_all: watch::Receiver<u64>,
}

/// Accepts TLS connections until `stop` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    ctx: Arc<H2Context>,
    stop: watch::Receiver<bool>,
) {
    let stats = ctx.stats.clone();
    crate::accept::serve_tls(listener, tls, stop, "h2", stats, move |_peer| {
        let ctx = ctx.clone();
        let ordinal = ctx.ordinal.fetch_add(1, Ordering::Relaxed);
        move |stream| conn::serve_connection(ctx, stream, ordinal)
    })
    .await
}
