//! Avro schemas for a table: the message key and the Debezium-style envelope; the columns' types are
//! [`super::column_types`]'s.

use serde_json::{json, Value as Json};

use super::column_types::{connect, TypeBuilder};
pub use super::column_types::{SchemaError, VARIABLE_SCALE_DECIMAL};
use super::debezium::LogicalTypes;
use super::flat::{Flat, DELETED_FIELD};
use super::naming::{field_names, namespace, topic_name};
use super::placeholder;
use sluice_core::event::{Column, Table};

/// Full name of the record describing where an event came from.
pub const SOURCE_RECORD: &str = "sluice.postgres.Source";
/// Full name of the envelope's transaction block.
pub const TRANSACTION_BLOCK: &str = "sluice.TransactionBlock";

/// One generated schema: the text that gets registered and its parsed form.
#[derive(Clone, Debug)]
pub struct AvroSchema {
    /// Compact JSON text.
    pub json: String,
    pub schema: apache_avro::Schema,
}

/// Everything needed to publish one table version.
#[derive(Clone, Debug)]
pub struct TableSchemas {
    pub topic: String,
    /// `None` when the table has no key columns: its messages get a null key.
    pub key: Option<AvroSchema>,
    /// The envelope.
    pub value: AvroSchema,
}

/// The topic and the key and value schemas of a table.
///
/// The value schema is the envelope: `before` and `after` are the `Value` record of all columns, and every
/// field of it is optional (`["null", T]`, default null), whatever the column's nullability: a before
/// image carries only the key columns under `REPLICA IDENTITY DEFAULT`, and an unchanged TOASTed value is
/// sent as null. The key record holds the key columns, in table order, with non-null types.
pub fn table_schemas(topic_prefix: &str, table: &Table) -> Result<TableSchemas, SchemaError> {
    table_schemas_as(topic_prefix, table, LogicalTypes::Avro)
}

/// [`table_schemas`] in `logical_types`' representation (for Debezium's, `table` as the source has it is
/// rewritten first).
pub fn table_schemas_as(
    topic_prefix: &str,
    table: &Table,
    logical_types: LogicalTypes,
) -> Result<TableSchemas, SchemaError> {
    let rewritten;
    let table = match logical_types {
        LogicalTypes::Avro => table,
        LogicalTypes::Debezium => {
            rewritten = super::debezium::debezium_table(table);
            &rewritten
        }
    };
    let topic = topic_name(topic_prefix, table);
    let shape = Shape {
        topic: &topic,
        namespace: namespace(topic_prefix, table),
        key_table: None,
        flat: None,
        logical_types,
    };
    shaped_table_schemas(table, &shape)
}

/// How the transforms shaped a table's records: the topic (and record namespace) a route sent them to,
/// the field naming the table that a route adds to the key, and the flat value of unwrap.
pub struct Shape<'a> {
    pub topic: &'a str,
    pub namespace: String,
    pub key_table: Option<&'a str>,
    pub flat: Option<&'a Flat>,
    /// Debezium's schemas exactly (`debezium`): its record names, field order and required NOT NULL
    /// columns; `table` has Debezium's column types already.
    pub logical_types: LogicalTypes,
}

