//! `sluice run`: source → Avro encoding → Kafka sink, with positions acknowledged only after the broker has
//! every event up to them.
//!
//! Three tasks: the source reader (sends events, answers the server), this module's publishing loop
//! (encodes, produces, routes failures to the dead-letter topic) and the acknowledger (writes the position
//! file, then lets the reader tell the server). A stop request ends the reader at a transaction boundary;
//! the loop drains, waits for the broker, and the final position is stored.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::event::{Position, SourceEvent};
use sluice_core::positions::{PositionError, PositionStore};
use sluice_core::source::{Committer, SourceContext};
use sluice_core::Source;
use tokio::sync::{mpsc, oneshot, watch};

pub mod ack;
mod error;
mod publish;
mod schemas;

pub use error::PipelineError;
pub(crate) use publish::{check_document_contract, collection_of_topic};

use crate::config::{self, Config, SinkKind};
use crate::contracts::Contracts;
use crate::metrics::Metrics;
use crate::registry::{RegistryClient, RegistrySettings};
use crate::shutdown::StopDeadline;
use crate::sink::{FailedDelivery, Sink, SinkSettings};
use crate::sources::{with_source, SourceVisitor, Unbuildable};
use crate::transforms::Chain;
use ack::AckTracker;
use publish::{Core, Publisher, RowSettings};
use schemas::SchemaDirectory;

/// Events buffered between the reader and the publishing loop.
const EVENT_BUFFER: usize = 4096;
/// How often the broker is asked whether it answers, and how long it has to answer.
const BROKER_PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// Runs until `stop` becomes true (then drains and returns Ok) or something fails: [`run_source`] with the
/// connector of the config's source ([`with_source`]); everything after that is the same for every source.
pub async fn run(config: &Config, stop: watch::Receiver<bool>) -> Result<(), PipelineError> {
    with_source(config, Run { config, stop }).await
}

/// `run` for the configured source.
struct Run<'c> {
    config: &'c Config,
    stop: watch::Receiver<bool>,
}

impl SourceVisitor for Run<'_> {
    type Output = Result<(), PipelineError>;

    async fn visit<S: Source>(self, source: S) -> Result<(), PipelineError> {
        run_source(self.config, source, self.stop).await
    }

    fn unbuildable(self, failure: Unbuildable<'_>) -> Result<(), PipelineError> {
        Err(PipelineError::Source(failure.error))
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
        publish::check_contracts(&contracts, config.sink.topic_prefix.get_ref().as_str())?;
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
    let topic_prefix = config.sink.topic_prefix.get_ref().as_str().to_owned();
    let chain = Chain::from_config(&config.transforms, &topic_prefix)?;
    let core = Core::new(
        sink,
        schemas,
        tracker.clone(),
        connector,
        topic_prefix,
        dead_letter_topic,
        contracts,
        stop.clone(),
        metrics.clone(),
        stop_deadline,
        config.shutdown_timeout(),
    );
    let publisher = Publisher::new(core, chain, row_settings(config));
    Ok(Started {
        publisher,
        failures,
        tracker,
        metrics,
        _broker_watch: broker_watch,
    })
}

/// How rows are published: the PostgreSQL source's settings (MongoDB publishes documents).
fn row_settings(config: &Config) -> RowSettings {
    config
        .postgres()
        .map_or_else(RowSettings::default, |pg| RowSettings {
            transaction_metadata: pg.transaction_metadata,
            unencodable_values: pg.unencodable_values,
            logical_types: config.avro.logical_types(),
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
    let metrics = &publisher.core.metrics;
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
