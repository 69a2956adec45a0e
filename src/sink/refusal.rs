//! The broker's refusals of the connection itself: a TLS handshake that fails (its certificate, or
//! sluice's), SASL credentials it rejects. librdkafka reports them through its error callback and then
//! retries with backoff for ever; caught here, they make a start fail at once with what to fix instead of
//! after a metadata timeout, and a running pipeline logs each one once a minute instead of at every
//! reconnect. Only a refusal is caught: a broker that hangs up mid-handshake (restarting, or a plaintext
//! listener) is a transport failure, waited out like any other.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use sluice_core::config::is_secret_key;

/// How often the same kind of refusal is logged again while it lasts.
const RELOG_AFTER: Duration = Duration::from_secs(60);

/// How the producer logs in, from its librdkafka properties.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Login {
    protocol: String,
    /// None: SASL not configured (librdkafka would use GSSAPI, which this build lacks).
    mechanism: Option<String>,
    user: String,
    /// Whether the broker's certificate is checked (and its host name).
    verified: bool,
}

impl Login {
    pub fn of(properties: &[(String, String)]) -> Login {
        let value = |keys: &[&str]| {
            properties
                .iter()
                .rev()
                .find(|(key, _)| keys.contains(&key.as_str()))
                .map(|(_, value)| value.trim().to_owned())
        };
        Login {
            protocol: value(&["security.protocol"])
                .unwrap_or_else(|| "PLAINTEXT".into())
                .to_ascii_uppercase(),
            mechanism: value(&["sasl.mechanisms", "sasl.mechanism"]),
            user: value(&["sasl.username"]).unwrap_or_default(),
            verified: value(&["enable.ssl.certificate.verification"]).as_deref() != Some("false")
                && value(&["ssl.endpoint.identification.algorithm"]).as_deref() != Some("none"),
        }
    }

    /// How the connection is protected, for `check`'s pass line.
    pub fn describe(&self) -> String {
        let tls = if self.verified {
            "over TLS"
        } else {
            "over TLS (the broker's certificate not verified)"
        };
        let sasl = || {
            let mechanism = self.mechanism.as_deref().unwrap_or("GSSAPI");
            let clear = if mechanism == "PLAIN" && self.protocol == "SASL_PLAINTEXT" {
                ", the password sent in clear"
            } else {
                ""
            };
            format!(
                "authenticated with SASL {mechanism}{}{clear}",
                self.as_user()
            )
        };
        match self.protocol.as_str() {
            "SSL" => format!(", {tls}"),
            "SASL_SSL" => format!(", {tls}, {}", sasl()),
            "SASL_PLAINTEXT" => format!(", {} (unencrypted)", sasl()),
            _ => " (plaintext, no authentication)".into(),
        }
    }

    fn as_user(&self) -> String {
        if self.user.is_empty() {
            String::new()
        } else {
            format!(" as user `{}`", self.user)
        }
    }
}

/// What the broker refused, in words an operator can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    kind: RefusalKind,
    /// librdkafka's reason without the broker's address (named beside it) or the retry timing.
    detail: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum RefusalKind {
    /// sluice refused the broker's certificate.
    ServerCertificate,
    /// The broker refused sluice's client certificate, or its lack of one.
    ClientCertificate,
    Sasl(Login),
}

impl Refusal {
    /// The settings that fix it.
    pub fn fix(&self) -> &'static str {
        match &self.kind {
            RefusalKind::ServerCertificate => "check in [sink.kafka] `ssl.ca.location` (the authority that signed the broker's certificate) and that `sink.brokers` names a host the certificate is for",
            RefusalKind::ClientCertificate => "the broker requires a client certificate it trusts: check `ssl.certificate.location` and `ssl.key.location` in [sink.kafka]",
            RefusalKind::Sasl(login) => match login.mechanism.as_deref() {
                Some("OAUTHBEARER") => "check the `sasl.oauthbearer.*` settings in [sink.kafka], and that the broker accepts tokens of that issuer",
                _ => "check in [sink.kafka] `sasl.username` and `sasl.password`, and that `sasl.mechanisms` is one the broker serves",
            },
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            RefusalKind::ServerCertificate | RefusalKind::ClientCertificate => {
                write!(f, "TLS: {}", self.detail)
            }
            RefusalKind::Sasl(login) => write!(
                f,
                "SASL {} authentication{}: {}",
                login.mechanism.as_deref().unwrap_or("GSSAPI"),
                login.as_user(),
                self.detail
            ),
        }
    }
}

