//! PostgreSQL types on the event model: which [`ColumnType`] a column gets, and how a value in PostgreSQL's
//! text output format becomes a [`Value`].
//!
//! The replication session runs with `DateStyle=ISO`, `TimeZone=UTC`, `extra_float_digits=3` and
//! `bytea_output=hex`, so each type has exactly one text form to accept; anything else is an error rather than
//! a guess. `infinity` and `-infinity` dates and timestamps become the type's largest and smallest value, as
//! PostgreSQL stores them. Values PostgreSQL has but Avro cannot carry (timestamps beyond `i64` microseconds
//! from 1970, arrays of another depth than declared) become [`Value::OutOfRange`] with the reason, for the
//! encoder to reject.
//!
//! Numbers are parsed in `types_numeric`, dates, times and timestamps in `types_temporal`; the error they
//! share is in `value_error`, and what the catalog says about a type in `type_model`.

use super::structured::{self, ArrayText, StructureError};
use super::type_model::{PgType, PgTypeKind, TypeMap};
use super::types_numeric::{parse_float, parse_int, parse_money, parse_numeric};
use super::types_temporal::{parse_date, parse_time, parse_timestamp};
use super::value_error::shown;
// Public here before it had a module of its own.
pub use super::value_error::ValueError;
use crate::config::DecimalHandling;
use sluice_core::event::{ColumnType, Note, RecordField, Value};

// Built-in type OIDs (`pg_type.oid`), fixed across PostgreSQL versions.
const BOOL: u32 = 16;
const BYTEA: u32 = 17;
const CHAR: u32 = 18;
const NAME: u32 = 19;
const INT8: u32 = 20;
const INT2: u32 = 21;
const INT4: u32 = 23;
const TEXT: u32 = 25;
const OID: u32 = 26;
const JSON: u32 = 114;
const FLOAT4: u32 = 700;
const FLOAT8: u32 = 701;
const BPCHAR: u32 = 1042;
const VARCHAR: u32 = 1043;
const DATE: u32 = 1082;
const TIMESTAMP: u32 = 1114;
const TIMESTAMPTZ: u32 = 1184;
const NUMERIC: u32 = 1700;
const UUID: u32 = 2950;
const JSONB: u32 = 3802;
const MONEY: u32 = 790;
const TIME: u32 = 1083;

/// A column's type as the event model sees it, and the source's name for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedColumn {
    pub column_type: ColumnType,
    /// `int4`, `numeric`, `public.mood`, …: for documentation and errors.
    pub source_type: String,
    /// Fractional-second digits a time or timestamp type (or array of one) declares.
    pub precision: Option<u8>,
    /// The column is NOT NULL (the catalog says; false until it is asked).
    pub not_null: bool,
}

/// Whether a type maps without asking the catalog (built-in scalars; arrays and everything user-defined
/// need a lookup).
pub fn is_native(type_oid: u32) -> bool {
    native(type_oid, -1, DecimalHandling::Precise).is_some() || known_type_name(type_oid).is_some()
}

/// The column type of a column of type `type_oid` with modifier `type_modifier` (typmod, -1 when none) and
/// `dimensions` declared array dimensions (`attndims`). Types beyond the built-in scalars are looked up in
/// `catalog`; what is not found there is carried as text.
pub fn resolve(
    type_oid: u32,
    type_modifier: i32,
    dimensions: i32,
    catalog: &TypeMap,
    decimal: DecimalHandling,
) -> ResolvedColumn {
    let column_type = mapped(type_oid, type_modifier, dimensions, catalog, decimal, 0);
    ResolvedColumn {
        precision: temporal_precision(&column_type, type_modifier),
        column_type,
        source_type: source_type_name(type_oid, catalog),
        not_null: false,
    }
}

