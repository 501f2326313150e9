//! A JetStream node whose NATS server still answers it but has lost the rest of its cluster (docs/scale-out.md,
//! failure table: a server cut off from its cluster, in the minority): the server echoes the node's core messages,
//! but JetStream does not answer through it, so every publish fails. The node must report itself not ready (its
//! spool not connected, with an error saying JetStream does not answer) within the liveness probe's JetStream limit,
//! and be ready again once JetStream answers.
//!
//! Cutting the routes between servers is hard in a test; killing the other two servers of a three-server cluster
//! leaves the node's server in the same state: it answers its clients, JetStream has no quorum. Skipped without
//! `nats-server` on PATH (failing under `CI`), as the other JetStream tests.

use std::time::{Duration, Instant};

use herald_spool::liveness::jetstream_limit;
use herald_spool::{JetStreamOptions, JetStreamSpool, Spool};
use herald_testkit::nats;

async fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_server_lost_its_cluster_reports_itself_not_ready() {
    if !nats::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut servers = nats::cluster(dir.path());
    // The node knows only the first server, so it stays on it whatever it does.
    let mut options = JetStreamOptions::new(vec![servers[0].url()], "quorum");
    options.replicas = 3;
    options.request_timeout = Duration::from_secs(1);
    let limit = jetstream_limit(options.request_timeout);
    let spool = JetStreamSpool::connect(options).await.unwrap();
    wait_for("the stream set up", Duration::from_secs(60), || {
        spool.connected()
    })
    .await;
    assert!(spool.write_error().is_none());

    servers[1].kill();
    servers[2].kill();
    // The limit, then a leader election's worth of checks and a probe round or two of margin.
    wait_for(
        "the node to report JetStream unavailable",
        limit + Duration::from_secs(30),
        || !spool.connected(),
    )
    .await;
    let why = spool
        .write_error()
        .expect("a node not ready says why")
        .to_string();
    assert!(
        why.contains("JetStream has not answered through NATS server"),
        "{why}"
    );

    servers[1].restart();
    servers[2].restart();
    wait_for(
        "the node ready again once JetStream answers",
        Duration::from_secs(90),
        || spool.connected(),
    )
    .await;
    assert!(spool.write_error().is_none());
}
