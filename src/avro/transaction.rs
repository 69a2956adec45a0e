//! Transaction metadata records (Debezium's `provide.transaction.metadata`): a BEGIN and an END record per
//! transaction on `<topic_prefix>.transaction`, keyed by the transaction id; END counts the transaction's
//! change events, in total and per table.

use std::convert::Infallible;

use serde_json::json;

use super::binary::{write_blocks, write_long, write_string, write_union_branch};
use super::message::fixed;
use super::schema::TableSchemas;

/// One transaction boundary.
#[derive(Clone, Copy, Debug)]
pub struct TransactionBoundary<'a> {
    /// `<txid>:<commit LSN>`, as in the events' transaction blocks.
    pub id: &'a str,
    /// The transaction's commit time, milliseconds since the epoch.
    pub ts_ms: i64,
    /// None for BEGIN; for END the change events per table (`schema.table`), in first-seen order.
    pub counts: Option<&'a [(String, u64)]>,
}

impl TransactionBoundary<'_> {
    pub fn status(&self) -> &'static str {
        if self.counts.is_some() {
            "END"
        } else {
            "BEGIN"
        }
    }
}

/// The schemas of the transaction topic (Debezium's field names).
pub fn transaction_schemas(topic: &str) -> TableSchemas {
    let key = json!({
        "type": "record",
        "name": "sluice.TransactionMetadataKey",
        "fields": [{"name": "id", "type": "string"}],
    });
    let value = json!({
        "type": "record",
        "name": "sluice.TransactionMetadataValue",
        "fields": [
            {"name": "status", "type": "string"},
            {"name": "id", "type": "string"},
            {"name": "ts_ms", "type": "long"},
            {"name": "event_count", "type": ["null", "long"], "default": null},
            {"name": "data_collections", "type": ["null", {"type": "array", "items": {
                "type": "record",
                "name": "sluice.DataCollectionCount",
                "fields": [
                    {"name": "data_collection", "type": "string"},
                    {"name": "event_count", "type": "long"},
                ],
            }}], "default": null},
        ],
    });
    TableSchemas {
        topic: topic.to_owned(),
        key: Some(fixed(key)),
        value: fixed(value),
    }
}

pub fn encode_transaction_key(boundary: &TransactionBoundary, out: &mut Vec<u8>) {
    write_string(boundary.id, out);
}

pub fn encode_transaction(boundary: &TransactionBoundary, out: &mut Vec<u8>) {
    write_string(boundary.status(), out);
    write_string(boundary.id, out);
    write_long(boundary.ts_ms, out);
    let Some(counts) = boundary.counts else {
        write_union_branch(0, out);
        write_union_branch(0, out);
        return;
    };
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    write_union_branch(1, out);
    write_long(count(counts.iter().map(|(_, n)| n).sum()), out);
    write_union_branch(1, out);
    let written = write_blocks(counts, out, |(table, n), out| {
        write_string(table, out);
        write_long(count(*n), out);
        Ok::<(), Infallible>(())
    });
    written.unwrap_or_else(|never| match never {});
}

#[cfg(test)]
mod tests {
    use apache_avro::types::Value as Avro;

    use super::*;

    fn decode(boundary: &TransactionBoundary) -> Vec<(String, Avro)> {
        let schemas = transaction_schemas("shop.transaction");
        let mut out = Vec::new();
        encode_transaction(boundary, &mut out);
        let mut reader = &out[..];
        let decoded =
            apache_avro::from_avro_datum(&schemas.value.schema, &mut reader, None).unwrap();
        assert!(reader.is_empty());
        let Avro::Record(fields) = decoded else {
            panic!("{decoded:?}")
        };
        let mut key = Vec::new();
        encode_transaction_key(boundary, &mut key);
        assert_eq!(
            apache_avro::from_avro_datum(&schemas.key.unwrap().schema, &mut &key[..], None)
                .unwrap(),
            Avro::Record(vec![("id".into(), Avro::String(boundary.id.into()))])
        );
        fields
    }

    #[test]
    fn begin_and_end_decode_with_their_schema() {
        let begin = decode(&TransactionBoundary {
            id: "771:1234",
            ts_ms: 1_700_000_000_123,
            counts: None,
        });
        assert_eq!(begin[0].1, Avro::String("BEGIN".into()));
        assert_eq!(begin[1].1, Avro::String("771:1234".into()));
        assert_eq!(begin[2].1, Avro::Long(1_700_000_000_123));
        assert_eq!(begin[3].1, Avro::Union(0, Box::new(Avro::Null)));
        assert_eq!(begin[4].1, Avro::Union(0, Box::new(Avro::Null)));

        let counts = [
            ("public.orders".to_owned(), 2),
            ("public.items".to_owned(), 5),
        ];
        let end = decode(&TransactionBoundary {
            id: "771:1234",
            ts_ms: 1_700_000_000_123,
            counts: Some(&counts),
        });
        assert_eq!(end[0].1, Avro::String("END".into()));
        assert_eq!(end[3].1, Avro::Union(1, Box::new(Avro::Long(7))));
        let collection = |name: &str, n: i64| {
            Avro::Record(vec![
                ("data_collection".into(), Avro::String(name.into())),
                ("event_count".into(), Avro::Long(n)),
            ])
        };
        assert_eq!(
            end[4].1,
            Avro::Union(
                1,
                Box::new(Avro::Array(vec![
                    collection("public.orders", 2),
                    collection("public.items", 5)
                ]))
            )
        );
        let empty = decode(&TransactionBoundary {
            id: "1:2",
            ts_ms: 0,
            counts: Some(&[]),
        });
        assert_eq!(empty[4].1, Avro::Union(1, Box::new(Avro::Array(vec![]))));
    }
}
