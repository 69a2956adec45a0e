//! Change-stream events → the change-event model. Pure: a BSON document in, a [`Converted`] or a
//! [`ConversionError`] out, so that every documented event shape (and every malformed one) is tested
//! without a server.
//!
//! The event format is MongoDB's change event (`_id` resume token, `operationType`, `ns`, `documentKey`,
//! `fullDocument`, `fullDocumentBeforeChange`, `updateDescription`, `clusterTime`, `wallTime`,
//! `txnNumber`, `lsid`, `to`).

use std::sync::Arc;

use mongodb::bson::{spec::BinarySubtype, Bson, Document};

use sluice_core::event::{
    DocumentChange, DocumentSource, Op, SnapshotMarker, UndecodableChange, UpdateDescription,
};

/// What one change-stream event means for the pipeline. Every kind carries the event's resume token:
/// whatever it is, the stream has got past it once it is handled.
#[derive(Debug, PartialEq)]
pub struct Converted {
    pub resume_token: String,
    pub kind: EventKind,
}

#[derive(Debug, PartialEq)]
pub enum EventKind {
    /// insert, update, replace, delete: a change event to publish.
    Change(Box<DocumentChange>),
    /// drop, rename, dropDatabase and the expanded DDL events: the collection's documents are not
    /// changed one by one, so nothing is published; the reader logs it.
    Ddl {
        operation: String,
        namespace: String,
        /// The new namespace of a rename.
        to: Option<String>,
    },
    /// The stream cannot go on with `resumeAfter`: a new one must start after this token.
    Invalidate,
}

/// Why an event has no event form. The field is named, and what was found there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("change event field `{field}`: {problem}")]
pub struct ConversionError {
    pub field: String,
    pub problem: String,
}

impl ConversionError {
    pub(super) fn new(field: &str, problem: impl Into<String>) -> ConversionError {
        ConversionError {
            field: field.to_owned(),
            problem: problem.into(),
        }
    }

    /// The dead letter's form of an event that did not convert.
    pub fn undecodable(&self, event: &Document) -> UndecodableChange {
        let namespace = event.get_document("ns").ok().and_then(|ns| {
            let db = ns.get_str("db").ok()?;
            Some(match ns.get_str("coll") {
                Ok(coll) => format!("{db}.{coll}"),
                Err(_) => db.to_owned(),
            })
        });
        UndecodableChange {
            connector: "mongodb",
            namespace,
            raw: Bson::Document(event.clone())
                .into_relaxed_extjson()
                .to_string(),
            reason: self.to_string(),
            resume_token: event.get("_id").map(canonical_json),
        }
    }
}

/// A BSON value as canonical Extended JSON text: every type kept exactly (`{"$numberLong": "5"}`).
pub fn canonical_json(value: &Bson) -> String {
    value.clone().into_canonical_extjson().to_string()
}

/// Canonical Extended JSON text (as [`canonical_json`] writes it) back into the BSON value.
pub fn bson_from_canonical(text: &str) -> Result<Bson, String> {
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|err| format!("`{text}` is not JSON: {err}"))?;
    Bson::try_from(json).map_err(|err| format!("`{text}` is not Extended JSON: {err}"))
}

/// Converts one change-stream event. `replica_set` is the set the reader is connected to, for `source.rs`.
pub fn convert(
    event: &Document,
    replica_set: Option<&Arc<str>>,
) -> Result<Converted, ConversionError> {
    let resume_token = match event.get("_id") {
        Some(token @ Bson::Document(_)) => canonical_json(token),
        Some(other) => return Err(wrong_type("_id", "a resume token document", other)),
        None => return Err(ConversionError::new("_id", "missing (the resume token)")),
    };
    let operation = string(event, "operationType")?;
    let kind =
        match operation {
            "insert" | "update" | "replace" | "delete" => EventKind::Change(Box::new(
                document_change(event, operation, replica_set, &resume_token)?,
            )),
            "invalidate" => EventKind::Invalidate,
            "dropDatabase" => EventKind::Ddl {
                operation: operation.to_owned(),
                namespace: string(document(event, "ns")?, "db")
                    .map_err(|e| within("ns", e))?
                    .to_owned(),
                to: None,
            },
            // drop, rename, and what showExpandedEvents adds (create, createIndexes, modify, ...).
            _ => EventKind::Ddl {
                operation: operation.to_owned(),
                namespace: namespace(event)?.join("."),
                to: match event.get("to") {
                    None | Some(Bson::Null) => None,
                    Some(Bson::Document(to)) => {
                        Some(namespace_of(to).map_err(|e| within("to", e))?.join("."))
                    }
                    Some(other) => return Err(wrong_type("to", "a namespace document", other)),
                },
            },
        };
    Ok(Converted { resume_token, kind })
}

