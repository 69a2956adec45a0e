//! The stream after a carried-on snapshot.
//!
//! A run that carries an interrupted snapshot on reads the remaining rows in a snapshot of its own, later
//! than the slot's consistent point, while the stream still starts at that point. For a row read in such a
//! later snapshot, the changes of every transaction that snapshot saw are already in the row; publishing
//! them again would put older states after a newer one on the topic. [`Overlap`] leaves exactly those
//! changes out: which transactions a snapshot saw is decided by their ids, as PostgreSQL decides it, so
//! nothing it did not see is left out. Past the WAL position at which the last later snapshot was taken,
//! no transaction can have been seen by one, and the overlap ends.

use sluice_core::event::{
    ChangeEvent, LaterSnapshot, Lsn, Op, PgSnapshotPosition, Position, Row, Value,
};

/// What the stream leaves out until it passes `until`.
pub struct Overlap {
    /// Only the tables some of whose rows a later snapshot read: few, so they are searched, not indexed.
    position: PgSnapshotPosition,
    until: Lsn,
    /// Tables that stopped being filtered inside the open transaction: put back if it is cut off and
    /// replayed, so that the replay leaves out the same events.
    released_in_transaction: Vec<usize>,
    released: Vec<bool>,
}

impl Overlap {
    /// None when no row was read later than the consistent point: the stream then skips nothing.
    pub fn new(mut position: PgSnapshotPosition) -> Option<Overlap> {
        // What the consistent point's snapshot read needs nothing left out.
        for table in &mut position.tables {
            table.ranges.retain(|range| range.read_in.is_some());
        }
        position
            .tables
            .retain(|table| table.read_in.is_some() || !table.ranges.is_empty());
        // Only the snapshots some row was read in count: a run that recorded nothing adds one too.
        let until = position
            .tables
            .iter()
            .flat_map(|table| {
                table
                    .ranges
                    .iter()
                    .map(|range| range.read_in)
                    .chain([table.read_in])
            })
            .flatten()
            .filter_map(|i| position.later.get(i))
            .map(|later| later.until)
            .max()?;
        let released = vec![false; position.tables.len()];
        Some(Overlap {
            position,
            until,
            released_in_transaction: Vec::new(),
            released,
        })
    }

    /// Whether a transaction committed at `commit_lsn` (or an idle point there) is past every later
    /// snapshot.
    pub fn ends_at(&self, lsn: Lsn) -> bool {
        lsn >= self.until
    }

    /// The position to store after the transaction that ends at `lsn`: the overlap goes with it, so that
    /// a restart inside it still leaves out what it must.
    pub fn position_at(&self, lsn: Lsn) -> Position {
        let mut position = self.position.clone();
        position.lsn = lsn;
        position.complete = true;
        let released = self.released.iter();
        let mut kept = released.map(|released| !released);
        position.tables.retain(|_| kept.next().unwrap_or(true));
        Position::PostgresSnapshot(position)
    }

    /// Whether the stream leaves out `event` of transaction `xid`, committed at `commit_lsn`.
    pub fn leaves_out(&mut self, xid: u32, commit_lsn: Lsn, event: &ChangeEvent) -> bool {
        if self.ends_at(commit_lsn) {
            return false;
        }
        let table = &event.table;
        let Some(i) = self
            .position
            .tables
            .iter()
            .position(|read| read.schema == table.schema && read.name == table.name)
        else {
            return false;
        };
        if self.released[i] {
            return false;
        }
        let read = &self.position.tables[i];
        let read_in = match (event.op, &read.key) {
            (Op::Truncate, None) => read.read_in,
            // Part of the table was read in a later snapshot that saw the truncate, part earlier: the
            // truncate must reach the topic, and every change after it too, since the later snapshot's
            // rows it removes are gone from the topic with it.
            (Op::Truncate, Some(_)) => {
                self.released[i] = true;
                self.released_in_transaction.push(i);
                return false;
            }
            (_, None) => read.read_in,
            (_, Some(column)) => {
                let row = match event.op {
                    Op::Delete => event.before.as_ref(),
                    _ => event.after.as_ref(),
                };
                row.and_then(|row| integer_key(event, row, column))
                    .and_then(|key| {
                        read.ranges
                            .iter()
                            .find(|range| (range.low..=range.high).contains(&key))
                    })
                    .and_then(|range| range.read_in)
            }
        };
        read_in
            .and_then(|i| self.position.later.get(i))
            .is_some_and(|later| saw(later, xid))
    }

    /// The open transaction committed: what it released stays released.
    pub fn committed(&mut self) {
        self.released_in_transaction.clear();
    }

    /// The open transaction was cut off and will be replayed from its start.
    pub fn cut_off(&mut self) {
        for i in self.released_in_transaction.drain(..) {
            self.released[i] = false;
        }
    }
}

