//! The client role: each accepted local connection gets a new tunnel from the [`Dialer`] and
//! is relayed through it; with `-udp`, datagrams to the same address are carried too
//! ([`crate::transport::udp`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use tokio_util::sync::CancellationToken;

use super::{Counted, log_relay_end};
use crate::addr::HostPort;
use crate::config::ClientConfig;
use crate::metrics::Failure;
use crate::transport::datagram::Kind;
use crate::transport::serve::accept_loop;
use crate::transport::{ConnId, Dialer, Limits, Listener, Stream, relay, tcp};
use crate::{Error, Result};

use crate::transport::udp::UdpSide;

/// How long a tunnel with early data waits for the application's first write before it
/// upgrades without it (a server-speaks-first protocol writes nothing).
const EARLY_WAIT: Duration = Duration::from_millis(100);

/// How long a tunnel about to resume with 0-RTT waits for the application's first write
/// (an application that speaks first has written by the time its connection is accepted;
/// one whose server speaks first loses this, and gains the round trip the server's early
/// dial saves). Short: it is paid before the TCP connection to the server is even begun.
const ZERO_RTT_WAIT: Duration = Duration::from_millis(10);

/// The most of a first write sent as TLS early data. A server that declines it (it restarted
/// and lost the session, or has `-early-data off`) skips the early records up to a budget of
/// 16 KiB of ciphertext; rustls (0.23.46) charges a skipped record to that budget again at
/// each read until the client's Finished comes, which is at least twice: so a declined
/// flight of more than about 8 KiB failed the handshake. Below half the budget, with room
/// for each record's tag and type byte, any declining server gets through.
const ZERO_RTT_MAX: usize = crate::transport::tls::EARLY_DATA_MAX as usize / 2 - 256;

/// The `mtt client` process: binds `-b` (and UDP beside it with `-udp`) and `-metrics`, then
/// serves until SIGINT/SIGTERM and drains. A `plugin` without UDP says so if its host sends
/// it datagrams anyway.
pub async fn main(mut cfg: ClientConfig, metrics: Option<HostPort>, plugin: bool) -> Result<()> {
    if cfg.dial.tls.hello.ech == crate::transport::options::Ech::Dns {
        let name = &cfg.dial.tls.server_name;
        let list = crate::transport::dns::ech_config_list(name, cfg.dial.fallback_dns).await?;
        log::info!(target: "mtt::notice", "-ech-dns: ECH configuration of {name} fetched ({} bytes)", list.len());
        cfg.dial.tls.hello.ech = crate::transport::options::Ech::Config(list);
    }
    let client = Client::new(cfg.clone())?;
    if let Some(mark) = cfg.dial.fwmark {
        tcp::check_mark(mark)?;
    }
    if cfg.dial.fast_open {
        crate::platform::check_fast_open(false);
    }
    crate::shutdown::ignore_hangup()?;
    let listener = Listener::from(tcp::bind_tcp_with(&cfg.listen, cfg.dial.fast_open).await?);
    refuse_dialling_itself(&cfg.dial.server, listener.local_addr())?;
    let udp = match cfg.udp {
        None => None,
        Some(_) => Some(
            listener
                .bind_udp_beside()
                .map_err(|e| Error::io(format!("-udp: listen for UDP on {}", cfg.listen), e))?,
        ),
    };
    if plugin && udp.is_none() {
        say_datagrams_unheard(&listener);
    }
    let shutdown = crate::shutdown::on_signals()?;
    super::serve_metrics(metrics.as_ref(), &shutdown).await?;
    client.serve(listener, udp, shutdown).await;
    Ok(())
}

/// A plugin told `udp=false` whose host sends it datagrams anyway (shadowsocks in
/// `tcp_and_udp` mode) would lose them without a word: the port listens for UDP until the
/// first datagram, says once what to change, and closes (later ones are refused by the
/// kernel, at no cost here).
fn say_datagrams_unheard(listener: &Listener) {
    let Ok(sock) = listener.bind_udp_beside() else {
        return;
    };
    tokio::spawn(async move {
        let mut one = [0u8; 1];
        if let Ok((_, from)) = sock.recv_from(&mut one).await {
            log::warn!(
                "UDP from {from} to this plugin's port is dropped: the plugin options say udp=false; remove it to carry UDP, or set the shadowsocks host's mode to tcp_only"
            );
        }
    });
}

/// A client whose server (`-s`) is its own listener (`-b`) would dial itself for every
/// connection, each dial a connection more, until it runs out of descriptors: refused at
/// start. Only what needs no name resolution is compared (an IP literal, `localhost`).
fn refuse_dialling_itself(server: &HostPort, listening: String) -> Result<()> {
    let Ok(local) = listening.parse::<std::net::SocketAddr>() else {
        return Ok(());
    };
    let ip = match server.ip() {
        Some(ip) => ip,
        None if server.host.eq_ignore_ascii_case("localhost") => {
            std::net::IpAddr::from([127, 0, 0, 1])
        }
        None => return Ok(()),
    };
    let same_ip = ip == local.ip()
        || (local.ip().is_unspecified() && (ip.is_loopback() || ip.is_unspecified()));
    if same_ip && server.port == local.port() {
        return Err(Error::usage(format!(
            "-s {server} is this client's own -b ({local}): every connection would dial the client again; give -s the server's address"
        )));
    }
    Ok(())
}

