//! The PostgreSQL source: prepares the publication and the slot, then turns the slot's pgoutput stream into
//! [`SourceEvent`]s, answering the server with the position the pipeline has acknowledged.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::Client;

use super::catalog::{self, TableName};
use super::decoder::{Captured, StreamDecoder, HEARTBEAT_PREFIX};
use super::overlap::Overlap;
use super::pgoutput::{self, Relation};
use super::replication::{Frame, ReplicationConnection, SlotLifetime};
use super::reselect::{self, Reselect};
use super::signals::Incremental;
use super::snapshot::{Exported, Snapshot};
use super::start::{self, Start};
// Public here before they had modules of their own.
pub use super::describe::current_tables;
pub use super::error::SourceError;
pub use super::settings::{PostgresSettings, Resume};
use sluice_core::backoff::Backoff;
use sluice_core::event::{Lsn, PgSnapshotPosition, Position, SourceEvent};
use sluice_core::positions::SourceIdentity;

/// A prepared source: publication and slot in place.
pub struct PostgresSource {
    settings: PostgresSettings,
    catalog: Client,
    selected: BTreeSet<TableName>,
    identity: SourceIdentity,
    snapshot: Option<Snapshot>,
    /// The connection a temporary slot lives on, until streaming takes it.
    temporary_slot: Option<SlotConnection>,
    /// Selected tables first seen while streaming (added to the publication meanwhile), not yet handed
    /// to the incremental snapshot.
    joined: Vec<String>,
    /// Selected tables the stream met a Relation message for, not yet told to the incremental snapshot.
    described: Vec<String>,
    /// Whether the stream asks for logical decoding messages (the user's, or the watermarks).
    messages: bool,
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

/// The stream's periodic work, kept across the frames of one connection.
struct Ticks {
    /// Status updates to the server with the acknowledged position.
    status: tokio::time::Interval,
    heartbeat: tokio::time::Interval,
    /// Whether heartbeats are written at all (`heartbeat` never ticks otherwise).
    heartbeats: bool,
    /// Reads of the server's WAL position, for the lag metric.
    wal_probe: tokio::time::Interval,
    /// The incremental snapshot's periodic work (refusals, retries, the progress log).
    incremental: tokio::time::Interval,
}

impl Ticks {
    fn new(settings: &PostgresSettings) -> Ticks {
        let mut status = tokio::time::interval(settings.status_interval);
        status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let heartbeats = settings.heartbeat_interval;
        // Never ticked when heartbeats are off; any period will do.
        let mut heartbeat = tokio::time::interval(heartbeats.unwrap_or(Duration::from_secs(3600)));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut wal_probe = tokio::time::interval(WAL_END_PROBE_INTERVAL);
        wal_probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut incremental = tokio::time::interval(Duration::from_secs(1));
        incremental.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ticks {
            status,
            heartbeat,
            heartbeats: heartbeats.is_some(),
            wal_probe,
            incremental,
        }
    }
}

/// What ended a wait for the next frame.
enum Wake {
    Frame(Frame),
    /// Time for the incremental snapshot's periodic work.
    Incremental,
    /// Something else was seen to (a status update, a stop request, a heartbeat, …): wait again.
    Handled,
    /// Stop reading: the pipeline is gone, or a stop's grace ran out.
    Stop,
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

impl PostgresSource {
    /// Checks that `resume` (if any) belongs to this server and database, resolves the tables, makes the
    /// publication cover them and the slot exist.
    pub async fn prepare(
        settings: PostgresSettings,
        resume: Option<Resume<'_>>,
    ) -> Result<PostgresSource, SourceError> {
        // The replication connection first: it proves the REPLICATION privilege before anything is changed.
        let mut conn = ReplicationConnection::connect(&settings.connection).await?;
        let identity = identify(&mut conn, &settings, resume).await?;
        let catalog = catalog::connect(&settings.connection).await?;
        let mut selected = catalog::resolve_tables(&catalog, &settings.selection).await?;
        // The signal table is captured for its signals, never snapshotted or published, even when the
        // selection's patterns match it.
        let signal_table = settings
            .signal_table
            .as_deref()
            .map(super::incremental::table_name);
        selected.retain(|table| Some(table) != signal_table.as_ref());
        let tables: Vec<TableName> = selected.to_vec();
        // Watermarks travel as messages.
        let messages = settings.capture_messages || settings.signal_table.is_some();
        // The publication must exist before the slot: pgoutput reads it through the slot's historic snapshot.
        // It carries the signal table too, which is captured but never snapshotted or published.
        let mut published = tables.clone();
        if let Some(signal_table) = &settings.signal_table {
            published.push(super::signal_table::ensure(&catalog, signal_table).await?);
        }
        publish(&catalog, &settings, &published).await?;
        let slot = catalog::slot_info(&catalog, &settings.slot).await?;
        let begin = prepare_slot(&mut conn, &settings, slot.as_ref(), resume).await?;
        let Placed {
            progress,
            exported,
            temporary_slot,
        } = place_connection(conn, begin, settings.slot_lifetime).await?;
        let snapshot =
            progress.map(|progress| snapshot_to_read(&settings, &tables, progress, exported));
        Ok(PostgresSource {
            settings,
            catalog,
            selected: selected.into_iter().collect(),
            identity,
            snapshot,
            temporary_slot,
            joined: Vec::new(),
            described: Vec::new(),
            messages,
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
        let (from, progress) = from.into_parts();
        let overlap = match from {
            Position::PostgresSnapshot(progress) => Overlap::new(progress),
            _ => None,
        };
        let mut incremental = Incremental::new(&self.settings, progress, control.metrics.clone());
        let mut reselect = match self.settings.reselect_unchanged_toast {
            true => reselect::possible(&self.catalog, &self.settings.publication)
                .await
                .then(Reselect::default),
            false => None,
        };
        // Events a lost connection left unsent, which go first on the next one: the decoder counts them
        // handed on.
        let mut produced = Vec::new();
        let stopping_until =
            (*control.stop.borrow()).then(|| tokio::time::Instant::now() + control.stop_grace);
        let mut link = Link {
            control,
            acked: resume,
            stopping_until,
        };
        let mut decoder = StreamDecoder::new(&self.settings.database, resume, overlap)
            .with_user_messages(self.settings.capture_messages);
        let mut backoff = Backoff::new(RECONNECT_MAX_DELAY);
        let mut reconnecting = false;
        loop {
            backoff.connecting();
            let err = match self
                .stream_connection(
                    &mut decoder,
                    &mut incremental,
                    &mut reselect,
                    &mut produced,
                    &mut link,
                    reconnecting,
                )
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
        incremental: &mut Incremental,
        reselect: &mut Option<Reselect>,
        produced: &mut Vec<SourceEvent>,
        link: &mut Link,
        reconnecting: bool,
    ) -> Result<ReplicationConnection, SourceError> {
        let mut conn = self.start_streaming(link, reconnecting).await?;
        let mut ticks = Ticks::new(&self.settings);
        if !produced.is_empty() {
            let give_up_at = give_up_at(link);
            if !self
                .hand_on(produced, &mut conn, link, &mut ticks, give_up_at)
                .await?
            {
                return Ok(conn);
            }
        }
        // On a stop request, read on to the end of the open transaction: a half-published one would repeat.
        while link.stopping_until.is_none() || decoder.in_transaction() {
            let give_up_at = give_up_at(link);
            match self.wake(&mut conn, link, &mut ticks, give_up_at).await? {
                Wake::Frame(frame) => {
                    self.apply_frame(frame, decoder, &mut conn, link, produced)
                        .await?;
                    for table in self.joined.drain(..) {
                        incremental.joined(table);
                    }
                    for table in self.described.drain(..) {
                        incremental.described(&table);
                    }
                    incremental.process(produced, decoder);
                }
                Wake::Incremental => incremental.poll(produced),
                Wake::Handled => continue,
                Wake::Stop => break,
            };
            // Behind any update still waiting for its commit to have its values re-selected.
            if let Some(reselect) = reselect {
                self.reopen_catalog_if_closed().await?;
                let metrics = link.control.metrics.as_ref();
                reselect.process(produced, &self.catalog, metrics).await;
            }
            let handed_on = self
                .hand_on(produced, &mut conn, link, &mut ticks, give_up_at)
                .await?;
            if !handed_on {
                break;
            }
        }
        Ok(conn)
    }

    /// Opens the replication connection (or takes the one that holds the temporary slot) and starts
    /// streaming from the acknowledged position.
    async fn start_streaming(
        &mut self,
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
            self.messages,
        )
        .await?;
        tracing::info!(slot = %self.settings.slot, from = %link.acked, "streaming");
        link.control.metrics.set_streaming(true);
        Ok(conn)
    }

    /// Waits for the next frame, seeing to what comes first meanwhile: status updates, a stop request,
    /// heartbeats and the WAL probe.
    async fn wake(
        &mut self,
        conn: &mut ReplicationConnection,
        link: &mut Link,
        ticks: &mut Ticks,
        give_up_at: tokio::time::Instant,
    ) -> Result<Wake, SourceError> {
        let control = &mut link.control;
        let wake = tokio::select! {
            frame = conn.next_frame() => Wake::Frame(frame?),
            // The pipeline failed (and says why): stop reading, report what it acknowledged.
            _ = control.events.closed() => Wake::Stop,
            _ = ticks.status.tick() => {
                link.acked = link.acked.max(*control.acknowledged.borrow_and_update());
                conn.send_status(link.acked, false).await?;
                Wake::Handled
            }
            _ = control.stop.changed(), if link.stopping_until.is_none() => {
                link.stopping_until = Some(tokio::time::Instant::now() + control.stop_grace);
                tracing::info!(within = ?control.stop_grace, "stopping: finishing the open transaction");
                Wake::Handled
            }
            _ = tokio::time::sleep_until(give_up_at), if link.stopping_until.is_some() => {
                tracing::warn!(waited = ?control.stop_grace, "stopping: the open transaction did not end in time; the part read is sent again on the next run");
                Wake::Stop
            }
            _ = ticks.heartbeat.tick(), if ticks.heartbeats => {
                self.emit_heartbeat().await;
                Wake::Handled
            }
            _ = ticks.wal_probe.tick() => {
                self.report_wal_end(control.metrics.as_ref()).await;
                Wake::Handled
            }
            _ = ticks.incremental.tick() => Wake::Incremental,
        };
        Ok(wake)
    }

    /// Feeds a frame to the decoder, which puts the events it completes in `produced`.
    async fn apply_frame(
        &mut self,
        frame: Frame,
        decoder: &mut StreamDecoder,
        conn: &mut ReplicationConnection,
        link: &mut Link,
        produced: &mut Vec<SourceEvent>,
    ) -> Result<(), SourceError> {
        match frame {
            Frame::XLogData {
                wal_start, data, ..
            } => {
                let message = pgoutput::decode(&data)?;
                if let Some(relation) = decoder.apply(message, wal_start, produced)? {
                    let captured = self.table_for(&relation).await?;
                    decoder.described(relation.id, captured);
                }
            }
            Frame::Keepalive {
                wal_end,
                reply_requested,
            } => {
                decoder.idle(wal_end, produced);
                if reply_requested {
                    link.refresh_acked();
                    conn.send_status(link.acked, false).await?;
                }
            }
            Frame::CopyDone => {
                return Err(SourceError::Protocol(
                    "the server ended the replication stream".into(),
                ))
            }
        }
        Ok(())
    }

    /// Hands the produced events to the pipeline; false when reading should stop (the pipeline is gone,
    /// or a stop's grace ran out while it was full). The decoder counts an event handed on when it
    /// produces it, so what the connection's failure leaves unsent stays in `produced` for the next one.
    async fn hand_on(
        &mut self,
        produced: &mut Vec<SourceEvent>,
        conn: &mut ReplicationConnection,
        link: &mut Link,
        ticks: &mut Ticks,
        give_up_at: tokio::time::Instant,
    ) -> Result<bool, SourceError> {
        let control = &mut link.control;
        let mut sending = std::mem::take(produced).into_iter();
        while let Some(event) = sending.next() {
            // Keep answering the server while the pipeline is full, so it does not time the connection out.
            let permit = loop {
                tokio::select! {
                    permit = control.events.reserve() => break permit,
                    _ = ticks.status.tick() => {
                        link.acked = link.acked.max(*control.acknowledged.borrow_and_update());
                        if let Err(err) = conn.send_status(link.acked, false).await {
                            produced.push(event);
                            produced.extend(sending);
                            return Err(err.into());
                        }
                    }
                    _ = tokio::time::sleep_until(give_up_at), if link.stopping_until.is_some() => {
                        tracing::warn!(waited = ?control.stop_grace, "stopping: the pipeline is still full; the open transaction's part read is sent again on the next run");
                        return Ok(false);
                    }
                    // While reading waits is when the lag grows: keep measuring it.
                    _ = ticks.wal_probe.tick() => self.report_wal_end(control.metrics.as_ref()).await,
                }
            };
            match permit {
                Ok(permit) => permit.send(event),
                Err(_) => return Ok(false),
            }
        }
        Ok(true)
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
        let known = self.selected.contains(&name);
        let is_signal_table =
            self.settings.signal_table.as_deref() == Some(name.to_string().as_str());
        let selected =
            known || is_signal_table || self.settings.selection.includes(&name.schema, &name.name);
        if !known && selected && !is_signal_table {
            tracing::info!(table = %name, "a selected table joined the publication while streaming");
            self.joined.push(name.to_string());
            self.selected.insert(name.clone());
        }
        if selected && !is_signal_table {
            self.described.push(name.to_string());
        }
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
/// When a stop's grace runs out; a time that never comes until a stop sets one.
fn give_up_at(link: &Link) -> tokio::time::Instant {
    link.stopping_until
        .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400 * 365))
}

pub async fn drop_slot(settings: &PostgresSettings) -> Result<(), SourceError> {
    let mut conn = ReplicationConnection::connect(&settings.connection).await?;
    conn.drop_slot(&settings.slot).await?;
    conn.close().await?;
    tracing::info!(slot = %settings.slot, "dropped replication slot");
    Ok(())
}

/// The server and database `conn` reaches; an error when `resume` was written for others.
async fn identify(
    conn: &mut ReplicationConnection,
    settings: &PostgresSettings,
    resume: Option<Resume<'_>>,
) -> Result<SourceIdentity, SourceError> {
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
    Ok(identity)
}

/// Makes the publication cover `tables`, and logs what that changed.
async fn publish(
    catalog: &Client,
    settings: &PostgresSettings,
    tables: &[TableName],
) -> Result<(), SourceError> {
    let change = catalog::ensure_publication(catalog, &settings.publication, tables).await?;
    if change.created {
        tracing::info!(publication = %settings.publication, tables = tables.len(), "created publication");
    }
    let names = |tables: &[TableName]| tables.iter().map(ToString::to_string).collect::<Vec<_>>();
    if !change.created && !change.added.is_empty() {
        tracing::info!(publication = %settings.publication, added = ?names(&change.added), "added tables to publication");
    }
    if !change.removed.is_empty() {
        tracing::info!(publication = %settings.publication, removed = ?names(&change.removed), "dropped tables that left the selection from the publication");
    }
    if let Some((kept, reason)) = &change.not_removed {
        tracing::warn!(publication = %settings.publication, tables = ?names(kept), reason = %reason, "tables that left the selection stay in the publication: their changes are decoded and skipped");
    }
    Ok(())
}

/// What is read already and the name of the slot's exported snapshot (if it has one), when the tables are
/// read before streaming.
type Begin = Option<(PgSnapshotPosition, Option<String>)>;

/// Does what the start decision says to the slot (create it, or drop and create it again); returns how
/// the run begins.
async fn prepare_slot(
    conn: &mut ReplicationConnection,
    settings: &PostgresSettings,
    slot: Option<&catalog::SlotInfo>,
    resume: Option<Resume<'_>>,
) -> Result<Begin, SourceError> {
    Ok(match start::decide(settings, slot, resume)? {
        Start::Stream => None,
        Start::Snapshot(progress) => Some((progress, None)),
        Start::CreateSlot { snapshot } => {
            let created = create_slot(conn, settings, snapshot).await?;
            snapshot.then_some(created)
        }
        Start::RecreateSlot => {
            conn.drop_slot(&settings.slot).await?;
            Some(create_slot(conn, settings, true).await?)
        }
    })
}

/// Where the replication connection went once the slot was prepared, and what the snapshot (if any)
/// starts from.
struct Placed {
    progress: Option<PgSnapshotPosition>,
    /// With the snapshot, when the slot exported one.
    exported: Option<Exported>,
    /// Kept for streaming, when the slot is temporary.
    temporary_slot: Option<SlotConnection>,
}

/// Where the replication connection goes once the slot is prepared. An exported snapshot lives as long as
/// the connection that exported it stays idle: it goes with the snapshot until adopted. A temporary slot
/// lives as long as that connection: it comes back for streaming. Otherwise the connection's work is done.
async fn place_connection(
    conn: ReplicationConnection,
    begin: Begin,
    lifetime: SlotLifetime,
) -> Result<Placed, SourceError> {
    let temporary = lifetime == SlotLifetime::Temporary;
    Ok(match begin {
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
            Placed {
                progress: Some(progress),
                exported: Some(exported),
                temporary_slot: lent,
            }
        }
        other => {
            let held = if temporary {
                Some(SlotConnection::Held(conn))
            } else {
                conn.close().await?;
                None
            };
            Placed {
                progress: other.map(|(progress, _)| progress),
                exported: None,
                temporary_slot: held,
            }
        }
    })
}

/// The snapshot this run reads, from `progress` on, of the selected `tables`.
fn snapshot_to_read(
    settings: &PostgresSettings,
    tables: &[TableName],
    mut progress: PgSnapshotPosition,
    exported: Option<Exported>,
) -> Snapshot {
    // What was read of tables no longer selected is forgotten; they are read whole if they return.
    progress.tables.retain(|read| {
        tables
            .iter()
            .any(|table| super::snapshot_progress::is(read, table))
    });
    Snapshot {
        connection: settings.connection.clone(),
        database: settings.database.clone(),
        tables: tables.to_vec(),
        selection: settings.selection.clone(),
        decimal_handling: settings.decimal_handling,
        connections: settings.snapshot_connections,
        chunk_rows: settings.snapshot_chunk_rows,
        progress,
        exported,
    }
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
