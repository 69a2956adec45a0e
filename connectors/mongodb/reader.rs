//! Where a run goes: the snapshot its start calls for, then the configured capture (a change stream, or
//! the oplog), reconnecting after transient failures from the last position read and taking a new
//! snapshot when the stored position has left the oplog and `snapshot = "when_needed"` allows it.
//!
//! MongoDB keeps no per-reader state (there is no slot to acknowledge), so the position file is the only
//! record of how far sluice got: a token is stored once the broker has every event before it, and a
//! restart opens the stream with `startAfter` that token (which, unlike `resumeAfter`, also accepts the
//! token of an `invalidate`).

use mongodb::error::Error as DriverError;

use crate::change_stream::{is_history_lost, parse_token, token_text};
use crate::config::Capture;
use crate::connection::MongodbSource;
use crate::control::{back_off, is_transient, DocumentStreamControl, Ended, RECONNECT_MAX_DELAY};
use crate::error::MongodbError;
use crate::oplog_tail::{oplog_lost_since, PreparedTransactions};
use crate::signals;
use crate::snapshot::{self, SnapshotEnd, SnapshotRun};
use sluice_core::backoff::Backoff;
use sluice_core::config::{redact_secrets, SnapshotMode};
use sluice_core::event::{Position, SnapshotChunk, SourceEvent};
use sluice_core::incremental::Progress;
use sluice_core::source::unless_stopped;

/// How a run starts: where the stream starts, and the incremental snapshot the stored position carries.
#[derive(Debug)]
pub struct Plan {
    pub start: Start,
    pub incremental: Option<Progress>,
}

/// Where a run starts.
#[derive(Debug)]
pub enum Start {
    /// After a stored position: a resume token, or an oplog timestamp.
    After(Position),
    /// From now: what was written before is not published.
    Now,
    /// A new snapshot, then the stream from the point taken before it.
    Snapshot,
    /// An interrupted snapshot, carried on from its stored progress.
    CarryOnSnapshot {
        start: Position,
        chunks: Vec<SnapshotChunk>,
    },
}

impl MongodbSource {
    /// Publishes what the plan says (a snapshot first, or not), then streams changes until a stop request
    /// or the pipeline going away. Transient failures reconnect with backoff from the last token read.
    /// With signals on, every event passes the incremental snapshot's relay on its way to the pipeline.
    pub async fn stream(
        self,
        plan: Plan,
        control: DocumentStreamControl,
    ) -> Result<(), MongodbError> {
        match signals::interpose(&self, plan.incremental, control) {
            (control, None) => self.stream_start(plan.start, control).await,
            (control, Some(relay)) => {
                let (read, ()) = tokio::join!(self.stream_start(plan.start, control), relay);
                read
            }
        }
    }

    async fn stream_start(
        self,
        start: Start,
        control: DocumentStreamControl,
    ) -> Result<(), MongodbError> {
        match start {
            Start::After(position) => self.stream_from(Some(position), control).await,
            Start::Now => self.stream_from(None, control).await,
            Start::Snapshot => self.snapshot_then_stream(None, control).await,
            Start::CarryOnSnapshot { start, chunks } => {
                self.snapshot_then_stream(Some((start, chunks)), control)
                    .await
            }
        }
    }

    async fn snapshot_then_stream(
        self,
        carried_on: Option<(Position, Vec<SnapshotChunk>)>,
        mut control: DocumentStreamControl,
    ) -> Result<(), MongodbError> {
        let Some(start) = self.snapshot(carried_on, &mut control).await? else {
            return Ok(());
        };
        if self.settings.snapshot == SnapshotMode::InitialOnly {
            tracing::info!("snapshot = initial_only: done, not streaming");
            return Ok(());
        }
        self.stream_from(Some(start), control).await
    }

