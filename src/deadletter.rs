//! Dead letters: events that could not be published as they are. Each becomes one JSON record on the
//! dead-letter topic with the stage that failed, the reason, the source position and the change itself, so
//! that nothing vanishes and the stream goes on.

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
pub struct DeadLetter {
    pub value: Vec<u8>,
    pub headers: Vec<(&'static str, Vec<u8>)>,
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
        "before": event.before.as_ref().map(|row| row_json(&event.table, row)),
        "after": event.after.as_ref().map(|row| row_json(&event.table, row)),
    });
    let headers = vec![
        ("sluice.dlq.stage", stage.as_str().as_bytes().to_vec()),
        ("sluice.dlq.reason", reason.as_bytes().to_vec()),
        ("sluice.dlq.topic", topic.as_bytes().to_vec()),
        ("sluice.lsn", source.lsn.to_string().into_bytes()),
        ("sluice.txid", source.txid.to_string().into_bytes()),
    ];
    DeadLetter {
        value: serde_json::to_vec(&record).unwrap_or_default(),
        headers,
    }
}

/// Builds the dead letter for a message the broker refused, from what the message itself still carries.
pub fn for_refused_message(
    topic: &str,
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
    let record = json!({
        "stage": Stage::Produce.as_str(),
        "reason": reason,
        "failed_at_ms": failed_at_ms,
        "sluice_version": env!("CARGO_PKG_VERSION"),
        "topic": topic,
        "source": { "lsn": header("sluice.lsn"), "txId": header("sluice.txid") },
        "payload_bytes": payload.map_or(0, <[u8]>::len),
    });
    let mut out_headers = vec![
        (
            "sluice.dlq.stage",
            Stage::Produce.as_str().as_bytes().to_vec(),
        ),
        ("sluice.dlq.reason", reason.as_bytes().to_vec()),
        ("sluice.dlq.topic", topic.as_bytes().to_vec()),
    ];
    for name in ["sluice.lsn", "sluice.txid"] {
        if let Some(value) = header(name) {
            out_headers.push((name, value.into_bytes()));
        }
    }
    DeadLetter {
        value: serde_json::to_vec(&record).unwrap_or_default(),
        headers: out_headers,
    }
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
        Value::Float32(v) => float_json(f64::from(*v)),
        Value::Float64(v) => float_json(*v),
        Value::Numeric(n) => json!(numeric_text(n)),
        Value::String(v) | Value::Json(v) | Value::Uuid(v) => json!(v),
        Value::Bytes(v) => {
            let hex: String = v.iter().map(|b| format!("{b:02x}")).collect();
            json!(format!("\\x{hex}"))
        }
        Value::Date(days) => json!(days),
        Value::Timestamp(us) | Value::TimestampTz(us) => json!(us),
        Value::OutOfRange(reason) => json!({ "invalid": reason }),
    }
}

fn float_json(v: f64) -> Json {
    if v.is_finite() {
        json!(v)
    } else {
        json!(v.to_string())
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
