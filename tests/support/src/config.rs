//! sluice config files pointing at the local services: the tests, the demo and the benchmark write theirs
//! from here, each changing only what it needs.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The settings that differ between users of the local services; [`ConfigFile::render`] gives the TOML.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    pub url: String,
    pub slot: String,
    pub publication: String,
    /// `schema.table` patterns.
    pub tables: Vec<String>,
    /// More `[source]` lines, e.g. `snapshot = "never"`.
    pub source_extra: String,
    /// `kafka`, or `blackhole` (which gets no `brokers` line).
    pub sink_kind: String,
    pub brokers: String,
    /// Also the dead-letter topic's prefix: `<topic_prefix>.dlq`.
    pub topic_prefix: String,
    pub topic_partitions: i32,
    /// More `[sink]` lines, e.g. `shutdown_timeout_secs = 10`.
    pub sink_extra: String,
    /// `[sink.kafka]` properties.
    pub kafka: Vec<(String, String)>,
    /// None: registry-free (single-object encoding, schemas on `<topic_prefix>.schemas`).
    pub registry_url: Option<String>,
    /// More `[avro]` lines, e.g. `subject_name_strategy = "record_name"`.
    pub avro_extra: String,
    pub positions_dir: PathBuf,
    /// `[api] address`, e.g. `127.0.0.1:0`; None leaves the endpoint off.
    pub api_address: Option<String>,
    /// `[[transforms]]` tables, written last.
    pub transforms: String,
}

impl ConfigFile {
    /// Slot and publication `sluice`, topic prefix `shop`, one partition per topic, lz4 (tansu cannot
    /// fetch snappy), status updates every second so that tests see acknowledgements quickly, and contracts
    /// only from `<positions_dir>/contracts` (so that the repository's own never apply by accident).
    pub fn local(
        url: String,
        brokers: String,
        registry_url: Option<String>,
        positions_dir: PathBuf,
    ) -> Self {
        ConfigFile {
            url,
            slot: "sluice".into(),
            publication: "sluice".into(),
            tables: vec!["public.*".into()],
            source_extra: String::new(),
            sink_kind: "kafka".into(),
            brokers,
            topic_prefix: "shop".into(),
            topic_partitions: 1,
            sink_extra: String::new(),
            kafka: vec![("compression.type".into(), "lz4".into())],
            registry_url,
            avro_extra: String::new(),
            positions_dir,
            api_address: None,
            transforms: String::new(),
        }
    }

    /// Where this config's contracts are read from.
    pub fn contracts_dir(&self) -> PathBuf {
        self.positions_dir.join("contracts")
    }

    pub fn render(&self) -> String {
        let tables: Vec<String> = self.tables.iter().map(|t| format!("\"{t}\"")).collect();
        let kafka: String = self
            .kafka
            .iter()
            .map(|(k, v)| format!("\"{k}\" = \"{v}\"\n"))
            .collect();
        format!(
            r#"[source]
kind = "postgres"
url = "{url}"
slot = "{slot}"
publication = "{publication}"
tables = [{tables}]
status_interval_secs = 1
{source_extra}

[sink]
kind = "{sink_kind}"
{brokers}topic_prefix = "{prefix}"
dead_letter_topic = "{prefix}.dlq"
topic_partitions = {partitions}
topic_replication_factor = 1
{sink_extra}
[sink.kafka]
{kafka}
[avro]
{registry}contracts_dir = "{contracts}"
{avro_extra}

[positions]
dir = "{positions}"
{api}
{transforms}"#,
            url = self.url,
            slot = self.slot,
            publication = self.publication,
            tables = tables.join(", "),
            source_extra = self.source_extra,
            sink_kind = self.sink_kind,
            brokers = if self.sink_kind == "blackhole" {
                String::new()
            } else {
                format!("brokers = \"{}\"\n", self.brokers)
            },
            prefix = self.topic_prefix,
            partitions = self.topic_partitions,
            sink_extra = self.sink_extra,
            registry = self
                .registry_url
                .as_ref()
                .map(|url| format!("registry_url = \"{url}\"\n"))
                .unwrap_or_default(),
            contracts = self.contracts_dir().display(),
            avro_extra = self.avro_extra,
            positions = self.positions_dir.display(),
            api = self
                .api_address
                .as_ref()
                .map(|address| format!("\n[api]\naddress = \"{address}\"\n"))
                .unwrap_or_default(),
            transforms = self.transforms,
        )
    }

    /// Sets a `[sink.kafka]` property, replacing an earlier value of the same key.
    pub fn set_kafka(&mut self, key: &str, value: &str) {
        self.kafka.retain(|(k, _)| k != key);
        self.kafka.push((key.to_owned(), value.to_owned()));
    }

    /// Writes the file and returns its path.
    pub fn write(&self, path: &Path) -> Result<PathBuf> {
        std::fs::write(path, self.render())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path.to_owned())
    }
}

/// A config for a MongoDB source at `url`: `selection` holds the `collections` (and any other `[source]`)
/// lines; the sink is the broker at `brokers`, schemas go to the registry at `registry_url`, one
/// partition per topic.
pub fn mongodb(
    url: &str,
    selection: &str,
    brokers: &str,
    registry_url: &str,
    prefix: &str,
    positions_dir: &Path,
) -> String {
    format!(
        r#"[source]
kind = "mongodb"
url = "{url}"
{selection}

[sink]
kind = "kafka"
brokers = "{brokers}"
topic_prefix = "{prefix}"
dead_letter_topic = "{prefix}.dlq"
topic_partitions = 1
topic_replication_factor = 1
shutdown_timeout_secs = 10

[avro]
registry_url = "{registry_url}"

[positions]
dir = "{positions}"
"#,
        positions = positions_dir.display(),
    )
}
