//! The source seam on its own: an in-memory [`Source`] written here, run through the real pipeline
//! (`sluice::pipeline::run_source`) into a real tansu broker with the registry double. It shows what the
//! seam promises every connector, independent of any database: each event reaches its topic in order,
//! a position is committed only once the broker has everything before it (and the store holds it), the
//! last position survives a stop, the next run is planned from it, and an event the pipeline cannot
//! publish goes to the dead-letter topic without holding the position back.

mod common;

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use serde_json::{json, Value as Json};
use sluice::config::Config;
use sluice::pipeline::run_source;
use sluice_core::check::Report;
use sluice_core::event::{
    DocumentChange, DocumentSource, Op, Position, SnapshotMarker, SourceEvent, UndecodableChange,
    UpdateDescription,
};
use sluice_core::positions::{PositionPeek, PositionStore, StoredPosition};
use sluice_core::source::{Committer, Source, SourceContext};
use sluice_testkit::broker::{read_topic, Record, Tansu};
use sluice_testkit::registry::RegistryDouble;
use tokio::sync::watch;

const PREFIX: &str = "seam";
const TOPIC: &str = "seam.shop.orders";
const DEAD_LETTERS: &str = "seam.dlq";
/// The position file is `<KEY>.position.json`.
const KEY: &str = "seam.test";
/// Bound on every wait: a run of a handful of events takes well under a second.
const DEADLINE: Duration = Duration::from_secs(20);

/// What the test source emits for one transaction, then the position that closes it.
#[derive(Clone)]
struct Transaction {
    events: Vec<Emitted>,
    position: Position,
}

#[derive(Clone)]
enum Emitted {
    Document(DocumentChange),
    Undecodable(UndecodableChange),
}

impl Emitted {
    fn event(self) -> SourceEvent {
        match self {
            Emitted::Document(change) => SourceEvent::Document(change),
            Emitted::Undecodable(change) => SourceEvent::Undecodable(change),
        }
    }
}

/// One commit as the committer saw it.
#[derive(Clone, Debug)]
struct Commit {
    position: Position,
    /// The collection topic's and the dead-letter topic's high watermarks at that moment (-1: no topic).
    on_broker: (i64, i64),
    /// What the position file held at that moment.
    stored: Option<Position>,
}

/// What a test source records, shared with the test.
struct Observed {
    /// The stored position each `plan` call was given.
    planned: Mutex<Vec<Option<StoredPosition>>>,
    /// Every commit, in order.
    commits: watch::Sender<Vec<Commit>>,
}

impl Observed {
    fn new() -> Arc<Observed> {
        Arc::new(Observed {
            planned: Mutex::new(Vec::new()),
            commits: watch::Sender::new(Vec::new()),
        })
    }

    fn commits(&self) -> Vec<Commit> {
        self.commits.borrow().clone()
    }

    /// Waits (bounded) until `position` is committed.
    async fn committed(&self, position: &Position) -> bool {
        let mut commits = self.commits.subscribe();
        let seen = commits.wait_for(|c| c.iter().any(|c| c.position == *position));
        // The watch's read guard must not outlive this call: the committer writes under it.
        let committed = matches!(tokio::time::timeout(DEADLINE, seen).await, Ok(Ok(_)));
        committed
    }
}

#[derive(Debug)]
struct TestSourceError(String);

impl std::fmt::Display for TestSourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "test source: {}", self.0)
    }
}

impl std::error::Error for TestSourceError {}

/// A source that plays `script` and then waits for the stop.
struct TestSource {
    script: Vec<Transaction>,
    observed: Arc<Observed>,
    bootstrap: String,
}

impl Source for TestSource {
    type Error = TestSourceError;
    type Plan = ();
    const CONNECTOR: &'static str = "mongodb";

    fn position_key(&self) -> String {
        KEY.to_owned()
    }

    fn plan(
        &self,
        stored: Option<StoredPosition>,
        _store: &PositionStore,
    ) -> Result<Option<()>, TestSourceError> {
        self.observed.planned.lock().unwrap().push(stored);
        Ok(Some(()))
    }

    async fn check(&self, position: &PositionPeek, report: &mut Report) {
        match &position.stored {
            Ok(Some(stored)) => report.pass(format!("resumes after {}", stored.position)),
            Ok(None) => report.pass("starts afresh"),
            Err(err) => report.fail(err.to_string(), "move the position file away"),
        }
    }

