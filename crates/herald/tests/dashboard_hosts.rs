//! DNS rebinding against the dashboard, over a real listener: a browser reading the dashboard by its address (an
//! `always_allow` client, no key) must address it by an IP literal, `localhost` or a name of the listen stanza's
//! `dashboard_hosts`. A page of evil.example whose name was rebound to herald's address is the dashboard's own
//! origin to the browser, and is refused (401, naming the host); a key, or a request that is not a browser's, is
//! not affected.

use std::sync::Arc;

use herald::server::Server;
use reqwest::StatusCode;
use reqwest::header::HOST;

mod support;

const KEY: &str = "reader-key-5f20c1";

struct Setup {
    _dir: tempfile::TempDir,
    _server: Arc<Server>,
    /// The listen stanza without `dashboard_hosts`.
    plain: u16,
    /// The listen stanza with `dashboard_hosts = ( "herald.internal" )`.
    named: u16,
    client: reqwest::Client,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (plain, named) = (support::free_port(), support::free_port());
    let config = dir.path().join("herald.conf");
    std::fs::write(
        &config,
        format!(
            r#"spool_dir = "{spool}"
http_listener {{
  api_key = "{KEY}"
  always_allow = ( "127.0.0.1" )
  listen "127.0.0.1:{plain}" {{ http_services = ( dashboard ) }}
  listen "127.0.0.1:{named}" {{
    http_services = ( dashboard )
    dashboard_hosts = ( "herald.internal" )
  }}
}}
"#,
            spool = dir.path().join("spool").display(),
        ),
    )
    .unwrap();
    let server = Server::start(&config).await.unwrap();
    let ports: Vec<u16> = server.addrs().await.http.iter().map(|a| a.port()).collect();
    assert!(
        ports.contains(&plain) && ports.contains(&named),
        "{ports:?}"
    );
    Setup {
        _dir: dir,
        _server: server,
        plain,
        named,
        client: reqwest::Client::new(),
    }
}

/// `GET /dashboard/api/config` on 127.0.0.1:`port` with the `Host` header `host`, as a page's script sends it
/// (`sec-fetch-site: same-origin`) unless `browser` is false; with `key` if given. Returns the status and body.
async fn get(
    s: &Setup,
    port: u16,
    host: &str,
    browser: bool,
    key: Option<&str>,
) -> (StatusCode, String) {
    let mut request = s
        .client
        .get(format!("http://127.0.0.1:{port}/dashboard/api/config"))
        .header(HOST, host);
    if browser {
        request = request.header("sec-fetch-site", "same-origin");
    }
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let r = request.send().await.unwrap();
    (r.status(), r.text().await.unwrap())
}

#[tokio::test]
async fn a_rebound_host_name_cannot_read_the_dashboard_by_address() {
    let s = setup().await;
    let evil = format!("evil.example:{}", s.plain);
    let (status, body) = get(&s, s.plain, &evil, true, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let error = serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        error.contains(&format!("{evil:?}")) && error.contains("dashboard_hosts"),
        "{error}"
    );
    // The same browser under the listener's address, or under localhost.
    for host in [
        format!("127.0.0.1:{}", s.plain),
        format!("localhost:{}", s.plain),
    ] {
        let (status, body) = get(&s, s.plain, &host, true, None).await;
        assert_eq!(status, StatusCode::OK, "{host}: {body}");
    }
    // A name of dashboard_hosts, on the listen stanza that lists it only.
    let internal = |port: u16| format!("herald.internal:{port}");
    let (status, body) = get(&s, s.named, &internal(s.named), true, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = get(&s, s.plain, &internal(s.plain), true, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = get(
        &s,
        s.named,
        &format!("evil.example:{}", s.named),
        true,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    // A script (no sec-fetch-site, no origin) and a key are not affected.
    let (status, body) = get(&s, s.plain, &evil, false, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = get(&s, s.plain, &evil, true, Some(KEY)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
