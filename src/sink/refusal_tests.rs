use super::*;

fn properties(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn scram() -> Refusals {
    Refusals::new(&properties(&[
        ("security.protocol", "SASL_SSL"),
        ("sasl.mechanisms", "SCRAM-SHA-512"),
        ("sasl.username", "alice"),
        ("sasl.password", "hunter2"),
    ]))
}

fn error(code: RDKafkaErrorCode) -> KafkaError {
    KafkaError::Global(code)
}

#[test]
fn a_sasl_refusal_names_the_mechanism_and_user_without_the_broker_prefix_or_timing() {
    let refusals = scram();
    assert!(refusals.observe(
        &error(RDKafkaErrorCode::Authentication),
        "sasl_ssl://127.0.0.1:9093/bootstrap: SASL authentication error: SASL SCRAM authentication failed: broker responded with invalid-proof (after 13ms in state AUTH_REQ)"
    ));
    let refusal = refusals.last().unwrap();
    assert_eq!(
        refusal.to_string(),
        "SASL SCRAM-SHA-512 authentication as user `alice`: SASL authentication error: SASL SCRAM authentication failed: broker responded with invalid-proof"
    );
    assert!(refusal.fix().contains("sasl.password"));
    refusals.clear();
    assert_eq!(refusals.last(), None, "a working connection clears it");
}

#[test]
fn certificates_refused_either_way_point_at_their_settings() {
    let refusals = scram();
    assert!(refusals.observe(
        &error(RDKafkaErrorCode::SSL),
        "ssl://127.0.0.1:9093/bootstrap: SSL handshake failed: certificate verify failed (after 4ms in state SSL_HANDSHAKE)"
    ));
    let refusal = refusals.last().unwrap();
    assert_eq!(
        refusal.to_string(),
        "TLS: SSL handshake failed: certificate verify failed"
    );
    assert!(refusal.fix().contains("ssl.ca.location"));
    // Retried handshakes come back as transport failures.
    assert!(refusals.observe(
        &error(RDKafkaErrorCode::BrokerTransportFailure),
        "ssl://h:9093/bootstrap: error:0A000086:SSL routines::certificate verify failed"
    ));
    assert!(refusals.observe(
        &error(RDKafkaErrorCode::BrokerTransportFailure),
        "ssl://h:9093/bootstrap: Receive failed: SSL transport error: error:0A00045C:SSL routines::tlsv13 alert certificate required"
    ));
    assert!(refusals
        .last()
        .unwrap()
        .fix()
        .contains("ssl.certificate.location"));
}

#[test]
fn hang_ups_and_token_failures_are_not_refusals() {
    let refusals = scram();
    for (code, reason) in [
        (
            RDKafkaErrorCode::BrokerTransportFailure,
            "127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused",
        ),
        (
            RDKafkaErrorCode::SSL,
            "ssl://h:9093/bootstrap: SSL handshake failed: Disconnected: connecting to a PLAINTEXT broker listener?",
        ),
        (
            RDKafkaErrorCode::Authentication,
            "sasl_ssl://h:9093/bootstrap: Disconnected: hung up from peer in state AUTH_LEGACY",
        ),
        (
            RDKafkaErrorCode::Authentication,
            "Failed to acquire SASL OAUTHBEARER token: the identity provider timed out",
        ),
    ] {
        assert!(!refusals.observe(&error(code), reason), "{reason}");
    }
    assert_eq!(refusals.last(), None);
}

#[test]
fn a_secret_quoted_by_librdkafka_is_scrubbed() {
    let refusals = scram();
    refusals.observe(
        &error(RDKafkaErrorCode::Authentication),
        "SASL authentication error: bad password hunter2",
    );
    let shown = refusals.last().unwrap().to_string();
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.ends_with("bad password ***"), "{shown}");
}

#[test]
fn the_login_is_described_as_configured() {
    let describe = |pairs: &[(&str, &str)]| Login::of(&properties(pairs)).describe();
    assert_eq!(describe(&[]), " (plaintext, no authentication)");
    assert_eq!(describe(&[("security.protocol", "ssl")]), ", over TLS");
    assert_eq!(
        describe(&[
            ("security.protocol", "SSL"),
            ("enable.ssl.certificate.verification", "false")
        ]),
        ", over TLS (the broker's certificate not verified)"
    );
    assert_eq!(
        describe(&[
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanisms", "PLAIN"),
            ("sasl.username", "u")
        ]),
        ", authenticated with SASL PLAIN as user `u`, the password sent in clear (unencrypted)"
    );
    assert_eq!(
        describe(&[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanisms", "OAUTHBEARER")
        ]),
        ", over TLS, authenticated with SASL OAUTHBEARER"
    );
}
