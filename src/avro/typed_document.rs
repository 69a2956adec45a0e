//! A MongoDB document as the Avro record its contract declares. Without a contract a document travels as
//! canonical Extended JSON text; with one, `after` is that record, written straight from the Extended JSON
//! the source produced. A document that does not fit is refused with the field named
//! (`after.items[2].price`), so that it can go to the dead-letter topic.
//!
//! The contract is a reader's view of the collection: document fields it does not declare are left out,
//! and a declared field the document lacks takes the field's default (without one, the document is
//! refused). Conversions never lose information: an int64 fits an `int` only when its value does, a
//! double fits a `long` only when it is a whole number, a date fits a `date` only at midnight UTC.

use std::collections::HashMap;

use apache_avro::schema::{Name, RecordField, Schema};
use base64::Engine;
use serde_json::{Map, Number, Value as Json};

use super::binary::{
    write_blocks, write_boolean, write_bytes, write_double, write_float, write_long, write_string,
    write_union_branch,
};
use super::decimal::{self, write_fixed_scale, DecimalError};
use super::encode::is_hyphenated_uuid;
use crate::contracts::{field_value, Mismatch};

const MS_PER_DAY: i64 = 86_400_000;

/// The record `after` holds, resolved within the envelope schema it is part of.
#[derive(Clone, Debug)]
pub struct TypedDocument {
    record: Schema,
    names: HashMap<Name, Schema>,
}

impl TypedDocument {
    /// The record in the non-null branch of `envelope`'s `after` field.
    pub(super) fn within(envelope: &Schema) -> Result<TypedDocument, String> {
        let names = crate::tail::named_types(envelope).map_err(|err| err.to_string())?;
        let Schema::Record(envelope) = envelope else {
            return Err("the envelope is not a record".into());
        };
        let after = envelope
            .fields
            .iter()
            .find(|f| f.name == "after")
            .ok_or("the envelope has no `after` field")?;
        let Schema::Union(union) = &after.schema else {
            return Err("`after` is not a union".into());
        };
        let record = union
            .variants()
            .iter()
            .find(|v| **v != Schema::Null)
            .ok_or("`after` has no record branch")?
            .clone();
        unsupported(&record, "after").map_or(Ok(()), Err)?;
        let typed = TypedDocument { record, names };
        typed.check_defaults(&typed.record, "after")?;
        Ok(typed)
    }

    /// Every field default in `schema` must be writable as its field's type, a union's as the union's
    /// first type (as the Avro specification says, and as Java readers check): a default that is not
    /// would only surface when a document lacks the field, blamed on the document.
    fn check_defaults(&self, schema: &Schema, path: &str) -> Result<(), String> {
        match schema {
            Schema::Record(record) => record.fields.iter().try_for_each(|field| {
                let field_path = join(path, &field.name);
                if let Some(default) = &field.default {
                    self.default(default, &field.schema, &field_path, &mut Vec::new())
                        .map_err(|m| {
                            format!(
                                "`{field_path}`: the default {default} does not fit the field's type \
                                 (a union's default must fit its first type): {}",
                                m.problem
                            )
                        })?;
                }
                self.check_defaults(&field.schema, &field_path)
            }),
            Schema::Union(union) => union
                .variants()
                .iter()
                .try_for_each(|variant| self.check_defaults(variant, path)),
            Schema::Array(array) => self.check_defaults(&array.items, &format!("{path}[]")),
            Schema::Map(map) => self.check_defaults(&map.types, &format!("{path}.*")),
            _ => Ok(()),
        }
    }

    /// A field's default: a union's is its first type's value.
    fn default(
        &self,
        default: &Json,
        schema: &Schema,
        path: &str,
        out: &mut Vec<u8>,
    ) -> Result<(), Mismatch> {
        match self.resolve(schema) {
            Schema::Union(union) => {
                let first = union.variants().first().unwrap_or(&Schema::Null);
                write_union_branch(0, out);
                self.value(default, first, path, Origin::Default, out)
            }
            other => self.value(default, other, path, Origin::Default, out),
        }
    }

