//! `capture = "change_streams"`: one deployment-wide change stream, filtered on the server to the
//! selected collections, each event converted and handed to the pipeline with the resume token that
//! positions it. Also where a stream can start: the token as of now, and whether a stored token is still
//! in the oplog.

use std::time::Duration;

use mongodb::bson::{self, doc, Bson, Document};
use mongodb::change_stream::event::ResumeToken;
use mongodb::change_stream::ChangeStream;
use mongodb::error::{Error as DriverError, ErrorKind};
use mongodb::options::{ChangeStreamOptions, FullDocumentBeforeChangeType, FullDocumentType};

use crate::change::{self, EventKind};
use crate::connection::MongodbSource;
use crate::control::{send, DocumentStreamControl, Ended};
use crate::error::MongodbError;
use crate::selection::{report_ddl, selection_filter};
use sluice_core::backoff::Backoff;
use sluice_core::config::redact_secrets;
use sluice_core::event::{Position, SourceEvent};
use sluice_core::source::unless_stopped;

/// How long the server holds a getMore open when nothing happens: how quickly a stop is noticed.
const MAX_AWAIT: Duration = Duration::from_secs(1);
/// How often an idle stream's position (its post-batch resume token) is passed on to be stored.
const IDLE_POSITION_INTERVAL: Duration = Duration::from_secs(10);
/// MongoDB's error code for a resume point that is no longer in the oplog.
const CHANGE_STREAM_HISTORY_LOST: i32 = 286;

impl MongodbSource {
    /// Why a change stream can no longer start after `resume_token` (None while the oplog still holds it).
    pub(super) async fn change_stream_lost_since(
        &self,
        resume_token: &str,
    ) -> Result<Option<String>, DriverError> {
        let token =
            parse_token(resume_token).map_err(|err| DriverError::custom(err.to_string()))?;
        // Through a mongos the loss may show only at the first getMore: one is made.
        let read_once = async {
            let mut stream = self
                .client
                .watch()
                .pipeline([self.stream_filter()])
                .start_after(token)
                .max_await_time(Duration::from_millis(100))
                .await?;
            stream.next_if_any().await
        };
        match read_once.await {
            Ok(_) => Ok(None),
            Err(err) if is_history_lost(&err) => Ok(Some(redact_secrets(&err.to_string()))),
            Err(err) => Err(err),
        }
    }

    /// The change stream's resume token as of now, taken by opening a stream and closing it again.
    pub(super) async fn starting_point(&self) -> Result<Position, DriverError> {
        let stream = self.client.watch().pipeline([self.stream_filter()]).await?;
        let token = stream.resume_token().ok_or_else(|| {
            DriverError::custom(
                "the server gave the new change stream no resume token to start from after the \
                 snapshot (MongoDB 4.2 or later is needed, for `startAfter`)",
            )
        })?;
        Ok(Position::Mongodb {
            resume_token: token_text(&token)?,
        })
    }

    /// One change stream, from `token` on; `token` follows every event read.
    pub(super) async fn stream_once(
        &self,
        token: &mut Option<ResumeToken>,
        control: &mut DocumentStreamControl,
        failures: &mut Backoff,
    ) -> Result<Ended, DriverError> {
        let mut stream = self.open_stream(token.clone()).await?;
        // Opened: the next failure starts the backoff from its shortest wait again.
        failures.reset();
        control.metrics.set_streaming(true);
        let mut last_idle = tokio::time::Instant::now();
        // The token last handed on, from an event or an idle point: an idle token is passed on only
        // when it differs from it.
        let mut passed_on = token.clone();
        // The stream's starting point is stored at once: a first run that stops before any change must
        // resume from here, not from whenever it starts next.
        let mut pass_idle = token.is_none();
        let mut stop = control.stop.clone();
        loop {
            // A stop must not wait for a getMore or server selection during an outage.
            let Some(next) = unless_stopped(&mut stop, stream.next_if_any()).await else {
                return Ok(Ended::Stopped);
            };
            let Some(event) = next? else {
                if !stream.is_alive() {
                    return Err(DriverError::custom(
                        "the server closed the change stream's cursor without an invalidate",
                    ));
                }
                let idle_token = stream.resume_token();
                if idle_token.is_some() && idle_token != passed_on {
                    *token = idle_token.clone();
                    if pass_idle || last_idle.elapsed() >= IDLE_POSITION_INTERVAL {
                        let position = position_of(idle_token.as_ref())?;
                        if !send(control, SourceEvent::Idle { position }).await {
                            return Ok(Ended::Stopped);
                        }
                        last_idle = tokio::time::Instant::now();
                        pass_idle = false;
                        passed_on = idle_token;
                    }
                }
                continue;
            };
            *token = stream.resume_token();
            passed_on = token.clone();
            if let Some(ended) = self.hand_on(&event, token.as_ref(), control).await? {
                return Ok(ended);
            }
        }
    }

    /// Opens the change stream after `token` (None: from now), with the configured images.
    async fn open_stream(
        &self,
        token: Option<ResumeToken>,
    ) -> Result<ChangeStream<Document>, DriverError> {
        let options = ChangeStreamOptions::builder()
            .full_document(self.settings.full_document.option().map(full_document_type))
            .full_document_before_change(self.settings.before.option().map(before_change_type))
            .start_after(token)
            .max_await_time(MAX_AWAIT)
            .build();
        Ok(self
            .client
            .watch()
            .pipeline([self.stream_filter()])
            .with_options(options)
            .await?
            .with_type::<Document>())
    }

