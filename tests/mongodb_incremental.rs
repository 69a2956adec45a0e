//! Signals and incremental snapshots for MongoDB, through the real driver against the wire-protocol TEST
//! DOUBLE (`tests/support/src/mongo_double.rs`), a real tansu broker and the registry double: `sluice
//! snapshot` inserts the signal, the stream acts on it, the chunk reader inserts its watermarks into the
//! signal collection and reads chunks in `_id` order; a change the stream delivers inside a chunk's window
//! wins over the chunk's copy; the topic compacted by key ends equal to the collection; a restart carries
//! on after the last chunk on the broker; pause, resume and stop; malformed signals and bad filters go to
//! the dead-letter topic; the oplog capture does the same; an initial snapshot leaves the signal collection
//! out; a collection joining the selection is read incrementally by itself (`snapshot_new_tables`).
//! `tests/mongodb_live.rs` runs an incremental snapshot against a real replica set when `MONGODB_URI` is
//! set.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use sluice_testkit::broker::{read_topic, Record, Tansu};
use sluice_testkit::bson::{doc, Document};
use sluice_testkit::mongo_double::{change_event, MongoDouble};
use sluice_testkit::registry::RegistryDouble;

use common::{sluice, Daemon};

const PREFIX: &str = "app";
const ORDERS: &str = "app.shop.orders";

