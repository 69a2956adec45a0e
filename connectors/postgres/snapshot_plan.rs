//! How the initial snapshot's work is shared out: each table read whole or cut into primary-key ranges
//! (those an earlier run did not finish, or about `snapshot_chunk_rows` rows each), and the queue the
//! readers take tables and ranges from.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_postgres::Client;

use super::catalog::{self, TableName};
use super::error::SourceError;
use super::replication::quote_ident;
use super::snapshot_piece::{KeyRange, RowSender, TableRead};
use super::snapshot_progress::{self, Finished};
use sluice_core::event::PgTableRead;

/// How a table is read.
pub(super) enum Plan {
    Whole,
    /// In these key ranges (none: nothing is left to read).
    Ranges(Vec<KeyRange>),
}

/// Whole, or in key ranges: those an earlier run did not finish, else about `chunk_rows` rows each when
/// the table is large enough and has a key to split on.
pub(super) async fn plan(
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

/// What a snapshot reader does next: a table not yet looked at, or one key range of a split table.
enum Piece {
    Table(TableName),
    Range(Arc<TableRead>, KeyRange),
}

/// The readers' shared work. A reader that finds it empty waits while another reader is still deciding
/// whether to split a table, since that may add ranges; it stops only when nothing more can come.
pub(super) struct WorkQueue {
    state: Mutex<WorkState>,
    added: Notify,
}

struct WorkState {
    pieces: VecDeque<Piece>,
    /// Tables taken from the queue whose ranges are not known yet.
    splitting: usize,
}

/// A piece taken from the queue; a table comes with the duty to report its ranges.
pub(super) enum Next {
    Table(TableName, Splitting),
    Range(Arc<TableRead>, KeyRange),
}

/// Held while a reader splits a table. Dropped without [`Splitting::done`] (the reader failed), it still
/// releases the readers waiting for it.
pub(super) struct Splitting(Arc<WorkQueue>);

impl WorkQueue {
    pub(super) fn new(tables: impl Iterator<Item = TableName>) -> WorkQueue {
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
    pub(super) async fn next(self: &Arc<Self>) -> Option<Next> {
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
    pub(super) fn done(self, table: &Arc<TableRead>, ranges: Vec<KeyRange>) {
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
pub(super) fn key_ranges(
    column: &str,
    low: i64,
    high: i64,
    pieces: u64,
    histogram: &[i64],
) -> Vec<KeyRange> {
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
