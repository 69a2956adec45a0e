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
#[path = "pgoutput_tests.rs"]
mod tests;
