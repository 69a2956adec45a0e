//! `sluice check`'s checklist: each connector adds its lines (what is ready, what is not, and the fix),
//! the application adds the broker's and the registry's, and prints them.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pass,
    Warn,
    Fail,
    /// Not checked because an earlier check failed.
    Skip,
}

#[derive(Debug, Clone)]
pub struct CheckLine {
    pub status: Status,
    pub what: String,
    /// How to fix it, for failures and warnings.
    pub fix: Option<String>,
}

impl fmt::Display for CheckLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = match self.status {
            Status::Pass => "[ ok ]",
            Status::Warn => "[warn]",
            Status::Fail => "[FAIL]",
            Status::Skip => "[skip]",
        };
        write!(f, "{mark} {}", self.what)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n       fix: {fix}")?;
        }
        Ok(())
    }
}

#[derive(Default)]
pub struct Report {
    pub lines: Vec<CheckLine>,
}

impl Report {
    pub fn pass(&mut self, what: impl Into<String>) {
        self.lines.push(CheckLine {
            status: Status::Pass,
            what: what.into(),
            fix: None,
        });
    }
    pub fn warn(&mut self, what: impl Into<String>, fix: impl Into<String>) {
        self.lines.push(CheckLine {
            status: Status::Warn,
            what: what.into(),
            fix: Some(fix.into()),
        });
    }
    pub fn fail(&mut self, what: impl Into<String>, fix: impl Into<String>) {
        self.lines.push(CheckLine {
            status: Status::Fail,
            what: what.into(),
            fix: Some(fix.into()),
        });
    }
    pub fn skip(&mut self, what: impl Into<String>) {
        self.lines.push(CheckLine {
            status: Status::Skip,
            what: what.into(),
            fix: None,
        });
    }

    pub fn passed(&self) -> bool {
        !self
            .lines
            .iter()
            .any(|l| matches!(l.status, Status::Fail | Status::Skip))
    }
}
