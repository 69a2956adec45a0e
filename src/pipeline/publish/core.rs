//! What every encoder publishes through: the sink, acknowledgement tracking, the schema directory and the
//! one path by which an event becomes a dead letter.

use std::sync::Arc;
use std::time::Duration;

use sluice_core::event::{ChangeEvent, DocumentChange, UndecodableChange};
use sluice_core::positions::now_ms;
use tokio::sync::{mpsc, watch};

use super::super::ack::AckTracker;
use super::super::error::PipelineError;
use super::super::schemas::{Outlet, SchemaDirectory};
use crate::avro::{AvroSchema, SchemaRef, TableSchemas};
use crate::contracts::Contracts;
use crate::deadletter::{self, DeadLetter, Failure, Stage};
use crate::metrics::Metrics;
use crate::registry::SchemaPart;
use crate::shutdown::StopDeadline;
use crate::sink::{is_too_large, FailedDelivery, MessageKind, Outgoing, Sink};

/// Why an event is not published as it is, and what its dead letter carries.
pub(super) struct Rejection<'e> {
    pub stage: Stage,
    /// The topic the event was meant for.
    pub topic: String,
    pub reason: String,
    pub subject: Subject<'e>,
    /// The record's key, when it was encoded: the dead letter is keyed the same way.
    pub key: Option<Vec<u8>>,
    /// The ordinal the message was registered under, when the broker refused it after registration.
    pub ordinal: Option<u64>,
}

/// An event published, or the reason it goes to the dead-letter topic instead.
pub(super) type Encoded<'e> = Result<(), Rejection<'e>>;

