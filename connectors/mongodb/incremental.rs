//! Incremental snapshots, MongoDB's reading side: a task that reads the requested collections in chunks
//! of `_id` order, each between a low and a high watermark inserted into the signal collection (MongoDB
//! has no logical decoding messages; the stream meets the inserts in log order). The stream's side is
//! [`crate::signals`] on [`sluice_core::incremental::Windows`].
//!
//! A chunk is the documents with `_id` after the last one on the broker and up to the largest `_id` the
//! collection had when its reading began, in `_id` order, with the `additional-conditions` filter. The
//! `_id` bounds are index bounds (`min`, `max`) rather than `$gt`/`$lte` filters, because a comparison
//! filter matches only `_id`s of its bound's type and a collection may mix them; `max` excludes its
//! bound, so the last `_id` itself is looked up when the range is used up. Up to [`CHUNKS_IN_FLIGHT`]
//! chunks wait for their high watermark. Once both are written a chunk's watermark documents are deleted
//! again (the stream has their inserts in its log), so that the signal collection does not grow.

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::Error as DriverError;
use mongodb::options::Hint;
use mongodb::{Client, Collection};
use std::sync::Arc;
use tokio::sync::mpsc;

use crate::change::{bson_from_canonical, canonical_json};
use crate::control::is_transient;
use crate::signal_collection::{parse_filter, watermark_document};
use sluice_core::config::redact_secrets;
use sluice_core::event::{DocumentChange, DocumentSource, Op, SnapshotMarker};
use sluice_core::incremental::{Chunk, TableProgress, Watermark};
use sluice_core::positions::now_ms;
use sluice_core::reading::ReadRequest;

/// What the reader hands the stream: chunks of documents (they carry their collection themselves).
pub type Delivery = sluice_core::reading::Delivery<DocumentChange, ()>;

/// What the reader needs to know of the source.
#[derive(Clone)]
pub struct ReaderSettings {
    pub client: Client,
    pub replica_set: Option<Arc<str>>,
    /// `db.collection`, where watermarks go.
    pub signal_collection: String,
    pub chunk_rows: usize,
}

/// Reads the pending collections (with how far each got) one after the other, until done or until the
/// stream drops the receiver.
pub async fn read(settings: ReaderSettings, request: ReadRequest<DocumentChange, ()>) {
    let ReadRequest {
        run,
        reading,
        tables,
        out,
    } = request;
    let Some((db, coll)) = settings.signal_collection.split_once('.') else {
        return;
    };
    let mut reader = ChunkReader {
        marks: settings.client.database(db).collection(coll),
        settings,
        run,
        reading,
        number: 0,
        out,
        deleting: true,
    };
    for table in tables {
        let failure = match reader.read_table(&table).await {
            Ok(true) => continue,
            Ok(false) => return,
            Err(failure) => failure,
        };
        let delivery = match failure {
            Failure::Table(reason) => Delivery::Refused {
                reading,
                table: table.name.clone(),
                reason,
            },
            Failure::Connection(reason) => Delivery::Broken { reading, reason },
        };
        let broken = matches!(delivery, Delivery::Broken { .. });
        if reader.out.send(delivery).await.is_err() || broken {
            return;
        }
    }
}

enum Failure {
    /// This collection cannot be read; the others can.
    Table(String),
    Connection(String),
}

impl From<DriverError> for Failure {
    fn from(err: DriverError) -> Failure {
        // What a reconnect cures is the connection's; anything else the server refused is the
        // collection's (a filter it cannot run, a collection the user may not read).
        let reason = redact_secrets(&err.to_string());
        if is_transient(&err) {
            Failure::Connection(reason)
        } else {
            Failure::Table(reason)
        }
    }
}

struct ChunkReader {
    settings: ReaderSettings,
    marks: Collection<Document>,
    run: String,
    reading: u64,
    number: u64,
    out: mpsc::Sender<Delivery>,
    /// Watermark documents are deleted once written, unless the server refused a delete.
    deleting: bool,
}

/// A collection as the reader reads it.
struct Plan {
    name: String,
    database: String,
    collection: String,
    handle: Collection<Document>,
    filter: Document,
    estimated: u64,
}

