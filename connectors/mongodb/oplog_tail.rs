//! `capture = "oplog"`: a tailable, await-data cursor on `local.oplog.rs`, for servers where change
//! streams are not available. Each entry is converted by [`super::oplog`]; the position is the `ts` of
//! the last entry handled, and a restart reads the entries after it.
//!
//! Two things the change stream does for its readers are done here. An update's entry holds only what
//! changed, so with `full_document = "update_lookup"` the document is looked up by `_id` (as it is by
//! then, or gone). And a prepared transaction's changes (sharded clusters) are held until its
//! `commitTransaction` entry; meanwhile no position is passed on, so a restart reads the prepare again.

use std::collections::HashMap;
use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document, Timestamp};
use mongodb::error::Error as DriverError;
use mongodb::options::CursorType;

use super::change::{bson_from_canonical, canonical_json};
use super::connection::MongodbSource;
use super::control::{send, DocumentStreamControl, Ended};
use super::oplog::{self, OplogKind};
use super::selection::report_ddl;
use crate::config::FullDocument;
use sluice_core::backoff::Backoff;
use sluice_core::event::{DocumentChange, Op, Position, SourceEvent};
use sluice_core::source::unless_stopped;

/// How long the server holds a getMore open when nothing is written: how quickly a stop is noticed.
const MAX_AWAIT: Duration = Duration::from_secs(1);
/// How often the position of entries that concern no captured collection is passed on to be stored.
const IDLE_POSITION_INTERVAL: Duration = Duration::from_secs(10);

/// Prepared transactions read and not yet committed or aborted: (session, txnNumber) → their changes.
#[derive(Default)]
pub struct PreparedTransactions(HashMap<(String, i64), Vec<DocumentChange>>);

impl MongodbSource {
    /// Tails the oplog after `from` (None: from its newest entry); `from` follows every entry handled.
    pub(super) async fn tail_once(
        &self,
        from: &mut Option<Position>,
        prepared: &mut PreparedTransactions,
        control: &mut DocumentStreamControl,
        failures: &mut Backoff,
    ) -> Result<Ended, DriverError> {
        let oplog = self
            .client
            .database("local")
            .collection::<Document>("oplog.rs");
        let (after, first_run) = match from {
            Some(position) => (oplog_ts(position)?, false),
            None => (oplog_ts(&self.newest_oplog_entry().await?)?, true),
        };
        if let Some(reason) = oplog_lost_since(&self.client, (after.time, after.increment)).await? {
            return Ok(Ended::HistoryLost(reason));
        }
        let mut cursor = oplog
            .find(doc! { "ts": { "$gt": after } })
            .cursor_type(CursorType::TailableAwait)
            .max_await_time(MAX_AWAIT)
            .await?;
        failures.reset();
        control.metrics.set_streaming(true);
        *from = Some(position_of(after));
        // A first run stores where it started at once, so that a stop before any change resumes there.
        if first_run
            && !send(
                control,
                SourceEvent::Idle {
                    position: position_of(after),
                },
            )
            .await
        {
            return Ok(Ended::Stopped);
        }
        let mut last_idle = tokio::time::Instant::now();
        let mut stop = control.stop.clone();
        loop {
            let Some(next) = unless_stopped(&mut stop, cursor.try_next()).await else {
                return Ok(Ended::Stopped);
            };
            let Some(entry) = next? else {
                return Err(DriverError::custom(
                    "the server closed the tailable oplog cursor",
                ));
            };
            let ts = entry_ts(&entry)?;
            let position = position_of(ts);
            *from = Some(position.clone());
            let Some(changes) = self.entry_changes(&entry, prepared, control).await else {
                return Ok(Ended::Stopped);
            };
            let Some(published) = self.publish(changes, control).await? else {
                return Ok(Ended::Stopped);
            };
            // While a prepared transaction waits for its commit, no later position may be stored.
            if !prepared.0.is_empty() {
                continue;
            }
            let commit_time_us = i64::from(ts.time) * 1_000_000;
            let event = if published {
                SourceEvent::Commit {
                    position,
                    commit_time_us: Some(commit_time_us),
                }
            } else if last_idle.elapsed() >= IDLE_POSITION_INTERVAL {
                last_idle = tokio::time::Instant::now();
                SourceEvent::Idle { position }
            } else {
                continue;
            };
            if !send(control, event).await {
                return Ok(Ended::Stopped);
            }
        }
    }

