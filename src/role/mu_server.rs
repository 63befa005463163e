//! The multi-user server: one TLS port, WebSocket tunnels routed by request path to each
//! user's destination, users changed at run time through the [`Controller`].

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Destinations;
use super::controller::Controller;
use crate::Result;
use crate::config::MuServerConfig;
use crate::transport::datagram::Kind;
use crate::transport::options::{
    AcceptOptions, EarlyData, GrpcServerOptions, PathMatch, WsServerOptions,
};
use crate::transport::{Acceptor, Limits, Listener, Tunnel, tcp};
use crate::users::{Pass, Throttled, Users};

/// The `mtt mu-server` process: loads the users, binds `-b` and the controller's `-c`,
/// reloads the certificate on SIGHUP or when its files change, and serves until
/// SIGINT/SIGTERM, then drains.
pub async fn main(cfg: MuServerConfig) -> Result<()> {
    let server = MuServer::start(cfg.clone()).await?;
    if cfg.fast_open {
        crate::platform::check_fast_open(true);
    }
    crate::shutdown::on_hangup(server.reloader())?;
    crate::watch::on_cert_change(server.reloader());
    let data = super::bind_listen(&cfg.listen, cfg.fast_open, cfg.fwmark).await?;
    let control = tcp::bind_for("c", &cfg.controller, false).await?;
    let shutdown = crate::shutdown::on_signals()?;
    server.run(data, control, shutdown).await
}

/// A ready-to-run multi-user server.
pub struct MuServer {
    cfg: MuServerConfig,
    acceptor: Arc<Acceptor<Pass>>,
    users: Arc<Users>,
    out: Destinations,
    token: String,
}

impl MuServer {
    /// Loads the users (from the file, or from the fleet's Redis) and the certificate.
    pub async fn start(cfg: MuServerConfig) -> Result<Self> {
        let users = match &cfg.users_redis {
            Some(opts) => Users::open_redis(opts.clone()).await?,
            None => Users::open(cfg.users_file.clone())?,
        };
        Self::with_users(cfg, users)
    }

    fn with_users(cfg: MuServerConfig, users: Arc<Users>) -> Result<Self> {
        let token = match &cfg.token {
            Some(t) => t.clone(),
            None => {
                let path = &cfg.token_file;
                let (token, made) = super::access::load_or_make_token(path)?;
                if made {
                    log::warn!(
                        "no -c-token: the controller's token is in {} (made now, {}); send it as 'Authorization: Bearer <token>'",
                        path.display(),
                        crate::sys::PRIVATE_FILE
                    );
                } else {
                    log::info!(target: crate::logging::NOTICE, "controller token from {}", path.display());
                }
                token
            }
        };
        let acceptor = Acceptor::new(&AcceptOptions {
            tls: cfg.tls.clone(),
            ws: Some(WsServerOptions {
                early_data: EarlyData {
                    on: cfg.early_data,
                    unmarked: None,
                },
                ..WsServerOptions::new(PathMatch::Route(users.clone()), cfg.fallback.clone())
            }),
            grpc: cfg.grpc.then(|| GrpcServerOptions {
                services: PathMatch::Route(users.clone()),
                calls: crate::transport::grpc::Service::of_user("/"),
                fallback: cfg.fallback.clone(),
            }),
            mux: cfg.mux,
            timeouts: cfg.timeouts,
            session_idle: cfg.timeout,
            udp: cfg.udp,
            trusted: cfg.trusted.clone(),
            // A fleet resumes sessions on any of its servers: sealed tickets, no 0-RTT.
            zero_rtt: cfg.early_data && cfg.users_redis.is_none(),
        })?;
        let out = Destinations {
            proxy_protocol: cfg.proxy_protocol,
            dial: tcp::DialOpts {
                mark: cfg.fwmark,
                ..Default::default()
            },
            connect: cfg.timeouts.connect,
            idle: cfg.timeout,
        };
        Ok(MuServer {
            cfg,
            acceptor: Arc::new(acceptor),
            users,
            out,
            token,
        })
    }

