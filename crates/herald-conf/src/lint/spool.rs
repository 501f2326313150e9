//! Configuration warnings: see the parent module. Spool options that are valid one by one but risky for the
//! `jetstream` spool (docs/scale-out.md):
//!
//! - `spool_nats_ack_wait` below [`ACK_WAIT_FLOOR`]. A node keeps the notifications it holds with in-progress acks
//!   every third of the ack wait. When the NATS server leading the shared consumer is lost, the consumer has no
//!   leader until the others elect one (some 5 to 7 seconds, measured with a three-server cluster), and the
//!   in-progress acks sent meanwhile go nowhere: the last one heard may be up to a third of the ack wait older than
//!   the loss, and the first one heard after it up to a third younger than the election. With an ack wait shorter
//!   than about three elections, the new leader finds held notifications past their ack wait and hands them to
//!   other nodes, which deliver them again (a third of a six-second wait gave some 1,100 to 1,500 duplicates of
//!   15,000 held; the default 30 gave none). 20 seconds keeps a six-second election out of reach at the worst.

use crate::{
    diag::Diagnostics,
    options::{Opt, SpoolBackend},
    tree::Node,
};

/// The shortest `spool_nats_ack_wait` (seconds) herald takes without a warning with the `jetstream` spool.
pub(crate) const ACK_WAIT_FLOOR: i64 = 20;

pub(super) fn check(root: &Node, diags: &mut Diagnostics) {
    let jetstream = root
        .get(Opt::SpoolBackend.id())
        .is_some_and(|s| s.value.as_str() == Some(SpoolBackend::JetStream.word()));
    if !jetstream {
        return;
    }
    if let Some(s) = root.get(Opt::SpoolNatsAckWait.id())
        && let Some(wait) = s.value.as_int()
        && wait < ACK_WAIT_FLOOR
    {
        diags.warning(
            s.at.clone(),
            format!(
                "`spool_nats_ack_wait = {wait}` is shorter than a NATS leader election allows with \
                 `spool_backend = jetstream`: when a NATS server is lost, the shared consumer has no leader for \
                 several seconds, the in-progress acks that keep a node's notifications are lost meanwhile, and \
                 JetStream hands notifications still held past a {wait}-second wait to other nodes, which deliver \
                 them again (duplicates); set it to {ACK_WAIT_FLOOR} or more (the default is 30)"
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    fn warnings(text: &str) -> Vec<String> {
        Config::parse_str("t.conf", text)
            .unwrap()
            .warnings()
            .iter()
            .map(|w| w.to_string())
            .collect()
    }

    #[test]
    fn a_short_ack_wait_on_the_jetstream_spool_warns_where_it_is_set() {
        let w = warnings(
            "spool_backend = jetstream\nspool_nats_url = \"nats://127.0.0.1:4222\"\nspool_nats_ack_wait = 6\n",
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("t.conf:3:1: warning:"), "{w:?}");
        assert!(w[0].contains("`spool_nats_ack_wait = 6`"), "{w:?}");
        assert!(w[0].contains("duplicates"), "{w:?}");
        assert!(w[0].contains("set it to 20 or more"), "{w:?}");
    }

    #[test]
    fn the_floor_and_the_default_ack_wait_do_not_warn() {
        for extra in [
            "",
            "spool_nats_ack_wait = 20\n",
            "spool_nats_ack_wait = 300\n",
        ] {
            let w = warnings(&format!(
                "spool_backend = jetstream\nspool_nats_url = \"nats://127.0.0.1:4222\"\n{extra}"
            ));
            assert!(w.is_empty(), "{extra:?}: {w:?}");
        }
        let w = warnings(
            "spool_backend = jetstream\nspool_nats_url = \"nats://127.0.0.1:4222\"\nspool_nats_ack_wait = 19\n",
        );
        assert_eq!(w.len(), 1, "{w:?}");
    }

    #[test]
    fn a_short_ack_wait_without_the_jetstream_spool_does_not_warn() {
        for text in [
            "spool_nats_ack_wait = 6\n",
            "spool_backend = embedded\nspool_nats_ack_wait = 6\n",
        ] {
            assert!(warnings(text).is_empty(), "{text:?}");
        }
    }
}