    /// The changes an entry brings: its own, or a prepared transaction's at its commit (a prepared one's are
    /// held until then). An entry that has no event form and may concern a captured collection goes to the
    /// dead-letter topic. None when sluice is stopping.
    async fn entry_changes(
        &self,
        entry: &Document,
        prepared: &mut PreparedTransactions,
        control: &mut DocumentStreamControl,
    ) -> Option<Vec<DocumentChange>> {
        let converted = match oplog::convert_entry(entry, self.replica_set.as_ref()) {
            Ok(converted) => converted,
            Err(err) => {
                let in_selection = entry.get_str("ns").is_ok_and(|ns| {
                    ns.split_once('.')
                        .is_some_and(|(db, coll)| self.settings.streams(db, coll))
                });
                if in_selection || entry.get_str("op") == Ok("c") {
                    tracing::warn!(error = %err, "oplog entry without an event form: sent to the dead-letter topic");
                    let letter = oplog::undecodable(&err, entry);
                    if !send(control, SourceEvent::Undecodable(letter)).await {
                        return None;
                    }
                }
                return Some(Vec::new());
            }
        };
        Some(match converted.kind {
            OplogKind::Changes(changes) => changes,
            OplogKind::Prepared {
                lsid,
                txn_number,
                changes,
            } => {
                prepared.0.insert((lsid, txn_number), changes);
                Vec::new()
            }
            OplogKind::CommitPrepared { lsid, txn_number } => {
                prepared.0.remove(&(lsid, txn_number)).unwrap_or_default()
            }
            OplogKind::AbortPrepared { lsid, txn_number } => {
                prepared.0.remove(&(lsid, txn_number));
                Vec::new()
            }
            OplogKind::Ddl {
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
                Vec::new()
            }
            OplogKind::Noop => Vec::new(),
        })
    }

    /// Hands on the changes to captured collections, an update's document looked up when asked for;
    /// whether any was handed on, or None when sluice is stopping.
    async fn publish(
        &self,
        changes: Vec<DocumentChange>,
        control: &mut DocumentStreamControl,
    ) -> Result<Option<bool>, DriverError> {
        let mut published = false;
        for mut change in changes {
            if !self.settings.streams(&change.database, &change.collection) {
                continue;
            }
            if change.op == Op::Update
                && change.after.is_none()
                && self.settings.full_document == FullDocument::UpdateLookup
            {
                change.after = self.look_up(&change).await?;
            }
            published = true;
            if !send(control, SourceEvent::Document(change)).await {
                return Ok(None);
            }
        }
        Ok(Some(published))
    }

    /// The newest oplog entry's position: where a run without a stored position starts.
    pub(super) async fn newest_oplog_entry(&self) -> Result<Position, DriverError> {
        let newest = oplog_edge_ts(&self.client, -1).await?.ok_or_else(|| {
            DriverError::custom("local.oplog.rs is empty: is this a replica set member?")
        })?;
        Ok(position_of(newest))
    }

    /// The document an update left, as it is now (None when it has been deleted since).
    async fn look_up(&self, change: &DocumentChange) -> Result<Option<String>, DriverError> {
        let id = bson_from_canonical(&change.key).map_err(DriverError::custom)?;
        let found = self
            .client
            .database(&change.database)
            .collection::<Document>(&change.collection)
            .find_one(doc! { "_id": id })
            .await?;
        Ok(found.map(|document| canonical_json(&Bson::Document(document))))
    }
}

/// Why the oplog no longer holds the entries after `ts` (seconds, increment): None while it does. A
/// position older than the oldest entry is gone, the entries between it and that one overwritten.
pub(super) async fn oplog_lost_since(
    client: &mongodb::Client,
    ts: (u32, u32),
) -> Result<Option<String>, DriverError> {
    let Some(oldest) = oplog_edge_ts(client, 1).await? else {
        return Ok(None);
    };
    Ok(((oldest.time, oldest.increment) > ts).then(|| {
        format!(
            "the oldest oplog entry is at ({}, {}), after the stored ({}, {})",
            oldest.time, oldest.increment, ts.0, ts.1
        )
    }))
}

/// The `ts` of the oldest (`direction` 1) or newest (-1) oplog entry, by natural order; None when the
/// oplog is empty.
pub(super) async fn oplog_edge_ts(
    client: &mongodb::Client,
    direction: i32,
) -> Result<Option<Timestamp>, DriverError> {
    let entry = client
        .database("local")
        .collection::<Document>("oplog.rs")
        .find_one(doc! {})
        .sort(doc! { "$natural": direction })
        .projection(doc! { "ts": 1 })
        .await?;
    entry.as_ref().map(entry_ts).transpose()
}

fn entry_ts(entry: &Document) -> Result<Timestamp, DriverError> {
    entry
        .get_timestamp("ts")
        .map_err(|_| DriverError::custom("an oplog entry without a `ts` timestamp"))
}

fn oplog_ts(position: &Position) -> Result<Timestamp, DriverError> {
    match position {
        Position::MongodbOplog { seconds, increment } => Ok(Timestamp {
            time: *seconds,
            increment: *increment,
        }),
        other => Err(DriverError::custom(format!(
            "not an oplog position: {other}"
        ))),
    }
}

fn position_of(ts: Timestamp) -> Position {
    Position::MongodbOplog {
        seconds: ts.time,
        increment: ts.increment,
    }
}
