//! What the daemon knows about itself, exposed in Prometheus' text format for `/metrics` and summed up for
//! `/health/ready`. Counters by label sit behind one short lock per event; everything updated from other
//! threads (delivery reports, the source reader) is an atomic. The exposition reads them on each scrape
//! (see `exposition.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::registry::Registry;

use crate::deadletter::Stage;
use crate::pipeline::ack::AckTracker;
use sluice_core::event::Lsn;
use sluice_core::metrics::SourceMetrics;
use sluice_core::positions::now_ms;

mod exposition;
pub mod histogram;

use histogram::Histogram;

pub struct Metrics {
    state: Arc<State>,
    /// Holds the collector that encodes `state` on each scrape.
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let state = Arc::new(State::default());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(exposition::Exposition(state.clone())));
        Metrics { state, registry }
    }
}

#[derive(Default)]
struct State {
    counters: Mutex<Counters>,
    /// Where the in-flight count is read from, once the pipeline has one.
    tracker: OnceLock<Arc<AckTracker>>,
    /// Key and value bytes of the change events handed to the producer.
    bytes: AtomicU64,
    /// The server's current WAL position (`pg_current_wal_lsn()`), asked every few seconds (0: not yet).
    server_wal_end: AtomicU64,
    /// The position stored and reported to the server.
    acknowledged: AtomicU64,
    /// Commit-to-publish delay of the newest streamed change, in ms (Debezium's MilliSecondsBehindSource).
    behind_ms: AtomicI64,
    reconnects: AtomicU64,
    /// When the last delivery report arrived (ms since the epoch; 0: none yet).
    last_delivery_ms: AtomicI64,
    streaming: AtomicBool,
    /// Starts false: the pipeline does not start before the broker answered.
    broker_unreachable: AtomicBool,
    snapshot_running: AtomicBool,
    latency: Histogram,
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Default)]
struct Counters {
    /// table → op → events published (dead letters not included). Looked up by `&str`: no allocation per
    /// event.
    events: HashMap<String, BTreeMap<&'static str, u64>>,
    /// (stage, table or topic) → dead letters.
    dead_letters: BTreeMap<(&'static str, String), u64>,
    /// table → events published with a TOASTed value PostgreSQL did not send and sluice could not restore.
    unchanged_toast: BTreeMap<String, u64>,
    /// (table, column) → rows published with that column's value null for want of an encoding.
    unencodable: BTreeMap<(String, String), u64>,
    /// (table, outcome) → updates whose unchanged TOAST values were to be re-selected.
    reselect: BTreeMap<(String, &'static str), u64>,
    /// `transforms[i] (type)` → changes it dropped.
    transform_dropped: BTreeMap<String, u64>,
    /// table → its snapshot's progress.
    snapshot: BTreeMap<String, Arc<SnapshotProgress>>,
    /// table → its incremental snapshot's progress.
    incremental: BTreeMap<String, IncrementalProgress>,
}

/// How far one table's incremental snapshot got, as the source last reported.
#[derive(Clone, Copy, Default)]
struct IncrementalProgress {
    rows: u64,
    estimated: u64,
    chunks: u64,
}

pub use sluice_core::metrics::SnapshotProgress;

/// Why `/health/ready` says no, if it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    Snapshotting,
    NotStreaming,
    BrokerUnreachable,
}

impl NotReady {
    pub fn as_str(self) -> &'static str {
        match self {
            NotReady::Snapshotting => "taking the initial snapshot",
            NotReady::NotStreaming => "not streaming from the source",
            NotReady::BrokerUnreachable => "the broker is unreachable",
        }
    }
}

impl Metrics {
    pub fn event_published(&self, table: &str, op: &'static str, bytes: usize) {
        self.state.bytes.fetch_add(bytes as u64, Relaxed);
        let mut counters = self.state.lock();
        match counters.events.get_mut(table) {
            Some(ops) => *ops.entry(op).or_default() += 1,
            None => {
                counters
                    .events
                    .insert(table.to_owned(), BTreeMap::from([(op, 1)]));
            }
        }
    }

    pub fn dead_letter(&self, stage: Stage, table: &str) {
        *self
            .state
            .lock()
            .dead_letters
            .entry((stage.as_str(), table.to_owned()))
            .or_default() += 1;
    }

    /// A row of `table` was published with `column`'s value null: it has no encoding in the column's type.
    pub fn unencodable(&self, table: &str, column: &str) {
        *self
            .state
            .lock()
            .unencodable
            .entry((table.to_owned(), column.to_owned()))
            .or_default() += 1;
    }

