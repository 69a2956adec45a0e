//! The snapshot: the documents already in the selected collections, published as `op = "r"` events before
//! streaming starts.
//!
//! MongoDB has no snapshot to share between readers, so consistency comes from the stream: its starting
//! point (a change stream's resume token, or the newest oplog entry) is taken before the first read, and
//! streaming starts there once every document is on the broker. A document written while the snapshot runs may arrive both as a read and as a change, never
//! not at all (Debezium's MongoDB connector gives the same promise).
//!
//! Collections are read in `_id` order through the `_id` index, with index bounds (`min`/`max`) rather than
//! `$gte`/`$lt` filters, because a filter matches only `_id`s of its bound's type and a collection may mix
//! them. Large collections are cut into `_id` ranges that several readers share. After every batch the
//! position records the last `_id` of each range, so an interrupted snapshot resumes where it stopped.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::Error as DriverError;
use mongodb::options::Hint;
use mongodb::Client;
use tokio::sync::{mpsc, watch};

use super::change::{bson_from_canonical, canonical_json};
use crate::config::CollectionSelection;
use sluice_core::event::{
    DocumentChange, DocumentSource, Op, Position, SnapshotChunk, SnapshotMarker, SourceEvent,
};
use sluice_core::metrics::{SnapshotProgress, SourceMetrics};
use sluice_core::positions::now_ms;
use sluice_core::source::unless_stopped;

/// Documents per batch handed from a reader to the publishing side; each batch ends with a position.
const BATCH_DOCUMENTS: usize = 500;
/// How often each collection's progress is logged.
const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Databases that hold the server's own collections, never captured through a wildcard.
const SYSTEM_DATABASES: [&str; 3] = ["admin", "config", "local"];

/// How the snapshot is cut up and shared out.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotShape {
    /// How many chunks are read at once.
    pub readers: usize,
    /// A collection estimated larger than this is cut into `_id` ranges of about this many documents
    /// (only when there are several readers to share them).
    pub chunk_documents: u64,
}

/// The collections the selection takes, as the server lists them, each cut into chunks.
pub async fn plan(
    client: &Client,
    selection: &CollectionSelection,
    shape: SnapshotShape,
) -> Result<Vec<SnapshotChunk>, DriverError> {
    let collections = selected_collections(client, selection).await?;
    plan_collections(client, collections, shape).await
}

/// An interrupted snapshot's chunks brought in line with the selection the config makes now: the
/// chunks of collections no longer selected are dropped, newly selected collections are planned.
pub async fn replan(
    client: &Client,
    selection: &CollectionSelection,
    shape: SnapshotShape,
    chunks: Vec<SnapshotChunk>,
) -> Result<Vec<SnapshotChunk>, DriverError> {
    let (kept, dropped): (Vec<SnapshotChunk>, Vec<SnapshotChunk>) = chunks
        .into_iter()
        .partition(|chunk| selection.includes_namespace(&chunk.namespace));
    let mut unselected: Vec<&str> = dropped.iter().map(|c| c.namespace.as_str()).collect();
    unselected.dedup();
    if !unselected.is_empty() {
        tracing::info!(collections = ?unselected, "no longer selected: left out of the interrupted snapshot");
    }
    let new: Vec<(String, String)> = selected_collections(client, selection)
        .await?
        .into_iter()
        .filter(|(db, coll)| {
            let namespace = format!("{db}.{coll}");
            !kept.iter().any(|chunk| chunk.namespace == namespace)
        })
        .collect();
    if !new.is_empty() {
        let names: Vec<String> = new
            .iter()
            .map(|(db, coll)| format!("{db}.{coll}"))
            .collect();
        tracing::info!(collections = ?names, "newly selected: added to the interrupted snapshot");
    }
    let mut chunks = kept;
    chunks.extend(plan_collections(client, new, shape).await?);
    Ok(chunks)
}

