//! The PostgreSQL source: prepares the publication and the slot, then turns the slot's pgoutput stream into
//! [`SourceEvent`]s, answering the server with the position the pipeline has acknowledged.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::Client;

use super::catalog::{self, CatalogError, TableName};
use super::connection::PgConnection;
use super::overlap::Overlap;
use super::pgoutput::{self, Message, OldTuple, Relation, TupleData, TupleValue};
use super::replication::{Frame, ReplicationConnection, ReplicationError, SlotLifetime};
use super::snapshot::{Exported, Snapshot};
use super::type_catalog;
use super::types::{self, ResolvedColumn};
use crate::config::{DecimalHandling, Selection};
use sluice_core::backoff::Backoff;
use sluice_core::config::SnapshotMode;
use sluice_core::event::{
    ChangeEvent, Column, DecodingMessage, Lsn, Op, PgSnapshotPosition, Position, Row,
    SnapshotMarker, SourceEvent, SourceInfo, Table, TransactionOrder, Value,
};
use sluice_core::positions::SourceIdentity;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    #[error("cannot decode the replication stream: {0}")]
    Decode(#[from] pgoutput::DecodeError),
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
                        .is_some_and(|code| super::replication::is_retryable_sqlstate(code.code()))
            }
            _ => false,
        }
    }
}

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
}

/// The prefix of heartbeat messages; they are never published, even with `capture_messages`.
pub const HEARTBEAT_PREFIX: &str = "sluice.heartbeat";

/// A prepared source: publication and slot in place.
pub struct PostgresSource {
    settings: PostgresSettings,
    catalog: Client,
    selected: BTreeSet<TableName>,
    identity: SourceIdentity,
    snapshot: Option<Snapshot>,
    /// The connection a temporary slot lives on, until streaming takes it.
    temporary_slot: Option<SlotConnection>,
}

/// Where the connection that holds a temporary slot is before streaming begins.
enum SlotConnection {
    Held(ReplicationConnection),
    /// Lent to the snapshot, whose exported snapshot lives on it until every reader adopted it.
    LentToSnapshot(oneshot::Receiver<ReplicationConnection>),
}

impl SlotConnection {
    async fn take(self, slot: &str) -> Result<ReplicationConnection, SourceError> {
        match self {
            SlotConnection::Held(conn) => Ok(conn),
            SlotConnection::LentToSnapshot(lent) => {
                lent.await.map_err(|_| SourceError::TemporarySlotLost {
                    slot: slot.to_owned(),
                    cause: "the snapshot ended before handing the connection back".into(),
                })
            }
        }
    }
}

/// The longest wait before reopening a lost replication connection.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(30);
/// How often the server's WAL position is read, for the lag metric.
const WAL_END_PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// What outlives one replication connection: the pipeline's channels, the acknowledged position and
/// whether a stop was requested.
struct Link {
    control: StreamControl,
    acked: Lsn,
    /// Set when a stop is requested: until when the open transaction may still be read.
    stopping_until: Option<tokio::time::Instant>,
}

impl Link {
    fn refresh_acked(&mut self) {
        self.acked = self
            .acked
            .max(*self.control.acknowledged.borrow_and_update());
    }
}

/// How the pipeline and the reader talk besides the event channel.
pub struct StreamControl {
    pub events: mpsc::Sender<SourceEvent>,
    /// The newest LSN every event before which is on the broker (and in the position file).
    pub acknowledged: watch::Receiver<Lsn>,
    /// Becomes true when sluice should stop; the reader finishes the open transaction first.
    pub stop: watch::Receiver<bool>,
    /// How long a stop waits for the open transaction to end; past it, the part read is sent again next
    /// run (its commit was never acknowledged).
    pub stop_grace: Duration,
    /// Where the server's WAL end, the connection state and reconnects are reported.
    pub metrics: Arc<dyn sluice_core::metrics::SourceMetrics>,
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
    fn lsn(&self) -> Lsn {
        self.position.postgres_lsn().unwrap_or_default()
    }

    /// The snapshot the run that wrote the file was reading and did not finish.
    fn interrupted(&self) -> Option<&PgSnapshotPosition> {
        match self.position {
            Position::PostgresSnapshot(progress) if !progress.complete => Some(progress),
            _ => None,
        }
    }
}

