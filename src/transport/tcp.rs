//! Layer 1, TCP: dialling with a connect timeout, binding listeners (dual-stack, fast open),
//! and the socket options every tunnel socket gets (TCP_NODELAY, keepalive).

use std::io;
use std::net::SocketAddr;

use std::time::Duration;

use socket2::{Domain, SockRef, Socket, TcpKeepalive, Type};

use tokio::net::{TcpListener, TcpStream};

use crate::addr::HostPort;
use crate::error::IoContext;
use crate::{Error, Result};

/// Keepalive: the first probe after 15 s of silence (Go's default, which the original had),
/// then every 5 s; three unanswered probes end the connection. A multiplexed session whose
/// server vanished is thus found dead within about 30 s and replaced.
const KEEPALIVE: Duration = Duration::from_secs(15);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Data unacknowledged this long ends the connection (TCP_USER_TIMEOUT), instead of the
/// kernel's default of about 15 minutes of retransmissions.
#[cfg(any(target_os = "linux", target_os = "android"))]
const USER_TIMEOUT: Duration = Duration::from_secs(30);
/// Unsent bytes the kernel keeps queued for a socket before it stops taking more
/// (TCP_NOTSENT_LOWAT). Without a limit the queue grows to the autotuned send buffer (MiBs)
/// and a small exchange written behind a bulk transfer (a multiplexed sibling, an interactive
/// tunnel) waits for all of it; bytes in flight are not limited by this.
#[cfg(any(target_os = "linux", target_os = "android"))]
const NOTSENT_LOWAT: u32 = 128 * 1024;

pub(crate) fn tune(stream: &TcpStream) {
    tune_socket(SockRef::from(stream));
}

/// Whether a connection accepted by a tuned listener has the listener's options already:
/// Linux copies them to it (the accepted socket is a clone of the listening one), so each
/// accepted tunnel saves the seven system calls of [`tune`].
pub(crate) const ACCEPTED_INHERIT: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// [`tune`]'s options on any TCP socket (a listener's pass to what it accepts on Linux).
pub(crate) fn tune_socket(sock: SockRef<'_>) {
    // Failures here only cost latency or dead-peer detection; the connection stays usable.
    if let Err(e) = sock.set_tcp_nodelay(true) {
        log::debug!("TCP_NODELAY: {e}");
    }
    let ka = TcpKeepalive::new()
        .with_time(KEEPALIVE)
        .with_interval(KEEPALIVE_INTERVAL);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let ka = ka.with_retries(3);
    if let Err(e) = sock.set_tcp_keepalive(&ka) {
        log::debug!("TCP keepalive: {e}");
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = sock.set_tcp_user_timeout(Some(USER_TIMEOUT)) {
        log::debug!("TCP_USER_TIMEOUT: {e}");
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = sock.set_tcp_notsent_lowat(NOTSENT_LOWAT) {
        log::debug!("TCP_NOTSENT_LOWAT: {e}");
    }
}

/// How to dial.
#[derive(Debug, Clone, Default)]
pub struct DialOpts {
    /// TCP fast open (`TCP_FASTOPEN_CONNECT`): the SYN carries the first write. Only for
    /// dials whose first move is ours (a TLS ClientHello): a socket nobody writes to first
    /// is never connected.
    pub fast_open: bool,
    /// Resolve host names through this DNS server instead of the system's.
    pub dns: Option<std::sync::Arc<super::dns::Dns>>,
    /// Android VPN: hand each socket to the protect server at this path before connecting.
    pub protect: Option<std::path::PathBuf>,
    /// Mark each socket (SO_MARK) for policy routing.
    pub mark: Option<u32>,
}

/// Whether this process may mark sockets with `mark`: tried once at start on a socket of
/// its own, so that a missing capability stops the client there, not at every dial.
pub(crate) fn check_mark(mark: u32) -> Result<()> {
    let probe = Socket::new(Domain::IPV4, Type::STREAM, None)
        .map_err(|e| Error::io("-fwmark: a socket to try the mark on", e))?;
    set_mark(SockRef::from(&probe), mark)
}

/// Marks `sock` with `mark` for policy routing (SO_MARK); the error says what it needs.
pub(crate) fn set_mark(sock: SockRef<'_>, mark: u32) -> Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let r = sock.set_mark(mark);
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let r: io::Result<()> = {
        let _ = sock;
        Err(io::Error::from(io::ErrorKind::Unsupported))
    };
    r.map_err(|e| {
        let fix = if e.kind() == io::ErrorKind::PermissionDenied {
            "marks need CAP_NET_ADMIN (or CAP_NET_RAW, Linux 5.17 on): run as root, or grant it (systemd: AmbientCapabilities=CAP_NET_ADMIN; setcap cap_net_admin+ep on the binary), or drop -fwmark"
        } else {
            "socket marks are Linux's: drop -fwmark"
        };
        Error::io(format!("-fwmark {mark}: marking a socket failed; {fix}"), e)
    })
}

async fn connect_one(sa: SocketAddr, opts: &DialOpts) -> io::Result<TcpStream> {
    if !opts.fast_open && opts.protect.is_none() && opts.mark.is_none() {
        return TcpStream::connect(sa).await;
    }
    let socket = if sa.is_ipv6() {
        tokio::net::TcpSocket::new_v6()?
    } else {
        tokio::net::TcpSocket::new_v4()?
    };
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if opts.fast_open
        && let Err(e) = nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::TcpFastOpenConnect,
            &true,
        )
    {
        log::debug!("TCP_FASTOPEN_CONNECT: {e}");
    }
    if let Some(mark) = opts.mark {
        set_mark(SockRef::from(&socket), mark).map_err(io::Error::other)?;
    }
    if let Some(path) = &opts.protect {
        super::protect::protect(&socket, path).await?;
    }
    socket.connect(sa).await
}

/// Resolves `addr` now and connects to its addresses in turn within `timeout` overall.
pub async fn connect(addr: &HostPort, timeout: Duration) -> io::Result<TcpStream> {
    connect_with(addr, timeout, &DialOpts::default()).await
}

/// [`connect`] with options.
pub async fn connect_with(
    addr: &HostPort,
    timeout: Duration,
    opts: &DialOpts,
) -> io::Result<TcpStream> {
    // Whether the name is still being resolved through -fallback-dns when time runs out.
    let resolving = std::sync::atomic::AtomicBool::new(false);
    let attempt = async {
        let mut last = None;
        let addrs = match &opts.dns {
            Some(dns) => {
                use std::sync::atomic::Ordering::Relaxed;
                resolving.store(addr.ip().is_none(), Relaxed);
                let found = dns.resolve(addr).await?;
                resolving.store(false, Relaxed);
                found
            }
            None => addr.resolve().await?,
        };
        for sa in addrs {
            match connect_one(sa, opts).await {
                Ok(s) => {
                    tune(&s);
                    return Ok(s);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address")))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) if resolving.load(std::sync::atomic::Ordering::Relaxed) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "no DNS answer about {} from -fallback-dns {} within {timeout:?}: is that server reachable?",
                addr.host,
                opts.dns
                    .as_ref()
                    .map(|d| d.server().to_string())
                    .unwrap_or_default()
            ),
        )),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect timed out after {timeout:?}"),
        )),
    }
}

