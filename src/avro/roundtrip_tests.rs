//! The encoder against apache-avro: every encoding is decoded with the generated schema and compared with
//! the value it must mean.

use std::sync::Arc;

use apache_avro::types::Value as Avro;
use apache_avro::{Decimal, Uuid};

use super::decimal::unscaled_text as signed_be_to_decimal;
use super::*;
use sluice_core::event::{
    ChangeEvent, Column, ColumnType, Lsn, Numeric, Op, Row, SnapshotMarker, SourceInfo, Table,
    TransactionOrder, Value,
};

const CTX: EnvelopeContext<'static> = EnvelopeContext {
    server_name: "shop",
    connector: "postgresql",
    version: "0.1.0",
    processed_at_us: 1_700_000_000_999_000,
    debezium: false,
};

fn column(name: &str, column_type: ColumnType, key: bool, source_type: &str) -> Column {
    Column {
        name: name.into(),
        column_type,
        key,
        source_type: source_type.into(),
        not_null: false,
        precision: None,
    }
}

fn table(columns: Vec<Column>) -> Arc<Table> {
    Arc::new(Table {
        id: 42,
        schema: "public".into(),
        name: "things".into(),
        columns,
    })
}

fn source() -> SourceInfo {
    SourceInfo {
        database: "inventory".into(),
        txid: Some(771),
        lsn: Lsn(0x16_B374_D848),
        commit_lsn: Lsn(0x16_B374_D900),
        commit_time_us: 1_700_000_000_123_456,
        snapshot: SnapshotMarker::False,
        order: Some(TransactionOrder {
            total: 3,
            in_table: 2,
        }),
    }
}

fn event(table: &Arc<Table>, op: Op, before: Option<Row>, after: Option<Row>) -> ChangeEvent {
    ChangeEvent {
        table: table.clone(),
        op,
        before,
        after,
        source: source(),
    }
}

/// Decodes one datum and checks that it used every byte.
fn decode(schema: &AvroSchema, bytes: &[u8]) -> Avro {
    let mut reader = bytes;
    let value = apache_avro::from_avro_datum(&schema.schema, &mut reader, None)
        .unwrap_or_else(|err| panic!("decoding {bytes:02X?} with {}: {err}", schema.json));
    assert!(
        reader.is_empty(),
        "{} bytes left over after {value:?}",
        reader.len()
    );
    value
}

fn encoded_key(table: &Table, row: &Row) -> Vec<u8> {
    let mut out = Vec::new();
    encode_key(table, row, &mut out).unwrap();
    out
}

fn encoded_envelope(event: &ChangeEvent) -> Vec<u8> {
    let mut out = Vec::new();
    encode_envelope(event, &CTX, &mut out).unwrap();
    out
}

fn record(fields: Vec<(&str, Avro)>) -> Avro {
    Avro::Record(
        fields
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect(),
    )
}

fn null() -> Avro {
    Avro::Union(0, Box::new(Avro::Null))
}

fn some(value: Avro) -> Avro {
    Avro::Union(1, Box::new(value))
}

/// The decoded form of a `Value` record: every field optional.
fn value_record(names: &[&str], values: Vec<Option<Avro>>) -> Avro {
    record(
        names
            .iter()
            .zip(values)
            .map(|(name, value)| (*name, value.map_or_else(null, some)))
            .collect(),
    )
}

fn expected_source(table: &Table, snapshot: &str) -> Avro {
    record(vec![
        ("version", Avro::String("0.1.0".into())),
        ("connector", Avro::String("postgresql".into())),
        ("name", Avro::String("shop".into())),
        ("ts_ms", Avro::Long(1_700_000_000_123)),
        ("snapshot", Avro::String(snapshot.into())),
        ("db", Avro::String("inventory".into())),
        (
            "sequence",
            some(Avro::String(format!(
                "[\"{}\",\"{}\"]",
                0x16_B374_D900u64, 0x16_B374_D848u64
            ))),
        ),
        ("ts_us", some(Avro::Long(1_700_000_000_123_456))),
        ("ts_ns", some(Avro::Long(1_700_000_000_123_456_000))),
        ("schema", Avro::String(table.schema.clone())),
        ("table", Avro::String(table.name.clone())),
        ("txId", some(Avro::Long(771))),
        ("lsn", some(Avro::Long(0x16_B374_D848))),
        ("xmin", null()),
        ("origin", null()),
        ("origin_lsn", null()),
    ])
}

fn expected_envelope(table: &Table, op: &str, before: Option<Avro>, after: Option<Avro>) -> Avro {
    record(vec![
        ("before", before.map_or_else(null, some)),
        ("after", after.map_or_else(null, some)),
        ("source", expected_source(table, "false")),
        ("op", Avro::String(op.into())),
        ("ts_ms", some(Avro::Long(1_700_000_000_999))),
        (
            "transaction",
            some(record(vec![
                ("id", Avro::String(format!("771:{}", 0x16_B374_D900u64))),
                ("total_order", Avro::Long(3)),
                ("data_collection_order", Avro::Long(2)),
            ])),
        ),
        ("ts_us", some(Avro::Long(1_700_000_000_999_000))),
        ("ts_ns", some(Avro::Long(1_700_000_000_999_000_000))),
    ])
}

