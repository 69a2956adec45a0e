//! The MongoDB scenario against a REAL replica set (MongoDB 6.0+), run only when `MONGODB_URI` names one,
//! for example `MONGODB_URI='mongodb://127.0.0.1:27017/?replicaSet=rs0' cargo test --test mongodb_live`.
//! No MongoDB server can be installed on the build machines, so CI runs the wire-protocol double
//! (`tests/mongodb.rs`) instead, and this suite says plainly that it was skipped.
//!
//! Each test writes to a database of its own (`sluice_live_<random>`, dropped at the end): insert,
//! update, replace, delete, a transaction over two collections, then a restart that must resume after
//! the stored token with nothing lost or repeated; and a snapshot of 20,000 documents raced by writes,
//! the topic replayed equal to the collection, then a lost token (exit 1) and `when_needed` taking a
//! new snapshot; a contract typing `after`, a document that does not fit it dead-lettered; and an
//! incremental snapshot (`sluice snapshot`, chunks between watermark documents) of a collection with
//! mixed `_id` types raced by writes, the topic replayed equal to the collection.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};
use mongodb::Client;
use serde_json::Value as Json;
use sluice_testkit::broker::{read_topic, Tansu};
use sluice_testkit::registry::RegistryDouble;

use common::Daemon;

const PREFIX: &str = "live";

/// `MONGODB_URI`, or None after saying plainly that the suite is skipped.
fn live_uri() -> Option<String> {
    let uri = std::env::var("MONGODB_URI").ok();
    if uri.is_none() {
        // Written to the process's stderr itself, past the test harness's capture, so that it shows.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED mongodb_live: MONGODB_URI is not set; this suite needs a MongoDB 6.0+ replica set (see README.md)"
        );
    }
    uri
}

/// One test's world: a database of its own on the replica set (dropped by the test at its end), a
/// broker, the registry double and a directory for the config, positions and contracts.
struct Live {
    uri: String,
    client: Client,
    db_name: String,
    db: mongodb::Database,
    broker: Tansu,
    registry: RegistryDouble,
    dir: tempfile::TempDir,
}

impl Live {
    /// None when `MONGODB_URI` is not set (the suite is skipped).
    async fn start() -> Option<Live> {
        let uri = live_uri()?;
        let client = Client::with_uri_str(&uri)
            .await
            .expect("connect to MONGODB_URI");
        let db_name = format!("sluice_live_{}", sluice_testkit::random_hex());
        let db = client.database(&db_name);
        Some(Live {
            uri,
            client,
            db_name,
            db,
            broker: Tansu::start().expect("start tansu"),
            registry: RegistryDouble::start().expect("start the registry double"),
            dir: tempfile::tempdir().expect("temp dir"),
        })
    }

    /// Writes the config (the test's database selected, `source_lines` added, contracts read from
    /// `contracts_dir()`) and returns its path.
    fn config(&self, source_lines: &str) -> PathBuf {
        let text = sluice_testkit::config::mongodb(
            &self.uri,
            &format!("collections = [\"{}.*\"]\n{source_lines}", self.db_name),
            &self.broker.bootstrap(),
            &self.registry.url(),
            PREFIX,
            &self.dir.path().join("positions"),
        )
        .replace(
            "[avro]\n",
            &format!(
                "[avro]\ncontracts_dir = \"{}\"\n",
                self.contracts_dir().display()
            ),
        );
        let path = self.dir.path().join("sluice.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    fn contracts_dir(&self) -> PathBuf {
        self.dir.path().join("contracts")
    }

    fn position_path(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!("positions/{PREFIX}.mongodb.position.json"))
    }

    /// The position file, parsed, once there is one.
    fn position(&self) -> Option<Json> {
        serde_json::from_str(&std::fs::read_to_string(self.position_path()).ok()?).ok()
    }

