//! Socket calls that neither socket2, nix nor tokio offers safely: the one place of the crate
//! with unsafe code.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd};

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
    let fd = fd.as_fd().as_raw_fd();
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is a valid open socket; `value` and `len` are live and sized for a c_int.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_FASTOPEN,
            (&mut value as *mut libc::c_int).cast(),
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

/// Registers a UDP socket with the runtime for `interest` only (tokio's own `UdpSocket` always
/// asks for readability and writability both).
pub fn register_udp(
    sock: std::net::UdpSocket,
    interest: tokio::io::Interest,
) -> io::Result<tokio::io::unix::AsyncFd<std::net::UdpSocket>> {
    // SAFETY: a `std::net::UdpSocket` owns its descriptor: it stays open, and `as_raw_fd`
    // returns that same descriptor, until the socket (moved into the `AsyncFd`) is dropped.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(sock, interest) }
        .map_err(|e| e.into_parts().1)
}
