//! The option table: every option herald reads, with its type, default, valid scopes and a one-line description.
//! Adding an option is one entry `Ident => opt(...)` in the table below, which yields both its row in [`OPTIONS`]
//! and its typed id [`Opt::Ident`] (an enum-valued option also declares its Rust type with `word_enum!`, whose
//! words are the table's `Kind::Enum` list). Code reads options by typed id, so a misspelt option does not compile;
//! [`lookup`] is the by-name path and returns `None` for an unknown name. From then on it is parsed, type-checked, scope-checked, evaluated
//! with fallback (`Config::eval`, `herald config eval`), shown, suggested for typos and required in
//! docs/configuration.md. A field in a typed view (`settings.rs`) is needed only where code wants it as a Rust type.
//! An option herald reads only when it starts is marked `.read_at_start()` (or `.read_at_start_in(scopes)`) on its
//! row: the document says so, and [`crate::Config::start_only_changes`] lists it when a reload changes it.

use std::{collections::HashMap, sync::OnceLock};

use crate::{
    scopes::ScopeKind::{self, *},
    value::{Kind, Value, parse_default},
};

/// A set of scope kinds, as a bit mask over [`ScopeKind::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scopes(u32);

impl Scopes {
    /// No scope.
    pub const NONE: Scopes = Scopes(0);

    pub const fn of(kinds: &[ScopeKind]) -> Scopes {
        let mut bits = 0u32;
        let mut i = 0;
        while i < kinds.len() {
            bits |= 1 << (kinds[i] as u32);
            i += 1;
        }
        Scopes(bits)
    }

    pub fn contains(self, kind: ScopeKind) -> bool {
        self.0 & (1 << (kind as u32)) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The kinds in the set, in [`ScopeKind::ALL`] order.
    pub fn kinds(self) -> impl Iterator<Item = ScopeKind> {
        ScopeKind::ALL
            .into_iter()
            .filter(move |k| self.contains(*k))
    }

    /// `global, binding_group, binding, domain`.
    pub fn describe(self) -> String {
        self.kinds()
            .map(ScopeKind::keyword)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One row of the option table.
#[derive(Debug, Clone, Copy)]
pub struct OptionDef {
    /// The option's name, lower case (names are matched case-insensitively).
    pub name: &'static str,
    pub kind: Kind,
    /// The default, as configuration text read with `kind`; `None` = unset.
    pub default: Option<&'static str>,
    pub scopes: Scopes,
    /// One line: what it does, and where herald differs from Momentum.
    pub doc: &'static str,
    /// Set for options herald accepts for compatibility but does not act on; `herald check` warns with this text.
    pub inert: Option<&'static str>,
    /// The scopes in which herald reads the option only when it starts: a reload leaves what it did with it as it
    /// was, and a new value takes effect at the next start ([`crate::Config::start_only_changes`] lists them).
    /// Empty for an option a reload applies.
    pub start_only: Scopes,
    /// Read per domain only (for the domain itself, whatever the binding): in a `domain` stanza it is valid only
    /// at the top level, not in one inside a binding or a binding group, where nothing would read it.
    pub top_level_domain_only: bool,
}

impl OptionDef {
    /// Marks the option as read only at start, in every scope it is valid in.
    const fn read_at_start(self) -> OptionDef {
        OptionDef {
            start_only: self.scopes,
            ..self
        }
    }

    /// Marks the option as read only at start in `scopes` (a reload applies it in its other scopes).
    const fn read_at_start_in(self, scopes: Scopes) -> OptionDef {
        OptionDef {
            start_only: scopes,
            ..self
        }
    }

    /// Marks the option as read per domain only: a `domain` stanza inside a binding or a binding group may not set
    /// it ([`OptionDef::top_level_domain_only`]).
    const fn domain_only_at_top_level(self) -> OptionDef {
        OptionDef {
            top_level_domain_only: true,
            ..self
        }
    }

    /// True if herald reads the option in a scope of kind `kind` only when it starts (a reload does not apply it).
    pub fn is_start_only_in(&self, kind: ScopeKind) -> bool {
        self.start_only.contains(kind)
    }
}

/// Index of an option in [`OPTIONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OptId(pub u16);

impl OptId {
    pub fn def(self) -> &'static OptionDef {
        &OPTIONS[self.0 as usize]
    }
}

/// Declares the option table: one line per option, `Ident => opt(...)`, producing both [`OPTIONS`] and the typed
/// id [`Opt`] whose discriminant is the row's index. Code that reads an option names it as `Opt::Ident`, so a typo
/// does not compile; [`lookup`] is the by-name path (configuration text, the console) and returns `None` for an
/// unknown name.
macro_rules! option_table {
    ($($id:ident => $def:expr),+ $(,)?) => {
        /// The typed id of every option in [`OPTIONS`], in table order (`Opt::X as usize` is its row).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u16)]
        pub enum Opt {
            $($id),+
        }

        impl Opt {
            /// Every option id, in table order.
            pub const ALL: &'static [Opt] = &[$(Opt::$id),+];
        }

        /// Every option herald knows, indexed by [`Opt`]. Names are unique.
        pub static OPTIONS: &[OptionDef] = &[$($def),+];
    };
}

impl Opt {
    /// The row index of the option.
    pub const fn id(self) -> OptId {
        OptId(self as u16)
    }

    /// The option's row in [`OPTIONS`].
    pub fn def(self) -> &'static OptionDef {
        self.id().def()
    }

    /// The option's name, lower case.
    pub fn name(self) -> &'static str {
        self.def().name
    }
}

impl From<Opt> for OptId {
    fn from(opt: Opt) -> OptId {
        opt.id()
    }
}

impl OptId {
    /// The typed id of this row; `None` only for an index past the table's end.
    pub fn opt(self) -> Option<Opt> {
        Opt::ALL.get(self.0 as usize).copied()
    }
}

/// Declares the Rust type of an enum-valued option together with its configuration words, so the table's
/// `Kind::Enum` list and the typed value are one declaration and cannot drift apart.
macro_rules! word_enum {
    (
        $(#[$m:meta])*
        pub enum $name:ident { $($(#[$vm:meta])* $var:ident = $word:literal),+ $(,)? }
    ) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vm])* $var),+
        }

        impl $name {
            /// The configuration words, in declaration order (the option's `Kind::Enum` list).
            pub const WORDS: &'static [&'static str] = &[$($word),+];

            /// The value for a configuration word as the table spells it (values are stored canonically).
            pub fn from_word(word: &str) -> Option<$name> {
                match word {
                    $($word => Some($name::$var),)+
                    _ => None,
                }
            }

            /// The configuration word of the value.
            pub fn word(self) -> &'static str {
                match self {
                    $($name::$var => $word),+
                }
            }
        }
    };
}

word_enum! {
    /// `delivery_method`.
    pub enum DeliveryMethod {
        Esmtp = "ESMTP",
        Smtp = "SMTP",
        Lmtp = "LMTP",
        Ecstream = "ECSTREAM",
        Apn = "APN",
        Gcm = "GCM",
        Mm7 = "MM7",
    }
}

word_enum! {
    /// `tls`.
    pub enum TlsMode {
        No = "no",
        IfAvailable = "ifavailable",
        Required = "required",
    }
}

word_enum! {
    /// `tls_verify`: how much of the server's certificate is checked.
    pub enum TlsVerify {
        /// Nothing is checked.
        No = "no",
        /// The chain must lead to a trusted CA (`tls_ca` or the system roots); the name is not checked.
        Ca = "ca",
        /// The chain and the host name are checked.
        Host = "host",
    }
}

word_enum! {
    /// `mcmt_reception`.
    pub enum McmtReception {
        Allow = "allow",
        Reject = "reject",
        Passthru = "passthru",
    }
}

word_enum! {
    /// `apn_binary_format`.
    pub enum ApnBinaryFormat {
        /// Command 2.
        Frame = "frame",
        /// Command 1.
        Enhanced = "enhanced",
    }
}

word_enum! {
    /// `spool_backend`.
    pub enum SpoolBackend {
        Embedded = "embedded",
        JetStream = "jetstream",
    }
}

word_enum! {
    /// `log_format`: how herald writes its diagnostics to standard error.
    #[derive(Default)]
    pub enum LogFormat {
        /// Human-readable lines.
        #[default]
        Text = "text",
        /// One JSON object per line, for log shippers.
        Json = "json",
    }
}