/// Two's complement big-endian, minimal length, for expectations.
fn be(value: i128) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let mut start = 0;
    while start + 1 < bytes.len()
        && ((bytes[start] == 0 && bytes[start + 1] & 0x80 == 0)
            || (bytes[start] == 0xFF && bytes[start + 1] & 0x80 != 0))
    {
        start += 1;
    }
    bytes[start..].to_vec()
}

fn decimal(value: i128) -> Avro {
    Avro::Decimal(Decimal::from(be(value)))
}

fn numeric(unscaled: &str, scale: u32) -> Value {
    Value::Numeric(Numeric::Finite {
        unscaled: unscaled.into(),
        scale,
    })
}

/// For one column type: a table with the type as key column `k` and as value column `v`; every sample is
/// encoded as a key and in create, update, delete, read and truncate envelopes (and with `v` null), and
/// decoded back.
fn check_type(column_type: ColumnType, samples: Vec<(Value, Avro)>) {
    let t = table(vec![
        column("k", column_type.clone(), true, "src"),
        column("v", column_type, false, "src"),
    ]);
    let schemas = table_schemas("shop", &t).unwrap();
    let key_schema = schemas.key.as_ref().unwrap();
    let names = ["k", "v"];
    let mut previous: Option<(Row, Avro)> = None;
    for (value, expected) in samples {
        let row: Row = vec![value.clone(), value.clone()];
        let label = format!("{value:?}");

        assert_eq!(
            decode(key_schema, &encoded_key(&t, &row)),
            record(vec![("k", expected.clone())]),
            "key {label}"
        );

        let full = value_record(&names, vec![Some(expected.clone()), Some(expected.clone())]);
        let insert = event(&t, Op::Create, None, Some(row.clone()));
        assert_eq!(
            decode(&schemas.value, &encoded_envelope(&insert)),
            expected_envelope(&t, "c", None, Some(full.clone())),
            "insert {label}"
        );

        let half: Row = vec![value.clone(), Value::Null];
        let half_expected = value_record(&names, vec![Some(expected.clone()), None]);
        let (old_row, old_expected) = previous
            .clone()
            .unwrap_or((half.clone(), half_expected.clone()));
        let update = event(&t, Op::Update, Some(old_row), Some(half.clone()));
        assert_eq!(
            decode(&schemas.value, &encoded_envelope(&update)),
            expected_envelope(&t, "u", Some(old_expected), Some(half_expected.clone())),
            "update {label}"
        );

        let delete = event(&t, Op::Delete, Some(row.clone()), None);
        assert_eq!(
            decode(&schemas.value, &encoded_envelope(&delete)),
            expected_envelope(&t, "d", Some(full.clone()), None),
            "delete {label}"
        );

        let read = event(&t, Op::Read, None, Some(half));
        assert_eq!(
            decode(&schemas.value, &encoded_envelope(&read)),
            expected_envelope(&t, "r", None, Some(half_expected)),
            "read {label}"
        );

        previous = Some((row, full));
    }
    let truncate = event(&t, Op::Truncate, None, None);
    assert_eq!(
        decode(&schemas.value, &encoded_envelope(&truncate)),
        expected_envelope(&t, "t", None, None)
    );
}

#[test]
fn boolean() {
    check_type(
        ColumnType::Boolean,
        vec![
            (Value::Bool(true), Avro::Boolean(true)),
            (Value::Bool(false), Avro::Boolean(false)),
        ],
    );
}

#[test]
fn int16() {
    let samples =
        [i16::MIN, -1, 0, 1, i16::MAX].map(|v| (Value::Int16(v), Avro::Int(i32::from(v))));
    check_type(ColumnType::Int16, samples.to_vec());
}

#[test]
fn int32() {
    let samples = [i32::MIN, -64, 0, 64, i32::MAX].map(|v| (Value::Int32(v), Avro::Int(v)));
    check_type(ColumnType::Int32, samples.to_vec());
}

#[test]
fn int64() {
    let samples = [i64::MIN, -1, 0, 1 << 40, i64::MAX].map(|v| (Value::Int64(v), Avro::Long(v)));
    check_type(ColumnType::Int64, samples.to_vec());
}

#[test]
fn float32() {
    let samples = [
        0.0,
        -0.0,
        1.5,
        -3.25e-5,
        f32::MAX,
        f32::MIN,
        f32::MIN_POSITIVE,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ];
    check_type(
        ColumnType::Float32,
        samples
            .map(|v| (Value::Float32(v), Avro::Float(v)))
            .to_vec(),
    );
}

