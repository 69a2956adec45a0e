//! The change-event model: what every source produces and every later stage consumes.
//!
//! A source turns its log into [`SourceEvent`]s: row changes, plus the transaction boundaries and idle
//! points that tell the pipeline which positions become safe to acknowledge once the broker has the events.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::incremental::Progress;

/// A PostgreSQL WAL position. Displayed the way PostgreSQL prints it (`16/B374D848`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(into = "String", try_from = "String")]
pub struct Lsn(pub u64);

// Stored as PostgreSQL prints it, so a person can compare the position file with pg_replication_slots.
impl From<Lsn> for String {
    fn from(lsn: Lsn) -> String {
        lsn.to_string()
    }
}

impl TryFrom<String> for Lsn {
    type Error = String;
    fn try_from(text: String) -> Result<Lsn, String> {
        text.parse()
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl std::str::FromStr for Lsn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (hi, lo) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not an LSN (expected X/Y in hex)"))?;
        let hi = u32::from_str_radix(hi, 16)
            .map_err(|_| format!("`{s}` is not an LSN (bad high half)"))?;
        let lo = u32::from_str_radix(lo, 16)
            .map_err(|_| format!("`{s}` is not an LSN (bad low half)"))?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

/// How far a source got. Acknowledging a position means: every event before it is on the broker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Position {
    /// PostgreSQL: the end LSN of the last delivered transaction (or of an idle point after it).
    Postgres { lsn: Lsn },
    /// PostgreSQL while a snapshot is read, and afterwards while the stream passes changes that a
    /// later snapshot (one a run took to carry an interrupted snapshot on) already holds.
    PostgresSnapshot(PgSnapshotPosition),
    /// MongoDB change streams: the resume token of the last delivered event (or a post-batch token
    /// after it), as canonical Extended JSON, which is how the server hands it back on resume.
    Mongodb { resume_token: String },
    /// MongoDB oplog tailing: the `ts` of the last delivered oplog entry (or of a later one that
    /// concerned no captured collection).
    MongodbOplog { seconds: u32, increment: u32 },
    /// MongoDB during a snapshot: where streaming starts once it is done (taken before the first read,
    /// so no change made while reading is missed), and how far each part of the snapshot got.
    MongodbSnapshot {
        start: Box<Position>,
        chunks: Vec<SnapshotChunk>,
    },
    /// Any of the others while an incremental snapshot is under way: where the stream is, and how far the
    /// re-reading of tables got (written only while there is one, so older files read unchanged).
    Incremental {
        stream: Box<Position>,
        snapshot: Progress,
    },
}

/// One part of a MongoDB snapshot: a collection, or an `_id` range of a large one. Bounds and `last` are
/// canonical Extended JSON, so that every `_id` type compares on resume as the server compares it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// `db.collection`.
    pub namespace: String,
    /// The first `_id` of the range (inclusive); None from the collection's start.
    pub from: Option<String>,
    /// The `_id` the range ends before; None to the collection's end.
    pub to: Option<String>,
    /// The `_id` of the last document read and on the broker: a resumed snapshot reads after it.
    pub last: Option<String>,
    pub done: bool,
}

/// How far a PostgreSQL snapshot got, and what the stream must skip because of it.
///
/// Rows are read in the slot's exported snapshot (as of `lsn`, the consistent point) or, when a run
/// carries an interrupted snapshot on, in a later snapshot. A row read in a later snapshot already holds
/// the changes of the transactions that snapshot saw; the stream, which starts at `lsn`, skips those
/// changes for that row, so that nothing reaches the topic twice or out of order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgSnapshotPosition {
    /// Where the stream goes on from: the consistent point while the rows are read, then the end of the
    /// last delivered transaction.
    pub lsn: Lsn,
    /// Every row is on the broker.
    #[serde(default)]
    pub complete: bool,
    /// The tables whose rows are (in part) on the broker.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<PgTableRead>,
    /// The later snapshots rows were read in, referred to by index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub later: Vec<LaterSnapshot>,
}

/// What of one table is on the broker.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgTableRead {
    pub schema: String,
    pub name: String,
    /// Every row of the table is on the broker.
    #[serde(default)]
    pub done: bool,
    /// A table read whole: the later snapshot it was read in (None: the exported one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_in: Option<usize>,
    /// A table read in ranges of its integer primary key: the key column, and the ranges on the broker.
    /// Keys outside every range had no row in the snapshot that planned them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<PgRangeRead>,
}

/// Rows whose key lies in `low..=high`, on the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgRangeRead {
    pub low: i64,
    pub high: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_in: Option<usize>,
}

