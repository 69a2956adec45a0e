//! Values that have no encoding in their column's Avro type (a numeric NaN under exact decimals, a
//! timestamp past Avro's range, text that does not parse as its type), found so that the row can be
//! published with them null instead of only reaching the dead-letter topic (`source.unencodable_values`).

use sluice_core::event::{ChangeEvent, Row, Value};

use super::encode::{write_value, EncodeReason};

/// One value with no encoding: in the row before or after the change, which column, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Unencodable {
    pub after: bool,
    pub column: usize,
    pub reason: EncodeReason,
}

/// Every value of `event` with no encoding in its column's type; None when one of them cannot be null
/// instead (a key column's: keys have no null) or a failure is not a value's own (a value of another
/// type than its column, which is a defect to report whole).
pub fn unencodable_values(event: &ChangeEvent) -> Option<Vec<Unencodable>> {
    let mut found = Vec::new();
    let mut scratch = Vec::new();
    for (after, row) in [(false, &event.before), (true, &event.after)] {
        let Some(row) = row else { continue };
        for (column, (meta, value)) in event.table.columns.iter().zip(row).enumerate() {
            if matches!(value.plain(), Value::Null | Value::UnchangedToast) {
                continue;
            }
            scratch.clear();
            let Err(reason) = write_value(&meta.column_type, value, &mut scratch) else {
                continue;
            };
            if meta.key || !is_values_own(&reason) {
                return None;
            }
            found.push(Unencodable {
                after,
                column,
                reason,
            });
        }
    }
    Some(found)
}

/// `event` with each of `values` null.
pub fn with_nulls(event: &ChangeEvent, values: &[Unencodable]) -> ChangeEvent {
    let mut nulled = event.clone();
    for value in values {
        let row: Option<&mut Row> = if value.after {
            nulled.after.as_mut()
        } else {
            nulled.before.as_mut()
        };
        if let Some(slot) = row.and_then(|row| row.get_mut(value.column)) {
            *slot = Value::Null;
        }
    }
    nulled
}

/// The reasons that are about the value itself, not about how the event was put together.
fn is_values_own(reason: &EncodeReason) -> bool {
    matches!(
        reason,
        EncodeReason::OutOfRange(_)
            | EncodeReason::NonFiniteDecimal(_)
            | EncodeReason::Decimal(_)
            | EncodeReason::ScaleOutOfRange(_)
            | EncodeReason::MalformedUuid(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::event::{
        Column, ColumnType, Lsn, Numeric, Op, SnapshotMarker, SourceInfo, Table,
    };
    use std::sync::Arc;

    fn event(before: Option<Row>, after: Option<Row>) -> ChangeEvent {
        let column = |name: &str, column_type, key| Column {
            name: name.into(),
            column_type,
            key,
            source_type: String::new(),
            not_null: false,
            precision: None,
        };
        let decimal = ColumnType::Decimal {
            precision: 10,
            scale: 2,
        };
        ChangeEvent {
            table: Arc::new(Table {
                id: 1,
                schema: "public".into(),
                name: "t".into(),
                columns: vec![
                    column("id", ColumnType::Int32, true),
                    column("amount", decimal, false),
                    column("at", ColumnType::Timestamp, false),
                ],
            }),
            op: Op::Update,
            before,
            after,
            source: SourceInfo {
                database: "db".into(),
                txid: Some(1),
                lsn: Lsn(1),
                commit_lsn: Lsn(1),
                commit_time_us: 0,
                snapshot: SnapshotMarker::False,
                order: None,
            },
        }
    }

    #[test]
    fn values_without_an_encoding_are_found_in_either_row_and_nulled_there_only() {
        let nan = Value::Numeric(Numeric::NaN);
        let far = Value::OutOfRange(
            "timestamp `294276-12-31` is outside the Avro timestamp range".into(),
        );
        let before = vec![Value::Int32(1), nan.clone(), Value::Timestamp(0)];
        let after = vec![Value::Int32(1), Value::Null, far];
        let event = event(Some(before), Some(after));
        let found = unencodable_values(&event).expect("both can be null");
        let spots: Vec<(bool, usize)> = found.iter().map(|u| (u.after, u.column)).collect();
        assert_eq!(spots, [(false, 1), (true, 2)]);
        assert!(matches!(found[0].reason, EncodeReason::NonFiniteDecimal(_)));
        let nulled = with_nulls(&event, &found);
        assert_eq!(nulled.before.as_ref().unwrap()[1], Value::Null);
        assert_eq!(
            nulled.before.as_ref().unwrap()[2],
            Value::Timestamp(0),
            "untouched"
        );
        assert_eq!(nulled.after.as_ref().unwrap()[2], Value::Null);
        assert_eq!(unencodable_values(&nulled), Some(Vec::new()));
    }

    #[test]
    fn a_key_value_or_a_value_of_another_type_cannot_be_nulled() {
        let bad_key = vec![Value::OutOfRange("x".into()), Value::Null, Value::Null];
        assert_eq!(unencodable_values(&event(None, Some(bad_key))), None);
        let wrong_type = vec![Value::Int32(1), Value::String("12".into()), Value::Null];
        assert_eq!(unencodable_values(&event(None, Some(wrong_type))), None);
    }
}