/// The value of the integer key column `column` in `row`.
fn integer_key(event: &ChangeEvent, row: &Row, column: &str) -> Option<i64> {
    let at = event.table.columns.iter().position(|c| c.name == column)?;
    match row.get(at)? {
        Value::Int16(v) => Some(i64::from(*v)),
        Value::Int32(v) => Some(i64::from(*v)),
        Value::Int64(v) => Some(*v),
        _ => None,
    }
}

/// Whether `snapshot` saw the transaction `xid` committed: its id is below every id running then, or below
/// the next id to be assigned and not among those running (PostgreSQL's own rule).
pub fn saw(snapshot: &LaterSnapshot, xid: u32) -> bool {
    let full = widen(xid, snapshot.xmax);
    full < snapshot.xmin || (full < snapshot.xmax && !snapshot.xip.contains(&full))
}

/// The full (epoch-qualified) transaction id nearest `reference` whose low 32 bits are `xid`. pgoutput
/// sends 32-bit ids; the transactions in question ran around the time of the snapshot, far closer to
/// it than half the id space.
fn widen(xid: u32, reference: u64) -> u64 {
    const HALF: u64 = 1 << 31;
    const EPOCH: u64 = 1 << 32;
    let candidate = (reference & !(EPOCH - 1)) | u64::from(xid);
    if candidate > reference.saturating_add(HALF) {
        candidate.checked_sub(EPOCH).unwrap_or(candidate)
    } else if candidate.saturating_add(HALF) < reference {
        candidate + EPOCH
    } else {
        candidate
    }
}