    fn resolve<'s>(&'s self, schema: &'s Schema) -> &'s Schema {
        match schema {
            Schema::Ref { name } => self.names.get(name).unwrap_or(schema),
            other => other,
        }
    }

    /// Writes `document` (canonical Extended JSON) as the record; on a mismatch `out` may hold part of it.
    pub fn write(&self, document: &Json, out: &mut Vec<u8>) -> Result<(), Mismatch> {
        self.value(document, &self.record, "after", Origin::Document, out)
    }

    fn value(
        &self,
        value: &Json,
        schema: &Schema,
        path: &str,
        origin: Origin,
        out: &mut Vec<u8>,
    ) -> Result<(), Mismatch> {
        let schema = self.resolve(schema);
        let kind = Kind::of(value);
        if origin == Origin::Default {
            if let Some(written) = default_scalar(schema, &kind, out) {
                return Ok(written);
            }
        }
        if matches!(kind, Kind::Null) && !matches!(schema, Schema::Null | Schema::Union(_)) {
            return Err(mismatch(
                path,
                "is null; the contract requires a value".into(),
            ));
        }
        match (schema, &kind) {
            (Schema::Union(union), _) => {
                self.union(value, union.variants(), &kind, path, origin, out)
            }
            (Schema::Array(array), Kind::Array(items)) => {
                let items: Vec<(usize, &Json)> = items.iter().enumerate().collect();
                write_blocks(&items, out, |(i, item), out| {
                    self.value(item, &array.items, &format!("{path}[{i}]"), origin, out)
                })
            }
            (Schema::Map(map), Kind::Document(entries)) => {
                let entries: Vec<(&String, &Json)> = entries.iter().collect();
                write_blocks(&entries, out, |(key, item), out| {
                    write_string(key, out);
                    self.value(item, &map.types, &join(path, key), origin, out)
                })
            }
            (Schema::Record(record), Kind::Document(document)) => {
                self.record(&record.fields, document, path, origin, out)
            }
            _ => scalar(schema, &kind, path, origin, out),
        }
    }

