//! Exact decimals as Avro `decimal` bytes: the unscaled integer in two's complement, big-endian, in as few
//! bytes as hold it (what Java's `BigInteger.toByteArray` produces, so every Avro reader agrees).
//!
//! The unscaled value arrives as decimal text of any length (PostgreSQL numerics have up to 147,455
//! digits), so the conversion is done here over 32-bit limbs rather than through a fixed-width integer; values
//! of up to 38 digits, nearly all of them, take an allocation-free path through `i128`.

use super::binary::write_bytes;

/// Why a decimal could not be encoded. Rendered after "column `x` (type): ".
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    /// The unscaled text is not an optional `-` followed by decimal digits.
    #[error("`{0}` is not a decimal number")]
    Malformed(String),
    /// Rescaling to the column's scale would drop non-zero digits.
    #[error("value {value} has scale {scale}, more than the column's scale {column_scale}")]
    ScaleTooLarge {
        value: String,
        scale: u32,
        column_scale: u32,
    },
    /// More significant digits than the column's precision allows.
    #[error("value {value} has {digits} digits, more than the column's precision {precision}")]
    PrecisionExceeded {
        value: String,
        digits: u64,
        precision: u32,
    },
}

/// A parsed unscaled value: sign and significant digits (no leading zeros; empty for zero).
struct Unscaled<'a> {
    negative: bool,
    digits: &'a str,
}

fn parse(unscaled: &str) -> Result<Unscaled<'_>, DecimalError> {
    let (negative, digits) = match unscaled.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, unscaled),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DecimalError::Malformed(unscaled.to_owned()));
    }
    Ok(Unscaled {
        negative,
        digits: digits.trim_start_matches('0'),
    })
}

/// Writes `unscaled × 10^-scale` as Avro decimal bytes at `column_scale`: padded with zeros when the value
/// has fewer fractional digits, trimmed when the extra ones are all zeros (exact either way), refused
/// otherwise. At most `precision` significant digits are accepted.
pub fn write_fixed_scale(
    unscaled: &str,
    scale: u32,
    precision: u32,
    column_scale: u32,
    out: &mut Vec<u8>,
) -> Result<(), DecimalError> {
    let value = parse(unscaled)?;
    let (digits, pad) = if scale >= column_scale {
        let drop = (scale - column_scale) as usize;
        let keep = value.digits.len().saturating_sub(drop);
        let (kept, dropped) = value.digits.split_at(keep);
        if dropped.bytes().any(|b| b != b'0') {
            return Err(DecimalError::ScaleTooLarge {
                value: display(unscaled, scale as usize),
                scale,
                column_scale,
            });
        }
        (kept, 0)
    } else {
        (value.digits, column_scale - scale)
    };
    let count = if digits.is_empty() {
        0
    } else {
        digits.len() as u64 + u64::from(pad)
    };
    if count > u64::from(precision) {
        return Err(DecimalError::PrecisionExceeded {
            value: display(unscaled, scale as usize),
            digits: count,
            precision,
        });
    }
    write_twos_complement(value.negative, digits, pad, out);
    Ok(())
}

/// Writes the unscaled value as Avro decimal bytes, whatever its size (for variable-scale decimals).
pub fn write_unscaled(unscaled: &str, out: &mut Vec<u8>) -> Result<(), DecimalError> {
    let value = parse(unscaled)?;
    write_twos_complement(value.negative, value.digits, 0, out);
    Ok(())
}

pub use sluice_core::decimal::unscale;

/// `unscaled × 10^-scale` as text: `-12345`, 2 → `-123.45`; `5`, 3 → `0.005`.
pub fn display(unscaled: &str, scale: usize) -> String {
    let (sign, digits) = match unscaled.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", unscaled),
    };
    if scale == 0 {
        return unscaled.to_owned();
    }
    if digits.len() > scale {
        let (int, frac) = digits.split_at(digits.len() - scale);
        format!("{sign}{int}.{frac}")
    } else {
        format!("{sign}0.{digits:0>scale$}")
    }
}

/// Writes the length-prefixed minimal two's-complement form of ±(digits followed by `pad` zeros).
fn write_twos_complement(negative: bool, digits: &str, pad: u32, out: &mut Vec<u8>) {
    if digits.len() as u64 + u64::from(pad) <= 38 {
        // 10^38 - 1 < i128::MAX: fits, no allocation.
        let mut magnitude: i128 = 0;
        for b in digits.bytes() {
            magnitude = magnitude * 10 + i128::from(b - b'0');
        }
        if !digits.is_empty() {
            for _ in 0..pad {
                magnitude *= 10;
            }
        }
        let value = if negative { -magnitude } else { magnitude };
        let bytes = value.to_be_bytes();
        write_bytes(minimal(&bytes), out);
    } else {
        let magnitude = magnitude_be(digits, pad);
        let bytes = if negative {
            negate(&magnitude)
        } else {
            positive(magnitude)
        };
        write_bytes(&bytes, out);
    }
}

