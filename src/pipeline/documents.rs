//! `sluice run` for a MongoDB source: the change-stream reader, the same publishing loop, and the resume
//! token stored once the broker has every event before it.

use tokio::sync::{mpsc, oneshot, watch};

use super::{
    acknowledge, finish_run, header_refs, send_tombstone, start, Fixed, FixedTopic, PipelineError,
    Publisher, Started, EVENT_BUFFER,
};
use crate::avro;
use crate::config::{Capture, Config, MongodbSourceConfig, SnapshotMode};
use crate::connectors::mongodb::reader::{
    DocumentStreamControl, MongodbError, MongodbSettings, MongodbSource, Start,
};
use crate::connectors::mongodb::snapshot::SnapshotShape;
use crate::contracts::{Contract, ContractError};
use crate::deadletter::{DeadLetter, Stage};
use crate::event::{DocumentChange, Position, UndecodableChange};
use crate::positions::{now_ms, PositionStore};

/// The position file's name: one MongoDB instance per topic prefix.
fn position_name(config: &Config) -> String {
    format!("{}.mongodb", config.sink.topic_prefix.get_ref().as_str())
}

pub(super) async fn run(
    config: &Config,
    source: &MongodbSourceConfig,
    stop: watch::Receiver<bool>,
) -> Result<(), PipelineError> {
    let store = PositionStore::open(
        std::path::Path::new(config.positions.dir.get_ref().as_str()),
        &position_name(config),
    )?;
    let mode = *source.snapshot.get_ref();
    let capture = *source.capture.get_ref();
    let stored = store.load()?.map(|stored| stored.position);
    let first = match stored.clone() {
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
            tracing::info!(file = %store.path().display(), "snapshot = initial_only and the snapshot is complete: nothing to do");
            return Ok(());
        }
        Some(position @ (Position::Mongodb { .. } | Position::MongodbOplog { .. })) => {
            check_capture(&position, capture, &store)?;
            tracing::info!(%position, file = %store.path().display(), "resuming after stored position");
            Start::After(position)
        }
        // Switched to `never` halfway through: what is not read yet stays unread.
        Some(Position::MongodbSnapshot { start, .. }) if mode == SnapshotMode::Never => {
            check_capture(&start, capture, &store)?;
            tracing::warn!(file = %store.path().display(), "a snapshot was interrupted, and snapshot = never: streaming from where it started, the rest unread");
            Start::After(*start)
        }
        Some(Position::MongodbSnapshot { start, chunks }) => {
            check_capture(&start, capture, &store)?;
            tracing::info!(file = %store.path().display(), done = chunks.iter().filter(|c| c.done).count(), parts = chunks.len(), "carrying on with the interrupted snapshot");
            Start::CarryOnSnapshot {
                start: *start,
                chunks,
            }
        }
        Some(other) => {
            return Err(PipelineError::ForeignPosition {
                file: store.path().to_owned(),
                position: other.to_string(),
            })
        }
    };
    let Started {
        mut publisher,
        mut failures,
        tracker,
        metrics,
        _broker_watch,
    } = start(config, &stop, "mongodb").await?;
    for contract in publisher.contracts.iter() {
        check_document_contract(contract, &publisher.topic_prefix)?;
        if collection_of_topic(&contract.topic, &publisher.topic_prefix).is_none() {
            tracing::warn!(file = %contract.path.display(), topic = %contract.topic, "the contract's topic is not <topic_prefix>.<db>.<collection>: it types no collection");
        }
    }
    let settings = MongodbSettings {
        url: source.url.get_ref().as_str().to_owned(),
        selection: source.selection(),
        full_document: source.full_document,
        before: source.before,
        capture,
        snapshot: mode,
        snapshot_shape: SnapshotShape {
            readers: usize::from(*source.snapshot_connections.get_ref()),
            chunk_documents: *source.snapshot_chunk_documents.get_ref(),
        },
    };
    let reader = MongodbSource::connect(settings).await?;

    let (events_tx, events_rx) = mpsc::channel(EVENT_BUFFER);
    let position_file = store.path().display().to_string();
    let reading = tokio::spawn(reader.stream(
        first,
        DocumentStreamControl {
            events: events_tx,
            stop: stop.clone(),
            metrics: metrics.clone(),
            position_file,
        },
    ));
    let (finish_tx, finish_rx) = oneshot::channel();
    let acknowledger = tokio::spawn(acknowledge(
        tracker.clone(),
        metrics.clone(),
        std::sync::Arc::new(store),
        |_| true,
        // Change streams keep nothing on the server for their readers: the file is the only record.
        |_| {},
        stored,
        finish_rx,
    ));

    finish_run(
        &mut publisher,
        &mut failures,
        events_rx,
        reading,
        acknowledger,
        finish_tx,
    )
    .await
}

