//! What waits for an association's tunnel (its queue of framed datagrams, bounded in bytes
//! per association and for all together), and what may start a new association (a token
//! bucket).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::BytesMut;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Framed bytes waiting for one association's tunnel (enough to ride out the tunnel's writer
/// being off the CPU for some milliseconds at 1.5 Gbit/s); datagrams beyond are dropped (and
/// counted). Only bytes limit the queue: however many rounds of receiving a stalled writer
/// misses, it finds what they brought in one buffer and writes it in one go.
pub(super) const QUEUE_BYTES: usize = 4 << 20;
/// Framed bytes waiting for all associations together.
const TOTAL_QUEUE_BYTES: usize = 64 << 20;
/// The frames waiting for one association's tunnel: appended by the receiving loop once a
/// round, taken all at once by the association's writer. A round's buffer is handed over
/// whole (no copy) unless the last one waiting has room for it; written buffers come back
/// for later rounds, so nothing is allocated or copied twice per round.
pub(super) struct Queue {
    inner: Mutex<Waiting>,
    /// Rung when frames were appended.
    pub(super) ready: Notify,
    /// Bytes waiting here, readable without the lock.
    own: AtomicUsize,
    /// Bytes waiting for all associations together.
    all: Arc<AtomicUsize>,
}

#[derive(Default)]
struct Waiting {
    chunks: Vec<BytesMut>,
    /// Emptied buffers, for the receiving loop to fill again.
    spare: Vec<BytesMut>,
    /// The association has ended: nothing more is taken.
    closed: bool,
}

/// Emptied buffers kept per association: one is what a writer that keeps up needs (the
/// receiving loop fills one while the writer writes the other); more would hold memory for
/// every association that once saw a burst.
const SPARE_BUFFERS: usize = 1;