fn document_change(
    event: &Document,
    operation: &str,
    replica_set: Option<&Arc<str>>,
    resume_token: &str,
) -> Result<DocumentChange, ConversionError> {
    let [database, collection] = namespace(event)?;
    let key = match document(event, "documentKey")?.get("_id") {
        Some(id) => canonical_json(id),
        None => return Err(ConversionError::new("documentKey._id", "missing")),
    };
    let full_document = optional_document(event, "fullDocument")?;
    let before = optional_document(event, "fullDocumentBeforeChange")?;
    let (op, after, update) = match operation {
        "insert" | "replace" => {
            let Some(after) = full_document else {
                return Err(ConversionError::new(
                    "fullDocument",
                    format!("missing from a `{operation}` event"),
                ));
            };
            let op = if operation == "insert" {
                Op::Create
            } else {
                Op::Update
            };
            (op, Some(after), None)
        }
        // Without updateLookup or post-images, or when the document was deleted before the lookup, an
        // update carries only its description.
        "update" => {
            let description = update_description(document(event, "updateDescription")?)
                .map_err(|e| within("updateDescription", e))?;
            (Op::Update, full_document, Some(description))
        }
        _ => (Op::Delete, None, None),
    };
    let cluster_time = match event.get("clusterTime") {
        Some(Bson::Timestamp(ts)) => (ts.time, ts.increment),
        Some(other) => return Err(wrong_type("clusterTime", "a timestamp", other)),
        None => return Err(ConversionError::new("clusterTime", "missing")),
    };
    let wall_time_ms = optional_date_ms(event, "wallTime")?;
    let txn_number = optional_integer(event, "txnNumber")?;
    let lsid = match event.get("lsid") {
        None | Some(Bson::Null) => None,
        Some(Bson::Document(lsid)) => Some(session_id(lsid)),
        Some(other) => return Err(wrong_type("lsid", "a session document", other)),
    };
    Ok(DocumentChange {
        database,
        collection,
        op,
        key,
        before: before.map(|doc| canonical_json(&Bson::Document(doc.clone()))),
        after: after.map(|doc| canonical_json(&Bson::Document(doc.clone()))),
        update,
        source: DocumentSource {
            replica_set: replica_set.cloned(),
            cluster_time,
            wall_time_ms,
            txn_number,
            lsid,
            resume_token: Some(resume_token.to_owned()),
            snapshot: SnapshotMarker::False,
        },
    })
}

