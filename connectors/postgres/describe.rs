//! Captured tables described from the catalog, before any Relation message arrives: what a snapshot reads
//! and what comparing a contract needs. The decoder builds the model without I/O ([`Captured::new`]); the
//! catalog lookups it needs first are here, below both the reader and the snapshot that use them.

use std::sync::Arc;

use sluice_core::event::Table;
use tokio_postgres::Client;

use super::catalog::{self, TableName};
use super::decoder::Captured;
use super::error::SourceError;
use super::pgoutput::Relation;
use super::settings::PostgresSettings;
use super::type_catalog;
use crate::config::{DecimalHandling, Selection};

/// Describing a table takes the catalog, so it is done here; [`Captured::new`] builds the model.
impl Captured {
    /// Describes a table from the catalog and loads its model: what a snapshot reads and what comparing
    /// a contract needs, before any Relation message arrives.
    pub(super) async fn describe(
        client: &Client,
        name: &TableName,
        selection: &Selection,
        decimal: DecimalHandling,
    ) -> Result<(catalog::TableDescription, Captured), SourceError> {
        let description = catalog::describe_table(client, name).await?;
        let captured = Captured::load(
            client,
            &description.relation,
            &description.primary_key,
            selection,
            decimal,
        )
        .await?;
        Ok((description, captured))
    }

    /// Looks up the relation's column types in the catalog, then [`Captured::new`].
    pub(super) async fn load(
        client: &Client,
        relation: &Relation,
        primary_key: &[String],
        selection: &Selection,
        decimal: DecimalHandling,
    ) -> Result<Captured, SourceError> {
        let resolved = type_catalog::resolve_columns(client, relation, decimal).await?;
        Ok(Captured::new(relation, primary_key, resolved, selection))
    }
}

/// The current model of every selected table, as the next event of each would carry it (for comparing
/// contracts with the tables without starting a stream).
pub async fn current_tables(settings: &PostgresSettings) -> Result<Vec<Arc<Table>>, SourceError> {
    let client = catalog::connect(&settings.connection).await?;
    let mut tables = Vec::new();
    for name in catalog::resolve_tables(&client, &settings.selection).await? {
        let (_, captured) = Captured::describe(
            &client,
            &name,
            &settings.selection,
            settings.decimal_handling,
        )
        .await?;
        tables.push(captured.table);
    }
    Ok(tables)
}
