//! Publishing document changes (MongoDB): each collection's topic, typed by its contract when it has one.

use std::collections::HashMap;

use sluice_core::event::{DocumentChange, Op, SnapshotMarker, UndecodableChange};
use sluice_core::positions::now_ms;

use super::super::error::PipelineError;
use super::core::{header_refs, Core, Encoded, FixedTopic, Rejection, Subject};
use super::last_marker::{LastMarker, Record};
use crate::avro;
use crate::contracts::{Contract, ContractError, Contracts};
use crate::deadletter::Stage;
use crate::transforms::Dress;

/// Every contract, as the `after` record of the collection its topic names: one that cannot be stops
/// sluice at once, not at its collection's first change.
pub(crate) fn check_contracts(
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

/// The encoder of document changes: each collection's topic, and the typed `after` record of those
/// that have a contract.
#[derive(Default)]
pub(super) struct DocumentEncoder {
    /// Collections' topics, by `db.collection`.
    collections: HashMap<String, Collection>,
    /// The snapshot's `last` marker, on the broker even when the last document is not.
    pub last_marker: LastMarker,
}

/// Where one collection's documents go, and how.
struct Collection {
    fixed: FixedTopic,
    /// The record of the topic's contract, when it has one.
    typed: Option<avro::TypedDocument>,
    /// How the transforms shaped it (the default: not at all).
    dress: Dress,
}

impl DocumentEncoder {
    /// A document change, to its collection's topic (created, and its schemas registered, the first time),
    /// followed by a tombstone when it is a delete. `shape` is the topic and dress the transforms gave
    /// it, if any.
    pub async fn publish<'e>(
        &mut self,
        change: &'e DocumentChange,
        shape: Option<(&str, &Dress)>,
        core: &mut Core,
    ) -> Result<Encoded<'e>, PipelineError> {
        let namespace = change.namespace();
        let current = self.collections.get(&namespace).is_some_and(|c| {
            shape.is_none_or(|(topic, dress)| c.fixed.topic == topic && c.dress.same_form(dress))
        });
        if !current {
            let collection = Collection::new(change, shape, core)?;
            self.collections.insert(namespace.clone(), collection);
        }
        let Some(collection) = self.collections.get_mut(&namespace) else {
            return Ok(Ok(()));
        };
        let routed = collection.dress.key_table.is_some();
        let mut key = Vec::with_capacity(change.key.len() + 8);
        avro::encode_shaped_document_key(change, routed, &mut key);
        let mut value = Vec::with_capacity(
            change.after.as_ref().map_or(0, String::len)
                + change.before.as_ref().map_or(0, String::len)
                + 256,
        );
        let typed = collection.typed.as_ref();
        let encoded = match &collection.dress.flat {
            Some(flat) => avro::encode_flat_document(change, flat, typed, now_ms(), &mut value)
                .map(|has_value| (has_value, None)),
            None => {
                let prefix = &core.topic_prefix;
                avro::encode_document_envelope(change, prefix, now_ms(), typed, &mut value)
                    .map(|marker_at| (true, Some(marker_at)))
            }
        };
        let (has_value, marker_at) = match encoded {
            Ok(encoded) => encoded,
            Err(mismatch) => {
                let topic = &collection.fixed.topic;
                return Ok(Err(misfit(change, topic, &mismatch, core)));
            }
        };
        let mut headers = Vec::with_capacity(1);
        if let Some(token) = &change.source.resume_token {
            headers.push(("sluice.resume_token".to_owned(), token.clone().into_bytes()));
        }
        let bytes = key.len() + value.len();
        let fixed = &mut collection.fixed;
        if has_value {
            if let Err(rejection) = core.publish_fixed(fixed, &key, &value, &headers).await? {
                return Ok(Err(rejection));
            }
            if let Some(marker_at) = marker_at {
                note_snapshot_read(
                    &mut self.last_marker,
                    change,
                    fixed,
                    &key,
                    &value,
                    marker_at,
                );
            }
        }
        core.metrics
            .event_published(&namespace, change.op.code(), bytes);
        if change.source.snapshot == SnapshotMarker::False {
            core.metrics.published_commit(committed_us(change));
        }
        // A delete is followed by a tombstone so that compaction can drop the key.
        if change.op == Op::Delete {
            Self::tombstone(fixed, &key, &headers, core).await?;
        }
        Ok(Ok(()))
    }

    /// The tombstone after a delete: framed with the key schema, which an unwrapped delete that published
    /// no value registers here.
    async fn tombstone(
        fixed: &mut FixedTopic,
        key: &[u8],
        headers: &[(String, Vec<u8>)],
        core: &mut Core,
    ) -> Result<(), PipelineError> {
        let key_schema = match core.register_fixed(fixed).await? {
            Ok((key_schema, _)) => key_schema,
            Err(reason) => {
                let subject = Subject::Record {
                    key: Some(key.to_vec()),
                    value: None,
                    headers: headers.to_vec(),
                };
                let rejection = Rejection::new(Stage::Register, &fixed.topic, reason, subject);
                return core.dead_letter(rejection).await;
            }
        };
        let mut framed = Vec::with_capacity(key.len() + 10);
        key_schema.write_header(&mut framed);
        framed.extend_from_slice(key);
        core.send_tombstone(&fixed.topic, &framed, &header_refs(headers))
            .await
    }
}

