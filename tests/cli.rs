//! The operator-facing commands: `validate` without network, `check` against real servers.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{sluice, Daemon, Services};
use sluice_testkit::config::ConfigFile;
use sluice_testkit::postgres::{current_wal_lsn, PgCluster};

const VALID: &str = r#"
[source]
kind = "postgres"
url = "postgres://replicator:${SLUICE_TEST_PASSWORD}@127.0.0.1:5432/shop"
slot = "sluice"
publication = "sluice"
tables = ["public.orders"]

[sink]
kind = "kafka"
brokers = "127.0.0.1:9092"
topic_prefix = "shop"
dead_letter_topic = "shop.dlq"

[avro]
registry_url = "http://127.0.0.1:8081"

[positions]
dir = "/tmp/sluice-positions"
"#;

fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `sluice validate` on `text`; returns (exit code, everything it printed).
fn validate(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, text);
    let output = std::process::Command::new(common::sluice_bin())
        .args(["validate", "-c"])
        .arg(&path)
        .env("SLUICE_TEST_PASSWORD", "s3cret-pw")
        .output()
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), printed)
}

#[test]
fn validate_accepts_a_good_config_and_the_shipped_example() {
    let (code, printed) = validate(VALID);
    assert_eq!(code, 0, "{printed}");
    assert!(printed.contains("configuration is valid"), "{printed}");

    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/sluice.toml"))
            .unwrap();
    let output = std::process::Command::new(common::sluice_bin())
        .args([
            "validate",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/sluice.toml"),
        ])
        .env("PGPASSWORD", "x")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "config/sluice.toml: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(example.contains("[sink.kafka]"));

    let mongodb = concat!(env!("CARGO_MANIFEST_DIR"), "/config/mongodb.toml");
    let output = std::process::Command::new(common::sluice_bin())
        .args(["validate", "--offline", "-c", mongodb])
        .env("MONGODB_PASSWORD", "x")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "config/mongodb.toml: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn validate_names_an_unknown_key_and_its_line() {
    let (code, printed) =
        validate(&VALID.replace("slot = \"sluice\"", "slot = \"sluice\"\nslot_name = \"x\""));
    assert_eq!(code, 1, "{printed}");
    assert!(printed.contains("line 6, column 1"), "{printed}");
    assert!(printed.contains("unknown field `slot_name`"), "{printed}");
}

#[test]
fn validate_names_a_wrong_type_and_its_line() {
    let (code, printed) = validate(&VALID.replace("tables = [\"public.orders\"]", "tables = 7"));
    assert_eq!(code, 1, "{printed}");
    assert!(printed.contains("line 7"), "{printed}");
    assert!(printed.contains("invalid type"), "{printed}");
}

#[test]
fn validate_names_a_missing_section() {
    let (code, printed) =
        validate(&VALID.replace("[positions]\ndir = \"/tmp/sluice-positions\"\n", ""));
    assert_eq!(code, 1, "{printed}");
    assert!(printed.contains("missing field `positions`"), "{printed}");
}

#[test]
fn validate_names_a_bad_url_and_keeps_the_password_secret() {
    let (code, printed) =
        validate(&VALID.replace("@127.0.0.1:5432/shop", "@127.0.0.1:notaport/shop"));
    assert_eq!(code, 1, "{printed}");
    assert!(printed.contains("`source.url`"), "{printed}");
    assert!(printed.contains("line 4"), "{printed}");
    assert!(
        !printed.contains("s3cret-pw"),
        "the password leaked: {printed}"
    );

    let (code, printed) = validate(&VALID.replace("http://127.0.0.1:8081", "127.0.0.1:8081"));
    assert_eq!(code, 1, "{printed}");
    assert!(printed.contains("`avro.registry_url`"), "{printed}");
}

#[test]
fn validate_reports_a_missing_environment_variable() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, VALID);
    let output = std::process::Command::new(common::sluice_bin())
        .args(["validate", "-c"])
        .arg(&path)
        .env_remove("SLUICE_TEST_PASSWORD")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr.contains("environment variable `SLUICE_TEST_PASSWORD` is not set"),
        "{stderr}"
    );
}