impl PostgresSource {
    /// Checks that `resume` (if any) belongs to this server and database, resolves the tables, makes the
    /// publication cover them and the slot exist.
    pub async fn prepare(
        settings: PostgresSettings,
        resume: Option<Resume<'_>>,
    ) -> Result<PostgresSource, SourceError> {
        // The replication connection first: it proves the REPLICATION privilege before anything is changed.
        let mut conn = ReplicationConnection::connect(&settings.connection).await?;
        let system = conn.identify_system().await?;
        let identity = SourceIdentity {
            system_id: system.system_id,
            database: settings.database.clone(),
        };
        tracing::info!(system_id = %identity.system_id, database = %identity.database, timeline = system.timeline, "connected to PostgreSQL");
        if let Some(Resume {
            identity: Some(stored),
            file,
            ..
        }) = resume
        {
            if *stored != identity {
                return Err(SourceError::OtherServer {
                    file: file.display().to_string(),
                    stored: stored.clone(),
                    actual: identity,
                });
            }
        }

        let catalog = catalog::connect(&settings.connection).await?;
        let selected = catalog::resolve_tables(&catalog, &settings.selection).await?;
        let tables: Vec<TableName> = selected.to_vec();
        // The publication must exist before the slot: pgoutput reads it through the slot's historic snapshot.
        let change = catalog::ensure_publication(&catalog, &settings.publication, &tables).await?;
        if change.created {
            tracing::info!(publication = %settings.publication, tables = tables.len(), "created publication");
        }
        let names =
            |tables: &[TableName]| tables.iter().map(ToString::to_string).collect::<Vec<_>>();
        if !change.created && !change.added.is_empty() {
            tracing::info!(publication = %settings.publication, added = ?names(&change.added), "added tables to publication");
        }
        if !change.removed.is_empty() {
            tracing::info!(publication = %settings.publication, removed = ?names(&change.removed), "dropped tables that left the selection from the publication");
        }
        if let Some((kept, reason)) = &change.not_removed {
            tracing::warn!(publication = %settings.publication, tables = ?names(kept), reason = %reason, "tables that left the selection stay in the publication: their changes are decoded and skipped");
        }
        let wants_snapshot = settings.snapshot != SnapshotMode::Never;
        let slot = catalog::slot_info(&catalog, &settings.slot).await?;
        if let Some(slot) = &slot {
            if settings.slot_lifetime == SlotLifetime::Temporary {
                let slot_name = settings.slot.clone();
                return Err(if slot.active {
                    SourceError::TemporarySlotInUse { slot: slot_name }
                } else {
                    SourceError::TemporarySlotExists { slot: slot_name }
                });
            }
            check_slot(&settings, slot)?;
        }
        // How the run begins: Some(what is read already, exported snapshot) when the tables are read first.
        let begin = match (slot, resume) {
            (Some(slot), Some(resume)) => match resume.interrupted() {
                Some(progress) if wants_snapshot => {
                    // Nothing is acknowledged before the snapshot is on the broker, so the slot should
                    // still be where the first rows were read; one that moved has lost the changes since.
                    let confirmed = slot.confirmed_lsn().unwrap_or_default();
                    if confirmed > progress.lsn {
                        if settings.snapshot != SnapshotMode::WhenNeeded {
                            return Err(SourceError::SnapshotSlotMoved {
                                slot: settings.slot.clone(),
                                consistent_point: progress.lsn,
                                confirmed,
                                position_file: resume.file.display().to_string(),
                            });
                        }
                        tracing::warn!(slot = %settings.slot, consistent_point = %progress.lsn, %confirmed, "the slot moved past the interrupted snapshot's consistent point: snapshot = when_needed, so it is created again and the snapshot taken from the start");
                        conn.drop_slot(&settings.slot).await?;
                        Some(create_slot(&mut conn, &settings, true).await?)
                    } else {
                        tracing::info!(slot = %settings.slot, at = %progress.lsn, file = %resume.file.display(), "carrying on the interrupted snapshot");
                        Some((progress.clone(), None))
                    }
                }
                interrupted => {
                    if interrupted.is_some() {
                        tracing::warn!(slot = %settings.slot, file = %resume.file.display(), "the previous run's snapshot did not finish and snapshot = never: it is abandoned, rows it did not publish are not published");
                    }
                    warn_if_slot_is_ahead(&settings.slot, &slot, resume);
                    None
                }
            },
            (Some(slot), None) if wants_snapshot => {
                // A slot sluice has no position for (created by hand, or sluice stopped right after creating
                // it): its exported snapshot is gone, so the rows are read in a snapshot of sluice's own.
                let confirmed = slot.confirmed_lsn().unwrap_or_default();
                tracing::warn!(slot = %settings.slot, %confirmed, "snapshot of an existing slot: its rows are read as they are now, and the changes since the slot's position are streamed after them, so some may arrive twice");
                Some((PgSnapshotPosition::starting_at(confirmed), None))
            }
            (Some(_), None) => None,
            (None, Some(resume)) if resume.interrupted().is_none() => {
                if settings.snapshot != SnapshotMode::WhenNeeded {
                    return Err(SourceError::SlotLost {
                        slot: settings.slot.clone(),
                        position: resume.lsn(),
                        position_file: resume.file.display().to_string(),
                    });
                }
                tracing::warn!(slot = %settings.slot, stored = %resume.lsn(), "the slot is gone: snapshot = when_needed, so a new slot is created and the tables are read again");
                Some(create_slot(&mut conn, &settings, true).await?)
            }
            (None, resume) => {
                if resume.is_some() && wants_snapshot {
                    tracing::warn!(slot = %settings.slot, "the slot of the interrupted snapshot is gone: a new slot is created and the snapshot taken again from the start");
                }
                let created = create_slot(&mut conn, &settings, wants_snapshot).await?;
                wants_snapshot.then_some(created)
            }
        };
        // An exported snapshot lives as long as the connection that exported it stays idle: it goes with
        // the snapshot until adopted. A temporary slot lives as long as that connection: it comes back for
        // streaming. Otherwise the connection's work is done.
        let temporary = settings.slot_lifetime == SlotLifetime::Temporary;
        let (progress, exported, temporary_slot) = match begin {
            Some((progress, Some(name))) => {
                let (hand_back, lent) = if temporary {
                    let (hand_back, lent) = oneshot::channel();
                    (Some(hand_back), Some(SlotConnection::LentToSnapshot(lent)))
                } else {
                    (None, None)
                };
                let exported = Exported {
                    connection: conn,
                    name,
                    hand_back,
                };
                (Some(progress), Some(exported), lent)
            }
            other => {
                let held = if temporary {
                    Some(SlotConnection::Held(conn))
                } else {
                    conn.close().await?;
                    None
                };
                (other.map(|(progress, _)| progress), None, held)
            }
        };
        let snapshot = progress.map(|mut progress| {
            // What was read of tables no longer selected is forgotten; they are read whole if they return.
            progress.tables.retain(|read| {
                tables
                    .iter()
                    .any(|table| super::snapshot_progress::is(read, table))
            });
            Snapshot {
                connection: settings.connection.clone(),
                database: settings.database.clone(),
                tables: tables.clone(),
                selection: settings.selection.clone(),
                decimal_handling: settings.decimal_handling,
                connections: settings.snapshot_connections,
                chunk_rows: settings.snapshot_chunk_rows,
                progress,
                exported,
            }
        });
        Ok(PostgresSource {
            settings,
            catalog,
            selected: selected.into_iter().collect(),
            identity,
            snapshot,
            temporary_slot,
        })
    }

