//! The benchmark harness behind `bench/run.sh`: sluice measured against PostgreSQL's own rates, on a
//! private PostgreSQL cluster and a local tansu broker, in one run so that the ratios compare like with
//! like.
//!
//! The same rows are written once, after the slots exist; then each reader drains them from its own slot:
//! `pg_recvlogical` (pgoutput to /dev/null: how fast the server hands changes out), `sluice run` to the
//! broker (Avro, registry, broker acknowledgements) and `sluice run` to the blackhole sink (the same
//! work without a broker: sluice's own cost). For snapshots, `COPY … TO STDOUT` of the table is compared
//! with sluice's snapshot of it (`snapshot = "initial_only"`). CPU time and peak RSS come from /proc,
//! sampled while each process runs. Last, commit-to-acknowledgement latency is read from sluice's own
//! histogram while a paced writer commits a steady rate ([`latency`]).

mod ceiling;
mod incremental;
mod latency;
mod toast;

use std::os::unix::process::ExitStatusExt;
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
    /// Rows per second the paced writer commits while latency is measured.
    #[arg(long, default_value_t = 10_000)]
    latency_rate: u64,
    /// Rows per transaction of the paced writer.
    #[arg(long, default_value_t = 100)]
    latency_batch: u64,
    /// How long the paced writer runs, after a warm-up of a few seconds.
    #[arg(long, default_value_t = 30)]
    latency_secs: u64,
    /// Only these measurements (comma-separated); all of them when not given.
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(MEASUREMENTS))]
    only: Vec<String>,
    /// Records each throughput run of sluice with `perf record` (DWARF call graphs) into
    /// DIR/<name>.perf.data. perf attaches to the running process, so its own CPU is not counted, but
    /// its sampling slows sluice: take figures from runs without it.
    #[arg(long, value_name = "DIR")]
    perf: Option<PathBuf>,
}

/// The measurements, by the names `--only` takes; `latency` covers both latency rows.
const MEASUREMENTS: [&str; 11] = [
    "recvlogical",
    "stream",
    "ceiling",
    "null",
    "xform",
    "copy",
    "snap",
    "snapnull",
    "incr",
    "toast",
    "latency",
];

impl Args {
    fn wants(&self, measurement: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|m| m == measurement)
    }
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
    let end = write_rows(&client, &args).await?;
    let timeout = Duration::from_secs(args.timeout_secs);
    let recvlogical = args
        .wants("recvlogical")
        .then(|| measure_recvlogical(&pg, &end, args.rows, timeout))
        .transpose()?;
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
        &Run::streaming("stream", "bench_sluice", Sink::Broker),
    )?;
    // The broker's own rate for messages like the ones sluice just published (it reads their sizes).
    let ceiling = match (args.wants("ceiling"), &streaming) {
        (true, Some(_)) => Some(ceiling::measure(&args, &broker, "stream.public.bench").await?),
        (true, None) => {
            eprintln!(
                "broker ceiling: not measured, it takes its message sizes from the `stream` row"
            );
            None
        }
        (false, _) => None,
    };
    let blackhole = bench.measure_sluice(
        "sluice → blackhole sink (Avro, registry)",
        &Run::streaming("null", "bench_blackhole", Sink::Blackhole),
    )?;
    let transformed = bench.measure_transformed()?;
    let copy = match args.wants("copy") {
        true => Some(reported(measure_copy(&client, args.rows).await?)),
        false => None,
    };
    let snapshot = bench.measure_sluice(
        "sluice snapshot → broker",
        &Run::snapshot("snap", "bench_snapshot", "initial_only", Sink::Broker),
    )?;
    // "initial" rather than "initial_only": the blackhole's count is read from the running process.
    let snapshot_blackhole = bench.measure_sluice(
        "sluice snapshot → blackhole sink",
        &Run::snapshot("snapnull", "bench_snapnull", "initial", Sink::Blackhole),
    )?;

    let incremental = match args.wants("incr") {
        true => Some(reported(bench.measure_incremental(&client).await?)),
        false => None,
    };
    let (reselect, toast) = match args.wants("toast") {
        true => {
            let [on, off] = bench.measure_reselect(&client).await?;
            (Some(on), Some(off))
        }
        false => (None, None),
    };

    let pace = latency::Pace {
        rows_per_second: args.latency_rate,
        batch: args.latency_batch,
        seconds: args.latency_secs,
    };
    let latencies = bench.measure_latencies(&client, &pace).await?;

    print_throughput(
        &args,
        [
            (&recvlogical, None),
            (&streaming, Some(&recvlogical)),
            (&blackhole, Some(&recvlogical)),
            (&transformed, Some(&blackhole)),
            (&copy, None),
            (&snapshot, Some(&copy)),
            (&snapshot_blackhole, Some(&copy)),
            (&incremental, Some(&snapshot_blackhole)),
            (&toast, None),
            (&reselect, Some(&toast)),
        ],
    );
    print_against_ceiling(&ceiling, [&streaming, &snapshot]);
    print_latencies(&pace, &latencies);
    Ok(())
}

