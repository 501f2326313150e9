//! The modes of what the spool and the outcome store create: device tokens and payloads are for herald's user only,
//! whatever the umask (here the common 022, which makes files readable by everyone). A spool directory that exists
//! keeps its mode, and one open to other users is named in a warning.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use herald_spool::{DiskSpool, OutcomeStore, Spool, SpoolKey, SpoolOptions, StoredNotification};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The umask most systems run with: what herald creates must not depend on a stricter one.
fn common_umask() {
    // SAFETY: umask only sets the process's file creation mask; every test of this file wants 022.
    unsafe {
        libc::umask(0o022);
    }
}

fn notification(key: SpoolKey) -> StoredNotification {
    StoredNotification {
        key,
        domain: "com.example.app".into(),
        token: vec![0xab; 32],
        topic: Some("com.example.app".into()),
        push_type: Some("alert".into()),
        priority: Some(10),
        expiration: None,
        collapse_id: None,
        apns_id: None,
        binding: None,
        payload: br#"{"aps":{"alert":"secret"}}"#.to_vec(),
        sender: "orders@example.com".into(),
        recipient: "ab@com.example.app".into(),
        received_at: 1_790_000_000,
        batch_id: 1,
        conn_id: 1,
        retries: 0,
        next_attempt_ms: 0,
    }
}

/// Lines of tracing output, collected.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
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

/// Runs `f` with the warnings it logs collected.
fn warnings_of<T>(f: impl FnOnce() -> T) -> (T, String) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    (out, captured.text())
}

/// A spool created fresh: the spool directory, fjall's directory and the outcome store's are 0700, the files herald
/// writes there 0600, and nothing is warned about.
#[tokio::test]
async fn fresh_state_is_for_the_owner_only() {
    common_umask();
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("var/spool/herald");
    let (spool, warned) =
        warnings_of(|| DiskSpool::open(&spool_dir, SpoolOptions::default()).unwrap());
    let key = spool.next_key();
    spool.append(vec![notification(key)]).await.unwrap();
    spool.close().await.unwrap();
    let (store, warned_too) = warnings_of(|| OutcomeStore::open(&spool_dir).unwrap());
    store
        .put(&[([7u8; 16], 1_790_000_000_000, b"outcome")])
        .unwrap();
    drop(store);
    drop(spool);
    assert_eq!(warned, "");
    assert_eq!(warned_too, "");

    assert_eq!(mode(&spool_dir), 0o700, "{}", spool_dir.display());
    assert_eq!(
        mode(&dir.path().join("var")),
        0o700,
        "a parent herald created"
    );
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&spool_dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let want = if entry.file_type().unwrap().is_dir() {
            0o700
        } else {
            0o600
        };
        assert_eq!(mode(&path), want, "{}", path.display());
        seen.push(entry.file_name().to_string_lossy().into_owned());
    }
    seen.sort();
    for name in ["LOCK", "fjall", "outcomes", "refused-keys"] {
        assert!(seen.iter().any(|s| s == name), "{name} missing: {seen:?}");
    }
}

/// A spool directory the operator made open to other users keeps its mode, and opening the spool and the outcome
/// store warns once, naming the directory and its mode; fjall's directory inside is still created 0700.
#[tokio::test]
async fn an_existing_shared_spool_dir_is_warned_about_not_changed() {
    common_umask();
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    std::fs::create_dir(&spool_dir).unwrap();
    std::fs::set_permissions(&spool_dir, std::fs::Permissions::from_mode(0o755)).unwrap();

    let (spool, warned) =
        warnings_of(|| DiskSpool::open(&spool_dir, SpoolOptions::default()).unwrap());
    let (store, warned_again) = warnings_of(|| OutcomeStore::open(&spool_dir).unwrap());
    drop(store);
    spool.close().await.unwrap();
    drop(spool);

    assert_eq!(
        mode(&spool_dir),
        0o755,
        "an operator's directory is not changed"
    );
    assert!(warned.contains("WARN"), "{warned}");
    assert!(
        warned.contains(&format!("spool_dir {} has mode 0755", spool_dir.display())),
        "{warned}"
    );
    assert_eq!(warned_again, "", "said once");
    assert_eq!(mode(&spool_dir.join("fjall")), 0o700);
    assert_eq!(mode(&spool_dir.join("outcomes")), 0o700);
}

/// The outcome store alone (the JetStream backend keeps only it and the invalid tokens in `spool_dir`) creates the
/// spool directory 0700 too, and warns about an existing one open to others.
#[test]
fn the_outcome_store_alone_creates_and_checks_the_spool_dir() {
    common_umask();
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let (store, warned) = warnings_of(|| OutcomeStore::open(&spool_dir).unwrap());
    drop(store);
    assert_eq!(warned, "");
    assert_eq!(mode(&spool_dir), 0o700);
    assert_eq!(mode(&spool_dir.join("outcomes")), 0o700);

    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o750)).unwrap();
    let (store, warned) = warnings_of(|| OutcomeStore::open(&shared).unwrap());
    drop(store);
    assert!(
        warned.contains(&format!("spool_dir {} has mode 0750", shared.display())),
        "{warned}"
    );
    assert_eq!(mode(&shared), 0o750);
}