    /// Closes the connection of a temporary slot, which drops the slot (after an `initial_only` snapshot).
    pub async fn end_temporary_slot(&mut self) -> Result<(), SourceError> {
        if let Some(held) = self.temporary_slot.take() {
            held.take(&self.settings.slot).await?.close().await?;
            tracing::info!(slot = %self.settings.slot, "closed the connection of the temporary slot: the server drops the slot");
        }
        Ok(())
    }

    /// The snapshot to read before streaming, when this run takes one.
    pub fn take_snapshot(&mut self) -> Option<Snapshot> {
        self.snapshot.take()
    }

    /// The server and database this source reads.
    pub fn identity(&self) -> &SourceIdentity {
        &self.identity
    }

    pub fn tables(&self) -> impl Iterator<Item = &TableName> {
        self.selected.iter()
    }

    /// Streams changes from `resume` (the server starts at the later of it and the slot's confirmed
    /// position) until told to stop, then reports the final acknowledged position to the server. A lost
    /// connection (server restart, network cut) is reopened with backoff from the acknowledged position;
    /// what was already handed on is skipped on the way, so the pipeline sees every change once.
    ///
    /// `from` is a stored position: after a carried-on snapshot it says which changes the stream leaves out.
    pub async fn stream(
        mut self,
        from: Position,
        control: StreamControl,
    ) -> Result<(), SourceError> {
        let resume = from.postgres_lsn().unwrap_or_default();
        let overlap = match from {
            Position::PostgresSnapshot(progress) => Overlap::new(progress),
            _ => None,
        };
        let stopping_until =
            (*control.stop.borrow()).then(|| tokio::time::Instant::now() + control.stop_grace);
        let mut link = Link {
            control,
            acked: resume,
            stopping_until,
        };
        let mut decoder = StreamDecoder::new(&self.settings.database, resume, overlap);
        let mut backoff = Backoff::new(RECONNECT_MAX_DELAY);
        let mut reconnecting = false;
        loop {
            backoff.connecting();
            let err = match self
                .stream_connection(&mut decoder, &mut link, reconnecting)
                .await
            {
                Ok(conn) => return self.finish(conn, link).await,
                Err(err) if err.is_retryable() => err,
                Err(err) => return Err(err),
            };
            decoder.connection_lost();
            link.control.metrics.set_streaming(false);
            if link.stopping_until.is_some() || link.control.events.is_closed() {
                tracing::warn!(error = %err, "replication connection lost while stopping; the server learns the stored position on the next run");
                return Ok(());
            }
            if self.settings.slot_lifetime == SlotLifetime::Temporary {
                // Reconnecting would find the slot gone; a catalog failure is reported as itself.
                return Err(match err {
                    SourceError::Replication(cause) => SourceError::TemporarySlotLost {
                        slot: self.settings.slot.clone(),
                        cause: cause.to_string(),
                    },
                    other => other,
                });
            }
            link.refresh_acked();
            let delay = backoff.next_delay();
            tracing::warn!(error = %err, retry_in = ?delay, resume = %link.acked, "replication connection lost; reconnecting");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = link.control.stop.changed() => return Ok(()),
                _ = link.control.events.closed() => return Ok(()),
            }
            reconnecting = true;
            link.control.metrics.reconnected();
        }
    }

    /// One replication connection, from the acknowledged position until a stop (returning the connection
    /// for [`Self::finish`]) or a failure.
    async fn stream_connection(
        &mut self,
        decoder: &mut StreamDecoder,
        link: &mut Link,
        reconnecting: bool,
    ) -> Result<ReplicationConnection, SourceError> {
        let held = match self.temporary_slot.take() {
            Some(held) => Some(held.take(&self.settings.slot).await?),
            None => None,
        };
        if reconnecting {
            // The catalog connection most likely went down with the server too.
            self.catalog = catalog::connect(&self.settings.connection).await?;
        } else {
            self.reopen_catalog_if_closed().await?;
        }
        let mut conn = match held {
            Some(conn) => conn,
            None => ReplicationConnection::connect(&self.settings.connection).await?,
        };
        link.refresh_acked();
        conn.start_replication(
            &self.settings.slot,
            link.acked,
            &self.settings.publication,
            self.settings.capture_messages,
        )
        .await?;
        tracing::info!(slot = %self.settings.slot, from = %link.acked, "streaming");
        link.control.metrics.set_streaming(true);

        let mut status = tokio::time::interval(self.settings.status_interval);
        status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let heartbeats = self.settings.heartbeat_interval;
        // Never ticked when heartbeats are off; any period will do.
        let mut heartbeat = tokio::time::interval(heartbeats.unwrap_or(Duration::from_secs(3600)));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut wal_probe = tokio::time::interval(WAL_END_PROBE_INTERVAL);
        wal_probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut produced = Vec::new();
        let control = &mut link.control;

        // On a stop request, read on to the end of the open transaction: a half-published one would repeat.
        'reading: while link.stopping_until.is_none() || decoder.in_transaction() {
            // A time that never comes until a stop sets one.
            let give_up_at = link
                .stopping_until
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400 * 365));
            let frame = tokio::select! {
                frame = conn.next_frame() => frame?,
                // The pipeline failed (and says why): stop reading, report what it acknowledged.
                _ = control.events.closed() => break 'reading,
                _ = status.tick() => {
                    link.acked = link.acked.max(*control.acknowledged.borrow_and_update());
                    conn.send_status(link.acked, false).await?;
                    continue;
                }
                _ = control.stop.changed(), if link.stopping_until.is_none() => {
                    link.stopping_until = Some(tokio::time::Instant::now() + control.stop_grace);
                    tracing::info!(within = ?control.stop_grace, "stopping: finishing the open transaction");
                    continue;
                }
                _ = tokio::time::sleep_until(give_up_at), if link.stopping_until.is_some() => {
                    tracing::warn!(waited = ?control.stop_grace, "stopping: the open transaction did not end in time; the part read is sent again on the next run");
                    break 'reading;
                }
                _ = heartbeat.tick(), if heartbeats.is_some() => {
                    self.emit_heartbeat().await;
                    continue;
                }
                _ = wal_probe.tick() => {
                    self.report_wal_end(control.metrics.as_ref()).await;
                    continue;
                }
            };
            match frame {
                Frame::XLogData {
                    wal_start, data, ..
                } => {
                    let message = pgoutput::decode(&data)?;
                    decoder
                        .apply(message, wal_start, self, &mut produced)
                        .await?;
                }
                Frame::Keepalive {
                    wal_end,
                    reply_requested,
                } => {
                    decoder.idle(wal_end, &mut produced);
                    if reply_requested {
                        link.acked = link.acked.max(*control.acknowledged.borrow_and_update());
                        conn.send_status(link.acked, false).await?;
                    }
                }
                Frame::CopyDone => {
                    return Err(SourceError::Protocol(
                        "the server ended the replication stream".into(),
                    ))
                }
            }
            for event in produced.drain(..) {
                // Keep answering the server while the pipeline is full, so it does not time the connection out.
                let permit = loop {
                    tokio::select! {
                        permit = control.events.reserve() => break permit,
                        _ = status.tick() => {
                            link.acked = link.acked.max(*control.acknowledged.borrow_and_update());
                            conn.send_status(link.acked, false).await?;
                        }
                        _ = tokio::time::sleep_until(give_up_at), if link.stopping_until.is_some() => {
                            tracing::warn!(waited = ?control.stop_grace, "stopping: the pipeline is still full; the open transaction's part read is sent again on the next run");
                            break 'reading;
                        }
                        // While reading waits is when the lag grows: keep measuring it.
                        _ = wal_probe.tick() => self.report_wal_end(control.metrics.as_ref()).await,
                    }
                };
                match permit {
                    Ok(permit) => permit.send(event),
                    Err(_) => break 'reading,
                }
            }
        }

        Ok(conn)
    }

    /// Lets the pipeline drain (dropping the event sender tells it), then tells the server the final
    /// acknowledged position.
    async fn finish(&self, mut conn: ReplicationConnection, link: Link) -> Result<(), SourceError> {
        let Link {
            control:
                StreamControl {
                    events,
                    mut acknowledged,
                    metrics,
                    ..
                },
            mut acked,
            ..
        } = link;
        drop(events);
        let mut status = tokio::time::interval(self.settings.status_interval);
        loop {
            tokio::select! {
                changed = acknowledged.changed() => {
                    acked = acked.max(*acknowledged.borrow_and_update());
                    if changed.is_err() {
                        break;
                    }
                }
                _ = status.tick() => conn.send_status(acked, false).await?,
            }
        }
        conn.send_status(acked, false).await?;
        conn.close().await?;
        metrics.set_streaming(false);
        tracing::info!(slot = %self.settings.slot, acknowledged = %acked, "replication stream closed");
        Ok(())
    }

    /// Reads the server's current WAL position for `sluice_source_lag_bytes`. Neither the stream's frames
    /// nor its keepalives carry it (both tell how far the walsender has sent). A failure only costs this
    /// reading.
    async fn report_wal_end(&mut self, metrics: &dyn sluice_core::metrics::SourceMetrics) {
        if let Err(err) = self.reopen_catalog_if_closed().await {
            return tracing::debug!(error = %err, "cannot read the server's WAL position");
        }
        let current = self
            .catalog
            .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint", &[])
            .await;
        match current {
            Ok(row) => metrics.server_wal_end(Lsn(row.get::<_, i64>(0).max(0) as u64)),
            Err(err) => {
                tracing::debug!(error = %catalog::describe_pg_error(&err), "cannot read the server's WAL position")
            }
        }
    }

    /// Writes a heartbeat into the captured database's WAL: the walsender reads past it and reports a
    /// newer position, which the idle acknowledgement then confirms. A failure only costs this heartbeat.
    async fn emit_heartbeat(&mut self) {
        if let Err(err) = self.reopen_catalog_if_closed().await {
            return tracing::warn!(error = %err, "cannot write a heartbeat");
        }
        let written = self
            .catalog
            .execute(
                "SELECT pg_logical_emit_message(false, $1, '')",
                &[&HEARTBEAT_PREFIX],
            )
            .await;
        if let Err(err) = written {
            tracing::warn!(error = %catalog::describe_pg_error(&err), "cannot write a heartbeat");
        }
    }

    /// The catalog connection idles through a snapshot (and under back-pressure), where a server's
    /// idle_session_timeout may end it; reopening it alone keeps the replication connection (and a
    /// temporary slot) going.
    async fn reopen_catalog_if_closed(&mut self) -> Result<(), SourceError> {
        if self.catalog.is_closed() {
            tracing::info!("the catalog connection was closed by the server; reopening it");
            self.catalog = catalog::connect(&self.settings.connection).await?;
        }
        Ok(())
    }

    /// The table model for a Relation message; None when the table is not selected.
    async fn table_for(&mut self, relation: &Relation) -> Result<Option<Captured>, SourceError> {
        let name = TableName {
            schema: relation.namespace.clone(),
            name: relation.name.clone(),
        };
        let selected = self.selected.contains(&name)
            || self.settings.selection.includes(&name.schema, &name.name);
        if !selected {
            // A publication shared with other consumers may cover more tables than sluice was asked for.
            tracing::info!(table = %name, publication = %self.settings.publication, "skipping changes of a published table that the selection leaves out");
            return Ok(None);
        }
        self.reopen_catalog_if_closed().await?;
        let primary_key = catalog::primary_key(&self.catalog, relation.id).await?;
        let captured = Captured::load(
            &self.catalog,
            relation,
            &primary_key,
            &self.settings.selection,
            self.settings.decimal_handling,
        )
        .await?;
        Ok(Some(captured))
    }
}