#[test]
fn float64() {
    let samples = [
        0.0,
        -0.0,
        1.5,
        -3.25e-300,
        f64::MAX,
        f64::MIN,
        f64::MIN_POSITIVE,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ];
    check_type(
        ColumnType::Float64,
        samples
            .map(|v| (Value::Float64(v), Avro::Double(v)))
            .to_vec(),
    );
}

#[test]
fn float_nan_is_encoded() {
    // NaN != NaN, so checked apart from the generic round trip.
    let t = table(vec![
        column("f", ColumnType::Float32, false, "float4"),
        column("d", ColumnType::Float64, false, "float8"),
    ]);
    let schemas = table_schemas("shop", &t).unwrap();
    let insert = event(
        &t,
        Op::Create,
        None,
        Some(vec![Value::Float32(f32::NAN), Value::Float64(f64::NAN)]),
    );
    let Avro::Record(fields) = decode(&schemas.value, &encoded_envelope(&insert)) else {
        panic!("not a record")
    };
    let Avro::Union(1, after) = &fields[1].1 else {
        panic!("after is null")
    };
    let Avro::Record(after) = &**after else {
        panic!("after is not a record")
    };
    assert!(
        matches!(&after[0].1, Avro::Union(1, v) if matches!(**v, Avro::Float(f) if f.is_nan()))
    );
    assert!(
        matches!(&after[1].1, Avro::Union(1, v) if matches!(**v, Avro::Double(d) if d.is_nan()))
    );
}

#[test]
fn decimal_with_fixed_scale() {
    check_type(
        ColumnType::Decimal {
            precision: 12,
            scale: 2,
        },
        vec![
            (numeric("12345", 2), decimal(12345)),
            (numeric("-12345", 2), decimal(-12345)),
            // Padded to the column's scale: 5 → 5.00, -0.7 → -0.70.
            (numeric("5", 0), decimal(500)),
            (numeric("-7", 1), decimal(-70)),
            // Trailing zeros beyond the scale are dropped: 1.2300 → 1.23.
            (numeric("12300", 4), decimal(123)),
            (numeric("0", 0), decimal(0)),
            (numeric("-1", 2), decimal(-1)),
            (numeric("999999999999", 2), decimal(999_999_999_999)),
            (numeric("-999999999999", 2), decimal(-999_999_999_999)),
        ],
    );
}

#[test]
fn decimal_with_forty_digits() {
    let forty = "1234567890123456789012345678901234567890";
    let negative = format!("-{forty}");
    let t = table(vec![column(
        "n",
        ColumnType::Decimal {
            precision: 45,
            scale: 5,
        },
        true,
        "numeric",
    )]);
    let schemas = table_schemas("shop", &t).unwrap();
    for (value, expected) in [
        (forty.to_owned(), format!("{forty}00000")),
        (negative, format!("-{forty}00000")),
    ] {
        // Scale 0 in the value, padded to 5: 45 digits.
        let row = vec![numeric(&value, 0)];
        let Avro::Record(fields) = decode(schemas.key.as_ref().unwrap(), &encoded_key(&t, &row))
        else {
            panic!()
        };
        let Avro::Decimal(decoded) = &fields[0].1 else {
            panic!("not a decimal: {:?}", fields[0].1)
        };
        let bytes = <Vec<u8>>::try_from(decoded).unwrap();
        assert_eq!(signed_be_to_decimal(&bytes), expected);
        // Minimal length: 45 digits need 19 bytes (10^45 < 2^150 < 2^151).
        assert_eq!(bytes.len(), 19);
    }
}

#[test]
fn decimal_bytes_are_minimal() {
    let t = table(vec![column(
        "n",
        ColumnType::Decimal {
            precision: 10,
            scale: 0,
        },
        true,
        "numeric",
    )]);
    let schemas = table_schemas("shop", &t).unwrap();
    for (text, bytes) in [
        ("0", vec![0x00]),
        ("127", vec![0x7F]),
        ("128", vec![0x00, 0x80]),
        ("-128", vec![0x80]),
        ("-129", vec![0xFF, 0x7F]),
    ] {
        let Avro::Record(fields) = decode(
            schemas.key.as_ref().unwrap(),
            &encoded_key(&t, &vec![numeric(text, 0)]),
        ) else {
            panic!()
        };
        let Avro::Decimal(decoded) = &fields[0].1 else {
            panic!()
        };
        assert_eq!(<Vec<u8>>::try_from(decoded).unwrap(), bytes, "{text}");
    }
}

#[test]
fn variable_scale_decimal() {
    let forty = "-1234567890123456789012345678901234567890";
    let vsd = |scale: i32, bytes: Vec<u8>| {
        record(vec![
            ("scale", Avro::Int(scale)),
            ("value", Avro::Bytes(bytes)),
        ])
    };
    let mut forty_bytes = Vec::new();
    decimal::write_unscaled(forty, &mut forty_bytes).unwrap();
    let forty_bytes = forty_bytes[1..].to_vec();
    assert_eq!(signed_be_to_decimal(&forty_bytes), forty);
    check_type(
        ColumnType::VariableDecimal,
        vec![
            (numeric("12345", 3), vsd(3, be(12345))),
            (numeric("-1", 0), vsd(0, be(-1))),
            (numeric("0", 7), vsd(7, be(0))),
            (numeric("12300", 4), vsd(4, be(12300))),
            (numeric(forty, 10), vsd(10, forty_bytes)),
        ],
    );
}

