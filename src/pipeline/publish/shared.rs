//! Topics a route sends several tables to: each table's key and value schemas must be readable by the
//! others', both ways, or a consumer of the shared topic could not read one table's records with the other's schema.

use std::collections::HashMap;

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::Schema;
use sluice_core::event::Table;

use crate::avro::TableSchemas;

/// The key and value schemas each table last published on each shared topic.
#[derive(Default)]
pub(super) struct SharedTopics {
    /// topic → (table's `schema.table`, its key schema, its value schema).
    topics: HashMap<String, Vec<(String, Option<Schema>, Schema)>>,
}

impl SharedTopics {
    /// Whether `table`'s schemas can share their topic with the other tables already on it: the reason not.
    pub fn check(&self, schemas: &TableSchemas, table: &Table) -> Result<(), String> {
        let name = table.qualified_name();
        let Some(others) = self.topics.get(&schemas.topic) else {
            return Ok(());
        };
        let key = schemas.key.as_ref().map(|k| &k.schema);
        for (other, other_key, value) in others.iter().filter(|(other, ..)| *other != name) {
            let keys = match (other_key, key) {
                (Some(a), Some(b)) => {
                    SchemaCompatibility::mutual_read(a, b).map_err(|e| e.to_string())
                }
                (None, None) => Ok(()),
                _ => Err("one has a key and the other none".to_owned()),
            };
            let clash = keys
                .map_err(|err| format!("key schemas: {err}"))
                .and_then(|()| {
                    SchemaCompatibility::mutual_read(value, &schemas.value.schema)
                        .map_err(|err| format!("value schemas: {err}"))
                });
            if let Err(err) = clash {
                return Err(format!(
                    "{name} cannot share topic `{}` with {other}: their {err}; route them to \
                     different topics, or align their columns",
                    schemas.topic
                ));
            }
        }
        Ok(())
    }

    /// `table` now publishes on its topic with these schemas.
    pub fn accepted(&mut self, schemas: &TableSchemas, table: &Table) {
        let name = table.qualified_name();
        let tables = self.topics.entry(schemas.topic.clone()).or_default();
        let key = schemas.key.as_ref().map(|k| k.schema.clone());
        let value = schemas.value.schema.clone();
        match tables.iter_mut().find(|(other, ..)| *other == name) {
            Some(entry) => (entry.1, entry.2) = (key, value),
            None => tables.push((name, key, value)),
        }
    }
}
