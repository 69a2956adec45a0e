//! No secret in any output. sluice runs with a password in the PostgreSQL URL, SASL credentials for the
//! broker and a bearer token for the registry — written literally and as `${VAR}` — through a failure of
//! each service; then its logs (text and JSON), `/metrics`, `/health`, `check` and `validate`, the dead
//! letters and the position store are searched for every secret.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{http_get, sluice, sluice_bin, wait_slot_active, Daemon, Services, DEAD_LETTERS};
use sluice_testkit::broker::{Scram, ScramUser, Security, Tansu};

const SASL_PASSWORD: &str = "sasl-Pw-4c1e9b";
const WRONG_SASL_PASSWORD: &str = "wrong-Pw-77d0aa";
const REGISTRY_TOKEN: &str = "registry-Tok-e52f31";
const REGISTRY_PASSWORD: &str = "registry-Pw-0b9d6c";
const BROKEN_SECRET: &str = "broken-Pw-a81f";

const SECRET_ENV: [(&str, &str); 2] = [
    ("SLUICE_TEST_SASL_PASSWORD", SASL_PASSWORD),
    ("SLUICE_TEST_REGISTRY_TOKEN", REGISTRY_TOKEN),
];

/// `sluice ARGS` with the secrets' environment: stdout and stderr together.
fn sluice_output(args: &[&str]) -> String {
    let output = Command::new(sluice_bin())
        .args(args)
        .envs(SECRET_ENV)
        .output()
        .expect("run sluice");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn assert_no_secret(what: &str, text: &[u8], secrets: &[&str]) {
    let text = String::from_utf8_lossy(text);
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "{what} shows the secret `{secret}`:\n{text}"
        );
    }
}

/// Every file under `dir`, read.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    found
}

