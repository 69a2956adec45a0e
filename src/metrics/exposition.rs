//! `/metrics`: the counters and gauges through prometheus-client (names, label escaping, number
//! formatting), read from [`State`] on each scrape; the two latency histograms by hand (see [`histograms`]).

use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::TypedMetric;

use super::{Counters, IncrementalProgress, SnapshotProgress, State};

/// Reads the metrics' state on each scrape. Names are given without the `_total` that the encoder appends
/// to a counter's.
pub(super) struct Exposition(pub(super) Arc<State>);

impl fmt::Debug for Exposition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Exposition")
    }
}

/// A metric family of per-table progress: its name, its help, and how it reads a table's progress.
type PerTable<P> = (&'static str, &'static str, fn(&P) -> u64);

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let state = &*self.0;
        {
            let counters = state.lock();
            counter_families(&counters, &mut encoder)?;
            snapshot_families(&counters, &mut encoder)?;
            incremental_families(&counters, &mut encoder)?;
        }
        singles(state, &mut encoder)
    }
}

/// The counters by label: events by table and op, dead letters, unchanged TOAST values, transforms' drops.
fn counter_families(counters: &Counters, encoder: &mut DescriptorEncoder) -> fmt::Result {
    let mut tables: Vec<&String> = counters.events.keys().collect();
    tables.sort();
    family(
        encoder,
        "sluice_events",
        "Change events published, by table and op.",
        tables.into_iter().flat_map(|table| {
            counters.events[table].iter().map(move |(op, count)| {
                (
                    [("table", table.as_str()), ("op", op)],
                    ConstCounter::new(*count),
                )
            })
        }),
    )?;
    family(
        encoder,
        "sluice_dead_letters",
        "Changes sent to the dead-letter topic, by stage and table.",
        counters.dead_letters.iter().map(|((stage, table), count)| {
            (
                [("stage", *stage), ("table", table.as_str())],
                ConstCounter::new(*count),
            )
        }),
    )?;
    family(
        encoder,
        "sluice_unchanged_toast",
        "Events published without a TOASTed value the update left unchanged and sluice could not restore (REPLICA IDENTITY FULL restores them), by table.",
        counters.unchanged_toast.iter().map(|(table, count)| {
            ([("table", table.as_str())], ConstCounter::new(*count))
        }),
    )?;
    family(
        encoder,
        "sluice_unencodable_values",
        "Rows published with a value null because it has no encoding in its column's Avro type (source.unencodable_values), by table and column.",
        counters.unencodable.iter().map(|((table, column), count)| {
            (
                [("table", table.as_str()), ("column", column.as_str())],
                ConstCounter::new(*count),
            )
        }),
    )?;
    family(
        encoder,
        "sluice_reselect",
        "Updates whose unchanged TOAST values sluice read from the table (source.reselect_unchanged_toast), by table and outcome: reselected; changed, gone or failed (the values stay absent); transaction_too_long.",
        counters.reselect.iter().map(|((table, outcome), count)| {
            (
                [("table", table.as_str()), ("outcome", *outcome)],
                ConstCounter::new(*count),
            )
        }),
    )?;
    family(
        encoder,
        "sluice_transform_dropped",
        "Changes a transform dropped (a filter's condition was false, an outbox row was not an insert), by transform.",
        counters.transform_dropped.iter().map(|(transform, count)| {
            ([("transform", transform.as_str())], ConstCounter::new(*count))
        }),
    )
}

/// Each snapshot table's progress.
fn snapshot_families(counters: &Counters, encoder: &mut DescriptorEncoder) -> fmt::Result {
    let families: [PerTable<SnapshotProgress>; 3] = [
        (
            "sluice_snapshot_rows",
            "Rows of each table read by the snapshot so far.",
            |p| p.rows.load(Relaxed),
        ),
        (
            "sluice_snapshot_rows_estimated",
            "The planner's estimate of each snapshot table's rows (0: unknown).",
            |p| p.estimated.load(Relaxed),
        ),
        (
            "sluice_snapshot_table_finished",
            "1 once a table's snapshot has been read to the end.",
            |p| u64::from(p.finished.load(Relaxed)),
        ),
    ];
    gauges_per_table(
        encoder,
        families,
        counters.snapshot.iter().map(|(t, p)| (t, &**p)),
    )
}

