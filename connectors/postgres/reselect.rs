//! `reselect_unchanged_toast`: an update that left a TOASTed value unchanged does not carry it (with
//! REPLICA IDENTITY DEFAULT), so it is read from the table by the row's key.
//!
//! A value read is this change's only if nothing changed the row after it: the row read must be the
//! version the change's transaction wrote (its `xmin` is the transaction's id), and no later change of the
//! same transaction may have set the column again. The second is known only at the transaction's commit,
//! so the events from the first such update on wait for it (up to [`HOLD_LIMIT`] events; a longer
//! transaction passes on without re-selecting). Whatever cannot be shown to be this change's value stays
//! absent, as without the option: null with the `sluice.unchanged_toast` header.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use sluice_core::event::{Op, Row, SourceEvent, Table, Value};
use sluice_core::json::value_json;
use sluice_core::metrics::SourceMetrics;
use tokio_postgres::Client;

use super::catalog::describe_pg_error;
use super::reselect_query::{Outcome, Queries};

/// Events of one transaction held for its commit, at most; a longer transaction is not re-selected.
pub(super) const HOLD_LIMIT: usize = 10_000;
/// Updates whose rows are read in one query.
const BATCH: usize = 500;

/// The events held from an update with unchanged TOAST values to its transaction's commit.
#[derive(Default)]
pub(super) struct Reselect {
    held: Vec<SourceEvent>,
    /// The open transaction passed the limit: the rest of it passes on as it is.
    too_long: bool,
    queries: Queries,
}

impl Reselect {
    /// Takes the events of `produced` from the first update with unchanged TOAST values, and puts them back,
    /// values re-selected, once their transaction's commit is among them. Held events outlive a lost
    /// connection: the replay goes on after them (the decoder counts them handed on).
    pub(super) async fn process(
        &mut self,
        produced: &mut Vec<SourceEvent>,
        client: &Client,
        metrics: &dyn SourceMetrics,
    ) {
        if self.held.is_empty() && !produced.iter().any(wants) {
            if self.too_long
                && produced
                    .iter()
                    .any(|e| matches!(e, SourceEvent::Commit { .. }))
            {
                self.too_long = false;
            }
            return;
        }
        for event in std::mem::take(produced) {
            let commit = matches!(event, SourceEvent::Commit { .. });
            if commit {
                if !self.held.is_empty() {
                    resolve(&mut self.held, &mut self.queries, client, metrics).await;
                    produced.append(&mut self.held);
                }
                self.too_long = false;
                produced.push(event);
            } else if !self.held.is_empty() || (!self.too_long && wants(&event)) {
                self.held.push(event);
                if self.held.len() >= HOLD_LIMIT {
                    tracing::warn!(limit = HOLD_LIMIT, "a transaction with updates that left TOASTed values unchanged is too long to hold for re-selecting them: its values stay absent (sluice.unchanged_toast)");
                    for event in &self.held {
                        count(event, Outcome::TooLong, metrics);
                    }
                    produced.append(&mut self.held);
                    self.too_long = true;
                }
            } else {
                produced.push(event);
            }
        }
    }
}

