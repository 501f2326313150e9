//! The REST listener: Momentum's `/v1.0/inject` and the native `/api/v1/push` batch API
//! (docs/momentum-compat.md#rest-injector).
//!
//! [`router`] builds the axum application (routes, JSON 404/405 answers, the address lists and API keys of
//! [`auth`]); [`serve`] runs it on a TCP listener, with TLS when the listener has a certificate, until a
//! shutdown signal, then lets in-flight requests finish. Every accepting route reads the body within
//! `max_request_size`, validates each notification with [`Intake::prepare`], and answers only after
//! [`Intake::commit`] made the accepted ones durable.

pub mod auth;
pub mod error;
pub mod idempotency;
pub mod inject;
pub mod json_errors;
pub mod push;
pub mod query;
pub mod router;
pub mod server;
pub mod template;
pub mod text;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::http::Extensions;
use herald_conf::ListenerSettings;

use crate::inbound::accept::Intake;
use crate::inbound::doors::DoorLimits;
use crate::queue::message::MessageId;

pub use router::{ROUTES, router, router_with};
pub use server::{
    BodyTimeout, ListenerCertificate, TlsSetupError, certified_key, serve, serve_app,
    serve_limited, tls_config, tls_server,
};

/// What every handler of one listener shares.
#[derive(Clone)]
pub struct RestState {
    pub intake: Arc<Intake>,
    pub settings: Arc<ListenerSettings>,
    /// The listener's limits; handlers read `max_notifications` (`max_notifications_per_request`).
    pub limits: Arc<DoorLimits>,
    /// Set when REST injection is turned off (`restinjector { enabled = false }`): the injection routes answer
    /// `403` with this text.
    pub injection_off: Option<Arc<str>>,
    /// Remembers `Idempotency-Key`s; `None`: the header is ignored (no store).
    pub idempotency: Option<Arc<idempotency::Idempotency>>,
    /// Wrong API keys per client address; shared with the listener's dashboard.
    pub guesses: Arc<crate::access::GuessThrottle>,
}

impl RestState {
    pub fn new(settings: ListenerSettings, intake: Arc<Intake>) -> Self {
        RestState {
            intake,
            settings: Arc::new(settings),
            limits: Arc::new(DoorLimits::default()),
            injection_off: None,
            idempotency: None,
            guesses: Arc::default(),
        }
    }

    /// The same state held to `limits` instead of the defaults.
    pub fn with_limits(mut self, limits: Arc<DoorLimits>) -> Self {
        self.limits = limits;
        self
    }

    /// The same state remembering `Idempotency-Key`s in `idempotency`.
    pub fn with_idempotency(mut self, idempotency: Option<Arc<idempotency::Idempotency>>) -> Self {
        self.idempotency = idempotency;
        self
    }

    /// The same state counting wrong API keys in `guesses` (the one its listener's dashboard counts in).
    pub fn with_guesses(mut self, guesses: Arc<crate::access::GuessThrottle>) -> Self {
        self.guesses = guesses;
        self
    }

    /// The same state with injection refused for `reason`.
    pub fn with_injection_off(mut self, reason: Option<&str>) -> Self {
        self.injection_off = reason.map(Arc::from);
        self
    }
}

/// The id of the connection a request arrived on, set by [`serve`] for the mainlog's reception lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnId(pub MessageId);

/// The client's address, as [`serve`] (or axum's `into_make_service_with_connect_info`) recorded it. An IPv4
/// client of a dual-stack listener (`[::]:port`) arrives as `::ffff:a.b.c.d`: it is given back as the IPv4
/// address, so that IPv4 blocks in the address lists and `peer` stanzas match it and each IPv4 client counts
/// its wrong keys on its own.
pub fn peer_ip(extensions: &Extensions) -> Option<IpAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_canonical())
}

/// The connection id of a request; a fresh one when the server did not set it (one per request then).
pub fn conn_id(intake: &Intake, extensions: &Extensions) -> MessageId {
    extensions
        .get::<ConnId>()
        .map(|c| c.0)
        .unwrap_or_else(|| intake.next_id())
}
