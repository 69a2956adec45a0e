//! One value in PostgreSQL's text output format, parsed as a column type: the first byte chooses the type
//! (scalars, ranges and other text-carried types, enums, hstore, a composite, arrays of each), the rest is
//! the text. Also the Debezium mode's readings of interval and timetz text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::avro::debezium;
use sluice_core::event::{ColumnType, RecordField};
use sluice_postgres::types::parse_text;

/// The scalar types, by index; arrays are built on them.
fn scalar(which: u8) -> ColumnType {
    let text = |name: &str| ColumnType::Text {
        type_name: name.into(),
    };
    match which % 24 {
        0 => ColumnType::Boolean,
        1 => ColumnType::Int16,
        2 => ColumnType::Int32,
        3 => ColumnType::Int64,
        4 => ColumnType::Float32,
        5 => ColumnType::Float64,
        6 => ColumnType::Decimal {
            precision: 10,
            scale: 2,
        },
        7 => ColumnType::VariableDecimal,
        8 => ColumnType::String,
        9 => ColumnType::Bytes,
        10 => ColumnType::Uuid,
        11 => ColumnType::Date,
        12 => ColumnType::Timestamp,
        13 => ColumnType::TimestampTz,
        14 => ColumnType::Time,
        15 => ColumnType::Money,
        16 => ColumnType::Json,
        17 => text("interval"),
        18 => text("int4range"),
        19 => text("tstzrange"),
        20 => text("box"),
        21 => ColumnType::Enum {
            type_name: "mood".into(),
            labels: vec!["sad".into(), "ok".into()],
        },
        22 => ColumnType::TextMap,
        _ => ColumnType::Record {
            name: "shop.public.pair".into(),
            fields: vec![
                RecordField {
                    name: "n".into(),
                    column_type: ColumnType::Int32,
                },
                RecordField {
                    name: "tags".into(),
                    column_type: ColumnType::Array {
                        element: Box::new(ColumnType::String),
                        dimensions: 1,
                    },
                },
                RecordField {
                    name: "at".into(),
                    column_type: ColumnType::TimestampTz,
                },
            ],
        },
    }
}

fuzz_target!(|data: &[u8]| {
    let [which, text @ ..] = data else {
        return;
    };
    match which {
        // Arrays of one to three declared dimensions.
        0..=71 => {
            let column_type = ColumnType::Array {
                element: Box::new(scalar(which % 24)),
                dimensions: u32::from(which / 24) + 1,
            };
            let _ = parse_text(&column_type, text);
        }
        72 | 73 => {
            if let Ok(text) = std::str::from_utf8(text) {
                if *which == 72 {
                    let _ = debezium::micro_duration(text);
                } else {
                    let _ = debezium::zoned_time(text);
                }
            }
        }
        _ => {
            let _ = parse_text(&scalar(which - 74), text);
        }
    }
});
