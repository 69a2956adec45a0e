//! The text forms of PostgreSQL's structured values — arrays (`array_out`), composite values
//! (`record_out`) and hstore — split into their elements, still as text. `types` parses the elements as
//! their own types.

/// An array's text split into elements; nested lists for multi-dimensional arrays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArrayText {
    List(Vec<ArrayText>),
    /// One element; `None` for NULL.
    Element(Option<String>),
}

/// Why a text form does not parse; the caller adds the text and the type.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StructureError(pub(super) &'static str);

/// An array's text split: its bounds decoration when PostgreSQL printed one (`[0:1]` of `[0:1]={a,b}`,
/// printed when a lower bound is not 1) and its elements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitArray<'a> {
    pub bounds: Option<&'a str>,
    pub list: ArrayText,
}

/// Splits `{1,2,NULL}`, `{{1,2},{3,4}}` or `[0:1]={a,b}`. Elements are separated by `delimiter` (`;` for
/// box, `,` for everything else).
pub fn split_array(text: &str, delimiter: u8) -> Result<SplitArray<'_>, StructureError> {
    let mut parser = Parser::new(text);
    let mut bounds = None;
    if parser.peek() == Some(b'[') {
        while parser.next() != Some(b'=') {
            let b = parser
                .peek()
                .ok_or(StructureError("unterminated dimension prefix"))?;
            if !(b.is_ascii_digit() || b"[]:-=".contains(&b)) {
                return Err(StructureError("unexpected text in the dimension prefix"));
            }
        }
        bounds = Some(&text[..parser.at - 1]);
    }
    let list = parser.array_list(delimiter, 0)?;
    if !parser.at_end() {
        return Err(StructureError("text after the closing brace"));
    }
    Ok(SplitArray { bounds, list })
}

impl ArrayText {
    /// The lengths of the dimensions, read along the first element of each (PostgreSQL's arrays are
    /// rectangular); empty for `{}`, which has no dimensions.
    pub fn lengths(&self) -> Vec<usize> {
        let mut lengths = Vec::new();
        let mut at = self;
        while let ArrayText::List(items) = at {
            let Some(first) = items.first() else { break };
            lengths.push(items.len());
            at = first;
        }
        lengths
    }
}

/// Splits `(1,"a b",,"")` into its fields; an empty unquoted field is NULL, `""` the empty string.
pub fn split_record(text: &str) -> Result<Vec<Option<String>>, StructureError> {
    let mut parser = Parser::new(text);
    parser.expect(b'(', "expected `(`")?;
    let mut fields = Vec::new();
    loop {
        fields.push(parser.record_field()?);
        match parser.next() {
            Some(b',') => continue,
            Some(b')') => break,
            _ => return Err(StructureError("expected `,` or `)` after a field")),
        }
    }
    if !parser.at_end() {
        return Err(StructureError("text after the closing parenthesis"));
    }
    Ok(fields)
}

/// Splits `"a"=>"1", "b"=>NULL` into pairs, in the order printed.
pub fn split_hstore(text: &str) -> Result<Vec<(String, Option<String>)>, StructureError> {
    let mut parser = Parser::new(text);
    let mut pairs = Vec::new();
    while !parser.at_end() {
        if !pairs.is_empty() {
            parser.expect(b',', "expected `,` between pairs")?;
            parser.expect(b' ', "expected a space after `,`")?;
        }
        let key = parser.quoted()?;
        parser.expect(b'=', "expected `=>`")?;
        parser.expect(b'>', "expected `=>`")?;
        let value = if parser.eat_word("NULL") {
            None
        } else {
            Some(parser.quoted()?)
        };
        pairs.push((key, value));
    }
    Ok(pairs)
}

/// Nested arrays deeper than PostgreSQL allows (MAXDIM) are malformed.
const MAX_DIMENSIONS: usize = 6;

