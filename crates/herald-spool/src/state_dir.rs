//! The directories and files herald keeps its state in: the spool (`spool_dir`), the outcome store and the
//! invalid-token store hold device tokens and notification payloads, so what herald creates for them is for its own
//! user only, whatever the umask: directories [`DIR_MODE`], files [`FILE_MODE`]. fjall creates its own files with
//! the umask's mode; the directory herald creates for it first keeps them from other users.
//!
//! A `spool_dir` that exists already keeps its mode (it is the operator's): one that lets group or others in is
//! named in a warning ([`warn_if_shared`]) instead.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Mode of a directory herald creates for its state.
pub const DIR_MODE: u32 = 0o700;

/// Mode of a file herald creates for its state.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` and its missing parents with [`DIR_MODE`]; a directory that exists is left as it is.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(DIR_MODE);
    }
    builder.create(dir)
}

/// Options that create a missing file with [`FILE_MODE`] (the caller adds read, write, append, truncate); a file
/// that exists keeps its mode.
pub fn file_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(FILE_MODE);
    }
    options
}

/// The permission bits of `dir` when it lets group or others in (any of `0o077`), else `None` (also when it
/// cannot be read: opening it says why).
pub fn shared_mode(dir: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// Warns, once per directory in this process, when `dir` (the spool directory) lets group or others in: what
/// herald keeps there (device tokens, payloads) is then readable by them through fjall's files. herald does not
/// change the mode of a directory it found.
pub fn warn_if_shared(dir: &Path) {
    static WARNED: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);
    let Some(mode) = shared_mode(dir) else {
        return;
    };
    let key = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let first = WARNED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashSet::new)
        .insert(key);
    if first {
        tracing::warn!("{}", shared_warning(dir, mode));
    }
}

/// The text of [`warn_if_shared`]'s warning.
fn shared_warning(dir: &Path, mode: u32) -> String {
    format!(
        "spool_dir {} has mode {mode:04o}: group or other users can read the device tokens and payloads herald \
         keeps there; herald creates it {DIR_MODE:04o} but does not change an existing directory (chmod 0700 it)",
        dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// Directories and files are created for the owner only, whatever the umask; existing ones keep their mode.
    #[test]
    fn created_for_the_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b");
        create_dir(&deep).unwrap();
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        assert_eq!(mode(&deep), 0o700);
        let file = deep.join("f");
        file_options()
            .create(true)
            .append(true)
            .open(&file)
            .unwrap();
        assert_eq!(mode(&file), 0o600);

        std::fs::set_permissions(&deep, std::fs::Permissions::from_mode(0o750)).unwrap();
        create_dir(&deep).unwrap();
        assert_eq!(mode(&deep), 0o750, "an existing directory keeps its mode");
    }

    /// A directory open to group or others is named with its mode; one for the owner only is not.
    #[test]
    fn a_shared_directory_is_named_with_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(shared_mode(dir.path()), None);
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(shared_mode(dir.path()), Some(0o755));
        let text = shared_warning(dir.path(), 0o755);
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert!(text.contains("0755"), "{text}");
        assert_eq!(shared_mode(&dir.path().join("missing")), None);
    }
}