    /// The handle SIGHUP uses to re-read the certificate and the users file.
    pub fn reloader(&self) -> super::Reloader {
        super::Reloader {
            certs: self.acceptor.certs(),
            users: Some(self.users.clone()),
        }
    }

    /// The bearer token every controller request needs.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// SHA-256 of the served certificate, if TLS is on.
    pub fn fingerprint(&self) -> Option<String> {
        self.acceptor.certs().map(|c| c.fingerprint())
    }

    /// Serves tunnels on `data` and the controller on `control` until `shutdown`; an error
    /// only if the certificate could not be obtained (`-acme`).
    pub async fn run(
        self,
        data: Listener,
        control: TcpListener,
        shutdown: CancellationToken,
    ) -> crate::Result<()> {
        log::info!(
            target: crate::logging::NOTICE,
            "mu-server listening on {}, controller on {}, {} user(s)",
            data.local_addr(),
            control
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            self.users.len()
        );
        let c = &self.cfg.controller;
        let name = (c.ip().is_none() && !c.host.is_empty()).then(|| c.host.clone());
        let controller = Controller::new(self.users.clone(), self.token.clone(), name);
        let serving_controller = tokio::spawn(controller.run(control, shutdown.clone()));
        let limiting = tokio::spawn(self.users.clone().keep_limits(shutdown.clone()));
        let following = self
            .users
            .store()
            .is_some()
            .then(|| tokio::spawn(self.users.clone().follow(shutdown.clone())));
        // The fleet's servers seal session tickets with keys shared through Redis.
        if let (Some(store), Some(tickets)) = (self.users.store(), self.acceptor.tickets()) {
            tokio::spawn(store.clone().share_tickets(tickets, shutdown.clone()));
        }
        let limits = Limits {
            drain: self.cfg.drain,
            max_conns: self.cfg.max_conns,
        };
        let acceptor = self.acceptor.clone();
        let this = Arc::new(self);
        let serving = acceptor.clone().serve(
            data,
            shutdown.clone(),
            limits,
            move |tunnel: Tunnel<Pass>| {
                let this = this.clone();
                async move { this.handle(tunnel).await }
            },
        );
        let served = super::with_certs(acceptor.certs(), shutdown.clone(), serving).await;
        if served.is_err() {
            shutdown.cancel();
        }
        let _ = serving_controller.await;
        let _ = limiting.await;
        if let Some(f) = following {
            let _ = f.await;
        }
        served
    }

    async fn handle(&self, tunnel: Tunnel<Pass>) {
        // The pass lives as long as the tunnel: it holds its connection's seat.
        let Some(pass) = tunnel.owner else {
            log::warn!("{}: tunnel without a user", tunnel.id);
            return;
        };
        let user = &pass.user;
        let _live = user.tunnel_from(tunnel.id.client.map(|c| c.ip()));
        // A kick, or a limit reached, ends the tunnel.
        let ends = user.ends();
        log::debug!("{}: user {} → {}", tunnel.id, user.path, user.dst);
        match tunnel.kind {
            Kind::Stream => {
                // Counted (and limited) as the bytes cross the tunnel.
                let io = Box::new(Throttled::new(
                    tunnel.io,
                    user.shared().clone(),
                    ends.clone(),
                ));
                self.out
                    .relay(io, &tunnel.id, &user.dst, Some(user), Some(&ends))
                    .await;
            }
            Kind::Datagrams => {
                let idle = self.cfg.udp_timeout;
                let stop = tunnel.shutdown;
                let io = Box::new(Throttled::new(
                    tunnel.io,
                    user.shared().clone(),
                    ends.clone(),
                ));
                let relay = self.out.relay_udp(io, &tunnel.id, &user.dst, idle, &stop);
                // Boxed: TCP tunnels, the many, are not sized for the UDP relay.
                let relay = Box::pin(relay);
                tokio::select! {
                    _ = relay => {}
                    _ = ends.cancelled() => {}
                }
            }
        }
    }
}
