//! `[source]` with `kind = "postgres"`: the settings of the PostgreSQL connector, and their checks.

use std::fmt;

use serde::de::IgnoredAny;
use serde::Deserialize;
use sluice_core::config::{
    check_snapshot_bounds, no_patterns, off, redact_secrets, wildcard_match, EnvString,
    ProblemSink, SnapshotMode, Spanned,
};

/// `[source]` with `kind = "postgres"`: where changes come from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Read by the application to choose the connector.
    pub kind: IgnoredAny,
    /// libpq-style URL; `${PGPASSWORD}` keeps the password out of the file.
    pub url: Spanned<EnvString>,
    /// Logical replication slot, created if missing.
    pub slot: Spanned<EnvString>,
    /// Publication, created if missing and extended with tables it lacks.
    pub publication: Spanned<EnvString>,
    /// `schema.table` names; `*` matches any run of characters (`public.*`).
    pub tables: Spanned<Vec<Spanned<EnvString>>>,
    /// Tables `tables` matches that are not captured after all (same pattern syntax).
    #[serde(default = "no_patterns")]
    pub exclude_tables: Spanned<Vec<Spanned<EnvString>>>,
    /// `schema.table.column` patterns: columns left out of every event (key columns cannot be).
    #[serde(default = "no_patterns")]
    pub exclude_columns: Spanned<Vec<Spanned<EnvString>>>,
    /// Seconds between standby status updates sent to the server.
    #[serde(default = "default_status_interval_secs")]
    pub status_interval_secs: Spanned<u64>,
    /// Whether the rows already in the tables are published (as `op = "r"`) before streaming.
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// Drop the slot (and forget the position) after a clean stop, so the server keeps no WAL for a
    /// stopped sluice; the next run starts afresh. For development and tests (Debezium's
    /// slot.drop.on.stop).
    #[serde(default)]
    pub drop_slot_on_stop: bool,
    /// Create the slot TEMPORARY: it lives as long as the replication connection that created it, so the
    /// server keeps no WAL for a sluice that stopped, crashed or lost its connection (once the server
    /// notices). Nothing is resumed:
    /// every start is a first start (a new slot and, unless `snapshot = "never"`, a new snapshot), and a
    /// lost connection stops sluice.
    #[serde(default = "off")]
    pub temporary_slot: Spanned<bool>,
    /// Connections a snapshot reads tables over at the same time, all in the same snapshot.
    #[serde(default = "default_snapshot_connections")]
    pub snapshot_connections: Spanned<u8>,
    /// A table estimated larger than this with a one-column integer primary key is read in key ranges of
    /// about this many rows: the connections share them, and each finished one is recorded for carrying
    /// an interrupted snapshot on.
    #[serde(default = "default_snapshot_chunk_rows")]
    pub snapshot_chunk_rows: Spanned<u64>,
    /// Publish logical decoding messages (`pg_logical_emit_message`, the outbox pattern) to
    /// `<topic_prefix>.message`.
    #[serde(default)]
    pub capture_messages: bool,
    /// Seconds between heartbeats: a `pg_logical_emit_message` written in the captured database, so that
    /// the slot advances even when that database writes nothing else (Debezium's heartbeat.interval.ms
    /// with an action query). 0 turns them off.
    #[serde(default)]
    pub heartbeat_interval_secs: u64,
    /// Publish a BEGIN and an END record per transaction to `<topic_prefix>.transaction` (Debezium's
    /// provide.transaction.metadata). Every streamed event carries its transaction block either way.
    #[serde(default)]
    pub transaction_metadata: bool,
    /// How `numeric` columns are published (Debezium's decimal.handling.mode).
    #[serde(default)]
    pub decimal_handling: DecimalHandling,
    /// What becomes of a row with a value that has no encoding in its column's Avro type.
    #[serde(default)]
    pub unencodable_values: UnencodableValues,
    /// Read the TOASTed values an update left unchanged (and PostgreSQL did not send) from the table by
    /// the row's key, when the row read is provably this change's version (Debezium's reselect
    /// post-processor, without its race).
    #[serde(default)]
    pub reselect_unchanged_toast: bool,
    /// `schema.table` of the signal table (`id text PRIMARY KEY, type text NOT NULL, data text`): rows
    /// inserted there are instructions (`execute-snapshot`, …), never published. Unset: no signals.
    #[serde(default)]
    pub signal_table: Option<Spanned<EnvString>>,
    /// Rows per chunk of an incremental snapshot (Debezium's incremental.snapshot.chunk.size).
    #[serde(default = "default_incremental_chunk_rows")]
    pub incremental_chunk_rows: Spanned<u64>,
    /// A table that joins the selection later (a config change, a table added to the publication while
    /// sluice runs) is snapshotted incrementally by itself. Needs `signal_table` (the watermarks travel
    /// with the stream the same way).
    #[serde(default = "default_snapshot_new_tables")]
    pub snapshot_new_tables: bool,
}

