//! `type = "outbox"`: Debezium's outbox event router. A row inserted into the outbox table becomes the
//! event it describes: on the topic its route column names, keyed by its aggregate id, the payload as the
//! value and `id` and `type` as headers. Updates and deletes of outbox rows are dropped (the table is a
//! queue, not state), and so is the outbox table's own topic. Logical decoding messages
//! (`pg_logical_emit_message`, with `capture_messages`) are routed the same way, by their prefix.

use sluice_core::event::{ChangeEvent, DecodingMessage, Op, SourceEvent, Value};

use super::{KeyProblem, OutboxEvent, Shaped, Step, Transform};
use crate::avro::legal_topic;
use sluice_core::json::value_json;

/// Stands for the route column's value in `route_topic` once the environment's references are expanded.
pub const ROUTE_MARKER: &str = "\u{0}route\u{0}";

pub struct Settings {
    /// `schema.table`.
    pub table: String,
    /// With [`ROUTE_MARKER`] where the route column's value goes.
    pub route_topic: String,
    pub id_column: String,
    pub key_column: String,
    pub type_column: String,
    pub payload_column: String,
    pub route_by_column: String,
}

pub struct Outbox {
    settings: Settings,
    schema: String,
    name: String,
}

impl Outbox {
    pub fn new(settings: Settings) -> Result<Outbox, KeyProblem> {
        let Some((schema, name)) = settings.table.split_once('.') else {
            return Err((
                "table",
                format!(
                    "`{}`: name the outbox table as schema.table (e.g. public.outbox)",
                    settings.table
                ),
            ));
        };
        let (schema, name) = (schema.to_owned(), name.to_owned());
        if !settings.route_topic.contains(ROUTE_MARKER) {
            // A fixed topic is allowed (every event on one topic), but most likely a typo.
            tracing::warn!(route_topic = %settings.route_topic.replace(ROUTE_MARKER, "${routedByValue}"), "the outbox route_topic has no ${{routedByValue}}: every outbox event goes to that one topic");
        }
        Ok(Outbox {
            settings,
            schema,
            name,
        })
    }

    fn is_outbox(&self, change: &ChangeEvent) -> bool {
        change.table.schema == self.schema && change.table.name == self.name
    }

    /// The event an inserted outbox row describes, or why it cannot be one.
    fn row_event(&self, change: &ChangeEvent) -> Result<(String, OutboxEvent), String> {
        let row = change.after.as_ref().ok_or("the insert has no row")?;
        let column = |name: &str, key: &str| -> Result<&Value, String> {
            let index = change
                .table
                .columns
                .iter()
                .position(|c| c.name == name)
                .ok_or_else(|| format!("the outbox table has no column `{name}` (set `{key}`)"))?;
            row.get(index)
                .ok_or_else(|| "the row is shorter than its table".into())
        };
        let s = &self.settings;
        let route = text(column(&s.route_by_column, "route_by_column")?)
            .ok_or_else(|| format!("`{}` is null: the event has no topic", s.route_by_column))?;
        let key = text(column(&s.key_column, "key_column")?)
            .ok_or_else(|| format!("`{}` is null: the event has no key", s.key_column))?;
        let mut headers = Vec::with_capacity(2);
        for (header, name, setting) in [
            ("id", &s.id_column, "id_column"),
            ("type", &s.type_column, "type_column"),
        ] {
            if let Some(value) = text(column(name, setting)?) {
                headers.push((header.to_owned(), value.into_bytes()));
            }
        }
        let payload = text(column(&s.payload_column, "payload_column")?);
        let event = OutboxEvent {
            key,
            payload,
            headers,
        };
        Ok((self.topic(&route), event))
    }

    /// A logical decoding message, routed by its prefix and keyed by it.
    fn message_event(&self, message: &DecodingMessage) -> Result<(String, OutboxEvent), String> {
        let payload = String::from_utf8(message.content.clone())
            .map_err(|_| "the message's content is not UTF-8 text".to_owned())?;
        let event = OutboxEvent {
            key: message.prefix.clone(),
            payload: Some(payload),
            headers: Vec::new(),
        };
        Ok((self.topic(&message.prefix), event))
    }

    /// `route_topic` with the route value in place, made a legal topic name.
    fn topic(&self, route: &str) -> String {
        legal_topic(&self.settings.route_topic.replace(ROUTE_MARKER, route))
    }
}

/// A value's text: strings and JSON as they are, anything else as its JSON text; None for null.
fn text(value: &Value) -> Option<String> {
    match value.plain() {
        Value::Null | Value::UnchangedToast => None,
        Value::String(text) | Value::Json(text) | Value::Uuid(text) => Some(text.clone()),
        other => Some(value_json(other).to_string()),
    }
}

impl Transform for Outbox {
    fn apply(&mut self, mut shaped: Shaped) -> Step {
        let routed = match &shaped.event {
            SourceEvent::Change(change) if self.is_outbox(change) => {
                if change.op != Op::Create {
                    return Step::Drop;
                }
                self.row_event(change)
            }
            SourceEvent::Message(message) => self.message_event(message),
            _ => return Step::Keep(shaped),
        };
        let routed = routed.and_then(|(topic, event)| match super::route::check_topic(&topic) {
            Ok(()) => Ok((topic, event)),
            Err(reason) => Err(format!("the route value makes topic `{topic}`, {reason}")),
        });
        match routed {
            Ok((topic, event)) => {
                shaped.topic = topic;
                shaped.dress.outbox = Some(event);
                Step::Keep(shaped)
            }
            Err(reason) => Step::Reject { shaped, reason },
        }
    }

    fn sees_messages(&self) -> bool {
        true
    }
}
