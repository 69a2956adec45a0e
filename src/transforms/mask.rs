//! `type = "mask"`: replaces the values of named columns (or document field paths) with a salted hash,
//! null or `"****"`.
//!
//! A pattern is `schema.table.column` (PostgreSQL) or `db.collection.field.path` (MongoDB); `*` matches
//! within one segment. `hash` is the lowercase hex SHA-256 of the salt followed by the value's JSON text:
//! a string's characters, any other value's compact JSON (rows: as in dead letters; documents: canonical
//! Extended JSON). Nulls stay null, and an unchanged TOAST value (not sent) stays as it is.
//!
//! Rows: a masked column becomes a string column in the event's table (a rewritten `Arc<Table>`, one per
//! table version, so that the encoders' schema caches keep working), and its values strings or nulls. A
//! key column masked with `null` would make a null key: every event of its table is rejected, handed back
//! with all the named columns masked, the key column nulled too (a dead letter is JSON, where a null key is
//! harmless), so that no original reaches the dead-letter topic. Documents: see
//! [`mask_document`](super::mask_document).

use std::collections::hash_map::{Entry, HashMap};
use std::sync::Arc;

use sluice_core::event::{ChangeEvent, ColumnType, SourceEvent, Table};

use super::mask_rules::{MaskWith, Masking, Pattern, FORM};
use super::{mask_document, KeyProblem, Shaped, Step, Transform};

/// The step.
pub struct Mask {
    patterns: Vec<Pattern>,
    masking: Masking,
    tables: Tables,
}

impl Mask {
    pub fn new(columns: &[String], with: MaskWith, salt: Option<&str>) -> Result<Mask, KeyProblem> {
        if columns.is_empty() {
            return Err((
                "columns",
                format!("is empty: name at least one column, as {FORM}"),
            ));
        }
        let patterns = columns
            .iter()
            .map(|text| Pattern::parse(text))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|message| ("columns", message))?;
        let salt = match (with, salt) {
            (MaskWith::Hash, Some(salt)) if !salt.is_empty() => salt,
            (MaskWith::Hash, _) => {
                return Err((
                    "salt",
                    "is required with `with = \"hash\"`: an unsalted hash of an email or a phone number \
                     is reversed by hashing guesses; set a secret salt (`salt = \"${MASK_SALT}\"`)"
                        .into(),
                ))
            }
            (_, Some(_)) => {
                let with = if with == MaskWith::Null { "null" } else { "redact" };
                return Err((
                    "salt",
                    format!("has no effect with `with = \"{with}\"`: only `hash` uses a salt; remove it"),
                ));
            }
            (_, None) => "",
        };
        Ok(Mask {
            patterns,
            masking: Masking::new(with, salt),
            tables: Tables::default(),
        })
    }

    /// Masks the event in place, as far as it can; Some(reason) when it must not be published.
    fn mask(&mut self, event: &mut SourceEvent) -> Option<String> {
        match event {
            SourceEvent::Change(change) => self.mask_change(change),
            SourceEvent::Document(change) => {
                mask_document::mask(change, &self.patterns, &self.masking)
            }
            _ => None,
        }
    }

    fn mask_change(&mut self, change: &mut ChangeEvent) -> Option<String> {
        let masked = self
            .tables
            .plan(&change.table, &self.patterns, self.masking.with())?;
        change.table = Arc::clone(&masked.table);
        for row in [change.before.as_mut(), change.after.as_mut()]
            .into_iter()
            .flatten()
        {
            for &at in &masked.columns {
                if let Some(value) = row.get_mut(at) {
                    self.masking.mask_value(value);
                }
            }
        }
        masked.null_key.clone()
    }
}

impl Transform for Mask {
    fn apply(&mut self, mut shaped: Shaped) -> Step {
        match self.mask(&mut shaped.event) {
            None => Step::Keep(shaped),
            // Handed back masked: the chain masks a rejected event only with the steps after this one.
            Some(reason) => Step::Reject { shaped, reason },
        }
    }

    fn mask_rejected(&mut self, mut shaped: Shaped) -> Shaped {
        self.mask(&mut shaped.event);
        shaped
    }

    fn hides(&self, (db, collection): (&str, &str)) -> bool {
        self.patterns
            .iter()
            .any(|p| p.names_collection(db, collection))
    }
}

/// What masking makes of each table, by relation id, for the version seen last.
#[derive(Default)]
struct Tables(HashMap<u32, TablePlan>);

struct TablePlan {
    source: Arc<Table>,
    /// None: no column of the table is masked.
    masked: Option<MaskedTable>,
}

struct MaskedTable {
    /// The source table with the masked columns typed as strings.
    table: Arc<Table>,
    /// The masked columns' places in a row.
    columns: Vec<usize>,
    /// Why every event of the table is rejected: a key column masked with null.
    null_key: Option<String>,
}

