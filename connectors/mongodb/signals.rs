//! Signals and incremental snapshots, the stream's side: a relay between the reader and the pipeline.
//! Documents inserted into the signal collection become instructions (never events), watermark
//! documents open and close chunk windows, chunk documents the stream did not overtake are published at
//! their high watermark, and every position handed on carries the snapshot's progress.
//!
//! A relay (rather than code in each reader) serves the change stream, the oplog tail and a snapshot
//! alike, and leaves their positions as they are: the reader resumes from its own, the relay wraps what
//! reaches the pipeline. The chunk reader ([`crate::incremental`]) runs as a task of its own; the relay
//! starts it, restarts it from the progress (a new reading) when a signal changes the plan or a chunk goes
//! missing, and stops it.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use mongodb::bson::Bson;
use sluice_core::event::{DocumentChange, Op, Position, SourceEvent, UndecodableChange};
use sluice_core::incremental::{Closed, Progress, Watermark, Windows};
use sluice_core::positions::now_us;
use sluice_core::signal::Signal;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::change::bson_from_canonical;
use crate::config::CollectionSelection;
use crate::connection::MongodbSource;
use crate::control::DocumentStreamControl;
use crate::incremental::{self as reader, Delivery, ReaderSettings, CHUNKS_IN_FLIGHT};
use crate::signal_collection::{classify, SignalDocument};

/// How long a broken chunk reader waits before a new reading begins.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// How often the progress is logged while a snapshot runs.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// How often refusals, retries and the log are looked at.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// Events between the reader and the relay.
const RELAY_BUFFER: usize = 256;

/// The control the reader gets (its events through the relay when signals are on), and the relay to
/// run beside it. Without a signal collection there is no relay; a stored snapshot is then dropped.
pub(super) fn interpose(
    source: &MongodbSource,
    progress: Option<Progress>,
    control: DocumentStreamControl,
) -> (DocumentStreamControl, Option<impl Future<Output = ()>>) {
    let Some(signal_collection) = source.settings.signal_collection.clone() else {
        if progress.is_some_and(|p| !p.finished()) {
            tracing::warn!("the stored position carries an incremental snapshot, but `[source] signal_collection` is not set: it is dropped (set signal_collection to carry it on)");
        }
        return (control, None);
    };
    let (events, incoming) = mpsc::channel(RELAY_BUFFER);
    let out = control.events.clone();
    let reader = ReaderSettings {
        client: source.client.clone(),
        replica_set: source.replica_set.clone(),
        signal_collection,
        chunk_rows: source.settings.incremental_chunk_rows,
    };
    let incremental = Incremental::new(
        source.settings.selection.clone(),
        reader,
        progress,
        control.metrics.clone(),
    );
    let control = DocumentStreamControl { events, ..control };
    (control, Some(incremental.relay(incoming, out)))
}

pub(super) struct Incremental {
    /// The captured collections (the signal collection left out).
    selection: CollectionSelection,
    signal_collection: String,
    reader: ReaderSettings,
    windows: Windows,
    progress: Progress,
    deliveries: Option<mpsc::Receiver<Delivery>>,
    /// Taken from `deliveries` but not yet wanted: at most one chunk, at the front.
    held: VecDeque<Delivery>,
    task: Option<tokio::task::JoinHandle<()>>,
    retry_at: Option<Instant>,
    logged_at: Instant,
    /// The last position handed on (the stream's, unwrapped), for an idle point after a refusal.
    last_position: Option<Position>,
    /// A change was handed on after `last_position`: no idle point until the reader's position.
    open: bool,
    metrics: std::sync::Arc<dyn sluice_core::metrics::SourceMetrics>,
}

impl Incremental {
    fn new(
        selection: CollectionSelection,
        reader: ReaderSettings,
        progress: Option<Progress>,
        metrics: std::sync::Arc<dyn sluice_core::metrics::SourceMetrics>,
    ) -> Incremental {
        // Tells this process's watermarks from an earlier run's still in the oplog, and from another
        // sluice's on the same signal collection.
        let run = format!("mongo-{}-{}", std::process::id(), now_us());
        Incremental {
            selection,
            signal_collection: reader.signal_collection.clone(),
            reader,
            windows: Windows::new(run),
            progress: progress.filter(|p| !p.finished()).unwrap_or_default(),
            deliveries: None,
            held: VecDeque::new(),
            task: None,
            retry_at: None,
            logged_at: Instant::now(),
            last_position: None,
            open: false,
            metrics,
        }
    }

