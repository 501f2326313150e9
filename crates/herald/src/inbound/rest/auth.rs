//! Who may use the REST listener: the `always_allow` / `always_deny` CIDR lists (403) and the listener's API
//! keys, sent as `authorization: Bearer KEY` or `x-api-key: KEY` (401 with `www-authenticate`). Both follow the most specific
//! `peer` stanza that contains the client's address, as the ESMTP listener does. On Momentum's injector paths both
//! refusals also carry `"status": "failure"` (see [`inject::error_for_path`]).

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::RestState;
use super::error::ApiError;
use super::inject;

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
        let refusal = match presented {
            None => Some("missing API key: send the header \"authorization: Bearer KEY\""),
            Some(None) => {
                Some("the authorization header is not \"Bearer KEY\" (or x-api-key is empty)")
            }
            Some(Some(key)) if !keys.iter().any(|k| same_key(k.as_bytes(), key)) => {
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

/// Compares keys in time that does not depend on where they differ.
fn same_key(expected: &[u8], presented: &[u8]) -> bool {
    if expected.len() != presented.len() {
        return false;
    }
    expected
        .iter()
        .zip(presented)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
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

    #[test]
    fn keys_compare_exactly() {
        assert!(same_key(b"secret", b"secret"));
        assert!(!same_key(b"secret", b"secreT"));
        assert!(!same_key(b"secret", b"secrets"));
    }
}
