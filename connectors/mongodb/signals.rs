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

use std::future::Future;
use std::time::Duration;

use mongodb::bson::Bson;
use sluice_core::event::{DocumentChange, Op, Position, SourceEvent, UndecodableChange};
use sluice_core::incremental::{Progress, Watermark};
use sluice_core::positions::now_us;
use sluice_core::reading::{Reading, Refusal};
use sluice_core::signal::Signal;
use tokio::sync::mpsc;

use crate::change::bson_from_canonical;
use crate::config::CollectionSelection;
use crate::connection::MongodbSource;
use crate::control::DocumentStreamControl;
use crate::incremental::{self as reader, ReaderSettings};
use crate::signal_collection::{classify, SignalDocument};

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
    reading: Reading<DocumentChange, ()>,
    /// The last position handed on (the stream's, unwrapped), for an idle point after a refusal.
    last_position: Option<Position>,
    /// A change was handed on after `last_position`: no idle point until the reader's position.
    open: bool,
    /// The stored snapshot, carried on once the relay runs (its reader task needs the runtime).
    stored: Option<Progress>,
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
        let signal_collection = reader.signal_collection.clone();
        let spawn = Box::new(move |request| tokio::spawn(reader::read(reader.clone(), request)));
        Incremental {
            selection,
            signal_collection,
            reading: Reading::new(run, "collection", metrics, spawn),
            last_position: None,
            open: false,
            stored: progress,
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
        let selection = &self.selection;
        self.reading.carry_on(self.stored.take(), |name| {
            selection.includes_namespace(name)
        });
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
                let windows = &mut self.reading.windows;
                if windows.any_open() {
                    let namespace = change.namespace();
                    if windows.tracking(&namespace) {
                        windows.changed(&namespace, change.key.clone());
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
        let wrapped = self.reading.with_progress(position);
        // A finished snapshot is carried once, on the position after its last rows, so that what it
        // read is on record; then it is forgotten.
        self.reading.finish_if_done();
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
                        let refused = self
                            .reading
                            .act(signal, |name| selection.includes_namespace(name));
                        if let Some(reason) = refused {
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
        let mut refused = Vec::new();
        if !mark.high {
            self.reading.low(mark, &mut refused);
            return self.refusals(refused, out);
        }
        let published = self.reading.high(mark, &mut refused);
        self.refusals(refused, out);
        if let Some(published) = published {
            out.extend(published.rows.into_iter().map(SourceEvent::Document));
            self.open = true;
            // The reader's position after the watermark follows, carrying this progress.
        }
    }

    /// Periodic work: refusals and failures the reader queued, a retry that is due, the progress log.
    /// What a refusal changes in the progress is stored with an idle point at the last position.
    fn poll(&mut self, out: &mut Vec<SourceEvent>) {
        let before = self.reading.progress.clone();
        let mut refused = Vec::new();
        self.reading.poll(&mut refused);
        self.refusals(refused, out);
        let changed = !out.is_empty() || self.reading.progress != before;
        if let (true, false, Some(position)) = (changed, self.open, self.last_position.clone()) {
            out.push(SourceEvent::Idle {
                position: self.pass(position),
            });
        }
    }

    fn refusals(&self, refused: Vec<Refusal>, out: &mut Vec<SourceEvent>) {
        out.extend(refused.into_iter().map(|refusal| {
            let (raw, reason) = refusal.letter();
            self.bad_signal(raw, reason)
        }));
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

/// A signal document as the dead letter shows it.
fn relaxed(document: &mongodb::bson::Document) -> String {
    Bson::Document(document.clone())
        .into_relaxed_extjson()
        .to_string()
}

#[cfg(test)]
#[path = "signals_tests.rs"]
mod tests;
