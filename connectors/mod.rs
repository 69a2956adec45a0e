//! Source connectors: each reads one kind of database's change log into [`crate::event::SourceEvent`]s.

pub mod mongodb;
pub mod postgres;
