//! One test per way a run can begin: slot or none, stored position or none, each snapshot mode, a
//! temporary slot, an interrupted snapshot, a slot ahead of the position.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::config::{DecimalHandling, Selection};
use crate::connection::PgConnection;
use sluice_core::event::{Lsn, Position};

const FILE: &str = "/var/lib/sluice/position.json";

fn settings(snapshot: SnapshotMode) -> PostgresSettings {
    PostgresSettings {
        connection: PgConnection::parse("postgres://sluice@localhost/shop").unwrap(),
        database: "shop".into(),
        slot: "sluice".into(),
        slot_lifetime: SlotLifetime::Permanent,
        publication: "sluice".into(),
        selection: Selection::default(),
        status_interval: Duration::from_secs(10),
        snapshot,
        capture_messages: false,
        snapshot_connections: 1,
        snapshot_chunk_rows: 1000,
        decimal_handling: DecimalHandling::Precise,
        heartbeat_interval: None,
        signal_table: None,
        incremental_chunk_rows: 1024,
        snapshot_new_tables: true,
        reselect_unchanged_toast: false,
    }
}

/// A pgoutput slot of `shop` whose confirmed position is `confirmed`.
fn slot(confirmed: u64) -> SlotInfo {
    SlotInfo {
        plugin: Some("pgoutput".into()),
        slot_type: "logical".into(),
        database: Some("shop".into()),
        active: false,
        confirmed_flush_lsn: Some(Lsn(confirmed).to_string()),
    }
}

fn streamed(lsn: u64) -> Position {
    Position::Postgres { lsn: Lsn(lsn) }
}

/// A snapshot whose rows are read up to some point, with its consistent point at `lsn`.
fn interrupted(lsn: u64) -> Position {
    Position::PostgresSnapshot(PgSnapshotPosition::starting_at(Lsn(lsn)))
}

fn resume(position: &Position) -> Option<Resume<'_>> {
    Some(Resume {
        position,
        identity: None,
        file: Path::new(FILE),
    })
}

fn decide_with(
    mode: SnapshotMode,
    slot: Option<SlotInfo>,
    position: Option<&Position>,
) -> Result<Start, SourceError> {
    decide(&settings(mode), slot.as_ref(), position.and_then(resume))
}

#[test]
fn a_first_run_creates_the_slot_and_reads_the_tables() {
    for mode in [
        SnapshotMode::Initial,
        SnapshotMode::InitialOnly,
        SnapshotMode::WhenNeeded,
    ] {
        let start = decide_with(mode, None, None).unwrap();
        assert_eq!(start, Start::CreateSlot { snapshot: true }, "{mode:?}");
    }
}

#[test]
fn a_first_run_without_snapshot_creates_the_slot_only() {
    let start = decide_with(SnapshotMode::Never, None, None).unwrap();
    assert_eq!(start, Start::CreateSlot { snapshot: false });
}

#[test]
fn a_stored_position_with_its_slot_streams() {
    let position = streamed(0x200);
    for mode in [
        SnapshotMode::Initial,
        SnapshotMode::Never,
        SnapshotMode::WhenNeeded,
    ] {
        let start = decide_with(mode, Some(slot(0x200)), Some(&position)).unwrap();
        assert_eq!(start, Start::Stream, "{mode:?}");
    }
}

#[test]
fn a_slot_ahead_of_the_stored_position_still_streams() {
    // The changes in between are gone from the slot: a warning, not a new snapshot.
    let position = streamed(0x200);
    let start = decide_with(SnapshotMode::Initial, Some(slot(0x900)), Some(&position)).unwrap();
    assert_eq!(start, Start::Stream);
}

#[test]
fn a_lost_slot_with_a_stored_position_is_refused() {
    let position = streamed(0x200);
    for mode in [
        SnapshotMode::Initial,
        SnapshotMode::Never,
        SnapshotMode::InitialOnly,
    ] {
        let err = decide_with(mode, None, Some(&position)).unwrap_err();
        assert!(
            matches!(&err, SourceError::SlotLost { slot, position, position_file }
                if slot == "sluice" && *position == Lsn(0x200) && position_file == FILE),
            "{mode:?}: {err}"
        );
    }
}

#[test]
fn a_lost_slot_when_needed_creates_it_and_reads_the_tables_again() {
    let position = streamed(0x200);
    let start = decide_with(SnapshotMode::WhenNeeded, None, Some(&position)).unwrap();
    assert_eq!(start, Start::CreateSlot { snapshot: true });
}

#[test]
fn an_existing_slot_without_a_position_is_read_in_a_snapshot_of_its_own() {
    let start = decide_with(SnapshotMode::Initial, Some(slot(0x300)), None).unwrap();
    assert_eq!(
        start,
        Start::Snapshot(PgSnapshotPosition::starting_at(Lsn(0x300)))
    );
}

