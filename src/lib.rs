//! mtt: a TLS tunnel whose roles (client, server, multi-user server, SIP003 plugin) stack the
//! same layered stream adapters: TCP → TLS → optional WebSocket → optional multiplexing. The
//! module map, and which way dependencies point, is in `ARCHITECTURE.md`.
// No unsafe code, except in `sys`, the one module that calls the C library for socket options
// no safe crate offers.
#![deny(unsafe_code)]

pub mod addr;
pub mod admin;
pub mod bench;
pub mod certs;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod error;
pub mod goflag;
pub mod logging;
pub mod metrics;
pub mod platform;
pub mod random;
pub mod role;
pub mod shutdown;
pub mod sip003;
pub mod sys;
pub mod transport;
pub mod users;
pub mod watch;

pub use error::{Error, Result};

/// The version printed by `mtt --version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
