//! Fixtures follow the change events of MongoDB's documentation ("Change Events" reference), field for
//! field, plus the malformed and unexpected shapes a reader must survive.

use std::sync::Arc;

use mongodb::bson::{
    doc, oid::ObjectId, spec::BinarySubtype, Binary, Bson, DateTime, Document, Timestamp,
};

use super::*;
use crate::malformed_fixtures::{assert_errors, fuzz_seed, set, Damage};

/// `change::convert`, keeping each event as a seed of the `mongo_change` fuzz target.
fn convert(event: &Document, replica_set: Option<&Arc<str>>) -> Result<Converted, ConversionError> {
    fuzz_seed("mongo_change", event);
    super::convert(event, replica_set)
}

fn token(n: u8) -> Document {
    doc! { "_data": format!("8264F0A1B2000000{n:02X}2B022C0100296E5A1004") }
}

fn insert() -> Document {
    doc! {
        "_id": token(1),
        "operationType": "insert",
        "clusterTime": Timestamp { time: 1_700_000_000, increment: 3 },
        "wallTime": DateTime::from_millis(1_700_000_000_123),
        "ns": { "db": "shop", "coll": "orders" },
        "documentKey": { "_id": ObjectId::parse_str("64f0a1b2c3d4e5f601020304").unwrap() },
        "fullDocument": {
            "_id": ObjectId::parse_str("64f0a1b2c3d4e5f601020304").unwrap(),
            "qty": 5_i64,
            "price": Bson::Decimal128("12.50".parse().unwrap()),
            "tags": ["a", Bson::Null],
        },
    }
}

fn change(event: &Document) -> DocumentChange {
    match convert(event, None).unwrap().kind {
        EventKind::Change(change) => *change,
        other => panic!("not a change: {other:?}"),
    }
}

fn error(event: &Document) -> ConversionError {
    convert(event, None).unwrap_err()
}

