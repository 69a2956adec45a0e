//! How a message names the schema that wrote it. With a registry: Confluent's wire format, a zero byte and
//! the schema's registry id (4 bytes, big-endian). Without one: Avro's single-object encoding, the marker
//! `C3 01` and the schema's CRC-64-AVRO fingerprint (8 bytes, little-endian), which a consumer looks up on
//! the schemas topic.

use serde_json::Value as Json;

/// The two bytes that open a single-object encoded message (Avro specification, "Single-object encoding").
pub const SINGLE_OBJECT_MARKER: [u8; 2] = [0xC3, 0x01];

/// The 8 fingerprint bytes as they appear in a single-object header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 8]);

impl Fingerprint {
    /// CRC-64-AVRO of the Parsing Canonical Form of a schema's JSON text, as the Java implementation
    /// (`SchemaNormalization.parsingFingerprint64`) computes it: logical types do not count. None when
    /// the text is not a schema.
    pub fn of_json(schema: &str) -> Option<Fingerprint> {
        let json: Json = serde_json::from_str(schema).ok()?;
        let mut canonical = String::new();
        canonical_form(&json, "", &mut Vec::new(), &mut canonical)?;
        Some(Fingerprint(crc64_avro(canonical.as_bytes()).to_le_bytes()))
    }

    /// The bytes in header order as 16 hex digits: the key of the schema's record on the schemas topic and
    /// the name of its file.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(text: &str) -> Option<Fingerprint> {
        if text.len() != 16 || !text.is_ascii() {
            return None;
        }
        let mut bytes = [0; 8];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Fingerprint(bytes))
    }
}

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// Appends the Parsing Canonical Form (Avro specification) of `schema`: primitives by name, full names,
/// only the attributes that shape the binary encoding, in the specification's order, no whitespace.
/// `namespace` is the enclosing one; `defined` the named types written so far (later uses are by name).
fn canonical_form(
    schema: &Json,
    namespace: &str,
    defined: &mut Vec<String>,
    out: &mut String,
) -> Option<()> {
    match schema {
        Json::String(name) if PRIMITIVES.contains(&name.as_str()) => out.push_str(&quoted(name)?),
        Json::String(name) => out.push_str(&quoted(&full_name(name, None, namespace))?),
        Json::Array(branches) => {
            out.push('[');
            for (i, branch) in branches.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_form(branch, namespace, defined, out)?;
            }
            out.push(']');
        }
        Json::Object(object) => canonical_object(object, namespace, defined, out)?,
        _ => return None,
    }
    Some(())
}

