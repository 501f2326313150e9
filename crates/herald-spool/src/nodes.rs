//! Which herald nodes share a JetStream stream, and how the stream's servers stand: the view the dashboard's
//! Overview and the console show of a cluster.
//!
//! Every node writes a heartbeat (its name, start time and what it holds) into a key-value bucket next to the
//! stream, `<stream>_nodes`, every [`BEAT_EVERY`]; entries expire after [`BEAT_MAX_AGE`], so a node killed without
//! a word drops out of the list by itself, and a node that stops gracefully deletes its own entry. The servers
//! (the stream's leader and replicas, with their lag) come from the stream's own information.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;

/// How often a node writes its heartbeat and reads the others'.
pub const BEAT_EVERY: Duration = Duration::from_secs(2);
/// A heartbeat older than this is gone (a node that died).
pub const BEAT_MAX_AGE: Duration = Duration::from_secs(15);

/// One herald node as its last heartbeat describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeBeat {
    pub node: String,
    /// When the node started, Unix milliseconds.
    pub started_ms: u64,
    /// When it wrote this heartbeat, Unix milliseconds.
    pub seen_ms: u64,
    /// Notifications it pulled and has not finished.
    pub held: u64,
    /// Notifications it pulled since it started.
    pub pulled: u64,
    /// It answers the other nodes' status lookups (crate::PeerLookup).
    pub lookups: bool,
}

impl NodeBeat {
    /// The bucket's value: `key=value` pairs, one per line (readable with `nats kv get`).
    pub fn encode(&self) -> String {
        format!(
            "node={}\nstarted_ms={}\nseen_ms={}\nheld={}\npulled={}\nlookups={}\n",
            self.node,
            self.started_ms,
            self.seen_ms,
            self.held,
            self.pulled,
            u8::from(self.lookups)
        )
    }

    /// Reads a value written by [`NodeBeat::encode`]; unknown lines are ignored (a newer node may add some), a
    /// value without a node name is refused.
    pub fn decode(text: &str) -> Option<NodeBeat> {
        let mut beat = NodeBeat {
            node: String::new(),
            started_ms: 0,
            seen_ms: 0,
            held: 0,
            pulled: 0,
            lookups: false,
        };
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let number = || v.trim().parse::<u64>().unwrap_or(0);
            match k.trim() {
                "node" => beat.node = v.trim().to_owned(),
                "started_ms" => beat.started_ms = number(),
                "seen_ms" => beat.seen_ms = number(),
                "held" => beat.held = number(),
                "pulled" => beat.pulled = number(),
                "lookups" => beat.lookups = number() == 1,
                _ => {}
            }
        }
        (!beat.node.is_empty()).then_some(beat)
    }
}

/// One NATS server holding a replica of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamReplica {
    pub server: String,
    pub leader: bool,
    /// Up to date with the leader.
    pub current: bool,
    /// Considered offline by the group.
    pub offline: bool,
    /// Operations behind the leader.
    pub lag: u64,
    /// Since the leader last heard from it, milliseconds (0 for the leader).
    pub active_ms: u64,
}

/// The nodes and servers of a JetStream spool, as last refreshed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterView {
    /// The NATS cluster's name (none for a single server outside a cluster).
    pub cluster: Option<String>,
    /// The stream's replicas, leader first.
    pub servers: Vec<StreamReplica>,
    /// The herald nodes with a live heartbeat, by name; this node among them once its first beat is written.
    pub nodes: Vec<NodeBeat>,
    /// This node's name.
    pub this_node: String,
}

/// The servers of a stream from its information.
pub fn servers_of(info: &jetstream::stream::Info) -> (Option<String>, Vec<StreamReplica>) {
    let Some(cluster) = &info.cluster else {
        return (None, Vec::new());
    };
    let mut servers = Vec::new();
    if let Some(leader) = &cluster.leader {
        servers.push(StreamReplica {
            server: leader.clone(),
            leader: true,
            current: true,
            offline: false,
            lag: 0,
            active_ms: 0,
        });
    }
    servers.extend(cluster.replicas.iter().map(|p| StreamReplica {
        server: p.name.clone(),
        leader: false,
        current: p.current,
        offline: p.offline,
        lag: p.lag.unwrap_or(0),
        active_ms: p.active.as_millis() as u64,
    }));
    (cluster.name.clone(), servers)
}

/// The bucket of the heartbeats of the nodes of `stream`.
pub fn bucket_name(stream: &str) -> String {
    format!("{stream}_nodes")
}

