//! A server's table kept in step with the fleet's Redis: started from it (or from the
//! snapshot while it is away), then followed through the change channel, the version check
//! and whole resyncs, with counters flushed meanwhile; every failure waits before the next try.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::super::{Backend, Change, Row, Users};
use super::{
    CONNECT_LIMIT, FLUSH_EVERY, RETRY_MAX, RETRY_MIN, RedisOptions, Store, parse_announced,
    unreachable_at,
};
use crate::{Error, Result};

impl Users {
    /// The table from the fleet's Redis: fetched whole at start. If Redis cannot be reached,
    /// the snapshot (if given and present) is started from; otherwise an error.
    pub async fn open_redis(opts: RedisOptions) -> Result<Arc<Users>> {
        let store = match Store::connect(opts.clone()).await {
            Ok(s) => s,
            Err(e @ Error::Usage(_)) => return Err(e),
            Err(e) => {
                let Some(snap) = opts.snapshot.as_ref().filter(|p| p.exists()) else {
                    return Err(match &opts.snapshot {
                        // Given, but never written: it is written once Redis has answered.
                        Some(snap) => Error::runtime(format!(
                            "-users-redis {}: Redis cannot be reached, and -users-redis-snapshot {} does not exist yet (it is written once Redis has answered): start Redis, or check the URL",
                            super::redacted(&opts.url),
                            snap.display()
                        )),
                        None => e,
                    });
                };
                log::warn!(
                    "{}; starting from the snapshot {}",
                    e.report(),
                    snap.display()
                );
                return Self::from_snapshot(opts).await;
            }
        };
        let (version, entries) = store
            .fetch()
            .await
            .map_err(|e| unreachable_at(&opts.url, &e.to_string()))?;
        let users = Self::with_store(Arc::new(store));
        users.replace_all(version, entries).await;
        Ok(users)
    }

    fn with_store(store: Arc<Store>) -> Arc<Users> {
        Users::with(Backend::Redis(store), HashMap::new())
    }

    /// Starts from the snapshot while Redis is away; the store reconnects by itself (a
    /// connection manager made without a live connection).
    async fn from_snapshot(opts: RedisOptions) -> Result<Arc<Users>> {
        let Some(snap) = opts.snapshot.clone() else {
            return Err(Error::runtime("no snapshot"));
        };
        let loaded = Users::load(Some(snap.clone()))?;
        let entries: Vec<Row> = loaded
            .list()
            .iter()
            .map(|u| (u.path.clone(), u.dst.clone(), u.limits.clone()))
            .collect();
        let age = std::fs::metadata(&snap)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_default();
        let synced = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        let users = Self::with_store(Arc::new(Store::lazy(opts, synced)?));
        // Version 0: the first resync takes Redis's table whole.
        users.replace_all(0, entries).await;
        Ok(users)
    }

    /// The store, when the users live in Redis.
    pub fn store(&self) -> Option<&Arc<Store>> {
        match &self.backend {
            Backend::Redis(store) => Some(store),
            _ => None,
        }
    }

    /// Takes `entries` as the whole table at `version`. Users whose destination is unchanged
    /// keep their counters and live tunnels; removed ones open nothing new.
    async fn replace_all(&self, version: u64, entries: Vec<Row>) {
        let mut at = self.writer.lock().await;
        self.take_whole(entries);
        *at = version;
    }

    /// Applies an announced change at `version`; `false` if changes were missed (a resync
    /// is needed).
    async fn apply_announced(&self, version: u64, change: Change) -> bool {
        let mut at = self.writer.lock().await;
        if version <= *at {
            return true;
        }
        if version != *at + 1 {
            return false;
        }
        match self.next(&change) {
            Ok(next) => {
                self.install(next);
                *at = version;
                true
            }
            // Another writer's bad entry: the resync skips it alone.
            Err(_) => false,
        }
    }

    /// The version the local copy is at.
    pub async fn version(&self) -> u64 {
        *self.writer.lock().await
    }

    /// Fetches the whole table and takes it; writes the snapshot if one is kept.
    async fn resync(&self, store: &Store) -> redis::RedisResult<()> {
        let start = Instant::now();
        // Fetched and taken under the writer's lock: a change this server writes meanwhile
        // would otherwise be undone by a table read before it (until its announcement).
        let mut at = self.writer.lock().await;
        let (version, entries) = store.fetch().await?;
        let had = *at;
        if version < had {
            log::warn!(
                "users: Redis's table went back from version {had} to {version} (Redis lost its data, or is another one); following it: {} user(s)",
                entries.len()
            );
        }
        let n = entries.len();
        self.take_whole(entries);
        *at = version;
        drop(at);
        store.mark_synced();
        log::info!(
            "users: {n} user(s) from Redis (version {version}) in {} ms",
            start.elapsed().as_millis()
        );
        self.snapshot(store, version);
        Ok(())
    }

