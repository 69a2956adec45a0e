//! The publishing loop: each event through the transform chain, then to the encoder of its shape (rows,
//! documents), whose record goes to the broker or whose rejection goes to the dead-letter topic — the one
//! way out for an event that cannot be published as it is. Positions close acknowledgement groups.

mod core;
mod documents;
mod last_marker;
mod outbox;
mod row_headers;
mod rows;
mod shared;

use sluice_core::event::{ChangeEvent, Op, SnapshotMarker, SourceEvent};
use tokio::sync::mpsc;

use super::error::PipelineError;
use crate::deadletter::Stage;
use crate::sink::FailedDelivery;
use crate::transforms::{Chain, Dress, OutboxEvent, Outcome, Shaped};
pub(super) use core::Core;
use core::{Rejection, Subject};
use documents::DocumentEncoder;
pub(crate) use documents::{check_contracts, check_document_contract, collection_of_topic};
use outbox::OutboxEncoder;
use rows::RowEncoder;
pub(super) use rows::RowSettings;

pub(super) struct Publisher {
    pub core: Core,
    transforms: Chain,
    rows: RowEncoder,
    documents: DocumentEncoder,
    outbox: OutboxEncoder,
    /// Change events taken from the source, for the final log line.
    pub events: u64,
}

impl Publisher {
    pub fn new(core: Core, transforms: Chain, rows: RowSettings) -> Publisher {
        let rows = RowEncoder::new(&core.topic_prefix, rows);
        Publisher {
            core,
            transforms,
            rows,
            documents: DocumentEncoder::default(),
            outbox: OutboxEncoder::default(),
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
        // The snapshot's last row or document: its `last` marker must reach the broker, whatever becomes
        // of it.
        let last = match &event {
            SourceEvent::Change(c) if c.source.snapshot == SnapshotMarker::Last => {
                Some(Some(ChangeEvent {
                    op: Op::Read,
                    before: None,
                    after: None,
                    table: c.table.clone(),
                    source: c.source.clone(),
                }))
            }
            SourceEvent::Document(d) if d.source.snapshot == SnapshotMarker::Last => Some(None),
            _ => None,
        };
        self.transform_and_encode(event).await?;
        let marked = match &last {
            Some(Some(_)) => self.rows.last_marker.ensure(&mut self.core).await?,
            Some(None) => self.documents.last_marker.ensure(&mut self.core).await?,
            None => true,
        };
        match last {
            _ if marked => {}
            Some(Some(end)) => self.rows.publish_end(&end, &mut self.core).await?,
            _ => tracing::warn!("the snapshot's last document did not reach its topic and no document before it did: no event carries source.snapshot = \"last\""),
        }
        Ok(())
    }

    async fn transform_and_encode(&mut self, event: SourceEvent) -> Result<(), PipelineError> {
        if self.transforms.is_empty() {
            return self.encode(event, None).await;
        }
        match self.transforms.apply(event) {
            Outcome::Pass(event) => self.encode(event, None).await,
            Outcome::Keep(shaped) => {
                let Shaped {
                    event,
                    topic,
                    dress,
                } = shaped;
                self.encode(event, Some((&topic, &dress))).await
            }
            Outcome::Drop { transform } => {
                self.core.metrics.transform_dropped(transform);
                Ok(())
            }
            Outcome::Reject {
                shaped,
                transform,
                reason,
            } => self.reject_transformed(shaped, transform, reason).await,
        }
    }

    /// An event to its encoder (bound for `shape`'s topic and dressed by the transforms, when there are
    /// any); a position closes its acknowledgement group.
    async fn encode(
        &mut self,
        event: SourceEvent,
        shape: Option<(&str, &Dress)>,
    ) -> Result<(), PipelineError> {
        if let Some((
            topic,
            Dress {
                outbox: Some(outbox),
                ..
            },
        )) = shape
        {
            return self.publish_outbox(&event, topic, outbox).await;
        }
        let event = match event {
            SourceEvent::Change(change) => SourceEvent::Change(self.rows.in_representation(change)),
            other => other,
        };
        let core = &mut self.core;
        let rejected = match &event {
            SourceEvent::Change(change) => {
                self.events += 1;
                self.rows.publish(change, shape, core).await?
            }
            SourceEvent::Message(message) => self.rows.publish_message(message, core).await?,
            SourceEvent::Document(change) => {
                self.events += 1;
                self.documents.publish(change, shape, core).await?
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

    /// The event the outbox router made of an outbox row or a message.
    async fn publish_outbox(
        &mut self,
        event: &SourceEvent,
        topic: &str,
        outbox: &OutboxEvent,
    ) -> Result<(), PipelineError> {
        let (lsn, source) = match event {
            SourceEvent::Change(change) => (change.source.lsn, change.table.qualified_name()),
            SourceEvent::Message(message) => (message.lsn, message.prefix.clone()),
            _ => return Ok(()),
        };
        self.events += 1;
        let core = &mut self.core;
        let lsn = lsn.to_string();
        if let Err(rejection) = self
            .outbox
            .publish(topic, outbox, &lsn, &source, core)
            .await?
        {
            core.dead_letter(rejection).await?;
        }
        Ok(())
    }

    /// An event a transform failed on: to the dead-letter topic, naming the transform.
    async fn reject_transformed(
        &mut self,
        shaped: Shaped,
        transform: String,
        reason: String,
    ) -> Result<(), PipelineError> {
        let reason = format!("{transform}: {reason}");
        let subject = match &shaped.event {
            SourceEvent::Change(change) => Subject::Change(change),
            SourceEvent::Document(change) => Subject::Document(change),
            SourceEvent::Message(message) => Subject::Record {
                key: Some(message.prefix.clone().into_bytes()),
                value: Some(message.content.clone()),
                headers: Vec::new(),
            },
            // Transforms see changes and messages only: anything else passes by them.
            _ => return self.encode(shaped.event, None).await,
        };
        let rejection = Rejection::new(Stage::Transform, &shaped.topic, reason, subject);
        self.core.dead_letter(rejection).await
    }
}
