//! Where a source's position is kept between runs: the position file (written atomically before the
//! source is told, so that a restart resumes after the last delivered transaction even when the crash came
//! before the server heard of it) and the journal of things that must be on disk before they happen.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::event::{PgSnapshotPosition, Position};

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
    #[error("the record of known tables {path} is damaged ({reason}); remove it: every selected table then counts as known (none is snapshotted for having joined)")]
    TablesCorrupt { path: PathBuf, reason: String },
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
    /// `position` of `source`, stored now, of no recorded identity.
    pub fn new(source: String, position: Position) -> StoredPosition {
        StoredPosition {
            source,
            identity: None,
            position,
            snapshot_pending: false,
            updated_at_ms: now_ms(),
        }
    }

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

/// The position file as `sluice check` sees it: read, never created or changed.
pub struct PositionPeek {
    /// Where the file is, or would be.
    pub file: PathBuf,
    /// What it holds (None: nothing yet), or why `sluice run` would refuse it.
    pub stored: Result<Option<StoredPosition>, PositionError>,
}

impl PositionPeek {
    /// The position of `source` in `dir`, as [`PositionStore::open`] would find it.
    pub fn read(dir: &Path, source: &str) -> PositionPeek {
        let file = PositionStore::file_path(dir, source);
        let stored = PositionStore::peek(&file, source);
        PositionPeek { file, stored }
    }
}

/// One position file in `[positions].dir`, named after the source so that several instances can share a dir.
pub struct PositionStore {
    path: PathBuf,
    source: String,
    /// Learnt when the source connects; set through a shared reference, since the reader and the
    /// acknowledger share the store.
    identity: std::sync::Mutex<Option<SourceIdentity>>,
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
            identity: std::sync::Mutex::new(None),
        })
    }

    /// Where the position of `source` is kept inside `dir`.
    pub fn file_path(dir: &Path, source: &str) -> PathBuf {
        dir.join(format!("{source}.position.json"))
    }

    /// The identity written with every later position.
    pub fn set_identity(&self, identity: SourceIdentity) {
        *self.identity.lock().unwrap_or_else(|p| p.into_inner()) = Some(identity);
    }

    /// The journal named `name` beside the position file (`<source>.<name>.journal`).
    pub fn journal(&self, name: &str) -> Journal {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        Journal::open(dir, &format!("{}.{name}", self.source))
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
            identity: self
                .identity
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            ..StoredPosition::new(self.source.clone(), position)
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
        let store = PositionStore::open(&dir.path().join("nested"), "sluice").unwrap();
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
