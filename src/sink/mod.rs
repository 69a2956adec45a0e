//! The sink: an idempotent, acks=all librdkafka producer whose delivery reports feed the
//! [`AckTracker`], and the admin calls that create missing topics — or, for measuring sluice on its own,
//! a blackhole that acknowledges every message as it is handed over.

mod refusal;

pub use refusal::{Login, Refusal};

use std::collections::HashSet;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, Headers, OwnedHeaders, Timestamp};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::Message;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::{Config, SinkKind};
use crate::metrics::Metrics;
use crate::pipeline::ack::AckTracker;
use crate::shutdown::StopDeadline;
use refusal::Refusals;
use sluice_core::config::is_secret_key;
use sluice_core::positions::now_ms;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot create the Kafka producer: {0}")]
    Producer(#[source] KafkaError),
    #[error("cannot create topic `{topic}`: {reason}")]
    CreateTopic { topic: String, reason: String },
    #[error("the broker refused a message for topic `{topic}`: {source}")]
    Send { topic: String, source: KafkaError },
    #[error("brokers at {brokers} are unreachable: {source}")]
    Unreachable { brokers: String, source: KafkaError },
    #[error("the broker at {brokers} refused the connection: {refusal}; {}", refusal.fix())]
    Refused {
        brokers: String,
        refusal: Box<Refusal>,
    },
    #[error("stopped while waiting for the broker: {0}")]
    Stalled(String),
}

impl SinkError {
    /// True when the message itself is at fault (it goes to the dead-letter topic); false when sluice must stop.
    pub fn is_message_fault(&self) -> bool {
        matches!(self, SinkError::Send { .. } | SinkError::CreateTopic { .. })
    }

    /// The message is larger than the producer or the broker accepts.
    pub fn is_too_large(&self) -> bool {
        matches!(self, SinkError::Send { source, .. } if is_too_large(source))
    }
}

pub fn is_too_large(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge)
    )
}

/// How long the producer queue may stay full before that is logged.
const QUEUE_FULL_WARNING: Duration = Duration::from_secs(10);

/// The settings the sink needs, out of the config file.
#[derive(Clone)]
pub struct SinkSettings {
    pub kind: SinkKind,
    /// Empty for the blackhole.
    pub brokers: String,
    pub properties: Vec<(String, String)>,
    pub create_topics: bool,
    pub topic_partitions: i32,
    pub topic_replication_factor: i32,
}

/// The properties' secret values as `***`.
impl std::fmt::Debug for SinkSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: Vec<(&str, &str)> = self
            .properties
            .iter()
            .map(|(key, value)| {
                let shown = if is_secret_key(key) { "***" } else { value };
                (key.as_str(), shown)
            })
            .collect();
        f.debug_struct("SinkSettings")
            .field("kind", &self.kind)
            .field("brokers", &self.brokers)
            .field("properties", &properties)
            .field("create_topics", &self.create_topics)
            .field("topic_partitions", &self.topic_partitions)
            .field("topic_replication_factor", &self.topic_replication_factor)
            .finish()
    }
}

impl SinkSettings {
    pub fn from_config(config: &Config) -> SinkSettings {
        SinkSettings {
            kind: *config.sink.kind.get_ref(),
            brokers: config.sink.brokers().to_owned(),
            properties: config
                .kafka_properties()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            create_topics: config.sink.create_topics,
            topic_partitions: *config.sink.topic_partitions.get_ref(),
            topic_replication_factor: *config.sink.topic_replication_factor.get_ref(),
        }
    }

    /// The byte bound of librdkafka's queue: 32 MiB, and never less than two of the largest messages the
    /// producer accepts, since a message larger than the whole queue would be refused as "queue full"
    /// for ever.
    fn queue_kbytes(&self) -> u64 {
        let max_message_kb = self
            .properties
            .iter()
            .find(|(key, _)| key == "message.max.bytes")
            .and_then(|(_, value)| value.parse::<u64>().ok())
            .map_or(1024, |bytes| bytes.div_ceil(1024));
        (2 * max_message_kb).max(32 * 1024)
    }

