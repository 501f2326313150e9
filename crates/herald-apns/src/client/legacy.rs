//! One connection to the legacy binary provider API (docs/apns-protocol.md#legacy-binary).
//!
//! Notifications are written back to back (frame format by default, enhanced selectable) and APNs answers only
//! failures, so a window remembers what was written in the last `response_timeout`: a notification leaves the
//! window as delivered when that time passes with no error packet. An error packet names one notification: the
//! ones written before it were processed and are delivered, it gets its status, and every one written after it
//! was discarded by APNs and comes back unsent (docs/apns-protocol.md#binary-error-packet). Status 10 (shutdown) names
//! the last notification processed instead. A packet naming one that already left the window, answered by silence
//! (APNs answered later than `response_timeout`), cannot take that delivery back, but identifiers rise on a
//! connection, so everything still in the window came after it and comes back unsent as after any other; one naming
//! identifier 0 or one never written says nothing of what APNs processed, and the window comes back as with a lost
//! connection. A connection lost with no error packet hands back unsent what was still inside the window at the
//! moment it was lost, once it has closed the connection with a reset; what had been answered by silence before then
//! is delivered.
//!
//! The window is swept (what the peer acknowledged noted, what silence answered delivered) before every batch is
//! taken and on a timer, also while a write waits, so a connection that always has work waiting keeps delivering
//! and its window holds only the last `response_timeout` of writes. A sweep right after herald itself stalled
//! delivers nothing by silence: an error packet that came meanwhile may still wait unread ([`super::stall`]).
//!
//! Silence proves nothing while the bytes have not reached APNs: a write counts once it has left the process (the
//! TLS layer flushed), and where the system tells (Linux), a notification's silence counts only from when APNs'
//! TCP stack acknowledged the write that carried it ([`super::acked`]). A peer that vanished without a word
//! therefore never turns a notification into a delivery: its bytes stay unacknowledged and the window comes back
//! unsent. A peer that takes nothing for `response_timeout` (a write that waits, or written bytes whose
//! acknowledgement makes no progress) makes the connection take no more work, so the pool opens another for what
//! waits; one that still takes nothing after `write_timeout` ends the connection with a TCP reset (nothing still in
//! the send queue may reach APNs after the window was handed back), as the system would at `TCP_USER_TIMEOUT`
//! ([`super::connect`]).
//!
//! The connection's state tells the pool how it went ([`ConnectionState::is_proven`], [`ConnectionState::fault`]):
//! a notification delivered, or refused for a fault of its own, proves that APNs processes what the connection
//! carries; a connection lost, a transient error packet or a stalled write is a fault, which the pool counts as a
//! failed connection attempt while the connection is young and unproven.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::acked::{Acknowledged, counted};
use super::connect::{Endpoint, connect_tls_over};
use super::stall::{self, Turns};
use super::{
    ClosedOnDrop, ConnectionError, ConnectionInfo, ConnectionState, Job, JobReceiver,
    NotSentReason, OutcomeSink, PushRequest, PushResult, Rejection, panic_message,
};
use crate::binary::{BinaryFormat, BinaryNotification, ErrorPacket, Status, encode};
use crate::push::Priority;

/// How many bytes to gather before one write.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// The longest [`BinaryOptions::write_timeout`]: as long as the system lets written bytes go unacknowledged.
pub const WRITE_TIMEOUT: Duration = super::connect::TCP_USER_TIMEOUT;

/// The shortest [`BinaryOptions::write_timeout`] [`write_timeout_for`] gives.
pub const MIN_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// The write timeout for a `delivery_response_timeout`: four of them, within [`MIN_WRITE_TIMEOUT`] and
/// [`WRITE_TIMEOUT`]. A write is pending only while the socket's send buffer is full, that is while the peer takes
/// nothing; the connection stops taking work after one response timeout of that (or of written bytes going
/// unacknowledged) and gives up after this long.
pub fn write_timeout_for(response_timeout: Duration) -> Duration {
    response_timeout
        .saturating_mul(4)
        .clamp(MIN_WRITE_TIMEOUT, WRITE_TIMEOUT)
}

/// The first notification identifier of a connection. Identifiers count up from it; before one would wrap the
/// connection takes no more work, so a fresh connection starts again here (APNs names identifier 0 in the error
/// packet of a frame it could not read).
const FIRST_IDENTIFIER: u32 = 1;

/// Settings of a binary connection.
#[derive(Clone)]
pub struct BinaryOptions {
    pub endpoint: Endpoint,
    /// rustls configuration carrying the client certificate (no ALPN).
    pub tls: Arc<rustls::ClientConfig>,
    pub format: BinaryFormat,
    pub connect_timeout: Duration,
    /// `delivery_response_timeout`: silence this long after a write means delivered. A peer that takes nothing for
    /// this long (a write pending, written bytes unacknowledged) makes the connection take no more work.
    pub response_timeout: Duration,
    /// Longest the peer may take nothing (a write of one batch pending, or written bytes unacknowledged); a
    /// connection whose peer stopped reading for this long is ended and what is still inside its window comes
    /// back unsent ([`write_timeout_for`]).
    pub write_timeout: Duration,
    /// Close after this long with an empty window and nothing taken; `None` keeps the connection open.
    pub idle_timeout: Option<Duration>,
    /// Most notifications inside the response window; above it the connection takes no more work, which bounds
    /// memory when APNs is slow.
    pub max_window: usize,
}

impl std::fmt::Debug for BinaryOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BinaryOptions")
            .field("endpoint", &self.endpoint)
            .field("format", &self.format)
            .field("response_timeout", &self.response_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_window", &self.max_window)
            .finish()
    }
}

struct Written<T> {
    identifier: u32,
    /// When its silence started counting: the write, or the moment its acknowledgement was seen.
    at: Instant,
    /// Bytes written to the socket once its write was done: acknowledged when the peer has acknowledged as many.
    /// [`NOT_WRITTEN`] while its write is under way (or failed).
    end: u64,
    acknowledged: bool,
    tag: T,
}

/// [`Written::end`] of a notification whose write has not completed: no acknowledgement reaches it.
const NOT_WRITTEN: u64 = u64::MAX;

/// What was written within the response window, oldest first.
struct Window<T> {
    entries: VecDeque<Written<T>>,
    /// How many entries at the front are known acknowledged.
    acknowledged: usize,
    /// Bytes the peer had acknowledged at the last look, and since when nothing more was while written bytes
    /// waited for it (or since when none waited).
    acked_bytes: u64,
    progress_at: Instant,
    /// The sweeps, which tell those that follow a stall of herald itself: they deliver nothing by silence, since
    /// an error packet that came meanwhile may still wait unread (docs/apns-protocol.md#herald-stalls).
    sweeps: Turns,
}

impl<T> Window<T> {
    /// An empty window, swept at least every `sweep_every`.
    fn new(sweep_every: Duration) -> Window<T> {
        let now = Instant::now();
        Window {
            entries: VecDeque::new(),
            acknowledged: 0,
            acked_bytes: 0,
            progress_at: now,
            sweeps: Turns::new(sweep_every, now),
        }
    }

    /// Whether a notification whose write is done waits for the peer's acknowledgement.
    fn awaits_acknowledgement(&self) -> bool {
        self.entries
            .get(self.acknowledged)
            .is_some_and(|w| w.end != NOT_WRITTEN)
    }

    /// How long written bytes have waited at `now` with the peer acknowledging nothing more: the peer stopped
    /// reading (or vanished), though the send buffer took the writes.
    fn unacknowledged_for(&self, now: Instant) -> Option<Duration> {
        self.awaits_acknowledgement()
            .then(|| now.saturating_duration_since(self.progress_at))
    }
}

/// What the reader half saw.
enum ReadEnd {
    Packet(ErrorPacket),
    /// EOF or an I/O error with no (complete, valid) error packet, and when it happened.
    Lost {
        why: String,
        at: Instant,
    },
}

impl ReadEnd {
    fn lost(why: impl Into<String>) -> ReadEnd {
        ReadEnd::Lost {
            why: why.into(),
            at: Instant::now(),
        }
    }
}

/// Opens a connection and starts its task, which pulls from `jobs` until it closes. Returns its live state.
pub async fn open<T: Send + 'static>(
    opts: Arc<BinaryOptions>,
    id: u64,
    jobs: JobReceiver<T>,
    sink: Arc<dyn OutcomeSink<T>>,
) -> Result<Arc<ConnectionState>, ConnectionError> {
    let mut acks = None;
    let mut socket = None;
    let wrap = |tcp: tokio::net::TcpStream| {
        socket = Some(SocketHandle::of(&tcp));
        let (tcp, reader) = counted(tcp);
        acks = reader;
        tcp
    };
    let (tls, remote) =
        connect_tls_over(&opts.endpoint, opts.tls.clone(), opts.connect_timeout, wrap).await?;
    let state = ConnectionState::new(opts.max_window);
    let info = ConnectionInfo { remote, id };
    let conn = Connection {
        opts,
        acks,
        socket,
        sink,
        state: state.clone(),
        info,
        #[cfg(test)]
        panic_at: None,
    };
    tokio::spawn(conn.run(tls, jobs, FIRST_IDENTIFIER));
    Ok(state)
}

