//! One user of the mu-server: its path, destination and limits, and what outlives an edit of
//! them ([`Shared`]): live tunnels and connections and the clients they come from, byte
//! counters (and what of them the fleet has), the quota's count, the rate's bucket, the kick.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;

use super::limits::{Bucket, Limits, Refusal};
use crate::addr::HostPort;

/// One user: a path, where its tunnels go, and its limits.
#[derive(Debug)]
pub struct User {
    /// WebSocket path, with its leading `/`.
    pub path: String,
    /// Destination of the user's tunnels.
    pub dst: HostPort,
    /// What the operator set.
    pub limits: Limits,
    pub(super) shared: Arc<Shared>,
}

/// What a user's successors under the same path take over: an edit changes the destination
/// or the limits, not what the user has used or has open.
#[derive(Debug, Default)]
pub struct Shared {
    kick: CancellationToken,
    /// Ends the tunnels open now when a limit is reached (a child of `kick`); replaced by a
    /// fresh one once fired, for the tunnels after a reset.
    ends: std::sync::Mutex<CancellationToken>,
    live: AtomicU64,
    connections: AtomicU32,
    up: AtomicU64,
    down: AtomicU64,
    /// What of `up`/`down` has been counted into `used_*` (and, in a fleet, Redis).
    flushed_up: AtomicU64,
    flushed_down: AtomicU64,
    /// The quota's period the `used_*` counts are for.
    window: AtomicU64,
    /// Flushed bytes of this period: this server's, or the fleet's as Redis last said.
    used_up: AtomicU64,
    used_down: AtomicU64,
    /// The current limits that the hot path reads: quotas (`u64::MAX`: none) and the rate
    /// (0: none).
    quota: [AtomicU64; 3],
    rate: AtomicU64,
    bucket: std::sync::Mutex<Bucket>,
    /// The refusal last acted on (logged once per change).
    pub(super) state: std::sync::Mutex<Option<Refusal>>,
    /// The client addresses of the live tunnels (real ones, behind trusted proxies), with
    /// how many tunnels each has.
    clients: std::sync::Mutex<HashMap<std::net::IpAddr, u32>>,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl User {
    pub(super) fn new(path: String, dst: HostPort, limits: Limits) -> Arc<Self> {
        Self::replacing(path, dst, limits, None)
    }

    /// A user for `path`, taking over what the user it replaces had: counters, live tunnels
    /// and the kick (a kick after a replacement ends the tunnels opened before it too).
    pub(super) fn replacing(
        path: String,
        dst: HostPort,
        limits: Limits,
        old: Option<&Arc<User>>,
    ) -> Arc<Self> {
        let shared = match old {
            Some(u) => u.shared.clone(),
            None => {
                let s = Shared::default();
                *lock(&s.ends) = s.kick.child_token();
                Arc::new(s)
            }
        };
        let user = User {
            path,
            dst,
            limits,
            shared,
        };
        user.publish_limits();
        Arc::new(user)
    }

    /// Makes this user's limits the ones its tunnels read.
    pub(super) fn publish_limits(&self) {
        let l = &self.limits;
        let s = &self.shared;
        for (slot, q) in s.quota.iter().zip([l.quota, l.quota_up, l.quota_down]) {
            slot.store(q.unwrap_or(u64::MAX), Ordering::Relaxed);
        }
        s.rate.store(l.rate.unwrap_or(0), Ordering::Relaxed);
    }

    /// Fires when the user is removed with kick: live tunnels end.
    pub fn kicked(&self) -> &CancellationToken {
        &self.shared.kick
    }

    /// Fires when the tunnels open now are to end: a kick, or a limit reached.
    pub fn ends(&self) -> CancellationToken {
        lock(&self.shared.ends).clone()
    }

    /// Counts a tunnel from `client` for as long as the guard lives.
    pub fn tunnel_from(self: &Arc<Self>, client: Option<std::net::IpAddr>) -> LiveGuard {
        self.shared.live.fetch_add(1, Ordering::Relaxed);
        if let Some(ip) = client {
            *lock(&self.shared.clients).entry(ip).or_default() += 1;
        }
        LiveGuard(self.shared.clone(), client)
    }

    /// A connection's seat, if the user has one free under `max_connections`.
    pub(super) fn seat(&self) -> Option<Seat> {
        let max = self.limits.max_connections.unwrap_or(u32::MAX);
        self.shared
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Seat(self.shared.clone()))
    }

    /// The addresses the user's live tunnels come from, sorted.
    pub fn clients(&self) -> Vec<std::net::IpAddr> {
        let mut v: Vec<_> = lock(&self.shared.clients).keys().copied().collect();
        v.sort();
        v
    }

    /// (live tunnels, bytes up, bytes down), on this server.
    pub fn counters(&self) -> (u64, u64, u64) {
        let s = &self.shared;
        (
            s.live.load(Ordering::Relaxed),
            s.up.load(Ordering::Relaxed),
            s.down.load(Ordering::Relaxed),
        )
    }