    /// librdkafka settings: sluice's guarantees first, then the user's pass-through properties (which
    /// `config` already checked do not weaken them).
    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", "sluice")
            .set("acks", "all")
            .set("enable.idempotence", "true")
            // Java's partitioner: a key lands on the partition other Kafka clients (and Debezium) pick.
            .set("partitioner", "murmur2_random")
            // Never give up on a message because the broker was away for a while: reading pauses instead.
            .set("message.timeout.ms", "0")
            .set("linger.ms", "5")
            // librdkafka's defaults let 100,000 messages (up to 1 GB) wait in its queue. That buys no
            // throughput (measured with bench/run.sh) and triples the resident memory; a full queue
            // just makes the source wait (backpressure).
            .set("queue.buffering.max.messages", "10000")
            .set(
                "queue.buffering.max.kbytes",
                self.queue_kbytes().to_string(),
            );
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }
}

/// A delivery the broker refused for good.
#[derive(Debug)]
pub struct FailedDelivery {
    pub ordinal: u64,
    pub dead_letter: bool,
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub error: KafkaError,
}

/// Routes librdkafka's delivery reports: successes to the tracker, failures to the pipeline.
pub struct DeliveryReports {
    tracker: Arc<AckTracker>,
    metrics: Arc<Metrics>,
    failures: mpsc::UnboundedSender<FailedDelivery>,
    /// The outcome of each message sent with [`MessageKind::Schema`], in order.
    schema_reports: mpsc::UnboundedSender<Result<(), KafkaError>>,
    refusals: Arc<Refusals>,
}

/// What a message is, for its delivery report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    Event,
    DeadLetter,
    /// A record of the schemas topic: the sender waits for its outcome ([`Sink::schema_delivered`]).
    Schema,
}

impl MessageKind {
    fn bits(self) -> usize {
        match self {
            MessageKind::Event => 0,
            MessageKind::DeadLetter => 1,
            MessageKind::Schema => 2,
        }
    }
}

impl DeliveryReports {
    /// The blackhole's delivery report: every message is acknowledged as it is handed over.
    fn acknowledged(&self, ordinal: u64, kind: MessageKind) {
        if kind == MessageKind::Schema {
            let _ = self.schema_reports.send(Ok(()));
        }
        self.tracker.delivered(ordinal);
    }
}

impl ClientContext for DeliveryReports {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.refusals.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.refusals.error(error, reason);
    }
}

impl ProducerContext for DeliveryReports {
    /// `ordinal << 2 | MessageKind::bits`.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let (ordinal, dead_letter, schema) =
            ((opaque >> 2) as u64, opaque & 3 == 1, opaque & 3 == 2);
        if schema {
            let _ = self
                .schema_reports
                .send(result.as_ref().map(|_| ()).map_err(|(err, _)| err.clone()));
        }
        // CreateTime is when the producer took the message (LogAppendTime would be the broker's clock).
        if let Ok(message) = result {
            if let Timestamp::CreateTime(produced_ms) = message.timestamp() {
                self.metrics
                    .acknowledged_after(now_ms().saturating_sub(produced_ms).max(0) as u64);
            }
        }
        match result {
            Ok(_) => {
                self.refusals.clear();
                self.tracker.delivered(ordinal)
            }
            Err((error, message)) => {
                let headers = message
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default();
                let failure = FailedDelivery {
                    ordinal,
                    dead_letter,
                    topic: message.topic().to_owned(),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec),
                    headers,
                    error: error.clone(),
                };
                // The receiver lives as long as the pipeline; if it is gone the process is exiting anyway, and the
                // unacknowledged position makes the next run deliver the message again.
                let _ = self.failures.send(failure);
            }
        }
    }
}

