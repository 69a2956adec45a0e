//! `sluice check`: connects to everything the config names and reports, line by line, what is ready and
//! what is not — with the fix for each problem. Changes nothing.

use std::time::Duration;

use tokio_postgres::Client;

use crate::config::{redact_secrets, Config, Selection, SinkKind, SnapshotMode, Source};
use crate::contracts::Contracts;
use crate::registry::{RegistryClient, RegistryError, RegistrySettings};
use crate::sink::{Sink, SinkSettings};
use sluice_core::check::Report;
use sluice_core::positions::PositionStore;
use sluice_postgres::catalog::{self, describe_pg_error, TableName};
use sluice_postgres::connection::PgConnection;
use sluice_postgres::replication::{ReplicationConnection, ReplicationError};

pub async fn run(config: &Config) -> Report {
    let mut report = Report::default();
    match &config.source {
        Source::Postgres(_) => check_postgres(config, &mut report).await,
        Source::Mongodb(source) => sluice_mongodb::preflight::check(source, &mut report).await,
    }
    check_broker(config, &mut report);
    check_registry(config, &mut report).await;
    report
}

async fn check_postgres(config: &Config, report: &mut Report) {
    let Some(source) = config.postgres() else {
        return;
    };
    let url = source.url.get_ref().as_str();
    let shown = redact_secrets(url);
    let connection = match PgConnection::parse(url) {
        Ok(mut c) => {
            c.config.connect_timeout(Duration::from_secs(10));
            c
        }
        Err(err) => {
            return report.fail(
                format!("PostgreSQL URL {shown}: {err}"),
                "correct `source.url`",
            )
        }
    };
    let client = match catalog::connect(&connection).await {
        Ok(client) => client,
        Err(err) => {
            report.fail(
                format!("PostgreSQL at {shown} is not reachable: {}", sluice_core::errors::error_chain(&err)),
                "check host, port, user and password in `source.url`, that the server runs, and that pg_hba.conf \
                 admits this host for the user",
            );
            report.skip(
                "wal_level, replication privilege, tables, slot and publication (no connection)",
            );
            return;
        }
    };
    let version = scalar(&client, "SHOW server_version")
        .await
        .unwrap_or_else(|_| "unknown".into());
    report.pass(format!(
        "PostgreSQL at {shown} is reachable (server {version})"
    ));

    match scalar(&client, "SHOW wal_level").await {
        Ok(level) if level == "logical" => report.pass("wal_level = logical"),
        Ok(level) => report.fail(
            format!("wal_level is `{level}`: logical decoding needs `logical`"),
            "run `ALTER SYSTEM SET wal_level = logical;` as a superuser (or set it in postgresql.conf), then restart PostgreSQL",
        ),
        Err(err) => report.fail(format!("cannot read wal_level: {err}"), "grant the user access to SHOW wal_level"),
    }

    check_role(&client, report).await;
    check_replication_connection(&connection, report).await;
    let tables = check_tables(config, &client, report).await;
    check_slot(config, &client, report).await;
    check_publication(config, &client, &tables, report).await;
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
async fn check_tables(config: &Config, client: &Client, report: &mut Report) -> Vec<TableName> {
    let Some(source) = config.postgres() else {
        return Vec::new();
    };
    let selection = source.selection();
    let tables = match catalog::resolve_tables(client, &selection).await {
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
        match row {
            Ok(row) => {
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
            Err(err) => report.fail(
                format!("table {table}: {}", describe_pg_error(&err)),
                "check the table",
            ),
        }
    }
    check_excluded_columns(&selection, client, &tables, report).await;
    tables
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

async fn check_slot(config: &Config, client: &Client, report: &mut Report) {
    let Some(source) = config.postgres() else {
        return;
    };
    let slot = source.slot.get_ref().as_str();
    let database = PgConnection::parse(source.url.get_ref().as_str())
        .map(|c| c.database())
        .unwrap_or_default();
    let position_file = PositionStore::file_path(
        std::path::Path::new(config.positions.dir.get_ref().as_str()),
        slot,
    );
    match catalog::slot_info(client, slot).await {
        Ok(Some(info)) => {
            let plugin = info.plugin.clone().unwrap_or_default();
            let slot_database = info.database.clone().unwrap_or_default();
            let in_use = |report: &mut Report| {
                report.fail(
                    format!("slot `{slot}` is in use by another connection right now"),
                    "stop the other consumer (or sluice instance) first: a slot serves one reader at a time",
                )
            };
            if *source.temporary_slot.get_ref() {
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
                    format!(
                        "slot `{slot}` belongs to database `{slot_database}`, not `{database}`"
                    ),
                    "name another slot in `source.slot` (a slot streams one database)",
                );
            } else if info.active {
                in_use(report);
            } else {
                let at = info.confirmed_flush_lsn.unwrap_or_else(|| "?".into());
                report.pass(format!(
                    "slot `{slot}` exists (pgoutput, confirmed up to {at})"
                ));
            }
        }
        Ok(None) => {
            // What `sluice run` does about the missing slot depends on what the position file says; with a
            // temporary slot it resumes nothing and ignores the file.
            let stored = match PositionStore::peek(&position_file, slot) {
                _ if *source.temporary_slot.get_ref() => None,
                Ok(stored) => stored,
                Err(err) => {
                    return report.fail(
                        err.to_string(),
                        "`sluice run` refuses it too: move the file away to start afresh",
                    )
                }
            };
            let mode = source.snapshot;
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
                            position_file.display()
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
                report.fail(
                    format!("slot `{slot}` does not exist and max_replication_slots is used up"),
                    "raise max_replication_slots in postgresql.conf (restart needed) or drop an unused slot",
                );
            } else {
                let snapshot = if mode == SnapshotMode::Never {
                    ""
                } else {
                    " and takes a snapshot"
                };
                let kind = if *source.temporary_slot.get_ref() {
                    " as a temporary slot at every start"
                } else {
                    ""
                };
                report.pass(format!(
                    "slot `{slot}` does not exist yet: `sluice run` creates it{kind}{snapshot} ({free} slots free)"
                ));
            }
        }
        Err(err) => report.fail(
            err.to_string(),
            "grant the user access to pg_replication_slots",
        ),
    }
}

async fn check_publication(
    config: &Config,
    client: &Client,
    tables: &[TableName],
    report: &mut Report,
) {
    let Some(source) = config.postgres() else {
        return;
    };
    let publication = source.publication.get_ref().as_str();
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
        Ok(Some(_)) => match catalog::published_tables(client, publication).await {
            Ok(covered) => {
                let missing: Vec<String> = tables
                    .iter()
                    .filter(|t| !covered.contains(t))
                    .map(ToString::to_string)
                    .collect();
                if missing.is_empty() {
                    report.pass(format!(
                        "publication `{publication}` covers the selected tables"
                    ));
                } else {
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
            }
            Err(err) => report.fail(
                err.to_string(),
                "grant the user access to pg_publication_tables",
            ),
        },
        Ok(None) => {
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
        Err(err) => report.fail(
            format!("cannot read publications: {}", describe_pg_error(&err)),
            "check the user's access",
        ),
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

fn check_broker(config: &Config, report: &mut Report) {
    let settings = SinkSettings::from_config(config);
    let brokers = settings.brokers.clone();
    let tracker = std::sync::Arc::new(crate::pipeline::ack::AckTracker::new());
    if settings.kind == SinkKind::Blackhole {
        report
            .pass("sink.kind = \"blackhole\": no broker; events are acknowledged and thrown away");
        return;
    }
    let checked = Sink::new(settings, tracker, std::sync::Arc::default())
        .and_then(|(sink, _)| sink.check_reachable(Duration::from_secs(10)));
    match checked {
        Ok(()) => report.pass(format!("broker at {brokers} is reachable")),
        Err(err) => report.fail(
            format!("broker at {brokers} is not reachable: {err}"),
            "check `sink.brokers`, that the broker runs and advertises an address this host can reach, and the security settings in [sink.kafka]",
        ),
    }
}

async fn check_registry(config: &Config, report: &mut Report) {
    let Some(settings) = RegistrySettings::from_config(config) else {
        report.pass(format!(
            "no schema registry: messages use Avro single-object encoding, schemas go to topic `{}`",
            config.schemas_topic()
        ));
        return;
    };
    let shown = redact_secrets(&settings.url);
    let reached = match RegistryClient::new(&settings) {
        Ok(client) => client.ping().await,
        Err(err) => Err(err),
    };
    match reached {
        Ok(()) => report.pass(format!("schema registry at {shown} is reachable")),
        Err(err @ RegistryError::Unauthorized { .. }) => report.fail(
            format!("schema registry at {shown} refuses sluice: {err}"),
            "check avro.registry_username/registry_password or avro.registry_bearer_token",
        ),
        Err(err @ RegistryError::TlsFile { .. }) => report.fail(
            format!("schema registry at {shown}: {err}"),
            "check the PEM files named in [avro]",
        ),
        Err(err) => report.fail(
            format!("schema registry at {shown} is not reachable: {err}"),
            "check `avro.registry_url` and that the registry runs",
        ),
    }
}

/// Each contract compared with the current schema of its topic's table: one line per finding, led by `ok`,
/// `note` (some events may break it) or `FAIL` (no event can satisfy it, or no table has that topic).
pub async fn compare_contracts(
    config: &Config,
    contracts: &Contracts,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let prefix = config.sink.topic_prefix.get_ref().as_str();
    let Some(source) = config.postgres() else {
        return Ok(document_contract_lines(contracts, prefix));
    };
    let settings = sluice_postgres::source::settings(source)?;
    let tables = sluice_postgres::reader::current_tables(&settings).await?;
    let mut lines = Vec::new();
    for contract in contracts.iter() {
        let table = tables
            .iter()
            .find(|t| crate::avro::topic_name(prefix, t) == contract.topic);
        let Some(table) = table else {
            lines.push(format!(
                "FAIL {}: no captured table publishes to topic `{}`",
                contract.path.display(),
                contract.topic
            ));
            continue;
        };
        let schemas = crate::avro::table_schemas(prefix, table)?;
        let found = contract.compare(&schemas.value.schema);
        if found.is_empty() {
            lines.push(format!(
                "ok   {}: reads every event of {}",
                contract.path.display(),
                table.qualified_name()
            ));
        }
        for mismatch in found {
            let lead = if mismatch.fatal { "FAIL" } else { "note" };
            lines.push(format!(
                "{lead} {} ({}): {mismatch}",
                contract.path.display(),
                table.qualified_name()
            ));
        }
    }
    Ok(lines)
}

/// MongoDB collections have no fixed schema to compare with: each contract is checked to be a record
/// that can type `after` in its collection's envelope.
fn document_contract_lines(contracts: &Contracts, prefix: &str) -> Vec<String> {
    contracts
        .iter()
        .map(|contract| {
            let checked = crate::pipeline::check_document_contract(contract, prefix);
            let named = crate::pipeline::collection_of_topic(&contract.topic, prefix).is_some();
            match (checked, named) {
                (Err(err), _) => format!("FAIL {err}"),
                (Ok(()), true) => format!(
                    "ok   {}: types `after` of the documents on topic `{}`",
                    contract.path.display(),
                    contract.topic
                ),
                (Ok(()), false) => format!(
                    "note {}: topic `{}` is not `{prefix}.<db>.<collection>`: it types no collection",
                    contract.path.display(),
                    contract.topic
                ),
            }
        })
        .collect()
}

async fn scalar(client: &Client, sql: &str) -> Result<String, String> {
    let row = client
        .query_one(sql, &[])
        .await
        .map_err(|e| describe_pg_error(&e))?;
    row.try_get::<_, String>(0).map_err(|e| e.to_string())
}
