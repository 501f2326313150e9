//! `herald check` diagnoses the credentials a configuration names (TN2265's checklist): certificate and key, topic,
//! environment against the route, PKCS#12 password, `.p8` key, retired gateway, and with `--connect` the route.

mod support;

use std::path::Path;
use std::process::Command;

use herald_sim::{CertVariant, Pki, SimConfig, Simulator};

const TOPIC: &str = "com.example.check";

fn check(config: &Path, extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["check", "-c"])
        .arg(config)
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("check.conf");
    std::fs::write(&path, body).unwrap();
    path
}

fn cert_domain(pki: &Pki, variant: CertVariant, route: &str, extra: &str) -> String {
    let c = pki.client(TOPIC, variant).unwrap();
    format!(
        "domain \"cert.example\" {{\n delivery_method = apn\n routes = ( \"{route}\" )\n tls_verify = ca\n tls_ca = \"{}\"\n \
         tls_certificate = \"{}\"\n tls_key = \"{}\"\n {extra}\n}}\n",
        pki.manifest.ca_cert.display(),
        c.cert.display(),
        c.key.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_credentials_pass_and_the_route_answers_with_connect() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let sim = Simulator::start(SimConfig::from_pki(&pki.manifest).unwrap())
        .await
        .unwrap();
    let k = &pki.manifest.token_key;
    let body = format!(
        "{}domain \"token.example\" {{\n delivery_method = apn\n routes = ( \"https://127.0.0.1:{port}\" )\n tls_verify = ca\n \
         tls_ca = \"{ca}\"\n apn_key = \"{p8}\"\n apn_key_id = \"{kid}\"\n apn_team_id = \"{tid}\"\n apn_topic = \"{TOPIC}\"\n}}\n",
        cert_domain(
            &pki,
            CertVariant::Universal,
            &format!("https://127.0.0.1:{}", sim.addrs.h2.port()),
            ""
        ),
        port = sim.addrs.h2.port(),
        ca = pki.manifest.ca_cert.display(),
        p8 = k.p8.display(),
        kid = k.key_id,
        tid = k.team_id,
    );
    let config = write(dir.path(), &body);
    let (code, err) = check(&config, &["--connect"]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("error"), "{err}");

    // A route nobody answers is reported with --connect only (a port outside the ephemeral range, which no
    // connection takes meanwhile).
    let closed = support::free_port();
    let config = write(
        dir.path(),
        &body.replace(
            &format!("127.0.0.1:{}", sim.addrs.h2.port()),
            &format!("127.0.0.1:{closed}"),
        ),
    );
    assert_eq!(check(&config, &[]).0, 0);
    let (code, err) = check(&config, &["--connect"]);
    assert_eq!(code, 1);
    assert!(err.contains("is not reachable"), "{err}");
    // Counted as what --connect found (one per domain), not as errors of the credential files.
    assert!(err.contains("2 connection error(s) (--connect)"), "{err}");
    assert!(!err.contains("credential error"), "{err}");
}

#[test]
fn wrong_environment_topic_password_and_key_id_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();

    // A production certificate on Apple's sandbox host (docs/apns-protocol.md#certificates).
    let config = write(
        dir.path(),
        &cert_domain(
            &pki,
            CertVariant::Production,
            "https://api.sandbox.push.apple.com",
            "",
        ),
    );
    let (code, err) = check(&config, &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "domain cert.example: error: a production certificate cannot push to the sandbox host"
        ),
        "{err}"
    );

    // A topic the certificate does not cover.
    let config = write(
        dir.path(),
        &cert_domain(
            &pki,
            CertVariant::Universal,
            "https://127.0.0.1:1",
            "apn_topic = \"com.other.app\"",
        ),
    );
    let (code, err) = check(&config, &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("apn_topic \"com.other.app\" is not a topic of the client certificate"),
        "{err}"
    );

    // The retired binary gateway is a warning, not an error.
    let config = write(
        dir.path(),
        &cert_domain(
            &pki,
            CertVariant::Universal,
            "apn://gateway.push.apple.com?port=2195",
            "",
        ),
    );
    let (code, err) = check(&config, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("retired on 31 March 2021"), "{err}");

    // A PKCS#12 file with the wrong password.
    let c = pki.client(TOPIC, CertVariant::Universal).unwrap();
    let body = format!(
        "domain \"p12.example\" {{\n delivery_method = apn\n routes = ( \"https://127.0.0.1:1\" )\n tls_pkcs12 = \"{}\"\n \
         tls_pkcs12_password = \"not-the-password\"\n}}\n",
        c.p12.display()
    );
    let (code, err) = check(&write(dir.path(), &body), &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("domain p12.example: error: tls_pkcs12"),
        "{err}"
    );

    // A key id that is not the one in the .p8 file's name.
    let k = &pki.manifest.token_key;
    let body = format!(
        "domain \"token.example\" {{\n delivery_method = apn\n routes = ( \"https://127.0.0.1:1\" )\n apn_key = \"{}\"\n \
         apn_key_id = \"ZZZZZZZZZZ\"\n apn_team_id = \"{}\"\n}}\n",
        k.p8.display(),
        k.team_id
    );
    let (code, err) = check(&write(dir.path(), &body), &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("differs from the key id"), "{err}");
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("this test needs the `openssl` command (apt-get install openssl): {e}")
        });
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `openssl x509 -req` without extensions makes an X.509 version 1 certificate. It parses and names its topic, but
/// the TLS stack refuses it as a client certificate, so every notification would fail: `check` must say so, naming
/// the file and how to fix it, and `serve` must refuse the domain with the same words.
#[test]
fn a_version_1_client_certificate_is_refused_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "v1.key",
            "-out",
            "v1.csr",
            "-subj",
            &format!("/UID={TOPIC}/CN=Apple Push Services: {TOPIC}"),
        ],
        d,
    );
    openssl(
        &[
            "x509", "-req", "-in", "v1.csr", "-signkey", "v1.key", "-days", "30", "-out", "v1.pem",
        ],
        d,
    );
    let text = std::fs::read_to_string(d.join("v1.pem")).unwrap();
    assert!(text.contains("BEGIN CERTIFICATE"));
    let cert = d.join("v1.pem");
    let key = d.join("v1.key");
    let body = format!(
        "domain \"v1.example\" {{\n delivery_method = apn\n routes = ( \"https://127.0.0.1:2197\" )\n \
         tls_certificate = \"{}\"\n tls_key = \"{}\"\n apn_topic = \"{TOPIC}\"\n}}\n",
        cert.display(),
        key.display()
    );
    let config = write(d, &body);
    let (code, err) = check(&config, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "domain v1.example: error: tls_certificate {}: the certificate is X.509 version 1, and TLS client \
             authentication accepts only version 3",
            cert.display()
        )),
        "{err}"
    );
    assert!(err.contains("-extfile"), "says how to fix it: {err}");
    assert!(!err.contains("peer certificate"), "{err}");
}

