//! Decoder for the messages of the built-in `pgoutput` plugin, protocol version 1 (PostgreSQL's "Logical
//! Replication Message Formats"). Pure: one XLogData payload in, one [`Message`] out, no I/O.
//!
//! Integers are big-endian, strings NUL-terminated UTF-8. Column values stay slices of the input buffer
//! (zero copy); turning them into typed values is `types`' job, once the relation's column types are known.
//! Every read is bounds-checked, so malformed input gives a [`DecodeError`], never a panic.

use bytes::Bytes;

use sluice_core::event::Lsn;

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01 00:00 UTC).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// One decoded pgoutput message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin),
    Relation(Relation),
    Type(TypeMessage),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    Truncate(Truncate),
    LogicalMessage(LogicalMessage),
}

/// Start of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_time_us: i64,
    pub xid: u32,
}

/// End of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// Currently always 0.
    pub flags: u8,
    pub commit_lsn: Lsn,
    /// End of the commit record: the position to acknowledge once the transaction is delivered.
    pub end_lsn: Lsn,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_time_us: i64,
}

/// The transaction came to this server through replication from `name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub commit_lsn: Lsn,
    pub name: String,
}

/// A table's shape, sent before its first change in a session and again after every schema change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    /// Schema name (`pg_catalog` when the server sent the empty string).
    pub namespace: String,
    pub name: String,
    /// `REPLICA IDENTITY` setting: `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<RelationColumn>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity (the key sent with updates and deletes).
    pub key: bool,
    pub name: String,
    pub type_oid: u32,
    /// The type modifier (`atttypmod`), -1 when none.
    pub type_modifier: i32,
}

/// A non-built-in type a following Relation message refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeMessage {
    pub id: u32,
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Insert {
    pub relation_id: u32,
    pub new: TupleData,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    pub relation_id: u32,
    /// Sent when the key changed (`Key`) or the table has `REPLICA IDENTITY FULL` (`Full`).
    pub old: Option<OldTuple>,
    pub new: TupleData,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delete {
    pub relation_id: u32,
    pub old: OldTuple,
}

/// The old row of an update or delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OldTuple {
    /// Only the replica identity columns are set; the others are null.
    Key(TupleData),
    /// The whole old row (`REPLICA IDENTITY FULL`).
    Full(TupleData),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncate {
    pub cascade: bool,
    pub restart_identity: bool,
    pub relation_ids: Vec<u32>,
}

/// A message written with `pg_logical_emit_message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogicalMessage {
    pub transactional: bool,
    pub lsn: Lsn,
    pub prefix: String,
    pub content: Bytes,
}

/// One row's column values, in the relation's column order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TupleData(pub Vec<TupleValue>);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TupleValue {
    Null,
    /// A TOASTed value the change did not touch: the server did not send it.
    UnchangedToast,
    /// The value in the type's text output format.
    Text(Bytes),
    /// The value in the type's binary format (only with the `binary` option).
    Binary(Bytes),
}

/// Why a payload is not a valid pgoutput message. `message` names the message kind being decoded and
/// `offset` is the byte position (from the start of the payload) of the field concerned.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty pgoutput message")]
    Empty,
    #[error("unknown pgoutput message tag '{}' (0x{tag:02x})", printable(*.tag))]
    UnknownTag { tag: u8 },
    #[error("pgoutput {message} message truncated at byte {offset} while reading {field} ({needed} bytes needed, {left} left)")]
    Truncated {
        message: &'static str,
        field: &'static str,
        offset: usize,
        needed: usize,
        left: usize,
    },
    #[error("pgoutput {message} message truncated at byte {offset} while reading {field} (no terminating NUL)")]
    UnterminatedString {
        message: &'static str,
        field: &'static str,
        offset: usize,
    },
    #[error("pgoutput {message} message has invalid UTF-8 in {field} at byte {offset}")]
    InvalidUtf8 {
        message: &'static str,
        field: &'static str,
        offset: usize,
    },
    #[error("pgoutput {message} message has a negative {field} ({value}) at byte {offset}")]
    Negative {
        message: &'static str,
        field: &'static str,
        offset: usize,
        value: i32,
    },
    #[error("pgoutput {message} message has {field} {length} at byte {offset}, but only {left} bytes follow")]
    LengthExceedsMessage {
        message: &'static str,
        field: &'static str,
        offset: usize,
        length: usize,
        left: usize,
    },
    #[error("pgoutput {message} message has unknown tuple column kind '{}' (0x{kind:02x}) at byte {offset}", printable(*.kind))]
    UnknownColumnKind {
        message: &'static str,
        offset: usize,
        kind: u8,
    },
    #[error("pgoutput {message} message has '{}' (0x{found:02x}) at byte {offset} where {expected} was expected", printable(*.found))]
    Unexpected {
        message: &'static str,
        offset: usize,
        found: u8,
        expected: &'static str,
    },
    #[error(
        "pgoutput {message} message has a {field} at byte {offset} outside the representable range"
    )]
    TimestampOutOfRange {
        message: &'static str,
        field: &'static str,
        offset: usize,
    },
    #[error(
        "pgoutput {message} message has {count} trailing bytes after its end at byte {offset}"
    )]
    TrailingBytes {
        message: &'static str,
        offset: usize,
        count: usize,
    },
}

