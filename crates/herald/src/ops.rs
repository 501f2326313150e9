//! Operator routes that `herald serve` adds to every http listener: the invalid-token list, the Prometheus
//! exposition and the readiness probe. They pass the listener's address lists and API keys like the injection
//! routes; `docs/openapi.yaml` documents them next to those.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::Router;
use axum::extract::RawQuery;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use herald_conf::{Config, HttpServices};
use herald_spool::Spool;

use crate::delivery::ConfigResolver;
use crate::inbound::rest::query::Query;
use crate::metrics;
use crate::queue::Engine;
use crate::spool::RestoreProgress;
use crate::tokens::InvalidTokenStore;

/// Every (method, path) [`routes`] answers; with `inbound::rest::ROUTES` these are what `docs/openapi.yaml`
/// documents (HEAD is implied by GET).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/tokens/invalid"),
    ("DELETE", "/api/v1/tokens/invalid"),
    // crate::outcomes::api::ROUTES, merged by the server on listeners that serve push or inject.
    ("GET", "/api/v1/notifications/{id}"),
    ("POST", "/api/v1/notifications/query"),
    // crate::channels::api::ROUTES, merged by the server on listeners that serve push.
    ("GET", "/api/v1/channels"),
    ("POST", "/api/v1/channels"),
    ("GET", "/api/v1/channels/{id}"),
    ("DELETE", "/api/v1/channels/{id}"),
    // crate::broadcasts::api::ROUTES, merged by the server on listeners that serve push.
    ("POST", "/api/v1/broadcast"),
    ("GET", "/metrics"),
    ("GET", "/readyz"),
];

/// Renders further metric families (outcome store, webhooks) after the engine's.
pub type MoreMetrics = Arc<dyn Fn(&mut String) + Send + Sync>;

/// The content type of the Prometheus text exposition.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Routes for operators on the http listener: invalid tokens and Prometheus metrics (as `services` allows) and
/// readiness. Merge them with `inbound::rest::router_with` so they get the listener's checks and JSON 404/405
/// answers.
pub fn routes(
    engine: Arc<Engine>,
    spool: Arc<dyn Spool>,
    invalid: Arc<InvalidTokenStore>,
    resolver: Arc<ConfigResolver>,
    restore: Arc<RestoreProgress>,
    services: HttpServices,
    more_metrics: Option<MoreMetrics>,
) -> Router {
    let ready_spool = spool.clone();
    let mut router = Router::new().route(
        "/readyz",
        get(move || {
            let spool = ready_spool.clone();
            async move { readiness(&*spool) }
        }),
    );
    if services.tokens {
        let (tokens, deleting) = (invalid.clone(), invalid.clone());
        router = router.route(
            "/api/v1/tokens/invalid",
            get(move |RawQuery(raw): RawQuery| {
                let tokens = tokens.clone();
                async move { invalid_tokens_answer(tokens, raw.unwrap_or_default()).await }
            })
            .delete(move |RawQuery(raw): RawQuery| {
                let tokens = deleting.clone();
                async move { delete_invalid_token(&tokens, raw.as_deref().unwrap_or("")) }
            }),
        );
    }
    if services.metrics {
        router = router.route(
            "/metrics",
            get(move || {
                let engine = engine.clone();
                let spool = spool.clone();
                let invalid = invalid.clone();
                let resolver = resolver.clone();
                let restore = restore.clone();
                let more = more_metrics.clone();
                async move {
                    // Counters and the size last measured: never waits for the disk (see `readiness`).
                    let stats = spool.stats();
                    let extra = metrics::Extra {
                        certificate_expiry: certificate_expiry(&resolver.config()),
                        spool: Some((stats.records, stats.bytes_on_disk)),
                        spool_health: Some(metrics::SpoolHealth {
                            writable: !stats.unwritable,
                            disk_full: stats.disk_full,
                            pending_removals: stats.pending_removals,
                        }),
                        stream: spool.stream_stats(),
                        restore: Some((restore.is_running(), restore.queued())),
                        invalid_tokens: Some(invalid.len() as u64),
                    };
                    ([(CONTENT_TYPE, METRICS_CONTENT_TYPE)], {
                        let mut text = metrics::render(&engine, &extra);
                        if let Some(more) = &more {
                            more(&mut text);
                        }
                        text
                    })
                }
            }),
        );
    }
    router
}

/// Seconds a client is asked to wait before trying again while the spool refuses writes.
const NOT_READY_RETRY_AFTER: &str = "30";

