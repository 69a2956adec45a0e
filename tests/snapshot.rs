//! The initial snapshot against a real PostgreSQL and a real broker: rows already in the tables arrive as
//! `op = "r"` events, the stream continues exactly where the snapshot's exported snapshot ends, an
//! interrupted snapshot is carried on where it stopped, and the `never` and `initial_only` modes do what
//! they say.

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

/// `source.snapshot`; empty for a tombstone.
fn snapshot_marker(event: &Event) -> &str {
    event
        .value
        .as_ref()
        .map_or("", |value| value["source"]["snapshot"].as_str().unwrap())
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

/// Reads `topic` until the last event of every key equals the database (or panics after ten minutes: a
/// million rows take about a minute to read back).
async fn read_until_state(
    services: &Services,
    topic: &str,
    expected: &BTreeMap<i64, Json>,
    daemon: &Daemon,
) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let events = decode_all(
            services,
            &services
                .read(topic, expected.len(), Duration::from_secs(300))
                .await,
        );
        let mut state = BTreeMap::new();
        for event in &events {
            if event.op() == Some("d") {
                state.remove(&id_of(event));
            }
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
        let extra: Vec<&i64> = state.keys().filter(|k| !expected.contains_key(k)).collect();
        assert!(
            Instant::now() < deadline,
            "{topic}: {} of {} keys match the database after ten minutes; first mismatch {mismatch:?}, \
             on the topic {:?}; keys the database does not have: {extra:?}\n{}",
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
    assert_eq!(position["position"]["kind"], "postgres", "{position}");
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

/// A million rows, written to while the snapshot reads them over three connections in key ranges:
/// afterwards the topic holds the table as it is, row by row (about three minutes here).
/// `SLUICE_SNAPSHOT_ROWS` sets another size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_snapshot_while_writes_continue() {
    let rows: i64 = std::env::var("SLUICE_SNAPSHOT_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let services = Services::start().await;
    services.sql(&schema(rows)).await;
    // The planner's estimate decides the split.
    services.sql("ANALYZE items").await;
    // Three connections share the table in key ranges of about a fifth of it.
    let chunk_rows = (rows / 5).max(1_000);
    let mut config = services.config(&["public.items"]);
    config.source_extra = format!("snapshot_connections = 3\nsnapshot_chunk_rows = {chunk_rows}");
    // tansu reads a partition back in time that grows with its length: more, shorter partitions.
    config.topic_partitions = 8;
    let config = services.write(&config);
    let started = Instant::now();
    let mut daemon = Daemon::start(&config);
    let writer = spawn_racing_writer(&services, rows, 20);
    // Streaming starts once every snapshot row is on the broker: the time that takes is tansu's (about
    // 20,000 rows/s here, less on a busy machine), not what this test is about.
    common::wait_slot_active_within(
        &services.pg,
        &mut daemon,
        "sluice_test",
        Duration::from_secs(600),
    )
    .await;
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

/// The stored position's `kind`, once the stream is past every later snapshot (or panics after 30 s).
async fn wait_for_plain_position(services: &Services, daemon: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let position = services.position_file().expect("a position is stored");
        if position["position"]["kind"] == "postgres" {
            return;
        }
        assert!(Instant::now() < deadline, "{position}\n{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts sluice with the registry down and returns once the first snapshot row waits for it: the
/// snapshot has begun, and none of its rows can reach the broker until the registry is back.
async fn start_with_the_registry_down(services: &Services, config: &std::path::Path) -> Daemon {
    services.registry.set_unavailable(true);
    let daemon = Daemon::start(config);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !daemon.log().contains("schema registry unavailable") {
        assert!(Instant::now() < deadline, "{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_cut_off_before_any_row_reached_the_broker_is_carried_on() {
    let services = Services::start().await;
    services.sql(&schema(2_000)).await;
    let config = services.write_config(&["public.items", "public.tags"]);
    // With the registry down no snapshot row can be encoded: the rows wait, the snapshot stays
    // unacknowledged, and the crash comes in the middle of it.
    let mut daemon = start_with_the_registry_down(&services, &config).await;
    // Both tables begin (the journal records each before its first row is handed on) while the rows
    // wait for the registry; the crash comes after that.
    let journal = services
        .dir
        .path()
        .join("positions/sluice_test.snapshot.journal");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&journal).is_ok_and(|text| text.contains("\"tags\"")) {
        assert!(
            Instant::now() < deadline,
            "tags never began: {}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.kill();
    services.registry.set_unavailable(false);
    let position = services.position_file().expect("a position is stored");
    assert_eq!(
        position["position"]["kind"], "postgres_snapshot",
        "{position}"
    );
    assert_eq!(position["position"]["complete"], false, "{position}");

    // Changes between the two runs. The tables had begun (their rows were on their way to the broker),
    // so their changes are all streamed after the rows the second run reads.
    services
        .sql(
            "INSERT INTO items VALUES (2000000, 'between runs', 1.00, NULL); DELETE FROM items WHERE id = 5;
             UPDATE tags SET name = 'changed' WHERE id = 1",
        )
        .await;
    let mut daemon = Daemon::start(&config);
    services.wait_streaming(&mut daemon).await;
    assert!(
        daemon
            .log()
            .contains("carrying on the interrupted snapshot"),
        "{}",
        daemon.log()
    );
    services
        .sql("INSERT INTO items VALUES (2000001, 'streamed', 2.00, NULL)")
        .await;
    let expected = items_in_database(&services).await;
    let items = read_until_state(&services, ITEMS, &expected, &daemon).await;
    // Tombstones have no op.
    let streamed: Vec<(&str, i64)> = items
        .iter()
        .filter_map(|e| e.op().filter(|op| *op != "r").map(|op| (op, id_of(e))))
        .collect();
    assert_eq!(
        streamed,
        [("c", 2_000_000), ("d", 5), ("c", 2_000_001)],
        "what changed since the consistent point is streamed for a table the first run began"
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
    // Tags was read too, its rows waiting behind the items' ones: the second run reads it again and
    // streams its change.
    let tags = decode_all(
        &services,
        &services.read(TAGS, 6, Duration::from_secs(30)).await,
    );
    let mut ops: Vec<&str> = tags.iter().filter_map(Event::op).collect();
    ops.sort_unstable();
    assert_eq!(ops, ["r", "r", "r", "r", "r", "u"]);
    let last = items
        .iter()
        .chain(&tags)
        .filter(|e| snapshot_marker(e) == "last")
        .count();
    assert_eq!(last, 1, "only the complete snapshot marks a last row");
    // Every part had begun: nothing is left out of the stream, so nothing needs storing with its position.
    let position = services.position_file().unwrap();
    assert_eq!(position["position"]["kind"], "postgres", "{position}");
    assert!(
        !services
            .dir
            .path()
            .join("positions/sluice_test.snapshot.journal")
            .exists(),
        "the journal goes once the snapshot is complete"
    );
    daemon.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_past_an_interrupted_snapshot_is_not_carried_on() {
    let services = Services::start().await;
    services.sql(&schema(100)).await;
    let config = services.write_config(&["public.items"]);
    let mut daemon = start_with_the_registry_down(&services, &config).await;
    daemon.kill();
    services.registry.set_unavailable(false);
    // Something else moves the slot on: the changes between are gone from it.
    services
        .sql("UPDATE items SET note = 'moved' WHERE id = 1")
        .await;
    services
        .sql("SELECT pg_replication_slot_advance('sluice_test', pg_current_wal_lsn())")
        .await;
    let mut daemon = Daemon::start(&config);
    let status = daemon.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{}", daemon.log());
    assert!(
        daemon.log().contains("past the consistent point"),
        "{}",
        daemon.log()
    );

    // when_needed takes the snapshot again, with a new slot.
    let config = services.write_config_source(&["public.items"], "snapshot = \"when_needed\"", &[]);
    let mut daemon = Daemon::start(&config);
    services.wait_streaming(&mut daemon).await;
    assert!(daemon.log().contains("created again"), "{}", daemon.log());
    let expected = items_in_database(&services).await;
    read_until_state(&services, ITEMS, &expected, &daemon).await;
    daemon.stop_cleanly();
}

/// The label's place in the writes of this file: the racing writer's `updated in N`, the first rows'
/// `item N` before any of them.
fn version(event: &Event) -> i64 {
    let label = event
        .after()
        .and_then(|a| a["label"].as_str())
        .unwrap_or("");
    label
        .strip_prefix("updated in ")
        .and_then(|n| n.parse().ok())
        .unwrap_or(i64::MIN)
}

/// Keys whose recorded range covers them in the stored position's `items` entry.
fn recorded_ranges(position: &Json) -> Vec<(i64, i64)> {
    let tables = position["position"]["tables"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let items = tables
        .iter()
        .find(|t| t["name"] == "items")
        .unwrap_or_else(|| panic!("items has recorded ranges: {position}"));
    items["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["low"].as_i64().unwrap(), r["high"].as_i64().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_snapshot_is_carried_on_where_it_stopped() {
    let services = Services::start().await;
    services.sql(&schema(10_000)).await;
    services.sql("ANALYZE items").await;
    // One connection reads items in five key ranges, then tags, which a transaction of the test keeps
    // locked: the first run is killed waiting for it, with items' ranges recorded but the last one (its
    // record waits for the next row to be handed on).
    let config = services.write_config_source(
        &["public.items", "public.tags"],
        "snapshot_chunk_rows = 2000",
        &[],
    );
    // The lock is taken once the slot exists (creating it would wait for the locking transaction) and
    // before the reader can reach tags: the registry holds the first rows back meanwhile, and items has
    // more rows than the way to the broker holds.
    let mut daemon = start_with_the_registry_down(&services, &config).await;
    let locker = services.pg.client(common::DATABASE).await.unwrap();
    locker
        .batch_execute("BEGIN; LOCK TABLE tags IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    services.registry.set_unavailable(false);
    let deadline = Instant::now() + Duration::from_secs(90);
    let recorded = loop {
        let position = services.position_file();
        let covered = position.as_ref().map_or(0, |p| {
            if p["position"]["tables"].is_array() {
                recorded_ranges(p).iter().map(|(l, h)| h - l + 1).sum()
            } else {
                0
            }
        });
        if covered >= 6_000 && daemon.log().contains("table=public.tags") {
            break recorded_ranges(&position.unwrap());
        }
        assert!(
            Instant::now() < deadline,
            "{:?}\n{}",
            position,
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    daemon.kill();
    locker.batch_execute("ROLLBACK").await.unwrap();
    let done = |id: i64| {
        recorded
            .iter()
            .any(|(low, high)| (*low..=*high).contains(&id))
    };
    let begun: Vec<i64> = (1..=10_000).filter(|id| !done(*id)).collect();
    assert!(!begun.is_empty() && begun.len() < 4_000, "{recorded:?}");
    let (in_begun, in_done) = (begun[10], (1..=10_000).rev().find(|id| done(*id)).unwrap());

    // Between the runs: an update and a delete in a recorded range and in the range begun but not
    // recorded, a new row beyond every range, a change to tags.
    services
        .sql(&format!(
            "UPDATE items SET label = 'updated in -1' WHERE id IN ({in_begun}, {in_done});
             DELETE FROM items WHERE id IN ({gone_begun}, {gone_done});
             INSERT INTO items VALUES (2000000, 'updated in -1', 1.00, NULL);
             UPDATE tags SET name = 'changed' WHERE id = 1;",
            gone_begun = begun[20],
            gone_done = in_done - 1,
        ))
        .await;
    // And writes racing the second run's snapshot.
    let writer = spawn_racing_writer(&services, 10_000, 40);
    let mut daemon = Daemon::start(&config);
    services.wait_streaming(&mut daemon).await;
    writer.await.unwrap();
    let log = daemon.log();
    assert!(
        log.contains("carrying on the interrupted snapshot"),
        "{log}"
    );
    assert!(
        log.contains("reading the key ranges not on the broker yet"),
        "{log}"
    );

    let expected = items_in_database(&services).await;
    let items = read_until_state(&services, ITEMS, &expected, &daemon).await;
    let mut per_key: BTreeMap<i64, Vec<&Event>> = BTreeMap::new();
    for event in &items {
        per_key.entry(id_of(event)).or_default().push(event);
    }
    let reads = |id: i64| {
        per_key.get(&id).map_or(0, |events| {
            events.iter().filter(|e| e.op() == Some("r")).count()
        })
    };
    // Recorded ranges are not read again.
    for id in (1..=10_000).filter(|id| done(*id)) {
        assert!(reads(id) <= 1, "key {id}: {:?}", per_key[&id]);
    }
    // The range begun and not recorded is read again, and its changes all streamed: a row the first run
    // published and that was deleted since is deleted on the topic too (the state check above).
    assert_eq!(reads(in_begun), 2, "{:?}", per_key[&in_begun]);
    assert!(!expected.contains_key(&begun[20]));
    // Keys the first run did not begin (beyond every range, and the late rows) arrive once, and never go
    // back to an older state: what the second run's snapshot held is left out of the stream.
    for (id, events) in per_key.iter().filter(|(id, _)| !begun.contains(id)) {
        let arrivals = events
            .iter()
            .filter(|e| matches!(e.op(), Some("r" | "c")))
            .count();
        assert!(arrivals <= 1, "key {id}: {events:#?}");
        let versions: Vec<i64> = events.iter().map(|e| version(e)).collect();
        assert!(
            versions
                .windows(2)
                .all(|pair| pair[0] < pair[1] || pair[1] == i64::MIN),
            "key {id} goes back: {versions:?}"
        );
    }
    let late = &per_key[&2_000_000];
    assert_eq!(
        late.iter().filter_map(|e| e.op()).collect::<Vec<_>>(),
        ["r"],
        "written between the runs beyond every range: read, not streamed too"
    );
    let updated = &per_key[&in_done];
    assert_eq!(
        updated.iter().filter_map(|e| e.op()).collect::<Vec<_>>()[..2],
        ["r", "u"],
        "a recorded range's change is streamed"
    );
    // The stream is past the change to tags by now: a sixth event would be there.
    let tags = decode_all(
        &services,
        &services.read(TAGS, 6, Duration::from_secs(5)).await,
    );
    assert_eq!(tags.len(), 5, "tags: read once, its change left out");
    assert!(tags
        .iter()
        .any(|e| e.after().is_some_and(|a| a["name"] == "changed")));
    let last = items
        .iter()
        .chain(&tags)
        .filter(|e| snapshot_marker(e) == "last")
        .count();
    assert_eq!(last, 1);
    services
        .sql("INSERT INTO items VALUES (2000001, 'streamed', 2.00, NULL)")
        .await;
    wait_for_plain_position(&services, &daemon).await;
    services.assert_no_dead_letters().await;
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

/// `(temporary, active)` of sluice's slot; None once it is gone.
async fn slot_state(services: &Services) -> Option<(bool, bool)> {
    let client = services.pg.client(common::DATABASE).await.unwrap();
    client
        .query_opt(
            "SELECT temporary, active FROM pg_replication_slots WHERE slot_name = 'sluice_test'",
            &[],
        )
        .await
        .unwrap()
        .map(|row| (row.get(0), row.get(1)))
}

/// Waits (up to 30 s) for the server to drop sluice's temporary slot.
async fn wait_slot_gone(services: &Services, after: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Some(state) = slot_state(services).await {
        assert!(
            Instant::now() < deadline,
            "the slot outlived {after}: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads the items topic until it holds `count` events; returns how many are snapshot reads.
async fn snapshot_reads_once(services: &Services, count: usize) -> usize {
    let items = decode_all(
        services,
        &services.read(ITEMS, count, Duration::from_secs(60)).await,
    );
    assert_eq!(
        items.len(),
        count,
        "{:?}",
        items.iter().map(Event::op).collect::<Vec<_>>()
    );
    items.iter().filter(|e| e.op() == Some("r")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_slot_lives_as_long_as_the_run() {
    let services = Services::start().await;
    services.sql(&schema(10)).await;
    let config = services.write_config_source(&["public.items"], "temporary_slot = true", &[]);

    // The slot is created temporary; its exported snapshot's rows come first, then the stream.
    let mut daemon = Daemon::start(&config);
    assert_eq!(snapshot_reads_once(&services, 10).await, 10);
    assert_eq!(slot_state(&services).await, Some((true, true)));
    services
        .sql("INSERT INTO items VALUES (11, 'streamed', 1.00, NULL)")
        .await;
    assert_eq!(snapshot_reads_once(&services, 11).await, 10);

    // A clean stop: the slot goes with the connection, and so does the position.
    daemon.stop_cleanly();
    wait_slot_gone(&services, "a clean stop").await;
    assert!(services.position_file().is_none(), "nothing to resume");

    // The next start begins afresh: a new slot and a new snapshot, which holds what changed meanwhile.
    services
        .sql("INSERT INTO items VALUES (12, 'while stopped', 2.00, NULL)")
        .await;
    let mut daemon = Daemon::start(&config);
    assert_eq!(snapshot_reads_once(&services, 23).await, 10 + 12);
    services
        .sql("INSERT INTO items VALUES (13, 'streamed again', 3.00, NULL)")
        .await;
    assert_eq!(snapshot_reads_once(&services, 24).await, 22);

    // A crash: the server drops the slot when the connection closes.
    daemon.kill();
    wait_slot_gone(&services, "SIGKILL").await;

    // A lost connection cannot be resumed: sluice stops and says why, and the slot is gone.
    let mut daemon = Daemon::start(&config);
    assert_eq!(snapshot_reads_once(&services, 24 + 13).await, 22 + 13);
    assert_eq!(slot_state(&services).await, Some((true, true)));
    services
        .sql("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'sluice_test'")
        .await;
    daemon.fails_saying(&[
        "the connection that held the temporary replication slot `sluice_test` was lost",
    ]);
    wait_slot_gone(&services, "its connection").await;

    // A permanent slot of the same name is not taken over.
    services
        .sql("SELECT pg_create_logical_replication_slot('sluice_test', 'pgoutput')")
        .await;
    let (_, out, _) = common::sluice(&["check", "-c", config.to_str().unwrap()]);
    assert!(
        out.contains("slot `sluice_test` exists, but source.temporary_slot = true"),
        "{out}"
    );
    let mut daemon = Daemon::start(&config);
    daemon.fails_saying(&["replication slot `sluice_test` exists already"]);
    assert_eq!(slot_state(&services).await, Some((false, false)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_slot_outlasts_the_servers_idle_timeouts() {
    let services = Services::start().await;
    services.sql(&schema(10)).await;
    // Managed servers often end idle sessions: the connection that holds the slot idles in a transaction
    // through the snapshot, and the catalog connection idles outside one.
    for setting in [
        "ALTER SYSTEM SET idle_in_transaction_session_timeout = '1s'",
        "ALTER SYSTEM SET idle_session_timeout = '1s'",
        "SELECT pg_reload_conf()",
    ] {
        services.sql(setting).await;
    }
    let config = services.write_config_source(&["public.items"], "temporary_slot = true", &[]);
    let mut daemon = start_with_the_registry_down(&services, &config).await;
    // The snapshot waits for the registry well past both timeouts.
    tokio::time::sleep(Duration::from_secs(4)).await;
    services.registry.set_unavailable(false);
    assert_eq!(snapshot_reads_once(&services, 10).await, 10);
    services
        .sql("INSERT INTO items VALUES (11, 'streamed', 1.00, NULL)")
        .await;
    assert_eq!(snapshot_reads_once(&services, 11).await, 10);
    assert!(
        daemon
            .log()
            .contains("the catalog connection was closed by the server; reopening it"),
        "{}",
        daemon.log()
    );
    daemon.stop_cleanly();
    wait_slot_gone(&services, "a clean stop").await;

    // Without a snapshot the slot's connection streams at once.
    let config = services.write_config_source(
        &["public.items"],
        "temporary_slot = true\nsnapshot = \"never\"",
        &[],
    );
    let mut daemon = Daemon::start(&config);
    services.wait_streaming(&mut daemon).await;
    assert_eq!(slot_state(&services).await, Some((true, true)));
    services
        .sql("INSERT INTO items VALUES (12, 'streamed', 1.00, NULL)")
        .await;
    let items = decode_all(
        &services,
        &services.read(ITEMS, 12, Duration::from_secs(60)).await,
    );
    let ops: Vec<&str> = items.iter().filter_map(Event::op).collect();
    assert_eq!(ops.len(), 12, "{ops:?}");
    assert_eq!(
        items
            .iter()
            .filter(|e| e.op() == Some("c"))
            .map(id_of)
            .collect::<Vec<_>>(),
        [11, 12]
    );
    daemon.stop_cleanly();
    wait_slot_gone(&services, "a clean stop").await;
}
