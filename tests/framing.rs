//! Both framings against a real broker: registry-free messages (Avro single-object encoding) that decode
//! with nothing but the schemas topic, and `sluice tail` printing either framing.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{sluice, Daemon, Services};
use serde_json::Value as Json;
use sluice::avro::{Fingerprint, SchemaRef};
use sluice_testkit::broker::Record;
use sluice_testkit::config::ConfigFile;

const SCHEMA: &str = "CREATE TABLE orders (
    id bigint PRIMARY KEY,
    amount numeric(12,2),
    placed timestamptz,
    note text
)";

/// A config for its own slot, publication and topic prefix, so that two can run side by side.
fn named(services: &Services, name: &str, registry: bool) -> ConfigFile {
    let mut config = services.config(&["public.orders"]);
    config.slot = name.into();
    config.publication = name.into();
    config.topic_prefix = name.into();
    config.positions_dir = services.dir.path().join(format!("{name}-positions"));
    config.registry_url = registry.then(|| services.registry.url());
    // One partition: the records read back in commit order.
    config.topic_partitions = 1;
    config
}

/// The schemas topic as a consumer sees it: fingerprint → schema text, later records winning.
fn schemas_by_fingerprint(records: &[Record]) -> HashMap<Fingerprint, String> {
    records
        .iter()
        .map(|r| {
            let key = std::str::from_utf8(r.key.as_deref().unwrap()).unwrap();
            let text = String::from_utf8(r.value.clone().unwrap()).unwrap();
            (Fingerprint::from_hex(key).expect("a fingerprint key"), text)
        })
        .collect()
}

