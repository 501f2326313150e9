//! Every reason of docs/apns-protocol.md#reasons that a request can provoke, provoked over real TLS + HTTP/2
//! (table-driven), plus the ones a scenario produces. Validation order: herald-sim's `h2::request` docs
//! (docs/apns-protocol.md#simulator).

mod common;

use common::*;
use herald_sim::{
    CertVariant, ClientCertSpec, Environment, ProviderKey, Scenario, TokenRule, TokenState,
};

#[derive(Clone, Copy, Debug)]
enum Conn {
    Cert(CertVariant),
    NoUidCert,
    Token,
    TokenDer,
    Bare,
}

struct Case {
    name: &'static str,
    conn: Conn,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
    reason: Option<&'static str>,
}

fn case(name: &'static str, conn: Conn, status: u16, reason: Option<&'static str>) -> Case {
    Case {
        name,
        conn,
        method: "POST",
        path: format!("/3/device/{}", token(1)),
        headers: vec![("apns-topic", TOPIC.to_string())],
        body: PAYLOAD.to_vec(),
        status,
        reason,
    }
}

fn extra_key(
    team: &str,
    kid: &str,
    dir: &std::path::Path,
    env: Option<Environment>,
) -> ProviderKey {
    let kp = rcgen::KeyPair::generate().unwrap();
    let path = dir.join(format!("AuthKey_{kid}.p8"));
    std::fs::write(&path, kp.serialize_pem()).unwrap();
    let mut k = ProviderKey::from_p8_file(&path, kid, team).unwrap();
    k.environment = env;
    k
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_reason_is_provoked() {
    let t = start_with(|c, pki| {
        c.scenario = Scenario {
            bad: vec![token(3)],
            unregistered: vec![],
            tokens: vec![
                TokenRule {
                    token: token(5),
                    state: TokenState::Expired,
                    topic: None,
                    timestamp_ms: Some(1_700_000_000_456),
                },
                TokenRule {
                    token: token(4),
                    state: TokenState::Unregistered,
                    topic: None,
                    timestamp_ms: Some(1_700_000_000_123),
                },
                TokenRule {
                    token: token(6),
                    state: TokenState::Active,
                    topic: Some("com.other.app".into()),
                    timestamp_ms: None,
                },
            ],
            ..Scenario::default()
        };
        let team = pki.manifest.team_id.clone();
        c.provider_keys.push(extra_key(
            &team,
            "PRODKEY001",
            &pki.manifest.dir,
            Some(Environment::Production),
        ));
    })
    .await;
    let pki = &t.pki;
    let jwt_now = jwt(pki, now());
    let bearer = format!("bearer {jwt_now}");
    let no_uid = pki
        .issue_client(
            &ClientCertSpec {
                uid: None,
                topics: vec![],
                variant: CertVariant::Universal,
            },
            "no-uid",
        )
        .unwrap();
    let prod_key = signing_key_for(
        &pki.manifest.dir.join("AuthKey_PRODKEY001.p8"),
        "PRODKEY001",
        &pki.manifest.team_id,
    );

    let mut cases = vec![
        case(
            "accepted with a certificate",
            Conn::Cert(CertVariant::Universal),
            200,
            None,
        ),
        case(
            "accepted with a sandbox certificate",
            Conn::Cert(CertVariant::Sandbox),
            200,
            None,
        ),
        // The standard certificate lists its app's topic, `.voip` and `.complication`: APNs requires the topic
        // (docs/apns-protocol.md#http2-request); see `a_certificate_with_several_topics_needs_apns_topic`.
        Case {
            headers: vec![],
            ..case(
                "MissingTopic (a certificate with several topics)",
                Conn::Cert(CertVariant::Universal),
                400,
                Some("MissingTopic"),
            )
        },
        Case {
            headers: vec![
                ("apns-topic", TOPIC.into()),
                ("apns-priority", "5".into()),
                ("apns-priority", "10".into()),
            ],
            ..case(
                "DuplicateHeaders",
                Conn::Cert(CertVariant::Universal),
                400,
                Some("DuplicateHeaders"),
            )
        },
        Case {
            headers: vec![
                ("apns-topic", TOPIC.into()),
                ("apns-id", "not-a-uuid".into()),
            ],
            ..case(
                "BadMessageId",
                Conn::Cert(CertVariant::Universal),
                400,
                Some("BadMessageId"),
            )
        },
        Case {
            method: "GET",
            body: vec![],
            ..case(
                "MethodNotAllowed",
                Conn::Cert(CertVariant::Universal),
                405,
                Some("MethodNotAllowed"),
            )
        },
        Case {
            headers: vec![("authorization", bearer.clone())],
            ..case("MissingTopic", Conn::Token, 400, Some("MissingTopic"))
        },
        Case {
            headers: vec![
                ("apns-topic", TOPIC.into()),
                ("apns-collapse-id", "x".repeat(65)),
            ],
            ..case(
                "BadCollapseId",
                Conn::Cert(CertVariant::Universal),
                400,
                Some("BadCollapseId"),
            )
        },
        Case {
            headers: vec![
                ("apns-topic", TOPIC.into()),
                ("apns-collapse-id", "x".repeat(64)),
            ],
            ..case(
                "collapse id of 64 bytes",
                Conn::Cert(CertVariant::Universal),
                200,
                None,
            )
        },
        Case {
            headers: vec![("apns-topic", TOPIC.into()), ("apns-priority", "7".into())],
            ..case(
                "BadPriority",
                Conn::Cert(CertVariant::Universal),
                400,
                Some("BadPriority"),
            )
        },
        // docs/apns-protocol.md#push-types: background at priority 10, liveactivity at priority 1 and pushtotalk
        // at another priority or with an expiration other than 0 are errors.
        Case {
            headers: vec![
                ("apns-topic", TOPIC.into()),
                ("apns-push-type", "background".into()),
                ("apns-priority", "10".into()),
            ],
            body: BACKGROUND.to_vec(),
            ..case(
                "BadPriority (background at 10)",
                Conn::Cert(CertVariant::Universal),
                400,
                Some("BadPriority"),
            )
        },
        Case {
            headers: vec![
                ("apns-topic", TOPIC.into()),
                ("apns-push-type", "background".into()),
                ("apns-priority", "5".into()),
            ],
            body: BACKGROUND.to_vec(),
            ..case(
                "background at 5",
                Conn::Cert(CertVariant::Universal),
                200,
                None,
            )
        },
        Case {
            headers: vec![
                ("apns-topic", format!("{TOPIC}.push-type.liveactivity")),
                ("apns-push-type", "liveactivity".into()),
                ("apns-priority", "1".into()),
            ],
            ..case(
                "BadPriority (liveactivity at 1)",
                Conn::Token,
                400,
                Some("BadPriority"),
            )
        },
        Case {
            headers: vec![
                ("apns-topic", format!("{TOPIC}.push-type.liveactivity")),
                ("apns-push-type", "liveactivity".into()),
                ("apns-priority", "5".into()),
            ],
            ..case("liveactivity at 5", Conn::Token, 200, None)
        },
        Case {
            headers: vec![("apns-topic", TOPIC.into()), ("apns-priority", "1".into())],
            ..case("alert at 1", Conn::Cert(CertVariant::Universal), 200, None)
        },
        Case {
            headers: vec![
                ("apns-topic", format!("{TOPIC}.voip-ptt")),
                ("apns-push-type", "pushtotalk".into()),
                ("apns-priority", "5".into()),
                ("apns-expiration", "0".into()),
            ],
            ..case(
                "BadPriority (pushtotalk at 5)",
                Conn::Token,
                400,
                Some("BadPriority"),
            )
        },
        Case {
            headers: vec![
                ("apns-topic", format!("{TOPIC}.voip-ptt")),
                ("apns-push-type", "pushtotalk".into()),
                ("apns-priority", "10".into()),
                ("apns-expiration", (now() + 3600).to_string()),
            ],
            ..case(
                "BadExpirationDate (pushtotalk stored)",
                Conn::Token,
                400,
                Some("BadExpirationDate"),
            )
        },
        Case {
            headers: vec![
                ("apns-topic", format!("{TOPIC}.voip-ptt")),
                ("apns-push-type", "pushtotalk".into()),
                ("apns-priority", "10".into()),
                ("apns-expiration", "0".into()),
            ],
            ..case("pushtotalk at 10, expiration 0", Conn::Token, 200, None)
        },
        Case {
            headers: vec![
                ("apns-topic", TOPIC.into()),
                ("apns-push-type", "bogus".into()),
            ],
            ..case(
                "InvalidPushType",
                Conn::Cert(CertVariant::Universal),
                400,
                Some("InvalidPushType"),
            )
        },
        Case {
            headers: vec![
                ("apns-topic", TOPIC.into()),
                ("apns-expiration", "tomorrow".into()),
            ],
            ..case(
                "BadExpirationDate",
                Conn::Cert(CertVariant::Universal),
                400,
                Some("BadExpirationDate"),
            )
        },
        Case {
            path: "/3/other".into(),
            ..case(
                "BadPath",
                Conn::Cert(CertVariant::Universal),
                404,
                Some("BadPath"),
            )
        },
        Case {
            path: format!("/3/device/{}?x=1", token(1)),
            ..case(
                "BadPath (a query)",
                Conn::Cert(CertVariant::Universal),
                404,
                Some("BadPath"),
            )
        },
        Case {
            path: format!("/3/device/{}?", token(1)),
            ..case(
                "BadPath (an empty query)",
                Conn::Token,
                404,
                Some("BadPath"),
            )
        },
        Case {
            path: "/3/device/".into(),
            ..case(
                "MissingDeviceToken",
                Conn::Cert(CertVariant::Universal),
                400,
                Some("MissingDeviceToken"),
            )
        },
        Case {
            path: "/3/device/xyz".into(),
            ..case(
                "BadDeviceToken (syntax)",
                Conn::Cert(CertVariant::Universal),
                400,
                Some("BadDeviceToken"),
            )
        },
        // HTTP/2 takes hex of 32 to 100 bytes (docs/apns-protocol.md#size-limits): 33, 54 and 80 bytes (a Live
        // Activity's push token) are delivered; 1, 31 (a token cut short) and 101 bytes and an odd number of digits
        // are BadDeviceToken.
        Case {
            path: "/3/device/ab".into(),
            ..case(
                "BadDeviceToken (1 byte)",
                Conn::Cert(CertVariant::Universal),
                400,
                Some("BadDeviceToken"),
            )
        },
        Case {
            path: format!("/3/device/{}", "ab".repeat(31)),
            ..case(
                "BadDeviceToken (31 bytes)",
                Conn::Cert(CertVariant::Universal),
                400,
                Some("BadDeviceToken"),
            )
        },
        Case {
            path: format!("/3/device/{}", "ab".repeat(33)),
            ..case(
                "a 33-byte token",
                Conn::Cert(CertVariant::Universal),
                200,
                None,
            )
        },
        Case {
            path: format!("/3/device/{}", "Ab".repeat(54)),
            ..case(
                "a 54-byte token",
                Conn::Cert(CertVariant::Universal),
                200,
                None,
            )
        },
        Case {
            path: format!("/3/device/{}", "ab".repeat(80)),
            ..case(
                "an 80-byte token",
                Conn::Cert(CertVariant::Universal),
                200,
                None,
            )
        },
        Case {
            path: format!("/3/device/{}", "AB".repeat(100)),
            ..case(
                "a 100-byte token",
                Conn::Cert(CertVariant::Universal),
                200,
                None,
            )
        },
        Case {
            path: format!("/3/device/{}", "AB".repeat(101)),
            ..case(
                "BadDeviceToken (101 bytes)",
                Conn::Cert(CertVariant::Universal),
                400,
                Some("BadDeviceToken"),
            )
        },
        Case {
            path: format!("/3/device/{}a", "ab".repeat(40)),
            ..case(
                "BadDeviceToken (81 hex digits)",
                Conn::Cert(CertVariant::Universal),
                400,
                Some("BadDeviceToken"),
            )
        },
        Case {
            path: format!("/3/device/{}", token(3)),
            ..case(
                "BadDeviceToken (scenario)",
                Conn::Cert(CertVariant::Universal),
                400,
                Some("BadDeviceToken"),
            )
        },
        case(
            "BadCertificate",
            Conn::NoUidCert,
            403,
            Some("BadCertificate"),
        ),
        case(
            "BadCertificateEnvironment",
            Conn::Cert(CertVariant::Production),
            403,
            Some("BadCertificateEnvironment"),
        ),
        case(
            "MissingProviderToken",
            Conn::Bare,
            403,
            Some("MissingProviderToken"),
        ),
        Case {
            headers: vec![
                ("apns-topic", TOPIC.into()),
                ("authorization", "bearer abc.def.ghi".into()),
            ],
            ..case(
                "InvalidProviderToken (garbage)",
                Conn::Bare,
                403,
                Some("InvalidProviderToken"),
            )
        },
        Case {
            headers: vec![
                ("apns-topic", TOPIC.into()),
                ("authorization", "Bearer x".into()),
            ],
            ..case(
                "InvalidProviderToken (Bearer x)",
                Conn::Bare,
                403,
                Some("InvalidProviderToken"),
            )
        },
        Case {
            headers: vec![
                ("apns-topic", TOPIC.into()),
                ("authorization", "xyz".into()),
            ],
            ..case(
                "InvalidProviderToken (no bearer)",
                Conn::Bare,
                403,
                Some("InvalidProviderToken"),
            )
        },
        Case {
            headers: vec![
                ("apns-topic", TOPIC.into()),
                ("authorization", format!("bearer {}", tamper(&jwt_now))),
            ],
            ..case(
                "InvalidProviderToken (signature)",
                Conn::Bare,
                403,
                Some("InvalidProviderToken"),
            )
        },
        Case {
            headers: vec![
                ("apns-topic", TOPIC.into()),
                (
                    "authorization",
                    format!("bearer {}", jwt(pki, now() - 3700)),
                ),
            ],
            ..case(
                "ExpiredProviderToken",
                Conn::Bare,
                403,
                Some("ExpiredProviderToken"),
            )
        },
        Case {
            headers: vec![
                ("apns-topic", TOPIC.into()),
                (
                    "authorization",
                    format!("bearer {}", prod_key.sign(now()).unwrap()),
                ),
            ],
            ..case(
                "BadEnvironmentKeyIdInToken",
                Conn::Bare,
                403,
                Some("BadEnvironmentKeyIdInToken"),
            )
        },
        case("accepted with a JOSE token", Conn::Token, 200, None),
        case("accepted with a DER token", Conn::TokenDer, 200, None),
        Case {
            headers: vec![("apns-topic", "com.other.app".into())],
            ..case(
                "TopicDisallowed (another app)",
                Conn::Cert(CertVariant::Universal),
                400,
                Some("TopicDisallowed"),
            )
        },
        Case {
            headers: vec![
                ("apns-topic", format!("{TOPIC}.voip")),
                ("apns-push-type", "voip".into()),
            ],
            ..case(
                "voip topic on the certificate",
                Conn::Cert(CertVariant::Universal),
                200,
                None,
            )
        },
        Case {
            headers: vec![
                ("apns-topic", format!("{TOPIC}.voip")),
                ("apns-push-type", "alert".into()),
            ],
            ..case(
                "TopicDisallowed (alert to the certificate's voip topic)",
                Conn::Cert(CertVariant::Universal),
                400,
                Some("TopicDisallowed"),
            )
        },
        Case {
            headers: vec![
                ("apns-topic", format!("{TOPIC}.push-type.liveactivity")),
                ("apns-push-type", "liveactivity".into()),
            ],
            ..case(
                "TopicDisallowed (suffix the certificate lacks)",
                Conn::Cert(CertVariant::Universal),
                400,
                Some("TopicDisallowed"),
            )
        },
        Case {
            headers: vec![("apns-topic", "com.bad topic".into())],
            ..case(
                "BadTopic",
                Conn::Cert(CertVariant::Universal),
                400,
                Some("BadTopic"),
            )
        },
        Case {
            path: format!("/3/device/{}", token(6)),
            ..case(
                "DeviceTokenNotForTopic",
                Conn::Token,
                400,
                Some("DeviceTokenNotForTopic"),
            )
        },
        Case {
            path: format!("/3/device/{}", token(4)),
            ..case("Unregistered", Conn::Token, 410, Some("Unregistered"))
        },
        Case {
            path: format!("/3/device/{}", token(5)),
            ..case("ExpiredToken", Conn::Token, 410, Some("ExpiredToken"))
        },
        Case {
            body: vec![],
            ..case(
                "PayloadEmpty",
                Conn::Cert(CertVariant::Universal),
                400,
                Some("PayloadEmpty"),
            )
        },
        Case {
            body: big(4097),
            ..case(
                "PayloadTooLarge",
                Conn::Cert(CertVariant::Universal),
                413,
                Some("PayloadTooLarge"),
            )
        },
        Case {
            body: big(4096),
            ..case(
                "4096 bytes fit",
                Conn::Cert(CertVariant::Universal),
                200,
                None,
            )
        },
        Case {
            headers: vec![
                ("apns-topic", format!("{TOPIC}.voip")),
                ("apns-push-type", "voip".into()),
            ],
            body: big(5120),
            ..case(
                "voip: 5120 bytes fit",
                Conn::Cert(CertVariant::Universal),
                200,
                None,
            )
        },
        Case {
            headers: vec![("apns-topic", format!("{TOPIC}.voip"))],
            body: big(5120),
            ..case(
                "voip without apns-push-type: 5120 bytes fit",
                Conn::Cert(CertVariant::Universal),
                200,
                None,
            )
        },
        Case {
            headers: vec![("apns-topic", format!("{TOPIC}.voip"))],
            body: big(5121),
            ..case(
                "voip without apns-push-type: PayloadTooLarge over 5120",
                Conn::Cert(CertVariant::Universal),
                413,
                Some("PayloadTooLarge"),
            )
        },
        Case {
            headers: vec![
                ("apns-topic", format!("{TOPIC}.voip")),
                ("apns-push-type", "voip".into()),
            ],
            body: big(5121),
            ..case(
                "voip: PayloadTooLarge over 5120",
                Conn::Cert(CertVariant::Universal),
                413,
                Some("PayloadTooLarge"),
            )
        },
    ];

    for c in cases.iter_mut() {
        let cfg = match c.conn {
            Conn::Cert(v) => {
                let (cert, key) = cert_identity(pki, v);
                client_config(pki, Some((&cert, &key)), true)
            }
            Conn::NoUidCert => client_config(pki, Some((&no_uid.cert, &no_uid.key)), true),
            Conn::Token | Conn::TokenDer | Conn::Bare => client_config(pki, None, true),
        };
        let mut headers: Vec<(&str, String)> = c.headers.clone();
        match c.conn {
            Conn::Token => headers.push(("authorization", bearer.clone())),
            Conn::TokenDer => {
                headers.push(("authorization", format!("bearer {}", jwt_der(pki, now()))))
            }
            _ => {}
        }
        if matches!(c.conn, Conn::Token) && c.name == "MissingTopic" {
            headers = vec![("authorization", bearer.clone())];
        }
        let mut client = h2_connect(t.sim.addrs.h2, cfg).await;
        let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let a = send(&mut client, c.method, &c.path, &hs, &c.body).await;
        assert_eq!(
            a.status,
            c.status,
            "{}: {:?} {}",
            c.name,
            a.reason(),
            String::from_utf8_lossy(&a.body)
        );
        assert_eq!(a.reason().as_deref(), c.reason, "{}", c.name);
        let id = a
            .headers
            .get("apns-id")
            .expect("apns-id on every response")
            .to_str()
            .unwrap();
        assert!(
            herald_apns::push::validate_apns_id(id).is_ok() && id == id.to_ascii_lowercase(),
            "{}: {id}",
            c.name
        );
        assert!(
            a.headers.get("apns-unique-id").is_some(),
            "sandbox responses carry apns-unique-id"
        );
        if c.status == 200 {
            assert!(a.body.is_empty(), "{}: success has no body", c.name);
        } else {
            assert_eq!(a.headers["content-type"], "application/json", "{}", c.name);
        }
        if c.status == 410 {
            // docs/apns-protocol.md#http2-response: every 410 carries the timestamp (ms).
            let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
            let expected = match c.reason {
                Some("Unregistered") => 1_700_000_000_123u64,
                _ => 1_700_000_000_456u64,
            };
            assert_eq!(
                v["timestamp"], expected,
                "{}: 410 carries the timestamp in ms",
                c.name
            );
        } else if c.status != 200 {
            let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
            assert!(
                v.get("timestamp").is_none(),
                "{}: timestamp only on 410",
                c.name
            );
        }
    }
    let accepted = cases.iter().filter(|c| c.status == 200).count() as u64;
    assert_eq!(
        t.sim
            .wait_for_records(accepted, std::time::Duration::from_secs(5))
            .await,
        accepted
    );
    let stats = t.sim.stats();
    assert_eq!(stats.accepted.h2, accepted);
    assert_eq!(stats.rejected.by_reason["PayloadTooLarge"], 3);
}

const BACKGROUND: &[u8] = br#"{"aps":{"content-available":1}}"#;

fn big(n: usize) -> Vec<u8> {
    let head = br#"{"aps":{"alert":""#;
    let tail = br#""}}"#;
    let mut v = head.to_vec();
    v.resize(n - tail.len(), b'a');
    v.extend_from_slice(tail);
    v
}

fn tamper(jwt: &str) -> String {
    // Flip the issued-at claim: same header and signature, different signed bytes.
    let mut parts: Vec<String> = jwt.split('.').map(str::to_owned).collect();
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = String::from_utf8(URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
    let claims = claims.replace("\"iat\":", "\"iat\":1");
    parts[1] = URL_SAFE_NO_PAD.encode(claims);
    parts.join(".")
}

fn signing_key_for(
    p8: &std::path::Path,
    kid: &str,
    team: &str,
) -> herald_apns::provider_token::SigningKey {
    herald_apns::provider_token::SigningKey::from_p8_file(p8, kid, team).unwrap()
}

#[tokio::test]
async fn apns_id_is_echoed_and_production_sends_no_unique_id() {
    let t = start_with(|c, _| c.environment = Environment::Production).await;
    let (cert, key) = cert_identity(&t.pki, CertVariant::Production);
    let mut client = h2_connect(
        t.sim.addrs.h2,
        client_config(&t.pki, Some((&cert, &key)), true),
    )
    .await;
    let id = "123e4567-e89b-42d3-a456-426614174000";
    let a = send(
        &mut client,
        "POST",
        &format!("/3/device/{}", token(9)),
        &[("apns-topic", TOPIC), ("apns-id", id)],
        PAYLOAD,
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["apns-id"], id);
    assert!(a.headers.get("apns-unique-id").is_none());
    // A sandbox certificate on the production simulator.
    let (cert, key) = cert_identity(&t.pki, CertVariant::Sandbox);
    let mut client = h2_connect(
        t.sim.addrs.h2,
        client_config(&t.pki, Some((&cert, &key)), true),
    )
    .await;
    let a = send(
        &mut client,
        "POST",
        &format!("/3/device/{}", token(9)),
        &[("apns-topic", TOPIC)],
        PAYLOAD,
    )
    .await;
    assert_eq!(
        (a.status, a.reason().as_deref()),
        (403, Some("BadCertificateEnvironment"))
    );
    let rec = t.sim.record();
    t.sim
        .wait_for_records(1, std::time::Duration::from_secs(5))
        .await;
    let rec = if rec.is_empty() { t.sim.record() } else { rec };
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].apns_id.as_deref(), Some(id));
    assert_eq!(rec[0].payload.as_bytes(), PAYLOAD);
}

