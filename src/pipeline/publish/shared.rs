//! Topics a route sends several tables to: each table's value schema must be readable by the others',
//! both ways, or a consumer of the shared topic could not read one table's records with the other's schema.

use std::collections::HashMap;

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::Schema;
use sluice_core::event::Table;

use crate::avro::TableSchemas;

/// The value schema each table last published on each shared topic.
#[derive(Default)]
pub(super) struct SharedTopics {
    /// topic → (table's `schema.table`, its value schema).
    topics: HashMap<String, Vec<(String, Schema)>>,
}

impl SharedTopics {
    /// Whether `table`'s schemas can share their topic with the other tables already on it: the reason not.
    pub fn check(&self, schemas: &TableSchemas, table: &Table) -> Result<(), String> {
        let name = table.qualified_name();
        let Some(others) = self.topics.get(&schemas.topic) else {
            return Ok(());
        };
        for (other, schema) in others.iter().filter(|(other, _)| *other != name) {
            if let Err(err) = SchemaCompatibility::mutual_read(schema, &schemas.value.schema) {
                return Err(format!(
                    "{name} cannot share topic `{}` with {other}: their value schemas are not \
                     compatible ({err}); route them to different topics, or align their columns",
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
        let schema = schemas.value.schema.clone();
        match tables.iter_mut().find(|(other, _)| *other == name) {
            Some(entry) => entry.1 = schema,
            None => tables.push((name, schema)),
        }
    }
}
