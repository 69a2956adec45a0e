//! MongoDB document changes as Avro, in the shape of Debezium's MongoDB connector: documents travel as
//! canonical Extended JSON strings (every BSON value fits, whatever the collection holds), so one schema
//! serves every collection; only the names differ. A collection with a contract gets `after` as the
//! contract's record instead ([`TypedDocument`]).
//!
//! - **Key**: `<namespace>.Key { id: string }`, the `_id` as canonical Extended JSON.
//! - **Value**: `<namespace>.Envelope { before, after, updateDescription, source, op, ts_ms }` where
//!   `source` is the shared record `sluice.mongodb.Source`.

use serde_json::{json, Value as Json};

use super::binary::{write_blocks, write_int, write_long, write_string, write_union_branch};
use super::message::write_optional_long;
use super::naming::{collection_namespace, collection_topic};
use super::schema::{common_source_fields, AvroSchema, TableSchemas};
use super::typed_document::TypedDocument;
use crate::contracts::Mismatch;
use sluice_core::event::DocumentChange;

/// Full name of the envelope's source block.
pub const MONGODB_SOURCE_RECORD: &str = "sluice.mongodb.Source";

/// The topic of a collection: `<topic_prefix>.<db>.<collection>`, by the rule in [`super::naming`].
pub fn document_topic(topic_prefix: &str, database: &str, collection: &str) -> String {
    collection_topic(topic_prefix, database, collection)
}

/// The key and value schemas of a collection's topic, with documents as Extended JSON text.
pub fn document_schemas(topic_prefix: &str, database: &str, collection: &str) -> TableSchemas {
    schemas_with_after(topic_prefix, database, collection, json!("string"))
        .expect("sluice's fixed schemas are valid Avro")
}

/// The key and value schemas of a collection whose contract declares its documents: `after` is the
/// contract's record (`contract`, its schema as JSON). Fails when the record cannot be part of the
/// envelope (a name that clashes with the envelope's, a type no BSON value can fill).
pub fn typed_document_schemas(
    topic_prefix: &str,
    database: &str,
    collection: &str,
    contract: &Json,
) -> Result<(TableSchemas, TypedDocument), String> {
    if let Some(path) = fixed_uuid(contract, "after") {
        return Err(format!(
            "`{path}`: a uuid on `fixed` cannot be written from a document (declare it on `string`)"
        ));
    }
    let schemas = schemas_with_after(topic_prefix, database, collection, contract.clone())?;
    let typed = TypedDocument::within(&schemas.value.schema)?;
    Ok((schemas, typed))
}

fn schemas_with_after(
    topic_prefix: &str,
    database: &str,
    collection: &str,
    after: Json,
) -> Result<TableSchemas, String> {
    let topic = document_topic(topic_prefix, database, collection);
    let namespace = collection_namespace(topic_prefix, database, collection);
    envelope_schemas(&topic, &namespace, None, after)
}

/// The key record: the `_id`, then the field naming the collection that a route adds.
pub(super) fn document_key_schema(namespace: &str, key_table: Option<&str>) -> Json {
    let mut fields = vec![json!({"name": "id", "type": "string"})];
    if let Some(key_table) = key_table {
        fields.push(json!({"name": key_table, "type": "string"}));
    }
    json!({"type": "record", "name": "Key", "namespace": namespace, "fields": fields})
}

