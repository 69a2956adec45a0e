//! `sluice tail`: reads a change topic (or the dead-letter topic) and prints each message decoded, as one
//! JSON object per line — for people who would rather look than write a consumer.
//!
//! Both framings are decoded: Confluent's (a zero byte and a registry id) with the schema fetched from the
//! registry, and Avro's single-object encoding (`C3 01` and a fingerprint) with the schema found on the
//! schemas topic. Other payloads are printed as JSON when they are JSON, as text when they are text.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use apache_avro::schema::{Name, RecordSchema, Schema};
use apache_avro::types::Value as Avro;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Map, Value as Json};
pub use sluice_core::json::finite_or_text;

use crate::avro::{decimal, Fingerprint, SchemaRef, VARIABLE_SCALE_DECIMAL};
use crate::registry::{RegistryClient, RegistryError, RegistrySettings};

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("cannot read topic `{topic}`: {source}")]
    Kafka {
        topic: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("topic `{0}` does not exist")]
    NoSuchTopic(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("schema {schema} does not parse: {reason}")]
    BadSchema { schema: String, reason: String },
    #[error("message does not match its schema {schema}: {reason}")]
    Undecodable { schema: String, reason: String },
    #[error("the message names schema {0}, which is neither on the schemas topic nor in the schemas directory")]
    UnknownFingerprint(String),
    #[error("the message names registry schema {0}, but no avro.registry_url is configured")]
    NoRegistry(u32),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

/// Where single-object schemas are found: the schemas topic, then the schemas directory.
pub struct SchemaLookup {
    pub brokers: String,
    pub properties: Vec<(String, String)>,
    pub topic: String,
    /// `[positions].dir/schemas`, when this host has it.
    pub dir: Option<PathBuf>,
}

impl SchemaLookup {
    /// Every schema on the topic and in the directory, by fingerprint.
    fn load(&self) -> HashMap<Fingerprint, String> {
        let mut found = HashMap::new();
        if let Some(entries) = self.dir.as_ref().and_then(|d| std::fs::read_dir(d).ok()) {
            for path in entries.flatten().map(|e| e.path()) {
                let fingerprint = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(Fingerprint::from_hex);
                if let (Some(fingerprint), Ok(text)) = (fingerprint, std::fs::read_to_string(&path))
                {
                    found.insert(fingerprint, text);
                }
            }
        }
        // Later records win, as compaction would have it.
        let consumer = match consumer(&self.brokers, &self.properties) {
            Ok(consumer) => consumer,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the schemas topic");
                return found;
            }
        };
        let read = read_topic(
            &consumer,
            &self.topic,
            StartAt::Beginning,
            false,
            |message| {
                let key = message.key().and_then(|k| std::str::from_utf8(k).ok());
                let value = message.payload().and_then(|v| std::str::from_utf8(v).ok());
                if let (Some(fingerprint), Some(text)) =
                    (key.and_then(Fingerprint::from_hex), value)
                {
                    found.insert(fingerprint, text.to_owned());
                }
                Ok(())
            },
        );
        if let Err(err) = read {
            tracing::warn!(error = %err, topic = %self.topic, "cannot read the schemas topic");
        }
        found
    }
}

/// Decodes message bodies, caching schemas by registry id and by fingerprint.
pub struct MessageDecoder {
    registry: Option<RegistryClient>,
    /// None: only the schemas it was made with (`with_schemas`).
    lookup: Option<SchemaLookup>,
    by_id: HashMap<u32, Arc<ParsedSchema>>,
    by_fingerprint: HashMap<Fingerprint, Arc<ParsedSchema>>,
    /// Schema texts read from the schemas topic, parsed on first use.
    texts: HashMap<Fingerprint, String>,
}

/// A writer schema parsed once, for decoding many datums written with it.
pub struct ParsedSchema {
    /// What errors call it: "id 7", "fingerprint …".
    label: String,
    schema: Schema,
    names: HashMap<Name, Schema>,
}

impl ParsedSchema {
    pub fn parse(label: &str, text: &str) -> Result<ParsedSchema, TailError> {
        let bad = |err: apache_avro::Error| TailError::BadSchema {
            schema: label.to_owned(),
            reason: err.to_string(),
        };
        let schema = Schema::parse_str(text).map_err(bad)?;
        let names = named_types(&schema).map_err(bad)?;
        Ok(ParsedSchema {
            label: label.to_owned(),
            schema,
            names,
        })
    }

