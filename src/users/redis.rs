//! The fleet's shared user table in Redis (`-users-redis`): changes written atomically with a
//! version and announced on a channel, every server's local copy kept in step (the channel,
//! the version, a periodic resync), counters flushed in batches, and routing that never waits
//! for Redis (fail-static while it is away).
//!
//! Keys, under the prefix (`mtt:` by default):
//! - `users`: hash, path → `{"dst":"host:port"}`
//! - `version`: the number of changes ever made
//! - `changes`: channel; each change as `<version> <json>`
//! - `bytes_up`, `bytes_down`: hashes, path → bytes the fleet moved for the user
//! - `live:<server>`: hash, path → tunnels open on that server; expires unless refreshed

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Change, User, Users, check};
use crate::addr::HostPort;
use crate::{Error, Result};

/// How often counters are flushed to Redis.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// A server's live counts vanish this long after its last flush (a dead server's too).
const LIVE_TTL_SECS: i64 = 5;
/// How long a command may take before Redis counts as unreachable.
const RESPONSE_LIMIT: Duration = Duration::from_secs(2);
/// How long connecting may take.
const CONNECT_LIMIT: Duration = Duration::from_secs(2);
/// The users' hash as Redis holds it: paths and entries as bytes, decoded one by one.
type RawTable = HashMap<Vec<u8>, Vec<u8>>;
/// The first pause after a failed attempt to follow Redis; it doubles with each failure in a
/// row up to [`RETRY_MAX`], and starts again once a session has lasted that long.
const RETRY_MIN: Duration = Duration::from_millis(200);
/// The longest pause between attempts.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// What `-users-redis` and its flags ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisOptions {
    /// `redis://[user:pass@]host:port/db` or `rediss://…` (TLS).
    pub url: String,
    /// Prefix of every key and of the channel.
    pub prefix: String,
    /// How often the local copy is compared with Redis (and fetched whole if it differs).
    pub resync: Duration,
    /// A copy of the table kept on disk, to start from while Redis cannot be reached.
    pub snapshot: Option<PathBuf>,
    /// Trust this PEM root for `rediss://` instead of the public roots.
    pub ca: Option<PathBuf>,
}

/// The client for `opts.url` (with `-users-redis-ca`, trusting that root for TLS).
fn client(opts: &RedisOptions) -> Result<redis::Client> {
    let bad = |e: redis::RedisError| {
        Error::usage(format!(
            "-users-redis: '{}' is not a Redis URL ({e}); e.g. redis://127.0.0.1:6379/0",
            redacted(&opts.url)
        ))
    };
    match &opts.ca {
        None => redis::Client::open(opts.url.as_str()).map_err(bad),
        Some(ca) => {
            let pem = std::fs::read(ca)
                .map_err(|e| Error::io(format!("-users-redis-ca {}", ca.display()), e))?;
            let certs = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            };
            redis::Client::build_with_tls(opts.url.as_str(), certs).map_err(bad)
        }
    }
}

/// The connection to the fleet's Redis and the state of the local copy.
pub struct Store {
    opts: RedisOptions,
    client: redis::Client,
    conn: ConnectionManager,
    /// This server's name in `live:<server>`.
    server: String,
    up: AtomicBool,
    /// When the local copy was last known to equal Redis's table.
    synced: Mutex<Instant>,
    resync_now: Notify,
    /// Entries already reported as unusable (reported once, not at every resync).
    reported: Mutex<HashSet<String>>,
    /// The version of the table last written to the snapshot.
    snapshot_at: std::sync::atomic::AtomicU64,
}

/// A change as announced on the channel.
#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Announced {
    Add { users: Vec<(String, String)> },
    Remove { paths: Vec<String>, kick: bool },
    Reset,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    dst: String,
}

/// Writes a change, bumps the version and announces it, all at once (a script runs
/// atomically): returns the new version.
const WRITE: &str = r"
local cur = redis.call('GET', KEYS[2])
if cur and not tonumber(cur) then redis.call('SET', KEYS[2], '0') end
local v = redis.call('INCR', KEYS[2])
local op = ARGV[2]
if op == 'reset' then redis.call('DEL', KEYS[1]) end
if op == 'add' then for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end end
if op == 'remove' then for i = 4, #ARGV do redis.call('HDEL', KEYS[1], ARGV[i]) end end
redis.call('PUBLISH', ARGV[1], v .. ' ' .. ARGV[3])
return v
";

