//! Oplog entries → the change-event model. Pure: one document of `local.oplog.rs` in, an
//! [`OplogConverted`] or a [`ConversionError`] out, so that every entry shape MongoDB 4.0–7.0 writes (and
//! every malformed one) is tested without a server.
//!
//! The entry format is the replication log's: `ts`, `op` (`i`, `u`, `d`, `c`, `n`), `ns` (`db.coll`, or
//! `db.$cmd` for commands), `o`, `o2`, `wall`, `lsid`, `txnNumber`, `fromMigrate`. Transactions are
//! `applyOps` commands whose inner operations have no `ts` of their own. Updates are logged in MongoDB
//! 4.x's `$set`/`$unset` form or in 5.0+'s `$v: 2` diff form (`doc_diff` in the server's source).
//!
//! Error fields are paths from the entry's root: nested documents joined by `.` (`o.diff.sitems.u`), the
//! operations of an `applyOps` by index (`o.applyOps[2].ns`).

use std::sync::Arc;

use mongodb::bson::{spec::BinarySubtype, Bson, Document};

use super::change::{
    canonical_json, document, optional_date_ms, optional_integer, session_id, string, within,
    wrong_type, ConversionError,
};
use sluice_core::event::{
    DocumentChange, DocumentSource, Op, SnapshotMarker, UndecodableChange, UpdateDescription,
};

/// What one oplog entry means for the pipeline. `ts` is the entry's `ts` (seconds, increment): the
/// position a tailing reader stores, whatever the kind, since the log has got past it once it is handled.
#[derive(Debug, PartialEq)]
pub struct OplogConverted {
    pub ts: (u32, u32),
    pub kind: OplogKind,
}

/// The kinds of oplog entry a reader handles differently.
#[derive(Debug, PartialEq)]
pub enum OplogKind {
    /// `i` / `u` / `d`, or the operations of an `applyOps` entry (a transaction, or a part of a large
    /// one), in log order. Operations marked `fromMigrate` (chunk migrations between shards) are left
    /// out: they move documents, they do not change them. May be empty.
    Changes(Vec<DocumentChange>),
    /// An `applyOps` entry with `prepare: true` (a prepared transaction, sharded clusters): publish the
    /// changes only when the matching `commitTransaction` entry comes, drop them on `abortTransaction`.
    Prepared {
        /// The session, as [`transaction_session`] writes it.
        lsid: String,
        txn_number: i64,
        changes: Vec<DocumentChange>,
    },
    /// The `commitTransaction` command entry of a prepared transaction.
    CommitPrepared { lsid: String, txn_number: i64 },
    /// The `abortTransaction` command entry of a prepared transaction.
    AbortPrepared { lsid: String, txn_number: i64 },
    /// create, drop, renameCollection, dropDatabase, createIndexes, ...: the collection's documents are
    /// not changed one by one, so nothing is published; the reader logs it.
    Ddl {
        /// The command's name (the first field of `o`).
        operation: String,
        /// `db.coll`, or `db` for a command that names no collection.
        namespace: String,
        /// The new namespace of a rename.
        to: Option<String>,
    },
    /// `n` entries (the primary's periodic no-op writes, migration markers): the position moves,
    /// nothing to publish.
    Noop,
}

/// Converts one oplog entry. `replica_set` is the set (or shard) the reader tails, for `source.rs`.
pub fn convert_entry(
    entry: &Document,
    replica_set: Option<&Arc<str>>,
) -> Result<OplogConverted, ConversionError> {
    let ts = match entry.get("ts") {
        Some(Bson::Timestamp(ts)) => (ts.time, ts.increment),
        Some(other) => return Err(wrong_type("ts", "a timestamp", other)),
        None => return Err(ConversionError::new("ts", "missing (the entry's position)")),
    };
    let op = string(entry, "op")?;
    let kind = match op {
        // A no-op's `ns` is empty and its `o` a message: nothing in it is read.
        "n" => OplogKind::Noop,
        "i" | "u" | "d" => {
            if from_migrate(entry)? {
                OplogKind::Changes(Vec::new())
            } else {
                let context = Context::of(entry, ts, replica_set)?;
                OplogKind::Changes(vec![document_change(entry, op, &context)?])
            }
        }
        "c" => command(entry, &Context::of(entry, ts, replica_set)?)?,
        other => return Err(unknown_op(other)),
    };
    Ok(OplogConverted { ts, kind })
}

