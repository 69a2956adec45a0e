//! `[[transforms]]`: one table per step, in order. The keys a step may have depend on its `type`; a key of
//! another type, a missing one, a regex or an expression that does not compile is reported with its path
//! (`transforms[2].condition: …`) and line, like every other config problem.

use std::ops::Range;

use serde::Deserialize;
use sluice_core::config::{expand_env, EnvString, ProblemSink, Spanned};

pub use super::mask_rules::MaskWith;
pub use super::unwrap::DeleteHandling;
use super::{filter, mask, outbox, route, unwrap, KeyProblem, Transform};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransformKind {
    Route,
    Filter,
    Mask,
    Unwrap,
    Outbox,
}

impl TransformKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransformKind::Route => "route",
            TransformKind::Filter => "filter",
            TransformKind::Mask => "mask",
            TransformKind::Unwrap => "unwrap",
            TransformKind::Outbox => "outbox",
        }
    }

    /// The keys of this type besides `type` and `topics`, the required ones first.
    fn keys(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            TransformKind::Route => (&["match", "replace"], &["key_field"]),
            TransformKind::Filter => (&["condition"], &[]),
            TransformKind::Mask => (&["columns", "with"], &["salt"]),
            TransformKind::Unwrap => (&[], &["add_fields", "delete_handling"]),
            TransformKind::Outbox => (
                &["table"],
                &[
                    "route_topic",
                    "id_column",
                    "key_column",
                    "type_column",
                    "payload_column",
                    "route_by_column",
                ],
            ),
        }
    }
}

type Text = Option<Spanned<EnvString>>;
type TextList = Option<Spanned<Vec<Spanned<EnvString>>>>;

/// One `[[transforms]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformConfig {
    #[serde(rename = "type")]
    pub kind: Spanned<TransformKind>,
    /// Topic patterns (`*` wildcard) the step applies to; every topic when absent.
    pub topics: TextList,
    #[serde(rename = "match")]
    pub pattern: Text,
    pub replace: Text,
    pub key_field: Text,
    pub condition: Text,
    pub columns: TextList,
    pub with: Option<Spanned<MaskWith>>,
    pub salt: Text,
    pub add_fields: TextList,
    pub delete_handling: Option<Spanned<DeleteHandling>>,
    pub table: Text,
    /// Not `${VAR}`-expanded when read: `${routedByValue}` (or `${<route_by_column>}`) stands for the row's
    /// route column, and only the other references are environment variables.
    pub route_topic: Option<Spanned<String>>,
    pub id_column: Text,
    pub key_column: Text,
    pub type_column: Text,
    pub payload_column: Text,
    pub route_by_column: Text,
}

/// A step that cannot be built: which key, and why.
#[derive(Debug, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct BuildError {
    /// `transforms[2].condition`.
    pub key: String,
    pub message: String,
}

impl BuildError {
    pub(super) fn new(index: usize, (key, message): KeyProblem) -> BuildError {
        BuildError {
            key: format!("transforms[{index}].{key}"),
            message,
        }
    }
}

fn text(value: &Text) -> Option<&str> {
    value.as_ref().map(|v| v.get_ref().as_str())
}

fn list(value: &TextList) -> Vec<String> {
    value.as_ref().map_or_else(Vec::new, |list| {
        list.get_ref()
            .iter()
            .map(|item| item.get_ref().as_str().to_owned())
            .collect()
    })
}

impl TransformConfig {
    pub fn kind(&self) -> TransformKind {
        *self.kind.get_ref()
    }

    pub(super) fn topic_patterns(&self) -> Option<Vec<String>> {
        self.topics.as_ref().map(|_| list(&self.topics))
    }

    /// How the step at `index` is named in dead letters and metrics: `transforms[2] (filter)`.
    pub(super) fn name(&self, index: usize) -> String {
        format!("transforms[{index}] ({})", self.kind().as_str())
    }

    /// The step this table declares, as the step at `index`.
    pub(super) fn build(
        &self,
        index: usize,
        topic_prefix: &str,
    ) -> Result<Box<dyn Transform>, KeyProblem> {
        let missing = |key: &'static str| (key, "is required".to_owned());
        Ok(match self.kind() {
            TransformKind::Route => Box::new(route::Route::new(
                text(&self.pattern).ok_or_else(|| missing("match"))?,
                text(&self.replace).ok_or_else(|| missing("replace"))?,
                text(&self.key_field).unwrap_or(route::DEFAULT_KEY_FIELD),
                &self.name(index),
            )?),
            TransformKind::Filter => Box::new(filter::Filter::new(
                text(&self.condition).ok_or_else(|| missing("condition"))?,
            )?),
            TransformKind::Mask => Box::new(mask::Mask::new(
                &list(&self.columns),
                *self.with.as_ref().ok_or_else(|| missing("with"))?.get_ref(),
                text(&self.salt),
            )?),
            TransformKind::Unwrap => Box::new(unwrap::Unwrap::new(
                &list(&self.add_fields),
                self.delete_handling
                    .as_ref()
                    .map_or_else(DeleteHandling::default, |d| *d.get_ref()),
            )?),
            TransformKind::Outbox => {
                Box::new(outbox::Outbox::new(self.outbox_settings(topic_prefix)?)?)
            }
        })
    }

