//! What every connector's settings share: `${VAR}` strings, the snapshot modes, selection wildcards, the
//! bounds on snapshot parallelism, and the one way secrets are kept out of messages.
//!
//! Settings keep their place in the file (`Spanned`) so that a problem is reported at its line; a
//! connector reports problems through a [`ProblemSink`] with the key's dotted path.

use std::fmt;
use std::ops::Range;

use serde::de::{self, Deserializer};
use serde::Deserialize;
pub use toml::Spanned;

/// Where a connector's config check reports a problem: the key's dotted path, its place in the file and
/// what is wrong with it.
pub type ProblemSink<'a> = dyn FnMut(&str, Range<usize>, String) + 'a;

/// `source.snapshot`: Debezium's snapshot modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    /// Read the tables once, when sluice has no stored position, then stream.
    #[default]
    Initial,
    /// Never read the tables: only changes after the slot was created are published.
    Never,
    /// Read the tables, then stop without streaming (and drop the slot, so no WAL is retained).
    InitialOnly,
    /// Like `initial`, and again whenever the stored position cannot be resumed (the slot is gone).
    WhenNeeded,
}

pub fn no_patterns() -> Spanned<Vec<Spanned<EnvString>>> {
    Spanned::new(0..0, Vec::new())
}

/// Smaller key ranges cost a query each and balance nothing better.
pub const MIN_SNAPSHOT_CHUNK_ROWS: u64 = 1_000;

/// Each snapshot connection is a server backend and a walsender's exported snapshot shared that many ways.
pub const MAX_SNAPSHOT_CONNECTIONS: u8 = 16;

pub fn off() -> Spanned<bool> {
    Spanned::new(0..0, false)
}

/// A string value with `${VAR}` references already replaced from the environment.
#[derive(Clone, PartialEq, Eq)]
pub struct EnvString(pub String);

impl EnvString {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for EnvString {
    // Values may hold secrets read from the environment: never print them through Debug.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EnvString(..)")
    }
}

impl<'de> Deserialize<'de> for EnvString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        expand_env(&raw, |name| std::env::var(name).ok())
            .map(EnvString)
            .map_err(de::Error::custom)
    }
}

/// Replaces `${NAME}` with `lookup(NAME)`; `$$` stands for `$`. Any other `$` is kept as it is.
pub fn expand_env(raw: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(body) = tail.strip_prefix("${") {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unclosed `${{` in `{}`", redact_secrets(raw)))?;
            let name = &body[..end];
            let valid =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "`${{{name}}}` is not a valid environment variable reference"
                ));
            }
            let value = lookup(name).ok_or_else(|| {
                format!("environment variable `{name}` is not set (referenced as `${{{name}}}`)")
            })?;
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The snapshot's parallelism and chunk size, the same bounds for every source kind.
pub fn check_snapshot_bounds(
    connections: &Spanned<u8>,
    chunk_size: &Spanned<u64>,
    chunk_key: &str,
    report: &mut ProblemSink<'_>,
) {
    let count = *connections.get_ref();
    if count == 0 || count > MAX_SNAPSHOT_CONNECTIONS {
        report(
            "source.snapshot_connections",
            connections.span(),
            format!("is {count}; must be between 1 and {MAX_SNAPSHOT_CONNECTIONS}"),
        );
    }
    let size = *chunk_size.get_ref();
    if size < MIN_SNAPSHOT_CHUNK_ROWS {
        report(
            chunk_key,
            chunk_size.span(),
            format!("is {size}; must be at least {MIN_SNAPSHOT_CHUNK_ROWS}"),
        );
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

/// Whether a config key or a librdkafka property holds a secret.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "passphrase",
        "secret",
        "token",
        "jaas",
        "oauthbearer.config",
    ]
    .iter()
    .any(|word| key.contains(word))
        || (key.contains("key") && key.ends_with(".pem"))
}

/// A line of a config file as an error message may quote it: a secret key's value, and any URL's
/// password, as `***`.
pub fn redact_line(line: &str) -> String {
    // Every text before an `=` may end in a key: `kafka = { "sasl.password" = "…" }` has two.
    let mut keys = line.split('=');
    keys.next_back();
    match line.split_once('=') {
        Some((first, _)) if keys.any(is_secret_key) => format!("{} = ***", first.trim_end()),
        _ => redact_secrets(line),
    }
}

/// Replaces the password in any `scheme://user:password@host` URL inside `text` with `***`.
pub fn redact_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(scheme_end) = rest.find("://") {
        let authority_start = scheme_end + 3;
        out.push_str(&rest[..authority_start]);
        rest = &rest[authority_start..];
        let authority_end = rest
            .find(['/', '?', '#', ' ', '"', '\''])
            .unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.split_once(':') {
                    Some((user, _password)) => {
                        out.push_str(&format!("{user}:***{}", &authority[at..]))
                    }
                    None => out.push_str(authority),
                }
            }
            None => out.push_str(authority),
        }
        rest = &rest[authority_end..];
    }
    out.push_str(rest);
    redact_password_parameters(&out)
}

/// `password=…` in a URL's query (libpq and tokio-postgres read it there too) as `password=***`.
fn redact_password_parameters(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("password=") {
        let value_start = at + "password=".len();
        let starts_parameter = at == 0 || matches!(rest.as_bytes()[at - 1], b'?' | b'&' | b' ');
        out.push_str(&rest[..value_start]);
        rest = &rest[value_start..];
        if starts_parameter {
            let end = rest.find(['&', '#', ' ', '"', '\'']).unwrap_or(rest.len());
            out.push_str("***");
            rest = &rest[end..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quoted_line_hides_secret_values_and_url_passwords() {
        assert_eq!(
            redact_line(r#"registry_bearer_token = "abc"#),
            "registry_bearer_token = ***"
        );
        assert_eq!(
            redact_line(r#""sasl.password" = "hunter2""#),
            r#""sasl.password" = ***"#
        );
        assert_eq!(
            redact_line(r#"url = "postgres://u:pw@h/db"#),
            r#"url = "postgres://u:***@h/db"#
        );
        assert_eq!(redact_line("slot = \"s\""), "slot = \"s\"");
        assert_eq!(
            redact_line(r#"kafka = { "sasl.password" = "hunter2", }"#),
            "kafka = ***"
        );
        assert_eq!(
            redact_secrets("postgres://u@h/db?sslmode=require&password=pw&x=1"),
            "postgres://u@h/db?sslmode=require&password=***&x=1"
        );
        assert!(is_secret_key(
            "sasl.oauthbearer.assertion.private.key.passphrase"
        ));
    }

    #[test]
    fn wildcards_match_as_documented() {
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("ord*", "orders"));
        assert!(wildcard_match("*_log", "audit_log"));
        assert!(wildcard_match("a*b*c", "aXXbYYc"));
        assert!(!wildcard_match("a*b*c", "aXXc"));
        assert!(!wildcard_match("ab*ba", "aba"));
    }
}
