//! The notification as the queue holds it: what APNs needs, where it came from, and its delivery history.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use herald_apns::client::PushRequest;
use herald_apns::token_hex::DeviceToken;

/// A message id: unique across restarts and ordered by acceptance, also the notification's spool key.
///
/// Bits: node (8) | start time of the accepting process, Unix ms (56) | counter within that process (64).
/// It prints in Momentum's `NN/NN-PPPPP-XXXXXXXX` shape: node, bits 32-39 of the counter, the process start
/// second modulo 100000, and the low 32 bits of the counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MessageId(pub u128);

impl MessageId {
    /// The id that fills the batch and connection fields when there is none.
    pub const NONE: MessageId = MessageId(0);

    pub fn from_parts(node: u8, epoch_ms: u64, counter: u64) -> Self {
        let epoch = u128::from(epoch_ms) & ((1u128 << 56) - 1);
        MessageId((u128::from(node) << 120) | (epoch << 64) | u128::from(counter))
    }

    pub fn node(self) -> u8 {
        (self.0 >> 120) as u8
    }

    pub fn epoch_ms(self) -> u64 {
        ((self.0 >> 64) as u64) & ((1u64 << 56) - 1)
    }

    pub fn counter(self) -> u64 {
        self.0 as u64
    }
}

impl MessageId {
    /// The printed form, built on the stack: ids are printed for every log record, status and webhook event.
    pub fn text(self) -> IdText {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let counter = self.counter();
        let mut t = [0u8; ID_TEXT_LEN];
        let mut hex = |at: usize, value: u64, digits: usize| {
            for i in 0..digits {
                t[at + i] = HEX[((value >> (4 * (digits - 1 - i))) & 0xf) as usize];
            }
        };
        hex(0, u64::from(self.node()), 2);
        hex(3, (counter >> 32) & 0xff, 2);
        hex(12, counter & 0xffff_ffff, 8);
        let mut second = (self.epoch_ms() / 1000) % 100_000;
        for i in (6..11).rev() {
            t[i] = b'0' + (second % 10) as u8;
            second /= 10;
        }
        t[2] = b'/';
        t[5] = b'-';
        t[11] = b'-';
        IdText(t)
    }
}

/// Length of a printed [`MessageId`]: `NN/NN-PPPPP-XXXXXXXX`.
pub const ID_TEXT_LEN: usize = 20;

/// A printed [`MessageId`] (ASCII, [`ID_TEXT_LEN`] bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IdText([u8; ID_TEXT_LEN]);

impl IdText {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits, letters, '/' and '-' are ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.text().as_str())
    }
}

/// Issues unique, increasing [`MessageId`]s for this process.
#[derive(Debug)]
pub struct IdGenerator {
    node: u8,
    epoch_ms: u64,
    counter: AtomicU64,
}

impl IdGenerator {
    /// A generator for `node` (the first field of printed ids).
    pub fn new(node: u8) -> Self {
        IdGenerator::above(node, None)
    }

    /// The node field of a named node's ids (a JetStream node's name): a hash of the name, never 0 (the embedded
    /// spool's).
    pub fn node_of(name: &str) -> u8 {
        // FNV-1a, folded to one byte.
        let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let byte = hash.to_le_bytes().iter().fold(0u8, |a, b| a ^ b);
        byte.max(1)
    }

    /// A generator whose ids all sort after `floor` (the greatest id already spooled, or issued by an earlier run),
    /// even if the clock went back. Its ids also print apart from the floor's: printed ids carry the start second
    /// and restart their counter at 1, so a run starting within the floor's second (a restart in the same second,
    /// a clock stepped back) starts at the next whole second instead.
    pub fn above(node: u8, floor: Option<MessageId>) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let past_floor = floor.map_or(0, |f| {
            (f.epoch_ms() / 1000).saturating_add(1).saturating_mul(1000)
        });
        let epoch_ms = now.max(past_floor);
        IdGenerator {
            node,
            epoch_ms,
            counter: AtomicU64::new(1),
        }
    }

    /// The start time its ids carry (Unix ms).
    pub fn epoch_ms(&self) -> u64 {
        self.epoch_ms
    }

    pub fn next(&self) -> MessageId {
        MessageId::from_parts(
            self.node,
            self.epoch_ms,
            self.counter.fetch_add(1, Ordering::Relaxed),
        )
    }
}

