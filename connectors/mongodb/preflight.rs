//! `sluice check` for a MongoDB source: the server's topology and version, whether the user may open the
//! change stream, the oplog window, the pre- and post-image settings the config relies on, and whether
//! the snapshot may read the selected collections.

use mongodb::bson::{doc, Document};
use mongodb::Client;

use mongodb::options::Hint;

use super::connection::{client, topology, MongodbSettings};
use super::oplog_tail::oplog_edge_ts;
use super::selection::selection_filter;
use super::snapshot::{selected_collections, selected_databases};
use crate::config::{BeforeImage, Capture, FullDocument};
use sluice_core::check::Report;
use sluice_core::config::{redact_secrets, SnapshotMode};

/// Below this the oplog cannot cover a day's outage, the usual time to notice and fix one.
const MIN_OPLOG_WINDOW_HOURS: f64 = 24.0;
/// MongoDB's error code for a missing privilege.
const UNAUTHORIZED: i32 = 13;

/// Every line of a MongoDB source, read from the connector's settings.
pub async fn check(settings: &MongodbSettings, report: &mut Report) {
    let shown = redact_secrets(&settings.url);
    let client = match client(&settings.url).await {
        Ok(client) => client,
        Err(err) => return report.fail(err.to_string(), "fix `source.url`"),
    };
    let (replica_set, mongos) = match topology(&client, &shown).await {
        Ok(found) => found,
        Err(err) => {
            report.fail(
                err.to_string(),
                "check that mongod runs, the address and port, the credentials, and TLS options in the URL",
            );
            return report.skip("change stream, oplog window and pre-images: not checked");
        }
    };
    match (&replica_set, mongos) {
        (Some(name), _) => report.pass(format!("MongoDB at {shown}: replica set `{name}`")),
        (None, true) => report.pass(format!("MongoDB at {shown}: mongos of a sharded cluster")),
        (None, false) => {
            report.fail(
                format!("MongoDB at {shown} is a standalone server: it has no change streams"),
                "run it as a replica set (a one-member set will do: --replSet rs0, then rs.initiate())",
            );
            return report.skip("change stream, oplog window and pre-images: not checked");
        }
    }
    let images_wanted = settings.before != BeforeImage::Off
        || matches!(
            settings.full_document,
            FullDocument::WhenAvailable | FullDocument::Required
        );
    check_version(&client, images_wanted, report).await;
    if settings.capture != Capture::Oplog {
        check_change_stream(&client, settings, report).await;
    }
    if replica_set.is_some() {
        check_oplog_window(&client, settings.capture, report).await;
    }
    if images_wanted {
        check_images(&client, settings, report).await;
    }
    if settings.snapshot != SnapshotMode::Never {
        check_snapshot_reads(&client, settings, report).await;
    }
    if let Some(name) = &settings.signal_collection {
        check_signal_collection(&client, name, report).await;
    }
}

/// What sluice does to the signal collection: inserts watermarks (and `sluice snapshot` signals), removes
/// its watermarks.
const SIGNAL_ACTIONS: [&str; 2] = ["insert", "remove"];

/// The signal collection exists (or is created by the first insert), and the user may insert into it and
/// remove from it, when the server says what the user may do.
async fn check_signal_collection(client: &Client, name: &str, report: &mut Report) {
    let Some((database, collection)) = name.split_once('.') else {
        return;
    };
    let fix = format!("grant the user `insert` and `remove` on `{name}` (the built-in `readWrite` role on `{database}` has both)");
    let listed = client
        .database(database)
        .list_collection_names()
        .filter(doc! { "name": collection })
        .await;
    match listed {
        Ok(names) if names.iter().any(|n| n == collection) => {
            report.pass(format!("signal collection `{name}` exists"))
        }
        Ok(_) => report.pass(format!(
            "signal collection `{name}` does not exist yet: the first insert (a signal or a watermark) creates it"
        )),
        Err(err) => {
            return report.fail(
                format!(
                    "cannot list the collections of `{database}` to find the signal collection: {}",
                    redact_secrets(&err.to_string())
                ),
                fix,
            )
        }
    }
    let status = client
        .database(database)
        .run_command(doc! { "connectionStatus": 1, "showPrivileges": true })
        .await;
    let auth = status
        .ok()
        .and_then(|status| status.get_document("authInfo").ok().cloned());
    let missing = auth.as_ref().and_then(|auth| {
        let users = auth.get_array("authenticatedUsers").ok()?;
        if users.is_empty() {
            // No authentication: nothing is refused.
            return Some(Vec::new());
        }
        let privileges: Vec<Document> = auth
            .get_array("authenticatedUserPrivileges")
            .ok()?
            .iter()
            .filter_map(|p| p.as_document().cloned())
            .collect();
        Some(missing_actions(&privileges, database, collection))
    });
    match missing {
        Some(missing) if missing.is_empty() => report.pass(format!(
            "the user may insert into and remove from the signal collection `{name}`"
        )),
        Some(missing) => report.fail(
            format!(
                "the user lacks {} on the signal collection `{name}`: watermarks cannot be written",
                missing.join(" and ")
            ),
            fix,
        ),
        None => report.pass(format!(
            "the signal collection `{name}` needs `insert` and `remove` for the user (privileges not checked)"
        )),
    }
}

