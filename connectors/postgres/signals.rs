//! Signals and incremental snapshots, the stream's side: rows of the signal table become instructions
//! (never events), watermarks open and close chunk windows, chunk rows the stream did not overtake are
//! published at their high watermark, and every position handed on carries the snapshot's progress.
//!
//! The chunk reader ([`super::incremental`]) runs as a task of its own, kept by
//! [`sluice_core::reading::Reading`]; this side turns what it hands back into events.

use std::sync::Arc;

use sluice_core::event::{
    ChangeEvent, Lsn, Op, Position, Row, SnapshotMarker, SourceEvent, SourceInfo, Table,
    UndecodableChange, Value,
};
use sluice_core::incremental::{key_of, Progress, Watermark};
use sluice_core::metrics::SourceMetrics;
use sluice_core::positions::now_us;
use sluice_core::reading::{Publish, Reading, Refusal};
use sluice_core::signal::Signal;

use super::config::Selection;
use super::decoder::StreamDecoder;
use super::incremental::{self as reader, ReaderSettings};
use super::settings::PostgresSettings;

pub(super) struct Incremental {
    /// `schema.table`; None: signals are off (a snapshot carried over from a run that had them still ends).
    signal_table: Option<String>,
    snapshot_new_tables: bool,
    selection: Selection,
    database: Arc<str>,
    reading: Reading<Row, Arc<Table>>,
}

impl Incremental {
    pub(super) fn new(
        settings: &PostgresSettings,
        progress: Option<Progress>,
        metrics: Arc<dyn SourceMetrics>,
    ) -> Incremental {
        let reader_settings = ReaderSettings {
            connection: settings.connection.clone(),
            selection: settings.selection.clone(),
            decimal: settings.decimal_handling,
            chunk_rows: settings.incremental_chunk_rows,
            publication: settings.publication.clone(),
        };
        // Distinguishes this process's watermarks from an earlier run's still in the WAL, and from another
        // sluice's on the same database.
        let run = format!("{}-{}-{}", settings.slot, std::process::id(), now_us());
        let spawn =
            Box::new(move |request| tokio::spawn(reader::read(reader_settings.clone(), request)));
        let mut incremental = Incremental {
            signal_table: settings.signal_table.clone(),
            snapshot_new_tables: settings.snapshot_new_tables,
            selection: settings.selection.clone(),
            database: settings.database.as_str().into(),
            reading: Reading::new(run, "table", metrics, spawn),
        };
        let (selection, signal_table) = (&incremental.selection, incremental.signal_table.clone());
        incremental.reading.carry_on(progress, |name| {
            captures(selection, signal_table.as_deref(), name)
        });
        incremental
    }

    /// A selected table the stream met for the first time (added to the publication while streaming): its
    /// rows from before are read incrementally, when `snapshot_new_tables` says so.
    pub(super) fn joined(&mut self, table: String) {
        let progress = &mut self.reading.progress;
        if !self.snapshot_new_tables || progress.tables.iter().any(|t| t.name == table) {
            return;
        }
        tracing::info!(table = %table, "snapshotting the table that joined incrementally");
        progress.request(&[table], &[]);
        self.reading.restart();
    }

    /// The stream met a Relation message for `table`: its model may have changed. If it is the table
    /// being read, the reading starts again from the progress, so that its next chunks carry the new model.
    pub(super) fn described(&mut self, table: &str) {
        let progress = &self.reading.progress;
        let reading = progress.pending().next().is_some_and(|t| t.name == table);
        if reading && self.reading.is_reading() && !progress.paused {
            tracing::debug!(
                table,
                "the table being read was described again; reading on with its new model"
            );
            self.reading.restart();
        }
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
                    position: self.reading.with_progress(position),
                    commit_time_us,
                }),
                SourceEvent::Idle { position } => out.push(SourceEvent::Idle {
                    position: self.reading.with_progress(position),
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
                self.reading.windows.any_open() || self.is_signal_table(&change.table)
            }
            SourceEvent::Message(message) => message.prefix == Watermark::PREFIX,
            SourceEvent::Commit { .. } | SourceEvent::Idle { .. } => {
                !self.reading.progress.tables.is_empty()
            }
            _ => false,
        }
    }

    fn is_signal_table(&self, table: &Table) -> bool {
        self.signal_table.as_deref().is_some_and(|name| {
            name.split_once('.') == Some((table.schema.as_str(), table.name.as_str()))
        })
    }

    /// A change the stream delivers: its keys (old and new) win over a chunk's rows.
    fn mark(&mut self, change: &ChangeEvent) {
        let windows = &mut self.reading.windows;
        if !windows.any_open() {
            return;
        }
        let table = change.table.qualified_name();
        if !windows.tracking(&table) {
            return;
        }
        if change.op == Op::Truncate {
            return windows.truncated(&table);
        }
        for row in [&change.before, &change.after].into_iter().flatten() {
            windows.changed(
                &table,
                key_of(change.table.key_columns().map(|(at, _)| &row[at])),
            );
        }
    }

    fn watermark(
        &mut self,
        mark: &Watermark,
        lsn: Lsn,
        out: &mut Vec<SourceEvent>,
        decoder: &mut StreamDecoder,
    ) {
        let mut refused = Vec::new();
        if !mark.high {
            self.reading.low(mark, &mut refused);
            return self.refusals(refused, out);
        }
        let published = self.reading.high(mark, &mut refused);
        self.refusals(refused, out);
        let Some(Publish { rows, model, .. }) = published else {
            return;
        };
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
        // The rows are in; the position after them carries the progress (a finished one too, once, so
        // that what it read is on record), then a finished snapshot is forgotten.
        let from = out.len();
        decoder.idle(lsn, out);
        for event in &mut out[from..] {
            if let SourceEvent::Idle { position } = event {
                let stream = std::mem::replace(position, Position::Postgres { lsn });
                *position = self.reading.with_progress(stream);
            }
        }
        self.reading.finish_if_done();
    }

    /// Periodic work: refusals and failures the reader queued, a retry that is due, the progress log.
    /// What a refusal changes in the progress is stored with the next position.
    pub(super) fn poll(&mut self, out: &mut Vec<SourceEvent>) {
        let mut refused = Vec::new();
        self.reading.poll(&mut refused);
        self.refusals(refused, out);
    }

    fn refusals(&self, refused: Vec<Refusal>, out: &mut Vec<SourceEvent>) {
        out.extend(refused.into_iter().map(|refusal| {
            let (raw, reason) = refusal.letter();
            self.bad_signal(raw, reason)
        }));
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
                let refused = self
                    .reading
                    .act(signal, |name| captures(selection, signal_table, name));
                if let Some(reason) = refused {
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