impl PostgresConfig {
    /// Which tables and columns are captured.
    pub fn selection(&self) -> Selection {
        // Checked in `problems`: every entry parses.
        fn parse_all<T>(
            patterns: &Spanned<Vec<Spanned<EnvString>>>,
            parse: fn(&str) -> Result<T, String>,
        ) -> Vec<T> {
            patterns
                .get_ref()
                .iter()
                .filter_map(|p| parse(p.get_ref().as_str()).ok())
                .collect()
        }
        Selection {
            tables: parse_all(&self.tables, TablePattern::parse),
            exclude_tables: parse_all(&self.exclude_tables, TablePattern::parse),
            exclude_columns: parse_all(&self.exclude_columns, ColumnPattern::parse),
        }
    }
}

fn default_snapshot_connections() -> Spanned<u8> {
    Spanned::new(0..0, 1)
}

fn default_snapshot_chunk_rows() -> Spanned<u64> {
    Spanned::new(0..0, 250_000)
}

fn default_snapshot_new_tables() -> bool {
    true
}

fn default_incremental_chunk_rows() -> Spanned<u64> {
    Spanned::new(0..0, 1024)
}

/// A chunk's rows wait in memory for the stream to reach its high watermark.
const MAX_INCREMENTAL_CHUNK_ROWS: u64 = 100_000;

fn default_status_interval_secs() -> Spanned<u64> {
    Spanned::new(0..0, 10)
}

/// The server drops a replication client that stays silent for `wal_sender_timeout` (60 s by default); status
/// updates must come well within it.
const MAX_STATUS_INTERVAL_SECS: u64 = 30;

impl PostgresConfig {
    /// Every value-level problem of `[source]`.
    pub fn problems(&self, report: &mut ProblemSink<'_>) {
        let source = self;
        {
            if let Err(message) = check_postgres_url(source.url.get_ref().as_str()) {
                report("source.url", source.url.span(), message);
            }
            if let Err(message) = check_slot_name(source.slot.get_ref().as_str()) {
                report("source.slot", source.slot.span(), message);
            }
            if let Err(message) =
                check_identifier(source.publication.get_ref().as_str(), "publication")
            {
                report("source.publication", source.publication.span(), message);
            }
            if source.tables.get_ref().is_empty() {
                report(
                    "source.tables",
                    source.tables.span(),
                    "lists no tables: name at least one `schema.table`".into(),
                );
            }
            for (key, patterns) in [
                ("source.tables", &source.tables),
                ("source.exclude_tables", &source.exclude_tables),
            ] {
                for table in patterns.get_ref() {
                    if let Err(message) = TablePattern::parse(table.get_ref().as_str()) {
                        report(key, table.span(), message);
                    }
                }
            }
            for column in source.exclude_columns.get_ref() {
                if let Err(message) = ColumnPattern::parse(column.get_ref().as_str()) {
                    report("source.exclude_columns", column.span(), message);
                }
            }
            if *source.temporary_slot.get_ref() && source.drop_slot_on_stop {
                report(
                "source.temporary_slot",
                source.temporary_slot.span(),
                "and drop_slot_on_stop are both set: a temporary slot is dropped with its connection \
                 already, drop_slot_on_stop is for a permanent slot. Keep one"
                    .into(),
            );
            }
            let interval = *source.status_interval_secs.get_ref();
            if interval == 0 || interval > MAX_STATUS_INTERVAL_SECS {
                let message = format!(
                "must be between 1 and {MAX_STATUS_INTERVAL_SECS} seconds: PostgreSQL drops a replication \
                 client that stays silent for wal_sender_timeout (60 s by default)"
            );
                report(
                    "source.status_interval_secs",
                    source.status_interval_secs.span(),
                    message,
                );
            }

            check_incremental(source, report);
            check_snapshot_bounds(
                &source.snapshot_connections,
                &source.snapshot_chunk_rows,
                "source.snapshot_chunk_rows",
                report,
            );
        }
    }
}

/// The signal table names one table; a chunk's rows fit in memory.
fn check_incremental(source: &PostgresConfig, report: &mut ProblemSink<'_>) {
    if let Some(signal_table) = &source.signal_table {
        let text = signal_table.get_ref().as_str();
        match TablePattern::parse(text) {
            Ok(pattern) if pattern.is_exact() => {}
            Ok(_) => report(
                "source.signal_table",
                signal_table.span(),
                format!(
                    "`{text}` has a wildcard: name one table, for example `public.sluice_signals`"
                ),
            ),
            Err(message) => report("source.signal_table", signal_table.span(), message),
        }
    }
    let chunk_rows = *source.incremental_chunk_rows.get_ref();
    if chunk_rows == 0 || chunk_rows > MAX_INCREMENTAL_CHUNK_ROWS {
        report(
            "source.incremental_chunk_rows",
            source.incremental_chunk_rows.span(),
            format!("must be between 1 and {MAX_INCREMENTAL_CHUNK_ROWS}: each chunk's rows wait in memory for the stream"),
        );
    }
}

/// A `schema.table` selector; either part may contain `*` wildcards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePattern {
    pub schema: String,
    pub table: String,
}

