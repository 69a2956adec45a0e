//! Masking MongoDB documents, which travel as canonical Extended JSON text.
//!
//! The text is edited where it stands: a small scanner finds the spans of the values to mask and only
//! those are replaced, so that field order (part of a MongoDB document) and everything else is kept byte
//! for byte; parsing into `serde_json::Value` would not keep order without serde_json's `preserve_order`.
//!
//! A field path walks into subdocuments and into every subdocument of an array (of arrays, at any depth);
//! a path that ends on an array masks the array whole. An Extended JSON type wrapper (`{"$oid": …}`,
//! `{"$numberInt": …}`) is a value, never walked into. `_id` names the message key too. In
//! `updateDescription.updatedFields`, keyed by dotted path, a key equal to a masked path or inside one is
//! masked whole, a key that is a parent of one is walked into, and numeric segments (array positions) are
//! passed over.

use std::borrow::Cow;
use std::ops::Range;

use sluice_core::event::DocumentChange;

use super::mask_rules::{MaskWith, Masking, Pattern, REDACTED};
use super::wildcard_match;

/// A scanning error: where the text stops being JSON.
type Parse<T> = Result<T, String>;

/// Masks the change in place; Some(reason) when it must not be published. A text that is not JSON (which
/// the source never produces) is redacted whole, so that a dead letter does not carry it.
pub(super) fn mask(
    change: &mut DocumentChange,
    patterns: &[Pattern],
    masking: &Masking,
) -> Option<String> {
    let paths: Vec<&[String]> = patterns
        .iter()
        .filter(|p| p.names_collection(&change.database, &change.collection))
        .map(Pattern::path)
        .collect();
    if paths.is_empty() {
        return None;
    }
    let mut problem = None;
    let mut note = |result: Result<(), String>| {
        if let Err(reason) = result {
            problem.get_or_insert(reason);
        }
    };
    note(mask_key(&mut change.key, &paths, masking));
    for (what, text) in [
        ("before", change.before.as_mut()),
        ("after", change.after.as_mut()),
    ] {
        if let Some(text) = text {
            note(edit(text, what, masking, |walk, c| {
                walk.document(c, &paths)
            }));
        }
    }
    let updates = change
        .update
        .as_mut()
        .and_then(|u| u.updated_fields.as_mut());
    if let Some(text) = updates {
        let what = "updatedFields";
        note(edit(text, what, masking, |walk, c| walk.updates(c, &paths)));
    }
    problem
}

/// The key is the `_id` value: masked as the `_id` field is.
fn mask_key(key: &mut String, paths: &[&[String]], masking: &Masking) -> Result<(), String> {
    let named = |p: &&[String]| wildcard_match(&p[0], "_id");
    if !paths.iter().any(named) {
        return Ok(());
    }
    let whole = paths.iter().any(|p| p.len() == 1 && named(p));
    let was_null = key.trim() == "null";
    edit(key, "key", masking, |walk, c| walk.member(c, "_id", paths))?;
    if whole && masking.with() == MaskWith::Null && !was_null {
        return Err(
            "`_id` is the message key, and a key cannot be null: mask it with `hash` or `redact`"
                .into(),
        );
    }
    Ok(())
}

/// Runs `walk` over `text` and applies its edits; a text that is not JSON is redacted whole.
fn edit(
    text: &mut String,
    what: &str,
    masking: &Masking,
    walk: impl FnOnce(&mut Walk<'_>, &mut Cursor<'_>) -> Parse<()>,
) -> Result<(), String> {
    let mut walker = Walk {
        masking,
        edits: Vec::new(),
    };
    let mut cursor = Cursor {
        text: text.as_str(),
        at: 0,
    };
    match walk(&mut walker, &mut cursor).and_then(|()| cursor.end()) {
        Ok(()) if walker.edits.is_empty() => Ok(()),
        Ok(()) => {
            *text = splice(text, &walker.edits);
            Ok(())
        }
        Err(error) => {
            *text = format!("\"{REDACTED}\"");
            Err(format!(
                "the document's {what} is not JSON ({error}); it was masked whole"
            ))
        }
    }
}