/// Drops the slot, so that the server keeps no WAL for it (after `snapshot = "initial_only"`, or a clean
/// stop with `drop_slot_on_stop`).
pub async fn drop_slot(settings: &PostgresSettings) -> Result<(), SourceError> {
    let mut conn = ReplicationConnection::connect(&settings.connection).await?;
    conn.drop_slot(&settings.slot).await?;
    conn.close().await?;
    tracing::info!(slot = %settings.slot, "dropped replication slot");
    Ok(())
}

/// Creates the slot; returns a snapshot with nothing read yet at its consistent point and, when asked for,
/// the name of its exported snapshot.
async fn create_slot(
    conn: &mut ReplicationConnection,
    settings: &PostgresSettings,
    export_snapshot: bool,
) -> Result<(PgSnapshotPosition, Option<String>), SourceError> {
    let slot = &settings.slot;
    let created = conn
        .create_slot(slot, settings.slot_lifetime, export_snapshot)
        .await?;
    let temporary = settings.slot_lifetime == SlotLifetime::Temporary;
    tracing::info!(slot, temporary, consistent_point = %created.consistent_point, "created replication slot");
    Ok((
        PgSnapshotPosition::starting_at(created.consistent_point),
        created.snapshot_name,
    ))
}

/// The slot only moves when sluice has stored a position first; a slot ahead of the file means someone else
/// advanced it (or the file is an old copy), and the changes in between are no longer in the slot.
fn warn_if_slot_is_ahead(slot_name: &str, slot: &catalog::SlotInfo, resume: Resume<'_>) {
    if let Some(confirmed) = slot.confirmed_lsn() {
        if confirmed > resume.lsn() {
            tracing::warn!(
                slot = slot_name,
                stored = %resume.lsn(),
                confirmed = %confirmed,
                file = %resume.file.display(),
                "the slot was advanced past the stored position by something other than sluice: changes \
                 between the two positions cannot be read again and will not be published"
            );
        }
    }
}

