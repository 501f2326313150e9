//! Who may use the REST listener: the `always_allow` / `always_deny` CIDR lists (403; the server already closes a
//! refused address's connections at connect when its limits carry the lists, see [`super::server`]) and the
//! listener's API keys, sent as `authorization: Bearer KEY` or `x-api-key: KEY` (401 with `www-authenticate`; see
//! [`presented_key`] when both are sent). Both follow the most specific `peer` stanza that contains the client's
//! address, as the ESMTP listener does. An address that sent
//! [`crate::access::MAX_GUESSES`] wrong keys within [`crate::access::GUESS_WINDOW`] is refused (429 with `retry-after`, whatever
//! key it sends) until the window has passed since its last wrong one. On Momentum's injector paths the refusals
//! also carry `"status": "failure"` (see [`inject::error_for_path`]).
//!
//! Every route but the dashboard's (which checks its own way) is for programs, not web pages: a request a browser
//! sent on behalf of a page is refused with `403` naming the header that gave it away (see [`browser_refusal`]),
//! so that a page on another site cannot make the browser of someone inside `always_allow` push notifications
//! through a listener without keys, nor read its answers after rebinding its own name to herald's address.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::RestState;
use super::error::ApiError;
use super::inject;
use crate::access::same_secret;
use crate::dashboard::auth::request_host;

/// Paths answered without an API key (still subject to the address lists), for load-balancer probes.
pub const KEYLESS_PATHS: &[&str] = &["/healthz"];

/// The alternative to `authorization: Bearer KEY`.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Middleware: the address lists, then the browser check ([`browser_refusal`], not on the dashboard's routes), then
/// the API key. The refusals take the shape of the path's answers, so a
/// Momentum client of `/v1.0/inject` finds its `"status": "failure"` in them too.
pub async fn guard(State(state): State<RestState>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    // Without a peer address (an embedding that did not record it) the lists cannot apply; the keys still do.
    let ip = super::peer_ip(request.extensions());
    if let Some(ip) = ip.filter(|&ip| !state.settings.permits(ip)) {
        let error = ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "client address {ip} is not allowed by this listener's always_deny / always_allow lists"
            ),
        );
        return inject::error_for_path(path, error).into_response();
    }
    // The dashboard checks its own way (session cookie, key or address; see `dashboard::auth`).
    let own_checks = path == "/dashboard" || path.starts_with("/dashboard/");
    if !own_checks && let Some(reason) = browser_refusal(request.headers(), request.uri()) {
        tracing::info!(
            client = ?ip,
            "REST listener {}: refused {path}: {reason}",
            state.settings.address
        );
        let error = ApiError::new(StatusCode::FORBIDDEN, reason);
        return inject::error_for_path(path, error).into_response();
    }
    let keys = match ip {
        Some(ip) => state.settings.api_keys_for(ip),
        None => &state.settings.api_keys,
    };
    if !keys.is_empty() && !KEYLESS_PATHS.contains(&path) && !own_checks {
        let presented = presented_key(request.headers());
        let limit = state.settings.auth_failure_limit_for(ip) as usize;
        if presented.is_some()
            && let Some(wait) = state.guesses.locked(ip, limit)
        {
            let seconds = wait.as_secs().max(1);
            let error = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many wrong API keys from {}: try again in {seconds} s",
                    ip.map_or_else(|| "this client".to_owned(), |ip| ip.to_string())
                ),
            );
            let mut response = inject::error_for_path(path, error).into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
            return response;
        }
        let refusal = match presented {
            None => Some("missing API key: send the header \"authorization: Bearer KEY\""),
            Some(None) => {
                Some("the authorization header is not \"Bearer KEY\" (or x-api-key is empty)")
            }
            Some(Some(key)) if !keys.iter().any(|k| same_secret(k.as_bytes(), key)) => {
                let failures = state.guesses.failed(ip, limit);
                tracing::warn!(
                    client = ?ip,
                    failures,
                    "REST listener {}: a wrong API key",
                    state.settings.address
                );
                Some("the API key is not accepted by this listener")
            }
            Some(Some(_)) => None,
        };
        if let Some(message) = refusal {
            let mut error = ApiError::new(StatusCode::UNAUTHORIZED, message);
            error.challenge = true;
            return inject::error_for_path(path, error).into_response();
        }
        if let Some(Some(key)) = presented {
            let caller = ApiCaller::new(key);
            request.extensions_mut().insert(caller);
        }
    }
    next.run(request).await
}

/// The API key a request was accepted with (a request extension): requests under different keys are different
/// callers, whose `Idempotency-Key`s must not meet (see [`super::idempotency`]). Its `Debug` does not show the key.
#[derive(Clone)]
pub struct ApiCaller(Box<[u8]>);

impl ApiCaller {
    /// The caller that presented `key` (an accepted one).
    pub fn new(key: &[u8]) -> Self {
        ApiCaller(key.into())
    }

    /// A short digest naming the key without revealing it: hex of the first 16 bytes of its SHA-256.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        Sha256::digest(&self.0)[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl std::fmt::Debug for ApiCaller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiCaller({})", self.fingerprint())
    }
}