/// Drops leading bytes that only repeat the sign.
fn minimal(bytes: &[u8]) -> &[u8] {
    let mut start = 0;
    while start + 1 < bytes.len() {
        let (head, next) = (bytes[start], bytes[start + 1]);
        let redundant = (head == 0x00 && next & 0x80 == 0) || (head == 0xFF && next & 0x80 != 0);
        if !redundant {
            break;
        }
        start += 1;
    }
    &bytes[start..]
}

/// The magnitude of (digits followed by `pad` zeros), big-endian, without leading zero bytes (empty for 0).
fn magnitude_be(digits: &str, pad: u32) -> Vec<u8> {
    // Little-endian base-2^32 limbs; nine decimal digits at a time (10^9 < 2^32).
    let mut limbs: Vec<u32> = Vec::with_capacity(digits.len() / 9 + 1);
    let mut multiply_add = |factor: u32, addend: u32| {
        let mut carry = u64::from(addend);
        for limb in limbs.iter_mut() {
            let product = u64::from(*limb) * u64::from(factor) + carry;
            *limb = product as u32;
            carry = product >> 32;
        }
        if carry != 0 {
            limbs.push(carry as u32);
        }
    };
    let bytes = digits.as_bytes();
    let mut chunk_start = 0;
    while chunk_start < bytes.len() {
        let chunk = &bytes[chunk_start..(chunk_start + 9).min(bytes.len())];
        let value = chunk
            .iter()
            .fold(0u32, |acc, b| acc * 10 + u32::from(b - b'0'));
        multiply_add(10u32.pow(chunk.len() as u32), value);
        chunk_start += chunk.len();
    }
    if !digits.is_empty() {
        let mut remaining = pad;
        while remaining > 0 {
            let step = remaining.min(9);
            multiply_add(10u32.pow(step), 0);
            remaining -= step;
        }
    }
    let mut be: Vec<u8> = limbs
        .iter()
        .rev()
        .flat_map(|limb| limb.to_be_bytes())
        .collect();
    let leading_zeros = be.iter().take_while(|b| **b == 0).count();
    be.drain(..leading_zeros);
    be
}

/// A non-negative magnitude as two's complement: a zero byte in front when the top bit is set.
fn positive(mut magnitude: Vec<u8>) -> Vec<u8> {
    if magnitude.first().is_none_or(|b| b & 0x80 != 0) {
        magnitude.insert(0, 0x00);
    }
    magnitude
}

/// The two's complement of -magnitude in the fewest bytes.
fn negate(magnitude: &[u8]) -> Vec<u8> {
    if magnitude.is_empty() {
        return vec![0x00];
    }
    let mut bytes: Vec<u8> = magnitude.iter().map(|b| !b).collect();
    for byte in bytes.iter_mut().rev() {
        let (sum, overflow) = byte.overflowing_add(1);
        *byte = sum;
        if !overflow {
            break;
        }
    }
    // The magnitude has no leading zero byte, so a leading 0xFF is never redundant; one is needed when the
    // result reads as non-negative (magnitude above 2^(8n-1)).
    if bytes[0] & 0x80 == 0 {
        bytes.insert(0, 0xFF);
    }
    bytes
}