/// Opens the heartbeat bucket, creating it when missing. A bucket made by an older herald with other settings is
/// used as it is.
pub async fn open_bucket(
    ctx: &jetstream::Context,
    stream: &str,
    replicas: usize,
) -> Result<kv::Store, String> {
    let name = bucket_name(stream);
    if let Ok(store) = ctx.get_key_value(&name).await {
        return Ok(store);
    }
    ctx.create_key_value(kv::Config {
        bucket: name.clone(),
        history: 1,
        max_age: BEAT_MAX_AGE,
        num_replicas: replicas,
        storage: jetstream::stream::StorageType::Memory,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("key-value bucket {name}: {e}"))
}

/// Every heartbeat in the bucket, sorted by node name, but those written more than [`BEAT_MAX_AGE`] before the
/// newest. Age is judged by the NATS server's clock (when it stored each entry), not by the nodes' own clocks,
/// which may differ; the bucket's age limit removes a silent node's entry by the same clock.
///
/// Reading creates no consumer: the keys come from the bucket's stream information (the subjects it holds, as
/// `nats stream subjects` lists them) and each entry from a direct get of its last message. Listing the keys with
/// `kv::Store::keys` would make an ordered consumer at each read, every [`BEAT_EVERY`] on every node, which the
/// servers of a cluster remove only after their inactivity threshold (and not at all while one is cut off).
pub async fn read_beats(store: &kv::Store) -> Result<Vec<NodeBeat>, String> {
    let keys = keys_of(store).await?;
    let mut beats = Vec::new();
    for key in keys {
        if let Ok(Some(entry)) = store.entry(&key).await
            && entry.operation == kv::Operation::Put
            && let Some(beat) = std::str::from_utf8(&entry.value)
                .ok()
                .and_then(NodeBeat::decode)
        {
            let stored_ms = (entry.created.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
            beats.push((stored_ms, beat));
        }
    }
    let newest = beats.iter().map(|(at, _)| *at).max().unwrap_or(0);
    let mut beats: Vec<NodeBeat> = beats
        .into_iter()
        .filter(|(at, _)| newest.saturating_sub(*at) <= BEAT_MAX_AGE.as_millis() as u64)
        .map(|(_, beat)| beat)
        .collect();
    beats.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(beats)
}

/// The keys the bucket holds an entry for (a delete marker included), from its stream's information: no consumer
/// is made.
async fn keys_of(store: &kv::Store) -> Result<Vec<String>, String> {
    let subjects = format!("{}>", store.prefix);
    let mut listed = store
        .stream
        .info_with_subjects(&subjects)
        .await
        .map_err(|e| format!("listing the keys of {}: {e}", store.name))?;
    let mut keys = Vec::new();
    while let Some(subject) = listed.next().await {
        let (subject, _count) =
            subject.map_err(|e| format!("listing the keys of {}: {e}", store.name))?;
        if let Some(key) = subject.strip_prefix(store.prefix.as_str()) {
            keys.push(key.to_owned());
        }
    }
    Ok(keys)
}

/// Whether `node` has a heartbeat in the bucket now (read from the server, not from the last refreshed view): an
/// entry is removed by the server once the node has been silent for [`BEAT_MAX_AGE`].
///
/// No heartbeat says the node is gone only once the bucket has existed for [`BEAT_MAX_AGE`]: a bucket made less
/// than that ago (NATS lost it in a restart, and a node made it again) may not hold the heartbeats of live nodes
/// yet, and the answer is then an error (not known), as while the bucket cannot be read.
pub async fn has_beat(store: &kv::Store, node: &str) -> Result<bool, String> {
    match store.entry(node).await {
        Ok(Some(entry)) if entry.operation == kv::Operation::Put => return Ok(true),
        Ok(_) => {}
        Err(e) => {
            return Err(format!(
                "reading the heartbeat of {node} in {}: {e}",
                store.name
            ));
        }
    }
    let mut stream = store.stream.clone();
    let info = stream.info().await.map_err(|e| {
        format!(
            "reading when the heartbeat bucket {} was made: {e}",
            store.name
        )
    })?;
    let age = bucket_age(
        info.created.unix_timestamp_nanos(),
        info.state.last_timestamp.unix_timestamp_nanos(),
    );
    if age < BEAT_MAX_AGE {
        return Err(format!(
            "no heartbeat of {node} in {}, but the bucket was made {age:?} before its latest heartbeat (NATS lost \
             it): the live nodes may not have written theirs yet",
            store.name
        ));
    }
    Ok(false)
}

/// How long a bucket made at `created_ns` has existed when its newest entry was stored at `newest_ns` (Unix
/// nanoseconds, both by the NATS server's clock, so a node whose clock differs judges alike). Nodes write heartbeats
/// every [`BEAT_EVERY`], so the newest entry is a few seconds old at most; an empty bucket is new.
fn bucket_age(created_ns: i128, newest_ns: i128) -> Duration {
    let nanos = newest_ns.saturating_sub(created_ns).max(0);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_reads_back_and_tolerates_lines_it_does_not_know() {
        let beat = NodeBeat {
            node: "host-a-12-1f".into(),
            started_ms: 1_700_000_000_000,
            seen_ms: 1_700_000_002_000,
            held: 12,
            pulled: 3400,
            lookups: true,
        };
        assert_eq!(NodeBeat::decode(&beat.encode()), Some(beat.clone()));
        let newer = format!("{}zone=eu-1\n", beat.encode());
        assert_eq!(NodeBeat::decode(&newer), Some(beat));
        assert_eq!(NodeBeat::decode("held=3\n"), None);
        assert_eq!(NodeBeat::decode(""), None);
    }

    /// A bucket's age is read by the server's clock, from its creation to its newest entry; one without any entry
    /// (the server says the year 1) is new.
    #[test]
    fn a_bucket_is_as_old_as_its_newest_entry_says() {
        let second = 1_000_000_000i128;
        let created = 1_800_000_000 * second;
        let later = created + 20 * second;
        assert_eq!(bucket_age(created, later), Duration::from_secs(20));
        assert_eq!(bucket_age(later, created), Duration::ZERO);
        // 0001-01-01T00:00:00Z, the time of the newest entry of a bucket that holds none.
        let year_one = -62_135_596_800 * second;
        assert_eq!(bucket_age(created, year_one), Duration::ZERO);
    }
}
