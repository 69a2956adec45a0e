//! Why a run of the pipeline stops with an error: every failure the publishing loop, the schema directory,
//! the sink, the position store and the source can end it with.

use std::time::Duration;

use sluice_core::positions::PositionError;

use crate::api::ApiError;
use crate::contracts::ContractError;
use crate::registry::RegistryError;
use crate::sink::SinkError;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Position(#[from] PositionError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The source failed; its message says what to do.
    #[error(transparent)]
    Source(Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("the dead-letter topic `{topic}` refused a message ({reason}); stopping without acknowledging it")]
    DeadLetterRefused { topic: String, reason: String },
    #[error(transparent)]
    Contract(#[from] ContractError),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("cannot write the schema file {path}: {source}")]
    SchemaFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the schemas topic `{topic}` refused a schema ({reason}); consumers could not read the messages that use it, so sluice stops")]
    SchemaTopicRefused { topic: String, reason: String },
    #[error("the schema registry refused the dead-letter schema: {0}")]
    DeadLetterSchema(String),
    #[error("stopped while the schema registry was unreachable: {0}")]
    StoppedWaitingForRegistry(RegistryError),
    #[error("the broker did not acknowledge {outstanding} messages within the shutdown bound ({timeout:?}); they will be sent again on restart")]
    DrainTimeout { outstanding: u64, timeout: Duration },
    #[error("a transform cannot be built: {0}")]
    Transform(#[from] crate::transforms::config::BuildError),
    #[error("the source reader stopped unexpectedly")]
    ReaderGone,
}

impl PipelineError {
    pub(super) fn source(err: impl std::error::Error + Send + Sync + 'static) -> PipelineError {
        PipelineError::Source(Box::new(err))
    }
}
