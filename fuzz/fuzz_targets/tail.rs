//! A message body as `sluice tail` decodes it: either framing (registry id or single-object fingerprint),
//! the Avro datum decoded with the schema the header names and printed as JSON, else JSON or text. The
//! schemas are a table's key and envelope and a document envelope that sluice writes (fuzz/schemas).
#![no_main]

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sluice::avro::{Fingerprint, SchemaRef};
use sluice::tail::{MessageDecoder, ParsedSchema};
use tokio::runtime::Runtime;

const SCHEMAS: [&str; 3] = [
    include_str!("../schemas/table_key.avsc"),
    include_str!("../schemas/table_value.avsc"),
    include_str!("../schemas/document_value.avsc"),
];

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    })
}

/// The schemas parsed, for registry-id frames (id modulo their number).
fn parsed() -> &'static [ParsedSchema] {
    static PARSED: OnceLock<Vec<ParsedSchema>> = OnceLock::new();
    PARSED.get_or_init(|| {
        SCHEMAS
            .iter()
            .map(|text| ParsedSchema::parse("fuzz", text).expect("the schemas parse"))
            .collect()
    })
}

thread_local! {
    // One decoder for every input, as `sluice tail` keeps one: it parses each schema once.
    static DECODER: RefCell<MessageDecoder> = RefCell::new(MessageDecoder::with_schemas(
        SCHEMAS
            .iter()
            .map(|text| (Fingerprint::of_json(text).expect("JSON"), text.to_string()))
            .collect::<HashMap<_, _>>(),
    ));
}

fuzz_target!(|data: &[u8]| {
    DECODER.with_borrow_mut(|decoder| {
        let _ = runtime().block_on(decoder.decode(data));
    });
    // Without a registry the decoder prints registry-framed bodies as they are; decode them here as the
    // registry's schema would.
    if let Some((SchemaRef::RegistryId(id), datum)) = SchemaRef::split(data) {
        let schemas = parsed();
        let _ = schemas[id as usize % schemas.len()].decode(datum);
    }
});
