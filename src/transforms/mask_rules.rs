//! What a mask's settings mean, shared by rows (`mask.rs`) and documents (`mask_document.rs`): the
//! column patterns, and what a masked value becomes.

use serde::Deserialize;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use sluice_core::event::{Table, Value};
use sluice_core::json::value_json;

use super::wildcard_match;

/// `with` of a mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskWith {
    /// Lowercase hex SHA-256 of the salt followed by the value's JSON text.
    Hash,
    Null,
    /// `"****"`.
    Redact,
}

/// What `redact` puts in place of a value.
pub(super) const REDACTED: &str = "****";

pub(super) const FORM: &str =
    "`schema.table.column` (PostgreSQL) or `db.collection.field.path` (MongoDB)";

/// One `columns` entry: `*` matches within one segment.
pub(super) struct Pattern {
    /// Three or more, none empty.
    segments: Vec<String>,
    /// The segments after the table, dots included: a PostgreSQL column name.
    column: String,
}

impl Pattern {
    pub(super) fn parse(text: &str) -> Result<Pattern, String> {
        let segments: Vec<String> = text.split('.').map(str::to_owned).collect();
        if segments.len() < 3 {
            return Err(format!(
                "`{text}` names no column: write {FORM}, with `*` for any schema or table"
            ));
        }
        if segments.iter().any(|s| s.trim().is_empty()) {
            return Err(format!("`{text}` has an empty segment: write {FORM}"));
        }
        let column = segments[2..].join(".");
        Ok(Pattern { segments, column })
    }

    /// The pattern applies to this schema and table (or database and collection).
    pub(super) fn names_collection(&self, schema: &str, table: &str) -> bool {
        wildcard_match(&self.segments[0], schema) && wildcard_match(&self.segments[1], table)
    }

    pub(super) fn names_column(&self, table: &Table, column: &str) -> bool {
        self.names_collection(&table.schema, &table.name) && wildcard_match(&self.column, column)
    }

    /// The field path within a document, one segment a level.
    pub(super) fn path(&self) -> &[String] {
        &self.segments[2..]
    }
}

/// What a masked value becomes.
pub(super) struct Masking {
    with: MaskWith,
    /// SHA-256 with the salt already fed in, cloned for every value.
    salted: Sha256,
}

impl Masking {
    pub(super) fn new(with: MaskWith, salt: &str) -> Masking {
        Masking {
            with,
            salted: Sha256::new_with_prefix(salt.as_bytes()),
        }
    }

    pub(super) fn with(&self) -> MaskWith {
        self.with
    }

    /// Lowercase hex SHA-256 of the salt followed by `text`.
    pub(super) fn digest(&self, text: &[u8]) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let hash = self.salted.clone().chain_update(text).finalize();
        let mut hex = String::with_capacity(hash.len() * 2);
        for byte in hash {
            hex.push(char::from(DIGITS[usize::from(byte >> 4)]));
            hex.push(char::from(DIGITS[usize::from(byte & 15)]));
        }
        hex
    }

    /// Masks a row value in place. Nulls stay null; an unchanged TOAST value was not sent, so there is
    /// nothing to mask and the encoders still need to know it is absent.
    pub(super) fn mask_value(&self, value: &mut Value) {
        if matches!(value.plain(), Value::Null | Value::UnchangedToast) {
            return;
        }
        *value = match self.with {
            MaskWith::Null => Value::Null,
            MaskWith::Redact => Value::String(REDACTED.to_owned()),
            // Text is hashed as it is, without a copy through JSON.
            MaskWith::Hash => Value::String(match &*value {
                Value::String(text) | Value::Json(text) | Value::Uuid(text) => {
                    self.digest(text.as_bytes())
                }
                other => match value_json(other) {
                    Json::String(text) => self.digest(text.as_bytes()),
                    json => self.digest(json.to_string().as_bytes()),
                },
            }),
        };
    }
}
