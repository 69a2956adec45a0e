//! Catalog work over an ordinary (non-replication) connection: which tables a selection means, the
//! publication that covers them, the slot's state, and each table's primary key.

use std::collections::BTreeSet;

use tokio_postgres::config::Host;
use tokio_postgres::{Client, NoTls};

use super::connection::{PgConnection, SslMode};
use super::pgoutput::{Relation, RelationColumn};
use super::replication::{quote_ident, quote_literal, OUTPUT_SETTINGS};
use crate::config::Selection;
use sluice_core::event::Lsn;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(#[source] tokio_postgres::Error),
    #[error("{context}: {}", describe_pg_error(.source))]
    Query {
        context: String,
        source: tokio_postgres::Error,
    },
    #[error("table {0} does not exist (or the user cannot see it); check `source.tables`")]
    NoSuchTable(String),
    #[error(
        "publication `{publication}` publishes the partitions of {table} under their own names; sluice needs \
         them under the partitioned table's: ALTER PUBLICATION {publication} SET (publish_via_partition_root = true), \
         or name another publication for sluice to create"
    )]
    PartitionsPublishedSeparately { publication: String, table: String },
}

/// The server's own words, with its detail and hint, instead of tokio-postgres' generic "db error".
pub fn describe_pg_error(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => {
            let mut text = db.message().to_owned();
            if let Some(detail) = db.detail() {
                text.push_str(&format!(" ({detail})"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!("; hint: {hint}"));
            }
            text
        }
        None => err.to_string(),
    }
}

pub(super) fn query_error(
    context: impl Into<String>,
) -> impl FnOnce(tokio_postgres::Error) -> CatalogError {
    let context = context.into();
    move |source| CatalogError::Query { context, source }
}

/// Opens an ordinary connection (over TLS as `sslmode` says; Unix sockets never use TLS, as with libpq),
/// with the output settings the value decoders expect (values are read over it too: snapshots,
/// incremental chunks, re-selected TOAST values); its driver task ends when the client is dropped.
pub async fn connect(connection: &PgConnection) -> Result<Client, CatalogError> {
    let config = &connection.config;
    let unix_only = config
        .get_hosts()
        .iter()
        .all(|host| matches!(host, Host::Unix(_)));
    let client = if connection.tls.mode == SslMode::Disable || unix_only {
        let (client, driver) = config.connect(NoTls).await.map_err(CatalogError::Connect)?;
        tokio::spawn(drive(driver));
        client
    } else {
        let (client, driver) = config
            .connect(connection.tls.clone())
            .await
            .map_err(CatalogError::Connect)?;
        tokio::spawn(drive(driver));
        client
    };
    let settings: Vec<String> = OUTPUT_SETTINGS
        .iter()
        .map(|(name, value)| format!("SET {name} = {}", quote_literal(value)))
        .collect();
    client
        .batch_execute(&settings.join("; "))
        .await
        .map_err(query_error("cannot set the session's output formats"))?;
    Ok(client)
}

async fn drive(driver: impl std::future::Future<Output = Result<(), tokio_postgres::Error>>) {
    if let Err(err) = driver.await {
        tracing::debug!(error = %err, "catalog connection closed");
    }
}

/// A table by schema and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    /// From a catalog row whose first two columns are the schema and the table name.
    fn from_row(row: &tokio_postgres::Row) -> TableName {
        TableName {
            schema: row.get(0),
            name: row.get(1),
        }
    }

    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// The ordinary and partitioned tables a selection names, less the excluded ones. An exact name that
/// matches nothing is an error; a wildcard that matches nothing is allowed (the tables may come later).
pub async fn resolve_tables(
    client: &Client,
    selection: &Selection,
) -> Result<Vec<TableName>, CatalogError> {
    let rows = client
        .query(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' \
             ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(query_error("cannot list tables"))?;
    let all: Vec<TableName> = rows.iter().map(TableName::from_row).collect();
    let mut chosen = BTreeSet::new();
    for pattern in &selection.tables {
        let mut matched = false;
        for table in all.iter().filter(|t| pattern.matches(&t.schema, &t.name)) {
            if selection.includes(&table.schema, &table.name) {
                chosen.insert(table.clone());
            }
            matched = true;
        }
        if !matched && pattern.is_exact() {
            return Err(CatalogError::NoSuchTable(pattern.to_string()));
        }
        if !matched {
            tracing::warn!(pattern = %pattern, "table pattern matches no table yet");
        }
    }
    Ok(chosen.into_iter().collect())
}

/// What `ensure_publication` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PublicationChange {
    pub created: bool,
    pub added: Vec<TableName>,
    /// Tables that left the selection and were dropped from the publication.
    pub removed: Vec<TableName>,
    /// Why tables that left the selection are still published (the user does not own the publication):
    /// the reader skips their changes, but the server still decodes them.
    pub not_removed: Option<(Vec<TableName>, String)>,
}

