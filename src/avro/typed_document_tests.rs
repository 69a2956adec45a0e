//! Documents in canonical Extended JSON, written as their contract's record and read back with the
//! registered envelope schema; and the documents that do not fit, with the field and reason named.

use serde_json::{json, Value as Json};

use crate::avro::{encode_document_envelope, typed_document_schemas, TableSchemas, TypedDocument};
use sluice_core::event::{DocumentChange, DocumentSource, Op, SnapshotMarker};

fn contract() -> Json {
    json!({
        "type": "record", "name": "Order", "namespace": "shop",
        "fields": [
            {"name": "_id", "type": "string"},
            {"name": "qty", "type": "int"},
            {"name": "total", "type": {"type": "bytes", "logicalType": "decimal", "precision": 8, "scale": 2}},
            {"name": "placed", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "day", "type": ["null", {"type": "int", "logicalType": "date"}], "default": null},
            {"name": "ref", "type": ["null", {"type": "string", "logicalType": "uuid"}], "default": null},
            {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID"]}},
            {"name": "items", "type": {"type": "array", "items": {
                "type": "record", "name": "Item",
                "fields": [{"name": "sku", "type": "string"}, {"name": "price", "type": "double"}],
            }}},
            {"name": "gift", "type": ["null", "Item"], "default": null},
            {"name": "attrs", "type": {"type": "map", "values": "long"}, "default": {}},
            {"name": "blob", "type": ["null", "bytes"], "default": null},
            {"name": "channel", "type": "string", "default": "web"},
            {"name": "weight", "type": "float", "default": 1.5},
        ],
    })
}

fn schemas() -> (TableSchemas, TypedDocument) {
    typed_document_schemas("app", "shop", "orders", &contract()).expect("the contract fits")
}

fn change(after: Json) -> DocumentChange {
    DocumentChange {
        database: "shop".into(),
        collection: "orders".into(),
        op: Op::Create,
        key: r#"{"$numberInt":"1"}"#.into(),
        before: None,
        after: Some(after.to_string()),
        update: None,
        source: DocumentSource {
            replica_set: None,
            cluster_time: (1_700_000_000, 1),
            wall_time_ms: None,
            txn_number: None,
            lsid: None,
            resume_token: None,
            snapshot: SnapshotMarker::False,
        },
    }
}

fn full_document() -> Json {
    json!({
        "_id": {"$oid": "64f0a1b2c3d4e5f601020304"},
        "qty": {"$numberLong": "3"},
        "total": {"$numberDecimal": "12.5"},
        "placed": {"$date": {"$numberLong": "1700000000123"}},
        "day": {"$date": {"$numberLong": "1699747200000"}},
        "ref": {"$binary": {"base64": "AQEBAQEBAQEBAQEBAQEBAQ==", "subType": "04"}},
        "status": "PAID",
        "items": [
            {"sku": "a", "price": {"$numberInt": "2"}},
            {"sku": "b", "price": {"$numberDouble": "0.25"}, "colour": "red"},
        ],
        "gift": {"sku": "g", "price": {"$numberDouble": "-0.5"}},
        "attrs": {"x": {"$numberInt": "1"}, "y": {"$numberLong": "-2"}},
        "blob": {"$binary": {"base64": "AP8=", "subType": "00"}},
        "not_in_contract": {"$regularExpression": {"pattern": "a", "options": ""}},
    })
}

/// The envelope's `after`, decoded with the value schema that would be registered.
fn written_after(after: Json) -> Json {
    let (schemas, typed) = schemas();
    let mut value = Vec::new();
    encode_document_envelope(&change(after), "app", 7, Some(&typed), &mut value)
        .expect("the document fits");
    let envelope = crate::tail::decode_datum(&schemas.value.json, &value).expect("decodes");
    assert_eq!(envelope["op"], "c");
    assert_eq!(envelope["source"]["collection"], "orders");
    envelope["after"].clone()
}

fn refusal(after: Json) -> String {
    let (_, typed) = schemas();
    let mut value = Vec::new();
    encode_document_envelope(&change(after), "app", 7, Some(&typed), &mut value)
        .expect_err("the document does not fit")
        .to_string()
}

fn with(field: &str, value: Json) -> Json {
    let mut document = full_document();
    document[field] = value;
    document
}

fn without(field: &str) -> Json {
    let mut document = full_document();
    document.as_object_mut().unwrap().remove(field);
    document
}

#[test]
fn a_fitting_document_is_written_as_the_contract_record() {
    assert_eq!(
        written_after(full_document()),
        json!({
            "_id": "64f0a1b2c3d4e5f601020304",
            "qty": 3,
            "total": "12.50",
            "placed": 1_700_000_000_123_i64,
            "day": 19_673,
            "ref": "01010101-0101-0101-0101-010101010101",
            "status": "PAID",
            "items": [{"sku": "a", "price": 2.0}, {"sku": "b", "price": 0.25}],
            "gift": {"sku": "g", "price": -0.5},
            "attrs": {"x": 1, "y": -2},
            "blob": "00ff",
            "channel": "web",
            "weight": 1.5,
        })
    );
}

#[test]
fn missing_fields_take_their_defaults() {
    let mut document = full_document();
    for field in ["day", "ref", "gift", "attrs", "blob"] {
        document.as_object_mut().unwrap().remove(field);
    }
    let after = written_after(document);
    for field in ["day", "ref", "gift", "blob"] {
        assert_eq!(after[field], Json::Null, "{field}");
    }
    assert_eq!(after["attrs"], json!({}));
}

#[test]
fn numbers_convert_only_when_exact() {
    let cases = [
        (json!({"$numberDouble": "4.0"}), Some(json!(4))),
        (json!({"$numberInt": "-7"}), Some(json!(-7))),
        (
            json!({"$numberLong": "2147483647"}),
            Some(json!(2_147_483_647)),
        ),
        (json!({"$numberLong": "2147483648"}), None),
        (json!({"$numberDouble": "4.5"}), None),
        (json!({"$numberDecimal": "4"}), None),
        (json!("4"), None),
    ];
    for (qty, expected) in cases {
        let document = with("qty", qty.clone());
        match expected {
            Some(expected) => assert_eq!(written_after(document)["qty"], expected, "{qty}"),
            None => assert!(refusal(document).starts_with("`after.qty`: "), "{qty}"),
        }
    }
    assert_eq!(
        refusal(with("qty", json!({"$numberLong": "2147483648"}))),
        "`after.qty`: an int64 (2147483648) does not fit an int"
    );
    let price = |p: Json| json!([{"sku": "a", "price": p}]);
    assert_eq!(
        written_after(with(
            "items",
            price(json!({"$numberLong": "9007199254740992"}))
        ))["items"][0]["price"],
        json!(9_007_199_254_740_992.0)
    );
    assert_eq!(
        refusal(with(
            "items",
            price(json!({"$numberLong": "9007199254740993"}))
        )),
        "`after.items[0].price`: an int64 (9007199254740993) does not fit a double exactly"
    );
    assert_eq!(
        written_after(with("items", price(json!({"$numberDouble": "Infinity"}))))["items"][0]
            ["price"],
        json!("Infinity")
    );
    assert_eq!(
        refusal(with("weight", json!({"$numberDouble": "0.1"}))),
        "`after.weight`: a double (0.1) does not fit a float exactly"
    );
}

#[test]
fn decimals_keep_their_scale_and_precision() {
    for (total, expected) in [
        (json!({"$numberDecimal": "1.2E+3"}), "1200.00"),
        (json!({"$numberDecimal": "-0.50"}), "-0.50"),
        (json!({"$numberDecimal": "12.500"}), "12.50"),
        (json!({"$numberInt": "7"}), "7.00"),
        (json!({"$numberDecimal": "0E+10"}), "0.00"),
    ] {
        assert_eq!(
            written_after(with("total", total.clone()))["total"],
            expected,
            "{total}"
        );
    }
    assert_eq!(
        refusal(with("total", json!({"$numberDecimal": "12.505"}))),
        "`after.total`: 12.505 has scale 3, more than the contract's scale 2"
    );
    assert_eq!(
        refusal(with("total", json!({"$numberDecimal": "1234567.5"}))),
        "`after.total`: 1234567.5 has 9 digits, more than the contract's precision 8"
    );
    assert_eq!(
        refusal(with("total", json!({"$numberDecimal": "NaN"}))),
        "`after.total`: decimal128 NaN is not finite; a decimal holds only numbers"
    );
    assert_eq!(
        refusal(with("total", json!({"$numberDouble": "12.5"}))),
        "`after.total`: expected a number (decimal(8, 2)), found a double (12.5)"
    );
}

#[test]
fn mismatches_name_the_field_and_what_was_found() {
    let cases = [
        (without("qty"), "`after.qty`: is missing; the contract requires it (a field with a default may be left out)"),
        (with("qty", Json::Null), "`after.qty`: is null; the contract requires a value"),
        (with("status", json!("LOST")), "`after.status`: `LOST` is not one of the contract's symbols [\"NEW\", \"PAID\"]"),
        (with("items", json!([{"sku": "a", "price": 1.0}, {"sku": {"$numberInt": "5"}, "price": 1.0}])),
            "`after.items[1].sku`: expected a string, found an int32 (5)"),
        (with("attrs", json!({"x": "one"})), "`after.attrs.x`: expected a long, found a string (\"one\")"),
        (with("gift", json!({"sku": "g"})), "`after.gift.price`: is missing; the contract requires it (a field with a default may be left out)"),
        (with("placed", json!({"$timestamp": {"t": 1, "i": 2}})), "`after.placed`: expected a date (timestamp), found a BSON timestamp"),
        (with("day", json!({"$date": {"$numberLong": "1699747200001"}})),
            "`after.day`: a date (1699747200001 ms since the epoch) has a time of day; the contract's `date` holds whole days"),
        (with("ref", json!({"$binary": {"base64": "AQI=", "subType": "04"}})), "`after.ref`: binary data (subtype 0x04) is not 16 bytes long"),
        (with("ref", json!("not-a-uuid")),
            "`after.ref`: expected a UUID (binary subtype 4, or its hyphenated text), found a string (\"not-a-uuid\")"),
        (with("items", json!({"sku": "a"})), "`after.items`: expected an array, found a document"),
    ];
    for (document, expected) in cases {
        assert_eq!(refusal(document), expected);
    }
}

#[test]
fn deletes_and_updates_without_a_document_have_a_null_after() {
    let (schemas, typed) = schemas();
    let mut delete = change(Json::Null);
    delete.op = Op::Delete;
    delete.after = None;
    delete.before = Some(r#"{"_id":{"$numberInt":"1"}}"#.into());
    let mut value = Vec::new();
    encode_document_envelope(&delete, "app", 7, Some(&typed), &mut value).unwrap();
    let envelope = crate::tail::decode_datum(&schemas.value.json, &value).unwrap();
    assert_eq!(envelope["after"], Json::Null);
    assert_eq!(
        envelope["before"], r#"{"_id":{"$numberInt":"1"}}"#,
        "before stays Extended JSON"
    );
}

#[test]
fn contracts_that_cannot_type_a_document_are_refused() {
    let refused = |contract: Json| {
        typed_document_schemas("app", "shop", "orders", &contract)
            .map(drop)
            .expect_err("refused")
    };
    let record = |field_type: Json| json!({"type": "record", "name": "Order", "fields": [{"name": "f", "type": field_type}]});
    assert_eq!(
        refused(record(
            json!({"type": "fixed", "name": "U", "size": 16, "logicalType": "uuid"})
        )),
        "`after.f`: a uuid on `fixed` cannot be written from a document (declare it on `string`)"
    );
    assert_eq!(
        refused(record(
            json!({"type": "fixed", "name": "D", "size": 12, "logicalType": "duration"})
        )),
        "`after.f`: duration cannot hold a MongoDB value"
    );
    assert_eq!(
        refused(record(
            json!(["null", {"type": "fixed", "name": "M", "size": 8, "logicalType": "decimal", "precision": 10}])
        )),
        "`after.f`: a decimal on `fixed` (declare it on `bytes`) cannot hold a MongoDB value"
    );
    let clash =
        json!({"type": "record", "name": "Envelope", "fields": [{"name": "f", "type": "string"}]});
    assert!(refused(clash).contains("Envelope"), "a name clash is named");
}

#[test]
fn defaults_are_written_as_avro_json_says_and_checked_up_front() {
    let contract = json!({
        "type": "record", "name": "Defaults",
        "fields": [
            {"name": "_id", "type": "int"},
            {"name": "created", "type": {"type": "long", "logicalType": "timestamp-millis"}, "default": 0},
            {"name": "day", "type": {"type": "int", "logicalType": "date"}, "default": 3},
            {"name": "ratio", "type": "float", "default": 0.1},
            {"name": "score", "type": "double", "default": "NaN"},
            {"name": "label", "type": ["string", "null"], "default": "none"},
        ],
    });
    let (schemas, typed) = typed_document_schemas("app", "shop", "orders", &contract).unwrap();
    let mut value = Vec::new();
    encode_document_envelope(
        &change(json!({"_id": {"$numberInt": "1"}})),
        "app",
        7,
        Some(&typed),
        &mut value,
    )
    .expect("every missing field has a default");
    let after = crate::tail::decode_datum(&schemas.value.json, &value).unwrap()["after"].clone();
    assert_eq!(
        after,
        json!({"_id": 1, "created": 0, "day": 3, "ratio": 0.1_f32 as f64, "score": "NaN", "label": "none"})
    );

    let refused = |field: Json| {
        let contract = json!({"type": "record", "name": "D", "fields": [field]});
        typed_document_schemas("app", "shop", "orders", &contract)
            .map(drop)
            .expect_err("refused")
    };
    assert_eq!(
        refused(json!({"name": "note", "type": ["null", "string"], "default": "none"})),
        "`after.note`: the default \"none\" does not fit the field's type (a union's default must fit its \
         first type): expected null, found a string (\"none\")"
    );
}

#[test]
fn nothing_is_lost_on_the_way() {
    // An unknown symbol is refused even when the enum has a default (that is for readers).
    let contract = json!({"type": "record", "name": "E", "fields": [
        {"name": "s", "type": {"type": "enum", "name": "S", "symbols": ["A", "B"], "default": "A"}},
        {"name": "n", "type": ["null", "long"], "default": null},
        {"name": "u", "type": ["null", {"type": "string", "logicalType": "uuid"}], "default": null},
        {"name": "d", "type": ["null", {"type": "map", "values": ["int", "string"]}], "default": null},
    ]});
    let (_, typed) = typed_document_schemas("app", "shop", "orders", &contract).unwrap();
    let write = |document: Json| {
        let mut value = Vec::new();
        encode_document_envelope(&change(document), "app", 7, Some(&typed), &mut value)
            .map_err(|m| m.to_string())
    };
    assert_eq!(
        write(json!({"s": "C"})).unwrap_err(),
        "`after.s`: `C` is not one of the contract's symbols [\"A\", \"B\"]"
    );
    assert_eq!(
        write(json!({"s": "A", "n": {"$numberDouble": "-0.0"}})).unwrap_err(),
        "`after.n`: expected a long, found a double (-0)"
    );
    assert!(
        write(json!({"s": "A", "n": {"$numberDouble": "-9223372036854775808"}})).is_ok(),
        "-2^63 fits a long"
    );
    assert_eq!(
        write(json!({"s": "A", "u": {"$binary": {"base64": "AQEBAQEBAQEBAQEBAQEBAQ==", "subType": "03"}}})).unwrap_err(),
        "`after.u`: expected a UUID (binary subtype 4, or its hyphenated text), found binary data (subtype 0x03)"
    );
    // A document whose field names start with `$` is a document, not a wrapper.
    assert!(write(json!({"s": "A", "d": {"$oid": "x", "x": {"$numberInt": "1"}}})).is_ok());
    assert_eq!(
        write(json!({"s": "A", "n": {"$numberDecimal": "1E-9223372036854775808"}})).unwrap_err(),
        "`after.n`: expected a long, found a decimal128 (1E-9223372036854775808)"
    );
}