impl Store {
    /// Connects (bounded); an error says why Redis cannot be used.
    pub async fn connect(opts: RedisOptions) -> Result<Self> {
        let client = client(&opts)?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_LIMIT))
            .set_response_timeout(Some(RESPONSE_LIMIT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let conn = tokio::time::timeout(
            CONNECT_LIMIT * 2,
            client.get_connection_manager_with_config(cfg),
        )
        .await
        .map_err(|_| unreachable_at(&opts.url, "no answer"))?
        .map_err(|e| unreachable_at(&opts.url, &e.to_string()))?;
        let id = crate::random::bytes::<6>()?;
        Ok(Store {
            opts,
            client,
            conn,
            server: hex::encode(id),
            up: AtomicBool::new(true),
            synced: Mutex::new(Instant::now()),
            resync_now: Notify::new(),
            reported: Mutex::new(HashSet::new()),
            snapshot_at: Default::default(),
        })
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.opts.prefix)
    }

    /// Whether Redis answered the last command.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// How long since the local copy was last known to equal Redis's table.
    pub fn table_age(&self) -> Duration {
        self.synced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    fn mark_synced(&self) {
        *self.synced.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Notes whether Redis answered; a change of state is logged once.
    fn mark(&self, up: bool, why: &str) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            if up {
                log::info!(target: crate::logging::NOTICE, "users: Redis is back");
            } else {
                log::warn!(
                    "users: Redis is unreachable ({why}); routing with the table of {}s ago, changes are refused until it is back",
                    self.table_age().as_secs()
                );
            }
        }
    }

    /// Asks the sync task for a full resync now.
    pub fn wake_resync(&self) {
        self.resync_now.notify_one();
    }

    /// Writes `change` (already checked) to Redis and announces it; returns its version.
    pub(super) async fn write(&self, change: &Change) -> Result<u64> {
        let (op, announced, args): (&str, Announced, Vec<String>) = match change {
            Change::Add(items) => {
                let mut args = Vec::with_capacity(items.len() * 2);
                for (path, dst) in items {
                    args.push(path.clone());
                    args.push(entry_json(dst));
                }
                let users = items.clone();
                ("add", Announced::Add { users }, args)
            }
            Change::Remove(paths, kick) => {
                let announced = Announced::Remove {
                    paths: paths.clone(),
                    kick: *kick,
                };
                ("remove", announced, paths.clone())
            }
            Change::Reset => ("reset", Announced::Reset, Vec::new()),
        };
        let text =
            serde_json::to_string(&announced).map_err(|e| Error::Runtime(format!("users: {e}")))?;
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(WRITE)
            .arg(2)
            .arg(self.key("users"))
            .arg(self.key("version"))
            .arg(self.key("changes"))
            .arg(op)
            .arg(text)
            .arg(args);
        let mut conn = self.conn.clone();
        match cmd.query_async::<u64>(&mut conn).await {
            Ok(v) => {
                self.mark(true, "");
                Ok(v)
            }
            Err(e) => {
                self.mark(false, &e.to_string());
                Err(Error::Unavailable(format!(
                    "the users' Redis cannot be reached ({e}); nothing was changed, try again"
                )))
            }
        }
    }

    /// The whole table and its version, read at one instant; unusable entries are left out
    /// (each reported once), and an unreadable version is taken as 0 (every server then
    /// follows the table itself, and the next write repairs the version).
    async fn fetch(&self) -> redis::RedisResult<(u64, Vec<(String, HostPort)>)> {
        let mut conn = self.conn.clone();
        let (version, raw): (Option<Vec<u8>>, RawTable) = redis::pipe()
            .atomic()
            .get(self.key("version"))
            .hgetall(self.key("users"))
            .query_async(&mut conn)
            .await?;
        let mut users = Vec::with_capacity(raw.len());
        for (path, text) in raw {
            let path = String::from_utf8_lossy(&path);
            let parsed = std::str::from_utf8(&text)
                .map_err(|_| "not UTF-8".to_string())
                .and_then(|t| serde_json::from_str::<Entry>(t).map_err(|e| e.to_string()))
                .and_then(|e| {
                    if matches!(path, std::borrow::Cow::Owned(_)) {
                        return Err("its path is not UTF-8".to_string());
                    }
                    check(&path, &e.dst).map_err(|e| e.to_string())
                });
            match parsed {
                Ok(dst) => users.push((path.into_owned(), dst)),
                Err(why) => self.report(&path, &String::from_utf8_lossy(&text), &why),
            }
        }
        Ok((self.read_version(version).unwrap_or(0), users))
    }

    fn report(&self, path: &str, text: &str, why: &str) {
        let mut seen = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        if seen.insert(format!("{path}\n{text}")) {
            log::warn!(
                "users: Redis entry '{}' of {} is not usable ({why}); skipped",
                path.escape_debug(),
                self.key("users")
            );
        }
    }

    /// The table's version from its raw value: 0 when there is none yet, `None` (said once
    /// per value) when it is not a number.
    fn read_version(&self, raw: Option<Vec<u8>>) -> Option<u64> {
        let Some(raw) = raw else { return Some(0) };
        let v = std::str::from_utf8(&raw)
            .ok()
            .and_then(|t| t.trim().parse().ok());
        if v.is_none() {
            let text = String::from_utf8_lossy(&raw);
            let mut seen = self.reported.lock().unwrap_or_else(|p| p.into_inner());
            if seen.insert(format!("version\n{text}")) {
                log::warn!(
                    "users: {} is '{}', not a number; following the table itself (the next change through any controller sets it right)",
                    self.key("version"),
                    text.escape_debug()
                );
            }
        }
        v
    }

    /// The table's version in Redis; `None` when it is unreadable (then only a resync tells
    /// whether the local copy is current).
    async fn version(&self) -> redis::RedisResult<Option<u64>> {
        let mut conn = self.conn.clone();
        let v: Option<Vec<u8>> = conn.get(self.key("version")).await?;
        Ok(self.read_version(v))
    }

    /// Adds what every user's tunnels moved since the last flush to the fleet's totals, and
    /// renews this server's live counts; on failure the bytes wait for the next flush.
    async fn flush(&self, users: &[Arc<User>]) -> redis::RedisResult<()> {
        let mut taken = Vec::new();
        let mut pipe = redis::pipe();
        let live_key = self.key(&format!("live:{}", self.server));
        pipe.del(&live_key).ignore();
        let mut live = Vec::new();
        for u in users {
            let (up, down) = u.take_unflushed();
            if up > 0 {
                pipe.hincr(self.key("bytes_up"), &u.path, up).ignore();
            }
            if down > 0 {
                pipe.hincr(self.key("bytes_down"), &u.path, down).ignore();
            }
            taken.push((u.clone(), up, down));
            let (n, _, _) = u.counters();
            if n > 0 {
                live.push((u.path.clone(), n));
            }
        }
        if !live.is_empty() {
            pipe.hset_multiple(&live_key, &live).ignore();
            pipe.expire(&live_key, LIVE_TTL_SECS).ignore();
        }
        let mut conn = self.conn.clone();
        let done: redis::RedisResult<()> = pipe.atomic().query_async(&mut conn).await;
        if done.is_err() {
            for (u, up, down) in taken {
                u.unflush(up, down);
            }
        }
        done
    }

    /// Fleet-wide (live tunnels, bytes up, bytes down) per path.
    pub async fn fleet(&self) -> Result<HashMap<String, (u64, u64, u64)>> {
        let unavailable = |e: redis::RedisError| {
            Error::Unavailable(format!("the users' Redis cannot be reached ({e})"))
        };
        let mut conn = self.conn.clone();
        let (up, down): (HashMap<String, u64>, HashMap<String, u64>) = redis::pipe()
            .hgetall(self.key("bytes_up"))
            .hgetall(self.key("bytes_down"))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let mut out: HashMap<String, (u64, u64, u64)> = HashMap::new();
        for (p, n) in up {
            out.entry(p).or_default().1 = n;
        }
        for (p, n) in down {
            out.entry(p).or_default().2 = n;
        }
        let pattern = self.key("live:*");
        let keys: Vec<String> = {
            let mut iter: redis::AsyncIter<String> =
                conn.scan_match(&pattern).await.map_err(unavailable)?;
            let mut keys = Vec::new();
            while let Some(k) = iter.next_item().await {
                keys.push(k.map_err(unavailable)?);
            }
            keys
        };
        for k in keys {
            let live: HashMap<String, u64> = conn.hgetall(&k).await.map_err(unavailable)?;
            for (p, n) in live {
                out.entry(p).or_default().0 += n;
            }
        }
        Ok(out)
    }
}

