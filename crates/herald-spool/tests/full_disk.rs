//! The spool on a disk that fills up and empties again, on a small tmpfs the test mounts itself: appends are
//! refused while it is full, removals wait in memory, the spool takes writes again by itself once there is room,
//! nothing refused comes back and nothing delivered is found again after a restart, also when herald stops before
//! there is room. It also opens on a full disk, takes writes again while a recovery paced by a slow visitor is
//! still reading it, and a flush of the store that fails for want of room leaves no commit waiting forever. A
//! journal write cut short by the full disk loses nothing acknowledged after it.
//!
//! Mounting needs root (or CAP_SYS_ADMIN); where it is refused the tests say so and pass, except when `CI` is set.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{notification, stored_keys, wait_until};
use herald_spool::{DiskSpool, Spool, SpoolKey, SpoolOptions, StoredNotification, Table};

use herald_testkit::tmpfs::mount as mount_tmpfs;

fn options() -> SpoolOptions {
    SpoolOptions {
        retry_interval: Duration::from_millis(50),
        ..SpoolOptions::default()
    }
}

/// Writes a file until the file system is full; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![7u8; 64 << 10];
    loop {
        if let Err(e) = file.write_all(&chunk).and_then(|()| file.sync_all()) {
            assert_eq!(e.raw_os_error(), Some(28), "filling: {e}");
            return path;
        }
    }
}

/// Appends batches of 50 until one is refused; returns the accepted keys and those of the refused batch.
async fn append_until_refused(spool: &dyn Spool) -> (Vec<SpoolKey>, Vec<SpoolKey>) {
    let mut accepted = Vec::new();
    loop {
        assert!(accepted.len() < 2_000_000, "the file system never filled");
        let keys: Vec<SpoolKey> = (0..50).map(|_| spool.next_key()).collect();
        match spool
            .append(keys.iter().map(|&k| notification(k)).collect())
            .await
        {
            Ok(()) => accepted.extend(keys),
            Err(e) => {
                assert!(e.is_temporary() && e.is_disk_full(), "{e}");
                return (accepted, keys);
            }
        }
    }
}

fn recovered_keys(spool: &DiskSpool) -> BTreeSet<SpoolKey> {
    let r = spool.recover().unwrap();
    assert_eq!(r.report.skipped, 0);
    r.notifications.iter().map(|n| n.key).collect()
}

#[tokio::test]
async fn a_full_disk_recovers_by_itself_and_keeps_removals_until_it_can_write_them() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("small");
    let Some(_mount) = mount_tmpfs(&dir, "8m") else {
        return;
    };
    let spool = DiskSpool::open(&dir, options()).unwrap();
    assert!(!spool.stats().unwritable);
    let (accepted, mut refused) = append_until_refused(&spool).await;
    assert!(!accepted.is_empty());
    let st = spool.stats();
    assert!(st.unwritable && st.disk_full, "{st:?}");
    assert!(spool.write_error().is_some_and(|e| e.is_disk_full()));
    // Still refused, quickly and without harm, while the disk stays full.
    let refused_key = spool.next_key();
    let err = spool
        .append(vec![notification(refused_key)])
        .await
        .unwrap_err();
    assert!(err.is_disk_full(), "{err}");
    refused.push(refused_key);

    // Delivered meanwhile: their removals wait in memory.
    let delivered = &accepted[..accepted.len() / 2];
    spool.remove(delivered);
    wait_until(5, "the spool state", || {
        spool.stats().pending_removals == delivered.len() as u64
    });
    assert!(spool.stats().unwritable);

    // The operator makes room: the spool notices without a request and writes the removals.
    let grown = Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(grown.success());
    wait_until(10, "the spool state", || {
        let st = spool.stats();
        !st.unwritable && st.pending_removals == 0
    });
    assert!(!spool.stats().disk_full);
    assert!(spool.write_error().is_none());
    let later: Vec<SpoolKey> = (0..10).map(|_| spool.next_key()).collect();
    spool
        .append(later.iter().map(|&k| notification(k)).collect())
        .await
        .unwrap();
    spool.close().await.unwrap();
    drop(spool);

    // After a restart: exactly what was accepted and not delivered.
    let spool = DiskSpool::open(&dir, options()).unwrap();
    let got = recovered_keys(&spool);
    let want: BTreeSet<SpoolKey> = accepted[delivered.len()..]
        .iter()
        .chain(&later)
        .copied()
        .collect();
    assert_eq!(got.len(), want.len());
    assert_eq!(got, want);
    // Part of the refused commit may have reached the journal: it is deleted, never delivered.
    assert!(refused.iter().all(|k| !got.contains(k)));
    spool.close().await.unwrap();
}