/// The actions of [`SIGNAL_ACTIONS`] no privilege grants on `database.collection`.
fn missing_actions(privileges: &[Document], database: &str, collection: &str) -> Vec<&'static str> {
    let covers = |privilege: &Document| {
        let Ok(resource) = privilege.get_document("resource") else {
            return false;
        };
        if resource.get_bool("anyResource") == Ok(true) {
            return true;
        }
        let db = resource.get_str("db").unwrap_or("-");
        let coll = resource.get_str("collection").unwrap_or("-");
        (db.is_empty() || db == database) && (coll.is_empty() || coll == collection)
    };
    SIGNAL_ACTIONS
        .into_iter()
        .filter(|action| {
            !privileges.iter().filter(|p| covers(p)).any(|p| {
                p.get_array("actions")
                    .is_ok_and(|actions| actions.iter().any(|a| a.as_str() == Some(action)))
            })
        })
        .collect()
}

/// startAfter needs 4.2; pre- and post-images need 6.0.
async fn check_version(client: &Client, images_wanted: bool, report: &mut Report) {
    match server_version(client).await {
        Some((major, minor, text)) if (major, minor) < (4, 2) => report.fail(
            format!("MongoDB {text}: sluice resumes change streams with startAfter, which needs 4.2 or later"),
            "upgrade MongoDB",
        ),
        Some((major, _, text)) if major < 6 && images_wanted => report.fail(
            format!("MongoDB {text}: pre- and post-images (`source.before`, `source.full_document`) need 6.0 or later"),
            "upgrade MongoDB, or set `before = \"off\"` and `full_document = \"update_lookup\"`",
        ),
        Some((_, _, text)) => report.pass(format!("MongoDB {text}")),
        None => report.warn("cannot read the server version (buildInfo)", "grant the user clusterMonitor"),
    }
}

/// Opens the deployment-wide change stream `sluice run` reads.
async fn check_change_stream(client: &Client, settings: &MongodbSettings, report: &mut Report) {
    let opened = client
        .watch()
        .pipeline([selection_filter(
            &settings.selection,
            settings.signal_collection.as_deref(),
        )])
        .await;
    match opened {
        Ok(_) => report.pass("the user may open the change stream over the selected collections"),
        Err(err) => {
            let reason = redact_secrets(&err.to_string());
            let fix = match err.kind.as_ref() {
                mongodb::error::ErrorKind::Command(command) if command.code == UNAUTHORIZED => {
                    "sluice opens one deployment-wide stream: grant the user `find` and `changeStream` on every database (the built-in `readAnyDatabase` role has both)"
                }
                _ => "see the server's message above",
            };
            report.fail(format!("cannot open the change stream: {reason}"), fix);
        }
    }
}

/// How long a stop may last before the position is lost; fatal only when the oplog is what is read.
async fn check_oplog_window(client: &Client, capture: Capture, report: &mut Report) {
    let tailing = capture == Capture::Oplog;
    match oplog_window_hours(client).await {
        Ok(hours) if hours < MIN_OPLOG_WINDOW_HOURS => report.warn(
            format!("oplog window: {hours:.1} h; a stop longer than that loses the position"),
            "enlarge the oplog (replSetResizeOplog) or set a minimum retention (oplogMinRetentionHours)",
        ),
        Ok(hours) => report.pass(format!("oplog window: {hours:.1} h")),
        Err(reason) if tailing => report.fail(
            format!("cannot read the oplog, which capture = \"oplog\" tails: {reason}"),
            "grant the user `read` on the `local` database",
        ),
        Err(reason) => report.warn(
            format!("cannot read the oplog window: {reason}"),
            "grant the user `read` on the `local` database to have it checked",
        ),
    }
}