/// Each collection cut into chunks of about `shape.chunk_documents` by `_id`.
async fn plan_collections(
    client: &Client,
    collections: Vec<(String, String)>,
    shape: SnapshotShape,
) -> Result<Vec<SnapshotChunk>, DriverError> {
    let mut chunks = Vec::new();
    for (database, collection) in collections {
        let handle = client
            .database(&database)
            .collection::<Document>(&collection);
        let estimate = handle.estimated_document_count().await?;
        let namespace = format!("{database}.{collection}");
        let mut bounds = Vec::new();
        if shape.readers > 1 && estimate > shape.chunk_documents {
            // Each bound is found from the one before, so the index is walked once, not once per bound.
            let mut from: Option<Bson> = None;
            loop {
                let mut find = handle
                    .find(doc! {})
                    .hint(Hint::Keys(doc! { "_id": 1 }))
                    .sort(doc! { "_id": 1 })
                    .projection(doc! { "_id": 1 })
                    .skip(shape.chunk_documents)
                    .limit(1);
                if let Some(from) = &from {
                    find = find.min(doc! { "_id": from.clone() });
                }
                let Some(next) = find.await?.try_next().await? else {
                    break;
                };
                let Some(id) = next.get("_id").cloned() else {
                    break;
                };
                bounds.push(canonical_json(&id));
                from = Some(id);
            }
        }
        tracing::info!(collection = %namespace, estimated_documents = estimate, chunks = bounds.len() + 1, "snapshot planned");
        let mut from = None;
        for to in bounds.into_iter().map(Some).chain([None]) {
            chunks.push(SnapshotChunk {
                namespace: namespace.clone(),
                from: from.clone(),
                to: to.clone(),
                last: None,
                done: false,
            });
            from = to;
        }
    }
    Ok(chunks)
}

/// The selected collections, in the databases [`selected_databases`] names. Views and `system.*` are
/// left out.
pub async fn selected_collections(
    client: &Client,
    selection: &CollectionSelection,
) -> Result<Vec<(String, String)>, DriverError> {
    let mut collections = Vec::new();
    for database in selected_databases(client, selection).await? {
        let mut names = client
            .database(&database)
            .list_collection_names()
            .filter(doc! { "type": "collection" })
            .await?;
        names.sort();
        for name in names {
            if !name.starts_with("system.") && selection.includes(&database, &name) {
                collections.push((database.clone(), name));
            }
        }
    }
    Ok(collections)
}

/// The databases the selection can take collections from, sorted. They are listed only when a pattern's
/// database part is a wildcard, so that a user limited to the named databases needs no listDatabases.
pub async fn selected_databases(
    client: &Client,
    selection: &CollectionSelection,
) -> Result<Vec<String>, DriverError> {
    let mut databases: Vec<String> = Vec::new();
    if selection.include.iter().any(|p| p.database.contains('*')) {
        for name in client.list_database_names().await? {
            if !SYSTEM_DATABASES.contains(&name.as_str()) {
                databases.push(name);
            }
        }
    }
    for pattern in &selection.include {
        if !pattern.database.contains('*') && !databases.contains(&pattern.database) {
            databases.push(pattern.database.clone());
        }
    }
    databases.sort();
    Ok(databases)
}

/// What a snapshot run needs besides its chunks.
pub struct SnapshotRun<'a> {
    pub client: &'a Client,
    pub replica_set: Option<Arc<str>>,
    pub readers: usize,
    /// Where streaming starts, taken before the snapshot: the position once it is complete.
    pub start: Position,
    pub events: &'a mpsc::Sender<SourceEvent>,
    pub stop: watch::Receiver<bool>,
    pub metrics: Arc<dyn SourceMetrics>,
}

/// How a snapshot run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum SnapshotEnd {
    /// Every chunk is read and handed on, the last position the finished snapshot's.
    Complete,
    /// A stop request, or the pipeline going away, ended it early.
    Stopped,
}

/// Reads the chunks not done yet and hands their documents on, each batch followed by a position that
/// records every chunk's progress. `chunks` follows what was handed on, so that a failed run can be
/// retried from where it got to.
pub async fn read(
    run: SnapshotRun<'_>,
    chunks: &mut [SnapshotChunk],
) -> Result<SnapshotEnd, DriverError> {
    let queue: VecDeque<usize> = (0..chunks.len()).filter(|&i| !chunks[i].done).collect();
    let mut publishing = Publishing::new(&run, chunks);
    if queue.is_empty() {
        return publishing.complete().await;
    }
    let queue = Arc::new(Mutex::new(queue));
    let (reads_tx, mut reads) = mpsc::channel(run.readers * 2);
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..run.readers {
        readers.spawn(read_chunks(
            run.client.clone(),
            queue.clone(),
            publishing.chunks.to_vec(),
            reads_tx.clone(),
            run.stop.clone(),
        ));
    }
    drop(reads_tx);
    let outcome = loop {
        let read = tokio::select! {
            read = reads.recv() => read,
            // The pipeline has gone (a publishing failure): no reader needs to finish its read.
            _ = run.events.closed() => break Ok(SnapshotEnd::Stopped),
        };
        match read {
            Some(Read::Batch { chunk, documents }) => {
                if !publishing.batch(chunk, documents).await {
                    break Ok(SnapshotEnd::Stopped);
                }
            }
            Some(Read::Finished { chunk }) => {
                if !publishing.finished(chunk).await {
                    break Ok(SnapshotEnd::Stopped);
                }
            }
            Some(Read::Failed(err)) => break Err(err),
            None if publishing.all_read() => break publishing.complete().await,
            None if *run.stop.borrow() => break Ok(SnapshotEnd::Stopped),
            None => {
                break Err(DriverError::custom(
                    "a snapshot reader ended before its chunks were read",
                ))
            }
        }
    };
    readers.abort_all();
    // A document still held back is not handed on: the stored progress stops before it, so the run
    // that carries on reads it again, and the snapshot's final document always carries `last`.
    outcome
}