/// A change stream cannot resume from an oplog timestamp, nor the oplog reader from a resume token.
fn check_capture(
    position: &Position,
    capture: Capture,
    store: &PositionStore,
) -> Result<(), PipelineError> {
    let fits = matches!(
        (position, capture),
        (Position::Mongodb { .. }, Capture::ChangeStreams)
            | (Position::MongodbOplog { .. }, Capture::Oplog)
    );
    if fits {
        Ok(())
    } else {
        Err(PipelineError::CaptureMismatch {
            file: store.path().to_owned(),
            position: position.to_string(),
            capture: match capture {
                Capture::ChangeStreams => "change_streams",
                Capture::Oplog => "oplog",
            },
        })
    }
}

/// A contract as the `after` record of the collection its topic names. Checked for every contract before
/// anything is read, so that one that cannot be stops sluice at once, not at its collection's first change.
pub(crate) fn check_document_contract(
    contract: &Contract,
    topic_prefix: &str,
) -> Result<(), ContractError> {
    let (database, collection) =
        collection_of_topic(&contract.topic, topic_prefix).unwrap_or(("db", "collection"));
    typed_schemas(contract, topic_prefix, database, collection).map(drop)
}

/// The `(database, collection)` a topic is named after, when it has the form `<topic_prefix>.<db>.<coll>`
/// (as named: the mapping to topic names is not undone).
pub(crate) fn collection_of_topic<'t>(
    topic: &'t str,
    topic_prefix: &str,
) -> Option<(&'t str, &'t str)> {
    topic
        .strip_prefix(topic_prefix)?
        .strip_prefix('.')?
        .split_once('.')
}

/// The schemas of a collection whose documents `contract` declares.
fn typed_schemas(
    contract: &Contract,
    topic_prefix: &str,
    database: &str,
    collection: &str,
) -> Result<(avro::TableSchemas, avro::TypedDocument), ContractError> {
    contract
        .document_schema()
        .and_then(|json| avro::typed_document_schemas(topic_prefix, database, collection, json))
        .map_err(|reason| ContractError::Invalid {
            path: contract.path.clone(),
            reason,
        })
}

impl From<MongodbError> for PipelineError {
    fn from(err: MongodbError) -> PipelineError {
        PipelineError::Mongodb(err)
    }
}

