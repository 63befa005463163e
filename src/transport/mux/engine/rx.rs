//! What one stream has received and its reader has not taken yet, charged in bytes of
//! memory rather than of payload: a peer that sends one byte per frame must not make each byte
//! cost a buffer of its own. Small frames are copied into shared chunks; larger ones stay in
//! the buffer they were read into; every piece is charged its allocation plus its bookkeeping.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::ReadBuf;
use tokio::sync::Notify;

/// Frames shorter than this are copied into a chunk shared with their neighbours.
pub const SMALL: usize = 1024;
/// The size of such a chunk.
const CHUNK: usize = 4096;
/// What a piece costs beyond its bytes: its slot in the queue and the allocator's header.
const PIECE_COST: usize = 64;

/// What the streams of a session hold beyond their own share, in total: a stream that falls
/// behind may borrow from the session's spare room before its siblings wait for it.
#[derive(Debug, Default)]
pub(super) struct Overdraft {
    /// Each stream's own share.
    hold: usize,
    /// The sum over the session's streams of what each holds beyond `hold`.
    over: AtomicUsize,
}

impl Overdraft {
    pub(super) fn new(hold: usize) -> Self {
        Overdraft {
            hold,
            over: AtomicUsize::new(0),
        }
    }

    /// What the session's streams hold beyond their shares now.
    pub(super) fn over(&self) -> usize {
        self.over.load(Ordering::Acquire)
    }

    /// A stream's holding went from `was` to `now`.
    fn moved(&self, was: usize, now: usize) {
        let (was, now) = (was.saturating_sub(self.hold), now.saturating_sub(self.hold));
        if now > was {
            self.over.fetch_add(now - was, Ordering::AcqRel);
        } else if was > now {
            self.over.fetch_sub(was - now, Ordering::AcqRel);
        }
    }
}

/// A stream's receiving side, shared by the session's reader and the stream.
#[derive(Default)]
pub(super) struct Rx {
    state: Mutex<RxState>,
    /// The session's account of what its streams hold beyond their shares.
    overdraft: Option<Arc<Overdraft>>,
    /// A datagram stream: each payload is one datagram, read as a frame of the tunnel's
    /// datagram format (its length, then its bytes).
    packets: bool,
    /// Our FIN for this stream has been queued (by the stream, or by the reader on overflow).
    pub(super) fin_sent: AtomicBool,
    /// The stream's reader took it down to `drain_at` (or the stream went away).
    pub(super) drained: Notify,
}

struct Piece {
    data: BytesMut,
    /// What it was charged when queued: its allocation and [`PIECE_COST`].
    charge: usize,
}

#[derive(Default)]
struct RxState {
    queue: VecDeque<Piece>,
    /// The memory the queue holds, as charged.
    held: usize,
    /// The peer sent FIN: after the queue, end of stream.
    fin: bool,
    /// Why the stream can no longer be used (closed on overflow, or the session ended).
    broken: Option<&'static str>,
    waker: Option<Waker>,
    /// The session waits until the reader has brought `held` down to this.
    drain_at: Option<usize>,
}

impl RxState {
    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

impl Rx {
    fn lock(&self) -> MutexGuard<'_, RxState> {
        // Nothing panics while holding it; a poisoned lock still has consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether it is a datagram stream's.
    pub(super) fn packets(&self) -> bool {
        self.packets
    }

    /// A receiving side; `packets`: of a datagram stream; what it holds beyond its share is
    /// charged to `overdraft`.
    pub(super) fn new(packets: bool, overdraft: Arc<Overdraft>) -> Self {
        Rx {
            state: Mutex::default(),
            packets,
            overdraft: Some(overdraft),
            fin_sent: AtomicBool::new(false),
            drained: Notify::new(),
        }
    }

    /// Sets what the queue holds, keeping the session's account.
    fn set_held(&self, st: &mut RxState, now: usize) {
        if let Some(o) = &self.overdraft {
            o.moved(st.held, now);
        }
        st.held = now;
    }

