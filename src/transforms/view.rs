//! What a filter condition sees of a change: rows, documents and their sources as CEL values.
//!
//! Row values borrow the event's text and bytes instead of copying them; documents (and json/jsonb
//! columns) are parsed and their strings moved into the values. Only the columns (or top-level fields) a
//! condition names are converted when it names them all as `after.<name>`.
//!
//! | Row value | CEL |
//! |---|---|
//! | NULL, unchanged TOAST, out of range | `null` |
//! | boolean | `bool` |
//! | int2, int4, int8 | `int` |
//! | float4, float8, numeric, money | `double` (NaN and ±Infinity as such) |
//! | text, uuid, types carried as text | `string` |
//! | bytea | `bytes` |
//! | date | `timestamp`, midnight UTC |
//! | timestamp, timestamptz | `timestamp` (a timestamp without zone read as UTC) |
//! | time | `duration` since midnight |
//! | array | `list` (nested lists for more dimensions) |
//! | composite | `map` by field name |
//! | hstore | `map` of `string` to `string` or `null` |
//! | json, jsonb | the JSON: objects `map`, arrays `list`, integers `int` (`uint` past its range), other numbers `double`; text that is not JSON stays a `string` |
//!
//! CEL timestamps span 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z: `infinity` is the latter,
//! `-infinity` the former, and any value beyond them is taken as the nearer one.
//!
//! Document values are MongoDB canonical Extended JSON: `$numberInt` and `$numberLong` are `int`,
//! `$numberDouble` `double`, `$numberDecimal` `double` (its text, a `string`, when it is no number), `$oid`
//! `string`, `$date` `timestamp`, `$binary` `bytes`; every other `$` type (`$timestamp`,
//! `$regularExpression`, ...) is the `map` it is written as (`after.ts["$timestamp"].t`), and plain
//! objects and arrays are maps and lists.

use std::collections::HashMap;

use base64::Engine;
use cel::common::types::{
    CelBool, CelBytes, CelDouble, CelDuration, CelInt, CelList, CelMap, CelMapKey, CelNull,
    CelString, CelTimestamp, CelUInt,
};
use cel::common::value::Val;
use chrono::{DateTime, TimeDelta};
use serde_json::Value as Json;
use sluice_core::event::{ChangeEvent, ColumnType, DocumentChange, Numeric, Row, Table, Value};

/// A CEL value that may borrow the event for `'a`.
pub type Cel<'a> = Box<dyn Val + 'a>;

/// Which columns (or top-level fields) of a row to convert: None for every one.
pub type Wanted<'w> = Option<&'w [String]>;

/// CEL's first timestamp, 0001-01-01T00:00:00Z, in microseconds since the epoch.
const FIRST_US: i64 = -62_135_596_800_000_000;
/// CEL's last whole second, 9999-12-31T23:59:59Z, and its last microsecond.
const LAST_SECOND: i64 = 253_402_300_799;
const LAST_US: i64 = LAST_SECOND * 1_000_000 + 999_999;
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// A row (or `null` for none) as a map from column name to value.
pub fn row<'a>(table: &'a Table, row: Option<&'a Row>, wanted: Wanted<'_>) -> Cel<'a> {
    let Some(row) = row else {
        return Box::new(CelNull);
    };
    let entry = |at: usize| {
        let column = &table.columns[at];
        let value = row
            .get(at)
            .map_or_else(null, |v| cel_value(v, &column.column_type));
        (CelMapKey::from(column.name.as_str()), value)
    };
    let map: HashMap<_, _> = match wanted {
        Some(names) => names
            .iter()
            .filter_map(|name| table.columns.iter().position(|c| &c.name == name))
            .map(entry)
            .collect(),
        None => (0..table.columns.len()).map(entry).collect(),
    };
    Box::new(CelMap::from(map))
}

/// A document's Extended JSON (or `null` for none) as CEL values.
pub fn document(text: Option<&str>, wanted: Wanted<'_>) -> Result<Cel<'static>, String> {
    let Some(text) = text else {
        return Ok(null());
    };
    let parsed: Json =
        serde_json::from_str(text).map_err(|e| format!("the document is not JSON: {e}"))?;
    Ok(match (parsed, wanted) {
        (Json::Object(mut fields), Some(names)) => {
            let map: HashMap<_, _> = names
                .iter()
                .filter_map(|name| fields.remove_entry(name))
                .map(|(key, field)| (CelMapKey::from(key), json(field, true)))
                .collect();
            Box::new(CelMap::from(map))
        }
        (parsed, _) => json(parsed, true),
    })
}

/// `source` of a row change, with Debezium's names.
pub fn row_source(change: &ChangeEvent) -> Cel<'_> {
    let source = &change.source;
    map([
        ("connector", text("postgresql")),
        ("db", text(&source.database)),
        ("schema", text(&change.table.schema)),
        ("table", text(&change.table.name)),
        ("lsn", unsigned(source.lsn.0)),
        ("txId", source.txid.map_or_else(null, unsigned)),
        (
            "ts_ms",
            Box::new(CelInt::from(source.commit_time_us / 1000)),
        ),
        ("snapshot", text(source.snapshot.as_str())),
    ])
}

