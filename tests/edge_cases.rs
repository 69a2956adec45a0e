//! The less travelled paths, end to end against a real PostgreSQL, tansu and the registry test double:
//! partitioned tables, an event too large for the broker, and a position file that belongs to another server.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{decode_all, Daemon, Services, DEAD_LETTERS};
use serde_json::Value as Json;

/// The services, a `notes` table, and sluice streaming it (with extra `[sink.kafka]` properties).
async fn streaming_notes(kafka: &[(&str, &str)]) -> (Services, PathBuf, Daemon) {
    let schema = "CREATE TABLE notes (id int PRIMARY KEY, body text)";
    common::streaming(schema, &["public.notes"], "", kafka).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_of_partitions_arrive_on_the_partitioned_tables_topic() {
    let services = Services::start().await;
    services
        .sql(
            "CREATE TABLE readings (id bigint, taken date NOT NULL, value double precision,
                 PRIMARY KEY (id, taken)) PARTITION BY RANGE (taken);
             CREATE TABLE readings_2025 PARTITION OF readings FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
             CREATE TABLE readings_2026 PARTITION OF readings FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');",
        )
        .await;
    let config = services.write_config(&["public.readings"]);
    let mut daemon = Daemon::start(&config);
    services.wait_streaming(&mut daemon).await;

    services
        .sql(
            "INSERT INTO readings VALUES (1, '2025-06-01', 1.5), (2, '2026-06-01', 2.5);
             UPDATE readings SET value = 3.5 WHERE id = 2;
             -- moves the row to the other partition: PostgreSQL publishes a delete and an insert
             UPDATE readings SET taken = '2026-02-01' WHERE id = 1;
             DELETE FROM readings WHERE id = 2;",
        )
        .await;
    let records = services
        .read("shop.public.readings", 7, Duration::from_secs(60))
        .await;
    let events = decode_all(&services, &records);
    let changes: Vec<(i64, &str)> = events
        .iter()
        .filter(|e| e.value.is_some())
        .map(|e| {
            (
                e.key.as_ref().unwrap()["id"].as_i64().unwrap(),
                e.op().unwrap(),
            )
        })
        .collect();
    let mut changes_of_1: Vec<&str> = changes.iter().filter(|c| c.0 == 1).map(|c| c.1).collect();
    let changes_of_2: Vec<&str> = changes.iter().filter(|c| c.0 == 2).map(|c| c.1).collect();
    changes_of_1.sort_unstable();
    assert_eq!(changes_of_1, ["c", "c", "d"], "{events:?}");
    assert_eq!(changes_of_2, ["c", "u", "d"], "{events:?}");
    let tombstones = events.iter().filter(|e| e.value.is_none()).count();
    assert_eq!(tombstones, 2, "each delete is followed by a tombstone");
    for event in events.iter().filter(|e| e.value.is_some()) {
        let source = &event.value.as_ref().unwrap()["source"];
        assert_eq!(
            source["table"], "readings",
            "published under the parent: {source}"
        );
    }
    assert!(
        services
            .registry
            .subjects()
            .iter()
            .all(|s| !s.contains("readings_20")),
        "no topic or subject per partition: {:?}",
        services.registry.subjects()
    );
    daemon.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_too_large_for_the_producer_goes_to_the_dead_letter_topic_without_its_row() {
    // librdkafka refuses messages above message.max.bytes before they leave the process.
    let (services, config, mut daemon) = streaming_notes(&[("message.max.bytes", "4000")]).await;

    services
        .sql(
            "INSERT INTO notes VALUES (1, 'short');
             INSERT INTO notes VALUES (2, repeat('x', 20000));
             INSERT INTO notes VALUES (3, 'short again');",
        )
        .await;
    let events = decode_all(
        &services,
        &services
            .read("shop.public.notes", 2, Duration::from_secs(60))
            .await,
    );
    let ids: Vec<i64> = events
        .iter()
        .map(|e| e.after().unwrap()["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [1, 3], "the stream goes on around the large row");

    let letter = services
        .dead_letters(1, Duration::from_secs(30))
        .await
        .remove(0);
    assert_eq!(letter["stage"], "produce", "{letter}");
    assert!(
        letter["error"].as_str().unwrap().contains("too large"),
        "{letter}"
    );
    assert_eq!(
        letter["key"]["id"], 2,
        "the key says which row to fetch again: {letter}"
    );
    assert!(
        letter["change"].is_null(),
        "the row itself did not fit either: {letter}"
    );
    assert_eq!(letter["omitted"], serde_json::json!(["change"]), "{letter}");
    assert!(letter["source"]["lsn"].as_str().unwrap().contains('/'));

    // Acknowledged like any event: a clean restart does not send the letter again.
    daemon.stop_cleanly();
    let mut daemon = Daemon::start(&config);
    services.wait_streaming(&mut daemon).await;
    services
        .sql("INSERT INTO notes VALUES (4, 'after restart')")
        .await;
    assert_eq!(
        services
            .read("shop.public.notes", 3, Duration::from_secs(60))
            .await
            .len(),
        3
    );
    assert_eq!(
        services
            .read(DEAD_LETTERS, 1, Duration::from_secs(3))
            .await
            .len(),
        1
    );
    daemon.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_file_from_another_server_is_refused() {
    let (services, config, mut daemon) = streaming_notes(&[]).await;
    services.sql("INSERT INTO notes VALUES (1, 'one')").await;
    assert_eq!(
        services
            .read("shop.public.notes", 1, Duration::from_secs(60))
            .await
            .len(),
        1
    );
    daemon.stop_cleanly();

    let confirmed = services.confirmed_flush().await;
    let file = services.position_path();
    let mut stored = services.position_file().expect("a position is stored");
    let system_id = stored["identity"]["system_id"].as_str().unwrap().to_owned();
    assert!(
        system_id.parse::<u64>().is_ok(),
        "PostgreSQL's system identifier: {stored}"
    );
    assert_eq!(stored["identity"]["database"], "shop");
    // As if the file had been copied from another cluster.
    stored["identity"]["system_id"] = Json::from("6999999999999999999");
    std::fs::write(&file, stored.to_string()).unwrap();

    let mut daemon = Daemon::start(&config);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = daemon.exited() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sluice kept running:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.code(), Some(1));
    let log = daemon.log();
    assert!(
        log.contains("was written for database `shop` of system 6999999999999999999"),
        "{log}"
    );
    assert!(
        log.contains(&format!("reaches database `shop` of system {system_id}")),
        "{log}"
    );
    assert_eq!(
        services.confirmed_flush().await,
        confirmed,
        "the slot is left as it was"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_crash_mid_stream_is_survived_without_loss_or_repeats() {
    let (services, _config, mut daemon) = streaming_notes(&[]).await;

    // One large transaction, then the server dies while sluice is still streaming it (the log shows the
    // cut-off transaction replayed with its first part skipped, when the timing catches it mid-way).
    services
        .sql("INSERT INTO notes SELECT g, 'row ' || g FROM generate_series(1, 20000) g")
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    services.pg.crash().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    services.pg.restart().unwrap();
    services
        .sql("INSERT INTO notes SELECT g, 'after' FROM generate_series(20001, 20010) g")
        .await;

    let records = services
        .read("shop.public.notes", 20010, Duration::from_secs(120))
        .await;
    assert!(
        daemon.exited().is_none(),
        "sluice must reconnect, not exit:\n{}",
        daemon.log()
    );
    let mut ids: Vec<i64> = decode_all(&services, &records)
        .iter()
        .map(|e| e.after().unwrap()["id"].as_i64().unwrap())
        .collect();
    let received = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 20010, "every row arrives");
    assert_eq!(received, 20010, "and none twice:\n{}", daemon.log());
    assert!(daemon.log().contains("reconnecting"), "{}", daemon.log());
    daemon.stop_cleanly();
}

/// An update that leaves a 1 MB TOASTed column alone: PostgreSQL does not send the value. Under REPLICA
/// IDENTITY FULL sluice restores it from the old row; under DEFAULT it cannot, and the event says so (the
/// `sluice.unchanged_toast` header, null in `after`) and `/metrics` counts it — it is never passed off
/// as a real null.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_toasted_value_is_restored_or_marked_never_silently_dropped() {
    let services = Services::start().await;
    services
        .sql(
            "CREATE TABLE docs (id int PRIMARY KEY, body text, n int);
             CREATE TABLE docs_full (id int PRIMARY KEY, body text, n int);
             ALTER TABLE docs_full REPLICA IDENTITY FULL;",
        )
        .await;
    let mut config = services.config(&["public.docs", "public.docs_full"]);
    // Events of a few MB: one row's 1 MB value, twice in the FULL table's update (before and after).
    config.set_kafka("message.max.bytes", "8000000");
    config.api_address = Some("127.0.0.1:0".into());
    let mut daemon = Daemon::start(&services.write(&config));
    services.wait_streaming(&mut daemon).await;

    // 1 MB of hex digits (md5 of a counter): pglz cannot squeeze it inline, so it is stored out of line.
    let body = "(SELECT string_agg(md5(i::text), '') FROM generate_series(1, 32768) AS i)";
    services
        .sql(&format!(
            "INSERT INTO docs VALUES (1, {body}, 0);
             INSERT INTO docs_full VALUES (1, {body}, 0);
             UPDATE docs SET n = 1 WHERE id = 1;
             UPDATE docs_full SET n = 1 WHERE id = 1;"
        ))
        .await;
    let client = services.pg.client(common::DATABASE).await.unwrap();
    let stored: String = client
        .query_one("SELECT body FROM docs_full WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored.len(), 1_048_576);
    let external: bool = client
        .query_one(
            "SELECT pg_relation_size(reltoastrelid) > 0 FROM pg_class WHERE relname = 'docs_full'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(external, "the value is in the TOAST table");

    let full = decode_all(
        &services,
        &services
            .read("shop.public.docs_full", 2, Duration::from_secs(60))
            .await,
    );
    assert_eq!(
        full.len(),
        2,
        "{:?}",
        full.iter().map(|e| e.op()).collect::<Vec<_>>()
    );
    let update = &full[1];
    assert_eq!(update.op(), Some("u"));
    let after = update.after().expect("after");
    assert_eq!(after["n"], 1);
    assert_eq!(
        after["body"].as_str().map(str::len),
        Some(1_048_576),
        "restored from the old row"
    );
    assert_eq!(after["body"].as_str(), Some(stored.as_str()));
    assert!(!update.headers.contains_key("sluice.unchanged_toast"));

    let default = decode_all(
        &services,
        &services
            .read("shop.public.docs", 2, Duration::from_secs(60))
            .await,
    );
    assert_eq!(default.len(), 2);
    let update = &default[1];
    assert_eq!(update.op(), Some("u"));
    let after = update.after().expect("after");
    assert_eq!(after["n"], 1);
    assert!(after["body"].is_null(), "{}", after["body"]);
    assert_eq!(
        update
            .headers
            .get("sluice.unchanged_toast")
            .map(String::as_str),
        Some("body"),
        "the event names the value it lacks"
    );
    let inserted = default[0].after().expect("the insert carries the value");
    assert_eq!(inserted["body"].as_str().map(str::len), Some(1_048_576));

    let (_, metrics) = common::http_get(&daemon, "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l == "sluice_unchanged_toast_total{table=\"public.docs\"} 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("sluice_unchanged_toast_total{table=\"public.docs_full\"}"),
        "{metrics}"
    );
    services.assert_no_dead_letters().await;
    daemon.stop_cleanly();
}
