//! A TEST DOUBLE of a MongoDB replica-set primary, not a database: it speaks the wire protocol (OP_MSG,
//! plus OP_QUERY/OP_REPLY for the legacy handshake; framing in `wire.rs`) for just the commands a
//! change-stream reader, a snapshot and an incremental snapshot send — `hello`/`isMaster`, `buildInfo`,
//! `ping`, `aggregate` with `$changeStream`, `getMore`, `killCursors`, `endSessions`, `listDatabases`,
//! `listCollections`, `count`, `find` in `_id` order (or reversed) with `min`/`max`/`skip`/`limit` and a
//! filter, a tailable `find` on `local.oplog.rs`, `insert` and `delete` — and serves the change events
//! and oplog entries that the test appends.
//!
//! No MongoDB server can be installed on the build machines; this lets the real driver path (handshake,
//! cursor, resume after a dropped connection, resume tokens across restarts, snapshot reads, signal and
//! watermark inserts) run in CI. It does not evaluate `$match` stages: the test writes the change events
//! themselves, in the format MongoDB documents, and an event with a `fullDocument` (or a delete) also
//! changes the stored documents that `find` reads. `find` filters are evaluated as `query.rs` says
//! (equality, comparison operators, `$in`, `$exists`, `$and`, `$or`; BadValue for anything else). An
//! `insert` (a `delete`) stores (removes) its documents and appends the events and the oplog entries the
//! server would have logged. Values compare in MongoDB's order of types. The integration suite in
//! `tests/mongodb_live.rs` runs against a real replica set when `MONGODB_URI` is set.

mod oplog;
mod query;
mod wire;
mod writes;

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use bson::{doc, Bson, DateTime, Document, Timestamp};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

use query::{compare_values, matches, BAD_VALUE};
use wire::{op_msg, op_reply, read_request, OP_QUERY};

/// MongoDB 6.0's wire version.
const MAX_WIRE_VERSION: i32 = 17;
/// MongoDB's error codes the double answers with.
const COMMAND_NOT_FOUND: i32 = 59;
const CURSOR_NOT_FOUND: i32 = 43;
const CHANGE_STREAM_HISTORY_LOST: i32 = 286;
const CAPPED_POSITION_LOST: i32 = 136;
const DUPLICATE_KEY: i32 = 11000;
/// The replica set the double claims to be.
pub const REPLICA_SET: &str = "rs-double";

/// The double's state, shared by its connections and the test.
#[derive(Default)]
struct State {
    /// The change log; the event at index i has sequence number `first_seq + i`.
    events: Vec<Document>,
    /// Sequence number of `events[0]`: raising it forgets history, as a rolled-over oplog does.
    first_seq: u64,
    /// Open change-stream cursors: id → sequence number of the next event to return.
    cursors: HashMap<i64, u64>,
    /// Open `find` cursors: id → the documents not returned yet.
    finds: HashMap<i64, VecDeque<Document>>,
    /// The stored documents: `db.coll` → documents in `_id` order.
    collections: BTreeMap<String, Vec<Document>>,
    /// `local.oplog.rs`: the entry at index i has absolute index `oplog_first + i`.
    oplog: Vec<Document>,
    /// How many entries have been overwritten, as a capped oplog's oldest ones are.
    oplog_first: usize,
    /// Open tailable cursors on the oplog: id → absolute index of the next entry to return.
    tails: HashMap<i64, usize>,
    next_cursor: i64,
    /// The error code the next `getMore` on a `find` cursor answers with, its cursor then gone.
    read_failure: Option<i32>,
    /// `getMore`s on `find` cursors still served before every later one is held (see `hold_reads_after`).
    reads_left: Option<usize>,
    /// Every command received, in order: (command name, body).
    commands: Vec<(String, Document)>,
}

/// A running double, listening on a loopback port until dropped.
pub struct MongoDouble {
    port: u16,
    state: Arc<Mutex<State>>,
    appended: Arc<Notify>,
    /// Bumped to make every open connection close (a network failure, as the driver sees it).
    generation: watch::Sender<u64>,
    /// While true, a `getMore` on a `find` cursor waits: a snapshot caught halfway.
    reads_held: Arc<watch::Sender<bool>>,
    accept: tokio::task::JoinHandle<()>,
}

