//! `[avro] logical_types = "debezium"`: every value as Debezium 3's PostgreSQL connector represents it
//! with its default settings (adaptive time precision, numeric intervals, hstore as JSON), so that a
//! consumer written for Debezium cannot tell the difference. A table version's model is rewritten once
//! ([`debezium_table`]) into the [`DebeziumType`]s the encoder writes; the schema builder and the
//! encoder do the rest (required NOT NULL columns, Debezium's record names, its placeholders).

use serde::Deserialize;
use serde_json::{Map, Value as Json};
use sluice_core::calendar::civil_from_days;
use sluice_core::event::{Column, ColumnType, DebeziumType, RecordField, Table};

/// How values are represented: `avro` (the default) keeps each value exact in Avro's own logical types,
/// `debezium` is Debezium's representation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogicalTypes {
    #[default]
    Avro,
    Debezium,
}

/// What Debezium writes for a TOASTed value PostgreSQL did not send (its `unavailable.value.placeholder`).
pub const UNAVAILABLE: &str = "__debezium_unavailable_value";

/// `table` with Debezium's representation of each column type.
pub fn debezium_table(table: &Table) -> Table {
    Table {
        columns: table
            .columns
            .iter()
            .map(|column| Column {
                column_type: debezium_type(&column.column_type, column.precision),
                ..column.clone()
            })
            .collect(),
        ..table.clone()
    }
}

/// Debezium's representation of `column_type`, whose column declares `precision` fractional digits.
fn debezium_type(column_type: &ColumnType, precision: Option<u8>) -> ColumnType {
    // An undeclared precision is 6, the most PostgreSQL keeps.
    let digits = precision.unwrap_or(6);
    match column_type {
        ColumnType::Timestamp if digits <= 3 => ColumnType::Debezium(DebeziumType::MilliTimestamp),
        ColumnType::Timestamp => ColumnType::Debezium(DebeziumType::MicroTimestamp),
        ColumnType::VariableDecimal => ColumnType::Debezium(DebeziumType::StrippedDecimal),
        ColumnType::Time if digits <= 3 => ColumnType::Debezium(DebeziumType::MilliTime),
        ColumnType::TimestampTz => ColumnType::Debezium(DebeziumType::ZonedTimestamp { digits }),
        ColumnType::Text { type_name } if type_name == "timetz" => {
            ColumnType::Debezium(DebeziumType::ZonedTime)
        }
        ColumnType::Text { type_name } if type_name == "interval" => {
            ColumnType::Debezium(DebeziumType::MicroDuration)
        }
        ColumnType::TextMap => ColumnType::Debezium(DebeziumType::HstoreJson),
        ColumnType::Array {
            element,
            dimensions,
        } => ColumnType::Array {
            element: Box::new(debezium_type(element, precision)),
            dimensions: *dimensions,
        },
        ColumnType::Record { name, fields } => ColumnType::Record {
            name: name.clone(),
            fields: fields
                .iter()
                .map(|f| RecordField {
                    name: f.name.clone(),
                    column_type: debezium_type(&f.column_type, None),
                })
                .collect(),
        },
        other => other.clone(),
    }
}

/// A `timestamptz` (microseconds since 1970, UTC) as Debezium's `ZonedTimestamp`:
/// `2016-11-04T11:51:30.120000Z`, exactly `digits` fractional digits (none for 0), `+` before a year past
/// 9999, a negative astronomical year before 1; the infinities as `infinity` and `-infinity`.
pub fn zoned_timestamp(micros: i64, digits: u8) -> String {
    match micros {
        i64::MAX => return "infinity".into(),
        i64::MIN => return "-infinity".into(),
        _ => {}
    }
    const MICROS_PER_DAY: i64 = 86_400_000_000;
    let (year, month, day) = civil_from_days(micros.div_euclid(MICROS_PER_DAY));
    let of_day = micros.rem_euclid(MICROS_PER_DAY);
    let seconds = of_day / 1_000_000;
    let (hour, minute, second) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    let fraction = match digits.min(6) {
        0 => String::new(),
        digits => {
            let micros = format!("{:06}", of_day % 1_000_000);
            format!(".{}", &micros[..usize::from(digits)])
        }
    };
    format!(
        "{}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{fraction}Z",
        iso_year(year)
    )
}

