//! The dashboard's routes: the embedded page and assets (no data in them), login / logout, the JSON data calls,
//! the event stream and the actions. Every data call and the event stream pass [`auth::access`] (401 without);
//! every action passes [`auth::may_act_at`] (403 for a cross-site request, a missing CSRF token or a key without
//! the admin right). The origin checks take the request's URI too: over HTTP/2 the host is its authority, and
//! there is no `Host` header. Secret option values are masked everywhere, key file contents are never read into an
//! answer, device tokens are shown as a short prefix.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{Path as UrlPath, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use herald_conf::{Config, ListenerSettings, OPTIONS, ScopePath, Value};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::auth::{self, Access, Refusal, Sessions};
use super::outcomes::{Filter, KINDS};
use super::sampler::Hub;
use crate::access::GuessThrottle;
use crate::control::ServerHandle;
use crate::ops::percent_decode;

/// Every (method, path) the dashboard answers; `docs/openapi.yaml` documents them (HEAD is implied by GET).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/dashboard"),
    ("GET", "/dashboard/"),
    ("GET", "/dashboard/app.js"),
    ("GET", "/dashboard/app.css"),
    ("POST", "/dashboard/api/login"),
    ("POST", "/dashboard/api/logout"),
    ("GET", "/dashboard/api/session"),
    ("GET", "/dashboard/api/overview"),
    ("GET", "/dashboard/api/domains"),
    ("GET", "/dashboard/api/domains/{domain}"),
    ("POST", "/dashboard/api/domains/{domain}/{action}"),
    ("GET", "/dashboard/api/outcomes"),
    ("GET", "/dashboard/api/config"),
    ("POST", "/dashboard/api/config/reload"),
    ("GET", "/dashboard/api/events"),
];

/// The data calls (everything that needs a login).
pub const DATA_PATHS: &[&str] = &[
    "/dashboard/api/session",
    "/dashboard/api/overview",
    "/dashboard/api/domains",
    "/dashboard/api/outcomes",
    "/dashboard/api/config",
    "/dashboard/api/events",
];

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// The largest login body read.
const LOGIN_BODY_LIMIT: usize = 4096;

#[derive(Clone)]
struct Dash {
    hub: Arc<Hub>,
    server: Weak<dyn ServerHandle>,
    settings: Arc<ListenerSettings>,
    sessions: Arc<Sessions>,
    /// Wrong keys per client address, at the login and on every request: the listener's, shared with its REST
    /// API (5 within a minute lock an address out, as the console's passwords do).
    guesses: Arc<GuessThrottle>,
    /// The listener's stop: its event streams end when it is cancelled (the listener stops, or a reload restarts
    /// it), so that its connections close at once and a client reconnects to what replaced it, and is
    /// authenticated again.
    stop: CancellationToken,
    /// The reads that go to the disk, one at a time, and their results.
    slow: Arc<SlowReads>,
}

impl Dash {
    fn server(&self) -> Result<Arc<dyn ServerHandle>, Box<Response>> {
        self.server
            .upgrade()
            .ok_or_else(|| Box::new(error(StatusCode::SERVICE_UNAVAILABLE, "herald is stopping")))
    }
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": message.to_string() }))).into_response()
}