/// A time or timestamp type's typmod is its declared precision (0–6).
fn temporal_precision(column_type: &ColumnType, type_modifier: i32) -> Option<u8> {
    let element = match column_type {
        ColumnType::Array { element, .. } => element,
        other => other,
    };
    let temporal = matches!(
        element,
        ColumnType::Time | ColumnType::Timestamp | ColumnType::TimestampTz
    ) || matches!(element, ColumnType::Text { type_name } if type_name == "timetz");
    if temporal {
        u8::try_from(type_modifier).ok().filter(|p| *p <= 6)
    } else {
        None
    }
}

/// Domains nest in arrays nest in composites …; a schema deeper than this is carried as text.
const MAX_TYPE_DEPTH: usize = 32;

fn mapped(
    type_oid: u32,
    type_modifier: i32,
    dimensions: i32,
    catalog: &TypeMap,
    decimal: DecimalHandling,
    depth: usize,
) -> ColumnType {
    if let Some(native) = native(type_oid, type_modifier, decimal) {
        return native;
    }
    let found = catalog.get(&type_oid);
    let as_text = || ColumnType::Text {
        type_name: source_type_name(type_oid, catalog),
    };
    if depth > MAX_TYPE_DEPTH {
        return as_text();
    }
    let nested = |oid, modifier, dims| mapped(oid, modifier, dims, catalog, decimal, depth + 1);
    match found.map(|t| &t.kind) {
        // A domain is its base type: the column's modifier is -1, the domain's own applies.
        Some(PgTypeKind::Domain {
            base,
            type_modifier: domain_modifier,
            dimensions: domain_dimensions,
        }) => {
            let modifier = if type_modifier >= 0 {
                type_modifier
            } else {
                *domain_modifier
            };
            nested(*base, modifier, dimensions.max(*domain_dimensions))
        }
        // The column's modifier belongs to the elements (`numeric(10,2)[]`).
        Some(PgTypeKind::Array { element, .. }) => ColumnType::Array {
            element: Box::new(nested(*element, type_modifier, 0)),
            dimensions: u32::try_from(dimensions.max(1)).unwrap_or(1),
        },
        Some(PgTypeKind::Composite { fields }) => ColumnType::Record {
            name: source_type_name(type_oid, catalog),
            fields: fields
                .iter()
                .map(|f| RecordField {
                    name: f.name.clone(),
                    column_type: nested(f.type_oid, f.type_modifier, f.dimensions),
                })
                .collect(),
        },
        Some(PgTypeKind::Other) if is_hstore(found) => ColumnType::TextMap,
        Some(PgTypeKind::Enum { labels }) => ColumnType::Enum {
            type_name: source_type_name(type_oid, catalog),
            labels: labels.clone(),
        },
        Some(PgTypeKind::Other) | None => as_text(),
    }
}

/// hstore is an extension type: its OID differs between databases, its name does not.
fn is_hstore(found: Option<&PgType>) -> bool {
    found.is_some_and(|t| t.name == "hstore" || t.name.ends_with(".hstore"))
}

/// The built-in scalar types with a mapping of their own.
fn native(type_oid: u32, type_modifier: i32, decimal: DecimalHandling) -> Option<ColumnType> {
    Some(match type_oid {
        BOOL => ColumnType::Boolean,
        BYTEA => ColumnType::Bytes,
        CHAR | NAME | TEXT | BPCHAR | VARCHAR => ColumnType::String,
        INT8 | OID => ColumnType::Int64,
        INT2 => ColumnType::Int16,
        INT4 => ColumnType::Int32,
        JSON | JSONB => ColumnType::Json,
        FLOAT4 => ColumnType::Float32,
        FLOAT8 => ColumnType::Float64,
        DATE => ColumnType::Date,
        TIME => ColumnType::Time,
        TIMESTAMP => ColumnType::Timestamp,
        TIMESTAMPTZ => ColumnType::TimestampTz,
        UUID => ColumnType::Uuid,
        MONEY => ColumnType::Money,
        NUMERIC => match decimal {
            DecimalHandling::Precise => numeric_type(type_modifier),
            DecimalHandling::String => ColumnType::Text {
                type_name: "numeric".into(),
            },
            DecimalHandling::Double => ColumnType::Float64,
        },
        _ => return None,
    })
}

