//! The transform stage: between the source and the encoders, the `[[transforms]]` of the config file in
//! order, each keeping an event (changed or not), dropping it, or rejecting it with a reason (the event then
//! goes to the dead-letter topic with stage `transform`, naming the step: `transforms[2] (filter)`).
//!
//! A transform sees change events (rows and documents) in source order, with the topic they are bound for
//! so far; transaction boundaries and positions pass by it, so acknowledgement never depends on what a
//! transform does, and logical decoding messages reach only the steps that ask for them (the outbox
//! router). Each step applies only to events whose topic (before it) matches its `topics`.
//! What a step changes beyond the event itself — the topic, the source table in the key, the flat form of
//! unwrap, an outbox event — travels beside it in [`Dress`], for the encoders.

mod columns;
pub mod config;
mod filter;
mod mask;
mod mask_document;
mod mask_rules;
mod outbox;
mod route;
mod unwrap;
mod view;

use std::sync::Arc;

use sluice_core::event::SourceEvent;

use crate::avro::{self, Flat};
pub use columns::column_lines;
pub use config::{TransformConfig, TransformKind};

/// A change on its way through the chain: the event, the topic it is bound for, and how it is published.
#[derive(Debug)]
pub struct Shaped {
    pub event: SourceEvent,
    /// The event's own topic, or where a route sent it.
    pub topic: String,
    pub dress: Dress,
}

/// How a transformed change is published, beyond its values.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dress {
    /// A route sent the event to a topic other tables may share: its key gains this field naming the
    /// table.
    pub key_table: Option<Arc<str>>,
    /// The route that did (`transforms[0] (route)`), named in the dead letters of a topic's schema clash.
    pub route: Option<Arc<str>>,
    /// Unwrapped: the value is the flat row (or document), not the envelope.
    pub flat: Option<Arc<Flat>>,
    /// An outbox row, published as the event it carries instead of as a row change.
    pub outbox: Option<OutboxEvent>,
}

impl Dress {
    /// Whether records dressed so have the same schemas as records dressed as `other`.
    pub fn same_form(&self, other: &Dress) -> bool {
        self.key_table == other.key_table
            && match (&self.flat, &other.flat) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
                (a, b) => a.is_none() && b.is_none(),
            }
    }
}

/// What the outbox router makes of a row inserted into the outbox table (or of a logical decoding message).
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxEvent {
    /// The aggregate id (a message's prefix): the record key, as a string.
    pub key: String,
    /// The payload as text (JSON for json/jsonb), or None for a null payload.
    pub payload: Option<String>,
    /// The `id` and `type` headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Shaped {
    /// A change (or a logical decoding message) with its own topic, nothing transformed yet; anything else
    /// is handed back.
    pub fn new(event: SourceEvent, topic_prefix: &str) -> Result<Shaped, Box<SourceEvent>> {
        match own_topic(&event, topic_prefix) {
            Some(topic) => Ok(Shaped {
                event,
                topic,
                dress: Dress::default(),
            }),
            None => Err(Box::new(event)),
        }
    }
}

/// The topic a change (or a message) goes to untransformed; None for what transforms do not see.
fn own_topic(event: &SourceEvent, topic_prefix: &str) -> Option<String> {
    Some(match event {
        SourceEvent::Change(change) => avro::topic_name(topic_prefix, &change.table),
        SourceEvent::Document(change) => {
            avro::document_topic(topic_prefix, &change.database, &change.collection)
        }
        SourceEvent::Message(_) => format!("{topic_prefix}.message"),
        _ => return None,
    })
}

/// What a step's constructor reports: the key at fault (`condition`) and why.
pub type KeyProblem = (&'static str, String);

/// What the transforms make of an event.
pub enum Outcome<'c> {
    /// Not a change: transaction boundaries and positions pass by every step.
    Pass(SourceEvent),
    Keep(Shaped),
    /// Not published (counted by the transform that dropped it: `transforms[1] (filter)`).
    Drop {
        transform: &'c str,
    },
    /// The transform failed on this event: `transform` names it (`transforms[2] (filter)`).
    Reject {
        shaped: Shaped,
        transform: String,
        reason: String,
    },
}

/// What one step makes of an event.
pub enum Step {
    Keep(Shaped),
    Drop,
    /// The step failed on the event, which it hands back unchanged.
    Reject {
        shaped: Shaped,
        reason: String,
    },
}

/// One step of the chain.
pub trait Transform: Send {
    /// The step, for one change event bound for a topic the step applies to.
    fn apply(&mut self, shaped: Shaped) -> Step;
    /// What goes to the dead-letter topic of an event an earlier step rejected: a mask masks it, so that
    /// dead letters of masked topics never carry the originals; any other step leaves it as it is.
    fn mask_rejected(&mut self, shaped: Shaped) -> Shaped {
        shaped
    }
    /// Whether the step sees logical decoding messages (the outbox router does); changes only otherwise.
    fn sees_messages(&self) -> bool {
        false
    }
    /// Whether the step hides values of `db.collection` (a mask naming it): a change there that could
    /// not be decoded goes to the dead-letter topic without its raw text.
    fn hides(&self, _namespace: (&str, &str)) -> bool {
        false
    }
}

