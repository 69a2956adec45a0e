//! The stream decoder: pgoutput messages into [`SourceEvent`]s, with no I/O.
//!
//! It keeps the protocol state between messages (known relations, the open transaction), numbers a
//! transaction's changes, skips what an earlier connection handed on when a lost connection's stream is
//! replayed, and has the overlap of a carried-on snapshot leave changes out. Describing a table takes the
//! catalog, so a Relation message is handed back to the reader, which describes the table and gives it
//! to [`StreamDecoder::described`].

use std::collections::HashMap;
use std::sync::Arc;

use super::overlap::Overlap;
use super::pgoutput::{Message, OldTuple, Relation, TupleData, TupleValue};
use super::types::{self, ResolvedColumn};
use crate::config::Selection;
use sluice_core::event::{
    ChangeEvent, Column, DecodingMessage, Lsn, Op, Position, Row, SnapshotMarker, SourceEvent,
    SourceInfo, Table, TransactionOrder, Value,
};
use sluice_core::incremental::Watermark;

/// The prefix of heartbeat messages (the reader writes them into the WAL); they are never published,
/// even with `capture_messages`.
pub const HEARTBEAT_PREFIX: &str = "sluice.heartbeat";

/// A message the protocol does not allow where it arrived. The server sends none of these; one means a
/// bug in PostgreSQL or sluice, and the position is not advanced past it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StreamError {
    #[error("replication stream out of order: Begin inside an open transaction")]
    BeginInTransaction,
    #[error("replication stream out of order: Commit without Begin")]
    CommitWithoutBegin,
    #[error("replication stream out of order: change for relation {relation_id} before its Relation message")]
    UnknownRelation { relation_id: u32 },
    #[error("replication stream out of order: row change outside a transaction")]
    ChangeOutsideTransaction,
    #[error("replication stream out of order: {table} has {columns} columns but a row arrived with {values}")]
    RowWidth {
        table: String,
        columns: usize,
        values: usize,
    },
}

/// The table model of a relation whose column types were resolved (`resolved`, in column order). The message
/// key: the primary key; without one, a replica identity index; otherwise no key.
pub fn table_from_relation(
    relation: &Relation,
    primary_key: &[String],
    resolved: Vec<ResolvedColumn>,
) -> Table {
    let index_identity = relation.replica_identity == b'i';
    let columns = relation
        .columns
        .iter()
        .zip(resolved)
        .map(|(c, resolved)| Column {
            name: c.name.clone(),
            column_type: resolved.column_type,
            key: if primary_key.is_empty() {
                index_identity && c.key
            } else {
                primary_key.contains(&c.name)
            },
            source_type: resolved.source_type,
            not_null: resolved.not_null,
            precision: resolved.precision,
        })
        .collect();
    Table {
        id: relation.id,
        schema: relation.namespace.clone(),
        name: relation.name.clone(),
        columns,
    }
}

struct OpenTransaction {
    xid: u32,
    commit_lsn: Lsn,
    commit_time_us: i64,
    /// Change events of this transaction handed on so far, over every connection.
    handed_on: u64,
    /// Change events still to drop because an earlier connection handed them on (u64::MAX: all of them,
    /// the whole transaction was handed on).
    skip: u64,
    /// Row change events so far, in total and per table id: the transaction block's orders. Counted again
    /// from Begin when a transaction is replayed, so replayed events get the numbers they had.
    changes: u64,
    changes_by_table: HashMap<u32, u64>,
}

/// A transaction cut off by a lost connection: the next connection replays it from the start.
#[derive(Clone, Copy, Debug)]
struct CutOff {
    commit_lsn: Lsn,
    handed_on: u64,
}

/// Protocol state between messages: known relations and the open transaction.
pub(super) struct StreamDecoder {
    database: Arc<str>,
    relations: HashMap<u32, Option<Captured>>,
    transaction: Option<OpenTransaction>,
    /// The last position handed on (a commit's end, or an idle point).
    last_position: Lsn,
    cut_off: Option<CutOff>,
    /// After a carried-on snapshot: the changes its later snapshots hold, left out until passed.
    overlap: Option<Overlap>,
    /// Changes the overlap left out, for the log line that ends it.
    left_out: u64,
    /// Pass on the user's logical decoding messages (`capture_messages`); sluice's own watermarks are
    /// passed on either way, for the incremental snapshot to take out.
    user_messages: bool,
}

impl StreamDecoder {
    pub(super) fn new(database: &str, resume: Lsn, overlap: Option<Overlap>) -> StreamDecoder {
        StreamDecoder {
            database: database.into(),
            relations: HashMap::new(),
            transaction: None,
            last_position: resume,
            cut_off: None,
            overlap,
            left_out: 0,
            user_messages: true,
        }
    }

