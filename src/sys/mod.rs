//! The operating system's own calls, one module per OS (`unix`, `windows`) behind one small
//! interface: socket options no safe crate offers, the runtime's registration of UDP sockets,
//! Unix-domain listeners, Android's VPN socket protection, stop and reload signals, private
//! files, and the process's ties to its parent. The rest of the crate names no OS; what one
//! OS lacks fails here with an error that says so (configuration refuses the flag first).
//! The one place of the crate with unsafe code.

use std::io;
use std::path::Path;

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use unix::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::*;

/// Replaces `path` whole with `data`: a temp file beside it (tempfile: a random name created
/// exclusively, so a planted file or symlink is never followed) with permission bits `mode`
/// where the OS keeps them, written and fsync'd, renamed over `path`, then the directory
/// fsync'd. A crash leaves the old file or the new one, never a torn one.
pub fn replace_file(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    set_mode(tmp.as_file(), mode)?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| replace_error(e.error))?;
    sync_dir(dir)
}
