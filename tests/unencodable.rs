//! `source.unencodable_values` against a real PostgreSQL and broker: a row with a value that has no Avro
//! encoding (a numeric NaN under exact decimals, a timestamp past Avro's range) is published with that
//! value null, only dead-lettered, or both, in streaming and in the snapshot; the snapshot's `last`
//! marker reaches the broker when its last row does not; and arrays PostgreSQL holds in another shape than
//! declared are published, not dead-lettered.

mod common;

use std::time::Duration;

use common::{decode_all, Daemon, Event, Services};
use serde_json::{json, Value as Json};

const WAIT: Duration = Duration::from_secs(60);
const TOPIC: &str = "shop.public.t";
const TABLE: &str =
    "CREATE TABLE t (id int PRIMARY KEY, amount numeric(10,2), at timestamp, note text)";
/// Row 1 has two values without an encoding; row 2 none.
const ROWS: &str = "INSERT INTO t VALUES (1, 'NaN', '294276-12-31 23:59:59.999999', 'kept');
                    INSERT INTO t VALUES (2, 1.50, '2024-05-01 12:00:00', 'fine');";

/// The services with table `t`, `rows` written before sluice starts (the snapshot reads them), and sluice
/// running with `source` lines; the metrics endpoint on.
async fn started(rows: &str, source: &str, contract: Option<Json>) -> (Services, Daemon) {
    let services = Services::start().await;
    services.sql(TABLE).await;
    services.sql(rows).await;
    let mut config = services.config(&["public.t"]);
    config.topic_partitions = 1;
    config.source_extra = source.to_owned();
    config.api_address = Some("127.0.0.1:0".into());
    std::fs::create_dir_all(config.contracts_dir()).unwrap();
    if let Some(contract) = contract {
        let path = config.contracts_dir().join(format!("{TOPIC}.avsc"));
        std::fs::write(path, contract.to_string()).unwrap();
    }
    let mut daemon = Daemon::start(&services.write(&config));
    services.wait_streaming(&mut daemon).await;
    (services, daemon)
}

/// [`ROWS`] read by the snapshot (ids 1, 2), then the same rows streamed (ids 11, 12).
async fn snapshot_then_stream(source: &str) -> (Services, Daemon) {
    let (services, daemon) = started(ROWS, source, None).await;
    services
        .sql(&ROWS.replace("(1,", "(11,").replace("(2,", "(12,"))
        .await;
    (services, daemon)
}

async fn events(services: &Services, min: usize) -> Vec<Event> {
    decode_all(services, &services.read(TOPIC, min, WAIT).await)
}

fn after(event: &Event) -> &Json {
    event.after().expect("a row")
}