/// A tag byte as a character for error messages; control and non-ASCII bytes as `?` (the hex is shown too).
fn printable(byte: u8) -> char {
    if byte.is_ascii_graphic() {
        char::from(byte)
    } else {
        '?'
    }
}

/// Decodes one pgoutput message: the XLogData payload without its 25-byte header.
pub fn decode(data: &Bytes) -> Result<Message, DecodeError> {
    let tag = *data.first().ok_or(DecodeError::Empty)?;
    let message = match tag {
        b'B' => Message::Begin(begin(&mut Reader::new(data, "Begin"))?),
        b'C' => Message::Commit(commit(&mut Reader::new(data, "Commit"))?),
        b'O' => Message::Origin(origin(&mut Reader::new(data, "Origin"))?),
        b'R' => Message::Relation(relation(&mut Reader::new(data, "Relation"))?),
        b'Y' => Message::Type(type_message(&mut Reader::new(data, "Type"))?),
        b'I' => Message::Insert(insert(&mut Reader::new(data, "Insert"))?),
        b'U' => Message::Update(update(&mut Reader::new(data, "Update"))?),
        b'D' => Message::Delete(delete(&mut Reader::new(data, "Delete"))?),
        b'T' => Message::Truncate(truncate(&mut Reader::new(data, "Truncate"))?),
        b'M' => {
            Message::LogicalMessage(logical_message(&mut Reader::new(data, "logical decoding"))?)
        }
        _ => return Err(DecodeError::UnknownTag { tag }),
    };
    Ok(message)
}

// Each message parser starts after the tag byte and ends with `finish`, which rejects trailing bytes.

fn begin(r: &mut Reader<'_>) -> Result<Begin, DecodeError> {
    let final_lsn = r.lsn("final LSN")?;
    let commit_time_us = r.timestamp("commit timestamp")?;
    let xid = r.u32("transaction id")?;
    r.finish()?;
    Ok(Begin {
        final_lsn,
        commit_time_us,
        xid,
    })
}

fn commit(r: &mut Reader<'_>) -> Result<Commit, DecodeError> {
    let flags = r.u8("flags")?;
    let commit_lsn = r.lsn("commit LSN")?;
    let end_lsn = r.lsn("end LSN")?;
    let commit_time_us = r.timestamp("commit timestamp")?;
    r.finish()?;
    Ok(Commit {
        flags,
        commit_lsn,
        end_lsn,
        commit_time_us,
    })
}

fn origin(r: &mut Reader<'_>) -> Result<Origin, DecodeError> {
    let commit_lsn = r.lsn("commit LSN")?;
    let name = r.cstring("origin name")?;
    r.finish()?;
    Ok(Origin { commit_lsn, name })
}