/// A message ready to produce.
pub struct Outgoing<'a> {
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub headers: &'a [(&'a str, &'a [u8])],
}

pub struct Sink {
    transport: Transport,
    settings: SinkSettings,
    /// The broker's last refusal of the connection (TLS, SASL), for a clear error instead of a timeout.
    refusals: Arc<Refusals>,
    known_topics: HashSet<String>,
    schema_outcomes: mpsc::UnboundedReceiver<Result<(), KafkaError>>,
    /// Past it, a stopping daemon stops offering a message to a full producer queue.
    stop_deadline: StopDeadline,
}

enum Transport {
    Kafka {
        /// Shared with the [`BrokerProbe`].
        producer: Arc<ThreadedProducer<DeliveryReports>>,
        admin: AdminClient<DefaultClientContext>,
    },
    /// Sends nothing and acknowledges every message at once (Vector's `blackhole` sink): what is left of
    /// a run is sluice's own cost, which is what `bench/run.sh` measures with it.
    Blackhole(DeliveryReports),
}

impl Sink {
    /// Creates the producer; failed deliveries arrive on the returned receiver.
    pub fn new(
        settings: SinkSettings,
        tracker: Arc<AckTracker>,
        metrics: Arc<Metrics>,
    ) -> Result<(Sink, mpsc::UnboundedReceiver<FailedDelivery>), SinkError> {
        let (failures, failed) = mpsc::unbounded_channel();
        let (schema_reports, schema_outcomes) = mpsc::unbounded_channel();
        let refusals = Arc::new(Refusals::new(&settings.properties));
        let reports = DeliveryReports {
            tracker,
            metrics,
            failures,
            schema_reports,
            refusals: refusals.clone(),
        };
        let transport = match settings.kind {
            SinkKind::Kafka => Transport::Kafka {
                producer: Arc::new(
                    settings
                        .client_config()
                        .create_with_context(reports)
                        .map_err(SinkError::Producer)?,
                ),
                admin: admin_client(&settings)?,
            },
            SinkKind::Blackhole => Transport::Blackhole(reports),
        };
        Ok((
            Sink {
                transport,
                settings,
                refusals,
                known_topics: HashSet::new(),
                schema_outcomes,
                stop_deadline: StopDeadline::default(),
            },
            failed,
        ))
    }

    /// Bounds how long a stop waits for room in the producer queue.
    pub fn bound_stop(&mut self, deadline: StopDeadline) {
        self.stop_deadline = deadline;
    }

    /// A handle that asks whether the broker answers, for a task of its own.
    pub fn probe(&self, topic: &str) -> BrokerProbe {
        BrokerProbe {
            producer: match &self.transport {
                Transport::Kafka { producer, .. } => Some(producer.clone()),
                Transport::Blackhole(_) => None,
            },
            topic: topic.to_owned(),
        }
    }

