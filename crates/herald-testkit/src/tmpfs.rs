//! Small file systems for the full-disk tests: a tmpfs of a given size mounted at a test's directory, unmounted
//! when dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A tmpfs mounted at a directory, unmounted (lazily) when dropped.
pub struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Mounts a tmpfs of `size` (as `mount -o size=` takes it, e.g. `8m`) at `dir`, creating it; needs root or
/// CAP_SYS_ADMIN. Where that is refused it says the test is skipped and gives `None`, except when `CI` is set,
/// where it fails: the full-disk tests must run in CI.
pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but a tmpfs cannot be mounted at {}: the full-disk tests must run in CI",
            dir.display()
        );
        eprintln!(
            "SKIPPED: cannot mount a tmpfs at {} (needs root or CAP_SYS_ADMIN); the full-disk cycle is not tested here",
            dir.display()
        );
    }
    ok.then(|| Tmpfs(dir.to_path_buf()))
}
