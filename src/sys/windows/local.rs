//! Windows: no Unix-domain listeners (`-bind-unix`); the types exist, without values, so that
//! the listener code is the same on every OS.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::{Error, Result};

/// A connection accepted on a Unix socket: none here.
#[derive(Debug)]
pub enum Stream {}

/// A bound Unix listener: none here.
pub enum Bound {}

impl Bound {
    /// Never called: there is no value to call it on.
    pub async fn accept(&self) -> io::Result<Stream> {
        match *self {}
    }

    /// Never called: there is no value to call it on.
    pub fn name(&self) -> String {
        match *self {}
    }
}

/// Refuses: Windows has no Unix sockets for mtt.
pub fn bind(path: &str) -> Result<Bound> {
    Err(Error::usage(format!(
        "-bind-unix {path}: Unix sockets are not available on Windows; drop -bind-unix and listen on a TCP address (-b 127.0.0.1:PORT)"
    )))
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match *self {}
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        match *self {}
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        match *self {}
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        match *self {}
    }
}
