//! The initial snapshot against a real PostgreSQL and a real broker: rows already in the tables arrive as
//! `op = "r"` events, the stream continues exactly where the snapshot's exported snapshot ends, an
//! interrupted snapshot is taken again, and the `never` and `initial_only` modes do what they say.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{decode_all, Daemon, Event, Services};
use serde_json::Value as Json;

const ITEMS: &str = "shop.public.items";
const TAGS: &str = "shop.public.tags";
const MEASURES: &str = "shop.public.measures";

/// Ids of the rows inserted while the snapshot may be running start here.
const LATE_IDS: i64 = 10_000_000;

fn schema(rows: i64) -> String {
    format!(
        r"
CREATE TABLE items (id bigint PRIMARY KEY, label text, amount numeric(12,2), note text);
INSERT INTO items
  SELECT i, CASE WHEN i % 97 = 0 THEN E'tab\there\nnewline back\\slash ' || i ELSE 'item ' || i END,
         (i * 7 % 100000) / 100.0, CASE WHEN i % 3 = 0 THEN NULL ELSE 'n' || i END
  FROM generate_series(1, {rows}) AS i;
CREATE TABLE tags (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO tags VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd'), (5, 'e');
CREATE TABLE measures (id int, at date, value float8, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE measures_2025 PARTITION OF measures FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE measures_2026 PARTITION OF measures FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO measures SELECT i, date '2025-06-01' + (i * 3), i / 4.0 FROM generate_series(1, 100) AS i;
"
    )
}

fn id_of(event: &Event) -> i64 {
    let key = event.key.as_ref().expect("every event has a key");
    key["id"].as_i64().expect("the key has an id")
}

fn snapshot_marker(event: &Event) -> &str {
    event.value.as_ref().unwrap()["source"]["snapshot"]
        .as_str()
        .unwrap()
}

/// The items table as PostgreSQL has it now: id → (label, amount, note) the way events decode them.
async fn items_in_database(services: &Services) -> BTreeMap<i64, Json> {
    let client = services.pg.client(common::DATABASE).await.unwrap();
    client
        .query("SELECT id, label, amount::text, note FROM items", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| {
            let values = serde_json::json!({
                "label": row.get::<_, Option<String>>(1),
                "amount": row.get::<_, Option<String>>(2),
                "note": row.get::<_, Option<String>>(3),
            });
            (row.get::<_, i64>(0), values)
        })
        .collect()
}

/// Reads `topic` until the last event of every key equals the database (or panics after three minutes).
async fn read_until_state(
    services: &Services,
    topic: &str,
    expected: &BTreeMap<i64, Json>,
    daemon: &Daemon,
) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let events = decode_all(
            services,
            &services
                .read(topic, expected.len(), Duration::from_secs(60))
                .await,
        );
        let mut state = BTreeMap::new();
        for event in &events {
            if let Some(after) = event.after() {
                let row = serde_json::json!({
                    "label": after["label"], "amount": after["amount"], "note": after["note"],
                });
                state.insert(id_of(event), row);
            }
        }
        if &state == expected {
            return events;
        }
        let mismatch = expected.iter().find(|(k, v)| state.get(k) != Some(v));
        assert!(
            Instant::now() < deadline,
            "{topic}: {} of {} keys match the database after three minutes; first mismatch {mismatch:?}, \
             on the topic {:?}\n{}",
            expected.iter().filter(|(k, v)| state.get(k) == Some(v)).count(),
            expected.len(),
            mismatch.and_then(|(k, _)| state.get(k)),
            daemon.log()
        );
    }
}

