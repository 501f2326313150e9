//! The modes of what `herald serve` keeps its state in, under the umask most systems run with (022): the spool
//! directory and the directories herald makes in it are 0700 and its own files there 0600, since they hold device
//! tokens and payloads; a spool directory that exists keeps its mode and, when it lets group or others in, is named
//! with its mode in a warning at start.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Runs `herald serve` on a configuration with `spool` as its spool directory under umask 022, waits until it is
/// ready, stops it with SIGTERM and returns what it wrote on standard error.
fn serve(dir: &Path, spool: &Path) -> String {
    // SAFETY: umask only sets the file creation mask this process and its children start with.
    unsafe {
        libc::umask(0o022);
    }
    let config = dir.join("herald.conf");
    std::fs::write(
        &config,
        format!(
            "spool_dir = \"{spool}\"\n\
             feedback_logfile = \"{logs}/feedback.log\"\n\
             ec_logger \"main\" {{ mainlog = \"{logs}/mainlog.ec\" mainlog_mode = 0600 }}\n\
             http_listener {{ listen \"127.0.0.1:0\" {{ }} }}\n",
            spool = spool.display(),
            logs = dir.join("logs").display(),
        ),
    )
    .unwrap();
    let (mut child, err_path) = support::serve_until_ready(&config, dir, "warn");
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "herald did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::read_to_string(&err_path).unwrap()
}

/// A spool herald creates is its user's only: the directories 0700, the invalid-token store, the lock and the list
/// of refused keys 0600; nothing is warned about.
#[test]
fn a_fresh_spool_is_for_herald_s_user_only() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let err = serve(dir.path(), &spool);
    assert!(!err.contains("spool_dir"), "{err}");
    for d in ["", "fjall", "outcomes"] {
        assert_eq!(mode(&spool.join(d)), 0o700, "{}", spool.join(d).display());
    }
    for f in ["invalid-tokens.jsonl", "LOCK", "refused-keys"] {
        assert_eq!(mode(&spool.join(f)), 0o600, "{}", spool.join(f).display());
    }
    assert_eq!(mode(&dir.path().join("logs/mainlog.ec")), 0o600);
    // The feedback log lists device tokens too.
    assert_eq!(mode(&dir.path().join("logs/feedback.log")), 0o600);
}

/// An operator's spool directory open to other users keeps its mode, and start says so, naming it and its mode;
/// the directories herald makes inside are 0700 all the same.
#[test]
fn an_existing_spool_dir_open_to_others_is_named_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = serve(dir.path(), &spool);
    let said = format!("spool_dir {} has mode 0755", spool.display());
    assert_eq!(err.matches(&said).count(), 1, "said once: {err}");
    assert_eq!(mode(&spool), 0o755, "not changed");
    assert_eq!(mode(&spool.join("fjall")), 0o700);
    assert_eq!(mode(&spool.join("outcomes")), 0o700);
    assert_eq!(mode(&spool.join("invalid-tokens.jsonl")), 0o600);
}