const fn opt(
    name: &'static str,
    kind: Kind,
    default: Option<&'static str>,
    scopes: Scopes,
    doc: &'static str,
) -> OptionDef {
    OptionDef {
        name,
        kind,
        default,
        scopes,
        doc,
        inert: None,
        start_only: Scopes::NONE,
        top_level_domain_only: false,
    }
}

const fn inert(
    name: &'static str,
    kind: Kind,
    default: Option<&'static str>,
    scopes: Scopes,
    doc: &'static str,
    why: &'static str,
) -> OptionDef {
    OptionDef {
        name,
        kind,
        default,
        scopes,
        doc,
        inert: Some(why),
        start_only: Scopes::NONE,
        top_level_domain_only: false,
    }
}

const DELIVERY: Scopes = Scopes::of(&[Global, BindingGroup, Binding, Domain]);
const DELIVERY_AND_HOST: Scopes = Scopes::of(&[Global, BindingGroup, Binding, Domain, Host]);
const NO_GROUP: Scopes = Scopes::of(&[Global, Binding, Domain]);
const GLOBAL_DOMAIN: Scopes = Scopes::of(&[Global, Domain]);
const BINDINGS: Scopes = Scopes::of(&[Global, BindingGroup, Binding]);
const GLOBAL: Scopes = Scopes::of(&[Global]);
const TLS_ID: Scopes = Scopes::of(&[
    Global,
    BindingGroup,
    Binding,
    Domain,
    EsmtpListener,
    HttpListener,
    ControlListener,
    EcstreamListener,
    Listen,
    Peer,
    PathwayGroup,
    Pathway,
]);
const LISTENER: Scopes = Scopes::of(&[
    EsmtpListener,
    HttpListener,
    ControlListener,
    EcstreamListener,
    Listen,
]);
const LISTENER_PEER: Scopes = Scopes::of(&[
    EsmtpListener,
    HttpListener,
    ControlListener,
    EcstreamListener,
    Listen,
    Peer,
]);
/// `mcmt_reception`: Momentum's scopes, and the `http_listener` (whose listen and peer stanzas Momentum gives every
/// ESMTP listener option), where it is accepted without effect and `herald check` warns.
const MCMT: Scopes = Scopes::of(&[
    EsmtpListener,
    HttpListener,
    Listen,
    Peer,
    PathwayGroup,
    Pathway,
]);
const HTTP: Scopes = Scopes::of(&[HttpListener, Listen]);
/// The services an HTTP listener can offer (`http_services`).
pub const HTTP_SERVICES: &[&str] = &["inject", "push", "tokens", "metrics", "dashboard"];
const HTTP_PEER: Scopes = Scopes::of(&[HttpListener, Listen, Peer]);
const CONTROL: Scopes = Scopes::of(&[ControlListener, Listen]);
const ESMTP: Scopes = Scopes::of(&[EsmtpListener, Listen]);
const ESMTP_CONTROL: Scopes = Scopes::of(&[EsmtpListener, ControlListener, Listen]);
/// The listeners herald runs (ESMTP, HTTP, control) and their listen stanzas.
const DOORS: Scopes = Scopes::of(&[EsmtpListener, HttpListener, ControlListener, Listen]);
const MODULES: Scopes = Scopes::of(&[Apn, ApnLogger, EcLogger, Httpsrv, Restinjector]);
const APNLOG: Scopes = Scopes::of(&[ApnLogger]);
const RESTINJ: Scopes = Scopes::of(&[Restinjector]);
const LOGGERS: Scopes = Scopes::of(&[ApnLogger, EcLogger]);
const ECLOG: Scopes = Scopes::of(&[EcLogger]);

const U32: Kind = Kind::Int {
    min: 0,
    max: u32::MAX as i64,
};
const WEBHOOK_EVENTS: &[&str] = &["delivered", "failed", "invalid_token"];
const DEBUG_LEVELS: &[&str] = &[
    "debug", "info", "notice", "warning", "error", "crit", "critical", "alert", "emerg",
];

