//! PostgreSQL logical decoding with the built-in `pgoutput` plugin.
//!
//! `pgoutput` decodes the plugin's messages (pure, no I/O); `types` maps column types and text values onto
//! the event model (numbers in `types_numeric`, dates and times in `types_temporal`), with `type_catalog`
//! looking up the types a message names only by OID and `structured` splitting array, composite and hstore text; `replication` speaks the streaming-replication protocol; `connection` parses the URL and its TLS settings; `catalog` manages the slot, the
//! publication and table metadata over an ordinary connection; `snapshot` reads the rows already in the
//! tables (`snapshot_plan` shares the tables and key ranges out, `snapshot_copy` reads them with COPY),
//! `snapshot_progress` records how far it got and `overlap` has the stream leave out what a
//! carried-on snapshot's rows already hold; `reader` prepares the slot (as `start` decides) and streams,
//! `decoder` turning the stream's messages into events (both pure, no I/O); `source` puts it all on the
//! source seam, and `preflight` checks for `sluice check` what a run needs.

pub mod catalog;
pub mod config;
pub mod connection;
pub mod decoder;
pub mod overlap;
pub mod pgoutput;
pub mod preflight;
pub mod reader;
pub mod replication;
pub mod snapshot;
mod snapshot_copy;
mod snapshot_plan;
mod snapshot_progress;
pub mod source;
mod start;
pub mod structured;
pub mod type_catalog;
pub mod types;
mod types_numeric;
mod types_temporal;