fn check_slot(settings: &PostgresSettings, slot: &catalog::SlotInfo) -> Result<(), SourceError> {
    if slot.slot_type != "logical" {
        return Err(SourceError::PhysicalSlot {
            slot: settings.slot.clone(),
        });
    }
    let plugin = slot.plugin.clone().unwrap_or_default();
    if plugin != "pgoutput" {
        return Err(SourceError::WrongPlugin {
            slot: settings.slot.clone(),
            plugin,
        });
    }
    let database = slot.database.clone().unwrap_or_default();
    if database != settings.database {
        return Err(SourceError::OtherDatabase {
            slot: settings.slot.clone(),
            other: database,
            database: settings.database.clone(),
        });
    }
    Ok(())
}

/// The current model of every selected table, as the next event of each would carry it (for comparing
/// contracts with the tables without starting a stream).
pub async fn current_tables(settings: &PostgresSettings) -> Result<Vec<Arc<Table>>, SourceError> {
    let client = catalog::connect(&settings.connection).await?;
    let mut tables = Vec::new();
    for name in catalog::resolve_tables(&client, &settings.selection).await? {
        let (_, captured) = Captured::describe(
            &client,
            &name,
            &settings.selection,
            settings.decimal_handling,
        )
        .await?;
        tables.push(captured.table);
    }
    Ok(tables)
}

