use super::*;
use crate::type_model::FieldType;
use sluice_core::event::Numeric;

#[path = "types_temporal_tests.rs"]
mod temporal;

/// [`resolve`] for a built-in type, without a catalog.
fn column_type(type_oid: u32, type_modifier: i32) -> ColumnType {
    resolve(
        type_oid,
        type_modifier,
        0,
        &TypeMap::new(),
        DecimalHandling::Precise,
    )
    .column_type
}

fn parse(column_type: &ColumnType, text: &str) -> Value {
    match parse_text(column_type, text.as_bytes()) {
        Ok(value) => value,
        Err(err) => panic!("`{text}` did not parse: {err}"),
    }
}

fn error(column_type: &ColumnType, text: &str) -> String {
    match parse_text(column_type, text.as_bytes()) {
        Ok(value) => panic!("`{text}` parsed as {value:?}"),
        Err(err) => err.to_string(),
    }
}

fn finite(unscaled: &str, scale: u32) -> Value {
    Value::Numeric(Numeric::Finite {
        unscaled: unscaled.into(),
        scale,
    })
}

#[test]
fn column_types_by_oid() {
    let cases = [
        (16, ColumnType::Boolean),
        (17, ColumnType::Bytes),
        (18, ColumnType::String),
        (19, ColumnType::String),
        (25, ColumnType::String),
        (1042, ColumnType::String),
        (1043, ColumnType::String),
        (20, ColumnType::Int64),
        (21, ColumnType::Int16),
        (23, ColumnType::Int32),
        (26, ColumnType::Int64),
        (114, ColumnType::Json),
        (3802, ColumnType::Json),
        (700, ColumnType::Float32),
        (701, ColumnType::Float64),
        (1082, ColumnType::Date),
        (1114, ColumnType::Timestamp),
        (1184, ColumnType::TimestampTz),
        (2950, ColumnType::Uuid),
        (1700, ColumnType::VariableDecimal),
    ];
    for (oid, expected) in cases {
        assert_eq!(column_type(oid, -1), expected, "oid {oid}");
    }
}

#[test]
fn other_types_are_text_with_their_name() {
    assert_eq!(
        column_type(1186, -1),
        ColumnType::Text {
            type_name: "interval".into()
        }
    );
    assert_eq!(
        column_type(16_385, -1),
        ColumnType::Text {
            type_name: "oid:16385".into()
        }
    );
    let none = TypeMap::new();
    let name = |oid| source_type_name(oid, &none);
    assert_eq!(name(23), "int4");
    assert_eq!(name(1184), "timestamptz");
    assert_eq!(name(99_999), "oid:99999");
    assert_eq!(
        parse(&column_type(1186, -1), "1 day 02:03:04"),
        Value::String("1 day 02:03:04".into())
    );
}

fn catalog(entries: &[(u32, &str, PgTypeKind)]) -> TypeMap {
    entries
        .iter()
        .map(|(oid, name, kind)| {
            let found = PgType {
                name: (*name).into(),
                kind: kind.clone(),
            };
            (*oid, found)
        })
        .collect()
}

fn resolved(oid: u32, typmod: i32, dims: i32, catalog: &TypeMap) -> ColumnType {
    resolve(oid, typmod, dims, catalog, DecimalHandling::Precise).column_type
}