    /// Passes the reader's events on, acting on the signal collection's, until the reader ends or the
    /// pipeline goes away.
    async fn relay(
        mut self,
        mut incoming: mpsc::Receiver<SourceEvent>,
        out: mpsc::Sender<SourceEvent>,
    ) {
        self.carry_on_stored();
        let mut poll = tokio::time::interval(POLL_EVERY);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut produced = Vec::new();
            tokio::select! {
                event = incoming.recv() => match event {
                    Some(event) => self.process(event, &mut produced),
                    None => return,
                },
                _ = poll.tick() => self.poll(&mut produced),
                _ = out.closed() => return,
            }
            for event in produced {
                if out.send(event).await.is_err() {
                    return;
                }
            }
        }
    }

    /// Carries on the stored snapshot, less the collections the stream no longer captures.
    fn carry_on_stored(&mut self) {
        let left: Vec<String> = self
            .progress
            .pending()
            .filter(|t| !self.selection.includes_namespace(&t.name))
            .map(|t| t.name.clone())
            .collect();
        if !left.is_empty() {
            // The stream no longer captures them: there would be nothing to reconcile their chunks with.
            tracing::warn!(collections = ?left, "the stored incremental snapshot names collections no longer captured: they are not read on");
            self.progress.stop(&left);
        }
        if self.progress.pending().next().is_some() {
            tracing::info!(collections = ?self.pending_names(), paused = self.progress.paused, "carrying on the incremental snapshot of the stored position");
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

    /// One event of the reader: a signal collection document is acted on, a change marks its key, a
    /// position gets the progress.
    fn process(&mut self, event: SourceEvent, out: &mut Vec<SourceEvent>) {
        match event {
            SourceEvent::Document(change) if change.namespace() == self.signal_collection => {
                if change.op == Op::Create {
                    self.signal_document(&change, out);
                }
            }
            SourceEvent::Document(change) => {
                // Most of the time no window is open: then a change costs no namespace or key copy.
                if self.windows.any_open() {
                    let namespace = change.namespace();
                    if self.windows.tracking(&namespace) {
                        self.windows.changed(&namespace, change.key.clone());
                    }
                }
                self.open = true;
                out.push(SourceEvent::Document(change));
            }
            SourceEvent::Commit {
                position,
                commit_time_us,
            } => out.push(SourceEvent::Commit {
                position: self.pass(position),
                commit_time_us,
            }),
            SourceEvent::Idle { position } => out.push(SourceEvent::Idle {
                position: self.pass(position),
            }),
            other => out.push(other),
        }
    }

    /// A position on its way to the pipeline, with the progress; remembered for later idle points.
    fn pass(&mut self, position: Position) -> Position {
        let position = position.into_parts().0;
        self.last_position = Some(position.clone());
        self.open = false;
        let wrapped = Position::with_incremental(position, Some(&self.progress));
        // A finished snapshot is carried once, on the position after its last rows, so that what it
        // read is on record; then it is forgotten.
        if !self.progress.tables.is_empty() && self.progress.finished() {
            self.finish_if_done();
        }
        wrapped
    }

    /// A document inserted into the signal collection.
    fn signal_document(&mut self, change: &DocumentChange, out: &mut Vec<SourceEvent>) {
        let document = match change.after.as_deref().map(bson_from_canonical) {
            Some(Ok(Bson::Document(document))) => document,
            _ => return,
        };
        match classify(&document) {
            SignalDocument::Watermark(mark) => self.watermark(&mark, out),
            SignalDocument::ForeignWindow => {}
            SignalDocument::Malformed(reason) => {
                tracing::warn!(reason = %reason, "signal refused");
                out.push(self.bad_signal(relaxed(&document), reason));
            }
            SignalDocument::Signal { id, kind, data } => {
                match Signal::parse(&kind, data.as_deref()) {
                    Ok(signal) => {
                        tracing::info!(id = ?id, signal = %kind, "signal received");
                        let selection = &self.selection;
                        let acted = self
                            .progress
                            .act(signal, |name| selection.includes_namespace(name));
                        if acted.restart {
                            self.restart_reader();
                        }
                        if let Some(reason) = acted.refused {
                            out.push(self.bad_signal(relaxed(&document), reason));
                        }
                    }
                    Err(err) => {
                        tracing::warn!(id = ?id, error = %err, "signal refused");
                        out.push(self.bad_signal(relaxed(&document), err.to_string()));
                    }
                }
            }
        }
    }

    fn watermark(&mut self, mark: &Watermark, out: &mut Vec<SourceEvent>) {
        if !mark.high {
            // The reader reads the pending collections in order, and every chunk before this one is
            // closed (its high watermark came first): once the refusals queued since are handled, the
            // front pending collection is the one this chunk reads.
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
        let (closed, done) = self.windows.high(mark, chunk);
        match closed {
            Closed::Foreign => {}
            Closed::Lost => {
                tracing::warn!(chunk = mark.number, "an incremental snapshot chunk went missing; reading again from the stored progress");
                self.restart_reader();
            }
            Closed::Publish { rows, .. } => {
                let Some(done) = done else { return };
                out.extend(rows.into_iter().map(SourceEvent::Document));
                self.open = true;
                self.progress.chunk_done(&done);
                self.report(&done.table);
                if done.table_done {
                    tracing::info!(collection = %done.table, "incremental snapshot of collection finished");
                }
                // The reader's position after the watermark follows, carrying this progress.
            }
        }
    }

    /// The chunk the high watermark `mark` closes, handling refusals queued before it.
    fn take_chunk(
        &mut self,
        mark: &Watermark,
        out: &mut Vec<SourceEvent>,
    ) -> Option<sluice_core::incremental::Chunk<DocumentChange>> {
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
                Delivery::Chunk(chunk) => return Some(chunk),
                other => self.other_delivery(other, out),
            }
        }
    }

    fn other_delivery(&mut self, delivery: Delivery, out: &mut Vec<SourceEvent>) {
        match delivery {
            Delivery::Chunk(_) => {}
            Delivery::Refused {
                reading,
                table,
                reason,
            } if reading == self.windows.reading() => {
                tracing::warn!(collection = %table, reason = %reason, "incremental snapshot of collection refused");
                self.windows.abandon(&table);
                self.progress.stop(std::slice::from_ref(&table));
                out.push(self.bad_signal(
                    serde_json::json!({"data-collection": table}).to_string(),
                    format!("incremental snapshot of {table}: {reason}"),
                ));
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
    fn drain_refusals(&mut self, out: &mut Vec<SourceEvent>) {
        while !matches!(self.held.front(), Some(Delivery::Chunk(_))) {
            let next = match self.held.pop_front() {
                Some(delivery) => delivery,
                None => match self.deliveries.as_mut().map(|d| d.try_recv()) {
                    Some(Ok(delivery)) => delivery,
                    _ => break,
                },
            };
            match next {
                chunk @ Delivery::Chunk(_) => self.held.push_front(chunk),
                other => self.other_delivery(other, out),
            }
        }
    }

    /// Periodic work: refusals and failures the reader queued, a retry that is due, the progress log.
    /// What a refusal changes in the progress is stored with an idle point at the last position.
    fn poll(&mut self, out: &mut Vec<SourceEvent>) {
        let before = self.progress.clone();
        self.drain_refusals(out);
        if self.retry_at.is_some_and(|at| at <= Instant::now()) {
            self.restart_reader();
        }
        if self.logged_at.elapsed() >= LOG_EVERY && !self.progress.finished() {
            self.logged_at = Instant::now();
            for table in self.progress.pending() {
                tracing::info!(collection = %table.name, documents = table.rows, estimated = ?table.estimated, chunks = table.chunks, paused = self.progress.paused, "incremental snapshot progress");
            }
        }
        let changed = !out.is_empty() || self.progress != before;
        if let (true, false, Some(position)) = (changed, self.open, self.last_position.clone()) {
            out.push(SourceEvent::Idle {
                position: self.pass(position),
            });
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
            let documents: u64 = self.progress.tables.iter().map(|t| t.rows).sum();
            tracing::info!(
                collections = self.progress.tables.len(),
                documents,
                "incremental snapshot finished"
            );
            self.progress = Progress::default();
            // The reader has nothing left but deleting its last watermarks: let it.
            drop(self.task.take());
            self.restart_reader();
        }
    }

    fn bad_signal(&self, raw: String, reason: String) -> SourceEvent {
        SourceEvent::BadSignal(UndecodableChange {
            connector: "mongodb",
            namespace: Some(self.signal_collection.clone()),
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

/// A signal document as the dead letter shows it.
fn relaxed(document: &mongodb::bson::Document) -> String {
    Bson::Document(document.clone())
        .into_relaxed_extjson()
        .to_string()
}

#[cfg(test)]
#[path = "signals_tests.rs"]
mod tests;
