//! herald-apns: Apple Push Notification service as a library.
//!
//! Owns both APNs wire protocols (the legacy binary provider API and HTTP/2), payload rules, the classification
//! of every APNs outcome, provider tokens (ES256 JWT) and TLS identities. It knows nothing of spools or
//! configuration files.
