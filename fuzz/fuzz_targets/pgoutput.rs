//! One pgoutput message (an XLogData payload) through the plugin's decoder.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sluice_postgres::pgoutput::decode(&Bytes::copy_from_slice(data));
});
