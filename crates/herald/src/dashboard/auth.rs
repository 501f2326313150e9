//! Who may use the dashboard and what they may do. A browser logs in with one of the listener's API keys
//! (`POST /dashboard/api/login`) and gets a session cookie (`HttpOnly`, `SameSite=Strict`) plus a CSRF token; a
//! script may send the key itself (`authorization: Bearer KEY` or `x-api-key`); a client in the listener's
//! `always_allow` list (or any client of a listener without keys) reads without one. Only a key listed in
//! `dashboard_admin_keys` may act, and only where the listener accepts it from that client ([`key_rights`]).
//! Every state-changing call must come from the dashboard's own origin (`Origin` and `Sec-Fetch-Site` are
//! checked) and, from a browser session, carry the session's CSRF token.
//!
//! A session ends at its logout, after [`SESSION_IDLE`] without a call, [`SESSION_LIFETIME`] after its login
//! whatever its use, or when its key logs in a [`SESSIONS_PER_KEY`]th + 1 time (the key's session used longest ago
//! goes); its event streams end with it ([`Sessions::ended`]).
//!
//! Reading without a key goes by the client's address, which a browser does not choose: a page of another site
//! whose name is then rebound to herald's address (DNS rebinding) is the same origin as the dashboard, and its
//! scripts would read the dashboard through the operator's browser. So a browser's request read by address must
//! be addressed to an IP literal, `localhost` or a name of the listener's `dashboard_hosts` ([`host_allowed`]);
//! a session or a key is not affected (the rebound page does not have them).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Uri, header};
use herald_conf::{ListenAddr, ListenerSettings};
use tokio_util::sync::CancellationToken;

use crate::access::{GuessThrottle, same_secret};

/// The session cookie's name, before the port (see [`cookie_name`]).
pub const COOKIE: &str = "herald_dashboard";
/// The header a browser session sends its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lives without use.
pub const SESSION_IDLE: Duration = Duration::from_secs(8 * 3600);
/// How long a session lives at most from its login, however much it is used (a page left open polls and reads).
pub const SESSION_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Sessions one key has at most: its next login ends its session used longest ago (never another key's).
pub const SESSIONS_PER_KEY: usize = 16;

/// What a request may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub admin: bool,
    /// `session`, `key` or `address`.
    pub via: &'static str,
    /// The session's CSRF token, for a cookie session.
    pub csrf: Option<String>,
    /// The session's id, for a cookie session (its event stream ends with it).
    pub session: Option<Arc<str>>,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("log in with an API key of this listener")]
    Unauthenticated,
    #[error("this key has no admin right on the dashboard (see dashboard_admin_keys)")]
    NotAdmin,
    #[error("cross-site request refused")]
    CrossSite,
    #[error("missing or wrong CSRF token")]
    Csrf,
    #[error("too many wrong keys from this address: try again in {seconds} s")]
    TooManyGuesses { seconds: u64 },
    #[error(
        "a browser reached the dashboard under the host name {host:?}, which may be another site's name rebound to \
         this listener's address: add it to dashboard_hosts in this listen stanza, or log in with an API key"
    )]
    UnknownHost { host: String },
}

#[derive(Debug)]
struct Session {
    admin: bool,
    csrf: String,
    /// A digest of the key it logged in with (the sessions of one key are capped; the key itself is not kept).
    key: [u8; 32],
    created: Instant,
    last_used: Instant,
    /// Cancelled when the session ends, whatever ends it: its event streams end with it.
    ended: CancellationToken,
}

impl Session {
    fn live_at(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_used) < SESSION_IDLE
            && now.saturating_duration_since(self.created) < SESSION_LIFETIME
    }
}

/// The sessions of one listener.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    /// How far the tests moved this clock forward.
    #[cfg(test)]
    skew: Mutex<Duration>,
}

fn random_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn key_digest(key: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(key.as_bytes()).into()
}

/// What a lookup tells of a live session.
struct Live {
    admin: bool,
    csrf: String,
}

impl Sessions {
    fn now(&self) -> Instant {
        let now = Instant::now();
        #[cfg(test)]
        let now = now + *self.skew.lock().unwrap_or_else(|p| p.into_inner());
        now
    }

