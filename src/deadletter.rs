//! Dead letters: events that could not be published as they are. Each becomes one JSON record on the
//! dead-letter topic with the stage that failed, the reason, the source position and the change itself, so
//! that nothing vanishes and the stream goes on.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde_json::{json, Map, Value as Json};

use crate::event::{ChangeEvent, Numeric, Row, Table, Value};

/// Where in the pipeline an event failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The event does not fit its Avro schema.
    Encode,
    /// The schema registry refused the table's schema.
    Register,
    /// The broker refused the message.
    Produce,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Encode => "encode",
            Stage::Register => "register",
            Stage::Produce => "produce",
        }
    }
}

/// A dead letter ready to produce.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Builds the dead letter for `event`, which was meant for `topic`.
pub fn for_event(
    event: &ChangeEvent,
    topic: &str,
    stage: Stage,
    reason: &str,
    failed_at_ms: i64,
) -> DeadLetter {
    let source = &event.source;
    let record = json!({
        "stage": stage.as_str(),
        "reason": reason,
        "failed_at_ms": failed_at_ms,
        "sluice_version": env!("CARGO_PKG_VERSION"),
        "topic": topic,
        "table": event.table.qualified_name(),
        "op": event.op.code(),
        "source": {
            "db": source.database,
            "schema": event.table.schema,
            "table": event.table.name,
            "txId": source.txid,
            "lsn": source.lsn.to_string(),
            "commit_lsn": source.commit_lsn.to_string(),
            "ts_ms": source.commit_time_us.div_euclid(1000),
        },
        "key": event.key_row().and_then(|row| key_json(&event.table, row)),
        "before": event.before.as_ref().map(|row| row_json(&event.table, row)),
        "after": event.after.as_ref().map(|row| row_json(&event.table, row)),
    });
    let mut headers = letter_headers(stage, reason, topic);
    headers.push(("sluice.lsn".into(), source.lsn.to_string().into_bytes()));
    if let Some(txid) = source.txid {
        headers.push(("sluice.txid".into(), txid.to_string().into_bytes()));
    }
    DeadLetter {
        value: serde_json::to_vec(&record).unwrap_or_default(),
        headers,
    }
}

/// Builds the dead letter for a message that could not be published (the broker refused it, or, for a
/// logical decoding message, its schema), from what the message itself carries: its key and value bytes
/// (Confluent-framed Avro, base64) and its headers, so that it can be decoded and replayed.
pub fn for_refused_message(
    stage: Stage,
    topic: &str,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    headers: &[(String, Vec<u8>)],
    reason: &str,
    failed_at_ms: i64,
) -> DeadLetter {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    let original_headers: Map<String, Json> = headers
        .iter()
        .map(|(k, v)| (k.clone(), json!(String::from_utf8_lossy(v))))
        .collect();
    let record = json!({
        "stage": stage.as_str(),
        "reason": reason,
        "failed_at_ms": failed_at_ms,
        "sluice_version": env!("CARGO_PKG_VERSION"),
        "topic": topic,
        "source": { "lsn": header("sluice.lsn"), "txId": header("sluice.txid") },
        "key_schema_id": key.and_then(confluent_schema_id),
        "key_base64": key.map(|k| BASE64.encode(k)),
        "value_schema_id": payload.and_then(confluent_schema_id),
        "value_base64": payload.map(|p| BASE64.encode(p)),
        "headers": original_headers,
    });
    let mut out_headers = letter_headers(stage, reason, topic);
    for name in ["sluice.lsn", "sluice.txid"] {
        if let Some(value) = header(name) {
            out_headers.push((name.into(), value.into_bytes()));
        }
    }
    DeadLetter {
        value: serde_json::to_vec(&record).unwrap_or_default(),
        headers: out_headers,
    }
}

/// The headers every dead letter has: what failed, why, and where the message was meant to go.
fn letter_headers(stage: Stage, reason: &str, topic: &str) -> Vec<(String, Vec<u8>)> {
    vec![
        (
            "sluice.dlq.stage".into(),
            stage.as_str().as_bytes().to_vec(),
        ),
        ("sluice.dlq.reason".into(), reason.as_bytes().to_vec()),
        ("sluice.dlq.topic".into(), topic.as_bytes().to_vec()),
    ]
}

/// The schema id of a Confluent-framed message (magic byte 0, then a big-endian id).
fn confluent_schema_id(bytes: &[u8]) -> Option<u32> {
    match bytes {
        [0, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// Fields that carry the change itself; everything else in a dead letter is small.
const BULKY_FIELDS: [&str; 4] = ["before", "after", "key_base64", "value_base64"];

/// A smaller form of a dead letter the broker refused as too large: the row data is left out, the key, the
/// reason and the source position stay, so the change can still be found and replayed from the database.
/// None when the letter is already the smaller form.
pub fn shrink(letter: &DeadLetter) -> Option<DeadLetter> {
    let mut record: Map<String, Json> = serde_json::from_slice(&letter.value).ok()?;
    if record.contains_key("omitted") {
        return None;
    }
    let omitted: Vec<&str> = BULKY_FIELDS
        .into_iter()
        .filter(|field| record.remove(*field).is_some())
        .collect();
    record.insert("omitted".into(), json!(omitted));
    Some(DeadLetter {
        value: serde_json::to_vec(&record).ok()?,
        headers: letter.headers.clone(),
    })
}

/// The key columns of a row, or None for a table without a key.
fn key_json(table: &Table, row: &Row) -> Option<Json> {
    let key: Map<String, Json> = table
        .key_columns()
        .map(|(i, column)| (column.name.clone(), value_json(&row[i])))
        .collect();
    (!key.is_empty()).then_some(Json::Object(key))
}

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
        Value::Float32(v) => crate::tail::finite_or_text(f64::from(*v)),
        Value::Float64(v) => crate::tail::finite_or_text(*v),
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
    fn a_refused_message_keeps_its_bytes_and_headers() {
        let key = [0, 0, 0, 0, 7, 2];
        let payload = [0, 0, 0, 1, 2, 9, 9, 9];
        let headers = vec![
            ("sluice.lsn".to_owned(), b"0/16B3748".to_vec()),
            ("sluice.txid".to_owned(), b"771".to_vec()),
        ];
        let letter = for_refused_message(
            Stage::Produce,
            "shop.public.orders",
            Some(&key),
            Some(&payload),
            &headers,
            "too large",
            5,
        );
        let record: Json = serde_json::from_slice(&letter.value).unwrap();
        assert_eq!(record["key_schema_id"], json!(7));
        assert_eq!(record["value_schema_id"], json!(258));
        let value = BASE64
            .decode(record["value_base64"].as_str().unwrap())
            .unwrap();
        assert_eq!(value, payload);
        assert_eq!(record["headers"]["sluice.lsn"], json!("0/16B3748"));
        assert_eq!(record["source"]["txId"], json!("771"));
        assert!(letter
            .headers
            .iter()
            .any(|(k, v)| k == "sluice.dlq.topic" && v == b"shop.public.orders"));

        let small = shrink(&letter).unwrap();
        let record: Json = serde_json::from_slice(&small.value).unwrap();
        assert!(record.get("value_base64").is_none());
        assert_eq!(record["omitted"], json!(["key_base64", "value_base64"]));
        assert_eq!(record["source"]["lsn"], json!("0/16B3748"));
        assert!(shrink(&small).is_none(), "the small form is final");
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