/// The binding every notification has unless its injection names another (Momentum's `default`).
pub const DEFAULT_BINDING: &str = "default";

/// The binding group of the default binding, and of any binding whose configuration names none (Momentum's
/// `default`); mainlog lines name it when no settings say otherwise.
pub const DEFAULT_BINDING_GROUP: &str = "default";

/// One push notification for one device, validated and routed to a domain.
#[derive(Debug, Clone)]
pub struct Notification {
    pub id: MessageId,
    /// The inbound batch (SMTP message or REST request) and connection it arrived in, for the mainlog.
    pub batch_id: MessageId,
    pub conn_id: MessageId,
    /// The domain (app) that routes it: its configuration says where and how to deliver.
    pub domain: Arc<str>,
    /// The binding it is delivered from ([`DEFAULT_BINDING`] unless the injection named one): with the domain it
    /// selects the options, the pool and the source address (docs/momentum-compat.md#fallback).
    pub binding: Arc<str>,
    /// What APNs is sent (token, request headers, payload): the same type from acceptance to the connection,
    /// whose clone per attempt shares every part.
    pub push: PushRequest,
    /// Envelope sender as received, for the logs (shared between the notifications that carry the same one).
    pub sender: Arc<str>,
    /// Envelope recipient as received, for the logs, when it is not `<token hex>@<domain>`: that one (what REST
    /// submissions get, and SMTP recipients whose local part is the token) is derived when needed instead of
    /// stored. Read it with [`Notification::recipient`].
    pub recipient_given: Option<Arc<str>>,
    /// Reception time, epoch seconds.
    pub received_at: u64,
}

impl Notification {
    /// The envelope recipient as received (`<token hex>@<domain>` unless it was another address).
    pub fn recipient(&self) -> Cow<'_, str> {
        match &self.recipient_given {
            Some(given) => Cow::Borrowed(given),
            None => Cow::Owned(derived_recipient(&self.push.token, &self.domain)),
        }
    }

    /// What [`recipient_given`](Self::recipient_given) holds for a received `recipient`: nothing when it is the
    /// one [`recipient`](Self::recipient) derives from the token and the domain.
    pub fn given_recipient(recipient: &str, token: &DeviceToken, domain: &str) -> Option<Arc<str>> {
        if is_derived_recipient(recipient, token, domain) {
            None
        } else {
            Some(Arc::from(recipient))
        }
    }
}

/// `<token hex, lowercase>@<domain>`.
fn derived_recipient(token: &DeviceToken, domain: &str) -> String {
    let mut r = String::with_capacity(2 * token.len() + 1 + domain.len());
    token.write_hex(&mut r);
    r.push('@');
    r.push_str(domain);
    r
}

/// Whether `recipient` is exactly [`derived_recipient`] of `token` and `domain`, without building it.
fn is_derived_recipient(recipient: &str, token: &DeviceToken, domain: &str) -> bool {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let Some((local, rest)) = recipient.split_at_checked(2 * token.len()) else {
        return false;
    };
    rest.strip_prefix('@') == Some(domain)
        && local
            .as_bytes()
            .chunks_exact(2)
            .zip(token.as_bytes())
            .all(|(pair, &b)| {
                pair[0] == HEX[usize::from(b >> 4)] && pair[1] == HEX[usize::from(b & 0xf)]
            })
}

/// A notification in the queue with its delivery state.
#[derive(Debug)]
pub struct Queued {
    pub notification: Notification,
    /// Delivery attempts that ended in a transient failure so far (the mainlog's retry count).
    pub retries: u32,
    /// When it entered this process's queue (monotonic), for latency figures.
    pub enqueued: Instant,
    /// Connections lost with it on the wire without an answer, and streams APNs refused for it, since its last
    /// counted attempt (see `queue::domain::LOSSES_PER_ATTEMPT`).
    pub losses: u8,
    /// Its last answer refused its connection (`503 Shutdown`, `429 TooManyProviderTokenUpdates`), and it was
    /// handed back unsent for another connection: a second such answer in a row counts as an attempt
    /// (`outbound::pool`'s rule for connection refusals).
    pub refusal_handed_back: bool,
}

