//! The error of a text value that does not parse as its column's type, shared by `types` and the parsers
//! it calls (`types_numeric`, `types_temporal`): a leaf, so that they all depend on it and not on each other.

use super::structured::StructureError;

/// Inputs longer than this are shortened in error messages.
const MAX_SHOWN_CHARS: usize = 64;

/// A text value that does not parse as its column's type.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("`{text}` is not a valid {type_name}")]
    Invalid {
        text: String,
        type_name: &'static str,
    },
    #[error("`{text}` is out of range for {type_name}")]
    Overflow {
        text: String,
        type_name: &'static str,
    },
    #[error("`{text}` is not a valid {type_name}: {reason}")]
    Malformed {
        text: String,
        type_name: &'static str,
        reason: StructureError,
    },
    #[error("{type_name} value `{text}` is not valid UTF-8")]
    InvalidUtf8 {
        text: String,
        type_name: &'static str,
    },
}

impl ValueError {
    pub(super) fn invalid(text: &str, type_name: &'static str) -> ValueError {
        ValueError::Invalid {
            text: shown(text),
            type_name,
        }
    }

    pub(super) fn malformed(
        text: &str,
        type_name: &'static str,
        reason: StructureError,
    ) -> ValueError {
        ValueError::Malformed {
            text: shown(text),
            type_name,
            reason,
        }
    }

    pub(super) fn overflow(text: &str, type_name: &'static str) -> ValueError {
        ValueError::Overflow {
            text: shown(text),
            type_name,
        }
    }
}

/// The input as shown in an error: at most [`MAX_SHOWN_CHARS`] characters.
pub(super) fn shown(text: &str) -> String {
    match text.char_indices().nth(MAX_SHOWN_CHARS) {
        Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], text.len()),
        None => text.to_owned(),
    }
}
