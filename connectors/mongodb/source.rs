//! The MongoDB connector on the source seam: from the stored position (a resume token, an oplog
//! timestamp or an interrupted snapshot) to where the reader starts, then the snapshot and the stream.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use sluice_core::check::Report;
use sluice_core::config::SnapshotMode;
use sluice_core::event::Position;
use sluice_core::known::KnownTables;
use sluice_core::positions::{PositionPeek, PositionStore, StoredPosition};
use sluice_core::source::{Committer, Source, SourceContext};

use crate::config::{Capture, CollectionPattern, MongodbSourceConfig};
use crate::connection::{MongodbSettings, MongodbSource};
use crate::control::DocumentStreamControl;
use crate::error::MongodbError;
use crate::preflight;
use crate::reader::{Plan, Start};
use crate::signal_collection;
use crate::snapshot::SnapshotShape;

/// A MongoDB deployment read through one change stream (or the oplog).
pub struct MongodbConnector {
    settings: MongodbSettings,
    /// One MongoDB instance per topic prefix.
    position_key: String,
}

impl MongodbConnector {
    pub fn new(config: &MongodbSourceConfig, topic_prefix: &str) -> MongodbConnector {
        let signal_collection = config.signal_collection();
        let mut selection = config.selection();
        // Its documents are instructions: never snapshotted, published or re-read, whatever the
        // selection's wildcards say.
        if let Some(pattern) = signal_collection
            .as_deref()
            .and_then(|name| CollectionPattern::parse(name).ok())
        {
            selection.exclude.push(pattern);
        }
        MongodbConnector {
            settings: MongodbSettings {
                url: config.url.get_ref().as_str().to_owned(),
                selection,
                full_document: config.full_document,
                before: config.before,
                capture: *config.capture.get_ref(),
                snapshot: *config.snapshot.get_ref(),
                snapshot_shape: SnapshotShape {
                    readers: usize::from(*config.snapshot_connections.get_ref()),
                    chunk_documents: *config.snapshot_chunk_documents.get_ref(),
                },
                signal_collection,
                incremental_chunk_rows: *config.incremental_chunk_rows.get_ref() as usize,
                // The watermarks go to the signal collection: without one there is no incremental
                // snapshot to read a new collection with.
                snapshot_new_tables: config.snapshot_new_tables
                    && config.signal_collection.is_some(),
            },
            position_key: format!("{topic_prefix}.mongodb"),
        }
    }
}

impl Source for MongodbConnector {
    type Error = MongodbError;
    type Plan = Plan;
    const CONNECTOR: &'static str = "mongodb";

    fn position_key(&self) -> String {
        self.position_key.clone()
    }

    fn plan(
        &self,
        stored: Option<StoredPosition>,
        store: &PositionStore,
    ) -> Result<Option<Plan>, MongodbError> {
        plan(
            stored.map(|stored| stored.position),
            self.settings.snapshot,
            self.settings.capture,
            store.path(),
        )
    }

    fn start(
        &self,
        start: Plan,
        context: SourceContext,
    ) -> (
        Arc<dyn Committer>,
        impl Future<Output = Result<(), MongodbError>> + Send + 'static,
    ) {
        let settings = self.settings.clone();
        let known = KnownTables::open(&context.store).map(Arc::new);
        // Change streams keep nothing on the server for their readers: the store is the only record.
        let committer = Arc::new(MongodbCommitter {
            known: known.as_ref().ok().cloned(),
        });
        let run = async move {
            let known = known?;
            let mut control = DocumentStreamControl {
                events: context.events,
                stop: context.stop,
                metrics: context.metrics,
                position_file: context.store.path().display().to_string(),
            };
            let source = MongodbSource::connect(settings).await?;
            let Some(plan) = source
                .with_new_collections(start, &known, &mut control)
                .await?
            else {
                return Ok(());
            };
            source.stream(plan, control).await
        };
        (committer, run)
    }

    /// A change stream (or the oplog) starts wherever the stored position says, or from now: no check
    /// depends on the position.
    async fn check(&self, _position: &PositionPeek, report: &mut Report) {
        preflight::check(&self.settings, report).await
    }

    async fn signal(&self, signal: &sluice_core::signal::Signal) -> Result<String, MongodbError> {
        let Some(collection) = &self.settings.signal_collection else {
            return Err(MongodbError::Signal(
                "`[source] signal_collection` is not set, so sluice reads no signals: set it (for example \
                 `signal_collection = \"shop.sluice_signals\"`) and restart sluice"
                    .into(),
            ));
        };
        signal_collection::write(&self.settings.url, collection, signal).await
    }
}

/// Positions stay in the store only; each stored incremental snapshot's collections become known
/// (`snapshot_new_tables`).
struct MongodbCommitter {
    known: Option<Arc<KnownTables>>,
}

