//! The node heartbeats of a JetStream spool (docs/scale-out.md, "Nodes"): every node reads every heartbeat every
//! two seconds, and that read must leave nothing behind on the servers. Listing the keys through an ordered consumer
//! made one consumer per read per node, which a cluster keeps until its inactivity threshold (12 to 19 of them on
//! the heartbeat bucket of three nodes during a partition). Skipped without `nats-server` on PATH (failing under
//! `CI`), as the other JetStream tests.

use std::time::Duration;

use async_nats::jetstream;
use herald_spool::NodeBeat;
use herald_spool::nodes::{self, BEAT_MAX_AGE};
use herald_testkit::nats;

fn beat(node: &str) -> NodeBeat {
    NodeBeat {
        node: node.to_owned(),
        started_ms: 1,
        seen_ms: nodes::unix_ms(),
        held: 0,
        pulled: 0,
        lookups: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_the_heartbeats_makes_no_consumer() {
    if !nats::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = nats::single(dir.path());
    let client = async_nats::connect(server.url()).await.unwrap();
    let ctx = jetstream::new(client);
    let store = nodes::open_bucket(&ctx, "beats", 1).await.unwrap();
    for node in ["b-node", "a-node"] {
        store.put(node, beat(node).encode().into()).await.unwrap();
    }
    // A node that stopped deletes its entry: it is not read.
    store
        .put("gone", beat("gone").encode().into())
        .await
        .unwrap();
    store.delete("gone").await.unwrap();

    for _ in 0..5 {
        let read = nodes::read_beats(&store).await.unwrap();
        let names: Vec<&str> = read.iter().map(|b| b.node.as_str()).collect();
        assert_eq!(names, ["a-node", "b-node"]);
    }
    let mut stream = ctx.get_stream(&store.stream_name).await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(
        info.state.consumer_count, 0,
        "reading the heartbeats left consumers on {}",
        store.stream_name
    );
    assert_eq!(info.config.max_age, BEAT_MAX_AGE);
    let _ = Duration::ZERO;
}
