//! Logical decoding messages (the outbox pattern) against a real PostgreSQL and broker: with
//! `capture_messages`, what `pg_logical_emit_message` writes arrives on `<topic_prefix>.message`, keyed by
//! its prefix, a transactional one with its transaction.

mod common;

use std::time::Duration;

use common::{decode_all, DEAD_LETTERS};

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
    services.registry.set_reject_all(true);
    services
        .sql("SELECT pg_logical_emit_message(false, 'early', 'refused')")
        .await;
    let letters = services
        .read(DEAD_LETTERS, 1, Duration::from_secs(60))
        .await;
    assert_eq!(letters.len(), 1);
    let letter: serde_json::Value =
        serde_json::from_slice(letters[0].value.as_deref().unwrap()).unwrap();
    assert_eq!(letter["stage"], "register", "{letter}");
    assert_eq!(letter["topic"], "shop.message", "{letter}");
    services.registry.set_reject_all(false);

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