impl Committer for MongodbCommitter {
    fn commit(&self, position: &Position) {
        if let (Some(known), Some(progress)) = (&self.known, position.incremental()) {
            if let Err(err) = known.stored(progress) {
                // Costs a repeated snapshot of the collection after a restart, not an event.
                tracing::warn!(error = %err, "cannot record the collections the incremental snapshot reads");
            }
        }
    }
}

/// Where a run starts, from the stored position, and the incremental snapshot it carries on; None when
/// there is nothing to do. No I/O.
pub fn plan(
    stored: Option<Position>,
    mode: SnapshotMode,
    capture: Capture,
    file: &Path,
) -> Result<Option<Plan>, MongodbError> {
    let (stream, incremental) = match stored {
        Some(position) => {
            let (stream, progress) = position.into_parts();
            (Some(stream), progress)
        }
        None => (None, None),
    };
    let start = start(stream, mode, capture, file)?;
    Ok(start.map(|start| Plan { start, incremental }))
}

/// Where the stream starts, from the stored position without its incremental snapshot.
fn start(
    stored: Option<Position>,
    mode: SnapshotMode,
    capture: Capture,
    file: &Path,
) -> Result<Option<Start>, MongodbError> {
    let start = match stored {
        None if mode == SnapshotMode::Never => {
            tracing::info!("no stored position: publishing changes from now on");
            Start::Now
        }
        None => {
            tracing::info!(
                "no stored position: taking a snapshot of the selected collections first"
            );
            Start::Snapshot
        }
        Some(Position::Mongodb { .. } | Position::MongodbOplog { .. })
            if mode == SnapshotMode::InitialOnly =>
        {
            tracing::info!(file = %file.display(), "snapshot = initial_only and the snapshot is complete: nothing to do");
            return Ok(None);
        }
        Some(position @ (Position::Mongodb { .. } | Position::MongodbOplog { .. })) => {
            check_capture(&position, capture, file)?;
            tracing::info!(%position, file = %file.display(), "resuming after stored position");
            Start::After(position)
        }
        // Switched to `never` halfway through: what is not read yet stays unread.
        Some(Position::MongodbSnapshot { start, .. }) if mode == SnapshotMode::Never => {
            check_capture(&start, capture, file)?;
            tracing::warn!(file = %file.display(), "a snapshot was interrupted, and snapshot = never: streaming from where it started, the rest unread");
            Start::After(*start)
        }
        Some(Position::MongodbSnapshot { start, chunks }) => {
            check_capture(&start, capture, file)?;
            tracing::info!(file = %file.display(), done = chunks.iter().filter(|c| c.done).count(), parts = chunks.len(), "carrying on with the interrupted snapshot");
            Start::CarryOnSnapshot {
                start: *start,
                chunks,
            }
        }
        Some(other) => {
            return Err(MongodbError::ForeignPosition {
                file: file.display().to_string(),
                position: other.to_string(),
            })
        }
    };
    Ok(Some(start))
}

/// A change stream cannot resume from an oplog timestamp, nor the oplog reader from a resume token.
fn check_capture(position: &Position, capture: Capture, file: &Path) -> Result<(), MongodbError> {
    let fits = matches!(
        (position, capture),
        (Position::Mongodb { .. }, Capture::ChangeStreams)
            | (Position::MongodbOplog { .. }, Capture::Oplog)
    );
    if fits {
        return Ok(());
    }
    Err(MongodbError::CaptureMismatch {
        file: file.display().to_string(),
        position: position.to_string(),
        capture: match capture {
            Capture::ChangeStreams => "change_streams",
            Capture::Oplog => "oplog",
        },
    })
}

#[cfg(test)]
mod tests {
    use sluice_core::event::{Lsn, SnapshotChunk};
    use sluice_core::incremental::Progress;

    use super::*;

    const FILE: &str = "/positions/app.mongodb.position.json";

    fn token() -> Position {
        Position::Mongodb {
            resume_token: r#"{"_data":"82"}"#.into(),
        }
    }

    fn oplog() -> Position {
        Position::MongodbOplog {
            seconds: 7,
            increment: 1,
        }
    }

