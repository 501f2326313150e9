//! The delivery record: every accepted notification, exactly once, as a JSON line in `--record FILE` and/or in
//! memory for [`crate::SimHandle::record`]. The memory record is appended by the request handler itself, before
//! the answer goes out, so a client that has its answer finds the notification there; it keeps the latest
//! [`crate::SimConfig::record_memory_limit`] notifications (100,000 by default), dropping and counting the oldest
//! beyond ([`MemoryRecord`]), so that a long run does not grow without bound. For the file, handlers
//! only push onto a channel and a dedicated thread serializes, writes through a buffered writer, and flushes
//! whenever the channel runs dry, so readers see each line promptly.
//!
//! The channel holds at most [`QUEUE`] records: a handler takes room in it ([`Recorder::slot`]) before it counts
//! its notification as accepted, and when the writer is that far behind (a slow disk) the handler waits, as a
//! busy server would, instead of the queue growing without bound. Nothing is dropped.
//!
//! Line format (one JSON object per line):
//! `{"protocol":"h2","token":"<lowercase hex>","topic":"…","apns_id":"…","priority":10,"expiration":null,
//!   "collapse_id":null,"push_type":"alert","payload":"<the payload>","received_ms":…}`
//! `payload` is a JSON *string* holding the exact payload bytes (decoded as UTF-8), so a test compares it byte
//! for byte with what it sent. A payload that is not UTF-8 (possible on the binary protocol) is written lossily
//! in `payload` and exactly, base64-encoded, in `payload_base64`. Binary notifications have `apns_id: null` and
//! carry `identifier` and the command `format` (0, 1, 2). Broadcasts have `"protocol":"broadcast"`, an empty
//! `token`, the bundle id as `topic`, the `apns-request-id` as `apns_id`, and `channel_id`.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

/// Which API a notification arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordProtocol {
    H2,
    Binary,
    /// A broadcast push (`POST /4/broadcasts/apps/<bundle>`): `token` is empty, `topic` is the bundle id,
    /// `channel_id` names the channel and `apns_id` holds the `apns-request-id`.
    Broadcast,
}

/// One accepted notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub protocol: RecordProtocol,
    pub token: String,
    pub topic: String,
    pub apns_id: Option<String>,
    pub priority: u8,
    pub expiration: Option<u64>,
    pub collapse_id: Option<String>,
    pub push_type: Option<String>,
    pub payload: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identifier: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<u8>,
    pub received_ms: u64,
    /// The channel of a broadcast.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_id: Option<String>,
}

impl DeliveryRecord {
    /// Sets `payload` (and `payload_base64` when the bytes are not UTF-8).
    pub fn set_payload(&mut self, bytes: &[u8]) {
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                self.payload = s.to_owned();
                self.payload_base64 = None;
            }
            Err(_) => {
                use base64::Engine;
                self.payload = String::from_utf8_lossy(bytes).into_owned();
                self.payload_base64 = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
            }
        }
    }

    /// The exact payload bytes.
    pub fn payload_bytes(&self) -> Vec<u8> {
        use base64::Engine;
        match &self.payload_base64 {
            Some(b) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .unwrap_or_default(),
            None => self.payload.as_bytes().to_vec(),
        }
    }
}

/// Records the writer thread may be behind by; handlers wait for room beyond.
pub const QUEUE: usize = 16_384;

/// The in-memory record: the latest `limit` notifications, oldest first, and how many older ones were dropped.
/// Records are shared (`Arc`), so a reader copies the list under the lock at the cost of a reference count each
/// ([`MemoryRecord::snapshot`]) and serialises it without holding the lock, which every accepted request takes.
#[derive(Debug)]
pub(crate) struct MemoryRecord {
    records: VecDeque<Arc<DeliveryRecord>>,
    limit: usize,
    dropped: u64,
}

impl MemoryRecord {
    /// Keeps at most `limit` records (at least 1).
    pub fn new(limit: usize) -> MemoryRecord {
        MemoryRecord {
            records: VecDeque::new(),
            limit: limit.max(1),
            dropped: 0,
        }
    }

    fn push(&mut self, rec: Arc<DeliveryRecord>) {
        if self.records.len() >= self.limit {
            self.records.pop_front();
            self.dropped += 1;
        }
        self.records.push_back(rec);
    }