/// `GET /readyz`: `200 ready` while herald takes new notifications; `503` with the JSON error body while the spool
/// refuses writes (held notifications are still delivered meanwhile, and intake resumes by itself): a full disk, a
/// failed write, or a write its disk has not completed for `SpoolOptions::stall_after` (the cause names it and its
/// age). Runs on an async thread: `Spool::stats` and `Spool::write_error` only read what the spool's writer measured
/// and when its write under way started (they never wait for the disk, which may hold a write in its fsync for as
/// long as a failing device takes).
fn readiness(spool: &dyn Spool) -> Response {
    let stats = spool.stats();
    if !stats.unwritable {
        return "ready".into_response();
    }
    let cause = match spool.write_error() {
        Some(e) => e.to_string(),
        None if stats.disk_full => "the spool's disk is full".to_owned(),
        None => "the spool refuses writes".to_owned(),
    };
    let error = format!(
        "not ready for intake: {cause}; notifications already accepted are still delivered, and intake resumes by \
         itself once the spool takes writes again ({} removals pending)",
        stats.pending_removals
    );
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [
            (CONTENT_TYPE, "application/json"),
            (axum::http::header::RETRY_AFTER, NOT_READY_RETRY_AFTER),
        ],
        serde_json::json!({ "error": error, "spool_disk_full": stats.disk_full }).to_string(),
    )
        .into_response()
}

/// (domain, certificate file, not-after) of every configured client certificate that can be read.
fn certificate_expiry(config: &Config) -> Vec<(String, String, u64)> {
    let mut out = Vec::new();
    for domain in config.domains().into_iter().filter(|d| !d.starts_with('/')) {
        let d = config.domain_settings(None, None, domain);
        let Some((path, identity)) = crate::delivery::load_identity(&d) else {
            continue;
        };
        if let Ok(info) = identity.and_then(|i| i.info().map_err(|e| e.to_string())) {
            let not_after = info
                .not_after
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            out.push((domain.to_owned(), path.display().to_string(), not_after));
        }
    }
    out
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn bad_request(error: String) -> Response {
    json(
        StatusCode::BAD_REQUEST,
        serde_json::json!({ "error": error }),
    )
}

/// The refusal (400, naming it) of a query that gives a parameter more than once ([`Query::once_each`]): the
/// handlers below read the parameters as they come and would let the last of two apply, so that
/// `DELETE /api/v1/tokens/invalid?domain=D&token=A&token=B` would delete B alone. Checked before anything else.
fn repeated_parameter(query: &str) -> Option<Response> {
    Query::parse(Some(query))
        .once_each()
        .err()
        .map(|e| bad_request(e.to_string()))
}

/// A store holding more entries than this is listed on the blocking pool, not on an async thread (the copy under
/// the store's lock and the merge of the domains' lists take time in proportion).
const LIST_INLINE_MAX: usize = 10_000;

/// `GET /api/v1/tokens/invalid?domain=D&since=UNIX_SECONDS`: `{"tokens": [{domain, token, reason, timestamp_ms,
/// learnt_ms, source, timestamp_from_apns}, …]}` in the order herald learnt them, `since` compared with when herald
/// learnt each (not APNs' timestamp, which may be days older); 400 naming the parameter when one is malformed or
/// given more than once; 503 when herald stops before the blocking pool read a large list.
async fn invalid_tokens_answer(store: Arc<InvalidTokenStore>, query: String) -> Response {
    if let Some(refusal) = repeated_parameter(&query) {
        return refusal;
    }
    let mut domain = None;
    let mut since = 0u64;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value);
        match key {
            "domain" if !value.is_empty() => domain = Some(value.to_ascii_lowercase()),
            "domain" => {}
            "since" => match value.parse::<u64>() {
                Ok(s) => since = s,
                Err(_) => {
                    return bad_request(format!("since: {value:?} is not a Unix time in seconds"));
                }
            },
            other => {
                return bad_request(format!("unknown parameter {other:?}; use domain and since"));
            }
        }
    }
    let small = store.len() <= LIST_INLINE_MAX;
    let answer = move || {
        let list = store.list(domain.as_deref(), since.saturating_mul(1000));
        json(StatusCode::OK, serde_json::json!({ "tokens": list }))
    };
    if small {
        return answer();
    }
    crate::queue::run_blocking(answer)
        .await
        .unwrap_or_else(stopped_listing)
}

/// The answer of a list that herald's blocking pool did not read because herald is stopping.
fn stopped_listing() -> Response {
    json(
        StatusCode::SERVICE_UNAVAILABLE,
        serde_json::json!({ "error": "herald is stopping: the list was not read" }),
    )
}

