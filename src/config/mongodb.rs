//! `[source]` with `kind = "mongodb"`.

use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::{
    check_snapshot_bounds, no_patterns, wildcard_match, EnvString, SnapshotMode, SourceKind,
};

/// `[source]` with `kind = "mongodb"`: a replica set or sharded cluster, read through change streams.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongodbSourceConfig {
    pub kind: SourceKind,
    /// A MongoDB connection string (`mongodb://` or `mongodb+srv://`); `${MONGODB_PASSWORD}` keeps the
    /// password out of the file.
    pub url: Spanned<EnvString>,
    /// How changes are read: `change_streams` (the default), or `oplog` (tailing `local.oplog.rs`, for
    /// servers where change streams are not available).
    #[serde(default = "default_capture")]
    pub capture: Spanned<Capture>,
    /// `db.collection` names; `*` matches any run of characters (`shop.*`, `*.orders`).
    pub collections: Spanned<Vec<Spanned<EnvString>>>,
    /// Collections `collections` matches that are not captured after all (same pattern syntax).
    #[serde(default = "no_patterns")]
    pub exclude_collections: Spanned<Vec<Spanned<EnvString>>>,
    /// What an update event's `after` holds (the change stream's `fullDocument` option).
    #[serde(default)]
    pub full_document: FullDocument,
    /// Whether events carry the document as it was before the change (`fullDocumentBeforeChange`;
    /// needs MongoDB 6.0+ and `changeStreamPreAndPostImages` on the collection).
    #[serde(default)]
    pub before: BeforeImage,
    /// Whether the documents already in the collections are published first (`initial`, the default),
    /// never, only (`initial_only`), or again when the stored token is gone from the oplog (`when_needed`).
    #[serde(default = "default_snapshot")]
    pub snapshot: Spanned<SnapshotMode>,
    /// How many collections (or `_id` ranges of large ones) the snapshot reads at once.
    #[serde(default = "default_snapshot_connections")]
    pub snapshot_connections: Spanned<u8>,
    /// A collection estimated larger than this is read in `_id` ranges of about this many documents,
    /// which the snapshot's readers share, and which an interrupted snapshot resumes one by one.
    #[serde(default = "default_snapshot_chunk_documents")]
    pub snapshot_chunk_documents: Spanned<u64>,
}

/// `source.capture`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capture {
    #[default]
    ChangeStreams,
    /// Tailing `local.oplog.rs`, for servers without change streams.
    Oplog,
}

/// `source.full_document`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FullDocument {
    /// Updates carry only what changed (`updateDescription`); `after` is null.
    Delta,
    /// The server looks the document up when it sends the event (Debezium's default): `after` is the
    /// document as it is then, which may already include later changes, or null if it is gone.
    #[default]
    UpdateLookup,
    /// The post-image recorded with the change, when the collection records them; else as `delta`.
    WhenAvailable,
    /// The post-image recorded with the change; the stream fails when one is missing.
    Required,
}

impl FullDocument {
    /// The driver's option value, or None for the server's default.
    pub fn option(self) -> Option<&'static str> {
        match self {
            FullDocument::Delta => None,
            FullDocument::UpdateLookup => Some("updateLookup"),
            FullDocument::WhenAvailable => Some("whenAvailable"),
            FullDocument::Required => Some("required"),
        }
    }
}

/// `source.before`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BeforeImage {
    /// No pre-images: `before` is null.
    #[default]
    Off,
    /// The pre-image when the collection records them.
    WhenAvailable,
    /// The pre-image; the stream fails when one is missing.
    Required,
}

impl BeforeImage {
    pub fn option(self) -> Option<&'static str> {
        match self {
            BeforeImage::Off => None,
            BeforeImage::WhenAvailable => Some("whenAvailable"),
            BeforeImage::Required => Some("required"),
        }
    }
}

fn default_capture() -> Spanned<Capture> {
    Spanned::new(0..0, Capture::ChangeStreams)
}

fn default_snapshot() -> Spanned<SnapshotMode> {
    Spanned::new(0..0, SnapshotMode::Initial)
}

fn default_snapshot_connections() -> Spanned<u8> {
    Spanned::new(0..0, 2)
}

fn default_snapshot_chunk_documents() -> Spanned<u64> {
    Spanned::new(0..0, 100_000)
}

/// A `db.collection` selector; either part may contain `*`. Database names cannot contain dots and
/// collection names can, so the first dot separates them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionPattern {
    pub database: String,
    pub collection: String,
}

