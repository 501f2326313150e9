//! A client no one here wrote: `@parse/node-apn` 8.x (npm) drives the simulator's channel management and
//! broadcast ports (docs/apns-protocol.md §6.2) from tests/node/broadcast.js: create, read, list, a Live Activity
//! broadcast, a refused start, delete, and ChannelNotRegistered afterwards. The simulator's record confirms the
//! broadcast arrived.
//!
//! Needs node and npm; `npm ci` runs in tests/node when its node_modules is missing. Without node or npm the test
//! fails under `CI=1` (with a message naming what to install) and is skipped otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use herald_sim::RecordProtocol;

fn find(name: &str) -> Option<PathBuf> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_apn_drives_channels_and_broadcasts() {
    let (Some(node), Some(npm)) = (find("node"), find("npm")) else {
        if std::env::var("CI").as_deref() == Ok("1") {
            panic!(
                "node and npm are required (install nodejs and npm, e.g. `apt-get install -y nodejs npm`)"
            );
        }
        eprintln!("skipped: node or npm is not installed");
        return;
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    if !dir.join("node_modules/@parse/node-apn").is_dir() {
        let out = Command::new(&npm)
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .output()
            .expect("running npm ci");
        assert!(
            out.status.success(),
            "npm ci in {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let t = start().await;
    let m = &t.pki.manifest;
    let out = tokio::process::Command::new(&node)
        .arg("broadcast.js")
        .current_dir(&dir)
        .env(
            "SIM_MANAGEMENT_PORT",
            t.sim.addrs.management.port().to_string(),
        )
        .env(
            "SIM_BROADCAST_PORT",
            t.sim.addrs.broadcast.port().to_string(),
        )
        .env("SIM_CA", &m.ca_cert)
        .env("SIM_P8", &m.token_key.p8)
        .env("SIM_KEY_ID", &m.key_id)
        .env("SIM_TEAM_ID", &m.team_id)
        .env("SIM_BUNDLE", TOPIC)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("node script finished within 60 s")
        .expect("running node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node-apn script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(seen["read"], "LiveActivity");
    assert_eq!(seen["after_delete"], "ChannelNotRegistered");

    t.sim.wait_for_records(1, Duration::from_secs(10)).await;
    let rec = t.sim.record();
    assert_eq!(rec.len(), 1, "exactly the one update was accepted");
    assert_eq!(rec[0].protocol, RecordProtocol::Broadcast);
    assert_eq!(
        rec[0].channel_id.as_ref(),
        seen["channel"].as_str().map(str::to_owned).as_ref()
    );
    assert_eq!(rec[0].priority, 5);
    assert_eq!(
        rec[0].apns_id.as_deref(),
        seen["broadcast_request_id"].as_str()
    );
    let payload: serde_json::Value = serde_json::from_str(&rec[0].payload).unwrap();
    assert_eq!(payload["aps"]["event"], "update");
    let s = t.sim.stats();
    assert_eq!(s.broadcast.rejected["ChannelNotRegistered"], 2);
    assert_eq!(s.broadcast.rejected["BadRequestPayload"], 1);
}
