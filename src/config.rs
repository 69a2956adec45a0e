//! The one TOML file that configures a sluice instance.
//!
//! Parsing is strict: an unknown key, a wrong type or a missing section is an error that names the key and
//! its line. `${VAR}` inside any string value is replaced by the environment variable (secrets stay out of
//! the file); `$$` is a literal `$`. After parsing, [`Config::load`] checks the values themselves (URL
//! shapes, names PostgreSQL and Kafka accept, producer settings that would break delivery guarantees) and
//! reports every problem found, each with its line.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::transforms::TransformConfig;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
pub use sluice_core::config::{
    expand_env, redact_line, redact_secrets, EnvString, ProblemSink, SnapshotMode, Spanned,
};
pub use sluice_mongodb::config::{
    BeforeImage, Capture, CollectionPattern, CollectionSelection, FullDocument, MongodbSourceConfig,
};
pub use sluice_postgres::config::{
    ColumnPattern, DecimalHandling, PostgresConfig, Selection, TablePattern, UnencodableValues,
};

use crate::avro::LogicalTypes;

/// The whole configuration file.
#[derive(Debug)]
pub struct Config {
    pub source: Source,
    pub sink: SinkConfig,
    pub avro: AvroConfig,
    pub positions: PositionsConfig,
    /// The HTTP endpoint; none without this section.
    pub api: Option<ApiConfig>,
    /// `[[transforms]]`, in order.
    pub transforms: Vec<TransformConfig>,
}

/// `[source]`: its keys depend on its `kind`.
#[derive(Debug)]
pub enum Source {
    Postgres(PostgresConfig),
    Mongodb(MongodbSourceConfig),
}

/// The file as written, for the source kind `S`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile<S> {
    source: S,
    sink: SinkConfig,
    #[serde(default)]
    avro: AvroConfig,
    positions: PositionsConfig,
    api: Option<ApiConfig>,
    #[serde(default)]
    transforms: Vec<TransformConfig>,
}

impl<S> ConfigFile<S> {
    fn into_config(self, source: impl FnOnce(S) -> Source) -> Config {
        Config {
            source: source(self.source),
            sink: self.sink,
            avro: self.avro,
            positions: self.positions,
            api: self.api,
            transforms: self.transforms,
        }
    }
}

/// Just `source.kind`, read first to know which keys the rest of `[source]` may have.
#[derive(Deserialize)]
struct KindProbe<K> {
    source: KindOnly<K>,
}

#[derive(Deserialize)]
struct KindOnly<K> {
    kind: K,
}

/// `[api]`: the HTTP endpoint for metrics and health probes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// `host:port` to listen on; keep it on 127.0.0.1 unless the scraper is elsewhere. Port 0 picks a
    /// free one (logged).
    pub address: Spanned<EnvString>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Postgres,
    Mongodb,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    Kafka,
    /// Sends nothing and acknowledges every message at once: for measuring sluice on its own.
    Blackhole,
}

/// `[sink]`: where events go.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    pub kind: Spanned<SinkKind>,
    /// Comma-separated `host:port` bootstrap list; required by `kind = "kafka"`.
    pub brokers: Option<Spanned<EnvString>>,
    /// Topic per table: `<topic_prefix>.<schema>.<table>`; also the logical server name in `source.name`.
    pub topic_prefix: Spanned<EnvString>,
    pub dead_letter_topic: Spanned<EnvString>,
    /// Create missing topics through the admin API (brokers often run with auto-creation off).
    #[serde(default = "default_true")]
    pub create_topics: bool,
    /// Partitions of topics sluice creates; -1 leaves it to the broker's default.
    #[serde(default = "default_broker_setting")]
    pub topic_partitions: Spanned<i32>,
    /// Replication factor of topics sluice creates; -1 leaves it to the broker's default.
    #[serde(default = "default_broker_setting")]
    pub topic_replication_factor: Spanned<i32>,
    /// How long a stop (SIGTERM/SIGINT) may take: up to half of it finishing the open transaction, the
    /// rest waiting for the broker to acknowledge what is in flight.
    #[serde(default = "default_shutdown_timeout_secs")]
    pub shutdown_timeout_secs: Spanned<u64>,
    /// librdkafka producer properties, passed through.
    #[serde(default)]
    pub kafka: BTreeMap<String, Spanned<PropertyValue>>,
}

