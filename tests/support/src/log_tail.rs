//! The end of a process's log file, for error messages: a failed start is only debuggable with it.

use std::path::Path;

/// The last `lines` lines of the file at `path`, or a note saying why there are none.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let tail = all[all.len().saturating_sub(lines)..].join("\n");
            if tail.trim().is_empty() {
                format!("(log {} is empty)", path.display())
            } else {
                format!("last lines of {}:\n{tail}", path.display())
            }
        }
        Err(err) => format!("(no log at {}: {err})", path.display()),
    }
}