impl MongoDouble {
    pub async fn start() -> Result<MongoDouble> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the MongoDB double")?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(Mutex::new(State {
            first_seq: 1,
            next_cursor: 1000,
            ..State::default()
        }));
        let appended = Arc::new(Notify::new());
        let (generation, _) = watch::channel(0u64);
        let reads_held = Arc::new(watch::channel(false).0);
        let accept = {
            let (state, appended, generation, reads_held) = (
                state.clone(),
                appended.clone(),
                generation.clone(),
                reads_held.clone(),
            );
            tokio::spawn(async move {
                while let Ok((socket, _)) = listener.accept().await {
                    let connection = Connection {
                        port,
                        state: state.clone(),
                        appended: appended.clone(),
                        closed: generation.subscribe(),
                        reads_held: reads_held.clone(),
                    };
                    tokio::spawn(connection.serve(socket));
                }
            })
        };
        Ok(MongoDouble {
            port,
            state,
            appended,
            generation,
            reads_held,
            accept,
        })
    }

    /// A connection string for the driver: one server, no discovery.
    pub fn url(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }

    /// Appends a change event (as `insert`, `update`, … below build them) and returns its resume token.
    pub fn append(&self, event: Document) -> Document {
        let token = lock(&self.state).append(event);
        self.appended.notify_waiters();
        token
    }

    /// Appends an oplog entry (MongoDB's oplog format), giving it a `ts` after every earlier one unless it
    /// has one, and returns that `ts`.
    pub fn append_oplog(&self, entry: Document) -> Timestamp {
        let ts = lock(&self.state).append_oplog(entry);
        self.appended.notify_waiters();
        ts
    }

    /// Overwrites every oplog entry so far with one newer no-op, as a capped oplog that rolled over while
    /// a reader was away does.
    pub fn forget_oplog(&self) {
        let mut state = lock(&self.state);
        state.oplog_first += state.oplog.len();
        state.oplog.clear();
        drop(state);
        self.append_oplog(doc! { "op": "n", "ns": "", "o": { "msg": "periodic noop" } });
    }

    /// Stores documents in `db.coll` without a change event: what was there before the reader started.
    pub fn store(&self, db: &str, coll: &str, documents: impl IntoIterator<Item = Document>) {
        let mut state = lock(&self.state);
        for document in documents {
            state.upsert(&format!("{db}.{coll}"), document);
        }
    }

    /// The documents of `db.coll` as the double holds them now, in `_id` order.
    pub fn documents(&self, db: &str, coll: &str) -> Vec<Document> {
        lock(&self.state)
            .collections
            .get(&format!("{db}.{coll}"))
            .cloned()
            .unwrap_or_default()
    }

    /// Holds (or releases) every `getMore` on a `find` cursor: a first batch is served, the rest waits.
    pub fn hold_reads(&self, held: bool) {
        lock(&self.state).reads_left = None;
        self.reads_held.send_replace(held);
    }

    /// Serves `getmores` more `getMore`s on `find` cursors, then holds every later one (as
    /// `hold_reads(true)` does) until `hold_reads(false)`: a reader let on for a while, then caught.
    pub fn hold_reads_after(&self, getmores: usize) {
        lock(&self.state).reads_left = Some(getmores);
        self.reads_held.send_replace(false);
    }

    /// Makes the next `getMore` on a `find` cursor fail with `code` and close its cursor, as an
    /// election (11602, InterruptedDueToReplStateChange) or a lost cursor (43) does on a real server.
    pub fn fail_next_read(&self, code: i32) {
        lock(&self.state).read_failure = Some(code);
    }

    /// Closes every open connection, as a network failure or a failover would.
    pub fn drop_connections(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Forgets every event so far, and one more written meanwhile, as an oplog that rolled over while a
    /// reader was away does: resuming from any token handed out so far fails with
    /// ChangeStreamHistoryLost.
    pub fn forget_history(&self) {
        let mut state = lock(&self.state);
        state.first_seq += state.events.len() as u64 + 1;
        state.events.clear();
    }

    /// The commands received so far named `name` (`aggregate`, `getMore`, …).
    pub fn commands(&self, name: &str) -> Vec<Document> {
        lock(&self.state)
            .commands
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, body)| body.clone())
            .collect()
    }

    /// The `$changeStream` stage of every `aggregate` received, in order.
    pub fn change_stream_stages(&self) -> Vec<Document> {
        self.commands("aggregate")
            .iter()
            .filter_map(|body| {
                let first = body.get_array("pipeline").ok()?.first()?.as_document()?;
                first.get_document("$changeStream").ok().cloned()
            })
            .collect()
    }
}