impl SinkConfig {
    /// The bootstrap list; empty for the blackhole, which needs none.
    pub fn brokers(&self) -> &str {
        self.brokers.as_ref().map_or("", |b| b.get_ref().as_str())
    }
}

/// `[avro]`: how events are encoded and where their schemas go.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AvroConfig {
    /// Confluent-compatible schema registry. Without it, messages use Avro's single-object encoding and
    /// every schema is published to `schemas_topic`.
    pub registry_url: Option<Spanned<EnvString>>,
    /// How registry subjects are named (Confluent's subject name strategies).
    #[serde(default)]
    pub subject_name_strategy: SubjectNameStrategy,
    /// HTTP basic authentication to the registry (both or neither).
    pub registry_username: Option<Spanned<EnvString>>,
    pub registry_password: Option<Spanned<EnvString>>,
    /// Bearer token for the registry (instead of basic authentication).
    pub registry_bearer_token: Option<Spanned<EnvString>>,
    /// PEM file of the certificate authorities that sign the registry's TLS certificate (the system's
    /// roots are trusted as well).
    pub registry_ca_file: Option<Spanned<EnvString>>,
    /// PEM files of a client certificate and its key, for registries that require mutual TLS.
    pub registry_client_cert_file: Option<Spanned<EnvString>>,
    pub registry_client_key_file: Option<Spanned<EnvString>>,
    /// Without a registry: the topic that holds every schema, keyed by fingerprint. Defaults to
    /// `<topic_prefix>.schemas`.
    pub schemas_topic: Option<Spanned<EnvString>>,
    /// Directory of contracts: `<topic>.avsc` files, each the reader schema every event of its topic must
    /// satisfy. Relative paths are taken from the working directory; a missing directory means no contracts.
    pub contracts_dir: Option<Spanned<EnvString>>,
    /// How values are represented: `"avro"` (Avro's own logical types, exact) or `"debezium"` (exactly as
    /// Debezium's PostgreSQL connector represents them with its default settings).
    pub logical_types: Option<Spanned<LogicalTypes>>,
}

impl AvroConfig {
    pub fn logical_types(&self) -> LogicalTypes {
        self.logical_types
            .as_ref()
            .map_or_else(LogicalTypes::default, |l| *l.get_ref())
    }
}

/// `avro.subject_name_strategy`: the registry subject a schema is registered under.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectNameStrategy {
    /// `<topic>-key` and `<topic>-value` (Confluent's TopicNameStrategy).
    #[default]
    TopicName,
    /// The record's full name (RecordNameStrategy): one subject per record type, whatever the topic.
    RecordName,
    /// `<topic>-<record full name>` (TopicRecordNameStrategy).
    TopicRecordName,
}

/// Where contracts are looked for when `avro.contracts_dir` is not set.
pub const DEFAULT_CONTRACTS_DIR: &str = "schemas/contracts";

/// `[positions]`: where the resume position is kept.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PositionsConfig {
    pub dir: Spanned<EnvString>,
}

fn default_true() -> bool {
    true
}

// Defaults carry an empty span: they are valid, so no problem ever points at them.
fn default_broker_setting() -> Spanned<i32> {
    Spanned::new(0..0, -1)
}

/// Below Kubernetes' default terminationGracePeriodSeconds (30).
fn default_shutdown_timeout_secs() -> Spanned<u64> {
    Spanned::new(0..0, 25)
}

/// Below this a stop under load would rarely finish its transaction and its acknowledgements in time.
const MIN_SHUTDOWN_TIMEOUT_SECS: u64 = 2;

/// A librdkafka property: TOML strings, integers, floats and booleans all become the string librdkafka wants.
#[derive(Clone, PartialEq)]
pub struct PropertyValue(pub String);

impl fmt::Debug for PropertyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PropertyValue(..)")
    }
}