#[test]
fn catalog_types_resolve_to_their_structure() {
    let numeric_10_2 = ((10 << 16) | 2) + 4;
    let types = catalog(&[
        (1007, "_int4", PgTypeKind::Array { element: 23 }),
        (1231, "_numeric", PgTypeKind::Array { element: 1700 }),
        (
            16_400,
            "public.price",
            PgTypeKind::Domain {
                base: 1700,
                type_modifier: numeric_10_2,
                dimensions: 0,
            },
        ),
        (
            16_401,
            "public.mood",
            PgTypeKind::Enum {
                labels: vec!["sad".into(), "happy".into()],
            },
        ),
        (
            16_402,
            "public.address",
            PgTypeKind::Composite {
                fields: vec![
                    FieldType {
                        name: "street".into(),
                        type_oid: 25,
                        type_modifier: -1,
                        dimensions: 0,
                    },
                    FieldType {
                        name: "zips".into(),
                        type_oid: 1007,
                        type_modifier: -1,
                        dimensions: 1,
                    },
                ],
            },
        ),
        (16_403, "public.hstore", PgTypeKind::Other),
        (3904, "int4range", PgTypeKind::Other),
    ]);
    let int4 = Box::new(ColumnType::Int32);
    assert_eq!(
        resolved(1007, -1, 0, &types),
        ColumnType::Array {
            element: int4.clone(),
            dimensions: 1
        }
    );
    assert_eq!(
        resolved(1007, -1, 2, &types),
        ColumnType::Array {
            element: int4.clone(),
            dimensions: 2
        }
    );
    // The column's modifier belongs to the elements.
    assert_eq!(
        resolved(1231, numeric_10_2, 1, &types),
        ColumnType::Array {
            element: Box::new(ColumnType::Decimal {
                precision: 10,
                scale: 2
            }),
            dimensions: 1
        }
    );
    assert_eq!(
        resolved(16_400, -1, 0, &types),
        ColumnType::Decimal {
            precision: 10,
            scale: 2
        }
    );
    assert_eq!(
        resolved(16_401, -1, 0, &types),
        ColumnType::Enum {
            type_name: "public.mood".into(),
            labels: vec!["sad".into(), "happy".into()],
        }
    );
    assert_eq!(
        resolved(16_402, -1, 0, &types),
        ColumnType::Record {
            name: "public.address".into(),
            fields: vec![
                RecordField {
                    name: "street".into(),
                    column_type: ColumnType::String
                },
                RecordField {
                    name: "zips".into(),
                    column_type: ColumnType::Array {
                        element: int4,
                        dimensions: 1
                    }
                },
            ]
        }
    );
    assert_eq!(resolved(16_403, -1, 0, &types), ColumnType::TextMap);
    assert_eq!(
        resolve(3904, -1, 0, &types, DecimalHandling::Precise).source_type,
        "int4range"
    );
    // Not in the catalog (dropped meanwhile): text.
    assert_eq!(
        resolved(16_999, -1, 0, &types),
        ColumnType::Text {
            type_name: "oid:16999".into()
        }
    );
}

#[test]
fn decimal_handling_picks_the_numeric_form() {
    let none = TypeMap::new();
    let numeric = |mode| resolve(1700, -1, 0, &none, mode).column_type;
    assert_eq!(
        numeric(DecimalHandling::Precise),
        ColumnType::VariableDecimal
    );
    assert_eq!(numeric(DecimalHandling::Double), ColumnType::Float64);
    assert_eq!(
        numeric(DecimalHandling::String),
        ColumnType::Text {
            type_name: "numeric".into()
        }
    );
    assert_eq!(
        parse(&numeric(DecimalHandling::String), "NaN"),
        Value::String("NaN".into())
    );
    assert!(
        matches!(parse(&numeric(DecimalHandling::Double), "NaN"), Value::Float64(v) if v.is_nan())
    );
}

#[test]
fn arrays_parse_element_by_element() {
    let int_array = |dimensions| ColumnType::Array {
        element: Box::new(ColumnType::Int32),
        dimensions,
    };
    assert_eq!(
        parse(&int_array(1), "{1,NULL,-3}"),
        Value::Array(vec![Value::Int32(1), Value::Null, Value::Int32(-3)])
    );
    assert_eq!(parse(&int_array(2), "{}"), Value::Array(vec![]));
    assert_eq!(
        parse(&int_array(2), "{{1,2},{3,NULL}}"),
        Value::Array(vec![
            Value::Array(vec![Value::Int32(1), Value::Int32(2)]),
            Value::Array(vec![Value::Int32(3), Value::Null]),
        ])
    );
    // PostgreSQL does not hold values to the declared dimensions: a value of another depth is nested as
    // declared, its bounds noted.
    let ints = |values: &[i32]| Value::Array(values.iter().map(|v| Value::Int32(*v)).collect());
    let noted = |value, bounds: &str| Value::noted(value, Note::ArrayBounds(bounds.into()));
    assert_eq!(
        parse(&int_array(1), "{{1,2},{3,4}}"),
        noted(ints(&[1, 2, 3, 4]), "[1:2][1:2]")
    );
    assert_eq!(
        parse(&int_array(2), "{{{1,2}},{{3,4}}}"),
        noted(
            Value::Array(vec![ints(&[1, 2]), ints(&[3, 4])]),
            "[1:2][1:1][1:2]"
        )
    );
    assert_eq!(
        parse(&int_array(2), "{1,2}"),
        noted(Value::Array(vec![ints(&[1, 2])]), "[1:2]")
    );
    // Lower bounds other than 1, which PostgreSQL prints before the elements.
    assert_eq!(
        parse(&int_array(1), "[0:1]={7,8}"),
        noted(ints(&[7, 8]), "[0:1]")
    );
    assert_eq!(
        parse(&int_array(1), "[-2:-1][3:3]={{7},{8}}"),
        noted(ints(&[7, 8]), "[-2:-1][3:3]")
    );
    for bad in ["[0:2]={7,8}", "[0:1][1:1]={7,8}", "[x:1]={7,8}", "[1]={7}"] {
        assert!(
            error(&int_array(1), bad).contains("dimension prefix"),
            "{bad}"
        );
    }
    assert!(error(&int_array(1), "{{1,2},{3}}").contains("sub-arrays of different sizes"));
    assert!(error(&int_array(1), "{{1,2},3}").contains("sub-arrays of different sizes"));
    assert!(error(&int_array(1), "{1,x}").contains("`x` is not a valid int4"));
    assert!(error(&int_array(1), "{1,2").contains("is not a valid array"));
    let boxes = ColumnType::Array {
        element: Box::new(ColumnType::Text {
            type_name: "box".into(),
        }),
        dimensions: 1,
    };
    assert_eq!(
        parse(&boxes, "{(3,4),(1,2);(7,8),(5,6)}"),
        Value::Array(vec![
            Value::String("(3,4),(1,2)".into()),
            Value::String("(7,8),(5,6)".into()),
        ])
    );
}

