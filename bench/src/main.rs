//! The benchmark harness behind `bench/run.sh`: sluice measured against PostgreSQL's own rates, on a
//! private PostgreSQL cluster and a local tansu broker, in one run so that the ratios compare like with
//! like.
//!
//! The same rows are written once, after the slots exist; then each reader drains them from its own slot:
//! `pg_recvlogical` (pgoutput to /dev/null: how fast the server hands changes out) and `sluice run` (Avro,
//! registry, broker acknowledgements). For snapshots, `COPY … TO STDOUT` of the table is compared with
//! sluice's snapshot of it (`snapshot = "initial_only"`). CPU time and peak RSS come from /proc, sampled
//! while each process runs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use sluice_testkit::broker::Tansu;
use sluice_testkit::config::ConfigFile;
use sluice_testkit::postgres::PgCluster;
use sluice_testkit::registry::RegistryDouble;

const DATABASE: &str = "bench";
/// How often a measured process's CPU time and peak RSS are read.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

#[derive(Parser)]
#[command(about = "Measure sluice against pg_recvlogical and COPY on this machine")]
struct Args {
    /// Rows written (and then read by every reader).
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Rows per transaction.
    #[arg(long, default_value_t = 1_000)]
    batch: u64,
    /// The sluice binary to measure (build it with --release).
    #[arg(long, default_value = "target/release/sluice")]
    sluice: PathBuf,
    /// librdkafka's linger.ms for sluice's producer.
    #[arg(long, default_value_t = 5)]
    linger_ms: u32,
    /// More librdkafka producer properties for sluice, as KEY=VALUE (repeatable), to try tunings.
    #[arg(long = "kafka", value_name = "KEY=VALUE")]
    kafka: Vec<String>,
    /// Longest wait for one reader.
    #[arg(long, default_value_t = 1_800)]
    timeout_secs: u64,
}

/// One measured reader.
struct Measure {
    name: &'static str,
    events: u64,
    seconds: f64,
    usage: Usage,
}

