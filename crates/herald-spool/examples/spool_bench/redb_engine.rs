//! The spool [`Engine`] on redb, kept only for the benchmark (it lost to fjall, see BENCHMARKS.md "Spool"): one database file, `spool.redb`, with a records table and a schedules table; every
//! commit uses `Durability::Immediate` (fsync before the commit returns).

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableTable, TableDefinition};

use herald_spool::{CommitBatch, Engine, SpoolError, SpoolKey, Table};

const RECORDS: TableDefinition<u128, &[u8]> = TableDefinition::new("records");
const SCHEDULES: TableDefinition<u128, &[u8]> = TableDefinition::new("schedules");

/// The file name of the database inside the spool directory.
pub const REDB_FILE: &str = "spool.redb";

/// Options of the redb engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedbOptions {
    /// Page cache size in bytes.
    pub cache_bytes: usize,
    /// Save the allocator state at every commit, so that reopening after a crash needs no full repair (redb's
    /// quick-repair; it also turns on two-phase commit, at the cost of a second fsync per commit).
    pub quick_repair: bool,
}

impl Default for RedbOptions {
    fn default() -> Self {
        RedbOptions {
            cache_bytes: 64 << 20,
            quick_repair: true,
        }
    }
}

/// A spool store in a redb database.
#[derive(Debug)]
pub struct RedbEngine {
    db: Database,
    file: PathBuf,
    quick_repair: bool,
}

impl RedbEngine {
    /// Opens (or creates) `dir/spool.redb`. `dir` must exist.
    pub fn open(dir: &Path, options: RedbOptions) -> Result<RedbEngine, SpoolError> {
        let file = dir.join(REDB_FILE);
        let db = builder(options)
            .create(&file)
            .map_err(|e| storage_error("opening the redb database", e))?;
        Self::init(db, file, options)
    }

    fn init(db: Database, file: PathBuf, options: RedbOptions) -> Result<RedbEngine, SpoolError> {
        let engine = RedbEngine {
            db,
            file,
            quick_repair: options.quick_repair,
        };
        // Create both tables so that readers never meet a missing one.
        engine.commit(&CommitBatch::default())?;
        Ok(engine)
    }
}

fn builder(options: RedbOptions) -> redb::Builder {
    let mut b = Database::builder();
    b.set_cache_size(options.cache_bytes);
    b
}

/// Maps a redb error: I/O errors keep their kind (disk full stays recognisable), corruption is permanent, the rest
/// is treated as temporary so the sender retries.
fn storage_error(context: &'static str, e: impl Into<redb::Error>) -> SpoolError {
    match e.into() {
        redb::Error::Io(io) => SpoolError::from_io(context, io),
        e @ (redb::Error::Corrupted(_)
        | redb::Error::UpgradeRequired(_)
        | redb::Error::DatabaseAlreadyOpen) => SpoolError::Storage {
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

impl Engine for RedbEngine {
    fn name(&self) -> &'static str {
        if self.quick_repair {
            "redb (quick-repair)"
        } else {
            "redb"
        }
    }

    fn commit(&self, batch: &CommitBatch) -> Result<(), SpoolError> {
        const CTX: &str = "committing to the spool";
        let mut tx = self.db.begin_write().map_err(|e| storage_error(CTX, e))?;
        tx.set_durability(Durability::Immediate);
        tx.set_quick_repair(self.quick_repair);
        {
            let mut records = tx.open_table(RECORDS).map_err(|e| storage_error(CTX, e))?;
            let mut schedules = tx
                .open_table(SCHEDULES)
                .map_err(|e| storage_error(CTX, e))?;
            for (key, value) in &batch.inserts {
                records
                    .insert(key.0, value.as_slice())
                    .map_err(|e| storage_error(CTX, e))?;
            }
            for (key, value) in &batch.schedules {
                schedules
                    .insert(key.0, value.as_slice())
                    .map_err(|e| storage_error(CTX, e))?;
            }
            for key in &batch.removes {
                records.remove(key.0).map_err(|e| storage_error(CTX, e))?;
            }
            for key in &batch.unschedules {
                schedules.remove(key.0).map_err(|e| storage_error(CTX, e))?;
            }
        }
        tx.commit().map_err(|e| storage_error(CTX, e))
    }

    fn sync(&self) -> Result<(), SpoolError> {
        // Every commit is already durable.
        Ok(())
    }

    fn scan(
        &self,
        table: Table,
        upto: SpoolKey,
        visit: &mut dyn FnMut(SpoolKey, &[u8]) -> ControlFlow<()>,
    ) -> Result<(), SpoolError> {
        const CTX: &str = "reading the spool";
        let tx = self.db.begin_read().map_err(|e| storage_error(CTX, e))?;
        let t = tx
            .open_table(definition(table))
            .map_err(|e| storage_error(CTX, e))?;
        for item in t.range(..=upto.0).map_err(|e| storage_error(CTX, e))? {
            let (k, v) = item.map_err(|e| storage_error(CTX, e))?;
            if visit(SpoolKey(k.value()), v.value()).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn last_key(&self, table: Table) -> Result<Option<SpoolKey>, SpoolError> {
        const CTX: &str = "reading the spool";
        let tx = self.db.begin_read().map_err(|e| storage_error(CTX, e))?;
        let t = tx
            .open_table(definition(table))
            .map_err(|e| storage_error(CTX, e))?;
        let last = t.last().map_err(|e| storage_error(CTX, e))?;
        Ok(last.map(|(k, _)| SpoolKey(k.value())))
    }

    fn disk_bytes(&self) -> u64 {
        std::fs::metadata(&self.file).map_or(0, |m| m.len())
    }
}

fn definition(table: Table) -> TableDefinition<'static, u128, &'static [u8]> {
    match table {
        Table::Records => RECORDS,
        Table::Schedules => SCHEDULES,
    }
}
