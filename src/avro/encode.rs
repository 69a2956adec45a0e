//! Avro binary encoding of keys and envelopes, straight from the event model.
//!
//! The layout written here must follow the schemas built in `schema.rs` field for field; the round-trip
//! tests decode every encoding with apache-avro against those schemas to prove it.
//!
//! Value types must match their column's type exactly, except that the text-carrying columns (`String`,
//! `Json`, `Text`) take both `Value::String` and `Value::Json`. On error nothing is appended.

use std::io::Write as _;

use super::binary::{
    write_blocks, write_boolean, write_bytes, write_double, write_float, write_int, write_long,
    write_string, write_union_branch,
};
use super::debezium;
use super::decimal::{self, DecimalError};
use super::placeholder;
use sluice_core::event::{
    ChangeEvent, Column, ColumnType, DebeziumType, Lsn, Note, Numeric, Op, RecordField, Row, Table,
    Value,
};

/// What an envelope needs beyond the event.
#[derive(Clone, Copy, Debug)]
pub struct EnvelopeContext<'a> {
    /// The topic prefix (Debezium's logical server name): `source.name`.
    pub server_name: &'a str,
    /// `source.connector`, `"postgresql"`.
    pub connector: &'a str,
    /// `source.version`: this program's version.
    pub version: &'a str,
    /// When the event was processed, microseconds since the epoch: the envelope's `ts_ms`, `ts_us` and
    /// `ts_ns`.
    pub processed_at_us: i64,
    /// Debezium's envelope exactly (`[avro] logical_types = "debezium"`): its field order, required NOT
    /// NULL columns with its stand-ins for what a row lacks.
    pub debezium: bool,
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum EncodeError {
    #[error("{table}: a row has {got} values for {expected} columns")]
    RowShape {
        table: String,
        expected: usize,
        got: usize,
    },
    #[error("column `{column}` ({column_type}): {reason}")]
    Column {
        column: String,
        column_type: String,
        reason: EncodeReason,
    },
    #[error("source {field} {value} does not fit an Avro long")]
    SourceOutOfRange { field: &'static str, value: u64 },
}

/// Why one column's value could not be encoded.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum EncodeReason {
    #[error("NULL in a key column")]
    NullInKey,
    #[error("unchanged TOAST value in a key column")]
    UnchangedToastInKey,
    #[error(
        "an array with bounds {0} in a key column: its Avro value does not show them, so rows that \
         differ only in their bounds would share a message key"
    )]
    ShapedArrayInKey(String),
    #[error(
        "{0} has no Avro decimal representation (source.decimal_handling = \"string\" or \"double\" \
         publishes it)"
    )]
    NonFiniteDecimal(&'static str),
    #[error("a composite value has {got} fields, its type {expected}")]
    RecordShape { expected: usize, got: usize },
    #[error(transparent)]
    Decimal(#[from] DecimalError),
    #[error("scale {0} does not fit an Avro int")]
    ScaleOutOfRange(u32),
    #[error("`{0}` is not a UUID in its hyphenated form")]
    MalformedUuid(String),
    #[error("expected {expected}, got {found}")]
    TypeMismatch {
        expected: &'static str,
        found: &'static str,
    },
    /// The source's own reason (`Value::OutOfRange`).
    #[error("{0}")]
    OutOfRange(String),
}

/// Appends the key record: the key columns of `row`, in table order. For a table without key columns this
/// appends nothing (such tables have no key schema; their messages carry a null key).
pub fn encode_key(table: &Table, row: &Row, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    let result = write_key(table, row, out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// Appends the envelope of a change event (Debezium field order: before, after, source, op, ts_ms). Returns
/// where in `out` the text of `source.snapshot` starts, so that a copy can be marked `last` later (the
/// markers `true` and `last` have the same length).
pub fn encode_envelope(
    event: &ChangeEvent,
    ctx: &EnvelopeContext,
    out: &mut Vec<u8>,
) -> Result<usize, EncodeError> {
    let start = out.len();
    let result = write_envelope(event, ctx, out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn write_key(table: &Table, row: &Row, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    check_shape(table, row)?;
    for (index, column) in table.key_columns() {
        let value = row[index].plain();
        let written = match (value, array_bounds(value)) {
            (Value::Null, _) => Err(EncodeReason::NullInKey),
            (Value::UnchangedToast, _) => Err(EncodeReason::UnchangedToastInKey),
            (_, Some(bounds)) => Err(EncodeReason::ShapedArrayInKey(bounds)),
            (value, None) => write_value(&column.column_type, value, out),
        };
        written.map_err(|reason| column_error(column, reason))?;
    }
    Ok(())
}

fn write_envelope(
    event: &ChangeEvent,
    ctx: &EnvelopeContext,
    out: &mut Vec<u8>,
) -> Result<usize, EncodeError> {
    let table = &*event.table;
    // A truncate has no rows, whatever the event carries.
    let (before, after) = match event.op {
        Op::Truncate => (None, None),
        _ => (event.before.as_ref(), event.after.as_ref()),
    };
    write_optional_row(table, before, ctx.debezium, out)?;
    write_optional_row(table, after, ctx.debezium, out)?;
    let marker = write_source(event, ctx, out)?;
    // Debezium's order puts the transaction block before `op`.
    if ctx.debezium {
        write_transaction_block(event, out)?;
    }
    write_string(event.op.code(), out);
    write_union_branch(1, out);
    write_long(ctx.processed_at_us.div_euclid(1000), out);
    if !ctx.debezium {
        write_transaction_block(event, out)?;
    }
    write_finer_times(ctx.processed_at_us, out);
    Ok(marker)
}

/// Debezium's transaction block, null on snapshot rows.
fn write_transaction_block(event: &ChangeEvent, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    match (event.source.txid, event.source.order) {
        (Some(txid), Some(order)) => {
            write_union_branch(1, out);
            write_string(&transaction_id(txid, event.source.commit_lsn), out);
            write_long(as_long("transaction.total_order", order.total)?, out);
            write_long(
                as_long("transaction.data_collection_order", order.in_table)?,
                out,
            );
        }
        _ => write_union_branch(0, out),
    }
    Ok(())
}

/// `ts_us` and `ts_ns` (Debezium 2.6+) after `ts_ms`: the same instant in finer units, optional; the
/// nanoseconds are null past the year 2262, where they leave a long.
fn write_finer_times(micros: i64, out: &mut Vec<u8>) {
    write_union_branch(1, out);
    write_long(micros, out);
    match micros.checked_mul(1000) {
        Some(nanos) => {
            write_union_branch(1, out);
            write_long(nanos, out);
        }
        None => write_union_branch(0, out),
    }
}

/// A transaction's id in transaction blocks and metadata records: `<txid>:<commit LSN as a decimal>`, as
/// Debezium writes it (txids wrap around; with the commit LSN the id is unique).
pub fn transaction_id(txid: u64, commit_lsn: Lsn) -> String {
    format!("{txid}:{}", commit_lsn.0)
}

/// `["null", Value]`.
fn write_optional_row(
    table: &Table,
    row: Option<&Row>,
    debezium: bool,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let Some(row) = row else {
        write_union_branch(0, out);
        return Ok(());
    };
    write_union_branch(1, out);
    write_row_fields(table, row, debezium, out)
}

/// The fields of the `Value` record: every column `["null", T]`; with `debezium`, NOT NULL columns `T`
/// (what the row lacks — a delete's non-key columns under REPLICA IDENTITY DEFAULT — Debezium's
/// fallback value) and an unchanged TOAST value Debezium's placeholder where the type has one.
pub(super) fn write_row_fields(
    table: &Table,
    row: &Row,
    debezium: bool,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    check_shape(table, row)?;
    for (column, value) in table.columns.iter().zip(row) {
        let required = debezium && column.not_null;
        match value.plain() {
            Value::UnchangedToast if debezium && placeholder::fits(&column.column_type) => {
                if !required {
                    write_union_branch(1, out);
                }
                placeholder::write_unavailable(&column.column_type, out);
            }
            Value::Null | Value::UnchangedToast if required => {
                placeholder::write_fallback(&column.column_type, out)
            }
            // The caller reports unchanged TOAST columns alongside the message.
            Value::Null | Value::UnchangedToast => write_union_branch(0, out),
            value => {
                if !required {
                    write_union_branch(1, out);
                }
                write_value(&column.column_type, value, out)
                    .map_err(|reason| column_error(column, reason))?;
            }
        }
    }
    Ok(())
}

/// The source block; returns where the text of its `snapshot` marker starts.
fn write_source(
    event: &ChangeEvent,
    ctx: &EnvelopeContext,
    out: &mut Vec<u8>,
) -> Result<usize, EncodeError> {
    let source = &event.source;
    write_string(ctx.version, out);
    write_string(ctx.connector, out);
    write_string(ctx.server_name, out);
    write_long(source.commit_time_us.div_euclid(1000), out);
    let marker = source.snapshot.as_str();
    if ctx.debezium {
        // `[Enum, "null"]`: the marker is always there.
        write_union_branch(0, out);
    }
    write_string(marker, out);
    let marker_at = out.len() - marker.len();
    write_string(&source.database, out);
    // Debezium's sequence: ["<last_commit_lsn>","<lsn>"], LSNs as decimal numbers. At most 47 bytes, so it
    // is formatted on the stack.
    const SEQUENCE_BUFFER: usize = 64;
    let mut sequence = [0u8; SEQUENCE_BUFFER];
    let mut cursor = &mut sequence[..];
    let _ = write!(cursor, "[\"{}\",\"{}\"]", source.commit_lsn.0, source.lsn.0);
    let len = SEQUENCE_BUFFER - cursor.len();
    write_union_branch(1, out);
    write_bytes(&sequence[..len], out);
    write_finer_times(source.commit_time_us, out);
    write_string(&event.table.schema, out);
    write_string(&event.table.name, out);
    match source.txid {
        Some(txid) => {
            write_union_branch(1, out);
            write_long(as_long("txId", txid)?, out);
        }
        None => write_union_branch(0, out),
    }
    write_union_branch(1, out);
    write_long(as_long("lsn", source.lsn.0)?, out);
    // xmin: not tracked; origin and origin_lsn: replication origins are not read.
    write_union_branch(0, out);
    write_union_branch(0, out);
    write_union_branch(0, out);
    Ok(marker_at)
}

pub(super) fn as_long(field: &'static str, value: u64) -> Result<i64, EncodeError> {
    i64::try_from(value).map_err(|_| EncodeError::SourceOutOfRange { field, value })
}

fn check_shape(table: &Table, row: &Row) -> Result<(), EncodeError> {
    if row.len() == table.columns.len() {
        Ok(())
    } else {
        Err(EncodeError::RowShape {
            table: table.qualified_name(),
            expected: table.columns.len(),
            got: row.len(),
        })
    }
}

/// The bounds of the first array in `value` (nested ones included) whose shape its Avro value does not
/// show.
fn array_bounds(value: &Value) -> Option<String> {
    match value {
        Value::Noted(noted) => match &noted.note {
            Note::ArrayBounds(bounds) => Some(bounds.clone()),
            Note::Reselected => array_bounds(&noted.value),
        },
        Value::Array(items) | Value::Record(items) => items.iter().find_map(array_bounds),
        _ => None,
    }
}

/// A value in Debezium's representation of it.
fn write_debezium(
    debezium: DebeziumType,
    value: &Value,
    out: &mut Vec<u8>,
) -> Result<(), EncodeReason> {
    let unreadable = |what: &str, text: &str| {
        EncodeReason::OutOfRange(format!("`{text}` does not read as {what}"))
    };
    match (debezium, value) {
        (DebeziumType::MilliTimestamp, Value::Timestamp(micros)) => {
            write_long(debezium::milli_timestamp(*micros), out)
        }
        (DebeziumType::MicroTimestamp, Value::Timestamp(micros)) => {
            write_long(debezium::micro_timestamp(*micros), out)
        }
        (DebeziumType::StrippedDecimal, Value::Numeric(numeric)) => {
            let (unscaled, scale) = finite(numeric)?;
            let (unscaled, scale) = debezium::stripped(unscaled, scale);
            write_variable_decimal(&Numeric::Finite { unscaled, scale }, out)?
        }
        (DebeziumType::MilliTime, Value::Time(micros)) => {
            // At most 86,400,000 milliseconds: an int.
            write_int((micros / 1000) as i32, out)
        }
        (DebeziumType::ZonedTimestamp { digits }, Value::TimestampTz(micros)) => {
            write_string(&debezium::zoned_timestamp(*micros, digits), out)
        }
        (DebeziumType::ZonedTime, Value::String(text)) => {
            let utc = debezium::zoned_time(text).ok_or_else(|| unreadable("a timetz", text))?;
            write_string(&utc, out)
        }
        (DebeziumType::MicroDuration, Value::String(text)) => {
            let micros = debezium::micro_duration(text)
                .ok_or_else(|| unreadable("an ISO 8601 interval", text))?;
            write_long(micros, out)
        }
        (DebeziumType::HstoreJson, Value::TextMap(pairs)) => {
            write_string(&debezium::hstore_json(pairs), out)
        }
        (_, found) => {
            return Err(EncodeReason::TypeMismatch {
                expected: "Debezium representation",
                found: value_kind(found),
            })
        }
    }
    Ok(())
}

/// One non-null value, in its column type's Avro encoding.
pub(super) fn write_value(
    column_type: &ColumnType,
    value: &Value,
    out: &mut Vec<u8>,
) -> Result<(), EncodeReason> {
    match (column_type, value) {
        (_, Value::OutOfRange(reason)) => return Err(EncodeReason::OutOfRange(reason.clone())),
        // The encoders tell notes in headers.
        (_, Value::Noted(noted)) => return write_value(column_type, &noted.value, out),
        (ColumnType::Boolean, Value::Bool(v)) => write_boolean(*v, out),
        (ColumnType::Int16, Value::Int16(v)) => write_int(i32::from(*v), out),
        (ColumnType::Int32, Value::Int32(v)) => write_int(*v, out),
        (ColumnType::Int64, Value::Int64(v)) => write_long(*v, out),
        (ColumnType::Float32, Value::Float32(v)) => write_float(*v, out),
        (ColumnType::Float64, Value::Float64(v)) => write_double(*v, out),
        (
            ColumnType::Decimal {
                precision,
                scale: column_scale,
            },
            Value::Numeric(numeric),
        ) => {
            let (unscaled, scale) = finite(numeric)?;
            decimal::write_fixed_scale(unscaled, scale, *precision, *column_scale, out)?;
        }
        (ColumnType::VariableDecimal, Value::Numeric(numeric)) => {
            write_variable_decimal(numeric, out)?
        }
        (
            ColumnType::String
            | ColumnType::Json
            | ColumnType::Text { .. }
            | ColumnType::Enum { .. },
            Value::String(v) | Value::Json(v),
        ) => write_string(v, out),
        (ColumnType::Bytes, Value::Bytes(v)) => write_bytes(v, out),
        (ColumnType::Uuid, Value::Uuid(v)) => {
            if !is_hyphenated_uuid(v) {
                return Err(EncodeReason::MalformedUuid(v.clone()));
            }
            write_string(v, out)
        }
        (ColumnType::Date, Value::Date(v)) => write_int(*v, out),
        (ColumnType::Timestamp, Value::Timestamp(v)) => write_long(*v, out),
        (ColumnType::TimestampTz, Value::TimestampTz(v)) => write_long(*v, out),
        (ColumnType::Time, Value::Time(v)) => write_long(*v, out),
        (ColumnType::Money, Value::Numeric(numeric)) => {
            let (unscaled, scale) = finite(numeric)?;
            decimal::write_fixed_scale(unscaled, scale, MONEY_PRECISION, MONEY_SCALE, out)?;
        }
        (
            ColumnType::Array {
                element,
                dimensions,
            },
            Value::Array(items),
        ) => write_array(element, *dimensions, items, out)?,
        (ColumnType::Record { fields, .. }, Value::Record(values)) => {
            write_record(fields, values, out)?
        }
        (ColumnType::TextMap, Value::TextMap(pairs)) => write_text_map(pairs, out)?,
        (ColumnType::Debezium(debezium), value) => write_debezium(*debezium, value, out)?,
        (expected, found) => {
            return Err(EncodeReason::TypeMismatch {
                expected: type_kind(expected),
                found: value_kind(found),
            })
        }
    }
    Ok(())
}

/// A numeric without a fixed scale: its scale, then its unscaled digits.
fn write_variable_decimal(numeric: &Numeric, out: &mut Vec<u8>) -> Result<(), EncodeReason> {
    let (unscaled, scale) = finite(numeric)?;
    write_int(
        i32::try_from(scale).map_err(|_| EncodeReason::ScaleOutOfRange(scale))?,
        out,
    );
    decimal::write_unscaled(unscaled, out)?;
    Ok(())
}

/// A composite value: each field in turn, nullable, as many as the type has.
fn write_record(
    fields: &[RecordField],
    values: &[Value],
    out: &mut Vec<u8>,
) -> Result<(), EncodeReason> {
    if values.len() != fields.len() {
        return Err(EncodeReason::RecordShape {
            expected: fields.len(),
            got: values.len(),
        });
    }
    for (field, value) in fields.iter().zip(values) {
        write_nullable(&field.column_type, value, out)?;
    }
    Ok(())
}

/// An hstore: a map of strings to nullable strings.
fn write_text_map(
    pairs: &[(String, Option<String>)],
    out: &mut Vec<u8>,
) -> Result<(), EncodeReason> {
    write_blocks(pairs, out, |(key, value), out| {
        write_string(key, out);
        match value {
            Some(text) => {
                write_union_branch(1, out);
                write_string(text, out);
            }
            None => write_union_branch(0, out),
        }
        Ok::<(), EncodeReason>(())
    })
}

/// PostgreSQL money: a 64-bit count of cents (under the C monetary locale sluice reads it with).
const MONEY_PRECISION: u32 = 19;
const MONEY_SCALE: u32 = 2;

/// `["null", T]`.
fn write_nullable(
    column_type: &ColumnType,
    value: &Value,
    out: &mut Vec<u8>,
) -> Result<(), EncodeReason> {
    if *value.plain() == Value::Null {
        write_union_branch(0, out);
        Ok(())
    } else {
        write_union_branch(1, out);
        write_value(column_type, value, out)
    }
}

/// An array of `dimensions` levels: the innermost level's items are `["null", element]`; outer levels hold
/// the next level's arrays.
fn write_array(
    element: &ColumnType,
    dimensions: u32,
    items: &[Value],
    out: &mut Vec<u8>,
) -> Result<(), EncodeReason> {
    write_blocks(items, out, |item, out| match (dimensions, item) {
        (0 | 1, item) => write_nullable(element, item, out),
        (_, Value::Array(inner)) => write_array(element, dimensions - 1, inner, out),
        (_, found) => Err(EncodeReason::TypeMismatch {
            expected: "array",
            found: value_kind(found),
        }),
    })
}

fn finite(numeric: &Numeric) -> Result<(&str, u32), EncodeReason> {
    match numeric {
        Numeric::Finite { unscaled, scale } => Ok((unscaled, *scale)),
        Numeric::NaN => Err(EncodeReason::NonFiniteDecimal("NaN")),
        Numeric::PositiveInfinity => Err(EncodeReason::NonFiniteDecimal("Infinity")),
        Numeric::NegativeInfinity => Err(EncodeReason::NonFiniteDecimal("-Infinity")),
    }
}

/// `8-4-4-4-12` hex digits: what the `uuid` logical type requires of a string.
pub(super) fn is_hyphenated_uuid(text: &str) -> bool {
    text.len() == 36
        && text.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

fn column_error(column: &Column, reason: EncodeReason) -> EncodeError {
    EncodeError::Column {
        column: column.name.clone(),
        column_type: describe(column),
        reason,
    }
}

/// The column's type for messages: the source's name, with precision and scale for decimals.
fn describe(column: &Column) -> String {
    let name = if column.source_type.is_empty() {
        type_kind(&column.column_type)
    } else {
        &column.source_type
    };
    match column.column_type {
        ColumnType::Decimal { precision, scale } => format!("{name}({precision},{scale})"),
        _ => name.to_owned(),
    }
}

fn type_kind(column_type: &ColumnType) -> &'static str {
    match column_type {
        ColumnType::Boolean => "boolean",
        ColumnType::Int16 => "int16",
        ColumnType::Int32 => "int32",
        ColumnType::Int64 => "int64",
        ColumnType::Float32 => "float32",
        ColumnType::Float64 => "float64",
        ColumnType::Decimal { .. } => "decimal",
        ColumnType::VariableDecimal => "variable-scale decimal",
        ColumnType::String => "string",
        ColumnType::Bytes => "bytes",
        ColumnType::Uuid => "uuid",
        ColumnType::Date => "date",
        ColumnType::Timestamp => "timestamp",
        ColumnType::TimestampTz => "timestamp with time zone",
        ColumnType::Json => "json",
        ColumnType::Text { .. } => "text",
        ColumnType::Enum { .. } => "enum",
        ColumnType::Debezium(_) => "Debezium representation",
        ColumnType::Time => "time",
        ColumnType::Money => "money",
        ColumnType::Array { .. } => "array",
        ColumnType::Record { .. } => "composite",
        ColumnType::TextMap => "map",
    }
}

fn value_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::UnchangedToast => "unchanged TOAST value",
        Value::Bool(_) => "boolean",
        Value::Int16(_) => "int16",
        Value::Int32(_) => "int32",
        Value::Int64(_) => "int64",
        Value::Float32(_) => "float32",
        Value::Float64(_) => "float64",
        Value::Numeric(_) => "numeric",
        Value::String(_) => "string",
        Value::Bytes(_) => "bytes",
        Value::Uuid(_) => "uuid",
        Value::Date(_) => "date",
        Value::Timestamp(_) => "timestamp",
        Value::TimestampTz(_) => "timestamp with time zone",
        Value::Json(_) => "json",
        Value::Time(_) => "time",
        Value::Array(_) => "array",
        Value::Record(_) => "composite",
        Value::TextMap(_) => "map",
        Value::OutOfRange(_) => "out-of-range value",
        Value::Noted(noted) => value_kind(&noted.value),
    }
}

#[cfg(test)]
#[path = "encode_tests.rs"]
mod tests;