/// Why a request to a route for programs is refused as one a web page made a browser send, if it is:
///
/// - `sec-fetch-site` other than `none`: `cross-site` and `same-site` are another site's page; `same-origin` is a
///   page at this very host and port, and herald serves no page that calls these routes, so it is a page reached
///   under a name rebound to herald's address (DNS rebinding), which would read the answers. `none` is a visit the
///   user made directly (address bar, bookmark).
/// - an `origin` whose host is not the request's (see [`request_host`]), for browsers without `sec-fetch-site`.
///
/// API clients send neither header, and pass.
pub fn browser_refusal(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    if let Some(site) = headers.get(SEC_FETCH_SITE) {
        let site = String::from_utf8_lossy(site.as_bytes());
        if site != "none" {
            let from = match site.as_ref() {
                "cross-site" | "same-site" => "a page of another site".to_owned(),
                "same-origin" => format!(
                    "a web page at {:?} (a name rebound to this listener's address?)",
                    request_host(headers, uri).unwrap_or("")
                ),
                _ => "a web page".to_owned(),
            };
            return Some(format!(
                "browser request refused: sec-fetch-site: {site} says {from} sent it; this route is for API \
                 clients, which send no sec-fetch-site"
            ));
        }
    }
    let origin = headers.get(header::ORIGIN)?;
    let origin = String::from_utf8_lossy(origin.as_bytes());
    let host = request_host(headers, uri).unwrap_or("");
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    if host.is_empty() || !origin_host.eq_ignore_ascii_case(host) {
        return Some(format!(
            "cross-origin request refused: origin {origin:?} is not this listener's host {host:?}; this route is \
             for API clients, which send no origin"
        ));
    }
    None
}

/// The header of the Fetch Metadata a browser sends with each request: whose page caused it.
const SEC_FETCH_SITE: &str = "sec-fetch-site";

/// The API key a request presents: `Some(None)` when it sent one in a shape that is not a key, `None` when it sent
/// none. `authorization: Bearer KEY` is taken first (also over a different `x-api-key`); an `authorization` of
/// another scheme (a proxy's `Basic` credentials, say) leaves the key to `x-api-key`, and is a malformed key only
/// without one.
fn presented_key(headers: &HeaderMap) -> Option<Option<&[u8]>> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .map(|v| bearer_token(v.as_bytes()));
    match (bearer, headers.get(API_KEY_HEADER)) {
        (Some(Some(key)), _) => Some(Some(key)),
        (_, Some(v)) => Some(Some(v.as_bytes().trim_ascii()).filter(|k| !k.is_empty())),
        (bearer, None) => bearer,
    }
}

/// The credentials of an `authorization: Bearer …` value (scheme case-insensitive), if it is one.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    let key = rest.trim_ascii();
    (!key.is_empty()).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_needs_a_key() {
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"BEARER abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearerabc"), None);
        assert_eq!(bearer_token(b"short"), None);
    }

    /// A Bearer token is the key, whatever x-api-key says; any other authorization (a proxy's Basic credentials)
    /// leaves the key to x-api-key.
    #[test]
    fn the_key_is_a_bearer_token_else_x_api_key() {
        use axum::http::HeaderValue;
        let presented = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, HeaderValue::from_static(v));
            }
            presented_key(&h).map(|k| k.map(<[u8]>::to_vec))
        };
        let key = |k: &str| Some(Some(k.as_bytes().to_vec()));
        assert_eq!(presented(&[]), None);
        assert_eq!(presented(&[("authorization", "Bearer a")]), key("a"));
        assert_eq!(presented(&[("x-api-key", " b ")]), key("b"));
        assert_eq!(
            presented(&[("authorization", "Bearer a"), ("x-api-key", "b")]),
            key("a")
        );
        assert_eq!(
            presented(&[("authorization", "Basic dXNlcjpwdw=="), ("x-api-key", "b")]),
            key("b")
        );
        assert_eq!(
            presented(&[("authorization", "Basic dXNlcjpwdw==")]),
            Some(None)
        );
        assert_eq!(presented(&[("authorization", "Bearer ")]), Some(None));
        assert_eq!(
            presented(&[("authorization", "Basic dXNlcjpwdw=="), ("x-api-key", "")]),
            Some(None)
        );
    }

    #[test]
    fn requests_browsers_send_for_pages_are_refused() {
        use axum::http::HeaderValue;
        let check = |pairs: &[(&'static str, &str)], uri: &str| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, HeaderValue::from_str(v).unwrap());
            }
            browser_refusal(&h, &uri.parse().unwrap())
        };
        let path = "/api/v1/push";
        // API clients, and a direct visit.
        assert_eq!(check(&[("host", "h:1")], path), None);
        assert_eq!(
            check(&[("host", "h:1"), ("sec-fetch-site", "none")], path),
            None
        );
        assert_eq!(
            check(&[("host", "h:1"), ("origin", "http://h:1")], path),
            None
        );
        // Over HTTP/2 the host is the URI's authority.
        assert_eq!(
            check(&[("origin", "https://h:1")], "https://h:1/api/v1/push"),
            None
        );
        let refused = |pairs: &[(&'static str, &str)], says: &str| {
            let why = check(pairs, path).expect("refused");
            assert!(why.contains(says), "{why}");
        };
        refused(
            &[("host", "h:1"), ("sec-fetch-site", "cross-site")],
            "sec-fetch-site: cross-site says a page of another site",
        );
        refused(
            &[("host", "h:1"), ("sec-fetch-site", "same-site")],
            "sec-fetch-site: same-site",
        );
        refused(
            &[("host", "evil:1"), ("sec-fetch-site", "same-origin")],
            "a web page at \"evil:1\"",
        );
        refused(
            &[("host", "h:1"), ("origin", "https://evil.example")],
            "origin \"https://evil.example\" is not this listener's host \"h:1\"",
        );
        refused(&[("host", "h:1"), ("origin", "null")], "origin \"null\"");
        refused(&[("origin", "http://h:1")], "host \"\"");
    }
}
