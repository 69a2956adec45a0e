//! What of a snapshot is on the broker: the record the position file keeps while rows are read, so that a
//! run that stops or dies is carried on by the next one instead of starting again from the first row.

use serde::{Deserialize, Serialize};

use super::catalog::TableName;
use sluice_core::event::{Lsn, PgRangeRead, PgSnapshotPosition, PgTableRead};
use sluice_core::positions::{Journal, PositionError};

/// A part of a snapshot whose rows may be on the broker: journaled before its first row is handed on.
/// A whole table has no key and the range of every key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Begun {
    pub schema: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub low: i64,
    pub high: i64,
}

/// The journal's first line: the snapshot its entries belong to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct JournalHeader {
    /// The consistent point.
    lsn: Lsn,
    /// Rows may be on the broker that no entry records (a run of an earlier version, or a slot whose
    /// earlier readers are unknown): every part counts as begun.
    #[serde(default)]
    all_begun: bool,
}

/// What earlier runs may have put on the broker of the parts not recorded as finished. A row they
/// published may since have been deleted; the stream must then not leave that delete out, so parts they
/// began are carried on without leaving anything out.
pub(super) struct BegunBefore {
    journal: Journal,
    /// None: unknown, every part counts as begun.
    parts: Option<Vec<Begun>>,
}

impl BegunBefore {
    /// A snapshot at `lsn` starting from nothing: no part has begun, and the journal starts afresh.
    pub fn nothing(journal: Journal, lsn: Lsn) -> Result<BegunBefore, PositionError> {
        journal.start(&JournalHeader {
            lsn,
            all_begun: false,
        })?;
        Ok(BegunBefore {
            journal,
            parts: Some(Vec::new()),
        })
    }

    /// A snapshot at `lsn` carried on: what its journal says began, if it is that snapshot's journal.
    pub fn carried_on(journal: Journal, lsn: Lsn) -> Result<BegunBefore, PositionError> {
        let parts = match journal.load::<JournalHeader, Begun>()? {
            Some((header, parts)) if header.lsn == lsn => {
                // Written again without a line a crash may have cut short, before this run appends.
                journal.rewrite(&header, &parts)?;
                (!header.all_begun).then_some(parts)
            }
            _ => {
                journal.start(&JournalHeader {
                    lsn,
                    all_begun: true,
                })?;
                None
            }
        };
        Ok(BegunBefore { journal, parts })
    }

    /// Whether an earlier run may have put rows of `table` with values of `key` (None: the whole table)
    /// in `low..=high` on the broker. A part split on another key (or read whole) may have any row.
    pub fn overlaps(&self, table: &TableName, key: Option<&str>, low: i64, high: i64) -> bool {
        self.parts.as_ref().is_none_or(|parts| {
            parts.iter().any(|part| {
                part.schema == table.schema
                    && part.name == table.name
                    && (part.key.as_deref() != key || (part.low <= high && low <= part.high))
            })
        })
    }

    /// Where this run's begun parts are journaled.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }
}

/// A finished part of the snapshot, reported by the reader that finished it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Finished {
    /// Every row of the table whose key is in `low..=high` was handed on.
    Range {
        table: TableName,
        key: String,
        low: i64,
        high: i64,
    },
    /// Every piece of the table was handed on.
    Table(TableName),
    /// The ranges an earlier run read no longer fit the table (its key changed): it is read again whole.
    Forget(TableName),
}

/// Records `finished`, read in snapshot `read_in` (None: the slot's exported one).
pub(super) fn record(
    progress: &mut PgSnapshotPosition,
    finished: &Finished,
    read_in: Option<usize>,
) {
    match finished {
        Finished::Range {
            table,
            key,
            low,
            high,
        } => {
            let entry = entry(progress, table);
            entry.key = Some(key.clone());
            entry.ranges.push(PgRangeRead {
                low: *low,
                high: *high,
                read_in,
            });
            merge_adjacent(&mut entry.ranges);
        }
        Finished::Table(table) => {
            let entry = entry(progress, table);
            entry.done = true;
            if entry.key.is_none() {
                entry.read_in = read_in;
            }
        }
        Finished::Forget(table) => progress.tables.retain(|t| !is(t, table)),
    }
}

/// The table's record, made when it has none.
fn entry<'p>(progress: &'p mut PgSnapshotPosition, table: &TableName) -> &'p mut PgTableRead {
    match progress.tables.iter().position(|t| is(t, table)) {
        Some(i) => &mut progress.tables[i],
        None => {
            progress.tables.push(PgTableRead {
                schema: table.schema.clone(),
                name: table.name.clone(),
                ..PgTableRead::default()
            });
            progress.tables.last_mut().expect("just pushed")
        }
    }
}

pub(super) fn is(read: &PgTableRead, table: &TableName) -> bool {
    read.schema == table.schema && read.name == table.name
}

/// Sorts the ranges and joins neighbours read in the same snapshot, so that the record stays about as
/// long as the number of interruptions, not the number of ranges.
fn merge_adjacent(ranges: &mut Vec<PgRangeRead>) {
    ranges.sort_by_key(|range| range.low);
    let mut merged: Vec<PgRangeRead> = Vec::with_capacity(ranges.len());
    for range in ranges.drain(..) {
        match merged.last_mut() {
            Some(last)
                if last.read_in == range.read_in && last.high.checked_add(1) == Some(range.low) =>
            {
                last.high = range.high;
            }
            _ => merged.push(range),
        }
    }
    *ranges = merged;
}

