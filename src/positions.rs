//! Remembering how far sluice got.
//!
//! [`AckTracker`] follows every produced message until the broker acknowledges it and works out the newest
//! source position whose events — and all events before them — are on the broker. [`PositionStore`] keeps
//! that position in a file, written atomically before the source is told, so that a restart resumes after
//! the last delivered transaction even when the crash came before the server heard of it.

use std::collections::VecDeque;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::sync::Notify;

use crate::event::{PgSnapshotPosition, Position};
use crate::metrics::Histogram;

/// Groups messages by the source position that acknowledges them (a transaction, or an idle point).
///
/// Messages are registered under the currently open group; [`AckTracker::close_group`] seals it with its
/// position. Deliveries may come back in any order (partitions are independent); a position becomes
/// acknowledged only when its group and every earlier group have no message outstanding.
#[derive(Default)]
pub struct AckTracker {
    state: Mutex<TrackerState>,
    changed: Notify,
    commit_to_ack: Histogram,
}

#[derive(Default)]
struct TrackerState {
    /// Ordinal of `groups[0]`.
    first: u64,
    groups: VecDeque<Group>,
    acknowledged: Option<Position>,
    outstanding: u64,
}

#[derive(Default)]
struct Group {
    outstanding: u64,
    /// Whether any message was registered: an empty group's acknowledgement says nothing about latency.
    carries_messages: bool,
    /// Set when the group is sealed.
    position: Option<Position>,
    /// The source's commit time of a streamed transaction (microseconds since the epoch).
    commit_time_us: Option<i64>,
}

impl AckTracker {
    pub fn new() -> AckTracker {
        AckTracker::default()
    }

    /// Registers one message under the open group and returns the group's ordinal, which the delivery report
    /// hands back to [`AckTracker::delivered`].
    pub fn register(&self) -> u64 {
        let mut state = self.lock();
        if state.groups.back().is_none_or(|g| g.position.is_some()) {
            state.groups.push_back(Group::default());
        }
        let ordinal = state.first + state.groups.len() as u64 - 1;
        if let Some(group) = state.groups.back_mut() {
            group.outstanding += 1;
            group.carries_messages = true;
        }
        state.outstanding += 1;
        ordinal
    }

    /// Seals the open group (creating an empty one if nothing is open) with the position that acknowledges
    /// it and, for a streamed transaction, its commit time.
    pub fn close_group(&self, position: Position, commit_time_us: Option<i64>) {
        let mut state = self.lock();
        match state.groups.back_mut() {
            Some(group) if group.position.is_none() => {
                group.position = Some(position);
                group.commit_time_us = commit_time_us;
            }
            _ => state.groups.push_back(Group {
                position: Some(position),
                commit_time_us,
                ..Group::default()
            }),
        }
        if state.advance(&self.commit_to_ack) {
            self.changed.notify_waiters();
        }
    }

    /// One message of group `ordinal` is on the broker.
    pub fn delivered(&self, ordinal: u64) {
        let mut state = self.lock();
        let index = ordinal.checked_sub(state.first).map(|i| i as usize);
        let Some(group) = index.and_then(|i| state.groups.get_mut(i)) else {
            tracing::error!(ordinal, "delivery report for an unknown message group");
            return;
        };
        group.outstanding = group.outstanding.saturating_sub(1);
        state.outstanding = state.outstanding.saturating_sub(1);
        if state.advance(&self.commit_to_ack) || state.outstanding == 0 {
            self.changed.notify_waiters();
        }
    }

    /// The newest position all of whose events are on the broker.
    pub fn acknowledged(&self) -> Option<Position> {
        self.lock().acknowledged.clone()
    }

    /// Messages produced and not yet acknowledged.
    pub fn outstanding(&self) -> u64 {
        self.lock().outstanding
    }

    /// A future that completes when the acknowledged position or the outstanding count may have changed.
    /// Create it before reading the state, so that a change in between is not missed.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Commit-to-acknowledgement latency of every streamed transaction that carried events.
    pub fn commit_to_ack(&self) -> &Histogram {
        &self.commit_to_ack
    }

