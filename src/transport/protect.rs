//! Android VPN socket protection (`-V`): before it connects, every socket the client dials is
//! handed to the host app over the Unix socket `protect_path` (SCM_RIGHTS), which exempts it
//! from the VPN so tunnel traffic does not loop back into the tunnel.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The path Android hosts listen on, relative to the plugin's working directory.
pub const PROTECT_PATH: &str = "protect_path";
/// How long the host may take to answer.
pub const PROTECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Sends `socket` to the protect server at `path` and waits for its one-byte answer.
pub async fn protect(socket: &impl AsFd, path: &Path) -> io::Result<()> {
    let fd = socket.as_fd().try_clone_to_owned()?;
    let path: PathBuf = path.to_path_buf();
    let shown = path.display().to_string();
    tokio::task::spawn_blocking(move || -> io::Result<()> {
        let mut s = std::os::unix::net::UnixStream::connect(&path)?;
        s.set_read_timeout(Some(PROTECT_TIMEOUT))?;
        s.set_write_timeout(Some(PROTECT_TIMEOUT))?;
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
