//! Fuzzes the server end of an smux version 1 session: arbitrary bytes from a client must end
//! in streams that read to their end or fail, and a session that ends; never a panic or a
//! hang.
#![no_main]

#[path = "common/session.rs"]
mod session;

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mtt::testing::transport::mux::smux::{self, SmuxSession};

fuzz_target!(|data: &[u8]| {
    let cfg = smux::Config {
        hold: 64 * 1024,
        spare: 128 * 1024,
        stall: Duration::from_millis(50),
        ..smux::DEFAULT
    };
    session::run(data, |io, quiet| Box::new(SmuxSession::server(io, cfg, quiet)));
});