    /// Wakes every waiter (used at shutdown).
    pub fn wake(&self) {
        self.changed.notify_waiters();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TrackerState> {
        // A panic elsewhere while holding the lock leaves counters that are still consistent enough to read.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl TrackerState {
    /// Pops every complete group at the front, timing the transactions among them; true when the
    /// acknowledged position moved.
    fn advance(&mut self, commit_to_ack: &Histogram) -> bool {
        let mut moved = false;
        while let Some(front) = self.groups.front() {
            match front.position {
                Some(_) if front.outstanding == 0 => {
                    if let (true, Some(committed)) = (front.carries_messages, front.commit_time_us)
                    {
                        commit_to_ack.observe_us(now_us().saturating_sub(committed).max(0) as u64);
                    }
                    self.acknowledged = self.groups.pop_front().and_then(|group| group.position);
                    self.first += 1;
                    moved = true;
                }
                _ => break,
            }
        }
        moved
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PositionError {
    #[error("cannot create the positions directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the position file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the position file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the position file {path} is damaged ({reason}); move it away to resume from the slot's position")]
    Corrupt { path: PathBuf, reason: String },
    #[error("the journal {path} is damaged ({reason}); remove it: the snapshot is then carried on as if every part had begun, leaving no change out")]
    JournalCorrupt { path: PathBuf, reason: String },
}

/// The server and database a position was read from. A position means nothing on another server (a
/// restored backup, a new primary built from scratch), so resuming there is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceIdentity {
    /// PostgreSQL's system identifier (IDENTIFY_SYSTEM), unique per cluster.
    pub system_id: String,
    pub database: String,
}

impl std::fmt::Display for SourceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "database `{}` of system {}",
            self.database, self.system_id
        )
    }
}

/// What the position file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredPosition {
    /// Which source the position belongs to (the slot name for PostgreSQL).
    pub source: String,
    /// Absent in files written before sluice recorded it; such files are trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<SourceIdentity>,
    pub position: Position,
    /// Written by earlier versions for a PostgreSQL snapshot under way; read as a
    /// [`Position::PostgresSnapshot`] with nothing done.
    #[serde(default, skip_serializing)]
    snapshot_pending: bool,
    pub updated_at_ms: i64,
}

impl StoredPosition {
    /// A snapshot was being read and not all of its rows are on the broker.
    pub fn snapshot_pending(&self) -> bool {
        self.position.snapshot_in_progress()
    }

    /// The one form of an interrupted snapshot, whichever version wrote the file.
    fn upgraded(mut self) -> StoredPosition {
        if let (true, Position::Postgres { lsn }) = (self.snapshot_pending, &self.position) {
            self.position = Position::PostgresSnapshot(PgSnapshotPosition::starting_at(*lsn));
        }
        self.snapshot_pending = false;
        self
    }
}

/// One position file in `[positions].dir`, named after the source so that several instances can share a dir.
pub struct PositionStore {
    path: PathBuf,
    source: String,
    identity: Option<SourceIdentity>,
}