/// The changed fields of an update's `o`: MongoDB 4.x's `$set`/`$unset` modifier form (`$v` absent or 1)
/// and MongoDB 5.0+'s `$v: 2` `diff` form, as a change stream's `updateDescription` would give them.
/// None when `o` is a replacement document (it has an `_id`, or neither `$` operators nor a `diff`).
/// Error fields are relative to `o`.
pub fn update_fields(o: &Document) -> Result<Option<UpdateDescription>, ConversionError> {
    // The server's own test (`extractUpdateType`) is the `_id`: a modifier entry never has one, while a
    // replacement always does and may hold any field name, `diff` included.
    let modifiers = o.keys().any(|name| name.starts_with('$')) || o.contains_key("diff");
    if o.contains_key("_id") || !modifiers {
        return Ok(None);
    }
    let mut fields = Fields::default();
    let version = match o.get("$v") {
        None => 1,
        Some(Bson::Int32(v)) => i64::from(*v),
        Some(Bson::Int64(v)) => *v,
        Some(other) => return Err(wrong_type("$v", "an integer", other)),
    };
    match version {
        1 => modifier_fields(o, &mut fields)?,
        2 => {
            if let Some(name) = o.keys().find(|name| *name != "$v" && *name != "diff") {
                return Err(ConversionError::new(
                    name,
                    "unexpected in a `$v: 2` update (only `diff`)",
                ));
            }
            document_diff(document(o, "diff")?, "", &mut fields).map_err(|e| within("diff", e))?;
        }
        other => {
            return Err(ConversionError::new(
                "$v",
                format!("update format {other} is not one this version reads (1 or 2)"),
            ))
        }
    }
    Ok(Some(fields.into_description()))
}

/// The key a prepared transaction is known by, with its `txnNumber`: the session id text (as in the
/// changes' `source.lsid`), followed by the fields that set an internal session (MongoDB 6.0+
/// `txnUUID`, `txnNumber`) apart from its parent, which shares the parent's `id`.
pub fn transaction_session(lsid: &Document) -> String {
    let mut key = session_id(lsid);
    for (name, value) in lsid {
        if name != "id" && name != "uid" {
            key.push_str(&format!(" {name}={}", uuid_or_json(value)));
        }
    }
    key
}

/// The dead letter's form of an entry that did not convert: its namespace, its raw form, and its `ts`
/// (canonical Extended JSON) as the position.
pub fn undecodable(err: &ConversionError, entry: &Document) -> UndecodableChange {
    UndecodableChange {
        connector: "mongodb",
        namespace: entry
            .get_str("ns")
            .ok()
            .filter(|ns| !ns.is_empty())
            .map(str::to_owned),
        raw: Bson::Document(entry.clone())
            .into_relaxed_extjson()
            .to_string(),
        // The shared error names a change event's field; here the field is the oplog entry's.
        reason: format!("oplog entry field `{}`: {}", err.field, err.problem),
        resume_token: entry.get("ts").map(canonical_json),
    }
}

/// What every change of one entry shares: the outer entry's position, time, session and transaction
/// (the operations inside an `applyOps` have none of their own).
struct Context<'a> {
    replica_set: Option<&'a Arc<str>>,
    ts: (u32, u32),
    wall_time_ms: Option<i64>,
    txn_number: Option<i64>,
    lsid: Option<&'a Document>,
}

impl<'a> Context<'a> {
    fn of(
        entry: &'a Document,
        ts: (u32, u32),
        replica_set: Option<&'a Arc<str>>,
    ) -> Result<Context<'a>, ConversionError> {
        let wall_time_ms = optional_date_ms(entry, "wall")?;
        let txn_number = optional_integer(entry, "txnNumber")?;
        let lsid = match entry.get("lsid") {
            None | Some(Bson::Null) => None,
            Some(Bson::Document(lsid)) => Some(lsid),
            Some(other) => return Err(wrong_type("lsid", "a session document", other)),
        };
        Ok(Context {
            replica_set,
            ts,
            wall_time_ms,
            txn_number,
            lsid,
        })
    }

    fn source(&self) -> DocumentSource {
        DocumentSource {
            replica_set: self.replica_set.cloned(),
            cluster_time: self.ts,
            wall_time_ms: self.wall_time_ms,
            txn_number: self.txn_number,
            lsid: self.lsid.map(session_id),
            resume_token: None,
            snapshot: SnapshotMarker::False,
        }
    }

    /// The session and number of the prepared transaction the entry belongs to: both are required.
    fn transaction(&self, what: &str) -> Result<(String, i64), ConversionError> {
        let Some(lsid) = self.lsid else {
            return Err(ConversionError::new(
                "lsid",
                format!("missing (the session of {what})"),
            ));
        };
        let Some(txn_number) = self.txn_number else {
            return Err(ConversionError::new(
                "txnNumber",
                format!("missing (the transaction number of {what})"),
            ));
        };
        Ok((transaction_session(lsid), txn_number))
    }
}

