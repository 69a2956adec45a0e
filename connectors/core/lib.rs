//! What every connector shares with the pipeline: the change-event model, the source seam, position
//! storage, the metrics a source reports, the `check` checklist and the config building blocks.
//!
//! Connectors depend on this crate and nothing of the application; the application depends on the
//! connectors. See ARCHITECTURE.md.

pub mod backoff;
pub mod calendar;
pub mod check;
pub mod config;
pub mod decimal;
pub mod errors;
pub mod event;
pub mod incremental;
pub mod json;
pub mod known;
pub mod metrics;
pub mod positions;
pub mod reading;
pub mod signal;
pub mod source;

pub use source::{Committer, Source, SourceContext};