/// What a librdkafka error or log text is, if a refusal. The codes alone mislead: librdkafka reports a
/// hang-up during the TLS handshake as an SSL error, and later failed handshakes as transport failures.
fn classify(code: Option<RDKafkaErrorCode>, text: &str, login: &Login) -> Option<RefusalKind> {
    const CLIENT_ALERTS: [&str; 4] = [
        "alert certificate required",
        "alert unknown ca",
        "alert bad certificate",
        "alert certificate unknown",
    ];
    if CLIENT_ALERTS.iter().any(|alert| text.contains(alert)) {
        return Some(RefusalKind::ClientCertificate);
    }
    if text.contains("certificate verify failed") {
        return Some(RefusalKind::ServerCertificate);
    }
    if text.contains("Disconnected") || text.contains("Failed to acquire SASL OAUTHBEARER token") {
        return None;
    }
    match code {
        Some(RDKafkaErrorCode::SSL) => Some(RefusalKind::ServerCertificate),
        Some(RDKafkaErrorCode::Authentication) => Some(RefusalKind::Sasl(login.clone())),
        None if text.contains("SASL authentication error") => {
            Some(RefusalKind::Sasl(login.clone()))
        }
        _ => None,
    }
}

/// The refusals seen since the connection last worked, shared with the producer's context.
pub struct Refusals {
    login: Login,
    /// Values of secret properties, scrubbed from librdkafka's text should it ever quote one.
    secrets: Vec<String>,
    /// The last refusal, and when its kind was last logged.
    last: Mutex<Option<(Refusal, Instant)>>,
    /// `last` is set: read on every delivery report, so without the lock.
    refused: AtomicBool,
}

impl Refusals {
    /// `properties` are the producer's librdkafka properties.
    pub fn new(properties: &[(String, String)]) -> Refusals {
        Refusals {
            login: Login::of(properties),
            secrets: properties
                .iter()
                .filter(|(key, value)| is_secret_key(key) && !value.is_empty())
                .map(|(_, value)| value.clone())
                .collect(),
            last: Mutex::new(None),
            refused: AtomicBool::new(false),
        }
    }

    /// Records a refusal from librdkafka's error callback, logging it unless one of its kind was logged
    /// in the last minute; false for every other error.
    fn observe(&self, error: &KafkaError, reason: &str) -> bool {
        let Some(kind) = classify(error.rdkafka_error_code(), reason, &self.login) else {
            return false;
        };
        let refusal = Refusal {
            kind,
            detail: self.scrub(&detail_of(reason)),
        };
        let logged_at = {
            let mut last = self.lock();
            let fresh = last
                .as_ref()
                .is_none_or(|(seen, at)| seen.kind != refusal.kind || at.elapsed() > RELOG_AFTER);
            let at = if fresh {
                Instant::now()
            } else {
                last.as_ref().map_or_else(Instant::now, |(_, at)| *at)
            };
            *last = Some((refusal.clone(), at));
            self.refused.store(true, Ordering::Release);
            fresh
        };
        if logged_at {
            tracing::error!(
                fix = refusal.fix(),
                "the broker refused the connection: {refusal}"
            );
        }
        true
    }

    pub fn last(&self) -> Option<Refusal> {
        self.lock().as_ref().map(|(refusal, _)| refusal.clone())
    }

    /// The connection works again: a later refusal is news.
    pub fn clear(&self) {
        if self.refused.swap(false, Ordering::AcqRel) {
            *self.lock() = None;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Refusal, Instant)>> {
        self.last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn scrub(&self, text: &str) -> String {
        self.secrets.iter().fold(text.to_owned(), |text, secret| {
            text.replace(secret.as_str(), "***")
        })
    }

    /// librdkafka's log callback: its levels as tracing's; its line of each failed connection attempt
    /// that the error callback reports as a refusal, a debug line.
    pub fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        use RDKafkaLogLevel::*;
        let message = self.scrub(message);
        let refusal = facility == "FAIL" && classify(None, &message, &self.login).is_some();
        match level {
            _ if refusal => tracing::debug!(target: "librdkafka", "{facility} {message}"),
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
            tracing::error!("librdkafka: {error}: {}", self.scrub(reason));
        }
    }
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

#[cfg(test)]
#[path = "refusal_tests.rs"]
mod tests;