/// A year as `java.time` prints it in ISO 8601: four digits at least, `+` past 9999, `-` before 1.
fn iso_year(year: i64) -> String {
    match year {
        y if y > 9999 => format!("+{y}"),
        y if y < 0 => format!("-{:04}", -y),
        y => format!("{y:04}"),
    }
}

/// A `timetz` as PostgreSQL prints it (`12:34:56.789+05:30`) as Debezium's `ZonedTime`: shifted to UTC,
/// the fraction with as few digits as it needs (none when zero), then `Z`. None for text that is not a
/// time with an offset.
pub fn zoned_time(text: &str) -> Option<String> {
    let sign_at = text.rfind(['+', '-'])?;
    let (time, offset) = text.split_at(sign_at);
    let micros = time_micros(time)?;
    let offset_seconds = offset_seconds(offset)?;
    let utc = micros
        .checked_sub(offset_seconds * 1_000_000)?
        .rem_euclid(86_400_000_000);
    let seconds = utc / 1_000_000;
    let fraction = utc % 1_000_000;
    let fraction = if fraction == 0 {
        String::new()
    } else {
        format!(".{fraction:06}").trim_end_matches('0').to_owned()
    };
    Some(format!(
        "{:02}:{:02}:{:02}{fraction}Z",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    ))
}

/// `HH:MM:SS[.ffffff]` in microseconds; None for parts too large to count (a server prints none).
fn time_micros(text: &str) -> Option<i64> {
    let (clock, fraction) = match text.split_once('.') {
        Some((clock, fraction)) => (clock, fraction),
        None => (text, ""),
    };
    let mut parts = clock.split(':').map(|p| p.parse::<i64>().ok());
    let (hours, minutes, seconds) = (parts.next()??, parts.next()??, parts.next()??);
    if parts.next().is_some() || fraction.len() > 6 || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let fraction: i64 = format!("{fraction:0<6}").parse().ok()?;
    hours
        .checked_mul(60)?
        .checked_add(minutes)?
        .checked_mul(60)?
        .checked_add(seconds)?
        .checked_mul(1_000_000)?
        .checked_add(fraction)
}

/// `±HH[:MM[:SS]]` in seconds.
fn offset_seconds(text: &str) -> Option<i64> {
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let mut seconds = 0;
    let mut unit = 3600;
    for part in rest.split(':') {
        if unit == 0 || part.len() != 2 {
            return None;
        }
        seconds += part.parse::<i64>().ok()? * unit;
        unit /= 60;
    }
    Some(sign * seconds)
}

/// An interval in ISO 8601 (`P1Y2M3DT4H5M6.78S`, parts may be negative: PostgreSQL's `iso_8601` style)
/// as Debezium's `MicroDuration`: months counted as 30.4375 days (365.25 / 12), in floating point and
/// truncated, as Debezium computes it. None for text that is not such an interval.
pub fn micro_duration(text: &str) -> Option<i64> {
    const DAYS_PER_MONTH: f64 = 365.25 / 12.0;
    let body = text.strip_prefix('P')?;
    let (date, time) = match body.split_once('T') {
        Some((date, time)) => (date, time),
        None => (body, ""),
    };
    let number = |text: &str| text.parse::<f64>().ok();
    let (mut years, mut months, mut days) = (0.0, 0.0, 0.0);
    for (text, unit) in parts(date)? {
        match unit {
            'Y' => years = number(text)?,
            'M' => months = number(text)?,
            'W' => days += number(text)? * 7.0,
            'D' => days += number(text)?,
            _ => return None,
        }
    }
    let (mut hours, mut minutes, mut seconds) = (0.0, 0.0, 0.0);
    for (text, unit) in parts(time)? {
        match unit {
            'H' => hours = number(text)?,
            'M' => minutes = number(text)?,
            // PostgreSQL's JDBC driver keeps whole seconds and microseconds apart and adds them as a
            // double: so does this, or the last microsecond can differ from Debezium's.
            'S' => seconds = seconds_as_jdbc(text)?,
            _ => return None,
        }
    }
    let total_days = (years * 12.0 + months) * DAYS_PER_MONTH + days;
    let total_seconds = ((total_days * 24.0 + hours) * 60.0 + minutes) * 60.0 + seconds;
    Some((total_seconds * 1e6) as i64)
}

