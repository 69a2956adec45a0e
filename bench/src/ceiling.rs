//! The broker's own ceiling: a plain producer with sluice's producer settings sends as many messages as
//! sluice published, of the sizes sluice's messages had (keys, values and headers read back from its
//! topic), to a topic like sluice's. Every end-to-end row is then a ratio to what the broker itself
//! accepts in the same run.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::{Args, Measure, Usage};
use sluice_testkit::broker::Tansu;

/// Messages read back from sluice's topic to learn their sizes.
const SAMPLE: usize = 2_000;

/// The sizes of sluice's messages: key and value bytes and the headers (name, value length), averaged
/// over a sample.
struct Sizes {
    key: usize,
    value: usize,
    headers: Vec<(String, usize)>,
}

/// Sends `args.rows` messages shaped like those on `topic` (sluice's, already written) to a topic of its
/// own, and times them until the broker acknowledged the last.
pub(super) async fn measure(args: &Args, broker: &Tansu, topic: &str) -> Result<Measure> {
    let sizes = sample(&broker.bootstrap(), topic)?;
    eprintln!(
        "broker ceiling: messages of {} key bytes, {} value bytes and {} headers, as on {topic}",
        sizes.key,
        sizes.value,
        sizes.headers.len()
    );
    let target = "ceiling.messages";
    broker.create_topics(&[target], 1).await?;
    let mut config = ClientConfig::new();
    // sluice's settings (src/sink.rs), and the bench's linger and pass-through properties.
    config
        .set("bootstrap.servers", broker.bootstrap())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", "0")
        .set("queue.buffering.max.messages", "10000")
        .set("linger.ms", args.linger_ms.to_string());
    for property in &args.kafka {
        let (key, value) = property
            .split_once('=')
            .with_context(|| format!("--kafka {property}: not KEY=VALUE"))?;
        config.set(key, value);
    }
    let producer: ThreadedProducer<DefaultProducerContext> =
        config.create().context("creating the ceiling's producer")?;
    let value = vec![b'v'; sizes.value];
    let header_values: Vec<(String, Vec<u8>)> = sizes
        .headers
        .iter()
        .map(|(name, len)| (name.clone(), vec![b'h'; *len]))
        .collect();
    let started = Instant::now();
    let cpu_before = own_cpu_seconds();
    for n in 0..args.rows {
        // Distinct keys of sluice's key size, as its rows have.
        let mut key = format!("{n:0width$}", width = sizes.key).into_bytes();
        key.truncate(sizes.key.max(1));
        let mut headers = OwnedHeaders::new();
        for (name, value) in &header_values {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        let mut record = BaseRecord::to(target)
            .key(&key)
            .payload(&value)
            .headers(headers);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                // The queue is full: wait for the broker, as sluice does.
                Err((_, returned)) => {
                    record = returned;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(args.timeout_secs))
        .context("the broker did not acknowledge every ceiling message in time")?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = own_cpu_seconds() - cpu_before;
    eprintln!(
        "broker ceiling: {} messages in {seconds:.2} s, {:.0}/s (the harness's own CPU, producer included: {cpu_seconds:.2} s)",
        args.rows,
        args.rows as f64 / seconds
    );
    Ok(Measure {
        name: "plain producer → broker (sluice's sizes and settings): the ceiling",
        events: args.rows,
        seconds,
        usage: Usage {
            cpu_seconds,
            peak_rss_kb: 0,
        },
    })
}

/// The average sizes of the first [`SAMPLE`] messages on `topic`'s partition 0.
fn sample(bootstrap: &str, topic: &str) -> Result<Sizes> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "bench-ceiling")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut partitions = TopicPartitionList::new();
    partitions.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&partitions)?;
    let (mut keys, mut values, mut count) = (0usize, 0usize, 0usize);
    let mut headers: Vec<(String, usize)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while count < SAMPLE && Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message?;
        keys += message.key().map_or(0, <[u8]>::len);
        values += message.payload().map_or(0, <[u8]>::len);
        if count == 0 {
            if let Some(found) = message.headers() {
                headers = found
                    .iter()
                    .map(|h| (h.key.to_owned(), h.value.map_or(0, <[u8]>::len)))
                    .collect();
            }
        }
        count += 1;
    }
    if count == 0 {
        bail!("no message on {topic} to take the sizes from");
    }
    Ok(Sizes {
        key: keys / count,
        value: values / count,
        headers,
    })
}

/// This process's CPU time so far (user + system), from /proc.
fn own_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields 14 and 15 (utime, stime) after the command name's closing parenthesis.
    let Some(after) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return 0.0;
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    ticks as f64 / 100.0
}