#[test]
fn composites_and_hstore_parse() {
    let address = ColumnType::Record {
        name: "public.address".into(),
        fields: vec![
            RecordField {
                name: "street".into(),
                column_type: ColumnType::String,
            },
            RecordField {
                name: "number".into(),
                column_type: ColumnType::Int32,
            },
        ],
    };
    assert_eq!(
        parse(&address, r#"("Main ""St""",)"#),
        Value::Record(vec![Value::String(r#"Main "St""#.into()), Value::Null])
    );
    assert!(error(&address, "(a)").contains("the number of fields differs"));
    let empty = ColumnType::Record {
        name: "public.nothing".into(),
        fields: vec![],
    };
    assert_eq!(parse(&empty, "()"), Value::Record(vec![]));
    assert!(error(&address, "(a,b)").contains("`b` is not a valid int4"));
    assert_eq!(
        parse(&ColumnType::TextMap, r#""k"=>"v", "n"=>NULL"#),
        Value::TextMap(vec![("k".into(), Some("v".into())), ("n".into(), None)])
    );
}

#[test]
fn times_and_money() {
    assert_eq!(parse(&ColumnType::Time, "00:00:00"), Value::Time(0));
    assert_eq!(
        parse(&ColumnType::Time, "12:34:56.789"),
        Value::Time(45_296_789_000)
    );
    assert_eq!(
        parse(&ColumnType::Time, "24:00:00"),
        Value::Time(86_400_000_000)
    );
    for bad in ["24:00:01", "12:34", "12:34:56+02"] {
        assert!(
            error(&ColumnType::Time, bad).contains("not a valid time"),
            "{bad}"
        );
    }
    let money = |unscaled: &str| {
        Value::Numeric(Numeric::Finite {
            unscaled: unscaled.into(),
            scale: 2,
        })
    };
    assert_eq!(parse(&ColumnType::Money, "$1,234.50"), money("123450"));
    assert_eq!(parse(&ColumnType::Money, "-$0.07"), money("-7"));
    assert_eq!(
        parse(&ColumnType::Money, "-$92,233,720,368,547,758.08"),
        money("-9223372036854775808")
    );
    for bad in [
        "1.00",
        "$1.0",
        "$1,23.00",
        "$,123.00",
        "$1234,567.00",
        "€1.00",
    ] {
        assert!(
            error(&ColumnType::Money, bad).contains("not a valid money"),
            "{bad}"
        );
    }
}

#[test]
fn numeric_typmods() {
    let typmod = |p: i32, s: i32| ((p << 16) | (s & 0x7ff)) + 4;
    assert_eq!(typmod(12, 2), 786_438);
    assert_eq!(
        column_type(1700, 786_438),
        ColumnType::Decimal {
            precision: 12,
            scale: 2
        }
    );
    assert_eq!(
        column_type(1700, typmod(10, 0)),
        ColumnType::Decimal {
            precision: 10,
            scale: 0
        }
    );
    assert_eq!(
        column_type(1700, typmod(1000, 1000)),
        ColumnType::Decimal {
            precision: 1000,
            scale: 1000
        }
    );
    assert_eq!(column_type(1700, -1), ColumnType::VariableDecimal);
    assert_eq!(column_type(1700, 3), ColumnType::VariableDecimal);
    assert_eq!(column_type(1700, i32::MIN), ColumnType::VariableDecimal);
    // PostgreSQL 15: numeric(2, -3) and numeric(3, 5) have no fixed Avro decimal form.
    assert_eq!(
        column_type(1700, typmod(2, -3)),
        ColumnType::VariableDecimal
    );
    assert_eq!(column_type(1700, typmod(3, 5)), ColumnType::VariableDecimal);
    assert_eq!(column_type(1700, i32::MAX), ColumnType::VariableDecimal);
}

#[test]
fn booleans() {
    assert_eq!(parse(&ColumnType::Boolean, "t"), Value::Bool(true));
    assert_eq!(parse(&ColumnType::Boolean, "f"), Value::Bool(false));
    assert_eq!(
        error(&ColumnType::Boolean, "true"),
        "`true` is not a valid bool"
    );
}

#[test]
fn integers_at_their_limits() {
    assert_eq!(parse(&ColumnType::Int16, "-32768"), Value::Int16(i16::MIN));
    assert_eq!(parse(&ColumnType::Int16, "32767"), Value::Int16(i16::MAX));
    assert_eq!(
        parse(&ColumnType::Int32, "-2147483648"),
        Value::Int32(i32::MIN)
    );
    assert_eq!(
        parse(&ColumnType::Int32, "2147483647"),
        Value::Int32(i32::MAX)
    );
    assert_eq!(
        parse(&ColumnType::Int64, "-9223372036854775808"),
        Value::Int64(i64::MIN)
    );
    assert_eq!(
        parse(&ColumnType::Int64, "9223372036854775807"),
        Value::Int64(i64::MAX)
    );
    assert_eq!(
        parse(&column_type(26, -1), "4294967295"),
        Value::Int64(4_294_967_295)
    );
    assert_eq!(parse(&ColumnType::Int32, "0"), Value::Int32(0));
}

#[test]
fn integer_errors() {
    assert_eq!(
        error(&ColumnType::Int16, "32768"),
        "`32768` is out of range for int2"
    );
    assert_eq!(
        error(&ColumnType::Int32, "2147483648"),
        "`2147483648` is out of range for int4"
    );
    assert_eq!(
        error(&ColumnType::Int64, "-9223372036854775809"),
        "`-9223372036854775809` is out of range for int8"
    );
    assert_eq!(
        error(&ColumnType::Int32, "12x"),
        "`12x` is not a valid int4"
    );
    for bad in ["", "-", "+1", " 1", "1.0", "1e3"] {
        assert!(
            error(&ColumnType::Int32, bad).contains("is not a valid int4"),
            "{bad}"
        );
    }
}

#[test]
fn floats_and_their_specials() {
    assert_eq!(parse(&ColumnType::Float64, "1.5"), Value::Float64(1.5));
    assert_eq!(parse(&ColumnType::Float64, "-0"), Value::Float64(-0.0));
    assert_eq!(parse(&ColumnType::Float64, "1e+300"), Value::Float64(1e300));
    assert_eq!(
        parse(&ColumnType::Float64, "1.2345678901234567e-05"),
        Value::Float64(1.234_567_890_123_456_7e-5)
    );
    assert_eq!(
        parse(&ColumnType::Float64, "Infinity"),
        Value::Float64(f64::INFINITY)
    );
    assert_eq!(
        parse(&ColumnType::Float64, "-Infinity"),
        Value::Float64(f64::NEG_INFINITY)
    );
    assert!(matches!(parse(&ColumnType::Float64, "NaN"), Value::Float64(v) if v.is_nan()));
    assert_eq!(
        parse(&ColumnType::Float32, "3.4028235e+38"),
        Value::Float32(f32::MAX)
    );
    assert_eq!(parse(&ColumnType::Float32, "1.1"), Value::Float32(1.1));
    assert_eq!(
        parse(&ColumnType::Float32, "-Infinity"),
        Value::Float32(f32::NEG_INFINITY)
    );
    assert!(matches!(parse(&ColumnType::Float32, "NaN"), Value::Float32(v) if v.is_nan()));
}

#[test]
fn float_errors() {
    // Spellings Rust accepts but PostgreSQL never prints.
    for bad in [
        "inf", "infinity", "nan", "+1.5", "1.5 ", "", "-", "e5", "1,5", "0x10",
    ] {
        assert!(
            error(&ColumnType::Float64, bad).contains("is not a valid float8"),
            "{bad}"
        );
    }
    assert_eq!(
        error(&ColumnType::Float32, "1e39"),
        "`1e39` is out of range for float4"
    );
    assert_eq!(
        error(&ColumnType::Float64, "1e999"),
        "`1e999` is out of range for float8"
    );
}

#[test]
fn numeric_values() {
    let numeric = ColumnType::Decimal {
        precision: 12,
        scale: 4,
    };
    assert_eq!(parse(&numeric, "-123.4500"), finite("-1234500", 4));
    assert_eq!(parse(&numeric, "123.4500"), finite("1234500", 4));
    assert_eq!(parse(&ColumnType::VariableDecimal, "42"), finite("42", 0));
    assert_eq!(parse(&ColumnType::VariableDecimal, "0.001"), finite("1", 3));
    assert_eq!(
        parse(&ColumnType::VariableDecimal, "-0.050"),
        finite("-50", 3)
    );
    assert_eq!(parse(&ColumnType::VariableDecimal, "100"), finite("100", 0));
    let big = "123456789012345678901234567890.000000000000000000001";
    assert_eq!(
        parse(&ColumnType::VariableDecimal, big),
        finite("123456789012345678901234567890000000000000000000001", 21)
    );
}

#[test]
fn numeric_zeros_are_normalised() {
    for (text, scale) in [
        ("0", 0),
        ("-0", 0),
        ("0.00", 2),
        ("-0.00", 2),
        ("000", 0),
        ("007.10", 2),
    ] {
        let expected = if text.contains('7') {
            finite("710", 2)
        } else {
            finite("0", scale)
        };
        assert_eq!(
            parse(&ColumnType::VariableDecimal, text),
            expected,
            "{text}"
        );
    }
}

#[test]
fn numeric_specials() {
    assert_eq!(
        parse(&ColumnType::VariableDecimal, "NaN"),
        Value::Numeric(Numeric::NaN)
    );
    assert_eq!(
        parse(&ColumnType::VariableDecimal, "Infinity"),
        Value::Numeric(Numeric::PositiveInfinity)
    );
    let fixed = ColumnType::Decimal {
        precision: 5,
        scale: 2,
    };
    assert_eq!(
        parse(&fixed, "-Infinity"),
        Value::Numeric(Numeric::NegativeInfinity)
    );
}

#[test]
fn numeric_errors() {
    for bad in [
        "", "-", ".", "1.2.3", "1e5", "+1", "--1", "1 ", "nan", "infinity", "1,5",
    ] {
        assert!(
            error(&ColumnType::VariableDecimal, bad).contains("is not a valid numeric"),
            "{bad}"
        );
    }
}

#[test]
fn bytea_hex() {
    assert_eq!(parse(&ColumnType::Bytes, "\\x"), Value::Bytes(vec![]));
    assert_eq!(
        parse(&ColumnType::Bytes, "\\x00ff10Ab"),
        Value::Bytes(vec![0x00, 0xff, 0x10, 0xab])
    );
}

#[test]
fn bytea_errors() {
    assert_eq!(
        error(&ColumnType::Bytes, "\\x0g"),
        "`\\x0g` is not a valid bytea (expected \\x and hex digit pairs)"
    );
    for bad in ["\\x0", "abc", "", "\\000", "x00", "\\x 00", "\\x+0"] {
        assert!(
            error(&ColumnType::Bytes, bad).contains("is not a valid bytea"),
            "{bad}"
        );
    }
}

#[test]
fn uuids_are_lower_cased() {
    let expected = Value::Uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into());
    assert_eq!(
        parse(&ColumnType::Uuid, "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"),
        expected
    );
    assert_eq!(
        parse(&ColumnType::Uuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        expected
    );
    for bad in [
        "a0eebc999c0b4ef8bb6d6bb9bd380a11",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
        "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    ] {
        assert!(
            error(&ColumnType::Uuid, bad).contains("is not a valid uuid"),
            "{bad}"
        );
    }
}

#[test]
fn text_json_and_utf8() {
    assert_eq!(
        parse(&ColumnType::String, "héllo"),
        Value::String("héllo".into())
    );
    assert_eq!(parse(&ColumnType::String, ""), Value::String(String::new()));
    assert_eq!(
        parse(&ColumnType::Json, r#"{"a": [1, 2]}"#),
        Value::Json(r#"{"a": [1, 2]}"#.into())
    );
    let err = parse_text(&ColumnType::String, &[b'a', 0xff]).unwrap_err();
    assert_eq!(err.to_string(), "text value `a\u{fffd}` is not valid UTF-8");
    assert!(parse_text(&ColumnType::Json, &[0xc3]).is_err());
    assert!(parse_text(&ColumnType::Int32, &[b'1', 0x80]).is_err());
}

#[test]
fn long_inputs_are_shortened_in_errors() {
    let long = "9".repeat(200);
    let err = error(&ColumnType::Int32, &long);
    assert_eq!(
        err,
        format!("`{}… (200 bytes)` is out of range for int4", "9".repeat(64))
    );
}
