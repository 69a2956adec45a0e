//! Signals: instructions a user writes into the source database (a row of the signal table, a document of
//! the signal collection) that sluice reads from its own change stream and acts on, in stream order.
//!
//! The types and their `data` are Debezium's, so that scripts written for Debezium keep working:
//! `execute-snapshot`, `stop-snapshot`, `pause-snapshot`, `resume-snapshot` and `log`. Parsing is pure; a
//! signal that does not parse is a [`SignalError`], which the connector sends to the dead-letter topic
//! (stage `signal`) before going on.

use serde_json::Value as Json;

/// What a signal asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Read the named tables (collections) again, in chunks, while the stream goes on.
    ExecuteSnapshot {
        collections: Vec<String>,
        /// Per table: a condition the re-read rows must meet (SQL for PostgreSQL, a JSON filter for MongoDB).
        conditions: Vec<Condition>,
    },
    /// Stop the incremental snapshot of the named tables, or of every table when none is named.
    StopSnapshot {
        collections: Vec<String>,
    },
    PauseSnapshot,
    ResumeSnapshot,
    /// Write a line to sluice's log (Debezium's `log` signal).
    Log {
        message: String,
    },
}

/// Debezium's `additional-conditions` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub collection: String,
    pub filter: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    #[error("unknown signal type `{0}`: sluice knows execute-snapshot, stop-snapshot, pause-snapshot, resume-snapshot and log")]
    UnknownType(String),
    #[error("signal `{kind}`: `data` is not a JSON object ({reason})")]
    NotJson { kind: String, reason: String },
    #[error("signal `{kind}`: {reason}")]
    Invalid { kind: String, reason: String },
}

impl Signal {
    /// Parses a signal from its `type` and `data` columns (fields).
    pub fn parse(kind: &str, data: Option<&str>) -> Result<Signal, SignalError> {
        let kind = kind.trim();
        let invalid = |reason: String| SignalError::Invalid {
            kind: kind.to_string(),
            reason,
        };
        let data = match data.map(str::trim).filter(|d| !d.is_empty()) {
            None => serde_json::Map::new(),
            Some(text) => match serde_json::from_str::<Json>(text) {
                Ok(Json::Object(map)) => map,
                Ok(other) => {
                    return Err(SignalError::NotJson {
                        kind: kind.to_string(),
                        reason: format!("found {}", json_kind(&other)),
                    })
                }
                Err(err) => {
                    return Err(SignalError::NotJson {
                        kind: kind.to_string(),
                        reason: err.to_string(),
                    })
                }
            },
        };
        match kind {
            "execute-snapshot" => {
                snapshot_type(&data).map_err(invalid)?;
                if data.contains_key("surrogate-key") {
                    return Err(invalid(
                        "`surrogate-key` is not supported: sluice reads chunks in primary-key order"
                            .into(),
                    ));
                }
                let collections = collections(&data).map_err(invalid)?;
                if collections.is_empty() {
                    return Err(invalid(
                        "`data-collections` names no table: write e.g. {\"data-collections\": [\"public.orders\"]}".into(),
                    ));
                }
                let conditions = conditions(&data, &collections).map_err(invalid)?;
                Ok(Signal::ExecuteSnapshot {
                    collections,
                    conditions,
                })
            }
            "stop-snapshot" => {
                snapshot_type(&data).map_err(invalid)?;
                Ok(Signal::StopSnapshot {
                    collections: collections(&data).map_err(invalid)?,
                })
            }
            "pause-snapshot" => Ok(Signal::PauseSnapshot),
            "resume-snapshot" => Ok(Signal::ResumeSnapshot),
            "log" => match data.get("message") {
                Some(Json::String(message)) => Ok(Signal::Log {
                    message: message.clone(),
                }),
                _ => Err(invalid("`message` must be a string".into())),
            },
            other => Err(SignalError::UnknownType(other.to_string())),
        }
    }

