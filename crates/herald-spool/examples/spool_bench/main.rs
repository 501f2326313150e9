//! Spool benchmark: measures the candidate engines (redb with and without quick-repair, fjall) on herald's
//! workload through [`DiskSpool`] and its group commit. Run by bench/spool/run.sh; prints Markdown tables.
//!
//! Usage: `spool_bench [--engines redb,redb-qr,fjall] [--seconds S] [--records N] [--bulk-only]`
//! (N: records for the recovery and size measurement, default 1,000,000).

mod redb_engine;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_spool::{
    DiskSpool, Engine, FjallEngine, FjallOptions, Spool, SpoolKey, SpoolOptions, StoredNotification,
};
use redb_engine::{RedbEngine, RedbOptions};

const CHILD_ENV: &str = "SPOOL_BENCH_CRASH_CHILD";

fn notification(key: SpoolKey) -> StoredNotification {
    let n = key.0 as u64;
    StoredNotification {
        key,
        domain: "com.example.app".into(),
        token: (0..32).map(|i| (n as u8).wrapping_add(i)).collect(),
        topic: Some("com.example.app".into()),
        push_type: Some("alert".into()),
        priority: Some(10),
        expiration: Some(1_900_000_000),
        collapse_id: None,
        apns_id: Some(format!("00000000-0000-4000-8000-{n:012x}")),
        binding: None,
        payload: format!(
            r#"{{"aps":{{"alert":{{"title":"Order {n}","body":"Your order has shipped and is on its way to you"}},"badge":1,"sound":"default"}},"order":{n}}}"#
        )
        .into_bytes(),
        sender: "orders@example.com".into(),
        recipient: format!("{n:016x}@com.example.app"),
        received_at: 1_790_000_000,
        batch_id: 1,
        conn_id: 1,
        retries: 0,
        next_attempt_ms: 0,
    }
}

fn open(engine: &str, dir: &Path) -> Arc<dyn Spool> {
    std::fs::create_dir_all(dir).expect("bench directory");
    let opts = SpoolOptions::default();
    match engine {
        "redb" | "redb-qr" => {
            let redb = RedbOptions {
                quick_repair: engine == "redb-qr",
                ..RedbOptions::default()
            };
            Arc::new(spool(RedbEngine::open(dir, redb).expect("open redb"), opts))
        }
        "fjall" => Arc::new(spool(
            FjallEngine::open(dir, FjallOptions::default()).expect("open fjall"),
            opts,
        )),
        other => panic!("unknown engine {other}"),
    }
}

fn spool<E: Engine>(e: E, opts: SpoolOptions) -> DiskSpool<E> {
    DiskSpool::with_engine(e, opts).expect("spool")
}

fn batch(spool: &dyn Spool, n: usize) -> (Vec<SpoolKey>, Vec<StoredNotification>) {
    let keys: Vec<SpoolKey> = (0..n).map(|_| spool.next_key()).collect();
    let recs = keys.iter().map(|&k| notification(k)).collect();
    (keys, recs)
}

/// CPU time (user + system) this process has used, in microseconds (Linux /proc; 0 elsewhere).
fn cpu_micros() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    // The command name is in parentheses and may hold spaces: count the fields after it, from field 3 (the
    // state); utime and stime are fields 14 and 15, in clock ticks of 10 ms.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        f.get(i - 3)
            .and_then(|x| x.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field(14) + field(15)) * 10_000
}

/// Appends for `secs` from `writers` tasks, `per_append` records each time; optionally removes each batch once
/// acknowledged (the steady state: accepted, delivered, forgotten). Returns records/s, commits and CPU µs per
/// record (the whole process: encoding, the writer thread and the engine's background threads).
async fn appends(
    engine: &str,
    writers: usize,
    per_append: usize,
    remove: bool,
    secs: f64,
) -> (f64, u64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = open(engine, dir.path());
    let cpu_start = cpu_micros();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let spool = Arc::clone(&spool);
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let (keys, recs) = batch(&*spool, per_append);
                spool.append(recs).await.expect("append");
                if remove {
                    spool.remove(&keys);
                }
                n += per_append as u64;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("writer");
    }
    let elapsed = start.elapsed().as_secs_f64();
    spool.flush().await.expect("flush");
    let cpu = (cpu_micros() - cpu_start) as f64 / total.max(1) as f64;
    let commits = spool.stats().commits;
    spool.close().await.expect("close");
    (total as f64 / elapsed, commits, cpu)
}

/// Runs a recovery and counts what it visits.
fn count_recovered(spool: &dyn Spool) -> usize {
    let mut count = 0usize;
    spool
        .recover_each(&mut |_| {
            count += 1;
            std::ops::ControlFlow::Continue(())
        })
        .expect("recover");
    count
}

async fn fill(spool: &dyn Spool, records: usize) -> Vec<SpoolKey> {
    let mut all = Vec::with_capacity(records);
    let mut pending = Vec::new();
    for chunk_start in (0..records).step_by(1000) {
        let (keys, recs) = batch(spool, 1000.min(records - chunk_start));
        all.extend_from_slice(&keys);
        pending.push(spool.append(recs));
        if pending.len() == 16 {
            for p in pending.drain(..) {
                p.await.expect("append");
            }
        }
    }
    for p in pending {
        p.await.expect("append");
    }
    all
}

struct Bulk {
    fill_rate: f64,
    size_mb: f64,
    clean_open_ms: f64,
    clean_recover_ms: f64,
    crash_open_ms: f64,
    crash_recover_ms: f64,
    reschedule_rate: f64,
    remove_rate: f64,
    size_after_remove_mb: f64,
    churned_open_ms: f64,
    churned_recover_ms: f64,
}

