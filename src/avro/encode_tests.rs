//! The encoder's unit tests: keys, envelopes and the errors that name the column.

use std::sync::Arc;

use super::*;
use sluice_core::event::{Lsn, SnapshotMarker, SourceInfo};

const CTX: EnvelopeContext<'static> = EnvelopeContext {
    server_name: "shop",
    connector: "postgresql",
    version: "0.1.0",
    processed_at_us: 0,
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
        id: 1,
        schema: "public".into(),
        name: "t".into(),
        columns,
    })
}

fn insert(table: &Arc<Table>, row: Row) -> ChangeEvent {
    let source = SourceInfo {
        database: "db".into(),
        txid: Some(1),
        lsn: Lsn(2),
        commit_lsn: Lsn(3),
        commit_time_us: 0,
        snapshot: SnapshotMarker::False,
        order: None,
    };
    ChangeEvent {
        table: table.clone(),
        op: Op::Create,
        before: None,
        after: Some(row),
        source,
    }
}

/// The envelope error for a one-column row; the buffer must be left as it was.
fn envelope_error(column_type: ColumnType, source_type: &str, value: Value) -> String {
    let t = table(vec![column("n", column_type, false, source_type)]);
    let mut out = vec![1, 2, 3];
    let err = encode_envelope(&insert(&t, vec![value]), &CTX, &mut out).unwrap_err();
    assert_eq!(out, [1, 2, 3], "nothing appended on error");
    err.to_string()
}

fn key_error(column_type: ColumnType, source_type: &str, value: Value) -> String {
    let t = table(vec![column("id", column_type, true, source_type)]);
    let mut out = vec![9];
    let err = encode_key(&t, &vec![value], &mut out).unwrap_err();
    assert_eq!(out, [9], "nothing appended on error");
    err.to_string()
}

fn numeric(unscaled: &str, scale: u32) -> Value {
    Value::Numeric(Numeric::Finite {
        unscaled: unscaled.into(),
        scale,
    })
}

const AMOUNT: ColumnType = ColumnType::Decimal {
    precision: 12,
    scale: 2,
};

#[test]
fn non_finite_numerics_are_refused() {
    let t = table(vec![column("amount", AMOUNT, false, "numeric")]);
    let mut out = Vec::new();
    let err = encode_envelope(
        &insert(&t, vec![Value::Numeric(Numeric::NaN)]),
        &CTX,
        &mut out,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "column `amount` (numeric(12,2)): NaN has no Avro decimal representation \
         (source.decimal_handling = \"string\" or \"double\" publishes it)"
    );
    assert_eq!(
        envelope_error(
            ColumnType::VariableDecimal,
            "numeric",
            Value::Numeric(Numeric::PositiveInfinity)
        ),
        "column `n` (numeric): Infinity has no Avro decimal representation \
         (source.decimal_handling = \"string\" or \"double\" publishes it)"
    );
    assert_eq!(
        key_error(
            ColumnType::VariableDecimal,
            "numeric",
            Value::Numeric(Numeric::NegativeInfinity)
        ),
        "column `id` (numeric): -Infinity has no Avro decimal representation \
         (source.decimal_handling = \"string\" or \"double\" publishes it)"
    );
}

#[test]
fn decimals_must_fit_the_column() {
    let n52 = ColumnType::Decimal {
        precision: 5,
        scale: 2,
    };
    assert_eq!(
        envelope_error(n52.clone(), "numeric", numeric("123456", 3)),
        "column `n` (numeric(5,2)): value 123.456 has scale 3, more than the column's scale 2"
    );
    assert_eq!(
        envelope_error(n52.clone(), "numeric", numeric("-1234", 0)),
        "column `n` (numeric(5,2)): value -1234 has 6 digits, more than the column's precision 5"
    );
    assert_eq!(
        key_error(n52, "numeric", numeric("12a", 0)),
        "column `id` (numeric(5,2)): `12a` is not a decimal number"
    );
    assert_eq!(
        envelope_error(ColumnType::VariableDecimal, "numeric", numeric("", 0)),
        "column `n` (numeric): `` is not a decimal number"
    );
    assert_eq!(
        envelope_error(
            ColumnType::VariableDecimal,
            "numeric",
            numeric("1", u32::MAX)
        ),
        "column `n` (numeric): scale 4294967295 does not fit an Avro int"
    );
}

