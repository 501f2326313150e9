//! The REST client of `herald send` (and `herald demo`): batches of notifications to `POST /api/v1/push`, a few
//! requests in flight at once, every item's outcome collected into a [`Report`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::input::{Item, Options};

/// How long one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a `503` (spool full or failing) is tried again before the batch counts as failed.
const RETRIES_ON_503: u32 = 5;

/// Why a whole request failed (every item in it counts as failed).
#[derive(Debug, Clone, thiserror::Error)]
pub enum RequestError {
    #[error("POST {url}: {message}")]
    Transport { url: String, message: String },
    #[error("POST {url}: HTTP {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("POST {url}: the answer has {got} results for {sent} notifications")]
    Mismatch {
        url: String,
        got: usize,
        sent: usize,
    },
}

impl RequestError {
    /// Whether sending more batches is pointless (the server or the credentials are wrong, not the batch).
    fn is_fatal(&self) -> bool {
        match self {
            RequestError::Transport { .. } | RequestError::Mismatch { .. } => true,
            RequestError::Status { status, .. } => !matches!(status, 400 | 413),
        }
    }

    /// The text to group failures by.
    fn reason(&self) -> String {
        match self {
            RequestError::Transport { message, .. } => message.clone(),
            RequestError::Status {
                status, message, ..
            } => format!("HTTP {status}: {message}"),
            RequestError::Mismatch { .. } => self.to_string(),
        }
    }
}

/// The outcome of one notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted: herald's message id.
    Accepted(String),
    /// Refused at the door, with herald's reason.
    Rejected(String),
    /// Its request failed (or was never sent after a fatal failure).
    Failed(String),
}

/// A client of one herald http listener.
#[derive(Clone)]
pub struct PushClient {
    http: reqwest::Client,
    url: String,
    api_key: Option<String>,
}

#[derive(Deserialize)]
struct Answer {
    results: Vec<AnswerItem>,
}

#[derive(Deserialize)]
struct AnswerItem {
    status: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: String,
}

impl PushClient {
    /// `base` is the listener's URL (`http://127.0.0.1:2081`); requests go to `BASE/api/v1/push`.
    pub fn new(base: &str, api_key: Option<String>) -> Result<PushClient, RequestError> {
        PushClient::with_ca(base, api_key, None)
    }

    /// As [`PushClient::new`]; for an `https://` listener, `ca_pem` (PEM certificates) replaces the system's
    /// trusted roots.
    pub fn with_ca(
        base: &str,
        api_key: Option<String>,
        ca_pem: Option<&[u8]>,
    ) -> Result<PushClient, RequestError> {
        let url = format!("{}/api/v1/push", base.trim_end_matches('/'));
        let mut builder = reqwest::Client::builder().timeout(REQUEST_TIMEOUT);
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                RequestError::Transport {
                    url: url.clone(),
                    message: format!("--ca: {}", error_chain(&e)),
                }
            })?;
            builder = builder.tls_certs_only(certs);
        }
        let http = builder.build().map_err(|e| RequestError::Transport {
            url: url.clone(),
            message: error_chain(&e),
        })?;
        Ok(PushClient { http, url, api_key })
    }

    /// Sends one batch; the outcomes are in item order.
    pub async fn send(
        &self,
        domain: &str,
        defaults: &Request,
        items: &[Item],
    ) -> Result<Vec<Outcome>, RequestError> {
        let body = request_body(domain, defaults, items);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self
                .http
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
            if let Some(key) = &self.api_key {
                req = req.bearer_auth(key);
            }
            let transport = |e: reqwest::Error| RequestError::Transport {
                url: self.url.clone(),
                message: error_chain(&e),
            };
            let answer = req.send().await.map_err(transport)?;
            let status = answer.status().as_u16();
            let retry_after = answer
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let text = answer.text().await.map_err(transport)?;
            if status == 503 && attempt <= RETRIES_ON_503 {
                // The spool is full or failing: herald asks to try again later.
                let wait = Duration::from_secs(retry_after.unwrap_or(1).clamp(1, 10));
                tokio::time::sleep(wait).await;
                continue;
            }
            if status != 202 {
                let message = serde_json::from_str::<ErrorAnswer>(&text)
                    .map(|e| e.error)
                    .unwrap_or_else(|_| text.trim().chars().take(300).collect());
                return Err(RequestError::Status {
                    url: self.url.clone(),
                    status,
                    message,
                });
            }
            let parsed: Answer =
                serde_json::from_str(&text).map_err(|e| RequestError::Transport {
                    url: self.url.clone(),
                    message: format!("the 202 answer is not the expected JSON: {e}"),
                })?;
            if parsed.results.len() != items.len() {
                return Err(RequestError::Mismatch {
                    url: self.url.clone(),
                    got: parsed.results.len(),
                    sent: items.len(),
                });
            }
            return Ok(parsed
                .results
                .into_iter()
                .map(|r| match r.status.as_str() {
                    "accepted" => Outcome::Accepted(r.id.unwrap_or_default()),
                    _ => Outcome::Rejected(
                        r.reason
                            .unwrap_or_else(|| format!("status {:?} without a reason", r.status)),
                    ),
                })
                .collect());
        }
    }
}

