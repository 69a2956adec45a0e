//! The schema registry over TLS and with credentials, against the registry test double serving rustls
//! with certificates made by `openssl` for the test: a private authority in `registry_ca_file`, a client
//! certificate (mutual TLS), basic and bearer authentication. Each refusal is named, in `sluice check`'s
//! registry line and in the daemon's log, with the `[avro]` key that fixes it; a refusal stops sluice
//! instead of being waited out; no password or token appears in any output.

mod common;

use std::time::Duration;

use common::{decode_all, sluice, Daemon, Services};
use sluice::registry::{RegistryAuth, RegistryClient, RegistrySettings};
use sluice_testkit::pki::Pki;
use sluice_testkit::random_hex;
use sluice_testkit::registry::{RegistryDouble, RegistryOptions};

const SCHEMA: &str = "CREATE TABLE notes (id bigint PRIMARY KEY, body text);
                      INSERT INTO notes VALUES (1, 'before');";
const NOTES: &str = "shop.public.notes";
const CLIENT_AUTH: &str = "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n";

/// A double serving TLS with the PKI's server certificate (for `localhost` only).
fn tls(pki: &Pki) -> RegistryOptions {
    RegistryDouble::options().tls(pki.path("server.crt"), pki.path("server.key"))
}

/// `[avro]` lines, one `key = "value"` per pair.
fn avro(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .map(|(key, value)| format!("{key} = \"{value}\"\n"))
        .collect()
}

fn ca_file(pki: &Pki, authority: &str) -> (&'static str, String) {
    (
        "registry_ca_file",
        pki.path(&format!("{authority}.crt")).display().to_string(),
    )
}

