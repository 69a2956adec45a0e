//! The change-stream reader: one deployment-wide change stream, filtered on the server to the selected
//! collections, each event converted and handed to the pipeline with the resume token that positions it.
//!
//! MongoDB keeps no per-reader state (there is no slot to acknowledge), so the position file is the only
//! record of how far sluice got: a token is stored once the broker has every event before it, and a
//! restart opens the stream with `startAfter` that token (which, unlike `resumeAfter`, also accepts the
//! token of an `invalidate`).

use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{self, doc, Bson, Document};
use mongodb::change_stream::event::ResumeToken;
use mongodb::change_stream::ChangeStream;
use mongodb::error::{Error as DriverError, ErrorKind};
use mongodb::options::{
    ChangeStreamOptions, ClientOptions, FullDocumentBeforeChangeType, FullDocumentType,
};
use mongodb::Client;
use tokio::sync::{mpsc, watch};

use super::change::{self, EventKind};
use super::oplog_tail::PreparedTransactions;
use super::snapshot::{self, SnapshotEnd, SnapshotRun, SnapshotShape};
use crate::config::{BeforeImage, Capture, CollectionSelection, FullDocument};
use sluice_core::backoff::Backoff;
use sluice_core::config::{redact_secrets, SnapshotMode};
use sluice_core::event::{Position, SnapshotChunk, SourceEvent};
use sluice_core::metrics::SourceMetrics;
use sluice_core::source::unless_stopped;

/// How long the server holds a getMore open when nothing happens: how quickly a stop is noticed.
const MAX_AWAIT: Duration = Duration::from_secs(1);
/// How often an idle stream's position (its post-batch resume token) is passed on to be stored.
const IDLE_POSITION_INTERVAL: Duration = Duration::from_secs(10);
/// The longest wait between reconnection attempts after transient failures.
pub(super) const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(10);
/// MongoDB's error code for a resume point that is no longer in the oplog.
const CHANGE_STREAM_HISTORY_LOST: i32 = 286;
/// Server errors that a new attempt from the last position read can cure: the server shutting down or
/// stepping down in an election (ShutdownInProgress, PrimarySteppedDown, NotWritablePrimary,
/// InterruptedAtShutdown, InterruptedDueToReplStateChange, NotPrimaryNoSecondaryOk,
/// NotPrimaryOrSecondary), network trouble reported by a mongos (HostUnreachable, HostNotFound,
/// NetworkTimeout, SocketException), and a cursor the server let go of (CursorNotFound after ten idle
/// minutes, QueryPlanKilled when a collection is dropped or an index rebuilt, CursorKilled).
const RETRYABLE_CODES: [i32; 15] = [
    91, 189, 10107, 11600, 11602, 13435, 13436, 6, 7, 89, 9001, 43, 175, 237, 134,
];

#[derive(Debug, thiserror::Error)]
pub enum MongodbError {
    #[error("source.url: {0}")]
    Url(String),
    #[error("cannot reach MongoDB at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("MongoDB at {url} is a standalone server; change streams need a replica set or a sharded cluster (a one-member replica set will do: start mongod with --replSet and run rs.initiate())")]
    Standalone { url: String },
    #[error("the stored position is no longer in the oplog ({reason}): the changes since it are gone from the server. Move the position file {file} away to start from now (those changes are not published), and size the oplog for the longest outage to expect")]
    HistoryLost { reason: String, file: String },
    #[error("the snapshot took longer than the oplog window: the point it started from is no longer in the oplog ({reason}), so the changes made while it ran are gone, and another snapshot would take as long. Enlarge the oplog (replSetResizeOplog) or select fewer collections, then move the position file {file} away to take a new snapshot")]
    SnapshotOutlastedOplog { reason: String, file: String },
    #[error("the position file holds a resume token that is not valid: {0}")]
    BadToken(String),
    #[error("the change stream failed: {0}")]
    Stream(String),
    #[error("the snapshot failed: {0}")]
    Snapshot(String),
    #[error("the position file {file} holds a position of another kind of source ({position}); point positions.dir elsewhere or move the file away")]
    ForeignPosition { file: String, position: String },
    #[error("the position file {file} holds {position}, which capture = \"{capture}\" cannot resume from (a change stream resumes from a token, the oplog reader from a timestamp); set the capture it was written with, or move the file away to start again")]
    CaptureMismatch {
        file: String,
        position: String,
        capture: &'static str,
    },
}

