//! An oplog entry: arbitrary bytes read as a BSON document, then converted; its `o` also read as an
//! update's changed fields.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use mongodb::bson::Document;
use sluice_mongodb::oplog;

fuzz_target!(|data: &[u8]| {
    let Ok(entry) = Document::from_reader(data) else {
        return;
    };
    let replica_set: Arc<str> = "rs0".into();
    if let Err(err) = oplog::convert_entry(&entry, Some(&replica_set)) {
        let _ = oplog::undecodable(&err, &entry);
    }
    if let Ok(o) = entry.get_document("o") {
        let _ = oplog::update_fields(o);
    }
});