#[test]
fn string() {
    let samples = [
        "",
        "plain",
        "héllo wörld ✓ 日本語 🎉",
        "line\nbreak\ttab\0nul",
        &"x".repeat(300),
    ];
    check_type(
        ColumnType::String,
        samples
            .map(|s| (Value::String(s.into()), Avro::String(s.into())))
            .to_vec(),
    );
}

#[test]
fn bytes() {
    let samples = [
        vec![],
        vec![0x00, 0xFF, 0x01],
        (0..=255).collect::<Vec<u8>>().repeat(4),
    ];
    check_type(
        ColumnType::Bytes,
        samples
            .map(|b| (Value::Bytes(b.clone()), Avro::Bytes(b)))
            .to_vec(),
    );
}

#[test]
fn uuid() {
    let samples = [
        "123e4567-e89b-12d3-a456-426614174000",
        "00000000-0000-0000-0000-000000000000",
        "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
    ];
    check_type(
        ColumnType::Uuid,
        samples
            .map(|s| {
                (
                    Value::Uuid(s.into()),
                    Avro::Uuid(Uuid::parse_str(s).unwrap()),
                )
            })
            .to_vec(),
    );
}

#[test]
fn date() {
    // 0001-01-01, 1969-12-31, the epoch, 2022-01-08, the far future.
    let samples = [-719_162, -1, 0, 19_000, i32::MAX].map(|d| (Value::Date(d), Avro::Date(d)));
    check_type(ColumnType::Date, samples.to_vec());
}

#[test]
fn timestamp() {
    // 0001-01-01, one microsecond before the epoch, the epoch, 2023.
    let micros = [-62_135_596_800_000_000, -1, 0, 1_700_000_000_123_456];
    check_type(
        ColumnType::Timestamp,
        micros
            .map(|t| (Value::Timestamp(t), Avro::LocalTimestampMicros(t)))
            .to_vec(),
    );
}

#[test]
fn timestamp_with_time_zone() {
    let micros = [-62_135_596_800_000_000, -1, 0, 1_700_000_000_123_456];
    check_type(
        ColumnType::TimestampTz,
        micros
            .map(|t| (Value::TimestampTz(t), Avro::TimestampMicros(t)))
            .to_vec(),
    );
}

