//! Android VPN socket protection (`-V`): before it connects, every socket the client dials is
//! handed to the host app over the Unix socket `protect_path` (SCM_RIGHTS), which exempts it
//! from the VPN so tunnel traffic does not loop back into the tunnel. The hand-over itself is
//! the OS module's (`sys::protect`); elsewhere than on Unix it fails, saying so.

use std::io;
use std::path::Path;
use std::time::Duration;

/// The path Android hosts listen on, relative to the plugin's working directory.
pub const PROTECT_PATH: &str = "protect_path";
/// How long the host may take to answer.
pub const PROTECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Sends `socket` to the protect server at `path` and waits for its one-byte answer.
pub async fn protect(socket: &tokio::net::TcpSocket, path: &Path) -> io::Result<()> {
    crate::sys::protect(socket, path, PROTECT_TIMEOUT).await
}
