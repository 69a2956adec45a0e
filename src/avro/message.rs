//! Logical decoding messages (`pg_logical_emit_message`, the outbox pattern) as Avro: one fixed schema
//! for every message, the prefix as the key.

use serde_json::json;

use super::binary::{write_boolean, write_bytes, write_long, write_string, write_union_branch};
use super::schema::{AvroSchema, TableSchemas};
use sluice_core::event::DecodingMessage;

/// The schemas of the messages topic.
pub fn message_schemas(topic: &str) -> TableSchemas {
    let value = json!({
        "type": "record",
        "name": "Message",
        "namespace": "sluice.postgres",
        "fields": [
            {"name": "prefix", "type": "string"},
            {"name": "content", "type": "bytes"},
            {"name": "transactional", "type": "boolean"},
            {"name": "db", "type": "string"},
            {"name": "txId", "type": ["null", "long"], "default": null},
            {"name": "lsn", "type": "long"},
            {"name": "ts_ms", "type": ["null", "long"], "default": null},
        ],
    });
    TableSchemas {
        topic: topic.to_owned(),
        key: Some(fixed(json!("string"))),
        value: fixed(value),
    }
}

/// A schema sluice writes by hand: parsed once, known to be valid.
pub(super) fn fixed(schema: serde_json::Value) -> AvroSchema {
    let json = schema.to_string();
    let schema =
        apache_avro::Schema::parse_str(&json).expect("sluice's fixed schemas are valid Avro");
    AvroSchema { json, schema }
}

pub fn encode_message_key(message: &DecodingMessage, out: &mut Vec<u8>) {
    write_string(&message.prefix, out);
}

/// The message in the value schema above. `ts_ms` is the commit time of a transactional message's
/// transaction; a non-transactional one has none.
pub fn encode_message(message: &DecodingMessage, out: &mut Vec<u8>) {
    write_string(&message.prefix, out);
    write_bytes(&message.content, out);
    write_boolean(message.transactional, out);
    write_string(&message.database, out);
    write_optional_long(message.txid.map(|txid| txid as i64), out);
    // WAL positions stay far below 2^63.
    write_long(message.lsn.0 as i64, out);
    write_optional_long(message.commit_time_us.map(|us| us.div_euclid(1000)), out);
}

/// A `["null", "long"]` union.
pub(super) fn write_optional_long(value: Option<i64>, out: &mut Vec<u8>) {
    match value {
        Some(value) => {
            write_union_branch(1, out);
            write_long(value, out);
        }
        None => write_union_branch(0, out),
    }
}

#[cfg(test)]
mod tests {
    use apache_avro::types::Value as Avro;

    use super::*;
    use sluice_core::event::Lsn;

    #[test]
    fn a_message_decodes_with_its_schema() {
        let schemas = message_schemas("shop.message");
        let message = DecodingMessage {
            database: "shop".into(),
            prefix: "outbox".into(),
            content: b"{\"order\": 1}".to_vec(),
            transactional: true,
            txid: Some(771),
            lsn: Lsn(0x16_B374_D848),
            commit_time_us: Some(1_700_000_000_123_456),
        };
        let mut out = Vec::new();
        encode_message(&message, &mut out);
        let decoded =
            apache_avro::from_avro_datum(&schemas.value.schema, &mut &out[..], None).unwrap();
        let Avro::Record(fields) = decoded else {
            panic!("{decoded:?}")
        };
        let field = |name: &str| fields.iter().find(|(n, _)| n == name).unwrap().1.clone();
        assert_eq!(field("prefix"), Avro::String("outbox".into()));
        assert_eq!(field("content"), Avro::Bytes(b"{\"order\": 1}".to_vec()));
        assert_eq!(field("transactional"), Avro::Boolean(true));
        assert_eq!(field("txId"), Avro::Union(1, Box::new(Avro::Long(771))));
        assert_eq!(field("lsn"), Avro::Long(0x16_B374_D848));
        assert_eq!(
            field("ts_ms"),
            Avro::Union(1, Box::new(Avro::Long(1_700_000_000_123)))
        );

        let mut key = Vec::new();
        encode_message_key(&message, &mut key);
        let key_schema = &schemas.key.unwrap().schema;
        assert_eq!(
            apache_avro::from_avro_datum(key_schema, &mut &key[..], None).unwrap(),
            Avro::String("outbox".into())
        );
    }
}
