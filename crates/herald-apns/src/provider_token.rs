//! Provider tokens for token-based (JWT) authentication (docs/apns-protocol.md#provider-tokens): signing ES256 JWTs
//! from a `.p8` key, the cache every connection of a key shares (refreshed every 20-55 minutes, never more often),
//! the token each connection has adopted from it ([`ConnectionToken`]: never a new one within 20 minutes and a
//! margin of the last on the same connection, and connections that can keep neither retired at points spread over a
//! few minutes rather than all at once), and verification for the simulator, which accepts both the JOSE and the
//! DER signature encodings.

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair,
    KeyPair, ParsedPublicKey,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, SubjectPublicKeyInfoDer};
use serde::{Deserialize, Serialize};

/// Shortest allowed refresh period: APNs answers `TooManyProviderTokenUpdates` to faster rotation.
pub const MIN_REFRESH: Duration = Duration::from_secs(20 * 60);
/// Apple's longest refresh period: a token older than an hour is `ExpiredProviderToken`. herald sends none older than
/// [`MAX_TOKEN_AGE`], this less [`KEEP_MARGIN`].
pub const MAX_REFRESH: Duration = Duration::from_secs(60 * 60);
/// Default refresh period (the one pushy uses).
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(50 * 60);
/// The margin herald keeps to a token's hour: no token it sends is [`MAX_TOKEN_AGE`] (the hour less this) old or
/// older by either clock. The shared token is renewed by then (a configured refresh period is clamped to it) and a
/// connection keeps the token it adopted, after the shared one was renewed, only while that token is younger (see
/// [`ConnectionToken`]). The clocks of herald and APNs need not agree to the second, and a token APNs would call
/// expired is worse than a new connection.
pub const KEEP_MARGIN: Duration = Duration::from_secs(5 * 60);
/// [`MAX_REFRESH`] less [`KEEP_MARGIN`]: 55 minutes.
pub const MAX_TOKEN_AGE: Duration =
    Duration::from_secs(MAX_REFRESH.as_secs() - KEEP_MARGIN.as_secs());
/// A connection takes a renewed token only once it adopted its own [`MIN_REFRESH`] and this long ago: herald records
/// the adoption when it picks the token, before the request reaches APNs, so by APNs' count the 20 minutes start a
/// little later.
pub const SWITCH_MARGIN: Duration = Duration::from_secs(30);
/// A connection that can neither keep its token nor take the renewed one is retired at its own point in the last
/// this-long before [`MAX_TOKEN_AGE`] of its token (52 to 55 minutes): connections that took the token together
/// do not all close, and the pool does not open their successors, at the same instant (docs/apns-protocol.md:
/// don't bring connections up simultaneously).
pub const RETIRE_SPREAD: Duration = Duration::from_secs(3 * 60);

/// What went wrong with a key or a provider token.
#[derive(Debug, thiserror::Error)]
pub enum TokenAuthError {
    #[error("cannot read key file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("no PEM private key found in the .p8 data: {detail}")]
    Pem { detail: String },
    #[error("the key is not a P-256 EC private key usable for ES256: {detail}")]
    KeyRejected { detail: String },
    #[error("the public key is not a P-256 EC public key: {detail}")]
    PublicKeyRejected { detail: String },
    #[error("{what} must not be empty")]
    EmptyId { what: &'static str },
    #[error("signing the provider token failed")]
    Signing,
    #[error("provider token is not three dot-separated segments")]
    Malformed,
    #[error("provider token {part} is not unpadded base64url")]
    Base64 { part: &'static str },
    #[error("provider token {part} is not the expected JSON: {detail}")]
    Json { part: &'static str, detail: String },
    #[error("provider token uses algorithm {0:?}; APNs supports only ES256")]
    UnsupportedAlgorithm(String),
    #[error("provider token signature does not verify")]
    BadSignature,
}

/// The JOSE header of a provider token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtHeader {
    pub alg: String,
    pub kid: String,
    /// Some clients add `"typ":"JWT"` (docs/apns-protocol.md#provider-tokens); it is accepted and not required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
}

/// The claims of a provider token: the team id and the issue time in seconds since the epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtClaims {
    pub iss: String,
    pub iat: u64,
}

/// A `.p8` signing key with its Key ID and Team ID.
pub struct SigningKey {
    key_pair: EcdsaKeyPair,
    rng: SystemRandom,
    key_id: String,
    team_id: String,
    /// base64url of the JOSE header, which never changes for a key.
    header_b64: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id)
            .field("team_id", &self.team_id)
            .finish()
    }
}

impl SigningKey {
    /// Reads a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`) P-256 key. A SEC1 `EC PRIVATE KEY` is accepted too.
    pub fn from_p8_pem(
        pem: &str,
        key_id: &str,
        team_id: &str,
    ) -> Result<SigningKey, TokenAuthError> {
        let der =
            PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TokenAuthError::Pem {
                detail: e.to_string(),
            })?;
        let key_pair = match &der {
            PrivateKeyDer::Pkcs8(p8) => {
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, p8.secret_pkcs8_der())
            }
            other => EcdsaKeyPair::from_private_key_der(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                other.secret_der(),
            ),
        }
        .map_err(|e| TokenAuthError::KeyRejected {
            detail: e.to_string(),
        })?;
        SigningKey::from_key_pair(key_pair, key_id, team_id)
    }

    /// Reads a `.p8` file.
    pub fn from_p8_file(
        path: &Path,
        key_id: &str,
        team_id: &str,
    ) -> Result<SigningKey, TokenAuthError> {
        let pem = std::fs::read_to_string(path).map_err(|source| TokenAuthError::Io {
            path: path.display().to_string(),
            source,
        })?;
        SigningKey::from_p8_pem(&pem, key_id, team_id)
    }

    fn from_key_pair(
        key_pair: EcdsaKeyPair,
        key_id: &str,
        team_id: &str,
    ) -> Result<SigningKey, TokenAuthError> {
        if key_id.is_empty() {
            return Err(TokenAuthError::EmptyId { what: "the key id" });
        }
        if team_id.is_empty() {
            return Err(TokenAuthError::EmptyId {
                what: "the team id",
            });
        }
        let header = JwtHeader {
            alg: "ES256".into(),
            kid: key_id.into(),
            typ: None,
        };
        let header_json = serde_json::to_vec(&header).map_err(|e| TokenAuthError::Json {
            part: "header",
            detail: e.to_string(),
        })?;
        Ok(SigningKey {
            key_pair,
            rng: SystemRandom::new(),
            key_id: key_id.into(),
            team_id: team_id.into(),
            header_b64: URL_SAFE_NO_PAD.encode(header_json),
        })
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn team_id(&self) -> &str {
        &self.team_id
    }

    /// A provider token issued at `issued_at_unix`: header `{"alg":"ES256","kid":…}`, claims
    /// `{"iss":…,"iat":…}`, signature as the 64-byte JOSE `r||s`, all unpadded base64url
    /// (docs/apns-protocol.md#provider-tokens).
    pub fn sign(&self, issued_at_unix: u64) -> Result<String, TokenAuthError> {
        let claims = JwtClaims {
            iss: self.team_id.clone(),
            iat: issued_at_unix,
        };
        let claims_json = serde_json::to_vec(&claims).map_err(|e| TokenAuthError::Json {
            part: "claims",
            detail: e.to_string(),
        })?;
        let mut jwt = String::with_capacity(self.header_b64.len() + claims_json.len() * 4 / 3 + 92);
        jwt.push_str(&self.header_b64);
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(&claims_json, &mut jwt);
        let sig = self
            .key_pair
            .sign(&self.rng, jwt.as_bytes())
            .map_err(|_| TokenAuthError::Signing)?;
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(sig.as_ref(), &mut jwt);
        Ok(jwt)
    }

    /// The matching public key, for verifying this key's tokens.
    pub fn verifying_key(&self) -> Result<VerifyingKey, TokenAuthError> {
        VerifyingKey::from_public_key_bytes(self.key_pair.public_key().as_ref())
    }
}

