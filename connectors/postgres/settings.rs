//! What the reader is told: its settings from `[source]`, and where an earlier run got to. Plain data below
//! the modules that read it (the start decision, the reader, the connector).

use std::path::Path;
use std::time::Duration;

use super::connection::PgConnection;
use super::replication::SlotLifetime;
use crate::config::{DecimalHandling, Selection};
use sluice_core::config::SnapshotMode;
use sluice_core::event::{Lsn, PgSnapshotPosition, Position};
use sluice_core::positions::SourceIdentity;

/// What the reader needs to know.
#[derive(Clone, Debug)]
pub struct PostgresSettings {
    pub connection: PgConnection,
    pub database: String,
    pub slot: String,
    /// A temporary slot lives only as long as the connection that created it: it is kept from the slot's
    /// creation through the snapshot to the end of streaming, and a lost one ends the run.
    pub slot_lifetime: SlotLifetime,
    pub publication: String,
    pub selection: Selection,
    pub status_interval: Duration,
    pub snapshot: SnapshotMode,
    /// Ask for logical decoding messages (`pg_logical_emit_message`) too.
    pub capture_messages: bool,
    /// Connections a snapshot reads tables over at the same time.
    pub snapshot_connections: usize,
    /// Rows per key range of a large table (the ranges are shared out and recorded one by one).
    pub snapshot_chunk_rows: u64,
    pub decimal_handling: DecimalHandling,
    /// How often to write a heartbeat message into the WAL of the captured database (None: never).
    pub heartbeat_interval: Option<Duration>,
    /// `schema.table` of the signal table; None: signals are off.
    pub signal_table: Option<String>,
    /// Rows per chunk of an incremental snapshot.
    pub incremental_chunk_rows: usize,
    /// Tables that join the selection later are snapshotted incrementally.
    pub snapshot_new_tables: bool,
    /// Read unchanged TOAST values from the table for the updates that lack them.
    pub reselect_unchanged_toast: bool,
}

/// Where an earlier run got to, from the position file.
#[derive(Clone, Copy, Debug)]
pub struct Resume<'a> {
    /// A PostgreSQL position, or a snapshot in progress.
    pub position: &'a Position,
    /// None in files written before sluice recorded it.
    pub identity: Option<&'a SourceIdentity>,
    pub file: &'a Path,
}

impl Resume<'_> {
    pub(super) fn lsn(&self) -> Lsn {
        self.position.postgres_lsn().unwrap_or_default()
    }

    /// The snapshot the run that wrote the file was reading and did not finish.
    pub(super) fn interrupted(&self) -> Option<&PgSnapshotPosition> {
        match self.position.stream() {
            Position::PostgresSnapshot(progress) if !progress.complete => Some(progress),
            _ => None,
        }
    }
}
