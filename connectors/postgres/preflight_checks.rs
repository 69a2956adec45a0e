//! `sluice check` for a PostgreSQL source: the server and its wal_level, whether the user may replicate,
//! the selected tables and their keys, the slot (read together with the stored position) and the
//! publication. Each problem comes with its fix; nothing is changed.

use std::time::Duration;

use sluice_core::check::Report;
use sluice_core::config::{redact_secrets, SnapshotMode};
use sluice_core::errors::error_chain;
use sluice_core::positions::PositionPeek;
use tokio_postgres::Client;

use crate::catalog::{self, describe_pg_error, SlotInfo, TableName};
use crate::config::Selection;
use crate::connection::PgConnection;
use crate::replication::{ReplicationConnection, ReplicationError, SlotLifetime};
use crate::settings::PostgresSettings;

/// How long `check` waits for the server to answer a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Every line of a PostgreSQL source; `shown` is the URL with its secrets hidden.
pub async fn check(
    settings: &PostgresSettings,
    shown: &str,
    position: &PositionPeek,
    report: &mut Report,
) {
    let mut connection = settings.connection.clone();
    connection.config.connect_timeout(CONNECT_TIMEOUT);
    let client = match catalog::connect(&connection).await {
        Ok(client) => client,
        Err(err) => {
            report.fail(
                format!("PostgreSQL at {shown} is not reachable: {}", error_chain(&err)),
                "check host, port, user and password in `source.url`, that the server runs, and that pg_hba.conf \
                 admits this host for the user",
            );
            report.skip(
                "wal_level, replication privilege, tables, slot and publication (no connection)",
            );
            return;
        }
    };
    check_server(&client, shown, report).await;
    check_role(&client, report).await;
    check_replication_connection(&connection, report).await;
    let tables = check_tables(&settings.selection, &client, report).await;
    check_slot(settings, &client, position, report).await;
    check_publication(&settings.publication, &client, &tables, report).await;
    if let Some(table) = &settings.signal_table {
        check_signal_table(&client, table, report).await;
    }
}

/// The signal table: there with its columns, or creatable by `sluice run`.
async fn check_signal_table(client: &Client, table: &str, report: &mut Report) {
    let name = crate::incremental::table_name(table);
    let columns = match crate::signal_table::columns(client, &name).await {
        Ok(columns) => columns,
        Err(err) => return report.fail(error_chain(&err), "grant the user access to pg_catalog"),
    };
    if !columns.is_empty() {
        let missing = crate::signal_table::missing(&columns);
        return if missing.is_empty() {
            report.pass(format!("signal table {name}: present"))
        } else {
            report.fail(
                format!("signal table {name} lacks the column(s) {missing:?}"),
                format!(
                    "drop it and create it as {}",
                    crate::signal_table::definition(table)
                ),
            )
        };
    }
    let may_create = scalar(
        client,
        &format!(
            "SELECT has_schema_privilege(current_user, {}, 'CREATE')::text",
            crate::replication::quote_literal(&name.schema)
        ),
    )
    .await;
    if may_create.as_deref() == Ok("true") {
        report.pass(format!(
            "signal table {name}: missing; `sluice run` creates it"
        ));
    } else {
        report.fail(
            format!("signal table {name} does not exist, and the user may not create it"),
            format!(
                "as an owner of schema {}: {}; GRANT SELECT, INSERT ON {} TO the user",
                name.schema,
                crate::signal_table::definition(table),
                name.quoted()
            ),
        );
    }
}

/// The server's version, and the wal_level logical decoding needs.
async fn check_server(client: &Client, shown: &str, report: &mut Report) {
    let version = scalar(client, "SHOW server_version")
        .await
        .unwrap_or_else(|_| "unknown".into());
    report.pass(format!(
        "PostgreSQL at {shown} is reachable (server {version})"
    ));

    match scalar(client, "SHOW wal_level").await {
        Ok(level) if level == "logical" => report.pass("wal_level = logical"),
        Ok(level) => report.fail(
            format!("wal_level is `{level}`: logical decoding needs `logical`"),
            "run `ALTER SYSTEM SET wal_level = logical;` as a superuser (or set it in postgresql.conf), then restart PostgreSQL",
        ),
        Err(err) => report.fail(format!("cannot read wal_level: {err}"), "grant the user access to SHOW wal_level"),
    }
}