/// The `_id`s a chunk reads between: after `after` (exclusive), up to `until` (inclusive), both as
/// canonical Extended JSON.
struct Range<'a> {
    after: Option<&'a str>,
    until: Option<&'a str>,
}

impl ChunkReader {
    /// Reads one collection to its end. False: the stream is gone.
    async fn read_table(&mut self, progress: &TableProgress) -> Result<bool, Failure> {
        let plan = self.plan(progress).await?;
        let until = match progress.until_key.as_ref().and_then(|key| key.first()) {
            Some(until) => Some(until.clone()),
            None => self.last_id(&plan).await?,
        };
        let mut after = progress
            .last_key
            .as_ref()
            .and_then(|key| key.first())
            .cloned();
        tracing::info!(collection = %plan.name, from = ?after, until = ?until, estimated = ?plan.estimated, "incremental snapshot of collection begins");
        loop {
            let range = Range {
                after: after.as_deref(),
                until: until.as_deref(),
            };
            let chunk = self.chunk(&plan, range).await?;
            let done = chunk.table_done;
            if let Some(last) = chunk.last_key.as_ref().and_then(|key| key.first()) {
                after = Some(last.clone());
            }
            let number = chunk.number;
            if self
                .out
                .send(Delivery::Chunk { chunk, model: () })
                .await
                .is_err()
            {
                return Ok(false);
            }
            self.watermark(number, true).await?;
            self.forget_watermarks(number).await;
            if done {
                return Ok(true);
            }
        }
    }

    async fn plan(&self, progress: &TableProgress) -> Result<Plan, Failure> {
        let (database, collection) = progress.name.split_once('.').ok_or_else(|| {
            Failure::Table(format!(
                "`{}` is not `db.collection`: name collections as in `shop.orders`",
                progress.name
            ))
        })?;
        let filter = match &progress.filter {
            Some(text) => parse_filter(text).map_err(Failure::Table)?,
            None => Document::new(),
        };
        let handle = self
            .settings
            .client
            .database(database)
            .collection(collection);
        let estimated = match progress.estimated {
            Some(estimated) => estimated,
            None => handle.estimated_document_count().await?,
        };
        Ok(Plan {
            name: progress.name.clone(),
            database: database.to_owned(),
            collection: collection.to_owned(),
            handle,
            filter,
            estimated,
        })
    }

    /// The largest `_id` now (of the documents the filter selects): where this reading of the collection
    /// ends (later documents come through the stream). None for an empty collection.
    async fn last_id(&mut self, plan: &Plan) -> Result<Option<String>, Failure> {
        let mut cursor = plan
            .handle
            .find(plan.filter.clone())
            .hint(Hint::Keys(doc! { "_id": 1 }))
            .sort(doc! { "_id": -1 })
            .projection(doc! { "_id": 1 })
            .limit(1)
            .await?;
        let last = cursor.try_next().await?;
        Ok(last.and_then(|document| document.get("_id").map(canonical_json)))
    }

    /// Writes the low watermark, reads the next chunk, and returns it for the caller to hand over before
    /// it writes the high one.
    async fn chunk(
        &mut self,
        plan: &Plan,
        range: Range<'_>,
    ) -> Result<Chunk<DocumentChange>, Failure> {
        self.number += 1;
        let number = self.number;
        self.watermark(number, false).await?;
        let (documents, table_done) = match range.until {
            None => (Vec::new(), true),
            Some(until) if range.after == Some(until) => (Vec::new(), true),
            Some(until) => self.read_range(plan, range.after, until).await?,
        };
        let read_at_ms = now_ms();
        let mut rows = Vec::with_capacity(documents.len());
        let mut last_key = None;
        for document in documents {
            let Some(change) = self.read_event(plan, document, read_at_ms) else {
                continue;
            };
            last_key = Some(vec![change.key.clone()]);
            rows.push((change.key.clone(), change));
        }
        Ok(Chunk {
            reading: self.reading,
            number,
            table: plan.name.clone(),
            rows,
            last_key,
            until_key: range.until.map(|until| vec![until.to_owned()]),
            estimated: Some(plan.estimated),
            table_done,
        })
    }

