//! The fleet's session-ticket keys in Redis: one per hour, made by the first server that
//! asks, so that every server of the fleet opens the tickets of every other.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Store;
use crate::transport::tickets::{self, Tickets};
use crate::{Error, Result};

impl Store {
    /// The fleet's session-ticket keys of `epochs` (name ‖ key, [`tickets::NAME_LEN`] +
    /// [`tickets::KEY_LEN`] random bytes each): each made by the first server that asks
    /// (`SET NX`), kept by Redis for three epochs (then gone: what a leaked ticket could
    /// unseal goes with it).
    pub async fn ticket_keys(&self, epochs: &[u64]) -> Result<Vec<(u64, Vec<u8>)>> {
        let unavailable =
            |e: redis::RedisError| Error::unavailable("the users' Redis cannot be reached", e);
        let keep = tickets::EPOCH.as_secs() * 3;
        let keys: Vec<String> = epochs
            .iter()
            .map(|e| self.key(&format!("ticket_key:{e}")))
            .collect();
        let mut pipe = redis::pipe();
        for k in &keys {
            let made = crate::random::bytes::<{ tickets::NAME_LEN + tickets::KEY_LEN }>()?;
            pipe.cmd("SET")
                .arg(k)
                .arg(&made[..])
                .arg("NX")
                .arg("EX")
                .arg(keep)
                .ignore();
        }
        pipe.cmd("MGET").arg(&keys);
        let mut conn = self.conn.clone();
        let (got,): (Vec<Option<Vec<u8>>>,) =
            pipe.query_async(&mut conn).await.map_err(unavailable)?;
        Ok(epochs
            .iter()
            .zip(got)
            .filter_map(|(e, v)| v.map(|v| (*e, v)))
            .collect())
    }

    /// Keeps `tickets` sealing with the fleet's keys, so that a client resumes on any server
    /// of the fleet: the previous, current and next epochs' keys, fetched at start and at
    /// each new epoch (every 5 s while Redis is away: until the first answer this server
    /// hands out no tickets, and full handshakes go on), until `shutdown`.
    pub async fn share_tickets(
        self: Arc<Self>,
        tickets: Arc<Tickets>,
        shutdown: CancellationToken,
    ) {
        tickets.share();
        let mut failing = false;
        loop {
            let now = std::time::SystemTime::now();
            let epoch = tickets::epoch_of(now);
            let wait = match self.ticket_keys(&[epoch - 1, epoch, epoch + 1]).await {
                Ok(keys) => {
                    for (e, bytes) in keys {
                        let (name, key) = bytes.split_at(tickets::NAME_LEN.min(bytes.len()));
                        match (name.try_into(), key.try_into()) {
                            (Ok(name), Ok(key)) => tickets.install(e, name, key),
                            _ => log::warn!(
                                "fleet: the session-ticket key of epoch {e} in Redis is {} bytes, not {}: delete {} to have it made again",
                                bytes.len(),
                                tickets::NAME_LEN + tickets::KEY_LEN,
                                self.key(&format!("ticket_key:{e}"))
                            ),
                        }
                    }
                    failing = false;
                    let into = now
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs()
                        % tickets::EPOCH.as_secs();
                    Duration::from_secs(tickets::EPOCH.as_secs() - into + 1)
                }
                Err(e) => {
                    if !failing {
                        log::warn!(
                            "fleet: session-ticket keys not fetched ({e}); tunnels get full TLS handshakes until Redis answers"
                        );
                    }
                    failing = true;
                    Duration::from_secs(5)
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }
}
