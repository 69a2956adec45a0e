//! The stream side's bookkeeping of an incremental snapshot's chunk reader, the same for every connector:
//! the reader task and its channel, restarting it from the progress (a new reading) when the plan changes
//! or a chunk goes missing, the refusals and failures it queues, retries, the progress log, and taking a
//! chunk out at its high watermark. A connector supplies the task ([`Spawner`]) and turns what comes back
//! into its events: the rows to publish, and refusals as dead letters.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::event::Position;
use crate::incremental::{Chunk, ChunkDone, Closed, Progress, TableProgress, Watermark, Windows};
use crate::metrics::SourceMetrics;
use crate::signal::Signal;

/// How many chunks may be read ahead of the stream: each waits, rows in memory, for the stream to reach
/// its high watermark. More overlaps reading with streaming; each costs `incremental_chunk_rows` rows.
pub const CHUNKS_IN_FLIGHT: usize = 4;
/// How long a broken reader waits before a new reading begins.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// How often the progress is logged while a snapshot runs.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What a reader hands the stream; `M` is what a chunk carries besides its rows (the table's model).
#[derive(Debug)]
pub enum Delivery<R, M> {
    /// A chunk, sent before its high watermark is written: the stream finds it when it meets the mark.
    Chunk { chunk: Chunk<R>, model: M },
    /// A table cannot be read (no key, a bad filter, gone): the stream drops it from the progress and
    /// sends the reason to the dead-letter topic.
    Refused {
        reading: u64,
        table: String,
        reason: String,
    },
    /// The connection failed: a new reading starts from the stored progress after a pause.
    Broken { reading: u64, reason: String },
}

/// What a reader task is started with: the tables still to read, in order, and where to send chunks.
pub struct ReadRequest<R, M> {
    /// This process's run name, which the watermarks carry.
    pub run: String,
    pub reading: u64,
    pub tables: Vec<TableProgress>,
    pub out: mpsc::Sender<Delivery<R, M>>,
}

/// Starts a connector's reader task.
pub type Spawner<R, M> = Box<dyn Fn(ReadRequest<R, M>) -> JoinHandle<()> + Send + Sync>;

/// A table the reader refused, for the connector's dead letter.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub table: String,
    pub reason: String,
}

impl Refusal {
    /// The refusal as a signal dead letter's raw text (the table it names) and reason.
    pub fn letter(self) -> (String, String) {
        let Refusal { table, reason } = self;
        (
            serde_json::json!({"data-collection": table}).to_string(),
            format!("incremental snapshot of {table}: {reason}"),
        )
    }
}

/// A chunk the stream publishes now, at its high watermark.
pub struct Publish<R, M> {
    pub rows: Vec<R>,
    pub model: M,
    pub done: ChunkDone,
}

pub struct Reading<R, M> {
    pub windows: Windows,
    pub progress: Progress,
    /// `table` or `collection`, for the log.
    noun: &'static str,
    deliveries: Option<mpsc::Receiver<Delivery<R, M>>>,
    /// Taken from `deliveries` but not yet wanted: at most one chunk, at the front.
    held: VecDeque<Delivery<R, M>>,
    task: Option<JoinHandle<()>>,
    retry_at: Option<Instant>,
    logged_at: Instant,
    metrics: Arc<dyn SourceMetrics>,
    spawn: Spawner<R, M>,
}

impl<R, M> Reading<R, M> {
    /// `run` tells this process's watermarks from an earlier run's and from another sluice's.
    pub fn new(
        run: String,
        noun: &'static str,
        metrics: Arc<dyn SourceMetrics>,
        spawn: Spawner<R, M>,
    ) -> Reading<R, M> {
        Reading {
            windows: Windows::new(run),
            progress: Progress::default(),
            noun,
            deliveries: None,
            held: VecDeque::new(),
            task: None,
            retry_at: None,
            logged_at: Instant::now(),
            metrics,
            spawn,
        }
    }