/// `source` of a document change, with Debezium's names.
pub fn document_source(change: &DocumentChange) -> Cel<'_> {
    let source = &change.source;
    let ts_ms = source
        .wall_time_ms
        .unwrap_or(i64::from(source.cluster_time.0) * 1000);
    map([
        ("connector", text("mongodb")),
        ("db", text(&change.database)),
        ("collection", text(&change.collection)),
        ("rs", source.replica_set.as_deref().map_or_else(null, text)),
        ("ts_ms", Box::new(CelInt::from(ts_ms))),
        ("snapshot", text(source.snapshot.as_str())),
    ])
}

fn map<'a, const N: usize>(entries: [(&'a str, Cel<'a>); N]) -> Cel<'a> {
    let entries = entries.into_iter().map(|(k, v)| (CelMapKey::from(k), v));
    Box::new(CelMap::from(entries.collect::<HashMap<_, _>>()))
}

fn text(text: &str) -> Cel<'_> {
    Box::new(CelString::from(text))
}

fn null<'a>() -> Cel<'a> {
    Box::new(CelNull)
}

/// An `int`, or a `uint` past `int`'s range (no LSN or transaction id gets there in practice).
fn unsigned<'a>(value: u64) -> Cel<'a> {
    match i64::try_from(value) {
        Ok(value) => Box::new(CelInt::from(value)),
        Err(_) => Box::new(CelUInt::from(value)),
    }
}

/// One column value, of the column's type (which names a composite's fields).
fn cel_value<'a>(value: &'a Value, column_type: &'a ColumnType) -> Cel<'a> {
    match value {
        Value::Null | Value::UnchangedToast | Value::OutOfRange(_) => null(),
        Value::Noted(noted) => cel_value(&noted.value, column_type),
        Value::Bool(b) => Box::new(CelBool::from(*b)),
        Value::Int16(i) => Box::new(CelInt::from(i64::from(*i))),
        Value::Int32(i) => Box::new(CelInt::from(i64::from(*i))),
        Value::Int64(i) => Box::new(CelInt::from(*i)),
        Value::Float32(f) => Box::new(CelDouble::from(f64::from(*f))),
        Value::Float64(f) => Box::new(CelDouble::from(*f)),
        Value::Numeric(n) => Box::new(CelDouble::from(numeric(n))),
        Value::String(s) | Value::Uuid(s) => Box::new(CelString::from(s.as_str())),
        Value::Bytes(b) => Box::new(CelBytes::from(b.as_slice())),
        Value::Date(days) => Box::new(date(*days)),
        Value::Timestamp(us) | Value::TimestampTz(us) => Box::new(timestamp_us(*us)),
        Value::Time(us) => Box::new(CelDuration::from(TimeDelta::microseconds(*us))),
        Value::Array(items) => {
            let element = match column_type {
                ColumnType::Array { element, .. } => element,
                // A further dimension: the element type was already taken.
                other => other,
            };
            Box::new(CelList::from(
                items
                    .iter()
                    .map(|item| cel_value(item, element))
                    .collect::<Vec<_>>(),
            ))
        }
        Value::Record(values) => record(values, column_type),
        Value::TextMap(pairs) => {
            let map: HashMap<_, _> = pairs
                .iter()
                .map(|(k, v)| {
                    let v: Cel<'a> = match v {
                        Some(v) => Box::new(CelString::from(v.as_str())),
                        None => null(),
                    };
                    (CelMapKey::from(k.as_str()), v)
                })
                .collect();
            Box::new(CelMap::from(map))
        }
        Value::Json(text) => match serde_json::from_str(text) {
            Ok(parsed) => json(parsed, false),
            Err(_) => Box::new(CelString::from(text.as_str())),
        },
    }
}

/// A composite value as a map by field name (a list, should the type not name its fields).
fn record<'a>(values: &'a [Value], column_type: &'a ColumnType) -> Cel<'a> {
    let ColumnType::Record { fields, .. } = column_type else {
        let items = values
            .iter()
            .map(|v| cel_value(v, column_type))
            .collect::<Vec<_>>();
        return Box::new(CelList::from(items));
    };
    let map: HashMap<_, _> = fields
        .iter()
        .zip(values)
        .map(|(field, v)| {
            (
                CelMapKey::from(field.name.as_str()),
                cel_value(v, &field.column_type),
            )
        })
        .collect();
    Box::new(CelMap::from(map))
}