option_table! {
    // --- delivery: where and how notifications go (docs/momentum-compat.md#options) ---
    DeliveryMethod => opt(
        "delivery_method",
        Kind::Enum(DeliveryMethod::WORDS),
        Some("ESMTP"),
        DELIVERY,
        "How a domain is delivered; herald delivers `APN` domains only and refuses to queue for the others.",
    ),
    Routes => opt(
        "routes",
        Kind::Routes,
        None,
        GLOBAL_DOMAIN,
        "Where to deliver: `apn://HOST?port=2195` (or Momentum's `http://HOST?port=2195`; port 2195 by default) is the legacy binary protocol, `https://HOST[:PORT]` (port 443 by default) is HTTP/2, a herald addition.",
    ),
    IdleTimeout => opt(
        "idle_timeout",
        Kind::Seconds,
        Some("5"),
        DELIVERY,
        "Seconds an idle outbound connection stays open (channel management and broadcast connections too); 0 keeps it open forever (never use 0 for APNs). Each domain has connections of its own: with many apps that each push only now and then, the default closes an app's connection between its bursts and opens a new one for the next, many connections a second for one team, which Apple may take for an attack; give such apps minutes.",
    ),
    DeliveryResponseTimeout => opt(
        "delivery_response_timeout",
        Kind::Millis,
        Some("5000"),
        NO_GROUP,
        "Milliseconds to wait for a response; on the binary protocol a notification counts as delivered when no error arrives in this time, so keep it longer than the gateway's round trip and stalls: an error that comes later reports the failed notification delivered, and every later one on that connection already reported delivered is lost (apns-protocol.md §1.5). On HTTP/2 it counts from when the request was written, a stream without an answer in time is cancelled before the notification is retried, and the adaptive in-flight limit aims at answers within a quarter of it (operations.md, \"A slow APNs\").",
    ),
    MaxOutboundConnections => opt(
        "max_outbound_connections",
        Kind::Int {
            min: -1,
            max: u32::MAX as i64,
        },
        Some("32"),
        DELIVERY_AND_HOST,
        "Most connections per binding and domain (-1 = unlimited); in a `host` stanza an unset value means -1 and does not fall back. A cap: another HTTP/2 connection opens only when the open ones carry all the streams APNs allows, never because APNs is slow. 0, to which Momentum gives no meaning, would stop delivery: herald takes it as 1, and `herald check` warns.",
    ),
    Tls => inert(
        "tls",
        Kind::Enum(TlsMode::WORDS),
        Some("no"),
        DELIVERY,
        "Whether outbound connections use TLS; accepted for Momentum compatibility.",
        "APNs connections always use TLS",
    ),
    TlsVerify => opt(
        "tls_verify",
        Kind::Enum(TlsVerify::WORDS),
        Some("host"),
        DELIVERY,
        "Server certificate check: `host` (chain and name), `ca` (chain only), `no`. herald's default is `host` with the system roots; Momentum's is `no`.",
    ),
    TlsCa => opt(
        "tls_ca",
        Kind::PathOrNone,
        None,
        DELIVERY,
        "PEM file of CA certificates to trust instead of the system roots (e.g. the simulator's CA); a herald addition.",
    ),
    TlsCertificate => opt(
        "tls_certificate",
        Kind::PathOrNone,
        None,
        TLS_ID,
        "PEM client certificate for certificate-based APNs auth (the file may also hold the key); on a listener, its server certificate. `none` (Momentum's special value) unsets one a wider scope sets, as it does for `tls_key`, `tls_ca`, `tls_pkcs12` and `apn_key`.",
    ),
    TlsKey => opt(
        "tls_key",
        Kind::PathOrNone,
        None,
        TLS_ID,
        "PEM private key for `tls_certificate`; unset, the key is read from the `tls_certificate` file, which must then hold it (a PEM PRIVATE KEY block), on a listener as for delivery. On a listener, `tls_key` without `tls_certificate` refuses the configuration (the listener would serve plain text); a listen stanza with `tls_certificate = none` serves plain text on purpose.",
    ),
    TlsCiphers => inert(
        "tls_ciphers",
        Kind::Str,
        None,
        TLS_ID,
        "OpenSSL cipher list; accepted for Momentum compatibility.",
        "herald's TLS library picks its own safe cipher suites",
    ),
    TlsPkcs12 => opt(
        "tls_pkcs12",
        Kind::PathOrNone,
        None,
        DELIVERY,
        "PKCS#12 (.p12) file holding the client certificate and key, instead of `tls_certificate`/`tls_key`; a herald addition.",
    ),
    TlsPkcs12Password => opt(
        "tls_pkcs12_password",
        Kind::Str,
        None,
        DELIVERY,
        "Password of `tls_pkcs12`; a herald addition.",
    ),
    MxFailuresToDelay => opt(
        "mx_failures_to_delay",
        U32,
        Some("50"),
        GLOBAL_DOMAIN,
        "Consecutive connection failures after which the domain's active queue is moved to the delayed queue; 0 never.",
    ),
    ApnExpiry => opt(
        "apn_expiry",
        Kind::Seconds,
        Some("604800"),
        DELIVERY,
        "Seconds APNs keeps a notification it cannot deliver at once, when the notification names no expiration; herald uses Momentum's later default of 7 days.",
    ),
    ApnTopic => opt(
        "apn_topic",
        Kind::Str,
        None,
        DELIVERY,
        "The `apns-topic` sent on HTTP/2 (usually the app's bundle id); a herald addition.",
    ),
    ApnKey => opt(
        "apn_key",
        Kind::PathOrNone,
        None,
        DELIVERY,
        "Token-based auth: the `.p8` signing key file; a herald addition.",
    ),
    ApnKeyId => opt(
        "apn_key_id",
        Kind::Str,
        None,
        DELIVERY,
        "Token-based auth: the key's 10-character Key ID; a herald addition.",
    ),
    ApnTeamId => opt(
        "apn_team_id",
        Kind::Str,
        None,
        DELIVERY,
        "Token-based auth: the 10-character Team ID; a herald addition.",
    ),
    ApnBinaryFormat => opt(
        "apn_binary_format",
        Kind::Enum(ApnBinaryFormat::WORDS),
        Some("frame"),
        DELIVERY,
        "Binary protocol notification format: `frame` (command 2) or `enhanced` (command 1, which has no priority: such a domain takes only priority 10 and no background push); a herald addition.",
    ),
    ApnFeedbackAddress => opt(
        "apn_feedback_address",
        Kind::Str,
        None,
        DELIVERY,
        "host:port of the binary feedback service; unset: the route's gateway.* host as feedback.*:2196; a herald addition.",
    ),
    ApnFeedbackInterval => opt(
        "apn_feedback_interval",
        Kind::Seconds,
        Some("0"),
        DELIVERY,
        "Seconds between polls of the binary feedback service for invalid tokens; 0 never polls; a herald addition.",
    ),
    ApnChannelRoute => opt(
        "apn_channel_route",
        Kind::Routes,
        None,
        GLOBAL_DOMAIN,
        "Where herald sends Live Activity channel management requests (create, read, delete, list), an `https://HOST[:PORT]` route; unset: Apple's management host for the environment of the domain's route (`api-manage-broadcast.sandbox.push.apple.com:2195` for a sandbox or development host, `api-manage-broadcast.push.apple.com:2196` for another Apple host), none for a route that is not Apple's; a herald addition.",
    )
    .domain_only_at_top_level(),
    ApnBroadcastRoute => opt(
        "apn_broadcast_route",
        Kind::Routes,
        None,
        GLOBAL_DOMAIN,
        "Where herald sends the domain's broadcast pushes (`POST /api/v1/broadcast`), an `https://HOST[:PORT]` route; unset: the domain's own route when it is an Apple HTTP/2 host (Apple serves broadcasts on the device-push hosts), none for a binary (`apn://`) route or a route that is not Apple's; a herald addition.",
    )
    .domain_only_at_top_level(),
    RetryInterval => opt(
        "retry_interval",
        Kind::Seconds,
        Some("1200"),
        DELIVERY,
        "Seconds before the first retry; each further retry waits twice as long as the one before.",
    ),
    MaxRetryInterval => opt(
        "max_retry_interval",
        Kind::Seconds,
        Some("43200"),
        DELIVERY,
        "Cap on the doubled retry interval, in seconds.",
    ),
    MaxRetries => opt(
        "max_retries",
        Kind::MaxRetries,
        Some("auto"),
        DELIVERY,
        "`auto` (as many as fit in `message_expiration`), `none` (no limit) or a number of retries.",
    ),
    MessageExpiration => opt(
        "message_expiration",
        Kind::Seconds,
        Some("86400"),
        DELIVERY,
        "Seconds a notification may stay undelivered before it fails permanently.",
    ),
    NeverAttemptExpiredMessages => opt(
        "never_attempt_expired_messages",
        Kind::Bool,
        Some("false"),
        DELIVERY,
        "Fail a notification that expired while queued without trying it.",
    ),
    GenerateBounces => inert(
        "generate_bounces",
        Kind::Bool,
        Some("true"),
        DELIVERY,
        "Send a bounce to the sender's address on a permanent failure of an SMTP-injected notification.",
        "herald sends no bounce messages: a permanent failure is written to the logs (P lines) and an invalid token to the invalid-token list",
    ),
    HttpUri => inert(
        "http_uri",
        Kind::Str,
        Some(""),
        DELIVERY,
        "The request URI of a push delivered over HTTP (Momentum uses it for GCM and MM7; its APNs chapter never sets it).",
        "herald delivers to APNs only, whose binary protocol has no URI and whose HTTP/2 path is Apple's `/3/device/TOKEN`",
    ),
    BindAddress => opt(
        "bind_address",
        Kind::Ip,
        None,
        BINDINGS,
        "Local IP address outbound connections of a binding are made from.",
    ),
    MaxResidentActiveQueueSize => inert(
        "max_resident_active_queue_size",
        U32,
        Some("250"),
        DELIVERY,
        "Momentum's bound on in-memory active queue entries; accepted for compatibility.",
        "herald keeps spooled notifications on disk and bounds memory itself, so this has no effect",
    ),
    MaxResidentNotifications => opt(
        "max_resident_notifications",
        Kind::Int {
            min: 1,
            max: 100_000_000,
        },
        Some("1000000"),
        GLOBAL,
        "Notifications herald holds in memory at once (queued, retrying or in flight); while it is full, listeners refuse new ones (REST `503` with `retry-after`, ESMTP `452 4.3.1`) instead of growing; a herald addition.",
    )
    .read_at_start(),
    MaxQueuedBroadcasts => opt(
        "max_queued_broadcasts",
        Kind::Int {
            min: 1,
            max: 10_000_000,
        },
        Some("100000"),
        GLOBAL,
        "Broadcasts (`POST /api/v1/broadcast`) one node holds accepted and not finished (waiting, retrying or in flight); while it holds this many, new ones are refused with `503` and `retry-after` instead of growing; a reload applies at once; a herald addition.",
    ),
    IdleQueueTimeout => opt(
        "idle_queue_timeout",
        Kind::Seconds,
        Some("600"),
        GLOBAL,
        "Seconds a domain's queue that holds nothing and has no connection keeps its task and connection pool; then they are let go (its counters stay, and its next notification starts them again); 0 keeps them for the process's life; a herald addition.",
    )
    .read_at_start(),
    // --- listeners (docs/momentum-compat.md#mcmt-reception, docs/momentum-compat.md#rest-injector,
    // docs/momentum-compat.md#fallback) ---
    Enable => opt(
        "enable",
        Kind::Bool,
        Some("true"),
        LISTENER,
        "Whether a listener or listen stanza accepts connections.",
    ),
    McmtReception => opt(
        "mcmt_reception",
        Kind::Enum(McmtReception::WORDS),
        Some("passthru"),
        MCMT,
        "What an ESMTP listener does with a push (MCMT) message: accept it, reject it, or pass it through (herald refuses non-push mail).",
    ),
    AlwaysAllow => opt(
        "always_allow",
        Kind::Cidrs,
        None,
        LISTENER_PEER,
        "Client addresses always accepted, even when `always_deny` matches them; on its own it refuses no one (only `always_deny` refuses).",
    ),
    AlwaysDeny => opt(
        "always_deny",
        Kind::Cidrs,
        None,
        LISTENER_PEER,
        "Client addresses always refused (unless `always_allow` also matches).",
    ),
    MaxRequestSize => opt(
        "max_request_size",
        Kind::Bytes,
        Some("10485760"),
        HTTP,
        "Largest HTTP request body accepted, in bytes (larger ones get `413`); 0 = no limit (Momentum's default, unsafe on an open listener).",
    ),
    MaxNotificationsPerRequest => opt(
        "max_notifications_per_request",
        Kind::Int {
            min: 1,
            max: u32::MAX as i64,
        },
        Some("100000"),
        HTTP,
        "Notifications one REST request may carry (tokens, notifications, or recipients × template parts); a larger request gets `413` naming this option; a herald addition.",
    ),
    FirstByteTimeout => opt(
        "first_byte_timeout",
        Kind::Seconds,
        Some("10"),
        HTTP,
        "Seconds a new HTTP connection may stay silent (no TLS hello, no request byte) before herald closes it; 0 means the default; a herald addition.",
    ),
    HeaderTimeout => opt(
        "header_timeout",
        Kind::Seconds,
        Some("10"),
        HTTP,
        "Seconds a client has to send a request's headers, from the request's first byte; 0 means the default; a herald addition.",
    ),
    BodyTimeout => opt(
        "body_timeout",
        Kind::Seconds,
        Some("30"),
        HTTP,
        "Seconds a client has to send a request's whole body once its headers arrived (`408` after); 0 means the default; a herald addition.",
    ),
    KeepaliveTimeout => opt(
        "keepalive_timeout",
        Kind::Seconds,
        Some("60"),
        HTTP,
        "Seconds an HTTP connection may stay idle between requests before herald closes it; 0 means the default; a herald addition.",
    ),
    LogRequestsToPaniclog => inert(
        "log_requests_to_paniclog",
        Kind::Bool,
        Some("false"),
        HTTP,
        "Write a line per HTTP request to the paniclog (Momentum).",
        "herald has no paniclog and writes no line per HTTP request",
    ),
    DisableChunked => inert(
        "disable_chunked",
        Kind::Bool,
        Some("false"),
        HTTP,
        "Turn off chunked transfer encoding on an HTTP listener (Momentum).",
        "herald's HTTP server frames its answers itself: an answer of known length carries `content-length`, and only a streamed one (the dashboard's event stream) is chunked on HTTP/1.1",
    ),
    MaxConnections => opt(
        "max_connections",
        Kind::Int {
            min: 1,
            max: 1_000_000,
        },
        Some("1000"),
        DOORS,
        "Open connections a listen stanza accepts at once; beyond it a client is refused at connect (ESMTP `421 4.7.0`, HTTP `503`); a herald addition.",
    ),
    MaxConnectionsPerClient => opt(
        "max_connections_per_client",
        Kind::Int {
            min: 1,
            max: 1_000_000,
        },
        Some("100"),
        DOORS,
        "Open connections one client (an IPv4 address, or an IPv6 /64) may hold on a listen stanza; further ones are refused at connect; a herald addition.",
    ),
    HttpServices => opt(
        "http_services",
        Kind::Words(HTTP_SERVICES),
        Some("inject push tokens metrics"),
        HTTP,
        "What an HTTP listener serves: `inject` (/v1.0/inject), `push` (/api/v1/push), `tokens` (/api/v1/tokens/invalid), `metrics` (/metrics), `dashboard` (the operators' web dashboard under /dashboard/, not in the default); /healthz and /readyz always. A listen stanza with only `metrics` is a metrics listener of its own; a herald addition.",
    ),
    ApiKey => opt(
        "api_key",
        Kind::Str,
        None,
        HTTP_PEER,
        "A key REST clients must send (`Authorization: Bearer KEY` or `X-Api-Key`); a herald addition.",
    ),
    ApiKeys => opt(
        "api_keys",
        Kind::List,
        None,
        HTTP_PEER,
        "Several accepted REST API keys, added to `api_key`; a herald addition.",
    ),
    DashboardAdminKeys => opt(
        "dashboard_admin_keys",
        Kind::List,
        None,
        HTTP_PEER,
        "Which of the listener's API keys have the admin right on the web dashboard (flush, fail the queue, pause, resume, reload); other keys and `always_allow` clients only read; a herald addition.",
    ),
    DashboardHosts => opt(
        "dashboard_hosts",
        Kind::List,
        None,
        HTTP,
        "Host names under which a browser may read the web dashboard without a key (an `always_allow` client, or any client of a listener without keys), besides IP literals and `localhost`; a browser's key-less request to another name is refused (`401`), so that a page whose name is rebound to herald's address (DNS rebinding) cannot read the dashboard. Logins and keys are not affected; a herald addition.",
    ),
    AuthFailureLimit => opt(
        "auth_failure_limit",
        Kind::Int {
            min: 0,
            max: 1_000,
        },
        Some("5"),
        HTTP_PEER,
        "Wrong API keys one client address (one /64 for IPv6) may send within a minute, to the REST API and the dashboard together, before it is refused any key (`429` with `retry-after`) until a minute has passed since its last wrong one; 0 = never refused (for a proxy or a NAT many clients share: set it in a `peer` stanza of that address); a herald addition.",
    ),
    Pathway => inert(
        "pathway",
        Kind::Str,
        None,
        LISTENER_PEER,
        "Attaches a `pathway` stanza's settings to a listener, listen or peer scope (Momentum).",
        "herald reads pathway stanzas but does not apply them to listeners; set mcmt_reception and the TLS options in the listener, listen or peer scope",
    ),
    FileMode => opt(
        "file_mode",
        Kind::Mode,
        Some("0660"),
        CONTROL,
        "Mode of a control listener's Unix socket.",
    ),
    ControlPassword => opt(
        "control_password",
        Kind::Str,
        None,
        CONTROL,
        "Password a console must send (`auth PASSWORD`) before any command on this control listener; a herald addition.",
    ),
    Timeout => opt(
        "timeout",
        Kind::Seconds,
        Some("60"),
        ESMTP_CONTROL,
        "Seconds herald waits for each command or line from a control or ESMTP client before it closes the connection (ESMTP first answers `421 4.4.2`); 0 means the default.",
    ),
    MaxMessageSize => opt(
        "max_message_size",
        Kind::Int {
            min: 1,
            max: u32::MAX as i64,
        },
        Some("10485760"),
        ESMTP,
        "Largest message an ESMTP listener accepts, in bytes after dot-unstuffing; advertised as EHLO `SIZE`, larger messages get `552 5.3.4`; a herald addition.",
    ),
    MaxRecipientsPerMessage => opt(
        "max_recipients_per_message",
        Kind::Int {
            min: 1,
            max: u32::MAX as i64,
        },
        Some("1000"),
        ESMTP,
        "Recipients an ESMTP transaction may name; each further `RCPT` gets `452 4.5.3`; a herald addition.",
    ),
    MaxNotificationsPerMessage => opt(
        "max_notifications_per_message",
        Kind::Int {
            min: 1,
            max: u32::MAX as i64,
        },
        Some("100000"),
        ESMTP,
        "Notifications one MCMT message may become (push parts × recipients); a larger message gets `552 5.3.4` naming this option; a herald addition.",
    ),
    MaxLineLength => opt(
        "max_line_length",
        Kind::Int {
            min: 512,
            max: 1_048_576,
        },
        Some("1000"),
        ESMTP,
        "Longest command or message line an ESMTP listener reads, in bytes including CRLF and not counting a dot the client doubled at the start of a message line for transparency (RFC 5321: 512 for commands, 1000 for text); a herald addition.",
    ),
    ReconfigMessage => opt(
        "reconfig_message",
        Kind::Str,
        Some("4.3.2 Reconfiguration in progress"),
        ESMTP,
        "What follows `421` in the reply an ESMTP session opened before a reload gets at its next command, enhanced status code first (Momentum's default); the value of the configuration the reload published applies. Control characters (such as a tab) are sent as spaces, an empty value as the default; `herald check` warns about a value that does not begin with a class 4 enhanced status code (`4.X.Y`).",
    ),
    // --- modules (docs/momentum-compat.md#modules, docs/momentum-compat.md#rest-injector,
    // docs/momentum-compat.md#lexical-rules) ---
    Enabled => opt(
        "enabled",
        Kind::Bool,
        Some("true"),
        MODULES,
        "Whether the module is active: `apn` off holds delivery (notifications are accepted and spooled, not sent), `httpsrv` off starts no http_listener, `restinjector` off answers REST injection with 403, a logger off writes nothing.",
    )
    .read_at_start_in(LOGGERS),
    DotStuff => inert(
        "dot_stuff",
        Kind::Bool,
        Some("false"),
        RESTINJ,
        "Dot-stuff REST-injected messages (Momentum 3.5.4, MO-520).",
        "herald never relays an injected message as SMTP data: it reads the rendered template's push parts as written, so a line beginning with `.` keeps its dot, as with `dot_stuff = true`",
    ),
    DebugLevel => opt(
        "debug_level",
        Kind::Enum(DEBUG_LEVELS),
        Some("error"),
        MODULES,
        "Diagnostic level of the module's part of herald's stderr log (`apn`: delivery; `httpsrv`: HTTP listeners; `restinjector`: REST injection; loggers: log writers); notice is info, crit and above are error. Unset leaves the part at the process level; `RUST_LOG` overrides. Applied at start and at each reload.",
    ),
    // --- apn_logger (docs/momentum-compat.md#apn-logger) ---
    Concurrency => inert(
        "concurrency",
        Kind::Int { min: 1, max: 1024 },
        Some("1"),
        APNLOG,
        "Threads used by the apn_logger.",
        "herald's apn_logger writes from one task",
    ),
    Heartbeat => opt(
        "heartbeat",
        Kind::Seconds,
        Some("60"),
        LOGGERS,
        "Seconds between heartbeat (`M`) lines of this logger instance, independently of the others; 0 writes none.",
    )
    .read_at_start(),
    LogDelivery => opt(
        "log_delivery",
        Kind::Bool,
        Some("true"),
        APNLOG,
        "Log deliveries (`D`).",
    )
    .read_at_start(),
    LogDeliveryFormat => opt(
        "log_delivery_format",
        Kind::Str,
        Some("%t@D@%i@\"%sa\"@\"%da\"@%d@%g@%b@%H@%B@%ti"),
        APNLOG,
        "Format of delivery lines.",
    )
    .read_at_start(),
    LogHeartbeatFormat => opt(
        "log_heartbeat_format",
        Kind::Str,
        Some("%t@M"),
        APNLOG,
        "Format of heartbeat lines.",
    )
    .read_at_start(),
    LogPermfail => opt(
        "log_permfail",
        Kind::Bool,
        Some("true"),
        APNLOG,
        "Log permanent failures (`P`).",
    )
    .read_at_start(),
    LogPermfailFormat => opt(
        "log_permfail_format",
        Kind::Str,
        Some("%t@P@%i@%sa@%da@%d@%g@%b@%H@%S@%e"),
        APNLOG,
        "Format of permanent-failure lines (no quotes around %sa/%da, as Momentum).",
    )
    .read_at_start(),
    LogTempfail => opt(
        "log_tempfail",
        Kind::Bool,
        Some("true"),
        APNLOG,
        "Log transient failures (`T`).",
    )
    .read_at_start(),
    LogTempfailFormat => opt(
        "log_tempfail_format",
        Kind::Str,
        Some("%t@T@%i@\"%sa\"@\"%da\"@%d@%g@%b@%H@%B@%ti@%S@%e"),
        APNLOG,
        "Format of transient-failure lines.",
    )
    .read_at_start(),
    Logfile => opt(
        "logfile",
        Kind::Path,
        Some("/var/log/ecelerity/apnlog.ec"),
        APNLOG,
        "The apn_logger's file (Momentum's documentation shows it without the leading `/`).",
    )
    .read_at_start(),
    Logmode => opt(
        "logmode",
        Kind::Mode,
        Some("0644"),
        APNLOG,
        "Mode of a newly created apn_logger file, octal.",
    )
    .read_at_start(),
    Namespace => inert(
        "namespace",
        Kind::Str,
        Some("apn_logger,sieve,custom_logger"),
        APNLOG,
        "Macro namespaces searched, comma-separated.",
        "herald's apn_logger knows only its own macros",
    ),
    ThreadPool => inert(
        "thread_pool",
        Kind::Str,
        None,
        APNLOG,
        "Thread pool the logger runs on.",
        "herald has no thread pools to choose from",
    ),
    // --- ec_logger (docs/momentum-compat.md#mainlog) ---
    Mainlog => opt(
        "mainlog",
        Kind::Path,
        Some("/var/log/ecelerity/mainlog.ec"),
        ECLOG,
        "The mainlog file (R, D, T, P, M lines).",
    )
    .read_at_start(),
    Paniclog => inert(
        "paniclog",
        Kind::Path,
        Some("/var/log/ecelerity/paniclog.ec"),
        ECLOG,
        "The paniclog file.",
        "herald writes its diagnostics to standard error, not to a paniclog",
    ),
    Rejectlog => inert(
        "rejectlog",
        Kind::Path,
        Some("/var/log/ecelerity/rejectlog.ec"),
        ECLOG,
        "The rejectlog file.",
        "herald writes no rejectlog: a refusal is answered to the client (SMTP reply, HTTP status) and counted",
    ),
    Acctlog => inert(
        "acctlog",
        Kind::Path,
        None,
        ECLOG,
        "The accounting log file.",
        "herald writes no accounting log",
    ),
    Importlog => inert(
        "importlog",
        Kind::Path,
        None,
        ECLOG,
        "The import log file.",
        "herald writes no import log",
    ),
    MainlogMode => opt(
        "mainlog_mode",
        Kind::Mode,
        Some("0644"),
        ECLOG,
        "Mode of a new mainlog file.",
    )
    .read_at_start(),
    PaniclogMode => inert(
        "paniclog_mode",
        Kind::Mode,
        Some("0644"),
        ECLOG,
        "Mode of a new paniclog file.",
        "herald writes its diagnostics to standard error, not to a paniclog",
    ),
    RejectlogMode => inert(
        "rejectlog_mode",
        Kind::Mode,
        Some("0644"),
        ECLOG,
        "Mode of a new rejectlog file.",
        "herald writes no rejectlog: a refusal is answered to the client (SMTP reply, HTTP status) and counted",
    ),
    AcctlogLogMode => inert(
        "acctlog_log_mode",
        Kind::Mode,
        Some("0644"),
        ECLOG,
        "Mode of a new accounting log file.",
        "herald writes no accounting log",
    ),
    ImportlogMode => inert(
        "importlog_mode",
        Kind::Mode,
        Some("0644"),
        ECLOG,
        "Mode of a new import log file.",
        "herald writes no import log",
    ),
    LogReceptions => opt(
        "log_receptions",
        Kind::Bool,
        Some("true"),
        ECLOG,
        "Log receptions (`R`).",
    )
    .read_at_start(),
    LogDeliveries => opt(
        "log_deliveries",
        Kind::Bool,
        Some("true"),
        ECLOG,
        "Log deliveries (`D`).",
    )
    .read_at_start(),
    LogTransientFailures => opt(
        "log_transient_failures",
        Kind::Bool,
        Some("true"),
        ECLOG,
        "Log transient failures (`T`).",
    )
    .read_at_start(),
    LogPermanentFailures => opt(
        "log_permanent_failures",
        Kind::Bool,
        Some("true"),
        ECLOG,
        "Log permanent failures (`P`).",
    )
    .read_at_start(),
    LogRejections => inert(
        "log_rejections",
        Kind::Bool,
        Some("true"),
        ECLOG,
        "Log rejections to the rejectlog.",
        "herald writes no rejectlog: a refusal is answered to the client (SMTP reply, HTTP status) and counted",
    ),
    LogErrors => inert(
        "log_errors",
        Kind::Bool,
        Some("true"),
        ECLOG,
        "Log errors to the paniclog.",
        "herald writes its diagnostics to standard error, not to a paniclog",
    ),
    // --- outcomes for the apps that send (herald additions) ---
    OutcomeRetention => opt(
        "outcome_retention",
        Kind::Seconds,
        Some("86400"),
        GLOBAL,
        "Seconds a notification's or broadcast's final outcome stays available to `GET /api/v1/notifications/{id}` (kept in spool_dir/outcomes, pruned in the background); 0 turns status lookups off (every lookup answers 404 `unknown`, saying that lookups are off); a herald addition.",
    )
    .read_at_start(),
    OutcomeMaxEntries => opt(
        "outcome_max_entries",
        Kind::Int {
            min: 1,
            max: i64::MAX,
        },
        Some("10000000"),
        GLOBAL,
        "Most final outcomes kept; beyond it the oldest are pruned before their retention ends; a herald addition.",
    )
    .read_at_start(),
    OutcomeWebhookUrl => opt(
        "outcome_webhook_url",
        Kind::HttpUrl,
        None,
        GLOBAL_DOMAIN,
        "URL herald POSTs the domain's final outcomes to, in batches, signed with `outcome_webhook_secret` (docs/api.md \"Outcome webhooks\"): an `http://` or `https://` URL (the scheme in any case) with a host, checked at load (another scheme, or text that is not such a URL, is an error); unset or empty: none; a herald addition.",
    )
    .domain_only_at_top_level(),
    OutcomeWebhookSecret => opt(
        "outcome_webhook_secret",
        Kind::Str,
        None,
        GLOBAL_DOMAIN,
        "Key of the HMAC-SHA256 signature in the `herald-signature` header of every webhook request; a herald addition.",
    )
    .domain_only_at_top_level(),
    OutcomeWebhookEvents => opt(
        "outcome_webhook_events",
        Kind::Words(WEBHOOK_EVENTS),
        Some("delivered failed invalid_token"),
        GLOBAL_DOMAIN,
        "Which final outcomes the webhook gets: `delivered`, `failed` (failures other than invalid tokens), `invalid_token`; a herald addition.",
    )
    .domain_only_at_top_level(),
    OutcomeWebhookMaxAge => opt(
        "outcome_webhook_max_age",
        Kind::Seconds,
        Some("86400"),
        GLOBAL_DOMAIN,
        "Seconds herald keeps retrying an outcome the webhook receiver has not taken; older ones are dropped and counted; a herald addition.",
    )
    .domain_only_at_top_level(),
    OutcomeWebhookBacklog => opt(
        "outcome_webhook_backlog",
        Kind::Int {
            min: 1,
            max: i64::MAX,
        },
        Some("100000"),
        GLOBAL_DOMAIN,
        "Most outcomes waiting for a domain's webhook receiver; beyond it the oldest are dropped with a counter and a log line; a herald addition.",
    )
    .domain_only_at_top_level(),
    // --- invalid tokens (herald additions, docs/architecture.md#outcome) ---
    InvalidTokensFile => opt(
        "invalid_tokens_file",
        Kind::Path,
        None,
        GLOBAL,
        "File of the invalid-token store (JSON lines); unset: invalid-tokens.jsonl in spool_dir; a herald addition.",
    )
    .read_at_start(),
    InvalidTokenRetention => opt(
        "invalid_token_retention",
        Kind::Seconds,
        Some("0"),
        GLOBAL,
        "Seconds an invalid-token entry is kept after herald last learnt of it (a report that tells something new renews it: a later APNs time, or for a report without one a day after the last; an entry that expired comes back at the token's next report); older ones leave the store and, at its next rewrite, its file; checked every minute; 0 = kept until deleted (`DELETE /api/v1/tokens/invalid`); a herald addition.",
    ),
    FeedbackLogfile => opt(
        "feedback_logfile",
        Kind::Path,
        None,
        GLOBAL,
        "Log of every invalid device token reported by APNs or its feedback service, one `@`-delimited line each; a herald addition.",
    )
    .read_at_start(),
    // --- diagnostics on standard error (herald addition) ---
    LogFormat => opt(
        "log_format",
        Kind::Enum(LogFormat::WORDS),
        Some("text"),
        GLOBAL,
        "How `herald serve` writes its diagnostics to standard error: `text` (coloured only on a terminal and without `NO_COLOR`) or `json`, one object per line for log shippers; read at start and on reload; a herald addition.",
    ),
    // --- spool (herald additions, docs/architecture.md#spool) ---
    SpoolDir => opt(
        "spool_dir",
        Kind::Path,
        Some("/var/spool/herald"),
        GLOBAL,
        "Directory of the embedded spool; a herald addition.",
    )
    .read_at_start(),
    SpoolBackend => opt(
        "spool_backend",
        Kind::Enum(SpoolBackend::WORDS),
        Some("embedded"),
        GLOBAL,
        "Spool store: the embedded one, or a NATS JetStream stream shared by several nodes; a herald addition.",
    )
    .read_at_start(),
    SpoolNatsUrl => opt(
        "spool_nats_url",
        Kind::Str,
        None,
        GLOBAL,
        "NATS server URL for the `jetstream` spool, or several separated by commas or spaces (the servers of a cluster; herald connects to one and fails over to the others); required with `spool_backend = jetstream`; a herald addition.",
    )
    .read_at_start(),
    SpoolNatsStream => opt(
        "spool_nats_stream",
        Kind::Str,
        Some("herald"),
        GLOBAL,
        "JetStream stream name for the `jetstream` spool; a herald addition.",
    )
    .read_at_start(),
    SpoolNatsReplicas => opt(
        "spool_nats_replicas",
        Kind::Int { min: 1, max: 3 },
        Some("1"),
        GLOBAL,
        "Replicas of the JetStream stream herald creates: 1, or 3 on a three-server cluster (a publish is acknowledged once a quorum wrote it); an existing stream with another count is refused at start; a herald addition.",
    )
    .read_at_start(),
    SpoolNatsCredentials => opt(
        "spool_nats_credentials",
        Kind::Path,
        None,
        GLOBAL,
        "NATS credentials file (JWT and NKey seed) for the `jetstream` spool's connection; a herald addition.",
    )
    .read_at_start(),
    SpoolNatsToken => opt(
        "spool_nats_token",
        Kind::Str,
        None,
        GLOBAL,
        "NATS authentication token for the `jetstream` spool's connection (never logged); a herald addition.",
    )
    .read_at_start(),
    SpoolNatsTlsCa => opt(
        "spool_nats_tls_ca",
        Kind::Path,
        None,
        GLOBAL,
        "PEM file of the certificate authorities that sign the NATS servers' certificates; set, the connection requires TLS; a herald addition.",
    )
    .read_at_start(),
    SpoolNatsTlsCert => opt(
        "spool_nats_tls_cert",
        Kind::Path,
        None,
        GLOBAL,
        "PEM client certificate for NATS servers that verify clients (with `spool_nats_tls_key`); a herald addition.",
    )
    .read_at_start(),
    SpoolNatsTlsKey => opt(
        "spool_nats_tls_key",
        Kind::Path,
        None,
        GLOBAL,
        "PEM private key of `spool_nats_tls_cert`; a herald addition.",
    )
    .read_at_start(),
    SpoolNatsTimeout => opt(
        "spool_nats_timeout",
        Kind::Seconds,
        Some("5"),
        GLOBAL,
        "Limit on connecting to NATS at start and on each JetStream request (a publish ack): past it the sender gets a temporary refusal; a herald addition.",
    )
    .read_at_start(),
    SpoolNatsAckWait => opt(
        "spool_nats_ack_wait",
        Kind::Seconds,
        Some("30"),
        GLOBAL,
        "How long a notification pulled by a node that stopped answering waits before JetStream hands it to another node; a live node extends it with in-progress acks; a herald addition.",
    )
    .read_at_start(),
    SpoolNatsMaxAckPending => opt(
        "spool_nats_max_ack_pending",
        Kind::Int {
            min: 0,
            max: 10_000_000,
        },
        Some("0"),
        GLOBAL,
        "Notifications pulled and not yet finished, over all nodes (the shared consumer's max_ack_pending); 0, the default: no limit (each node holds at most spool_nats_max_held). Notifications handed back to the stream for a later retry count toward a limit until they are delivered again: once they fill it, no node gets any notification, for any domain, until their delays end (a warning comes at 80 %; scale-out.md); a herald addition.",
    )
    .read_at_start(),
    SpoolNatsMaxHeld => opt(
        "spool_nats_max_held",
        Kind::Int {
            min: 1,
            max: 10_000_000,
        },
        Some("10000"),
        GLOBAL,
        "Notifications one node pulls and holds unfinished at most: what the stream holds beyond it stays for the other nodes (within spool_nats_max_ack_pending when one is set), and a node that dies leaves at most this many waiting out the ack wait; never more than max_resident_notifications (a larger value is lowered, with a warning). A domain paused on the node or without a route parks up to as many again besides, within max_resident_notifications (scale-out.md); a herald addition.",
    )
    .read_at_start(),
}

