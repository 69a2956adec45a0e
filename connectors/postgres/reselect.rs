//! `reselect_unchanged_toast`: an update that left a TOASTed value unchanged does not carry it (with
//! REPLICA IDENTITY DEFAULT), so it is read from the table by the row's key.
//!
//! A value read is this change's only if nothing changed the row after it: the row read must be the
//! version the change's transaction wrote (its `xmin` is the transaction's id), and no later change of the
//! same transaction may have set the column again. The second is known only at the transaction's commit,
//! so the events from the first such update on wait for it (up to [`HOLD_LIMIT`] events; a longer
//! transaction passes on without re-selecting). Whatever cannot be shown to be this change's value stays
//! absent, as without the option: null with the `sluice.unchanged_toast` header.

use sluice_core::event::{ChangeEvent, Note, Op, Row, SourceEvent, Table, Value};
use sluice_core::json::numeric_text;
use sluice_core::metrics::SourceMetrics;
use std::collections::HashMap;

use tokio_postgres::{Client, Statement};

use super::catalog::describe_pg_error;
use super::replication::quote_ident;
use super::types::parse_text;
use super::types_temporal::{date_text, time_text, timestamp_text};

/// Events of one transaction held for its commit, at most; a longer transaction is not re-selected.
pub(super) const HOLD_LIMIT: usize = 10_000;

/// What became of an update's missing values, for `sluice_reselect_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Read from the table.
    Reselected,
    /// The row changed after the update (later in its transaction, or since): the values stay absent.
    Changed,
    /// No row has the key any more.
    Gone,
    /// The key has a type sluice cannot put back into a query (an array, a composite), or the query failed.
    Failed,
    /// The transaction was longer than [`HOLD_LIMIT`] events.
    TooLong,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Reselected => "reselected",
            Outcome::Changed => "changed",
            Outcome::Gone => "gone",
            Outcome::Failed => "failed",
            Outcome::TooLong => "transaction_too_long",
        }
    }
}

/// The events held from an update with unchanged TOAST values to its transaction's commit.
#[derive(Default)]
pub(super) struct Reselect {
    held: Vec<SourceEvent>,
    /// The open transaction passed the limit: the rest of it passes on as it is.
    too_long: bool,
    queries: Queries,
}

/// The re-select queries prepared so far, by their text: one per table version and set of columns.
#[derive(Default)]
struct Queries(HashMap<String, Statement>);

/// Prepared queries kept at most; past it they are prepared afresh.
const PREPARED_LIMIT: usize = 256;

impl Queries {
    /// Runs `query` with `key`, prepared once; a failure is retried once with the query prepared again
    /// (the connection may have been reopened since it was prepared).
    async fn row(
        &mut self,
        client: &Client,
        query: String,
        key: &str,
    ) -> Result<Option<tokio_postgres::Row>, tokio_postgres::Error> {
        if let Some(statement) = self.0.get(&query) {
            if let Ok(row) = client.query_opt(statement, &[&key]).await {
                return Ok(row);
            }
        }
        if self.0.len() >= PREPARED_LIMIT {
            self.0.clear();
        }
        let statement = client.prepare(&query).await?;
        let row = client.query_opt(&statement, &[&key]).await?;
        self.0.insert(query, statement);
        Ok(row)
    }
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

/// An update of a keyed table with values PostgreSQL did not send.
fn wants(event: &SourceEvent) -> bool {
    let SourceEvent::Change(change) = event else {
        return false;
    };
    change.op == Op::Update
        && change.table.key_columns().next().is_some()
        && missing(change).next().is_some()
}

/// The columns of the new row PostgreSQL did not send.
fn missing(change: &ChangeEvent) -> impl Iterator<Item = usize> + '_ {
    change
        .after
        .iter()
        .flat_map(|row| row.iter().enumerate())
        .filter(|(_, value)| **value == Value::UnchangedToast)
        .map(|(i, _)| i)
}

fn count(event: &SourceEvent, outcome: Outcome, metrics: &dyn SourceMetrics) {
    if wants(event) {
        if let SourceEvent::Change(change) = event {
            metrics.reselected(&change.table.qualified_name(), outcome.label());
        }
    }
}

/// Re-selects the missing values of every update among a transaction's events (`held`, complete).
async fn resolve(
    held: &mut [SourceEvent],
    queries: &mut Queries,
    client: &Client,
    metrics: &dyn SourceMetrics,
) {
    for at in 0..held.len() {
        if !wants(&held[at]) {
            continue;
        }
        let (head, later) = held.split_at_mut(at + 1);
        let SourceEvent::Change(change) = &mut head[at] else {
            continue;
        };
        let columns = settled_columns(change, later);
        let outcome = if columns.is_empty() {
            Outcome::Changed
        } else {
            reselect(change, &columns, queries, client).await
        };
        metrics.reselected(&change.table.qualified_name(), outcome.label());
    }
}