/// The incremental snapshot's progress per table: rows read, the estimate when it began, chunks read.
fn incremental_families(counters: &Counters, encoder: &mut DescriptorEncoder) -> fmt::Result {
    let families: [PerTable<IncrementalProgress>; 3] = [
        (
            "sluice_incremental_snapshot_rows",
            "Rows of each table read by the incremental snapshot under way (or the last one).",
            |p| p.rows,
        ),
        (
            "sluice_incremental_snapshot_rows_estimated",
            "The planner's estimate of each incrementally snapshotted table's rows when its reading began (0: unknown).",
            |p| p.estimated,
        ),
        (
            "sluice_incremental_snapshot_chunks",
            "Chunks of each table the incremental snapshot has read.",
            |p| p.chunks,
        ),
    ];
    gauges_per_table(encoder, families, counters.incremental.iter())
}

/// A gauge family per `(name, help, value)`, one series per table.
fn gauges_per_table<'a, P: 'a, const N: usize>(
    encoder: &mut DescriptorEncoder,
    families: [PerTable<P>; N],
    tables: impl Iterator<Item = (&'a String, &'a P)> + Clone,
) -> fmt::Result {
    for (name, help, value) in families {
        family(
            encoder,
            name,
            help,
            tables.clone().map(|(table, progress)| {
                (
                    [("table", table.as_str())],
                    ConstGauge::new(value(progress)),
                )
            }),
        )?;
    }
    Ok(())
}

/// The metrics without labels: bytes, in-flight messages, lag, reconnects and the readiness flags.
fn singles(state: &State, encoder: &mut DescriptorEncoder) -> fmt::Result {
    let in_flight = state.tracker.get().map_or(0, |t| t.outstanding());
    let wal_end = state.server_wal_end.load(Relaxed);
    let lag_bytes = wal_end.saturating_sub(state.acknowledged.load(Relaxed));
    let flag = |flag: bool| ConstGauge::new(u64::from(flag));
    single(
        encoder,
        "sluice_bytes",
        "Key and value bytes of the change events handed to the producer.",
        ConstCounter::new(state.bytes.load(Relaxed)),
    )?;
    single(
        encoder,
        "sluice_in_flight_messages",
        "Messages produced and not yet acknowledged by the broker.",
        ConstGauge::new(in_flight),
    )?;
    single(
        encoder,
        "sluice_source_lag_bytes",
        "Bytes of WAL between the server's end and the position sluice has stored and acknowledged.",
        ConstGauge::new(lag_bytes),
    )?;
    single(
        encoder,
        "sluice_source_lag_seconds",
        "Seconds between the newest published change's commit and its publication.",
        ConstGauge::new(state.behind_ms.load(Relaxed).max(0) as f64 / 1000.0),
    )?;
    single(
        encoder,
        "sluice_source_reconnects",
        "Attempts to open the replication connection again after losing it.",
        ConstCounter::new(state.reconnects.load(Relaxed)),
    )?;
    single(
        encoder,
        "sluice_streaming",
        "1 while changes are streamed from the replication slot.",
        flag(state.streaming.load(Relaxed)),
    )?;
    single(
        encoder,
        "sluice_broker_reachable",
        "1 while the broker answers.",
        flag(!state.broker_unreachable.load(Relaxed)),
    )?;
    single(
        encoder,
        "sluice_snapshot_running",
        "1 while the initial snapshot is being taken.",
        flag(state.snapshot_running.load(Relaxed)),
    )
}

/// A family of labelled series; its HELP and TYPE lines are written even when it has none yet.
fn family<L: EncodeLabelSet, M: EncodeMetric + TypedMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, M::TYPE)?;
    for (labels, metric) in series {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A metric without labels.
fn single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: impl EncodeMetric,
) -> fmt::Result {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// The latency histograms, after the collector's families. Written by hand because prometheus-client
/// spells bucket bounds the Go client's way (`le="0.05"`, `le="1"`) and these series have always been
/// `le="0.050"`, `le="1.000"`: a changed `le` is a new series to Prometheus 2 and to every query that
/// names a bucket.
pub(super) fn histograms(state: &State, out: &mut String) {
    state.latency.render(
        out,
        "sluice_broker_ack_latency_seconds",
        "Time from handing a message to the producer to the broker's acknowledgement.",
    );
    if let Some(tracker) = state.tracker.get() {
        tracker.commit_to_ack().render(
            out,
            "sluice_commit_to_ack_seconds",
            "Time from a transaction's commit in the source (its clock) to the broker's acknowledgement of its last event.",
        );
    }
}
