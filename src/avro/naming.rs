//! Topic and Avro names for a table (and, by the same rule, for a MongoDB collection: its database in
//! place of the schema).
//!
//! # Naming rule
//!
//! - **Topic**: `<topic_prefix>.<schema>.<table>`, with every character outside `[A-Za-z0-9._-]` replaced
//!   by `_` (Kafka's legal topic characters). Example: prefix `shop`, table `public."order items"` →
//!   `shop.public.order_items`.
//! - **Avro namespace**: the same `<topic_prefix>.<schema>.<table>`, split on dots, each component
//!   sanitised: characters outside `[A-Za-z0-9_]` become `_`, a component starting with a digit gets a
//!   leading `_`, an empty component becomes `_`. A dot inside a schema or table name therefore separates
//!   components, as it does in the topic. Example: `shop.public.2024-sales` → `shop.public._2024_sales`.
//! - **Records**: `<namespace>.Key` (key columns), `<namespace>.Value` (all columns) and
//!   `<namespace>.Envelope` (the message value). Shared records have fixed names:
//!   `sluice.postgres.Source` and `io.debezium.data.VariableScaleDecimal`.
//! - **Fields**: each column name sanitised like a namespace component. When two columns sanitise to the
//!   same name, the later ones (in table order) get `_2`, `_3`, … (the first free suffix), so names are
//!   deterministic for a given column list. Whenever a field name differs from its column's name, the field
//!   carries the original in the property `"sluice.column"`. Names are compared case-sensitively, as Avro
//!   does.
//!
//! Two tables whose names only differ in replaced characters (`a-b` and `a_b`), or in where a dot falls
//! (schema `a.b` table `c`, schema `a` table `b.c`), share a topic and record names.

use std::collections::HashSet;

use sluice_core::event::Table;

/// The topic a table's events go to.
pub fn topic_name(topic_prefix: &str, table: &Table) -> String {
    collection_topic(topic_prefix, &table.schema, &table.name)
}

/// The topic of `<container>.<collection>` (PostgreSQL schema and table, MongoDB database and collection).
pub fn collection_topic(topic_prefix: &str, container: &str, collection: &str) -> String {
    legal_topic(&format!("{topic_prefix}.{container}.{collection}"))
}

/// `text` with every character Kafka refuses in a topic name replaced by `_`.
pub fn legal_topic(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The Avro namespace of a table's records.
pub fn namespace(topic_prefix: &str, table: &Table) -> String {
    collection_namespace(topic_prefix, &table.schema, &table.name)
}

/// The Avro namespace of `<container>.<collection>`'s records.
pub fn collection_namespace(topic_prefix: &str, container: &str, collection: &str) -> String {
    let joined = format!("{topic_prefix}.{container}.{collection}");
    joined
        .split('.')
        .map(avro_name)
        .collect::<Vec<_>>()
        .join(".")
}

/// The Avro namespace of the records on a topic a route named: each dot-separated part made a legal name.
pub fn topic_namespace(topic: &str) -> String {
    topic
        .split('.')
        .map(avro_name)
        .collect::<Vec<_>>()
        .join(".")
}

/// One legal Avro name (`[A-Za-z_][A-Za-z0-9_]*`) from any text.
pub fn avro_name(text: &str) -> String {
    let mut name = String::with_capacity(text.len() + 1);
    if text.is_empty() || text.starts_with(|c: char| c.is_ascii_digit()) {
        name.push('_');
    }
    name.extend(text.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '_'
        }
    }));
    name
}

/// Field names for the table's columns, in column order, unique within the table.
pub fn field_names(table: &Table) -> Vec<String> {
    unique_field_names(table.columns.iter().map(|c| c.name.as_str()))
}

/// Legal, unique Avro field names for source names, in order (also for the fields of composite types).
pub fn unique_field_names<'a>(names: impl ExactSizeIterator<Item = &'a str>) -> Vec<String> {
    let mut used: HashSet<String> = HashSet::with_capacity(names.len());
    names
        .map(|source_name| {
            let base = avro_name(source_name);
            let mut name = base.clone();
            let mut suffix = 2u64;
            while used.contains(&name) {
                name = format!("{base}_{suffix}");
                suffix += 1;
            }
            used.insert(name.clone());
            name
        })
        .collect()
}

/// The Avro full name of a composite type's record: `sluice.postgres.types.` and the type's dotted name
/// (`public.address`), each component made legal.
pub fn composite_record_name(type_name: &str) -> String {
    let components: Vec<String> = type_name.split('.').map(avro_name).collect();
    format!("sluice.postgres.types.{}", components.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::event::{Column, ColumnType};

    fn table(schema: &str, name: &str, columns: &[&str]) -> Table {
        Table {
            id: 1,
            schema: schema.into(),
            name: name.into(),
            columns: columns
                .iter()
                .map(|c| Column {
                    name: (*c).into(),
                    column_type: ColumnType::Int32,
                    key: false,
                    source_type: "int4".into(),
                    not_null: false,
                    precision: None,
                })
                .collect(),
        }
    }

    #[test]
    fn topics_keep_kafka_characters() {
        assert_eq!(
            topic_name("shop", &table("public", "orders", &[])),
            "shop.public.orders"
        );
        assert_eq!(
            topic_name("shop", &table("public", "order items", &[])),
            "shop.public.order_items"
        );
        assert_eq!(
            topic_name("shop-1", &table("My Schema", "2024-sales", &[])),
            "shop-1.My_Schema.2024-sales"
        );
        assert_eq!(
            topic_name("shop", &table("public", "café/ü", &[])),
            "shop.public.caf___"
        );
    }

    #[test]
    fn namespaces_are_legal_avro_names() {
        assert_eq!(
            namespace("shop", &table("public", "orders", &[])),
            "shop.public.orders"
        );
        assert_eq!(
            namespace("shop-1", &table("public", "2024-sales", &[])),
            "shop_1.public._2024_sales"
        );
        assert_eq!(namespace("shop", &table("", "a..b", &[])), "shop._.a._.b");
        assert_eq!(
            namespace("shop", &table("Ünïcode", "x y", &[])),
            "shop._n_code.x_y"
        );
    }

    #[test]
    fn names_are_sanitised() {
        assert_eq!(avro_name("id"), "id");
        assert_eq!(avro_name("order id"), "order_id");
        assert_eq!(avro_name("1st"), "_1st");
        assert_eq!(avro_name(""), "_");
        assert_eq!(avro_name("ключ"), "____");
        assert_eq!(avro_name("_ok_9"), "_ok_9");
    }

    #[test]
    fn colliding_fields_get_suffixes_in_table_order() {
        let t = table("public", "t", &["a b", "a-b", "a_b", "a_b_2", "A_B", "a.b"]);
        assert_eq!(
            field_names(&t),
            ["a_b", "a_b_2", "a_b_3", "a_b_2_2", "A_B", "a_b_4"]
        );
    }
}