/// The schemas of a collection's envelope on `topic`, its records in `namespace`.
pub(super) fn envelope_schemas(
    topic: &str,
    namespace: &str,
    key_table: Option<&str>,
    after: Json,
) -> Result<TableSchemas, String> {
    let key = document_key_schema(namespace, key_table);
    let optional_string = json!(["null", "string"]);
    let envelope = json!({
        "type": "record",
        "name": "Envelope",
        "namespace": namespace,
        "fields": [
            {"name": "before", "type": optional_string, "default": null},
            {"name": "after", "type": ["null", after], "default": null},
            {"name": "updateDescription", "type": ["null", {
                "type": "record",
                "name": "sluice.mongodb.UpdateDescription",
                "fields": [
                    {"name": "removedFields", "type": ["null", {"type": "array", "items": "string"}], "default": null},
                    {"name": "updatedFields", "type": optional_string, "default": null},
                    {"name": "truncatedArrays", "type": ["null", {"type": "array", "items": {
                        "type": "record",
                        "name": "sluice.mongodb.TruncatedArray",
                        "fields": [
                            {"name": "field", "type": "string"},
                            {"name": "size", "type": "int"},
                        ],
                    }}], "default": null},
                ],
            }], "default": null},
            {"name": "source", "type": source_record()},
            {"name": "op", "type": "string"},
            {"name": "ts_ms", "type": ["null", "long"], "default": null},
        ],
    });
    Ok(TableSchemas {
        topic: topic.to_owned(),
        key: Some(parse(key)?),
        value: parse(envelope)?,
    })
}

pub(super) fn parse(schema: Json) -> Result<AvroSchema, String> {
    let json = schema.to_string();
    let schema = apache_avro::Schema::parse_str(&json).map_err(|err| err.to_string())?;
    Ok(AvroSchema { json, schema })
}

/// The path of a `uuid` declared on `fixed`, which apache-avro reads as a string-backed uuid, so that
/// what sluice writes and what a consumer of the registered schema reads would differ.
pub(super) fn fixed_uuid(schema: &Json, path: &str) -> Option<String> {
    match schema {
        Json::Object(object) => {
            if object.get("logicalType") == Some(&json!("uuid"))
                && object.get("type") == Some(&json!("fixed"))
            {
                return Some(path.to_owned());
            }
            let inner = |key: &str| object.get(key).and_then(|t| fixed_uuid(t, path));
            let fields = object.get("fields").and_then(Json::as_array);
            inner("type")
                .or_else(|| inner("items"))
                .or_else(|| inner("values"))
                .or_else(|| {
                    fields?.iter().find_map(|field| {
                        let name = field.get("name").and_then(Json::as_str).unwrap_or("?");
                        fixed_uuid(field.get("type")?, &format!("{path}.{name}"))
                    })
                })
        }
        Json::Array(branches) => branches.iter().find_map(|b| fixed_uuid(b, path)),
        _ => None,
    }
}

/// Debezium's MongoDB `source` block, plus the resume token that positions the event.
fn source_record() -> serde_json::Value {
    let optional = |name: &str, avro_type: &str| json!({"name": name, "type": ["null", avro_type], "default": null});
    let mut fields = common_source_fields();
    fields.extend([
        optional("rs", "string"),
        json!({"name": "collection", "type": "string"}),
        json!({"name": "ord", "type": "int"}),
        optional("lsid", "string"),
        optional("txnNumber", "long"),
        optional("wallTime", "long"),
        optional("resumeToken", "string"),
    ]);
    json!({"type": "record", "name": MONGODB_SOURCE_RECORD, "fields": fields})
}

pub fn encode_document_key(change: &DocumentChange, out: &mut Vec<u8>) {
    write_string(&change.key, out);
}

