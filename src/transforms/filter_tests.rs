use std::sync::Arc;

use sluice_core::event::{
    ChangeEvent, Column, ColumnType, DecodingMessage, DocumentChange, DocumentSource, Lsn, Numeric,
    Op, RecordField, SnapshotMarker, SourceInfo, Table, Value as V,
};

use super::*;

fn column(name: &str, column_type: ColumnType) -> Column {
    Column {
        name: name.into(),
        key: name == "id",
        source_type: String::new(),
        not_null: false,
        precision: None,
        column_type,
    }
}

fn table() -> Arc<Table> {
    let text = || ColumnType::String;
    Arc::new(Table {
        id: 16384,
        schema: "public".into(),
        name: "orders".into(),
        columns: vec![
            column("id", ColumnType::Int64),
            column("status", text()),
            column(
                "amount",
                ColumnType::Decimal {
                    precision: 10,
                    scale: 2,
                },
            ),
            column("created_at", ColumnType::TimestampTz),
            column("doc", ColumnType::Json),
            column("email", text()),
        ],
    })
}

/// `amount` in cents.
fn order(status: &str, cents: i64, created_at_us: i64, doc: &str) -> Vec<V> {
    vec![
        V::Int64(1),
        V::String(status.into()),
        V::Numeric(Numeric::Finite {
            unscaled: cents.to_string(),
            scale: 2,
        }),
        V::TimestampTz(created_at_us),
        V::Json(doc.into()),
        V::Null,
    ]
}

fn open() -> Vec<V> {
    // 2024-03-01T00:00:00Z
    order(
        "open",
        15025,
        1_709_251_200_000_000,
        r#"{"kind":"x","n":3}"#,
    )
}

fn closed() -> Vec<V> {
    // 2023-06-01T00:00:00Z
    order(
        "closed",
        9999,
        1_685_577_600_000_000,
        r#"{"kind":"y","n":[1,2]}"#,
    )
}

fn change_in(table: Arc<Table>, op: Op, before: Option<Vec<V>>, after: Option<Vec<V>>) -> Shaped {
    Shaped {
        event: SourceEvent::Change(ChangeEvent {
            table,
            op,
            before,
            after,
            source: SourceInfo {
                database: "shop".into(),
                txid: Some(7),
                lsn: Lsn(42),
                commit_lsn: Lsn(43),
                commit_time_us: 1_700_000_000_123_456,
                snapshot: SnapshotMarker::False,
                order: None,
            },
        }),
        topic: "app.public.orders".into(),
        dress: Default::default(),
    }
}

fn change(op: Op, before: Option<Vec<V>>, after: Option<Vec<V>>) -> Shaped {
    change_in(table(), op, before, after)
}

fn document(after: &str) -> Shaped {
    Shaped {
        event: SourceEvent::Document(DocumentChange {
            database: "shop".into(),
            collection: "orders".into(),
            op: Op::Create,
            key: r#"{"$oid":"65f0c0ffee0000000000cafe"}"#.into(),
            before: None,
            after: Some(after.into()),
            update: None,
            source: DocumentSource {
                replica_set: Some("rs0".into()),
                cluster_time: (1_700_000_000, 1),
                wall_time_ms: None,
                txn_number: None,
                lsid: None,
                resume_token: None,
                snapshot: SnapshotMarker::True,
            },
        }),
        topic: "app.shop.orders".into(),
        dress: Default::default(),
    }
}

/// Whether the condition keeps the event; a rejection fails the test with its reason.
fn keeps(condition: &str, shaped: Shaped) -> bool {
    let mut filter = Filter::new(condition).unwrap_or_else(|e| panic!("{condition}: {e:?}"));
    match filter.apply(shaped) {
        Step::Keep(_) => true,
        Step::Drop => false,
        Step::Reject { reason, .. } => panic!("{condition} rejected the event: {reason}"),
    }
}

/// The reason the condition rejects the event for (the event coming back unchanged).
fn rejection(condition: &str, shaped: Shaped) -> String {
    let topic = shaped.topic.clone();
    match Filter::new(condition).unwrap().apply(shaped) {
        Step::Reject { shaped, reason } => {
            assert_eq!(shaped.topic, topic, "the event comes back as it was");
            reason
        }
        Step::Keep(_) => panic!("{condition} kept the event"),
        Step::Drop => panic!("{condition} dropped the event"),
    }
}

