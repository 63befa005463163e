//! The server role: each accepted connection goes through the [`Acceptor`] (TLS) and is
//! relayed to the destination.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{ConnId, log_relay_end, serve};
use crate::Result;
use crate::config::{CONNECT_TIMEOUT, ServerConfig};
use crate::transport::{Acceptor, Listener, Stream, relay, tcp};

/// A ready-to-run server: configuration checked, certificate loaded or made.
pub struct Server {
    cfg: ServerConfig,
    acceptor: Acceptor,
}

impl Server {
    /// Loads the certificate (or makes a self-signed one).
    pub fn new(cfg: ServerConfig) -> Result<Self> {
        let acceptor = Acceptor::new(&cfg)?;
        Ok(Server { cfg, acceptor })
    }

    /// SHA-256 of the served certificate (what clients pin), if TLS is on.
    pub fn fingerprint(&self) -> Option<String> {
        self.acceptor.fingerprint()
    }

    /// Serves `listener` until `shutdown`, then drains.
    pub async fn run(self, listener: Listener, shutdown: CancellationToken) {
        log::info!(
            "server listening on {}, destination {}",
            listener.local_addr(),
            self.cfg.dest
        );
        let this = Arc::new(self);
        serve(listener, shutdown, move |conn, id| {
            let this = this.clone();
            async move { this.handle(conn, id).await }
        })
        .await;
    }

    async fn handle(&self, conn: Stream, id: ConnId) {
        let mut tunnel = match self.acceptor.accept(conn, &id.to_string()).await {
            Ok(Some(t)) => t,
            Ok(None) => return,
            Err(e) => {
                log::warn!("{id}: {e}");
                return;
            }
        };
        let mut dest = match tcp::connect(&self.cfg.dest, CONNECT_TIMEOUT).await {
            Ok(d) => d,
            Err(e) => {
                // Dropping the tunnel closes the client's connection at once.
                log::warn!("{id}: connect to destination {}: {e}", self.cfg.dest);
                return;
            }
        };
        log::debug!("{id}: relaying to {}", self.cfg.dest);
        log_relay_end(&id, relay(&mut tunnel, &mut dest, self.cfg.timeout).await);
    }
}
