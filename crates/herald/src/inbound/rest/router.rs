//! The routes of the REST listener and the answers for everything else: a JSON `404` for unknown paths and a
//! JSON `405` (with `allow`) for a known path with the wrong method. On Momentum's injector paths these answers,
//! and the `403` of injection turned off, carry `"status": "failure"` as the injector's own do
//! ([`inject::error_for_path`]).

use axum::Router;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use herald_conf::HttpServices;

use super::error::ApiError;
use super::{RestState, auth, inject, push};

/// Every (method, path) the listener answers; `docs/openapi.yaml` documents exactly these (HEAD is implied by
/// GET).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/v1.0/inject"),
    ("POST", "/v1.0/inject"),
    ("GET", "/v1.0/inject/"),
    ("POST", "/v1.0/inject/"),
    ("POST", "/api/v1/push"),
];

/// The REST application for one listener.
pub fn router(state: RestState) -> Router {
    router_with(state, Router::new())
}

/// The REST application with `extra` routes merged in (metrics, invalid tokens, …): they get the same address
/// lists, API keys and JSON 404/405 answers. `extra` must not set a fallback of its own.
pub fn router_with(state: RestState, extra: Router) -> Router {
    let services = state.settings.http_services;
    let mut router = Router::new().route("/healthz", get(healthz));
    if state.injection_off.is_some() {
        if services.inject {
            router = router
                .route("/v1.0/inject", get(injection_off).post(injection_off))
                .route("/v1.0/inject/", get(injection_off).post(injection_off));
        }
        if services.push {
            router = router.route("/api/v1/push", post(injection_off));
        }
    } else if services.inject {
        router = router
            .route("/v1.0/inject", get(inject::check).post(inject::inject))
            .route("/v1.0/inject/", get(inject::check).post(inject::inject));
    }
    if services.push && state.injection_off.is_none() {
        router = router.route("/api/v1/push", post(push::push));
    }
    router
        .with_state(state.clone())
        .merge(extra)
        .fallback(move |method: Method, uri: Uri| not_found(services, method, uri))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::Extension(super::server::MaxRequestSize(
            state.settings.max_request_size,
        )))
        .layer(middleware::from_fn_with_state(state, auth::guard))
        .layer(middleware::map_response(super::json_errors::json_errors))
}

/// Every injection route while REST injection is turned off.
async fn injection_off(State(state): State<RestState>, uri: Uri) -> Response {
    let reason = state
        .injection_off
        .as_deref()
        .unwrap_or("REST injection is off");
    let error = ApiError::new(StatusCode::FORBIDDEN, reason.to_owned());
    inject::error_for_path(uri.path(), error).into_response()
}

async fn healthz() -> &'static str {
    "ok"
}

/// A path no route of this listener answers: when the path belongs to a service the listener does not serve, the
/// text names that service; else (the service is served, the path is none of its routes, or the path is no
/// service's) it is no such endpoint.
async fn not_found(services: HttpServices, method: Method, uri: Uri) -> Response {
    let path = uri.path();
    let text = match service_of(path) {
        Some(service) if !serves(services, service) => format!(
            "{method} {path}: this listener does not serve {service:?} (see http_services in its listen stanza)"
        ),
        _ => format!("no such endpoint: {method} {path}"),
    };
    inject::error_for_path(path, ApiError::new(StatusCode::NOT_FOUND, text)).into_response()
}

/// Whether `services` includes the `http_services` word `service` (one [`service_of`] gives).
fn serves(services: HttpServices, service: &str) -> bool {
    match service {
        "inject" => services.inject,
        "push" => services.push,
        "tokens" => services.tokens,
        "metrics" => services.metrics,
        "dashboard" => services.dashboard,
        _ => false,
    }
}

/// The `http_services` word of a path herald can serve, for a listener that does not.
fn service_of(path: &str) -> Option<&'static str> {
    match path {
        "/v1.0/inject" | "/v1.0/inject/" => Some("inject"),
        "/api/v1/push" | "/api/v1/channels" | "/api/v1/broadcast" => Some("push"),
        p if p.starts_with("/api/v1/channels/") => Some("push"),
        "/api/v1/tokens/invalid" => Some("tokens"),
        "/metrics" => Some("metrics"),
        p if p == "/dashboard" || p.starts_with("/dashboard/") => Some("dashboard"),
        _ => None,
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let path = uri.path();
    let error = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{path} does not accept {method}"),
    );
    inject::error_for_path(path, error).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route a listener serves only with `push` in its `http_services` is named by its service when the
    /// listener lacks it (crate::ops::ROUTES: channels and broadcast are merged on listeners that serve push).
    #[test]
    fn the_push_service_routes_name_their_service() {
        for path in [
            "/api/v1/push",
            "/api/v1/channels",
            "/api/v1/channels/",
            "/api/v1/channels/dHN0LXNyY2gtY2hubA==",
            "/api/v1/broadcast",
        ] {
            assert_eq!(service_of(path), Some("push"), "{path}");
        }
        assert_eq!(service_of("/api/v1/broadcasts"), None);
        assert_eq!(service_of("/v1.0/inject"), Some("inject"));
    }

    /// Every service word a path names is one `serves` knows: a listener serving everything serves each of them,
    /// one serving nothing none.
    #[test]
    fn every_service_of_a_path_is_known_to_serves() {
        let all = HttpServices {
            inject: true,
            push: true,
            tokens: true,
            metrics: true,
            dashboard: true,
        };
        let none = HttpServices {
            inject: false,
            push: false,
            tokens: false,
            metrics: false,
            dashboard: false,
        };
        for path in [
            "/v1.0/inject",
            "/api/v1/push",
            "/api/v1/tokens/invalid",
            "/metrics",
            "/dashboard/x",
        ] {
            let service = service_of(path).unwrap_or_else(|| panic!("{path}"));
            assert!(serves(all, service), "{service}");
            assert!(!serves(none, service), "{service}");
        }
    }
}
