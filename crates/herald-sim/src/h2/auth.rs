//! Per-connection authentication (docs/apns-protocol.md#authentication): certificate connections (topics from the
//! client certificate's UID and topics extension, environment from its environment extensions) and token connections
//! (ES256 provider tokens, JOSE or DER signatures, team and key pinned on the first valid token, freshness and
//! update-rate rules).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_apns::identity::{CertEnvironment, CertificateInfo};
use herald_apns::provider_token::{VerifyingKey, decode_unverified};
use herald_apns::push::PushType;
use herald_apns::reason::Reason;

use crate::config::{ConfigError, Environment, ProviderKey};

/// Suffixes that turn a bundle id into a push-type topic (docs/apns-protocol.md#push-types).
const TOPIC_SUFFIXES: &[&str] = &[
    ".voip",
    ".complication",
    ".push-type.controls",
    ".pushkit.fileprovider",
    ".push-type.liveactivity",
    ".location-query",
    ".voip-ptt",
    ".push-type.widgets",
];

/// The bundle id of a topic: the topic without a push-type suffix.
pub(crate) fn topic_base(topic: &str) -> &str {
    for s in TOPIC_SUFFIXES {
        if let Some(base) = topic.strip_suffix(s)
            && !base.is_empty()
        {
            return base;
        }
    }
    topic
}

/// A topic is printable ASCII without spaces, not empty, at most 255 bytes.
pub(crate) fn topic_syntax_ok(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= 255 && topic.bytes().all(|b| b.is_ascii_graphic())
}

/// Whether a certificate marked for `cert` may be used on the simulator of `env` (universal ones everywhere;
/// docs/apns-protocol.md#certificates).
pub(crate) fn cert_fits_environment(cert: CertEnvironment, env: Environment) -> bool {
    matches!(
        (cert, env),
        (CertEnvironment::Universal, _)
            | (CertEnvironment::Production, Environment::Production)
            | (CertEnvironment::Development, Environment::Sandbox)
    )
}

/// A key the simulator verifies tokens with.
pub(crate) struct KnownKey {
    pub meta: ProviderKey,
    pub key: VerifyingKey,
}

/// Every provider key, by key id.
#[derive(Default)]
pub(crate) struct KeyRing {
    keys: HashMap<String, KnownKey>,
}

impl KeyRing {
    pub fn new(keys: &[ProviderKey]) -> Result<KeyRing, ConfigError> {
        let mut ring = KeyRing::default();
        for k in keys {
            let key =
                VerifyingKey::from_p8_pem(&k.p8_pem).map_err(|e| ConfigError::ProviderKey {
                    key_id: k.key_id.clone(),
                    message: e.to_string(),
                })?;
            ring.keys.insert(
                k.key_id.clone(),
                KnownKey {
                    meta: k.clone(),
                    key,
                },
            );
        }
        Ok(ring)
    }
}

/// What a certificate connection may push to.
#[derive(Debug)]
pub(crate) struct CertAuth {
    /// `Err` = the certificate is not an APNs certificate (BadCertificate) or is for the other environment.
    pub status: Result<(), Reason>,
    pub uid: String,
    pub allowed: Vec<String>,
    /// Distinct bundle ids among the allowed topics.
    pub bases: Vec<String>,
    /// Whether the certificate lists several topics in its topics extension, so that a request must name its
    /// topic (MissingTopic otherwise).
    pub several_topics: bool,
}