    /// Queues a frame's body read into a buffer of its own; returns the memory now held.
    pub(super) fn push_owned(&self, data: BytesMut) -> usize {
        self.prefix(data.len());
        if data.len() < SMALL {
            return self.push_raw(&data);
        }
        let mut st = self.lock();
        let charge = data.capacity() + PIECE_COST;
        let now = st.held + charge;
        self.set_held(&mut st, now);
        st.queue.push_back(Piece { data, charge });
        st.wake();
        st.held
    }

    /// Queues a copy of a short frame's body, in the room of the last chunk where it fits;
    /// returns the memory now held. An empty body queues nothing.
    pub(super) fn push_copy(&self, body: &[u8]) -> usize {
        self.prefix(body.len());
        self.push_raw(body)
    }

    /// A datagram's length before its bytes, on a datagram stream.
    fn prefix(&self, len: usize) {
        if self.packets && len > 0 {
            self.push_raw(&(len as u16).to_be_bytes());
        }
    }

    pub(super) fn push_raw(&self, body: &[u8]) -> usize {
        let mut st = self.lock();
        if body.is_empty() {
            return st.held;
        }
        let fits = st
            .queue
            .back()
            .is_some_and(|p| p.data.capacity() - p.data.len() >= body.len());
        if fits && let Some(last) = st.queue.back_mut() {
            last.data.extend_from_slice(body);
        } else {
            let mut data = BytesMut::with_capacity(CHUNK.max(body.len()));
            data.extend_from_slice(body);
            let charge = data.capacity() + PIECE_COST;
            let now = st.held + charge;
            self.set_held(&mut st, now);
            st.queue.push_back(Piece { data, charge });
        }
        st.wake();
        st.held
    }

    /// The memory held now, as charged.
    #[cfg(test)]
    pub(super) fn held(&self) -> usize {
        self.lock().held
    }

