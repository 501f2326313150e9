//! herald-spool: the durable queue of accepted notifications.
//!
//! It owns the versioned record format of a spooled notification ([`StoredNotification`], checksummed so a torn or
//! corrupt record is skipped on recovery, while an intact one of a newer format is kept for the herald that wrote it), the small object-safe [`Spool`] trait herald holds as `Arc<dyn Spool>`,
//! the embedded store [`DiskSpool`] (fjall, chosen by measurement: see BENCHMARKS.md "Spool") whose writer thread
//! gives group commit (concurrent appends share one fsync), recovery after a crash, and [`MemorySpool`], a
//! non-durable stand-in for tests, and [`JetStreamSpool`], a NATS JetStream stream several herald nodes share
//! (docs/scale-out.md), with the [`SharedMap`] and [`ClaimBucket`] key-value buckets next to it, the
//! [`RetryBook`] that carries each notification's retry count from node to node, and [`PeerLookup`], the questions
//! its nodes ask each other. It knows nothing of herald's queue or protocols: herald
//! converts its notifications to and from [`StoredNotification`].

pub mod claims;
pub mod engine;
pub mod error;
pub mod fjall_engine;
pub mod jetstream;
pub mod key;
pub mod liveness;
pub mod memory;
pub mod nodes;
pub mod outcomes;
pub mod peer_lookup;
pub mod record;
pub mod retry_state;
pub mod shared_map;
pub mod spool;
pub mod state_dir;
pub mod store;

pub use claims::{ClaimBucket, ClaimError, Entry as ClaimEntry};
pub use engine::{CommitBatch, Engine, Table};
pub use error::SpoolError;
pub use fjall_engine::{FjallEngine, FjallOptions};
pub use jetstream::{JetStreamOptions, JetStreamSpool, JetStreamStats};
pub use key::{KeyGenerator, SpoolKey};
pub use memory::MemorySpool;
pub use nodes::{ClusterView, NodeBeat, StreamReplica};
pub use outcomes::{ChunkBuilder, HookChunk, HookQueue, Lookup, OutcomeKey, OutcomeStore};
pub use peer_lookup::{PeerLookup, PeerLookupError};
pub use record::{DecodeError, RECORD_VERSION, Schedule, StoredNotification};
pub use retry_state::{RetryBook, RetryState};
pub use shared_map::{SharedEntry, SharedMap};
pub use spool::{Recovered, RecoveryReport, Spool, SpoolFuture, SpoolStats};
pub use store::{DiskSpool, SpoolOptions};
