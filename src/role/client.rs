//! The client role: each accepted local connection gets a new tunnel from the [`Dialer`] and
//! is relayed through it.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{Counted, log_relay_end};
use crate::Result;
use crate::config::ClientConfig;
use crate::metrics::Failure;
use crate::transport::{Acceptor, Dialer, Limits, Listener, Tunnel, relay};

/// A ready-to-run client: configuration checked, TLS set up.
pub struct Client {
    cfg: ClientConfig,
    dialer: Dialer,
}

impl Client {
    /// Sets up the layers (fails on a bad `-ca` file or server name).
    pub fn new(cfg: ClientConfig) -> Result<Self> {
        let dialer = Dialer::new(&cfg.dial)?;
        Ok(Client { cfg, dialer })
    }

    /// Serves `listener` until `shutdown`, then drains.
    pub async fn run(self, listener: Listener, shutdown: CancellationToken) {
        log::info!(
            target: crate::logging::NOTICE,
            "client listening on {}, server {}",
            listener.local_addr(),
            self.cfg.dial.server
        );
        let limits = Limits {
            drain: self.cfg.drain,
            max_conns: self.cfg.max_conns,
        };
        let this = Arc::new(self);
        Arc::new(Acceptor::<()>::plain())
            .serve(listener, shutdown, limits, move |local| {
                let this = this.clone();
                async move { this.handle(local).await }
            })
            .await;
    }

    async fn handle(&self, local: Tunnel) {
        let Tunnel {
            io: mut local, id, ..
        } = local;
        let start = std::time::Instant::now();
        // Boxed: the dial (TCP, TLS, WebSocket) is done before the relay starts, so its
        // state should not stay in every idle tunnel's task.
        match Box::pin(self.dialer.dial()).await {
            Ok(mut remote) => {
                crate::metrics::get().handshake_took(start.elapsed());
                log::debug!("{id}: tunnel to {} open", self.cfg.dial.server);
                let res = relay(&mut local, &mut remote, self.cfg.timeout, &Counted(None)).await;
                log_relay_end(&id, &res);
            }
            // Dropping `local` closes it at once: the application learns immediately.
            Err(e) => {
                crate::metrics::get().fail(Failure::Server);
                log::warn!("{id}: {e}");
            }
        }
    }
}
