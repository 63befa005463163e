//! The crate-wide error type and the exit codes it maps to.

use std::io;

/// Everything that can stop a role or a command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad command line or configuration value. The message names the flag.
    #[error("{0}")]
    Config(String),
    /// An I/O operation failed; `context` says what was being done and where.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// A TLS configuration or certificate problem.
    #[error("{0}")]
    Tls(String),
}

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Builds an [`Error::Config`] from anything printable.
    pub fn config(msg: impl Into<String>) -> Self {
        Error::Config(msg.into())
    }

    /// Wraps an [`io::Error`] with what was being attempted.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The process exit code: 2 for usage errors (as most CLIs), 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) => 2,
            _ => 1,
        }
    }
}

/// Adds context to `io::Result`s in one call.
pub trait IoContext<T> {
    /// Maps the error into [`Error::Io`] with `context` computed lazily.
    fn context<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| Error::io(context(), e))
    }
}
