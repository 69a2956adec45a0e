//! Logical decoding messages (the outbox pattern) against a real PostgreSQL and broker: with
//! `capture_messages`, what `pg_logical_emit_message` writes arrives on `<topic_prefix>.message`, keyed by
//! its prefix, a transactional one with its transaction.

mod common;

use std::time::Duration;

use common::decode_all;
use sluice_testkit::postgres::current_wal_lsn;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emitted_messages_arrive_on_the_message_topic() {
    let (services, _, mut daemon) = common::streaming(
        "CREATE TABLE notes (id int PRIMARY KEY, body text)",
        &["public.notes"],
        "capture_messages = true",
        &[],
    )
    .await;

    // A message whose schema the registry refuses goes to the dead-letter topic; the stream goes on.
    services
        .registry
        .reject_subjects_starting_with(Some("shop.message"));
    services
        .sql("SELECT pg_logical_emit_message(false, 'early', 'refused')")
        .await;
    let letter = services
        .dead_letters(1, Duration::from_secs(60))
        .await
        .remove(0);
    assert_eq!(letter["stage"], "register", "{letter}");
    assert_eq!(letter["topic"], "shop.message", "{letter}");
    services.registry.reject_subjects_starting_with(None);

    services
        .sql(
            r#"BEGIN;
               INSERT INTO notes VALUES (1, 'ordered');
               SELECT pg_logical_emit_message(true, 'outbox', '{"order": 1}');
               COMMIT;
               SELECT pg_logical_emit_message(false, 'audit', 'hello');"#,
        )
        .await;

    let messages = decode_all(
        &services,
        &services
            .read("shop.message", 2, Duration::from_secs(60))
            .await,
    );
    assert_eq!(messages.len(), 2, "{messages:?}");
    let find = |prefix: &str| {
        messages
            .iter()
            .find(|m| m.key.as_ref().is_some_and(|k| k == prefix))
            .unwrap_or_else(|| panic!("no message with prefix {prefix}: {messages:?}"))
    };
    let outbox = find("outbox").value.as_ref().unwrap();
    assert_eq!(outbox["content"], hex(br#"{"order": 1}"#));
    assert_eq!(outbox["transactional"], true);
    assert_eq!(outbox["db"], "shop");
    assert!(
        outbox["txId"].is_i64() && outbox["ts_ms"].is_i64(),
        "{outbox}"
    );
    let audit = find("audit").value.as_ref().unwrap();
    assert_eq!(audit["content"], hex(b"hello"));
    assert_eq!(audit["transactional"], false);
    assert!(audit["txId"].is_null(), "{audit}");

    // The row of the same transaction arrives as usual.
    let notes = services
        .read("shop.public.notes", 1, Duration::from_secs(30))
        .await;
    assert_eq!(notes.len(), 1);
    daemon.stop_cleanly();
}

/// Heartbeats write into the captured database's WAL, so the slot moves on while its tables are idle, and
/// they never reach a topic, even with `capture_messages`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_move_the_slot_and_are_not_published() {
    let (services, _, mut daemon) = common::streaming(
        "CREATE TABLE notes (id int PRIMARY KEY, body text)",
        &["public.notes"],
        "capture_messages = true\nheartbeat_interval_secs = 1",
        &[],
    )
    .await;
    let client = services.pg.client(common::DATABASE).await.unwrap();
    // A second slot sees what the WAL holds from here on.
    client
        .batch_execute("SELECT pg_create_logical_replication_slot('probe', 'test_decoding')")
        .await
        .unwrap();
    let start = current_wal_lsn(&client).await.unwrap();
    // Nothing else writes WAL here: only heartbeats can take the slot past `start`.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let moved: bool = client
            .query_one(
                "SELECT confirmed_flush_lsn > $1::text::pg_lsn FROM pg_replication_slots \
                 WHERE slot_name = 'sluice_test'",
                &[&start],
            )
            .await
            .unwrap()
            .get(0);
        if moved {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slot stayed at {start}:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let heartbeats: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_logical_slot_get_changes('probe', NULL, NULL) \
             WHERE data LIKE 'message: transactional: 0 prefix: sluice.heartbeat%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(heartbeats >= 1, "no heartbeat in the WAL");
    client
        .batch_execute("SELECT pg_drop_replication_slot('probe')")
        .await
        .unwrap();
    let messages = services
        .read("shop.message", 0, Duration::from_secs(2))
        .await;
    assert!(messages.is_empty(), "{messages:?}");
    daemon.stop_cleanly();
}