impl Queued {
    pub fn new(notification: Notification) -> Box<Self> {
        Box::new(Queued {
            notification,
            retries: 0,
            enqueued: Instant::now(),
            losses: 0,
            refusal_handed_back: false,
        })
    }

    /// The request a connection sends: a clone of [`Notification::push`] that shares its token, strings and
    /// payload.
    pub fn request(&self) -> PushRequest {
        self.notification.push.clone()
    }
}

/// Seconds since the epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the epoch, now.
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_id_has_momentums_shape() {
        let id = MessageId::from_parts(0x20, 1_800_000_000 + 25593 * 1000, 0x945A87F3);
        // docs/momentum-compat.md#mainlog: "20/00-25593-945A87F3"
        assert_eq!(id.to_string(), "20/00-25593-945A87F3");
        assert_eq!(format!("[{id:>22}]"), "[  20/00-25593-945A87F3]");
    }

    proptest::proptest! {
        #[test]
        fn the_printed_id_is_momentums_format(node: u8, epoch_ms in 0u64..(1 << 56), counter: u64) {
            let id = MessageId::from_parts(node, epoch_ms, counter);
            let expected = format!(
                "{:02X}/{:02X}-{:05}-{:08X}",
                node,
                (counter >> 32) as u8,
                (epoch_ms / 1000) % 100_000,
                counter as u32
            );
            let text = id.text();
            proptest::prop_assert_eq!(text.as_str(), expected.as_str());
            proptest::prop_assert_eq!(id.to_string(), expected);
        }
    }

    #[test]
    fn named_nodes_issue_ids_apart_from_each_other_and_from_the_embedded_spool() {
        assert_eq!(
            IdGenerator::node_of("herald-a"),
            IdGenerator::node_of("herald-a")
        );
        let names = [
            "herald-a", "herald-b", "herald-c", "node1", "node2", "node3",
        ];
        let bytes: std::collections::BTreeSet<u8> =
            names.iter().map(|n| IdGenerator::node_of(n)).collect();
        assert_eq!(bytes.len(), names.len(), "distinct for these names");
        assert!(!bytes.contains(&0));
        assert_ne!(IdGenerator::node_of(""), 0);
        // Started in the same millisecond, two nodes still issue different ids.
        let (a, b) = (
            IdGenerator::above(IdGenerator::node_of("node1"), None),
            IdGenerator::above(IdGenerator::node_of("node2"), None),
        );
        assert_ne!(a.next(), b.next());
    }

    #[test]
    fn ids_after_a_floor_sort_after_it() {
        let far = MessageId::from_parts(0, u64::from(u32::MAX) * 1000, 7);
        let generator = IdGenerator::above(0, Some(far));
        assert!(generator.next() > far);
    }

    /// A run starting within the floor's second (a restart in the same second, a clock stepped back) starts at the
    /// next whole second, so that its printed ids (start second and a counter from 1) differ from the floor run's.
    #[test]
    fn ids_after_a_floor_print_apart_from_its_run() {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        // An earlier run that started in a second not yet over (the clock went back, or it is this very second).
        let floor = MessageId::from_parts(0, now_ms + 10_500, 1);
        let generator = IdGenerator::above(0, Some(floor));
        assert_eq!(generator.epoch_ms() % 1000, 0);
        assert_eq!(generator.epoch_ms() / 1000, floor.epoch_ms() / 1000 + 1);
        let first = generator.next();
        assert_eq!(first.counter(), 1);
        assert_ne!(first.to_string(), floor.to_string());
    }

    #[test]
    fn recipient_is_derived_only_when_it_is_token_at_domain() {
        let token = DeviceToken::from_hex("00ab").expect("hex");
        let derived = "00ab@apps.example";
        assert_eq!(
            Notification::given_recipient(derived, &token, "apps.example"),
            None
        );
        for other in [
            "00AB@apps.example",
            "00ab@Apps.example",
            "00ab@apps.exampl",
            "00a@apps.example",
            "x",
        ] {
            assert_eq!(
                Notification::given_recipient(other, &token, "apps.example").as_deref(),
                Some(other)
            );
        }
        assert_eq!(derived_recipient(&token, "apps.example"), derived);
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