impl CertAuth {
    pub fn from_der(der: &[u8], env: Environment) -> CertAuth {
        let info = match CertificateInfo::from_der(der) {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!("client certificate unreadable: {e}");
                return CertAuth {
                    status: Err(Reason::BadCertificate),
                    uid: String::new(),
                    allowed: vec![],
                    bases: vec![],
                    several_topics: false,
                };
            }
        };
        let Some(uid) = info.uid.clone().filter(|u| topic_syntax_ok(u)) else {
            return CertAuth {
                status: Err(Reason::BadCertificate),
                uid: String::new(),
                allowed: vec![],
                bases: vec![],
                several_topics: false,
            };
        };
        let env_ok = cert_fits_environment(info.environment, env);
        let several_topics = info.topics.iter().any(|t| *t != info.topics[0]);
        let allowed: Vec<String> = if info.topics.is_empty() {
            vec![
                uid.clone(),
                format!("{uid}.voip"),
                format!("{uid}.complication"),
            ]
        } else {
            info.topics.clone()
        };
        let mut bases: Vec<String> = allowed.iter().map(|t| topic_base(t).to_owned()).collect();
        bases.sort();
        bases.dedup();
        CertAuth {
            status: if env_ok {
                Ok(())
            } else {
                Err(Reason::BadCertificateEnvironment)
            },
            uid,
            allowed,
            bases,
            several_topics,
        }
    }

    /// The topic when the request names none: the UID (the subject's bundle id), for a certificate without a
    /// topics extension or with a single topic in it. One that lists several topics (the standard "Sandbox &
    /// Production" certificate: the app, its `.voip` and its `.complication` topics) needs `apns-topic` on every
    /// request, even when all its topics are of one app: `None`, which is MissingTopic
    /// (docs/apns-protocol.md#http2-request).
    pub fn default_topic(&self) -> Option<&str> {
        (!self.several_topics).then_some(self.uid.as_str())
    }

    /// BadTopic for a malformed topic, TopicDisallowed for one the certificate does not cover (a push-type
    /// suffix it lacks, another app, or a push type certificates cannot send).
    pub fn check_topic(&self, topic: &str, push_type: Option<PushType>) -> Result<(), Reason> {
        if !topic_syntax_ok(topic) {
            return Err(Reason::BadTopic);
        }
        if push_type.is_some_and(|p| p.requires_token_auth()) {
            return Err(Reason::TopicDisallowed);
        }
        if self.allowed.iter().any(|t| t == topic) {
            Ok(())
        } else {
            Err(Reason::TopicDisallowed)
        }
    }
}

/// How far ahead of the simulator's clock a token's `iat` may be. Apple does not document what APNs answers to
/// a token issued in the future; the simulator refuses one further ahead than this (a client whose clock is that
/// far off, or a forged `iat` that would otherwise keep a token fresh for longer) as `403 InvalidProviderToken`,
/// and allows the skew of clocks kept by NTP.
const MAX_IAT_AHEAD: Duration = Duration::from_secs(5 * 60);

/// The token adopted by a connection.
#[derive(Debug)]
struct Adopted {
    raw: Bytes,
    iat: u64,
    key_id: String,
    /// When this connection took it (its first request with it): a different token is judged by the time since.
    adopted_at: Instant,
}

