//! The latency histogram: observed from any thread (the acknowledgement tracker's commit-to-ack latency,
//! the broker's acknowledgement latency), written out by hand for `/metrics` (see `exposition::histograms`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds (microseconds) of the latency histograms' buckets: fine up to 100 ms, where a healthy
/// pipeline's latencies fall (50 ms, the benchmark's target, is a bound of its own), coarse beyond.
const LATENCY_BUCKETS_US: [u64; 22] = [
    1_000, 2_000, 3_000, 5_000, 7_500, 10_000, 15_000, 20_000, 25_000, 30_000, 40_000, 50_000,
    75_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000,
    60_000_000,
];

/// A latency histogram, updated lock-free from any thread.
#[derive(Default)]
pub struct Histogram {
    /// Cumulative counts are computed at render time; these are per bucket, the last one is +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe_us(&self, us: u64) {
        let bucket = LATENCY_BUCKETS_US
            .iter()
            .position(|bound| us <= *bound)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    pub fn sum_us(&self) -> u64 {
        self.sum_us.load(Relaxed)
    }

    /// Its HELP, TYPE, cumulative bucket, sum and count lines, bounds in seconds.
    pub(super) fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, count) in self.buckets.iter().enumerate() {
            cumulative += count.load(Relaxed);
            let bound = LATENCY_BUCKETS_US
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |us| format_seconds_us(*us));
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let sum = format_seconds_us(self.sum_us.load(Relaxed));
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {}", self.count.load(Relaxed));
    }
}

/// Seconds with at least three decimals, more only where the value has them (`0.001`, `0.0075`).
fn format_seconds_us(us: u64) -> String {
    let text = format!("{}.{:06}", us / 1_000_000, us % 1_000_000);
    let keep = text.trim_end_matches('0').len().max(text.len() - 3);
    text[..keep].to_owned()
}
