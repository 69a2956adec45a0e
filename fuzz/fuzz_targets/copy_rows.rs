//! COPY text output as a snapshot reads it: the first byte is the table's column count, the second the
//! size of the chunks the rest arrives in (lines split across chunks), then each line parsed.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [columns, chunk, rest @ ..] = data else {
        return;
    };
    let chunk = usize::from(*chunk).max(1);
    let chunks = rest.chunks(chunk).map(Bytes::copy_from_slice);
    let _ = sluice_postgres::fuzzing::copy_rows(chunks, usize::from(columns % 32));
});
