//! sluice's topics as Debezium's consumers read them: Confluent's Python `AvroDeserializer` (the code a
//! Python consumer runs) decodes every message against the registry, and each column type's schema
//! carries the Kafka Connect properties that Confluent's `AvroConverter` turns into the Connect type
//! Debezium's own schema has (the table in [`CONNECT`]).

mod common;

use std::time::Duration;

use common::{Daemon, Services};
use serde_json::{json, Value as Json};
use sluice::avro::SchemaRef;

const TOPIC: &str = "shop.public.t";

const SCHEMA: &str = "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
    CREATE TABLE t (id int PRIMARY KEY, small smallint NOT NULL, amount numeric(10,2), score numeric,
      price money, day date, at timestamp, at_tz timestamptz, clock time, clock_tz timetz,
      span interval, u uuid, m mood, doc jsonb, x xml, tags text[], bin bytea, flag boolean,
      big bigint, ratio float8, at3 timestamp(3), clock3 time(3));";

const ROW: &str = "(1, 7, 12.50, 3.25, 4.10, '2024-05-01', '2024-05-01 12:00:00.000001',
    '2024-05-01 12:00:00+02', '12:34:56.789', '12:34:56+05:30', '1 day 2 hours',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'happy', '{\"a\": [1, 2]}', '<a x=\"1\">t</a>',
    '{x,NULL}', '\\x00ff', true, 9007199254740993, 0.5, '2024-05-01 12:00:00.123', '12:34:56.789')";

