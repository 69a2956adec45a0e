//! Fixtures follow the entries MongoDB 4.0–7.0 writes to `local.oplog.rs` (the replication
//! documentation's examples, and the `doc_diff` format of the server's
//! `src/mongo/db/update/document_diff_serialization.h` for `$v: 2` updates), field for field, plus the
//! malformed and unexpected shapes a reader must survive.

use std::sync::Arc;

use mongodb::bson::{
    doc, oid::ObjectId, spec::BinarySubtype, Binary, Bson, DateTime, Document, Timestamp,
};

use super::*;
use crate::malformed_fixtures::{assert_errors, fuzz_seed, set, Damage};

/// `oplog::convert_entry`, keeping each entry as a seed of the `mongo_oplog` fuzz target.
fn convert_entry(
    entry: &Document,
    replica_set: Option<&Arc<str>>,
) -> Result<OplogConverted, ConversionError> {
    fuzz_seed("mongo_oplog", entry);
    super::convert_entry(entry, replica_set)
}

/// `oplog::update_fields`, keeping an update entry with this `o` as a seed of the `mongo_oplog` target.
fn update_fields(o: &Document) -> Result<Option<UpdateDescription>, ConversionError> {
    fuzz_seed("mongo_oplog", &update(o.clone()));
    super::update_fields(o)
}

const OID: &str = r#"{"$oid":"64f0a1b2c3d4e5f601020304"}"#;
const SESSION: &str = "00010203-0405-0607-0809-0a0b0c0d0e0f";

fn oid() -> ObjectId {
    ObjectId::parse_str("64f0a1b2c3d4e5f601020304").unwrap()
}

fn uuid(first: u8) -> Binary {
    Binary {
        subtype: BinarySubtype::Uuid,
        bytes: (first..first + 16).collect(),
    }
}

fn ts(increment: u32) -> Timestamp {
    Timestamp {
        time: 1_700_000_000,
        increment,
    }
}

/// A logical session as a driver opens it: `id` and the user's digest.
fn session() -> Document {
    doc! {
        "id": uuid(0),
        "uid": Binary { subtype: BinarySubtype::Generic, bytes: vec![9; 32] },
    }
}

/// An insert as MongoDB 6.0 logs it.
fn insert() -> Document {
    doc! {
        "op": "i",
        "ns": "shop.orders",
        "ui": uuid(100),
        "o": {
            "_id": oid(),
            "qty": 5_i64,
            "price": Bson::Decimal128("12.50".parse().unwrap()),
            "tags": ["a", Bson::Null],
        },
        "ts": ts(3),
        "t": 1_i64,
        "v": 2_i64,
        "wall": DateTime::from_millis(1_700_000_000_123),
    }
}

/// An update of the document [`insert`] made, with `o` as given.
fn update(o: Document) -> Document {
    doc! {
        "op": "u",
        "ns": "shop.orders",
        "ui": uuid(100),
        "o": o,
        "o2": { "_id": oid() },
        "ts": ts(4),
        "t": 1_i64,
        "v": 2_i64,
        "wall": DateTime::from_millis(1_700_000_000_456),
    }
}

/// A committed transaction's `applyOps` entry (MongoDB 4.0+), with the operations given.
fn transaction(operations: Vec<Document>) -> Document {
    doc! {
        "lsid": session(),
        "txnNumber": 12_i64,
        "op": "c",
        "ns": "admin.$cmd",
        "o": { "applyOps": operations },
        "ts": ts(9),
        "t": 1_i64,
        "v": 2_i64,
        "wall": DateTime::from_millis(1_700_000_000_999),
        "prevOpTime": { "ts": Timestamp { time: 0, increment: 0 }, "t": -1_i64 },
    }
}

/// An insert inside an `applyOps`: no `ts`, `wall` or session of its own.
fn inner_insert(id: i32) -> Document {
    doc! { "op": "i", "ns": "shop.orders", "ui": uuid(100), "o": { "_id": id, "qty": 1_i32 } }
}

/// A command entry (`c`) of database `shop` with the given `o`.
fn command(o: Document) -> Document {
    doc! {
        "op": "c", "ns": "shop.$cmd", "ui": uuid(100), "o": o,
        "ts": ts(20), "t": 1_i64, "v": 2_i64, "wall": DateTime::from_millis(1),
    }
}

fn kind(entry: &Document) -> OplogKind {
    convert_entry(entry, None).unwrap().kind
}

