//! The MongoDB scenario against a REAL replica set (MongoDB 6.0+), run only when `MONGODB_URI` names one,
//! for example `MONGODB_URI='mongodb://127.0.0.1:27017/?replicaSet=rs0' cargo test --test mongodb_live`.
//! No MongoDB server can be installed on the build machines, so CI runs the wire-protocol double
//! (`tests/mongodb.rs`) instead, and this suite says plainly that it was skipped.
//!
//! It writes to a database of its own (`sluice_live_<random>`, dropped at the end): insert, update,
//! replace, delete, a transaction over two collections, then a restart that must resume after the
//! stored token with nothing lost or repeated.

mod common;

use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};
use mongodb::Client;
use serde_json::Value as Json;
use sluice::avro::SchemaRef;
use sluice_testkit::broker::{read_topic, Tansu};
use sluice_testkit::registry::RegistryDouble;

use common::Daemon;

const PREFIX: &str = "live";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_replica_set_streams_resumes_and_keeps_transactions() {
    let Ok(uri) = std::env::var("MONGODB_URI") else {
        // Written to the process's stderr itself, past the test harness's capture, so that it shows.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED mongodb_live: MONGODB_URI is not set; this suite needs a MongoDB 6.0+ replica set (see README.md)"
        );
        return;
    };
    let client = Client::with_uri_str(&uri)
        .await
        .expect("connect to MONGODB_URI");
    let db_name = format!("sluice_live_{}", sluice_testkit::random_hex());
    let db = client.database(&db_name);
    let orders = db.collection::<Document>("orders");
    let customers = db.collection::<Document>("customers");
    // Collections exist before the stream opens: a transaction cannot create them.
    db.create_collection("orders").await.expect("create orders");
    db.create_collection("customers")
        .await
        .expect("create customers");

    let broker = Tansu::start().expect("start tansu");
    let registry = RegistryDouble::start().expect("start the registry double");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("sluice.toml");
    let text = sluice_testkit::config::mongodb(
        &uri,
        &format!("collections = [\"{db_name}.*\"]"),
        &broker.bootstrap(),
        &registry.url(),
        PREFIX,
        &dir.path().join("positions"),
    );
    std::fs::write(&config, text).expect("write config");
    let position = dir
        .path()
        .join(format!("positions/{PREFIX}.mongodb.position.json"));

    let mut daemon = Daemon::start(&config);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !position.exists() {
        assert!(
            Instant::now() < deadline,
            "no position stored:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

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

    let decode = |body: &[u8]| -> Json {
        let Some((SchemaRef::RegistryId(id), datum)) = SchemaRef::split(body) else {
            panic!("not Confluent-framed")
        };
        let (_, schema) = registry
            .schemas()
            .into_iter()
            .find(|(i, _)| *i == id)
            .unwrap();
        sluice::tail::decode_datum(&schema, datum).unwrap()
    };
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