impl Drop for MongoDouble {
    fn drop(&mut self) {
        self.accept.abort();
        self.drop_connections();
    }
}

/// A change event of `operation` on `db.coll` for the document with `id` (MongoDB's event format; the
/// double adds `_id` and `clusterTime` when it appends it).
pub fn change_event(operation: &str, db: &str, coll: &str, id: impl Into<Bson>) -> Document {
    let id = id.into();
    doc! {
        "operationType": operation,
        "wallTime": DateTime::now(),
        "ns": { "db": db, "coll": coll },
        "documentKey": { "_id": id },
    }
}

/// The resume token of sequence number `seq`: hex digits that sort as the numbers do, like MongoDB's.
pub fn token_of(seq: u64) -> Document {
    doc! { "_data": format!("82{seq:016X}") }
}

fn seq_of(token: &Document) -> Option<u64> {
    let data = token.get_str("_data").ok()?.strip_prefix("82")?;
    u64::from_str_radix(data, 16).ok()
}

impl State {
    /// Appends a change event, applies it to the stored documents, and returns its resume token.
    fn append(&mut self, mut event: Document) -> Document {
        let seq = self.first_seq + self.events.len() as u64;
        let token = token_of(seq);
        event.insert("_id", token.clone());
        event
            .entry("clusterTime".to_owned())
            .or_insert(Bson::Timestamp(Timestamp {
                time: 1_700_000_000 + seq as u32,
                increment: 1,
            }));
        self.apply(&event);
        self.events.push(event);
        token
    }

    /// Appends an oplog entry, with a `ts` after every earlier one unless it has one; returns the `ts`.
    fn append_oplog(&mut self, mut entry: Document) -> Timestamp {
        let index = self.oplog_first + self.oplog.len();
        let ts = match entry.get("ts") {
            Some(Bson::Timestamp(ts)) => *ts,
            _ => Timestamp {
                time: 1_700_000_000 + index as u32,
                increment: 1,
            },
        };
        entry.insert("ts", ts);
        self.oplog.push(entry);
        ts
    }

    /// What an event with a `fullDocument`, or a delete, does to the stored documents.
    fn apply(&mut self, event: &Document) {
        let Ok(ns) = event.get_document("ns") else {
            return;
        };
        let (Ok(db), Ok(coll)) = (ns.get_str("db"), ns.get_str("coll")) else {
            return;
        };
        let namespace = format!("{db}.{coll}");
        match (
            event.get_str("operationType"),
            event.get_document("fullDocument"),
        ) {
            (Ok("delete"), _) => {
                if let Some(id) = event
                    .get_document("documentKey")
                    .ok()
                    .and_then(|k| k.get("_id"))
                {
                    if let Some(documents) = self.collections.get_mut(&namespace) {
                        documents.retain(|d| d.get("_id") != Some(id));
                    }
                }
            }
            (_, Ok(document)) => self.upsert(&namespace, document.clone()),
            _ => {}
        }
    }

