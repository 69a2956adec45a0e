//! `type = "unwrap"`: Debezium's ExtractNewRecordState.

use super::config::{DeleteHandling, KeyProblem};
use super::{Shaped, Step, Transform};

pub struct Unwrap {}

impl Unwrap {
    pub fn new(add_fields: &[String], delete_handling: DeleteHandling) -> Result<Unwrap, KeyProblem> {
        let _ = (add_fields, delete_handling);
        Err(("add_fields", "not built yet".into()))
    }
}

impl Transform for Unwrap {
    fn apply(&mut self, shaped: Shaped) -> Step {
        Step::Keep(shaped)
    }
}