    /// Fails unless a broker answers a metadata request within `timeout`, and at once when the only
    /// broker listed refuses the connection (TLS, SASL): waiting would not change its answer. With
    /// several listed, another may still answer.
    pub fn check_reachable(&self, timeout: Duration) -> Result<(), SinkError> {
        let Transport::Kafka { producer, .. } = &self.transport else {
            return Ok(());
        };
        let (answer, answered) = std::sync::mpsc::channel();
        let asking = producer.clone();
        // One request for the whole timeout (librdkafka drops an answer that comes after its request's
        // timeout), on a thread of its own so that a refusal can end the wait.
        std::thread::spawn(move || {
            let _ = answer.send(asking.client().fetch_metadata(None, timeout).map(|_| ()));
        });
        let brokers = self.settings.brokers.clone();
        let one_broker = !brokers.contains(',');
        loop {
            match answered.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok(())) => {
                    self.refusals.clear();
                    return Ok(());
                }
                Ok(Err(source)) => {
                    return Err(match self.refusals.last() {
                        Some(refusal) => SinkError::Refused {
                            brokers,
                            refusal: Box::new(refusal),
                        },
                        None => SinkError::Unreachable { brokers, source },
                    })
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(refusal) = self.refusals.last().filter(|_| one_broker) {
                        let refusal = Box::new(refusal);
                        return Err(SinkError::Refused { brokers, refusal });
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(SinkError::Unreachable {
                        brokers,
                        source: KafkaError::Canceled,
                    })
                }
            }
        }
    }

    /// Makes sure `topic` exists, creating it when allowed. Cached: the broker is asked once per topic.
    /// Transient admin failures (timeouts, a controller moving) are retried until `stop` is set; only an
    /// answer about this topic itself (invalid name, not authorised, refused by policy) is an error.
    pub async fn ensure_topic(
        &mut self,
        topic: &str,
        stop: &watch::Receiver<bool>,
    ) -> Result<(), SinkError> {
        self.ensure_topic_with(topic, &[], stop).await
    }

    /// [`Sink::ensure_topic`], creating the topic with these topic configs (`cleanup.policy`, …).
    pub async fn ensure_topic_with(
        &mut self,
        topic: &str,
        configs: &[(&str, &str)],
        stop: &watch::Receiver<bool>,
    ) -> Result<(), SinkError> {
        let Transport::Kafka { admin, .. } = &self.transport else {
            return Ok(());
        };
        if !self.settings.create_topics || self.known_topics.contains(topic) {
            return Ok(());
        }
        let mut delay = Duration::from_millis(250);
        loop {
            match create_topic(admin, &self.settings, topic, configs).await {
                Ok(()) => break,
                Err(CreateFailure::Definitive(reason)) => {
                    return Err(SinkError::CreateTopic {
                        topic: topic.to_owned(),
                        reason,
                    })
                }
                Err(CreateFailure::Transient(reason)) => {
                    if *stop.borrow() {
                        return Err(SinkError::Stalled(format!(
                            "cannot create topic `{topic}`: {reason}"
                        )));
                    }
                    tracing::warn!(topic, %reason, retry_in = ?delay, "cannot create topic yet; events wait");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
        tracing::debug!(topic, "topic ready");
        self.known_topics.insert(topic.to_owned());
        Ok(())
    }

    /// Hands a message to librdkafka. Waits while its queue is full (backpressure), until the stop
    /// deadline once a stop is requested; other errors mean the message can never be produced as it is.
    pub async fn send(
        &self,
        message: &Outgoing<'_>,
        ordinal: u64,
        kind: MessageKind,
    ) -> Result<(), SinkError> {
        let producer = match &self.transport {
            Transport::Kafka { producer, .. } => producer,
            Transport::Blackhole(reports) => {
                reports.acknowledged(ordinal, kind);
                return Ok(());
            }
        };
        let opaque = ((ordinal as usize) << 2) | kind.bits();
        let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
        for (key, value) in message.headers {
            headers = headers.insert(Header {
                key,
                value: Some(*value),
            });
        }
        let mut record: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(message.topic, opaque).headers(headers);
        if let Some(key) = message.key {
            record = record.key(key);
        }
        if let Some(payload) = message.payload {
            record = record.payload(payload);
        }
        let waiting_since = Instant::now();
        let mut warned = false;
        loop {
            match producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    // A full queue is ordinary backpressure; one that stays full says the broker is not
                    // acknowledging.
                    if !warned && waiting_since.elapsed() >= QUEUE_FULL_WARNING {
                        warned = true;
                        tracing::warn!(topic = message.topic, in_flight = producer.in_flight_count(), waited = ?QUEUE_FULL_WARNING, "the producer queue is full and not draining: reading waits for the broker");
                    }
                    if self.stop_deadline.passed() {
                        return Err(SinkError::Stalled(
                            "librdkafka's queue stayed full until the shutdown bound".into(),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((source, _)) => {
                    return Err(SinkError::Send {
                        topic: message.topic.to_owned(),
                        source,
                    })
                }
            }
        }
    }

    /// Waits for the broker's answer to the schema record sent last ([`MessageKind::Schema`]). A refusal
    /// is an error, and so is a stop request while waiting: the schema must be on the broker before any
    /// message that names it.
    pub async fn schema_delivered(
        &mut self,
        stop: &watch::Receiver<bool>,
    ) -> Result<(), SinkError> {
        let mut stop = stop.clone();
        loop {
            tokio::select! {
                outcome = self.schema_outcomes.recv() => return match outcome {
                    Some(Ok(())) => Ok(()),
                    Some(Err(source)) => Err(SinkError::Send { topic: "(schemas topic)".into(), source }),
                    None => Err(SinkError::Stalled("the producer is gone".into())),
                },
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return Err(SinkError::Stalled("stopped while the schemas topic had not acknowledged a schema".into()));
                    }
                }
            }
        }
    }
}

/// The admin client that creates topics, with the producer's security settings.
fn admin_client(settings: &SinkSettings) -> Result<AdminClient<DefaultClientContext>, SinkError> {
    let mut admin_config = ClientConfig::new();
    admin_config.set("bootstrap.servers", &settings.brokers);
    for (key, value) in settings
        .properties
        .iter()
        .filter(|(k, _)| is_connection_property(k))
    {
        admin_config.set(key, value);
    }
    // Its errors and logs go to a queue the admin client never polls: the producer's context reports
    // the refusals of the connection they share.
    admin_config.create().map_err(SinkError::Producer)
}

async fn create_topic(
    admin: &AdminClient<DefaultClientContext>,
    settings: &SinkSettings,
    topic: &str,
    configs: &[(&str, &str)],
) -> Result<(), CreateFailure> {
    let mut new_topic = NewTopic::new(
        topic,
        settings.topic_partitions,
        TopicReplication::Fixed(settings.topic_replication_factor),
    );
    for (key, value) in configs {
        new_topic = new_topic.set(key, value);
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics([&new_topic], &options)
        .await
        .map_err(|err| CreateFailure::Transient(err.to_string()))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) if is_topic_fault(code) => {
                return Err(CreateFailure::Definitive(code.to_string()))
            }
            Err((_, code)) => return Err(CreateFailure::Transient(code.to_string())),
        }
    }
    Ok(())
}