/// An `i`, `u` or `d` operation, top-level or inside an `applyOps`.
fn document_change(
    operation: &Document,
    op: &str,
    context: &Context,
) -> Result<DocumentChange, ConversionError> {
    let ns = string(operation, "ns")?;
    let Some((database, collection)) = ns
        .split_once('.')
        .filter(|(db, coll)| !db.is_empty() && !coll.is_empty())
    else {
        return Err(ConversionError::new(
            "ns",
            format!("`{ns}` is not a `database.collection` namespace"),
        ));
    };
    let o = document(operation, "o")?;
    let (op, key, after, update) = match op {
        "i" => (Op::Create, id(o, "o")?, Some(o), None),
        "d" => (Op::Delete, id(o, "o")?, None, None),
        _ => {
            // `o2` is the document key: `_id`, and the shard key's fields on a sharded collection.
            let key = id(document(operation, "o2")?, "o2")?;
            match update_fields(o).map_err(|e| within("o", e))? {
                None => (Op::Update, key, Some(o), None),
                // The entry does not hold the document after a modifier update: a reader may look it up.
                Some(description) => (Op::Update, key, None, Some(description)),
            }
        }
    };
    Ok(DocumentChange {
        database: database.to_owned(),
        collection: collection.to_owned(),
        op,
        key,
        before: None,
        after: after.map(|doc| canonical_json(&Bson::Document(doc.clone()))),
        update,
        source: context.source(),
    })
}

/// A `c` entry: a transaction's `applyOps`, the end of a prepared transaction, or DDL.
fn command(entry: &Document, context: &Context) -> Result<OplogKind, ConversionError> {
    let ns = string(entry, "ns")?;
    let Some(database) = ns
        .split_once('.')
        .map(|(db, _)| db)
        .filter(|db| !db.is_empty())
    else {
        return Err(ConversionError::new(
            "ns",
            format!("`{ns}` is not a `database.$cmd` namespace"),
        ));
    };
    let o = document(entry, "o")?;
    let Some((name, value)) = o.iter().next() else {
        return Err(ConversionError::new("o", "an empty command"));
    };
    let ddl = |namespace: String, to: Option<String>| OplogKind::Ddl {
        operation: name.clone(),
        namespace,
        to,
    };
    Ok(match name.as_str() {
        "applyOps" => apply_ops(entry, o, context)?,
        "commitTransaction" => {
            let (lsid, txn_number) = context.transaction("a committed prepared transaction")?;
            OplogKind::CommitPrepared { lsid, txn_number }
        }
        "abortTransaction" => {
            let (lsid, txn_number) = context.transaction("an aborted prepared transaction")?;
            OplogKind::AbortPrepared { lsid, txn_number }
        }
        // Both namespaces are whole: `{renameCollection: "db.from", to: "db.to", ...}`.
        "renameCollection" => {
            let from = string(o, "renameCollection").map_err(|e| within("o", e))?;
            let to = string(o, "to").map_err(|e| within("o", e))?;
            ddl(from.to_owned(), Some(to.to_owned()))
        }
        // create, drop, createIndexes, dropIndexes, collMod, ...: the first field names the collection.
        _ => match value {
            Bson::String(collection) if name != "dropDatabase" => {
                ddl(format!("{database}.{collection}"), None)
            }
            _ => ddl(database.to_owned(), None),
        },
    })
}

