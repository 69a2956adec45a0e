//! The headers that say what a row's Avro form does not: the values PostgreSQL did not send (unchanged
//! TOAST), the values read again from the table for the change, and arrays whose bounds their nesting does
//! not show.

use serde_json::{Map, Value as Json};
use std::fmt::Write as _;

use sluice_core::event::{ChangeEvent, ColumnType, Note, Value};

use crate::avro;

/// The Avro field names of the unchanged-TOAST columns, for the contract check.
pub(super) fn unchanged_toast_fields(event: &ChangeEvent) -> Vec<String> {
    let positions: Vec<usize> = event.unchanged_toast().collect();
    if positions.is_empty() {
        return Vec::new();
    }
    let names = avro::naming::field_names(&event.table);
    positions.into_iter().map(|i| names[i].clone()).collect()
}

/// The unchanged-TOAST columns, as a comma-separated header value.
pub(super) fn unchanged_toast_columns(event: &ChangeEvent) -> Option<String> {
    let names: Vec<&str> = event
        .unchanged_toast()
        .map(|i| event.table.columns[i].name.as_str())
        .collect();
    (!names.is_empty()).then(|| names.join(","))
}

/// The notes on the event's values as header texts: the columns re-selected for the new row
/// (`sluice.reselected`, comma-separated) and the bounds of arrays their Avro form does not show
/// (`sluice.array_bounds`: `{"after": {"column": "[0:1]"}}`, and `before` likewise; an array inside a
/// composite value or an array of them by its path in the published value, `address.lines`,
/// `stops[2].times`).
pub(super) fn note_headers(event: &ChangeEvent) -> (Option<String>, Option<String>) {
    let mut reselected: Vec<&str> = Vec::new();
    let mut bounds = Map::new();
    for (side, row) in [("before", &event.before), ("after", &event.after)] {
        let Some(row) = row else { continue };
        let mut row_bounds = Map::new();
        for (column, value) in event.table.columns.iter().zip(row) {
            if !matches!(value, Value::Noted(_) | Value::Array(_) | Value::Record(_)) {
                continue;
            }
            if side == "after" && value.notes().any(|n| *n == Note::Reselected) {
                reselected.push(&column.name);
            }
            let mut path = column.name.clone();
            collect_bounds(value, &column.column_type, &mut path, &mut row_bounds);
        }
        if !row_bounds.is_empty() {
            bounds.insert(side.to_owned(), Json::Object(row_bounds));
        }
    }
    (
        (!reselected.is_empty()).then(|| reselected.join(",")),
        (!bounds.is_empty()).then(|| Json::Object(bounds).to_string()),
    )
}

/// The array bounds noted in `value` (of `column_type`, at `path`) and in the values nested in it.
fn collect_bounds(
    value: &Value,
    column_type: &ColumnType,
    path: &mut String,
    out: &mut Map<String, Json>,
) {
    let at = path.len();
    match (value, column_type) {
        (Value::Noted(noted), _) => {
            if let Note::ArrayBounds(text) = &noted.note {
                out.insert(path.clone(), Json::String(text.clone()));
            }
            collect_bounds(&noted.value, column_type, path, out);
        }
        // Only a composite element can hold further arrays: PostgreSQL notes an array's shape once.
        (Value::Array(items), ColumnType::Array { element, .. })
            if matches!(**element, ColumnType::Record { .. }) =>
        {
            for (i, item) in items.iter().enumerate() {
                // Elements of an inner dimension are arrays of the same element type.
                let item_type = match item.plain() {
                    Value::Array(_) => column_type,
                    _ => &**element,
                };
                let _ = write!(path, "[{i}]");
                collect_bounds(item, item_type, path, out);
                path.truncate(at);
            }
        }
        (Value::Record(values), ColumnType::Record { fields, .. }) => {
            for (field, value) in fields.iter().zip(values) {
                path.push('.');
                path.push_str(&field.name);
                collect_bounds(value, &field.column_type, path, out);
                path.truncate(at);
            }
        }
        _ => {}
    }
}
