//! Windows: the same interface as the Unix module. What Windows lacks (Unix sockets, Android's
//! VPN protection, TCP fast open, the kernel's round-trip figure, SIGHUP, permission bits)
//! is an error that says so, or nothing to do; the stop requests are the console's events.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::mem::ManuallyDrop;
use std::net::UdpSocket;
use std::os::windows::io::{AsRawSocket, AsSocket, FromRawSocket};
use std::path::Path;
use std::time::Duration;

use tokio::io::Interest;
use tokio::signal::windows::{CtrlBreak, CtrlC, CtrlClose, CtrlLogoff, CtrlShutdown};

pub mod local;
mod service;

pub use service::as_service_or;

/// Why binding a port may be refused here, and what to do, for the error message: Windows
/// has no privileged ports, but reserves ranges of them (Hyper-V, WinNAT) or lets a program
/// hold one exclusively.
pub fn bind_denied_hint(_port: u16) -> String {
    " (Windows keeps this port for something else: 'netsh interface ipv4 show excludedportrange protocol=tcp' lists the reserved ranges; choose a port outside them)".to_string()
}

/// Nothing: Windows's `SO_REUSEADDR` would let another socket take a port in use, and its
/// listeners rebind a port that old connections linger on without it.
pub fn reuse_address(_sock: &socket2::Socket) -> io::Result<()> {
    Ok(())
}

/// TCP fast open on a listener is Linux's here.
pub fn set_tcp_fastopen_listener(_sock: &impl AsSocket, _queue: i32) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "TCP fast open needs Linux",
    ))
}

/// Nor read back.
pub fn tcp_fastopen_listener(_sock: &impl AsSocket) -> io::Result<i32> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "TCP fast open needs Linux",
    ))
}

/// The kernel's round-trip time is not read here.
pub fn tcp_rtt(_sock: &impl AsSocket) -> io::Result<Duration> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "TCP_INFO needs Linux",
    ))
}

/// A non-blocking UDP socket registered with the runtime, with a plain `UdpSocket` view of
/// the same handle for the calls the runtime does not offer. The runtime sees every call that
/// can find nothing to do (made through it), which is what re-arms its readiness here.
#[derive(Debug)]
pub struct UdpIo {
    io: tokio::net::UdpSocket,
    view: ManuallyDrop<UdpSocket>,
}

impl UdpIo {
    /// Takes over `sock` (made non-blocking here).
    pub fn new(sock: UdpSocket) -> io::Result<Self> {
        sock.set_nonblocking(true)?;
        let io = tokio::net::UdpSocket::from_std(sock)?;
        // SAFETY: the view shares `io`'s open socket handle. It is never dropped (so it never
        // closes the handle), and it lives beside `io` in this struct, so it is reachable only
        // while `io` keeps the handle open.
        let view = ManuallyDrop::new(unsafe { UdpSocket::from_raw_socket(io.as_raw_socket()) });
        Ok(UdpIo { io, view })
    }

    /// The socket, for calls that do not wait.
    pub fn get_ref(&self) -> &UdpSocket {
        &self.view
    }

    /// Waits until something can be received.
    pub async fn readable(&self) -> io::Result<()> {
        self.io.readable().await
    }

    /// Runs the receiving `op` once; `WouldBlock` if nothing is waiting.
    pub fn try_read<R>(&self, mut op: impl FnMut(&UdpSocket) -> io::Result<R>) -> io::Result<R> {
        self.io.try_io(Interest::READABLE, || op(&self.view))
    }

    /// Runs the receiving `op` until it finds something.
    pub async fn read<R>(&self, mut op: impl FnMut(&UdpSocket) -> io::Result<R>) -> io::Result<R> {
        self.io
            .async_io(Interest::READABLE, || op(&self.view))
            .await
    }

    /// Runs the sending `op`, waiting for room when the send buffer is full.
    pub async fn write<R>(&self, op: impl Fn(&UdpSocket) -> io::Result<R>) -> io::Result<R> {
        self.io
            .async_io(Interest::WRITABLE, || op(&self.view))
            .await
    }
}

