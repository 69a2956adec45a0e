//! The encoder of row changes (PostgreSQL): each table version's topic, schemas and contract; the
//! envelope and key of every change; logical decoding messages; and the transaction topic's BEGIN and END
//! records.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use sluice_core::event::{ChangeEvent, DecodingMessage, Lsn, Op, SnapshotMarker, Table};

use super::last_marker::{LastMarker, Record};
use super::row_headers::{note_headers, unchanged_toast_columns, unchanged_toast_fields};
use super::shared::SharedTopics;
use sluice_core::positions::now_us;

use super::super::error::PipelineError;
use super::core::{Core, Delivery, Encoded, FixedTopic, Rejection, Subject};
use crate::avro::{
    self, EncodeError, EncodeReason, EnvelopeContext, LogicalTypes, SchemaRef, Unencodable,
};
use crate::config::UnencodableValues;
use crate::contracts::BoundContract;
use crate::deadletter::Stage;
use crate::sink::{MessageKind, Outgoing};
use crate::transforms::Dress;

/// A table's topic and schemas, valid for one schema version.
struct TableEncoding {
    table: Arc<Table>,
    /// `schema.table`, for the metrics.
    name: Arc<str>,
    topic: String,
    key_schema: Option<SchemaRef>,
    value_schema: SchemaRef,
    /// The topic's contract, bound to this version's value schema.
    contract: Option<Arc<BoundContract>>,
    /// How the transforms shaped it (the default: not at all).
    dress: Dress,
}

/// The open transaction's change events so far, per table in first-seen order.
struct TransactionCounts {
    id: String,
    txid: u64,
    commit_lsn: Lsn,
    ts_ms: i64,
    per_table: Vec<(String, u64)>,
}

/// The text of the last LSN it was asked for, formatted again only when the LSN changes: a snapshot's
/// rows share one LSN and a transaction's events one commit LSN, and formatting took a seventh of the
/// publisher's time when done for every event.
#[derive(Default)]
struct LsnText {
    lsn: Option<Lsn>,
    text: String,
}

impl LsnText {
    fn of(&mut self, lsn: Lsn) -> &str {
        if self.lsn != Some(lsn) {
            self.text.clear();
            let _ = write!(self.text, "{lsn}");
            self.lsn = Some(lsn);
        }
        &self.text
    }
}

/// How rows are published, from `[source]`.
#[derive(Clone, Copy, Debug, Default)]
pub struct RowSettings {
    /// BEGIN and END records on `<topic_prefix>.transaction`.
    pub transaction_metadata: bool,
    pub unencodable_values: UnencodableValues,
    /// `[avro] logical_types`: each value as Avro's logical types have it, or as Debezium represents it.
    pub logical_types: LogicalTypes,
}

pub(super) struct RowEncoder {
    encodings: HashMap<u32, TableEncoding>,
    /// The value schemas of topics routes send several tables to.
    shared: SharedTopics,
    /// `<topic_prefix>.message`, where logical decoding messages go.
    messages: FixedTopic,
    /// Whether a row with a value that has no encoding is published with it null.
    unencodable_values: UnencodableValues,
    /// Debezium's representations: each table version's model rewritten once ([`avro::debezium`]).
    debezium: Option<DebeziumTables>,
    /// Where `source.snapshot` is in the value just encoded (None: unwrapped, it has none).
    marker_at: Option<usize>,
    /// The snapshot's `last` marker, on the broker even when the last row is not.
    pub last_marker: LastMarker,
    /// `<topic_prefix>.transaction`, with `source.transaction_metadata`.
    transactions: Option<FixedTopic>,
    /// The transaction whose events are being published, for its END record.
    open_transaction: Option<TransactionCounts>,
    key_buf: Vec<u8>,
    value_buf: Vec<u8>,
    /// The `sluice.lsn` and `sluice.commit_lsn` header texts.
    lsn_text: LsnText,
    commit_lsn_text: LsnText,
}