struct Parser<'a> {
    text: &'a [u8],
    at: usize,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        Parser {
            text: text.as_bytes(),
            at: 0,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    fn at_end(&self) -> bool {
        self.at >= self.text.len()
    }

    fn expect(&mut self, b: u8, what: &'static str) -> Result<(), StructureError> {
        if self.next() == Some(b) {
            Ok(())
        } else {
            Err(StructureError(what))
        }
    }

    fn eat_word(&mut self, word: &str) -> bool {
        if self.text[self.at..].starts_with(word.as_bytes()) {
            self.at += word.len();
            true
        } else {
            false
        }
    }

    /// `{…}` at the cursor: elements or nested lists.
    fn array_list(&mut self, delimiter: u8, depth: usize) -> Result<ArrayText, StructureError> {
        if depth >= MAX_DIMENSIONS {
            return Err(StructureError("more than 6 dimensions"));
        }
        self.expect(b'{', "expected `{`")?;
        let mut items = Vec::new();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(ArrayText::List(items));
        }
        loop {
            let item = if self.peek() == Some(b'{') {
                self.array_list(delimiter, depth + 1)?
            } else {
                ArrayText::Element(self.array_element(delimiter)?)
            };
            items.push(item);
            match self.next() {
                Some(b'}') => return Ok(ArrayText::List(items)),
                Some(b) if b == delimiter => continue,
                _ => {
                    return Err(StructureError(
                        "expected a delimiter or `}` after an element",
                    ))
                }
            }
        }
    }

    /// A quoted element, or an unquoted one up to the delimiter or `}` (`NULL` unquoted is null).
    fn array_element(&mut self, delimiter: u8) -> Result<Option<String>, StructureError> {
        if self.peek() == Some(b'"') {
            return self.quoted().map(Some);
        }
        let start = self.at;
        while let Some(b) = self.peek() {
            if b == delimiter || b == b'}' {
                break;
            }
            if matches!(b, b'{' | b'"' | b'\\') {
                return Err(StructureError(
                    "unexpected character in an unquoted element",
                ));
            }
            self.at += 1;
        }
        let raw = &self.text[start..self.at];
        if raw.is_empty() {
            return Err(StructureError("empty unquoted element"));
        }
        if raw == b"NULL" {
            return Ok(None);
        }
        Ok(Some(utf8(raw)?))
    }

    /// `"…"` with backslash escapes (arrays, hstore).
    fn quoted(&mut self) -> Result<String, StructureError> {
        self.expect(b'"', "expected `\"`")?;
        let mut out = Vec::new();
        loop {
            match self.next() {
                Some(b'"') => return utf8(&out),
                Some(b'\\') => out.push(self.next().ok_or(StructureError("unterminated quote"))?),
                Some(b) => out.push(b),
                None => return Err(StructureError("unterminated quote")),
            }
        }
    }

    /// One composite field up to `,` or `)`: quoted parts (`""` is a quote inside them), backslash escapes,
    /// and unquoted characters may mix; nothing at all is NULL.
    fn record_field(&mut self) -> Result<Option<String>, StructureError> {
        let mut out = Vec::new();
        let mut seen_anything = false;
        let mut quoted = false;
        loop {
            let Some(b) = self.peek() else {
                return Err(StructureError("unterminated composite value"));
            };
            match b {
                b',' | b')' if !quoted => break,
                b'"' => {
                    self.at += 1;
                    if quoted && self.peek() == Some(b'"') {
                        self.at += 1;
                        out.push(b'"');
                    } else {
                        quoted = !quoted;
                    }
                }
                b'\\' => {
                    self.at += 1;
                    out.push(self.next().ok_or(StructureError("unterminated escape"))?);
                }
                b => {
                    self.at += 1;
                    out.push(b);
                }
            }
            seen_anything = true;
        }
        if seen_anything {
            utf8(&out).map(Some)
        } else {
            Ok(None)
        }
    }
}

fn utf8(bytes: &[u8]) -> Result<String, StructureError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| StructureError("not valid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element(text: &str) -> ArrayText {
        ArrayText::Element(Some(text.into()))
    }

    #[test]
    fn arrays_split_into_elements() {
        let list = |text| split_array(text, b',').unwrap().list;
        assert_eq!(list("{}"), ArrayText::List(vec![]));
        assert_eq!(
            list(r#"{1,NULL,"NULL","",  x ,"a\"b\\c","{a,b}"}"#),
            ArrayText::List(vec![
                element("1"),
                ArrayText::Element(None),
                element("NULL"),
                element(""),
                element("  x "),
                element(r#"a"b\c"#),
                element("{a,b}"),
            ])
        );
        assert_eq!(
            list("{{1,2},{3,NULL}}"),
            ArrayText::List(vec![
                ArrayText::List(vec![element("1"), element("2")]),
                ArrayText::List(vec![element("3"), ArrayText::Element(None)]),
            ])
        );
        assert_eq!(
            split_array(r#"[0:1]={a,"b c"}"#, b',').unwrap(),
            SplitArray {
                bounds: Some("[0:1]"),
                list: ArrayText::List(vec![element("a"), element("b c")])
            }
        );
        assert_eq!(split_array("{1}", b',').unwrap().bounds, None);
        assert_eq!(
            split_array("{(3,4),(1,2);(7,8),(5,6)}", b';').unwrap().list,
            ArrayText::List(vec![element("(3,4),(1,2)"), element("(7,8),(5,6)")])
        );
        assert_eq!(list("{{1,2,3},{4,5,6}}").lengths(), [2, 3]);
        assert_eq!(list("{}").lengths(), Vec::<usize>::new());
    }

    #[test]
    fn malformed_arrays_are_refused() {
        for bad in [
            "",
            "{",
            "{1,",
            "{1,}",
            "{,1}",
            "1,2",
            "{1}x",
            "{\"a}",
            "[0:1",
            "[0:1]x={1}",
            "{{{{{{{1}}}}}}}",
            "{a\"b}",
        ] {
            assert!(split_array(bad, b',').is_err(), "{bad:?}");
        }
    }

    #[test]
    fn records_split_into_fields() {
        assert_eq!(
            split_record(r#"(1,"a""b\\c",,"")"#).unwrap(),
            vec![
                Some("1".into()),
                Some(r#"a"b\c"#.into()),
                None,
                Some(String::new())
            ]
        );
        assert_eq!(split_record("()").unwrap(), vec![None]);
        assert_eq!(
            split_record(r#"("(1,2)",x)"#).unwrap(),
            vec![Some("(1,2)".into()), Some("x".into())]
        );
        for bad in ["", "(", "(1", "(1,\"a)", "(1)x", "1,2"] {
            assert!(split_record(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hstore_splits_into_pairs() {
        assert_eq!(split_hstore("").unwrap(), vec![]);
        assert_eq!(
            split_hstore(r#""a"=>"1", "b"=>NULL, "c d"=>"x\"y""#).unwrap(),
            vec![
                ("a".into(), Some("1".into())),
                ("b".into(), None),
                ("c d".into(), Some("x\"y".into())),
            ]
        );
        for bad in [r#""a"=>"#, r#""a"=>"1","b"=>"2""#, r#"a=>1"#, r#""a"->"1""#] {
            assert!(split_hstore(bad).is_err(), "{bad:?}");
        }
    }
}
