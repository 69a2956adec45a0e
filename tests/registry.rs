//! The schema-registry client against the registry test double over real HTTP, with a real PostgreSQL and
//! broker: a registry that is down for 30 s is waited out with nothing lost, credentials are sent (and a
//! refusal of them is reported as such), and the record-name subject strategy names the subjects.

mod common;

use std::time::{Duration, Instant};

use common::{sluice, Daemon, Services};

const SCHEMA: &str = "CREATE TABLE orders (id bigint PRIMARY KEY, note text)";
const ORDERS: &str = "shop.public.orders";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_down_for_30_seconds_is_waited_out() {
    let services = Services::start().await;
    services.sql(SCHEMA).await;
    let mut config = services.config(&["public.orders"]);
    config.topic_partitions = 1;
    let path = services.write(&config);
    let mut daemon = Daemon::start(&path);
    services.wait_streaming(&mut daemon).await;

    // The table's schema is registered with its first event: that event has to wait.
    services.registry.set_unavailable(true);
    let down_since = Instant::now();
    services
        .sql("INSERT INTO orders VALUES (1, 'while the registry is down'), (2, 'also')")
        .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        services
            .read(ORDERS, 0, Duration::from_secs(1))
            .await
            .is_empty(),
        "nothing can be published before its schema is registered"
    );
    services
        .sql("INSERT INTO orders VALUES (3, 'queued behind them')")
        .await;
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(down_since.elapsed())).await;
    assert!(
        daemon.exited().is_none(),
        "sluice stopped:\n{}",
        daemon.log()
    );
    services.registry.set_unavailable(false);

    let events = common::decode_all(
        &services,
        &services.read(ORDERS, 3, Duration::from_secs(60)).await,
    );
    let ids: Vec<i64> = events
        .iter()
        .map(|e| e.after().unwrap()["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2, 3], "every event, once, in order");
    services.assert_no_dead_letters().await;
    assert!(
        daemon.log().contains("schema registry unavailable"),
        "the wait is logged:\n{}",
        daemon.log()
    );
    daemon.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_the_record_name_strategy_reach_the_registry() {
    let services = Services::start().await;
    services.sql(SCHEMA).await;
    // "sluice:s3cret" in base64.
    services
        .registry
        .require_authorization(Some("Basic c2x1aWNlOnMzY3JldA=="));
    let mut config = services.config(&["public.orders"]);
    config.topic_partitions = 1;
    config.avro_extra = "subject_name_strategy = \"record_name\"\n\
                         registry_username = \"sluice\"\n\
                         registry_password = \"s3cret\"\n"
        .into();
    let path = services.write(&config);

    let mut daemon = Daemon::start(&path);
    services.wait_streaming(&mut daemon).await;
    services
        .sql("INSERT INTO orders VALUES (1, 'authenticated')")
        .await;
    let events = common::decode_all(
        &services,
        &services.read(ORDERS, 1, Duration::from_secs(60)).await,
    );
    assert_eq!(events[0].after().unwrap()["note"], "authenticated");
    daemon.stop_cleanly();
    let subjects = services.registry.subjects();
    // (The dead-letter schema is registered with the first dead letter; there was none.)
    for subject in ["shop.public.orders.Envelope", "shop.public.orders.Key"] {
        assert!(
            subjects.iter().any(|s| s == subject),
            "{subject} not in {subjects:?}"
        );
    }
    assert!(
        !subjects.iter().any(|s| s.ends_with("-value")),
        "{subjects:?}"
    );

    // Wrong credentials are a configuration problem, named as such, never a reason to drop events.
    config.avro_extra = "registry_bearer_token = \"not-the-token\"\n".into();
    let path = services.write(&config);
    let (status, out, err) = sluice(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1), "{out}{err}");
    assert!(out.contains("refused the credentials (HTTP 401)"), "{out}");
    assert!(!out.contains("not-the-token"), "the token leaked: {out}");
}