impl RowEncoder {
    pub fn new(topic_prefix: &str, settings: RowSettings) -> RowEncoder {
        RowEncoder {
            encodings: HashMap::new(),
            shared: SharedTopics::default(),
            messages: FixedTopic::new(format!("{topic_prefix}.message"), avro::message_schemas),
            unencodable_values: settings.unencodable_values,
            debezium: (settings.logical_types == LogicalTypes::Debezium)
                .then(DebeziumTables::default),
            marker_at: None,
            last_marker: LastMarker::default(),
            transactions: settings.transaction_metadata.then(|| {
                FixedTopic::new(
                    format!("{topic_prefix}.transaction"),
                    avro::transaction_schemas,
                )
            }),
            open_transaction: None,
            key_buf: Vec::with_capacity(256),
            value_buf: Vec::with_capacity(4096),
            lsn_text: LsnText::default(),
            commit_lsn_text: LsnText::default(),
        }
    }

    /// The event as the encoders publish it: with Debezium's representations, its table model
    /// rewritten (once per table version).
    pub fn in_representation(&mut self, mut change: ChangeEvent) -> ChangeEvent {
        if let Some(tables) = &mut self.debezium {
            change.table = tables.of(&change.table);
        }
        change
    }

    /// A row change, to its table's topic (created, and its schemas registered, for each new table
    /// version), followed by a tombstone when it is a delete. `shape` is the topic and dress the
    /// transforms gave it, if any.
    pub async fn publish<'e>(
        &mut self,
        event: &'e ChangeEvent,
        shape: Option<(&str, &Dress)>,
        core: &mut Core,
    ) -> Result<Encoded<'e>, PipelineError> {
        if self.transactions.is_some() {
            if let Err(rejection) = self.count_in_transaction(event, core).await? {
                core.dead_letter(rejection).await?;
            }
        }
        if let Err(rejection) = self.ensure_encoding(event, shape, core).await? {
            return Ok(Err(rejection));
        }
        let encoding = &self.encodings[&event.table.id];
        let (topic, name) = (encoding.topic.clone(), encoding.name.clone());
        let reject = |stage: Stage, reason: String, key: Option<Vec<u8>>| {
            let mut rejection = Rejection::new(stage, &topic, reason, Subject::Change(event));
            rejection.key = key;
            rejection
        };
        let (has_value, nulled) = match self.encode_checked(event, core) {
            Ok(has_value) => (has_value, Vec::new()),
            Err((stage, reason)) => match self.encode_nulled(event, core) {
                Some(encoded) => encoded,
                None => {
                    let key = (!self.key_buf.is_empty()).then(|| self.key_buf.clone());
                    return Ok(Err(reject(stage, reason, key)));
                }
            },
        };
        let unencodable = unencodable_columns(event, &nulled);
        let sent = self.deliver(
            event,
            (&topic, &name),
            has_value,
            unencodable.as_deref(),
            core,
        );
        if let Err((reason, ordinal)) = sent.await? {
            let key = (!self.key_buf.is_empty()).then(|| self.key_buf.clone());
            let mut rejection = reject(Stage::Produce, reason, key);
            rejection.ordinal = Some(ordinal);
            return Ok(Err(rejection));
        }
        let has_key = !self.key_buf.is_empty();
        if nulled.is_empty() {
            return Ok(Ok(()));
        }
        for column in nulled_columns(event, &nulled) {
            core.metrics.unencodable(&name, column);
        }
        if self.unencodable_values == UnencodableValues::NullAndDeadLetter {
            // The original, every value as the source sent it, so that nothing is lost anywhere.
            let key = has_key.then(|| self.key_buf.clone());
            return Ok(Err(reject(
                Stage::Encode,
                nulled_reason(event, &nulled),
                key,
            )));
        }
        Ok(Ok(()))
    }

    /// The snapshot's end when none of its rows reached a topic: an `op = "r"` envelope without a row
    /// (`end`: the last row's table and source, `last`), on the topic and with the schemas the last row
    /// was encoded for, unkeyed, past contracts (it has no row to check). The flat form (unwrap) has
    /// nothing to carry it.
    pub async fn publish_end(
        &mut self,
        end: &ChangeEvent,
        core: &mut Core,
    ) -> Result<(), PipelineError> {
        let unpublished = |reason: &str| {
            tracing::warn!(reason, "no snapshot row reached its topic, and neither did an end record: no event carries source.snapshot = \"last\"");
        };
        // The last row's encoding (its topic, form and schemas): a row the transforms dropped, or that
        // never reached an encoder, leaves no topic to mark.
        if !self.encodings.contains_key(&end.table.id) {
            unpublished("the last row did not reach an encoder");
            return Ok(());
        }
        match self.encode(end, core) {
            Ok(true) => {}
            Ok(false) => {
                unpublished("the tables are published unwrapped");
                return Ok(());
            }
            Err(err) => {
                unpublished(&err.to_string());
                return Ok(());
            }
        }
        let encoding = &self.encodings[&end.table.id];
        let (topic, name) = (encoding.topic.clone(), encoding.name.clone());
        tracing::info!(%topic, "no snapshot row reached its topic: an end record marked last is published instead");
        if let Err((reason, _)) = self.deliver(end, (&topic, &name), true, None, core).await? {
            unpublished(&reason);
        }
        self.last_marker.ended();
        Ok(())
    }

    /// Sends the encoded row to `topic` (and its tombstone after a delete), keeps the snapshot marker's
    /// copy and counts it for the table `name`; the broker's refusal, with the message's ordinal.
    async fn deliver(
        &mut self,
        event: &ChangeEvent,
        (topic, name): (&str, &str),
        has_value: bool,
        unencodable: Option<&str>,
        core: &mut Core,
    ) -> Result<Result<(), (String, u64)>, PipelineError> {
        let has_key = !self.key_buf.is_empty();

        let txid = event.source.txid.map(|txid| txid.to_string());
        let unchanged = unchanged_toast_columns(event);
        let mut headers: Vec<(&str, &[u8])> = vec![
            ("sluice.lsn", self.lsn_text.of(event.source.lsn).as_bytes()),
            (
                "sluice.commit_lsn",
                self.commit_lsn_text.of(event.source.commit_lsn).as_bytes(),
            ),
        ];
        if let Some(txid) = &txid {
            headers.push(("sluice.txid", txid.as_bytes()));
        }
        if let Some(columns) = &unchanged {
            headers.push(("sluice.unchanged_toast", columns.as_bytes()));
        }
        if let Some(columns) = unencodable {
            headers.push(("sluice.unencodable", columns.as_bytes()));
        }
        let (reselected, bounds) = note_headers(event);
        if let Some(columns) = &reselected {
            headers.push(("sluice.reselected", columns.as_bytes()));
        }
        if let Some(bounds) = &bounds {
            headers.push(("sluice.array_bounds", bounds.as_bytes()));
        }
        let key = has_key.then_some(self.key_buf.as_slice());
        if has_value {
            let message = Outgoing {
                topic,
                key,
                payload: Some(&self.value_buf),
                headers: &headers,
            };
            if let Delivery::Refused { ordinal, reason } =
                core.send(&message, MessageKind::Event).await?
            {
                return Ok(Err((reason, ordinal)));
            }
        }
        if let (true, Some(marker_at)) = (has_value, self.marker_at) {
            let record = Record {
                topic,
                key: has_key.then_some([&[][..], &self.key_buf]),
                value: [&[], &self.value_buf],
                marker_at,
                lsn: Some(event.source.lsn),
            };
            self.last_marker.note(event.source.snapshot, record);
        }
        let bytes = self.value_buf.len() + key.map_or(0, <[u8]>::len);
        // An unwrapped delete of a keyless table publishes nothing at all.
        if has_value || has_key {
            core.metrics.event_published(name, event.op.code(), bytes);
        }
        if unchanged.is_some() {
            core.metrics.unchanged_toast(name);
        }
        if event.source.snapshot == SnapshotMarker::False {
            core.metrics.published_commit(event.source.commit_time_us);
        }
        // A delete is followed by a tombstone so that compaction can drop the key (unwrapped: the
        // tombstone may be all there is of it).
        if event.op == Op::Delete && has_key {
            core.send_tombstone(topic, &self.key_buf, &headers).await?;
        }
        Ok(Ok(()))
    }

    /// After `encode_checked` failed: the event with each value that has no encoding null, encoded and
    /// checked, with those values; None when the settings keep such rows whole, or it cannot be (a key
    /// value, a failure that is not a value's).
    fn encode_nulled(
        &mut self,
        event: &ChangeEvent,
        core: &Core,
    ) -> Option<(bool, Vec<Unencodable>)> {
        if !self.unencodable_values.publishes() {
            return None;
        }
        let values = avro::unencodable_values(event).filter(|values| !values.is_empty())?;
        // Debezium's required NOT NULL columns cannot be null: such a row goes whole.
        if self.debezium.is_some()
            && values
                .iter()
                .any(|v| event.table.columns[v.column].not_null)
        {
            return None;
        }
        let nulled = avro::with_nulls(event, &values);
        let has_value = self.encode_checked(&nulled, core).ok()?;
        Some((has_value, values))
    }

    /// [`encode`](Self::encode), then the topic's contract: whether there is a value to publish, or the
    /// stage and reason it cannot be (the key, when it was encoded, stays in the key buffer).
    fn encode_checked(
        &mut self,
        event: &ChangeEvent,
        core: &Core,
    ) -> Result<bool, (Stage, String)> {
        let has_value = self
            .encode(event, core)
            .map_err(|err| (encode_stage(&err), err.to_string()))?;
        let contract = self.encodings[&event.table.id].contract.as_ref();
        if let (Some(contract), true) = (contract, has_value) {
            let datum = SchemaRef::split(&self.value_buf).map_or(&[][..], |(_, datum)| datum);
            contract
                .check(datum, &unchanged_toast_fields(event))
                .map_err(|reason| (Stage::Validate, reason))?;
        }
        Ok(has_value)
    }

    /// The key (empty when the table version has no key schema or the event no key) and the value, framed,
    /// into the encoder's buffers. False when there is no value to publish: an unwrapped delete, whose
    /// tombstone is all there is of it.
    fn encode(&mut self, event: &ChangeEvent, core: &Core) -> Result<bool, EncodeError> {
        let encoding = &self.encodings[&event.table.id];
        self.key_buf.clear();
        if let (Some(schema), Some(row)) = (encoding.key_schema, event.key_row()) {
            schema.write_header(&mut self.key_buf);
            let written = match encoding.dress.key_table {
                Some(_) => avro::encode_key_with_table(event, row, &mut self.key_buf),
                None => avro::encode_key(&event.table, row, &mut self.key_buf),
            };
            if let Err(err) = written {
                self.key_buf.clear();
                return Err(err);
            }
        }
        self.value_buf.clear();
        self.marker_at = None;
        let processed_at_us = now_us();
        let processed_at_ms = processed_at_us.div_euclid(1000);
        if let Some(flat) = &encoding.dress.flat {
            let row = match event.op {
                Op::Delete if flat.rewrite_deletes => event.before.as_ref(),
                Op::Delete | Op::Truncate => None,
                _ => event.after.as_ref(),
            };
            let Some(row) = row else {
                return Ok(false);
            };
            encoding.value_schema.write_header(&mut self.value_buf);
            let debezium = self.debezium.is_some();
            avro::encode_flat(
                event,
                row,
                flat,
                processed_at_ms,
                debezium,
                &mut self.value_buf,
            )?;
            return Ok(true);
        }
        encoding.value_schema.write_header(&mut self.value_buf);
        let context = EnvelopeContext {
            server_name: &core.topic_prefix,
            connector: core.connector,
            version: env!("CARGO_PKG_VERSION"),
            processed_at_us,
            debezium: self.debezium.is_some(),
        };
        self.marker_at = Some(avro::encode_envelope(event, &context, &mut self.value_buf)?);
        Ok(true)
    }

    /// A logical decoding message, to `<topic_prefix>.message` (Debezium's topic for them) with its
    /// prefix as the key.
    pub async fn publish_message<'e>(
        &mut self,
        message: &'e DecodingMessage,
        core: &mut Core,
    ) -> Result<Encoded<'e>, PipelineError> {
        let mut key = Vec::new();
        avro::encode_message_key(message, &mut key);
        let mut value = Vec::new();
        avro::encode_message(message, &mut value);
        let mut headers = vec![(
            "sluice.lsn".to_owned(),
            message.lsn.to_string().into_bytes(),
        )];
        if let Some(txid) = message.txid {
            headers.push(("sluice.txid".to_owned(), txid.to_string().into_bytes()));
        }
        core.publish_fixed(&mut self.messages, &key, &value, &headers)
            .await
    }

    /// Counts a streamed change in its transaction, publishing the transaction's BEGIN record before its
    /// first change.
    async fn count_in_transaction(
        &mut self,
        event: &ChangeEvent,
        core: &mut Core,
    ) -> Result<Encoded<'static>, PipelineError> {
        let (Some(txid), Some(_)) = (event.source.txid, event.source.order) else {
            return Ok(Ok(()));
        };
        let id = avro::transaction_id(txid, event.source.commit_lsn);
        let mut begun = Ok(());
        if self
            .open_transaction
            .as_ref()
            .is_none_or(|open| open.id != id)
        {
            let open = TransactionCounts {
                id,
                txid,
                commit_lsn: event.source.commit_lsn,
                ts_ms: event.source.commit_time_us.div_euclid(1000),
                per_table: Vec::new(),
            };
            begun = self.publish_boundary(&open, false, core).await?;
            self.open_transaction = Some(open);
        }
        let table = event.table.qualified_name();
        if let Some(open) = self.open_transaction.as_mut() {
            match open.per_table.iter_mut().find(|(name, _)| *name == table) {
                Some((_, count)) => *count += 1,
                None => open.per_table.push((table, 1)),
            }
        }
        Ok(begun)
    }

    /// The END record of the open transaction, if there is one, at its commit.
    pub async fn end_transaction(
        &mut self,
        core: &mut Core,
    ) -> Result<Encoded<'static>, PipelineError> {
        match self.open_transaction.take() {
            Some(open) => self.publish_boundary(&open, true, core).await,
            None => Ok(Ok(())),
        }
    }

    /// The BEGIN (`end` false) or END record of a transaction, to `<topic_prefix>.transaction`.
    async fn publish_boundary(
        &mut self,
        open: &TransactionCounts,
        end: bool,
        core: &mut Core,
    ) -> Result<Encoded<'static>, PipelineError> {
        let Some(transactions) = self.transactions.as_mut() else {
            return Ok(Ok(()));
        };
        let boundary = avro::TransactionBoundary {
            id: &open.id,
            ts_ms: open.ts_ms,
            counts: end.then_some(open.per_table.as_slice()),
        };
        let mut key = Vec::new();
        avro::encode_transaction_key(&boundary, &mut key);
        let mut value = Vec::new();
        avro::encode_transaction(&boundary, &mut value);
        let headers = [
            ("sluice.txid".to_owned(), open.txid.to_string().into_bytes()),
            (
                "sluice.commit_lsn".to_owned(),
                open.commit_lsn.to_string().into_bytes(),
            ),
        ];
        core.publish_fixed(transactions, &key, &value, &headers)
            .await
    }

    /// The table version's topic and schema ids, registering the schemas of a new version (or of a new
    /// shape the transforms gave it). A table version that cannot have them rejects the event (and the
    /// next one asks again).
    async fn ensure_encoding<'e>(
        &mut self,
        event: &'e ChangeEvent,
        shape: Option<(&str, &Dress)>,
        core: &mut Core,
    ) -> Result<Encoded<'e>, PipelineError> {
        let table = &event.table;
        let current = self.encodings.get(&table.id).is_some_and(|e| {
            (Arc::ptr_eq(&e.table, table) || *e.table == **table)
                && shape.is_none_or(|(topic, dress)| e.topic == topic && e.dress.same_form(dress))
        });
        if current {
            return Ok(Ok(()));
        }
        let (topic, dress) = match shape {
            Some((topic, dress)) => (topic.to_owned(), dress.clone()),
            None => (
                avro::topic_name(&core.topic_prefix, table),
                Dress::default(),
            ),
        };
        let routed = dress.key_table.is_some();
        let reject = |stage, reason: String| {
            let subject = Subject::Change(event);
            Ok(Err(Rejection::new(stage, &topic, reason, subject)))
        };
        let schemas = match self.schemas_of(table, &topic, &dress, core) {
            Ok(schemas) => schemas,
            Err(err) => return reject(Stage::Encode, err.to_string()),
        };
        // A clash on a shared topic is the route's: its dead letter names it.
        let route = dress.route.as_deref().unwrap_or("a route");
        if routed {
            if let Err(reason) = self.shared.check(&schemas, table) {
                return reject(Stage::Transform, format!("{route}: {reason}"));
            }
        }
        match core.sink.ensure_topic(&schemas.topic, &core.stop).await {
            Ok(()) => {}
            Err(err) if err.is_message_fault() => return reject(Stage::Produce, err.to_string()),
            Err(err) => return Err(err.into()),
        }
        let (key_schema, value_schema) = match core.schema_refs(&schemas).await? {
            Ok(refs) => refs,
            // Tables a route sends to one topic must have schemas the registry accepts side by side.
            Err(err) if routed => {
                let reason = format!(
                    "{route}: the registry refuses this table's schema on the shared topic: {err}"
                );
                return reject(Stage::Transform, reason);
            }
            Err(err) => return reject(Stage::Register, err.to_string()),
        };
        if routed {
            self.shared.accepted(&schemas, table);
        }
        let key = key_schema.map_or_else(|| "none".to_owned(), |k| k.to_string());
        tracing::info!(table = %table.qualified_name(), topic = %schemas.topic, key_schema = %key, value_schema = %value_schema, "table schema ready");
        let contract = core
            .contracts
            .get(&schemas.topic)
            .map(|contract| Arc::new(BoundContract::new(contract.clone(), &schemas.value.schema)));
        if let Some(reason) = contract.as_ref().and_then(|c| c.incompatible()) {
            tracing::error!(table = %table.qualified_name(), reason, "every event of this table version will go to the dead-letter topic");
        }
        let encoding = TableEncoding {
            table: table.clone(),
            name: table.qualified_name().into(),
            topic: schemas.topic,
            key_schema,
            value_schema,
            contract,
            dress,
        };
        self.encodings.insert(table.id, encoding);
        Ok(Ok(()))
    }

    /// The schemas of a table as the transforms shaped it: a routed topic names its records after itself,
    /// so that every table on it has the same record names.
    fn schemas_of(
        &self,
        table: &Table,
        topic: &str,
        dress: &Dress,
        core: &Core,
    ) -> Result<avro::TableSchemas, avro::SchemaError> {
        let logical_types = match self.debezium {
            Some(_) => LogicalTypes::Debezium,
            None => LogicalTypes::Avro,
        };
        if dress.key_table.is_none() && dress.flat.is_none() && logical_types == LogicalTypes::Avro
        {
            return avro::table_schemas(&core.topic_prefix, table);
        }
        let namespace = match dress.key_table {
            Some(_) => avro::topic_namespace(topic),
            None => avro::naming::namespace(&core.topic_prefix, table),
        };
        let shape = avro::Shape {
            topic,
            namespace,
            key_table: dress.key_table.as_deref(),
            flat: dress.flat.as_deref(),
            logical_types,
        };
        avro::shaped_table_schemas(table, &shape)
    }
}

