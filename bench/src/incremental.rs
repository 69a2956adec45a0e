//! The incremental snapshot's row: sluice re-reads the whole table in chunks (signalled with
//! `sluice snapshot`, as a user would) while a writer updates random rows, to the blackhole sink, so that
//! the figure is sluice's and compares with the initial snapshot to the same sink.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{follow, latency::Scrape, stop, Bench, Measure, Run, Sink};

/// The writer's pace while the table is re-read: transactions of this many updated rows...
const WRITER_BATCH: u64 = 10;
/// ...every this often (about 1,000 rows/s).
const WRITER_EVERY: Duration = Duration::from_millis(10);

impl Bench<'_> {
    /// Streams from a slot of its own, asks for an incremental snapshot of `bench`, and times it until
    /// every row was read.
    pub(super) async fn measure_incremental(
        &self,
        client: &tokio_postgres::Client,
    ) -> Result<Measure> {
        let run = Run {
            prefix: "incr",
            slot: "bench_incr",
            table: "bench",
            snapshot: "never",
            sink: Sink::Blackhole,
            source_extra: "signal_table = \"public.bench_signals\"",
            transforms: "",
        };
        let (mut child, sluice) = self.start_sluice(&run)?;
        let config = self.work.join("incr.toml");
        let deadline = Instant::now() + Duration::from_secs(120);
        while !Scrape::get(&sluice.api).is_ok_and(|s| s.streaming()) {
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!(
                    "sluice did not start streaming; its log is {}",
                    sluice.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let stop_writer = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let writer = tokio::spawn(write_updates(
            self.pg.url(super::DATABASE),
            self.args.rows,
            stop_writer.clone(),
            written.clone(),
        ));
        let started = Instant::now();
        let signalled = std::process::Command::new(&self.args.sluice)
            .args(["snapshot", "-c"])
            .arg(&config)
            .arg("public.bench")
            .output()?;
        if !signalled.status.success() {
            bail!(
                "sluice snapshot: {}",
                String::from_utf8_lossy(&signalled.stderr)
            );
        }
        let rows = self.args.rows;
        let timeout = Duration::from_secs(self.args.timeout_secs);
        let usage = follow(&mut child, timeout, || {
            Ok(Scrape::get(&sluice.api).is_ok_and(|s| s.incremental_rows() >= rows))
        })
        .with_context(|| format!("sluice's log is {}", sluice.log.display()))?;
        let seconds = started.elapsed().as_secs_f64();
        stop_writer.store(true, Relaxed);
        writer.await??;
        stop(&mut child)?;
        eprintln!(
            "incremental snapshot: a writer updated {} rows meanwhile ({:.0} rows/s)",
            written.load(Relaxed),
            written.load(Relaxed) as f64 / seconds
        );
        // The slot is this run's alone.
        client
            .batch_execute("SELECT pg_drop_replication_slot('bench_incr')")
            .await?;
        Ok(Measure {
            name: "sluice incremental snapshot → blackhole sink (writer running)",
            events: rows,
            seconds,
            usage,
        })
    }
}

/// Updates random rows of `bench` in small transactions until told to stop.
async fn write_updates(
    url: String,
    rows: u64,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
) -> Result<()> {
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    while !stop.load(Relaxed) {
        let ids: Vec<String> = (0..WRITER_BATCH)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed % rows + 1).to_string()
            })
            .collect();
        client
            .batch_execute(&format!(
                "UPDATE bench SET n = n + 1 WHERE id IN ({})",
                ids.join(", ")
            ))
            .await?;
        written.fetch_add(WRITER_BATCH, Relaxed);
        tokio::time::sleep(WRITER_EVERY).await;
    }
    Ok(())
}