/// What a connection's task works with.
struct Connection<T> {
    opts: Arc<BinaryOptions>,
    acks: Option<Acknowledged>,
    /// The TCP socket under the stream `run` is given, to end it with a reset even where `acks` is `None`.
    socket: Option<SocketHandle>,
    sink: Arc<dyn OutcomeSink<T>>,
    state: Arc<ConnectionState>,
    info: ConnectionInfo,
    /// Makes the task panic as it takes its `n`th job, with the job in its window (tests of what follows a panic).
    #[cfg(test)]
    panic_at: Option<u32>,
}

impl<T: Send + 'static> Connection<T> {
    /// Notes what the peer acknowledged since the last look (its silence counts from `now` on), then, with
    /// `deliver`, reports delivered every notification acknowledged and silent for the response timeout at `now`.
    fn sweep(&self, window: &mut Window<T>, now: Instant, deliver: bool) {
        match self
            .acks
            .as_ref()
            .filter(|_| window.awaits_acknowledgement())
        {
            None => window.progress_at = now,
            Some(acks) => {
                // A system that cannot tell counts everything written as acknowledged.
                let upto = acks.acknowledged().unwrap_or_else(|| acks.written());
                if upto > window.acked_bytes {
                    window.acked_bytes = upto;
                    window.progress_at = now;
                }
                for w in window.entries.range_mut(window.acknowledged..) {
                    if w.end > upto {
                        break;
                    }
                    // Acknowledged since the last look: the silence counts from now.
                    w.acknowledged = true;
                    w.at = w.at.max(now);
                    window.acknowledged += 1;
                }
            }
        }
        if !deliver || window.entries.is_empty() {
            return;
        }
        let timeout = self.opts.response_timeout;
        // Tests move the clock silence is measured by forward ([`tests::silence_skew`]).
        #[cfg(test)]
        let now = now + tests::silence_skew();
        let answered_by_silence =
            |w: &Written<T>| w.acknowledged && now.saturating_duration_since(w.at) >= timeout;
        let mut delivered_any = false;
        while window.entries.front().is_some_and(answered_by_silence) {
            if let Some(w) = window.entries.pop_front() {
                window.acknowledged = window.acknowledged.saturating_sub(1);
                self.sink.report(w.tag, delivered(w.identifier), &self.info);
                delivered_any = true;
            }
        }
        if delivered_any {
            self.state.set_proven();
        }
    }

    async fn run<S>(mut self, stream: S, jobs: JobReceiver<T>, first_identifier: u32)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        // However the task ends, the pool learns that the connection is gone.
        let _closed = ClosedOnDrop(self.state.clone());
        let opts = self.opts.clone();
        let (mut reader, mut writer) = tokio::io::split(stream);
        let (read_tx, mut read_rx) = oneshot::channel();
        let reader_task = tokio::spawn(async move {
            let mut buf = [0u8; 6];
            let end = match reader.read_exact(&mut buf).await {
                Ok(_) => match ErrorPacket::decode(&buf) {
                    Ok(p) => ReadEnd::Packet(p),
                    Err(e) => ReadEnd::lost(format!("unreadable error packet: {e}")),
                },
                Err(e) => ReadEnd::lost(e.to_string()),
            };
            let _ = read_tx.send(end);
        });
        let reader_stopped = || ReadEnd::lost("reader stopped");

        let mut next_id = first_identifier;
        let mut buf = BytesMut::with_capacity(WRITE_BATCH_BYTES + 4096);
        let tick_every =
            (opts.response_timeout / 4).clamp(Duration::from_millis(5), Duration::from_millis(250));
        let mut window = Window::new(tick_every);
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_activity = Instant::now();
        let mut taking = true;

        // A panic in the loop (a fault of herald or of a library it uses) is caught where the task polls it, one
        // catch per poll, and the connection ends as one lost without an error packet: the window stays here, and
        // comes back as after such a loss.
        #[cfg(test)]
        let mut taken = 0u32;
        let looped = AssertUnwindSafe(async {
            loop {
                    // An error packet or the end of the connection settles the window as it stands.
                    match read_rx.try_recv() {
                        Ok(got) => break Some(got),
                        Err(oneshot::error::TryRecvError::Closed) => break Some(reader_stopped()),
                        Err(oneshot::error::TryRecvError::Empty) => {}
                    }
                    // Swept before every batch, not only on the timer: with work always waiting the timer's turn would
                    // never come, and nothing would leave the window.
                    let now = Instant::now();
                    let resumed = window.sweeps.after_stall(now);
                    self.sweep(&mut window, now, !resumed);
                    // Written bytes the peer does not acknowledge: it stopped reading, as with a write that waits.
                    if let Some(waited) = window.unacknowledged_for(now) {
                        if waited >= opts.write_timeout {
                            break Some(ReadEnd::Lost {
                                why: format!(
                                    "written bytes went unacknowledged for over {} ms; the peer stopped reading",
                                    opts.write_timeout.as_millis()
                                ),
                                at: now,
                            });
                        }
                        if waited >= opts.response_timeout {
                            self.stop_taking_stalled(&mut taking, "written bytes went unacknowledged");
                        }
                    }
                    if self.state.is_draining() {
                        taking = false;
                    }
                    if window.entries.is_empty() {
                        let idle = opts
                            .idle_timeout
                            .is_some_and(|idle| now.saturating_duration_since(last_activity) >= idle);
                        if !taking || idle {
                            break None;
                        }
                    }
                    self.state.set_in_flight(window.entries.len());
                    tokio::select! {
                        biased;
                        got = &mut read_rx => break Some(got.unwrap_or_else(|_| reader_stopped())),
                        job = jobs.recv(), if taking && window.entries.len() < opts.max_window => {
                            let Ok(job) = job else { taking = false; continue };
                            let batch_start = window.entries.len();
                            let mut job = Some(job);
                            // Gather what is already queued into one write.
                            while let Some(j) = job.take() {
                                let Job { request, tag } = j;
                                // In the window from the start, where a panic leaves it to be handed back; `at` and `end`
                                // are set once the write is done (below).
                                window.entries.push_back(Written {
                                    identifier: next_id,
                                    at: last_activity,
                                    end: NOT_WRITTEN,
                                    acknowledged: false,
                                    tag,
                                });
                                #[cfg(test)]
                                {
                                    taken += 1;
                                    if self.panic_at == Some(taken) {
                                        panic!("a test made the connection's task panic");
                                    }
                                }
                                match encode_request(&opts, &mut buf, next_id, &request) {
                                    Ok(()) => next_id = next_id.wrapping_add(1),
                                    Err(e) => {
                                        tracing::warn!(conn = self.info.id, error = %e, "notification cannot be encoded");
                                        if let Some(w) = window.entries.pop_back() {
                                            let rejected =
                                                Rejection::Binary { status: Status::ProtocolError, identifier: None };
                                            self.sink.report(w.tag, PushResult::Rejected(rejected), &self.info);
                                        }
                                    }
                                }
                                if next_id == u32::MAX {
                                    // Identifiers would wrap (past 0, which APNs names for a frame it could not read): this
                                    // connection takes no more, and a fresh one starts over.
                                    taking = false;
                                    self.state.drain();
                                    break;
                                }
                                if buf.len() < WRITE_BATCH_BYTES && window.entries.len() < opts.max_window {
                                    job = jobs.try_recv().ok();
                                }
                            }
                            // The batch is the window's tail: while its write waits, the sweep may deliver earlier
                            // notifications from the front (never one of the batch, which is not acknowledged before its
                            // write), so the batch is found from the back afterwards, not at `batch_start`.
                            let batch_len = window.entries.len() - batch_start;
                            if let Some(lost) = self.write_batch(&mut writer, &buf, &mut read_rx, &mut window, &mut tick, &mut taking).await {
                                break Some(lost);
                            }
                            buf.clear();
                            // The response window counts from when the notifications were written, not from when they were
                            // taken: a write that waited on a slow reader must not make them look answered by silence.
                            last_activity = Instant::now();
                            let end = self.acks.as_ref().map_or(0, Acknowledged::written);
                            let batch_start = window.entries.len().saturating_sub(batch_len);
                            for w in window.entries.range_mut(batch_start..) {
                                w.at = last_activity;
                                w.end = end;
                                // Without a way to ask, the write is all the proof there is.
                                w.acknowledged = self.acks.is_none();
                            }
                        }
                        _ = tick.tick() => {}
                    }
            }
        })
        .catch_unwind()
        .await;
        let end: Option<ReadEnd> = match looped {
            Ok(end) => end,
            Err(panic) => {
                let message = panic_message(&*panic);
                tracing::error!(conn = self.info.id, host = %opts.endpoint.host, remote = %self.info.remote,
                    in_window = window.entries.len(), "the connection's task panicked: {message}; the connection \
                    closes as if lost, and its window is handed back as on a lost connection");
                self.state
                    .set_fault(|| format!("the connection's task panicked: {message}"));
                Some(ReadEnd::lost(format!(
                    "the connection's task panicked: {message}"
                )))
            }
        };

        match end {
            Some(ReadEnd::Packet(packet)) => {
                self.settle_error_packet(packet, &mut window, first_identifier..next_id)
            }
            Some(ReadEnd::Lost { why, at }) => {
                // What silence had answered by the time the connection was lost is delivered; the rest of the
                // window, still waiting for its answer (or for APNs to acknowledge it), comes back unsent.
                // The reader took everything up to the loss, so silence until then is an answer, stall or not.
                self.sweep(&mut window, at, true);
                self.state.set_fault(|| {
                    format!("the connection was lost without an error packet: {why}")
                });
                if !window.entries.is_empty() {
                    tracing::info!(conn = self.info.id, remote = %self.info.remote, in_window = window.entries.len(),
                        "connection lost without an error packet ({why}); requeueing the window");
                }
                // The rest of the window is about to go out again, on another connection: first this one ends with
                // a reset, which discards what still waits in its send queue. The order matters. Until the socket
                // is closed the system keeps sending that queue, and a reset set only after the hand-back (or
                // never, without a duplicate of the socket to set it through) would let a notification reach APNs
                // on this connection after the pool had sent it again on another: a duplicate on the device. So the
                // reset is set on the socket itself (and through the duplicate), and every handle on the socket is
                // closed (the reader's half, the writer's half, the duplicate), before anything is reported.
                self.reset_on_close();
                reader_task.abort();
                let _ = reader_task.await;
                drop(writer);
                self.acks = None;
                self.hand_back(&mut window, NotSentReason::ConnectionLost);
                self.state.set_in_flight(0);
                self.state.set_closed();
                return;
            }
            None => {}
        }
        // An error packet settled the whole window; the loop ends without one only with the window empty.
        debug_assert!(window.entries.is_empty());
        self.state.set_in_flight(0);
        self.state.set_closed();
        // A peer that stopped reading would keep a close_notify waiting as long as the batch before it.
        let _ = tokio::time::timeout(opts.response_timeout, writer.shutdown()).await;
        reader_task.abort();
    }

    /// Reports what is left in the window unsent, for `why`.
    fn hand_back(&self, window: &mut Window<T>, why: NotSentReason) {
        for w in window.entries.drain(..) {
            self.sink
                .report(w.tag, PushResult::NotSent(why), &self.info);
        }
        window.acknowledged = 0;
    }

    /// Makes the connection end with a TCP reset when its socket closes (`SO_LINGER` 0), so that nothing still in
    /// its send queue goes out after its notifications were handed back: set on the socket under the stream, and
    /// through the duplicate the acknowledgements are read from (where there is one, it shares the socket).
    fn reset_on_close(&self) {
        if let Some(socket) = self.socket {
            // SAFETY: `socket` is the socket under the stream `run` was given, and this is called only from `run`
            // before either half of that stream is dropped (the writer's it holds, the reader's goes with the
            // reader's task, aborted after this): the descriptor is open and still names that socket.
            if let Err(e) = unsafe { socket.reset_on_close() } {
                tracing::debug!(conn = self.info.id, error = %e, "SO_LINGER not set on the socket");
            }
        }
        if let Some(acks) = &self.acks {
            acks.abort();
        }
    }

    /// Writes one batch, flushed (else the TLS layer may keep its tail, and silence would "deliver" it), sweeping
    /// the window meanwhile. A write still pending after the response timeout (the peer stopped reading) makes the
    /// connection take no more work (a fault: the pool opens another for what waits); one pending after the write
    /// timeout, or failing, ends the connection: returns how, with the error packet the server may have written
    /// before closing.
    async fn write_batch<W>(
        &self,
        writer: &mut W,
        buf: &[u8],
        read_rx: &mut oneshot::Receiver<ReadEnd>,
        window: &mut Window<T>,
        tick: &mut tokio::time::Interval,
        taking: &mut bool,
    ) -> Option<ReadEnd>
    where
        W: tokio::io::AsyncWrite + Unpin,
    {
        let opts = &self.opts;
        let started = Instant::now();
        let mut stalled_at = started + opts.response_timeout;
        let mut give_up_at = started + opts.write_timeout;
        // Each deadline is looked at once more before it counts: the peer may have taken the write while herald
        // itself stalled, and the runtime not have seen the socket yet (docs/apns-protocol.md#herald-stalls).
        let (mut stalled_looked, mut give_up_looked) = (false, false);
        let written = async {
            writer.write_all(buf).await?;
            writer.flush().await
        };
        tokio::pin!(written);
        let mut stalled = false;
        let failed = loop {
            tokio::select! {
                biased;
                got = &mut *read_rx => {
                    return Some(got.unwrap_or_else(|_| ReadEnd::lost("reader stopped")));
                }
                r = &mut written => match r {
                    Ok(()) => return None,
                    Err(e) => break e,
                },
                _ = tokio::time::sleep_until(give_up_at) => {
                    if !give_up_looked {
                        give_up_looked = true;
                        give_up_at = stall::look_again_until(give_up_at);
                        continue;
                    }
                    break std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("a write took over {} ms; the peer stopped reading", opts.write_timeout.as_millis()),
                    );
                }
                _ = tokio::time::sleep_until(stalled_at), if !stalled => {
                    if !stalled_looked {
                        stalled_looked = true;
                        stalled_at = stall::look_again_until(stalled_at);
                        continue;
                    }
                    stalled = true;
                    self.stop_taking_stalled(taking, "a write waited");
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    let resumed = window.sweeps.after_stall(now);
                    self.sweep(window, now, !resumed);
                }
            }
        };
        let at = Instant::now();
        tracing::debug!(conn = self.info.id, error = %failed, "write failed");
        // The server may have written an error packet before closing: give the reader a moment.
        Some(
            match tokio::time::timeout(opts.response_timeout, &mut *read_rx).await {
                Ok(Ok(ReadEnd::Packet(p))) => ReadEnd::Packet(p),
                _ => ReadEnd::Lost {
                    why: failed.to_string(),
                    at,
                },
            },
        )
    }

    /// The peer has taken nothing for the response timeout (`what` waited): the connection takes no more work, so
    /// the pool, which does not count a draining connection against its limit, opens another for what waits; a
    /// fault, which counts as a failed connection attempt while the connection is young and unproven.
    fn stop_taking_stalled(&self, taking: &mut bool, what: &str) {
        if !*taking && self.state.is_draining() && self.state.fault().is_some() {
            return;
        }
        *taking = false;
        self.state.set_fault(|| {
            format!(
                "{what} over {} ms; the peer stopped reading",
                self.opts.response_timeout.as_millis()
            )
        });
        self.state.drain();
        tracing::debug!(conn = self.info.id, "{what}; taking no more work");
    }

    /// Applies docs/apns-protocol.md#binary-error-packet to the window: before the named notification delivered, it
    /// failed, after it unsent. `written` are the identifiers this connection wrote so far.
    fn settle_error_packet(
        &self,
        packet: ErrorPacket,
        window: &mut Window<T>,
        written: std::ops::Range<u32>,
    ) {
        let shutdown = packet.status == Status::Shutdown;
        let transient = Rejection::Binary {
            status: packet.status,
            identifier: None,
        }
        .class()
        .is_retryable();
        let named = || {
            format!(
                "error packet {}@{} for notification {}",
                packet.status.code(),
                packet.status.apple_text(),
                packet.identifier
            )
        };
        let Some(pos) = window
            .entries
            .iter()
            .position(|w| w.identifier == packet.identifier)
        else {
            // Identifiers rise on a connection: one this connection wrote before everything still in the window
            // left it already, answered by silence, and what is still in the window was written after it: APNs
            // discarded that, so it comes back unsent, as after any rejected notification, and not as a loss.
            let answered_earlier = written.contains(&packet.identifier)
                && window
                    .entries
                    .front()
                    .is_none_or(|w| packet.identifier < w.identifier);
            if answered_earlier {
                let late = LateAnswer::of(packet, window, written.end);
                if shutdown && late.lost == 0 {
                    // Status 10 names the last notification processed: delivered indeed.
                    tracing::info!(
                        conn = self.info.id,
                        remote = %self.info.remote,
                        identifier = packet.identifier,
                        requeued = late.requeued,
                        "shutdown after notification {}, answered by silence before; requeueing what followed it",
                        packet.identifier
                    );
                    self.state.set_fault(named);
                } else {
                    // APNs refused a notification (or, with status 10, stopped after it) after its silence, and that
                    // of what followed it, had been taken for deliveries: that cannot be taken back, but the
                    // operator must learn what was lost and that the response timeout is too short.
                    tracing::warn!(
                        conn = self.info.id,
                        remote = %self.info.remote,
                        identifier = packet.identifier,
                        status = packet.status.code(),
                        response_timeout_ms = self.opts.response_timeout.as_millis() as u64,
                        lost = late.lost,
                        requeued = late.requeued,
                        "{}",
                        late.warning(self.opts.response_timeout)
                    );
                    if shutdown {
                        self.state.set_fault(named);
                    } else if transient {
                        self.state
                            .set_fault(|| format!("{}, already answered by silence", named()));
                    }
                }
                self.hand_back(window, NotSentReason::AfterRejected);
            } else {
                // Identifier 0 (a frame APNs could not read) or one this connection never wrote: which
                // notifications APNs processed is unknown, so the window comes back as with a lost connection.
                tracing::warn!(
                    conn = self.info.id,
                    remote = %self.info.remote,
                    identifier = packet.identifier,
                    status = packet.status.code(),
                    "error packet names a notification this connection did not write; requeueing the window"
                );
                self.state
                    .set_fault(|| format!("{}, not written on this connection", named()));
                self.hand_back(window, NotSentReason::ConnectionLost);
            }
            return;
        };
        // With status 10 the identifier is the last notification APNs processed
        // (docs/apns-protocol.md#binary-error-packet).
        let processed = if shutdown { pos + 1 } else { pos };
        if processed > 0 {
            self.state.set_proven();
        }
        for w in window.entries.drain(..processed) {
            self.sink.report(w.tag, delivered(w.identifier), &self.info);
        }
        if shutdown {
            self.state.set_fault(named);
        } else if let Some(w) = window.entries.pop_front() {
            let rejection = Rejection::Binary {
                status: packet.status,
                identifier: Some(w.identifier),
            };
            // A refusal of the notification itself shows that APNs processes what the connection carries; a
            // transient status is the server's.
            if transient {
                self.state.set_fault(named);
            } else {
                self.state.set_proven();
            }
            self.sink
                .report(w.tag, PushResult::Rejected(rejection), &self.info);
        }
        self.hand_back(window, NotSentReason::AfterRejected);
    }
}

