//! The broker's refusals of the connection itself: a TLS handshake that fails, SASL credentials it rejects.
//! librdkafka reports them through its error callback and then retries with backoff for ever; caught
//! here, they make a start fail at once with what to fix instead of after a metadata timeout, and a
//! running pipeline logs each one once instead of at every reconnect.

use std::fmt;
use std::sync::Mutex;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use sluice_core::config::is_secret_key;

/// What the broker refused, in words an operator can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    kind: RefusalKind,
    /// librdkafka's reason without the broker's address (named beside it) or the retry timing.
    detail: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum RefusalKind {
    Tls,
    Sasl { mechanism: String, user: String },
}

impl Refusal {
    /// The settings that fix it.
    pub fn fix(&self) -> &'static str {
        match self.kind {
            RefusalKind::Tls => "check in [sink.kafka] `ssl.ca.location` (the authority that signed the broker's certificate), that `sink.brokers` names a host the certificate is for, and `ssl.certificate.location`/`ssl.key.location` if the broker requires a client certificate",
            RefusalKind::Sasl { .. } => "check in [sink.kafka] `sasl.username` and `sasl.password`, and that `sasl.mechanisms` is one the broker serves",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            RefusalKind::Tls => write!(f, "TLS: {}", self.detail),
            RefusalKind::Sasl { mechanism, user } => write!(
                f,
                "SASL {mechanism} authentication as user `{user}`: {}",
                self.detail
            ),
        }
    }
}

/// The last refusal seen, shared by the producer's and the admin client's contexts.
pub struct Refusals {
    mechanism: String,
    user: String,
    /// Values of secret properties, scrubbed from librdkafka's text should it ever quote one.
    secrets: Vec<String>,
    last: Mutex<Option<Refusal>>,
}

impl Refusals {
    /// `properties` are the producer's librdkafka properties.
    pub fn new(properties: &[(String, String)]) -> Refusals {
        let value = |keys: &[&str]| {
            properties
                .iter()
                .rev()
                .find(|(key, _)| keys.contains(&key.as_str()))
                .map(|(_, value)| value.clone())
        };
        Refusals {
            // librdkafka's default mechanism.
            mechanism: value(&["sasl.mechanisms", "sasl.mechanism"])
                .unwrap_or_else(|| "GSSAPI".into()),
            user: value(&["sasl.username"]).unwrap_or_default(),
            secrets: properties
                .iter()
                .filter(|(key, value)| is_secret_key(key) && !value.is_empty())
                .map(|(_, value)| value.clone())
                .collect(),
            last: Mutex::new(None),
        }
    }

    /// Records a refusal from librdkafka's error callback, logging it when it is of another kind than the
    /// last one (the retries' texts vary in their details); false for every other error.
    pub fn observe(&self, error: &KafkaError, reason: &str) -> bool {
        let kind = match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::SSL) => RefusalKind::Tls,
            Some(RDKafkaErrorCode::Authentication) => self.sasl(),
            // Handshakes retried after the first refusal come back as transport failures.
            _ if is_tls_refusal(reason) => RefusalKind::Tls,
            _ => return false,
        };
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if last.as_ref().is_none_or(|last| last.kind != kind) {
            let refusal = Refusal {
                kind,
                detail: self.scrub(&detail_of(reason)),
            };
            tracing::error!(
                fix = refusal.fix(),
                "the broker refused the connection: {refusal}"
            );
            *last = Some(refusal);
        }
        true
    }

    fn sasl(&self) -> RefusalKind {
        RefusalKind::Sasl {
            mechanism: self.mechanism.clone(),
            user: self.user.clone(),
        }
    }

    /// librdkafka's log line of a refusal already reported: a debug line, not another error at each
    /// reconnect.
    fn is_reported(&self, message: &str) -> bool {
        self.last().is_some() && (is_tls_refusal(message) || message.contains("SASL"))
    }

    pub fn last(&self) -> Option<Refusal> {
        self.last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn scrub(&self, text: &str) -> String {
        self.secrets.iter().fold(text.to_owned(), |text, secret| {
            text.replace(secret.as_str(), "***")
        })
    }
}

