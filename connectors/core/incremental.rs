//! Incremental snapshots: re-reading tables in chunks while the stream goes on (the watermark algorithm of
//! Netflix's DBLog, as Debezium implements it), the part every source shares.
//!
//! A connector's chunk reader writes a low watermark into the log, reads one chunk of rows in key order,
//! hands the rows over, and writes a high watermark. The stream meets both in log order. Between them, a
//! change the stream delivers for a key of the chunk's table marks that key: the stream's event stands,
//! and the chunk's row for that key is left out when the high watermark closes the window. What is left
//! is published at the high watermark, as `op = "r"`; every later change comes after it. So the topic,
//! compacted by key, ends equal to the table whatever was written meanwhile.
//!
//! [`Progress`] is what is stored with the stream position: which tables are being read, the key of the
//! last row on the broker, and the key the table ended at when its reading began. After a crash the
//! reader carries on after that key. [`Windows`] is the stream's side: pure, so each case is a unit test.

use std::collections::{HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::signal::{Condition, Signal};

/// The incremental snapshot under way, stored inside the position (see
/// [`crate::event::Position::Incremental`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// A `pause-snapshot` signal came, and no `resume-snapshot` since.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// In the order they are read; a finished table stays until all are done, for `sluice status`.
    pub tables: Vec<TableProgress>,
}

/// How far the re-reading of one table (collection) got.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableProgress {
    /// `schema.table` or `db.collection`.
    pub name: String,
    /// The condition the rows must meet (`additional-conditions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// The key of the last row on the broker, one text per key column, as the source prints it; None:
    /// nothing read yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_key: Option<Vec<String>>,
    /// The largest key when reading began: rows with larger keys were inserted later and come through the
    /// stream. None until the first chunk is read (and for an empty table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_key: Option<Vec<String>>,
    /// Rows read (published or left out because the stream changed them meanwhile).
    #[serde(default)]
    pub rows: u64,
    #[serde(default)]
    pub chunks: u64,
    /// The source's row estimate when reading began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated: Option<u64>,
    #[serde(default)]
    pub done: bool,
}

impl Progress {
    /// The tables still to read, in order.
    pub fn pending(&self) -> impl Iterator<Item = &TableProgress> {
        self.tables.iter().filter(|t| !t.done)
    }

    /// Whether there is nothing left to read (the position then drops the snapshot).
    pub fn finished(&self) -> bool {
        self.tables.iter().all(|t| t.done)
    }

    /// Adds tables to read (after the ones already queued). A table already pending is read again from the
    /// start with the new condition: the user asked for it again.
    pub fn request(&mut self, tables: &[String], conditions: &[Condition]) {
        if self.finished() {
            self.tables.clear();
        }
        for name in tables {
            let filter = conditions
                .iter()
                .find(|c| &c.collection == name)
                .map(|c| c.filter.clone());
            self.tables.retain(|t| &t.name != name);
            self.tables.push(TableProgress {
                name: name.clone(),
                filter,
                ..TableProgress::default()
            });
        }
    }

    /// Stops the reading of the named tables (all when none is named). Returns how many were pending.
    pub fn stop(&mut self, tables: &[String]) -> usize {
        let before = self.pending().count();
        if tables.is_empty() {
            self.tables.clear();
        } else {
            self.tables.retain(|t| !tables.contains(&t.name));
        }
        if self.tables.is_empty() {
            // A pause belongs to the snapshot it paused: the next one starts unpaused.
            self.paused = false;
        }
        before - self.pending().count()
    }

    pub fn table_mut(&mut self, name: &str) -> Option<&mut TableProgress> {
        self.tables.iter_mut().find(|t| t.name == name)
    }
}

/// What acting on a signal asks of the connector.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Acted {
    /// The plan changed: forget the chunks in flight and start a new reading from the progress.
    pub restart: bool,
    /// Why (part of) the signal was refused: it goes to the dead-letter topic.
    pub refused: Option<String>,
}

