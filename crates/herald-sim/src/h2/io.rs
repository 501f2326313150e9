//! An I/O shim between a TLS stream and the `h2` server that lets the simulator do what `h2` has no API for:
//! advertise `SETTINGS_MAX_CONCURRENT_STREAMS` 1 in the first SETTINGS of a token connection and change it after
//! the handshake (up once the token connection authenticates, and back to 1 after a rejection when streams are
//! "choppy", docs/apns-protocol.md#http2-connection, docs/apns-protocol.md#simulator), and send GOAWAY with any
//! error code and debug data (JSON, or Apple's plain text for a stream-limit overrun).
//!
//! Outgoing: frames from `h2` pass through untouched; injected frames are written between two of them (never
//! before `h2`'s initial SETTINGS). Once the simulator has sent its own GOAWAY, later GOAWAYs from `h2` are
//! dropped so the client sees exactly one. Incoming: the client's SETTINGS ACKs are matched in order to the
//! SETTINGS frames sent; ACKs of injected ones are removed (`h2` would call them a protocol error) and publish the
//! newly acknowledged stream limit; every ACK is noted with the highest stream the client had opened by then
//! ([`FrameControl::limit_binds`]); the client's PINGs are noted ([`FrameControl::last_ping`]) so that they keep an
//! idle connection open.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const FRAME_HEADERS: u8 = 0x1;
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_PING: u8 = 0x6;
const FRAME_GOAWAY: u8 = 0x7;
const FLAG_ACK: u8 = 0x1;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const PREFACE_LEN: usize = 24;

/// A frame the simulator wants on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Injection {
    MaxConcurrentStreams(u32),
    GoAway {
        last_stream_id: u32,
        error_code: u32,
        debug: bytes::Bytes,
    },
}

/// Shared between the connection task and the shim.
#[derive(Debug)]
pub struct FrameControl {
    pending: Mutex<VecDeque<Injection>>,
    has_pending: AtomicBool,
    /// The stream limit the client has acknowledged (or a raise already sent, which can only help the client).
    acked_limit: AtomicU32,
    /// The client has acknowledged the server's first SETTINGS.
    settings_acked: AtomicBool,
    /// The highest stream the client had opened when it acknowledged the latest SETTINGS: the streams after it
    /// were opened knowing the limit.
    acked_through: AtomicU32,
    suppress_goaway: AtomicBool,
    /// Completed flushes: after one that follows a response being queued, the response is on the wire.
    flushes: AtomicU64,
    /// When the client last sent a PING (not an ACK): it keeps an idle connection alive.
    last_ping: Mutex<Option<std::time::Instant>>,
}

impl FrameControl {
    pub fn new(initial_limit: u32) -> FrameControl {
        FrameControl {
            pending: Mutex::new(VecDeque::new()),
            has_pending: AtomicBool::new(false),
            acked_limit: AtomicU32::new(initial_limit),
            settings_acked: AtomicBool::new(false),
            acked_through: AtomicU32::new(0),
            suppress_goaway: AtomicBool::new(false),
            flushes: AtomicU64::new(0),
            last_ping: Mutex::new(None),
        }
    }

    pub fn inject(&self, inj: Injection) {
        if let Injection::MaxConcurrentStreams(v) = inj {
            // A raise applies at once; a lowering only once the client acknowledges it.
            self.acked_limit.fetch_max(v, Ordering::AcqRel);
        }
        if matches!(inj, Injection::GoAway { .. }) {
            self.suppress_goaway.store(true, Ordering::Release);
        }
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(inj);
        self.has_pending.store(true, Ordering::Release);
    }

    pub fn limit(&self) -> u32 {
        self.acked_limit.load(Ordering::Acquire)
    }

