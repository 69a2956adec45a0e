//! Client for a Confluent-compatible schema registry (the documented REST API that Confluent, Apicurio's
//! ccompat API and Redpanda serve: register a schema under a subject, get a schema by its global id). Ids
//! are cached, so the registry is asked once per schema version. Basic or bearer authentication, and TLS
//! with a private CA or a client certificate, come from `[avro]`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

use crate::config::{Config, SubjectNameStrategy};

mod tls;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A TLS file named in `[avro]` cannot be used.
    #[error("avro.{key}: cannot use {path}: {reason}")]
    TlsFile {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// TLS with the registry failed (its certificate, the host name, the client certificate): a matter of
    /// settings, so trying again gives the same answer.
    #[error("TLS with the schema registry at {url} failed: {cause}; {fix}")]
    Tls {
        url: String,
        /// rustls' words, e.g. `invalid peer certificate: UnknownIssuer`.
        cause: String,
        /// What to change, naming the `[avro]` key.
        fix: String,
    },
    /// The registry could not be reached or failed on its side: worth retrying.
    #[error("schema registry at {url} is unreachable: {reason}")]
    Unavailable { url: String, reason: String },
    /// The registry refused the credentials: a configuration problem, not a property of the event.
    #[error("schema registry at {url} refused the credentials (HTTP {status}): {message}; {fix}")]
    Unauthorized {
        url: String,
        status: u16,
        message: String,
        /// What to change, naming the `[avro]` keys of the credentials sluice sent.
        fix: String,
    },
    /// An answer that is neither success nor about the schema: sluice stops rather than guess.
    #[error("schema registry at {url} answered HTTP {status}: {message}")]
    Unexpected {
        url: String,
        status: u16,
        message: String,
    },
    /// The registry answered and refused the schema: retrying gives the same answer.
    #[error("schema registry refused the schema for subject `{subject}` (HTTP {status}, error {code}): {message}")]
    Rejected {
        subject: String,
        status: u16,
        code: i64,
        message: String,
    },
}

impl RegistryError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, RegistryError::Unavailable { .. })
    }

    /// Whether the failure belongs to the schema (its events go to the dead-letter topic) rather than to
    /// the registry or sluice's settings (which stop sluice).
    pub fn is_schema_fault(&self) -> bool {
        matches!(self, RegistryError::Rejected { .. })
    }

    /// What the operator changes to clear a failure that is theirs to fix (for `sluice check`).
    pub fn fix(&self) -> String {
        match self {
            RegistryError::Tls { fix, .. } | RegistryError::Unauthorized { fix, .. } => fix.clone(),
            RegistryError::TlsFile { key, .. } => match *key {
                "registry_ca_file" => "name a readable PEM file of the authorities that sign the registry's certificate in avro.registry_ca_file".to_owned(),
                "registry_client_key_file" => "name a readable PEM file of the client certificate's unencrypted private key in avro.registry_client_key_file".to_owned(),
                other => format!("name a readable PEM file of the client certificate in avro.{other}"),
            },
            RegistryError::Unavailable { .. } => {
                "check `avro.registry_url` and that the registry runs".to_owned()
            }
            RegistryError::Unexpected { .. } => {
                "check that `avro.registry_url` is the registry's API (not a proxy's or another service's page)".to_owned()
            }
            RegistryError::Rejected { .. } => {
                "make the schema compatible with the subject's history, or change the subject's compatibility setting on the registry".to_owned()
            }
        }
    }
}

#[derive(Deserialize)]
struct RegisterResponse {
    id: u32,
}

#[derive(Deserialize)]
struct ErrorResponse {
    #[serde(default)]
    error_code: i64,
    #[serde(default)]
    message: String,
}

/// How to reach the registry: `[avro]` without the parts that concern encoding.
#[derive(Clone, Debug, Default)]
pub struct RegistrySettings {
    pub url: String,
    pub auth: Option<RegistryAuth>,
    /// Extra trusted certificate authorities (PEM).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub client_identity: Option<(PathBuf, PathBuf)>,
}

