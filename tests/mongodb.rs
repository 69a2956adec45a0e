//! The MongoDB reader end to end through the real driver, against the wire-protocol TEST DOUBLE in
//! `tests/support/src/mongo_double.rs` (no MongoDB server can be installed here), a real tansu broker
//! and the registry double: events in MongoDB's documented format go in, Avro events come out, the
//! resume token survives a dropped connection and a restart, a lost token stops sluice with a clear
//! error, and a malformed event goes to the dead-letter topic. `tests/mongodb_live.rs` runs the same
//! kind of scenario against a real replica set when `MONGODB_URI` is set.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use sluice_testkit::broker::{read_topic, Record, Tansu};
use sluice_testkit::bson::{doc, Bson, Document};
use sluice_testkit::mongo_double::{change_event, token_of, MongoDouble, REPLICA_SET};
use sluice_testkit::registry::RegistryDouble;

use common::Daemon;

const PREFIX: &str = "app";

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

    fn config(&self) -> PathBuf {
        self.config_with("")
    }

    /// The config, with `source_lines` added to `[source]`.
    fn config_with(&self, source_lines: &str) -> PathBuf {
        self.config_selecting(&format!(
            "collections = [\"shop.*\"]\nexclude_collections = [\"shop.audit\"]\n{source_lines}"
        ))
    }

    /// The config, with `source_lines` (the selection among them) as `[source]`'s own.
    fn config_selecting(&self, source_lines: &str) -> PathBuf {
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

    /// The config, with contracts read from `<dir>/contracts`.
    fn config_with_contracts(&self) -> (PathBuf, PathBuf) {
        let config = self.config();
        let contracts = self.dir.path().join("contracts");
        std::fs::create_dir_all(&contracts).expect("contracts dir");
        let text = std::fs::read_to_string(&config)
            .expect("read config")
            .replace(
                "[avro]\n",
                &format!("[avro]\ncontracts_dir = \"{}\"\n", contracts.display()),
            );
        std::fs::write(&config, text).expect("write config");
        (config, contracts)
    }

    fn position_file(&self) -> Option<Json> {
        let path = self
            .dir
            .path()
            .join(format!("positions/{PREFIX}.mongodb.position.json"));
        let text = std::fs::read_to_string(path).ok()?;
        Some(serde_json::from_str(&text).expect("position file is JSON"))
    }

    /// Waits until the position file holds a position of `kind` (`mongodb`: the snapshot is complete).
    async fn wait_for_position(&self, kind: &str, daemon: &Daemon) {
        wait_until(&format!("a `{kind}` position stored"), daemon, || {
            self.position_file()
                .is_some_and(|f| f["position"]["kind"] == kind)
        })
        .await;
    }

    fn stored_token(&self) -> Option<String> {
        let file = self.position_file()?;
        file["position"]["resume_token"].as_str().map(str::to_owned)
    }

    async fn read(&self, topic: &str, min: usize) -> Vec<Record> {
        self.read_within(topic, min, Duration::from_secs(60)).await
    }

    /// The records of `topic` once it has `min`, or whatever it has after `within` (to show that
    /// nothing more arrives).
    async fn read_within(&self, topic: &str, min: usize, within: Duration) -> Vec<Record> {
        read_topic(&self.broker.bootstrap(), topic, min, within)
            .await
            .expect("read topic")
    }

    fn decode(&self, body: &[u8]) -> Json {
        common::decode_registered(&self.registry, body)
    }

    /// (key, value) of each record, decoded; a tombstone's value is null.
    fn decode_all(&self, records: &[Record]) -> Vec<(Json, Json)> {
        records
            .iter()
            .map(|r| {
                let key = self.decode(r.key.as_deref().expect("every record has a key"));
                let value = r.value.as_deref().map_or(Json::Null, |v| self.decode(v));
                (key, value)
            })
            .collect()
    }
}

