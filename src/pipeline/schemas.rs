//! Where the writers' schemas go, so that a consumer can read every message. With a registry, each schema
//! is registered under its subject and messages carry the registry id. Without one, each schema is
//! published to the compacted schemas topic (key: its fingerprint in hex; value: the schema's JSON text)
//! and written to `[positions].dir/schemas/<fingerprint>.avsc`, and messages carry the fingerprint
//! (Avro's single-object encoding). Either way a schema is on its way before the first message that needs it.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

use super::ack::AckTracker;
use super::error::PipelineError;
use crate::avro::{AvroSchema, Fingerprint, SchemaRef, TableSchemas};
use crate::config::SubjectNameStrategy;
use crate::registry::{self, RegistryClient, SchemaPart};
use crate::sink::{MessageKind, Outgoing, Sink, SinkError};
use sluice_core::positions::write_atomically;

/// The registry, or the schemas topic and directory.
pub enum SchemaDirectory {
    Registry {
        client: RegistryClient,
        strategy: SubjectNameStrategy,
    },
    Topic {
        topic: String,
        /// `<positions.dir>/schemas`.
        dir: PathBuf,
        /// Every fingerprint published, by earlier runs (their files) and this one, with its text.
        known: HashMap<Fingerprint, String>,
        /// Fingerprints this run has put on the topic.
        published: HashSet<Fingerprint>,
    },
}

impl SchemaDirectory {
    /// Registry-free: the schemas topic, and the directory whose files say what earlier runs published.
    pub fn topic(topic: String, positions_dir: PathBuf) -> SchemaDirectory {
        let dir = positions_dir.join("schemas");
        let known = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let path = entry.path();
                let fingerprint = Fingerprint::from_hex(path.file_stem()?.to_str()?)?;
                Some((fingerprint, std::fs::read_to_string(&path).ok()?))
            })
            .collect();
        SchemaDirectory::Topic {
            topic,
            dir,
            known,
            published: HashSet::new(),
        }
    }

    /// The schemas topic, in registry-free mode.
    pub fn schemas_topic(&self) -> Option<&str> {
        match self {
            SchemaDirectory::Topic { topic, .. } => Some(topic),
            SchemaDirectory::Registry { .. } => None,
        }
    }
}

/// A registry that stays down longer than this between attempts is asked again no later than this.
const MAX_REGISTRY_BACKOFF: Duration = Duration::from_secs(10);

/// What putting a schema on its way takes from the publishing loop: the sink (for the schemas topic),
/// the tracker (the position waits for a published schema as for an event) and the stop request (which
/// ends a wait for the registry).
pub struct Outlet<'a> {
    pub sink: &'a mut Sink,
    pub tracker: &'a AckTracker,
    pub stop: &'a mut watch::Receiver<bool>,
}

impl SchemaDirectory {
    /// The key and value schema references of a topic's schemas. `Ok(Err(reason))` is a refusal of the
    /// schema itself (the events go to the dead-letter topic); `Err` stops the pipeline.
    pub async fn schema_refs(
        &mut self,
        outlet: &mut Outlet<'_>,
        schemas: &TableSchemas,
    ) -> Result<Result<(Option<SchemaRef>, SchemaRef), String>, PipelineError> {
        let key = match &schemas.key {
            Some(key) => match self
                .schema_ref(outlet, &schemas.topic, SchemaPart::Key, key)
                .await?
            {
                Ok(found) => Some(found),
                Err(err) => return Ok(Err(err)),
            },
            None => None,
        };
        let value = self
            .schema_ref(outlet, &schemas.topic, SchemaPart::Value, &schemas.value)
            .await?;
        Ok(value.map(|value| (key, value)))
    }

    /// One schema's reference: registered, or published to the schemas topic.
    pub async fn schema_ref(
        &mut self,
        outlet: &mut Outlet<'_>,
        topic: &str,
        part: SchemaPart,
        schema: &AvroSchema,
    ) -> Result<Result<SchemaRef, String>, PipelineError> {
        match self {
            SchemaDirectory::Registry { .. } => {
                self.register(outlet.stop, topic, part, schema).await
            }
            SchemaDirectory::Topic { .. } => self.publish_schema(outlet, topic, part, schema).await,
        }
    }