impl Collection {
    /// The topic of a collection seen for the first time (or shaped anew), with `after` typed when the
    /// topic has a contract.
    fn new(
        change: &DocumentChange,
        shape: Option<(&str, &Dress)>,
        core: &Core,
    ) -> Result<Collection, PipelineError> {
        let (database, collection) = (&change.database, &change.collection);
        let own_topic = avro::document_topic(&core.topic_prefix, database, collection);
        let (topic, dress) = shape
            .map_or((own_topic.as_str(), Dress::default()), |(topic, dress)| {
                (topic, dress.clone())
            });
        let namespace = match &dress.key_table {
            Some(_) => avro::topic_namespace(topic),
            None => avro::naming::collection_namespace(&core.topic_prefix, database, collection),
        };
        let shaped = avro::DocumentShape {
            topic,
            namespace,
            key_table: dress.key_table.as_deref(),
            flat: dress.flat.as_deref(),
        };
        let contract = core.contracts.get(topic);
        let document = contract.map(|c| c.document_schema()).transpose();
        let built = document.and_then(|document| avro::shaped_document_schemas(&shaped, document));
        let (schemas, typed) = built.map_err(|reason| ContractError::Invalid {
            path: contract.map(|c| c.path.clone()).unwrap_or_default(),
            reason,
        })?;
        Ok(Collection {
            fixed: FixedTopic::with_schemas(schemas),
            typed,
            dress,
        })
    }
}

/// A published snapshot read, for the snapshot's `last` marker: framed as `publish_fixed` framed it.
fn note_snapshot_read(
    last_marker: &mut LastMarker,
    change: &DocumentChange,
    fixed: &FixedTopic,
    key: &[u8],
    value: &[u8],
    marker_at: usize,
) {
    let (SnapshotMarker::True | SnapshotMarker::Last, Some((key_schema, value_schema))) =
        (change.source.snapshot, fixed.refs)
    else {
        return;
    };
    let (mut key_header, mut value_header) = (Vec::new(), Vec::new());
    key_schema.write_header(&mut key_header);
    value_schema.write_header(&mut value_header);
    let record = Record {
        topic: &fixed.topic,
        key: Some([&key_header, key]),
        marker_at: value_header.len() + marker_at,
        value: [&value_header, value],
        lsn: None,
    };
    last_marker.note(change.source.snapshot, record);
}

/// When a change was committed: before 6.0 events have no wall time, and the cluster time's seconds stand
/// in.
fn committed_us(change: &DocumentChange) -> i64 {
    let source = &change.source;
    source
        .wall_time_ms
        .map_or(i64::from(source.cluster_time.0) * 1_000_000, |ms| ms * 1000)
}

/// The rejection of a document that does not fit its topic's contract.
fn misfit<'e>(
    change: &'e DocumentChange,
    topic: &str,
    mismatch: &crate::contracts::Mismatch,
    core: &Core,
) -> Rejection<'e> {
    let file = core
        .contracts
        .get(topic)
        .map(|c| c.path.display().to_string());
    let reason = format!(
        "the document does not fit the contract {}: {mismatch}",
        file.unwrap_or_default()
    );
    Rejection::new(Stage::Validate, topic, reason, Subject::Document(change))
}

/// The topic a change that has no event form was meant for: its collection's, when the source could
/// name it; otherwise the dead-letter topic itself.
pub(super) fn undecodable_topic(change: &UndecodableChange, core: &Core) -> String {
    match change
        .namespace
        .as_deref()
        .and_then(|ns| ns.split_once('.'))
    {
        Some((db, coll)) => avro::document_topic(&core.topic_prefix, db, coll),
        None => core.dead_letter_topic.clone(),
    }
}