fn changes(entry: &Document) -> Vec<DocumentChange> {
    match kind(entry) {
        OplogKind::Changes(changes) => changes,
        other => panic!("not changes: {other:?}"),
    }
}

fn single(entry: &Document) -> DocumentChange {
    let mut changes = changes(entry);
    assert_eq!(changes.len(), 1, "{changes:?}");
    changes.remove(0)
}

fn error(entry: &Document) -> ConversionError {
    convert_entry(entry, None).unwrap_err()
}

/// The description of an update with the given `o`, through the whole entry.
fn description(o: Document) -> UpdateDescription {
    let change = single(&update(o));
    assert_eq!(change.after, None, "a modifier update holds no document");
    change.update.unwrap()
}

#[test]
fn an_insert_carries_the_document_and_its_position() {
    let replica_set: Arc<str> = "rs0".into();
    let converted = convert_entry(&insert(), Some(&replica_set)).unwrap();
    assert_eq!(converted.ts, (1_700_000_000, 3));
    let OplogKind::Changes(mut changes) = converted.kind else {
        panic!()
    };
    let change = changes.remove(0);
    assert!(changes.is_empty());
    assert_eq!(change.op, Op::Create);
    assert_eq!(change.namespace(), "shop.orders");
    assert_eq!(
        (change.database.as_str(), change.collection.as_str()),
        ("shop", "orders")
    );
    assert_eq!(change.key, OID);
    assert_eq!(change.before, None);
    assert_eq!(
        change.after.as_deref(),
        Some(
            r#"{"_id":{"$oid":"64f0a1b2c3d4e5f601020304"},"qty":{"$numberLong":"5"},"price":{"$numberDecimal":"12.50"},"tags":["a",null]}"#
        )
    );
    assert_eq!(change.update, None);
    assert_eq!(
        change.source,
        DocumentSource {
            replica_set: Some(replica_set),
            cluster_time: (1_700_000_000, 3),
            wall_time_ms: Some(1_700_000_000_123),
            txn_number: None,
            lsid: None,
            resume_token: None,
            snapshot: SnapshotMarker::False,
        }
    );
}

#[test]
fn a_collection_name_may_hold_dots_the_first_one_ends_the_database() {
    let mut entry = insert();
    entry.insert("ns", "shop.orders.archive.2023");
    let change = single(&entry);
    assert_eq!(
        (change.database.as_str(), change.collection.as_str()),
        ("shop", "orders.archive.2023")
    );
}

#[test]
fn an_entry_without_wall_time_has_none() {
    let mut entry = insert();
    entry.remove("wall");
    assert_eq!(single(&entry).source.wall_time_ms, None);
}

#[test]
fn a_delete_has_the_key_and_no_document() {
    let mut entry = insert();
    entry.insert("op", "d");
    entry.insert("o", doc! { "_id": oid() });
    let change = single(&entry);
    assert_eq!(change.op, Op::Delete);
    assert_eq!(change.key, OID);
    assert_eq!(
        (change.before, change.after, change.update),
        (None, None, None)
    );
    assert_eq!(change.source.cluster_time, (1_700_000_000, 3));
}

