//! The apn_logger's T line of a notification whose route never opened a connection (a closed port): nothing was
//! sent, so `%B` is 0 and `%ti` empty (docs/operations.md, apn_logger fields: the size and the identifier as herald
//! sent them), on HTTP/2 as on the binary protocol, and as the mainlog's T line says 0 bytes.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use herald::server::Server;
use herald_sim::{CertVariant, Pki};
use support::{free_port, log_fields, token_auth_options};

const TOPIC: &str = "com.example.unsent";
const WAIT: Duration = Duration::from_secs(60);

fn tok(i: u64) -> String {
    format!("{:064x}", 0xb000 + i)
}

fn config(dir: &Path, pki: &Pki) -> String {
    let client = pki.client(TOPIC, CertVariant::Universal).unwrap();
    format!(
        r#"
spool_dir = "{spool}"
retry_interval = 600
max_retry_interval = 600
ec_logger "main" {{ mainlog = "{mainlog}" }}
apn_logger "all" {{ logfile = "{apnlog}" }}
http_listener {{ listen "127.0.0.1:0" {{ }} }}
domain "h2.example" {{
{h2}}}
domain "bin.example" {{
  delivery_method = apn
  routes = ( "apn://127.0.0.1?port={binary_port}" )
  tls_verify = ca
  tls_ca = "{ca}"
  tls_certificate = "{cert}"
  tls_key = "{key}"
}}
"#,
        spool = dir.join("spool").display(),
        mainlog = dir.join("mainlog.ec").display(),
        apnlog = dir.join("apnlog.ec").display(),
        h2 = token_auth_options(pki, free_port(), TOPIC),
        binary_port = free_port(),
        ca = pki.manifest.ca_cert.display(),
        cert = client.cert.display(),
        key = client.key.display(),
    )
}

async fn push(http: &str, domain: &str, token: &str) {
    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{http}/api/v1/push"))
        .json(&serde_json::json!({
            "domain": domain,
            "tokens": [token],
            "payload": {"aps": {"alert": "never sent"}},
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(answer["results"][0]["id"].is_string(), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_t_line_of_a_route_never_connected_says_nothing_was_sent() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let path = dir.path().join("herald.conf");
    std::fs::write(&path, config(dir.path(), &pki)).unwrap();
    let server = Server::start(&path).await.unwrap();
    let http = server.addrs().await.http[0].to_string();
    push(&http, "h2.example", &tok(1)).await;
    push(&http, "bin.example", &tok(2)).await;

    // The default T format: %t@T@%i@"%sa"@"%da"@%d@%g@%b@%H@%B@%ti@%S@%e; the mainlog's T line has its bytes
    // after the domain (docs/momentum-compat.md#mainlog).
    let (apnlog, mainlog) = (dir.path().join("apnlog.ec"), dir.path().join("mainlog.ec"));
    let t_lines = |path: &Path, type_field: usize, domain_field: usize| {
        log_fields(path)
            .into_iter()
            .filter(|f| f.get(type_field).map(String::as_str) == Some("T"))
            .filter_map(|f| Some((f.get(domain_field)?.clone(), f)))
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + WAIT;
    let (apn, main) = loop {
        server.logs().flush();
        let (apn, main) = (t_lines(&apnlog, 1, 5), t_lines(&mainlog, 4, 5));
        let both = |lines: &[(String, Vec<String>)]| {
            ["h2.example", "bin.example"]
                .iter()
                .all(|d| lines.iter().any(|(domain, _)| domain == d))
        };
        if both(&apn) && both(&main) {
            break (apn, main);
        }
        assert!(
            Instant::now() < deadline,
            "no T line for each domain in {WAIT:?}: {apn:?} {main:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for (domain, f) in &apn {
        assert!(f[12].starts_with("connection to "), "{domain}: {f:?}");
        assert_eq!(f[8], "", "%H of {domain}: {f:?}");
        assert_eq!(f[9], "0", "%B of {domain}: {f:?}");
        assert_eq!(f[10], "", "%ti of {domain}: {f:?}");
    }
    for (domain, f) in &main {
        assert_eq!(f[6], "0", "mainlog bytes of {domain}: {f:?}");
    }
    server.shutdown(Duration::from_secs(1)).await;
}