impl Progress {
    /// Acts on `signal`; `captures` says whether a table (collection) is one the stream captures, the only
    /// kind an incremental snapshot can read correctly.
    pub fn act(&mut self, signal: Signal, captures: impl Fn(&str) -> bool) -> Acted {
        let mut acted = Acted::default();
        match signal {
            Signal::ExecuteSnapshot {
                collections,
                conditions,
            } => {
                let (captured, foreign): (Vec<String>, Vec<String>) =
                    collections.into_iter().partition(|name| captures(name));
                if !captured.is_empty() {
                    self.request(&captured, &conditions);
                    tracing::info!(tables = ?captured, "incremental snapshot requested");
                    acted.restart = true;
                }
                if !foreign.is_empty() {
                    acted.refused = Some(format!(
                        "{foreign:?} not captured: an incremental snapshot reads what the stream captures; add them to the source's selection"
                    ));
                }
            }
            Signal::StopSnapshot { collections } => {
                let stopped = self.stop(&collections);
                tracing::info!(tables = ?collections, stopped, "incremental snapshot stopped");
                acted.restart = true;
            }
            Signal::PauseSnapshot if self.pending().next().is_none() => {
                tracing::info!(
                    "pause-snapshot: no incremental snapshot is under way; nothing to pause"
                );
            }
            Signal::PauseSnapshot => {
                self.paused = true;
                tracing::info!("incremental snapshot paused");
                acted.restart = true;
            }
            Signal::ResumeSnapshot => {
                if self.paused {
                    self.paused = false;
                    tracing::info!("incremental snapshot resumed");
                    acted.restart = true;
                }
            }
            Signal::Log { message } => tracing::info!(message = %message, "signal: log"),
        }
        acted
    }
}

/// One chunk as the reader hands it to the stream: the rows in key order with each row's key, and where
/// the table stands after it.
#[derive(Debug)]
pub struct Chunk<R> {
    /// The reading this chunk belongs to ([`Windows::restart`] begins a new one).
    pub reading: u64,
    /// The chunk's number within its reading; its watermarks carry it.
    pub number: u64,
    pub table: String,
    /// Each row with its key as [`key_of`] renders it.
    pub rows: Vec<(String, R)>,
    /// The key of the chunk's last row, as the source prints it (the next chunk starts after it).
    pub last_key: Option<Vec<String>>,
    pub until_key: Option<Vec<String>>,
    pub estimated: Option<u64>,
    /// No row of the table is left after this chunk.
    pub table_done: bool,
}

/// A watermark as a connector writes it into its log. `reading` and `number` name the chunk; `run`
/// tells this process's watermarks from another's (another sluice on the same database, or this one
/// before a restart).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watermark {
    pub run: String,
    pub reading: u64,
    pub number: u64,
    pub high: bool,
}

impl Watermark {
    /// The prefix of the logical decoding message (PostgreSQL) that carries a watermark.
    pub const PREFIX: &'static str = "sluice.watermark";

    pub fn encode(&self) -> String {
        let side = if self.high { "high" } else { "low" };
        format!("{side}:{}:{}:{}", self.run, self.reading, self.number)
    }

    pub fn decode(text: &str) -> Option<Watermark> {
        let mut parts = text.splitn(4, ':');
        let high = match parts.next()? {
            "high" => true,
            "low" => false,
            _ => return None,
        };
        let run = parts.next()?.to_string();
        let reading = parts.next()?.parse().ok()?;
        let number = parts.next()?.parse().ok()?;
        Some(Watermark {
            run,
            reading,
            number,
            high,
        })
    }
}

/// A key as the windows compare it: the key column values of a row, rendered the same way for a row read
/// by a chunk and a row the stream delivers.
pub fn key_of<V: std::fmt::Debug>(values: impl IntoIterator<Item = V>) -> String {
    let mut out = String::new();
    for value in values {
        out.push_str(&format!("{value:?}\u{1f}"));
    }
    out
}

/// What closing a window tells the stream.
#[derive(Debug, PartialEq)]
pub enum Closed<R> {
    /// Publish these rows now (the ones the stream did not change meanwhile).
    Publish { table: String, rows: Vec<R> },
    /// The watermark is not this reading's (an earlier run's, another instance's, or a reading that was
    /// restarted): nothing to do.
    Foreign,
    /// The chunk is missing or out of order: restart the reading from the stored progress.
    Lost,
}

/// The stream's side of the open windows. Changes are marked per table, only while a window of that
/// table is open, so streaming a table nobody re-reads costs one lookup.
#[derive(Debug)]
pub struct Windows {
    run: String,
    reading: u64,
    /// Chunk number → table, for windows whose low watermark the stream has met.
    open: VecDeque<(u64, String)>,
    /// Keys changed since the oldest open window of each table opened; `None`: the table was truncated.
    changed: HashMap<String, Option<HashSet<String>>>,
    /// The number of the last chunk closed in this reading: a watermark at or below it is a replay (the
    /// stream reconnected before the position passed it).
    closed: u64,
}