async fn check_role(client: &Client, report: &mut Report) {
    let row = client
        .query_one("SELECT current_user::text, rolreplication, rolsuper FROM pg_roles WHERE rolname = current_user", &[])
        .await;
    match row {
        Ok(row) => {
            let (user, replication, superuser): (String, bool, bool) =
                (row.get(0), row.get(1), row.get(2));
            if replication || superuser {
                let how = if superuser {
                    "superuser"
                } else {
                    "REPLICATION"
                };
                report.pass(format!("user `{user}` may replicate ({how})"));
            } else {
                report.fail(
                    format!("user `{user}` may not start replication (neither REPLICATION nor superuser)"),
                    format!("as a superuser: ALTER ROLE \"{user}\" WITH REPLICATION;"),
                );
            }
        }
        Err(err) => report.fail(
            format!("cannot read the user's role: {}", describe_pg_error(&err)),
            "check the user",
        ),
    }
}

/// Opens the kind of connection `sluice run` streams over: pg_hba.conf, connection limits and
/// max_wal_senders apply to it differently than to the connection above.
async fn check_replication_connection(connection: &PgConnection, report: &mut Report) {
    let opened = async {
        let mut conn = ReplicationConnection::connect(connection).await?;
        let system = conn.identify_system().await?;
        conn.close().await?;
        Ok::<_, ReplicationError>(system)
    };
    match opened.await {
        Ok(system) => report.pass(format!(
            "replication connection opens (system {}, timeline {})",
            system.system_id, system.timeline
        )),
        Err(err) => report.fail(
            format!("cannot open a replication connection: {}", redact_secrets(&err.to_string())),
            "check max_wal_senders (a free sender is needed) and that pg_hba.conf admits the user for this database",
        ),
    }
}

/// Checks that each selected table exists and can identify its rows; returns the tables found.
async fn check_tables(
    selection: &Selection,
    client: &Client,
    report: &mut Report,
) -> Vec<TableName> {
    let tables = match catalog::resolve_tables(client, selection).await {
        Ok(tables) => tables,
        Err(err) => {
            report.fail(
                err.to_string(),
                "create the table, or correct `source.tables`",
            );
            return Vec::new();
        }
    };
    if tables.is_empty() {
        report.warn(
            "`source.tables` matches no table yet",
            "create the tables, or correct the patterns",
        );
    }
    for table in &tables {
        check_table(client, table, report).await;
    }
    check_excluded_columns(selection, client, &tables, report).await;
    tables
}

/// Whether the user may read the table, and whether its updates and deletes can be published with a key.
async fn check_table(client: &Client, table: &TableName, report: &mut Report) {
    let row = client
        .query_one(
            "SELECT c.relreplident::text, \
               (SELECT string_agg(a.attname, ', ' ORDER BY k.ord) FROM pg_index i \
                  JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true \
                  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                 WHERE i.indrelid = c.oid AND i.indisprimary) \
               , has_table_privilege(c.oid, 'SELECT') \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&table.schema, &table.name],
        )
        .await;
    let row = match row {
        Ok(row) => row,
        Err(err) => {
            return report.fail(
                format!("table {table}: {}", describe_pg_error(&err)),
                "check the table",
            )
        }
    };
    let identity: String = row.get(0);
    let key: Option<String> = row.get(1);
    if !row.get::<_, bool>(2) {
        report.fail(
            format!("table {table}: the user may not SELECT from it, which the snapshot and type lookups need"),
            format!("as its owner: GRANT SELECT ON {} TO <the user in source.url>;", table.quoted()),
        );
    }
    match (identity.as_str(), key) {
        ("n", _) => report.fail(
            format!("table {table}: REPLICA IDENTITY NOTHING, so updates and deletes cannot be published"),
            format!("ALTER TABLE {} REPLICA IDENTITY DEFAULT; (with a primary key) or FULL", table.quoted()),
        ),
        ("d", None) => report.fail(
            format!("table {table} has no primary key: PostgreSQL refuses its updates and deletes under a publication"),
            format!("add a primary key, or ALTER TABLE {} REPLICA IDENTITY FULL;", table.quoted()),
        ),
        ("f", None) => report.warn(
            format!("table {table}: no primary key (REPLICA IDENTITY FULL): its messages have no key"),
            "add a primary key so that consumers can key and compact its events",
        ),
        (_, Some(key)) => report.pass(format!("table {table}: primary key ({key})")),
        (_, None) => report.pass(format!("table {table}: replica identity index")),
    }
}