#[test]
fn a_sharded_document_key_keeps_only_the_id() {
    let mut delete = insert();
    delete.insert("op", "d");
    delete.insert("o", doc! { "region": "eu", "_id": "abc" });
    assert_eq!(single(&delete).key, r#""abc""#);

    let mut entry = update(doc! { "$v": 2_i32, "diff": { "u": { "qty": 1_i32 } } });
    entry.insert("o2", doc! { "region": "eu", "_id": 42_i64 });
    assert_eq!(single(&entry).key, r#"{"$numberLong":"42"}"#);
}

#[test]
fn a_replacement_carries_the_new_document() {
    // MongoDB 4.x writes the replacement as it is; 5.0+ the same, `_id` first.
    let entry = update(doc! { "_id": oid(), "whole": "new", "n": 1_i32 });
    let change = single(&entry);
    assert_eq!(change.op, Op::Update);
    assert_eq!(change.key, OID);
    assert_eq!(change.update, None);
    assert_eq!(
        change.after.as_deref(),
        Some(r#"{"_id":{"$oid":"64f0a1b2c3d4e5f601020304"},"whole":"new","n":{"$numberInt":"1"}}"#)
    );
    assert_eq!(change.source.cluster_time, (1_700_000_000, 4));
    assert_eq!(change.source.wall_time_ms, Some(1_700_000_000_456));

    // A document may have a field called `diff`: with its `_id` it is still a replacement.
    let o = doc! { "_id": 1_i32, "diff": { "u": { "x": 1_i32 } } };
    assert_eq!(update_fields(&o), Ok(None));
    assert_eq!(
        single(&update(o)).after.as_deref(),
        Some(r#"{"_id":{"$numberInt":"1"},"diff":{"u":{"x":{"$numberInt":"1"}}}}"#)
    );
    // Without operators it is a replacement too, `_id` or not.
    assert_eq!(update_fields(&doc! { "whole": "new" }), Ok(None));
}

#[test]
fn a_4x_update_lists_its_set_and_unset_paths() {
    for version in [None, Some(1_i32)] {
        let mut o = doc! {
            "$set": { "qty": 6_i32, "address.city": "Oslo", "tags.1": "b" },
            "$unset": { "note": true, "address.zip": 1_i32 },
        };
        if let Some(version) = version {
            o.insert("$v", version);
        }
        let description = description(o);
        assert_eq!(
            description.updated_fields.as_deref(),
            Some(r#"{"qty":{"$numberInt":"6"},"address.city":"Oslo","tags.1":"b"}"#),
            "$v: {version:?}"
        );
        assert_eq!(description.removed_fields, ["note", "address.zip"]);
        assert!(description.truncated_arrays.is_empty());
    }
}

#[test]
fn an_update_that_only_removes_has_no_updated_fields() {
    let description = description(doc! { "$v": 1_i32, "$unset": { "note": true } });
    assert_eq!(description.updated_fields, None);
    assert_eq!(description.removed_fields, ["note"]);

    let description = description_of_diff(doc! { "d": { "note": false, "gift": false } });
    assert_eq!(description.updated_fields, None);
    assert_eq!(description.removed_fields, ["note", "gift"]);
}

fn description_of_diff(diff: Document) -> UpdateDescription {
    description(doc! { "$v": 2_i32, "diff": diff })
}

#[test]
fn a_v2_diff_becomes_dotted_paths_at_every_depth() {
    let description = description_of_diff(doc! {
        "d": { "note": false },
        "u": { "qty": 6_i32 },
        "i": { "gift": { "wrap": true } },
        "saddress": {
            "d": { "zip": false },
            "u": { "city": "Oslo" },
            "sgeo": { "i": { "lat": 59.5 } },
        },
    });
    assert_eq!(
        description.updated_fields.as_deref(),
        Some(
            r#"{"qty":{"$numberInt":"6"},"gift":{"wrap":true},"address.city":"Oslo","address.geo.lat":{"$numberDouble":"59.5"}}"#
        )
    );
    assert_eq!(description.removed_fields, ["note", "address.zip"]);
    assert!(description.truncated_arrays.is_empty());
}

#[test]
fn a_v2_array_diff_reports_elements_and_the_new_length() {
    let description = description_of_diff(doc! {
        // Shortened to 3 elements, element 1 replaced, element 2's document changed.
        "sitems": { "a": true, "l": 3_i32, "u1": "x", "s2": { "u": { "sku": "B" } } },
        // An array in an array, and an element appended.
        "smatrix": { "a": true, "s0": { "a": true, "u1": 7_i32 }, "u4": [1_i32] },
        // Emptied.
        "stags": { "a": true, "l": 0_i32 },
        // An array inside a document, whose element gets a new field.
        "sorder": { "slines": { "a": true, "s10": { "i": { "note": "gift" } } } },
    });
    assert_eq!(
        description.updated_fields.as_deref(),
        Some(concat!(
            r#"{"items.1":"x","items.2.sku":"B","matrix.0.1":{"$numberInt":"7"},"#,
            r#""matrix.4":[{"$numberInt":"1"}],"order.lines.10.note":"gift"}"#
        ))
    );
    assert!(description.removed_fields.is_empty());
    assert_eq!(
        description.truncated_arrays,
        [("items".to_owned(), 3), ("tags".to_owned(), 0)]
    );
}

#[test]
fn an_empty_diff_changes_nothing() {
    assert_eq!(description_of_diff(doc! {}), UpdateDescription::default());
}

#[test]
fn update_fields_reads_o_alone() {
    let description =
        update_fields(&doc! { "$v": 2_i64, "diff": { "sa": { "u": { "b": 1_i32 } } } })
            .unwrap()
            .unwrap();
    assert_eq!(
        description.updated_fields.as_deref(),
        Some(r#"{"a.b":{"$numberInt":"1"}}"#)
    );
    // Its errors are relative to `o`.
    let err = update_fields(&doc! { "$v": 2_i32, "diff": { "sa": 1_i32 } }).unwrap_err();
    assert_eq!(err.field, "diff.sa");
}

#[test]
fn a_transaction_unpacks_its_operations_in_order_with_the_entrys_source() {
    let entry = transaction(vec![
        inner_insert(1),
        doc! {
            "op": "u", "ns": "shop.orders", "ui": uuid(100),
            "o": { "$v": 2_i32, "diff": { "u": { "qty": 2_i32 } } },
            "o2": { "_id": 1_i32 },
        },
        // A collection created inside the transaction: nothing to publish.
        doc! { "op": "c", "ns": "shop.$cmd", "ui": uuid(101), "o": { "create": "carts", "idIndex": { "v": 2_i32, "key": { "_id": 1_i32 }, "name": "_id_" } } },
        doc! { "op": "i", "ns": "shop.carts", "ui": uuid(101), "o": { "_id": "c1" } },
        doc! { "op": "d", "ns": "shop.orders", "ui": uuid(100), "o": { "_id": 0_i32 } },
    ]);
    let converted = convert_entry(&entry, None).unwrap();
    assert_eq!(converted.ts, (1_700_000_000, 9));
    let OplogKind::Changes(changes) = converted.kind else {
        panic!()
    };
    let summary: Vec<_> = changes
        .iter()
        .map(|c| (c.op, c.namespace(), c.key.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (
                Op::Create,
                "shop.orders".to_owned(),
                r#"{"$numberInt":"1"}"#
            ),
            (
                Op::Update,
                "shop.orders".to_owned(),
                r#"{"$numberInt":"1"}"#
            ),
            (Op::Create, "shop.carts".to_owned(), r#""c1""#),
            (
                Op::Delete,
                "shop.orders".to_owned(),
                r#"{"$numberInt":"0"}"#
            ),
        ]
    );
    assert_eq!(
        changes[0].after.as_deref(),
        Some(r#"{"_id":{"$numberInt":"1"},"qty":{"$numberInt":"1"}}"#)
    );
    assert_eq!(
        changes[1]
            .update
            .as_ref()
            .unwrap()
            .updated_fields
            .as_deref(),
        Some(r#"{"qty":{"$numberInt":"2"}}"#)
    );
    for change in &changes {
        assert_eq!(change.source.cluster_time, (1_700_000_000, 9));
        assert_eq!(change.source.wall_time_ms, Some(1_700_000_000_999));
        assert_eq!(change.source.txn_number, Some(12));
        assert_eq!(change.source.lsid.as_deref(), Some(SESSION));
        assert_eq!(change.source.resume_token, None);
    }
}

#[test]
fn a_large_transaction_is_published_part_by_part() {
    // MongoDB 4.2+ splits a transaction over 16 MB into `partialTxn` entries, chained by `prevOpTime`,
    // and a last one that carries `count`; all are written at commit.
    let mut first = transaction(vec![inner_insert(1), inner_insert(2)]);
    first.insert(
        "o",
        doc! { "applyOps": [inner_insert(1), inner_insert(2)], "partialTxn": true },
    );
    let mut last = transaction(vec![]);
    last.insert("ts", ts(10));
    last.insert("o", doc! { "applyOps": [inner_insert(3)], "count": 3_i64 });
    last.insert("prevOpTime", doc! { "ts": ts(9), "t": 1_i64 });

    let keys =
        |entry: &Document| -> Vec<String> { changes(entry).into_iter().map(|c| c.key).collect() };
    assert_eq!(
        keys(&first),
        [r#"{"$numberInt":"1"}"#, r#"{"$numberInt":"2"}"#]
    );
    assert_eq!(keys(&last), [r#"{"$numberInt":"3"}"#]);
    let part = convert_entry(&last, None).unwrap();
    assert_eq!(part.ts, (1_700_000_000, 10));
    let OplogKind::Changes(changes) = part.kind else {
        panic!()
    };
    assert_eq!(changes[0].source.cluster_time, (1_700_000_000, 10));
}

#[test]
fn a_prepared_transaction_waits_for_its_commit_or_abort() {
    let mut prepare = transaction(vec![]);
    prepare.insert(
        "o",
        doc! { "applyOps": [inner_insert(1), inner_insert(2)], "prepare": true },
    );
    let converted = convert_entry(&prepare, None).unwrap();
    assert_eq!(converted.ts, (1_700_000_000, 9));
    let OplogKind::Prepared {
        lsid,
        txn_number,
        changes,
    } = converted.kind
    else {
        panic!("{:?}", converted.kind)
    };
    assert_eq!((lsid.as_str(), txn_number), (SESSION, 12));
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[1].key, r#"{"$numberInt":"2"}"#);
    assert_eq!(changes[1].source.txn_number, Some(12));

    let mut commit = transaction(vec![]);
    commit.insert("ts", ts(15));
    commit.insert(
        "o",
        doc! { "commitTransaction": 1_i32, "commitTimestamp": ts(14) },
    );
    commit.insert("prevOpTime", doc! { "ts": ts(9), "t": 1_i64 });
    let converted = convert_entry(&commit, None).unwrap();
    assert_eq!(converted.ts, (1_700_000_000, 15));
    assert_eq!(
        converted.kind,
        OplogKind::CommitPrepared {
            lsid: SESSION.to_owned(),
            txn_number: 12
        }
    );

    let mut abort = commit.clone();
    abort.insert("o", doc! { "abortTransaction": 1_i32 });
    abort.insert("txnNumber", 13_i64);
    assert_eq!(
        kind(&abort),
        OplogKind::AbortPrepared {
            lsid: SESSION.to_owned(),
            txn_number: 13
        }
    );
}

#[test]
fn internal_sessions_are_told_apart_from_their_parent() {
    // MongoDB 6.0+ runs retryable writes on sharded clusters as internal transactions: child sessions
    // that share the parent's `id`.
    assert_eq!(transaction_session(&session()), SESSION);
    let mut child = session();
    child.insert("txnNumber", 5_i64);
    child.insert("txnUUID", uuid(16));
    assert_eq!(
        transaction_session(&child),
        format!("{SESSION} txnNumber=5 txnUUID=10111213-1415-1617-1819-1a1b1c1d1e1f")
    );

    let mut prepare = transaction(vec![]);
    prepare.insert("lsid", child);
    prepare.insert("txnNumber", 0_i64);
    prepare.insert("o", doc! { "applyOps": [inner_insert(1)], "prepare": true });
    let OplogKind::Prepared { lsid, changes, .. } = kind(&prepare) else {
        panic!()
    };
    assert!(
        lsid.ends_with("txnUUID=10111213-1415-1617-1819-1a1b1c1d1e1f"),
        "{lsid}"
    );
    // The change itself names the client's session, as a change stream does.
    assert_eq!(changes[0].source.lsid.as_deref(), Some(SESSION));
}

#[test]
fn chunk_migrations_are_not_changes() {
    let mut migrated = insert();
    migrated.insert("fromMigrate", true);
    assert_eq!(kind(&migrated), OplogKind::Changes(vec![]));
    // A migration's delete on the donor, even with a key this version would refuse, is passed over.
    let mut cleanup = insert();
    cleanup.insert("op", "d");
    cleanup.insert("o", doc! { "region": "eu" });
    cleanup.insert("fromMigrate", true);
    assert_eq!(kind(&cleanup), OplogKind::Changes(vec![]));

    let mut kept = insert();
    kept.insert("fromMigrate", false);
    assert_eq!(changes(&kept).len(), 1);

    let mut inner = inner_insert(2);
    inner.insert("fromMigrate", true);
    let entry = transaction(vec![inner_insert(1), inner, inner_insert(3)]);
    let keys: Vec<_> = changes(&entry).into_iter().map(|c| c.key).collect();
    assert_eq!(keys, [r#"{"$numberInt":"1"}"#, r#"{"$numberInt":"3"}"#]);

    let mut whole = transaction(vec![inner_insert(1)]);
    whole.insert("fromMigrate", true);
    assert_eq!(kind(&whole), OplogKind::Changes(vec![]));
}

#[test]
fn ddl_entries_are_named_and_publish_nothing() {
    let ddl = |operation: &str, namespace: &str, to: Option<&str>| OplogKind::Ddl {
        operation: operation.to_owned(),
        namespace: namespace.to_owned(),
        to: to.map(str::to_owned),
    };
    let cases = [
        (
            doc! { "create": "orders", "idIndex": { "v": 2_i32, "key": { "_id": 1_i32 }, "name": "_id_" } },
            ddl("create", "shop.orders", None),
        ),
        (doc! { "drop": "orders" }, ddl("drop", "shop.orders", None)),
        (
            doc! { "renameCollection": "shop.orders", "to": "archive.orders_2023", "stayTemp": false, "dropTarget": false },
            ddl(
                "renameCollection",
                "shop.orders",
                Some("archive.orders_2023"),
            ),
        ),
        (
            doc! { "dropDatabase": 1_i32 },
            ddl("dropDatabase", "shop", None),
        ),
        (
            doc! { "createIndexes": "orders", "v": 2_i32, "key": { "qty": 1_i32 }, "name": "qty_1" },
            ddl("createIndexes", "shop.orders", None),
        ),
        (
            doc! { "collMod": "orders", "validator": {} },
            ddl("collMod", "shop.orders", None),
        ),
        // A command this version does not know is passed over the same way, not refused.
        (
            doc! { "someFutureCommand": { "nested": true } },
            ddl("someFutureCommand", "shop", None),
        ),
    ];
    for (o, expected) in cases {
        let entry = command(o);
        let converted = convert_entry(&entry, None).unwrap();
        assert_eq!(converted.ts, (1_700_000_000, 20));
        assert_eq!(converted.kind, expected, "{entry}");
    }
}

#[test]
fn noops_move_the_position_and_nothing_else() {
    let noop = doc! {
        "op": "n", "ns": "", "o": { "msg": "periodic noop" },
        "ts": ts(30), "t": 1_i64, "v": 2_i64, "wall": DateTime::from_millis(1),
    };
    let converted = convert_entry(&noop, None).unwrap();
    assert_eq!(
        converted,
        OplogConverted {
            ts: (1_700_000_000, 30),
            kind: OplogKind::Noop
        }
    );
}

#[test]
fn a_retryable_write_carries_its_session_and_number() {
    let mut entry = insert();
    entry.insert("lsid", session());
    entry.insert("txnNumber", 3_i32);
    entry.insert("stmtId", 0_i32);
    let source = single(&entry).source;
    assert_eq!(source.txn_number, Some(3));
    assert_eq!(source.lsid.as_deref(), Some(SESSION));
}

#[test]
fn malformed_entries_name_the_field_and_what_was_there() {
    let cases: Vec<(Damage, &str, &str)> = vec![
        (Damage::Remove("ts"), "ts", "missing (the entry's position)"),
        (set("ts", 5_i64), "ts", "expected a timestamp, found Int64"),
        (Damage::Remove("op"), "op", "missing"),
        (set("op", 1_i32), "op", "expected a string, found Int32"),
        (
            set("op", "x"),
            "op",
            "unknown operation `x` (expected i, u, d, c or n)",
        ),
        (Damage::Remove("ns"), "ns", "missing"),
        (
            set("ns", "orders"),
            "ns",
            "`orders` is not a `database.collection` namespace",
        ),
        (
            set("ns", "shop."),
            "ns",
            "`shop.` is not a `database.collection` namespace",
        ),
        (Damage::Remove("o"), "o", "missing"),
        (set("o", "text"), "o", "expected a document, found String"),
        (set("o", doc! { "qty": 1_i32 }), "o._id", "missing"),
        (
            set("wall", "yesterday"),
            "wall",
            "expected a date, found String",
        ),
        (
            set("txnNumber", 1.5),
            "txnNumber",
            "expected an integer, found Double",
        ),
        (
            set("lsid", 1_i32),
            "lsid",
            "expected a session document, found Int32",
        ),
        (
            set("fromMigrate", "yes"),
            "fromMigrate",
            "expected a boolean, found String",
        ),
    ];
    assert_errors(insert, error, cases);

    let update_cases: Vec<(Damage, &str, &str)> = vec![
        (Damage::Remove("o2"), "o2", "missing"),
        (set("o2", doc! { "region": "eu" }), "o2._id", "missing"),
        (set("o2", 7_i32), "o2", "expected a document, found Int32"),
    ];
    assert_errors(
        || update(doc! { "$set": { "a": 1_i32 } }),
        error,
        update_cases,
    );
}

#[test]
fn malformed_updates_name_the_path_inside_o() {
    let cases = [
        (
            doc! { "$inc": { "qty": 1_i32 } },
            "o.$inc",
            "not an update operator of the oplog ($set, $unset)",
        ),
        (
            doc! { "$set": 5_i32 },
            "o.$set",
            "expected a document of field paths, found Int32",
        ),
        (
            doc! { "$unset": ["a"] },
            "o.$unset",
            "expected a document of field paths, found Array",
        ),
        // A `diff` without `$v: 2` is neither form.
        (
            doc! { "diff": { "u": { "a": 1_i32 } } },
            "o.diff",
            "not an update operator of the oplog ($set, $unset)",
        ),
        (
            doc! { "$v": 3_i32, "diff": {} },
            "o.$v",
            "update format 3 is not one this version reads (1 or 2)",
        ),
        (
            doc! { "$v": "2", "diff": {} },
            "o.$v",
            "expected an integer, found String",
        ),
        (doc! { "$v": 2_i32 }, "o.diff", "missing"),
        (
            doc! { "$v": 2_i32, "diff": {}, "$set": { "a": 1_i32 } },
            "o.$set",
            "unexpected in a `$v: 2` update (only `diff`)",
        ),
        (
            doc! { "$v": 2_i32, "diff": { "u": 1_i32 } },
            "o.diff.u",
            "expected a document, found Int32",
        ),
        (
            doc! { "$v": 2_i32, "diff": { "d": "note" } },
            "o.diff.d",
            "expected a document, found String",
        ),
        (
            doc! { "$v": 2_i32, "diff": { "sitems": 1_i32 } },
            "o.diff.sitems",
            "expected a sub-diff document, found Int32",
        ),
        (
            doc! { "$v": 2_i32, "diff": { "x": {} } },
            "o.diff.x",
            "not a section of a document diff (d, u, i, s<field>)",
        ),
        (
            doc! { "$v": 2_i32, "diff": { "s": {} } },
            "o.diff.s",
            "not a section of a document diff (d, u, i, s<field>)",
        ),
        (
            doc! { "$v": 2_i32, "diff": { "b": { "blob": { "o": 0_i32, "d": Binary { subtype: BinarySubtype::Generic, bytes: vec![1] } } } } },
            "o.diff.b",
            "a binary diff section, which this version does not read",
        ),
        (
            doc! { "$v": 2_i32, "diff": { "sitems": { "a": false, "u0": 1_i32 } } },
            "o.diff.sitems.a",
            "expected true (an array diff's header), found false",
        ),
        (
            doc! { "$v": 2_i32, "diff": { "sitems": { "a": true, "l": -1_i32 } } },
            "o.diff.sitems.l",
            "expected an array length, found Int32",
        ),
        (
            doc! { "$v": 2_i32, "diff": { "sitems": { "a": true, "l": "3" } } },
            "o.diff.sitems.l",
            "expected an array length, found String",
        ),
        (
            doc! { "$v": 2_i32, "diff": { "sitems": { "a": true, "ux": 1_i32 } } },
            "o.diff.sitems.ux",
            "not an entry of an array diff (a, l, u<index>, s<index>)",
        ),
        (
            doc! { "$v": 2_i32, "diff": { "sitems": { "a": true, "u+1": 1_i32 } } },
            "o.diff.sitems.u+1",
            "not an entry of an array diff (a, l, u<index>, s<index>)",
        ),
        (
            doc! { "$v": 2_i32, "diff": { "sitems": { "a": true, "d0": false } } },
            "o.diff.sitems.d0",
            "not an entry of an array diff (a, l, u<index>, s<index>)",
        ),
        (
            doc! { "$v": 2_i32, "diff": { "sitems": { "a": true, "s0": "x" } } },
            "o.diff.sitems.s0",
            "expected a sub-diff document, found String",
        ),
        (
            doc! { "$v": 2_i32, "diff": { "sorder": { "slines": { "a": true, "s0": { "u": "x" } } } } },
            "o.diff.sorder.slines.s0.u",
            "expected a document, found String",
        ),
    ];
    for (o, field, problem) in cases {
        let entry = update(o);
        let err = error(&entry);
        assert_eq!(
            (err.field.as_str(), err.problem.as_str()),
            (field, problem),
            "{entry}"
        );
    }
}

#[test]
fn malformed_commands_and_transactions_name_the_field() {
    let bad_update = doc! {
        "op": "u", "ns": "shop.orders", "o": { "$v": 2_i32, "diff": { "sfoo": [] } }, "o2": { "_id": 1_i32 },
    };
    let nested = doc! { "op": "c", "ns": "admin.$cmd", "o": { "applyOps": [inner_insert(1)] } };
    let cases = [
        (
            transaction(vec![]).tap(|e| e.insert("o", doc! { "applyOps": "x" })),
            "o.applyOps",
            "expected an array, found String",
        ),
        (
            transaction(vec![])
                .tap(|e| e.insert("o", doc! { "applyOps": [inner_insert(1), 5_i32] })),
            "o.applyOps[1]",
            "expected an operation document, found Int32",
        ),
        (
            transaction(vec![
                inner_insert(1),
                inner_insert(2),
                doc! { "op": "i", "o": { "_id": 3_i32 } },
            ]),
            "o.applyOps[2].ns",
            "missing",
        ),
        (
            transaction(vec![doc! { "op": "z", "ns": "shop.orders", "o": {} }]),
            "o.applyOps[0].op",
            "unknown operation `z` (expected i, u, d, c or n)",
        ),
        (
            transaction(vec![doc! { "ns": "shop.orders", "o": { "_id": 1_i32 } }]),
            "o.applyOps[0].op",
            "missing",
        ),
        (
            transaction(vec![inner_insert(1), bad_update]),
            "o.applyOps[1].o.diff.sfoo",
            "expected a sub-diff document, found Array",
        ),
        (
            transaction(vec![
                doc! { "op": "d", "ns": "shop.orders", "o": { "region": "eu" } },
            ]),
            "o.applyOps[0].o._id",
            "missing",
        ),
        (
            transaction(vec![nested]),
            "o.applyOps[0].o.applyOps",
            "an applyOps inside an applyOps",
        ),
        (
            transaction(vec![]).tap(|e| {
                e.insert("o", doc! { "applyOps": [], "prepare": "yes" });
            }),
            "o.prepare",
            "expected a boolean, found String",
        ),
        (
            transaction(vec![]).tap(|e| {
                e.insert("o", doc! { "applyOps": [], "partialTxn": 1_i32 });
            }),
            "o.partialTxn",
            "expected a boolean, found Int32",
        ),
        (
            transaction(vec![]).tap(|e| {
                e.insert("o", doc! { "applyOps": [inner_insert(1)], "prepare": true });
                e.remove("lsid");
            }),
            "lsid",
            "missing (the session of a prepared transaction)",
        ),
        (
            transaction(vec![]).tap(|e| {
                e.insert("o", doc! { "commitTransaction": 1_i32 });
                e.remove("txnNumber");
            }),
            "txnNumber",
            "missing (the transaction number of a committed prepared transaction)",
        ),
        (
            transaction(vec![]).tap(|e| {
                e.insert("o", doc! { "abortTransaction": 1_i32 });
                e.remove("lsid");
            }),
            "lsid",
            "missing (the session of an aborted prepared transaction)",
        ),
        (
            command(doc! { "renameCollection": "shop.orders" }),
            "o.to",
            "missing",
        ),
        (
            command(doc! { "renameCollection": 1_i32, "to": "shop.b" }),
            "o.renameCollection",
            "expected a string, found Int32",
        ),
        (command(doc! {}), "o", "an empty command"),
        (
            command(doc! { "drop": "orders" }).tap(|e| e.insert("ns", "admin")),
            "ns",
            "`admin` is not a `database.$cmd` namespace",
        ),
        (
            command(doc! { "drop": "orders" }).tap(|e| e.remove("o")),
            "o",
            "missing",
        ),
        (
            command(doc! { "drop": "orders" }).tap(|e| e.insert("wall", 1_i32)),
            "wall",
            "expected a date, found Int32",
        ),
    ];
    for (entry, field, problem) in cases {
        let err = error(&entry);
        assert_eq!(
            (err.field.as_str(), err.problem.as_str()),
            (field, problem),
            "{entry}"
        );
    }
}

/// Builds a fixture with a change made to it, in place.
trait Tap: Sized {
    fn tap<R>(self, change: impl FnOnce(&mut Self) -> R) -> Self;
}

impl Tap for Document {
    fn tap<R>(mut self, change: impl FnOnce(&mut Self) -> R) -> Self {
        change(&mut self);
        self
    }
}

#[test]
fn an_entry_that_does_not_convert_becomes_a_dead_letter_with_its_raw_form() {
    let mut entry = insert();
    entry.insert("o", doc! { "qty": 5_i32 });
    let err = error(&entry);
    let letter = undecodable(&err, &entry);
    assert_eq!(letter.connector, "mongodb");
    assert_eq!(letter.namespace.as_deref(), Some("shop.orders"));
    assert_eq!(letter.reason, "oplog entry field `o._id`: missing");
    assert_eq!(
        letter.resume_token.as_deref(),
        Some(r#"{"$timestamp":{"t":1700000000,"i":3}}"#)
    );
    let raw: serde_json::Value = serde_json::from_str(&letter.raw).unwrap();
    assert_eq!(
        raw["o"]["qty"], 5,
        "relaxed Extended JSON, readable by a person"
    );

    // An entry with an empty namespace (a no-op's) names none.
    let mut noop = doc! { "op": "n", "ns": "", "o": {} };
    noop.insert("ts", ts(1));
    assert_eq!(undecodable(&err, &noop).namespace, None);
}
