//! End to end against a real PostgreSQL (logical replication), a real Kafka-protocol broker (tansu) and the
//! registry test double: row changes become Avro events, in commit order per key, and restarts and crashes
//! neither lose nor (after a clean stop) repeat them.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use common::{decode_all, Daemon, Event, Services, DEAD_LETTERS};
use serde_json::{json, Value as Json};
use sluice_testkit::postgres::current_wal_lsn;

const ORDERS: &str = "shop.public.orders";
const CUSTOMERS: &str = "shop.public.customers";

const SCHEMA: &str = "
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer_id int NOT NULL,
    amount numeric(12,2),
    status varchar(20),
    version int NOT NULL,
    updated_at timestamptz,
    payload jsonb
);
CREATE TABLE customers (
    id int PRIMARY KEY,
    name text NOT NULL,
    external_id uuid,
    born date,
    score double precision,
    active boolean,
    avatar bytea,
    version int NOT NULL
);";

/// A deterministic random sequence (xorshift), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the workload did to one key, in commit order: (op, the row as the event must carry it).
type History = BTreeMap<(String, i64), Vec<(char, Json)>>;

/// Generates and applies changes, remembering what each key went through.
struct Workload {
    rng: Rng,
    live: HashMap<&'static str, Vec<i64>>,
    next_id: i64,
    versions: HashMap<(&'static str, i64), i64>,
    history: History,
}

impl Workload {
    fn new(seed: u64) -> Workload {
        Workload {
            rng: Rng(seed),
            live: HashMap::new(),
            next_id: 1,
            versions: HashMap::new(),
            history: History::new(),
        }
    }

    /// One statement and the event it must produce.
    fn statement(&mut self) -> String {
        let table: &'static str = if self.rng.below(2) == 0 {
            "orders"
        } else {
            "customers"
        };
        let live = self.live.entry(table).or_default().len();
        let choice = self.rng.below(10);
        if live < 5 || choice < 4 {
            let id = self.next_id;
            self.next_id += 1;
            self.live.get_mut(table).unwrap().push(id);
            self.versions.insert((table, id), 0);
            let (sql, row) = self.row(table, id, 0, true);
            self.record(table, id, 'c', row);
            sql
        } else if choice < 8 {
            let index = self.rng.below(live as u64) as usize;
            let id = self.live[table][index];
            let version = self.versions[&(table, id)] + 1;
            self.versions.insert((table, id), version);
            let (sql, row) = self.row(table, id, version, false);
            self.record(table, id, 'u', row);
            sql
        } else {
            let index = self.rng.below(live as u64) as usize;
            let id = self.live.get_mut(table).unwrap().swap_remove(index);
            let version = self.versions[&(table, id)];
            // REPLICA IDENTITY DEFAULT: the before image of a delete carries only the key.
            self.record(table, id, 'd', json!({ "id": id, "version": version }));
            format!("DELETE FROM {table} WHERE id = {id}")
        }
    }

    fn record(&mut self, table: &str, id: i64, op: char, row: Json) {
        self.history
            .entry((table.to_owned(), id))
            .or_default()
            .push((op, row));
    }

