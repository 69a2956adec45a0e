//! A change-stream event: arbitrary bytes read as a BSON document, then converted (and, when it does not
//! convert, made the dead letter it becomes).
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use mongodb::bson::Document;
use sluice_mongodb::change;

fuzz_target!(|data: &[u8]| {
    let Ok(event) = Document::from_reader(data) else {
        return;
    };
    let replica_set: Arc<str> = "rs0".into();
    if let Err(err) = change::convert(&event, Some(&replica_set)) {
        let _ = err.undecodable(&event);
    }
});
