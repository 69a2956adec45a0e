//! Incremental snapshots, PostgreSQL's reading side: a task on a connection of its own that reads the
//! requested tables in chunks of primary-key order, each between a low and a high watermark written into
//! the WAL as non-transactional logical decoding messages (so the stream meets them in log order, and no
//! table needs write access). The stream's side is [`sluice_core::incremental::Windows`].
//!
//! A chunk is read in a read-only transaction (an `additional-conditions` filter is the user's SQL) with
//! `COPY (SELECT … ORDER BY key LIMIT n)`, whose text output is both the rows and, for the last row, the
//! key the next chunk starts after. Up to [`CHUNKS_IN_FLIGHT`] chunks wait for their high watermark.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use sluice_core::event::{Row, Table};
use sluice_core::incremental::{Chunk, TableProgress, Watermark};
use sluice_core::reading::ReadRequest;
use tokio::sync::mpsc;
use tokio_postgres::Client;

use super::catalog::{self, TableName};
use super::config::{DecimalHandling, Selection};
use super::decoder::{decode_row, Captured};
use super::error::SourceError;
use super::pgoutput::TupleValue;
use super::replication::{is_retryable_sqlstate, quote_ident, quote_literal};
use super::snapshot_copy::{parse_copy_line, Lines};

/// What the reader hands the stream: chunks of rows with the table model they were decoded with.
pub type Delivery = sluice_core::reading::Delivery<Row, Arc<Table>>;

/// What the reader needs to know of the source.
#[derive(Clone)]
pub struct ReaderSettings {
    pub connection: super::connection::PgConnection,
    pub selection: Selection,
    pub decimal: DecimalHandling,
    pub chunk_rows: usize,
    /// The stream's publication: only a table in it can be reconciled with the stream.
    pub publication: String,
}

/// Reads the pending tables (with how far each got) one after the other, until done or until the
/// stream drops the receiver.
pub async fn read(settings: ReaderSettings, request: ReadRequest<Row, Arc<Table>>) {
    let ReadRequest {
        run,
        reading,
        tables,
        out,
    } = request;
    let mut reader = match catalog::connect(&settings.connection).await {
        Ok(client) => ChunkReader {
            client,
            settings,
            run,
            reading,
            number: 0,
            out,
        },
        Err(err) => {
            let _ = out
                .send(Delivery::Broken {
                    reading,
                    reason: err.to_string(),
                })
                .await;
            return;
        }
    };
    if let Err(err) = reader
        .client
        .batch_execute("SET standard_conforming_strings = on; SET application_name = 'sluice incremental snapshot'")
        .await
    {
        return reader.broken(err.to_string()).await;
    }
    for table in tables {
        match reader.read_table(&table).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(Failure::Table(reason)) => {
                let refused = Delivery::Refused {
                    reading,
                    table: table.name.clone(),
                    reason,
                };
                if reader.out.send(refused).await.is_err() {
                    return;
                }
            }
            Err(Failure::Connection(reason)) => return reader.broken(reason).await,
        }
    }
}

enum Failure {
    /// This table cannot be read; the others can.
    Table(String),
    Connection(String),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(err: tokio_postgres::Error) -> Failure {
        // A server error that passes (a shutdown, a failover, a cancel, a conflict, too many connections)
        // is retried like a lost connection; any other is the table's (a bad filter, a dropped table).
        match err.as_db_error() {
            Some(db) if !is_transient(db.code().code()) => {
                Failure::Table(catalog::describe_pg_error(&err))
            }
            _ => Failure::Connection(catalog::describe_pg_error(&err)),
        }
    }
}

impl From<SourceError> for Failure {
    fn from(err: SourceError) -> Failure {
        if err.is_retryable() {
            Failure::Connection(err.to_string())
        } else {
            Failure::Table(err.to_string())
        }
    }
}

struct ChunkReader {
    client: Client,
    settings: ReaderSettings,
    run: String,
    reading: u64,
    number: u64,
    out: mpsc::Sender<Delivery>,
}

/// A table as the reader reads it.
struct Plan {
    name: String,
    model: Arc<Table>,
    /// Positions of the key columns among the model's columns, in key order.
    key_at: Vec<usize>,
    /// `(k1, k2)` quoted, for comparing keys.
    key_list: String,
    /// `k1, k2` quoted, for ordering by the key.
    key_columns: String,
    select: String,
    filter: Option<String>,
    estimated: Option<u64>,
}

impl ChunkReader {
    async fn broken(self, reason: String) {
        let _ = self
            .out
            .send(Delivery::Broken {
                reading: self.reading,
                reason,
            })
            .await;
    }

