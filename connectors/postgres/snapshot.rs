//! The initial snapshot: the rows already in the selected tables, published as `op = "r"` events before
//! streaming starts.
//!
//! When sluice creates the slot it asks for an exported snapshot: the database exactly as of the slot's
//! consistent point. Reading the tables inside that snapshot and then streaming from the consistent point
//! publishes every row once: what committed before the point is in the snapshot, what committed after it
//! is in the stream. Rows are read with `COPY … TO STDOUT` in text format — the same text output functions
//! pgoutput uses — so snapshot rows and streamed rows go through one value decoder.
//!
//! Each finished table and key range is recorded in the position file once its rows are on the broker.
//! A run that stops or dies is carried on by the next one: it reads only what is not recorded, in a
//! snapshot of its own, and the stream then leaves out the changes that snapshot already holds (see
//! `overlap`).

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_postgres::Client;

use super::catalog::{self, TableName};
use super::connection::PgConnection;
use super::decoder::Captured;
use super::error::SourceError;
use super::overlap::{self, Overlap};
use super::replication::{quote_literal, ReplicationConnection};
use super::snapshot_copy::read_piece;
// Public before COPY reading had a module of its own.
pub use super::snapshot_copy::parse_copy_line;
use super::snapshot_piece::{KeyRange, Read, RowSender, TableRead};
use super::snapshot_plan::{plan, Next, Plan, Splitting, WorkQueue};
use super::snapshot_progress::{self, BegunBefore, Finished};
use crate::config::{DecimalHandling, Selection};
use sluice_core::event::{
    ChangeEvent, Lsn, PgSnapshotPosition, PgTableRead, Position, SnapshotMarker, SourceEvent,
    SourceInfo,
};
use sluice_core::metrics::SourceMetrics;
use sluice_core::positions::Journal;

/// Rows on their way from the readers to the one place that marks the last.
const ROWS_IN_FLIGHT: usize = 1024;
/// A snapshot ready to be read.
pub struct Snapshot {
    pub(super) connection: PgConnection,
    pub(super) database: String,
    pub(super) tables: Vec<TableName>,
    /// For the columns left out of events.
    pub(super) selection: Selection,
    pub(super) decimal_handling: DecimalHandling,
    /// Connections reading tables at the same time (`source.snapshot_connections`).
    pub(super) connections: usize,
    /// A table the planner estimates larger than this, with a one-column integer primary key, is read in
    /// primary-key ranges of about this many rows: the connections share them, and each finished range is
    /// recorded, so that an interrupted snapshot is carried on from there (`source.snapshot_chunk_rows`).
    pub(super) chunk_rows: u64,
    /// What earlier runs put on the broker, and the snapshots they read it in; `lsn` is the slot's
    /// consistent point, where the stream continues once every row is on the broker.
    pub(super) progress: PgSnapshotPosition,
    /// The snapshot the slot exported, on the connection that created the slot. None when the slot
    /// existed already (an interrupted snapshot carried on, or a slot sluice has no
    /// position for): the rows are then read in a snapshot of sluice's own, later than the consistent
    /// point, which the stream makes up for.
    pub(super) exported: Option<Exported>,
}

/// A snapshot exported by `CREATE_REPLICATION_SLOT`: it lives only until its connection runs another
/// command, so the connection waits idle until every reader adopted it.
pub(super) struct Exported {
    pub(super) connection: ReplicationConnection,
    pub(super) name: String,
    /// Where the connection goes once the snapshot is adopted, when it holds a temporary slot (which
    /// dies with it); without one it is closed.
    pub(super) hand_back: Option<oneshot::Sender<ReplicationConnection>>,
}

/// How a snapshot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotOutcome {
    /// Every row of every table was handed on, followed by the Commit that seals the snapshot.
    pub complete: bool,
    pub rows: u64,
}

impl Snapshot {
    /// The position to store before the first row: what earlier runs finished, for the tables still
    /// selected.
    pub fn position(&self) -> Position {
        Position::PostgresSnapshot(self.progress.clone())
    }