    /// An INSERT or UPDATE with values derived from (id, version), and the row as decoded from the event.
    fn row(&mut self, table: &str, id: i64, version: i64, insert: bool) -> (String, Json) {
        let n = self.rng.below(1_000_000) as i64;
        if table == "orders" {
            let cents = n * 7 - 3_000_000;
            let amount = format!(
                "{}{}.{:02}",
                if cents < 0 { "-" } else { "" },
                cents.abs() / 100,
                cents.abs() % 100
            );
            let status = ["new", "paid", "shipped", "größe"][(n % 4) as usize];
            let micros = 1_700_000_000_000_000 + n * 1_234_567;
            let payload = format!("{{\"n\": {n}, \"tags\": [\"a\", \"b\"]}}");
            let values = format!(
                "{id}, {customer}, {amount}, '{status}', {version}, to_timestamp(0) + {micros} * interval '1 microsecond', '{payload}'",
                customer = n % 100
            );
            let sql = if insert {
                format!("INSERT INTO orders VALUES ({values})")
            } else {
                format!(
                    "UPDATE orders SET (id, customer_id, amount, status, version, updated_at, payload) = ({values}) WHERE id = {id}"
                )
            };
            let row = json!({
                "id": id, "customer_id": n % 100, "amount": amount, "status": status, "version": version,
                "updated_at": micros, "payload": payload,
            });
            (sql, row)
        } else {
            let uuid = format!("{:08x}-0000-4000-8000-{:012x}", n, id);
            let born_days = (n % 30_000) - 15_000;
            let score = (n as f64) / 8.0;
            let active = n % 2 == 0;
            let avatar = format!("{:06x}", n);
            let name = format!("customer {id} 'v{version}'");
            let values = format!(
                "{id}, '{name_sql}', '{uuid}', date '1970-01-01' + {born_days}, {score}, {active}, '\\x{avatar}', {version}",
                name_sql = name.replace('\'', "''")
            );
            let sql = if insert {
                format!("INSERT INTO customers VALUES ({values})")
            } else {
                format!(
                    "UPDATE customers SET (id, name, external_id, born, score, active, avatar, version) = ({values}) WHERE id = {id}"
                )
            };
            let row = json!({
                "id": id, "name": name, "external_id": uuid, "born": born_days, "score": score, "active": active,
                "avatar": avatar, "version": version,
            });
            (sql, row)
        }
    }

    /// `transactions` transactions of `size` statements each.
    async fn run(&mut self, services: &Services, transactions: usize, size: usize) {
        let client = services.pg.client(common::DATABASE).await.expect("connect");
        for _ in 0..transactions {
            let mut batch = String::from("BEGIN;\n");
            for _ in 0..size {
                batch.push_str(&self.statement());
                batch.push_str(";\n");
            }
            batch.push_str("COMMIT;");
            client
                .batch_execute(&batch)
                .await
                .expect("workload transaction");
        }
    }

    fn event_count(&self) -> (usize, usize) {
        let count = |table: &str| {
            self.history
                .iter()
                .filter(|((t, _), _)| t == table)
                .map(|(_, ops)| {
                    ops.iter()
                        .map(|(op, _)| if *op == 'd' { 2 } else { 1 })
                        .sum::<usize>()
                })
                .sum()
        };
        (count("orders"), count("customers"))
    }
}

/// Per key, the events in topic order: (op or 't' for a tombstone, the row the event carries).
fn per_key(events: &[Event]) -> BTreeMap<i64, Vec<(char, Json)>> {
    let mut keys: BTreeMap<i64, Vec<(char, Json)>> = BTreeMap::new();
    for event in events {
        let id = event
            .key
            .as_ref()
            .and_then(|k| k["id"].as_i64())
            .expect("every event has a key with an id");
        let entry = match event.op() {
            None => ('t', Json::Null),
            Some("d") => ('d', event.before().cloned().expect("delete has before")),
            Some(op) => (
                op.chars().next().unwrap(),
                event.after().cloned().expect("change has after"),
            ),
        };
        keys.entry(id).or_default().push(entry);
    }
    keys
}

/// The delete's before image carries only the key (REPLICA IDENTITY DEFAULT): compare id (and nothing else).
fn same_row(op: char, expected: &Json, actual: &Json) -> bool {
    if op == 'd' {
        return actual["id"] == expected["id"];
    }
    expected
        .as_object()
        .unwrap()
        .iter()
        .all(|(k, v)| &actual[k] == v)
}

