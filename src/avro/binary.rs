//! Avro binary encoding of primitive values (Avro specification, "Binary Encoding").
//!
//! Everything appends to a caller-owned buffer; nothing here can fail.

/// `int` and `long` share one encoding: zig-zag, then a little-endian base-128 varint.
pub fn write_long(value: i64, out: &mut Vec<u8>) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.push((zigzag as u8 & 0x7F) | 0x80);
        zigzag >>= 7;
    }
    out.push(zigzag as u8);
}

pub fn write_int(value: i32, out: &mut Vec<u8>) {
    write_long(i64::from(value), out);
}

pub fn write_boolean(value: bool, out: &mut Vec<u8>) {
    out.push(u8::from(value));
}

pub fn write_float(value: f32, out: &mut Vec<u8>) {
    out.extend_from_slice(&value.to_le_bytes());
}

pub fn write_double(value: f64, out: &mut Vec<u8>) {
    out.extend_from_slice(&value.to_le_bytes());
}

/// `bytes`: length as a `long`, then the data.
pub fn write_bytes(value: &[u8], out: &mut Vec<u8>) {
    // A slice never exceeds isize::MAX bytes, so the length always fits an i64.
    write_long(value.len() as i64, out);
    out.extend_from_slice(value);
}

/// An Avro array or map body: one block of every item (its count, then the items as `write_item` writes
/// them), then the empty block that ends it; an empty array or map is the end block alone.
pub fn write_blocks<T, E>(
    items: &[T],
    out: &mut Vec<u8>,
    mut write_item: impl FnMut(&T, &mut Vec<u8>) -> Result<(), E>,
) -> Result<(), E> {
    if !items.is_empty() {
        // A slice never holds more than isize::MAX items.
        write_long(items.len() as i64, out);
        for item in items {
            write_item(item, out)?;
        }
    }
    write_long(0, out);
    Ok(())
}

/// `string`: UTF-8 bytes, encoded like `bytes`.
pub fn write_string(value: &str, out: &mut Vec<u8>) {
    write_bytes(value.as_bytes(), out);
}

/// A union value starts with the index of its branch.
pub fn write_union_branch(index: u32, out: &mut Vec<u8>) {
    write_long(i64::from(index), out);
}

/// Readers for tests that check encodings byte by byte.
#[cfg(test)]
pub mod tests_support {
    /// Reads one zig-zag varint, advancing `data`.
    pub fn read_long(data: &mut &[u8]) -> i64 {
        let mut raw: u64 = 0;
        let mut shift = 0;
        loop {
            let byte = data[0];
            *data = &data[1..];
            raw |= u64::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        (raw >> 1) as i64 ^ -((raw & 1) as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn long(value: i64) -> Vec<u8> {
        let mut out = Vec::new();
        write_long(value, &mut out);
        out
    }

    #[test]
    fn longs_use_zigzag_varints() {
        // The examples from the Avro specification.
        assert_eq!(long(0), [0x00]);
        assert_eq!(long(-1), [0x01]);
        assert_eq!(long(1), [0x02]);
        assert_eq!(long(-2), [0x03]);
        assert_eq!(long(2), [0x04]);
        assert_eq!(long(-64), [0x7F]);
        assert_eq!(long(64), [0x80, 0x01]);
        assert_eq!(
            long(i64::MAX),
            [0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]
        );
        assert_eq!(
            long(i64::MIN),
            [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]
        );
        for value in [
            0,
            1,
            -1,
            63,
            -64,
            64,
            1 << 40,
            -(1 << 40),
            i64::MAX,
            i64::MIN,
        ] {
            assert_eq!(tests_support::read_long(&mut long(value).as_slice()), value);
        }
    }

    #[test]
    fn strings_are_length_prefixed() {
        let mut out = Vec::new();
        write_string("foo", &mut out);
        assert_eq!(out, [0x06, b'f', b'o', b'o']);
        out.clear();
        write_string("", &mut out);
        assert_eq!(out, [0x00]);
    }

    #[test]
    fn floats_are_little_endian() {
        let mut out = Vec::new();
        write_float(1.0, &mut out);
        write_double(-2.0, &mut out);
        assert_eq!(out, [0, 0, 0x80, 0x3F, 0, 0, 0, 0, 0, 0, 0, 0xC0]);
    }
}
