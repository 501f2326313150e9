//! docs/openapi.yaml declares what each dashboard route answers while herald is stopping: the dashboard of a
//! server that is gone (its data calls and actions answer `503 herald is stopping`) is asked every route it serves,
//! with an admin key, and each answer's status is one the documentation lists for that route.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Weak};

use herald::control::ServerHandle;
use herald_conf::Config;
use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;

const KEY: &str = "k3y-admin";

/// The status codes each (METHOD, path) of the OpenAPI file's `paths` lists under `responses` (a line-level
/// reading: paths at two spaces, operations at four, sections at six, their entries at eight).
fn documented_statuses(yaml: &str) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    let (mut in_paths, mut path, mut operation, mut section) = (false, String::new(), None, "");
    for line in yaml.lines() {
        if !line.starts_with(' ') && !line.trim().is_empty() {
            in_paths = line.trim_end() == "paths:";
            continue;
        }
        if !in_paths || line.trim().is_empty() {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let text = line.trim().trim_end_matches(':');
        match indent {
            2 => path = text.trim_matches(['"', '\'']).to_string(),
            4 => operation = Some((text.to_ascii_uppercase(), path.clone())),
            6 => section = if text == "responses" { "responses" } else { "" },
            8 if section == "responses" => {
                if let Some(key) = &operation {
                    out.entry(key.clone())
                        .or_default()
                        .insert(text.trim_matches('"').to_string());
                }
            }
            _ => {}
        }
    }
    out
}

/// The dashboard of a server that is gone, for a listener whose one key has the admin right, served on
/// 127.0.0.1; returns its base URL.
async fn dashboard_without_server() -> String {
    let settings = Config::parse_str(
        "t.conf",
        &format!(
            "http_listener {{ listen \"127.0.0.1:0\" {{ api_key = \"{KEY}\" dashboard_admin_keys = ( \"{KEY}\" ) }} }}"
        ),
    )
    .unwrap()
    .listeners()
    .remove(0);
    let gone: Weak<dyn ServerHandle> = Weak::<herald::server::Server>::new();
    let app = herald::dashboard::routes(
        Arc::default(),
        gone,
        Arc::new(settings),
        Arc::default(),
        CancellationToken::new(),
    );
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", socket.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(socket, app).await });
    base
}

/// A route's path with its parameters filled in.
fn concrete(path: &str) -> String {
    path.replace("{domain}", "apps.example")
        .replace("{action}", "flush")
}

#[tokio::test]
async fn every_answer_of_the_dashboard_while_herald_is_stopping_is_documented() {
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/openapi.yaml"
    ))
    .unwrap();
    let documented = documented_statuses(&yaml);
    let base = dashboard_without_server().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut stopping = Vec::new();
    for (method, path) in herald::dashboard::api::ROUTES {
        let mut request = client
            .request(method.parse().unwrap(), format!("{base}{}", concrete(path)))
            .bearer_auth(KEY);
        if *path == "/dashboard/api/login" {
            request = request.json(&serde_json::json!({ "key": KEY }));
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let listed = documented
            .get(&(method.to_string(), path.to_string()))
            .unwrap_or_else(|| panic!("{method} {path} is not documented"));
        assert!(
            listed.contains(status.as_str()),
            "{method} {path} answers {status} while herald is stopping; docs/openapi.yaml lists {listed:?}"
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["error"], "herald is stopping", "{method} {path}");
            stopping.push(format!("{method} {path}"));
        }
    }
    // The calls that read or act on the running server.
    assert_eq!(
        stopping,
        [
            "GET /dashboard/api/overview",
            "GET /dashboard/api/domains",
            "GET /dashboard/api/domains/{domain}",
            "POST /dashboard/api/domains/{domain}/{action}",
            "GET /dashboard/api/config",
            "POST /dashboard/api/config/reload",
        ]
    );
}