    /// Registers a schema, retrying with backoff while the registry is unreachable; events wait meanwhile.
    async fn register(
        &self,
        stop: &mut watch::Receiver<bool>,
        topic: &str,
        part: SchemaPart,
        schema: &AvroSchema,
    ) -> Result<Result<SchemaRef, String>, PipelineError> {
        let SchemaDirectory::Registry { client, strategy } = self else {
            unreachable!("register is only called with a registry");
        };
        let subject = registry::subject(
            *strategy,
            topic,
            part,
            &registry::record_name(&schema.schema),
        );
        let mut delay = Duration::from_millis(500);
        loop {
            match client.register(&subject, &schema.json).await {
                Ok(id) => return Ok(Ok(SchemaRef::RegistryId(id))),
                Err(err) if err.is_retryable() => {
                    if *stop.borrow() {
                        return Err(PipelineError::StoppedWaitingForRegistry(err));
                    }
                    tracing::warn!(error = %err, subject, retry_in = ?delay, "schema registry unavailable; events wait");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        Ok(()) = stop.changed() => {}
                    }
                    delay = (delay * 2).min(MAX_REGISTRY_BACKOFF);
                }
                Err(err) if err.is_schema_fault() => return Ok(Err(err.to_string())),
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Publishes a schema to the schemas topic and its directory once per run, and waits until the broker
    /// has it, so that no message naming its fingerprint is on the broker before it. A schema whose
    /// fingerprint an earlier, different schema already has is refused (`Ok(Err)`): Parsing Canonical
    /// Form leaves out logical types, precision and scale, and replacing the earlier text would make its
    /// messages decode wrongly.
    async fn publish_schema(
        &mut self,
        outlet: &mut Outlet<'_>,
        topic: &str,
        part: SchemaPart,
        schema: &AvroSchema,
    ) -> Result<Result<SchemaRef, String>, PipelineError> {
        let SchemaDirectory::Topic {
            topic: schemas_topic,
            dir,
            known,
            published,
        } = &*self
        else {
            unreachable!("publish_schema is only called without a registry");
        };
        let Some(fingerprint) = Fingerprint::of_json(&schema.json) else {
            unreachable!("generated schemas are valid JSON schemas");
        };
        let hex = fingerprint.hex();
        match known.get(&fingerprint) {
            Some(text) if *text != schema.json => {
                return Ok(Err(format!(
                    "the schema for {topic} has the fingerprint {hex} of an earlier schema that differs only in \
                     logical types, precision or scale; publishing it would change how that schema's messages \
                     decode. Use a schema registry (avro.registry_url) for such type changes"
                )))
            }
            Some(_) if published.contains(&fingerprint) => {
                return Ok(Ok(SchemaRef::Fingerprint(fingerprint)))
            }
            _ => {}
        }
        let (schemas_topic, dir) = (schemas_topic.clone(), dir.clone());
        let path = dir.join(format!("{hex}.avsc"));
        let written = std::fs::create_dir_all(&dir)
            .and_then(|()| write_atomically(&path, schema.json.as_bytes()));
        if let Err(source) = written {
            return Err(PipelineError::SchemaFile { path, source });
        }
        outlet
            .send_schema(&schemas_topic, &hex, topic, part, &schema.json)
            .await?;
        tracing::info!(fingerprint = %hex, topic, part = part.as_str(), file = %path.display(), "schema published");
        if let SchemaDirectory::Topic {
            known, published, ..
        } = self
        {
            known.insert(fingerprint, schema.json.clone());
            published.insert(fingerprint);
        }
        Ok(Ok(SchemaRef::Fingerprint(fingerprint)))
    }
}

impl Outlet<'_> {
    /// Puts a schema's JSON text on the schemas topic (created compacted), keyed by its fingerprint in
    /// `hex`, and waits until the broker has it.
    async fn send_schema(
        &mut self,
        schemas_topic: &str,
        hex: &str,
        topic: &str,
        part: SchemaPart,
        json: &str,
    ) -> Result<(), PipelineError> {
        self.sink
            .ensure_topic_with(schemas_topic, &[("cleanup.policy", "compact")], self.stop)
            .await?;
        let headers: [(&str, &[u8]); 3] = [
            ("sluice.schema.fingerprint", hex.as_bytes()),
            ("sluice.schema.topic", topic.as_bytes()),
            ("sluice.schema.part", part.as_str().as_bytes()),
        ];
        let record = Outgoing {
            topic: schemas_topic,
            key: Some(hex.as_bytes()),
            payload: Some(json.as_bytes()),
            headers: &headers,
        };
        // Tracked like an event as well: the position waits for the schema.
        let ordinal = self.tracker.register();
        let refused = |err: SinkError| PipelineError::SchemaTopicRefused {
            topic: schemas_topic.to_owned(),
            reason: err.to_string(),
        };
        self.sink
            .send(&record, ordinal, MessageKind::Schema)
            .await
            .map_err(refused)?;
        self.sink
            .schema_delivered(self.stop)
            .await
            .map_err(refused)?;
        Ok(())
    }
}
