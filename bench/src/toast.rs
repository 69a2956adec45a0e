//! The re-select rows: updates that each leave a TOASTed column unchanged (so PostgreSQL does not send its
//! value), streamed to the blackhole with `reselect_unchanged_toast` on and off. The difference is the cost
//! of reading the values again, one query per update.

use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::{follow, latency::Scrape, stop, Bench, Measure, Run, Sink};

/// The table, and its publication.
const TABLE: &str = "bench_toast";
/// md5 digests per body: 3,200 hex digits, which pglz cannot squeeze under the inline limit (about 2 kB),
/// so every body is stored out of line.
const BODY_DIGESTS: u32 = 100;

impl Bench<'_> {
    /// Writes `--rows / 20` rows with a TOASTed body, then updates each once (another column), in
    /// transactions of `--batch`; streams the updates with re-selecting on, then off.
    pub(super) async fn measure_reselect(
        &self,
        client: &tokio_postgres::Client,
    ) -> Result<[Measure; 2]> {
        let rows = (self.args.rows / 20).max(1_000);
        let started = Instant::now();
        write(client, rows, self.args.batch).await?;
        eprintln!(
            "wrote and updated {rows} rows with TOASTed bodies in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let on = Run {
            table: TABLE,
            source_extra: "reselect_unchanged_toast = true",
            ..Run::streaming("toast", "bench_toast_on", Sink::Blackhole)
        };
        let off = Run {
            table: TABLE,
            ..Run::streaming("toastoff", "bench_toast_off", Sink::Blackhole)
        };
        let on =
            self.measure_updates(&on, rows, "sluice → blackhole, unchanged TOAST re-selected")?;
        let off = self.measure_updates(
            &off,
            rows,
            "sluice → blackhole, unchanged TOAST left absent",
        )?;
        Ok([on, off])
    }

    /// Streams `rows` updates from the run's slot to the blackhole; with re-selecting on, checks that every
    /// update's value was read.
    fn measure_updates(&self, run: &Run<'_>, rows: u64, name: &'static str) -> Result<Measure> {
        let (mut child, sluice) = self.start_sluice(run)?;
        let started = Instant::now();
        let timeout = std::time::Duration::from_secs(self.args.timeout_secs);
        let usage = follow(&mut child, timeout, || {
            Ok(Scrape::get(&sluice.api).is_ok_and(|s| s.events() >= rows))
        })
        .with_context(|| format!("sluice's log is {}", sluice.log.display()))?;
        let seconds = started.elapsed().as_secs_f64();
        let reselected = Scrape::get(&sluice.api)?.reselected();
        stop(&mut child)?;
        let expected = if run.source_extra.is_empty() { 0 } else { rows };
        if reselected != expected {
            bail!(
                "{name}: {reselected} of {rows} updates had their values re-selected, expected \
                 {expected}; sluice's log is {}",
                sluice.log.display()
            );
        }
        Ok(super::reported(Measure {
            name,
            events: rows,
            seconds,
            usage,
        }))
    }
}

/// The table and its rows, then the slots (which see only what follows), then one update per row.
async fn write(client: &tokio_postgres::Client, rows: u64, batch: u64) -> Result<()> {
    client
        .batch_execute(&format!(
            "CREATE TABLE {TABLE} (id bigint PRIMARY KEY, n int NOT NULL, body text);
             CREATE PUBLICATION {TABLE} FOR TABLE {TABLE};"
        ))
        .await?;
    let body = format!(
        "(SELECT string_agg(md5((i * {BODY_DIGESTS} + j)::text), '') \
         FROM generate_series(1, {BODY_DIGESTS}) AS j)"
    );
    for first in (1..=rows).step_by(batch as usize) {
        let last = (first + batch - 1).min(rows);
        client
            .batch_execute(&format!(
                "INSERT INTO {TABLE} SELECT i, 0, {body} FROM generate_series({first}, {last}) AS i"
            ))
            .await?;
    }
    // One statement each: a slot cannot be created in a transaction that has written.
    for slot in ["bench_toast_on", "bench_toast_off"] {
        client
            .batch_execute(&format!(
                "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
            ))
            .await?;
    }
    for first in (1..=rows).step_by(batch as usize) {
        let last = (first + batch - 1).min(rows);
        client
            .batch_execute(&format!(
                "UPDATE {TABLE} SET n = 1 WHERE id BETWEEN {first} AND {last}"
            ))
            .await?;
    }
    Ok(())
}
