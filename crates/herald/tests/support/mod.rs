//! Helpers shared by the integration tests that run herald against the APNs simulator: a free loopback port, and
//! the options that point a domain at a simulator with the test PKI's credentials.
#![allow(dead_code)]

use herald_sim::Pki;

/// A TCP port on 127.0.0.1 that nothing listens on right now (for a simulator started later, or a closed route).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The lines of a `domain` stanza that deliver over HTTP/2 to a simulator on 127.0.0.1:`port` with token auth:
/// the route, the PKI's CA (verified), its provider key (key id, team id) and `topic`.
pub fn token_auth_options(pki: &Pki, port: u16, topic: &str) -> String {
    let m = &pki.manifest;
    format!(
        r#"  delivery_method = apn
  routes = ( "https://127.0.0.1:{port}" )
  tls_verify = ca
  tls_ca = "{ca}"
  apn_key = "{p8}"
  apn_key_id = "{kid}"
  apn_team_id = "{tid}"
  apn_topic = "{topic}"
"#,
        ca = m.ca_cert.display(),
        p8 = m.token_key.p8.display(),
        kid = m.token_key.key_id,
        tid = m.token_key.team_id,
    )
}