    /// Whether the user's logical decoding messages are passed on (they are by default).
    pub(super) fn with_user_messages(mut self, pass_on: bool) -> StreamDecoder {
        self.user_messages = pass_on;
        self
    }

    /// The connection is gone: the next one starts again at the acknowledged position, before the open
    /// transaction, which will be replayed from its Begin.
    pub(super) fn connection_lost(&mut self) {
        if let Some(tx) = self.transaction.take() {
            self.cut_off = Some(CutOff {
                commit_lsn: tx.commit_lsn,
                handed_on: tx.handed_on,
            });
            if let Some(overlap) = &mut self.overlap {
                overlap.cut_off();
            }
        }
    }

    /// The position that acknowledges everything up to `lsn`, where a transaction committed at
    /// `commit_lsn` ended (or an idle point, both the same). The overlap is stored with it until passed.
    fn position(&mut self, commit_lsn: Lsn, lsn: Lsn) -> Position {
        let Some(overlap) = &mut self.overlap else {
            return Position::Postgres { lsn };
        };
        overlap.committed();
        if !overlap.ends_at(commit_lsn) {
            return overlap.position_at(lsn);
        }
        tracing::info!(left_out = self.left_out, at = %commit_lsn, "the stream has passed the carried-on snapshot: the changes it held were left out, nothing more is");
        self.overlap = None;
        Position::Postgres { lsn }
    }

    /// Drops the change events in `out[from..]` that an earlier connection already handed on.
    fn drop_replayed(&mut self, out: &mut Vec<SourceEvent>, from: usize) {
        if let Some(tx) = &mut self.transaction {
            let new = (out.len() - from) as u64;
            let replayed = tx.skip.min(new);
            out.drain(from..from + replayed as usize);
            // u64::MAX stays: the Commit of a transaction handed on whole is skipped too.
            if tx.skip != u64::MAX {
                tx.skip -= replayed;
            }
            tx.handed_on += new - replayed;
        }
    }

    pub(super) fn in_transaction(&self) -> bool {
        self.transaction.is_some()
    }

    /// A keepalive outside a transaction: everything the server had to send up to `wal_end` was sent.
    pub(super) fn idle(&mut self, wal_end: Lsn, out: &mut Vec<SourceEvent>) {
        if self.transaction.is_none() && wal_end > self.last_position {
            self.last_position = wal_end;
            out.push(SourceEvent::Idle {
                position: self.position(wal_end, wal_end),
            });
        }
    }

    /// Decodes the message at `lsn` into `out`. A Relation message comes back: the caller describes its
    /// table (None when the selection leaves it out) and hands it to [`Self::described`] before the next
    /// message.
    #[must_use = "a returned Relation must be described and handed to `described`"]
    pub(super) fn apply(
        &mut self,
        message: Message,
        lsn: Lsn,
        out: &mut Vec<SourceEvent>,
    ) -> Result<Option<Relation>, StreamError> {
        match message {
            Message::Begin(begin) => {
                if self.transaction.is_some() {
                    return Err(StreamError::BeginInTransaction);
                }
                // After a reconnect the server replays from the acknowledged position: transactions that
                // committed before the last position handed on were handed on whole; the one cut off
                // mid-way was handed on in part.
                let (handed_on, skip) = if begin.final_lsn < self.last_position {
                    (0, u64::MAX)
                } else {
                    match self.cut_off.take() {
                        Some(cut) if cut.commit_lsn == begin.final_lsn => {
                            tracing::info!(txid = begin.xid, handed_on = cut.handed_on, "replaying the transaction the lost connection cut off: skipping the changes already handed on");
                            (cut.handed_on, cut.handed_on)
                        }
                        _ => (0, 0),
                    }
                };
                self.transaction = Some(OpenTransaction {
                    xid: begin.xid,
                    commit_lsn: begin.final_lsn,
                    commit_time_us: begin.commit_time_us,
                    handed_on,
                    skip,
                    changes: 0,
                    changes_by_table: HashMap::new(),
                });
            }
            Message::Commit(commit) => {
                let Some(tx) = self.transaction.take() else {
                    return Err(StreamError::CommitWithoutBegin);
                };
                if tx.skip == u64::MAX {
                    return Ok(None);
                }
                self.last_position = self.last_position.max(commit.end_lsn);
                out.push(SourceEvent::Commit {
                    position: self.position(commit.commit_lsn, commit.end_lsn),
                    commit_time_us: Some(tx.commit_time_us),
                });
            }
            Message::Relation(relation) => return Ok(Some(relation)),
            // Logical decoding messages count among a transaction's events, so that a replay after a
            // reconnect skips them like the changes.
            Message::Insert(_)
            | Message::Update(_)
            | Message::Delete(_)
            | Message::Truncate(_)
            | Message::LogicalMessage(_) => {
                let from = out.len();
                self.apply_change(message, lsn, out)?;
                self.drop_replayed(out, from);
            }
            Message::Origin(_) | Message::Type(_) => {}
        }
        Ok(None)
    }

