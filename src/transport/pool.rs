//! Copy buffers of [`POOL_BUFFER`] bytes, kept per thread between the bursts of the streams
//! that use them (relay directions, WebSocket frames being written).

use std::cell::RefCell;

use super::relay::RELAY_BUFFER;

/// Size of the buffers in the per-thread pool: a relay buffer and room for a frame header,
/// so the WebSocket layer can frame a whole relay write in one pooled buffer.
pub const POOL_BUFFER: usize = RELAY_BUFFER + 64;

/// At most this many idle bytes of buffers per thread; more are freed.
const KEEP_BYTES: usize = 4 << 20;
const KEEP: usize = KEEP_BYTES / POOL_BUFFER;

thread_local! {
    static FREE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

#[cfg(test)]
thread_local! {
    static MADE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A buffer of [`POOL_BUFFER`] bytes (zeroed when newly made).
pub(crate) fn take() -> Box<[u8]> {
    FREE.with_borrow_mut(Vec::pop).unwrap_or_else(|| {
        #[cfg(test)]
        MADE.set(MADE.get() + 1);
        vec![0u8; POOL_BUFFER].into_boxed_slice()
    })
}

/// Buffers this thread has allocated so far.
#[cfg(test)]
pub(crate) fn made() -> usize {
    MADE.get()
}

/// Buffers waiting in this thread's pool.
#[cfg(test)]
pub(crate) fn idle() -> usize {
    FREE.with_borrow(Vec::len)
}

/// Returns a buffer from [`take`]; one that was resized is freed instead.
pub(crate) fn give(buf: Box<[u8]>) {
    FREE.with_borrow_mut(|free| {
        if buf.len() == POOL_BUFFER && free.len() < KEEP {
            free.push(buf);
        }
    });
}