impl PushClient {
    /// The states of up to 1,000 notifications (`POST /api/v1/notifications/query`): (found, not found).
    pub async fn statuses(
        &self,
        ids: &[String],
    ) -> Result<(Vec<serde_json::Value>, Vec<serde_json::Value>), RequestError> {
        let url = self
            .url
            .replace("/api/v1/push", "/api/v1/notifications/query");
        let transport = |e: reqwest::Error| RequestError::Transport {
            url: url.clone(),
            message: error_chain(&e),
        };
        let mut req = self
            .http
            .post(&url)
            .json(&serde_json::json!({ "ids": ids }));
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let answer = req.send().await.map_err(transport)?;
        let status = answer.status().as_u16();
        let text = answer.text().await.map_err(transport)?;
        if status != 200 {
            return Err(RequestError::Status {
                url,
                status,
                message: text.trim().chars().take(300).collect(),
            });
        }
        let mut v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| RequestError::Transport {
                url: url.clone(),
                message: format!("the answer is not the expected JSON: {e}"),
            })?;
        let take = |v: &mut serde_json::Value, k: &str| match v[k].take() {
            serde_json::Value::Array(a) => a,
            _ => Vec::new(),
        };
        Ok((take(&mut v, "notifications"), take(&mut v, "not_found")))
    }
}

impl PushClient {
    /// The state of one notification (`GET /api/v1/notifications/ID`): the answer's HTTP status and its JSON (an
    /// object with `error` when the answer is not JSON).
    pub async fn status(&self, id: &str) -> Result<(u16, serde_json::Value), RequestError> {
        let url = self
            .url
            .replace("/api/v1/push", &format!("/api/v1/notifications/{id}"));
        let transport = |e: reqwest::Error| RequestError::Transport {
            url: url.clone(),
            message: error_chain(&e),
        };
        let mut req = self.http.get(&url);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let answer = req.send().await.map_err(transport)?;
        let status = answer.status().as_u16();
        let text = answer.text().await.map_err(transport)?;
        let v = serde_json::from_str(&text).unwrap_or_else(
            |_| serde_json::json!({ "error": text.trim().chars().take(300).collect::<String>() }),
        );
        Ok((status, v))
    }
}

impl PushClient {
    /// Sends one broadcast (`POST /api/v1/broadcast`): the body is the JSON text `body`, byte for byte; the
    /// answer's `id`.
    pub async fn broadcast(&self, body: String) -> Result<String, RequestError> {
        let url = self.url.replace("/api/v1/push", "/api/v1/broadcast");
        let transport = |e: reqwest::Error| RequestError::Transport {
            url: url.clone(),
            message: error_chain(&e),
        };
        let mut req = self
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let answer = req.send().await.map_err(transport)?;
        let status = answer.status().as_u16();
        let text = answer.text().await.map_err(transport)?;
        if status != 202 {
            let message = serde_json::from_str::<ErrorAnswer>(&text)
                .map(|e| e.error)
                .unwrap_or_else(|_| text.trim().chars().take(300).collect());
            return Err(RequestError::Status {
                url,
                status,
                message,
            });
        }
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| RequestError::Transport {
                url: url.clone(),
                message: format!("the answer is not the expected JSON: {e}"),
            })?;
        Ok(v["id"].as_str().unwrap_or_default().to_owned())
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// What every notification of a run shares: the default payload and options (the request's top level).
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub payload: Option<Box<serde_json::value::RawValue>>,
    pub options: Options,
}