/// `-6.78` as whole seconds plus microseconds over a million.
fn seconds_as_jdbc(text: &str) -> Option<f64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(digits) => (true, digits),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if fraction.len() > 6 {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let micros: i64 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<6}").parse().ok()?
    };
    let (whole, micros) = if negative {
        (whole.checked_neg()?, -micros)
    } else {
        (whole, micros)
    };
    Some(whole as f64 + micros as f64 / 1e6)
}

/// `1Y-2M3.5D` into its numbers' text and unit letters.
fn parts(text: &str) -> Option<Vec<(&str, char)>> {
    let mut found = Vec::new();
    let mut start = 0;
    for (at, c) in text.char_indices() {
        if c.is_ascii_alphabetic() {
            found.push((&text[start..at], c));
            start = at + 1;
        }
    }
    (start == text.len()).then_some(found)
}

/// Debezium's `timestamp` infinities: PostgreSQL's JDBC driver's stand-in instant, in microseconds.
pub const MICRO_INFINITY: (i64, i64) = (9_223_372_036_825_200_000, -9_223_372_036_832_400_000);

/// A `timestamp` in Debezium's microseconds: the infinities (`i64::MAX`, `i64::MIN` in the event model)
/// as Debezium has them.
pub fn micro_timestamp(micros: i64) -> i64 {
    match micros {
        i64::MAX => MICRO_INFINITY.0,
        i64::MIN => MICRO_INFINITY.1,
        micros => micros,
    }
}

/// A `timestamp(0..3)` in Debezium's milliseconds, the infinities as Debezium has them.
pub fn milli_timestamp(micros: i64) -> i64 {
    match micros {
        i64::MAX | i64::MIN => micro_timestamp(micros) / 1000,
        micros => micros.div_euclid(1000),
    }
}

/// A decimal's digits without trailing zeros (`Numeric`'s unscaled text and scale), as Java's
/// `BigDecimal.stripTrailingZeros` leaves them; zero is `0` at scale 0.
pub fn stripped(unscaled: &str, scale: u32) -> (String, u32) {
    let (sign, digits) = match unscaled.strip_prefix('-') {
        Some(digits) => ("-", digits),
        None => ("", unscaled),
    };
    if digits.bytes().all(|b| b == b'0') {
        return ("0".into(), 0);
    }
    let mut digits = digits;
    let mut scale = scale;
    while scale > 0 && digits.len() > 1 && digits.ends_with('0') {
        digits = &digits[..digits.len() - 1];
        scale -= 1;
    }
    (format!("{sign}{digits}"), scale)
}