/// Decodes a single-object message with the schema the schemas topic holds for its fingerprint.
fn decode_single_object(schemas: &HashMap<Fingerprint, String>, body: &[u8]) -> Json {
    let Some((SchemaRef::Fingerprint(fingerprint), datum)) = SchemaRef::split(body) else {
        panic!("not single-object encoded: {body:02x?}");
    };
    let text = schemas.get(&fingerprint).unwrap_or_else(|| {
        panic!(
            "fingerprint {} is not on the schemas topic",
            fingerprint.hex()
        )
    });
    sluice::tail::decode_datum(text, datum).expect("decodes with the schema from the topic")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_free_messages_decode_with_only_the_schemas_topic() {
    let services = Services::start().await;
    services.sql(SCHEMA).await;
    services
        .sql("INSERT INTO orders VALUES (1, 10.50, '2024-05-01 12:00:00+00', 'before sluice')")
        .await;
    let mut config = named(&services, "free", false);
    // The NaN order goes to the dead-letter topic whole, so that the dead-letter schema is published.
    config.source_extra = "unencodable_values = \"dead_letter\"".into();
    let path = services.write(&config);
    let mut daemon = Daemon::start(&path);
    services.wait_streaming_slot(&mut daemon, "free").await;

    services
        .sql(
            "INSERT INTO orders VALUES (2, 99.99, '2024-05-02 08:30:00+00', 'streamed');
             UPDATE orders SET note = 'updated' WHERE id = 1;
             ALTER TABLE orders ADD COLUMN coupon text;
             INSERT INTO orders VALUES (3, 1.00, NULL, NULL, 'SPRING');
             INSERT INTO orders VALUES (4, 'NaN', NULL, 'not a decimal', NULL);
             DELETE FROM orders WHERE id = 2;",
        )
        .await;
    let records = services
        .read("free.public.orders", 6, Duration::from_secs(60))
        .await;
    let schema_records = services
        .read("free.schemas", 4, Duration::from_secs(10))
        .await;
    let schemas = schemas_by_fingerprint(&schema_records);

    let events: Vec<Json> = records
        .iter()
        .filter_map(|r| r.value.as_deref())
        .map(|body| decode_single_object(&schemas, body))
        .collect();
    let summary: Vec<(String, i64)> = events
        .iter()
        .map(|e| {
            let row = if e["op"] == "d" {
                &e["before"]
            } else {
                &e["after"]
            };
            (
                e["op"].as_str().unwrap().to_owned(),
                row["id"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("r".into(), 1),
            ("c".into(), 2),
            ("u".into(), 1),
            ("c".into(), 3),
            ("d".into(), 2)
        ],
        "{events:#?}"
    );
    assert_eq!(events[1]["after"]["amount"], "99.99");
    assert_eq!(events[1]["after"]["placed"], 1_714_638_600_000_000i64);
    assert_eq!(
        events[3]["after"]["coupon"], "SPRING",
        "the new column's schema is on the topic too"
    );
    // Keys are single-object encoded as well, and the delete's tombstone follows it.
    let key = decode_single_object(&schemas, records[4].key.as_deref().unwrap());
    assert_eq!(key["id"], 2);
    assert!(records[5].value.is_none(), "tombstone after the delete");

    // Two table versions: two value schemas, one key schema, the dead-letter schema.
    let value_fingerprints: std::collections::HashSet<_> = records
        .iter()
        .filter_map(|r| r.value.as_deref())
        .map(|body| SchemaRef::split(body).unwrap().0)
        .collect();
    assert_eq!(value_fingerprints.len(), 2);
    let header = |r: &Record, name: &str| {
        r.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    for record in &schema_records {
        let key = std::str::from_utf8(record.key.as_deref().unwrap()).unwrap();
        assert_eq!(
            header(record, "sluice.schema.fingerprint").as_deref(),
            Some(key)
        );
        // The same schema is in the positions directory, under its fingerprint.
        let file = config
            .positions_dir
            .join("schemas")
            .join(format!("{key}.avsc"));
        assert_eq!(
            std::fs::read(&file).unwrap_or_else(|err| panic!("{}: {err}", file.display())),
            record.value.clone().unwrap()
        );
    }

    // The NaN row is a dead letter, framed the same way and readable with the schemas topic alone.
    let letters = services.read("free.dlq", 1, Duration::from_secs(30)).await;
    assert_eq!(letters.len(), 1);
    let letter = decode_single_object(&schemas, letters[0].value.as_deref().unwrap());
    assert_eq!(letter["stage"], "encode", "{letter}");
    assert_eq!(letter["collection"], "public.orders");
    let change: Json = serde_json::from_str(letter["change"].as_str().unwrap()).unwrap();
    assert_eq!(change["after"]["id"], 4);

    // A change of scale keeps the fingerprint (Parsing Canonical Form has no scale): the new version is
    // refused rather than published over the old one, and its events become dead letters.
    services
        .sql(
            "ALTER TABLE orders ALTER COLUMN amount TYPE numeric(12,4);
             INSERT INTO orders VALUES (5, 1.2345, NULL, 'new scale', NULL);",
        )
        .await;
    let letters = services.read("free.dlq", 2, Duration::from_secs(30)).await;
    assert_eq!(letters.len(), 2);
    let letter = decode_single_object(&schemas, letters[1].value.as_deref().unwrap());
    assert_eq!(letter["stage"], "register", "{letter}");
    assert!(
        letter["error"].as_str().unwrap().contains("fingerprint"),
        "{letter}"
    );
    let change: Json = serde_json::from_str(letter["change"].as_str().unwrap()).unwrap();
    assert_eq!(change["after"]["amount"], "1.2345");
    let schema_records = services
        .read("free.schemas", 4, Duration::from_secs(5))
        .await;
    assert_eq!(
        schema_records.len(),
        4,
        "nothing was published over an earlier schema"
    );

    // `sluice tail` finds the schemas on the topic by itself.
    let (status, out, err) = sluice(&["tail", "-c", path.to_str().unwrap(), "free.public.orders"]);
    assert!(status.success(), "{err}");
    let lines: Vec<Json> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6, "{out}");
    assert_eq!(lines[0]["value"]["after"]["note"], "before sluice");
    assert_eq!(lines[0]["key"]["id"], 1);
    assert_eq!(lines[3]["value"]["after"]["coupon"], "SPRING");
    assert_eq!(lines[5]["value"], Json::Null);
    let (status, out, err) = sluice(&["tail", "-c", path.to_str().unwrap()]);
    assert!(status.success(), "{err}");
    let letter: Json = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(letter["value"]["stage"], "encode", "{out}");
    assert_eq!(letter["headers"]["sluice.dlq.stage"], "encode", "{out}");
    daemon.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_the_registry_framing_and_follows() {
    let services = Services::start().await;
    services.sql(SCHEMA).await;
    let config = named(&services, "reg", true);
    let path = services.write(&config);
    let mut daemon = Daemon::start(&path);
    services.wait_streaming_slot(&mut daemon, "reg").await;
    services
        .sql("INSERT INTO orders VALUES (7, 3.25, '2024-01-01 00:00:00+00', 'framed by id')")
        .await;
    let records = services
        .read("reg.public.orders", 1, Duration::from_secs(60))
        .await;
    assert_eq!(
        records[0].value.as_deref().unwrap()[0],
        0,
        "Confluent framing"
    );

    let (status, out, err) = sluice(&["tail", "-c", path.to_str().unwrap(), "reg.public.orders"]);
    assert!(status.success(), "{err}");
    let line: Json = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(line["value"]["after"]["note"], "framed by id", "{out}");
    assert_eq!(line["value"]["after"]["amount"], "3.25");
    assert_eq!(line["key"]["id"], 7);

    // --follow prints what arrives after it started.
    let mut follow = std::process::Command::new(common::sluice_bin())
        .args([
            "tail",
            "-c",
            path.to_str().unwrap(),
            "reg.public.orders",
            "--from",
            "end",
            "--follow",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    services
        .sql("INSERT INTO orders VALUES (8, 4.50, NULL, 'followed')")
        .await;
    let line = lines_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("tail --follow printed the new event");
    let _ = follow.kill();
    let _ = follow.wait();
    let line: Json = serde_json::from_str(&line).unwrap();
    assert_eq!(line["value"]["after"]["note"], "followed", "{line}");
    daemon.stop_cleanly();
}