/// The JSON body for one batch: the `tokens` form when every item takes the shared payload and options,
/// otherwise the `notifications` form with the shared options at the top.
pub fn request_body(domain: &str, defaults: &Request, items: &[Item]) -> String {
    let mut out = String::with_capacity(64 + items.len() * 90);
    out.push_str("{\"domain\":");
    push_str(&mut out, domain);
    push_options(&mut out, &defaults.options);
    let plain = items
        .iter()
        .all(|i| i.payload.is_none() && i.options.is_empty());
    match (&defaults.payload, plain) {
        (Some(payload), true) => {
            out.push_str(",\"payload\":");
            out.push_str(payload.get());
            out.push_str(",\"tokens\":[");
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                push_str(&mut out, &item.token);
            }
        }
        _ => {
            out.push_str(",\"notifications\":[");
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                out.push_str("{\"token\":");
                push_str(&mut out, &item.token);
                out.push_str(",\"payload\":");
                match (&item.payload, &defaults.payload) {
                    (Some(p), _) | (None, Some(p)) => out.push_str(p.get()),
                    // Nothing to send: herald names the problem for this item.
                    (None, None) => out.push_str("null"),
                }
                push_options(&mut out, &item.options);
                out.push('}');
            }
        }
    }
    out.push_str("]}");
    out
}

fn push_str(out: &mut String, s: &str) {
    // Serializing a string cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

fn push_options(out: &mut String, o: &Options) {
    let mut text = |name: &str, v: &Option<String>| {
        if let Some(v) = v {
            out.push_str(",\"");
            out.push_str(name);
            out.push_str("\":");
            push_str(out, v);
        }
    };
    text("apns_id", &o.apns_id);
    text("topic", &o.topic);
    text("push_type", &o.push_type);
    text("collapse_id", &o.collapse_id);
    if let Some(p) = o.priority {
        out.push_str(&format!(",\"priority\":{p}"));
    }
    if let Some(e) = o.expiration {
        out.push_str(&format!(",\"expiration\":{e}"));
    }
}

/// The outcome of a whole run.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub sent: usize,
    pub requests: usize,
    /// Outcome of each item, in input order.
    pub outcomes: Vec<Outcome>,
    pub elapsed: Duration,
    /// The first failed request in full, with its URL and the whole cause (`connection refused`, a DNS failure):
    /// the summary groups failures by a shortened reason.
    pub first_failure: Option<String>,
}

