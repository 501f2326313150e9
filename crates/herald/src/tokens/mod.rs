//! Invalid device tokens: every token APNs reported invalid (HTTP/2 400 BadDeviceToken, 410 with its timestamp,
//! binary status 8) or listed by the binary feedback service, kept durably and de-duplicated, so operators can
//! remove them from their lists (`GET /api/v1/tokens/invalid`, `herald console tokens invalid`) and remove an
//! entry (`DELETE /api/v1/tokens/invalid`), and written to the feedback log.

pub mod feedback;
pub mod store;
mod writer;

pub use store::{InvalidTokenEntry, InvalidTokenStore, TokenStoreError};
