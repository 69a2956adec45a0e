//! Avro schemas for a table: the message key and the Debezium-style envelope.
//!
//! Column types map as follows (`T` below):
//!
//! | column type       | Avro                                                                        |
//! |-------------------|-----------------------------------------------------------------------------|
//! | `Boolean`         | `"boolean"`                                                                 |
//! | `Int16`           | `{"type":"int","connect.type":"int16"}` (Debezium's INT16 marker)           |
//! | `Int32`           | `"int"`                                                                     |
//! | `Int64`           | `"long"`                                                                    |
//! | `Float32`         | `"float"`                                                                   |
//! | `Float64`         | `"double"`                                                                  |
//! | `Decimal{p,s}`    | `{"type":"bytes","logicalType":"decimal","precision":p,"scale":s}`          |
//! | `VariableDecimal` | record `io.debezium.data.VariableScaleDecimal` `{scale: int, value: bytes}` |
//! | `String`          | `"string"`                                                                  |
//! | `Bytes`           | `"bytes"`                                                                   |
//! | `Uuid`            | `{"type":"string","logicalType":"uuid"}`                                    |
//! | `Date`            | `{"type":"int","logicalType":"date"}`                                       |
//! | `Timestamp`       | `{"type":"long","logicalType":"local-timestamp-micros"}`                    |
//! | `TimestampTz`     | `{"type":"long","logicalType":"timestamp-micros"}`                          |
//! | `Json`            | `{"type":"string","connect.name":"io.debezium.data.Json"}`                  |
//! | `Text{type_name}` | `{"type":"string","sluice.source_type":type_name}`                          |
//! | `Time`            | `{"type":"long","logicalType":"time-micros"}`                               |
//! | `Money`           | `{"type":"bytes","logicalType":"decimal","precision":19,"scale":2}`         |
//! | `Array{T, n}`     | `n` nested `{"type":"array",…}`, the innermost with items `["null", T]`        |
//! | `Record{name, …}` | record `sluice.postgres.types.<name>`, every field `["null", T]`            |
//! | `TextMap`         | `{"type":"map","values":["null","string"]}`                                 |
//!
//! Only `Text` columns carry their source type (`sluice.source_type`): for every other type the Avro type
//! already says what the value is, and repeating `int4` on every field would only bloat what every consumer
//! fetches. PostgreSQL allows a scale above the precision (`numeric(2,5)`); Avro does not, so such a column
//! is declared with precision = scale, which holds every value the column can.
//!
//! Named types (records) are defined at their first use in a schema and referenced by full name after that.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value as Json};

use super::flat::{Flat, DELETED_FIELD};
use super::naming::{
    composite_record_name, field_names, namespace, topic_name, unique_field_names,
};
use sluice_core::event::{Column, ColumnType, RecordField, Table};

/// Full name of the record describing where an event came from.
pub const SOURCE_RECORD: &str = "sluice.postgres.Source";
/// Full name of the envelope's transaction block.
pub const TRANSACTION_BLOCK: &str = "sluice.TransactionBlock";
/// Full name of Debezium's record for numerics without a declared scale.
pub const VARIABLE_SCALE_DECIMAL: &str = "io.debezium.data.VariableScaleDecimal";

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

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("{table}: column `{column}` is a decimal with precision 0, which Avro cannot declare")]
    ZeroPrecision { table: String, column: String },
    /// A generated schema that apache-avro rejects: a bug in the generator.
    #[error("{table}: the generated {part} schema is not valid Avro: {source}")]
    Invalid {
        table: String,
        part: &'static str,
        #[source]
        source: apache_avro::Error,
    },
}

