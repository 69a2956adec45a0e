//! `[[transforms]]` against a real PostgreSQL and broker: each transform alone, and a chain of them, on
//! what arrives on the topics and the dead-letter topic.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{decode_all, Daemon, Event, Services};
use serde_json::{json, Value as Json};
use sha2::{Digest, Sha256};

const WAIT: Duration = Duration::from_secs(60);

/// The services with `schema` applied and sluice streaming `tables` through `transforms`.
async fn streaming_through(
    schema: &str,
    tables: &[&str],
    source: &str,
    transforms: &str,
) -> (Services, Daemon) {
    streaming_with_contracts(schema, tables, source, transforms, &[]).await
}

/// As [`streaming_through`], with contracts: (topic, reader schema).
async fn streaming_with_contracts(
    schema: &str,
    tables: &[&str],
    source: &str,
    transforms: &str,
    contracts: &[(&str, Json)],
) -> (Services, Daemon) {
    let services = Services::start().await;
    services.sql(schema).await;
    let mut config = services.config(tables);
    // One partition: the tests compare the order of events of different keys.
    config.topic_partitions = 1;
    config.source_extra = source.to_owned();
    config.transforms = transforms.to_owned();
    std::fs::create_dir_all(config.contracts_dir()).unwrap();
    for (topic, contract) in contracts {
        let path = config.contracts_dir().join(format!("{topic}.avsc"));
        std::fs::write(path, contract.to_string()).unwrap();
    }
    let path = services.write(&config);
    let mut daemon = Daemon::start(&path);
    services.wait_streaming(&mut daemon).await;
    (services, daemon)
}

