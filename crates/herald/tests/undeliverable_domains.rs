//! Domains herald cannot deliver are said so at the door, at start and at a reload, with what to do and in the
//! configuration's own words: an APNs domain that names no credentials at all is refused as one whose key cannot
//! be read (REST 503, SMTP 451) instead of being accepted for APNs to refuse every notification; a domain no stanza
//! names, or one declared only inside a binding, is refused with that reason (never a delivery method's Rust name);
//! a domain whose client certificate has expired or is not valid yet is refused as one whose credentials cannot be
//! used, also when it expires while herald runs; `herald serve` names its undeliverable domains at start, as a
//! reload does; and a reload names a removed domain only while notifications of it wait.
//!
//! The tests run herald in-process against an APNs simulator, except the one about start, which reads the
//! standard error of `herald serve`.

mod support;

use std::net::SocketAddr;
use std::path::Path;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use herald::server::Server;
use herald_sim::{Pki, SimConfig, SimHandle, Simulator};
use support::{cert_auth_options, free_port, token_auth_options};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const TOPIC: &str = "com.example.undeliverable";
const WAIT: Duration = Duration::from_secs(60);

fn token(i: u64) -> String {
    format!("{i:064x}")
}

struct Rig {
    dir: tempfile::TempDir,
    pki: Pki,
    sim: SimHandle,
    server: Arc<Server>,
    http: SocketAddr,
    esmtp: SocketAddr,
}

/// The configuration around `domains`: a spool, a mainlog, an HTTP and an ESMTP listener (MCMT allowed), fast
/// retries.
fn config_text(dir: &Path, domains: &str) -> String {
    format!(
        r#"
spool_dir = "{spool}"
ec_logger "main" {{ mainlog = "{log}" }}
http_listener {{ listen "127.0.0.1:0" {{ }} }}
esmtp_listener {{ listen "127.0.0.1:0" {{ mcmt_reception = "allow" }} }}
retry_interval = 1
max_retry_interval = 1
{domains}
"#,
        spool = dir.join("spool").display(),
        log = dir.join("mainlog.ec").display(),
    )
}

/// herald with the domains `domains(pki, simulator port)` gives, and a simulator.
async fn rig(domains: impl FnOnce(&Pki, u16) -> String) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let sim = Simulator::start(SimConfig::from_pki(&pki.manifest).unwrap())
        .await
        .unwrap();
    let text = config_text(dir.path(), &domains(&pki, sim.addrs.h2.port()));
    let path = dir.path().join("herald.conf");
    std::fs::write(&path, text).unwrap();
    let server = Server::start(&path).await.unwrap();
    let addrs = server.addrs().await;
    Rig {
        http: addrs.http[0],
        esmtp: addrs.esmtp[0],
        dir,
        pki,
        sim,
        server,
    }
}

impl Rig {
    /// Posts one notification for `domain` (from `binding`, if given); returns the status and the answer.
    async fn push(&self, domain: &str, binding: Option<&str>, i: u64) -> (u16, serde_json::Value) {
        let mut body = serde_json::json!({
            "domain": domain,
            "tokens": [token(i)],
            "payload": {"aps": {"alert": "undeliverable"}},
        });
        if let Some(b) = binding {
            body["binding"] = serde_json::Value::from(b);
        }
        let response = reqwest::Client::new()
            .post(format!("http://{}/api/v1/push", self.http))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    /// An SMTP session past EHLO and `MAIL FROM`.
    async fn smtp(&self) -> Smtp {
        let stream = TcpStream::connect(self.esmtp).await.unwrap();
        let (r, w) = stream.into_split();
        let mut c = Smtp {
            r: tokio::io::BufReader::new(r),
            w,
        };
        assert_eq!(c.reply().await.0, 220);
        assert_eq!(c.cmd("EHLO client.example").await.0, 250);
        assert_eq!(c.cmd("MAIL FROM:<app@backend.example>").await.0, 250);
        c
    }

    /// Writes `domains` as the new configuration and reloads it; returns what the reload names as undeliverable.
    async fn reload(&self, domains: &str) -> Vec<(String, String)> {
        let path = self.dir.path().join("herald.conf");
        std::fs::write(&path, config_text(self.dir.path(), domains)).unwrap();
        self.server.reload(None).await.unwrap().unroutable
    }
}

/// The text of a JSON error answer.
fn error_text(body: &serde_json::Value) -> &str {
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error text in {body}"))
}

/// A raw SMTP client.
struct Smtp {
    r: tokio::io::BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
}

impl Smtp {
    /// The next reply: its code and the text of its last line.
    async fn reply(&mut self) -> (u16, String) {
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(WAIT, self.r.read_line(&mut line))
                .await
                .expect("no SMTP reply in time")
                .unwrap();
            assert!(n > 0, "the connection closed before a reply");
            let line = line.trim_end();
            if line.as_bytes().get(3) != Some(&b'-') {
                return (line[..3].parse().unwrap(), line[4..].to_owned());
            }
        }
    }