    /// A union: null to its null branch, anything else to the first other branch it fits.
    fn union(
        &self,
        value: &Json,
        variants: &[Schema],
        kind: &Kind<'_>,
        path: &str,
        origin: Origin,
        out: &mut Vec<u8>,
    ) -> Result<(), Mismatch> {
        if matches!(kind, Kind::Null) {
            return match variants.iter().position(|v| *v == Schema::Null) {
                Some(index) => {
                    write_union_branch(index as u32, out);
                    Ok(())
                }
                None => Err(mismatch(
                    path,
                    "is null; the contract requires a value".into(),
                )),
            };
        }
        let mut first_error = None;
        for (index, variant) in variants.iter().enumerate() {
            if *variant == Schema::Null {
                continue;
            }
            let mark = out.len();
            write_union_branch(index as u32, out);
            match self.value(value, variant, path, origin, out) {
                Ok(()) => return Ok(()),
                Err(err) => {
                    out.truncate(mark);
                    first_error.get_or_insert(err);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| mismatch(path, "fits no branch".into())))
    }

    /// A record's fields in the contract's order: the document's value, else the field's default.
    fn record(
        &self,
        fields: &[RecordField],
        document: &Map<String, Json>,
        path: &str,
        origin: Origin,
        out: &mut Vec<u8>,
    ) -> Result<(), Mismatch> {
        for field in fields {
            let field_path = join(path, &field.name);
            let given = field_value(document, field);
            match (given, &field.default) {
                (Some(given), _) => self.value(given, &field.schema, &field_path, origin, out)?,
                (None, Some(default)) => self.default(default, &field.schema, &field_path, out)?,
                (None, None) => return Err(mismatch(
                    &field_path,
                    "is missing; the contract requires it (a field with a default may be left out)"
                        .into(),
                )),
            }
        }
        Ok(())
    }
}

/// The value's type is not the schema's.
fn wrong_type(schema: &Schema, kind: &Kind<'_>, path: &str) -> Mismatch {
    mismatch(
        path,
        format!("expected {}, found {}", expected(schema), kind.describe()),
    )
}

/// A value of a schema that is neither a union nor a container.
fn scalar(
    schema: &Schema,
    kind: &Kind<'_>,
    path: &str,
    origin: Origin,
    out: &mut Vec<u8>,
) -> Result<(), Mismatch> {
    match (schema, kind) {
        (Schema::Null, Kind::Null) => Ok(()),
        (Schema::Boolean, Kind::Bool(b)) => {
            write_boolean(*b, out);
            Ok(())
        }
        (
            Schema::Int
            | Schema::TimeMillis
            | Schema::Long
            | Schema::TimeMicros
            | Schema::Float
            | Schema::Double
            | Schema::Decimal(_),
            _,
        ) => number(schema, kind, path, out),
        (Schema::String, Kind::String(s) | Kind::Symbol(s) | Kind::ObjectId(s)) => {
            write_string(s, out);
            Ok(())
        }
        (Schema::Uuid | Schema::Bytes | Schema::Fixed(_), _) => {
            binary(schema, kind, path, origin, out)
        }
        (
            Schema::Date
            | Schema::TimestampMillis
            | Schema::LocalTimestampMillis
            | Schema::TimestampMicros
            | Schema::LocalTimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampNanos,
            Kind::Date(ms),
        ) => date_time(schema, *ms, kind, path, out),
        (Schema::Enum(e), Kind::String(symbol)) => {
            // The enum's own default is for readers meeting a symbol they do not know; writing it in
            // place of an unknown one would lose the value.
            match e.symbols.iter().position(|s| s == symbol) {
                Some(index) => {
                    write_long(index as i64, out);
                    Ok(())
                }
                None => Err(mismatch(
                    path,
                    format!(
                        "`{symbol}` is not one of the contract's symbols {:?}",
                        e.symbols
                    ),
                )),
            }
        }
        _ => Err(wrong_type(schema, kind, path)),
    }
}

/// An int, long, float, double or decimal: only a number that fits exactly.
fn number(schema: &Schema, kind: &Kind<'_>, path: &str, out: &mut Vec<u8>) -> Result<(), Mismatch> {
    let refuse = |problem: String| Err(mismatch(path, problem));
    match schema {
        Schema::Int | Schema::TimeMillis => match kind.integer() {
            Some(n) => match i32::try_from(n) {
                Ok(n) => {
                    write_long(i64::from(n), out);
                    Ok(())
                }
                Err(_) => refuse(format!("{} does not fit an int", kind.describe())),
            },
            None => Err(wrong_type(schema, kind, path)),
        },
        Schema::Long | Schema::TimeMicros => match kind.integer() {
            Some(n) => {
                write_long(n, out);
                Ok(())
            }
            None => Err(wrong_type(schema, kind, path)),
        },
        Schema::Float => match kind.float() {
            Some(x) if (x as f32) as f64 == x || !x.is_finite() => {
                write_float(x as f32, out);
                Ok(())
            }
            Some(_) => refuse(format!("{} does not fit a float exactly", kind.describe())),
            None => Err(wrong_type(schema, kind, path)),
        },
        Schema::Double => match kind.float() {
            Some(x) => {
                write_double(x, out);
                Ok(())
            }
            None if matches!(kind, Kind::Int64(_)) => {
                refuse(format!("{} does not fit a double exactly", kind.describe()))
            }
            None => Err(wrong_type(schema, kind, path)),
        },
        Schema::Decimal(decimal) => {
            let Some((unscaled, scale)) = kind.decimal() else {
                return Err(wrong_type(schema, kind, path));
            };
            let scale = scale.map_err(|problem| mismatch(path, problem))?;
            write_fixed_scale(
                &unscaled,
                scale,
                decimal.precision as u32,
                decimal.scale as u32,
                out,
            )
            .map_err(|err| mismatch(path, decimal_problem(err)))
        }
        _ => Err(wrong_type(schema, kind, path)),
    }
}

/// A uuid, bytes or fixed: from BSON binary data, a uuid also from its text and, in a default, bytes from
/// a string of code points 0-255 (the Avro specification's form).
fn binary(
    schema: &Schema,
    kind: &Kind<'_>,
    path: &str,
    origin: Origin,
    out: &mut Vec<u8>,
) -> Result<(), Mismatch> {
    match (schema, kind) {
        (Schema::Uuid, Kind::String(s)) if is_hyphenated_uuid(s) => {
            write_string(&s.to_ascii_lowercase(), out);
            Ok(())
        }
        (
            Schema::Uuid,
            Kind::Binary {
                // Subtype 3 is the drivers' legacy UUID, its byte order their own: not read as one.
                subtype: 4,
                base64,
            },
        ) => match apache_avro::Uuid::from_slice(&decode_base64(base64, path)?) {
            Ok(uuid) => {
                write_string(&uuid.hyphenated().to_string(), out);
                Ok(())
            }
            Err(_) => Err(mismatch(
                path,
                format!("{} is not 16 bytes long", kind.describe()),
            )),
        },
        (Schema::Bytes, Kind::Binary { base64, .. }) => {
            write_bytes(&decode_base64(base64, path)?, out);
            Ok(())
        }
        (Schema::Bytes, Kind::String(s)) if origin == Origin::Default => {
            write_bytes(&latin1(s, path)?, out);
            Ok(())
        }
        (Schema::Fixed(fixed), Kind::Binary { .. } | Kind::String(_)) => {
            let bytes = match kind {
                Kind::Binary { base64, .. } => decode_base64(base64, path)?,
                Kind::String(s) if origin == Origin::Default => latin1(s, path)?,
                _ => return Err(wrong_type(schema, kind, path)),
            };
            if bytes.len() != fixed.size {
                return Err(mismatch(
                    path,
                    format!(
                        "{} is {} bytes long; the contract's fixed `{}` holds {}",
                        kind.describe(),
                        bytes.len(),
                        fixed.name.fullname(None),
                        fixed.size
                    ),
                ));
            }
            out.extend_from_slice(&bytes);
            Ok(())
        }
        _ => Err(wrong_type(schema, kind, path)),
    }
}

/// A date or timestamp from a BSON date (`ms` since the epoch); a date only at midnight.
fn date_time(
    schema: &Schema,
    ms: i64,
    kind: &Kind<'_>,
    path: &str,
    out: &mut Vec<u8>,
) -> Result<(), Mismatch> {
    match schema {
        Schema::Date => {
            if ms.rem_euclid(MS_PER_DAY) != 0 {
                return Err(mismatch(
                    path,
                    format!(
                        "{} has a time of day; the contract's `date` holds whole days",
                        kind.describe()
                    ),
                ));
            }
            match i32::try_from(ms.div_euclid(MS_PER_DAY)) {
                Ok(days) => {
                    write_long(i64::from(days), out);
                    Ok(())
                }
                Err(_) => Err(mismatch(
                    path,
                    format!("{} is out of a date's range", kind.describe()),
                )),
            }
        }
        Schema::TimestampMillis | Schema::LocalTimestampMillis => {
            write_long(ms, out);
            Ok(())
        }
        Schema::TimestampMicros | Schema::LocalTimestampMicros => {
            scaled_time(ms, 1_000, kind, path, out)
        }
        Schema::TimestampNanos | Schema::LocalTimestampNanos => {
            scaled_time(ms, 1_000_000, kind, path, out)
        }
        _ => Err(wrong_type(schema, kind, path)),
    }
}

/// Where a value comes from: the document, or a field default in the contract (plain Avro JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    Document,
    Default,
}