/// [`table_schemas`] as the transforms shaped them. The flat value is the envelope's `Value` record with
/// the added fields after the columns.
pub fn shaped_table_schemas(table: &Table, shape: &Shape) -> Result<TableSchemas, SchemaError> {
    let namespace = &shape.namespace;
    let names = field_names(table);

    let key = key_schema(table, &names, shape)?;

    let debezium = shape.logical_types == LogicalTypes::Debezium;
    let mut types = TypeBuilder::new(shape.logical_types);
    let mut value_fields = table
        .columns
        .iter()
        .zip(&names)
        .map(|(column, name)| {
            let avro = types.column(table, column)?;
            // Debezium makes NOT NULL columns required, in `before` as in `after`.
            if debezium && column.not_null {
                let mut f = field(column, name, avro);
                if let Some(default) = placeholder::fallback_default(&column.column_type) {
                    f["default"] = default;
                }
                return Ok(f);
            }
            let mut f = field(column, name, json!(["null", avro]));
            f["default"] = Json::Null;
            Ok(f)
        })
        .collect::<Result<Vec<_>, SchemaError>>()?;
    if let Some(flat) = shape.flat {
        value_fields.extend(flat_fields(flat));
        let record = json!({"type": "record", "name": "Value", "namespace": namespace, "fields": value_fields});
        return Ok(TableSchemas {
            topic: shape.topic.to_owned(),
            key,
            value: parse(table, "value", &record)?,
        });
    }
    let value_record = json!({"type": "record", "name": "Value", "namespace": namespace,
        "fields": value_fields, "connect.name": format!("{namespace}.Value")});
    if debezium {
        let envelope = debezium_envelope(namespace, value_record);
        return Ok(TableSchemas {
            topic: shape.topic.to_owned(),
            key,
            value: parse(table, "value", &envelope)?,
        });
    }
    let [before, after] = row_fields(namespace, value_record);
    let envelope = json!({
        "type": "record",
        "name": "Envelope",
        "namespace": namespace,
        "fields": [
            before,
            after,
            {"name": "source", "type": source_record()},
            {"name": "op", "type": "string"},
            {"name": "ts_ms", "type": ["null", "long"], "default": null},
            {"name": "transaction", "type": ["null", transaction_block()], "default": null},
            {"name": "ts_us", "type": ["null", "long"], "default": null},
            {"name": "ts_ns", "type": ["null", "long"], "default": null},
        ],
        "connect.version": 2,
        "connect.name": format!("{namespace}.Envelope"),
    });
    let value = parse(table, "value", &envelope)?;

    Ok(TableSchemas {
        topic: shape.topic.to_owned(),
        key,
        value,
    })
}

/// The `Key` record: the key columns in table order, then the table's name when a route asks for it; None
/// for a table without key columns (its messages get a null key).
fn key_schema(
    table: &Table,
    names: &[String],
    shape: &Shape,
) -> Result<Option<AvroSchema>, SchemaError> {
    let namespace = &shape.namespace;
    let key_fields: Vec<(&Column, &String)> = table
        .columns
        .iter()
        .zip(names)
        .filter(|(c, _)| c.key)
        .collect();
    if key_fields.is_empty() {
        return Ok(None);
    }
    let debezium = shape.logical_types == LogicalTypes::Debezium;
    let mut types = TypeBuilder::new(shape.logical_types);
    let mut fields = key_fields
        .iter()
        .map(|(column, name)| {
            let mut avro = types.column(table, column)?;
            if !debezium {
                without_connect_properties(&mut avro);
            }
            Ok(field(column, name, avro))
        })
        .collect::<Result<Vec<_>, SchemaError>>()?;
    if let Some(key_table) = shape.key_table {
        fields.push(json!({"name": key_table, "type": "string"}));
    }
    let mut record =
        json!({"type": "record", "name": "Key", "namespace": namespace, "fields": fields});
    if debezium {
        record["connect.name"] = json!(format!("{namespace}.Key"));
    }
    Ok(Some(parse(table, "key", &record)?))
}

/// A key column's type as sluice wrote it before it carried Kafka Connect's properties. A key's bytes
/// (and with a registry, its schema id) decide its partition and what compaction keeps: a key schema
/// that changed would put a row's later events on another partition and leave its earlier ones
/// uncompacted. So keys keep the schema they had; Debezium's mode, chosen for a new deployment, has
/// Debezium's.
fn without_connect_properties(avro: &mut Json) {
    match avro {
        Json::Object(object) => {
            object.retain(|name, value| {
                // `connect.type` (int16) and the JSON type's name were there from the start.
                !name.starts_with("connect.")
                    || name == "connect.type"
                    || (name == "connect.name" && value == "io.debezium.data.Json")
            });
            object.values_mut().for_each(without_connect_properties);
        }
        Json::Array(items) => items.iter_mut().for_each(without_connect_properties),
        _ => {}
    }
}

