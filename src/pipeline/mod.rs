//! `sluice run`: source → Avro encoding → Kafka sink, with positions acknowledged only after the broker has
//! every event up to them.
//!
//! Three tasks: the source reader (sends events, answers the server), this module's publishing loop
//! (encodes, produces, routes failures to the dead-letter topic) and the acknowledger (writes the position
//! file, then lets the reader tell the server). A stop request ends the reader at a transaction boundary;
//! the loop drains, waits for the broker, and the final position is stored.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::positions::{now_ms, PositionError, PositionStore};
use sluice_core::source::{Committer, SourceContext};
use sluice_core::Source;
use sluice_mongodb::source::MongodbConnector;
use sluice_postgres::source::PostgresConnector;
use tokio::sync::{mpsc, oneshot, watch};

pub mod ack;
mod documents;
pub(crate) use documents::{check_document_contract, collection_of_topic};
mod schemas;

use crate::avro::{self, EncodeError, EncodeReason, EnvelopeContext, SchemaRef, TableSchemas};
use crate::config::{self, Config, SinkKind};
use crate::contracts::{BoundContract, ContractError, Contracts};
use crate::deadletter::{self, DeadLetter, Failure, Stage};
use crate::metrics::Metrics;
use crate::registry::{RegistryClient, RegistryError, RegistrySettings, SchemaPart};
use crate::shutdown::StopDeadline;
use crate::sink::{
    is_too_large, FailedDelivery, MessageKind, Outgoing, Sink, SinkError, SinkSettings,
};
use ack::AckTracker;
use schemas::SchemaDirectory;
use sluice_core::event::{
    ChangeEvent, DecodingMessage, Lsn, Op, Position, SnapshotMarker, SourceEvent, Table, Value,
};