/// Writes transactions of 5 inserts (from `LATE_IDS`) and 5 updates spread over the `rows` items, every
/// 25 ms, until `after_slot` of them came after sluice's slot appeared: some land before the consistent
/// point, some after.
fn spawn_racing_writer(
    services: &Services,
    rows: i64,
    after_slot: usize,
) -> tokio::task::JoinHandle<()> {
    let url = services.pg.url(common::DATABASE);
    tokio::spawn(async move {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let mut seen_slot = 0;
        for t in 0_i64.. {
            let first = LATE_IDS + t * 5;
            let low = (t * 7_919) % (rows - 5) + 1;
            client
                .batch_execute(&format!(
                    "BEGIN;
                     INSERT INTO items SELECT i, 'late ' || i, 1.50, NULL FROM generate_series({first}, {last}) AS i;
                     UPDATE items SET label = 'updated in {t}' WHERE id BETWEEN {low} AND {high};
                     COMMIT;",
                    last = first + 4,
                    high = low + 4,
                ))
                .await
                .unwrap();
            let slot = client
                .query_opt(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'sluice_test'",
                    &[],
                )
                .await
                .unwrap();
            if slot.is_some() {
                seen_slot += 1;
                if seen_slot == after_slot {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
}

/// Per key: exactly one event brings the row in (a snapshot read or a create), and it comes first; late
/// rows arrived on both sides of the consistent point.
fn assert_each_row_arrived_once(items: &[Event], rows: usize) {
    let mut per_key: BTreeMap<i64, Vec<&str>> = BTreeMap::new();
    for event in items {
        per_key
            .entry(id_of(event))
            .or_default()
            .push(event.op().unwrap());
    }
    assert_eq!(per_key.len(), rows);
    for (id, ops) in &per_key {
        let arrivals = ops.iter().filter(|op| matches!(**op, "r" | "c")).count();
        assert_eq!(arrivals, 1, "key {id}: {ops:?}");
        assert!(matches!(ops[0], "r" | "c"), "key {id}: {ops:?}");
        assert!(ops[1..].iter().all(|op| *op == "u"), "key {id}: {ops:?}");
    }
    let late = |op: &str| {
        items
            .iter()
            .any(|e| id_of(e) >= LATE_IDS && e.op() == Some(op))
    };
    assert!(
        late("r") && late("c"),
        "late rows in the snapshot and in the stream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_stream_publishes_every_row_once() {
    let services = Services::start().await;
    services.sql(&schema(3_000)).await;
    // Two connections share the three tables, inside the one exported snapshot.
    let config = services.write_config_source(
        &["public.items", "public.tags", "public.measures"],
        "snapshot_connections = 2",
        &[],
    );
    let mut daemon = Daemon::start(&config);

    // Writes that race the snapshot: whichever side of the slot's consistent point they fall on, each
    // must show up exactly once (in the snapshot, or in the stream).
    let writer = spawn_racing_writer(&services, 3_000, 10);
    services.wait_streaming(&mut daemon).await;
    writer.await.unwrap();

    let expected = items_in_database(&services).await;
    let items = read_until_state(&services, ITEMS, &expected, &daemon).await;

    assert_each_row_arrived_once(&items, expected.len());
    let read = items.iter().filter(|e| e.op() == Some("r")).count();
    assert!(
        read >= 3_000,
        "the 3,000 rows written before sluice started are snapshot rows ({read})"
    );
    let special = items
        .iter()
        .find(|e| id_of(e) == 97 && e.op() == Some("r"))
        .expect("row 97 in the snapshot");
    assert_eq!(
        special.after().unwrap()["label"],
        "tab\there\nnewline back\\slash 97",
        "COPY's escapes are undone"
    );

    let tags = decode_all(
        &services,
        &services.read(TAGS, 5, Duration::from_secs(30)).await,
    );
    assert_eq!(tags.len(), 5);
    assert!(tags.iter().all(|e| e.op() == Some("r")));
    let measures = decode_all(
        &services,
        &services.read(MEASURES, 100, Duration::from_secs(30)).await,
    );
    assert_eq!(
        measures.len(),
        100,
        "a partitioned table is read through its root"
    );

    // source.snapshot: "true" on snapshot rows, "last" on exactly one (the final one), "false" when streamed.
    let all: Vec<&Event> = items.iter().chain(&tags).chain(&measures).collect();
    let last = all.iter().filter(|e| snapshot_marker(e) == "last").count();
    assert_eq!(last, 1, "exactly one snapshot row is marked last");
    for event in &all {
        let marker = snapshot_marker(event);
        match event.op() {
            Some("r") => assert!(marker == "true" || marker == "last", "{marker}"),
            _ => assert_eq!(marker, "false"),
        }
    }
    let position = services.position_file().expect("a position is stored");
    assert!(position.get("snapshot_pending").is_none(), "{position}");
    assert!(daemon.log().contains("connections=2"), "{}", daemon.log());

    // A restart resumes the stream: the snapshot is not taken again.
    daemon.stop_cleanly();
    let mut daemon = Daemon::start(&config);
    services.wait_streaming(&mut daemon).await;
    services
        .sql("UPDATE tags SET name = 'changed' WHERE id = 1")
        .await;
    let tags = decode_all(
        &services,
        &services.read(TAGS, 6, Duration::from_secs(30)).await,
    );
    let mut ops: Vec<&str> = tags.iter().filter_map(Event::op).collect();
    ops.sort_unstable();
    assert_eq!(ops, ["r", "r", "r", "r", "r", "u"]);
    services.assert_no_dead_letters().await;
    daemon.stop_cleanly();
}

/// A larger table, written to while the snapshot reads it over three connections in key ranges: afterwards
/// the topic holds the table as it is, row by row. `SLUICE_SNAPSHOT_ROWS` sets the size. CI runs 10,000: reading a topic back from tansu 0.6
/// slows down with its length faster than linearly (10,000 rows in 18 s, 20,000 in 56 s here), so a
/// million cannot be compared through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_snapshot_while_writes_continue() {
    let rows: i64 = std::env::var("SLUICE_SNAPSHOT_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let services = Services::start().await;
    services.sql(&schema(rows)).await;
    // The planner's estimate decides the split.
    services.sql("ANALYZE items").await;
    // Three connections share the table in key ranges of about a fifth of it.
    let chunk_rows = (rows / 5).max(1_000);
    let config = services.write_config_source(
        &["public.items"],
        &format!("snapshot_connections = 3\nsnapshot_chunk_rows = {chunk_rows}"),
        &[],
    );
    let started = Instant::now();
    let mut daemon = Daemon::start(&config);
    let writer = spawn_racing_writer(&services, rows, 20);
    services.wait_streaming(&mut daemon).await;
    writer.await.unwrap();

    let expected = items_in_database(&services).await;
    eprintln!("snapshot and stream done in {:?}", started.elapsed());
    let items = read_until_state(&services, ITEMS, &expected, &daemon).await;
    eprintln!(
        "{} rows read back and compared after {:?}",
        expected.len(),
        started.elapsed()
    );
    assert_each_row_arrived_once(&items, expected.len());
    let read = items.iter().filter(|e| e.op() == Some("r")).count();
    assert!(read >= rows as usize, "{read} snapshot rows");
    let log = daemon.log();
    let split = log
        .lines()
        .find(|l| l.contains("snapshot of table split into key ranges"))
        .unwrap_or_else(|| panic!("the table was not split:\n{log}"));
    assert!(split.contains("ranges=5"), "{split}");
    // The ranges follow the key histogram (not the extent the late ids stretch): each holds rows, and
    // more than one connection read them.
    let ranges: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("snapshot of key range finished"))
        .collect();
    assert_eq!(ranges.len(), 5, "{log}");
    assert!(
        ranges.iter().all(|l| !l.contains(" rows=0 ")),
        "{ranges:#?}"
    );
    let readers: std::collections::BTreeSet<&str> = ranges
        .iter()
        .filter_map(|l| l.split(" reader=").nth(1))
        .collect();
    assert!(
        readers.len() > 1,
        "one connection read every range: {ranges:#?}"
    );
    services.assert_no_dead_letters().await;
    daemon.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_cut_off_by_a_crash_is_taken_again() {
    let services = Services::start().await;
    services.sql(&schema(2_000)).await;
    let config = services.write_config(&["public.items", "public.tags"]);
    // With the registry down no snapshot row can be encoded: the rows wait, the snapshot stays
    // unacknowledged, and the crash comes in the middle of it.
    services.registry.set_unavailable(true);
    let mut daemon = Daemon::start(&config);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !daemon.log().contains("schema registry unavailable") {
        assert!(Instant::now() < deadline, "{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.kill();
    services.registry.set_unavailable(false);
    let position = services.position_file().expect("a position is stored");
    assert_eq!(position["snapshot_pending"], true, "{position}");

    // Changes between the two runs are in the snapshot that is taken again.
    services
        .sql("INSERT INTO items VALUES (2000000, 'between runs', 1.00, NULL); DELETE FROM items WHERE id = 5")
        .await;
    let mut daemon = Daemon::start(&config);
    services.wait_streaming(&mut daemon).await;
    assert!(
        daemon.log().contains("recreating the slot"),
        "{}",
        daemon.log()
    );
    services
        .sql("INSERT INTO items VALUES (2000001, 'streamed', 2.00, NULL)")
        .await;
    let expected = items_in_database(&services).await;
    let items = read_until_state(&services, ITEMS, &expected, &daemon).await;
    let streamed: Vec<i64> = items
        .iter()
        .filter(|e| e.op() != Some("r"))
        .map(id_of)
        .collect();
    assert_eq!(
        streamed,
        [2_000_001],
        "only the row written after the second snapshot is streamed"
    );
    let read: Vec<i64> = items
        .iter()
        .filter(|e| e.op() == Some("r"))
        .map(id_of)
        .collect();
    assert_eq!(
        read.len(),
        2_000,
        "nothing reached the broker in the first run; the second reads every row"
    );
    assert!(read.contains(&2_000_000) && !read.contains(&5));
    let tags = decode_all(
        &services,
        &services.read(TAGS, 5, Duration::from_secs(30)).await,
    );
    assert_eq!(tags.len(), 5);
    let last = items
        .iter()
        .chain(&tags)
        .filter(|e| snapshot_marker(e) == "last")
        .count();
    assert_eq!(last, 1, "only the complete snapshot marks a last row");
    let position = services.position_file().unwrap();
    assert!(position.get("snapshot_pending").is_none(), "{position}");
    daemon.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_only_and_never_modes() {
    let services = Services::start().await;
    services.sql(&schema(10)).await;

    // initial_only: the rows, then a clean exit, and no slot left behind to hold WAL.
    let config =
        services.write_config_source(&["public.items"], "snapshot = \"initial_only\"", &[]);
    let mut daemon = Daemon::start(&config);
    let status = daemon.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    let items = decode_all(
        &services,
        &services.read(ITEMS, 10, Duration::from_secs(30)).await,
    );
    assert_eq!(items.len(), 10);
    assert!(items.iter().all(|e| e.op() == Some("r")));
    assert!(
        services.confirmed_flush().await.is_none(),
        "initial_only drops its slot"
    );
    // Run again: the snapshot is complete, nothing more is published.
    let mut daemon = Daemon::start(&config);
    let status = daemon.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    assert!(daemon.log().contains("nothing to do"), "{}", daemon.log());

    // never: only changes after the slot exists.
    std::fs::remove_dir_all(services.dir.path().join("positions")).unwrap();
    let config = services.write_config_source(&["public.items"], "snapshot = \"never\"", &[]);
    let mut daemon = Daemon::start(&config);
    services.wait_streaming(&mut daemon).await;
    services
        .sql("INSERT INTO items VALUES (11, 'new', 3.00, NULL)")
        .await;
    let items = decode_all(
        &services,
        &services.read(ITEMS, 11, Duration::from_secs(30)).await,
    );
    let ops: Vec<&str> = items.iter().filter_map(Event::op).collect();
    assert_eq!(ops.len(), 11, "{ops:?}");
    assert_eq!(
        ops.iter().filter(|op| **op == "r").count(),
        10,
        "only the first run's snapshot"
    );
    let created: Vec<i64> = items
        .iter()
        .filter(|e| e.op() == Some("c"))
        .map(id_of)
        .collect();
    assert_eq!(created, [11]);
    daemon.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_slot_on_stop_leaves_no_slot_and_the_next_run_starts_afresh() {
    let services = Services::start().await;
    services.sql(&schema(10)).await;
    let config = services.write_config_source(&["public.items"], "drop_slot_on_stop = true", &[]);
    let mut daemon = Daemon::start(&config);
    services.wait_streaming(&mut daemon).await;
    services
        .sql("INSERT INTO items VALUES (11, 'streamed', 1.00, NULL)")
        .await;
    assert_eq!(
        services
            .read(ITEMS, 11, Duration::from_secs(30))
            .await
            .len(),
        11
    );
    daemon.stop_cleanly();
    assert!(
        services.confirmed_flush().await.is_none(),
        "the slot is gone"
    );
    assert!(
        services.position_file().is_none(),
        "the position is forgotten"
    );

    // A new slot, and the snapshot takes every row again.
    let mut daemon = Daemon::start(&config);
    services.wait_streaming(&mut daemon).await;
    let items = decode_all(
        &services,
        &services.read(ITEMS, 22, Duration::from_secs(30)).await,
    );
    let read = items.iter().filter(|e| e.op() == Some("r")).count();
    assert_eq!(
        (items.len(), read),
        (22, 21),
        "10 + 11 snapshot rows and one create"
    );
    daemon.stop_cleanly();
}
