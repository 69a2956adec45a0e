//! The reads behind `reselect_unchanged_toast`: the rows of a batch of updates of one table version, by
//! key, in one query, and their values put into the updates that may have them.

use std::collections::HashMap;

use sluice_core::event::{Note, SourceEvent, Table, Value};
use sluice_core::json::numeric_text;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

use super::catalog::describe_pg_error;
use super::replication::quote_ident;
use super::types::parse_text;
use super::types_temporal::{date_text, time_text, timestamp_text};

/// What became of an update's missing values, for `sluice_reselect_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
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
    pub(super) fn label(self) -> &'static str {
        match self {
            Outcome::Reselected => "reselected",
            Outcome::Changed => "changed",
            Outcome::Gone => "gone",
            Outcome::Failed => "failed",
            Outcome::TooLong => "transaction_too_long",
        }
    }
}

/// Prepared queries kept at most; past it they are prepared afresh.
const PREPARED_LIMIT: usize = 256;

/// Prepared queries by their text, and the key columns' types by table.
#[derive(Default)]
pub(super) struct Queries {
    statements: HashMap<String, Statement>,
    /// `format_type` of each key column, by the table's id and its key columns' names and types.
    key_types: HashMap<(u32, String), Vec<String>>,
}

impl Queries {
    /// Reads `columns` of the rows the updates at `batch` (positions in `held`, all of one table version)
    /// changed, and puts each value into its update's new row, noted re-selected, where the row read is
    /// still the version the update's transaction wrote. The outcome of each update, in order.
    pub(super) async fn reselect(
        &mut self,
        held: &mut [SourceEvent],
        batch: &[usize],
        columns: &[usize],
        client: &Client,
    ) -> Vec<Outcome> {
        let mut outcomes = vec![Outcome::Failed; batch.len()];
        let Some(SourceEvent::Change(first)) = batch.first().map(|&at| &held[at]) else {
            return outcomes;
        };
        let table = first.table.clone();
        // The key values of each update as text, by key column: None for a key sluice cannot put back.
        let key_at: Vec<usize> = table.key_columns().map(|(i, _)| i).collect();
        let mut keys: Vec<Vec<String>> = vec![Vec::new(); key_at.len()];
        let mut queried = Vec::new();
        for (n, &at) in batch.iter().enumerate() {
            let SourceEvent::Change(change) = &held[at] else {
                continue;
            };
            let Some(after) = &change.after else { continue };
            let texts: Option<Vec<String>> =
                key_at.iter().map(|&i| input_text(&after[i])).collect();
            if let Some(texts) = texts {
                for (column, text) in keys.iter_mut().zip(texts) {
                    column.push(text);
                }
                queried.push(n);
            }
        }
        if queried.is_empty() {
            return outcomes;
        }
        let rows = match self.rows(client, &table, columns, &keys).await {
            Ok(rows) => rows,
            Err(err) => {
                tracing::warn!(table = %table.qualified_name(), error = %describe_pg_error(&err), "re-selecting unchanged TOAST values failed: they stay absent");
                return outcomes;
            }
        };
        let mut by_ordinal: HashMap<i64, Row> = rows.into_iter().map(|r| (r.get(0), r)).collect();
        for (ordinal, n) in queried.into_iter().enumerate() {
            let SourceEvent::Change(change) = &mut held[batch[n]] else {
                continue;
            };
            outcomes[n] = match by_ordinal.remove(&(ordinal as i64 + 1)) {
                None => Outcome::Gone,
                Some(row) => {
                    let xmin: Option<String> = row.get(1);
                    let written_by_it =
                        xmin.and_then(|x| x.parse::<u64>().ok()) == change.source.txid;
                    match (&mut change.after, written_by_it) {
                        (Some(after), true) => {
                            for (k, &i) in columns.iter().enumerate() {
                                let text: Option<String> = row.get(k + 2);
                                let value = match text {
                                    None => Value::Null,
                                    Some(text) => {
                                        parse_text(&table.columns[i].column_type, text.as_bytes())
                                            .unwrap_or_else(|err| {
                                                Value::OutOfRange(err.to_string())
                                            })
                                    }
                                };
                                after[i] = Value::noted(value, Note::Reselected);
                            }
                            Outcome::Reselected
                        }
                        _ => Outcome::Changed,
                    }
                }
            };
        }
        outcomes
    }