#[test]
fn key_columns_need_values() {
    assert_eq!(
        key_error(ColumnType::Int64, "int8", Value::Null),
        "column `id` (int8): NULL in a key column"
    );
    assert_eq!(
        key_error(ColumnType::String, "text", Value::UnchangedToast),
        "column `id` (text): unchanged TOAST value in a key column"
    );
}

#[test]
fn values_must_match_their_column_type() {
    assert_eq!(
        envelope_error(ColumnType::Int32, "int4", Value::String("1".into())),
        "column `n` (int4): expected int32, got string"
    );
    assert_eq!(
        key_error(ColumnType::Timestamp, "timestamp", Value::TimestampTz(0)),
        "column `id` (timestamp): expected timestamp, got timestamp with time zone"
    );
    assert_eq!(
        envelope_error(
            ColumnType::Decimal {
                precision: 3,
                scale: 0
            },
            "",
            Value::Int32(1)
        ),
        "column `n` (decimal(3,0)): expected decimal, got int32"
    );
    assert_eq!(
        envelope_error(
            ColumnType::Uuid,
            "uuid",
            Value::String("123e4567-e89b-12d3-a456-426614174000".into())
        ),
        "column `n` (uuid): expected uuid, got string"
    );
}

#[test]
fn out_of_range_values_carry_their_reason() {
    assert_eq!(
        envelope_error(
            ColumnType::Date,
            "date",
            Value::OutOfRange("infinity has no date representation".into())
        ),
        "column `n` (date): infinity has no date representation"
    );
    assert_eq!(
        key_error(ColumnType::Int32, "int4", Value::OutOfRange("bad".into())),
        "column `id` (int4): bad"
    );
}

#[test]
fn uuids_must_be_hyphenated_hex() {
    for text in [
        "",
        "123e4567e89b12d3a456426614174000",
        "123e4567-e89b-12d3-a456-42661417400g",
        "{123e4567-e89b-12d3-a456-426614174000}",
    ] {
        assert_eq!(
            envelope_error(ColumnType::Uuid, "uuid", Value::Uuid(text.into())),
            format!("column `n` (uuid): `{text}` is not a UUID in its hyphenated form")
        );
    }
}

#[test]
fn rows_must_have_one_value_per_column() {
    let t = table(vec![
        column("a", ColumnType::Int32, true, "int4"),
        column("b", ColumnType::Int32, false, "int4"),
    ]);
    let mut out = Vec::new();
    let err = encode_envelope(&insert(&t, vec![Value::Int32(1)]), &CTX, &mut out).unwrap_err();
    assert_eq!(
        err.to_string(),
        "public.t: a row has 1 values for 2 columns"
    );
    assert_eq!(
        encode_key(&t, &vec![], &mut out).unwrap_err(),
        EncodeError::RowShape {
            table: "public.t".into(),
            expected: 2,
            got: 0
        }
    );
    assert!(out.is_empty());
}

#[test]
fn source_positions_must_fit_a_long() {
    let t = table(vec![column("a", ColumnType::Int32, true, "int4")]);
    let mut event = insert(&t, vec![Value::Int32(1)]);
    event.source.txid = Some(u64::MAX);
    let mut out = Vec::new();
    let err = encode_envelope(&event, &CTX, &mut out).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("source txId {} does not fit an Avro long", u64::MAX)
    );
    assert!(out.is_empty());
}

#[test]
fn unchanged_toast_is_null_in_the_envelope() {
    let t = table(vec![column("a", ColumnType::String, false, "text")]);
    let mut out = Vec::new();
    encode_envelope(&insert(&t, vec![Value::UnchangedToast]), &CTX, &mut out).unwrap();
    // before: null; after: branch 1, then field a: branch 0.
    assert_eq!(&out[..3], [0x00, 0x02, 0x00]);
}
