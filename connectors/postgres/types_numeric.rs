//! Integers, floats, numerics and money in PostgreSQL's text output (`extra_float_digits=3`,
//! `lc_monetary = C`).

use super::value_error::ValueError;
use sluice_core::decimal;
use sluice_core::event::Numeric;

/// An optional `-` and decimal digits: PostgreSQL's integer output (no `+`, no spaces).
pub(super) fn parse_int<T: std::str::FromStr>(
    text: &str,
    type_name: &'static str,
) -> Result<T, ValueError> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ValueError::invalid(text, type_name));
    }
    // Well-formed digits that do not parse can only be out of range.
    text.parse()
        .map_err(|_| ValueError::overflow(text, type_name))
}

/// Floats: PostgreSQL spells the specials `NaN`, `Infinity` and `-Infinity`; everything else is decimal
/// or exponent notation. Rust's parser would also take `inf`, `nan` or `+1`, which PostgreSQL never
/// prints, so only the exact spellings and plain numbers get through.
pub(super) fn parse_float<T: std::str::FromStr + Float>(
    text: &str,
    type_name: &'static str,
) -> Result<T, ValueError> {
    match text {
        "NaN" => return Ok(T::NAN),
        "Infinity" => return Ok(T::INFINITY),
        "-Infinity" => return Ok(T::NEG_INFINITY),
        _ => {}
    }
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let plain = unsigned.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && unsigned
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
    if !plain {
        return Err(ValueError::invalid(text, type_name));
    }
    let value: T = text
        .parse()
        .map_err(|_| ValueError::invalid(text, type_name))?;
    // A finite spelling that rounds to infinity is beyond the type.
    if value.is_infinite() {
        return Err(ValueError::overflow(text, type_name));
    }
    Ok(value)
}

/// What `parse_float` needs of `f32` and `f64`.
pub(super) trait Float: Copy {
    const NAN: Self;
    const INFINITY: Self;
    const NEG_INFINITY: Self;
    fn is_infinite(self) -> bool;
}

impl Float for f32 {
    const NAN: f32 = f32::NAN;
    const INFINITY: f32 = f32::INFINITY;
    const NEG_INFINITY: f32 = f32::NEG_INFINITY;
    fn is_infinite(self) -> bool {
        f32::is_infinite(self)
    }
}

impl Float for f64 {
    const NAN: f64 = f64::NAN;
    const INFINITY: f64 = f64::INFINITY;
    const NEG_INFINITY: f64 = f64::NEG_INFINITY;
    fn is_infinite(self) -> bool {
        f64::is_infinite(self)
    }
}

/// `-123.4500` becomes unscaled `-1234500` at scale 4: every digit kept (the scale is part of the value),
/// leading zeros dropped so that the unscaled text is a canonical integer.
pub(super) fn parse_numeric(text: &str) -> Result<Numeric, ValueError> {
    match text {
        "NaN" => return Ok(Numeric::NaN),
        "Infinity" => return Ok(Numeric::PositiveInfinity),
        "-Infinity" => return Ok(Numeric::NegativeInfinity),
        _ => {}
    }
    let (unscaled, scale) =
        decimal::unscale(text).ok_or_else(|| ValueError::invalid(text, "numeric"))?;
    let scale = u32::try_from(scale).map_err(|_| ValueError::overflow(text, "numeric"))?;
    Ok(Numeric::Finite { unscaled, scale })
}

/// money under `lc_monetary = C`: `$1,234.50`, `-$0.07`. Always two decimals.
pub(super) fn parse_money(text: &str) -> Result<Numeric, ValueError> {
    let invalid = || ValueError::invalid(text, "money");
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let amount = unsigned.strip_prefix('$').ok_or_else(invalid)?;
    let (whole, cents) = amount.split_once('.').ok_or_else(invalid)?;
    let grouped_ok = whole.split(',').enumerate().all(|(i, group)| {
        !group.is_empty()
            && group.bytes().all(|b| b.is_ascii_digit())
            && (i == 0 && group.len() <= 3 || group.len() == 3)
    });
    if !grouped_ok || cents.len() != 2 || !cents.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let sign = if negative { "-" } else { "" };
    parse_numeric(&format!("{sign}{}.{cents}", whole.replace(',', "")))
}
