//! Which tables (collections) a source's topics already hold, so that one joining the selection later (a
//! config change, a table added to the publication) is snapshotted incrementally by itself
//! (`snapshot_new_tables`).
//!
//! Kept in `<source>.tables.json` beside the position file. A table is recorded only once a stored
//! position says its rows are coming (the initial snapshot covered it, or a stored incremental snapshot
//! names it): a crash before that snapshots it again on the next start rather than never.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::incremental::Progress;
use crate::positions::{write_atomically, PositionError, PositionStore};

pub struct KnownTables {
    path: PathBuf,
    /// None: no file yet (a first start, or a version before this one).
    known: Mutex<Option<BTreeSet<String>>>,
}

impl KnownTables {
    /// The record beside `store`'s position file.
    pub fn open(store: &PositionStore) -> Result<KnownTables, PositionError> {
        let path = tables_path(store.path());
        let known =
            match std::fs::read_to_string(&path) {
                Ok(text) => Some(serde_json::from_str(&text).map_err(|err| {
                    PositionError::TablesCorrupt {
                        path: path.clone(),
                        reason: err.to_string(),
                    }
                })?),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
                Err(source) => return Err(PositionError::Read { path, source }),
            };
        Ok(KnownTables {
            path,
            known: Mutex::new(known),
        })
    }

    /// Decides at the start of a run: returns the selected tables to snapshot incrementally (those not
    /// known and not already in `progress`). With no record yet, or when `snapshot_new` is off, every
    /// selected table counts as known. Tables that left the selection are forgotten: if they come back,
    /// their rows are read again.
    pub fn start(
        &self,
        selected: &[String],
        progress: Option<&Progress>,
        snapshot_new: bool,
    ) -> Result<Vec<String>, PositionError> {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let in_progress =
            |name: &String| progress.is_some_and(|p| p.tables.iter().any(|t| &t.name == name));
        let new: Vec<String> = match (&*known, snapshot_new) {
            (Some(known), true) => selected
                .iter()
                .filter(|name| !known.contains(*name) && !in_progress(name))
                .cloned()
                .collect(),
            _ => Vec::new(),
        };
        let kept: BTreeSet<String> = selected
            .iter()
            .filter(|name| !new.contains(name))
            .cloned()
            .collect();
        if known.as_ref() != Some(&kept) {
            self.write(&kept)?;
            *known = Some(kept);
        }
        Ok(new)
    }

    /// A stored position names `progress`: its tables' rows are coming, so they are known from now on.
    pub fn stored(&self, progress: &Progress) -> Result<(), PositionError> {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let current = known.get_or_insert_with(BTreeSet::new);
        if progress.tables.iter().all(|t| current.contains(&t.name)) {
            return Ok(());
        }
        let mut next = current.clone();
        next.extend(progress.tables.iter().map(|t| t.name.clone()));
        self.write(&next)?;
        *current = next;
        Ok(())
    }

    fn write(&self, tables: &BTreeSet<String>) -> Result<(), PositionError> {
        let mut text = serde_json::to_vec_pretty(tables).expect("names serialise");
        text.push(b'\n');
        write_atomically(&self.path, &text).map_err(|source| PositionError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

/// `<source>.tables.json` beside `<source>.position.json`.
fn tables_path(position: &Path) -> PathBuf {
    let name = position
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".position.json"))
        .unwrap_or("source");
    position.with_file_name(format!("{name}.tables.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_table_joining_later_is_new_until_a_stored_position_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = PositionStore::open(dir.path(), "slot").unwrap();
        let known = KnownTables::open(&store).unwrap();
        // The first start knows every selected table (an initial snapshot, or nothing to catch up).
        assert!(known
            .start(&names(&["a.t"]), None, true)
            .unwrap()
            .is_empty());
        assert!(dir.path().join("slot.tables.json").exists());

        // A later start with one more table: it is new, and stays new while no position names it.
        let known = KnownTables::open(&store).unwrap();
        assert_eq!(
            known.start(&names(&["a.t", "a.u"]), None, true).unwrap(),
            names(&["a.u"])
        );
        let known = KnownTables::open(&store).unwrap();
        assert_eq!(
            known.start(&names(&["a.t", "a.u"]), None, true).unwrap(),
            names(&["a.u"])
        );

        // Once a stored position's snapshot names it, it is known; one already in the stored progress
        // is not requested twice.
        let mut progress = Progress::default();
        progress.request(&names(&["a.u"]), &[]);
        assert!(known
            .start(&names(&["a.t", "a.u"]), Some(&progress), true)
            .unwrap()
            .is_empty());
        known.stored(&progress).unwrap();
        let known = KnownTables::open(&store).unwrap();
        assert!(known
            .start(&names(&["a.t", "a.u"]), None, true)
            .unwrap()
            .is_empty());

        // A table that leaves is forgotten, so that coming back reads it again; with the option off
        // nothing is new.
        assert!(known
            .start(&names(&["a.t"]), None, true)
            .unwrap()
            .is_empty());
        assert_eq!(
            known.start(&names(&["a.t", "a.u"]), None, true).unwrap(),
            names(&["a.u"])
        );
        let known = KnownTables::open(&store).unwrap();
        assert!(known
            .start(&names(&["a.t", "a.u", "a.v"]), None, false)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_damaged_record_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = PositionStore::open(dir.path(), "slot").unwrap();
        std::fs::write(dir.path().join("slot.tables.json"), "{not json").unwrap();
        let err = KnownTables::open(&store).err().unwrap().to_string();
        assert!(err.contains("slot.tables.json"), "{err}");
    }
}
