//! The admin port (HTTP/1.1, no TLS): what arrived and a few levers for tests.
//!
//! - `GET /stats`: [`crate::stats::StatsSnapshot`] as JSON.
//! - `GET /record`: the in-memory delivery record as JSON lines (when kept in memory), oldest first; the header
//!   `herald-sim-records-dropped` says how many older ones were dropped to keep it within its limit.
//! - `GET /healthz`: `ok`.
//! - `POST /tokens` with `{"token": "<hex>", "state": "unregistered"|"expired"|"bad"|"active", "topic": …,
//!   "timestamp_ms": …}`: changes a token's state (unregistered tokens also go to the feedback list).
//! - `POST /shutdown-binary`: every binary connection sends error status 10 (shutdown) and closes.
//! - `POST /goaway`: every HTTP/2 connection sends GOAWAY `{"reason":"Shutdown"}` and closes.
//! - `GET /pace`: `{"latency_ms": …, "latency_jitter_ms": …, "rate": …}`; `POST /pace` with any of these fields
//!   changes them while running (see [`crate::pace`]) and answers with every value; a latency or jitter over
//!   [`crate::pace::MAX_LATENCY_MS`] (one hour) is refused with 400 naming the field, and nothing changes.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::record::MemoryRecord;
use crate::registry::TokenRegistry;
use crate::scenario::TokenRule;
use crate::stats::Stats;

pub(crate) struct AdminContext {
    pub stats: Arc<Stats>,
    pub registry: Arc<TokenRegistry>,
    pub memory: Option<Arc<Mutex<MemoryRecord>>>,
    pub shutdown_binary: watch::Sender<u64>,
    pub goaway_all: watch::Sender<u64>,
    pub pace: Arc<crate::pace::Pace>,
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec(value) {
        Ok(v) => reply(status, "application/json", v),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            e.to_string(),
        ),
    }
}

async fn route(
    ctx: Arc<AdminContext>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let r = match (req.method(), req.uri().path()) {
        (&Method::GET, "/stats") => {
            let mut snapshot = ctx.stats.snapshot();
            if let Some(mem) = &ctx.memory {
                snapshot.records_dropped = mem.lock().unwrap_or_else(|e| e.into_inner()).dropped();
            }
            json(StatusCode::OK, &snapshot)
        }
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/record") => match &ctx.memory {
            Some(mem) => {
                let mut out = Vec::new();
                let mem = mem.lock().unwrap_or_else(|e| e.into_inner());
                for rec in mem.iter() {
                    if serde_json::to_writer(&mut out, rec).is_ok() {
                        out.push(b'\n');
                    }
                }
                let mut r = reply(StatusCode::OK, "application/x-ndjson", out);
                r.headers_mut().insert(
                    "herald-sim-records-dropped",
                    http::HeaderValue::from(mem.dropped()),
                );
                r
            }
            None => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "the record is not kept in memory\n",
            ),
        },
        (&Method::POST, "/shutdown-binary") => {
            ctx.shutdown_binary.send_modify(|g| *g += 1);
            json(StatusCode::OK, &serde_json::json!({"shutdown": true}))
        }
        (&Method::POST, "/goaway") => {
            ctx.goaway_all.send_modify(|g| *g += 1);
            json(StatusCode::OK, &serde_json::json!({"goaway": true}))
        }
        (&Method::GET, "/pace") => json(StatusCode::OK, &ctx.pace.get()),
        (&Method::POST, "/pace") => {
            let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return Ok(reply(
                        StatusCode::BAD_REQUEST,
                        "text/plain",
                        format!("cannot read body: {e}\n"),
                    ));
                }
            };
            match serde_json::from_slice::<crate::pace::PaceSettings>(&body) {
                Ok(settings) => match settings.check() {
                    Ok(()) => {
                        ctx.pace.set(settings);
                        tracing::info!(?settings, "pace changed");
                        json(StatusCode::OK, &ctx.pace.get())
                    }
                    Err(e) => reply(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
                },
                Err(e) => reply(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    format!("body: {e}\n"),
                ),
            }
        }
        (&Method::POST, "/tokens") => {
            let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return Ok(reply(
                        StatusCode::BAD_REQUEST,
                        "text/plain",
                        format!("cannot read body: {e}\n"),
                    ));
                }
            };
            match serde_json::from_slice::<TokenRule>(&body) {
                Ok(rule) => match herald_apns::token_hex::DeviceToken::from_hex(&rule.token) {
                    Ok(_) => {
                        ctx.registry.set(
                            &rule.token,
                            rule.state,
                            rule.topic.clone(),
                            rule.timestamp_ms,
                        );
                        json(StatusCode::OK, &rule)
                    }
                    Err(e) => reply(
                        StatusCode::BAD_REQUEST,
                        "text/plain",
                        format!("token: {e}\n"),
                    ),
                },
                Err(e) => reply(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    format!("body: {e}\n"),
                ),
            }
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    };
    Ok(r)
}

pub(crate) async fn serve(
    listener: TcpListener,
    ctx: Arc<AdminContext>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let Some((tcp, _)) = crate::accept::next_connection(&listener, &mut stop, "admin").await
        else {
            return;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| route(ctx.clone(), req));
            let io = hyper_util::rt::TokioIo::new(tcp);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!("admin connection: {e}");
            }
        });
    }
}
