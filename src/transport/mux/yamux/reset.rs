//! Stream resets yamux does not send: a stream dropped after its FIN (a relay that failed on
//! its other direction) is forgotten by yamux without a word, so a peer blocked writing into
//! it (no window left) or reading from it waits for ever. [`Resets`] notes such streams and
//! the connection's writer ([`super::Coalesce`]) puts an RST frame for each on the wire right
//! after the stream's FIN frame, at a frame boundary it finds with [`FrameTracker`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// yamux frame header: version, type, flags (2), stream id (4), length (4).
pub(super) const HEADER: usize = 12;
const TYPE_DATA: u8 = 0;
const TYPE_WINDOW_UPDATE: u8 = 1;
const FLAG_FIN: u16 = 0x4;
const FLAG_RST: u16 = 0x8;

/// An RST frame for stream `id` (a data frame without body).
pub(super) fn rst_frame(id: u32) -> [u8; HEADER] {
    let mut f = [0u8; HEADER];
    f[1] = TYPE_DATA;
    f[2..4].copy_from_slice(&FLAG_RST.to_be_bytes());
    f[4..8].copy_from_slice(&id.to_be_bytes());
    f
}

/// The keepalive frame (`-ping`): a reset of stream 0, which no stream ever has, so every
/// yamux peer ignores it (an mtt peer notes that its peer pings too).
pub(super) fn keepalive_frame() -> [u8; HEADER] {
    rst_frame(0)
}

/// Where a half-closed stream of ours stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fin {
    /// Our FIN was asked for; its frame has not passed the writer yet.
    Asked,
    /// Its frame has been written.
    Written,
    /// The stream was dropped before its FIN frame passed: reset right after it.
    ResetAfter,
}

/// The resets one connection owes, shared by its streams and its writer.
#[derive(Debug, Default)]
pub(super) struct Resets {
    state: Mutex<State>,
    /// Whether `state.due` has anything: the writer asks on every write, without the lock.
    any: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    /// Our half-closed streams (bounded by the streams alive).
    fins: HashMap<u32, Fin>,
    /// RST frames to write at the next frame boundary.
    due: Vec<u32>,
}

impl Resets {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing is left half-updated under this lock; a panic elsewhere cannot poison it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Our side of stream `id` is being closed (FIN asked for).
    pub(super) fn fin_asked(&self, id: u32) {
        self.lock().fins.entry(id).or_insert(Fin::Asked);
    }

    /// The writer passed a frame carrying FIN for `id`.
    pub(super) fn fin_written(&self, id: u32) {
        let mut s = self.lock();
        match s.fins.get(&id) {
            Some(Fin::Asked) => {
                s.fins.insert(id, Fin::Written);
            }
            Some(Fin::ResetAfter) => {
                s.fins.remove(&id);
                s.due.push(id);
                self.any.store(true, Ordering::Release);
            }
            Some(Fin::Written) | None => {}
        }
    }

    /// Stream `id` is dropped. `half_open`: we sent FIN but the peer has not, so the peer may
    /// still be writing into it (or reading from it) and must be told the stream is gone.
    pub(super) fn dropped(&self, id: u32, half_open: bool) {
        let mut s = self.lock();
        let fin = s.fins.remove(&id);
        if !half_open {
            return;
        }
        match fin {
            Some(Fin::Written) => {
                s.due.push(id);
                self.any.store(true, Ordering::Release);
            }
            Some(Fin::Asked) | Some(Fin::ResetAfter) => {
                s.fins.insert(id, Fin::ResetAfter);
            }
            // A stream yamux closed without us: it sends what is needed itself.
            None => {}
        }
    }

    /// RST frames due now, if any.
    pub(super) fn take_due(&self) -> Vec<u32> {
        let mut s = self.lock();
        self.any.store(false, Ordering::Release);
        std::mem::take(&mut s.due)
    }

    /// Whether anything is due (cheap check for the writer's hot path).
    pub(super) fn any_due(&self) -> bool {
        self.any.load(Ordering::Acquire)
    }
}

/// Follows the frames of a yamux byte stream as it is written, to find frame boundaries and
/// the FIN frames of streams.
#[derive(Debug, Default)]
pub(super) struct FrameTracker {
    header: [u8; HEADER],
    have: usize,
    body_left: u64,
}