    /// Streams from `from` (None: from now) through the configured capture, reconnecting after
    /// transient failures from the last change read.
    async fn stream_from(
        self,
        mut from: Option<Position>,
        mut control: DocumentStreamControl,
    ) -> Result<(), MongodbError> {
        let mut failures = Backoff::new(RECONNECT_MAX_DELAY);
        // Prepared transactions seen in the oplog and not yet committed or aborted.
        let mut prepared = PreparedTransactions::default();
        loop {
            if *control.stop.borrow() {
                return Ok(());
            }
            let ended = match self.settings.capture {
                Capture::ChangeStreams => {
                    let mut token = match &from {
                        None => None,
                        Some(Position::Mongodb { resume_token }) => {
                            Some(parse_token(resume_token)?)
                        }
                        Some(other) => {
                            return Err(MongodbError::BadToken(format!(
                                "a change stream cannot start from {other}"
                            )))
                        }
                    };
                    let ended = self
                        .stream_once(&mut token, &mut control, &mut failures)
                        .await;
                    if let Some(token) = &token {
                        from = Some(Position::Mongodb {
                            resume_token: token_text(token)
                                .map_err(|err| MongodbError::BadToken(err.to_string()))?,
                        });
                    }
                    ended
                }
                Capture::Oplog => {
                    self.tail_once(&mut from, &mut prepared, &mut control, &mut failures)
                        .await
                }
            };
            // A change stream says so with an error, the oplog reader with an ending: one way on.
            let ended = match ended {
                Err(err) if is_history_lost(&err) => {
                    Ok(Ended::HistoryLost(redact_secrets(&err.to_string())))
                }
                other => other,
            };
            match ended {
                Ok(Ended::Stopped) => return Ok(()),
                Ok(Ended::Invalidated) => {
                    tracing::info!("the change stream was invalidated: opening a new one after it");
                }
                Err(err) if is_transient(&err) => {
                    control.metrics.set_streaming(false);
                    back_off(&mut failures, &err, &mut control).await;
                }
                Ok(Ended::HistoryLost(reason)) => {
                    control.metrics.set_streaming(false);
                    if self.settings.snapshot != SnapshotMode::WhenNeeded {
                        return Err(MongodbError::HistoryLost {
                            reason,
                            file: control.position_file.clone(),
                        });
                    }
                    tracing::warn!(%reason, "the stored position is no longer in the oplog: snapshot = when_needed takes a new snapshot");
                    prepared = PreparedTransactions::default();
                    match self.snapshot(None, &mut control).await? {
                        Some(start) => from = Some(start),
                        None => return Ok(()),
                    }
                }
                Err(err) => {
                    control.metrics.set_streaming(false);
                    return Err(MongodbError::Stream(redact_secrets(&err.to_string())));
                }
            }
        }
    }

    /// Takes a new snapshot, or carries on with an interrupted one, retrying transient failures from
    /// where it got to. Returns the token streaming starts from, or None when stopped.
    async fn snapshot(
        &self,
        carried_on: Option<(Position, Vec<SnapshotChunk>)>,
        control: &mut DocumentStreamControl,
    ) -> Result<Option<Position>, MongodbError> {
        let carried_on = match carried_on {
            Some((start, chunks)) => match self.carry_on(start, chunks, control).await? {
                CarryOn::Parts(start, chunks) => Some((start, chunks)),
                CarryOn::Anew => None,
                CarryOn::Stopped => return Ok(None),
            },
            None => None,
        };
        let (start, mut chunks) = match carried_on {
            Some(stored) => stored,
            None => match self.plan_snapshot(control).await? {
                Some(planned) => planned,
                None => return Ok(None),
            },
        };
        if self.read_snapshot(&start, &mut chunks, control).await? == SnapshotEnd::Stopped {
            tracing::info!(
                "stopped during the snapshot: the next run carries on from the last stored part"
            );
            return Ok(None);
        }
        self.hand_over(start, control).await
    }

    /// Whether an interrupted snapshot's parts can be read on. Streaming starts from the stored point
    /// after a carried-on snapshot: reading on is worth it only while the oplog still holds that point.
    async fn carry_on(
        &self,
        start: Position,
        chunks: Vec<SnapshotChunk>,
        control: &mut DocumentStreamControl,
    ) -> Result<CarryOn, MongodbError> {
        let probe = self
            .retrying(control, || self.history_lost_since(&start))
            .await;
        match probe.map_err(snapshot_failed)? {
            None => Ok(CarryOn::Stopped),
            Some(None) => {
                let replanned = self
                    .retrying(control, || {
                        snapshot::replan(
                            &self.client,
                            &self.settings.selection,
                            self.settings.snapshot_shape,
                            chunks.clone(),
                        )
                    })
                    .await
                    .map_err(snapshot_failed)?;
                Ok(match replanned {
                    Some(chunks) => CarryOn::Parts(start, chunks),
                    None => CarryOn::Stopped,
                })
            }
            // Everything was read, but too late: another snapshot would take as long again.
            Some(Some(reason)) if chunks.iter().all(|chunk| chunk.done) => {
                Err(MongodbError::SnapshotOutlastedOplog {
                    reason,
                    file: control.position_file.clone(),
                })
            }
            Some(Some(reason)) if self.settings.snapshot == SnapshotMode::WhenNeeded => {
                tracing::warn!(%reason, "the interrupted snapshot's starting point is no longer in the oplog: snapshot = when_needed takes a new snapshot");
                Ok(CarryOn::Anew)
            }
            Some(Some(reason)) => Err(MongodbError::HistoryLost {
                reason,
                file: control.position_file.clone(),
            }),
        }
    }

