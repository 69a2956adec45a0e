//! The PostgreSQL connector on the source seam: from the stored position to a plan, then the slot, the
//! snapshot the plan calls for and the stream, with acknowledged positions going back to the server.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_core::check::Report;
use sluice_core::config::{redact_secrets, SnapshotMode};
use sluice_core::event::{Lsn, Position};
use sluice_core::known::KnownTables;
use sluice_core::positions::{PositionError, PositionPeek, PositionStore, StoredPosition};
use sluice_core::source::{Committer, Source, SourceContext};
use tokio::sync::watch;

use crate::config::PostgresConfig;
use crate::connection::PgConnection;
use crate::error::SourceError;
use crate::preflight_checks;
use crate::reader::{self, PostgresSource, StreamControl};
use crate::replication::SlotLifetime;
use crate::settings::{PostgresSettings, Resume};
use crate::snapshot::Snapshot;

/// The PostgreSQL source: one slot, one publication, the selected tables.
pub struct PostgresConnector {
    settings: PostgresSettings,
    drop_slot_on_stop: bool,
    /// Set once this run streams: a run that ended in or right after its snapshot (stopped during it, or
    /// `initial_only`) leaves the slot and the position file as they are, for the next run.
    streamed: Arc<AtomicBool>,
    /// `source.url` with its secrets hidden, as `check` names the server.
    shown_url: String,
}

impl PostgresConnector {
    pub fn new(config: &PostgresConfig) -> Result<PostgresConnector, SourceError> {
        Ok(PostgresConnector {
            settings: settings(config)?,
            drop_slot_on_stop: config.drop_slot_on_stop,
            streamed: Arc::default(),
            shown_url: redact_secrets(config.url.get_ref().as_str()),
        })
    }

    pub fn settings(&self) -> &PostgresSettings {
        &self.settings
    }
}

/// The reader's settings from `[source]`.
pub fn settings(config: &PostgresConfig) -> Result<PostgresSettings, SourceError> {
    let url = config.url.get_ref().as_str();
    let connection = PgConnection::parse(url).map_err(SourceError::Url)?;
    let database = connection.database();
    Ok(PostgresSettings {
        connection,
        database,
        slot: config.slot.get_ref().as_str().to_owned(),
        slot_lifetime: if *config.temporary_slot.get_ref() {
            SlotLifetime::Temporary
        } else {
            SlotLifetime::Permanent
        },
        publication: config.publication.get_ref().as_str().to_owned(),
        selection: config.selection(),
        status_interval: Duration::from_secs(*config.status_interval_secs.get_ref()),
        snapshot: config.snapshot,
        capture_messages: config.capture_messages,
        snapshot_connections: usize::from(*config.snapshot_connections.get_ref()),
        snapshot_chunk_rows: *config.snapshot_chunk_rows.get_ref(),
        decimal_handling: config.decimal_handling,
        heartbeat_interval: match config.heartbeat_interval_secs {
            0 => None,
            secs => Some(Duration::from_secs(secs)),
        },
        signal_table: config
            .signal_table
            .as_ref()
            .map(|table| table.get_ref().as_str().to_owned()),
        incremental_chunk_rows: *config.incremental_chunk_rows.get_ref() as usize,
        // Reading a joined table's rows needs watermarks, which need the signal table's messages on.
        snapshot_new_tables: config.snapshot_new_tables && config.signal_table.is_some(),
        reselect_unchanged_toast: config.reselect_unchanged_toast,
    })
}

/// How a run starts: from the stored position, if there is one to resume.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Nothing stored (or a temporary slot, whose position died with it): a new slot.
    Fresh,
    Resume(StoredPosition),
}

/// The decision [`Source::plan`] makes, without I/O.
pub fn plan(
    stored: Option<StoredPosition>,
    mode: SnapshotMode,
    lifetime: SlotLifetime,
    file: &std::path::Path,
) -> Result<Option<Plan>, SourceError> {
    if lifetime == SlotLifetime::Temporary {
        // The slot a stored position points into died with the run that wrote it.
        if stored.is_some() {
            tracing::info!(file = %file.display(), "temporary_slot: the position file of an earlier run is not resumed; this run starts afresh");
        }
        return Ok(Some(Plan::Fresh));
    }
    let Some(stored) = stored else {
        return Ok(Some(Plan::Fresh));
    };
    if stored.position.postgres_lsn().is_none() {
        return Err(SourceError::ForeignPosition {
            file: file.display().to_string(),
            position: stored.position.to_string(),
        });
    }
    if mode == SnapshotMode::InitialOnly && !stored.snapshot_pending() {
        tracing::info!(file = %file.display(), "snapshot = initial_only and the snapshot is complete: nothing to do");
        return Ok(None);
    }
    Ok(Some(Plan::Resume(stored)))
}

