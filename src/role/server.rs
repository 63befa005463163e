//! The server role: each accepted connection goes through the [`Acceptor`]; every tunnel it
//! yields (the connection itself, or each stream of a multiplexed session) is relayed to the
//! destination.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{ConnId, log_relay_end, serve};
use crate::Result;
use crate::config::{CONNECT_TIMEOUT, ServerConfig};
use crate::transport::{Accepted, Acceptor, BoxIo, Listener, Stream, relay, tcp};

/// A ready-to-run server: configuration checked, certificate loaded or made.
pub struct Server {
    cfg: ServerConfig,
    acceptor: Arc<Acceptor>,
    dial: tcp::DialOpts,
}

impl Server {
    /// Loads the certificate (or makes a self-signed one).
    pub fn new(cfg: ServerConfig) -> Result<Self> {
        let acceptor = Acceptor::new(&cfg)?;
        // No fast open towards the destination: a destination that speaks first (SMTP, SSH)
        // would never see the connection, since fast open connects on our first write.
        let dial = tcp::DialOpts {
            dns: cfg
                .fallback_dns
                .map(crate::transport::dns::Dns::new)
                .transpose()?
                .map(Arc::new),
            ..Default::default()
        };
        Ok(Server {
            cfg,
            acceptor: Arc::new(acceptor),
            dial,
        })
    }

    /// The handle SIGHUP uses to re-read the certificate.
    pub fn reloader(&self) -> super::Reloader {
        super::Reloader {
            acceptor: self.acceptor.clone(),
            users: None,
        }
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
        let limits = super::Limits {
            drain: this.cfg.drain,
            max_conns: this.cfg.max_conns,
        };
        serve(listener, shutdown, limits, move |conn, id| {
            let this = this.clone();
            async move { this.handle(conn, id).await }
        })
        .await;
    }

    async fn handle(self: Arc<Self>, conn: Stream, id: ConnId) {
        let start = std::time::Instant::now();
        // Boxed: handshake state is freed once done instead of sizing every tunnel's task.
        let accepted = Box::pin(self.acceptor.accept(conn, &id.to_string())).await;
        let m = crate::metrics::get();
        match &accepted {
            Ok(Accepted::Nothing) => {}
            Ok(_) => m.handshake_took(start.elapsed()),
            Err(_) => m.fail("handshake"),
        }
        match accepted {
            Ok(Accepted::Tunnel(t, _)) => self.to_destination(t, &id).await,
            Ok(Accepted::Session(mut session, _)) => {
                log::debug!("{id}: multiplexed session");
                let mut n = 0u64;
                while let Some(next) = session.next().await {
                    match next {
                        Ok(stream) => {
                            n += 1;
                            let sid = ConnId {
                                id: id.id,
                                peer: format!("{}/{n}", id.peer),
                            };
                            let this = self.clone();
                            tokio::spawn(async move {
                                this.to_destination(Box::new(stream), &sid).await
                            });
                        }
                        Err(e) => {
                            log::info!("{id}: multiplexed session ended: {e}");
                            break;
                        }
                    }
                }
            }
            Ok(Accepted::Nothing) => {}
            Err(e) => log::warn!("{id}: {e}"),
        }
    }

    async fn to_destination(&self, mut tunnel: BoxIo, id: &ConnId) {
        let mut dest = match Box::pin(tcp::connect_with(
            &self.cfg.dest,
            CONNECT_TIMEOUT,
            &self.dial,
        ))
        .await
        {
            Ok(d) => d,
            Err(e) => {
                // Dropping the tunnel closes the client's side at once.
                crate::metrics::get().fail("destination");
                log::warn!("{id}: connect to destination {}: {e}", self.cfg.dest);
                return;
            }
        };
        log::debug!("{id}: relaying to {}", self.cfg.dest);
        log_relay_end(id, relay(&mut tunnel, &mut dest, self.cfg.timeout).await);
    }
}