    /// The records kept, oldest first.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = &DeliveryRecord> {
        self.records.iter().map(|r| &**r)
    }

    /// The records kept, oldest first, and how many were dropped before them: a copy of the list that shares the
    /// records, for the caller to read once the lock is released.
    pub fn snapshot(&self) -> (Vec<Arc<DeliveryRecord>>, u64) {
        (self.records.iter().cloned().collect(), self.dropped)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Records dropped to stay within the limit.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// The sending side, shared by every connection.
#[derive(Debug)]
pub(crate) struct Recorder {
    tx: Option<mpsc::Sender<Arc<DeliveryRecord>>>,
    pub memory: Arc<Mutex<MemoryRecord>>,
    pub written: watch::Receiver<u64>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Records go to `memory` as they are pushed, so the memory record never trails an answer the simulator sent.
    in_memory: bool,
}

/// Room for one record in the writer's queue ([`Recorder::slot`]).
pub(crate) struct Slot<'a> {
    recorder: &'a Recorder,
    permit: Option<mpsc::Permit<'a, Arc<DeliveryRecord>>>,
}

impl Recorder {
    /// `file`: append JSON lines there; `in_memory`: keep the latest `memory_limit` records for
    /// [`Recorder::memory`]. Neither: disabled.
    pub fn start(
        file: Option<&Path>,
        in_memory: bool,
        memory_limit: usize,
    ) -> std::io::Result<Recorder> {
        let out: Option<Box<dyn Write + Send>> = match file {
            Some(p) => Some(Box::new(File::options().create(true).append(true).open(p)?)),
            None => None,
        };
        let enabled = out.is_some() || in_memory;
        Recorder::start_with(out, enabled, in_memory, memory_limit, QUEUE)
    }

    /// [`Recorder::start`] with any sink for the lines and a queue of `queue` records.
    fn start_with(
        out: Option<Box<dyn Write + Send>>,
        enabled: bool,
        in_memory: bool,
        memory_limit: usize,
        queue: usize,
    ) -> std::io::Result<Recorder> {
        let (count_tx, written) = watch::channel(0u64);
        let memory = Arc::new(Mutex::new(MemoryRecord::new(memory_limit)));
        if !enabled {
            return Ok(Recorder {
                tx: None,
                memory,
                written,
                thread: Mutex::new(None),
                in_memory,
            });
        }
        let mut out = out.map(|o| BufWriter::with_capacity(1 << 16, o));
        let (tx, mut rx) = mpsc::channel::<Arc<DeliveryRecord>>(queue.max(1));
        let thread = std::thread::Builder::new()
            .name("herald-sim-record".into())
            .spawn(move || {
                let mut line = Vec::with_capacity(1024);
                while let Some(first) = rx.blocking_recv() {
                    let mut n = 0u64;
                    let mut next = Some(first);
                    while let Some(rec) = next {
                        if let Some(w) = out.as_mut() {
                            line.clear();
                            if serde_json::to_writer(&mut line, &*rec).is_ok() {
                                line.push(b'\n');
                                if let Err(e) = w.write_all(&line) {
                                    tracing::error!("delivery record: write failed: {e}");
                                }
                            }
                        }
                        n += 1;
                        next = rx.try_recv().ok();
                    }
                    if let Some(w) = out.as_mut()
                        && let Err(e) = w.flush()
                    {
                        tracing::error!("delivery record: flush failed: {e}");
                    }
                    count_tx.send_modify(|c| *c += n);
                }
            })?;
        Ok(Recorder {
            tx: Some(tx),
            memory,
            written,
            thread: Mutex::new(Some(thread)),
            in_memory,
        })
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Room for one record: at once, unless the writer thread is [`QUEUE`] records behind. A handler takes it
    /// before it counts its notification as accepted, so that nothing between counting and recording waits (or
    /// can be cancelled).
    pub async fn slot(&self) -> Slot<'_> {
        let permit = match &self.tx {
            Some(tx) => tx.reserve().await.ok(),
            None => None,
        };
        Slot {
            recorder: self,
            permit,
        }
    }
}

