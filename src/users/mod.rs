//! The mu-server's user table: path → destination and limits, per-user counters, kick, and
//! where it is kept: `-users-file` (every change written atomically before it is
//! acknowledged), or a fleet's Redis (`-users-redis`, see [`redis`]).

mod enforce;
mod file;
mod history;
pub mod limits;
pub mod redis;
mod throttle;
mod user;

use file::{read_entry, save};
pub use history::History;
pub use limits::{Limits, Refusal};
pub use throttle::Throttled;
pub use user::{Pass, User};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio_util::sync::CancellationToken;

use crate::addr::HostPort;
use crate::transport::options::{Router, is_valid_path};
use crate::{Error, Result};

/// What a controller asks for.
#[derive(Debug, Clone)]
pub enum Change {
    /// Add or replace users.
    Add(Vec<Entry>),
    /// Remove users (unknown paths are ignored); `kick` ends their live tunnels too.
    Remove(Vec<String>, bool),
    /// Remove everyone (live tunnels keep running).
    Reset,
}

/// A user as a controller gives it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: String,
    pub dst: String,
    /// `None`: the limits the path's user has now (the original's API knows none).
    pub limits: Option<Limits>,
}

impl Entry {
    /// A user without limits of its own (those of the path's current user stay).
    pub fn keeping(path: String, dst: String) -> Self {
        Entry {
            path,
            dst,
            limits: None,
        }
    }
}

/// The table.
pub struct Users {
    map: RwLock<HashMap<String, Arc<User>>>,
    /// Where the table is kept.
    backend: Backend,
    /// Changes happen one at a time, so each file written is a state that was acknowledged;
    /// with Redis it holds the version of the shared table the local copy is at.
    writer: tokio::sync::Mutex<u64>,
    /// Tunnels refused by a limit, by [`Refusal`] (in its order).
    refused: [std::sync::atomic::AtomicU64; 3],
    /// The last hour of traffic.
    history: History,
    /// Users removed without kick whose tunnels may still run, by path: a kick of the path
    /// later still ends them, and a user added again under it takes them over. Held weakly:
    /// an entry lives as long as one of its tunnels does.
    gone: std::sync::Mutex<HashMap<String, std::sync::Weak<User>>>,
}

/// Where a table is kept.
enum Backend {
    /// Nowhere: a restart starts empty (no `-users-file`).
    Memory,
    /// `-users-file`: every change written before it is acknowledged.
    File(PathBuf),
    /// `-users-redis`: the fleet's shared table.
    Redis(Arc<redis::Store>),
}

/// A user as a whole table lists it: path, destination, limits.
pub(crate) type Row = (String, HostPort, Limits);

/// A change to the table, checked: what the next table is and which users leave it (and
/// whether their tunnels are to end).
struct Next {
    map: HashMap<String, Arc<User>>,
    retired: Vec<(Arc<User>, bool)>,
}

/// A stable name for a user that does not reveal its path (the path is its credential): the
/// first 16 hex digits of the path's SHA-256.
pub fn label(path: &str) -> String {
    crate::certs::fingerprint::of(path.as_bytes())[..16].to_string()
}

/// A user path must start with `/` and be visible ASCII, as the client can send it.
pub fn check_path(path: &str) -> Result<()> {
    if !is_valid_path(path, true) {
        return Err(Error::usage(format!(
            "invalid path '{path}': it must start with '/' and contain only visible ASCII, without '?' or '#'"
        )));
    }
    Ok(())
}

/// Validates a user: the path as [`check_path`], the destination as `host:port`.
pub fn check(path: &str, dst: &str) -> Result<HostPort> {
    check_path(path)?;
    HostPort::parse("dst", dst, false).map_err(|e| {
        Error::usage(format!(
            "path '{path}': {}",
            e.report().to_string().trim_start_matches("-dst: ")
        ))
    })
}

impl Users {
    /// At start: checks that changes can be saved where `file` says (its directory exists and
    /// takes new files), then loads it.
    pub fn open(file: Option<PathBuf>) -> Result<Arc<Self>> {
        if let Some(f) = &file {
            if f.is_dir() {
                return Err(Error::usage(format!(
                    "-users-file {}: is a directory; name a file in it, e.g. {}",
                    f.display(),
                    f.join("users.json").display()
                )));
            }
            let dir = f
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if !dir.is_dir() {
                return Err(Error::usage(format!(
                    "-users-file {}: the directory {} does not exist; create it, or choose another file",
                    f.display(),
                    dir.display()
                )));
            }
            tempfile::NamedTempFile::new_in(dir).map_err(|e| {
                Error::io(
                    format!(
                        "-users-file {}: no new file can be made in {} to save changes",
                        f.display(),
                        dir.display()
                    ),
                    e,
                )
            })?;
        }
        Self::load(file)
    }