/// Whether the publication sends inserts and deletes: without them, a later change of a row in the
/// same transaction (a delete and an insert of the same key) would go unseen, and a value it wrote
/// could be taken for the update's.
pub(super) async fn possible(client: &Client, publication: &str) -> bool {
    let publishes = client
        .query_opt(
            "SELECT pubinsert AND pubdelete FROM pg_catalog.pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await;
    match publishes {
        Ok(Some(row)) if row.get::<_, bool>(0) => true,
        Ok(_) => {
            tracing::warn!(%publication, "source.reselect_unchanged_toast is off: the publication does not publish inserts and deletes, without which a re-selected value cannot be shown to be the update's (ALTER PUBLICATION … SET (publish = 'insert, update, delete'))");
            false
        }
        Err(err) => {
            tracing::warn!(error = %describe_pg_error(&err), "source.reselect_unchanged_toast is off: the publication's settings could not be read");
            false
        }
    }
}

/// An update of a keyed table with values PostgreSQL did not send.
fn wants(event: &SourceEvent) -> bool {
    let SourceEvent::Change(change) = event else {
        return false;
    };
    change.op == Op::Update
        && change.table.key_columns().next().is_some()
        && change.unchanged_toast().next().is_some()
}

fn count(event: &SourceEvent, outcome: Outcome, metrics: &dyn SourceMetrics) {
    if wants(event) {
        if let SourceEvent::Change(change) = event {
            metrics.reselected(&change.table.qualified_name(), outcome.label());
        }
    }
}

/// Re-selects the missing values of every update among a transaction's events (`held`, complete): the
/// updates of one table version that want the same columns are read in batches of [`BATCH`] keys.
async fn resolve(
    held: &mut [SourceEvent],
    queries: &mut Queries,
    client: &Client,
    metrics: &dyn SourceMetrics,
) {
    let mut groups: BTreeMap<(usize, Vec<usize>), Vec<usize>> = BTreeMap::new();
    for (at, columns) in settled_columns(held) {
        let SourceEvent::Change(change) = &held[at] else {
            continue;
        };
        if columns.is_empty() {
            metrics.reselected(&change.table.qualified_name(), Outcome::Changed.label());
            continue;
        }
        let version = Arc::as_ptr(&change.table) as usize;
        groups.entry((version, columns)).or_default().push(at);
    }
    for ((_, columns), updates) in groups {
        for batch in updates.chunks(BATCH) {
            let outcomes = queries.reselect(held, batch, &columns, client).await;
            for (&at, outcome) in batch.iter().zip(outcomes) {
                if let SourceEvent::Change(change) = &held[at] {
                    metrics.reselected(&change.table.qualified_name(), outcome.label());
                }
            }
        }
    }
}

/// For each update that wants values (by position in `events`, a whole transaction), the missing columns
/// no later change of the transaction sets for the same row; a later update that leaves one unchanged too
/// does not set it. One pass from the end, remembering what later changes set by table and key.
fn settled_columns(events: &[SourceEvent]) -> Vec<(usize, Vec<usize>)> {
    let mut later: HashMap<(u32, String), Later> = HashMap::new();
    let mut settled = Vec::new();
    for (at, event) in events.iter().enumerate().rev() {
        let SourceEvent::Change(change) = event else {
            continue;
        };
        let keys: Vec<String> = [&change.before, &change.after]
            .into_iter()
            .flatten()
            .map(|row| key_text(&change.table, row))
            .collect();
        if wants(event) {
            let after_key = change
                .after
                .as_ref()
                .map(|row| key_text(&change.table, row));
            let columns = change
                .unchanged_toast()
                .filter(|&i| {
                    match after_key
                        .as_ref()
                        .and_then(|k| later.get(&(change.table.id, k.clone())))
                    {
                        None => true,
                        Some(Later::All) => false,
                        Some(Later::Columns(set)) => !set.contains(&i),
                    }
                })
                .collect();
            settled.push((at, columns));
        }
        let sets = match (&change.op, &change.after) {
            (Op::Update, Some(after)) => Later::Columns(
                (0..after.len())
                    .filter(|&i| after[i] != Value::UnchangedToast)
                    .collect(),
            ),
            _ => Later::All,
        };
        for key in keys {
            let entry = later
                .entry((change.table.id, key))
                .or_insert(Later::Columns(Vec::new()));
            entry.add(&sets);
        }
    }
    settled.reverse();
    settled
}

/// What the later changes of a transaction set in one row.
enum Later {
    /// Every column (an insert, a delete, a truncate).
    All,
    Columns(Vec<usize>),
}

impl Later {
    fn add(&mut self, other: &Later) {
        match (&mut *self, other) {
            (Later::All, _) => {}
            (_, Later::All) => *self = Later::All,
            (Later::Columns(mine), Later::Columns(theirs)) => {
                for column in theirs {
                    if !mine.contains(column) {
                        mine.push(*column);
                    }
                }
            }
        }
    }
}

/// A row's key values as one text, for telling rows apart within a transaction.
fn key_text(table: &Table, row: &Row) -> String {
    let key: Vec<serde_json::Value> = table
        .key_columns()
        .filter_map(|(i, _)| row.get(i))
        .map(value_json)
        .collect();
    serde_json::Value::Array(key).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::event::ChangeEvent;
    use sluice_core::event::{Column, ColumnType, Lsn, SnapshotMarker, SourceInfo};

    fn table(id: u32) -> Arc<Table> {
        let column = |name: &str, key| Column {
            name: name.into(),
            column_type: ColumnType::String,
            key,
            source_type: "text".into(),
            not_null: false,
            precision: None,
        };
        Arc::new(Table {
            id,
            schema: "public".into(),
            name: "docs".into(),
            columns: vec![column("id", true), column("a", false), column("b", false)],
        })
    }

    fn change(op: Op, table: u32, id: &str, a: Value, b: Value) -> SourceEvent {
        SourceEvent::Change(ChangeEvent {
            table: self::table(table),
            op,
            before: None,
            after: Some(vec![Value::String(id.into()), a, b]),
            source: SourceInfo {
                database: "db".into(),
                txid: Some(7),
                lsn: Lsn(1),
                commit_lsn: Lsn(2),
                commit_time_us: 0,
                snapshot: SnapshotMarker::False,
                order: None,
            },
        })
    }

    fn text(v: &str) -> Value {
        Value::String(v.into())
    }

    /// The settled columns of the first event, an update that wants values.
    fn settled(events: &[SourceEvent]) -> Vec<usize> {
        let all = settled_columns(events);
        assert_eq!(all[0].0, 0);
        all[0].1.clone()
    }

    #[test]
    fn a_later_change_of_the_row_in_the_transaction_unsettles_what_it_sets() {
        let toast = || Value::UnchangedToast;
        let first = || change(Op::Update, 1, "k", toast(), toast());
        // Nothing later: both columns are this update's.
        assert_eq!(settled(&[first()]), [1, 2]);
        // Another row, another table: no matter.
        let other_row = change(Op::Update, 1, "j", text("x"), text("y"));
        let other_table = change(Op::Update, 2, "k", text("x"), text("y"));
        assert_eq!(settled(&[first(), other_row, other_table]), [1, 2]);
        // A later update of the row that sets `a` and leaves `b` unchanged again.
        let sets_a = change(Op::Update, 1, "k", text("x"), toast());
        assert_eq!(settled(&[first(), sets_a]), [2]);
        // A later delete takes everything.
        let mut delete = change(Op::Delete, 1, "k", Value::Null, Value::Null);
        if let SourceEvent::Change(d) = &mut delete {
            d.before = d.after.take();
        }
        assert!(settled(&[first(), delete]).is_empty());
        // Two updates that both leave `b` unchanged: each keeps it; the first loses `a` to the second.
        let both = settled_columns(&[first(), change(Op::Update, 1, "k", text("x"), toast())]);
        assert_eq!(both, [(0, vec![2]), (1, vec![2])]);
    }

    #[test]
    fn only_keyed_updates_with_missing_values_are_held() {
        assert!(wants(&change(
            Op::Update,
            1,
            "k",
            Value::UnchangedToast,
            text("x")
        )));
        assert!(!wants(&change(Op::Update, 1, "k", text("a"), text("x"))));
        assert!(!wants(&change(
            Op::Create,
            1,
            "k",
            Value::UnchangedToast,
            text("x")
        )));
    }

    #[test]
    fn key_values_print_as_postgres_reads_them() {
        use crate::reselect_query::input_text;
        assert_eq!(input_text(&Value::Int64(-5)).unwrap(), "-5");
        assert_eq!(input_text(&Value::Bytes(vec![0, 255])).unwrap(), "\\x00ff");
        assert_eq!(
            input_text(&Value::Float64(f64::NEG_INFINITY)).unwrap(),
            "-Infinity"
        );
        assert_eq!(input_text(&Value::Date(0)).unwrap(), "1970-01-01");
        assert_eq!(
            input_text(&Value::TimestampTz(1)).unwrap(),
            "1970-01-01 00:00:00.000001+00"
        );
        assert!(input_text(&Value::Array(vec![])).is_none());
    }
}
