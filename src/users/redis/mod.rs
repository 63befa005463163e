//! The fleet's shared user table in Redis (`-users-redis`): changes written atomically with a
//! version and announced on a channel, every server's local copy kept in step (the channel,
//! the version, a periodic resync), counters flushed in batches, and routing that never waits
//! for Redis (fail-static while it is away). This file is the store (commands, keys,
//! decoding); [`follow`] keeps a server's table in step with it.
//!
//! Keys, under the prefix (`mtt:` by default):
//! - `users`: hash, path → `{"dst":"host:port"}` and the user's limits (`"quota"`, …)
//! - `version`: the number of changes ever made
//! - `changes`: channel; each change as `<version> <json>`
//! - `bytes_up`, `bytes_down`: hashes, path → bytes the fleet moved for the user
//! - `live:<server>`: hash, path → tunnels open on that server; expires unless refreshed
//! - `quota_window`, `quota_up`, `quota_down`: hashes, path → the quota's period (a number
//!   every server computes alike from the time) and the bytes the fleet moved in it, for
//!   users with a quota

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

mod counters;
mod follow;
mod options;
mod tickets;

pub use options::{RedisOptions, redacted};
use options::{client, manager_config, unreachable_at};

use super::limits::Limits;
use super::{Change, Entry, Row, check};
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
    Add {
        users: Vec<(String, String)>,
        /// The limits of the users that have any, by path.
        #[serde(default, skip_serializing_if = "HashMap::is_empty")]
        limits: HashMap<String, Limits>,
    },
    Remove {
        paths: Vec<String>,
        kick: bool,
    },
    Reset,
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
        let conn = tokio::time::timeout(
            CONNECT_LIMIT * 2,
            client.get_connection_manager_with_config(manager_config()),
        )
        .await
        .map_err(|_| unreachable_at(&opts.url, "no answer"))?
        .map_err(|e| unreachable_at(&opts.url, &e.to_string()))?;
        Self::with(opts, client, conn, true, Instant::now())
    }

    /// A store that connects when first used (Redis is away now): down until then, its table
    /// last known to match Redis at `synced`.
    pub fn lazy(opts: RedisOptions, synced: Instant) -> Result<Self> {
        let client = client(&opts)?;
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config())
            .map_err(|e| unreachable_at(&opts.url, &e.to_string()))?;
        Self::with(opts, client, conn, false, synced)
    }

    fn with(
        opts: RedisOptions,
        client: redis::Client,
        conn: ConnectionManager,
        up: bool,
        synced: Instant,
    ) -> Result<Self> {
        let id = crate::random::bytes::<6>()?;
        Ok(Store {
            opts,
            client,
            conn,
            server: hex::encode(id),
            up: AtomicBool::new(up),
            synced: Mutex::new(synced),
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
                let mut limits = HashMap::new();
                for e in items {
                    let l = e.limits.clone().unwrap_or_default();
                    args.push(e.path.clone());
                    args.push(entry_json(&e.dst, &l));
                    if !l.is_empty() {
                        limits.insert(e.path.clone(), l);
                    }
                }
                let users = items
                    .iter()
                    .map(|e| (e.path.clone(), e.dst.clone()))
                    .collect();
                ("add", Announced::Add { users, limits }, args)
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
        let text = serde_json::to_string(&announced).map_err(|e| Error::failed("users", e))?;
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
                Err(Error::unavailable(
                    "the users' Redis cannot be reached; nothing was changed, try again",
                    e,
                ))
            }
        }
    }

    /// The whole table and its version, read at one instant; unusable entries are left out
    /// (each reported once), and an unreadable version is taken as 0 (every server then
    /// follows the table itself, and the next write repairs the version).
    async fn fetch(&self) -> redis::RedisResult<(u64, Vec<Row>)> {
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
                .and_then(|t| {
                    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(t)
                        .map_err(|e| e.to_string())
                })
                .and_then(|e| {
                    if matches!(path, std::borrow::Cow::Owned(_)) {
                        return Err("its path is not UTF-8".to_string());
                    }
                    let dst = e
                        .get("dst")
                        .and_then(|d| d.as_str())
                        .ok_or("no \"dst\" string")?;
                    let hp = check(&path, dst).map_err(|e| e.report().to_string())?;
                    let limits =
                        Limits::from_entry(&e, &["dst"]).map_err(|e| e.report().to_string())?;
                    Ok((hp, limits))
                });
            match parsed {
                Ok((dst, limits)) => users.push((path.into_owned(), dst, limits)),
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
}

/// Where the entry of a user is kept, as JSON: its destination and limits.
fn entry_json(dst: &str, limits: &Limits) -> String {
    let mut v = serde_json::to_value(limits).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.insert("dst".into(), dst.into());
    }
    v.to_string()
}

/// `<version> <json>` → the change.
fn parse_announced(text: &str) -> Option<(u64, Change)> {
    let (v, json) = text.split_once(' ')?;
    let v: u64 = v.parse().ok()?;
    let change = match serde_json::from_str::<Announced>(json).ok()? {
        Announced::Add { users, mut limits } => Change::Add(
            users
                .into_iter()
                .map(|(path, dst)| Entry {
                    limits: Some(limits.remove(&path).unwrap_or_default()),
                    path,
                    dst,
                })
                .collect(),
        ),
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