/// docs/apns-protocol.md#http2-request: a request on a certificate connection may leave `apns-topic` out only when
/// the certificate has no topics extension or a single topic in it (the UID is then the topic); one that lists
/// several topics, like the standard certificate (app, `.voip`, `.complication`), is answered 400 MissingTopic,
/// whether its topics are of one app or of several.
#[tokio::test]
async fn a_certificate_with_several_topics_needs_apns_topic() {
    let t = start().await;
    let pki = &t.pki;
    let issue = |name: &str, topics: Vec<String>| {
        let spec = ClientCertSpec {
            uid: Some(TOPIC.to_owned()),
            topics,
            variant: CertVariant::Universal,
        };
        pki.issue_client(&spec, name).unwrap()
    };
    let standard = ClientCertSpec::for_topic(TOPIC, CertVariant::Universal).topics;
    let cases = [
        ("standard", standard, Some("MissingTopic")),
        (
            "two-apps",
            vec![TOPIC.to_owned(), "com.example.other".to_owned()],
            Some("MissingTopic"),
        ),
        ("single-topic", vec![TOPIC.to_owned()], None),
        ("no-extension", vec![], None),
    ];
    let path = format!("/3/device/{}", token(1));
    for (name, topics, expected) in cases {
        let files = issue(name, topics);
        let cfg = client_config(pki, Some((&files.cert, &files.key)), true);
        let mut c = h2_connect(t.sim.addrs.h2, cfg).await;
        let a = send(&mut c, "POST", &path, &[], PAYLOAD).await;
        let want = match expected {
            Some(reason) => (400, Some(reason)),
            None => (200, None),
        };
        assert_eq!((a.status, a.reason().as_deref()), want, "{name}");
        // Naming the topic is always fine.
        let a = send(&mut c, "POST", &path, &[("apns-topic", TOPIC)], PAYLOAD).await;
        assert_eq!(a.status, 200, "{name} with apns-topic: {:?}", a.reason());
    }
}