impl<'e> Rejection<'e> {
    /// A rejection of `subject` for `topic`, not yet registered with the tracker.
    pub fn new(stage: Stage, topic: &str, reason: String, subject: Subject<'e>) -> Rejection<'e> {
        Rejection {
            stage,
            topic: topic.to_owned(),
            reason,
            subject,
            key: None,
            ordinal: None,
        }
    }
}

/// What a dead letter carries of the rejected event, in the source's own terms where there are some.
pub(super) enum Subject<'e> {
    Change(&'e ChangeEvent),
    Document(&'e DocumentChange),
    Undecodable(&'e UndecodableChange),
    /// An encoded record (a fixed topic's, or one the broker refused): its bodies as they were.
    Record {
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        headers: Vec<(String, Vec<u8>)>,
    },
}

/// What became of a message handed to the broker.
pub(super) enum Delivery {
    Sent,
    /// The broker refused this message for good (too large, invalid): it belongs on the dead-letter topic
    /// under the same ordinal.
    Refused {
        ordinal: u64,
        reason: String,
    },
}

/// A topic whose records all have the same key and value schemas (messages, transaction metadata, a
/// MongoDB collection).
pub(super) struct FixedTopic {
    pub topic: String,
    schemas: TableSchemas,
    /// Key and value schemas, once registered or published.
    pub refs: Option<(SchemaRef, SchemaRef)>,
}

impl FixedTopic {
    pub fn new(topic: String, schemas: fn(&str) -> TableSchemas) -> FixedTopic {
        FixedTopic::with_schemas(schemas(&topic))
    }

    pub fn with_schemas(schemas: TableSchemas) -> FixedTopic {
        FixedTopic {
            topic: schemas.topic.clone(),
            schemas,
            refs: None,
        }
    }
}

/// The publishing loop's state that every encoder publishes through. `pipeline::start` builds it; its
/// methods serve this module.
pub struct Core {
    pub sink: Sink,
    pub schemas: SchemaDirectory,
    pub tracker: Arc<AckTracker>,
    /// Debezium's connector name for the source (`postgresql`, `mongodb`).
    pub connector: &'static str,
    pub topic_prefix: String,
    pub dead_letter_topic: String,
    /// Registered or published with the first dead letter.
    pub dead_letter_schema: Option<SchemaRef>,
    pub contracts: Contracts,
    pub stop: watch::Receiver<bool>,
    pub metrics: Arc<Metrics>,
    /// Set when a stop is requested: past it, nothing more is published or waited for.
    pub stop_deadline: StopDeadline,
    pub shutdown_timeout: Duration,
    /// Framing buffers for fixed topics' records.
    key_buf: Vec<u8>,
    value_buf: Vec<u8>,
}

impl Core {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sink: Sink,
        schemas: SchemaDirectory,
        tracker: Arc<AckTracker>,
        connector: &'static str,
        topic_prefix: String,
        dead_letter_topic: String,
        contracts: Contracts,
        stop: watch::Receiver<bool>,
        metrics: Arc<Metrics>,
        stop_deadline: StopDeadline,
        shutdown_timeout: Duration,
    ) -> Core {
        Core {
            sink,
            schemas,
            tracker,
            connector,
            topic_prefix,
            dead_letter_topic,
            dead_letter_schema: None,
            contracts,
            stop,
            metrics,
            stop_deadline,
            shutdown_timeout,
            key_buf: Vec::with_capacity(256),
            value_buf: Vec::with_capacity(4096),
        }
    }

    /// The key and value schema references of a topic's schemas, from the schema directory.
    /// `Ok(Err(reason))` is a refusal of the schema itself (the events go to the dead-letter topic); `Err`
    /// stops the pipeline.
    pub(super) async fn schema_refs(
        &mut self,
        schemas: &TableSchemas,
    ) -> Result<Result<(Option<SchemaRef>, SchemaRef), String>, PipelineError> {
        let mut outlet = Outlet {
            sink: &mut self.sink,
            tracker: &self.tracker,
            stop: &mut self.stop,
        };
        self.schemas.schema_refs(&mut outlet, schemas).await
    }

    /// One schema's reference, from the schema directory.
    async fn schema_ref(
        &mut self,
        topic: &str,
        part: SchemaPart,
        schema: &AvroSchema,
    ) -> Result<Result<SchemaRef, String>, PipelineError> {
        let mut outlet = Outlet {
            sink: &mut self.sink,
            tracker: &self.tracker,
            stop: &mut self.stop,
        };
        self.schemas
            .schema_ref(&mut outlet, topic, part, schema)
            .await
    }

    /// Hands a message to the broker under a new ordinal.
    pub(super) async fn send(
        &mut self,
        message: &Outgoing<'_>,
        kind: MessageKind,
    ) -> Result<Delivery, PipelineError> {
        let ordinal = self.tracker.register();
        match self.sink.send(message, ordinal, kind).await {
            Ok(()) => Ok(Delivery::Sent),
            Err(err) if err.is_message_fault() => Ok(Delivery::Refused {
                ordinal,
                reason: err.to_string(),
            }),
            Err(err) => Err(err.into()),
        }
    }

    /// A tombstone (null value) for `key`, which follows a delete so that compaction can drop the key.
    pub(super) async fn send_tombstone(
        &mut self,
        topic: &str,
        key: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Result<(), PipelineError> {
        let tombstone = Outgoing {
            topic,
            key: Some(key),
            payload: None,
            headers,
        };
        let ordinal = self.tracker.register();
        Ok(self
            .sink
            .send(&tombstone, ordinal, MessageKind::Event)
            .await?)
    }

    /// A fixed topic's schemas, registered (and the topic created) the first time; why not, when the
    /// registry refuses them.
    pub(super) async fn register_fixed(
        &mut self,
        fixed: &mut FixedTopic,
    ) -> Result<Result<(SchemaRef, SchemaRef), String>, PipelineError> {
        if let Some(refs) = fixed.refs {
            return Ok(Ok(refs));
        }
        match self.sink.ensure_topic(&fixed.topic, &self.stop).await {
            Ok(()) => {}
            // A topic the broker will not create (a name it refuses): this record's dead letter says so.
            Err(err) if err.is_message_fault() => return Ok(Err(err.to_string())),
            Err(err) => return Err(err.into()),
        }
        Ok(match self.schema_refs(&fixed.schemas).await? {
            // Fixed topics always have a key schema.
            Ok((Some(key_schema), value_schema)) => {
                fixed.refs = Some((key_schema, value_schema));
                Ok((key_schema, value_schema))
            }
            Ok((None, _)) => Err(format!("{} has no key schema", fixed.topic)),
            Err(err) => Err(format!(
                "cannot register the schema of {}: {err}",
                fixed.topic
            )),
        })
    }

    /// A record for a fixed topic: key and value are Avro bodies, framed here once the schemas are
    /// registered (the first time, with the topic created). A record whose schema the registry refuses, or
    /// that the broker refuses, is rejected with its bodies.
    pub(super) async fn publish_fixed<'e>(
        &mut self,
        fixed: &mut FixedTopic,
        key: &[u8],
        value: &[u8],
        headers: &[(String, Vec<u8>)],
    ) -> Result<Encoded<'e>, PipelineError> {
        let record = || Subject::Record {
            key: Some(key.to_vec()),
            value: Some(value.to_vec()),
            headers: headers.to_vec(),
        };
        let (key_schema, value_schema) = match fixed.refs {
            Some(refs) => refs,
            // This record goes to the dead-letter topic; the next one asks again.
            None => match self.register_fixed(fixed).await? {
                Ok(refs) => refs,
                Err(reason) => {
                    let rejection = Rejection::new(Stage::Register, &fixed.topic, reason, record());
                    return Ok(Err(rejection));
                }
            },
        };
        self.key_buf.clear();
        key_schema.write_header(&mut self.key_buf);
        self.key_buf.extend_from_slice(key);
        self.value_buf.clear();
        value_schema.write_header(&mut self.value_buf);
        self.value_buf.extend_from_slice(value);
        let header_refs = header_refs(headers);
        let outgoing = Outgoing {
            topic: &fixed.topic,
            key: Some(&self.key_buf),
            payload: Some(&self.value_buf),
            headers: &header_refs,
        };
        let ordinal = self.tracker.register();
        match self.sink.send(&outgoing, ordinal, MessageKind::Event).await {
            Ok(()) => Ok(Ok(())),
            Err(err) if err.is_message_fault() => {
                let reason = format!("the broker refused the record: {err}");
                let mut rejection = Rejection::new(
                    Stage::Produce,
                    &fixed.topic,
                    reason,
                    Subject::Record {
                        key: Some(self.key_buf.clone()),
                        value: Some(self.value_buf.clone()),
                        headers: headers.to_vec(),
                    },
                );
                rejection.key = Some(self.key_buf.clone());
                rejection.ordinal = Some(ordinal);
                Ok(Err(rejection))
            }
            Err(err) => Err(err.into()),
        }
    }

    /// The one way out for an event that cannot be published as it is: the dead-letter topic, under the
    /// ordinal it had (or a new one), so that the position waits for it like for any event.
    pub(super) async fn dead_letter(
        &mut self,
        rejection: Rejection<'_>,
    ) -> Result<(), PipelineError> {
        let Rejection {
            stage,
            topic,
            reason,
            subject,
            key,
            ordinal,
        } = rejection;
        let failure = self.failure(stage, &topic, &reason);
        let letter = match &subject {
            Subject::Change(event) => {
                tracing::warn!(stage = stage.as_str(), table = %event.table.qualified_name(), lsn = %event.source.lsn, reason, "event sent to the dead-letter topic");
                DeadLetter::for_event(event, failure)
            }
            Subject::Document(change) => DeadLetter::for_document(change, failure),
            Subject::Undecodable(change) => DeadLetter::for_undecodable(change, failure),
            Subject::Record {
                key,
                value,
                headers,
            } => {
                if stage == Stage::Produce {
                    tracing::warn!(%topic, %reason, "message sent to the dead-letter topic");
                }
                DeadLetter::for_refused_message(failure, key.as_deref(), value.as_deref(), headers)
            }
        };
        let ordinal = ordinal.unwrap_or_else(|| self.tracker.register());
        let table = letter.collection.as_deref().unwrap_or(&letter.topic);
        self.metrics.dead_letter(letter.stage, table);
        self.produce_dead_letter(letter.encode(), &letter.headers(), key.as_deref(), ordinal)
            .await
    }

    /// A failure of this instance, now.
    fn failure<'a>(&'a self, stage: Stage, topic: &'a str, error: &'a str) -> Failure<'a> {
        Failure {
            stage,
            topic,
            error,
            instance: &self.topic_prefix,
            connector: self.connector,
            failed_at_ms: now_ms(),
        }
    }

    /// The dead-letter schema, registered or published the first time a dead letter needs it (so that a
    /// registry that is down delays only what needs it).
    async fn dead_letter_schema(&mut self) -> Result<SchemaRef, PipelineError> {
        if let Some(found) = self.dead_letter_schema {
            return Ok(found);
        }
        let schema = AvroSchema {
            json: deadletter::SCHEMA_TEXT.to_owned(),
            schema: deadletter::schema().clone(),
        };
        let topic = self.dead_letter_topic.clone();
        let found = self
            .schema_ref(&topic, SchemaPart::Value, &schema)
            .await?
            .map_err(PipelineError::DeadLetterSchema)?;
        self.dead_letter_schema = Some(found);
        Ok(found)
    }

    /// Produces a dead letter; one too large for the broker is sent again without the change itself.
    async fn produce_dead_letter(
        &mut self,
        datum: Vec<u8>,
        headers: &[(String, Vec<u8>)],
        key: Option<&[u8]>,
        ordinal: u64,
    ) -> Result<(), PipelineError> {
        let schema = self.dead_letter_schema().await?;
        let mut datum = datum;
        loop {
            let mut value = Vec::with_capacity(datum.len() + 10);
            schema.write_header(&mut value);
            value.extend_from_slice(&datum);
            let header_refs = header_refs(headers);
            let message = Outgoing {
                topic: &self.dead_letter_topic,
                key,
                payload: Some(&value),
                headers: &header_refs,
            };
            let err = match self
                .sink
                .send(&message, ordinal, MessageKind::DeadLetter)
                .await
            {
                Ok(()) => return Ok(()),
                Err(err) => err,
            };
            if err.is_too_large() {
                if let Some(smaller) = deadletter::shrink(&datum) {
                    tracing::warn!(
                        "dead letter too large for the broker: sending it without the change itself"
                    );
                    datum = smaller;
                    continue;
                }
            }
            return Err(if err.is_message_fault() {
                PipelineError::DeadLetterRefused {
                    topic: self.dead_letter_topic.clone(),
                    reason: err.to_string(),
                }
            } else {
                err.into()
            });
        }
    }

    /// The broker refused a message for good: it goes to the dead-letter topic under the same ordinal, so the
    /// position still waits for it. A refused dead letter is sent once more without the change if it was too
    /// large, and otherwise stops the pipeline, as does a refused schema.
    pub(super) async fn handle_failure(
        &mut self,
        failure: FailedDelivery,
    ) -> Result<(), PipelineError> {
        if failure.dead_letter {
            let smaller = is_too_large(&failure.error)
                .then(|| {
                    let payload = failure.payload.as_deref()?;
                    let (_, datum) = SchemaRef::split(payload)?;
                    deadletter::shrink(datum)
                })
                .flatten();
            return match smaller {
                Some(smaller) => {
                    tracing::warn!(
                        "dead letter too large for the broker: sending it without the change itself"
                    );
                    self.produce_dead_letter(
                        smaller,
                        &failure.headers,
                        failure.key.as_deref(),
                        failure.ordinal,
                    )
                    .await
                }
                None => Err(PipelineError::DeadLetterRefused {
                    topic: failure.topic,
                    reason: failure.error.to_string(),
                }),
            };
        }
        if Some(failure.topic.as_str()) == self.schemas.schemas_topic() {
            return Err(PipelineError::SchemaTopicRefused {
                topic: failure.topic,
                reason: failure.error.to_string(),
            });
        }
        let reason = format!("the broker refused the message: {}", failure.error);
        let mut rejection = Rejection::new(
            Stage::Produce,
            &failure.topic,
            reason,
            Subject::Record {
                key: failure.key.clone(),
                value: failure.payload,
                headers: failure.headers,
            },
        );
        rejection.key = failure.key;
        rejection.ordinal = Some(failure.ordinal);
        self.dead_letter(rejection).await
    }

    /// Waits until the broker has acknowledged everything, still routing refused messages; once a stop
    /// is requested, no longer than its deadline.
    pub(super) async fn drain(
        &mut self,
        failures: &mut mpsc::UnboundedReceiver<FailedDelivery>,
    ) -> Result<(), PipelineError> {
        while self.tracker.outstanding() > 0 {
            if self.stop_deadline.passed() {
                return Err(PipelineError::DrainTimeout {
                    outstanding: self.tracker.outstanding(),
                    timeout: self.shutdown_timeout,
                });
            }
            tokio::select! {
                Some(failure) = failures.recv() => self.handle_failure(failure).await?,
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        Ok(())
    }
}

/// Owned header pairs as the sink takes them.
pub(super) fn header_refs(headers: &[(String, Vec<u8>)]) -> Vec<(&str, &[u8])> {
    headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_slice()))
        .collect()
}
