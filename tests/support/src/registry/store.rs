//! The registry double's state and rules: global schema ids, per-subject versions, and the error codes
//! Confluent documents for the cases sluice can run into.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// An answer other than success: HTTP status plus Confluent's `error_code` and `message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub status: u16,
    pub code: u32,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: u32, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn body(&self) -> Value {
        json!({ "error_code": self.code, "message": self.message })
    }

    fn subject_not_found(subject: &str) -> ApiError {
        ApiError::new(404, 40401, format!("Subject '{subject}' not found."))
    }

    pub fn invalid_schema(detail: impl std::fmt::Display) -> ApiError {
        ApiError::new(422, 42201, format!("Invalid schema: {detail}"))
    }
}

/// A schema under a subject, as the subject-version endpoints describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SubjectVersion {
    pub subject: String,
    pub id: u32,
    pub version: u32,
    pub schema: String,
}

impl SubjectVersion {
    pub fn body(&self) -> Value {
        json!({ "subject": self.subject, "id": self.id, "version": self.version, "schema": self.schema })
    }
}

pub(crate) enum VersionRef {
    Latest,
    Number(u32),
}

struct StoredSchema {
    /// The text as first registered; returned verbatim.
    text: String,
    /// What identity is decided on, so whitespace and key order do not make a schema new.
    parsed: Value,
}

#[derive(Default)]
pub(crate) struct Store {
    /// Schema id N is at index N - 1.
    schemas: Vec<StoredSchema>,
    /// Subject → schema ids; version N is at index N - 1.
    subjects: BTreeMap<String, Vec<u32>>,
    /// Registrations under subjects starting with this are refused with 409 ("" refuses all).
    reject_prefix: Option<String>,
    /// The exact `Authorization` header every call must carry (401 otherwise).
    pub(crate) required_authorization: Option<String>,
    /// Every call fails with 503, as a registry that is down behind a load balancer answers.
    pub(crate) unavailable: bool,
    /// Why each refused TLS handshake failed, in order.
    pub(crate) tls_refusals: Vec<String>,
}

impl Store {
    /// Registers `schema` under `subject` and returns its global id. A schema the subject already has
    /// keeps its id and version; a schema known under another subject keeps its id and gets a new version.
    pub fn register(&mut self, subject: &str, schema: &str) -> Result<u32, ApiError> {
        let parsed = parse_schema(schema)?;
        if self
            .reject_prefix
            .as_deref()
            .is_some_and(|prefix| subject.starts_with(prefix))
        {
            return Err(ApiError::new(
                409,
                409,
                format!("Schema being registered is incompatible with an earlier schema for subject \"{subject}\""),
            ));
        }
        let id = match self.find(&parsed) {
            Some(id) => id,
            None => {
                self.schemas.push(StoredSchema {
                    text: schema.to_owned(),
                    parsed,
                });
                self.schemas.len() as u32
            }
        };
        let versions = self.subjects.entry(subject.to_owned()).or_default();
        if !versions.contains(&id) {
            versions.push(id);
        }
        Ok(id)
    }

    /// Finds `schema` among the versions of `subject`.
    pub fn lookup(&self, subject: &str, schema: &str) -> Result<SubjectVersion, ApiError> {
        let parsed = parse_schema(schema)?;
        let versions = self
            .subjects
            .get(subject)
            .ok_or_else(|| ApiError::subject_not_found(subject))?;
        let id = self.find(&parsed).filter(|id| versions.contains(id));
        let id = id.ok_or_else(|| ApiError::new(404, 40403, "Schema not found"))?;
        let version = versions
            .iter()
            .position(|v| *v == id)
            .expect("id is among the versions") as u32
            + 1;
        Ok(self.subject_version(subject, version, id))
    }

    pub fn schema_by_id(&self, id: u32) -> Result<&str, ApiError> {
        let index = (id as usize).checked_sub(1);
        index
            .and_then(|index| self.schemas.get(index))
            .map(|stored| stored.text.as_str())
            .ok_or_else(|| ApiError::new(404, 40403, format!("Schema {id} not found")))
    }

    pub fn subjects(&self) -> Vec<String> {
        self.subjects.keys().cloned().collect()
    }

    pub fn versions(&self, subject: &str) -> Result<Vec<u32>, ApiError> {
        let versions = self
            .subjects
            .get(subject)
            .ok_or_else(|| ApiError::subject_not_found(subject))?;
        Ok((1..=versions.len() as u32).collect())
    }