/// Makes the publication exist and cover `tables`, and drops from it the tables that left the selection
/// (when the user may: otherwise they stay, and the reader skips their events). A publication for all
/// tables is left as it is.
pub async fn ensure_publication(
    client: &Client,
    publication: &str,
    tables: &[TableName],
) -> Result<PublicationChange, CatalogError> {
    let existing = client
        .query_opt(
            "SELECT puballtables, pubviaroot FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(query_error(format!(
            "cannot read publication `{publication}`"
        )))?;
    match existing {
        None => create_publication(client, publication, tables).await,
        Some(row) => {
            let (all_tables, via_root) = (row.get::<_, bool>(0), row.get::<_, bool>(1));
            if !via_root {
                refuse_partitions_published_separately(client, publication, tables).await?;
            }
            if all_tables {
                return Ok(PublicationChange::default());
            }
            align_publication(client, publication, tables).await
        }
    }
}

async fn create_publication(
    client: &Client,
    publication: &str,
    tables: &[TableName],
) -> Result<PublicationChange, CatalogError> {
    // Changes of a partition are published as changes of its partitioned table, the one the user
    // named: one topic per table, whatever its partitions.
    let sql = if tables.is_empty() {
        format!(
            "CREATE PUBLICATION {} WITH (publish_via_partition_root = true)",
            quote_ident(publication)
        )
    } else {
        format!(
            "CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true)",
            quote_ident(publication),
            quoted_list(tables)
        )
    };
    client.batch_execute(&sql).await.map_err(query_error(format!(
        "cannot create publication `{publication}` (the user must own the tables, or create the publication \
         beforehand as a user who does)"
    )))?;
    Ok(PublicationChange {
        created: true,
        added: tables.to_vec(),
        ..PublicationChange::default()
    })
}

/// A publication without `publish_via_partition_root` would publish a selected partitioned table's
/// changes under its partitions' names.
async fn refuse_partitions_published_separately(
    client: &Client,
    publication: &str,
    tables: &[TableName],
) -> Result<(), CatalogError> {
    match partitioned_tables(client, tables).await?.into_iter().next() {
        Some(table) => Err(CatalogError::PartitionsPublishedSeparately {
            publication: publication.to_owned(),
            table: table.to_string(),
        }),
        None => Ok(()),
    }
}

/// Adds the selected tables an existing publication misses, and drops those it names beyond them.
async fn align_publication(
    client: &Client,
    publication: &str,
    tables: &[TableName],
) -> Result<PublicationChange, CatalogError> {
    let covered = published_tables(client, publication).await?;
    let missing: Vec<TableName> = tables
        .iter()
        .filter(|t| !covered.contains(t))
        .cloned()
        .collect();
    if !missing.is_empty() {
        let sql = format!(
            "ALTER PUBLICATION {} ADD TABLE {}",
            quote_ident(publication),
            quoted_list(&missing)
        );
        client.batch_execute(&sql).await.map_err(query_error(format!(
            "cannot add {} to publication `{publication}` (the user must own the publication and the tables)",
            quoted_list(&missing)
        )))?;
    }
    // Kept in step with the selection: a table it no longer names is not decoded for nothing.
    let extra: Vec<TableName> = covered
        .into_iter()
        .filter(|t| !tables.contains(t))
        .collect();
    let mut change = PublicationChange {
        added: missing,
        ..PublicationChange::default()
    };
    if !extra.is_empty() {
        let sql = format!(
            "ALTER PUBLICATION {} DROP TABLE {}",
            quote_ident(publication),
            quoted_list(&extra)
        );
        // Not fatal: the reader skips the changes of tables it was not asked for.
        match client.batch_execute(&sql).await {
            Ok(()) => change.removed = extra,
            Err(err) => change.not_removed = Some((extra, describe_pg_error(&err))),
        }
    }
    Ok(change)
}