/// [`canonical_form`] of a schema written as an object: by its `type`.
fn canonical_object(
    object: &serde_json::Map<String, Json>,
    namespace: &str,
    defined: &mut Vec<String>,
    out: &mut String,
) -> Option<()> {
    let kind = object.get("type")?;
    let Some(kind) = kind.as_str() else {
        // `{"type": {...}}`: the inner schema is the schema.
        return canonical_form(kind, namespace, defined, out);
    };
    match kind {
        // Logical types and other attributes of a primitive do not change its encoding.
        _ if PRIMITIVES.contains(&kind) => out.push_str(&quoted(kind)?),
        "array" => {
            out.push_str(r#"{"type":"array","items":"#);
            canonical_form(object.get("items")?, namespace, defined, out)?;
            out.push('}');
        }
        "map" => {
            out.push_str(r#"{"type":"map","values":"#);
            canonical_form(object.get("values")?, namespace, defined, out)?;
            out.push('}');
        }
        "record" | "error" | "enum" | "fixed" => {
            canonical_named(object, kind, namespace, defined, out)?
        }
        // A reference to a named type, written as an object.
        other => out.push_str(&quoted(&full_name(other, None, namespace))?),
    }
    Some(())
}

/// [`canonical_form`] of a named type (`kind`: record, error, enum or fixed): in full where it is defined,
/// by its full name after that.
fn canonical_named(
    object: &serde_json::Map<String, Json>,
    kind: &str,
    namespace: &str,
    defined: &mut Vec<String>,
    out: &mut String,
) -> Option<()> {
    let name = object.get("name")?.as_str()?;
    let full = full_name(
        name,
        object.get("namespace").and_then(Json::as_str),
        namespace,
    );
    if defined.contains(&full) {
        out.push_str(&quoted(&full)?);
        return Some(());
    }
    defined.push(full.clone());
    out.push_str(&format!(
        r#"{{"name":{},"type":{}"#,
        quoted(&full)?,
        quoted(kind)?
    ));
    let inner_namespace = full.rsplit_once('.').map_or("", |(ns, _)| ns);
    match kind {
        "enum" => {
            out.push_str(r#","symbols":"#);
            out.push_str(&serde_json::to_string(object.get("symbols")?).ok()?);
        }
        "fixed" => {
            let size = match object.get("size")? {
                Json::Number(n) => n.as_u64()?,
                Json::String(text) => text.parse().ok()?,
                _ => return None,
            };
            out.push_str(&format!(r#","size":{size}"#));
        }
        _ => {
            out.push_str(r#","fields":["#);
            for (i, field) in object.get("fields")?.as_array()?.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let field_name = field.get("name")?.as_str()?;
                out.push_str(&format!(r#"{{"name":{},"type":"#, quoted(field_name)?));
                canonical_form(field.get("type")?, inner_namespace, defined, out)?;
                out.push('}');
            }
            out.push(']');
        }
    }
    out.push('}');
    Some(())
}

/// `text` as a JSON string.
fn quoted(text: &str) -> Option<String> {
    serde_json::to_string(text).ok()
}

/// A name with a dot is already full; otherwise it takes its own namespace, or the enclosing one.
fn full_name(name: &str, own_namespace: Option<&str>, enclosing: &str) -> String {
    let namespace = own_namespace.unwrap_or(enclosing);
    if name.contains('.') || namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}.{name}")
    }
}

/// The Avro specification's 64-bit Rabin fingerprint (CRC-64-AVRO).
fn crc64_avro(bytes: &[u8]) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    static TABLE: std::sync::OnceLock<[u64; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut table = [0u64; 256];
        for (i, entry) in table.iter_mut().enumerate() {
            let mut fp = i as u64;
            for _ in 0..8 {
                fp = (fp >> 1) ^ (EMPTY & (fp & 1).wrapping_neg());
            }
            *entry = fp;
        }
        table
    });
    bytes.iter().fold(EMPTY, |fp, byte| {
        (fp >> 8) ^ table[((fp ^ u64::from(*byte)) & 0xff) as usize]
    })
}

/// What a message header points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SchemaRef {
    RegistryId(u32),
    Fingerprint(Fingerprint),
}

impl std::fmt::Display for SchemaRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SchemaRef::RegistryId(id) => write!(f, "registry id {id}"),
            SchemaRef::Fingerprint(fingerprint) => write!(f, "fingerprint {}", fingerprint.hex()),
        }
    }
}

impl SchemaRef {
    /// Appends the header that precedes the Avro body.
    pub fn write_header(self, out: &mut Vec<u8>) {
        match self {
            SchemaRef::RegistryId(id) => {
                out.push(0);
                out.extend_from_slice(&id.to_be_bytes());
            }
            SchemaRef::Fingerprint(fingerprint) => {
                out.extend_from_slice(&SINGLE_OBJECT_MARKER);
                out.extend_from_slice(&fingerprint.0);
            }
        }
    }

