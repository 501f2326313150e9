//! Who may use the REST listener: the `always_allow` / `always_deny` CIDR lists (403) and the listener's API
//! keys, sent as `authorization: Bearer KEY` or `x-api-key: KEY` (401 with `www-authenticate`). Both follow the most specific
//! `peer` stanza that contains the client's address, as the ESMTP listener does. An address that sent
//! [`crate::access::MAX_GUESSES`] wrong keys within [`crate::access::GUESS_WINDOW`] is refused (429 with `retry-after`, whatever
//! key it sends) until the window has passed since its last wrong one. On Momentum's injector paths the refusals
//! also carry `"status": "failure"` (see [`inject::error_for_path`]).

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::RestState;
use super::error::ApiError;
use super::inject;
use crate::access::same_secret;

/// Paths answered without an API key (still subject to the address lists), for load-balancer probes.
pub const KEYLESS_PATHS: &[&str] = &["/healthz"];

/// The alternative to `authorization: Bearer KEY`.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Middleware: the address lists, then the API key. Both refusals take the shape of the path's answers, so a
/// Momentum client of `/v1.0/inject` finds its `"status": "failure"` in them too.
pub async fn guard(State(state): State<RestState>, request: Request, next: Next) -> Response {
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
    let keys = match ip {
        Some(ip) => state.settings.api_keys_for(ip),
        None => &state.settings.api_keys,
    };
    // The dashboard checks its own way (session cookie, key or address; see `dashboard::auth`).
    let own_checks = path == "/dashboard" || path.starts_with("/dashboard/");
    if !keys.is_empty() && !KEYLESS_PATHS.contains(&path) && !own_checks {
        let headers = request.headers();
        let presented = match (
            headers.get(header::AUTHORIZATION),
            headers.get(API_KEY_HEADER),
        ) {
            (Some(v), _) => Some(bearer_token(v.as_bytes())),
            (None, Some(v)) => Some(Some(v.as_bytes().trim_ascii()).filter(|k| !k.is_empty())),
            (None, None) => None,
        };
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
    }
    next.run(request).await
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
}
