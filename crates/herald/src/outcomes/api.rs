//! The status routes: `GET /api/v1/notifications/{id}` and the batch form `POST /api/v1/notifications/query`
//! (`{"ids": [...]}`, at most [`MAX_BATCH`]). They answer from the [`StatusBook`]; an id herald does not know is a
//! `404` whose `error` says whether it is unknown or expired (finished longer ago than `outcome_retention`).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use super::book::{Found, StatusBook};
use super::parse_id;

/// Most ids one batch lookup takes.
pub const MAX_BATCH: usize = 1000;

/// Every (method, path) [`routes`] answers, as `docs/openapi.yaml` documents them.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/notifications/{id}"),
    ("POST", "/api/v1/notifications/query"),
];

/// The status routes over `book`.
pub fn routes(book: Arc<StatusBook>) -> Router {
    Router::new()
        .route("/api/v1/notifications/query", post(query))
        .route("/api/v1/notifications/{*id}", get(one))
        .with_state(book)
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// One id's answer: (HTTP status, body).
fn answer(book: &StatusBook, id: &str) -> (StatusCode, serde_json::Value) {
    let Some(key) = parse_id(id) else {
        return (
            StatusCode::BAD_REQUEST,
            json!({"id": id, "error": format!("{id:?} is not a notification id (they look like 01/00-12345-0000002A)")}),
        );
    };
    match book.lookup(&key) {
        Ok(Found::Status(s)) => (
            StatusCode::OK,
            serde_json::to_value(&*s).unwrap_or_else(|_| json!({})),
        ),
        Ok(Found::Expired) => (
            StatusCode::NOT_FOUND,
            json!({"id": id, "found": "expired", "error": format!(
                "{id}: expired: its outcome was kept for outcome_retention ({} s) and is gone", book.retention().as_secs())}),
        ),
        Ok(Found::Unknown) => (
            StatusCode::NOT_FOUND,
            json!({"id": id, "found": "unknown", "error": format!("{id}: unknown: herald has no notification with this id")}),
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"id": id, "error": e.to_string()}),
        ),
    }
}

async fn one(State(book): State<Arc<StatusBook>>, Path(id): Path<String>) -> Response {
    let id = id.trim_start_matches('/');
    let (status, body) = answer(&book, id);
    json(status, body)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Query {
    ids: Vec<String>,
}

/// `{"notifications": [status, …], "not_found": [{"id", "found", "error"}, …]}`, in request order.
async fn query(State(book): State<Arc<StatusBook>>, body: Bytes) -> Response {
    let q: Query = match serde_json::from_slice(&body) {
        Ok(q) => q,
        Err(e) => {
            return json(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("invalid request: {e}; send {{\"ids\": [\"01/00-12345-0000002A\", …]}}")}),
            );
        }
    };
    if q.ids.len() > MAX_BATCH {
        return json(
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"error": format!("ids: {} ids; at most {MAX_BATCH} per request", q.ids.len())}),
        );
    }
    let mut found = Vec::new();
    let mut not_found = Vec::new();
    for id in &q.ids {
        match answer(&book, id) {
            (StatusCode::OK, v) => found.push(v),
            (_, v) => not_found.push(v),
        }
    }
    json(
        StatusCode::OK,
        json!({"notifications": found, "not_found": not_found}),
    )
}
