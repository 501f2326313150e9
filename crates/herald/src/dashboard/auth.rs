//! Who may use the dashboard and what they may do. A browser logs in with one of the listener's API keys
//! (`POST /dashboard/api/login`) and gets a session cookie (`HttpOnly`, `SameSite=Strict`) plus a CSRF token; a
//! script may send the key itself (`authorization: Bearer KEY` or `x-api-key`); a client in the listener's
//! `always_allow` list (or any client of a listener without keys) reads without one. Only a key listed in
//! `dashboard_admin_keys` may act. Every state-changing call must come from the dashboard's own origin (`Origin`
//! and `Sec-Fetch-Site` are checked) and, from a browser session, carry the session's CSRF token.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Uri, header};
use herald_conf::ListenerSettings;

use crate::access::{GuessThrottle, same_secret};

/// The session cookie's name.
pub const COOKIE: &str = "herald_dashboard";
/// The header a browser session sends its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lives without use.
pub const SESSION_IDLE: Duration = Duration::from_secs(8 * 3600);
/// Sessions kept at most (the oldest are dropped past it).
const MAX_SESSIONS: usize = 10_000;

/// What a request may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub admin: bool,
    /// `session`, `key` or `address`.
    pub via: &'static str,
    /// The session's CSRF token, for a cookie session.
    pub csrf: Option<String>,
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
}

#[derive(Debug, Clone)]
struct Session {
    admin: bool,
    csrf: String,
    last_used: Instant,
}

/// The sessions of one listener.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

fn random_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

impl Sessions {
    /// A new session; returns (session id, CSRF token).
    pub fn create(&self, admin: bool) -> (String, String) {
        let id = random_token();
        let csrf = random_token();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, s| now.duration_since(s.last_used) < SESSION_IDLE);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            id.clone(),
            Session {
                admin,
                csrf: csrf.clone(),
                last_used: now,
            },
        );
        (id, csrf)
    }

    fn lookup(&self, id: &str) -> Option<Session> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let s = map.get_mut(id)?;
        if s.last_used.elapsed() >= SESSION_IDLE {
            map.remove(id);
            return None;
        }
        s.last_used = Instant::now();
        Some(s.clone())
    }

    pub fn remove(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

/// The session id in the request's cookies.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

/// The API key a request carries in `authorization: Bearer` or `x-api-key`.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, key) = v.split_once(' ')?;
        return (scheme.eq_ignore_ascii_case("bearer") && !key.trim().is_empty())
            .then(|| key.trim());
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

/// Whether `key` is accepted from `ip`, and with the admin right. `None` if it is not accepted.
pub fn key_rights(settings: &ListenerSettings, ip: Option<IpAddr>, key: &str) -> Option<bool> {
    let (keys, admin_keys) = match ip {
        Some(ip) => (settings.api_keys_for(ip), settings.admin_keys_for(ip)),
        None => (settings.api_keys.as_slice(), settings.admin_keys.as_slice()),
    };
    let admin = admin_keys
        .iter()
        .any(|k| same_secret(k.as_bytes(), key.as_bytes()));
    let known = admin
        || keys
            .iter()
            .any(|k| same_secret(k.as_bytes(), key.as_bytes()));
    known.then_some(admin)
}

/// What the request may do, from its session cookie, its key, or its address. A wrong key counts in `guesses`
/// (the listener's, shared with its REST API), and an address locked out there is refused any key.
pub fn access(
    settings: &ListenerSettings,
    sessions: &Sessions,
    guesses: &GuessThrottle,
    ip: Option<IpAddr>,
    headers: &HeaderMap,
) -> Result<Access, Refusal> {
    if let Some(s) = session_cookie(headers).and_then(|id| sessions.lookup(id)) {
        return Ok(Access {
            admin: s.admin,
            via: "session",
            csrf: Some(s.csrf),
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
        return Ok(Access {
            admin: false,
            via: "address",
            csrf: None,
        });
    }
    Err(Refusal::Unauthenticated)
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
        };
        assert!(may_act_at(&admin, &browser, &uri).is_ok());
        assert_eq!(may_act_at(&admin, &evil, &uri), Err(Refusal::CrossSite));
    }

    #[test]
    fn sessions_need_their_csrf_token_and_the_admin_right() {
        let guesses = GuessThrottle::default();
        let sessions = Sessions::default();
        let (id, csrf) = sessions.create(true);
        let cookie = format!("a=b; {COOKIE}={id}");
        let settings = herald_conf::Config::parse_str(
            "t.conf",
            r#"http_listener { listen "127.0.0.1:0" { api_key = "k" } }"#,
        )
        .unwrap()
        .listeners()
        .remove(0);
        let a = access(
            &settings,
            &sessions,
            &guesses,
            None,
            &headers(&[("cookie", &cookie)]),
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
        )
        .unwrap();
        assert_eq!(may_act(&reader, &[]), Err(Refusal::NotAdmin));
        assert_eq!(
            access(
                &settings,
                &sessions,
                &guesses,
                None,
                &headers(&[("x-api-key", "no")])
            ),
            Err(Refusal::Unauthenticated)
        );
        assert_eq!(
            access(&settings, &sessions, &guesses, None, &headers(&[])),
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
            );
        }
        assert!(matches!(
            access(
                &settings,
                &sessions,
                &guesses,
                None,
                &headers(&[("x-api-key", "k")])
            ),
            Err(Refusal::TooManyGuesses { .. })
        ));
    }
}