    fn upsert(&mut self, namespace: &str, document: Document) {
        let id = document.get("_id").cloned().unwrap_or(Bson::Null);
        let documents = self.collections.entry(namespace.to_owned()).or_default();
        match documents
            .binary_search_by(|d| compare_values(d.get("_id").unwrap_or(&Bson::Null), &id))
        {
            Ok(at) => documents[at] = document,
            Err(at) => documents.insert(at, document),
        }
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

struct Connection {
    port: u16,
    state: Arc<Mutex<State>>,
    appended: Arc<Notify>,
    closed: watch::Receiver<u64>,
    reads_held: Arc<watch::Sender<bool>>,
}

impl Connection {
    async fn serve(self, mut socket: TcpStream) {
        let mut closed = self.closed.clone();
        loop {
            // Closing wins over a reply that became ready at the same moment, so that a test which drops
            // the connections and then appends knows the event was not served on the old connection.
            let request = tokio::select! {
                biased;
                _ = closed.changed() => return,
                request = read_request(&mut socket) => request,
            };
            let Ok(request) = request else { return };
            let reply = tokio::select! {
                biased;
                _ = closed.changed() => return,
                reply = self.answer(&request.body) => reply,
            };
            let bytes = match request.op_code {
                OP_QUERY => op_reply(request.id, &reply),
                _ => op_msg(request.id, &reply),
            };
            if socket.write_all(&bytes).await.is_err() {
                return;
            }
        }
    }

    async fn answer(&self, body: &Document) -> Document {
        let name = body.keys().next().cloned().unwrap_or_default();
        lock(&self.state)
            .commands
            .push((name.clone(), body.clone()));
        match name.as_str() {
            "hello" | "isMaster" | "ismaster" => self.hello(),
            "buildInfo" | "buildinfo" => {
                doc! { "version": "6.0.0", "versionArray": [6, 0, 0, 0], "ok": 1.0 }
            }
            "ping" | "endSessions" => doc! { "ok": 1.0 },
            "aggregate" => self.aggregate(body),
            "getMore" if lock(&self.state).finds.contains_key(&cursor_id(body)) => {
                self.more_documents(body).await
            }
            "getMore" if lock(&self.state).tails.contains_key(&cursor_id(body)) => {
                self.more_oplog(body).await
            }
            "getMore" => self.get_more(body).await,
            "killCursors" => {
                let ids = body.get_array("cursors").cloned().unwrap_or_default();
                let mut state = lock(&self.state);
                for id in &ids {
                    if let Bson::Int64(id) = id {
                        state.cursors.remove(id);
                        state.finds.remove(id);
                        state.tails.remove(id);
                    }
                }
                doc! { "cursorsKilled": ids, "ok": 1.0 }
            }
            "listDatabases" => {
                let state = lock(&self.state);
                let mut names: Vec<&str> = state
                    .collections
                    .keys()
                    .filter_map(|ns| ns.split_once('.').map(|(db, _)| db))
                    .collect();
                names.dedup();
                let databases: Vec<Document> = names
                    .into_iter()
                    .map(|name| doc! { "name": name, "sizeOnDisk": 0_i64, "empty": false })
                    .collect();
                doc! { "databases": databases, "totalSize": 0_i64, "ok": 1.0 }
            }
            "listCollections" => {
                let db = body.get_str("$db").unwrap_or_default();
                let state = lock(&self.state);
                let collections: Vec<Bson> = state
                    .collections
                    .keys()
                    .filter_map(|ns| ns.strip_prefix(db)?.strip_prefix('.'))
                    // The documented shape; `options` is where a real server says whether the
                    // collection records pre- and post-images (never, here).
                    .map(|name| {
                        Bson::Document(doc! {
                            "name": name, "type": "collection", "options": {}, "info": { "readOnly": false },
                        })
                    })
                    .collect();
                doc! { "cursor": { "firstBatch": collections, "id": 0_i64, "ns": format!("{db}.$cmd.listCollections") }, "ok": 1.0 }
            }
            "count" => {
                let state = lock(&self.state);
                let n = state
                    .collections
                    .get(&namespace(body, "count"))
                    .map_or(0, Vec::len);
                doc! { "n": n as i64, "ok": 1.0 }
            }
            "find" if namespace(body, "find") == "local.oplog.rs" => self.find_oplog(body),
            "find" => self.find(body),
            "insert" => self.insert(body),
            "delete" => self.delete(body),
            other => error(
                COMMAND_NOT_FOUND,
                &format!("the MongoDB test double does not implement `{other}`"),
            ),
        }
    }

    fn hello(&self) -> Document {
        let me = format!("127.0.0.1:{}", self.port);
        doc! {
            "helloOk": true,
            "isWritablePrimary": true,
            "ismaster": true,
            "setName": REPLICA_SET,
            "setVersion": 1,
            "hosts": [me.clone()],
            "primary": me.clone(),
            "me": me,
            "maxBsonObjectSize": 16 * 1024 * 1024,
            "maxMessageSizeBytes": 48_000_000,
            "maxWriteBatchSize": 100_000,
            "localTime": DateTime::now(),
            "logicalSessionTimeoutMinutes": 30,
            "connectionId": 1,
            "minWireVersion": 0,
            "maxWireVersion": MAX_WIRE_VERSION,
            "readOnly": false,
            "ok": 1.0,
        }
    }

    fn aggregate(&self, body: &Document) -> Document {
        let stage = body
            .get_array("pipeline")
            .ok()
            .and_then(|p| p.first())
            .and_then(Bson::as_document)
            .and_then(|s| s.get_document("$changeStream").ok());
        let Some(stage) = stage else {
            return error(
                COMMAND_NOT_FOUND,
                "the MongoDB test double only runs $changeStream aggregations",
            );
        };
        let mut state = lock(&self.state);
        let resume = ["startAfter", "resumeAfter"]
            .iter()
            .find_map(|key| stage.get_document(key).ok());
        let next = match resume {
            None => state.first_seq + state.events.len() as u64,
            Some(token) => match seq_of(token) {
                Some(seq) if seq + 1 >= state.first_seq => seq + 1,
                _ => {
                    return error(
                        CHANGE_STREAM_HISTORY_LOST,
                        "Resume of change stream was not possible, as the resume point may no longer be in the oplog.",
                    )
                }
            },
        };
        let id = state.next_cursor;
        state.next_cursor += 1;
        let (batch, next) = batch_from(&state, next);
        state.cursors.insert(id, next);
        cursor_reply(id, "firstBatch", batch, next)
    }

    async fn get_more(&self, body: &Document) -> Document {
        let id = match body.get("getMore") {
            Some(Bson::Int64(id)) => *id,
            _ => return error(CURSOR_NOT_FOUND, "getMore without a cursor id"),
        };
        let wait_ms = match body.get("maxTimeMS") {
            Some(Bson::Int64(ms)) => *ms,
            Some(Bson::Int32(ms)) => i64::from(*ms),
            _ => 1000,
        };
        let wait = Duration::from_millis(wait_ms.clamp(0, 5000) as u64);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let appended = self.appended.notified();
            {
                let mut state = lock(&self.state);
                let Some(&next) = state.cursors.get(&id) else {
                    return error(CURSOR_NOT_FOUND, &format!("cursor id {id} not found"));
                };
                let (batch, next) = batch_from(&state, next);
                if !batch.is_empty() || tokio::time::Instant::now() >= deadline {
                    state.cursors.insert(id, next);
                    return cursor_reply(id, "nextBatch", batch, next);
                }
            }
            let _ = tokio::time::timeout_at(deadline, appended).await;
        }
    }
}

impl Connection {
    /// `find` over a stored collection in `_id` order (reversed by `sort: {_id: -1}`): `min` (inclusive)
    /// and `max` (exclusive) bound the `_id`s, the filter is evaluated as [`query`] documents, then
    /// `skip`, `limit` and an `_id`-only projection.
    fn find(&self, body: &Document) -> Document {
        let filter = body.get_document("filter").cloned().unwrap_or_default();
        let namespace = namespace(body, "find");
        let bound = |key: &str| {
            body.get_document(key)
                .ok()
                .and_then(|b| b.get("_id"))
                .cloned()
        };
        let (min, max) = (bound("min"), bound("max"));
        let skip = integer(body, "skip").unwrap_or(0) as usize;
        let limit = integer(body, "limit")
            .filter(|&n| n != 0)
            .map(|n| n.unsigned_abs() as usize);
        let ids_only = body
            .get_document("projection")
            .is_ok_and(|p| p.keys().eq(["_id"]));
        let descending = body
            .get_document("sort")
            .is_ok_and(|sort| matches!(sort.get("_id"), Some(Bson::Int32(-1) | Bson::Int64(-1))));
        let mut state = lock(&self.state);
        let mut found = Vec::new();
        for d in state.collections.get(&namespace).into_iter().flatten() {
            let id = d.get("_id").unwrap_or(&Bson::Null);
            let in_bounds = min
                .as_ref()
                .is_none_or(|m| compare_values(id, m) != Ordering::Less)
                && max
                    .as_ref()
                    .is_none_or(|m| compare_values(id, m) == Ordering::Less);
            match matches(d, &filter) {
                Ok(true) if in_bounds => found.push(d),
                Ok(_) => {}
                Err(reason) => return error(BAD_VALUE, &reason),
            }
        }
        if descending {
            found.reverse();
        }
        let documents: VecDeque<Document> = found
            .into_iter()
            .skip(skip)
            .take(limit.unwrap_or(usize::MAX))
            .map(|d| match ids_only {
                true => doc! { "_id": d.get("_id").cloned().unwrap_or(Bson::Null) },
                false => d.clone(),
            })
            .collect();
        let id = state.next_cursor;
        state.next_cursor += 1;
        state.finds.insert(id, documents);
        let batch_size = integer(body, "batchSize").unwrap_or(101) as usize;
        documents_reply(&mut state, id, &namespace, "firstBatch", batch_size)
    }