/// Parses `pg_current_snapshot()`'s text, `xmin:xmax:xip,xip,…`.
pub fn parse_snapshot(text: &str, until: Lsn) -> Result<LaterSnapshot, String> {
    let bad = || format!("`{text}` is not a snapshot (xmin:xmax:xip,…)");
    let mut parts = text.splitn(3, ':');
    let mut next = || parts.next().ok_or_else(bad);
    let xmin = next()?.parse().map_err(|_| bad())?;
    let xmax = next()?.parse().map_err(|_| bad())?;
    let xip = next()?
        .split(',')
        .filter(|id| !id.is_empty())
        .map(|id| id.parse().map_err(|_| bad()))
        .collect::<Result<Vec<u64>, String>>()?;
    Ok(LaterSnapshot {
        xmin,
        xmax,
        xip,
        until,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use sluice_core::event::{
        Column, ColumnType, PgRangeRead, PgTableRead, SnapshotMarker, SourceInfo, Table,
        TransactionOrder,
    };

    /// The table's record while the overlap still filters it.
    fn filtered<'o>(overlap: &'o Overlap, schema: &str, name: &str) -> Option<&'o PgTableRead> {
        let i = overlap
            .position
            .tables
            .iter()
            .position(|read| read.schema == schema && read.name == name)?;
        (!overlap.released[i]).then(|| &overlap.position.tables[i])
    }

    fn later(text: &str, until: u64) -> LaterSnapshot {
        parse_snapshot(text, Lsn(until)).unwrap()
    }

    #[test]
    fn a_snapshot_saw_what_committed_before_it() {
        let snapshot = later("100:105:100,103", 0);
        let seen: Vec<u32> = (98..107).filter(|&xid| saw(&snapshot, xid)).collect();
        assert_eq!(seen, [98, 99, 101, 102, 104]);
        assert!(saw(&later("7:7:", 0), 6));
        assert!(parse_snapshot("7:x:", Lsn(0)).is_err());
        assert!(parse_snapshot("7", Lsn(0)).is_err());
    }

    #[test]
    fn ids_are_read_in_the_snapshots_epoch() {
        // xmax just past an epoch boundary: an id just below it belongs to the epoch before.
        let epoch = 1u64 << 32;
        let snapshot = LaterSnapshot {
            xmin: epoch + 5,
            xmax: epoch + 10,
            xip: vec![],
            until: Lsn(0),
        };
        assert!(saw(&snapshot, u32::MAX), "the previous epoch's last id");
        assert!(saw(&snapshot, 7));
        assert!(!saw(&snapshot, 10));
        assert_eq!(widen(u32::MAX, epoch + 10), epoch - 1);
        assert_eq!(widen(3, epoch - 2), epoch + 3);
        assert_eq!(widen(u32::MAX, 10), u64::from(u32::MAX), "no epoch below 0");
    }

    fn items() -> Arc<Table> {
        let column = |name: &str, key| Column {
            name: name.into(),
            column_type: ColumnType::Int64,
            key,
            source_type: "int8".into(),
            not_null: false,
            precision: None,
        };
        Arc::new(Table {
            id: 1,
            schema: "public".into(),
            name: "items".into(),
            columns: vec![column("id", true), column("qty", false)],
        })
    }

    fn event(table: &Arc<Table>, op: Op, id: i64) -> ChangeEvent {
        let row = vec![Value::Int64(id), Value::Int64(1)];
        let (before, after) = match op {
            Op::Delete => (Some(row), None),
            Op::Truncate => (None, None),
            _ => (None, Some(row)),
        };
        ChangeEvent {
            table: table.clone(),
            op,
            before,
            after,
            source: SourceInfo {
                database: "shop".into(),
                txid: None,
                lsn: Lsn(0),
                commit_lsn: Lsn(0),
                commit_time_us: 0,
                snapshot: SnapshotMarker::False,
                order: Some(TransactionOrder {
                    total: 1,
                    in_table: 1,
                }),
            },
        }
    }

    fn position() -> PgSnapshotPosition {
        PgSnapshotPosition {
            lsn: Lsn(0x100),
            complete: true,
            tables: vec![
                PgTableRead {
                    schema: "public".into(),
                    name: "items".into(),
                    done: true,
                    key: Some("id".into()),
                    ranges: vec![
                        PgRangeRead {
                            low: 1,
                            high: 100,
                            read_in: None,
                        },
                        PgRangeRead {
                            low: 101,
                            high: 200,
                            read_in: Some(0),
                        },
                    ],
                    ..PgTableRead::default()
                },
                PgTableRead {
                    schema: "public".into(),
                    name: "tags".into(),
                    done: true,
                    read_in: Some(0),
                    ..PgTableRead::default()
                },
                PgTableRead {
                    schema: "public".into(),
                    name: "early".into(),
                    done: true,
                    ..PgTableRead::default()
                },
            ],
            later: vec![later("50:60:55", 0x500)],
        }
    }

    #[test]
    fn only_changes_a_later_snapshot_saw_in_rows_it_read_are_left_out() {
        let mut overlap = Overlap::new(position()).unwrap();
        let items = items();
        let seen = 52;
        let unseen = 55;
        assert!(overlap.leaves_out(seen, Lsn(0x200), &event(&items, Op::Update, 150)));
        assert!(overlap.leaves_out(seen, Lsn(0x200), &event(&items, Op::Delete, 101)));
        assert!(!overlap.leaves_out(unseen, Lsn(0x200), &event(&items, Op::Update, 150)));
        assert!(
            !overlap.leaves_out(seen, Lsn(0x200), &event(&items, Op::Update, 50)),
            "read at the consistent point"
        );
        assert!(
            !overlap.leaves_out(seen, Lsn(0x200), &event(&items, Op::Create, 9_999)),
            "outside every range: no snapshot had the row"
        );
        assert!(
            !overlap.leaves_out(seen, Lsn(0x500), &event(&items, Op::Update, 150)),
            "past the overlap"
        );
        assert!(overlap.ends_at(Lsn(0x500)) && !overlap.ends_at(Lsn(0x4FF)));
        let mut tags = (*items).clone();
        tags.name = "tags".into();
        let tags = Arc::new(tags);
        assert!(overlap.leaves_out(seen, Lsn(0x200), &event(&tags, Op::Truncate, 0)));
        assert!(overlap.leaves_out(seen, Lsn(0x200), &event(&tags, Op::Create, 7)));
        // The table read at the consistent point is not kept at all.
        assert!(filtered(&overlap, "public", "early").is_none());
        let Position::PostgresSnapshot(stored) = overlap.position_at(Lsn(0x300)) else {
            panic!("the overlap is stored with the position");
        };
        assert_eq!((stored.lsn, stored.complete), (Lsn(0x300), true));
        assert_eq!(stored.tables.len(), 2);
        assert_eq!(stored.tables[0].ranges.len(), 1);
        assert_eq!(Overlap::new(stored).unwrap().until, Lsn(0x500));
    }

    #[test]
    fn a_truncate_of_a_table_read_partly_later_stops_its_filtering() {
        let mut overlap = Overlap::new(position()).unwrap();
        let items = items();
        assert!(!overlap.leaves_out(52, Lsn(0x200), &event(&items, Op::Truncate, 0)));
        assert!(!overlap.leaves_out(52, Lsn(0x200), &event(&items, Op::Create, 150)));
        // Cut off before its commit: the replay filters as the first reading did.
        overlap.cut_off();
        assert!(filtered(&overlap, "public", "items").is_some());
        assert!(!overlap.leaves_out(52, Lsn(0x200), &event(&items, Op::Truncate, 0)));
        overlap.committed();
        overlap.cut_off();
        assert!(filtered(&overlap, "public", "items").is_none());
        let Position::PostgresSnapshot(stored) = overlap.position_at(Lsn(0x300)) else {
            panic!("still in the overlap");
        };
        assert_eq!(stored.tables.len(), 1, "{stored:?}");
    }

    #[test]
    fn nothing_read_later_means_no_overlap() {
        let mut position = position();
        position.tables.truncate(1);
        position.tables[0].ranges.truncate(1);
        assert!(Overlap::new(position).is_none());
    }
}
