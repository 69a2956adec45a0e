//! How a run begins: the start decision of [`super::reader::PostgresSource::prepare`], with no I/O. From
//! the slot (if any), the stored position (if any) and `source.snapshot`, it says whether the slot is
//! created (or created again) and whether the tables are read first; `prepare` does what it says.

use super::catalog::SlotInfo;
use super::error::SourceError;
use super::replication::SlotLifetime;
use super::settings::{PostgresSettings, Resume};
use sluice_core::config::SnapshotMode;
use sluice_core::event::PgSnapshotPosition;

/// What `prepare` does before streaming.
#[derive(Debug, PartialEq)]
pub(super) enum Start {
    /// Stream from the stored position (or the slot's), reading no tables.
    Stream,
    /// Read the tables, from what `progress` says is read already, in a snapshot of sluice's own (the
    /// slot's exported one is gone), then stream from `progress.lsn`.
    Snapshot(PgSnapshotPosition),
    /// Create the slot; with `snapshot`, export its snapshot and read the tables in it first.
    CreateSlot { snapshot: bool },
    /// Drop the slot, create it again and read the tables in its exported snapshot.
    RecreateSlot,
}

/// The start for `slot` (None: there is none) and the earlier run's `resume`; an error when neither
/// resuming nor starting again is safe without the user's say.
pub(super) fn decide(
    settings: &PostgresSettings,
    slot: Option<&SlotInfo>,
    resume: Option<Resume<'_>>,
) -> Result<Start, SourceError> {
    let Some(slot) = slot else {
        return without_slot(settings, resume);
    };
    if settings.slot_lifetime == SlotLifetime::Temporary {
        let slot_name = settings.slot.clone();
        return Err(if slot.active {
            SourceError::TemporarySlotInUse { slot: slot_name }
        } else {
            SourceError::TemporarySlotExists { slot: slot_name }
        });
    }
    check_slot(settings, slot)?;
    let wants_snapshot = settings.snapshot != SnapshotMode::Never;
    let Some(resume) = resume else {
        if !wants_snapshot {
            return Ok(Start::Stream);
        }
        // A slot sluice has no position for (created by hand, or sluice stopped right after creating
        // it): its exported snapshot is gone, so the rows are read in a snapshot of sluice's own.
        let confirmed = slot.confirmed_lsn().unwrap_or_default();
        tracing::warn!(slot = %settings.slot, %confirmed, "snapshot of an existing slot: its rows are read as they are now, and the changes since the slot's position are streamed after them, so some may arrive twice");
        return Ok(Start::Snapshot(PgSnapshotPosition::starting_at(confirmed)));
    };
    match resume.interrupted() {
        Some(progress) if wants_snapshot => carry_on(settings, slot, resume, progress),
        interrupted => {
            if interrupted.is_some() {
                tracing::warn!(slot = %settings.slot, file = %resume.file.display(), "the previous run's snapshot did not finish and snapshot = never: it is abandoned, rows it did not publish are not published");
            }
            warn_if_slot_is_ahead(&settings.slot, slot, resume);
            Ok(Start::Stream)
        }
    }
}

/// The slot is missing: created, unless a stored position says changes were lost with it.
fn without_slot(
    settings: &PostgresSettings,
    resume: Option<Resume<'_>>,
) -> Result<Start, SourceError> {
    let wants_snapshot = settings.snapshot != SnapshotMode::Never;
    match resume {
        Some(resume) if resume.interrupted().is_none() => {
            if settings.snapshot != SnapshotMode::WhenNeeded {
                return Err(SourceError::SlotLost {
                    slot: settings.slot.clone(),
                    position: resume.lsn(),
                    position_file: resume.file.display().to_string(),
                });
            }
            tracing::warn!(slot = %settings.slot, stored = %resume.lsn(), "the slot is gone: snapshot = when_needed, so a new slot is created and the tables are read again");
            Ok(Start::CreateSlot { snapshot: true })
        }
        resume => {
            if resume.is_some() && wants_snapshot {
                tracing::warn!(slot = %settings.slot, "the slot of the interrupted snapshot is gone: a new slot is created and the snapshot taken again from the start");
            }
            Ok(Start::CreateSlot {
                snapshot: wants_snapshot,
            })
        }
    }
}

/// An interrupted snapshot, whose slot is still there.
fn carry_on(
    settings: &PostgresSettings,
    slot: &SlotInfo,
    resume: Resume<'_>,
    progress: &PgSnapshotPosition,
) -> Result<Start, SourceError> {
    // Nothing is acknowledged before the snapshot is on the broker, so the slot should still be where
    // the first rows were read; one that moved has lost the changes since.
    let confirmed = slot.confirmed_lsn().unwrap_or_default();
    if confirmed <= progress.lsn {
        tracing::info!(slot = %settings.slot, at = %progress.lsn, file = %resume.file.display(), "carrying on the interrupted snapshot");
        return Ok(Start::Snapshot(progress.clone()));
    }
    if settings.snapshot != SnapshotMode::WhenNeeded {
        return Err(SourceError::SnapshotSlotMoved {
            slot: settings.slot.clone(),
            consistent_point: progress.lsn,
            confirmed,
            position_file: resume.file.display().to_string(),
        });
    }
    tracing::warn!(slot = %settings.slot, consistent_point = %progress.lsn, %confirmed, "the slot moved past the interrupted snapshot's consistent point: snapshot = when_needed, so it is created again and the snapshot taken from the start");
    Ok(Start::RecreateSlot)
}

/// The slot only moves when sluice has stored a position first; a slot ahead of the file means someone else
/// advanced it (or the file is an old copy), and the changes in between are no longer in the slot.
fn warn_if_slot_is_ahead(slot_name: &str, slot: &SlotInfo, resume: Resume<'_>) {
    if let Some(confirmed) = slot.confirmed_lsn() {
        if confirmed > resume.lsn() {
            tracing::warn!(
                slot = slot_name,
                stored = %resume.lsn(),
                confirmed = %confirmed,
                file = %resume.file.display(),
                "the slot was advanced past the stored position by something other than sluice: changes \
                 between the two positions cannot be read again and will not be published"
            );
        }
    }
}

fn check_slot(settings: &PostgresSettings, slot: &SlotInfo) -> Result<(), SourceError> {
    if slot.slot_type != "logical" {
        return Err(SourceError::PhysicalSlot {
            slot: settings.slot.clone(),
        });
    }
    let plugin = slot.plugin.clone().unwrap_or_default();
    if plugin != "pgoutput" {
        return Err(SourceError::WrongPlugin {
            slot: settings.slot.clone(),
            plugin,
        });
    }
    let database = slot.database.clone().unwrap_or_default();
    if database != settings.database {
        return Err(SourceError::OtherDatabase {
            slot: settings.slot.clone(),
            other: database,
            database: settings.database.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
#[path = "start_tests.rs"]
mod tests;