    /// A transform (`transforms[1] (filter)`) dropped a change.
    pub fn transform_dropped(&self, transform: &str) {
        let mut counters = self.state.lock();
        match counters.transform_dropped.get_mut(transform) {
            Some(count) => *count += 1,
            None => {
                counters.transform_dropped.insert(transform.to_owned(), 1);
            }
        }
    }

    /// An event of `table` went out with an unchanged TOAST value it could not restore (marked in the
    /// event, see schemas/README.md).
    pub fn unchanged_toast(&self, table: &str) {
        *self
            .state
            .lock()
            .unchanged_toast
            .entry(table.to_owned())
            .or_default() += 1;
    }

    /// Reads the in-flight count from `tracker` from now on.
    pub fn follow(&self, tracker: Arc<AckTracker>) {
        let _ = self.state.tracker.set(tracker);
    }

    /// A message's delivery report arrived `ms` after it was produced.
    pub fn acknowledged_after(&self, ms: u64) {
        self.state.latency.observe_us(ms * 1000);
        self.state.last_delivery_ms.store(now_ms(), Relaxed);
    }

    /// Milliseconds since the broker last answered a produce request (None: it has not yet).
    pub fn since_last_delivery_ms(&self) -> Option<i64> {
        match self.state.last_delivery_ms.load(Relaxed) {
            0 => None,
            at => Some(now_ms() - at),
        }
    }

    /// The newest streamed change committed at `commit_time_us` was published now.
    pub fn published_commit(&self, commit_time_us: i64) {
        let behind = (now_ms() - commit_time_us / 1000).max(0);
        self.state.behind_ms.store(behind, Relaxed);
    }

    pub fn position_stored(&self, lsn: Lsn) {
        self.state.acknowledged.fetch_max(lsn.0, Relaxed);
    }

    pub fn set_broker_reachable(&self, reachable: bool) {
        self.state.broker_unreachable.store(!reachable, Relaxed);
    }

    /// Ready means streaming with the broker reachable: what a probe or a load balancer wants to know.
    pub fn readiness(&self) -> Result<(), NotReady> {
        let state = &self.state;
        if state.snapshot_running.load(Relaxed) {
            Err(NotReady::Snapshotting)
        } else if !state.streaming.load(Relaxed) {
            Err(NotReady::NotStreaming)
        } else if state.broker_unreachable.load(Relaxed) {
            Err(NotReady::BrokerUnreachable)
        } else {
            Ok(())
        }
    }

    /// Dead letters so far, in total.
    pub fn dead_letter_total(&self) -> u64 {
        self.state.lock().dead_letters.values().sum()
    }

    /// `stage table=count, …`, for the final log line.
    pub fn dead_letter_breakdown(&self) -> String {
        let counters = self.state.lock();
        let parts: Vec<String> = counters
            .dead_letters
            .iter()
            .map(|((stage, table), count)| format!("{stage} {table}={count}"))
            .collect();
        parts.join(", ")
    }

    /// The Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        exposition::histograms(&self.state, &mut out);
        out
    }
}

/// What a source reports lands in the same counters.
impl SourceMetrics for Metrics {
    fn server_wal_end(&self, lsn: Lsn) {
        self.state.server_wal_end.fetch_max(lsn.0, Relaxed);
    }

    fn reconnected(&self) {
        self.state.reconnects.fetch_add(1, Relaxed);
    }

    fn set_streaming(&self, streaming: bool) {
        self.state.streaming.store(streaming, Relaxed);
    }

    fn set_snapshot_running(&self, running: bool) {
        self.state.snapshot_running.store(running, Relaxed);
    }

    fn reselected(&self, table: &str, outcome: &'static str) {
        *self
            .state
            .lock()
            .reselect
            .entry((table.to_owned(), outcome))
            .or_default() += 1;
    }

    fn incremental_snapshot_table(
        &self,
        table: &str,
        rows: u64,
        estimated: Option<u64>,
        chunks: u64,
    ) {
        self.state.lock().incremental.insert(
            table.to_owned(),
            IncrementalProgress {
                rows,
                estimated: estimated.unwrap_or(0),
                chunks,
            },
        );
    }