/// An `applyOps` entry: a transaction written at commit (whole, or in `partialTxn` parts), or prepared.
fn apply_ops(
    entry: &Document,
    o: &Document,
    context: &Context,
) -> Result<OplogKind, ConversionError> {
    let operations = match o.get("applyOps") {
        Some(Bson::Array(operations)) => operations,
        Some(other) => return Err(wrong_type("o.applyOps", "an array", other)),
        None => return Err(ConversionError::new("o.applyOps", "missing")),
    };
    let prepare = flag(o, "prepare").map_err(|e| within("o", e))?;
    // A `partialTxn` part of a large unprepared transaction (4.2+) is written at commit, like a whole
    // one, so it is published as it comes. The parts before the `prepare` entry of a large *prepared*
    // transaction carry the same flag and nothing else that tells them apart: a reader that must not
    // publish an aborted prepared transaction holds `partialTxn` parts until their chain ends.
    flag(o, "partialTxn").map_err(|e| within("o", e))?;
    if from_migrate(entry)? {
        return Ok(OplogKind::Changes(Vec::new()));
    }
    let mut changes = Vec::with_capacity(operations.len());
    for (index, operation) in operations.iter().enumerate() {
        let at = format!("o.applyOps[{index}]");
        let Bson::Document(operation) = operation else {
            return Err(wrong_type(&at, "an operation document", operation));
        };
        if let Some(change) = inner_change(operation, context).map_err(|e| within(&at, e))? {
            changes.push(change);
        }
    }
    if prepare {
        let (lsid, txn_number) = context.transaction("a prepared transaction")?;
        Ok(OplogKind::Prepared {
            lsid,
            txn_number,
            changes,
        })
    } else {
        Ok(OplogKind::Changes(changes))
    }
}

/// One operation of an `applyOps`: a change, or None for what publishes nothing (a migration's write, a
/// command such as the creation of a collection inside the transaction, a no-op).
fn inner_change(
    operation: &Document,
    context: &Context,
) -> Result<Option<DocumentChange>, ConversionError> {
    let op = string(operation, "op")?;
    match op {
        "i" | "u" | "d" => {
            if from_migrate(operation)? {
                Ok(None)
            } else {
                document_change(operation, op, context).map(Some)
            }
        }
        "c" => {
            if document(operation, "o")?.contains_key("applyOps") {
                Err(ConversionError::new(
                    "o.applyOps",
                    "an applyOps inside an applyOps",
                ))
            } else {
                Ok(None)
            }
        }
        "n" => Ok(None),
        other => Err(unknown_op(other)),
    }
}

fn unknown_op(op: &str) -> ConversionError {
    ConversionError::new(
        "op",
        format!("unknown operation `{op}` (expected i, u, d, c or n)"),
    )
}

/// The `_id` of a document key (`o` of an insert or delete, `o2` of an update) as canonical Extended
/// JSON: the message key. Shard key fields beside it are left out, as change streams' `documentKey._id`.
fn id(key: &Document, parent: &str) -> Result<String, ConversionError> {
    match key.get("_id") {
        Some(id) => Ok(canonical_json(id)),
        None => Err(ConversionError::new(&format!("{parent}._id"), "missing")),
    }
}

fn from_migrate(doc: &Document) -> Result<bool, ConversionError> {
    flag(doc, "fromMigrate")
}

/// A boolean field that may be absent or null (false).
fn flag(doc: &Document, field: &str) -> Result<bool, ConversionError> {
    match doc.get(field) {
        None | Some(Bson::Null) => Ok(false),
        Some(Bson::Boolean(value)) => Ok(*value),
        Some(other) => Err(wrong_type(field, "a boolean", other)),
    }
}

/// A session field as `transaction_session` writes it: UUIDs and numbers plainly, the rest as JSON.
fn uuid_or_json(value: &Bson) -> String {
    match value {
        Bson::Binary(binary)
            if binary.subtype == BinarySubtype::Uuid && binary.bytes.len() == 16 =>
        {
            session_id(&mongodb::bson::doc! { "id": value.clone() })
        }
        Bson::Int64(n) => n.to_string(),
        Bson::Int32(n) => n.to_string(),
        other => canonical_json(other),
    }
}

/// An update's changes as they are collected, before they become an [`UpdateDescription`].
#[derive(Default)]
struct Fields {
    /// New values by dotted path.
    updated: Document,
    removed: Vec<String>,
    truncated: Vec<(String, u32)>,
}

impl Fields {
    fn into_description(self) -> UpdateDescription {
        UpdateDescription {
            updated_fields: (!self.updated.is_empty())
                .then(|| canonical_json(&Bson::Document(self.updated))),
            removed_fields: self.removed,
            truncated_arrays: self.truncated,
        }
    }
}

