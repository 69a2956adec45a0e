//! Transaction metadata against a real PostgreSQL and broker: with `transaction_metadata`, each transaction
//! gets a BEGIN and an END record on `<topic_prefix>.transaction`, END counting its events per table, and
//! every streamed event says where it stands in its transaction.

mod common;

use std::time::Duration;

use common::decode_all;
use serde_json::{json, Value as Json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_are_framed_and_their_events_ordered() {
    let (services, _, mut daemon) = common::streaming(
        "CREATE TABLE orders (id int PRIMARY KEY, status text);
         CREATE TABLE items (id int PRIMARY KEY, order_id int);
         INSERT INTO orders VALUES (1, 'old');",
        &["public.orders", "public.items"],
        "transaction_metadata = true",
        &[],
    )
    .await;
    services
        .sql(
            "BEGIN;
             INSERT INTO orders VALUES (2, 'new');
             INSERT INTO items VALUES (10, 2);
             UPDATE orders SET status = 'paid' WHERE id = 2;
             INSERT INTO orders VALUES (3, 'new');
             COMMIT;
             INSERT INTO items VALUES (11, 3);",
        )
        .await;

    let boundaries = decode_all(
        &services,
        &services
            .read("shop.transaction", 4, Duration::from_secs(60))
            .await,
    );
    let values: Vec<&Json> = boundaries.iter().filter_map(|b| b.value.as_ref()).collect();
    let statuses: Vec<&str> = values
        .iter()
        .map(|v| v["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["BEGIN", "END", "BEGIN", "END"], "{values:?}");
    assert_eq!(values[0]["id"], values[1]["id"]);
    assert_ne!(values[1]["id"], values[2]["id"]);
    assert_eq!(boundaries[0].key.as_ref().unwrap()["id"], values[0]["id"]);
    assert_eq!(values[0]["event_count"], Json::Null);
    assert_eq!(values[1]["event_count"], 4);
    assert_eq!(
        values[1]["data_collections"],
        json!([
            {"data_collection": "public.orders", "event_count": 3},
            {"data_collection": "public.items", "event_count": 1},
        ])
    );
    assert_eq!(values[3]["event_count"], 1);
    let first_id = values[0]["id"].as_str().unwrap();
    let (txid, _) = first_id.split_once(':').unwrap();

    // Each event's block: the transaction id, its place overall and among its table's events.
    let block_of = |topic: &str, min: usize| {
        let services = &services;
        let topic = topic.to_owned();
        async move {
            let events = decode_all(
                services,
                &services.read(&topic, min, Duration::from_secs(60)).await,
            );
            // In log order: the topic's partitions each keep only their own keys' order.
            let mut values: Vec<Json> = events.into_iter().filter_map(|e| e.value).collect();
            values.sort_by_key(|v| v["source"]["lsn"].as_i64());
            values
                .into_iter()
                .map(|v| {
                    (
                        v["op"].as_str().unwrap().to_owned(),
                        v["source"]["txId"].clone(),
                        v["transaction"].clone(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let orders = block_of("shop.public.orders", 4).await;
    assert_eq!(orders[0].0, "r");
    assert_eq!(
        orders[0].2,
        Json::Null,
        "snapshot rows belong to no transaction"
    );
    let streamed: Vec<(i64, i64)> = orders[1..]
        .iter()
        .map(|(_, tx, block)| {
            assert_eq!(tx.to_string(), txid);
            assert_eq!(block["id"], first_id);
            (
                block["total_order"].as_i64().unwrap(),
                block["data_collection_order"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(streamed, [(1, 1), (3, 2), (4, 3)]);
    let items = block_of("shop.public.items", 2).await;
    assert_eq!(items[0].2["id"], first_id);
    assert_eq!(items[0].2["total_order"], 2);
    assert_eq!(items[0].2["data_collection_order"], 1);
    assert_eq!(items[1].2["id"], values[2]["id"]);
    assert_eq!(items[1].2["total_order"], 1);
    daemon.stop_cleanly();
}
