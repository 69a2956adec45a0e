//! The initial snapshot: the rows already in the selected tables, published as `op = "r"` events before
//! streaming starts.
//!
//! When sluice creates the slot it asks for an exported snapshot: the database exactly as of the slot's
//! consistent point. Reading the tables inside that snapshot and then streaming from the consistent point
//! publishes every row once: what committed before the point is in the snapshot, what committed after it
//! is in the stream. Rows are read with `COPY … TO STDOUT` in text format — the same text output functions
//! pgoutput uses — so snapshot rows and streamed rows go through one value decoder.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_postgres::Client;

use super::catalog::{self, CatalogError, TableName};
use super::connection::PgConnection;
use super::pgoutput::{TupleData, TupleValue};
use super::reader::{decode_row, Captured, SourceError};
use super::replication::{quote_ident, quote_literal, ReplicationConnection, OUTPUT_SETTINGS};
use crate::config::{DecimalHandling, Selection};
use crate::event::{
    ChangeEvent, Lsn, Op, Position, Row, SnapshotMarker, SourceEvent, SourceInfo, Table,
};
use crate::metrics::Metrics;

/// Rows on their way from the readers to the one place that marks the last.
const ROWS_IN_FLIGHT: usize = 1024;
/// How often a table's progress is logged while it is read.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

/// A snapshot ready to be read.
pub struct Snapshot {
    pub(super) connection: PgConnection,
    pub(super) database: String,
    pub(super) tables: Vec<TableName>,
    /// For the columns left out of events.
    pub(super) selection: Selection,
    pub(super) decimal_handling: DecimalHandling,
    /// Connections reading tables at the same time (`source.snapshot_connections`).
    pub(super) connections: usize,
    /// Where the stream continues once every snapshot row is on the broker.
    pub consistent_point: Lsn,
    /// The replication connection that created the slot and the name of the snapshot it exported; the
    /// snapshot lives only until that connection runs another command, so it is closed once adopted.
    /// None when the slot already existed: the rows are then read in a fresh snapshot, later than the
    /// slot's position, and changes in between may reach the topic again after the rows they produced.
    pub(super) exported: Option<(ReplicationConnection, String)>,
}

/// How a snapshot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotOutcome {
    /// Every row of every table was handed on, followed by the Commit that seals the snapshot.
    pub complete: bool,
    pub rows: u64,
}