/// What a chunk reader tells the publishing side.
enum Read {
    Batch {
        chunk: usize,
        documents: Vec<Document>,
    },
    Finished {
        chunk: usize,
    },
    Failed(DriverError),
}

/// One reader: takes chunks from the shared queue until it is empty, a stop, or a failure.
async fn read_chunks(
    client: Client,
    queue: Arc<Mutex<VecDeque<usize>>>,
    chunks: Vec<SnapshotChunk>,
    reads: mpsc::Sender<Read>,
    stop: watch::Receiver<bool>,
) {
    loop {
        let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
        let Some(index) = next else { return };
        match read_chunk(&client, index, &chunks[index], &reads, stop.clone()).await {
            Ok(true) => {
                if reads.send(Read::Finished { chunk: index }).await.is_err() {
                    return;
                }
            }
            Ok(false) => return,
            Err(err) => {
                let _ = reads.send(Read::Failed(err)).await;
                return;
            }
        }
    }
}

/// Reads one chunk in `_id` order from after its last handed-on document. False when stopped.
async fn read_chunk(
    client: &Client,
    index: usize,
    chunk: &SnapshotChunk,
    reads: &mpsc::Sender<Read>,
    mut stop: watch::Receiver<bool>,
) -> Result<bool, DriverError> {
    let (database, collection) = chunk.namespace.split_once('.').ok_or_else(|| {
        DriverError::custom(format!("`{}` is not db.collection", chunk.namespace))
    })?;
    let handle = client.database(database).collection::<Document>(collection);
    let mut find = handle
        .find(doc! {})
        .hint(Hint::Keys(doc! { "_id": 1 }))
        .sort(doc! { "_id": 1 })
        .batch_size(BATCH_DOCUMENTS as u32);
    // `min` is inclusive: on resume the last document handed on comes back first and is skipped.
    if let Some(lower) = chunk.last.as_ref().or(chunk.from.as_ref()) {
        find = find.min(doc! { "_id": bound(lower)? });
    }
    if let Some(upper) = &chunk.to {
        find = find.max(doc! { "_id": bound(upper)? });
    }
    let Some(cursor) = unless_stopped(&mut stop, find).await else {
        return Ok(false);
    };
    let mut cursor = cursor?;
    let mut skip = chunk.last.clone();
    let mut documents = Vec::with_capacity(BATCH_DOCUMENTS);
    loop {
        let Some(next) = unless_stopped(&mut stop, cursor.try_next()).await else {
            return Ok(false);
        };
        let Some(document) = next? else { break };
        if let Some(last) = skip.take() {
            if document.get("_id").map(canonical_json).as_deref() == Some(last.as_str()) {
                continue;
            }
        }
        documents.push(document);
        if documents.len() == BATCH_DOCUMENTS {
            let batch = std::mem::replace(&mut documents, Vec::with_capacity(BATCH_DOCUMENTS));
            if reads
                .send(Read::Batch {
                    chunk: index,
                    documents: batch,
                })
                .await
                .is_err()
            {
                return Ok(false);
            }
        }
    }
    if !documents.is_empty()
        && reads
            .send(Read::Batch {
                chunk: index,
                documents,
            })
            .await
            .is_err()
    {
        return Ok(false);
    }
    Ok(true)
}

/// An `_id` stored as canonical Extended JSON, back as the BSON value the server compares.
fn bound(text: &str) -> Result<Bson, DriverError> {
    bson_from_canonical(text)
        .map_err(|err| DriverError::custom(format!("snapshot bound in the position file: {err}")))
}