    /// Reads every table not already on the broker and hands the rows on, the last one marked `last`,
    /// then a Commit with the position to stream from. Tables (and the key ranges of large ones) are shared
    /// out among `connections` connections that all adopt the same snapshot. Each finished part is
    /// followed by a Commit that records it. A stop request (or a closed channel) ends it early,
    /// incomplete.
    ///
    /// `journal` records each part before its first row is handed on, for the runs that may carry this one
    /// on: only changes to parts no earlier run began can be left out of the stream.
    pub async fn read(
        mut self,
        events: mpsc::Sender<SourceEvent>,
        stop: watch::Receiver<bool>,
        metrics: Arc<dyn SourceMetrics>,
        journal: Journal,
    ) -> Result<SnapshotOutcome, SourceError> {
        let exported = self.exported.is_some();
        let begun_before = if exported {
            BegunBefore::nothing(journal, self.progress.lsn)?
        } else {
            BegunBefore::carried_on(journal, self.progress.lsn)?
        };
        let (clients, later) = self.open_readers(self.connections.max(1)).await?;
        let to_read = self.tables_to_read();
        tracing::info!(tables = to_read.len(), connections = clients.len(), at = %self.progress.lsn, exported, later_snapshot = later.is_some(), "snapshot started");

        // The readers' rows meet in one channel, so that one place can hold back the final row.
        let (rows_tx, rows_rx) = mpsc::channel(ROWS_IN_FLIGHT);
        let mut readers = self.spawn_readers(clients, to_read, rows_tx, stop, metrics);
        let mut hand_on = HandOn {
            events,
            begun_before,
            later,
            progress: self.progress,
            pending: None,
            finished: Vec::new(),
            handed_on: 0,
        };
        // When the pipeline is gone, the readers' next row finds the channel closed and they stop.
        let forwarding = hand_on.forward(rows_rx).await?;
        let mut all_read = true;
        while let Some(done) = readers.join_next().await {
            let read = done.map_err(|err| {
                SourceError::Protocol(format!("a snapshot reader failed: {err}"))
            })??;
            all_read &= read;
        }
        if !(forwarding && all_read) {
            // The held-back row's part is not recorded: the next run reads it again.
            tracing::info!(
                rows = hand_on.handed_on,
                "snapshot interrupted; the next run carries it on from the parts recorded as on the broker"
            );
            return Ok(SnapshotOutcome {
                complete: false,
                rows: hand_on.handed_on,
            });
        }
        Ok(hand_on.finish().await)
    }

    /// The selected tables not already on the broker.
    fn tables_to_read(&self) -> Vec<TableName> {
        let (done, to_read): (Vec<TableName>, Vec<TableName>) =
            self.tables.iter().cloned().partition(|name| {
                self.progress
                    .tables
                    .iter()
                    .any(|read| read.done && snapshot_progress::is(read, name))
            });
        if !done.is_empty() {
            tracing::info!(tables = ?done.iter().map(ToString::to_string).collect::<Vec<_>>(), "carrying on the snapshot: these tables are on the broker already");
        }
        to_read
    }

    /// One reader a connection, sharing out `to_read` and sending rows to `rows`.
    fn spawn_readers(
        &self,
        clients: Vec<Client>,
        to_read: Vec<TableName>,
        rows: mpsc::Sender<Read>,
        stop: watch::Receiver<bool>,
        metrics: Arc<dyn SourceMetrics>,
    ) -> JoinSet<Result<bool, SourceError>> {
        // The tables an earlier run began in key ranges and did not finish.
        let carried: BTreeMap<TableName, PgTableRead> = self
            .progress
            .tables
            .iter()
            .filter(|read| read.key.is_some() && !read.done)
            .map(|read| (table_name(read), read.clone()))
            .collect();
        let source = SourceInfo {
            database: self.database.as_str().into(),
            txid: None,
            lsn: self.progress.lsn,
            commit_lsn: self.progress.lsn,
            commit_time_us: sluice_core::positions::now_ms() * 1000,
            snapshot: SnapshotMarker::True,
            order: None,
        };
        let queue = Arc::new(WorkQueue::new(to_read.into_iter()));
        let carried = Arc::new(carried);
        let mut readers = JoinSet::new();
        for (index, client) in clients.into_iter().enumerate() {
            let reader = Reader {
                client,
                index,
                queue: queue.clone(),
                carried: carried.clone(),
                selection: self.selection.clone(),
                decimal: self.decimal_handling,
                chunk_rows: self.chunk_rows,
                metrics: metrics.clone(),
                rows: RowSender::new(rows.clone(), stop.clone(), source.clone()),
            };
            readers.spawn(reader.run());
        }
        readers
    }