#[tokio::test]
async fn token_pinning_and_update_rate() {
    let t = start_with(|c, pki| {
        let team = pki.manifest.team_id.clone();
        c.provider_keys
            .push(extra_key(&team, "OTHERKEY01", &pki.manifest.dir, None));
        c.provider_keys.push(extra_key(
            "OTHERTEAM1",
            "TEAM2KEY01",
            &pki.manifest.dir,
            None,
        ));
    })
    .await;
    let pki = &t.pki;
    let dir = &pki.manifest.dir;
    let other_key = signing_key_for(
        &dir.join("AuthKey_OTHERKEY01.p8"),
        "OTHERKEY01",
        &pki.manifest.team_id,
    );
    let other_team = signing_key_for(
        &dir.join("AuthKey_TEAM2KEY01.p8"),
        "TEAM2KEY01",
        "OTHERTEAM1",
    );
    let path = format!("/3/device/{}", token(2));
    let cfg = client_config(pki, None, true);
    let mut c = h2_connect(t.sim.addrs.h2, cfg.clone()).await;
    let first = format!("bearer {}", jwt(pki, now()));
    let ok = send(
        &mut c,
        "POST",
        &path,
        &[("apns-topic", TOPIC), ("authorization", &first)],
        PAYLOAD,
    )
    .await;
    assert_eq!(ok.status, 200);
    // Same token again: fine.
    let ok = send(
        &mut c,
        "POST",
        &path,
        &[("apns-topic", TOPIC), ("authorization", &first)],
        PAYLOAD,
    )
    .await;
    assert_eq!(ok.status, 200);
    let other = format!("bearer {}", other_key.sign(now()).unwrap());
    let a = send(
        &mut c,
        "POST",
        &path,
        &[("apns-topic", TOPIC), ("authorization", &other)],
        PAYLOAD,
    )
    .await;
    assert_eq!(a.reason().as_deref(), Some("UnrelatedKeyIdInToken"));
    let team2 = format!("bearer {}", other_team.sign(now()).unwrap());
    let a = send(
        &mut c,
        "POST",
        &path,
        &[("apns-topic", TOPIC), ("authorization", &team2)],
        PAYLOAD,
    )
    .await;
    // docs/apns-protocol.md#key-scoping: APNs answers another team's token on a connection bound to a team with
    // InvalidProviderToken (the reference's rule 4), not with the reason for an unrelated key of the same team.
    assert_eq!(
        (a.status, a.reason().as_deref()),
        (403, Some("InvalidProviderToken")),
        "another team's key on a connection bound to this team"
    );
    let newer = format!("bearer {}", jwt(pki, now() - 1));
    let a = send(
        &mut c,
        "POST",
        &path,
        &[("apns-topic", TOPIC), ("authorization", &newer)],
        PAYLOAD,
    )
    .await;
    assert_eq!(
        (a.status, a.reason().as_deref()),
        (429, Some("TooManyProviderTokenUpdates"))
    );
    // A fresh connection takes the other key.
    let mut c2 = h2_connect(t.sim.addrs.h2, cfg.clone()).await;
    let a = send(
        &mut c2,
        "POST",
        &path,
        &[("apns-topic", TOPIC), ("authorization", &other)],
        PAYLOAD,
    )
    .await;
    assert_eq!(a.status, 200);

    // The 20 minutes are counted from when this connection adopted its current token, not between the tokens'
    // issue times (docs/apns-protocol.md#provider-tokens): a connection opened when the shared token is 45 minutes
    // old and handed its renewal at once is refused the renewal.
    let mut c3 = h2_connect(t.sim.addrs.h2, cfg).await;
    for (iat, expected) in [
        (now() - 45 * 60, (200, None)),
        (
            now(),
            (429, Some("TooManyProviderTokenUpdates".to_string())),
        ),
    ] {
        let bearer = format!("bearer {}", jwt(pki, iat));
        let a = send(
            &mut c3,
            "POST",
            &path,
            &[("apns-topic", TOPIC), ("authorization", &bearer)],
            PAYLOAD,
        )
        .await;
        assert_eq!(
            (a.status, a.reason()),
            expected,
            "token issued at now - {} s",
            now() - iat
        );
    }
}