/// `numeric(p, s)` packs precision and scale into the typmod as `((p << 16) | (s & 0x7ff)) + 4`; the scale
/// is an 11-bit signed field (PostgreSQL 15 allows negative scales and scales above the precision).
fn numeric_type(type_modifier: i32) -> ColumnType {
    if type_modifier < 4 {
        return ColumnType::VariableDecimal;
    }
    let packed = type_modifier - 4;
    let precision = (packed >> 16) & 0xffff;
    let scale = ((packed & 0x7ff) ^ 1024) - 1024;
    // Avro decimals need 1 <= precision and 0 <= scale <= precision; other values carry their own scale.
    match (u32::try_from(precision), u32::try_from(scale)) {
        (Ok(precision), Ok(scale)) if precision >= 1 && scale <= precision => {
            ColumnType::Decimal { precision, scale }
        }
        _ => ColumnType::VariableDecimal,
    }
}

/// The PostgreSQL type name of an OID: built-in, from the catalog, or `oid:<n>` when neither knows it.
/// (user-defined types such as enums and domains).
fn source_type_name(type_oid: u32, catalog: &TypeMap) -> String {
    match (known_type_name(type_oid), catalog.get(&type_oid)) {
        (Some(name), _) => name.to_owned(),
        (None, Some(found)) => found.name.clone(),
        (None, None) => format!("oid:{type_oid}"),
    }
}

/// Names of the built-in types: the mapped ones, and common ones carried as text.
fn known_type_name(type_oid: u32) -> Option<&'static str> {
    let name = match type_oid {
        BOOL => "bool",
        BYTEA => "bytea",
        CHAR => "char",
        NAME => "name",
        INT8 => "int8",
        INT2 => "int2",
        INT4 => "int4",
        TEXT => "text",
        OID => "oid",
        JSON => "json",
        FLOAT4 => "float4",
        FLOAT8 => "float8",
        BPCHAR => "bpchar",
        VARCHAR => "varchar",
        DATE => "date",
        TIMESTAMP => "timestamp",
        TIMESTAMPTZ => "timestamptz",
        NUMERIC => "numeric",
        UUID => "uuid",
        JSONB => "jsonb",
        142 => "xml",
        600 => "point",
        650 => "cidr",
        774 => "macaddr8",
        790 => "money",
        829 => "macaddr",
        869 => "inet",
        1083 => "time",
        1186 => "interval",
        1266 => "timetz",
        1560 => "bit",
        1562 => "varbit",
        3614 => "tsvector",
        3615 => "tsquery",
        3904 => "int4range",
        3906 => "numrange",
        3908 => "tsrange",
        3910 => "tstzrange",
        3912 => "daterange",
        3926 => "int8range",
        _ => return None,
    };
    Some(name)
}

/// Parses one value in PostgreSQL's text output format (DateStyle=ISO, TimeZone=UTC, extra_float_digits=3,
/// bytea_output=hex) into a [`Value`] of the given column type.
pub fn parse_text(column_type: &ColumnType, text: &[u8]) -> Result<Value, ValueError> {
    let type_name = text_type_name(column_type);
    let text = std::str::from_utf8(text).map_err(|_| ValueError::InvalidUtf8 {
        text: shown(&String::from_utf8_lossy(text)),
        type_name,
    })?;
    match column_type {
        ColumnType::Boolean => parse_bool(text).map(Value::Bool),
        ColumnType::Int16 => parse_int(text, type_name).map(Value::Int16),
        ColumnType::Int32 => parse_int(text, type_name).map(Value::Int32),
        ColumnType::Int64 => parse_int(text, type_name).map(Value::Int64),
        ColumnType::Float32 => parse_float(text, type_name).map(Value::Float32),
        ColumnType::Float64 => parse_float(text, type_name).map(Value::Float64),
        ColumnType::Decimal { .. } | ColumnType::VariableDecimal => {
            parse_numeric(text).map(Value::Numeric)
        }
        ColumnType::Bytes => parse_bytea(text).map(Value::Bytes),
        ColumnType::Uuid => parse_uuid(text).map(Value::Uuid),
        ColumnType::Date => parse_date(text),
        ColumnType::Timestamp => parse_timestamp(text, false),
        ColumnType::TimestampTz => parse_timestamp(text, true),
        ColumnType::Time => parse_time(text).map(Value::Time),
        ColumnType::Money => parse_money(text).map(Value::Numeric),
        ColumnType::Json => Ok(Value::Json(text.to_owned())),
        ColumnType::String | ColumnType::Text { .. } | ColumnType::Enum { .. } => {
            Ok(Value::String(text.to_owned()))
        }
        ColumnType::Array {
            element,
            dimensions,
        } => parse_array(text, element, *dimensions),
        ColumnType::Record { fields, .. } => parse_record(text, fields),
        ColumnType::TextMap => structured::split_hstore(text)
            .map(Value::TextMap)
            .map_err(|err| ValueError::malformed(text, "hstore", err)),
        // The encoders' own; a source's text never has it.
        ColumnType::Debezium(_) => Ok(Value::String(text.to_owned())),
    }
}

