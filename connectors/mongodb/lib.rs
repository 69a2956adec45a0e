//! MongoDB: change streams read through the official driver, each event converted into the change-event
//! model (`change`), resumed from the resume token of the last event the broker acknowledged (`reader`);
//! the documents already there are read first (`snapshot`). Where change streams are not available the
//! oplog is tailed instead (`oplog_tail`), its entries converted by `oplog`.

pub mod change;
pub mod config;
#[cfg(test)]
mod malformed_fixtures;
pub mod oplog;
pub mod oplog_tail;
pub mod preflight;
pub mod reader;
pub mod snapshot;
pub mod source;