impl CollectionPattern {
    pub fn parse(text: &str) -> Result<CollectionPattern, String> {
        match text.split_once('.') {
            Some((database, collection)) if !database.is_empty() && !collection.is_empty() => {
                Ok(CollectionPattern {
                    database: database.to_owned(),
                    collection: collection.to_owned(),
                })
            }
            _ => Err(format!(
                "`{text}` is not `db.collection` (for example `shop.orders` or `shop.*`)"
            )),
        }
    }

    pub fn matches(&self, database: &str, collection: &str) -> bool {
        wildcard_match(&self.database, database) && wildcard_match(&self.collection, collection)
    }
}

/// Which collections are captured.
#[derive(Debug, Clone, Default)]
pub struct CollectionSelection {
    pub include: Vec<CollectionPattern>,
    pub exclude: Vec<CollectionPattern>,
}

impl CollectionSelection {
    pub fn includes(&self, database: &str, collection: &str) -> bool {
        self.include.iter().any(|p| p.matches(database, collection))
            && !self.exclude.iter().any(|p| p.matches(database, collection))
    }

    /// Whether `db.collection` is selected (the first dot separates them).
    pub fn includes_namespace(&self, namespace: &str) -> bool {
        namespace
            .split_once('.')
            .is_some_and(|(database, collection)| self.includes(database, collection))
    }
}

impl MongodbSourceConfig {
    pub fn selection(&self) -> CollectionSelection {
        // Checked in `problems`: every entry parses.
        let parse_all = |patterns: &Spanned<Vec<Spanned<EnvString>>>| {
            patterns
                .get_ref()
                .iter()
                .filter_map(|p| CollectionPattern::parse(p.get_ref().as_str()).ok())
                .collect()
        };
        CollectionSelection {
            include: parse_all(&self.collections),
            exclude: parse_all(&self.exclude_collections),
        }
    }

    pub(super) fn problems(&self, report: &mut impl FnMut(&str, Range<usize>, String)) {
        let url = self.url.get_ref().as_str();
        if let Err(message) = check_mongodb_url(url) {
            report("source.url", self.url.span(), message);
        }
        if *self.capture.get_ref() == Capture::Oplog {
            // The oplog records neither pre-images nor post-images: only a lookup can give `after`.
            if self.before != BeforeImage::Off {
                report(
                    "source.before",
                    self.capture.span(),
                    "capture = \"oplog\" has no pre-images: set `before = \"off\"`, or use \
                     `change_streams` (MongoDB 6.0+)"
                        .into(),
                );
            }
            if matches!(
                self.full_document,
                FullDocument::WhenAvailable | FullDocument::Required
            ) {
                report(
                    "source.full_document",
                    self.capture.span(),
                    "capture = \"oplog\" has no post-images: use `update_lookup` or `delta`".into(),
                );
            }
        }
        if self.collections.get_ref().is_empty() {
            report(
                "source.collections",
                self.collections.span(),
                "lists no collections: name at least one `db.collection`".into(),
            );
        }
        for (key, patterns) in [
            ("source.collections", &self.collections),
            ("source.exclude_collections", &self.exclude_collections),
        ] {
            for pattern in patterns.get_ref() {
                if let Err(message) = CollectionPattern::parse(pattern.get_ref().as_str()) {
                    report(key, pattern.span(), message);
                }
            }
        }
        check_snapshot_bounds(
            &self.snapshot_connections,
            &self.snapshot_chunk_documents,
            "source.snapshot_chunk_documents",
            report,
        );
    }
}

