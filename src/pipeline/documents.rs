//! Publishing document changes (MongoDB): each collection's topic, typed by its contract when it has one.

use sluice_core::event::{DocumentChange, UndecodableChange};
use sluice_core::positions::now_ms;

use super::{header_refs, send_tombstone, Fixed, FixedTopic, PipelineError, Publisher};
use crate::avro;
use crate::contracts::{Contract, ContractError, Contracts};
use crate::deadletter::{DeadLetter, Stage};

/// Every contract, as the `after` record of the collection its topic names: one that cannot be stops
/// sluice at once, not at its collection's first change.
pub(super) fn check_contracts(
    contracts: &Contracts,
    topic_prefix: &str,
) -> Result<(), ContractError> {
    for contract in contracts.iter() {
        check_document_contract(contract, topic_prefix)?;
        if collection_of_topic(&contract.topic, topic_prefix).is_none() {
            tracing::warn!(file = %contract.path.display(), topic = %contract.topic, "the contract's topic is not <topic_prefix>.<db>.<collection>: it types no collection");
        }
    }
    Ok(())
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
        if change.source.snapshot == sluice_core::event::SnapshotMarker::False {
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
        if change.op == sluice_core::event::Op::Delete {
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
