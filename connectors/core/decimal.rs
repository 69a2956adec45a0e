//! Decimal text as the event model carries it: an unscaled integer and a scale. The one routine that
//! reads decimal digits, for every source and the encoder.

/// Plain decimal text (`-123.4500`, `.5`, `7.`) as an unscaled integer and its number of fraction
/// digits: `-1234500` and 4. Every digit is kept (the scale is part of the value) but leading zeros, so that
/// the unscaled text is a canonical integer; zero is `0` whatever its sign. None when the text is not an
/// optional `-`, decimal digits and at most one point.
pub fn unscale(text: &str) -> Option<(String, usize)> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (integer, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if integer.len() + fraction.len() == 0 || !all_digits(integer) || !all_digits(fraction) {
        return None;
    }
    // The digits without the point or leading zeros, built in one allocation: every numeric of every
    // PostgreSQL row passes here.
    let mut unscaled = String::with_capacity(text.len());
    if negative {
        unscaled.push('-');
    }
    unscaled.extend(
        integer
            .chars()
            .chain(fraction.chars())
            .skip_while(|&c| c == '0'),
    );
    if unscaled.len() == usize::from(negative) {
        // Zero, whatever its sign.
        unscaled = "0".to_owned();
    }
    Some((unscaled, fraction.len()))
}