impl Tables {
    fn plan(
        &mut self,
        table: &Arc<Table>,
        patterns: &[Pattern],
        with: MaskWith,
    ) -> Option<&MaskedTable> {
        let plan = match self.0.entry(table.id) {
            Entry::Occupied(entry) => {
                let plan = entry.into_mut();
                if !Arc::ptr_eq(&plan.source, table) {
                    // An equal table keeps its rewritten Arc, so its schema is not registered again.
                    if *plan.source != **table {
                        plan.masked = MaskedTable::new(table, patterns, with);
                    }
                    plan.source = Arc::clone(table);
                }
                plan
            }
            Entry::Vacant(entry) => entry.insert(TablePlan {
                source: Arc::clone(table),
                masked: MaskedTable::new(table, patterns, with),
            }),
        };
        plan.masked.as_ref()
    }
}

impl MaskedTable {
    fn new(table: &Table, patterns: &[Pattern], with: MaskWith) -> Option<MaskedTable> {
        let columns: Vec<usize> = (0..table.columns.len())
            .filter(|&at| {
                let name = &table.columns[at].name;
                patterns.iter().any(|p| p.names_column(table, name))
            })
            .collect();
        if columns.is_empty() {
            return None;
        }
        let mut rewritten = table.clone();
        for &at in &columns {
            rewritten.columns[at].column_type = ColumnType::String;
        }
        let key = columns.iter().find(|&&at| table.columns[at].key);
        let null_key = key.filter(|_| with == MaskWith::Null).map(|&at| {
            format!(
                "`{}.{}` is a key column, and a key cannot be null: mask it with `hash` or `redact`",
                table.qualified_name(),
                table.columns[at].name
            )
        });
        Some(MaskedTable {
            table: Arc::new(rewritten),
            columns,
            null_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transforms::mask_rules::REDACTED;
    use crate::transforms::{Chain, Outcome};
    use sha2::{Digest, Sha256};
    use sluice_core::event::{Column, Lsn, Op, SnapshotMarker, SourceInfo, Value};

    fn table(
        id: u32,
        schema: &str,
        name: &str,
        columns: &[(&str, ColumnType, bool)],
    ) -> Arc<Table> {
        Arc::new(Table {
            id,
            schema: schema.into(),
            name: name.into(),
            columns: columns
                .iter()
                .map(|(name, column_type, key)| Column {
                    name: (*name).into(),
                    column_type: column_type.clone(),
                    key: *key,
                    source_type: "text".into(),
                    not_null: false,
                    precision: None,
                })
                .collect(),
        })
    }

    /// `public.customers (id int8 key, email text, ssn text)`.
    fn customers() -> Arc<Table> {
        let columns = [
            ("id", ColumnType::Int64, true),
            ("email", ColumnType::String, false),
            ("ssn", ColumnType::String, false),
        ];
        table(16384, "public", "customers", &columns)
    }

    fn change(table: &Arc<Table>, before: Option<Vec<Value>>, after: Option<Vec<Value>>) -> Shaped {
        let event = SourceEvent::Change(ChangeEvent {
            table: Arc::clone(table),
            op: if before.is_some() {
                Op::Update
            } else {
                Op::Create
            },
            before,
            after,
            source: SourceInfo {
                database: "app".into(),
                txid: Some(1),
                lsn: Lsn(1),
                commit_lsn: Lsn(1),
                commit_time_us: 0,
                snapshot: SnapshotMarker::False,
                order: None,
            },
        });
        Shaped::new(event, "app").expect("a change")
    }

    fn row(id: i64, email: &str, ssn: Value) -> Option<Vec<Value>> {
        Some(vec![Value::Int64(id), Value::String(email.into()), ssn])
    }

    fn mask(columns: &[&str], with: MaskWith, salt: Option<&str>) -> Mask {
        let columns: Vec<String> = columns.iter().map(|c| (*c).to_owned()).collect();
        Mask::new(&columns, with, salt).unwrap_or_else(|(key, why)| panic!("{key}: {why}"))
    }

    fn kept(step: Step) -> ChangeEvent {
        match step {
            Step::Keep(Shaped {
                event: SourceEvent::Change(change),
                ..
            }) => change,
            Step::Keep(_) => panic!("not a row change"),
            Step::Drop => panic!("dropped"),
            Step::Reject { reason, .. } => panic!("rejected: {reason}"),
        }
    }

    fn sha256_hex(salt: &str, text: &str) -> String {
        let digest = Sha256::digest([salt.as_bytes(), text.as_bytes()].concat());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn hash_of_a_text_column_is_the_salted_sha256_of_its_text() {
        let mut step = mask(&["public.customers.email"], MaskWith::Hash, Some("pepper"));
        let t = customers();
        let after = kept(step.apply(change(&t, None, row(1, "ann@example.com", Value::Null))));
        let expected = sha256_hex("pepper", "ann@example.com");
        assert_eq!(expected.len(), 64);
        let rows = after.after.expect("after");
        assert_eq!(rows[1], Value::String(expected));
        assert_eq!(rows[0], Value::Int64(1), "other columns keep their values");
        let other = kept(step.apply(change(&t, None, row(2, "ann@example.com", Value::Null))));
        assert_eq!(other.after.unwrap()[1], rows[1], "equal values hash equal");
    }

    #[test]
    fn hash_of_an_integer_column_is_the_sha256_of_its_json_text() {
        let mut step = mask(&["public.customers.id"], MaskWith::Hash, Some("s"));
        let after = kept(step.apply(change(&customers(), None, row(42, "a", Value::Null))));
        let rows = after.after.unwrap();
        assert_eq!(rows[0], Value::String(sha256_hex("s", "42")));
        assert_eq!(after.table.columns[0].column_type, ColumnType::String);
    }

    #[test]
    fn null_and_redact_replace_values_and_keep_nulls_and_unchanged_toast() {
        let t = customers();
        let before = row(1, "old@example.com", Value::String("123".into()));
        let after = row(1, "new@example.com", Value::Null);
        let mut nulls = mask(
            &["public.customers.email", "public.customers.ssn"],
            MaskWith::Null,
            None,
        );
        let nulled = kept(nulls.apply(change(&t, before.clone(), after.clone())));
        assert_eq!(nulled.before.unwrap()[1..], [Value::Null, Value::Null]);
        assert_eq!(nulled.after.unwrap()[1..], [Value::Null, Value::Null]);
        let mut redact = mask(
            &["public.customers.email", "public.customers.ssn"],
            MaskWith::Redact,
            None,
        );
        let toast = row(1, "x", Value::UnchangedToast);
        let redacted = kept(redact.apply(change(&t, before, toast)));
        let stars = Value::String(REDACTED.into());
        assert_eq!(
            redacted.before.unwrap()[1..],
            [stars.clone(), stars.clone()]
        );
        assert_eq!(redacted.after.unwrap()[1..], [stars, Value::UnchangedToast]);
        let nulls_stay = kept(redact.apply(change(&t, None, after)));
        assert_eq!(nulls_stay.after.unwrap()[2], Value::Null);
    }

    #[test]
    fn a_wildcard_pattern_masks_the_column_in_every_table_it_matches() {
        let mut step = mask(&["*.*.ssn"], MaskWith::Redact, None);
        let stars = Value::String(REDACTED.into());
        let staff = table(2, "hr", "staff", &[("ssn", ColumnType::String, false)]);
        let masked = kept(step.apply(change(&staff, None, Some(vec![Value::String("1".into())]))));
        assert_eq!(masked.after.unwrap()[0], stars);
        let masked = kept(step.apply(change(
            &customers(),
            None,
            row(1, "a", Value::String("9".into())),
        )));
        assert_eq!(masked.after.unwrap()[2], stars);
        let other = table(
            3,
            "hr",
            "badges",
            &[("ssn_hint", ColumnType::String, false)],
        );
        let untouched =
            kept(step.apply(change(&other, None, Some(vec![Value::String("1".into())]))));
        assert_eq!(untouched.after.unwrap(), [Value::String("1".into())]);
    }

    #[test]
    fn a_masked_key_column_is_masked_in_the_key_and_typed_as_a_string() {
        let mut step = mask(&["public.customers.id"], MaskWith::Redact, None);
        let t = customers();
        let masked = kept(step.apply(change(
            &t,
            row(7, "a", Value::Null),
            row(7, "b", Value::Null),
        )));
        let column = &masked.table.columns[0];
        assert_eq!(column.column_type, ColumnType::String);
        assert!(column.key, "still the key");
        assert_eq!(
            (column.name.as_str(), column.source_type.as_str()),
            ("id", "text")
        );
        assert_eq!(
            masked.table.columns[1], t.columns[1],
            "other columns keep their types"
        );
        assert_eq!(masked.key_row().unwrap()[0], Value::String(REDACTED.into()));
        assert_eq!(masked.before.unwrap()[0], Value::String(REDACTED.into()));
    }

    #[test]
    fn a_key_column_masked_with_null_is_rejected_with_every_named_column_masked() {
        let mut step = mask(
            &["public.customers.id", "public.customers.email"],
            MaskWith::Null,
            None,
        );
        let Step::Reject { shaped, reason } =
            step.apply(change(&customers(), None, row(7, "a", Value::Null)))
        else {
            panic!("a null key was published");
        };
        assert!(
            reason.contains("`public.customers.id` is a key column"),
            "{reason}"
        );
        assert!(reason.contains("`hash` or `redact`"), "{reason}");
        let SourceEvent::Change(change) = shaped.event else {
            panic!("not a row")
        };
        assert_eq!(
            change.after.unwrap()[..2],
            [Value::Null, Value::Null],
            "the dead letter carries no original"
        );
    }

    #[test]
    fn every_event_of_one_table_version_carries_the_same_rewritten_table() {
        let mut step = mask(&["public.customers.email"], MaskWith::Redact, None);
        let t = customers();
        let first = kept(step.apply(change(&t, None, row(1, "a", Value::Null))));
        let second = kept(step.apply(change(&t, None, row(2, "b", Value::Null))));
        assert!(Arc::ptr_eq(&first.table, &second.table));
        assert!(!Arc::ptr_eq(&first.table, &t), "rewritten");
        let equal = Arc::new((*t).clone());
        let third = kept(step.apply(change(&equal, None, row(3, "c", Value::Null))));
        assert!(
            Arc::ptr_eq(&first.table, &third.table),
            "an equal table is the same version"
        );
        let mut altered = (*t).clone();
        altered.columns.push(Column {
            name: "phone".into(),
            column_type: ColumnType::String,
            key: false,
            source_type: "text".into(),
            not_null: false,
            precision: None,
        });
        let altered = Arc::new(altered);
        let mut values = row(4, "d", Value::Null).unwrap();
        values.push(Value::String("555".into()));
        let fourth = kept(step.apply(change(&altered, None, Some(values))));
        assert!(
            !Arc::ptr_eq(&first.table, &fourth.table),
            "a new version is rebuilt"
        );
        assert_eq!(fourth.table.columns.len(), 4);
    }

    #[test]
    fn a_table_without_masked_columns_passes_untouched() {
        let mut step = mask(
            &["public.customers.email", "*.*.ssn"],
            MaskWith::Redact,
            None,
        );
        let orders = table(
            5,
            "public",
            "orders",
            &[("email_sent", ColumnType::Boolean, false)],
        );
        let untouched = kept(step.apply(change(&orders, None, Some(vec![Value::Bool(true)]))));
        assert!(Arc::ptr_eq(&untouched.table, &orders));
        assert_eq!(untouched.after.unwrap(), [Value::Bool(true)]);
    }

    fn refused(columns: &[&str], with: MaskWith, salt: Option<&str>) -> (&'static str, String) {
        let columns: Vec<String> = columns.iter().map(|c| (*c).to_owned()).collect();
        match Mask::new(&columns, with, salt) {
            Ok(_) => panic!("{columns:?} built"),
            Err(problem) => problem,
        }
    }

    #[test]
    fn build_refuses_what_cannot_mask_anything_or_would_not_protect() {
        let (key, why) = refused(&[], MaskWith::Redact, None);
        assert_eq!(
            (key, why.starts_with("is empty")),
            ("columns", true),
            "{why}"
        );
        let (key, why) = refused(&["public.email"], MaskWith::Redact, None);
        assert_eq!(key, "columns");
        assert!(why.contains("`public.email` names no column"), "{why}");
        let (_, why) = refused(&["a.b.c", "public..email"], MaskWith::Redact, None);
        assert!(
            why.contains("`public..email` has an empty segment"),
            "{why}"
        );
        for salt in [None, Some("")] {
            let (key, why) = refused(&["a.b.c"], MaskWith::Hash, salt);
            assert_eq!(key, "salt");
            assert!(why.contains("reversed by hashing guesses"), "{why}");
        }
        let (key, why) = refused(&["a.b.c"], MaskWith::Redact, Some("s"));
        assert_eq!(key, "salt");
        assert!(
            why.contains("has no effect with `with = \"redact\"`"),
            "{why}"
        );
        let (_, why) = refused(&["a.b.c"], MaskWith::Null, Some("s"));
        assert!(why.contains("`with = \"null\"`"), "{why}");
    }

    /// Rejects every event.
    struct Refuse;

    impl Transform for Refuse {
        fn apply(&mut self, shaped: Shaped) -> Step {
            Step::Reject {
                shaped,
                reason: "no".into(),
            }
        }
    }

    #[test]
    fn an_event_an_earlier_step_rejected_is_masked() {
        let step = mask(&["public.customers.email"], MaskWith::Redact, None);
        let mut chain = Chain::new("app", vec![Box::new(Refuse), Box::new(step)]);
        let Shaped { event, .. } =
            change(&customers(), None, row(1, "ann@example.com", Value::Null));
        let Outcome::Reject { shaped, .. } = chain.apply(event) else {
            panic!("not rejected");
        };
        let SourceEvent::Change(change) = shaped.event else {
            panic!("not a row")
        };
        assert_eq!(change.after.unwrap()[1], Value::String(REDACTED.into()));
        assert_eq!(change.table.columns[1].column_type, ColumnType::String);
    }
}