/// What the reader needs from the config.
#[derive(Clone, Debug)]
pub struct MongodbSettings {
    pub url: String,
    pub selection: CollectionSelection,
    pub full_document: FullDocument,
    pub before: BeforeImage,
    pub capture: Capture,
    pub snapshot: SnapshotMode,
    pub snapshot_shape: SnapshotShape,
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

/// How the reader talks to the pipeline.
pub struct DocumentStreamControl {
    pub events: mpsc::Sender<SourceEvent>,
    pub stop: watch::Receiver<bool>,
    pub metrics: Arc<dyn SourceMetrics>,
    /// The position file, named in errors that tell the operator to move it.
    pub position_file: String,
}

pub struct MongodbSource {
    pub(super) client: Client,
    pub(super) settings: MongodbSettings,
    pub(super) replica_set: Option<Arc<str>>,
}

impl MongodbSource {
    /// Connects and asks the server what it is: a standalone server has no change streams.
    pub async fn connect(settings: MongodbSettings) -> Result<MongodbSource, MongodbError> {
        let shown = redact_secrets(&settings.url);
        let client = client(&settings.url).await?;
        let (replica_set, mongos) = topology(&client, &shown).await?;
        if replica_set.is_none() && !mongos {
            return Err(MongodbError::Standalone { url: shown });
        }
        tracing::info!(url = %shown, replica_set = replica_set.as_deref().unwrap_or("(mongos)"), "connected to MongoDB");
        Ok(MongodbSource {
            client,
            settings,
            replica_set,
        })
    }