/// The publishing side: turns batches into events in the order they arrive and follows each chunk's
/// progress, which moves only with what is handed on. The newest document is held back until another
/// comes, so that the snapshot's final one can carry `source.snapshot = "last"`.
struct Publishing<'a> {
    run: &'a SnapshotRun<'a>,
    chunks: &'a mut [SnapshotChunk],
    held: Option<Held>,
    collections: HashMap<String, CollectionProgress>,
}

struct Held {
    change: DocumentChange,
    chunk: usize,
    /// Its chunk was read to the end after it: handing it on finishes the chunk.
    finishes_chunk: bool,
}

/// One collection's progress, for the metrics and the log.
struct CollectionProgress {
    metrics: Arc<SnapshotProgress>,
    chunks_left: usize,
    logged: Instant,
}

impl<'a> Publishing<'a> {
    fn new(run: &'a SnapshotRun<'a>, chunks: &'a mut [SnapshotChunk]) -> Publishing<'a> {
        let mut collections: HashMap<String, CollectionProgress> = HashMap::new();
        for chunk in chunks.iter().filter(|c| !c.done) {
            collections
                .entry(chunk.namespace.clone())
                .or_insert_with(|| CollectionProgress {
                    metrics: run.metrics.snapshot_table(&chunk.namespace, None),
                    chunks_left: 0,
                    logged: Instant::now(),
                })
                .chunks_left += 1;
        }
        Publishing {
            run,
            chunks,
            held: None,
            collections,
        }
    }

    /// Hands on a batch of chunk `chunk`, then the position after it; false when the pipeline has gone.
    async fn batch(&mut self, chunk: usize, documents: Vec<Document>) -> bool {
        let count = documents.len() as u64;
        let namespace = self.chunks[chunk].namespace.clone();
        let (database, collection) = namespace.split_once('.').unwrap_or((&namespace, ""));
        let read_at_ms = now_ms();
        for document in documents {
            let Some(change) = self.read_event(database, collection, document, read_at_ms) else {
                continue;
            };
            if !self.send_held(SnapshotMarker::True).await {
                return false;
            }
            self.held = Some(Held {
                change,
                chunk,
                finishes_chunk: false,
            });
        }
        if let Some(progress) = self.collections.get_mut(&namespace) {
            let total = progress.metrics.rows.fetch_add(count, Relaxed) + count;
            if progress.logged.elapsed() >= PROGRESS_LOG_INTERVAL {
                progress.logged = Instant::now();
                tracing::info!(collection = %namespace, documents = total, "snapshot progress");
            }
        }
        self.commit_progress().await
    }

    /// A document as a snapshot read; None without an `_id` (the server adds one to every document).
    fn read_event(
        &self,
        database: &str,
        collection: &str,
        document: Document,
        read_at_ms: i64,
    ) -> Option<DocumentChange> {
        let id = document.get("_id").map(canonical_json)?;
        Some(DocumentChange {
            database: database.to_owned(),
            collection: collection.to_owned(),
            op: Op::Read,
            key: id,
            before: None,
            after: Some(canonical_json(&Bson::Document(document))),
            update: None,
            source: DocumentSource {
                replica_set: self.run.replica_set.clone(),
                // A read has no place in the oplog: the time it was read stands in.
                cluster_time: ((read_at_ms / 1000) as u32, 0),
                wall_time_ms: Some(read_at_ms),
                txn_number: None,
                lsid: None,
                resume_token: None,
                snapshot: SnapshotMarker::True,
            },
        })
    }

    /// Chunk `chunk` is read to its end: done once its last document is handed on.
    async fn finished(&mut self, chunk: usize) -> bool {
        match &mut self.held {
            Some(held) if held.chunk == chunk => {
                held.finishes_chunk = true;
                true
            }
            _ => {
                self.mark_done(chunk);
                self.commit_progress().await
            }
        }
    }

    /// Whether every chunk is read to its end (the last one's end may still be held back).
    fn all_read(&self) -> bool {
        self.chunks.iter().enumerate().all(|(i, chunk)| {
            chunk.done
                || self
                    .held
                    .as_ref()
                    .is_some_and(|held| held.chunk == i && held.finishes_chunk)
        })
    }

    fn mark_done(&mut self, chunk: usize) {
        self.chunks[chunk].done = true;
        let namespace = &self.chunks[chunk].namespace;
        if let Some(progress) = self.collections.get_mut(namespace) {
            progress.chunks_left -= 1;
            if progress.chunks_left == 0 {
                progress.metrics.finished();
                tracing::info!(collection = %namespace, documents = progress.metrics.rows.load(Relaxed), "snapshot of collection finished");
            }
        }
    }

    /// Every chunk is done: the held document goes out as the last one, then the finished snapshot's
    /// position (the reader moves on to the stream's starting point once it has checked it).
    async fn complete(&mut self) -> Result<SnapshotEnd, DriverError> {
        if self.held.is_none() {
            self.hold_a_read_document().await?;
        }
        let handed_on = self.send_held(SnapshotMarker::Last).await && self.commit_progress().await;
        Ok(if handed_on {
            SnapshotEnd::Complete
        } else {
            SnapshotEnd::Stopped
        })
    }

    /// A run that carries on may find nothing left to read: the document the stopped run held back was
    /// not handed on, and has been deleted since. One document already read is read again, so that the
    /// snapshot still ends with a `last` record (a repeated read, which the snapshot's promise allows).
    async fn hold_a_read_document(&mut self) -> Result<(), DriverError> {
        for (index, chunk) in self.chunks.iter().enumerate().rev() {
            let (Some(last), Some((database, collection))) =
                (&chunk.last, chunk.namespace.split_once('.'))
            else {
                continue;
            };
            let found = self
                .run
                .client
                .database(database)
                .collection::<Document>(collection)
                .find_one(doc! { "_id": bound(last)? })
                .await?;
            if let Some(document) = found {
                let change = self.read_event(database, collection, document, now_ms());
                self.held = change.map(|change| Held {
                    change,
                    chunk: index,
                    finishes_chunk: false,
                });
                return Ok(());
            }
        }
        Ok(())
    }

    /// Hands on the held document, marked `marker`, and moves its chunk's progress past it.
    async fn send_held(&mut self, marker: SnapshotMarker) -> bool {
        let Some(Held {
            mut change,
            chunk,
            finishes_chunk,
        }) = self.held.take()
        else {
            return true;
        };
        change.source.snapshot = marker;
        self.chunks[chunk].last = Some(change.key.clone());
        if finishes_chunk {
            self.mark_done(chunk);
        }
        self.send(SourceEvent::Document(change)).await
    }

    /// The position after what was handed on: every chunk's progress.
    async fn commit_progress(&self) -> bool {
        self.send(SourceEvent::Commit {
            position: Position::MongodbSnapshot {
                start: Box::new(self.run.start.clone()),
                chunks: merge_done(self.chunks),
            },
            commit_time_us: None,
        })
        .await
    }

    async fn send(&self, event: SourceEvent) -> bool {
        self.run.events.send(event).await.is_ok()
    }
}

/// The chunks with each run of adjacent done ranges of a collection stored as one, so that the position
/// written after every batch shrinks as the snapshot goes on instead of listing every finished range.
fn merge_done(chunks: &[SnapshotChunk]) -> Vec<SnapshotChunk> {
    let mut merged: Vec<SnapshotChunk> = Vec::with_capacity(chunks.len());
    for chunk in chunks {
        match merged.last_mut() {
            Some(previous)
                if previous.done
                    && chunk.done
                    && previous.namespace == chunk.namespace
                    && previous.to == chunk.from =>
            {
                previous.to = chunk.to.clone();
                previous.last = chunk.last.clone();
            }
            _ => merged.push(chunk.clone()),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(namespace: &str, from: Option<&str>, to: Option<&str>, done: bool) -> SnapshotChunk {
        SnapshotChunk {
            namespace: namespace.into(),
            from: from.map(str::to_owned),
            to: to.map(str::to_owned),
            last: done.then(|| "x".to_owned()),
            done,
        }
    }

    #[test]
    fn adjacent_done_ranges_of_a_collection_are_stored_as_one() {
        let chunks = [
            chunk("a.x", None, Some("1"), true),
            chunk("a.x", Some("1"), Some("2"), true),
            chunk("a.x", Some("2"), Some("3"), false),
            chunk("a.x", Some("3"), Some("4"), true),
            chunk("a.x", Some("4"), None, true),
            chunk("a.y", None, None, true),
            chunk("b.z", None, Some("9"), true),
        ];
        assert_eq!(
            merge_done(&chunks),
            [
                chunk("a.x", None, Some("2"), true),
                chunk("a.x", Some("2"), Some("3"), false),
                chunk("a.x", Some("3"), None, true),
                chunk("a.y", None, None, true),
                chunk("b.z", None, Some("9"), true),
            ]
        );
    }
}