#[tokio::test]
async fn a_spool_opens_on_a_full_disk_delivers_what_it_holds_and_takes_writes_once_there_is_room() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("small");
    let Some(_mount) = mount_tmpfs(&dir, "8m") else {
        return;
    };
    let held: Vec<SpoolKey> = {
        let spool = DiskSpool::open(&dir, options()).unwrap();
        let keys: Vec<SpoolKey> = (0..100).map(|_| spool.next_key()).collect();
        spool
            .append(keys.iter().map(|&k| notification(k)).collect())
            .await
            .unwrap();
        spool.close().await.unwrap();
        keys
    };
    let filler = fill(&dir);

    let spool = DiskSpool::open(&dir, options()).unwrap();
    let st = spool.stats();
    assert!(st.unwritable && st.disk_full, "{st:?}");
    // What it holds can be read (and delivered)...
    let got = recovered_keys(&spool);
    assert_eq!(got, held.iter().copied().collect::<BTreeSet<_>>());
    // ...new notifications are refused...
    let err = spool
        .append(vec![notification(spool.next_key())])
        .await
        .unwrap_err();
    assert!(err.is_disk_full(), "{err}");
    // ...and the removals of delivered ones wait until there is room.
    spool.remove(&held[..60]);
    wait_until(5, "60 pending removals", || {
        spool.stats().pending_removals == 60
    });
    std::fs::remove_file(&filler).unwrap();
    wait_until(10, "the spool state", || {
        let st = spool.stats();
        !st.unwritable && st.pending_removals == 0
    });
    spool.close().await.unwrap();
    drop(spool);
    let spool = DiskSpool::open(&dir, options()).unwrap();
    assert_eq!(
        recovered_keys(&spool),
        held[60..].iter().copied().collect::<BTreeSet<_>>()
    );
    spool.close().await.unwrap();
}

