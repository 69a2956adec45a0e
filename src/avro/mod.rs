//! Avro for change events: schemas generated from a [`Table`](crate::event::Table), and a binary encoder
//! that writes keys and Debezium-style envelopes straight from the event model.
//!
//! The encoder does not build `apache_avro::types::Value` trees: that would allocate per field on the hot
//! path. apache-avro parses every generated schema (a schema it rejects is a [`SchemaError`]) and, in the
//! tests, decodes what the encoder writes.
//!
//! Names (topics, namespaces, fields) follow the rule documented in [`naming`].

mod binary;
mod decimal;
mod encode;
mod message;
pub mod naming;
mod schema;
mod transaction;

#[cfg(test)]
mod roundtrip_tests;

pub use decimal::DecimalError;
pub use encode::{
    encode_envelope, encode_key, transaction_id, EncodeError, EncodeReason, EnvelopeContext,
};
pub use message::{encode_message, encode_message_key, message_schemas};
pub use naming::topic_name;
pub use schema::{
    table_schemas, AvroSchema, SchemaError, TableSchemas, SOURCE_RECORD, VARIABLE_SCALE_DECIMAL,
};
pub use transaction::{
    encode_transaction, encode_transaction_key, transaction_schemas, TransactionBoundary,
};

/// Confluent wire format header: magic byte 0 + schema id as 4-byte big-endian.
pub fn write_confluent_header(schema_id: u32, out: &mut Vec<u8>) {
    out.push(0);
    out.extend_from_slice(&schema_id.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confluent_header_is_magic_byte_and_big_endian_id() {
        let mut out = vec![9];
        write_confluent_header(0x0102_0304, &mut out);
        assert_eq!(out, [9, 0, 1, 2, 3, 4]);
    }
}