    /// One Avro datum (the body after the framing header) as JSON; bytes left over mean it was not
    /// written with this schema.
    pub fn decode(&self, datum: &[u8]) -> Result<Json, TailError> {
        let undecodable = |reason: String| TailError::Undecodable {
            schema: self.label.clone(),
            reason,
        };
        let mut reader = datum;
        let value = apache_avro::from_avro_datum(&self.schema, &mut reader, None)
            .map_err(|err| undecodable(err.to_string()))?;
        if !reader.is_empty() {
            return Err(undecodable(format!(
                "{} bytes left over after the datum",
                reader.len()
            )));
        }
        Ok(avro_json(&value, &self.schema, &self.names))
    }
}

impl MessageDecoder {
    pub fn new(registry: Option<RegistryClient>, lookup: SchemaLookup) -> MessageDecoder {
        MessageDecoder {
            registry,
            lookup: Some(lookup),
            by_id: HashMap::new(),
            by_fingerprint: HashMap::new(),
            texts: HashMap::new(),
        }
    }

    /// A decoder that knows only `texts` (schema texts by fingerprint) and no registry: it reads no topic,
    /// for decoding without a broker (the fuzz target in `fuzz/`).
    pub fn with_schemas(texts: HashMap<Fingerprint, String>) -> MessageDecoder {
        MessageDecoder {
            registry: None,
            lookup: None,
            by_id: HashMap::new(),
            by_fingerprint: HashMap::new(),
            texts,
        }
    }

    /// A message body as JSON: decoded Avro in either framing, a JSON document, text, or (failing all)
    /// `{"bytes": "<hex>"}`.
    pub async fn decode(&mut self, body: &[u8]) -> Result<Json, TailError> {
        let framed = match SchemaRef::split(body) {
            Some((SchemaRef::RegistryId(id), datum)) if self.registry.is_some() => {
                Some((self.by_registry_id(id).await?, datum))
            }
            Some((SchemaRef::Fingerprint(fingerprint), datum)) => {
                Some((self.by_fingerprint(fingerprint)?, datum))
            }
            _ => None,
        };
        if let Some((parsed, datum)) = framed {
            return parsed.decode(datum);
        }
        if let Ok(json) = serde_json::from_slice::<Json>(body) {
            return Ok(json);
        }
        match (std::str::from_utf8(body), SchemaRef::split(body)) {
            (_, Some((SchemaRef::RegistryId(id), _))) if body.len() > 5 => {
                Err(TailError::NoRegistry(id))
            }
            (Ok(text), _) => Ok(json!(text)),
            (Err(_), _) => Ok(json!({ "bytes": hex(body) })),
        }
    }

    async fn by_registry_id(&mut self, id: u32) -> Result<Arc<ParsedSchema>, TailError> {
        if let Some(parsed) = self.by_id.get(&id) {
            return Ok(parsed.clone());
        }
        let registry = self.registry.as_ref().ok_or(TailError::NoRegistry(id))?;
        let text = registry.schema_by_id(id).await?;
        let parsed = Arc::new(ParsedSchema::parse(&format!("id {id}"), &text)?);
        self.by_id.insert(id, parsed.clone());
        Ok(parsed)
    }

    fn by_fingerprint(&mut self, fingerprint: Fingerprint) -> Result<Arc<ParsedSchema>, TailError> {
        if let Some(parsed) = self.by_fingerprint.get(&fingerprint) {
            return Ok(parsed.clone());
        }
        if let (false, Some(lookup)) = (self.texts.contains_key(&fingerprint), &self.lookup) {
            // A schema published since the last look (with --follow, or a new table version).
            self.texts = lookup.load();
        }
        let text = self
            .texts
            .get(&fingerprint)
            .ok_or_else(|| TailError::UnknownFingerprint(fingerprint.hex()))?;
        let parsed = Arc::new(ParsedSchema::parse(
            &format!("fingerprint {}", fingerprint.hex()),
            text,
        )?);
        self.by_fingerprint.insert(fingerprint, parsed.clone());
        Ok(parsed)
    }
}

/// Decodes one Avro datum (the body after the framing header) written with `schema_text`, as JSON.
pub fn decode_datum(schema_text: &str, datum: &[u8]) -> Result<Json, TailError> {
    ParsedSchema::parse("given", schema_text)?.decode(datum)
}

/// Every named type a schema defines, by name: what [`avro_json`] looks references up in.
pub fn named_types(schema: &Schema) -> Result<HashMap<Name, Schema>, apache_avro::Error> {
    let resolved = apache_avro::schema::ResolvedSchema::try_from(schema)?;
    Ok(resolved
        .get_names()
        .iter()
        .map(|(name, schema)| (name.clone(), (*schema).clone()))
        .collect())
}

