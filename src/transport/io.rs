//! The type-erased stream every layer hands to the next ([`BoxIo`]).

use tokio::io::{AsyncRead, AsyncWrite};

/// Any async byte stream a layer can carry.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A stream erased once, at the top of the pipeline. tokio's `Box<T>` impls forward
/// `poll_write_vectored`, so nothing is lost by boxing.
pub type BoxIo = Box<dyn Io>;
