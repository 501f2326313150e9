//! `Idempotency-Key` on the injection routes (`POST /api/v1/push`, `POST /v1.0/inject`): the same key with the
//! same body within [`TTL`] answers the first request's answer again and queues nothing; the same key with another
//! body is a `409` naming the key; the same key while its first request is still running is a `409` too.
//!
//! Keys are scoped by route. Only accepted requests (2xx answers) are remembered: a refused one may be retried as
//! is. The answer is written synced to the [`OutcomeStore`] in the spool directory after the notifications are
//! durable and before it is sent, so a key the client saw acknowledged still deduplicates after a crash.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_spool::OutcomeStore;
use sha2::{Digest, Sha256};

use super::error::{ApiError, json_response};

/// How long an accepted key is remembered.
pub const TTL: Duration = Duration::from_secs(24 * 3600);
/// The header.
pub const HEADER: &str = "idempotency-key";
/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 255;

/// The idempotency keys of every REST listener of a server.
pub struct Idempotency {
    store: Arc<OutcomeStore>,
    running: Mutex<HashSet<Vec<u8>>>,
}

/// Releases a running key when its request ends, however it ends.
struct Running<'a> {
    owner: &'a Idempotency,
    key: Vec<u8>,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.owner
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Idempotency {
    pub fn new(store: Arc<OutcomeStore>) -> Self {
        Idempotency {
            store,
            running: Mutex::new(HashSet::new()),
        }
    }

    /// Runs `handle` unless `headers` carry a key seen before: then answers as described in the module
    /// documentation. `momentum` selects the error shape of `/v1.0/inject`.
    pub async fn run<F>(
        &self,
        route: &str,
        headers: &HeaderMap,
        body: &Bytes,
        momentum: bool,
        handle: F,
    ) -> Result<Response, ApiError>
    where
        F: Future<Output = Result<Response, ApiError>>,
    {
        let err = |e: ApiError| if momentum { e.momentum() } else { e };
        let Some(value) = headers.get(HEADER) else {
            return handle.await;
        };
        let key_text = match value.to_str() {
            Ok(k) if !k.is_empty() && k.len() <= MAX_KEY_LEN => k.to_owned(),
            _ => {
                return Err(err(ApiError::bad_request(format!(
                    "Idempotency-Key: must be 1 to {MAX_KEY_LEN} visible ASCII characters"
                ))));
            }
        };
        let mut key = Vec::with_capacity(route.len() + 1 + key_text.len());
        key.extend_from_slice(route.as_bytes());
        key.push(0);
        key.extend_from_slice(key_text.as_bytes());
        let digest: [u8; 32] = Sha256::digest(body).into();
        let stored = self
            .store
            .idempotent_get(&key, now_ms())
            .map_err(|e| err(ApiError::unavailable(format!("Idempotency-Key: {e}"))))?;
        if let Some(stored) = stored {
            return replay(&stored, &digest, &key_text).map_err(err);
        }
        let _running = {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            if !running.insert(key.clone()) {
                return Err(err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "Idempotency-Key {key_text:?}: a request with this key is still being processed; retry once it has been answered"
                    ),
                )));
            }
            Running {
                owner: self,
                key: key.clone(),
            }
        };
        // A request with this key may have finished between the lookup and the claim.
        if let Ok(Some(stored)) = self.store.idempotent_get(&key, now_ms()) {
            return replay(&stored, &digest, &key_text).map_err(err);
        }
        let response = handle.await?;
        let status = response.status();
        if !status.is_success() {
            return Ok(response);
        }
        let (parts, body) = response.into_parts();
        // The answer is built in memory already, bounded by the request's own limits: it is remembered whatever its
        // size, since the notifications it accepted are queued and a retry must not queue them again.
        let bytes = axum::body::to_bytes(body, usize::MAX).await.map_err(|e| {
            err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                e.to_string(),
            ))
        })?;
        let mut value = Vec::with_capacity(34 + bytes.len());
        value.extend_from_slice(&digest);
        value.extend_from_slice(&status.as_u16().to_be_bytes());
        value.extend_from_slice(&bytes);
        let expires = now_ms() + TTL.as_millis() as u64;
        let store = self.store.clone();
        let key_for_write = key.clone();
        let written = tokio::task::spawn_blocking(move || {
            store.idempotent_put(&key_for_write, expires, &value, true)
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            // The notifications are queued: the answer goes out all the same (a refusal now would have the sender
            // retry, and queue them again under new ids); only a retry with this key would run again.
            Ok(Err(e)) => {
                tracing::warn!(key = %key_text, "cannot remember an idempotency key (the answer is sent; a retry with this key would be processed again): {e}")
            }
            Err(e) => {
                tracing::warn!(key = %key_text, "cannot remember an idempotency key (the answer is sent; a retry with this key would be processed again): {e}")
            }
        }
        Ok(Response::from_parts(parts, axum::body::Body::from(bytes)))
    }
}

/// The first answer again, or 409 when the body differs.
fn replay(stored: &[u8], digest: &[u8; 32], key: &str) -> Result<Response, ApiError> {
    if stored.len() < 34 || &stored[..32] != digest {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "Idempotency-Key {key:?} was used within the last 24 hours for a request with another body; use a new key for a new request"
            ),
        ));
    }
    let status = StatusCode::from_u16(u16::from_be_bytes([stored[32], stored[33]]))
        .unwrap_or(StatusCode::OK);
    let text = String::from_utf8_lossy(&stored[34..]).into_owned();
    let mut response = json_response(status, text);
    response.headers_mut().insert(
        "idempotent-replayed",
        axum::http::HeaderValue::from_static("true"),
    );
    Ok(response.into_response())
}
