//! Listening sockets of either family ([`Listener`]) and the connections they accept
//! ([`Stream`]): TCP, tuned like dialled sockets, or Unix.

use std::io;

use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio_util::either::Either;

/// A listening socket of either family.
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// Unix stream socket.
    Unix(super::unix::UnixBound),
}

impl Listener {
    /// Accepts one connection; TCP ones are tuned like dialled ones.
    pub async fn accept(&self) -> io::Result<(Stream, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                super::tcp::tune(&s);
                Ok((Either::Left(s), unmapped(peer).to_string()))
            }
            Listener::Unix(l) => {
                let (s, _) = l.listener.accept().await?;
                Ok((Either::Right(s), "unix".to_string()))
            }
        }
    }

    /// The bound address, for logs.
    pub fn local_addr(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|e| e.to_string()),
            Listener::Unix(l) => l
                .listener
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
                .unwrap_or_else(|| "unix socket".to_string()),
        }
    }
}

impl From<TcpListener> for Listener {
    fn from(l: TcpListener) -> Self {
        Listener::Tcp(l)
    }
}

/// An accepted connection of either family; `Either` forwards vectored writes.
pub type Stream = Either<TcpStream, UnixStream>;

impl Listener {
    /// A UDP socket on the address and port this (TCP) listener has, for `-udp`: the same
    /// port number carries both, as SIP003u asks. An all-interfaces listener gets an
    /// all-interfaces socket, IPv6 and IPv4 alike.
    pub fn bind_udp_beside(&self) -> io::Result<super::udp::Socket> {
        let Listener::Tcp(l) = self else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "UDP needs a TCP address, not a Unix socket",
            ));
        };
        let addr = l.local_addr()?;
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::DGRAM,
            None,
        )?;
        if addr.is_ipv6() && addr.ip().is_unspecified() {
            socket.set_only_v6(false)?;
        }
        socket.bind(&addr.into())?;
        super::udp::widen_receive_buffer(&socket);
        super::udp::Socket::from_std(socket.into())
    }
}

/// An IPv4 client as a dual-stack listener sees it (`[::ffff:192.0.2.7]:5000`) as the IPv4
/// address it is (`192.0.2.7:5000`), for logs, trust checks and PROXY headers alike.
pub fn unmapped(sa: std::net::SocketAddr) -> std::net::SocketAddr {
    match sa {
        std::net::SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => std::net::SocketAddr::from((v4, v6.port())),
            None => sa,
        },
        v4 => v4,
    }
}
