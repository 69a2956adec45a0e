//! Commit-to-acknowledgement latency at a steady rate: a paced writer commits small transactions while
//! sluice streams them, and the latency comes from sluice's own `sluice_commit_to_ack_seconds` histogram
//! (per transaction: from the commit, by PostgreSQL's clock, to the broker's acknowledgement of its last
//! event). PostgreSQL and sluice share this machine's clock, so no skew enters the figure.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{insert_rows, stop, Bench, Run};

const HISTOGRAM: &str = "sluice_commit_to_ack_seconds";
/// Writes before the measured window: the first transactions also register schemas and create topics.
const WARM_UP: Duration = Duration::from_secs(3);
/// Longest wait for sluice to deliver what the writer committed.
const CATCH_UP: Duration = Duration::from_secs(300);

/// The paced writer's load.
pub struct Pace {
    pub rows_per_second: u64,
    pub batch: u64,
    pub seconds: u64,
}

/// One latency measurement.
pub struct Latency {
    /// Rows written, warm-up included (the next run's ids start after them).
    pub rows: u64,
    /// Transactions in the measured window.
    transactions: u64,
    /// The rate the writer reached in the measured window.
    rows_per_second: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    /// Share of the window's transactions acknowledged within 50 ms of their commit.
    within_50ms: f64,
}

impl Latency {
    pub fn describe(&self, sink: &str) -> String {
        format!(
            "latency to the {sink}: {} transactions at {:.0} rows/s, p50 {} ms, p99 {} ms, {:.1}% within 50 ms",
            self.transactions,
            self.rows_per_second,
            show_ms(self.p50_ms),
            show_ms(self.p99_ms),
            100.0 * self.within_50ms
        )
    }

    pub fn table_row(&self, sink: &str) -> String {
        format!(
            "| {sink} | {} | {:.0} | {} | {} | {:.1}% |",
            self.transactions,
            self.rows_per_second,
            show_ms(self.p50_ms),
            show_ms(self.p99_ms),
            100.0 * self.within_50ms
        )
    }
}

/// None: in the histogram's +Inf bucket.
fn show_ms(ms: Option<f64>) -> String {
    ms.map_or_else(|| "> 60000".to_owned(), |ms| format!("{ms:.1}"))
}

impl Bench<'_> {
    /// Streams `run` while the writer commits `pace`, ids from `first_id` on.
    pub async fn measure_latency(
        &self,
        run: &Run<'_>,
        client: &tokio_postgres::Client,
        pace: &Pace,
        first_id: u64,
    ) -> Result<Latency> {
        let (mut child, sluice) = self.start_sluice(run)?;
        let outcome = async {
            wait_streaming(client, run.slot, &mut child).await?;
            let mut writer = Writer {
                client,
                next_id: first_id,
                batch: pace.batch,
                transactions: 0,
            };
            let every = Duration::from_secs_f64(pace.batch as f64 / pace.rows_per_second as f64);
            writer.paced(every, WARM_UP).await?;
            let warm = writer.next_id - first_id;
            // The window opens once every warm-up transaction is timed, and closes once every one of
            // its own is: each transaction is counted in exactly one of them.
            let before = wait_timed(&sluice.api, writer.transactions).await?;

            let started = Instant::now();
            writer
                .paced(every, Duration::from_secs(pace.seconds))
                .await?;
            let rows_per_second =
                (writer.next_id - first_id - warm) as f64 / started.elapsed().as_secs_f64();
            let rows = writer.next_id - first_id;
            let after = wait_timed(&sluice.api, writer.transactions).await?;
            let window = after.histogram_since(&before);
            if window.total() == 0 {
                bail!("no transaction was timed in the measured window");
            }
            Ok::<_, anyhow::Error>(Latency {
                rows,
                transactions: window.total(),
                rows_per_second,
                p50_ms: window.quantile(0.50).map(|s| s * 1000.0),
                p99_ms: window.quantile(0.99).map(|s| s * 1000.0),
                within_50ms: window.share_within(0.050),
            })
        }
        .await;
        let stopped = stop(&mut child);
        let latency =
            outcome.with_context(|| format!("sluice's log is {}", sluice.log.display()))?;
        stopped?;
        Ok(latency)
    }
}