/// Where the entry of a user is kept, as JSON.
fn entry_json(dst: &str) -> String {
    serde_json::json!({ "dst": dst }).to_string()
}

fn unreachable_at(url: &str, why: &str) -> Error {
    Error::Runtime(format!(
        "-users-redis {}: Redis cannot be reached ({why}); start it, check the URL, or give -users-redis-snapshot to start from the last table",
        redacted(url)
    ))
}

/// A Redis URL without its password, for logs.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let cred = &url[s + 3..at];
            match cred.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl Users {
    /// The table from the fleet's Redis: fetched whole at start. If Redis cannot be reached,
    /// the snapshot (if given and present) is started from; otherwise an error.
    pub async fn open_redis(opts: RedisOptions) -> Result<Arc<Users>> {
        let store = match Store::connect(opts.clone()).await {
            Ok(s) => s,
            Err(e @ Error::Usage(_)) => return Err(e),
            Err(e) => {
                let Some(snap) = opts.snapshot.as_ref().filter(|p| p.exists()) else {
                    return Err(e);
                };
                log::warn!("{e}; starting from the snapshot {}", snap.display());
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
        Arc::new(Users {
            map: Default::default(),
            file: None,
            redis: Some(store),
            writer: tokio::sync::Mutex::new(0),
            gone: Default::default(),
        })
    }

    /// Starts from the snapshot while Redis is away; the store reconnects by itself (a
    /// connection manager made without a live connection).
    async fn from_snapshot(opts: RedisOptions) -> Result<Arc<Users>> {
        let Some(snap) = opts.snapshot.clone() else {
            return Err(Error::Runtime("no snapshot".into()));
        };
        let loaded = Users::load(Some(snap.clone()))?;
        let entries: Vec<(String, HostPort)> = loaded
            .list()
            .iter()
            .map(|u| (u.path.clone(), u.dst.clone()))
            .collect();
        let client = client(&opts)?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_LIMIT))
            .set_response_timeout(Some(RESPONSE_LIMIT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), cfg)
            .map_err(|e| unreachable_at(&opts.url, &e.to_string()))?;
        let id = crate::random::bytes::<6>()?;
        let age = std::fs::metadata(&snap)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_default();
        let store = Store {
            opts,
            client,
            conn,
            server: hex::encode(id),
            up: AtomicBool::new(false),
            synced: Mutex::new(Instant::now().checked_sub(age).unwrap_or_else(Instant::now)),
            resync_now: Notify::new(),
            reported: Mutex::new(HashSet::new()),
            snapshot_at: Default::default(),
        };
        let users = Self::with_store(Arc::new(store));
        // Version 0: the first resync takes Redis's table whole.
        users.replace_all(0, entries).await;
        Ok(users)
    }

    /// The store, when the users live in Redis.
    pub fn store(&self) -> Option<&Arc<Store>> {
        self.redis.as_ref()
    }

    /// Takes `entries` as the whole table at `version`. Users whose destination is unchanged
    /// keep their counters and live tunnels; removed ones open nothing new.
    async fn replace_all(&self, version: u64, entries: Vec<(String, HostPort)>) {
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
        let (version, entries) = store.fetch().await?;
        let had = self.version().await;
        if version < had {
            log::warn!(
                "users: Redis's table went back from version {had} to {version} (Redis lost its data, or is another one); following it: {} user(s)",
                entries.len()
            );
        }
        let n = entries.len();
        self.replace_all(version, entries).await;
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
        match super::save(snap, &map) {
            Ok(()) => store.snapshot_at.store(version, Ordering::Relaxed),
            Err(e) => log::warn!("users: snapshot not written: {e}"),
        }
    }

    /// Keeps the local copy in step with Redis until `shutdown`: follows the channel, compares
    /// versions every resync interval, flushes counters every second, and after any outage
    /// takes the table whole. Routing never waits for any of it.
    pub async fn follow(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(store) = self.redis.clone() else {
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
                            Ok(()) => store.mark(true, ""),
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
        match &self.redis {
            None => local(),
            Some(store) => match store.fleet().await {
                Ok(f) => f,
                Err(e) => {
                    log::debug!("users: {e}; showing this server's counters");
                    local()
                }
            },
        }
    }
}

/// `<version> <json>` → the change.
fn parse_announced(text: &str) -> Option<(u64, Change)> {
    let (v, json) = text.split_once(' ')?;
    let v: u64 = v.parse().ok()?;
    let change = match serde_json::from_str::<Announced>(json).ok()? {
        Announced::Add { users } => Change::Add(users),
        Announced::Remove { paths, kick } => Change::Remove(paths, kick),
        Announced::Reset => Change::Reset,
    };
    Some((v, change))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password_in_logs() {
        assert_eq!(
            redacted("redis://u:secret@10.0.0.1:6379/0"),
            "redis://u:***@10.0.0.1:6379/0"
        );
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn announced_changes_round_trip_and_garbage_is_refused() {
        let a = serde_json::to_string(&Announced::Remove {
            paths: vec!["/a".into()],
            kick: true,
        })
        .expect("json");
        match parse_announced(&format!("7 {a}")) {
            Some((7, Change::Remove(p, true))) => assert_eq!(p, vec!["/a".to_string()]),
            other => panic!("{other:?}"),
        }
        assert!(parse_announced("x {}").is_none());
        assert!(parse_announced("3 {\"op\":\"nope\"}").is_none());
        assert!(parse_announced("3").is_none());
    }
}