    /// Carries on a stored snapshot, less the tables the stream no longer captures (there would be nothing
    /// to reconcile their chunks with).
    pub fn carry_on(&mut self, stored: Option<Progress>, captures: impl Fn(&str) -> bool) {
        let Some(mut progress) = stored.filter(|p| !p.finished()) else {
            return;
        };
        let left: Vec<String> = progress
            .pending()
            .filter(|t| !captures(&t.name))
            .map(|t| t.name.clone())
            .collect();
        if !left.is_empty() {
            tracing::warn!(tables = ?left, "the stored incremental snapshot names {}s no longer captured: they are not read on", self.noun);
            progress.stop(&left);
        }
        self.progress = progress;
        if self.progress.pending().next().is_some() {
            let pending: Vec<&str> = self.progress.pending().map(|t| t.name.as_str()).collect();
            tracing::info!(tables = ?pending, paused = self.progress.paused, "carrying on the incremental snapshot of the stored position");
            self.restart();
        }
    }

    /// Whether a reader task runs.
    pub fn is_reading(&self) -> bool {
        self.task.is_some()
    }

    /// Forgets chunks in flight and, unless paused or done, starts a new reading from the progress.
    pub fn restart(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.deliveries = None;
        self.held.clear();
        self.retry_at = None;
        let reading = self.windows.restart();
        let tables: Vec<TableProgress> = self.progress.pending().cloned().collect();
        if tables.is_empty() || self.progress.paused {
            return;
        }
        let (out, deliveries) = mpsc::channel(CHUNKS_IN_FLIGHT);
        self.deliveries = Some(deliveries);
        self.task = Some((self.spawn)(ReadRequest {
            run: self.windows.run().to_string(),
            reading,
            tables,
            out,
        }));
    }

    /// Begins a reading fed by the caller rather than by a task: for tests of a connector's stream side.
    pub fn feed(&mut self) -> (u64, mpsc::Sender<Delivery<R, M>>) {
        self.restart();
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let (out, deliveries) = mpsc::channel(CHUNKS_IN_FLIGHT);
        self.deliveries = Some(deliveries);
        (self.windows.reading(), out)
    }

    /// Acts on a signal; the reason when (part of) it is refused.
    pub fn act(&mut self, signal: Signal, captures: impl Fn(&str) -> bool) -> Option<String> {
        let acted = self.progress.act(signal, captures);
        if acted.restart {
            self.restart();
        }
        acted.refused
    }

    /// `position` carrying the progress.
    pub fn with_progress(&self, position: Position) -> Position {
        Position::with_incremental(position, Some(&self.progress))
    }

    /// The stream met a low watermark. The reader reads the pending tables in order, and every chunk
    /// before this one is closed (its high watermark came first): once the refusals queued since are
    /// handled, the front pending table is the one this chunk reads.
    pub fn low(&mut self, mark: &Watermark, refused: &mut Vec<Refusal>) {
        if !self.windows.is_current(mark) {
            return;
        }
        self.drain(refused);
        if let Some(table) = self.progress.pending().next().map(|t| t.name.clone()) {
            self.windows.low(mark, &table);
        }
    }

    /// The stream met a high watermark: the chunk's rows the stream did not overtake, with the progress
    /// already counting them (None: nothing to publish).
    pub fn high(&mut self, mark: &Watermark, refused: &mut Vec<Refusal>) -> Option<Publish<R, M>> {
        let (chunk, model) = match self.take_chunk(mark, refused) {
            Some((chunk, model)) => (Some(chunk), Some(model)),
            None => (None, None),
        };
        let (closed, done) = self.windows.high(mark, chunk);
        match (closed, done, model) {
            (Closed::Lost, _, _) => {
                tracing::warn!(chunk = mark.number, "an incremental snapshot chunk went missing; reading again from the stored progress");
                self.restart();
                None
            }
            (Closed::Publish { rows, .. }, Some(done), Some(model)) => {
                self.progress.chunk_done(&done);
                self.report(&done.table);
                if done.table_done {
                    tracing::info!(table = %done.table, "incremental snapshot of {} finished", self.noun);
                }
                Some(Publish { rows, model, done })
            }
            _ => None,
        }
    }

