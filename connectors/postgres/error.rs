//! The error of the PostgreSQL source, shared by everything from the start decision to the stream: a leaf
//! below the modules that return it.

use super::catalog::CatalogError;
use super::decoder::StreamError;
use super::pgoutput::DecodeError;
use super::replication::{is_retryable_sqlstate, ReplicationError};
use sluice_core::event::Lsn;
use sluice_core::positions::SourceIdentity;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "signal table {table}: {problem}. As an owner of its schema: {definition}; then let sluice's user read it \
         (and insert into it, for `sluice snapshot`)"
    )]
    SignalTable {
        table: String,
        problem: String,
        definition: String,
    },
    #[error("cannot write the signal into {table}: {reason}. Let the user insert into it: GRANT INSERT ON {table} TO <the user of source.url>")]
    SignalWrite { table: String, reason: String },
    #[error("`[source] signal_table` is not set, so sluice reads no signals: set it (for example `signal_table = \"public.sluice_signals\"`) and restart sluice")]
    NoSignalTable,
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    #[error("cannot decode the replication stream: {0}")]
    Decode(#[from] DecodeError),
    #[error(
        "replication slot `{slot}` is gone but sluice had delivered up to {position}: changes since then may be lost. \
         Recreate the pipeline deliberately: remove the position file {position_file} (sluice then creates a new slot \
         and takes a new snapshot), or set `source.snapshot = \"when_needed\"` to do that automatically"
    )]
    SlotLost {
        slot: String,
        position: Lsn,
        position_file: String,
    },
    #[error(
        "replication slot `{slot}` is at {confirmed}, past the consistent point {consistent_point} of the snapshot \
         {position_file} says is under way: the changes in between are gone from the slot, so the snapshot cannot be \
         carried on. Drop the slot and remove the position file to take it again from the start, or set \
         `source.snapshot = \"when_needed\"` to do that automatically"
    )]
    SnapshotSlotMoved {
        slot: String,
        consistent_point: Lsn,
        confirmed: Lsn,
        position_file: String,
    },
    #[error("replication slot `{slot}` uses the `{plugin}` plugin; sluice needs a `pgoutput` slot: drop it or name another")]
    WrongPlugin { slot: String, plugin: String },
    #[error("replication slot `{slot}` belongs to database `{other}`, not `{database}`")]
    OtherDatabase {
        slot: String,
        other: String,
        database: String,
    },
    #[error("replication slot `{slot}` is physical; sluice needs a logical slot")]
    PhysicalSlot { slot: String },
    #[error(
        "the position file {file} was written for {stored}, but source.url reaches {actual}: a position means \
         nothing on another server. If the database was replaced on purpose, remove the file (sluice then \
         starts from the slot's position)"
    )]
    OtherServer {
        file: String,
        stored: SourceIdentity,
        actual: SourceIdentity,
    },
    #[error(
        "replication slot `{slot}` exists already, and `source.temporary_slot = true` creates the slot itself at \
         every start: drop it (SELECT pg_drop_replication_slot('{slot}');) or name another slot"
    )]
    TemporarySlotExists { slot: String },
    #[error(
        "replication slot `{slot}` is in use by another connection: another sluice with this slot, or the \
         connection of an earlier run that the server has not yet noticed is gone (wal_sender_timeout ends a \
         streaming one, TCP keepalives any other, and its temporary slot with it). Stop the other reader, or \
         start again once the slot is gone"
    )]
    TemporarySlotInUse { slot: String },
    #[error(
        "the connection that held the temporary replication slot `{slot}` was lost ({cause}), and the slot with \
         it: changes from here on are not captured. The next start creates a new slot and, unless \
         `source.snapshot = \"never\"`, reads the tables again; use a permanent slot to resume instead"
    )]
    TemporarySlotLost { slot: String, cause: String },
    #[error("replication stream out of order: {0}")]
    Protocol(String),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Position(#[from] sluice_core::positions::PositionError),
    #[error("source.url: {0}")]
    Url(String),
    #[error("the position file {file} holds a position of another kind of source ({position}); point positions.dir elsewhere or move the file away")]
    ForeignPosition { file: String, position: String },
}

impl SourceError {
    /// A lost or refused connection that reconnecting may cure (server restart, network cut, slot still
    /// held by the previous connection's server process).
    pub fn is_retryable(&self) -> bool {
        match self {
            SourceError::Replication(err) => err.is_retryable(),
            SourceError::Catalog(CatalogError::Connect(_)) => true,
            SourceError::Catalog(CatalogError::Query { source, .. }) => {
                source.is_closed()
                    || source
                        .code()
                        .is_some_and(|code| is_retryable_sqlstate(code.code()))
            }
            _ => false,
        }
    }
}
