//! herald-apns: Apple Push Notification service as a library.
//!
//! Owns both APNs wire protocols (the legacy binary provider API and HTTP/2), payload rules, the classification
//! of every APNs outcome, provider tokens (ES256 JWT) and TLS identities. It knows nothing of spools or
//! configuration files.
//!
//! Modules:
//! - [`token_hex`]: device tokens (hex parsing, formatting, redaction for logs).
//! - [`push`]: request attributes: push type, protocol, priority, topic, collapse id, apns-id, expiration.
//! - [`payload`]: provider-side payload validation (JSON shape, `aps` keys, size limits).
//! - [`notification`]: every check of a whole notification (token, topic, headers, payload) in one call.
//! - [`binary`]: the binary provider API codec (commands 0/1/2, error packet, feedback tuples).
//! - [`broadcast`]: broadcast push and channel management (requests, reasons, a client).
//! - [`reason`]: HTTP/2 reason strings and error bodies.
//! - [`outcome`]: what each binary status and HTTP/2 status/reason means for a notification.
//! - [`provider_token`]: ES256 JWT signing, verification and the shared refreshing cache.
//! - [`client`]: provider-side connections (HTTP/2 and binary) that pull jobs from a shared queue.
//! - [`identity`]: TLS client identities (PEM, PKCS#12), certificate topics and environment, rustls configs.

pub mod binary;
pub mod broadcast;
pub mod client;
pub mod identity;
pub mod notification;
pub mod outcome;
pub mod payload;
pub mod provider_token;
pub mod push;
pub mod reason;
pub mod token_hex;