/// Asks the broker for one topic's metadata: the cheapest request that proves it answers.
pub struct BrokerProbe {
    /// None for the blackhole, which always answers.
    producer: Option<Arc<ThreadedProducer<DeliveryReports>>>,
    topic: String,
}

impl BrokerProbe {
    /// True when a broker answered within `timeout`. Blocks: call it from a blocking task.
    pub fn answers(&self, timeout: Duration) -> bool {
        self.producer.as_ref().is_none_or(|producer| {
            producer
                .client()
                .fetch_metadata(Some(&self.topic), timeout)
                .is_ok()
        })
    }
}

enum CreateFailure {
    /// About this topic: retrying cannot help.
    Definitive(String),
    /// About the cluster's state or the connection: retry.
    Transient(String),
}

/// Admin answers that concern the topic itself rather than the cluster's momentary state.
fn is_topic_fault(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::PolicyViolation
            | RDKafkaErrorCode::InvalidPartitions
            | RDKafkaErrorCode::InvalidReplicationFactor
            | RDKafkaErrorCode::InvalidConfig
            | RDKafkaErrorCode::InvalidRequest
    )
}

/// Properties that configure the connection (security, addresses) rather than producing.
pub fn is_connection_property(key: &str) -> bool {
    [
        "security.",
        "ssl.",
        "sasl.",
        "client.dns",
        "broker.address",
        "socket.",
    ]
    .iter()
    .any(|p| key.starts_with(p))
}

#[cfg(test)]
mod tests;
