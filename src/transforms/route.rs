//! `type = "route"`: Debezium's topic router. A topic that `match` matches whole goes to `replace` (`$1`…
//! for its groups); the key of a routed event gains a field naming its table, so that the keys of tables
//! sharing a topic stay unique. Whether the tables' schemas can share it is the encoder's check: it knows
//! every schema a topic has.

use std::collections::HashMap;
use std::sync::Arc;

use regex::Regex;

use super::{KeyProblem, Shaped, Step, Transform};

pub const DEFAULT_KEY_FIELD: &str = "__table";

/// Kafka's limit on topic names.
const MAX_TOPIC_LENGTH: usize = 249;

pub struct Route {
    pattern: Regex,
    /// With every `$N` written `${N}`, as Java reads it (the regex crate would read `$1_x` as a group
    /// named `1_x`).
    replace: String,
    key_field: Arc<str>,
    /// `transforms[i] (route)`.
    name: Arc<str>,
    /// Where each topic seen so far goes (None: not matched): a route runs its regex once per topic,
    /// not once per event.
    routes: HashMap<String, Option<String>>,
}

impl Route {
    pub fn new(
        pattern: &str,
        replace: &str,
        key_field: &str,
        name: &str,
    ) -> Result<Route, KeyProblem> {
        // Anchored: Debezium matches the whole topic, and a partial match would route by accident.
        let anchored = Regex::new(&format!("^(?:{pattern})$"))
            .map_err(|err| ("match", format!("is not a regular expression: {err}")))?;
        let groups = anchored.captures_len() - 1;
        if let Some(group) = replaced_groups(replace).find(|g| *g > groups) {
            return Err((
                "replace",
                format!("refers to group ${group}, but `match` has {groups} group(s)"),
            ));
        }
        if !is_avro_name(key_field) {
            return Err((
                "key_field",
                format!("`{key_field}` is not an Avro field name ([A-Za-z_][A-Za-z0-9_]*)"),
            ));
        }
        Ok(Route {
            pattern: anchored,
            replace: braced_groups(replace),
            key_field: key_field.into(),
            name: name.into(),
            routes: HashMap::new(),
        })
    }

    /// The topic `topic` is routed to, if the route matches it.
    fn route(&mut self, topic: &str) -> Option<String> {
        if let Some(routed) = self.routes.get(topic) {
            return routed.clone();
        }
        let routed = self.pattern.is_match(topic).then(|| {
            self.pattern
                .replace(topic, self.replace.as_str())
                .into_owned()
        });
        self.routes.insert(topic.to_owned(), routed.clone());
        routed
    }
}

impl Transform for Route {
    fn apply(&mut self, mut shaped: Shaped) -> Step {
        if shaped.dress.outbox.is_some() {
            return Step::Keep(shaped);
        }
        let Some(routed) = self.route(&shaped.topic) else {
            return Step::Keep(shaped);
        };
        if let Err(reason) = check_topic(&routed) {
            return Step::Reject {
                reason: format!("routes `{}` to `{routed}`, {reason}", shaped.topic),
                shaped,
            };
        }
        // Every matched table names itself in the key, the one a route maps to itself included, so that
        // all keys on the shared topic have one shape (Debezium's key enforcement).
        shaped.topic = routed;
        shaped.dress.key_table = Some(self.key_field.clone());
        shaped.dress.route = Some(self.name.clone());
        Step::Keep(shaped)
    }

    /// A rejected event goes to the dead-letter topic as meant for its routed topic, so that masks of
    /// that topic apply to it.
    fn mask_rejected(&mut self, mut shaped: Shaped) -> Shaped {
        if let Some(routed) = self.route(&shaped.topic).filter(|t| check_topic(t).is_ok()) {
            shaped.topic = routed;
        }
        shaped
    }
}

/// `replace` with `$N` written `${N}`; `$$` and `${…}` as they are.
fn braced_groups(replace: &str) -> String {
    let mut out = String::with_capacity(replace.len() + 4);
    let mut chars = replace.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '$' {
            continue;
        }
        match chars.peek() {
            Some('$') => out.push(chars.next().unwrap_or('$')),
            Some(d) if d.is_ascii_digit() => {
                out.push('{');
                while let Some(d) = chars.next_if(char::is_ascii_digit) {
                    out.push(d);
                }
                out.push('}');
            }
            _ => {}
        }
    }
    out
}

