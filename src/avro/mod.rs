//! Avro for change events: schemas generated from a [`Table`](sluice_core::event::Table), and a binary encoder
//! that writes keys and Debezium-style envelopes straight from the event model.
//!
//! The encoder does not build `apache_avro::types::Value` trees: that would allocate per field on the hot
//! path. apache-avro parses every generated schema (a schema it rejects is a [`SchemaError`]) and, in the
//! tests, decodes what the encoder writes.
//!
//! Names (topics, namespaces, fields) follow the rule documented in [`naming`]; [`framing`] writes the header
//! that tells a consumer which schema wrote a message.

mod binary;
mod column_types;
pub mod debezium;
pub mod decimal;
mod document;
mod encode;
mod flat;
mod flat_document;
pub mod framing;
mod message;
pub mod naming;
mod outbox;
mod placeholder;
mod schema;
mod transaction;
mod typed_document;
mod unencodable;

#[cfg(test)]
mod roundtrip_tests;

pub use debezium::LogicalTypes;
pub use decimal::DecimalError;
pub use document::{
    document_schemas, document_topic, encode_document_envelope, encode_document_key,
    typed_document_schemas, MONGODB_SOURCE_RECORD,
};
pub use encode::{
    encode_envelope, encode_key, transaction_id, EncodeError, EncodeReason, EnvelopeContext,
};
pub use flat::{encode_flat, encode_key_with_table, AddField, Flat, DELETED_FIELD};
pub use flat_document::{
    encode_flat_document, encode_shaped_document_key, shaped_document_schemas, DocumentShape,
};
pub use framing::{Fingerprint, SchemaRef};
pub use message::{encode_message, encode_message_key, message_schemas};
pub use naming::{legal_topic, topic_name, topic_namespace};
pub use outbox::{encode_outbox, encode_outbox_key, outbox_schemas, typed_outbox_schemas};
pub use schema::{
    shaped_table_schemas, table_schemas, table_schemas_as, AvroSchema, SchemaError, Shape,
    TableSchemas, SOURCE_RECORD, VARIABLE_SCALE_DECIMAL,
};
pub use transaction::{
    encode_transaction, encode_transaction_key, transaction_schemas, TransactionBoundary,
};
pub use typed_document::TypedDocument;
pub use unencodable::{unencodable_values, with_nulls, Unencodable};
