//! Captured tables described from the catalog, before any Relation message arrives: what a snapshot reads
//! and what comparing a contract needs. The decoder builds the model without I/O ([`Captured::new`]); the
//! catalog lookups it needs first are here, below both the reader and the snapshot that use them.

use tokio_postgres::Client;

use super::catalog::{self, TableName};
use super::decoder::Captured;
use super::error::SourceError;
use super::pgoutput::Relation;
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
