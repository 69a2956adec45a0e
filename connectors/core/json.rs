//! Change values as JSON: the form dead letters carry rows in, and the text a mask hashes. Exact where JSON
//! numbers would not be (decimals as strings, 64-bit integers as numbers since serde_json keeps them exact).

use serde_json::{json, Map, Value as Json};

use crate::event::{Note, Numeric, Row, Table, Value};

/// A row as a JSON object keyed by column name.
pub fn row_json(table: &Table, row: &Row) -> Json {
    let mut object = Map::with_capacity(row.len());
    for (column, value) in table.columns.iter().zip(row) {
        object.insert(column.name.clone(), value_json(value));
    }
    Json::Object(object)
}

/// A value in JSON: exact where JSON numbers would not be (decimals as strings, 64-bit integers as numbers
/// since serde_json keeps them exact), bytes as `\x`-hex text like PostgreSQL prints them.
pub fn value_json(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::UnchangedToast => json!({ "unchanged_toast": true }),
        Value::Bool(v) => json!(v),
        Value::Int16(v) => json!(v),
        Value::Int32(v) => json!(v),
        Value::Int64(v) => json!(v),
        Value::Float32(v) => finite_or_text(f64::from(*v)),
        Value::Float64(v) => finite_or_text(*v),
        Value::Numeric(n) => json!(numeric_text(n)),
        Value::String(v) | Value::Json(v) | Value::Uuid(v) => json!(v),
        Value::Bytes(v) => {
            let hex: String = v.iter().map(|b| format!("{b:02x}")).collect();
            json!(format!("\\x{hex}"))
        }
        Value::Date(days) => json!(days),
        Value::Timestamp(us) | Value::TimestampTz(us) | Value::Time(us) => json!(us),
        // Composite fields in declaration order.
        Value::Array(items) | Value::Record(items) => {
            Json::Array(items.iter().map(value_json).collect())
        }
        Value::TextMap(pairs) => Json::Object(
            pairs
                .iter()
                .map(|(k, v)| (k.clone(), v.as_ref().map_or(Json::Null, |v| json!(v))))
                .collect(),
        ),
        Value::OutOfRange(reason) => json!({ "invalid": reason }),
        Value::Noted(noted) => match &noted.note {
            Note::Reselected => value_json(&noted.value),
            Note::ArrayBounds(bounds) => {
                json!({ "bounds": bounds, "elements": value_json(&noted.value) })
            }
        },
    }
}

/// A numeric as PostgreSQL would print it.
pub fn numeric_text(n: &Numeric) -> String {
    match n {
        Numeric::NaN => "NaN".into(),
        Numeric::PositiveInfinity => "Infinity".into(),
        Numeric::NegativeInfinity => "-Infinity".into(),
        Numeric::Finite { unscaled, scale } => {
            let (sign, digits) = match unscaled.strip_prefix('-') {
                Some(d) => ("-", d),
                None => ("", unscaled.as_str()),
            };
            let scale = *scale as usize;
            if scale == 0 {
                return format!("{sign}{digits}");
            }
            let padded = format!("{digits:0>width$}", width = scale + 1);
            let (whole, fraction) = padded.split_at(padded.len() - scale);
            format!("{sign}{whole}.{fraction}")
        }
    }
}

/// A double, or the text of NaN and the infinities, which JSON numbers cannot hold.
pub fn finite_or_text(v: f64) -> Json {
    if v.is_finite() {
        json!(v)
    } else if v.is_nan() {
        json!("NaN")
    } else if v > 0.0 {
        json!("Infinity")
    } else {
        json!("-Infinity")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numerics_print_like_postgres() {
        let finite = |u: &str, s| {
            numeric_text(&Numeric::Finite {
                unscaled: u.into(),
                scale: s,
            })
        };
        assert_eq!(finite("12345", 2), "123.45");
        assert_eq!(finite("-5", 3), "-0.005");
        assert_eq!(finite("0", 0), "0");
        assert_eq!(finite("700", 0), "700");
        assert_eq!(numeric_text(&Numeric::NaN), "NaN");
    }

    #[test]
    fn values_become_json() {
        assert_eq!(value_json(&Value::Bytes(vec![0, 255])), json!("\\x00ff"));
        assert_eq!(value_json(&Value::Float64(f64::NAN)), json!("NaN"));
        assert_eq!(value_json(&Value::Int64(i64::MAX)), json!(i64::MAX));
        assert_eq!(
            value_json(&Value::OutOfRange("r".into())),
            json!({ "invalid": "r" })
        );
    }
}