/// Per column: the Avro type, its `logicalType`, and the Connect name, version and parameters — what
/// Debezium's schema for the column has where the two agree on the value (`null`: no Connect name; the
/// converter makes a plain Connect type of the Avro type).
const CONNECT: &[Expected] = &[
    ("small", "int", None, None, None),
    (
        "amount",
        "bytes",
        Some("decimal"),
        Some("org.apache.kafka.connect.data.Decimal"),
        Some(r#"{"scale":"2","connect.decimal.precision":"10"}"#),
    ),
    (
        "score",
        "record",
        None,
        Some("io.debezium.data.VariableScaleDecimal"),
        None,
    ),
    (
        "price",
        "bytes",
        Some("decimal"),
        Some("org.apache.kafka.connect.data.Decimal"),
        Some(r#"{"scale":"2","connect.decimal.precision":"19"}"#),
    ),
    (
        "day",
        "int",
        Some("date"),
        Some("org.apache.kafka.connect.data.Date"),
        None,
    ),
    (
        "at",
        "long",
        Some("local-timestamp-micros"),
        Some("io.debezium.time.MicroTimestamp"),
        None,
    ),
    (
        "at_tz",
        "long",
        Some("timestamp-micros"),
        Some("io.debezium.time.MicroTimestamp"),
        None,
    ),
    (
        "clock",
        "long",
        Some("time-micros"),
        Some("io.debezium.time.MicroTime"),
        None,
    ),
    ("clock_tz", "string", None, None, None),
    (
        "span",
        "string",
        None,
        Some("io.debezium.time.Interval"),
        None,
    ),
    (
        "u",
        "string",
        Some("uuid"),
        Some("io.debezium.data.Uuid"),
        None,
    ),
    (
        "m",
        "string",
        None,
        Some("io.debezium.data.Enum"),
        Some(r#"{"allowed":"sad,ok,happy"}"#),
    ),
    ("doc", "string", None, Some("io.debezium.data.Json"), None),
    ("x", "string", None, Some("io.debezium.data.Xml"), None),
    ("tags", "array", None, None, None),
    ("bin", "bytes", None, None, None),
    ("flag", "boolean", None, None, None),
    ("big", "long", None, None, None),
    ("ratio", "double", None, None, None),
    (
        "at3",
        "long",
        Some("local-timestamp-micros"),
        Some("io.debezium.time.MicroTimestamp"),
        None,
    ),
    (
        "clock3",
        "long",
        Some("time-micros"),
        Some("io.debezium.time.MicroTime"),
        None,
    ),
];

/// [`CONNECT`] with `[avro] logical_types = "debezium"`: Debezium 3's schema for each column with its
/// default settings, as Confluent's converter writes it (logical types only for Connect's own).
const DEBEZIUM: &[Expected] = &[
    ("small", "int", None, None, None),
    (
        "amount",
        "bytes",
        Some("decimal"),
        Some("org.apache.kafka.connect.data.Decimal"),
        Some(r#"{"scale":"2","connect.decimal.precision":"10"}"#),
    ),
    (
        "score",
        "record",
        None,
        Some("io.debezium.data.VariableScaleDecimal"),
        None,
    ),
    (
        "price",
        "bytes",
        Some("decimal"),
        Some("org.apache.kafka.connect.data.Decimal"),
        Some(r#"{"scale":"2"}"#),
    ),
    ("day", "int", None, Some("io.debezium.time.Date"), None),
    (
        "at",
        "long",
        None,
        Some("io.debezium.time.MicroTimestamp"),
        None,
    ),
    (
        "at3",
        "long",
        None,
        Some("io.debezium.time.Timestamp"),
        None,
    ),
    (
        "at_tz",
        "string",
        None,
        Some("io.debezium.time.ZonedTimestamp"),
        None,
    ),
    (
        "clock",
        "long",
        None,
        Some("io.debezium.time.MicroTime"),
        None,
    ),
    ("clock3", "int", None, Some("io.debezium.time.Time"), None),
    (
        "clock_tz",
        "string",
        None,
        Some("io.debezium.time.ZonedTime"),
        None,
    ),
    (
        "span",
        "long",
        None,
        Some("io.debezium.time.MicroDuration"),
        None,
    ),
    ("u", "string", None, Some("io.debezium.data.Uuid"), None),
    (
        "m",
        "string",
        None,
        Some("io.debezium.data.Enum"),
        Some(r#"{"allowed":"sad,ok,happy"}"#),
    ),
    ("doc", "string", None, Some("io.debezium.data.Json"), None),
    ("x", "string", None, Some("io.debezium.data.Xml"), None),
    ("tags", "array", None, None, None),
    ("bin", "bytes", None, None, None),
    ("flag", "boolean", None, None, None),
    ("big", "long", None, None, None),
    ("ratio", "double", None, None, None),
];

/// Column, Avro type, `logicalType`, `connect.name`, `connect.parameters`.
type Expected = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    Option<&'static str>,
);

/// The services with `t` holding one row (read by the snapshot) and sluice streaming a second, with
/// `avro` lines in its config.
async fn published(avro: &str) -> (Services, Daemon) {
    let services = Services::start().await;
    services
        .sql(&format!("{SCHEMA} INSERT INTO t VALUES {ROW};"))
        .await;
    let mut config = services.config(&["public.t"]);
    config.topic_partitions = 1;
    config.avro_extra = avro.to_owned();
    let mut daemon = Daemon::start(&services.write(&config));
    services.wait_streaming(&mut daemon).await;
    services
        .sql(&format!(
            "INSERT INTO t VALUES {};",
            ROW.replacen("(1,", "(2,", 1)
        ))
        .await;
    (services, daemon)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluents_python_deserializer_reads_every_message() {
    let (services, mut daemon) = published("").await;
    let bootstrap = services.broker.bootstrap();
    let registry = services.registry.url();
    let out = sluice_testkit::python::run("read_avro.py", &[&bootstrap, &registry, TOPIC, "2"])
        .unwrap_or_else(|err| panic!("{err:#}"));
    let messages: Vec<Json> = out
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(messages.len(), 2, "{out}");
    for (message, (id, snapshot)) in messages.iter().zip([(1, "last"), (2, "false")]) {
        assert!(message.get("error").is_none(), "{message}");
        assert_eq!(message["key"], json!({"id": id}));
        let value = &message["value"];
        assert_eq!(value["op"], if id == 1 { "r" } else { "c" });
        assert_eq!(value["source"]["snapshot"], snapshot);
        assert!(value["ts_us"].as_i64().unwrap() > 1_700_000_000_000_000);
        assert_eq!(
            value["ts_ns"].as_i64().unwrap(),
            value["ts_us"].as_i64().unwrap() * 1000
        );
        let row = &value["after"];
        // Each value as the deserializer hands it to Python: Avro's logical types applied.
        for (column, expected) in [
            ("small", json!(7)),
            ("amount", json!({"decimal": "12.50"})),
            ("score", json!({"scale": 2, "value": {"bytes": "AUU="}})),
            ("price", json!({"decimal": "4.10"})),
            ("day", json!({"date": "2024-05-01"})),
            ("at", json!({"datetime": "2024-05-01T12:00:00.000001"})),
            ("at_tz", json!({"datetime": "2024-05-01T10:00:00+00:00"})),
            ("clock", json!({"time": "12:34:56.789000"})),
            ("clock_tz", json!("12:34:56+05:30")),
            ("span", json!("P1DT2H")),
            ("u", json!({"uuid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"})),
            ("m", json!("happy")),
            ("doc", json!("{\"a\": [1, 2]}")),
            ("x", json!("<a x=\"1\">t</a>")),
            ("tags", json!(["x", null])),
            ("bin", json!({"bytes": "AP8="})),
            ("flag", json!(true)),
            ("big", json!(9_007_199_254_740_993_i64)),
            ("ratio", json!(0.5)),
            ("at3", json!({"datetime": "2024-05-01T12:00:00.123000"})),
            ("clock3", json!({"time": "12:34:56.789000"})),
        ] {
            assert_eq!(row[column], expected, "{column} in {row}");
        }
    }
    daemon.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_column_type_carries_the_connect_properties_debeziums_has() {
    let (services, mut daemon) = published("").await;
    let envelope = value_schema(&services).await;
    assert_eq!(envelope["connect.name"], format!("{TOPIC}.Envelope"));
    assert_eq!(envelope["connect.version"], 2);
    let fields = envelope["fields"].as_array().unwrap();
    for name in ["ts_ms", "ts_us", "ts_ns"] {
        assert_eq!(
            field(fields, name)["type"],
            json!(["null", "long"]),
            "{name}"
        );
    }
    let source = field(fields, "source")["type"].clone();
    let source_fields = source["fields"].as_array().unwrap();
    let snapshot = field(source_fields, "snapshot")["type"].clone();
    assert_eq!(snapshot["connect.name"], "io.debezium.data.Enum");
    assert_eq!(
        snapshot["connect.parameters"]["allowed"],
        "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"
    );
    for name in ["ts_us", "ts_ns", "origin_lsn"] {
        assert_eq!(
            field(source_fields, name)["type"],
            json!(["null", "long"]),
            "{name}"
        );
    }

    let value = field(fields, "before")["type"][1].clone();
    assert_eq!(value["connect.name"], format!("{TOPIC}.Value"));
    let columns = value["fields"].as_array().unwrap();
    assert!(
        columns.iter().all(|c| c["type"][0] == "null"),
        "every column optional"
    );
    check_columns(columns, CONNECT, |f| f["type"][1].clone());
    let small = field(columns, "small")["type"][1].clone();
    assert_eq!(small["connect.type"], "int16");
    daemon.stop_cleanly();
}

/// The registered value schema of the first message on the topic.
async fn value_schema(services: &Services) -> Json {
    let records = services.read(TOPIC, 2, Duration::from_secs(60)).await;
    let body = records[0].value.as_deref().expect("a value");
    let Some((SchemaRef::RegistryId(id), _)) = SchemaRef::split(body) else {
        panic!("not Confluent-framed")
    };
    let text = services
        .registry
        .schemas()
        .into_iter()
        .find_map(|(i, text)| (i == id).then_some(text))
        .expect("the value schema is registered");
    serde_json::from_str(&text).unwrap()
}

fn field(fields: &[Json], name: &str) -> Json {
    fields
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no field {name}"))
        .clone()
}

/// Each column's declared type (`declared` takes it out of its field) against `expected`.
fn check_columns(columns: &[Json], expected: &[Expected], declared: impl Fn(&Json) -> Json) {
    let mut mismatches = Vec::new();
    for &(column, avro, logical, name, parameters) in expected {
        let declared = declared(&field(columns, column));
        let (kind, declared) = match &declared {
            Json::String(kind) => (kind.clone(), json!({})),
            other => (other["type"].as_str().unwrap().to_owned(), other.clone()),
        };
        let seen = (
            kind.as_str(),
            declared["logicalType"].as_str(),
            declared["connect.name"].as_str(),
            declared.get("connect.parameters").map(|p| p.to_string()),
        );
        let wanted = (
            avro,
            logical,
            name,
            parameters.map(|p| serde_json::from_str::<Json>(p).unwrap().to_string()),
        );
        if seen.0 != wanted.0 || seen.1 != wanted.1 || seen.2 != wanted.2 || seen.3 != wanted.3 {
            mismatches.push(format!("{column}: {seen:?}, wanted {wanted:?}"));
        }
        if name.is_some() {
            assert_eq!(declared["connect.version"], 1, "{column}");
        }
    }
    assert!(mismatches.is_empty(), "{mismatches:#?}");
}

const DEBEZIUM_MODE: &str = "logical_types = \"debezium\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_mode_schemas_are_debeziums() {
    let (services, mut daemon) = published(DEBEZIUM_MODE).await;
    let envelope = value_schema(&services).await;
    let fields = envelope["fields"].as_array().unwrap();
    let names: Vec<&str> = fields.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "before",
            "after",
            "source",
            "transaction",
            "op",
            "ts_ms",
            "ts_us",
            "ts_ns"
        ]
    );
    let source = field(fields, "source")["type"].clone();
    assert_eq!(source["name"], "io.debezium.connector.postgresql.Source");
    let snapshot = field(source["fields"].as_array().unwrap(), "snapshot");
    assert_eq!(snapshot["type"][1], "null", "optional, defaulting to false");
    assert_eq!(snapshot["default"], "false");
    assert_eq!(
        field(fields, "transaction")["type"][1]["name"],
        "event.block"
    );
    let value = field(fields, "before")["type"][1].clone();
    let columns = value["fields"].as_array().unwrap();
    // NOT NULL columns are required, the others optional.
    for (column, required) in [("id", true), ("small", true), ("amount", false)] {
        let declared = field(columns, column)["type"].clone();
        assert_eq!(declared[0] != "null", required, "{column}: {declared}");
    }
    check_columns(columns, DEBEZIUM, |f| match &f["type"] {
        Json::Array(union) => union[1].clone(),
        required => required.clone(),
    });
    daemon.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_mode_values_are_debeziums() {
    let (services, mut daemon) = published(DEBEZIUM_MODE).await;
    // A delete under REPLICA IDENTITY DEFAULT: the before image has the key; Debezium fills the other NOT
    // NULL column with its fallback.
    services.sql("DELETE FROM t WHERE id = 2").await;
    let bootstrap = services.broker.bootstrap();
    let registry = services.registry.url();
    let out = sluice_testkit::python::run("read_avro.py", &[&bootstrap, &registry, TOPIC, "4"])
        .unwrap_or_else(|err| panic!("{err:#}"));
    let messages: Vec<Json> = out
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(messages.len(), 4, "{out}");
    assert!(messages.iter().all(|m| m.get("error").is_none()), "{out}");
    for message in &messages[..2] {
        let row = &message["value"]["after"];
        for (column, expected) in [
            ("small", json!(7)),
            ("amount", json!({"decimal": "12.50"})),
            ("price", json!({"decimal": "4.10"})),
            ("day", json!(19_844)),
            ("at", json!(1_714_564_800_000_001_i64)),
            ("at3", json!(1_714_564_800_123_i64)),
            ("at_tz", json!("2024-05-01T10:00:00.000000Z")),
            ("clock", json!(45_296_789_000_i64)),
            ("clock3", json!(45_296_789)),
            ("clock_tz", json!("07:04:56Z")),
            ("span", json!(93_600_000_000_i64)),
            ("u", json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")),
            ("m", json!("happy")),
        ] {
            assert_eq!(row[column], expected, "{column} in {row}");
        }
    }
    let delete = &messages[2]["value"];
    assert_eq!(delete["op"], "d");
    let before = &delete["before"];
    assert_eq!((&before["id"], &before["small"]), (&json!(2), &json!(0)));
    assert!(before["amount"].is_null(), "{before}");
    assert!(messages[3]["value"].is_null(), "the tombstone");
    daemon.stop_cleanly();
}