impl Source for PostgresConnector {
    type Error = SourceError;
    type Plan = Plan;
    const CONNECTOR: &'static str = "postgresql";

    fn position_key(&self) -> String {
        self.settings.slot.clone()
    }

    fn plan(
        &self,
        stored: Option<StoredPosition>,
        store: &PositionStore,
    ) -> Result<Option<Plan>, SourceError> {
        plan(
            stored,
            self.settings.snapshot,
            self.settings.slot_lifetime,
            store.path(),
        )
    }

    fn start(
        &self,
        plan: Plan,
        context: SourceContext,
    ) -> (
        Arc<dyn Committer>,
        impl Future<Output = Result<(), SourceError>> + Send + 'static,
    ) {
        let (lsn_tx, lsn_rx) = watch::channel(Lsn(0));
        let (position_tx, position_rx) = watch::channel(None);
        let known = KnownTables::open(&context.store).map(Arc::new);
        let committer = Arc::new(PgCommitter {
            lsn: lsn_tx,
            position: position_tx,
            initial_only: self.settings.snapshot == SnapshotMode::InitialOnly,
            known: known.as_ref().ok().cloned(),
        });
        let run = run(
            self.settings.clone(),
            plan,
            known,
            context,
            Acknowledged {
                lsn: lsn_rx,
                position: position_rx,
            },
            self.streamed.clone(),
        );
        (committer, run)
    }

    async fn check(&self, position: &PositionPeek, report: &mut Report) {
        preflight_checks::check(&self.settings, &self.shown_url, position, report).await
    }

    async fn signal(&self, signal: &sluice_core::signal::Signal) -> Result<String, SourceError> {
        let Some(table) = &self.settings.signal_table else {
            return Err(SourceError::NoSignalTable);
        };
        crate::signal_table::write(&self.settings.connection, table, signal).await
    }

    async fn stopped(&self, store: &PositionStore) -> Result<(), SourceError> {
        if !self.streamed.load(Ordering::Relaxed) {
            return Ok(());
        }
        if self.settings.slot_lifetime == SlotLifetime::Temporary {
            // The slot went with the replication connection: the stored position means nothing any more.
            PositionStore::remove(store.path())?;
            tracing::info!(file = %store.path().display(), "temporary slot gone with its connection; position file removed");
        } else if self.drop_slot_on_stop {
            // Without its slot the stored position means nothing: the next run starts afresh.
            reader::drop_slot(&self.settings).await?;
            PositionStore::remove(store.path())?;
            tracing::info!(file = %store.path().display(), "drop_slot_on_stop: slot dropped and position file removed");
        }
        Ok(())
    }
}

/// Takes acknowledged positions to the stream, which reports them to the server, and to the snapshot,
/// which waits for its last one.
struct PgCommitter {
    lsn: watch::Sender<Lsn>,
    position: watch::Sender<Option<Position>>,
    initial_only: bool,
    /// Told of each stored incremental snapshot, whose tables are then known.
    known: Option<Arc<KnownTables>>,
}

impl Committer for PgCommitter {
    /// `initial_only` drops the slot before the store says the snapshot is complete: a crash in between
    /// takes the snapshot again rather than leaving a slot that holds WAL with nobody to read it.
    fn stores(&self, position: &Position) -> bool {
        // Under initial_only every position past the snapshot's parts is its final one.
        !self.initial_only || position.snapshot_in_progress()
    }

    fn commit(&self, position: &Position) {
        if let (Some(known), Some(progress)) = (&self.known, position.incremental()) {
            if let Err(err) = known.stored(progress) {
                // Costs a repeated snapshot of the table after a restart, not an event.
                tracing::warn!(error = %err, "cannot record the tables the incremental snapshot reads");
            }
        }
        if let Some(lsn) = position.postgres_lsn() {
            let _ = self.lsn.send(lsn);
        }
        let _ = self.position.send(Some(position.clone()));
    }
}

