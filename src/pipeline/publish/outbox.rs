//! Publishing the events the outbox router made of outbox rows and messages: one fixed-schema topic per
//! route, keyed by the aggregate id, with the row's `id` and `type` as headers. The value is
//! `{payload: string}`, or the record of the topic's contract written from the payload's JSON.

use std::collections::HashMap;

use super::super::error::PipelineError;
use super::core::{Core, Encoded, FixedTopic, Rejection, Subject};
use crate::avro::{self, TypedDocument};
use crate::contracts::ContractError;
use crate::deadletter::Stage;
use crate::transforms::OutboxEvent;

/// The topics outbox events went to so far.
#[derive(Default)]
pub(super) struct OutboxEncoder {
    topics: HashMap<String, Route>,
}

/// One route's topic, and the record of its contract when it has one.
struct Route {
    fixed: FixedTopic,
    typed: Option<TypedDocument>,
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
        if !self.topics.contains_key(topic) {
            let route = Route::new(topic, core)?;
            self.topics.insert(topic.to_owned(), route);
        }
        let Some(route) = self.topics.get_mut(topic) else {
            return Ok(Ok(()));
        };
        let mut key = Vec::with_capacity(event.key.len() + 2);
        avro::encode_outbox_key(&event.key, &mut key);
        let mut headers = event.headers.clone();
        headers.push(("sluice.lsn".to_owned(), lsn.as_bytes().to_vec()));
        let mut value = Vec::with_capacity(event.payload.as_ref().map_or(1, |p| p.len() + 5));
        if let Err(reason) = route.encode(event, &mut value) {
            let file = core
                .contracts
                .get(topic)
                .map(|c| c.path.display().to_string());
            let reason = format!(
                "the payload does not fit the contract {}: {reason}",
                file.unwrap_or_default()
            );
            let subject = Subject::Record {
                key: Some(key),
                value: event.payload.clone().map(String::into_bytes),
                headers,
            };
            return Ok(Err(Rejection::new(Stage::Validate, topic, reason, subject)));
        }
        let bytes = key.len() + value.len();
        let published = core
            .publish_fixed(&mut route.fixed, &key, &value, &headers)
            .await?;
        if published.is_ok() {
            core.metrics.event_published(source, "c", bytes);
        }
        Ok(published)
    }
}

impl Route {
    fn new(topic: &str, core: &Core) -> Result<Route, PipelineError> {
        let Some(contract) = core.contracts.get(topic) else {
            let fixed = FixedTopic::with_schemas(avro::outbox_schemas(topic));
            return Ok(Route { fixed, typed: None });
        };
        let invalid = |reason| ContractError::Invalid {
            path: contract.path.clone(),
            reason,
        };
        let record = contract.document_schema().map_err(invalid)?;
        let (schemas, typed) = avro::typed_outbox_schemas(topic, record).map_err(invalid)?;
        Ok(Route {
            fixed: FixedTopic::with_schemas(schemas),
            typed: Some(typed),
        })
    }

    /// The value: the payload's text, or its JSON as the contract's record.
    fn encode(&self, event: &OutboxEvent, out: &mut Vec<u8>) -> Result<(), String> {
        let Some(typed) = &self.typed else {
            avro::encode_outbox(event.payload.as_deref(), out);
            return Ok(());
        };
        let payload = event.payload.as_deref().ok_or("the payload is null")?;
        let json = serde_json::from_str(payload)
            .map_err(|err| format!("the payload is not JSON: {err}"))?;
        typed
            .write(&json, out)
            .map_err(|mismatch| mismatch.to_string())
    }
}
