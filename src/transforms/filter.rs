//! `type = "filter"`: drops the events for which a CEL condition is false.

use super::config::KeyProblem;
use super::{Shaped, Step, Transform};

pub struct Filter {}

impl Filter {
    pub fn new(condition: &str) -> Result<Filter, KeyProblem> {
        let _ = condition;
        Err(("condition", "filters are not built yet".into()))
    }
}

impl Transform for Filter {
    fn apply(&mut self, shaped: Shaped) -> Step {
        Step::Keep(shaped)
    }
}
