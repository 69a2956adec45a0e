//! The pieces a snapshot is read in (a table whole, or one key range of it) and what the readers share
//! about them: the table being read, and the channel its rows and news of its parts go through. A leaf
//! below the snapshot, its planner and its COPY reader, which all use it.

use std::sync::atomic::{
    AtomicU64, AtomicUsize,
    Ordering::{AcqRel, Relaxed},
};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::catalog::{self, TableName};
use super::decoder::Captured;
use super::snapshot_progress::{Begun, Finished};
use sluice_core::event::{ChangeEvent, Op, Row, SourceInfo, Table};
use sluice_core::metrics::{SnapshotProgress, SourceMetrics};

/// Primary-key types a large table can be split on: ranges of them are plain integer arithmetic.
const SPLITTABLE_KEY_TYPES: [&str; 3] = ["int2", "int4", "int8"];
/// How often a table's progress is logged while it is read.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

/// Rows whose one-column integer key lies in `low..=high`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct KeyRange {
    pub(super) column: String,
    pub(super) low: i64,
    pub(super) high: i64,
}

/// What reaches the one place that hands rows on: a row, or news that a part of the snapshot begins
/// (before its first row) or is read.
pub(super) enum Read {
    Row(ChangeEvent),
    Begun(Begun),
    Finished(Finished),
}

/// What a snapshot reader sends its rows through.
pub(super) struct RowSender {
    tx: mpsc::Sender<Read>,
    stop: watch::Receiver<bool>,
    /// Every snapshot row's source fields.
    source: SourceInfo,
}

impl RowSender {
    pub(super) fn new(
        tx: mpsc::Sender<Read>,
        stop: watch::Receiver<bool>,
        source: SourceInfo,
    ) -> RowSender {
        RowSender { tx, stop, source }
    }

    /// Hands on a row; false when sluice is stopping or the rows are no longer wanted.
    pub(super) async fn row(&self, table: &Arc<Table>, after: Row) -> bool {
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
    pub(super) async fn begun(&self, table: &TableName, range: Option<&KeyRange>) -> bool {
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
    pub(super) async fn finished(&self, part: Finished) -> bool {
        self.tx.send(Read::Finished(part)).await.is_ok()
    }
}

/// One table being read, shared by the readers of its pieces.
pub(super) struct TableRead {
    pub(super) name: TableName,
    pub(super) table: Arc<Table>,
    pub(super) description: catalog::TableDescription,
    progress: Arc<SnapshotProgress>,
    /// Pieces not yet finished: the last one to finish reports the table done.
    pieces: AtomicUsize,
    started: Instant,
    /// When progress was last logged (ms after `started`).
    reported_ms: AtomicU64,
}

impl TableRead {
    pub(super) fn start(
        name: &TableName,
        (description, captured): (catalog::TableDescription, Captured),
        metrics: &dyn SourceMetrics,
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

    /// The table is read in `count` pieces, each of which reports itself finished.
    pub(super) fn expect_pieces(&self, count: usize) {
        self.pieces.store(count, Relaxed);
    }

    /// The column a large table can be split on: its primary key, when that is one captured integer column.
    pub(super) fn split_key(&self) -> Option<String> {
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
    pub(super) fn from(&self) -> String {
        let only = if self.description.partitioned {
            ""
        } else {
            "ONLY "
        };
        format!("{only}{}", self.name.quoted())
    }

    pub(super) fn counted(&self, rows: u64) {
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
    pub(super) async fn piece_finished(&self, rows: &RowSender) -> bool {
        if self.pieces.fetch_sub(1, AcqRel) == 1 {
            return self.finished(rows).await;
        }
        true
    }

    /// Every piece is read.
    pub(super) async fn finished(&self, rows: &RowSender) -> bool {
        self.progress.finished();
        let read = self.progress.rows.load(Relaxed);
        let seconds = self.started.elapsed().as_secs_f64();
        tracing::info!(table = %self.name, rows = read, seconds, "snapshot of table finished");
        rows.finished(Finished::Table(self.name.clone())).await
    }
}