/// The envelope of `change`. `server_name` is the instance's logical name (`sink.topic_prefix`);
/// `processed_at_ms` the envelope's `ts_ms`; `typed` the record of the collection's contract, if it has
/// one. Returns where in `out` the text of `source.snapshot` starts. Fails only when the document does not
/// fit that record; `out` then holds part of the envelope.
pub fn encode_document_envelope(
    change: &DocumentChange,
    server_name: &str,
    processed_at_ms: i64,
    typed: Option<&TypedDocument>,
    out: &mut Vec<u8>,
) -> Result<usize, Mismatch> {
    write_optional_string(change.before.as_deref(), out);
    match (typed, change.after.as_deref()) {
        (Some(typed), Some(after)) => {
            let document = serde_json::from_str(after).map_err(|err| Mismatch {
                field: "after".into(),
                problem: format!("is not Extended JSON: {err}"),
                fatal: true,
            })?;
            write_union_branch(1, out);
            typed.write(&document, out)?;
        }
        (None, after) => write_optional_string(after, out),
        (Some(_), None) => write_union_branch(0, out),
    }
    match &change.update {
        None => write_union_branch(0, out),
        Some(update) => {
            write_union_branch(1, out);
            write_union_branch(1, out);
            let _ = write_blocks(&update.removed_fields, out, |field, out| {
                write_string(field, out);
                Ok::<(), ()>(())
            });
            write_optional_string(update.updated_fields.as_deref(), out);
            write_union_branch(1, out);
            let _ = write_blocks(&update.truncated_arrays, out, |(field, size), out| {
                write_string(field, out);
                // Array lengths stay far below 2^31 (a document is at most 16 MB).
                write_int(*size as i32, out);
                Ok::<(), ()>(())
            });
        }
    }
    let source = &change.source;
    write_string(env!("CARGO_PKG_VERSION"), out);
    write_string("mongodb", out);
    write_string(server_name, out);
    write_long(i64::from(source.cluster_time.0) * 1000, out);
    let marker = source.snapshot.as_str();
    write_string(marker, out);
    let marker_at = out.len() - marker.len();
    write_string(&change.database, out);
    write_optional_string(source.replica_set.as_deref(), out);
    write_string(&change.collection, out);
    // The ordinal within the second is a u32 in BSON; Avro has no unsigned int, and Debezium's `ord` is
    // an int: the bits are kept.
    write_int(source.cluster_time.1 as i32, out);
    write_optional_string(source.lsid.as_deref(), out);
    write_optional_long(source.txn_number, out);
    write_optional_long(source.wall_time_ms, out);
    write_optional_string(source.resume_token.as_deref(), out);
    write_string(change.op.code(), out);
    write_optional_long(Some(processed_at_ms), out);
    Ok(marker_at)
}

pub(super) fn write_optional_string(value: Option<&str>, out: &mut Vec<u8>) {
    match value {
        Some(value) => {
            write_union_branch(1, out);
            write_string(value, out);
        }
        None => write_union_branch(0, out),
    }
}

#[cfg(test)]
mod tests {
    use apache_avro::types::Value as Avro;

    use super::*;
    use sluice_core::event::{DocumentSource, Op, SnapshotMarker, UpdateDescription};

