//! Fuzzes Go-style command lines through argh into validated client and server configurations.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtt::testing::goflag::{Parsed, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let args: Vec<String> = s.split('\0').map(str::to_string).collect();
    if let Ok(Parsed::Args(a)) = parse::<mtt::testing::cli::ClientArgs>("mtt client", &args) {
        let _ = mtt::testing::config::ClientConfig::from_args(&a);
    }
    if let Ok(Parsed::Args(a)) = parse::<mtt::testing::cli::ServerArgs>("mtt server", &args) {
        let _ = mtt::testing::config::ServerConfig::from_args(&a);
    }
    let _ = mtt::testing::cmd::dispatch(&args);
});