/// A snapshot taken after the consistent point: which transactions it saw (`pg_current_snapshot()`:
/// full transaction ids, epoch included), and the WAL insert position just after it was taken, before
/// which every transaction it saw committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaterSnapshot {
    pub xmin: u64,
    pub xmax: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xip: Vec<u64>,
    pub until: Lsn,
}

impl PgSnapshotPosition {
    /// A snapshot with nothing read yet, whose stream continues at `lsn`.
    pub fn starting_at(lsn: Lsn) -> PgSnapshotPosition {
        PgSnapshotPosition {
            lsn,
            ..PgSnapshotPosition::default()
        }
    }
}

impl Position {
    /// A PostgreSQL snapshot not all of whose rows are on the broker yet.
    pub fn snapshot_in_progress(&self) -> bool {
        matches!(self.stream(), Position::PostgresSnapshot(snapshot) if !snapshot.complete)
    }

    /// The WAL position a PostgreSQL position stands for: where the slot may be confirmed.
    pub fn postgres_lsn(&self) -> Option<Lsn> {
        match self.stream() {
            Position::Postgres { lsn } => Some(*lsn),
            Position::PostgresSnapshot(snapshot) => Some(snapshot.lsn),
            _ => None,
        }
    }

    /// Where the stream is, without the incremental snapshot's progress.
    pub fn stream(&self) -> &Position {
        match self {
            Position::Incremental { stream, .. } => stream.stream(),
            other => other,
        }
    }

    /// The incremental snapshot under way, if any.
    pub fn incremental(&self) -> Option<&Progress> {
        match self {
            Position::Incremental { snapshot, .. } => Some(snapshot),
            _ => None,
        }
    }

    /// Splits a position into where the stream is and the incremental snapshot under way.
    pub fn into_parts(self) -> (Position, Option<Progress>) {
        match self {
            Position::Incremental { stream, snapshot } => (stream.into_parts().0, Some(snapshot)),
            other => (other, None),
        }
    }

    /// `stream` carrying `progress` (none, or one with no table, leaves it as it is). A finished one is
    /// carried once, on the position after its last rows, so that what it read is on record.
    pub fn with_incremental(stream: Position, progress: Option<&Progress>) -> Position {
        let stream = stream.into_parts().0;
        match progress {
            Some(progress) if !progress.tables.is_empty() => Position::Incremental {
                stream: Box::new(stream),
                snapshot: progress.clone(),
            },
            _ => stream,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Postgres { lsn } => write!(f, "{lsn}"),
            Position::PostgresSnapshot(snapshot) if snapshot.complete => write!(
                f,
                "{} (skipping changes that {} later snapshot(s) hold)",
                snapshot.lsn,
                snapshot.later.len()
            ),
            Position::PostgresSnapshot(snapshot) => write!(
                f,
                "snapshot in progress at {} ({} tables done, {} begun)",
                snapshot.lsn,
                snapshot.tables.iter().filter(|t| t.done).count(),
                snapshot.tables.iter().filter(|t| !t.done).count()
            ),
            Position::Mongodb { resume_token } => write!(f, "resume token {resume_token}"),
            Position::MongodbOplog { seconds, increment } => {
                write!(f, "oplog timestamp ({seconds}, {increment})")
            }
            Position::MongodbSnapshot { chunks, .. } => write!(
                f,
                "snapshot in progress ({} of {} parts done)",
                chunks.iter().filter(|c| c.done).count(),
                chunks.len()
            ),
            Position::Incremental { stream, snapshot } => write!(
                f,
                "{stream}, incremental snapshot {} of {} tables done{}",
                snapshot.tables.iter().filter(|t| t.done).count(),
                snapshot.tables.len(),
                if snapshot.paused { " (paused)" } else { "" }
            ),
        }
    }
}

/// Debezium's operation codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Create,
    Update,
    Delete,
    Truncate,
    /// A row read by a snapshot.
    Read,
}

impl Op {
    pub fn code(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Truncate => "t",
            Op::Read => "r",
        }
    }
}