struct Setup {
    double: MongoDouble,
    broker: Tansu,
    registry: RegistryDouble,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn start() -> Setup {
        Setup {
            double: MongoDouble::start()
                .await
                .expect("start the MongoDB double"),
            broker: Tansu::start().expect("start tansu"),
            registry: RegistryDouble::start().expect("start the registry double"),
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// `shop.*` captured with the signal collection `shop.sluice_signals`, no initial snapshot (every
    /// document already there reaches the topic through the incremental snapshot), and `extra` lines.
    fn config(&self, extra: &str) -> PathBuf {
        self.config_with(&format!(
            "collections = [\"shop.*\"]\nsnapshot = \"never\"\nsignal_collection = \"shop.sluice_signals\"\n{extra}"
        ))
    }

    fn config_with(&self, source_lines: &str) -> PathBuf {
        let text = sluice_testkit::config::mongodb(
            &self.double.url(),
            source_lines,
            &self.broker.bootstrap(),
            &self.registry.url(),
            PREFIX,
            &self.dir.path().join("positions"),
        );
        let path = self.dir.path().join("sluice.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    fn position(&self) -> Option<Json> {
        let path = self
            .dir
            .path()
            .join(format!("positions/{PREFIX}.mongodb.position.json"));
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
    }

    /// The incremental snapshot's progress in the position file (None when there is none).
    fn progress(&self) -> Option<Json> {
        let position = self.position()?;
        let position = &position["position"];
        (position["kind"] == "incremental").then(|| position["snapshot"].clone())
    }

    /// Documents the stored progress says were read of `collection`.
    fn rows_read(&self, collection: &str) -> u64 {
        self.progress()
            .and_then(|p| {
                p["tables"]
                    .as_array()?
                    .iter()
                    .find(|t| t["name"] == collection)
                    .and_then(|t| t["rows"].as_u64())
            })
            .unwrap_or(0)
    }

    /// Waits until a stream position is stored: the stream is open.
    async fn wait_streaming(&self, daemon: &mut Daemon) {
        wait_until("a stored stream position", daemon, |_| {
            self.position().is_some_and(|p| {
                matches!(
                    p["position"]["kind"].as_str(),
                    Some("mongodb" | "mongodb_oplog")
                )
            })
        })
        .await;
    }

    /// Waits until the log says the snapshot finished and the stored position no longer carries it.
    async fn wait_finished(&self, daemon: &mut Daemon) {
        wait_until("the incremental snapshot finished", daemon, |daemon| {
            daemon_said(daemon, "incremental snapshot finished") && self.progress().is_none()
        })
        .await;
    }

    async fn read(&self, topic: &str, min: usize, within: Duration) -> Vec<Record> {
        read_topic(&self.broker.bootstrap(), topic, min, within)
            .await
            .expect("read topic")
    }

    /// (id as Extended JSON text, op or `tombstone`, source.snapshot, after) of each record.
    fn decode(&self, records: &[Record]) -> Vec<Published> {
        records
            .iter()
            .map(|r| {
                let key = common::decode_registered(&self.registry, r.key.as_deref().unwrap());
                let id: Json = serde_json::from_str(key["id"].as_str().unwrap()).unwrap();
                let value = r
                    .value
                    .as_deref()
                    .map_or(Json::Null, |v| common::decode_registered(&self.registry, v));
                Published {
                    id: id.to_string(),
                    op: value["op"].as_str().unwrap_or("tombstone").to_owned(),
                    snapshot: value["source"]["snapshot"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                    after: value["after"]
                        .as_str()
                        .map(|text| serde_json::from_str(text).unwrap()),
                }
            })
            .collect()
    }

    /// The dead letters, decoded, once there are `count`.
    async fn dead_letters(&self, count: usize) -> Vec<Json> {
        let records = self
            .read(&format!("{PREFIX}.dlq"), count, Duration::from_secs(60))
            .await;
        records
            .iter()
            .map(|r| common::decode_registered(&self.registry, r.value.as_deref().unwrap()))
            .collect()
    }
}

struct Published {
    id: String,
    op: String,
    snapshot: String,
    after: Option<Json>,
}

fn daemon_said(daemon: &Daemon, text: &str) -> bool {
    daemon.log().contains(text)
}

/// Waits until `check` holds, or fails with the daemon's log (also when sluice exits meanwhile).
async fn wait_until(what: &str, daemon: &mut Daemon, mut check: impl FnMut(&Daemon) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !check(daemon) {
        if let Some(status) = daemon.exited() {
            panic!(
                "sluice exited ({status}) waiting for {what}:\n{}",
                daemon.log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `sluice snapshot -c config ARGS` and asserts it succeeded.
fn signal(config: &Path, args: &[&str]) -> String {
    let mut all = vec!["snapshot", "-c", config.to_str().unwrap()];
    all.extend_from_slice(args);
    let (status, stdout, stderr) = sluice(&all);
    assert!(status.success(), "sluice {all:?}: {stdout}{stderr}");
    stdout
}

fn order(id: i32, label: &str) -> Document {
    doc! { "_id": id, "label": label }
}

/// A change event as the server logs it (an update with its description and looked-up document),
/// applied to the double's documents.
fn upsert_event(operation: &str, id: i32, label: &str) -> Document {
    let mut event = change_event(operation, "shop", "orders", id);
    if operation == "update" {
        event.insert(
            "updateDescription",
            doc! { "updatedFields": { "label": label }, "removedFields": [] },
        );
    }
    event.insert("fullDocument", order(id, label));
    event
}

fn id_text(id: i32) -> String {
    serde_json::json!({ "$numberInt": id.to_string() }).to_string()
}

/// The collection as the double holds it: id (Extended JSON text) → label.
fn collection(setup: &Setup) -> BTreeMap<String, Json> {
    setup
        .double
        .documents("shop", "orders")
        .iter()
        .map(|d| {
            let id = d.get_i32("_id").unwrap();
            (id_text(id), Json::from(d.get_str("label").unwrap()))
        })
        .collect()
}

/// The topic replayed in order: id → label of what is left.
fn compacted(records: &[Published]) -> BTreeMap<String, Json> {
    let mut state = BTreeMap::new();
    for record in records {
        match (&record.after, record.op.as_str()) {
            (Some(after), _) => state.insert(record.id.clone(), after["label"].clone()),
            (None, "d" | "tombstone") => state.remove(&record.id),
            (None, _) => None,
        };
    }
    state
}

/// Reads the orders topic until, compacted by key, it equals the collection (or fails saying how not).
async fn read_until_equal(setup: &Setup, expected: &BTreeMap<String, Json>) -> Vec<Published> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let records = setup.decode(
            &setup
                .read(ORDERS, expected.len(), Duration::from_secs(30))
                .await,
        );
        let state = compacted(&records);
        if &state == expected {
            return records;
        }
        let wrong: Vec<_> = expected
            .iter()
            .filter(|(k, v)| state.get(*k) != Some(*v))
            .take(5)
            .collect();
        let extra: Vec<_> = state
            .keys()
            .filter(|k| !expected.contains_key(*k))
            .take(5)
            .collect();
        // What the topic holds for the first wrong key, in order.
        let history: Vec<(&str, &str, Option<&Json>)> = wrong
            .first()
            .map(|(key, _)| {
                records
                    .iter()
                    .filter(|r| &&r.id == key)
                    .map(|r| {
                        (
                            r.op.as_str(),
                            r.snapshot.as_str(),
                            r.after.as_ref().map(|a| &a["label"]),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "the topic compacted by key differs from the collection: {wrong:?} wrong (the first's records: \
             {history:?}), {extra:?} extra"
        );
    }
}

/// Sends the signal with `sluice snapshot`, holds the first chunk's reads after their first batch (it
/// has read ids 1..=101, and will return 102..=1000 as they were then), and meanwhile the stream
/// changes 500 and deletes 700.
async fn change_inside_the_first_window(setup: &Setup, config: &Path, daemon: &mut Daemon) {
    let double = &setup.double;
    double.hold_reads(true);
    let said = signal(config, &["shop.orders"]);
    assert!(said.contains("execute-snapshot"), "{said}");
    let written: Vec<Document> = double
        .documents("shop", "sluice_signals")
        .into_iter()
        .filter(|d| d.get_str("type") == Ok("execute-snapshot"))
        .collect();
    assert_eq!(written.len(), 1, "sluice snapshot inserted one signal");
    assert!(
        written[0].get_str("data").unwrap().contains("shop.orders"),
        "{written:?}"
    );
    wait_until("the first chunk read halfway", daemon, |_| {
        double
            .commands("getMore")
            .iter()
            .any(|c| c.get_str("collection") == Ok("orders"))
    })
    .await;
    let opened = double.documents("shop", "sluice_signals");
    assert!(
        opened
            .iter()
            .any(|d| d.get_str("type") == Ok("snapshot-window-open")),
        "the low watermark is in the signal collection: {opened:?}"
    );
    double.append(upsert_event("update", 500, "changed in the window"));
    double.append(change_event("delete", "shop", "orders", 700));
    double.hold_reads(false);
}

/// A writer racing the snapshot until it is finished: new documents, updates, deletes.
async fn write_until_finished(setup: &Setup, daemon: &mut Daemon) {
    let double = &setup.double;
    let mut next = 3001;
    let mut writes = 0;
    while !(daemon_said(daemon, "incremental snapshot finished") && setup.progress().is_none()) {
        match writes % 3 {
            0 => double.append(upsert_event("insert", next, "inserted")),
            1 => double.append(upsert_event("update", 1 + (writes * 37) % 3000, "updated")),
            _ => double.append(change_event(
                "delete",
                "shop",
                "orders",
                1 + (writes * 53) % 3000,
            )),
        };
        next += i32::from(writes % 3 == 0);
        writes += 1;
        assert!(daemon.exited().is_none(), "{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(
            writes < 20_000,
            "the snapshot did not finish:\n{}",
            daemon.log()
        );
    }
    setup.wait_finished(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_signal_reads_the_collection_in_chunks_and_the_stream_wins_inside_a_window() {
    let setup = Setup::start().await;
    let double = &setup.double;
    double.store(
        "shop",
        "orders",
        (1..=3000).map(|id| order(id, &format!("doc {id}"))),
    );
    let config = setup.config("incremental_chunk_rows = 1000");
    let mut daemon = Daemon::start(&config);
    setup.wait_streaming(&mut daemon).await;

    change_inside_the_first_window(&setup, &config, &mut daemon).await;
    write_until_finished(&setup, &mut daemon).await;
    setup.wait_finished(&mut daemon).await;

    let records = read_until_equal(&setup, &collection(&setup)).await;
    let reads: Vec<&Published> = records.iter().filter(|r| r.op == "r").collect();
    assert!(reads.iter().all(|r| r.snapshot == "incremental"));
    assert!(
        reads.len() >= 2000,
        "{} documents read by the snapshot",
        reads.len()
    );
    // The chunk's stale copies of 500 and 700 were left out: the stream's events stand.
    for id in [500, 700] {
        let ops: Vec<&str> = records
            .iter()
            .filter(|r| r.id == id_text(id))
            .map(|r| r.op.as_str())
            .collect();
        assert!(!ops.contains(&"r"), "{id}: {ops:?}");
    }
    let log = daemon.log();
    assert!(log.contains("signal received"), "{log}");
    wait_until("the watermarks deleted again", &mut daemon, |_| {
        setup.double.documents("shop", "sluice_signals").len() == 1
    })
    .await;
    // The signal collection's documents are instructions, never published.
    let signals = setup
        .read("app.shop.sluice_signals", 0, Duration::from_secs(2))
        .await;
    assert!(signals.is_empty());
    let letters = setup
        .read(&format!("{PREFIX}.dlq"), 0, Duration::from_secs(1))
        .await;
    assert!(letters.is_empty(), "{} dead letters", letters.len());
    daemon.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_carries_on_after_the_last_chunk_on_the_broker() {
    let setup = Setup::start().await;
    let double = &setup.double;
    let total = 20_000;
    double.store("shop", "orders", (1..=total).map(|id| order(id, "before")));
    let config = setup.config("incremental_chunk_rows = 500");
    let mut daemon = Daemon::start(&config);
    setup.wait_streaming(&mut daemon).await;
    // A chunk of 500 takes one to four getMores: after twelve, between 3 and 12 chunks are read and
    // the next one waits halfway, far from the end.
    double.hold_reads_after(12);
    signal(&config, &["shop.orders"]);
    wait_until("three chunks on the broker", &mut daemon, |_| {
        setup.rows_read("shop.orders") >= 1500
    })
    .await;
    // The progress stored catches up with the broker; a SIGKILL leaves it there.
    tokio::time::sleep(Duration::from_millis(500)).await;
    daemon.kill();
    let stored = setup.progress().expect("the progress is stored");
    let read_before = stored["tables"][0]["rows"].as_u64().unwrap();
    assert!((1500..=6000).contains(&read_before), "{stored}");
    assert!(
        stored["tables"][0]["last_key"][0].is_string(),
        "the last key is stored: {stored}"
    );
    double.hold_reads(false);

    let mut daemon = Daemon::start(&config);
    setup.wait_finished(&mut daemon).await;
    let log = daemon.log();
    assert!(
        log.contains("carrying on the incremental snapshot") && log.contains("from=Some"),
        "the second run did not carry on after a stored key:\n{log}"
    );
    let records = read_until_equal(&setup, &collection(&setup)).await;
    let reads: Vec<&str> = records
        .iter()
        .filter(|r| r.op == "r")
        .map(|r| r.id.as_str())
        .collect();
    let distinct: std::collections::BTreeSet<&str> = reads.iter().copied().collect();
    assert_eq!(distinct.len(), total as usize, "every document read");
    // At most the chunks in flight at the kill are read twice, never the part before them.
    let twice = reads.len() - distinct.len();
    assert!(twice <= 4 * 500, "{twice} documents read twice");
    // Started over, it would read every document before the stored key again.
    assert!(twice < read_before as usize, "{twice} read twice");
    daemon.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_stop() {
    let setup = Setup::start().await;
    let double = &setup.double;
    let total = 10_000;
    double.store("shop", "orders", (1..=total).map(|id| order(id, "x")));
    let config = setup.config("incremental_chunk_rows = 150");
    let mut daemon = Daemon::start(&config);
    setup.wait_streaming(&mut daemon).await;
    // Each chunk of 150 takes a getMore: the reader is let on for a few chunks at a time, then waits.
    double.hold_reads_after(6);
    signal(&config, &["shop.orders"]);
    wait_until("a chunk on the broker", &mut daemon, |_| {
        setup.rows_read("shop.orders") > 0
    })
    .await;
    signal(&config, &["--pause"]);
    wait_until("the pause stored", &mut daemon, |_| {
        setup.progress().is_some_and(|p| p["paused"] == true)
    })
    .await;
    // Paused: the waiting reader was let go; released now, nothing reads on.
    double.hold_reads(false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let paused_at = setup.rows_read("shop.orders");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(setup.rows_read("shop.orders"), paused_at);
    assert!(paused_at < total as u64, "finished before the pause");
    let (status, stdout, stderr) = sluice(&["status", "-c", config.to_str().unwrap()]);
    assert!(status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("shop.orders") && stdout.contains("paused"),
        "{stdout}"
    );

    double.hold_reads_after(6);
    signal(&config, &["--resume"]);
    wait_until("reading again", &mut daemon, |_| {
        setup.rows_read("shop.orders") > paused_at
    })
    .await;
    signal(&config, &["--stop", "shop.orders"]);
    wait_until("the snapshot stopped", &mut daemon, |_| {
        setup.progress().is_none()
    })
    .await;
    let log = daemon.log();
    assert!(log.contains("incremental snapshot stopped"), "{log}");
    assert!(!log.contains("incremental snapshot finished"), "{log}");
    let read = setup.read(ORDERS, 0, Duration::from_secs(5)).await;
    assert!(
        !read.is_empty() && read.len() < total as usize,
        "{} documents published of {total}",
        read.len()
    );
    daemon.stop_cleanly();
}

/// A document inserted into the signal collection by hand (as the server logs it).
fn signal_insert(id: &str, fields: Document) -> Document {
    let mut event = change_event("insert", "shop", "sluice_signals", id);
    let mut document = doc! { "_id": id };
    document.extend(fields);
    event.insert("fullDocument", document);
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_signals_and_bad_filters_are_dead_letters_and_a_filter_selects_documents() {
    let setup = Setup::start().await;
    let double = &setup.double;
    double.store(
        "shop",
        "customers",
        (1..=300).map(|id| doc! { "_id": id, "status": if id % 3 == 0 { "new" } else { "old" } }),
    );
    double.store("shop", "orders", (1..=10).map(|id| order(id, "x")));
    let config = setup.config("incremental_chunk_rows = 40");
    let mut daemon = Daemon::start(&config);
    setup.wait_streaming(&mut daemon).await;

    double.append(signal_insert(
        "bad-1",
        doc! { "type": "execute-snapshot", "data": "{\"data-collections\": 7}" },
    ));
    double.append(signal_insert("bad-2", doc! { "data": "{}" }));
    double.append(signal_insert(
        "bad-3",
        doc! { "type": "execute-snapshot", "data": { "data-collections": ["elsewhere.things"] } },
    ));
    // A filter that is not a filter document refuses its collection only.
    double.append(signal_insert(
        "bad-4",
        doc! { "type": "execute-snapshot", "data": "{\"data-collections\": [\"shop.orders\"], \"additional-conditions\": [{\"data-collection\": \"shop.orders\", \"filter\": \"label = 'x'\"}]}" },
    ));
    signal(
        &config,
        &["shop.customers", "--filter", r#"{"status": "new"}"#],
    );
    setup.wait_finished(&mut daemon).await;

    let letters = setup.dead_letters(4).await;
    assert_eq!(letters.len(), 4, "{letters:?}");
    assert!(
        letters.iter().all(|l| l["stage"] == "signal"),
        "{letters:?}"
    );
    assert!(
        letters
            .iter()
            .all(|l| l["collection"] == "shop.sluice_signals"),
        "{letters:?}"
    );
    let errors: Vec<&str> = letters
        .iter()
        .map(|l| l["error"].as_str().unwrap())
        .collect();
    for expected in [
        "data-collections",
        "no `type`",
        "not captured",
        "is not JSON",
    ] {
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{expected}: {errors:?}"
        );
    }
    let raw: Json = serde_json::from_str(letters[0]["change"].as_str().unwrap()).unwrap();
    assert_eq!(raw["_id"], "bad-1", "the signal document as written: {raw}");

    let customers = setup.decode(
        &setup
            .read("app.shop.customers", 100, Duration::from_secs(30))
            .await,
    );
    assert_eq!(
        customers.len(),
        100,
        "only the documents the filter selects"
    );
    assert!(customers
        .iter()
        .all(|c| c.after.as_ref().unwrap()["status"] == "new" && c.snapshot == "incremental"));
    let orders = setup.read(ORDERS, 0, Duration::from_secs(2)).await;
    assert!(orders.is_empty(), "the refused collection was not read");
    daemon.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oplog_capture_reads_signals_and_watermarks_from_the_oplog() {
    let setup = Setup::start().await;
    let double = &setup.double;
    double.append_oplog(doc! { "op": "n", "ns": "", "o": { "msg": "periodic noop" } });
    double.store("shop", "orders", (1..=1200).map(|id| order(id, "before")));
    let config = setup.config("capture = \"oplog\"\nincremental_chunk_rows = 250");
    let mut daemon = Daemon::start(&config);
    setup.wait_streaming(&mut daemon).await;
    signal(&config, &["shop.orders"]);
    setup.wait_finished(&mut daemon).await;
    let closed = double
        .commands("insert")
        .iter()
        .flat_map(|c| c.get_array("documents").cloned().unwrap_or_default())
        .filter(|d| {
            d.as_document()
                .is_some_and(|d| d.get_str("type") == Ok("snapshot-window-close"))
        })
        .count();
    assert_eq!(closed, 5, "five chunks, each closed by a watermark");
    wait_until("the watermarks deleted again", &mut daemon, |_| {
        double.documents("shop", "sluice_signals").len() == 1
    })
    .await;
    let records = read_until_equal(&setup, &collection(&setup)).await;
    assert!(records
        .iter()
        .all(|r| r.op == "r" && r.snapshot == "incremental"));
    assert_eq!(records.len(), 1200);
    daemon.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_snapshot_says_how_to_set_the_signal_collection_and_bad_keys_are_named() {
    let setup = Setup::start().await;
    let config = setup.config_with("collections = [\"shop.*\"]");
    let (status, stdout, stderr) =
        sluice(&["snapshot", "-c", config.to_str().unwrap(), "shop.orders"]);
    assert!(!status.success(), "{stdout}");
    assert!(
        stderr.contains("signal_collection = \"shop.sluice_signals\""),
        "{stderr}"
    );
    for (lines, key) in [
        ("signal_collection = \"shop.*\"", "source.signal_collection"),
        ("signal_collection = \"nodot\"", "source.signal_collection"),
        (
            "signal_collection = \"shop.s\"\nincremental_chunk_rows = 0",
            "source.incremental_chunk_rows",
        ),
    ] {
        let config = setup.config_with(&format!("collections = [\"shop.*\"]\n{lines}"));
        let (status, _, stderr) =
            sluice(&["snapshot", "-c", config.to_str().unwrap(), "shop.orders"]);
        assert!(!status.success());
        assert!(stderr.contains(key), "{lines}: {stderr}");
    }
    assert!(setup.double.commands("insert").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initial_snapshot_leaves_the_signal_collection_out_and_signals_follow_it() {
    let setup = Setup::start().await;
    let double = &setup.double;
    double.store("shop", "orders", (1..=50).map(|id| order(id, "x")));
    // An old signal and a watermark left by an earlier run: instructions, never documents to publish.
    double.store(
        "shop",
        "sluice_signals",
        [
            doc! { "_id": "old", "type": "log", "data": "{\"message\": \"old\"}" },
            doc! { "_id": "w", "type": "snapshot-window-open", "data": "low:gone-1:1:1" },
        ],
    );
    let config = setup
        .config_with("collections = [\"shop.*\"]\nsignal_collection = \"shop.sluice_signals\"");
    let mut daemon = Daemon::start(&config);
    setup.wait_streaming(&mut daemon).await;
    let first = setup.decode(&setup.read(ORDERS, 50, Duration::from_secs(30)).await);
    assert_eq!(first.len(), 50);
    assert!(first
        .iter()
        .all(|r| r.op == "r" && r.snapshot != "incremental"));

    signal(&config, &["shop.orders"]);
    setup.wait_finished(&mut daemon).await;
    let all = setup.decode(&setup.read(ORDERS, 100, Duration::from_secs(30)).await);
    assert_eq!(all.len(), 100, "the collection once more, incrementally");
    assert!(all[50..].iter().all(|r| r.snapshot == "incremental"));
    let signals = setup
        .read("app.shop.sluice_signals", 0, Duration::from_secs(2))
        .await;
    assert!(
        signals.is_empty(),
        "the signal collection was not snapshotted"
    );
    let letters = setup
        .read(&format!("{PREFIX}.dlq"), 0, Duration::from_secs(1))
        .await;
    assert!(letters.is_empty(), "{} dead letters", letters.len());
    daemon.stop_cleanly();
}

/// `snapshot_new_tables` (on by default): a collection that joins the selection while a position is
/// stored is read incrementally by itself at the next start; the others are not read again, and a
/// further start reads neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_joining_the_selection_is_snapshotted_incrementally_by_itself() {
    const ITEMS: &str = "app.shop.items";
    let setup = Setup::start().await;
    let double = &setup.double;
    double.store("shop", "orders", (1..=20).map(|id| order(id, "o")));
    double.store("shop", "items", (1..=15).map(|id| order(id, "i")));
    let signals = "signal_collection = \"shop.sluice_signals\"";

    // First run: only the orders, through the initial snapshot.
    let config = setup.config_with(&format!("collections = [\"shop.orders\"]\n{signals}"));
    let mut daemon = Daemon::start(&config);
    setup.wait_streaming(&mut daemon).await;
    let orders = setup.decode(&setup.read(ORDERS, 20, Duration::from_secs(30)).await);
    assert_eq!(orders.len(), 20);
    assert!(orders
        .iter()
        .all(|r| r.op == "r" && r.snapshot != "incremental"));
    daemon.stop_cleanly();

    // Second run: the items joined; they alone are read, incrementally.
    let config = setup.config_with(&format!(
        "collections = [\"shop.orders\", \"shop.items\"]\n{signals}"
    ));
    let mut daemon = Daemon::start(&config);
    setup.wait_finished(&mut daemon).await;
    assert!(
        daemon_said(&daemon, "collections joined the selection"),
        "{}",
        daemon.log()
    );
    let items = setup.decode(&setup.read(ITEMS, 15, Duration::from_secs(30)).await);
    assert_eq!(items.len(), 15);
    assert!(items
        .iter()
        .all(|r| r.op == "r" && r.snapshot == "incremental"));
    let orders = setup.read(ORDERS, 21, Duration::from_secs(2)).await;
    assert_eq!(orders.len(), 20, "the orders were not read again");
    daemon.stop_cleanly();

    // Third run: nothing is new.
    let mut daemon = Daemon::start(&config);
    wait_until("the stream resumed", &mut daemon, |daemon| {
        daemon_said(daemon, "resuming after stored position")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !daemon_said(&daemon, "collections joined the selection"),
        "{}",
        daemon.log()
    );
    assert_eq!(
        setup.read(ITEMS, 16, Duration::from_secs(2)).await.len(),
        15
    );
    assert_eq!(
        setup.read(ORDERS, 21, Duration::from_secs(2)).await.len(),
        20
    );
    daemon.stop_cleanly();
}
