//! Dead letters: changes that could not be published as they are. Each becomes one `sluice.DeadLetter`
//! record (`schemas/dead_letter.avsc`) on the dead-letter topic, framed like every other message, with the
//! stage that failed, the error, the source position and the change itself as JSON; the same facts go in
//! the message headers, so that nothing vanishes and the stream goes on.

use std::collections::HashMap;
use std::sync::OnceLock;

use apache_avro::types::Value as Avro;
use apache_avro::Schema;
use serde_json::{json, Map, Value as Json};
use sluice_core::json::{row_json, value_json};

use sluice_core::event::{ChangeEvent, DocumentChange, Row, Table, UndecodableChange};

/// The record format, as documented in `schemas/dead_letter.avsc`.
pub const SCHEMA_TEXT: &str = include_str!("../schemas/dead_letter.avsc");

/// The parsed dead-letter schema.
pub fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        Schema::parse_str(SCHEMA_TEXT).expect("schemas/dead_letter.avsc is valid Avro")
    })
}

/// Where in the pipeline a change failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// The source value has no event form (a value the source could not represent).
    Decode,
    /// The event does not fit its Avro schema.
    Encode,
    /// The event breaks its topic's contract.
    Validate,
    /// The schema registry refused the table's schema.
    Register,
    /// The broker refused the message.
    Produce,
    /// A transform failed on the event.
    Transform,
    /// A signal could not be acted on.
    Signal,
}

impl Stage {
    pub const ALL: [Stage; 7] = [
        Stage::Decode,
        Stage::Encode,
        Stage::Validate,
        Stage::Register,
        Stage::Produce,
        Stage::Transform,
        Stage::Signal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Encode => "encode",
            Stage::Validate => "validate",
            Stage::Register => "register",
            Stage::Produce => "produce",
            Stage::Transform => "transform",
            Stage::Signal => "signal",
        }
    }

    fn index(self) -> u32 {
        Stage::ALL.iter().position(|s| *s == self).unwrap_or(0) as u32
    }
}

/// Where the failed change is in the source's log.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SourcePosition {
    pub connector: &'static str,
    pub db: Option<String>,
    pub lsn: Option<String>,
    pub commit_lsn: Option<String>,
    pub txid: Option<u64>,
    pub resume_token: Option<String>,
}

/// One dead letter, field for field as in `schemas/dead_letter.avsc`.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    pub failed_at_ms: i64,
    /// The instance's logical name (`sink.topic_prefix`).
    pub instance: String,
    pub stage: Stage,
    pub error: String,
    pub topic: String,
    pub collection: Option<String>,
    pub source: SourcePosition,
    pub op: Option<String>,
    pub key: Option<Json>,
    pub change: Option<Json>,
    pub original_key: Option<Vec<u8>>,
    pub original_value: Option<Vec<u8>>,
    pub original_headers: Vec<(String, String)>,
}

/// What failed, where and when: the part every dead letter has.
#[derive(Clone, Copy, Debug)]
pub struct Failure<'a> {
    pub stage: Stage,
    /// The topic the change was meant for.
    pub topic: &'a str,
    pub error: &'a str,
    /// The instance's logical name (`sink.topic_prefix`).
    pub instance: &'a str,
    /// Debezium's name of the source connector (`postgresql`, `mongodb`).
    pub connector: &'static str,
    pub failed_at_ms: i64,
}

impl DeadLetter {
    fn new(failure: Failure<'_>, source: SourcePosition) -> DeadLetter {
        DeadLetter {
            failed_at_ms: failure.failed_at_ms,
            instance: failure.instance.to_owned(),
            stage: failure.stage,
            error: failure.error.to_owned(),
            topic: failure.topic.to_owned(),
            collection: None,
            source,
            op: None,
            key: None,
            change: None,
            original_key: None,
            original_value: None,
            original_headers: Vec::new(),
        }
    }