/// The type of a column as the Avro side sees it. Sources map their native types onto these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ColumnType {
    Boolean,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    /// Fixed precision and scale: Avro `bytes` with logical type `decimal`.
    Decimal {
        precision: u32,
        scale: u32,
    },
    /// A numeric without declared scale: each value carries its own (Debezium's VariableScaleDecimal).
    VariableDecimal,
    String,
    Bytes,
    Uuid,
    /// Days since 1970-01-01.
    Date,
    /// Microseconds since 1970-01-01 00:00, no time zone (Avro `local-timestamp-micros`).
    Timestamp,
    /// Microseconds since 1970-01-01 00:00 UTC (Avro `timestamp-micros`).
    TimestampTz,
    /// Microseconds since midnight (Avro `time-micros`); PostgreSQL's `24:00:00` is 86,400,000,000.
    Time,
    /// An exact amount with two decimal places (PostgreSQL `money` under the C monetary locale).
    Money,
    /// An array of `dimensions` nesting levels (at least 1) whose elements may be null.
    Array {
        element: Box<ColumnType>,
        dimensions: u32,
    },
    /// A composite type: a named record whose fields may be null.
    Record {
        /// The Avro full name of the record.
        name: String,
        fields: Vec<RecordField>,
    },
    /// Text keys to nullable text values (hstore).
    TextMap,
    /// JSON text (json, jsonb).
    Json,
    /// A type this version does not map natively: carried as its text form, tagged with the type name.
    Text {
        type_name: String,
    },
    /// A value of an enumerated type (as text), with the type's labels in their order.
    Enum {
        type_name: String,
        labels: Vec<String>,
    },
    /// Debezium's representations of values whose own form above differs (`[avro] logical_types =
    /// "debezium"`); no source produces them, the encoders' Debezium mode puts them in its table models.
    Debezium(DebeziumType),
}

/// How Debezium's PostgreSQL connector represents a value, where that differs from the event model's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DebeziumType {
    /// `io.debezium.time.Timestamp`: a `timestamp(0..3)` in milliseconds.
    MilliTimestamp,
    /// `io.debezium.time.MicroTimestamp`: a `timestamp` in microseconds, its infinities Debezium's.
    MicroTimestamp,
    /// `io.debezium.time.Time`: a `time(0..3)` in milliseconds, an int.
    MilliTime,
    /// `io.debezium.time.ZonedTimestamp`: a `timestamptz` as UTC ISO 8601 text with `digits` fractional
    /// digits.
    ZonedTimestamp { digits: u8 },
    /// `io.debezium.time.ZonedTime`: a `timetz` as UTC ISO 8601 text.
    ZonedTime,
    /// `io.debezium.time.MicroDuration`: an `interval` in microseconds, months as 30.4375 days.
    MicroDuration,
    /// `io.debezium.data.Json`: an hstore as a JSON object.
    HstoreJson,
    /// `io.debezium.data.VariableScaleDecimal` of a `numeric` without a scale, its trailing zeros
    /// stripped (`1.10` is scale 1, 11).
    StrippedDecimal,
}

/// One field of a composite type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordField {
    /// The field's name in PostgreSQL.
    pub name: String,
    pub column_type: ColumnType,
}

/// One column of a captured table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub column_type: ColumnType,
    /// Part of the primary key (or the replica identity): goes into the message key.
    pub key: bool,
    /// The source's own type name (`int4`, `numeric`, ...), for documentation and errors.
    pub source_type: String,
    /// The source declares the column NOT NULL.
    pub not_null: bool,
    /// Fractional-second digits a time or timestamp column (or its arrays' elements) declares:
    /// `timestamp(3)` is 3; None when it declares none.
    pub precision: Option<u8>,
}

/// A captured table at one schema version. A schema change produces a new `Table`; events hold an `Arc` to
/// the version they were decoded with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// The source's identifier for the relation (PostgreSQL: the table's OID).
    pub id: u32,
    pub schema: String,
    pub name: String,
    pub columns: Vec<Column>,
}

impl Table {
    /// `schema.table`, as a person writes it.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    pub fn key_columns(&self) -> impl Iterator<Item = (usize, &Column)> {
        self.columns.iter().enumerate().filter(|(_, c)| c.key)
    }
}

/// A numeric value as PostgreSQL has it: exact decimal digits, or one of the special values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Numeric {
    /// `unscaled * 10^-scale`; `unscaled` is an optional `-` followed by decimal digits.
    Finite {
        unscaled: String,
        scale: u32,
    },
    NaN,
    PositiveInfinity,
    NegativeInfinity,
}

