//! The REST listener's 404 names a service the listener does not serve only when it does not serve it: an unknown
//! path under a service it serves (`/dashboard/…` on a listener with `dashboard` in its `http_services`) is no such
//! endpoint.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

/// `GET http://ADDR{path}`: the status and the answer's `error` text.
async fn error_of(
    client: &reqwest::Client,
    addr: std::net::SocketAddr,
    path: &str,
) -> (StatusCode, String) {
    let response = client
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let answer: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {text:?}"));
    (
        status,
        answer["error"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_path_of_a_served_service_is_no_such_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.conf");
    std::fs::write(
        &config,
        format!(
            r#"spool_dir = "{}"
http_listener {{
  listen "127.0.0.1:0" {{ http_services = ( push dashboard ) }}
  listen "127.0.0.2:0" {{ http_services = push }}
}}
"#,
            dir.path().join("spool").display()
        ),
    )
    .unwrap();
    let server = herald::server::Server::start(&config).await.unwrap();
    let addrs = server.addrs().await.http;
    let with_dashboard = *addrs
        .iter()
        .find(|a| a.ip().to_string() == "127.0.0.1")
        .unwrap();
    let without = *addrs
        .iter()
        .find(|a| a.ip().to_string() == "127.0.0.2")
        .unwrap();
    let client = reqwest::Client::new();

    // The listener serves the dashboard: the page is there, a path under it that is none of its routes is not.
    let page = client
        .get(format!("http://{with_dashboard}/dashboard/"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    for path in ["/dashboard/nonexistent", "/dashboard/api/nope"] {
        let (status, error) = error_of(&client, with_dashboard, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(error, format!("no such endpoint: GET {path}"), "{path}");
    }
    // A service this listener does not serve is still named, with the option that adds it.
    let (status, error) = error_of(&client, with_dashboard, "/metrics").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        error.contains(r#"does not serve "metrics" (see http_services"#),
        "{error}"
    );

    // The other listener does not serve the dashboard: its 404 says so.
    let (status, error) = error_of(&client, without, "/dashboard/nonexistent").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        error,
        "GET /dashboard/nonexistent: this listener does not serve \"dashboard\" (see http_services in its listen \
         stanza)"
    );
    server.shutdown(Duration::from_secs(1)).await;
}