    /// The table of a Relation message [`Self::apply`] handed back; None when its changes are skipped.
    /// It replaces what an earlier Relation message with the same id said (a table changed mid-stream).
    pub(super) fn described(&mut self, relation_id: u32, captured: Option<Captured>) {
        if let Some(Captured { table, .. }) = &captured {
            tracing::debug!(table = %table.qualified_name(), columns = table.columns.len(), "relation");
        }
        self.relations.insert(relation_id, captured);
    }

    /// A row change (or truncate) into its change events.
    fn apply_change(
        &mut self,
        message: Message,
        lsn: Lsn,
        out: &mut Vec<SourceEvent>,
    ) -> Result<(), StreamError> {
        match message {
            Message::Insert(insert) => {
                if let Some(captured) = self.table(insert.relation_id)? {
                    let after = captured.decode(&insert.new)?;
                    out.extend(self.change(captured.table, Op::Create, None, Some(after), lsn)?);
                }
            }
            Message::Update(update) => {
                if let Some(captured) = self.table(update.relation_id)? {
                    self.update(captured, update.old.as_ref(), &update.new, lsn, out)?;
                }
            }
            Message::Delete(delete) => {
                if let Some(captured) = self.table(delete.relation_id)? {
                    let before = match &delete.old {
                        OldTuple::Key(tuple) | OldTuple::Full(tuple) => captured.decode(tuple)?,
                    };
                    out.extend(self.change(captured.table, Op::Delete, Some(before), None, lsn)?);
                }
            }
            Message::Truncate(truncate) => {
                for relation_id in &truncate.relation_ids {
                    if let Some(captured) = self.table(*relation_id)? {
                        out.extend(self.change(captured.table, Op::Truncate, None, None, lsn)?);
                    }
                }
            }
            // The server sends these only when asked (capture_messages, or a signal table for the
            // watermarks); heartbeats are sluice's own.
            Message::LogicalMessage(message)
                if message.prefix != HEARTBEAT_PREFIX
                    && (self.user_messages || message.prefix == Watermark::PREFIX) =>
            {
                let transaction = self.transaction.as_ref().filter(|_| message.transactional);
                out.push(SourceEvent::Message(DecodingMessage {
                    database: self.database.to_string(),
                    prefix: message.prefix,
                    content: message.content.to_vec(),
                    transactional: message.transactional,
                    txid: transaction.map(|tx| u64::from(tx.xid)),
                    lsn: message.lsn,
                    commit_time_us: transaction.map(|tx| tx.commit_time_us),
                }));
            }
            _ => {}
        }
        Ok(())
    }

    /// An update; one that changes the key becomes a delete of the old key and a create of the new one, so
    /// that the old key's last event (and its tombstone) says it is gone — what Debezium does.
    fn update(
        &mut self,
        captured: Captured,
        old: Option<&OldTuple>,
        new: &TupleData,
        lsn: Lsn,
        out: &mut Vec<SourceEvent>,
    ) -> Result<(), StreamError> {
        let mut after = captured.decode(new)?;
        let before = match old {
            Some(OldTuple::Full(tuple)) => {
                let before = captured.decode(tuple)?;
                restore_unchanged_toast(&mut after, &before);
                Some(before)
            }
            Some(OldTuple::Key(tuple)) => Some(captured.decode(tuple)?),
            None => None,
        };
        let table = captured.table;
        let key_changed = before.as_ref().is_some_and(|b| {
            let mut keys = table.key_columns().map(|(i, _)| i).peekable();
            keys.peek().is_some() && keys.any(|i| b[i] != after[i])
        });
        if key_changed {
            out.extend(self.change(table.clone(), Op::Delete, before, None, lsn)?);
            out.extend(self.change(table, Op::Create, None, Some(after), lsn)?);
        } else {
            out.extend(self.change(table, Op::Update, before, Some(after), lsn)?);
        }
        Ok(())
    }

    fn table(&self, relation_id: u32) -> Result<Option<Captured>, StreamError> {
        match self.relations.get(&relation_id) {
            Some(table) => Ok(table.clone()),
            None => Err(StreamError::UnknownRelation { relation_id }),
        }
    }