/// One column value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    /// PostgreSQL did not send the value: a TOASTed column the update did not change.
    UnchangedToast,
    Bool(bool),
    Int16(i16),
    Int32(i32),
    Int64(i64),
    Float32(f32),
    Float64(f64),
    Numeric(Numeric),
    String(String),
    Bytes(Vec<u8>),
    /// Canonical lower-case text form.
    Uuid(String),
    /// Days since 1970-01-01; `infinity` is `i32::MAX`, `-infinity` `i32::MIN`.
    Date(i32),
    /// Microseconds since the epoch, no zone; `infinity` is `i64::MAX`, `-infinity` `i64::MIN`.
    Timestamp(i64),
    /// Microseconds since the epoch, UTC; infinities as for `Timestamp`.
    TimestampTz(i64),
    /// Microseconds since midnight.
    Time(i64),
    /// Array elements (nested arrays for each further dimension); `Null` for a NULL element.
    Array(Vec<Value>),
    /// Composite fields in declaration order; `Null` for a NULL field.
    Record(Vec<Value>),
    /// Key–value pairs in the order the source printed them.
    TextMap(Vec<(String, Option<String>)>),
    Json(String),
    /// A value that exists in the source but has no representation in its column's Avro type
    /// (`date 'infinity'`, text that does not parse as its type): the encoder rejects it, with this reason.
    OutOfRange(String),
    /// A value with something its Avro form does not say; the encoders publish the value and tell the note
    /// in a header.
    Noted(Box<Noted>),
}

/// A value and what its Avro form leaves out.
#[derive(Clone, Debug, PartialEq)]
pub struct Noted {
    pub value: Value,
    pub note: Note,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// PostgreSQL did not send it (unchanged TOAST): it was read from the table for this change.
    Reselected,
    /// An array whose nesting differs from the column's declared dimensions, or whose lower bounds are not
    /// 1: PostgreSQL's bounds decoration (`[0:1]`, `[1:2][1:2]`). The value holds its elements nested as
    /// the column declares, in PostgreSQL's order.
    ArrayBounds(String),
}

impl Value {
    /// The value with a note attached.
    pub fn noted(value: Value, note: Note) -> Value {
        Value::Noted(Box::new(Noted { value, note }))
    }

    /// The value without its notes.
    pub fn plain(&self) -> &Value {
        let mut value = self;
        while let Value::Noted(noted) = value {
            value = &noted.value;
        }
        value
    }

    /// The notes on the value, outermost first.
    pub fn notes(&self) -> impl Iterator<Item = &Note> {
        let mut value = self;
        std::iter::from_fn(move || match value {
            Value::Noted(noted) => {
                value = &noted.value;
                Some(&noted.note)
            }
            _ => None,
        })
    }
}

/// One row: values in the table's column order.
pub type Row = Vec<Value>;

/// Where in the source an event came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceInfo {
    /// Shared: every event of a run carries the same name, so cloning it must not allocate.
    pub database: Arc<str>,
    /// Transaction id; None for snapshot rows (the read-only snapshot transaction has none, and asking for
    /// one would make every other slot creation on the server wait for the snapshot to end).
    pub txid: Option<u64>,
    /// Position of this change in the log.
    pub lsn: Lsn,
    /// LSN of the transaction's commit record (Debezium's `last_commit_lsn`).
    pub commit_lsn: Lsn,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_time_us: i64,
    pub snapshot: SnapshotMarker,
    /// Where the change stands in its transaction; None for snapshot rows.
    pub order: Option<TransactionOrder>,
}

/// Debezium's transaction block: the change's place among its transaction's change events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransactionOrder {
    /// 1 for the transaction's first change event, over all tables.
    pub total: u64,
    /// 1 for the transaction's first change event of this table.
    pub in_table: u64,
}

/// Debezium's `source.snapshot`: whether a snapshot read the row, and which row was the snapshot's last.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SnapshotMarker {
    /// Streamed from the log.
    #[default]
    False,
    True,
    /// The last row of the snapshot: what follows is streamed.
    Last,
    /// Read by an incremental snapshot, while the stream went on.
    Incremental,
}

impl SnapshotMarker {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotMarker::False => "false",
            SnapshotMarker::True => "true",
            SnapshotMarker::Last => "last",
            SnapshotMarker::Incremental => "incremental",
        }
    }
}

/// A row-level change.
#[derive(Clone, Debug, PartialEq)]
pub struct ChangeEvent {
    pub table: Arc<Table>,
    pub op: Op,
    pub before: Option<Row>,
    pub after: Option<Row>,
    pub source: SourceInfo,
}

impl ChangeEvent {
    /// The row the message key is taken from: the new row, or the old one for deletes.
    pub fn key_row(&self) -> Option<&Row> {
        self.after.as_ref().or(self.before.as_ref())
    }

    /// Positions of the new row's columns whose values PostgreSQL did not send (unchanged TOAST).
    pub fn unchanged_toast(&self) -> impl Iterator<Item = usize> + '_ {
        self.after
            .iter()
            .flat_map(|row| row.iter().enumerate())
            .filter(|(_, value)| **value == Value::UnchangedToast)
            .map(|(i, _)| i)
    }
}

