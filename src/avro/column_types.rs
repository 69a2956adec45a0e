//! Each column type's Avro type. Besides Avro's own logical types (which plain Avro readers — Flink,
//! Spark, fastavro — go by), every type whose value already means what one of Kafka Connect's or
//! Debezium's semantic types means carries that type's `connect.name`, `connect.version` and
//! `connect.parameters`: the properties Confluent's `AvroConverter` reads a Connect schema from, as it
//! writes them for Debezium's own schemas. Sinks map columns by those (a JDBC sink makes a `timestamp` of
//! `io.debezium.time.MicroTimestamp`, a `bigint` of a plain long).
//!
//! | column type | Avro | Connect name |
//! |---|---|---|
//! | `Boolean`, `Int32`, `Int64`, `Float32`, `Float64`, `String`, `Bytes` | `boolean`, `int`, `long`, `float`, `double`, `string`, `bytes` | — |
//! | `Int16` | `int`, `"connect.type":"int16"` | INT16 |
//! | `Decimal{p,s}` | `bytes`, logical `decimal` (p, s) | `org.apache.kafka.connect.data.Decimal` {`scale`, `connect.decimal.precision`} |
//! | `Money` | as `Decimal{19,2}` | as `Decimal` |
//! | `VariableDecimal` | record `io.debezium.data.VariableScaleDecimal` {`scale`: int, `value`: bytes} | the record's name |
//! | `Uuid` | `string`, logical `uuid` | `io.debezium.data.Uuid` |
//! | `Date` | `int`, logical `date` | `org.apache.kafka.connect.data.Date` (the Connect type the converter makes of Avro's `date`) |
//! | `Timestamp`, `TimestampTz` | `long`, logical `local-timestamp-micros` / `timestamp-micros` | `io.debezium.time.MicroTimestamp` |
//! | `Time` | `long`, logical `time-micros` | `io.debezium.time.MicroTime` |
//! | `Json` | `string` | `io.debezium.data.Json` |
//! | `Enum` | `string`, `"sluice.source_type"`: the type's name | `io.debezium.data.Enum` {`allowed`: the labels in their order, comma-separated} |
//! | `Text` | `string`, `"sluice.source_type"`: the type's name | `interval`: `io.debezium.time.Interval` (ISO 8601, as Debezium's `interval.handling.mode = string`); `xml`, `ltree`, `tsvector`: `io.debezium.data.Xml`, `Ltree`, `Tsvector`; others none |
//! | `Array{T, n}` | `n` nested `array`s, the innermost with items `["null", T]` | — |
//! | `Record{name, …}` | record `sluice.postgres.types.<name>`, every field `["null", T]` | — |
//! | `TextMap` | `map` of `["null", "string"]` | — (a Connect MAP, as Debezium's `hstore.handling.mode = map`) |
//!
//! `timestamptz` is the UTC instant in microseconds: `MicroTimestamp` holds exactly that (Debezium's own
//! default is a `ZonedTimestamp` string). Only `Text` and `Enum` columns carry their source type: for
//! every other type the Avro type already says what the value is. PostgreSQL allows a scale above the precision
//! (`numeric(2,5)`); Avro does not, so such a column is declared with precision = scale, which holds every
//! value the column can.
//!
//! Named types (records) are defined at their first use in a schema and referenced by full name after that.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value as Json};

use super::debezium::LogicalTypes;
use super::naming::{composite_record_name, unique_field_names};
use sluice_core::event::{Column, ColumnType, DebeziumType, RecordField, Table};

/// Full name of Debezium's record for numerics without a declared scale.
pub const VARIABLE_SCALE_DECIMAL: &str = "io.debezium.data.VariableScaleDecimal";

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

/// The largest money amount, 92233720368547758.07, has 19 digits.
const MONEY_PRECISION: u32 = 19;

/// Kafka Connect's decimal.
const CONNECT_DECIMAL: &str = "org.apache.kafka.connect.data.Decimal";