    /// The rows of `table` whose keys are the `keys` (one list per key column), with their ordinal in the
    /// lists, `xmin` and the `columns` as text.
    async fn rows(
        &mut self,
        client: &Client,
        table: &Table,
        columns: &[usize],
        keys: &[Vec<String>],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let types = self.key_types(client, table).await?;
        let relation = format!(
            "{}.{}",
            quote_ident(&table.schema),
            quote_ident(&table.name)
        );
        let selected: Vec<String> = columns
            .iter()
            .map(|&i| format!(", t.{}::text", quote_ident(&table.columns[i].name)))
            .collect();
        let arrays: Vec<String> = (1..=types.len()).map(|n| format!("${n}::text[]")).collect();
        let names: Vec<String> = (1..=types.len()).map(|n| format!("k{n}")).collect();
        // Each key text is read by its column's own type, so the rows are found through the key's index.
        let matched: Vec<String> = table
            .key_columns()
            .zip(&types)
            .enumerate()
            .map(|(n, ((_, column), key_type))| {
                format!("t.{} = k.k{}::{key_type}", quote_ident(&column.name), n + 1)
            })
            .collect();
        let query = format!(
            "SELECT k.n, t.xmin::text{} FROM pg_catalog.unnest({}) WITH ORDINALITY AS k({}, n) \
             JOIN {relation} t ON {}",
            selected.concat(),
            arrays.join(", "),
            names.join(", "),
            matched.join(" AND ")
        );
        let params: Vec<&(dyn ToSql + Sync)> =
            keys.iter().map(|k| k as &(dyn ToSql + Sync)).collect();
        if let Some(statement) = self.statements.get(&query) {
            // A statement of a connection since reopened fails: it is prepared again below.
            if let Ok(rows) = client.query(statement, &params).await {
                return Ok(rows);
            }
        }
        if self.statements.len() >= PREPARED_LIMIT {
            self.statements.clear();
        }
        let statement = client.prepare(&query).await?;
        let rows = client.query(&statement, &params).await?;
        self.statements.insert(query, statement);
        Ok(rows)
    }

    /// The SQL type of each key column (`format_type`, quoted as needed), looked up once per table version.
    async fn key_types(
        &mut self,
        client: &Client,
        table: &Table,
    ) -> Result<Vec<String>, tokio_postgres::Error> {
        let signature: Vec<String> = table
            .key_columns()
            .map(|(_, c)| format!("{}:{}", c.name, c.source_type))
            .collect();
        let cache_key = (table.id, signature.join(","));
        if let Some(types) = self.key_types.get(&cache_key) {
            return Ok(types.clone());
        }
        let rows = client
            .query(
                "SELECT attname::text, pg_catalog.format_type(atttypid, atttypmod) \
                 FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped",
                &[&table.id],
            )
            .await?;
        let by_name: HashMap<String, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        // A key column gone since the event: text, which finds nothing rather than the wrong row.
        let types: Vec<String> = table
            .key_columns()
            .map(|(_, c)| {
                by_name
                    .get(&c.name)
                    .cloned()
                    .unwrap_or_else(|| "text".into())
            })
            .collect();
        self.key_types.insert(cache_key, types.clone());
        Ok(types)
    }
}

/// A key value as PostgreSQL reads its type's text; None for the types that are not put back (arrays,
/// composites, hstore, values that did not parse).
pub(super) fn input_text(value: &Value) -> Option<String> {
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
