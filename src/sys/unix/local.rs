//! Unix stream sockets for the servers' `-bind-unix`: a path (a stale socket file there is
//! replaced, one that something still listens on is not; ours is removed when we close), or
//! `@name` for a Linux abstract socket.

use std::io;
use std::path::PathBuf;

use tokio::net::UnixListener;

use crate::error::IoContext;
use crate::{Error, Result};

/// A connection accepted on a Unix socket.
pub type Stream = tokio::net::UnixStream;

/// A bound Unix listener; the socket file it made (if any) is removed when it is dropped.
pub struct Bound {
    listener: UnixListener,
    file: Option<PathBuf>,
}

impl Bound {
    /// Accepts one connection.
    pub async fn accept(&self) -> io::Result<Stream> {
        self.listener.accept().await.map(|(s, _)| s)
    }

    /// The socket's path, for logs.
    pub fn name(&self) -> String {
        self.listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
            .unwrap_or_else(|| "unix socket".to_string())
    }
}

impl Drop for Bound {
    fn drop(&mut self) {
        if let Some(f) = &self.file
            && let Err(e) = std::fs::remove_file(f)
            && e.kind() != io::ErrorKind::NotFound
        {
            log::warn!("remove socket file {}: {e}", f.display());
        }
    }
}

/// Binds a Unix stream socket. `@name` is a Linux abstract socket. An existing socket file at
/// `path` is replaced if nothing listens on it; a live one, or anything that is not a socket,
/// is left alone and reported.
pub fn bind(path: &str) -> Result<Bound> {
    let ctx = || format!("listen on unix socket {path}");
    if let Some(name) = path.strip_prefix('@') {
        let listener = bind_abstract(name).context(ctx)?;
        return Ok(Bound {
            listener,
            file: None,
        });
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket() {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(Error::usage(format!(
                        "-b {path}: another process is listening on this socket; stop it first, or choose another path"
                    )));
                }
                // Nobody answers: a socket left behind by a process that is gone.
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
    let listener = UnixListener::bind(path).context(ctx)?;
    Ok(Bound {
        listener,
        file: Some(PathBuf::from(path)),
    })
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
