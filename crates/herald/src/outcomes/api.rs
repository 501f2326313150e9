//! The status routes: `GET /api/v1/notifications/{id}` and the batch form `POST /api/v1/notifications/query`
//! (`{"ids": [...]}`, at most [`MAX_BATCH`]). They answer from the [`StatusBook`]; on the JetStream spool, the ids
//! the book holds no state for (unknown or expired to it) are asked of the other nodes, once per request
//! ([`super::peers`]). An id herald does not know is a `404` whose `found` says whether it is unknown or expired
//! (finished longer ago than `outcome_retention`). Unknown is not final: a notification accepted but held by no
//! book yet (in the embedded spool while it is restored after a start, in the JetStream stream where no node
//! remembers it) is unknown until a node queues it, and its `error` says so. What a node put in the stream
//! ([`super::in_stream`]) is `queued` until a node pulls it, unless a node that pulled it says more.
//!
//! An id this node's book calls expired is asked too: the book says expired for an id not stored and at or below
//! the highest number pruned from its run, but on the JetStream spool any node stores outcomes of another node's
//! run, so that mark can pass an id this node never held and another node still holds (queued, retried, or
//! finished later). It is answered expired only when no other node holds it. An id unknown here is answered expired
//! when no node holds it and another node's book takes it for expired (that node delivered it and pruned its
//! outcome).
//!
//! A broadcast's id (the UUID `POST /api/v1/broadcast` answered) is looked up the same way, and answered with its
//! state ([`super::book::BroadcastStatus`], `"kind": "broadcast"`) from the node that accepted it: other nodes are
//! not asked. One no broadcast has here is `404` `unknown` (never accepted here, or finished longer than
//! `outcome_retention` ago: the two are not told apart for broadcasts).

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use herald_spool::{OutcomeKey, PeerLookup};
use serde::Deserialize;
use serde_json::json;

use super::book::{Found, LookupError, Status, StatusBook, broadcast_id};
use super::parse_id;
use super::peers::{self, PeerAnswers};
use crate::inbound::rest::error::{NOT_AN_OBJECT, json_but_not_an_object, without_bom};
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
    /// The other nodes of the JetStream spool, asked for the ids the book holds no state for (unknown or expired
    /// to it); `None` on the embedded spool, where the book knows every notification of this herald.
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
    /// The id's key when the book holds no state for it (unknown or expired here), or only what it remembers
    /// having put in the stream: another node may. On the JetStream spool `expired` is no proof: the book's prune
    /// mark for a run can pass ids other nodes hold.
    ask: Option<OutcomeKey>,
    /// What this node remembers having put in the stream ([`Found::InStream`]): the answer unless another node
    /// says more ([`peers::settle`]).
    in_stream: Option<Box<Status>>,
    /// For an id unknown here, the `404` `expired` answer, given when no node holds a state for it and another
    /// node's book takes it for expired (that node delivered it, and pruned its outcome).
    expired_elsewhere: Option<serde_json::Value>,
}

impl Answer {
    /// The answer once the other nodes said what they know (`from_peers`).
    fn settled(self, from_peers: &PeerAnswers) -> (StatusCode, serde_json::Value) {
        let peer = self.ask.and_then(|key| from_peers.found.get(&key));
        match (self.in_stream, peer) {
            (Some(local), peer) => (StatusCode::OK, status_body(&peers::settle(*local, peer))),
            (None, Some(s)) => (StatusCode::OK, status_body(s)),
            (None, None) => match self.expired_elsewhere {
                Some(body)
                    if self
                        .ask
                        .is_some_and(|key| from_peers.expired.contains(&key)) =>
                {
                    (StatusCode::NOT_FOUND, body)
                }
                _ => (self.status, self.body),
            },
        }
    }
}

fn status_body(s: &Status) -> serde_json::Value {
    serde_json::to_value(s).unwrap_or_else(|_| json!({}))
}

/// An answer of this node's alone (no other node is asked).
fn reply(status: StatusCode, body: serde_json::Value) -> Answer {
    Answer {
        status,
        body,
        ask: None,
        in_stream: None,
        expired_elsewhere: None,
    }
}