    /// Open connections (what `max_connections` counts).
    pub fn connections(&self) -> u32 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Bytes (up, down) used in the quota's current period, as far as this server knows.
    pub fn used(&self) -> (u64, u64) {
        self.shared.used()
    }

    /// Why the user opens nothing now, if so (the connection cap aside).
    pub fn refusal(&self, now: u64) -> Option<Refusal> {
        self.limits.refusal(now, self.used())
    }

    /// The rate's state, for the tunnels' throttle.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl Shared {
    fn add_bytes(&self, up: u64, down: u64) {
        self.up.fetch_add(up, Ordering::Relaxed);
        self.down.fetch_add(down, Ordering::Relaxed);
        let q = |i: usize| self.quota[i].load(Ordering::Relaxed);
        let (total, q_up, q_down) = (q(0), q(1), q(2));
        if (total, q_up, q_down) != (u64::MAX, u64::MAX, u64::MAX) {
            let (u, d) = self.used();
            if u.saturating_add(d) >= total || u >= q_up || d >= q_down {
                self.end_tunnels();
            }
        }
    }

    fn used(&self) -> (u64, u64) {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (
            l(&self.used_up) + l(&self.up).saturating_sub(l(&self.flushed_up)),
            l(&self.used_down) + l(&self.down).saturating_sub(l(&self.flushed_down)),
        )
    }

    /// Ends the tunnels open now (if any); later ones get a fresh token.
    pub(super) fn end_tunnels(&self) {
        let mut ends = lock(&self.ends);
        if !ends.is_cancelled() {
            ends.cancel();
        }
        *ends = self.kick.child_token();
    }

    /// Whether any tunnel or connection is open.
    pub(super) fn in_use(&self) -> bool {
        self.live.load(Ordering::Relaxed) > 0 || self.connections.load(Ordering::Relaxed) > 0
    }

    /// The user's rate (bytes/s), 0 for none.
    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    /// The rate's bucket.
    pub fn bucket(&self) -> std::sync::MutexGuard<'_, Bucket> {
        lock(&self.bucket)
    }

    /// Counts bytes a tunnel of the user moved.
    pub fn count(&self, up: u64, down: u64) {
        self.add_bytes(up, down);
    }
}

impl User {
    /// The bytes moved since the last call (up, down), marked as flushed.
    pub(super) fn take_unflushed(&self) -> (u64, u64) {
        let s = &self.shared;
        let up = s.up.load(Ordering::Relaxed);
        let down = s.down.load(Ordering::Relaxed);
        (
            up - s.flushed_up.swap(up, Ordering::Relaxed),
            down - s.flushed_down.swap(down, Ordering::Relaxed),
        )
    }

    /// Gives back what [`User::take_unflushed`] took, when it could not be flushed.
    pub(super) fn unflush(&self, up: u64, down: u64) {
        self.shared.flushed_up.fetch_sub(up, Ordering::Relaxed);
        self.shared.flushed_down.fetch_sub(down, Ordering::Relaxed);
    }

    /// The quota's period at `now`.
    pub(super) fn window(&self, now: u64) -> u64 {
        self.limits.window(now)
    }

    /// Counts flushed bytes into the period `window` on this server alone: a new period
    /// starts from zero.
    pub(super) fn count_used(&self, window: u64, up: u64, down: u64) {
        let s = &self.shared;
        if s.window.swap(window, Ordering::Relaxed) != window {
            s.used_up.store(0, Ordering::Relaxed);
            s.used_down.store(0, Ordering::Relaxed);
        }
        s.used_up.fetch_add(up, Ordering::Relaxed);
        s.used_down.fetch_add(down, Ordering::Relaxed);
    }

    /// Takes the fleet's count of the period `window` (what Redis answered a flush with).
    pub(super) fn set_used(&self, window: u64, up: u64, down: u64) {
        let s = &self.shared;
        s.window.store(window, Ordering::Relaxed);
        s.used_up.store(up, Ordering::Relaxed);
        s.used_down.store(down, Ordering::Relaxed);
    }

    /// (period, used up, used down) as flushed, for saving.
    pub(super) fn flushed_usage(&self) -> (u64, u64, u64) {
        let s = &self.shared;
        (
            s.window.load(Ordering::Relaxed),
            s.used_up.load(Ordering::Relaxed),
            s.used_down.load(Ordering::Relaxed),
        )
    }
}

/// Keeps a user's live-tunnel count up while it exists.
pub struct LiveGuard(Arc<Shared>, Option<std::net::IpAddr>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.1 {
            let mut clients = lock(&self.0.clients);
            if let Some(n) = clients.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    clients.remove(&ip);
                }
            }
        }
    }
}

/// One of a user's connections, counted against `max_connections` while it lives.
#[derive(Debug)]
pub struct Seat(Arc<Shared>);

impl Drop for Seat {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a routed tunnel carries: its user (the current one of its path) and the seat of the
/// connection it came on, shared by that connection's streams.
#[derive(Debug, Clone)]
pub struct Pass {
    pub user: Arc<User>,
    pub(super) seat: Option<Arc<Seat>>,
}
