//! PostgreSQL types on the event model: which [`ColumnType`] a column gets, and how a value in PostgreSQL's
//! text output format becomes a [`Value`].
//!
//! The replication session runs with `DateStyle=ISO`, `TimeZone=UTC`, `extra_float_digits=3` and
//! `bytea_output=hex`, so each type has exactly one text form to accept; anything else is an error rather than
//! a guess. `infinity` and `-infinity` dates and timestamps become the type's largest and smallest value, as
//! PostgreSQL stores them. Values PostgreSQL has but Avro cannot carry (timestamps beyond `i64` microseconds
//! from 1970, arrays of another depth than declared) become [`Value::OutOfRange`] with the reason, for the
//! encoder to reject.

use super::structured::{self, ArrayText, StructureError};
use super::type_catalog::{PgType, PgTypeKind, TypeMap};
use crate::config::DecimalHandling;
use sluice_core::event::{ColumnType, Numeric, RecordField, Value};

/// Inputs longer than this are shortened in error messages.
const MAX_SHOWN_CHARS: usize = 64;

const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;

/// A text value that does not parse as its column's type.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("`{text}` is not a valid {type_name}")]
    Invalid {
        text: String,
        type_name: &'static str,
    },
    #[error("`{text}` is out of range for {type_name}")]
    Overflow {
        text: String,
        type_name: &'static str,
    },
    #[error("`{text}` is not a valid {type_name}: {reason}")]
    Malformed {
        text: String,
        type_name: &'static str,
        reason: StructureError,
    },
    #[error("{type_name} value `{text}` is not valid UTF-8")]
    InvalidUtf8 {
        text: String,
        type_name: &'static str,
    },
}

impl ValueError {
    fn invalid(text: &str, type_name: &'static str) -> ValueError {
        ValueError::Invalid {
            text: shown(text),
            type_name,
        }
    }

    fn malformed(text: &str, type_name: &'static str, reason: StructureError) -> ValueError {
        ValueError::Malformed {
            text: shown(text),
            type_name,
            reason,
        }
    }

    fn overflow(text: &str, type_name: &'static str) -> ValueError {
        ValueError::Overflow {
            text: shown(text),
            type_name,
        }
    }
}

/// The input as shown in an error: at most [`MAX_SHOWN_CHARS`] characters.
fn shown(text: &str) -> String {
    match text.char_indices().nth(MAX_SHOWN_CHARS) {
        Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], text.len()),
        None => text.to_owned(),
    }
}

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
    ResolvedColumn {
        column_type: mapped(type_oid, type_modifier, dimensions, catalog, decimal, 0),
        source_type: source_type_name(type_oid, catalog),
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
        Some(PgTypeKind::Enum | PgTypeKind::Other) | None => as_text(),
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
        ColumnType::String | ColumnType::Text { .. } => Ok(Value::String(text.to_owned())),
        ColumnType::Array {
            element,
            dimensions,
        } => parse_array(text, element, *dimensions),
        ColumnType::Record { fields, .. } => parse_record(text, fields),
        ColumnType::TextMap => structured::split_hstore(text)
            .map(Value::TextMap)
            .map_err(|err| ValueError::malformed(text, "hstore", err)),
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
        ColumnType::Array { .. } => "array",
        ColumnType::Record { .. } => "composite value",
        ColumnType::TextMap => "hstore",
    }
}

/// `HH:MM:SS[.ffffff]`; `24:00:00` is the end of the day.
fn parse_time(text: &str) -> Result<i64, ValueError> {
    if text == "24:00:00" {
        return Ok(MICROS_PER_DAY);
    }
    let mut cursor = Cursor::new(text);
    let micros = cursor
        .time()
        .ok_or_else(|| ValueError::invalid(text, "time"))?;
    cursor
        .end()
        .ok_or_else(|| ValueError::invalid(text, "time"))?;
    Ok(micros)
}

/// money under `lc_monetary = C`: `$1,234.50`, `-$0.07`. Always two decimals.
fn parse_money(text: &str) -> Result<Numeric, ValueError> {
    let invalid = || ValueError::invalid(text, "money");
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let amount = unsigned.strip_prefix('$').ok_or_else(invalid)?;
    let (whole, cents) = amount.split_once('.').ok_or_else(invalid)?;
    let grouped_ok = whole.split(',').enumerate().all(|(i, group)| {
        !group.is_empty()
            && group.bytes().all(|b| b.is_ascii_digit())
            && (i == 0 && group.len() <= 3 || group.len() == 3)
    });
    if !grouped_ok || cents.len() != 2 || !cents.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let sign = if negative { "-" } else { "" };
    parse_numeric(&format!("{sign}{}.{cents}", whole.replace(',', "")))
}

/// An array value: its elements parsed as the element type, nested as deep as the column declares. A value
/// of another depth cannot take the column's Avro type and is carried as out of range.
fn parse_array(text: &str, element: &ColumnType, dimensions: u32) -> Result<Value, ValueError> {
    // box is the one built-in type whose array elements are separated by `;` (its own text has commas).
    let delimiter = match element {
        ColumnType::Text { type_name } if type_name == "box" => b';',
        _ => b',',
    };
    let split = structured::split_array(text, delimiter)
        .map_err(|err| ValueError::malformed(text, "array", err))?;
    match array_value(&split, element, dimensions)? {
        Some(value) => Ok(value),
        None => Ok(Value::OutOfRange(format!(
            "array `{}` does not have the {dimensions} dimension(s) the column declares \
             (declare the column with as many [] as its values have dimensions)",
            shown(text)
        ))),
    }
}