/// Which stage an encoding failure belongs to: a value the source could not represent failed at decoding
/// (the encoder only carries its reason along); anything else at encoding.
fn encode_stage(err: &EncodeError) -> Stage {
    match err {
        EncodeError::Column {
            reason: EncodeReason::OutOfRange(_),
            ..
        } => Stage::Decode,
        _ => Stage::Encode,
    }
}

/// The columns published null for want of an encoding, each once.
fn nulled_columns<'t>(event: &'t ChangeEvent, nulled: &[Unencodable]) -> Vec<&'t str> {
    let mut names: Vec<&str> = Vec::new();
    for value in nulled {
        let name = event.table.columns[value.column].name.as_str();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// The columns published null for want of an encoding, as a comma-separated header value.
fn unencodable_columns(event: &ChangeEvent, nulled: &[Unencodable]) -> Option<String> {
    let names = nulled_columns(event, nulled);
    (!names.is_empty()).then(|| names.join(","))
}

/// Why the original of a row published with values null is on the dead-letter topic.
fn nulled_reason(event: &ChangeEvent, nulled: &[Unencodable]) -> String {
    let each: Vec<String> = nulled
        .iter()
        .map(|value| {
            let row = if value.after { "after" } else { "before" };
            let column = &event.table.columns[value.column].name;
            format!("{row}.{column}: {}", value.reason)
        })
        .collect();
    format!(
        "published with these values null, as they have no Avro encoding (source.unencodable_values); \
         this is the change as the source sent it: {}",
        each.join("; ")
    )
}

/// Each table version's model with Debezium's column types, by the table's id.
#[derive(Default)]
struct DebeziumTables(HashMap<u32, (Arc<Table>, Arc<Table>)>);

impl DebeziumTables {
    fn of(&mut self, table: &Arc<Table>) -> Arc<Table> {
        if let Some((source, rewritten)) = self.0.get(&table.id) {
            if Arc::ptr_eq(source, table) {
                return rewritten.clone();
            }
        }
        let rewritten = Arc::new(avro::debezium::debezium_table(table));
        self.0.insert(table.id, (table.clone(), rewritten.clone()));
        rewritten
    }
}