impl TablePattern {
    pub fn parse(text: &str) -> Result<TablePattern, String> {
        let (schema, table) = text.split_once('.').ok_or_else(|| {
            format!("`{text}` is not `schema.table` (for example `public.orders` or `public.*`)")
        })?;
        if schema.is_empty() || table.is_empty() || table.contains('.') {
            return Err(format!(
                "`{text}` is not `schema.table` (for example `public.orders` or `public.*`)"
            ));
        }
        Ok(TablePattern {
            schema: schema.to_owned(),
            table: table.to_owned(),
        })
    }

    pub fn matches(&self, schema: &str, table: &str) -> bool {
        wildcard_match(&self.schema, schema) && wildcard_match(&self.table, table)
    }

    pub fn is_exact(&self) -> bool {
        !self.schema.contains('*') && !self.table.contains('*')
    }
}

impl fmt::Display for TablePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// A `schema.table.column` selector; each part may contain `*` wildcards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnPattern {
    pub table: TablePattern,
    pub column: String,
}

impl ColumnPattern {
    pub fn parse(text: &str) -> Result<ColumnPattern, String> {
        let shape = || {
            format!("`{text}` is not `schema.table.column` (for example `public.customers.email` or `*.*.password`)")
        };
        let (table, column) = text.rsplit_once('.').ok_or_else(shape)?;
        if column.is_empty() {
            return Err(shape());
        }
        Ok(ColumnPattern {
            table: TablePattern::parse(table).map_err(|_| shape())?,
            column: column.to_owned(),
        })
    }

    pub fn matches(&self, schema: &str, table: &str, column: &str) -> bool {
        self.table.matches(schema, table) && wildcard_match(&self.column, column)
    }
}

impl fmt::Display for ColumnPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.table, self.column)
    }
}

/// What `[source]` selects: tables by include and exclude patterns, and columns to leave out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub tables: Vec<TablePattern>,
    pub exclude_tables: Vec<TablePattern>,
    pub exclude_columns: Vec<ColumnPattern>,
}

impl Selection {
    /// Whether the table is captured.
    pub fn includes(&self, schema: &str, table: &str) -> bool {
        self.tables.iter().any(|p| p.matches(schema, table))
            && !self.exclude_tables.iter().any(|p| p.matches(schema, table))
    }

    /// Whether the column is left out of events.
    pub fn excludes_column(&self, schema: &str, table: &str, column: &str) -> bool {
        self.exclude_columns
            .iter()
            .any(|p| p.matches(schema, table, column))
    }
}

fn check_postgres_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(format!(
            "`{}` is not a PostgreSQL URL: it must start with postgres://",
            redact_secrets(url)
        ));
    }
    let config = crate::connection::PgConnection::parse(url)
        .map_err(|err| format!("invalid PostgreSQL URL `{}`: {err}", redact_secrets(url)))?
        .config;
    if config.get_hosts().is_empty() {
        return Err("names no host: write postgres://user@host:port/database".into());
    }
    if config.get_user().is_none() {
        return Err("names no user: write postgres://user@host:port/database".into());
    }
    if config.get_dbname().is_none() {
        return Err("names no database: write postgres://user@host:port/database".into());
    }
    Ok(())
}

/// PostgreSQL's rule for replication slot names.
fn check_slot_name(name: &str) -> Result<(), String> {
    let valid_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if name.is_empty() || name.len() > 63 || !valid_chars {
        return Err(format!(
            "`{name}` is not a valid replication slot name: use 1 to 63 lower-case letters, digits and underscores"
        ));
    }
    Ok(())
}

fn check_identifier(name: &str, what: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 || name.contains('\0') {
        return Err(format!(
            "`{name}` is not a valid {what} name: use 1 to 63 characters"
        ));
    }
    Ok(())
}

/// `source.unencodable_values`: a row with a value that has no encoding in its column's Avro type (a numeric
/// NaN under `decimal_handling = "precise"`, a timestamp past Avro's range, an array deeper than its
/// column): published with that value null, or only to the dead-letter topic. A key column cannot be null:
/// its row always goes to the dead-letter topic whole.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnencodableValues {
    /// The row published with those values null (header `sluice.unencodable` names their columns), and the
    /// complete original change to the dead-letter topic (stage `encode`): nothing is lost anywhere.
    #[default]
    NullAndDeadLetter,
    /// The whole row only to the dead-letter topic.
    DeadLetter,
    /// The row published with those values null, without the dead-letter copy.
    Null,
}

impl UnencodableValues {
    /// Whether such a row is published, with the values null.
    pub fn publishes(self) -> bool {
        self != UnencodableValues::DeadLetter
    }
}

/// `source.decimal_handling`: the Avro form of `numeric` columns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecimalHandling {
    /// Exact Avro decimals. `NaN` and `±Infinity` have no decimal form: `unencodable_values` says what
    /// becomes of their rows.
    #[default]
    Precise,
    /// The decimal text (`"12.50"`, `"NaN"`, `"Infinity"`): exact, and every value fits.
    String,
    /// Avro `double`: NaN and ±Infinity fit, digits beyond double precision are rounded; a value beyond
    /// the double range goes to the dead-letter topic.
    Double,
}
