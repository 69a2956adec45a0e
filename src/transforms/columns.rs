//! `sluice validate` against the source: the columns transforms name (masked columns, the outbox table's
//! columns) compared with the captured tables, so that a typo is found before the first event.

use std::sync::Arc;

use sluice_core::event::Table;

use super::config::{TransformConfig, TransformKind};
use super::filter::Filter;
use super::wildcard_match;

/// One line per transform that names columns: `ok`, or `FAIL` with the key path and what is missing.
pub fn column_lines(
    transforms: &[TransformConfig],
    tables: &[Arc<Table>],
    topic_prefix: &str,
) -> Vec<String> {
    let mut lines = Vec::new();
    for (index, transform) in transforms.iter().enumerate() {
        let found = match transform.kind() {
            TransformKind::Mask => mask_problems(transform, tables),
            TransformKind::Outbox => outbox_problems(transform, tables),
            TransformKind::Filter => filter_problems(transform, tables, topic_prefix),
            _ => continue,
        };
        let kind = transform.kind().as_str();
        if found.is_empty() {
            lines.push(format!(
                "ok   transforms[{index}] ({kind}): every column it names is captured"
            ));
        }
        for (key, problem) in found {
            lines.push(format!("FAIL transforms[{index}].{key}: {problem}"));
        }
    }
    lines
}

/// Each `schema.table.column` pattern must match a column of a captured table.
fn mask_problems(
    transform: &TransformConfig,
    tables: &[Arc<Table>],
) -> Vec<(&'static str, String)> {
    let patterns = transform.columns.iter().flat_map(|list| list.get_ref());
    patterns
        .filter_map(|pattern| {
            let pattern = pattern.get_ref().as_str();
            let mut parts = pattern.splitn(3, '.');
            let (schema, table, column) = (parts.next()?, parts.next()?, parts.next()?);
            let matches = tables.iter().any(|t| {
                wildcard_match(schema, &t.schema)
                    && wildcard_match(table, &t.name)
                    && t.columns.iter().any(|c| wildcard_match(column, &c.name))
            });
            (!matches).then(|| {
                (
                    "columns",
                    format!("`{pattern}` names no column of a captured table"),
                )
            })
        })
        .collect()
}

/// Each column a condition reads by name must be a column of a table the filter applies to (by the
/// tables' own topics: a filter after a route is not looked up).
fn filter_problems(
    transform: &TransformConfig,
    tables: &[Arc<Table>],
    topic_prefix: &str,
) -> Vec<(&'static str, String)> {
    let Some(Ok(filter)) = transform
        .condition
        .as_ref()
        .map(|c| Filter::new(c.get_ref().as_str()))
    else {
        return Vec::new();
    };
    let patterns = transform.topic_patterns();
    let applies = |table: &&Arc<Table>| {
        let topic = crate::avro::topic_name(topic_prefix, table);
        patterns
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| wildcard_match(p, &topic)))
    };
    let filtered: Vec<&Arc<Table>> = tables.iter().filter(applies).collect();
    if filtered.is_empty() {
        return Vec::new();
    }
    filter
        .named_columns()
        .into_iter()
        .filter(|name| {
            !filtered
                .iter()
                .any(|t| t.columns.iter().any(|c| c.name == *name))
        })
        .map(|name| {
            let tables: Vec<String> = filtered.iter().map(|t| t.qualified_name()).collect();
            let message = format!("reads `{name}`, a column of none of {}", tables.join(", "));
            ("condition", message)
        })
        .collect()
}

/// The outbox table must be captured and have every column the router reads.
fn outbox_problems(
    transform: &TransformConfig,
    tables: &[Arc<Table>],
) -> Vec<(&'static str, String)> {
    let name = transform
        .table
        .as_ref()
        .map_or("", |t| t.get_ref().as_str());
    let Some(table) = tables.iter().find(|t| t.qualified_name() == name) else {
        return vec![(
            "table",
            format!("`{name}` is not a captured table (add it to `source.tables`)"),
        )];
    };
    let column =
        |setting: &Option<sluice_core::config::Spanned<sluice_core::config::EnvString>>,
         default: &'static str| {
            setting
                .as_ref()
                .map_or(default.to_owned(), |s| s.get_ref().as_str().to_owned())
        };
    [
        ("id_column", column(&transform.id_column, "id")),
        ("key_column", column(&transform.key_column, "aggregateid")),
        ("type_column", column(&transform.type_column, "type")),
        (
            "payload_column",
            column(&transform.payload_column, "payload"),
        ),
        (
            "route_by_column",
            column(&transform.route_by_column, "aggregatetype"),
        ),
    ]
    .into_iter()
    .filter(|(_, column)| !table.columns.iter().any(|c| c.name == *column))
    .map(|(key, column)| (key, format!("{name} has no column `{column}`")))
    .collect()
}
