//! What the catalog says about a type, as `type_catalog` reads it and `types` maps it: plain data, so
//! that the lookup (which calls the mapping) and the mapping (which reads these) do not depend on each other.

use std::collections::HashMap;

/// One `pg_type` row, reduced to what the mapping needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgType {
    /// `typname` for types in `pg_catalog`, `schema.typname` otherwise.
    pub name: String,
    pub kind: PgTypeKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PgTypeKind {
    /// A domain: its base type with the domain's modifier and, for arrays, dimensions.
    Domain {
        base: u32,
        type_modifier: i32,
        dimensions: i32,
    },
    /// An enumerated type's labels, in their sort order.
    Enum { labels: Vec<String> },
    /// A composite type's attributes in order.
    Composite { fields: Vec<FieldType> },
    /// An array type.
    Array { element: u32 },
    /// A base type (including extension types), range, multirange or pseudo-type.
    Other,
}

/// One attribute of a composite type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldType {
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
    /// Declared array dimensions (`int[][]` is 2), 0 when not declared.
    pub dimensions: i32,
}

/// The types met while resolving one relation, by OID.
pub type TypeMap = HashMap<u32, PgType>;