/// A P-256 public key that verifies provider tokens in either signature encoding.
#[derive(Clone)]
pub struct VerifyingKey {
    fixed: Arc<ParsedPublicKey>,
    asn1: Arc<ParsedPublicKey>,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VerifyingKey(P-256)")
    }
}

impl VerifyingKey {
    /// From a SubjectPublicKeyInfo DER or a SEC1 uncompressed or compressed point.
    pub fn from_public_key_bytes(bytes: &[u8]) -> Result<VerifyingKey, TokenAuthError> {
        let reject = |e: aws_lc_rs::error::KeyRejected| TokenAuthError::PublicKeyRejected {
            detail: e.to_string(),
        };
        Ok(VerifyingKey {
            fixed: Arc::new(ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, bytes).map_err(reject)?),
            asn1: Arc::new(ParsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, bytes).map_err(reject)?),
        })
    }

    /// From a PEM `-----BEGIN PUBLIC KEY-----`.
    pub fn from_public_key_pem(pem: &str) -> Result<VerifyingKey, TokenAuthError> {
        let spki = SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
            TokenAuthError::Pem {
                detail: e.to_string(),
            }
        })?;
        VerifyingKey::from_public_key_bytes(spki.as_ref())
    }

    /// From the `.p8` private key itself (what a simulator configured with the same key file does).
    pub fn from_p8_pem(pem: &str) -> Result<VerifyingKey, TokenAuthError> {
        SigningKey::from_p8_pem(pem, "-", "-")?.verifying_key()
    }

    /// Checks the algorithm and signature (64-byte JOSE `r||s`, or DER) and returns the claims. Key id, team
    /// and age are left to the caller.
    pub fn verify(&self, jwt: &str) -> Result<JwtClaims, TokenAuthError> {
        let (header, claims, signing_input, sig) = split_jwt(jwt)?;
        let header: JwtHeader = decode_part(header, "header")?;
        if header.alg != "ES256" {
            return Err(TokenAuthError::UnsupportedAlgorithm(header.alg));
        }
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| TokenAuthError::Base64 { part: "signature" })?;
        let msg = signing_input.as_bytes();
        // 64 bytes is the JOSE form; DER is tried as well, since a short DER signature can be 64 bytes too.
        let fixed_ok = sig.len() == 64 && self.fixed.verify_sig(msg, &sig).is_ok();
        if !fixed_ok {
            self.asn1
                .verify_sig(msg, &sig)
                .map_err(|_| TokenAuthError::BadSignature)?;
        }
        decode_part(claims, "claims")
    }
}

/// Splits into header, claims, the signed part ("header.claims") and signature.
fn split_jwt(jwt: &str) -> Result<(&str, &str, &str, &str), TokenAuthError> {
    let mut parts = jwt.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenAuthError::Malformed);
    };
    if h.is_empty() || c.is_empty() || s.is_empty() {
        return Err(TokenAuthError::Malformed);
    }
    Ok((h, c, &jwt[..h.len() + 1 + c.len()], s))
}

fn decode_part<T: serde::de::DeserializeOwned>(
    b64: &str,
    part: &'static str,
) -> Result<T, TokenAuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|_| TokenAuthError::Base64 { part })?;
    serde_json::from_slice(&bytes).map_err(|e| TokenAuthError::Json {
        part,
        detail: e.to_string(),
    })
}

/// Reads header and claims without checking the signature (to pick the key by `kid` first).
pub fn decode_unverified(jwt: &str) -> Result<(JwtHeader, JwtClaims), TokenAuthError> {
    let (h, c, _, _) = split_jwt(jwt)?;
    Ok((decode_part(h, "header")?, decode_part(c, "claims")?))
}

/// Re-encodes a JOSE `r||s` ECDSA P-256 signature as an ASN.1 DER `SEQUENCE { INTEGER r, INTEGER s }`, the
/// form OpenSSL and Java produce (docs/apns-protocol.md#provider-tokens).
pub fn jose_signature_to_der(sig: &[u8; 64]) -> Vec<u8> {
    fn integer(out: &mut Vec<u8>, be: &[u8]) {
        let first = be.iter().position(|&b| b != 0).unwrap_or(be.len() - 1);
        let digits = &be[first..];
        let pad = digits[0] & 0x80 != 0;
        out.push(0x02);
        out.push((digits.len() + usize::from(pad)) as u8);
        if pad {
            out.push(0);
        }
        out.extend_from_slice(digits);
    }
    let mut body = Vec::with_capacity(70);
    integer(&mut body, &sig[..32]);
    integer(&mut body, &sig[32..]);
    let mut der = Vec::with_capacity(body.len() + 2);
    der.push(0x30);
    der.push(body.len() as u8);
    der.extend_from_slice(&body);
    der
}

