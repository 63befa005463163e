//! The fleet's counters in Redis: each second's flush (bytes, live tunnels, and the quota
//! counts of each user's period, answered with the fleet's sums), and the fleet-wide view.

use std::collections::HashMap;
use std::sync::Arc;

use redis::AsyncCommands;

use super::{LIVE_TTL_SECS, Store};
use crate::users::User;
use crate::{Error, Result};

/// Adds a flush's bytes to the counts of each quota user's period (groups of path, period,
/// up, down), starting them again when a later period begins; answers the counts.
const COUNT: &str = r"
local out = {}
for i = 1, #ARGV, 4 do
  local p = ARGV[i]
  local w = tonumber(ARGV[i + 1])
  local was = tonumber(redis.call('HGET', KEYS[1], p) or '-1')
  if w > was then
    redis.call('HSET', KEYS[1], p, ARGV[i + 1])
    redis.call('HDEL', KEYS[2], p)
    redis.call('HDEL', KEYS[3], p)
  end
  out[#out + 1] = redis.call('HINCRBY', KEYS[2], p, ARGV[i + 2])
  out[#out + 1] = redis.call('HINCRBY', KEYS[3], p, ARGV[i + 3])
end
return out
";

impl Store {
    /// Adds what every user's tunnels moved since the last flush to the fleet's totals and
    /// to the quota counts (taking the fleet's counts back), and renews this server's live
    /// counts; on failure the bytes wait for the next flush.
    pub(super) async fn flush(&self, users: &[Arc<User>]) -> redis::RedisResult<()> {
        let mut taken = Vec::new();
        let mut pipe = redis::pipe();
        let now = crate::users::limits::unix_now();
        let mut counted = Vec::new();
        let mut count_args = Vec::new();
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
            if u.limits.has_quota() {
                let window = u.window(now);
                count_args.extend([
                    u.path.clone(),
                    window.to_string(),
                    up.to_string(),
                    down.to_string(),
                ]);
                counted.push((u.clone(), window));
            }
            let (n, _, _) = u.counters();
            if n > 0 {
                live.push((u.path.clone(), n));
            }
        }
        if !live.is_empty() {
            pipe.hset_multiple(&live_key, &live).ignore();
            pipe.expire(&live_key, LIVE_TTL_SECS).ignore();
        }
        if !counted.is_empty() {
            pipe.cmd("EVAL")
                .arg(COUNT)
                .arg(3)
                .arg(self.key("quota_window"))
                .arg(self.key("quota_up"))
                .arg(self.key("quota_down"))
                .arg(count_args);
        }
        let mut conn = self.conn.clone();
        let done: redis::RedisResult<Vec<Vec<u64>>> = pipe.atomic().query_async(&mut conn).await;
        match done {
            Ok(answers) => {
                let counts = answers.into_iter().next().unwrap_or_default();
                for ((u, window), c) in counted.iter().zip(counts.chunks_exact(2)) {
                    u.set_used(*window, c[0], c[1]);
                }
                Ok(())
            }
            Err(e) => {
                for (u, up, down) in taken {
                    u.unflush(up, down);
                }
                Err(e)
            }
        }
    }

    /// Fleet-wide (live tunnels, bytes up, bytes down) per path.
    pub async fn fleet(&self) -> Result<HashMap<String, (u64, u64, u64)>> {
        let unavailable =
            |e: redis::RedisError| Error::unavailable("the users' Redis cannot be reached", e);
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
