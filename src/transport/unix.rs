//! Unix stream sockets for the servers' `-bind-unix`: a path (an old socket file there is
//! replaced), or `@name` for a Linux abstract socket.

use std::io;

use tokio::net::UnixListener;

use crate::error::IoContext;
use crate::{Error, Result};

/// Binds a Unix stream socket. `@name` is a Linux abstract socket. An existing socket file at
/// `path` is replaced; anything else there is left alone and reported.
pub fn bind_unix(path: &str) -> Result<UnixListener> {
    let ctx = || format!("listen on unix socket {path}");
    if let Some(name) = path.strip_prefix('@') {
        return bind_abstract(name).context(ctx);
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket() {
                std::fs::remove_file(path).context(ctx)?;
            } else {
                return Err(Error::usage(format!(
                    "-b {path}: a file that is not a socket is in the way; remove it or choose another path"
                )));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(ctx(), e)),
    }
    UnixListener::bind(path).context(ctx)
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn bind_abstract(name: &str) -> io::Result<UnixListener> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let l = std::os::unix::net::UnixListener::bind_addr(&addr)?;
    l.set_nonblocking(true)?;
    UnixListener::from_std(l)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn bind_abstract(_name: &str) -> io::Result<UnixListener> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract sockets (@name) exist only on Linux",
    ))
}
