//! The seam between a connector and the pipeline.
//!
//! A connector implements [`Source`]: it says under which key its position is kept, decides from that
//! position how a run starts (without I/O, so each case is unit-tested), reads — snapshot first, then
//! changes — into one channel of [`SourceEvent`]s, and takes acknowledged positions back to its database
//! through a [`Committer`]. It also checks what a run needs, for `sluice check` ([`Source::check`]). The
//! pipeline does everything else the same way for every source: encoding, publishing, dead letters, and
//! storing a position only once the broker has every event before it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::check::Report;
use crate::event::{Position, SourceEvent};
use crate::metrics::SourceMetrics;
use crate::positions::{PositionPeek, PositionStore, StoredPosition};

/// A database sluice reads changes from.
pub trait Source: Send + Sync + 'static {
    /// Why reading failed; its message says what to do.
    type Error: std::error::Error + Send + Sync + 'static;
    /// How a run starts, decided by [`Source::plan`].
    type Plan: Send + 'static;

    /// Debezium's name for the connector (`postgresql`, `mongodb`), carried by dead letters.
    const CONNECTOR: &'static str;

    /// The name the position is stored under (unique per source instance).
    fn position_key(&self) -> String;

    /// How this run starts, given the stored position (None: there is none). `Ok(None)`: there is nothing
    /// to do (a finished `initial_only` snapshot), and the pipeline ends before connecting to anything.
    /// No I/O: every case is a unit test.
    fn plan(
        &self,
        stored: Option<StoredPosition>,
        store: &PositionStore,
    ) -> Result<Option<Self::Plan>, Self::Error>;

    /// Connects, prepares, and reads: the snapshot the plan calls for, then changes, into
    /// `context.events`, until `context.stop` or until the pipeline drops the receiver. Positions come back
    /// through the returned [`Committer`], once the broker has everything before them.
    fn start(
        &self,
        plan: Self::Plan,
        context: SourceContext,
    ) -> (
        Arc<dyn Committer>,
        impl Future<Output = Result<(), Self::Error>> + Send + 'static,
    );

    /// `sluice check`: connects and adds a line to `report` per requirement of a run, each failure or
    /// warning with its fix. Changes nothing. `position` is what the store holds under
    /// [`Source::position_key`]: whether a missing slot is fine can depend on it.
    fn check(
        &self,
        position: &PositionPeek,
        report: &mut Report,
    ) -> impl Future<Output = ()> + Send;

    /// `sluice snapshot`: writes `signal` where this source reads its signals (the signal table or
    /// collection), for a running sluice to act on. Returns the signal's id.
    fn signal(
        &self,
        signal: &crate::signal::Signal,
    ) -> impl Future<Output = Result<String, Self::Error>> + Send;

    /// After a clean stop, once the final position is stored: what the source does then (drop a slot).
    fn stopped(
        &self,
        _store: &PositionStore,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        async { Ok(()) }
    }
}

/// Takes positions back to the database (Materialize's offset committer): the pipeline calls it with
/// each position once the broker has acknowledged every event up to it and the store holds it.
pub trait Committer: Send + Sync {
    /// Whether the pipeline stores this position itself. A connector that must do something first
    /// (drop a slot before the store says a snapshot is complete) answers false and stores it later.
    fn stores(&self, _position: &Position) -> bool {
        true
    }

    /// `position` is on the broker (and stored, unless [`Committer::stores`] said otherwise).
    fn commit(&self, position: &Position);
}

/// A committer for databases that keep nothing for their readers: the stored position is the only record.
pub struct StoreOnly;

impl Committer for StoreOnly {
    fn commit(&self, _: &Position) {}
}

/// Forwards each committed position to the reader, which tells its server on its own connection.
pub struct ToReader(pub watch::Sender<Option<Position>>);

impl Committer for ToReader {
    fn commit(&self, position: &Position) {
        let _ = self.0.send(Some(position.clone()));
    }
}

/// What the pipeline hands a source for one run.
pub struct SourceContext {
    /// Events in source order: a snapshot's rows first, then changes.
    pub events: mpsc::Sender<SourceEvent>,
    /// Becomes true when sluice should stop; a source finishes its open transaction first.
    pub stop: watch::Receiver<bool>,
    /// How long a stop waits for the open transaction to end.
    pub stop_grace: Duration,
    pub metrics: Arc<dyn SourceMetrics>,
    /// Where positions are kept: the source records its identity there, and may keep a journal beside it.
    pub store: Arc<PositionStore>,
}

/// `work`'s outcome, or None when a stop is requested (see [`SourceContext::stop`]) before it ends. A stop
/// requested earlier counts too, even one another receiver has seen (during a back-off): the value is
/// checked first.
pub async fn unless_stopped<T>(
    stop: &mut watch::Receiver<bool>,
    work: impl std::future::IntoFuture<Output = T>,
) -> Option<T> {
    if *stop.borrow() {
        return None;
    }
    tokio::select! {
        outcome = work.into_future() => Some(outcome),
        _ = stop.changed() => None,
    }
}