    fn outbox_settings(&self, topic_prefix: &str) -> Result<outbox::Settings, KeyProblem> {
        let column = |value: &Text, default: &str| text(value).unwrap_or(default).to_owned();
        let route_by = column(&self.route_by_column, "aggregatetype");
        let raw = self.route_topic.as_ref().map_or_else(
            || format!("{topic_prefix}.outbox.${{routedByValue}}"),
            |t| t.get_ref().clone(),
        );
        // The route column's placeholder survives expansion as a marker; the rest is the environment's.
        let route_topic = expand_env(&raw, |name| {
            if name == "routedByValue" || name == route_by {
                Some(outbox::ROUTE_MARKER.to_owned())
            } else {
                std::env::var(name).ok()
            }
        })
        .map_err(|message| ("route_topic", message))?;
        Ok(outbox::Settings {
            table: text(&self.table)
                .ok_or(("table", "is required".to_owned()))?
                .to_owned(),
            route_topic,
            id_column: column(&self.id_column, "id"),
            key_column: column(&self.key_column, "aggregateid"),
            type_column: column(&self.type_column, "type"),
            payload_column: column(&self.payload_column, "payload"),
            route_by_column: route_by,
        })
    }

    /// Every problem of the step at `index`: keys of another type, missing keys, and what the step's
    /// constructor refuses.
    pub fn problems(&self, index: usize, topic_prefix: &str, report: &mut ProblemSink<'_>) {
        let kind = self.kind();
        let path = |key: &str| format!("transforms[{index}].{key}");
        let (required, optional) = kind.keys();
        let mut well_formed = true;
        for (key, span) in self.present() {
            if !required.contains(&key) && !optional.contains(&key) {
                well_formed = false;
                report(
                    &path(key),
                    span,
                    format!("is not a key of a `{}` transform", kind.as_str()),
                );
            }
        }
        for key in required {
            if !self.present().iter().any(|(present, _)| present == key) {
                well_formed = false;
                report(
                    &path(key),
                    self.kind.span(),
                    format!("is required by a `{}` transform", kind.as_str()),
                );
            }
        }
        for (pattern, span) in self
            .topics
            .iter()
            .flat_map(|t| t.get_ref())
            .map(|p| (p.get_ref(), p.span()))
        {
            if pattern.as_str().trim().is_empty() {
                report(&path("topics"), span, "has an empty pattern".into());
            }
        }
        if let Some(topics) = self.topics.as_ref().filter(|t| t.get_ref().is_empty()) {
            let message =
                "is empty, so the step applies to nothing: leave `topics` out for every topic";
            report(&path("topics"), topics.span(), message.into());
        }
        if !well_formed {
            return;
        }
        if let Err((key, message)) = self.build(index, topic_prefix) {
            let span = self
                .present()
                .into_iter()
                .find(|(present, _)| *present == key)
                .map_or_else(|| self.kind.span(), |(_, span)| span);
            report(&path(key), span, message);
        }
    }

    /// The keys written, with their places.
    fn present(&self) -> Vec<(&'static str, Range<usize>)> {
        let texts = [
            ("match", &self.pattern),
            ("replace", &self.replace),
            ("key_field", &self.key_field),
            ("condition", &self.condition),
            ("salt", &self.salt),
            ("table", &self.table),
            ("id_column", &self.id_column),
            ("key_column", &self.key_column),
            ("type_column", &self.type_column),
            ("payload_column", &self.payload_column),
            ("route_by_column", &self.route_by_column),
        ];
        let mut found: Vec<(&'static str, Range<usize>)> = texts
            .into_iter()
            .filter_map(|(key, value)| value.as_ref().map(|v| (key, v.span())))
            .collect();
        for (key, value) in [("columns", &self.columns), ("add_fields", &self.add_fields)] {
            if let Some(value) = value {
                found.push((key, value.span()));
            }
        }
        if let Some(with) = &self.with {
            found.push(("with", with.span()));
        }
        if let Some(handling) = &self.delete_handling {
            found.push(("delete_handling", handling.span()));
        }
        if let Some(topic) = &self.route_topic {
            found.push(("route_topic", topic.span()));
        }
        found
    }
}
