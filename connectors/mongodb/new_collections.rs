//! `snapshot_new_tables`: a collection that joined the selection while a position was stored (a config
//! change) is snapshotted incrementally by itself at the start of the run. The selected collections are
//! those listed at start (`listCollections` through the selection); `sluice_core::known` remembers which
//! ones the topics already hold.

use sluice_core::known::KnownTables;
use sluice_core::positions::PositionError;

use crate::connection::MongodbSource;
use crate::control::DocumentStreamControl;
use crate::error::MongodbError;
use crate::reader::{Plan, Start};
use crate::snapshot;

impl MongodbSource {
    /// `plan` with an incremental snapshot of the selected collections no run has read yet. None when
    /// a stop came while listing them.
    pub async fn with_new_collections(
        &self,
        plan: Plan,
        known: &KnownTables,
        control: &mut DocumentStreamControl,
    ) -> Result<Option<Plan>, MongodbError> {
        let listed = self
            .retrying(control, || {
                snapshot::selected_collections(&self.client, &self.settings.selection)
            })
            .await
            .map_err(|err| {
                MongodbError::Snapshot(format!("listing the selected collections: {err}"))
            })?;
        let Some(listed) = listed else {
            return Ok(None);
        };
        let selected: Vec<String> = listed
            .into_iter()
            .map(|(database, collection)| format!("{database}.{collection}"))
            .collect();
        Ok(Some(request_new(
            plan,
            &selected,
            known,
            self.settings.snapshot_new_tables,
        )?))
    }
}

/// `plan` with the selected collections `known` does not hold requested into its incremental snapshot.
/// Only a stream resumed after a stored position catches up that way: a snapshot reads every selected
/// collection anyway, and a start from now publishes nothing from before (every selected collection
/// counts as known then).
pub(crate) fn request_new(
    plan: Plan,
    selected: &[String],
    known: &KnownTables,
    snapshot_new: bool,
) -> Result<Plan, PositionError> {
    let snapshot_new = snapshot_new && matches!(plan.start, Start::After(_));
    let new = known.start(selected, plan.incremental.as_ref(), snapshot_new)?;
    if new.is_empty() {
        return Ok(plan);
    }
    tracing::info!(collections = ?new, "collections joined the selection: snapshotting them incrementally");
    let mut progress = plan.incremental.unwrap_or_default();
    progress.request(&new, &[]);
    Ok(Plan {
        start: plan.start,
        incremental: Some(progress),
    })
}

#[cfg(test)]
mod tests {
    use sluice_core::event::Position;
    use sluice_core::positions::PositionStore;

    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// A fresh directory (the crate has no tempfile dependency), removed when dropped.
    struct Dir(std::path::PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let path = std::env::temp_dir().join(format!(
                "sluice-mongodb-{name}-{}-{}",
                std::process::id(),
                sluice_core::positions::now_us()
            ));
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn after() -> Plan {
        Plan {
            start: Start::After(Position::Mongodb {
                resume_token: r#"{"_data":"82"}"#.into(),
            }),
            incremental: None,
        }
    }

    fn requested(plan: &Plan) -> Vec<String> {
        plan.incremental
            .as_ref()
            .map(|p| p.tables.iter().map(|t| t.name.clone()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn a_collection_joining_while_a_position_is_stored_is_requested_once() {
        let dir = Dir::new("joining");
        let store = PositionStore::open(&dir.0, "app.mongodb").unwrap();
        let known = KnownTables::open(&store).unwrap();
        // The first run (a snapshot) knows what it selects.
        let first = Plan {
            start: Start::Snapshot,
            incremental: None,
        };
        let first = request_new(first, &names(&["shop.a"]), &known, true).unwrap();
        assert!(first.incremental.is_none());

        // Resumed with one more collection: it alone is requested.
        let known = KnownTables::open(&store).unwrap();
        let plan = request_new(after(), &names(&["shop.a", "shop.b"]), &known, true).unwrap();
        assert_eq!(requested(&plan), names(&["shop.b"]));

        // Once a stored position names it, it is known: nothing is requested again.
        known.stored(plan.incremental.as_ref().unwrap()).unwrap();
        let known = KnownTables::open(&store).unwrap();
        let again = request_new(after(), &names(&["shop.a", "shop.b"]), &known, true).unwrap();
        assert!(again.incremental.is_none());
    }

    #[test]
    fn off_or_a_snapshot_or_a_start_from_now_requests_nothing_and_knows_the_selection() {
        let dir = Dir::new("off");
        let store = PositionStore::open(&dir.0, "app.mongodb").unwrap();
        let known = KnownTables::open(&store).unwrap();
        request_new(after(), &names(&["shop.a"]), &known, true).unwrap();
        let off = request_new(after(), &names(&["shop.a", "shop.b"]), &known, false).unwrap();
        assert!(off.incremental.is_none());
        for start in [Start::Snapshot, Start::Now] {
            let plan = Plan {
                start,
                incremental: None,
            };
            let plan = request_new(plan, &names(&["shop.a", "shop.c"]), &known, true).unwrap();
            assert!(plan.incremental.is_none());
        }
        // What those starts selected is known afterwards.
        let plan = request_new(after(), &names(&["shop.a", "shop.c"]), &known, true).unwrap();
        assert!(plan.incremental.is_none());
    }
}