/// The end-to-end rows as a share of what the broker itself accepted in the same run.
fn print_against_ceiling(ceiling: &Option<Measure>, rows: [&Option<Measure>; 2]) {
    let Some(ceiling) = ceiling else { return };
    println!();
    println!(
        "Against the broker's ceiling ({:.0} messages/s from a plain producer, sluice's sizes and settings)",
        ceiling.rate()
    );
    println!("| reader | events/s | vs the broker's ceiling |");
    println!("|---|---:|---:|");
    for measure in rows.into_iter().flatten() {
        println!(
            "| {} | {:.0} | {:.0}% |",
            measure.name,
            measure.rate(),
            100.0 * measure.rate() / ceiling.rate()
        );
    }
}

/// Creates the table, its publication and the slots, then writes the rows every reader drains, in
/// transactions of `--batch`; returns the WAL end after them.
async fn write_rows(client: &tokio_postgres::Client, args: &Args) -> Result<String> {
    // One statement at a time: a slot cannot be created in a transaction that has written.
    for statement in [
        "CREATE TABLE bench (id bigint PRIMARY KEY, n int NOT NULL, amount numeric(12,2), label text, \
           at timestamptz NOT NULL, doc jsonb)",
        "CREATE PUBLICATION bench FOR TABLE bench WITH (publish_via_partition_root = true)",
        "SELECT pg_create_logical_replication_slot('bench_recvlogical', 'pgoutput')",
        "SELECT pg_create_logical_replication_slot('bench_sluice', 'pgoutput')",
        "SELECT pg_create_logical_replication_slot('bench_blackhole', 'pgoutput')",
        "SELECT pg_create_logical_replication_slot('bench_xform', 'pgoutput')",
    ] {
        client.batch_execute(statement).await?;
    }

    let started = Instant::now();
    let mut first = 1;
    while first <= args.rows {
        let last = (first + args.batch - 1).min(args.rows);
        client
            .batch_execute(&insert_rows(first, last, "now() - i * interval '1 second'"))
            .await?;
        first = last + 1;
    }
    let end = sluice_testkit::postgres::current_wal_lsn(client).await?;
    eprintln!(
        "wrote {} rows in {:.1} s (WAL end {end})",
        args.rows,
        started.elapsed().as_secs_f64()
    );
    Ok(end)
}

impl Bench<'_> {
    /// Commit-to-acknowledgement latency to the broker and to the blackhole, each from a slot of its own
    /// (none when `--only` leaves `latency` out).
    async fn measure_latencies(
        &self,
        client: &tokio_postgres::Client,
        pace: &latency::Pace,
    ) -> Result<Vec<(Sink, latency::Latency)>> {
        let mut latencies = Vec::new();
        let mut next_id = self.args.rows + 1;
        let latency_runs = if self.args.wants("latency") {
            &[(Sink::Broker, "lat"), (Sink::Blackhole, "latnull")][..]
        } else {
            &[]
        };
        for &(sink, prefix) in latency_runs {
            let slot = format!("bench_{prefix}");
            client
                .batch_execute(&format!(
                    "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
                ))
                .await?;
            let run = Run::streaming(prefix, &slot, sink);
            let measured = self.measure_latency(&run, client, pace, next_id).await?;
            eprintln!("{}", measured.describe(sink.name()));
            next_id += measured.rows;
            latencies.push((sink, measured));
            client
                .batch_execute(&format!("SELECT pg_drop_replication_slot('{slot}')"))
                .await?;
        }

        Ok(latencies)
    }
}