    /// The signal as Debezium writes it: its `type` column and its `data` (None when it has none).
    pub fn to_columns(&self) -> (&'static str, Option<String>) {
        match self {
            Signal::ExecuteSnapshot {
                collections,
                conditions,
            } => {
                let mut data = serde_json::json!({
                    "data-collections": collections,
                    "type": "incremental",
                });
                if !conditions.is_empty() {
                    data["additional-conditions"] = conditions
                        .iter()
                        .map(|c| serde_json::json!({"data-collection": c.collection, "filter": c.filter}))
                        .collect();
                }
                ("execute-snapshot", Some(data.to_string()))
            }
            Signal::StopSnapshot { collections } => {
                let data =
                    serde_json::json!({"data-collections": collections, "type": "incremental"});
                ("stop-snapshot", Some(data.to_string()))
            }
            Signal::PauseSnapshot => ("pause-snapshot", None),
            Signal::ResumeSnapshot => ("resume-snapshot", None),
            Signal::Log { message } => (
                "log",
                Some(serde_json::json!({"message": message}).to_string()),
            ),
        }
    }
}

fn json_kind(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// Debezium's snapshot `type`: incremental (the default) or blocking, which sluice does not do.
fn snapshot_type(data: &serde_json::Map<String, Json>) -> Result<(), String> {
    match data.get("type") {
        None | Some(Json::Null) => Ok(()),
        Some(Json::String(kind)) if kind.eq_ignore_ascii_case("incremental") => Ok(()),
        Some(Json::String(kind)) if kind.eq_ignore_ascii_case("blocking") => Err(
            "`type: blocking` is not supported: sluice snapshots incrementally, without pausing the stream; write \"incremental\" or leave `type` out".into(),
        ),
        Some(other) => Err(format!(
            "`type` must be \"incremental\", found {}",
            match other {
                Json::String(s) => format!("\"{s}\""),
                other => json_kind(other).to_string(),
            }
        )),
    }
}

fn collections(data: &serde_json::Map<String, Json>) -> Result<Vec<String>, String> {
    let names = match data.get("data-collections") {
        None | Some(Json::Null) => return Ok(Vec::new()),
        Some(Json::Array(names)) => names,
        Some(other) => {
            return Err(format!(
                "`data-collections` must be an array of names, found {}",
                json_kind(other)
            ))
        }
    };
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        match name {
            Json::String(name) if !name.trim().is_empty() => {
                let name = name.trim().to_string();
                if !out.contains(&name) {
                    out.push(name);
                }
            }
            other => {
                return Err(format!(
                    "`data-collections` must hold non-empty names, found {}",
                    json_kind(other)
                ))
            }
        }
    }
    Ok(out)
}

