//! Signals and incremental snapshots against a real PostgreSQL and a real broker: a table re-read in
//! chunks while the stream goes on ends equal to the table on the topic, whatever a writer does
//! meanwhile; a SIGKILL costs a few chunks, not the table; any primary key; `additional-conditions`;
//! stop, pause and resume; a malformed signal goes to the dead-letter topic and nothing stops.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{decode_all, sluice, Daemon, Event, Services};
use serde_json::Value as Json;

const ITEMS: &str = "shop.public.items";
const SIGNALS: &str = "public.sluice_signals";

fn items(rows: i64) -> String {
    format!(
        "CREATE TABLE items (id bigint PRIMARY KEY, label text, amount numeric(12,2));
         INSERT INTO items SELECT i, 'item ' || i, (i % 1000) / 10.0 FROM generate_series(1, {rows}) AS i;
         ANALYZE items;"
    )
}

/// A config capturing `tables` with the signal table, no initial snapshot (so every row already in a
/// table reaches the topic through the incremental snapshot), and `extra` `[source]` lines.
fn config(services: &Services, tables: &[&str], extra: &str) -> std::path::PathBuf {
    let mut config = services.config(tables);
    config.source_extra = format!("snapshot = \"never\"\nsignal_table = \"{SIGNALS}\"\n{extra}");
    services.write(&config)
}

fn id_of(event: &Event) -> i64 {
    event.key.as_ref().expect("a key")["id"]
        .as_i64()
        .expect("an id")
}

fn snapshot_marker(event: &Event) -> Option<&str> {
    event.value.as_ref()?["source"]["snapshot"].as_str()
}

/// Runs `sluice snapshot ARGS -c config` and asserts it succeeded.
fn signal(config: &Path, args: &[&str]) -> String {
    let mut all = vec!["snapshot", "-c", config.to_str().unwrap()];
    all.extend_from_slice(args);
    let (status, stdout, stderr) = sluice(&all);
    assert!(status.success(), "sluice {all:?}: {stdout}{stderr}");
    stdout
}

/// The incremental snapshot's progress in the position file (None when there is none, or when every
/// table of it is done: the position after a snapshot's last rows carries it finished, once).
fn progress(services: &Services) -> Option<Json> {
    let position = services.position_file()?;
    let position = &position["position"];
    let progress = (position["kind"] == "incremental").then(|| position["snapshot"].clone())?;
    let done = progress["tables"]
        .as_array()
        .is_some_and(|tables| tables.iter().all(|t| t["done"] == true));
    (!done).then_some(progress)
}

/// Rows the stored progress says were read of `table`.
fn rows_read(services: &Services, table: &str) -> u64 {
    progress(services)
        .and_then(|p| {
            p["tables"]
                .as_array()?
                .iter()
                .find(|t| t["name"] == table)
                .and_then(|t| t["rows"].as_u64())
        })
        .unwrap_or(0)
}