/// The `404` body of an id whose outcome is gone, past `outcome_retention`.
fn expired_body(book: &StatusBook, id: &str) -> serde_json::Value {
    json!({
        "id": id,
        "found": "expired",
        "error": format!(
            "{id}: expired: its outcome was kept for outcome_retention ({} s) and is gone",
            book.retention().as_secs()
        ),
    })
}

/// The answer for a store that could not be read: the client's to ask again when it cannot be read for now (being
/// reopened after a failed write, a full disk); an entry that does not decode will not read better later.
fn unreadable(id: &str, e: &LookupError) -> Answer {
    let status = match e {
        LookupError::Store(s) if s.is_temporary() => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    reply(status, json!({"id": id, "error": e.to_string()}))
}

/// The answer for broadcast `id` (its value `value`), from this node alone: a broadcast is held, and its outcome
/// kept, by the node that accepted it.
fn broadcast_answer(book: &StatusBook, id: &str, value: u128) -> Answer {
    match book.lookup_broadcast(value) {
        Ok(Some(s)) => reply(
            StatusCode::OK,
            serde_json::to_value(&s).unwrap_or_else(|_| json!({})),
        ),
        Ok(None) => {
            let error = if book.retention().is_zero() {
                format!(
                    "{id}: unknown: status lookups are off on this herald (outcome_retention = 0): it keeps no \
                     outcome to look up"
                )
            } else {
                format!(
                    "{id}: unknown: no broadcast with this id is held here, nor its outcome kept: it was never \
                     accepted by this herald (with the JetStream spool, by this node: ask the node that accepted \
                     it), or it finished longer than outcome_retention ({} s) ago",
                    book.retention().as_secs()
                )
            };
            reply(
                StatusCode::NOT_FOUND,
                json!({"id": id, "found": "unknown", "error": error}),
            )
        }
        Err(e) => unreadable(id, &e),
    }
}

/// What a text that is no id is told: what the two kinds of id look like.
const NOT_AN_ID: &str = "is not a notification id (they look like 01/00-12345-0000002A) nor a broadcast id (a UUID, \
                         as POST /api/v1/broadcast answered it)";

fn answer(book: &StatusBook, id: &str) -> Answer {
    let Some(key) = parse_id(id) else {
        if let Some(value) = broadcast_id(id) {
            return broadcast_answer(book, id, value);
        }
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"id": id, "found": false, "error": format!("{id:?} {NOT_AN_ID}")}),
        );
    };
    let (found, error) = match book.lookup(&key) {
        Ok(Found::Status(s)) => return reply(StatusCode::OK, status_body(&s)),
        Ok(Found::InStream(s)) => {
            return Answer {
                status: StatusCode::OK,
                body: serde_json::Value::Null,
                ask: Some(key),
                in_stream: Some(s),
                expired_elsewhere: None,
            };
        }
        // Expired here: another node may hold it all the same (see the module's notes on `expired`).
        Ok(Found::Expired) => {
            return Answer {
                ask: Some(key),
                ..reply(StatusCode::NOT_FOUND, expired_body(book, id))
            };
        }
        // With `outcome_retention = 0` no outcome is kept: "ask again later" would have the client ask for good.
        Ok(Found::Unknown) if book.retention().is_zero() => (
            "unknown",
            format!(
                "{id}: unknown: status lookups are off on this herald (outcome_retention = 0): it keeps no outcome \
                 to look up"
            ),
        ),
        Ok(Found::Unknown) => (
            "unknown",
            format!(
                "{id}: unknown: herald holds no state for this id now: it was never accepted, or it was accepted and \
                 waits to be queued (in the spool while it is restored after a start, or in the JetStream stream \
                 where no node remembers it); ask again later"
            ),
        ),
        Err(e) => return unreadable(id, &e),
    };
    // Unknown here: another node may hold it, or have delivered it and pruned its outcome.
    Answer {
        ask: Some(key),
        expired_elsewhere: (!book.retention().is_zero()).then(|| expired_body(book, id)),
        ..reply(
            StatusCode::NOT_FOUND,
            json!({"id": id, "found": found, "error": error}),
        )
    }
}

