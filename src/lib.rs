//! mtt: a TLS tunnel whose roles (client, server, multi-user server, SIP003 plugin) stack the
//! same layered stream adapters.
//!
//! ```text
//! app ──TCP──▶ mtt client ══ TCP → TLS → [WebSocket] → [yamux] ══▶ mtt server ──TCP──▶ destination
//! ```
//!
//! * [`transport`] holds the pipeline, one module per layer in wire order (`tcp`, `tls`, `ws`,
//!   `mux`), the HTTP front of WebSocket servers, certificates, DNS, Android protection and the
//!   byte relay. It is the only place that knows the order.
//! * [`role`] holds the roles; they only choose layers through [`transport::Dialer`] and
//!   [`transport::Acceptor`] and never touch rustls, hyper or yamux types.
//! * [`cli`], [`goflag`], [`config`] and [`sip003`] turn Go-style command lines and plugin
//!   environments into validated configurations; [`cmd`] dispatches.
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