    /// Splits a framed message into the schema it names and the Avro body; None when it has neither header.
    pub fn split(message: &[u8]) -> Option<(SchemaRef, &[u8])> {
        match message {
            [0, a, b, c, d, body @ ..] => Some((
                SchemaRef::RegistryId(u32::from_be_bytes([*a, *b, *c, *d])),
                body,
            )),
            [0xC3, 0x01, rest @ ..] if rest.len() >= 8 => {
                let (fingerprint, body) = rest.split_at(8);
                let mut bytes = [0; 8];
                bytes.copy_from_slice(fingerprint);
                Some((SchemaRef::Fingerprint(Fingerprint(bytes)), body))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use apache_avro::types::Value as Avro;

    use super::*;

    #[test]
    fn confluent_header_is_magic_byte_and_big_endian_id() {
        let mut out = vec![9];
        SchemaRef::RegistryId(0x0102_0304).write_header(&mut out);
        assert_eq!(out, [9, 0, 1, 2, 3, 4]);
        assert_eq!(
            SchemaRef::split(&out[1..]),
            Some((SchemaRef::RegistryId(0x0102_0304), &[][..]))
        );
    }

    /// Reference fingerprints from the Avro project's shared test data (computed by the Java
    /// implementation), as signed longs.
    #[test]
    fn fingerprints_match_the_reference_values() {
        let cases: [(&str, i64); 10] = [
            (r#""null""#, 7195948357588979594),
            (r#"{"type":"int"}"#, 8247732601305521295),
            (r#"[ "int" , {"type":"boolean"} ]"#, 5392556393470105090),
            (
                r#"{"fields":[], "type":"record", "name":"foo", "namespace":"x.y"}"#,
                5916914534497305771,
            ),
            (
                r#"{"fields":[], "type":"record", "name":"a.b.foo", "namespace":"x.y"}"#,
                -4616218487480524110,
            ),
            (
                r#"{ "fields":[{"type":"boolean", "aliases":[], "name":"f1", "default":"true"},
                    {"order":"descending","name":"f2","doc":"Hello","type":"int"}],
                    "type":"record", "name":"foo"}"#,
                -4860222112080293046,
            ),
            (
                r#"{"namespace":"x.y.z", "type":"enum", "name":"foo", "doc":"foo bar", "symbols":["A1", "A2"]}"#,
                -4448647247586288245,
            ),
            (
                r#"{"namespace":"x.y.z", "type":"fixed", "name":"foo", "doc":"foo bar", "size":32}"#,
                -3064184465700546786,
            ),
            (
                r#"{ "values":"string", "type":"map"}"#,
                -8732877298790414990,
            ),
            (
                r#"{"name":"PigValue","type":"record",
                    "fields":[{"name":"value", "type":["null", "int", "long", "PigValue"]}]}"#,
                -1759257747318642341,
            ),
        ];
        for (schema, expected) in cases {
            let fingerprint = Fingerprint::of_json(schema).unwrap();
            assert_eq!(
                fingerprint,
                Fingerprint((expected as u64).to_le_bytes()),
                "{schema}"
            );
        }
        assert_eq!(Fingerprint::of_json("{"), None);
    }

    #[test]
    fn the_header_is_what_apache_avro_reads() {
        // apache-avro's single-object reader checks the marker and the fingerprint bytes it computes for a
        // schema without logical types (with them it departs from the Java implementation, which we follow).
        let text =
            r#"{"type":"record","name":"R","namespace":"n","fields":[{"name":"a","type":"long"}]}"#;
        let schema = apache_avro::Schema::parse_str(text).unwrap();
        let fingerprint = Fingerprint::of_json(text).unwrap();
        let mut message = Vec::new();
        SchemaRef::Fingerprint(fingerprint).write_header(&mut message);
        message.push(0x54); // zig-zag 42
        let reader = apache_avro::GenericSingleObjectReader::new(schema).unwrap();
        let value = reader.read_value(&mut &message[..]).unwrap();
        assert_eq!(value, Avro::Record(vec![("a".into(), Avro::Long(42))]));

        let (found, body) = SchemaRef::split(&message).unwrap();
        assert_eq!(found, SchemaRef::Fingerprint(fingerprint));
        assert_eq!(body, [0x54]);
        assert_eq!(Fingerprint::from_hex(&fingerprint.hex()), Some(fingerprint));
        assert_eq!(Fingerprint::from_hex("zz"), None);
    }

    #[test]
    fn logical_types_do_not_change_the_fingerprint_but_names_do() {
        // Parsing Canonical Form drops logicalType, precision and scale: schemas differing only there share
        // a fingerprint (which is why the pipeline refuses the second one).
        let of = |text: &str| Fingerprint::of_json(text).unwrap();
        assert_eq!(
            of(r#""long""#),
            of(r#"{"type":"long","logicalType":"timestamp-micros"}"#)
        );
        assert_eq!(
            of(r#""bytes""#),
            of(r#"{"type":"bytes","logicalType":"decimal","precision":5,"scale":2}"#)
        );
        let a = of(r#"{"type":"record","name":"A","fields":[]}"#);
        assert_ne!(a, of(r#"{"type":"record","name":"B","fields":[]}"#));
    }
}
