//! Where the writers' schemas go, so that a consumer can read every message. With a registry, each schema
//! is registered under its subject and messages carry the registry id. Without one, each schema is
//! published to the compacted schemas topic (key: its fingerprint in hex; value: the schema's JSON text)
//! and written to `[positions].dir/schemas/<fingerprint>.avsc`, and messages carry the fingerprint
//! (Avro's single-object encoding). Either way a schema is on its way before the first message that needs it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use super::{PipelineError, Publisher};
use crate::avro::{AvroSchema, Fingerprint, SchemaRef, TableSchemas};
use crate::config::SubjectNameStrategy;
use crate::positions::write_atomically;
use crate::registry::{self, RegistryClient, RegistryError, SchemaPart};
use crate::sink::Outgoing;

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
        /// Fingerprints published by this run, with the text published for each.
        published: HashMap<Fingerprint, String>,
    },
}

impl SchemaDirectory {
    pub fn topic(topic: String, positions_dir: PathBuf) -> SchemaDirectory {
        SchemaDirectory::Topic {
            topic,
            dir: positions_dir.join("schemas"),
            published: HashMap::new(),
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

impl Publisher {
    /// The key and value schema references of a topic's schemas. `Ok(Err(..))` is a refusal of the schema
    /// itself (the events go to the dead-letter topic); `Err` stops the pipeline.
    pub(super) async fn schema_refs(
        &mut self,
        schemas: &TableSchemas,
    ) -> Result<Result<(Option<SchemaRef>, SchemaRef), RegistryError>, PipelineError> {
        let key = match &schemas.key {
            Some(key) => match self
                .schema_ref(&schemas.topic, SchemaPart::Key, key)
                .await?
            {
                Ok(found) => Some(found),
                Err(err) => return Ok(Err(err)),
            },
            None => None,
        };
        let value = self
            .schema_ref(&schemas.topic, SchemaPart::Value, &schemas.value)
            .await?;
        Ok(value.map(|value| (key, value)))
    }

    pub(super) async fn schema_ref(
        &mut self,
        topic: &str,
        part: SchemaPart,
        schema: &AvroSchema,
    ) -> Result<Result<SchemaRef, RegistryError>, PipelineError> {
        match &self.schemas {
            SchemaDirectory::Registry { .. } => self.register(topic, part, schema).await,
            SchemaDirectory::Topic { .. } => self.publish_schema(topic, part, schema).await.map(Ok),
        }
    }

    /// Registers a schema, retrying with backoff while the registry is unreachable; events wait meanwhile.
    async fn register(
        &mut self,
        topic: &str,
        part: SchemaPart,
        schema: &AvroSchema,
    ) -> Result<Result<SchemaRef, RegistryError>, PipelineError> {
        let SchemaDirectory::Registry { client, strategy } = &self.schemas else {
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
                    if *self.stop.borrow() {
                        return Err(PipelineError::StoppedWaitingForRegistry(err));
                    }
                    tracing::warn!(error = %err, subject, retry_in = ?delay, "schema registry unavailable; events wait");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.stop.changed() => {}
                    }
                    delay = (delay * 2).min(MAX_REGISTRY_BACKOFF);
                }
                Err(err) if err.is_schema_fault() => return Ok(Err(err)),
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Publishes a schema to the schemas topic and its directory once per run, and waits until the broker
    /// has it, so that no message naming its fingerprint is on the broker before it.
    async fn publish_schema(
        &mut self,
        topic: &str,
        part: SchemaPart,
        schema: &AvroSchema,
    ) -> Result<SchemaRef, PipelineError> {
        let SchemaDirectory::Topic {
            topic: schemas_topic,
            dir,
            published,
        } = &self.schemas
        else {
            unreachable!("publish_schema is only called without a registry");
        };
        let fingerprint =
            Fingerprint::of_json(&schema.json).expect("generated schemas are valid JSON schemas");
        match published.get(&fingerprint) {
            Some(text) if *text == schema.json => return Ok(SchemaRef::Fingerprint(fingerprint)),
            // Parsing Canonical Form leaves out logical types, so a column's change of logical type alone
            // keeps the fingerprint; the later text replaces the earlier one on the compacted topic.
            Some(_) => {
                tracing::warn!(fingerprint = %fingerprint.hex(), topic, "a schema with the same fingerprint but other logical types: publishing the new text")
            }
            None => {}
        }
        let (schemas_topic, dir) = (schemas_topic.clone(), dir.clone());
        let hex = fingerprint.hex();
        let path = dir.join(format!("{hex}.avsc"));
        let written = std::fs::create_dir_all(&dir)
            .and_then(|()| write_atomically(&path, schema.json.as_bytes()));
        if let Err(source) = written {
            return Err(PipelineError::SchemaFile { path, source });
        }
        self.sink
            .ensure_topic_with(&schemas_topic, &[("cleanup.policy", "compact")], &self.stop)
            .await?;
        let part_name = match part {
            SchemaPart::Key => "key",
            SchemaPart::Value => "value",
        };
        let headers: [(&str, &[u8]); 3] = [
            ("sluice.schema.fingerprint", hex.as_bytes()),
            ("sluice.schema.topic", topic.as_bytes()),
            ("sluice.schema.part", part_name.as_bytes()),
        ];
        let record = Outgoing {
            topic: &schemas_topic,
            key: Some(hex.as_bytes()),
            payload: Some(schema.json.as_bytes()),
            headers: &headers,
        };
        // Tracked like an event: the position waits for the schema as well.
        let ordinal = self.tracker.register();
        self.sink
            .send(&record, ordinal, false, &self.stop)
            .await
            .map_err(|err| PipelineError::SchemaTopicRefused {
                topic: schemas_topic.clone(),
                reason: err.to_string(),
            })?;
        // Messages of other topics may reach a consumer first unless the schema is acknowledged before them.
        while self.sink.in_flight() > 0 && !*self.stop.borrow() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tracing::info!(fingerprint = %hex, topic, part = part_name, file = %path.display(), "schema published");
        if let SchemaDirectory::Topic { published, .. } = &mut self.schemas {
            published.insert(fingerprint, schema.json.clone());
        }
        Ok(SchemaRef::Fingerprint(fingerprint))
    }
}