fn problem(condition: &str) -> String {
    match Filter::new(condition) {
        Err((key, message)) => {
            assert_eq!(key, "condition");
            message
        }
        Ok(_) => panic!("{condition} was accepted"),
    }
}

#[test]
fn a_condition_on_after_keeps_or_drops_inserts() {
    let condition = r#"after.status == "open""#;
    assert!(keeps(condition, change(Op::Create, None, Some(open()))));
    assert!(!keeps(condition, change(Op::Create, None, Some(closed()))));
}

#[test]
fn an_update_is_filtered_on_its_before_and_after() {
    let condition = r#"before.status == "open" && after.status == "closed""#;
    assert!(keeps(
        condition,
        change(Op::Update, Some(open()), Some(closed()))
    ));
    assert!(!keeps(
        condition,
        change(Op::Update, Some(closed()), Some(open()))
    ));
    assert!(!keeps(
        condition,
        change(Op::Update, Some(closed()), Some(closed()))
    ));
}

#[test]
fn op_and_source_read_as_debezium_names_them() {
    let condition = r#"op == "c" && source.connector == "postgresql" && source.db == "shop"
        && source.schema == "public" && source.table == "orders" && source.lsn == 42
        && source.txId == 7 && source.ts_ms == 1700000000123 && source.snapshot == "false""#;
    assert!(keeps(condition, change(Op::Create, None, Some(open()))));
    assert!(!keeps(condition, change(Op::Read, None, Some(open()))));
    assert!(keeps(
        r#"op == "d" && after == null"#,
        change(Op::Delete, Some(open()), None)
    ));
    assert!(keeps(
        r#"op == "t" && before == null"#,
        change(Op::Truncate, None, None)
    ));
    assert!(!keeps(
        r#"source.table == "customers""#,
        change(Op::Create, None, Some(open()))
    ));
}

#[test]
fn topic_is_where_the_event_is_bound_so_far() {
    let mut routed = change(Op::Create, None, Some(open()));
    routed.topic = "app.all_orders".into();
    assert!(keeps(r#"topic == "app.all_orders""#, routed));
    assert!(!keeps(
        r#"topic.startsWith("app.all")"#,
        change(Op::Create, None, Some(open()))
    ));
}

#[test]
fn numbers_and_timestamps_compare() {
    let amount = "after.amount > 100.0";
    assert!(keeps(amount, change(Op::Create, None, Some(open()))));
    assert!(!keeps(amount, change(Op::Create, None, Some(closed()))));
    assert!(keeps(
        "after.amount == 150.25 && after.id == 1",
        change(Op::Create, None, Some(open()))
    ));
    let created = r#"after.created_at > timestamp("2024-01-01T00:00:00Z")"#;
    assert!(keeps(created, change(Op::Create, None, Some(open()))));
    assert!(!keeps(created, change(Op::Create, None, Some(closed()))));
    assert!(keeps(
        r#"after.created_at == timestamp("2024-03-01T00:00:00Z")"#,
        change(Op::Create, None, Some(open()))
    ));
}

#[test]
fn jsonb_reads_as_its_json() {
    let condition = r#"after.doc.kind == "x" && after.doc.n == 3"#;
    assert!(keeps(condition, change(Op::Create, None, Some(open()))));
    assert!(!keeps(
        r#"after.doc.kind == "x""#,
        change(Op::Create, None, Some(closed()))
    ));
    assert!(keeps(
        "size(after.doc.n) == 2",
        change(Op::Create, None, Some(closed()))
    ));
}

#[test]
fn documents_read_their_extended_json() {
    let doc = |qty: &str| {
        document(&format!(
            r#"{{"_id":{{"$oid":"65f0c0ffee0000000000cafe"}},"qty":{{"$numberInt":"{qty}"}},
                "total":{{"$numberLong":"9007199254740993"}},"price":{{"$numberDouble":"Infinity"}},
                "tax":{{"$numberDecimal":"1.25"}},"odd":{{"$numberDecimal":"junk"}},
                "at":{{"$date":{{"$numberLong":"1709251200000"}}}},
                "raw":{{"$binary":{{"base64":"AQI=","subType":"00"}}}},
                "ts":{{"$timestamp":{{"t":5,"i":1}}}},"nan":{{"$numberDouble":"NaN"}},
                "legacy":{{"$binary":"AQI=","$type":"00"}},"when":{{"$date":"2024-03-01T00:00:00Z"}},
                "items":[{{"sku":"a","n":{{"$numberInt":"1"}}}}]}}"#
        ))
    };
    assert!(keeps("after.qty > 1", doc("2")));
    assert!(!keeps("after.qty > 1", doc("1")));
    let typed = r#"after._id == "65f0c0ffee0000000000cafe" && after.total == 9007199254740993
        && after.price == double("Infinity") && after.tax == 1.25 && after.odd == "junk"
        && after.at == timestamp("2024-03-01T00:00:00Z") && after.raw == b"\x01\x02"
        && after.ts["$timestamp"].t == 5 && after.nan != after.nan && after.legacy == after.raw
        && after.when == after.at && after.items.exists(i, i.sku == "a" && i.n == 1)"#;
    assert!(keeps(typed, doc("2")));
    let source = r#"source.connector == "mongodb" && source.db == "shop" && source.collection == "orders"
        && source.rs == "rs0" && source.ts_ms == 1700000000000 && source.snapshot == "true"
        && topic == "app.shop.orders" && op == "c" && before == null"#;
    assert!(keeps(source, doc("2")));
}