/// `"a"."b", "c"."d"`: tables as a publication statement lists them.
fn quoted_list(tables: &[TableName]) -> String {
    tables
        .iter()
        .map(TableName::quoted)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The partitioned tables among `tables`.
pub async fn partitioned_tables(
    client: &Client,
    tables: &[TableName],
) -> Result<Vec<TableName>, CatalogError> {
    let rows = client
        .query(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'p'",
            &[],
        )
        .await
        .map_err(query_error("cannot list partitioned tables"))?;
    Ok(rows
        .iter()
        .map(TableName::from_row)
        .filter(|t| tables.contains(t))
        .collect())
}

pub async fn published_tables(
    client: &Client,
    publication: &str,
) -> Result<BTreeSet<TableName>, CatalogError> {
    let rows = client
        .query(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(query_error(format!(
            "cannot list the tables of publication `{publication}`"
        )))?;
    Ok(rows.iter().map(TableName::from_row).collect())
}

/// A replication slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    pub plugin: Option<String>,
    pub slot_type: String,
    pub database: Option<String>,
    pub active: bool,
    pub confirmed_flush_lsn: Option<String>,
}

impl SlotInfo {
    /// Where streaming from the slot starts.
    pub fn confirmed_lsn(&self) -> Option<Lsn> {
        self.confirmed_flush_lsn.as_deref()?.parse().ok()
    }
}

pub async fn slot_info(client: &Client, slot: &str) -> Result<Option<SlotInfo>, CatalogError> {
    let row = client
        .query_opt(
            "SELECT plugin, slot_type, database, active, confirmed_flush_lsn::text FROM pg_replication_slots \
             WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(query_error(format!("cannot read replication slot `{slot}`")))?;
    Ok(row.map(|r| SlotInfo {
        plugin: r.get(0),
        slot_type: r.get(1),
        database: r.get(2),
        active: r.get(3),
        confirmed_flush_lsn: r.get(4),
    }))
}

/// Primary-key column names of a table, in key order; empty when the table has none.
pub async fn primary_key(client: &Client, relation_id: u32) -> Result<Vec<String>, CatalogError> {
    let rows = client
        .query(
            "SELECT a.attname FROM pg_index i \
             JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord",
            &[&relation_id],
        )
        .await
        .map_err(query_error(format!(
            "cannot read the primary key of relation {relation_id}"
        )))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// What a snapshot needs to know of a table before reading it.
#[derive(Debug, Clone)]
pub struct TableDescription {
    /// The table as a pgoutput Relation message would describe it, so that snapshot rows and streamed rows
    /// share one table model.
    pub relation: Relation,
    pub primary_key: Vec<String>,
    /// A partitioned table is read through a query (COPY cannot read one directly).
    pub partitioned: bool,
    /// The planner's row estimate (all partitions together); None while the table was never analysed.
    pub estimated_rows: Option<u64>,
}

/// Describes a table from the catalog the way pgoutput would: the columns it publishes (no dropped or
/// generated ones), their types and which belong to the replica identity index.
pub async fn describe_table(
    client: &Client,
    table: &TableName,
) -> Result<TableDescription, CatalogError> {
    let context = || format!("cannot describe table {table}");
    let row = client
        .query_opt(
            "SELECT c.oid, c.relreplident, c.relkind = 'p', \
               (CASE WHEN c.relkind = 'p' THEN \
                  (SELECT sum(p.reltuples) FILTER (WHERE p.reltuples >= 0) FROM pg_partition_tree(c.oid) t \
                   JOIN pg_class p ON p.oid = t.relid WHERE t.isleaf) \
                ELSE nullif(c.reltuples, -1) END)::float8 \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(query_error(context()))?
        .ok_or_else(|| CatalogError::NoSuchTable(table.to_string()))?;
    let id: u32 = row.get(0);
    let replica_identity: i8 = row.get(1);
    let partitioned: bool = row.get(2);
    let estimated_rows = row.get::<_, Option<f64>>(3).map(|n| n.max(0.0) as u64);
    let columns = client
        .query(
            "SELECT a.attname, a.atttypid, a.atttypmod, \
               COALESCE(a.attnum = ANY ((SELECT i.indkey FROM pg_index i \
                                         WHERE i.indrelid = a.attrelid AND i.indisreplident)::int2[]), false) \
             FROM pg_attribute a \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
             ORDER BY a.attnum",
            &[&id],
        )
        .await
        .map_err(query_error(context()))?
        .iter()
        .map(|r| RelationColumn {
            name: r.get(0),
            type_oid: r.get(1),
            type_modifier: r.get(2),
            key: r.get(3),
        })
        .collect();
    let primary_key = primary_key(client, id).await?;
    Ok(TableDescription {
        relation: Relation {
            id,
            namespace: table.schema.clone(),
            name: table.name.clone(),
            replica_identity: replica_identity as u8,
            columns,
        },
        primary_key,
        partitioned,
        estimated_rows,
    })
}