/// The missing columns no later change of the transaction sets for the same row: a later update that
/// leaves one unchanged too does not count.
fn settled_columns(change: &ChangeEvent, later: &[SourceEvent]) -> Vec<usize> {
    let Some(key) = change.after.as_ref().map(|row| key_of(&change.table, row)) else {
        return Vec::new();
    };
    let mut columns: Vec<usize> = missing(change).collect();
    for event in later {
        let SourceEvent::Change(other) = event else {
            continue;
        };
        if other.table.id != change.table.id {
            continue;
        }
        let same_row = [&other.before, &other.after]
            .into_iter()
            .flatten()
            .any(|row| key_of(&other.table, row) == key);
        if !same_row {
            continue;
        }
        columns.retain(|&i| match (&other.op, &other.after) {
            (Op::Update, Some(after)) => after.get(i) == Some(&Value::UnchangedToast),
            _ => false,
        });
    }
    columns
}

fn key_of<'r>(table: &Table, row: &'r Row) -> Vec<&'r Value> {
    table
        .key_columns()
        .filter_map(|(i, _)| row.get(i))
        .collect()
}

/// Reads `columns` of the change's row by its key and puts them into the new row, noted re-selected, if
/// the row is still the version the change's transaction wrote.
async fn reselect(
    change: &mut ChangeEvent,
    columns: &[usize],
    queries: &mut Queries,
    client: &Client,
) -> Outcome {
    let (Some(after), Some(txid)) = (change.after.as_mut(), change.source.txid) else {
        return Outcome::Failed;
    };
    let table = &change.table;
    let mut key = serde_json::Map::new();
    for (i, column) in table.key_columns() {
        match after.get(i).and_then(input_text) {
            Some(text) => key.insert(column.name.clone(), text.into()),
            None => return Outcome::Failed,
        };
    }
    let relation = format!(
        "{}.{}",
        quote_ident(&table.schema),
        quote_ident(&table.name)
    );
    let selected: Vec<String> = columns
        .iter()
        .map(|&i| format!("t.{}::text", quote_ident(&table.columns[i].name)))
        .collect();
    let matched: Vec<String> = table
        .key_columns()
        .map(|(_, c)| format!("t.{0} = r.{0}", quote_ident(&c.name)))
        .collect();
    // The key's text is read by the key columns' own types: the row is found through its index.
    let query = format!(
        "SELECT t.xmin::text, {} FROM {relation} t, json_populate_record(NULL::{relation}, $1::text::json) r WHERE {}",
        selected.join(", "),
        matched.join(" AND ")
    );
    let key = serde_json::Value::Object(key).to_string();
    let row = match queries.row(client, query, &key).await {
        Ok(Some(row)) => row,
        Ok(None) => return Outcome::Gone,
        Err(err) => {
            tracing::warn!(table = %table.qualified_name(), error = %describe_pg_error(&err), "re-selecting unchanged TOAST values failed: they stay absent");
            return Outcome::Failed;
        }
    };
    let xmin: Option<String> = row.get(0);
    if xmin.and_then(|x| x.parse::<u64>().ok()) != Some(txid) {
        return Outcome::Changed;
    }
    for (n, &i) in columns.iter().enumerate() {
        let text: Option<String> = row.get(n + 1);
        let value = match text {
            None => Value::Null,
            Some(text) => parse_text(&table.columns[i].column_type, text.as_bytes())
                .unwrap_or_else(|err| Value::OutOfRange(err.to_string())),
        };
        after[i] = Value::noted(value, Note::Reselected);
    }
    Outcome::Reselected
}

/// A key value as PostgreSQL reads its type's text; None for the types that are not put back (arrays,
/// composites, hstore).
fn input_text(value: &Value) -> Option<String> {
    Some(match value {
        Value::Bool(b) => b.to_string(),
        Value::Int16(v) => v.to_string(),
        Value::Int32(v) => v.to_string(),
        Value::Int64(v) => v.to_string(),
        Value::Float32(v) => float_text(f64::from(*v)),
        Value::Float64(v) => float_text(*v),
        Value::Numeric(n) => numeric_text(n),
        Value::String(text) | Value::Uuid(text) | Value::Json(text) => text.clone(),
        Value::Bytes(bytes) => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            format!("\\x{hex}")
        }
        Value::Date(days) => date_text(*days),
        Value::Timestamp(us) => timestamp_text(*us, ""),
        Value::TimestampTz(us) => timestamp_text(*us, "+00"),
        Value::Time(us) => time_text(*us),
        _ => return None,
    })
}

fn float_text(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use sluice_core::event::{Column, ColumnType, Lsn, SnapshotMarker, SourceInfo};

    fn table(id: u32) -> Arc<Table> {
        let column = |name: &str, key| Column {
            name: name.into(),
            column_type: ColumnType::String,
            key,
            source_type: "text".into(),
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

    fn settled(events: &[SourceEvent]) -> Vec<usize> {
        let SourceEvent::Change(first) = &events[0] else {
            unreachable!()
        };
        settled_columns(first, &events[1..])
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
