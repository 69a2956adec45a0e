//! `type = "unwrap"`: Debezium's ExtractNewRecordState. The value becomes the row after the change (a flat
//! record) plus the envelope fields `add_fields` names; a delete is its tombstone alone, or (`rewrite`) the
//! row before it marked `__deleted = true` followed by the tombstone. The encoders write the flat form;
//! this step only says so, and drops truncates, which have no row to flatten.

use std::sync::Arc;

use sluice_core::event::{Op, SourceEvent};

use serde::Deserialize;

use super::{KeyProblem, Shaped, Step, Transform};
use crate::avro::{AddField, Flat};

/// `delete_handling` of unwrap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeleteHandling {
    /// Only the tombstone.
    #[default]
    Tombstone,
    /// A record of the `before` values with `__deleted = true`, then the tombstone.
    Rewrite,
}

pub struct Unwrap {
    flat: Arc<Flat>,
}

impl Unwrap {
    pub fn new(
        add_fields: &[String],
        delete_handling: DeleteHandling,
    ) -> Result<Unwrap, KeyProblem> {
        let mut fields = Vec::with_capacity(add_fields.len());
        for name in add_fields {
            let Some((_, field)) = AddField::ALL.iter().find(|(known, _)| known == name) else {
                let known: Vec<&str> = AddField::ALL.iter().map(|(known, _)| *known).collect();
                return Err((
                    "add_fields",
                    format!(
                        "`{name}` is not a field unwrap can add (one of {})",
                        known.join(", ")
                    ),
                ));
            };
            if fields.contains(field) {
                return Err(("add_fields", format!("names `{name}` twice")));
            }
            fields.push(*field);
        }
        Ok(Unwrap {
            flat: Arc::new(Flat {
                add_fields: fields,
                rewrite_deletes: delete_handling == DeleteHandling::Rewrite,
            }),
        })
    }
}

impl Transform for Unwrap {
    fn apply(&mut self, mut shaped: Shaped) -> Step {
        let op = match &shaped.event {
            SourceEvent::Change(change) => change.op,
            SourceEvent::Document(change) => change.op,
            _ => return Step::Keep(shaped),
        };
        if shaped.dress.outbox.is_some() {
            return Step::Keep(shaped);
        }
        if op == Op::Truncate {
            return Step::Drop;
        }
        shaped.dress.flat = Some(self.flat.clone());
        Step::Keep(shaped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_fields_take_debeziums_names() {
        let unwrap = Unwrap::new(
            &["op".into(), "source.ts_ms".into(), "txId".into()],
            DeleteHandling::Rewrite,
        )
        .unwrap();
        assert_eq!(
            unwrap.flat.add_fields,
            [AddField::Op, AddField::SourceTsMs, AddField::TxId]
        );
        assert!(unwrap.flat.rewrite_deletes);
        let names: Vec<&str> = unwrap
            .flat
            .add_fields
            .iter()
            .map(|f| f.field_name())
            .collect();
        assert_eq!(names, ["__op", "__source_ts_ms", "__txId"]);
    }

    #[test]
    fn unknown_or_repeated_fields_are_refused() {
        let (key, message) = Unwrap::new(&["opp".into()], DeleteHandling::Tombstone)
            .err()
            .unwrap();
        assert_eq!(key, "add_fields");
        assert!(
            message.contains("`opp`") && message.contains("source.ts_ms"),
            "{message}"
        );
        let (_, message) = Unwrap::new(&["op".into(), "op".into()], DeleteHandling::Tombstone)
            .err()
            .unwrap();
        assert!(message.contains("twice"), "{message}");
    }
}