    /// Reads one table to its end. False: the stream is gone.
    async fn read_table(&mut self, progress: &TableProgress) -> Result<bool, Failure> {
        let plan = self.plan(progress).await?;
        let until = match &progress.until_key {
            Some(until) => Some(until.clone()),
            None => self.last_key(&plan).await?,
        };
        let mut after = progress.last_key.clone();
        tracing::info!(table = %plan.name, from = ?after, until = ?until, estimated = ?plan.estimated, "incremental snapshot of table begins");
        loop {
            let chunk = self
                .chunk(&plan, after.as_deref(), until.as_deref())
                .await?;
            let done = chunk.table_done;
            after = chunk.last_key.clone();
            let number = chunk.number;
            let delivery = Delivery::Chunk {
                chunk,
                model: plan.model.clone(),
            };
            if self.out.send(delivery).await.is_err() {
                return Ok(false);
            }
            self.watermark(number, true).await?;
            if done {
                return Ok(true);
            }
        }
    }

    async fn plan(&mut self, progress: &TableProgress) -> Result<Plan, Failure> {
        let name = table_name(&progress.name);
        if let Some(filter) = &progress.filter {
            check_filter(filter).map_err(|reason| {
                Failure::Table(format!("{name}: the condition `{filter}` {reason}"))
            })?;
        }
        self.check_published(&name).await?;
        let (description, captured): (catalog::TableDescription, Captured) = Captured::describe(
            &self.client,
            &name,
            &self.settings.selection,
            self.settings.decimal,
        )
        .await?;
        if description.primary_key.is_empty() {
            return Err(Failure::Table(format!(
                "{name} has no primary key: an incremental snapshot reads in key order; add one (ALTER TABLE {} ADD PRIMARY KEY (…))",
                name.quoted()
            )));
        }
        let model = captured.table;
        let mut key_at = Vec::new();
        for key in &description.primary_key {
            let at = model
                .columns
                .iter()
                .position(|c| &c.name == key)
                .ok_or_else(|| {
                    Failure::Table(format!(
                        "{name}: key column {key} is not among the captured columns"
                    ))
                })?;
            key_at.push(at);
        }
        let key_columns = description
            .primary_key
            .iter()
            .map(|k| quote_ident(k))
            .collect::<Vec<_>>()
            .join(", ");
        let columns: Vec<String> = model.columns.iter().map(|c| quote_ident(&c.name)).collect();
        Ok(Plan {
            name: progress.name.clone(),
            select: format!("SELECT {} FROM {}", columns.join(", "), name.quoted()),
            key_list: format!("({key_columns})"),
            key_columns,
            key_at,
            model,
            filter: progress.filter.clone(),
            estimated: description.estimated_rows,
        })
    }