/// Refuses `-V` at start: Android's VPN protection does not exist here.
pub fn check_protect() -> crate::Result<()> {
    Err(crate::Error::usage(
        "-V (Android VPN socket protection) exists only on Android: remove V from the plugin options",
    ))
}

/// Android's VPN protection does not exist here.
pub async fn protect(
    _socket: &tokio::net::TcpSocket,
    _path: &Path,
    _timeout: Duration,
) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "-V (Android VPN socket protection) exists only on Android",
    ))
}

/// The requests to stop: Ctrl-C and Ctrl-Break (a service wrapper's stop), the service
/// manager's stop, the console closed, the user logging off, the system shutting down. For
/// the last three Windows ends the process a few seconds after asking, drained or not.
pub struct StopRequests {
    c: CtrlC,
    brk: CtrlBreak,
    close: CtrlClose,
    logoff: CtrlLogoff,
    shutdown: CtrlShutdown,
}

impl StopRequests {
    /// Installs the handlers (inside a runtime).
    pub fn new() -> io::Result<Self> {
        use tokio::signal::windows::{ctrl_break, ctrl_c, ctrl_close, ctrl_logoff, ctrl_shutdown};
        Ok(StopRequests {
            c: ctrl_c()?,
            brk: ctrl_break()?,
            close: ctrl_close()?,
            logoff: ctrl_logoff()?,
            shutdown: ctrl_shutdown()?,
        })
    }

    /// Waits for the next request; returns its name, for the log.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.c.recv() => "Ctrl-C",
            _ = service::STOP.notified() => "service stop",
            _ = self.brk.recv() => "Ctrl-Break",
            _ = self.close.recv() => "console closed",
            _ = self.logoff.recv() => "logoff",
            _ = self.shutdown.recv() => "system shutdown",
        }
    }
}

/// Windows has no request to re-read files: the certificate files' watch reloads them.
pub enum ReloadRequests {}

impl ReloadRequests {
    /// Always `None` here.
    pub fn new() -> io::Result<Option<Self>> {
        Ok(None)
    }

    /// Never called: there is no value to call it on.
    pub async fn recv(&mut self) -> Option<()> {
        match *self {}
    }
}

/// The name of the reload request, for messages.
pub const RELOAD_REQUEST: &str = "reload";

/// Nothing to ask: Windows hosts end their plugins themselves (shadowsocks-windows puts them
/// in a job object that ends with it).
pub fn exit_with_parent() {}

/// Nothing to raise: Windows has no limit of open sockets per process to speak of.
pub fn raise_nofile() {}

/// Who may read a file made by [`create_new_file`], for messages.
pub const PRIVATE_FILE: &str = "readable as its folder's access list allows";

/// Creates directory `dir` and its missing parents. Who may open them is the inherited access
/// list's business (a directory in the user's profile is the user's own).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// Creates the new file `path` (never over an existing one); Windows keeps no permission bits,
/// so `mode` says nothing here: the directory's inherited access list applies.
pub fn create_new_file(path: &Path, _mode: u32) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

/// Nothing: Windows keeps no permission bits.
pub(in crate::sys) fn set_mode(_file: &File, _mode: u32) -> io::Result<()> {
    Ok(())
}

/// Windows keeps no permission bits.
pub fn mode_of(_meta: &std::fs::Metadata) -> Option<u32> {
    None
}

/// A failed rename over a file, with what usually causes it here: another program that holds
/// the file open without letting others delete it.
pub(in crate::sys) fn replace_error(e: io::Error) -> io::Error {
    if e.kind() != io::ErrorKind::PermissionDenied {
        return e;
    }
    io::Error::new(
        e.kind(),
        format!(
            "{e}: another program holds it open (an editor, a backup or a virus scan); close it and make the change again"
        ),
    )
}

/// Nothing: a directory cannot be opened as a file here, and NTFS journals a rename itself.
pub(in crate::sys) fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}
