//! The [`Engine`] on fjall (an LSM tree), the store herald uses: a keyspace directory `fjall/` with a `records` and
//! a `schedules` partition, keys as 16 big-endian bytes. Every commit is one atomic write batch; a synced one is
//! persisted with `PersistMode::SyncAll` (fsync) before it returns, the others with `PersistMode::Buffer` (written
//! to the operating system, which keeps them across a crash of the process).

use std::ops::ControlFlow;
use std::path::Path;

use fjall::{Config, Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode};

use crate::engine::{CommitBatch, Engine, Table};
use crate::error::SpoolError;
use crate::key::SpoolKey;

/// The keyspace directory inside the spool directory.
pub const FJALL_DIR: &str = "fjall";

/// Options of the fjall store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FjallOptions {
    /// Block cache size in bytes.
    pub cache_bytes: u64,
}

impl Default for FjallOptions {
    fn default() -> Self {
        FjallOptions {
            cache_bytes: 32 << 20,
        }
    }
}

/// A spool store in a fjall keyspace.
pub struct FjallEngine {
    keyspace: Keyspace,
    records: PartitionHandle,
    schedules: PartitionHandle,
}

/// Maps a fjall error. After a failed fsync fjall refuses every later write ("poisoned") until it is reopened: that
/// stays a temporary condition for the sender, and herald must restart to clear it.
fn error(context: &'static str, e: fjall::Error) -> SpoolError {
    match e {
        fjall::Error::Io(io) => SpoolError::from_io(context, io),
        fjall::Error::Storage(lsm_error) => match lsm_error {
            fjall::LsmError::Io(io) => SpoolError::from_io(context, io),
            other => SpoolError::Storage {
                context,
                detail: other.to_string(),
                temporary: true,
            },
        },
        fjall::Error::Poisoned => SpoolError::Storage {
            context,
            detail: "the store refuses writes since an earlier write or fsync failed (disk full or I/O error); \
                     restart herald once the disk is fixed"
                .into(),
            temporary: true,
        },
        e @ (fjall::Error::InvalidVersion(_)
        | fjall::Error::Decode(_)
        | fjall::Error::JournalRecovery(_)) => SpoolError::Storage {
            context,
            detail: e.to_string(),
            temporary: false,
        },
        e => SpoolError::Storage {
            context,
            detail: e.to_string(),
            temporary: true,
        },
    }
}

impl FjallEngine {
    /// Opens (or creates) the keyspace in `dir/fjall`, recovering its journal after a crash.
    pub fn open(dir: &Path, options: FjallOptions) -> Result<FjallEngine, SpoolError> {
        const CTX: &str = "opening the spool store";
        let keyspace = Config::new(dir.join(FJALL_DIR))
            .cache_size(options.cache_bytes)
            .open()
            .map_err(|e| error(CTX, e))?;
        let records = keyspace
            .open_partition("records", PartitionCreateOptions::default())
            .map_err(|e| error(CTX, e))?;
        let schedules = keyspace
            .open_partition("schedules", PartitionCreateOptions::default())
            .map_err(|e| error(CTX, e))?;
        Ok(FjallEngine {
            keyspace,
            records,
            schedules,
        })
    }
}

impl FjallEngine {
    fn partition(&self, table: Table) -> &PartitionHandle {
        match table {
            Table::Records => &self.records,
            Table::Schedules => &self.schedules,
        }
    }
}

fn key_of(bytes: &[u8]) -> Option<SpoolKey> {
    <[u8; 16]>::try_from(bytes)
        .ok()
        .map(SpoolKey::from_be_bytes)
}

impl Engine for FjallEngine {
    fn name(&self) -> &'static str {
        "fjall"
    }

    fn commit(&self, batch: &CommitBatch) -> Result<(), SpoolError> {
        let mode = if batch.sync {
            PersistMode::SyncAll
        } else {
            PersistMode::Buffer
        };
        let mut b = self.keyspace.batch().durability(Some(mode));
        for (k, v) in &batch.inserts {
            b.insert(&self.records, k.to_be_bytes(), v.as_slice());
        }
        for (k, v) in &batch.schedules {
            b.insert(&self.schedules, k.to_be_bytes(), v.as_slice());
        }
        for k in &batch.removes {
            b.remove(&self.records, k.to_be_bytes());
        }
        for k in &batch.unschedules {
            b.remove(&self.schedules, k.to_be_bytes());
        }
        b.commit().map_err(|e| error("committing to the spool", e))
    }

    fn sync(&self) -> Result<(), SpoolError> {
        self.keyspace
            .persist(PersistMode::SyncAll)
            .map_err(|e| error("syncing the spool", e))
    }

    fn scan(
        &self,
        table: Table,
        upto: SpoolKey,
        visit: &mut dyn FnMut(SpoolKey, &[u8]) -> ControlFlow<()>,
    ) -> Result<(), SpoolError> {
        for kv in self.partition(table).range(..=upto.to_be_bytes()) {
            let (k, v) = kv.map_err(|e| error("reading the spool", e))?;
            match key_of(&k) {
                Some(key) => {
                    if visit(key, &v).is_break() {
                        break;
                    }
                }
                None => tracing::warn!(
                    len = k.len(),
                    "spool: skipping an entry whose key is not 16 bytes"
                ),
            }
        }
        Ok(())
    }

    fn last_key(&self, table: Table) -> Result<Option<SpoolKey>, SpoolError> {
        let last = self
            .partition(table)
            .last_key_value()
            .map_err(|e| error("reading the spool", e))?;
        Ok(last.and_then(|(k, _)| key_of(&k)))
    }

    fn disk_bytes(&self) -> u64 {
        self.keyspace.disk_space()
    }
}
