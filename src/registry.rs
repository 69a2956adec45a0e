//! Client for a Confluent-compatible schema registry (the documented REST API: register a schema under a
//! subject, get its global id). Ids are cached, so the registry is asked once per schema version.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry could not be reached or failed on its side: worth retrying.
    #[error("schema registry at {url} is unreachable: {reason}")]
    Unavailable { url: String, reason: String },
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

pub struct RegistryClient {
    http: reqwest::Client,
    base: String,
    /// (subject, schema text) → id.
    ids: Mutex<HashMap<(String, String), u32>>,
}

impl RegistryClient {
    pub fn new(base_url: &str) -> Result<RegistryClient, RegistryError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|err| RegistryError::Unavailable {
                url: base_url.to_owned(),
                reason: err.to_string(),
            })?;
        Ok(RegistryClient {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
            ids: Mutex::default(),
        })
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
        let response = self
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .header(reqwest::header::ACCEPT, CONTENT_TYPE)
            .json(&body)
            .send()
            .await
            .map_err(|err| self.unavailable(err))?;
        let status = response.status();
        let text = response.text().await.map_err(|err| self.unavailable(err))?;
        if status.is_success() {
            let parsed: RegisterResponse =
                serde_json::from_str(&text).map_err(|err| RegistryError::Unavailable {
                    url: self.base.clone(),
                    reason: format!("unexpected answer to a registration ({err}): {text}"),
                })?;
            self.ids
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(cache_key, parsed.id);
            return Ok(parsed.id);
        }
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            let reason = format!("HTTP {status}: {}", truncate(&text, 300));
            return Err(RegistryError::Unavailable {
                url: self.base.clone(),
                reason,
            });
        }
        let error: ErrorResponse = serde_json::from_str(&text).unwrap_or(ErrorResponse {
            error_code: 0,
            message: truncate(&text, 300).to_owned(),
        });
        Err(RegistryError::Rejected {
            subject: subject.to_owned(),
            status: status.as_u16(),
            code: error.error_code,
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
        let response = self
            .http
            .get(&url)
            .header(reqwest::header::ACCEPT, CONTENT_TYPE)
            .send()
            .await
            .map_err(|err| self.unavailable(err))?;
        let status = response.status();
        let text = response.text().await.map_err(|err| self.unavailable(err))?;
        if !status.is_success() {
            let reason = format!("schema id {id}: HTTP {status}: {}", truncate(&text, 300));
            return Err(RegistryError::Unavailable {
                url: self.base.clone(),
                reason,
            });
        }
        serde_json::from_str::<SchemaResponse>(&text)
            .map(|r| r.schema)
            .map_err(|err| RegistryError::Unavailable {
                url: self.base.clone(),
                reason: format!("unexpected answer for schema id {id} ({err})"),
            })
    }

    /// Whether the registry answers at all (for `sluice check`).
    pub async fn ping(&self) -> Result<(), RegistryError> {
        let response = self
            .http
            .get(format!("{}/subjects", self.base))
            .header(reqwest::header::ACCEPT, CONTENT_TYPE)
            .send()
            .await
            .map_err(|err| self.unavailable(err))?;
        if response.status().is_success() {
            Ok(())
        } else {
            let reason = format!("GET /subjects answered HTTP {}", response.status());
            Err(RegistryError::Unavailable {
                url: self.base.clone(),
                reason,
            })
        }
    }

    fn cached(&self, key: &(String, String)) -> Option<u32> {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
    }

    fn unavailable(&self, err: reqwest::Error) -> RegistryError {
        // reqwest's Display hides the cause ("error sending request"); the chain says what actually failed.
        let mut reason = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            reason.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        RegistryError::Unavailable {
            url: self.base.clone(),
            reason,
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
        let client = RegistryClient::new("http://127.0.0.1:9").unwrap();
        let err = client.register("t-value", "\"string\"").await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert!(err.to_string().contains("unreachable"), "{err}");
    }
}