    /// Publishes what `start` says (a snapshot first, or not), then streams changes until a stop request
    /// or the pipeline going away. Transient failures reconnect with backoff from the last token read.
    pub async fn stream(
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
        let failed = |err: DriverError| MongodbError::Snapshot(redact_secrets(&err.to_string()));
        // Streaming starts from the stored point after a carried-on snapshot: reading on is worth it
        // only while the oplog still holds that point.
        let carried_on = match carried_on {
            Some((start, chunks)) => {
                let probe = self
                    .retrying(control, || self.history_lost_since(&start))
                    .await;
                match probe.map_err(failed)? {
                    None => return Ok(None),
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
                            .map_err(failed)?;
                        match replanned {
                            Some(chunks) => Some((start, chunks)),
                            None => return Ok(None),
                        }
                    }
                    // Everything was read, but too late: another snapshot would take as long again.
                    Some(Some(reason)) if chunks.iter().all(|chunk| chunk.done) => {
                        return Err(MongodbError::SnapshotOutlastedOplog {
                            reason,
                            file: control.position_file.clone(),
                        })
                    }
                    Some(Some(reason)) if self.settings.snapshot == SnapshotMode::WhenNeeded => {
                        tracing::warn!(%reason, "the interrupted snapshot's starting point is no longer in the oplog: snapshot = when_needed takes a new snapshot");
                        None
                    }
                    Some(Some(reason)) => {
                        return Err(MongodbError::HistoryLost {
                            reason,
                            file: control.position_file.clone(),
                        })
                    }
                }
            }
            None => None,
        };
        let (start, mut chunks) = match carried_on {
            Some(stored) => stored,
            None => {
                // The starting point comes first: every change from here on is streamed afterwards.
                let planned = self
                    .retrying(control, || async {
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
                    .map_err(failed)?;
                match planned {
                    Some(planned) => planned,
                    None => return Ok(None),
                }
            }
        };
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
            match snapshot::read(run, &mut chunks).await {
                Ok(ended) => break ended,
                Err(err) if is_transient(&err) => back_off(&mut failures, &err, control).await,
                Err(err) => {
                    control.metrics.set_snapshot_running(false);
                    return Err(failed(err));
                }
            }
        };
        control.metrics.set_snapshot_running(false);
        if ended == SnapshotEnd::Stopped {
            tracing::info!(
                "stopped during the snapshot: the next run carries on from the last stored part"
            );
            return Ok(None);
        }
        // Streaming must start where the snapshot did. Until that point is known to be still in the
        // oplog, the stored position stays the finished snapshot's, so that a restart does not snapshot
        // again (with `when_needed`) only to outlast the oplog again.
        let probe = self
            .retrying(control, || self.history_lost_since(&start))
            .await;
        match probe.map_err(failed)? {
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
    async fn retrying<T, F, Fut>(
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
            Position::Mongodb { resume_token } => {
                let token = parse_token(resume_token)
                    .map_err(|err| DriverError::custom(err.to_string()))?;
                // Through a mongos the loss may show only at the first getMore: one is made.
                let read_once = async {
                    let mut stream = self
                        .client
                        .watch()
                        .pipeline([selection_filter(&self.settings.selection)])
                        .start_after(token)
                        .max_await_time(Duration::from_millis(100))
                        .await?;
                    stream.next_if_any().await
                };
                match read_once.await {
                    Ok(_) => Ok(None),
                    Err(err) if is_history_lost(&err) => Ok(Some(redact_secrets(&err.to_string()))),
                    Err(err) => Err(err),
                }
            }
            Position::MongodbOplog { seconds, increment } => {
                super::oplog_tail::oplog_lost_since(&self.client, (*seconds, *increment)).await
            }
            other => Err(DriverError::custom(format!(
                "a MongoDB snapshot cannot start from {other}"
            ))),
        }
    }

    /// The change stream's resume token as of now, taken by opening a stream and closing it again.
    async fn starting_point(&self) -> Result<Position, DriverError> {
        let stream = self
            .client
            .watch()
            .pipeline([selection_filter(&self.settings.selection)])
            .await?;
        let token = stream.resume_token().ok_or_else(|| {
            DriverError::custom(
                "the server gave the new change stream no resume token to start from after the \
                 snapshot (MongoDB 4.2 or later is needed, for `startAfter`)",
            )
        })?;
        Ok(Position::Mongodb {
            resume_token: token_text(&token)?,
        })
    }

    /// One change stream, from `token` on; `token` follows every event read.
    async fn stream_once(
        &self,
        token: &mut Option<ResumeToken>,
        control: &mut DocumentStreamControl,
        failures: &mut Backoff,
    ) -> Result<Ended, DriverError> {
        let options = ChangeStreamOptions::builder()
            .full_document(self.settings.full_document.option().map(full_document_type))
            .full_document_before_change(self.settings.before.option().map(before_change_type))
            .start_after(token.clone())
            .max_await_time(MAX_AWAIT)
            .build();
        let mut stream: ChangeStream<Document> = self
            .client
            .watch()
            .pipeline([selection_filter(&self.settings.selection)])
            .with_options(options)
            .await?
            .with_type::<Document>();
        // Opened: the next failure starts the backoff from its shortest wait again.
        failures.reset();
        control.metrics.set_streaming(true);
        let mut last_idle = tokio::time::Instant::now();
        // The token last handed on, from an event or an idle point: an idle token is passed on only
        // when it differs from it.
        let mut passed_on = token.clone();
        // The stream's starting point is stored at once: a first run that stops before any change must
        // resume from here, not from whenever it starts next.
        let mut pass_idle = token.is_none();
        let mut stop = control.stop.clone();
        loop {
            // A stop must not wait for a getMore or server selection during an outage.
            let Some(next) = unless_stopped(&mut stop, stream.next_if_any()).await else {
                return Ok(Ended::Stopped);
            };
            let Some(event) = next? else {
                if !stream.is_alive() {
                    return Err(DriverError::custom(
                        "the server closed the change stream's cursor without an invalidate",
                    ));
                }
                let idle_token = stream.resume_token();
                if idle_token.is_some() && idle_token != passed_on {
                    *token = idle_token.clone();
                    if pass_idle || last_idle.elapsed() >= IDLE_POSITION_INTERVAL {
                        let position = position_of(idle_token.as_ref())?;
                        if !send(control, SourceEvent::Idle { position }).await {
                            return Ok(Ended::Stopped);
                        }
                        last_idle = tokio::time::Instant::now();
                        pass_idle = false;
                        passed_on = idle_token;
                    }
                }
                continue;
            };
            *token = stream.resume_token();
            passed_on = token.clone();
            match change::convert(&event, self.replica_set.as_ref()) {
                Ok(converted) => {
                    let position = Position::Mongodb {
                        resume_token: converted.resume_token,
                    };
                    match converted.kind {
                        EventKind::Change(change) => {
                            if !self
                                .settings
                                .selection
                                .includes(&change.database, &change.collection)
                            {
                                continue;
                            }
                            let commit_time_us = change
                                .source
                                .wall_time_ms
                                .map(|ms| ms * 1000)
                                .unwrap_or(i64::from(change.source.cluster_time.0) * 1_000_000);
                            if !send(control, SourceEvent::Document(*change)).await
                                || !send(
                                    control,
                                    SourceEvent::Commit {
                                        position,
                                        commit_time_us: Some(commit_time_us),
                                    },
                                )
                                .await
                            {
                                return Ok(Ended::Stopped);
                            }
                        }
                        EventKind::Ddl {
                            operation,
                            namespace,
                            to,
                        } => {
                            report_ddl(
                                &self.settings.selection,
                                &operation,
                                &namespace,
                                to.as_deref(),
                            );
                            if !send(control, SourceEvent::Idle { position }).await {
                                return Ok(Ended::Stopped);
                            }
                        }
                        EventKind::Invalidate => {
                            if !send(control, SourceEvent::Idle { position }).await {
                                return Ok(Ended::Stopped);
                            }
                            return Ok(Ended::Invalidated);
                        }
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "change event without an event form: sent to the dead-letter topic");
                    let letter = err.undecodable(&event);
                    let position = position_of(token.as_ref())?;
                    if !send(control, SourceEvent::Undecodable(letter)).await
                        || !send(control, SourceEvent::Idle { position }).await
                    {
                        return Ok(Ended::Stopped);
                    }
                }
            }
        }
    }
}

/// A client for `url`, named `sluice` in the server's logs unless the URL names it.
pub async fn client(url: &str) -> Result<Client, MongodbError> {
    let mut options = ClientOptions::parse(url)
        .await
        .map_err(|err| MongodbError::Url(redact_secrets(&err.to_string())))?;
    options.app_name.get_or_insert_with(|| "sluice".to_owned());
    Client::with_options(options).map_err(|err| MongodbError::Url(redact_secrets(&err.to_string())))
}

/// The replica set's name, and whether the server is a mongos, from `hello`.
pub async fn topology(
    client: &Client,
    shown: &str,
) -> Result<(Option<Arc<str>>, bool), MongodbError> {
    let hello = client
        .database("admin")
        .run_command(doc! { "hello": 1 })
        .await
        .map_err(|err| MongodbError::Unreachable {
            url: shown.to_owned(),
            reason: redact_secrets(&err.to_string()),
        })?;
    let replica_set = hello.get_str("setName").ok().map(Arc::<str>::from);
    let mongos = hello.get_str("msg") == Ok("isdbgrid");
    Ok((replica_set, mongos))
}

pub(super) enum Ended {
    Stopped,
    /// The stream ended with an `invalidate`: a new one starts after it.
    Invalidated,
    /// The position to resume from is no longer in the oplog (the reason, as the server or the reader
    /// found it).
    HistoryLost(String),
}

/// Sends to the pipeline; false when it has gone away (it stopped or failed).
pub(super) async fn send(control: &DocumentStreamControl, event: SourceEvent) -> bool {
    control.events.send(event).await.is_ok()
}

/// Waits out the backoff after the `failures`-th transient failure in a row (or a stop request).
pub(super) async fn back_off(
    failures: &mut Backoff,
    err: &DriverError,
    control: &mut DocumentStreamControl,
) {
    let wait = failures.next_delay();
    control.metrics.reconnected();
    tracing::warn!(error = %redact_secrets(&err.to_string()), retry_in = ?wait, "MongoDB read interrupted: reconnecting from the last document read");
    tokio::select! {
        _ = tokio::time::sleep(wait) => {}
        _ = control.stop.changed() => {}
    }
}

fn is_history_lost(err: &DriverError) -> bool {
    matches!(err.kind.as_ref(), ErrorKind::Command(command) if command.code == CHANGE_STREAM_HISTORY_LOST)
}

/// Failures a reconnect can cure: the network, an election, a server restarting, a lost cursor. Every
/// reader starts again after what it handed on, so a retry repeats nothing.
pub(super) fn is_transient(err: &DriverError) -> bool {
    match err.kind.as_ref() {
        ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::ServerSelection { .. } => true,
        ErrorKind::Command(command) if RETRYABLE_CODES.contains(&command.code) => true,
        _ => {
            err.contains_label("ResumableChangeStreamError")
                || err.contains_label("RetryableWriteError")
                || err.contains_label("NetworkError")
        }
    }
}

/// Logs a collection-level change. A rename into the selection brings documents that no event
/// announces: they are published only by a new snapshot, which the warning says.
pub(super) fn report_ddl(
    selection: &CollectionSelection,
    operation: &str,
    namespace: &str,
    to: Option<&str>,
) {
    let arrived = to
        .filter(|to| selection.includes_namespace(to) && !selection.includes_namespace(namespace));
    match arrived {
        Some(to) => {
            tracing::warn!(%operation, from = %namespace, %to, "a collection was renamed into the selection: the documents it brought are not published until a new snapshot (move the position file away to take one)")
        }
        // A database-level change (dropDatabase) names no collection.
        None if !namespace.contains('.') || selection.includes_namespace(namespace) => {
            tracing::info!(%operation, %namespace, to = to.unwrap_or(""), "collection-level change: no document events to publish")
        }
        None => {}
    }
}

/// A `$match` stage keeping the selected collections' events, renames into the selection (so that they
/// can be reported), and the events that concern a whole database or the stream itself
/// (`dropDatabase`, `invalidate`), which name no collection.
pub fn selection_filter(selection: &CollectionSelection) -> Document {
    let selected = |field: &str| {
        let namespace = |pattern: &crate::config::CollectionPattern| {
            Bson::Document(doc! {
                format!("{field}.db"): { "$regex": anchored(&pattern.database) },
                format!("{field}.coll"): { "$regex": anchored(&pattern.collection) },
            })
        };
        let include: Vec<Bson> = selection.include.iter().map(namespace).collect();
        let exclude: Vec<Bson> = selection.exclude.iter().map(namespace).collect();
        let mut selected = doc! { "$or": include };
        if !exclude.is_empty() {
            selected = doc! { "$and": [selected, { "$nor": exclude }] };
        }
        selected
    };
    let selected_namespace = selected("ns");
    let mut renamed_into = selected("to");
    renamed_into.insert("operationType", "rename");
    doc! { "$match": { "$or": [
        selected_namespace,
        renamed_into,
        { "operationType": { "$in": ["dropDatabase", "invalidate"] } },
    ] } }
}

/// A wildcard pattern (`*` for any run) as an anchored regular expression.
fn anchored(pattern: &str) -> String {
    let mut regex = String::from("^");
    for (i, part) in pattern.split('*').enumerate() {
        if i > 0 {
            regex.push_str(".*");
        }
        for c in part.chars() {
            if "\\^$.|?*+()[]{}".contains(c) {
                regex.push('\\');
            }
            regex.push(c);
        }
    }
    regex.push('$');
    regex
}

fn full_document_type(option: &str) -> FullDocumentType {
    match option {
        "updateLookup" => FullDocumentType::UpdateLookup,
        "whenAvailable" => FullDocumentType::WhenAvailable,
        "required" => FullDocumentType::Required,
        other => FullDocumentType::Other(other.to_owned()),
    }
}

fn before_change_type(option: &str) -> FullDocumentBeforeChangeType {
    match option {
        "whenAvailable" => FullDocumentBeforeChangeType::WhenAvailable,
        "required" => FullDocumentBeforeChangeType::Required,
        _ => FullDocumentBeforeChangeType::Off,
    }
}

/// A resume token as the position file holds it: canonical Extended JSON.
pub fn token_text(token: &ResumeToken) -> Result<String, DriverError> {
    let value = bson::to_bson(token).map_err(DriverError::custom)?;
    Ok(change::canonical_json(&value))
}

fn position_of(token: Option<&ResumeToken>) -> Result<Position, DriverError> {
    let token =
        token.ok_or_else(|| DriverError::custom("the change stream gave no resume token"))?;
    Ok(Position::Mongodb {
        resume_token: token_text(token)?,
    })
}

/// The stored text back into a token the driver sends as it is.
pub fn parse_token(text: &str) -> Result<ResumeToken, MongodbError> {
    let value = match change::bson_from_canonical(text).map_err(MongodbError::BadToken)? {
        value @ Bson::Document(_) => value,
        other => {
            return Err(MongodbError::BadToken(format!(
                "expected a document, found {:?}",
                other.element_type()
            )))
        }
    };
    // The token type reads only from raw BSON: wrap it in a document and read that back.
    #[derive(serde::Deserialize)]
    struct Wrapped {
        token: ResumeToken,
    }
    let bytes = bson::to_vec(&doc! { "token": value })
        .map_err(|err| MongodbError::BadToken(err.to_string()))?;
    bson::from_slice::<Wrapped>(&bytes)
        .map(|w| w.token)
        .map_err(|err| MongodbError::BadToken(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CollectionPattern;

    #[test]
    fn a_stored_token_reads_back_into_the_same_token() {
        let text = r#"{"_data":"8264F0A1B2000000012B022C0100296E5A1004"}"#;
        let token = parse_token(text).unwrap();
        assert_eq!(token_text(&token).unwrap(), text);
        assert!(matches!(parse_token("{"), Err(MongodbError::BadToken(_))));
        assert!(matches!(parse_token("5"), Err(MongodbError::BadToken(_))));
    }

    #[test]
    fn wildcards_become_anchored_regexes_with_the_rest_escaped() {
        assert_eq!(anchored("shop"), "^shop$");
        assert_eq!(anchored("*"), "^.*$");
        assert_eq!(anchored("people.v2*"), "^people\\.v2.*$");
        assert_eq!(anchored("a(b)"), "^a\\(b\\)$");
    }

    #[test]
    fn the_filter_keeps_selected_collections_and_stream_level_events() {
        let selection = CollectionSelection {
            include: vec![CollectionPattern::parse("shop.*").unwrap()],
            exclude: vec![CollectionPattern::parse("shop.audit").unwrap()],
        };
        let stage = selection_filter(&selection);
        let text = stage.to_string();
        assert!(
            text.contains(r#""ns.db": { "$regex": "^shop$" }"#),
            "{text}"
        );
        assert!(text.contains(r#""$nor": [{ "ns.db": { "$regex": "^shop$" }, "ns.coll": { "$regex": "^audit$" } }]"#), "{text}");
        assert!(
            text.contains(r#""$in": ["dropDatabase", "invalidate"]"#),
            "{text}"
        );
        assert!(
            text.contains(r#""to.db": { "$regex": "^shop$" }, "to.coll": { "$regex": "^.*$" } }]"#)
                && text.contains(r#""operationType": "rename""#),
            "renames into the selection are kept: {text}"
        );
    }
}