/// A ready-to-run client: configuration checked, TLS set up.
pub struct Client {
    cfg: ClientConfig,
    dialer: Arc<Dialer>,
}

impl Client {
    /// Sets up the layers (fails on a bad `-ca` file or server name).
    pub fn new(cfg: ClientConfig) -> Result<Self> {
        let dialer = Arc::new(Dialer::new(&cfg.dial)?);
        Ok(Client { cfg, dialer })
    }

    /// Serves `listener` until `shutdown`, then drains.
    pub async fn run(self, listener: Listener, shutdown: CancellationToken) {
        self.serve(listener, None, shutdown).await;
    }

    /// [`Client::run`], and with `udp` (a socket bound where `-b` says, given `-udp`) carries
    /// the datagrams that arrive on it.
    pub async fn serve(
        self,
        listener: Listener,
        udp: Option<crate::transport::udp::Socket>,
        shutdown: CancellationToken,
    ) {
        let udp_side = match (udp, self.cfg.udp) {
            (Some(sock), Some(cfg)) => {
                log::info!(
                    target: crate::logging::NOTICE,
                    "client carrying UDP on {}",
                    sock.local_addr().map(|a| a.to_string()).unwrap_or_default()
                );
                let side = UdpSide::new(sock, self.dialer.clone(), cfg);
                Some(tokio::spawn(side.run(shutdown.clone())))
            }
            _ => None,
        };
        self.serve_tcp(listener, shutdown).await;
        if let Some(side) = udp_side {
            let _ = side.await;
        }
    }

    async fn serve_tcp(self, listener: Listener, shutdown: CancellationToken) {
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
        // The local side has no layers: each accepted connection is relayed as it is (going
        // through the Acceptor would cost every idle tunnel about 1.5 KiB, measured).
        accept_loop(listener, shutdown, limits, move |local, id, _tasks| {
            this.clone().handle(local, id)
        })
        .await;
    }

    async fn handle(self: Arc<Self>, mut local: Stream, id: ConnId) {
        let _active = crate::metrics::get().serving();
        let start = std::time::Instant::now();
        // Early data: the application's first write (if it comes within EARLY_WAIT) rides
        // the WebSocket upgrade, or (within ZERO_RTT_WAIT) a resumed TLS hello, saving the
        // round trip before the destination hears it.
        let mut first = Vec::new();
        let wait = match self.dialer.early_data() {
            Some(max) => Some((max.max(16 * 1024), EARLY_WAIT)),
            None if self.dialer.zero_rtt_ready() => Some((ZERO_RTT_MAX, ZERO_RTT_WAIT)),
            None => None,
        };
        if let Some((max, wait)) = wait {
            first = vec![0u8; max];
            // Boxed: the wait's timer is not part of every tunnel's task.
            let n = match Box::pin(tokio::time::timeout(wait, local.read(&mut first))).await {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    log::debug!("{id}: closed before its first write: {e}");
                    return;
                }
                Err(_) => 0,
            };
            first.truncate(n);
            // Only what was read is kept through the dial (a round trip or more): the read's
            // whole buffer, kept by every tunnel being set up, held 8–16 KiB each.
            first.shrink_to_fit();
        }
        // Boxed: the dial (TCP, TLS, WebSocket) is done before the relay starts, so its
        // state should not stay in every idle tunnel's task.
        let dialing = async {
            if first.is_empty() {
                self.dialer.dial(Kind::Stream).await
            } else {
                self.dialer.dial_early(&first).await
            }
        };
        let dialed = Box::pin(dialing).await;
        // Sent: the tunnel does not keep the first write's buffer.
        drop(first);
        match dialed {
            Ok(mut remote) => {
                crate::metrics::get().handshake_took(start.elapsed());
                log::debug!("{id}: tunnel to {} open", self.cfg.dial.server);
                let res = relay(&mut local, &mut remote, self.cfg.timeout, &Counted).await;
                match &res {
                    // The application's side ending badly is its own business; the server's
                    // is news: it stopped, or the way to it broke.
                    Err(e) if relay::failed_side(e) == Some(relay::Side::B) => {
                        crate::rarely!(
                            Warn,
                            "{id}: the tunnel broke off on the server's side ({e}): the server stopped, its destination reset the connection, or the network cut it"
                        );
                    }
                    _ => log_relay_end(&id, &res),
                }
            }
            // Dropping `local` closes it at once: the application learns immediately.
            Err(e) => {
                crate::metrics::get().fail(Failure::Server);
                crate::rarely!(Warn, "{id}: {}{}", e.report(), hint(&e));
            }
        }
    }
}

/// What a failed dial may mean, where the error alone does not say.
fn hint(e: &Error) -> &'static str {
    match e {
        Error::Tunnel {
            step: crate::error::Step::Tls,
            source,
            ..
        } if source.kind() == std::io::ErrorKind::UnexpectedEof => {
            " (the server closed the connection during the TLS handshake: it may be at its -max-conns, stopping, or no mtt server)"
        }
        Error::Tunnel {
            step: crate::error::Step::WebSocket,
            source,
            ..
        } if source.kind() == std::io::ErrorKind::UnexpectedEof => {
            " (the server closed the connection instead of answering the upgrade: does it run with -wss? it must be on both ends)"
        }
        _ => "",
    }
}