/// MongoDB 4.x (`$v` absent or 1): `{$set: {path: value}, $unset: {path: true}}`, paths already dotted.
fn modifier_fields(o: &Document, fields: &mut Fields) -> Result<(), ConversionError> {
    for (name, value) in o {
        match name.as_str() {
            "$v" => {}
            "$set" | "$unset" => {
                let Bson::Document(paths) = value else {
                    return Err(wrong_type(name, "a document of field paths", value));
                };
                for (path, value) in paths {
                    if name == "$set" {
                        fields.updated.insert(path.clone(), value.clone());
                    } else {
                        fields.removed.push(path.clone());
                    }
                }
            }
            _ => {
                return Err(ConversionError::new(
                    name,
                    "not an update operator of the oplog ($set, $unset)",
                ))
            }
        }
    }
    Ok(())
}

/// `path` with `field` under it; the document's own fields when `path` is empty.
fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// A `$v: 2` document diff at `path`: `d` (deleted fields: `{name: false}`), `u` (updated) and `i`
/// (inserted: `{name: value}`), and `s<name>` (the sub-diff of field `name`).
fn document_diff(diff: &Document, path: &str, fields: &mut Fields) -> Result<(), ConversionError> {
    for (name, value) in diff {
        match name.as_str() {
            "u" | "i" | "d" => {
                let Bson::Document(section) = value else {
                    return Err(wrong_type(name, "a document", value));
                };
                for (field, value) in section {
                    if name == "d" {
                        fields.removed.push(join(path, field));
                    } else {
                        fields.updated.insert(join(path, field), value.clone());
                    }
                }
            }
            // MongoDB 8.0 logs changes inside a BinData this way: there is no new value to report.
            "b" => {
                return Err(ConversionError::new(
                    name,
                    "a binary diff section, which this version does not read",
                ))
            }
            _ if name.len() > 1 && name.starts_with('s') => {
                sub_diff(name, value, &join(path, &name[1..]), fields)?;
            }
            _ => {
                return Err(ConversionError::new(
                    name,
                    "not a section of a document diff (d, u, i, s<field>)",
                ))
            }
        }
    }
    Ok(())
}

/// The sub-diff `name` of the field or element at `path`: an array diff when its first field is `a`, a
/// document diff otherwise.
fn sub_diff(
    name: &str,
    value: &Bson,
    path: &str,
    fields: &mut Fields,
) -> Result<(), ConversionError> {
    let Bson::Document(diff) = value else {
        return Err(wrong_type(name, "a sub-diff document", value));
    };
    match diff.iter().next() {
        Some((header, _)) if header == "a" => array_diff(diff, path, fields),
        _ => document_diff(diff, path, fields),
    }
    .map_err(|e| within(name, e))
}

/// A `$v: 2` array diff at `path`: `a: true` first, `l` (the new length when the array was shortened),
/// `u<index>` (the element's new value) and `s<index>` (the element's sub-diff).
fn array_diff(diff: &Document, path: &str, fields: &mut Fields) -> Result<(), ConversionError> {
    for (name, value) in diff {
        match name.as_str() {
            "a" => {
                if value != &Bson::Boolean(true) {
                    return Err(ConversionError::new(
                        "a",
                        format!("expected true (an array diff's header), found {value}"),
                    ));
                }
            }
            "l" => {
                let length = match value {
                    Bson::Int32(n) => u32::try_from(*n).ok(),
                    Bson::Int64(n) => u32::try_from(*n).ok(),
                    _ => None,
                };
                let Some(length) = length else {
                    return Err(wrong_type("l", "an array length", value));
                };
                fields.truncated.push((path.to_owned(), length));
            }
            _ => {
                let (kind, index) = name.split_at(name.chars().next().map_or(0, char::len_utf8));
                let index = Some(index)
                    .filter(|index| !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|index| index.parse::<u64>().ok());
                match (kind, index) {
                    ("u", Some(index)) => {
                        fields
                            .updated
                            .insert(join(path, &index.to_string()), value.clone());
                    }
                    ("s", Some(index)) => {
                        sub_diff(name, value, &join(path, &index.to_string()), fields)?;
                    }
                    _ => {
                        return Err(ConversionError::new(
                            name,
                            "not an entry of an array diff (a, l, u<index>, s<index>)",
                        ))
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "oplog_tests.rs"]
mod tests;