impl Measure {
    fn rate(&self) -> f64 {
        self.events as f64 / self.seconds
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if !args.sluice.exists() {
        bail!(
            "{} does not exist: build it with `cargo build --release`",
            args.sluice.display()
        );
    }
    let work = tempfile::tempdir()?;
    let pg = PgCluster::start_with(&[
        ("shared_buffers", "256MB"),
        ("max_wal_size", "8GB"),
        ("checkpoint_timeout", "30min"),
    ])?;
    pg.create_database(DATABASE).await?;
    let broker = Tansu::start()?;
    let registry = RegistryDouble::start()?;
    let client = pg.client(DATABASE).await?;
    // One statement at a time: a slot cannot be created in a transaction that has written.
    for statement in [
        "CREATE TABLE bench (id bigint PRIMARY KEY, n int NOT NULL, amount numeric(12,2), label text, \
           at timestamptz NOT NULL, doc jsonb)",
        "CREATE PUBLICATION bench FOR TABLE bench WITH (publish_via_partition_root = true)",
        "SELECT pg_create_logical_replication_slot('bench_recvlogical', 'pgoutput')",
        "SELECT pg_create_logical_replication_slot('bench_sluice', 'pgoutput')",
    ] {
        client.batch_execute(statement).await?;
    }

    let started = Instant::now();
    let mut first = 1;
    while first <= args.rows {
        let last = (first + args.batch - 1).min(args.rows);
        client
            .batch_execute(&format!(
                "INSERT INTO bench SELECT i, i % 1000, (i % 10000000) / 100.0, 'label ' || i, \
                   now() - i * interval '1 second', jsonb_build_object('i', i, 'tags', jsonb_build_array('a', 'b')) \
                 FROM generate_series({first}, {last}) AS i"
            ))
            .await?;
        first = last + 1;
    }
    let end: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    eprintln!(
        "wrote {} rows in {:.1} s (WAL end {end})",
        args.rows,
        started.elapsed().as_secs_f64()
    );
    let timeout = Duration::from_secs(args.timeout_secs);
    let recvlogical = measure_recvlogical(&pg, &end, args.rows, timeout)?;
    report_one(&recvlogical);
    let bench = Bench {
        args: &args,
        pg: &pg,
        broker: &broker,
        registry: &registry,
        work: work.path(),
        counter: counter(&broker.bootstrap())?,
    };
    let streaming = bench.measure_sluice(
        "sluice → broker (Avro, registry)",
        "stream",
        "bench_sluice",
        "never",
    )?;
    report_one(&streaming);
    let copy = measure_copy(&client, args.rows).await?;
    report_one(&copy);
    let snapshot = bench.measure_sluice(
        "sluice snapshot → broker",
        "snap",
        "bench_snapshot",
        "initial_only",
    )?;
    report_one(&snapshot);

    println!();
    println!(
        "{} rows (bigint pk, int, numeric(12,2), text, timestamptz, jsonb), {} per transaction",
        args.rows, args.batch
    );
    println!("| reader | events/s | vs PostgreSQL | CPU s per M events | peak RSS MB |");
    println!("|---|---:|---:|---:|---:|");
    for (measure, baseline) in [
        (&recvlogical, None),
        (&streaming, Some(&recvlogical)),
        (&copy, None),
        (&snapshot, Some(&copy)),
    ] {
        let ratio = baseline.map_or("—".to_owned(), |b| {
            format!("{:.0}%", 100.0 * measure.rate() / b.rate())
        });
        let cpu = measure.usage.cpu_seconds * 1_000_000.0 / measure.events as f64;
        let rss = measure.usage.peak_rss_kb as f64 / 1024.0;
        println!(
            "| {} | {:.0} | {ratio} | {cpu:.2} | {rss:.1} |",
            measure.name,
            measure.rate()
        );
    }
    println!();
    println!("Not measured yet: sluice to a null sink, commit-to-ack latency at a steady 10,000 events/s.");
    Ok(())
}

fn report_one(measure: &Measure) {
    eprintln!(
        "{}: {} events in {:.2} s, {:.0}/s, CPU {:.2} s, peak RSS {:.1} MB",
        measure.name,
        measure.events,
        measure.seconds,
        measure.rate(),
        measure.usage.cpu_seconds,
        measure.usage.peak_rss_kb as f64 / 1024.0
    );
}

/// pg_recvlogical with pgoutput from its own slot to /dev/null, up to the WAL end of the writes.
fn measure_recvlogical(pg: &PgCluster, end: &str, rows: u64, timeout: Duration) -> Result<Measure> {
    let started = Instant::now();
    let program = sluice_testkit::postgres::program_path("pg_recvlogical");
    let mut child = Command::new(&program)
        .args([
            "--dbname",
            &pg.url(DATABASE),
            "--slot",
            "bench_recvlogical",
            "--start",
        ])
        .args(["--endpos", end, "--no-loop", "-f", "/dev/null"])
        .args(["-o", "proto_version=1", "-o", "publication_names=bench"])
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let usage = follow(&mut child, timeout, || Ok(false))?;
    Ok(Measure {
        name: "pg_recvlogical (pgoutput → /dev/null)",
        events: rows,
        seconds: started.elapsed().as_secs_f64(),
        usage,
    })
}

/// The services and settings every sluice measurement shares.
struct Bench<'a> {
    args: &'a Args,
    pg: &'a PgCluster,
    broker: &'a Tansu,
    registry: &'a RegistryDouble,
    work: &'a Path,
    counter: BaseConsumer,
}