    async fn cmd(&mut self, line: &str) -> (u16, String) {
        self.w
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        self.reply().await
    }
}

/// An MCMT message with one push part for its recipients, without X-Binding.
const MCMT: &str = "From: app@backend.example\r\nTo: push@inb.example\r\nSubject: push\r\nMIME-Version: 1.0\r\n\
     Content-Type: multipart/vnd.msys.mcmt; boundary=\"B\"\r\n\r\n\
     --B\r\nContent-Type: message/rfc822\r\n\r\nSubject: the email\r\n\r\nNot delivered by herald.\r\n\
     --B\r\nContent-Type: message/vnd.msys.apn\r\n\r\n\r\n{\"aps\":{\"alert\":\"x\"}}\r\n--B--\r\n.";

/// The lines of a domain that reaches the simulator at `port` over HTTP/2 with no credentials at all: no
/// `apn_key`, no client certificate.
fn no_credentials(pki: &Pki, port: u16) -> String {
    format!(
        "  delivery_method = apn\n  routes = ( \"https://127.0.0.1:{port}\" )\n  tls_verify = ca\n  \
         tls_ca = \"{ca}\"\n  apn_topic = \"{TOPIC}\"\n",
        ca = pki.manifest.ca_cert.display()
    )
}

/// An APNs domain without credentials is refused at the door as one whose key cannot be read (REST 503, SMTP
/// 451 4.3.5: the operator can fix it), and a reload names it; a domain with certificate authentication (the TLS
/// client identity, no `apn_key`) is delivered as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_without_credentials_is_refused_at_the_door_and_named_by_a_reload() {
    let domains = |pki: &Pki, port: u16| {
        format!(
            "domain \"cert.example\" {{\n{}}}\ndomain \"z.example\" {{\n{}}}\n",
            cert_auth_options(pki, port, TOPIC),
            no_credentials(pki, port)
        )
    };
    let rig = rig(domains).await;

    let (status, body) = rig.push("cert.example", None, 1).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(rig.sim.wait_for_records(1, WAIT).await, 1);

    let (status, body) = rig.push("z.example", None, 2).await;
    assert_eq!(status, 503, "{body}");
    let error = error_text(&body);
    assert!(
        error.contains(
            "domain \"z.example\" cannot take push notifications: no credentials: set apn_key"
        ),
        "{body}"
    );

    let mut c = rig.smtp().await;
    let rcpt = format!("{}@z.example", token(3));
    let (code, text) = c.cmd(&format!("RCPT TO:<{rcpt}>")).await;
    assert_eq!(code, 451, "{text}");
    assert!(
        text.starts_with(&format!(
            "4.3.5 <{rcpt}>: domain \"z.example\" cannot take push notifications: no credentials"
        )),
        "{text}"
    );

    let again = domains(&rig.pki, rig.sim.addrs.h2.port());
    let unroutable = rig.reload(&again).await;
    assert_eq!(unroutable.len(), 1, "{unroutable:?}");
    assert_eq!(unroutable[0].0, "z.example");
    assert!(
        unroutable[0].1.starts_with("no credentials"),
        "{unroutable:?}"
    );
    // Nothing of z.example reached APNs.
    assert_eq!(rig.sim.counters().accepted(), 1);
}