#[derive(Clone)]
pub enum RegistryAuth {
    Basic { username: String, password: String },
    Bearer(String),
}

impl std::fmt::Debug for RegistryAuth {
    // Credentials never reach a log line through Debug.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryAuth::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            RegistryAuth::Bearer(_) => f.write_str("Bearer(***)"),
        }
    }
}

impl RegistrySettings {
    /// The registry `[avro]` names, or None in registry-free mode.
    pub fn from_config(config: &Config) -> Option<RegistrySettings> {
        let avro = &config.avro;
        let text = |value: &Option<toml::Spanned<crate::config::EnvString>>| {
            value.as_ref().map(|v| v.get_ref().as_str().to_owned())
        };
        let auth = match (
            text(&avro.registry_username),
            text(&avro.registry_password),
            text(&avro.registry_bearer_token),
        ) {
            (Some(username), Some(password), _) => Some(RegistryAuth::Basic { username, password }),
            (_, _, Some(token)) => Some(RegistryAuth::Bearer(token)),
            _ => None,
        };
        Some(RegistrySettings {
            url: text(&avro.registry_url)?,
            auth,
            ca_file: text(&avro.registry_ca_file).map(PathBuf::from),
            client_identity: text(&avro.registry_client_cert_file)
                .zip(text(&avro.registry_client_key_file))
                .map(|(cert, key)| (PathBuf::from(cert), PathBuf::from(key))),
        })
    }

    pub fn for_url(url: &str) -> RegistrySettings {
        RegistrySettings {
            url: url.to_owned(),
            ..RegistrySettings::default()
        }
    }
}

/// Which part of a message a schema describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchemaPart {
    Key,
    Value,
}

impl SchemaPart {
    pub fn as_str(self) -> &'static str {
        match self {
            SchemaPart::Key => "key",
            SchemaPart::Value => "value",
        }
    }
}

/// The subject a schema is registered under. `record_name` is the schema's full name (for a primitive
/// schema, its type name, as Confluent's serializers do).
pub fn subject(
    strategy: SubjectNameStrategy,
    topic: &str,
    part: SchemaPart,
    record_name: &str,
) -> String {
    match strategy {
        SubjectNameStrategy::TopicName => format!("{topic}-{}", part.as_str()),
        SubjectNameStrategy::RecordName => record_name.to_owned(),
        SubjectNameStrategy::TopicRecordName => format!("{topic}-{record_name}"),
    }
}

/// The name [`subject`] uses for a schema.
pub fn record_name(schema: &apache_avro::Schema) -> String {
    use apache_avro::schema::Schema;
    match schema {
        Schema::Record(r) => r.name.fullname(None),
        Schema::Enum(e) => e.name.fullname(None),
        Schema::Fixed(f) => f.name.fullname(None),
        other => serde_json::to_value(other)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "unknown".to_owned()),
    }
}

pub struct RegistryClient {
    http: reqwest::Client,
    base: String,
    /// `base` with any password in it replaced, for messages.
    shown: String,
    /// The credentials sent, and what error messages name.
    settings: RegistrySettings,
    tls: Arc<rustls::ClientConfig>,
    /// (subject, schema text) → id.
    ids: Mutex<HashMap<(String, String), u32>>,
}

