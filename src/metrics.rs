//! Counters the daemon keeps about itself, rendered in Prometheus' text exposition format for `/metrics`.
//! Updated on the publishing path (one short lock per event), read by the HTTP endpoint.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock};

use crate::deadletter::Stage;
use crate::positions::AckTracker;

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Counters>,
    /// Where the in-flight count is read from, once the pipeline has one.
    tracker: OnceLock<Arc<AckTracker>>,
}

#[derive(Default)]
struct Counters {
    /// table → op → events published (dead letters not included). Looked up by `&str`: no allocation per
    /// event.
    events: HashMap<String, BTreeMap<&'static str, u64>>,
    /// (stage, table or topic) → dead letters.
    dead_letters: BTreeMap<(&'static str, String), u64>,
}

impl Metrics {
    pub fn event_published(&self, table: &str, op: &'static str) {
        let mut counters = self.lock();
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
            .lock()
            .dead_letters
            .entry((stage.as_str(), table.to_owned()))
            .or_default() += 1;
    }

    /// Reads the in-flight count from `tracker` from now on.
    pub fn follow(&self, tracker: Arc<AckTracker>) {
        let _ = self.tracker.set(tracker);
    }

    /// Dead letters so far, in total.
    pub fn dead_letter_total(&self) -> u64 {
        self.lock().dead_letters.values().sum()
    }

    /// `stage table=count, …`, for the final log line.
    pub fn dead_letter_breakdown(&self) -> String {
        let counters = self.lock();
        let parts: Vec<String> = counters
            .dead_letters
            .iter()
            .map(|((stage, table), count)| format!("{stage} {table}={count}"))
            .collect();
        parts.join(", ")
    }

    /// The Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let counters = self.lock();
        let mut out = String::new();
        out.push_str("# HELP sluice_events_total Change events published, by table and op.\n");
        out.push_str("# TYPE sluice_events_total counter\n");
        let mut tables: Vec<&String> = counters.events.keys().collect();
        tables.sort();
        for (table, op, count) in tables
            .into_iter()
            .flat_map(|t| counters.events[t].iter().map(move |(op, n)| (t, op, n)))
        {
            let _ = writeln!(
                out,
                "sluice_events_total{{table=\"{}\",op=\"{op}\"}} {count}",
                escape(table)
            );
        }
        out.push_str(
            "# HELP sluice_dead_letters_total Changes sent to the dead-letter topic, by stage and table.\n",
        );
        out.push_str("# TYPE sluice_dead_letters_total counter\n");
        for ((stage, table), count) in &counters.dead_letters {
            let _ = writeln!(
                out,
                "sluice_dead_letters_total{{stage=\"{stage}\",table=\"{}\"}} {count}",
                escape(table)
            );
        }
        out.push_str("# HELP sluice_in_flight_messages Messages produced and not yet acknowledged by the broker.\n");
        out.push_str("# TYPE sluice_in_flight_messages gauge\n");
        let in_flight = self.tracker.get().map_or(0, |t| t.outstanding());
        let _ = writeln!(out, "sluice_in_flight_messages {in_flight}");
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Label values escape backslash, double quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_in_the_text_format() {
        let metrics = Metrics::default();
        metrics.event_published("public.orders", "c");
        metrics.event_published("public.orders", "c");
        metrics.event_published("public.\"odd\"", "u");
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
        assert_eq!(metrics.dead_letter_total(), 1);
        assert_eq!(metrics.dead_letter_breakdown(), "validate public.orders=1");
    }
}