    /// Refuses a table the stream does not capture as itself: not in the publication, or a partition
    /// (whose changes the stream reports under its partitioned table).
    async fn check_published(&mut self, name: &TableName) -> Result<(), Failure> {
        let published = self
            .client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_publication_tables \
                 WHERE pubname = $1 AND schemaname = $2 AND tablename = $3)",
                &[&self.settings.publication, &name.schema, &name.name],
            )
            .await?
            .get::<_, bool>(0);
        if published {
            return Ok(());
        }
        Err(Failure::Table(format!(
            "{name} is not in publication `{}` as a table of its own (a partition is read through its \
             partitioned table): the stream does not capture it; sluice adds a selected table at its \
             next start",
            self.settings.publication
        )))
    }

    /// The largest key now: where this reading of the table ends (later rows come through the stream).
    async fn last_key(&mut self, plan: &Plan) -> Result<Option<Vec<String>>, Failure> {
        // Aliased: ORDER BY a bare name would sort by the text output column of that name.
        let keys: Vec<String> = plan
            .key_at
            .iter()
            .enumerate()
            .map(|(i, &at)| {
                format!(
                    "{}::text AS key{i}",
                    quote_ident(&plan.model.columns[at].name)
                )
            })
            .collect();
        let descending: Vec<String> = plan
            .key_at
            .iter()
            .map(|&at| format!("{} DESC", quote_ident(&plan.model.columns[at].name)))
            .collect();
        let sql = format!(
            "SELECT {} FROM {}{} ORDER BY {} LIMIT 1",
            keys.join(", "),
            table_name(&plan.name).quoted(),
            where_clause(&[plan.filter.as_deref().map(|f| format!("({f})"))]),
            descending.join(", ")
        );
        let transaction = self.read_only().await?;
        let row = transaction.query_opt(&sql, &[]).await?;
        transaction.commit().await?;
        Ok(row.map(|row| {
            (0..plan.key_at.len())
                .map(|i| row.get::<_, String>(i))
                .collect()
        }))
    }

    /// Reads the next chunk after its low watermark (the caller writes the high one once the stream has
    /// the rows).
    async fn chunk(
        &mut self,
        plan: &Plan,
        after: Option<&[String]>,
        until: Option<&[String]>,
    ) -> Result<Chunk<Row>, Failure> {
        self.number += 1;
        let number = self.number;
        let limit = self.settings.chunk_rows;
        self.watermark(number, false).await?;
        // No largest key: the table was empty when its reading began.
        let (rows, last_key) = match until {
            None => (Vec::new(), None),
            Some(until) => {
                let sql = format!(
                    "COPY ({}{} ORDER BY {} LIMIT {limit}) TO STDOUT",
                    plan.select,
                    where_clause(&[
                        after.map(|key| format!("{} > {}", plan.key_list, literal_row(key))),
                        Some(format!("{} <= {}", plan.key_list, literal_row(until))),
                        plan.filter.as_deref().map(|f| format!("({f})")),
                    ]),
                    plan.key_columns,
                );
                self.read_rows(plan, &sql).await?
            }
        };
        if last_key.is_some() && last_key.as_deref() == after {
            // Only a condition that undoes the key range can give the same rows again.
            return Err(Failure::Table(format!(
                "{}: a chunk read the rows of the one before it again; the condition must be about the \
                 table's rows alone",
                plan.name
            )));
        }
        let table_done = until.is_none() || rows.len() < limit || last_key.as_deref() == until;
        Ok(Chunk {
            reading: self.reading,
            number,
            table: plan.name.clone(),
            rows,
            last_key,
            until_key: until.map(<[String]>::to_vec),
            estimated: plan.estimated,
            table_done,
        })
    }

    /// The rows `sql` (a COPY) returns, each with its key as the windows compare it, and the last row's
    /// key as the server prints it.
    async fn read_rows(
        &mut self,
        plan: &Plan,
        sql: &str,
    ) -> Result<(Vec<(String, Row)>, Option<Vec<String>>), Failure> {
        let mut rows = Vec::new();
        let mut last_key = None;
        let transaction = self.read_only().await?;
        let stream = transaction.copy_out(sql).await?;
        let mut stream = std::pin::pin!(stream);
        let mut lines = Lines::default();
        let mut batch: Vec<Bytes> = Vec::new();
        let failed = |what: String| Failure::Table(format!("{}: {what}", plan.name));
        while let Some(data) = stream.next().await {
            lines.split(data?, &mut batch);
            for line in batch.drain(..) {
                let tuple = parse_copy_line(&line, plan.model.columns.len())
                    .map_err(|reason| failed(format!("COPY row: {reason}")))?;
                let key = key_text(&tuple.0, &plan.key_at)
                    .ok_or_else(|| failed("a row has a NULL key".into()))?;
                let row =
                    decode_row(&plan.model, &tuple, None).map_err(|err| failed(err.to_string()))?;
                // In column order, as the stream's side renders a change's key.
                let fingerprint = sluice_core::incremental::key_of(
                    plan.model.key_columns().map(|(at, _)| &row[at]),
                );
                rows.push((fingerprint, row));
                last_key = Some(key);
            }
        }
        transaction.commit().await?;
        Ok((rows, last_key))
    }

    /// A read-only transaction: a filter is the user's SQL, and may not write.
    async fn read_only(&mut self) -> Result<tokio_postgres::Transaction<'_>, Failure> {
        Ok(self
            .client
            .build_transaction()
            .read_only(true)
            .start()
            .await?)
    }

    async fn watermark(&mut self, number: u64, high: bool) -> Result<(), Failure> {
        let mark = Watermark {
            run: self.run.clone(),
            reading: self.reading,
            number,
            high,
        };
        // Non-transactional: the message enters the stream where it is written, not at a commit.
        self.client
            .execute(
                "SELECT pg_logical_emit_message(false, $1, $2)",
                &[&Watermark::PREFIX, &mark.encode()],
            )
            .await
            .map_err(|err| match err.as_db_error() {
                Some(_) => Failure::Connection(format!(
                    "cannot write a watermark with pg_logical_emit_message: {}",
                    catalog::describe_pg_error(&err)
                )),
                None => Failure::from(err),
            })?;
        Ok(())
    }
}

