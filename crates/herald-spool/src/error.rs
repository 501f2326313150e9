//! Errors of the spool: what went wrong, where, and whether the sender should simply try again later.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::key::SpoolKey;
use crate::record::DecodeError;

/// What a spool operation can fail with. Cheap to clone: one failed group commit answers every waiter in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    /// The spool directory could not be created or opened.
    #[error("cannot open spool directory {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    /// The spool directory exists but this process cannot write in it.
    #[error("spool directory {path} is not writable: {source}")]
    NotWritable {
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    /// Another process (or another spool in this process) has the directory open.
    #[error("spool directory {path} is in use by another herald process")]
    Locked { path: PathBuf },
    /// The disk holding the spool is full.
    #[error("spool disk full while {context}: {source}")]
    DiskFull {
        context: &'static str,
        #[source]
        source: Arc<io::Error>,
    },
    /// Any other I/O error of the store.
    #[error("spool I/O error while {context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: Arc<io::Error>,
    },
    /// The storage engine refused the operation for a reason of its own.
    #[error("spool storage error while {context}: {detail}")]
    Storage {
        context: &'static str,
        detail: String,
        temporary: bool,
    },
    /// The spool was closed (shutdown): nothing more is accepted.
    #[error("the spool is closed")]
    Closed,
    /// The spool's settings cannot work (an incompatible JetStream stream, a missing server list).
    #[error("spool configuration: {0}")]
    Config(String),
    /// The NATS servers of the JetStream spool cannot be reached now.
    #[error("NATS unreachable: {0}")]
    Unreachable(String),
    /// A stored record could not be read back.
    #[error("spool record {key}: {source}")]
    Corrupt {
        key: SpoolKey,
        #[source]
        source: DecodeError,
    },
}

impl SpoolError {
    /// True when the condition may pass (I/O error, disk full, shutdown): the sender should get a temporary refusal
    /// (SMTP 451/452, HTTP 503) rather than a permanent one.
    pub fn is_temporary(&self) -> bool {
        match self {
            SpoolError::DiskFull { .. }
            | SpoolError::Io { .. }
            | SpoolError::Closed
            | SpoolError::Unreachable(_) => true,
            SpoolError::Storage { temporary, .. } => *temporary,
            SpoolError::Open { .. }
            | SpoolError::NotWritable { .. }
            | SpoolError::Locked { .. }
            | SpoolError::Config(_)
            | SpoolError::Corrupt { .. } => false,
        }
    }

    /// True when the disk is full (SMTP 452 rather than 451).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, SpoolError::DiskFull { .. })
    }

    /// Classifies an I/O error of the store: ENOSPC and EDQUOT become [`SpoolError::DiskFull`].
    pub fn from_io(context: &'static str, source: io::Error) -> SpoolError {
        const ENOSPC: i32 = 28;
        const EDQUOT: i32 = 122;
        let full = source.kind() == io::ErrorKind::StorageFull
            || source.kind() == io::ErrorKind::QuotaExceeded
            || matches!(source.raw_os_error(), Some(ENOSPC) | Some(EDQUOT));
        let source = Arc::new(source);
        if full {
            SpoolError::DiskFull { context, source }
        } else {
            SpoolError::Io { context, source }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_is_disk_full_and_temporary() {
        let e = SpoolError::from_io("committing", io::Error::from_raw_os_error(28));
        assert!(e.is_disk_full());
        assert!(e.is_temporary());
        assert!(e.to_string().contains("disk full while committing"), "{e}");
    }

    #[test]
    fn other_io_is_temporary_but_not_full() {
        let e = SpoolError::from_io("syncing", io::Error::other("boom"));
        assert!(!e.is_disk_full());
        assert!(e.is_temporary());
        assert_eq!(e.to_string(), "spool I/O error while syncing: boom");
    }

    #[test]
    fn open_and_corrupt_are_permanent() {
        let e = SpoolError::NotWritable {
            path: "/x".into(),
            source: Arc::new(io::Error::from(io::ErrorKind::PermissionDenied)),
        };
        assert!(!e.is_temporary());
        assert!(
            e.to_string()
                .starts_with("spool directory /x is not writable")
        );
        let c = SpoolError::Corrupt {
            key: SpoolKey(1),
            source: DecodeError::UnknownVersion(9),
        };
        assert!(!c.is_temporary());
    }
}