/// The topic and the key and value schemas of a table.
///
/// The value schema is the envelope: `before` and `after` are the `Value` record of all columns, and every
/// field of it is optional (`["null", T]`, default null), whatever the column's nullability: a before
/// image carries only the key columns under `REPLICA IDENTITY DEFAULT`, and an unchanged TOASTed value is
/// sent as null. The key record holds the key columns, in table order, with non-null types.
pub fn table_schemas(topic_prefix: &str, table: &Table) -> Result<TableSchemas, SchemaError> {
    let topic = topic_name(topic_prefix, table);
    let shape = Shape {
        topic: &topic,
        namespace: namespace(topic_prefix, table),
        key_table: None,
        flat: None,
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
}

/// [`table_schemas`] as the transforms shaped them. The flat value is the envelope's `Value` record with
/// the added fields after the columns.
pub fn shaped_table_schemas(table: &Table, shape: &Shape) -> Result<TableSchemas, SchemaError> {
    let namespace = &shape.namespace;
    let names = field_names(table);

    let key_fields: Vec<(&Column, &String)> = table
        .columns
        .iter()
        .zip(&names)
        .filter(|(c, _)| c.key)
        .collect();
    let key = if key_fields.is_empty() {
        None
    } else {
        let mut types = TypeBuilder::default();
        let mut fields = key_fields
            .iter()
            .map(|(column, name)| Ok(field(column, name, types.column(table, column)?)))
            .collect::<Result<Vec<_>, SchemaError>>()?;
        if let Some(key_table) = shape.key_table {
            fields.push(json!({"name": key_table, "type": "string"}));
        }
        let record =
            json!({"type": "record", "name": "Key", "namespace": namespace, "fields": fields});
        Some(parse(table, "key", &record)?)
    };

    let mut types = TypeBuilder::default();
    let mut value_fields = table
        .columns
        .iter()
        .zip(&names)
        .map(|(column, name)| {
            let mut f = field(column, name, json!(["null", types.column(table, column)?]));
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
    let value_record =
        json!({"type": "record", "name": "Value", "namespace": namespace, "fields": value_fields});
    let envelope = json!({
        "type": "record",
        "name": "Envelope",
        "namespace": namespace,
        "fields": [
            {"name": "before", "type": ["null", value_record], "default": null},
            {"name": "after", "type": ["null", format!("{namespace}.Value")], "default": null},
            {"name": "source", "type": source_record()},
            {"name": "op", "type": "string"},
            {"name": "ts_ms", "type": ["null", "long"], "default": null},
            {"name": "transaction", "type": ["null", transaction_block()], "default": null},
        ],
    });
    let value = parse(table, "value", &envelope)?;

    Ok(TableSchemas {
        topic: shape.topic.to_owned(),
        key,
        value,
    })
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
        json!({"name": "snapshot", "type": "string", "default": "false"}),
        json!({"name": "db", "type": "string"}),
    ]
}

/// Debezium's `source` block for PostgreSQL, minus the fields this version has no value for.
fn source_record() -> Json {
    let mut fields = common_source_fields();
    fields.extend([
        json!({"name": "sequence", "type": ["null", "string"], "default": null}),
        json!({"name": "schema", "type": "string"}),
        json!({"name": "table", "type": "string"}),
        json!({"name": "txId", "type": ["null", "long"], "default": null}),
        json!({"name": "lsn", "type": ["null", "long"], "default": null}),
        json!({"name": "xmin", "type": ["null", "long"], "default": null}),
    ]);
    json!({"type": "record", "name": SOURCE_RECORD, "fields": fields})
}

/// Column types for one schema; remembers which named types it has defined.
#[derive(Default)]
struct TypeBuilder {
    defined: HashSet<String>,
    /// Composite types defined so far: source name → Avro full name.
    composites: HashMap<String, String>,
}

/// The largest money amount, 92233720368547758.07, has 19 digits.
const MONEY_PRECISION: u32 = 19;

impl TypeBuilder {
    fn column(&mut self, table: &Table, column: &Column) -> Result<Json, SchemaError> {
        self.avro_type(table, column, &column.column_type)
    }

    /// The Avro type of `column_type`, which is `column`'s type or nested in it.
    fn avro_type(
        &mut self,
        table: &Table,
        column: &Column,
        column_type: &ColumnType,
    ) -> Result<Json, SchemaError> {
        Ok(match column_type {
            ColumnType::Boolean => json!("boolean"),
            ColumnType::Int16 => json!({"type": "int", "connect.type": "int16"}),
            ColumnType::Int32 => json!("int"),
            ColumnType::Int64 => json!("long"),
            ColumnType::Float32 => json!("float"),
            ColumnType::Float64 => json!("double"),
            ColumnType::Decimal { precision, scale } => {
                if *precision == 0 {
                    return Err(SchemaError::ZeroPrecision {
                        table: table.qualified_name(),
                        column: column.name.clone(),
                    });
                }
                json!({"type": "bytes", "logicalType": "decimal", "precision": precision.max(scale), "scale": scale})
            }
            ColumnType::VariableDecimal => self.named(VARIABLE_SCALE_DECIMAL, || {
                json!({
                    "type": "record",
                    "name": VARIABLE_SCALE_DECIMAL,
                    "fields": [{"name": "scale", "type": "int"}, {"name": "value", "type": "bytes"}],
                })
            }),
            ColumnType::String => json!("string"),
            ColumnType::Bytes => json!("bytes"),
            ColumnType::Uuid => json!({"type": "string", "logicalType": "uuid"}),
            ColumnType::Date => json!({"type": "int", "logicalType": "date"}),
            ColumnType::Timestamp => json!({"type": "long", "logicalType": "local-timestamp-micros"}),
            ColumnType::TimestampTz => json!({"type": "long", "logicalType": "timestamp-micros"}),
            ColumnType::Json => json!({"type": "string", "connect.name": "io.debezium.data.Json"}),
            ColumnType::Text { type_name } => json!({"type": "string", "sluice.source_type": type_name}),
            ColumnType::Time => json!({"type": "long", "logicalType": "time-micros"}),
            ColumnType::Money => {
                json!({"type": "bytes", "logicalType": "decimal", "precision": MONEY_PRECISION, "scale": 2})
            }
            ColumnType::Array {
                element,
                dimensions,
            } => {
                // Elements may be NULL; the sub-arrays of a multi-dimensional array never are.
                let mut avro = json!({"type": "array", "items": ["null", self.avro_type(table, column, element)?]});
                for _ in 1..*dimensions {
                    avro = json!({"type": "array", "items": avro});
                }
                avro
            }
            ColumnType::Record { name, fields } => self.composite(table, column, name, fields)?,
            ColumnType::TextMap => json!({"type": "map", "values": ["null", "string"]}),
        })
    }

    /// A composite type's record: defined at first use under a name no other type has, named afterwards.
    fn composite(
        &mut self,
        table: &Table,
        column: &Column,
        name: &str,
        fields: &[RecordField],
    ) -> Result<Json, SchemaError> {
        if let Some(full_name) = self.composites.get(name) {
            return Ok(json!(full_name));
        }
        // Two types may sanitise to one name (`order-line`, `order_line`): later ones get a suffix.
        let base = composite_record_name(name);
        let mut full_name = base.clone();
        let mut suffix = 2u32;
        while self.defined.contains(&full_name) {
            full_name = format!("{base}_{suffix}");
            suffix += 1;
        }
        self.defined.insert(full_name.clone());
        self.composites.insert(name.to_owned(), full_name.clone());
        let names = unique_field_names(fields.iter().map(|f| f.name.as_str()));
        let mut avro_fields = Vec::with_capacity(fields.len());
        for (field, avro_name) in fields.iter().zip(names) {
            let mut f = json!({
                "name": avro_name,
                "type": ["null", self.avro_type(table, column, &field.column_type)?],
                "default": null,
            });
            if field.name != avro_name {
                f["sluice.column"] = json!(field.name);
            }
            avro_fields.push(f);
        }
        Ok(
            json!({"type": "record", "name": full_name, "sluice.source_type": name, "fields": avro_fields}),
        )
    }

    /// The definition at first use, the full name afterwards.
    fn named(&mut self, full_name: &str, definition: impl FnOnce() -> Json) -> Json {
        if self.defined.insert(full_name.to_owned()) {
            definition()
        } else {
            json!(full_name)
        }
    }
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

    fn column(name: &str, column_type: ColumnType, key: bool, source_type: &str) -> Column {
        Column {
            name: name.into(),
            column_type,
            key,
            source_type: source_type.into(),
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
                                {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}]},
                            {"name": "note_text", "sluice.column": "note text", "default": null,
                                "type": ["null", {"type": "string", "sluice.source_type": "tsvector"}]},
                        ],
                    }]},
                    {"name": "after", "type": ["null", "shop.public.orders.Value"], "default": null},
                    {"name": "source", "type": {
                        "type": "record", "name": "sluice.postgres.Source",
                        "fields": [
                            {"name": "version", "type": "string"},
                            {"name": "connector", "type": "string"},
                            {"name": "name", "type": "string"},
                            {"name": "ts_ms", "type": "long"},
                            {"name": "snapshot", "type": "string", "default": "false"},
                            {"name": "db", "type": "string"},
                            {"name": "sequence", "type": ["null", "string"], "default": null},
                            {"name": "schema", "type": "string"},
                            {"name": "table", "type": "string"},
                            {"name": "txId", "type": ["null", "long"], "default": null},
                            {"name": "lsn", "type": ["null", "long"], "default": null},
                            {"name": "xmin", "type": ["null", "long"], "default": null},
                        ],
                    }},
                    {"name": "op", "type": "string"},
                    {"name": "ts_ms", "type": ["null", "long"], "default": null},
                    {"name": "transaction", "type": ["null", {"type": "record", "name": "sluice.TransactionBlock", "fields": [
                        {"name": "id", "type": "string"},
                        {"name": "total_order", "type": "long"},
                        {"name": "data_collection_order", "type": "long"},
                    ]}], "default": null},
                ],
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
        // Two key columns, three value columns: one definition each, the other uses by name.
        for (json, uses) in [
            (&schemas.key.as_ref().unwrap().json, 2),
            (&schemas.value.json, 3),
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
}
