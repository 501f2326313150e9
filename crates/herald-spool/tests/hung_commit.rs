//! A spool whose disk stops answering (a frozen file system, a volume that hangs): a commit that does not return
//! for longer than `SpoolOptions::stall_after` makes the spool report itself unwritable and name the stuck commit
//! and its age, without waiting on the disk; new appends are refused at once instead of queueing behind it; a
//! warning is logged when the stall starts and another when it ends; and everything clears once the commit returns.

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{Gate, GatedEngine, notification, stored_keys, wait_until};
use herald_spool::{DiskSpool, Spool, SpoolOptions, Table};

/// Far longer than anything here takes unless it waits for the gate, which stays closed meanwhile.
const HANG: Duration = Duration::from_secs(60);

/// The warnings every thread of this test binary logged (the stall watcher logs from a thread of its own).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn warnings() -> &'static Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        captured
    })
}

const STALL_STARTED: &str = "the spool's disk has not completed a write for";
const STALL_ENDED: &str = "the disk answers again";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_does_not_return_refuses_intake_at_once_and_says_so_until_it_returns() {
    let logs = warnings();
    let dir = tempfile::tempdir().unwrap();
    let gate = Gate::new(true);
    let stall_after = Duration::from_millis(200);
    let spool = Arc::new(
        DiskSpool::with_engine(
            GatedEngine::open(dir.path(), Arc::clone(&gate)),
            SpoolOptions {
                stall_after,
                ..SpoolOptions::default()
            },
        )
        .unwrap(),
    );
    spool
        .append(vec![notification(spool.next_key())])
        .await
        .unwrap();
    assert!(!spool.stats().unwritable);
    assert!(spool.write_error().is_none());

    // The disk stops answering in the middle of the next commit.
    gate.set_open(false);
    let entered = gate.entered.load(Ordering::SeqCst);
    let stuck_key = spool.next_key();
    let stuck = tokio::spawn(spool.append(vec![notification(stuck_key)]));
    wait_until(30, "the commit to start", || {
        gate.entered.load(Ordering::SeqCst) > entered
    });
    // Read on this thread while the writer is stuck: the stats never wait on the disk.
    wait_until(30, "the spool to report the stuck commit", || {
        spool.stats().unwritable
    });
    let cause = spool
        .write_error()
        .expect("a cause while stalled")
        .to_string();
    assert!(cause.contains(STALL_STARTED), "{cause}");
    assert!(
        cause.contains("(a commit is stuck in write/fsync)"),
        "{cause}"
    );
    assert!(spool.disk_stalled_for().is_some_and(|d| d >= stall_after));
    assert!(!spool.stats().disk_full);

    // A new append is refused at once (waiting for the stuck commit would outlast HANG: the gate stays closed).
    let refused_key = spool.next_key();
    let refused = tokio::time::timeout(HANG, spool.append(vec![notification(refused_key)]))
        .await
        .expect("refused without waiting for the stuck commit")
        .expect_err("refused while the disk does not answer");
    assert!(refused.is_temporary(), "{refused}");
    assert!(!refused.is_disk_full(), "{refused}");
    assert!(refused.to_string().contains(STALL_STARTED), "{refused}");
    wait_until(30, "the warning that the stall started", || {
        logs.text().contains(STALL_STARTED)
    });
    assert!(!stuck.is_finished(), "the stuck append is still waiting");

    // The disk answers again: the stuck append is stored after all, and intake resumes.
    gate.set_open(true);
    tokio::time::timeout(HANG, stuck)
        .await
        .expect("the stuck append answers once the disk does")
        .unwrap()
        .unwrap();
    wait_until(30, "the spool to take writes again", || {
        !spool.stats().unwritable
    });
    assert!(spool.write_error().is_none());
    assert_eq!(spool.disk_stalled_for(), None);
    spool
        .append(vec![notification(spool.next_key())])
        .await
        .unwrap();
    wait_until(30, "the warning that the stall ended", || {
        logs.text().contains(STALL_ENDED)
    });
    let text = logs.text();
    assert_eq!(text.matches(STALL_STARTED).count(), 1, "{text}");
    assert_eq!(text.matches(STALL_ENDED).count(), 1, "{text}");
    assert!(text.contains("a commit is stuck in write/fsync"), "{text}");

    let stored = stored_keys(spool.engine(), Table::Records);
    assert!(stored.contains(&stuck_key));
    assert!(
        !stored.contains(&refused_key),
        "a refused append is not stored"
    );
}
