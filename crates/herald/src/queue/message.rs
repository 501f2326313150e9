//! The notification as the queue holds it: what APNs needs, where it came from, and its delivery history.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use herald_apns::client::PushRequest;
use herald_apns::push::{Priority, PushType};
use herald_apns::token_hex::DeviceToken;

/// A Momentum-style message id, `NN/NN-PPPPP-XXXXXXXX`: node, shard, process id and a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId {
    pub node: u8,
    pub shard: u8,
    pub pid: u32,
    pub serial: u32,
}

impl MessageId {
    /// The id that fills the batch and connection fields when there is none.
    pub const NONE: MessageId = MessageId {
        node: 0,
        shard: 0,
        pid: 0,
        serial: 0,
    };
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02X}/{:02X}-{:05}-{:08X}",
            self.node,
            self.shard,
            self.pid % 100_000,
            self.serial
        )
    }
}

/// Issues unique [`MessageId`]s for this process. The serial starts from the clock so that ids of a restarted
/// process do not repeat those of the one before.
#[derive(Debug)]
pub struct IdGenerator {
    node: u8,
    pid: u32,
    serial: AtomicU32,
}

impl IdGenerator {
    pub fn new(node: u8) -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(0);
        IdGenerator {
            node,
            pid: std::process::id(),
            serial: AtomicU32::new(seed.wrapping_mul(256)),
        }
    }

    pub fn next(&self) -> MessageId {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        MessageId {
            node: self.node,
            shard: (serial & 0xff) as u8,
            pid: self.pid,
            serial,
        }
    }
}

/// One push notification for one device, validated and routed to a domain.
#[derive(Debug, Clone)]
pub struct Notification {
    pub id: MessageId,
    /// The inbound batch (SMTP message or REST request) and connection it arrived in, for the mainlog.
    pub batch_id: MessageId,
    pub conn_id: MessageId,
    /// The domain (app) that routes it: its configuration says where and how to deliver.
    pub domain: Arc<str>,
    pub token: DeviceToken,
    pub topic: Option<Arc<str>>,
    pub push_type: Option<PushType>,
    pub priority: Option<Priority>,
    /// APNs expiration, epoch seconds (0: deliver at once or drop). `None`: `apn_expiry` from reception applies.
    pub expiration: Option<u32>,
    pub collapse_id: Option<Arc<str>>,
    /// `apns-id` to send; assigned at acceptance when the sender gave none.
    pub apns_id: Option<Arc<str>>,
    pub payload: Bytes,
    /// Envelope sender and recipient as received, for the logs.
    pub sender: Arc<str>,
    pub recipient: Arc<str>,
    /// Reception time, epoch seconds.
    pub received_at: u64,
}

/// A notification in the queue with its delivery state.
#[derive(Debug)]
pub struct Queued {
    pub notification: Notification,
    /// Delivery attempts that ended in a transient failure so far (the mainlog's retry count).
    pub retries: u32,
    /// When it entered this process's queue (monotonic), for latency figures.
    pub enqueued: Instant,
    /// The APNs expiration actually sent, epoch seconds, fixed at the first attempt.
    pub apns_expiration: Option<u32>,
}

impl Queued {
    pub fn new(notification: Notification) -> Box<Self> {
        Box::new(Queued {
            notification,
            retries: 0,
            enqueued: Instant::now(),
            apns_expiration: None,
        })
    }

    /// The request a connection sends.
    pub fn request(&self) -> PushRequest {
        let n = &self.notification;
        PushRequest {
            token: n.token.clone(),
            topic: n.topic.clone(),
            push_type: n.push_type,
            priority: n.priority,
            expiration: self.apns_expiration.or(n.expiration),
            collapse_id: n.collapse_id.clone(),
            apns_id: n.apns_id.clone(),
            payload: n.payload.clone(),
        }
    }
}

/// Seconds since the epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_id_has_momentums_shape() {
        let id = MessageId {
            node: 0x20,
            shard: 0,
            pid: 25593,
            serial: 0x945A87F3,
        };
        // momentum.md §7.1: "20/00-25593-945A87F3"
        assert_eq!(id.to_string(), "20/00-25593-945A87F3");
    }

    #[test]
    fn ids_are_unique() {
        let generator = IdGenerator::new(0);
        let a = generator.next();
        let b = generator.next();
        assert_ne!(a, b);
        assert_ne!(a.to_string(), b.to_string());
    }
}