#[test]
fn an_insert_carries_the_full_document_as_canonical_extended_json() {
    let replica_set: Arc<str> = "rs0".into();
    let converted = convert(&insert(), Some(&replica_set)).unwrap();
    assert_eq!(
        converted.resume_token,
        r#"{"_data":"8264F0A1B2000000012B022C0100296E5A1004"}"#
    );
    let EventKind::Change(change) = converted.kind else {
        panic!()
    };
    assert_eq!(change.op, Op::Create);
    assert_eq!(
        (change.database.as_str(), change.collection.as_str()),
        ("shop", "orders")
    );
    assert_eq!(change.namespace(), "shop.orders");
    assert_eq!(change.key, r#"{"$oid":"64f0a1b2c3d4e5f601020304"}"#);
    assert_eq!(change.before, None);
    assert_eq!(
        change.after.as_deref(),
        Some(
            r#"{"_id":{"$oid":"64f0a1b2c3d4e5f601020304"},"qty":{"$numberLong":"5"},"price":{"$numberDecimal":"12.50"},"tags":["a",null]}"#
        )
    );
    assert_eq!(change.update, None);
    let source = &change.source;
    assert_eq!(source.cluster_time, (1_700_000_000, 3));
    assert_eq!(source.wall_time_ms, Some(1_700_000_000_123));
    assert_eq!(source.replica_set.as_deref(), Some("rs0"));
    assert_eq!(source.txn_number, None);
    assert_eq!(source.lsid, None);
    assert_eq!(
        source.resume_token.as_deref(),
        Some(converted.resume_token.as_str())
    );
    assert_eq!(source.snapshot, SnapshotMarker::False);
}

#[test]
fn an_update_carries_its_description_and_the_looked_up_document() {
    let mut event = insert();
    event.insert("operationType", "update");
    event.insert(
        "updateDescription",
        doc! {
            "updatedFields": { "qty": 6_i32, "address.city": "Oslo" },
            "removedFields": ["note", "address.zip"],
            "truncatedArrays": [ { "field": "tags", "newSize": 1_i32 } ],
        },
    );
    event.insert(
        "fullDocumentBeforeChange",
        doc! { "_id": 7_i32, "qty": 5_i32 },
    );
    let change = change(&event);
    assert_eq!(change.op, Op::Update);
    assert!(change.after.is_some(), "updateLookup's document is kept");
    assert_eq!(
        change.before.as_deref(),
        Some(r#"{"_id":{"$numberInt":"7"},"qty":{"$numberInt":"5"}}"#)
    );
    let update = change.update.unwrap();
    assert_eq!(
        update.updated_fields.as_deref(),
        Some(r#"{"qty":{"$numberInt":"6"},"address.city":"Oslo"}"#)
    );
    assert_eq!(update.removed_fields, ["note", "address.zip"]);
    assert_eq!(update.truncated_arrays, [("tags".to_owned(), 1)]);
}

#[test]
fn an_update_without_lookup_or_whose_document_is_gone_has_no_after() {
    for full_document in [None, Some(Bson::Null)] {
        let mut event = insert();
        event.insert("operationType", "update");
        event.remove("fullDocument");
        if let Some(value) = full_document {
            event.insert("fullDocument", value);
        }
        event.insert(
            "updateDescription",
            doc! { "updatedFields": {}, "removedFields": ["x"] },
        );
        let change = change(&event);
        assert_eq!(change.after, None);
        let update = change.update.unwrap();
        assert_eq!(update.updated_fields, None, "an empty set is no set");
        assert_eq!(update.removed_fields, ["x"]);
        assert!(update.truncated_arrays.is_empty());
    }
}

#[test]
fn a_replace_is_an_update_with_the_new_document() {
    let mut event = insert();
    event.insert("operationType", "replace");
    event.insert("fullDocument", doc! { "_id": 1_i32, "whole": "new" });
    let change = change(&event);
    assert_eq!(change.op, Op::Update);
    assert_eq!(change.update, None);
    assert_eq!(
        change.after.as_deref(),
        Some(r#"{"_id":{"$numberInt":"1"},"whole":"new"}"#)
    );
}

#[test]
fn a_delete_has_the_key_and_the_pre_image_when_there_is_one() {
    let mut event = insert();
    event.insert("operationType", "delete");
    event.remove("fullDocument");
    let change = change(&event);
    assert_eq!(change.op, Op::Delete);
    assert_eq!(
        (change.before.as_deref(), change.after.as_deref()),
        (None, None)
    );
    assert_eq!(change.key, r#"{"$oid":"64f0a1b2c3d4e5f601020304"}"#);

    event.insert("fullDocumentBeforeChange", doc! { "_id": 1_i32 });
    assert!(self::change(&event).before.is_some());
}

#[test]
fn a_sharded_document_key_keeps_only_the_id() {
    let mut event = insert();
    event.insert("documentKey", doc! { "region": "eu", "_id": "abc" });
    assert_eq!(change(&event).key, r#""abc""#);
}

#[test]
fn a_transaction_change_carries_its_number_and_session() {
    let mut event = insert();
    event.insert("txnNumber", 12_i64);
    event.insert(
        "lsid",
        doc! {
            "id": Binary { subtype: BinarySubtype::Uuid, bytes: (0u8..16).collect() },
            "uid": Binary { subtype: BinarySubtype::Generic, bytes: vec![9; 32] },
        },
    );
    let source = change(&event).source;
    assert_eq!(source.txn_number, Some(12));
    assert_eq!(
        source.lsid.as_deref(),
        Some("00010203-0405-0607-0809-0a0b0c0d0e0f")
    );

    // A session id that is not a UUID is kept whole rather than guessed at.
    event.insert("lsid", doc! { "id": "odd" });
    event.insert("txnNumber", 3_i32);
    let source = change(&event).source;
    assert_eq!(source.txn_number, Some(3));
    assert_eq!(source.lsid.as_deref(), Some(r#"{"id":"odd"}"#));
}

#[test]
fn ddl_events_are_named_and_publish_nothing() {
    let drop = doc! {
        "_id": token(2), "operationType": "drop",
        "clusterTime": Timestamp { time: 1, increment: 1 },
        "ns": { "db": "shop", "coll": "orders" },
    };
    assert_eq!(
        convert(&drop, None).unwrap().kind,
        EventKind::Ddl {
            operation: "drop".into(),
            namespace: "shop.orders".into(),
            to: None
        }
    );
    let rename = doc! {
        "_id": token(3), "operationType": "rename",
        "ns": { "db": "shop", "coll": "orders" },
        "to": { "db": "shop", "coll": "orders_2023" },
    };
    assert_eq!(
        convert(&rename, None).unwrap().kind,
        EventKind::Ddl {
            operation: "rename".into(),
            namespace: "shop.orders".into(),
            to: Some("shop.orders_2023".into())
        }
    );
    let drop_database =
        doc! { "_id": token(4), "operationType": "dropDatabase", "ns": { "db": "shop" } };
    assert_eq!(
        convert(&drop_database, None).unwrap().kind,
        EventKind::Ddl {
            operation: "dropDatabase".into(),
            namespace: "shop".into(),
            to: None
        }
    );
    // An expanded event this version does not know is passed over the same way, not refused.
    let create_indexes = doc! {
        "_id": token(5), "operationType": "createIndexes",
        "ns": { "db": "shop", "coll": "orders" },
        "operationDescription": { "indexes": [] },
    };
    assert!(matches!(
        convert(&create_indexes, None).unwrap().kind,
        EventKind::Ddl { operation, .. } if operation == "createIndexes"
    ));
}

#[test]
fn an_invalidate_keeps_its_token_for_start_after() {
    let event = doc! { "_id": token(6), "operationType": "invalidate", "clusterTime": Timestamp { time: 1, increment: 1 } };
    let converted = convert(&event, None).unwrap();
    assert_eq!(converted.kind, EventKind::Invalidate);
    assert!(converted.resume_token.contains("8264F0A1B200000006"));
}

/// A change made to a well-formed event.
#[test]
fn malformed_events_name_the_field_and_what_was_there() {
    let cases: Vec<(Damage, &str, &str)> = vec![
        (Damage::Remove("_id"), "_id", "missing (the resume token)"),
        (
            set("_id", "x"),
            "_id",
            "expected a resume token document, found String",
        ),
        (Damage::Remove("operationType"), "operationType", "missing"),
        (
            set("operationType", 1_i32),
            "operationType",
            "expected a string, found Int32",
        ),
        (Damage::Remove("ns"), "ns", "missing"),
        (set("ns", doc! { "db": "shop" }), "ns.coll", "missing"),
        (
            set("ns", doc! { "db": 1_i32, "coll": "c" }),
            "ns.db",
            "expected a string, found Int32",
        ),
        (Damage::Remove("documentKey"), "documentKey", "missing"),
        (
            set("documentKey", doc! { "region": "eu" }),
            "documentKey._id",
            "missing",
        ),
        (
            Damage::Remove("fullDocument"),
            "fullDocument",
            "missing from a `insert` event",
        ),
        (
            set("fullDocument", "text"),
            "fullDocument",
            "expected a document, found String",
        ),
        (
            set("fullDocumentBeforeChange", 5_i32),
            "fullDocumentBeforeChange",
            "expected a document, found Int32",
        ),
        (Damage::Remove("clusterTime"), "clusterTime", "missing"),
        (
            set("clusterTime", 5_i64),
            "clusterTime",
            "expected a timestamp, found Int64",
        ),
        (
            set("wallTime", "yesterday"),
            "wallTime",
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
    ];
    assert_errors(insert, error, cases);
}

#[test]
fn malformed_update_descriptions_name_the_field() {
    let cases = [
        (doc! {}, "updateDescription", "missing"),
        (
            doc! { "updateDescription": { "updatedFields": [1] } },
            "updateDescription.updatedFields",
            "expected a document, found Array",
        ),
        (
            doc! { "updateDescription": { "removedFields": "x" } },
            "updateDescription.removedFields",
            "expected an array, found String",
        ),
        (
            doc! { "updateDescription": { "removedFields": [1_i32] } },
            "updateDescription.removedFields[]",
            "expected a field name, found Int32",
        ),
        (
            doc! { "updateDescription": { "truncatedArrays": [ "tags" ] } },
            "updateDescription.truncatedArrays[]",
            "expected a document, found String",
        ),
        (
            doc! { "updateDescription": { "truncatedArrays": [ { "newSize": 1_i32 } ] } },
            "updateDescription.truncatedArrays[].field",
            "missing",
        ),
        (
            doc! { "updateDescription": { "truncatedArrays": [ { "field": "t", "newSize": -1_i32 } ] } },
            "updateDescription.truncatedArrays[].newSize",
            "expected a length, found Int32",
        ),
        (
            doc! { "updateDescription": { "truncatedArrays": [ { "field": "t" } ] } },
            "updateDescription.truncatedArrays[].newSize",
            "missing",
        ),
    ];
    for (extra, field, problem) in cases {
        let mut event = insert();
        event.insert("operationType", "update");
        event.remove("updateDescription");
        event.extend(extra);
        let err = error(&event);
        assert_eq!(
            (err.field.as_str(), err.problem.as_str()),
            (field, problem),
            "{event}"
        );
    }
}

#[test]
fn an_event_that_does_not_convert_becomes_a_dead_letter_with_its_raw_form() {
    let mut event = insert();
    event.remove("documentKey");
    let err = error(&event);
    let letter = err.undecodable(&event);
    assert_eq!(letter.connector, "mongodb");
    assert_eq!(letter.namespace.as_deref(), Some("shop.orders"));
    assert_eq!(letter.reason, "change event field `documentKey`: missing");
    assert!(letter.resume_token.unwrap().contains("_data"));
    let raw: serde_json::Value = serde_json::from_str(&letter.raw).unwrap();
    assert_eq!(
        raw["fullDocument"]["qty"], 5,
        "relaxed Extended JSON, readable by a person"
    );
}

#[test]
fn every_bson_type_survives_as_canonical_extended_json() {
    let document = doc! {
        "double": 1.5, "nan": f64::NAN, "string": "é\"\n", "doc": { "a": 1_i32 }, "array": [1_i32, "x"],
        "binary": Binary { subtype: BinarySubtype::Generic, bytes: vec![0, 255] },
        "oid": ObjectId::parse_str("64f0a1b2c3d4e5f601020304").unwrap(),
        "bool": true, "date": DateTime::from_millis(-1), "null": Bson::Null,
        "regex": Bson::RegularExpression(mongodb::bson::Regex { pattern: "^a".into(), options: "i".into() }),
        "int32": i32::MIN, "ts": Timestamp { time: 7, increment: 8 }, "int64": i64::MAX,
        "decimal": Bson::Decimal128("-0.000".parse().unwrap()),
        "min": Bson::MinKey, "max": Bson::MaxKey,
    };
    let text = canonical_json(&Bson::Document(document.clone()));
    let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
    let back = Bson::try_from(parsed).unwrap();
    // The round trip is exact, type for type (compared through the text: NaN is not equal to itself).
    assert_eq!(canonical_json(&back), text);
    assert!(
        text.contains(r#""int64":{"$numberLong":"9223372036854775807"}"#),
        "{text}"
    );
    assert!(
        text.contains(r#""decimal":{"$numberDecimal":"-0.000"}"#),
        "{text}"
    );
}