    fn start(
        &self,
        _plan: (),
        context: SourceContext,
    ) -> (
        Arc<dyn Committer>,
        impl Future<Output = Result<(), TestSourceError>> + Send + 'static,
    ) {
        let committer = Arc::new(WatermarkCommitter {
            consumer: ClientConfig::new()
                .set("bootstrap.servers", &self.bootstrap)
                .set("group.id", "seam-watermarks")
                .create()
                .expect("a Kafka client for watermarks"),
            store: context.store.clone(),
            observed: self.observed.clone(),
        });
        let (script, observed) = (self.script.clone(), self.observed.clone());
        let SourceContext {
            events, mut stop, ..
        } = context;
        let reading = async move {
            let gone = |_| TestSourceError("the pipeline dropped the events channel".into());
            for transaction in script {
                for emitted in transaction.events {
                    events.send(emitted.event()).await.map_err(gone)?;
                }
                let commit = SourceEvent::Commit {
                    position: transaction.position.clone(),
                    commit_time_us: Some(sluice_core::positions::now_us()),
                };
                events.send(commit).await.map_err(gone)?;
                // The acknowledger coalesces positions acknowledged while it writes one; waiting for each
                // commit makes every position reach the committer, so the test can compare the whole list.
                if !observed.committed(&transaction.position).await {
                    return Err(TestSourceError(format!(
                        "{} was not committed within {DEADLINE:?}",
                        transaction.position
                    )));
                }
            }
            // A dropped sender is a stop too.
            let _ = stop.wait_for(|stop| *stop).await;
            Ok(())
        };
        (committer, reading)
    }

    async fn signal(&self, _: &sluice_core::signal::Signal) -> Result<String, TestSourceError> {
        Err(TestSourceError("it reads no signals".into()))
    }
}

/// Records each committed position with what the broker and the position file held at that moment.
struct WatermarkCommitter {
    consumer: BaseConsumer,
    store: Arc<PositionStore>,
    observed: Arc<Observed>,
}

impl WatermarkCommitter {
    fn high_watermark(&self, topic: &str) -> i64 {
        self.consumer
            .fetch_watermarks(topic, 0, Duration::from_secs(5))
            .map_or(-1, |(_, high)| high)
    }
}

impl Committer for WatermarkCommitter {
    fn commit(&self, position: &Position) {
        // Asked synchronously, before the acknowledger goes on: what the broker holds when the commit comes.
        let (on_broker, stored) = tokio::task::block_in_place(|| {
            let on_broker = (
                self.high_watermark(TOPIC),
                self.high_watermark(DEAD_LETTERS),
            );
            let stored = self.store.load().ok().flatten().map(|s| s.position);
            (on_broker, stored)
        });
        let commit = Commit {
            position: position.clone(),
            on_broker,
            stored,
        };
        self.observed.commits.send_modify(|c| c.push(commit));
    }
}

fn position(n: u32) -> Position {
    Position::Mongodb {
        resume_token: token(n),
    }
}

