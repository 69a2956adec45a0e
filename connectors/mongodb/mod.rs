//! MongoDB: change streams read through the official driver, each event converted into the change-event
//! model (`change`), resumed from the resume token of the last event the broker acknowledged (`reader`).

pub mod change;
pub mod preflight;
pub mod reader;