/// None when the nesting does not match `dimensions`.
fn array_value(
    split: &ArrayText,
    element: &ColumnType,
    dimensions: u32,
) -> Result<Option<Value>, ValueError> {
    match split {
        ArrayText::List(items) if dimensions >= 1 => {
            let mut values = Vec::with_capacity(items.len());
            for item in items {
                match array_value(item, element, dimensions - 1)? {
                    Some(value) => values.push(value),
                    None => return Ok(None),
                }
            }
            Ok(Some(Value::Array(values)))
        }
        ArrayText::Element(None) if dimensions == 0 => Ok(Some(Value::Null)),
        ArrayText::Element(Some(text)) if dimensions == 0 => {
            parse_text(element, text.as_bytes()).map(Some)
        }
        _ => Ok(None),
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

/// An optional `-` and decimal digits: PostgreSQL's integer output (no `+`, no spaces).
fn parse_int<T: std::str::FromStr>(text: &str, type_name: &'static str) -> Result<T, ValueError> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ValueError::invalid(text, type_name));
    }
    // Well-formed digits that do not parse can only be out of range.
    text.parse()
        .map_err(|_| ValueError::overflow(text, type_name))
}

/// Floats: PostgreSQL spells the specials `NaN`, `Infinity` and `-Infinity`; everything else is decimal
/// or exponent notation. Rust's parser would also take `inf`, `nan` or `+1`, which PostgreSQL never
/// prints, so only the exact spellings and plain numbers get through.
fn parse_float<T: std::str::FromStr + Float>(
    text: &str,
    type_name: &'static str,
) -> Result<T, ValueError> {
    match text {
        "NaN" => return Ok(T::NAN),
        "Infinity" => return Ok(T::INFINITY),
        "-Infinity" => return Ok(T::NEG_INFINITY),
        _ => {}
    }
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let plain = unsigned.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && unsigned
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
    if !plain {
        return Err(ValueError::invalid(text, type_name));
    }
    let value: T = text
        .parse()
        .map_err(|_| ValueError::invalid(text, type_name))?;
    // A finite spelling that rounds to infinity is beyond the type.
    if value.is_infinite() {
        return Err(ValueError::overflow(text, type_name));
    }
    Ok(value)
}

/// What `parse_float` needs of `f32` and `f64`.
trait Float: Copy {
    const NAN: Self;
    const INFINITY: Self;
    const NEG_INFINITY: Self;
    fn is_infinite(self) -> bool;
}

impl Float for f32 {
    const NAN: f32 = f32::NAN;
    const INFINITY: f32 = f32::INFINITY;
    const NEG_INFINITY: f32 = f32::NEG_INFINITY;
    fn is_infinite(self) -> bool {
        f32::is_infinite(self)
    }
}

impl Float for f64 {
    const NAN: f64 = f64::NAN;
    const INFINITY: f64 = f64::INFINITY;
    const NEG_INFINITY: f64 = f64::NEG_INFINITY;
    fn is_infinite(self) -> bool {
        f64::is_infinite(self)
    }
}

/// `-123.4500` becomes unscaled `-1234500` at scale 4: every digit kept (the scale is part of the value),
/// leading zeros dropped so that the unscaled text is a canonical integer.
fn parse_numeric(text: &str) -> Result<Numeric, ValueError> {
    match text {
        "NaN" => return Ok(Numeric::NaN),
        "Infinity" => return Ok(Numeric::PositiveInfinity),
        "-Infinity" => return Ok(Numeric::NegativeInfinity),
        _ => {}
    }
    let invalid = || ValueError::invalid(text, "numeric");
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (integer, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if integer.len() + fraction.len() == 0 || !all_digits(integer) || !all_digits(fraction) {
        return Err(invalid());
    }
    let scale = u32::try_from(fraction.len()).map_err(|_| ValueError::overflow(text, "numeric"))?;
    // The digits without the point or leading zeros, built in one allocation: every numeric of every
    // row passes here.
    let mut unscaled = String::with_capacity(text.len());
    if negative {
        unscaled.push('-');
    }
    unscaled.extend(
        integer
            .chars()
            .chain(fraction.chars())
            .skip_while(|&c| c == '0'),
    );
    if unscaled.len() == usize::from(negative) {
        // Zero, whatever its sign.
        unscaled = "0".to_owned();
    }
    Ok(Numeric::Finite { unscaled, scale })
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

/// `YYYY-MM-DD` (the year may be longer than four digits), optionally followed by ` BC`.
fn parse_date(text: &str) -> Result<Value, ValueError> {
    // PostgreSQL stores its infinities as the extreme values too.
    match text {
        "infinity" => return Ok(Value::Date(i32::MAX)),
        "-infinity" => return Ok(Value::Date(i32::MIN)),
        _ => {}
    }
    let invalid = || ValueError::invalid(text, "date");
    let (body, bc) = strip_bc(text);
    let mut cursor = Cursor::new(body);
    let days = cursor.date().ok_or_else(invalid)?;
    cursor.end().ok_or_else(invalid)?;
    let days = civil_days(days, bc).ok_or_else(invalid)?;
    Ok(match i32::try_from(days) {
        Ok(days) => Value::Date(days),
        Err(_) => Value::OutOfRange(format!(
            "date `{}` is outside the Avro date range",
            shown(text)
        )),
    })
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]`, then for timestamptz a zone offset `±HH[:MM[:SS]]`, then optionally ` BC`.
fn parse_timestamp(text: &str, with_zone: bool) -> Result<Value, ValueError> {
    let type_name = if with_zone {
        "timestamptz"
    } else {
        "timestamp"
    };
    let infinite = match text {
        "infinity" => Some(i64::MAX),
        "-infinity" => Some(i64::MIN),
        _ => None,
    };
    if let Some(micros) = infinite {
        return Ok(if with_zone {
            Value::TimestampTz(micros)
        } else {
            Value::Timestamp(micros)
        });
    }
    let invalid = || ValueError::invalid(text, type_name);
    let (body, bc) = strip_bc(text);
    let mut cursor = Cursor::new(body);
    let date = cursor.date().ok_or_else(invalid)?;
    cursor.expect(b' ').ok_or_else(invalid)?;
    let time_of_day = cursor.time().ok_or_else(invalid)?;
    let offset = if with_zone {
        cursor.zone_offset().ok_or_else(invalid)?
    } else {
        0
    };
    cursor.end().ok_or_else(invalid)?;
    let days = civil_days(date, bc).ok_or_else(invalid)?;
    // Days from the far future or past do not fit i64 microseconds (PostgreSQL counts from 2000, not 1970).
    let micros = days
        .checked_mul(MICROS_PER_DAY)
        .and_then(|day_start| day_start.checked_add(time_of_day))
        .and_then(|local| local.checked_sub(offset.checked_mul(MICROS_PER_SECOND)?));
    Ok(match micros {
        Some(micros) if with_zone => Value::TimestampTz(micros),
        Some(micros) => Value::Timestamp(micros),
        None => Value::OutOfRange(format!(
            "{type_name} `{}` is outside the Avro timestamp range",
            shown(text)
        )),
    })
}

/// Splits off PostgreSQL's ` BC` era suffix.
fn strip_bc(text: &str) -> (&str, bool) {
    match text.strip_suffix(" BC") {
        Some(body) => (body, true),
        None => (text, false),
    }
}

/// A calendar date as written: year (without era), month, day.
#[derive(Clone, Copy, Debug)]
struct CivilDate {
    year: i64,
    month: u32,
    day: u32,
}

/// Days since 1970-01-01 for a validated date; `bc` maps year Y BC to astronomical year 1 - Y.
fn civil_days(date: CivilDate, bc: bool) -> Option<i64> {
    if bc && date.year == 0 {
        return None;
    }
    let year = if bc { 1 - date.year } else { date.year };
    (date.month >= 1
        && date.month <= 12
        && date.day >= 1
        && date.day <= days_in_month(year, date.month))
    .then(|| days_from_civil(year, date.month, date.day))
}

fn is_leap(year: i64) -> bool {
    year.rem_euclid(4) == 0 && (year.rem_euclid(100) != 0 || year.rem_euclid(400) == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Howard Hinnant's days-from-civil for the proleptic Gregorian calendar (astronomical years: 0 = 1 BC).
/// Callers bound the year to nine digits, so nothing here overflows.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    // Count years from March, so the leap day ends the year.
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let shifted_month = i64::from(if month > 2 { month - 3 } else { month + 9 });
    let day_of_year = (153 * shifted_month + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// A forward-only reader over ASCII date and time text; `None` means the text does not have the form.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Cursor<'a> {
        Cursor {
            rest: text.as_bytes(),
        }
    }

    /// Between `min` and `max` decimal digits (as many as there are), with their count.
    fn digits(&mut self, min: usize, max: usize) -> Option<(i64, usize)> {
        let count = self
            .rest
            .iter()
            .take(max + 1)
            .take_while(|b| b.is_ascii_digit())
            .count();
        if count < min || count > max {
            return None;
        }
        let (digits, rest) = self.rest.split_at(count);
        self.rest = rest;
        let value = digits
            .iter()
            .fold(0_i64, |acc, d| acc * 10 + i64::from(d - b'0'));
        Some((value, count))
    }

    /// Exactly `n` digits.
    fn fixed(&mut self, n: usize) -> Option<i64> {
        self.digits(n, n).map(|(value, _)| value)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        let (&first, rest) = self.rest.split_first()?;
        (first == byte).then(|| self.rest = rest)
    }

    fn eat(&mut self, byte: u8) -> bool {
        self.expect(byte).is_some()
    }

    fn end(&self) -> Option<()> {
        self.rest.is_empty().then_some(())
    }

    /// `YYYY-MM-DD`; years of 4 to 9 digits (PostgreSQL pads to four; nine keeps the arithmetic in range).
    fn date(&mut self) -> Option<CivilDate> {
        let (year, _) = self.digits(4, 9)?;
        self.expect(b'-')?;
        let month = u32::try_from(self.fixed(2)?).ok()?;
        self.expect(b'-')?;
        let day = u32::try_from(self.fixed(2)?).ok()?;
        Some(CivilDate { year, month, day })
    }

    /// `HH:MM:SS[.f{1,6}]` as microseconds since midnight.
    fn time(&mut self) -> Option<i64> {
        let hour = self.fixed(2).filter(|h| *h < 24)?;
        self.expect(b':')?;
        let minute = self.fixed(2).filter(|m| *m < 60)?;
        self.expect(b':')?;
        let second = self.fixed(2).filter(|s| *s < 60)?;
        let fraction = if self.eat(b'.') { self.fraction()? } else { 0 };
        Some((hour * 3600 + minute * 60 + second) * MICROS_PER_SECOND + fraction)
    }

    /// 1 to 6 fraction digits as microseconds.
    fn fraction(&mut self) -> Option<i64> {
        let (value, count) = self.digits(1, 6)?;
        let scale = 10_i64.pow(u32::try_from(6 - count).ok()?);
        Some(value * scale)
    }

    /// `±HH`, `±HH:MM` or `±HH:MM:SS` as seconds east of UTC.
    fn zone_offset(&mut self) -> Option<i64> {
        let sign = if self.eat(b'+') {
            1
        } else {
            self.expect(b'-')?;
            -1
        };
        let hours = self.fixed(2)?;
        let (minutes, seconds) = if self.eat(b':') {
            let minutes = self.fixed(2).filter(|m| *m < 60)?;
            // Seconds only ever follow minutes.
            let seconds = if self.eat(b':') {
                self.fixed(2).filter(|s| *s < 60)?
            } else {
                0
            };
            (minutes, seconds)
        } else {
            (0, 0)
        };
        Some(sign * (hours * 3600 + minutes * 60 + seconds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::type_catalog::FieldType;

    /// [`resolve`] for a built-in type, without a catalog.
    fn column_type(type_oid: u32, type_modifier: i32) -> ColumnType {
        resolve(
            type_oid,
            type_modifier,
            0,
            &TypeMap::new(),
            DecimalHandling::Precise,
        )
        .column_type
    }

    fn parse(column_type: &ColumnType, text: &str) -> Value {
        match parse_text(column_type, text.as_bytes()) {
            Ok(value) => value,
            Err(err) => panic!("`{text}` did not parse: {err}"),
        }
    }

    fn error(column_type: &ColumnType, text: &str) -> String {
        match parse_text(column_type, text.as_bytes()) {
            Ok(value) => panic!("`{text}` parsed as {value:?}"),
            Err(err) => err.to_string(),
        }
    }

    fn finite(unscaled: &str, scale: u32) -> Value {
        Value::Numeric(Numeric::Finite {
            unscaled: unscaled.into(),
            scale,
        })
    }

    #[test]
    fn column_types_by_oid() {
        let cases = [
            (16, ColumnType::Boolean),
            (17, ColumnType::Bytes),
            (18, ColumnType::String),
            (19, ColumnType::String),
            (25, ColumnType::String),
            (1042, ColumnType::String),
            (1043, ColumnType::String),
            (20, ColumnType::Int64),
            (21, ColumnType::Int16),
            (23, ColumnType::Int32),
            (26, ColumnType::Int64),
            (114, ColumnType::Json),
            (3802, ColumnType::Json),
            (700, ColumnType::Float32),
            (701, ColumnType::Float64),
            (1082, ColumnType::Date),
            (1114, ColumnType::Timestamp),
            (1184, ColumnType::TimestampTz),
            (2950, ColumnType::Uuid),
            (1700, ColumnType::VariableDecimal),
        ];
        for (oid, expected) in cases {
            assert_eq!(column_type(oid, -1), expected, "oid {oid}");
        }
    }

    #[test]
    fn other_types_are_text_with_their_name() {
        assert_eq!(
            column_type(1186, -1),
            ColumnType::Text {
                type_name: "interval".into()
            }
        );
        assert_eq!(
            column_type(16_385, -1),
            ColumnType::Text {
                type_name: "oid:16385".into()
            }
        );
        let none = TypeMap::new();
        let name = |oid| source_type_name(oid, &none);
        assert_eq!(name(23), "int4");
        assert_eq!(name(1184), "timestamptz");
        assert_eq!(name(99_999), "oid:99999");
        assert_eq!(
            parse(&column_type(1186, -1), "1 day 02:03:04"),
            Value::String("1 day 02:03:04".into())
        );
    }

    fn catalog(entries: &[(u32, &str, PgTypeKind)]) -> TypeMap {
        entries
            .iter()
            .map(|(oid, name, kind)| {
                let found = PgType {
                    name: (*name).into(),
                    kind: kind.clone(),
                };
                (*oid, found)
            })
            .collect()
    }

    fn resolved(oid: u32, typmod: i32, dims: i32, catalog: &TypeMap) -> ColumnType {
        resolve(oid, typmod, dims, catalog, DecimalHandling::Precise).column_type
    }

    #[test]
    fn catalog_types_resolve_to_their_structure() {
        let numeric_10_2 = ((10 << 16) | 2) + 4;
        let types = catalog(&[
            (1007, "_int4", PgTypeKind::Array { element: 23 }),
            (1231, "_numeric", PgTypeKind::Array { element: 1700 }),
            (
                16_400,
                "public.price",
                PgTypeKind::Domain {
                    base: 1700,
                    type_modifier: numeric_10_2,
                    dimensions: 0,
                },
            ),
            (16_401, "public.mood", PgTypeKind::Enum),
            (
                16_402,
                "public.address",
                PgTypeKind::Composite {
                    fields: vec![
                        FieldType {
                            name: "street".into(),
                            type_oid: 25,
                            type_modifier: -1,
                            dimensions: 0,
                        },
                        FieldType {
                            name: "zips".into(),
                            type_oid: 1007,
                            type_modifier: -1,
                            dimensions: 1,
                        },
                    ],
                },
            ),
            (16_403, "public.hstore", PgTypeKind::Other),
            (3904, "int4range", PgTypeKind::Other),
        ]);
        let int4 = Box::new(ColumnType::Int32);
        assert_eq!(
            resolved(1007, -1, 0, &types),
            ColumnType::Array {
                element: int4.clone(),
                dimensions: 1
            }
        );
        assert_eq!(
            resolved(1007, -1, 2, &types),
            ColumnType::Array {
                element: int4.clone(),
                dimensions: 2
            }
        );
        // The column's modifier belongs to the elements.
        assert_eq!(
            resolved(1231, numeric_10_2, 1, &types),
            ColumnType::Array {
                element: Box::new(ColumnType::Decimal {
                    precision: 10,
                    scale: 2
                }),
                dimensions: 1
            }
        );
        assert_eq!(
            resolved(16_400, -1, 0, &types),
            ColumnType::Decimal {
                precision: 10,
                scale: 2
            }
        );
        assert_eq!(
            resolved(16_401, -1, 0, &types),
            ColumnType::Text {
                type_name: "public.mood".into()
            }
        );
        assert_eq!(
            resolved(16_402, -1, 0, &types),
            ColumnType::Record {
                name: "public.address".into(),
                fields: vec![
                    RecordField {
                        name: "street".into(),
                        column_type: ColumnType::String
                    },
                    RecordField {
                        name: "zips".into(),
                        column_type: ColumnType::Array {
                            element: int4,
                            dimensions: 1
                        }
                    },
                ]
            }
        );
        assert_eq!(resolved(16_403, -1, 0, &types), ColumnType::TextMap);
        assert_eq!(
            resolve(3904, -1, 0, &types, DecimalHandling::Precise).source_type,
            "int4range"
        );
        // Not in the catalog (dropped meanwhile): text.
        assert_eq!(
            resolved(16_999, -1, 0, &types),
            ColumnType::Text {
                type_name: "oid:16999".into()
            }
        );
    }

    #[test]
    fn decimal_handling_picks_the_numeric_form() {
        let none = TypeMap::new();
        let numeric = |mode| resolve(1700, -1, 0, &none, mode).column_type;
        assert_eq!(
            numeric(DecimalHandling::Precise),
            ColumnType::VariableDecimal
        );
        assert_eq!(numeric(DecimalHandling::Double), ColumnType::Float64);
        assert_eq!(
            numeric(DecimalHandling::String),
            ColumnType::Text {
                type_name: "numeric".into()
            }
        );
        assert_eq!(
            parse(&numeric(DecimalHandling::String), "NaN"),
            Value::String("NaN".into())
        );
        assert!(
            matches!(parse(&numeric(DecimalHandling::Double), "NaN"), Value::Float64(v) if v.is_nan())
        );
    }

    #[test]
    fn arrays_parse_element_by_element() {
        let int_array = |dimensions| ColumnType::Array {
            element: Box::new(ColumnType::Int32),
            dimensions,
        };
        assert_eq!(
            parse(&int_array(1), "{1,NULL,-3}"),
            Value::Array(vec![Value::Int32(1), Value::Null, Value::Int32(-3)])
        );
        assert_eq!(parse(&int_array(2), "{}"), Value::Array(vec![]));
        assert_eq!(
            parse(&int_array(2), "{{1,2},{3,NULL}}"),
            Value::Array(vec![
                Value::Array(vec![Value::Int32(1), Value::Int32(2)]),
                Value::Array(vec![Value::Int32(3), Value::Null]),
            ])
        );
        // A value deeper or shallower than declared has no place in the Avro type.
        for (dims, text) in [(1, "{{1,2},{3,4}}"), (2, "{1,2}")] {
            let Value::OutOfRange(reason) = parse(&int_array(dims), text) else {
                panic!("{text} in a {dims}-dimensional column parsed");
            };
            assert!(
                reason.contains(&format!("the {dims} dimension(s)")),
                "{reason}"
            );
        }
        assert!(error(&int_array(1), "{1,x}").contains("`x` is not a valid int4"));
        assert!(error(&int_array(1), "{1,2").contains("is not a valid array"));
        let boxes = ColumnType::Array {
            element: Box::new(ColumnType::Text {
                type_name: "box".into(),
            }),
            dimensions: 1,
        };
        assert_eq!(
            parse(&boxes, "{(3,4),(1,2);(7,8),(5,6)}"),
            Value::Array(vec![
                Value::String("(3,4),(1,2)".into()),
                Value::String("(7,8),(5,6)".into()),
            ])
        );
    }

    #[test]
    fn composites_and_hstore_parse() {
        let address = ColumnType::Record {
            name: "public.address".into(),
            fields: vec![
                RecordField {
                    name: "street".into(),
                    column_type: ColumnType::String,
                },
                RecordField {
                    name: "number".into(),
                    column_type: ColumnType::Int32,
                },
            ],
        };
        assert_eq!(
            parse(&address, r#"("Main ""St""",)"#),
            Value::Record(vec![Value::String(r#"Main "St""#.into()), Value::Null])
        );
        assert!(error(&address, "(a)").contains("the number of fields differs"));
        let empty = ColumnType::Record {
            name: "public.nothing".into(),
            fields: vec![],
        };
        assert_eq!(parse(&empty, "()"), Value::Record(vec![]));
        assert!(error(&address, "(a,b)").contains("`b` is not a valid int4"));
        assert_eq!(
            parse(&ColumnType::TextMap, r#""k"=>"v", "n"=>NULL"#),
            Value::TextMap(vec![("k".into(), Some("v".into())), ("n".into(), None)])
        );
    }

    #[test]
    fn times_and_money() {
        assert_eq!(parse(&ColumnType::Time, "00:00:00"), Value::Time(0));
        assert_eq!(
            parse(&ColumnType::Time, "12:34:56.789"),
            Value::Time(45_296_789_000)
        );
        assert_eq!(
            parse(&ColumnType::Time, "24:00:00"),
            Value::Time(86_400_000_000)
        );
        for bad in ["24:00:01", "12:34", "12:34:56+02"] {
            assert!(
                error(&ColumnType::Time, bad).contains("not a valid time"),
                "{bad}"
            );
        }
        let money = |unscaled: &str| {
            Value::Numeric(Numeric::Finite {
                unscaled: unscaled.into(),
                scale: 2,
            })
        };
        assert_eq!(parse(&ColumnType::Money, "$1,234.50"), money("123450"));
        assert_eq!(parse(&ColumnType::Money, "-$0.07"), money("-7"));
        assert_eq!(
            parse(&ColumnType::Money, "-$92,233,720,368,547,758.08"),
            money("-9223372036854775808")
        );
        for bad in [
            "1.00",
            "$1.0",
            "$1,23.00",
            "$,123.00",
            "$1234,567.00",
            "€1.00",
        ] {
            assert!(
                error(&ColumnType::Money, bad).contains("not a valid money"),
                "{bad}"
            );
        }
    }

    #[test]
    fn numeric_typmods() {
        let typmod = |p: i32, s: i32| ((p << 16) | (s & 0x7ff)) + 4;
        assert_eq!(typmod(12, 2), 786_438);
        assert_eq!(
            column_type(1700, 786_438),
            ColumnType::Decimal {
                precision: 12,
                scale: 2
            }
        );
        assert_eq!(
            column_type(1700, typmod(10, 0)),
            ColumnType::Decimal {
                precision: 10,
                scale: 0
            }
        );
        assert_eq!(
            column_type(1700, typmod(1000, 1000)),
            ColumnType::Decimal {
                precision: 1000,
                scale: 1000
            }
        );
        assert_eq!(column_type(1700, -1), ColumnType::VariableDecimal);
        assert_eq!(column_type(1700, 3), ColumnType::VariableDecimal);
        assert_eq!(column_type(1700, i32::MIN), ColumnType::VariableDecimal);
        // PostgreSQL 15: numeric(2, -3) and numeric(3, 5) have no fixed Avro decimal form.
        assert_eq!(
            column_type(1700, typmod(2, -3)),
            ColumnType::VariableDecimal
        );
        assert_eq!(column_type(1700, typmod(3, 5)), ColumnType::VariableDecimal);
        assert_eq!(column_type(1700, i32::MAX), ColumnType::VariableDecimal);
    }

    #[test]
    fn booleans() {
        assert_eq!(parse(&ColumnType::Boolean, "t"), Value::Bool(true));
        assert_eq!(parse(&ColumnType::Boolean, "f"), Value::Bool(false));
        assert_eq!(
            error(&ColumnType::Boolean, "true"),
            "`true` is not a valid bool"
        );
    }

    #[test]
    fn integers_at_their_limits() {
        assert_eq!(parse(&ColumnType::Int16, "-32768"), Value::Int16(i16::MIN));
        assert_eq!(parse(&ColumnType::Int16, "32767"), Value::Int16(i16::MAX));
        assert_eq!(
            parse(&ColumnType::Int32, "-2147483648"),
            Value::Int32(i32::MIN)
        );
        assert_eq!(
            parse(&ColumnType::Int32, "2147483647"),
            Value::Int32(i32::MAX)
        );
        assert_eq!(
            parse(&ColumnType::Int64, "-9223372036854775808"),
            Value::Int64(i64::MIN)
        );
        assert_eq!(
            parse(&ColumnType::Int64, "9223372036854775807"),
            Value::Int64(i64::MAX)
        );
        assert_eq!(
            parse(&column_type(26, -1), "4294967295"),
            Value::Int64(4_294_967_295)
        );
        assert_eq!(parse(&ColumnType::Int32, "0"), Value::Int32(0));
    }

    #[test]
    fn integer_errors() {
        assert_eq!(
            error(&ColumnType::Int16, "32768"),
            "`32768` is out of range for int2"
        );
        assert_eq!(
            error(&ColumnType::Int32, "2147483648"),
            "`2147483648` is out of range for int4"
        );
        assert_eq!(
            error(&ColumnType::Int64, "-9223372036854775809"),
            "`-9223372036854775809` is out of range for int8"
        );
        assert_eq!(
            error(&ColumnType::Int32, "12x"),
            "`12x` is not a valid int4"
        );
        for bad in ["", "-", "+1", " 1", "1.0", "1e3"] {
            assert!(
                error(&ColumnType::Int32, bad).contains("is not a valid int4"),
                "{bad}"
            );
        }
    }

    #[test]
    fn floats_and_their_specials() {
        assert_eq!(parse(&ColumnType::Float64, "1.5"), Value::Float64(1.5));
        assert_eq!(parse(&ColumnType::Float64, "-0"), Value::Float64(-0.0));
        assert_eq!(parse(&ColumnType::Float64, "1e+300"), Value::Float64(1e300));
        assert_eq!(
            parse(&ColumnType::Float64, "1.2345678901234567e-05"),
            Value::Float64(1.234_567_890_123_456_7e-5)
        );
        assert_eq!(
            parse(&ColumnType::Float64, "Infinity"),
            Value::Float64(f64::INFINITY)
        );
        assert_eq!(
            parse(&ColumnType::Float64, "-Infinity"),
            Value::Float64(f64::NEG_INFINITY)
        );
        assert!(matches!(parse(&ColumnType::Float64, "NaN"), Value::Float64(v) if v.is_nan()));
        assert_eq!(
            parse(&ColumnType::Float32, "3.4028235e+38"),
            Value::Float32(f32::MAX)
        );
        assert_eq!(parse(&ColumnType::Float32, "1.1"), Value::Float32(1.1));
        assert_eq!(
            parse(&ColumnType::Float32, "-Infinity"),
            Value::Float32(f32::NEG_INFINITY)
        );
        assert!(matches!(parse(&ColumnType::Float32, "NaN"), Value::Float32(v) if v.is_nan()));
    }

    #[test]
    fn float_errors() {
        // Spellings Rust accepts but PostgreSQL never prints.
        for bad in [
            "inf", "infinity", "nan", "+1.5", "1.5 ", "", "-", "e5", "1,5", "0x10",
        ] {
            assert!(
                error(&ColumnType::Float64, bad).contains("is not a valid float8"),
                "{bad}"
            );
        }
        assert_eq!(
            error(&ColumnType::Float32, "1e39"),
            "`1e39` is out of range for float4"
        );
        assert_eq!(
            error(&ColumnType::Float64, "1e999"),
            "`1e999` is out of range for float8"
        );
    }

    #[test]
    fn numeric_values() {
        let numeric = ColumnType::Decimal {
            precision: 12,
            scale: 4,
        };
        assert_eq!(parse(&numeric, "-123.4500"), finite("-1234500", 4));
        assert_eq!(parse(&numeric, "123.4500"), finite("1234500", 4));
        assert_eq!(parse(&ColumnType::VariableDecimal, "42"), finite("42", 0));
        assert_eq!(parse(&ColumnType::VariableDecimal, "0.001"), finite("1", 3));
        assert_eq!(
            parse(&ColumnType::VariableDecimal, "-0.050"),
            finite("-50", 3)
        );
        assert_eq!(parse(&ColumnType::VariableDecimal, "100"), finite("100", 0));
        let big = "123456789012345678901234567890.000000000000000000001";
        assert_eq!(
            parse(&ColumnType::VariableDecimal, big),
            finite("123456789012345678901234567890000000000000000000001", 21)
        );
    }

    #[test]
    fn numeric_zeros_are_normalised() {
        for (text, scale) in [
            ("0", 0),
            ("-0", 0),
            ("0.00", 2),
            ("-0.00", 2),
            ("000", 0),
            ("007.10", 2),
        ] {
            let expected = if text.contains('7') {
                finite("710", 2)
            } else {
                finite("0", scale)
            };
            assert_eq!(
                parse(&ColumnType::VariableDecimal, text),
                expected,
                "{text}"
            );
        }
    }

    #[test]
    fn numeric_specials() {
        assert_eq!(
            parse(&ColumnType::VariableDecimal, "NaN"),
            Value::Numeric(Numeric::NaN)
        );
        assert_eq!(
            parse(&ColumnType::VariableDecimal, "Infinity"),
            Value::Numeric(Numeric::PositiveInfinity)
        );
        let fixed = ColumnType::Decimal {
            precision: 5,
            scale: 2,
        };
        assert_eq!(
            parse(&fixed, "-Infinity"),
            Value::Numeric(Numeric::NegativeInfinity)
        );
    }

    #[test]
    fn numeric_errors() {
        for bad in [
            "", "-", ".", "1.2.3", "1e5", "+1", "--1", "1 ", "nan", "infinity", "1,5",
        ] {
            assert!(
                error(&ColumnType::VariableDecimal, bad).contains("is not a valid numeric"),
                "{bad}"
            );
        }
    }

    #[test]
    fn bytea_hex() {
        assert_eq!(parse(&ColumnType::Bytes, "\\x"), Value::Bytes(vec![]));
        assert_eq!(
            parse(&ColumnType::Bytes, "\\x00ff10Ab"),
            Value::Bytes(vec![0x00, 0xff, 0x10, 0xab])
        );
    }

    #[test]
    fn bytea_errors() {
        assert_eq!(
            error(&ColumnType::Bytes, "\\x0g"),
            "`\\x0g` is not a valid bytea (expected \\x and hex digit pairs)"
        );
        for bad in ["\\x0", "abc", "", "\\000", "x00", "\\x 00", "\\x+0"] {
            assert!(
                error(&ColumnType::Bytes, bad).contains("is not a valid bytea"),
                "{bad}"
            );
        }
    }

    #[test]
    fn uuids_are_lower_cased() {
        let expected = Value::Uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into());
        assert_eq!(
            parse(&ColumnType::Uuid, "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"),
            expected
        );
        assert_eq!(
            parse(&ColumnType::Uuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            expected
        );
        for bad in [
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
            "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        ] {
            assert!(
                error(&ColumnType::Uuid, bad).contains("is not a valid uuid"),
                "{bad}"
            );
        }
    }

    #[test]
    fn dates() {
        assert_eq!(parse(&ColumnType::Date, "1970-01-01"), Value::Date(0));
        assert_eq!(parse(&ColumnType::Date, "2000-01-01"), Value::Date(10_957));
        assert_eq!(parse(&ColumnType::Date, "1969-12-31"), Value::Date(-1));
        assert_eq!(parse(&ColumnType::Date, "1900-03-01"), Value::Date(-25_508));
        assert_eq!(parse(&ColumnType::Date, "2024-02-29"), Value::Date(19_782));
        assert_eq!(parse(&ColumnType::Date, "2000-02-29"), Value::Date(11_016));
        assert_eq!(
            parse(&ColumnType::Date, "10000-01-01"),
            Value::Date(2_932_897)
        );
        // 0001-01-01 is day -719162; the day before is 1 BC (astronomical year 0), a leap year.
        assert_eq!(
            parse(&ColumnType::Date, "0001-01-01"),
            Value::Date(-719_162)
        );
        assert_eq!(
            parse(&ColumnType::Date, "0001-12-31 BC"),
            Value::Date(-719_163)
        );
        assert_eq!(
            parse(&ColumnType::Date, "0001-02-29 BC"),
            Value::Date(-719_163 - 306)
        );
        // PostgreSQL's earliest date: Julian day 0.
        assert_eq!(
            parse(&ColumnType::Date, "4714-11-24 BC"),
            Value::Date(-2_440_588)
        );
        // And its latest.
        assert_eq!(
            parse(&ColumnType::Date, "5874897-12-31"),
            Value::Date(2_145_042_905)
        );
    }

    #[test]
    fn date_errors_and_out_of_range() {
        for bad in [
            "2023-02-29",
            "1900-02-29",
            "2024-13-01",
            "2024-00-10",
            "2024-04-31",
            "2024-01-00",
            "24-01-01",
            "2024-1-01",
            "0000-01-01 BC",
            "2024-01-01 AD",
            "2024-01-01 00:00:00",
            "1234567890-01-01",
        ] {
            assert!(
                error(&ColumnType::Date, bad).contains("is not a valid date"),
                "{bad}"
            );
        }
        assert_eq!(parse(&ColumnType::Date, "infinity"), Value::Date(i32::MAX));
        assert_eq!(parse(&ColumnType::Date, "-infinity"), Value::Date(i32::MIN));
        assert_eq!(
            parse(&ColumnType::Date, "999999999-01-01"),
            Value::OutOfRange("date `999999999-01-01` is outside the Avro date range".into())
        );
    }

    #[test]
    fn timestamps() {
        assert_eq!(
            parse(&ColumnType::Timestamp, "1970-01-01 00:00:00"),
            Value::Timestamp(0)
        );
        assert_eq!(
            parse(&ColumnType::Timestamp, "2024-01-02 03:04:05"),
            Value::Timestamp(1_704_164_645_000_000)
        );
        assert_eq!(
            parse(&ColumnType::Timestamp, "2024-01-02 03:04:05.678901"),
            Value::Timestamp(1_704_164_645_678_901)
        );
        assert_eq!(
            parse(&ColumnType::Timestamp, "2024-01-02 03:04:05.5"),
            Value::Timestamp(1_704_164_645_500_000)
        );
        assert_eq!(
            parse(&ColumnType::Timestamp, "1969-12-31 23:59:59.999999"),
            Value::Timestamp(-1)
        );
        assert_eq!(
            parse(&ColumnType::Timestamp, "2024-02-29 12:00:00"),
            Value::Timestamp(1_709_208_000_000_000)
        );
        assert_eq!(
            parse(&ColumnType::Timestamp, "0001-12-31 23:00:00 BC"),
            Value::Timestamp(-719_162 * MICROS_PER_DAY - 3_600 * MICROS_PER_SECOND)
        );
        assert_eq!(
            parse(&ColumnType::Timestamp, "10000-01-01 00:00:00"),
            Value::Timestamp(2_932_897 * MICROS_PER_DAY)
        );
    }

    #[test]
    fn timestamps_with_zones() {
        let base = 1_704_164_645_000_000;
        assert_eq!(
            parse(&ColumnType::TimestampTz, "2024-01-02 03:04:05+00"),
            Value::TimestampTz(base)
        );
        let fraction = parse(&ColumnType::TimestampTz, "2024-01-02 03:04:05.25+00");
        assert_eq!(fraction, Value::TimestampTz(base + 250_000));
        let india = parse(&ColumnType::TimestampTz, "2024-01-02 08:34:05+05:30");
        assert_eq!(india, Value::TimestampTz(base));
        let pacific = parse(&ColumnType::TimestampTz, "2024-01-01 19:04:05-08");
        assert_eq!(pacific, Value::TimestampTz(base));
        let seconds = parse(&ColumnType::TimestampTz, "2024-01-02 03:04:05+00:00:10");
        assert_eq!(seconds, Value::TimestampTz(base - 10 * MICROS_PER_SECOND));
        let bc = parse(&ColumnType::TimestampTz, "0001-12-31 23:00:00+00 BC");
        assert_eq!(
            bc,
            Value::TimestampTz(-719_162 * MICROS_PER_DAY - 3_600 * MICROS_PER_SECOND)
        );
    }

    #[test]
    fn timestamp_errors() {
        for bad in [
            "2024-01-02",
            "2024-01-02T03:04:05",
            "2024-01-02 24:00:00",
            "2024-01-02 03:60:00",
            "2024-01-02 03:04:60",
            "2024-01-02 03:04:05.",
            "2024-01-02 03:04:05.1234567",
            "2024-01-02 3:04:05",
            "2024-01-02 03:04:05+00",
            "2023-02-29 00:00:00",
        ] {
            assert!(
                error(&ColumnType::Timestamp, bad).contains("is not a valid timestamp"),
                "{bad}"
            );
        }
        for bad in [
            "2024-01-02 03:04:05",
            "2024-01-02 03:04:05+5",
            "2024-01-02 03:04:05+05:",
            "2024-01-02 03:04:05+05:30:",
            "2024-01-02 03:04:05 +00",
            "2024-01-02 03:04:05Z",
        ] {
            assert!(
                error(&ColumnType::TimestampTz, bad).contains("is not a valid timestamptz"),
                "{bad}"
            );
        }
    }

    #[test]
    fn timestamps_beyond_avro() {
        assert_eq!(
            parse(&ColumnType::Timestamp, "infinity"),
            Value::Timestamp(i64::MAX)
        );
        assert_eq!(
            parse(&ColumnType::TimestampTz, "-infinity"),
            Value::TimestampTz(i64::MIN)
        );
        // PostgreSQL's last timestamp is past i64 microseconds counted from 1970.
        assert_eq!(
            parse(&ColumnType::TimestampTz, "294276-12-31 23:59:59.999999+00"),
            Value::OutOfRange(
                "timestamptz `294276-12-31 23:59:59.999999+00` is outside the Avro timestamp range"
                    .into()
            )
        );
        assert!(matches!(
            parse(&ColumnType::Timestamp, "294247-01-01 00:00:00"),
            Value::Timestamp(_)
        ));
    }

    #[test]
    fn text_json_and_utf8() {
        assert_eq!(
            parse(&ColumnType::String, "héllo"),
            Value::String("héllo".into())
        );
        assert_eq!(parse(&ColumnType::String, ""), Value::String(String::new()));
        assert_eq!(
            parse(&ColumnType::Json, r#"{"a": [1, 2]}"#),
            Value::Json(r#"{"a": [1, 2]}"#.into())
        );
        let err = parse_text(&ColumnType::String, &[b'a', 0xff]).unwrap_err();
        assert_eq!(err.to_string(), "text value `a\u{fffd}` is not valid UTF-8");
        assert!(parse_text(&ColumnType::Json, &[0xc3]).is_err());
        assert!(parse_text(&ColumnType::Int32, &[b'1', 0x80]).is_err());
    }

    #[test]
    fn long_inputs_are_shortened_in_errors() {
        let long = "9".repeat(200);
        let err = error(&ColumnType::Int32, &long);
        assert_eq!(
            err,
            format!("`{}… (200 bytes)` is out of range for int4", "9".repeat(64))
        );
    }
}