    /// The dead letter of a change event.
    pub fn for_event(event: &ChangeEvent, failure: Failure<'_>) -> DeadLetter {
        let source = &event.source;
        let position = SourcePosition {
            connector: "postgresql",
            db: Some(source.database.to_string()),
            lsn: Some(source.lsn.to_string()),
            commit_lsn: Some(source.commit_lsn.to_string()),
            txid: source.txid,
            resume_token: None,
        };
        DeadLetter {
            collection: Some(event.table.qualified_name()),
            op: Some(event.op.code().to_owned()),
            key: event.key_row().and_then(|row| key_json(&event.table, row)),
            change: Some(json!({
                "op": event.op.code(),
                "before": event.before.as_ref().map(|row| row_json(&event.table, row)),
                "after": event.after.as_ref().map(|row| row_json(&event.table, row)),
            })),
            ..DeadLetter::new(failure, position)
        }
    }

    /// The dead letter of a MongoDB document change, its documents as Extended JSON.
    pub fn for_document(change: &DocumentChange, failure: Failure<'_>) -> DeadLetter {
        let position = SourcePosition {
            connector: "mongodb",
            db: Some(change.database.clone()),
            resume_token: change.source.resume_token.clone(),
            ..SourcePosition::default()
        };
        let parse = |text: &str| {
            serde_json::from_str(text).unwrap_or_else(|_| Json::String(text.to_owned()))
        };
        DeadLetter {
            collection: Some(change.namespace()),
            op: Some(change.op.code().to_owned()),
            key: Some(parse(&change.key)),
            change: Some(json!({
                "op": change.op.code(),
                "before": change.before.as_deref().map(parse),
                "after": change.after.as_deref().map(parse),
            })),
            ..DeadLetter::new(failure, position)
        }
    }

    /// The dead letter of a log entry that has no event form, with the entry as the source printed it.
    pub fn for_undecodable(change: &UndecodableChange, failure: Failure<'_>) -> DeadLetter {
        let position = SourcePosition {
            connector: change.connector,
            resume_token: change.resume_token.clone(),
            ..SourcePosition::default()
        };
        DeadLetter {
            collection: change.namespace.clone(),
            change: Some(
                serde_json::from_str(&change.raw)
                    .unwrap_or_else(|_| Json::String(change.raw.clone())),
            ),
            ..DeadLetter::new(failure, position)
        }
    }

    /// The dead letter of a message that could not be published (the broker refused it, or the registry
    /// refused the schema of a record that is not a table change), from what the message carries: its
    /// framed key and value bytes and its headers, so that it can be decoded and replayed.
    pub fn for_refused_message(
        failure: Failure<'_>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(String, Vec<u8>)],
    ) -> DeadLetter {
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        let position = SourcePosition {
            connector: failure.connector,
            db: None,
            lsn: header("sluice.lsn"),
            commit_lsn: header("sluice.commit_lsn"),
            txid: header("sluice.txid").and_then(|t| t.parse().ok()),
            resume_token: header("sluice.resume_token"),
        };
        DeadLetter {
            original_key: key.map(<[u8]>::to_vec),
            original_value: value.map(<[u8]>::to_vec),
            original_headers: headers
                .iter()
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
            ..DeadLetter::new(failure, position)
        }
    }