impl Slot<'_> {
    /// Records `rec`: in memory at once (before the simulator answers), in the file by the writer thread, which
    /// also counts it for [`crate::SimHandle::wait_for_records`].
    pub fn push(self, rec: DeliveryRecord) {
        if self.recorder.tx.is_none() {
            return;
        }
        let rec = Arc::new(rec);
        if self.recorder.in_memory {
            self.recorder
                .memory
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(rec.clone());
        }
        if let Some(permit) = self.permit {
            permit.send(rec);
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(token: &str, payload: &[u8]) -> DeliveryRecord {
        let mut r = DeliveryRecord {
            protocol: RecordProtocol::H2,
            token: token.into(),
            topic: "t".into(),
            apns_id: None,
            priority: 10,
            expiration: None,
            collapse_id: None,
            push_type: None,
            payload: String::new(),
            payload_base64: None,
            identifier: None,
            format: None,
            received_ms: 0,
            channel_id: None,
        };
        r.set_payload(payload);
        r
    }

    #[tokio::test]
    async fn the_memory_record_holds_a_push_at_once() {
        let r = Recorder::start(None, true, 1000).unwrap();
        for i in 0..100 {
            r.slot().await.push(rec(&format!("{i:02x}"), b"{}"));
            // No wait: the record is there as soon as push returns (the simulator answers after that).
            assert_eq!(r.memory.lock().unwrap().len(), i + 1);
        }
    }

    #[tokio::test]
    async fn records_reach_file_and_memory_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec.jsonl");
        let r = Recorder::start(Some(&path), true, 1000).unwrap();
        r.slot()
            .await
            .push(rec("aa", br#"{"aps":{"alert":"hi \u00e9"}}"#));
        r.slot().await.push(rec("bb", &[0xff, 0x00]));
        let mut written = r.written.clone();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            written.wait_for(|n| *n == 2),
        )
        .await
        .expect("both lines written in time")
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<DeliveryRecord> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0].payload_bytes(),
            br#"{"aps":{"alert":"hi \u00e9"}}"#
        );
        assert_eq!(lines[1].payload_bytes(), vec![0xff, 0x00]);
        assert_eq!(r.memory.lock().unwrap().len(), 2);
    }

    /// Beyond its limit the memory record drops its oldest notifications and counts them; the file keeps all.
    #[tokio::test]
    async fn the_memory_record_keeps_the_latest_within_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec.jsonl");
        let r = Recorder::start(Some(&path), true, 3).unwrap();
        for i in 0..5u8 {
            r.slot().await.push(rec(&format!("{i:02x}"), b"{}"));
        }
        {
            let mem = r.memory.lock().unwrap();
            let tokens: Vec<&str> = mem.iter().map(|r| r.token.as_str()).collect();
            assert_eq!(tokens, ["02", "03", "04"]);
            assert_eq!((mem.len(), mem.dropped()), (3, 2));
        }
        let mut written = r.written.clone();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            written.wait_for(|n| *n == 5),
        )
        .await
        .expect("every line written in time")
        .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 5);
        // A limit of 0 keeps one, as the simulator never keeps none when asked to keep the record in memory.
        let mut m = MemoryRecord::new(0);
        m.push(Arc::new(rec("aa", b"{}")));
        m.push(Arc::new(rec("bb", b"{}")));
        assert_eq!((m.len(), m.dropped()), (1, 1));
    }

    /// A sink whose writes wait until its gate opens, counting the lines it takes.
    struct Gate {
        open: Arc<(Mutex<bool>, std::sync::Condvar)>,
        lines: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (open, turn) = &*self.open;
            let mut is_open = open.lock().unwrap();
            while !*is_open {
                is_open = turn.wait(is_open).unwrap();
            }
            let n = buf.iter().filter(|b| **b == b'\n').count();
            self.lines
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Opens the gate when dropped (also when the test fails, so the writer thread ends).
    struct Opener(Arc<(Mutex<bool>, std::sync::Condvar)>);

    impl Drop for Opener {
        fn drop(&mut self) {
            *self.0.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
            self.0.1.notify_all();
        }
    }

    #[tokio::test]
    async fn a_writer_far_behind_holds_new_records_back_and_loses_none() {
        use futures_util::FutureExt;
        let open = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let lines = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let gate = Gate {
            open: open.clone(),
            lines: lines.clone(),
        };
        let r = Recorder::start_with(Some(Box::new(gate)), true, false, 1, 8).unwrap();
        let opener = Opener(open);
        // The writer thread is stuck at its gate: once its buffer and the queue are full, a record has to wait.
        let mut pushed = 0u64;
        let mut waiting = None;
        while pushed < 10_000 {
            // Unconstrained: tokio's cooperative budget would otherwise make a ready slot look pending.
            let mut slot = Box::pin(tokio::task::unconstrained(r.slot()));
            match (&mut slot).now_or_never() {
                Some(s) => {
                    s.push(rec("aa", b"{}"));
                    pushed += 1;
                }
                None => {
                    waiting = Some(slot);
                    break;
                }
            }
        }
        let waiting = waiting.expect("a record waits for room once the writer is far behind");
        drop(opener);
        tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
            .await
            .expect("room once the writer catches up")
            .push(rec("bb", b"{}"));
        let mut written = r.written.clone();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            written.wait_for(|n| *n == pushed + 1),
        )
        .await
        .expect("every record written in time")
        .unwrap();
        drop(r);
        assert_eq!(
            lines.load(std::sync::atomic::Ordering::Relaxed) as u64,
            pushed + 1
        );
    }
}
