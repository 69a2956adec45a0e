//! The transform stage: between the source and the encoders, an ordered chain of per-event steps, each
//! keeping an event (changed or not), dropping it, or rejecting it with a reason (the event then goes to
//! the dead-letter topic with stage `transform`, naming the step).
//!
//! This is where routing, filtering, masking, unwrapping and the outbox router belong: a transform sees
//! change events (rows and documents) in source order; transaction boundaries, positions and messages
//! pass by it, so acknowledgement never depends on what a transform does. The chain is empty until the
//! config declares transforms.

use sluice_core::event::SourceEvent;

/// What a transform makes of an event.
pub enum Outcome {
    Keep(SourceEvent),
    /// Not published (counted by the transform that dropped it).
    Drop,
    /// The transform failed on this event: `transform` names it (`transforms[2] (filter)`).
    Reject {
        event: SourceEvent,
        transform: String,
        reason: String,
    },
}

/// What one step makes of an event.
pub enum Step {
    Keep(SourceEvent),
    Drop,
    /// The step failed on the event, which it hands back unchanged.
    Reject {
        event: SourceEvent,
        reason: String,
    },
}

/// One step of the chain.
pub trait Transform: Send {
    /// How the step is named in dead letters and logs: its place in the config and its type.
    fn name(&self) -> &str;
    /// The step, for one change event.
    fn apply(&mut self, event: SourceEvent) -> Step;
}

/// The transforms, in config order.
#[derive(Default)]
pub struct Chain {
    steps: Vec<Box<dyn Transform>>,
}

impl Chain {
    pub fn new(steps: Vec<Box<dyn Transform>>) -> Chain {
        Chain { steps }
    }

    /// Runs `event` through every step, stopping at the first that drops or rejects it.
    pub fn apply(&mut self, event: SourceEvent) -> Outcome {
        if self.steps.is_empty() || !is_change(&event) {
            return Outcome::Keep(event);
        }
        let mut event = event;
        for step in &mut self.steps {
            event = match step.apply(event) {
                Step::Keep(event) => event,
                Step::Drop => return Outcome::Drop,
                Step::Reject { event, reason } => {
                    return Outcome::Reject {
                        event,
                        transform: step.name().to_owned(),
                        reason,
                    }
                }
            };
        }
        Outcome::Keep(event)
    }
}

/// The events transforms see: changes of rows and documents.
fn is_change(event: &SourceEvent) -> bool {
    matches!(event, SourceEvent::Change(_) | SourceEvent::Document(_))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::event::{DocumentChange, DocumentSource, Lsn, Op, Position, SnapshotMarker};

    /// Drops every change (`drop`), rejects every change (`bad`), or keeps it.
    struct ByName(&'static str);

    impl Transform for ByName {
        fn name(&self) -> &str {
            "transforms[0] (test)"
        }
        fn apply(&mut self, event: SourceEvent) -> Step {
            match self.0 {
                "drop" => Step::Drop,
                "bad" => Step::Reject {
                    event,
                    reason: "no good".into(),
                },
                _ => Step::Keep(event),
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

    #[test]
    fn the_first_step_that_drops_or_rejects_a_change_ends_the_chain() {
        let mut kept = Chain::new(vec![Box::new(ByName("keep")), Box::new(ByName("keep"))]);
        assert!(matches!(
            kept.apply(insert()),
            Outcome::Keep(SourceEvent::Document(_))
        ));
        let mut dropping = Chain::new(vec![Box::new(ByName("drop")), Box::new(ByName("bad"))]);
        assert!(matches!(dropping.apply(insert()), Outcome::Drop));
        let mut rejecting = Chain::new(vec![Box::new(ByName("bad")), Box::new(ByName("drop"))]);
        match rejecting.apply(insert()) {
            Outcome::Reject {
                event: SourceEvent::Document(change),
                transform,
                reason,
            } => {
                assert_eq!(
                    change.collection, "orders",
                    "the event comes back unchanged"
                );
                assert_eq!(transform, "transforms[0] (test)");
                assert_eq!(reason, "no good");
            }
            _ => panic!("the change was not rejected"),
        }
    }

    #[test]
    fn positions_pass_by_every_transform() {
        let mut chain = Chain::new(vec![Box::new(ByName("drop"))]);
        assert!(matches!(
            chain.apply(idle()),
            Outcome::Keep(SourceEvent::Idle { .. })
        ));
    }

    #[test]
    fn an_empty_chain_keeps_everything() {
        let mut chain = Chain::default();
        assert!(matches!(chain.apply(idle()), Outcome::Keep(_)));
    }
}
