//! Crash simulation: a child process (this test binary, switched by an environment variable) appends in a loop and
//! prints every key once its append is acknowledged; the parent kills it with SIGKILL at a random moment, reopens
//! the spool and checks that every acknowledged key is recovered.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::notification;
use herald_spool::{DiskSpool, Spool, SpoolKey, SpoolOptions};

const CHILD_DIR: &str = "HERALD_SPOOL_CRASH_CHILD_DIR";
const ACK: &str = "ACK ";
const REMOVED: &str = "DEL ";

/// The child: when started by [`acknowledged_notifications_survive_kill_9`], appends until killed.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return; // an ordinary test run: nothing to do
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let spool = Arc::new(DiskSpool::open(&dir, SpoolOptions::default()).unwrap());
        spool.recover().unwrap();
        let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
        let mut tasks = Vec::new();
        for w in 0..8u64 {
            let spool = Arc::clone(&spool);
            let out = Arc::clone(&out);
            tasks.push(tokio::spawn(async move {
                for round in 0u64.. {
                    let keys: Vec<SpoolKey> = (0..1 + (round + w) % 40)
                        .map(|_| spool.next_key())
                        .collect();
                    spool
                        .append(keys.iter().map(|&k| notification(k)).collect())
                        .await
                        .unwrap();
                    let mut text = String::new();
                    for k in &keys {
                        text.push_str(&format!("{ACK}{k}\n"));
                    }
                    // Some acknowledged notifications are removed again, as after a delivery.
                    if round % 5 == 0 {
                        spool.remove(&keys[..1]);
                        text.push_str(&format!("{REMOVED}{}\n", keys[0]));
                    }
                    if round % 7 == 0 {
                        spool.reschedule(keys[keys.len() - 1], 1, 42);
                    }
                    let mut o = out.lock().unwrap();
                    o.write_all(text.as_bytes()).unwrap();
                    o.flush().unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

fn parse_key(line: &str, prefix: &str) -> Option<SpoolKey> {
    let hex = line.strip_prefix(prefix)?;
    if hex.len() != 32 {
        return None; // a line cut by the kill
    }
    u128::from_str_radix(hex, 16).ok().map(SpoolKey)
}

fn random_below(n: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    (nanos.wrapping_mul(6364136223846793005) >> 17) % n
}

#[test]
fn acknowledged_notifications_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let mut acked = BTreeSet::new();
    let mut removed = BTreeSet::new();
    for run in 0..3 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_DIR, &spool_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let kill_after = 200 + random_below(5000) as usize;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = 0;
        while seen < kill_after {
            assert!(
                Instant::now() < deadline,
                "the child acknowledged only {seen} notifications"
            );
            let Some(line) = lines.next() else {
                panic!("the child exited after {seen} acknowledgements");
            };
            let line = line.unwrap();
            if let Some(k) = parse_key(&line, ACK) {
                acked.insert(k);
                seen += 1;
            } else if let Some(k) = parse_key(&line, REMOVED) {
                removed.insert(k);
            }
        }
        child.kill().unwrap(); // SIGKILL
        // Lines already written before the kill are acknowledgements too.
        for line in lines.map_while(Result::ok) {
            if let Some(k) = parse_key(&line, ACK) {
                acked.insert(k);
            } else if let Some(k) = parse_key(&line, REMOVED) {
                removed.insert(k);
            }
        }
        child.wait().unwrap();

        let spool = DiskSpool::open(&spool_dir, SpoolOptions::default()).unwrap();
        let r = spool.recover().unwrap();
        let recovered: BTreeSet<SpoolKey> = r.notifications.iter().map(|n| n.key).collect();
        let lost: Vec<&SpoolKey> = acked
            .iter()
            .filter(|k| !recovered.contains(k) && !removed.contains(k))
            .collect();
        assert!(
            lost.is_empty(),
            "run {run}: {} acknowledged notifications lost, e.g. {:?}",
            lost.len(),
            lost.first()
        );
        assert_eq!(r.report.skipped, 0, "run {run}");
        for n in &r.notifications {
            let mut want = notification(n.key);
            (want.retries, want.next_attempt_ms) = (n.retries, n.next_attempt_ms);
            assert_eq!(n, &want, "run {run}: record intact");
            assert!(n.retries == 0 || (n.retries, n.next_attempt_ms) == (1, 42));
        }
        assert!(recovered.len() >= acked.len() - removed.len());
    }
}

const REMOVE_CHILD_DIR: &str = "HERALD_SPOOL_REMOVE_CHILD_DIR";
const COMMITTED: &str = "REMOVALS COMMITTED";

/// The child of [`committed_removals_survive_kill_9_without_a_flush`]: appends 1,000 notifications, removes 900,
/// waits until the writer has committed the removals on its own (no flush, so no fsync is asked for), says so and
/// waits to be killed.
#[test]
fn remove_child() {
    let Ok(dir) = std::env::var(REMOVE_CHILD_DIR) else {
        return; // an ordinary test run: nothing to do
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let spool = DiskSpool::open(&dir, SpoolOptions::default()).unwrap();
        let keys: Vec<SpoolKey> = (0..1000).map(|_| spool.next_key()).collect();
        spool
            .append(keys.iter().map(|&k| notification(k)).collect())
            .await
            .unwrap();
        spool.remove(&keys[..900]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while spool.stats().records != 100 {
            assert!(
                Instant::now() < deadline,
                "the removals were never committed"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        println!("{COMMITTED}");
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
}

/// Removals are committed within the maintenance interval without an fsync: written to the operating system, they
/// survive a `kill -9` of the process (only a crash of the machine could bring them back).
#[test]
fn committed_removals_survive_kill_9_without_a_flush() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "remove_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(REMOVE_CHILD_DIR, &spool_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let committed = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains(COMMITTED));
    assert!(committed, "the child ended before committing its removals");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let spool = DiskSpool::open(&spool_dir, SpoolOptions::default()).unwrap();
    assert_eq!(spool.recover().unwrap().notifications.len(), 100);
}