/// Binds a TCP listener, with TCP fast open (`TCP_FASTOPEN`) accepted from clients when
/// `fast_open`. An empty host listens on all interfaces, IPv6 and IPv4 alike.
pub async fn bind_tcp_with(addr: &HostPort, fast_open: bool) -> Result<TcpListener> {
    bind_for("b", addr, fast_open).await
}

/// [`bind_tcp_with`] for the address of flag `-flag`, which a failure names, with the usual
/// fix for a port in use or one that needs privilege.
pub async fn bind_for(flag: &str, addr: &HostPort, fast_open: bool) -> Result<TcpListener> {
    let ctx = || format!("-{flag}: listen on {addr}");
    let candidates: Vec<SocketAddr> = if addr.host.is_empty() {
        vec![
            SocketAddr::from(([0u16; 8], addr.port)),
            SocketAddr::from(([0u8; 4], addr.port)),
        ]
    } else {
        addr.resolve().await.context(ctx)?
    };
    let mut last = None;
    for sa in candidates {
        match bind_one(sa, addr.host.is_empty(), fast_open) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    let e = last.unwrap_or_else(|| io::Error::other("no address"));
    let hint = match e.kind() {
        io::ErrorKind::AddrInUse => {
            " (another process holds the port: stop it, or choose another)".to_string()
        }
        io::ErrorKind::PermissionDenied => crate::sys::bind_denied_hint(addr.port),
        _ => String::new(),
    };
    Err(Error::io(format!("{}{hint}", ctx()), e))
}

/// Pending fast-open connections a listener queues.
const FAST_OPEN_QUEUE: i32 = 256;

fn bind_one(sa: SocketAddr, dual_stack: bool, fast_open: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(sa), Type::STREAM, None)?;
    if sa.is_ipv6() && dual_stack {
        socket.set_only_v6(false)?;
    }
    crate::sys::reuse_address(&socket)?;
    socket.set_nonblocking(true)?;
    socket.bind(&sa.into())?;
    if fast_open && let Err(e) = crate::sys::set_tcp_fastopen_listener(&socket, FAST_OPEN_QUEUE) {
        log::warn!("-fast-open: TCP_FASTOPEN on {sa}: {e}");
    }
    // Before listen(): on Linux a connection takes the listener's options when it arrives.
    tune_socket(SockRef::from(&socket));
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}