    /// A new snapshot's starting point and parts; None when stopped. The starting point comes first:
    /// every change from there on is streamed afterwards.
    async fn plan_snapshot(
        &self,
        control: &mut DocumentStreamControl,
    ) -> Result<Option<(Position, Vec<SnapshotChunk>)>, MongodbError> {
        self.retrying(control, || async {
            let start = match self.settings.capture {
                Capture::ChangeStreams => self.starting_point().await,
                Capture::Oplog => self.newest_oplog_entry().await,
            }?;
            let chunks = snapshot::plan(
                &self.client,
                &self.settings.selection,
                self.settings.snapshot_shape,
            )
            .await?;
            Ok((start, chunks))
        })
        .await
        .map_err(snapshot_failed)
    }

    /// Reads the parts not yet done, again from where it got to after each transient failure.
    async fn read_snapshot(
        &self,
        start: &Position,
        chunks: &mut [SnapshotChunk],
        control: &mut DocumentStreamControl,
    ) -> Result<SnapshotEnd, MongodbError> {
        tracing::info!(parts = chunks.len(), start = %start, "snapshot started");
        control.metrics.set_snapshot_running(true);
        let mut failures = Backoff::new(RECONNECT_MAX_DELAY);
        let ended = loop {
            // A stop that came during a back-off has been seen by `back_off`'s receiver only.
            if *control.stop.borrow() {
                break SnapshotEnd::Stopped;
            }
            let run = SnapshotRun {
                client: &self.client,
                replica_set: self.replica_set.clone(),
                readers: self.settings.snapshot_shape.readers,
                start: start.clone(),
                events: &control.events,
                stop: control.stop.clone(),
                metrics: control.metrics.clone(),
            };
            match snapshot::read(run, chunks).await {
                Ok(ended) => break ended,
                Err(err) if is_transient(&err) => back_off(&mut failures, &err, control).await,
                Err(err) => {
                    control.metrics.set_snapshot_running(false);
                    return Err(snapshot_failed(err));
                }
            }
        };
        control.metrics.set_snapshot_running(false);
        Ok(ended)
    }

    /// A snapshot read in full: streaming must start where it did. Until that point is known to be still
    /// in the oplog, the stored position stays the finished snapshot's, so that a restart does not
    /// snapshot again (with `when_needed`) only to outlast the oplog again. Returns the point, or None
    /// when stopped.
    async fn hand_over(
        &self,
        start: Position,
        control: &mut DocumentStreamControl,
    ) -> Result<Option<Position>, MongodbError> {
        let probe = self
            .retrying(control, || self.history_lost_since(&start))
            .await;
        match probe.map_err(snapshot_failed)? {
            None => return Ok(None),
            Some(Some(reason)) => {
                return Err(MongodbError::SnapshotOutlastedOplog {
                    reason,
                    file: control.position_file.clone(),
                })
            }
            Some(None) => {}
        }
        let committed = SourceEvent::Commit {
            position: start.clone(),
            commit_time_us: None,
        };
        if control.events.send(committed).await.is_err() {
            return Ok(None);
        }
        tracing::info!("snapshot read: streaming starts from the point taken before it");
        Ok(Some(start))
    }

    /// Runs `attempt` until it succeeds or fails for good, backing off after transient failures; None
    /// when a stop is requested or the pipeline has gone meanwhile.
    pub(crate) async fn retrying<T, F, Fut>(
        &self,
        control: &mut DocumentStreamControl,
        mut attempt: F,
    ) -> Result<Option<T>, DriverError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, DriverError>>,
    {
        let mut failures = Backoff::new(RECONNECT_MAX_DELAY);
        loop {
            let mut stop = control.stop.clone();
            let outcome = tokio::select! {
                outcome = unless_stopped(&mut stop, attempt()) => outcome,
                _ = control.events.closed() => None,
            };
            let Some(outcome) = outcome else {
                return Ok(None);
            };
            match outcome {
                Ok(value) => return Ok(Some(value)),
                Err(err) if is_transient(&err) => back_off(&mut failures, &err, control).await,
                Err(err) => return Err(err),
            }
        }
    }

    /// Why `start` can no longer be streamed from (None while the oplog still holds it).
    async fn history_lost_since(&self, start: &Position) -> Result<Option<String>, DriverError> {
        match start {
            Position::Mongodb { resume_token } => self.change_stream_lost_since(resume_token).await,
            Position::MongodbOplog { seconds, increment } => {
                oplog_lost_since(&self.client, (*seconds, *increment)).await
            }
            other => Err(DriverError::custom(format!(
                "a MongoDB snapshot cannot start from {other}"
            ))),
        }
    }
}

/// What becomes of an interrupted snapshot.
enum CarryOn {
    /// Its parts are read on, streaming to start from its stored point.
    Parts(Position, Vec<SnapshotChunk>),
    /// Its starting point has left the oplog and `snapshot = "when_needed"`: a new snapshot is taken.
    Anew,
    /// A stop was requested, or the pipeline has gone.
    Stopped,
}

fn snapshot_failed(err: DriverError) -> MongodbError {
    MongodbError::Snapshot(redact_secrets(&err.to_string()))
}
