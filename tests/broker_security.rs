//! TLS and SASL to the broker, against a real tansu. tansu 0.6 authenticates SCRAM-SHA-256 and -512 (it
//! offers no PLAIN) but serves plain TCP whatever `--cert` says, so TLS is terminated by the harness's TLS
//! front on the port tansu advertises: the handshake and its certificate checks are librdkafka's own.
//! Covered: publishing over verified TLS and with SCRAM over TLS, and each refusal — a certificate from
//! another authority, a wrong password, a mechanism the broker does not serve — named with what to fix,
//! at once and once, by `check` and by `run`, with no secret in what either prints.

mod common;

use std::time::{Duration, Instant};

use common::{decode_all, sluice, Daemon, Services};
use sluice_testkit::broker::{Scram, ScramUser, Security, Tansu, TlsFiles};
use sluice_testkit::pki::Pki;

const ALICE_PASSWORD: &str = "alice-Secr3t-7f3a";
const BOB_PASSWORD: &str = "bob-Secr3t-91c2";
const WRONG_PASSWORD: &str = "not-alices-Pa55word";

/// The authorities of tests/support's Pki, and a broker certificate for 127.0.0.1, the address tansu
/// advertises.
fn pki() -> Pki {
    let pki = Pki::new();
    pki.leaf(
        "broker",
        "127.0.0.1",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    );
    pki
}

fn tls(pki: &Pki) -> TlsFiles {
    TlsFiles {
        cert: pki.path("broker.crt"),
        key: pki.path("broker.key"),
        ca: pki.path("ca.crt"),
        client_ca: None,
        client: None,
    }
}

async fn services(security: &Security) -> Services {
    let services =
        Services::start_with_broker(Tansu::start_secured(security).expect("start a secured tansu"))
            .await;
    services
        .sql("CREATE TABLE orders (id int PRIMARY KEY, item text); INSERT INTO orders VALUES (1, 'snapshot row')")
        .await;
    services
}

/// `sluice check` on a config for `orders` with these `[sink.kafka]` properties: (success, report).
fn check(services: &Services, name: &str, kafka: &[(&str, &str)]) -> (bool, String) {
    let path = services.write_as(&with_kafka(services, kafka), name);
    let (status, stdout, stderr) = sluice(&["check", "-c", path.to_str().unwrap()]);
    (status.success(), format!("{stdout}{stderr}"))
}

fn with_kafka(services: &Services, kafka: &[(&str, &str)]) -> sluice_testkit::config::ConfigFile {
    let mut config = services.config(&["public.orders"]);
    for (key, value) in kafka {
        config.set_kafka(key, value);
    }
    config
}

/// The report's line about the broker.
fn broker_line(report: &str) -> &str {
    report
        .lines()
        .find(|line| line.contains("broker at"))
        .unwrap_or_else(|| panic!("no broker line in:\n{report}"))
}

/// Runs sluice with these properties until the snapshot row and one streamed row are on the topic.
async fn publishes(services: &Services, name: &str, kafka: &[(&str, &str)]) {
    let path = services.write_as(&with_kafka(services, kafka), name);
    let mut daemon = Daemon::start(&path);
    services.wait_streaming(&mut daemon).await;
    services
        .sql("INSERT INTO orders VALUES (2, 'streamed row')")
        .await;
    let records = services
        .read("shop.public.orders", 2, Duration::from_secs(60))
        .await;
    let events = decode_all(services, &records);
    let items: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e.op().unwrap(),
                e.after().unwrap()["item"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(items, [("r", "snapshot row"), ("c", "streamed row")]);
    daemon.stop_cleanly();
}

/// `sluice run` must stop by itself, soon, saying `said` once, and without `secret` anywhere.
fn run_refused(
    services: &Services,
    name: &str,
    kafka: &[(&str, &str)],
    said: &str,
    secret: Option<&str>,
) {
    let path = services.write_as(&with_kafka(services, kafka), name);
    let started = Instant::now();
    let mut daemon = Daemon::start(&path);
    let log = daemon.fails_saying(&[said]);
    // librdkafka retries a refused connection for ever; sluice gives up at the first refusal.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?} to give up:\n{log}",
        started.elapsed()
    );
    let refusals = log.matches("refused the connection").count();
    assert!(
        (1..=3).contains(&refusals),
        "the refusal is logged when seen and in the exit error, not at every retry ({refusals} times):\n{log}"
    );
    // librdkafka logs the first failure before reporting it; its retries' lines are debug lines.
    assert!(
        log.matches("librdkafka: FAIL").count() <= 1,
        "librdkafka's line of each retry is an error line:\n{log}"
    );
    if let Some(secret) = secret {
        assert!(!log.contains(secret), "the password is in the log:\n{log}");
    }
}

