//! The server role: every tunnel the [`Acceptor`] yields (a connection, or a stream of a
//! multiplexed session) is relayed to the one destination.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Destinations;
use crate::Result;
use crate::config::ServerConfig;
use crate::transport::datagram::Kind;
use crate::transport::{Acceptor, Limits, Listener, Tunnel, dns, tcp};

/// The `mtt server` process: binds `-b` and `-metrics`, reloads the certificate on SIGHUP or
/// when its files change, and serves until SIGINT/SIGTERM, then drains.
pub async fn main(cfg: ServerConfig, metrics: Option<crate::addr::HostPort>) -> Result<()> {
    let server = Server::new(cfg.clone())?;
    if cfg.fast_open {
        crate::platform::check_fast_open(true);
    }
    crate::shutdown::on_hangup(server.reloader())?;
    crate::watch::on_cert_change(server.reloader());
    let listener = super::bind_listen(&cfg.listen, cfg.fast_open, cfg.fwmark).await?;
    let shutdown = crate::shutdown::on_signals()?;
    super::serve_metrics(metrics.as_ref(), &shutdown).await?;
    server.run(listener, shutdown).await
}

/// A ready-to-run server: configuration checked, certificate loaded or made.
pub struct Server {
    cfg: ServerConfig,
    acceptor: Arc<Acceptor>,
    out: Destinations,
}

impl Server {
    /// Loads the certificate (or makes a self-signed one).
    pub fn new(cfg: ServerConfig) -> Result<Self> {
        let acceptor = Acceptor::new(&cfg.accept)?;
        let out = Destinations {
            proxy_protocol: cfg.proxy_protocol,
            dial: tcp::DialOpts {
                dns: cfg
                    .fallback_dns
                    .map(dns::Dns::new)
                    .transpose()?
                    .map(Arc::new),
                mark: cfg.fwmark,
                ..Default::default()
            },
            connect: cfg.accept.timeouts.connect,
            idle: cfg.timeout,
        };
        Ok(Server {
            cfg,
            acceptor: Arc::new(acceptor),
            out,
        })
    }

    /// The handle SIGHUP uses to re-read the certificate.
    pub fn reloader(&self) -> super::Reloader {
        super::Reloader {
            certs: self.acceptor.certs(),
            users: None,
        }
    }

    /// SHA-256 of the served certificate (what clients pin), if TLS is on.
    pub fn fingerprint(&self) -> Option<String> {
        self.acceptor.certs().map(|c| c.fingerprint())
    }

    /// Serves `listener` until `shutdown`, then drains; an error only if the certificate
    /// could not be obtained (`-acme`).
    pub async fn run(self, listener: Listener, shutdown: CancellationToken) -> Result<()> {
        log::info!(
            target: crate::logging::NOTICE,
            "server listening on {}, destination {}{}",
            listener.local_addr(),
            self.cfg.dest,
            if self.cfg.accept.udp { " (TCP and UDP)" } else { "" }
        );
        let limits = Limits {
            drain: self.cfg.drain,
            max_conns: self.cfg.max_conns,
        };
        let acceptor = self.acceptor.clone();
        let this = Arc::new(self);
        let stop = shutdown.clone();
        let serving = acceptor
            .clone()
            .serve(listener, shutdown, limits, move |tunnel: Tunnel| {
                let this = this.clone();
                async move {
                    let (cfg, out) = (&this.cfg, &this.out);
                    match tunnel.kind {
                        Kind::Stream => {
                            out.relay(tunnel.io, &tunnel.id, &cfg.dest, None, None)
                                .await;
                        }
                        // Boxed: TCP tunnels, the many, are not sized for the UDP relay.
                        Kind::Datagrams => {
                            let (id, stop) = (&tunnel.id, &tunnel.shutdown);
                            let udp =
                                out.relay_udp(tunnel.io, id, &cfg.dest, cfg.udp_timeout, stop);
                            Box::pin(udp).await
                        }
                    }
                }
            });
        super::with_certs(acceptor.certs(), stop, serving).await
    }
}
