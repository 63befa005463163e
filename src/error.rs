//! The crate-wide error type, with each failure's cause kept as its source (never also in its
//! own text), the [`Report`] that prints a whole chain, and the exit codes errors map to.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Everything that can stop a role or a command, or a tunnel being set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad command line, configuration value or request. The message names the flag (or
    /// field) and the fix. The only error that exits with 2.
    #[error("{0}")]
    Usage(String),
    /// An I/O operation failed; `context` says what was being done and where.
    #[error("{context}")]
    Io {
        /// What was being done, and where.
        context: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// A certificate, key or CA file that cannot be used.
    #[error("{flag} {}", path.display())]
    Cert {
        /// The flag that named the file (`-cert`, `-key`, `-ca`).
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: CertError,
    },
    /// rustls refused a configuration (a key that does not match its certificate, say).
    #[error("TLS configuration")]
    Tls(#[source] rustls::Error),
    /// A step of setting up a tunnel failed: which step, with whom, and why.
    #[error("{step} {peer}")]
    Tunnel {
        /// The layer that failed.
        step: Step,
        /// The other end (`server example.com:443`, `client`).
        peer: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// One failure seen by several waiters (every tunnel waiting for a multiplexed session
    /// whose connection failed).
    #[error(transparent)]
    Shared(Arc<Error>),
    /// A shared store (the fleet's Redis) cannot be reached: the request changed nothing and
    /// may be retried.
    #[error("{what}")]
    Unavailable {
        /// What could not be done, and what to do.
        what: String,
        /// Why.
        #[source]
        source: Option<Cause>,
    },
    /// A failure at run time that is not about the input (data corrupted in a benchmark, a
    /// task that died, a CA that sent something unusable), with its cause when there is one.
    #[error("{what}")]
    Runtime {
        /// What failed, where, and what to do.
        what: String,
        /// Why.
        #[source]
        source: Option<Cause>,
    },
}

/// The cause of an [`Error::Runtime`] or [`Error::Unavailable`]: another library's error.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What is wrong with a certificate, key or CA file.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The file cannot be read at all.
    #[error("cannot be read")]
    Unreadable(#[source] io::Error),
    /// Not PEM.
    #[error("not readable as PEM (is it the right file, and whole?)")]
    Pem(#[source] rustls::pki_types::pem::Error),
    /// PEM whose certificate rustls cannot read.
    #[error(
        "the certificate cannot be used (damaged, or of a kind that cannot be read): is it the whole file?"
    )]
    UnusableCertificate(#[source] rustls::Error),
    /// PEM whose key rustls cannot use.
    #[error(
        "the key is of a kind that cannot be used here (RSA, ECDSA P-256/P-384 and Ed25519 can be; DSA cannot)"
    )]
    UnusableKey(#[source] rustls::Error),
    /// An encrypted private key, which a server cannot use unattended.
    #[error(
        "the key is encrypted (ENCRYPTED PRIVATE KEY): decrypt it with 'openssl pkey -in FILE -out FILE.plain' and give that"
    )]
    Encrypted,
    /// PEM without a certificate.
    #[error("no PEM certificate (-----BEGIN CERTIFICATE-----) found")]
    NoCertificate,
    /// PEM without a private key.
    #[error("no PEM private key found (PKCS#8, PKCS#1 or SEC1)")]
    NoKey,
    /// A key that does not belong to the certificate (or that rustls cannot use).
    #[error("certificate and key do not belong together: this key is not the -cert certificate's")]
    Mismatch(#[source] Option<rustls::Error>),
    /// A CA file none of whose certificates rustls can use.
    #[error("no usable certificate in the file")]
    NoUsableCa,
}