/// A step with its place in the config and the topics it applies to.
struct Entry {
    /// `transforms[2] (filter)`.
    name: String,
    topics: Option<Vec<String>>,
    step: Box<dyn Transform>,
}

impl Entry {
    fn applies_to(&self, shaped: &Shaped) -> bool {
        if matches!(shaped.event, SourceEvent::Message(_)) && !self.step.sees_messages() {
            return false;
        }
        self.matches_topic(&shaped.topic)
    }

    fn matches_topic(&self, topic: &str) -> bool {
        self.topics
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| wildcard_match(p, topic)))
    }
}

/// The transforms, in config order.
#[derive(Default)]
pub struct Chain {
    topic_prefix: String,
    entries: Vec<Entry>,
}

impl Chain {
    /// The chain the config declares (checked by `validate`: every step builds).
    pub fn from_config(
        transforms: &[TransformConfig],
        topic_prefix: &str,
    ) -> Result<Chain, config::BuildError> {
        let mut entries = Vec::with_capacity(transforms.len());
        for (index, transform) in transforms.iter().enumerate() {
            let step = transform
                .build(index, topic_prefix)
                .map_err(|problem| config::BuildError::new(index, problem))?;
            entries.push(Entry {
                name: transform.name(index),
                topics: transform.topic_patterns(),
                step,
            });
        }
        Ok(Chain {
            topic_prefix: topic_prefix.to_owned(),
            entries,
        })
    }

