//! PostgreSQL logical decoding with the built-in `pgoutput` plugin.
//!
//! `pgoutput` decodes the plugin's messages (pure, no I/O); `types` maps column types and text values onto
//! the event model (numbers in `types_numeric`, dates and times in `types_temporal`, their shared error in
//! `value_error`), with `type_catalog` looking up the types a message names only by OID (into the plain
//! `type_model`) and `structured` splitting array, composite and hstore text; `replication` speaks the
//! streaming-replication protocol; `connection` parses the URL and its TLS settings; `catalog` manages the
//! slot, the publication and table metadata over an ordinary connection, and `describe` loads a table's
//! model from it. `snapshot` reads the rows already in the tables (`snapshot_plan` shares the tables and key
//! ranges out, `snapshot_copy` reads them with COPY, both through the pieces of `snapshot_piece`),
//! `snapshot_progress` records how far it got and `overlap` has the stream leave out what a carried-on
//! snapshot's rows already hold; `reader` prepares the slot (as `start` decides) and streams, `decoder`
//! turning the stream's messages into events (both pure, no I/O); `settings` and `error` are what they all
//! share. `source` puts it all on the source seam, and `preflight` checks for `sluice check` what a run
//! needs (the checks themselves in `preflight_checks`, which the source runs).
//!
//! Dependencies point one way: the shared definitions (`error`, `settings`, `type_model`, `value_error`,
//! `snapshot_piece`) sit below the modules that use them, so that no chain of imports leads back to where
//! it began.

pub mod catalog;
pub mod config;
pub mod connection;
pub mod decoder;
mod describe;
mod error;
// The fuzz targets' way in (fuzz/); not an API.
#[doc(hidden)]
pub mod fuzzing;
mod incremental;
pub mod overlap;
pub mod pgoutput;
pub mod preflight;
mod preflight_checks;
pub mod reader;
pub mod replication;
mod reselect;
mod reselect_query;
mod settings;
mod signal_table;
mod signals;
pub mod snapshot;
mod snapshot_copy;
mod snapshot_piece;
mod snapshot_plan;
mod snapshot_progress;
pub mod source;
mod start;
pub mod structured;
pub mod type_catalog;
mod type_model;
pub mod types;
mod types_numeric;
mod types_temporal;
mod value_error;