fn is_tls_refusal(text: &str) -> bool {
    text.contains("SSL handshake failed") || text.contains("certificate verify failed")
}

/// `sasl_ssl://host:9092/bootstrap: SASL authentication error: … (after 13ms in state AUTH_REQ)` → the middle.
fn detail_of(reason: &str) -> String {
    let reason = reason.trim();
    let without_broker = match reason.split_once("://") {
        Some((scheme, rest)) if !scheme.contains(' ') => {
            rest.split_once(": ").map_or(reason, |(_, detail)| detail)
        }
        _ => reason,
    };
    let without_timing = match without_broker.rfind(" (after ") {
        Some(at) if without_broker.ends_with(')') => &without_broker[..at],
        _ => without_broker,
    };
    without_timing.trim().to_owned()
}

/// The admin client's context: its refusals go to the same place as the producer's.
pub struct ConnectionContext {
    pub refusals: std::sync::Arc<Refusals>,
}

impl ClientContext for ConnectionContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.refusals.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.refusals.error(error, reason);
    }
}

impl Refusals {
    /// librdkafka's log callback: its levels as tracing's, refusals already reported as debug lines.
    pub fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        use RDKafkaLogLevel::*;
        match level {
            _ if self.is_reported(message) => {
                tracing::debug!(target: "librdkafka", "{facility} {message}")
            }
            Emerg | Alert | Critical | Error => {
                tracing::error!(target: "librdkafka", "{facility} {message}")
            }
            Warning => tracing::warn!(target: "librdkafka", "{facility} {message}"),
            Notice | Info => tracing::info!(target: "librdkafka", "{facility} {message}"),
            Debug => tracing::debug!(target: "librdkafka", "{facility} {message}"),
        }
    }

    /// librdkafka's error callback: refusals recorded, other errors logged.
    pub fn error(&self, error: KafkaError, reason: &str) {
        if !self.observe(&error, reason) {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusals() -> Refusals {
        Refusals::new(&[
            ("security.protocol".into(), "SASL_SSL".into()),
            ("sasl.mechanisms".into(), "SCRAM-SHA-512".into()),
            ("sasl.username".into(), "alice".into()),
            ("sasl.password".into(), "hunter2".into()),
        ])
    }

    #[test]
    fn a_sasl_refusal_names_the_mechanism_and_user_without_the_broker_prefix_or_timing() {
        let refusals = refusals();
        let error = KafkaError::Global(RDKafkaErrorCode::Authentication);
        assert!(refusals.observe(
            &error,
            "sasl_ssl://127.0.0.1:9093/bootstrap: SASL authentication error: SASL SCRAM authentication failed: broker responded with invalid-proof (after 13ms in state AUTH_REQ)"
        ));
        let refusal = refusals.last().unwrap();
        assert_eq!(
            refusal.to_string(),
            "SASL SCRAM-SHA-512 authentication as user `alice`: SASL authentication error: SASL SCRAM authentication failed: broker responded with invalid-proof"
        );
        assert!(refusal.fix().contains("sasl.password"));
    }

    #[test]
    fn a_tls_refusal_points_at_the_ca_and_other_errors_are_not_refusals() {
        let refusals = refusals();
        assert!(!refusals.observe(
            &KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure),
            "127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused"
        ));
        assert_eq!(refusals.last(), None);
        assert!(refusals.observe(
            &KafkaError::Global(RDKafkaErrorCode::SSL),
            "ssl://127.0.0.1:9093/bootstrap: SSL handshake failed: certificate verify failed (after 4ms in state SSL_HANDSHAKE)"
        ));
        let refusal = refusals.last().unwrap();
        assert_eq!(
            refusal.to_string(),
            "TLS: SSL handshake failed: certificate verify failed"
        );
        assert!(refusal.fix().contains("ssl.ca.location"));
    }

    #[test]
    fn a_secret_quoted_by_librdkafka_is_scrubbed() {
        let refusals = refusals();
        refusals.observe(
            &KafkaError::Global(RDKafkaErrorCode::Authentication),
            "SASL authentication error: bad password hunter2",
        );
        let shown = refusals.last().unwrap().to_string();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.ends_with("bad password ***"), "{shown}");
    }
}