/// `additional-conditions` (Debezium 2.x), or the older `additional-condition`, which applies to every
/// named table.
fn conditions(
    data: &serde_json::Map<String, Json>,
    collections: &[String],
) -> Result<Vec<Condition>, String> {
    let mut out = Vec::new();
    match data.get("additional-condition") {
        None | Some(Json::Null) => {}
        Some(Json::String(filter)) if !filter.trim().is_empty() => {
            out.extend(collections.iter().map(|collection| Condition {
                collection: collection.clone(),
                filter: filter.trim().to_string(),
            }))
        }
        Some(_) => return Err("`additional-condition` must be a non-empty string".into()),
    }
    let entries = match data.get("additional-conditions") {
        None | Some(Json::Null) => return Ok(out),
        Some(Json::Array(entries)) => entries,
        Some(other) => {
            return Err(format!(
                "`additional-conditions` must be an array, found {}",
                json_kind(other)
            ))
        }
    };
    for entry in entries {
        let field = |name: &str| {
            match entry.get(name) {
            Some(Json::String(text)) if !text.trim().is_empty() => Ok(text.trim().to_string()),
            _ => Err(format!(
                "each `additional-conditions` entry needs a non-empty string `{name}`, as in {{\"data-collection\": \"public.orders\", \"filter\": \"status = 'new'\"}}"
            )),
        }
        };
        let collection = field("data-collection")?;
        if !collections.contains(&collection) {
            return Err(format!(
                "`additional-conditions` names `{collection}`, which is not in `data-collections`"
            ));
        }
        let filter = field("filter")?;
        out.retain(|c: &Condition| c.collection != collection);
        out.push(Condition { collection, filter });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execute_snapshot_as_debezium_writes_it() {
        let signal = Signal::parse(
            "execute-snapshot",
            Some(r#"{"data-collections": ["public.orders", "public.items"], "type": "INCREMENTAL",
                "additional-conditions": [{"data-collection": "public.orders", "filter": "status = 'new'"}]}"#),
        )
        .unwrap();
        assert_eq!(
            signal,
            Signal::ExecuteSnapshot {
                collections: vec!["public.orders".into(), "public.items".into()],
                conditions: vec![Condition {
                    collection: "public.orders".into(),
                    filter: "status = 'new'".into()
                }],
            }
        );
        // And back: what `sluice snapshot` writes parses to the same signal.
        let (kind, data) = signal.to_columns();
        assert_eq!(Signal::parse(kind, data.as_deref()).unwrap(), signal);
    }

    #[test]
    fn the_older_single_condition_applies_to_every_table() {
        let signal = Signal::parse(
            "execute-snapshot",
            Some(r#"{"data-collections": ["a.b", "c.d"], "additional-condition": "id > 10"}"#),
        )
        .unwrap();
        let Signal::ExecuteSnapshot { conditions, .. } = signal else {
            panic!("not a snapshot signal")
        };
        assert_eq!(conditions.len(), 2);
        assert!(conditions.iter().all(|c| c.filter == "id > 10"));
    }

    #[test]
    fn stop_pause_resume_and_log() {
        assert_eq!(
            Signal::parse("stop-snapshot", None).unwrap(),
            Signal::StopSnapshot {
                collections: vec![]
            }
        );
        assert_eq!(
            Signal::parse(
                "stop-snapshot",
                Some(r#"{"data-collections": ["public.orders"], "type": "incremental"}"#)
            )
            .unwrap(),
            Signal::StopSnapshot {
                collections: vec!["public.orders".into()]
            }
        );
        assert_eq!(
            Signal::parse("pause-snapshot", Some("")).unwrap(),
            Signal::PauseSnapshot
        );
        assert_eq!(
            Signal::parse("resume-snapshot", None).unwrap(),
            Signal::ResumeSnapshot
        );
        assert_eq!(
            Signal::parse("log", Some(r#"{"message": "hello"}"#)).unwrap(),
            Signal::Log {
                message: "hello".into()
            }
        );
    }

    #[test]
    fn malformed_signals_say_what_is_wrong() {
        let cases = [
            (
                "drop-everything",
                None,
                "unknown signal type `drop-everything`",
            ),
            ("execute-snapshot", Some("{not json"), "not a JSON object"),
            ("execute-snapshot", Some("[1]"), "found an array"),
            ("execute-snapshot", Some("{}"), "names no table"),
            (
                "execute-snapshot",
                Some(r#"{"data-collections": "public.orders"}"#),
                "must be an array",
            ),
            (
                "execute-snapshot",
                Some(r#"{"data-collections": [""]}"#),
                "non-empty names",
            ),
            (
                "execute-snapshot",
                Some(r#"{"data-collections": ["a.b"], "type": "blocking"}"#),
                "not supported",
            ),
            (
                "execute-snapshot",
                Some(r#"{"data-collections": ["a.b"], "type": 3}"#),
                "found a number",
            ),
            (
                "execute-snapshot",
                Some(r#"{"data-collections": ["a.b"], "surrogate-key": "x"}"#),
                "surrogate-key",
            ),
            (
                "execute-snapshot",
                Some(
                    r#"{"data-collections": ["a.b"], "additional-conditions": [{"data-collection": "c.d", "filter": "x"}]}"#,
                ),
                "not in `data-collections`",
            ),
            (
                "execute-snapshot",
                Some(
                    r#"{"data-collections": ["a.b"], "additional-conditions": [{"data-collection": "a.b"}]}"#,
                ),
                "non-empty string `filter`",
            ),
            ("log", Some("{}"), "`message` must be a string"),
        ];
        for (kind, data, expected) in cases {
            let err = Signal::parse(kind, data).unwrap_err().to_string();
            assert!(err.contains(expected), "{kind} {data:?}: {err}");
        }
    }
}