/// FNV-1a: option names are short and few; SipHash's DoS resistance buys nothing here.
#[derive(Default, Clone, Copy)]
pub(crate) struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

pub(crate) type FnvBuild = std::hash::BuildHasherDefault<Fnv>;

fn name_index() -> &'static HashMap<&'static str, OptId, FnvBuild> {
    static INDEX: OnceLock<HashMap<&'static str, OptId, FnvBuild>> = OnceLock::new();
    INDEX.get_or_init(|| {
        OPTIONS
            .iter()
            .enumerate()
            .map(|(i, d)| (d.name, OptId(i as u16)))
            .collect()
    })
}

/// Looks an option up by name, case-insensitively.
pub fn lookup(name: &str) -> Option<OptId> {
    let mut buf = [0u8; 64];
    let lower = buf.get_mut(..name.len())?;
    lower.copy_from_slice(name.as_bytes());
    lower.make_ascii_lowercase();
    name_index().get(std::str::from_utf8(lower).ok()?).copied()
}

/// The parsed default of every option, indexed by [`OptId`].
pub fn default_value(id: OptId) -> &'static Value {
    static DEFAULTS: OnceLock<Vec<Value>> = OnceLock::new();
    let all = DEFAULTS.get_or_init(|| {
        OPTIONS
            .iter()
            .map(|d| match d.default {
                // The table is checked by a unit test; a bad default would show there.
                Some(text) => parse_default(d.kind, text).unwrap_or(Value::Unset),
                None => match d.kind {
                    Kind::List | Kind::Words(_) => Value::List(Vec::new()),
                    Kind::Routes => Value::Routes(Vec::new()),
                    Kind::Cidrs => Value::Cidrs(Vec::new()),
                    _ => Value::Unset,
                },
            })
            .collect()
    });
    &all[id.0 as usize]
}