impl Snapshot {
    /// Reads every table and hands the rows on, the last one marked `last`, then a Commit at the consistent
    /// point. Tables are shared out among `connections` connections that all adopt the same snapshot. A
    /// stop request (or a closed channel) ends it early, incomplete.
    pub async fn read(
        mut self,
        events: mpsc::Sender<SourceEvent>,
        stop: watch::Receiver<bool>,
        metrics: Arc<Metrics>,
    ) -> Result<SnapshotOutcome, SourceError> {
        let exported = self.exported.is_some();
        let workers = self.connections.clamp(1, self.tables.len().max(1));
        let mut clients = Vec::with_capacity(workers);
        for _ in 0..workers {
            clients.push(self.open_reading_transaction().await?);
        }
        // Every reader holds the snapshot now; the exporting connection may go.
        if let Some((exporter, _)) = self.exported.take() {
            exporter.close().await?;
        }
        tracing::info!(tables = self.tables.len(), connections = workers, at = %self.consistent_point, exported, "snapshot started");

        let source = SourceInfo {
            database: self.database.clone(),
            txid: None,
            lsn: self.consistent_point,
            commit_lsn: self.consistent_point,
            commit_time_us: crate::positions::now_ms() * 1000,
            snapshot: SnapshotMarker::True,
            order: None,
        };
        // The readers' rows meet in one channel, so that one place can hold back the final row.
        let (rows_tx, mut rows_rx) = mpsc::channel(ROWS_IN_FLIGHT);
        let queue = Arc::new(Mutex::new(VecDeque::from(self.tables.clone())));
        let mut readers = JoinSet::new();
        for client in clients {
            let queue = queue.clone();
            let selection = self.selection.clone();
            let decimal = self.decimal_handling;
            let metrics = metrics.clone();
            let rows = RowSender {
                tx: rows_tx.clone(),
                stop: stop.clone(),
                source: source.clone(),
            };
            readers.spawn(async move {
                loop {
                    let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                    let Some(table) = next else { break };
                    if !read_table(&client, &table, &selection, decimal, &rows, &metrics).await? {
                        return Ok(false);
                    }
                }
                execute(&client, "COMMIT").await?;
                Ok::<_, SourceError>(true)
            });
        }
        drop(rows_tx);

        let mut pending: Option<ChangeEvent> = None;
        let mut handed_on: u64 = 0;
        let mut forwarding = true;
        while let Some(event) = rows_rx.recv().await {
            handed_on += 1;
            if let Some(previous) = pending.replace(event) {
                if events.send(SourceEvent::Change(previous)).await.is_err() {
                    forwarding = false;
                    break;
                }
            }
        }
        // When the pipeline is gone, the readers' next row finds this channel closed and they stop.
        drop(rows_rx);
        let mut all_read = true;
        while let Some(done) = readers.join_next().await {
            let read = done.map_err(|err| {
                SourceError::Protocol(format!("a snapshot reader failed: {err}"))
            })??;
            all_read &= read;
        }
        let complete = forwarding && all_read;
        if let Some(mut last) = pending.take() {
            if complete {
                last.source.snapshot = SnapshotMarker::Last;
            }
            if events.send(SourceEvent::Change(last)).await.is_err() {
                return Ok(SnapshotOutcome {
                    complete: false,
                    rows: handed_on,
                });
            }
        }
        if !complete {
            tracing::info!(
                rows = handed_on,
                "snapshot interrupted; the next run takes it again from the start"
            );
            return Ok(SnapshotOutcome {
                complete: false,
                rows: handed_on,
            });
        }
        let commit = SourceEvent::Commit {
            position: Position::Postgres {
                lsn: self.consistent_point,
            },
        };
        let complete = events.send(commit).await.is_ok();
        tracing::info!(rows = handed_on, "snapshot read");
        Ok(SnapshotOutcome {
            complete,
            rows: handed_on,
        })
    }

