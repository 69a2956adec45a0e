//! What the catalog says about column types a Relation message only names by OID: domains, enums, composite
//! types, arrays, ranges and extension types such as hstore. `types::resolve` turns the result into the
//! event model's column types.
//!
//! Types are looked up afresh for every Relation message (they are rare): a composite type altered since
//! the last one is then seen as it is now.

use std::collections::HashMap;

use tokio_postgres::Client;

use super::catalog::{query_error, CatalogError};
use super::pgoutput::Relation;
// Public here before they had a module of their own.
pub use super::type_model::{FieldType, PgType, PgTypeKind, TypeMap};
use super::types::{self, ResolvedColumn};
use crate::config::DecimalHandling;

/// Deeper nesting than this (domains over arrays of composites of …) is treated as text: PostgreSQL
/// forbids cycles, so only a pathological schema gets here.
const MAX_DEPTH: usize = 32;

/// The event model's column types for a relation's columns, in the relation's order.
pub async fn resolve_columns(
    client: &Client,
    relation: &Relation,
    decimal: DecimalHandling,
) -> Result<Vec<ResolvedColumn>, CatalogError> {
    let dimensions = declared_dimensions(client, relation.id).await?;
    let mut catalog = TypeMap::new();
    let mut pending: Vec<(u32, usize)> = relation.columns.iter().map(|c| (c.type_oid, 0)).collect();
    while let Some((oid, depth)) = pending.pop() {
        if types::is_native(oid) || catalog.contains_key(&oid) || depth > MAX_DEPTH {
            continue;
        }
        let found = lookup(client, oid).await?;
        pending.extend(referenced(&found).into_iter().map(|o| (o, depth + 1)));
        catalog.insert(oid, found);
    }
    Ok(relation
        .columns
        .iter()
        .map(|c| {
            let (dims, not_null) = dimensions.get(&c.name).copied().unwrap_or((0, false));
            ResolvedColumn {
                not_null,
                ..types::resolve(c.type_oid, c.type_modifier, dims, &catalog, decimal)
            }
        })
        .collect())
}

/// The OIDs a type's mapping depends on.
fn referenced(found: &PgType) -> Vec<u32> {
    match &found.kind {
        PgTypeKind::Domain { base, .. } => vec![*base],
        PgTypeKind::Array { element, .. } => vec![*element],
        PgTypeKind::Composite { fields } => fields.iter().map(|f| f.type_oid).collect(),
        PgTypeKind::Enum { .. } | PgTypeKind::Other => Vec::new(),
    }
}

/// `attndims` and `attnotnull` by column name: pgoutput sends neither. The dimensions decide how deep an
/// array column's Avro type nests.
async fn declared_dimensions(
    client: &Client,
    relation_id: u32,
) -> Result<HashMap<String, (i32, bool)>, CatalogError> {
    let rows = client
        .query(
            // attndims is int2 in newer servers; read it as int4 on every version.
            "SELECT attname, attndims::int4, attnotnull FROM pg_attribute \
             WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped",
            &[&relation_id],
        )
        .await
        .map_err(query_error(format!(
            "cannot read the columns of relation {relation_id}"
        )))?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}

/// An enumerated type's labels in their sort order (Debezium's `allowed` parameter lists them so).
async fn enum_labels(client: &Client, oid: u32) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT enumlabel::text FROM pg_catalog.pg_enum WHERE enumtypid = $1 ORDER BY enumsortorder",
            &[&oid],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

async fn lookup(client: &Client, oid: u32) -> Result<PgType, CatalogError> {
    let context = || format!("cannot look up type {oid}");
    let row = client
        .query_opt(
            "SELECT t.typname::text, n.nspname::text, t.typtype, t.typcategory, t.typelem, t.typbasetype, \
               t.typtypmod, t.typndims::int4, t.typrelid, t.typoutput = 'array_out'::regproc \
             FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.oid = $1",
            &[&oid],
        )
        .await
        .map_err(query_error(context()))?;
    // A type dropped since the Relation message: its values can still be carried as text.
    let Some(row) = row else {
        return Ok(PgType {
            name: format!("oid:{oid}"),
            kind: PgTypeKind::Other,
        });
    };
    let typname: String = row.get(0);
    let schema: String = row.get(1);
    let name = if schema == "pg_catalog" {
        typname
    } else {
        format!("{schema}.{typname}")
    };
    let typtype = row.get::<_, i8>(2) as u8;
    let category = row.get::<_, i8>(3) as u8;
    let element: u32 = row.get(4);
    let kind = match typtype {
        b'd' => PgTypeKind::Domain {
            base: row.get(5),
            type_modifier: row.get(6),
            dimensions: row.get(7),
        },
        b'e' => PgTypeKind::Enum {
            labels: enum_labels(client, oid)
                .await
                .map_err(query_error(context()))?,
        },
        b'c' => PgTypeKind::Composite {
            fields: composite_fields(client, row.get(8))
                .await
                .map_err(query_error(context()))?,
        },
        // `name` and `point` have a typelem too (they are subscriptable), and int2vector and oidvector are
        // in the array category but print as `1 2 3`: only array_out's `{…}` form is an array here.
        b'b' if category == b'A' && element != 0 && row.get::<_, bool>(9) => {
            PgTypeKind::Array { element }
        }
        _ => PgTypeKind::Other,
    };
    Ok(PgType { name, kind })
}

async fn composite_fields(
    client: &Client,
    relation_id: u32,
) -> Result<Vec<FieldType>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT attname::text, atttypid, atttypmod, attndims::int4 FROM pg_attribute \
             WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&relation_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| FieldType {
            name: r.get(0),
            type_oid: r.get(1),
            type_modifier: r.get(2),
            dimensions: r.get(3),
        })
        .collect())
}