impl Bench<'_> {
    /// Runs sluice from its own slot (and topic prefix) until every row is on the broker.
    fn measure_sluice(
        &self,
        name: &'static str,
        prefix: &str,
        slot: &str,
        snapshot: &str,
    ) -> Result<Measure> {
        let mut config = ConfigFile::local(
            self.pg.url(DATABASE),
            self.broker.bootstrap(),
            Some(self.registry.url()),
            self.work.join(format!("{prefix}-positions")),
        );
        config.slot = slot.into();
        config.publication = "bench".into();
        config.tables = vec!["public.bench".into()];
        config.source_extra = format!("snapshot = \"{snapshot}\"");
        config.topic_prefix = prefix.into();
        config.set_kafka("linger.ms", &self.args.linger_ms.to_string());
        for property in &self.args.kafka {
            let (key, value) = property
                .split_once('=')
                .with_context(|| format!("--kafka {property}: not KEY=VALUE"))?;
            config.set_kafka(key, value);
        }
        let path = config.write(&self.work.join(format!("{prefix}.toml")))?;
        let topic = format!("{prefix}.public.bench");
        let log = self.work.join(format!("{prefix}.log"));

        let started = Instant::now();
        let mut child = Command::new(&self.args.sluice)
            .args(["run", "-c"])
            .arg(&path)
            .env("SLUICE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", self.args.sluice.display()))?;
        let timeout = Duration::from_secs(self.args.timeout_secs);
        let usage = follow(&mut child, timeout, || {
            Ok(messages_on(&self.counter, &topic)? >= self.args.rows)
        });
        let seconds = started.elapsed().as_secs_f64();
        let usage = usage.with_context(|| format!("sluice's log is {}", log.display()))?;
        if snapshot == "initial_only" {
            // It stores the position and drops its slot, then exits by itself.
            let status = child.wait()?;
            if !status.success() {
                bail!(
                    "{name}: sluice exited with {status}; its log is {}",
                    log.display()
                );
            }
        } else {
            stop(&mut child)?;
        }
        let on_broker = messages_on(&self.counter, &topic)?;
        if on_broker < self.args.rows {
            bail!(
                "{name}: {on_broker} of {} rows on the broker; sluice's log is {}",
                self.args.rows,
                log.display()
            );
        }
        Ok(Measure {
            name,
            events: self.args.rows,
            seconds,
            usage,
        })
    }
}

/// `COPY bench TO STDOUT`, every byte read and dropped.
async fn measure_copy(client: &tokio_postgres::Client, rows: u64) -> Result<Measure> {
    let started = Instant::now();
    let stream = client.copy_out("COPY bench TO STDOUT").await?;
    let mut stream = std::pin::pin!(stream);
    let mut lines = 0u64;
    while let Some(chunk) = stream.next().await {
        lines += chunk?.iter().filter(|&&b| b == b'\n').count() as u64;
    }
    if lines != rows {
        bail!("COPY returned {lines} rows, expected {rows}");
    }
    Ok(Measure {
        name: "COPY … TO STDOUT",
        events: rows,
        seconds: started.elapsed().as_secs_f64(),
        // The work happens in the server; the client only counts lines.
        usage: Usage::default(),
    })
}

/// SIGTERM and a clean exit.
fn stop(child: &mut Child) -> Result<()> {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    let status = child.wait()?;
    if !status.success() {
        bail!("sluice exited with {status} after SIGTERM");
    }
    Ok(())
}

/// CPU time and peak resident memory of a process.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    cpu_seconds: f64,
    peak_rss_kb: u64,
}

/// Samples `child` until it exits (an error unless it exits 0) or `done` says the work is complete; the
/// last sample before then is the measurement.
fn follow(
    child: &mut Child,
    timeout: Duration,
    mut done: impl FnMut() -> Result<bool>,
) -> Result<Usage> {
    let deadline = Instant::now() + timeout;
    let ticks_per_second = clock_ticks()?;
    let mut usage = Usage::default();
    loop {
        if let Some(sample) = sample(child.id(), ticks_per_second) {
            usage = sample;
        }
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("the measured process exited with {status}");
            }
            return Ok(usage);
        }
        if done()? {
            return Ok(usage);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("not done within {timeout:?}");
        }
        std::thread::sleep(SAMPLE_EVERY);
    }
}

fn sample(pid: u32, ticks_per_second: f64) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let peak_rss_kb = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(Usage {
        cpu_seconds: ticks as f64 / ticks_per_second,
        peak_rss_kb,
    })
}

fn clock_ticks() -> Result<f64> {
    let output = Command::new("getconf").arg("CLK_TCK").output()?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().parse()?)
}

/// A client that counts the messages of a topic.
fn counter(bootstrap: &str) -> Result<BaseConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "sluice-bench")
        .create()?)
}

/// Messages on every partition of `topic` (the sum of high watermarks); 0 while it does not exist.
fn messages_on(consumer: &BaseConsumer, topic: &str) -> Result<u64> {
    let Ok(metadata) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) else {
        return Ok(0);
    };
    let mut total = 0;
    for found in metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
    {
        for partition in found.partitions() {
            let (low, high) =
                consumer.fetch_watermarks(topic, partition.id(), Duration::from_secs(5))?;
            total += (high - low).max(0) as u64;
        }
    }
    Ok(total)
}
