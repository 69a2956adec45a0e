//! What Debezium writes where a row lacks a value, for `[avro] logical_types = "debezium"`: in a NOT
//! NULL column (required in its schema) the type's fallback — 0, `""`, `false`, the epoch — and for an
//! unchanged TOASTed value PostgreSQL did not send, its placeholder `__debezium_unavailable_value` where
//! the type can hold text or bytes. The header `sluice.unchanged_toast` still names such columns.

use serde_json::{json, Value as Json};
use sluice_core::event::{ColumnType, DebeziumType, RecordField};

use super::binary::{
    write_boolean, write_bytes, write_double, write_float, write_int, write_long, write_string,
    write_union_branch,
};
use super::debezium::UNAVAILABLE;

/// Whether Debezium puts its placeholder in a column of this type (text, bytes, and arrays of text).
pub(super) fn fits(column_type: &ColumnType) -> bool {
    match column_type {
        ColumnType::Array {
            element,
            dimensions,
        } => *dimensions == 1 && is_text(element),
        ColumnType::Bytes => true,
        other => is_text(other),
    }
}

fn is_text(column_type: &ColumnType) -> bool {
    matches!(
        column_type,
        ColumnType::String
            | ColumnType::Text { .. }
            | ColumnType::Json
            | ColumnType::Enum { .. }
            | ColumnType::Debezium(DebeziumType::HstoreJson)
    )
}

/// The placeholder, in a type [`fits`] accepts.
pub(super) fn write_unavailable(column_type: &ColumnType, out: &mut Vec<u8>) {
    match column_type {
        ColumnType::Bytes => write_bytes(UNAVAILABLE.as_bytes(), out),
        ColumnType::Array { .. } => {
            // One block of one element, `["null", string]`'s string.
            write_long(1, out);
            write_union_branch(1, out);
            write_string(UNAVAILABLE, out);
            write_long(0, out);
        }
        // Debezium's JSON form of an hstore holds the placeholder as key and value.
        ColumnType::Debezium(DebeziumType::HstoreJson) => {
            write_string(&format!("{{\"{UNAVAILABLE}\":\"{UNAVAILABLE}\"}}"), out)
        }
        _ => write_string(UNAVAILABLE, out),
    }
}

/// The value Debezium gives a NOT NULL column the row has no value for.
pub(super) fn write_fallback(column_type: &ColumnType, out: &mut Vec<u8>) {
    match column_type {
        ColumnType::Boolean => write_boolean(false, out),
        ColumnType::Int16 | ColumnType::Int32 | ColumnType::Date => write_int(0, out),
        ColumnType::Int64 | ColumnType::Timestamp | ColumnType::TimestampTz | ColumnType::Time => {
            write_long(0, out)
        }
        ColumnType::Float32 => write_float(0.0, out),
        ColumnType::Float64 => write_double(0.0, out),
        // Zero: one byte of two's complement, at whatever scale.
        ColumnType::Decimal { .. } | ColumnType::Money => write_bytes(&[0], out),
        ColumnType::VariableDecimal => {
            write_int(0, out);
            write_bytes(&[0], out);
        }
        ColumnType::String
        | ColumnType::Text { .. }
        | ColumnType::Json
        | ColumnType::Enum { .. }
        | ColumnType::Uuid => write_string("", out),
        ColumnType::Bytes => write_bytes(&[], out),
        // An empty array or map: a zero block count.
        ColumnType::Array { .. } | ColumnType::TextMap => write_long(0, out),
        ColumnType::Record { fields, .. } => write_null_fields(fields, out),
        ColumnType::Debezium(debezium) => match debezium {
            DebeziumType::MilliTimestamp
            | DebeziumType::MicroTimestamp
            | DebeziumType::MicroDuration => write_long(0, out),
            DebeziumType::StrippedDecimal => {
                write_int(0, out);
                write_bytes(&[0], out);
            }
            DebeziumType::MilliTime => write_int(0, out),
            DebeziumType::ZonedTimestamp { .. } => write_string("1970-01-01T00:00:00Z", out),
            DebeziumType::ZonedTime => write_string("00:00:00Z", out),
            DebeziumType::HstoreJson => write_string("{}", out),
        },
    }
}

/// The fallback as an Avro field default, so that a NOT NULL column added to a table (`ADD COLUMN …
/// NOT NULL DEFAULT …`) leaves the new schema readable with the old: the registry's BACKWARD check asks
/// a new required field for a default. (Debezium writes the column's DEFAULT there; sluice does not read
/// column defaults.) None for a decimal: apache-avro accepts no default for Avro's `decimal`.
pub(super) fn fallback_default(column_type: &ColumnType) -> Option<Json> {
    Some(match column_type {
        ColumnType::Boolean => json!(false),
        ColumnType::Int16
        | ColumnType::Int32
        | ColumnType::Date
        | ColumnType::Int64
        | ColumnType::Timestamp
        | ColumnType::TimestampTz
        | ColumnType::Time => json!(0),
        ColumnType::Float32 | ColumnType::Float64 => json!(0.0),
        ColumnType::Decimal { .. } | ColumnType::Money => return None,
        ColumnType::VariableDecimal | ColumnType::Debezium(DebeziumType::StrippedDecimal) => {
            json!({"scale": 0, "value": "\u{0}"})
        }
        ColumnType::String
        | ColumnType::Text { .. }
        | ColumnType::Json
        | ColumnType::Enum { .. }
        | ColumnType::Uuid
        | ColumnType::Bytes => json!(""),
        ColumnType::Array { .. } => json!([]),
        ColumnType::TextMap => json!({}),
        ColumnType::Record { fields, .. } => Json::Object(
            fields
                .iter()
                .map(|f| (f.name.clone(), Json::Null))
                .collect(),
        ),
        ColumnType::Debezium(debezium) => match debezium {
            DebeziumType::MilliTimestamp
            | DebeziumType::MicroTimestamp
            | DebeziumType::MicroDuration
            | DebeziumType::MilliTime => json!(0),
            DebeziumType::ZonedTimestamp { .. } => json!("1970-01-01T00:00:00Z"),
            DebeziumType::ZonedTime => json!("00:00:00Z"),
            DebeziumType::HstoreJson => json!("{}"),
            DebeziumType::StrippedDecimal => json!({"scale": 0, "value": "\u{0}"}),
        },
    })
}

/// A composite record with every field null.
fn write_null_fields(fields: &[RecordField], out: &mut Vec<u8>) {
    for _ in fields {
        write_union_branch(0, out);
    }
}
