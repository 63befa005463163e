//! Unix (Linux, Android): socket calls that neither socket2, nix nor tokio offers safely, the
//! runtime's registration of UDP sockets, and the Unix parts of the interface (`local`,
//! `protect`, `process`).
#![allow(unsafe_code)]

use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsFd, AsRawFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

pub mod local;
mod process;
mod protect;

pub use process::*;
pub use protect::{check_protect, protect};

/// Why binding `port` may be refused, and what to do, for the error message.
pub fn bind_denied_hint(port: u16) -> String {
    if port >= 1024 {
        return String::new();
    }
    format!(
        " (port {port} needs root or CAP_NET_BIND_SERVICE: the shipped systemd units grant it with AmbientCapabilities=; or listen on a port from 1024)"
    )
}

/// Allows a listener to bind a port that connections of an earlier one still linger on
/// (TIME_WAIT), as every Unix server does.
pub fn reuse_address(sock: &socket2::Socket) -> io::Result<()> {
    sock.set_reuse_address(true)
}

/// Enables TCP fast open on a listening socket (Linux `TCP_FASTOPEN`, with a queue of
/// pending fast-open requests of `queue`).
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn set_tcp_fastopen_listener(fd: &impl AsFd, queue: i32) -> io::Result<()> {
    let fd = fd.as_fd().as_raw_fd();
    let value: libc::c_int = queue;
    // SAFETY: `fd` is a valid open socket borrowed for the call; the option value points to
    // a live c_int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_FASTOPEN,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads back `TCP_FASTOPEN` of a listening socket (for tests and diagnostics).
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn tcp_fastopen_listener(fd: &impl AsFd) -> io::Result<i32> {
    tcp_option(fd, libc::TCP_FASTOPEN, 0 as libc::c_int)
}

/// Reads TCP option `name` of `fd` into a copy of `zero`. Only for plain-integer types (an
/// integer, a struct of them), which any bytes the kernel writes leave valid.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn tcp_option<T: Copy>(fd: &impl AsFd, name: libc::c_int, zero: T) -> io::Result<T> {
    let fd = fd.as_fd().as_raw_fd();
    let mut value = zero;
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `fd` is a valid open socket borrowed for the call; `value` is live and `len` is
    // its size, which the kernel never writes beyond; `T` is plain integers, valid whatever
    // the kernel fills in.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            name,
            (&mut value as *mut T).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Elsewhere there is nothing to set.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn set_tcp_fastopen_listener(_fd: &impl AsFd, _queue: i32) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "TCP fast open needs Linux",
    ))
}

/// The kernel's smoothed round-trip time of a TCP connection (`TCP_INFO`'s `tcpi_rtt`).
#[cfg(target_os = "linux")]
pub fn tcp_rtt(fd: &impl AsFd) -> io::Result<std::time::Duration> {
    // SAFETY: `tcp_info` is plain integers, for which all zeroes is a valid value.
    let zero: libc::tcp_info = unsafe { std::mem::zeroed() };
    let info = tcp_option(fd, libc::TCP_INFO, zero)?;
    Ok(std::time::Duration::from_micros(u64::from(info.tcpi_rtt)))
}

/// Elsewhere the round trip is not known.
#[cfg(not(target_os = "linux"))]
pub fn tcp_rtt(_fd: &impl AsFd) -> io::Result<std::time::Duration> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "TCP_INFO needs Linux",
    ))
}

/// A non-blocking UDP socket that the runtime wakes for arriving datagrams only: registered
/// for readability alone (tokio's own `UdpSocket` asks for writability too, and gets an
/// edge-triggered event, a worker's wake-up, for every datagram the kernel sends off). Sends
/// are plain non-blocking calls; only when the send buffer is full is writability waited for,
/// through a second descriptor of the same socket registered for that wait alone.
#[derive(Debug)]
pub struct UdpIo(AsyncFd<UdpSocket>);

impl UdpIo {
    /// Takes over `sock` (made non-blocking here).
    pub fn new(sock: UdpSocket) -> io::Result<Self> {
        sock.set_nonblocking(true)?;
        register_udp(sock, Interest::READABLE).map(UdpIo)
    }

    /// The socket, for calls that do not wait.
    pub fn get_ref(&self) -> &UdpSocket {
        self.0.get_ref()
    }

    /// Waits until something can be received.
    pub async fn readable(&self) -> io::Result<()> {
        self.0.readable().await.map(|_| ())
    }

    /// Runs the receiving `op` once; `WouldBlock` if nothing is waiting.
    pub fn try_read<R>(&self, op: impl FnMut(&UdpSocket) -> io::Result<R>) -> io::Result<R> {
        self.0.try_io(Interest::READABLE, op)
    }

    /// Runs the receiving `op` until it finds something.
    pub async fn read<R>(&self, op: impl FnMut(&UdpSocket) -> io::Result<R>) -> io::Result<R> {
        self.0.async_io(Interest::READABLE, op).await
    }

    /// Runs the sending `op` at once; only if the send buffer is full does it wait for room.
    pub async fn write<R>(&self, op: impl Fn(&UdpSocket) -> io::Result<R>) -> io::Result<R> {
        match op(self.0.get_ref()) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            r => return r,
        }
        let twin = register_udp(self.0.get_ref().try_clone()?, Interest::WRITABLE)?;
        twin.async_io(Interest::WRITABLE, |s| op(s)).await
    }
}

/// Registers a UDP socket with the runtime for `interest` only.
fn register_udp(sock: UdpSocket, interest: Interest) -> io::Result<AsyncFd<UdpSocket>> {
    // SAFETY: a `std::net::UdpSocket` owns its descriptor: it stays open, and `as_raw_fd`
    // returns that same descriptor, until the socket (moved into the `AsyncFd`) is dropped.
    unsafe { AsyncFd::register_with_interest(sock, interest) }.map_err(|e| e.into_parts().1)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// The kernel's round trip of a live loopback connection: known, and tiny.
    #[tokio::test]
    async fn a_loopback_connection_has_a_round_trip_of_microseconds() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let (c, s) = tokio::join!(tokio::net::TcpStream::connect(addr), l.accept());
        let (c, (s, _)) = (c.expect("connect"), s.expect("accept"));
        for end in [&c, &s] {
            let rtt = super::tcp_rtt(end).expect("TCP_INFO");
            assert!(rtt < std::time::Duration::from_millis(50), "{rtt:?}");
        }
    }
}