/// What the other nodes know of `ids`, ids this node's book holds no state for (one question for all of them).
async fn ask_peers(state: &StatusState, ids: &[String]) -> PeerAnswers {
    match &state.peers {
        Some(peers) if !ids.is_empty() => peers::ask_all(peers, ids).await,
        _ => PeerAnswers::default(),
    }
}

/// The book's answers for `ids`, looked up on the blocking pool: an id the book does not follow in memory is read
/// from the outcome store (a read from disk; a batch holds up to [`MAX_BATCH`]), which must not hold up the async
/// threads that serve every other request. `None` when the lookup task failed (a panic).
async fn answers(book: &Arc<StatusBook>, ids: Vec<String>) -> Option<Vec<Answer>> {
    let book = book.clone();
    tokio::task::spawn_blocking(move || ids.iter().map(|id| answer(&book, id)).collect())
        .await
        .inspect_err(|e| tracing::error!("a status lookup failed: {e}"))
        .ok()
}

fn lookup_failed() -> Response {
    json(
        StatusCode::INTERNAL_SERVER_ERROR,
        json!({"error": "the status lookup failed (see the log)"}),
    )
}

/// The `400` for a path whose id is not UTF-8 text once percent-decoded (`%FF`): the `StatusNotFound` shape of any
/// text that is no id, its `id` the path's id as sent.
fn not_text(uri: &Uri) -> Response {
    let path = uri.path();
    let sent = path
        .split_once("/api/v1/notifications/")
        .map_or(path, |(_, rest)| rest);
    json(
        StatusCode::BAD_REQUEST,
        json!({
            "id": sent,
            "found": false,
            "error": format!("{sent:?} (as sent) is not UTF-8 text once percent-decoded, so it {NOT_AN_ID}"),
        }),
    )
}