/// The layers of a tunnel, as named in errors and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// TCP connect.
    Connect,
    /// TLS handshake.
    Tls,
    /// The HTTP front of a WebSocket server.
    Http,
    /// The WebSocket upgrade.
    WebSocket,
    /// Opening a multiplexed stream.
    Mux,
    /// HTTP/2 and gRPC calls.
    Grpc,
    /// Carrying UDP.
    Udp,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Connect => "connect to",
            Step::Tls => "TLS handshake with",
            Step::Http => "HTTP with",
            Step::WebSocket => "WebSocket upgrade with",
            Step::Mux => "multiplexed stream to",
            Step::Grpc => "gRPC call to",
            Step::Udp => "UDP tunnel to",
        })
    }
}

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A failure at run time without a cause of its own.
    pub fn runtime(what: impl Into<String>) -> Self {
        Error::Runtime {
            what: what.into(),
            source: None,
        }
    }

    /// A failure at run time caused by `source`.
    pub fn failed(what: impl Into<String>, source: impl Into<Cause>) -> Self {
        Error::Runtime {
            what: what.into(),
            source: Some(source.into()),
        }
    }

    /// A shared store that cannot be reached, because of `source`.
    pub fn unavailable(what: impl Into<String>, source: impl Into<Cause>) -> Self {
        Error::Unavailable {
            what: what.into(),
            source: Some(source.into()),
        }
    }

    /// This error and its causes, for printing: `what failed: why: why that`.
    pub fn report(&self) -> Report<'_> {
        Report(self)
    }

    /// Builds an [`Error::Usage`] from anything printable.
    pub fn usage(msg: impl Into<String>) -> Self {
        Error::Usage(msg.into())
    }

    /// Wraps an [`io::Error`] with what was being attempted.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// A failed step of a tunnel with `peer`.
    pub fn tunnel(step: Step, peer: impl std::fmt::Display, source: io::Error) -> Self {
        Error::Tunnel {
            step,
            peer: peer.to_string(),
            source,
        }
    }

    /// A problem with the file `path` given with `flag`.
    pub fn cert(flag: &'static str, path: impl Into<PathBuf>, source: CertError) -> Self {
        Error::Cert {
            flag,
            path: path.into(),
            source,
        }
    }

    /// The process exit code: 2 for usage errors (as most CLIs), 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => 2,
            Error::Shared(e) => e.exit_code(),
            _ => 1,
        }
    }
}

/// Any error and its chain of causes, printed on one line separated by `: ` (each error's text
/// says only what it adds; a cause whose text is already printed, as some libraries repeat
/// their source, is not printed again).
pub struct Report<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut said = self.0.to_string();
        let mut cause = self.0.source();
        while let Some(e) = cause {
            let text = e.to_string();
            if !text.is_empty() && !said.ends_with(&text) {
                said.push_str(": ");
                said.push_str(&text);
            }
            cause = e.source();
        }
        f.write_str(&said)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_is_printed_once_by_the_report_and_not_by_the_error() {
        let e = Error::io(
            "reading users.json",
            io::Error::new(io::ErrorKind::NotFound, "gone"),
        );
        assert_eq!(e.to_string(), "reading users.json");
        assert_eq!(e.report().to_string(), "reading users.json: gone");
        let t = Error::tunnel(
            Step::Tls,
            "server a:1",
            io::Error::other(Error::runtime("x")),
        );
        assert_eq!(t.report().to_string(), "TLS handshake with server a:1: x");
        let shared = Error::Shared(Arc::new(Error::failed(
            "bench task",
            io::Error::other("died"),
        )));
        assert_eq!(shared.to_string(), "bench task");
        assert_eq!(shared.report().to_string(), "bench task: died");
    }

    #[test]
    fn a_cause_that_repeats_its_own_source_is_not_printed_twice() {
        #[derive(Debug)]
        struct Repeats(io::Error);
        impl std::fmt::Display for Repeats {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "library failed: {}", self.0)
            }
        }
        impl std::error::Error for Repeats {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Error::failed("ACME", Repeats(io::Error::other("refused")));
        assert_eq!(e.report().to_string(), "ACME: library failed: refused");
    }
}
