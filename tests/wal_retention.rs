//! An idle capture next to a busy neighbour, against a real PostgreSQL: while the captured tables see no
//! change, another database writes about 1 GB of WAL, and sluice's slot keeps up with the server, so
//! PostgreSQL does not keep that WAL around for it.

mod common;

use std::time::{Duration, Instant};

use common::Services;
use sluice_testkit::postgres::current_wal_lsn;

/// WAL the slot may hold back once the neighbour is done: a few segments, far below what was written.
const RETAINED_LIMIT: i64 = 64 * 1024 * 1024;

async fn retained_by_slot(services: &Services) -> i64 {
    let client = services.pg.client(common::DATABASE).await.unwrap();
    client
        .query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8 \
             FROM pg_replication_slots WHERE slot_name = 'sluice_test'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tables_do_not_hold_back_wal_written_elsewhere() {
    let (services, _, mut daemon) = common::streaming(
        "CREATE TABLE notes (id int PRIMARY KEY, body text)",
        &["public.notes"],
        "",
        &[],
    )
    .await;

    services.pg.create_database("neighbour").await.unwrap();
    let neighbour = services.pg.client("neighbour").await.unwrap();
    let wal_position = || async { current_wal_lsn(&neighbour).await.unwrap() };
    let before = wal_position().await;
    // Rows of about 1 KB, stored inline and uncompressed: a million of them are about 1 GB of WAL.
    neighbour
        .batch_execute(
            "CREATE TABLE filler (id int, pad text);
             INSERT INTO filler SELECT g, repeat(md5(g::text), 30) FROM generate_series(1, 1000000) AS g;",
        )
        .await
        .unwrap();
    let after = wal_position().await;
    let written: i64 = neighbour
        .query_one(
            "SELECT pg_wal_lsn_diff($1::text::pg_lsn, $2::text::pg_lsn)::int8",
            &[&after, &before],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        written > 900 * 1024 * 1024,
        "the neighbour wrote {written} bytes of WAL"
    );

    // The server tells sluice how far it has read (keepalives); sluice, with nothing in flight,
    // acknowledges that position, and the slot lets the WAL go.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let retained = retained_by_slot(&services).await;
        if retained < RETAINED_LIMIT {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot still holds {retained} bytes of WAL two minutes after the neighbour's {written}\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The capture still works after the idle stretch.
    services
        .sql("INSERT INTO notes VALUES (1, 'still here')")
        .await;
    let notes = services
        .read("shop.public.notes", 1, Duration::from_secs(60))
        .await;
    assert_eq!(notes.len(), 1);
    daemon.stop_cleanly();
}