/// Avro to JSON, guided by the schema so that logical types read naturally (decimals as exact strings).
pub fn avro_json(value: &Avro, schema: &Schema, names: &HashMap<Name, Schema>) -> Json {
    let schema = match schema {
        Schema::Ref { name } => names.get(name).unwrap_or(schema),
        other => other,
    };
    match (value, schema) {
        (Avro::Union(index, inner), Schema::Union(union)) => {
            match union.variants().get(*index as usize) {
                Some(variant) => avro_json(inner, variant, names),
                None => Json::Null,
            }
        }
        (Avro::Union(_, inner), other) => avro_json(inner, other, names),
        // Debezium's numeric without a declared scale: printed as the exact decimal it stands for.
        (Avro::Record(fields), Schema::Record(record))
            if record.name.fullname(None) == VARIABLE_SCALE_DECIMAL =>
        {
            variable_scale_decimal_json(fields)
        }
        (Avro::Record(fields), Schema::Record(record)) => record_json(fields, record, names),
        (Avro::Decimal(decimal), Schema::Decimal(decimal_schema)) => {
            let bytes: Vec<u8> = decimal.try_into().unwrap_or_default();
            json!(decimal_text(&bytes, decimal_schema.scale))
        }
        (Avro::Bytes(bytes), Schema::Decimal(decimal_schema)) => {
            json!(decimal_text(bytes, decimal_schema.scale))
        }
        (Avro::Null, _) => Json::Null,
        (Avro::Boolean(v), _) => json!(v),
        (Avro::Int(v) | Avro::Date(v) | Avro::TimeMillis(v), _) => json!(v),
        (
            Avro::Long(v)
            | Avro::TimeMicros(v)
            | Avro::TimestampMillis(v)
            | Avro::TimestampMicros(v)
            | Avro::TimestampNanos(v)
            | Avro::LocalTimestampMillis(v)
            | Avro::LocalTimestampMicros(v)
            | Avro::LocalTimestampNanos(v),
            _,
        ) => json!(v),
        (Avro::Float(v), _) => finite_or_text(f64::from(*v)),
        (Avro::Double(v), _) => finite_or_text(*v),
        (Avro::String(v) | Avro::Enum(_, v), _) => json!(v),
        (Avro::Uuid(v), _) => json!(v.to_string()),
        (Avro::Bytes(v) | Avro::Fixed(_, v), _) => json!(hex(v)),
        (Avro::Array(items), Schema::Array(array)) => Json::Array(
            items
                .iter()
                .map(|v| avro_json(v, &array.items, names))
                .collect(),
        ),
        (Avro::Map(entries), Schema::Map(map)) => Json::Object(
            entries
                .iter()
                .map(|(k, v)| (k.clone(), avro_json(v, &map.types, names)))
                .collect(),
        ),
        (other, _) => Json::try_from(other.clone()).unwrap_or(Json::Null),
    }
}

/// Debezium's variable-scale decimal record (scale, unscaled bytes) as the exact decimal text.
fn variable_scale_decimal_json(fields: &[(String, Avro)]) -> Json {
    match fields {
        // PostgreSQL's largest numeric scale bounds what a real message holds.
        [(_, Avro::Int(scale)), (_, Avro::Bytes(unscaled))] if (0..=16383).contains(scale) => {
            json!(decimal_text(unscaled, *scale as usize))
        }
        _ => Json::Null,
    }
}

/// A record as a JSON object, each field guided by its schema in `record`.
fn record_json(
    fields: &[(String, Avro)],
    record: &RecordSchema,
    names: &HashMap<Name, Schema>,
) -> Json {
    let mut object = Map::with_capacity(fields.len());
    for (name, field_value) in fields {
        let field_schema = record
            .fields
            .iter()
            .find(|f| &f.name == name)
            .map(|f| &f.schema);
        let json = match field_schema {
            Some(s) => avro_json(field_value, s, names),
            None => avro_json(field_value, &Schema::Null, names),
        };
        object.insert(name.clone(), json);
    }
    Json::Object(object)
}

