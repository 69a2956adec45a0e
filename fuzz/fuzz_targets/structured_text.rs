//! Array, composite and hstore text split into their parts: the first byte chooses the splitter.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_postgres::structured::{split_array, split_hstore, split_record};

fuzz_target!(|data: &[u8]| {
    let [which, rest @ ..] = data else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match which % 4 {
        0 => {
            if let Ok(split) = split_array(text, b',') {
                let _ = split.list.lengths();
            }
        }
        1 => {
            if let Ok(split) = split_array(text, b';') {
                let _ = split.list.lengths();
            }
        }
        2 => {
            let _ = split_record(text);
        }
        _ => {
            let _ = split_hstore(text);
        }
    }
});
