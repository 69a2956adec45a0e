//! The flat form of a change (unwrap, Debezium's ExtractNewRecordState): the row itself as the value, plus
//! the envelope fields the config asks for, each named with a `__` prefix.

/// How a change is flattened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flat {
    pub add_fields: Vec<AddField>,
    /// Deletes become a record of the `before` values with `__deleted = true` (then the tombstone), and
    /// every other record carries `__deleted = false`; otherwise a delete is only the tombstone.
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