    /// Up to `chunk_rows` documents after `after` up to `until`, in `_id` order; and whether the range
    /// is used up.
    async fn read_range(
        &self,
        plan: &Plan,
        after: Option<&str>,
        until: &str,
    ) -> Result<(Vec<Document>, bool), Failure> {
        let limit = self.settings.chunk_rows;
        let until_id = bound(until)?;
        // `min` includes its bound: the last document on the broker comes back first and is skipped.
        let mut find = plan
            .handle
            .find(plan.filter.clone())
            .hint(Hint::Keys(doc! { "_id": 1 }))
            .sort(doc! { "_id": 1 })
            .max(doc! { "_id": until_id.clone() })
            .limit((limit + usize::from(after.is_some())) as i64);
        if let Some(after) = after {
            find = find.min(doc! { "_id": bound(after)? });
        }
        let mut cursor = find.await?;
        let mut documents = Vec::with_capacity(limit);
        while let Some(document) = cursor.try_next().await? {
            let id = document.get("_id").map(canonical_json);
            if after.is_some() && id.as_deref() == after {
                continue;
            }
            if documents.len() < limit {
                documents.push(document);
            }
        }
        if documents.len() == limit {
            return Ok((documents, false));
        }
        // The range below `until` is used up; `max` left `until` itself out.
        let mut filter = doc! { "_id": until_id };
        if !plan.filter.is_empty() {
            filter = doc! { "$and": [filter, plan.filter.clone()] };
        }
        if let Some(last) = plan.handle.find_one(filter).await? {
            documents.push(last);
        }
        Ok((documents, true))
    }

    /// A document as an incremental snapshot read it; None without an `_id`.
    fn read_event(
        &self,
        plan: &Plan,
        document: Document,
        read_at_ms: i64,
    ) -> Option<DocumentChange> {
        let key = document.get("_id").map(canonical_json)?;
        Some(DocumentChange {
            database: plan.database.clone(),
            collection: plan.collection.clone(),
            op: Op::Read,
            key,
            before: None,
            after: Some(canonical_json(&Bson::Document(document))),
            update: None,
            source: DocumentSource {
                replica_set: self.settings.replica_set.clone(),
                // A read has no place in the oplog: the time it was read stands in.
                cluster_time: ((read_at_ms / 1000) as u32, 0),
                wall_time_ms: Some(read_at_ms),
                txn_number: None,
                lsid: None,
                resume_token: None,
                snapshot: SnapshotMarker::Incremental,
            },
        })
    }

    async fn watermark(&mut self, number: u64, high: bool) -> Result<(), Failure> {
        let mark = self.mark(number, high);
        self.marks
            .insert_one(watermark_document(&mark))
            .await
            .map_err(|err| match Failure::from(err) {
                Failure::Table(reason) => Failure::Connection(format!(
                    "cannot insert a watermark into the signal collection {}: {reason} (the user in source.url needs the insert privilege on it)",
                    self.settings.signal_collection
                )),
                connection => connection,
            })?;
        Ok(())
    }
}

impl ChunkReader {
    fn mark(&self, number: u64, high: bool) -> Watermark {
        Watermark {
            run: self.run.clone(),
            reading: self.reading,
            number,
            high,
        }
    }

    /// Deletes chunk `number`'s two watermark documents: the stream has them in its log once they are
    /// written, and the signal collection would otherwise grow by two documents a chunk. A refusal (no
    /// delete privilege) is said once; the documents then stay.
    async fn forget_watermarks(&mut self, number: u64) {
        if !self.deleting {
            return;
        }
        let ids: Vec<Bson> = [false, true]
            .into_iter()
            .filter_map(|high| {
                watermark_document(&self.mark(number, high))
                    .get("_id")
                    .cloned()
            })
            .collect();
        if let Err(err) = self.marks.delete_many(doc! { "_id": { "$in": ids } }).await {
            if is_transient(&err) {
                return;
            }
            tracing::warn!(collection = %self.settings.signal_collection, error = %redact_secrets(&err.to_string()), "cannot delete watermark documents from the signal collection: they stay there (grant remove on it, or delete them now and then)");
            self.deleting = false;
        }
    }
}

/// An `_id` stored as canonical Extended JSON, back as the BSON value the server compares.
fn bound(text: &str) -> Result<Bson, Failure> {
    bson_from_canonical(text)
        .map_err(|err| Failure::Table(format!("a key in the stored progress: {err}")))
}