fn update_description(description: &Document) -> Result<UpdateDescription, ConversionError> {
    let updated_fields = match description.get("updatedFields") {
        None | Some(Bson::Null) => None,
        Some(Bson::Document(fields)) if fields.is_empty() => None,
        Some(fields @ Bson::Document(_)) => Some(canonical_json(fields)),
        Some(other) => return Err(wrong_type("updatedFields", "a document", other)),
    };
    let mut removed_fields = Vec::new();
    match description.get("removedFields") {
        None | Some(Bson::Null) => {}
        Some(Bson::Array(fields)) => {
            for field in fields {
                match field {
                    Bson::String(name) => removed_fields.push(name.clone()),
                    other => return Err(wrong_type("removedFields[]", "a field name", other)),
                }
            }
        }
        Some(other) => return Err(wrong_type("removedFields", "an array", other)),
    }
    let mut truncated_arrays = Vec::new();
    match description.get("truncatedArrays") {
        None | Some(Bson::Null) => {}
        Some(Bson::Array(arrays)) => {
            for array in arrays {
                let Bson::Document(array) = array else {
                    return Err(wrong_type("truncatedArrays[]", "a document", array));
                };
                let field = string(array, "field").map_err(|e| within("truncatedArrays[]", e))?;
                let size = match array.get("newSize") {
                    Some(Bson::Int32(n)) if *n >= 0 => *n as u32,
                    Some(Bson::Int64(n)) if (0..=i64::from(u32::MAX)).contains(n) => *n as u32,
                    Some(other) => {
                        return Err(wrong_type("truncatedArrays[].newSize", "a length", other))
                    }
                    None => {
                        return Err(ConversionError::new("truncatedArrays[].newSize", "missing"))
                    }
                };
                truncated_arrays.push((field.to_owned(), size));
            }
        }
        Some(other) => return Err(wrong_type("truncatedArrays", "an array", other)),
    }
    Ok(UpdateDescription {
        updated_fields,
        removed_fields,
        truncated_arrays,
    })
}

/// A session id as text: the UUID of `lsid.id` when it is one, else the whole `lsid` as Extended JSON.
pub(super) fn session_id(lsid: &Document) -> String {
    match lsid.get("id") {
        Some(Bson::Binary(binary))
            if binary.subtype == BinarySubtype::Uuid && binary.bytes.len() == 16 =>
        {
            let b = &binary.bytes;
            format!(
                "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
                b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
            )
        }
        _ => canonical_json(&Bson::Document(lsid.clone())),
    }
}

/// A date field that may be absent or null, as milliseconds since the epoch.
pub(super) fn optional_date_ms(
    doc: &Document,
    field: &str,
) -> Result<Option<i64>, ConversionError> {
    match doc.get(field) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::DateTime(at)) => Ok(Some(at.timestamp_millis())),
        Some(other) => Err(wrong_type(field, "a date", other)),
    }
}

/// An integer field (int or long) that may be absent or null.
pub(super) fn optional_integer(
    doc: &Document,
    field: &str,
) -> Result<Option<i64>, ConversionError> {
    match doc.get(field) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::Int64(n)) => Ok(Some(*n)),
        Some(Bson::Int32(n)) => Ok(Some(i64::from(*n))),
        Some(other) => Err(wrong_type(field, "an integer", other)),
    }
}

fn namespace(event: &Document) -> Result<[String; 2], ConversionError> {
    namespace_of(document(event, "ns")?).map_err(|e| within("ns", e))
}

fn namespace_of(ns: &Document) -> Result<[String; 2], ConversionError> {
    Ok([string(ns, "db")?.to_owned(), string(ns, "coll")?.to_owned()])
}

pub(super) fn string<'a>(doc: &'a Document, field: &str) -> Result<&'a str, ConversionError> {
    match doc.get(field) {
        Some(Bson::String(text)) => Ok(text),
        Some(other) => Err(wrong_type(field, "a string", other)),
        None => Err(ConversionError::new(field, "missing")),
    }
}

pub(super) fn document<'a>(
    doc: &'a Document,
    field: &str,
) -> Result<&'a Document, ConversionError> {
    optional_document(doc, field)?.ok_or_else(|| ConversionError::new(field, "missing"))
}

/// A document field that may be absent or null.
fn optional_document<'a>(
    doc: &'a Document,
    field: &str,
) -> Result<Option<&'a Document>, ConversionError> {
    match doc.get(field) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::Document(inner)) => Ok(Some(inner)),
        Some(other) => Err(wrong_type(field, "a document", other)),
    }
}

pub(super) fn wrong_type(field: &str, expected: &str, found: &Bson) -> ConversionError {
    ConversionError::new(
        field,
        format!("expected {expected}, found {:?}", found.element_type()),
    )
}

/// Prefixes the field path of an error found inside `parent`.
pub(super) fn within(parent: &str, err: ConversionError) -> ConversionError {
    ConversionError {
        field: format!("{parent}.{}", err.field),
        problem: err.problem,
    }
}

#[cfg(test)]
#[path = "change_tests.rs"]
mod tests;
