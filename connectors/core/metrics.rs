//! What a connector reports about itself: the application decides how that is exposed (`/metrics`,
//! readiness), a connector only says what happened.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::event::Lsn;

/// The reports a source makes while it reads.
pub trait SourceMetrics: Send + Sync {
    /// Whether the source is connected and streaming changes.
    fn set_streaming(&self, streaming: bool);
    /// A lost connection was reopened.
    fn reconnected(&self);
    /// The server's current end of WAL, for the lag.
    fn server_wal_end(&self, lsn: Lsn);
    /// Whether a snapshot is being read (readiness waits for it).
    fn set_snapshot_running(&self, running: bool);
    /// The progress record of one table's (or collection's) snapshot, `estimated_rows` in all when known.
    fn snapshot_table(&self, table: &str, estimated_rows: Option<u64>) -> Arc<SnapshotProgress>;
    /// How far the incremental snapshot of `table` got: rows read, the estimate when it began, chunks.
    fn incremental_snapshot_table(
        &self,
        _table: &str,
        _rows: u64,
        _estimated: Option<u64>,
        _chunks: u64,
    ) {
    }
    /// What became of an update's unchanged TOAST values when re-selecting them (`reselected`,
    /// `changed`, `gone`, `failed`, `transaction_too_long`).
    fn reselected(&self, _table: &str, _outcome: &'static str) {}
}

/// One table's snapshot: rows read so far, and the estimate of the total.
#[derive(Default)]
pub struct SnapshotProgress {
    pub rows: AtomicU64,
    pub estimated: AtomicU64,
    pub finished: AtomicBool,
}

impl SnapshotProgress {
    pub fn finished(&self) {
        self.finished.store(true, Relaxed);
    }
}

/// Reports that go nowhere: for tools and tests that run a source without a pipeline.
pub struct NoMetrics;

impl SourceMetrics for NoMetrics {
    fn set_streaming(&self, _: bool) {}
    fn reconnected(&self) {}
    fn server_wal_end(&self, _: Lsn) {}
    fn set_snapshot_running(&self, _: bool) {}
    fn snapshot_table(&self, _: &str, _: Option<u64>) -> Arc<SnapshotProgress> {
        Arc::default()
    }
}
