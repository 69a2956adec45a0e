//! The publishing loop: each event through the transform chain, then to the encoder of its shape (rows,
//! documents), whose record goes to the broker or whose rejection goes to the dead-letter topic — the one
//! way out for an event that cannot be published as it is. Positions close acknowledgement groups.

mod core;
mod documents;
mod rows;

use sluice_core::event::SourceEvent;
use tokio::sync::mpsc;

use super::error::PipelineError;
use super::transform::{Chain, Outcome};
use crate::deadletter::Stage;
use crate::sink::FailedDelivery;
pub(super) use core::Core;
use core::{Rejection, Subject};
use documents::DocumentEncoder;
pub(crate) use documents::{check_contracts, check_document_contract, collection_of_topic};
use rows::RowEncoder;

pub(super) struct Publisher {
    pub core: Core,
    transforms: Chain,
    rows: RowEncoder,
    documents: DocumentEncoder,
    /// Change events taken from the source, for the final log line.
    pub events: u64,
}

impl Publisher {
    pub fn new(core: Core, transforms: Chain, transaction_metadata: bool) -> Publisher {
        let rows = RowEncoder::new(&core.topic_prefix, transaction_metadata);
        Publisher {
            core,
            transforms,
            rows,
            documents: DocumentEncoder::default(),
            events: 0,
        }
    }

    /// Publishes what the reader sends until it ends or publishing fails, then waits for the broker.
    pub async fn publish_all(
        &mut self,
        mut events: mpsc::Receiver<SourceEvent>,
        failures: &mut mpsc::UnboundedReceiver<FailedDelivery>,
    ) -> Result<(), PipelineError> {
        loop {
            if self.core.stop_deadline.passed() {
                tracing::warn!(bound = ?self.core.shutdown_timeout, "stopping: the shutdown bound is reached; events not yet published are read again on the next run");
                break;
            }
            tokio::select! {
                biased;
                Some(failure) = failures.recv() => self.core.handle_failure(failure).await?,
                event = events.recv() => match event {
                    Some(event) => self.publish(event).await?,
                    None => break,
                },
            }
        }
        self.core.drain(failures).await
    }

    async fn publish(&mut self, event: SourceEvent) -> Result<(), PipelineError> {
        let event = match self.transforms.apply(event) {
            Outcome::Keep(event) => event,
            Outcome::Drop => return Ok(()),
            Outcome::Reject {
                event,
                transform,
                reason,
            } => return self.reject_transformed(event, transform, reason).await,
        };
        self.encode(event).await
    }

    /// An event to its encoder; a position closes its acknowledgement group.
    async fn encode(&mut self, event: SourceEvent) -> Result<(), PipelineError> {
        let core = &mut self.core;
        let rejected = match &event {
            SourceEvent::Change(change) => {
                self.events += 1;
                self.rows.publish(change, core).await?
            }
            SourceEvent::Message(message) => self.rows.publish_message(message, core).await?,
            SourceEvent::Document(change) => {
                self.events += 1;
                self.documents.publish(change, core).await?
            }
            SourceEvent::Undecodable(change) => {
                let topic = documents::undecodable_topic(change, core);
                let reason = change.reason.clone();
                Err(Rejection::new(
                    Stage::Decode,
                    &topic,
                    reason,
                    Subject::Undecodable(change),
                ))
            }
            // A signal names no topic of its own: its dead letter says which table it came from.
            SourceEvent::BadSignal(signal) => Err(Rejection::new(
                Stage::Signal,
                &core.dead_letter_topic,
                signal.reason.clone(),
                Subject::Undecodable(signal),
            )),
            SourceEvent::Commit {
                position,
                commit_time_us,
            } => {
                // The END record (or its dead letter) belongs to the transaction: the position waits
                // for it too.
                if let Err(rejection) = self.rows.end_transaction(core).await? {
                    core.dead_letter(rejection).await?;
                }
                core.tracker.close_group(position.clone(), *commit_time_us);
                Ok(())
            }
            SourceEvent::Idle { position } => {
                core.tracker.close_group(position.clone(), None);
                Ok(())
            }
        };
        match rejected {
            Ok(()) => Ok(()),
            Err(rejection) => self.core.dead_letter(rejection).await,
        }
    }

    /// An event a transform failed on: to the dead-letter topic, naming the transform.
    async fn reject_transformed(
        &mut self,
        event: SourceEvent,
        transform: String,
        reason: String,
    ) -> Result<(), PipelineError> {
        let reason = format!("{transform}: {reason}");
        let (topic, subject) = match &event {
            SourceEvent::Change(change) => (
                crate::avro::topic_name(&self.core.topic_prefix, &change.table),
                Subject::Change(change),
            ),
            SourceEvent::Document(change) => (
                crate::avro::document_topic(
                    &self.core.topic_prefix,
                    &change.database,
                    &change.collection,
                ),
                Subject::Document(change),
            ),
            // Transforms see changes only: anything else passes by them.
            _ => return self.encode(event).await,
        };
        let rejection = Rejection::new(Stage::Transform, &topic, reason, subject);
        self.core.dead_letter(rejection).await
    }
}
