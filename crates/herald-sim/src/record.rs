//! The delivery record: every accepted notification, exactly once, as a JSON line in `--record FILE` and/or in
//! memory for [`crate::SimHandle::record`]. The memory record is appended by the request handler itself, before
//! the answer goes out, so a client that has its answer finds the notification there; for the file, handlers
//! only push onto a channel and a dedicated thread serializes, writes through a buffered writer, and flushes
//! whenever the channel runs dry, so readers see each line promptly.
//!
//! Line format (one JSON object per line):
//! `{"protocol":"h2","token":"<lowercase hex>","topic":"…","apns_id":"…","priority":10,"expiration":null,
//!   "collapse_id":null,"push_type":"alert","payload":"<the payload>","received_ms":…}`
//! `payload` is a JSON *string* holding the exact payload bytes (decoded as UTF-8), so a test compares it byte
//! for byte with what it sent. A payload that is not UTF-8 (possible on the binary protocol) is written lossily
//! in `payload` and exactly, base64-encoded, in `payload_base64`. Binary notifications have `apns_id: null` and
//! carry `identifier` and the command `format` (0, 1, 2). Broadcasts have `"protocol":"broadcast"`, an empty
//! `token`, the bundle id as `topic`, the `apns-request-id` as `apns_id`, and `channel_id`.

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

/// The sending side, shared by every connection.
#[derive(Debug)]
pub(crate) struct Recorder {
    tx: Option<mpsc::UnboundedSender<DeliveryRecord>>,
    pub memory: Arc<Mutex<Vec<DeliveryRecord>>>,
    pub written: watch::Receiver<u64>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Records go to `memory` as they are pushed, so the memory record never trails an answer the simulator sent.
    in_memory: bool,
}

impl Recorder {
    /// `file`: append JSON lines there; `in_memory`: keep records for [`Recorder::memory`]. Neither: disabled.
    pub fn start(file: Option<&Path>, in_memory: bool) -> std::io::Result<Recorder> {
        let (count_tx, written) = watch::channel(0u64);
        let memory = Arc::new(Mutex::new(Vec::new()));
        if file.is_none() && !in_memory {
            return Ok(Recorder {
                tx: None,
                memory,
                written,
                thread: Mutex::new(None),
                in_memory,
            });
        }
        let mut out = match file {
            Some(p) => Some(BufWriter::with_capacity(
                1 << 16,
                File::options().create(true).append(true).open(p)?,
            )),
            None => None,
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<DeliveryRecord>();
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
                            if serde_json::to_writer(&mut line, &rec).is_ok() {
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

    /// Records `rec`: in memory at once (before the simulator answers), in the file by the writer thread, which
    /// also counts it for [`crate::SimHandle::wait_for_records`].
    pub fn push(&self, rec: DeliveryRecord) {
        if let Some(tx) = &self.tx {
            if self.in_memory {
                self.memory
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(rec.clone());
            }
            let _ = tx.send(rec);
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

    #[test]
    fn the_memory_record_holds_a_push_at_once() {
        let r = Recorder::start(None, true).unwrap();
        for i in 0..100 {
            r.push(rec(&format!("{i:02x}"), b"{}"));
            // No wait: the record is there as soon as push returns (the simulator answers after that).
            assert_eq!(r.memory.lock().unwrap().len(), i + 1);
        }
    }

    #[test]
    fn records_reach_file_and_memory_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec.jsonl");
        let r = Recorder::start(Some(&path), true).unwrap();
        r.push(rec("aa", br#"{"aps":{"alert":"hi \u00e9"}}"#));
        r.push(rec("bb", &[0xff, 0x00]));
        let mut written = r.written.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            written.wait_for(|n| *n == 2).await.unwrap();
        });
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
}