/// More records than recovery reads ahead of a visitor that waits (ten chunks of 1024).
const BACKLOG: usize = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_clears_while_a_slow_recovery_waits() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("small");
    let Some(_mount) = mount_tmpfs(&dir, "64m") else {
        return;
    };
    let mut backlog = Vec::with_capacity(BACKLOG);
    {
        let spool = DiskSpool::open(&dir, options()).unwrap();
        for _ in 0..BACKLOG / 1000 {
            let keys: Vec<SpoolKey> = (0..1000).map(|_| spool.next_key()).collect();
            spool
                .append(keys.iter().map(|&k| notification(k)).collect())
                .await
                .unwrap();
            backlog.extend(keys);
        }
        spool.close().await.unwrap();
    }
    let spool = Arc::new(DiskSpool::open(&dir, options()).unwrap());

    // A restore whose visitor waits (for memory, APNs being down) at its 100th notification until told to go on.
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let visited = Arc::new(AtomicUsize::new(0));
    let recovery = {
        let spool = Arc::clone(&spool);
        let visited = Arc::clone(&visited);
        std::thread::spawn(move || {
            let mut keys = Vec::new();
            spool
                .recover_each(&mut |n| {
                    keys.push(n.key);
                    if visited.fetch_add(1, Ordering::SeqCst) + 1 == 100 {
                        let _ = wait.recv();
                    }
                    ControlFlow::Continue(())
                })
                .unwrap();
            keys
        })
    };
    wait_until(10, "the visitor to wait", || {
        visited.load(Ordering::SeqCst) == 100
    });

    // The disk fills and a write fails; the operator makes room: the store is reopened although the restore is
    // still under way.
    let filler = fill(&dir);
    let (accepted, refused) = append_until_refused(&*spool).await;
    assert!(spool.stats().disk_full);
    std::fs::remove_file(&filler).unwrap();
    wait_until(10, "the store to take writes again", || {
        !spool.stats().unwritable
    });
    assert_eq!(
        visited.load(Ordering::SeqCst),
        100,
        "the visitor still waits"
    );
    let later: Vec<SpoolKey> = (0..10).map(|_| spool.next_key()).collect();
    spool
        .append(later.iter().map(|&k| notification(k)).collect())
        .await
        .unwrap();

    go.send(()).unwrap();
    let keys = recovery.join().unwrap();
    assert_eq!(
        keys, backlog,
        "every record once, in order, across the reopen"
    );
    spool.close().await.unwrap();
    drop(spool);

    let spool = DiskSpool::open(&dir, options()).unwrap();
    let got = recovered_keys(&spool);
    let want: BTreeSet<SpoolKey> = backlog
        .iter()
        .chain(&accepted)
        .chain(&later)
        .copied()
        .collect();
    assert_eq!(got, want);
    assert!(refused.iter().all(|k| !got.contains(k)));
    spool.close().await.unwrap();
}

/// A notification whose payload is `bytes` bytes of noise, which no compression shrinks.
fn bulky(key: SpoolKey, bytes: usize) -> StoredNotification {
    let mut state = (key.0 as u64) | 1;
    let payload = (0..bytes)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    StoredNotification {
        payload,
        ..notification(key)
    }
}

