//! sluice: change-data capture from a database's replication log to Avro events on a Kafka-protocol broker.
//!
//! The modules follow the data: `connectors` read a source's log into the change-event model (`event`);
//! `avro` encodes events (schemas through `registry`); `sink` publishes them; `positions` remembers what the
//! broker acknowledged; `pipeline` wires those together; `config`, `preflight` and `operate` (`sluice snapshot`, `sluice status`) face the operator, and
//! `sources` is where `[source]` becomes its connector, for `pipeline` and `preflight` alike.

pub mod api;
pub mod avro;
pub mod config;
pub mod contracts;
pub mod deadletter;
pub mod metrics;
pub mod operate;
pub mod pipeline;
pub mod preflight;
pub mod registry;
pub mod shutdown;
pub mod sink;
pub mod sources;
pub mod tail;
pub mod transforms;