#[tokio::test]
async fn scenario_errors_provoke_the_server_side_reasons() {
    for (reason, status) in [
        ("InternalServerError", 500),
        ("ServiceUnavailable", 503),
        ("Shutdown", 503),
        ("TooManyRequests", 429),
        ("Forbidden", 403),
    ] {
        let t = start_with(|c, _| {
            c.scenario.errors.insert(reason.to_string(), 1.0);
        })
        .await;
        let (cert, key) = cert_identity(&t.pki, CertVariant::Universal);
        let mut client = h2_connect(
            t.sim.addrs.h2,
            client_config(&t.pki, Some((&cert, &key)), true),
        )
        .await;
        let a = send(
            &mut client,
            "POST",
            &format!("/3/device/{}", token(1)),
            &[("apns-topic", TOPIC)],
            PAYLOAD,
        )
        .await;
        assert_eq!((a.status, a.reason().as_deref()), (status, Some(reason)));
        assert_eq!(t.sim.stats().accepted.total, 0);
    }
}

#[tokio::test]
async fn topic_specific_keys_only_cover_their_topics() {
    let t = start_with(|c, pki| {
        let team = pki.manifest.team_id.clone();
        let mut k = extra_key(&team, "TOPICKEY01", &pki.manifest.dir, None);
        k.topics = Some(vec!["com.example.allowed".into()]);
        c.provider_keys.push(k);
    })
    .await;
    let key = signing_key_for(
        &t.pki.manifest.dir.join("AuthKey_TOPICKEY01.p8"),
        "TOPICKEY01",
        &t.pki.manifest.team_id,
    );
    let bearer = format!("bearer {}", key.sign(now()).unwrap());
    let mut c = h2_connect(t.sim.addrs.h2, client_config(&t.pki, None, true)).await;
    let path = format!("/3/device/{}", token(1));
    let ok = send(
        &mut c,
        "POST",
        &path,
        &[
            ("apns-topic", "com.example.allowed.voip"),
            ("apns-push-type", "voip"),
            ("authorization", &bearer),
        ],
        PAYLOAD,
    )
    .await;
    assert_eq!(ok.status, 200, "{:?}", ok.reason());
    let a = send(
        &mut c,
        "POST",
        &path,
        &[("apns-topic", TOPIC), ("authorization", &bearer)],
        PAYLOAD,
    )
    .await;
    assert_eq!(
        (a.status, a.reason().as_deref()),
        (403, Some("InvalidProviderToken"))
    );
    let a = send(
        &mut c,
        "POST",
        &path,
        &[
            ("apns-topic", "com.example.allowed"),
            ("apns-push-type", "voip"),
            ("authorization", &bearer),
        ],
        PAYLOAD,
    )
    .await;
    assert_eq!(
        (a.status, a.reason().as_deref()),
        (400, Some("TopicDisallowed")),
        "push type needs the .voip topic"
    );
}