    /// The chunk `mark` closes, handling refusals queued before it.
    fn take_chunk(
        &mut self,
        mark: &Watermark,
        refused: &mut Vec<Refusal>,
    ) -> Option<(Chunk<R>, M)> {
        if !self.windows.is_current(mark) {
            return None;
        }
        loop {
            let next = match self.held.pop_front() {
                Some(delivery) => delivery,
                // Sent before the watermark was written: it is there, unless the reading is gone.
                None => self.deliveries.as_mut()?.try_recv().ok()?,
            };
            match next {
                Delivery::Chunk { chunk, model } => return Some((chunk, model)),
                other => self.other(other, refused),
            }
        }
    }

    fn other(&mut self, delivery: Delivery<R, M>, refused: &mut Vec<Refusal>) {
        match delivery {
            Delivery::Chunk { .. } => {}
            Delivery::Refused {
                reading,
                table,
                reason,
            } if reading == self.windows.reading() => {
                tracing::warn!(table = %table, reason = %reason, "incremental snapshot of {} refused", self.noun);
                self.windows.abandon(&table);
                self.progress.stop(std::slice::from_ref(&table));
                refused.push(Refusal { table, reason });
                self.finish_if_done();
            }
            Delivery::Broken { reading, reason } if reading == self.windows.reading() => {
                tracing::warn!(reason = %reason, retry_in = ?RETRY_AFTER, "the incremental snapshot's reads failed; reading again from the stored progress");
                self.deliveries = None;
                self.retry_at = Some(Instant::now() + RETRY_AFTER);
            }
            _ => {}
        }
    }

    /// Handles what the reader queued before its next chunk (refusals, a failure).
    fn drain(&mut self, refused: &mut Vec<Refusal>) {
        while !matches!(self.held.front(), Some(Delivery::Chunk { .. })) {
            let next = match self.held.pop_front() {
                Some(delivery) => delivery,
                None => match self.deliveries.as_mut().map(|d| d.try_recv()) {
                    Some(Ok(delivery)) => delivery,
                    _ => break,
                },
            };
            match next {
                chunk @ Delivery::Chunk { .. } => self.held.push_front(chunk),
                other => self.other(other, refused),
            }
        }
    }

    /// Periodic work: refusals and failures the reader queued, a retry that is due, the progress log.
    pub fn poll(&mut self, refused: &mut Vec<Refusal>) {
        self.drain(refused);
        if self.retry_at.is_some_and(|at| at <= Instant::now()) {
            self.restart();
        }
        if self.logged_at.elapsed() >= LOG_EVERY && !self.progress.finished() {
            self.logged_at = Instant::now();
            for table in self.progress.pending() {
                tracing::info!(table = %table.name, rows = table.rows, estimated = ?table.estimated, chunks = table.chunks, paused = self.progress.paused, "incremental snapshot progress");
            }
        }
    }

    fn report(&self, table: &str) {
        if let Some(t) = self.progress.tables.iter().find(|t| t.name == table) {
            self.metrics
                .incremental_snapshot_table(&t.name, t.rows, t.estimated, t.chunks);
        }
    }

    /// Once every table is done: logs it and forgets the snapshot (the caller has put the finished
    /// progress on the position after its last rows, so that what it read is on record).
    pub fn finish_if_done(&mut self) {
        if !self.progress.tables.is_empty() && self.progress.finished() {
            let rows: u64 = self.progress.tables.iter().map(|t| t.rows).sum();
            tracing::info!(
                tables = self.progress.tables.len(),
                rows,
                "incremental snapshot finished"
            );
            self.progress = Progress::default();
            // The reader has nothing left to read but may still tidy up (MongoDB deletes its last
            // watermarks): let it end by itself.
            drop(self.task.take());
            self.restart();
        }
    }
}

impl<R, M> Drop for Reading<R, M> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