/// Each event's row id and `source.snapshot` marker.
fn markers(events: &[Event]) -> Vec<(Json, Json)> {
    events
        .iter()
        .map(|e| {
            (
                after(e)["id"].clone(),
                e.value.as_ref().unwrap()["source"]["snapshot"].clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_and_dead_letter_publishes_the_row_and_keeps_the_original() {
    let (services, mut daemon) = snapshot_then_stream("").await;
    let published = events(&services, 4).await;
    assert_eq!(published.len(), 4, "{published:?}");
    for (event, id) in [(&published[0], 1), (&published[2], 11)] {
        let row = after(event);
        assert_eq!(row["id"], id);
        assert!(row["amount"].is_null() && row["at"].is_null(), "{row}");
        assert_eq!(row["note"], "kept", "the row's other values are published");
        assert_eq!(event.headers["sluice.unencodable"], "amount,at");
    }
    assert_eq!(after(&published[1])["amount"], "1.50");
    assert!(!published[1].headers.contains_key("sluice.unencodable"));
    // The snapshot's last row is row 2; it carries the marker.
    let markers: Vec<&Json> = published[..2]
        .iter()
        .map(|e| &e.value.as_ref().unwrap()["source"]["snapshot"])
        .collect();
    assert_eq!(markers, [&json!("true"), &json!("last")]);

    let letters = services.dead_letters(2, WAIT).await;
    for (letter, id) in letters.iter().zip([1, 11]) {
        assert_eq!(letter["stage"], "encode", "{letter}");
        let original = &letter["change"]["after"];
        assert_eq!(original["id"], id);
        assert_eq!(
            original["amount"], "NaN",
            "the value as PostgreSQL sent it: {letter}"
        );
        let at = original["at"].to_string();
        assert!(at.contains("294276-12-31 23:59:59.999999"), "{at}");
        let reason = letter["error"].as_str().unwrap();
        assert!(
            reason.contains("after.amount") && reason.contains("after.at"),
            "{reason}"
        );
    }
    let (_, metrics) = common::http_get(&daemon, "/metrics");
    for column in ["amount", "at"] {
        let series =
            format!("sluice_unencodable_values_total{{table=\"public.t\",column=\"{column}\"}} 2");
        assert!(metrics.contains(&series), "no {series} in\n{metrics}");
    }
    daemon.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_keeps_the_whole_row_off_the_topic() {
    let (services, mut daemon) = snapshot_then_stream("unencodable_values = \"dead_letter\"").await;
    let published = events(&services, 2).await;
    let ids: Vec<&Json> = published.iter().map(|e| &after(e)["id"]).collect();
    assert_eq!(ids, [&json!(2), &json!(12)]);
    let letters = services.dead_letters(2, WAIT).await;
    let ids: Vec<&Json> = letters
        .iter()
        .map(|l| &l["change"]["after"]["id"])
        .collect();
    assert_eq!(ids, [&json!(1), &json!(11)]);
    daemon.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_publishes_the_row_without_a_dead_letter() {
    let (services, mut daemon) = snapshot_then_stream("unencodable_values = \"null\"").await;
    let published = events(&services, 4).await;
    let ids: Vec<&Json> = published.iter().map(|e| &after(e)["id"]).collect();
    assert_eq!(ids, [&json!(1), &json!(2), &json!(11), &json!(12)]);
    assert!(after(&published[2])["amount"].is_null());
    services.assert_no_dead_letters().await;
    daemon.stop_cleanly();
}

/// The snapshot's last row goes to the dead-letter topic (its value has no encoding and the row is kept
/// whole; or it breaks a contract): the row before it is published again, marked `last`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_marker_survives_a_dead_lettered_last_row() {
    // Row 3, the snapshot's last (written last), has a value without an encoding.
    let rows = "INSERT INTO t VALUES (2, 1.50, '2024-05-01 12:00:00', 'fine');
                INSERT INTO t VALUES (3, 'NaN', NULL, 'kept');";
    let (services, mut daemon) = started(rows, "unencodable_values = \"dead_letter\"", None).await;
    let published = events(&services, 2).await;
    let seen = markers(&published);
    assert_eq!(seen, [(json!(2), json!("true")), (json!(2), json!("last"))]);
    assert_eq!(
        services.dead_letters(1, WAIT).await[0]["change"]["after"]["id"],
        3
    );
    daemon.stop_cleanly();

    // A contract that the last row breaks (its note is null), in the default mode.
    let contract = json!({"type": "record", "name": "Value", "fields": [
        {"name": "id", "type": "int"},
        {"name": "note", "type": "string"},
    ]});
    let rows =
        "INSERT INTO t VALUES (1, 1.00, NULL, 'a'), (2, 2.00, NULL, 'b'), (3, 3.00, NULL, NULL);";
    let (services, mut daemon) = started(rows, "", Some(contract)).await;
    let published = events(&services, 3).await;
    let seen = markers(&published);
    assert_eq!(
        seen,
        [
            (json!(1), json!("true")),
            (json!(2), json!("true")),
            (json!(2), json!("last"))
        ]
    );
    assert_eq!(services.dead_letters(1, WAIT).await[0]["stage"], "validate");
    daemon.stop_cleanly();
}

/// No snapshot row reaches the topic (the only row is dead-lettered): an end record does, an `op = "r"`
/// envelope without a row, marked `last`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_record_marks_a_snapshot_none_of_whose_rows_was_published() {
    let rows = "INSERT INTO t VALUES (3, 'NaN', NULL, 'kept');";
    let (services, mut daemon) = started(rows, "unencodable_values = \"dead_letter\"", None).await;
    services
        .sql("INSERT INTO t VALUES (4, 4.00, NULL, 'streamed')")
        .await;
    let published = events(&services, 2).await;
    assert_eq!(published.len(), 2, "{published:?}");
    let end = published[0].value.as_ref().unwrap();
    assert_eq!(end["op"], "r", "{end}");
    assert!(end["after"].is_null() && end["before"].is_null(), "{end}");
    assert_eq!(end["source"]["snapshot"], "last");
    assert_eq!(end["source"]["table"], "t");
    assert!(
        published[0].key.is_none(),
        "the end record has no row, so no key"
    );
    assert_eq!(after(&published[1])["id"], 4);
    assert_eq!(
        services.dead_letters(1, WAIT).await[0]["change"]["after"]["id"],
        3
    );
    daemon.stop_cleanly();
}

/// PostgreSQL does not hold array values to the declared dimensions, and prints lower bounds other than
/// 1: such values are published nested as the column declares, with their bounds in a header — in every
/// mode, since nothing about them lacks an encoding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrays_of_other_dimensions_and_bounds_are_published_with_their_bounds() {
    for mode in ["null_and_dead_letter", "dead_letter", "null"] {
        arrays_are_published(mode).await;
    }
}

async fn arrays_are_published(mode: &str) {
    let services = Services::start().await;
    // A composite holding an array, and the old row sent whole (its arrays' bounds too).
    services
        .sql(
            "CREATE TYPE pair AS (xs int[]);
             CREATE TABLE m (id int PRIMARY KEY, a int[], b int[][], c pair);
             ALTER TABLE m REPLICA IDENTITY FULL;
             INSERT INTO m VALUES (1, '{{1,2},{3,4}}', '{5,6}', NULL),
                                  (2, '[0:1]={7,8}', '{{9}}', ROW('[0:1]={1,2}'));",
        )
        .await;
    let mut config = services.config(&["public.m"]);
    config.topic_partitions = 1;
    config.source_extra = format!("unencodable_values = \"{mode}\"");
    let mut daemon = Daemon::start(&services.write(&config));
    services.wait_streaming(&mut daemon).await;
    services
        .sql(
            "INSERT INTO m VALUES (11, '{{1,2},{3,4}}', '{5,6}', NULL),
                                  (12, '[0:1]={7,8}', '{{9}}', ROW('[0:1]={1,2}'));
             UPDATE m SET a = '[2:3][1:1]={{1},{2}}', c = NULL WHERE id = 12;",
        )
        .await;
    let published = decode_all(&services, &services.read("shop.public.m", 5, WAIT).await);
    assert_eq!(published.len(), 5, "{published:?}");
    let bounds = |event: &Event| -> Json {
        serde_json::from_str(&event.headers["sluice.array_bounds"]).unwrap()
    };
    for (event, id) in [(&published[0], 1), (&published[2], 11)] {
        let row = after(event);
        assert_eq!(row["id"], id);
        assert_eq!(row["a"], json!([1, 2, 3, 4]), "outer dimensions merged");
        assert_eq!(row["b"], json!([[5, 6]]), "wrapped to the declared depth");
        assert_eq!(
            bounds(event),
            json!({"after": {"a": "[1:2][1:2]", "b": "[1:2]"}})
        );
    }
    for (event, id) in [(&published[1], 2), (&published[3], 12)] {
        let row = after(event);
        assert_eq!(row["id"], id);
        assert_eq!((&row["a"], &row["b"]), (&json!([7, 8]), &json!([[9]])));
        assert_eq!(row["c"], json!({"xs": [1, 2]}));
        assert_eq!(
            bounds(event),
            json!({"after": {"a": "[0:1]", "c.xs": "[0:1]"}}),
            "b is as declared"
        );
    }
    let update = &published[4];
    assert_eq!(after(update)["a"], json!([1, 2]));
    assert_eq!(
        bounds(update),
        json!({"before": {"a": "[0:1]", "c.xs": "[0:1]"}, "after": {"a": "[2:3][1:1]"}})
    );
    services.assert_no_dead_letters().await;
    daemon.stop_cleanly();
}