    /// Writes the snapshot (if one is kept) of the table at `version`.
    fn snapshot(&self, store: &Store, version: u64) {
        let Some(snap) = &store.opts.snapshot else {
            return;
        };
        let map = self.read().clone();
        match super::super::save(snap, &map) {
            Ok(()) => store.snapshot_at.store(version, Ordering::Relaxed),
            Err(e) => log::warn!("users: snapshot not written: {}", e.report()),
        }
    }

    /// Keeps the local copy in step with Redis until `shutdown`: follows the channel, compares
    /// versions every resync interval, flushes counters every second, and after any outage
    /// takes the table whole. Routing never waits for any of it.
    pub async fn follow(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(store) = self.store().cloned() else {
            return;
        };
        // Every failure waits before the next try, longer each time in a row, so that no
        // fault (Redis away, or a value that cannot be read) makes a storm of connections.
        let mut pause = RETRY_MIN;
        let mut failed = false;
        loop {
            if failed {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(RETRY_MAX);
            }
            failed = true;
            let mut pubsub = match self.subscribe(&store).await {
                Ok(p) => p,
                Err(e) => {
                    // Counters wait; bytes are kept until a flush succeeds.
                    store.mark(false, &e.to_string());
                    continue;
                }
            };
            // Subscribed first, then fetched: nothing announced in between is lost.
            if let Err(e) = self.resync(&store).await {
                store.mark(false, &e.to_string());
                continue;
            }
            store.mark(true, "");
            let since = Instant::now();
            let mut messages = pubsub.on_message();
            let mut flush = tokio::time::interval(FLUSH_EVERY);
            let mut check = tokio::time::interval(store.opts.resync);
            check.reset();
            let lost = loop {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        let _ = store.flush(&self.list()).await;
                        return;
                    }
                    m = messages.next() => {
                        let Some(m) = m else { break "the channel closed".to_string() };
                        let text: String = m.get_payload().unwrap_or_default();
                        match parse_announced(&text) {
                            Some((v, change)) => {
                                if self.apply_announced(v, change).await {
                                    store.mark_synced();
                                } else if let Err(e) = self.resync(&store).await {
                                    break e.to_string();
                                }
                            }
                            None => {
                                crate::rarely!(Warn, "users: unreadable change announced on {}; the next check resyncs", store.key("changes"));
                                check.reset_immediately();
                            }
                        }
                    }
                    _ = flush.tick() => {
                        match store.flush(&self.list()).await {
                            Ok(()) => {
                                store.mark(true, "");
                                // The fleet's quota counts just came in.
                                self.enforce(crate::users::limits::unix_now());
                            }
                            Err(e) => store.mark(false, &e.to_string()),
                        }
                    }
                    _ = check.tick() => {
                        let local = self.version().await;
                        if store.snapshot_at.load(Ordering::Relaxed) != local {
                            self.snapshot(&store, local);
                        }
                        match store.version().await {
                            Ok(Some(v)) if v == local => store.mark_synced(),
                            Ok(_) => {
                                if let Err(e) = self.resync(&store).await {
                                    break e.to_string();
                                }
                            }
                            Err(e) => break e.to_string(),
                        }
                    }
                    _ = store.resync_now.notified() => {
                        if let Err(e) = self.resync(&store).await {
                            break e.to_string();
                        }
                    }
                }
            };
            store.mark(false, &lost);
            if since.elapsed() >= RETRY_MAX {
                pause = RETRY_MIN;
            }
        }
    }

    async fn subscribe(&self, store: &Store) -> redis::RedisResult<redis::aio::PubSub> {
        let mut pubsub = tokio::time::timeout(CONNECT_LIMIT, store.client.get_async_pubsub())
            .await
            .map_err(|_| {
                redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
            })??;
        pubsub.subscribe(store.key("changes")).await?;
        Ok(pubsub)
    }

    /// Fleet-wide counters of every user (Redis), or this server's own if Redis is away.
    pub async fn counters_fleet(&self) -> HashMap<String, (u64, u64, u64)> {
        let local = || {
            self.list()
                .iter()
                .map(|u| (u.path.clone(), u.counters()))
                .collect()
        };
        match self.store() {
            None => local(),
            Some(store) => match store.fleet().await {
                Ok(f) => f,
                Err(e) => {
                    log::debug!("users: {}; showing this server's counters", e.report());
                    local()
                }
            },
        }
    }
}