impl PositionStore {
    pub fn open(dir: &Path, source: &str) -> Result<PositionStore, PositionError> {
        fs::create_dir_all(dir).map_err(|source| PositionError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        Ok(PositionStore {
            path: PositionStore::file_path(dir, source),
            source: source.to_owned(),
            identity: None,
        })
    }

    /// Where the position of `source` is kept inside `dir`.
    pub fn file_path(dir: &Path, source: &str) -> PathBuf {
        dir.join(format!("{source}.position.json"))
    }

    /// The identity written with every later position.
    pub fn set_identity(&mut self, identity: SourceIdentity) {
        self.identity = Some(identity);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored position, or None when sluice never delivered anything for this source.
    pub fn load(&self) -> Result<Option<StoredPosition>, PositionError> {
        PositionStore::peek(&self.path, &self.source)
    }

    /// Reads the position file at `path` (None when there is none) without creating anything.
    pub fn peek(path: &Path, source: &str) -> Result<Option<StoredPosition>, PositionError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(PositionError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let stored: StoredPosition =
            serde_json::from_str(&text).map_err(|err| PositionError::Corrupt {
                path: path.to_owned(),
                reason: err.to_string(),
            })?;
        if stored.source != source {
            let reason = format!("it belongs to source `{}`, not `{}`", stored.source, source);
            return Err(PositionError::Corrupt {
                path: path.to_owned(),
                reason,
            });
        }
        Ok(Some(stored.upgraded()))
    }

    /// Deletes the position file at `path` (a missing one is fine).
    pub fn remove(path: &Path) -> Result<(), PositionError> {
        match fs::remove_file(path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(PositionError::Write {
                path: path.to_owned(),
                source: err,
            }),
            _ => Ok(()),
        }
    }

    /// Writes the position atomically: a temporary file, fsync, rename over the old one, fsync the directory.
    /// A crash leaves either the old or the new position, never a torn file.
    pub fn save(&self, position: Position) -> Result<(), PositionError> {
        let stored = StoredPosition {
            source: self.source.clone(),
            identity: self.identity.clone(),
            position,
            snapshot_pending: false,
            updated_at_ms: now_ms(),
        };
        let mut text = serde_json::to_vec_pretty(&stored).expect("position serialises");
        text.push(b'\n');
        write_atomically(&self.path, &text).map_err(|source| PositionError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

/// An append-only record beside a position file, of things that must be on disk before they happen (which
/// parts of a snapshot may have rows on the broker). A header line says what the entries belong to.
#[derive(Clone, Debug)]
pub struct Journal {
    path: PathBuf,
}

impl Journal {
    /// `<name>.journal` in `dir`.
    pub fn open(dir: &Path, name: &str) -> Journal {
        Journal {
            path: dir.join(format!("{name}.journal")),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts the journal afresh, holding only `header`.
    pub fn start<H: Serialize>(&self, header: &H) -> Result<(), PositionError> {
        self.rewrite::<H, ()>(header, &[])
    }

    /// Replaces the journal with `header` and `entries` at once (dropping a torn last line, so that the
    /// next entry does not land behind it).
    pub fn rewrite<H: Serialize, E: Serialize>(
        &self,
        header: &H,
        entries: &[E],
    ) -> Result<(), PositionError> {
        let mut text = Vec::new();
        let header = serde_json::to_vec(header).expect("journal header serialises");
        for line in std::iter::once(header).chain(
            entries
                .iter()
                .map(|entry| serde_json::to_vec(entry).expect("journal entry serialises")),
        ) {
            text.extend_from_slice(&line);
            text.push(b'\n');
        }
        write_atomically(&self.path, &text).map_err(|source| self.write_error(source))
    }

    /// Appends `entry` and waits until it is on disk.
    pub fn append(&self, entry: &impl Serialize) -> Result<(), PositionError> {
        let mut line = serde_json::to_vec(entry).expect("journal entry serialises");
        line.push(b'\n');
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|source| self.write_error(source))?;
        file.write_all(&line)
            .and_then(|()| file.sync_data())
            .map_err(|source| self.write_error(source))
    }

    /// The header and the entries; None when there is no journal. A last line cut short by a crash is
    /// dropped: what it was to record had not happened yet.
    pub fn load<H: DeserializeOwned, E: DeserializeOwned>(
        &self,
    ) -> Result<Option<(H, Vec<E>)>, PositionError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(PositionError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let corrupt = |reason: String| PositionError::JournalCorrupt {
            path: self.path.clone(),
            reason,
        };
        let mut lines = text.split_inclusive('\n');
        let header = lines
            .next()
            .ok_or_else(|| corrupt("it is empty".into()))
            .and_then(|line| serde_json::from_str(line).map_err(|e| corrupt(e.to_string())))?;
        let mut entries = Vec::new();
        for line in lines {
            match serde_json::from_str(line) {
                Ok(entry) => entries.push(entry),
                Err(_) if !line.ends_with('\n') => break,
                Err(err) => return Err(corrupt(err.to_string())),
            }
        }
        Ok(Some((header, entries)))
    }

    pub fn remove(&self) -> Result<(), PositionError> {
        PositionStore::remove(&self.path)
    }

    fn write_error(&self, source: std::io::Error) -> PositionError {
        PositionError::Write {
            path: self.path.clone(),
            source,
        }
    }
}

/// Replaces `path` with `bytes`: a temporary file, fsync, rename over the old one, fsync the directory. A
/// crash leaves either the old or the new content, never a torn file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut file = fs::File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temporary, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

pub fn now_ms() -> i64 {
    now_us() / 1000
}

pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Lsn;

    fn at(lsn: u64) -> Position {
        Position::Postgres { lsn: Lsn(lsn) }
    }

    #[test]
    fn a_position_waits_for_every_earlier_delivery() {
        let tracker = AckTracker::new();
        let first = tracker.register();
        let _ = tracker.register();
        tracker.close_group(at(10), None);
        let second = tracker.register();
        tracker.close_group(at(20), None);
        assert_ne!(first, second);

        // The second transaction is delivered first: nothing is acknowledged yet.
        tracker.delivered(second);
        assert_eq!(tracker.acknowledged(), None);
        tracker.delivered(first);
        assert_eq!(
            tracker.acknowledged(),
            None,
            "one message of the first transaction is still out"
        );
        tracker.delivered(first);
        assert_eq!(tracker.acknowledged(), Some(at(20)));
        assert_eq!(tracker.outstanding(), 0);
    }

    #[test]
    fn an_open_transaction_holds_back_later_idle_points() {
        let tracker = AckTracker::new();
        tracker.close_group(at(5), None);
        assert_eq!(
            tracker.acknowledged(),
            Some(at(5)),
            "an empty group is acknowledged at once"
        );
        let open = tracker.register();
        tracker.delivered(open);
        assert_eq!(tracker.acknowledged(), Some(at(5)), "not sealed yet");
        tracker.close_group(at(9), None);
        assert_eq!(tracker.acknowledged(), Some(at(9)));
    }

    #[test]
    fn each_transaction_with_events_is_timed_from_its_commit_to_its_last_acknowledgement() {
        let tracker = AckTracker::new();
        let committed = now_us() - 2_000_000;
        let message = tracker.register();
        tracker.close_group(at(10), Some(committed));
        // Transactions without events (filtered out) and idle points are not timed.
        tracker.close_group(at(11), Some(committed));
        tracker.close_group(at(12), None);
        assert_eq!(tracker.commit_to_ack().count(), 0, "not acknowledged yet");
        tracker.delivered(message);
        assert_eq!(tracker.acknowledged(), Some(at(12)));
        assert_eq!(tracker.commit_to_ack().count(), 1);
        assert!(tracker.commit_to_ack().sum_us() >= 2_000_000);
    }

    #[test]
    fn unknown_ordinals_are_ignored() {
        let tracker = AckTracker::new();
        tracker.delivered(42);
        assert_eq!(tracker.acknowledged(), None);
    }

    #[test]
    fn a_journal_keeps_what_was_appended_and_drops_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), "slot.snapshot");
        assert_eq!(journal.load::<u32, String>().unwrap(), None);
        journal.start(&7u32).unwrap();
        journal.append(&"a").unwrap();
        journal.append(&"b").unwrap();
        assert_eq!(
            journal.load::<u32, String>().unwrap(),
            Some((7, vec!["a".to_owned(), "b".to_owned()]))
        );
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(journal.path())
            .unwrap();
        file.write_all(b"\"c").unwrap();
        let (header, entries) = journal.load::<u32, String>().unwrap().unwrap();
        assert_eq!(entries.len(), 2);
        // Carried on: rewritten without the torn line before anything is appended behind it.
        journal.rewrite(&header, &entries).unwrap();
        journal.append(&"d").unwrap();
        assert_eq!(
            journal.load::<u32, String>().unwrap().unwrap().1,
            ["a", "b", "d"]
        );
        journal.start(&8u32).unwrap();
        assert_eq!(
            journal.load::<u32, String>().unwrap(),
            Some((8, Vec::new()))
        );
        fs::write(journal.path(), "7\nnot json\n\"c\"\n").unwrap();
        let err = journal.load::<u32, String>().unwrap_err().to_string();
        assert!(err.contains("damaged"), "{err}");
        journal.remove().unwrap();
        assert_eq!(journal.load::<u32, String>().unwrap(), None);
    }

    #[test]
    fn store_round_trips_and_rejects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = PositionStore::open(&dir.path().join("nested"), "sluice").unwrap();
        assert_eq!(store.load().unwrap(), None);
        store.save(at(0x16_B374_D848)).unwrap();
        assert_eq!(store.load().unwrap().unwrap().identity, None);
        let identity = SourceIdentity {
            system_id: "7321".into(),
            database: "shop".into(),
        };
        store.set_identity(identity.clone());
        store.save(at(0x16_B374_D900)).unwrap();
        let loaded = store.load().unwrap().unwrap();
        assert_eq!(loaded.position, at(0x16_B374_D900));
        assert_eq!(loaded.identity, Some(identity));
        assert!(!loaded.snapshot_pending());
        let pending =
            Position::PostgresSnapshot(PgSnapshotPosition::starting_at(Lsn(0x17_0000_0000)));
        store.save(pending.clone()).unwrap();
        assert!(store.load().unwrap().unwrap().snapshot_pending());
        // Earlier versions marked an interrupted snapshot with a flag beside a plain position.
        let legacy = r#"{"source": "sluice", "position": {"kind": "postgres", "lsn": "17/0"},
                         "snapshot_pending": true, "updated_at_ms": 1}"#;
        fs::write(store.path(), legacy).unwrap();
        let upgraded = store.load().unwrap().unwrap();
        assert_eq!(upgraded.position, pending);
        store.save(at(0x17_0000_0000)).unwrap();
        assert!(!store.load().unwrap().unwrap().snapshot_pending());

        fs::write(store.path(), b"{ torn").unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("damaged"), "{err}");

        // A file copied from another source's store is refused rather than resumed from.
        let mine = PositionStore::open(dir.path(), "mine").unwrap();
        mine.save(at(7)).unwrap();
        let other = PositionStore::open(dir.path(), "other").unwrap();
        fs::copy(mine.path(), other.path()).unwrap();
        let err = other.load().unwrap_err().to_string();
        assert!(err.contains("belongs to source `mine`"), "{err}");
    }
}
