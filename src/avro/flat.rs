//! The flat form of a change (unwrap, Debezium's ExtractNewRecordState): the row itself as the value, plus
//! the envelope fields the config asks for, each named with a `__` prefix.

use super::binary::{write_long, write_string, write_union_branch};
use super::encode::{as_long, encode_key, write_row_fields, EncodeError};
use sluice_core::event::{ChangeEvent, Op, Row};

/// How a change is flattened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flat {
    pub add_fields: Vec<AddField>,
    /// Deletes become a record of the `before` values with `__deleted = "true"` (then the tombstone), and
    /// every other record carries `__deleted = "false"` (strings, as Debezium writes them); otherwise a
    /// delete is only the tombstone.
    pub rewrite_deletes: bool,
}

/// An envelope field copied into the flat record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddField {
    Op,
    Table,
    Schema,
    Db,
    Lsn,
    TsMs,
    SourceTsMs,
    TxId,
}

impl AddField {
    /// The names `add_fields` accepts, as Debezium writes them.
    pub const ALL: [(&'static str, AddField); 8] = [
        ("op", AddField::Op),
        ("table", AddField::Table),
        ("schema", AddField::Schema),
        ("db", AddField::Db),
        ("lsn", AddField::Lsn),
        ("ts_ms", AddField::TsMs),
        ("source.ts_ms", AddField::SourceTsMs),
        ("txId", AddField::TxId),
    ];

    /// The field's name in the flat record: `__op`, `__source_ts_ms`, ...
    pub fn field_name(self) -> &'static str {
        match self {
            AddField::Op => "__op",
            AddField::Table => "__table",
            AddField::Schema => "__schema",
            AddField::Db => "__db",
            AddField::Lsn => "__lsn",
            AddField::TsMs => "__ts_ms",
            AddField::SourceTsMs => "__source_ts_ms",
            AddField::TxId => "__txId",
        }
    }

    /// The field's Avro type (always with null first: a snapshot row has no transaction, for one).
    pub fn avro_type(self) -> &'static str {
        match self {
            AddField::Op | AddField::Table | AddField::Schema | AddField::Db => "string",
            AddField::Lsn | AddField::TsMs | AddField::SourceTsMs | AddField::TxId => "long",
        }
    }
}

/// The flat record's `__deleted` field.
pub const DELETED_FIELD: &str = "__deleted";

/// Appends the flat record of `row` (the event's `after`, or its `before` for a rewritten delete).
pub fn encode_flat(
    event: &ChangeEvent,
    row: &Row,
    flat: &Flat,
    processed_at_ms: i64,
    debezium: bool,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let start = out.len();
    let result = write_flat(event, row, flat, processed_at_ms, debezium, out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn write_flat(
    event: &ChangeEvent,
    row: &Row,
    flat: &Flat,
    processed_at_ms: i64,
    debezium: bool,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    write_row_fields(&event.table, row, debezium, out)?;
    let source = &event.source;
    let deleted = event.op == Op::Delete;
    write_added(flat, deleted, out, |field| {
        Ok(match field {
            AddField::Op => Added::Text(event.op.code()),
            AddField::Table => Added::Text(&event.table.name),
            AddField::Schema => Added::Text(&event.table.schema),
            AddField::Db => Added::Text(&source.database),
            AddField::Lsn => Added::Long(as_long("lsn", source.lsn.0)?),
            AddField::TsMs => Added::Long(processed_at_ms),
            AddField::SourceTsMs => Added::Long(source.commit_time_us.div_euclid(1000)),
            AddField::TxId => match source.txid {
                Some(txid) => Added::Long(as_long("txId", txid)?),
                None => Added::Null,
            },
        })
    })
}

/// The value of one added field.
pub(super) enum Added<'a> {
    Text(&'a str),
    Long(i64),
    Null,
}

/// The added fields after the row's, then `__deleted` when deletes are rewritten.
pub(super) fn write_added<'a, E>(
    flat: &Flat,
    deleted: bool,
    out: &mut Vec<u8>,
    value_of: impl Fn(AddField) -> Result<Added<'a>, E>,
) -> Result<(), E> {
    for field in &flat.add_fields {
        match value_of(*field)? {
            Added::Null => write_union_branch(0, out),
            Added::Text(text) => {
                write_union_branch(1, out);
                write_string(text, out);
            }
            Added::Long(number) => {
                write_union_branch(1, out);
                write_long(number, out);
            }
        }
    }
    if flat.rewrite_deletes {
        write_union_branch(1, out);
        write_string(if deleted { "true" } else { "false" }, out);
    }
    Ok(())
}

/// Appends the key record with the field a route adds after the key columns: the table's `schema.table`.
pub fn encode_key_with_table(
    event: &ChangeEvent,
    row: &Row,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    encode_key(&event.table, row, out)?;
    write_string(&event.table.qualified_name(), out);
    Ok(())
}
