//! The one match on the source kind: `[source]` to its connector, handed to a [`SourceVisitor`] that works
//! with any [`Source`]. `pipeline::run` and `preflight::run` both go through [`with_source`]; a new source
//! is a folder under `connectors/` and one arm here.

use std::future::Future;

use sluice_core::check::Report;
use sluice_core::Source;
use sluice_mongodb::source::MongodbConnector;
use sluice_postgres::source::PostgresConnector;

use crate::config::{self, Config};

/// What is done with the configured source's connector, whatever its kind.
pub trait SourceVisitor {
    type Output;

    /// Works with the connector `[source]` builds.
    fn visit<S: Source>(self, source: S) -> impl Future<Output = Self::Output> + Send;

    /// `[source]` builds no connector (a PostgreSQL URL that does not parse).
    fn unbuildable(self, failure: Unbuildable<'_>) -> Self::Output;
}

/// Why `[source]` builds no connector: the error a run stops with, and the line `sluice check` reports.
pub struct Unbuildable<'c> {
    pub error: Box<dyn std::error::Error + Send + Sync>,
    check: Box<dyn FnOnce(&mut Report) + Send + 'c>,
}

impl Unbuildable<'_> {
    /// Adds the connector's own line for it to `report`, with the fix.
    pub fn report(self, report: &mut Report) {
        (self.check)(report)
    }
}

/// Builds the connector of `config`'s `[source]` and hands it to `visitor`.
pub async fn with_source<V: SourceVisitor>(config: &Config, visitor: V) -> V::Output {
    match &config.source {
        config::Source::Postgres(source) => match PostgresConnector::new(source) {
            Ok(connector) => visitor.visit(connector).await,
            Err(error) => visitor.unbuildable(Unbuildable {
                error: Box::new(error),
                check: Box::new(|report| {
                    sluice_postgres::preflight::connector(source, report);
                }),
            }),
        },
        config::Source::Mongodb(source) => {
            let prefix = config.sink.topic_prefix.get_ref().as_str();
            visitor.visit(MongodbConnector::new(source, prefix)).await
        }
    }
}