/// An hstore as Debezium's JSON text: `{"a":"1","b":null}` (keys sorted; Debezium's order is a hash
/// map's).
pub fn hstore_json(pairs: &[(String, Option<String>)]) -> String {
    let object: Map<String, Json> = pairs
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().map_or(Json::Null, Json::String)))
        .collect();
    Json::Object(object).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_lose_their_trailing_zeros() {
        assert_eq!(stripped("110", 2), ("11".into(), 1));
        assert_eq!(stripped("100", 0), ("100".into(), 0));
        assert_eq!(stripped("-1200", 3), ("-12".into(), 1));
        assert_eq!(stripped("000", 2), ("0".into(), 0));
        assert_eq!(stripped("5", 0), ("5".into(), 0));
    }

    #[test]
    fn timestamp_infinities_are_debeziums() {
        assert_eq!(micro_timestamp(i64::MAX), 9_223_372_036_825_200_000);
        assert_eq!(milli_timestamp(i64::MIN), -9_223_372_036_832_400);
        assert_eq!(milli_timestamp(-1), -1);
        assert_eq!(micro_timestamp(5), 5);
    }

    #[test]
    fn zoned_timestamps_print_as_debezium_prints_them() {
        // 2016-11-04 11:51:30.12 UTC.
        let at = 1_478_260_290_120_000;
        assert_eq!(zoned_timestamp(at, 6), "2016-11-04T11:51:30.120000Z");
        assert_eq!(zoned_timestamp(at, 3), "2016-11-04T11:51:30.120Z");
        assert_eq!(zoned_timestamp(at, 0), "2016-11-04T11:51:30Z");
        assert_eq!(zoned_timestamp(-1, 6), "1969-12-31T23:59:59.999999Z");
        assert_eq!(zoned_timestamp(i64::MAX, 6), "infinity");
        assert_eq!(zoned_timestamp(i64::MIN, 6), "-infinity");
        // 10000-01-01, and 1 BC (astronomical year 0) and 2 BC (-1).
        assert_eq!(
            zoned_timestamp(253_402_300_800_000_000, 0),
            "+10000-01-01T00:00:00Z"
        );
        assert_eq!(
            zoned_timestamp(-62_167_219_200_000_000, 0),
            "0000-01-01T00:00:00Z"
        );
        assert_eq!(
            zoned_timestamp(-62_198_755_200_000_000, 0),
            "-0001-01-01T00:00:00Z"
        );
    }

    #[test]
    fn zoned_times_are_shifted_to_utc() {
        assert_eq!(
            zoned_time("13:51:30.123789+02").unwrap(),
            "11:51:30.123789Z"
        );
        assert_eq!(zoned_time("13:51:30.12+02").unwrap(), "11:51:30.12Z");
        assert_eq!(zoned_time("11:51:00+00").unwrap(), "11:51:00Z");
        assert_eq!(zoned_time("01:00:00+05:30").unwrap(), "19:30:00Z");
        assert_eq!(zoned_time("23:00:00-01:30:15").unwrap(), "00:30:15Z");
        for bad in [
            "",
            "12:00",
            "12:00:00",
            "x+01",
            "12:00:00+1",
            "12:00:00.1234567+00",
        ] {
            assert!(zoned_time(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn zoned_times_too_large_to_count_are_refused() {
        // Found by the pg_text fuzz target (fuzz/): each overflowed the microseconds.
        for bad in [
            "105:3:2920000335598364-,20",
            "105:3:292000033559836+00",
            "9223372036854775807:00:00+00",
            "00:00:9223372036855+01",
        ] {
            assert!(zoned_time(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn intervals_become_debeziums_micro_durations() {
        // Debezium's own examples: `1 year 2 mons 3 days 04:05:06.78`, a month, a day.
        assert_eq!(
            micro_duration("P1Y2M3DT4H5M6.78S"),
            Some(37_091_106_780_000)
        );
        assert_eq!(micro_duration("P1M"), Some(2_629_800_000_000));
        assert_eq!(micro_duration("P1D"), Some(86_400_000_000));
        assert_eq!(micro_duration("PT0S"), Some(0));
        assert_eq!(micro_duration("P-1DT-2H"), Some(-93_600_000_000));
        // Whole seconds and microseconds apart, as Debezium has them.
        assert_eq!(micro_duration("PT1.003691S"), Some(1_003_690));
        assert_eq!(micro_duration("PT1.003969S"), Some(1_003_969));
        assert_eq!(micro_duration("PT-1.5S"), Some(-1_500_000));
        for bad in ["", "1D", "P1X", "P1", "PT1D"] {
            assert!(micro_duration(bad).is_none(), "{bad}");
        }
        // Seconds whose negation does not fit (the sign written twice).
        assert!(micro_duration("PT--9223372036854775808S").is_none());
    }

    #[test]
    fn the_table_model_takes_debeziums_types() {
        let column = |name: &str, column_type: ColumnType, precision| Column {
            name: name.into(),
            column_type,
            key: false,
            source_type: String::new(),
            not_null: false,
            precision,
        };
        let table = Table {
            id: 1,
            schema: "public".into(),
            name: "t".into(),
            columns: vec![
                column("a", ColumnType::Timestamp, Some(3)),
                column("b", ColumnType::Timestamp, None),
                column("c", ColumnType::TimestampTz, Some(2)),
                column(
                    "d",
                    ColumnType::Array {
                        element: Box::new(ColumnType::Time),
                        dimensions: 1,
                    },
                    Some(0),
                ),
                column(
                    "e",
                    ColumnType::Text {
                        type_name: "interval".into(),
                    },
                    None,
                ),
            ],
        };
        let types: Vec<ColumnType> = debezium_table(&table)
            .columns
            .into_iter()
            .map(|c| c.column_type)
            .collect();
        assert_eq!(
            types,
            [
                ColumnType::Debezium(DebeziumType::MilliTimestamp),
                ColumnType::Debezium(DebeziumType::MicroTimestamp),
                ColumnType::Debezium(DebeziumType::ZonedTimestamp { digits: 2 }),
                ColumnType::Array {
                    element: Box::new(ColumnType::Debezium(DebeziumType::MilliTime)),
                    dimensions: 1,
                },
                ColumnType::Debezium(DebeziumType::MicroDuration),
            ]
        );
    }
}
