//! The sessions a server keeps for 0-RTT resumption: each taken once (so a replayed hello
//! finds its session gone), the oldest forgotten first, every step O(1).
//!
//! rustls's own `ServerSessionMemoryCache` forgets in order too, but finds a taken session's
//! place in its order by a linear search: with thousands kept, a resumption's `take`
//! compared keys for longer than its key exchange took (measured: 8 % of a server's CPU
//! under new resumed tunnels).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use rustls::server::StoresServerSessions;

/// A session's key: rustls makes each a random 32 bytes (TLS 1.3 tickets, TLS 1.2 ids).
type Key = [u8; 32];

/// At most `limit` sessions, each resumed once.
#[derive(Debug)]
pub struct SingleUse {
    limit: usize,
    kept: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    /// The number of the next session put.
    next: u64,
    /// Each session by its key, with its number.
    sessions: HashMap<Key, (u64, Vec<u8>)>,
    /// Keys in the order they were put, with their numbers; a taken session's entry stays
    /// until it comes to the front (at most twice `limit` entries).
    order: VecDeque<(u64, Key)>,
}

impl SingleUse {
    /// A store of at most `limit` sessions (none held until the first is put).
    pub fn new(limit: usize) -> Self {
        SingleUse {
            limit,
            kept: Mutex::default(),
        }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl StoresServerSessions for SingleUse {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let Ok(key) = Key::try_from(key.as_slice()) else {
            return false;
        };
        let mut k = self.kept();
        let n = k.next;
        k.next += 1;
        k.sessions.insert(key, (n, value));
        k.order.push_back((n, key));
        while k.sessions.len() > self.limit || k.order.len() > 2 * self.limit {
            let Some((n, old)) = k.order.pop_front() else {
                break;
            };
            if k.sessions.get(&old).is_some_and(|(m, _)| *m == n) {
                k.sessions.remove(&old);
            }
        }
        true
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let key = Key::try_from(key).ok()?;
        self.kept().sessions.get(&key).map(|(_, v)| v.clone())
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        let key = Key::try_from(key).ok()?;
        self.kept().sessions.remove(&key).map(|(_, v)| v)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> Vec<u8> {
        vec![i; 32]
    }

    /// Taken once; the oldest forgotten past the limit, whether or not others were taken;
    /// keys of another length refused; TLS 1.2's `get` leaves the session in place.
    #[test]
    fn sessions_are_taken_once_and_the_oldest_forgotten() {
        let s = SingleUse::new(3);
        for i in 0..3 {
            assert!(s.put(key(i), vec![i]));
        }
        assert_eq!(s.get(&key(0)), Some(vec![0]));
        assert_eq!(s.take(&key(0)), Some(vec![0]));
        assert_eq!(s.take(&key(0)), None, "taken twice");
        assert_eq!(s.get(&key(0)), None);
        // 1 and 2 are kept; 3 and 4 make four: 1, the oldest, goes.
        assert!(s.put(key(3), vec![3]));
        assert_eq!(s.kept().sessions.len(), 3);
        assert!(s.put(key(4), vec![4]));
        assert_eq!(s.take(&key(1)), None, "the oldest is forgotten");
        for i in 2..5 {
            assert_eq!(s.take(&key(i)), Some(vec![i]));
        }
        assert!(!s.put(vec![9; 16], vec![9]), "a key of another length");
        assert_eq!(s.take(&[9; 16]), None);
    }

    /// Under churn (each resumption takes one and puts two) the order's stale entries stay
    /// bounded, and no kept session is lost before `limit` newer ones were put.
    #[test]
    fn churn_stays_bounded() {
        let limit = 64;
        let s = SingleUse::new(limit);
        let mut next = 0u32;
        let mut put = |s: &SingleUse| {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&next.to_be_bytes());
            next += 1;
            assert!(s.put(k.to_vec(), vec![1]));
            k
        };
        let mut live = std::collections::VecDeque::new();
        for _ in 0..10_000 {
            live.push_back(put(&s));
            live.push_back(put(&s));
            let k = live.pop_front().expect("one");
            let _ = s.take(&k);
            let kept = s.kept();
            assert!(kept.sessions.len() <= limit && kept.order.len() <= 2 * limit);
        }
        // The newest `limit / 2` are all there.
        let newest: Vec<_> = live.iter().rev().take(limit / 2).copied().collect();
        for k in newest {
            assert!(s.take(&k).is_some());
        }
    }
}