/// The fields unwrap adds after the row's: each one asked for (optional: a snapshot row has no
/// transaction, for one), then `__deleted` when deletes are rewritten.
pub(super) fn flat_fields(flat: &Flat) -> Vec<Json> {
    let mut fields: Vec<Json> = flat
        .add_fields
        .iter()
        .map(|f| json!({"name": f.field_name(), "type": ["null", f.avro_type()], "default": null}))
        .collect();
    if flat.rewrite_deletes {
        // A string, as Debezium writes it: consumers written for it compare with "true".
        fields.push(json!({"name": DELETED_FIELD, "type": ["null", "string"], "default": null}));
    }
    fields
}

fn field(column: &Column, name: &str, avro_type: Json) -> Json {
    let mut f = json!({"name": name, "type": avro_type});
    if column.name != name {
        f["sluice.column"] = json!(column.name);
    }
    f
}

/// Debezium's transaction block: which transaction (`<txid>:<commit LSN>`), the event's place in it, and its
/// place among the transaction's events of this table (1-based). Null on snapshot rows.
fn transaction_block() -> Json {
    json!({
        "type": "record",
        "name": TRANSACTION_BLOCK,
        "fields": [
            {"name": "id", "type": "string"},
            {"name": "total_order", "type": "long"},
            {"name": "data_collection_order", "type": "long"},
        ],
    })
}

/// The fields every Debezium connector's `source` block starts with, in this order.
pub(super) fn common_source_fields() -> Vec<Json> {
    vec![
        json!({"name": "version", "type": "string"}),
        json!({"name": "connector", "type": "string"}),
        json!({"name": "name", "type": "string"}),
        json!({"name": "ts_ms", "type": "long"}),
        json!({"name": "snapshot", "type": snapshot_marker(), "default": "false"}),
        json!({"name": "db", "type": "string"}),
    ]
}

/// Debezium's envelope: its field order, its `source` and transaction block records.
fn debezium_envelope(namespace: &str, value_record: Json) -> Json {
    let mut source_fields = common_source_fields();
    // Optional, defaulting to "false", the union the converter makes of a Connect default.
    source_fields[4] =
        json!({"name": "snapshot", "type": [snapshot_marker(), "null"], "default": "false"});
    source_fields.extend(postgres_source_fields());
    let [before, after] = row_fields(namespace, value_record);
    json!({
        "type": "record",
        "name": "Envelope",
        "namespace": namespace,
        "fields": [
            before,
            after,
            {"name": "source", "type": {
                "type": "record", "name": DEBEZIUM_SOURCE_RECORD, "fields": source_fields,
                "connect.version": 1, "connect.name": DEBEZIUM_SOURCE_RECORD,
            }},
            {"name": "transaction", "type": ["null", {
                "type": "record", "name": "event.block", "fields": transaction_block()["fields"],
                "connect.version": 1, "connect.name": "event.block",
            }], "default": null},
            {"name": "op", "type": "string"},
            {"name": "ts_ms", "type": ["null", "long"], "default": null},
            {"name": "ts_us", "type": ["null", "long"], "default": null},
            {"name": "ts_ns", "type": ["null", "long"], "default": null},
        ],
        "connect.version": 2,
        "connect.name": format!("{namespace}.Envelope"),
    })
}

/// `before` (which defines the `Value` record) and `after` (which names it).
fn row_fields(namespace: &str, value_record: Json) -> [Json; 2] {
    [
        json!({"name": "before", "type": ["null", value_record], "default": null}),
        json!({"name": "after", "type": ["null", format!("{namespace}.Value")], "default": null}),
    ]
}

/// Full name of Debezium's `source` record for PostgreSQL.
pub const DEBEZIUM_SOURCE_RECORD: &str = "io.debezium.connector.postgresql.Source";

/// `source.snapshot`: a string, and to Kafka Connect Debezium's enum of the markers.
fn snapshot_marker() -> Json {
    let mut marker = connect(
        json!({"type": "string"}),
        "io.debezium.data.Enum",
        Some(json!({"allowed": SNAPSHOT_MARKERS})),
    );
    marker["connect.default"] = json!("false");
    marker
}