/// The unscaled integer that two's-complement big-endian bytes hold, as decimal text: what the writers
/// above encode, read back (repeated division by 10, whatever the size).
pub fn unscaled_text(bytes: &[u8]) -> String {
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut magnitude: Vec<u8> = if negative {
        // Two's complement again gives the magnitude.
        let mut m: Vec<u8> = bytes.iter().map(|b| !b).collect();
        for byte in m.iter_mut().rev() {
            let (sum, overflow) = byte.overflowing_add(1);
            *byte = sum;
            if !overflow {
                break;
            }
        }
        m
    } else {
        bytes.to_vec()
    };
    let mut digits = Vec::new();
    while magnitude.iter().any(|b| *b != 0) {
        let mut remainder = 0u32;
        for byte in magnitude.iter_mut() {
            let current = (remainder << 8) | u32::from(*byte);
            *byte = (current / 10) as u8;
            remainder = current % 10;
        }
        digits.push(b'0' + remainder as u8);
    }
    if digits.is_empty() {
        digits.push(b'0');
    }
    if negative {
        digits.push(b'-');
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::unscaled_text as signed_be_to_decimal;
    use super::*;

    /// Reads a length-prefixed value back (lengths here are below 64, one varint byte).
    fn written(
        f: impl FnOnce(&mut Vec<u8>) -> Result<(), DecimalError>,
    ) -> Result<Vec<u8>, DecimalError> {
        let mut out = Vec::new();
        f(&mut out)?;
        assert_eq!(usize::from(out[0] / 2), out.len() - 1, "length prefix");
        Ok(out[1..].to_vec())
    }

    fn unscaled(text: &str) -> Vec<u8> {
        written(|out| write_unscaled(text, out)).unwrap()
    }

    #[test]
    fn small_values_match_java_big_integer() {
        assert_eq!(unscaled("0"), [0x00]);
        assert_eq!(unscaled("-0"), [0x00]);
        assert_eq!(unscaled("000"), [0x00]);
        assert_eq!(unscaled("1"), [0x01]);
        assert_eq!(unscaled("-1"), [0xFF]);
        assert_eq!(unscaled("127"), [0x7F]);
        assert_eq!(unscaled("128"), [0x00, 0x80]);
        assert_eq!(unscaled("-128"), [0x80]);
        assert_eq!(unscaled("-129"), [0xFF, 0x7F]);
        assert_eq!(unscaled("255"), [0x00, 0xFF]);
        assert_eq!(unscaled("256"), [0x01, 0x00]);
        assert_eq!(unscaled("-256"), [0xFF, 0x00]);
        assert_eq!(unscaled("-32768"), [0x80, 0x00]);
        assert_eq!(unscaled("0012345"), [0x30, 0x39]);
    }

    #[test]
    fn limb_path_agrees_with_i128_path() {
        let mut samples: Vec<i128> = vec![
            0,
            1,
            -1,
            127,
            128,
            -128,
            -129,
            255,
            256,
            -256,
            i128::from(u64::MAX),
            -i128::from(u64::MAX),
        ];
        let mut x: i128 = 7;
        while x.checked_mul(13).is_some() {
            x *= 13;
            samples.extend([x, -x, x + 1, -x - 1, x - 1, 1 - x]);
        }
        for power in 0..127 {
            let p = 1i128 << power;
            samples.extend([p, -p, p - 1, 1 - p]);
        }
        for value in samples {
            let text = value.to_string();
            let (negative, digits) = match text.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, text.as_str()),
            };
            let digits = digits.trim_start_matches('0');
            let magnitude = magnitude_be(digits, 0);
            let general = if negative {
                negate(&magnitude)
            } else {
                positive(magnitude)
            };
            assert_eq!(general, minimal(&value.to_be_bytes()), "{value}");
        }
    }

    #[test]
    fn long_values_round_trip() {
        let forty = "1234567890123456789012345678901234567890";
        assert_eq!(signed_be_to_decimal(&unscaled(forty)), forty);
        let negative = format!("-{forty}");
        assert_eq!(signed_be_to_decimal(&unscaled(&negative)), negative);
        let huge = "9".repeat(1000);
        let mut out = Vec::new();
        write_unscaled(&huge, &mut out).unwrap();
        let mut data = out.as_slice();
        let len = crate::avro::binary::tests_support::read_long(&mut data);
        assert_eq!(len as usize, data.len());
        assert_eq!(signed_be_to_decimal(data), huge);
        // -(2^(8n-1)) needs no extra sign byte; -(2^(8n-1)+1) does.
        let two_pow_135 = "43556142965880123323311949751266331066368";
        assert_eq!(
            unscaled(&format!("-{two_pow_135}")),
            [&[0x80][..], &[0x00; 16]].concat()
        );
        let plus_one = "43556142965880123323311949751266331066369";
        assert_eq!(
            unscaled(&format!("-{plus_one}")),
            [&[0xFF, 0x7F][..], &[0xFF; 16]].concat()
        );
    }

    #[test]
    fn rescaling_pads_and_trims_exactly() {
        let fixed = |text: &str, scale, precision, column_scale| {
            written(|out| write_fixed_scale(text, scale, precision, column_scale, out))
        };
        // 1.5 at scale 2 is 150.
        assert_eq!(fixed("15", 1, 5, 2).unwrap(), [0x00, 0x96]);
        // -7 at scale 3 is -7000.
        assert_eq!(fixed("-7", 0, 10, 3).unwrap(), unscaled("-7000"));
        // 1.2300 at scale 2 is 123: only zeros are dropped.
        assert_eq!(fixed("12300", 4, 5, 2).unwrap(), unscaled("123"));
        assert_eq!(fixed("0", 7, 1, 2).unwrap(), [0x00]);
        assert_eq!(
            fixed("123456", 3, 10, 2),
            Err(DecimalError::ScaleTooLarge {
                value: "123.456".into(),
                scale: 3,
                column_scale: 2
            })
        );
        assert_eq!(
            fixed("5", 3, 10, 1),
            Err(DecimalError::ScaleTooLarge {
                value: "0.005".into(),
                scale: 3,
                column_scale: 1
            })
        );
        // 12345.6 at scale 2 needs 7 digits.
        assert_eq!(
            fixed("-123456", 1, 5, 2),
            Err(DecimalError::PrecisionExceeded {
                value: "-12345.6".into(),
                digits: 7,
                precision: 5
            })
        );
        assert_eq!(fixed("99999", 2, 5, 2).unwrap(), unscaled("99999"));
        assert_eq!(fixed("0001", 0, 1, 0).unwrap(), [0x01]);
    }

    #[test]
    fn malformed_text_is_refused() {
        for text in ["", "-", "+1", "1.5", "1e3", " 1", "١"] {
            assert_eq!(
                written(|out| write_unscaled(text, out)),
                Err(DecimalError::Malformed(text.into())),
                "{text:?}"
            );
        }
    }

    #[test]
    fn display_places_the_point() {
        assert_eq!(display("-12345", 2), "-123.45");
        assert_eq!(display("5", 3), "0.005");
        assert_eq!(display("-5", 1), "-0.5");
        assert_eq!(display("42", 0), "42");
        assert_eq!(display("123", 3), "0.123");
    }
}