#[test]
fn validate_refuses_a_missing_file() {
    let (status, _, stderr) = sluice(&["validate", "-c", "/nonexistent/sluice.toml"]);
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("cannot read config file /nonexistent/sluice.toml"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_against_ready_services() {
    let services = Services::start().await;
    services
        .sql("CREATE TABLE orders (id bigint PRIMARY KEY, note text)")
        .await;
    let config = services.write_config_source(
        &["public.orders"],
        r#"exclude_columns = ["public.orders.note", "public.orders.nte"]"#,
        &[],
    );
    let (status, stdout, stderr) = sluice(&["check", "-c", config.to_str().unwrap()]);
    assert_eq!(status.code(), Some(0), "{stdout}{stderr}");
    for line in [
        "wal_level = logical",
        "may replicate",
        "replication connection opens (system ",
        "table public.orders: primary key (id)",
        "`public.orders.note` leaves out public.orders.note",
        "`public.orders.nte` matches no column of the captured tables",
        "broker at",
        "schema registry at",
    ] {
        assert!(stdout.contains(line), "missing `{line}` in:\n{stdout}");
    }
    assert!(
        !stdout.contains(services.pg.password()),
        "the password leaked:\n{stdout}"
    );

    // A position file without its slot: `run` would refuse to start, so `check` fails and says why.
    let positions = services.dir.path().join("positions");
    std::fs::create_dir_all(&positions).unwrap();
    std::fs::write(
        positions.join("sluice_test.position.json"),
        r#"{"source":"sluice_test","position":{"kind":"postgres","lsn":"0/1000000"},"updated_at_ms":0}"#,
    )
    .unwrap();
    let (status, stdout, _) = sluice(&["check", "-c", config.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("[FAIL] slot `sluice_test` does not exist, but"),
        "{stdout}"
    );
    assert!(stdout.contains("remove the position file"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_wal_level_replica_and_the_fix() {
    let pg = PgCluster::start_with(&[("wal_level", "replica")]).expect("start PostgreSQL");
    pg.create_database("shop").await.unwrap();
    let client = pg.client("shop").await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY); CREATE TABLE events (note text)",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = VALID
        .replace(
            "postgres://replicator:${SLUICE_TEST_PASSWORD}@127.0.0.1:5432/shop",
            &pg.url("shop"),
        )
        .replace(
            "[\"public.orders\"]",
            "[\"public.orders\", \"public.events\"]",
        )
        // Nothing listens on port 9 (discard): broker and registry checks fail, which is part of the report.
        .replace("127.0.0.1:9092", "127.0.0.1:9")
        .replace("http://127.0.0.1:8081", "http://127.0.0.1:9");
    let path = write(&dir, &text);
    let (status, stdout, _) = sluice(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("[FAIL] wal_level is `replica`"), "{stdout}");
    assert!(
        stdout.contains("ALTER SYSTEM SET wal_level = logical"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[FAIL] table public.events has no primary key"),
        "{stdout}"
    );
    assert!(stdout.contains("REPLICA IDENTITY FULL"), "{stdout}");
    assert!(
        stdout.contains("[ ok ] table public.orders: primary key (id)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[FAIL] broker at 127.0.0.1:9 is not reachable"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[FAIL] schema registry at http://127.0.0.1:9 is not reachable"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_an_unreachable_database() {
    let dir = tempfile::tempdir().unwrap();
    let port = sluice_testkit::free_port();
    let text = VALID.replace("127.0.0.1:5432", &format!("127.0.0.1:{port}"));
    let path = write(&dir, &text);
    let output = std::process::Command::new(common::sluice_bin())
        .args(["check", "-c"])
        .arg(&path)
        .env("SLUICE_TEST_PASSWORD", "s3cret-pw")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("is not reachable"), "{stdout}");
    assert!(stdout.contains("[skip]"), "{stdout}");
    assert!(!stdout.contains("s3cret-pw"), "{stdout}");
}

/// The blackhole sink needs no broker: `check` says so, and `run` acknowledges every transaction to
/// PostgreSQL as soon as its events are encoded, which is what the benchmark's null-sink row measures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_blackhole_sink_acknowledges_without_a_broker() {
    let pg = PgCluster::start().expect("start PostgreSQL");
    pg.create_database(common::DATABASE).await.unwrap();
    let client = pg.client(common::DATABASE).await.unwrap();
    client
        .batch_execute("CREATE TABLE orders (id bigint PRIMARY KEY, note text)")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = ConfigFile::local(
        pg.url(common::DATABASE),
        String::new(),
        None,
        dir.path().join("positions"),
    );
    config.sink_kind = "blackhole".into();
    config.tables = vec!["public.orders".into()];
    config.api_address = Some("127.0.0.1:0".into());
    let path = config.write(&dir.path().join("sluice.toml")).unwrap();
    assert!(!config.render().contains("brokers"));

    let (status, stdout, stderr) = sluice(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("sink.kind = \"blackhole\": no broker"),
        "{stdout}"
    );

    let mut daemon = Daemon::start(&path);
    common::wait_slot_active(&pg, &mut daemon, "sluice").await;
    for batch in 0..3 {
        client
            .batch_execute(&format!(
                "INSERT INTO orders SELECT i, 'n' FROM generate_series({}, {}) AS i",
                batch * 100 + 1,
                batch * 100 + 100
            ))
            .await
            .unwrap();
    }
    let written = current_wal_lsn(&client).await.unwrap();

    // Acknowledged to PostgreSQL: the slot's confirmed position passes the inserts.
    let deadline = Instant::now() + Duration::from_secs(60);
    let confirmed =
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'sluice'";
    loop {
        let flushed: String = client.query_one(confirmed, &[]).await.unwrap().get(0);
        if common::lsn(&flushed) >= common::lsn(&written) {
            break;
        }
        assert!(daemon.exited().is_none(), "{}", daemon.log());
        assert!(
            Instant::now() < deadline,
            "slot at {flushed}, writes end at {written}:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, metrics) = common::http_get(&daemon, "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l == "sluice_events_total{table=\"public.orders\",op=\"c\"} 300"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l == "sluice_commit_to_ack_seconds_count 3"),
        "three transactions carried events:\n{metrics}"
    );
    assert!(daemon
        .log()
        .contains("events are acknowledged and thrown away"));
    daemon.stop_cleanly();
}