/// The markers Debezium 3 allows in `source.snapshot` (sluice writes `true`, `last`, `false` and
/// `incremental`).
const SNAPSHOT_MARKERS: &str =
    "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental";

/// Debezium's `source` block for PostgreSQL.
fn source_record() -> Json {
    let mut fields = common_source_fields();
    fields.extend(postgres_source_fields());
    json!({"type": "record", "name": SOURCE_RECORD, "fields": fields})
}

/// The PostgreSQL fields of the `source` block, after the common ones.
fn postgres_source_fields() -> [Json; 10] {
    [
        json!({"name": "sequence", "type": ["null", "string"], "default": null}),
        json!({"name": "ts_us", "type": ["null", "long"], "default": null}),
        json!({"name": "ts_ns", "type": ["null", "long"], "default": null}),
        json!({"name": "schema", "type": "string"}),
        json!({"name": "table", "type": "string"}),
        json!({"name": "txId", "type": ["null", "long"], "default": null}),
        json!({"name": "lsn", "type": ["null", "long"], "default": null}),
        json!({"name": "xmin", "type": ["null", "long"], "default": null}),
        json!({"name": "origin", "type": ["null", "string"], "default": null}),
        json!({"name": "origin_lsn", "type": ["null", "long"], "default": null}),
    ]
}