/// The PostgreSQL name of the type being parsed, for error messages.
fn text_type_name(column_type: &ColumnType) -> &'static str {
    match column_type {
        ColumnType::Boolean => "bool",
        ColumnType::Int16 => "int2",
        ColumnType::Int32 => "int4",
        ColumnType::Int64 => "int8",
        ColumnType::Float32 => "float4",
        ColumnType::Float64 => "float8",
        ColumnType::Decimal { .. } | ColumnType::VariableDecimal => "numeric",
        ColumnType::Bytes => "bytea",
        ColumnType::Uuid => "uuid",
        ColumnType::Date => "date",
        ColumnType::Timestamp => "timestamp",
        ColumnType::TimestampTz => "timestamptz",
        ColumnType::Time => "time",
        ColumnType::Money => "money",
        ColumnType::Json => "json",
        ColumnType::String | ColumnType::Text { .. } => "text",
        ColumnType::Enum { .. } => "enum",
        ColumnType::Array { .. } => "array",
        ColumnType::Record { .. } => "composite value",
        ColumnType::TextMap => "hstore",
        ColumnType::Debezium(_) => "text",
    }
}

/// An array value: its elements parsed as the element type, nested as deep as the column declares.
/// PostgreSQL does not hold values to the declared dimensions: a value of another depth, or whose lower
/// bounds are not 1, is nested as declared (outer dimensions merged, or wrapped in one-element lists) and
/// noted with its bounds, so that nothing of it is lost.
fn parse_array(text: &str, element: &ColumnType, dimensions: u32) -> Result<Value, ValueError> {
    // box is the one built-in type whose array elements are separated by `;` (its own text has commas).
    let delimiter = match element {
        ColumnType::Text { type_name } if type_name == "box" => b';',
        _ => b',',
    };
    let malformed = |err| ValueError::malformed(text, "array", err);
    let split = structured::split_array(text, delimiter).map_err(malformed)?;
    let lengths = split.list.lengths();
    let value = array_value(&split.list, element, &lengths)?
        .ok_or_else(|| malformed(StructureError("sub-arrays of different sizes")))?;
    if let Some(bounds) = split.bounds {
        if !bounds_match(bounds, &lengths) {
            return Err(malformed(StructureError(
                "the dimension prefix does not match the elements",
            )));
        }
    }
    let depth = lengths.len() as u32;
    if depth == 0 || (depth == dimensions && split.bounds.is_none()) {
        return Ok(value);
    }
    let bounds = match split.bounds {
        Some(bounds) => bounds.to_owned(),
        None => lengths.iter().map(|n| format!("[1:{n}]")).collect(),
    };
    let nested = if depth >= dimensions {
        Value::Array(merge_outer(value, depth + 1 - dimensions.max(1)))
    } else {
        (depth..dimensions).fold(value, |inner, _| Value::Array(vec![inner]))
    };
    Ok(Value::noted(nested, Note::ArrayBounds(bounds)))
}