/// The snapshot lists the selected collections and reads each through its `_id` index.
async fn check_snapshot_reads(client: &Client, settings: &MongodbSettings, report: &mut Report) {
    let collections = match selected_collections(client, &settings.selection).await {
        Ok(found) => found,
        Err(err) => {
            return report.fail(
                format!(
                    "the snapshot cannot list the selected collections: {}",
                    redact_secrets(&err.to_string())
                ),
                "grant the user `read` on the selected databases (and listDatabases for a `*` database pattern)",
            )
        }
    };
    let mut unreadable = Vec::new();
    for (database, collection) in &collections {
        let read = client
            .database(database)
            .collection::<Document>(collection)
            .find_one(doc! {})
            .hint(Hint::Keys(doc! { "_id": 1 }))
            .await;
        if let Err(err) = read {
            unreadable.push(format!(
                "{database}.{collection} ({})",
                redact_secrets(&err.to_string())
            ));
        }
    }
    match (collections.len(), unreadable.is_empty()) {
        (0, _) => report.warn(
            "the snapshot finds no selected collection: it reads the ones there at the first start",
            "check `source.collections` if documents are expected",
        ),
        (n, true) => report.pass(format!(
            "the snapshot may read the {n} selected collections"
        )),
        (_, false) => report.fail(
            format!("the snapshot cannot read {}", unreadable.join(", ")),
            "grant the user `read` on those databases, or set `snapshot = \"never\"`",
        ),
    }
}

/// (major, minor, text) of the server version.
async fn server_version(client: &Client) -> Option<(u32, u32, String)> {
    let info = client
        .database("admin")
        .run_command(doc! { "buildInfo": 1 })
        .await
        .ok()?;
    let text = info.get_str("version").ok()?.to_owned();
    let mut parts = text.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, text))
}

/// Hours between the oldest and the newest oplog entry.
async fn oplog_window_hours(client: &Client) -> Result<f64, String> {
    let mut ends = Vec::new();
    for direction in [1, -1] {
        match oplog_edge_ts(client, direction).await {
            Ok(Some(ts)) => ends.push(ts.time),
            Ok(None) => return Err("the oplog is empty".into()),
            Err(err) => return Err(redact_secrets(&err.to_string())),
        }
    }
    Ok(f64::from(ends[1].saturating_sub(ends[0])) / 3600.0)
}

/// Each selected collection records pre- and post-images when the config asks for them.
async fn check_images(client: &Client, settings: &MongodbSettings, report: &mut Report) {
    let selection = &settings.selection;
    // The databases the snapshot and the stream would read, found the same way.
    let databases = match selected_databases(client, selection).await {
        Ok(names) => names,
        Err(err) => {
            return report.warn(
                format!(
                    "cannot list databases to check pre- and post-images: {}",
                    redact_secrets(&err.to_string())
                ),
                "grant the user listDatabases",
            )
        }
    };
    let mut without = Vec::new();
    let mut with = 0;
    for database in databases {
        use futures::TryStreamExt;
        let listed = async {
            let specs = client.database(&database).list_collections().await?;
            specs.try_collect::<Vec<_>>().await
        };
        // A database that cannot be read is said, not counted as a pass.
        let specs = match listed.await {
            Ok(specs) => specs,
            Err(err) => {
                return report.warn(
                    format!(
                    "cannot list the collections of `{database}` to check pre- and post-images: {}",
                    redact_secrets(&err.to_string())
                ),
                    "grant the user `read` on the selected databases",
                )
            }
        };
        for spec in specs {
            if !selection.includes(&database, &spec.name) {
                continue;
            }
            let enabled = spec
                .options
                .change_stream_pre_and_post_images
                .is_some_and(|images| images.enabled);
            if enabled {
                with += 1;
            } else {
                without.push(format!("{database}.{}", spec.name));
            }
        }
    }
    if without.is_empty() {
        report.pass(format!(
            "pre- and post-images recorded by all {with} selected collections"
        ));
    } else {
        let strict = settings.before == BeforeImage::Required
            || settings.full_document == FullDocument::Required;
        let what = format!(
            "pre- and post-images are not recorded by {}",
            without.join(", ")
        );
        let fix = "run db.runCommand({collMod: \"<collection>\", changeStreamPreAndPostImages: {enabled: true}}) for each";
        if strict {
            report.fail(what, fix);
        } else {
            report.warn(what, fix);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_actions_reads_the_privileges_on_the_collection_its_database_or_any() {
        let on = |db: &str, coll: &str, actions: &[&str]| {
            doc! { "resource": { "db": db, "collection": coll }, "actions": actions.to_vec() }
        };
        assert_eq!(
            missing_actions(&[], "shop", "signals"),
            vec!["insert", "remove"]
        );
        let both = [
            on("shop", "signals", &["insert"]),
            on("shop", "", &["remove", "find"]),
        ];
        assert!(missing_actions(&both, "shop", "signals").is_empty());
        let elsewhere = [
            on("other", "", &["insert", "remove"]),
            on("shop", "orders", &["remove"]),
        ];
        assert_eq!(
            missing_actions(&elsewhere, "shop", "signals"),
            vec!["insert", "remove"]
        );
        let any = [doc! { "resource": { "anyResource": true }, "actions": ["insert", "remove"] }];
        assert!(missing_actions(&any, "shop", "signals").is_empty());
        let every_db = [on("", "", &["insert"])];
        assert_eq!(
            missing_actions(&every_db, "shop", "signals"),
            vec!["remove"]
        );
    }
}
