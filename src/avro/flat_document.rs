//! Document changes as the transforms shaped them: on a routed topic (records named after it, the
//! collection in the key) and unwrapped. An unwrapped document is `{document, __…}`, the document as
//! canonical Extended JSON text, or, when the topic has a contract, the contract's record itself with the
//! added fields after its own.

use apache_avro::Schema;
use serde_json::{json, Value as Json};
use sluice_core::event::{DocumentChange, Op};

use super::binary::write_string;
use super::document::{
    document_key_schema, envelope_schemas, fixed_uuid, parse, write_optional_string,
};
use super::flat::{write_added, AddField, Added, Flat, DELETED_FIELD};
use super::schema::{flat_fields, TableSchemas};
use super::typed_document::TypedDocument;
use crate::contracts::Mismatch;

/// Where and how a collection's documents are published.
pub struct DocumentShape<'a> {
    pub topic: &'a str,
    pub namespace: String,
    pub key_table: Option<&'a str>,
    pub flat: Option<&'a Flat>,
}

/// The schemas of a collection as shaped; `contract` is the record its topic's contract declares (the
/// envelope's `after`, or the unwrapped value before the added fields), with what writes it.
pub fn shaped_document_schemas(
    shape: &DocumentShape,
    contract: Option<&Json>,
) -> Result<(TableSchemas, Option<TypedDocument>), String> {
    if let Some(path) = contract.and_then(|c| fixed_uuid(c, "after")) {
        return Err(format!(
            "`{path}`: a uuid on `fixed` cannot be written from a document (declare it on `string`)"
        ));
    }
    let Some(flat) = shape.flat else {
        let after = contract.cloned().unwrap_or_else(|| json!("string"));
        let schemas = envelope_schemas(shape.topic, &shape.namespace, shape.key_table, after)?;
        let typed = match contract {
            Some(_) => Some(TypedDocument::within(&schemas.value.schema)?),
            None => None,
        };
        return Ok((schemas, typed));
    };
    let key = parse(document_key_schema(&shape.namespace, shape.key_table))?;
    let (record, typed) = match contract {
        None => {
            let mut fields =
                vec![json!({"name": "document", "type": ["null", "string"], "default": null})];
            fields.extend(flat_fields(flat));
            (
                json!({"type": "record", "name": "Value", "namespace": shape.namespace, "fields": fields}),
                None,
            )
        }
        Some(contract) => {
            let mut record = contract.clone();
            let fields = record
                .get_mut("fields")
                .and_then(Json::as_array_mut)
                .ok_or("the contract is not a record")?;
            fields.extend(flat_fields(flat));
            let typed = typed_record(&record)?;
            (record, Some(typed))
        }
    };
    let schemas = TableSchemas {
        topic: shape.topic.to_owned(),
        key: Some(key),
        value: parse(record)?,
    };
    Ok((schemas, typed))
}

/// What writes JSON documents as `record` (a record schema standing alone): the typed writer resolves a
/// record within an envelope's `after`, so it is given one.
pub(super) fn typed_record(record: &Json) -> Result<TypedDocument, String> {
    let wrapper = json!({"type": "record", "name": "sluice.TypedRecord", "fields": [
        {"name": "after", "type": ["null", record]},
    ]});
    let wrapper = Schema::parse(&wrapper).map_err(|err| err.to_string())?;
    TypedDocument::within(&wrapper)
}

/// The key: the `_id`, then `db.collection` when a route added the field naming it.
pub fn encode_shaped_document_key(change: &DocumentChange, routed: bool, out: &mut Vec<u8>) {
    write_string(&change.key, out);
    if routed {
        write_string(&change.namespace(), out);
    }
}

/// Appends the unwrapped value of `change`; false when there is none to publish (a delete whose tombstone
/// is all there is of it). Fails only when the document does not fit the contract's record.
pub fn encode_flat_document(
    change: &DocumentChange,
    flat: &Flat,
    typed: Option<&TypedDocument>,
    processed_at_ms: i64,
    out: &mut Vec<u8>,
) -> Result<bool, Mismatch> {
    let deleted = change.op == Op::Delete;
    let document = match change.op {
        Op::Delete if flat.rewrite_deletes => change.before.as_deref(),
        Op::Delete | Op::Truncate => return Ok(false),
        _ => change.after.as_deref(),
    };
    let value_of = |field| Ok::<_, Mismatch>(added(change, field, processed_at_ms));
    let Some(typed) = typed else {
        write_optional_string(document, out);
        write_added(flat, deleted, out, value_of)?;
        return Ok(true);
    };
    // Without the document (a delete without a pre-image, an update whose document is gone) there is no
    // record of the contract's to publish: the tombstone of a delete is all there is of it.
    let Some(text) = document else {
        return Ok(false);
    };
    let mut object = match serde_json::from_str(text) {
        Ok(Json::Object(object)) => object,
        _ => return Err(not_a_document()),
    };
    for field in &flat.add_fields {
        let value = match added(change, *field, processed_at_ms) {
            Added::Text(text) => Json::String(text.to_owned()),
            Added::Long(number) => json!({"$numberLong": number.to_string()}),
            Added::Null => Json::Null,
        };
        object.insert(field.field_name().to_owned(), value);
    }
    if flat.rewrite_deletes {
        object.insert(DELETED_FIELD.to_owned(), Json::String(deleted.to_string()));
    }
    typed.write(&Json::Object(object), out)?;
    Ok(true)
}

fn not_a_document() -> Mismatch {
    Mismatch {
        field: "after".into(),
        problem: "is not an Extended JSON document".into(),
        fatal: true,
    }
}

/// An added field's value for a document change: MongoDB has no schema, LSN or numeric transaction id.
fn added(change: &DocumentChange, field: AddField, processed_at_ms: i64) -> Added<'_> {
    let source = &change.source;
    match field {
        AddField::Op => Added::Text(change.op.code()),
        AddField::Table => Added::Text(&change.collection),
        AddField::Db => Added::Text(&change.database),
        AddField::TsMs => Added::Long(processed_at_ms),
        AddField::SourceTsMs => Added::Long(
            source
                .wall_time_ms
                .unwrap_or(i64::from(source.cluster_time.0) * 1000),
        ),
        AddField::TxId => source.txn_number.map_or(Added::Null, Added::Long),
        AddField::Schema | AddField::Lsn => Added::Null,
    }
}