/// The closest known option name to `name`, if one is close enough to be a likely typo.
pub fn suggest_option(name: &str) -> Option<&'static str> {
    crate::suggest::closest(name, OPTIONS.iter().map(|d| d.name))
}

/// Which part of herald reads an option (the "Read by" column of docs/configuration.md); `None` for an option
/// this list does not know yet (a test requires every option to have an entry). Inert options are read by
/// nothing and say so.
pub fn read_by(name: &str) -> Option<&'static str> {
    const DELIVERY_PART: &str =
        "delivery: the queue and connection pool of each (binding, domain), resolved with fallback";
    const TLS_BOTH: &str = "delivery (client identity); the ESMTP, REST and TCP control listeners (server certificate)";
    Some(match name {
        "delivery_method" => "intake (which domains take notifications) and delivery",
        "routes"
        | "idle_timeout"
        | "delivery_response_timeout"
        | "tls_verify"
        | "tls_ca"
        | "tls_pkcs12"
        | "tls_pkcs12_password"
        | "apn_topic"
        | "apn_key"
        | "apn_key_id"
        | "apn_team_id"
        | "apn_binary_format"
        | "apn_expiry"
        | "retry_interval"
        | "max_retry_interval"
        | "max_retries"
        | "message_expiration"
        | "never_attempt_expired_messages"
        | "mx_failures_to_delay" => DELIVERY_PART,
        "max_outbound_connections" => {
            "delivery: the size of each (binding, domain) pool; a `host` stanza caps every connection to its host, over all pools"
        }
        "bind_address" => "delivery: the source address of the binding's outbound connections",
        "tls_certificate" | "tls_key" => TLS_BOTH,
        "apn_broadcast_route" => {
            "broadcast pushes (REST /api/v1/broadcast), with the domain's credentials and retry schedule"
        }
        "apn_channel_route" => {
            "channel management (REST /api/v1/channels, the console's `channels`), with the domain's credentials"
        }
        "apn_feedback_address" | "apn_feedback_interval" => {
            "the feedback poller (binary protocol invalid tokens)"
        }
        "enable" => "the server: which listeners run (at start and reload)",
        "mcmt_reception" => "the ESMTP listener",
        "always_allow" | "always_deny" => "every listener (client address check)",
        "max_request_size"
        | "http_services"
        | "api_key"
        | "api_keys"
        | "dashboard_admin_keys"
        | "dashboard_hosts"
        | "auth_failure_limit"
        | "max_notifications_per_request"
        | "first_byte_timeout"
        | "header_timeout"
        | "body_timeout"
        | "keepalive_timeout" => "the REST listener",
        "max_connections" | "max_connections_per_client" => {
            "the ESMTP, REST and control listeners (connection caps)"
        }
        "max_notifications_per_message" | "reconfig_message" => "the ESMTP listener",
        "max_resident_notifications" => {
            "intake (REST and ESMTP refuse new work while the resident queue is full)"
        }
        "max_queued_broadcasts" => {
            "broadcast pushes (REST /api/v1/broadcast refuses new ones while this many are not finished)"
        }
        "idle_queue_timeout" => {
            "the delivery queues (how long an idle domain keeps its task and pool)"
        }
        "log_format" => "`herald serve`: the format of its standard-error diagnostics",
        "file_mode" | "control_password" => "the control listener",
        "timeout" => "the ESMTP and control listeners",
        "max_message_size" | "max_recipients_per_message" | "max_line_length" => {
            "the ESMTP listener"
        }
        "enabled" => {
            "the server (apn: delivery hold; httpsrv: HTTP listeners; restinjector: REST injection; loggers: the logs)"
        }
        "debug_level" => "`herald serve`: the level of its standard-error diagnostics, per part",
        "heartbeat"
        | "log_delivery"
        | "log_delivery_format"
        | "log_heartbeat_format"
        | "log_permfail"
        | "log_permfail_format"
        | "log_tempfail"
        | "log_tempfail_format"
        | "logfile"
        | "logmode" => "the apn_logger (and `herald check`, which validates formats and files)",
        "mainlog"
        | "mainlog_mode"
        | "log_receptions"
        | "log_deliveries"
        | "log_transient_failures"
        | "log_permanent_failures" => {
            "the mainlog writer (ec_logger; `herald check` validates the file)"
        }
        "invalid_tokens_file" | "invalid_token_retention" | "feedback_logfile" => {
            "the invalid-token store"
        }
        "outcome_retention" | "outcome_max_entries" => "the status book (status lookups)",
        "outcome_webhook_url"
        | "outcome_webhook_secret"
        | "outcome_webhook_events"
        | "outcome_webhook_max_age"
        | "outcome_webhook_backlog" => "the outcome webhooks",
        "spool_dir" | "spool_backend" => "the spool",
        "spool_nats_url"
        | "spool_nats_stream"
        | "spool_nats_replicas"
        | "spool_nats_credentials"
        | "spool_nats_token"
        | "spool_nats_tls_ca"
        | "spool_nats_tls_cert"
        | "spool_nats_tls_key"
        | "spool_nats_timeout"
        | "spool_nats_ack_wait"
        | "spool_nats_max_ack_pending"
        | "spool_nats_max_held" => {
            "the spool (`jetstream` backend: its NATS connection, stream and consumer)"
        }
        other => {
            return lookup(other)
                .and_then(|id| id.def().inert)
                .map(|_| "nothing (accepted; `herald check` warns)");
        }
    })
}

