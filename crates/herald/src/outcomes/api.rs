//! The status routes: `GET /api/v1/notifications/{id}` and the batch form `POST /api/v1/notifications/query`
//! (`{"ids": [...]}`, at most [`MAX_BATCH`]). They answer from the [`StatusBook`]; on the JetStream spool, the ids
//! the book does not know are asked of the other nodes, once per request ([`super::peers`]). An id herald does not
//! know is a `404` whose `error` says whether it is unknown or expired (finished longer ago than
//! `outcome_retention`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use herald_spool::{OutcomeKey, PeerLookup};
use serde::Deserialize;
use serde_json::json;

use super::book::{Found, Status, StatusBook};
use super::{parse_id, peers};
use crate::inbound::rest::server::read_request_body;

/// Most ids one batch lookup takes.
pub const MAX_BATCH: usize = 1000;

/// Every (method, path) [`routes`] answers, as `docs/openapi.yaml` documents them.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/notifications/{id}"),
    ("POST", "/api/v1/notifications/query"),
];

/// What the status routes answer from.
#[derive(Clone)]
pub struct StatusState {
    /// This node's book.
    pub book: Arc<StatusBook>,
    /// The other nodes of the JetStream spool, asked for the ids the book does not know; `None` on the embedded
    /// spool, where the book knows every notification of this herald.
    pub peers: Option<Arc<PeerLookup>>,
}

/// The status routes over `state`.
pub fn routes(state: StatusState) -> Router {
    Router::new()
        .route("/api/v1/notifications/query", post(query))
        .route("/api/v1/notifications/{*id}", get(one))
        .with_state(state)
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// One id's answer from this node's book.
struct Answer {
    status: StatusCode,
    body: serde_json::Value,
    /// The id's key when the book does not know it (not `expired`: that one was known here): another node may.
    unknown: Option<OutcomeKey>,
}

fn status_body(s: &Status) -> serde_json::Value {
    serde_json::to_value(s).unwrap_or_else(|_| json!({}))
}

fn answer(book: &StatusBook, id: &str) -> Answer {
    let reply = |status, body| Answer {
        status,
        body,
        unknown: None,
    };
    let Some(key) = parse_id(id) else {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"id": id, "error": format!("{id:?} is not a notification id (they look like 01/00-12345-0000002A)")}),
        );
    };
    match book.lookup(&key) {
        Ok(Found::Status(s)) => reply(StatusCode::OK, status_body(&s)),
        Ok(Found::Expired) => reply(
            StatusCode::NOT_FOUND,
            json!({"id": id, "found": "expired", "error": format!(
                "{id}: expired: its outcome was kept for outcome_retention ({} s) and is gone", book.retention().as_secs())}),
        ),
        Ok(Found::Unknown) => Answer {
            unknown: Some(key),
            ..reply(
                StatusCode::NOT_FOUND,
                json!({"id": id, "found": "unknown", "error": format!("{id}: unknown: herald has no notification with this id")}),
            )
        },
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"id": id, "error": e.to_string()}),
        ),
    }
}

/// What the other nodes know of `unknown`, ids this node's book does not know (one question for all of them).
async fn ask_peers(state: &StatusState, unknown: &[String]) -> HashMap<OutcomeKey, Status> {
    match &state.peers {
        Some(peers) if !unknown.is_empty() => peers::ask(peers, unknown).await,
        _ => HashMap::new(),
    }
}

async fn one(State(state): State<StatusState>, Path(id): Path<String>) -> Response {
    let id = id.trim_start_matches('/');
    let local = answer(&state.book, id);
    if let Some(key) = local.unknown
        && let Some(s) = ask_peers(&state, &[id.to_owned()]).await.get(&key)
    {
        return json(StatusCode::OK, status_body(s));
    }
    json(local.status, local.body)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Query {
    ids: Vec<String>,
}

/// `{"notifications": [status, …], "not_found": [{"id", "found", "error"}, …]}`, in request order.
async fn query(State(state): State<StatusState>, request: Request) -> Response {
    // Within the listener's max_request_size (413) and body_timeout (408), as the injection routes.
    let body = match read_request_body(request).await {
        Ok((_, body)) => body,
        Err(e) => return e.into_response(),
    };
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
    let answers: Vec<Answer> = q.ids.iter().map(|id| answer(&state.book, id)).collect();
    let unknown: Vec<String> = q
        .ids
        .iter()
        .zip(&answers)
        .filter(|(_, a)| a.unknown.is_some())
        .map(|(id, _)| id.clone())
        .collect();
    let from_peers = ask_peers(&state, &unknown).await;
    let mut found = Vec::new();
    let mut not_found = Vec::new();
    for a in answers {
        match a.unknown.and_then(|key| from_peers.get(&key)) {
            Some(s) => found.push(status_body(s)),
            None if a.status == StatusCode::OK => found.push(a.body),
            None => not_found.push(a.body),
        }
    }
    json(
        StatusCode::OK,
        json!({"notifications": found, "not_found": not_found}),
    )
}