impl FrameTracker {
    /// Whether the bytes seen so far end exactly at a frame boundary.
    pub(super) fn at_boundary(&self) -> bool {
        self.have == 0 && self.body_left == 0
    }

    /// Takes `bytes` written after those seen before; calls `fin` with the stream id of every
    /// frame header carrying FIN.
    pub(super) fn feed(&mut self, bytes: &[u8], mut fin: impl FnMut(u32)) {
        self.headers(bytes, |kind, flags, id| {
            if (kind == TYPE_DATA || kind == TYPE_WINDOW_UPDATE) && flags & FLAG_FIN != 0 {
                fin(id);
            }
        });
    }

    /// Whether the frame header `(kind, flags, id)` is a keepalive ([`keepalive_frame`]).
    pub(super) fn is_keepalive(kind: u8, flags: u16, id: u32) -> bool {
        kind == TYPE_DATA && flags & FLAG_RST != 0 && id == 0
    }

    /// Takes `bytes` following those seen before; calls `header` with (type, flags, stream
    /// id) of every whole frame header.
    pub(super) fn headers(&mut self, mut bytes: &[u8], mut header: impl FnMut(u8, u16, u32)) {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let skip = self.body_left.min(bytes.len() as u64) as usize;
                self.body_left -= skip as u64;
                bytes = &bytes[skip..];
                continue;
            }
            let take = (HEADER - self.have).min(bytes.len());
            self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
            self.have += take;
            bytes = &bytes[take..];
            if self.have < HEADER {
                return;
            }
            self.have = 0;
            let h = &self.header;
            let kind = h[1];
            let flags = u16::from_be_bytes([h[2], h[3]]);
            let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
            let len = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
            if kind == TYPE_DATA {
                self.body_left = u64::from(len);
            }
            header(kind, flags, id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u16, id: u32, body: &[u8]) -> Vec<u8> {
        let mut f = vec![0, kind];
        f.extend_from_slice(&flags.to_be_bytes());
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(&(body.len() as u32).to_be_bytes());
        if kind == TYPE_DATA {
            f.extend_from_slice(body);
        }
        f
    }

    /// Frames cut anywhere: boundaries and FINs are found all the same.
    #[test]
    fn the_tracker_follows_frames_cut_anywhere() {
        let mut wire = frame(TYPE_DATA, 0, 1, &[7; 300]);
        wire.extend(frame(TYPE_WINDOW_UPDATE, 0, 3, &[0; 4]));
        wire.extend(frame(TYPE_DATA, FLAG_FIN, 5, &[]));
        wire.extend(frame(TYPE_DATA, FLAG_FIN, 7, &[1; 10]));
        for cut in [1, 5, 12, 13, 100] {
            let mut t = FrameTracker::default();
            let mut fins = Vec::new();
            for chunk in wire.chunks(cut) {
                t.feed(chunk, |id| fins.push(id));
            }
            assert_eq!(fins, [5, 7], "cut {cut}");
            assert!(t.at_boundary(), "cut {cut}");
        }
        let mut t = FrameTracker::default();
        t.feed(&wire[..20], |_| {});
        assert!(!t.at_boundary());
    }

    /// A stream dropped while half-open is reset once, after its FIN; one closed both ways,
    /// or never closed by us, is not.
    #[test]
    fn resets_follow_the_fin() {
        let r = Resets::default();
        r.fin_asked(1);
        r.fin_written(1);
        r.dropped(1, true);
        assert_eq!(r.take_due(), [1]);
        r.fin_asked(3);
        r.dropped(3, true);
        assert!(!r.any_due(), "not before its FIN is on the wire");
        r.fin_written(3);
        assert_eq!(r.take_due(), [3]);
        r.fin_asked(5);
        r.fin_written(5);
        r.dropped(5, false);
        r.dropped(9, true);
        assert!(r.take_due().is_empty());
        assert!(r.lock().fins.is_empty(), "nothing kept for dropped streams");
        assert_eq!(rst_frame(5), [0, 0, 0, 8, 0, 0, 0, 5, 0, 0, 0, 0]);
    }
}
