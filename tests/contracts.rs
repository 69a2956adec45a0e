//! Contracts and the dead-letter stages they add: against a real PostgreSQL and broker, an event that breaks
//! its topic's contract (stage `validate`) and a value the source cannot represent (stage `decode`) each
//! land in the dead-letter topic once, with the documented fields, while conforming events flow on; a
//! restart repeats none of them. `sluice validate` compares contracts with the live tables.

mod common;

use std::time::Duration;

use common::{sluice, Daemon, Services, DEAD_LETTERS};
use serde_json::Value as Json;

const SCHEMA: &str = "CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer_id int,
    amount numeric(12,2),
    status text,
    tags int[]
)";

const ORDERS: &str = "shop.public.orders";

/// Every order has a customer and an amount of at most 8 digits; status may be missing.
const CONTRACT: &str = r#"{
  "type": "record", "name": "Value", "namespace": "contracts.orders",
  "fields": [
    {"name": "id", "type": "long"},
    {"name": "customer_id", "type": "int"},
    {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 8, "scale": 2}},
    {"name": "status", "type": ["null", "string"], "default": null}
  ]
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_that_break_a_contract_become_dead_letters_and_the_rest_flow() {
    let services = Services::start().await;
    services.sql(SCHEMA).await;
    let mut config = services.config(&["public.orders"]);
    config.api_address = Some("127.0.0.1:0".into());
    // Rows with values that have no encoding would go to the dead-letter topic whole.
    config.source_extra = "unencodable_values = \"dead_letter\"".into();
    std::fs::create_dir_all(config.contracts_dir()).unwrap();
    std::fs::write(
        config.contracts_dir().join(format!("{ORDERS}.avsc")),
        CONTRACT,
    )
    .unwrap();
    let path = services.write(&config);

    // The contract reads the table: validate passes, noting the columns the table allows to be NULL.
    let (status, out, err) = sluice(&["validate", "-c", path.to_str().unwrap()]);
    assert!(status.success(), "{out}{err}");
    assert!(
        out.contains("note") && out.contains("after.customer_id"),
        "{out}"
    );
    assert!(!out.contains("FAIL"), "{out}");

    let mut daemon = Daemon::start(&path);
    services.wait_streaming(&mut daemon).await;
    services
        .sql(
            "INSERT INTO orders VALUES (1, 10, 12.50, 'ok', NULL);
             INSERT INTO orders VALUES (2, 10, NULL, 'no amount', NULL);
             INSERT INTO orders VALUES (3, NULL, 5.00, 'no customer', NULL);
             INSERT INTO orders VALUES (4, 11, 1234567.00, 'too large for the contract', NULL);
             INSERT INTO orders VALUES (5, 11, 7.25, 'two-dimensional tags', '{{1,2},{3,4}}');
             INSERT INTO orders VALUES (6, 12, 99.00, NULL, '{1,2}');
             DELETE FROM orders WHERE id = 6;",
        )
        .await;

    // Orders 1, 5 (its two-dimensional tags nested as the column declares) and 6, the delete of 6 and
    // its tombstone.
    let records = services.read(ORDERS, 5, Duration::from_secs(60)).await;
    let events: Vec<_> = common::decode_all(&services, &records)
        .into_iter()
        .filter(|e| e.value.is_some())
        .collect();
    let ops: Vec<(String, i64)> = events
        .iter()
        .map(|e| {
            let row = e.after().or(e.before()).unwrap();
            (e.op().unwrap().to_owned(), row["id"].as_i64().unwrap())
        })
        .collect();
    ops.iter()
        .for_each(|(_, id)| assert!([1, 5, 6].contains(id), "{ops:?}"));
    assert_eq!(
        ops.len(),
        4,
        "three creates and the delete (a delete has no after to hold to the contract): {ops:?}"
    );
    let tagged = events
        .iter()
        .find(|e| e.after().unwrap()["id"] == 5)
        .unwrap();
    assert_eq!(
        tagged.after().unwrap()["tags"],
        serde_json::json!([1, 2, 3, 4])
    );
    assert_eq!(
        tagged.headers["sluice.array_bounds"],
        r#"{"after":{"tags":"[1:2][1:2]"}}"#
    );

    // One dead letter per failed change.
    let letters = services.dead_letters(3, Duration::from_secs(60)).await;
    let by_id = |id: i64| {
        letters
            .iter()
            .find(|l| l["key"]["id"] == id)
            .unwrap_or_else(|| panic!("no dead letter for order {id}: {letters:#?}"))
    };
    for (id, field, words) in [
        (2, "after.amount", "is null"),
        (3, "after.customer_id", "is null"),
        (4, "after.amount", "precision 8"),
    ] {
        let letter = by_id(id);
        assert_eq!(letter["stage"], "validate", "{letter}");
        let error = letter["error"].as_str().unwrap();
        assert!(
            error.contains(field)
                && error.contains(words)
                && error.contains(&format!("{ORDERS}.avsc")),
            "order {id}: {error}"
        );
        assert_eq!(letter["topic"], ORDERS);
        assert_eq!(letter["collection"], "public.orders");
        assert_eq!(letter["op"], "c");
        assert_eq!(letter["change"]["after"]["id"], id);
        assert_eq!(letter["source"]["connector"], "postgresql");
        assert_eq!(letter["source"]["db"], "shop");
        assert!(letter["source"]["lsn"].as_str().unwrap().contains('/'));
        assert!(letter["source"]["txid"].as_i64().unwrap() > 0);
        assert!(letter["failed_at"].as_i64().unwrap() > 1_700_000_000_000);
        assert_eq!(letter["sluice"]["version"], env!("CARGO_PKG_VERSION"));
    }

    // The metrics count what was published and what went to the dead-letter topic, by stage and table.
    let (status, metrics) = common::http_get(&daemon, "/metrics");
    assert!(status.contains("200"), "{status}");
    for line in [
        "sluice_events_total{table=\"public.orders\",op=\"c\"} 3",
        "sluice_events_total{table=\"public.orders\",op=\"d\"} 1",
        "sluice_dead_letters_total{stage=\"validate\",table=\"public.orders\"} 3",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing `{line}` in:\n{metrics}"
        );
    }
    assert!(common::http_get(&daemon, "/health/live").0.contains("200"));

    // Acknowledged like any event: a restart neither repeats nor loses a dead letter.
    daemon.stop_cleanly();
    let mut daemon = Daemon::start(&path);
    services.wait_streaming(&mut daemon).await;
    services
        .sql(
            "INSERT INTO orders VALUES (7, 13, NULL, 'after the restart', NULL);
             INSERT INTO orders VALUES (8, 13, 3.00, 'after the restart', NULL);",
        )
        .await;
    let records = services.read(ORDERS, 6, Duration::from_secs(60)).await;
    assert_eq!(records.len(), 6, "order 8 arrived once after the restart");
    let letters = services
        .read(DEAD_LETTERS, 4, Duration::from_secs(60))
        .await;
    let ids: Vec<Json> = letters
        .iter()
        .map(|r| services.dead_letter(r)["key"]["id"].clone())
        .collect();
    assert_eq!(letters.len(), 4, "only order 7 was added: {ids:?}");
    daemon.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_reports_the_fields_a_contract_cannot_read() {
    let services = Services::start().await;
    services.sql(SCHEMA).await;
    let config = services.config(&["public.orders"]);
    std::fs::create_dir_all(config.contracts_dir()).unwrap();
    let broken = CONTRACT.replace(r#""scale": 2"#, r#""scale": 3"#).replace(
        r#"{"name": "status", "type": ["null", "string"], "default": null}"#,
        r#"{"name": "region", "type": "string"}"#,
    );
    std::fs::write(
        config.contracts_dir().join(format!("{ORDERS}.avsc")),
        broken,
    )
    .unwrap();
    std::fs::write(
        config.contracts_dir().join("shop.public.gone.avsc"),
        CONTRACT,
    )
    .unwrap();
    let path = services.write(&config);

    let (status, out, err) = sluice(&["validate", "-c", path.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1), "{out}{err}");
    for expected in [
        "`after.amount`: decimal scale 2 in the table, 3 in the contract",
        "`after.region`: is not in the table and has no default in the contract",
        "no captured table publishes to topic `shop.public.gone`",
    ] {
        assert!(out.contains(expected), "missing `{expected}` in:\n{out}");
    }
    // Offline, only the files are checked.
    let (status, out, err) = sluice(&["validate", "--offline", "-c", path.to_str().unwrap()]);
    assert!(status.success(), "{out}{err}");
}