/// Waits until `check` holds, or fails with the daemon's log.
async fn wait_until(what: &str, daemon: &Daemon, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn insert(coll: &str, id: i32, fields: Document) -> Document {
    let mut event = change_event("insert", "shop", coll, id);
    let mut document = doc! { "_id": id };
    document.extend(fields);
    event.insert("fullDocument", document);
    event
}

fn text_of(json: &Json) -> Json {
    serde_json::from_str(json.as_str().expect("a JSON string")).expect("Extended JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_streams_publish_resume_and_dead_letter_through_the_driver() {
    let setup = Setup::start().await;
    let config = setup.config();
    let mut daemon = Daemon::start(&config);
    // The shop has no documents yet: the snapshot takes its starting point, reads nothing, checks that
    // the point is still in the oplog, and the stream opens after it.
    wait_until(
        "the change stream and the first stored position",
        &daemon,
        || setup.double.change_stream_stages().len() >= 3 && setup.stored_token().is_some(),
    )
    .await;
    let stages = setup.double.change_stream_stages();
    let (taken, probe, streaming) = (&stages[0], &stages[1], &stages[2]);
    assert!(
        taken.get("startAfter").is_none(),
        "a first run takes its starting point from now: {taken}"
    );
    assert_eq!(
        probe.get_document("startAfter"),
        Ok(&token_of(0)),
        "{probe}"
    );
    assert_eq!(
        streaming.get_bool("allChangesForCluster"),
        Ok(true),
        "{streaming}"
    );
    assert_eq!(
        streaming.get_str("fullDocument"),
        Ok("updateLookup"),
        "{streaming}"
    );
    assert_eq!(
        streaming.get_document("startAfter"),
        Ok(&token_of(0)),
        "the stream starts at the point taken before the snapshot: {streaming}"
    );
    assert!(daemon.log().contains("snapshot read"), "{}", daemon.log());

    let double = &setup.double;
    double.append(insert(
        "orders",
        1,
        doc! { "qty": 5_i64, "price": Bson::Decimal128("12.50".parse().unwrap()) },
    ));
    let mut update = change_event("update", "shop", "orders", 1);
    update.insert(
        "updateDescription",
        doc! { "updatedFields": { "qty": 6_i32 }, "removedFields": ["price"] },
    );
    update.insert("fullDocument", doc! { "_id": 1, "qty": 6_i32 });
    double.append(update);
    let mut replace = change_event("replace", "shop", "orders", 1);
    replace.insert("fullDocument", doc! { "_id": 1, "whole": "new" });
    double.append(replace);
    double.append(insert("audit", 9, doc! { "who": "x" }));
    // A transaction over two collections: each event carries the transaction number and session.
    for (coll, id) in [("orders", 2), ("customers", 7)] {
        let mut event = insert(coll, id, doc! {});
        event.insert("txnNumber", 3_i64);
        event.insert("lsid", doc! { "id": Bson::Binary(sluice_testkit::bson::Binary { subtype: sluice_testkit::bson::spec::BinarySubtype::Uuid, bytes: vec![1; 16] }) });
        double.append(event);
    }
    double.append(change_event("delete", "shop", "orders", 1));
    let mut malformed = change_event("insert", "shop", "orders", 3);
    malformed.remove("documentKey");
    malformed.insert("fullDocument", doc! { "_id": 3 });
    double.append(malformed);
    let mut drop = change_event("drop", "shop", "old", 0);
    drop.remove("documentKey");
    drop.remove("wallTime");
    let last_before_cut = double.append(drop);

    let orders = setup.decode_all(&setup.read(&format!("{PREFIX}.shop.orders"), 6).await);
    let ops: Vec<&str> = orders
        .iter()
        .map(|(_, v)| v["op"].as_str().unwrap_or("tombstone"))
        .collect();
    assert_eq!(ops, ["c", "u", "u", "c", "d", "tombstone"], "{orders:#?}");
    let (key, created) = &orders[0];
    assert_eq!(key["id"], "{\"$numberInt\":\"1\"}");
    assert_eq!(
        text_of(&created["after"]),
        serde_json::json!({"_id": {"$numberInt": "1"}, "qty": {"$numberLong": "5"}, "price": {"$numberDecimal": "12.50"}})
    );
    assert!(created["before"].is_null());
    let source = &created["source"];
    assert_eq!(source["connector"], "mongodb");
    assert_eq!(source["name"], PREFIX);
    assert_eq!(source["db"], "shop");
    assert_eq!(source["collection"], "orders");
    assert_eq!(source["rs"], REPLICA_SET);
    assert_eq!(source["snapshot"], "false");
    let (_, updated) = &orders[1];
    assert_eq!(
        text_of(&updated["updateDescription"]["updatedFields"]),
        serde_json::json!({"qty": {"$numberInt": "6"}})
    );
    assert_eq!(
        updated["updateDescription"]["removedFields"],
        serde_json::json!(["price"])
    );
    assert_eq!(
        text_of(&updated["after"])["qty"],
        serde_json::json!({"$numberInt": "6"})
    );
    assert_eq!(text_of(&orders[2].1["after"])["whole"], "new");
    let (_, in_transaction) = &orders[3];
    assert_eq!(in_transaction["source"]["txnNumber"], 3);
    assert_eq!(
        in_transaction["source"]["lsid"],
        "01010101-0101-0101-0101-010101010101"
    );
    assert!(
        orders[4].1["after"].is_null() && orders[5].1.is_null(),
        "a delete, then its tombstone"
    );
    assert_eq!(orders[5].0["id"], "{\"$numberInt\":\"1\"}");

    let customers = setup.decode_all(&setup.read(&format!("{PREFIX}.shop.customers"), 1).await);
    assert_eq!(customers.len(), 1);
    assert_eq!(customers[0].1["source"]["txnNumber"], 3);
    // Every later event is on the broker, so a topic for the audit collection would be there by now.
    let audit = setup
        .read_within(&format!("{PREFIX}.shop.audit"), 0, Duration::from_secs(3))
        .await;
    assert!(audit.is_empty(), "an excluded collection publishes nothing");

    let letters = setup.read(&format!("{PREFIX}.dlq"), 1).await;
    assert_eq!(letters.len(), 1, "one dead letter: the malformed event");
    let letter = setup.decode(letters[0].value.as_deref().unwrap());
    assert_eq!(letter["stage"], "decode");
    assert_eq!(letter["error"], "change event field `documentKey`: missing");
    assert_eq!(letter["collection"], "shop.orders");
    assert_eq!(letter["source"]["connector"], "mongodb");
    let raw: Json = serde_json::from_str(letter["change"].as_str().unwrap()).unwrap();
    assert_eq!(
        raw["fullDocument"]["_id"], 3,
        "the event as the server sent it"
    );

    // Everything up to the drop is on the broker: its token is the stored position.
    let cut_token =
        sluice_mongodb::change::canonical_json(&Bson::Document(last_before_cut.clone()));
    wait_until("the position after the drop event", &daemon, || {
        setup.stored_token().as_deref() == Some(cut_token.as_str())
    })
    .await;

    // A dropped connection: the stream resumes after the last event read, nothing lost or repeated.
    let aggregates_before = double.change_stream_stages().len();
    double.drop_connections();
    double.append(insert("orders", 4, doc! {}));
    let orders = setup.read(&format!("{PREFIX}.shop.orders"), 7).await;
    assert_eq!(orders.len(), 7, "one more event after the cut, once");
    let resumed = double.change_stream_stages();
    assert!(
        resumed.len() > aggregates_before,
        "the stream was opened again"
    );
    let resumed_from = resumed.last().unwrap();
    let token = resumed_from
        .get_document("resumeAfter")
        .or_else(|_| resumed_from.get_document("startAfter"));
    assert_eq!(
        token,
        Ok(&last_before_cut),
        "resumed from the last event read: {resumed_from}"
    );

    // A restart resumes after the stored token: what was written while sluice was down arrives once.
    let last = double.append(insert("orders", 5, doc! {}));
    let last_token = sluice_mongodb::change::canonical_json(&Bson::Document(last.clone()));
    wait_until("the position of the last event", &daemon, || {
        setup.stored_token().as_deref() == Some(last_token.as_str())
    })
    .await;
    daemon.stop_cleanly();
    assert!(
        daemon.log().contains("pipeline stopped"),
        "{}",
        daemon.log()
    );
    double.append(insert("orders", 6, doc! {}));
    let final_token = double.append(insert("customers", 8, doc! {}));
    let final_token = sluice_mongodb::change::canonical_json(&Bson::Document(final_token));
    let mut daemon = Daemon::start(&config);
    let orders = setup.decode_all(&setup.read(&format!("{PREFIX}.shop.orders"), 9).await);
    let customers = setup.read(&format!("{PREFIX}.shop.customers"), 2).await;
    assert_eq!(orders.len(), 9, "{orders:#?}");
    assert_eq!(customers.len(), 2);
    let ids: Vec<&str> = orders[6..]
        .iter()
        .map(|(k, _)| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "{\"$numberInt\":\"4\"}",
            "{\"$numberInt\":\"5\"}",
            "{\"$numberInt\":\"6\"}"
        ]
    );
    let restarted = double.change_stream_stages().last().cloned().unwrap();
    assert_eq!(
        restarted.get_document("startAfter"),
        Ok(&last),
        "{restarted}"
    );
    wait_until("the position of the last event", &daemon, || {
        setup.stored_token().as_deref() == Some(final_token.as_str())
    })
    .await;
    daemon.stop_cleanly();

    // The stored token fell off the oplog: sluice stops and says what happened and what to do.
    double.forget_history();
    double.append(insert("orders", 10, doc! {}));
    Daemon::start(&config).fails_saying(&["no longer in the oplog", "Move the position file"]);
    assert_eq!(
        setup.stored_token().as_deref(),
        Some(final_token.as_str()),
        "the position is kept"
    );
}

/// Each record's operation and `source.snapshot`, by document id (the key's Extended JSON, decoded).
fn by_id(records: &[(Json, Json)]) -> Vec<(Json, String, String)> {
    records
        .iter()
        .map(|(key, value)| {
            let id: Json = serde_json::from_str(key["id"].as_str().unwrap()).unwrap();
            let op = value["op"].as_str().unwrap_or("tombstone").to_owned();
            let snapshot = value["source"]["snapshot"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            (id, op, snapshot)
        })
        .collect()
}

fn int_id(n: i32) -> Json {
    serde_json::json!({ "$numberInt": n.to_string() })
}

/// What a consumer that applies every record in order ends up holding: the ids still present.
fn replayed(records: &[(Json, String, String)]) -> std::collections::BTreeSet<String> {
    let mut present = std::collections::BTreeSet::new();
    for (id, op, _) in records {
        match op.as_str() {
            "d" | "tombstone" => present.remove(&id.to_string()),
            _ => present.insert(id.to_string()),
        };
    }
    present
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_reads_in_ranges_carries_on_after_a_stop_and_hands_over_to_the_stream() {
    let setup = Setup::start().await;
    let double = &setup.double;
    double.store(
        "shop",
        "orders",
        (0..3000).map(|id| doc! { "_id": id, "n": id }),
    );
    double.store(
        "shop",
        "customers",
        (0..100).map(|i| doc! { "_id": format!("c{i:03}") }),
    );
    double.store("shop", "audit", [doc! { "_id": 1 }]);
    double.store("other", "things", [doc! { "_id": 1 }]);
    let config = setup.config_with("snapshot_connections = 2\nsnapshot_chunk_documents = 1000");

    // The readers get their first batches, then their getMores wait: the snapshot is caught halfway.
    double.hold_reads(true);
    let mut daemon = Daemon::start(&config);
    let progress = |file: &Json| -> usize {
        file["position"]["chunks"].as_array().map_or(0, |chunks| {
            chunks.iter().filter(|c| !c["last"].is_null()).count()
        })
    };
    wait_until("two parts of the snapshot stored", &daemon, || {
        setup.position_file().is_some_and(|f| progress(&f) >= 2)
    })
    .await;
    let planned = setup.position_file().unwrap();
    assert_eq!(planned["position"]["kind"], "mongodb_snapshot", "{planned}");
    let chunks = planned["position"]["chunks"].as_array().unwrap().clone();
    let orders_chunks: Vec<(&Json, &Json)> = chunks
        .iter()
        .filter(|c| c["namespace"] == "shop.orders")
        .map(|c| (&c["from"], &c["to"]))
        .collect();
    assert_eq!(
        orders_chunks,
        [
            (&Json::Null, &Json::from("{\"$numberInt\":\"1000\"}")),
            (
                &Json::from("{\"$numberInt\":\"1000\"}"),
                &Json::from("{\"$numberInt\":\"2000\"}")
            ),
            (&Json::from("{\"$numberInt\":\"2000\"}"), &Json::Null),
        ],
        "3,000 orders in ranges of 1,000: {planned}"
    );
    assert!(
        chunks
            .iter()
            .all(|c| c["namespace"] != "shop.audit" && c["namespace"] != "other.things"),
        "only selected collections: {planned}"
    );
    // Written while the snapshot runs: streamed afterwards (and maybe read too), never missed.
    double.append(insert("orders", 5000, doc! { "n": 5000 }));
    double.append(change_event("delete", "shop", "orders", 2999));
    daemon.stop_cleanly();
    let stopped = setup.position_file().unwrap();
    assert_eq!(stopped["position"]["kind"], "mongodb_snapshot", "{stopped}");
    assert!(
        daemon.log().contains("stopped during the snapshot"),
        "{}",
        daemon.log()
    );

    double.hold_reads(false);
    // An election interrupts the carried-on read: it is retried from the last document handed on.
    double.fail_next_read(11602);
    let mut daemon = Daemon::start(&config);
    setup.wait_for_position("mongodb", &daemon).await;
    assert!(
        daemon
            .log()
            .contains("carrying on with the interrupted snapshot"),
        "{}",
        daemon.log()
    );
    assert!(
        daemon.log().contains("MongoDB read interrupted"),
        "the injected failure was met and retried: {}",
        daemon.log()
    );
    let after = double.append(insert("orders", 6000, doc! {}));
    let after = sluice_mongodb::change::canonical_json(&Bson::Document(after));
    wait_until(
        "the position of the write after the snapshot",
        &daemon,
        || setup.stored_token().as_deref() == Some(after.as_str()),
    )
    .await;

    // Read 0..2998 once each, the writes streamed: 3,003 records at least (5000 may be read too).
    let orders =
        by_id(&setup.decode_all(&setup.read(&format!("{PREFIX}.shop.orders"), 3003).await));
    let reads: Vec<&Json> = orders
        .iter()
        .filter(|(_, op, _)| op == "r")
        .map(|(id, _, _)| id)
        .collect();
    for n in 0..2999 {
        let times = reads.iter().filter(|id| ***id == int_id(n)).count();
        assert_eq!(
            times, 1,
            "order {n} read {times} times: the second run carried on, it did not start over"
        );
    }
    let streamed: Vec<(&Json, &str)> = orders
        .iter()
        .filter(|(_, op, _)| op != "r")
        .map(|(id, op, _)| (id, op.as_str()))
        .collect();
    assert_eq!(
        streamed,
        [
            (&int_id(5000), "c"),
            (&int_id(2999), "d"),
            (&int_id(2999), "tombstone"),
            (&int_id(6000), "c"),
        ],
        "the writes made during the snapshot, then after it, streamed from the point taken before it"
    );
    let expected: std::collections::BTreeSet<String> = (0..2999)
        .chain([5000, 6000])
        .map(|n| int_id(n).to_string())
        .collect();
    assert_eq!(
        replayed(&orders),
        expected,
        "replaying the topic gives the collection"
    );

    let customers =
        by_id(&setup.decode_all(&setup.read(&format!("{PREFIX}.shop.customers"), 100).await));
    assert_eq!(customers.len(), 100);
    assert!(customers
        .iter()
        .all(|(id, op, _)| op == "r" && id.as_str().is_some_and(|s| s.starts_with('c'))));
    let markers: Vec<&str> = orders
        .iter()
        .chain(&customers)
        .filter(|(_, op, _)| op == "r")
        .map(|(_, _, snapshot)| snapshot.as_str())
        .collect();
    assert_eq!(
        markers.iter().filter(|m| **m == "last").count(),
        1,
        "one last snapshot record"
    );
    assert!(markers.iter().all(|m| *m == "true" || *m == "last"));
    for topic in ["shop.audit", "other.things"] {
        let records = setup
            .read_within(&format!("{PREFIX}.{topic}"), 0, Duration::from_secs(2))
            .await;
        assert!(records.is_empty(), "{topic} is not selected");
    }
    daemon.stop_cleanly();

    // The stored token fell off the oplog, and the config says when_needed: a new snapshot, then the stream.
    double.forget_history();
    double.append(insert("orders", 7000, doc! {}));
    let config = setup.config_with("snapshot = \"when_needed\"");
    let mut daemon = Daemon::start(&config);
    let before = orders.len();
    let orders = by_id(
        &setup.decode_all(
            &setup
                .read(&format!("{PREFIX}.shop.orders"), before + 3002)
                .await,
        ),
    );
    let again: Vec<&Json> = orders[before..]
        .iter()
        .filter(|(_, op, _)| op == "r")
        .map(|(id, _, _)| id)
        .collect();
    assert_eq!(
        again.len(),
        3002,
        "every order present now (0..2998, 5000, 6000, 7000), read again"
    );
    assert!(again.contains(&&int_id(7000)));
    assert!(
        daemon
            .log()
            .contains("snapshot = when_needed takes a new snapshot"),
        "{}",
        daemon.log()
    );
    daemon.stop_cleanly();
}

/// 2,000 orders in two ranges of 1,000; the snapshot stopped once both readers' first batches of 500
/// (0..499 and 1000..1499) are handed on, its reads still held. Returns the config.
async fn snapshot_stopped_after_first_batches(setup: &Setup) -> PathBuf {
    setup
        .double
        .store("shop", "orders", (0..2000).map(|id| doc! { "_id": id }));
    let config = setup.config_with("snapshot_chunk_documents = 1000");
    setup.double.hold_reads(true);
    let mut daemon = Daemon::start(&config);
    wait_until("both first batches stored", &daemon, || {
        setup.position_file().is_some_and(|f| {
            f["position"]["chunks"]
                .as_array()
                .is_some_and(|chunks| chunks.iter().all(|c| !c["last"].is_null()))
        })
    })
    .await;
    daemon.stop_cleanly();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_whose_starting_point_left_the_oplog_is_not_carried_on_or_repeated_for_ever() {
    let setup = Setup::start().await;
    let double = &setup.double;
    let config = snapshot_stopped_after_first_batches(&setup).await;
    let interrupted = setup.position_file().unwrap();

    // The point streaming would start from is gone: carrying on would read for nothing.
    double.forget_history();
    let finds = double.commands("find").len();
    Daemon::start(&config).fails_saying(&["no longer in the oplog", "Move the position file"]);
    assert_eq!(double.commands("find").len(), finds, "nothing was read");
    assert_eq!(
        setup.position_file().unwrap(),
        interrupted,
        "the position is kept"
    );

    // when_needed takes a new snapshot instead; when that one outlasts the oplog too, it stops
    // rather than snapshotting again and again.
    let config = setup.config_with("snapshot_chunk_documents = 1000\nsnapshot = \"when_needed\"");
    let mut daemon = Daemon::start(&config);
    wait_until("a new snapshot", &daemon, || {
        daemon.log().contains(
            "starting point is no longer in the oplog: snapshot = when_needed takes a new snapshot",
        ) && daemon.log().contains("snapshot started")
    })
    .await;
    double.forget_history();
    double.hold_reads(false);
    daemon.fails_saying(&[
        "the snapshot took longer than the oplog window",
        "replSetResizeOplog",
    ]);
    assert_eq!(
        daemon.log().matches("snapshot started").count(),
        1,
        "one new snapshot, not another: {}",
        daemon.log()
    );
    // The finished snapshot's position is kept, so a restart says the same instead of reading again.
    let kept = setup.position_file().unwrap();
    assert_eq!(kept["position"]["kind"], "mongodb_snapshot", "{kept}");
    let log =
        Daemon::start(&config).fails_saying(&["the snapshot took longer than the oplog window"]);
    assert!(!log.contains("snapshot started"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carried_on_snapshot_with_nothing_left_to_read_still_ends_with_last() {
    let setup = Setup::start().await;
    let double = &setup.double;
    let config = snapshot_stopped_after_first_batches(&setup).await;
    // Everything not handed on is deleted, the document held back for `last` included.
    for id in (499..1000).chain(1499..2000) {
        double.append(change_event("delete", "shop", "orders", id));
    }
    double.hold_reads(false);
    let mut daemon = Daemon::start(&config);
    setup.wait_for_position("mongodb", &daemon).await;
    daemon.stop_cleanly();
    let records =
        by_id(&setup.decode_all(&setup.read(&format!("{PREFIX}.shop.orders"), 998).await));
    let reads: Vec<&(Json, String, String)> =
        records.iter().filter(|(_, op, _)| op == "r").collect();
    let last: Vec<&Json> = reads
        .iter()
        .filter(|(_, _, marker)| marker == "last")
        .map(|(id, _, _)| id)
        .collect();
    assert_eq!(last.len(), 1, "one last record: {reads:?}");
    assert_eq!(
        reads.iter().filter(|(id, _, _)| id == last[0]).count(),
        2,
        "the last record is a document read again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carried_on_snapshot_follows_the_selection_the_config_makes_now() {
    let setup = Setup::start().await;
    let double = &setup.double;
    double.store("shop", "orders", (0..2000).map(|id| doc! { "_id": id }));
    double.store("shop", "customers", (0..2000).map(|id| doc! { "_id": id }));
    double.store("shop", "audit", (0..5).map(|id| doc! { "_id": id }));
    let chunking = "snapshot_chunk_documents = 1000\nsnapshot_connections = 2";
    let config = setup.config_selecting(&format!(
        "collections = [\"shop.orders\", \"shop.customers\"]\n{chunking}"
    ));
    double.hold_reads(true);
    let mut daemon = Daemon::start(&config);
    wait_until("part of the snapshot stored", &daemon, || {
        setup.position_file().is_some_and(|f| {
            f["position"]["chunks"]
                .as_array()
                .is_some_and(|chunks| chunks.iter().filter(|c| !c["last"].is_null()).count() >= 2)
        })
    })
    .await;
    daemon.stop_cleanly();
    let customers_before = setup
        .read(&format!("{PREFIX}.shop.customers"), 0)
        .await
        .len();
    assert!(
        customers_before < 2000,
        "the customers were not all read: {customers_before}"
    );

    // Customers are no longer selected, the audit collection now is.
    double.hold_reads(false);
    let config = setup.config_selecting(&format!(
        "collections = [\"shop.orders\", \"shop.audit\"]\n{chunking}"
    ));
    let mut daemon = Daemon::start(&config);
    setup.wait_for_position("mongodb", &daemon).await;
    let log = daemon.log();
    assert!(
        log.contains("no longer selected: left out of the interrupted snapshot"),
        "{log}"
    );
    assert!(
        log.contains("newly selected: added to the interrupted snapshot"),
        "{log}"
    );
    daemon.stop_cleanly();
    let audit = setup.decode_all(&setup.read(&format!("{PREFIX}.shop.audit"), 5).await);
    assert_eq!(audit.len(), 5, "the newly selected collection is read");
    let orders =
        by_id(&setup.decode_all(&setup.read(&format!("{PREFIX}.shop.orders"), 2000).await));
    for n in 0..2000 {
        let times = orders.iter().filter(|(id, _, _)| *id == int_id(n)).count();
        assert_eq!(times, 1, "order {n} read {times} times");
    }
    let customers_after = setup
        .read_within(
            &format!("{PREFIX}.shop.customers"),
            customers_before + 1,
            Duration::from_secs(3),
        )
        .await
        .len();
    assert_eq!(
        customers_after, customers_before,
        "no customer read after the selection left them out"
    );
}

/// An oplog entry of `op` on `shop.<coll>` with `o` (MongoDB's oplog format; the double adds `ts`).
fn entry(op: &str, coll: &str, o: Document) -> Document {
    doc! { "op": op, "ns": format!("shop.{coll}"), "o": o, "v": 2_i64, "wall": sluice_testkit::bson::DateTime::now() }
}

/// A transaction's command entry: `o` under the session's id and `txnNumber`.
fn in_session(o: Document, txn_number: i64) -> Document {
    let lsid = Bson::Binary(sluice_testkit::bson::Binary {
        subtype: sluice_testkit::bson::spec::BinarySubtype::Uuid,
        bytes: vec![2; 16],
    });
    doc! { "op": "c", "ns": "admin.$cmd", "o": o, "lsid": { "id": lsid }, "txnNumber": txn_number, "v": 2_i64 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oplog_tailing_publishes_diffs_and_transactions_and_resumes_after_its_timestamp() {
    let setup = Setup::start().await;
    let double = &setup.double;
    let start = double.append_oplog(doc! { "op": "n", "ns": "", "o": { "msg": "periodic noop" } });
    let config = setup.config_with("capture = \"oplog\"\nsnapshot = \"never\"");
    let mut daemon = Daemon::start(&config);
    let stored_ts = || -> Option<(u64, u64)> {
        let file = setup.position_file()?;
        let position = &file["position"];
        (position["kind"] == "mongodb_oplog").then(|| {
            (
                position["seconds"].as_u64().unwrap(),
                position["increment"].as_u64().unwrap(),
            )
        })
    };
    wait_until(
        "the newest entry stored as the starting point",
        &daemon,
        || stored_ts() == Some((u64::from(start.time), u64::from(start.increment))),
    )
    .await;

    double.append_oplog(entry("i", "orders", doc! { "_id": 1, "qty": 5 }));
    // The update's entry holds only the diff; update_lookup reads the document as it is now.
    double.store(
        "shop",
        "orders",
        [doc! { "_id": 1, "qty": 6, "tags": ["a"] }],
    );
    let mut update = entry(
        "u",
        "orders",
        doc! { "$v": 2, "diff": { "u": { "qty": 6 }, "i": { "tags": ["a"] }, "d": { "old": false } } },
    );
    update.insert("o2", doc! { "_id": 1 });
    double.append_oplog(update);
    double.append_oplog(entry("i", "audit", doc! { "_id": 9 }));
    double.append_oplog(entry("i", "orders", doc! { "qty": 1 }));
    double.append_oplog(in_session(
        doc! { "applyOps": [
            { "op": "i", "ns": "shop.orders", "o": { "_id": 2 } },
            { "op": "i", "ns": "shop.customers", "o": { "_id": 7 } },
        ] },
        3,
    ));
    double.append_oplog(entry("d", "orders", doc! { "_id": 1 }));
    // A prepared transaction waits for its commit; an aborted one publishes nothing.
    double.append_oplog(in_session(
        doc! { "applyOps": [{ "op": "i", "ns": "shop.orders", "o": { "_id": 3 } }], "prepare": true },
        4,
    ));
    double.append_oplog(in_session(
        doc! { "applyOps": [{ "op": "i", "ns": "shop.orders", "o": { "_id": 4 } }], "prepare": true },
        5,
    ));
    double.append_oplog(in_session(doc! { "abortTransaction": 1 }, 5));
    let committed = double.append_oplog(in_session(doc! { "commitTransaction": 1 }, 4));
    // A collection renamed into the selection brings documents no event announces: said, not hidden.
    double.append_oplog(doc! {
        "op": "c", "ns": "admin.$cmd",
        "o": { "renameCollection": "staging.orders", "to": "shop.imported", "stayTemp": false },
    });

    let orders = setup.decode_all(&setup.read(&format!("{PREFIX}.shop.orders"), 6).await);
    let seen: Vec<(Json, &str)> = orders
        .iter()
        .map(|(k, v)| {
            (
                serde_json::from_str(k["id"].as_str().unwrap()).unwrap(),
                v["op"].as_str().unwrap_or("tombstone"),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (int_id(1), "c"),
            (int_id(1), "u"),
            (int_id(2), "c"),
            (int_id(1), "d"),
            (int_id(1), "tombstone"),
            (int_id(3), "c")
        ],
        "{orders:#?}"
    );
    let updated = &orders[1].1;
    assert_eq!(
        text_of(&updated["updateDescription"]["updatedFields"]),
        serde_json::json!({ "qty": { "$numberInt": "6" }, "tags": ["a"] })
    );
    assert_eq!(
        updated["updateDescription"]["removedFields"],
        serde_json::json!(["old"])
    );
    assert_eq!(
        text_of(&updated["after"])["qty"],
        serde_json::json!({ "$numberInt": "6" }),
        "looked up"
    );
    assert_eq!(orders[2].1["source"]["txnNumber"], 3);
    assert_eq!(
        orders[2].1["source"]["lsid"],
        "02020202-0202-0202-0202-020202020202"
    );
    assert_eq!(
        orders[5].1["source"]["txnNumber"], 4,
        "published at its commit"
    );
    let customers = setup.decode_all(&setup.read(&format!("{PREFIX}.shop.customers"), 1).await);
    assert_eq!(customers.len(), 1);
    assert_eq!(customers[0].1["source"]["txnNumber"], 3);
    let letters = setup.read(&format!("{PREFIX}.dlq"), 1).await;
    assert_eq!(letters.len(), 1, "the insert without an _id");
    let letter = setup.decode(letters[0].value.as_deref().unwrap());
    assert!(
        letter["error"].as_str().unwrap().contains("`o._id`"),
        "{letter}"
    );
    assert_eq!(letter["collection"], "shop.orders");

    // Positions are stored once the commit is on the broker; a restart reads what came after.
    wait_until("the commit's timestamp stored", &daemon, || {
        stored_ts() == Some((u64::from(committed.time), u64::from(committed.increment)))
    })
    .await;
    wait_until("the rename reported", &daemon, || {
        daemon
            .log()
            .contains("a collection was renamed into the selection")
            && daemon.log().contains("to=shop.imported")
    })
    .await;
    daemon.stop_cleanly();
    double.append_oplog(entry("i", "orders", doc! { "_id": 5 }));
    let mut daemon = Daemon::start(&config);
    let orders = setup.decode_all(&setup.read(&format!("{PREFIX}.shop.orders"), 7).await);
    assert_eq!(orders.len(), 7, "one more, once: {orders:#?}");
    assert_eq!(orders[6].0["id"], "{\"$numberInt\":\"5\"}");
    let tails: Vec<Document> = double
        .commands("find")
        .into_iter()
        .filter(|f| f.get_bool("tailable") == Ok(true))
        .collect();
    assert_eq!(
        tails
            .last()
            .unwrap()
            .get_document("filter")
            .unwrap()
            .get_document("ts")
            .unwrap()
            .get_timestamp("$gt"),
        Ok(committed),
        "the restart tails after the stored timestamp"
    );
    daemon.stop_cleanly();

    // The stored timestamp was overwritten: sluice stops and says so.
    double.forget_oplog();
    Daemon::start(&config).fails_saying(&["no longer in the oplog"]);
}

const PAYMENT_CONTRACT: &str = r#"{
  "type": "record", "name": "Payment", "namespace": "shop",
  "fields": [
    {"name": "_id", "type": "int"},
    {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}},
    {"name": "paid", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "method", "type": {"type": "enum", "name": "Method", "symbols": ["CARD", "TRANSFER"]}},
    {"name": "note", "type": ["null", "string"], "default": null}
  ]
}"#;

fn payment(id: i32, amount: &str, method: &str) -> Document {
    doc! {
        "_id": id,
        "amount": Bson::Decimal128(amount.parse().unwrap()),
        "paid": sluice_testkit::bson::DateTime::from_millis(1_700_000_000_000 + i64::from(id)),
        "method": method,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contract_types_after_and_documents_that_do_not_fit_go_to_the_dead_letter_topic() {
    let setup = Setup::start().await;
    let (config, contracts) = setup.config_with_contracts();
    std::fs::write(
        contracts.join(format!("{PREFIX}.shop.payments.avsc")),
        PAYMENT_CONTRACT,
    )
    .unwrap();
    // A contract for another instance's topic types nothing here: noted, not failed.
    std::fs::write(contracts.join("elsewhere.avsc"), PAYMENT_CONTRACT).unwrap();
    let (status, stdout, stderr) = common::sluice(&["validate", "-c", config.to_str().unwrap()]);
    assert!(
        stdout.contains(&format!(
            "ok   {}",
            contracts.join("app.shop.payments.avsc").display()
        )) && stdout.contains("types `after` of the documents on topic `app.shop.payments`"),
        "{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("topic `elsewhere` is not `app.<db>.<collection>`: it types no collection"),
        "{stdout}"
    );
    assert!(status.success(), "{stdout}\n{stderr}");

    // The snapshot writes typed records too: one payment fits, the other's amount is text.
    let mut unpriced = payment(2, "0", "CARD");
    unpriced.insert("amount", "free");
    setup
        .double
        .store("shop", "payments", [payment(1, "9.99", "CARD"), unpriced]);
    setup
        .double
        .store("shop", "orders", [doc! { "_id": 1, "untyped": true }]);
    let mut daemon = Daemon::start(&config);
    wait_until("the stream after the snapshot", &daemon, || {
        setup.double.change_stream_stages().len() >= 3
    })
    .await;
    let double = &setup.double;
    let mut extra = payment(3, "1200", "TRANSFER");
    extra.insert("reference", "left out: the contract does not declare it");
    double.append(insert("payments", 3, extra));
    let mut update = change_event("update", "shop", "payments", 3);
    update.insert(
        "updateDescription",
        doc! { "updatedFields": { "note": "refunded" }, "removedFields": [] },
    );
    let mut noted = payment(3, "1200", "TRANSFER");
    noted.insert("note", "refunded");
    update.insert("fullDocument", noted);
    double.append(update);
    double.append(change_event("delete", "shop", "payments", 3));
    let mut cash = change_event("insert", "shop", "payments", 4);
    cash.insert("fullDocument", payment(4, "5.00", "CASH"));
    let last = double.append(cash);

    // Five records, and one more when payment 2 (refused) was the snapshot's last document: which
    // collection the snapshot reads last is not fixed.
    let orders = setup.decode_all(&setup.read(&format!("{PREFIX}.shop.orders"), 1).await);
    let expected = if orders[0].1["source"]["snapshot"] == "last" {
        5
    } else {
        6
    };
    let records = setup
        .read(&format!("{PREFIX}.shop.payments"), expected)
        .await;
    let mut payments = setup.decode_all(&records);
    let marked = |events: &[(Json, Json)]| {
        events
            .iter()
            .filter(|(_, v)| v["source"]["snapshot"] == "last")
            .count()
    };
    assert_eq!(
        marked(&payments) + marked(&orders),
        1,
        "one document carries the snapshot's end: {payments:#?} {orders:#?}"
    );
    if marked(&payments) == 1 {
        // Payment 2 went to the dead-letter topic: the one before it is published again, marked `last`.
        assert_eq!(payments[1].1["source"]["snapshot"], "last", "{payments:#?}");
        assert_eq!(payments[1].0, payments[0].0);
        assert_eq!(payments[1].1["after"], payments[0].1["after"]);
        payments.remove(1);
    }
    let ops: Vec<&str> = payments
        .iter()
        .map(|(_, v)| v["op"].as_str().unwrap_or("tombstone"))
        .collect();
    assert_eq!(ops, ["r", "c", "u", "d", "tombstone"], "{payments:#?}");
    assert_eq!(payments[0].1["source"]["snapshot"], "true");
    assert_eq!(
        payments[0].1["after"],
        serde_json::json!({"_id": 1, "amount": "9.99", "paid": 1_700_000_000_001_i64, "method": "CARD", "note": null})
    );
    assert_eq!(
        payments[1].1["after"],
        serde_json::json!({"_id": 3, "amount": "1200.00", "paid": 1_700_000_000_003_i64, "method": "TRANSFER", "note": null}),
        "undeclared fields are left out"
    );
    assert_eq!(payments[2].1["after"]["note"], "refunded");
    assert_eq!(
        text_of(&payments[2].1["updateDescription"]["updatedFields"]),
        serde_json::json!({"note": "refunded"})
    );
    assert!(payments[3].1["after"].is_null());
    assert_eq!(
        text_of(&orders[0].1["after"])["untyped"],
        true,
        "a collection without a contract keeps Extended JSON"
    );

    let letters = setup.read(&format!("{PREFIX}.dlq"), 2).await;
    let letters: Vec<Json> = letters
        .iter()
        .map(|r| setup.decode(r.value.as_deref().unwrap()))
        .collect();
    assert_eq!(letters.len(), 2, "{letters:#?}");
    let contract_file = contracts.join("app.shop.payments.avsc");
    for (letter, id, field) in [
        (
            &letters[0],
            2,
            "`after.amount`: expected a number (decimal(9, 2)), found a string (\"free\")",
        ),
        (
            &letters[1],
            4,
            "`after.method`: `CASH` is not one of the contract's symbols [\"CARD\", \"TRANSFER\"]",
        ),
    ] {
        assert_eq!(letter["stage"], "validate");
        assert_eq!(
            letter["error"],
            format!(
                "the document does not fit the contract {}: {field}",
                contract_file.display()
            )
        );
        assert_eq!(letter["collection"], "shop.payments");
        assert_eq!(letter["topic"], "app.shop.payments");
        let change: Json = serde_json::from_str(letter["change"].as_str().unwrap()).unwrap();
        assert_eq!(
            change["after"]["_id"],
            serde_json::json!({"$numberInt": id.to_string()})
        );
    }
    // The refused document does not hold the position back.
    let last_token = sluice_mongodb::change::canonical_json(&Bson::Document(last));
    wait_until("the position of the refused last event", &daemon, || {
        setup.stored_token().as_deref() == Some(last_token.as_str())
    })
    .await;
    daemon.stop_cleanly();

    // A contract that cannot type documents stops sluice before it reads anything, naming the file.
    let envelope = contracts.join(format!("{PREFIX}.shop.refunds.avsc"));
    std::fs::write(
        &envelope,
        r#"{"type": "record", "name": "Refund", "fields": [{"name": "after", "type": ["null", "string"]}]}"#,
    )
    .unwrap();
    let (status, stdout, _) = common::sluice(&["validate", "-c", config.to_str().unwrap()]);
    assert!(!status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "FAIL contract {}: declares an envelope",
            envelope.display()
        )),
        "{stdout}"
    );
    Daemon::start(&config).fails_saying(&["app.shop.refunds.avsc", "declares an envelope"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_check_reports_the_double_as_a_replica_set_and_what_it_cannot_read() {
    let setup = Setup::start().await;
    setup.double.store("shop", "orders", [doc! { "_id": 1 }]);
    setup.double.store("shop", "audit", [doc! { "_id": 1 }]);
    let config = setup.config();
    let (status, stdout, stderr) = common::sluice(&["check", "-c", config.to_str().unwrap()]);
    assert!(
        stdout.contains(&format!(
            "[ ok ] MongoDB at {}: replica set `{REPLICA_SET}`",
            setup.double.url()
        )),
        "{stdout}\n{stderr}"
    );
    assert!(stdout.contains("[ ok ] MongoDB 6.0.0"), "{stdout}");
    assert!(
        stdout.contains("[ ok ] the user may open the change stream"),
        "{stdout}"
    );
    // The double has no local.oplog.rs: the window cannot be read, which is a warning, not a failure.
    assert!(
        stdout.contains("[warn] cannot read the oplog window"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[ ok ] the snapshot may read the 1 selected collections"),
        "shop.audit is excluded: {stdout}"
    );
    assert!(status.success(), "{stdout}\n{stderr}");

    // Pre-images asked for: the selected collection that does not record them is named, alone.
    let config = setup.config_with("before = \"when_available\"");
    let (_, stdout, stderr) = common::sluice(&["check", "-c", config.to_str().unwrap()]);
    assert!(
        stdout.contains("[warn] pre- and post-images are not recorded by shop.orders\n"),
        "{stdout}\n{stderr}"
    );
}

#[test]
fn an_unreachable_server_is_named_without_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let port = sluice_testkit::free_port();
    let text = format!(
        r#"[source]
kind = "mongodb"
url = "mongodb://sluice:hunter2@127.0.0.1:{port}/?directConnection=true&serverSelectionTimeoutMS=1000"
collections = ["shop.*"]

[sink]
kind = "blackhole"
topic_prefix = "{PREFIX}"
dead_letter_topic = "{PREFIX}.dlq"

[positions]
dir = "{}"
"#,
        dir.path().join("positions").display()
    );
    let config: &Path = &dir.path().join("sluice.toml");
    std::fs::write(config, text).unwrap();
    let (status, stdout, stderr) = common::sluice(&["run", "-c", config.to_str().unwrap()]);
    assert!(!status.success());
    let said = format!("{stdout}{stderr}");
    assert!(
        said.contains(&format!(
            "cannot reach MongoDB at mongodb://sluice:***@127.0.0.1:{port}"
        )),
        "{said}"
    );
    assert!(!said.contains("hunter2"), "{said}");
}

/// Route, filter, mask and unwrap on document changes: two collections routed to one topic with the
/// collection in the key, a filter on the document, a nested field hashed, the documents unwrapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transforms_reshape_document_changes() {
    use sha2::{Digest, Sha256};
    let setup = Setup::start().await;
    let config = setup.config();
    let transforms = r#"
[[transforms]]
type = "filter"
condition = 'after == null || after.qty > 1'

[[transforms]]
type = "route"
match = 'app\.shop\.orders_(eu|us)'
replace = "app.shop.orders"

[[transforms]]
type = "mask"
columns = ["shop.orders_*.customer.email"]
with = "hash"
salt = "s"

[[transforms]]
type = "unwrap"
add_fields = ["op", "table"]
delete_handling = "rewrite"
"#;
    let text = std::fs::read_to_string(&config).expect("read config") + transforms;
    std::fs::write(&config, text).expect("write config");
    let mut daemon = Daemon::start(&config);
    wait_until("the change stream", &daemon, || {
        setup.double.change_stream_stages().len() >= 3
    })
    .await;
    let customer = |email: &str| doc! { "email": email, "name": "A" };
    let double = &setup.double;
    double.append(insert(
        "orders_eu",
        1,
        doc! { "qty": 5_i64, "customer": customer("a@x") },
    ));
    double.append(insert(
        "orders_us",
        1,
        doc! { "qty": 1_i64, "customer": customer("b@x") },
    ));
    double.append(insert(
        "orders_us",
        2,
        doc! { "qty": 3_i64, "customer": customer("c@x") },
    ));
    double.append(change_event("delete", "shop", "orders_eu", 1));

    let records = setup.read("app.shop.orders", 4).await;
    let events = setup.decode_all(&records);
    assert_eq!(events.len(), 4, "{events:?}");
    let hash = |text: &str| -> String {
        Sha256::digest(format!("s{text}").as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let (key, value) = &events[0];
    assert_eq!(key["__table"], "shop.orders_eu", "{key}");
    assert_eq!(value["__op"], "c");
    assert_eq!(value["__table"], "orders_eu");
    assert_eq!(value["__deleted"], "false");
    let document = text_of(&value["document"]);
    assert_eq!(
        document["customer"]["email"],
        hash("a@x").as_str(),
        "{document}"
    );
    assert_eq!(document["customer"]["name"], "A");
    // orders_us 1 (qty 1) was filtered out.
    assert_eq!(events[1].0["__table"], "shop.orders_us");
    assert_eq!(
        text_of(&events[1].1["document"])["qty"],
        serde_json::json!({"$numberLong": "3"})
    );
    // The delete without a pre-image: rewritten with no document, then its tombstone.
    assert_eq!(events[2].1["__op"], "d");
    assert_eq!(events[2].1["__deleted"], "true");
    assert!(events[2].1["document"].is_null());
    assert_eq!(events[3].0, events[2].0);
    assert!(events[3].1.is_null(), "the tombstone");
    daemon.stop_cleanly();
}