    /// The same facts as message headers, for consumers that route on headers without decoding.
    pub fn headers(&self) -> Vec<(String, Vec<u8>)> {
        let mut headers: Vec<(String, Vec<u8>)> = vec![
            ("sluice.dlq.stage".into(), self.stage.as_str().into()),
            ("sluice.dlq.error".into(), self.error.clone().into_bytes()),
            ("sluice.dlq.topic".into(), self.topic.clone().into_bytes()),
            (
                "sluice.dlq.failed_at".into(),
                self.failed_at_ms.to_string().into_bytes(),
            ),
            (
                "sluice.dlq.instance".into(),
                self.instance.clone().into_bytes(),
            ),
            (
                "sluice.dlq.version".into(),
                env!("CARGO_PKG_VERSION").into(),
            ),
            ("sluice.connector".into(), self.source.connector.into()),
        ];
        let optional = [
            ("sluice.dlq.collection", self.collection.clone()),
            ("sluice.lsn", self.source.lsn.clone()),
            ("sluice.commit_lsn", self.source.commit_lsn.clone()),
            ("sluice.txid", self.source.txid.map(|t| t.to_string())),
            ("sluice.resume_token", self.source.resume_token.clone()),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                headers.push((name.into(), value.into_bytes()));
            }
        }
        headers
    }

    /// The Avro datum (no framing header).
    pub fn encode(&self) -> Vec<u8> {
        let optional_string = |value: Option<String>| match value {
            Some(text) => Avro::Union(1, Box::new(Avro::String(text))),
            None => Avro::Union(0, Box::new(Avro::Null)),
        };
        let optional_bytes = |value: &Option<Vec<u8>>| match value {
            Some(bytes) => Avro::Union(1, Box::new(Avro::Bytes(bytes.clone()))),
            None => Avro::Union(0, Box::new(Avro::Null)),
        };
        let json_text = |value: &Option<Json>| optional_string(value.as_ref().map(Json::to_string));
        let source = &self.source;
        let record = Avro::Record(vec![
            ("failed_at".into(), Avro::TimestampMillis(self.failed_at_ms)),
            (
                "sluice".into(),
                Avro::Record(vec![
                    ("name".into(), Avro::String(self.instance.clone())),
                    (
                        "version".into(),
                        Avro::String(env!("CARGO_PKG_VERSION").into()),
                    ),
                ]),
            ),
            (
                "stage".into(),
                Avro::Enum(self.stage.index(), self.stage.as_str().into()),
            ),
            ("error".into(), Avro::String(self.error.clone())),
            ("topic".into(), Avro::String(self.topic.clone())),
            (
                "collection".into(),
                optional_string(self.collection.clone()),
            ),
            (
                "source".into(),
                Avro::Record(vec![
                    ("connector".into(), Avro::String(source.connector.into())),
                    ("db".into(), optional_string(source.db.clone())),
                    ("lsn".into(), optional_string(source.lsn.clone())),
                    (
                        "commit_lsn".into(),
                        optional_string(source.commit_lsn.clone()),
                    ),
                    (
                        "txid".into(),
                        match source.txid {
                            // txids are 32-bit epochs plus a 32-bit counter: far below 2^63.
                            Some(txid) => Avro::Union(1, Box::new(Avro::Long(txid as i64))),
                            None => Avro::Union(0, Box::new(Avro::Null)),
                        },
                    ),
                    (
                        "resume_token".into(),
                        optional_string(source.resume_token.clone()),
                    ),
                ]),
            ),
            ("op".into(), optional_string(self.op.clone())),
            ("key".into(), json_text(&self.key)),
            ("change".into(), json_text(&self.change)),
            ("original_key".into(), optional_bytes(&self.original_key)),
            (
                "original_value".into(),
                optional_bytes(&self.original_value),
            ),
            (
                "original_headers".into(),
                Avro::Map(
                    self.original_headers
                        .iter()
                        .map(|(k, v)| (k.clone(), Avro::String(v.clone())))
                        .collect::<HashMap<_, _>>(),
                ),
            ),
            // Filled in by `shrink`.
            ("omitted".into(), Avro::Array(Vec::new())),
        ]);
        // Built field for field from the schema above: a mismatch is a bug the tests catch.
        apache_avro::to_avro_datum(schema(), record).expect("a dead letter fits its own schema")
    }
}

/// Fields that carry the change itself; everything else in a dead letter is small.
const BULKY_FIELDS: [&str; 4] = [
    "change",
    "original_key",
    "original_value",
    "original_headers",
];