/// An exclusion that matches no column of the captured tables is most likely a typo, and the column it
/// was meant to leave out is being published.
async fn check_excluded_columns(
    selection: &Selection,
    client: &Client,
    tables: &[TableName],
    report: &mut Report,
) {
    if selection.exclude_columns.is_empty() {
        return;
    }
    let mut columns = Vec::new();
    for table in tables {
        if let Ok(description) = catalog::describe_table(client, table).await {
            columns.extend(
                description
                    .relation
                    .columns
                    .into_iter()
                    .map(|column| (table.clone(), column.name)),
            );
        }
    }
    for pattern in &selection.exclude_columns {
        let matched: Vec<String> = columns
            .iter()
            .filter(|(table, column)| pattern.matches(&table.schema, &table.name, column))
            .map(|(table, column)| format!("{table}.{column}"))
            .collect();
        if matched.is_empty() {
            report.warn(
                format!(
                    "source.exclude_columns: `{pattern}` matches no column of the captured tables"
                ),
                "check it for a typo: the column it should leave out would be published",
            );
        } else {
            report.pass(format!(
                "source.exclude_columns: `{pattern}` leaves out {}",
                matched.join(", ")
            ));
        }
    }
}

async fn check_slot(
    settings: &PostgresSettings,
    client: &Client,
    position: &PositionPeek,
    report: &mut Report,
) {
    match catalog::slot_info(client, &settings.slot).await {
        Ok(Some(info)) => existing_slot(settings, &info, report),
        Ok(None) => missing_slot(settings, client, position, report).await,
        Err(err) => report.fail(
            err.to_string(),
            "grant the user access to pg_replication_slots",
        ),
    }
}

/// A slot of that name exists: it must be one `sluice run` can stream from, and free.
fn existing_slot(settings: &PostgresSettings, info: &SlotInfo, report: &mut Report) {
    let slot = settings.slot.as_str();
    let database = settings.database.as_str();
    let plugin = info.plugin.clone().unwrap_or_default();
    let slot_database = info.database.clone().unwrap_or_default();
    let in_use = |report: &mut Report| {
        report.fail(
            format!("slot `{slot}` is in use by another connection right now"),
            "stop the other consumer (or sluice instance) first: a slot serves one reader at a time",
        )
    };
    if settings.slot_lifetime == SlotLifetime::Temporary {
        if info.active {
            in_use(report);
        } else {
            report.fail(
                format!("slot `{slot}` exists, but source.temporary_slot = true creates the slot at every start"),
                "drop it (SELECT pg_drop_replication_slot('…');) or name another slot in `source.slot`",
            );
        }
    } else if info.slot_type != "logical" || plugin != "pgoutput" {
        report.fail(
            format!("slot `{slot}` exists but is a {} slot with plugin `{plugin}`", info.slot_type),
            "name another slot in `source.slot`, or drop this one: SELECT pg_drop_replication_slot('…');",
        );
    } else if slot_database != database {
        report.fail(
            format!("slot `{slot}` belongs to database `{slot_database}`, not `{database}`"),
            "name another slot in `source.slot` (a slot streams one database)",
        );
    } else if info.active {
        in_use(report);
    } else {
        let at = info
            .confirmed_flush_lsn
            .clone()
            .unwrap_or_else(|| "?".into());
        report.pass(format!(
            "slot `{slot}` exists (pgoutput, confirmed up to {at})"
        ));
    }
}

/// No slot of that name: what `sluice run` does about it depends on what the position file says; with a
/// temporary slot it resumes nothing and ignores the file.
async fn missing_slot(
    settings: &PostgresSettings,
    client: &Client,
    position: &PositionPeek,
    report: &mut Report,
) {
    let slot = settings.slot.as_str();
    let temporary = settings.slot_lifetime == SlotLifetime::Temporary;
    let stored = match &position.stored {
        _ if temporary => None,
        Ok(stored) => stored.as_ref(),
        Err(err) => {
            return report.fail(
                err.to_string(),
                "`sluice run` refuses it too: move the file away to start afresh",
            )
        }
    };
    let mode = settings.snapshot;
    match stored {
        Some(stored) if !stored.snapshot_pending() && mode == SnapshotMode::InitialOnly => {
            return report.pass(format!(
                "slot `{slot}` does not exist: the initial_only snapshot is complete, nothing to stream"
            ));
        }
        Some(stored) if !stored.snapshot_pending() && mode != SnapshotMode::WhenNeeded => {
            return report.fail(
                format!(
                    "slot `{slot}` does not exist, but {} says sluice read from it before: changes since then are lost to it",
                    position.file.display()
                ),
                "to start afresh with a new snapshot, remove the position file or set source.snapshot = \"when_needed\"",
            );
        }
        _ => {}
    }
    let free = scalar(
        client,
        "SELECT (current_setting('max_replication_slots')::int - count(*))::text FROM pg_replication_slots",
    )
    .await
    .unwrap_or_default();
    if free == "0" {
        return report.fail(
            format!("slot `{slot}` does not exist and max_replication_slots is used up"),
            "raise max_replication_slots in postgresql.conf (restart needed) or drop an unused slot",
        );
    }
    let snapshot = if mode == SnapshotMode::Never {
        ""
    } else {
        " and takes a snapshot"
    };
    let kind = if temporary {
        " as a temporary slot at every start"
    } else {
        ""
    };
    report.pass(format!(
        "slot `{slot}` does not exist yet: `sluice run` creates it{kind}{snapshot} ({free} slots free)"
    ));
}