/// An error packet naming a notification that silence had already answered (it left the window reported
/// delivered): APNs answered later than `delivery_response_timeout` (docs/apns-protocol.md#binary-error-packet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LateAnswer {
    packet: ErrorPacket,
    /// Notifications written after the named one that had left the window too, reported delivered by silence:
    /// APNs discarded them with the rest of the connection, so they are lost.
    lost: u64,
    /// Notifications written after it still in the window: sent again.
    requeued: usize,
}

impl LateAnswer {
    /// The late answer `packet` for the connection whose `window` is as it stands, `next` being the identifier it
    /// would have written next. Identifiers rise by one per notification written on a connection, and a live
    /// connection reports a notification delivered only by its leaving the window in silence, so those between the
    /// named one and the first still in the window (or `next`) are the ones already reported delivered.
    fn of<T>(packet: ErrorPacket, window: &Window<T>, next: u32) -> LateAnswer {
        let first_waiting = window.entries.front().map_or(next, |w| w.identifier);
        LateAnswer {
            packet,
            lost: u64::from(
                first_waiting
                    .saturating_sub(packet.identifier)
                    .saturating_sub(1),
            ),
            requeued: window.entries.len(),
        }
    }

    /// The operator's warning: what the packet names, what it cost, and what to do.
    fn warning(&self, response_timeout: Duration) -> String {
        let p = &self.packet;
        let timeout = response_timeout.as_millis();
        let named = if p.status == Status::Shutdown {
            format!(
                "error packet {}@{} says APNs stopped after notification {}, whose silence ({timeout} ms) had \
                 already been reported as a delivery",
                p.status.code(),
                p.status.apple_text(),
                p.identifier
            )
        } else {
            format!(
                "error packet {}@{} names notification {}, already reported delivered after {timeout} ms of \
                 silence: delivery_response_timeout is shorter than APNs takes to answer, so refusals are reported \
                 as deliveries",
                p.status.code(),
                p.status.apple_text(),
                p.identifier
            )
        };
        format!(
            "{named}. APNs discarded everything written after it on this connection: {} already reported delivered \
             the same way {} lost (not sent again), and {} still waiting for {} answer {} sent again. Set \
             delivery_response_timeout longer than the gateway's round trip and its stalls",
            self.lost,
            if self.lost == 1 { "is" } else { "are" },
            self.requeued,
            if self.requeued == 1 { "its" } else { "their" },
            if self.requeued == 1 { "is" } else { "are" },
        )
    }
}