/// Waits until the log says the incremental snapshot finished and the stored position no longer carries
/// it.
async fn wait_finished(services: &Services, daemon: &mut Daemon, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if daemon.log().contains("incremental snapshot finished") && progress(services).is_none() {
            return;
        }
        if let Some(status) = daemon.exited() {
            panic!("sluice exited ({status}):\n{}", daemon.log());
        }
        assert!(
            Instant::now() < deadline,
            "the incremental snapshot did not finish; progress {:?}\n{}",
            progress(services),
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `items` as PostgreSQL has it now: id → label.
async fn items_in_database(services: &Services, table: &str) -> BTreeMap<i64, Json> {
    let client = services.pg.client(common::DATABASE).await.unwrap();
    client
        .query(&format!("SELECT id, label FROM {table}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get::<_, i64>(0), Json::from(row.get::<_, String>(1))))
        .collect()
}

/// The topic compacted by key: id → label of the last event (deletes remove the key).
fn compacted(events: &[Event]) -> BTreeMap<i64, Json> {
    let mut state = BTreeMap::new();
    for event in events.iter().filter(|e| e.value.is_some()) {
        match event.after() {
            Some(after) => state.insert(id_of(event), after["label"].clone()),
            None => state.remove(&id_of(event)),
        };
    }
    state
}

/// Reads `topic` until its compacted state equals `expected` (or panics after five minutes).
async fn read_until_equal(
    services: &Services,
    topic: &str,
    expected: &BTreeMap<i64, Json>,
) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let events = decode_all(
            services,
            &services
                .read(topic, expected.len(), Duration::from_secs(120))
                .await,
        );
        let state = compacted(&events);
        if &state == expected {
            return events;
        }
        let wrong: Vec<_> = expected
            .iter()
            .filter(|(k, v)| state.get(k) != Some(v))
            .take(5)
            .map(|(k, v)| (k, v, state.get(k)))
            .collect();
        let extra: Vec<_> = state
            .keys()
            .filter(|k| !expected.contains_key(k))
            .take(5)
            .collect();
        assert!(
            Instant::now() < deadline,
            "{topic}: the topic compacted by key differs from the table: (key, table, topic) {wrong:?}; \
             keys the table does not have {extra:?}"
        );
    }
}

/// Inserts, updates and deletes random rows of `items`, one transaction each, until told to stop;
/// returns how many of each it wrote.
fn spawn_writer(
    services: &Services,
    rows: i64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<[u64; 3]> {
    let url = services.pg.url(common::DATABASE);
    tokio::spawn(async move {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let mut counts = [0u64; 3];
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next_id = rows + 1;
        while !stop.load(Ordering::Relaxed) {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let id = (seed >> 33) as i64 % rows + 1;
            let sql = match (seed >> 20) % 3 {
                0 => {
                    next_id += 1;
                    format!("INSERT INTO items VALUES ({next_id}, 'inserted {next_id}', 1.0)")
                }
                1 => format!("UPDATE items SET label = 'updated {seed}' WHERE id = {id}"),
                _ => format!("DELETE FROM items WHERE id = {id}"),
            };
            client.batch_execute(&sql).await.unwrap();
            counts[((seed >> 20) % 3) as usize] += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        counts
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_snapshot_while_a_writer_changes_rows_ends_equal_to_the_table() {
    let rows: i64 = std::env::var("SLUICE_INCREMENTAL_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let services = Services::start().await;
    services.sql(&items(rows)).await;
    let config = config(
        &services,
        &["public.items"],
        "incremental_chunk_rows = 2000",
    );
    let mut daemon = Daemon::start(&config);
    services.wait_streaming(&mut daemon).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(&services, rows, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let said = signal(&config, &["public.items"]);
    assert!(said.contains("execute-snapshot"), "{said}");
    wait_finished(&services, &mut daemon, Duration::from_secs(600)).await;
    // Keep writing a little after the end too: the stream goes on as before.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let [inserted, updated, deleted] = writer.await.unwrap();
    assert!(
        inserted > 10 && updated > 10 && deleted > 10,
        "{inserted} {updated} {deleted}"
    );

    let expected = items_in_database(&services, "items").await;
    let events = read_until_equal(&services, ITEMS, &expected).await;
    let read: BTreeSet<i64> = events
        .iter()
        .filter(|e| e.op() == Some("r"))
        .map(|e| {
            assert_eq!(snapshot_marker(e), Some("incremental"));
            id_of(e)
        })
        .collect();
    // Every row that was there before the writer began and is still there arrived by the snapshot (the
    // writer changed few of them) — the topic holds rows it never streamed.
    let untouched = expected.keys().filter(|id| **id <= rows).count();
    assert!(
        read.len() as f64 >= untouched as f64 * 0.9,
        "{} rows read, {untouched} rows never changed",
        read.len()
    );
    // Streaming went on: the writer's changes are on the topic as c/u/d events.
    for op in ["c", "u", "d"] {
        assert!(events.iter().any(|e| e.op() == Some(op)), "no `{op}` event");
    }
    services.assert_no_dead_letters().await;
    daemon.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_incremental_snapshot_is_carried_on_from_its_last_chunk() {
    let rows: i64 = 200_000;
    let services = Services::start().await;
    services.sql(&items(rows)).await;
    let config = config(&services, &["public.items"], "");
    let mut daemon = Daemon::start(&config);
    services.wait_streaming(&mut daemon).await;
    signal(&config, &["public.items"]);

    // SIGKILL once part of the table is on the broker.
    let deadline = Instant::now() + Duration::from_secs(300);
    while rows_read(&services, "public.items") < rows as u64 / 3 {
        assert!(Instant::now() < deadline, "no progress:\n{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let read_before = rows_read(&services, "public.items");
    daemon.kill();
    assert!(
        read_before < rows as u64,
        "the snapshot finished before the kill"
    );

    let mut daemon = Daemon::start(&config);
    wait_finished(&services, &mut daemon, Duration::from_secs(600)).await;
    let log = daemon.log();
    assert!(
        log.contains("incremental snapshot of table begins") && log.contains("from=Some"),
        "the second run did not carry on after a stored key:\n{log}"
    );
    let expected = items_in_database(&services, "items").await;
    let events = read_until_equal(&services, ITEMS, &expected).await;
    let reads: Vec<i64> = events
        .iter()
        .filter(|e| e.op() == Some("r"))
        .map(id_of)
        .collect();
    let distinct: BTreeSet<i64> = reads.iter().copied().collect();
    assert_eq!(distinct.len(), rows as usize);
    let twice = reads.len() - distinct.len();
    eprintln!("{twice} of {rows} rows read twice");
    assert!(
        twice < rows as usize / 10,
        "{twice} of {rows} rows were read twice"
    );
    daemon.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_primary_key_conditions_and_a_malformed_signal() {
    let services = Services::start().await;
    services
        .sql(
            "CREATE TABLE pairs (region text, n int, label text, PRIMARY KEY (region, n));
             INSERT INTO pairs SELECT r, n, r || n FROM unnest(ARRAY['eu', 'us', 'ap''s']) AS r,
               generate_series(1, 700) AS n;
             CREATE TABLE words (word text PRIMARY KEY, label text);
             INSERT INTO words SELECT md5(i::text), 'w' || i FROM generate_series(1, 1500) AS i;
             CREATE TABLE orders (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), status text);
             INSERT INTO orders (status) SELECT CASE WHEN i % 4 = 0 THEN 'new' ELSE 'old' END
               FROM generate_series(1, 400) AS i;",
        )
        .await;
    let config = config(
        &services,
        &["public.pairs", "public.words", "public.orders"],
        "incremental_chunk_rows = 250",
    );
    let mut daemon = Daemon::start(&config);
    services.wait_streaming(&mut daemon).await;

    // A malformed signal, written by hand: a dead letter, and the stream goes on.
    services
        .sql(&format!(
            "INSERT INTO {SIGNALS} (id, type, data) VALUES ('bad-1', 'execute-snapshot', '{{\"data-collections\": 7}}')"
        ))
        .await;
    signal(&config, &["public.pairs", "public.words"]);
    signal(&config, &["public.orders", "--filter", "status = 'new'"]);
    wait_finished(&services, &mut daemon, Duration::from_secs(300)).await;

    let pairs = decode_all(
        &services,
        &services
            .read("shop.public.pairs", 2100, Duration::from_secs(60))
            .await,
    );
    let keys: BTreeSet<(String, i64)> = pairs
        .iter()
        .filter(|e| e.op() == Some("r"))
        .map(|e| {
            let key = e.key.as_ref().unwrap();
            (
                key["region"].as_str().unwrap().to_string(),
                key["n"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(keys.len(), 2100, "composite key: every row once");
    assert_eq!(pairs.len(), 2100, "composite key: no row twice");
    let words = services
        .read("shop.public.words", 1500, Duration::from_secs(60))
        .await;
    assert_eq!(words.len(), 1500, "text key: every row once");
    let orders = decode_all(
        &services,
        &services
            .read("shop.public.orders", 100, Duration::from_secs(60))
            .await,
    );
    assert_eq!(orders.len(), 100, "only the rows the filter selects");
    assert!(orders.iter().all(|e| e.after().unwrap()["status"] == "new"));

    let letters = services.dead_letters(1, Duration::from_secs(30)).await;
    assert_eq!(letters[0]["stage"], "signal", "{letters:?}");
    assert!(
        letters[0]["error"]
            .as_str()
            .unwrap()
            .contains("data-collections"),
        "{letters:?}"
    );
    // The signal table's own rows are never published.
    let topics = services
        .read("shop.public.sluice_signals", 0, Duration::from_secs(2))
        .await;
    assert!(topics.is_empty());
    daemon.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_stop() {
    let rows = 60_000;
    let services = Services::start().await;
    services.sql(&items(rows)).await;
    let mut file = services.config(&["public.items"]);
    file.source_extra =
        format!("snapshot = \"never\"\nsignal_table = \"{SIGNALS}\"\nincremental_chunk_rows = 500");
    file.api_address = Some("127.0.0.1:0".into());
    let config = services.write(&file);
    let mut daemon = Daemon::start(&config);
    services.wait_streaming(&mut daemon).await;
    signal(&config, &["public.items"]);
    while rows_read(&services, "public.items") == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Streaming goes on during an incremental snapshot: ready, and the progress is exported.
    let (status, body) = common::http_get(&daemon, "/health/ready");
    assert!(status.contains("200"), "{status}: {body}");
    let (_, metrics) = common::http_get(&daemon, "/metrics");
    assert!(
        metrics.contains("sluice_incremental_snapshot_rows{table=\"public.items\"}"),
        "{metrics}"
    );
    signal(&config, &["--pause"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress(&services).is_none_or(|p| p["paused"] != true) {
        assert!(Instant::now() < deadline, "not paused:\n{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Paused: the progress stands still (a chunk already in flight may still land).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let paused_at = rows_read(&services, "public.items");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rows_read(&services, "public.items"), paused_at);
    assert!(
        paused_at < rows as u64,
        "finished before the pause took effect"
    );
    // `sluice status` shows it.
    let (status, stdout, stderr) = sluice(&["status", "-c", config.to_str().unwrap()]);
    assert!(status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("public.items") && stdout.contains("paused"),
        "{stdout}"
    );

    signal(&config, &["--resume"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while rows_read(&services, "public.items") <= paused_at {
        assert!(Instant::now() < deadline, "not resumed:\n{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(&config, &["--stop", "public.items"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress(&services).is_some() {
        assert!(Instant::now() < deadline, "not stopped:\n{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = daemon.log();
    assert!(log.contains("incremental snapshot stopped"), "{log}");
    assert!(!log.contains("incremental snapshot finished"), "{log}");
    let read = services.read(ITEMS, 0, Duration::from_secs(5)).await;
    assert!(
        !read.is_empty() && read.len() < rows as usize,
        "{} rows published of {rows}",
        read.len()
    );
    services.assert_no_dead_letters().await;
    daemon.stop_cleanly();
}

/// Keys (`id`) on `topic` once at least `count` records are there.
async fn ids_on(services: &Services, topic: &str, count: usize) -> BTreeSet<i64> {
    let events = decode_all(
        services,
        &services.read(topic, count, Duration::from_secs(60)).await,
    );
    events
        .iter()
        .filter(|e| e.after().is_some())
        .map(id_of)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_that_join_the_selection_are_snapshotted_by_themselves() {
    let services = Services::start().await;
    services
        .sql(
            "CREATE TABLE items (id bigint PRIMARY KEY, label text);
             INSERT INTO items SELECT i, 'item ' || i FROM generate_series(1, 100) AS i;
             CREATE TABLE extra_a (id bigint PRIMARY KEY, label text);
             INSERT INTO extra_a SELECT i, 'a ' || i FROM generate_series(1, 300) AS i;",
        )
        .await;
    // The first run knows its tables: with `snapshot = "never"` nothing of them is read.
    let first = config(&services, &["public.items"], "");
    let mut daemon = Daemon::start(&first);
    services.wait_streaming(&mut daemon).await;
    daemon.stop_cleanly();

    // A config change adds a table: its rows are read; the known table's are not.
    let second = config(&services, &["public.items", "public.extra_*"], "");
    let mut daemon = Daemon::start(&second);
    services.wait_streaming(&mut daemon).await;
    wait_finished(&services, &mut daemon, Duration::from_secs(120)).await;
    assert_eq!(
        ids_on(&services, "shop.public.extra_a", 300).await.len(),
        300
    );
    let items = services.read(ITEMS, 0, Duration::from_secs(2)).await;
    assert!(items.is_empty(), "the known table was read again");

    // A table added to the publication while sluice streams: its rows from before are read too.
    services
        .sql(
            "CREATE TABLE extra_b (id bigint PRIMARY KEY, label text);
             INSERT INTO extra_b SELECT i, 'b ' || i FROM generate_series(1, 200) AS i;
             ALTER PUBLICATION sluice_test ADD TABLE extra_b;
             INSERT INTO extra_b VALUES (201, 'b 201');",
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ids = ids_on(&services, "shop.public.extra_b", 201).await;
        if ids.len() == 201 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of 201 rows of the joined table:\n{}",
            ids.len(),
            daemon.log()
        );
    }
    daemon.stop_cleanly();
    // Known from now on: a restart reads neither again.
    let mut daemon = Daemon::start(&second);
    services.wait_streaming(&mut daemon).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(progress(&services).is_none());
    assert!(
        !daemon.log().contains("tables joined the selection"),
        "{}",
        daemon.log()
    );
    daemon.stop_cleanly();
}