    /// Loads `file` if given and present (a missing file is an empty table).
    pub fn load(file: Option<PathBuf>) -> Result<Arc<Self>> {
        let mut map = HashMap::new();
        if let Some(f) = &file {
            match std::fs::read(f) {
                // An empty file (`touch users.json`) is an empty table.
                Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => {}
                Ok(bytes) => {
                    let saved: Vec<serde_json::Map<String, serde_json::Value>> =
                        serde_json::from_slice(&bytes).map_err(|e| {
                            Error::usage(format!(
                                "-users-file {}: not a users file, which is a JSON list like [{{\"path\":\"/alice\",\"dst\":\"127.0.0.1:8388\"}}] ({e}); fix it, or move it away to start empty",
                                f.display()
                            ))
                        })?;
                    for s in saved {
                        let (path, dst, limits) = read_entry(&s).map_err(|e| {
                            Error::usage(format!("-users-file {}: {}", f.display(), e.report()))
                        })?;
                        map.insert(path.clone(), User::new(path, dst, limits));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("-users-file {}", f.display()), e)),
            }
        }
        let users = match file {
            Some(f) => {
                let users = Users::with(Backend::File(f.clone()), map);
                users.load_usage(&f);
                users
            }
            None => Users::with(Backend::Memory, map),
        };
        Ok(users)
    }