    /// A connection in a read-only REPEATABLE READ transaction on the snapshot, with the output settings
    /// the value decoders expect.
    async fn open_reading_transaction(&self) -> Result<Client, SourceError> {
        let client = catalog::connect(&self.connection).await?;
        let settings: Vec<String> = OUTPUT_SETTINGS
            .iter()
            .map(|(name, value)| format!("SET {name} = {}", quote_literal(value)))
            .collect();
        execute(&client, &settings.join("; ")).await?;
        execute(&client, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
        if let Some((_, name)) = &self.exported {
            let adopt = format!("SET TRANSACTION SNAPSHOT {}", quote_literal(name));
            execute(&client, &adopt).await?;
        }
        Ok(client)
    }
}

/// What a snapshot reader sends its rows through.
struct RowSender {
    tx: mpsc::Sender<ChangeEvent>,
    stop: watch::Receiver<bool>,
    /// Every snapshot row's source fields.
    source: SourceInfo,
}

impl RowSender {
    /// Hands on a row; false when sluice is stopping or the rows are no longer wanted.
    async fn row(&self, table: &Arc<Table>, after: Row) -> bool {
        if *self.stop.borrow() {
            return false;
        }
        let event = ChangeEvent {
            table: table.clone(),
            op: Op::Read,
            before: None,
            after: Some(after),
            source: self.source.clone(),
        };
        self.tx.send(event).await.is_ok()
    }
}

/// Reads one table with COPY; false when a row was refused (stop requested).
async fn read_table(
    client: &Client,
    name: &TableName,
    selection: &Selection,
    decimal: DecimalHandling,
    rows_out: &RowSender,
    metrics: &Metrics,
) -> Result<bool, SourceError> {
    let (description, captured) = Captured::describe(client, name, selection, decimal).await?;
    // COPY reads only the captured columns, so its rows need no filtering.
    let table = captured.table;
    let columns: Vec<String> = table.columns.iter().map(|c| quote_ident(&c.name)).collect();
    // COPY reads a plain table directly (the fastest way out of PostgreSQL); a partitioned table only
    // through a query.
    let sql = if description.partitioned || columns.is_empty() {
        format!(
            "COPY (SELECT {} FROM {}) TO STDOUT",
            columns.join(", "),
            name.quoted()
        )
    } else {
        format!("COPY {} ({}) TO STDOUT", name.quoted(), columns.join(", "))
    };
    let estimate = description.estimated_rows;
    tracing::info!(table = %name, estimated_rows = ?estimate, "snapshot of table started");
    let progress = metrics.snapshot_table(&name.to_string(), estimate);
    let query_error = |source| CatalogError::Query {
        context: format!("snapshot: cannot read {name}"),
        source,
    };
    let stream = client.copy_out(&sql).await.map_err(query_error)?;
    let mut stream = std::pin::pin!(stream);
    let mut lines = Lines::default();
    let mut batch = Vec::new();
    let mut rows: u64 = 0;
    let started = Instant::now();
    let mut reported = started;
    while let Some(chunk) = stream.next().await {
        lines.split(chunk.map_err(query_error)?, &mut batch);
        for line in batch.drain(..) {
            let tuple = parse_copy_line(&line, table.columns.len()).map_err(|reason| {
                SourceError::Protocol(format!("{name}: COPY row {}: {reason}", rows + 1))
            })?;
            let after = decode_row(&table, &tuple, None)?;
            if !rows_out.row(&table, after).await {
                return Ok(false);
            }
            rows += 1;
        }
        progress.rows.store(rows, Relaxed);
        if reported.elapsed() >= PROGRESS_INTERVAL {
            reported = Instant::now();
            tracing::info!(table = %name, rows, estimated_rows = ?estimate, "snapshot progress");
        }
    }
    if !lines.is_empty() {
        return Err(SourceError::Protocol(format!(
            "{name}: COPY output ended inside a row"
        )));
    }
    progress.finished();
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(table = %name, rows, seconds, "snapshot of table finished");
    Ok(true)
}

async fn execute(client: &Client, sql: &str) -> Result<(), SourceError> {
    let context = format!("snapshot: `{sql}` failed");
    client
        .batch_execute(sql)
        .await
        .map_err(catalog::query_error(context))?;
    Ok(())
}

/// Splits COPY's output into lines. PostgreSQL sends one row per message, so a chunk is normally one whole
/// line and is sliced without copying; a row split across chunks is put back together.
#[derive(Default)]
struct Lines {
    partial: BytesMut,
}

impl Lines {
    fn split(&mut self, mut chunk: Bytes, out: &mut Vec<Bytes>) {
        if !self.partial.is_empty() {
            self.partial.extend_from_slice(&chunk);
            chunk = self.partial.split().freeze();
        }
        while let Some(end) = chunk.iter().position(|&b| b == b'\n') {
            let line = chunk.split_to(end + 1);
            out.push(line.slice(..end));
        }
        self.partial.extend_from_slice(&chunk);
    }