/// A domain no stanza names, one declared only inside a binding, and one delivered by another method are each
/// refused with their own reason, in the configuration's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_binding_only_domains_are_refused_with_what_to_do() {
    let rig = rig(|pki, port| {
        format!(
            "domain \"smtp.example\" {{ delivery_method = smtp }}\n\
             domain \"plain.example\" {{ max_outbound_connections = 2 }}\n\
             binding \"b1\" {{ domain \"inb.example\" {{\n{}}} }}\n",
            token_auth_options(pki, port, TOPIC)
        )
    })
    .await;

    let refusal = |status: u16, body: &serde_json::Value| {
        assert_eq!(status, 400, "{body}");
        let text = error_text(body).to_owned();
        assert!(!text.contains("Esmtp") && !text.contains("Smtp"), "{text}");
        text
    };
    let (status, body) = rig.push("tokne.example", None, 1).await;
    assert_eq!(
        refusal(status, &body),
        "domain: domain \"tokne.example\" cannot take push notifications: no domain stanza for \
         \"tokne.example\" in the configuration"
    );
    let (status, body) = rig.push("inb.example", None, 2).await;
    assert_eq!(
        refusal(status, &body),
        "domain: domain \"inb.example\" cannot take push notifications: it is declared only for binding \"b1\": \
         name that binding with the notification (REST \"binding\" field, MCMT X-Binding header)"
    );
    let (status, body) = rig.push("inb.example", Some("b1"), 3).await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = rig.push("smtp.example", None, 4).await;
    assert!(
        refusal(status, &body).ends_with(
            "cannot take push notifications: delivery_method is smtp; herald delivers only with \
             delivery_method = apn"
        ),
        "{body}"
    );
    let (status, body) = rig.push("plain.example", None, 5).await;
    assert!(
        refusal(status, &body).ends_with(
            "cannot take push notifications: delivery_method is esmtp (the default); herald delivers only with \
             delivery_method = apn"
        ),
        "{body}"
    );

    let mut c = rig.smtp().await;
    let unknown = format!("{}@tokne.example", token(6));
    assert_eq!(
        c.cmd(&format!("RCPT TO:<{unknown}>")).await,
        (
            550,
            format!(
                "5.1.2 <{unknown}>: domain \"tokne.example\" cannot take push notifications: no domain stanza \
                 for \"tokne.example\" in the configuration"
            )
        )
    );
    // Declared in a binding: accepted at RCPT (the message may name the binding), refused at the end of DATA
    // when it does not.
    let inb = format!("{}@inb.example", token(7));
    assert_eq!(c.cmd(&format!("RCPT TO:<{inb}>")).await.0, 250);
    assert_eq!(c.cmd("DATA").await.0, 354);
    let (code, text) = c.cmd(MCMT).await;
    assert_eq!(code, 550, "{text}");
    assert!(
        text.contains(
            "domain \"inb.example\" cannot take push notifications: it is declared only for binding \"b1\""
        ),
        "{text}"
    );
    assert!(!text.contains("Esmtp"), "{text}");
    assert_eq!(rig.sim.wait_for_records(1, WAIT).await, 1);
}

