//! Signals and incremental snapshots, the stream's side: rows of the signal table become instructions
//! (never events), watermarks open and close chunk windows, chunk rows the stream did not overtake are
//! published at their high watermark, and every position handed on carries the snapshot's progress.
//!
//! The chunk reader ([`super::incremental`]) runs as a task of its own; this side starts it, restarts it
//! from the progress (a new reading) when a signal changes the plan or a chunk goes missing, and stops it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::event::{
    ChangeEvent, Op, Position, SnapshotMarker, SourceEvent, SourceInfo, Table, UndecodableChange,
    Value,
};
use sluice_core::incremental::{key_of, Closed, Progress, Watermark, Windows};
use sluice_core::metrics::SourceMetrics;
use sluice_core::positions::now_us;
use sluice_core::signal::Signal;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::config::Selection;
use super::decoder::StreamDecoder;
use super::incremental::{self as reader, Delivery, ReaderSettings, CHUNKS_IN_FLIGHT};
use super::settings::PostgresSettings;

/// How long a broken chunk reader waits before a new reading begins.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// How often the progress is logged while a snapshot runs.
const LOG_EVERY: Duration = Duration::from_secs(10);

pub(super) struct Incremental {
    /// `schema.table`; None: signals are off (a snapshot carried over from a run that had them still ends).
    signal_table: Option<String>,
    snapshot_new_tables: bool,
    selection: Selection,
    reader: ReaderSettings,
    database: Arc<str>,
    windows: Windows,
    progress: Progress,
    deliveries: Option<mpsc::Receiver<Delivery>>,
    /// Taken from `deliveries` but not yet wanted: at most one chunk, at the front.
    held: VecDeque<Delivery>,
    task: Option<tokio::task::JoinHandle<()>>,
    retry_at: Option<Instant>,
    logged_at: Instant,
    metrics: Arc<dyn SourceMetrics>,
}

impl Incremental {
    pub(super) fn new(
        settings: &PostgresSettings,
        progress: Option<Progress>,
        metrics: Arc<dyn SourceMetrics>,
    ) -> Incremental {
        // Distinguishes this process's watermarks from an earlier run's still in the WAL, and from another
        // sluice's on the same database.
        let run = format!("{}-{}-{}", settings.slot, std::process::id(), now_us());
        let mut incremental = Incremental {
            signal_table: settings.signal_table.clone(),
            snapshot_new_tables: settings.snapshot_new_tables,
            selection: settings.selection.clone(),
            reader: ReaderSettings {
                connection: settings.connection.clone(),
                selection: settings.selection.clone(),
                decimal: settings.decimal_handling,
                chunk_rows: settings.incremental_chunk_rows,
                publication: settings.publication.clone(),
            },
            database: settings.database.as_str().into(),
            windows: Windows::new(run),
            progress: Progress::default(),
            deliveries: None,
            held: VecDeque::new(),
            task: None,
            retry_at: None,
            logged_at: Instant::now(),
            metrics,
        };
        if let Some(mut progress) = progress.filter(|p| !p.finished()) {
            // A table that left the selection since is not read on: the stream no longer captures it.
            let (selection, signal_table) =
                (&incremental.selection, incremental.signal_table.as_deref());
            let left: Vec<String> = progress
                .pending()
                .filter(|t| !captures(selection, signal_table, &t.name))
                .map(|t| t.name.clone())
                .collect();
            if !left.is_empty() {
                tracing::warn!(tables = ?left, "the stored incremental snapshot names tables no longer captured: they are not read on");
                progress.stop(&left);
            }
            incremental.progress = progress;
        }
        if incremental.progress.pending().next().is_some() {
            tracing::info!(tables = ?incremental.pending_names(), paused = incremental.progress.paused, "carrying on the incremental snapshot of the stored position");
            incremental.restart_reader();
        }
        incremental
    }

