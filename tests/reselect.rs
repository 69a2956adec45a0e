//! `source.reselect_unchanged_toast` against a real PostgreSQL and broker: an update that leaves a TOASTed
//! value unchanged (REPLICA IDENTITY DEFAULT, so PostgreSQL does not send it) is published with the value
//! read from the table — and only when that value is provably the update's: a later change of the same
//! transaction, a later transaction or a delete leave it absent (null, `sluice.unchanged_toast`).

mod common;

use std::time::Duration;

use common::{decode_all, Daemon, Event, Services};

const WAIT: Duration = Duration::from_secs(60);
const TOPIC: &str = "shop.public.docs";

/// About 96 kB of hex digits (md5 of a counter from `seed`): too long and too varied to be kept inline,
/// so PostgreSQL stores it in the TOAST table.
fn body(seed: u32) -> String {
    format!(
        "(SELECT string_agg(md5(i::text), '') FROM generate_series({seed}, {seed} + 2999) AS i)"
    )
}

async fn stored_body(services: &Services, id: i32) -> String {
    let client = services.pg.client(common::DATABASE).await.unwrap();
    client
        .query_one("SELECT body FROM docs WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0)
}

fn start(services: &Services) -> Daemon {
    let mut config = services.config(&["public.docs"]);
    config.topic_partitions = 1;
    config.source_extra = "reselect_unchanged_toast = true".into();
    config.set_kafka("message.max.bytes", "8000000");
    config.api_address = Some("127.0.0.1:0".into());
    Daemon::start(&services.write(&config))
}

/// (id, n, body, reselected header, unchanged_toast header) of each update.
type Update<'e> = (i64, i64, Option<String>, Option<&'e str>, Option<&'e str>);

fn updates(events: &[Event]) -> Vec<Update<'_>> {
    events
        .iter()
        .filter(|e| e.op() == Some("u"))
        .map(|e| {
            let after = e.after().expect("a row");
            (
                after["id"].as_i64().unwrap(),
                after["n"].as_i64().unwrap(),
                after["body"].as_str().map(short),
                e.headers.get("sluice.reselected").map(String::as_str),
                e.headers.get("sluice.unchanged_toast").map(String::as_str),
            )
        })
        .collect()
}

/// A body as its start and length: enough to tell them apart, short enough for a failure message.
fn short(body: &str) -> String {
    format!("{}…({})", &body[..body.len().min(12)], body.len())
}

