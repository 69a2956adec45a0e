//! Connecting: a client for the configured URL, what the deployment is (a replica set, a mongos or a
//! standalone server, which has no change streams), and the connected source every reader works on.

use std::sync::Arc;

use mongodb::bson::doc;
use mongodb::options::ClientOptions;
use mongodb::Client;

use crate::config::{BeforeImage, Capture, CollectionSelection, FullDocument};
use crate::error::MongodbError;
use crate::snapshot::SnapshotShape;
use sluice_core::config::{redact_secrets, SnapshotMode};

/// What the reader needs from the config.
#[derive(Clone, Debug)]
pub struct MongodbSettings {
    pub url: String,
    pub selection: CollectionSelection,
    pub full_document: FullDocument,
    pub before: BeforeImage,
    pub capture: Capture,
    pub snapshot: SnapshotMode,
    pub snapshot_shape: SnapshotShape,
    /// `db.collection` of the signal collection; None: signals are off. Never in `selection`.
    pub signal_collection: Option<String>,
    /// Documents per chunk of an incremental snapshot.
    pub incremental_chunk_rows: usize,
    /// Collections that joined the selection since the last run are snapshotted incrementally (only
    /// with a signal collection).
    pub snapshot_new_tables: bool,
}

impl MongodbSettings {
    /// Whether the stream hands on changes of `db.collection`: the selected collections', and the
    /// signal collection's (which are instructions, never published).
    pub fn streams(&self, database: &str, collection: &str) -> bool {
        self.selection.includes(database, collection)
            || self.is_signal_collection(database, collection)
    }

    pub fn is_signal_collection(&self, database: &str, collection: &str) -> bool {
        self.signal_collection
            .as_deref()
            .and_then(|name| name.split_once('.'))
            .is_some_and(|(db, coll)| db == database && coll == collection)
    }
}

/// A connected deployment: what the change-stream reader, the oplog reader and the snapshot read from.
pub struct MongodbSource {
    pub(super) client: Client,
    pub(super) settings: MongodbSettings,
    pub(super) replica_set: Option<Arc<str>>,
}

impl MongodbSource {
    /// Connects and asks the server what it is: a standalone server has no change streams.
    pub async fn connect(settings: MongodbSettings) -> Result<MongodbSource, MongodbError> {
        let shown = redact_secrets(&settings.url);
        let client = client(&settings.url).await?;
        let (replica_set, mongos) = topology(&client, &shown).await?;
        if replica_set.is_none() && !mongos {
            return Err(MongodbError::Standalone { url: shown });
        }
        tracing::info!(url = %shown, replica_set = replica_set.as_deref().unwrap_or("(mongos)"), "connected to MongoDB");
        Ok(MongodbSource {
            client,
            settings,
            replica_set,
        })
    }
}

/// A client for `url`, named `sluice` in the server's logs unless the URL names it.
pub async fn client(url: &str) -> Result<Client, MongodbError> {
    let mut options = ClientOptions::parse(url)
        .await
        .map_err(|err| MongodbError::Url(redact_secrets(&err.to_string())))?;
    options.app_name.get_or_insert_with(|| "sluice".to_owned());
    Client::with_options(options).map_err(|err| MongodbError::Url(redact_secrets(&err.to_string())))
}

/// The replica set's name, and whether the server is a mongos, from `hello`.
pub async fn topology(
    client: &Client,
    shown: &str,
) -> Result<(Option<Arc<str>>, bool), MongodbError> {
    let hello = client
        .database("admin")
        .run_command(doc! { "hello": 1 })
        .await
        .map_err(|err| MongodbError::Unreachable {
            url: shown.to_owned(),
            reason: redact_secrets(&err.to_string()),
        })?;
    let replica_set = hello.get_str("setName").ok().map(Arc::<str>::from);
    let mongos = hello.get_str("msg") == Ok("isdbgrid");
    Ok((replica_set, mongos))
}