    /// A selected table the stream met for the first time (added to the publication while streaming): its
    /// rows from before are read incrementally, when `snapshot_new_tables` says so.
    pub(super) fn joined(&mut self, table: String) {
        if !self.snapshot_new_tables || self.progress.tables.iter().any(|t| t.name == table) {
            return;
        }
        tracing::info!(table = %table, "snapshotting the table that joined incrementally");
        self.progress.request(&[table], &[]);
        self.restart_reader();
    }

    /// The stream met a Relation message for `table`: its model may have changed. If it is the table
    /// being read, the reading starts again from the progress, so that its next chunks carry the new model.
    pub(super) fn described(&mut self, table: &str) {
        let reading = self
            .progress
            .pending()
            .next()
            .is_some_and(|t| t.name == table);
        if reading && self.task.is_some() && !self.progress.paused {
            tracing::debug!(
                table,
                "the table being read was described again; reading on with its new model"
            );
            self.restart_reader();
        }
    }

    fn pending_names(&self) -> Vec<String> {
        self.progress.pending().map(|t| t.name.clone()).collect()
    }

    /// Forgets chunks in flight and, unless paused or done, starts a new reading from the progress.
    fn restart_reader(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.deliveries = None;
        self.held.clear();
        self.retry_at = None;
        let reading = self.windows.restart();
        let pending: Vec<_> = self.progress.pending().cloned().collect();
        if pending.is_empty() || self.progress.paused {
            return;
        }
        let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        self.deliveries = Some(rx);
        self.task = Some(tokio::spawn(reader::read(
            self.reader.clone(),
            self.windows.run().to_string(),
            reading,
            pending,
            tx,
        )));
    }

    /// Acts on the events the decoder produced: takes out signal rows and watermarks, marks the keys the
    /// stream changes, publishes closed chunks, and gives every position the progress.
    pub(super) fn process(&mut self, produced: &mut Vec<SourceEvent>, decoder: &mut StreamDecoder) {
        // The common case, streaming with nothing to reconcile: leave the events as they are.
        if !produced.iter().any(|event| self.concerns(event)) {
            return;
        }
        let mut out = Vec::with_capacity(produced.len());
        for event in produced.drain(..) {
            match event {
                SourceEvent::Change(change) if self.is_signal_table(&change.table) => {
                    if change.op == Op::Create {
                        self.signal_row(&change, &mut out);
                    }
                }
                SourceEvent::Change(change) => {
                    self.mark(&change);
                    out.push(SourceEvent::Change(change));
                }
                SourceEvent::Message(message) if message.prefix == Watermark::PREFIX => {
                    let text = String::from_utf8_lossy(&message.content);
                    if let Some(mark) = Watermark::decode(&text) {
                        self.watermark(&mark, message.lsn, &mut out, decoder);
                    }
                }
                SourceEvent::Commit {
                    position,
                    commit_time_us,
                } => out.push(SourceEvent::Commit {
                    position: self.with_progress(position),
                    commit_time_us,
                }),
                SourceEvent::Idle { position } => out.push(SourceEvent::Idle {
                    position: self.with_progress(position),
                }),
                other => out.push(other),
            }
        }
        *produced = out;
    }

    /// Whether `event` is anything to this side: a signal row, a watermark, a change while a window is
    /// open, a position while a snapshot is under way.
    fn concerns(&self, event: &SourceEvent) -> bool {
        match event {
            SourceEvent::Change(change) => {
                self.windows.any_open() || self.is_signal_table(&change.table)
            }
            SourceEvent::Message(message) => message.prefix == Watermark::PREFIX,
            SourceEvent::Commit { .. } | SourceEvent::Idle { .. } => {
                !self.progress.tables.is_empty()
            }
            _ => false,
        }
    }

    fn with_progress(&self, position: Position) -> Position {
        Position::with_incremental(position, Some(&self.progress))
    }