    /// Waits until the reader has taken the stream down to `limit` bytes, or the stream is
    /// gone; `false` if `within` passed first.
    pub(super) async fn drain_to(&self, limit: usize, within: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.drained.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let mut st = self.lock();
                    if st.held <= limit || st.broken.is_some() {
                        st.drain_at = None;
                        return;
                    }
                    st.drain_at = Some(limit);
                }
                notified.await;
            }
        };
        tokio::time::timeout(within, wait).await.is_ok()
    }

    /// Drops what is queued and makes the stream unusable.
    pub(super) fn kill(&self, why: &'static str) {
        let mut st = self.lock();
        st.queue.clear();
        self.set_held(&mut st, 0);
        st.broken.get_or_insert(why);
        st.wake();
    }

    /// The peer's FIN (`fin`), or the end of the stream's use for `broken`.
    pub(super) fn end(&self, fin: bool, broken: Option<&'static str>) {
        let mut st = self.lock();
        st.fin |= fin;
        if st.broken.is_none() {
            st.broken = broken;
        }
        st.wake();
    }

    /// Why the stream can no longer be used, if it cannot.
    pub(super) fn broken(&self) -> Option<&'static str> {
        self.lock().broken
    }

    /// Fills `buf` from as many queued pieces as it takes; end of stream after the peer's
    /// FIN; the stream's break once nothing is left to read.
    pub(super) fn poll_read(
        &self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut st = self.lock();
        if !st.queue.is_empty() {
            let mut freed = 0;
            while buf.remaining() > 0 {
                let Some(front) = st.queue.front_mut() else {
                    break;
                };
                let n = front.data.len().min(buf.remaining());
                buf.put_slice(&front.data[..n]);
                front.data.advance(n);
                if front.data.is_empty() {
                    freed += front.charge;
                    st.queue.pop_front();
                }
            }
            let now = st.held - freed;
            self.set_held(&mut st, now);
            if st.drain_at.is_some_and(|at| st.held <= at) {
                st.drain_at = None;
                self.drained.notify_one();
            }
            return Poll::Ready(Ok(()));
        }
        if st.fin {
            return Poll::Ready(Ok(()));
        }
        if let Some(why) = st.broken {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, why)));
        }
        st.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Rx {
    fn drop(&mut self) {
        let held = self.lock().held;
        if let Some(o) = &self.overdraft {
            o.moved(held, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    async fn read(rx: &Rx, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        let mut rb = ReadBuf::new(&mut b);
        poll_fn(|cx| rx.poll_read(cx, &mut rb)).await.expect("read");
        let k = rb.filled().len();
        b.truncate(k);
        b
    }

    /// A hundred thousand one-byte frames cost about their bytes, not a buffer each; one read
    /// takes many of them at once; reading everything frees every charge.
    #[tokio::test]
    async fn one_byte_frames_are_charged_and_read_in_bulk() {
        let rx = Rx::default();
        for i in 0..100_000u32 {
            rx.push_copy(&[i as u8]);
        }
        let held = rx.held();
        // 25 chunks of 4 KiB hold them (a buffer each would be 100,000 pieces).
        assert!(held >= 100_000, "the charge covers the bytes: {held}");
        assert!(held <= 100_000 + 26 * (CHUNK + PIECE_COST), "{held}");
        let got = read(&rx, 64 * 1024).await;
        assert_eq!(got.len(), 64 * 1024, "one read drains across pieces");
        assert!(got.iter().enumerate().all(|(i, &b)| b == i as u8));
        let rest = read(&rx, 64 * 1024).await;
        assert_eq!(rest.len(), 100_000 - 64 * 1024);
        assert_eq!(rx.held(), 0);
    }

    /// What streams hold beyond their shares is summed for the session, and given back as
    /// their readers take it, when one is closed, and when one goes away.
    #[tokio::test]
    async fn the_session_account_follows_what_streams_hold_past_their_share() {
        let o = Arc::new(Overdraft::new(10_000));
        let (a, b) = (Rx::new(false, o.clone()), Rx::new(false, o.clone()));
        a.push_owned(BytesMut::zeroed(8_000));
        assert_eq!(o.over(), 0, "within its share");
        let held = a.push_owned(BytesMut::zeroed(8_000));
        assert_eq!(o.over(), held - 10_000);
        let b_held = b.push_owned(BytesMut::zeroed(30_000));
        assert_eq!(o.over(), held - 10_000 + b_held - 10_000);
        assert_eq!(read(&a, 8_000).await.len(), 8_000);
        assert_eq!(o.over(), b_held - 10_000, "a is back within its share");
        b.kill("closed");
        assert_eq!(o.over(), 0);
        b.push_owned(BytesMut::zeroed(30_000));
        assert!(o.over() > 0);
        drop(b);
        assert_eq!(o.over(), 0, "a stream gone gives back what it held");
    }

    /// Large frames keep their own buffers (no copy) and are charged what they allocated;
    /// an empty frame queues nothing and ends nothing.
    #[tokio::test]
    async fn large_frames_keep_their_buffers_and_empty_ones_are_nothing() {
        let rx = Rx::default();
        rx.push_copy(b"abc");
        let mut big = BytesMut::zeroed(32 * 1024);
        big[0] = 7;
        let ptr = big.as_ptr();
        assert!(rx.push_owned(big) >= 32 * 1024 + 3);
        assert_eq!(rx.lock().queue.back().map(|p| p.data.as_ptr()), Some(ptr));
        let before = rx.held();
        rx.push_copy(b"");
        rx.push_owned(BytesMut::new());
        assert_eq!(rx.held(), before);
        rx.push_copy(b"def");
        rx.end(true, None);
        let mut all = Vec::new();
        loop {
            let got = read(&rx, 10_000).await;
            if got.is_empty() {
                break;
            }
            all.extend_from_slice(&got);
        }
        assert_eq!(&all[..4], b"abc\x07");
        assert_eq!(&all[all.len() - 3..], b"def");
        assert_eq!(all.len(), 32 * 1024 + 6);
    }
}