impl Publisher {
    /// A document change, to its collection's topic (created, and its schemas registered, the first time).
    pub(super) async fn publish_document(
        &mut self,
        change: DocumentChange,
    ) -> Result<(), PipelineError> {
        self.events += 1;
        let namespace = change.namespace();
        if !self.collections.contains_key(&namespace) {
            self.add_collection(&change, &namespace)?;
        }
        let mut key = Vec::with_capacity(change.key.len() + 8);
        avro::encode_document_key(&change, &mut key);
        let mut value = Vec::with_capacity(
            change.after.as_ref().map_or(0, String::len)
                + change.before.as_ref().map_or(0, String::len)
                + 256,
        );
        let typed = self.typed_documents.get(&namespace);
        let encoded = avro::encode_document_envelope(
            &change,
            &self.topic_prefix,
            now_ms(),
            typed,
            &mut value,
        );
        if let Err(mismatch) = encoded {
            let topic =
                avro::document_topic(&self.topic_prefix, &change.database, &change.collection);
            let file = self
                .contracts
                .get(&topic)
                .map(|c| c.path.display().to_string());
            let reason = format!(
                "the document does not fit the contract {}: {mismatch}",
                file.unwrap_or_default()
            );
            let letter =
                DeadLetter::for_document(&change, self.failure(Stage::Validate, &topic, &reason));
            let ordinal = self.tracker.register();
            return self.send_dead_letter(&letter, None, ordinal).await;
        }
        let mut headers = Vec::with_capacity(1);
        if let Some(token) = &change.source.resume_token {
            headers.push(("sluice.resume_token".to_owned(), token.clone().into_bytes()));
        }
        let bytes = key.len() + value.len();
        self.publish_fixed(Fixed::Collection(&namespace), &key, &value, &headers)
            .await?;
        self.metrics
            .event_published(&namespace, change.op.code(), bytes);
        if change.source.snapshot == crate::event::SnapshotMarker::False {
            // Before 6.0 events have no wall time: the cluster time's seconds stand in.
            let committed_us = change
                .source
                .wall_time_ms
                .map_or(i64::from(change.source.cluster_time.0) * 1_000_000, |ms| {
                    ms * 1000
                });
            self.metrics.published_commit(committed_us);
        }
        // A delete is followed by a tombstone so that compaction can drop the key.
        if change.op == crate::event::Op::Delete {
            self.publish_tombstone(&Fixed::Collection(&namespace), &key, &headers)
                .await?;
        }
        Ok(())
    }

    /// The topic of a collection seen for the first time, with `after` typed when it has a contract.
    fn add_collection(
        &mut self,
        change: &DocumentChange,
        namespace: &str,
    ) -> Result<(), PipelineError> {
        let (database, collection) = (&change.database, &change.collection);
        let topic = avro::document_topic(&self.topic_prefix, database, collection);
        let schemas = match self.contracts.get(&topic) {
            None => avro::document_schemas(&self.topic_prefix, database, collection),
            Some(contract) => {
                let (schemas, typed) =
                    typed_schemas(contract, &self.topic_prefix, database, collection)?;
                self.typed_documents.insert(namespace.to_owned(), typed);
                schemas
            }
        };
        self.collections
            .insert(namespace.to_owned(), FixedTopic::with_schemas(schemas));
        Ok(())
    }

    /// A tombstone (null value) with the key of the record just published to `which`'s topic.
    async fn publish_tombstone(
        &mut self,
        which: &Fixed<'_>,
        key: &[u8],
        headers: &[(String, Vec<u8>)],
    ) -> Result<(), PipelineError> {
        // No schemas means the record itself went to the dead-letter topic: nothing to tombstone.
        let Some((topic, (key_schema, _))) = self
            .fixed_topic(which)
            .and_then(|fixed| Some((fixed.topic.clone(), fixed.refs?)))
        else {
            return Ok(());
        };
        self.key_buf.clear();
        key_schema.write_header(&mut self.key_buf);
        self.key_buf.extend_from_slice(key);
        send_tombstone(
            &mut self.sink,
            &self.tracker,
            &topic,
            &self.key_buf,
            &header_refs(headers),
        )
        .await?;
        Ok(())
    }

    /// A change that has no event form, to the dead-letter topic as the source printed it.
    pub(super) async fn dead_letter_undecodable(
        &mut self,
        change: UndecodableChange,
    ) -> Result<(), PipelineError> {
        let topic = match change
            .namespace
            .as_deref()
            .and_then(|ns| ns.split_once('.'))
        {
            Some((db, coll)) => avro::document_topic(&self.topic_prefix, db, coll),
            None => self.dead_letter_topic.clone(),
        };
        let letter = DeadLetter::for_undecodable(
            &change,
            self.failure(Stage::Decode, &topic, &change.reason),
        );
        let ordinal = self.tracker.register();
        self.send_dead_letter(&letter, None, ordinal).await
    }
}
