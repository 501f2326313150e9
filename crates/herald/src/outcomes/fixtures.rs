//! Notifications and outcome records for the unit tests of the outcome listeners.

use std::sync::Arc;

use bytes::Bytes;
use herald_apns::client::PushRequest;
use herald_apns::token_hex::DeviceToken;

use crate::logs::{OutcomeKind, OutcomeRecord};
use crate::queue::message::{MessageId, Notification, unix_now};

/// A notification to `domain` for the token of 32 bytes `token_byte`, accepted now.
pub fn notification(id: MessageId, domain: &str, token_byte: u8) -> Notification {
    Notification {
        id,
        batch_id: MessageId::NONE,
        conn_id: MessageId::NONE,
        domain: Arc::from(domain),
        binding: Arc::from("default"),
        recipient_given: None,
        push: PushRequest {
            token: DeviceToken::from_bytes([token_byte; 32]).unwrap(),
            topic: None,
            push_type: None,
            priority: None,
            expiration: None,
            collapse_id: None,
            apns_id: None,
            payload: Bytes::from_static(b"{}"),
        },
        sender: Arc::from("test"),
        received_at: unix_now(),
    }
}

/// `n` delivered at its first attempt, now.
pub fn delivered(n: &Notification) -> OutcomeRecord<'_> {
    OutcomeRecord {
        kind: OutcomeKind::Delivered,
        notification: n,
        binding_group: "",
        binding: "default",
        retries: 0,
        remote_ip: None,
        transaction_id: Some("apns-id"),
        status: None,
        error: "",
        connected: true,
        bytes: 0,
        at: unix_now(),
        apns_unique_id: None,
        apns_timestamp_ms: None,
    }
}
