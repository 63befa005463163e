//! The client role: each accepted local connection gets a new tunnel from the [`Dialer`] and
//! is relayed through it.

use tokio_util::sync::CancellationToken;

use super::{ConnId, log_relay_end, serve};
use crate::Result;
use crate::config::ClientConfig;
use crate::transport::{Dialer, Listener, Stream, relay};
use std::sync::Arc;

/// A ready-to-run client: configuration checked, TLS set up.
pub struct Client {
    cfg: ClientConfig,
    dialer: Dialer,
}

impl Client {
    /// Sets up the layers (fails on a bad `-ca` file or server name).
    pub fn new(cfg: ClientConfig) -> Result<Self> {
        let dialer = Dialer::new(&cfg)?;
        Ok(Client { cfg, dialer })
    }

    /// Serves `listener` until `shutdown`, then drains.
    pub async fn run(self, listener: Listener, shutdown: CancellationToken) {
        log::info!(
            "client listening on {}, server {}",
            listener.local_addr(),
            self.cfg.server
        );
        let this = Arc::new(self);
        let limits = super::Limits {
            drain: this.cfg.drain,
            max_conns: this.cfg.max_conns,
        };
        serve(listener, shutdown, limits, move |local, id| {
            let this = this.clone();
            async move { this.handle(local, id).await }
        })
        .await;
    }

    async fn handle(&self, mut local: Stream, id: ConnId) {
        let start = std::time::Instant::now();
        // Boxed: the dial (TCP, TLS, WebSocket) is done before the relay starts, so its
        // state should not stay in every idle tunnel's task.
        match Box::pin(self.dialer.dial()).await {
            Ok(mut remote) => {
                crate::metrics::get().handshake_took(start.elapsed());
                log::debug!("{id}: tunnel to {} open", self.cfg.server);
                log_relay_end(&id, relay(&mut local, &mut remote, self.cfg.timeout).await);
            }
            // Dropping `local` closes it at once: the application learns immediately.
            Err(e) => {
                crate::metrics::get().fail("server");
                log::warn!("{id}: {e}");
            }
        }
    }
}