async fn wait_streaming(
    client: &tokio_postgres::Client,
    slot: &str,
    child: &mut std::process::Child,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let active: bool = client
            .query_one(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await?
            .get(0);
        if active {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("sluice exited with {status} before streaming");
        }
        if Instant::now() > deadline {
            bail!("sluice did not start streaming within a minute");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until sluice's histogram has timed `transactions` transactions (all of them carry events) and
/// returns that scrape.
async fn wait_timed(api: &str, transactions: u64) -> Result<Scrape> {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let scrape = Scrape::get(api)?;
        let timed = scrape.transactions();
        if timed >= transactions {
            return Ok(scrape);
        }
        if Instant::now() > deadline {
            bail!("{timed} of {transactions} transactions acknowledged after {CATCH_UP:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Commits `batch` rows every tick.
struct Writer<'a> {
    client: &'a tokio_postgres::Client,
    next_id: u64,
    batch: u64,
    /// Committed so far.
    transactions: u64,
}

impl Writer<'_> {
    /// One transaction every `every` for `during`. A tick missed while a commit was slow is made up at
    /// once (tokio's burst behaviour), so the average rate holds.
    async fn paced(&mut self, every: Duration, during: Duration) -> Result<()> {
        let until = Instant::now() + during;
        let mut ticks = tokio::time::interval(every);
        while Instant::now() < until {
            ticks.tick().await;
            let (first, last) = (self.next_id, self.next_id + self.batch - 1);
            self.client
                .batch_execute(&insert_rows(first, last, "now()"))
                .await?;
            self.next_id = last + 1;
            self.transactions += 1;
        }
        Ok(())
    }
}

/// One read of sluice's `/metrics`.
pub struct Scrape {
    events: u64,
    incremental_rows: u64,
    reselected: u64,
    streaming: bool,
    /// The commit-to-ack histogram: (upper bound in seconds, cumulative count), +Inf last.
    buckets: Vec<(f64, u64)>,
}

impl Scrape {
    pub fn get(address: &str) -> Result<Scrape> {
        let (_, body) =
            sluice_testkit::http_get(address, "/metrics").context("reading sluice's metrics")?;
        Ok(Scrape::parse(&body))
    }

    fn parse(text: &str) -> Scrape {
        let mut scrape = Scrape {
            events: 0,
            incremental_rows: 0,
            reselected: 0,
            streaming: false,
            buckets: Vec::new(),
        };
        let bucket_prefix = format!("{HISTOGRAM}_bucket{{le=\"");
        for line in text.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<u64>() else {
                continue;
            };
            if series.starts_with("sluice_events_total{") {
                scrape.events += value;
            } else if series.starts_with("sluice_incremental_snapshot_rows{") {
                scrape.incremental_rows += value;
            } else if series.starts_with("sluice_reselect_total{")
                && series.contains("outcome=\"reselected\"")
            {
                scrape.reselected += value;
            } else if series == "sluice_streaming" {
                scrape.streaming = value == 1;
            } else if let Some(bound) = series.strip_prefix(&bucket_prefix) {
                let bound = bound.trim_end_matches("\"}");
                let bound = if bound == "+Inf" {
                    f64::INFINITY
                } else {
                    bound.parse().unwrap_or(f64::INFINITY)
                };
                scrape.buckets.push((bound, value));
            }
        }
        scrape
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    /// Rows the incremental snapshot has read, over every table.
    pub fn incremental_rows(&self) -> u64 {
        self.incremental_rows
    }

    /// Updates whose unchanged TOAST values were re-selected.
    pub fn reselected(&self) -> u64 {
        self.reselected
    }

    /// Whether sluice is streaming from its slot.
    pub fn streaming(&self) -> bool {
        self.streaming
    }

    /// Transactions the commit-to-ack histogram has timed.
    fn transactions(&self) -> u64 {
        self.buckets.last().map_or(0, |(_, count)| *count)
    }

    /// The histogram of what was observed after `earlier`.
    fn histogram_since(&self, earlier: &Scrape) -> Window {
        Window(
            self.buckets
                .iter()
                .map(|&(bound, count)| {
                    let before = earlier
                        .buckets
                        .iter()
                        .find(|(b, _)| *b == bound)
                        .map_or(0, |(_, c)| *c);
                    (bound, count.saturating_sub(before))
                })
                .collect(),
        )
    }
}

/// Cumulative bucket counts of one measured window.
struct Window(Vec<(f64, u64)>);

impl Window {
    fn total(&self) -> u64 {
        self.0.last().map_or(0, |(_, count)| *count)
    }

    /// Interpolated linearly within the bucket that holds the quantile, as Prometheus'
    /// `histogram_quantile` does; None when it lies in the +Inf bucket (or nothing was observed).
    fn quantile(&self, q: f64) -> Option<f64> {
        let rank = q * self.total() as f64;
        let mut lower = (0.0, 0u64);
        for &(bound, count) in &self.0 {
            if count as f64 >= rank && count > 0 {
                if bound.is_infinite() {
                    return None;
                }
                let within = (rank - lower.1 as f64) / (count - lower.1) as f64;
                return Some(lower.0 + (bound - lower.0) * within);
            }
            lower = (bound, count);
        }
        None
    }

    fn share_within(&self, seconds: f64) -> f64 {
        let within = self
            .0
            .iter()
            .find(|(bound, _)| (*bound - seconds).abs() < 1e-9)
            .map_or(0, |(_, count)| *count);
        within as f64 / self.total().max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "\
sluice_events_total{table=\"public.bench\",op=\"c\"} 900
sluice_events_total{table=\"public.other\",op=\"u\"} 100
sluice_commit_to_ack_seconds_bucket{le=\"0.010\"} 50
sluice_commit_to_ack_seconds_bucket{le=\"0.050\"} 99
sluice_commit_to_ack_seconds_bucket{le=\"0.100\"} 100
sluice_commit_to_ack_seconds_bucket{le=\"+Inf\"} 100
";

    #[test]
    fn quantiles_interpolate_within_their_bucket() {
        let scrape = Scrape::parse(METRICS);
        assert_eq!(scrape.events(), 1_000);
        let empty = Scrape::parse("");
        let window = scrape.histogram_since(&empty);
        assert_eq!(window.total(), 100);
        assert!((window.quantile(0.5).unwrap() - 0.010).abs() < 1e-9);
        // Rank 99 is the last of the (0.010, 0.050] bucket.
        assert!((window.quantile(0.99).unwrap() - 0.050).abs() < 1e-9);
        assert!((window.quantile(0.25).unwrap() - 0.005).abs() < 1e-9);
        assert!((window.share_within(0.050) - 0.99).abs() < 1e-9);
    }

    #[test]
    fn a_window_counts_only_what_came_after_the_first_scrape() {
        let before = Scrape::parse(
            "sluice_commit_to_ack_seconds_bucket{le=\"0.010\"} 40\n\
             sluice_commit_to_ack_seconds_bucket{le=\"0.050\"} 40\n\
             sluice_commit_to_ack_seconds_bucket{le=\"0.100\"} 40\n\
             sluice_commit_to_ack_seconds_bucket{le=\"+Inf\"} 40\n",
        );
        let window = Scrape::parse(METRICS).histogram_since(&before);
        assert_eq!(window.total(), 60);
        assert!((window.share_within(0.050) - 59.0 / 60.0).abs() < 1e-9);
        assert_eq!(
            Scrape::parse(&METRICS.replace("+Inf\"} 100", "+Inf\"} 200"))
                .histogram_since(&Scrape::parse(""))
                .quantile(0.99),
            None,
            "in the +Inf bucket"
        );
    }
}
