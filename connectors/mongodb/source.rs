//! The MongoDB connector on the source seam: from the stored position (a resume token, an oplog
//! timestamp or an interrupted snapshot) to where the reader starts, then the snapshot and the stream.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use sluice_core::check::Report;
use sluice_core::config::SnapshotMode;
use sluice_core::event::Position;
use sluice_core::positions::{PositionPeek, PositionStore, StoredPosition};
use sluice_core::source::{Committer, Source, SourceContext, StoreOnly};

use crate::config::{Capture, MongodbSourceConfig};
use crate::connection::{MongodbSettings, MongodbSource};
use crate::control::DocumentStreamControl;
use crate::error::MongodbError;
use crate::preflight;
use crate::reader::Start;
use crate::snapshot::SnapshotShape;

/// A MongoDB deployment read through one change stream (or the oplog).
pub struct MongodbConnector {
    settings: MongodbSettings,
    /// One MongoDB instance per topic prefix.
    position_key: String,
}

impl MongodbConnector {
    pub fn new(config: &MongodbSourceConfig, topic_prefix: &str) -> MongodbConnector {
        MongodbConnector {
            settings: MongodbSettings {
                url: config.url.get_ref().as_str().to_owned(),
                selection: config.selection(),
                full_document: config.full_document,
                before: config.before,
                capture: *config.capture.get_ref(),
                snapshot: *config.snapshot.get_ref(),
                snapshot_shape: SnapshotShape {
                    readers: usize::from(*config.snapshot_connections.get_ref()),
                    chunk_documents: *config.snapshot_chunk_documents.get_ref(),
                },
            },
            position_key: format!("{topic_prefix}.mongodb"),
        }
    }
}

impl Source for MongodbConnector {
    type Error = MongodbError;
    type Plan = Start;
    const CONNECTOR: &'static str = "mongodb";

    fn position_key(&self) -> String {
        self.position_key.clone()
    }

    fn plan(
        &self,
        stored: Option<StoredPosition>,
        store: &PositionStore,
    ) -> Result<Option<Start>, MongodbError> {
        plan(
            stored.map(|stored| stored.position),
            self.settings.snapshot,
            self.settings.capture,
            store.path(),
        )
    }

    fn start(
        &self,
        start: Start,
        context: SourceContext,
    ) -> (
        Arc<dyn Committer>,
        impl Future<Output = Result<(), MongodbError>> + Send + 'static,
    ) {
        let settings = self.settings.clone();
        let run = async move {
            let control = DocumentStreamControl {
                events: context.events,
                stop: context.stop,
                metrics: context.metrics,
                position_file: context.store.path().display().to_string(),
            };
            MongodbSource::connect(settings)
                .await?
                .stream(start, control)
                .await
        };
        // Change streams keep nothing on the server for their readers: the store is the only record.
        (Arc::new(StoreOnly), run)
    }

    /// A change stream (or the oplog) starts wherever the stored position says, or from now: no check
    /// depends on the position.
    async fn check(&self, _position: &PositionPeek, report: &mut Report) {
        preflight::check(&self.settings, report).await
    }

    async fn signal(&self, _signal: &sluice_core::signal::Signal) -> Result<String, MongodbError> {
        Err(MongodbError::Signal(
            "the MongoDB connector reads no signal collection yet".into(),
        ))
    }
}

/// Where a run starts, from the stored position; None when there is nothing to do. No I/O.
pub fn plan(
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
        plan(stored, mode, capture, Path::new(FILE))
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
}