#[test]
fn an_evaluation_error_rejects_the_event_with_the_error() {
    let missing = rejection("after.missing == 1", change(Op::Create, None, Some(open())));
    assert_eq!(missing, "the condition failed: No such key: missing");
    let deleted = rejection(
        r#"after.status == "open""#,
        change(Op::Delete, Some(open()), None),
    );
    assert!(deleted.starts_with("the condition failed: "), "{deleted}");
    let mismatch = rejection(
        r#"after.status > 1"#,
        change(Op::Create, None, Some(open())),
    );
    assert!(mismatch.starts_with("the condition failed: "), "{mismatch}");
    let zero = rejection("after.id / 0 == 1", change(Op::Create, None, Some(open())));
    assert!(zero.contains("ivision by zero"), "{zero}");
}

#[test]
fn a_result_that_is_no_bool_rejects_the_event() {
    let reason = rejection("after.status", change(Op::Create, None, Some(open())));
    assert_eq!(reason, "the condition gave string, not a bool");
    let reason = rejection("after.id + 1", change(Op::Create, None, Some(open())));
    assert_eq!(reason, "the condition gave int, not a bool");
}

#[test]
fn a_syntax_error_is_a_problem_of_the_condition() {
    let message = problem(r#"after.status == "#);
    assert!(message.starts_with("does not parse: "), "{message}");
    assert!(!message.contains('\n'), "one line: {message}");
}

#[test]
fn a_name_that_is_no_variable_is_a_problem_of_the_condition() {
    let message = problem("afterr.status == 1");
    assert!(message.contains("`afterr`"), "{message}");
    assert!(problem(r#"op == "c" && [1].exists(x, y > x)"#).contains("`y`"));
    for fine in [
        r#"after.doc.n.exists(x, x > 1)"#,
        r#"[1, 2].map(after, after * 2).size() == 2"#,
        r#"type(after.id) == int && type(after.created_at) == google.protobuf.Timestamp"#,
        r#"optional.of(1).hasValue() && strings.quote("a") != """#,
        r#"after.email.lowerAscii().endsWith("@example.com")"#,
    ] {
        assert!(Filter::new(fine).is_ok(), "{fine}");
    }
}

#[test]
fn only_what_the_condition_reads_is_converted() {
    let reads = |condition: &str| Filter::new(condition).unwrap().reads;
    let named = reads(r#"after.status == "x" && has(after.email) && after.status != "y""#);
    assert_eq!(
        named.after,
        Columns::Named(vec!["status".into(), "email".into()])
    );
    assert_eq!(named.before, Columns::None);
    assert!(!named.source);
    assert_eq!(reads(r#"after["status"] == "x""#).after, Columns::All);
    assert_eq!(reads("after != null && after.id == 1").after, Columns::All);
    assert_eq!(reads("[1].exists(after, after > 0)").after, Columns::None);
    assert!(reads(r#"source.table == "x""#).source);
    // The named columns alone are converted, and still read as they are.
    assert!(keeps(
        "after.amount > 100.0",
        change(Op::Create, None, Some(open()))
    ));
    assert!(!keeps(
        "has(after.nope)",
        change(Op::Create, None, Some(open()))
    ));
}

#[test]
fn a_message_passes_unchanged() {
    let message = DecodingMessage {
        database: "shop".into(),
        prefix: "outbox".into(),
        content: b"hello".to_vec(),
        transactional: true,
        txid: Some(7),
        lsn: Lsn(42),
        commit_time_us: None,
    };
    let shaped = Shaped {
        event: SourceEvent::Message(message.clone()),
        topic: "app.messages".into(),
        dress: Default::default(),
    };
    match Filter::new("false").unwrap().apply(shaped) {
        Step::Keep(Shaped {
            event: SourceEvent::Message(kept),
            ..
        }) => assert_eq!(kept, message),
        _ => panic!("the message was not kept"),
    }
}

fn typed_table() -> Arc<Table> {
    let fields = vec![
        RecordField {
            name: "street".into(),
            column_type: ColumnType::String,
        },
        RecordField {
            name: "zip".into(),
            column_type: ColumnType::Int32,
        },
    ];
    Arc::new(Table {
        id: 16385,
        schema: "public".into(),
        name: "typed".into(),
        columns: vec![
            column("flag", ColumnType::Boolean),
            column("small", ColumnType::Int16),
            column("ratio", ColumnType::Float32),
            column("big", ColumnType::VariableDecimal),
            column("uid", ColumnType::Uuid),
            column("blob", ColumnType::Bytes),
            column("day", ColumnType::Date),
            column("local", ColumnType::Timestamp),
            column("at", ColumnType::Time),
            column(
                "tags",
                ColumnType::Array {
                    element: Box::new(ColumnType::String),
                    dimensions: 1,
                },
            ),
            column(
                "address",
                ColumnType::Record {
                    name: "public.address".into(),
                    fields,
                },
            ),
            column("attrs", ColumnType::TextMap),
            column("toast", ColumnType::String),
            column("bad", ColumnType::Date),
            column("forever", ColumnType::TimestampTz),
        ],
    })
}

#[test]
fn row_values_read_as_cel_types() {
    let row = vec![
        V::Bool(true),
        V::Int16(-3),
        V::Float32(0.5),
        V::Numeric(Numeric::NaN),
        V::Uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
        V::Bytes(vec![1, 2]),
        V::Date(19_783), // 2024-03-01
        V::Timestamp(1_709_251_200_500_000),
        V::Time(34_200_000_000), // 09:30
        V::Array(vec![V::String("vip".into()), V::Null]),
        V::Record(vec![V::String("Main St".into()), V::Int32(12345)]),
        V::TextMap(vec![
            ("color".into(), Some("red".into())),
            ("size".into(), None),
        ]),
        V::UnchangedToast,
        V::OutOfRange("date out of range".into()),
        V::TimestampTz(i64::MAX),
    ];
    let condition = r#"after.flag && after.small == -3 && after.ratio == 0.5 && after.big != after.big
        && after.uid == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11" && after.blob == b"\x01\x02"
        && after.day == timestamp("2024-03-01T00:00:00Z")
        && after.local == timestamp("2024-03-01T00:00:00.5Z")
        && after.at == duration("9h30m") && after.tags == ["vip", null] && "vip" in after.tags
        && after.address.street == "Main St" && after.address.zip == 12345
        && after.attrs.color == "red" && after.attrs.size == null
        && after.toast == null && after.bad == null
        && after.forever == timestamp("9999-12-31T23:59:59.999999999Z")"#;
    assert!(keeps(
        condition,
        change_in(typed_table(), Op::Create, None, Some(row))
    ));
}

#[test]
fn infinite_and_far_dates_are_held_at_the_ends_of_cel_time() {
    let table = Arc::new(Table {
        columns: vec![
            column("from", ColumnType::Date),
            column("until", ColumnType::Date),
            column("far", ColumnType::TimestampTz),
        ],
        ..(*table()).clone()
    });
    let row = vec![
        V::Date(i32::MIN),
        V::Date(i32::MAX),
        V::TimestampTz(-300_000_000_000_000_000),
    ];
    let condition = r#"after.from == timestamp("0001-01-01T00:00:00Z")
        && after.until == timestamp("9999-12-31T23:59:59.999999999Z")
        && after.far == after.from"#;
    assert!(keeps(
        condition,
        change_in(table, Op::Create, None, Some(row))
    ));
}