/// A push type without a topic suffix (alert, background, mdm) may not go to a topic whose suffix names another
/// type (docs/apns-protocol.md#push-types): a two-label suffix (`.push-type.*`, `.pushkit.fileprovider`) always
/// names its type; a one-label one (`.voip`, `.complication`, …) only where the connection knows its apps' bundle
/// ids (certificate, topic-specific key) and the topic is not one of them, since a bundle id may end in `.voip`.
#[tokio::test]
async fn push_types_without_a_suffix_stay_off_other_types_topics() {
    let t = start_with(|c, pki| {
        let team = pki.manifest.team_id.clone();
        let mut k = extra_key(&team, "TOPICKEY02", &pki.manifest.dir, None);
        k.topics = Some(vec!["com.example.keyed".into()]);
        c.provider_keys.push(k);
    })
    .await;
    let pki = &t.pki;
    let path = format!("/3/device/{}", token(1));
    let team_bearer = format!("bearer {}", jwt(pki, now()));
    let keyed = signing_key_for(
        &pki.manifest.dir.join("AuthKey_TOPICKEY02.p8"),
        "TOPICKEY02",
        &pki.manifest.team_id,
    );
    let keyed_bearer = format!("bearer {}", keyed.sign(now()).unwrap());
    // A certificate for an app whose bundle id itself ends in `.voip`.
    let voip_app = pki
        .issue_client(
            &ClientCertSpec {
                uid: Some("com.example.voip".into()),
                topics: vec![],
                variant: CertVariant::Universal,
            },
            "voip-app",
        )
        .unwrap();
    let (cert, key) = cert_identity(pki, CertVariant::Universal);

    let mut team = h2_connect(t.sim.addrs.h2, client_config(pki, None, true)).await;
    let mut keyed_conn = h2_connect(t.sim.addrs.h2, client_config(pki, None, true)).await;
    let mut herald_cert = h2_connect(
        t.sim.addrs.h2,
        client_config(pki, Some((&cert, &key)), true),
    )
    .await;
    let mut voip_cert = h2_connect(
        t.sim.addrs.h2,
        client_config(pki, Some((&voip_app.cert, &voip_app.key)), true),
    )
    .await;
    let check = async |conn: &mut H2Client,
                       bearer: Option<&str>,
                       topic: &str,
                       push_type: &str,
                       expect: (u16, Option<&str>)| {
        let mut headers = vec![("apns-topic", topic), ("apns-push-type", push_type)];
        if let Some(b) = bearer {
            headers.push(("authorization", b));
        }
        // A background push goes at priority 5 with only content-available (BadPriority otherwise).
        let body: &[u8] = if push_type == "background" {
            headers.push(("apns-priority", "5"));
            br#"{"aps":{"content-available":1}}"#
        } else {
            PAYLOAD
        };
        let a = send(conn, "POST", &path, &headers, body).await;
        assert_eq!(
            (a.status, a.reason().as_deref()),
            expect,
            "{push_type} to {topic}"
        );
    };
    let disallowed = (400, Some("TopicDisallowed"));
    let ok = (200, None);
    let team_b = Some(team_bearer.as_str());
    let keyed_b = Some(keyed_bearer.as_str());
    // Two-label suffixes name their type on any connection.
    for (topic, push_type) in [
        (format!("{TOPIC}.push-type.liveactivity"), "alert"),
        (format!("{TOPIC}.push-type.widgets"), "background"),
        (format!("{TOPIC}.push-type.controls"), "alert"),
        (format!("{TOPIC}.pushkit.fileprovider"), "alert"),
    ] {
        check(&mut team, team_b, &topic, push_type, disallowed).await;
    }
    // A team key covers apps the simulator does not know: a one-label suffix is taken as part of a bundle id.
    check(&mut team, team_b, "com.example.voip", "alert", ok).await;
    check(
        &mut team,
        team_b,
        &format!("{TOPIC}.complication"),
        "alert",
        ok,
    )
    .await;
    // A topic-specific key names its bundle ids: beyond them, `.voip` is the VoIP topic.
    check(&mut keyed_conn, keyed_b, "com.example.keyed", "alert", ok).await;
    check(
        &mut keyed_conn,
        keyed_b,
        "com.example.keyed.voip",
        "alert",
        disallowed,
    )
    .await;
    check(
        &mut keyed_conn,
        keyed_b,
        "com.example.keyed.voip",
        "voip",
        ok,
    )
    .await;
    // So does a certificate.
    check(
        &mut herald_cert,
        None,
        &format!("{TOPIC}.voip"),
        "background",
        disallowed,
    )
    .await;
    check(
        &mut herald_cert,
        None,
        &format!("{TOPIC}.complication"),
        "alert",
        disallowed,
    )
    .await;
    check(
        &mut herald_cert,
        None,
        &format!("{TOPIC}.complication"),
        "complication",
        ok,
    )
    .await;
    check(&mut herald_cert, None, TOPIC, "alert", ok).await;
    // An app whose bundle id ends in `.voip`: alert to the bundle id, VoIP to the bundle id plus `.voip`.
    check(&mut voip_cert, None, "com.example.voip", "alert", ok).await;
    check(&mut voip_cert, None, "com.example.voip.voip", "voip", ok).await;
    check(
        &mut voip_cert,
        None,
        "com.example.voip.voip",
        "alert",
        disallowed,
    )
    .await;
}