    /// A table kept in `backend`, starting as `map`.
    fn with(backend: Backend, map: HashMap<String, Arc<User>>) -> Arc<Self> {
        for u in map.values() {
            u.publish_limits();
        }
        Arc::new(Users {
            map: RwLock::new(map),
            backend,
            writer: tokio::sync::Mutex::new(0),
            refused: Default::default(),
            history: History::default(),
            gone: Default::default(),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<User>>> {
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The current user of `path`.
    pub fn get(&self, path: &str) -> Option<Arc<User>> {
        self.read().get(path).cloned()
    }

    /// The last hour of this server's traffic.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Every user, in no order.
    pub(crate) fn all(&self) -> Vec<Arc<User>> {
        self.read().values().cloned().collect()
    }

    /// Every user, sorted by path.
    pub fn list(&self) -> Vec<Arc<User>> {
        let mut v: Vec<_> = self.read().values().cloned().collect();
        v.sort_by(|a, b| a.path.cmp(&b.path));
        v
    }

    /// Applies a change: validated first (nothing changes if any item is bad), saved to the
    /// users file or written to the fleet's Redis, then made visible. Returns when it is
    /// durable (Redis: when Redis has it; [`crate::Error::Unavailable`] if Redis cannot be
    /// reached, and nothing changed).
    pub async fn apply(&self, change: Change) -> Result<()> {
        let mut version = self.writer.lock().await;
        let change = self.resolve(change);
        let next = self.next(&change)?;
        if let Backend::Redis(store) = &self.backend {
            let v = store.write(&change).await?;
            // Visible here at once; the other servers take it from the announcement.
            self.install(next);
            if v == *version + 1 {
                *version = v;
            } else if v > *version {
                // Other servers' changes came in between: the whole table follows.
                store.wake_resync();
            }
            return Ok(());
        }
        if let Backend::File(f) = &self.backend {
            save(f, &next.map)?;
        }
        self.install(next);
        Ok(())
    }

    /// What `change` makes of the current table; an error if any item is bad.
    fn next(&self, change: &Change) -> Result<Next> {
        let mut next: HashMap<String, Arc<User>> = self.read().clone();
        let mut retired: Vec<(Arc<User>, bool)> = Vec::new();
        match change {
            Change::Add(items) => {
                let mut checked = Vec::with_capacity(items.len());
                for e in items {
                    let hp = check(&e.path, &e.dst)?;
                    let limits = e.limits.clone().unwrap_or_default();
                    limits.check().map_err(|err| {
                        Error::usage(format!("path '{}': {}", e.path, err.report()))
                    })?;
                    checked.push((&e.path, hp, limits));
                }
                for (path, dst, limits) in checked {
                    let before = next.get(path).cloned().or_else(|| self.gone_user(path));
                    let user = User::replacing(path.clone(), dst, limits, before.as_ref());
                    if let Some(old) = next.insert(path.clone(), user) {
                        retired.push((old, false));
                    }
                }
            }
            Change::Remove(paths, kick) => {
                for p in paths {
                    match next.remove(p) {
                        Some(old) => retired.push((old, *kick)),
                        // Removed earlier without kick: its tunnels may be kicked now.
                        None if *kick => retired.extend(self.gone_user(p).map(|u| (u, true))),
                        None => {}
                    }
                }
            }
            Change::Reset => retired.extend(next.drain().map(|(_, u)| (u, false))),
        }
        Ok(Next { map: next, retired })
    }

    /// Makes `next` the table; kicked users' tunnels end; users removed without kick are
    /// remembered while their tunnels live.
    fn install(&self, next: Next) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        *map = next.map;
        for u in map.values() {
            u.publish_limits();
        }
        let mut gone = self.lock_gone();
        gone.retain(|path, u| u.strong_count() > 0 && !map.contains_key(path));
        for (user, kick) in next.retired {
            if kick {
                user.kicked().cancel();
                gone.remove(&user.path);
            } else if !map.contains_key(&user.path) {
                gone.insert(user.path.clone(), Arc::downgrade(&user));
            }
        }
    }

    /// Takes `entries` as the whole table; returns how many users it has. Users whose
    /// destination is unchanged keep their counters and live tunnels; replaced ones hand
    /// their tunnels' kick to their successor; removed ones open nothing new.
    fn take_whole(&self, entries: Vec<Row>) -> usize {
        let mut next = HashMap::with_capacity(entries.len());
        let retired = {
            let current = self.read();
            for (path, dst, limits) in entries {
                let user = match current.get(&path) {
                    Some(old) if old.dst == dst && old.limits == limits => old.clone(),
                    Some(old) => User::replacing(path.clone(), dst, limits, Some(old)),
                    None => {
                        let gone = self.gone_user(&path);
                        User::replacing(path.clone(), dst, limits, gone.as_ref())
                    }
                };
                next.insert(path, user);
            }
            current
                .iter()
                .filter(|(path, _)| !next.contains_key(*path))
                .map(|(_, u)| (u.clone(), false))
                .collect()
        };
        let n = next.len();
        self.install(Next { map: next, retired });
        n
    }

    fn lock_gone(&self) -> std::sync::MutexGuard<'_, HashMap<String, std::sync::Weak<User>>> {
        self.gone.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The user last removed from `path` without kick, while one of its tunnels lives.
    fn gone_user(&self, path: &str) -> Option<Arc<User>> {
        self.lock_gone()
            .get(path)
            .and_then(std::sync::Weak::upgrade)
    }

    /// Whether `path` names a user now, or one removed without kick whose tunnels live on
    /// (a kick of it still means something).
    pub fn kickable(&self, path: &str) -> bool {
        self.get(path).is_some() || self.gone_user(path).is_some()
    }
}

impl Users {
    /// Re-reads the users file (after an edit by hand, on SIGHUP). Users whose destination is
    /// unchanged keep their counters and live tunnels; removed ones open nothing new. Returns
    /// the number of users, or `None` without a file; a bad file changes nothing.
    pub async fn reload_file(&self) -> Result<Option<usize>> {
        let file = match &self.backend {
            Backend::Redis(store) => {
                store.wake_resync();
                return Ok(Some(self.len()));
            }
            Backend::Memory => return Ok(None),
            Backend::File(f) => f,
        };
        let _one_at_a_time = self.writer.lock().await;
        let fresh = Users::load(Some(file.clone()))?;
        let loaded = fresh
            .list()
            .iter()
            .map(|u| (u.path.clone(), u.dst.clone(), u.limits.clone()))
            .collect();
        Ok(Some(self.take_whole(loaded)))
    }
}

impl Router for Users {
    type Owner = Pass;

    fn route(&self, path: &str) -> Option<Pass> {
        let user = self.admitted(path)?;
        match user.seat() {
            Some(seat) => Some(Pass {
                user,
                seat: Some(Arc::new(seat)),
            }),
            None => {
                self.refuse(&user, Refusal::Connections);
                None
            }
        }
    }

    fn reroute(&self, path: &str, current: &Pass) -> Option<Pass> {
        let user = self.admitted(path)?;
        Some(Pass {
            user,
            seat: current.seat.clone(),
        })
    }

    fn revoked(&self, owner: &Pass) -> Option<CancellationToken> {
        Some(owner.user.ends())
    }
}
