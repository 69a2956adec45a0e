//! Table and column selection against a real PostgreSQL and broker: excluded tables publish nothing,
//! excluded columns are in neither the schema nor the rows (snapshot or stream), key columns stay.

mod common;

use std::time::Duration;

use common::decode_all;

const CUSTOMERS: &str = "shop.public.customers";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_tables_and_columns_stay_out_of_events() {
    let (services, _, mut daemon) = common::streaming(
        "CREATE TABLE customers (id int PRIMARY KEY, name text, email text, password text);
         CREATE TABLE audit_log (id int PRIMARY KEY, entry text);
         INSERT INTO customers VALUES (1, 'Ada', 'ada@example.com', 'secret');
         INSERT INTO audit_log VALUES (1, 'created Ada');",
        &["public.*"],
        r#"exclude_tables = ["public.audit_*"]
exclude_columns = ["public.customers.email", "*.*.password", "public.customers.id"]"#,
        &[],
    )
    .await;
    services
        .sql(
            "INSERT INTO customers VALUES (2, 'Grace', 'grace@example.com', 'hunter2');
             UPDATE customers SET email = 'ada@example.org', name = 'Ada L.' WHERE id = 1;
             INSERT INTO audit_log VALUES (2, 'created Grace');",
        )
        .await;

    let events = decode_all(
        &services,
        &services.read(CUSTOMERS, 3, Duration::from_secs(60)).await,
    );
    let mut ops: Vec<&str> = events.iter().filter_map(|e| e.op()).collect();
    ops.sort_unstable();
    assert_eq!(ops, ["c", "r", "u"], "{events:?}");
    for event in &events {
        let after = event.after().expect("every event has an after image");
        let mut fields: Vec<&String> = after.as_object().unwrap().keys().collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            ["id", "name"],
            "email and password are left out, the key id stays"
        );
    }
    let update = events.iter().find(|e| e.op() == Some("u")).unwrap();
    assert_eq!(update.after().unwrap()["name"], "Ada L.");
    let schemas: Vec<String> = services
        .registry
        .schemas()
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    assert!(
        schemas
            .iter()
            .all(|s| !s.contains("email") && !s.contains("password")),
        "{schemas:?}"
    );
    assert!(
        daemon.log().contains("matches a key column"),
        "{}",
        daemon.log()
    );

    let audit = services
        .read("shop.public.audit_log", 0, Duration::from_secs(3))
        .await;
    assert!(audit.is_empty(), "an excluded table publishes nothing");
    assert!(
        !services
            .registry
            .subjects()
            .iter()
            .any(|s| s.contains("audit_log")),
        "{:?}",
        services.registry.subjects()
    );
    daemon.stop_cleanly();
}

/// The publication follows the selection: a table that leaves the config leaves the publication on the
/// next start, so the server stops decoding its changes for sluice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publication_narrows_with_the_selection() {
    let (services, _, mut daemon) = common::streaming(
        "CREATE TABLE customers (id int PRIMARY KEY, name text);
         CREATE TABLE audit_log (id int PRIMARY KEY, entry text);",
        &["public.customers", "public.audit_log"],
        "",
        &[],
    )
    .await;
    let published = || async {
        let client = services.pg.client(common::DATABASE).await.unwrap();
        let rows = client
            .query(
                "SELECT tablename::text FROM pg_publication_tables WHERE pubname = 'sluice_test' \
                 ORDER BY 1",
                &[],
            )
            .await
            .unwrap();
        rows.iter().map(|r| r.get(0)).collect::<Vec<String>>()
    };
    assert_eq!(published().await, ["audit_log", "customers"]);
    daemon.stop_cleanly();

    let config = services.write_config(&["public.customers"]);
    let mut daemon = common::Daemon::start(&config);
    services.wait_streaming(&mut daemon).await;
    assert_eq!(published().await, ["customers"]);
    assert!(
        daemon
            .log()
            .contains("dropped tables that left the selection from the publication"),
        "{}",
        daemon.log()
    );
    services
        .sql("INSERT INTO audit_log VALUES (1, 'x'); INSERT INTO customers VALUES (1, 'Ada');")
        .await;
    let events = services.read(CUSTOMERS, 1, Duration::from_secs(60)).await;
    assert_eq!(events.len(), 1);
    let audit = services
        .read("shop.public.audit_log", 0, Duration::from_secs(2))
        .await;
    assert!(audit.is_empty(), "{audit:?}");
    daemon.stop_cleanly();
}