    fn interrupted(start: Position) -> Position {
        Position::MongodbSnapshot {
            start: Box::new(start),
            chunks: vec![SnapshotChunk {
                namespace: "shop.orders".into(),
                from: None,
                to: None,
                last: Some(r#"{"$oid":"65f0c0ffee0000000000cafe"}"#.into()),
                done: false,
            }],
        }
    }

    fn decide(
        stored: Option<Position>,
        mode: SnapshotMode,
        capture: Capture,
    ) -> Result<Option<Start>, MongodbError> {
        plan(stored, mode, capture, Path::new(FILE)).map(|plan| plan.map(|plan| plan.start))
    }

    #[test]
    fn nothing_stored_takes_a_snapshot_unless_never() {
        let first = decide(None, SnapshotMode::Initial, Capture::ChangeStreams).unwrap();
        assert!(matches!(first, Some(Start::Snapshot)), "{first:?}");
        let never = decide(None, SnapshotMode::Never, Capture::ChangeStreams).unwrap();
        assert!(matches!(never, Some(Start::Now)), "{never:?}");
    }

    #[test]
    fn a_stored_position_is_resumed_by_the_capture_that_wrote_it() {
        let streams = decide(Some(token()), SnapshotMode::Initial, Capture::ChangeStreams);
        assert!(matches!(streams.unwrap(), Some(Start::After(p)) if p == token()));
        let tail = decide(Some(oplog()), SnapshotMode::Initial, Capture::Oplog);
        assert!(matches!(tail.unwrap(), Some(Start::After(p)) if p == oplog()));
    }

    #[test]
    fn a_position_of_the_other_capture_is_refused() {
        for (stored, capture) in [
            (token(), Capture::Oplog),
            (oplog(), Capture::ChangeStreams),
            (interrupted(token()), Capture::Oplog),
        ] {
            let err = decide(Some(stored), SnapshotMode::Initial, capture).unwrap_err();
            assert!(matches!(err, MongodbError::CaptureMismatch { .. }), "{err}");
            assert!(err.to_string().contains(FILE), "{err}");
        }
    }

    #[test]
    fn a_finished_initial_only_snapshot_leaves_nothing_to_do() {
        let done = decide(
            Some(token()),
            SnapshotMode::InitialOnly,
            Capture::ChangeStreams,
        );
        assert!(done.unwrap().is_none());
    }

    #[test]
    fn an_interrupted_snapshot_is_carried_on_or_abandoned_under_never() {
        let carried = decide(
            Some(interrupted(token())),
            SnapshotMode::Initial,
            Capture::ChangeStreams,
        );
        assert!(matches!(
            carried.unwrap(),
            Some(Start::CarryOnSnapshot { start, chunks }) if start == token() && chunks.len() == 1
        ));
        let never = decide(
            Some(interrupted(token())),
            SnapshotMode::Never,
            Capture::ChangeStreams,
        );
        assert!(matches!(never.unwrap(), Some(Start::After(p)) if p == token()));
    }

    #[test]
    fn a_postgresql_position_is_refused() {
        let err = decide(
            Some(Position::Postgres { lsn: Lsn(1) }),
            SnapshotMode::Initial,
            Capture::ChangeStreams,
        )
        .unwrap_err();
        assert!(matches!(err, MongodbError::ForeignPosition { .. }), "{err}");
    }

    fn progress() -> Progress {
        let mut progress = Progress::default();
        progress.request(&["shop.orders".into()], &[]);
        progress.tables[0].last_key = Some(vec!["{\"$numberInt\":\"7\"}".into()]);
        progress
    }

    #[test]
    fn an_incremental_snapshot_in_the_position_is_carried_on_from_the_stream_inside_it() {
        for (stream, capture) in [
            (token(), Capture::ChangeStreams),
            (oplog(), Capture::Oplog),
            (interrupted(token()), Capture::ChangeStreams),
        ] {
            let stored = Position::with_incremental(stream.clone(), Some(&progress()));
            assert!(matches!(stored, Position::Incremental { .. }));
            let plan = plan(
                Some(stored),
                SnapshotMode::Initial,
                capture,
                Path::new(FILE),
            )
            .unwrap()
            .expect("a plan");
            assert_eq!(plan.incremental, Some(progress()));
            match (plan.start, stream) {
                (
                    Start::After(p),
                    expected @ (Position::Mongodb { .. } | Position::MongodbOplog { .. }),
                ) => {
                    assert_eq!(p, expected)
                }
                (Start::CarryOnSnapshot { start, .. }, Position::MongodbSnapshot { .. }) => {
                    assert_eq!(start, token())
                }
                (start, stream) => panic!("{stream} planned as {start:?}"),
            }
        }
        // The wrapper does not hide a position of the other capture.
        let stored = Position::with_incremental(token(), Some(&progress()));
        let err = decide(Some(stored), SnapshotMode::Initial, Capture::Oplog).unwrap_err();
        assert!(matches!(err, MongodbError::CaptureMismatch { .. }), "{err}");
        // Nothing stored: nothing to carry on.
        let first = plan(
            None,
            SnapshotMode::Initial,
            Capture::ChangeStreams,
            Path::new(FILE),
        );
        assert_eq!(first.unwrap().unwrap().incremental, None);
    }
}