/// A connection string the driver will accept the shape of; the driver checks the options.
fn check_mongodb_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("mongodb://")
        .or_else(|| url.strip_prefix("mongodb+srv://"))
        .ok_or_else(|| {
            "must start with `mongodb://` or `mongodb+srv://` (for example \
             `mongodb://sluice:${MONGODB_PASSWORD}@db1:27017,db2:27017/?replicaSet=rs0`)"
                .to_owned()
        })?;
    let hosts = rest.rsplit_once('@').map_or(rest, |(_, hosts)| hosts);
    let hosts = hosts.split(['/', '?']).next().unwrap_or("");
    if hosts.is_empty() {
        return Err("names no host".into());
    }
    mongodb::options::ConnectionString::parse(url)
        .map(|_| ())
        .map_err(|err| super::redact_secrets(&err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ParseError, Source};

    const GOOD: &str = r#"
[source]
kind = "mongodb"
url = "mongodb://127.0.0.1:27017/?replicaSet=rs0"
collections = ["shop.*", "crm.people.v2"]
exclude_collections = ["shop.audit*"]
before = "when_available"

[sink]
kind = "kafka"
brokers = "127.0.0.1:9092"
topic_prefix = "app"
dead_letter_topic = "app.dlq"

[positions]
dir = "/tmp/sluice"
"#;

    fn problems(text: &str) -> Vec<String> {
        match Config::parse(text) {
            Err(ParseError::Invalid(problems)) => problems.iter().map(|p| p.to_string()).collect(),
            Err(ParseError::Syntax(message)) => vec![message],
            Ok(_) => Vec::new(),
        }
    }

    #[test]
    fn a_mongodb_source_parses_with_its_defaults() {
        let config = Config::parse(GOOD).unwrap();
        let Source::Mongodb(source) = &config.source else {
            panic!("{:?}", config.source)
        };
        assert_eq!(*source.capture.get_ref(), Capture::ChangeStreams);
        assert_eq!(source.full_document, FullDocument::UpdateLookup);
        assert_eq!(source.before, BeforeImage::WhenAvailable);
        assert_eq!(*source.snapshot.get_ref(), SnapshotMode::Initial);
        assert_eq!(*source.snapshot_connections.get_ref(), 2);
        assert_eq!(*source.snapshot_chunk_documents.get_ref(), 100_000);
        assert!(config.postgres().is_none());
        let selection = source.selection();
        assert!(selection.includes("shop", "orders"));
        assert!(!selection.includes("shop", "audit_2024"), "excluded");
        assert!(
            selection.includes("crm", "people.v2"),
            "a dot belongs to the collection"
        );
        assert!(!selection.includes("crm", "people"));
        assert!(!selection.includes("other", "orders"));
    }

    #[test]
    fn postgres_keys_are_refused_under_a_mongodb_source_and_the_other_way_round() {
        let with_slot = GOOD.replace("before =", "slot = \"s\"\nbefore =");
        let found = problems(&with_slot);
        assert!(found[0].contains("unknown field `slot`"), "{found:?}");
        assert!(found[0].starts_with("line 7"), "{found:?}");
        let unknown_kind = GOOD.replace("\"mongodb\"", "\"mysql\"");
        let found = problems(&unknown_kind);
        assert!(
            found[0].contains("unknown variant `mysql`, expected `postgres` or `mongodb`"),
            "{found:?}"
        );
    }

    #[test]
    fn bad_values_are_reported_with_their_lines() {
        let text = GOOD
            .replace("mongodb://127.0.0.1:27017/?replicaSet=rs0", "postgres://x")
            .replace("\"shop.*\", ", "\"shop\", ")
            .replace(
                "before = \"when_available\"",
                "capture = \"oplog\"\nbefore = \"required\"\nsnapshot_chunk_documents = 10",
            );
        let found = problems(&text);
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(
            found[0].starts_with("line 4") && found[0].contains("must start with `mongodb://`"),
            "{found:?}"
        );
        assert!(
            found[1].starts_with("line 5") && found[1].contains("`shop` is not `db.collection`"),
            "{found:?}"
        );
        assert!(
            found[2].starts_with("line 7") && found[2].contains("\"oplog\" has no pre-images"),
            "{found:?}"
        );
        assert!(
            found[3].starts_with("line 9")
                && found[3].contains("source.snapshot_chunk_documents")
                && found[3].contains("is 10; must be at least 1000"),
            "{found:?}"
        );

        let empty = GOOD.replace("[\"shop.*\", \"crm.people.v2\"]", "[]");
        assert!(problems(&empty)[0].contains("lists no collections"));
        let no_host = GOOD.replace("127.0.0.1:27017", "");
        assert!(
            problems(&no_host)[0].contains("names no host"),
            "{:?}",
            problems(&no_host)
        );
        let bad_option = GOOD.replace("replicaSet=rs0", "w=banana&journal=maybe");
        assert!(
            problems(&bad_option)[0].starts_with("line 4"),
            "{:?}",
            problems(&bad_option)
        );
    }

    #[test]
    fn the_password_never_appears_in_a_url_problem() {
        let text = GOOD.replace(
            "mongodb://127.0.0.1:27017/?replicaSet=rs0",
            "mongodb://u:hunter2@127.0.0.1:27017/?journal=maybe",
        );
        let found = problems(&text);
        assert!(!found.is_empty());
        assert!(!found.join(" ").contains("hunter2"), "{found:?}");
    }
}
