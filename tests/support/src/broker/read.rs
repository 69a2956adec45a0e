//! Reading a whole topic back for assertions: every partition from the beginning, no consumer group
//! offsets involved, so reads are repeatable and independent of what the code under test committed.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::Access;

/// After the wanted number of messages, keep reading until nothing new arrived for this long, so tests
/// also see messages that should not be there (duplicates, extras).
const QUIET_PERIOD: Duration = Duration::from_millis(1500);
/// Longest single wait for a message, so the exit conditions are checked regularly.
const POLL_SLICE: Duration = Duration::from_millis(250);

/// One message as read from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// Header name and value, in message order; a null header value reads as empty.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Reads every partition of `topic` from the beginning until at least `min_messages` were read and then
/// nothing new arrived for a short quiet period, or until `timeout`. Returns what was read (sorted by
/// partition, then offset) in either case: the caller asserts on it. A topic that never appears gives an
/// empty result.
pub async fn read_topic(
    broker: impl Into<Access>,
    topic: &str,
    min_messages: usize,
    timeout: Duration,
) -> Result<Vec<Record>> {
    let access: Access = broker.into();
    let bootstrap = access.bootstrap.clone();
    let deadline = Instant::now() + timeout;
    let partitions = {
        let (access, topic) = (access.clone(), topic.to_owned());
        // Metadata calls block: keep them off the runtime's threads, which may be driving the code under test.
        tokio::task::spawn_blocking(move || partitions_of(&access, &topic, deadline))
            .await
            .context("the topic-metadata lookup panicked")??
    };
    if partitions.is_empty() {
        eprintln!("read_topic: topic `{topic}` did not appear on {bootstrap} within {timeout:?}");
        return Ok(Vec::new());
    }

    let consumer: StreamConsumer = reader_config(&access)
        .create()
        .with_context(|| format!("creating a Kafka consumer for {bootstrap}"))?;
    let mut assignment = TopicPartitionList::new();
    for partition in &partitions {
        assignment
            .add_partition_offset(topic, *partition, Offset::Beginning)
            .with_context(|| format!("assigning {topic}/{partition}"))?;
    }
    consumer
        .assign(&assignment)
        .with_context(|| format!("assigning the partitions of `{topic}`"))?;

    let mut records = Vec::new();
    let mut last_error = None;
    let mut last_progress = Instant::now();
    loop {
        let now = Instant::now();
        if now >= deadline || (records.len() >= min_messages && now - last_progress >= QUIET_PERIOD)
        {
            break;
        }
        match tokio::time::timeout(POLL_SLICE.min(deadline - now), consumer.recv()).await {
            Ok(Ok(message)) => {
                records.push(to_record(&message));
                last_progress = Instant::now();
            }
            // Errors are often transient (leader lookups, a broker restarting): retry until the deadline.
            Ok(Err(err)) => {
                last_error = Some(err);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_elapsed) => {}
        }
    }
    if records.len() < min_messages {
        let error = last_error
            .map(|err| format!("; last consumer error: {err}"))
            .unwrap_or_default();
        eprintln!(
            "read_topic: {} of {min_messages} messages from `{topic}` within {timeout:?}{error}",
            records.len()
        );
    }
    records.sort_by_key(|record| (record.partition, record.offset));
    Ok(records)
}

/// A consumer that never commits and, lacking committed offsets, starts at the beginning. librdkafka
/// wants a group id even for manual assignment; a random one keeps readers apart.
fn reader_config(access: &Access) -> ClientConfig {
    let mut config = access.client_config();
    config
        .set(
            "group.id",
            format!("sluice-testkit-reader-{}", crate::random_hex()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    config
}

/// The partition ids of `topic`, waiting for it to exist until `deadline` (empty if it never does).
fn partitions_of(access: &Access, topic: &str, deadline: Instant) -> Result<Vec<i32>> {
    let bootstrap = &access.bootstrap;
    let consumer: BaseConsumer = reader_config(access)
        .create()
        .with_context(|| format!("creating a Kafka consumer for {bootstrap}"))?;
    loop {
        if let Ok(metadata) = consumer.fetch_metadata(Some(topic), Duration::from_secs(2)) {
            if let Some(found) = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
            {
                let mut ids: Vec<i32> = found.partitions().iter().map(|p| p.id()).collect();
                if !ids.is_empty() {
                    ids.sort_unstable();
                    return Ok(ids);
                }
            }
        }
        if Instant::now() >= deadline {
            return Ok(Vec::new());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn to_record(message: &impl Message) -> Record {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Record {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec),
        headers,
    }
}