impl<'de> Deserialize<'de> for PropertyValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PropertyVisitor;
        impl Visitor<'_> for PropertyVisitor {
            type Value = PropertyValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PropertyValue, E> {
                expand_env(v, |name| std::env::var(name).ok())
                    .map(PropertyValue)
                    .map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PropertyValue, E> {
                Ok(PropertyValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PropertyValue, E> {
                Ok(PropertyValue(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<PropertyValue, E> {
                Ok(PropertyValue(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<PropertyValue, E> {
                Ok(PropertyValue(v.to_string()))
            }
        }
        deserializer.deserialize_any(PropertyVisitor)
    }
}

/// One problem with a configuration value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the key, e.g. `source.url`.
    pub key: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: `{}`: {}",
            self.line, self.column, self.key, self.message
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: {}", problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n  "))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

impl Config {
    /// Reads, parses and checks a config file. No network access.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|err| match err {
            ParseError::Syntax(message) => ConfigError::Syntax {
                path: path.to_owned(),
                message,
            },
            ParseError::Invalid(problems) => ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            },
        })
    }

    /// Parses and checks config text.
    pub fn parse(text: &str) -> Result<Config, ParseError> {
        let syntax = |err: toml::de::Error| ParseError::Syntax(describe_toml_error(text, &err));
        let kind = match toml::from_str::<KindProbe<SourceKind>>(text) {
            Ok(probe) => probe.source.kind,
            // A kind that is there but unknown: that is the error to report.
            Err(err) if toml::from_str::<KindProbe<String>>(text).is_ok() => {
                return Err(syntax(err))
            }
            // A `[source]` without a kind: which keys it may hold depends on the kind, so say that first.
            Err(_) if has_kindless_source(text) => {
                let at = text.find("[source]").unwrap_or(0);
                let (line, column) = line_column(text, at);
                return Err(ParseError::Invalid(vec![Problem {
                    key: "source.kind".into(),
                    line,
                    column,
                    message: "is missing: say `kind = \"postgres\"` or `kind = \"mongodb\"`".into(),
                }]));
            }
            // No `[source]` at all: the PostgreSQL form is parsed, and its error names what is missing.
            Err(_) => SourceKind::Postgres,
        };
        let config = match kind {
            SourceKind::Postgres => toml::from_str::<ConfigFile<PostgresConfig>>(text)
                .map_err(syntax)?
                .into_config(Source::Postgres),
            SourceKind::Mongodb => toml::from_str::<ConfigFile<MongodbSourceConfig>>(text)
                .map_err(syntax)?
                .into_config(Source::Mongodb),
        };
        let problems = config.problems(text);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ParseError::Invalid(problems))
        }
    }

    /// Every value-level problem, in file order.
    fn problems(&self, text: &str) -> Vec<Problem> {
        let mut found = Vec::new();
        let mut report = |key: &str, span: Range<usize>, message: String| {
            let (line, column) = line_column(text, span.start);
            found.push(Problem {
                key: key.to_owned(),
                line,
                column,
                message,
            });
        };

        match &self.source {
            Source::Postgres(source) => source.problems(&mut report),
            Source::Mongodb(source) => source.problems(&mut report),
        }
        self.sink_problems(&mut report);
        self.avro_problems(&mut report);
        if let Some(api) = &self.api {
            if api
                .address
                .get_ref()
                .as_str()
                .parse::<std::net::SocketAddr>()
                .is_err()
            {
                report(
                    "api.address",
                    api.address.span(),
                    format!(
                        "`{}` is not an address: write ip:port, e.g. 127.0.0.1:9464",
                        api.address.get_ref().as_str()
                    ),
                );
            }
        }
        let topic_prefix = self.sink.topic_prefix.get_ref().as_str();
        for (index, transform) in self.transforms.iter().enumerate() {
            transform.problems(index, topic_prefix, &mut report);
        }
        if self.positions.dir.get_ref().as_str().trim().is_empty() {
            report(
                "positions.dir",
                self.positions.dir.span(),
                "is empty: name a directory".into(),
            );
        }
        found.sort_by_key(|p| (p.line, p.column));
        found
    }

    /// The PostgreSQL source settings; None for another kind of source.
    pub fn postgres(&self) -> Option<&PostgresConfig> {
        match &self.source {
            Source::Postgres(source) => Some(source),
            Source::Mongodb(_) => None,
        }
    }

    fn sink_problems(&self, report: &mut ProblemSink<'_>) {
        let sink = &self.sink;
        let shutdown = *sink.shutdown_timeout_secs.get_ref();
        if shutdown < MIN_SHUTDOWN_TIMEOUT_SECS {
            report(
                "sink.shutdown_timeout_secs",
                sink.shutdown_timeout_secs.span(),
                format!("is {shutdown}; must be at least {MIN_SHUTDOWN_TIMEOUT_SECS} seconds"),
            );
        }
        match (&sink.brokers, sink.kind.get_ref()) {
            (Some(brokers), _) => {
                if let Err(message) = check_brokers(brokers.get_ref().as_str()) {
                    report("sink.brokers", brokers.span(), message);
                }
            }
            (None, SinkKind::Kafka) => report(
                "sink.brokers",
                sink.kind.span(),
                "is required with kind = \"kafka\" (for example `brokers = \"127.0.0.1:9092\"`)"
                    .into(),
            ),
            (None, SinkKind::Blackhole) => {}
        }
        if let Err(message) = check_topic_name(sink.topic_prefix.get_ref().as_str()) {
            report("sink.topic_prefix", sink.topic_prefix.span(), message);
        }
        if let Err(message) = check_topic_name(sink.dead_letter_topic.get_ref().as_str()) {
            report(
                "sink.dead_letter_topic",
                sink.dead_letter_topic.span(),
                message,
            );
        }
        for (name, value) in &sink.kafka {
            if let Err(message) = check_producer_property(name, &value.get_ref().0) {
                report(&format!("sink.kafka.\"{name}\""), value.span(), message);
            }
        }
        if let Some((key, setting, message)) = sasl_problem(&sink.kafka) {
            report(&format!("sink.kafka.\"{key}\""), setting.span(), message);
        }
        for (key, setting) in [
            ("sink.topic_partitions", &sink.topic_partitions),
            (
                "sink.topic_replication_factor",
                &sink.topic_replication_factor,
            ),
        ] {
            let value = *setting.get_ref();
            if value == 0 || value < -1 {
                let message = format!("is {value}; must be -1 (broker default) or at least 1");
                report(key, setting.span(), message);
            }
        }
    }
}

