//! TLS to PostgreSQL against a real server with TLS on: certificates made by `openssl` for the test, a
//! least-privileged role that logs in with a client certificate, and the errors a wrong certificate,
//! a wrong host name or a missing client certificate give.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{decode_all, sluice, Daemon, Services, DATABASE};
use sluice_postgres::connection::PgConnection;
use sluice_postgres::replication::ReplicationConnection;
use sluice_testkit::pki::Pki;

/// The services with TLS on the PostgreSQL server, a table with a row, and the role `certuser`:
/// REPLICATION, SELECT on the table, a publication created beforehand by the table's owner, and a login
/// only with a client certificate over TLS.
async fn services_with_tls(pki: &Pki) -> Services {
    let services = Services::start().await;
    for (name, file) in [
        ("server.crt", "server.crt"),
        ("server.key", "server.key"),
        ("ca.crt", "ca.crt"),
    ] {
        services.pg.install_file(name, &pki.read(file)).unwrap();
    }
    // ALTER SYSTEM refuses to run inside a transaction: one statement at a time.
    for setting in [
        "ssl = on",
        "ssl_cert_file = 'server.crt'",
        "ssl_key_file = 'server.key'",
        "ssl_ca_file = 'ca.crt'",
    ] {
        services.sql(&format!("ALTER SYSTEM SET {setting}")).await;
    }
    services
        .sql(
            "CREATE TABLE notes (id bigint PRIMARY KEY, body text);
             INSERT INTO notes VALUES (1, 'before');
             CREATE ROLE certuser LOGIN REPLICATION;
             GRANT SELECT ON notes TO certuser;
             CREATE PUBLICATION sluice_test FOR TABLE notes WITH (publish_via_partition_root = true);",
        )
        .await;
    // Reloads the configuration too: TLS is on from here.
    services
        .pg
        .prepend_hba(&[
            "hostssl all certuser 127.0.0.1/32 cert",
            "hostssl all certuser ::1/128 cert",
            "hostssl replication certuser 127.0.0.1/32 cert",
            "hostssl replication certuser ::1/128 cert",
        ])
        .unwrap();
    services
}

fn url(services: &Services, host: &str, tls: &str) -> String {
    format!(
        "postgres://certuser@{host}:{}/{DATABASE}?{tls}",
        services.pg.port()
    )
}

fn verify_full(pki: &Pki) -> String {
    format!(
        "sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        pki.path("ca.crt").display(),
        pki.path("client.crt").display(),
        pki.path("client.key").display()
    )
}

fn write_config(services: &Services, url: String, name: &str) -> PathBuf {
    let mut config = services.config(&["public.notes"]);
    config.url = url;
    services.write_as(&config, name)
}

/// Why a replication connection (sluice's own client, not tokio-postgres) to `url` fails.
async fn replication_error(url: &str) -> String {
    let connection = PgConnection::parse(url).expect("a valid URL");
    match ReplicationConnection::connect(&connection).await {
        Ok(_) => panic!("{url}: the replication connection opened"),
        Err(err) => err.to_string(),
    }
}

/// Asserts that both `sluice check` (tokio-postgres) and sluice's replication client refuse `url`, the
/// check's report containing each of `check_says` and the replication error `replication_says`.
async fn assert_refused(
    services: &Services,
    url: String,
    name: &str,
    check_says: &[&str],
    replication_says: &str,
) {
    let report = check(&write_config(services, url.clone(), name));
    for expected in check_says {
        assert!(report.contains(expected), "{name}: {report}");
    }
    let error = replication_error(&url).await;
    assert!(error.contains(replication_says), "{name}: {error}");
}

/// `sluice check`'s PostgreSQL lines.
fn check(config: &Path) -> String {
    let (_, stdout, stderr) = sluice(&["check", "-c", config.to_str().unwrap()]);
    format!("{stdout}{stderr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_verified_tls_as_a_least_privileged_role_with_a_client_certificate() {
    let pki = Pki::new();
    let services = services_with_tls(&pki).await;
    let config = write_config(
        &services,
        url(&services, "localhost", &verify_full(&pki)),
        "tls.toml",
    );
    let report = check(&config);
    assert!(report.contains("replication connection opens"), "{report}");

    let mut daemon = Daemon::start(&config);
    services.wait_streaming(&mut daemon).await;
    services.sql("INSERT INTO notes VALUES (2, 'after')").await;
    let records = services
        .read("shop.public.notes", 2, Duration::from_secs(60))
        .await;
    let events = decode_all(&services, &records);
    let ops: Vec<(&str, i64)> = events
        .iter()
        .map(|e| (e.op().unwrap(), e.after().unwrap()["id"].as_i64().unwrap()))
        .collect();
    assert_eq!(ops, vec![("r", 1), ("c", 2)], "{}", daemon.log());

    // Every connection sluice holds is encrypted: the walsender and the catalog connection.
    let client = services.pg.client(DATABASE).await.unwrap();
    let connections: Vec<(String, bool)> = client
        .query(
            "SELECT coalesce(a.backend_type, ''), s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.usename = 'certuser'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert!(
        connections.iter().any(|(kind, _)| kind == "walsender"),
        "{connections:?}"
    );
    assert!(connections.len() >= 2, "{connections:?}");
    assert!(connections.iter().all(|(_, ssl)| *ssl), "{connections:?}");
    daemon.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_problems_are_named() {
    let pki = Pki::new();
    let services = services_with_tls(&pki).await;
    let client_cert = format!(
        "&sslcert={}&sslkey={}",
        pki.path("client.crt").display(),
        pki.path("client.key").display()
    );

    // The server's certificate names localhost, not 127.0.0.1: verify-full refuses, verify-ca accepts.
    assert_refused(
        &services,
        url(&services, "127.0.0.1", &verify_full(&pki)),
        "wrong-name.toml",
        &["not valid for name"],
        "not valid for name",
    )
    .await;
    let verify_ca = format!(
        "sslmode=verify-ca&sslrootcert={}{client_cert}",
        pki.path("ca.crt").display()
    );
    let report = check(&write_config(
        &services,
        url(&services, "127.0.0.1", &verify_ca),
        "verify-ca.toml",
    ));
    assert!(report.contains("replication connection opens"), "{report}");

    // A root that did not sign the server's certificate.
    let other_root = format!(
        "sslmode=verify-full&sslrootcert={}{client_cert}",
        pki.path("other-ca.crt").display()
    );
    assert_refused(
        &services,
        url(&services, "localhost", &other_root),
        "other-root.toml",
        &["UnknownIssuer"],
        "UnknownIssuer",
    )
    .await;

    // No client certificate: the server's pg_hba.conf demands one.
    let no_client_cert = format!(
        "sslmode=verify-full&sslrootcert={}",
        pki.path("ca.crt").display()
    );
    assert_refused(
        &services,
        url(&services, "localhost", &no_client_cert),
        "no-client-cert.toml",
        &["not reachable", "certificate"],
        "client certificate",
    )
    .await;

    // A missing file is a configuration error, found without connecting.
    let config = write_config(
        &services,
        url(
            &services,
            "localhost",
            "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        ),
        "missing-root.toml",
    );
    let (status, _, stderr) = sluice(&["validate", "-c", config.to_str().unwrap()]);
    assert!(!status.success());
    assert!(
        stderr.contains("sslrootcert /nonexistent/ca.pem: no such file"),
        "{stderr}"
    );
}