#[tokio::test]
async fn publishes_over_verified_tls_and_refuses_a_certificate_from_another_authority() {
    let pki = pki();
    let services = services(&Security {
        tls: Some(tls(&pki)),
        scram_users: Vec::new(),
    })
    .await;
    let ca = pki.path("ca.crt").display().to_string();
    let other_ca = pki.path("other-ca.crt").display().to_string();

    let (ok, report) = check(
        &services,
        "tls.toml",
        &[("security.protocol", "SSL"), ("ssl.ca.location", &ca)],
    );
    assert!(ok, "{report}");
    assert!(
        broker_line(&report).contains("is reachable, over TLS"),
        "{report}"
    );
    publishes(
        &services,
        "tls.toml",
        &[("security.protocol", "SSL"), ("ssl.ca.location", &ca)],
    )
    .await;

    // The broker's certificate is not signed by the authority the config trusts.
    let wrong_ca = [
        ("security.protocol", "SSL"),
        ("ssl.ca.location", other_ca.as_str()),
    ];
    let (ok, report) = check(&services, "other-ca.toml", &wrong_ca);
    assert!(!ok, "{report}");
    let line = broker_line(&report);
    assert!(
        line.contains("refused the connection: TLS:") && line.contains("certificate verify failed"),
        "{report}"
    );
    assert!(
        report.contains("ssl.ca.location"),
        "the fix names the setting:\n{report}"
    );
    run_refused(
        &services,
        "other-ca.toml",
        &wrong_ca,
        "certificate verify failed",
        None,
    );

    // Plain TCP to a TLS port: no answer a client can read as a broker's.
    let (ok, report) = check(&services, "plaintext.toml", &[]);
    assert!(!ok, "{report}");
    assert!(
        broker_line(&report).contains("is not reachable")
            && report.contains("the security settings in [sink.kafka]"),
        "{report}"
    );
}

#[tokio::test]
async fn authenticates_with_scram_over_tls_and_names_a_refused_login() {
    let pki = pki();
    let services = services(&Security {
        tls: Some(tls(&pki)),
        scram_users: vec![
            ScramUser {
                name: "alice".into(),
                password: ALICE_PASSWORD.into(),
                mechanism: Scram::Sha512,
            },
            ScramUser {
                name: "bob".into(),
                password: BOB_PASSWORD.into(),
                mechanism: Scram::Sha256,
            },
        ],
    })
    .await;
    let ca = pki.path("ca.crt").display().to_string();
    let login = |mechanism: &'static str, user: &'static str, password: &'static str| {
        vec![
            ("security.protocol", "SASL_SSL"),
            ("ssl.ca.location", ca.as_str()),
            ("sasl.mechanisms", mechanism),
            ("sasl.username", user),
            ("sasl.password", password),
        ]
    };

    let alice = login("SCRAM-SHA-512", "alice", ALICE_PASSWORD);
    let (ok, report) = check(&services, "alice.toml", &alice);
    assert!(ok, "{report}");
    assert!(
        broker_line(&report).contains(
            "is reachable, over TLS, authenticated with SASL SCRAM-SHA-512 as user `alice`"
        ),
        "{report}"
    );
    assert!(!report.contains(ALICE_PASSWORD), "{report}");
    publishes(&services, "alice.toml", &alice).await;

    let (ok, report) = check(
        &services,
        "bob.toml",
        &login("SCRAM-SHA-256", "bob", BOB_PASSWORD),
    );
    assert!(ok, "SCRAM-SHA-256 logs in too:\n{report}");

    // A wrong password: named with the mechanism and the user, the fix naming the settings.
    let wrong = login("SCRAM-SHA-512", "alice", WRONG_PASSWORD);
    let (ok, report) = check(&services, "wrong.toml", &wrong);
    assert!(!ok, "{report}");
    let line = broker_line(&report);
    assert!(
        line.contains("refused the connection: SASL SCRAM-SHA-512 authentication as user `alice`"),
        "{report}"
    );
    assert!(
        report.contains("sasl.password"),
        "the fix names the setting:\n{report}"
    );
    assert!(!report.contains(WRONG_PASSWORD), "{report}");
    run_refused(
        &services,
        "wrong.toml",
        &wrong,
        "SASL SCRAM-SHA-512 authentication as user `alice`",
        Some(WRONG_PASSWORD),
    );

    // A mechanism tansu does not serve.
    let (ok, report) = check(
        &services,
        "plain.toml",
        &login("PLAIN", "alice", ALICE_PASSWORD),
    );
    assert!(!ok, "{report}");
    assert!(
        broker_line(&report).contains("SASL PLAIN mechanism handshake failed"),
        "{report}"
    );
    assert!(!report.contains(ALICE_PASSWORD), "{report}");

    // Nothing was published by the refused attempts: the topic holds the two rows of the first run.
    let records = services
        .read("shop.public.orders", 2, Duration::from_secs(10))
        .await;
    assert_eq!(records.len(), 2);
}

#[tokio::test]
async fn a_client_certificate_the_broker_requires_is_presented_or_its_lack_named() {
    let pki = pki();
    let (cert, key) = (pki.path("client.crt"), pki.path("client.key"));
    let services = services(&Security {
        tls: Some(TlsFiles {
            client_ca: Some(pki.path("ca.crt")),
            client: Some((cert.clone(), key.clone())),
            ..tls(&pki)
        }),
        scram_users: Vec::new(),
    })
    .await;
    let ca = pki.path("ca.crt").display().to_string();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let without = [
        ("security.protocol", "SSL"),
        ("ssl.ca.location", ca.as_str()),
    ];
    let mut with = without.to_vec();
    with.extend([
        ("ssl.certificate.location", cert.as_str()),
        ("ssl.key.location", key.as_str()),
    ]);

    let (ok, report) = check(&services, "client-cert.toml", &with);
    assert!(ok, "{report}");
    publishes(&services, "client-cert.toml", &with).await;

    let (ok, report) = check(&services, "no-client-cert.toml", &without);
    assert!(!ok, "{report}");
    assert!(
        broker_line(&report).contains("refused the connection: TLS:"),
        "{report}"
    );
    assert!(
        report.contains("requires a client certificate")
            && report.contains("ssl.certificate.location"),
        "the fix names the settings:\n{report}"
    );
    run_refused(
        &services,
        "no-client-cert.toml",
        &without,
        "requires a client certificate",
        None,
    );
}