/// `--connect` tries the route from every binding that reaches it differently: a binding whose domain stanza
/// routes elsewhere is reported by name, and a binding's `bind_address` is the source of its attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_checks_every_binding_that_changes_the_route_or_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let sim = Simulator::start(SimConfig::from_pki(&pki.manifest).unwrap())
        .await
        .unwrap();
    let route = format!("https://127.0.0.1:{}", sim.addrs.h2.port());
    let body = format!(
        "{}binding \"two\" {{ bind_address = 127.0.0.2 }}\n",
        cert_domain(&pki, CertVariant::Universal, &route, "")
    );
    let config = write(dir.path(), &body);
    let (code, err) = check(&config, &["--connect"]);
    assert_eq!(code, 0, "{err}");
    let by_source = sim.counters().connections_by_source();
    let two: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    assert_eq!(by_source.get(&two).copied(), Some(1), "{by_source:?}");

    // Nothing listens there (outside the ephemeral range, so no connection takes it meanwhile).
    let closed = support::free_port();
    let body = format!(
        "{body}binding \"elsewhere\" {{ domain \"cert.example\" {{ routes = ( \"https://127.0.0.1:{closed}\" ) }} }}\n"
    );
    let config = write(dir.path(), &body);
    let (code, err) = check(&config, &["--connect"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "route 127.0.0.1:{closed} from binding elsewhere is not reachable"
        )),
        "{err}"
    );
    assert_eq!(err.matches("is not reachable").count(), 1, "{err}");
}

