//! `sluice check` for a PostgreSQL source: the connector it checks with, built here above the source, and
//! the checks the source's `check` runs, which are in `preflight_checks` below it (the source calls them,
//! so they cannot name the source).

use sluice_core::check::Report;
use sluice_core::config::redact_secrets;

use crate::config::PostgresConfig;
use crate::error::SourceError;
// Public here before the checks had a module of their own.
pub use crate::preflight_checks::check;
use crate::source::PostgresConnector;

/// The connector `check` runs with, or None with a line saying why `source.url` cannot be used.
pub fn connector(config: &PostgresConfig, report: &mut Report) -> Option<PostgresConnector> {
    match PostgresConnector::new(config) {
        Ok(connector) => Some(connector),
        Err(err) => {
            let shown = redact_secrets(config.url.get_ref().as_str());
            let reason = match err {
                SourceError::Url(reason) => reason,
                other => other.to_string(),
            };
            report.fail(
                format!("PostgreSQL URL {shown}: {reason}"),
                "correct `source.url`",
            );
            None
        }
    }
}