impl Config {
    /// Debezium's representation is its PostgreSQL connector's.
    fn logical_types_problem(&self, report: &mut ProblemSink<'_>) {
        if let (Some(logical), Source::Mongodb(_)) = (&self.avro.logical_types, &self.source) {
            if *logical.get_ref() == LogicalTypes::Debezium {
                report(
                    "avro.logical_types",
                    logical.span(),
                    "\"debezium\" is Debezium's PostgreSQL representation: MongoDB documents are published as they are; remove the key".into(),
                );
            }
        }
    }

    fn avro_problems(&self, report: &mut ProblemSink<'_>) {
        let avro = &self.avro;
        self.logical_types_problem(report);
        let registry_only = [
            ("avro.registry_username", &avro.registry_username),
            ("avro.registry_password", &avro.registry_password),
            ("avro.registry_bearer_token", &avro.registry_bearer_token),
            ("avro.registry_ca_file", &avro.registry_ca_file),
            (
                "avro.registry_client_cert_file",
                &avro.registry_client_cert_file,
            ),
            (
                "avro.registry_client_key_file",
                &avro.registry_client_key_file,
            ),
        ];
        let Some(url) = &avro.registry_url else {
            for (key, value) in registry_only {
                if let Some(value) = value {
                    report(
                        key,
                        value.span(),
                        "has no effect without `avro.registry_url`".into(),
                    );
                }
            }
            if let Some(topic) = &avro.schemas_topic {
                if let Err(message) = check_topic_name(topic.get_ref().as_str()) {
                    report("avro.schemas_topic", topic.span(), message);
                }
            }
            return;
        };
        if let Err(message) = check_http_url(url.get_ref().as_str()) {
            report("avro.registry_url", url.span(), message);
        }
        if let Some(topic) = &avro.schemas_topic {
            report(
                "avro.schemas_topic",
                topic.span(),
                "is only used without `avro.registry_url` (the registry holds the schemas)".into(),
            );
        }
        let pairs = [
            (
                "avro.registry_username",
                &avro.registry_username,
                "avro.registry_password",
                &avro.registry_password,
            ),
            (
                "avro.registry_client_cert_file",
                &avro.registry_client_cert_file,
                "avro.registry_client_key_file",
                &avro.registry_client_key_file,
            ),
        ];
        for (key, value, other_key, other) in pairs {
            match (value, other) {
                (Some(value), None) => {
                    report(key, value.span(), format!("needs `{other_key}` too"))
                }
                (None, Some(other)) => {
                    report(other_key, other.span(), format!("needs `{key}` too"))
                }
                _ => {}
            }
        }
        if let (Some(_), Some(token)) = (&avro.registry_username, &avro.registry_bearer_token) {
            report(
                "avro.registry_bearer_token",
                token.span(),
                "choose one: basic authentication (`registry_username`) or a bearer token".into(),
            );
        }
    }