/// The TCP socket under a connection's stream, by its descriptor: what ends the connection with a reset where the
/// socket could not be duplicated ([`Acknowledged`] is `None`).
#[derive(Clone, Copy)]
struct SocketHandle {
    #[cfg(unix)]
    fd: std::os::fd::RawFd,
}

impl SocketHandle {
    fn of(tcp: &tokio::net::TcpStream) -> SocketHandle {
        #[cfg(not(unix))]
        let _ = tcp;
        SocketHandle {
            #[cfg(unix)]
            fd: std::os::fd::AsRawFd::as_raw_fd(tcp),
        }
    }

    /// Sets `SO_LINGER` 0: the socket ends with a reset when it closes, discarding what waits in its send queue.
    ///
    /// # Safety
    ///
    /// The stream this handle was taken from must still be open (not dropped), so that the descriptor names its
    /// socket.
    unsafe fn reset_on_close(self) -> std::io::Result<()> {
        #[cfg(unix)]
        {
            // SAFETY: the caller keeps the stream, and so the descriptor, open for the length of this call.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd) };
            socket2::SockRef::from(&fd).set_linger(Some(Duration::ZERO))
        }
        #[cfg(not(unix))]
        {
            Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "no descriptor of the socket on this system",
            ))
        }
    }
}

fn encode_request(
    opts: &BinaryOptions,
    buf: &mut BytesMut,
    identifier: u32,
    r: &PushRequest,
) -> Result<(), String> {
    let notification = BinaryNotification {
        identifier,
        expiry: r.expiration.unwrap_or(0),
        priority: r.priority.unwrap_or(Priority::Immediate).as_u8(),
        token: r.token.as_bytes().to_vec(),
        payload: r.payload.clone(),
    };
    encode(&notification, opts.format, buf).map_err(|e| e.to_string())
}

