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
use crate::event::{ColumnType, Numeric, RecordField, Value};

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
#[path = "types_tests.rs"]
mod tests;