    /// `sink.shutdown_timeout_secs`: the bound on a stop.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(*self.sink.shutdown_timeout_secs.get_ref())
    }

    /// The topic that holds every schema when there is no registry.
    pub fn schemas_topic(&self) -> String {
        match &self.avro.schemas_topic {
            Some(topic) => topic.get_ref().as_str().to_owned(),
            None => format!("{}.schemas", self.sink.topic_prefix.get_ref().as_str()),
        }
    }

    /// Where contracts are read from.
    pub fn contracts_dir(&self) -> PathBuf {
        match &self.avro.contracts_dir {
            Some(dir) => PathBuf::from(dir.get_ref().as_str()),
            None => PathBuf::from(DEFAULT_CONTRACTS_DIR),
        }
    }

    /// Producer properties from `[sink.kafka]`.
    pub fn kafka_properties(&self) -> impl Iterator<Item = (&str, &str)> {
        self.sink
            .kafka
            .iter()
            .map(|(k, v)| (k.as_str(), v.get_ref().0.as_str()))
    }
}

#[derive(Debug)]
pub enum ParseError {
    /// The file is not TOML of the expected shape; the message names the key, line and column.
    Syntax(String),
    Invalid(Vec<Problem>),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Syntax(message) => f.write_str(message),
            ParseError::Invalid(problems) => {
                let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
                f.write_str(&lines.join("\n"))
            }
        }
    }
}

/// toml's own message, led by `line L, column C` so that every config error reads the same way.
fn describe_toml_error(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim_end();
    match err.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            let snippet = text
                .lines()
                .nth(line.saturating_sub(1))
                .unwrap_or("")
                .trim();
            let shown = if snippet.is_empty() {
                String::new()
            } else {
                format!(" (at `{}`)", redact_line(snippet))
            };
            format!("line {line}, column {column}: {message}{shown}")
        }
        None => message.to_owned(),
    }
}