async fn one(
    State(state): State<StatusState>,
    uri: Uri,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let Ok(Path(id)) = id else {
        return not_text(&uri);
    };
    let id = id.trim_start_matches('/');
    let Some(local) = answers(&state.book, vec![id.to_owned()])
        .await
        .and_then(|mut a| a.pop())
    else {
        return lookup_failed();
    };
    let from_peers = match local.ask {
        Some(_) => ask_peers(&state, &[id.to_owned()]).await,
        None => PeerAnswers::default(),
    };
    let (status, body) = local.settled(&from_peers);
    let mut response = json(status, body);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
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
    let send = "send {\"ids\": [\"01/00-12345-0000002A\", …]}";
    // A JSON value other than an object is refused as such: the reader would take an array for the fields in order.
    if json_but_not_an_object(&body) {
        return json(
            StatusCode::BAD_REQUEST,
            json!({"error": format!("{NOT_AN_OBJECT}; {send}")}),
        );
    }
    let q: Query = match serde_json::from_slice(without_bom(&body)) {
        Ok(q) => q,
        Err(e) => {
            return json(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("invalid request: {e}; {send}")}),
            );
        }
    };
    if q.ids.len() > MAX_BATCH {
        return json(
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"error": format!("ids: {} ids; at most {MAX_BATCH} per request", q.ids.len())}),
        );
    }
    let Some(answers) = answers(&state.book, q.ids.clone()).await else {
        return lookup_failed();
    };
    let asked: Vec<String> = q
        .ids
        .iter()
        .zip(&answers)
        .filter(|(_, a)| a.ask.is_some())
        .map(|(id, _)| id.clone())
        .collect();
    let from_peers = ask_peers(&state, &asked).await;
    let mut found = Vec::new();
    let mut not_found = Vec::new();
    for a in answers {
        match a.settled(&from_peers) {
            (StatusCode::OK, body) => found.push(body),
            (_, body) => not_found.push(body),
        }
    }
    json(
        StatusCode::OK,
        json!({"notifications": found, "not_found": not_found}),
    )
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use herald_spool::{
        JetStreamOptions, JetStreamSpool, Lookup, OutcomeStore, StoredNotification,
    };

    use super::*;
    use crate::logs::OutcomeKind;
    use crate::outcomes::fixtures::{delivered, notification};
    use crate::outcomes::{OutcomeListener, key_of};
    use crate::queue::message::IdGenerator;

    async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A node of the JetStream spool `url`: its spool (and what it pulls), its book, and its end of the lookups.
    async fn node(
        url: &str,
        dir: &std::path::Path,
    ) -> (
        Arc<JetStreamSpool>,
        tokio::sync::mpsc::Receiver<StoredNotification>,
        Arc<StatusBook>,
        Arc<PeerLookup>,
    ) {
        let spool = JetStreamSpool::connect(JetStreamOptions::new(vec![url.to_owned()], "status"))
            .await
            .unwrap();
        let pulled = spool.take_deliveries().unwrap();
        wait_for("the stream set up", || spool.connected()).await;
        let store = Arc::new(OutcomeStore::open(dir).unwrap());
        let book = StatusBook::new(store, Duration::from_secs(3600), 1_000_000);
        let peers = peers::serve(&spool, book.clone());
        (spool, pulled, book, peers)
    }

    /// The status routes of `state` on a loopback port: their base URL.
    async fn serve(state: StatusState) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, routes(state)).await });
        format!("http://{addr}/api/v1/notifications")
    }

    /// An id no book holds is `404` `unknown`, and the text says it may still be on its way to a queue (accepted,
    /// not yet queued by any node): unknown is not final.
    #[tokio::test]
    async fn an_unknown_id_is_404_and_says_it_may_still_be_queued() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        let book = StatusBook::new(store, Duration::from_secs(3600), 1_000_000);
        let id = IdGenerator::new(7).next().to_string();
        let a = answer(&book, &id);
        assert_eq!(a.status, StatusCode::NOT_FOUND);
        assert_eq!(
            (&a.body["id"], &a.body["found"]),
            (&json!(id), &json!("unknown"))
        );
        let error = a.body["error"].as_str().unwrap();
        assert!(
            error.starts_with(&format!("{id}: unknown: ")) && error.contains("waits to be queued"),
            "{error}"
        );
        assert!(a.ask.is_some(), "another node may hold it");
    }

    /// A store that cannot be read for now (closed after a failed reopen, until its next write reopens it) is a
    /// `503` with `retry-after` the client may retry, not a `500`.
    #[tokio::test]
    async fn a_store_that_cannot_be_read_for_now_is_503_with_retry_after() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        let book = StatusBook::new(store.clone(), Duration::from_secs(3600), 1_000_000);
        let id = IdGenerator::new(7).next();
        // The keyspace cannot be opened again: a failed write's reopen leaves the store closed.
        let marker = dir
            .path()
            .join(herald_spool::outcomes::OUTCOMES_DIR)
            .join("version");
        std::fs::write(&marker, b"not fjall").unwrap();
        store.refuse_writes(true);
        let key = parse_id(&id.to_string()).unwrap();
        assert!(store.put(&[(key, 1_000, b"x")]).is_err());
        store.refuse_writes(false);
        assert!(store.put(&[(key, 1_000, b"x")]).is_err(), "closed");

        let a = answer(&book, &id.to_string());
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
        let base = serve(StatusState { book, peers: None }).await;
        let r = reqwest::get(format!("{base}/{id}")).await.unwrap();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "1");
    }

    /// With `outcome_retention = 0` nothing is kept: an id's answer says lookups are off, not "ask again later".
    #[tokio::test]
    async fn with_outcome_retention_0_an_unknown_id_says_lookups_are_off() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        let book = StatusBook::new(store, Duration::ZERO, 1_000_000);
        let base = serve(StatusState { book, peers: None }).await;
        let id = IdGenerator::new(7).next().to_string();
        let r = reqwest::Client::new()
            .get(format!("{base}/{}", id.replace('/', "%2F")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["found"], json!("unknown"), "{v}");
        let error = v["error"].as_str().unwrap();
        assert!(
            error.contains("status lookups are off on this herald (outcome_retention = 0)")
                && !error.contains("ask again later"),
            "{v}"
        );
    }

    /// A path whose id is not UTF-8 text once percent-decoded is answered in the `StatusNotFound` shape
    /// (docs/openapi.yaml) of any text that is no id: `id` the id as sent, `found` false, and an `error` saying why.
    #[tokio::test]
    async fn an_id_that_is_not_utf8_is_answered_as_text_that_is_no_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        let book = StatusBook::new(store, Duration::from_secs(3600), 1_000_000);
        let base = serve(StatusState { book, peers: None }).await;
        for sent in ["%ff", "00%2F00-12345-%FE%FF"] {
            let r = reqwest::get(format!("{base}/{sent}")).await.unwrap();
            assert_eq!(r.status(), 400, "{sent}");
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v["id"], json!(sent), "{v}");
            assert_eq!(v["found"], json!(false), "{v}");
            let error = v["error"].as_str().unwrap();
            assert!(
                error.starts_with(&format!(
                    "{sent:?} (as sent) is not UTF-8 text once percent-decoded"
                )),
                "{v}"
            );
        }
    }

    /// Every entry of `not_found` has `id`, `found` and `error` (docs/api.md "Status of a notification"): `found`
    /// is `unknown` or `expired` for an id herald does not hold, `false` for text that is not an id (also in the
    /// `400` of the single lookup). A body that is JSON but not an object is refused as such.
    #[tokio::test]
    async fn every_id_not_found_says_found() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        let book = StatusBook::new(store, Duration::from_secs(3600), 1_000_000);
        let base = serve(StatusState { book, peers: None }).await;
        let client = reqwest::Client::new();
        let id = IdGenerator::new(7).next().to_string();
        let r = client
            .post(format!("{base}/query"))
            .json(&json!({"ids": [id, "garbage"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["notifications"], json!([]), "{v}");
        let found: Vec<_> = v["not_found"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["id"].clone(), e["found"].clone(), e["error"].is_string()))
            .collect();
        assert_eq!(
            found,
            [
                (json!(id), json!("unknown"), true),
                (json!("garbage"), json!(false), true)
            ],
            "{v}"
        );
        let r = client.get(format!("{base}/garbage")).send().await.unwrap();
        assert_eq!(r.status(), 400);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!((&v["id"], &v["found"]), (&json!("garbage"), &json!(false)));

        for body in ["[]", "[[\"01/00-12345-0000002A\"]]", "\"ids\"", "1", "null"] {
            let r = client
                .post(format!("{base}/query"))
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400, "{body}");
            let v: serde_json::Value = r.json().await.unwrap();
            assert!(
                v["error"]
                    .as_str()
                    .unwrap()
                    .starts_with("invalid request: the body must be a JSON object"),
                "{body}: {v}"
            );
        }
    }

    /// A known status path with another method is `405` with `allow`, as for every other route: `query` is not
    /// an id, so `GET …/query` is not looked up as one.
    #[tokio::test]
    async fn a_status_path_with_another_method_is_405_with_allow() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        let book = StatusBook::new(store, Duration::from_secs(3600), 1_000_000);
        let base = serve(StatusState { book, peers: None }).await;
        let client = reqwest::Client::new();
        let id = IdGenerator::new(7).next().to_string().replace('/', "%2F");
        for (method, path, allow) in [
            (reqwest::Method::GET, "query".to_owned(), "POST"),
            (reqwest::Method::PUT, "query".to_owned(), "POST"),
            (reqwest::Method::POST, id.clone(), "GET,HEAD"),
            (reqwest::Method::DELETE, id, "GET,HEAD"),
        ] {
            let r = client
                .request(method.clone(), format!("{base}/{path}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 405, "{method} {path}");
            let allowed = r
                .headers()
                .get("allow")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .replace(' ', "");
            assert_eq!(allowed, allow, "{method} {path}");
        }
        // HEAD of an id is its GET without the body.
        let r = client
            .head(format!("{base}/01%2F00-12345-0000002A"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 404);
    }

    /// On the JetStream spool a node's prune mark for a run can pass ids it never held: node B stored and pruned
    /// the outcome of the newest id of node A's run, so its book calls A's older ids expired, yet A holds them (one
    /// still queued, one delivered). B asks A about them and answers their states; an id no node holds stays
    /// `404` expired.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_id_expired_to_this_node_is_answered_by_the_node_that_holds_it() {
        if !herald_testkit::nats::available() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let server = herald_testkit::nats::single(dir.path());
        let url = server.url();
        let (_spool_a, _pulled_a, book_a, _peers_a) = node(&url, &dir.path().join("a")).await;
        let (_spool_b, _pulled_b, book_b, peers_b) = node(&url, &dir.path().join("b")).await;

        // Node A's run: A holds the first two ids (one still queued, one delivered); B delivered the third.
        let ids = IdGenerator::new(0x2A);
        let queued = notification(ids.next(), "status.example", 1);
        let done = notification(ids.next(), "status.example", 2);
        let pruned = notification(ids.next(), "status.example", 3);
        book_a.queued(&queued, 0);
        book_a.queued(&done, 0);
        book_a.outcome(&delivered(&done));
        book_b.queued(&pruned, 0);
        book_b.outcome(&delivered(&pruned));
        assert!(book_b.flush(Duration::from_secs(30)).await);
        // B prunes it (past outcome_retention): its mark for A's run now covers A's two ids.
        assert_eq!(book_b.store().prune(u64::MAX, u64::MAX).unwrap(), 1);
        for n in [&queued, &done, &pruned] {
            assert_eq!(
                book_b.store().lookup(&key_of(n.id)).unwrap(),
                Lookup::Expired
            );
        }

        wait_for("node B to see node A", || peers_b.live_peers() == 1).await;
        let base = serve(StatusState {
            book: book_b,
            peers: Some(peers_b),
        })
        .await;
        let client = reqwest::Client::new();
        for (n, state) in [(&queued, "queued"), (&done, "delivered")] {
            let r = client
                .get(format!("{base}/{}", n.id.to_string().replace('/', "%2F")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200, "{}", n.id);
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(
                (&v["id"], &v["state"]),
                (&json!(n.id.to_string()), &json!(state))
            );
        }
        let r = client
            .get(format!(
                "{base}/{}",
                pruned.id.to_string().replace('/', "%2F")
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 404);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["found"], "expired", "{v}");

        // The batch form, in one question.
        let v: serde_json::Value = client
            .post(format!("{base}/query"))
            .json(&json!({"ids": [pruned.id.to_string(), queued.id.to_string(), done.id.to_string()]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let states: Vec<(&str, &str)> = v["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["id"].as_str().unwrap(), s["state"].as_str().unwrap()))
            .collect();
        let (q, d) = (queued.id.to_string(), done.id.to_string());
        assert_eq!(
            states,
            [(q.as_str(), "queued"), (d.as_str(), "delivered")],
            "{v}"
        );
        let not_found = v["not_found"].as_array().unwrap();
        assert_eq!(not_found.len(), 1, "{v}");
        assert_eq!(
            (&not_found[0]["id"], &not_found[0]["found"]),
            (&json!(pruned.id.to_string()), &json!("expired"))
        );
    }

    /// On the JetStream spool the node that delivered a notification keeps its outcome and prunes it after
    /// `outcome_retention`: asked through another node, whose book never held it, the id is `404` `expired` too
    /// (not `unknown`, which says to ask again later), in both forms of the lookup; an id no node knows stays
    /// `unknown`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_id_another_node_pruned_is_expired_on_every_node() {
        if !herald_testkit::nats::available() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let server = herald_testkit::nats::single(dir.path());
        let url = server.url();
        let (_spool_a, _pulled_a, book_a, _peers_a) = node(&url, &dir.path().join("a")).await;
        let (_spool_b, _pulled_b, book_b, peers_b) = node(&url, &dir.path().join("b")).await;
        // Node B's run; A delivered the notification and pruned its outcome.
        let pruned = notification(IdGenerator::new(0x2A).next(), "status.example", 1);
        book_a.queued(&pruned, 0);
        book_a.outcome(&delivered(&pruned));
        assert!(book_a.flush(Duration::from_secs(30)).await);
        assert_eq!(book_a.store().prune(u64::MAX, u64::MAX).unwrap(), 1);
        let unknown = IdGenerator::new(0x2B).next().to_string();
        wait_for("node B to see node A", || peers_b.live_peers() == 1).await;
        let base = serve(StatusState {
            book: book_b,
            peers: Some(peers_b),
        })
        .await;
        let client = reqwest::Client::new();
        let id = pruned.id.to_string();
        let r = client
            .get(format!("{base}/{}", id.replace('/', "%2F")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 404);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["found"], "expired", "{v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{id}: expired: ")),
            "{v}"
        );
        let v: serde_json::Value = client
            .post(format!("{base}/query"))
            .json(&json!({"ids": [id, unknown]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let not_found: Vec<(&str, &str)> = v["not_found"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["id"].as_str().unwrap(), s["found"].as_str().unwrap()))
            .collect();
        assert_eq!(
            not_found,
            [(id.as_str(), "expired"), (unknown.as_str(), "unknown")],
            "{v}"
        );
    }

    /// On the JetStream spool a notification waiting in the stream is in no node's queue. The node that put it
    /// there (accepted it, or gave it back for a retry) remembers it, so every node answers it `queued`
    /// (docs/api.md#status-of-a-notification) instead of `404`; what a node that pulled it since says wins over that memory.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_notification_waiting_in_the_stream_is_queued_on_every_node() {
        if !herald_testkit::nats::available() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let server = herald_testkit::nats::single(dir.path());
        let url = server.url();
        let (_spool_a, _pulled_a, book_a, peers_a) = node(&url, &dir.path().join("a")).await;
        let (_spool_b, _pulled_b, book_b, peers_b) = node(&url, &dir.path().join("b")).await;
        book_a.follow_the_stream();
        book_b.follow_the_stream();
        wait_for("the nodes to see each other", || {
            peers_a.live_peers() == 1 && peers_b.live_peers() == 1
        })
        .await;
        let base_a = serve(StatusState {
            book: book_a.clone(),
            peers: Some(peers_a),
        })
        .await;
        let base_b = serve(StatusState {
            book: book_b.clone(),
            peers: Some(peers_b),
        })
        .await;
        let client = reqwest::Client::new();
        let n = notification(IdGenerator::new(0x2A).next(), "stream.example", 1);
        let path = n.id.to_string().replace('/', "%2F");
        let get = |base: &String| {
            let request = client.get(format!("{base}/{path}")).send();
            async move {
                let r = request.await.unwrap();
                let status = r.status().as_u16();
                let v: serde_json::Value = r.json().await.unwrap();
                (status, v)
            }
        };
        let batch = |base: &String| {
            let request = client
                .post(format!("{base}/query"))
                .json(&json!({"ids": [n.id.to_string()]}))
                .send();
            async move {
                let v: serde_json::Value = request.await.unwrap().json().await.unwrap();
                v
            }
        };

        // Accepted by A into the stream: queued on A, and on B, which asks A.
        book_a.entered_stream(&n);
        for base in [&base_a, &base_b] {
            let (status, v) = get(base).await;
            assert_eq!(
                (status, &v["state"], &v["attempts"]),
                (200, &json!("queued"), &json!(0)),
                "{v}"
            );
            let v = batch(base).await;
            assert_eq!(v["notifications"][0]["state"], "queued", "{v}");
        }

        // B pulled it and sends it: A, which still remembers putting it in the stream, answers B's state.
        book_b.queued(&n, 0);
        book_b.in_flight(n.id);
        let (status, v) = get(&base_a).await;
        assert_eq!((status, &v["state"]), (200, &json!("in_flight")), "{v}");
        assert_eq!(
            batch(&base_a).await["notifications"][0]["state"],
            "in_flight"
        );

        // B's attempt failed and B gave it back for a retry: A answers with B's attempts and next attempt.
        let mut failed = delivered(&n);
        failed.kind = OutcomeKind::Transient;
        failed.error = "503 ServiceUnavailable";
        book_b.outcome(&failed);
        book_b.rescheduled(
            n.id,
            1,
            std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000),
        );
        book_b.left(n.id);
        for base in [&base_a, &base_b] {
            let (status, v) = get(base).await;
            assert_eq!(
                (status, &v["state"], &v["attempts"], &v["next_attempt_at"]),
                (200, &json!("queued"), &json!(1), &json!(2_000_000_000u64)),
                "{v}"
            );
            assert_eq!(v["last_reason"], "503 ServiceUnavailable", "{v}");
        }

        // A pulled it for the retry and delivered it: B, which remembers giving it back, answers A's outcome.
        book_a.queued(&n, 1);
        book_a.outcome(&delivered(&n));
        let (status, v) = get(&base_b).await;
        assert_eq!((status, &v["state"]), (200, &json!("delivered")), "{v}");
        assert_eq!(
            batch(&base_b).await["notifications"][0]["state"],
            "delivered"
        );
    }
}