    async fn more_documents(&self, body: &Document) -> Document {
        // Checked on arrival: getMores already waiting (a stopped run's) are not the next read.
        {
            let mut state = lock(&self.state);
            if let Some(code) = state.read_failure.take() {
                state.finds.remove(&cursor_id(body));
                return error(code, "failed by the test");
            }
            match state.reads_left {
                Some(0) => {
                    state.reads_left = None;
                    self.reads_held.send_replace(true);
                }
                Some(left) => state.reads_left = Some(left - 1),
                None => {}
            }
        }
        let mut held = self.reads_held.subscribe();
        let _ = held.wait_for(|held| !held).await;
        let mut state = lock(&self.state);
        let namespace = format!(
            "{}.{}",
            body.get_str("$db").unwrap_or_default(),
            body.get_str("collection").unwrap_or_default()
        );
        let batch_size = integer(body, "batchSize").unwrap_or(101) as usize;
        documents_reply(
            &mut state,
            cursor_id(body),
            &namespace,
            "nextBatch",
            batch_size,
        )
    }
}

/// The next `batch_size` documents of a `find` cursor; the cursor is closed (id 0) once they are all out.
fn documents_reply(
    state: &mut State,
    id: i64,
    namespace: &str,
    field: &str,
    batch_size: usize,
) -> Document {
    let Some(remaining) = state.finds.get_mut(&id) else {
        return error(CURSOR_NOT_FOUND, &format!("cursor id {id} not found"));
    };
    let take = batch_size.max(1).min(remaining.len());
    let batch: Vec<Document> = remaining.drain(..take).collect();
    let id = if remaining.is_empty() {
        state.finds.remove(&id);
        0
    } else {
        id
    };
    doc! { "cursor": { field: batch, "id": id, "ns": namespace }, "ok": 1.0 }
}

/// `db.coll` of a command whose collection is the value of `command`.
fn namespace(body: &Document, command: &str) -> String {
    format!(
        "{}.{}",
        body.get_str("$db").unwrap_or_default(),
        body.get_str(command).unwrap_or_default()
    )
}

fn cursor_id(body: &Document) -> i64 {
    match body.get("getMore") {
        Some(Bson::Int64(id)) => *id,
        _ => -1,
    }
}

fn integer(body: &Document, key: &str) -> Option<i64> {
    match body.get(key)? {
        Bson::Int32(n) => Some(i64::from(*n)),
        Bson::Int64(n) => Some(*n),
        Bson::Double(n) => Some(*n as i64),
        _ => None,
    }
}

/// The events from sequence number `next` on (at most 100), and the sequence number after them.
fn batch_from(state: &State, next: u64) -> (Vec<Bson>, u64) {
    let start = next.saturating_sub(state.first_seq) as usize;
    let batch: Vec<Bson> = state
        .events
        .iter()
        .skip(start)
        .take(100)
        .cloned()
        .map(Bson::Document)
        .collect();
    let next = next + batch.len() as u64;
    (batch, next)
}

/// A cursor batch with its post-batch resume token: the token of the last event returned, or of the
/// last one before the cursor's position when the batch is empty.
fn cursor_reply(id: i64, field: &str, batch: Vec<Bson>, next: u64) -> Document {
    doc! {
        "cursor": {
            field: batch,
            "postBatchResumeToken": token_of(next - 1),
            "id": id,
            "ns": "admin.$cmd.aggregate",
        },
        "ok": 1.0,
    }
}

fn error(code: i32, message: &str) -> Document {
    doc! { "ok": 0.0, "errmsg": message, "code": code, "codeName": "" }
}