impl Windows {
    pub fn new(run: impl Into<String>) -> Windows {
        Windows {
            run: run.into(),
            reading: 0,
            open: VecDeque::new(),
            changed: HashMap::new(),
            closed: 0,
        }
    }

    /// This process's run name, which its watermarks carry.
    pub fn run(&self) -> &str {
        &self.run
    }

    /// The current reading's number.
    pub fn reading(&self) -> u64 {
        self.reading
    }

    /// Forgets every open window and begins a new reading: chunks and watermarks of the old one are
    /// ignored from now on. Returns the new reading's number.
    pub fn restart(&mut self) -> u64 {
        self.reading += 1;
        self.open.clear();
        self.changed.clear();
        self.closed = 0;
        self.reading
    }

    /// Whether any window is open (a change may have to be marked).
    pub fn any_open(&self) -> bool {
        !self.open.is_empty()
    }

    /// Whether a change of `table` must be marked.
    pub fn tracking(&self, table: &str) -> bool {
        self.changed.contains_key(table)
    }

    /// The stream met a low watermark. Returns false when it is not this reading's.
    pub fn low(&mut self, mark: &Watermark, table: &str) -> bool {
        if !self.is_current(mark) || self.open.iter().any(|(n, _)| *n == mark.number) {
            return false;
        }
        self.open.push_back((mark.number, table.to_string()));
        self.changed
            .entry(table.to_string())
            .or_insert_with(|| Some(HashSet::new()));
        true
    }

    /// The stream delivered a change of `key` in `table`.
    pub fn changed(&mut self, table: &str, key: String) {
        if let Some(Some(keys)) = self.changed.get_mut(table) {
            keys.insert(key);
        }
    }

    /// The reader gave up on `table` (refused it after its low watermark): its open windows close with
    /// nothing to publish, so that the next table's chunks are not taken for lost.
    pub fn abandon(&mut self, table: &str) {
        self.open.retain(|(_, t)| t != table);
        self.changed.remove(table);
    }

    /// The stream delivered a truncation of `table`: no row read before it may be published.
    pub fn truncated(&mut self, table: &str) {
        if let Some(keys) = self.changed.get_mut(table) {
            *keys = None;
        }
    }

    /// Whether `mark` belongs to the current reading and was not met before.
    pub fn is_current(&self, mark: &Watermark) -> bool {
        mark.run == self.run && mark.reading == self.reading && mark.number > self.closed
    }

    /// The stream met a high watermark; `chunk` is the chunk the reader handed over for it (None when
    /// there is none).
    pub fn high<R>(
        &mut self,
        mark: &Watermark,
        chunk: Option<Chunk<R>>,
    ) -> (Closed<R>, Option<ChunkDone>) {
        if !self.is_current(mark) {
            return (Closed::Foreign, None);
        }
        let Some(chunk) = chunk.filter(|c| c.reading == mark.reading && c.number == mark.number)
        else {
            return (Closed::Lost, None);
        };
        match self.open.front() {
            Some((number, table)) if *number == mark.number && *table == chunk.table => {}
            _ => return (Closed::Lost, None),
        }
        self.open.pop_front();
        self.closed = mark.number;
        let changed = self.changed.get(&chunk.table).cloned().flatten();
        let truncated = matches!(self.changed.get(&chunk.table), Some(None));
        if !self.open.iter().any(|(_, t)| *t == chunk.table) {
            // The keys marked belong to this window and possibly later ones of other tables only.
            self.changed.remove(&chunk.table);
        }
        let read = chunk.rows.len() as u64;
        let rows: Vec<R> = if truncated {
            Vec::new()
        } else {
            chunk
                .rows
                .into_iter()
                .filter(|(key, _)| changed.as_ref().is_none_or(|keys| !keys.contains(key)))
                .map(|(_, row)| row)
                .collect()
        };
        let done = ChunkDone {
            table: chunk.table.clone(),
            read,
            published: rows.len() as u64,
            last_key: chunk.last_key,
            until_key: chunk.until_key,
            estimated: chunk.estimated,
            table_done: chunk.table_done,
        };
        (
            Closed::Publish {
                table: chunk.table,
                rows,
            },
            Some(done),
        )
    }
}

