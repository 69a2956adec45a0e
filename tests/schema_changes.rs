//! Schema changes in the middle of the stream, against a real PostgreSQL, broker and registry double: each
//! change's next event carries a new registered schema version, adding a nullable column is a change a
//! consumer with the new schema can read old events with (BACKWARD), and a table added to the publication
//! is captured from its first change.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::decode_all;

const ITEMS: &str = "shop.public.items";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_schema_change_gives_the_next_event_a_new_schema_version() {
    let (services, _, mut daemon) = common::streaming(
        "CREATE TABLE items (id int PRIMARY KEY, name text)",
        &["public.items"],
        "",
        &[],
    )
    .await;
    for step in [
        "INSERT INTO items VALUES (1, 'one')",
        "ALTER TABLE items ADD COLUMN price numeric(10,2); INSERT INTO items VALUES (2, 'two', 2.50)",
        "ALTER TABLE items RENAME COLUMN name TO title; INSERT INTO items VALUES (3, 'three', 3.00)",
        "ALTER TABLE items DROP COLUMN price; INSERT INTO items VALUES (4, 'four')",
        "ALTER TABLE items ALTER COLUMN id TYPE bigint; INSERT INTO items VALUES (5, 'five')",
    ] {
        services.sql(step).await;
    }

    let records = services.read(ITEMS, 5, Duration::from_secs(60)).await;
    let events = decode_all(&services, &records);
    let by_id: BTreeMap<i64, (&serde_json::Value, u32)> = events
        .iter()
        .zip(&records)
        .map(|(event, record)| {
            let after = event.after().expect("inserts have an after image");
            let body = record.value.as_deref().unwrap();
            let schema_id = u32::from_be_bytes([body[1], body[2], body[3], body[4]]);
            (after["id"].as_i64().unwrap(), (after, schema_id))
        })
        .collect();
    let fields = |id: i64| {
        let mut names: Vec<String> = by_id[&id].0.as_object().unwrap().keys().cloned().collect();
        names.sort_unstable();
        names
    };
    assert_eq!(fields(1), ["id", "name"]);
    assert_eq!(fields(2), ["id", "name", "price"]);
    assert_eq!(by_id[&2].0["price"], "2.50");
    assert_eq!(fields(3), ["id", "price", "title"]);
    assert_eq!(fields(4), ["id", "title"]);
    assert_eq!(fields(5), ["id", "title"]);
    let ids: Vec<u32> = (1..=5).map(|id| by_id[&id].1).collect();
    for pair in ids.windows(2) {
        assert_ne!(
            pair[0], pair[1],
            "every change registers a new schema: {ids:?}"
        );
    }

    // BACKWARD: the schema after ADD COLUMN reads the event written before it.
    let schema_text = |id: u32| {
        services
            .registry
            .schemas()
            .into_iter()
            .find(|(i, _)| *i == id)
            .map(|(_, text)| text)
            .unwrap()
    };
    let old = apache_avro::Schema::parse_str(&schema_text(ids[0])).unwrap();
    let new = apache_avro::Schema::parse_str(&schema_text(ids[1])).unwrap();
    let first = records
        .iter()
        .zip(&events)
        .find(|(_, e)| e.after().is_some_and(|a| a["id"] == 1))
        .map(|(r, _)| r.value.as_deref().unwrap())
        .unwrap();
    let mut body = &first[5..];
    let read = apache_avro::from_avro_datum(&old, &mut body, Some(&new))
        .expect("the new schema reads the old event");
    assert!(
        format!("{read:?}").contains("price"),
        "the new field is filled with its default: {read:?}"
    );
    daemon.stop_cleanly();
}

/// A table created mid-stream and added to the publication (by its owner; a `FOR ALL TABLES` publication
/// covers it at once) is captured from its first published change when the selection's patterns match
/// it, on a topic and under a schema of its own, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_added_to_the_publication_mid_stream_is_captured() {
    let (services, _, mut daemon) = common::streaming(
        "CREATE TABLE items (id int PRIMARY KEY, name text)",
        &["public.*"],
        "",
        &[],
    )
    .await;
    services.sql("INSERT INTO items VALUES (1, 'one')").await;
    services
        .sql(
            "CREATE TABLE extras (id int PRIMARY KEY, note text);
             ALTER PUBLICATION sluice_test ADD TABLE extras",
        )
        .await;
    services
        .sql("INSERT INTO extras VALUES (7, 'seven'); INSERT INTO items VALUES (2, 'two')")
        .await;

    let extras = decode_all(
        &services,
        &services
            .read("shop.public.extras", 1, Duration::from_secs(60))
            .await,
    );
    assert_eq!(extras.len(), 1, "{extras:?}");
    assert_eq!(extras[0].op(), Some("c"));
    assert_eq!(extras[0].after().unwrap()["note"], "seven");
    let items = services.read(ITEMS, 2, Duration::from_secs(60)).await;
    assert_eq!(items.len(), 2);
    let subjects = services.registry.subjects();
    for subject in ["shop.public.extras-key", "shop.public.extras-value"] {
        assert!(
            subjects.iter().any(|s| s == subject),
            "{subject} in {subjects:?}"
        );
    }
    services.assert_no_dead_letters().await;
    daemon.stop_cleanly();
}