/// `check` checks a domain from every binding that delivers it, not only from `default`: a binding whose own
/// domain stanza names a key that does not load fails the check (every delivery from it would fail), named with
/// its binding and at the line that sets the key; a binding that changes nothing is not checked twice.
#[test]
fn check_checks_every_binding_that_delivers_a_domain() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let k = &pki.manifest.token_key;
    let good = format!(
        "domain \"app.example\" {{\n delivery_method = apn\n routes = ( \"https://127.0.0.1:1\" )\n tls_verify = ca\n \
         tls_ca = \"{ca}\"\n apn_key = \"{p8}\"\n apn_key_id = \"{kid}\"\n apn_team_id = \"{tid}\"\n apn_topic = \"{TOPIC}\"\n}}\n\
         binding \"plain\" {{ }}\n",
        ca = pki.manifest.ca_cert.display(),
        p8 = k.p8.display(),
        kid = k.key_id,
        tid = k.team_id,
    );
    let config = write(dir.path(), &good);
    let (code, err) = check(&config, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("error"), "{err}");

    // `apn_key` on line 13 of the file, after the 11 lines above.
    let bad = format!(
        "{good}binding \"b2\" {{\n  domain \"app.example\" {{ apn_key = \"/etc/passwd\" }}\n}}\n"
    );
    let config = write(dir.path(), &bad);
    let (code, err) = check(&config, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "{}:13:26: binding b2 domain app.example: error: apn_key /etc/passwd:",
            config.display()
        )),
        "{err}"
    );
    assert_eq!(err.matches(": error: ").count(), 1, "{err}");

    // The same from a binding declared inside a binding group.
    let bad = format!(
        "{good}binding_group \"g\" {{ binding \"b3\" {{ domain \"app.example\" {{ apn_key_id = \"\" }} }} }}\n"
    );
    let (code, err) = check(&write(dir.path(), &bad), &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("binding b3 domain app.example: error:"),
        "{err}"
    );
}

/// Apple's Key ID and Team ID are 10 upper-case letters and digits (docs/apns-protocol.md#provider-tokens); a token
/// with another is refused only at run time (`403 InvalidProviderToken`). `check` calls white space or another
/// character an error, naming the option; another length (or lower case) a warning, since test setups may use other
/// ids. The simulator's PKI makes ids of Apple's shape, which pass clean.
#[test]
fn malformed_key_and_team_ids_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let k = &pki.manifest.token_key;
    for id in [&k.key_id, &k.team_id] {
        assert_eq!(id.len(), 10, "{id}");
        assert!(
            id.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()),
            "{id}"
        );
    }
    let body = |kid: &str, tid: &str| {
        format!(
            "domain \"token.example\" {{\n delivery_method = apn\n routes = ( \"https://127.0.0.1:1\" )\n apn_key = \"{}\"\n \
             apn_key_id = \"{kid}\"\n apn_team_id = \"{tid}\"\n apn_topic = \"{TOPIC}\"\n}}\n",
            k.p8.display(),
        )
    };
    let (code, err) = check(&write(dir.path(), &body(&k.key_id, &k.team_id)), &[]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("warning") && !err.contains("error"), "{err}");

    // Trailing white space in the key id: an error, on the line that sets it (line 5).
    let config = write(dir.path(), &body(&format!("{} ", k.key_id), &k.team_id));
    let (code, err) = check(&config, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "{}:5:2: domain token.example: error: apn_key_id \"{} \" contains white space (' ')",
            config.display(),
            k.key_id
        )),
        "{err}"
    );
    assert!(!err.contains("apn_team_id"), "{err}");

    // A dash in the team id: an error, on its line (6).
    let team = format!("{}-1", &k.team_id[..8]);
    let config = write(dir.path(), &body(&k.key_id, &team));
    let (code, err) = check(&config, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "{}:6:2: domain token.example: error: apn_team_id \"{team}\" contains a character other than letters \
             and digits ('-')",
            config.display()
        )),
        "{err}"
    );
    assert_eq!(err.matches(": error: ").count(), 1, "{err}");

    // Another length, or lower case: warnings only.
    let (code, err) = check(&write(dir.path(), &body(&k.key_id, "TEAM1")), &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(
            "domain token.example: warning: apn_team_id \"TEAM1\" is 5 characters long; Apple's ids are 10 \
             upper-case letters and digits"
        ),
        "{err}"
    );
    assert!(!err.contains("error"), "{err}");
    let lower = k.team_id.to_ascii_lowercase();
    let (code, err) = check(&write(dir.path(), &body(&k.key_id, &lower)), &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "warning: apn_team_id \"{lower}\" is in part in lower case"
        )),
        "{err}"
    );
}