    /// A chain of the given steps, applying to every topic.
    pub fn new(topic_prefix: &str, steps: Vec<Box<dyn Transform>>) -> Chain {
        let entries = steps
            .into_iter()
            .enumerate()
            .map(|(index, step)| Entry {
                name: format!("transforms[{index}]"),
                topics: None,
                step,
            })
            .collect();
        Chain {
            topic_prefix: topic_prefix.to_owned(),
            entries,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Runs a change through every step whose topics it matches, stopping at the first that drops or
    /// rejects it; anything else passes by.
    pub fn apply(&mut self, event: SourceEvent) -> Outcome<'_> {
        let Some(topic) = own_topic(&event, &self.topic_prefix) else {
            return Outcome::Pass(self.withhold_masked(event));
        };
        let mut shaped = Shaped {
            event,
            topic,
            dress: Dress::default(),
        };
        for at in 0..self.entries.len() {
            let entry = &mut self.entries[at];
            if !entry.applies_to(&shaped) {
                continue;
            }
            shaped = match entry.step.apply(shaped) {
                Step::Keep(shaped) => shaped,
                Step::Drop => {
                    return Outcome::Drop {
                        transform: &self.entries[at].name,
                    }
                }
                Step::Reject { shaped, reason } => {
                    let transform = entry.name.clone();
                    let shaped = self.mask_after(at, shaped);
                    return Outcome::Reject {
                        shaped,
                        transform,
                        reason,
                    };
                }
            };
        }
        Outcome::Keep(shaped)
    }

    /// An undecodable change of a collection a mask names, without its raw text: the masks cannot find
    /// their fields in what did not decode, and the dead letter must not carry the originals.
    fn withhold_masked(&self, event: SourceEvent) -> SourceEvent {
        let SourceEvent::Undecodable(mut change) = event else {
            return event;
        };
        let Some((db, collection)) = change.namespace.as_deref().and_then(|n| n.split_once('.'))
        else {
            return SourceEvent::Undecodable(change);
        };
        let topic = avro::document_topic(&self.topic_prefix, db, collection);
        let masked = self
            .entries
            .iter()
            .any(|entry| entry.matches_topic(&topic) && entry.step.hides((db, collection)));
        if masked {
            change.raw = "****".into();
            change
                .reason
                .push_str(" (the raw change is withheld: a mask names its collection)");
        }
        SourceEvent::Undecodable(change)
    }

    /// The masks after step `at`, applied to an event it rejected.
    fn mask_after(&mut self, at: usize, mut shaped: Shaped) -> Shaped {
        for entry in &mut self.entries[at + 1..] {
            if entry.applies_to(&shaped) {
                shaped = entry.step.mask_rejected(shaped);
            }
        }
        shaped
    }
}

/// `*` matches any run of characters (dots included); everything else matches itself.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let Some((first, rest)) = pattern.split_once('*') else {
        return pattern == text;
    };
    let Some(mut tail) = text.strip_prefix(first) else {
        return false;
    };
    let mut parts: Vec<&str> = rest.split('*').collect();
    let last = parts.pop().unwrap_or("");
    for part in parts {
        match tail.find(part) {
            Some(at) => tail = &tail[at + part.len()..],
            None => return false,
        }
    }
    tail.len() >= last.len() && tail.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::event::{DocumentChange, DocumentSource, Lsn, Op, Position, SnapshotMarker};

    /// Drops every change (`drop`), rejects every change (`bad`), or keeps it.
    struct ByName(&'static str);

    impl Transform for ByName {
        fn apply(&mut self, shaped: Shaped) -> Step {
            match self.0 {
                "drop" => Step::Drop,
                "bad" => Step::Reject {
                    shaped,
                    reason: "no good".into(),
                },
                _ => Step::Keep(shaped),
            }
        }
    }

    fn idle() -> SourceEvent {
        SourceEvent::Idle {
            position: Position::Postgres { lsn: Lsn(7) },
        }
    }

    fn insert() -> SourceEvent {
        SourceEvent::Document(DocumentChange {
            database: "shop".into(),
            collection: "orders".into(),
            op: Op::Create,
            key: r#"{"$oid":"65f0c0ffee0000000000cafe"}"#.into(),
            before: None,
            after: Some(r#"{"qty":{"$numberInt":"1"}}"#.into()),
            update: None,
            source: DocumentSource {
                replica_set: None,
                cluster_time: (1, 1),
                wall_time_ms: None,
                txn_number: None,
                lsid: None,
                resume_token: None,
                snapshot: SnapshotMarker::False,
            },
        })
    }

    fn chain(steps: Vec<Box<dyn Transform>>) -> Chain {
        Chain::new("app", steps)
    }

    #[test]
    fn the_first_step_that_drops_or_rejects_a_change_ends_the_chain() {
        let mut kept = chain(vec![Box::new(ByName("keep")), Box::new(ByName("keep"))]);
        match kept.apply(insert()) {
            Outcome::Keep(shaped) => assert_eq!(shaped.topic, "app.shop.orders"),
            _ => panic!("the change was not kept"),
        }
        let mut dropping = chain(vec![Box::new(ByName("drop")), Box::new(ByName("bad"))]);
        assert!(matches!(
            dropping.apply(insert()),
            Outcome::Drop {
                transform: "transforms[0]"
            }
        ));
        let mut rejecting = chain(vec![Box::new(ByName("bad")), Box::new(ByName("drop"))]);
        match rejecting.apply(insert()) {
            Outcome::Reject {
                shaped,
                transform,
                reason,
            } => {
                let SourceEvent::Document(change) = shaped.event else {
                    panic!("not the document");
                };
                assert_eq!(
                    change.collection, "orders",
                    "the event comes back unchanged"
                );
                assert_eq!(transform, "transforms[0]");
                assert_eq!(reason, "no good");
            }
            _ => panic!("the change was not rejected"),
        }
    }

    #[test]
    fn positions_pass_by_every_transform() {
        let mut chain = chain(vec![Box::new(ByName("drop"))]);
        assert!(matches!(
            chain.apply(idle()),
            Outcome::Pass(SourceEvent::Idle { .. })
        ));
    }

    #[test]
    fn a_step_applies_only_to_the_topics_it_names() {
        let mut chain = chain(vec![Box::new(ByName("drop"))]);
        chain.entries[0].topics = Some(vec!["app.*.customers".into()]);
        assert!(matches!(chain.apply(insert()), Outcome::Keep(_)));
        chain.entries[0].topics = Some(vec!["app.shop.*".into()]);
        assert!(matches!(chain.apply(insert()), Outcome::Drop { .. }));
    }

    #[test]
    fn an_undecodable_change_of_a_masked_collection_is_withheld() {
        let undecodable = |collection: &str| {
            SourceEvent::Undecodable(sluice_core::event::UndecodableChange {
                connector: "mongodb",
                namespace: Some(format!("shop.{collection}")),
                raw: r#"{"card":"4111"}"#.into(),
                reason: "no documentKey".into(),
                resume_token: None,
            })
        };
        let mask = mask::Mask::new(
            &["shop.orders.card".into()],
            mask_rules::MaskWith::Redact,
            None,
        );
        let mut chain = chain(vec![Box::new(mask.ok().unwrap())]);
        let Outcome::Pass(SourceEvent::Undecodable(withheld)) = chain.apply(undecodable("orders"))
        else {
            panic!("an undecodable change passes by");
        };
        assert_eq!(withheld.raw, "****");
        assert!(
            withheld
                .reason
                .starts_with("no documentKey (the raw change is withheld"),
            "{}",
            withheld.reason
        );
        let Outcome::Pass(SourceEvent::Undecodable(kept)) = chain.apply(undecodable("audit"))
        else {
            panic!("an undecodable change passes by");
        };
        assert_eq!(kept.raw, r#"{"card":"4111"}"#, "no mask names shop.audit");
    }

    #[test]
    fn wildcards_match_any_run_of_characters() {
        assert!(wildcard_match("app.*", "app.public.orders"));
        assert!(wildcard_match("*.orders", "app.public.orders"));
        assert!(wildcard_match("app.*.orders_*", "app.public.orders_2024"));
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("a*b*c", "abc"));
        assert!(!wildcard_match("a*b*c", "acb"));
        assert!(!wildcard_match("app.*.orders", "app.public.orders_2024"));
        assert!(!wildcard_match("app.public.orders", "app.public.orders2"));
        assert!(
            !wildcard_match("ab*ba", "aba"),
            "the two ends may not overlap"
        );
    }
}
