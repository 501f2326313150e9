//! `DELETE /api/v1/tokens/invalid` on a running server (docs/api.md "Operator endpoints"): the listener's API keys
//! as for the `GET`, `404` for an entry the store does not hold, `400` for a malformed token, and a removal that a
//! restart does not undo.

use std::path::Path;
use std::time::Duration;

use herald::server::Server;
use herald::tokens::InvalidTokenEntry;
use reqwest::StatusCode;
use serde_json::Value;

const KEY: &str = "ops-key";

fn config(dir: &Path, spool: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{spool}.conf"));
    std::fs::write(
        &path,
        format!(
            r#"spool_dir = "{spool_dir}"
invalid_tokens_file = "{tokens}"
http_listener {{ listen "127.0.0.1:0" {{ api_keys = ( "{KEY}" ) }} }}
"#,
            spool_dir = dir.join(spool).display(),
            tokens = dir.join("invalid-tokens.jsonl").display(),
        ),
    )
    .unwrap();
    path
}

fn entry(token: &str, timestamp_ms: u64) -> InvalidTokenEntry {
    InvalidTokenEntry {
        domain: "apps.example".into(),
        token: token.into(),
        reason: "Unregistered".into(),
        timestamp_ms,
        learnt_ms: 0,
        source: "apns".into(),
        timestamp_from_apns: true,
    }
}

async fn listed(client: &reqwest::Client, base: &str) -> Vec<String> {
    let v: Value = client
        .get(format!("{base}/api/v1/tokens/invalid"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["token"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_invalid_token_stays_deleted_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let gone = "ab".repeat(32);
    let kept = "cd".repeat(32);
    let server = Server::start(&config(dir.path(), "one")).await.unwrap();
    assert!(server.invalid_tokens.record(entry(&gone, 1_000)));
    assert!(server.invalid_tokens.record(entry(&kept, 2_000)));
    let base = format!("http://{}", server.addrs().await.http[0]);
    let client = reqwest::Client::new();
    let delete = |query: String, key: Option<&'static str>| {
        let mut request = client.delete(format!("{base}/api/v1/tokens/invalid?{query}"));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };
    let query = format!("domain=apps.example&token={}", gone.to_uppercase());

    // The GET's API keys.
    let r = delete(query.clone(), None).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(listed(&client, &base).await, [gone.as_str(), kept.as_str()]);

    let r = delete(query.clone(), Some(KEY)).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["deleted"]["token"], gone.as_str());
    assert_eq!(listed(&client, &base).await, [kept.as_str()]);

    let r = delete(query.clone(), Some(KEY)).await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = delete("domain=apps.example&token=xyz".into(), Some(KEY))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().starts_with("token: "),
        "{body}"
    );

    server
        .invalid_tokens
        .flush(Duration::from_secs(30))
        .unwrap();
    server.shutdown(Duration::from_secs(2)).await;
    drop(server);

    // Another herald on the same store file (a spool of its own).
    let server = Server::start(&config(dir.path(), "two")).await.unwrap();
    let base = format!("http://{}", server.addrs().await.http[0]);
    assert_eq!(listed(&client, &base).await, [kept.as_str()]);
    let r = client
        .delete(format!("{base}/api/v1/tokens/invalid?{query}"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    server.shutdown(Duration::from_secs(2)).await;
}

/// A query parameter given twice is refused naming it (docs/api.md "Operator endpoints"), on the `GET` and the
/// `DELETE` alike, rather than the last one applying: a delete naming two tokens deletes neither. The API key is
/// checked first, as for any request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parameter_given_twice_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let one = "ab".repeat(32);
    let two = "cd".repeat(32);
    let server = Server::start(&config(dir.path(), "one")).await.unwrap();
    assert!(server.invalid_tokens.record(entry(&one, 1_000)));
    assert!(server.invalid_tokens.record(entry(&two, 2_000)));
    let base = format!("http://{}", server.addrs().await.http[0]);
    let client = reqwest::Client::new();
    for (method, query, name) in [
        (
            reqwest::Method::DELETE,
            format!("domain=apps.example&token={one}&token={two}"),
            "token",
        ),
        (
            reqwest::Method::DELETE,
            format!("domain=apps.example&token={one}&domain=apps.example"),
            "domain",
        ),
        (
            reqwest::Method::GET,
            "domain=apps.example&domain=other.example".into(),
            "domain",
        ),
        (reqwest::Method::GET, "since=0&s%69nce=5".into(), "since"),
    ] {
        let url = format!("{base}/api/v1/tokens/invalid?{query}");
        let r = client.request(method.clone(), &url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{method} {query}");
        let r = client
            .request(method.clone(), &url)
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{method} {query}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body["error"],
            format!("{name}: given more than once; give each parameter once"),
            "{method} {query}"
        );
    }
    assert_eq!(listed(&client, &base).await, [one.as_str(), two.as_str()]);
    server.shutdown(Duration::from_secs(2)).await;
}