fn parse(table: &Table, part: &'static str, schema: &Json) -> Result<AvroSchema, SchemaError> {
    let json = schema.to_string();
    let parsed = apache_avro::Schema::parse_str(&json).map_err(|source| SchemaError::Invalid {
        table: table.qualified_name(),
        part,
        source,
    })?;
    Ok(AvroSchema {
        json,
        schema: parsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::event::Column;
    use sluice_core::event::ColumnType;

    fn column(name: &str, column_type: ColumnType, key: bool, source_type: &str) -> Column {
        Column {
            name: name.into(),
            column_type,
            key,
            source_type: source_type.into(),
            not_null: false,
            precision: None,
        }
    }

    fn table(schema: &str, name: &str, columns: Vec<Column>) -> Table {
        Table {
            id: 7,
            schema: schema.into(),
            name: name.into(),
            columns,
        }
    }

    fn parsed(json: &str) -> Json {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn small_table_schema_shape_is_pinned() {
        let t = table(
            "public",
            "orders",
            vec![
                column("id", ColumnType::Int64, true, "int8"),
                column(
                    "total",
                    ColumnType::Decimal {
                        precision: 12,
                        scale: 2,
                    },
                    false,
                    "numeric",
                ),
                column(
                    "note text",
                    ColumnType::Text {
                        type_name: "tsvector".into(),
                    },
                    false,
                    "tsvector",
                ),
            ],
        );
        let schemas = table_schemas("shop", &t).unwrap();
        assert_eq!(schemas.topic, "shop.public.orders");
        assert_eq!(
            parsed(&schemas.key.unwrap().json),
            json!({
                "type": "record", "name": "Key", "namespace": "shop.public.orders",
                "fields": [{"name": "id", "type": "long"}],
            })
        );
        assert_eq!(
            parsed(&schemas.value.json),
            json!({
                "type": "record", "name": "Envelope", "namespace": "shop.public.orders",
                "fields": [
                    {"name": "before", "default": null, "type": ["null", {
                        "type": "record", "name": "Value", "namespace": "shop.public.orders",
                        "fields": [
                            {"name": "id", "type": ["null", "long"], "default": null},
                            {"name": "total", "default": null, "type": ["null",
                                {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2,
                                 "connect.version": 1,
                                 "connect.parameters": {"scale": "2", "connect.decimal.precision": "12"},
                                 "connect.name": "org.apache.kafka.connect.data.Decimal"}]},
                            {"name": "note_text", "sluice.column": "note text", "default": null,
                                "type": ["null", {"type": "string", "sluice.source_type": "tsvector",
                                    "connect.version": 1, "connect.name": "io.debezium.data.Tsvector"}]},
                        ],
                        "connect.name": "shop.public.orders.Value",
                    }]},
                    {"name": "after", "type": ["null", "shop.public.orders.Value"], "default": null},
                    {"name": "source", "type": {
                        "type": "record", "name": "sluice.postgres.Source",
                        "fields": [
                            {"name": "version", "type": "string"},
                            {"name": "connector", "type": "string"},
                            {"name": "name", "type": "string"},
                            {"name": "ts_ms", "type": "long"},
                            {"name": "snapshot", "default": "false", "type": {
                                "type": "string", "connect.version": 1,
                                "connect.parameters": {"allowed": SNAPSHOT_MARKERS},
                                "connect.default": "false", "connect.name": "io.debezium.data.Enum"}},
                            {"name": "db", "type": "string"},
                            {"name": "sequence", "type": ["null", "string"], "default": null},
                            {"name": "ts_us", "type": ["null", "long"], "default": null},
                            {"name": "ts_ns", "type": ["null", "long"], "default": null},
                            {"name": "schema", "type": "string"},
                            {"name": "table", "type": "string"},
                            {"name": "txId", "type": ["null", "long"], "default": null},
                            {"name": "lsn", "type": ["null", "long"], "default": null},
                            {"name": "xmin", "type": ["null", "long"], "default": null},
                            {"name": "origin", "type": ["null", "string"], "default": null},
                            {"name": "origin_lsn", "type": ["null", "long"], "default": null},
                        ],
                    }},
                    {"name": "op", "type": "string"},
                    {"name": "ts_ms", "type": ["null", "long"], "default": null},
                    {"name": "transaction", "type": ["null", {"type": "record", "name": "sluice.TransactionBlock", "fields": [
                        {"name": "id", "type": "string"},
                        {"name": "total_order", "type": "long"},
                        {"name": "data_collection_order", "type": "long"},
                    ]}], "default": null},
                    {"name": "ts_us", "type": ["null", "long"], "default": null},
                    {"name": "ts_ns", "type": ["null", "long"], "default": null},
                ],
                "connect.version": 2,
                "connect.name": "shop.public.orders.Envelope",
            })
        );
    }

    #[test]
    fn every_column_type_parses_in_key_and_value() {
        let types = [
            ColumnType::Boolean,
            ColumnType::Int16,
            ColumnType::Int32,
            ColumnType::Int64,
            ColumnType::Float32,
            ColumnType::Float64,
            ColumnType::Decimal {
                precision: 10,
                scale: 0,
            },
            ColumnType::VariableDecimal,
            ColumnType::String,
            ColumnType::Bytes,
            ColumnType::Uuid,
            ColumnType::Date,
            ColumnType::Timestamp,
            ColumnType::TimestampTz,
            ColumnType::Json,
            ColumnType::Text {
                type_name: "interval".into(),
            },
        ];
        let columns = types
            .iter()
            .enumerate()
            .map(|(i, t)| column(&format!("c{i}"), t.clone(), true, "x"))
            .collect();
        let schemas = table_schemas("p", &table("s", "t", columns)).unwrap();
        assert!(schemas.key.is_some());
        assert!(schemas.value.json.contains("\"connect.type\":\"int16\""));
    }

    #[test]
    fn named_types_are_defined_once_per_schema() {
        let t = table(
            "public",
            "n",
            vec![
                column("a", ColumnType::VariableDecimal, true, "numeric"),
                column("b", ColumnType::VariableDecimal, true, "numeric"),
                column("c", ColumnType::VariableDecimal, false, "numeric"),
            ],
        );
        let schemas = table_schemas("p", &t).unwrap();
        let full = format!("\"{VARIABLE_SCALE_DECIMAL}\"");
        let definition = format!("\"name\":{full}");
        // Two key columns, three value columns: one definition each (the value's names itself again in
        // its `connect.name`; keys keep the schema they had before Connect's properties), the other uses
        // by name.
        for (json, uses) in [
            (&schemas.key.as_ref().unwrap().json, 2),
            (&schemas.value.json, 4),
        ] {
            assert_eq!(json.matches(&definition).count(), 1, "{json}");
            assert_eq!(json.matches(&full).count(), uses, "{json}");
        }
    }

    #[test]
    fn tables_without_key_columns_have_no_key_schema() {
        let t = table(
            "public",
            "log",
            vec![column("line", ColumnType::String, false, "text")],
        );
        assert!(table_schemas("p", &t).unwrap().key.is_none());
        // An empty table still has an envelope.
        assert!(table_schemas("p", &table("public", "empty", vec![])).is_ok());
    }

    #[test]
    fn weird_names_produce_valid_schemas() {
        let t = table(
            "Mixed Case-Schema",
            "1st table.v2 ✓",
            vec![
                column("order id", ColumnType::Int32, true, "int4"),
                column("order-id", ColumnType::Int32, true, "int4"),
                column("order_id", ColumnType::String, false, "text"),
                column("2nd", ColumnType::Uuid, false, "uuid"),
                column("", ColumnType::Bytes, false, "bytea"),
                column("ünïcödé", ColumnType::VariableDecimal, false, "numeric"),
                column("\"quoted\"", ColumnType::Date, false, "date"),
            ],
        );
        let schemas = table_schemas("my-server.prod", &t).unwrap();
        assert_eq!(
            schemas.topic,
            "my-server.prod.Mixed_Case-Schema.1st_table.v2__"
        );
        let value = parsed(&schemas.value.json);
        assert_eq!(
            value["namespace"],
            "my_server.prod.Mixed_Case_Schema._1st_table.v2__"
        );
        let fields = value["fields"][0]["type"][1]["fields"].as_array().unwrap();
        let names: Vec<&str> = fields.iter().map(|f| f["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "order_id",
                "order_id_2",
                "order_id_3",
                "_2nd",
                "_",
                "_n_c_d_",
                "_quoted_"
            ]
        );
        let originals: Vec<Option<&str>> =
            fields.iter().map(|f| f["sluice.column"].as_str()).collect();
        assert_eq!(
            originals,
            [
                Some("order id"),
                Some("order-id"),
                Some("order_id"),
                Some("2nd"),
                Some(""),
                Some("ünïcödé"),
                Some("\"quoted\"")
            ]
        );
        let key = parsed(&schemas.key.unwrap().json);
        let key_names: Vec<&str> = key["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(key_names, ["order_id", "order_id_2"]);
    }

    #[test]
    fn decimal_bounds() {
        let t = |precision, scale| {
            table(
                "s",
                "t",
                vec![column(
                    "n",
                    ColumnType::Decimal { precision, scale },
                    false,
                    "numeric",
                )],
            )
        };
        let schemas = table_schemas("p", &t(2, 5)).unwrap();
        let value = parsed(&schemas.value.json);
        let n = &value["fields"][0]["type"][1]["fields"][0]["type"][1];
        assert_eq!(
            (n["precision"].as_u64(), n["scale"].as_u64()),
            (Some(5), Some(5))
        );
        let err = table_schemas("p", &t(0, 0)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "s.t: column `n` is a decimal with precision 0, which Avro cannot declare"
        );
    }

    #[test]
    fn keys_keep_their_schema_without_connect_properties() {
        let t = table(
            "public",
            "k",
            vec![
                column("u", ColumnType::Uuid, true, "uuid"),
                column("d", ColumnType::Date, true, "date"),
                column(
                    "n",
                    ColumnType::Decimal {
                        precision: 10,
                        scale: 2,
                    },
                    true,
                    "numeric",
                ),
                column("s", ColumnType::Int16, true, "int2"),
                column("j", ColumnType::Json, true, "jsonb"),
            ],
        );
        let key = parsed(&table_schemas("p", &t).unwrap().key.unwrap().json);
        assert_eq!(
            key,
            json!({"type": "record", "name": "Key", "namespace": "p.public.k", "fields": [
                {"name": "u", "type": {"type": "string", "logicalType": "uuid"}},
                {"name": "d", "type": {"type": "int", "logicalType": "date"}},
                {"name": "n", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
                {"name": "s", "type": {"type": "int", "connect.type": "int16"}},
                {"name": "j", "type": {"type": "string", "connect.name": "io.debezium.data.Json"}},
            ]})
        );
    }
}