#[test]
fn json() {
    check_type(
        ColumnType::Json,
        vec![
            (
                Value::Json(r#"{"a": [1, 2], "é": null}"#.into()),
                Avro::String(r#"{"a": [1, 2], "é": null}"#.into()),
            ),
            (Value::Json("null".into()), Avro::String("null".into())),
            (Value::String("[]".into()), Avro::String("[]".into())),
        ],
    );
}

#[test]
fn text_of_unmapped_type() {
    check_type(
        ColumnType::Text {
            type_name: "interval".into(),
        },
        vec![
            (
                Value::String("1 day 02:00:00".into()),
                Avro::String("1 day 02:00:00".into()),
            ),
            (Value::String(String::new()), Avro::String(String::new())),
        ],
    );
}

#[test]
fn infinite_dates_and_timestamps_are_the_extremes() {
    check_type(
        ColumnType::Date,
        [i32::MIN, i32::MAX]
            .map(|d| (Value::Date(d), Avro::Date(d)))
            .to_vec(),
    );
    check_type(
        ColumnType::TimestampTz,
        [i64::MIN, i64::MAX]
            .map(|t| (Value::TimestampTz(t), Avro::TimestampMicros(t)))
            .to_vec(),
    );
}

#[test]
fn time() {
    let micros = [0, 45_296_789_000, 86_400_000_000];
    check_type(
        ColumnType::Time,
        micros
            .map(|t| (Value::Time(t), Avro::TimeMicros(t)))
            .to_vec(),
    );
}

#[test]
fn money() {
    check_type(
        ColumnType::Money,
        vec![
            (numeric("123450", 2), decimal(123_450)),
            (numeric("-7", 2), decimal(-7)),
            (
                numeric("-9223372036854775808", 2),
                decimal(i128::from(i64::MIN)),
            ),
            (
                numeric("9223372036854775807", 2),
                decimal(i128::from(i64::MAX)),
            ),
        ],
    );
}

#[test]
fn arrays_with_null_elements_and_dimensions() {
    let ints = |v: &[Option<i32>]| {
        (
            Value::Array(
                v.iter()
                    .map(|i| i.map_or(Value::Null, Value::Int32))
                    .collect(),
            ),
            Avro::Array(
                v.iter()
                    .map(|i| i.map_or(null(), |i| some(Avro::Int(i))))
                    .collect(),
            ),
        )
    };
    check_type(
        ColumnType::Array {
            element: Box::new(ColumnType::Int32),
            dimensions: 1,
        },
        vec![ints(&[]), ints(&[Some(1), None, Some(-3)]), ints(&[None])],
    );
    let (row1, avro1) = ints(&[Some(1), Some(2)]);
    let (row2, avro2) = ints(&[Some(3), None]);
    check_type(
        ColumnType::Array {
            element: Box::new(ColumnType::String),
            dimensions: 2,
        },
        vec![(Value::Array(vec![]), Avro::Array(vec![]))],
    );
    check_type(
        ColumnType::Array {
            element: Box::new(ColumnType::Int32),
            dimensions: 2,
        },
        vec![(
            Value::Array(vec![row1, row2]),
            Avro::Array(vec![avro1, avro2]),
        )],
    );
}

#[test]
fn composite_records_are_defined_once_per_schema() {
    let address = ColumnType::Record {
        name: "public.address".into(),
        fields: vec![
            sluice_core::event::RecordField {
                name: "street name".into(),
                column_type: ColumnType::String,
            },
            sluice_core::event::RecordField {
                name: "number".into(),
                column_type: ColumnType::Int32,
            },
        ],
    };
    let sample = |street: Option<&str>, number: Option<i32>| {
        (
            Value::Record(vec![
                street.map_or(Value::Null, |s| Value::String(s.into())),
                number.map_or(Value::Null, Value::Int32),
            ]),
            record(vec![
                (
                    "street_name",
                    street.map_or(null(), |s| some(Avro::String(s.into()))),
                ),
                ("number", number.map_or(null(), |n| some(Avro::Int(n)))),
            ]),
        )
    };
    check_type(
        address,
        vec![sample(Some("Main St"), Some(12)), sample(None, None)],
    );
}

#[test]
fn composite_types_whose_names_sanitise_alike_get_their_own_records() {
    let composite = |name: &str, field: &str, column_type: ColumnType| ColumnType::Record {
        name: name.into(),
        fields: vec![sluice_core::event::RecordField {
            name: field.into(),
            column_type,
        }],
    };
    let t = table(vec![
        column("k", ColumnType::Int32, true, "int4"),
        column(
            "a",
            composite("public.order-line", "qty", ColumnType::Int32),
            false,
            "c",
        ),
        column(
            "b",
            composite("public.order_line", "sku", ColumnType::String),
            false,
            "c",
        ),
        column(
            "c",
            composite("public.order-line", "qty", ColumnType::Int32),
            false,
            "c",
        ),
    ]);
    let schemas = table_schemas("shop", &t).unwrap();
    assert!(
        schemas
            .value
            .json
            .contains("sluice.postgres.types.public.order_line_2"),
        "{}",
        schemas.value.json
    );
    let row = vec![
        Value::Int32(1),
        Value::Record(vec![Value::Int32(3)]),
        Value::Record(vec![Value::String("x".into())]),
        Value::Record(vec![Value::Int32(4)]),
    ];
    let decoded = decode(
        &schemas.value,
        &encoded_envelope(&event(&t, Op::Create, None, Some(row))),
    );
    let Avro::Record(fields) = decoded else {
        panic!()
    };
    assert_eq!(
        fields[1].1,
        some(value_record(
            &["k", "a", "b", "c"],
            vec![
                Some(Avro::Int(1)),
                Some(record(vec![("qty", some(Avro::Int(3)))])),
                Some(record(vec![("sku", some(Avro::String("x".into())))])),
                Some(record(vec![("qty", some(Avro::Int(4)))])),
            ]
        ))
    );
}

#[test]
fn text_maps() {
    check_type(
        ColumnType::TextMap,
        vec![
            (Value::TextMap(vec![]), Avro::Map(Default::default())),
            (
                Value::TextMap(vec![("a".into(), Some("1".into())), ("b".into(), None)]),
                Avro::Map(
                    [
                        ("a".to_owned(), some(Avro::String("1".into()))),
                        ("b".to_owned(), null()),
                    ]
                    .into_iter()
                    .collect(),
                ),
            ),
        ],
    );
}

#[test]
fn all_types_in_one_row() {
    let t = table(vec![
        column("id", ColumnType::Int64, true, "int8"),
        column("flag", ColumnType::Boolean, false, "bool"),
        column("small", ColumnType::Int16, false, "int2"),
        column(
            "amount",
            ColumnType::Decimal {
                precision: 12,
                scale: 2,
            },
            false,
            "numeric",
        ),
        column("ratio", ColumnType::VariableDecimal, false, "numeric"),
        column("other ratio", ColumnType::VariableDecimal, false, "numeric"),
        column("name", ColumnType::String, false, "text"),
        column("uid", ColumnType::Uuid, false, "uuid"),
        column("born", ColumnType::Date, false, "date"),
        column("doc", ColumnType::Json, false, "jsonb"),
        column(
            "span",
            ColumnType::Text {
                type_name: "interval".into(),
            },
            false,
            "interval",
        ),
    ]);
    let names = [
        "id",
        "flag",
        "small",
        "amount",
        "ratio",
        "other_ratio",
        "name",
        "uid",
        "born",
        "doc",
        "span",
    ];
    let schemas = table_schemas("shop", &t).unwrap();
    let row = vec![
        Value::Int64(1),
        Value::Bool(true),
        Value::Int16(-2),
        numeric("-105", 1),
        numeric("5", 2),
        Value::Null,
        Value::String("Zoë".into()),
        Value::Uuid("123e4567-e89b-12d3-a456-426614174000".into()),
        Value::Date(-3650),
        Value::Json("{}".into()),
        Value::UnchangedToast,
    ];
    let after = value_record(
        &names,
        vec![
            Some(Avro::Long(1)),
            Some(Avro::Boolean(true)),
            Some(Avro::Int(-2)),
            Some(decimal(-1050)),
            Some(record(vec![
                ("scale", Avro::Int(2)),
                ("value", Avro::Bytes(vec![5])),
            ])),
            None,
            Some(Avro::String("Zoë".into())),
            Some(Avro::Uuid(
                Uuid::parse_str("123e4567-e89b-12d3-a456-426614174000").unwrap(),
            )),
            Some(Avro::Date(-3650)),
            Some(Avro::String("{}".into())),
            // An unchanged TOAST value goes out as null.
            None,
        ],
    );
    // REPLICA IDENTITY DEFAULT: the before image has the key only.
    let mut before: Row = vec![Value::Null; names.len()];
    before[0] = Value::Int64(1);
    let before_expected = value_record(
        &names,
        (0..names.len())
            .map(|i| (i == 0).then_some(Avro::Long(1)))
            .collect(),
    );
    let update = event(&t, Op::Update, Some(before), Some(row.clone()));
    assert_eq!(
        decode(&schemas.value, &encoded_envelope(&update)),
        expected_envelope(&t, "u", Some(before_expected), Some(after))
    );
    assert_eq!(
        decode(schemas.key.as_ref().unwrap(), &encoded_key(&t, &row)),
        record(vec![("id", Avro::Long(1))])
    );
}

#[test]
fn snapshot_source_fields() {
    let t = table(vec![column("id", ColumnType::Int32, true, "int4")]);
    let schemas = table_schemas("shop", &t).unwrap();
    let mut read = event(&t, Op::Read, None, Some(vec![Value::Int32(1)]));
    read.source.snapshot = SnapshotMarker::Last;
    // Commit times before 1970 round down to the millisecond.
    read.source.commit_time_us = -1_500;
    let Avro::Record(fields) = decode(&schemas.value, &encoded_envelope(&read)) else {
        panic!()
    };
    let Avro::Record(source) = &fields[2].1 else {
        panic!()
    };
    assert_eq!(source[3], ("ts_ms".to_owned(), Avro::Long(-2)));
    assert_eq!(
        source[4],
        ("snapshot".to_owned(), Avro::String("last".into()))
    );
    assert_eq!(fields[3].1, Avro::String("r".into()));
    // Snapshot rows belong to no transaction.
    read.source.txid = None;
    read.source.order = None;
    let Avro::Record(fields) = decode(&schemas.value, &encoded_envelope(&read)) else {
        panic!()
    };
    assert_eq!(fields[5], ("transaction".to_owned(), null()));
}

#[test]
fn truncate_ignores_rows() {
    let t = table(vec![column("id", ColumnType::Int32, true, "int4")]);
    let schemas = table_schemas("shop", &t).unwrap();
    let truncate = event(
        &t,
        Op::Truncate,
        Some(vec![Value::Int32(1)]),
        Some(vec![Value::Int32(2)]),
    );
    assert_eq!(
        decode(&schemas.value, &encoded_envelope(&truncate)),
        expected_envelope(&t, "t", None, None)
    );
}

#[test]
fn output_is_appended_after_a_confluent_header() {
    let t = table(vec![column("id", ColumnType::Int32, true, "int4")]);
    let schemas = table_schemas("shop", &t).unwrap();
    let mut out = Vec::new();
    SchemaRef::RegistryId(7).write_header(&mut out);
    encode_key(&t, &vec![Value::Int32(-3)], &mut out).unwrap();
    assert_eq!(out, [0, 0, 0, 0, 7, 0x05]);
    assert_eq!(
        decode(schemas.key.as_ref().unwrap(), &out[5..]),
        record(vec![("id", Avro::Int(-3))])
    );
}

#[test]
fn weird_names_round_trip() {
    let t = Arc::new(Table {
        id: 1,
        schema: "Sales Dept".into(),
        name: "2024-orders ✓".into(),
        columns: vec![
            column("order id", ColumnType::Int32, true, "int4"),
            column("order-id", ColumnType::String, false, "text"),
            column("1st", ColumnType::VariableDecimal, false, "numeric"),
            column("ünï", ColumnType::VariableDecimal, true, "numeric"),
        ],
    });
    let schemas = table_schemas("my-server", &t).unwrap();
    let row = vec![
        Value::Int32(9),
        Value::String("x".into()),
        numeric("1", 1),
        numeric("-2", 0),
    ];
    let key = decode(schemas.key.as_ref().unwrap(), &encoded_key(&t, &row));
    let vsd = |scale, value: i128| {
        record(vec![
            ("scale", Avro::Int(scale)),
            ("value", Avro::Bytes(be(value))),
        ])
    };
    assert_eq!(
        key,
        record(vec![("order_id", Avro::Int(9)), ("_n_", vsd(0, -2))])
    );
    let insert = event(&t, Op::Create, None, Some(row));
    let Avro::Record(fields) = decode(&schemas.value, &encoded_envelope(&insert)) else {
        panic!()
    };
    assert_eq!(
        fields[1].1,
        some(value_record(
            &["order_id", "order_id_2", "_1st", "_n_"],
            vec![
                Some(Avro::Int(9)),
                Some(Avro::String("x".into())),
                Some(vsd(1, 1)),
                Some(vsd(0, -2))
            ]
        ))
    );
}

/// Debezium's mode: NOT NULL columns are required; a delete's before image under REPLICA IDENTITY DEFAULT
/// gets the type's fallback where it lacks a NOT NULL value, an unchanged TOASTed text Debezium's
/// placeholder, and the envelope Debezium's field order.
#[test]
fn debezium_mode_fills_what_a_row_lacks() {
    let required = |name: &str, column_type: ColumnType, key: bool| Column {
        not_null: true,
        ..column(name, column_type, key, "")
    };
    let t = Arc::new(debezium::debezium_table(&table(vec![
        required("id", ColumnType::Int32, true),
        required("body", ColumnType::String, false),
        column("note", ColumnType::String, false, "text"),
        required("at", ColumnType::TimestampTz, false),
    ])));
    let schemas = table_schemas_as("shop", &t, LogicalTypes::Debezium).unwrap();
    let ctx = EnvelopeContext {
        debezium: true,
        ..CTX
    };
    let decoded = |event: &ChangeEvent| {
        let mut out = Vec::new();
        encode_envelope(event, &ctx, &mut out).unwrap();
        let Avro::Record(fields) = decode(&schemas.value, &out) else {
            panic!("not a record")
        };
        fields
    };
    let row = |fields: &[(String, Avro)], side: &str| -> Vec<(String, Avro)> {
        match &fields.iter().find(|(n, _)| n == side).unwrap().1 {
            Avro::Union(1, row) => match &**row {
                Avro::Record(row) => row.clone(),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    };
    let delete = event(
        &t,
        Op::Delete,
        Some(vec![Value::Int32(7), Value::Null, Value::Null, Value::Null]),
        None,
    );
    let fields = decoded(&delete);
    let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "before",
            "after",
            "source",
            "transaction",
            "op",
            "ts_ms",
            "ts_us",
            "ts_ns"
        ]
    );
    assert_eq!(
        row(&fields, "before"),
        [
            ("id".to_owned(), Avro::Int(7)),
            ("body".to_owned(), Avro::String(String::new())),
            ("note".to_owned(), Avro::Union(0, Box::new(Avro::Null))),
            ("at".to_owned(), Avro::String("1970-01-01T00:00:00Z".into())),
        ]
    );
    let update = event(
        &t,
        Op::Update,
        None,
        Some(vec![
            Value::Int32(7),
            Value::UnchangedToast,
            Value::UnchangedToast,
            Value::TimestampTz(0),
        ]),
    );
    let fields = decoded(&update);
    let placeholder = Avro::String(debezium::UNAVAILABLE.into());
    assert_eq!(
        row(&fields, "after")[1..3],
        [
            ("body".to_owned(), placeholder.clone()),
            ("note".to_owned(), Avro::Union(1, Box::new(placeholder))),
        ]
    );
}

/// In Debezium's mode a NOT NULL column added to a table is a required field: with the fallback as its
/// default, the new schema still reads what the old one wrote (the registry's BACKWARD check).
#[test]
fn debezium_mode_required_columns_added_later_keep_schemas_compatible() {
    let required = |name: &str, column_type: ColumnType| Column {
        not_null: true,
        ..column(name, column_type, false, "")
    };
    let before = table(vec![required("id", ColumnType::Int32)]);
    let mut columns = before.columns.clone();
    for (name, column_type) in [
        ("n", ColumnType::Int64),
        ("s", ColumnType::String),
        ("v", ColumnType::VariableDecimal),
        ("at", ColumnType::TimestampTz),
        (
            "tags",
            ColumnType::Array {
                element: Box::new(ColumnType::String),
                dimensions: 1,
            },
        ),
    ] {
        columns.push(required(name, column_type));
    }
    let after = table(columns);
    let old = table_schemas_as("shop", &before, LogicalTypes::Debezium).unwrap();
    let new = table_schemas_as("shop", &after, LogicalTypes::Debezium).unwrap();
    apache_avro::schema_compatibility::SchemaCompatibility::can_read(
        &old.value.schema,
        &new.value.schema,
    )
    .expect("the new schema reads the old one's data");
}

/// Writes the schemas of the `tail` fuzz target (fuzz/schemas: a table's key and envelope, a document
/// envelope) and, into its seed corpus, messages in both framings encoded with them (fuzz/README.md).
/// `SLUICE_FUZZ_SEEDS=fuzz/corpus cargo test -p sluice write_fuzz_seeds -- --ignored`
#[test]
#[ignore = "writes files; run to refresh the fuzz corpora"]
fn write_fuzz_seeds() {
    use sluice_core::event::{DocumentChange, DocumentSource, UpdateDescription};

    let Some(corpus) = std::env::var_os("SLUICE_FUZZ_SEEDS") else {
        panic!("set SLUICE_FUZZ_SEEDS to the corpus folder");
    };
    let corpus = std::path::Path::new(&corpus).join("tail");
    let schemas_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/schemas");
    std::fs::create_dir_all(&corpus).unwrap();
    let t = table(vec![
        column("id", ColumnType::Int64, true, "int8"),
        column("flag", ColumnType::Boolean, false, "bool"),
        column(
            "amount",
            ColumnType::Decimal {
                precision: 12,
                scale: 2,
            },
            false,
            "numeric",
        ),
        column("ratio", ColumnType::VariableDecimal, false, "numeric"),
        column("name", ColumnType::String, false, "text"),
        column("uid", ColumnType::Uuid, false, "uuid"),
        column("at", ColumnType::TimestampTz, false, "timestamptz"),
        column(
            "tags",
            ColumnType::Array {
                element: Box::new(ColumnType::Int32),
                dimensions: 1,
            },
            false,
            "_int4",
        ),
        column("attrs", ColumnType::TextMap, false, "hstore"),
    ]);
    let schemas = table_schemas("shop", &t).unwrap();
    let key = schemas.key.as_ref().unwrap();
    let row = vec![
        Value::Int64(1),
        Value::Bool(true),
        numeric("-105", 1),
        numeric("5", 2),
        Value::String("Zoë".into()),
        Value::Uuid("123e4567-e89b-12d3-a456-426614174000".into()),
        Value::TimestampTz(1_700_000_000_123_456),
        Value::Array(vec![Value::Int32(1), Value::Null]),
        Value::TextMap(vec![("a".into(), Some("b".into())), ("c".into(), None)]),
    ];
    let documents = document_schemas("app", "shop", "orders");
    let change = DocumentChange {
        database: "shop".into(),
        collection: "orders".into(),
        op: Op::Update,
        key: r#"{"$oid":"64f0a1b2c3d4e5f601020304"}"#.into(),
        before: None,
        after: Some(
            r#"{"_id":{"$oid":"64f0a1b2c3d4e5f601020304"},"qty":{"$numberInt":"6"}}"#.into(),
        ),
        update: Some(UpdateDescription {
            updated_fields: Some(r#"{"qty":{"$numberInt":"6"}}"#.into()),
            removed_fields: vec!["note".into()],
            truncated_arrays: vec![("tags".into(), 2)],
        }),
        source: DocumentSource {
            replica_set: Some("rs0".into()),
            cluster_time: (1_700_000_000, 1),
            wall_time_ms: Some(1_700_000_000_123),
            txn_number: Some(4),
            lsid: Some("00010203-0405-0607-0809-0a0b0c0d0e0f".into()),
            resume_token: Some(r#"{"_data":"82"}"#.into()),
            snapshot: SnapshotMarker::False,
        },
    };
    let mut document = Vec::new();
    encode_document_envelope(&change, "app", 42, None, &mut document).unwrap();
    let mut written = Vec::new();
    for (name, schema, body) in [
        ("table_key", key, encoded_key(&t, &row)),
        (
            "table_value",
            &schemas.value,
            encoded_envelope(&event(&t, Op::Create, None, Some(row.clone()))),
        ),
        ("document_value", &documents.value, document),
    ] {
        std::fs::write(schemas_dir.join(format!("{name}.avsc")), &schema.json).unwrap();
        // The registry ids the target gives the schemas: their place in its list.
        let id = written.len() as u32;
        written.push(name);
        for header in [
            SchemaRef::Fingerprint(Fingerprint::of_json(&schema.json).unwrap()),
            SchemaRef::RegistryId(id),
        ] {
            let mut message = Vec::new();
            header.write_header(&mut message);
            message.extend_from_slice(&body);
            let framing = match header {
                SchemaRef::Fingerprint(_) => "single-object",
                SchemaRef::RegistryId(_) => "registry",
            };
            std::fs::write(corpus.join(format!("test-{name}-{framing}")), message).unwrap();
        }
    }
    std::fs::write(corpus.join("test-json"), br#"{"op":"c","n":[1,2.5,null]}"#).unwrap();
}
