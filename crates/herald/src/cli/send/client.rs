//! The REST client of `herald send` (and `herald demo`): batches of notifications to `POST /api/v1/push`, a few
//! requests in flight at once, every item's outcome collected into a [`Report`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::input::{Item, Options};

/// How long one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// The first pause before a `503`/`429` without `retry-after` is tried again; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(500);
/// The longest pause between two tries of a batch herald answered `503`/`429`.
const MAX_PAUSE: Duration = Duration::from_secs(30);
/// Longest `--idempotency-key` prefix: with `-` and a batch number the key stays within the server's 255.
pub const MAX_KEY_PREFIX_LEN: usize = 200;

/// How batches are sent again: each carries the `Idempotency-Key` `PREFIX-N` (N its number from 0), so that a try
/// of a batch after a `503` or `429` (or a rerun with the same prefix, batch size and input) is answered as the
/// first accepted try was and queues nothing again.
#[derive(Debug, Clone)]
pub struct Retry {
    /// The keys' prefix; `None`: no `Idempotency-Key` (and no try again, which could send a batch twice).
    pub key_prefix: Option<String>,
    /// How long after its first `503`/`429` a batch is tried again (after pauses doubling from 0.5 s up to 30 s,
    /// or the answer's `retry-after` when longer); zero: not tried again.
    pub retry_for: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            key_prefix: Some(uuid::Uuid::new_v4().simple().to_string()),
            retry_for: Duration::from_secs(60),
        }
    }
}

/// What one batch's requests came to: the outcomes (or the last request's failure) and how many requests it made.
pub struct Sent {
    pub result: Result<Vec<Outcome>, RequestError>,
    pub requests: usize,
}

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
            RequestError::Status { status, .. } => !matches!(status, 400 | 409 | 413),
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
    /// Whether herald has answered any request of this client (shared by its clones): once it has, a request lost
    /// in transit is a passing fault (a restart, a dropped connection) worth trying again with its key; before,
    /// it is a wrong URL or a herald not running, reported at once.
    answered: Arc<AtomicBool>,
}

