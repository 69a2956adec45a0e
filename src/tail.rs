//! `sluice tail`: reads a change topic (or the dead-letter topic) and prints each message decoded, as one
//! JSON object per line — for people who would rather look than write a consumer.
//!
//! Confluent-framed Avro (magic byte 0 + schema id) is decoded with the schema fetched from the registry;
//! JSON payloads (dead letters) are printed as they are.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use apache_avro::schema::{Name, Schema};
use apache_avro::types::Value as Avro;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Map, Value as Json};

use crate::avro::VARIABLE_SCALE_DECIMAL;
use crate::registry::{RegistryClient, RegistryError};

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
    #[error("schema {id} from the registry does not parse: {reason}")]
    BadSchema { id: u32, reason: String },
    #[error("message does not match its schema {id}: {reason}")]
    Undecodable { id: u32, reason: String },
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

/// Decodes message bodies, caching schemas by id.
pub struct MessageDecoder {
    registry: Option<RegistryClient>,
    schemas: HashMap<u32, Arc<ParsedSchema>>,
}

struct ParsedSchema {
    schema: Schema,
    names: HashMap<Name, Schema>,
}

impl MessageDecoder {
    pub fn new(registry: Option<RegistryClient>) -> MessageDecoder {
        MessageDecoder {
            registry,
            schemas: HashMap::new(),
        }
    }

    /// A message body as JSON: decoded Avro, a JSON document, or (failing both) `{"bytes": "<hex>"}`.
    pub async fn decode(&mut self, body: &[u8]) -> Result<Json, TailError> {
        if let (Some(0), Some(registry)) = (body.first(), &self.registry) {
            if body.len() >= 5 {
                let id = u32::from_be_bytes([body[1], body[2], body[3], body[4]]);
                let parsed = match self.schemas.get(&id) {
                    Some(parsed) => parsed.clone(),
                    None => {
                        let text = registry.schema_by_id(id).await?;
                        let parsed = Arc::new(parse_schema(id, &text)?);
                        self.schemas.insert(id, parsed.clone());
                        parsed
                    }
                };
                let mut reader = &body[5..];
                let value = apache_avro::from_avro_datum(&parsed.schema, &mut reader, None)
                    .map_err(|err| TailError::Undecodable {
                        id,
                        reason: err.to_string(),
                    })?;
                return Ok(avro_json(&value, &parsed.schema, &parsed.names));
            }
        }
        match serde_json::from_slice::<Json>(body) {
            Ok(json) => Ok(json),
            Err(_) => Ok(json!({ "bytes": hex(body) })),
        }
    }
}

/// Decodes one Avro datum (the body after the Confluent header) written with `schema_text`, as JSON.
pub fn decode_datum(schema_text: &str, datum: &[u8]) -> Result<Json, TailError> {
    let parsed = parse_schema(0, schema_text)?;
    let mut reader = datum;
    let value = apache_avro::from_avro_datum(&parsed.schema, &mut reader, None).map_err(|err| {
        TailError::Undecodable {
            id: 0,
            reason: err.to_string(),
        }
    })?;
    if !reader.is_empty() {
        let reason = format!("{} bytes left over after the datum", reader.len());
        return Err(TailError::Undecodable { id: 0, reason });
    }
    Ok(avro_json(&value, &parsed.schema, &parsed.names))
}