async fn check_publication(
    publication: &str,
    client: &Client,
    tables: &[TableName],
    report: &mut Report,
) {
    let exists = client
        .query_opt(
            "SELECT puballtables, pubviaroot FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await;
    if let Ok(Some(row)) = &exists {
        let partitioned = catalog::partitioned_tables(client, tables).await;
        if !row.get::<_, bool>(1) && partitioned.is_ok_and(|p| !p.is_empty()) {
            return report.fail(
                format!("publication `{publication}` publishes partitions under their own names, and a selected table is partitioned"),
                format!("ALTER PUBLICATION \"{publication}\" SET (publish_via_partition_root = true);"),
            );
        }
    }
    match exists {
        Ok(Some(row)) if row.get::<_, bool>(0) => {
            report.pass(format!("publication `{publication}` covers all tables"))
        }
        Ok(Some(_)) => publication_coverage(publication, client, tables, report).await,
        Ok(None) => publication_to_create(publication, client, tables, report).await,
        Err(err) => report.fail(
            format!("cannot read publications: {}", describe_pg_error(&err)),
            "check the user's access",
        ),
    }
}

/// The publication names its tables: which selected ones it lacks.
async fn publication_coverage(
    publication: &str,
    client: &Client,
    tables: &[TableName],
    report: &mut Report,
) {
    let covered = match catalog::published_tables(client, publication).await {
        Ok(covered) => covered,
        Err(err) => {
            return report.fail(
                err.to_string(),
                "grant the user access to pg_publication_tables",
            )
        }
    };
    let missing: Vec<String> = tables
        .iter()
        .filter(|t| !covered.contains(t))
        .map(ToString::to_string)
        .collect();
    if missing.is_empty() {
        return report.pass(format!(
            "publication `{publication}` covers the selected tables"
        ));
    }
    let owned = owns_all(client, tables).await;
    let fix = format!(
        "`sluice run` adds them{}",
        if owned {
            ""
        } else {
            " if the user owns the publication and tables; otherwise ALTER PUBLICATION … ADD TABLE as the owner"
        }
    );
    report.warn(
        format!("publication `{publication}` lacks {}", missing.join(", ")),
        fix,
    );
}

/// No publication of that name: whether `sluice run` may create it.
async fn publication_to_create(
    publication: &str,
    client: &Client,
    tables: &[TableName],
    report: &mut Report,
) {
    let may_create = scalar(
        client,
        "SELECT has_database_privilege(current_database(), 'CREATE')::text",
    )
    .await
    .is_ok_and(|v| v == "true");
    if may_create && owns_all(client, tables).await {
        report.pass(format!(
            "publication `{publication}` does not exist yet: `sluice run` creates it"
        ));
    } else {
        report.fail(
            format!("publication `{publication}` does not exist and the user may not create it for these tables"),
            format!("as the tables' owner: CREATE PUBLICATION \"{publication}\" FOR TABLE …; (or grant CREATE on the database and make the user the tables' owner)"),
        );
    }
}

/// Whether the user owns every table (or is superuser): what CREATE/ALTER PUBLICATION … TABLE requires.
async fn owns_all(client: &Client, tables: &[TableName]) -> bool {
    let mut all = true;
    for table in tables {
        let owned = client
            .query_one(
                "SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) \
                   OR pg_has_role(c.relowner, 'USAGE') \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
                &[&table.schema, &table.name],
            )
            .await
            .map(|row| row.get::<_, bool>(0))
            .unwrap_or(false);
        all &= owned;
    }
    all
}

/// The one text value a query returns.
async fn scalar(client: &Client, sql: &str) -> Result<String, String> {
    let row = client
        .query_one(sql, &[])
        .await
        .map_err(|e| describe_pg_error(&e))?;
    row.try_get::<_, String>(0).map_err(|e| e.to_string())
}