async fn bulk(engine: &str, records: usize) -> Bulk {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = open(engine, dir.path());
    let t = Instant::now();
    let keys = fill(&*spool, records).await;
    let fill_rate = records as f64 / t.elapsed().as_secs_f64();
    spool.close().await.expect("close");
    drop(spool);

    let t = Instant::now();
    let spool = open(engine, dir.path());
    let clean_open_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let count = count_recovered(&*spool);
    let clean_recover_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(count, records, "recovered all");
    let size_mb = spool.stats().bytes_on_disk as f64 / 1e6;

    // Reschedule half, in the pattern of the queue: many small calls, then a flush.
    let t = Instant::now();
    for k in keys.iter().step_by(2) {
        spool.reschedule(*k, 1, 1_790_000_000_000);
    }
    spool.flush().await.expect("flush");
    let reschedule_rate = keys.len().div_ceil(2) as f64 / t.elapsed().as_secs_f64();

    let t = Instant::now();
    for chunk in keys.chunks(64) {
        spool.remove(chunk);
    }
    spool.flush().await.expect("flush");
    let remove_rate = keys.len() as f64 / t.elapsed().as_secs_f64();
    let size_after_remove_mb = spool.stats().bytes_on_disk as f64 / 1e6;
    // After the churn the same volume is live again: how long does a restart take to find it?
    fill(&*spool, records).await;
    spool.close().await.expect("close");
    drop(spool);
    let t = Instant::now();
    let spool = open(engine, dir.path());
    let churned_open_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let count = count_recovered(&*spool);
    let churned_recover_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(count, records);
    spool.close().await.expect("close");
    drop(spool);

    // Crash: a child process fills the spool, then keeps appending until it is killed with SIGKILL.
    let crash_dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .env(
            CHILD_ENV,
            format!("{engine}:{records}:{}", crash_dir.path().display()),
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let mut out = String::new();
    use std::io::Read;
    let mut stdout = child.stdout.take().expect("stdout");
    let mut buf = [0u8; 64];
    while !out.contains("READY") {
        let n = stdout.read(&mut buf).expect("read child");
        assert!(n > 0, "child exited early");
        out.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().expect("kill");
    child.wait().expect("wait");
    let t = Instant::now();
    let spool = open(engine, crash_dir.path());
    let crash_open_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let count = count_recovered(&*spool);
    let crash_recover_ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(count >= records, "recovered {count} of at least {records}");
    Bulk {
        fill_rate,
        size_mb,
        clean_open_ms,
        clean_recover_ms,
        crash_open_ms,
        crash_recover_ms,
        reschedule_rate,
        remove_rate,
        size_after_remove_mb,
        churned_open_ms,
        churned_recover_ms,
    }
}

async fn crash_child(spec: &str) {
    let mut parts = spec.splitn(3, ':');
    let (engine, records, dir) = (
        parts.next().expect("engine"),
        parts.next().and_then(|r| r.parse().ok()).expect("records"),
        parts.next().expect("dir"),
    );
    let spool = open(engine, Path::new(dir));
    fill(&*spool, records).await;
    println!("READY");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let spool = Arc::clone(&spool);
        tasks.push(tokio::spawn(async move {
            loop {
                let (keys, recs) = batch(&*spool, 50);
                spool.append(recs).await.expect("append");
                spool.remove(&keys[..10]);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        rt.block_on(crash_child(&spec));
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let engines = arg(&args, "--engines").unwrap_or_else(|| "redb,redb-qr,fjall".into());
    let secs: f64 = arg(&args, "--seconds")
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let records: usize = arg(&args, "--records")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    println!(
        "record size: {} bytes encoded; {} s per throughput run; {} records for bulk\n",
        notification(SpoolKey(u128::MAX / 3)).encode().len(),
        secs,
        records
    );
    let skip_appends = args.iter().any(|a| a == "--bulk-only");
    println!("### Appends (fsync'd, group commit), records/s (commits)\n");
    println!(
        "| engine | writers | records/append | append only | CPU µs/rec | append + remove | CPU µs/rec |"
    );
    println!("|---|---|---|---|---|---|---|");
    for engine in engines.split(',').filter(|_| !skip_appends) {
        for (writers, per) in [(1, 1), (8, 1), (64, 1), (1, 100), (8, 100), (64, 100)] {
            let (a, ac, acpu) = rt.block_on(appends(engine, writers, per, false, secs));
            let (r, rc, rcpu) = rt.block_on(appends(engine, writers, per, true, secs));
            println!(
                "| {engine} | {writers} | {per} | {a:.0} ({ac}) | {acpu:.1} | {r:.0} ({rc}) | {rcpu:.1} |"
            );
        }
    }
    println!("\n### Bulk: {records} records\n");
    println!(
        "| engine | fill rec/s | size MB | clean open ms | clean recover ms | crash open ms | crash recover ms | reschedule/s | remove/s | size after remove MB | after churn: open ms | after churn: recover ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for engine in engines.split(',') {
        let b = rt.block_on(bulk(engine, records));
        println!(
            "| {engine} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            b.fill_rate,
            b.size_mb,
            b.clean_open_ms,
            b.clean_recover_ms,
            b.crash_open_ms,
            b.crash_recover_ms,
            b.reschedule_rate,
            b.remove_rate,
            b.size_after_remove_mb,
            b.churned_open_ms,
            b.churned_recover_ms
        );
    }
}