    /// The change event, numbered within its transaction; None when the overlap leaves it out (it takes
    /// no number then, so that the transaction's orders stay without gaps).
    fn change(
        &mut self,
        table: Arc<Table>,
        op: Op,
        before: Option<Row>,
        after: Option<Row>,
        lsn: Lsn,
    ) -> Result<Option<SourceEvent>, StreamError> {
        let tx = self
            .transaction
            .as_mut()
            .ok_or(StreamError::ChangeOutsideTransaction)?;
        let mut event = ChangeEvent {
            table,
            op,
            before,
            after,
            source: SourceInfo {
                database: self.database.clone(),
                txid: Some(u64::from(tx.xid)),
                lsn,
                commit_lsn: tx.commit_lsn,
                commit_time_us: tx.commit_time_us,
                snapshot: SnapshotMarker::False,
                order: None,
            },
        };
        if let Some(overlap) = &mut self.overlap {
            if overlap.leaves_out(tx.xid, tx.commit_lsn, &event) {
                self.left_out += 1;
                return Ok(None);
            }
        }
        tx.changes += 1;
        let in_table = tx.changes_by_table.entry(event.table.id).or_default();
        *in_table += 1;
        event.source.order = Some(TransactionOrder {
            total: tx.changes,
            in_table: *in_table,
        });
        Ok(Some(SourceEvent::Change(event)))
    }
}

/// A table as its events carry it: the relation's columns less the excluded ones.
#[derive(Clone, Debug)]
pub(super) struct Captured {
    pub table: Arc<Table>,
    /// Which of the relation's columns stay, in the server's column order; None when all of them do.
    keep: Option<Arc<[bool]>>,
}

impl Captured {
    /// The relation's table model with `source.exclude_columns` applied. Key columns stay whatever the
    /// patterns say: the message key needs them.
    pub(super) fn new(
        relation: &Relation,
        primary_key: &[String],
        resolved: Vec<ResolvedColumn>,
        selection: &Selection,
    ) -> Self {
        let mut table = table_from_relation(relation, primary_key, resolved);
        let keep: Vec<bool> = table
            .columns
            .iter()
            .map(|column| {
                let excluded = selection.excludes_column(&table.schema, &table.name, &column.name);
                if excluded && column.key {
                    tracing::warn!(table = %table.qualified_name(), column = %column.name, "source.exclude_columns matches a key column: it stays in the events, the message key needs it");
                }
                column.key || !excluded
            })
            .collect();
        if keep.iter().all(|kept| *kept) {
            return Captured {
                table: Arc::new(table),
                keep: None,
            };
        }
        let mut kept = keep.iter();
        table
            .columns
            .retain(|_| kept.next().copied().unwrap_or(true));
        Captured {
            table: Arc::new(table),
            keep: Some(keep.into()),
        }
    }

    /// A row the server sent (every published column) as the event's row.
    fn decode(&self, tuple: &TupleData) -> Result<Row, StreamError> {
        decode_row(&self.table, tuple, self.keep.as_deref())
    }
}

/// Text values to typed values, for the columns `keep` marks (all when None). A value that does not parse
/// is kept as `OutOfRange` with the reason, so the event reaches the dead-letter topic instead of stopping
/// the stream.
pub(super) fn decode_row(
    table: &Table,
    tuple: &TupleData,
    keep: Option<&[bool]>,
) -> Result<Row, StreamError> {
    let width = keep.map_or(table.columns.len(), <[bool]>::len);
    if tuple.0.len() != width {
        return Err(StreamError::RowWidth {
            table: table.qualified_name(),
            columns: width,
            values: tuple.0.len(),
        });
    }
    let kept = tuple
        .0
        .iter()
        .enumerate()
        .filter(|(i, _)| keep.is_none_or(|keep| keep[*i]))
        .map(|(_, value)| value);
    let row = table
        .columns
        .iter()
        .zip(kept)
        .map(|(column, value)| match value {
            TupleValue::Null => Value::Null,
            TupleValue::UnchangedToast => Value::UnchangedToast,
            TupleValue::Text(text) => types::parse_text(&column.column_type, text)
                .unwrap_or_else(|err| Value::OutOfRange(err.to_string())),
            TupleValue::Binary(_) => Value::OutOfRange("unexpected binary-format value".into()),
        })
        .collect();
    Ok(row)
}

/// With REPLICA IDENTITY FULL the old row carries the values an update left untouched in TOAST storage.
fn restore_unchanged_toast(after: &mut Row, before: &Row) {
    for (value, old) in after.iter_mut().zip(before) {
        if *value == Value::UnchangedToast && *old != Value::UnchangedToast {
            *value = old.clone();
        }
    }
}

#[cfg(test)]
#[path = "decoder_tests.rs"]
mod tests;
