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

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{
    AtomicU64, AtomicUsize,
    Ordering::{AcqRel, Relaxed},
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinSet;
use tokio_postgres::Client;

use super::catalog::{self, CatalogError, TableName};
use super::connection::PgConnection;
use super::decoder::{decode_row, Captured};
use super::overlap::{self, Overlap};
use super::pgoutput::{TupleData, TupleValue};
use super::reader::SourceError;
use super::replication::{quote_ident, quote_literal, ReplicationConnection, OUTPUT_SETTINGS};
use super::snapshot_progress::{self, Begun, BegunBefore, Finished};
use crate::config::{DecimalHandling, Selection};
use crate::event::{
    ChangeEvent, Lsn, Op, PgSnapshotPosition, PgTableRead, Position, Row, SnapshotMarker,
    SourceEvent, SourceInfo, Table,
};
use crate::metrics::{Metrics, SnapshotProgress};
use crate::positions::Journal;

/// Rows on their way from the readers to the one place that marks the last.
const ROWS_IN_FLIGHT: usize = 1024;
/// Primary-key types a large table can be split on: ranges of them are plain integer arithmetic.
const SPLITTABLE_KEY_TYPES: [&str; 3] = ["int2", "int4", "int8"];
/// How often a table's progress is logged while it is read.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

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

/// What reaches the one place that hands rows on: a row, or news that a part of the snapshot begins
/// (before its first row) or is read.
enum Read {
    Row(ChangeEvent),
    Begun(Begun),
    Finished(Finished),
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
        metrics: Arc<Metrics>,
        journal: Journal,
    ) -> Result<SnapshotOutcome, SourceError> {
        let exported = self.exported.is_some();
        let begun_before = if exported {
            BegunBefore::nothing(journal, self.progress.lsn)?
        } else {
            BegunBefore::carried_on(journal, self.progress.lsn)?
        };
        let (clients, later) = self.open_readers(self.connections.max(1)).await?;
        // The later snapshot a finished part counts as read in: none (leave nothing out) where an earlier
        // run began it.
        let read_in = |part: &Finished| -> Option<usize> {
            let (table, key, low, high) = match part {
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
            later.filter(|_| !begun_before.overlaps(table, key, low, high))
        };
        let carried: BTreeMap<TableName, PgTableRead> = self
            .progress
            .tables
            .iter()
            .filter(|read| read.key.is_some() && !read.done)
            .map(|read| (table_name(read), read.clone()))
            .collect();
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
        tracing::info!(tables = to_read.len(), connections = clients.len(), at = %self.progress.lsn, exported, later_snapshot = later.is_some(), "snapshot started");

        let source = SourceInfo {
            database: self.database.as_str().into(),
            txid: None,
            lsn: self.progress.lsn,
            commit_lsn: self.progress.lsn,
            commit_time_us: crate::positions::now_ms() * 1000,
            snapshot: SnapshotMarker::True,
            order: None,
        };
        // The readers' rows meet in one channel, so that one place can hold back the final row.
        let (rows_tx, mut rows_rx) = mpsc::channel(ROWS_IN_FLIGHT);
        let queue = Arc::new(WorkQueue::new(to_read.into_iter()));
        let carried = Arc::new(carried);
        let chunk_rows = self.chunk_rows;
        let mut readers = JoinSet::new();
        for (reader, client) in clients.into_iter().enumerate() {
            let queue = queue.clone();
            let carried = carried.clone();
            let selection = self.selection.clone();
            let decimal = self.decimal_handling;
            let metrics = metrics.clone();
            let rows = RowSender {
                tx: rows_tx.clone(),
                stop: stop.clone(),
                source: source.clone(),
            };
            readers.spawn(async move {
                loop {
                    let read = match queue.next().await {
                        None => break,
                        Some(Next::Table(name, splitting)) => {
                            let found =
                                Captured::describe(&client, &name, &selection, decimal).await?;
                            let table = TableRead::start(&name, found, &metrics);
                            let plan = plan(&client, &table, carried.get(&name), chunk_rows, &rows)
                                .await?;
                            match plan {
                                Plan::Whole => {
                                    splitting.done(&table, Vec::new());
                                    read_piece(&client, reader, &table, None, &rows).await?
                                }
                                Plan::Ranges(mut ranges) => {
                                    // This reader takes one range; the others go to the front of the
                                    // queue, for whichever reader is free first.
                                    let first = ranges.pop();
                                    table.pieces.store(
                                        ranges.len() + usize::from(first.is_some()),
                                        Relaxed,
                                    );
                                    splitting.done(&table, ranges);
                                    match first {
                                        Some(range) => {
                                            read_piece(&client, reader, &table, Some(&range), &rows)
                                                .await?
                                        }
                                        // Nothing left where no range was read yet.
                                        None => table.finished(&rows).await,
                                    }
                                }
                            }
                        }
                        Some(Next::Range(table, range)) => {
                            read_piece(&client, reader, &table, Some(&range), &rows).await?
                        }
                    };
                    if !read {
                        return Ok(false);
                    }
                }
                execute(&client, "COMMIT").await?;
                Ok::<_, SourceError>(true)
            });
        }
        drop(rows_tx);

        let mut progress = self.progress;
        // The row held back in case it is the last, and the parts finished since it arrived: a part is
        // recorded only once its rows, that row included, are handed on.
        let mut pending: Option<ChangeEvent> = None;
        let mut finished: Vec<Finished> = Vec::new();
        let mut handed_on: u64 = 0;
        let mut forwarding = true;
        while let Some(read) = rows_rx.recv().await {
            match read {
                Read::Row(event) => {
                    handed_on += 1;
                    let Some(previous) = pending.replace(event) else {
                        continue;
                    };
                    if events.send(SourceEvent::Change(previous)).await.is_err() {
                        forwarding = false;
                        break;
                    }
                }
                Read::Begun(part) => {
                    // On disk before the part's first row goes on, which follows this in the channel.
                    let journal = begun_before.journal().clone();
                    tokio::task::spawn_blocking(move || journal.append(&part))
                        .await
                        .map_err(|err| {
                            SourceError::Protocol(format!("the snapshot journal failed: {err}"))
                        })??;
                    continue;
                }
                Read::Finished(part) => {
                    finished.push(part);
                    if pending.is_some() {
                        continue;
                    }
                }
            }
            if !finished.is_empty() {
                for part in finished.drain(..) {
                    snapshot_progress::record(&mut progress, &part, read_in(&part));
                }
                let commit = SourceEvent::Commit {
                    position: Position::PostgresSnapshot(progress.clone()),
                    commit_time_us: None,
                };
                if events.send(commit).await.is_err() {
                    forwarding = false;
                    break;
                }
            }
        }
        // When the pipeline is gone, the readers' next row finds this channel closed and they stop.
        drop(rows_rx);
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
                rows = handed_on,
                "snapshot interrupted; the next run carries it on from the parts recorded as on the broker"
            );
            return Ok(SnapshotOutcome {
                complete: false,
                rows: handed_on,
            });
        }
        if let Some(mut last) = pending.take() {
            last.source.snapshot = SnapshotMarker::Last;
            if events.send(SourceEvent::Change(last)).await.is_err() {
                return Ok(SnapshotOutcome {
                    complete: false,
                    rows: handed_on,
                });
            }
        }
        for part in finished.drain(..) {
            snapshot_progress::record(&mut progress, &part, read_in(&part));
        }
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
        let complete = events.send(commit).await.is_ok();
        tracing::info!(rows = handed_on, "snapshot read");
        Ok(SnapshotOutcome {
            complete,
            rows: handed_on,
        })
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
    /// the output settings the value decoders expect.
    async fn open_reading_transaction(&self, adopt: Option<&str>) -> Result<Client, SourceError> {
        let client = catalog::connect(&self.connection).await?;
        let settings: Vec<String> = OUTPUT_SETTINGS
            .iter()
            .map(|(name, value)| format!("SET {name} = {}", quote_literal(value)))
            .collect();
        execute(&client, &settings.join("; ")).await?;
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

/// How a table is read.
enum Plan {
    Whole,
    /// In these key ranges (none: nothing is left to read).
    Ranges(Vec<KeyRange>),
}

/// Whole, or in key ranges: those an earlier run did not finish, else about `chunk_rows` rows each when
/// the table is large enough and has a key to split on.
async fn plan(
    client: &Client,
    table: &TableRead,
    carried: Option<&PgTableRead>,
    chunk_rows: u64,
    rows: &RowSender,
) -> Result<Plan, SourceError> {
    let key = table.split_key();
    if let Some(carried) = carried {
        if let (Some(key), true) = (&key, carried.key == key) {
            let mut ranges = Vec::new();
            for within in snapshot_progress::gaps(&carried.ranges) {
                ranges.extend(split(client, table, key, chunk_rows, within).await?);
            }
            tracing::info!(table = %table.name, key, ranges = ranges.len(), "carrying on the snapshot of a table: reading the key ranges not on the broker yet");
            return Ok(Plan::Ranges(ranges));
        }
        tracing::warn!(table = %table.name, was = ?carried.key, now = ?key, "the table's key changed since part of it was read: reading it again whole");
        rows.finished(Finished::Forget(table.name.clone())).await;
    }
    let estimate = table.description.estimated_rows.unwrap_or(0);
    let Some(key) = key.filter(|_| chunk_rows > 0 && estimate > chunk_rows) else {
        return Ok(Plan::Whole);
    };
    let ranges = split(client, table, &key, chunk_rows, (i64::MIN, i64::MAX)).await?;
    tracing::info!(table = %table.name, key, ranges = ranges.len(), "snapshot of table split into key ranges");
    // An empty table despite the estimate: reading it whole costs one query.
    Ok(if ranges.is_empty() {
        Plan::Whole
    } else {
        Plan::Ranges(ranges)
    })
}

/// What a snapshot reader sends its rows through.
struct RowSender {
    tx: mpsc::Sender<Read>,
    stop: watch::Receiver<bool>,
    /// Every snapshot row's source fields.
    source: SourceInfo,
}

impl RowSender {
    /// Hands on a row; false when sluice is stopping or the rows are no longer wanted.
    async fn row(&self, table: &Arc<Table>, after: Row) -> bool {
        if *self.stop.borrow() {
            return false;
        }
        let event = ChangeEvent {
            table: table.clone(),
            op: Op::Read,
            before: None,
            after: Some(after),
            source: self.source.clone(),
        };
        self.tx.send(Read::Row(event)).await.is_ok()
    }

    /// Reports that a part is about to hand on its first row; false when nobody listens.
    async fn begun(&self, table: &TableName, range: Option<&KeyRange>) -> bool {
        let (low, high) = range.map_or((i64::MIN, i64::MAX), |r| (r.low, r.high));
        let part = Begun {
            schema: table.schema.clone(),
            name: table.name.clone(),
            key: range.map(|r| r.column.clone()),
            low,
            high,
        };
        self.tx.send(Read::Begun(part)).await.is_ok()
    }

    /// Reports a finished part, to be recorded once its rows are handed on; false when nobody listens.
    async fn finished(&self, part: Finished) -> bool {
        self.tx.send(Read::Finished(part)).await.is_ok()
    }
}

/// What a snapshot reader does next: a table not yet looked at, or one key range of a split table.
enum Piece {
    Table(TableName),
    Range(Arc<TableRead>, KeyRange),
}

/// The readers' shared work. A reader that finds it empty waits while another reader is still deciding
/// whether to split a table, since that may add ranges; it stops only when nothing more can come.
struct WorkQueue {
    state: Mutex<WorkState>,
    added: Notify,
}

struct WorkState {
    pieces: VecDeque<Piece>,
    /// Tables taken from the queue whose ranges are not known yet.
    splitting: usize,
}

/// A piece taken from the queue; a table comes with the duty to report its ranges.
enum Next {
    Table(TableName, Splitting),
    Range(Arc<TableRead>, KeyRange),
}

/// Held while a reader splits a table. Dropped without [`Splitting::done`] (the reader failed), it still
/// releases the readers waiting for it.
struct Splitting(Arc<WorkQueue>);

impl WorkQueue {
    fn new(tables: impl Iterator<Item = TableName>) -> WorkQueue {
        WorkQueue {
            state: Mutex::new(WorkState {
                pieces: tables.map(Piece::Table).collect(),
                splitting: 0,
            }),
            added: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WorkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next piece, or None once the queue is empty and no table is being split.
    async fn next(self: &Arc<Self>) -> Option<Next> {
        loop {
            // Registered before the state is read, so that a wake-up in between is not lost.
            let added = self.added.notified();
            {
                let mut state = self.lock();
                match state.pieces.pop_front() {
                    Some(Piece::Table(name)) => {
                        state.splitting += 1;
                        return Some(Next::Table(name, Splitting(self.clone())));
                    }
                    Some(Piece::Range(table, range)) => return Some(Next::Range(table, range)),
                    None if state.splitting == 0 => return None,
                    None => {}
                }
            }
            added.await;
        }
    }
}

impl Splitting {
    /// Queues the table's other ranges.
    fn done(self, table: &Arc<TableRead>, ranges: Vec<KeyRange>) {
        let mut state = self.0.lock();
        for range in ranges {
            state.pieces.push_front(Piece::Range(table.clone(), range));
        }
        // Released before the drop below takes the lock again.
        drop(state);
    }
}

impl Drop for Splitting {
    fn drop(&mut self) {
        self.0.lock().splitting -= 1;
        self.0.added.notify_waiters();
    }
}

/// Rows whose one-column integer key lies in `low..=high`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct KeyRange {
    column: String,
    low: i64,
    high: i64,
}

/// One table being read, shared by the readers of its pieces.
struct TableRead {
    name: TableName,
    table: Arc<Table>,
    description: catalog::TableDescription,
    progress: Arc<SnapshotProgress>,
    /// Pieces not yet finished: the last one to finish reports the table done.
    pieces: AtomicUsize,
    started: Instant,
    /// When progress was last logged (ms after `started`).
    reported_ms: AtomicU64,
}

impl TableRead {
    fn start(
        name: &TableName,
        (description, captured): (catalog::TableDescription, Captured),
        metrics: &Metrics,
    ) -> Arc<TableRead> {
        let estimate = description.estimated_rows;
        tracing::info!(table = %name, estimated_rows = ?estimate, "snapshot of table started");
        Arc::new(TableRead {
            name: name.clone(),
            table: captured.table,
            progress: metrics.snapshot_table(&name.to_string(), estimate),
            description,
            pieces: AtomicUsize::new(1),
            started: Instant::now(),
            reported_ms: AtomicU64::new(0),
        })
    }

    /// The column a large table can be split on: its primary key, when that is one captured integer column.
    fn split_key(&self) -> Option<String> {
        let [key] = self.description.primary_key.as_slice() else {
            return None;
        };
        self.table
            .columns
            .iter()
            .any(|c| &c.name == key && SPLITTABLE_KEY_TYPES.contains(&c.source_type.as_str()))
            .then(|| key.clone())
    }

    /// `FROM` clause of the queries that read it: `ONLY`, so that a plain table's inheritance children are
    /// left to their own snapshots, as `COPY table` does; a partitioned table is read through its root.
    fn from(&self) -> String {
        let only = if self.description.partitioned {
            ""
        } else {
            "ONLY "
        };
        format!("{only}{}", self.name.quoted())
    }

    fn counted(&self, rows: u64) {
        // The progress gauge is the table's count: every piece's reader adds to it.
        let total = self.progress.rows.fetch_add(rows, Relaxed) + rows;
        let now_ms = self.started.elapsed().as_millis() as u64;
        let last = self.reported_ms.load(Relaxed);
        if now_ms.saturating_sub(last) >= PROGRESS_INTERVAL.as_millis() as u64
            && self
                .reported_ms
                .compare_exchange(last, now_ms, Relaxed, Relaxed)
                .is_ok()
        {
            tracing::info!(table = %self.name, rows = total, estimated_rows = ?self.description.estimated_rows, "snapshot progress");
        }
    }

    /// One piece is read: the last one to finish reports the table.
    async fn piece_finished(&self, rows: &RowSender) -> bool {
        if self.pieces.fetch_sub(1, AcqRel) == 1 {
            return self.finished(rows).await;
        }
        true
    }

    /// Every piece is read.
    async fn finished(&self, rows: &RowSender) -> bool {
        self.progress.finished();
        let read = self.progress.rows.load(Relaxed);
        let seconds = self.started.elapsed().as_secs_f64();
        tracing::info!(table = %self.name, rows = read, seconds, "snapshot of table finished");
        rows.finished(Finished::Table(self.name.clone())).await
    }
}

/// The rows of the table whose key lies in `within`, cut into key ranges of about `chunk_rows` rows each
/// by the planner's estimate; none when no row lies there. The cuts come from the key's histogram in
/// `pg_stats` where ANALYZE made one (keys are rarely spread evenly), else from an even split of the
/// extent; either way every key between the smallest and the largest in `within` falls in exactly one
/// range.
async fn split(
    client: &Client,
    table: &TableRead,
    key: &str,
    chunk_rows: u64,
    (from, to): (i64, i64),
) -> Result<Vec<KeyRange>, SourceError> {
    // Typed bounds: a bare -9223372036854775808 would be a numeric, and miss the index.
    let sql = format!(
        "SELECT min({key})::int8, max({key})::int8, \
           (SELECT histogram_bounds::text::int8[] FROM pg_stats \
             WHERE schemaname = $1 AND tablename = $2 AND attname = $3 ORDER BY inherited DESC LIMIT 1) \
         FROM {} WHERE {key} BETWEEN '{from}'::int8 AND '{to}'::int8",
        table.from(),
        key = quote_ident(key)
    );
    let row = client
        .query_one(&sql, &[&table.name.schema, &table.name.name, &key])
        .await
        .map_err(catalog::query_error(format!(
            "snapshot: cannot find the key range of {}",
            table.name
        )))?;
    let (Some(low), Some(high)) = (row.get::<_, Option<i64>>(0), row.get::<_, Option<i64>>(1))
    else {
        return Ok(Vec::new());
    };
    let histogram: Vec<i64> = row.get::<_, Option<Vec<i64>>>(2).unwrap_or_default();
    // The share of the table's rows in `within`, by the histogram (each bound stands for as many rows).
    let inside: Vec<i64> = histogram
        .iter()
        .copied()
        .filter(|bound| (low..=high).contains(bound))
        .collect();
    let estimate = table.description.estimated_rows.unwrap_or(0) as f64;
    let share = if histogram.len() > 2 {
        inside.len() as f64 / histogram.len() as f64
    } else {
        1.0
    };
    let pieces = ((estimate * share) / chunk_rows.max(1) as f64)
        .ceil()
        .max(1.0) as u64;
    let ranges = key_ranges(key, low, high, pieces, &inside);
    tracing::debug!(table = %table.name, key, ranges = ranges.len(), low, high, "key ranges planned");
    Ok(ranges)
}

/// `low..=high` cut into at most `pieces` contiguous ranges: at the key histogram's bounds (equal row
/// counts between neighbours, by the planner's sample) when there is one, else into equal widths.
fn key_ranges(column: &str, low: i64, high: i64, pieces: u64, histogram: &[i64]) -> Vec<KeyRange> {
    let pieces = pieces.max(1) as usize;
    // Each range starts at a cut; the first at `low`.
    let mut starts: Vec<i64> = vec![low];
    if histogram.len() > 2 {
        for k in 1..pieces {
            let cut = histogram[k * (histogram.len() - 1) / pieces];
            if cut > *starts.last().unwrap_or(&low) && cut <= high {
                starts.push(cut);
            }
        }
    } else {
        let span = i128::from(high) - i128::from(low) + 1;
        let width = ((span + pieces as i128 - 1) / pieces as i128).max(1);
        let mut start = i128::from(low) + width;
        while start <= i128::from(high) {
            starts.push(start as i64);
            start += width;
        }
    }
    starts
        .iter()
        .enumerate()
        .map(|(i, &start)| KeyRange {
            column: column.to_owned(),
            low: start,
            high: starts.get(i + 1).map_or(high, |next| next - 1),
        })
        .collect()
}

/// Reads one piece of a table with COPY: the whole table, or one key range. False when a row was
/// refused (stop requested).
async fn read_piece(
    client: &Client,
    reader: usize,
    read: &TableRead,
    range: Option<&KeyRange>,
    rows_out: &RowSender,
) -> Result<bool, SourceError> {
    let (name, table) = (&read.name, &read.table);
    // COPY reads only the captured columns, so its rows need no filtering.
    let columns: Vec<String> = table.columns.iter().map(|c| quote_ident(&c.name)).collect();
    // COPY reads a plain table directly (the fastest way out of PostgreSQL); a partitioned table or a
    // key range only through a query.
    let sql = match range {
        // Typed bounds: a bare -9223372036854775808 would be a numeric, and miss the index.
        Some(range) => format!(
            "COPY (SELECT {} FROM {} WHERE {key} BETWEEN '{}'::int8 AND '{}'::int8) TO STDOUT",
            columns.join(", "),
            read.from(),
            range.low,
            range.high,
            key = quote_ident(&range.column),
        ),
        None if read.description.partitioned || columns.is_empty() => format!(
            "COPY (SELECT {} FROM {}) TO STDOUT",
            columns.join(", "),
            name.quoted()
        ),
        None => format!("COPY {} ({}) TO STDOUT", name.quoted(), columns.join(", ")),
    };
    let query_error = |source| CatalogError::Query {
        context: format!("snapshot: cannot read {name}"),
        source,
    };
    let stream = client.copy_out(&sql).await.map_err(query_error)?;
    let mut stream = std::pin::pin!(stream);
    let mut lines = Lines::default();
    let mut batch = Vec::new();
    let mut rows: u64 = 0;
    while let Some(chunk) = stream.next().await {
        lines.split(chunk.map_err(query_error)?, &mut batch);
        let in_chunk = batch.len() as u64;
        for line in batch.drain(..) {
            let tuple = parse_copy_line(&line, table.columns.len()).map_err(|reason| {
                SourceError::Protocol(format!("{name}: COPY row {}: {reason}", rows + 1))
            })?;
            let after = decode_row(table, &tuple, None)?;
            if rows == 0 && !rows_out.begun(name, range).await {
                return Ok(false);
            }
            if !rows_out.row(table, after).await {
                return Ok(false);
            }
            rows += 1;
        }
        read.counted(in_chunk);
    }
    if !lines.is_empty() {
        return Err(SourceError::Protocol(format!(
            "{name}: COPY output ended inside a row"
        )));
    }
    if let Some(range) = range {
        tracing::info!(table = %name, low = range.low, high = range.high, rows, reader, "snapshot of key range finished");
        let part = Finished::Range {
            table: name.clone(),
            key: range.column.clone(),
            low: range.low,
            high: range.high,
        };
        if !rows_out.finished(part).await {
            return Ok(false);
        }
    }
    Ok(read.piece_finished(rows_out).await)
}

async fn execute(client: &Client, sql: &str) -> Result<(), SourceError> {
    let context = format!("snapshot: `{sql}` failed");
    client
        .batch_execute(sql)
        .await
        .map_err(catalog::query_error(context))?;
    Ok(())
}

/// Splits COPY's output into lines. PostgreSQL sends one row per message, so a chunk is normally one whole
/// line and is sliced without copying; a row split across chunks is put back together.
#[derive(Default)]
struct Lines {
    partial: BytesMut,
}

impl Lines {
    fn split(&mut self, mut chunk: Bytes, out: &mut Vec<Bytes>) {
        if !self.partial.is_empty() {
            self.partial.extend_from_slice(&chunk);
            chunk = self.partial.split().freeze();
        }
        while let Some(end) = chunk.iter().position(|&b| b == b'\n') {
            let line = chunk.split_to(end + 1);
            out.push(line.slice(..end));
        }
        self.partial.extend_from_slice(&chunk);
    }

    fn is_empty(&self) -> bool {
        self.partial.is_empty()
    }
}

/// One line of COPY's text format as column values: fields are separated by tabs, `\N` is NULL, and
/// backslash escapes are undone. A field without a backslash is sliced without copying.
pub fn parse_copy_line(line: &Bytes, columns: usize) -> Result<TupleData, String> {
    let mut values = Vec::with_capacity(columns);
    if columns == 0 {
        return if line.is_empty() {
            Ok(TupleData(values))
        } else {
            Err("a row with values for a table without columns".into())
        };
    }
    let mut start = 0;
    loop {
        let end = line[start..]
            .iter()
            .position(|&b| b == b'\t')
            .map_or(line.len(), |at| start + at);
        let field = &line[start..end];
        values.push(if field == b"\\N" {
            TupleValue::Null
        } else if field.contains(&b'\\') {
            TupleValue::Text(Bytes::from(unescape(field)?))
        } else {
            TupleValue::Text(line.slice(start..end))
        });
        if end == line.len() {
            break;
        }
        start = end + 1;
    }
    if values.len() != columns {
        return Err(format!(
            "{} fields where the table has {columns} columns",
            values.len()
        ));
    }
    Ok(TupleData(values))
}

fn unescape(field: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(field.len());
    let mut bytes = field.iter().copied().peekable();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let escaped = bytes
            .next()
            .ok_or_else(|| "a field ends in a lone backslash".to_owned())?;
        let plain = match escaped {
            b'b' => 0x08,
            b'f' => 0x0C,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'v' => 0x0B,
            b'0'..=b'7' => {
                let mut value = u32::from(escaped - b'0');
                for _ in 0..2 {
                    match bytes.peek() {
                        Some(&d @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(d - b'0');
                            bytes.next();
                        }
                        _ => break,
                    }
                }
                value as u8
            }
            b'x' => {
                let mut value = 0u32;
                let mut digits = 0;
                while digits < 2 {
                    match bytes.peek().and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            value = value * 16 + d;
                            bytes.next();
                            digits += 1;
                        }
                        None => break,
                    }
                }
                if digits == 0 {
                    b'x'
                } else {
                    value as u8
                }
            }
            other => other,
        };
        out.push(plain);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(value: &TupleValue) -> Option<&[u8]> {
        match value {
            TupleValue::Text(bytes) => Some(bytes),
            _ => None,
        }
    }

    #[tokio::test]
    async fn an_idle_reader_waits_while_a_table_is_being_split() {
        let table = |name: &str| TableName {
            schema: "public".into(),
            name: name.into(),
        };
        let queue = Arc::new(WorkQueue::new([table("a")].into_iter()));
        let Some(Next::Table(name, splitting)) = queue.next().await else {
            panic!("the table comes first");
        };
        assert_eq!(name, table("a"));
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { queue.next().await.is_none() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "the queue is empty but ranges may still come"
        );
        // The splitting reader is done (here: it failed, so no ranges): the other one may stop.
        drop(splitting);
        assert!(waiting.await.unwrap());
        assert!(queue.next().await.is_none());
    }

    #[test]
    fn key_ranges_cover_every_key_once() {
        let bounds = |ranges: Vec<KeyRange>| -> Vec<(i64, i64)> {
            ranges.iter().map(|r| (r.low, r.high)).collect()
        };
        assert_eq!(
            bounds(key_ranges("id", -5, 94, 4, &[])),
            [(-5, 19), (20, 44), (45, 69), (70, 94)]
        );
        // An uneven span: the last range is the short one.
        assert_eq!(
            bounds(key_ranges("id", 1, 10, 3, &[])),
            [(1, 4), (5, 8), (9, 10)]
        );
        // Fewer keys than pieces, and the whole i64 range without overflow.
        assert_eq!(key_ranges("id", 7, 8, 10, &[]).len(), 2);
        let whole = key_ranges("id", i64::MIN, i64::MAX, 3, &[]);
        assert_eq!(whole.first().map(|r| r.low), Some(i64::MIN));
        assert_eq!(whole.last().map(|r| r.high), Some(i64::MAX));
        for pair in whole.windows(2) {
            assert_eq!(pair[0].high + 1, pair[1].low);
        }
    }

    #[test]
    fn key_ranges_follow_the_histogram_past_outliers() {
        // 10,000 keys packed at the start and one far outlier: an even split would put them all in the
        // first range; the histogram's bounds share them out.
        let histogram: Vec<i64> = (0..=100).map(|i| 1 + i * 100).chain([10_000_000]).collect();
        let ranges = key_ranges("id", 1, 10_000_000, 4, &histogram);
        assert_eq!(
            ranges.iter().map(|r| (r.low, r.high)).collect::<Vec<_>>(),
            [
                (1, 2_500),
                (2_501, 5_000),
                (5_001, 7_500),
                (7_501, 10_000_000)
            ]
        );
        // Bounds outside the extent (a stale histogram) or repeated are skipped; coverage stays whole.
        let ranges = key_ranges("id", 50, 60, 4, &[0, 10, 55, 55, 55, 90]);
        assert_eq!(
            ranges.iter().map(|r| (r.low, r.high)).collect::<Vec<_>>(),
            [(50, 54), (55, 60)]
        );
    }

    #[test]
    fn fields_nulls_and_escapes() {
        let line = Bytes::from_static(b"1\t\\N\tplain\ta\\tb\\nc\\\\d\t\\101\\x41\\q\t");
        let TupleData(values) = parse_copy_line(&line, 6).unwrap();
        assert_eq!(text(&values[0]), Some(&b"1"[..]));
        assert_eq!(values[1], TupleValue::Null);
        assert_eq!(text(&values[2]), Some(&b"plain"[..]));
        assert_eq!(text(&values[3]), Some(&b"a\tb\nc\\d"[..]));
        assert_eq!(text(&values[4]), Some(&b"AAq"[..]));
        assert_eq!(text(&values[5]), Some(&b""[..]), "an empty last field");
    }

    #[test]
    fn an_escaped_n_is_text_not_null() {
        let line = Bytes::from_static(b"\\\\N");
        let TupleData(values) = parse_copy_line(&line, 1).unwrap();
        assert_eq!(text(&values[0]), Some(&b"\\N"[..]));
    }

    #[test]
    fn wrong_field_counts_and_lone_backslashes_are_errors() {
        let err = parse_copy_line(&Bytes::from_static(b"1\t2"), 3).unwrap_err();
        assert!(
            err.contains("2 fields where the table has 3 columns"),
            "{err}"
        );
        let err = parse_copy_line(&Bytes::from_static(b"abc\\"), 1).unwrap_err();
        assert!(err.contains("lone backslash"), "{err}");
        assert!(parse_copy_line(&Bytes::from_static(b""), 0).is_ok());
        assert!(parse_copy_line(&Bytes::from_static(b"x"), 0).is_err());
    }

    #[test]
    fn lines_are_put_back_together_across_chunks() {
        let mut lines = Lines::default();
        let mut out = Vec::new();
        lines.split(Bytes::from_static(b"1\ta\n"), &mut out);
        lines.split(Bytes::from_static(b"2\tb"), &mut out);
        assert!(!lines.is_empty());
        lines.split(Bytes::from_static(b"b\n3\tc\n"), &mut out);
        assert!(lines.is_empty());
        let got: Vec<&[u8]> = out.iter().map(|l| &l[..]).collect();
        assert_eq!(got, vec![&b"1\ta"[..], b"2\tbb", b"3\tc"]);
    }
}