/// `DELETE /api/v1/tokens/invalid?domain=D&token=HEX`: removes the entry of that token (hex of either case) of
/// that domain (lowercased), so that a restart does not bring it back (a later report of the token lists it
/// again). `200 {"deleted": entry}`; `404` when there is none; `400` naming what is missing, malformed or given
/// more than once.
fn delete_invalid_token(store: &InvalidTokenStore, query: &str) -> Response {
    if let Some(refusal) = repeated_parameter(query) {
        return refusal;
    }
    let mut domain = None;
    let mut token = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value);
        match key {
            "domain" => domain = Some(value.to_ascii_lowercase()),
            "token" => token = Some(value),
            other => {
                return bad_request(format!("unknown parameter {other:?}; use domain and token"));
            }
        }
    }
    let Some(domain) = domain.filter(|d| !d.is_empty()) else {
        return bad_request("domain: missing; name the domain the token is listed under".into());
    };
    let Some(token) = token else {
        return bad_request("token: missing; give the device token in hex".into());
    };
    match herald_apns::token_hex::validate_hex(&token) {
        Err(e) => return bad_request(format!("token: {e}")),
        Ok(len) if len > herald_apns::token_hex::TOKEN_MAX_LEN => {
            return bad_request(format!(
                "token: {len} bytes; no device token is longer than {} bytes ({} hex digits)",
                herald_apns::token_hex::TOKEN_MAX_LEN,
                2 * herald_apns::token_hex::TOKEN_MAX_LEN
            ));
        }
        Ok(_) => {}
    }
    let token = token.to_ascii_lowercase();
    match store.delete(&domain, &token) {
        Some(entry) => json(StatusCode::OK, serde_json::json!({ "deleted": entry })),
        None => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({
                "error": format!("no invalid-token entry for token {token} of domain {domain}")
            }),
        ),
    }
}

