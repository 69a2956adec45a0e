//! The signal table: where users write signals (`sluice snapshot` writes them too). sluice makes it exist
//! when it may, captures it like a selected table, and never publishes or snapshots its rows.

use tokio_postgres::Client;

use super::catalog::{self, TableName};
use super::connection::PgConnection;
use super::error::SourceError;
use super::incremental::table_name;
use super::replication::quote_ident;
use sluice_core::signal::Signal;

/// The columns a signal table must have, as Debezium's.
pub const COLUMNS: [&str; 3] = ["id", "type", "data"];

/// The definition `sluice run` creates and `sluice check` suggests.
pub fn definition(table: &str) -> String {
    format!(
        "CREATE TABLE {} (id text PRIMARY KEY, type text NOT NULL, data text)",
        table_name(table).quoted()
    )
}

/// Makes the signal table exist (creating it when the user may) and checks its columns.
pub async fn ensure(client: &Client, table: &str) -> Result<TableName, SourceError> {
    let name = table_name(table);
    let problem = |problem: String| SourceError::SignalTable {
        table: name.quoted(),
        problem,
        definition: definition(table),
    };
    let columns = columns(client, &name).await?;
    if columns.is_empty() {
        client
            .batch_execute(&definition(table).replacen(
                "CREATE TABLE",
                "CREATE TABLE IF NOT EXISTS",
                1,
            ))
            .await
            .map_err(|err| {
                problem(format!(
                    "it does not exist, and sluice cannot create it: {}",
                    catalog::describe_pg_error(&err)
                ))
            })?;
        tracing::info!(table = %name, "created the signal table");
        return Ok(name);
    }
    let missing = missing(&columns);
    if !missing.is_empty() {
        return Err(problem(format!("it lacks the column(s) {missing:?}")));
    }
    Ok(name)
}

/// The columns of [`COLUMNS`] that `columns` lacks.
pub fn missing(columns: &[String]) -> Vec<&'static str> {
    COLUMNS
        .into_iter()
        .filter(|c| !columns.iter().any(|have| have == c))
        .collect()
}

/// The table's column names; empty when it does not exist.
pub async fn columns(client: &Client, name: &TableName) -> Result<Vec<String>, SourceError> {
    let rows = client
        .query(
            "SELECT a.attname::text FROM pg_attribute a
             JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
            &[&name.schema, &name.name],
        )
        .await
        .map_err(catalog::query_error(format!(
            "cannot read the columns of the signal table {name}"
        )))?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Inserts `signal` into the signal table (for `sluice snapshot`); returns its id.
pub async fn write(
    connection: &PgConnection,
    table: &str,
    signal: &Signal,
) -> Result<String, SourceError> {
    let client = catalog::connect(connection).await?;
    let name = table_name(table);
    let id = format!("sluice-{}", sluice_core::positions::now_us());
    let (kind, data) = signal.to_columns();
    client
        .execute(
            &format!(
                "INSERT INTO {} ({}, {}, {}) VALUES ($1, $2, $3)",
                name.quoted(),
                quote_ident("id"),
                quote_ident("type"),
                quote_ident("data")
            ),
            &[&id, &kind, &data],
        )
        .await
        .map_err(|err| SourceError::SignalWrite {
            table: name.quoted(),
            reason: catalog::describe_pg_error(&err),
        })?;
    Ok(id)
}