    fn is_signal_table(&self, table: &Table) -> bool {
        self.signal_table.as_deref().is_some_and(|name| {
            name.split_once('.') == Some((table.schema.as_str(), table.name.as_str()))
        })
    }

    /// A change the stream delivers: its keys (old and new) win over a chunk's rows.
    fn mark(&mut self, change: &ChangeEvent) {
        if !self.windows.any_open() {
            return;
        }
        let table = change.table.qualified_name();
        if !self.windows.tracking(&table) {
            return;
        }
        if change.op == Op::Truncate {
            return self.windows.truncated(&table);
        }
        for row in [&change.before, &change.after].into_iter().flatten() {
            let key = key_of(change.table.key_columns().map(|(at, _)| &row[at]));
            self.windows.changed(&table, key);
        }
    }

    fn watermark(
        &mut self,
        mark: &Watermark,
        lsn: sluice_core::event::Lsn,
        out: &mut Vec<SourceEvent>,
        decoder: &mut StreamDecoder,
    ) {
        if !mark.high {
            // The reader reads the pending tables in order, and every chunk before this one is closed
            // (its high watermark came first): once the refusals queued since are handled, the front
            // pending table is the one this chunk reads.
            if !self.windows.is_current(mark) {
                return;
            }
            self.drain_refusals(out);
            if let Some(table) = self.progress.pending().next().map(|t| t.name.clone()) {
                self.windows.low(mark, &table);
            }
            return;
        }
        let chunk = self.take_chunk(mark, out);
        let (closed, done) = match chunk {
            Some((chunk, model)) => {
                let (closed, done) = self.windows.high(mark, Some(chunk));
                (closed, done.map(|d| (d, model)))
            }
            None => (
                self.windows.high::<sluice_core::event::Row>(mark, None).0,
                None,
            ),
        };
        match closed {
            Closed::Foreign => {}
            Closed::Lost => {
                tracing::warn!(chunk = mark.number, "an incremental snapshot chunk went missing; reading again from the stored progress");
                self.restart_reader();
            }
            Closed::Publish { rows, .. } => {
                let Some((done, model)) = done else { return };
                let source = SourceInfo {
                    database: self.database.clone(),
                    txid: None,
                    lsn,
                    commit_lsn: lsn,
                    commit_time_us: now_us(),
                    snapshot: SnapshotMarker::Incremental,
                    order: None,
                };
                out.extend(rows.into_iter().map(|row| {
                    SourceEvent::Change(ChangeEvent {
                        table: model.clone(),
                        op: Op::Read,
                        before: None,
                        after: Some(row),
                        source: source.clone(),
                    })
                }));
                self.progress.chunk_done(&done);
                self.report(&done.table);
                if done.table_done {
                    tracing::info!(table = %done.table, "incremental snapshot of table finished");
                }
                // The rows are in; the position after them carries the progress (a finished one too,
                // once, so that what it read is on record), then a finished snapshot is forgotten.
                let from = out.len();
                decoder.idle(lsn, out);
                for event in &mut out[from..] {
                    if let SourceEvent::Idle { position } = event {
                        *position = self
                            .with_progress(std::mem::replace(position, Position::Postgres { lsn }));
                    }
                }
                self.finish_if_done();
            }
        }
    }

