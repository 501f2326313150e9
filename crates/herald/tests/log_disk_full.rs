//! A log file on a small tmpfs that fills up: the disk takes only the beginning of a line, the flush at shutdown
//! counts every line it could not write (the torn one included), and once there is room again the next herald
//! starts on a line of its own instead of running its first line into the torn one.
//!
//! The test mounts its own tmpfs (root or CAP_SYS_ADMIN); where that is refused it prints why and passes, except
//! when `CI` is set, where it fails.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use herald::logs::file::{LogFile, LogFileError, flush_all_within};
use herald_testkit::tmpfs::mount as mount_tmpfs;

/// Longer than a page, and a prime larger than the pages the file system holds: the file, filled to its last page,
/// never ends between two lines.
const LINE_LEN: usize = 4099;

fn record(i: usize) -> String {
    let head = format!("17966870{i:02}@00/00-{i}@");
    format!("{head}{}", "x".repeat(LINE_LEN - head.len()))
}

/// Writes `bytes` into a file at `path` and syncs it.
fn write_filler(path: &Path, bytes: usize) {
    let mut file = std::fs::File::create(path).unwrap();
    file.write_all(&vec![7u8; bytes]).unwrap();
    file.sync_all().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_log_disk_counts_what_it_lost_and_never_runs_two_lines_together() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let Some(_mount) = mount_tmpfs(&logs, "256k") else {
        return;
    };
    let filler = logs.join("filler");
    write_filler(&filler, 128 * 1024);
    let path = logs.join("mainlog.ec");

    // A herald whose log disk fills under traffic, then stops.
    let log = LogFile::open(&path, 0o644).unwrap();
    let records: Vec<String> = (0..100).map(record).collect();
    for r in &records {
        log.write_line(r);
    }
    let errors = flush_all_within(&[&log], Duration::from_millis(500)).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    let lines = match &errors[0] {
        LogFileError::Abandoned { lines, .. } => *lines,
        other => panic!("the lines the disk refused were not counted: {other}"),
    };
    let message = errors[0].to_string();
    assert!(
        message.contains(&format!("{lines} line(s) dropped")) && message.contains("No space left"),
        "{message}"
    );
    assert_eq!(log.dropped_lines(), lines);
    drop(log);
    let torn = std::fs::read_to_string(&path).unwrap();
    let whole = torn.matches('\n').count();
    assert!(whole > 0 && !torn.ends_with('\n'), "no line was torn");
    assert_eq!(
        whole as u64 + lines,
        records.len() as u64,
        "every line is written or counted as dropped"
    );

    // Room again, and the next herald.
    std::fs::remove_file(&filler).unwrap();
    let log = LogFile::open(&path, 0o644).unwrap();
    log.write_line("after the restart");
    log.flush().unwrap();
    drop(log);
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.split_terminator('\n').collect();
    assert!(text.ends_with('\n'));
    assert_eq!(
        lines.len(),
        whole + 2,
        "the next line ran into the torn one"
    );
    assert_eq!(lines[..whole], records[..whole]);
    assert!(
        records[whole].starts_with(lines[whole]) && lines[whole].len() < LINE_LEN,
        "the torn line stays as it was"
    );
    assert_eq!(lines[whole + 1], "after the restart");
}