fn relation(r: &mut Reader<'_>) -> Result<Relation, DecodeError> {
    let id = r.u32("relation id")?;
    let mut namespace = r.cstring("namespace")?;
    // The server sends an empty namespace for pg_catalog, to save bytes.
    if namespace.is_empty() {
        namespace = "pg_catalog".to_owned();
    }
    let name = r.cstring("relation name")?;
    let replica_identity = r.u8("replica identity")?;
    let count = r.count16("column count")?;
    let mut columns = Vec::with_capacity(count.min(r.remaining()));
    for _ in 0..count {
        columns.push(relation_column(r)?);
    }
    r.finish()?;
    Ok(Relation {
        id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn relation_column(r: &mut Reader<'_>) -> Result<RelationColumn, DecodeError> {
    let flags = r.u8("column flags")?;
    let name = r.cstring("column name")?;
    let type_oid = r.u32("column type OID")?;
    let type_modifier = r.i32("column type modifier")?;
    Ok(RelationColumn {
        key: flags & 1 != 0,
        name,
        type_oid,
        type_modifier,
    })
}

fn type_message(r: &mut Reader<'_>) -> Result<TypeMessage, DecodeError> {
    let id = r.u32("type OID")?;
    let namespace = r.cstring("namespace")?;
    let name = r.cstring("type name")?;
    r.finish()?;
    Ok(TypeMessage {
        id,
        namespace,
        name,
    })
}

fn insert(r: &mut Reader<'_>) -> Result<Insert, DecodeError> {
    let relation_id = r.u32("relation id")?;
    r.expect(b'N', "'N' (new tuple)")?;
    let new = tuple_data(r)?;
    r.finish()?;
    Ok(Insert { relation_id, new })
}

fn update(r: &mut Reader<'_>) -> Result<Update, DecodeError> {
    let relation_id = r.u32("relation id")?;
    let offset = r.pos;
    let old = match r.u8("tuple kind")? {
        b'K' => Some(OldTuple::Key(tuple_data(r)?)),
        b'O' => Some(OldTuple::Full(tuple_data(r)?)),
        b'N' => None,
        found => return Err(r.unexpected(offset, found, "'K', 'O' or 'N'")),
    };
    if old.is_some() {
        r.expect(b'N', "'N' (new tuple)")?;
    }
    let new = tuple_data(r)?;
    r.finish()?;
    Ok(Update {
        relation_id,
        old,
        new,
    })
}

fn delete(r: &mut Reader<'_>) -> Result<Delete, DecodeError> {
    let relation_id = r.u32("relation id")?;
    let offset = r.pos;
    let old = match r.u8("tuple kind")? {
        b'K' => OldTuple::Key(tuple_data(r)?),
        b'O' => OldTuple::Full(tuple_data(r)?),
        found => return Err(r.unexpected(offset, found, "'K' or 'O'")),
    };
    r.finish()?;
    Ok(Delete { relation_id, old })
}

fn truncate(r: &mut Reader<'_>) -> Result<Truncate, DecodeError> {
    let count = r.count32("relation count")?;
    let options = r.u8("options")?;
    // Never trust the count for the allocation: each id takes 4 bytes of what is left.
    let mut relation_ids = Vec::with_capacity(count.min(r.remaining() / 4));
    for _ in 0..count {
        relation_ids.push(r.u32("relation id")?);
    }
    r.finish()?;
    Ok(Truncate {
        cascade: options & 1 != 0,
        restart_identity: options & 2 != 0,
        relation_ids,
    })
}

fn logical_message(r: &mut Reader<'_>) -> Result<LogicalMessage, DecodeError> {
    let flags = r.u8("flags")?;
    let lsn = r.lsn("message LSN")?;
    let prefix = r.cstring("prefix")?;
    let length = r.count32("content length")?;
    let content = r.bytes(length, "content")?;
    r.finish()?;
    Ok(LogicalMessage {
        transactional: flags & 1 != 0,
        lsn,
        prefix,
        content,
    })
}

fn tuple_data(r: &mut Reader<'_>) -> Result<TupleData, DecodeError> {
    let count = r.count16("tuple column count")?;
    // Each column takes at least its kind byte.
    let mut values = Vec::with_capacity(count.min(r.remaining()));
    for _ in 0..count {
        values.push(tuple_value(r)?);
    }
    Ok(TupleData(values))
}

fn tuple_value(r: &mut Reader<'_>) -> Result<TupleValue, DecodeError> {
    let offset = r.pos;
    let value = match r.u8("tuple column kind")? {
        b'n' => TupleValue::Null,
        b'u' => TupleValue::UnchangedToast,
        b't' => {
            TupleValue::Text(r.length_prefixed("tuple column value length", "tuple column value")?)
        }
        b'b' => TupleValue::Binary(
            r.length_prefixed("tuple column value length", "tuple column value")?,
        ),
        kind => {
            return Err(DecodeError::UnknownColumnKind {
                message: r.message,
                offset,
                kind,
            })
        }
    };
    Ok(value)
}

/// Checked big-endian reads over one message; errors name the message kind, the field and its offset.
struct Reader<'a> {
    data: &'a Bytes,
    pos: usize,
    message: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader positioned after the tag byte.
    fn new(data: &'a Bytes, message: &'static str) -> Reader<'a> {
        Reader {
            data,
            pos: 1,
            message,
        }
    }

    fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    /// The next `N` bytes, advancing past them.
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let slice = self
            .data
            .get(self.pos..)
            .and_then(|rest| rest.get(..N))
            .ok_or_else(|| self.truncated(field, N))?;
        let mut bytes = [0; N];
        bytes.copy_from_slice(slice);
        self.pos += N;
        Ok(bytes)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.array(field)?))
    }

    fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(field)?))
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    /// OIDs and transaction ids: unsigned on the server, sent as Int32.
    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    fn lsn(&mut self, field: &'static str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.array(field)?)))
    }

    /// A timestamp (microseconds since 2000-01-01), as microseconds since the Unix epoch.
    fn timestamp(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        let offset = self.pos;
        let pg = self.i64(field)?;
        pg.checked_add(PG_EPOCH_OFFSET_US)
            .ok_or(DecodeError::TimestampOutOfRange {
                message: self.message,
                field,
                offset,
            })
    }

    /// An Int16 count, which must not be negative.
    fn count16(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let value = self.i16(field)?;
        usize::try_from(value).map_err(|_| self.negative(field, offset, i32::from(value)))
    }

    /// An Int32 count or length, which must not be negative.
    fn count32(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let value = self.i32(field)?;
        usize::try_from(value).map_err(|_| self.negative(field, offset, value))
    }

    /// `length` bytes as a slice of the input (no copy).
    fn bytes(&mut self, length: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        let left = self.remaining();
        if length > left {
            return Err(DecodeError::LengthExceedsMessage {
                message: self.message,
                field,
                offset: self.pos,
                length,
                left,
            });
        }
        let start = self.pos;
        self.pos += length;
        Ok(self.data.slice(start..self.pos))
    }

    /// An Int32 length followed by that many bytes.
    fn length_prefixed(
        &mut self,
        length_field: &'static str,
        field: &'static str,
    ) -> Result<Bytes, DecodeError> {
        let length = self.count32(length_field)?;
        self.bytes(length, field)
    }

    /// A NUL-terminated UTF-8 string.
    fn cstring(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let start = self.pos;
        let rest = self.data.get(start..).unwrap_or_default();
        let length = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::UnterminatedString {
                message: self.message,
                field,
                offset: start,
            })?;
        let text = std::str::from_utf8(&rest[..length]).map_err(|_| DecodeError::InvalidUtf8 {
            message: self.message,
            field,
            offset: start,
        })?;
        self.pos = start + length + 1;
        Ok(text.to_owned())
    }

    /// A marker byte that must have one value.
    fn expect(&mut self, wanted: u8, expected: &'static str) -> Result<(), DecodeError> {
        let offset = self.pos;
        match self.u8(expected)? {
            found if found == wanted => Ok(()),
            found => Err(self.unexpected(offset, found, expected)),
        }
    }

    /// The message must end where its last field did.
    fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes {
                message: self.message,
                offset: self.pos,
                count,
            }),
        }
    }

    fn truncated(&self, field: &'static str, needed: usize) -> DecodeError {
        DecodeError::Truncated {
            message: self.message,
            field,
            offset: self.pos,
            needed,
            left: self.remaining(),
        }
    }

    fn negative(&self, field: &'static str, offset: usize, value: i32) -> DecodeError {
        DecodeError::Negative {
            message: self.message,
            field,
            offset,
            value,
        }
    }

    fn unexpected(&self, offset: usize, found: u8, expected: &'static str) -> DecodeError {
        DecodeError::Unexpected {
            message: self.message,
            offset,
            found,
            expected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds pgoutput messages the way the server writes them.
    struct Encoder(Vec<u8>);

    impl Encoder {
        fn new(tag: u8) -> Encoder {
            Encoder(vec![tag])
        }

        fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }

        fn i16(mut self, v: i16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }

        fn i32(mut self, v: i32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }

        fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }

        fn i64(mut self, v: i64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }

        fn raw(mut self, v: &[u8]) -> Self {
            self.0.extend_from_slice(v);
            self
        }

        fn str(self, v: &str) -> Self {
            self.raw(v.as_bytes()).u8(0)
        }

        fn tuple(mut self, values: &[TupleValue]) -> Self {
            self = self.i16(i16::try_from(values.len()).expect("test tuple fits"));
            for value in values {
                self = match value {
                    TupleValue::Null => self.u8(b'n'),
                    TupleValue::UnchangedToast => self.u8(b'u'),
                    TupleValue::Text(b) => self.u8(b't').i32(len32(b)).raw(b),
                    TupleValue::Binary(b) => self.u8(b'b').i32(len32(b)).raw(b),
                };
            }
            self
        }

        fn build(self) -> Bytes {
            Bytes::from(self.0)
        }
    }

    fn len32(b: &[u8]) -> i32 {
        i32::try_from(b.len()).expect("test value fits")
    }

    fn text(s: &str) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn row() -> Vec<TupleValue> {
        vec![
            text("42"),
            TupleValue::Null,
            TupleValue::UnchangedToast,
            TupleValue::Binary(Bytes::from_static(&[0, 1, 255])),
        ]
    }

    // 2024-01-02 03:04:05.678901 UTC, in both epochs.
    const UNIX_US: i64 = 1_704_164_645_678_901;
    const PG_US: i64 = UNIX_US - 946_684_800_000_000;

    fn begin_msg() -> Bytes {
        Encoder::new(b'B')
            .i64(0x16_B374_D848)
            .i64(PG_US)
            .u32(4_000_000_000)
            .build()
    }

    fn commit_msg() -> Bytes {
        Encoder::new(b'C')
            .u8(0)
            .i64(0x100)
            .i64(0x128)
            .i64(PG_US)
            .build()
    }

    fn origin_msg() -> Bytes {
        Encoder::new(b'O').i64(0x200).str("upstream").build()
    }

    fn relation_msg() -> Bytes {
        Encoder::new(b'R')
            .u32(16_385)
            .str("public")
            .str("orders")
            .u8(b'd')
            .i16(2)
            .u8(1)
            .str("id")
            .u32(23)
            .i32(-1)
            .u8(0)
            .str("amount")
            .u32(1700)
            .i32(786_438)
            .build()
    }

    fn type_msg() -> Bytes {
        Encoder::new(b'Y')
            .u32(16_400)
            .str("public")
            .str("mood")
            .build()
    }

    fn insert_msg() -> Bytes {
        Encoder::new(b'I')
            .u32(16_385)
            .u8(b'N')
            .tuple(&row())
            .build()
    }

    fn update_key_msg() -> Bytes {
        Encoder::new(b'U')
            .u32(16_385)
            .u8(b'K')
            .tuple(&[text("1")])
            .u8(b'N')
            .tuple(&row())
            .build()
    }

    fn update_full_msg() -> Bytes {
        Encoder::new(b'U')
            .u32(16_385)
            .u8(b'O')
            .tuple(&[text("1"), text("x")])
            .u8(b'N')
            .tuple(&row())
            .build()
    }

    fn update_new_only_msg() -> Bytes {
        Encoder::new(b'U')
            .u32(16_385)
            .u8(b'N')
            .tuple(&row())
            .build()
    }

    fn delete_key_msg() -> Bytes {
        Encoder::new(b'D')
            .u32(16_385)
            .u8(b'K')
            .tuple(&[text("7"), TupleValue::Null])
            .build()
    }

    fn delete_full_msg() -> Bytes {
        Encoder::new(b'D')
            .u32(16_385)
            .u8(b'O')
            .tuple(&[text("7"), text("abc")])
            .build()
    }

    fn truncate_msg() -> Bytes {
        Encoder::new(b'T')
            .i32(3)
            .u8(3)
            .u32(1)
            .u32(2)
            .u32(u32::MAX)
            .build()
    }

    fn logical_msg() -> Bytes {
        Encoder::new(b'M')
            .u8(1)
            .i64(0x300)
            .str("sluice")
            .i32(5)
            .raw(b"hello")
            .build()
    }

    fn all_valid() -> Vec<Bytes> {
        vec![
            begin_msg(),
            commit_msg(),
            origin_msg(),
            relation_msg(),
            type_msg(),
            insert_msg(),
            update_key_msg(),
            update_full_msg(),
            update_new_only_msg(),
            delete_key_msg(),
            delete_full_msg(),
            truncate_msg(),
            logical_msg(),
        ]
    }

    fn decode_ok(data: Bytes) -> Message {
        match decode(&data) {
            Ok(message) => message,
            Err(err) => panic!("valid message did not decode: {err}"),
        }
    }

    fn decode_err(data: &[u8]) -> String {
        match decode(&Bytes::copy_from_slice(data)) {
            Ok(message) => panic!("malformed message decoded: {message:?}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn begin_converts_the_timestamp_to_the_unix_epoch() {
        let expected = Begin {
            final_lsn: Lsn(0x16_B374_D848),
            commit_time_us: UNIX_US,
            xid: 4_000_000_000,
        };
        assert_eq!(decode_ok(begin_msg()), Message::Begin(expected));
    }

    #[test]
    fn commit() {
        let expected = Commit {
            flags: 0,
            commit_lsn: Lsn(0x100),
            end_lsn: Lsn(0x128),
            commit_time_us: UNIX_US,
        };
        assert_eq!(decode_ok(commit_msg()), Message::Commit(expected));
    }

    #[test]
    fn pg_epoch_is_the_year_2000() {
        let message = Encoder::new(b'C').u8(0).i64(1).i64(2).i64(0).build();
        let Message::Commit(commit) = decode_ok(message) else {
            panic!("not a commit")
        };
        assert_eq!(commit.commit_time_us, 946_684_800_000_000);
    }

    #[test]
    fn timestamp_overflow_is_an_error() {
        let message = Encoder::new(b'B').i64(1).i64(i64::MAX).u32(1).build();
        let err = decode_err(&message);
        assert!(err.contains("commit timestamp at byte 9"), "{err}");
    }

    #[test]
    fn origin() {
        let expected = Origin {
            commit_lsn: Lsn(0x200),
            name: "upstream".into(),
        };
        assert_eq!(decode_ok(origin_msg()), Message::Origin(expected));
    }

    #[test]
    fn relation() {
        let expected = Relation {
            id: 16_385,
            namespace: "public".into(),
            name: "orders".into(),
            replica_identity: b'd',
            columns: vec![
                RelationColumn {
                    key: true,
                    name: "id".into(),
                    type_oid: 23,
                    type_modifier: -1,
                },
                RelationColumn {
                    key: false,
                    name: "amount".into(),
                    type_oid: 1700,
                    type_modifier: 786_438,
                },
            ],
        };
        assert_eq!(decode_ok(relation_msg()), Message::Relation(expected));
    }

    #[test]
    fn relation_with_empty_namespace_is_in_pg_catalog() {
        let message = Encoder::new(b'R')
            .u32(1259)
            .str("")
            .str("pg_class")
            .u8(b'n')
            .i16(0)
            .build();
        let Message::Relation(relation) = decode_ok(message) else {
            panic!("not a relation")
        };
        assert_eq!(relation.namespace, "pg_catalog");
        assert_eq!(relation.replica_identity, b'n');
        assert!(relation.columns.is_empty());
    }

    #[test]
    fn type_message() {
        let expected = TypeMessage {
            id: 16_400,
            namespace: "public".into(),
            name: "mood".into(),
        };
        assert_eq!(decode_ok(type_msg()), Message::Type(expected));
    }

    #[test]
    fn insert_with_every_column_kind() {
        let expected = Insert {
            relation_id: 16_385,
            new: TupleData(row()),
        };
        assert_eq!(decode_ok(insert_msg()), Message::Insert(expected));
    }

    #[test]
    fn tuple_values_are_slices_of_the_input() {
        let data = insert_msg();
        let Message::Insert(insert) = decode_ok(data.clone()) else {
            panic!("not an insert")
        };
        let TupleValue::Text(value) = &insert.new.0[0] else {
            panic!("not text")
        };
        let input = data.as_ptr_range();
        assert!(input.contains(&value.as_ptr()), "the value was copied");
    }

    #[test]
    fn empty_tuple_and_empty_values() {
        let message = Encoder::new(b'I')
            .u32(1)
            .u8(b'N')
            .tuple(&[text(""), TupleValue::Binary(Bytes::new())])
            .build();
        let Message::Insert(insert) = decode_ok(message) else {
            panic!("not an insert")
        };
        assert_eq!(
            insert.new,
            TupleData(vec![text(""), TupleValue::Binary(Bytes::new())])
        );
        let message = Encoder::new(b'I').u32(1).u8(b'N').tuple(&[]).build();
        let Message::Insert(insert) = decode_ok(message) else {
            panic!("not an insert")
        };
        assert!(insert.new.0.is_empty());
    }

    #[test]
    fn update_with_old_key() {
        let expected = Update {
            relation_id: 16_385,
            old: Some(OldTuple::Key(TupleData(vec![text("1")]))),
            new: TupleData(row()),
        };
        assert_eq!(decode_ok(update_key_msg()), Message::Update(expected));
    }

    #[test]
    fn update_with_old_row() {
        let old = Some(OldTuple::Full(TupleData(vec![text("1"), text("x")])));
        let expected = Update {
            relation_id: 16_385,
            old,
            new: TupleData(row()),
        };
        assert_eq!(decode_ok(update_full_msg()), Message::Update(expected));
    }

    #[test]
    fn update_without_old_tuple() {
        let expected = Update {
            relation_id: 16_385,
            old: None,
            new: TupleData(row()),
        };
        assert_eq!(decode_ok(update_new_only_msg()), Message::Update(expected));
    }

    #[test]
    fn delete_with_old_key() {
        let expected = Delete {
            relation_id: 16_385,
            old: OldTuple::Key(TupleData(vec![text("7"), TupleValue::Null])),
        };
        assert_eq!(decode_ok(delete_key_msg()), Message::Delete(expected));
    }

    #[test]
    fn delete_with_old_row() {
        let expected = Delete {
            relation_id: 16_385,
            old: OldTuple::Full(TupleData(vec![text("7"), text("abc")])),
        };
        assert_eq!(decode_ok(delete_full_msg()), Message::Delete(expected));
    }

    #[test]
    fn truncate_with_options() {
        let expected = Truncate {
            cascade: true,
            restart_identity: true,
            relation_ids: vec![1, 2, u32::MAX],
        };
        assert_eq!(decode_ok(truncate_msg()), Message::Truncate(expected));
        let plain = Encoder::new(b'T').i32(1).u8(0).u32(9).build();
        let expected = Truncate {
            cascade: false,
            restart_identity: false,
            relation_ids: vec![9],
        };
        assert_eq!(decode_ok(plain), Message::Truncate(expected));
    }

    #[test]
    fn logical_decoding_message() {
        let expected = LogicalMessage {
            transactional: true,
            lsn: Lsn(0x300),
            prefix: "sluice".into(),
            content: Bytes::from_static(b"hello"),
        };
        assert_eq!(decode_ok(logical_msg()), Message::LogicalMessage(expected));
        let plain = Encoder::new(b'M').u8(0).i64(1).str("p").i32(0).build();
        let Message::LogicalMessage(message) = decode_ok(plain) else {
            panic!("not a logical message")
        };
        assert!(!message.transactional);
        assert!(message.content.is_empty());
    }

    #[test]
    fn every_truncation_is_an_error() {
        for message in all_valid() {
            for end in 0..message.len() {
                let prefix = message.slice(..end);
                let err = match decode(&prefix) {
                    Ok(decoded) => panic!("prefix {end} of {message:?} decoded as {decoded:?}"),
                    Err(err) => err,
                };
                let clear = match end {
                    0 => matches!(err, DecodeError::Empty),
                    _ => matches!(
                        err,
                        DecodeError::Truncated { .. }
                            | DecodeError::UnterminatedString { .. }
                            | DecodeError::LengthExceedsMessage { .. }
                    ),
                };
                assert!(clear, "prefix {end} of {message:?}: {err}");
            }
        }
    }

    #[test]
    fn truncation_names_the_field_and_offset() {
        assert_eq!(
            decode_err(&[b'I', 0, 0]),
            "pgoutput Insert message truncated at byte 1 while reading relation id (4 bytes needed, 2 left)"
        );
        assert_eq!(
            decode_err(b"Ox\0\0\0\0\0\0\0abc"),
            "pgoutput Origin message truncated at byte 9 while reading origin name (no terminating NUL)"
        );
    }

    #[test]
    fn empty_message() {
        assert_eq!(decode_err(&[]), "empty pgoutput message");
    }

    #[test]
    fn unknown_tag_shows_char_and_hex() {
        assert_eq!(
            decode_err(b"Zabc"),
            "unknown pgoutput message tag 'Z' (0x5a)"
        );
        assert_eq!(
            decode_err(&[0x01]),
            "unknown pgoutput message tag '?' (0x01)"
        );
        // Protocol version 2 streaming messages are not expected with version 1.
        assert!(decode_err(b"S\0\0\0\x01\x01").contains("'S' (0x53)"));
    }

    #[test]
    fn unknown_tuple_column_kind() {
        let message = Encoder::new(b'I').u32(1).u8(b'N').i16(1).u8(b'x').build();
        assert_eq!(
            decode_err(&message),
            "pgoutput Insert message has unknown tuple column kind 'x' (0x78) at byte 8"
        );
    }

    #[test]
    fn unexpected_markers() {
        let insert = Encoder::new(b'I').u32(1).u8(b'K').i16(0).build();
        assert_eq!(
            decode_err(&insert),
            "pgoutput Insert message has 'K' (0x4b) at byte 5 where 'N' (new tuple) was expected"
        );
        let update = Encoder::new(b'U').u32(1).u8(b'X').i16(0).build();
        assert!(decode_err(&update).contains("where 'K', 'O' or 'N' was expected"));
        let update = Encoder::new(b'U')
            .u32(1)
            .u8(b'K')
            .i16(0)
            .u8(b'O')
            .i16(0)
            .build();
        assert!(decode_err(&update).contains("at byte 8 where 'N' (new tuple) was expected"));
        let delete = Encoder::new(b'D').u32(1).u8(b'N').i16(0).build();
        assert!(decode_err(&delete).contains("where 'K' or 'O' was expected"));
    }

    #[test]
    fn negative_lengths_and_counts() {
        let value = Encoder::new(b'I')
            .u32(1)
            .u8(b'N')
            .i16(1)
            .u8(b't')
            .i32(-1)
            .build();
        assert_eq!(
            decode_err(&value),
            "pgoutput Insert message has a negative tuple column value length (-1) at byte 9"
        );
        let columns = Encoder::new(b'I').u32(1).u8(b'N').i16(-3).build();
        assert!(decode_err(&columns).contains("negative tuple column count (-3) at byte 6"));
        let relation = Encoder::new(b'R')
            .u32(1)
            .str("s")
            .str("t")
            .u8(b'd')
            .i16(i16::MIN)
            .build();
        assert!(decode_err(&relation).contains("negative column count (-32768)"));
        let truncate = Encoder::new(b'T').i32(-1).u8(0).build();
        assert!(decode_err(&truncate).contains("negative relation count (-1) at byte 1"));
        let content = Encoder::new(b'M')
            .u8(0)
            .i64(1)
            .str("p")
            .i32(i32::MIN)
            .build();
        assert!(decode_err(&content).contains("negative content length (-2147483648)"));
    }

    #[test]
    fn lengths_beyond_the_message() {
        let value = Encoder::new(b'I')
            .u32(1)
            .u8(b'N')
            .i16(1)
            .u8(b'b')
            .i32(100)
            .raw(b"abc")
            .build();
        assert_eq!(
            decode_err(&value),
            "pgoutput Insert message has tuple column value 100 at byte 13, but only 3 bytes follow"
        );
        let huge = Encoder::new(b'M')
            .u8(0)
            .i64(1)
            .str("p")
            .i32(i32::MAX)
            .build();
        assert!(decode_err(&huge).contains("content 2147483647"));
        // Huge counts must fail on the missing data, not on allocating for it.
        let truncate = Encoder::new(b'T').i32(i32::MAX).u8(0).u32(1).build();
        assert!(decode_err(&truncate).contains("truncated at byte 10 while reading relation id"));
        let columns = Encoder::new(b'I')
            .u32(1)
            .u8(b'N')
            .i16(i16::MAX)
            .u8(b'n')
            .build();
        assert!(
            decode_err(&columns).contains("truncated at byte 9 while reading tuple column kind")
        );
    }

    #[test]
    fn invalid_utf8_in_names() {
        let relation = Encoder::new(b'R')
            .u32(1)
            .str("public")
            .raw(&[b'o', 0xff, 0])
            .u8(b'd')
            .i16(0)
            .build();
        assert_eq!(
            decode_err(&relation),
            "pgoutput Relation message has invalid UTF-8 in relation name at byte 12"
        );
        let column = Encoder::new(b'R')
            .u32(1)
            .str("s")
            .str("t")
            .u8(b'd')
            .i16(1)
            .u8(0)
            .raw(&[0xc3, 0])
            .build();
        assert!(decode_err(&column).contains("invalid UTF-8 in column name"));
        let prefix = Encoder::new(b'M')
            .u8(0)
            .i64(1)
            .raw(&[0xe2, 0x82, 0])
            .i32(0)
            .build();
        assert!(decode_err(&prefix).contains("invalid UTF-8 in prefix"));
    }

    #[test]
    fn trailing_bytes() {
        for message in all_valid() {
            let mut longer = message.to_vec();
            longer.extend_from_slice(b"xy");
            let err = decode_err(&longer);
            assert!(
                err.contains(&format!(
                    "2 trailing bytes after its end at byte {}",
                    message.len()
                )),
                "{err}"
            );
        }
    }

    /// xorshift64: deterministic, so a failure reproduces.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap_or(1)).unwrap_or(0)
        }

        fn byte(&mut self) -> u8 {
            self.next().to_le_bytes()[0]
        }
    }

    fn mutate(rng: &mut XorShift, message: &mut Vec<u8>) {
        match rng.below(5) {
            0 => {
                let i = rng.below(message.len());
                if let Some(b) = message.get_mut(i) {
                    *b = rng.byte();
                }
            }
            1 => {
                let i = rng.below(message.len());
                if let Some(b) = message.get_mut(i) {
                    *b ^= 1 << rng.below(8);
                }
            }
            2 => message.truncate(rng.below(message.len() + 1)),
            3 => {
                for _ in 0..rng.below(8) + 1 {
                    message.push(rng.byte());
                }
            }
            _ => {
                let i = rng.below(message.len() + 1);
                message.insert(i, rng.byte());
            }
        }
    }

    #[test]
    fn mutated_messages_never_panic() {
        let valid = all_valid();
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut decoded = 0;
        for _ in 0..20_000 {
            let mut message = valid[rng.below(valid.len())].to_vec();
            for _ in 0..rng.below(4) + 1 {
                mutate(&mut rng, &mut message);
            }
            if decode(&Bytes::from(message)).is_ok() {
                decoded += 1;
            }
        }
        // Some mutations (a changed value byte) stay valid; most do not.
        assert!(
            decoded > 0 && decoded < 20_000,
            "{decoded} of 20000 mutated messages decoded"
        );
    }
}