/// A value of canonical Extended JSON, by its BSON type.
enum Kind<'a> {
    Null,
    Bool(bool),
    String(&'a str),
    Array(&'a [Json]),
    Document(&'a Map<String, Json>),
    Int32(i32),
    Int64(i64),
    Double(f64),
    Decimal128(&'a str),
    Date(i64),
    ObjectId(&'a str),
    Binary {
        subtype: u8,
        base64: &'a str,
    },
    Symbol(&'a str),
    /// A plain JSON number: only field defaults have them.
    Number(&'a Number),
    /// Any other BSON type (timestamp, regular expression, code, min/max key…), or a malformed wrapper.
    Other(&'static str),
}

impl<'a> Kind<'a> {
    fn of(value: &'a Json) -> Kind<'a> {
        let object = match value {
            Json::Null => return Kind::Null,
            Json::Bool(b) => return Kind::Bool(*b),
            Json::String(s) => return Kind::String(s),
            Json::Array(items) => return Kind::Array(items),
            Json::Number(n) => return Kind::Number(n),
            Json::Object(object) => object,
        };
        // A wrapper is one `$` key (two for code with scope); anything else is a document, whose field
        // names may start with `$` since MongoDB 5.0.
        let wrapper = match object.len() {
            1 => object.iter().next(),
            2 if object.contains_key("$scope") => object.get_key_value("$code"),
            _ => None,
        };
        let Some((key, inner)) = wrapper.filter(|(k, _)| k.starts_with('$')) else {
            return Kind::Document(object);
        };
        let text = inner.as_str();
        let parsed = match key.as_str() {
            "$numberInt" => text.and_then(|t| t.parse().ok()).map(Kind::Int32),
            "$numberLong" => text.and_then(|t| t.parse().ok()).map(Kind::Int64),
            "$numberDouble" => text.and_then(|t| t.parse().ok()).map(Kind::Double),
            "$numberDecimal" => text.map(Kind::Decimal128),
            "$oid" => text.map(Kind::ObjectId),
            "$symbol" => text.map(Kind::Symbol),
            "$date" => inner
                .get("$numberLong")
                .and_then(Json::as_str)
                .and_then(|t| t.parse().ok())
                .map(Kind::Date),
            "$binary" => {
                let base64 = inner.get("base64").and_then(Json::as_str);
                let subtype = inner
                    .get("subType")
                    .and_then(Json::as_str)
                    .and_then(|t| u8::from_str_radix(t, 16).ok());
                base64
                    .zip(subtype)
                    .map(|(base64, subtype)| Kind::Binary { subtype, base64 })
            }
            "$timestamp" => Some(Kind::Other("a BSON timestamp")),
            "$regularExpression" => Some(Kind::Other("a regular expression")),
            "$code" => Some(Kind::Other("JavaScript code")),
            "$dbPointer" => Some(Kind::Other("a DBPointer")),
            "$minKey" => Some(Kind::Other("MinKey")),
            "$maxKey" => Some(Kind::Other("MaxKey")),
            "$undefined" => Some(Kind::Other("undefined")),
            // A document whose first field name starts with `$` (allowed since MongoDB 5.0).
            _ => Some(Kind::Document(object)),
        };
        parsed.unwrap_or(Kind::Other("a malformed Extended JSON value"))
    }

    /// The value as a whole number, when it is one exactly.
    fn integer(&self) -> Option<i64> {
        match self {
            Kind::Int32(n) => Some(i64::from(*n)),
            Kind::Int64(n) => Some(*n),
            // i64::MAX as f64 is 2^63, the first double past i64::MAX; -0.0 would lose its sign.
            Kind::Double(x)
                if x.fract() == 0.0
                    && *x >= i64::MIN as f64
                    && *x < i64::MAX as f64
                    && !(*x == 0.0 && x.is_sign_negative()) =>
            {
                Some(*x as i64)
            }
            Kind::Number(n) => n.as_i64(),
            _ => None,
        }
    }

    /// The value as a double, when it converts exactly (an int64 beyond 2^53 may not).
    fn float(&self) -> Option<f64> {
        match self {
            Kind::Double(x) => Some(*x),
            Kind::Int32(n) => Some(f64::from(*n)),
            Kind::Int64(n) if (*n as f64) as i64 == *n && *n != i64::MAX => Some(*n as f64),
            Kind::Number(n) => n.as_f64(),
            _ => None,
        }
    }

    /// The value as an unscaled integer and its scale; the scale is an error for a non-finite decimal.
    fn decimal(&self) -> Option<(String, Result<u32, String>)> {
        match self {
            Kind::Int32(n) => Some((n.to_string(), Ok(0))),
            Kind::Int64(n) => Some((n.to_string(), Ok(0))),
            Kind::Number(n) if n.is_i64() => Some((n.to_string(), Ok(0))),
            Kind::Decimal128(text) => Some(decimal_parts(text)),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Kind::Null => "null".into(),
            Kind::Bool(b) => format!("a boolean ({b})"),
            Kind::String(s) => format!("a string ({})", shorten(s)),
            Kind::Array(items) => format!("an array of {}", items.len()),
            Kind::Document(_) => "a document".into(),
            Kind::Int32(n) => format!("an int32 ({n})"),
            Kind::Int64(n) => format!("an int64 ({n})"),
            Kind::Double(x) => format!("a double ({x})"),
            Kind::Decimal128(d) => format!("a decimal128 ({d})"),
            Kind::Date(ms) => format!("a date ({ms} ms since the epoch)"),
            Kind::ObjectId(id) => format!("an ObjectId ({id})"),
            Kind::Binary { subtype, .. } => format!("binary data (subtype {subtype:#04x})"),
            Kind::Symbol(s) => format!("a symbol ({})", shorten(s)),
            Kind::Number(n) => format!("a number ({n})"),
            Kind::Other(what) => (*what).to_owned(),
        }
    }
}

/// A Decimal128's text (`-12.50`, `1.2E+3`, `NaN`) as an unscaled integer and a scale of 0 or more.
fn decimal_parts(text: &str) -> (String, Result<u32, String>) {
    let refused = |why: &str| (String::new(), Err(format!("decimal128 {text} {why}")));
    let (mantissa, exponent) = match text.split_once(['E', 'e']) {
        // Decimal128 exponents lie within ±6176 (and its digits within 34).
        Some((mantissa, exponent)) => match exponent.parse::<i64>() {
            Ok(exponent) if exponent.abs() <= 6_200 => (mantissa, exponent),
            _ => return refused("is not a decimal128 number"),
        },
        None => (text, 0),
    };
    let Some((digits, fraction)) = decimal::unscale(mantissa) else {
        return refused("is not finite; a decimal holds only numbers");
    };
    // Decimal128 exponents stay within ±6176, so this cannot overflow.
    let scale = fraction as i64 - exponent;
    if scale >= 0 {
        (digits, Ok(scale as u32))
    } else if digits == "0" {
        ("0".into(), Ok(0))
    } else if -scale > 6_300 || digits.len() > 6_300 {
        refused("is out of range")
    } else {
        (format!("{digits}{}", "0".repeat((-scale) as usize)), Ok(0))
    }
}

/// A default written in plain Avro JSON for a type whose document values are BSON-typed: a number for a
/// date, time or timestamp, any number for a float, and the special floats as strings. None when the
/// default is not one of those (it is then read like a document value).
fn default_scalar(schema: &Schema, kind: &Kind<'_>, out: &mut Vec<u8>) -> Option<()> {
    let special = |text: &str| match text {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => None,
    };
    match (schema, kind) {
        (Schema::Date | Schema::TimeMillis, Kind::Number(n)) => {
            write_long(i64::from(i32::try_from(n.as_i64()?).ok()?), out)
        }
        (
            Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos,
            Kind::Number(n),
        ) => write_long(n.as_i64()?, out),
        (Schema::Float, Kind::Number(n)) => write_float(n.as_f64()? as f32, out),
        (Schema::Float, Kind::String(s)) => write_float(special(s)? as f32, out),
        (Schema::Double, Kind::String(s)) => write_double(special(s)?, out),
        _ => return None,
    }
    Some(())
}

/// A decimal's refusal in the contract's terms (the shared error speaks of a column's).
fn decimal_problem(err: DecimalError) -> String {
    match err {
        DecimalError::ScaleTooLarge {
            value,
            scale,
            column_scale,
        } => format!("{value} has scale {scale}, more than the contract's scale {column_scale}"),
        DecimalError::PrecisionExceeded {
            value,
            digits,
            precision,
        } => format!("{value} has {digits} digits, more than the contract's precision {precision}"),
        DecimalError::Malformed(_) => err.to_string(),
    }
}

fn scaled_time(
    ms: i64,
    factor: i64,
    kind: &Kind<'_>,
    path: &str,
    out: &mut Vec<u8>,
) -> Result<(), Mismatch> {
    match ms.checked_mul(factor) {
        Some(value) => {
            write_long(value, out);
            Ok(())
        }
        None => Err(mismatch(
            path,
            format!(
                "{} is out of the contract's timestamp range",
                kind.describe()
            ),
        )),
    }
}

fn decode_base64(text: &str, path: &str) -> Result<Vec<u8>, Mismatch> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|err| mismatch(path, format!("binary data is not valid base64: {err}")))
}

fn latin1(text: &str, path: &str) -> Result<Vec<u8>, Mismatch> {
    text.chars()
        .map(|c| u8::try_from(u32::from(c)).ok())
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| mismatch(path, "the default has a code point above 255".into()))
}

/// The Avro type a schema declares, for messages.
fn expected(schema: &Schema) -> String {
    match schema {
        Schema::Record(r) => format!("a document (record `{}`)", r.name.fullname(None)),
        Schema::Map(_) => "a document (map)".into(),
        Schema::Array(_) => "an array".into(),
        Schema::Enum(e) => format!("a string (enum `{}`)", e.name.fullname(None)),
        Schema::Decimal(d) => format!("a number (decimal({}, {}))", d.precision, d.scale),
        Schema::Date => "a date (`date`)".into(),
        Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => "a date (timestamp)".into(),
        Schema::Uuid => "a UUID (binary subtype 4, or its hyphenated text)".into(),
        Schema::Bytes | Schema::Fixed(_) => "binary data".into(),
        Schema::String => "a string".into(),
        Schema::Boolean => "a boolean".into(),
        Schema::Int | Schema::TimeMillis => "an int".into(),
        Schema::Long | Schema::TimeMicros => "a long".into(),
        Schema::Float => "a float".into(),
        Schema::Double => "a double".into(),
        Schema::Null => "null".into(),
        other => format!("{other:?}"),
    }
}

/// The first Avro type in `schema` that no document can be written as, with its path.
fn unsupported(schema: &Schema, path: &str) -> Option<String> {
    let refuse = |what: &str| Some(format!("`{path}`: {what} cannot hold a MongoDB value"));
    match schema {
        Schema::BigDecimal => refuse("big-decimal"),
        Schema::Duration => refuse("duration"),
        Schema::Decimal(d) if !matches!(*d.inner, Schema::Bytes) => {
            refuse("a decimal on `fixed` (declare it on `bytes`)")
        }
        Schema::Union(union) => union
            .variants()
            .iter()
            .find_map(|variant| unsupported(variant, path)),
        Schema::Array(array) => unsupported(&array.items, &format!("{path}[]")),
        Schema::Map(map) => unsupported(&map.types, &format!("{path}.*")),
        Schema::Record(record) => record
            .fields
            .iter()
            .find_map(|field| unsupported(&field.schema, &join(path, &field.name))),
        _ => None,
    }
}

fn join(path: &str, field: &str) -> String {
    format!("{path}.{field}")
}

fn shorten(text: &str) -> String {
    const MAX: usize = 40;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
        None => format!("{text:?}"),
    }
}

fn mismatch(path: &str, problem: String) -> Mismatch {
    Mismatch {
        field: path.to_owned(),
        problem,
        fatal: true,
    }
}

#[cfg(test)]
#[path = "typed_document_tests.rs"]
mod tests;