    fn change() -> DocumentChange {
        DocumentChange {
            database: "shop".into(),
            collection: "order items".into(),
            op: Op::Update,
            key: r#"{"$oid":"64f0a1b2c3d4e5f601020304"}"#.into(),
            before: None,
            after: Some(
                r#"{"_id":{"$oid":"64f0a1b2c3d4e5f601020304"},"qty":{"$numberInt":"6"}}"#.into(),
            ),
            update: Some(UpdateDescription {
                updated_fields: Some(r#"{"qty":{"$numberInt":"6"}}"#.into()),
                removed_fields: vec!["note".into()],
                truncated_arrays: vec![("tags".into(), 2)],
            }),
            source: DocumentSource {
                replica_set: Some("rs0".into()),
                cluster_time: (1_700_000_000, u32::MAX),
                wall_time_ms: Some(1_700_000_000_123),
                txn_number: Some(4),
                lsid: Some("00010203-0405-0607-0809-0a0b0c0d0e0f".into()),
                resume_token: Some(r#"{"_data":"82"}"#.into()),
                snapshot: SnapshotMarker::False,
            },
        }
    }

    fn field(record: &Avro, name: &str) -> Avro {
        let Avro::Record(fields) = record else {
            panic!("{record:?}")
        };
        fields.iter().find(|(n, _)| n == name).unwrap().1.clone()
    }

    fn some(value: Avro) -> Avro {
        Avro::Union(1, Box::new(value))
    }

    #[test]
    fn a_document_change_decodes_with_its_schemas() {
        let schemas = document_schemas("app", "shop", "order items");
        assert_eq!(schemas.topic, "app.shop.order_items");
        let mut value = Vec::new();
        encode_document_envelope(&change(), "app", 42, None, &mut value).unwrap();
        let decoded =
            apache_avro::from_avro_datum(&schemas.value.schema, &mut &value[..], None).unwrap();
        assert_eq!(
            field(&decoded, "before"),
            Avro::Union(0, Box::new(Avro::Null))
        );
        assert_eq!(
            field(&decoded, "after"),
            some(Avro::String(change().after.unwrap()))
        );
        let update = field(&decoded, "updateDescription");
        let Avro::Union(1, update) = update else {
            panic!("{update:?}")
        };
        assert_eq!(
            field(&update, "removedFields"),
            some(Avro::Array(vec![Avro::String("note".into())]))
        );
        assert_eq!(
            field(&update, "truncatedArrays"),
            some(Avro::Array(vec![Avro::Record(vec![
                ("field".into(), Avro::String("tags".into())),
                ("size".into(), Avro::Int(2)),
            ])]))
        );
        let source = field(&decoded, "source");
        assert_eq!(field(&source, "connector"), Avro::String("mongodb".into()));
        assert_eq!(field(&source, "name"), Avro::String("app".into()));
        assert_eq!(field(&source, "ts_ms"), Avro::Long(1_700_000_000_000));
        assert_eq!(field(&source, "db"), Avro::String("shop".into()));
        assert_eq!(
            field(&source, "collection"),
            Avro::String("order items".into())
        );
        assert_eq!(field(&source, "rs"), some(Avro::String("rs0".into())));
        assert_eq!(
            field(&source, "ord"),
            Avro::Int(-1),
            "u32::MAX keeps its bits"
        );
        assert_eq!(field(&source, "txnNumber"), some(Avro::Long(4)));
        assert_eq!(
            field(&source, "wallTime"),
            some(Avro::Long(1_700_000_000_123))
        );
        assert_eq!(
            field(&source, "resumeToken"),
            some(Avro::String(r#"{"_data":"82"}"#.into()))
        );
        assert_eq!(field(&decoded, "op"), Avro::String("u".into()));
        assert_eq!(field(&decoded, "ts_ms"), some(Avro::Long(42)));

        let mut key = Vec::new();
        encode_document_key(&change(), &mut key);
        let decoded_key =
            apache_avro::from_avro_datum(&schemas.key.unwrap().schema, &mut &key[..], None)
                .unwrap();
        assert_eq!(
            field(&decoded_key, "id"),
            Avro::String(r#"{"$oid":"64f0a1b2c3d4e5f601020304"}"#.into())
        );
    }

    #[test]
    fn an_insert_without_description_or_optional_source_fields_decodes() {
        let mut insert = change();
        insert.op = Op::Create;
        insert.update = None;
        insert.source.replica_set = None;
        insert.source.txn_number = None;
        insert.source.lsid = None;
        insert.source.wall_time_ms = None;
        let schemas = document_schemas("app", "shop", "orders");
        let mut value = Vec::new();
        encode_document_envelope(&insert, "app", 1, None, &mut value).unwrap();
        let mut rest = &value[..];
        let decoded = apache_avro::from_avro_datum(&schemas.value.schema, &mut rest, None).unwrap();
        assert!(rest.is_empty(), "every byte belongs to the datum");
        assert_eq!(
            field(&decoded, "updateDescription"),
            Avro::Union(0, Box::new(Avro::Null))
        );
        assert_eq!(
            field(&field(&decoded, "source"), "rs"),
            Avro::Union(0, Box::new(Avro::Null))
        );
        assert_eq!(field(&decoded, "op"), Avro::String("c".into()));
    }
}