/// SQLSTATEs of failures that pass: connection and operator interventions, serialization failures and
/// deadlocks (class 40), insufficient resources (53), a lock not available, a cancelled statement.
fn is_transient(code: &str) -> bool {
    is_retryable_sqlstate(code)
        || code.starts_with("40")
        || code.starts_with("53")
        || code == "55P03"
        || code == "57014"
}

/// `schema.table` as the progress names it (a name without a schema is in `public`).
pub fn table_name(qualified: &str) -> TableName {
    match qualified.split_once('.') {
        Some((schema, name)) => TableName {
            schema: schema.to_string(),
            name: name.to_string(),
        },
        None => TableName {
            schema: "public".into(),
            name: qualified.to_string(),
        },
    }
}

fn where_clause(conditions: &[Option<String>]) -> String {
    let present: Vec<&str> = conditions.iter().flatten().map(String::as_str).collect();
    if present.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", present.join(" AND "))
    }
}

/// A condition fit to be ANDed with the key range: balanced parentheses, one statement, no comments, all
/// outside string literals (`additional-conditions` is SQL from whoever may write signals).
fn check_filter(filter: &str) -> Result<(), String> {
    let mut depth: i32 = 0;
    let mut chars = filter.chars().peekable();
    let mut quoted: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (Some(q), c) if c == q => quoted = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quoted = Some(c),
            (None, '(') => depth += 1,
            (None, ')') if depth == 0 => return Err("closes a parenthesis it did not open".into()),
            (None, ')') => depth -= 1,
            (None, ';') => return Err("holds a `;`: write one condition".into()),
            (None, '-') if chars.peek() == Some(&'-') => return Err("holds a comment".into()),
            (None, '/') if chars.peek() == Some(&'*') => return Err("holds a comment".into()),
            (None, '$') => return Err("holds a dollar-quoted string: use '…'".into()),
            _ => {}
        }
    }
    match (quoted, depth) {
        (Some(_), _) => Err("leaves a quoted string open".into()),
        (None, 0) => Ok(()),
        _ => Err("leaves a parenthesis open".into()),
    }
}

/// A key as literals the server types from the columns they are compared with: `('7', 'abc')`.
fn literal_row(key: &[String]) -> String {
    let literals: Vec<String> = key.iter().map(|k| quote_literal(k)).collect();
    format!("({})", literals.join(", "))
}

/// The key columns' text as COPY printed them (unescaped); None when one is NULL.
fn key_text(values: &[TupleValue], key_at: &[usize]) -> Option<Vec<String>> {
    key_at
        .iter()
        .map(|&at| match values.get(at)? {
            TupleValue::Text(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_conditions_are_joined_and_quoted() {
        assert_eq!(where_clause(&[None, None]), "");
        assert_eq!(
            where_clause(&[
                Some(format!(
                    "(\"a\", \"b\") > {}",
                    literal_row(&["1".into(), "it's".into()])
                )),
                None,
                Some("(status = 'new')".into()),
            ]),
            " WHERE (\"a\", \"b\") > ('1', 'it''s') AND (status = 'new')"
        );
        assert_eq!(
            table_name("public.orders").quoted(),
            "\"public\".\"orders\""
        );
        assert_eq!(table_name("orders").schema, "public");
    }

    #[test]
    fn a_condition_cannot_reach_outside_its_parentheses() {
        for good in [
            "status = 'new'",
            "(a > 1 OR b < 2) AND c = 'x)'",
            "name = 'it''s'",
            "\"odd)\" = 1",
        ] {
            assert_eq!(check_filter(good), Ok(()), "{good}");
        }
        for (bad, said) in [
            ("x) OR (true", "did not open"),
            ("true; DROP TABLE t", "`;`"),
            ("a = 1 -- rest", "comment"),
            ("a = 1 /* x */", "comment"),
            ("(a = 1", "open"),
            ("a = 'x", "quoted string open"),
            ("a = $$x$$", "dollar"),
        ] {
            let err = check_filter(bad).unwrap_err();
            assert!(err.contains(said), "{bad}: {err}");
        }
    }

    #[test]
    fn key_text_reads_the_key_columns() {
        let values = vec![
            TupleValue::Text(Bytes::from_static(b"7")),
            TupleValue::Text(Bytes::from_static(b"x")),
            TupleValue::Null,
        ];
        assert_eq!(
            key_text(&values, &[1, 0]),
            Some(vec!["x".into(), "7".into()])
        );
        assert_eq!(key_text(&values, &[2]), None);
    }
}