/// The throughput table: each row with its baseline (None for the baselines themselves: PostgreSQL's
/// own readers; the initial snapshot is the incremental one's, streaming without transforms the one
/// through them).
fn print_throughput(args: &Args, rows: [(&Option<Measure>, Option<&Option<Measure>>); 10]) {
    println!();
    println!(
        "{} rows (bigint pk, int, numeric(12,2), text, timestamptz, jsonb), {} per transaction",
        args.rows, args.batch
    );
    println!("| reader | events/s | vs baseline | CPU s per M events | peak RSS MB |");
    println!("|---|---:|---:|---:|---:|");
    for (measure, baseline) in rows {
        let Some(measure) = measure else { continue };
        let ratio = match baseline {
            None => "—".to_owned(),
            Some(None) => "baseline not run".to_owned(),
            Some(Some(b)) => format!("{:.0}%", 100.0 * measure.rate() / b.rate()),
        };
        let cpu = measure.usage.cpu_seconds * 1_000_000.0 / measure.events as f64;
        let rss = measure.usage.peak_rss_kb as f64 / 1024.0;
        println!(
            "| {} | {:.0} | {ratio} | {cpu:.2} | {rss:.1} |",
            measure.name,
            measure.rate()
        );
    }
}

fn print_latencies(pace: &latency::Pace, latencies: &[(Sink, latency::Latency)]) {
    if latencies.is_empty() {
        return;
    }
    println!();
    println!(
        "Commit-to-acknowledgement latency per transaction at a steady {} rows/s ({} rows per \
         transaction, {} s), from sluice's histogram (percentiles interpolated within its buckets)",
        pace.rows_per_second, pace.batch, pace.seconds
    );
    println!("| sink | transactions | rows/s reached | p50 ms | p99 ms | within 50 ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (sink, measured) in latencies {
        println!("{}", measured.table_row(sink.name()));
    }
}

/// One transaction's INSERT of rows `first..=last` (ids), stamped with the SQL expression `at`.
fn insert_rows(first: u64, last: u64, at: &str) -> String {
    format!(
        "INSERT INTO bench SELECT i, i % 1000, (i % 10000000) / 100.0, 'label ' || i, {at}, \
           jsonb_build_object('i', i, 'tags', jsonb_build_array('a', 'b')) \
         FROM generate_series({first}, {last}) AS i"
    )
}

/// `measure`, once printed.
fn reported(measure: Measure) -> Measure {
    report_one(&measure);
    measure
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
    let measured = Measure {
        name: "pg_recvlogical (pgoutput → /dev/null)",
        events: rows,
        seconds: started.elapsed().as_secs_f64(),
        usage,
    };
    report_one(&measured);
    Ok(measured)
}

/// Where a measured sluice sends its events.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sink {
    Broker,
    Blackhole,
}

impl Sink {
    fn name(self) -> &'static str {
        match self {
            Sink::Broker => "broker",
            Sink::Blackhole => "blackhole",
        }
    }

    /// `[sink] kind` in sluice's config.
    fn kind(self) -> &'static str {
        match self {
            Sink::Broker => "kafka",
            Sink::Blackhole => "blackhole",
        }
    }
}

/// One sluice run: its topic prefix (which also names its files), slot, snapshot mode and sink.
struct Run<'a> {
    prefix: &'a str,
    slot: &'a str,
    /// The table (in `public`) and its publication, which has its name.
    table: &'a str,
    snapshot: &'a str,
    sink: Sink,
    /// More `[source]` lines.
    source_extra: &'a str,
    /// `[[transforms]]` tables.
    transforms: &'a str,
}