/// 1-based line and column of a byte offset.
/// Whether the text has a `[source]` table with no `kind` in it.
fn has_kindless_source(text: &str) -> bool {
    let Ok(file) = text.parse::<toml::Table>() else {
        return false;
    };
    matches!(file.get("source"), Some(toml::Value::Table(source)) if !source.contains_key("kind"))
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn check_brokers(list: &str) -> Result<(), String> {
    let brokers: Vec<&str> = list.split(',').map(str::trim).collect();
    for broker in &brokers {
        // Scheme-qualified entries (SASL_SSL://host:port) are allowed by librdkafka; check the host:port part.
        let address = broker.rsplit("://").next().unwrap_or(broker);
        let valid = address
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !valid {
            return Err(format!(
                "`{broker}` is not `host:port` (for example `127.0.0.1:9092`)"
            ));
        }
    }
    Ok(())
}

/// Kafka's rule for topic names (topic_prefix must satisfy it too, being the start of one).
fn check_topic_name(name: &str) -> Result<(), String> {
    let valid_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if name.is_empty() || name.len() > 249 || !valid_chars || name == "." || name == ".." {
        return Err(format!(
            "`{name}` is not a valid Kafka topic name: use 1 to 249 ASCII letters, digits, `.`, `_` and `-`"
        ));
    }
    Ok(())
}

/// Producer settings that would break "nothing lost, nothing reordered" are refused instead of silently obeyed.
fn check_producer_property(name: &str, value: &str) -> Result<(), String> {
    let lowered = value.trim().to_ascii_lowercase();
    match name {
        "bootstrap.servers" | "metadata.broker.list" => Err("set `sink.brokers` instead".into()),
        "acks" | "request.required.acks" if !matches!(lowered.as_str(), "all" | "-1") => {
            Err(format!("`{value}` could lose events: sluice requires acks=all"))
        }
        "enable.idempotence" if lowered != "true" => {
            Err("sluice requires the idempotent producer (no duplicates or reordering on retries)".into())
        }
        "partitioner" if lowered != "murmur2_random" && lowered != "murmur2" => {
            Err("sluice uses Java's murmur2 partitioning so that a key lands where other Kafka clients put it".into())
        }
        // A message that times out is dropped by the producer; sluice waits for the broker instead.
        "message.timeout.ms" | "delivery.timeout.ms" if lowered != "0" => Err(
            "a delivery timeout would drop events while the broker is away; sluice waits for it instead (0)".into(),
        ),
        "transactional.id" => Err("sluice does not use Kafka transactions; remove it".into()),
        _ => Ok(()),
    }
}

/// The SASL mechanisms this build's librdkafka has (no GSSAPI: it would need Kerberos' libraries).
const SASL_MECHANISMS: [&str; 4] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"];

/// A SASL login librdkafka would refuse only when connecting: no mechanism (its default, GSSAPI, is not
/// built in), one it lacks, or a login by password without its user or password. (key, value, message).
fn sasl_problem(
    kafka: &BTreeMap<String, Spanned<PropertyValue>>,
) -> Option<(&str, &Spanned<PropertyValue>, String)> {
    let value = |key: &str| kafka.get(key).map(|v| v.get_ref().0.trim());
    let protocol = kafka.get("security.protocol")?;
    if !protocol
        .get_ref()
        .0
        .to_ascii_uppercase()
        .starts_with("SASL_")
    {
        return None;
    }
    let known = SASL_MECHANISMS.join(", ");
    let Some((key, setting)) = ["sasl.mechanisms", "sasl.mechanism"]
        .into_iter()
        .find_map(|key| kafka.get(key).map(|setting| (key, setting)))
    else {
        let message = format!("a SASL protocol needs `sasl.mechanisms`: one of {known}");
        return Some(("security.protocol", protocol, message));
    };
    let mechanism = setting.get_ref().0.trim();
    if !SASL_MECHANISMS.contains(&mechanism) {
        let message =
            format!("`{mechanism}` is not a SASL mechanism sluice has: use one of {known}");
        return Some((key, setting, message));
    }
    let missing: Vec<&str> = ["sasl.username", "sasl.password"]
        .into_iter()
        .filter(|key| value(key).is_none_or(str::is_empty))
        .collect();
    (mechanism != "OAUTHBEARER" && !missing.is_empty()).then(|| {
        let message = format!(
            "SASL {mechanism} needs {} in [sink.kafka]",
            missing.join(" and ")
        );
        ("security.protocol", protocol, message)
    })
}

fn check_http_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|err| format!("`{}` is not a URL: {err}", redact_secrets(url)))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!(
            "`{}` is not an http:// or https:// URL",
            redact_secrets(url)
        ));
    }
    Ok(())
}

#[cfg(test)]
#[path = "config/tests.rs"]
mod tests;

#[cfg(test)]
#[path = "config/mongodb_tests.rs"]
mod mongodb_tests;