/// The binary protocol's transaction id is the notification identifier.
fn delivered(identifier: u32) -> PushResult {
    PushResult::Delivered {
        transaction_id: Some(identifier.to_string()),
        unique_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binary::{ErrorPacket, Status};
    use crate::client::PushRequest;
    #[cfg(target_os = "linux")]
    use crate::client::acked::tests::tight_pair;
    use crate::client::test_sink::Results;
    use crate::identity::{RootSource, client_config};
    use crate::token_hex::DeviceToken;
    use bytes::Bytes;

    thread_local! {
        /// How far ahead of the real clock a sweep on this thread measures silence: a test moves it instead of
        /// waiting out a response window (a `#[tokio::test]` runs its runtime, so every connection task it starts,
        /// on its own thread).
        static SILENCE_SKEW: std::cell::Cell<Duration> = const { std::cell::Cell::new(Duration::ZERO) };
    }

    /// [`SILENCE_SKEW`] on this thread.
    pub(super) fn silence_skew() -> Duration {
        SILENCE_SKEW.with(std::cell::Cell::get)
    }

    fn job(tag: u32) -> Job<u32> {
        Job {
            request: PushRequest {
                token: DeviceToken::from_bytes(vec![tag as u8; 32]).unwrap(),
                topic: None,
                push_type: None,
                priority: None,
                expiration: None,
                collapse_id: None,
                apns_id: None,
                payload: Bytes::from(format!("{{\"aps\":{{\"alert\":\"{}\"}}}}", "x".repeat(100))),
            },
            tag,
        }
    }

    /// Options with a 200 ms response window.
    fn options(write_timeout: Duration) -> Arc<BinaryOptions> {
        options_window(write_timeout, Duration::from_millis(200))
    }

    /// Options with a response window of `window` (a test whose error packet must come within it after a wait
    /// of its own: a loaded machine's stall must not make that wait the longer).
    fn options_window(write_timeout: Duration, window: Duration) -> Arc<BinaryOptions> {
        Arc::new(BinaryOptions {
            endpoint: Endpoint::new("127.0.0.1", 2195),
            tls: client_config(None, RootSource::NoVerify, false).unwrap(),
            format: BinaryFormat::Frame,
            connect_timeout: Duration::from_secs(1),
            response_timeout: window,
            write_timeout,
            idle_timeout: None,
            max_window: 10_000,
        })
    }

    /// The size of one test notification on the wire.
    fn encoded_len() -> usize {
        let mut b = BytesMut::new();
        encode_request(&options(WRITE_TIMEOUT), &mut b, 1, &job(1).request).unwrap();
        b.len()
    }

    /// A connection under test: the queue it pulls from, what it reported, its state and its task.
    struct Started {
        tx: async_channel::Sender<Job<u32>>,
        results: Arc<Results>,
        state: Arc<ConnectionState>,
        conn: tokio::task::JoinHandle<()>,
    }

    /// Runs a connection over `stream` with notifications 1..=`jobs` waiting for it.
    fn start<S>(
        stream: S,
        acks: Option<Acknowledged>,
        jobs: u32,
        write_timeout: Duration,
    ) -> (
        async_channel::Sender<Job<u32>>,
        Arc<Results>,
        tokio::task::JoinHandle<()>,
    )
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let s = start_with(stream, acks, jobs, options(write_timeout), FIRST_IDENTIFIER);
        (s.tx, s.results, s.conn)
    }

    /// [`start`] with `opts`, numbering notifications from `first_identifier`.
    fn start_with<S>(
        stream: S,
        acks: Option<Acknowledged>,
        jobs: u32,
        opts: Arc<BinaryOptions>,
        first_identifier: u32,
    ) -> Started
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let (tx, rx) = async_channel::unbounded();
        for tag in 1..=jobs {
            tx.try_send(job(tag)).unwrap();
        }
        let results = Arc::new(Results::default());
        let state = ConnectionState::new(opts.max_window);
        let connection = Connection {
            opts,
            acks,
            socket: None,
            sink: results.clone(),
            state: state.clone(),
            info: ConnectionInfo {
                remote: "127.0.0.1:2195".parse().unwrap(),
                id: 1,
            },
            panic_at: None,
        };
        let conn = tokio::spawn(connection.run(stream, rx, first_identifier));
        Started {
            tx,
            results,
            state,
            conn,
        }
    }

    /// Reads from `server` until `len` bytes came (failing after 20 s).
    async fn read_at_least<R: tokio::io::AsyncRead + Unpin>(server: &mut R, len: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while got.len() < len {
            let n =
                tokio::time::timeout_at(deadline, tokio::io::AsyncReadExt::read(server, &mut buf))
                    .await
                    .unwrap_or_else(|_| panic!("only {} of {len} bytes came", got.len()))
                    .unwrap();
            assert!(n > 0, "the connection closed after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    /// The response window counts from when a notification was written: a write held up by a server reading
    /// slowly (longer than the response timeout) does not make the notifications it carried count as delivered
    /// before the server could answer them (docs/apns-protocol.md#binary-error-packet: silence for the response
    /// time means delivered).
    #[tokio::test]
    async fn a_write_held_up_by_a_slow_reader_does_not_count_as_answered_silence() {
        let (client, mut server) = tokio::io::duplex(64);
        let window = Duration::from_secs(2);
        let Started {
            tx, results, conn, ..
        } = start_with(
            client,
            None,
            3,
            options_window(WRITE_TIMEOUT, window),
            FIRST_IDENTIFIER,
        );
        // The server reads nothing for one and a half response times (the write waits meanwhile), then reads what
        // was written and, 50 ms later (well within the response time), refuses the first notification.
        tokio::time::sleep(window * 3 / 2).await;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < 3 * 150 {
            let n = tokio::io::AsyncReadExt::read(&mut server, &mut buf)
                .await
                .unwrap();
            assert!(n > 0, "the connection closed early");
            got.extend_from_slice(&buf[..n]);
            if tokio::time::timeout(Duration::from_millis(20), std::future::pending::<()>())
                .await
                .is_err()
                && got.len() >= 3 * 150
            {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let packet = ErrorPacket {
            status: Status::InvalidToken,
            identifier: 1,
        };
        tokio::io::AsyncWriteExt::write_all(&mut server, &packet.encode())
            .await
            .unwrap();
        let mut reported = results.wait_for(3).await;
        reported.sort_by_key(|(tag, _)| *tag);
        assert_eq!(
            reported,
            vec![
                (
                    1,
                    PushResult::Rejected(Rejection::Binary {
                        status: Status::InvalidToken,
                        identifier: Some(1),
                    })
                ),
                (2, PushResult::NotSent(NotSentReason::AfterRejected)),
                (3, PushResult::NotSent(NotSentReason::AfterRejected)),
            ]
        );
        drop(tx);
        conn.await.unwrap();
    }

    /// A batch leaves the process before its silence counts: a stream that holds written bytes until it is flushed
    /// (as TLS does with the tail of a write the socket could not take) still gets every notification to the peer,
    /// and none is reported delivered while it sits in the buffer (docs/apns-protocol.md#binary-error-packet).
    #[tokio::test]
    async fn a_batch_is_flushed_before_its_silence_counts() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let buffered = tokio::io::BufWriter::with_capacity(1 << 20, client);
        let (_tx, results, _conn) = start(buffered, None, 3, WRITE_TIMEOUT);
        let one = encoded_len();
        read_at_least(&mut server, 3 * one).await;
        let reported = results.wait_for(3).await;
        assert!(
            reported
                .iter()
                .all(|(_, r)| matches!(r, PushResult::Delivered { .. })),
            "{reported:?}"
        );
    }

    /// A write the peer does not take within `write_timeout` ends the connection and hands its window back unsent:
    /// a peer that stopped reading never turns the notifications into silent deliveries.
    #[tokio::test]
    async fn a_write_the_peer_never_takes_ends_the_connection_with_the_window_unsent() {
        let (client, _server) = tokio::io::duplex(64);
        let (_tx, results, conn) = start(client, None, 3, Duration::from_millis(300));
        let reported = results.wait_for(3).await;
        assert!(
            reported
                .iter()
                .all(|(_, r)| *r == PushResult::NotSent(NotSentReason::ConnectionLost)),
            "{reported:?}"
        );
        tokio::time::timeout(Duration::from_secs(20), conn)
            .await
            .unwrap()
            .unwrap();
    }

    /// Silence counts only once the peer's TCP stack acknowledged what was written: notifications sitting in the
    /// socket's send queue of a peer that does not read (a full receive window, as with a vanished peer whose
    /// bytes are never acknowledged) are not reported delivered, however long the silence; once the peer reads,
    /// its error packet settles them as usual (docs/apns-protocol.md#binary-error-packet).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn silence_counts_only_after_the_peer_acknowledged_the_bytes() {
        // The server does not read; the client's send buffer holds everything.
        let (client, mut server) = tight_pair().await;
        let (client, acks) = counted(client);
        let jobs = 200;
        let window = Duration::from_secs(2);
        let Started {
            tx: _tx,
            results,
            conn,
            ..
        } = start_with(
            client,
            acks,
            jobs,
            options_window(WRITE_TIMEOUT, window),
            FIRST_IDENTIFIER,
        );
        let one = encoded_len();
        // One and a half response windows of silence with the bytes unacknowledged: nothing is delivered.
        tokio::time::sleep(window * 3 / 2).await;
        assert_eq!(
            results.wait_for(0).await,
            vec![],
            "silence before the bytes were acknowledged"
        );
        // The server reads everything, then refuses the first notification within the response window.
        read_at_least(&mut server, jobs as usize * one).await;
        let packet = ErrorPacket {
            status: Status::InvalidToken,
            identifier: 1,
        };
        tokio::io::AsyncWriteExt::write_all(&mut server, &packet.encode())
            .await
            .unwrap();
        let reported = results.wait_for(jobs as usize).await;
        assert_eq!(
            reported[0],
            (
                1,
                PushResult::Rejected(Rejection::Binary {
                    status: Status::InvalidToken,
                    identifier: Some(1),
                })
            )
        );
        assert!(
            reported[1..]
                .iter()
                .all(|(_, r)| *r == PushResult::NotSent(NotSentReason::AfterRejected)),
            "{reported:?}"
        );
        tokio::time::timeout(Duration::from_secs(20), conn)
            .await
            .unwrap()
            .unwrap();
    }

    /// Acknowledgement is tracked per write: a notification the peer took is delivered by silence while later
    /// writes still wait behind the peer's full receive window, so a busy connection keeps delivering.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn an_acknowledged_write_is_delivered_while_later_ones_wait() {
        let (client, mut server) = tight_pair().await;
        let (client, acks) = counted(client);
        let (tx, results, _conn) = start(client, acks, 1, WRITE_TIMEOUT);
        let one = encoded_len();
        read_at_least(&mut server, one).await;
        for tag in 2..=200 {
            tx.send(job(tag)).await.unwrap();
        }
        // The first is delivered; the rest, unread by the server, are not.
        let reported = results.wait_for(1).await;
        assert_eq!(reported, vec![(1, delivered(1))]);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            results.wait_for(1).await.len(),
            1,
            "unacknowledged notifications delivered"
        );
        read_at_least(&mut server, 199 * one).await;
        let reported = results.wait_for(200).await;
        assert!(
            reported
                .iter()
                .all(|(_, r)| matches!(r, PushResult::Delivered { .. })),
            "{reported:?}"
        );
    }

    /// A batch whose write waits on a peer that is not reading, while the sweep delivers earlier notifications by
    /// silence from the window's front, is marked written whole once the write is done: found from the window's
    /// back, not at the index it started at. With that stale index, part of the batch stayed unwritten for good
    /// (`earlier` ≤ `batch`: the connection stuck behind it) or, with more delivered meanwhile than the batch held,
    /// the task panicked and handed back a window the gateway had taken, to be sent again
    /// (docs/apns-protocol.md#binary-error-packet: what silence answered is delivered).
    async fn a_batch_written_while_silence_delivers_earlier_ones(earlier: u32, batch: u32) {
        let one = encoded_len();
        // Room for the earlier notifications only: the batch's write waits until the server reads.
        let (client, mut server) = tokio::io::duplex(earlier as usize * one);
        let s = start_with(
            client,
            None,
            earlier,
            options(WRITE_TIMEOUT),
            FIRST_IDENTIFIER,
        );
        // Back at the top of its loop after their write, the connection counts them in flight.
        wait_until("the earlier notifications written", || {
            s.state.in_flight() == earlier as usize
        })
        .await;
        // Queued together (the test's runtime runs the connection only when this task waits): one batch.
        for tag in earlier + 1..=earlier + batch {
            s.tx.try_send(job(tag)).unwrap();
        }
        let reported = s.results.wait_for(earlier as usize).await;
        assert!(
            reported
                .iter()
                .all(|(tag, r)| *tag <= earlier && matches!(r, PushResult::Delivered { .. })),
            "{reported:?}"
        );
        // Everything written reaches the server once it reads; then silence delivers the batch too.
        read_at_least(&mut server, (earlier + batch) as usize * one).await;
        let mut reported = s.results.wait_for((earlier + batch) as usize).await;
        reported.sort_by_key(|(tag, _)| *tag);
        let tags: Vec<u32> = reported.iter().map(|(tag, _)| *tag).collect();
        assert_eq!(tags, (1..=earlier + batch).collect::<Vec<_>>());
        assert!(
            reported
                .iter()
                .all(|(_, r)| matches!(r, PushResult::Delivered { .. })),
            "{reported:?}"
        );
    }

    #[tokio::test]
    async fn a_batch_smaller_than_what_silence_delivered_during_its_write_is_delivered() {
        a_batch_written_while_silence_delivers_earlier_ones(3, 1).await;
    }

    #[tokio::test]
    async fn a_batch_larger_than_what_silence_delivered_during_its_write_is_delivered() {
        a_batch_written_while_silence_delivers_earlier_ones(1, 3).await;
    }

    /// A loopback TCP connection with the system's usual buffers.
    async fn loopback_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    /// Waits until `done` holds (failing after 20 s).
    async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The identifiers of the notifications in `bytes` (frame format).
    fn identifiers(bytes: &[u8]) -> Vec<u32> {
        let mut buf = BytesMut::from(bytes);
        let mut decoder = crate::binary::NotificationDecoder::default();
        let mut ids = Vec::new();
        while let Some(d) = decoder.decode(&mut buf).unwrap() {
            ids.push(d.notification.identifier);
        }
        assert!(
            buf.is_empty(),
            "{} bytes of a cut-off notification",
            buf.len()
        );
        ids
    }

    /// A connection that always has work waiting still delivers by silence: the window is swept before every
    /// batch, not only when the queue leaves the timer a turn, so it holds only the last response time of writes;
    /// and when the peer then drops the connection without an error packet, what silence had answered stays
    /// delivered and only the rest of the window comes back unsent (docs/apns-protocol.md#binary-error-packet).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn silence_delivers_under_a_constant_backlog_and_a_lost_connection_requeues_only_the_window()
     {
        let (client, mut server) = loopback_pair().await;
        let (client, acks) = counted(client);
        let mut opts = (*options(WRITE_TIMEOUT)).clone();
        // No window limit to fall back on: only the sweep can empty it.
        opts.max_window = usize::MAX;
        let response_timeout = opts.response_timeout;
        let s = start_with(client, acks, 0, Arc::new(opts), FIRST_IDENTIFIER);
        // The server reads everything and answers nothing, until told to drop the connection.
        let (drop_tx, mut drop_rx) = tokio::sync::oneshot::channel::<()>();
        let server_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                tokio::select! {
                    _ = &mut drop_rx => return,
                    n = tokio::io::AsyncReadExt::read(&mut server, &mut buf) => {
                        if n.map_or(true, |n| n == 0) {
                            return;
                        }
                    }
                }
            }
        });
        // The queue never runs dry for three response times, and until deliveries came.
        let template = job(1).request;
        let started = tokio::time::Instant::now();
        let deadline = started + Duration::from_secs(20);
        let mut sent = 0u32;
        let mut next_look = started;
        let mut peak_in_flight = 0;
        let delivered_under_load = loop {
            while s.tx.len() < 20_000 {
                sent += 1;
                s.tx.try_send(Job {
                    request: template.clone(),
                    tag: sent,
                })
                .unwrap();
            }
            peak_in_flight = peak_in_flight.max(s.state.in_flight());
            let now = tokio::time::Instant::now();
            if now >= next_look {
                next_look = now + Duration::from_millis(50);
                let delivered = s.results.wait_for(0).await.len();
                if now - started >= 3 * response_timeout && delivered > 0 {
                    break delivered;
                }
            }
            assert!(
                now < deadline,
                "nothing delivered while the queue never ran dry ({sent} queued, {} in flight)",
                s.state.in_flight()
            );
            tokio::task::yield_now().await;
        };
        let _ = drop_tx.send(());
        server_task.await.unwrap();
        s.tx.close();
        tokio::time::timeout(Duration::from_secs(20), s.conn)
            .await
            .unwrap()
            .unwrap();
        let taken = sent as usize - s.tx.len();
        let reported = s.results.wait_for(taken).await;
        assert_eq!(reported.len(), taken, "each notification reported once");
        let mut tags: Vec<u32> = reported.iter().map(|(t, _)| *t).collect();
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), taken, "a notification reported twice");
        // The first batches were answered by silence long before the connection was lost.
        let first = reported.iter().find(|(t, _)| *t == 1).unwrap();
        assert_eq!(first.1, delivered(1));
        let lost = reported
            .iter()
            .filter(|(_, r)| *r == PushResult::NotSent(NotSentReason::ConnectionLost))
            .count();
        assert!(
            reported
                .iter()
                .all(|(_, r)| matches!(r, PushResult::Delivered { .. })
                    || *r == PushResult::NotSent(NotSentReason::ConnectionLost)),
            "{:?}",
            reported
                .iter()
                .find(|(_, r)| !matches!(r, PushResult::Delivered { .. }))
        );
        assert!(
            lost < taken && peak_in_flight < taken,
            "the window kept everything: {lost} of {taken} requeued, {peak_in_flight} at most in flight"
        );
        eprintln!(
            "{sent} queued, {taken} taken, {delivered_under_load} delivered under load, {lost} requeued, \
             {peak_in_flight} at most in flight"
        );
    }

    /// While a write waits on a peer that stopped reading, the window is still swept: what was written before
    /// and answered by silence is delivered, and only the batch the peer never took comes back unsent when the
    /// write times out.
    #[tokio::test]
    async fn a_stalled_write_delivers_what_silence_answered_before_it_and_requeues_the_rest() {
        // Room for the first batch (64 KiB) but not the second; the server never reads.
        let (client, _server) = tokio::io::duplex(100_000);
        let jobs = 1000;
        let s = start_with(
            client,
            None,
            jobs,
            options(Duration::from_secs(2)),
            FIRST_IDENTIFIER,
        );
        tokio::time::timeout(Duration::from_secs(20), s.conn)
            .await
            .unwrap()
            .unwrap();
        let taken = (jobs as usize) - s.tx.len();
        let reported = s.results.wait_for(taken).await;
        let delivered_count = reported
            .iter()
            .take_while(|(_, r)| matches!(r, PushResult::Delivered { .. }))
            .count();
        assert!(
            delivered_count > 0,
            "the first batch was requeued: {:?}",
            reported[0]
        );
        assert!(
            reported[delivered_count..]
                .iter()
                .all(|(_, r)| *r == PushResult::NotSent(NotSentReason::ConnectionLost)),
            "{reported:?}"
        );
        assert!(delivered_count < taken, "the stalled batch was delivered");
        let tags: Vec<u32> = reported.iter().map(|(t, _)| *t).collect();
        assert_eq!(tags, (1..=taken as u32).collect::<Vec<_>>());
    }

    /// A write still pending after the response timeout (the peer stopped reading) makes the connection take no
    /// more work and records a fault, long before the write timeout ends it: the pool does not count a draining
    /// connection against its limit, so what waits goes to a new connection meanwhile. At the write timeout what
    /// the peer never took comes back unsent.
    #[tokio::test]
    async fn a_write_pending_past_the_response_timeout_drains_the_connection() {
        let (client, _server) = tokio::io::duplex(64);
        let s = start_with(
            client,
            None,
            3,
            options(Duration::from_secs(2)),
            FIRST_IDENTIFIER,
        );
        wait_until("the stalled connection drains", || s.state.is_draining()).await;
        let results = s.results.clone();
        let (_, why) = s.state.fault().expect("a stalled write is a fault");
        assert!(
            why.contains("a write waited over 200 ms"),
            "the stall was noticed only at the write timeout: {why}"
        );
        // Nothing more is taken; the stalled batch comes back unsent at the write timeout.
        s.tx.try_send(job(4)).unwrap();
        let reported = results.wait_for(3).await;
        assert!(
            reported
                .iter()
                .all(|(_, r)| *r == PushResult::NotSent(NotSentReason::ConnectionLost)),
            "{reported:?}"
        );
        tokio::time::timeout(Duration::from_secs(20), s.conn)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.tx.len(), 1, "the draining connection took more work");
        assert!(s.state.is_closed());
    }

    /// Identifiers never wrap on one connection: before the next would be `u32::MAX` the connection takes no more
    /// work (0 is the identifier APNs names for a frame it could not read), delivers what it wrote and closes,
    /// leaving the rest for a fresh connection.
    #[tokio::test]
    async fn identifiers_never_wrap_on_a_connection() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let s = start_with(client, None, 5, options(WRITE_TIMEOUT), u32::MAX - 2);
        let read = tokio::spawn(async move {
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut server, &mut got)
                .await
                .unwrap();
            got
        });
        tokio::time::timeout(Duration::from_secs(20), s.conn)
            .await
            .unwrap()
            .unwrap();
        let written = tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(identifiers(&written), vec![u32::MAX - 2, u32::MAX - 1]);
        assert_eq!(
            s.results.wait_for(2).await,
            vec![(1, delivered(u32::MAX - 2)), (2, delivered(u32::MAX - 1))]
        );
        assert_eq!(s.tx.len(), 3, "taken after the identifiers ran out");
        assert!(s.state.is_draining());
    }

    /// How a connection went, for the pool's judgement of young connections: one the server closes right after
    /// the handshake, before any answer, ends on a fault and is not proven; one whose notification was answered
    /// by silence is proven.
    #[tokio::test]
    async fn a_connection_closed_before_any_answer_is_a_fault_and_a_delivery_proves_it() {
        let (client, server) = tokio::io::duplex(1 << 16);
        drop(server);
        let s = start_with(client, None, 1, options(WRITE_TIMEOUT), FIRST_IDENTIFIER);
        let reported = s.results.wait_for(1).await;
        assert_eq!(
            reported[0].1,
            PushResult::NotSent(NotSentReason::ConnectionLost)
        );
        tokio::time::timeout(Duration::from_secs(20), s.conn)
            .await
            .unwrap()
            .unwrap();
        assert!(!s.state.is_proven());
        let (_, why) = s.state.fault().expect("a connection lost is a fault");
        assert!(why.contains("lost"), "{why}");

        let (client, mut server) = tokio::io::duplex(1 << 16);
        let s = start_with(client, None, 1, options(WRITE_TIMEOUT), FIRST_IDENTIFIER);
        read_at_least(&mut server, encoded_len()).await;
        assert_eq!(s.results.wait_for(1).await, vec![(1, delivered(1))]);
        assert!(s.state.is_proven());
        assert!(s.state.fault().is_none());
    }

    /// An error packet with a transient status (here 1, processing error) on a connection where nothing was
    /// processed is a fault of the server's; one refusing a notification for its own fault (8, invalid token)
    /// proves the connection.
    #[tokio::test]
    async fn error_packets_prove_or_fault_the_connection_by_their_status() {
        for (status, proven) in [
            (Status::ProcessingError, false),
            // "No errors encountered" naming a notification is no refusal of it (outcome::classify_binary).
            (Status::NoErrors, false),
            (Status::InvalidToken, true),
        ] {
            let (client, mut server) = tokio::io::duplex(1 << 16);
            let s = start_with(client, None, 1, options(WRITE_TIMEOUT), FIRST_IDENTIFIER);
            read_at_least(&mut server, encoded_len()).await;
            let packet = ErrorPacket {
                status,
                identifier: 1,
            };
            tokio::io::AsyncWriteExt::write_all(&mut server, &packet.encode())
                .await
                .unwrap();
            let reported = s.results.wait_for(1).await;
            assert!(
                matches!(reported[0].1, PushResult::Rejected(_)),
                "{reported:?}"
            );
            tokio::time::timeout(Duration::from_secs(20), s.conn)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(s.state.is_proven(), proven, "{status:?}");
            assert_eq!(s.state.fault().is_some(), !proven, "{status:?}");
        }
    }

    /// A peer that stops reading while the send buffer still takes the writes: no write waits, but the bytes go
    /// unacknowledged. After the response timeout with no progress the connection takes no more work (a fault);
    /// after the write timeout it ends with a reset, so nothing still queued follows the notifications it hands
    /// back unsent. Only what the peer's TCP stack acknowledged and then left unanswered is delivered.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn bytes_the_peer_never_acknowledges_drain_then_reset_the_connection() {
        let (client, mut server) = tight_pair().await;
        let (client, acks) = counted(client);
        let jobs = 200;
        let s = start_with(
            client,
            acks,
            jobs,
            options(Duration::from_secs(2)),
            FIRST_IDENTIFIER,
        );
        wait_until("the connection drains", || s.state.is_draining()).await;
        let (_, why) = s.state.fault().expect("unacknowledged bytes are a fault");
        assert!(
            why.contains("written bytes went unacknowledged over 200 ms"),
            "{why}"
        );
        let reported = s.results.wait_for(jobs as usize).await;
        let delivered_count = reported
            .iter()
            .take_while(|(_, r)| matches!(r, PushResult::Delivered { .. }))
            .count();
        assert!(
            delivered_count < jobs as usize / 2,
            "{delivered_count} delivered"
        );
        assert!(
            reported[delivered_count..]
                .iter()
                .all(|(_, r)| *r == PushResult::NotSent(NotSentReason::ConnectionLost)),
            "{reported:?}"
        );
        tokio::time::timeout(Duration::from_secs(20), s.conn)
            .await
            .unwrap()
            .unwrap();
        // The server reads what reached it, then the reset: the rest of what was written never arrives.
        let mut got = 0;
        let mut buf = [0u8; 65536];
        let end = loop {
            match tokio::io::AsyncReadExt::read(&mut server, &mut buf).await {
                Ok(0) => break None,
                Ok(n) => got += n,
                Err(e) => break Some(e.kind()),
            }
        };
        assert_eq!(end, Some(std::io::ErrorKind::ConnectionReset));
        assert!(got < jobs as usize * encoded_len(), "{got} bytes arrived");
    }

    /// An error packet naming a notification that already left the window, answered by silence (APNs answered
    /// later than `delivery_response_timeout`): identifiers rise on a connection, so everything still in the window
    /// was written after it and was discarded by APNs. It comes back unsent as after any rejected notification
    /// (`AfterRejected`: sent again at once, no loss counted), not as lost with the connection; the one named stays
    /// delivered. Identifier 0, or one the connection never wrote, says nothing of what APNs processed: the window
    /// comes back as with a lost connection (docs/apns-protocol.md#binary-error-packet).
    #[tokio::test]
    async fn an_error_packet_for_a_notification_answered_by_silence_requeues_the_rest_as_after_it()
    {
        for (identifier, status, rest, fault) in [
            (1, Status::InvalidToken, NotSentReason::AfterRejected, false),
            // Status 10 names the last notification processed: the same, the server's doing.
            (1, Status::Shutdown, NotSentReason::AfterRejected, true),
            (0, Status::InvalidToken, NotSentReason::ConnectionLost, true),
            (
                99,
                Status::InvalidToken,
                NotSentReason::ConnectionLost,
                true,
            ),
        ] {
            let (client, mut server) = loopback_pair().await;
            let (client, acks) = counted(client);
            let mut opts = (*options(WRITE_TIMEOUT)).clone();
            // Room for the server to answer the later notifications within the window, however slowly the test
            // runs: no real wait answers anything by silence here.
            opts.response_timeout = Duration::from_secs(600);
            let s = start_with(client, acks, 1, Arc::new(opts), FIRST_IDENTIFIER);
            let one = encoded_len();
            read_at_least(&mut server, one).await;
            // Notification 1 is answered by silence: the sweeps measure it a response window ahead (the clock
            // goes back once it left the window, before anything else is written).
            SILENCE_SKEW.with(|skew| skew.set(Duration::from_secs(600)));
            let first = s.results.wait_for(1).await;
            SILENCE_SKEW.with(|skew| skew.set(Duration::ZERO));
            assert_eq!(first, vec![(1, delivered(1))]);
            // Two more, written after notification 1 left the window; then the late packet.
            s.tx.try_send(job(2)).unwrap();
            s.tx.try_send(job(3)).unwrap();
            read_at_least(&mut server, 2 * one).await;
            let packet = ErrorPacket { status, identifier };
            tokio::io::AsyncWriteExt::write_all(&mut server, &packet.encode())
                .await
                .unwrap();
            let reported = s.results.wait_for(3).await;
            assert_eq!(
                reported,
                vec![
                    (1, delivered(1)),
                    (2, PushResult::NotSent(rest)),
                    (3, PushResult::NotSent(rest)),
                ],
                "{status:?} for {identifier}"
            );
            tokio::time::timeout(Duration::from_secs(20), s.conn)
                .await
                .unwrap()
                .unwrap();
            // Status 8 for a notification the connection carried refuses it for its own fault; a shutdown, or a
            // packet naming one it never carried, is the server's.
            assert_eq!(
                s.state.fault().is_some(),
                fault,
                "{status:?} for {identifier}: {:?}",
                s.state.fault()
            );
        }
    }

    /// An error packet naming a notification already answered by silence counts what it cost: those written after
    /// it that had left the window too (reported delivered, discarded by APNs: lost), and those still in the window
    /// (sent again); the warning says both and what to do.
    #[test]
    fn a_late_error_packet_counts_the_deliveries_it_makes_lost_and_what_is_sent_again() {
        let packet = |status, identifier| ErrorPacket { status, identifier };
        let mut window: Window<u32> = Window::new(Duration::from_millis(50));
        // Nothing in the window: everything written after notification 18, up to 1269 (the next would be 1270).
        let late = LateAnswer::of(packet(Status::InvalidToken, 18), &window, 1270);
        assert_eq!((late.lost, late.requeued), (1251, 0));
        for identifier in [1270, 1271, 1272] {
            window.entries.push_back(Written {
                identifier,
                at: Instant::now(),
                end: NOT_WRITTEN,
                acknowledged: false,
                tag: identifier,
            });
        }
        let late = LateAnswer::of(packet(Status::InvalidToken, 18), &window, 1273);
        assert_eq!((late.lost, late.requeued), (1251, 3));
        let text = late.warning(Duration::from_millis(2000));
        assert_eq!(
            text,
            "error packet 8@Invalid token names notification 18, already reported delivered after 2000 ms of \
             silence: delivery_response_timeout is shorter than APNs takes to answer, so refusals are reported as \
             deliveries. APNs discarded everything written after it on this connection: 1251 already reported \
             delivered the same way are lost (not sent again), and 3 still waiting for their answer are sent again. \
             Set delivery_response_timeout longer than the gateway's round trip and its stalls"
        );
        // The one just before the window: nothing reported after it is lost.
        let late = LateAnswer::of(packet(Status::Shutdown, 1269), &window, 1273);
        assert_eq!((late.lost, late.requeued), (0, 3));
        let late = LateAnswer::of(packet(Status::Shutdown, 1268), &window, 1273);
        assert_eq!((late.lost, late.requeued), (1, 3));
        let text = late.warning(Duration::from_millis(500));
        assert!(
            text.starts_with(
                "error packet 10@Shutdown says APNs stopped after notification 1268, whose silence (500 ms)"
            ) && text.contains(": 1 already reported delivered the same way is lost (not sent again), and 3 still"),
            "{text}"
        );
    }

    /// An error packet APNs sent in time that waits in the socket while herald is frozen (SIGSTOP, a virtual
    /// machine paused) past the response window is read before silence is taken for an answer when herald runs
    /// again: the notification it names fails and the one after it comes back unsent, instead of all of them being
    /// reported delivered (docs/apns-protocol.md#herald-stalls).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn an_error_packet_that_came_while_herald_was_frozen_is_read_before_silence_delivers() {
        use crate::client::stall::freeze;
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client_thread = freeze::this_thread();
        let three = 3 * encoded_len();
        let server = std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().unwrap();
            let mut got = vec![0u8; three];
            sock.read_exact(&mut got).unwrap();
            // The client's runtime has gone back to waiting for socket events by now.
            std::thread::sleep(Duration::from_millis(30));
            freeze::freeze(client_thread);
            let packet = ErrorPacket {
                status: Status::InvalidToken,
                identifier: 2,
            };
            sock.write_all(&packet.encode()).unwrap();
            // Held open until the client closes it.
            let _ = sock.read(&mut [0u8; 64]);
        });
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (client, acks) = counted(client);
        let started = std::time::Instant::now();
        let s = start_with(client, acks, 3, options(WRITE_TIMEOUT), FIRST_IDENTIFIER);
        let reported = s.results.wait_for(3).await;
        assert!(
            started.elapsed() >= freeze::FROZEN_FOR,
            "the client was not frozen"
        );
        assert_eq!(
            reported,
            vec![
                (1, delivered(1)),
                (
                    2,
                    PushResult::Rejected(Rejection::Binary {
                        status: Status::InvalidToken,
                        identifier: Some(2),
                    })
                ),
                (3, PushResult::NotSent(NotSentReason::AfterRejected)),
            ]
        );
        tokio::time::timeout(Duration::from_secs(20), s.conn)
            .await
            .unwrap()
            .unwrap();
        server.join().unwrap();
    }

    /// How the server end of a connection sees it end, reading (and discarding) what arrives for 10 s at most:
    /// `Ok` once a reset came, else what it saw instead.
    #[cfg(target_os = "linux")]
    fn read_until_reset(server: &mut std::net::TcpStream) -> Result<(), String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err("still open 10 s after the hand-back".into());
            }
            server.set_read_timeout(Some(left)).unwrap();
            match std::io::Read::read(server, &mut buf) {
                Ok(0) => return Err("closed without a reset".into()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err("still open 10 s after the hand-back".into());
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// A sink that, when the first notification is handed back unsent, looks at how the server end sees the
    /// connection at that moment ([`read_until_reset`]; the connection's task waits meanwhile).
    #[cfg(target_os = "linux")]
    struct ResetWitness {
        server: std::sync::Mutex<Option<std::net::TcpStream>>,
        seen: std::sync::Mutex<Option<Result<(), String>>>,
        results: Results,
    }

    #[cfg(target_os = "linux")]
    impl OutcomeSink<u32> for ResetWitness {
        fn report(&self, tag: u32, result: PushResult, conn: &ConnectionInfo) {
            if matches!(result, PushResult::NotSent(_))
                && let Some(mut server) = self.server.lock().unwrap().take()
            {
                *self.seen.lock().unwrap() = Some(read_until_reset(&mut server));
            }
            self.results.report(tag, result, conn);
        }
    }

    /// A connection lost with notifications in its window (here a write the peer never takes, ended at the write
    /// timeout) ends with a TCP reset before the first of them is handed back, so that nothing still in its send
    /// queue can reach APNs after the pool sent them again on another connection; also where the socket could not
    /// be duplicated (no [`Acknowledged`]), the reset being set on the stream's own socket.
    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_connection_is_reset_before_its_window_is_handed_back() {
        for duplicated in [true, false] {
            // Small buffers on both ends, and a server that does not read: the first batch's write waits.
            let listener = tokio::net::TcpSocket::new_v4().unwrap();
            listener.set_recv_buffer_size(4096).unwrap();
            listener.bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let listener = listener.listen(1).unwrap();
            let client = tokio::net::TcpSocket::new_v4().unwrap();
            client.set_send_buffer_size(4096).unwrap();
            let client = client
                .connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let (server, _) = listener.accept().await.unwrap();
            let server = server.into_std().unwrap();
            server.set_nonblocking(false).unwrap();

            let socket = SocketHandle::of(&client);
            let (client, acks) = counted(client);
            let acks = acks.filter(|_| duplicated);
            let witness = Arc::new(ResetWitness {
                server: std::sync::Mutex::new(Some(server)),
                seen: std::sync::Mutex::new(None),
                results: Results::default(),
            });
            let (tx, rx) = async_channel::unbounded();
            let jobs = 1000;
            for tag in 1..=jobs {
                tx.try_send(job(tag)).unwrap();
            }
            let opts = options(Duration::from_millis(500));
            let connection = Connection {
                state: ConnectionState::new(opts.max_window),
                opts,
                acks,
                socket: Some(socket),
                sink: witness.clone(),
                info: ConnectionInfo {
                    remote: "127.0.0.1:2195".parse().unwrap(),
                    id: 1,
                },
                panic_at: None,
            };
            tokio::time::timeout(
                Duration::from_secs(30),
                tokio::spawn(connection.run(client, rx, FIRST_IDENTIFIER)),
            )
            .await
            .unwrap()
            .unwrap();
            let reported = witness.results.wait_for(1).await;
            assert!(
                reported
                    .iter()
                    .all(|(_, r)| *r == PushResult::NotSent(NotSentReason::ConnectionLost)),
                "duplicated {duplicated}: {reported:?}"
            );
            let seen = witness.seen.lock().unwrap().take();
            assert_eq!(
                seen,
                Some(Ok(())),
                "duplicated {duplicated}: the connection was not reset when its window was handed back"
            );
        }
    }

    /// A connection taking `jobs` over a new loopback TCP connection, reporting to `results`, that panics as it
    /// takes its `panic_at`th job; its state, its task and the server's end.
    async fn panicking_connection(
        opts: Arc<BinaryOptions>,
        jobs: JobReceiver<u32>,
        results: Arc<Results>,
        panic_at: Option<u32>,
    ) -> (
        Arc<ConnectionState>,
        tokio::task::JoinHandle<()>,
        tokio::net::TcpStream,
    ) {
        let (client, server) = loopback_pair().await;
        let state = ConnectionState::new(opts.max_window);
        let connection = Connection {
            opts,
            acks: None,
            socket: Some(SocketHandle::of(&client)),
            sink: results,
            state: state.clone(),
            info: ConnectionInfo {
                remote: "127.0.0.1:2195".parse().unwrap(),
                id: 1,
            },
            panic_at,
        };
        let conn = tokio::spawn(connection.run(client, jobs, FIRST_IDENTIFIER));
        (state, conn, server)
    }

    /// A connection's task that panics leaves no notification unreported: its window (written, or taken and not
    /// yet written) comes back unsent as on a connection lost without an error packet, once the connection is
    /// closed; what it had not taken stays in the queue, and a new connection sends it. The connection shows as
    /// closed, with nothing in flight and its fault naming the panic.
    #[tokio::test]
    async fn a_panic_of_the_connections_task_hands_its_window_back() {
        let mut opts = (*options(WRITE_TIMEOUT)).clone();
        // No silence answers anything while the test runs.
        opts.response_timeout = Duration::from_secs(60);
        let opts = Arc::new(opts);
        let (tx, rx) = async_channel::unbounded();
        let results = Arc::new(Results::default());
        let (state, conn, mut server) =
            panicking_connection(opts.clone(), rx.clone(), results.clone(), Some(3)).await;
        let one = encoded_len();
        tx.send(job(1)).await.unwrap();
        tx.send(job(2)).await.unwrap();
        assert_eq!(
            identifiers(&read_at_least(&mut server, 2 * one).await),
            [1, 2]
        );
        // The third job makes the task panic as it takes it; the fourth waits in the queue.
        tx.send(job(3)).await.unwrap();
        tx.send(job(4)).await.unwrap();
        let mut reported = results.wait_for(3).await;
        reported.sort_by_key(|(tag, _)| *tag);
        assert_eq!(
            reported,
            [1, 2, 3].map(|tag| (tag, PushResult::NotSent(NotSentReason::ConnectionLost)))
        );
        tokio::time::timeout(Duration::from_secs(20), conn)
            .await
            .expect("the connection's task ends")
            .expect("the connection's task ends without a panic");
        assert!(state.is_closed());
        assert_eq!(state.in_flight(), 0);
        let (_, fault) = state.fault().expect("a fault is recorded");
        assert!(fault.contains("panicked"), "{fault}");
        // The connection was closed, with nothing more written.
        let mut rest = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(20), server.read(&mut rest))
            .await
            .expect("the connection closes");
        assert!(!matches!(read, Ok(n) if n > 0), "{read:?}");
        assert_eq!(rx.len(), 1, "the job not taken stays in the queue");
        // A new connection takes what waits.
        let (_, _second, mut server) = panicking_connection(opts, rx, results.clone(), None).await;
        assert_eq!(identifiers(&read_at_least(&mut server, one).await), [1]);
        SILENCE_SKEW.with(|skew| skew.set(Duration::from_secs(120)));
        assert_eq!(results.wait_for(4).await[3], (4, delivered(1)));
    }
}