/// A two's-complement big-endian unscaled integer and a scale, as decimal text (`-12.34`).
pub fn decimal_text(bytes: &[u8], scale: usize) -> String {
    decimal::display(&decimal::unscaled_text(bytes), scale)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where to start reading.
#[derive(Clone, Copy, Debug)]
pub enum StartAt {
    Beginning,
    End,
    Offset(i64),
}

pub struct TailOptions {
    pub brokers: String,
    pub topic: String,
    pub start: StartAt,
    pub follow: bool,
    pub registry: Option<RegistrySettings>,
    /// Without a registry: the schemas topic and directory.
    pub schemas_topic: String,
    pub schemas_dir: Option<PathBuf>,
    /// librdkafka properties for the connection (security settings from `[sink.kafka]`).
    pub properties: Vec<(String, String)>,
}

fn consumer(
    brokers: &str,
    properties: &[(String, String)],
) -> Result<BaseConsumer, rdkafka::error::KafkaError> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", "sluice-tail")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    for (key, value) in properties {
        config.set(key, value);
    }
    config.create()
}

/// Hands every message of `topic` from `start` to `each`, up to the end of each partition as it was at the
/// start (or forever with `follow`).
fn read_topic(
    consumer: &BaseConsumer,
    topic: &str,
    start: StartAt,
    follow: bool,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> Result<(), TailError>,
) -> Result<(), TailError> {
    let kafka = |source| TailError::Kafka {
        topic: topic.to_owned(),
        source,
    };
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(kafka)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(TailError::NoSuchTopic(topic.to_owned()));
    }
    // Where each partition ends now: without `follow`, reading stops there.
    let mut remaining = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for partition in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, *partition, Duration::from_secs(10))
            .map_err(kafka)?;
        let (offset, first) = match start {
            StartAt::Beginning => (Offset::Beginning, low),
            StartAt::End => (Offset::End, high),
            StartAt::Offset(n) => (Offset::Offset(n.clamp(low, high)), n.clamp(low, high)),
        };
        if first < high {
            remaining.insert(*partition, high);
        }
        assignment
            .add_partition_offset(topic, *partition, offset)
            .map_err(kafka)?;
    }
    consumer.assign(&assignment).map_err(kafka)?;
    while follow || !remaining.is_empty() {
        let Some(result) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = result.map_err(kafka)?;
        each(&message)?;
        if remaining
            .get(&message.partition())
            .is_some_and(|high| message.offset() + 1 >= *high)
        {
            remaining.remove(&message.partition());
        }
    }
    Ok(())
}

/// Prints every message from `start` to the end (or forever with `follow`) as JSON lines to `out`.
pub async fn run(options: &TailOptions, out: &mut impl Write) -> Result<u64, TailError> {
    let consumer =
        consumer(&options.brokers, &options.properties).map_err(|source| TailError::Kafka {
            topic: options.topic.clone(),
            source,
        })?;
    let registry = options
        .registry
        .as_ref()
        .map(RegistryClient::new)
        .transpose()?;
    // Both framings, whichever this instance writes: a topic may hold messages of an earlier setting.
    let lookup = SchemaLookup {
        brokers: options.brokers.clone(),
        properties: options.properties.clone(),
        topic: options.schemas_topic.clone(),
        dir: options.schemas_dir.clone(),
    };
    let mut decoder = MessageDecoder::new(registry, lookup);
    // Decoding may ask the registry (async) while the consumer is polled (blocking): collect a message's
    // parts, then decode them outside the poll callback.
    let mut printed = 0;
    let runtime = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        read_topic(
            &consumer,
            &options.topic,
            options.start,
            options.follow,
            |message| {
                let mut decode = |body: Option<&[u8]>| match body {
                    Some(body) => runtime
                        .block_on(decoder.decode(body))
                        .unwrap_or_else(|err| json!({ "error": err.to_string() })),
                    None => Json::Null,
                };
                let key = decode(message.key());
                let value = decode(message.payload());
                let headers: Map<String, Json> = message
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    json!(String::from_utf8_lossy(h.value.unwrap_or_default())),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let line = json!({
                    "topic": message.topic(),
                    "partition": message.partition(),
                    "offset": message.offset(),
                    "key": key,
                    "value": value,
                    "headers": headers,
                });
                serde_json::to_writer(&mut *out, &line).map_err(std::io::Error::from)?;
                out.write_all(b"\n")?;
                if options.follow {
                    out.flush()?;
                }
                printed += 1;
                Ok(())
            },
        )
    })?;
    out.flush()?;
    Ok(printed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_print_exactly() {
        assert_eq!(decimal_text(&[0x30, 0x39], 2), "123.45");
        assert_eq!(decimal_text(&[0xCF, 0xC7], 2), "-123.45");
        assert_eq!(decimal_text(&[0xFF], 3), "-0.001");
        assert_eq!(decimal_text(&[], 0), "0");
        assert_eq!(decimal_text(&[0x00, 0x80], 0), "128");
    }
}
