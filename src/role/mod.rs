//! The roles, and what the servers share: the way to the destination (with its metrics and
//! logs) and the reload handle that SIGHUP and the certificate watcher use.

pub mod access;
pub mod client;
pub mod controller;
mod dashboard;
pub mod mu_server;
mod reply;
pub mod server;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::addr::HostPort;
use crate::metrics::Failure;
use crate::transport::relay::Tally;
use tokio_util::sync::CancellationToken;

use crate::Result;
use crate::certs::Certs;
use crate::transport::{BoxIo, ConnId, Listener, Transferred, relay, tcp};

/// Where a server's tunnels go, and how it dials there.
pub(crate) struct Destinations {
    /// Name resolution and socket options of the dials. No fast open: a destination that
    /// speaks first (SMTP, SSH) would never see the connection, since fast open connects on
    /// our first write.
    pub dial: tcp::DialOpts,
    /// Connect limit.
    pub connect: Duration,
    /// Idle timeout of a relay.
    pub idle: Duration,
    /// Send each destination a PROXY v2 header first (`-proxy-protocol`).
    pub proxy_protocol: bool,
}

/// How long a tunnel whose user was kicked or reached a limit may take to hand the
/// destination what it already read.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

impl Destinations {
    /// Connects to `dest` and relays `tunnel` to it until both sides are done (or `stop`
    /// fires); counts and logs the outcome once. Returns what was moved, if it ran.
    pub async fn relay(
        &self,
        mut tunnel: BoxIo,
        id: &ConnId,
        dest: &HostPort,
        user: Option<&crate::users::User>,
        stop: Option<&tokio_util::sync::CancellationToken>,
    ) -> Option<Transferred> {
        let connecting = Box::pin(tcp::connect_with(dest, self.connect, &self.dial));
        let mut out = match connecting.await {
            Ok(d) => d,
            Err(e) => {
                // Dropping the tunnel closes the client's side at once.
                crate::metrics::get().fail(Failure::Destination);
                log::warn!("{id}: connect to destination {dest}: {e}");
                return None;
            }
        };
        if self.proxy_protocol {
            use tokio::io::AsyncWriteExt;
            let header = match (id.client, id.local) {
                (Some(client), Some(local)) => crate::transport::origin::v2_header(
                    client,
                    local,
                    user.map(|u| u.path.as_str()),
                ),
                _ => crate::transport::origin::v2_local(),
            };
            if let Err(e) = out.write_all(&header).await {
                crate::metrics::get().fail(Failure::Destination);
                log::warn!("{id}: PROXY header to destination {dest}: {e}");
                return None;
            }
        }
        log::debug!("{id}: relaying to {dest}");
        let counted = Counted;
        // Pinned where it is made and awaited in place: moved into an await, it would be
        // kept twice in every tunnel's future.
        let mut relayed = std::pin::pin!(relay(&mut tunnel, &mut out, self.idle, &counted));
        let res = match stop {
            None => relayed.as_mut().await,
            Some(stop) => {
                tokio::select! {
                    res = relayed.as_mut() => res,
                    _ = stop.cancelled() => {
                        // What the relay has read (and counted) still reaches the
                        // destination: the tunnel refuses its next read and write, so a busy
                        // relay ends by itself once its write is done; an idle one is cut.
                        let _ = tokio::time::timeout(STOP_GRACE, relayed.as_mut()).await;
                        log::info!("{id}: closed: its user was removed with kick or reached a limit");
                        return None;
                    }
                }
            }
        };
        log_relay_end(id, &res);
        res.ok()
    }
}

impl Destinations {
    /// Relays a datagram tunnel to `dest` over UDP (one connected socket per association)
    /// until it ends, is idle for `idle`, or `stop` fires (shutdown, a kick).
    pub async fn relay_udp(
        &self,
        tunnel: BoxIo,
        id: &ConnId,
        dest: &HostPort,
        idle: Duration,
        stop: &tokio_util::sync::CancellationToken,
    ) {
        let sock = crate::transport::udp::connect_dest(dest, self.dial.dns.as_deref());
        let sock = match sock.await {
            Ok(s) => s,
            Err(e) => {
                crate::metrics::get().fail(Failure::Destination);
                log::warn!("{id}: UDP to destination {dest}: {e}");
                return;
            }
        };
        log::debug!("{id}: UDP association to {dest}");
        let relay = crate::transport::udp::relay_to_socket(tunnel, sock, idle);
        tokio::select! {
            res = relay => match res {
                Ok(()) => log::debug!("{id}: UDP association closed"),
                Err(e) => match crate::transport::relay::plain_ending(&e) {
                    Some(why) => log::debug!("{id}: UDP association closed: {why}"),
                    None => log::info!("{id}: UDP association ended: {e}"),
                },
            },
            _ = stop.cancelled() => log::debug!("{id}: UDP association closed: stopping"),
        }
    }
}