/// Far longer than any step here takes: only a commit that never returns runs into it.
const HANG: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_that_fails_on_a_full_disk_leaves_no_commit_waiting_forever() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("small");
    let Some(_mount) = mount_tmpfs(&dir, "96m") else {
        return;
    };
    let spool = DiskSpool::open(&dir, options()).unwrap();
    // One commit leaves more in the store's memtables than fjall's default write-buffer limit (64 MiB): it fits in
    // the journal, but its flush to a segment needs as much again, which the disk does not have.
    let big: Vec<SpoolKey> = (0..1056).map(|_| spool.next_key()).collect();
    let appended = tokio::time::timeout(
        HANG,
        spool.append(big.iter().map(|&k| bulky(k, 64 << 10)).collect()),
    )
    .await
    .expect("the append of a durable commit is answered");
    appended.unwrap();
    // The flush fails and the store refuses writes from then on: the next commit says so, rather than waiting for
    // memory that no flush will free.
    let next = spool.next_key();
    let refused = tokio::time::timeout(HANG, spool.append(vec![notification(next)]))
        .await
        .expect("the next append is answered");
    let err = refused.unwrap_err();
    assert!(err.is_temporary(), "{err}");
    assert!(spool.stats().unwritable);

    // Room again: the store is reopened, flushes what it holds and takes writes.
    let grown = Command::new("mount")
        .args(["-o", "remount,size=512m"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(grown.success());
    wait_until(30, "the store to take writes again", || {
        !spool.stats().unwritable
    });
    let later: Vec<SpoolKey> = (0..10).map(|_| spool.next_key()).collect();
    spool
        .append(later.iter().map(|&k| notification(k)).collect())
        .await
        .unwrap();
    tokio::time::timeout(HANG, spool.close())
        .await
        .expect("the spool closes")
        .unwrap();
    drop(spool);

    let spool = DiskSpool::open(&dir, options()).unwrap();
    let want: BTreeSet<SpoolKey> = big.iter().chain(&later).copied().collect();
    assert_eq!(recovered_keys(&spool), want);
    spool.close().await.unwrap();
}

#[tokio::test]
async fn removals_waiting_at_a_stop_on_a_full_disk_are_made_at_the_next_start() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("small");
    let Some(_mount) = mount_tmpfs(&dir, "8m") else {
        return;
    };
    let held: Vec<SpoolKey> = {
        let spool = DiskSpool::open(&dir, options()).unwrap();
        let keys: Vec<SpoolKey> = (0..100).map(|_| spool.next_key()).collect();
        spool
            .append(keys.iter().map(|&k| notification(k)).collect())
            .await
            .unwrap();
        // One of them rescheduled: its schedule goes with it.
        spool.reschedule(keys[10], 2, 1_790_000_000_000);
        spool.close().await.unwrap();
        keys
    };
    let filler = fill(&dir);

    // Delivered while the disk is full, and herald stops before there is room: the removals cannot be written.
    let spool = DiskSpool::open(&dir, options()).unwrap();
    assert!(spool.stats().unwritable);
    assert_eq!(recovered_keys(&spool).len(), 100);
    spool.remove(&held[..60]);
    wait_until(5, "60 pending removals", || {
        spool.stats().pending_removals == 60
    });
    assert!(spool.close().await.is_err());
    drop(spool);

    // Started again, still on a full disk: the delivered ones are not delivered again...
    let spool = DiskSpool::open(&dir, options()).unwrap();
    assert!(spool.stats().unwritable);
    let rest: BTreeSet<SpoolKey> = held[60..].iter().copied().collect();
    assert_eq!(recovered_keys(&spool), rest);
    assert_eq!(spool.stats().records, 40);
    // ...and are deleted, with their schedules, once there is room.
    std::fs::remove_file(&filler).unwrap();
    wait_until(10, "the store to take writes again", || {
        !spool.stats().unwritable
    });
    spool.flush().await.unwrap();
    assert_eq!(stored_keys(spool.engine(), Table::Records), rest);
    assert_eq!(
        stored_keys(spool.engine(), Table::Schedules),
        BTreeSet::new()
    );
    spool.close().await.unwrap();
    drop(spool);
    let spool = DiskSpool::open(&dir, options()).unwrap();
    assert_eq!(recovered_keys(&spool), rest);
    spool.close().await.unwrap();
}

/// What fjall's journal writer holds in memory before it writes to the file (`JOURNAL_BUFFER_BYTES` in fjall 2, and
/// `BufWriter`'s default): an item at least this large goes to the file directly, past the buffer.
const JOURNAL_BUFFER_BYTES: usize = 8 << 10;

/// Appends tried on a full disk. The release of fjall acknowledged one only when the start of its batch still fit
/// in the journal's last page (allocated already) and its item was then cut short: when the journal ends on a page
/// boundary, the start is refused, and so is the commit. The appends between attempts move the end of the journal.
const TORN_ATTEMPTS: usize = 6;