fn refused(r: Refusal) -> Response {
    let status = match r {
        Refusal::Unauthenticated | Refusal::UnknownHost { .. } => StatusCode::UNAUTHORIZED,
        Refusal::TooManyGuesses { .. } => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::FORBIDDEN,
    };
    let wait = match r {
        Refusal::TooManyGuesses { seconds } => Some(seconds),
        _ => None,
    };
    let mut response = error(status, r);
    if let Some(seconds) = wait {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// The dashboard of one listener. Merge it with `inbound::rest::router_with` (which skips its API-key check for
/// `/dashboard` paths: the dashboard checks its own way) so that the address lists still apply; `guesses` is the
/// listener's count of wrong keys, the one its REST state holds; `stop` is the listener's stop, which ends its
/// event streams.
pub fn routes(
    hub: Arc<Hub>,
    server: Weak<dyn ServerHandle>,
    settings: Arc<ListenerSettings>,
    guesses: Arc<GuessThrottle>,
    stop: CancellationToken,
) -> Router {
    router(Dash {
        hub,
        server,
        settings,
        sessions: Arc::default(),
        guesses,
        stop,
        slow: Arc::default(),
    })
}

fn router(dash: Dash) -> Router {
    let data = Router::new()
        .route("/dashboard/api/session", get(session))
        .route("/dashboard/api/overview", get(overview))
        .route("/dashboard/api/domains", get(domains))
        .route("/dashboard/api/domains/{domain}", get(domain_detail))
        .route(
            "/dashboard/api/domains/{domain}/{action}",
            post(domain_action),
        )
        .route("/dashboard/api/outcomes", get(outcomes))
        .route("/dashboard/api/config", get(config))
        .route("/dashboard/api/config/reload", post(reload))
        .route("/dashboard/api/events", get(events))
        .layer(middleware::from_fn_with_state(dash.clone(), require_access));
    Router::new()
        .route(
            "/dashboard",
            get(|| async { Redirect::permanent("/dashboard/") }),
        )
        .route(
            "/dashboard/",
            get(|| async { asset(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/dashboard/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/dashboard/app.css",
            get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }),
        )
        .route("/dashboard/api/login", post(login))
        .route("/dashboard/api/logout", post(logout))
        .merge(data)
        .with_state(dash)
        .layer(middleware::map_response(hardened))
}

/// Every answer of the dashboard: not to be read as another type than it says (a JSON answer as a script or a
/// page), nor shown in a frame.
async fn hardened(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// The pages' content security policy: herald's own script, style and data only; no `<base>`, no plug-in, no
/// form sent elsewhere, no frame around them.
pub const CSP: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; \
                       form-action 'self'; object-src 'none'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        body,
    )
        .into_response()
}

async fn require_access(State(d): State<Dash>, mut request: Request, next: Next) -> Response {
    let ip = crate::inbound::rest::peer_ip(request.extensions());
    match auth::access(
        &d.settings,
        &d.sessions,
        &d.guesses,
        ip,
        request.headers(),
        request.uri(),
    ) {
        Ok(access) => {
            request.extensions_mut().insert(access);
            let mut response = next.run(request).await;
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(r) => refused(r),
    }
}

#[derive(Deserialize)]
struct LoginBody {
    key: String,
}

async fn login(State(d): State<Dash>, request: Request) -> Response {
    if let Err(r) = auth::same_origin_at(request.headers(), request.uri()) {
        return refused(r);
    }
    let name = auth::cookie_name(&d.settings, request.headers(), request.uri());
    let ip = crate::inbound::rest::peer_ip(request.extensions());
    let (parts, body) = request.into_parts();
    // As the API routes read a body: 408 for one slower than body_timeout, 400 for one that could not be read.
    let body = match crate::inbound::rest::error::read_body(
        &parts.headers,
        body,
        Some(LOGIN_BODY_LIMIT as u64),
    )
    .await
    {
        Ok(body) => body,
        Err(e) if e.status == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the login body is too large (at most {LOGIN_BODY_LIMIT} bytes)"),
            );
        }
        Err(e) => return error(e.status, e.message),
    };
    let Ok(LoginBody { key }) = serde_json::from_slice(&body) else {
        return error(StatusCode::BAD_REQUEST, "send {\"key\": \"API KEY\"}");
    };
    let limit = d.settings.auth_failure_limit_for(ip) as usize;
    if let Some(wait) = d.guesses.locked(ip, limit) {
        return refused(Refusal::TooManyGuesses {
            seconds: wait.as_secs().max(1),
        });
    }
    let Some(admin) = auth::key_rights(&d.settings, ip, key.trim()) else {
        let n = d.guesses.failed(ip, limit);
        tracing::warn!(client = ?ip, failures = n, "dashboard login with a wrong key");
        return refused(Refusal::Unauthenticated);
    };
    let (id, csrf) = d.sessions.create(key.trim(), admin);
    let cookie = session_cookie(&name, &id, d.settings.tls_certificate.is_some());
    let mut response = Json(json!({ "admin": admin, "csrf": csrf })).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// The session cookie `name` = `id` ([`auth::cookie_name`]): for the dashboard's paths only, out of the page's
/// scripts' reach, never sent by another site's page, and on a TLS listener never sent over plain HTTP (`Secure`),
/// where it could be read on the way.
fn session_cookie(name: &str, id: &str, tls: bool) -> String {
    format!(
        "{name}={id}; Path=/dashboard; HttpOnly; SameSite=Strict{}",
        if tls { "; Secure" } else { "" }
    )
}

async fn logout(State(d): State<Dash>, uri: Uri, headers: HeaderMap) -> Response {
    if let Err(r) = auth::same_origin_at(&headers, &uri) {
        return refused(r);
    }
    let name = auth::cookie_name(&d.settings, &headers, &uri);
    // The session ends, and its event streams with it.
    if let Some(id) = auth::session_cookie(&headers, &name) {
        d.sessions.remove(id);
    }
    let mut response = Json(json!({ "ok": true })).into_response();
    let gone = format!(
        "{name}=; Path=/dashboard; Max-Age=0; HttpOnly; SameSite=Strict{}",
        if d.settings.tls_certificate.is_some() {
            "; Secure"
        } else {
            ""
        }
    );
    if let Ok(v) = HeaderValue::from_str(&gone) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

async fn session(Extension(a): Extension<Access>) -> Response {
    Json(json!({ "admin": a.admin, "via": a.via, "csrf": a.csrf })).into_response()
}

/// The Overview's numbers now (also in every tick).
pub fn overview_now(server: &dyn ServerHandle) -> serde_json::Value {
    let (mut active, mut delayed, mut connections, mut in_flight) =
        (0usize, 0usize, 0usize, 0usize);
    let (mut accepted, mut delivered, mut transient, mut permanent) = (0u64, 0u64, 0u64, 0u64);
    // The oldest notification not finished, epoch seconds (0: none).
    let mut oldest = 0u64;
    let mut older = |t: u64| {
        if t != 0 && (oldest == 0 || t < oldest) {
            oldest = t;
        }
    };
    for (_, s) in server.engine().all_stats() {
        older(s.oldest_queued_s.load(Ordering::Relaxed));
        active += s.active.load(Ordering::Relaxed);
        delayed += s.delayed.load(Ordering::Relaxed);
        connections += s.connections.load(Ordering::Relaxed);
        in_flight += s.in_flight.load(Ordering::Relaxed);
        accepted += s.received.load(Ordering::Relaxed);
        delivered += s.delivered.load(Ordering::Relaxed);
        transient += s.transient.load(Ordering::Relaxed);
        permanent += s.permanent.load(Ordering::Relaxed);
    }
    // Counters and the size last measured by the spool's writer: never waits for the disk (this runs on an async
    // thread, for every tick).
    let spool = server.spool().stats();
    let stream = server.spool().stream_stats();
    // With JetStream, the stream's oldest message: the oldest notification no node has finished.
    if let Some(j) = &stream {
        older(j.oldest_ms / 1000);
    }
    let now = crate::model::message::unix_now();
    let oldest_queued = (oldest != 0)
        .then(|| json!({ "received_at": oldest, "age_secs": now.saturating_sub(oldest) }));
    json!({
        "totals": { "accepted": accepted, "delivered": delivered, "transient": transient, "permanent": permanent },
        "queued": { "active": active, "delayed": delayed },
        "oldest_queued": oldest_queued,
        "in_flight": in_flight,
        "connections": connections,
        "spool": { "records": spool.records, "bytes": spool.bytes_on_disk },
        "spool_backend": if stream.is_some() { "jetstream" } else { "embedded" },
        "jetstream": stream.map(|j| jetstream_view(server, &j)),
        "held": server.engine().is_held(),
        "generation": server.generation(),
    })
}

/// The JetStream block of the Overview: the stream's depth, its servers and the herald nodes sharing it.
fn jetstream_view(
    server: &dyn ServerHandle,
    j: &herald_spool::JetStreamStats,
) -> serde_json::Value {
    let view = server.spool().cluster_view().unwrap_or_default();
    let now_ms = crate::model::message::unix_now_ms();
    json!({
        "connected": j.connected,
        "messages": j.stream_messages,
        "bytes": j.stream_bytes,
        "pending": j.consumer_pending,
        "ack_pending": j.consumer_ack_pending,
        "redelivered": j.consumer_redelivered,
        "held_here": j.held,
        "cluster": view.cluster,
        "servers": view.servers.iter().map(|s| json!({
            "server": s.server,
            "leader": s.leader,
            "current": s.current,
            "offline": s.offline,
            "lag": s.lag,
            "active_ms": s.active_ms,
        })).collect::<Vec<_>>(),
        "nodes": view.nodes.iter().map(|n| json!({
            "node": n.node,
            "this_node": n.node == view.this_node,
            "started_ms": n.started_ms,
            "seen_secs_ago": now_ms.saturating_sub(n.seen_ms) / 1000,
            "held": n.held,
            "pulled": n.pulled,
        })).collect::<Vec<_>>(),
    })
}

/// The overview's `warnings`: each finding of the credential checks with its domain, the binding whose settings it
/// is about (null for the default binding), its severity and its message.
fn findings_json(findings: &[crate::credentials::Finding]) -> Vec<serde_json::Value> {
    findings
        .iter()
        .map(|f| {
            json!({
                "domain": f.domain,
                "binding": f.binding,
                "severity": match f.severity {
                    crate::credentials::Severity::Error => "error",
                    crate::credentials::Severity::Warning => "warning",
                },
                "message": f.message,
            })
        })
        .collect()
}

/// How long the result of a read that goes to the disk is reused: the credential checks of the Overview (every
/// domain's key and certificate files) and the include tree and validation of the file on disk of the Configuration
/// page. A reload puts it out of date at once.
pub const SLOW_REUSE: Duration = Duration::from_secs(10);

/// The reads of [`SLOW_REUSE`].
#[derive(Debug, Clone, Copy)]
enum SlowRead {
    Credentials,
    Files,
}

/// The dashboard's reads that go to the disk: one at a time per dashboard (they run on the blocking threads, which
/// intake and the spool use too, and readers could otherwise ask for many at once), each result reused for
/// [`SLOW_REUSE`] by every reader while the configuration in force is the same.
#[derive(Debug)]
struct SlowReads {
    one_at_a_time: Arc<Semaphore>,
    credentials: Mutex<Option<Kept>>,
    files: Mutex<Option<Kept>>,
    #[cfg(test)]
    counts: SlowCounts,
}

/// A result kept: when it was read, of what (the configuration's generation and path), and what it was.
#[derive(Debug)]
struct Kept {
    at: Instant,
    of: String,
    value: serde_json::Value,
}

/// Reads made, and most made at once (tests).
#[cfg(test)]
#[derive(Debug, Default)]
struct SlowCounts {
    made: std::sync::atomic::AtomicUsize,
    running: std::sync::atomic::AtomicUsize,
    most_at_once: std::sync::atomic::AtomicUsize,
    /// Results are reused however long ago they were read (a test that counts reads must not depend on how fast
    /// it runs).
    reuse_for_ever: std::sync::atomic::AtomicBool,
}

impl Default for SlowReads {
    fn default() -> Self {
        SlowReads {
            one_at_a_time: Arc::new(Semaphore::new(1)),
            credentials: Mutex::default(),
            files: Mutex::default(),
            #[cfg(test)]
            counts: SlowCounts::default(),
        }
    }
}

impl SlowReads {
    fn slot(&self, which: SlowRead) -> std::sync::MutexGuard<'_, Option<Kept>> {
        match which {
            SlowRead::Credentials => &self.credentials,
            SlowRead::Files => &self.files,
        }
        .lock()
        .unwrap_or_else(|p| p.into_inner())
    }

    fn kept(&self, which: SlowRead, of: &str) -> Option<serde_json::Value> {
        #[cfg(test)]
        let recent = |at: Instant| {
            self.counts.reuse_for_ever.load(Ordering::SeqCst) || at.elapsed() < SLOW_REUSE
        };
        #[cfg(not(test))]
        let recent = |at: Instant| at.elapsed() < SLOW_REUSE;
        self.slot(which)
            .as_ref()
            .filter(|k| k.of == of && recent(k.at))
            .map(|k| k.value.clone())
    }

    /// The result of `read` of `of`: the one kept if it is recent enough, else read now on a blocking thread once
    /// no other read of this dashboard runs (a reader that waited for one of the same takes its result). `None`
    /// if the read failed.
    async fn read(
        self: Arc<Self>,
        which: SlowRead,
        of: String,
        read: impl FnOnce() -> serde_json::Value + Send + 'static,
    ) -> Option<serde_json::Value> {
        if let Some(v) = self.kept(which, &of) {
            return Some(v);
        }
        let permit = self.one_at_a_time.clone().acquire_owned().await.ok()?;
        if let Some(v) = self.kept(which, &of) {
            return Some(v);
        }
        // The permit goes with the read, and the result is kept by it: a reader that goes away meanwhile does not
        // let another read start beside it, nor lose what it read.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            #[cfg(test)]
            {
                let c = &self.counts;
                let now = c.running.fetch_add(1, Ordering::SeqCst) + 1;
                c.most_at_once.fetch_max(now, Ordering::SeqCst);
            }
            let value = read();
            #[cfg(test)]
            {
                self.counts.running.fetch_sub(1, Ordering::SeqCst);
                self.counts.made.fetch_add(1, Ordering::SeqCst);
            }
            *self.slot(which) = Some(Kept {
                at: Instant::now(),
                of,
                value: value.clone(),
            });
            value
        })
        .await
        .ok()
    }
}