    /// Waits until the stored position is a stream position (any snapshot complete).
    async fn wait_for_stream_position(&self, daemon: &Daemon, within: Duration) {
        let deadline = Instant::now() + within;
        while self
            .position()
            .is_none_or(|f| f["position"]["kind"] != "mongodb")
        {
            assert!(
                Instant::now() < deadline,
                "no stream position stored:\n{}",
                daemon.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_replica_set_streams_resumes_and_keeps_transactions() {
    let Some(live) = Live::start().await else {
        return;
    };
    let Live {
        client,
        db,
        db_name,
        broker,
        registry,
        ..
    } = &live;
    let orders = db.collection::<Document>("orders");
    let customers = db.collection::<Document>("customers");
    // Collections exist before the stream opens: a transaction cannot create them.
    db.create_collection("orders").await.expect("create orders");
    db.create_collection("customers")
        .await
        .expect("create customers");
    let config = live.config("");
    let mut daemon = Daemon::start(&config);
    live.wait_for_stream_position(&daemon, Duration::from_secs(60))
        .await;

    orders
        .insert_one(doc! { "_id": 1, "qty": 5 })
        .await
        .unwrap();
    orders
        .update_one(doc! { "_id": 1 }, doc! { "$set": { "qty": 6 } })
        .await
        .unwrap();
    orders
        .replace_one(doc! { "_id": 1 }, doc! { "qty": 7, "note": "replaced" })
        .await
        .unwrap();
    orders.delete_one(doc! { "_id": 1 }).await.unwrap();
    let mut session = client.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    orders
        .insert_one(doc! { "_id": 2 })
        .session(&mut session)
        .await
        .unwrap();
    customers
        .insert_one(doc! { "_id": 20 })
        .session(&mut session)
        .await
        .unwrap();
    session.commit_transaction().await.unwrap();

    let decode = |body: &[u8]| common::decode_registered(registry, body);
    let orders_topic = format!("{PREFIX}.{db_name}.orders");
    let read = |topic: String, min: usize| {
        let bootstrap = broker.bootstrap();
        async move {
            read_topic(&bootstrap, &topic, min, Duration::from_secs(60))
                .await
                .unwrap()
        }
    };
    let records = read(orders_topic.clone(), 6).await;
    let ops: Vec<String> = records
        .iter()
        .map(|r| {
            r.value.as_deref().map_or("tombstone".into(), |v| {
                decode(v)["op"].as_str().unwrap().to_owned()
            })
        })
        .collect();
    assert_eq!(
        ops,
        ["c", "u", "u", "d", "tombstone", "c"],
        "{}",
        daemon.log()
    );
    let in_transaction = decode(records[5].value.as_deref().unwrap());
    assert!(
        in_transaction["source"]["txnNumber"].is_number(),
        "{in_transaction}"
    );
    let customer = read(format!("{PREFIX}.{db_name}.customers"), 1).await;
    assert_eq!(customer.len(), 1);
    assert_eq!(
        decode(customer[0].value.as_deref().unwrap())["source"]["txnNumber"],
        in_transaction["source"]["txnNumber"]
    );

    // Restart: what is written while sluice is down arrives once, after what came before.
    tokio::time::sleep(Duration::from_secs(2)).await;
    daemon.stop_cleanly();
    orders.insert_one(doc! { "_id": 3 }).await.unwrap();
    let mut daemon = Daemon::start(&config);
    let records = read(orders_topic, 7).await;
    assert_eq!(records.len(), 7, "{}", daemon.log());
    let key = decode(records[6].key.as_deref().unwrap());
    assert_eq!(key["id"], "{\"$numberInt\":\"3\"}");
    daemon.stop_cleanly();
    db.drop().await.unwrap();
}

/// The decoded records of `topic`: (document id as Extended JSON text, op), a tombstone's op "tombstone".
async fn ops_by_id(
    broker: &Tansu,
    registry: &RegistryDouble,
    topic: &str,
    min: usize,
) -> Vec<(String, String)> {
    let records = read_topic(&broker.bootstrap(), topic, min, Duration::from_secs(120))
        .await
        .unwrap();
    let decode = |body: &[u8]| common::decode_registered(registry, body);
    records
        .iter()
        .map(|r| {
            let key = decode(r.key.as_deref().unwrap());
            let op = r.value.as_deref().map_or("tombstone".into(), |v| {
                decode(v)["op"].as_str().unwrap().to_owned()
            });
            (key["id"].as_str().unwrap().to_owned(), op)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_replica_set_snapshot_while_writing_then_a_lost_token() {
    let Some(live) = Live::start().await else {
        return;
    };
    let Live {
        db,
        db_name,
        broker,
        registry,
        ..
    } = &live;
    let orders = db.collection::<Document>("orders");
    let documents: Vec<Document> = (0..20_000).map(|id| doc! { "_id": id, "n": id }).collect();
    orders
        .insert_many(documents)
        .await
        .expect("load 20,000 orders");
    let write_config = |snapshot: &str| {
        live.config(&format!(
            "snapshot = \"{snapshot}\"\nsnapshot_connections = 2\nsnapshot_chunk_documents = 5000"
        ))
    };
    let config = write_config("initial");
    let stored = || live.position();

    // Writes race the snapshot: inserts, updates and deletes until it is complete.
    let mut daemon = Daemon::start(&config);
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut next = 100_000;
    while stored().is_none_or(|f| f["position"]["kind"] != "mongodb") {
        assert!(
            Instant::now() < deadline,
            "the snapshot did not finish:\n{}",
            daemon.log()
        );
        orders.insert_one(doc! { "_id": next }).await.unwrap();
        orders
            .update_one(
                doc! { "_id": next - 100_000 },
                doc! { "$set": { "touched": true } },
            )
            .await
            .unwrap();
        orders
            .delete_one(doc! { "_id": next - 99_000 })
            .await
            .unwrap();
        next += 1;
    }
    let topic = format!("{PREFIX}.{db_name}.orders");
    let present: std::collections::BTreeSet<String> = {
        use futures::TryStreamExt;
        let ids: Vec<Document> = orders
            .find(doc! {})
            .projection(doc! { "_id": 1 })
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        ids.iter()
            .map(|d| sluice_mongodb::change::canonical_json(d.get("_id").unwrap()))
            .collect()
    };
    // Every write is on the broker once the stream has caught up: replaying the topic gives the collection.
    let mut replayed = std::collections::BTreeSet::new();
    let wait = Instant::now() + Duration::from_secs(120);
    while replayed != present {
        assert!(
            Instant::now() < wait,
            "replaying the topic does not give the collection:\n{}",
            daemon.log()
        );
        replayed.clear();
        for (id, op) in ops_by_id(broker, registry, &topic, present.len()).await {
            match op.as_str() {
                "d" | "tombstone" => replayed.remove(&id),
                _ => replayed.insert(id),
            };
        }
    }
    daemon.stop_cleanly();

    // A token from before the oplog's start (its timestamp set to 1970): the server no longer has it.
    let mut file = stored().unwrap();
    let token: Json =
        serde_json::from_str(file["position"]["resume_token"].as_str().unwrap()).unwrap();
    let data = token["_data"].as_str().unwrap();
    // `_data` starts with 82 and the cluster time: 4 bytes of seconds, 4 of increment.
    let aged = format!("82{:08X}{:08X}{}", 1, 1, &data[18..]);
    file["position"]["resume_token"] = Json::from(serde_json::json!({ "_data": aged }).to_string());
    std::fs::write(live.position_path(), file.to_string()).unwrap();
    Daemon::start(&config).fails_saying(&["no longer in the oplog"]);

    // when_needed takes a new snapshot instead.
    write_config("when_needed");
    let before = ops_by_id(broker, registry, &topic, 1).await.len();
    let mut daemon = Daemon::start(&config);
    let after = ops_by_id(broker, registry, &topic, before + present.len()).await;
    let read_again = after[before..].iter().filter(|(_, op)| op == "r").count();
    assert_eq!(read_again, present.len(), "{}", daemon.log());
    daemon.stop_cleanly();
    db.drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_replica_set_types_documents_by_contract() {
    let Some(live) = Live::start().await else {
        return;
    };
    let Live {
        db,
        db_name,
        broker,
        registry,
        ..
    } = &live;
    let payments = db.collection::<Document>("payments");
    db.create_collection("payments")
        .await
        .expect("create payments");
    std::fs::create_dir_all(live.contracts_dir()).unwrap();
    let topic = format!("{PREFIX}.{db_name}.payments");
    std::fs::write(
        live.contracts_dir().join(format!("{topic}.avsc")),
        r#"{"type": "record", "name": "Payment", "fields": [
            {"name": "_id", "type": "int"},
            {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}},
            {"name": "paid", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "method", "type": {"type": "enum", "name": "Method", "symbols": ["CARD", "TRANSFER"]}}
        ]}"#,
    )
    .unwrap();
    let config = live.config("");

    // One payment before the start (the snapshot reads it), the rest streamed; the second does not fit.
    let paid = mongodb::bson::DateTime::from_millis(1_700_000_000_000);
    let amount = |text: &str| mongodb::bson::Bson::Decimal128(text.parse().unwrap());
    payments
        .insert_one(
            doc! { "_id": 1, "amount": amount("9.99"), "paid": paid, "method": "CARD", "extra": 1 },
        )
        .await
        .unwrap();
    let mut daemon = Daemon::start(&config);
    live.wait_for_stream_position(&daemon, Duration::from_secs(60))
        .await;
    payments
        .insert_one(doc! { "_id": 2, "amount": "free", "paid": paid, "method": "CARD" })
        .await
        .unwrap();
    payments
        .insert_one(doc! { "_id": 3, "amount": 1200_i64, "paid": paid, "method": "TRANSFER" })
        .await
        .unwrap();

    let records = read_topic(&broker.bootstrap(), &topic, 2, Duration::from_secs(120))
        .await
        .unwrap();
    let afters: Vec<Json> = records
        .iter()
        .map(|r| common::decode_registered(registry, r.value.as_deref().unwrap())["after"].clone())
        .collect();
    assert_eq!(
        afters,
        [
            serde_json::json!({"_id": 1, "amount": "9.99", "paid": 1_700_000_000_000_i64, "method": "CARD"}),
            serde_json::json!({"_id": 3, "amount": "1200.00", "paid": 1_700_000_000_000_i64, "method": "TRANSFER"}),
        ],
        "{}",
        daemon.log()
    );
    let letters = read_topic(
        &broker.bootstrap(),
        &format!("{PREFIX}.dlq"),
        1,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(letters.len(), 1);
    let letter = common::decode_registered(registry, letters[0].value.as_deref().unwrap());
    assert_eq!(letter["stage"], "validate");
    assert!(
        letter["error"].as_str().unwrap().contains(
            "`after.amount`: expected a number (decimal(9, 2)), found a string (\"free\")"
        ),
        "{letter}"
    );
    daemon.stop_cleanly();
    db.drop().await.unwrap();
}

/// The ids in `collection` now, as the topic's keys write them.
async fn ids_in(collection: &mongodb::Collection<Document>) -> std::collections::BTreeSet<String> {
    use futures::TryStreamExt;
    let ids: Vec<Document> = collection
        .find(doc! {})
        .projection(doc! { "_id": 1 })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    ids.iter()
        .map(|d| sluice_mongodb::change::canonical_json(d.get("_id").unwrap()))
        .collect()
}

/// Reads `topic` until replaying it gives the ids `collection` holds now.
async fn replay_until_equal(
    live: &Live,
    collection: &mongodb::Collection<Document>,
    topic: &str,
    daemon: &Daemon,
) {
    let present = ids_in(collection).await;
    let mut replayed = std::collections::BTreeSet::new();
    let wait = Instant::now() + Duration::from_secs(120);
    while replayed != present {
        assert!(
            Instant::now() < wait,
            "replaying the topic does not give the collection ({} ids, {} replayed):\n{}",
            present.len(),
            replayed.len(),
            daemon.log()
        );
        replayed.clear();
        for (id, op) in ops_by_id(&live.broker, &live.registry, topic, present.len()).await {
            match op.as_str() {
                "d" | "tombstone" => replayed.remove(&id),
                _ => replayed.insert(id),
            };
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_replica_set_incremental_snapshot_while_writing() {
    let Some(live) = Live::start().await else {
        return;
    };
    let Live {
        db,
        db_name,
        broker,
        registry,
        ..
    } = &live;
    let items = db.collection::<Document>("items");
    // Mixed `_id` types: the chunks' index bounds take every type in MongoDB's order.
    let mut documents: Vec<Document> = (0..6000).map(|id| doc! { "_id": id, "n": id }).collect();
    documents.extend((0..500).map(|i| doc! { "_id": format!("s{i:04}"), "n": i }));
    documents.extend((0..500).map(|i| doc! { "n": i }));
    items.insert_many(documents).await.expect("load items");
    let config = live.config(&format!(
        "snapshot = \"never\"\nsignal_collection = \"{db_name}.sluice_signals\"\nincremental_chunk_rows = 700"
    ));
    let mut daemon = Daemon::start(&config);
    live.wait_for_stream_position(&daemon, Duration::from_secs(60))
        .await;
    let (status, stdout, stderr) = common::sluice(&[
        "snapshot",
        "-c",
        config.to_str().unwrap(),
        &format!("{db_name}.items"),
    ]);
    assert!(status.success(), "{stdout}{stderr}");

    // Writes race the snapshot until it is done: inserts, updates and deletes.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut next = 100_000;
    while !daemon.log().contains("incremental snapshot finished")
        || live
            .position()
            .is_none_or(|f| f["position"]["kind"] == "incremental")
    {
        assert!(Instant::now() < deadline, "not finished:\n{}", daemon.log());
        items
            .insert_one(doc! { "_id": next, "n": 0 })
            .await
            .unwrap();
        let id = (next * 7) % 6000;
        items
            .update_one(doc! { "_id": id }, doc! { "$inc": { "n": 1 } })
            .await
            .unwrap();
        items
            .delete_one(doc! { "_id": (next * 13) % 6000 })
            .await
            .unwrap();
        next += 1;
    }
    let topic = format!("{PREFIX}.{db_name}.items");
    replay_until_equal(&live, &items, &topic, &daemon).await;
    let reads = ops_by_id(broker, registry, &topic, 1)
        .await
        .iter()
        .filter(|(_, op)| op == "r")
        .count();
    assert!(reads >= 6000, "{reads} documents read by the snapshot");
    // The signal collection holds the signal and the watermarks; none of it was published.
    let signals = read_topic(
        &broker.bootstrap(),
        &format!("{PREFIX}.{db_name}.sluice_signals"),
        0,
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    assert!(signals.is_empty());
    daemon.stop_cleanly();
    db.drop().await.unwrap();
}
