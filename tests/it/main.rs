//! The integration tests, one binary (one link step): each module is a capability, tested
//! through real sockets, real TLS and the real peers users meet; `common` holds what they
//! share. They run on a Linux host: Windows builds are tested from there, under Wine
//! (`windows`, through `packaging/test-cross`).
#![cfg(unix)]

mod common;

mod acme;
mod cdn;
mod cli;
mod cross;
mod dashboard;
mod faults;
mod fleet;
mod grpc;
mod grpc_hostile;
mod hello;
mod hostile;
mod interop;
mod limits;
mod load;
mod mu_server;
mod mux;
mod ops;
mod setup;
mod sip003;
mod smux;
mod tunnel;
mod udp;
mod v2ray;
mod windows;
mod wire;
mod ws;
mod zero_rtt;
