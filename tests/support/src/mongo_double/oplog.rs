//! The double's `local.oplog.rs`: a tailable cursor after a `ts`, and the oldest or newest entry.

use std::time::Duration;

use bson::{doc, Bson, Document};

use super::{
    cursor_id, error, integer, lock, Connection, State, CAPPED_POSITION_LOST, CURSOR_NOT_FOUND,
};

impl Connection {
    /// `find` on `local.oplog.rs`: a tailable cursor after `filter.ts.$gt`, or the oldest / newest entry
    /// (`sort: {$natural: 1 | -1}`).
    pub(super) fn find_oplog(&self, body: &Document) -> Document {
        let mut state = lock(&self.state);
        if body.get_bool("tailable") == Ok(true) {
            let after = body
                .get_document("filter")
                .and_then(|f| f.get_document("ts"))
                .and_then(|ts| ts.get_timestamp("$gt"))
                .map(|ts| (ts.time, ts.increment))
                .unwrap_or((0, 0));
            let skipped = state
                .oplog
                .iter()
                .take_while(|e| {
                    e.get_timestamp("ts")
                        .is_ok_and(|ts| (ts.time, ts.increment) <= after)
                })
                .count();
            let id = state.next_cursor;
            state.next_cursor += 1;
            let next = state.oplog_first + skipped;
            let (batch, next) = oplog_from(&state, next);
            state.tails.insert(id, next);
            return doc! { "cursor": { "firstBatch": batch, "id": id, "ns": "local.oplog.rs" }, "ok": 1.0 };
        }
        let newest_first = body.get_document("sort").is_ok_and(|sort| {
            matches!(
                sort.get("$natural"),
                Some(Bson::Int32(-1) | Bson::Int64(-1))
            )
        });
        let edge = if newest_first {
            state.oplog.last()
        } else {
            state.oplog.first()
        };
        let batch: Vec<Document> = edge.cloned().into_iter().collect();
        doc! { "cursor": { "firstBatch": batch, "id": 0_i64, "ns": "local.oplog.rs" }, "ok": 1.0 }
    }

    /// A getMore on a tailable oplog cursor: what was appended since, waiting up to `maxTimeMS` for it.
    pub(super) async fn more_oplog(&self, body: &Document) -> Document {
        let id = cursor_id(body);
        let wait =
            Duration::from_millis(integer(body, "maxTimeMS").unwrap_or(1000).clamp(0, 5000) as u64);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let appended = self.appended.notified();
            {
                let mut state = lock(&self.state);
                let Some(&next) = state.tails.get(&id) else {
                    return error(CURSOR_NOT_FOUND, &format!("cursor id {id} not found"));
                };
                if next < state.oplog_first {
                    state.tails.remove(&id);
                    return error(
                        CAPPED_POSITION_LOST,
                        "CollectionScan died due to position in capped collection being deleted",
                    );
                }
                let (batch, next) = oplog_from(&state, next);
                if !batch.is_empty() || tokio::time::Instant::now() >= deadline {
                    state.tails.insert(id, next);
                    return doc! { "cursor": { "nextBatch": batch, "id": id, "ns": "local.oplog.rs" }, "ok": 1.0 };
                }
            }
            let _ = tokio::time::timeout_at(deadline, appended).await;
        }
    }
}

/// The oplog entries from absolute index `next` on (at most 100), and the index after them.
fn oplog_from(state: &State, next: usize) -> (Vec<Document>, usize) {
    let batch: Vec<Document> = state
        .oplog
        .iter()
        .skip(next.saturating_sub(state.oplog_first))
        .take(100)
        .cloned()
        .collect();
    let next = next + batch.len();
    (batch, next)
}
