//! Reading a snapshot piece with `COPY … TO STDOUT` in text format: the query, and COPY's lines and
//! fields turned into the tuples the value decoder reads.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio_postgres::Client;

use super::catalog::CatalogError;
use super::decoder::decode_row;
use super::error::SourceError;
use super::pgoutput::{TupleData, TupleValue};
use super::replication::quote_ident;
use super::snapshot_piece::{KeyRange, RowSender, TableRead};
use super::snapshot_progress::Finished;

/// Reads one piece of a table with COPY: the whole table, or one key range. False when a row was
/// refused (stop requested).
pub(super) async fn read_piece(
    client: &Client,
    reader: usize,
    read: &TableRead,
    range: Option<&KeyRange>,
    rows_out: &RowSender,
) -> Result<bool, SourceError> {
    let (name, table) = (&read.name, &read.table);
    // COPY reads only the captured columns, so its rows need no filtering.
    let columns: Vec<String> = table.columns.iter().map(|c| quote_ident(&c.name)).collect();
    // COPY reads a plain table directly (the fastest way out of PostgreSQL); a partitioned table or a
    // key range only through a query.
    let sql = match range {
        // Typed bounds: a bare -9223372036854775808 would be a numeric, and miss the index.
        Some(range) => format!(
            "COPY (SELECT {} FROM {} WHERE {key} BETWEEN '{}'::int8 AND '{}'::int8) TO STDOUT",
            columns.join(", "),
            read.from(),
            range.low,
            range.high,
            key = quote_ident(&range.column),
        ),
        None if read.description.partitioned || columns.is_empty() => format!(
            "COPY (SELECT {} FROM {}) TO STDOUT",
            columns.join(", "),
            name.quoted()
        ),
        None => format!("COPY {} ({}) TO STDOUT", name.quoted(), columns.join(", ")),
    };
    let query_error = |source| CatalogError::Query {
        context: format!("snapshot: cannot read {name}"),
        source,
    };
    let stream = client.copy_out(&sql).await.map_err(query_error)?;
    let mut stream = std::pin::pin!(stream);
    let mut lines = Lines::default();
    let mut batch = Vec::new();
    let mut rows: u64 = 0;
    while let Some(chunk) = stream.next().await {
        lines.split(chunk.map_err(query_error)?, &mut batch);
        let in_chunk = batch.len() as u64;
        for line in batch.drain(..) {
            let tuple = parse_copy_line(&line, table.columns.len()).map_err(|reason| {
                SourceError::Protocol(format!("{name}: COPY row {}: {reason}", rows + 1))
            })?;
            let after = decode_row(table, &tuple, None)?;
            if rows == 0 && !rows_out.begun(name, range).await {
                return Ok(false);
            }
            if !rows_out.row(table, after).await {
                return Ok(false);
            }
            rows += 1;
        }
        read.counted(in_chunk);
    }
    if !lines.is_empty() {
        return Err(SourceError::Protocol(format!(
            "{name}: COPY output ended inside a row"
        )));
    }
    if let Some(range) = range {
        tracing::info!(table = %name, low = range.low, high = range.high, rows, reader, "snapshot of key range finished");
        let part = Finished::Range {
            table: name.clone(),
            key: range.column.clone(),
            low: range.low,
            high: range.high,
        };
        if !rows_out.finished(part).await {
            return Ok(false);
        }
    }
    Ok(read.piece_finished(rows_out).await)
}

/// Splits COPY's output into lines. PostgreSQL sends one row per message, so a chunk is normally one whole
/// line and is sliced without copying; a row split across chunks is put back together.
#[derive(Default)]
pub(super) struct Lines {
    partial: BytesMut,
}

impl Lines {
    pub(super) fn split(&mut self, mut chunk: Bytes, out: &mut Vec<Bytes>) {
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

    pub(super) fn is_empty(&self) -> bool {
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