    fn is_empty(&self) -> bool {
        self.partial.is_empty()
    }
}

/// One line of COPY's text format as column values: fields are separated by tabs, `\N` is NULL, and
/// backslash escapes are undone. A field without a backslash is sliced without copying.
pub fn parse_copy_line(line: &Bytes, columns: usize) -> Result<TupleData, String> {
    let mut values = Vec::with_capacity(columns);
    if columns == 0 {
        return if line.is_empty() {
            Ok(TupleData(values))
        } else {
            Err("a row with values for a table without columns".into())
        };
    }
    let mut start = 0;
    loop {
        let end = line[start..]
            .iter()
            .position(|&b| b == b'\t')
            .map_or(line.len(), |at| start + at);
        let field = &line[start..end];
        values.push(if field == b"\\N" {
            TupleValue::Null
        } else if field.contains(&b'\\') {
            TupleValue::Text(Bytes::from(unescape(field)?))
        } else {
            TupleValue::Text(line.slice(start..end))
        });
        if end == line.len() {
            break;
        }
        start = end + 1;
    }
    if values.len() != columns {
        return Err(format!(
            "{} fields where the table has {columns} columns",
            values.len()
        ));
    }
    Ok(TupleData(values))
}

fn unescape(field: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(field.len());
    let mut bytes = field.iter().copied().peekable();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let escaped = bytes
            .next()
            .ok_or_else(|| "a field ends in a lone backslash".to_owned())?;
        let plain = match escaped {
            b'b' => 0x08,
            b'f' => 0x0C,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'v' => 0x0B,
            b'0'..=b'7' => {
                let mut value = u32::from(escaped - b'0');
                for _ in 0..2 {
                    match bytes.peek() {
                        Some(&d @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(d - b'0');
                            bytes.next();
                        }
                        _ => break,
                    }
                }
                value as u8
            }
            b'x' => {
                let mut value = 0u32;
                let mut digits = 0;
                while digits < 2 {
                    match bytes.peek().and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            value = value * 16 + d;
                            bytes.next();
                            digits += 1;
                        }
                        None => break,
                    }
                }
                if digits == 0 {
                    b'x'
                } else {
                    value as u8
                }
            }
            other => other,
        };
        out.push(plain);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(value: &TupleValue) -> Option<&[u8]> {
        match value {
            TupleValue::Text(bytes) => Some(bytes),
            _ => None,
        }
    }

    #[test]
    fn fields_nulls_and_escapes() {
        let line = Bytes::from_static(b"1\t\\N\tplain\ta\\tb\\nc\\\\d\t\\101\\x41\\q\t");
        let TupleData(values) = parse_copy_line(&line, 6).unwrap();
        assert_eq!(text(&values[0]), Some(&b"1"[..]));
        assert_eq!(values[1], TupleValue::Null);
        assert_eq!(text(&values[2]), Some(&b"plain"[..]));
        assert_eq!(text(&values[3]), Some(&b"a\tb\nc\\d"[..]));
        assert_eq!(text(&values[4]), Some(&b"AAq"[..]));
        assert_eq!(text(&values[5]), Some(&b""[..]), "an empty last field");
    }

    #[test]
    fn an_escaped_n_is_text_not_null() {
        let line = Bytes::from_static(b"\\\\N");
        let TupleData(values) = parse_copy_line(&line, 1).unwrap();
        assert_eq!(text(&values[0]), Some(&b"\\N"[..]));
    }

    #[test]
    fn wrong_field_counts_and_lone_backslashes_are_errors() {
        let err = parse_copy_line(&Bytes::from_static(b"1\t2"), 3).unwrap_err();
        assert!(
            err.contains("2 fields where the table has 3 columns"),
            "{err}"
        );
        let err = parse_copy_line(&Bytes::from_static(b"abc\\"), 1).unwrap_err();
        assert!(err.contains("lone backslash"), "{err}");
        assert!(parse_copy_line(&Bytes::from_static(b""), 0).is_ok());
        assert!(parse_copy_line(&Bytes::from_static(b"x"), 0).is_err());
    }

    #[test]
    fn lines_are_put_back_together_across_chunks() {
        let mut lines = Lines::default();
        let mut out = Vec::new();
        lines.split(Bytes::from_static(b"1\ta\n"), &mut out);
        lines.split(Bytes::from_static(b"2\tb"), &mut out);
        assert!(!lines.is_empty());
        lines.split(Bytes::from_static(b"b\n3\tc\n"), &mut out);
        assert!(lines.is_empty());
        let got: Vec<&[u8]> = out.iter().map(|l| &l[..]).collect();
        assert_eq!(got, vec![&b"1\ta"[..], b"2\tbb", b"3\tc"]);
    }
}