/// The keys no range covers, as `(low, high)` intervals over the whole `int8` line: what a carried-on
/// snapshot still has to read of a table read in ranges.
pub(super) fn gaps(ranges: &[PgRangeRead]) -> Vec<(i64, i64)> {
    let mut sorted: Vec<(i64, i64)> = ranges.iter().map(|r| (r.low, r.high)).collect();
    sorted.sort_unstable();
    let mut gaps = Vec::new();
    // The first key not yet known to be covered; None once the line's end is covered.
    let mut next = Some(i64::MIN);
    for (low, high) in sorted {
        let Some(from) = next else { break };
        if low > from {
            gaps.push((from, low - 1));
        }
        if high >= from {
            next = high.checked_add(1);
        }
    }
    if let Some(from) = next {
        gaps.push((from, i64::MAX));
    }
    gaps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items() -> TableName {
        TableName {
            schema: "public".into(),
            name: "items".into(),
        }
    }

    fn range(low: i64, high: i64) -> Finished {
        Finished::Range {
            table: items(),
            key: "id".into(),
            low,
            high,
        }
    }

    fn bounds(progress: &PgSnapshotPosition) -> Vec<(i64, i64, Option<usize>)> {
        progress.tables[0]
            .ranges
            .iter()
            .map(|r| (r.low, r.high, r.read_in))
            .collect()
    }

    #[test]
    fn neighbouring_ranges_of_one_snapshot_are_kept_as_one() {
        let mut progress = PgSnapshotPosition::default();
        record(&mut progress, &range(201, 300), None);
        record(&mut progress, &range(1, 100), None);
        record(&mut progress, &range(101, 200), None);
        assert_eq!(bounds(&progress), [(1, 300, None)]);
        // Read in another snapshot: a range of its own, even next to the others.
        record(&mut progress, &range(301, 400), Some(0));
        record(&mut progress, &range(401, 500), Some(0));
        assert_eq!(bounds(&progress), [(1, 300, None), (301, 500, Some(0))]);
        assert!(!progress.tables[0].done);
        record(&mut progress, &Finished::Table(items()), Some(0));
        let table = &progress.tables[0];
        assert!(table.done);
        assert_eq!(table.read_in, None, "a table read in ranges has them");
        record(&mut progress, &Finished::Forget(items()), Some(1));
        assert!(progress.tables.is_empty());
        record(&mut progress, &Finished::Table(items()), Some(1));
        assert_eq!(
            (progress.tables[0].read_in, progress.tables[0].key.as_ref()),
            (Some(1), None),
            "read whole"
        );
    }

    #[test]
    fn parts_begun_before_are_matched_by_table_key_and_range() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), "slot.snapshot");
        let lsn = Lsn(0x100);
        let fresh = BegunBefore::nothing(journal.clone(), lsn).unwrap();
        assert!(!fresh.overlaps(&items(), None, i64::MIN, i64::MAX));
        let begun = |key: Option<&str>, low, high| Begun {
            schema: "public".into(),
            name: "items".into(),
            key: key.map(str::to_owned),
            low,
            high,
        };
        journal.append(&begun(Some("id"), 100, 199)).unwrap();
        let carried = BegunBefore::carried_on(journal.clone(), lsn).unwrap();
        assert!(carried.overlaps(&items(), Some("id"), 150, 300));
        assert!(!carried.overlaps(&items(), Some("id"), 200, 300));
        assert!(
            carried.overlaps(&items(), Some("code"), 200, 300),
            "split on another key"
        );
        assert!(
            carried.overlaps(&items(), None, i64::MIN, i64::MAX),
            "read whole"
        );
        let tags = TableName {
            schema: "public".into(),
            name: "tags".into(),
        };
        assert!(!carried.overlaps(&tags, None, i64::MIN, i64::MAX));
        // Another snapshot's journal, or none: anything may have begun, and it stays so.
        let other = BegunBefore::carried_on(journal.clone(), Lsn(0x200)).unwrap();
        assert!(other.overlaps(&tags, None, i64::MIN, i64::MAX));
        let again = BegunBefore::carried_on(journal, Lsn(0x200)).unwrap();
        assert!(again.overlaps(&tags, Some("id"), 1, 1));
    }

    #[test]
    fn gaps_are_what_no_range_covers() {
        let covered = |pairs: &[(i64, i64)]| -> Vec<PgRangeRead> {
            pairs
                .iter()
                .map(|&(low, high)| PgRangeRead {
                    low,
                    high,
                    read_in: None,
                })
                .collect()
        };
        assert_eq!(gaps(&[]), [(i64::MIN, i64::MAX)]);
        assert_eq!(
            gaps(&covered(&[(11, 20), (1, 5)])),
            [(i64::MIN, 0), (6, 10), (21, i64::MAX)]
        );
        assert_eq!(gaps(&covered(&[(i64::MIN, 5), (6, i64::MAX)])), []);
        assert_eq!(
            gaps(&covered(&[(i64::MIN, i64::MAX - 1)])),
            [(i64::MAX, i64::MAX)]
        );
        // Overlapping records (never written, but not trusted to be absent) leave no gap between them.
        assert_eq!(
            gaps(&covered(&[(1, 10), (5, 7), (8, 20)])),
            [(i64::MIN, 0), (21, i64::MAX)]
        );
    }
}
