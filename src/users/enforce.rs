//! Limits at work: a tunnel of a user past its expiry or quota, or over its connection cap,
//! is refused (counted by reason, logged at most once a second); every second the quota
//! counts are brought up to date (this server's bytes, or the fleet's through the Redis
//! flush) and the tunnels of users that reached a limit end; every ten seconds the traffic
//! history takes a sample and the users file's quota counts are saved beside it
//! (`<file>.usage`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::limits::{Refusal, unix_now};
use super::{Backend, Change, User, Users};

/// How often limits are checked and (without Redis) quota counts taken.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often (in checks) a users file's quota counts are saved (and at a stop).
const SAVE_EVERY: u64 = 10;
/// How often (in checks) the traffic history takes a sample: its finest step.
const HISTORY_EVERY: u64 = 10;

const REASONS: [Refusal; 3] = [Refusal::Expired, Refusal::OverQuota, Refusal::Connections];

impl Users {
    /// `change` with the limits its entries leave out taken from the path's current user.
    pub(super) fn resolve(&self, change: Change) -> Change {
        match change {
            Change::Add(mut entries) => {
                for e in &mut entries {
                    if e.limits.is_none() {
                        e.limits = Some(
                            self.get(&e.path)
                                .map(|u| u.limits.clone())
                                .unwrap_or_default(),
                        );
                    }
                }
                Change::Add(entries)
            }
            other => other,
        }
    }

    /// The user of `path` if it may open something now (its connection cap aside).
    pub(super) fn admitted(&self, path: &str) -> Option<Arc<User>> {
        let user = self.get(path)?;
        match user.refusal(unix_now()) {
            None => Some(user),
            Some(why) => {
                self.refuse(&user, why);
                None
            }
        }
    }

    /// Counts and logs (at most once a second) a tunnel refused for `why`.
    pub(super) fn refuse(&self, user: &User, why: Refusal) {
        let i = REASONS.iter().position(|r| *r == why).unwrap_or(0);
        self.refused[i].fetch_add(1, Ordering::Relaxed);
        crate::rarely!(
            Info,
            "user {}: tunnel refused: {}",
            crate::users::label(&user.path),
            describe(user, why)
        );
    }

    /// Tunnels refused so far, by reason.
    pub fn refusals(&self) -> [(Refusal, u64); 3] {
        std::array::from_fn(|i| (REASONS[i], self.refused[i].load(Ordering::Relaxed)))
    }

    /// Ends the tunnels of users past a limit at `now`; says once when a user reaches one.
    pub fn enforce(&self, now: u64) {
        for user in self.all() {
            let why = user.refusal(now);
            let shared = &user.shared;
            let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
            if *state != why {
                match why {
                    Some(w) => log::info!(
                        target: crate::logging::NOTICE,
                        "user {}: {}; its tunnels end and new ones are refused",
                        crate::users::label(&user.path),
                        describe(&user, w)
                    ),
                    None if state.is_some() => log::info!(
                        target: crate::logging::NOTICE,
                        "user {}: active again",
                        crate::users::label(&user.path)
                    ),
                    None => {}
                }
                *state = why;
            }
            if why.is_some() && shared.in_use() {
                shared.end_tunnels();
            }
        }
    }

    /// Counts this server's bytes into the quotas (without Redis, whose flush does it).
    fn count_local(&self, now: u64) {
        for user in self.all() {
            let (up, down) = user.take_unflushed();
            user.count_used(user.window(now), up, down);
        }
    }

    /// Every [`CHECK_EVERY`] until `shutdown`: quota counts, limits, the history; the users
    /// file's quota counts saved every few seconds and at the end.
    pub async fn keep_limits(self: Arc<Self>, shutdown: CancellationToken) {
        let file = match &self.backend {
            Backend::File(f) => Some(usage_file(f)),
            _ => None,
        };
        let local = !matches!(self.backend, Backend::Redis(_));
        let mut tick = tokio::time::interval(CHECK_EVERY);
        let mut saved = HashMap::new();
        let mut n = 0u64;
        loop {
            let stopping = tokio::select! {
                _ = shutdown.cancelled() => true,
                _ = tick.tick() => false,
            };
            let now = unix_now();
            if local {
                self.count_local(now);
            }
            self.enforce(now);
            n += 1;
            if n.is_multiple_of(HISTORY_EVERY) || stopping {
                self.history.sample(&self.all(), now);
            }
            if let Some(f) = &file
                && (stopping || n.is_multiple_of(SAVE_EVERY))
            {
                self.save_usage(f, &mut saved);
            }
            if stopping {
                return;
            }
        }
    }

    /// Writes the quota counts of users with a quota to `file`, if they changed.
    fn save_usage(&self, file: &Path, saved: &mut HashMap<String, (u64, u64, u64)>) {
        let now: HashMap<String, (u64, u64, u64)> = self
            .all()
            .iter()
            .filter(|u| u.limits.has_quota())
            .map(|u| (u.path.clone(), u.flushed_usage()))
            .collect();
        if now == *saved {
            return;
        }
        let json = serde_json::to_vec(&now).unwrap_or_default();
        match crate::sys::replace_file(file, &json, 0o600) {
            Ok(()) => *saved = now,
            Err(e) => {
                crate::rarely!(
                    Warn,
                    "users: saving quota counts to {}: {e}; they are kept in memory and saved again in {SAVE_EVERY}s",
                    file.display()
                );
            }
        }
    }

    /// Takes the quota counts saved beside a users file (a missing file counts nothing).
    pub(super) fn load_usage(&self, users_file: &Path) {
        let file = usage_file(users_file);
        let counts: HashMap<String, (u64, u64, u64)> = match std::fs::read(&file) {
            Ok(b) => match serde_json::from_slice(&b) {
                Ok(c) => c,
                Err(e) => {
                    log::warn!(
                        "users: {} is not readable ({e}); quota counts start at zero",
                        file.display()
                    );
                    return;
                }
            },
            Err(_) => return,
        };
        for (path, (window, up, down)) in counts {
            if let Some(u) = self.get(&path) {
                u.set_used(window, up, down);
            }
        }
    }
}

/// Where a users file's quota counts are kept.
pub fn usage_file(users_file: &Path) -> PathBuf {
    let mut name = users_file.as_os_str().to_owned();
    name.push(".usage");
    PathBuf::from(name)
}

/// What a refusal means for `user`, in words.
fn describe(user: &User, why: Refusal) -> String {
    match why {
        Refusal::Expired => "expired".to_string(),
        Refusal::OverQuota => {
            let (up, down) = user.used();
            format!("over its quota ({up} bytes up, {down} down this period)")
        }
        Refusal::Connections => format!(
            "at its cap of {} connection(s)",
            user.limits.max_connections.unwrap_or(0)
        ),
    }
}