/// The transforms of the `xform` row: the table routed to another topic, its label hashed, the row
/// unwrapped with two added fields.
const TRANSFORMS: &str = r#"[[transforms]]
type = "route"
match = 'xform\.public\.(.*)'
replace = "xform.routed.$1"

[[transforms]]
type = "mask"
columns = ["public.bench.label"]
with = "hash"
salt = "bench-salt"

[[transforms]]
type = "unwrap"
add_fields = ["op", "source.ts_ms"]
"#;

impl<'a> Run<'a> {
    fn streaming(prefix: &'a str, slot: &'a str, sink: Sink) -> Self {
        Run::snapshot(prefix, slot, "never", sink)
    }

    fn snapshot(prefix: &'a str, slot: &'a str, snapshot: &'a str, sink: Sink) -> Self {
        Run {
            prefix,
            slot,
            table: "bench",
            snapshot,
            sink,
            source_extra: "",
            transforms: "",
        }
    }
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
    /// Streaming to the blackhole as `null` does, through the transforms of [`TRANSFORMS`].
    fn measure_transformed(&self) -> Result<Option<Measure>> {
        let run = Run {
            transforms: TRANSFORMS,
            ..Run::streaming("xform", "bench_xform", Sink::Blackhole)
        };
        self.measure_sluice("sluice → blackhole through route + mask + unwrap", &run)
    }

    /// Runs sluice from its own slot (and topic prefix) until every row is on the broker, or, for the
    /// blackhole, counted by its metrics; `None` when `--only` leaves it out.
    fn measure_sluice(&self, name: &'static str, run: &Run<'_>) -> Result<Option<Measure>> {
        if !self.args.wants(run.prefix) {
            return Ok(None);
        }
        let (mut child, sluice) = self.start_sluice(run)?;
        let started = Instant::now();
        let profiler = match &self.args.perf {
            Some(dir) => {
                let output = dir.join(format!("{}.perf.data", run.prefix));
                match Profiler::attach(child.id(), &output) {
                    Ok(profiler) => Some(profiler),
                    Err(err) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(
                            err.context(format!("sluice's log is {}", sluice.log.display()))
                        );
                    }
                }
            }
            None => None,
        };
        let timeout = Duration::from_secs(self.args.timeout_secs);
        let usage = follow(&mut child, timeout, || {
            Ok(sluice.events_done(&self.counter)? >= self.args.rows)
        });
        let seconds = started.elapsed().as_secs_f64();
        if let Some(profiler) = profiler {
            profiler.finish()?;
        }
        let usage = usage.with_context(|| format!("sluice's log is {}", sluice.log.display()))?;
        // Counted before the stop: the blackhole's count lives in the process.
        let done = sluice.events_done(&self.counter)?;
        if run.snapshot == "initial_only" {
            // It stores the position and drops its slot, then exits by itself.
            let status = child.wait()?;
            if !status.success() {
                bail!(
                    "{name}: sluice exited with {status}; its log is {}",
                    sluice.log.display()
                );
            }
        } else {
            stop(&mut child)?;
        }
        if done < self.args.rows {
            bail!(
                "{name}: {done} of {} rows delivered; sluice's log is {}",
                self.args.rows,
                sluice.log.display()
            );
        }
        let measured = Measure {
            name,
            events: self.args.rows,
            seconds,
            usage,
        };
        report_one(&measured);
        Ok(Some(measured))
    }

    /// Starts `sluice run` with its own config, log and metrics endpoint.
    fn start_sluice(&self, run: &Run<'_>) -> Result<(Child, Started)> {
        let mut config = ConfigFile::local(
            self.pg.url(DATABASE),
            self.broker.bootstrap(),
            Some(self.registry.url()),
            self.work.join(format!("{}-positions", run.prefix)),
        );
        config.slot = run.slot.into();
        config.publication = run.table.into();
        config.tables = vec![format!("public.{}", run.table)];
        config.source_extra = format!("snapshot = \"{}\"\n{}", run.snapshot, run.source_extra);
        config.topic_prefix = run.prefix.into();
        config.sink_kind = run.sink.kind().into();
        config.transforms = run.transforms.into();
        let api = format!("127.0.0.1:{}", sluice_testkit::free_port());
        config.api_address = Some(api.clone());
        config.set_kafka("linger.ms", &self.args.linger_ms.to_string());
        for property in &self.args.kafka {
            let (key, value) = property
                .split_once('=')
                .with_context(|| format!("--kafka {property}: not KEY=VALUE"))?;
            config.set_kafka(key, value);
        }
        let path = config.write(&self.work.join(format!("{}.toml", run.prefix)))?;
        let log = self.work.join(format!("{}.log", run.prefix));
        let child = Command::new(&self.args.sluice)
            .args(["run", "-c"])
            .arg(&path)
            .env("SLUICE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", self.args.sluice.display()))?;
        Ok((
            child,
            Started {
                topic: format!("{}.public.{}", run.prefix, run.table),
                sink: run.sink,
                api,
                log,
            },
        ))
    }
}

