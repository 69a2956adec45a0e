//! `sluice check`: connects to everything the config names and reports, line by line, what is ready and
//! what is not — with the fix for each problem. Changes nothing. The source checks itself
//! ([`Source::check`](sluice_core::Source::check)); here are the broker, the registry and the contracts.

use std::path::Path;
use std::time::Duration;

use crate::config::{redact_secrets, Config, SinkKind};
use crate::contracts::Contracts;
use crate::registry::{RegistryClient, RegistryError, RegistrySettings};
use crate::sink::{Login, Sink, SinkError, SinkSettings};
use crate::sources::{with_source, SourceVisitor, Unbuildable};
use sluice_core::check::Report;
use sluice_core::positions::PositionPeek;
use sluice_core::Source;

/// The source's lines first, then the broker's and the registry's.
pub async fn run(config: &Config) -> Report {
    let mut report = Report::default();
    let checking = CheckSource {
        config,
        report: &mut report,
    };
    with_source(config, checking).await;
    check_broker(config, &mut report);
    check_registry(config, &mut report).await;
    report
}

/// The configured source's lines.
struct CheckSource<'a> {
    config: &'a Config,
    report: &'a mut Report,
}

impl SourceVisitor for CheckSource<'_> {
    type Output = ();

    /// Any source's checks, told what its position file holds (read, not created).
    async fn visit<S: Source>(self, source: S) {
        let dir = Path::new(self.config.positions.dir.get_ref().as_str());
        let position = PositionPeek::read(dir, &source.position_key());
        source.check(&position, self.report).await;
    }

    fn unbuildable(self, failure: Unbuildable<'_>) {
        failure.report(self.report);
    }
}

fn check_broker(config: &Config, report: &mut Report) {
    let settings = SinkSettings::from_config(config);
    let brokers = settings.brokers.clone();
    let tracker = std::sync::Arc::new(crate::pipeline::ack::AckTracker::new());
    if settings.kind == SinkKind::Blackhole {
        report
            .pass("sink.kind = \"blackhole\": no broker; events are acknowledged and thrown away");
        return;
    }
    let security = Login::of(&settings.properties).describe();
    let checked = Sink::new(settings, tracker, std::sync::Arc::default())
        .and_then(|(sink, _)| sink.check_reachable(Duration::from_secs(10)));
    match checked {
        Ok(()) => report.pass(format!("broker at {brokers} is reachable{security}")),
        Err(SinkError::Refused { refusal, .. }) => report.fail(
            format!("broker at {brokers} refused the connection: {refusal}"),
            refusal.fix(),
        ),
        Err(err) => report.fail(
            format!("broker at {brokers} is not reachable: {err}"),
            "check `sink.brokers`, that the broker runs and advertises an address this host can reach, and the security settings in [sink.kafka]",
        ),
    }
}

async fn check_registry(config: &Config, report: &mut Report) {
    let Some(settings) = RegistrySettings::from_config(config) else {
        report.pass(format!(
            "no schema registry: messages use Avro single-object encoding, schemas go to topic `{}`",
            config.schemas_topic()
        ));
        return;
    };
    let shown = redact_secrets(&settings.url);
    let reached = match RegistryClient::new(&settings) {
        Ok(client) => client.ping().await,
        Err(err) => Err(err),
    };
    match reached {
        Ok(()) => report.pass(format!("schema registry at {shown} is reachable")),
        Err(RegistryError::Tls { cause, fix, .. }) => report.fail(
            format!("schema registry at {shown}: TLS failed: {cause}"),
            fix,
        ),
        Err(RegistryError::Unauthorized {
            status,
            message,
            fix,
            ..
        }) => report.fail(
            format!(
                "schema registry at {shown} refused the credentials (HTTP {status}): {message}"
            ),
            fix,
        ),
        Err(err @ RegistryError::TlsFile { .. }) => {
            report.fail(format!("schema registry at {shown}: {err}"), err.fix())
        }
        Err(err) => report.fail(
            format!("schema registry at {shown} is not reachable: {err}"),
            err.fix(),
        ),
    }
}

/// Each contract compared with the current schema of its topic's table: one line per finding, led by `ok`,
/// `note` (some events may break it) or `FAIL` (no event can satisfy it, or no table has that topic).
pub async fn compare_contracts(
    config: &Config,
    contracts: &Contracts,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let prefix = config.sink.topic_prefix.get_ref().as_str();
    let Some(source) = config.postgres() else {
        return Ok(document_contract_lines(contracts, prefix));
    };
    let settings = sluice_postgres::source::settings(source)?;
    let tables = sluice_postgres::reader::current_tables(&settings).await?;
    let mut lines = Vec::new();
    for contract in contracts.iter() {
        let table = tables
            .iter()
            .find(|t| crate::avro::topic_name(prefix, t) == contract.topic);
        let Some(table) = table else {
            // A route or the outbox router may publish there: the contract applies to what arrives.
            if !config.transforms.is_empty() {
                lines.push(format!(
                    "note {}: no table's own topic is `{}`; with transforms, it is checked against each event published there",
                    contract.path.display(),
                    contract.topic
                ));
                continue;
            }
            lines.push(format!(
                "FAIL {}: no captured table publishes to topic `{}`",
                contract.path.display(),
                contract.topic
            ));
            continue;
        };
        let schemas = crate::avro::table_schemas_as(prefix, table, config.avro.logical_types())?;
        let found = contract.compare(&schemas.value.schema);
        if found.is_empty() {
            lines.push(format!(
                "ok   {}: reads every event of {}",
                contract.path.display(),
                table.qualified_name()
            ));
        }
        for mismatch in found {
            let lead = if mismatch.fatal { "FAIL" } else { "note" };
            lines.push(format!(
                "{lead} {} ({}): {mismatch}",
                contract.path.display(),
                table.qualified_name()
            ));
        }
    }
    Ok(lines)
}

/// The columns transforms name, compared with the captured tables (PostgreSQL; MongoDB documents have no
/// fixed fields to compare with).
pub async fn compare_transforms(
    config: &Config,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let Some(source) = config.postgres() else {
        return Ok(Vec::new());
    };
    let settings = sluice_postgres::source::settings(source)?;
    let tables = sluice_postgres::reader::current_tables(&settings).await?;
    let prefix = config.sink.topic_prefix.get_ref().as_str();
    Ok(crate::transforms::column_lines(
        &config.transforms,
        &tables,
        prefix,
    ))
}

/// MongoDB collections have no fixed schema to compare with: each contract is checked to be a record
/// that can type `after` in its collection's envelope.
fn document_contract_lines(contracts: &Contracts, prefix: &str) -> Vec<String> {
    contracts
        .iter()
        .map(|contract| {
            let checked = crate::pipeline::check_document_contract(contract, prefix);
            let named = crate::pipeline::collection_of_topic(&contract.topic, prefix).is_some();
            match (checked, named) {
                (Err(err), _) => format!("FAIL {err}"),
                (Ok(()), true) => format!(
                    "ok   {}: types `after` of the documents on topic `{}`",
                    contract.path.display(),
                    contract.topic
                ),
                (Ok(()), false) => format!(
                    "note {}: topic `{}` is not `{prefix}.<db>.<collection>`: it types no collection",
                    contract.path.display(),
                    contract.topic
                ),
            }
        })
        .collect()
}