impl Report {
    pub fn accepted(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Accepted(_)))
    }

    pub fn rejected(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Rejected(_)))
    }

    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Failed(_)))
    }

    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.outcomes.iter().filter(|o| f(o)).count()
    }

    /// Reasons of refused (or failed) items and how many had each, most frequent first.
    pub fn grouped(&self, failed: bool) -> Vec<(String, usize)> {
        let mut map: BTreeMap<&str, usize> = BTreeMap::new();
        for o in &self.outcomes {
            match (o, failed) {
                (Outcome::Rejected(r), false) | (Outcome::Failed(r), true) => {
                    *map.entry(general_reason(r)).or_default() += 1
                }
                _ => {}
            }
        }
        let mut v: Vec<(String, usize)> = map.into_iter().map(|(r, n)| (r.to_owned(), n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }

    pub fn is_clean(&self) -> bool {
        self.accepted() == self.outcomes.len()
    }
}

/// A reason without its per-item detail, so that reasons group: `device token: device token has a non-hex
/// character 'z' at position 3` groups as `device token: device token has a non-hex character`.
fn general_reason(reason: &str) -> &str {
    let cut = [" at position ", " '", " ("]
        .iter()
        .filter_map(|m| reason.find(m))
        .min()
        .unwrap_or(reason.len());
    &reason[..cut]
}

/// Sends `items` in batches of `batch`, `parallel` requests at a time; `progress` is called with the number
/// of items finished so far. A fatal request failure (connection refused, wrong key, unknown path) stops the
/// run: the remaining items count as failed with the same reason.
pub async fn send_all(
    client: &PushClient,
    domain: &str,
    defaults: &Request,
    items: Vec<Item>,
    batch: usize,
    parallel: usize,
    progress: impl Fn(usize) + Send + Sync + 'static,
) -> Report {
    let started = Instant::now();
    let batch = batch.max(1);
    let total = items.len();
    let items = Arc::new(items);
    let chunks: Vec<(usize, usize)> = (0..total)
        .step_by(batch)
        .map(|s| (s, (s + batch).min(total)))
        .collect();
    let requests = chunks.len();
    let queue = Arc::new(std::sync::Mutex::new(chunks.into_iter()));
    let fatal: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let first_failure: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let progress = Arc::new(progress);
    let domain: Arc<str> = Arc::from(domain);
    let defaults = Arc::new(defaults.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..parallel.max(1) {
        let (client, items, queue, fatal, first_failure, done, progress, domain, defaults) = (
            client.clone(),
            items.clone(),
            queue.clone(),
            fatal.clone(),
            first_failure.clone(),
            done.clone(),
            progress.clone(),
            domain.clone(),
            defaults.clone(),
        );
        tasks.spawn(async move {
            let mut results = Vec::new();
            loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).next();
                let Some((start, end)) = next else { break };
                let stopped = fatal.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let outcomes = match stopped {
                    Some(reason) => vec![Outcome::Failed(reason); end - start],
                    None => match client.send(&domain, &defaults, &items[start..end]).await {
                        Ok(o) => o,
                        Err(e) => {
                            first_failure
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert_with(|| e.to_string());
                            if e.is_fatal() {
                                *fatal.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.reason());
                            }
                            vec![Outcome::Failed(e.reason()); end - start]
                        }
                    },
                };
                let n = done.fetch_add(end - start, std::sync::atomic::Ordering::Relaxed);
                progress(n + end - start);
                results.push((start, outcomes));
            }
            results
        });
    }
    let mut outcomes = vec![Outcome::Failed("not sent".into()); total];
    while let Some(joined) = tasks.join_next().await {
        let Ok(results) = joined else { continue };
        for (start, batch_outcomes) in results {
            for (i, o) in batch_outcomes.into_iter().enumerate() {
                outcomes[start + i] = o;
            }
        }
    }
    let first_failure = first_failure
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    Report {
        sent: total,
        requests,
        outcomes,
        elapsed: started.elapsed(),
        first_failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn plain_items_use_the_tokens_form() {
        let defaults = Request {
            payload: Some(raw("{\"aps\":{\"alert\":\"x\"}}")),
            options: Options {
                priority: Some(5),
                ..Options::default()
            },
        };
        let body = request_body(
            "d.example",
            &defaults,
            &[Item::plain("aa"), Item::plain("bb")],
        );
        assert_eq!(
            body,
            r#"{"domain":"d.example","priority":5,"payload":{"aps":{"alert":"x"}},"tokens":["aa","bb"]}"#
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["tokens"][1], "bb");
    }

    #[test]
    fn items_with_their_own_payload_use_the_notifications_form() {
        let defaults = Request {
            payload: Some(raw("{}")),
            options: Options::default(),
        };
        let mut own = Item::plain("bb");
        own.payload = Some(raw("{\"n\" : 1}"));
        own.options.collapse_id = Some("c\"1".into());
        let body = request_body("d", &defaults, &[Item::plain("aa"), own]);
        assert_eq!(
            body,
            r#"{"domain":"d","notifications":[{"token":"aa","payload":{}},{"token":"bb","payload":{"n" : 1},"collapse_id":"c\"1"}]}"#
        );
    }

    #[test]
    fn reasons_group_without_their_detail() {
        let report = Report {
            outcomes: vec![
                Outcome::Accepted("1".into()),
                Outcome::Rejected(
                    "device token: device token has a non-hex character 'z' at position 3".into(),
                ),
                Outcome::Rejected(
                    "device token: device token has a non-hex character 'q' at position 9".into(),
                ),
                Outcome::Rejected("payload: too large".into()),
                Outcome::Failed("HTTP 401: no key".into()),
            ],
            ..Report::default()
        };
        assert_eq!(
            report.grouped(false),
            vec![
                (
                    "device token: device token has a non-hex character".to_string(),
                    2
                ),
                ("payload: too large".to_string(), 1)
            ]
        );
        assert_eq!(
            report.grouped(true),
            vec![("HTTP 401: no key".to_string(), 1)]
        );
        assert_eq!(
            (report.accepted(), report.rejected(), report.failed()),
            (1, 3, 1)
        );
        assert!(!report.is_clean());
    }
}
