//! mtt: a TLS tunnel whose roles (client, server, multi-user server, SIP003 plugin) stack the
//! same layered stream adapters: TCP → TLS → optional WebSocket → optional multiplexing. The
//! module map, and which way dependencies point, is in `ARCHITECTURE.md`.
// No unsafe code, except in `sys`, the one module that calls the C library for socket options
// no safe crate offers.
#![deny(unsafe_code)]

pub(crate) mod addr;
pub(crate) mod admin;
pub(crate) mod bench;
pub(crate) mod certs;
pub(crate) mod cli;
pub(crate) mod cmd;
pub(crate) mod config;
pub(crate) mod error;
pub(crate) mod goflag;
pub(crate) mod logging;
pub(crate) mod metrics;
pub(crate) mod platform;
pub(crate) mod random;
pub(crate) mod role;
pub(crate) mod shutdown;
pub(crate) mod sip003;
pub(crate) mod sys;
#[doc(hidden)]
pub mod testing;
pub(crate) mod transport;
pub(crate) mod users;
pub(crate) mod watch;

pub use error::{Error, Result};

/// The version printed by `mtt --version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub use cmd::{entry, main};
