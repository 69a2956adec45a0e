//! The headers that say what a row's Avro form does not: the values PostgreSQL did not send (unchanged
//! TOAST), the values read again from the table for the change, and arrays whose bounds their nesting does
//! not show.

use serde_json::{Map, Value as Json};
use sluice_core::event::{ChangeEvent, Note, Value};

use crate::avro;

/// Positions of the columns whose values PostgreSQL did not send (unchanged TOAST).
fn unchanged_toast(event: &ChangeEvent) -> impl Iterator<Item = usize> + '_ {
    event
        .after
        .iter()
        .flat_map(|after| after.iter().enumerate())
        .filter(|(_, value)| **value == Value::UnchangedToast)
        .map(|(i, _)| i)
}

/// The Avro field names of the unchanged-TOAST columns, for the contract check.
pub(super) fn unchanged_toast_fields(event: &ChangeEvent) -> Vec<String> {
    let positions: Vec<usize> = unchanged_toast(event).collect();
    if positions.is_empty() {
        return Vec::new();
    }
    let names = avro::naming::field_names(&event.table);
    positions.into_iter().map(|i| names[i].clone()).collect()
}

/// The unchanged-TOAST columns, as a comma-separated header value.
pub(super) fn unchanged_toast_columns(event: &ChangeEvent) -> Option<String> {
    let names: Vec<&str> = unchanged_toast(event)
        .map(|i| event.table.columns[i].name.as_str())
        .collect();
    (!names.is_empty()).then(|| names.join(","))
}

/// The notes on the event's values as header texts: the columns re-selected for the new row
/// (`sluice.reselected`, comma-separated) and the bounds of arrays their Avro form does not show
/// (`sluice.array_bounds`: `{"after": {"column": "[0:1]"}}`, and `before` likewise).
pub(super) fn note_headers(event: &ChangeEvent) -> (Option<String>, Option<String>) {
    let mut reselected: Vec<&str> = Vec::new();
    let mut bounds = Map::new();
    for (side, row) in [("before", &event.before), ("after", &event.after)] {
        let Some(row) = row else { continue };
        let mut row_bounds = Map::new();
        let noted = row
            .iter()
            .enumerate()
            .filter(|(_, v)| matches!(v, Value::Noted(_)));
        for (i, value) in noted {
            let column = &event.table.columns[i].name;
            for note in value.notes() {
                match note {
                    Note::Reselected if side == "after" => reselected.push(column),
                    Note::Reselected => {}
                    Note::ArrayBounds(text) => {
                        row_bounds.insert(column.clone(), Json::String(text.clone()));
                    }
                }
            }
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
