//! Listening sockets of either family ([`Listener`]) and the connections they accept
//! ([`Stream`]): TCP, tuned like dialled sockets, or Unix.

use std::io;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::either::Either;

/// A listening socket of either family.
pub enum Listener {
    /// TCP (made by `From<TcpListener>`, which tunes it).
    Tcp(Tuned),
    /// Unix stream socket.
    Unix(crate::sys::local::Bound),
}

impl Listener {
    /// Accepts one connection; TCP ones are tuned like dialled ones.
    pub async fn accept(&self) -> io::Result<(Stream, String)> {
        match self {
            Listener::Tcp(Tuned(l)) => {
                let (s, peer) = l.accept().await?;
                if !super::tcp::ACCEPTED_INHERIT {
                    super::tcp::tune(&s);
                }
                Ok((Either::Left(s), unmapped(peer).to_string()))
            }
            Listener::Unix(l) => {
                let s = l.accept().await?;
                Ok((Either::Right(s), "unix".to_string()))
            }
        }
    }

    /// The bound address, for logs.
    pub fn local_addr(&self) -> String {
        match self {
            Listener::Tcp(Tuned(l)) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|e| e.to_string()),
            Listener::Unix(l) => l.name(),
        }
    }
}

/// A TCP listener with [`super::tcp::tune`]'s options set, for the sockets it accepts to
/// inherit; made only by `Listener::from` (mtt's own listeners are tuned before they
/// listen, see `tcp::bind_one`: a connection takes the options when it arrives).
pub struct Tuned(TcpListener);

impl From<TcpListener> for Listener {
    fn from(l: TcpListener) -> Self {
        super::tcp::tune_socket(socket2::SockRef::from(&l));
        Listener::Tcp(Tuned(l))
    }
}

/// An accepted connection of either family; `Either` forwards vectored writes.
pub type Stream = Either<TcpStream, crate::sys::local::Stream>;

impl Listener {
    /// A UDP socket on the address and port this (TCP) listener has, for `-udp`: the same
    /// port number carries both, as SIP003u asks. An all-interfaces listener gets an
    /// all-interfaces socket, IPv6 and IPv4 alike.
    pub fn bind_udp_beside(&self) -> io::Result<super::udp::Socket> {
        let Listener::Tcp(Tuned(l)) = self else {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection accepted by a `Listener` has every option of a dialled one, whether it
    /// inherited them from the listener (Linux) or was tuned itself.
    #[tokio::test]
    async fn accepted_connections_are_tuned() {
        let l = Listener::from(TcpListener::bind("127.0.0.1:0").await.expect("bind"));
        let addr = match &l {
            Listener::Tcp(Tuned(t)) => t.local_addr().expect("addr"),
            Listener::Unix(_) => unreachable!("a TCP listener"),
        };
        let _dialled = TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = l.accept().await.expect("accept");
        let s = match accepted {
            Either::Left(s) => s,
            Either::Right(_) => panic!("a TCP connection"),
        };
        let sock = socket2::SockRef::from(&s);
        assert!(sock.tcp_nodelay().expect("TCP_NODELAY"), "TCP_NODELAY");
        assert!(sock.keepalive().expect("SO_KEEPALIVE"), "SO_KEEPALIVE");
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            assert_eq!(
                sock.tcp_keepalive_time().expect("TCP_KEEPIDLE"),
                std::time::Duration::from_secs(15)
            );
            assert_eq!(sock.tcp_keepalive_retries().expect("TCP_KEEPCNT"), 3);
            assert_eq!(
                sock.tcp_user_timeout().expect("TCP_USER_TIMEOUT"),
                Some(std::time::Duration::from_secs(30))
            );
            assert_eq!(
                sock.tcp_notsent_lowat().expect("TCP_NOTSENT_LOWAT"),
                128 * 1024
            );
        }
    }
}
