//! The one way an error is shown to a person: its message and each cause the message does not already
//! include, with passwords masked.

use crate::config::redact_secrets;

/// `err` and its causes, joined by `: `, skipping a cause whose text the message already carries (many
/// wrappers repeat their source), with any URL's password masked.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    redact_secrets(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer with {0}")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("cannot reach postgres://sluice:hunter2@db/app")]
    struct Inner;

    #[test]
    fn causes_are_joined_once_and_passwords_masked() {
        let text = error_chain(&Outer(Inner));
        assert_eq!(text, "outer with cannot reach postgres://sluice:***@db/app");
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Plain(#[source] Inner);
        assert_eq!(
            error_chain(&Plain(Inner)),
            "outer: cannot reach postgres://sluice:***@db/app"
        );
    }
}