/// What the committer passes on, as the stream and the snapshot read it.
struct Acknowledged {
    lsn: watch::Receiver<Lsn>,
    position: watch::Receiver<Option<Position>>,
}

/// Prepares the slot, reads the snapshot the plan calls for, then streams until told to stop.
async fn run(
    settings: PostgresSettings,
    plan: Plan,
    known: Result<Arc<KnownTables>, PositionError>,
    context: SourceContext,
    mut acknowledged: Acknowledged,
    streamed: Arc<AtomicBool>,
) -> Result<(), SourceError> {
    let known = known?;
    let stored = match plan {
        Plan::Fresh => None,
        Plan::Resume(stored) => Some(stored),
    };
    let store = context.store.clone();
    let previous_run = stored.as_ref().map(|s| Resume {
        position: &s.position,
        identity: s.identity.as_ref(),
        file: store.path(),
    });
    let mut source = PostgresSource::prepare(settings.clone(), previous_run).await?;
    store.set_identity(source.identity().clone());
    let journal = store.journal("snapshot");
    let from = match source.take_snapshot() {
        Some(snapshot) => {
            let Some(read) = read_snapshot(snapshot, &context, &mut acknowledged.position).await?
            else {
                return Ok(());
            };
            if settings.snapshot == SnapshotMode::InitialOnly {
                match settings.slot_lifetime {
                    SlotLifetime::Permanent => reader::drop_slot(&settings).await?,
                    SlotLifetime::Temporary => source.end_temporary_slot().await?,
                }
                store.save(read)?;
                journal.remove()?;
                tracing::info!("snapshot = initial_only: done, not streaming");
                return Ok(());
            }
            read
        }
        None => match stored {
            Some(stored) => {
                tracing::info!(position = %stored.position, file = %store.path().display(), "resuming after stored position");
                stored.position
            }
            None => {
                tracing::info!("no stored position: starting from the slot's position");
                Position::Postgres { lsn: Lsn(0) }
            }
        },
    };
    // The store says the snapshot is complete: what began of it no longer matters.
    journal.remove()?;
    let from = with_new_tables(from, &source, &known, settings.snapshot_new_tables)?;
    streamed.store(true, Ordering::Relaxed);
    source
        .stream(
            from,
            StreamControl {
                events: context.events,
                acknowledged: acknowledged.lsn,
                stop: context.stop,
                stop_grace: context.stop_grace,
                metrics: context.metrics,
            },
        )
        .await
}

/// `from` with an incremental snapshot of the selected tables no run has read yet (they joined the
/// selection since), when `snapshot_new_tables` says so.
fn with_new_tables(
    from: Position,
    source: &PostgresSource,
    known: &KnownTables,
    snapshot_new: bool,
) -> Result<Position, SourceError> {
    let selected: Vec<String> = source.tables().map(ToString::to_string).collect();
    let (stream, progress) = from.into_parts();
    let new = known.start(&selected, progress.as_ref(), snapshot_new)?;
    if new.is_empty() {
        return Ok(Position::with_incremental(stream, progress.as_ref()));
    }
    tracing::info!(tables = ?new, "tables joined the selection: snapshotting them incrementally");
    let mut progress = progress.unwrap_or_default();
    progress.request(&new, &[]);
    Ok(Position::with_incremental(stream, Some(&progress)))
}