/// A message written with `pg_logical_emit_message` (the outbox pattern), passed on as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodingMessage {
    pub database: String,
    pub prefix: String,
    pub content: Vec<u8>,
    /// Written as part of a transaction (and delivered with it, at its commit), or on its own.
    pub transactional: bool,
    /// The transaction of a transactional message.
    pub txid: Option<u64>,
    pub lsn: Lsn,
    /// The commit time of a transactional message's transaction, microseconds since the Unix epoch.
    pub commit_time_us: Option<i64>,
}

/// A MongoDB document change. Documents have no fixed columns, so they travel as canonical Extended JSON
/// text (what Debezium's MongoDB connector publishes), which represents every BSON value exactly.
#[derive(Clone, Debug, PartialEq)]
pub struct DocumentChange {
    pub database: String,
    pub collection: String,
    pub op: Op,
    /// The document's `_id` as canonical Extended JSON: the message key.
    pub key: String,
    /// The document before the change: a pre-image, when the collection records them and the stream asks.
    pub before: Option<String>,
    /// The document after the change (for updates: as looked up or post-imaged; None when it is gone).
    pub after: Option<String>,
    /// What an update changed, as the server described it.
    pub update: Option<UpdateDescription>,
    pub source: DocumentSource,
}

/// The fields an update set, removed and truncated (MongoDB's `updateDescription`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UpdateDescription {
    /// The set fields as one canonical Extended JSON document, keyed by dotted path.
    pub updated_fields: Option<String>,
    pub removed_fields: Vec<String>,
    /// Arrays shortened by the update: dotted path and new length.
    pub truncated_arrays: Vec<(String, u32)>,
}

/// Where in MongoDB's log a document change came from.
#[derive(Clone, Debug, PartialEq)]
pub struct DocumentSource {
    /// The replica set name (or the shard's), when known.
    pub replica_set: Option<Arc<str>>,
    /// The operation's cluster time: seconds since the epoch, and its ordinal within that second.
    pub cluster_time: (u32, u32),
    /// The wall clock time of the operation (MongoDB 6.0+), milliseconds since the epoch.
    pub wall_time_ms: Option<i64>,
    /// The transaction number and session id of a multi-document transaction.
    pub txn_number: Option<i64>,
    pub lsid: Option<String>,
    /// The change's resume token (canonical Extended JSON); None for snapshot reads.
    pub resume_token: Option<String>,
    pub snapshot: SnapshotMarker,
}

impl DocumentChange {
    /// `db.collection`, as MongoDB names a namespace.
    pub fn namespace(&self) -> String {
        format!("{}.{}", self.database, self.collection)
    }
}

/// A change the source read but could not turn into an event (a malformed or unexpected log entry): it
/// goes to the dead-letter topic as the source printed it, and the stream goes on.
#[derive(Clone, Debug, PartialEq)]
pub struct UndecodableChange {
    pub connector: &'static str,
    /// `db.collection` (or `schema.table`), when the entry names one.
    pub namespace: Option<String>,
    /// The entry as relaxed Extended JSON (or the source's own text form).
    pub raw: String,
    pub reason: String,
    /// The entry's position, as its source prints it.
    pub resume_token: Option<String>,
}

/// What a source hands to the pipeline, in log order.
#[derive(Debug)]
pub enum SourceEvent {
    Change(ChangeEvent),
    /// A MongoDB document change.
    Document(DocumentChange),
    /// A change that has no event form: it goes to the dead-letter topic.
    Undecodable(UndecodableChange),
    /// A signal that cannot be acted on (an unknown type, malformed data, a table that is not captured):
    /// it goes to the dead-letter topic with stage `signal`, and the stream goes on.
    BadSignal(UndecodableChange),
    /// A logical decoding message, when the source was asked for them.
    Message(DecodingMessage),
    /// The transaction whose changes were just emitted is complete; once they are all on the broker,
    /// `position` may be acknowledged.
    Commit {
        position: Position,
        /// When the source committed it (microseconds since the epoch); None for a snapshot.
        commit_time_us: Option<i64>,
    },
    /// Nothing is open at `position` (the source is idle): it may be acknowledged once everything
    /// emitted earlier is on the broker. Keeps the server from retaining log for idle captures.
    Idle {
        position: Position,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_through_text() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn.0, 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert!("16B374D848".parse::<Lsn>().is_err());
        assert!("G/0".parse::<Lsn>().is_err());
    }
}