/// What SIGHUP re-reads: the certificate files, and the mu-server's users file.
#[derive(Clone)]
pub struct Reloader {
    pub(crate) certs: Option<Arc<Certs>>,
    pub(crate) users: Option<Arc<crate::users::Users>>,
}

impl Reloader {
    /// The certificate files worth watching for changes, if there are any.
    pub fn cert_files(&self) -> Option<[std::path::PathBuf; 2]> {
        self.certs.as_ref().and_then(|c| c.files())
    }

    /// Re-reads only `-cert`/`-key` (what a change on disk calls for), and says how it went.
    pub fn reload_cert(&self) {
        self.report_cert(self.try_reload_cert())
    }

    /// Re-reads `-cert`/`-key`: the new fingerprint, `None` without files.
    pub fn try_reload_cert(&self) -> crate::Result<Option<String>> {
        self.certs.as_ref().map_or(Ok(None), |c| c.reload())
    }

    /// Says how a reload of `-cert`/`-key` went.
    pub fn report_cert(&self, reloaded: crate::Result<Option<String>>) {
        match reloaded {
            Ok(Some(fp)) => log::info!(
                target: crate::logging::NOTICE,
                "reloaded -cert/-key: new handshakes present SHA-256 {fp}"
            ),
            Ok(None) => log::info!("reload: no -cert/-key files to re-read"),
            Err(e) => log::error!("reload: {}; keeping the current certificate", e.report()),
        }
    }

    /// Re-reads what can be; a bad file keeps what was loaded and says why, once.
    pub async fn reload(&self) {
        self.reload_cert();
        if let Some(users) = &self.users {
            match users.reload_file().await {
                Ok(Some(n)) => {
                    log::info!(target: crate::logging::NOTICE, "reloaded -users-file: {n} user(s)")
                }
                Ok(None) => {}
                Err(e) => log::error!("reload: {}; keeping the current users", e.report()),
            }
        }
    }
}

/// Runs `serving` while the certificate is obtained and renewed (ACME), if it comes from an
/// ACME CA: an error only if the first certificate cannot be had (no tunnel is carried
/// without one; `serving` then still drains).
pub(crate) async fn with_certs(
    certs: Option<Arc<Certs>>,
    shutdown: CancellationToken,
    serving: impl std::future::Future<Output = ()>,
) -> crate::Result<()> {
    let Some(acme) = certs.and_then(|c| c.acme()) else {
        serving.await;
        return Ok(());
    };
    tokio::pin!(serving);
    let certifying = acme.run(shutdown);
    tokio::pin!(certifying);
    tokio::select! {
        _ = &mut serving => Ok(()),
        r = &mut certifying => {
            r?;
            serving.await;
            Ok(())
        }
    }
}

/// Counts a tunnel's bytes as they move (up: towards the destination) into the process's
/// metrics (a mu-server's user counts its own, as they cross its tunnel: `users::Throttled`).
pub(crate) struct Counted;

impl Tally for Counted {
    fn add(&self, up: u64, down: u64) {
        crate::metrics::get().add_bytes(up, down);
    }
}

/// Logs how a relay ended, once per tunnel (its bytes were counted as they moved).
pub(crate) fn log_relay_end(id: &ConnId, res: &io::Result<Transferred>) {
    match res {
        Ok(t) => {
            log::debug!(
                "{id}: closed ({} bytes up, {} bytes down)",
                t.a_to_b,
                t.b_to_a
            );
        }
        Err(e) => match crate::transport::relay::plain_ending(e) {
            Some(why) => log::debug!("{id}: closed: {why}"),
            None => log::info!("{id}: tunnel ended: {e}"),
        },
    }
}

/// Starts the `-metrics` endpoint, if asked for.
async fn serve_metrics(addr: Option<&HostPort>, shutdown: &CancellationToken) -> Result<()> {
    if let Some(addr) = addr {
        let l = tcp::bind_for("metrics", addr, false).await?;
        log::info!(
            target: crate::logging::NOTICE,
            "metrics at http://{}/metrics",
            l.local_addr().map(|a| a.to_string()).unwrap_or_default()
        );
        tokio::spawn(crate::admin::serve_metrics(l, shutdown.clone()));
    }
    Ok(())
}

/// Binds a server's listener: `-b` as TCP (accepting fast open with `-fast-open`) or, with
/// `-bind-unix`, a Unix socket.
/// The listener of a server; `mark`ed, so are the connections it accepts and its replies.
async fn bind_listen(
    listen: &crate::config::Listen,
    fast_open: bool,
    mark: Option<u32>,
) -> Result<Listener> {
    Ok(match listen {
        crate::config::Listen::Tcp(a) => {
            let l = tcp::bind_tcp_with(a, fast_open).await?;
            if let Some(mark) = mark {
                tcp::set_mark(socket2::SockRef::from(&l), mark)?;
            }
            Listener::from(l)
        }
        crate::config::Listen::Unix(p) => Listener::Unix(crate::sys::local::bind(p)?),
    })
}