impl RegistryClient {
    pub fn new(settings: &RegistrySettings) -> Result<RegistryClient, RegistryError> {
        let builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30));
        // sluice's own rustls configuration rather than reqwest's, so that `tls::probe` connects exactly
        // as the requests do.
        let tls = tls::client_config(settings)?;
        let http = builder
            .use_preconfigured_tls(rustls::ClientConfig::clone(&tls))
            .build()
            .map_err(|err| RegistryError::Tls {
                url: crate::config::redact_secrets(&settings.url),
                cause: sluice_core::errors::error_chain(&err),
                fix: "sluice could not set up its HTTP client: report this message".to_owned(),
            })?;
        Ok(RegistryClient {
            http,
            base: settings.url.trim_end_matches('/').to_owned(),
            shown: crate::config::redact_secrets(settings.url.trim_end_matches('/')),
            settings: settings.clone(),
            tls,
            ids: Mutex::default(),
        })
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let request = self
            .http
            .request(method, url)
            .header(reqwest::header::ACCEPT, CONTENT_TYPE);
        match &self.settings.auth {
            Some(RegistryAuth::Basic { username, password }) => {
                request.basic_auth(username, Some(password))
            }
            Some(RegistryAuth::Bearer(token)) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Registers `schema` under `subject` (a no-op on the registry's side when it is already there) and
    /// returns its global id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let cache_key = (subject.to_owned(), schema.to_owned());
        if let Some(id) = self.cached(&cache_key) {
            return Ok(id);
        }
        let url = format!(
            "{}/subjects/{}/versions",
            self.base,
            percent_encode(subject)
        );
        let body = serde_json::json!({ "schema": schema, "schemaType": "AVRO" });
        let (status, text) = self
            .send(
                self.request(reqwest::Method::POST, &url)
                    .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
                    .json(&body),
            )
            .await?;
        if status.is_success() {
            let parsed: RegisterResponse =
                serde_json::from_str(&text).map_err(|err| RegistryError::Unavailable {
                    url: self.shown.clone(),
                    reason: format!("unexpected answer to a registration ({err}): {text}"),
                })?;
            self.ids
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(cache_key, parsed.id);
            return Ok(parsed.id);
        }
        if let Some(err) = self.failure(status, &text) {
            return Err(err);
        }
        let error: ErrorResponse = serde_json::from_str(&text).unwrap_or(ErrorResponse {
            error_code: 0,
            message: truncate(&text, 300).to_owned(),
        });
        // 409: incompatible with the subject's history; 422: not a valid schema. Anything else (a proxy's
        // 404 or 413, …) says nothing about the schema and must not send events to the dead-letter topic.
        if matches!(status.as_u16(), 409 | 422) {
            return Err(RegistryError::Rejected {
                subject: subject.to_owned(),
                status: status.as_u16(),
                code: error.error_code,
                message: error.message,
            });
        }
        Err(RegistryError::Unexpected {
            url: self.shown.clone(),
            status: status.as_u16(),
            message: error.message,
        })
    }

    /// The schema text registered under a global id (what a consumer does with the id in a message).
    pub async fn schema_by_id(&self, id: u32) -> Result<String, RegistryError> {
        #[derive(Deserialize)]
        struct SchemaResponse {
            schema: String,
        }
        let url = format!("{}/schemas/ids/{id}", self.base);
        let (status, text) = self.send(self.request(reqwest::Method::GET, &url)).await?;
        if let Some(err) = self.failure(status, &text) {
            return Err(err);
        }
        if !status.is_success() {
            let reason = format!("schema id {id}: HTTP {status}: {}", truncate(&text, 300));
            return Err(RegistryError::Unavailable {
                url: self.shown.clone(),
                reason,
            });
        }
        serde_json::from_str::<SchemaResponse>(&text)
            .map(|r| r.schema)
            .map_err(|err| RegistryError::Unavailable {
                url: self.shown.clone(),
                reason: format!("unexpected answer for schema id {id} ({err})"),
            })
    }

    /// Whether the registry answers at all (for `sluice check`).
    pub async fn ping(&self) -> Result<(), RegistryError> {
        let (status, body) = self
            .send(self.request(reqwest::Method::GET, &format!("{}/subjects", self.base)))
            .await?;
        if status.is_success() {
            Ok(())
        } else if let Some(err) = self.failure(status, &body) {
            Err(err)
        } else {
            let reason = format!("GET /subjects answered HTTP {status}");
            Err(RegistryError::Unavailable {
                url: self.shown.clone(),
                reason,
            })
        }
    }

    /// The answers that are about the registry rather than the request: it is busy or failing (retry), or
    /// it refuses the credentials.
    fn failure(&self, status: reqwest::StatusCode, body: &str) -> Option<RegistryError> {
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            let reason = format!("HTTP {status}: {}", truncate(body, 300));
            return Some(RegistryError::Unavailable {
                url: self.shown.clone(),
                reason,
            });
        }
        if matches!(status.as_u16(), 401 | 403) {
            // Confluent's body is `{"error_code":401,"message":"Unauthorized"}`; a proxy's may be anything.
            let message = serde_json::from_str::<ErrorResponse>(body)
                .ok()
                .filter(|error| !error.message.is_empty())
                .map_or_else(|| truncate(body, 300).to_owned(), |error| error.message);
            return Some(RegistryError::Unauthorized {
                url: self.shown.clone(),
                status: status.as_u16(),
                message,
                fix: self.credentials_fix(status.as_u16()),
            });
        }
        None
    }

    /// The fix for a 401 or 403, naming the keys of what sluice sent (never their values).
    fn credentials_fix(&self, status: u16) -> String {
        match (status, &self.settings.auth) {
            (403, _) => "the registry knows the credentials but does not allow this call: grant them access to the subjects on the registry".to_owned(),
            (_, Some(RegistryAuth::Basic { .. })) => {
                "check avro.registry_username and avro.registry_password".to_owned()
            }
            (_, Some(RegistryAuth::Bearer(_))) => {
                "check avro.registry_bearer_token (it may have expired)".to_owned()
            }
            (_, None) => "the registry requires credentials: set avro.registry_username and avro.registry_password, or avro.registry_bearer_token".to_owned(),
        }
    }

    fn cached(&self, key: &(String, String)) -> Option<u32> {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
    }

    /// Sends `request` and reads the answer: its status and body.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, String), RegistryError> {
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) => return Err(self.no_answer(err).await),
        };
        let status = response.status();
        match response.text().await {
            Ok(text) => Ok((status, text)),
            Err(err) => Err(self.no_answer(err).await),
        }
    }

    /// A request that got no answer: TLS refused (settings to fix, not worth retrying), or the registry
    /// unreachable (retry).
    async fn no_answer(&self, err: reqwest::Error) -> RegistryError {
        let mut refusal = tls::rustls_error(&err).cloned();
        // A connection that failed after it was made, without a reason: TLS may have refused it after the
        // handshake (see `tls::probe`); a fresh connection tells.
        let unexplained = refusal.is_none() && !err.is_connect() && !err.is_timeout();
        if unexplained {
            if let Some(url) = err.url().filter(|url| url.scheme() == "https") {
                refusal = tls::probe(Arc::clone(&self.tls), url).await;
            }
        }
        if let Some(refusal) = refusal {
            return RegistryError::Tls {
                url: self.shown.clone(),
                cause: refusal.to_string(),
                fix: tls::fix(&refusal, &self.settings),
            };
        }
        // reqwest's Display hides the cause ("error sending request"); the chain says what actually failed.
        RegistryError::Unavailable {
            url: self.shown.clone(),
            reason: sluice_core::errors::error_chain(&err),
        }
    }
}

/// Subjects are topic names plus `-key`/`-value`: escape anything outside the unreserved set for the path.
fn percent_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_escaped_for_the_path() {
        assert_eq!(
            percent_encode("shop.public.orders-value"),
            "shop.public.orders-value"
        );
        assert_eq!(percent_encode("a/b c"), "a%2Fb%20c");
    }

    #[tokio::test]
    async fn an_unreachable_registry_is_a_retryable_error() {
        // Port 9 on loopback: nothing listens there.
        let client = RegistryClient::new(&RegistrySettings::for_url("http://127.0.0.1:9")).unwrap();
        let err = client.register("t-value", "\"string\"").await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert!(err.to_string().contains("unreachable"), "{err}");
    }
}