/// Time source for the token cache: a monotonic clock decides when to refresh, the wall clock gives `iat`.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Time elapsed since an arbitrary fixed origin; never goes backwards.
    fn monotonic(&self) -> Duration;
    /// Seconds since the Unix epoch.
    fn unix_seconds(&self) -> u64;
}

/// The real clocks: `Instant` and `SystemTime`.
#[derive(Debug)]
pub struct SystemClock {
    origin: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }
    fn unix_seconds(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// A clock that moves only when told to, for tests (here and in other crates).
#[derive(Debug, Clone)]
pub struct ManualClock {
    state: Arc<Mutex<(Duration, u64)>>,
}

impl ManualClock {
    /// Starts at monotonic zero and the given wall-clock time.
    pub fn new(unix_seconds: u64) -> ManualClock {
        ManualClock {
            state: Arc::new(Mutex::new((Duration::ZERO, unix_seconds))),
        }
    }

    /// Moves both clocks forward.
    pub fn advance(&self, by: Duration) {
        let mut s = lock(&self.state);
        s.0 += by;
        s.1 += by.as_secs();
    }

    /// Sets the wall clock alone (as a suspended machine or a clock step would).
    pub fn set_unix(&self, unix_seconds: u64) {
        lock(&self.state).1 = unix_seconds;
    }
}

impl Clock for ManualClock {
    fn monotonic(&self) -> Duration {
        lock(&self.state).0
    }
    fn unix_seconds(&self) -> u64 {
        lock(&self.state).1
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The provider token every connection of one key uses. Cloning shares it. A new token is minted when the
/// current one is `refresh_after` old (clamped to 20-55 minutes: [`MIN_REFRESH`], [`MAX_TOKEN_AGE`]) by either clock: the monotonic one, or the wall
/// clock its `iat` is read from, which alone moves on while the machine is suspended (a virtual machine paused, a
/// laptop asleep) and which APNs judges the token by. A wall clock set back leaves the monotonic age in force. So a
/// token is renewed only once one of the clocks says it is 20 minutes old. On `ExpiredProviderToken` a new one is
/// minted once per stale token, when it is 20 minutes old by the monotonic clock or an hour old by the wall clock.
#[derive(Debug, Clone)]
pub struct ProviderTokenCache {
    inner: Arc<CacheInner>,
}

#[derive(Debug)]
struct CacheInner {
    key: SigningKey,
    refresh_after: Duration,
    clock: Arc<dyn Clock>,
    state: Mutex<TokenState>,
}

struct TokenState {
    token: Arc<str>,
    minted_at: Duration,
    issued_at: u64,
    mints: u64,
}

impl fmt::Debug for TokenState {
    /// Never shows the token itself.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenState")
            .field("issued_at", &self.issued_at)
            .field("mints", &self.mints)
            .finish_non_exhaustive()
    }
}

impl ProviderTokenCache {
    /// Whether `self` and `other` are the same cache (clones of one another): they sign with the same key and
    /// share the token in force.
    pub fn is_same_cache(&self, other: &ProviderTokenCache) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// A cache on the system clocks; mints the first token now.
    pub fn new(
        key: SigningKey,
        refresh_after: Duration,
    ) -> Result<ProviderTokenCache, TokenAuthError> {
        ProviderTokenCache::with_clock(key, refresh_after, Arc::new(SystemClock::default()))
    }

    /// A cache on the given clock; mints the first token now.
    pub fn with_clock(
        key: SigningKey,
        refresh_after: Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<ProviderTokenCache, TokenAuthError> {
        let issued_at = clock.unix_seconds();
        let token: Arc<str> = key.sign(issued_at)?.into();
        let state = TokenState {
            token,
            minted_at: clock.monotonic(),
            issued_at,
            mints: 1,
        };
        Ok(ProviderTokenCache {
            inner: Arc::new(CacheInner {
                key,
                refresh_after: refresh_after.clamp(MIN_REFRESH, MAX_TOKEN_AGE),
                clock,
                state: Mutex::new(state),
            }),
        })
    }

    /// The refresh period in force (after clamping).
    pub fn refresh_after(&self) -> Duration {
        self.inner.refresh_after
    }

    pub fn key_id(&self) -> &str {
        self.inner.key.key_id()
    }

    pub fn team_id(&self) -> &str {
        self.inner.key.team_id()
    }

    /// How many tokens this cache has minted, the first included.
    pub fn mints(&self) -> u64 {
        lock(&self.inner.state).mints
    }

    /// The current token's age by the monotonic clock, and by the wall clock in seconds (0 if that clock went back).
    fn ages(&self, state: &TokenState) -> (Duration, u64) {
        let clock = &self.inner.clock;
        (
            clock.monotonic().saturating_sub(state.minted_at),
            clock.unix_seconds().saturating_sub(state.issued_at),
        )
    }

    /// The token to send now, minting a new one first if the current one is due by either clock.
    pub fn current(&self) -> Arc<str> {
        let mut state = lock(&self.inner.state);
        let refresh = self.inner.refresh_after;
        let (age, wall_age) = self.ages(&state);
        if age >= refresh || wall_age >= refresh.as_secs() {
            self.mint(&mut state);
        }
        state.token.clone()
    }

    /// Call on `ExpiredProviderToken` with the token that was refused; returns the token to retry with. Only
    /// the first report about a given token mints a new one (so many streams failing together cause one
    /// refresh), and only when the token is at least 20 minutes old or the wall clock says it is past an hour.
    pub fn expired(&self, seen: &str) -> Arc<str> {
        let mut state = lock(&self.inner.state);
        if &*state.token == seen {
            let (age, wall_age) = self.ages(&state);
            if age >= MIN_REFRESH || wall_age >= MAX_REFRESH.as_secs() {
                self.mint(&mut state);
            } else {
                tracing::warn!(
                    key_id = %self.inner.key.key_id(),
                    age_secs = age.as_secs(),
                    "APNs called a provider token expired that is younger than 20 minutes; keeping it (check the clock)"
                );
            }
        }
        state.token.clone()
    }

    fn mint(&self, state: &mut TokenState) {
        let issued_at = self.inner.clock.unix_seconds();
        match self.inner.key.sign(issued_at) {
            Ok(token) => {
                state.token = token.into();
                state.minted_at = self.inner.clock.monotonic();
                state.issued_at = issued_at;
                state.mints += 1;
                tracing::debug!(key_id = %self.inner.key.key_id(), iat = issued_at, "minted a new APNs provider token");
            }
            Err(e) => {
                tracing::warn!(key_id = %self.inner.key.key_id(), error = %e, "keeping the old provider token")
            }
        }
    }
}

/// The provider token one connection sends, and when the connection adopted it (its first request with it).
///
/// APNs answers `429 TooManyProviderTokenUpdates` to a new token on a connection less than 20 minutes
/// ([`MIN_REFRESH`]) after the last one was adopted there, whatever the tokens' `iat`. The shared cache is renewed
/// on its own schedule, so a connection that took the shared token late in its life (opened, say, when the token
/// was 45 minutes old) would otherwise switch to the renewal minutes later. So, when the shared token is not the one
/// the connection adopted ([`ProviderTokenCache::for_connection`]):
///
/// - adopted 20 minutes and [`SWITCH_MARGIN`] (30 s) ago or more: the connection adopts the shared token;
/// - adopted less long ago, and its token younger than the connection's retirement point (by either clock, as the
///   cache judges age): the connection keeps sending its own token, still valid;
/// - else: [`TokenChoice::Retire`]. The connection can neither keep its token nor take a new one, and stops taking
///   work; the connection opened in its place adopts the shared token.
///
/// The retirement point is [`MAX_TOKEN_AGE`] (55 minutes) less an offset in [0, [`RETIRE_SPREAD`]) fixed for the
/// connection from its number ([`ConnectionToken::numbered`]; consecutive numbers are spread evenly over the
/// window), so it lies between 52 and 55 minutes: connections that took the same token are retired one at a time,
/// not all at the instant it reaches 55 minutes, and their successors open spread out as well.
///
/// With the default renewal after 50 minutes, a connection that adopted a token when it was 29½ to 31½ minutes old
/// switches to the renewal 20½ minutes after adopting; one that adopted it when older does so too if that comes
/// before its retirement point, and is else retired at that point.
pub struct ConnectionToken {
    held: Option<HeldToken>,
    /// How long before [`MAX_TOKEN_AGE`] this connection's retirement point lies: less than [`RETIRE_SPREAD`].
    retire_early: Duration,
}

/// Numbers the connections of the process, for [`ConnectionToken::default`].
static CONNECTIONS: AtomicU64 = AtomicU64::new(0);

/// The next connection's number: each connection of the process gets its own offset.
impl Default for ConnectionToken {
    fn default() -> Self {
        ConnectionToken::numbered(CONNECTIONS.fetch_add(1, Ordering::Relaxed))
    }
}

impl ConnectionToken {
    /// The token state of connection number `n`, whose retirement point is fixed by `n`: `n · φ` modulo 1 (φ the
    /// golden ratio) of [`RETIRE_SPREAD`] before [`MAX_TOKEN_AGE`], so any run of consecutive numbers is spread
    /// evenly over the window (connection 0 retires at 55 minutes).
    pub fn numbered(n: u64) -> ConnectionToken {
        // 2^64 / φ: the fractional part of n·φ in 64-bit fixed point.
        const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
        let fraction = u128::from(n.wrapping_mul(GOLDEN));
        let spread_ms = RETIRE_SPREAD.as_millis();
        let early_ms = (fraction * spread_ms) >> 64;
        ConnectionToken {
            held: None,
            retire_early: Duration::from_millis(early_ms as u64),
        }
    }

    /// The age of its token at which this connection is retired when it can neither keep it nor take the renewal:
    /// between [`MAX_TOKEN_AGE`] less [`RETIRE_SPREAD`] (excluded) and [`MAX_TOKEN_AGE`].
    pub fn retirement_point(&self) -> Duration {
        MAX_TOKEN_AGE - self.retire_early
    }
}

/// A token a connection adopted, with what its age is judged by.
struct HeldToken {
    token: Arc<str>,
    /// The token's minting on the cache's monotonic clock, and its `iat`.
    minted_at: Duration,
    issued_at: u64,
    /// When the connection adopted it, on the cache's monotonic clock.
    adopted_at: Duration,
}

impl fmt::Debug for ConnectionToken {
    /// Never shows the token itself.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionToken")
            .field("issued_at", &self.held.as_ref().map(|h| h.issued_at))
            .field("retirement_point", &self.retirement_point())
            .finish_non_exhaustive()
    }
}

/// What a connection does about its provider token ([`ProviderTokenCache::for_connection`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenChoice {
    /// Send this token: the one the connection adopted (just now, or earlier and kept).
    Send(Arc<str>),
    /// Stop taking work: the shared token was renewed, the connection adopted its own `adopted_for` ago (less than
    /// [`MIN_REFRESH`] and [`SWITCH_MARGIN`]), and that token is `token_age` old, past the connection's retirement
    /// point ([`ConnectionToken::retirement_point`]), too close to its hour to keep.
    Retire {
        adopted_for: Duration,
        token_age: Duration,
    },
}

impl ProviderTokenCache {
    /// The token `conn` sends now, by the rules of [`ConnectionToken`]: the shared token (renewed first when due,
    /// as [`ProviderTokenCache::current`]), adopted when the connection has none yet or adopted its own 20½ minutes
    /// ago or more; else the connection's own while it is younger than the connection's retirement point; else
    /// retirement. One lock of the cache, as [`ProviderTokenCache::current`].
    pub fn for_connection(&self, conn: &mut ConnectionToken) -> TokenChoice {
        let mut state = lock(&self.inner.state);
        let refresh = self.inner.refresh_after;
        let (age, wall_age) = self.ages(&state);
        if age >= refresh || wall_age >= refresh.as_secs() {
            self.mint(&mut state);
        }
        let now = self.inner.clock.monotonic();
        if let Some(held) = &conn.held {
            if Arc::ptr_eq(&held.token, &state.token) {
                return TokenChoice::Send(held.token.clone());
            }
            let adopted_for = now.saturating_sub(held.adopted_at);
            if adopted_for < MIN_REFRESH + SWITCH_MARGIN {
                let token_age = now.saturating_sub(held.minted_at).max(Duration::from_secs(
                    self.inner
                        .clock
                        .unix_seconds()
                        .saturating_sub(held.issued_at),
                ));
                if token_age < conn.retirement_point() {
                    return TokenChoice::Send(held.token.clone());
                }
                return TokenChoice::Retire {
                    adopted_for,
                    token_age,
                };
            }
        }
        conn.held = Some(HeldToken {
            token: state.token.clone(),
            minted_at: state.minted_at,
            issued_at: state.issued_at,
            adopted_at: now,
        });
        TokenChoice::Send(state.token.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING;

    pub(crate) fn p8_pem() -> (String, Vec<u8>) {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let der = doc.as_ref().to_vec();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(chunk).unwrap());
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        (pem, der)
    }

    fn key() -> (SigningKey, String) {
        let (pem, _) = p8_pem();
        (
            SigningKey::from_p8_pem(&pem, "ABC123DEFG", "DEF123GHIJ").unwrap(),
            pem,
        )
    }

    fn segments(jwt: &str) -> Vec<String> {
        jwt.split('.').map(str::to_owned).collect()
    }

    #[test]
    fn token_layout() {
        // docs/apns-protocol.md#provider-tokens: header alg/kid, claims iss/iat, base64url unpadded, JOSE signature.
        let (k, _) = key();
        let jwt = k.sign(1_700_000_000).unwrap();
        let s = segments(&jwt);
        assert_eq!(s.len(), 3);
        assert_eq!(
            URL_SAFE_NO_PAD.decode(&s[0]).unwrap(),
            br#"{"alg":"ES256","kid":"ABC123DEFG"}"#
        );
        assert_eq!(
            URL_SAFE_NO_PAD.decode(&s[1]).unwrap(),
            br#"{"iss":"DEF123GHIJ","iat":1700000000}"#
        );
        assert_eq!(URL_SAFE_NO_PAD.decode(&s[2]).unwrap().len(), 64);
        assert!(!jwt.contains('=') && !jwt.contains('+') && !jwt.contains('/'));
        let (h, c) = decode_unverified(&jwt).unwrap();
        assert_eq!(
            h,
            JwtHeader {
                alg: "ES256".into(),
                kid: "ABC123DEFG".into(),
                typ: None
            }
        );
        assert_eq!(
            c,
            JwtClaims {
                iss: "DEF123GHIJ".into(),
                iat: 1_700_000_000
            }
        );
    }

    #[test]
    fn sign_then_verify_in_both_encodings() {
        let (k, pem) = key();
        let jwt = k.sign(42).unwrap();
        let vk = k.verifying_key().unwrap();
        assert_eq!(vk.verify(&jwt).unwrap().iat, 42);
        assert_eq!(
            VerifyingKey::from_p8_pem(&pem)
                .unwrap()
                .verify(&jwt)
                .unwrap()
                .iss,
            "DEF123GHIJ"
        );
        // The same signature re-encoded as DER verifies too.
        let s = segments(&jwt);
        let raw: [u8; 64] = URL_SAFE_NO_PAD.decode(&s[2]).unwrap().try_into().unwrap();
        let der = jose_signature_to_der(&raw);
        assert_eq!(der[0], 0x30);
        let der_jwt = format!("{}.{}.{}", s[0], s[1], URL_SAFE_NO_PAD.encode(&der));
        assert_eq!(vk.verify(&der_jwt).unwrap().iat, 42);
    }

    #[test]
    fn der_signatures_from_an_asn1_signer_verify() {
        // docs/apns-protocol.md#provider-tokens: OpenSSL/Java-style DER signatures must be accepted.
        let (pem, der) = p8_pem();
        let k = SigningKey::from_p8_pem(&pem, "K", "T").unwrap();
        let asn1 = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &der).unwrap();
        let jwt = k.sign(7).unwrap();
        let s = segments(&jwt);
        let input = format!("{}.{}", s[0], s[1]);
        let sig = asn1.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        let der_jwt = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()));
        assert_eq!(k.verifying_key().unwrap().verify(&der_jwt).unwrap().iat, 7);
    }

    #[test]
    fn der_re_encoding_handles_high_bits_and_leading_zeros() {
        let mut sig = [0u8; 64];
        sig[0] = 0x80; // r needs a 0x00 pad byte
        sig[63] = 0x01; // s is a single byte
        let der = jose_signature_to_der(&sig);
        assert_eq!(&der[..5], &[0x30, 2 + 33 + 3, 0x02, 33, 0x00]);
        assert_eq!(&der[der.len() - 3..], &[0x02, 1, 0x01]);
        let zero = jose_signature_to_der(&[0u8; 64]);
        assert_eq!(zero, vec![0x30, 6, 0x02, 1, 0, 0x02, 1, 0]);
    }

    #[test]
    fn tampering_is_detected() {
        let (k, _) = key();
        let vk = k.verifying_key().unwrap();
        let jwt = k.sign(100).unwrap();
        let s = segments(&jwt);
        // A flipped signature byte.
        let mut sig = URL_SAFE_NO_PAD.decode(&s[2]).unwrap();
        sig[10] ^= 1;
        let bad = format!("{}.{}.{}", s[0], s[1], URL_SAFE_NO_PAD.encode(&sig));
        assert!(matches!(vk.verify(&bad), Err(TokenAuthError::BadSignature)));
        // Altered claims under the original signature.
        let claims = URL_SAFE_NO_PAD.encode(br#"{"iss":"DEF123GHIJ","iat":101}"#);
        let bad = format!("{}.{claims}.{}", s[0], s[2]);
        assert!(matches!(vk.verify(&bad), Err(TokenAuthError::BadSignature)));
        // Another key.
        let (other, _) = key();
        assert!(matches!(
            other.verifying_key().unwrap().verify(&jwt),
            Err(TokenAuthError::BadSignature)
        ));
        // Another algorithm.
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","kid":"ABC123DEFG"}"#);
        let bad = format!("{header}.{}.{}", s[1], s[2]);
        assert!(
            matches!(vk.verify(&bad), Err(TokenAuthError::UnsupportedAlgorithm(a)) if a == "HS256")
        );
    }

    #[test]
    fn malformed_tokens() {
        let (k, _) = key();
        let vk = k.verifying_key().unwrap();
        for bad in ["", "a.b", "a.b.c.d", "..", "a..c"] {
            assert!(
                matches!(vk.verify(bad), Err(TokenAuthError::Malformed)),
                "{bad}"
            );
            assert!(decode_unverified(bad).is_err());
        }
        assert!(matches!(
            decode_unverified("!!.e30.e30"),
            Err(TokenAuthError::Base64 { part: "header" })
        ));
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","kid":"K"}"#);
        let c = URL_SAFE_NO_PAD.encode(br#"{"iss":"T","iat":1.5}"#);
        assert!(matches!(
            decode_unverified(&format!("{h}.{c}.x")),
            Err(TokenAuthError::Json { part: "claims", .. })
        ));
        // Padded base64 is refused.
        let jwt = k.sign(1).unwrap();
        assert!(vk.verify(&format!("{jwt}=")).is_err());
        // typ is accepted.
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","kid":"K","typ":"JWT"}"#);
        let c = URL_SAFE_NO_PAD.encode(br#"{"iss":"T","iat":5}"#);
        assert_eq!(
            decode_unverified(&format!("{h}.{c}.x"))
                .unwrap()
                .0
                .typ
                .as_deref(),
            Some("JWT")
        );
    }

    #[test]
    fn key_loading_errors() {
        assert!(matches!(
            SigningKey::from_p8_pem("nothing", "K", "T"),
            Err(TokenAuthError::Pem { .. })
        ));
        let junk = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(matches!(
            SigningKey::from_p8_pem(junk, "K", "T"),
            Err(TokenAuthError::KeyRejected { .. })
        ));
        let (pem, _) = p8_pem();
        assert!(matches!(
            SigningKey::from_p8_pem(&pem, "", "T"),
            Err(TokenAuthError::EmptyId { .. })
        ));
        let e =
            SigningKey::from_p8_file(Path::new("/nonexistent/AuthKey.p8"), "K", "T").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/AuthKey.p8"));
        // Debug never shows key material.
        let k = SigningKey::from_p8_pem(&pem, "K1", "T1").unwrap();
        assert_eq!(
            format!("{k:?}"),
            r#"SigningKey { key_id: "K1", team_id: "T1" }"#
        );
    }

    #[test]
    fn verifying_key_from_spki() {
        let (k, _) = key();
        let jwt = k.sign(9).unwrap();
        let point = k.key_pair.public_key().as_ref().to_vec();
        // SPKI DER for a P-256 key: fixed 26-byte prefix then the 65-byte point.
        let mut spki = vec![
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ];
        spki.extend(&point);
        assert!(
            VerifyingKey::from_public_key_bytes(&spki)
                .unwrap()
                .verify(&jwt)
                .is_ok()
        );
        let b64 = base64::engine::general_purpose::STANDARD.encode(&spki);
        let pem = format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n");
        assert!(
            VerifyingKey::from_public_key_pem(&pem)
                .unwrap()
                .verify(&jwt)
                .is_ok()
        );
        assert!(VerifyingKey::from_public_key_bytes(&[4, 1, 2]).is_err());
    }

    fn cache(refresh: Duration) -> (ProviderTokenCache, ManualClock) {
        let clock = ManualClock::new(1_700_000_000);
        let (k, _) = key();
        (
            ProviderTokenCache::with_clock(k, refresh, Arc::new(clock.clone())).unwrap(),
            clock,
        )
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn cache_refreshes_at_50_minutes_by_default() {
        let (c, clock) = cache(DEFAULT_REFRESH);
        let first = c.current();
        assert_eq!(decode_unverified(&first).unwrap().1.iat, 1_700_000_000);
        for _ in 0..49 {
            clock.advance(MIN);
            assert_eq!(c.current(), first);
        }
        clock.advance(MIN);
        let second = c.current();
        assert_ne!(second, first);
        assert_eq!(
            decode_unverified(&second).unwrap().1.iat,
            1_700_000_000 + 50 * 60
        );
        assert_eq!(c.current(), second);
        assert_eq!(c.mints(), 2);
    }

    /// docs/apns-protocol.md#provider-tokens: no more than once every 20 minutes, no less than once every 60, and
    /// herald keeps [`KEEP_MARGIN`] to the hour: a longer period is clamped to 55 minutes, so no token is sent at 55
    /// minutes or older.
    #[test]
    fn cache_clamps_the_refresh_period() {
        assert_eq!(MAX_TOKEN_AGE, MIN * 55);
        assert_eq!(cache(Duration::from_secs(1)).0.refresh_after(), MIN_REFRESH);
        assert_eq!(
            cache(Duration::from_secs(5 * 3600)).0.refresh_after(),
            MAX_TOKEN_AGE
        );
        assert_eq!(cache(MAX_REFRESH).0.refresh_after(), MAX_TOKEN_AGE);
        assert_eq!(cache(MIN * 55).0.refresh_after(), MIN * 55);
        assert_eq!(
            cache(Duration::from_secs(30 * 60)).0.refresh_after(),
            Duration::from_secs(30 * 60)
        );
        let (c, clock) = cache(Duration::ZERO);
        let first = c.current();
        clock.advance(MIN * 19);
        assert_eq!(c.current(), first);
        clock.advance(MIN);
        assert_ne!(c.current(), first);
        let (c, clock) = cache(Duration::from_secs(10 * 3600));
        let first = c.current();
        let mut conn = ConnectionToken::numbered(0);
        assert_eq!(
            c.for_connection(&mut conn),
            TokenChoice::Send(first.clone())
        );
        clock.advance(MIN * 55 - Duration::from_secs(1));
        assert_eq!(c.current(), first);
        assert_eq!(
            c.for_connection(&mut conn),
            TokenChoice::Send(first.clone())
        );
        clock.advance(Duration::from_secs(1));
        let second = c.current();
        assert_ne!(second, first);
        assert_eq!(c.for_connection(&mut conn), TokenChoice::Send(second));
        assert_eq!(c.mints(), 2);
        // By the wall clock alone too.
        let (c, clock) = cache(MAX_REFRESH);
        let first = c.current();
        clock.set_unix(1_700_000_000 + 55 * 60 - 1);
        assert_eq!(c.current(), first);
        clock.set_unix(1_700_000_000 + 55 * 60);
        assert_ne!(c.current(), first);
    }

    #[test]
    fn expired_reports_never_refresh_before_20_minutes() {
        let (c, clock) = cache(DEFAULT_REFRESH);
        let first = c.current();
        for _ in 0..19 {
            clock.advance(MIN);
            for _ in 0..5 {
                assert_eq!(c.expired(&first), first);
                assert_eq!(c.current(), first);
            }
        }
        assert_eq!(c.mints(), 1);
        clock.advance(MIN);
        let second = c.expired(&first);
        assert_ne!(second, first);
        // Other streams report the same stale token: no further refresh.
        for _ in 0..10 {
            assert_eq!(c.expired(&first), second);
        }
        assert_eq!(c.mints(), 2);
        // A report about the new token right away does not refresh either.
        assert_eq!(c.expired(&second), second);
        assert_eq!(c.mints(), 2);
    }

    #[test]
    fn expired_refreshes_when_the_wall_clock_shows_an_hour() {
        // After a suspend the monotonic clock lags; the wall clock shows the token is too old for APNs.
        let (c, clock) = cache(DEFAULT_REFRESH);
        let first = c.current();
        clock.advance(MIN);
        clock.set_unix(1_700_000_000 + 2 * 3600);
        let second = c.expired(&first);
        assert_ne!(second, first);
        assert_eq!(
            decode_unverified(&second).unwrap().1.iat,
            1_700_000_000 + 2 * 3600
        );
    }

    /// The monotonic clock stands still while the machine is suspended; the wall clock, which the token's `iat`
    /// comes from and APNs judges it by, does not. A token the wall clock shows `refresh_after` old is renewed
    /// before it is sent again; a shorter jump changes nothing.
    #[test]
    fn a_token_the_wall_clock_shows_due_is_renewed_though_the_monotonic_clock_stood_still() {
        let iat = |t: &str| decode_unverified(t).unwrap().1.iat;
        let (c, clock) = cache(DEFAULT_REFRESH);
        let first = c.current();
        clock.set_unix(1_700_000_000 + DEFAULT_REFRESH.as_secs() - 1);
        assert_eq!(c.current(), first);
        assert_eq!(c.mints(), 1);
        // Suspended for an hour: only the wall clock moved.
        clock.set_unix(1_700_000_000 + 3600);
        let second = c.current();
        assert_ne!(second, first);
        assert_eq!(iat(&second), 1_700_000_000 + 3600);
        assert_eq!(c.mints(), 2);
        // The new token is young by both clocks: it stays until one of them says it is due.
        clock.advance(MIN * 49);
        assert_eq!(c.current(), second);
        clock.advance(MIN);
        assert_ne!(c.current(), second);
        assert_eq!(c.mints(), 3);
    }

    /// A wall clock set back makes the token look younger, never older: the monotonic age still renews it on time.
    #[test]
    fn a_wall_clock_set_back_leaves_the_monotonic_age_in_force() {
        let (c, clock) = cache(DEFAULT_REFRESH);
        let first = c.current();
        clock.set_unix(1_600_000_000);
        clock.advance(MIN * 49);
        assert_eq!(c.current(), first);
        clock.advance(MIN);
        let second = c.current();
        assert_ne!(second, first);
        assert_eq!(
            decode_unverified(&second).unwrap().1.iat,
            1_600_000_000 + 50 * 60
        );
        assert_eq!(c.mints(), 2);
    }

    /// A connection that adopted the shared token when it was 45 minutes old does not take its renewal (at 50
    /// minutes) on the same connection within 20 minutes (APNs: `TooManyProviderTokenUpdates`): it keeps its own
    /// while that is younger than 55 minutes, and is then retired; a new connection takes the renewal.
    #[test]
    fn a_connection_keeps_a_token_it_adopted_late_and_is_retired_near_its_hour() {
        let (c, clock) = cache(DEFAULT_REFRESH);
        let first = c.current();
        clock.advance(MIN * 45);
        // Connection 0, whose retirement point is the latest, 55 minutes.
        let mut conn = ConnectionToken::numbered(0);
        assert_eq!(conn.retirement_point(), MAX_TOKEN_AGE);
        assert_eq!(
            c.for_connection(&mut conn),
            TokenChoice::Send(first.clone())
        );
        clock.advance(MIN * 5);
        // The shared token is renewed; this connection keeps the one it adopted 5 minutes ago.
        assert_eq!(
            c.for_connection(&mut conn),
            TokenChoice::Send(first.clone())
        );
        let renewed = c.current();
        assert_ne!(renewed, first);
        assert_eq!(c.mints(), 2);
        clock.advance(MIN * 4 + Duration::from_secs(59));
        assert_eq!(
            c.for_connection(&mut conn),
            TokenChoice::Send(first.clone())
        );
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            c.for_connection(&mut conn),
            TokenChoice::Retire {
                adopted_for: MIN * 10,
                token_age: MIN * 55,
            }
        );
        let mut fresh = ConnectionToken::default();
        assert_eq!(c.for_connection(&mut fresh), TokenChoice::Send(renewed));
    }

    /// A connection takes the renewed token once it adopted its own 20 minutes and [`SWITCH_MARGIN`] ago or more:
    /// at once when that was long before the renewal, else when the 20½ minutes are up, not at 20:00 by herald's
    /// clock, which recorded the adoption before APNs saw it.
    #[test]
    fn a_connection_takes_the_renewal_20_minutes_and_a_margin_after_it_adopted_its_token() {
        assert_eq!(SWITCH_MARGIN, Duration::from_secs(30));
        let (c, clock) = cache(DEFAULT_REFRESH);
        let first = c.current();
        clock.advance(MIN * 25);
        let mut early = ConnectionToken::default();
        assert_eq!(
            c.for_connection(&mut early),
            TokenChoice::Send(first.clone())
        );
        clock.advance(MIN * 7);
        // Retired at 55 minutes at the earliest: it keeps its token past 52½ minutes.
        let mut later = ConnectionToken::numbered(0);
        assert_eq!(
            c.for_connection(&mut later),
            TokenChoice::Send(first.clone())
        );
        clock.advance(MIN * 18);
        let renewed = c.current();
        assert_ne!(renewed, first);
        assert_eq!(
            c.for_connection(&mut early),
            TokenChoice::Send(renewed.clone())
        );
        assert_eq!(
            c.for_connection(&mut later),
            TokenChoice::Send(first.clone())
        );
        // 20:00 and 20:29 after `later` adopted its token: it keeps it.
        clock.advance(MIN * 2);
        assert_eq!(
            c.for_connection(&mut later),
            TokenChoice::Send(first.clone())
        );
        clock.advance(Duration::from_secs(29));
        assert_eq!(
            c.for_connection(&mut later),
            TokenChoice::Send(first.clone())
        );
        // 20:30: it takes the renewal.
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            c.for_connection(&mut later),
            TokenChoice::Send(renewed.clone())
        );
        // Each has adopted the renewal now, and counts from then.
        assert_eq!(c.for_connection(&mut early), TokenChoice::Send(renewed));
        assert_eq!(c.mints(), 2);
    }

    /// Connections that took the same token at the same age, and can neither keep it nor take its renewal, are
    /// retired one at a time over [`RETIRE_SPREAD`], each at its own point, not all at once when the token is 55
    /// minutes old; none sends it at 55 minutes or older, and each keeps it until its point.
    #[test]
    fn connections_that_took_a_token_together_are_retired_one_at_a_time() {
        const N: u64 = 12;
        let second = Duration::from_secs(1);
        let (c, clock) = cache(DEFAULT_REFRESH);
        let first = c.current();
        clock.advance(MIN * 45);
        let mut conns: Vec<ConnectionToken> = (0..N).map(ConnectionToken::numbered).collect();
        for conn in &mut conns {
            assert_eq!(c.for_connection(conn), TokenChoice::Send(first.clone()));
        }
        // From the renewal at 50 minutes, second by second until past 55 minutes.
        clock.advance(MIN * 5);
        let mut retired: Vec<Option<Duration>> = vec![None; N as usize];
        let mut token_age = MIN * 50;
        while token_age <= MIN * 56 {
            for (conn, at) in conns.iter_mut().zip(&mut retired) {
                match c.for_connection(conn) {
                    TokenChoice::Send(t) => {
                        assert!(at.is_none(), "a retired connection sent again");
                        assert_eq!(t, first, "no new token within 20 minutes");
                        assert!(token_age < MAX_TOKEN_AGE, "sent at {token_age:?}");
                    }
                    TokenChoice::Retire {
                        adopted_for,
                        token_age: age,
                    } => {
                        assert_eq!(age, token_age);
                        assert_eq!(adopted_for, token_age - MIN * 45);
                        at.get_or_insert(token_age);
                    }
                }
            }
            clock.advance(second);
            token_age += second;
        }
        let mut at: Vec<Duration> = retired.into_iter().map(Option::unwrap).collect();
        for (conn, at) in conns.iter().zip(&at) {
            // Retired at the first whole second at or past its point.
            assert!(*at >= conn.retirement_point() && *at < conn.retirement_point() + second);
        }
        at.sort();
        assert!(at[0] > MAX_TOKEN_AGE - RETIRE_SPREAD, "{at:?}");
        assert_eq!(at[N as usize - 1], MAX_TOKEN_AGE, "connection 0: {at:?}");
        assert!(at[N as usize - 1] + KEEP_MARGIN <= MAX_REFRESH);
        let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            gaps.iter().all(|g| *g >= second * 5),
            "retired at distinct, spaced times: {at:?}"
        );
        assert!(at[N as usize - 1] - at[0] >= MIN * 2, "{at:?}");
        // A new connection takes the renewal.
        let mut fresh = ConnectionToken::default();
        assert_eq!(c.for_connection(&mut fresh), TokenChoice::Send(c.current()));
    }

    /// Every connection's retirement point lies in the window, the numbered ones as the golden-ratio sequence puts
    /// them, and those numbered by default too.
    #[test]
    fn retirement_points_lie_in_the_last_minutes_before_55() {
        let window = (MAX_TOKEN_AGE - RETIRE_SPREAD)..=MAX_TOKEN_AGE;
        assert_eq!(
            ConnectionToken::numbered(0).retirement_point(),
            MAX_TOKEN_AGE
        );
        // frac(φ) = 0.618…: 111.2 s of the 180 s early.
        assert_eq!(
            ConnectionToken::numbered(1).retirement_point(),
            MAX_TOKEN_AGE - Duration::from_millis(111_246)
        );
        for n in (0..1000).chain([u64::MAX - 1, u64::MAX]) {
            let point = ConnectionToken::numbered(n).retirement_point();
            assert!(
                window.contains(&point) && point != *window.start(),
                "{n}: {point:?}"
            );
        }
        for _ in 0..10 {
            let point = ConnectionToken::default().retirement_point();
            assert!(
                window.contains(&point) && point != *window.start(),
                "{point:?}"
            );
        }
    }

    /// The age of a kept token is judged by either clock, as the cache judges its own: after a suspend (the wall
    /// clock jumped, the monotonic one stood still) a token APNs would call expired is not kept.
    #[test]
    fn a_kept_token_the_wall_clock_shows_old_is_not_kept() {
        let (c, clock) = cache(DEFAULT_REFRESH);
        let first = c.current();
        clock.advance(MIN * 45);
        let mut conn = ConnectionToken::default();
        assert_eq!(c.for_connection(&mut conn), TokenChoice::Send(first));
        clock.set_unix(1_700_000_000 + 2 * 3600);
        assert!(matches!(
            c.for_connection(&mut conn),
            TokenChoice::Retire { token_age, .. } if token_age == Duration::from_secs(2 * 3600)
        ));
    }

    #[test]
    fn clones_share_one_token() {
        let (c, clock) = cache(DEFAULT_REFRESH);
        let d = c.clone();
        let t = std::thread::spawn(move || d.current()).join().unwrap();
        assert_eq!(t, c.current());
        clock.advance(DEFAULT_REFRESH);
        let fresh = c.current();
        assert_ne!(fresh, t);
        assert_eq!(c.clone().current(), fresh);
        assert_eq!(c.mints(), 2);
    }

    #[test]
    fn system_clock_cache_works() {
        let (k, _) = key();
        let vk = k.verifying_key().unwrap();
        let c = ProviderTokenCache::new(k, DEFAULT_REFRESH).unwrap();
        let claims = vk.verify(&c.current()).unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(now.abs_diff(claims.iat) < 300);
        assert_eq!((c.key_id(), c.team_id()), ("ABC123DEFG", "DEF123GHIJ"));
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains(&*c.current()),
            "Debug must not show the token: {dbg}"
        );
    }
}