#[test]
fn an_existing_slot_without_a_position_and_without_snapshot_streams() {
    let start = decide_with(SnapshotMode::Never, Some(slot(0x300)), None).unwrap();
    assert_eq!(start, Start::Stream);
}

#[test]
fn an_interrupted_snapshot_is_carried_on_while_the_slot_has_not_moved() {
    let mut progress = PgSnapshotPosition::starting_at(Lsn(0x300));
    progress.tables.push(sluice_core::event::PgTableRead {
        schema: "public".into(),
        name: "items".into(),
        ..Default::default()
    });
    let position = Position::PostgresSnapshot(progress.clone());
    for confirmed in [0x300, 0x280] {
        let start = decide_with(
            SnapshotMode::Initial,
            Some(slot(confirmed)),
            Some(&position),
        );
        assert_eq!(start.unwrap(), Start::Snapshot(progress.clone()));
    }
}

#[test]
fn an_interrupted_snapshot_whose_slot_moved_is_refused() {
    let position = interrupted(0x300);
    for mode in [SnapshotMode::Initial, SnapshotMode::InitialOnly] {
        let err = decide_with(mode, Some(slot(0x400)), Some(&position)).unwrap_err();
        assert!(
            matches!(&err, SourceError::SnapshotSlotMoved { consistent_point, confirmed, .. }
                if *consistent_point == Lsn(0x300) && *confirmed == Lsn(0x400)),
            "{mode:?}: {err}"
        );
    }
}

#[test]
fn an_interrupted_snapshot_whose_slot_moved_starts_again_when_needed() {
    let position = interrupted(0x300);
    let start = decide_with(SnapshotMode::WhenNeeded, Some(slot(0x400)), Some(&position));
    assert_eq!(start.unwrap(), Start::RecreateSlot);
}

#[test]
fn an_interrupted_snapshot_is_abandoned_with_snapshot_never() {
    let position = interrupted(0x300);
    let start = decide_with(SnapshotMode::Never, Some(slot(0x400)), Some(&position));
    assert_eq!(start.unwrap(), Start::Stream);
}

#[test]
fn an_interrupted_snapshot_whose_slot_is_gone_is_taken_again() {
    let position = interrupted(0x300);
    let start = decide_with(SnapshotMode::Initial, None, Some(&position)).unwrap();
    assert_eq!(start, Start::CreateSlot { snapshot: true });
    let start = decide_with(SnapshotMode::Never, None, Some(&position)).unwrap();
    assert_eq!(start, Start::CreateSlot { snapshot: false });
}

#[test]
fn a_completed_snapshot_streams_from_its_position() {
    let mut progress = PgSnapshotPosition::starting_at(Lsn(0x300));
    progress.complete = true;
    let position = Position::PostgresSnapshot(progress);
    let start = decide_with(SnapshotMode::Initial, Some(slot(0x300)), Some(&position));
    assert_eq!(start.unwrap(), Start::Stream);
    let err = decide_with(SnapshotMode::Initial, None, Some(&position)).unwrap_err();
    assert!(matches!(err, SourceError::SlotLost { .. }), "{err}");
}

#[test]
fn a_temporary_slot_is_created_at_every_start() {
    let mut settings = settings(SnapshotMode::Initial);
    settings.slot_lifetime = SlotLifetime::Temporary;
    let start = decide(&settings, None, None).unwrap();
    assert_eq!(start, Start::CreateSlot { snapshot: true });
}

#[test]
fn a_temporary_slot_that_exists_already_is_refused() {
    let mut settings = settings(SnapshotMode::Initial);
    settings.slot_lifetime = SlotLifetime::Temporary;
    let mut existing = slot(0x300);
    let err = decide(&settings, Some(&existing), None).unwrap_err();
    assert!(
        matches!(err, SourceError::TemporarySlotExists { .. }),
        "{err}"
    );
    existing.active = true;
    let err = decide(&settings, Some(&existing), None).unwrap_err();
    assert!(
        matches!(err, SourceError::TemporarySlotInUse { .. }),
        "{err}"
    );
}

#[test]
fn a_slot_sluice_cannot_use_is_refused() {
    let position = streamed(0x200);
    let mut physical = slot(0x200);
    physical.slot_type = "physical".into();
    let mut other_plugin = slot(0x200);
    other_plugin.plugin = Some("wal2json".into());
    let mut other_database = slot(0x200);
    other_database.database = Some("billing".into());
    let errors = [physical, other_plugin, other_database]
        .map(|slot| decide_with(SnapshotMode::Initial, Some(slot), Some(&position)).unwrap_err());
    assert!(
        matches!(errors[0], SourceError::PhysicalSlot { .. }),
        "{}",
        errors[0]
    );
    assert!(
        matches!(&errors[1], SourceError::WrongPlugin { plugin, .. } if plugin == "wal2json"),
        "{}",
        errors[1]
    );
    assert!(
        matches!(&errors[2], SourceError::OtherDatabase { other, .. } if other == "billing"),
        "{}",
        errors[2]
    );
}