/// Every key's events equal the workload's history, in order, with a tombstone after each delete.
fn assert_matches_history(history: &History, table: &str, events: &[Event]) {
    let actual = per_key(events);
    let expected: BTreeMap<i64, &Vec<(char, Json)>> = history
        .iter()
        .filter(|((t, _), _)| t == table)
        .map(|((_, id), ops)| (*id, ops))
        .collect();
    assert_eq!(actual.len(), expected.len(), "{table}: number of keys");
    for (id, ops) in expected {
        let got = &actual[&id];
        let mut got_iter = got.iter();
        for (op, row) in ops {
            let (got_op, got_row) = got_iter
                .next()
                .unwrap_or_else(|| panic!("{table} key {id}: missing events"));
            assert_eq!(
                *got_op, *op,
                "{table} key {id}: expected {ops:?}, got {got:?}"
            );
            assert!(
                same_row(*op, row, got_row),
                "{table} key {id} {op}: expected {row}, got {got_row}"
            );
            if *op == 'd' {
                let tombstone = got_iter.next().map(|(op, _)| *op);
                assert_eq!(
                    tombstone,
                    Some('t'),
                    "{table} key {id}: a delete must be followed by a tombstone"
                );
            }
        }
        assert!(
            got_iter.next().is_none(),
            "{table} key {id}: extra events {got:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_changes_arrive_in_commit_order_per_key() {
    let services = Services::start().await;
    services.sql(SCHEMA).await;
    let config = services.write_config(&["public.orders", "public.customers"]);
    let mut daemon = Daemon::start(&config);
    services.wait_streaming(&mut daemon).await;

    let mut workload = Workload::new(0x5eed);
    workload.run(&services, 100, 100).await;
    let (orders, customers) = workload.event_count();
    assert_eq!(
        workload.history.values().map(Vec::len).sum::<usize>(),
        10_000
    );

    let order_events = decode_all(
        &services,
        &services
            .read(ORDERS, orders, Duration::from_secs(120))
            .await,
    );
    let customer_events = decode_all(
        &services,
        &services
            .read(CUSTOMERS, customers, Duration::from_secs(60))
            .await,
    );
    assert_matches_history(&workload.history, "orders", &order_events);
    assert_matches_history(&workload.history, "customers", &customer_events);

    // The envelope's source block and the position headers.
    let first = order_events.iter().find(|e| e.op() == Some("c")).unwrap();
    let source = &first.value.as_ref().unwrap()["source"];
    assert_eq!(source["connector"], "postgresql");
    assert_eq!(source["db"], "shop");
    assert_eq!(source["schema"], "public");
    assert_eq!(source["table"], "orders");
    assert_eq!(source["name"], "shop");
    assert_eq!(source["snapshot"], "false");
    assert!(source["txId"].as_i64().unwrap() > 0);
    assert!(source["lsn"].as_i64().unwrap() > 0);
    assert!(first.headers.contains_key("sluice.lsn") && first.headers.contains_key("sluice.txid"));
    // Subjects follow the topic-name strategy.
    let subjects = services.registry.subjects();
    for subject in [
        format!("{ORDERS}-key"),
        format!("{ORDERS}-value"),
        format!("{CUSTOMERS}-value"),
    ] {
        assert!(subjects.contains(&subject), "{subject} not in {subjects:?}");
    }

    // The slot's confirmed position moves once the broker has everything.
    let client = services.pg.client(common::DATABASE).await.unwrap();
    let end = current_wal_lsn(&client).await.unwrap();
    let confirmed_past = |lsn: &str| common::lsn(lsn) >= common::lsn(&end) - 1_000_000;
    let mut confirmed = None;
    for _ in 0..100 {
        confirmed = services.confirmed_flush().await;
        if confirmed.as_deref().is_some_and(confirmed_past) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        confirmed.as_deref().is_some_and(confirmed_past),
        "slot confirmed {confirmed:?}, WAL at {end}"
    );
    daemon.stop_cleanly();
}

/// Final state per key from a topic: the last event's after image, or gone after a delete/tombstone.
fn final_state(events: &[Event]) -> BTreeMap<i64, Json> {
    let mut state = BTreeMap::new();
    for (id, ops) in per_key(events) {
        if let Some(('c' | 'u', row)) = ops.last() {
            state.insert(id, row.clone());
        }
    }
    state
}

fn expected_final_state(history: &History, table: &str) -> BTreeMap<i64, Json> {
    history
        .iter()
        .filter(|((t, _), _)| t == table)
        .filter_map(|((_, id), ops)| match ops.last() {
            Some(('d', _)) | None => None,
            Some((_, row)) => Some((*id, row.clone())),
        })
        .collect()
}

fn assert_same_state(table: &str, expected: &BTreeMap<i64, Json>, actual: &BTreeMap<i64, Json>) {
    assert_eq!(
        expected.keys().collect::<Vec<_>>(),
        actual.keys().collect::<Vec<_>>(),
        "{table}: live keys"
    );
    for (id, row) in expected {
        assert!(
            same_row('u', row, &actual[id]),
            "{table} key {id}: expected {row}, got {}",
            actual[id]
        );
    }
}

/// Every (key, op, version) the workload committed, as events must show it at least once.
fn committed_changes(history: &History, table: &str) -> HashSet<(i64, char, i64)> {
    history
        .iter()
        .filter(|((t, _), _)| t == table)
        .flat_map(|((_, id), ops)| {
            ops.iter()
                .map(move |(op, row)| (*id, *op, row["version"].as_i64().unwrap_or(-1)))
        })
        .collect()
}

fn observed_changes(events: &[Event]) -> Vec<(i64, char, i64)> {
    events
        .iter()
        .filter_map(|e| {
            let id = e.key.as_ref()?["id"].as_i64()?;
            let op = e.op()?.chars().next()?;
            let version = if op == 'd' {
                -1
            } else {
                e.after()?["version"].as_i64()?
            };
            Some((id, op, version))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_nothing() {
    let services = Services::start().await;
    services.sql(SCHEMA).await;
    let config = services.write_config(&["public.orders", "public.customers"]);
    let mut daemon = Daemon::start(&config);
    services.wait_streaming(&mut daemon).await;

    let mut workload = Workload::new(0xdead);
    workload.run(&services, 20, 100).await;
    // Kill while the first 2,000 changes are still being published.
    tokio::time::sleep(Duration::from_millis(300)).await;
    daemon.kill();
    workload.run(&services, 20, 100).await;

    let mut daemon = Daemon::start(&config);
    services.wait_streaming(&mut daemon).await;
    workload.run(&services, 10, 100).await;

    let (orders, customers) = workload.event_count();
    let order_events = decode_all(
        &services,
        &services
            .read(ORDERS, orders, Duration::from_secs(120))
            .await,
    );
    let customer_events = decode_all(
        &services,
        &services
            .read(CUSTOMERS, customers, Duration::from_secs(60))
            .await,
    );
    for (table, events) in [("orders", &order_events), ("customers", &customer_events)] {
        assert_same_state(
            table,
            &expected_final_state(&workload.history, table),
            &final_state(events),
        );
        let observed: HashSet<_> = observed_changes(events)
            .into_iter()
            .map(|(id, op, v)| (id, op, if op == 'd' { -1 } else { v }))
            .collect();
        for (id, op, version) in committed_changes(&workload.history, table) {
            let version = if op == 'd' { -1 } else { version };
            assert!(
                observed.contains(&(id, op, version)),
                "{table}: committed change ({id}, {op}, {version}) is missing"
            );
        }
    }
    daemon.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_restart_repeat_nothing() {
    let services = Services::start().await;
    services.sql(SCHEMA).await;
    let config = services.write_config(&["public.orders", "public.customers"]);
    let mut daemon = Daemon::start(&config);
    services.wait_streaming(&mut daemon).await;

    let mut workload = Workload::new(0xbeef);
    workload.run(&services, 10, 100).await;
    // Stop under load: the stop waits for the open transaction and for the broker.
    let writer = {
        let url = services.pg.url(common::DATABASE);
        tokio::spawn(async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            for i in 0..200 {
                client
                    .batch_execute(&format!(
                        "INSERT INTO orders VALUES ({}, 1, 1.00, 'bulk', 0, now(), '{{}}')",
                        1_000_000 + i
                    ))
                    .await
                    .unwrap();
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = daemon.terminate(Duration::from_secs(60));
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM must end sluice cleanly:\n{}",
        daemon.log()
    );
    writer.await.unwrap();
    workload.run(&services, 5, 100).await;

    let mut daemon = Daemon::start(&config);
    services.wait_streaming(&mut daemon).await;
    workload.run(&services, 5, 100).await;

    let (orders, customers) = workload.event_count();
    let order_events = decode_all(
        &services,
        &services
            .read(ORDERS, orders + 200, Duration::from_secs(120))
            .await,
    );
    let customer_events = decode_all(
        &services,
        &services
            .read(CUSTOMERS, customers, Duration::from_secs(60))
            .await,
    );
    let bulk: Vec<&Event> = order_events
        .iter()
        .filter(|e| e.after().is_some_and(|a| a["status"] == "bulk"))
        .collect();
    assert_eq!(
        bulk.len(),
        200,
        "every row written around the stop arrives exactly once"
    );
    let workload_orders: Vec<Event> = order_events
        .into_iter()
        .filter(|e| e.key.as_ref().unwrap()["id"].as_i64().unwrap() < 1_000_000)
        .collect();
    // Exactly the history: nothing lost, nothing repeated.
    assert_matches_history(&workload.history, "orders", &workload_orders);
    assert_matches_history(&workload.history, "customers", &customer_events);
    daemon.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_that_do_not_fit_go_to_the_dead_letter_topic_and_the_stream_goes_on() {
    let services = Services::start().await;
    services.sql(SCHEMA).await;
    // The whole row to the dead-letter topic (tests/unencodable.rs has the default, a null and a copy).
    let config = services.write_config_source(
        &["public.orders"],
        "unencodable_values = \"dead_letter\"",
        &[],
    );
    let mut daemon = Daemon::start(&config);
    services.wait_streaming(&mut daemon).await;

    services
        .sql(
            "INSERT INTO orders VALUES (1, 1, 10.50, 'ok', 0, now(), '{}');
             INSERT INTO orders VALUES (2, 1, 'NaN', 'nan', 0, now(), '{}');
             INSERT INTO orders VALUES (3, 1, 11.25, 'ok', 0, now(), '{}');",
        )
        .await;
    let events = decode_all(
        &services,
        &services.read(ORDERS, 2, Duration::from_secs(60)).await,
    );
    let ids: Vec<i64> = events
        .iter()
        .map(|e| e.after().unwrap()["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![1, 3], "the rows around the bad one are published");
    assert_eq!(events[1].after().unwrap()["amount"], "11.25");

    let letters = services
        .read(DEAD_LETTERS, 1, Duration::from_secs(30))
        .await;
    assert_eq!(letters.len(), 1, "exactly one dead letter");
    let letter = services.dead_letter(&letters[0]);
    assert_eq!(letter["stage"], "encode");
    assert!(
        letter["error"].as_str().unwrap().contains("NaN"),
        "{letter}"
    );
    assert_eq!(letter["collection"], "public.orders");
    assert_eq!(letter["topic"], ORDERS);
    assert_eq!(letter["sluice"]["name"], "shop");
    assert_eq!(letter["key"]["id"], 2);
    assert_eq!(letter["change"]["op"], "c");
    assert_eq!(letter["change"]["after"]["id"], 2);
    assert_eq!(letter["change"]["after"]["amount"], "NaN");
    assert!(letter["source"]["lsn"].as_str().unwrap().contains('/'));
    let stage = letters[0]
        .headers
        .iter()
        .find(|(k, _)| k == "sluice.dlq.stage")
        .map(|(_, v)| v.clone());
    assert_eq!(stage.as_deref(), Some(&b"encode"[..]));

    // The dead letter is acknowledged like any event: a clean restart does not send it again.
    daemon.stop_cleanly();
    let mut daemon = Daemon::start(&config);
    services.wait_streaming(&mut daemon).await;
    services
        .sql("INSERT INTO orders VALUES (4, 1, 1.00, 'after restart', 0, now(), '{}')")
        .await;
    let events = services.read(ORDERS, 3, Duration::from_secs(60)).await;
    assert_eq!(events.len(), 3);
    assert_eq!(
        services
            .read(DEAD_LETTERS, 1, Duration::from_secs(5))
            .await
            .len(),
        1
    );
    daemon.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_the_registry_refuses_sends_events_to_the_dead_letter_topic() {
    let services = Services::start().await;
    services.sql(SCHEMA).await;
    let config = services.write_config(&["public.orders"]);
    services
        .registry
        .reject_subjects_starting_with(Some("shop.public.orders"));
    let mut daemon = Daemon::start(&config);
    services.wait_streaming(&mut daemon).await;
    services
        .sql("INSERT INTO orders VALUES (1, 1, 10.50, 'ok', 0, now(), '{}')")
        .await;

    let letter = services
        .dead_letters(1, Duration::from_secs(30))
        .await
        .remove(0);
    assert_eq!(letter["stage"], "register");
    assert!(
        letter["error"]
            .as_str()
            .unwrap()
            .contains("shop.public.orders-"),
        "{letter}"
    );
    daemon.stop_cleanly();
}