/// Whether a failed request may be tried again with its `Idempotency-Key`.
enum TryAgain {
    /// The answer says what it will say again (a refusal, an answer herald should not give).
    Never,
    /// `503` or `429`: herald is busy; its `retry-after` in seconds, if any.
    Busy { retry_after: Option<u64> },
    /// No answer: the connection was refused, reset or timed out. The batch may or may not have been accepted;
    /// its key makes a try again safe either way.
    Lost,
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
            if certs.is_empty() {
                return Err(RequestError::Transport {
                    url,
                    message:
                        "--ca: no CA certificate found (the file holds no PEM CERTIFICATE block)"
                            .into(),
                });
            }
            builder = builder.tls_certs_only(certs);
        }
        let http = builder.build().map_err(|e| RequestError::Transport {
            url: url.clone(),
            message: error_chain(&e),
        })?;
        Ok(PushClient {
            http,
            url,
            api_key,
            answered: Arc::default(),
        })
    }

    /// Sends one batch with `Idempotency-Key` `key` (if any); a `503` or `429`, or a request lost in transit once
    /// herald has answered an earlier one, is tried again, with the same key, for up to `retry.retry_for` after the
    /// first (only with a key: without one a try again could queue the batch twice). The outcomes are in item
    /// order.
    pub async fn send_batch(
        &self,
        domain: &str,
        defaults: &Request,
        items: &[Item],
        key: Option<&str>,
        retry: &Retry,
    ) -> Sent {
        let body = request_body(domain, defaults, items);
        let mut requests = 0;
        let mut pause = FIRST_PAUSE;
        let mut give_up: Option<Instant> = None;
        loop {
            requests += 1;
            let mut req = self
                .http
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
            if let Some(key) = &self.api_key {
                req = req.bearer_auth(key);
            }
            if let Some(key) = key {
                req = req.header("idempotency-key", key);
            }
            let result = self.answer(req, items.len()).await;
            let retry_after = match &result {
                Err((_, TryAgain::Busy { retry_after })) if key.is_some() => *retry_after,
                Err((_, TryAgain::Lost))
                    if key.is_some() && self.answered.load(Ordering::Relaxed) =>
                {
                    None
                }
                _ => {
                    return Sent {
                        result: result.map_err(|(e, _)| e),
                        requests,
                    };
                }
            };
            // The spool or the queue is full, herald asks to slow down, or the request got no answer: the same
            // batch again, same key.
            let now = Instant::now();
            let deadline = *give_up.get_or_insert(now + retry.retry_for);
            let wait = retry_after.map_or(pause, |s| Duration::from_secs(s).max(pause));
            pause = (pause * 2).min(MAX_PAUSE);
            if now + wait > deadline {
                return Sent {
                    result: result.map_err(|(e, _)| e),
                    requests,
                };
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// One request's answer: the outcomes, or the failure with whether to try again.
    async fn answer(
        &self,
        req: reqwest::RequestBuilder,
        sent: usize,
    ) -> Result<Vec<Outcome>, (RequestError, TryAgain)> {
        let transport = |e: reqwest::Error| {
            (
                RequestError::Transport {
                    url: self.url.clone(),
                    message: error_chain(&e),
                },
                TryAgain::Lost,
            )
        };
        let answer = req.send().await.map_err(transport)?;
        self.answered.store(true, Ordering::Relaxed);
        let status = answer.status().as_u16();
        let retry_after = answer
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let text = answer.text().await.map_err(transport)?;
        if status != 202 {
            let message = serde_json::from_str::<ErrorAnswer>(&text)
                .map(|e| e.error)
                .unwrap_or_else(|_| text.trim().chars().take(300).collect());
            let again = match status {
                503 | 429 => TryAgain::Busy { retry_after },
                _ => TryAgain::Never,
            };
            return Err((
                RequestError::Status {
                    url: self.url.clone(),
                    status,
                    message,
                },
                again,
            ));
        }
        let parsed: Answer = serde_json::from_str(&text).map_err(|e| {
            (
                RequestError::Transport {
                    url: self.url.clone(),
                    message: format!("the 202 answer is not the expected JSON: {e}"),
                },
                TryAgain::Never,
            )
        })?;
        if parsed.results.len() != sent {
            return Err((
                RequestError::Mismatch {
                    url: self.url.clone(),
                    got: parsed.results.len(),
                    sent,
                },
                TryAgain::Never,
            ));
        }
        Ok(parsed
            .results
            .into_iter()
            .map(|r| match r.status.as_str() {
                "accepted" => Outcome::Accepted(r.id.unwrap_or_default()),
                _ => Outcome::Rejected(
                    r.reason
                        .unwrap_or_else(|| format!("status {:?} without a reason", r.status)),
                ),
            })
            .collect())
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
    /// Notifications in the batches that were sent (whatever came of them).
    pub sent: usize,
    /// HTTP requests made, tries again included.
    pub requests: usize,
    /// Batches sent, and batches never sent (after a failure that made sending more pointless).
    pub batches_sent: usize,
    pub batches_not_sent: usize,
    /// The items (indexes, in input order) that were never sent: their outcome is `Failed` with the reason sending
    /// stopped, but the server never saw them.
    pub not_sent: Vec<usize>,
    /// The `Idempotency-Key` prefix the batches carried.
    pub key_prefix: Option<String>,
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

    /// Items whose request failed (sent, but not answered with their outcome); those never sent are not counted.
    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Failed(_))) - self.not_sent.len()
    }

    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.outcomes.iter().filter(|o| f(o)).count()
    }

    /// Reasons of refused (or failed) items and how many had each, most frequent first.
    pub fn grouped(&self, failed: bool) -> Vec<(String, usize)> {
        let mut map: BTreeMap<&str, usize> = BTreeMap::new();
        let mut unsent = self.not_sent.iter().peekable();
        for (i, o) in self.outcomes.iter().enumerate() {
            if unsent.next_if(|&&u| u == i).is_some() {
                continue;
            }
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
/// of items finished so far. A fatal request failure (connection refused, wrong key, unknown path, a `503` still
/// answered when its tries ran out) stops the run: the remaining items are not sent, and count as failed with
/// the same reason.
pub async fn send_all(
    client: &PushClient,
    domain: &str,
    defaults: &Request,
    items: Vec<Item>,
    batch: usize,
    parallel: usize,
    progress: impl Fn(usize) + Send + Sync + 'static,
) -> Report {
    let retry = Retry::default();
    send_all_with(
        client, domain, defaults, items, batch, parallel, &retry, progress,
    )
    .await
}

/// As [`send_all`], the batches carrying the keys and tried again as `retry` says.
#[allow(clippy::too_many_arguments)]
pub async fn send_all_with(
    client: &PushClient,
    domain: &str,
    defaults: &Request,
    items: Vec<Item>,
    batch: usize,
    parallel: usize,
    retry: &Retry,
    progress: impl Fn(usize) + Send + Sync + 'static,
) -> Report {
    let started = Instant::now();
    let batch = batch.max(1);
    let total = items.len();
    let items = Arc::new(items);
    let chunks: Vec<(usize, (usize, usize))> = (0..total)
        .step_by(batch)
        .map(|s| (s, (s + batch).min(total)))
        .enumerate()
        .collect();
    let queue = Arc::new(std::sync::Mutex::new(chunks.into_iter()));
    let fatal: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let first_failure: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let progress = Arc::new(progress);
    let domain: Arc<str> = Arc::from(domain);
    let defaults = Arc::new(defaults.clone());
    let retry = Arc::new(retry.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..parallel.max(1) {
        let (client, items, queue, fatal, first_failure, done, progress, domain, defaults, retry) = (
            client.clone(),
            items.clone(),
            queue.clone(),
            fatal.clone(),
            first_failure.clone(),
            done.clone(),
            progress.clone(),
            domain.clone(),
            defaults.clone(),
            retry.clone(),
        );
        tasks.spawn(async move {
            // (start, outcomes, sent, requests)
            let mut results = Vec::new();
            loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).next();
                let Some((n, (start, end))) = next else { break };
                let stopped = fatal.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let (outcomes, sent, requests) = match stopped {
                    Some(reason) => (vec![Outcome::Failed(reason); end - start], false, 0),
                    None => {
                        let key = retry.key_prefix.as_ref().map(|p| format!("{p}-{n}"));
                        let sent = client
                            .send_batch(
                                &domain,
                                &defaults,
                                &items[start..end],
                                key.as_deref(),
                                &retry,
                            )
                            .await;
                        match sent.result {
                            Ok(o) => (o, true, sent.requests),
                            Err(e) => {
                                first_failure
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .get_or_insert_with(|| e.to_string());
                                if e.is_fatal() {
                                    *fatal.lock().unwrap_or_else(|p| p.into_inner()) =
                                        Some(e.reason());
                                }
                                (
                                    vec![Outcome::Failed(e.reason()); end - start],
                                    true,
                                    sent.requests,
                                )
                            }
                        }
                    }
                };
                let n = done.fetch_add(end - start, std::sync::atomic::Ordering::Relaxed);
                progress(n + end - start);
                results.push((start, outcomes, sent, requests));
            }
            results
        });
    }
    let mut outcomes = vec![Outcome::Failed("not sent".into()); total];
    let mut was_sent = vec![false; total];
    let (mut requests, mut batches_sent, mut batches_not_sent) = (0, 0, 0);
    while let Some(joined) = tasks.join_next().await {
        let Ok(results) = joined else { continue };
        for (start, batch_outcomes, sent, made) in results {
            requests += made;
            if sent {
                batches_sent += 1;
            } else {
                batches_not_sent += 1;
            }
            for (i, o) in batch_outcomes.into_iter().enumerate() {
                outcomes[start + i] = o;
                was_sent[start + i] = sent;
            }
        }
    }
    let not_sent: Vec<usize> = (0..total).filter(|&i| !was_sent[i]).collect();
    let first_failure = first_failure
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    Report {
        sent: total - not_sent.len(),
        requests,
        batches_sent,
        batches_not_sent,
        not_sent,
        key_prefix: retry.key_prefix.clone(),
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
