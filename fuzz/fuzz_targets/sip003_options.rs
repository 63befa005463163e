//! Fuzzes SS_PLUGIN_OPTIONS parsing and its mapping onto the client's flags.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(options) = mtt::testing::sip003::parse_options(s) {
        // Escaping what was parsed and parsing again gives the same pairs.
        let again: String = options
            .iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{}={}", mtt::testing::sip003::escape(k), mtt::testing::sip003::escape(v)),
                None => mtt::testing::sip003::escape(k),
            })
            .collect::<Vec<_>>()
            .join(";");
        if let Ok(reparsed) = mtt::testing::sip003::parse_options(&again) {
            assert_eq!(reparsed.len(), options.len());
        }
        let _ = mtt::testing::sip003::command_line::<mtt::testing::cli::ClientArgs>(&[("b", "127.0.0.1:1")], &options);
    }
});
