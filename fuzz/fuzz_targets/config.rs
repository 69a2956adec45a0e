//! A config file's text through the loader: TOML, then every value-level check (transforms' conditions
//! and patterns included).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = sluice::config::Config::parse(text);
    }
});
