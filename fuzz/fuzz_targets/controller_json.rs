//! Fuzzes the controller's request decoding and the validation of users.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(cmd) = mtt::testing::role::controller::decode_compat(data) {
        for (path, dst) in cmd.1 {
            let _ = mtt::testing::users::check(&path, &dst);
        }
    }
});