/// Every 410 carries a timestamp (docs/apns-protocol.md#http2-response), those a scenario injects included: the
/// moment of the answer.
#[tokio::test]
async fn injected_410s_carry_a_timestamp() {
    for reason in ["Unregistered", "ExpiredToken"] {
        let t = start_with(|c, _| {
            c.scenario.errors.insert(reason.to_string(), 1.0);
        })
        .await;
        let (cert, key) = cert_identity(&t.pki, CertVariant::Universal);
        let mut client = h2_connect(
            t.sim.addrs.h2,
            client_config(&t.pki, Some((&cert, &key)), true),
        )
        .await;
        let before = now() * 1000;
        let a = send(
            &mut client,
            "POST",
            &format!("/3/device/{}", token(1)),
            &[("apns-topic", TOPIC)],
            PAYLOAD,
        )
        .await;
        let after = (now() + 1) * 1000;
        assert_eq!((a.status, a.reason().as_deref()), (410, Some(reason)));
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        let ts = v["timestamp"]
            .as_u64()
            .unwrap_or_else(|| panic!("{reason}: no timestamp in {v}"));
        assert!((before..=after).contains(&ts), "{reason}: {ts}");
    }
}

/// Header rules as Apple states them (docs/apns-protocol.md#http2-request, #reasons, #simulator): a repeated
/// `authorization` is DuplicateHeaders; a topic that is not ASCII is BadTopic, but only after authentication; a
/// collapse id is limited in bytes only, so UTF-8 within 64 bytes passes.
#[tokio::test]
async fn header_rules_follow_apple() {
    let t = start().await;
    let pki = &t.pki;
    let bearer = format!("bearer {}", jwt(pki, now()));
    let path = format!("/3/device/{}", token(1));
    let (cert, key) = cert_identity(pki, CertVariant::Universal);
    let by_cert = h2_connect(
        t.sim.addrs.h2,
        client_config(pki, Some((&cert, &key)), true),
    )
    .await;
    let by_token = h2_connect(t.sim.addrs.h2, client_config(pki, None, true)).await;
    let bare = h2_connect(t.sim.addrs.h2, client_config(pki, None, true)).await;
    let topic = "com.exämple.herald";
    type HeaderCase<'a> = (
        &'a str,
        H2Client,
        Vec<(&'a str, String)>,
        u16,
        Option<&'a str>,
    );
    let cases: Vec<HeaderCase> = vec![
        (
            "authorization twice",
            bare.clone(),
            vec![
                ("apns-topic", TOPIC.into()),
                ("authorization", bearer.clone()),
                ("authorization", bearer.clone()),
            ],
            400,
            Some("DuplicateHeaders"),
        ),
        (
            "non-ASCII topic without a token: authentication first",
            by_token.clone(),
            vec![("apns-topic", topic.into())],
            403,
            Some("MissingProviderToken"),
        ),
        (
            "non-ASCII topic with a token",
            by_token.clone(),
            vec![
                ("apns-topic", topic.into()),
                ("authorization", bearer.clone()),
            ],
            400,
            Some("BadTopic"),
        ),
        (
            "non-ASCII topic with a certificate",
            by_cert.clone(),
            vec![("apns-topic", topic.into())],
            400,
            Some("BadTopic"),
        ),
        (
            "UTF-8 collapse id of 64 bytes",
            by_cert.clone(),
            vec![
                ("apns-topic", TOPIC.into()),
                ("apns-collapse-id", format!("{}{}", "é".repeat(31), "xy")),
            ],
            200,
            None,
        ),
        (
            "UTF-8 collapse id of 66 bytes",
            by_cert.clone(),
            vec![
                ("apns-topic", TOPIC.into()),
                ("apns-collapse-id", "é".repeat(33)),
            ],
            400,
            Some("BadCollapseId"),
        ),
    ];
    for (name, mut client, headers, status, reason) in cases {
        let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let a = send(&mut client, "POST", &path, &hs, PAYLOAD).await;
        assert_eq!(
            (a.status, a.reason().as_deref()),
            (status, reason),
            "{name}: {}",
            String::from_utf8_lossy(&a.body)
        );
    }
    assert_eq!(
        t.sim
            .wait_for_records(1, std::time::Duration::from_secs(5))
            .await,
        1
    );
    let rec = t.sim.record();
    assert_eq!(
        rec[0].collapse_id.as_deref(),
        Some(format!("{}xy", "é".repeat(31)).as_str())
    );
}

/// A provider token with an absurd `iat` (u64::MAX) is judged without overflowing (which used to end the
/// connection): the connection answers it, as a token issued in the future (`InvalidProviderToken`), and the next
/// request.
#[tokio::test]
async fn an_absurd_issued_at_does_not_break_the_connection() {
    let t = start().await;
    let bearer = format!("bearer {}", jwt(&t.pki, u64::MAX));
    let mut client = h2_connect(t.sim.addrs.h2, client_config(&t.pki, None, true)).await;
    for _ in 0..2 {
        let a = send(
            &mut client,
            "POST",
            &format!("/3/device/{}", token(1)),
            &[("apns-topic", TOPIC), ("authorization", &bearer)],
            PAYLOAD,
        )
        .await;
        assert_eq!(
            (a.status, a.reason().as_deref()),
            (403, Some("InvalidProviderToken"))
        );
    }
}