/// The table model of a relation whose column types were resolved (`resolved`, in column order). The message
/// key: the primary key; without one, a replica identity index; otherwise no key.
pub fn table_from_relation(
    relation: &Relation,
    primary_key: &[String],
    resolved: Vec<ResolvedColumn>,
) -> Table {
    let index_identity = relation.replica_identity == b'i';
    let columns = relation
        .columns
        .iter()
        .zip(resolved)
        .map(|(c, resolved)| Column {
            name: c.name.clone(),
            column_type: resolved.column_type,
            key: if primary_key.is_empty() {
                index_identity && c.key
            } else {
                primary_key.contains(&c.name)
            },
            source_type: resolved.source_type,
        })
        .collect();
    Table {
        id: relation.id,
        schema: relation.namespace.clone(),
        name: relation.name.clone(),
        columns,
    }
}

struct OpenTransaction {
    xid: u32,
    commit_lsn: Lsn,
    commit_time_us: i64,
    /// Change events of this transaction handed on so far, over every connection.
    handed_on: u64,
    /// Change events still to drop because an earlier connection handed them on (u64::MAX: all of them,
    /// the whole transaction was handed on).
    skip: u64,
    /// Row change events so far, in total and per table id: the transaction block's orders. Counted again
    /// from Begin when a transaction is replayed, so replayed events get the numbers they had.
    changes: u64,
    changes_by_table: HashMap<u32, u64>,
}

/// A transaction cut off by a lost connection: the next connection replays it from the start.
#[derive(Clone, Copy, Debug)]
struct CutOff {
    commit_lsn: Lsn,
    handed_on: u64,
}

/// Protocol state between messages: known relations and the open transaction.
struct StreamDecoder {
    database: Arc<str>,
    relations: HashMap<u32, Option<Captured>>,
    transaction: Option<OpenTransaction>,
    /// The last position handed on (a commit's end, or an idle point).
    last_position: Lsn,
    cut_off: Option<CutOff>,
    /// After a carried-on snapshot: the changes its later snapshots hold, left out until passed.
    overlap: Option<Overlap>,
    /// Changes the overlap left out, for the log line that ends it.
    left_out: u64,
}

impl StreamDecoder {
    fn new(database: &str, resume: Lsn, overlap: Option<Overlap>) -> StreamDecoder {
        StreamDecoder {
            database: database.into(),
            relations: HashMap::new(),
            transaction: None,
            last_position: resume,
            cut_off: None,
            overlap,
            left_out: 0,
        }
    }

    /// The connection is gone: the next one starts again at the acknowledged position, before the open
    /// transaction, which will be replayed from its Begin.
    fn connection_lost(&mut self) {
        if let Some(tx) = self.transaction.take() {
            self.cut_off = Some(CutOff {
                commit_lsn: tx.commit_lsn,
                handed_on: tx.handed_on,
            });
            if let Some(overlap) = &mut self.overlap {
                overlap.cut_off();
            }
        }
    }

    /// The position that acknowledges everything up to `lsn`, where a transaction committed at
    /// `commit_lsn` ended (or an idle point, both the same). The overlap is stored with it until passed.
    fn position(&mut self, commit_lsn: Lsn, lsn: Lsn) -> Position {
        let Some(overlap) = &mut self.overlap else {
            return Position::Postgres { lsn };
        };
        overlap.committed();
        if !overlap.ends_at(commit_lsn) {
            return overlap.position_at(lsn);
        }
        tracing::info!(left_out = self.left_out, at = %commit_lsn, "the stream has passed the carried-on snapshot: the changes it held were left out, nothing more is");
        self.overlap = None;
        Position::Postgres { lsn }
    }

    /// Drops the change events in `out[from..]` that an earlier connection already handed on.
    fn drop_replayed(&mut self, out: &mut Vec<SourceEvent>, from: usize) {
        if let Some(tx) = &mut self.transaction {
            let new = (out.len() - from) as u64;
            let replayed = tx.skip.min(new);
            out.drain(from..from + replayed as usize);
            tx.skip -= replayed;
            tx.handed_on += new - replayed;
        }
    }

    fn in_transaction(&self) -> bool {
        self.transaction.is_some()
    }

    /// A keepalive outside a transaction: everything the server had to send up to `wal_end` was sent.
    fn idle(&mut self, wal_end: Lsn, out: &mut Vec<SourceEvent>) {
        if self.transaction.is_none() && wal_end > self.last_position {
            self.last_position = wal_end;
            out.push(SourceEvent::Idle {
                position: self.position(wal_end, wal_end),
            });
        }
    }