async fn events(services: &Services, topic: &str, min: usize) -> Vec<Event> {
    decode_all(services, &services.read(topic, min, WAIT).await)
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_tables_share_one_topic_with_unique_keys() {
    let (services, mut daemon) = streaming_through(
        "CREATE TABLE orders_1 (id int PRIMARY KEY, amount int);
         CREATE TABLE orders_2 (id int PRIMARY KEY, amount int, note text);
         CREATE TABLE orders_3 (id int PRIMARY KEY, amount text);",
        &["public.orders_*"],
        "",
        r#"[[transforms]]
type = "route"
match = 'shop\.public\.orders_\d+'
replace = "shop.public.orders"
"#,
    )
    .await;
    services
        .sql(
            "INSERT INTO orders_1 VALUES (1, 10);
             INSERT INTO orders_2 VALUES (1, 20, 'second shard');
             INSERT INTO orders_3 VALUES (1, 'thirty');
             INSERT INTO orders_1 VALUES (2, 11);",
        )
        .await;
    let routed = events(&services, "shop.public.orders", 3).await;
    assert_eq!(routed.len(), 3, "{routed:?}");
    let mut keys: Vec<String> = routed
        .iter()
        .map(|e| e.key.as_ref().unwrap().to_string())
        .collect();
    keys.sort();
    let expected = [
        json!({"id": 1, "__table": "public.orders_1"}),
        json!({"id": 1, "__table": "public.orders_2"}),
        json!({"id": 2, "__table": "public.orders_1"}),
    ];
    assert_eq!(keys, expected.map(|k| k.to_string()));
    let second = routed
        .iter()
        .find(|e| e.key.as_ref().unwrap()["__table"] == "public.orders_2");
    assert_eq!(second.unwrap().after().unwrap()["note"], "second shard");
    // The shards' own topics get nothing.
    assert!(services
        .read("shop.public.orders_1", 0, Duration::from_secs(2))
        .await
        .is_empty());
    // orders_3's amount is text where the others' is an int: its rows cannot share the topic.
    let letter = services.dead_letters(1, WAIT).await.remove(0);
    assert_eq!(letter["stage"], "transform", "{letter}");
    assert_eq!(letter["topic"], "shop.public.orders", "{letter}");
    let reason = letter["error"].as_str().unwrap();
    assert!(
        reason.starts_with("transforms[0] (route): ")
            && reason.contains("public.orders_3")
            && reason.contains("cannot share"),
        "{reason}"
    );
    daemon.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_sees_an_updates_before_and_a_failing_condition_is_a_dead_letter() {
    let (services, mut daemon) = streaming_through(
        "CREATE TABLE tickets (id int PRIMARY KEY, status text, weight int);
         ALTER TABLE tickets REPLICA IDENTITY FULL;",
        &["public.tickets"],
        "",
        r#"[[transforms]]
type = "filter"
topics = ["shop.public.tick*"]
condition = 'op != "u" || (before.status == "open" && 10 / after.weight > 0)'
"#,
    )
    .await;
    services
        .sql(
            "INSERT INTO tickets VALUES (1, 'open', 1), (2, 'closed', 1), (3, 'open', 0);
             UPDATE tickets SET status = 'closed' WHERE id = 1;
             UPDATE tickets SET status = 'reopened' WHERE id = 2;
             UPDATE tickets SET status = 'closed' WHERE id = 3;
             INSERT INTO tickets VALUES (4, 'after', 1);",
        )
        .await;
    let published = events(&services, "shop.public.tickets", 5).await;
    let seen: Vec<(String, i64)> = published
        .iter()
        .map(|e| {
            (
                e.op().unwrap().to_owned(),
                e.after().unwrap()["id"].as_i64().unwrap(),
            )
        })
        .collect();
    // Updates from `open` pass; the one from `closed` is dropped; the division by zero is a dead letter.
    assert_eq!(
        seen,
        [("c", 1), ("c", 2), ("c", 3), ("u", 1), ("c", 4)].map(|(op, id)| (op.to_owned(), id))
    );
    let letter = services.dead_letters(1, WAIT).await.remove(0);
    assert_eq!(letter["stage"], "transform", "{letter}");
    let reason = letter["error"].as_str().unwrap();
    assert!(reason.starts_with("transforms[0] (filter): "), "{reason}");
    assert_eq!(letter["change"]["after"]["id"], 3, "{letter}");
    daemon.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masks_hash_null_and_redact_and_dead_letters_carry_masked_values() {
    let (services, mut daemon) = streaming_through(
        "CREATE TABLE customers (id int PRIMARY KEY, email text, ssn text, phone text, note text);
         CREATE TABLE staff (id int PRIMARY KEY, ssn text);",
        &["public.customers", "public.staff"],
        "",
        r#"[[transforms]]
type = "filter"
topics = ["shop.public.customers"]
condition = 'after.note != "boom" || after.email + 1 == 2'

[[transforms]]
type = "mask"
columns = ["public.customers.email"]
with = "hash"
salt = "pepper"

[[transforms]]
type = "mask"
columns = ["*.*.ssn"]
with = "redact"

[[transforms]]
type = "mask"
columns = ["public.customers.phone"]
with = "null"
"#,
    )
    .await;
    services
        .sql(
            "INSERT INTO customers VALUES (1, 'ada@example.com', '123-45-6789', '555', 'fine');
             INSERT INTO customers VALUES (2, 'ada@example.com', NULL, '556', 'twin');
             INSERT INTO customers VALUES (3, 'bob@example.com', '987-65-4321', '557', 'boom');
             INSERT INTO staff VALUES (1, '111-22-3333');",
        )
        .await;
    let customers = events(&services, "shop.public.customers", 2).await;
    assert_eq!(customers.len(), 2, "{customers:?}");
    let hash = sha256_hex("pepperada@example.com");
    for event in &customers {
        let after = event.after().unwrap();
        assert_eq!(after["email"], hash.as_str(), "{after}");
        assert!(after["phone"].is_null(), "{after}");
    }
    assert_eq!(customers[0].after().unwrap()["ssn"], "****");
    assert!(
        customers[1].after().unwrap()["ssn"].is_null(),
        "a null stays null"
    );
    let staff = events(&services, "shop.public.staff", 1).await;
    assert_eq!(staff[0].after().unwrap()["ssn"], "****");

    // The filter before the masks failed on row 3: its dead letter is masked all the same.
    let letter = services.dead_letters(1, WAIT).await.remove(0);
    assert_eq!(letter["stage"], "transform", "{letter}");
    let after = &letter["change"]["after"];
    assert_eq!(
        after["email"],
        sha256_hex("pepperbob@example.com").as_str(),
        "{letter}"
    );
    assert_eq!(after["ssn"], "****", "{letter}");
    let text = letter.to_string();
    assert!(
        !text.contains("bob@example.com") && !text.contains("987-65"),
        "{text}"
    );

    // The masked column's schema is a string.
    let schema = services
        .registry
        .schemas()
        .into_iter()
        .map(|(_, text)| text)
        .find(|text| text.contains("customers") && text.contains("Envelope"))
        .expect("the customers envelope is registered");
    let schema: Json = serde_json::from_str(&schema).unwrap();
    let value = &schema["fields"][0]["type"][1]["fields"];
    let email = value
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "email")
        .unwrap();
    assert_eq!(email["type"], json!(["null", "string"]), "{email}");
    daemon.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwrap_flattens_changes_in_both_delete_modes() {
    let (services, mut daemon) = streaming_through(
        "CREATE TABLE items_t (id int PRIMARY KEY, name text);
         CREATE TABLE items_r (id int PRIMARY KEY, name text);",
        &["public.items_t", "public.items_r"],
        "",
        r#"[[transforms]]
type = "unwrap"
topics = ["shop.public.items_t"]
add_fields = ["op", "table", "source.ts_ms"]

[[transforms]]
type = "unwrap"
topics = ["shop.public.items_r"]
add_fields = ["op"]
delete_handling = "rewrite"
"#,
    )
    .await;
    for table in ["items_t", "items_r"] {
        services
            .sql(&format!(
                "INSERT INTO {table} VALUES (1, 'one');
                 UPDATE {table} SET name = 'uno' WHERE id = 1;
                 DELETE FROM {table} WHERE id = 1;"
            ))
            .await;
    }
    let tombstoned = events(&services, "shop.public.items_t", 3).await;
    assert_eq!(tombstoned.len(), 3, "{tombstoned:?}");
    let insert = tombstoned[0].value.as_ref().unwrap();
    assert_eq!(insert["id"], 1);
    assert_eq!(insert["name"], "one");
    assert_eq!(insert["__op"], "c");
    assert_eq!(insert["__table"], "items_t");
    assert!(
        insert["__source_ts_ms"].as_i64().unwrap() > 1_600_000_000_000,
        "{insert}"
    );
    assert!(
        insert.get("after").is_none() && insert.get("__deleted").is_none(),
        "{insert}"
    );
    assert_eq!(tombstoned[1].value.as_ref().unwrap()["name"], "uno");
    assert!(
        tombstoned[2].value.is_none(),
        "a delete is its tombstone alone"
    );
    assert_eq!(tombstoned[2].key, Some(json!({"id": 1})));

    let rewritten = events(&services, "shop.public.items_r", 4).await;
    assert_eq!(rewritten.len(), 4, "{rewritten:?}");
    let values: Vec<(Json, Json, Json)> = rewritten[..3]
        .iter()
        .map(|e| {
            let v = e.value.as_ref().unwrap();
            (v["name"].clone(), v["__op"].clone(), v["__deleted"].clone())
        })
        .collect();
    assert_eq!(
        values,
        [
            (json!("one"), json!("c"), json!("false")),
            (json!("uno"), json!("u"), json!("false")),
            // The key columns of the row before the delete (REPLICA IDENTITY DEFAULT).
            (json!(null), json!("d"), json!("true")),
        ]
    );
    assert_eq!(rewritten[2].value.as_ref().unwrap()["id"], 1);
    assert!(
        rewritten[3].value.is_none(),
        "the rewritten delete is followed by its tombstone"
    );
    services.assert_no_dead_letters().await;
    daemon.stop_cleanly();
}

const OUTBOX: &str = "CREATE TABLE outbox (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    aggregatetype text NOT NULL,
    aggregateid text NOT NULL,
    type text NOT NULL,
    payload jsonb
)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_rows_become_events_in_commit_order_per_aggregate() {
    let (services, mut daemon) = streaming_through(
        OUTBOX,
        &["public.outbox"],
        "",
        r#"[[transforms]]
type = "outbox"
table = "public.outbox"
"#,
    )
    .await;
    // 1,000 rows in 100 transactions, over two aggregate types and 20 aggregates.
    let mut sql = String::new();
    for tx in 0..100 {
        sql.push_str("BEGIN;");
        for n in 0..10 {
            let seq = tx * 10 + n;
            let kind = if seq % 3 == 0 { "customer" } else { "order" };
            sql.push_str(&format!(
                "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
                 VALUES ('{kind}', '{}', '{kind}_changed', '{{\"seq\": {seq}}}');",
                seq % 20
            ));
        }
        sql.push_str("COMMIT;");
    }
    sql.push_str("UPDATE outbox SET type = 'edited'; DELETE FROM outbox;");
    services.sql(&sql).await;

    let customers = events(&services, "shop.outbox.customer", 334).await;
    let orders = events(&services, "shop.outbox.order", 666).await;
    assert_eq!((customers.len(), orders.len()), (334, 666));
    let mut last_seq: HashMap<(&str, String), i64> = HashMap::new();
    let all = customers.iter().map(|e| ("customer", e));
    for (kind, event) in all.chain(orders.iter().map(|e| ("order", e))) {
        let aggregate = event.key.as_ref().unwrap().as_str().unwrap().to_owned();
        let value = event.value.as_ref().unwrap();
        let payload: Json = serde_json::from_str(value["payload"].as_str().unwrap()).unwrap();
        let seq = payload["seq"].as_i64().unwrap();
        assert_eq!(
            seq % 20,
            aggregate.parse::<i64>().unwrap(),
            "keyed by aggregateid"
        );
        if let Some(previous) = last_seq.insert((kind, aggregate.clone()), seq) {
            assert!(previous < seq, "{kind} {aggregate}: {seq} after {previous}");
        }
        assert_eq!(event.headers["type"], format!("{kind}_changed"));
        assert_eq!(
            event.headers["id"].len(),
            36,
            "the id header is the row's uuid"
        );
    }
    // Neither the rows themselves nor their updates and deletes are published.
    assert!(services
        .read("shop.public.outbox", 0, Duration::from_secs(2))
        .await
        .is_empty());
    services.assert_no_dead_letters().await;
    daemon.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_every_transform_on_one_config() {
    let user_event =
        json!({"type": "record", "name": "UserEvent", "fields": [{"name": "id", "type": "int"}]});
    let (services, mut daemon) = streaming_with_contracts(
        &format!(
            "{OUTBOX};
             CREATE TABLE users_eu (id int PRIMARY KEY, email text, active boolean);
             CREATE TABLE users_us (id int PRIMARY KEY, email text, active boolean);"
        ),
        &["public.outbox", "public.users_*"],
        "capture_messages = true",
        r#"[[transforms]]
type = "outbox"
table = "public.outbox"
route_topic = "events.${routedByValue}"

[[transforms]]
type = "filter"
topics = ["shop.public.users_*"]
condition = "after == null || after.active || after.email + 1 == 2"

[[transforms]]
type = "route"
match = 'shop\.public\.users_(eu|us)'
replace = "shop.users"

[[transforms]]
type = "mask"
topics = ["shop.users"]
columns = ["public.users_*.email"]
with = "hash"
salt = "${PATH}"

[[transforms]]
type = "unwrap"
topics = ["shop.users"]
add_fields = ["table"]
"#,
        // The user events' payloads typed by a contract.
        &[("events.user", user_event)],
    )
    .await;
    services
        .sql(
            "INSERT INTO users_eu VALUES (1, 'eu@example.com', true), (2, 'off@example.com', false);
             INSERT INTO users_us VALUES (1, 'us@example.com', true);
             INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
               VALUES ('user', '7', 'signed_up', '{\"id\": 7}');
             SELECT pg_logical_emit_message(true, 'audit', 'hello');",
        )
        .await;
    let users = events(&services, "shop.users", 2).await;
    assert_eq!(
        users.len(),
        2,
        "the inactive user is not published: {users:?}"
    );
    let salt = std::env::var("PATH").unwrap();
    for (event, table, email) in [
        (&users[0], "users_eu", "eu@example.com"),
        (&users[1], "users_us", "us@example.com"),
    ] {
        let value = event.value.as_ref().unwrap();
        assert_eq!(value["__table"], table);
        assert_eq!(
            value["email"],
            sha256_hex(&format!("{salt}{email}")).as_str()
        );
        assert_eq!(
            event.key.as_ref().unwrap()["__table"],
            format!("public.{table}")
        );
    }
    let signed_up = events(&services, "events.user", 1).await;
    assert_eq!(signed_up[0].key, Some(json!("7")));
    assert_eq!(
        signed_up[0].value,
        Some(json!({"id": 7})),
        "typed by its contract"
    );
    let audit = events(&services, "events.audit", 1).await;
    assert_eq!(audit[0].value.as_ref().unwrap()["payload"], "hello");
    // The filter failed on the inactive user (a string plus an int) before the route: its dead letter is
    // meant for the routed topic, masked by the mask of that topic, and its reason names no value.
    let letter = services.dead_letters(1, WAIT).await.remove(0);
    assert_eq!(letter["topic"], "shop.users", "{letter}");
    let email = sha256_hex(&format!("{salt}off@example.com"));
    assert_eq!(
        letter["change"]["after"]["email"],
        email.as_str(),
        "{letter}"
    );
    assert!(!letter.to_string().contains("off@example.com"), "{letter}");
    daemon.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_names_the_transform_key_at_fault() {
    let services = Services::start().await;
    services
        .sql(&format!(
            "{OUTBOX}; CREATE TABLE customers (id int PRIMARY KEY, email text)"
        ))
        .await;
    let mut config = services.config(&["public.customers", "public.outbox"]);
    config.transforms = r#"[[transforms]]
type = "route"
match = "shop.(unclosed"
replace = "x"

[[transforms]]
type = "filter"
condition = "after.id =="

[[transforms]]
type = "mask"
columns = ["public.customers.email"]
with = "redact"
salt = "unused"

[[transforms]]
type = "unwrap"
delete_handling = "rewrite"
add_fields = ["op", "ts"]
"#
    .into();
    let path = services.write(&config);
    let (status, stdout, stderr) =
        common::sluice(&["validate", "--offline", "-c", path.to_str().unwrap()]);
    assert!(!status.success(), "{stdout}");
    for (key, said) in [
        ("transforms[0].match", "is not a regular expression"),
        ("transforms[1].condition", ""),
        ("transforms[2].salt", "has no effect"),
        ("transforms[3].add_fields", "`ts`"),
    ] {
        let line = stderr
            .lines()
            .find(|line| line.contains(&format!("`{key}`")))
            .unwrap_or_else(|| panic!("no line for {key}: {stderr}"));
        assert!(line.contains(said) && line.contains("line "), "{line}");
    }

    // Online, the columns are compared with the tables.
    config.transforms = r#"[[transforms]]
type = "mask"
columns = ["public.customers.emial"]
with = "redact"

[[transforms]]
type = "outbox"
table = "public.outbox"
payload_column = "body"

[[transforms]]
type = "filter"
topics = ["shop.public.customers"]
condition = 'after.emial != ""'
"#
    .into();
    let path = services.write(&config);
    let (status, stdout, stderr) = common::sluice(&["validate", "-c", path.to_str().unwrap()]);
    assert!(!status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("FAIL transforms[0].columns: `public.customers.emial` names no column"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAIL transforms[1].payload_column: public.outbox has no column `body`"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "FAIL transforms[2].condition: reads `emial`, a column of none of public.customers"
        ),
        "{stdout}"
    );
}
