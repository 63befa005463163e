//! Fuzzes the server end of a Mux.Cool session (v2ray-plugin's multiplexing): arbitrary bytes
//! from a client must end in streams that read to their end or fail, and a session that ends;
//! never a panic or a hang.
#![no_main]

#[path = "common/session.rs"]
mod session;

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mtt::testing::transport::mux::muxcool::{self, MuxCoolSession};

fuzz_target!(|data: &[u8]| {
    let cfg = muxcool::Config {
        hold: 64 * 1024,
        spare: 128 * 1024,
        stall: Duration::from_millis(50),
        ..muxcool::DEFAULT
    };
    session::run(data, |io, quiet| Box::new(MuxCoolSession::server(io, cfg, quiet)));
});