/// A reload that removes a domain names it only while notifications of it wait, saying it was removed; a removed
/// domain whose queue is empty (it lingers until `idle_queue_timeout`) is not named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_names_a_removed_domain_only_while_notifications_of_it_wait() {
    let closed = free_port();
    let rig = rig(|pki, port| {
        format!(
            "domain \"idle.example\" {{\n{}}}\ndomain \"stuck.example\" {{\n{}}}\n",
            token_auth_options(pki, port, TOPIC),
            token_auth_options(pki, closed, TOPIC)
        )
    })
    .await;
    let (status, body) = rig.push("idle.example", None, 1).await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = rig.push("stuck.example", None, 2).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(rig.sim.wait_for_records(1, WAIT).await, 1);

    let unroutable = rig.reload("").await;
    assert_eq!(
        unroutable,
        vec![(
            "stuck.example".to_owned(),
            "it was removed from the configuration; 1 notification of it waits until a reload \
             declares it again (or herald restarts)"
                .to_owned()
        )]
    );
    // Still so at the next reload.
    assert_eq!(rig.reload("").await, unroutable);
}

/// `herald serve` names at start, as a reload does, each APNs domain it cannot deliver: a provider key file that
/// is missing, a certificate without its key, no credentials at all, and credentials that load but that APNs
/// refuses for good (here a topic the client certificate does not carry, which `herald check` calls an error).
#[test]
fn serve_names_the_domains_it_cannot_deliver_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let client = pki
        .client(TOPIC, herald_sim::CertVariant::Universal)
        .unwrap();
    let port = free_port();
    let missing_key = dir.path().join("AuthKey_ABCDEFGHIJ.p8");
    let domains = format!(
        "domain \"m.example\" {{\n{no_creds}  apn_key = \"{key}\"\n  apn_key_id = \"ABCDEFGHIJ\"\n  \
         apn_team_id = \"TEAM123456\"\n}}\n\
         domain \"c.example\" {{\n{no_creds}  tls_certificate = \"{cert}\"\n}}\n\
         domain \"z.example\" {{\n{no_creds}}}\n\
         domain \"t.example\" {{\n{no_creds}  tls_certificate = \"{cert}\"\n  tls_key = \"{key_file}\"\n  \
         apn_topic = \"com.example.not-its-topic\"\n}}\n",
        no_creds = no_credentials(&pki, port),
        key = missing_key.display(),
        cert = client.cert.display(),
        key_file = client.key.display(),
    );
    let config = dir.path().join("herald.conf");
    std::fs::write(&config, config_text(dir.path(), &domains)).unwrap();
    let (mut child, err_path) = support::serve_until_ready(&config, dir.path(), "info");
    let expected = [
        format!(
            "domain m.example cannot be delivered: apn_key {}",
            missing_key.display()
        ),
        format!(
            "domain c.example cannot be delivered: tls_certificate {}",
            client.cert.display()
        ),
        "domain z.example cannot be delivered: no credentials: set apn_key".to_owned(),
        "domain t.example cannot be delivered: apn_topic \"com.example.not-its-topic\" is not a topic of the \
         client certificate"
            .to_owned(),
    ];
    let deadline = Instant::now() + WAIT;
    let err = loop {
        let err = std::fs::read_to_string(&err_path).unwrap();
        if expected.iter().all(|e| err.contains(e.as_str())) || Instant::now() > deadline {
            break err;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    for e in &expected {
        assert!(err.contains(e.as_str()), "{e:?} is not in:\n{err}");
    }
}

/// A client certificate for [`TOPIC`] signed by the test PKI's CA and valid from `not_before` to `not_after`, as
/// PEM (`NAME.pem`, key `NAME-key.pem`) and PKCS#12 (`NAME.p12`, password `herald`), written under the PKI's
/// directory by `openssl ca` (the PKI's own certificates are valid for ten years from now).
fn dated_client(
    pki: &Pki,
    name: &str,
    not_before: SystemTime,
    not_after: SystemTime,
) -> herald_sim::ClientFiles {
    let dir = pki.manifest.dir.join(format!("dated-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.txt"), "").unwrap();
    std::fs::write(dir.join("serial"), "1000\n").unwrap();
    std::fs::write(
        dir.join("ca.cnf"),
        format!(
            "[ca]\ndefault_ca = dated\n[dated]\ndatabase = index.txt\nserial = serial\nnew_certs_dir = .\n\
             certificate = {ca}\nprivate_key = {ca_key}\ndefault_md = sha256\npolicy = any\npreserve = yes\n\
             unique_subject = no\nx509_extensions = client\n[any]\nuserId = optional\ncommonName = optional\n\
             [client]\nbasicConstraints = CA:FALSE\nkeyUsage = digitalSignature\nextendedKeyUsage = clientAuth\n",
            ca = pki.manifest.ca_cert.display(),
            ca_key = pki.manifest.ca_key.display(),
        ),
    )
    .unwrap();
    let files = herald_sim::ClientFiles {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
        p12: dir.join(format!("{name}.p12")),
    };
    let csr = dir.join(format!("{name}.csr"));
    let subject = format!("/UID={TOPIC}/CN=Apple Push Services: {TOPIC}");
    let (start, end) = (asn1_time(not_before), asn1_time(not_after));
    let key = files.key.to_str().unwrap();
    let (cert, p12) = (files.cert.to_str().unwrap(), files.p12.to_str().unwrap());
    let csr = csr.to_str().unwrap();
    openssl(
        &dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            key,
            "-out",
            csr,
            "-subj",
            &subject,
        ],
    );
    openssl(
        &dir,
        &[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-notext",
            "-in",
            csr,
            "-out",
            cert,
            "-startdate",
            &start,
            "-enddate",
            &end,
        ],
    );
    openssl(
        &dir,
        &[
            "pkcs12",
            "-export",
            "-in",
            cert,
            "-inkey",
            key,
            "-out",
            p12,
            "-passout",
            "pass:herald",
        ],
    );
    files
}

