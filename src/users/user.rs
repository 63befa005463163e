//! One user of the mu-server: its path and destination, its live tunnels and the clients
//! they come from, its byte counters (and what of them the fleet has), and its kick.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;

use crate::addr::HostPort;

/// One user: a path and where its tunnels go.
#[derive(Debug)]
pub struct User {
    /// WebSocket path, with its leading `/`.
    pub path: String,
    /// Destination of the user's tunnels.
    pub dst: HostPort,
    pub(super) kick: CancellationToken,
    live: AtomicU64,
    up: AtomicU64,
    down: AtomicU64,
    /// What of `up`/`down` has been added to the fleet's totals (Redis).
    flushed_up: AtomicU64,
    flushed_down: AtomicU64,
    /// The client addresses of the live tunnels (real ones, behind trusted proxies), with
    /// how many tunnels each has.
    clients: std::sync::Mutex<HashMap<std::net::IpAddr, u32>>,
}

impl User {
    pub(super) fn new(path: String, dst: HostPort) -> Arc<Self> {
        Self::replacing(path, dst, None)
    }

    /// A user for `path`, taking over the kick handle of the user it replaces: a kick after
    /// a replacement ends the tunnels opened before it too.
    pub(super) fn replacing(path: String, dst: HostPort, old: Option<&Arc<User>>) -> Arc<Self> {
        Arc::new(User {
            path,
            dst,
            kick: old.map(|u| u.kick.clone()).unwrap_or_default(),
            live: AtomicU64::new(0),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            flushed_up: AtomicU64::new(0),
            flushed_down: AtomicU64::new(0),
            clients: Default::default(),
        })
    }

    /// Fires when the user is removed with kick: live tunnels end.
    pub fn kicked(&self) -> &CancellationToken {
        &self.kick
    }

    /// Counts a tunnel from `client` for as long as the guard lives.
    pub fn tunnel_from(self: &Arc<Self>, client: Option<std::net::IpAddr>) -> LiveGuard {
        self.live.fetch_add(1, Ordering::Relaxed);
        if let Some(ip) = client {
            *self.lock_clients().entry(ip).or_default() += 1;
        }
        LiveGuard(self.clone(), client)
    }

    fn lock_clients(&self) -> std::sync::MutexGuard<'_, HashMap<std::net::IpAddr, u32>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The addresses the user's live tunnels come from, sorted.
    pub fn clients(&self) -> Vec<std::net::IpAddr> {
        let mut v: Vec<_> = self.lock_clients().keys().copied().collect();
        v.sort();
        v
    }

    /// Adds bytes the user's tunnels moved (as they move).
    pub fn add_bytes(&self, up: u64, down: u64) {
        self.up.fetch_add(up, Ordering::Relaxed);
        self.down.fetch_add(down, Ordering::Relaxed);
    }

    /// (live tunnels, bytes up, bytes down).
    pub fn counters(&self) -> (u64, u64, u64) {
        (
            self.live.load(Ordering::Relaxed),
            self.up.load(Ordering::Relaxed),
            self.down.load(Ordering::Relaxed),
        )
    }
}

impl User {
    /// The bytes moved since the last call (up, down), marked as flushed.
    pub(super) fn take_unflushed(&self) -> (u64, u64) {
        let up = self.up.load(Ordering::Relaxed);
        let down = self.down.load(Ordering::Relaxed);
        (
            up - self.flushed_up.swap(up, Ordering::Relaxed),
            down - self.flushed_down.swap(down, Ordering::Relaxed),
        )
    }

    /// Gives back what [`User::take_unflushed`] took, when it could not be flushed.
    pub(super) fn unflush(&self, up: u64, down: u64) {
        self.flushed_up.fetch_sub(up, Ordering::Relaxed);
        self.flushed_down.fetch_sub(down, Ordering::Relaxed);
    }
}

/// Keeps a user's live-tunnel count up while it exists.
pub struct LiveGuard(Arc<User>, Option<std::net::IpAddr>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.1 {
            let mut clients = self.0.lock_clients();
            if let Some(n) = clients.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    clients.remove(&ip);
                }
            }
        }
    }
}