/// Hands the snapshot's rows on and waits until the broker has every one; returns the position to stream
/// from. The store records each part of the snapshot once its rows are on the broker. None when a stop
/// request interrupted it: the next run carries it on.
async fn read_snapshot(
    snapshot: Snapshot,
    context: &SourceContext,
    acknowledged: &mut watch::Receiver<Option<Position>>,
) -> Result<Option<Position>, SourceError> {
    context.store.save(snapshot.position())?;
    context.metrics.set_snapshot_running(true);
    let outcome = snapshot
        .read(
            context.events.clone(),
            context.stop.clone(),
            context.metrics.clone(),
            context.store.journal("snapshot"),
        )
        .await;
    let outcome = match outcome {
        Ok(outcome) if outcome.complete => outcome,
        other => {
            context.metrics.set_snapshot_running(false);
            if let Ok(outcome) = other {
                tracing::info!(
                    rows = outcome.rows,
                    "stopped during the snapshot: the next run carries it on"
                );
            }
            return other.map(|_| None);
        }
    };
    // The final position is the last thing the snapshot sends: acknowledged, it says every row is on the
    // broker. The pipeline may stop before that (at the shutdown bound), and then the next run carries on.
    let done = acknowledged
        .wait_for(|position| position.as_ref().is_some_and(|p| !p.snapshot_in_progress()))
        .await
        .ok()
        .and_then(|position| position.clone());
    context.metrics.set_snapshot_running(false);
    match done {
        Some(position) => {
            tracing::info!(rows = outcome.rows, position = %position, "snapshot complete: every row is on the broker");
            Ok(Some(position))
        }
        None => {
            tracing::info!(
                rows = outcome.rows,
                "stopped during the snapshot: the next run carries it on"
            );
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use sluice_core::event::PgSnapshotPosition;

    use super::*;

    fn stored(position: Position) -> Option<StoredPosition> {
        let text = serde_json::json!({
            "source": "slot",
            "position": position,
            "updated_at_ms": 0,
        });
        Some(serde_json::from_value(text).unwrap())
    }

    fn at(lsn: u64) -> Position {
        Position::Postgres { lsn: Lsn(lsn) }
    }

    fn pending() -> Position {
        Position::PostgresSnapshot(PgSnapshotPosition::starting_at(Lsn(5)))
    }

    const FILE: &str = "/positions/slot.position.json";

    fn decide(
        stored: Option<StoredPosition>,
        mode: SnapshotMode,
        lifetime: SlotLifetime,
    ) -> Result<Option<Plan>, SourceError> {
        plan(stored, mode, lifetime, Path::new(FILE))
    }

    #[test]
    fn nothing_stored_starts_afresh_in_every_mode() {
        for mode in [
            SnapshotMode::Initial,
            SnapshotMode::Never,
            SnapshotMode::InitialOnly,
            SnapshotMode::WhenNeeded,
        ] {
            let plan = decide(None, mode, SlotLifetime::Permanent).unwrap();
            assert_eq!(plan, Some(Plan::Fresh), "{mode:?}");
        }
    }

    #[test]
    fn a_stored_position_is_resumed() {
        let plan = decide(
            stored(at(42)),
            SnapshotMode::Initial,
            SlotLifetime::Permanent,
        );
        assert_eq!(plan.unwrap(), Some(Plan::Resume(stored(at(42)).unwrap())));
        let plan = decide(
            stored(pending()),
            SnapshotMode::Never,
            SlotLifetime::Permanent,
        );
        assert_eq!(
            plan.unwrap(),
            Some(Plan::Resume(stored(pending()).unwrap()))
        );
    }

    #[test]
    fn a_temporary_slot_never_resumes() {
        let plan = decide(
            stored(at(42)),
            SnapshotMode::Initial,
            SlotLifetime::Temporary,
        );
        assert_eq!(plan.unwrap(), Some(Plan::Fresh));
    }

    #[test]
    fn a_finished_initial_only_snapshot_leaves_nothing_to_do() {
        let done = decide(
            stored(at(42)),
            SnapshotMode::InitialOnly,
            SlotLifetime::Permanent,
        );
        assert_eq!(done.unwrap(), None);
        // An interrupted one is carried on.
        let carried = decide(
            stored(pending()),
            SnapshotMode::InitialOnly,
            SlotLifetime::Permanent,
        );
        assert_eq!(
            carried.unwrap(),
            Some(Plan::Resume(stored(pending()).unwrap()))
        );
    }

    #[test]
    fn another_sources_position_is_refused_with_the_file_named() {
        let token = Position::Mongodb {
            resume_token: "{}".into(),
        };
        let err = decide(
            stored(token),
            SnapshotMode::Initial,
            SlotLifetime::Permanent,
        )
        .unwrap_err();
        assert!(matches!(err, SourceError::ForeignPosition { .. }), "{err}");
        assert!(err.to_string().contains(FILE), "{err}");
    }
}
