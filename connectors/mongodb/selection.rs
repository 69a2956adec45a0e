//! The collection selection on the server's side: the change stream's `$match` stage, and what a
//! collection-level change (a rename, a drop) means for the selection.

use mongodb::bson::{doc, Bson, Document};

use crate::config::{CollectionPattern, CollectionSelection};

/// Logs a collection-level change. A rename into the selection brings documents that no event
/// announces: they are published only by a new snapshot, which the warning says.
pub(super) fn report_ddl(
    selection: &CollectionSelection,
    operation: &str,
    namespace: &str,
    to: Option<&str>,
) {
    let arrived = to
        .filter(|to| selection.includes_namespace(to) && !selection.includes_namespace(namespace));
    match arrived {
        Some(to) => {
            tracing::warn!(%operation, from = %namespace, %to, "a collection was renamed into the selection: the documents it brought are not published until a new snapshot (move the position file away to take one)")
        }
        // A database-level change (dropDatabase) names no collection.
        None if !namespace.contains('.') || selection.includes_namespace(namespace) => {
            tracing::info!(%operation, %namespace, to = to.unwrap_or(""), "collection-level change: no document events to publish")
        }
        None => {}
    }
}

/// A `$match` stage keeping the selected collections' events, the signal collection's (`db.collection`,
/// when signals are on), renames into the selection (so that they can be reported), and the events that
/// concern a whole database or the stream itself (`dropDatabase`, `invalidate`), which name no collection.
pub fn selection_filter(selection: &CollectionSelection, signals: Option<&str>) -> Document {
    let selected = |field: &str| {
        let namespace = |pattern: &CollectionPattern| {
            Bson::Document(doc! {
                format!("{field}.db"): { "$regex": anchored(&pattern.database) },
                format!("{field}.coll"): { "$regex": anchored(&pattern.collection) },
            })
        };
        let include: Vec<Bson> = selection.include.iter().map(namespace).collect();
        let exclude: Vec<Bson> = selection.exclude.iter().map(namespace).collect();
        let mut selected = doc! { "$or": include };
        if !exclude.is_empty() {
            selected = doc! { "$and": [selected, { "$nor": exclude }] };
        }
        selected
    };
    let selected_namespace = selected("ns");
    let mut renamed_into = selected("to");
    renamed_into.insert("operationType", "rename");
    let mut kept = vec![
        Bson::Document(selected_namespace),
        Bson::Document(renamed_into),
        Bson::Document(doc! { "operationType": { "$in": ["dropDatabase", "invalidate"] } }),
    ];
    if let Some((db, coll)) = signals.and_then(|name| name.split_once('.')) {
        kept.push(Bson::Document(doc! { "ns.db": db, "ns.coll": coll }));
    }
    doc! { "$match": { "$or": kept } }
}

/// A wildcard pattern (`*` for any run) as an anchored regular expression.
fn anchored(pattern: &str) -> String {
    let mut regex = String::from("^");
    for (i, part) in pattern.split('*').enumerate() {
        if i > 0 {
            regex.push_str(".*");
        }
        for c in part.chars() {
            if "\\^$.|?*+()[]{}".contains(c) {
                regex.push('\\');
            }
            regex.push(c);
        }
    }
    regex.push('$');
    regex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_become_anchored_regexes_with_the_rest_escaped() {
        assert_eq!(anchored("shop"), "^shop$");
        assert_eq!(anchored("*"), "^.*$");
        assert_eq!(anchored("people.v2*"), "^people\\.v2.*$");
        assert_eq!(anchored("a(b)"), "^a\\(b\\)$");
    }

    #[test]
    fn the_filter_keeps_selected_collections_and_stream_level_events() {
        let selection = CollectionSelection {
            include: vec![CollectionPattern::parse("shop.*").unwrap()],
            exclude: vec![CollectionPattern::parse("shop.audit").unwrap()],
        };
        let stage = selection_filter(&selection, None);
        let text = stage.to_string();
        assert!(
            text.contains(r#""ns.db": { "$regex": "^shop$" }"#),
            "{text}"
        );
        assert!(text.contains(r#""$nor": [{ "ns.db": { "$regex": "^shop$" }, "ns.coll": { "$regex": "^audit$" } }]"#), "{text}");
        assert!(
            text.contains(r#""$in": ["dropDatabase", "invalidate"]"#),
            "{text}"
        );
        assert!(
            text.contains(r#""to.db": { "$regex": "^shop$" }, "to.coll": { "$regex": "^.*$" } }]"#)
                && text.contains(r#""operationType": "rename""#),
            "renames into the selection are kept: {text}"
        );
    }

    #[test]
    fn the_filter_keeps_the_signal_collection_even_when_the_selection_excludes_it() {
        let selection = CollectionSelection {
            include: vec![CollectionPattern::parse("shop.*").unwrap()],
            exclude: vec![CollectionPattern::parse("shop.sluice_signals").unwrap()],
        };
        let without = selection_filter(&selection, None).to_string();
        assert!(
            !without.contains(r#""ns.coll": "sluice_signals""#),
            "{without}"
        );
        let with = selection_filter(&selection, Some("shop.sluice_signals")).to_string();
        assert!(
            with.contains(r#"{ "ns.db": "shop", "ns.coll": "sluice_signals" }"#),
            "{with}"
        );
    }
}