/// `text` with each span replaced (spans in order, none overlapping).
fn splice(text: &str, edits: &[(Range<usize>, String)]) -> String {
    let added: usize = edits.iter().map(|(_, new)| new.len()).sum();
    let mut out = String::with_capacity(text.len() + added);
    let mut from = 0;
    for (span, new) in edits {
        out.push_str(&text[from..span.start]);
        out.push_str(new);
        from = span.end;
    }
    out.push_str(&text[from..]);
    out
}

/// Finds what to mask and what to put in its place.
struct Walk<'m> {
    masking: &'m Masking,
    edits: Vec<(Range<usize>, String)>,
}

impl Walk<'_> {
    /// The object at the cursor, as a document whose fields `paths` name (relative to it).
    fn document(&mut self, c: &mut Cursor<'_>, paths: &[&[String]]) -> Parse<()> {
        c.members(|c, name| self.member(c, &name, paths))
    }

    /// The value of the field `name`, at the cursor.
    fn member(&mut self, c: &mut Cursor<'_>, name: &str, paths: &[&[String]]) -> Parse<()> {
        if paths
            .iter()
            .any(|p| p.len() == 1 && wildcard_match(&p[0], name))
        {
            return self.replace(c);
        }
        let deeper: Vec<&[String]> = paths
            .iter()
            .filter(|p| p.len() > 1 && wildcard_match(&p[0], name))
            .map(|p| &p[1..])
            .collect();
        self.within(c, &deeper)
    }

    /// What `paths` name inside the value at the cursor: in a subdocument, or in each subdocument of an
    /// array; nothing in a value of another type.
    fn within(&mut self, c: &mut Cursor<'_>, paths: &[&[String]]) -> Parse<()> {
        match c.peek() {
            _ if paths.is_empty() => c.value().map(drop),
            Some(b'{') if !c.at_type_wrapper() => self.document(c, paths),
            Some(b'[') => c.elements(|c| self.within(c, paths)),
            _ => c.value().map(drop),
        }
    }

    /// `updatedFields`: an object keyed by dotted path.
    fn updates(&mut self, c: &mut Cursor<'_>, paths: &[&[String]]) -> Parse<()> {
        c.members(|c, key| {
            let mut deeper = Vec::new();
            for path in paths {
                match reach(&key, path) {
                    Some(n) if n == path.len() => return self.replace(c),
                    Some(n) => deeper.push(&path[n..]),
                    None => {}
                }
            }
            self.within(c, &deeper)
        })
    }

    /// Masks the value at the cursor.
    fn replace(&mut self, c: &mut Cursor<'_>) -> Parse<()> {
        let span = c.value()?;
        let json = &c.text[span.clone()];
        if json == "null" {
            return Ok(());
        }
        let new = match self.masking.with() {
            MaskWith::Null => "null".to_owned(),
            MaskWith::Redact => format!("\"{REDACTED}\""),
            MaskWith::Hash => format!("\"{}\"", self.masking.digest(hash_text(json)?.as_bytes())),
        };
        self.edits.push((span, new));
        Ok(())
    }
}

/// How many segments of `path` the dotted `key` covers (all of them: the key is the path or inside it);
/// None when the key leaves the path. Array positions in the key are passed over.
fn reach(key: &str, path: &[String]) -> Option<usize> {
    let mut matched = 0;
    for segment in key.split('.') {
        if matched == path.len() {
            break;
        }
        if wildcard_match(&path[matched], segment) {
            matched += 1;
        } else if segment.is_empty() || !segment.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    }
    Some(matched)
}

/// What is hashed for a value: a string's characters, or any other value's compact JSON text.
fn hash_text(json: &str) -> Parse<Cow<'_, str>> {
    let Some(inner) = json.strip_prefix('"').and_then(|j| j.strip_suffix('"')) else {
        return Ok(compact(json));
    };
    if !inner.contains('\\') {
        return Ok(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(json)
        .map(Cow::Owned)
        .map_err(|e| e.to_string())
}

/// JSON text without whitespace outside strings.
fn compact(json: &str) -> Cow<'_, str> {
    if !json.bytes().any(is_space) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for ch in json.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == '"' {
                in_string = false;
            }
        } else if ch == '"' {
            in_string = true;
        } else if ch.is_ascii() && is_space(ch as u8) {
            continue;
        }
        out.push(ch);
    }
    Cow::Owned(out)
}

fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

/// A position in JSON text: finds where values are, without building them.
struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn byte(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    /// The next byte that is not whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        while self.byte().is_some_and(is_space) {
            self.at += 1;
        }
        self.byte()
    }

    fn eat(&mut self, expected: u8) -> Parse<()> {
        if self.peek() != Some(expected) {
            return Err(self.unexpected(&format!("`{}`", char::from(expected))));
        }
        self.at += 1;
        Ok(())
    }

    fn unexpected(&self, expected: &str) -> String {
        format!("expected {expected} at byte {}", self.at)
    }

    /// Only whitespace is left.
    fn end(&mut self) -> Parse<()> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(self.unexpected("the end")),
        }
    }

    /// A string's span, quotes included. Quotes and backslashes never occur inside a multi-byte
    /// character, so scanning bytes stays on character boundaries.
    fn string(&mut self) -> Parse<Range<usize>> {
        self.eat(b'"')?;
        let start = self.at - 1;
        loop {
            match self.byte() {
                Some(b'"') => {
                    self.at += 1;
                    return Ok(start..self.at);
                }
                Some(b'\\') => self.at += 2,
                Some(_) => self.at += 1,
                None => return Err(self.unexpected("the end of a string")),
            }
        }
    }

    /// The object at the cursor, member by member: `member` gets each name and consumes its value.
    fn members(
        &mut self,
        mut member: impl FnMut(&mut Self, Cow<'a, str>) -> Parse<()>,
    ) -> Parse<()> {
        self.eat(b'{')?;
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(());
        }
        loop {
            let span = self.string()?;
            let name = self.name(span)?;
            self.eat(b':')?;
            member(self, name)?;
            if self.close(b'}')? {
                return Ok(());
            }
        }
    }

    /// The array at the cursor, element by element: `element` consumes each.
    fn elements(&mut self, mut element: impl FnMut(&mut Self) -> Parse<()>) -> Parse<()> {
        self.eat(b'[')?;
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(());
        }
        loop {
            element(self)?;
            if self.close(b']')? {
                return Ok(());
            }
        }
    }

    /// After a member or an element: true at the closing bracket, false after a comma.
    fn close(&mut self, bracket: u8) -> Parse<bool> {
        match self.peek() {
            Some(b',') => {
                self.at += 1;
                Ok(false)
            }
            Some(b) if b == bracket => {
                self.at += 1;
                Ok(true)
            }
            _ => Err(self.unexpected(&format!("`,` or `{}`", char::from(bracket)))),
        }
    }

    /// A member name, unescaped.
    fn name(&self, span: Range<usize>) -> Parse<Cow<'a, str>> {
        let quoted = &self.text[span];
        let inner = &quoted[1..quoted.len() - 1];
        if !inner.contains('\\') {
            return Ok(Cow::Borrowed(inner));
        }
        serde_json::from_str(quoted)
            .map(Cow::Owned)
            .map_err(|e| e.to_string())
    }

    /// An Extended JSON type wrapper starts here: an object whose first name starts with `$`.
    fn at_type_wrapper(&self) -> bool {
        let rest = self.text[self.at + 1..].trim_start();
        rest.starts_with("\"$")
    }

    /// Skips the value at the cursor, returning its span.
    fn value(&mut self) -> Parse<Range<usize>> {
        let start = match self.peek() {
            Some(_) => self.at,
            None => return Err(self.unexpected("a value")),
        };
        match self.byte() {
            Some(b'"') => {
                self.string()?;
            }
            Some(b'{') => self.members(|c, _| c.value().map(drop))?,
            Some(b'[') => self.elements(|c| c.value().map(drop))?,
            _ => self.scalar()?,
        }
        Ok(start..self.at)
    }

    /// A number, `true`, `false` or `null`.
    fn scalar(&mut self) -> Parse<()> {
        let start = self.at;
        let word = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.');
        while self.byte().is_some_and(word) {
            self.at += 1;
        }
        let text = &self.text[start..self.at];
        let number = text.starts_with(|c: char| c == '-' || c.is_ascii_digit());
        if number || matches!(text, "true" | "false" | "null") {
            return Ok(());
        }
        self.at = start;
        Err(self.unexpected("a value"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::mask::Mask;
    use super::super::{Shaped, Step, Transform};
    use super::*;
    use sha2::{Digest, Sha256};
    use sluice_core::event::{DocumentSource, Op, SnapshotMarker, SourceEvent, UpdateDescription};

    fn change(key: &str, after: &str) -> Shaped {
        let event = SourceEvent::Document(DocumentChange {
            database: "shop".into(),
            collection: "customers".into(),
            op: Op::Create,
            key: key.into(),
            before: None,
            after: Some(after.into()),
            update: None,
            source: DocumentSource {
                replica_set: None,
                cluster_time: (1, 1),
                wall_time_ms: None,
                txn_number: None,
                lsid: None,
                resume_token: None,
                snapshot: SnapshotMarker::False,
            },
        });
        Shaped::new(event, "app").expect("a change")
    }

    fn mask(columns: &[&str], with: MaskWith) -> Mask {
        let columns: Vec<String> = columns.iter().map(|c| (*c).to_owned()).collect();
        let salt = (with == MaskWith::Hash).then_some("pepper");
        Mask::new(&columns, with, salt).unwrap_or_else(|(key, why)| panic!("{key}: {why}"))
    }

    fn document(step: Step) -> DocumentChange {
        match step {
            Step::Keep(Shaped {
                event: SourceEvent::Document(change),
                ..
            }) => change,
            Step::Keep(_) => panic!("not a document"),
            Step::Drop => panic!("dropped"),
            Step::Reject { reason, .. } => panic!("rejected: {reason}"),
        }
    }

    fn sha256_hex(text: &str) -> String {
        let digest = Sha256::digest(format!("pepper{text}"));
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    const KEY: &str = r#"{"$oid":"65f0c0ffee0000000000cafe"}"#;

    #[test]
    fn a_field_path_masks_a_nested_field_and_keeps_the_field_order() {
        let mut step = mask(
            &["shop.customers.address.zip", "shop.*.name"],
            MaskWith::Redact,
        );
        let after = r#"{"_id":{"$oid":"65f0c0ffee0000000000cafe"},"name":"Zoë","address":{"zip":"75001","city":"Paris"},"zip":"kept"}"#;
        let masked = document(step.apply(change(KEY, after)));
        assert_eq!(
            masked.after.unwrap(),
            r#"{"_id":{"$oid":"65f0c0ffee0000000000cafe"},"name":"****","address":{"zip":"****","city":"Paris"},"zip":"kept"}"#
        );
        assert_eq!(masked.key, KEY, "the key is not named");
    }

    #[test]
    fn hash_of_a_document_value_is_the_sha256_of_its_extended_json() {
        let mut step = mask(
            &["shop.customers.email", "shop.customers.age"],
            MaskWith::Hash,
        );
        let after = r#"{"email": "ann@example.com", "age": {"$numberInt": "5"}}"#;
        let masked = document(step.apply(change(KEY, after)));
        let email = sha256_hex("ann@example.com");
        let age = sha256_hex(r#"{"$numberInt":"5"}"#);
        let expected = format!(r#"{{"email": "{email}", "age": "{age}"}}"#);
        assert_eq!(
            masked.after.unwrap(),
            expected,
            "spacing kept, wrapper hashed compact"
        );
    }

    #[test]
    fn an_id_pattern_masks_the_key_and_the_field() {
        let mut step = mask(&["shop.customers._id"], MaskWith::Hash);
        let after = r#"{"_id":{"$oid":"65f0c0ffee0000000000cafe"},"n":1}"#;
        let masked = document(step.apply(change(KEY, after)));
        let hash = sha256_hex(KEY);
        assert_eq!(masked.key, format!("\"{hash}\""));
        assert_eq!(
            masked.after.unwrap(),
            format!(r#"{{"_id":"{hash}","n":1}}"#)
        );
        let mut nulls = mask(&["shop.customers._id"], MaskWith::Null);
        let Step::Reject { shaped, reason } = nulls.apply(change(KEY, after)) else {
            panic!("a null key was published");
        };
        assert!(reason.contains("`hash` or `redact`"), "{reason}");
        let SourceEvent::Document(rejected) = shaped.event else {
            panic!("not a document")
        };
        assert_eq!(rejected.key, "null", "the dead letter carries no original");
    }

    #[test]
    fn subdocuments_in_arrays_are_masked_and_type_wrappers_are_values() {
        let mut step = mask(
            &["shop.customers.cards.number", "shop.customers.age.*"],
            MaskWith::Redact,
        );
        let after = r#"{"cards":[{"number":"4111","exp":"12/30"},"loose",[{"number":"5500"}]],"age":{"$numberInt":"5"}}"#;
        let masked = document(step.apply(change(KEY, after)));
        assert_eq!(
            masked.after.unwrap(),
            r#"{"cards":[{"number":"****","exp":"12/30"},"loose",[{"number":"****"}]],"age":{"$numberInt":"5"}}"#
        );
    }

    #[test]
    fn updated_fields_are_masked_by_path_by_parent_and_by_array_position() {
        let mut step = mask(
            &["shop.customers.address.zip", "shop.customers.cards.number"],
            MaskWith::Null,
        );
        let mut shaped = change(KEY, r#"{"n":1}"#);
        let SourceEvent::Document(doc) = &mut shaped.event else {
            unreachable!()
        };
        let fields = r#"{"address.zip":"1","address":{"city":"X","zip":"2"},"cards.0":{"number":"3"},"cards.1.number":"4","zipcode":"5"}"#;
        doc.update = Some(UpdateDescription {
            updated_fields: Some(fields.into()),
            ..UpdateDescription::default()
        });
        let masked = document(step.apply(shaped));
        assert_eq!(
            masked.update.unwrap().updated_fields.unwrap(),
            r#"{"address.zip":null,"address":{"city":"X","zip":null},"cards.0":{"number":null},"cards.1.number":null,"zipcode":"5"}"#
        );
    }

    #[test]
    fn other_collections_pass_untouched_and_nulls_stay_null() {
        let mut step = mask(
            &["shop.orders.email", "shop.customers.email"],
            MaskWith::Hash,
        );
        let after = r#"{"email":null}"#;
        assert_eq!(
            document(step.apply(change(KEY, after))).after.unwrap(),
            after
        );
        let mut other = mask(&["shop.orders.email"], MaskWith::Redact);
        let text = r#"{"email":"a@b"}"#;
        assert_eq!(
            document(other.apply(change(KEY, text))).after.unwrap(),
            text
        );
    }

    #[test]
    fn a_document_that_is_not_json_is_rejected_masked_whole() {
        let mut step = mask(&["shop.customers.email"], MaskWith::Redact);
        let Step::Reject { shaped, reason } = step.apply(change(KEY, r#"{"email":"a@b""#)) else {
            panic!("not rejected");
        };
        assert!(reason.contains("after is not JSON"), "{reason}");
        let SourceEvent::Document(rejected) = shaped.event else {
            panic!("not a document")
        };
        assert_eq!(rejected.after.unwrap(), "\"****\"");
    }

    #[test]
    fn a_document_an_earlier_step_rejected_is_masked() {
        let mut step = mask(&["shop.customers.email"], MaskWith::Redact);
        let shaped = step.mask_rejected(change(KEY, r#"{"email":"a@b"}"#));
        let SourceEvent::Document(masked) = shaped.event else {
            panic!("not a document")
        };
        assert_eq!(masked.after.unwrap(), r#"{"email":"****"}"#);
    }

    #[test]
    fn escaped_names_and_spaced_values_are_read_as_json() {
        assert_eq!(compact("{ \"a b\" : [1, 2] }"), "{\"a b\":[1,2]}");
        assert_eq!(hash_text(r#""caf\u00e9""#).unwrap(), "café");
        let mut step = mask(&["shop.customers.e-mail"], MaskWith::Redact);
        let masked = document(step.apply(change(KEY, r#"{"e\u002dmail":"x"}"#)));
        assert_eq!(masked.after.unwrap(), r#"{"e\u002dmail":"****"}"#);
        assert_eq!(reach("a.0.b", &["a".into(), "b".into()]), Some(2));
        assert_eq!(reach("ab.b", &["a".into(), "b".into()]), None);
    }
}
