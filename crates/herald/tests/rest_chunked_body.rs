//! A REST request body sent with `Transfer-Encoding: chunked` in one-byte chunks, over a real socket to a running
//! herald: it arrives whole up to the listener's `max_request_size`, and one byte over it is refused with the same
//! `413` answer as any body whose size is not declared (docs/api.md). What it costs in memory is checked where the
//! body is read (`inbound::rest::error`): the chunks read are not kept while the rest is awaited.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herald::server::Server;
use herald_sim::Pki;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOPIC: &str = "com.example.chunked";
const DOMAIN: &str = "chunked.example";
const KEY: &str = "chunked-key";
/// The listener's `max_request_size`.
const LIMIT: usize = 4096;
/// How long a test waits for an answer (never a speed assertion).
const WAIT: Duration = Duration::from_secs(20);

struct Herald {
    _dir: tempfile::TempDir,
    server: Arc<Server>,
    http: SocketAddr,
}

impl Herald {
    /// A herald with one REST listener (an API key, `max_request_size = LIMIT`) and a domain whose route is a
    /// closed port: accepted notifications stay queued.
    async fn start() -> Herald {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let pki = Pki::generate(&path.join("pki"), &[TOPIC.to_string()]).unwrap();
        let config = path.join("herald.conf");
        std::fs::write(
            &config,
            format!(
                r#"
spool_dir = "{spool}"
http_listener {{ listen "127.0.0.1:0" {{ api_key = "{KEY}" max_request_size = {LIMIT} }} }}
domain "{DOMAIN}" {{
{credentials}  retry_interval = 3600
}}
"#,
                spool = path.join("spool").display(),
                credentials = support::token_auth_options(&pki, support::free_port(), TOPIC),
            ),
        )
        .unwrap();
        let server = Server::start(&config).await.unwrap();
        let http = server.addrs().await.http[0];
        Herald {
            _dir: dir,
            server,
            http,
        }
    }

    async fn stop(self) {
        self.server.shutdown(Duration::from_secs(2)).await;
    }
}

fn token(i: usize) -> String {
    format!("{:064x}", 0xc4a0_0000u64 + i as u64)
}

/// A `/api/v1/push` request whose body is `body` in one-byte chunks; with `end`, the last chunk follows, else the
/// request stays unfinished (a client still sending).
fn chunked_push(body: &[u8], end: bool) -> Vec<u8> {
    let mut request = format!(
        "POST /api/v1/push HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\
         content-type: application/json\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for &b in body {
        request.extend_from_slice(b"1\r\n");
        request.push(b);
        request.extend_from_slice(b"\r\n");
    }
    if end {
        request.extend_from_slice(b"0\r\n\r\n");
    }
    request
}

/// Sends `request` on a new connection and reads the answer: its status and JSON body. The connection stays open
/// until the answer is complete (its `content-length`), as a client holding back the rest of its body would.
async fn exchange(to: SocketAddr, request: &[u8]) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect(to).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let complete = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 8192];
        loop {
            let n = s.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head.lines().find_map(|l| {
                    let l = l.to_ascii_lowercase();
                    l.strip_prefix("content-length:")
                        .and_then(|v| v.trim().parse::<usize>().ok())
                });
                if len.is_some_and(|n| body.len() >= n) {
                    return;
                }
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(
        complete.is_ok(),
        "no complete answer within {WAIT:?}: {text:?}"
    );
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let (_, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no body in {text:?}"));
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    (status, json)
}

/// A push request for `tokens` tokens, padded with blanks to exactly `size` bytes.
fn push_body(tokens: usize, size: usize) -> Vec<u8> {
    let tokens: Vec<String> = (0..tokens).map(token).collect();
    let mut body = serde_json::json!({
        "domain": DOMAIN,
        "tokens": tokens,
        "payload": {"aps": {"alert": "one byte at a time"}},
    })
    .to_string()
    .into_bytes();
    assert!(
        body.len() <= size,
        "{} bytes do not fit in {size}",
        body.len()
    );
    body.resize(size, b' ');
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_in_one_byte_chunks_arrives_whole_up_to_max_request_size() {
    let h = Herald::start().await;

    // Exactly max_request_size, one byte per chunk: every token arrives intact (a byte lost or repeated would
    // break the JSON or a token).
    let (status, answer) = exchange(h.http, &chunked_push(&push_body(20, LIMIT), true)).await;
    assert_eq!(status, 202, "{answer}");
    let results = answer["results"].as_array().expect("results");
    assert_eq!(results.len(), 20, "{answer}");
    assert!(
        results.iter().all(|r| r["status"] == "accepted"),
        "{answer}"
    );

    // One byte more is refused as soon as it arrives, while the client still holds its last chunk, with the
    // answer of any undeclared body over the limit.
    let (status, answer) = exchange(h.http, &chunked_push(&push_body(20, LIMIT + 1), false)).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(
        answer,
        serde_json::json!({
            "error": format!(
                "request body is more than {LIMIT} bytes; this listener's max_request_size is {LIMIT}"
            )
        })
    );
    h.stop().await;
}
