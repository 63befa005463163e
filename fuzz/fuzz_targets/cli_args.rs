//! Fuzzes Go-style command lines through argh into validated client and server configurations.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtt::goflag::{Parsed, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let args: Vec<String> = s.split('\0').map(str::to_string).collect();
    if let Ok(Parsed::Args(a)) = parse::<mtt::cli::ClientArgs>("mtt client", &args) {
        let _ = mtt::config::ClientConfig::from_args(&a);
    }
    if let Ok(Parsed::Args(a)) = parse::<mtt::cli::ServerArgs>("mtt server", &args) {
        let _ = mtt::config::ServerConfig::from_args(&a);
    }
    let _ = mtt::cmd::dispatch(&args);
});