    /// Starts following one table's snapshot.
    fn snapshot_table(&self, table: &str, estimated_rows: Option<u64>) -> Arc<SnapshotProgress> {
        let progress = Arc::new(SnapshotProgress::default());
        progress
            .estimated
            .store(estimated_rows.unwrap_or(0), Relaxed);
        self.state
            .lock()
            .snapshot
            .insert(table.to_owned(), progress.clone());
        progress
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family with sample data: table names that need escaping, several stages and ops, snapshot
    /// progress in each state, and both histograms with observations in the first, a middle and the +Inf
    /// bucket.
    fn populated() -> Metrics {
        let metrics = Metrics::default();
        metrics.event_published("public.orders", "c", 100);
        metrics.event_published("public.orders", "c", 20);
        metrics.event_published("public.orders", "u", 7);
        metrics.event_published("public.orders", "d", 1);
        metrics.event_published("public.\"odd\"", "u", 3);
        metrics.event_published("public.back\\slash\nline", "r", 5);
        metrics.event_published("inventory.items", "r", 64);
        metrics.dead_letter(Stage::Validate, "public.orders");
        metrics.dead_letter(Stage::Validate, "public.orders");
        metrics.dead_letter(Stage::Produce, "orders-topic");
        metrics.dead_letter(Stage::Decode, "public.\"odd\"");
        metrics.unchanged_toast("public.orders");
        metrics.unchanged_toast("public.orders");
        metrics.unchanged_toast("public.docs");
        metrics.transform_dropped("transforms[1] (filter)");
        metrics.transform_dropped("transforms[1] (filter)");
        metrics.unencodable("public.orders", "amount");
        metrics.reselected("public.docs", "reselected");
        metrics.reselected("public.docs", "changed");
        let orders = metrics.snapshot_table("public.orders", Some(1000));
        orders.rows.fetch_add(250, Relaxed);
        metrics.snapshot_table("public.empty", None).finished();
        let docs = metrics.snapshot_table("public.docs", Some(42));
        docs.rows.fetch_add(42, Relaxed);
        docs.finished();
        metrics.incremental_snapshot_table("public.orders", 2048, Some(100_000), 2);
        metrics.incremental_snapshot_table("public.empty", 0, None, 1);
        let tracker = Arc::new(AckTracker::new());
        for _ in 0..7 {
            tracker.register();
        }
        for us in [500, 7_500, 12_345, 61_000_000] {
            tracker.commit_to_ack().observe_us(us);
        }
        metrics.follow(tracker);
        for ms in [0, 1, 3, 40, 40, 250, 60_000, 120_000] {
            metrics.acknowledged_after(ms);
        }
        metrics.server_wal_end(Lsn(0x1_0000_5000));
        metrics.position_stored(Lsn(0x1_0000_3500));
        metrics.state.behind_ms.store(2_345, Relaxed);
        metrics.reconnected();
        metrics.reconnected();
        metrics.set_streaming(true);
        metrics.set_broker_reachable(false);
        metrics.set_snapshot_running(true);
        metrics
    }

    /// `/metrics` of [`populated`] as rendered before the exposition moved to prometheus-client.
    const POPULATED: &str = include_str!("metrics/populated.prom");

    /// What a Prometheus scraper keeps of an exposition: each family's HELP and TYPE, and each series
    /// (sample name and labels) with its value; line order and number spelling do not matter to it.
    fn scraped(text: &str) -> BTreeMap<String, String> {
        let mut kept = BTreeMap::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            if let Some(comment) = line.strip_prefix("# ") {
                let (key, rest) = comment.split_at(4);
                let (name, meta) = rest.trim_start().split_once(' ').unwrap();
                assert!(matches!(key, "HELP" | "TYPE"), "{line}");
                kept.insert(format!("{name} {key}"), meta.to_owned());
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let mut pairs = Vec::new();
            let mut rest = labels.strip_suffix('}').unwrap_or(labels);
            while let Some((key, quoted)) = rest.split_once("=\"") {
                let mut unescaped = String::new();
                let mut chars = quoted.char_indices();
                let end = loop {
                    match chars.next().unwrap() {
                        (_, '\\') => unescaped.push(match chars.next().unwrap().1 {
                            'n' => '\n',
                            other => other,
                        }),
                        (i, '"') => break i,
                        (_, c) => unescaped.push(c),
                    }
                };
                pairs.push(format!("{}={unescaped:?}", key.trim_start_matches(',')));
                rest = &quoted[end + 1..];
            }
            pairs.sort();
            let previous = kept.insert(format!("{name}{{{}}}", pairs.join(",")), value.to_string());
            assert!(previous.is_none(), "duplicate series {line}");
        }
        kept
    }

    #[test]
    fn the_exposition_keeps_every_series_name_label_type_and_value() {
        let text = populated().render();
        let (before, after) = (scraped(POPULATED), scraped(&text));
        // The parser itself: escapes undone, labels sorted, histograms' series each on their own.
        assert_eq!(
            before.len(),
            22 * 2 + 6 + 3 + 2 + 3 * 3 + 3 * 2 + 8 + 2 * 25 + 2 + 2,
            "{before:#?}"
        );
        assert_eq!(
            before[r#"sluice_events_total{op="r",table="public.back\\slash\nline"}"#],
            "1"
        );
        let gone: Vec<_> = before
            .iter()
            .filter(|(k, v)| after.get(*k) != Some(v))
            .collect();
        let new: Vec<_> = after
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(v))
            .collect();
        assert!(
            gone.is_empty() && new.is_empty(),
            "was {gone:#?}\nnow {new:#?}"
        );
        // Nothing a parser could read differently either: the same bytes.
        assert_eq!(text, POPULATED);
    }

    #[test]
    fn counters_render_in_the_text_format() {
        let metrics = Metrics::default();
        metrics.event_published("public.orders", "c", 100);
        metrics.event_published("public.orders", "c", 20);
        metrics.event_published("public.\"odd\"", "u", 3);
        metrics.dead_letter(Stage::Validate, "public.orders");
        let tracker = Arc::new(AckTracker::new());
        for _ in 0..7 {
            tracker.register();
        }
        metrics.follow(tracker);
        let text = metrics.render();
        assert!(
            text.contains("sluice_events_total{table=\"public.orders\",op=\"c\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("sluice_events_total{table=\"public.\\\"odd\\\"\",op=\"u\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "sluice_dead_letters_total{stage=\"validate\",table=\"public.orders\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("sluice_in_flight_messages 7\n"), "{text}");
        assert!(text.contains("sluice_bytes_total 123\n"), "{text}");
        assert_eq!(metrics.dead_letter_total(), 1);
        assert_eq!(metrics.dead_letter_breakdown(), "validate public.orders=1");
    }

    #[test]
    fn latency_buckets_are_cumulative() {
        let metrics = Metrics::default();
        for ms in [0, 1, 3, 40, 40, 60_000] {
            metrics.acknowledged_after(ms);
        }
        let text = metrics.render();
        for line in [
            "sluice_broker_ack_latency_seconds_bucket{le=\"0.001\"} 2\n",
            "sluice_broker_ack_latency_seconds_bucket{le=\"0.005\"} 3\n",
            "sluice_broker_ack_latency_seconds_bucket{le=\"0.050\"} 5\n",
            "sluice_broker_ack_latency_seconds_bucket{le=\"30.000\"} 5\n",
            "sluice_broker_ack_latency_seconds_bucket{le=\"+Inf\"} 6\n",
            "sluice_broker_ack_latency_seconds_sum 60.084\n",
            "sluice_broker_ack_latency_seconds_count 6\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn lag_is_the_wal_between_the_server_end_and_the_stored_position() {
        let metrics = Metrics::default();
        metrics.server_wal_end(Lsn(5_000));
        metrics.position_stored(Lsn(3_500));
        // A late, older report never moves either backwards.
        metrics.server_wal_end(Lsn(4_000));
        assert!(metrics.render().contains("sluice_source_lag_bytes 1500\n"));
        metrics.published_commit((now_ms() - 2_000) * 1000);
        let text = metrics.render();
        let behind: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("sluice_source_lag_seconds "))
            .unwrap()
            .parse()
            .unwrap();
        assert!((2.0..3.0).contains(&behind), "{text}");
    }

    #[test]
    fn ready_only_when_streaming_with_the_broker_up() {
        let metrics = Metrics::default();
        assert_eq!(metrics.readiness(), Err(NotReady::NotStreaming));
        metrics.set_snapshot_running(true);
        assert_eq!(metrics.readiness(), Err(NotReady::Snapshotting));
        metrics.set_snapshot_running(false);
        metrics.set_streaming(true);
        assert_eq!(metrics.readiness(), Ok(()));
        metrics.set_broker_reachable(false);
        assert_eq!(metrics.readiness(), Err(NotReady::BrokerUnreachable));
        metrics.set_broker_reachable(true);
        assert_eq!(metrics.readiness(), Ok(()));
        assert!(metrics.render().contains("sluice_streaming 1\n"));
    }

    #[test]
    fn snapshot_progress_is_per_table() {
        let metrics = Metrics::default();
        let orders = metrics.snapshot_table("public.orders", Some(1000));
        orders.rows.fetch_add(250, Relaxed);
        metrics.snapshot_table("public.empty", None).finished();
        let text = metrics.render();
        for line in [
            "sluice_snapshot_rows{table=\"public.orders\"} 250\n",
            "sluice_snapshot_rows_estimated{table=\"public.orders\"} 1000\n",
            "sluice_snapshot_rows_estimated{table=\"public.empty\"} 0\n",
            "sluice_snapshot_table_finished{table=\"public.empty\"} 1\n",
            "sluice_snapshot_table_finished{table=\"public.orders\"} 0\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