    async fn apply(
        &mut self,
        message: Message,
        lsn: Lsn,
        source: &mut PostgresSource,
        out: &mut Vec<SourceEvent>,
    ) -> Result<(), SourceError> {
        match message {
            Message::Begin(begin) => {
                if self.transaction.is_some() {
                    return Err(SourceError::Protocol(
                        "Begin inside an open transaction".into(),
                    ));
                }
                // After a reconnect the server replays from the acknowledged position: transactions that
                // committed before the last position handed on were handed on whole; the one cut off
                // mid-way was handed on in part.
                let (handed_on, skip) = if begin.final_lsn < self.last_position {
                    (0, u64::MAX)
                } else {
                    match self.cut_off.take() {
                        Some(cut) if cut.commit_lsn == begin.final_lsn => {
                            tracing::info!(txid = begin.xid, handed_on = cut.handed_on, "replaying the transaction the lost connection cut off: skipping the changes already handed on");
                            (cut.handed_on, cut.handed_on)
                        }
                        _ => (0, 0),
                    }
                };
                self.transaction = Some(OpenTransaction {
                    xid: begin.xid,
                    commit_lsn: begin.final_lsn,
                    commit_time_us: begin.commit_time_us,
                    handed_on,
                    skip,
                    changes: 0,
                    changes_by_table: HashMap::new(),
                });
            }
            Message::Commit(commit) => {
                let Some(tx) = self.transaction.take() else {
                    return Err(SourceError::Protocol("Commit without Begin".into()));
                };
                if tx.skip == u64::MAX {
                    return Ok(());
                }
                self.last_position = self.last_position.max(commit.end_lsn);
                out.push(SourceEvent::Commit {
                    position: self.position(commit.commit_lsn, commit.end_lsn),
                    commit_time_us: Some(tx.commit_time_us),
                });
            }
            Message::Relation(relation) => {
                let captured = source.table_for(&relation).await?;
                if let Some(Captured { table, .. }) = &captured {
                    tracing::debug!(table = %table.qualified_name(), columns = table.columns.len(), "relation");
                }
                self.relations.insert(relation.id, captured);
            }
            // Logical decoding messages count among a transaction's events, so that a replay after a
            // reconnect skips them like the changes.
            Message::Insert(_)
            | Message::Update(_)
            | Message::Delete(_)
            | Message::Truncate(_)
            | Message::LogicalMessage(_) => {
                let from = out.len();
                self.apply_change(message, lsn, out)?;
                self.drop_replayed(out, from);
            }
            Message::Origin(_) | Message::Type(_) => {}
        }
        Ok(())
    }

    /// A row change (or truncate) into its change events.
    fn apply_change(
        &mut self,
        message: Message,
        lsn: Lsn,
        out: &mut Vec<SourceEvent>,
    ) -> Result<(), SourceError> {
        match message {
            Message::Insert(insert) => {
                if let Some(captured) = self.table(insert.relation_id)? {
                    let after = captured.decode(&insert.new)?;
                    out.extend(self.change(captured.table, Op::Create, None, Some(after), lsn)?);
                }
            }
            Message::Update(update) => {
                if let Some(captured) = self.table(update.relation_id)? {
                    self.update(captured, update.old.as_ref(), &update.new, lsn, out)?;
                }
            }
            Message::Delete(delete) => {
                if let Some(captured) = self.table(delete.relation_id)? {
                    let before = match &delete.old {
                        OldTuple::Key(tuple) | OldTuple::Full(tuple) => captured.decode(tuple)?,
                    };
                    out.extend(self.change(captured.table, Op::Delete, Some(before), None, lsn)?);
                }
            }
            Message::Truncate(truncate) => {
                for relation_id in &truncate.relation_ids {
                    if let Some(captured) = self.table(*relation_id)? {
                        out.extend(self.change(captured.table, Op::Truncate, None, None, lsn)?);
                    }
                }
            }
            // The server sends these only when asked (source.capture_messages); heartbeats are sluice's own.
            Message::LogicalMessage(message) if message.prefix != HEARTBEAT_PREFIX => {
                let transaction = self.transaction.as_ref().filter(|_| message.transactional);
                out.push(SourceEvent::Message(DecodingMessage {
                    database: self.database.to_string(),
                    prefix: message.prefix,
                    content: message.content.to_vec(),
                    transactional: message.transactional,
                    txid: transaction.map(|tx| u64::from(tx.xid)),
                    lsn: message.lsn,
                    commit_time_us: transaction.map(|tx| tx.commit_time_us),
                }));
            }
            _ => {}
        }
        Ok(())
    }

    /// An update; one that changes the key becomes a delete of the old key and a create of the new one, so
    /// that the old key's last event (and its tombstone) says it is gone — what Debezium does.
    fn update(
        &mut self,
        captured: Captured,
        old: Option<&OldTuple>,
        new: &TupleData,
        lsn: Lsn,
        out: &mut Vec<SourceEvent>,
    ) -> Result<(), SourceError> {
        let mut after = captured.decode(new)?;
        let before = match old {
            Some(OldTuple::Full(tuple)) => {
                let before = captured.decode(tuple)?;
                restore_unchanged_toast(&mut after, &before);
                Some(before)
            }
            Some(OldTuple::Key(tuple)) => Some(captured.decode(tuple)?),
            None => None,
        };
        let table = captured.table;
        let key_changed = before.as_ref().is_some_and(|b| {
            let mut keys = table.key_columns().map(|(i, _)| i).peekable();
            keys.peek().is_some() && keys.any(|i| b[i] != after[i])
        });
        if key_changed {
            out.extend(self.change(table.clone(), Op::Delete, before, None, lsn)?);
            out.extend(self.change(table, Op::Create, None, Some(after), lsn)?);
        } else {
            out.extend(self.change(table, Op::Update, before, Some(after), lsn)?);
        }
        Ok(())
    }

    fn table(&self, relation_id: u32) -> Result<Option<Captured>, SourceError> {
        match self.relations.get(&relation_id) {
            Some(table) => Ok(table.clone()),
            None => Err(SourceError::Protocol(format!(
                "change for relation {relation_id} before its Relation message"
            ))),
        }
    }