/// `avro` with the properties Confluent's converter reads a Connect schema from: the semantic type's
/// `name`, version 1 (every type here is at its first) and its `parameters`.
pub(super) fn connect(mut avro: Json, name: &str, parameters: Option<Json>) -> Json {
    avro["connect.version"] = json!(1);
    if let Some(parameters) = parameters {
        avro["connect.parameters"] = parameters;
    }
    avro["connect.name"] = json!(name);
    avro
}

/// Column types for one schema; remembers which named types it has defined.
#[derive(Default)]
pub(super) struct TypeBuilder {
    defined: HashSet<String>,
    /// Composite types defined so far: source name → Avro full name.
    composites: HashMap<String, String>,
    /// Debezium's schemas exactly: no Avro logical types but Connect's decimal, no sluice properties.
    debezium: bool,
}

impl TypeBuilder {
    pub(super) fn new(logical_types: LogicalTypes) -> TypeBuilder {
        TypeBuilder {
            debezium: logical_types == LogicalTypes::Debezium,
            ..TypeBuilder::default()
        }
    }

    pub(super) fn column(&mut self, table: &Table, column: &Column) -> Result<Json, SchemaError> {
        self.avro_type(table, column, &column.column_type)
    }

    /// The Avro type of `column_type`, which is `column`'s type or nested in it.
    fn avro_type(
        &mut self,
        table: &Table,
        column: &Column,
        column_type: &ColumnType,
    ) -> Result<Json, SchemaError> {
        if self.debezium {
            if let Some(avro) = debezium_avro_type(column_type) {
                return Ok(avro);
            }
        }
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
                decimal((*precision).max(*scale), *scale)
            }
            ColumnType::VariableDecimal => {
                self.named(VARIABLE_SCALE_DECIMAL, variable_scale_decimal)
            }
            ColumnType::String => json!("string"),
            ColumnType::Bytes => json!("bytes"),
            ColumnType::Uuid => connect(
                json!({"type": "string", "logicalType": "uuid"}),
                "io.debezium.data.Uuid",
                None,
            ),
            ColumnType::Date => connect(
                json!({"type": "int", "logicalType": "date"}),
                "org.apache.kafka.connect.data.Date",
                None,
            ),
            ColumnType::Timestamp => connect(
                json!({"type": "long", "logicalType": "local-timestamp-micros"}),
                "io.debezium.time.MicroTimestamp",
                None,
            ),
            ColumnType::TimestampTz => connect(
                json!({"type": "long", "logicalType": "timestamp-micros"}),
                "io.debezium.time.MicroTimestamp",
                None,
            ),
            ColumnType::Time => connect(
                json!({"type": "long", "logicalType": "time-micros"}),
                "io.debezium.time.MicroTime",
                None,
            ),
            ColumnType::Json => connect(json!({"type": "string"}), "io.debezium.data.Json", None),
            ColumnType::Enum { type_name, labels } => connect(
                json!({"type": "string", "sluice.source_type": type_name}),
                "io.debezium.data.Enum",
                Some(json!({"allowed": labels.join(",")})),
            ),
            ColumnType::Text { type_name } => {
                let text = json!({"type": "string", "sluice.source_type": type_name});
                match text_connect_name(type_name) {
                    Some(name) => connect(text, name, None),
                    None => text,
                }
            }
            ColumnType::Money => decimal(MONEY_PRECISION, 2),
            ColumnType::Array {
                element,
                dimensions,
            } => nested_arrays(self.avro_type(table, column, element)?, *dimensions),
            ColumnType::Record { name, fields } => self.composite(table, column, name, fields)?,
            ColumnType::TextMap => json!({"type": "map", "values": ["null", "string"]}),
            ColumnType::Debezium(DebeziumType::StrippedDecimal) => {
                self.named(VARIABLE_SCALE_DECIMAL, variable_scale_decimal)
            }
            ColumnType::Debezium(debezium) => debezium_representation(*debezium),
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

/// Debezium's record for numerics without a declared scale, as the converter writes it.
fn variable_scale_decimal() -> Json {
    json!({
        "type": "record",
        "name": VARIABLE_SCALE_DECIMAL,
        "fields": [{"name": "scale", "type": "int"}, {"name": "value", "type": "bytes"}],
        "connect.doc": "Variable scaled decimal",
        "connect.version": 1,
        "connect.name": VARIABLE_SCALE_DECIMAL,
    })
}

/// `dimensions` nested arrays of `element`: elements may be NULL, the sub-arrays of a multi-dimensional
/// array never are.
fn nested_arrays(element: Json, dimensions: u32) -> Json {
    let mut avro = json!({"type": "array", "items": ["null", element]});
    for _ in 1..dimensions {
        avro = json!({"type": "array", "items": avro});
    }
    avro
}

/// The types whose schema Debezium's mode writes differently from the default one: without Avro's
/// logical types (the converter adds them only for Connect's own Date, Time, Timestamp and Decimal), and
/// without sluice's properties. None: as in the default mode.
fn debezium_avro_type(column_type: &ColumnType) -> Option<Json> {
    let string = || json!({"type": "string"});
    Some(match column_type {
        ColumnType::Date => connect(json!({"type": "int"}), "io.debezium.time.Date", None),
        ColumnType::Timestamp => connect(
            json!({"type": "long"}),
            "io.debezium.time.MicroTimestamp",
            None,
        ),
        ColumnType::Time => connect(json!({"type": "long"}), "io.debezium.time.MicroTime", None),
        ColumnType::Uuid => connect(string(), "io.debezium.data.Uuid", None),
        // Money's scale only: the converter declares such a decimal with precision 64.
        ColumnType::Money => connect(
            json!({"type": "bytes", "logicalType": "decimal", "precision": 64, "scale": 2}),
            CONNECT_DECIMAL,
            Some(json!({"scale": "2"})),
        ),
        ColumnType::Enum { labels, .. } => connect(
            string(),
            "io.debezium.data.Enum",
            Some(json!({"allowed": labels.join(",")})),
        ),
        ColumnType::Text { type_name } => match text_connect_name(type_name) {
            Some(name) => connect(string(), name, None),
            None => string(),
        },
        _ => return None,
    })
}

/// The schema of a value in one of Debezium's own representations.
fn debezium_representation(debezium: DebeziumType) -> Json {
    match debezium {
        DebeziumType::MilliTimestamp => {
            connect(json!({"type": "long"}), "io.debezium.time.Timestamp", None)
        }
        DebeziumType::MicroTimestamp => connect(
            json!({"type": "long"}),
            "io.debezium.time.MicroTimestamp",
            None,
        ),
        DebeziumType::StrippedDecimal => variable_scale_decimal(),
        DebeziumType::MilliTime => connect(json!({"type": "int"}), "io.debezium.time.Time", None),
        DebeziumType::ZonedTimestamp { .. } => connect(
            json!({"type": "string"}),
            "io.debezium.time.ZonedTimestamp",
            None,
        ),
        DebeziumType::ZonedTime => connect(
            json!({"type": "string"}),
            "io.debezium.time.ZonedTime",
            None,
        ),
        DebeziumType::MicroDuration => connect(
            json!({"type": "long"}),
            "io.debezium.time.MicroDuration",
            None,
        ),
        DebeziumType::HstoreJson => {
            connect(json!({"type": "string"}), "io.debezium.data.Json", None)
        }
    }
}

/// A decimal as Avro declares it, and as Kafka Connect's `Decimal` (whose parameters are strings).
fn decimal(precision: u32, scale: u32) -> Json {
    connect(
        json!({"type": "bytes", "logicalType": "decimal", "precision": precision, "scale": scale}),
        CONNECT_DECIMAL,
        Some(
            json!({"scale": scale.to_string(), "connect.decimal.precision": precision.to_string()}),
        ),
    )
}

/// The Debezium type whose string a text type's value already is.
fn text_connect_name(type_name: &str) -> Option<&'static str> {
    // Extension types are named with their schema (`public.ltree`).
    let bare = type_name.rsplit('.').next().unwrap_or(type_name);
    match bare {
        "interval" => Some("io.debezium.time.Interval"),
        "xml" => Some("io.debezium.data.Xml"),
        "ltree" => Some("io.debezium.data.Ltree"),
        "tsvector" => Some("io.debezium.data.Tsvector"),
        _ => None,
    }
}