    /// `count` connections in one snapshot: the slot's exported one, or else one of sluice's own, whose
    /// visibility is added to `progress.later`; returns its index there.
    async fn open_readers(
        &mut self,
        count: usize,
    ) -> Result<(Vec<Client>, Option<usize>), SourceError> {
        let exported = self.exported.as_ref().map(|exported| exported.name.clone());
        let first = self.open_reading_transaction(exported.as_deref()).await?;
        let (shared, read_in) = match exported {
            Some(name) => (name, None),
            None => {
                // Taken in this one statement: the snapshot, the transactions it saw, and a WAL position
                // every one of them committed before.
                let row = first
                    .query_one(
                        "SELECT pg_export_snapshot(), pg_current_snapshot()::text, \
                                pg_current_wal_insert_lsn()::text",
                        &[],
                    )
                    .await
                    .map_err(catalog::query_error(
                        "snapshot: cannot take a snapshot to carry on in".to_owned(),
                    ))?;
                let until: Lsn = row
                    .get::<_, String>(2)
                    .parse()
                    .map_err(SourceError::Protocol)?;
                let later = overlap::parse_snapshot(&row.get::<_, String>(1), until)
                    .map_err(SourceError::Protocol)?;
                tracing::info!(xmin = later.xmin, xmax = later.xmax, running = later.xip.len(), %until, "reading in a snapshot later than the consistent point: the stream leaves out the changes it holds");
                self.progress.later.push(later);
                (row.get(0), Some(self.progress.later.len() - 1))
            }
        };
        let mut clients = vec![first];
        for _ in 1..count {
            clients.push(self.open_reading_transaction(Some(&shared)).await?);
        }
        // Every reader holds the snapshot now; the exporting connection may go, or stream.
        if let Some(exported) = self.exported.take() {
            match exported.hand_back {
                // A failed hand-back means the source is gone; the connection (and slot) go with it.
                Some(hand_back) => drop(hand_back.send(exported.connection)),
                None => exported.connection.close().await?,
            }
        }
        Ok((clients, read_in))
    }

    /// A connection in a read-only REPEATABLE READ transaction, on the snapshot named `adopt` if any, with
    /// the output settings the value decoders expect (as every catalog connection has).
    async fn open_reading_transaction(&self, adopt: Option<&str>) -> Result<Client, SourceError> {
        let client = catalog::connect(&self.connection).await?;
        // A reader waits in its transaction while the broker catches up: a server-wide timeout must not
        // end it.
        execute(&client, "SET idle_in_transaction_session_timeout = 0").await?;
        execute(&client, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
        if let Some(name) = adopt {
            let adopt = format!("SET TRANSACTION SNAPSHOT {}", quote_literal(name));
            execute(&client, &adopt).await?;
        }
        Ok(client)
    }
}

fn table_name(read: &PgTableRead) -> TableName {
    TableName {
        schema: read.schema.clone(),
        name: read.name.clone(),
    }
}

/// One snapshot reader: a connection in the shared snapshot, taking tables and key ranges from the queue.
struct Reader {
    client: Client,
    /// Which reader, for the logs.
    index: usize,
    queue: Arc<WorkQueue>,
    /// The tables an earlier run began in key ranges and did not finish.
    carried: Arc<BTreeMap<TableName, PgTableRead>>,
    selection: Selection,
    decimal: DecimalHandling,
    chunk_rows: u64,
    metrics: Arc<dyn SourceMetrics>,
    rows: RowSender,
}

impl Reader {
    /// Reads pieces until the queue is done, then ends the transaction; false when a row was refused.
    async fn run(self) -> Result<bool, SourceError> {
        while let Some(next) = self.queue.next().await {
            let read = match next {
                Next::Table(name, splitting) => self.table(name, splitting).await?,
                Next::Range(table, range) => self.piece(&table, Some(&range)).await?,
            };
            if !read {
                return Ok(false);
            }
        }
        execute(&self.client, "COMMIT").await?;
        Ok(true)
    }

    /// Looks a table up and plans it: read whole here, or cut into key ranges of which this reader reads one.
    async fn table(&self, name: TableName, splitting: Splitting) -> Result<bool, SourceError> {
        let found = Captured::describe(&self.client, &name, &self.selection, self.decimal).await?;
        let table = TableRead::start(&name, found, self.metrics.as_ref());
        let carried = self.carried.get(&name);
        match plan(&self.client, &table, carried, self.chunk_rows, &self.rows).await? {
            Plan::Whole => {
                splitting.done(&table, Vec::new());
                self.piece(&table, None).await
            }
            Plan::Ranges(mut ranges) => {
                // This reader takes one range; the others go to the front of the queue, for whichever
                // reader is free first.
                let first = ranges.pop();
                table.expect_pieces(ranges.len() + usize::from(first.is_some()));
                splitting.done(&table, ranges);
                match first {
                    Some(range) => self.piece(&table, Some(&range)).await,
                    // Nothing left where no range was read yet.
                    None => Ok(table.finished(&self.rows).await),
                }
            }
        }
    }