fn parse_schema(id: u32, text: &str) -> Result<ParsedSchema, TailError> {
    let schema = Schema::parse_str(text).map_err(|err| TailError::BadSchema {
        id,
        reason: err.to_string(),
    })?;
    let resolved = apache_avro::schema::ResolvedSchema::try_from(&schema).map_err(|err| {
        TailError::BadSchema {
            id,
            reason: err.to_string(),
        }
    })?;
    let names = resolved
        .get_names()
        .iter()
        .map(|(name, schema)| (name.clone(), (*schema).clone()))
        .collect();
    Ok(ParsedSchema { schema, names })
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
            match fields.as_slice() {
                [(_, Avro::Int(scale)), (_, Avro::Bytes(unscaled))] if *scale >= 0 => {
                    json!(decimal_text(unscaled, *scale as usize))
                }
                _ => Json::Null,
            }
        }
        (Avro::Record(fields), Schema::Record(record)) => {
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

/// JSON has no NaN or infinities: they are printed as PostgreSQL spells them.
pub fn finite_or_text(v: f64) -> Json {
    if v.is_finite() {
        json!(v)
    } else if v.is_nan() {
        json!("NaN")
    } else if v > 0.0 {
        json!("Infinity")
    } else {
        json!("-Infinity")
    }
}

/// A two's-complement big-endian unscaled integer and a scale, as decimal text (`-12.34`).
pub fn decimal_text(bytes: &[u8], scale: usize) -> String {
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut magnitude: Vec<u8> = bytes.to_vec();
    if negative {
        // Two's complement negation: invert, add one.
        for byte in magnitude.iter_mut() {
            *byte = !*byte;
        }
        for byte in magnitude.iter_mut().rev() {
            let (sum, carry) = byte.overflowing_add(1);
            *byte = sum;
            if !carry {
                break;
            }
        }
    }
    // Repeated division by 10 over the big-endian bytes.
    let mut digits = Vec::new();
    while magnitude.iter().any(|b| *b != 0) {
        let mut remainder = 0u32;
        for byte in magnitude.iter_mut() {
            let current = (remainder << 8) | u32::from(*byte);
            *byte = (current / 10) as u8;
            remainder = current % 10;
        }
        digits.push(b'0' + remainder as u8);
    }
    if digits.is_empty() {
        digits.push(b'0');
    }
    while digits.len() <= scale {
        digits.push(b'0');
    }
    digits.reverse();
    let text = String::from_utf8(digits).unwrap_or_default();
    let (whole, fraction) = text.split_at(text.len() - scale);
    let sign = if negative { "-" } else { "" };
    if scale == 0 {
        format!("{sign}{whole}")
    } else {
        format!("{sign}{whole}.{fraction}")
    }
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
    pub registry_url: Option<String>,
    /// librdkafka properties for the connection (security settings from `[sink.kafka]`).
    pub properties: Vec<(String, String)>,
}

/// Prints every message from `start` to the end (or forever with `follow`) as JSON lines to `out`.
pub async fn run(options: &TailOptions, out: &mut impl Write) -> Result<u64, TailError> {
    let kafka = |source| TailError::Kafka {
        topic: options.topic.clone(),
        source,
    };
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &options.brokers)
        .set("group.id", "sluice-tail")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    for (key, value) in &options.properties {
        config.set(key, value);
    }
    let consumer: BaseConsumer = config.create().map_err(kafka)?;
    let metadata = consumer
        .fetch_metadata(Some(&options.topic), Duration::from_secs(10))
        .map_err(kafka)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == options.topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(TailError::NoSuchTopic(options.topic.clone()));
    }
    // Where each partition ends now: without --follow, reading stops there.
    let mut remaining = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for partition in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(&options.topic, *partition, Duration::from_secs(10))
            .map_err(kafka)?;
        let offset = match options.start {
            StartAt::Beginning => Offset::Beginning,
            StartAt::End => Offset::End,
            StartAt::Offset(n) => Offset::Offset(n.clamp(low, high)),
        };
        let first = match options.start {
            StartAt::Beginning => low,
            StartAt::End => high,
            StartAt::Offset(n) => n.clamp(low, high),
        };
        if first < high {
            remaining.insert(*partition, high);
        }
        assignment
            .add_partition_offset(&options.topic, *partition, offset)
            .map_err(kafka)?;
    }
    consumer.assign(&assignment).map_err(kafka)?;

    let registry = options
        .registry_url
        .as_deref()
        .map(RegistryClient::new)
        .transpose()?;
    let mut decoder = MessageDecoder::new(registry);
    let mut printed = 0;
    while options.follow || !remaining.is_empty() {
        let Some(result) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = result.map_err(kafka)?;
        let key = match message.key() {
            Some(key) => decoder
                .decode(key)
                .await
                .unwrap_or_else(|err| json!({ "error": err.to_string() })),
            None => Json::Null,
        };
        let value = match message.payload() {
            Some(body) => decoder
                .decode(body)
                .await
                .unwrap_or_else(|err| json!({ "error": err.to_string() })),
            None => Json::Null,
        };
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
        printed += 1;
        if remaining
            .get(&message.partition())
            .is_some_and(|high| message.offset() + 1 >= *high)
        {
            remaining.remove(&message.partition());
        }
    }
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