    /// The change event, numbered within its transaction; None when the overlap leaves it out (it takes
    /// no number then, so that the transaction's orders stay without gaps).
    fn change(
        &mut self,
        table: Arc<Table>,
        op: Op,
        before: Option<Row>,
        after: Option<Row>,
        lsn: Lsn,
    ) -> Result<Option<SourceEvent>, SourceError> {
        let tx = self
            .transaction
            .as_mut()
            .ok_or_else(|| SourceError::Protocol("row change outside a transaction".into()))?;
        let mut event = ChangeEvent {
            table,
            op,
            before,
            after,
            source: SourceInfo {
                database: self.database.clone(),
                txid: Some(u64::from(tx.xid)),
                lsn,
                commit_lsn: tx.commit_lsn,
                commit_time_us: tx.commit_time_us,
                snapshot: SnapshotMarker::False,
                order: None,
            },
        };
        if let Some(overlap) = &mut self.overlap {
            if overlap.leaves_out(tx.xid, tx.commit_lsn, &event) {
                self.left_out += 1;
                return Ok(None);
            }
        }
        tx.changes += 1;
        let in_table = tx.changes_by_table.entry(event.table.id).or_default();
        *in_table += 1;
        event.source.order = Some(TransactionOrder {
            total: tx.changes,
            in_table: *in_table,
        });
        Ok(Some(SourceEvent::Change(event)))
    }
}

/// A table as its events carry it: the relation's columns less the excluded ones.
#[derive(Clone, Debug)]
pub(super) struct Captured {
    pub table: Arc<Table>,
    /// Which of the relation's columns stay, in the server's column order; None when all of them do.
    keep: Option<Arc<[bool]>>,
}

impl Captured {
    /// Describes a table from the catalog and loads its model: what a snapshot reads and what comparing
    /// a contract needs, before any Relation message arrives.
    pub(super) async fn describe(
        client: &Client,
        name: &TableName,
        selection: &Selection,
        decimal: DecimalHandling,
    ) -> Result<(catalog::TableDescription, Captured), SourceError> {
        let description = catalog::describe_table(client, name).await?;
        let captured = Captured::load(
            client,
            &description.relation,
            &description.primary_key,
            selection,
            decimal,
        )
        .await?;
        Ok((description, captured))
    }

    /// Looks up the relation's column types in the catalog, then [`Captured::new`].
    pub(super) async fn load(
        client: &Client,
        relation: &Relation,
        primary_key: &[String],
        selection: &Selection,
        decimal: DecimalHandling,
    ) -> Result<Captured, SourceError> {
        let resolved = type_catalog::resolve_columns(client, relation, decimal).await?;
        Ok(Captured::new(relation, primary_key, resolved, selection))
    }

    /// The relation's table model with `source.exclude_columns` applied. Key columns stay whatever the
    /// patterns say: the message key needs them.
    pub(super) fn new(
        relation: &Relation,
        primary_key: &[String],
        resolved: Vec<ResolvedColumn>,
        selection: &Selection,
    ) -> Self {
        let mut table = table_from_relation(relation, primary_key, resolved);
        let keep: Vec<bool> = table
            .columns
            .iter()
            .map(|column| {
                let excluded = selection.excludes_column(&table.schema, &table.name, &column.name);
                if excluded && column.key {
                    tracing::warn!(table = %table.qualified_name(), column = %column.name, "source.exclude_columns matches a key column: it stays in the events, the message key needs it");
                }
                column.key || !excluded
            })
            .collect();
        if keep.iter().all(|kept| *kept) {
            return Captured {
                table: Arc::new(table),
                keep: None,
            };
        }
        let mut kept = keep.iter();
        table
            .columns
            .retain(|_| kept.next().copied().unwrap_or(true));
        Captured {
            table: Arc::new(table),
            keep: Some(keep.into()),
        }
    }

    /// A row the server sent (every published column) as the event's row.
    fn decode(&self, tuple: &TupleData) -> Result<Row, SourceError> {
        decode_row(&self.table, tuple, self.keep.as_deref())
    }
}

/// Text values to typed values, for the columns `keep` marks (all when None). A value that does not parse
/// is kept as `OutOfRange` with the reason, so the event reaches the dead-letter topic instead of stopping
/// the stream.
pub(super) fn decode_row(
    table: &Table,
    tuple: &TupleData,
    keep: Option<&[bool]>,
) -> Result<Row, SourceError> {
    let width = keep.map_or(table.columns.len(), <[bool]>::len);
    if tuple.0.len() != width {
        return Err(SourceError::Protocol(format!(
            "{} has {width} columns but a row arrived with {}",
            table.qualified_name(),
            tuple.0.len()
        )));
    }
    let kept = tuple
        .0
        .iter()
        .enumerate()
        .filter(|(i, _)| keep.is_none_or(|keep| keep[*i]))
        .map(|(_, value)| value);
    let row = table
        .columns
        .iter()
        .zip(kept)
        .map(|(column, value)| match value {
            TupleValue::Null => Value::Null,
            TupleValue::UnchangedToast => Value::UnchangedToast,
            TupleValue::Text(text) => types::parse_text(&column.column_type, text)
                .unwrap_or_else(|err| Value::OutOfRange(err.to_string())),
            TupleValue::Binary(_) => Value::OutOfRange("unexpected binary-format value".into()),
        })
        .collect();
    Ok(row)
}

/// With REPLICA IDENTITY FULL the old row carries the values an update left untouched in TOAST storage.
fn restore_unchanged_toast(after: &mut Row, before: &Row) {
    for (value, old) in after.iter_mut().zip(before) {
        if *value == Value::UnchangedToast && *old != Value::UnchangedToast {
            *value = old.clone();
        }
    }
}