#[tokio::test]
async fn no_secret_reaches_logs_metrics_checks_dead_letters_or_positions() {
    let broker = Tansu::start_secured(&Security {
        tls: None,
        scram_users: vec![ScramUser {
            name: "sluice".into(),
            password: SASL_PASSWORD.into(),
            mechanism: Scram::Sha512,
        }],
    })
    .expect("start tansu with SCRAM");
    let services = Services::start_with_broker(broker).await;
    services
        .registry
        .require_authorization(Some(&format!("Bearer {REGISTRY_TOKEN}")));
    // A value with no encoding makes a dead letter.
    services
        .sql("CREATE TABLE orders (id int PRIMARY KEY, amount numeric(10,2)); INSERT INTO orders VALUES (1, 1.50), (2, 'NaN')")
        .await;
    let pg_password = services.pg.password().to_owned();
    let secrets = [
        pg_password.as_str(),
        SASL_PASSWORD,
        WRONG_SASL_PASSWORD,
        REGISTRY_TOKEN,
        REGISTRY_PASSWORD,
        BROKEN_SECRET,
    ];

    let mut config = services.config(&["public.orders"]);
    config.api_address = Some("127.0.0.1:0".into());
    config.avro_extra = "registry_bearer_token = \"${SLUICE_TEST_REGISTRY_TOKEN}\"\n".into();
    for (key, value) in [
        ("security.protocol", "SASL_PLAINTEXT"),
        ("sasl.mechanisms", "SCRAM-SHA-512"),
        ("sasl.username", "sluice"),
        ("sasl.password", "${SLUICE_TEST_SASL_PASSWORD}"),
        // librdkafka's own debug lines too (shown in the JSON run, which logs at debug).
        ("debug", "security,broker,conf"),
    ] {
        config.set_kafka(key, value);
    }
    assert!(
        config.url.contains(&pg_password),
        "the PostgreSQL URL holds its password literally"
    );
    let path = services.write_as(&config, "sluice.toml");
    let path_text = path.to_str().unwrap();

    let mut outputs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut record = |what: &str, text: &[u8]| outputs.push((what.to_owned(), text.to_vec()));
    record(
        "check",
        sluice_output(&["check", "-c", path_text]).as_bytes(),
    );
    record(
        "validate",
        sluice_output(&["validate", "-c", path_text]).as_bytes(),
    );

    // Streaming, then PostgreSQL drops the replication connection: a reconnect.
    let mut daemon = Daemon::start_with(&path, &[], &SECRET_ENV);
    wait_slot_active(&services.pg, &mut daemon, "sluice_test").await;
    services
        .sql("SELECT pg_terminate_backend(pid) FROM pg_stat_replication")
        .await;
    services.sql("INSERT INTO orders VALUES (3, 3.00)").await;
    let letters = services
        .read(DEAD_LETTERS, 1, Duration::from_secs(60))
        .await;
    assert_eq!(letters.len(), 1, "the NaN row's dead letter");
    for letter in &letters {
        record("a dead letter", letter.value.as_deref().unwrap_or_default());
    }
    services
        .read("shop.public.orders", 3, Duration::from_secs(60))
        .await;
    for path in ["/metrics", "/health/ready", "/health/live"] {
        let (status, body) = http_get(&daemon, path);
        record(path, format!("{status}\n{body}").as_bytes());
    }
    // The registry fails while a new table needs a schema.
    services.registry.set_unavailable(true);
    services
        .sql("ALTER TABLE orders ADD COLUMN note text; INSERT INTO orders VALUES (4, 4.00, 'x')")
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    record(
        "check with the registry down",
        sluice_output(&["check", "-c", path_text]).as_bytes(),
    );
    services.registry.set_unavailable(false);
    services
        .read("shop.public.orders", 4, Duration::from_secs(60))
        .await;
    daemon.stop_cleanly();
    record("the text log", daemon.log().as_bytes());

    // JSON logs at debug, with PostgreSQL down for a while: the reader reconnects.
    let debug_env = [SECRET_ENV[0], SECRET_ENV[1], ("SLUICE_LOG", "debug")];
    let mut daemon = Daemon::start_with(&path, &["--log-format", "json"], &debug_env);
    wait_slot_active(&services.pg, &mut daemon, "sluice_test").await;
    services.pg.stop().unwrap();
    record(
        "check with PostgreSQL down",
        sluice_output(&["check", "-c", path_text]).as_bytes(),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    services.pg.restart().unwrap();
    wait_slot_active(&services.pg, &mut daemon, "sluice_test").await;
    daemon.stop_cleanly();
    record("the JSON log", daemon.log().as_bytes());

    // The broker refuses a wrong password; the registry refuses wrong basic credentials.
    let mut refused = config.clone();
    refused.set_kafka("sasl.password", WRONG_SASL_PASSWORD);
    refused.avro_extra =
        format!("registry_username = \"sluice\"\nregistry_password = \"{REGISTRY_PASSWORD}\"\n");
    let refused_path = services.write_as(&refused, "refused.toml");
    let refused_text = refused_path.to_str().unwrap();
    record(
        "check with refused credentials",
        sluice_output(&["check", "-c", refused_text]).as_bytes(),
    );
    let mut daemon = Daemon::start_with(&refused_path, &["--log-format", "json"], &SECRET_ENV);
    let log = daemon.fails_saying(&["refused the connection"]);
    record("the refused run's JSON log", log.as_bytes());

    // A config error on a secret's own line: the message quotes the line.
    let broken = std::fs::read_to_string(&path).unwrap().replace(
        "registry_bearer_token = \"${SLUICE_TEST_REGISTRY_TOKEN}\"",
        &format!("registry_bearer_token = \"{BROKEN_SECRET}"),
    );
    let broken_path = services.dir.path().join("broken.toml");
    std::fs::write(&broken_path, broken).unwrap();
    let (status, stdout, stderr) = sluice(&["validate", "-c", broken_path.to_str().unwrap()]);
    assert!(!status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("registry_bearer_token"), "{stderr}");
    record(
        "validate of a broken file",
        format!("{stdout}{stderr}").as_bytes(),
    );

    for (path, content) in files_under(&services.dir.path().join("positions")) {
        record(
            &format!("the position store's {}", path.display()),
            &content,
        );
    }
    for (what, text) in &outputs {
        assert_no_secret(what, text, &secrets);
    }
    // Each failure happened, and was reported, in the output searched.
    let output = |name: &str| {
        let (_, text) = outputs
            .iter()
            .find(|(what, _)| what == name)
            .unwrap_or_else(|| panic!("no output `{name}`"));
        String::from_utf8_lossy(text).into_owned()
    };
    for (name, failed) in [
        ("check with the registry down", "schema registry"),
        ("check with PostgreSQL down", "PostgreSQL"),
        ("check with refused credentials", "refused the connection"),
    ] {
        let text = output(name);
        assert!(
            text.lines()
                .any(|l| l.starts_with("[FAIL]") && l.contains(failed)),
            "{name}:\n{text}"
        );
    }
    // The searches looked at real output.
    let all: String = outputs
        .iter()
        .map(|(_, text)| String::from_utf8_lossy(text).into_owned())
        .collect();
    for expected in [
        "sluice_events_total",
        "refused the connection",
        "\"level\":",
        "postgres://postgres:***@",
        "\"target\":\"librdkafka\"",
    ] {
        assert!(all.contains(expected), "no `{expected}` in the outputs");
    }
}
