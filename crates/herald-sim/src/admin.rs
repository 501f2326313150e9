//! The admin port (HTTP/1.1, no TLS): what arrived and a few levers for tests. It has no authentication, so it
//! listens on its own address, [`crate::SimConfig::admin_ip`] (127.0.0.1 by default), not on `listen_ip`.
//!
//! - `GET /stats`: [`crate::stats::StatsSnapshot`] as JSON.
//! - `GET /record`: the in-memory delivery record as JSON lines (when kept in memory), oldest first; the header
//!   `herald-sim-records-dropped` says how many older ones were dropped to keep it within its limit.
//! - `GET /healthz`: `ok`.
//! - `POST /tokens` with `{"token": "<hex>", "state": "unregistered"|"expired"|"bad"|"active", "topic": …,
//!   "timestamp_ms": …}`: changes a token's state (unregistered tokens also go to the feedback list).
//! - `POST /shutdown-binary`: every binary connection sends error status 10 (shutdown) and closes.
//! - `POST /goaway`: every HTTP/2 connection (device, channel management and broadcast ports) sends GOAWAY
//!   `{"reason":"Shutdown"}` and closes.
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

/// Writes the memory record to `out` as JSON lines, oldest first, and returns how many records were dropped before
/// them. The lock is held only to copy the list of (shared) records: serialising up to
/// [`crate::SimConfig::record_memory_limit`] records under it would hold back every request the simulator accepts
/// meanwhile, since each one takes it to add its record.
fn write_record(mem: &Mutex<MemoryRecord>, out: &mut impl std::io::Write) -> u64 {
    let (records, dropped) = mem.lock().unwrap_or_else(|e| e.into_inner()).snapshot();
    for rec in &records {
        if serde_json::to_writer(&mut *out, &**rec).is_ok() {
            let _ = out.write_all(b"\n");
        }
    }
    dropped
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
                let dropped = write_record(mem, &mut out);
                let mut r = reply(StatusCode::OK, "application/x-ndjson", out);
                r.headers_mut().insert(
                    "herald-sim-records-dropped",
                    http::HeaderValue::from(dropped),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{DeliveryRecord, RecordProtocol, Recorder};

    /// A sink that, at every write, checks whether the memory record's lock is free.
    struct Probe<'a> {
        mem: &'a Mutex<MemoryRecord>,
        writes: usize,
        while_locked: usize,
        out: Vec<u8>,
    }

    impl std::io::Write for Probe<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.writes += 1;
            if self.mem.try_lock().is_err() {
                self.while_locked += 1;
            }
            self.out.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// `GET /record` serialises a copy of the record taken under its lock, not the record under the lock, which
    /// every accepted request takes to add its own (a benchmark polling `/record` must not hold acceptance back):
    /// while it writes, the lock is free. It still writes every kept record, oldest first, and the dropped count.
    #[tokio::test]
    async fn the_record_is_serialised_without_holding_its_lock() {
        let recorder = Recorder::start(None, true, 3).unwrap();
        for i in 0..5u8 {
            let mut rec = DeliveryRecord {
                protocol: RecordProtocol::H2,
                token: format!("{i:02x}"),
                topic: "com.example.app".into(),
                apns_id: None,
                priority: 10,
                expiration: None,
                collapse_id: None,
                push_type: None,
                payload: String::new(),
                payload_base64: None,
                identifier: None,
                format: None,
                received_ms: 0,
                channel_id: None,
            };
            rec.set_payload(br#"{"aps":{"alert":"x"}}"#);
            recorder.slot().await.push(rec);
        }
        let mut probe = Probe {
            mem: &recorder.memory,
            writes: 0,
            while_locked: 0,
            out: Vec::new(),
        };
        let dropped = write_record(&recorder.memory, &mut probe);
        assert_eq!(dropped, 2);
        assert!(probe.writes > 0);
        assert_eq!(
            probe.while_locked, 0,
            "{} of {} writes made while the record was locked",
            probe.while_locked, probe.writes
        );
        let tokens: Vec<String> = String::from_utf8(probe.out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<DeliveryRecord>(l).unwrap().token)
            .collect();
        assert_eq!(tokens, ["02", "03", "04"]);
    }
}
