//! What every reader (change stream, oplog, snapshot) shares: the channel to the pipeline and the stop
//! request, how a read ended, and which failures a reconnect cures, with the backoff between attempts.

use std::sync::Arc;
use std::time::Duration;

use mongodb::error::{Error as DriverError, ErrorKind};
use tokio::sync::{mpsc, watch};

use sluice_core::backoff::Backoff;
use sluice_core::config::redact_secrets;
use sluice_core::event::SourceEvent;
use sluice_core::metrics::SourceMetrics;

/// The longest wait between reconnection attempts after transient failures.
pub(super) const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(10);
/// Server errors that a new attempt from the last position read can cure: the server shutting down or
/// stepping down in an election (ShutdownInProgress, PrimarySteppedDown, NotWritablePrimary,
/// InterruptedAtShutdown, InterruptedDueToReplStateChange, NotPrimaryNoSecondaryOk,
/// NotPrimaryOrSecondary), network trouble reported by a mongos (HostUnreachable, HostNotFound,
/// NetworkTimeout, SocketException), and a cursor the server let go of (CursorNotFound after ten idle
/// minutes, QueryPlanKilled when a collection is dropped or an index rebuilt, CursorKilled).
const RETRYABLE_CODES: [i32; 15] = [
    91, 189, 10107, 11600, 11602, 13435, 13436, 6, 7, 89, 9001, 43, 175, 237, 134,
];

/// How the reader talks to the pipeline.
pub struct DocumentStreamControl {
    pub events: mpsc::Sender<SourceEvent>,
    pub stop: watch::Receiver<bool>,
    pub metrics: Arc<dyn SourceMetrics>,
    /// The position file, named in errors that tell the operator to move it.
    pub position_file: String,
}

/// How a read of the change stream or the oplog ended, other than with an error.
pub(super) enum Ended {
    Stopped,
    /// The stream ended with an `invalidate`: a new one starts after it.
    Invalidated,
    /// The position to resume from is no longer in the oplog (the reason, as the server or the reader
    /// found it).
    HistoryLost(String),
}

/// Sends to the pipeline; false when it has gone away (it stopped or failed).
pub(super) async fn send(control: &DocumentStreamControl, event: SourceEvent) -> bool {
    control.events.send(event).await.is_ok()
}

/// Waits out the backoff after the `failures`-th transient failure in a row (or a stop request).
pub(super) async fn back_off(
    failures: &mut Backoff,
    err: &DriverError,
    control: &mut DocumentStreamControl,
) {
    let wait = failures.next_delay();
    control.metrics.reconnected();
    tracing::warn!(error = %redact_secrets(&err.to_string()), retry_in = ?wait, "MongoDB read interrupted: reconnecting from the last document read");
    tokio::select! {
        _ = tokio::time::sleep(wait) => {}
        _ = control.stop.changed() => {}
    }
}

/// Failures a reconnect can cure: the network, an election, a server restarting, a lost cursor. Every
/// reader starts again after what it handed on, so a retry repeats nothing.
pub(super) fn is_transient(err: &DriverError) -> bool {
    match err.kind.as_ref() {
        ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::ServerSelection { .. } => true,
        ErrorKind::Command(command) if RETRYABLE_CODES.contains(&command.code) => true,
        _ => {
            err.contains_label("ResumableChangeStreamError")
                || err.contains_label("RetryableWriteError")
                || err.contains_label("NetworkError")
        }
    }
}
