//! MongoDB: change streams read through the official driver (`change_stream`), each event converted into
//! the change-event model (`change`), resumed from the resume token of the last event the broker
//! acknowledged; the documents already there are read first (`snapshot`). Where change streams are not
//! available the oplog is tailed instead (`oplog_tail`), its entries converted by `oplog`. `reader` runs
//! the snapshot and the capture in turn; what they share is below them: the connected source
//! (`connection`), the channel to the pipeline and the retry policy (`control`), the collection filter
//! (`selection`) and the errors (`error`). Signals and incremental snapshots: `signals` (the relay between
//! the reader and the pipeline, the stream's side), `incremental` (the chunk reader) and
//! `signal_collection` (the documents of the signal collection); `new_collections` requests the collections
//! that joined the selection since the last run into that snapshot (`snapshot_new_tables`).

pub mod change;
pub mod change_stream;
pub mod config;
pub mod connection;
pub mod control;
pub mod error;
pub mod incremental;
#[cfg(test)]
mod malformed_fixtures;
pub mod new_collections;
pub mod oplog;
pub mod oplog_tail;
pub mod preflight;
pub mod reader;
pub mod selection;
pub mod signal_collection;
pub mod signals;
pub mod snapshot;
pub mod source;
