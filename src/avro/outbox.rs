//! An outbox router's topics: the aggregate id as a string key, the payload's text in a record (Debezium's
//! outbox router with a string payload), or the record of the topic's contract written from the
//! payload's JSON.

use serde_json::json;

use super::binary::{write_string, write_union_branch};
use super::document::{fixed_uuid, parse};
use super::flat_document::typed_record;
use super::message::fixed;
use super::naming::topic_namespace;
use super::schema::TableSchemas;
use super::typed_document::TypedDocument;

/// The schemas of an outbox router's topic: the aggregate id as a string key, the payload's text in a
/// record (Debezium's outbox router with a string payload), named after the topic.
pub fn outbox_schemas(topic: &str) -> TableSchemas {
    let value = json!({
        "type": "record",
        "name": "Value",
        "namespace": topic_namespace(topic),
        "fields": [{"name": "payload", "type": ["null", "string"], "default": null}],
    });
    TableSchemas {
        topic: topic.to_owned(),
        key: Some(fixed(json!("string"))),
        value: fixed(value),
    }
}

/// The schemas of an outbox topic whose contract declares the payload: the contract's record is the value,
/// written from the payload's JSON.
pub fn typed_outbox_schemas(
    topic: &str,
    contract: &serde_json::Value,
) -> Result<(TableSchemas, TypedDocument), String> {
    if let Some(path) = fixed_uuid(contract, "payload") {
        return Err(format!(
            "`{path}`: a uuid on `fixed` cannot be written from JSON (declare it on `string`)"
        ));
    }
    let typed = typed_record(contract)?;
    let value = parse(contract.clone())?;
    let schemas = TableSchemas {
        topic: topic.to_owned(),
        key: Some(fixed(json!("string"))),
        value,
    };
    Ok((schemas, typed))
}

/// The outbox record: the payload's text, or null.
pub fn encode_outbox(payload: Option<&str>, out: &mut Vec<u8>) {
    match payload {
        Some(text) => {
            write_union_branch(1, out);
            write_string(text, out);
        }
        None => write_union_branch(0, out),
    }
}

/// The key: the aggregate id (a message's prefix), an Avro string.
pub fn encode_outbox_key(key: &str, out: &mut Vec<u8>) {
    write_string(key, out);
}
