//! Publishing the events the outbox router made of outbox rows and messages: one fixed-schema topic per
//! route, keyed by the aggregate id, with the row's `id` and `type` as headers.

use std::collections::HashMap;

use super::super::error::PipelineError;
use super::core::{Core, Encoded, FixedTopic};
use crate::avro;
use crate::transforms::OutboxEvent;

/// The topics outbox events went to so far.
#[derive(Default)]
pub(super) struct OutboxEncoder {
    topics: HashMap<String, FixedTopic>,
}

impl OutboxEncoder {
    /// `event` to `topic` (created, and its schemas registered, the first time). `source` names where it
    /// came from (the outbox table, or the message prefix) in the metrics.
    pub async fn publish(
        &mut self,
        topic: &str,
        event: &OutboxEvent,
        lsn: &str,
        source: &str,
        core: &mut Core,
    ) -> Result<Encoded<'static>, PipelineError> {
        let fixed = self
            .topics
            .entry(topic.to_owned())
            .or_insert_with(|| FixedTopic::with_schemas(avro::outbox_schemas(topic)));
        let mut key = Vec::with_capacity(event.key.len() + 2);
        avro::encode_message_key_text(&event.key, &mut key);
        let mut value = Vec::with_capacity(event.payload.as_ref().map_or(1, |p| p.len() + 5));
        avro::encode_outbox(event.payload.as_deref(), &mut value);
        let mut headers = event.headers.clone();
        headers.push(("sluice.lsn".to_owned(), lsn.as_bytes().to_vec()));
        let bytes = key.len() + value.len();
        let published = core.publish_fixed(fixed, &key, &value, &headers).await?;
        if published.is_ok() {
            core.metrics.event_published(source, "c", bytes);
        }
        Ok(published)
    }
}
