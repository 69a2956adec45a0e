//! Contracts: a data team's promise about a topic, enforced at the source. A contract is an Avro schema in
//! `<contracts_dir>/<topic>.avsc`, the reader schema every event of that topic must be readable with (Avro
//! schema resolution) and must satisfy: required fields present and not null, enum symbols known, decimals
//! within the declared precision and scale. An event that breaks it goes to the dead-letter topic (stage
//! `validate`) and the rest flow on.
//!
//! A contract whose record has an `after` field describes the whole envelope; any other record describes
//! the row, and is checked against `after` (a delete, whose `after` is null, passes).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use apache_avro::schema::{Name, RecordSchema, Schema, UnionSchema};
use serde_json::Value as Json;

#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("cannot read the contracts directory {path}: {source}")]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("contract {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// One way a contract and a table's schema (or one event) disagree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// Dotted field path, e.g. `after.amount`.
    pub field: String,
    pub problem: String,
    /// False for what only some events can break (a nullable column the contract requires): reported,
    /// but the schemas still resolve.
    pub fatal: bool,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}`: {}", self.field, self.problem)
    }
}

pub struct Contract {
    pub topic: String,
    pub path: PathBuf,
    schema: Schema,
    names: HashMap<Name, Schema>,
    /// Whether the contract describes the envelope (true) or the row in `after`.
    envelope: bool,
    /// The schema as written, for a MongoDB collection's `after` record.
    json: Json,
}

/// The contracts of every topic that has one.
#[derive(Default)]
pub struct Contracts {
    by_topic: HashMap<String, Arc<Contract>>,
}

impl Contracts {
    /// Reads `<dir>/*.avsc`. A directory that does not exist holds no contracts.
    pub fn load(dir: &Path) -> Result<Contracts, ContractError> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Contracts::default())
            }
            Err(source) => {
                return Err(ContractError::Directory {
                    path: dir.to_owned(),
                    source,
                })
            }
        };
        let mut by_topic = HashMap::new();
        for path in entries.flatten().map(|e| e.path()) {
            let Some(topic) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".avsc"))
            else {
                continue;
            };
            let contract = Contract::load(topic, &path)?;
            by_topic.insert(topic.to_owned(), Arc::new(contract));
        }
        Ok(Contracts { by_topic })
    }

    pub fn get(&self, topic: &str) -> Option<&Arc<Contract>> {
        self.by_topic.get(topic)
    }

    pub fn is_empty(&self) -> bool {
        self.by_topic.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Contract> {
        let mut all: Vec<&Contract> = self.by_topic.values().map(|c| &**c).collect();
        all.sort_by(|a, b| a.topic.cmp(&b.topic));
        all.into_iter()
    }
}

impl Contract {
    pub fn load(topic: &str, path: &Path) -> Result<Contract, ContractError> {
        let invalid = |reason: String| ContractError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|err| invalid(err.to_string()))?;
        Contract::parse(topic, path, &text).map_err(invalid)
    }

    pub fn parse(topic: &str, path: &Path, text: &str) -> Result<Contract, String> {
        let schema = Schema::parse_str(text).map_err(|err| format!("not an Avro schema: {err}"))?;
        let Schema::Record(record) = &schema else {
            return Err("must be a record schema (the envelope, or the row)".into());
        };
        let envelope = record.fields.iter().any(|f| f.name == "after");
        let names = names_of(&schema)?;
        let json = serde_json::from_str(text).map_err(|err| format!("not JSON: {err}"))?;
        Ok(Contract {
            topic: topic.to_owned(),
            path: path.to_owned(),
            schema,
            names,
            envelope,
            json,
        })
    }

    /// The record a MongoDB collection's documents are published as, when the contract declares the
    /// document (a contract of the whole envelope cannot: the MongoDB envelope is fixed).
    pub fn document_schema(&self) -> Result<&Json, String> {
        if self.envelope {
            return Err(
                "declares an envelope (it has an `after` field); a MongoDB contract declares \
                 the document, the record `after` holds"
                    .into(),
            );
        }
        Ok(&self.json)
    }

    /// Whether events written with `writer` (a value schema of this topic) can be read with the contract.
    /// Every mismatch is listed; the fatal ones mean no event of that schema can be.
    pub fn compare(&self, writer: &Schema) -> Vec<Mismatch> {
        let Ok(writer_names) = names_of(writer) else {
            return vec![Mismatch {
                field: String::new(),
                problem: "the table's schema has unresolvable names".into(),
                fatal: true,
            }];
        };
        let pair = Pair {
            writer_names: &writer_names,
            reader_names: &self.names,
        };
        let mut found = Vec::new();
        match self.row_of(writer, &writer_names) {
            Some((writer_row, prefix)) => {
                pair.compare(writer_row, &self.schema, prefix, &mut found)
            }
            None => found.push(Mismatch {
                field: "after".into(),
                problem: "the table's schema has no `after` record".into(),
                fatal: true,
            }),
        }
        found
    }

    /// Checks one event, given as JSON (`tail::avro_json` of the envelope): the first violation, if any.
    /// `unchanged` names the row's fields whose values the source did not send (unchanged TOAST, published
    /// as null): they are not held to the contract, the consumer keeps the value it has.
    pub fn check(&self, envelope: &Json, unchanged: &[String]) -> Result<(), Mismatch> {
        self.check_shaped(envelope, unchanged, false)
    }

    /// [`check`](Self::check) of an event whose value is the row itself (`flat`: unwrapped) or an
    /// envelope.
    fn check_shaped(
        &self,
        envelope: &Json,
        unchanged: &[String],
        flat: bool,
    ) -> Result<(), Mismatch> {
        if self.envelope || flat {
            return self.check_value(envelope, &self.schema, "", unchanged);
        }
        match envelope.get("after") {
            Some(Json::Null) | None => Ok(()),
            Some(after) => self.check_value(after, &self.schema, "after", unchanged),
        }
    }

    /// The writer's row record (the non-null branch of `after`) and the path prefix, for a row contract;
    /// the whole envelope for an envelope contract.
    fn row_of<'a>(
        &self,
        writer: &'a Schema,
        names: &'a HashMap<Name, Schema>,
    ) -> Option<(&'a Schema, &'static str)> {
        if self.envelope {
            return Some((writer, ""));
        }
        let Schema::Record(record) = writer else {
            return None;
        };
        // Without an envelope (unwrapped), the value is the row.
        let Some(after) = record.fields.iter().find(|f| f.name == "after") else {
            return Some((writer, ""));
        };
        let row = match &after.schema {
            Schema::Union(union) => union.variants().iter().find(|v| **v != Schema::Null)?,
            other => other,
        };
        Some((resolve(row, names), "after"))
    }

    fn check_value(
        &self,
        value: &Json,
        schema: &Schema,
        path: &str,
        unchanged: &[String],
    ) -> Result<(), Mismatch> {
        let violation = |problem: String| Mismatch {
            field: path.to_owned(),
            problem,
            fatal: true,
        };
        let schema = resolve(schema, &self.names);
        match (schema, value) {
            (Schema::Union(union), _) => self.check_union(value, union, path, unchanged),
            (_, Json::Null) if *schema != Schema::Null => {
                Err(violation("is null; the contract requires a value".into()))
            }
            (Schema::Record(record), Json::Object(object)) => {
                self.check_record(object, record, path, unchanged)
            }
            (Schema::Enum(e), Json::String(symbol)) => {
                if e.symbols.contains(symbol) || e.default.is_some() {
                    Ok(())
                } else {
                    Err(violation(format!(
                        "`{symbol}` is not one of the contract's symbols {:?}",
                        e.symbols
                    )))
                }
            }
            (Schema::Decimal(d), Json::String(text)) => {
                check_decimal(text, d.precision, d.scale).map_err(violation)
            }
            (Schema::Int | Schema::Date | Schema::TimeMillis, Json::Number(n)) => {
                match n.as_i64().and_then(|v| i32::try_from(v).ok()) {
                    Some(_) => Ok(()),
                    None => Err(violation(format!("{n} does not fit an int"))),
                }
            }
            (Schema::Array(array), Json::Array(items)) => {
                items.iter().enumerate().try_for_each(|(i, item)| {
                    self.check_value(item, &array.items, &format!("{path}[{i}]"), unchanged)
                })
            }
            (Schema::Map(map), Json::Object(entries)) => entries
                .iter()
                .try_for_each(|(k, v)| self.check_value(v, &map.types, &join(path, k), unchanged)),
            // Types were compared once per table version (`compare`); scalars need no more.
            _ => Ok(()),
        }
    }

    /// [`Self::check_value`] against a union: null where the union allows it, otherwise the first branch
    /// that fits (the first branch's mismatch when none does).
    fn check_union(
        &self,
        value: &Json,
        union: &UnionSchema,
        path: &str,
        unchanged: &[String],
    ) -> Result<(), Mismatch> {
        let violation = |problem: &str| Mismatch {
            field: path.to_owned(),
            problem: problem.to_owned(),
            fatal: true,
        };
        if value.is_null() {
            return match union.variants().contains(&Schema::Null) {
                true => Ok(()),
                false => Err(violation("is null; the contract requires a value")),
            };
        }
        let mut first_error = None;
        for variant in union.variants().iter().filter(|v| **v != Schema::Null) {
            match self.check_value(value, variant, path, unchanged) {
                Ok(()) => return Ok(()),
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| violation("fits no branch of the union")))
    }

    /// [`Self::check_value`] against a record: each field written, or left out with a default. At the top
    /// (`after`), the `unchanged` fields (unchanged TOAST values) are not checked.
    fn check_record(
        &self,
        object: &serde_json::Map<String, Json>,
        record: &RecordSchema,
        path: &str,
        unchanged: &[String],
    ) -> Result<(), Mismatch> {
        for field in &record.fields {
            let field_path = join(path, &field.name);
            if path == "after" && unchanged.contains(&field.name) {
                continue;
            }
            let written = field_value(object, field);
            match written {
                Some(value) => self.check_value(value, &field.schema, &field_path, unchanged)?,
                None if field.default.is_some() => {}
                None => {
                    return Err(Mismatch {
                        field: field_path,
                        problem: "is missing; the contract requires it".into(),
                        fatal: true,
                    })
                }
            }
        }
        Ok(())
    }
}

/// A contract bound to one writer schema (one table version): what `publish` checks each event with.
pub struct BoundContract {
    contract: Arc<Contract>,
    writer: Schema,
    writer_names: HashMap<Name, Schema>,
    /// Why no event of this writer schema can satisfy the contract, if so.
    incompatible: Option<String>,
    /// The writer's value is the row itself (unwrapped), not an envelope.
    flat: bool,
}

impl BoundContract {
    pub fn new(contract: Arc<Contract>, writer: &Schema) -> BoundContract {
        let fatal: Vec<String> = contract
            .compare(writer)
            .into_iter()
            .filter(|m| m.fatal)
            .map(|m| m.to_string())
            .collect();
        let incompatible = (!fatal.is_empty()).then(|| {
            format!(
                "contract {} cannot read this version of the table: {}",
                contract.path.display(),
                fatal.join("; ")
            )
        });
        let flat = match writer {
            Schema::Record(record) => !record.fields.iter().any(|f| f.name == "after"),
            _ => false,
        };
        BoundContract {
            flat,
            writer_names: names_of(writer).unwrap_or_default(),
            writer: writer.clone(),
            contract,
            incompatible,
        }
    }

    /// Why no event of this table version can satisfy the contract, if so.
    pub fn incompatible(&self) -> Option<&str> {
        self.incompatible.as_deref()
    }

    /// Checks one event's value (the Avro datum, without the framing header); the violation in words.
    pub fn check(&self, datum: &[u8], unchanged: &[String]) -> Result<(), String> {
        if let Some(reason) = &self.incompatible {
            return Err(reason.clone());
        }
        let value = apache_avro::from_avro_datum(&self.writer, &mut &datum[..], None)
            .map_err(|err| format!("the event does not decode with its own schema: {err}"))?;
        let json = crate::tail::avro_json(&value, &self.writer, &self.writer_names);
        self.contract
            .check_shaped(&json, unchanged, self.flat)
            .map_err(|mismatch| {
                format!(
                    "breaks contract {}: {mismatch}",
                    self.contract.path.display()
                )
            })
    }
}

/// Digits and scale of a decimal's text against a declared precision and scale.
/// The value `object` holds for a record field: under the field's name, or else under one of its aliases
/// (as Avro schema resolution matches fields).
pub(crate) fn field_value<'a>(
    object: &'a serde_json::Map<String, Json>,
    field: &apache_avro::schema::RecordField,
) -> Option<&'a Json> {
    object.get(&field.name).or_else(|| {
        field
            .aliases
            .iter()
            .flatten()
            .find_map(|alias| object.get(alias))
    })
}

fn check_decimal(text: &str, precision: usize, scale: usize) -> Result<(), String> {
    let digits = text.trim_start_matches('-');
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if !whole
        .chars()
        .chain(fraction.chars())
        .all(|c| c.is_ascii_digit())
    {
        return Err(format!("`{text}` is not a decimal number"));
    }
    if fraction.trim_end_matches('0').len() > scale {
        return Err(format!(
            "{text} has more than the contract's {scale} fraction digits"
        ));
    }
    let whole_digits = whole.trim_start_matches('0').len();
    if whole_digits + scale > precision {
        return Err(format!(
            "{text} exceeds the contract's precision {precision} (scale {scale})"
        ));
    }
    Ok(())
}

fn mismatch(path: &str, problem: String, fatal: bool) -> Mismatch {
    Mismatch {
        field: path.to_owned(),
        problem,
        fatal,
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

fn names_of(schema: &Schema) -> Result<HashMap<Name, Schema>, String> {
    crate::tail::named_types(schema).map_err(|err| err.to_string())
}

fn resolve<'a>(schema: &'a Schema, names: &'a HashMap<Name, Schema>) -> &'a Schema {
    match schema {
        Schema::Ref { name } => names.get(name).unwrap_or(schema),
        other => other,
    }
}

/// A writer schema and the contract, compared by Avro's resolution rules.
struct Pair<'a> {
    writer_names: &'a HashMap<Name, Schema>,
    reader_names: &'a HashMap<Name, Schema>,
}

impl Pair<'_> {
    fn compare(&self, writer: &Schema, reader: &Schema, path: &str, found: &mut Vec<Mismatch>) {
        let writer = resolve(writer, self.writer_names);
        let reader = resolve(reader, self.reader_names);
        match (writer, reader) {
            (Schema::Union(w), Schema::Union(r)) => {
                for branch in w.variants() {
                    if *branch == Schema::Null && !r.variants().contains(&Schema::Null) {
                        found.push(mismatch(path, "nullable in the table, required by the contract: rows with NULL go to the dead-letter topic".into(), false));
                        continue;
                    }
                    self.compare_to_union(branch, r.variants(), path, found);
                }
            }
            (Schema::Union(w), _) => {
                for branch in w.variants() {
                    if *branch == Schema::Null {
                        found.push(mismatch(path, "nullable in the table, required by the contract: rows with NULL go to the dead-letter topic".into(), false));
                    } else {
                        self.compare(branch, reader, path, found);
                    }
                }
            }
            (_, Schema::Union(r)) => self.compare_to_union(writer, r.variants(), path, found),
            (Schema::Record(w), Schema::Record(r)) => self.compare_records(w, r, path, found),
            (Schema::Array(w), Schema::Array(r)) => {
                self.compare(&w.items, &r.items, &format!("{path}[]"), found)
            }
            (Schema::Map(w), Schema::Map(r)) => {
                self.compare(&w.types, &r.types, &format!("{path}{{}}"), found)
            }
            (Schema::Enum(w), Schema::Enum(r)) => {
                let unknown: Vec<&String> = w
                    .symbols
                    .iter()
                    .filter(|s| !r.symbols.contains(s))
                    .collect();
                if !unknown.is_empty() && r.default.is_none() {
                    found.push(mismatch(path, format!("the table's symbols {unknown:?} are not in the contract: events with them go to the dead-letter topic"), false));
                }
            }
            (Schema::Decimal(w), Schema::Decimal(r)) => {
                if w.scale != r.scale {
                    found.push(mismatch(
                        path,
                        format!(
                            "decimal scale {} in the table, {} in the contract",
                            w.scale, r.scale
                        ),
                        true,
                    ));
                } else if w.precision > r.precision {
                    found.push(mismatch(path, format!("decimal precision {} in the table, {} in the contract: larger values go to the dead-letter topic", w.precision, r.precision), false));
                }
            }
            (w, r) if promotes(w, r) => {}
            (w, r) => found.push(mismatch(
                path,
                format!(
                    "{} in the table cannot be read as {}",
                    type_name(w),
                    type_name(r)
                ),
                true,
            )),
        }
    }

    fn compare_to_union(
        &self,
        writer: &Schema,
        branches: &[Schema],
        path: &str,
        found: &mut Vec<Mismatch>,
    ) {
        // The first branch that reads the writer without a fatal mismatch is the one resolution picks.
        let mut best: Option<Vec<Mismatch>> = None;
        for branch in branches {
            let mut attempt = Vec::new();
            self.compare(writer, branch, path, &mut attempt);
            if attempt.iter().all(|m| !m.fatal) {
                found.extend(attempt);
                return;
            }
            best.get_or_insert(attempt);
        }
        found.extend(best.unwrap_or_else(|| {
            vec![Mismatch {
                field: path.to_owned(),
                problem: "the contract's union is empty".into(),
                fatal: true,
            }]
        }));
    }

    fn compare_records(
        &self,
        writer: &RecordSchema,
        reader: &RecordSchema,
        path: &str,
        found: &mut Vec<Mismatch>,
    ) {
        // Avro resolution matches records by their unqualified names.
        if writer.name.name != reader.name.name {
            found.push(Mismatch {
                field: path.to_owned(),
                problem: format!(
                    "the record is named `{}` in the table, `{}` in the contract (Avro matches records by name)",
                    writer.name.name, reader.name.name
                ),
                fatal: true,
            });
            return;
        }
        for field in &reader.fields {
            let field_path = join(path, &field.name);
            let written = writer.fields.iter().find(|w| {
                w.name == field.name || field.aliases.as_ref().is_some_and(|a| a.contains(&w.name))
            });
            match written {
                Some(written) => self.compare(&written.schema, &field.schema, &field_path, found),
                None if field.default.is_some() => {}
                None => found.push(Mismatch {
                    field: field_path,
                    problem: "is not in the table and has no default in the contract".into(),
                    fatal: true,
                }),
            }
        }
    }
}

/// Avro's promotions between the types underneath any logical type (resolution ignores logical types;
/// decimals are compared separately, by scale).
fn promotes(writer: &Schema, reader: &Schema) -> bool {
    use Schema::*;
    let (writer, reader) = (underlying(writer), underlying(reader));
    writer == reader
        || matches!(
            (writer, reader),
            (Int, Long | Float | Double)
                | (Long, Float | Double)
                | (Float, Double)
                | (String, Bytes)
                | (Bytes, String)
        )
        || matches!((writer, reader), (Fixed(w), Fixed(r)) if w.size == r.size)
}

/// The type a logical type is written as.
fn underlying(schema: &Schema) -> &Schema {
    use Schema::*;
    match schema {
        Date | TimeMillis => &Int,
        TimeMicros | TimestampMillis | TimestampMicros | TimestampNanos | LocalTimestampMillis
        | LocalTimestampMicros | LocalTimestampNanos => &Long,
        Uuid => &String,
        BigDecimal => &Bytes,
        Decimal(d) => &d.inner,
        other => other,
    }
}

fn type_name(schema: &Schema) -> String {
    match schema {
        Schema::Record(r) => format!("record {}", r.name.fullname(None)),
        Schema::Enum(e) => format!("enum {}", e.name.fullname(None)),
        Schema::Fixed(f) => format!("fixed {}", f.name.fullname(None)),
        Schema::Decimal(d) => format!("decimal({}, {})", d.precision, d.scale),
        other => serde_json::to_value(other)
            .map(|v| match v {
                Json::String(s) => s,
                Json::Object(o) => o
                    .get("logicalType")
                    .or_else(|| o.get("type"))
                    .and_then(Json::as_str)
                    .unwrap_or("?")
                    .to_owned(),
                _ => "?".to_owned(),
            })
            .unwrap_or_else(|_| "?".to_owned()),
    }
}

#[cfg(test)]
#[path = "contracts_tests.rs"]
mod tests;