impl Queue {
    pub(super) fn new(all: Arc<AtomicUsize>) -> Self {
        Queue {
            inner: Mutex::new(Waiting::default()),
            ready: Notify::new(),
            own: AtomicUsize::new(0),
            all,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `more` bytes would overfill this queue or all of them together.
    pub(super) fn full_for(&self, more: usize) -> bool {
        self.own.load(Ordering::Relaxed) + more > QUEUE_BYTES
            || self.all.load(Ordering::Relaxed) + more > TOTAL_QUEUE_BYTES
    }

    /// Appends `frames`, which is left empty (a spare buffer where one is at hand). `Err` if
    /// the association has ended: the frames stay in `frames`.
    pub(super) fn append(&self, frames: &mut BytesMut) -> Result<(), ()> {
        let len = frames.len();
        {
            let mut w = self.lock();
            if w.closed {
                return Err(());
            }
            match w.chunks.last_mut() {
                Some(last) if last.capacity() - last.len() >= len => {
                    last.extend_from_slice(frames);
                    frames.clear();
                }
                _ => {
                    let next = w.spare.pop().unwrap_or_default();
                    w.chunks.push(std::mem::replace(frames, next));
                }
            }
            self.own.fetch_add(len, Ordering::Relaxed);
            self.all.fetch_add(len, Ordering::Relaxed);
        }
        self.ready.notify_one();
        Ok(())
    }

    /// Everything waiting, in order, into `out` (empty if nothing).
    pub(super) fn take(&self, out: &mut Vec<BytesMut>) {
        std::mem::swap(&mut self.lock().chunks, out);
        self.forget(out.iter().map(|c| c.len()).sum());
    }

    /// Buffers written out, to be filled again.
    pub(super) fn give_back(&self, written: &mut Vec<BytesMut>) {
        let mut w = self.lock();
        for mut c in written.drain(..) {
            if w.spare.len() == SPARE_BUFFERS {
                break;
            }
            c.clear();
            w.spare.push(c);
        }
        written.clear();
    }

    /// Takes nothing more; what waits is returned (no longer held against the limits).
    pub(super) fn close(&self) -> Vec<BytesMut> {
        let mut left = Vec::new();
        {
            let mut w = self.lock();
            w.closed = true;
            w.spare.clear();
            std::mem::swap(&mut w.chunks, &mut left);
        }
        self.forget(left.iter().map(|c| c.len()).sum());
        left
    }

    fn forget(&self, n: usize) {
        self.own.fetch_sub(n, Ordering::Relaxed);
        self.all.fetch_sub(n, Ordering::Relaxed);
    }
}

/// A token bucket: `rate` a second, as many at once; a rate of 0 allows everything.
pub(super) struct Bucket {
    rate: u32,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub(super) fn new(rate: u32) -> Self {
        Bucket {
            rate,
            tokens: f64::from(rate),
            at: Instant::now(),
        }
    }

    /// Takes a token if one is there.
    pub(super) fn take(&mut self) -> bool {
        if self.rate == 0 {
            return true;
        }
        let now = Instant::now();
        let rate = f64::from(self.rate);
        let earned = now.duration_since(self.at).as_secs_f64() * rate;
        self.tokens = (self.tokens + earned).min(rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame;
    use super::*;
    use bytes::BufMut;

    /// The bucket allows its rate at once, then its rate a second; 0 is no limit.
    #[tokio::test(start_paused = true)]
    async fn new_associations_are_allowed_at_the_rate() {
        let mut b = Bucket::new(10);
        assert_eq!(
            (0..100).filter(|_| b.take()).count(),
            10,
            "a burst of the rate"
        );
        tokio::time::advance(std::time::Duration::from_millis(500)).await;
        assert_eq!(
            (0..100).filter(|_| b.take()).count(),
            5,
            "half a second: half the rate"
        );
        tokio::time::advance(std::time::Duration::from_secs(60)).await;
        assert_eq!(
            (0..100).filter(|_| b.take()).count(),
            10,
            "never more than the rate saved"
        );
        let mut free = Bucket::new(0);
        assert!((0..10_000).all(|_| free.take()));
    }

    /// Frames a tunnel's writer has not taken yet are limited by bytes only: a thousand rounds
    /// of one small datagram each wait whole, in order, and come out in one take; the
    /// association's own limit holds; a closed queue returns what waited and takes no more.
    #[test]
    fn a_stalled_writer_finds_every_round_in_one_buffer() {
        let all = Arc::new(AtomicUsize::new(0));
        let q = Queue::new(all.clone());
        let mut round = BytesMut::new();
        for i in 0..1000u16 {
            round.reserve(96 * 1024);
            round.put_u16(2);
            round.put_u16(i);
            q.append(&mut round).expect("open");
            assert!(round.is_empty(), "the round's frames were handed over");
        }
        assert_eq!(all.load(Ordering::Relaxed), 4000);
        let mut b = Vec::new();
        q.take(&mut b);
        assert_eq!(b.len(), 1, "small rounds went into the room of the first");
        assert_eq!(frame::frames_in(&b[0]), 1000);
        assert!(
            b[0].chunks(4)
                .enumerate()
                .all(|(i, f)| f[2..] == (i as u16).to_be_bytes())
        );
        assert_eq!(
            all.load(Ordering::Relaxed),
            0,
            "taken bytes no longer count"
        );
        q.give_back(&mut b);
        q.take(&mut b);
        assert!(b.is_empty());

        assert!(!q.full_for(QUEUE_BYTES));
        round.put_slice(&vec![0; QUEUE_BYTES - 10]);
        q.append(&mut round).expect("open");
        assert!(q.full_for(11), "the association's limit");
        assert!(!q.full_for(10));

        round.put_slice(&[0, 1, 7]);
        let left = q.close();
        assert_eq!(
            left.iter().map(|c| c.len()).sum::<usize>(),
            QUEUE_BYTES - 10
        );
        assert!(q.append(&mut round).is_err(), "closed");
        assert_eq!(
            &round[..],
            &[0, 1, 7],
            "refused frames stay with the caller"
        );
        assert_eq!(all.load(Ordering::Relaxed), 0);
    }
}