/// `registry_client_cert_file` and `registry_client_key_file` for the PKI's `<name>.crt` and `.key`.
fn client_cert(pki: &Pki, name: &str) -> [(&'static str, String); 2] {
    [
        (
            "registry_client_cert_file",
            pki.path(&format!("{name}.crt")).display().to_string(),
        ),
        (
            "registry_client_key_file",
            pki.path(&format!("{name}.key")).display().to_string(),
        ),
    ]
}

/// What `sluice check` said about a config.
struct Checked {
    code: Option<i32>,
    /// stdout and stderr.
    output: String,
    /// The registry's line, with its fix line when it has one.
    line: String,
}

/// `sluice check` with the services' PostgreSQL and broker, the registry at `registry_url` and these
/// extra `[avro]` lines.
fn check(services: &Services, name: &str, registry_url: &str, avro_extra: String) -> Checked {
    let mut config = services.config(&["public.notes"]);
    config.registry_url = Some(registry_url.to_owned());
    config.avro_extra = avro_extra;
    let path = services.write_as(&config, name);
    let (status, stdout, stderr) = sluice(&["check", "-c", path.to_str().unwrap()]);
    let output = format!("{stdout}{stderr}");
    let lines: Vec<&str> = output.lines().collect();
    let at = lines
        .iter()
        .position(|line| line.contains("schema registry at"))
        .unwrap_or_else(|| panic!("{name}: no registry line in\n{output}"));
    let line = match lines.get(at + 1) {
        Some(next) if next.trim_start().starts_with("fix:") => format!("{}\n{next}", lines[at]),
        _ => lines[at].to_owned(),
    };
    Checked {
        code: status.code(),
        output,
        line,
    }
}

/// Asserts that the check passed, its registry line saying the registry at `url` answered.
fn assert_reachable(checked: &Checked, url: &str) {
    assert_eq!(
        checked.line,
        format!("[ ok ] schema registry at {url} is reachable"),
        "{}",
        checked.output
    );
    assert_eq!(checked.code, Some(0), "{}", checked.output);
}

/// Asserts that the check failed on the registry with exactly `line` and `fix`.
fn assert_refused(checked: &Checked, line: &str, fix: &str) {
    assert_eq!(
        checked.line,
        format!("[FAIL] {line}\n       fix: {fix}"),
        "{}",
        checked.output
    );
    assert_eq!(checked.code, Some(1), "{}", checked.output);
}

fn assert_no_secret(secrets: &[&str], what: &str, text: &str) {
    for secret in secrets {
        assert!(!text.contains(secret), "a secret is in the {what}:\n{text}");
    }
}

/// Starts sluice with `avro_extra` and asserts that it stops by itself on the registry's refusal (never
/// waiting it out as an outage), its log saying each of `said`; returns the log.
fn assert_daemon_stops(services: &Services, avro_extra: String, said: &[&str]) -> String {
    let mut config = services.config(&["public.notes"]);
    config.avro_extra = avro_extra;
    let path = services.write_as(&config, "refused.toml");
    let mut daemon = Daemon::start(&path);
    let log = daemon.fails_saying(said);
    assert!(
        !log.contains("schema registry unavailable"),
        "a refusal is not an outage to wait out:\n{log}"
    );
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_through_a_registry_over_mutual_tls_with_basic_auth() {
    let pki = Pki::new();
    let password = format!("pw-{}", random_hex());
    let registry = tls(&pki)
        .require_client_certificate(pki.path("ca.crt"))
        .require_basic("sluice", &password)
        .start()
        .unwrap();
    let services = Services::start_with_registry(registry).await;
    services.sql(SCHEMA).await;
    let url = services.registry.url();
    assert!(url.starts_with("https://localhost:"), "{url}");

    let [cert, key] = client_cert(&pki, "client");
    let avro_extra = avro(&[
        ca_file(&pki, "ca"),
        cert,
        key,
        ("registry_username", "sluice".into()),
        ("registry_password", password.clone()),
    ]);
    let checked = check(&services, "check.toml", &url, avro_extra.clone());
    assert_reachable(&checked, &url);

    let mut config = services.config(&["public.notes"]);
    config.topic_partitions = 1;
    config.avro_extra = avro_extra;
    let mut daemon = Daemon::start(&services.write(&config));
    services.wait_streaming(&mut daemon).await;
    services.sql("INSERT INTO notes VALUES (2, 'after')").await;
    let records = services.read(NOTES, 2, Duration::from_secs(60)).await;
    // Decoding reads each schema by the id in the message from the double: sluice registered them there.
    let events = decode_all(&services, &records);
    let rows: Vec<(&str, i64, &str)> = events
        .iter()
        .map(|e| {
            let after = e.after().unwrap();
            (
                e.op().unwrap(),
                after["id"].as_i64().unwrap(),
                after["body"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [("r", 1, "before"), ("c", 2, "after")],
        "{}",
        daemon.log()
    );
    daemon.stop_cleanly();
    let subjects = services.registry.subjects();
    for subject in [format!("{NOTES}-key"), format!("{NOTES}-value")] {
        assert!(subjects.contains(&subject), "{subject} not in {subjects:?}");
    }
    assert_eq!(services.registry.tls_refusals(), Vec::<String>::new());
    assert_no_secret(&[&password], "check output", &checked.output);
    assert_no_secret(&[&password], "log", &daemon.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn problems_with_the_registry_certificate_are_named() {
    let pki = Pki::new();
    let services = Services::start_with_registry(tls(&pki).start().unwrap()).await;
    services.sql(SCHEMA).await;
    let url = services.registry.url();

    let trusted = check(&services, "ca.toml", &url, avro(&[ca_file(&pki, "ca")]));
    assert_reachable(&trusted, &url);

    // Without registry_ca_file only the public authorities are trusted.
    let untrusted = check(&services, "no-ca.toml", &url, String::new());
    assert_refused(
        &untrusted,
        &format!("schema registry at {url}: TLS failed: invalid peer certificate: UnknownIssuer"),
        "no authority sluice trusts signed the registry's certificate: set avro.registry_ca_file to a PEM file of the authority that did",
    );

    let other = check(
        &services,
        "other-ca.toml",
        &url,
        avro(&[ca_file(&pki, "other-ca")]),
    );
    assert_refused(
        &other,
        &format!("schema registry at {url}: TLS failed: invalid peer certificate: UnknownIssuer"),
        &format!(
            "the registry's certificate is not signed by an authority in avro.registry_ca_file ({}): name the PEM file of the authority that signed it",
            pki.path("other-ca.crt").display()
        ),
    );

    // The certificate names localhost, not 127.0.0.1.
    let by_address = format!("https://127.0.0.1:{}", services.registry.addr().port());
    let wrong_name = check(
        &services,
        "wrong-name.toml",
        &by_address,
        avro(&[ca_file(&pki, "ca")]),
    );
    assert_refused(
        &wrong_name,
        &format!(
            "schema registry at {by_address}: TLS failed: invalid peer certificate: certificate not valid for name \"127.0.0.1\"; certificate is only valid for DnsName(\"localhost\")"
        ),
        "the registry's certificate is not issued for the host in avro.registry_url: use a host name the certificate names, or give the registry a certificate for this one",
    );

    // The daemon meets the same refusal registering the snapshot's schemas, and stops on it.
    assert_daemon_stops(
        &services,
        String::new(),
        &[
            "invalid peer certificate: UnknownIssuer",
            "set avro.registry_ca_file to a PEM file of the authority that did",
        ],
    );
    assert!(services.registry.schemas().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn problems_with_the_client_certificate_are_named() {
    let pki = Pki::new();
    pki.leaf_signed_by("other-ca", "stranger", "certuser", CLIENT_AUTH);
    let registry = tls(&pki)
        .require_client_certificate(pki.path("ca.crt"))
        .start()
        .unwrap();
    let services = Services::start_with_registry(registry).await;
    services.sql(SCHEMA).await;
    let url = services.registry.url();

    let [cert, key] = client_cert(&pki, "client");
    let accepted = check(
        &services,
        "client.toml",
        &url,
        avro(&[ca_file(&pki, "ca"), cert, key]),
    );
    assert_reachable(&accepted, &url);

    let refused_before = services.registry.tls_refusals().len();
    let without = check(&services, "none.toml", &url, avro(&[ca_file(&pki, "ca")]));
    assert_refused(
        &without,
        &format!("schema registry at {url}: TLS failed: received fatal alert: CertificateRequired"),
        "the registry requires a client certificate: set avro.registry_client_cert_file and avro.registry_client_key_file",
    );
    // The refusal is the registry's, for the reason given.
    assert_refusals_since(
        &services.registry,
        refused_before,
        "peer sent no certificates",
    );

    let [cert, key] = client_cert(&pki, "stranger");
    let refused_before = services.registry.tls_refusals().len();
    let stranger = check(
        &services,
        "stranger.toml",
        &url,
        avro(&[ca_file(&pki, "ca"), cert, key]),
    );
    assert_refused(
        &stranger,
        &format!("schema registry at {url}: TLS failed: received fatal alert: UnknownCA"),
        &format!(
            "the registry does not trust the authority that signed avro.registry_client_cert_file ({}): use a client certificate signed by an authority the registry trusts",
            pki.path("stranger.crt").display()
        ),
    );
    assert_refusals_since(
        &services.registry,
        refused_before,
        "invalid peer certificate: UnknownIssuer",
    );
}

/// Asserts that the double refused at least one handshake since it had refused `before`, each for `why`.
fn assert_refusals_since(registry: &RegistryDouble, before: usize, why: &str) {
    let refusals = registry.tls_refusals();
    let new = &refusals[before..];
    assert!(!new.is_empty() && new.iter().all(|r| r == why), "{new:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_are_named_without_the_secret() {
    let pki = Pki::new();
    let password = format!("pw-{}", random_hex());
    let wrong_password = format!("wrong-{}", random_hex());
    let token = format!("tok-{}", random_hex());
    let wrong_token = format!("wrong-{}", random_hex());
    let secrets = [
        password.as_str(),
        wrong_password.as_str(),
        token.as_str(),
        wrong_token.as_str(),
    ];
    let basic = tls(&pki)
        .require_basic("sluice", &password)
        .start()
        .unwrap();
    let services = Services::start_with_registry(basic).await;
    services.sql(SCHEMA).await;
    let bearer = tls(&pki).require_bearer(&token).start().unwrap();
    let (basic_url, bearer_url) = (services.registry.url(), bearer.url());
    let with = |pairs: &[(&'static str, &str)]| {
        let mut all = vec![ca_file(&pki, "ca")];
        all.extend(pairs.iter().map(|(key, value)| (*key, value.to_string())));
        avro(&all)
    };

    let mut outputs = Vec::new();
    let right = check(
        &services,
        "basic.toml",
        &basic_url,
        with(&[
            ("registry_username", "sluice"),
            ("registry_password", &password),
        ]),
    );
    assert_reachable(&right, &basic_url);
    outputs.push(right.output);
    let wrong = check(
        &services,
        "wrong-password.toml",
        &basic_url,
        with(&[
            ("registry_username", "sluice"),
            ("registry_password", &wrong_password),
        ]),
    );
    assert_refused(
        &wrong,
        &format!("schema registry at {basic_url} refused the credentials (HTTP 401): Unauthorized"),
        "check avro.registry_username and avro.registry_password",
    );
    outputs.push(wrong.output);
    let none = check(&services, "no-credentials.toml", &basic_url, with(&[]));
    assert_refused(
        &none,
        &format!("schema registry at {basic_url} refused the credentials (HTTP 401): Unauthorized"),
        "the registry requires credentials: set avro.registry_username and avro.registry_password, or avro.registry_bearer_token",
    );
    outputs.push(none.output);

    let right = check(
        &services,
        "bearer.toml",
        &bearer_url,
        with(&[("registry_bearer_token", &token)]),
    );
    assert_reachable(&right, &bearer_url);
    outputs.push(right.output);
    let wrong = check(
        &services,
        "wrong-token.toml",
        &bearer_url,
        with(&[("registry_bearer_token", &wrong_token)]),
    );
    assert_refused(
        &wrong,
        &format!(
            "schema registry at {bearer_url} refused the credentials (HTTP 401): Unauthorized"
        ),
        "check avro.registry_bearer_token (it may have expired)",
    );
    outputs.push(wrong.output);

    // The daemon stops on the refusal with the same words.
    let log = assert_daemon_stops(
        &services,
        with(&[
            ("registry_username", "sluice"),
            ("registry_password", &wrong_password),
        ]),
        &[
            "refused the credentials (HTTP 401): Unauthorized",
            "check avro.registry_username and avro.registry_password",
        ],
    );
    outputs.push(log);
    for output in outputs {
        assert_no_secret(&secrets, "output", &output);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_pem_files_are_named_by_their_key() {
    let pki = Pki::new();
    let services = Services::start_with_registry(tls(&pki).start().unwrap()).await;
    services.sql(SCHEMA).await;
    let url = services.registry.url();
    let garbage = services.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let [cert, key] = client_cert(&pki, "client");

    let missing = check(
        &services,
        "missing.toml",
        &url,
        avro(&[("registry_ca_file", "/nonexistent/ca.pem".into())]),
    );
    assert_refused(
        &missing,
        &format!("schema registry at {url}: avro.registry_ca_file: cannot use /nonexistent/ca.pem: No such file or directory (os error 2)"),
        "name a readable PEM file of the authorities that sign the registry's certificate in avro.registry_ca_file",
    );

    let not_pem = check(
        &services,
        "garbage-ca.toml",
        &url,
        avro(&[("registry_ca_file", garbage.display().to_string())]),
    );
    assert_refused(
        &not_pem,
        &format!(
            "schema registry at {url}: avro.registry_ca_file: cannot use {}: holds no certificate (PEM `BEGIN CERTIFICATE`)",
            garbage.display()
        ),
        "name a readable PEM file of the authorities that sign the registry's certificate in avro.registry_ca_file",
    );

    // A key where the certificate belongs.
    let swapped = check(
        &services,
        "key-as-cert.toml",
        &url,
        avro(&[
            ca_file(&pki, "ca"),
            ("registry_client_cert_file", key.1.clone()),
            key.clone(),
        ]),
    );
    assert_refused(
        &swapped,
        &format!(
            "schema registry at {url}: avro.registry_client_cert_file: cannot use {}: holds no certificate (PEM `BEGIN CERTIFICATE`)",
            key.1
        ),
        "name a readable PEM file of the client certificate in avro.registry_client_cert_file",
    );

    let no_key = check(
        &services,
        "garbage-key.toml",
        &url,
        avro(&[
            ca_file(&pki, "ca"),
            cert.clone(),
            ("registry_client_key_file", garbage.display().to_string()),
        ]),
    );
    assert_refused(
        &no_key,
        &format!(
            "schema registry at {url}: avro.registry_client_key_file: cannot use {}: holds no unencrypted private key (PEM `BEGIN PRIVATE KEY`, `BEGIN RSA PRIVATE KEY` or `BEGIN EC PRIVATE KEY`)",
            garbage.display()
        ),
        "name a readable PEM file of the client certificate's unencrypted private key in avro.registry_client_key_file",
    );

    // The server's key with the client's certificate.
    let server_key = pki.path("server.key").display().to_string();
    let mismatched = check(
        &services,
        "mismatched.toml",
        &url,
        avro(&[
            ca_file(&pki, "ca"),
            cert.clone(),
            ("registry_client_key_file", server_key.clone()),
        ]),
    );
    assert_refused(
        &mismatched,
        &format!(
            "schema registry at {url}: avro.registry_client_key_file: cannot use {server_key}: is not the private key of the certificate in avro.registry_client_cert_file ({})",
            cert.1
        ),
        "name a readable PEM file of the client certificate's unencrypted private key in avro.registry_client_key_file",
    );
}

/// A refusal gives the same answer however often it is asked: the pipeline stops on it. A registry that
/// does not answer at all may come back: the pipeline waits for it.
#[tokio::test]
async fn refusals_are_final_and_a_refused_connection_is_retried() {
    let pki = Pki::new();
    let token = format!("tok-{}", random_hex());
    let registry = tls(&pki)
        .require_client_certificate(pki.path("ca.crt"))
        .require_bearer(&token)
        .start()
        .unwrap();
    let accepted = RegistrySettings {
        ca_file: Some(pki.path("ca.crt")),
        client_identity: Some((pki.path("client.crt"), pki.path("client.key"))),
        auth: Some(RegistryAuth::Bearer(token.clone())),
        ..RegistrySettings::for_url(&registry.url())
    };
    let register = |settings: RegistrySettings| async move {
        RegistryClient::new(&settings)
            .unwrap()
            .register("notes-value", "\"string\"")
            .await
    };
    assert_eq!(register(accepted.clone()).await.unwrap(), 1);

    let refusals = [
        (
            RegistrySettings {
                ca_file: None,
                ..accepted.clone()
            },
            "invalid peer certificate: UnknownIssuer",
        ),
        (
            RegistrySettings {
                client_identity: None,
                ..accepted.clone()
            },
            "received fatal alert: CertificateRequired",
        ),
        (
            RegistrySettings {
                auth: Some(RegistryAuth::Bearer("not-the-token".into())),
                ..accepted.clone()
            },
            "refused the credentials (HTTP 401)",
        ),
    ];
    // In TLS 1.3 the refusal of a client certificate races the request on the connection: asked often,
    // the answer must not change.
    for (settings, says) in refusals {
        for _ in 0..10 {
            let err = register(settings.clone()).await.unwrap_err();
            let text = err.to_string();
            assert!(text.contains(says), "{text}");
            assert!(!err.is_retryable(), "{text}");
            assert!(!err.is_schema_fault(), "{text}");
            assert_no_secret(&[&token], "error", &text);
        }
    }

    drop(registry);
    let err = register(accepted).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("Connection refused"), "{err}");
}
