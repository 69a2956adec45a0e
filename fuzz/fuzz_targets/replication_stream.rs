//! What a server sends once streaming: backend messages (CopyData frames with XLogData and keepalives)
//! through the frame parser, each pgoutput message through the decoder and the stream decoder into events.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_postgres::fuzzing::Stream;

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    let _ = Stream::default().server_bytes(data, &mut out);
});