/// What the harness needs to know of a running sluice.
struct Started {
    topic: String,
    sink: Sink,
    /// `host:port` of its metrics endpoint.
    api: String,
    log: PathBuf,
}

impl Started {
    /// Events delivered so far: on the broker's topic, or counted by the blackhole run's metrics.
    fn events_done(&self, counter: &BaseConsumer) -> Result<u64> {
        match self.sink {
            Sink::Broker => messages_on(counter, &self.topic),
            Sink::Blackhole => Ok(latency::Scrape::get(&self.api)
                .map(|scrape| scrape.events())
                .unwrap_or(0)),
        }
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

/// Threads sluice has once its runtime is up: main and one worker per CPU.
fn runtime_threads() -> usize {
    1 + std::thread::available_parallelism().map_or(1, usize::from)
}

/// `perf record` attached to one measured process.
struct Profiler {
    child: Child,
    output: PathBuf,
}

impl Profiler {
    fn attach(pid: u32, output: &Path) -> Result<Profiler> {
        std::fs::create_dir_all(output.parent().unwrap_or(Path::new(".")))?;
        // Attached right after the start, perf may record the main thread alone (one of the profiles
        // behind RESULTS.md had no sample from the runtime's workers): wait for them.
        let deadline = Instant::now() + Duration::from_secs(5);
        let tasks = format!("/proc/{pid}/task");
        while std::fs::read_dir(&tasks)
            .with_context(|| format!("reading {tasks}: did sluice exit at once?"))?
            .count()
            < runtime_threads()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        // DWARF unwinding: the release build keeps debug info but no frame pointers. 499 Hz keeps a
        // 1,000,000-row run's data to a few hundred MB.
        let child = Command::new("perf")
            .args([
                "record",
                "-F",
                "499",
                "--call-graph",
                "dwarf,16384",
                "-q",
                "-o",
            ])
            .arg(output)
            .args(["-p", &pid.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .context("starting perf (Debian package linux-perf)")?;
        Ok(Profiler {
            child,
            output: output.to_owned(),
        })
    }

    /// Stops recording (SIGINT, as perf expects) and says how to read the profile.
    fn finish(mut self) -> Result<()> {
        // perf has ended by itself when sluice did (an `initial_only` snapshot); the status tells.
        let _ = sluice_testkit::signal(self.child.id(), "INT");
        let status = self.child.wait()?;
        // perf writes its data and then ends by the signal it was sent.
        if !status.success() && status.signal() != Some(2) {
            bail!("perf record exited with {status}");
        }
        eprintln!(
            "profile: perf report -i {} --no-children --sort symbol",
            self.output.display()
        );
        Ok(())
    }
}

/// SIGTERM and a clean exit.
fn stop(child: &mut Child) -> Result<()> {
    // A sluice that already exited cannot be signalled; its status below says how it ended.
    let _ = sluice_testkit::signal(child.id(), "TERM");
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