/// What a closed window adds to the progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkDone {
    pub table: String,
    pub read: u64,
    pub published: u64,
    pub last_key: Option<Vec<String>>,
    pub until_key: Option<Vec<String>>,
    pub estimated: Option<u64>,
    pub table_done: bool,
}

impl Progress {
    /// Records a chunk whose rows are now in the stream, before the position that carries this progress.
    pub fn chunk_done(&mut self, done: &ChunkDone) {
        if let Some(table) = self.table_mut(&done.table) {
            table.rows += done.read;
            table.chunks += 1;
            if done.last_key.is_some() {
                table.last_key = done.last_key.clone();
            }
            if table.until_key.is_none() {
                table.until_key = done.until_key.clone();
            }
            if table.estimated.is_none() {
                table.estimated = done.estimated;
            }
            table.done = done.table_done;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(reading: u64, number: u64, high: bool) -> Watermark {
        Watermark {
            run: "r1".into(),
            reading,
            number,
            high,
        }
    }

    fn chunk(reading: u64, number: u64, table: &str, keys: &[i64], done: bool) -> Chunk<i64> {
        Chunk {
            reading,
            number,
            table: table.into(),
            rows: keys.iter().map(|k| (key_of([k]), *k)).collect(),
            last_key: keys.last().map(|k| vec![k.to_string()]),
            until_key: Some(vec!["100".into()]),
            estimated: Some(100),
            table_done: done,
        }
    }

    #[test]
    fn watermarks_round_trip() {
        let m = mark(3, 17, true);
        assert_eq!(Watermark::decode(&m.encode()), Some(m));
        assert_eq!(Watermark::decode("high:run-with:colon:1:2"), None);
        assert_eq!(Watermark::decode("middle:r:1:2"), None);
        assert_eq!(Watermark::decode("low:r:x:2"), None);
    }

    #[test]
    fn the_stream_wins_for_keys_it_changed_inside_the_window() {
        let mut windows = Windows::new("r1");
        let reading = windows.restart();
        assert!(!windows.tracking("t"));
        // A change before the window opens is older than the chunk's rows: the chunk's row stands.
        windows.changed("t", key_of([1i64]));
        assert!(windows.low(&mark(reading, 1, false), "t"));
        assert!(windows.tracking("t"));
        windows.changed("t", key_of([2i64]));
        windows.changed("other", key_of([3i64]));
        let (closed, done) = windows.high(
            &mark(reading, 1, true),
            Some(chunk(reading, 1, "t", &[1, 2, 3], false)),
        );
        assert_eq!(
            closed,
            Closed::Publish {
                table: "t".into(),
                rows: vec![1, 3]
            }
        );
        let done = done.unwrap();
        assert_eq!((done.read, done.published), (3, 2));
        assert!(!windows.tracking("t"), "no window of t is open any more");
    }

    #[test]
    fn a_truncation_inside_the_window_drops_the_chunk() {
        let mut windows = Windows::new("r1");
        let reading = windows.restart();
        windows.low(&mark(reading, 1, false), "t");
        windows.truncated("t");
        windows.changed("t", key_of([9i64]));
        let (closed, _) = windows.high(
            &mark(reading, 1, true),
            Some(chunk(reading, 1, "t", &[1, 2], false)),
        );
        assert_eq!(
            closed,
            Closed::Publish {
                table: "t".into(),
                rows: vec![]
            }
        );
    }

    #[test]
    fn several_windows_in_flight_close_in_order() {
        let mut windows = Windows::new("r1");
        let reading = windows.restart();
        windows.low(&mark(reading, 1, false), "t");
        windows.changed("t", key_of([2i64]));
        windows.low(&mark(reading, 2, false), "t");
        windows.changed("t", key_of([12i64]));
        let (first, _) = windows.high(
            &mark(reading, 1, true),
            Some(chunk(reading, 1, "t", &[1, 2], false)),
        );
        assert_eq!(
            first,
            Closed::Publish {
                table: "t".into(),
                rows: vec![1]
            }
        );
        // The second window was open while 2 and 12 changed; it still tracks t.
        assert!(windows.tracking("t"));
        windows.changed("t", key_of([13i64]));
        let (second, _) = windows.high(
            &mark(reading, 2, true),
            Some(chunk(reading, 2, "t", &[11, 12, 13, 14], true)),
        );
        assert_eq!(
            second,
            Closed::Publish {
                table: "t".into(),
                rows: vec![11, 14]
            }
        );
    }

    #[test]
    fn foreign_and_lost_watermarks() {
        let mut windows = Windows::new("r1");
        let reading = windows.restart();
        // Another run's watermark, or an earlier reading's.
        let other = Watermark {
            run: "r0".into(),
            ..mark(reading, 1, true)
        };
        assert_eq!(windows.high::<i64>(&other, None).0, Closed::Foreign);
        assert!(!windows.low(&mark(reading + 5, 1, false), "t"));
        // A high watermark whose window never opened, or whose chunk is missing: read again.
        assert_eq!(
            windows.high::<i64>(&mark(reading, 1, true), None).0,
            Closed::Lost
        );
        windows.low(&mark(reading, 1, false), "t");
        assert_eq!(
            windows
                .high(
                    &mark(reading, 1, true),
                    Some(chunk(reading, 2, "t", &[1], false))
                )
                .0,
            Closed::Lost
        );
        // A watermark met again (the stream reconnected before the position passed it) is ignored.
        windows.low(&mark(reading, 1, false), "t");
        let (closed, _) = windows.high(
            &mark(reading, 1, true),
            Some(chunk(reading, 1, "t", &[1], false)),
        );
        assert!(matches!(closed, Closed::Publish { .. }));
        assert!(!windows.is_current(&mark(reading, 1, true)));
        assert!(!windows.low(&mark(reading, 1, false), "t"));
        assert_eq!(
            windows.high::<i64>(&mark(reading, 1, true), None).0,
            Closed::Foreign
        );
        // A table the reader gave up on after its low watermark leaves no window behind.
        windows.low(&mark(reading, 2, false), "gone");
        windows.abandon("gone");
        windows.low(&mark(reading, 3, false), "t");
        let (closed, _) = windows.high(
            &mark(reading, 3, true),
            Some(chunk(reading, 3, "t", &[5], false)),
        );
        assert!(matches!(closed, Closed::Publish { .. }), "{closed:?}");
        // After a restart the old reading's watermarks are foreign.
        let next = windows.restart();
        assert_ne!(next, reading);
        assert_eq!(
            windows.high::<i64>(&mark(reading, 1, true), None).0,
            Closed::Foreign
        );
    }

    #[test]
    fn progress_follows_the_chunks() {
        let mut progress = Progress::default();
        progress.request(
            &["a.t".into(), "a.u".into()],
            &[Condition {
                collection: "a.u".into(),
                filter: "x > 1".into(),
            }],
        );
        assert_eq!(progress.tables[1].filter.as_deref(), Some("x > 1"));
        let mut windows = Windows::new("r1");
        let reading = windows.restart();
        windows.low(&mark(reading, 1, false), "a.t");
        let mut c = chunk(reading, 1, "a.t", &[1, 2], false);
        c.table = "a.t".into();
        let (_, done) = windows.high(&mark(reading, 1, true), Some(c));
        progress.chunk_done(&done.unwrap());
        let t = &progress.tables[0];
        assert_eq!((t.rows, t.chunks, t.done), (2, 1, false));
        assert_eq!(t.last_key, Some(vec!["2".to_string()]));
        assert_eq!(t.until_key, Some(vec!["100".to_string()]));
        assert_eq!(progress.pending().count(), 2);
        // Asking again for a table restarts it; stopping one leaves the other.
        progress.request(&["a.t".into()], &[]);
        assert_eq!(progress.tables.last().unwrap().rows, 0);
        assert_eq!(progress.stop(&["a.u".into()]), 1);
        progress.paused = true;
        assert_eq!(progress.stop(&[]), 1);
        assert!(progress.finished());
        assert!(
            !progress.paused,
            "a stop of everything ends the pause with it"
        );
        // A pause with nothing under way changes nothing.
        assert_eq!(
            progress.act(Signal::PauseSnapshot, |_| true),
            Acted::default()
        );
        assert!(!progress.paused);
        // Serialized compactly, and read back.
        progress.request(&["a.t".into()], &[]);
        let json = serde_json::to_string(&progress).unwrap();
        assert_eq!(
            json,
            r#"{"tables":[{"name":"a.t","rows":0,"chunks":0,"done":false}]}"#
        );
        assert_eq!(serde_json::from_str::<Progress>(&json).unwrap(), progress);
    }
}