/// Events buffered between the reader and the publishing loop.
const EVENT_BUFFER: usize = 4096;
/// How often the broker is asked whether it answers, and how long it has to answer.
const BROKER_PROBE_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Position(#[from] PositionError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The source failed; its message says what to do.
    #[error(transparent)]
    Source(Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("the dead-letter topic `{topic}` refused a message ({reason}); stopping without acknowledging it")]
    DeadLetterRefused { topic: String, reason: String },
    #[error(transparent)]
    Contract(#[from] ContractError),
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
    #[error("cannot write the schema file {path}: {source}")]
    SchemaFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the schemas topic `{topic}` refused a schema ({reason}); consumers could not read the messages that use it, so sluice stops")]
    SchemaTopicRefused { topic: String, reason: String },
    #[error("the schema registry refused the dead-letter schema: {0}")]
    DeadLetterSchema(String),
    #[error("stopped while the schema registry was unreachable: {0}")]
    StoppedWaitingForRegistry(RegistryError),
    #[error("the broker did not acknowledge {outstanding} messages within the shutdown bound ({timeout:?}); they will be sent again on restart")]
    DrainTimeout { outstanding: u64, timeout: Duration },
    #[error("the source reader stopped unexpectedly")]
    ReaderGone,
}

impl PipelineError {
    fn source(err: impl std::error::Error + Send + Sync + 'static) -> PipelineError {
        PipelineError::Source(Box::new(err))
    }
}

/// Runs until `stop` becomes true (then drains and returns Ok) or something fails. The config's one
/// match on the source kind: everything after it is the same for every source.
pub async fn run(config: &Config, stop: watch::Receiver<bool>) -> Result<(), PipelineError> {
    match &config.source {
        config::Source::Postgres(source) => {
            let connector = PostgresConnector::new(source).map_err(PipelineError::source)?;
            run_source(config, connector, stop).await
        }
        config::Source::Mongodb(source) => {
            let prefix = config.sink.topic_prefix.get_ref().as_str();
            run_source(config, MongodbConnector::new(source, prefix), stop).await
        }
    }
}

/// The pipeline for any source: plan from the stored position, connect the sink, read, publish, and store
/// each position once the broker has every event up to it.
pub async fn run_source<S: Source>(
    config: &Config,
    source: S,
    stop: watch::Receiver<bool>,
) -> Result<(), PipelineError> {
    let dir = std::path::Path::new(config.positions.dir.get_ref().as_str());
    let store = Arc::new(PositionStore::open(dir, &source.position_key())?);
    let stored = store.load()?;
    let stored_position = stored.as_ref().map(|s| s.position.clone());
    let Some(plan) = source.plan(stored, &store).map_err(PipelineError::source)? else {
        return Ok(());
    };
    let Started {
        mut publisher,
        mut failures,
        tracker,
        metrics,
        _broker_watch,
    } = start(config, &stop, S::CONNECTOR).await?;

    let (events_tx, events_rx) = mpsc::channel(EVENT_BUFFER);
    let context = SourceContext {
        events: events_tx,
        stop: stop.clone(),
        stop_grace: config.shutdown_timeout() / 2,
        metrics: metrics.clone(),
        store: store.clone(),
    };
    let (committer, reading) = source.start(plan, context);
    let reader = tokio::spawn(async move { reading.await.map_err(PipelineError::source) });
    if let Some(lsn) = stored_position.as_ref().and_then(Position::postgres_lsn) {
        metrics.position_stored(lsn);
    }
    let (finish_tx, finish_rx) = oneshot::channel();
    let acknowledger = tokio::spawn(acknowledge(
        tracker.clone(),
        metrics.clone(),
        store.clone(),
        committer,
        stored_position,
        finish_rx,
    ));
    finish_run(
        &mut publisher,
        &mut failures,
        events_rx,
        reader,
        acknowledger,
        finish_tx,
    )
    .await?;
    source.stopped(&store).await.map_err(PipelineError::source)
}

/// What every source's run shares: the sink with its failure channel, the schema directory and the
/// publishing loop's state, set up from the config.
struct Started {
    publisher: Publisher,
    failures: mpsc::UnboundedReceiver<FailedDelivery>,
    tracker: Arc<AckTracker>,
    metrics: Arc<Metrics>,
    /// Aborted when dropped, at the end of the run.
    _broker_watch: AbortOnDrop,
}

/// Loads the contracts, starts the API, connects the sink and makes sure the dead-letter topic exists.
async fn start(
    config: &Config,
    stop: &watch::Receiver<bool>,
    connector: &'static str,
) -> Result<Started, PipelineError> {
    let contracts = Contracts::load(&config.contracts_dir())?;
    if config.avro.contracts_dir.is_some() && !config.contracts_dir().is_dir() {
        tracing::warn!(dir = %config.contracts_dir().display(), "avro.contracts_dir does not exist: no contracts are enforced");
    }
    for contract in contracts.iter() {
        tracing::info!(topic = %contract.topic, file = %contract.path.display(), "contract in force");
    }
    if matches!(config.source, config::Source::Mongodb(_)) {
        documents::check_contracts(&contracts, config.sink.topic_prefix.get_ref().as_str())?;
    }
    let tracker = Arc::new(AckTracker::new());
    let metrics = Arc::new(Metrics::default());
    metrics.follow(tracker.clone());
    if let Some(api) = &config.api {
        let address = crate::api::serve(api.address.get_ref().as_str(), metrics.clone()).await?;
        tracing::info!(%address, "api listening: /metrics, /health/live, /health/ready");
    }
    let (mut sink, failures) = Sink::new(
        SinkSettings::from_config(config),
        tracker.clone(),
        metrics.clone(),
    )?;
    sink.check_reachable(Duration::from_secs(15))?;
    match config.sink.kind.get_ref() {
        SinkKind::Kafka => tracing::info!(brokers = %config.sink.brokers(), "broker reachable"),
        SinkKind::Blackhole => {
            tracing::warn!("sink.kind = \"blackhole\": events are acknowledged and thrown away")
        }
    }
    let dead_letter_topic = config.sink.dead_letter_topic.get_ref().as_str().to_owned();
    sink.ensure_topic(&dead_letter_topic, stop).await?;
    let stop_deadline = StopDeadline::follow(stop.clone(), config.shutdown_timeout());
    sink.bound_stop(stop_deadline.clone());
    let broker_watch = AbortOnDrop(tokio::spawn(watch_broker(
        sink.probe(&dead_letter_topic),
        metrics.clone(),
    )));
    let schemas = match RegistrySettings::from_config(config) {
        Some(settings) => SchemaDirectory::Registry {
            client: RegistryClient::new(&settings)?,
            strategy: config.avro.subject_name_strategy,
        },
        None => SchemaDirectory::topic(
            config.schemas_topic(),
            std::path::PathBuf::from(config.positions.dir.get_ref().as_str()),
        ),
    };
    let topic_prefix = config.sink.topic_prefix.get_ref().as_str();
    let transaction_metadata = config.postgres().is_some_and(|pg| pg.transaction_metadata);
    let publisher = Publisher {
        sink,
        schemas,
        tracker: tracker.clone(),
        connector,
        topic_prefix: topic_prefix.to_owned(),
        dead_letter_topic,
        dead_letter_schema: None,
        contracts,
        encodings: HashMap::new(),
        collections: HashMap::new(),
        typed_documents: HashMap::new(),
        messages: FixedTopic::new(format!("{topic_prefix}.message"), avro::message_schemas),
        transactions: transaction_metadata.then(|| {
            FixedTopic::new(
                format!("{topic_prefix}.transaction"),
                avro::transaction_schemas,
            )
        }),
        open_transaction: None,
        key_buf: Vec::with_capacity(256),
        value_buf: Vec::with_capacity(4096),
        lsn_text: LsnText::default(),
        commit_lsn_text: LsnText::default(),
        stop: stop.clone(),
        events: 0,
        metrics: metrics.clone(),
        stop_deadline,
        shutdown_timeout: config.shutdown_timeout(),
    };
    Ok(Started {
        publisher,
        failures,
        tracker,
        metrics,
        _broker_watch: broker_watch,
    })
}

/// Writes each newly acknowledged position to the store (unless the committer stores it itself), then
/// commits it to the source. Writes coalesce: while one is in progress, later acknowledgements wait and the
/// next write covers them all. When `finish` fires it writes what is acknowledged by then and returns;
/// dropping the committer lets the reader close the stream. A failed final write is an error: the broker
/// has events the file does not know of.
async fn acknowledge(
    tracker: Arc<AckTracker>,
    metrics: Arc<Metrics>,
    store: Arc<PositionStore>,
    committer: Arc<dyn Committer>,
    start: Option<Position>,
    mut finish: oneshot::Receiver<()>,
) -> Result<Option<Position>, PositionError> {
    let mut saved = start;
    let mut finishing = false;
    loop {
        let mut changed = pin!(tracker.changed());
        changed.as_mut().enable();
        // The tracker only moves forward: a position it reports that differs from the saved one is newer.
        if let Some(position) = tracker.acknowledged().filter(|p| Some(p) != saved.as_ref()) {
            if !committer.stores(&position) {
                committer.commit(&position);
                saved = Some(position);
                continue;
            }
            let writer = store.clone();
            let to_write = position.clone();
            let written = tokio::task::spawn_blocking(move || writer.save(to_write))
                .await
                .unwrap_or_else(|err| {
                    Err(PositionError::Write {
                        path: store.path().to_owned(),
                        source: std::io::Error::other(err.to_string()),
                    })
                });
            match written {
                Ok(()) => {
                    if let Some(lsn) = position.postgres_lsn() {
                        metrics.position_stored(lsn);
                    }
                    committer.commit(&position);
                    saved = Some(position);
                    continue;
                }
                Err(err) if finishing => return Err(err),
                // Without the file the position must not reach the server either: stay behind and retry.
                Err(err) => {
                    tracing::error!(error = %err, "cannot store the position; retrying")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = &mut finish, if !finishing => finishing = true,
            }
            continue;
        }
        if finishing {
            return Ok(saved);
        }
        tokio::select! {
            _ = changed => {}
            _ = &mut finish => finishing = true,
        }
    }
}

/// Publishes what the reader sends until it ends or publishing fails, then has the acknowledger store the
/// final position, waits for both tasks and logs the run's totals. The first error wins, in that order:
/// publishing, reading, storing.
async fn finish_run(
    publisher: &mut Publisher,
    failures: &mut mpsc::UnboundedReceiver<FailedDelivery>,
    events: mpsc::Receiver<SourceEvent>,
    reader: tokio::task::JoinHandle<Result<(), PipelineError>>,
    acknowledger: tokio::task::JoinHandle<Result<Option<Position>, PositionError>>,
    finish: oneshot::Sender<()>,
) -> Result<(), PipelineError> {
    let published = publisher.publish_all(events, failures).await;
    if let Err(err) = &published {
        tracing::error!(error = %err, "publishing failed: stopping the reader");
    }
    // `publish_all` has dropped the event channel's receiver, which ends the reader if it is still reading.
    // The acknowledger stores the final position and ends; the reader then reports it to the server and closes.
    let _ = finish.send(());
    let acknowledged = acknowledger.await.map_err(|_| PipelineError::ReaderGone)?;
    let read = reader.await.map_err(|_| PipelineError::ReaderGone)?;
    let metrics = &publisher.metrics;
    tracing::info!(
        events = publisher.events,
        dead_letters = metrics.dead_letter_total(),
        dead_letters_by_stage_and_table = %metrics.dead_letter_breakdown(),
        acknowledged = %acknowledged_text(&acknowledged),
        "pipeline stopped"
    );
    published?;
    read?;
    acknowledged?;
    Ok(())
}

/// The final acknowledged position, for the last log line.
fn acknowledged_text(acknowledged: &Result<Option<Position>, PositionError>) -> String {
    match acknowledged {
        Ok(Some(position)) => position.to_string(),
        Ok(None) => "none".to_owned(),
        Err(_) => "not stored".to_owned(),
    }
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Checks every few seconds whether the broker answers: for `/health/ready`, and for one log line each
/// time that changes (while it does not, events wait in the producer and reading pauses when it is full).
/// A delivery report since the last check is an answer; otherwise a metadata request is sent. Both count,
/// because a broker working through a backlog answers that request only after the produce requests
/// queued before it on the same connection.
async fn watch_broker(probe: crate::sink::BrokerProbe, metrics: Arc<Metrics>) {
    let probe = Arc::new(probe);
    let mut reachable = true;
    loop {
        tokio::time::sleep(BROKER_PROBE_INTERVAL).await;
        let delivering = metrics
            .since_last_delivery_ms()
            .is_some_and(|ms| ms < BROKER_PROBE_INTERVAL.as_millis() as i64);
        let answers = delivering || {
            let asking = probe.clone();
            tokio::task::spawn_blocking(move || asking.answers(BROKER_PROBE_INTERVAL))
                .await
                .unwrap_or(false)
        };
        if answers != reachable {
            reachable = answers;
            metrics.set_broker_reachable(answers);
            if answers {
                tracing::info!("broker reachable again: acknowledgements resume");
            } else {
                tracing::warn!(timeout = ?BROKER_PROBE_INTERVAL, "broker unreachable: events wait for it, nothing is acknowledged to the source meanwhile");
            }
        }
    }
}

/// The text of the last LSN it was asked for, formatted again only when the LSN changes: a snapshot's
/// rows share one LSN and a transaction's events one commit LSN, and formatting took a seventh of the
/// publisher's time when done for every event.
#[derive(Default)]
struct LsnText {
    lsn: Option<Lsn>,
    text: String,
}

impl LsnText {
    fn of(&mut self, lsn: Lsn) -> &str {
        if self.lsn != Some(lsn) {
            self.text.clear();
            let _ = write!(self.text, "{lsn}");
            self.lsn = Some(lsn);
        }
        &self.text
    }
}

/// A topic whose records all have the same key and value schemas (messages, transaction metadata, a
/// MongoDB collection).
struct FixedTopic {
    topic: String,
    schemas: TableSchemas,
    /// Key and value schemas, once registered or published.
    refs: Option<(SchemaRef, SchemaRef)>,
}

impl FixedTopic {
    fn new(topic: String, schemas: fn(&str) -> TableSchemas) -> FixedTopic {
        FixedTopic::with_schemas(schemas(&topic))
    }

    fn with_schemas(schemas: TableSchemas) -> FixedTopic {
        FixedTopic {
            topic: schemas.topic.clone(),
            schemas,
            refs: None,
        }
    }
}

/// Which fixed topic a record goes to.
enum Fixed<'a> {
    Messages,
    Transactions,
    /// The topic of a MongoDB collection, by `db.collection`.
    Collection(&'a str),
}

/// The open transaction's change events so far, per table in first-seen order.
struct TransactionCounts {
    id: String,
    txid: u64,
    commit_lsn: Lsn,
    ts_ms: i64,
    per_table: Vec<(String, u64)>,
}

/// A table's topic and schemas, valid for one schema version.
struct TableEncoding {
    table: Arc<Table>,
    /// `schema.table`, for the metrics.
    name: Arc<str>,
    topic: String,
    key_schema: Option<SchemaRef>,
    value_schema: SchemaRef,
    /// The topic's contract, bound to this version's value schema.
    contract: Option<Arc<BoundContract>>,
}

struct Publisher {
    sink: Sink,
    schemas: SchemaDirectory,
    tracker: Arc<AckTracker>,
    /// Debezium's connector name for the source (`postgresql`, `mongodb`).
    connector: &'static str,
    topic_prefix: String,
    dead_letter_topic: String,
    /// Registered or published with the first dead letter.
    dead_letter_schema: Option<SchemaRef>,
    contracts: Contracts,
    encodings: HashMap<u32, TableEncoding>,
    /// MongoDB collections' topics, by `db.collection`.
    collections: HashMap<String, FixedTopic>,
    /// The `after` records of MongoDB collections that have a contract, by `db.collection`.
    typed_documents: HashMap<String, avro::TypedDocument>,
    /// `<topic_prefix>.message`, where logical decoding messages go.
    messages: FixedTopic,
    /// `<topic_prefix>.transaction`, with `source.transaction_metadata`.
    transactions: Option<FixedTopic>,
    /// The transaction whose events are being published, for its END record.
    open_transaction: Option<TransactionCounts>,
    key_buf: Vec<u8>,
    value_buf: Vec<u8>,
    /// The `sluice.lsn` and `sluice.commit_lsn` header texts.
    lsn_text: LsnText,
    commit_lsn_text: LsnText,
    stop: watch::Receiver<bool>,
    /// Change events taken from the source, for the final log line.
    events: u64,
    metrics: Arc<Metrics>,
    /// Set when a stop is requested: past it, nothing more is published or waited for.
    stop_deadline: StopDeadline,
    shutdown_timeout: Duration,
}

impl Publisher {
    async fn publish_all(
        &mut self,
        mut events: mpsc::Receiver<SourceEvent>,
        failures: &mut mpsc::UnboundedReceiver<FailedDelivery>,
    ) -> Result<(), PipelineError> {
        loop {
            if self.stop_deadline.passed() {
                tracing::warn!(bound = ?self.shutdown_timeout, "stopping: the shutdown bound is reached; events not yet published are read again on the next run");
                break;
            }
            tokio::select! {
                biased;
                Some(failure) = failures.recv() => self.handle_failure(failure).await?,
                event = events.recv() => match event {
                    Some(SourceEvent::Change(change)) => self.publish(change).await?,
                    Some(SourceEvent::Message(message)) => self.publish_message(message).await?,
                    Some(SourceEvent::Document(change)) => self.publish_document(change).await?,
                    Some(SourceEvent::Undecodable(change)) => self.dead_letter_undecodable(change).await?,
                    Some(SourceEvent::Commit { position, commit_time_us }) => {
                        // The END record belongs to the transaction: the position waits for it too.
                        if let Some(open) = self.open_transaction.take() {
                            self.publish_transaction_boundary(&open, true).await?;
                        }
                        self.tracker.close_group(position, commit_time_us)
                    }
                    Some(SourceEvent::Idle { position }) => self.tracker.close_group(position, None),
                    None => break,
                },
            }
        }
        self.drain(failures).await
    }

    /// Waits until the broker has acknowledged everything, still routing refused messages; once a stop
    /// is requested, no longer than its deadline.
    async fn drain(
        &mut self,
        failures: &mut mpsc::UnboundedReceiver<FailedDelivery>,
    ) -> Result<(), PipelineError> {
        while self.tracker.outstanding() > 0 {
            if self.stop_deadline.passed() {
                return Err(PipelineError::DrainTimeout {
                    outstanding: self.tracker.outstanding(),
                    timeout: self.shutdown_timeout,
                });
            }
            tokio::select! {
                Some(failure) = failures.recv() => self.handle_failure(failure).await?,
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        Ok(())
    }

    async fn publish(&mut self, event: ChangeEvent) -> Result<(), PipelineError> {
        self.events += 1;
        if self.transactions.is_some() {
            self.count_in_transaction(&event).await?;
        }
        let encoding = match self.encoding_for(&event.table).await? {
            Ok(encoding) => encoding,
            Err((topic, stage, reason)) => {
                return self.dead_letter(&event, &topic, stage, &reason, None).await
            }
        };
        let topic = encoding.topic.clone();
        let (key_schema, value_schema) = (encoding.key_schema, encoding.value_schema);
        let contract = encoding.contract.clone();
        let name = encoding.name.clone();

        self.key_buf.clear();
        let mut has_key = false;
        if let (Some(schema), Some(row)) = (key_schema, event.key_row()) {
            schema.write_header(&mut self.key_buf);
            if let Err(err) = avro::encode_key(&event.table, row, &mut self.key_buf) {
                return self
                    .dead_letter(&event, &topic, encode_stage(&err), &err.to_string(), None)
                    .await;
            }
            has_key = true;
        }
        self.value_buf.clear();
        value_schema.write_header(&mut self.value_buf);
        let context = EnvelopeContext {
            server_name: &self.topic_prefix,
            connector: self.connector,
            version: env!("CARGO_PKG_VERSION"),
            processed_at_ms: now_ms(),
        };
        if let Err(err) = avro::encode_envelope(&event, &context, &mut self.value_buf) {
            let key = has_key.then(|| self.key_buf.clone());
            return self
                .dead_letter(
                    &event,
                    &topic,
                    encode_stage(&err),
                    &err.to_string(),
                    key.as_deref(),
                )
                .await;
        }

        if let Some(contract) = &contract {
            let datum = SchemaRef::split(&self.value_buf).map_or(&[][..], |(_, datum)| datum);
            if let Err(reason) = contract.check(datum, &unchanged_toast_fields(&event)) {
                let key = has_key.then(|| self.key_buf.clone());
                return self
                    .dead_letter(&event, &topic, Stage::Validate, &reason, key.as_deref())
                    .await;
            }
        }

        let txid = event.source.txid.map(|txid| txid.to_string());
        let unchanged = unchanged_toast_columns(&event);
        let mut headers: Vec<(&str, &[u8])> = vec![
            ("sluice.lsn", self.lsn_text.of(event.source.lsn).as_bytes()),
            (
                "sluice.commit_lsn",
                self.commit_lsn_text.of(event.source.commit_lsn).as_bytes(),
            ),
        ];
        if let Some(txid) = &txid {
            headers.push(("sluice.txid", txid.as_bytes()));
        }
        if let Some(columns) = &unchanged {
            headers.push(("sluice.unchanged_toast", columns.as_bytes()));
        }
        let key = has_key.then_some(self.key_buf.as_slice());
        let message = Outgoing {
            topic: &topic,
            key,
            payload: Some(&self.value_buf),
            headers: &headers,
        };
        let ordinal = self.tracker.register();
        if let Err(err) = self.sink.send(&message, ordinal, MessageKind::Event).await {
            if !err.is_message_fault() {
                return Err(err.into());
            }
            let key = key.map(<[u8]>::to_vec);
            return self
                .dead_letter_registered(
                    &event,
                    &topic,
                    Stage::Produce,
                    &err.to_string(),
                    key.as_deref(),
                    ordinal,
                )
                .await;
        }
        let bytes = self.value_buf.len() + key.map_or(0, <[u8]>::len);
        self.metrics.event_published(&name, event.op.code(), bytes);
        if unchanged.is_some() {
            self.metrics.unchanged_toast(&name);
        }
        if event.source.snapshot == SnapshotMarker::False {
            self.metrics.published_commit(event.source.commit_time_us);
        }
        // A delete is followed by a tombstone so that compaction can drop the key.
        if event.op == Op::Delete && has_key {
            send_tombstone(
                &mut self.sink,
                &self.tracker,
                &topic,
                &self.key_buf,
                &headers,
            )
            .await?;
        }
        Ok(())
    }

    /// A logical decoding message, to `<topic_prefix>.message` (Debezium's topic for them) with its
    /// prefix as the key.
    async fn publish_message(&mut self, message: DecodingMessage) -> Result<(), PipelineError> {
        let mut key = Vec::new();
        avro::encode_message_key(&message, &mut key);
        let mut value = Vec::new();
        avro::encode_message(&message, &mut value);
        let mut headers = vec![(
            "sluice.lsn".to_owned(),
            message.lsn.to_string().into_bytes(),
        )];
        if let Some(txid) = message.txid {
            headers.push(("sluice.txid".to_owned(), txid.to_string().into_bytes()));
        }
        self.publish_fixed(Fixed::Messages, &key, &value, &headers)
            .await
    }

    /// Counts a streamed change in its transaction, publishing the transaction's BEGIN record before its
    /// first change.
    async fn count_in_transaction(&mut self, event: &ChangeEvent) -> Result<(), PipelineError> {
        let (Some(txid), Some(_)) = (event.source.txid, event.source.order) else {
            return Ok(());
        };
        let id = avro::transaction_id(txid, event.source.commit_lsn);
        if self
            .open_transaction
            .as_ref()
            .is_none_or(|open| open.id != id)
        {
            let open = TransactionCounts {
                id,
                txid,
                commit_lsn: event.source.commit_lsn,
                ts_ms: event.source.commit_time_us.div_euclid(1000),
                per_table: Vec::new(),
            };
            self.publish_transaction_boundary(&open, false).await?;
            self.open_transaction = Some(open);
        }
        let table = event.table.qualified_name();
        let Some(open) = self.open_transaction.as_mut() else {
            return Ok(());
        };
        match open.per_table.iter_mut().find(|(name, _)| *name == table) {
            Some((_, count)) => *count += 1,
            None => open.per_table.push((table, 1)),
        }
        Ok(())
    }

    /// The BEGIN (`end` false) or END record of a transaction, to `<topic_prefix>.transaction`.
    async fn publish_transaction_boundary(
        &mut self,
        open: &TransactionCounts,
        end: bool,
    ) -> Result<(), PipelineError> {
        let boundary = avro::TransactionBoundary {
            id: &open.id,
            ts_ms: open.ts_ms,
            counts: end.then_some(open.per_table.as_slice()),
        };
        let mut key = Vec::new();
        avro::encode_transaction_key(&boundary, &mut key);
        let mut value = Vec::new();
        avro::encode_transaction(&boundary, &mut value);
        let headers = [
            ("sluice.txid".to_owned(), open.txid.to_string().into_bytes()),
            (
                "sluice.commit_lsn".to_owned(),
                open.commit_lsn.to_string().into_bytes(),
            ),
        ];
        self.publish_fixed(Fixed::Transactions, &key, &value, &headers)
            .await
    }

    /// The fixed topic `which` names; None for transaction metadata when it is off.
    fn fixed_topic(&mut self, which: &Fixed) -> Option<&mut FixedTopic> {
        match which {
            Fixed::Messages => Some(&mut self.messages),
            Fixed::Transactions => self.transactions.as_mut(),
            Fixed::Collection(namespace) => self.collections.get_mut(*namespace),
        }
    }

    /// A record for a fixed topic: key and value are Avro bodies, framed here once the schemas are
    /// registered (the first time, with the topic created). A record whose schema the registry refuses, or
    /// that the broker refuses, goes to the dead-letter topic with its bodies.
    async fn publish_fixed(
        &mut self,
        which: Fixed<'_>,
        key: &[u8],
        value: &[u8],
        headers: &[(String, Vec<u8>)],
    ) -> Result<(), PipelineError> {
        let Some(fixed) = self.fixed_topic(&which) else {
            return Ok(());
        };
        let (topic, refs) = (fixed.topic.clone(), fixed.refs);
        let (key_schema, value_schema) = match refs {
            Some(refs) => refs,
            None => {
                let schemas = fixed.schemas.clone();
                self.sink.ensure_topic(&topic, &self.stop).await?;
                match self.schema_refs(&schemas).await? {
                    // Fixed topics always have a key schema.
                    Ok((Some(key_schema), value_schema)) => {
                        let refs = (key_schema, value_schema);
                        if let Some(fixed) = self.fixed_topic(&which) {
                            fixed.refs = Some(refs);
                        }
                        refs
                    }
                    Ok((None, _)) => unreachable!("fixed topics have key schemas"),
                    // This record goes to the dead-letter topic; the next one asks again.
                    Err(err) => {
                        let reason = format!("cannot register the schema of {topic}: {err}");
                        let letter = DeadLetter::for_refused_message(
                            self.failure(Stage::Register, &topic, &reason),
                            Some(key),
                            Some(value),
                            headers,
                        );
                        let ordinal = self.tracker.register();
                        return self.send_dead_letter(&letter, None, ordinal).await;
                    }
                }
            }
        };
        self.key_buf.clear();
        key_schema.write_header(&mut self.key_buf);
        self.key_buf.extend_from_slice(key);
        self.value_buf.clear();
        value_schema.write_header(&mut self.value_buf);
        self.value_buf.extend_from_slice(value);
        let header_refs = header_refs(headers);
        let outgoing = Outgoing {
            topic: &topic,
            key: Some(&self.key_buf),
            payload: Some(&self.value_buf),
            headers: &header_refs,
        };
        let ordinal = self.tracker.register();
        match self.sink.send(&outgoing, ordinal, MessageKind::Event).await {
            Ok(()) => Ok(()),
            Err(err) if err.is_message_fault() => {
                let reason = format!("the broker refused the record: {err}");
                let letter = DeadLetter::for_refused_message(
                    self.failure(Stage::Produce, &topic, &reason),
                    Some(&self.key_buf),
                    Some(&self.value_buf),
                    headers,
                );
                let key = self.key_buf.clone();
                self.send_dead_letter(&letter, Some(&key), ordinal).await
            }
            Err(err) => Err(err.into()),
        }
    }

    /// The table's topic and schema ids, registering the schemas of a new table version. `Ok(Err(..))` is a
    /// failure for this table's events (they go to the dead-letter topic); `Err` stops the pipeline.
    async fn encoding_for(
        &mut self,
        table: &Arc<Table>,
    ) -> Result<Result<&TableEncoding, (String, Stage, String)>, PipelineError> {
        let current = self
            .encodings
            .get(&table.id)
            .is_some_and(|e| Arc::ptr_eq(&e.table, table) || *e.table == **table);
        if !current {
            let topic = avro::topic_name(&self.topic_prefix, table);
            let schemas = match avro::table_schemas(&self.topic_prefix, table) {
                Ok(schemas) => schemas,
                Err(err) => return Ok(Err((topic, Stage::Encode, err.to_string()))),
            };
            match self.sink.ensure_topic(&schemas.topic, &self.stop).await {
                Ok(()) => {}
                Err(err) if err.is_message_fault() => {
                    return Ok(Err((topic, Stage::Produce, err.to_string())))
                }
                Err(err) => return Err(err.into()),
            }
            match self.schema_refs(&schemas).await? {
                Ok((key_schema, value_schema)) => {
                    let key = key_schema.map_or_else(|| "none".to_owned(), |k| k.to_string());
                    tracing::info!(table = %table.qualified_name(), topic = %schemas.topic, key_schema = %key, value_schema = %value_schema, "table schema ready");
                    let contract = self.contracts.get(&schemas.topic).map(|contract| {
                        Arc::new(BoundContract::new(contract.clone(), &schemas.value.schema))
                    });
                    if let Some(reason) = contract.as_ref().and_then(|c| c.incompatible()) {
                        tracing::error!(table = %table.qualified_name(), reason, "every event of this table version will go to the dead-letter topic");
                    }
                    let encoding = TableEncoding {
                        table: table.clone(),
                        name: table.qualified_name().into(),
                        topic: schemas.topic,
                        key_schema,
                        value_schema,
                        contract,
                    };
                    self.encodings.insert(table.id, encoding);
                }
                Err(err) => return Ok(Err((topic, Stage::Register, err.to_string()))),
            }
        }
        Ok(Ok(&self.encodings[&table.id]))
    }

    async fn dead_letter(
        &mut self,
        event: &ChangeEvent,
        topic: &str,
        stage: Stage,
        reason: &str,
        key: Option<&[u8]>,
    ) -> Result<(), PipelineError> {
        let ordinal = self.tracker.register();
        self.dead_letter_registered(event, topic, stage, reason, key, ordinal)
            .await
    }

    async fn dead_letter_registered(
        &mut self,
        event: &ChangeEvent,
        topic: &str,
        stage: Stage,
        reason: &str,
        key: Option<&[u8]>,
        ordinal: u64,
    ) -> Result<(), PipelineError> {
        tracing::warn!(stage = stage.as_str(), table = %event.table.qualified_name(), lsn = %event.source.lsn, reason, "event sent to the dead-letter topic");
        let letter = DeadLetter::for_event(event, self.failure(stage, topic, reason));
        self.send_dead_letter(&letter, key, ordinal).await
    }

    /// A failure of this instance, now.
    fn failure<'a>(&'a self, stage: Stage, topic: &'a str, error: &'a str) -> Failure<'a> {
        Failure {
            stage,
            topic,
            error,
            instance: &self.topic_prefix,
            connector: self.connector,
            failed_at_ms: now_ms(),
        }
    }

    /// The dead-letter schema, registered or published the first time a dead letter needs it (so that a
    /// registry that is down delays only what needs it).
    async fn dead_letter_schema(&mut self) -> Result<SchemaRef, PipelineError> {
        if let Some(found) = self.dead_letter_schema {
            return Ok(found);
        }
        let schema = avro::AvroSchema {
            json: deadletter::SCHEMA_TEXT.to_owned(),
            schema: deadletter::schema().clone(),
        };
        let topic = self.dead_letter_topic.clone();
        let found = self
            .schema_ref(&topic, SchemaPart::Value, &schema)
            .await?
            .map_err(PipelineError::DeadLetterSchema)?;
        self.dead_letter_schema = Some(found);
        Ok(found)
    }

    /// Produces a dead letter; one too large for the broker is sent again without the change itself.
    async fn send_dead_letter(
        &mut self,
        letter: &DeadLetter,
        key: Option<&[u8]>,
        ordinal: u64,
    ) -> Result<(), PipelineError> {
        let table = letter.collection.as_deref().unwrap_or(&letter.topic);
        self.metrics.dead_letter(letter.stage, table);
        self.produce_dead_letter(letter.encode(), &letter.headers(), key, ordinal)
            .await
    }

    async fn produce_dead_letter(
        &mut self,
        datum: Vec<u8>,
        headers: &[(String, Vec<u8>)],
        key: Option<&[u8]>,
        ordinal: u64,
    ) -> Result<(), PipelineError> {
        let schema = self.dead_letter_schema().await?;
        let mut datum = datum;
        loop {
            let mut value = Vec::with_capacity(datum.len() + 10);
            schema.write_header(&mut value);
            value.extend_from_slice(&datum);
            let header_refs = header_refs(headers);
            let message = Outgoing {
                topic: &self.dead_letter_topic,
                key,
                payload: Some(&value),
                headers: &header_refs,
            };
            let err = match self
                .sink
                .send(&message, ordinal, MessageKind::DeadLetter)
                .await
            {
                Ok(()) => return Ok(()),
                Err(err) => err,
            };
            if err.is_too_large() {
                if let Some(smaller) = deadletter::shrink(&datum) {
                    tracing::warn!(
                        "dead letter too large for the broker: sending it without the change itself"
                    );
                    datum = smaller;
                    continue;
                }
            }
            return Err(if err.is_message_fault() {
                PipelineError::DeadLetterRefused {
                    topic: self.dead_letter_topic.clone(),
                    reason: err.to_string(),
                }
            } else {
                err.into()
            });
        }
    }

    /// The broker refused a message for good: it goes to the dead-letter topic under the same ordinal, so the
    /// position still waits for it. A refused dead letter is sent once more without the change if it was too
    /// large, and otherwise stops the pipeline, as does a refused schema.
    async fn handle_failure(&mut self, failure: FailedDelivery) -> Result<(), PipelineError> {
        if failure.dead_letter {
            let smaller = is_too_large(&failure.error)
                .then(|| {
                    let payload = failure.payload.as_deref()?;
                    let (_, datum) = SchemaRef::split(payload)?;
                    deadletter::shrink(datum)
                })
                .flatten();
            return match smaller {
                Some(smaller) => {
                    tracing::warn!(
                        "dead letter too large for the broker: sending it without the change itself"
                    );
                    self.produce_dead_letter(
                        smaller,
                        &failure.headers,
                        failure.key.as_deref(),
                        failure.ordinal,
                    )
                    .await
                }
                None => Err(PipelineError::DeadLetterRefused {
                    topic: failure.topic,
                    reason: failure.error.to_string(),
                }),
            };
        }
        if Some(failure.topic.as_str()) == self.schemas.schemas_topic() {
            return Err(PipelineError::SchemaTopicRefused {
                topic: failure.topic,
                reason: failure.error.to_string(),
            });
        }
        let reason = format!("the broker refused the message: {}", failure.error);
        tracing::warn!(topic = %failure.topic, %reason, "message sent to the dead-letter topic");
        let letter = DeadLetter::for_refused_message(
            self.failure(Stage::Produce, &failure.topic, &reason),
            failure.key.as_deref(),
            failure.payload.as_deref(),
            &failure.headers,
        );
        self.send_dead_letter(&letter, failure.key.as_deref(), failure.ordinal)
            .await
    }
}

/// Owned header pairs as the sink takes them.
fn header_refs(headers: &[(String, Vec<u8>)]) -> Vec<(&str, &[u8])> {
    headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_slice()))
        .collect()
}

/// A tombstone (null value) for `key`, which follows a delete so that compaction can drop the key.
async fn send_tombstone(
    sink: &mut Sink,
    tracker: &AckTracker,
    topic: &str,
    key: &[u8],
    headers: &[(&str, &[u8])],
) -> Result<(), SinkError> {
    let tombstone = Outgoing {
        topic,
        key: Some(key),
        payload: None,
        headers,
    };
    let ordinal = tracker.register();
    sink.send(&tombstone, ordinal, MessageKind::Event).await
}

/// Which stage an encoding failure belongs to: a value the source could not represent failed at decoding
/// (the encoder only carries its reason along); anything else at encoding.
fn encode_stage(err: &EncodeError) -> Stage {
    match err {
        EncodeError::Column {
            reason: EncodeReason::OutOfRange(_),
            ..
        } => Stage::Decode,
        _ => Stage::Encode,
    }
}

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
fn unchanged_toast_fields(event: &ChangeEvent) -> Vec<String> {
    let positions: Vec<usize> = unchanged_toast(event).collect();
    if positions.is_empty() {
        return Vec::new();
    }
    let names = avro::naming::field_names(&event.table);
    positions.into_iter().map(|i| names[i].clone()).collect()
}

/// The unchanged-TOAST columns, as a comma-separated header value.
fn unchanged_toast_columns(event: &ChangeEvent) -> Option<String> {
    let names: Vec<&str> = unchanged_toast(event)
        .map(|i| event.table.columns[i].name.as_str())
        .collect();
    (!names.is_empty()).then(|| names.join(","))
}