    async fn piece(
        &self,
        table: &TableRead,
        range: Option<&KeyRange>,
    ) -> Result<bool, SourceError> {
        read_piece(&self.client, self.index, table, range, &self.rows).await
    }
}

/// The one place the readers' rows meet: it holds back the latest row in case it is the last, and
/// records each finished part once its rows are handed on.
struct HandOn {
    events: mpsc::Sender<SourceEvent>,
    begun_before: BegunBefore,
    /// The later snapshot the rows are read in (its index in `progress.later`), if not the exported one.
    later: Option<usize>,
    progress: PgSnapshotPosition,
    /// The row held back in case it is the last, and the parts finished since it arrived: a part is
    /// recorded only once its rows, that row included, are handed on.
    pending: Option<ChangeEvent>,
    finished: Vec<Finished>,
    handed_on: u64,
}

impl HandOn {
    /// Hands on what the readers send until they are all done; false when the pipeline is gone.
    async fn forward(&mut self, mut rows: mpsc::Receiver<Read>) -> Result<bool, SourceError> {
        while let Some(read) = rows.recv().await {
            match read {
                Read::Row(event) => {
                    self.handed_on += 1;
                    let Some(previous) = self.pending.replace(event) else {
                        continue;
                    };
                    if self
                        .events
                        .send(SourceEvent::Change(previous))
                        .await
                        .is_err()
                    {
                        return Ok(false);
                    }
                }
                Read::Begun(part) => {
                    // On disk before the part's first row goes on, which follows this in the channel.
                    let journal = self.begun_before.journal().clone();
                    tokio::task::spawn_blocking(move || journal.append(&part))
                        .await
                        .map_err(|err| {
                            SourceError::Protocol(format!("the snapshot journal failed: {err}"))
                        })??;
                    continue;
                }
                Read::Finished(part) => {
                    self.finished.push(part);
                    if self.pending.is_some() {
                        continue;
                    }
                }
            }
            if !self.finished.is_empty() {
                self.record_finished();
                let commit = SourceEvent::Commit {
                    position: Position::PostgresSnapshot(self.progress.clone()),
                    commit_time_us: None,
                };
                if self.events.send(commit).await.is_err() {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Every part is read: hands on the last row, marked so, and the Commit with the position to stream
    /// from.
    async fn finish(mut self) -> SnapshotOutcome {
        let rows = self.handed_on;
        if let Some(mut last) = self.pending.take() {
            last.source.snapshot = SnapshotMarker::Last;
            if self.events.send(SourceEvent::Change(last)).await.is_err() {
                return SnapshotOutcome {
                    complete: false,
                    rows,
                };
            }
        }
        self.record_finished();
        let mut progress = self.progress;
        progress.complete = true;
        let at = progress.lsn;
        // Rows read later than the consistent point: the stream leaves out what they hold.
        let position = match Overlap::new(progress) {
            Some(overlap) => overlap.position_at(at),
            None => Position::Postgres { lsn: at },
        };
        let commit = SourceEvent::Commit {
            position,
            commit_time_us: None,
        };
        let complete = self.events.send(commit).await.is_ok();
        tracing::info!(rows, "snapshot read");
        SnapshotOutcome { complete, rows }
    }

    /// Records the parts finished since the last Commit.
    fn record_finished(&mut self) {
        for part in std::mem::take(&mut self.finished) {
            // The later snapshot a finished part counts as read in: none (leave nothing out) where an
            // earlier run began it.
            let (table, key, low, high) = match &part {
                Finished::Range {
                    table,
                    key,
                    low,
                    high,
                } => (table, Some(key.as_str()), *low, *high),
                Finished::Table(table) | Finished::Forget(table) => {
                    (table, None, i64::MIN, i64::MAX)
                }
            };
            let read_in = self
                .later
                .filter(|_| !self.begun_before.overlaps(table, key, low, high));
            snapshot_progress::record(&mut self.progress, &part, read_in);
        }
    }
}

async fn execute(client: &Client, sql: &str) -> Result<(), SourceError> {
    let context = format!("snapshot: `{sql}` failed");
    client
        .batch_execute(sql)
        .await
        .map_err(catalog::query_error(context))?;
    Ok(())
}

#[cfg(test)]
#[path = "snapshot_tests.rs"]
mod tests;
