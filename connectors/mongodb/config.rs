//! `[source]` with `kind = "mongodb"`.

use serde::de::IgnoredAny;
use serde::Deserialize;
use sluice_core::config::{
    check_snapshot_bounds, no_patterns, redact_secrets, wildcard_match, EnvString, ProblemSink,
    SnapshotMode, Spanned,
};

/// `[source]` with `kind = "mongodb"`: a replica set or sharded cluster, read through change streams.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongodbSourceConfig {
    /// Read by the application to choose the connector.
    pub kind: IgnoredAny,
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
    /// `db.collection` of the signal collection (documents `{_id, type, data}`, as Debezium's): documents
    /// inserted there are instructions (`execute-snapshot`, …), never published. Unset: no signals.
    #[serde(default)]
    pub signal_collection: Option<Spanned<EnvString>>,
    /// Documents per chunk of an incremental snapshot (Debezium's incremental.snapshot.chunk.size).
    #[serde(default = "default_incremental_chunk_rows")]
    pub incremental_chunk_rows: Spanned<u64>,
    /// Whether a collection that joins the selection while a position is stored (a config change) is
    /// snapshotted incrementally by itself at the next start. Needs `signal_collection` (the watermarks
    /// go there): without one it is off.
    #[serde(default = "default_snapshot_new_tables")]
    pub snapshot_new_tables: bool,
}

/// A chunk's documents wait in memory for the stream to reach its high watermark.
const MAX_INCREMENTAL_CHUNK_ROWS: u64 = 100_000;

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

fn default_snapshot_new_tables() -> bool {
    true
}

fn default_incremental_chunk_rows() -> Spanned<u64> {
    Spanned::new(0..0, 1024)
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
    /// The signal collection's `db.collection`, when set (checked in `problems`).
    pub fn signal_collection(&self) -> Option<String> {
        self.signal_collection
            .as_ref()
            .map(|name| name.get_ref().as_str().trim().to_owned())
    }

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

    /// Every value-level problem of `[source]`.
    pub fn problems(&self, report: &mut ProblemSink<'_>) {
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
        if let Some(name) = &self.signal_collection {
            if let Err(message) = check_signal_collection(name.get_ref().as_str().trim()) {
                report("source.signal_collection", name.span(), message);
            }
        }
        let chunk_rows = *self.incremental_chunk_rows.get_ref();
        if chunk_rows == 0 || chunk_rows > MAX_INCREMENTAL_CHUNK_ROWS {
            report(
                "source.incremental_chunk_rows",
                self.incremental_chunk_rows.span(),
                format!("must be between 1 and {MAX_INCREMENTAL_CHUNK_ROWS}: each chunk's documents wait in memory for the stream"),
            );
        }
    }
}

/// One collection, named exactly: signals are read from it and watermarks written to it.
fn check_signal_collection(text: &str) -> Result<(), String> {
    let pattern = CollectionPattern::parse(text)?;
    if text.contains('*') {
        return Err(format!(
            "`{text}` has a wildcard: name one collection, for example `shop.sluice_signals`"
        ));
    }
    if pattern.collection.starts_with("system.") || pattern.collection.contains('$') {
        return Err(format!(
            "`{text}` is not a collection sluice can write to: name an ordinary one, for example `shop.sluice_signals`"
        ));
    }
    Ok(())
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
        .map_err(|err| redact_secrets(&err.to_string()))
}