/// Token-connection state: pinned team and key, the current token.
pub(crate) struct TokenAuth {
    ring: Arc<KeyRing>,
    env: Environment,
    max_age: u64,
    update_interval: Duration,
    current: Option<Adopted>,
    team: Option<String>,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TokenAuth {
    pub fn new(
        ring: Arc<KeyRing>,
        env: Environment,
        max_age: Duration,
        update_interval: Duration,
    ) -> TokenAuth {
        TokenAuth {
            ring,
            env,
            max_age: max_age.as_secs(),
            update_interval,
            current: None,
            team: None,
        }
    }

    /// Whether a valid token has been seen on this connection.
    pub fn authenticated(&self) -> bool {
        self.current.is_some()
    }

    /// Checks the `authorization` header (docs/apns-protocol.md#provider-tokens, docs/apns-protocol.md#key-scoping,
    /// docs/apns-protocol.md#simulator token validator); on success returns the key's topic restriction.
    pub fn check(&mut self, header: Option<&[u8]>) -> Result<Option<&[String]>, Reason> {
        self.check_at(header, Instant::now(), now_secs())
    }

    /// [`TokenAuth::check`] at the given time: `now` on the monotonic clock (when a token is adopted, and how long
    /// ago), `now_secs` on the wall clock (what a token's `iat` is compared with).
    fn check_at(
        &mut self,
        header: Option<&[u8]>,
        now: Instant,
        now_secs: u64,
    ) -> Result<Option<&[String]>, Reason> {
        // No header, or one without a token in it, is a missing token; a header that holds anything else but
        // `bearer <token>` is a malformed one (docs/apns-protocol.md#reasons: InvalidProviderToken).
        let Some(value) = header else {
            return Err(Reason::MissingProviderToken);
        };
        if matches!(value.trim_ascii(), b"" | b"bearer") {
            return Err(Reason::MissingProviderToken);
        }
        let jwt = value
            .strip_prefix(b"bearer ")
            .ok_or(Reason::InvalidProviderToken)?;
        if let Some(cur) = &self.current
            && cur.raw.as_ref() == value
        {
            if now_secs > cur.iat.saturating_add(self.max_age) {
                return Err(Reason::ExpiredProviderToken);
            }
            return Ok(self
                .ring
                .keys
                .get(&cur.key_id)
                .and_then(|k| k.meta.topics.as_deref()));
        }
        let jwt = std::str::from_utf8(jwt).map_err(|_| Reason::InvalidProviderToken)?;
        let (header, _) = decode_unverified(jwt).map_err(|_| Reason::InvalidProviderToken)?;
        let known = self
            .ring
            .keys
            .get(header.kid.as_str())
            .ok_or(Reason::InvalidProviderToken)?;
        let claims = known
            .key
            .verify(jwt)
            .map_err(|_| Reason::InvalidProviderToken)?;
        if claims.iss != known.meta.team_id {
            return Err(Reason::InvalidProviderToken);
        }
        // A connection is bound to the team of its first token (docs/apns-protocol.md#key-scoping): APNs refuses a
        // token of another team there as InvalidProviderToken (observed, and the rule of pushy's mock), keeping
        // UnrelatedKeyIdInToken for another key of the bound team.
        if self.team.as_deref().is_some_and(|t| t != claims.iss) {
            return Err(Reason::InvalidProviderToken);
        }
        if self
            .current
            .as_ref()
            .is_some_and(|c| c.key_id != known.meta.key_id)
        {
            return Err(Reason::UnrelatedKeyIdInToken);
        }
        if known.meta.environment.is_some_and(|e| e != self.env) {
            return Err(Reason::BadEnvironmentKeyIdInToken);
        }
        // `iat` is the client's: saturating, so an absurd one cannot overflow.
        if claims.iat > now_secs.saturating_add(MAX_IAT_AHEAD.as_secs()) {
            return Err(Reason::InvalidProviderToken);
        }
        if now_secs > claims.iat.saturating_add(self.max_age) {
            return Err(Reason::ExpiredProviderToken);
        }
        // A token may replace the current one only `update_interval` (20 minutes) after this connection adopted
        // the current one (docs/apns-protocol.md#provider-tokens: "more than once every 20 minutes on the same
        // connection"): judged by when the connection took it, not by the tokens' `iat`, so a connection that took
        // a shared token late in its life cannot take the token's renewal for 20 minutes. A current token that has
        // expired may always be replaced.
        if let Some(cur) = &self.current {
            let cur_fresh = now_secs <= cur.iat.saturating_add(self.max_age);
            if cur_fresh && now.saturating_duration_since(cur.adopted_at) < self.update_interval {
                return Err(Reason::TooManyProviderTokenUpdates);
            }
        }
        self.team = Some(claims.iss.clone());
        self.current = Some(Adopted {
            raw: Bytes::copy_from_slice(value),
            iat: claims.iat,
            key_id: known.meta.key_id.clone(),
            adopted_at: now,
        });
        Ok(known.meta.topics.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_bases_strip_push_type_suffixes() {
        assert_eq!(topic_base("com.a.voip"), "com.a");
        assert_eq!(topic_base("com.a.push-type.liveactivity"), "com.a");
        assert_eq!(topic_base("com.a"), "com.a");
        assert_eq!(topic_base(".voip"), ".voip");
        assert!(!topic_syntax_ok("a b"));
        assert!(!topic_syntax_ok(""));
        assert!(topic_syntax_ok("com.example.app"));
    }

    /// A token connection's state on a ring of one key, and that key to sign with.
    fn token_conn() -> (TokenAuth, herald_apns::provider_token::SigningKey) {
        let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap()
            .serialize_pem();
        let meta = ProviderKey {
            key_id: "KEY1234567".to_owned(),
            team_id: "TEAM123456".to_owned(),
            p8_pem: pem.clone(),
            environment: None,
            topics: None,
        };
        let ring = Arc::new(KeyRing::new(&[meta]).unwrap());
        let signer =
            herald_apns::provider_token::SigningKey::from_p8_pem(&pem, "KEY1234567", "TEAM123456")
                .unwrap();
        let auth = TokenAuth::new(
            ring,
            Environment::Sandbox,
            Duration::from_secs(3600),
            Duration::from_secs(20 * 60),
        );
        (auth, signer)
    }

    fn bearer(signer: &herald_apns::provider_token::SigningKey, iat: u64) -> Vec<u8> {
        format!("bearer {}", signer.sign(iat).unwrap()).into_bytes()
    }

    const NOW: u64 = 1_700_000_000;
    const MIN: u64 = 60;

    /// A new token is judged by how long ago this connection adopted its current one, not by the tokens' `iat`
    /// (APNs: "more than once every 20 minutes on the same connection"): a connection that took a 45-minute-old
    /// token cannot take its renewal 5 minutes later, though the two were issued 50 minutes apart; 20 minutes
    /// after it adopted the first, it can.
    #[test]
    fn a_new_token_is_judged_by_when_the_connection_adopted_its_current_one() {
        let (mut auth, signer) = token_conn();
        let start = Instant::now();
        let first = bearer(&signer, NOW - 45 * MIN);
        assert!(auth.check_at(Some(&first), start, NOW).is_ok());
        let renewed = bearer(&signer, NOW + 5 * MIN);
        let later = start + Duration::from_secs(5 * MIN);
        assert_eq!(
            auth.check_at(Some(&renewed), later, NOW + 5 * MIN),
            Err(Reason::TooManyProviderTokenUpdates)
        );
        // The adopted token still goes through.
        assert!(auth.check_at(Some(&first), later, NOW + 5 * MIN).is_ok());
        // Two tokens issued a minute apart, the second sent 20 minutes after the connection adopted the first.
        let (mut auth, signer) = token_conn();
        let first = bearer(&signer, NOW);
        assert!(auth.check_at(Some(&first), start, NOW).is_ok());
        let next = bearer(&signer, NOW + MIN);
        let at = start + Duration::from_secs(20 * MIN);
        assert!(auth.check_at(Some(&next), at, NOW + 20 * MIN).is_ok());
        // And the connection now counts from that adoption.
        let third = bearer(&signer, NOW + 2 * MIN);
        assert_eq!(
            auth.check_at(
                Some(&third),
                at + Duration::from_secs(19 * MIN),
                NOW + 39 * MIN
            ),
            Err(Reason::TooManyProviderTokenUpdates)
        );
    }

    /// A token whose `iat` is further in the future than clocks drift apart is refused as invalid; one a little
    /// ahead is taken.
    #[test]
    fn a_token_issued_in_the_future_is_invalid() {
        let (mut auth, signer) = token_conn();
        let now = Instant::now();
        let ahead = bearer(&signer, NOW + 5 * MIN + 1);
        assert_eq!(
            auth.check_at(Some(&ahead), now, NOW),
            Err(Reason::InvalidProviderToken)
        );
        assert!(!auth.authenticated());
        let slightly = bearer(&signer, NOW + 4 * MIN);
        assert!(auth.check_at(Some(&slightly), now, NOW).is_ok());
        assert!(auth.authenticated());
    }
}