/// A journal write that a full disk cuts short in the middle of a batch must leave the store refusing writes until it
/// is reopened, which discards that unfinished batch, the last in the journal. fjall 2.11.2 ignored the error
/// (`Batch::commit`): the commit returned Ok once the persist after it succeeded, with the batch's start and part of
/// its items in the journal and no end, and every later batch, synced and acknowledged, followed it; recovery stops
/// at a batch start inside an unfinished batch and truncates the journal there, so a restart lost all of them. herald
/// builds with a patched copy (vendor/fjall/HERALD-PATCH.md).
///
/// In the release, that persist also failed when the batch's failed write left bytes in the writer's buffer (the
/// removal-only commit below: the store refuses writes, nothing is lost); it succeeded when the buffer was empty: an
/// item larger than the buffer, written to the file directly and cut short there (the appends below). The spool
/// takes such records; herald's intake, with payloads of at most 5 KiB, does not.
#[tokio::test]
async fn a_journal_write_cut_short_by_a_full_disk_loses_nothing_acknowledged_after_it() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("small");
    let Some(_mount) = mount_tmpfs(&dir, "8m") else {
        return;
    };
    let spool = DiskSpool::open(&dir, options()).unwrap();
    let held: Vec<SpoolKey> = (0..4000).map(|_| spool.next_key()).collect();
    for chunk in held.chunks(500) {
        spool
            .append(chunk.iter().map(|&k| notification(k)).collect())
            .await
            .unwrap();
    }
    let mut acknowledged: BTreeSet<SpoolKey> = held.iter().copied().collect();
    let mut removed = BTreeSet::new();
    let mut refused = BTreeSet::new();
    let mut delivered = held.chunks(500);

    // Removals on a full disk, in one commit of 500 (some 16 KiB in the journal, twice its writer's buffer): its
    // journal write fails part-way, the store refuses writes, and the removals wait until there is room.
    let filler = fill(&dir);
    let batch = delivered.next().unwrap();
    let failed = spool.stats().failed_commits;
    spool.remove(batch);
    wait_until(10, "the removal-only commit to fail", || {
        let st = spool.stats();
        st.failed_commits > failed && st.unwritable && st.pending_removals == batch.len() as u64
    });
    std::fs::remove_file(&filler).unwrap();
    wait_until(10, "the removals to be written", || {
        let st = spool.stats();
        !st.unwritable && st.pending_removals == 0
    });
    removed.extend(batch.iter().copied());

    // Appends on a full disk, each of one record larger than the journal writer's buffer.
    let mut torn_acknowledged = false;
    for _ in 0..TORN_ATTEMPTS {
        let filler = fill(&dir);
        let key = spool.next_key();
        let appended = spool
            .append(vec![bulky(key, 4 * JOURNAL_BUFFER_BYTES)])
            .await;
        std::fs::remove_file(&filler).unwrap();
        match appended {
            // Acknowledged: it must be found after a restart, whatever the disk was like.
            Ok(()) => {
                acknowledged.insert(key);
                torn_acknowledged = true;
            }
            Err(e) => {
                assert!(e.is_temporary() && e.is_disk_full(), "{e}");
                refused.insert(key);
                wait_until(10, "the store to take writes again", || {
                    !spool.stats().unwritable
                });
            }
        }
        // With room again: synced appends and buffered removals, all acknowledged (the removals once the flush
        // that follows them returned).
        let later: Vec<SpoolKey> = (0..20).map(|_| spool.next_key()).collect();
        spool
            .append(later.iter().map(|&k| notification(k)).collect())
            .await
            .unwrap();
        acknowledged.extend(later);
        let batch = delivered.next().unwrap();
        spool.remove(batch);
        wait_until(10, "the removals to be written", || {
            spool.stats().pending_removals == 0
        });
        spool.flush().await.unwrap();
        removed.extend(batch.iter().copied());
        if torn_acknowledged {
            break;
        }
    }
    assert!(spool.write_error().is_none());
    spool.close().await.unwrap();
    drop(spool);

    let spool = DiskSpool::open(&dir, options()).unwrap();
    let got = recovered_keys(&spool);
    let lost: Vec<&SpoolKey> = acknowledged
        .iter()
        .filter(|k| !removed.contains(k) && !got.contains(k))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged notifications lost at the restart (a commit cut short by the full disk was acknowledged: \
         {torn_acknowledged})",
        lost.len()
    );
    let back = got.intersection(&removed).count();
    assert_eq!(back, 0, "removed notifications came back");
    assert!(
        refused.iter().all(|k| !got.contains(k)),
        "a refused notification is stored"
    );
    let want: BTreeSet<SpoolKey> = acknowledged.difference(&removed).copied().collect();
    assert_eq!(got, want);
    spool.close().await.unwrap();
}