fn metric(metrics: &str, outcome: &str) -> u64 {
    let series = format!("sluice_reselect_total{{table=\"public.docs\",outcome=\"{outcome}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_values_are_reselected_only_when_they_are_the_updates() {
    let services = Services::start().await;
    // `spans`, an interval array stored out of line uncompressed, is printed by the session's
    // IntervalStyle: re-selecting must read it as the stream does, whatever the database's default.
    services
        .sql(&format!(
            "CREATE TABLE docs (id int PRIMARY KEY, body text, n int, spans interval[]);
             ALTER TABLE docs ALTER COLUMN spans SET STORAGE EXTERNAL;
             ALTER DATABASE {} SET IntervalStyle = 'postgres_verbose';",
            common::DATABASE
        ))
        .await;
    let mut daemon = start(&services);
    services.wait_streaming(&mut daemon).await;

    let spans = "(SELECT array_agg(make_interval(secs => i)) FROM generate_series(1, 300) AS i)";
    services
        .sql(&format!(
            "INSERT INTO docs VALUES (1, {}, 0, {spans});
             INSERT INTO docs VALUES (2, {}, 0, {spans});",
            body(1),
            body(5000)
        ))
        .await;
    let first = short(&stored_body(&services, 1).await);
    // Stored out of line: otherwise PostgreSQL would send them with every update.
    let external: bool = services
        .pg
        .client(common::DATABASE)
        .await
        .unwrap()
        .query_one(
            "SELECT pg_relation_size(reltoastrelid) > 0 FROM pg_class WHERE relname = 'docs'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(external, "the values are in the TOAST table");
    // Each transaction its own statement: a multi-statement string would run as one.
    // Re-selected: nothing changed the row after the update.
    services.sql("UPDATE docs SET n = 1 WHERE id = 1").await;
    // The body is not re-selected for the first update: the same transaction sets it afterwards. The
    // spans are, for both: neither update sets them.
    services
        .sql(&format!(
            "BEGIN;
             UPDATE docs SET n = 2 WHERE id = 1;
             UPDATE docs SET body = {} WHERE id = 1;
             COMMIT;",
            body(9000)
        ))
        .await;
    // Both re-selected: the later update leaves the values unchanged too.
    services
        .sql(
            "BEGIN;
             UPDATE docs SET n = 3 WHERE id = 1;
             UPDATE docs SET n = 4 WHERE id = 1;
             COMMIT;",
        )
        .await;
    let second = short(&stored_body(&services, 1).await);
    assert!(
        first != second,
        "the bodies differ, so a wrong one would show"
    );
    let events = decode_all(&services, &services.read(TOPIC, 7, WAIT).await);
    let both = (Some("body,spans"), None);
    let absent = (None, Some("body,spans"));
    let seen: Vec<_> = updates(&events)
        .into_iter()
        .map(|(id, n, body, r, u)| (id, n, body, (r, u)))
        .collect();
    assert_eq!(
        seen,
        [
            (1, 1, Some(first.clone()), both),
            (1, 2, None, (Some("spans"), Some("body"))),
            (1, 2, Some(second.clone()), (Some("spans"), None)),
            (1, 3, Some(second.clone()), both),
            (1, 4, Some(second.clone()), both),
        ]
    );
    // The spans as the insert published them: the stream's own form.
    let inserted = &events[0].after().unwrap()["spans"];
    assert_eq!(inserted.as_array().map(Vec::len), Some(300));
    assert_eq!(inserted[0], "PT1S", "{inserted}");
    for update in events.iter().filter(|e| e.op() == Some("u")) {
        assert_eq!(&update.after().unwrap()["spans"], inserted);
    }
    let (_, metrics) = common::http_get(&daemon, "/metrics");
    assert_eq!(metric(&metrics, "reselected"), 5, "{metrics}");
    assert_eq!(metric(&metrics, "changed"), 0, "{metrics}");
    daemon.stop_cleanly();

    // Written while sluice is stopped: by the time it reads the first update of each row, a later
    // transaction has changed the row (the body, or the row is gone); and an update made in a
    // subtransaction, whose row version carries the subtransaction's id.
    services.sql("UPDATE docs SET n = 5 WHERE id = 1").await;
    services
        .sql(&format!(
            "UPDATE docs SET body = {} WHERE id = 1",
            body(13000)
        ))
        .await;
    services.sql("UPDATE docs SET n = 1 WHERE id = 2").await;
    services.sql("DELETE FROM docs WHERE id = 2").await;
    services
        .sql("BEGIN; SAVEPOINT s; UPDATE docs SET n = 6 WHERE id = 1; RELEASE s; COMMIT;")
        .await;
    let third = short(&stored_body(&services, 1).await);
    let mut daemon = start(&services);
    let events = decode_all(&services, &services.read(TOPIC, 13, WAIT).await);
    let seen: Vec<_> = updates(&events)[5..]
        .iter()
        .map(|(id, n, body, r, u)| (*id, *n, body.clone(), (*r, *u)))
        .collect();
    assert_eq!(
        seen,
        [
            (1, 5, None, absent),
            // The savepoint's update changed the row since.
            (1, 5, Some(third), (None, Some("spans"))),
            (2, 1, None, absent),
            (1, 6, None, absent),
        ]
    );
    let (_, metrics) = common::http_get(&daemon, "/metrics");
    assert_eq!(metric(&metrics, "changed"), 3, "{metrics}");
    assert_eq!(metric(&metrics, "gone"), 1, "{metrics}");
    assert_eq!(metric(&metrics, "reselected"), 0, "{metrics}");
    services.assert_no_dead_letters().await;
    daemon.stop_cleanly();
}

/// Without the option the value stays absent, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_option_nothing_is_reselected() {
    let services = Services::start().await;
    services
        .sql("CREATE TABLE docs (id int PRIMARY KEY, body text, n int)")
        .await;
    let mut config = services.config(&["public.docs"]);
    config.topic_partitions = 1;
    config.set_kafka("message.max.bytes", "8000000");
    let mut daemon = Daemon::start(&services.write(&config));
    services.wait_streaming(&mut daemon).await;
    services
        .sql(&format!(
            "INSERT INTO docs VALUES (1, {}, 0); UPDATE docs SET n = 1 WHERE id = 1;",
            body(1)
        ))
        .await;
    let events = decode_all(&services, &services.read(TOPIC, 2, WAIT).await);
    let seen: Vec<_> = updates(&events)
        .into_iter()
        .map(|(_, _, body, r, u)| (body, r, u))
        .collect();
    assert_eq!(seen, [(None::<String>, None, Some("body"))]);
    daemon.stop_cleanly();
}