/// A numeric as the nearest double (CEL has no decimal type).
fn numeric(numeric: &Numeric) -> f64 {
    match numeric {
        Numeric::Finite { unscaled, scale: 0 } => unscaled.parse().unwrap_or(f64::NAN),
        // `digits e-scale` parses to the correctly rounded double, which dividing would not.
        Numeric::Finite { unscaled, scale } => {
            format!("{unscaled}e-{scale}").parse().unwrap_or(f64::NAN)
        }
        Numeric::NaN => f64::NAN,
        Numeric::PositiveInfinity => f64::INFINITY,
        Numeric::NegativeInfinity => f64::NEG_INFINITY,
    }
}

fn date(days: i32) -> CelTimestamp {
    match days {
        i32::MAX => timestamp_us(i64::MAX),
        i32::MIN => timestamp_us(i64::MIN),
        days => timestamp_us(i64::from(days).saturating_mul(MICROS_PER_DAY)),
    }
}

/// Microseconds since the epoch as a timestamp, held within CEL's range (the infinities at its ends).
fn timestamp_us(us: i64) -> CelTimestamp {
    let utc = if us > LAST_US {
        DateTime::from_timestamp(LAST_SECOND, 999_999_999)
    } else {
        DateTime::from_timestamp_micros(us.max(FIRST_US))
    };
    // Both ends lie within chrono's range, so there is always a time.
    CelTimestamp::from(utc.unwrap_or_default().fixed_offset())
}

/// Parsed JSON as CEL values, reading MongoDB's Extended JSON types when `extended`.
pub fn json(value: Json, extended: bool) -> Cel<'static> {
    match value {
        Json::Null => null(),
        Json::Bool(b) => Box::new(CelBool::from(b)),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Box::new(CelInt::from(i)),
            (None, Some(u)) => Box::new(CelUInt::from(u)),
            _ => Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN))),
        },
        Json::String(s) => Box::new(CelString::from(s)),
        Json::Array(items) => Box::new(CelList::from(
            items
                .into_iter()
                .map(|item| json(item, extended))
                .collect::<Vec<_>>(),
        )),
        Json::Object(fields) => {
            if let Some(typed) = extended.then(|| extended_value(&fields)).flatten() {
                return typed;
            }
            let map: HashMap<_, _> = fields
                .into_iter()
                .map(|(k, v)| (CelMapKey::from(k), json(v, extended)))
                .collect();
            Box::new(CelMap::from(map))
        }
    }
}

/// The BSON value an Extended JSON object stands for, if it is one of the types read as CEL's own.
fn extended_value(fields: &serde_json::Map<String, Json>) -> Option<Cel<'static>> {
    if fields.len() == 2 {
        // The legacy binary form: {"$binary": "<base64>", "$type": "<hex>"}.
        return match (fields.get("$binary"), fields.contains_key("$type")) {
            (Some(Json::String(text)), true) => binary(text),
            _ => None,
        };
    }
    if fields.len() != 1 {
        return None;
    }
    let (name, inner) = fields.iter().next()?;
    match (name.as_str(), inner) {
        ("$numberInt" | "$numberLong", Json::String(text)) => {
            Some(Box::new(CelInt::from(text.parse::<i64>().ok()?)))
        }
        ("$numberDouble", Json::String(text)) => {
            Some(Box::new(CelDouble::from(text.parse::<f64>().ok()?)))
        }
        ("$numberDecimal", Json::String(text)) => Some(match text.parse::<f64>() {
            Ok(number) => Box::new(CelDouble::from(number)),
            Err(_) => Box::new(CelString::from(text.clone())),
        }),
        ("$oid", Json::String(text)) => Some(Box::new(CelString::from(text.clone()))),
        ("$date", date) => extended_date(date),
        ("$binary", Json::Object(binary_fields)) => binary(binary_fields.get("base64")?.as_str()?),
        _ => None,
    }
}

/// `$date`: canonical `{"$numberLong": "<ms>"}`, or the relaxed ISO-8601 text or plain milliseconds.
fn extended_date(date: &Json) -> Option<Cel<'static>> {
    let ms = match date {
        Json::Object(inner) => inner.get("$numberLong")?.as_str()?.parse::<i64>().ok()?,
        Json::Number(n) => n.as_i64()?,
        Json::String(text) => DateTime::parse_from_rfc3339(text).ok()?.timestamp_millis(),
        _ => return None,
    };
    Some(Box::new(timestamp_us(ms.saturating_mul(1000))))
}

fn binary(base64: &str) -> Option<Cel<'static>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(base64)
        .ok()?;
    Some(Box::new(CelBytes::from(bytes)))
}