    pub fn version(&self, subject: &str, which: VersionRef) -> Result<SubjectVersion, ApiError> {
        let versions = self
            .subjects
            .get(subject)
            .ok_or_else(|| ApiError::subject_not_found(subject))?;
        let version = match which {
            VersionRef::Latest => versions.len() as u32,
            VersionRef::Number(n) => n,
        };
        let id = (version as usize)
            .checked_sub(1)
            .and_then(|index| versions.get(index))
            .ok_or_else(|| ApiError::new(404, 40402, format!("Version {version} not found.")))?;
        Ok(self.subject_version(subject, version, *id))
    }

    /// Every schema with its id, in id order.
    pub fn schemas(&self) -> Vec<(u32, String)> {
        self.schemas
            .iter()
            .enumerate()
            .map(|(index, stored)| (index as u32 + 1, stored.text.clone()))
            .collect()
    }

    pub fn set_reject_prefix(&mut self, prefix: Option<&str>) {
        self.reject_prefix = prefix.map(str::to_owned);
    }

    fn find(&self, parsed: &Value) -> Option<u32> {
        self.schemas
            .iter()
            .position(|stored| stored.parsed == *parsed)
            .map(|index| index as u32 + 1)
    }

    fn subject_version(&self, subject: &str, version: u32, id: u32) -> SubjectVersion {
        let schema = self.schemas[id as usize - 1].text.clone();
        SubjectVersion {
            subject: subject.to_owned(),
            id,
            version,
            schema,
        }
    }
}

/// An Avro schema is JSON; anything else is refused as Confluent does (42201).
fn parse_schema(schema: &str) -> Result<Value, ApiError> {
    serde_json::from_str(schema).map_err(ApiError::invalid_schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDER: &str =
        r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"long"}]}"#;
    const ORDER_SPACED: &str = r#"{ "type": "record", "name": "Order",
        "fields": [ { "name": "id", "type": "long" } ] }"#;
    const ORDER_V2: &str = r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"long"},{"name":"n","type":["null","string"],"default":null}]}"#;

    #[test]
    fn the_same_schema_keeps_its_id_and_version_whatever_the_whitespace() {
        let mut store = Store::default();
        assert_eq!(store.register("orders-value", ORDER), Ok(1));
        assert_eq!(store.register("orders-value", ORDER_SPACED), Ok(1));
        assert_eq!(store.versions("orders-value"), Ok(vec![1]));
        assert_eq!(store.schemas(), vec![(1, ORDER.to_owned())]);
    }

    #[test]
    fn ids_are_global_and_versions_per_subject() {
        let mut store = Store::default();
        assert_eq!(store.register("orders-value", ORDER), Ok(1));
        assert_eq!(store.register("orders-value", ORDER_V2), Ok(2));
        assert_eq!(store.register("archive-value", ORDER_V2), Ok(2));
        assert_eq!(
            store
                .version("orders-value", VersionRef::Latest)
                .unwrap()
                .version,
            2
        );
        let archived = store
            .version("archive-value", VersionRef::Number(1))
            .unwrap();
        assert_eq!((archived.id, archived.version), (2, 1));
        assert_eq!(
            store.lookup("orders-value", ORDER_SPACED).unwrap().version,
            1
        );
        assert_eq!(
            store.subjects(),
            vec!["archive-value".to_owned(), "orders-value".to_owned()]
        );
    }

    #[test]
    fn misses_carry_confluent_error_codes() {
        let mut store = Store::default();
        store.register("orders-value", ORDER).unwrap();
        assert_eq!(store.lookup("nope", ORDER).unwrap_err().code, 40401);
        assert_eq!(
            store.lookup("orders-value", ORDER_V2).unwrap_err().code,
            40403
        );
        assert_eq!(store.schema_by_id(0).unwrap_err().code, 40403);
        assert_eq!(store.schema_by_id(2).unwrap_err().code, 40403);
        assert_eq!(
            store
                .version("orders-value", VersionRef::Number(2))
                .unwrap_err()
                .code,
            40402
        );
        assert_eq!(
            store
                .register("orders-value", "{not json")
                .unwrap_err()
                .code,
            42201
        );
    }

    #[test]
    fn reject_all_refuses_registrations_with_409() {
        let mut store = Store::default();
        store.set_reject_prefix(Some(""));
        let err = store.register("orders-value", ORDER).unwrap_err();
        assert_eq!((err.status, err.code), (409, 409));
        assert!(store.subjects().is_empty());
        store.set_reject_prefix(None);
        assert_eq!(store.register("orders-value", ORDER), Ok(1));
    }
}