async fn overview(State(d): State<Dash>) -> Response {
    let server = match d.server() {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let config = server.config();
    // The same checks as `herald check` (certificate expiry within 30 days, environment, key files): they read
    // every domain's key and certificate files.
    let warnings = d
        .slow
        .clone()
        .read(
            SlowRead::Credentials,
            server.generation().to_string(),
            move || {
                json!(findings_json(&crate::credentials::check(
                    &config,
                    SystemTime::now()
                )))
            },
        )
        .await
        .unwrap_or_else(|| json!([]));
    let mut body = overview_now(&*server);
    body["history"] = json!(d.hub.history());
    body["warnings"] = warnings;
    Json(body).into_response()
}

/// One row of the Domains page per configured domain (regular-expression stanzas excepted) and per domain with
/// traffic.
pub fn domain_rows(server: &dyn ServerHandle, hub: &Hub) -> Vec<serde_json::Value> {
    rows(&server.config(), &server.engine().all_stats(), hub, None)
}

/// What a row shows of a domain's settings.
#[derive(Debug)]
struct RowSettings {
    method: String,
    protocol: Option<String>,
    route: Option<String>,
    connection_limit: i64,
}

impl RowSettings {
    /// The settings of `domain` as delivery resolves them for a notification that names no binding: from the
    /// default binding (a `binding "default"` stanza and its group apply).
    fn resolve(config: &Config, domain: &str) -> RowSettings {
        let settings =
            config.domain_settings(None, Some(crate::model::message::DEFAULT_BINDING), domain);
        let route = settings.routes.first();
        RowSettings {
            method: format!("{:?}", settings.delivery_method).to_ascii_lowercase(),
            protocol: route.map(|r| format!("{:?}", r.protocol).to_ascii_lowercase()),
            route: route.map(|r| r.to_string()),
            connection_limit: settings.max_outbound_connections,
        }
    }
}

/// The [`RowSettings`] of the domains of the last rows built, for the configuration they were resolved from:
/// the rows are built every second while a page is open, and a domain's settings change only with the
/// configuration. Holds the domains of the last rows only.
#[derive(Debug, Default)]
pub struct RowSettingsCache(std::sync::Mutex<RowSettingsMap>);

#[derive(Debug, Default)]
struct RowSettingsMap {
    /// The configuration the entries were resolved from (a weak reference: a configuration no longer in force
    /// is not kept alive by the cache, and its allocation, so its address, is not reused while this is held).
    config: Weak<Config>,
    by_name: HashMap<Arc<str>, Arc<RowSettings>>,
}

/// The rows of [`domain_rows`] from `config` and the engine's counters `stats` (one entry per domain, by name);
/// only the row of `only` (any case) when given.
fn rows(
    config: &Arc<Config>,
    stats: &[(Arc<str>, Arc<crate::queue::stats::DomainStats>)],
    hub: &Hub,
    only: Option<&str>,
) -> Vec<serde_json::Value> {
    // The engine's domains by name, and by lower-cased name for a configured name written in another case.
    let exact: HashMap<&str, (&Arc<str>, &Arc<crate::queue::stats::DomainStats>)> =
        stats.iter().map(|(d, s)| (&**d, (d, s))).collect();
    let mut folded: HashMap<String, (&Arc<str>, &Arc<crate::queue::stats::DomainStats>)> =
        HashMap::with_capacity(stats.len());
    for (d, s) in stats {
        folded.entry(d.to_ascii_lowercase()).or_insert((d, s));
    }
    let wanted = |name: &str| only.is_none_or(|o| o.eq_ignore_ascii_case(name));
    // Configured names first, then the engine's, each name once whatever its case.
    let mut seen: HashSet<String> = HashSet::new();
    let mut names: Vec<(Arc<str>, bool)> = Vec::new();
    for name in config.domains() {
        if !name.starts_with('/') && wanted(name) && seen.insert(name.to_ascii_lowercase()) {
            names.push((Arc::from(name), true));
        }
    }
    for (d, _) in stats {
        if wanted(d) && seen.insert(d.to_ascii_lowercase()) {
            names.push((d.clone(), false));
        }
    }
    names.sort_by(|a, b| a.0.cmp(&b.0));

    // Settings resolved for this configuration are taken from the cache; all rows leave in it their domains only.
    let mut cache = hub.row_settings.0.lock().unwrap_or_else(|p| p.into_inner());
    if !std::ptr::eq(cache.config.as_ptr(), Arc::as_ptr(config)) {
        cache.by_name.clear();
        cache.config = Arc::downgrade(config);
    }
    let mut before = match only {
        None => std::mem::take(&mut cache.by_name),
        Some(_) => HashMap::new(),
    };
    let mut rows = Vec::with_capacity(names.len());
    for (name, configured) in &names {
        let cached = match only {
            None => before.remove(name),
            Some(_) => cache.by_name.get(name).cloned(),
        };
        let settings = cached.unwrap_or_else(|| Arc::new(RowSettings::resolve(config, name)));
        cache.by_name.insert(name.clone(), settings.clone());
        // The engine's own name of the domain: its counters, its windows and its last error are under it.
        let found = exact
            .get(&**name)
            .copied()
            .or_else(|| folded.get(&name.to_ascii_lowercase()).copied());
        let key: &str = found.map_or(name, |(d, _)| d);
        let s = found.map(|(_, s)| s);
        let load = |f: fn(&crate::queue::stats::DomainStats) -> usize| s.map(|s| f(s)).unwrap_or(0);
        let delivered = s.map(|s| s.delivered.load(Ordering::Relaxed)).unwrap_or(0);
        let failed = s
            .map(|s| {
                s.transient
                    .load(Ordering::Relaxed)
                    .saturating_add(s.permanent.load(Ordering::Relaxed))
            })
            .unwrap_or(0);
        rows.push(json!({
            "domain": &**name,
            "configured": configured,
            "method": settings.method,
            "protocol": settings.protocol,
            "route": settings.route,
            "active": load(|s| s.active.load(Ordering::Relaxed)),
            "delayed": load(|s| s.delayed.load(Ordering::Relaxed)),
            "in_flight": load(|s| s.in_flight.load(Ordering::Relaxed)),
            "connections": load(|s| s.connections.load(Ordering::Relaxed)),
            "connection_limit": settings.connection_limit,
            "delivered": delivered,
            "failed": failed,
            "windows": hub.windows(key, delivered, failed),
            "last_error": hub.outcomes.last_errors.get(key),
            "next_retry_secs": s
                .map(|s| s.next_retry_ms.load(Ordering::Relaxed))
                .filter(|ms| *ms > 0)
                .map(|ms| ms.saturating_sub(crate::model::message::unix_now_ms()).div_ceil(1000)),
            "paused": s.is_some_and(|s| s.paused.load(Ordering::Relaxed)),
        }));
    }
    rows
}

async fn domains(State(d): State<Dash>) -> Response {
    match d.server() {
        Ok(server) => Json(json!({ "domains": domain_rows(&*server, &d.hub) })).into_response(),
        Err(r) => *r,
    }
}

/// Every option that applies to a domain, its value as `config eval domain NAME OPTION` resolves it (secrets
/// masked) and where it came from: the value delivery applies to a notification that names no binding, so a
/// `binding "default"` stanza (and its binding group) counts.
pub fn effective_options(config: &Config, domain: &str) -> Vec<serde_json::Value> {
    let path = ScopePath::domain(domain);
    // The scopes `config eval domain NAME OPTION` looks in, in its order (the default binding's domain stanzas,
    // the binding, its group, the top-level domain stanzas, then the global scope); the value comes from the first
    // that sets the option, and that one is its scope.
    let scopes = config.eval_scopes(&path);
    OPTIONS
        .iter()
        .filter_map(|def| {
            let value = config.eval(&path, def.name).ok()?;
            let from = herald_conf::options::lookup(def.name)
                .and_then(|id| scopes.iter().find(|(_, n)| n.get(id).is_some()));
            let scope = from.map_or_else(|| "default".to_owned(), |(at, _)| scope_label(at));
            let shown = match value {
                Value::Unset => "(unset)".to_owned(),
                v => herald_conf::secrets::render_option_value(def.name, &v, true),
            };
            Some(json!({ "name": def.name, "value": shown, "scope": scope }))
        })
        .collect()
}

/// How the Domain page names the scope at `path`: `global`, or its stanzas from the outermost
/// (`binding_group "G" binding "B" domain "NAME"`), a regular-expression domain stanza as `domain pattern`.
fn scope_label(path: &ScopePath) -> String {
    if path.segments().is_empty() {
        return "global".to_owned();
    }
    path.segments()
        .iter()
        .map(|s| match s.name.as_deref() {
            Some(n)
                if s.kind == herald_conf::ScopeKind::Domain
                    && herald_conf::scopes::is_regex_name(n) =>
            {
                "domain pattern".to_owned()
            }
            Some(n) => format!("{} \"{n}\"", s.kind),
            None => s.kind.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Invalid tokens the Domain page shows, the newest.
const DETAIL_INVALID_TOKENS: usize = 50;

async fn domain_detail(State(d): State<Dash>, UrlPath(domain): UrlPath<String>) -> Response {
    let server = match d.server() {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let config = server.config();
    let Some(row) = rows(&config, &server.engine().all_stats(), &d.hub, Some(&domain))
        .into_iter()
        .next()
    else {
        return error(StatusCode::NOT_FOUND, format!("no domain {domain:?}"));
    };
    let stats = server.engine().stats(&domain);
    let mut failures: Vec<(&'static str, String, u64)> = stats
        .as_ref()
        .map(|s| {
            s.failures()
                .into_iter()
                .map(|((kind, reason), n)| {
                    let kind = match kind {
                        crate::queue::stats::FailureKind::Transient => "transient",
                        crate::queue::stats::FailureKind::Permanent => "permanent",
                    };
                    (kind, reason, n)
                })
                .collect()
        })
        .unwrap_or_default();
    failures.sort_by(|a, b| b.2.cmp(&a.2).then(a.1.cmp(&b.1)).then(a.0.cmp(b.0)));
    // The newest few only: the store reads no more than these under its lock, which delivery takes for every
    // invalid token.
    let invalid: Vec<_> = server
        .invalid_tokens()
        .newest(&domain, DETAIL_INVALID_TOKENS)
        .into_iter()
        .map(|t| {
            json!({
                "token": super::outcomes::token_prefix(&t.token),
                "reason": t.reason,
                "timestamp_ms": t.timestamp_ms,
                "learnt_ms": t.learnt_ms,
                "source": t.source,
            })
        })
        .collect();
    // The earliest delayed notification's due time, as the domain's counters keep it (asking the delivery task for
    // its queue would have it sort every delayed notification).
    let next_retry = row["next_retry_secs"].clone();
    let filter = Filter {
        domain: Some(domain.clone()),
        ..Filter::default()
    };
    Json(json!({
        "row": row,
        "options": effective_options(&config, &domain),
        "failures": failures.iter().map(|(kind, reason, count)| json!({ "kind": kind, "reason": reason, "count": count })).collect::<Vec<_>>(),
        "invalid_tokens": invalid,
        "next_retry_secs": next_retry,
        "recent": d.hub.outcomes.since(0, &filter, 50),
    }))
    .into_response()
}

async fn domain_action(
    State(d): State<Dash>,
    Extension(a): Extension<Access>,
    uri: Uri,
    headers: HeaderMap,
    UrlPath((domain, action)): UrlPath<(String, String)>,
) -> Response {
    if let Err(r) = auth::may_act_at(&a, &headers, &uri) {
        return refused(r);
    }
    let server = match d.server() {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if !["flush", "fail", "pause", "resume"].contains(&action.as_str()) {
        return error(
            StatusCode::NOT_FOUND,
            format!("no action {action:?}: flush, fail, pause or resume"),
        );
    }
    // On a task of its own, which finishes even if the client goes away meanwhile (its request is then dropped):
    // a fail stopped half-way would have failed the queues of some bindings of the domain and not the others.
    let work = {
        let (domain, action) = (domain.clone(), action.clone());
        tokio::spawn(async move {
            let engine = server.engine();
            match action.as_str() {
                "flush" => engine
                    .flush(&domain)
                    .then(|| format!("{domain}: delayed notifications are due now")),
                // The console's `fail domain` reason: one action, one reason in the logs and the metrics.
                "fail" => engine
                    .fail_domain(&domain, crate::control::commands::MANUAL_FAIL_REASON)
                    .await
                    .map(|n| format!("{domain}: {n} notifications failed")),
                "pause" => engine
                    .set_paused(&domain, true)
                    .then(|| format!("{domain}: delivery paused")),
                _ => engine
                    .set_paused(&domain, false)
                    .then(|| format!("{domain}: delivery resumed")),
            }
        })
    };
    let done = match work.await {
        Ok(done) => done,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{domain}: {action} interrupted: {e}"),
            );
        }
    };
    match done {
        Some(message) => {
            tracing::info!(domain = %domain, action = %action, via = a.via, "dashboard action");
            Json(json!({ "ok": true, "message": message })).into_response()
        }
        None => error(
            StatusCode::NOT_FOUND,
            format!("{domain}: no queue (the domain has seen no traffic)"),
        ),
    }
}

async fn outcomes(State(d): State<Dash>, RawQuery(raw): RawQuery) -> Response {
    let (filter, after, limit) = match outcomes_query(raw.as_deref().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let list = d
        .hub
        .outcomes
        .since(after, &filter, limit.min(super::outcomes::CAPACITY));
    Json(json!({ "outcomes": list, "last_seq": d.hub.outcomes.last_seq() })).into_response()
}

/// `limit` of `/dashboard/api/outcomes` when the query gives none.
const OUTCOMES_DEFAULT_LIMIT: usize = 200;

/// Reads the query of `/dashboard/api/outcomes`: the filter, `after` (a sequence number) and `limit`. An unknown
/// parameter, a number that is not one or a kind that is none of herald's is refused, naming it: a misspelt filter
/// would otherwise answer with everything.
fn outcomes_query(raw: &str) -> Result<(Filter, u64, usize), String> {
    let mut filter = Filter::default();
    let (mut after, mut limit) = (0u64, OUTCOMES_DEFAULT_LIMIT);
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value);
        match key {
            "domain" => filter.domain = Some(value),
            "kind" => {
                let known = KINDS.iter().any(|k| value.eq_ignore_ascii_case(k));
                if !value.is_empty() && !known {
                    return Err(format!(
                        "kind: {value:?} is not one of {}",
                        KINDS.join(", ")
                    ));
                }
                filter.kind = Some(value);
            }
            "token" => filter.token_prefix = Some(value),
            "reason" => filter.reason = Some(value),
            "after" => after = whole_number("after", &value)?,
            "limit" => {
                limit = usize::try_from(whole_number("limit", &value)?).unwrap_or(usize::MAX)
            }
            other => {
                return Err(format!(
                    "unknown parameter {:?}; use domain, kind, token, reason, after and limit",
                    percent_decode(other)
                ));
            }
        }
    }
    Ok((filter, after, limit))
}

fn whole_number(what: &str, value: &str) -> Result<u64, String> {
    value.parse().map_err(|_| {
        format!(
            "{what}: {value:?} is not a whole number from 0 to {}",
            u64::MAX
        )
    })
}

/// The include tree of `path`: the files it includes (by `include` / `readonly_include`), recursively.
pub fn include_tree(path: &Path, depth: usize, seen: &mut Vec<PathBuf>) -> serde_json::Value {
    let mut children = Vec::new();
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let cycle = seen.contains(&canonical);
    if !cycle && depth < 8 {
        seen.push(canonical);
        if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            files.sort();
            for f in files {
                children.push(include_tree(&f, depth + 1, seen));
            }
        } else if let Ok(text) = std::fs::read_to_string(path) {
            let dir = path.parent().unwrap_or(Path::new("."));
            for line in text.lines() {
                let line = line.trim_start();
                let rest = line
                    .strip_prefix("readonly_include")
                    .or_else(|| line.strip_prefix("include"));
                let Some(rest) = rest.filter(|r| r.starts_with([' ', '\t', '"'])) else {
                    continue;
                };
                let target = rest.trim().trim_matches('"');
                if target.is_empty() {
                    continue;
                }
                let target = dir.join(target);
                children.push(include_tree(&target, depth + 1, seen));
            }
        }
    }
    json!({ "path": path.display().to_string(), "exists": path.exists(), "cycle": cycle, "children": children })
}

async fn config(State(d): State<Dash>) -> Response {
    let server = match d.server() {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let path = server.config_path();
    let running = server.config().render_masked();
    let disk_path = path.clone();
    let generation = server.generation();
    let read = d
        .slow
        .clone()
        .read(SlowRead::Files, format!("{generation} {}", path.display()), move || {
            let tree = include_tree(&disk_path, 0, &mut Vec::new());
            let disk = match Config::load(&disk_path) {
                Ok(c) => json!({ "ok": true, "errors": [], "warnings": c.warnings().iter().map(|w| w.to_string()).collect::<Vec<_>>() }),
                Err(diags) => json!({ "ok": false, "errors": diags.to_string().lines().collect::<Vec<_>>(), "warnings": [] }),
            };
            json!({ "includes": tree, "disk": disk })
        })
        .await
        .unwrap_or_else(
            || json!({ "includes": null, "disk": { "ok": false, "errors": ["validation failed"] } }),
        );
    Json(json!({
        "path": path.display().to_string(),
        "generation": generation,
        "running": running,
        "includes": read["includes"],
        "disk": read["disk"],
    }))
    .into_response()
}

async fn reload(
    State(d): State<Dash>,
    Extension(a): Extension<Access>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = auth::may_act_at(&a, &headers, &uri) {
        return refused(r);
    }
    let server = match d.server() {
        Ok(s) => s,
        Err(r) => return *r,
    };
    tracing::info!(via = a.via, "dashboard: configuration reload");
    match server.reload(None).await {
        Ok(report) => Json(json!({
            "ok": true,
            "generation": server.generation(),
            "warnings": report.warnings,
            "listener_errors": report.listener_errors,
            "unroutable": report.unroutable,
        }))
        .into_response(),
        Err(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "ok": false, "error": e.to_string() })),
        )
            .into_response(),
    }
}

async fn events(
    State(d): State<Dash>,
    Extension(a): Extension<Access>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    use futures_util::StreamExt;
    let rx = d.hub.subscribe();
    // A session's stream ends with its session: at once at its logout or when a login of its key evicts it, and at
    // the first tick after its idle time or lifetime is over (asking at each tick does not count as a use). A key's
    // or an address's stream has no session to end with.
    let (session, ended) = match a.session {
        Some(id) => {
            let ended = d.sessions.ended(&id).unwrap_or_else(|| {
                let gone = CancellationToken::new();
                gone.cancel();
                gone
            });
            (Some((d.sessions.clone(), id)), ended)
        }
        None => (None, CancellationToken::new()),
    };
    let stream = futures_util::stream::unfold((rx, session), |(mut rx, session)| async move {
        loop {
            match rx.recv().await {
                Ok(tick) => {
                    if let Some((sessions, id)) = &session
                        && !sessions.alive(id)
                    {
                        return None;
                    }
                    let event = Event::default().event("tick").data(&*tick);
                    return Some((Ok(event), (rx, session)));
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    // Otherwise the stream never ends by itself: it ends when its listener stops, so that neither a restart nor a
    // shutdown waits on it, and a client whose key a reload revoked is not fed any longer.
    .take_until(d.stop.clone().cancelled_owned())
    .take_until(ended.cancelled_owned());
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The entry of `options` (the Domain page's effective options) for the option `name`.
    fn option_named(options: &[serde_json::Value], name: &str) -> serde_json::Value {
        options
            .iter()
            .find(|o| o["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {options:?}"))
            .clone()
    }

    /// A finding about another binding than `default` names it, so that the overview tells which binding's
    /// settings are wrong (as `herald check` does).
    #[test]
    fn a_finding_names_its_binding() {
        use crate::credentials::{Finding, Severity};
        let finding = |binding: Option<&str>| Finding {
            domain: "apps.example".into(),
            binding: binding.map(str::to_owned),
            severity: Severity::Error,
            message: "apn_key: cannot read".into(),
            at: None,
        };
        let json = findings_json(&[finding(None), finding(Some("b2"))]);
        assert_eq!(
            json,
            vec![
                json!({"domain": "apps.example", "binding": null, "severity": "error", "message": "apn_key: cannot read"}),
                json!({"domain": "apps.example", "binding": "b2", "severity": "error", "message": "apn_key: cannot read"}),
            ]
        );
    }

    /// The scope shown is the one the value came from: a regular-expression stanza wins over the global scope
    /// (docs/configuration.md, "Regex domains"), and the domain's own stanza over both.
    #[test]
    fn an_options_scope_is_the_stanza_its_value_came_from() {
        let config = Config::parse_str(
            "test.conf",
            r#"
max_outbound_connections = 32
retry_interval = 120
domain "push.example.org" { retry_interval = 60 }
domain "/[.]example[.]org$/" { max_outbound_connections = 4 idle_timeout = 90 }
"#,
        )
        .unwrap();
        let options = effective_options(&config, "push.example.org");
        let option = |name: &str| option_named(&options, name);
        assert_eq!(
            option("max_outbound_connections"),
            json!({ "name": "max_outbound_connections", "value": "4", "scope": "domain pattern" })
        );
        assert_eq!(option("idle_timeout")["scope"], "domain pattern");
        assert_eq!(
            option("retry_interval"),
            json!({ "name": "retry_interval", "value": "60", "scope": "domain \"push.example.org\"" })
        );
        assert_eq!(option("max_retries")["scope"], "default");
        // Another domain the pattern does not match: the global value, and its scope.
        let other = effective_options(&config, "push.example.com");
        let max = other
            .iter()
            .find(|o| o["name"] == "max_outbound_connections")
            .unwrap();
        assert_eq!(max["value"], "32");
        assert_eq!(max["scope"], "global");
    }

    /// A domain's page and row show what delivery applies to a notification that names no binding: a
    /// `binding "default"` stanza (in its binding group) wins over the global scope and the top-level domain
    /// stanza, and is named as the scope its values came from (docs/configuration.md, "Bindings in delivery").
    #[test]
    fn the_default_binding_gives_a_domains_options_and_its_connection_limit() {
        let config = Arc::new(
            Config::parse_str(
                "test.conf",
                r#"
max_retries = 5
apn_topic = "com.example.a"
domain "ok.example" { delivery_method = apn routes = ( "https://127.0.0.1:9" ) retry_interval = 60 }
domain "/[.]example$/" { idle_timeout = 90 }
binding_group "gdef" {
  message_expiration = 600
  binding "default" {
    max_retries = 0
    apn_topic = "com.example.b"
    max_outbound_connections = 3
    domain "/^ok[.]/" { delivery_response_timeout = 9 }
  }
}
"#,
            )
            .unwrap(),
        );
        let options = effective_options(&config, "ok.example");
        let option = |name: &str| option_named(&options, name);
        let binding = "binding_group \"gdef\" binding \"default\"";
        assert_eq!(option("max_retries")["value"], "0");
        assert_eq!(option("max_retries")["scope"], binding);
        assert_eq!(option("apn_topic")["value"], "com.example.b");
        assert_eq!(option("apn_topic")["scope"], binding);
        assert_eq!(option("max_outbound_connections")["value"], "3");
        assert_eq!(option("max_outbound_connections")["scope"], binding);
        assert_eq!(
            option("delivery_response_timeout")["scope"],
            format!("{binding} domain pattern")
        );
        assert_eq!(
            option("message_expiration")["scope"],
            "binding_group \"gdef\""
        );
        assert_eq!(option("retry_interval")["scope"], "domain \"ok.example\"");
        assert_eq!(option("idle_timeout")["scope"], "domain pattern");
        assert_eq!(option("tls_verify")["scope"], "default");
        let row = rows(&config, &[], &Hub::default(), Some("ok.example"));
        assert_eq!(row[0]["connection_limit"], 3, "{row:?}");
    }

    fn counters(delivered: u64) -> Arc<crate::queue::stats::DomainStats> {
        let s = crate::queue::stats::DomainStats::default();
        s.delivered.store(delivered, Ordering::Relaxed);
        s.transient.store(1, Ordering::Relaxed);
        Arc::new(s)
    }

    /// Many domains, configured or with traffic or both: one row each, sorted, each with its own counters (also
    /// when the engine writes the configured name in another case) and its own settings; the settings follow a
    /// new configuration, and the cache of them holds the domains of the last rows only.
    #[test]
    fn domain_rows_join_the_configuration_and_the_engine_by_name() {
        let text: String = (0..300)
            .map(|i| {
                format!(
                    "domain \"c{i:03}.example\" {{ max_outbound_connections = {} }}\n",
                    i + 1
                )
            })
            .chain(std::iter::once("domain \"/[.]pattern$/\" { }\n".to_owned()))
            .collect();
        let config = Arc::new(Config::parse_str("test.conf", &text).unwrap());
        let default_limit = config
            .domain_settings(None, None, "other.example")
            .max_outbound_connections;
        // Traffic for 200..500: 200..300 configured, the engine naming them in capitals.
        let stats: Vec<(Arc<str>, Arc<crate::queue::stats::DomainStats>)> = (200..500u64)
            .map(|i| {
                let name = if i < 300 {
                    format!("C{i:03}.EXAMPLE")
                } else {
                    format!("c{i:03}.example")
                };
                (Arc::from(name), counters(i))
            })
            .collect();
        let hub = Hub::default();
        let all = rows(&config, &stats, &hub, None);
        assert_eq!(all.len(), 500);
        for (i, row) in all.iter().enumerate() {
            let i = i as u64;
            let want = json!({
                "domain": format!("c{i:03}.example"),
                "configured": i < 300,
                "delivered": if i >= 200 { i } else { 0 },
                "failed": u64::from(i >= 200),
                "connection_limit": if i < 300 { i as i64 + 1 } else { default_limit },
            });
            for (field, value) in want.as_object().unwrap() {
                assert_eq!(&row[field], value, "{field} of row {i}: {row}");
            }
        }
        assert_eq!(hub.row_settings.0.lock().unwrap().by_name.len(), 500);

        // One domain, in any case.
        let one = rows(&config, &stats, &hub, Some("C250.Example"));
        assert_eq!(one.len(), 1);
        assert_eq!(
            (&one[0]["domain"], &one[0]["delivered"]),
            (&json!("c250.example"), &json!(250))
        );
        assert!(rows(&config, &stats, &hub, Some("nowhere.example")).is_empty());

        // A new configuration: its settings, not the cached ones; fewer domains, fewer cached.
        let config = Arc::new(
            Config::parse_str(
                "test.conf",
                "domain \"c000.example\" { max_outbound_connections = 77 }\n",
            )
            .unwrap(),
        );
        let all = rows(&config, &stats[100..110], &hub, None);
        assert_eq!(all.len(), 11);
        assert_eq!(
            (&all[0]["domain"], &all[0]["connection_limit"]),
            (&json!("c000.example"), &json!(77))
        );
        assert_eq!(all[1]["connection_limit"], json!(default_limit));
        assert_eq!(hub.row_settings.0.lock().unwrap().by_name.len(), 11);
    }

    #[test]
    fn the_session_cookie_is_secure_on_a_tls_listener() {
        let plain = session_cookie("herald_dashboard_1", "abc", false);
        assert!(
            plain.contains("HttpOnly") && plain.contains("SameSite=Strict"),
            "{plain}"
        );
        assert!(!plain.contains("Secure"), "{plain}");
        assert!(session_cookie("__Secure-herald_dashboard_1", "abc", true).ends_with("; Secure"));
    }

    #[test]
    fn the_outcomes_query_reads_its_filter_and_numbers() {
        let (filter, after, limit) = outcomes_query(
            "domain=apps.example&kind=Permanent&token=ab&reason=Bad%20token&after=7&limit=50",
        )
        .unwrap();
        assert_eq!(filter.domain.as_deref(), Some("apps.example"));
        assert_eq!(filter.kind.as_deref(), Some("Permanent"));
        assert_eq!(filter.token_prefix.as_deref(), Some("ab"));
        assert_eq!(filter.reason.as_deref(), Some("Bad token"));
        assert_eq!((after, limit), (7, 50));
        let (filter, after, limit) = outcomes_query("").unwrap();
        assert!(filter.kind.is_none());
        assert_eq!((after, limit), (0, OUTCOMES_DEFAULT_LIMIT));
        // An empty kind is no filter, as the page's select sends it.
        assert_eq!(outcomes_query("kind=").unwrap().0.kind.as_deref(), Some(""));
    }

    #[test]
    fn the_outcomes_query_names_what_it_refuses() {
        for (query, error) in [
            (
                "limit=null",
                "limit: \"null\" is not a whole number from 0 to 18446744073709551615",
            ),
            (
                "after=-1",
                "after: \"-1\" is not a whole number from 0 to 18446744073709551615",
            ),
            (
                "after=18446744073709551616",
                "after: \"18446744073709551616\" is not a whole number from 0 to 18446744073709551615",
            ),
            (
                "kind=failed",
                "kind: \"failed\" is not one of delivered, transient, permanent",
            ),
            (
                "domian=a",
                "unknown parameter \"domian\"; use domain, kind, token, reason, after and limit",
            ),
        ] {
            assert_eq!(
                outcomes_query(query).err().as_deref(),
                Some(error),
                "{query}"
            );
        }
    }

    /// A dashboard of `server` (none: one without a server, whose data calls answer 503) for the listener with the
    /// API key `k`, served on 127.0.0.1; returns its address and its state.
    async fn serve(server: Weak<dyn ServerHandle>) -> (String, Dash) {
        let settings = Config::parse_str(
            "t.conf",
            r#"http_listener { listen "127.0.0.1:0" { api_key = "k" } }"#,
        )
        .unwrap()
        .listeners()
        .remove(0);
        let dash = Dash {
            hub: Arc::default(),
            server,
            settings: Arc::new(settings),
            sessions: Arc::default(),
            guesses: Arc::default(),
            stop: CancellationToken::new(),
            slow: Arc::default(),
        };
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", socket.local_addr().unwrap());
        let app = router(dash.clone());
        tokio::spawn(async move { axum::serve(socket, app).await });
        (base, dash)
    }

    fn no_server() -> Weak<dyn ServerHandle> {
        Weak::<crate::server::Server>::new()
    }

    /// Reads `stream` until it carries a tick (`Some`) or ends (`None`), within 30 s.
    async fn next_tick(stream: &mut reqwest::Response) -> Option<String> {
        let read = async {
            let mut text = String::new();
            while let Some(chunk) = stream.chunk().await.ok()? {
                text.push_str(&String::from_utf8_lossy(&chunk));
                if text.contains("event: tick") && text.ends_with("\n\n") {
                    return Some(text);
                }
            }
            None
        };
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .expect("a tick or the end within 30 s")
    }

    /// A session's event stream ends when its session expires (idle time or lifetime), at the first tick after:
    /// checked at every tick without counting as a use. A key's stream goes on.
    #[tokio::test]
    async fn an_event_stream_ends_when_its_session_expires() {
        let (base, dash) = serve(no_server()).await;
        let client = reqwest::Client::new();
        let login = |client: &reqwest::Client| {
            client
                .post(format!("{base}/dashboard/api/login"))
                .json(&json!({ "key": "k" }))
                .send()
        };
        let events = |header: (&'static str, String)| {
            client
                .get(format!("{base}/dashboard/api/events"))
                .header(header.0, header.1)
                .send()
        };
        for (what, expire) in [
            ("idle", auth::SESSION_IDLE),
            ("lifetime", auth::SESSION_LIFETIME),
        ] {
            let r = login(&client).await.unwrap();
            assert_eq!(r.status(), 200);
            let cookie = r.headers()[header::SET_COOKIE].to_str().unwrap();
            let cookie = cookie.split(';').next().unwrap().to_owned();
            let mut by_session = events(("cookie", cookie.clone())).await.unwrap();
            let mut by_key = events(("x-api-key", "k".into())).await.unwrap();
            assert_eq!(
                (by_session.status().as_u16(), by_key.status().as_u16()),
                (200, 200)
            );
            dash.hub.send_tick("{}");
            assert!(next_tick(&mut by_session).await.is_some(), "{what}");
            assert!(next_tick(&mut by_key).await.is_some(), "{what}");
            if what == "lifetime" {
                // Used all along: a call every 7 hours, within the idle time, to the end of the lifetime.
                let mut used = Duration::ZERO;
                while used + 7 * 3600 * Duration::from_secs(1) < expire {
                    dash.sessions.advance(Duration::from_secs(7 * 3600));
                    used += Duration::from_secs(7 * 3600);
                    let r = client
                        .get(format!("{base}/dashboard/api/session"))
                        .header("cookie", &cookie)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200, "{what} at {used:?}");
                }
                dash.sessions.advance(expire - used);
            } else {
                dash.sessions.advance(expire);
            }
            dash.hub.send_tick("{}");
            if let Some(tick) = next_tick(&mut by_session).await {
                panic!("{what}: the stream went on after its session ended: {tick}");
            }
            assert!(next_tick(&mut by_key).await.is_some(), "{what}");
            let r = client
                .get(format!("{base}/dashboard/api/session"))
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 401, "{what}");
        }
    }

    /// The reads that go to the disk run one at a time per dashboard and their result is reused: many readers at
    /// once make one read of each; a reload (a new generation) makes them read again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn many_readers_make_one_read_of_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("herald.conf");
        std::fs::write(
            &config,
            format!(
                "spool_dir = \"{}\"\ndomain \"a.example\" {{ delivery_method = apn apn_key = \"{}\" \
                 apn_key_id = \"K\" apn_team_id = \"T\" apn_topic = \"t\" }}\n",
                dir.path().join("spool").display(),
                dir.path().join("missing.p8").display()
            ),
        )
        .unwrap();
        let server = crate::server::Server::start(&config).await.unwrap();
        let (base, dash) = serve(Arc::downgrade(&server) as Weak<dyn ServerHandle>).await;
        // The reuse counts from the generation alone: however slowly the requests run, none of them outlives it.
        dash.slow
            .counts
            .reuse_for_ever
            .store(true, Ordering::SeqCst);
        let client = reqwest::Client::new();
        let read_all = || async {
            let calls = (0..24).map(|i| {
                let path = if i % 2 == 0 { "overview" } else { "config" };
                client
                    .get(format!("{base}/dashboard/api/{path}"))
                    .header("x-api-key", "k")
                    .send()
            });
            for r in futures_util::future::join_all(calls).await {
                let r = r.unwrap();
                assert_eq!(r.status(), 200);
                let body: serde_json::Value = r.json().await.unwrap();
                if body.get("warnings").is_some() {
                    assert_eq!(body["warnings"][0]["domain"], "a.example", "{body}");
                    assert!(body["warnings"][0]["severity"] == "error", "{body}");
                } else {
                    assert_eq!(body["disk"]["ok"], true, "{body}");
                }
            }
        };
        read_all().await;
        let counts = &dash.slow.counts;
        assert_eq!(counts.made.load(Ordering::SeqCst), 2);
        assert_eq!(counts.most_at_once.load(Ordering::SeqCst), 1);
        server.reload(None).await.unwrap();
        read_all().await;
        assert_eq!(counts.made.load(Ordering::SeqCst), 4);
        assert_eq!(counts.most_at_once.load(Ordering::SeqCst), 1);
        server.shutdown(Duration::from_secs(5)).await;
    }
}