/// The group numbers `$1`, `${2}` a replacement refers to.
fn replaced_groups(replace: &str) -> impl Iterator<Item = usize> + '_ {
    replace.match_indices('$').filter_map(move |(at, _)| {
        let rest = &replace[at + 1..];
        let rest = rest.strip_prefix('{').unwrap_or(rest);
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

fn is_avro_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Kafka's rule for topic names.
pub(super) fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic == "." || topic == ".." {
        return Err("which is not a topic name".into());
    }
    if topic.len() > MAX_TOPIC_LENGTH {
        return Err(format!("longer than Kafka's {MAX_TOPIC_LENGTH} characters"));
    }
    match topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(c) => Err(format!("and `{c}` is not allowed in a topic name")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transforms::Dress;
    use sluice_core::event::{Lsn, Position, SourceEvent};

    fn shaped(topic: &str) -> Shaped {
        Shaped {
            event: SourceEvent::Idle {
                position: Position::Postgres { lsn: Lsn(1) },
            },
            topic: topic.into(),
            dress: Dress::default(),
        }
    }

    fn routed(route: &mut Route, topic: &str) -> (String, Option<Arc<str>>) {
        match route.apply(shaped(topic)) {
            Step::Keep(shaped) => (shaped.topic, shaped.dress.key_table),
            Step::Reject { reason, .. } => panic!("rejected: {reason}"),
            Step::Drop => panic!("dropped"),
        }
    }

    #[test]
    fn shards_go_to_one_topic_with_the_table_in_the_key() {
        let mut route = Route::new(
            r"app\.public\.orders_(\d+)",
            "app.public.orders",
            "__table",
            "r",
        )
        .unwrap();
        let (topic, key) = routed(&mut route, "app.public.orders_2024");
        assert_eq!(topic, "app.public.orders");
        assert_eq!(key.as_deref(), Some("__table"));
        let (topic, key) = routed(&mut route, "app.public.customers");
        assert_eq!((topic.as_str(), key), ("app.public.customers", None));
        // The table already on the shared topic names itself in its key as well.
        let mut route = Route::new(
            r"app\.public\.orders(_\d+)?",
            "app.public.orders",
            "__table",
            "r",
        )
        .unwrap();
        let (topic, key) = routed(&mut route, "app.public.orders");
        assert_eq!(
            (topic.as_str(), key.as_deref()),
            ("app.public.orders", Some("__table"))
        );
    }

    #[test]
    fn the_match_is_anchored_and_groups_are_replaced() {
        let mut route = Route::new(r"app\.(\w+)\.orders", "orders.$1_all", "shard", "r").unwrap();
        assert_eq!(
            routed(&mut route, "app.eu.orders").0,
            "orders.eu_all",
            "`$1_` is group 1, then `_`"
        );
        assert_eq!(
            routed(&mut route, "app.eu.orders_old").0,
            "app.eu.orders_old",
            "a partial match routes nothing"
        );
    }

    #[test]
    fn a_route_to_an_impossible_topic_is_rejected() {
        let mut route = Route::new(r"app\.(.*)", "app/$1", "__table", "r").unwrap();
        match route.apply(shaped("app.public.t")) {
            Step::Reject { reason, .. } => {
                assert!(reason.contains("`/` is not allowed"), "{reason}")
            }
            _ => panic!("not rejected"),
        }
    }

    #[test]
    fn bad_settings_name_their_key() {
        assert_eq!(
            Route::new("app.(", "x", "__table", "r").err().map(|e| e.0),
            Some("match")
        );
        let (key, message) = Route::new(r"app\.(\w+)", "x.$2", "__table", "r")
            .err()
            .unwrap();
        assert_eq!(key, "replace");
        assert!(message.contains("$2"), "{message}");
        assert_eq!(
            Route::new("a", "b", "2bad", "r").err().map(|e| e.0),
            Some("key_field")
        );
    }
}