fn token(n: u32) -> String {
    format!(r#"{{"_data":"{n:04X}"}}"#)
}

fn id(n: i32) -> String {
    format!(r#"{{"$numberInt":"{n}"}}"#)
}

/// A change of document `_id: n` in `shop.orders`, at cluster time ordinal `at`.
fn document(op: Op, n: i32, after: Option<Json>, at: u32) -> Emitted {
    Emitted::Document(DocumentChange {
        database: "shop".into(),
        collection: "orders".into(),
        op,
        key: id(n),
        before: None,
        after: after.map(|doc| doc.to_string()),
        update: (op == Op::Update).then(|| UpdateDescription {
            updated_fields: Some(r#"{"qty":{"$numberInt":"2"}}"#.into()),
            ..UpdateDescription::default()
        }),
        source: DocumentSource {
            replica_set: Some("rs0".into()),
            cluster_time: (1_700_000_000, at),
            wall_time_ms: None,
            txn_number: None,
            lsid: None,
            resume_token: Some(token(100 + at)),
            snapshot: SnapshotMarker::False,
        },
    })
}

fn order(n: i32, qty: i32) -> Json {
    json!({ "_id": { "$numberInt": n.to_string() }, "qty": { "$numberInt": qty.to_string() } })
}

/// A config for the broker and registry, positions in `dir`. The source section is only there to make
/// the text a valid config: the pipeline reads [sink], [avro] and [positions].
fn config(broker: &Tansu, registry: &RegistryDouble, dir: &Path) -> String {
    format!(
        r#"[source]
kind = "mongodb"
url = "mongodb://127.0.0.1:1"
collections = ["shop.*"]

[sink]
kind = "kafka"
brokers = "{brokers}"
topic_prefix = "{PREFIX}"
dead_letter_topic = "{DEAD_LETTERS}"
topic_partitions = 1
topic_replication_factor = 1
shutdown_timeout_secs = 10

[sink.kafka]
"compression.type" = "lz4"

[avro]
registry_url = "{registry}"
contracts_dir = "{dir}/contracts"

[positions]
dir = "{dir}/positions"
"#,
        brokers = broker.bootstrap(),
        registry = registry.url(),
        dir = dir.display(),
    )
}

/// Runs the pipeline with `source` until `last` is committed, then stops it and waits for a clean end.
async fn run_until_committed(config: &str, source: TestSource, last: &Position) {
    let config = Config::parse(config).expect("a valid config");
    let observed = source.observed.clone();
    let (stop, stopped) = watch::channel(false);
    let mut run = tokio::spawn(async move { run_source(&config, source, stopped).await });
    tokio::select! {
        committed = observed.committed(last) => assert!(committed, "{last} not committed: {:?}", observed.commits()),
        ended = &mut run => panic!("the pipeline ended before committing {last}: {ended:?}"),
    }
    stop.send(true).expect("the pipeline follows the stop");
    let ended = tokio::time::timeout(DEADLINE, run)
        .await
        .expect("the pipeline stops within the deadline")
        .expect("the pipeline task does not panic");
    if let Err(err) = ended {
        panic!(
            "the pipeline failed: {err}\ncommits: {:?}",
            observed.commits()
        );
    }
}

/// A record as compared: the key's `id`, and the value's op, after and before (None for a tombstone).
type Decoded = (String, Option<(String, Json, Json)>);

fn decoded(registry: &RegistryDouble, record: &Record) -> Decoded {
    let key = common::decode_registered(registry, record.key.as_deref().expect("a key"));
    let value = record.value.as_deref().map(|value| {
        let value = common::decode_registered(registry, value);
        let op = value["op"].as_str().expect("an op").to_owned();
        (op, value["after"].clone(), value["before"].clone())
    });
    (key["id"].as_str().expect("a key id").to_owned(), value)
}

/// What the topic must hold for `script`'s documents: each change, and a tombstone after a delete.
fn expected(script: &[Transaction]) -> Vec<Decoded> {
    let mut records = Vec::new();
    for emitted in script.iter().flat_map(|t| &t.events) {
        let Emitted::Document(change) = emitted else {
            continue;
        };
        let text = |doc: &Option<String>| doc.as_ref().map_or(Json::Null, |d| json!(d));
        let value = (
            change.op.code().to_owned(),
            text(&change.after),
            text(&change.before),
        );
        records.push((change.key.clone(), Some(value)));
        if change.op == Op::Delete {
            records.push((change.key.clone(), None));
        }
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_on_the_seam_is_published_committed_stored_and_resumed() {
    let broker = Tansu::start().expect("start tansu");
    let registry = RegistryDouble::start().expect("start the registry double");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config(&broker, &registry, dir.path());

    // Run 1: three transactions over three documents, one of them deleted.
    let first = vec![
        Transaction {
            events: vec![
                document(Op::Create, 1, Some(order(1, 1)), 1),
                document(Op::Create, 2, Some(order(2, 5)), 2),
            ],
            position: position(1),
        },
        Transaction {
            events: vec![document(Op::Update, 1, Some(order(1, 2)), 3)],
            position: position(2),
        },
        Transaction {
            events: vec![
                document(Op::Delete, 2, None, 4),
                document(Op::Create, 3, Some(order(3, 7)), 5),
            ],
            position: position(3),
        },
    ];
    let observed = Observed::new();
    let source = TestSource {
        script: first.clone(),
        observed: observed.clone(),
        bootstrap: broker.bootstrap(),
    };
    run_until_committed(&config, source, &position(3)).await;

    // 1. Every event, as sent, in the order sent (one partition: the order per key is the topic's order).
    let want = expected(&first);
    let records = read_topic(&broker.bootstrap(), TOPIC, want.len(), DEADLINE)
        .await
        .expect("read the collection topic");
    let got: Vec<_> = records.iter().map(|r| decoded(&registry, r)).collect();
    assert_eq!(got, want);
    let value = common::decode_registered(&registry, records[0].value.as_deref().unwrap());
    assert_eq!(value["source"]["resumeToken"], token(101));
    assert_eq!(value["source"]["name"], PREFIX);

    // 2. Exactly the commit positions, in order, each once the broker had every record before it and
    // the store held it.
    let commits = observed.commits();
    let positions: Vec<Position> = commits.iter().map(|c| c.position.clone()).collect();
    assert_eq!(positions, [position(1), position(2), position(3)]);
    for (commit, records_before) in commits.iter().zip([2, 3, 6]) {
        assert!(
            commit.on_broker.0 >= records_before,
            "{} committed with {} of {records_before} records on the broker",
            commit.position,
            commit.on_broker.0
        );
        assert_eq!(commit.stored.as_ref(), Some(&commit.position));
    }
    assert_eq!(*observed.planned.lock().unwrap(), [None]);

    // 3. The store holds the last position after the stop.
    let file = PositionStore::file_path(&dir.path().join("positions"), KEY);
    let stored = PositionStore::peek(&file, KEY)
        .expect("a readable position file")
        .expect("a stored position");
    assert_eq!(stored.position, position(3));

    // Run 2: the seam hands the source its own position back; an event that cannot be published goes
    // to the dead-letter topic, and the position moves past it.
    let undecodable = UndecodableChange {
        connector: "mongodb",
        namespace: Some("shop.orders".into()),
        raw: r#"{"operationType":"insert","ns":{"db":"shop","coll":"orders"}}"#.into(),
        reason: "change event field `documentKey`: missing".into(),
        resume_token: Some(token(106)),
    };
    let second = vec![
        Transaction {
            events: vec![Emitted::Undecodable(undecodable)],
            position: position(4),
        },
        Transaction {
            events: vec![document(Op::Create, 4, Some(order(4, 1)), 7)],
            position: position(5),
        },
    ];
    let observed = Observed::new();
    let source = TestSource {
        script: second.clone(),
        observed: observed.clone(),
        bootstrap: broker.bootstrap(),
    };
    // `sluice check`'s view through the seam: the source is handed the stored position too.
    let mut report = Report::default();
    let peek = PositionPeek::read(&dir.path().join("positions"), KEY);
    source.check(&peek, &mut report).await;
    let lines: Vec<String> = report.lines.iter().map(ToString::to_string).collect();
    assert_eq!(lines, [format!("[ ok ] resumes after {}", position(3))]);
    run_until_committed(&config, source, &position(5)).await;

    // 4. Planned from the stored position.
    let planned = observed.planned.lock().unwrap().clone();
    assert_eq!(planned.len(), 1);
    let resumed = planned[0].as_ref().expect("the second run has a position");
    assert_eq!(
        (resumed.source.as_str(), &resumed.position),
        (KEY, &position(3))
    );

    // 5. The undecodable event is a dead letter, committed past like any event.
    let letters = read_topic(&broker.bootstrap(), DEAD_LETTERS, 1, DEADLINE)
        .await
        .expect("read the dead-letter topic");
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = common::decode_registered(&registry, letters[0].value.as_deref().unwrap());
    assert_eq!(letter["stage"], "decode");
    assert_eq!(letter["error"], "change event field `documentKey`: missing");
    assert_eq!(letter["collection"], "shop.orders");
    assert_eq!(letter["topic"], TOPIC);
    assert_eq!(letter["source"]["resume_token"], token(106));
    let change: Json = serde_json::from_str(letter["change"].as_str().unwrap()).unwrap();
    assert_eq!(
        change["ns"]["coll"], "orders",
        "the event as the source read it"
    );

    let commits = observed.commits();
    let positions: Vec<Position> = commits.iter().map(|c| c.position.clone()).collect();
    assert_eq!(positions, [position(4), position(5)]);
    assert!(
        commits[0].on_broker.1 >= 1,
        "the dead letter is on the broker before its position is committed: {commits:?}"
    );
    assert!(commits[1].on_broker.0 >= 7, "{commits:?}");

    let mut want = expected(&first);
    want.extend(expected(&second));
    let records = read_topic(&broker.bootstrap(), TOPIC, want.len(), DEADLINE)
        .await
        .expect("read the collection topic");
    let got: Vec<_> = records.iter().map(|r| decoded(&registry, r)).collect();
    assert_eq!(
        got, want,
        "the second run adds its one document, nothing again"
    );
    let stored = PositionStore::peek(&file, KEY)
        .expect("a readable position file")
        .expect("a stored position");
    assert_eq!(stored.position, position(5));
}