    /// Moves this clock `by` forward (tests: a session's idle time and lifetime without waiting for them).
    #[cfg(test)]
    pub(crate) fn advance(&self, by: Duration) {
        *self.skew.lock().unwrap_or_else(|p| p.into_inner()) += by;
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new session for a login with `key`; returns (session id, CSRF token). Ended sessions go; past
    /// [`SESSIONS_PER_KEY`] sessions of `key`, the one of them used longest ago goes (another key's never do).
    pub fn create(&self, key: &str, admin: bool) -> (String, String) {
        let id = random_token();
        let csrf = random_token();
        let key = key_digest(key);
        let now = self.now();
        let mut map = self.map();
        map.retain(|_, s| {
            let live = s.live_at(now);
            if !live {
                s.ended.cancel();
            }
            live
        });
        let mut mine: Vec<(Instant, String)> = map
            .iter()
            .filter(|(_, s)| s.key == key)
            .map(|(id, s)| (s.last_used, id.clone()))
            .collect();
        if mine.len() >= SESSIONS_PER_KEY {
            mine.sort();
            for (_, old) in &mine[..=mine.len() - SESSIONS_PER_KEY] {
                if let Some(s) = map.remove(old) {
                    s.ended.cancel();
                }
            }
        }
        map.insert(
            id.clone(),
            Session {
                admin,
                csrf: csrf.clone(),
                key,
                created: now,
                last_used: now,
                ended: CancellationToken::new(),
            },
        );
        (id, csrf)
    }

    /// The live session `id`, now used (its idle time starts again). An ended one goes.
    fn lookup(&self, id: &str) -> Option<Live> {
        let now = self.now();
        let mut map = self.map();
        let s = map.get_mut(id)?;
        if !s.live_at(now) {
            if let Some(s) = map.remove(id) {
                s.ended.cancel();
            }
            return None;
        }
        s.last_used = now;
        Some(Live {
            admin: s.admin,
            csrf: s.csrf.clone(),
        })
    }

    /// Whether the session `id` is still live, without counting as a use (an open event stream asks at every
    /// tick: it does not keep its session alive). An ended one goes.
    pub fn alive(&self, id: &str) -> bool {
        let now = self.now();
        let mut map = self.map();
        match map.get(id) {
            Some(s) if s.live_at(now) => true,
            Some(_) => {
                if let Some(s) = map.remove(id) {
                    s.ended.cancel();
                }
                false
            }
            None => false,
        }
    }

    /// Cancelled when the session `id` ends (logout, eviction, or found expired); `None` if it has ended already.
    pub fn ended(&self, id: &str) -> Option<CancellationToken> {
        self.map().get(id).map(|s| s.ended.clone())
    }

    /// Ends the session `id` (a logout).
    pub fn remove(&self, id: &str) {
        if let Some(s) = self.map().remove(id) {
            s.ended.cancel();
        }
    }

    /// Sessions kept (live, or ended and not yet found so).
    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The name of the session cookie of the dashboard a request was sent to: `herald_dashboard_PORT`, PORT being the
/// port of the host the request was addressed to (its `Host`, or over HTTP/2 its authority; without a port there,
/// 443 on a TLS listener and 80 otherwise; without a host at all, the listen stanza's port). A browser sends a
/// host's cookies to every port of it: two dashboards on one host would otherwise share, and overwrite, one
/// cookie. On a TLS listener the name starts with `__Secure-`: a browser then accepts it only over HTTPS and with
/// `Secure`, so a plain-HTTP page of the same host cannot set it. (`__Host-` would need `Path=/`; the cookie is for
/// `/dashboard` only.)
pub fn cookie_name(settings: &ListenerSettings, headers: &HeaderMap, uri: &Uri) -> String {
    let tls = settings.tls_certificate.is_some();
    let port = match request_host(headers, uri) {
        Some(host) => host_port(host).unwrap_or(if tls { 443 } else { 80 }),
        None => match &settings.addr {
            ListenAddr::Tcp(a) => a.port(),
            ListenAddr::Unix(_) => 0,
        },
    };
    format!("{}{COOKIE}_{port}", if tls { "__Secure-" } else { "" })
}

/// The port of a `Host` value, if it names one.
fn host_port(host: &str) -> Option<u16> {
    let host = host.trim();
    let port = match host.strip_prefix('[') {
        Some(rest) => rest.split_once(']')?.1.strip_prefix(':')?,
        None => match host.split_once(':') {
            Some((_, port)) if !port.contains(':') => port,
            _ => return None,
        },
    };
    port.parse().ok()
}

/// The value of the cookie `name` in the request's cookies.
pub fn session_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The API key a request carries: an `authorization: Bearer` token first, else `x-api-key` (an `authorization` of
/// another scheme, such as a proxy's `Basic`, leaves the key to `x-api-key`), as the REST API reads it.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, key)| scheme.eq_ignore_ascii_case("bearer") && !key.trim().is_empty())
        .map(|(_, key)| key.trim());
    bearer.or_else(|| {
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|k| !k.is_empty())
    })
}

/// Whether `key` is accepted from `ip`, and with the admin right. `None` if it is not accepted: a key is accepted
/// when it is one of the API keys the listener takes from `ip` (its `peer` stanza's, else the listen stanza's), as
/// the REST API accepts it; `dashboard_admin_keys` only says which of those act. A key listed there and not among
/// them (left there when it was taken out of `api_keys`, or replaced for this client by a listen or `peer`
/// stanza's `api_keys`) is a wrong key.
pub fn key_rights(settings: &ListenerSettings, ip: Option<IpAddr>, key: &str) -> Option<bool> {
    let (keys, admin_keys) = match ip {
        Some(ip) => (settings.api_keys_for(ip), settings.admin_keys_for(ip)),
        None => (settings.api_keys.as_slice(), settings.admin_keys.as_slice()),
    };
    let listed = |list: &[String]| {
        list.iter()
            .any(|k| same_secret(k.as_bytes(), key.as_bytes()))
    };
    listed(keys).then(|| listed(admin_keys))
}

/// What the request may do, from its session cookie, its key, or its address. A wrong key counts in `guesses`
/// (the listener's, shared with its REST API), and an address locked out there is refused any key. A browser's
/// request read by address must be addressed to a host [`host_allowed`] accepts. `uri` is the request's (over
/// HTTP/2 it carries the host).
pub fn access(
    settings: &ListenerSettings,
    sessions: &Sessions,
    guesses: &GuessThrottle,
    ip: Option<IpAddr>,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Access, Refusal> {
    let cookie = session_cookie(headers, &cookie_name(settings, headers, uri));
    if let Some((id, s)) = cookie.and_then(|id| Some((id, sessions.lookup(id)?))) {
        return Ok(Access {
            admin: s.admin,
            via: "session",
            csrf: Some(s.csrf),
            session: Some(Arc::from(id)),
        });
    }
    if let Some(key) = presented_key(headers) {
        let limit = settings.auth_failure_limit_for(ip) as usize;
        if let Some(wait) = guesses.locked(ip, limit) {
            return Err(Refusal::TooManyGuesses {
                seconds: wait.as_secs().max(1),
            });
        }
        return match key_rights(settings, ip, key) {
            Some(admin) => Ok(Access {
                admin,
                via: "key",
                csrf: None,
                session: None,
            }),
            None => {
                let failures = guesses.failed(ip, limit);
                tracing::warn!(client = ?ip, failures, "dashboard request with a wrong key");
                Err(Refusal::Unauthenticated)
            }
        };
    }
    let keys = match ip {
        Some(ip) => settings.api_keys_for(ip),
        None => settings.api_keys.as_slice(),
    };
    if ip.is_some_and(|ip| settings.always_allowed(ip)) || keys.is_empty() {
        if is_browser(headers) {
            let host = request_host(headers, uri).unwrap_or("");
            if !host_allowed(host, &settings.dashboard_hosts) {
                if warn_now() {
                    tracing::warn!(client = ?ip, host, "dashboard: a browser read by address under a host name not in dashboard_hosts (said at most once a minute)");
                }
                return Err(Refusal::UnknownHost {
                    host: host.to_owned(),
                });
            }
        }
        return Ok(Access {
            admin: false,
            via: "address",
            csrf: None,
            session: None,
        });
    }
    Err(Refusal::Unauthenticated)
}

/// Whether a browser sent the request: it carries `sec-fetch-site` or `origin`, or a browser's `user-agent`
/// (`Mozilla/…`, for browsers that send neither header on a same-origin read). Scripts send none of them (a page's
/// scripts cannot change the user agent).
fn is_browser(headers: &HeaderMap) -> bool {
    headers.contains_key("sec-fetch-site")
        || headers.contains_key(header::ORIGIN)
        || headers
            .get(header::USER_AGENT)
            .is_some_and(|ua| ua.as_bytes().starts_with(b"Mozilla/"))
}

/// Whether to log a refused read by an unknown host name now: at most once a minute (a refused page polls every
/// second).
fn warn_now() -> bool {
    static REFUSALS: crate::logs::throttle::OncePer = crate::logs::throttle::OncePer::new(60);
    REFUSALS.now()
}

/// The host name of a `Host` value (or an HTTP/2 authority): without its port, an IPv6 literal without its
/// brackets, without a trailing dot. `None` for a value that is no host (empty, or an opening bracket not closed).
pub fn host_name(host: &str) -> Option<&str> {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.starts_with(':')) {
            return None;
        }
        inside
    } else {
        match host.rsplit_once(':') {
            // More than one colon and no brackets: a bare IPv6 literal.
            Some((name, _)) if name.contains(':') => host,
            Some((name, _)) => name,
            None => host,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    (!name.is_empty()).then_some(name)
}

/// Whether a browser reading the dashboard by its address (no key, no session) may address it as `host` (the
/// request's `Host`, port included): an IP literal, `localhost`, or a name of `dashboard_hosts` (case-insensitive;
/// a port written there is not compared).
/// Another name may be another site's, rebound to the listener's address to read the dashboard with the browser's
/// address.
pub fn host_allowed(host: &str, dashboard_hosts: &[String]) -> bool {
    let Some(name) = host_name(host) else {
        return false;
    };
    name.parse::<IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || dashboard_hosts
            .iter()
            .filter_map(|h| host_name(h))
            .any(|h| h.eq_ignore_ascii_case(name))
}

/// Refuses a state-changing request that another site may have caused: `Sec-Fetch-Site` other than
/// `same-origin` / `none`, or an `Origin` whose host is not the request's (see [`request_host`]). A request with
/// neither header (a script, not a browser) passes this check. `uri` is the request's: over HTTP/2 it carries the
/// host, and there is no `Host` header.
pub fn same_origin_at(headers: &HeaderMap, uri: &Uri) -> Result<(), Refusal> {
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or("");
        if site != "same-origin" && site != "none" {
            return Err(Refusal::CrossSite);
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let host = request_host(headers, uri).unwrap_or("");
        let origin_host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .unwrap_or("");
        if host.is_empty() || !origin_host.eq_ignore_ascii_case(host) {
            return Err(Refusal::CrossSite);
        }
    }
    Ok(())
}

/// The host (with its port, if any) a request was addressed to: the `Host` header, else the authority of the
/// request URI, where hyper puts HTTP/2's `:authority` (browsers speak HTTP/2 to a TLS listener and send no
/// `Host` there, so reading only the header refused every browser action over HTTPS).
pub fn request_host<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Option<&'a str> {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .filter(|h| !h.is_empty())
}

/// The checks of a state-changing call: same origin, the admin right, and a browser session's CSRF token.
pub fn may_act_at(access: &Access, headers: &HeaderMap, uri: &Uri) -> Result<(), Refusal> {
    same_origin_at(headers, uri)?;
    if let Some(csrf) = &access.csrf {
        let sent = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !same_secret(csrf.as_bytes(), sent.as_bytes()) {
            return Err(Refusal::Csrf);
        }
    }
    if !access.admin {
        return Err(Refusal::NotAdmin);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    /// A Bearer token is the key; a proxy's `Basic` authorization leaves it to `x-api-key`.
    #[test]
    fn the_key_is_a_bearer_token_else_x_api_key() {
        assert_eq!(
            presented_key(&headers(&[
                ("authorization", "Bearer k1"),
                ("x-api-key", "k2")
            ])),
            Some("k1")
        );
        assert_eq!(
            presented_key(&headers(&[
                ("authorization", "Basic cHJveHk6cw=="),
                ("x-api-key", "k2")
            ])),
            Some("k2")
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "Basic cHJveHk6cw==")])),
            None
        );
        assert_eq!(
            presented_key(&headers(&[("x-api-key", " k2 ")])),
            Some("k2")
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "Bearer  ")])),
            None
        );
    }

    /// The URI of an HTTP/1 request as hyper gives it: only the path (the host is in the `Host` header).
    fn path() -> Uri {
        Uri::from_static("/dashboard/api/config/reload")
    }

    #[test]
    fn cross_site_requests_are_refused() {
        let same_origin = |pairs: &[(&'static str, &str)]| same_origin_at(&headers(pairs), &path());
        assert!(same_origin(&[("host", "h:1")]).is_ok());
        assert!(same_origin(&[("host", "h:1"), ("origin", "http://h:1")]).is_ok());
        assert_eq!(
            same_origin(&[("host", "h:1"), ("origin", "http://evil:1")]),
            Err(Refusal::CrossSite)
        );
        assert_eq!(
            same_origin(&[("host", "h:1"), ("sec-fetch-site", "cross-site")]),
            Err(Refusal::CrossSite)
        );
        assert_eq!(
            same_origin(&[("host", "h:1"), ("origin", "null")]),
            Err(Refusal::CrossSite)
        );
    }

    #[test]
    fn over_http2_the_host_is_the_uris_authority() {
        // An HTTP/2 request as hyper gives it: `:authority` in the URI, no Host header.
        let uri: Uri = "https://h:1/dashboard/api/config/reload".parse().unwrap();
        let browser = headers(&[("origin", "https://h:1"), ("sec-fetch-site", "same-origin")]);
        assert_eq!(request_host(&browser, &uri), Some("h:1"));
        assert!(same_origin_at(&browser, &uri).is_ok());
        let evil = headers(&[("origin", "https://evil:1")]);
        assert_eq!(same_origin_at(&evil, &uri), Err(Refusal::CrossSite));
        // The Host header, when there is one, is the host (HTTP/1, whose URI is only a path).
        let path: Uri = "/dashboard/api/login".parse().unwrap();
        let http1 = headers(&[("host", "h:2"), ("origin", "http://h:2")]);
        assert_eq!(request_host(&http1, &path), Some("h:2"));
        assert!(same_origin_at(&http1, &path).is_ok());
        // Neither: nothing to compare the Origin with.
        assert_eq!(request_host(&evil, &path), None);
        assert_eq!(same_origin_at(&browser, &path), Err(Refusal::CrossSite));
        let admin = Access {
            admin: true,
            via: "key",
            csrf: None,
            session: None,
        };
        assert!(may_act_at(&admin, &browser, &uri).is_ok());
        assert_eq!(may_act_at(&admin, &evil, &uri), Err(Refusal::CrossSite));
    }

    #[test]
    fn sessions_need_their_csrf_token_and_the_admin_right() {
        let guesses = GuessThrottle::default();
        let sessions = Sessions::default();
        let (id, csrf) = sessions.create("k", true);
        let settings = herald_conf::Config::parse_str(
            "t.conf",
            r#"http_listener { listen "127.0.0.1:0" { api_key = "k" } }"#,
        )
        .unwrap()
        .listeners()
        .remove(0);
        // No host: the listen stanza's port.
        assert_eq!(
            cookie_name(&settings, &headers(&[]), &path()),
            "herald_dashboard_0"
        );
        let cookie = format!("a=b; herald_dashboard_0={id}");
        let a = access(
            &settings,
            &sessions,
            &guesses,
            None,
            &headers(&[("cookie", &cookie)]),
            &path(),
        )
        .unwrap();
        assert!(a.admin);
        let may_act =
            |a: &Access, pairs: &[(&'static str, &str)]| may_act_at(a, &headers(pairs), &path());
        assert_eq!(may_act(&a, &[]), Err(Refusal::Csrf));
        assert!(may_act(&a, &[(CSRF_HEADER, &csrf)]).is_ok());
        let reader = access(
            &settings,
            &sessions,
            &guesses,
            None,
            &headers(&[("x-api-key", "k")]),
            &path(),
        )
        .unwrap();
        assert_eq!(may_act(&reader, &[]), Err(Refusal::NotAdmin));
        assert_eq!(
            access(
                &settings,
                &sessions,
                &guesses,
                None,
                &headers(&[("x-api-key", "no")]),
                &path(),
            ),
            Err(Refusal::Unauthenticated)
        );
        assert_eq!(
            access(&settings, &sessions, &guesses, None, &headers(&[]), &path()),
            Err(Refusal::Unauthenticated)
        );
        // The wrong key above counted; after the limit, the address is refused even the right key.
        for _ in 1..crate::access::MAX_GUESSES {
            let _ = access(
                &settings,
                &sessions,
                &guesses,
                None,
                &headers(&[("x-api-key", "no")]),
                &path(),
            );
        }
        assert!(matches!(
            access(
                &settings,
                &sessions,
                &guesses,
                None,
                &headers(&[("x-api-key", "k")]),
                &path(),
            ),
            Err(Refusal::TooManyGuesses { .. })
        ));
    }

    /// `dashboard_admin_keys` names which of the accepted keys act: a key listed there that the listener does not
    /// take from the client (its listen or `peer` stanza's `api_keys` replace the listener's, or the key is no
    /// longer in `api_keys`) is a wrong key, not an admin.
    #[test]
    fn an_admin_key_the_listener_does_not_accept_is_a_wrong_key() {
        let listener = herald_conf::Config::parse_str(
            "t.conf",
            r#"http_listener {
                 api_keys = ( "reader" "admin" ) dashboard_admin_keys = ( "admin" "gone" )
                 listen "127.0.0.1:0" { peer "192.0.2.0/24" { api_keys = ( "reader" ) } }
                 listen "127.0.0.1:1" { api_keys = ( "reader2" ) }
               }"#,
        )
        .unwrap()
        .listeners();
        let (own, replaced) = (&listener[0], &listener[1]);
        let local = Some(IpAddr::from([127, 0, 0, 1]));
        let peer = Some(IpAddr::from([192, 0, 2, 7]));
        for ip in [local, None] {
            assert_eq!(key_rights(own, ip, "admin"), Some(true));
            assert_eq!(key_rights(own, ip, "reader"), Some(false));
            assert_eq!(key_rights(own, ip, "gone"), None, "taken out of api_keys");
            assert_eq!(key_rights(replaced, ip, "admin"), None, "listen api_keys");
            assert_eq!(key_rights(replaced, ip, "reader2"), Some(false));
        }
        assert_eq!(key_rights(own, peer, "admin"), None, "peer api_keys");
        assert_eq!(key_rights(own, peer, "reader"), Some(false));
        // Through `access`: refused, and counted as a wrong key.
        let guesses = GuessThrottle::default();
        let sessions = Sessions::default();
        let limit = own.auth_failure_limit_for(peer) as usize;
        for _ in 0..limit {
            assert_eq!(
                access(
                    own,
                    &sessions,
                    &guesses,
                    peer,
                    &headers(&[("x-api-key", "admin")]),
                    &path()
                ),
                Err(Refusal::Unauthenticated)
            );
        }
        assert!(guesses.locked(peer, limit).is_some());
    }

    #[test]
    fn host_names_lose_their_port_brackets_and_trailing_dot() {
        assert_eq!(host_name("herald.internal:8082"), Some("herald.internal"));
        assert_eq!(host_name("Herald.Internal."), Some("Herald.Internal"));
        assert_eq!(host_name("127.0.0.1:80"), Some("127.0.0.1"));
        assert_eq!(host_name("[::1]:8082"), Some("::1"));
        assert_eq!(host_name("[::1]"), Some("::1"));
        assert_eq!(host_name("::1"), Some("::1"));
        assert_eq!(host_name("[::1"), None);
        assert_eq!(host_name("[::1]x"), None);
        assert_eq!(host_name(""), None);
        assert_eq!(host_name(":80"), None);
    }

    #[test]
    fn a_browser_reading_by_address_must_name_a_known_host() {
        let known = ["herald.internal".to_owned()];
        for host in [
            "127.0.0.1:8082",
            "[::1]:8082",
            "[2001:db8::1]",
            "10.1.2.3",
            "localhost:8082",
            "LOCALHOST",
            "herald.internal:8082",
            "HERALD.internal.",
        ] {
            assert!(host_allowed(host, &known), "{host}");
        }
        for host in [
            "evil.example:8082",
            "herald.internal.evil.example",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "",
            "[::1",
        ] {
            assert!(!host_allowed(host, &known), "{host}");
        }
        assert!(!host_allowed("herald.internal", &[]));
        assert!(host_allowed(
            "herald.internal:8082",
            &["Herald.Internal:80".to_owned()]
        ));
    }

    /// DNS rebinding: a page of evil.example, whose name now resolves to herald's address, is the dashboard's own
    /// origin; reading by address it is refused, naming the host. A script, a key and a session are not affected.
    #[test]
    fn address_access_by_a_browser_checks_the_host() {
        let settings = |extra: &str| {
            herald_conf::Config::parse_str(
                "t.conf",
                &format!(
                    r#"http_listener {{ always_allow = ( "127.0.0.1" ) api_key = "k" listen "127.0.0.1:0" {{ {extra} }} }}"#
                ),
            )
            .unwrap()
            .listeners()
            .remove(0)
        };
        let plain = settings("");
        let named = settings(r#"dashboard_hosts = ( "herald.internal" )"#);
        let (guesses, sessions) = (GuessThrottle::default(), Sessions::default());
        let ip = Some(IpAddr::from([127, 0, 0, 1]));
        let read = |settings: &ListenerSettings, pairs: &[(&'static str, &str)]| {
            access(settings, &sessions, &guesses, ip, &headers(pairs), &path())
        };
        let browser = |host: &'static str| [("host", host), ("sec-fetch-site", "same-origin")];
        assert_eq!(
            read(&plain, &browser("evil.example:8082")),
            Err(Refusal::UnknownHost {
                host: "evil.example:8082".into()
            })
        );
        let message = Refusal::UnknownHost {
            host: "evil.example:8082".into(),
        }
        .to_string();
        assert!(
            message.contains("\"evil.example:8082\"") && message.contains("dashboard_hosts"),
            "{message}"
        );
        // A browser's user agent alone marks a browser too (one that sends neither header on a same-origin read).
        assert!(matches!(
            read(
                &plain,
                &[
                    ("host", "evil.example"),
                    ("user-agent", "Mozilla/5.0 (Macintosh) Safari/605.1.15")
                ]
            ),
            Err(Refusal::UnknownHost { .. })
        ));
        assert_eq!(
            read(
                &plain,
                &[("host", "herald.internal"), ("user-agent", "curl/8.5.0")]
            )
            .unwrap()
            .via,
            "address"
        );
        // An Origin alone marks a browser too (one that sends no sec-fetch-site).
        assert!(matches!(
            read(
                &plain,
                &[("host", "evil.example"), ("origin", "http://evil.example")]
            ),
            Err(Refusal::UnknownHost { .. })
        ));
        assert_eq!(
            read(&plain, &browser("127.0.0.1:8082")).unwrap().via,
            "address"
        );
        assert_eq!(
            read(&plain, &browser("localhost:8082")).unwrap().via,
            "address"
        );
        assert!(matches!(
            read(&plain, &browser("herald.internal:8082")),
            Err(Refusal::UnknownHost { .. })
        ));
        assert_eq!(
            read(&named, &browser("herald.internal:8082")).unwrap().via,
            "address"
        );
        // Not a browser: no check.
        assert_eq!(
            read(&plain, &[("host", "evil.example:8082")]).unwrap().via,
            "address"
        );
        // A key or a session: no check.
        let with_key = [
            ("host", "evil.example:8082"),
            ("sec-fetch-site", "same-origin"),
            ("x-api-key", "k"),
        ];
        assert_eq!(read(&plain, &with_key).unwrap().via, "key");
        let (id, _) = sessions.create("k", false);
        let cookie = format!("{COOKIE}_8082={id}");
        let with_session = [
            ("host", "evil.example:8082"),
            ("sec-fetch-site", "same-origin"),
            ("cookie", cookie.as_str()),
        ];
        assert_eq!(read(&plain, &with_session).unwrap().via, "session");
        // Over HTTP/2 the host is the URI's authority.
        let uri: Uri = "http://evil.example:8082/dashboard/api/config"
            .parse()
            .unwrap();
        assert!(matches!(
            access(
                &plain,
                &sessions,
                &guesses,
                ip,
                &headers(&[("sec-fetch-site", "same-origin")]),
                &uri
            ),
            Err(Refusal::UnknownHost { .. })
        ));
        // A listener without keys: any client reads by address, and the same check applies.
        let open = herald_conf::Config::parse_str(
            "t.conf",
            r#"http_listener { listen "127.0.0.1:0" { } }"#,
        )
        .unwrap()
        .listeners()
        .remove(0);
        let other = Some(IpAddr::from([192, 0, 2, 1]));
        assert!(matches!(
            access(
                &open,
                &sessions,
                &guesses,
                other,
                &headers(&browser("evil.example")),
                &path()
            ),
            Err(Refusal::UnknownHost { .. })
        ));
        assert!(
            access(
                &open,
                &sessions,
                &guesses,
                other,
                &headers(&browser("192.0.2.9")),
                &path()
            )
            .is_ok()
        );
    }

    /// Each dashboard of a host has a cookie of its own (a browser sends a host's cookies to all its ports), and a
    /// TLS listener's is `__Secure-`.
    #[test]
    fn the_cookie_name_carries_the_port() {
        let listener = |extra: &str| {
            herald_conf::Config::parse_str(
                "t.conf",
                &format!(
                    r#"http_listener {{ api_key = "k" listen "127.0.0.1:8082" {{ {extra} }} }}"#
                ),
            )
            .unwrap()
            .listeners()
            .remove(0)
        };
        let plain = listener("");
        let tls = listener(r#"tls_certificate = "/c.pem" tls_key = "/k.pem""#);
        let name = |settings: &ListenerSettings, host: Option<&'static str>, uri: &str| {
            let h = match host {
                Some(host) => headers(&[("host", host)]),
                None => headers(&[]),
            };
            cookie_name(settings, &h, &uri.parse().unwrap())
        };
        assert_eq!(
            name(&plain, Some("h:8083"), "/dashboard/"),
            "herald_dashboard_8083"
        );
        assert_eq!(
            name(&plain, Some("[::1]:9000"), "/dashboard/"),
            "herald_dashboard_9000"
        );
        assert_eq!(
            name(&plain, Some("h"), "/dashboard/"),
            "herald_dashboard_80"
        );
        assert_eq!(
            name(&plain, Some("::1"), "/dashboard/"),
            "herald_dashboard_80"
        );
        assert_eq!(name(&plain, None, "/dashboard/"), "herald_dashboard_8082");
        assert_eq!(
            name(&tls, None, "https://h:8443/dashboard/"),
            "__Secure-herald_dashboard_8443"
        );
        assert_eq!(
            name(&tls, Some("h"), "/dashboard/"),
            "__Secure-herald_dashboard_443"
        );
        // Another port's cookie is not this dashboard's session.
        let sessions = Sessions::default();
        let (id, _) = sessions.create("k", false);
        let guesses = GuessThrottle::default();
        let with = |cookie: String| {
            access(
                &plain,
                &sessions,
                &guesses,
                None,
                &headers(&[("host", "h:8083"), ("cookie", &cookie)]),
                &path(),
            )
        };
        assert_eq!(
            with(format!("herald_dashboard_8082={id}")),
            Err(Refusal::Unauthenticated)
        );
        assert_eq!(
            with(format!("{COOKIE}={id}")),
            Err(Refusal::Unauthenticated)
        );
        assert_eq!(
            with(format!("herald_dashboard_8083={id}")).unwrap().via,
            "session"
        );
    }

    const HOUR: Duration = Duration::from_secs(3600);

    /// A session ends after SESSION_IDLE without use, and SESSION_LIFETIME after its login however much it is
    /// used; its end cancels its token (its event streams end). `alive` does not count as a use.
    #[test]
    fn a_session_ends_when_idle_and_at_the_end_of_its_lifetime() {
        let sessions = Sessions::default();
        let (idle, _) = sessions.create("k", false);
        let (used, _) = sessions.create("k", false);
        let idle_ended = sessions.ended(&idle).unwrap();
        let used_ended = sessions.ended(&used).unwrap();
        // Used every 7 hours: live past SESSION_IDLE, to SESSION_LIFETIME.
        for _ in 0..3 {
            sessions.advance(7 * HOUR);
            assert!(sessions.lookup(&used).is_some());
            assert!(sessions.alive(&used));
        }
        // The other, not used (asked whether alive only): ended at its idle time.
        assert!(!sessions.alive(&idle));
        assert!(idle_ended.is_cancelled());
        assert!(sessions.lookup(&idle).is_none());
        // 21 hours in; 3 more: the lifetime is over, though the session was used 3 hours ago.
        assert!(!used_ended.is_cancelled());
        sessions.advance(3 * HOUR);
        assert!(sessions.lookup(&used).is_none());
        assert!(used_ended.is_cancelled());
        assert!(sessions.is_empty());
        // Without a stream asking, a login sweeps the ended ones.
        let (old, _) = sessions.create("k", false);
        let old_ended = sessions.ended(&old).unwrap();
        sessions.advance(SESSION_IDLE);
        sessions.create("k", false);
        assert!(old_ended.is_cancelled());
        assert_eq!(sessions.len(), 1);
        // A logout ends a session at once.
        let (id, _) = sessions.create("k", false);
        let ended = sessions.ended(&id).unwrap();
        sessions.remove(&id);
        assert!(ended.is_cancelled() && !sessions.alive(&id));
    }

    /// Logins of one key end that key's sessions used longest ago past SESSIONS_PER_KEY, never another key's: a
    /// read-only key cannot log the admin out.
    #[test]
    fn one_keys_logins_never_end_another_keys_sessions() {
        let sessions = Sessions::default();
        let (admin, _) = sessions.create("admin-key", true);
        let admin_ended = sessions.ended(&admin).unwrap();
        let mut readers = Vec::new();
        for _ in 0..SESSIONS_PER_KEY {
            sessions.advance(Duration::from_secs(1));
            let (id, _) = sessions.create("reader-key", false);
            readers.push((sessions.ended(&id).unwrap(), id));
        }
        // The first reader session is used: the second is now the one used longest ago.
        sessions.advance(Duration::from_secs(1));
        assert!(sessions.lookup(&readers[0].1).is_some());
        sessions.create("reader-key", false);
        assert!(!readers[0].0.is_cancelled() && readers[1].0.is_cancelled());
        assert!(sessions.alive(&readers[0].1) && !sessions.alive(&readers[1].1));
        for _ in 0..1000 {
            sessions.create("reader-key", false);
        }
        assert!(sessions.alive(&admin) && !admin_ended.is_cancelled());
        assert_eq!(sessions.len(), 1 + SESSIONS_PER_KEY);
        assert!(readers.iter().all(|(ended, _)| ended.is_cancelled()));
        // The admin's own logins end its own oldest.
        for _ in 0..SESSIONS_PER_KEY {
            sessions.create("admin-key", true);
        }
        assert!(admin_ended.is_cancelled());
        assert_eq!(sessions.len(), 2 * SESSIONS_PER_KEY);
    }
}