    /// Hands one event on to the pipeline, converted, with the position after it (`token`, the stream's
    /// resume token once the event is read); an event without an event form goes to the dead-letter
    /// topic. None while the stream goes on.
    async fn hand_on(
        &self,
        event: &Document,
        token: Option<&ResumeToken>,
        control: &DocumentStreamControl,
    ) -> Result<Option<Ended>, DriverError> {
        let converted = match change::convert(event, self.replica_set.as_ref()) {
            Ok(converted) => converted,
            Err(err) => {
                tracing::warn!(error = %err, "change event without an event form: sent to the dead-letter topic");
                let letter = err.undecodable(event);
                let position = position_of(token)?;
                if !send(control, SourceEvent::Undecodable(letter)).await
                    || !send(control, SourceEvent::Idle { position }).await
                {
                    return Ok(Some(Ended::Stopped));
                }
                return Ok(None);
            }
        };
        let position = Position::Mongodb {
            resume_token: converted.resume_token,
        };
        match converted.kind {
            EventKind::Change(change) => {
                if !self.settings.streams(&change.database, &change.collection) {
                    return Ok(None);
                }
                let commit_time_us = change
                    .source
                    .wall_time_ms
                    .map(|ms| ms * 1000)
                    .unwrap_or(i64::from(change.source.cluster_time.0) * 1_000_000);
                if !send(control, SourceEvent::Document(*change)).await
                    || !send(
                        control,
                        SourceEvent::Commit {
                            position,
                            commit_time_us: Some(commit_time_us),
                        },
                    )
                    .await
                {
                    return Ok(Some(Ended::Stopped));
                }
            }
            EventKind::Ddl {
                operation,
                namespace,
                to,
            } => {
                report_ddl(
                    &self.settings.selection,
                    &operation,
                    &namespace,
                    to.as_deref(),
                );
                if !send(control, SourceEvent::Idle { position }).await {
                    return Ok(Some(Ended::Stopped));
                }
            }
            EventKind::Invalidate => {
                if !send(control, SourceEvent::Idle { position }).await {
                    return Ok(Some(Ended::Stopped));
                }
                return Ok(Some(Ended::Invalidated));
            }
        }
        Ok(None)
    }
}

impl MongodbSource {
    /// The `$match` stage: the selected collections, and the signal collection.
    fn stream_filter(&self) -> Document {
        selection_filter(
            &self.settings.selection,
            self.settings.signal_collection.as_deref(),
        )
    }
}

/// The server no longer has the stream's resume point in its oplog.
pub(super) fn is_history_lost(err: &DriverError) -> bool {
    matches!(err.kind.as_ref(), ErrorKind::Command(command) if command.code == CHANGE_STREAM_HISTORY_LOST)
}

fn full_document_type(option: &str) -> FullDocumentType {
    match option {
        "updateLookup" => FullDocumentType::UpdateLookup,
        "whenAvailable" => FullDocumentType::WhenAvailable,
        "required" => FullDocumentType::Required,
        other => FullDocumentType::Other(other.to_owned()),
    }
}

fn before_change_type(option: &str) -> FullDocumentBeforeChangeType {
    match option {
        "whenAvailable" => FullDocumentBeforeChangeType::WhenAvailable,
        "required" => FullDocumentBeforeChangeType::Required,
        _ => FullDocumentBeforeChangeType::Off,
    }
}

/// A resume token as the position file holds it: canonical Extended JSON.
pub fn token_text(token: &ResumeToken) -> Result<String, DriverError> {
    let value = bson::to_bson(token).map_err(DriverError::custom)?;
    Ok(change::canonical_json(&value))
}

fn position_of(token: Option<&ResumeToken>) -> Result<Position, DriverError> {
    let token =
        token.ok_or_else(|| DriverError::custom("the change stream gave no resume token"))?;
    Ok(Position::Mongodb {
        resume_token: token_text(token)?,
    })
}

/// The stored text back into a token the driver sends as it is.
pub fn parse_token(text: &str) -> Result<ResumeToken, MongodbError> {
    let value = match change::bson_from_canonical(text).map_err(MongodbError::BadToken)? {
        value @ Bson::Document(_) => value,
        other => {
            return Err(MongodbError::BadToken(format!(
                "expected a document, found {:?}",
                other.element_type()
            )))
        }
    };
    // The token type reads only from raw BSON: wrap it in a document and read that back.
    #[derive(serde::Deserialize)]
    struct Wrapped {
        token: ResumeToken,
    }
    let bytes = bson::to_vec(&doc! { "token": value })
        .map_err(|err| MongodbError::BadToken(err.to_string()))?;
    bson::from_slice::<Wrapped>(&bytes)
        .map(|w| w.token)
        .map_err(|err| MongodbError::BadToken(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_token_reads_back_into_the_same_token() {
        let text = r#"{"_data":"8264F0A1B2000000012B022C0100296E5A1004"}"#;
        let token = parse_token(text).unwrap();
        assert_eq!(token_text(&token).unwrap(), text);
        assert!(matches!(parse_token("{"), Err(MongodbError::BadToken(_))));
        assert!(matches!(parse_token("5"), Err(MongodbError::BadToken(_))));
    }
}
