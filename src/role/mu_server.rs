//! The multi-user server: one TLS port, WebSocket tunnels routed by request path to each
//! user's destination, users changed at run time through the [`Controller`].

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::api::Controller;
use super::{ConnId, log_relay_end, serve};
use crate::Result;
use crate::config::{CONNECT_TIMEOUT, MuServerConfig, WsServerConfig};
use crate::transport::http::{PathMatch, Tag};
use crate::transport::{Accepted, Acceptor, BoxIo, Listener, Stream, relay, tcp};
use crate::users::{User, Users};

/// A ready-to-run multi-user server.
pub struct MuServer {
    cfg: MuServerConfig,
    acceptor: Arc<Acceptor>,
    users: Arc<Users>,
    dial: tcp::DialOpts,
}

fn owner(tag: Option<Tag>) -> Option<Arc<User>> {
    tag.and_then(|t| t.downcast::<User>().ok())
}

impl MuServer {
    /// Loads the users file and the certificate.
    pub fn new(cfg: MuServerConfig) -> Result<Self> {
        let users = Users::load(cfg.users_file.clone())?;
        let ws = WsServerConfig {
            path: PathMatch::Route(users.clone()),
            fallback: cfg.fallback.clone(),
        };
        let acceptor = Acceptor::with_layers(cfg.tls.as_ref(), Some(&ws), cfg.mux)?;
        Ok(MuServer {
            cfg,
            acceptor: Arc::new(acceptor),
            users,
            dial: tcp::DialOpts::default(),
        })
    }

    /// The user table (shared with the controller).
    pub fn users(&self) -> Arc<Users> {
        self.users.clone()
    }

    /// The handle SIGHUP uses to re-read the certificate and the users file.
    pub fn reloader(&self) -> super::Reloader {
        super::Reloader {
            acceptor: self.acceptor.clone(),
            users: Some(self.users.clone()),
        }
    }

    /// SHA-256 of the served certificate, if TLS is on.
    pub fn fingerprint(&self) -> Option<String> {
        self.acceptor.fingerprint()
    }

    /// Serves tunnels on `data` and the controller on `control` until `shutdown`.
    pub async fn run(self, data: Listener, control: TcpListener, shutdown: CancellationToken) {
        log::info!(
            "mu-server listening on {}, controller on {}, {} user(s)",
            data.local_addr(),
            control
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            self.users.len()
        );
        let controller = Controller::new(self.users.clone(), self.cfg.token.clone());
        tokio::spawn(controller.run(control, shutdown.clone()));
        let this = Arc::new(self);
        let limits = super::Limits {
            drain: this.cfg.drain,
            max_conns: this.cfg.max_conns,
        };
        serve(data, shutdown, limits, move |conn, id| {
            let this = this.clone();
            async move { this.handle(conn, id).await }
        })
        .await;
    }

    async fn handle(self: Arc<Self>, conn: Stream, id: ConnId) {
        // Boxed: handshake state is freed once done instead of sizing every tunnel's task.
        match Box::pin(self.acceptor.accept(conn, &id.to_string())).await {
            Ok(Accepted::Tunnel(t, tag)) => match owner(tag) {
                Some(user) => self.to_destination(user, t, &id).await,
                None => log::warn!("{id}: tunnel without a user"),
            },
            Ok(Accepted::Session(mut session, tag)) => {
                let Some(first) = owner(tag) else { return };
                let path = first.path.clone();
                let mut n = 0u64;
                while let Some(next) = session.next().await {
                    let stream = match next {
                        Ok(s) => s,
                        Err(e) => {
                            log::info!("{id}: multiplexed session ended: {e}");
                            break;
                        }
                    };
                    n += 1;
                    // Each stream goes to the path's current user: a removed user's session
                    // opens nothing new, a replaced one's goes to the new destination.
                    let Some(user) = self.users.get(&path) else {
                        log::info!("{id}/{n}: refused: user {path} was removed");
                        continue;
                    };
                    let sid = ConnId {
                        id: id.id,
                        peer: format!("{}/{n}", id.peer),
                    };
                    let this = self.clone();
                    tokio::spawn(
                        async move { this.to_destination(user, Box::new(stream), &sid).await },
                    );
                }
            }
            Ok(Accepted::Nothing) => {}
            Err(e) => log::warn!("{id}: {e}"),
        }
    }

    async fn to_destination(&self, user: Arc<User>, mut tunnel: BoxIo, id: &ConnId) {
        let _live = user.tunnel();
        let mut dest =
            match Box::pin(tcp::connect_with(&user.dst, CONNECT_TIMEOUT, &self.dial)).await {
                Ok(d) => d,
                Err(e) => {
                    log::warn!("{id}: user {}: connect to {}: {e}", user.path, user.dst);
                    return;
                }
            };
        log::debug!("{id}: user {} → {}", user.path, user.dst);
        tokio::select! {
            res = relay(&mut tunnel, &mut dest, self.cfg.timeout) => {
                if let Ok(t) = &res {
                    user.add_bytes(t.a_to_b, t.b_to_a);
                }
                log_relay_end(id, res);
            }
            _ = user.kicked().cancelled() => {
                log::info!("{id}: user {} removed with kick: tunnel closed", user.path);
            }
        }
    }
}
