//! Broadcast push and channel management (docs/apns-protocol.md §6.2): the requests of Apple's channel
//! management API and of broadcast sends, the broadcast error reasons with their class, and a small HTTP/2 client
//! that speaks both, with certificate or provider-token authentication.
//!
//! Modules:
//! - [`reason`]: the broadcast reason strings, their statuses and how each is classified.
//! - [`request`]: channel ids, storage policies, and the HTTP/2 requests (method, path, headers) of every call.
//! - [`client`]: one HTTP/2 connection to a management or broadcast host, one call per stream.

pub mod client;
pub mod reason;
pub mod request;

pub use client::{BroadcastClient, BroadcastClientError, ChannelInfo};
pub use reason::{BroadcastReason, classify_broadcast, reason_label};
pub use request::{
    BROADCAST_PAYLOAD_LIMIT, BroadcastSend, ChannelId, ChannelOp, RequestError, StoragePolicy,
};