    /// The chunk the high watermark `mark` closes, handling refusals queued before it.
    fn take_chunk(
        &mut self,
        mark: &Watermark,
        out: &mut Vec<SourceEvent>,
    ) -> Option<(
        sluice_core::incremental::Chunk<sluice_core::event::Row>,
        Arc<Table>,
    )> {
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
                Delivery::Chunk { chunk, table } => return Some((chunk, table)),
                other => self.other_delivery(other, out),
            }
        }
    }

    fn other_delivery(&mut self, delivery: Delivery, out: &mut Vec<SourceEvent>) {
        match delivery {
            Delivery::Chunk { .. } => {}
            Delivery::Refused {
                reading,
                table,
                reason,
            } if reading == self.windows.reading() => {
                tracing::warn!(table = %table, reason = %reason, "incremental snapshot of table refused");
                self.windows.abandon(&table);
                self.progress.stop(std::slice::from_ref(&table));
                out.push(self.bad_signal(
                    serde_json::json!({"data-collection": table}).to_string(),
                    format!("incremental snapshot of {table}: {reason}"),
                ));
                self.finish_if_done();
            }
            Delivery::Broken { reading, reason } if reading == self.windows.reading() => {
                tracing::warn!(reason = %reason, retry_in = ?RETRY_AFTER, "the incremental snapshot's connection failed; reading again from the stored progress");
                self.deliveries = None;
                self.retry_at = Some(Instant::now() + RETRY_AFTER);
            }
            _ => {}
        }
    }

    /// Handles what the reader queued before its next chunk (refusals, a failure).
    fn drain_refusals(&mut self, out: &mut Vec<SourceEvent>) {
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
                other => self.other_delivery(other, out),
            }
        }
    }

    /// Periodic work: refusals and failures the reader queued, a retry that is due, the progress log.
    /// What a refusal changes in the progress is stored with the next position.
    pub(super) fn poll(&mut self, out: &mut Vec<SourceEvent>) {
        self.drain_refusals(out);
        if self.retry_at.is_some_and(|at| at <= Instant::now()) {
            self.restart_reader();
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

    fn finish_if_done(&mut self) {
        if !self.progress.tables.is_empty() && self.progress.finished() {
            let rows: u64 = self.progress.tables.iter().map(|t| t.rows).sum();
            tracing::info!(
                tables = self.progress.tables.len(),
                rows,
                "incremental snapshot finished"
            );
            self.progress = Progress::default();
            self.restart_reader();
        }
    }

    /// A row inserted into the signal table.
    fn signal_row(&mut self, change: &ChangeEvent, out: &mut Vec<SourceEvent>) {
        let Some(row) = &change.after else { return };
        let column = |name: &str| {
            let at = change.table.columns.iter().position(|c| c.name == name)?;
            match &row[at] {
                Value::String(text) | Value::Json(text) => Some(text.clone()),
                _ => None,
            }
        };
        let (id, kind, data) = (column("id"), column("type"), column("data"));
        let raw = serde_json::json!({"id": id, "type": kind, "data": data}).to_string();
        let Some(kind) = kind else {
            let reason =
                "the signal has no `type`: the signal table needs columns id, type and data"
                    .to_string();
            return out.push(self.bad_signal(raw, reason));
        };
        match Signal::parse(&kind, data.as_deref()) {
            Ok(signal) => {
                tracing::info!(id = ?id, signal = %kind, "signal received");
                let (selection, signal_table) = (&self.selection, self.signal_table.as_deref());
                let acted = self
                    .progress
                    .act(signal, |name| captures(selection, signal_table, name));
                if acted.restart {
                    self.restart_reader();
                }
                if let Some(reason) = acted.refused {
                    out.push(self.bad_signal(raw, reason));
                }
            }
            Err(err) => {
                tracing::warn!(id = ?id, error = %err, "signal refused");
                out.push(self.bad_signal(raw, err.to_string()));
            }
        }
    }

    fn bad_signal(&self, raw: String, reason: String) -> SourceEvent {
        SourceEvent::BadSignal(UndecodableChange {
            connector: "postgresql",
            namespace: self.signal_table.clone(),
            raw,
            reason,
            resume_token: None,
        })
    }
}

impl Drop for Incremental {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Whether the stream captures `name` (`schema.table`): an incremental snapshot of anything else would
/// have no stream to reconcile with.
fn captures(selection: &Selection, signal_table: Option<&str>, name: &str) -> bool {
    let Some((schema, table)) = name.split_once('.') else {
        return false;
    };
    selection.includes(schema, table) && signal_table != Some(name)
}

#[cfg(test)]
#[path = "signals_tests.rs"]
mod tests;