/// Whether `[lo:hi]…` has a group per dimension, each as long as the dimension.
fn bounds_match(bounds: &str, lengths: &[usize]) -> bool {
    let Some(groups) = bounds.strip_prefix('[').and_then(|b| b.strip_suffix(']')) else {
        return false;
    };
    let groups: Vec<&str> = groups.split("][").collect();
    groups.len() == lengths.len()
        && groups.iter().zip(lengths).all(|(group, &length)| {
            let Some((low, high)) = group.split_once(':') else {
                return false;
            };
            match (low.parse::<i64>(), high.parse::<i64>()) {
                (Ok(low), Ok(high)) => high.checked_sub(low) == Some(length as i64 - 1),
                _ => false,
            }
        })
}

/// The array's elements nested as the text nests them, each level `lengths` long; None when a level
/// differs (PostgreSQL's arrays are rectangular).
fn array_value(
    split: &ArrayText,
    element: &ColumnType,
    lengths: &[usize],
) -> Result<Option<Value>, ValueError> {
    match (split, lengths.split_first()) {
        (ArrayText::List(items), Some((&length, inner))) if items.len() == length => {
            let mut values = Vec::with_capacity(items.len());
            for item in items {
                match array_value(item, element, inner)? {
                    Some(value) => values.push(value),
                    None => return Ok(None),
                }
            }
            Ok(Some(Value::Array(values)))
        }
        (ArrayText::List(items), None) if items.is_empty() => Ok(Some(Value::Array(Vec::new()))),
        (ArrayText::Element(None), None) => Ok(Some(Value::Null)),
        (ArrayText::Element(Some(text)), None) => parse_text(element, text.as_bytes()).map(Some),
        _ => Ok(None),
    }
}

/// The items of the outer `levels` levels of a nested array, in order, as one list.
fn merge_outer(value: Value, levels: u32) -> Vec<Value> {
    match value {
        Value::Array(items) if levels > 1 => items
            .into_iter()
            .flat_map(|item| merge_outer(item, levels - 1))
            .collect(),
        Value::Array(items) => items,
        other => vec![other],
    }
}

fn parse_record(text: &str, fields: &[RecordField]) -> Result<Value, ValueError> {
    // A type without attributes prints `()`, which reads like one NULL field.
    if fields.is_empty() && text == "()" {
        return Ok(Value::Record(Vec::new()));
    }
    let split = structured::split_record(text)
        .map_err(|err| ValueError::malformed(text, "composite value", err))?;
    if split.len() != fields.len() {
        return Err(ValueError::malformed(
            text,
            "composite value",
            StructureError("the number of fields differs from the type's"),
        ));
    }
    let values = fields
        .iter()
        .zip(split)
        .map(|(field, value)| match value {
            None => Ok(Value::Null),
            Some(text) => parse_text(&field.column_type, text.as_bytes()),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Value::Record(values))
}

fn parse_bool(text: &str) -> Result<bool, ValueError> {
    match text {
        "t" => Ok(true),
        "f" => Ok(false),
        _ => Err(ValueError::invalid(text, "bool")),
    }
}

/// bytea in hex output format: `\x` and two hex digits per byte.
fn parse_bytea(text: &str) -> Result<Vec<u8>, ValueError> {
    let invalid = || ValueError::invalid(text, "bytea (expected \\x and hex digit pairs)");
    let hex = text.strip_prefix("\\x").ok_or_else(invalid)?.as_bytes();
    if hex.len() % 2 != 0 {
        return Err(invalid());
    }
    hex.chunks_exact(2)
        .map(|pair| Some(hex_digit(pair[0])? << 4 | hex_digit(pair[1])?))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(invalid)
}

fn hex_digit(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// A UUID in the 8-4-4-4-12 form, lower-cased.
fn parse_uuid(text: &str) -> Result<String, ValueError> {
    let well_formed = text.len() == 36
        && text.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    if !well_formed {
        return Err(ValueError::invalid(text, "uuid"));
    }
    Ok(text.to_ascii_lowercase())
}

#[cfg(test)]
#[path = "types_tests.rs"]
mod tests;