/// The option reference as a Markdown table (one row per option: name, type, default, scopes, meaning, and the
/// part of herald that reads it), as docs/configuration.md carries it. A test keeps the document and the table in
/// step.
pub fn options_markdown() -> String {
    let cell = |s: &str| s.replace('|', "\\|");
    let mut out = String::from(
        "| Option | Type | Default | Scopes | Meaning | Read by |\n|---|---|---|---|---|---|\n",
    );
    for d in OPTIONS {
        let default = match d.default {
            Some("") => "`\"\"`".to_string(),
            Some(v) => format!("`{}`", cell(v)),
            None => "(unset)".to_string(),
        };
        let mut meaning = cell(d.doc);
        if let Some(why) = d.inert {
            meaning.push_str(&format!(" **No effect in herald:** {}.", cell(why)));
        }
        if !d.start_only.is_empty() {
            let only_in = if d.start_only == d.scopes {
                String::new()
            } else {
                format!(" in {}", d.start_only.describe())
            };
            meaning.push_str(&format!(
                " **Read at start only{only_in}:** a reload does not apply a new value; restart herald."
            ));
        }
        if d.top_level_domain_only {
            meaning.push_str(
                " **Top-level `domain` stanzas only:** herald reads it for the domain whatever the binding, so a \
                 `domain` stanza inside a binding or binding group may not set it.",
            );
        }
        let reader = if d.inert.is_some() {
            "nothing (accepted; `herald check` warns)"
        } else {
            read_by(d.name).unwrap_or("(not documented)")
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} | {} |\n",
            d.name,
            cell(&d.kind.describe()),
            default,
            d.scopes.describe(),
            meaning,
            cell(reader)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_typed_id_is_its_row_and_names_round_trip() {
        assert_eq!(Opt::ALL.len(), OPTIONS.len());
        for (i, opt) in Opt::ALL.iter().enumerate() {
            assert_eq!(opt.id(), OptId(i as u16));
            assert!(std::ptr::eq(opt.def(), &OPTIONS[i]));
            assert_eq!(lookup(opt.name()), Some(opt.id()), "{}", opt.name());
            assert_eq!(opt.id().opt(), Some(*opt));
            // The variant is the name in CamelCase: `max_outbound_connections` is `MaxOutboundConnections`.
            let camel: String = opt
                .name()
                .split('_')
                .map(|w| {
                    let mut c = w.chars();
                    c.next()
                        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                        .unwrap_or_default()
                })
                .collect();
            assert_eq!(format!("{opt:?}"), camel);
        }
        assert_eq!(OptId(OPTIONS.len() as u16).opt(), None);
        assert_eq!(
            Opt::MaxOutboundConnections.name(),
            "max_outbound_connections"
        );
        assert_eq!(Opt::DeliveryMethod.id(), OptId(0));
    }

    #[test]
    fn an_unknown_name_resolves_to_nothing() {
        assert_eq!(lookup("delivery_methd"), None);
        assert_eq!(lookup(""), None);
        assert_eq!(lookup(&"x".repeat(200)), None);
    }

    #[test]
    fn typed_enums_are_the_table_words() {
        fn round_trip<T: Copy + PartialEq + std::fmt::Debug>(
            opt: Opt,
            words: &[&str],
            from: fn(&str) -> Option<T>,
            to: fn(T) -> &'static str,
        ) {
            assert!(
                matches!(opt.def().kind, Kind::Enum(w) if w == words),
                "{}",
                opt.name()
            );
            for w in words {
                let v = from(w).unwrap_or_else(|| panic!("{w}"));
                assert_eq!(to(v), *w);
            }
            assert_eq!(from("no such word"), None);
            if let Some(d) = opt.def().default {
                assert!(from(d).is_some(), "{} default {d}", opt.name());
            }
        }
        round_trip(
            Opt::DeliveryMethod,
            DeliveryMethod::WORDS,
            DeliveryMethod::from_word,
            DeliveryMethod::word,
        );
        round_trip(Opt::Tls, TlsMode::WORDS, TlsMode::from_word, TlsMode::word);
        round_trip(
            Opt::TlsVerify,
            TlsVerify::WORDS,
            TlsVerify::from_word,
            TlsVerify::word,
        );
        round_trip(
            Opt::McmtReception,
            McmtReception::WORDS,
            McmtReception::from_word,
            McmtReception::word,
        );
        round_trip(
            Opt::ApnBinaryFormat,
            ApnBinaryFormat::WORDS,
            ApnBinaryFormat::from_word,
            ApnBinaryFormat::word,
        );
        round_trip(
            Opt::SpoolBackend,
            SpoolBackend::WORDS,
            SpoolBackend::from_word,
            SpoolBackend::word,
        );
        round_trip(
            Opt::LogFormat,
            LogFormat::WORDS,
            LogFormat::from_word,
            LogFormat::word,
        );
    }

    #[test]
    fn names_are_unique_lowercase_and_defaults_parse() {
        let mut seen = std::collections::HashSet::new();
        for d in OPTIONS {
            assert!(seen.insert(d.name), "duplicate option {}", d.name);
            assert_eq!(d.name, d.name.to_ascii_lowercase());
            assert!(d.scopes.kinds().next().is_some(), "{} has no scope", d.name);
            assert!(!d.doc.is_empty());
            if let Some(text) = d.default {
                parse_default(d.kind, text)
                    .unwrap_or_else(|e| panic!("default of {}: {e}", d.name));
            }
        }
    }

    /// Every option says which part of herald reads it; inert ones are read by nothing.
    #[test]
    fn every_option_names_its_reader() {
        for d in OPTIONS {
            let reader =
                read_by(d.name).unwrap_or_else(|| panic!("{}: no entry in read_by", d.name));
            if d.inert.is_some() {
                assert!(reader.starts_with("nothing"), "{} is inert", d.name);
            }
        }
    }

    #[test]
    fn momentum_defaults_and_scopes() {
        // docs/momentum-compat.md#options and docs/momentum-compat.md#retries
        let dv = |n: &str| default_value(lookup(n).unwrap()).clone();
        assert_eq!(dv("idle_timeout"), Value::Int(5));
        assert_eq!(dv("delivery_response_timeout"), Value::Int(5000));
        assert_eq!(dv("max_outbound_connections"), Value::Int(32));
        assert_eq!(dv("tls"), Value::Str("no".into()));
        assert_eq!(dv("mx_failures_to_delay"), Value::Int(50));
        assert_eq!(dv("mcmt_reception"), Value::Str("passthru".into()));
        assert_eq!(dv("retry_interval"), Value::Int(1200));
        assert_eq!(dv("max_retry_interval"), Value::Int(43200));
        assert_eq!(dv("message_expiration"), Value::Int(86400));
        assert_eq!(dv("delivery_method"), Value::Str("ESMTP".into()));
        assert_eq!(dv("logmode"), Value::Mode(0o644));
        // docs/architecture.md#configuration: herald verifies by default
        assert_eq!(dv("tls_verify"), Value::Str("host".into()));
        let drt = lookup("delivery_response_timeout").unwrap().def();
        assert!(!drt.scopes.contains(BindingGroup));
        assert!(
            lookup("max_outbound_connections")
                .unwrap()
                .def()
                .scopes
                .contains(Host)
        );
        assert_eq!(
            lookup("routes").unwrap().def().scopes.describe(),
            "global, domain"
        );
    }

    #[test]
    fn esmtp_limits_fall_back_from_listen_to_listener_and_are_range_checked() {
        use crate::{Config, ScopePath};
        let c = Config::parse_str(
            "t.conf",
            r#"esmtp_listener {
                 max_message_size = 5000
                 timeout = 30
                 listen "127.0.0.1:25" { max_recipients_per_message = 3 max_line_length = 600 }
                 listen "127.0.0.1:26" { timeout = 1 }
               }"#,
        )
        .unwrap();
        let listen = |addr: &str| {
            ScopePath::global()
                .then(EsmtpListener, None)
                .then(Listen, Some(addr))
        };
        let ev = |addr: &str, name: &str| c.eval(&listen(addr), name).unwrap();
        assert_eq!(ev("127.0.0.1:25", "max_message_size"), Value::Int(5000));
        assert_eq!(
            ev("127.0.0.1:25", "max_recipients_per_message"),
            Value::Int(3)
        );
        assert_eq!(ev("127.0.0.1:25", "max_line_length"), Value::Int(600));
        assert_eq!(ev("127.0.0.1:25", "timeout"), Value::Int(30));
        assert_eq!(ev("127.0.0.1:26", "timeout"), Value::Int(1));
        assert_eq!(
            ev("127.0.0.1:26", "max_recipients_per_message"),
            Value::Int(1000)
        );
        assert_eq!(ev("127.0.0.1:26", "max_line_length"), Value::Int(1000));

        // Below RFC 5321's command-line minimum, zero, and outside a listener are refused.
        for (bad, why) in [
            (
                r#"esmtp_listener { listen ":25" { max_line_length = 100 } }"#,
                "100 is out of range (expected integer 512..1048576)",
            ),
            (
                r#"esmtp_listener { max_message_size = 0 }"#,
                "0 is out of range (expected integer 1..4294967295)",
            ),
            (
                r#"esmtp_listener { max_recipients_per_message = 0 }"#,
                "0 is out of range (expected integer 1..4294967295)",
            ),
            (
                r#"max_message_size = 5000"#,
                "`max_message_size` is not valid in a global scope; it is valid in: esmtp_listener, listen",
            ),
            (
                r#"domain "d.example" { max_recipients_per_message = 3 }"#,
                "not valid in a domain scope",
            ),
        ] {
            let err = Config::parse_str("t.conf", bad).unwrap_err().to_string();
            assert!(err.starts_with("t.conf:1:"), "{bad}: {err}");
            assert!(err.contains(why), "{bad}: {err}");
        }
        assert_eq!(
            lookup("timeout").unwrap().def().scopes.describe(),
            "esmtp_listener, control_listener, listen"
        );
    }

    #[test]
    fn lookup_is_case_insensitive_and_suggests() {
        assert_eq!(
            lookup("Max_Outbound_Connections"),
            lookup("max_outbound_connections")
        );
        assert!(lookup("max_outbound_conections").is_none());
        assert_eq!(
            suggest_option("max_outbound_conections"),
            Some("max_outbound_connections")
        );
        assert_eq!(suggest_option("tls_verfy"), Some("tls_verify"));
        assert_eq!(suggest_option("zzzzzzzzzzzzz"), None);
    }
}