    /// Whether the client opened `stream_id` knowing the stream limit in force: after acknowledging the SETTINGS
    /// that set it. Before, a client may open streams beyond it without breaking the protocol (RFC 9113 §5.1.2).
    pub fn limit_binds(&self, stream_id: u32) -> bool {
        self.settings_acked.load(Ordering::Acquire)
            && stream_id > self.acked_through.load(Ordering::Acquire)
    }

    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Acquire)
    }

    /// When the client last sent a PING (docs/apns-protocol.md#http2-connection: a PING keeps an idle connection
    /// alive).
    pub fn last_ping(&self) -> Option<std::time::Instant> {
        *self.last_ping.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self) -> Vec<Injection> {
        if !self.has_pending.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SettingsOrigin {
    H2,
    Injected(u32),
}

/// Tracks frame boundaries in one direction.
#[derive(Debug, Default)]
struct FrameCursor {
    /// Bytes of the current frame not yet passed (header included while mid-header).
    remaining: usize,
    /// Header bytes collected so far when a header straddles writes.
    header: [u8; 9],
    header_len: usize,
}

pub struct FrameIo<S> {
    inner: S,
    control: std::sync::Arc<FrameControl>,
    // write side
    out: FrameCursor,
    frames_out: u64,
    inject_buf: Vec<u8>,
    inject_pos: usize,
    skip_out: usize,
    origins: VecDeque<SettingsOrigin>,
    // read side
    in_buf: BytesMut,
    scratch: Box<[u8]>,
    fwd: usize,
    preface_left: usize,
    in_remaining: usize,
    eof: bool,
    /// Our write side is shut; reads are drained until the client closes (lingering close).
    write_shut: bool,
    /// The stream limit h2's first SETTINGS frame is to advertise instead of h2's own ([`FrameIo::first_limit`]).
    first_limit: Option<u32>,
    /// The highest stream id of the client's HEADERS read so far.
    max_stream_seen: u32,
}

impl<S> FrameIo<S> {
    pub fn new(inner: S, control: std::sync::Arc<FrameControl>) -> FrameIo<S> {
        FrameIo {
            inner,
            control,
            out: FrameCursor::default(),
            frames_out: 0,
            write_shut: false,
            inject_buf: Vec::new(),
            inject_pos: 0,
            skip_out: 0,
            origins: VecDeque::new(),
            in_buf: BytesMut::with_capacity(16 * 1024),
            scratch: vec![0u8; 16 * 1024].into_boxed_slice(),
            fwd: 0,
            preface_left: PREFACE_LEN,
            in_remaining: 0,
            eof: false,
            first_limit: None,
            max_stream_seen: 0,
        }
    }

    /// Makes h2's first SETTINGS frame advertise `limit` concurrent streams in place of the limit h2 was built
    /// with: a token connection says 1 from its first frame on (docs/apns-protocol.md#http2-connection), while h2
    /// keeps the full limit internally so that the connection can raise it later by an injected SETTINGS. (h2
    /// writes its whole first SETTINGS frame in one write; were it ever split, the frame would pass unchanged and
    /// the connection would still refuse streams beyond [`FrameControl::limit`].)
    pub fn first_limit(mut self, limit: u32) -> Self {
        self.first_limit = Some(limit);
        self
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn at_boundary(&self) -> bool {
        self.out.remaining == 0 && self.out.header_len == 0 && self.skip_out == 0
    }

    /// Serializes pending injections when at a frame boundary after h2's first frame.
    fn stage_injections(&mut self) {
        if self.inject_pos < self.inject_buf.len() || self.frames_out == 0 || !self.at_boundary() {
            return;
        }
        let pending = self.control.take();
        if pending.is_empty() {
            return;
        }
        self.inject_buf.clear();
        self.inject_pos = 0;
        for inj in pending {
            match inj {
                Injection::MaxConcurrentStreams(v) => {
                    self.inject_buf
                        .extend_from_slice(&[0, 0, 6, FRAME_SETTINGS, 0, 0, 0, 0, 0]);
                    self.inject_buf
                        .extend_from_slice(&SETTINGS_MAX_CONCURRENT_STREAMS.to_be_bytes());
                    self.inject_buf.extend_from_slice(&v.to_be_bytes());
                    self.origins.push_back(SettingsOrigin::Injected(v));
                }
                Injection::GoAway {
                    last_stream_id,
                    error_code,
                    debug,
                } => {
                    let len = 8 + debug.len();
                    self.inject_buf
                        .extend_from_slice(&(len as u32).to_be_bytes()[1..]);
                    self.inject_buf
                        .extend_from_slice(&[FRAME_GOAWAY, 0, 0, 0, 0, 0]);
                    self.inject_buf
                        .extend_from_slice(&(last_stream_id & 0x7fff_ffff).to_be_bytes());
                    self.inject_buf.extend_from_slice(&error_code.to_be_bytes());
                    self.inject_buf.extend_from_slice(&debug);
                }
            }
        }
    }

    /// Accounts for `data` (a prefix of what h2 gave us) having been written.
    fn track_out(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.out.remaining > 0 {
                let n = self.out.remaining.min(data.len());
                self.out.remaining -= n;
                data = &data[n..];
                continue;
            }
            let need = 9 - self.out.header_len;
            let n = need.min(data.len());
            self.out.header[self.out.header_len..self.out.header_len + n]
                .copy_from_slice(&data[..n]);
            self.out.header_len += n;
            data = &data[n..];
            if self.out.header_len == 9 {
                let h = self.out.header;
                let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                if h[3] == FRAME_SETTINGS && h[4] & FLAG_ACK == 0 {
                    self.origins.push_back(SettingsOrigin::H2);
                }
                self.frames_out += 1;
                self.out.header_len = 0;
                self.out.remaining = len;
            }
        }
    }
}

fn frame_len(h: &[u8]) -> usize {
    u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize
}

/// `frame`, a whole SETTINGS frame, with SETTINGS_MAX_CONCURRENT_STREAMS set to `limit` (added if absent).
fn with_max_streams(frame: &[u8], limit: u32) -> Vec<u8> {
    let mut out = frame.to_vec();
    let mut found = false;
    for entry in out[9..].chunks_exact_mut(6) {
        if entry[..2] == SETTINGS_MAX_CONCURRENT_STREAMS.to_be_bytes() {
            entry[2..].copy_from_slice(&limit.to_be_bytes());
            found = true;
        }
    }
    if !found {
        out.extend_from_slice(&SETTINGS_MAX_CONCURRENT_STREAMS.to_be_bytes());
        out.extend_from_slice(&limit.to_be_bytes());
        let len = (out.len() - 9) as u32;
        out[..3].copy_from_slice(&len.to_be_bytes()[1..]);
    }
    out
}

impl<S: AsyncWrite + Unpin> FrameIo<S> {
    fn poll_inject(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.inject_pos < self.inject_buf.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.inject_buf[self.inject_pos..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.inject_pos += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for FrameIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.stage_injections();
        if let Poll::Ready(Err(e)) = this.poll_inject(cx) {
            return Poll::Ready(Err(e));
        }
        if this.inject_pos < this.inject_buf.len() {
            return Poll::Pending;
        }
        if this.frames_out == 0
            && this.at_boundary()
            && let Some(limit) = this.first_limit
            && buf.len() >= 9
            && buf[3] == FRAME_SETTINGS
            && buf[4] & FLAG_ACK == 0
            && buf.len() >= 9 + frame_len(buf)
        {
            // h2's first SETTINGS, with our stream limit: it goes out through the injection buffer.
            this.first_limit = None;
            let total = 9 + frame_len(buf);
            let frame = with_max_streams(&buf[..total], limit);
            this.track_out(&frame);
            this.inject_buf.clear();
            this.inject_buf.extend_from_slice(&frame);
            this.inject_pos = 0;
            if let Poll::Ready(Err(e)) = this.poll_inject(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(total));
        }
        if this.skip_out > 0 {
            let n = this.skip_out.min(buf.len());
            this.skip_out -= n;
            return Poll::Ready(Ok(n));
        }
        // Find how far we may write in one go: stop before a GOAWAY to suppress, and at the first frame boundary
        // when injections are waiting.
        let suppress = this.control.suppress_goaway.load(Ordering::Acquire);
        let want_boundary = this.control.has_pending.load(Ordering::Acquire);
        let mut pos = 0usize;
        if this.out.header_len > 0 || this.out.remaining > 0 {
            if this.out.header_len > 0 {
                // Mid-header: pass the rest of it plus the payload we can see.
                let hdr_rest = 9 - this.out.header_len;
                let payload = if buf.len() >= hdr_rest {
                    let mut h = this.out.header;
                    h[this.out.header_len..].copy_from_slice(&buf[..hdr_rest]);
                    frame_len(&h)
                } else {
                    0
                };
                pos = (hdr_rest + payload).min(buf.len());
            } else {
                pos = this.out.remaining.min(buf.len());
            }
        }
        let mut stop = want_boundary && (pos > 0 || this.frames_out == 0);
        if this.frames_out == 0 && pos == 0 && buf.len() >= 9 {
            // The first frame (h2's SETTINGS) always goes out before anything is injected.
            pos = (9 + frame_len(&buf[..9])).min(buf.len());
            stop = want_boundary;
        }
        while !stop && pos + 9 <= buf.len() {
            let h = &buf[pos..pos + 9];
            if suppress && h[3] == FRAME_GOAWAY {
                if pos == 0 {
                    let total = 9 + frame_len(h);
                    let n = total.min(buf.len());
                    this.skip_out = total - n;
                    return Poll::Ready(Ok(n));
                }
                break;
            }
            pos = (pos + 9 + frame_len(h)).min(buf.len());
            if want_boundary {
                break;
            }
        }
        if !stop && pos + 9 > buf.len() && pos < buf.len() {
            // A partial header at the end: pass it, the cursor keeps track.
            pos = buf.len();
        }
        if pos == 0 {
            pos = buf.len();
        }
        match Pin::new(&mut this.inner).poll_write(cx, &buf[..pos]) {
            Poll::Ready(Ok(n)) => {
                this.track_out(&buf[..n]);
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.stage_injections();
        match this.poll_inject(cx) {
            Poll::Ready(Ok(())) => {
                let r = Pin::new(&mut this.inner).poll_flush(cx);
                if matches!(r, Poll::Ready(Ok(()))) && this.inject_pos >= this.inject_buf.len() {
                    this.control.flushes.fetch_add(1, Ordering::AcqRel);
                }
                r
            }
            other => other,
        }
    }

    /// Shuts the write side, then keeps reading (and discarding) until the client closes its side. Closing a
    /// socket with unread data makes the kernel send RST, and a client that receives RST may lose answers it had
    /// not read yet: the answers to the streams a GOAWAY let finish would be lost and sent again. The caller
    /// bounds how long this may take.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.write_shut {
            match this.poll_inject(cx) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
            match Pin::new(&mut this.inner).poll_shutdown(cx) {
                Poll::Ready(Ok(())) => this.write_shut = true,
                other => return other,
            }
        }
        if this.eof {
            return Poll::Ready(Ok(()));
        }
        loop {
            let mut rb = ReadBuf::new(&mut this.scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    this.eof = true;
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S> FrameIo<S> {
    /// A SETTINGS ACK from the client: the limits it acknowledges bind the streams it opens after it.
    fn note_ack(&self) {
        self.control
            .acked_through
            .store(self.max_stream_seen, Ordering::Release);
        self.control.settings_acked.store(true, Ordering::Release);
    }

    /// Extends `fwd` over bytes that go to h2 unchanged; removes ACKs of injected SETTINGS at the front.
    fn classify(&mut self) {
        loop {
            let avail = self.in_buf.len() - self.fwd;
            if avail == 0 {
                return;
            }
            if self.preface_left > 0 {
                let n = self.preface_left.min(avail);
                self.preface_left -= n;
                self.fwd += n;
                continue;
            }
            if self.in_remaining > 0 {
                let n = self.in_remaining.min(avail);
                self.in_remaining -= n;
                self.fwd += n;
                continue;
            }
            if avail < 9 {
                return;
            }
            let h = &self.in_buf[self.fwd..self.fwd + 9];
            let len = frame_len(h);
            if h[3] == FRAME_SETTINGS && h[4] & FLAG_ACK != 0 {
                match self.origins.front().copied() {
                    Some(SettingsOrigin::Injected(v)) => {
                        if self.fwd > 0 {
                            // Hand over what precedes it first; drop it on the next round.
                            return;
                        }
                        self.origins.pop_front();
                        self.note_ack();
                        self.control.acked_limit.store(v, Ordering::Release);
                        self.in_buf.advance(9 + len.min(self.in_buf.len() - 9));
                        continue;
                    }
                    Some(SettingsOrigin::H2) => {
                        self.origins.pop_front();
                        self.note_ack();
                    }
                    None => {}
                }
            }
            if h[3] == FRAME_HEADERS {
                let id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                self.max_stream_seen = self.max_stream_seen.max(id);
            }
            if h[3] == FRAME_PING && h[4] & FLAG_ACK == 0 {
                *self
                    .control
                    .last_ping
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
            }
            self.fwd += 9;
            self.in_remaining = len;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            this.classify();
            if this.fwd > 0 {
                let n = this.fwd.min(buf.remaining());
                buf.put_slice(&this.in_buf[..n]);
                this.in_buf.advance(n);
                this.fwd -= n;
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // Whatever is left is a truncated header: pass it so h2 reports the truncation.
                let n = this.in_buf.len().min(buf.remaining());
                buf.put_slice(&this.in_buf[..n]);
                this.in_buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            let mut rb = ReadBuf::new(&mut this.scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    if rb.filled().is_empty() {
                        this.eof = true;
                    } else {
                        this.in_buf.extend_from_slice(rb.filled());
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn settings(v: u32) -> Vec<u8> {
        let mut f = vec![0, 0, 6, FRAME_SETTINGS, 0, 0, 0, 0, 0, 0, 3];
        f.extend_from_slice(&v.to_be_bytes());
        f
    }
    const ACK: [u8; 9] = [0, 0, 0, FRAME_SETTINGS, FLAG_ACK, 0, 0, 0, 0];
    const PING: [u8; 17] = [0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];

    #[tokio::test]
    async fn injected_settings_follow_the_first_frame_and_their_acks_are_swallowed() {
        let (a, mut peer) = tokio::io::duplex(4096);
        let control = Arc::new(FrameControl::new(1000));
        control.inject(Injection::MaxConcurrentStreams(1));
        assert_eq!(control.limit(), 1000, "a lowering waits for the ACK");
        let mut io = FrameIo::new(a, control.clone());

        // h2 writes its SETTINGS and a PING in one buffer.
        let mut out = settings(1000);
        out.extend_from_slice(&PING);
        let mut written = 0;
        while written < out.len() {
            written += io.write(&out[written..]).await.unwrap();
        }
        io.flush().await.unwrap();
        let mut expected = settings(1000);
        expected.extend_from_slice(&settings(1));
        expected.extend_from_slice(&PING);
        let mut got = vec![0u8; expected.len()];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expected);

        // The client: preface, its SETTINGS, ACK (of h2's), ACK (of ours), PING.
        let mut incoming = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        incoming.extend_from_slice(&settings(100));
        incoming.extend_from_slice(&ACK);
        incoming.extend_from_slice(&ACK);
        incoming.extend_from_slice(&PING);
        peer.write_all(&incoming).await.unwrap();
        drop(peer);
        let mut seen = Vec::new();
        io.read_to_end(&mut seen).await.unwrap();
        let mut expected = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        expected.extend_from_slice(&settings(100));
        expected.extend_from_slice(&ACK);
        expected.extend_from_slice(&PING);
        assert_eq!(seen, expected);
        assert_eq!(control.limit(), 1);
    }

    #[tokio::test]
    async fn the_first_settings_can_advertise_another_stream_limit() {
        let (a, mut peer) = tokio::io::duplex(4096);
        let control = Arc::new(FrameControl::new(1));
        let mut io = FrameIo::new(a, control.clone()).first_limit(1);
        // h2's SETTINGS (header table size, then the stream limit) and a PING in one buffer.
        let mut h2_settings = vec![0, 0, 12, FRAME_SETTINGS, 0, 0, 0, 0, 0, 0, 1, 0, 0, 16, 0];
        h2_settings.extend_from_slice(&[0, 3, 0, 0, 3, 232]);
        let mut out = h2_settings.clone();
        out.extend_from_slice(&PING);
        let mut written = 0;
        while written < out.len() {
            written += io.write(&out[written..]).await.unwrap();
        }
        io.flush().await.unwrap();
        let mut expected = h2_settings[..15].to_vec();
        expected.extend_from_slice(&[0, 3, 0, 0, 0, 1]);
        expected.extend_from_slice(&PING);
        let mut got = vec![0u8; expected.len()];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expected);
        assert_eq!(control.limit(), 1);
        // Without the stream limit in it, the entry is added.
        assert_eq!(
            with_max_streams(&[0, 0, 0, FRAME_SETTINGS, 0, 0, 0, 0, 0], 1),
            settings(1)
        );
    }

    #[tokio::test]
    async fn our_goaway_replaces_h2s() {
        let (a, mut peer) = tokio::io::duplex(4096);
        let control = Arc::new(FrameControl::new(10));
        let mut io = FrameIo::new(a, control.clone());
        io.write_all(&settings(10)).await.unwrap();
        control.inject(Injection::GoAway {
            last_stream_id: 3,
            error_code: 0,
            debug: "{}".into(),
        });
        let h2_goaway = [0, 0, 8, FRAME_GOAWAY, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0];
        io.write_all(&h2_goaway).await.unwrap();
        io.write_all(&PING).await.unwrap();
        io.flush().await.unwrap();
        drop(io);
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        let mut expected = settings(10);
        expected.extend_from_slice(&[
            0,
            0,
            10,
            FRAME_GOAWAY,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            3,
            0,
            0,
            0,
            0,
            b'{',
            b'}',
        ]);
        expected.extend_from_slice(&PING);
        assert_eq!(got, expected);
    }
}
