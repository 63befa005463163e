//! The type-erased stream every layer hands to the next ([`BoxIo`]).

use tokio::io::{AsyncRead, AsyncWrite};

/// Any async byte stream a layer can carry.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A stream erased once, at the top of the pipeline. tokio's `Box<T>` impls forward
/// `poll_write_vectored`, so nothing is lost by boxing.
pub type BoxIo = Box<dyn Io>;

/// Implements `AsyncWrite` for a wrapper by forwarding every method (vectored writes
/// included) to one of its fields: `forward_write!(impl[S: Io] Wrapper<S>, inner);`.
macro_rules! forward_write {
    (impl[$($g:tt)*] $ty:ty, $field:ident) => {
        impl<$($g)*> tokio::io::AsyncWrite for $ty {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.$field).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.$field).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.$field.is_write_vectored()
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.$field).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.$field).poll_shutdown(cx)
            }
        }
    };
}

pub(crate) use forward_write;
