//! Dates, times and timestamps in PostgreSQL's ISO text output (`DateStyle=ISO`, `TimeZone=UTC`), as the
//! days and microseconds since 1970 that Avro's logical types count.

use super::value_error::{shown, ValueError};
use sluice_core::event::Value;

pub(super) const MICROS_PER_SECOND: i64 = 1_000_000;
pub(super) const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;

/// `HH:MM:SS[.ffffff]`; `24:00:00` is the end of the day.
pub(super) fn parse_time(text: &str) -> Result<i64, ValueError> {
    if text == "24:00:00" {
        return Ok(MICROS_PER_DAY);
    }
    let mut cursor = Cursor::new(text);
    let micros = cursor
        .time()
        .ok_or_else(|| ValueError::invalid(text, "time"))?;
    cursor
        .end()
        .ok_or_else(|| ValueError::invalid(text, "time"))?;
    Ok(micros)
}

/// `YYYY-MM-DD` (the year may be longer than four digits), optionally followed by ` BC`.
pub(super) fn parse_date(text: &str) -> Result<Value, ValueError> {
    // PostgreSQL stores its infinities as the extreme values too.
    match text {
        "infinity" => return Ok(Value::Date(i32::MAX)),
        "-infinity" => return Ok(Value::Date(i32::MIN)),
        _ => {}
    }
    let invalid = || ValueError::invalid(text, "date");
    let (body, bc) = strip_bc(text);
    let mut cursor = Cursor::new(body);
    let days = cursor.date().ok_or_else(invalid)?;
    cursor.end().ok_or_else(invalid)?;
    let days = civil_days(days, bc).ok_or_else(invalid)?;
    Ok(match i32::try_from(days) {
        Ok(days) => Value::Date(days),
        Err(_) => Value::OutOfRange(format!(
            "date `{}` is outside the Avro date range",
            shown(text)
        )),
    })
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]`, then for timestamptz a zone offset `±HH[:MM[:SS]]`, then optionally ` BC`.
pub(super) fn parse_timestamp(text: &str, with_zone: bool) -> Result<Value, ValueError> {
    let type_name = if with_zone {
        "timestamptz"
    } else {
        "timestamp"
    };
    let infinite = match text {
        "infinity" => Some(i64::MAX),
        "-infinity" => Some(i64::MIN),
        _ => None,
    };
    if let Some(micros) = infinite {
        return Ok(if with_zone {
            Value::TimestampTz(micros)
        } else {
            Value::Timestamp(micros)
        });
    }
    let invalid = || ValueError::invalid(text, type_name);
    let (body, bc) = strip_bc(text);
    let mut cursor = Cursor::new(body);
    let date = cursor.date().ok_or_else(invalid)?;
    cursor.expect(b' ').ok_or_else(invalid)?;
    let time_of_day = cursor.time().ok_or_else(invalid)?;
    let offset = if with_zone {
        cursor.zone_offset().ok_or_else(invalid)?
    } else {
        0
    };
    cursor.end().ok_or_else(invalid)?;
    let days = civil_days(date, bc).ok_or_else(invalid)?;
    // Days from the far future or past do not fit i64 microseconds (PostgreSQL counts from 2000, not 1970).
    let micros = days
        .checked_mul(MICROS_PER_DAY)
        .and_then(|day_start| day_start.checked_add(time_of_day))
        .and_then(|local| local.checked_sub(offset.checked_mul(MICROS_PER_SECOND)?))
        // The two extremes stand for ±infinity: a finite timestamp there would be read as one.
        .filter(|micros| *micros != i64::MAX && *micros != i64::MIN);
    Ok(match micros {
        Some(micros) if with_zone => Value::TimestampTz(micros),
        Some(micros) => Value::Timestamp(micros),
        None => Value::OutOfRange(format!(
            "{type_name} `{}` is outside the Avro timestamp range",
            shown(text)
        )),
    })
}

/// Splits off PostgreSQL's ` BC` era suffix.
fn strip_bc(text: &str) -> (&str, bool) {
    match text.strip_suffix(" BC") {
        Some(body) => (body, true),
        None => (text, false),
    }
}

/// A calendar date as written: year (without era), month, day.
#[derive(Clone, Copy, Debug)]
struct CivilDate {
    year: i64,
    month: u32,
    day: u32,
}

/// Days since 1970-01-01 for a validated date; `bc` maps year Y BC to astronomical year 1 - Y.
fn civil_days(date: CivilDate, bc: bool) -> Option<i64> {
    if bc && date.year == 0 {
        return None;
    }
    let year = if bc { 1 - date.year } else { date.year };
    (date.month >= 1
        && date.month <= 12
        && date.day >= 1
        && date.day <= days_in_month(year, date.month))
    .then(|| days_from_civil(year, date.month, date.day))
}

fn is_leap(year: i64) -> bool {
    year.rem_euclid(4) == 0 && (year.rem_euclid(100) != 0 || year.rem_euclid(400) == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Howard Hinnant's days-from-civil for the proleptic Gregorian calendar (astronomical years: 0 = 1 BC).
/// Callers bound the year to nine digits, so nothing here overflows.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    // Count years from March, so the leap day ends the year.
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let shifted_month = i64::from(if month > 2 { month - 3 } else { month + 9 });
    let day_of_year = (153 * shifted_month + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Days since 1970-01-01 as PostgreSQL reads a date (`2024-02-29`, `0044-03-15 BC`, `infinity`): the
/// inverse of [`parse_date`], for putting a value back into a query.
pub(super) fn date_text(days: i32) -> String {
    match days {
        i32::MAX => "infinity".into(),
        i32::MIN => "-infinity".into(),
        days => civil_text(i64::from(days), ""),
    }
}

/// Microseconds since 1970 as PostgreSQL reads a timestamp (`zone` `+00` for timestamptz): the inverse
/// of [`parse_timestamp`].
pub(super) fn timestamp_text(micros: i64, zone: &str) -> String {
    match micros {
        i64::MAX => "infinity".into(),
        i64::MIN => "-infinity".into(),
        micros => {
            let time = time_text(micros.rem_euclid(MICROS_PER_DAY));
            civil_text(micros.div_euclid(MICROS_PER_DAY), &format!(" {time}{zone}"))
        }
    }
}

/// Microseconds since midnight as `HH:MM:SS.ffffff`.
pub(super) fn time_text(micros: i64) -> String {
    let seconds = micros / MICROS_PER_SECOND;
    let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    let fraction = micros % MICROS_PER_SECOND;
    format!("{hours:02}:{minutes:02}:{seconds:02}.{fraction:06}")
}

/// The date `days` after 1970-01-01, then `time`, then the era for years before 1.
fn civil_text(days: i64, time: &str) -> String {
    let (year, month, day) = sluice_core::calendar::civil_from_days(days);
    let (year, era) = if year <= 0 {
        (1 - year, " BC")
    } else {
        (year, "")
    };
    format!("{year:04}-{month:02}-{day:02}{time}{era}")
}

/// A forward-only reader over ASCII date and time text; `None` means the text does not have the form.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Cursor<'a> {
        Cursor {
            rest: text.as_bytes(),
        }
    }

    /// Between `min` and `max` decimal digits (as many as there are), with their count.
    fn digits(&mut self, min: usize, max: usize) -> Option<(i64, usize)> {
        let count = self
            .rest
            .iter()
            .take(max + 1)
            .take_while(|b| b.is_ascii_digit())
            .count();
        if count < min || count > max {
            return None;
        }
        let (digits, rest) = self.rest.split_at(count);
        self.rest = rest;
        let value = digits
            .iter()
            .fold(0_i64, |acc, d| acc * 10 + i64::from(d - b'0'));
        Some((value, count))
    }

    /// Exactly `n` digits.
    fn fixed(&mut self, n: usize) -> Option<i64> {
        self.digits(n, n).map(|(value, _)| value)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        let (&first, rest) = self.rest.split_first()?;
        (first == byte).then(|| self.rest = rest)
    }

    fn eat(&mut self, byte: u8) -> bool {
        self.expect(byte).is_some()
    }

    fn end(&self) -> Option<()> {
        self.rest.is_empty().then_some(())
    }

    /// `YYYY-MM-DD`; years of 4 to 9 digits (PostgreSQL pads to four; nine keeps the arithmetic in range).
    fn date(&mut self) -> Option<CivilDate> {
        let (year, _) = self.digits(4, 9)?;
        self.expect(b'-')?;
        let month = u32::try_from(self.fixed(2)?).ok()?;
        self.expect(b'-')?;
        let day = u32::try_from(self.fixed(2)?).ok()?;
        Some(CivilDate { year, month, day })
    }

    /// `HH:MM:SS[.f{1,6}]` as microseconds since midnight.
    fn time(&mut self) -> Option<i64> {
        let hour = self.fixed(2).filter(|h| *h < 24)?;
        self.expect(b':')?;
        let minute = self.fixed(2).filter(|m| *m < 60)?;
        self.expect(b':')?;
        let second = self.fixed(2).filter(|s| *s < 60)?;
        let fraction = if self.eat(b'.') { self.fraction()? } else { 0 };
        Some((hour * 3600 + minute * 60 + second) * MICROS_PER_SECOND + fraction)
    }

    /// 1 to 6 fraction digits as microseconds.
    fn fraction(&mut self) -> Option<i64> {
        let (value, count) = self.digits(1, 6)?;
        let scale = 10_i64.pow(u32::try_from(6 - count).ok()?);
        Some(value * scale)
    }

    /// `±HH`, `±HH:MM` or `±HH:MM:SS` as seconds east of UTC.
    fn zone_offset(&mut self) -> Option<i64> {
        let sign = if self.eat(b'+') {
            1
        } else {
            self.expect(b'-')?;
            -1
        };
        let hours = self.fixed(2)?;
        let (minutes, seconds) = if self.eat(b':') {
            let minutes = self.fixed(2).filter(|m| *m < 60)?;
            // Seconds only ever follow minutes.
            let seconds = if self.eat(b':') {
                self.fixed(2).filter(|s| *s < 60)?
            } else {
                0
            };
            (minutes, seconds)
        } else {
            (0, 0)
        };
        Some(sign * (hours * 3600 + minutes * 60 + seconds))
    }
}