/// Decodes `%XX` escapes and `+` of a query value; malformed escapes stay as written.
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tokens::InvalidTokenEntry;
    use std::ops::ControlFlow;
    use std::sync::{Condvar, Mutex};
    use std::time::Duration;

    use herald_spool::{
        CommitBatch, DiskSpool, Engine as StoreEngine, SpoolError, SpoolKey, SpoolOptions, Table,
    };

    /// A store whose commits wait until [`StuckDisk::answer`]: a disk that stops answering in a write.
    #[derive(Clone, Default)]
    pub(crate) struct StuckDisk(Arc<(Mutex<bool>, Condvar)>);

    impl StuckDisk {
        /// Lets the commits waiting, and every later one, return.
        pub(crate) fn answer(&self) {
            *self.0.0.lock().unwrap() = true;
            self.0.1.notify_all();
        }
    }

    impl StoreEngine for StuckDisk {
        fn name(&self) -> &'static str {
            "stuck"
        }
        fn commit(&self, _batch: &CommitBatch) -> Result<(), SpoolError> {
            let mut answered = self.0.0.lock().unwrap();
            while !*answered {
                answered = self.0.1.wait(answered).unwrap();
            }
            Ok(())
        }
        fn sync(&self) -> Result<(), SpoolError> {
            Ok(())
        }
        fn scan(
            &self,
            _table: Table,
            _upto: SpoolKey,
            _visit: &mut dyn FnMut(SpoolKey, &[u8]) -> ControlFlow<()>,
        ) -> Result<(), SpoolError> {
            Ok(())
        }
        fn last_key(&self, _table: Table) -> Result<Option<SpoolKey>, SpoolError> {
            Ok(None)
        }
        fn disk_bytes(&self) -> u64 {
            0
        }
    }

    /// A spool over a [`StuckDisk`] that counts a write as stalled after 100 ms.
    pub(crate) fn spool_on_stuck_disk() -> (Arc<DiskSpool<StuckDisk>>, StuckDisk) {
        let disk = StuckDisk::default();
        let options = SpoolOptions {
            stall_after: Duration::from_millis(100),
            ..SpoolOptions::default()
        };
        let spool = DiskSpool::with_engine(disk.clone(), options).unwrap();
        (Arc::new(spool), disk)
    }

    /// A notification to spool.
    pub(crate) fn sample(key: SpoolKey) -> herald_spool::StoredNotification {
        herald_spool::StoredNotification {
            key,
            domain: "stuck.example".into(),
            token: vec![7; 32],
            topic: None,
            push_type: None,
            priority: None,
            expiration: None,
            collapse_id: None,
            apns_id: None,
            binding: None,
            payload: br#"{"aps":{"alert":"stuck"}}"#.to_vec(),
            sender: "sender@example.com".into(),
            recipient: "0707@stuck.example".into(),
            received_at: 1_790_000_000,
            batch_id: 1,
            conn_id: 1,
            retries: 0,
            next_attempt_ms: 0,
        }
    }

    /// Polls `cond` every few milliseconds; panics after 30 s.
    pub(crate) async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !cond() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A write the spool's disk does not complete turns `/readyz` to 503 naming it and its age, without waiting for
    /// the disk; it turns 200 again once the write returns.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readiness_is_503_naming_a_write_the_disk_does_not_complete() {
        let (spool, disk) = spool_on_stuck_disk();
        assert_eq!(readiness(&*spool).status(), StatusCode::OK);
        let stuck = tokio::spawn(spool.append(vec![sample(spool.next_key())]));
        wait_for("/readyz to say 503", || {
            readiness(&*spool).status() == StatusCode::SERVICE_UNAVAILABLE
        })
        .await;
        let response = readiness(&*spool);
        assert_eq!(
            response
                .headers()
                .get(axum::http::header::RETRY_AFTER)
                .unwrap(),
            NOT_READY_RETRY_AFTER
        );
        let (_, body) = body_of(response).await;
        let error = body["error"].as_str().unwrap();
        assert!(error.starts_with("not ready for intake: "), "{error}");
        assert!(
            error.contains("the spool's disk has not completed a write for "),
            "{error}"
        );
        assert!(
            error.contains("(a commit is stuck in write/fsync)"),
            "{error}"
        );
        assert_eq!(body["spool_disk_full"], false);
        disk.answer();
        stuck.await.unwrap().unwrap();
        wait_for("/readyz to say 200 again", || {
            readiness(&*spool).status() == StatusCode::OK
        })
        .await;
    }

    fn store_with(entries: &[(&str, &str, u64)]) -> (tempfile::TempDir, Arc<InvalidTokenStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(InvalidTokenStore::open(&dir.path().join("invalid.jsonl"), None).unwrap());
        // Learnt when APNs invalidated them.
        for (domain, token, ts) in entries {
            let entry = InvalidTokenEntry {
                domain: domain.to_string(),
                token: token.to_string(),
                reason: "Unregistered".into(),
                timestamp_ms: *ts,
                learnt_ms: 0,
                source: "apns".into(),
                timestamp_from_apns: true,
            };
            store.record_learnt(entry, true, *ts);
        }
        (dir, store)
    }

    async fn answer(
        store: &Arc<InvalidTokenStore>,
        query: &str,
    ) -> (StatusCode, serde_json::Value) {
        let response = invalid_tokens_answer(store.clone(), query.to_owned()).await;
        body_of(response).await
    }

    async fn body_of(response: Response) -> (StatusCode, serde_json::Value) {
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(percent_decode("a%2Eb+c"), "a.b c");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%41"), "A");
    }

    #[tokio::test]
    async fn invalid_tokens_filter_by_domain_and_since() {
        let (_dir, store) = store_with(&[
            ("a.example", "aa", 1_000),
            ("b.example", "bb", 5_000),
            ("a.example", "cc", 9_000),
        ]);
        let tokens = |v: &serde_json::Value| -> Vec<String> {
            v["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["token"].as_str().unwrap().to_owned())
                .collect()
        };
        let (status, all) = answer(&store, "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(tokens(&all), ["aa", "bb", "cc"]);
        let (_, a) = answer(&store, "domain=A%2Eexample").await;
        assert_eq!(tokens(&a), ["aa", "cc"]);
        let (_, later) = answer(&store, "domain=a.example&since=5").await;
        assert_eq!(tokens(&later), ["cc"]);
    }

    #[tokio::test]
    async fn malformed_parameters_are_400_naming_them() {
        let (_dir, store) = store_with(&[]);
        let (status, v) = answer(&store, "since=yesterday").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(v["error"].as_str().unwrap().starts_with("since:"), "{v}");
        let (status, v) = answer(&store, "domian=x").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(v["error"].as_str().unwrap().contains("\"domian\""), "{v}");
    }

    /// `DELETE` removes one entry (listed no more, and not back after a restart); a second is a 404, and a
    /// malformed or missing parameter a 400 saying what is wrong.
    #[tokio::test]
    async fn delete_removes_one_entry_404_when_absent_400_when_malformed() {
        let aa = "aa".repeat(32);
        let bb = "bb".repeat(32);
        let (dir, store) = store_with(&[("a.example", &aa, 1_000), ("a.example", &bb, 2_000)]);
        let delete = |query: String| {
            let store = store.clone();
            async move { body_of(delete_invalid_token(&store, &query)).await }
        };
        let (status, v) = delete(format!("domain=A.example&token={}", aa.to_uppercase())).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["deleted"]["token"], aa.as_str());
        assert_eq!(v["deleted"]["timestamp_ms"], 1_000);
        let (_, all) = answer(&store, "").await;
        assert_eq!(all["tokens"].as_array().unwrap().len(), 1, "{all}");
        assert_eq!(all["tokens"][0]["token"], bb.as_str());
        let (status, v) = delete(format!("domain=a.example&token={aa}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
        assert!(v["error"].as_str().unwrap().contains(&aa), "{v}");
        for (query, why) in [
            (format!("token={bb}"), "domain: missing"),
            ("domain=a.example".to_owned(), "token: missing"),
            (
                "domain=a.example&token=".to_owned(),
                "token: device token is empty",
            ),
            (
                "domain=a.example&token=abc".to_owned(),
                "odd number of hex digits",
            ),
            (
                "domain=a.example&token=zz".to_owned(),
                "non-hex character 'z'",
            ),
            (
                format!("domain=a.example&token={}", "ab".repeat(101)),
                "101 bytes",
            ),
            (
                format!("domain=a.example&tokn={bb}"),
                "unknown parameter \"tokn\"",
            ),
        ] {
            let (status, v) = delete(query.clone()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {v}");
            assert!(v["error"].as_str().unwrap().contains(why), "{query}: {v}");
        }
        // The other entry is untouched, and the removed one stays removed after a restart.
        let path = store.path().to_owned();
        drop(store);
        let store = InvalidTokenStore::open(&path, None).unwrap();
        let left: Vec<String> = store.list(None, 0).into_iter().map(|e| e.token).collect();
        assert_eq!(left, [bb]);
        drop(dir);
    }

    /// A parameter given more than once is refused naming it, before anything else is read: a delete naming two
    /// tokens deletes neither (not the last alone), a list filtered by two domains lists nothing.
    #[tokio::test]
    async fn a_parameter_given_twice_is_refused_naming_it() {
        let aa = "aa".repeat(32);
        let bb = "bb".repeat(32);
        let (_dir, store) = store_with(&[("a.example", &aa, 1_000), ("a.example", &bb, 2_000)]);
        let refused =
            |name: &str| format!("{name}: given more than once; give each parameter once");
        for (query, name) in [
            (format!("domain=a.example&token={aa}&token={bb}"), "token"),
            (format!("domain=a.example&token={bb}&tok%65n={bb}"), "token"),
            (
                format!("domain=a.example&token={bb}&domain=b.example"),
                "domain",
            ),
            (
                format!("domain=a.example&token={bb}&domain=a.example"),
                "domain",
            ),
            (format!("token=zz&token={bb}&tokn=x"), "token"),
        ] {
            let (status, v) = body_of(delete_invalid_token(&store, &query)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {v}");
            assert_eq!(v["error"], refused(name), "{query}");
        }
        for (query, name) in [
            ("domain=a.example&domain=b.example", "domain"),
            ("since=0&s%69nce=5", "since"),
            ("since=yesterday&since=0&domian=x", "since"),
        ] {
            let (status, v) = answer(&store, query).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {v}");
            assert_eq!(v["error"], refused(name), "{query}");
        }
        let (_, all) = answer(&store, "").await;
        assert_eq!(all["tokens"].as_array().unwrap().len(), 2, "{all}");
    }

    /// A store too large to list on an async thread is listed on the blocking pool, with the same answer.
    #[tokio::test]
    async fn a_large_store_is_listed_the_same() {
        let entries: Vec<(String, String, u64)> = (0..LIST_INLINE_MAX as u64 + 5)
            .map(|i| {
                let domain = if i % 2 == 0 { "a.example" } else { "b.example" };
                (domain.to_owned(), format!("{i:064x}"), 1_000 + i)
            })
            .collect();
        let refs: Vec<(&str, &str, u64)> = entries
            .iter()
            .map(|(d, t, ts)| (d.as_str(), t.as_str(), *ts))
            .collect();
        let (_dir, store) = store_with(&refs);
        let (status, all) = answer(&store, "").await;
        assert_eq!(status, StatusCode::OK);
        let listed = all["tokens"].as_array().unwrap();
        assert_eq!(listed.len(), entries.len());
        // In the order herald learnt them, across domains.
        assert!(
            listed
                .windows(2)
                .all(|w| w[0]["learnt_ms"].as_u64() < w[1]["learnt_ms"].as_u64())
        );
    }
}