/// `t` as `openssl ca` takes a date: `YYYYMMDDHHMMSSZ`.
fn asn1_time(t: SystemTime) -> String {
    let digits: String = herald_apns::identity::format_utc(t)
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    format!("{digits}Z")
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("this test needs the `openssl` command: {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The validity dates of the certificate in `files`, as herald words them in its refusals.
fn validity_words(files: &herald_sim::ClientFiles) -> (String, String) {
    let info = herald_apns::identity::ClientIdentity::from_pem_files(&files.cert, Some(&files.key))
        .unwrap()
        .info()
        .unwrap();
    (
        herald_apns::identity::format_utc(info.not_before),
        herald_apns::identity::format_utc(info.not_after),
    )
}

/// The lines of a domain that authenticates to the simulator at `port` with the client certificate `identity`
/// (`tls_certificate` with its key, or `tls_pkcs12`).
fn dated_domain(pki: &Pki, port: u16, identity: &str) -> String {
    format!(
        "  delivery_method = apn\n  routes = ( \"https://127.0.0.1:{port}\" )\n  tls_verify = ca\n  \
         tls_ca = \"{ca}\"\n  apn_topic = \"{TOPIC}\"\n{identity}",
        ca = pki.manifest.ca_cert.display()
    )
}

const DAY: Duration = Duration::from_secs(24 * 3600);

/// A domain whose client certificate has expired, or is not valid yet, is refused at the door as one whose
/// credentials cannot be used (REST 503, SMTP 451 4.3.5), with the certificate file and the date that rules it
/// out in UTC, instead of being accepted for every TLS handshake to fail until the notifications expire; a domain
/// with token authentication is accepted as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_whose_certificate_is_out_of_its_dates_is_refused_at_the_door() {
    let now = SystemTime::now();
    let mut files = None;
    let rig = rig(|pki, port| {
        let expired = dated_client(pki, "expired", now - 30 * DAY, now - DAY);
        let future = dated_client(pki, "future", now + DAY, now + 30 * DAY);
        let text = format!(
            "domain \"expired.example\" {{\n{}}}\ndomain \"future.example\" {{\n{}}}\n\
             domain \"token.example\" {{\n{}}}\n",
            dated_domain(
                pki,
                port,
                &format!(
                    "  tls_certificate = \"{}\"\n  tls_key = \"{}\"\n",
                    expired.cert.display(),
                    expired.key.display()
                )
            ),
            dated_domain(
                pki,
                port,
                &format!(
                    "  tls_pkcs12 = \"{}\"\n  tls_pkcs12_password = \"herald\"\n",
                    future.p12.display()
                )
            ),
            token_auth_options(pki, port, TOPIC),
        );
        files = Some((expired, future));
        text
    })
    .await;
    let (expired, future) = files.unwrap();
    let (_, expired_at) = validity_words(&expired);
    let (valid_from, _) = validity_words(&future);

    let (status, body) = rig.push("expired.example", None, 1).await;
    assert_eq!(status, 503, "{body}");
    let expected = format!(
        "domain \"expired.example\" cannot take push notifications: tls_certificate {}: the client certificate \
         expired at {expired_at} (notAfter)",
        expired.cert.display()
    );
    assert!(error_text(&body).contains(&expected), "{body}");

    let (status, body) = rig.push("future.example", None, 2).await;
    assert_eq!(status, 503, "{body}");
    let expected = format!(
        "domain \"future.example\" cannot take push notifications: tls_pkcs12 {}: the client certificate is not \
         valid before {valid_from} (notBefore)",
        future.p12.display()
    );
    assert!(error_text(&body).contains(&expected), "{body}");

    let mut c = rig.smtp().await;
    let rcpt = format!("{}@expired.example", token(3));
    let (code, text) = c.cmd(&format!("RCPT TO:<{rcpt}>")).await;
    assert_eq!(code, 451, "{text}");
    assert!(
        text.starts_with(&format!(
            "4.3.5 <{rcpt}>: domain \"expired.example\" cannot take push notifications: tls_certificate {}: the \
             client certificate expired at {expired_at}",
            expired.cert.display()
        )),
        "{text}"
    );

    let (status, body) = rig.push("token.example", None, 4).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(rig.sim.wait_for_records(1, WAIT).await, 1);
    // Nothing of the refused domains reached APNs.
    assert_eq!(rig.sim.counters().accepted(), 1);
}

/// A certificate that expires while herald runs: its domain is accepted while the certificate is valid, and
/// refused at the door from the moment it expires, although its settings were built (and kept) before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_expires_while_herald_runs_is_refused_from_then_on() {
    let now = SystemTime::now();
    let mut files = None;
    let rig = rig(|pki, port| {
        let brief = dated_client(pki, "brief", now - DAY, now + Duration::from_secs(8));
        let text = format!(
            "domain \"brief.example\" {{\n{}}}\n",
            dated_domain(
                pki,
                port,
                &format!(
                    "  tls_certificate = \"{}\"\n  tls_key = \"{}\"\n",
                    brief.cert.display(),
                    brief.key.display()
                )
            )
        );
        files = Some(brief);
        text
    })
    .await;
    let brief = files.unwrap();
    let (_, expires_at) = validity_words(&brief);

    let (status, body) = rig.push("brief.example", None, 1).await;
    assert_eq!(
        status, 202,
        "accepted while the certificate is valid: {body}"
    );

    let deadline = Instant::now() + WAIT;
    let mut i = 2;
    let body = loop {
        let (status, body) = rig.push("brief.example", None, i).await;
        if status == 503 {
            break body;
        }
        assert_eq!(status, 202, "{body}");
        assert!(
            Instant::now() < deadline,
            "still accepted after {WAIT:?}: {body}"
        );
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        SystemTime::now() >= now + Duration::from_secs(7),
        "refused before the certificate expired: {body}"
    );
    let expected = format!(
        "domain \"brief.example\" cannot take push notifications: tls_certificate {}: the client certificate \
         expired at {expires_at} (notAfter)",
        brief.cert.display()
    );
    assert!(error_text(&body).contains(&expected), "{body}");

    let mut c = rig.smtp().await;
    let rcpt = format!("{}@brief.example", token(1000));
    let (code, text) = c.cmd(&format!("RCPT TO:<{rcpt}>")).await;
    assert_eq!(code, 451, "{text}");
}
