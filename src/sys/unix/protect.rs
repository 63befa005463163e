//! Unix: handing a socket to Android's VPN protect server (SCM_RIGHTS over a Unix socket).

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `-V` needs nothing more than a Unix socket to the host.
pub fn check_protect() -> crate::Result<()> {
    Ok(())
}

/// Sends `socket` to the protect server at `path` and waits (at most `timeout` for each step)
/// for its one-byte answer.
pub async fn protect(
    socket: &tokio::net::TcpSocket,
    path: &Path,
    timeout: Duration,
) -> io::Result<()> {
    let fd = socket.as_fd().try_clone_to_owned()?;
    let path: PathBuf = path.to_path_buf();
    let shown = path.display().to_string();
    tokio::task::spawn_blocking(move || -> io::Result<()> {
        let mut s = std::os::unix::net::UnixStream::connect(&path)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        let fds = [fd.as_raw_fd()];
        let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
        nix::sys::socket::sendmsg::<()>(
            s.as_raw_fd(),
            &[io::IoSlice::new(&[0u8])],
            &cmsg,
            nix::sys::socket::MsgFlags::empty(),
            None,
        )
        .map_err(io::Error::from)?;
        let mut answer = [0u8; 1];
        s.read_exact(&mut answer)
    })
    .await
    .map_err(io::Error::other)?
    .map_err(|e| io::Error::new(e.kind(), format!("VPN protect through {shown}: {e}")))
}