/// A dead letter (its Avro datum) without the change itself — the JSON, the original bytes and headers —
/// with `omitted` naming what was left out: the form sent when the whole letter is too large for the
/// broker. The key, the error and the source position stay, so the change can still be found and replayed
/// from the database. None when there is nothing left to leave out.
pub fn shrink(datum: &[u8]) -> Option<Vec<u8>> {
    let Avro::Record(mut fields) =
        apache_avro::from_avro_datum(schema(), &mut &datum[..], None).ok()?
    else {
        return None;
    };
    let mut omitted = Vec::new();
    for (name, value) in fields.iter_mut() {
        if !BULKY_FIELDS.contains(&name.as_str()) {
            continue;
        }
        let empty = match value {
            Avro::Union(_, inner) if **inner == Avro::Null => true,
            Avro::Map(entries) => entries.is_empty(),
            _ => false,
        };
        if !empty {
            omitted.push(Avro::String(name.clone()));
            *value = match value {
                Avro::Map(_) => Avro::Map(HashMap::new()),
                _ => Avro::Union(0, Box::new(Avro::Null)),
            };
        }
    }
    if omitted.is_empty() {
        return None;
    }
    for (name, value) in fields.iter_mut() {
        if name == "omitted" {
            *value = Avro::Array(omitted.clone());
        }
    }
    apache_avro::to_avro_datum(schema(), Avro::Record(fields)).ok()
}

/// The key columns of a row, or None for a table without a key.
fn key_json(table: &Table, row: &Row) -> Option<Json> {
    let key: Map<String, Json> = table
        .key_columns()
        .map(|(i, column)| (column.name.clone(), value_json(&row[i])))
        .collect();
    (!key.is_empty()).then_some(Json::Object(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(letter: &DeadLetter) -> Json {
        crate::tail::decode_datum(SCHEMA_TEXT, &letter.encode()).unwrap()
    }

    #[test]
    fn a_refused_message_keeps_its_bytes_and_headers() {
        let key = [0, 0, 0, 0, 7, 2];
        let payload = [0, 0, 0, 1, 2, 9, 9, 9];
        let headers = vec![
            ("sluice.lsn".to_owned(), b"0/16B3748".to_vec()),
            ("sluice.txid".to_owned(), b"771".to_vec()),
        ];
        let failure = Failure {
            stage: Stage::Produce,
            topic: "shop.public.orders",
            error: "too large",
            instance: "shop",
            connector: "postgresql",
            failed_at_ms: 5,
        };
        let letter = DeadLetter::for_refused_message(failure, Some(&key), Some(&payload), &headers);
        let record = decode(&letter);
        assert_eq!(record["stage"], json!("produce"));
        assert_eq!(record["sluice"]["name"], json!("shop"));
        assert_eq!(record["source"]["lsn"], json!("0/16B3748"));
        assert_eq!(record["source"]["txid"], json!(771));
        assert_eq!(record["original_value"], json!("0000000102090909"));
        assert_eq!(record["original_headers"]["sluice.lsn"], json!("0/16B3748"));
        let sent = letter.headers();
        let header = |name: &str| sent.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        assert_eq!(header("sluice.dlq.topic").unwrap(), b"shop.public.orders");
        assert_eq!(header("sluice.txid").unwrap(), b"771");
        assert_eq!(header("sluice.dlq.stage").unwrap(), b"produce");

        let small = shrink(&letter.encode()).unwrap();
        let record = crate::tail::decode_datum(SCHEMA_TEXT, &small).unwrap();
        assert_eq!(record["original_value"], Json::Null);
        assert_eq!(record["original_headers"], json!({}));
        assert_eq!(
            record["omitted"],
            json!(["original_key", "original_value", "original_headers"])
        );
        assert_eq!(record["source"]["lsn"], json!("0/16B3748"));
        assert_eq!(record["error"], json!("too large"));
        assert!(shrink(&small).is_none(), "the small form is final");
    }

    #[test]
    fn every_stage_is_a_symbol_of_the_schema() {
        let Schema::Record(record) = schema() else {
            panic!("not a record")
        };
        let stage = record.fields.iter().find(|f| f.name == "stage").unwrap();
        let Schema::Enum(symbols) = &stage.schema else {
            panic!("stage is not an enum")
        };
        let ours: Vec<&str> = Stage::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(symbols.symbols, ours);
    }
}
