//! Dates, times and timestamps in PostgreSQL's ISO text output, through [`parse_text`] as the decoder
//! calls it.

use super::*;
use crate::types_temporal::{MICROS_PER_DAY, MICROS_PER_SECOND};

#[test]
fn dates() {
    assert_eq!(parse(&ColumnType::Date, "1970-01-01"), Value::Date(0));
    assert_eq!(parse(&ColumnType::Date, "2000-01-01"), Value::Date(10_957));
    assert_eq!(parse(&ColumnType::Date, "1969-12-31"), Value::Date(-1));
    assert_eq!(parse(&ColumnType::Date, "1900-03-01"), Value::Date(-25_508));
    assert_eq!(parse(&ColumnType::Date, "2024-02-29"), Value::Date(19_782));
    assert_eq!(parse(&ColumnType::Date, "2000-02-29"), Value::Date(11_016));
    assert_eq!(
        parse(&ColumnType::Date, "10000-01-01"),
        Value::Date(2_932_897)
    );
    // 0001-01-01 is day -719162; the day before is 1 BC (astronomical year 0), a leap year.
    assert_eq!(
        parse(&ColumnType::Date, "0001-01-01"),
        Value::Date(-719_162)
    );
    assert_eq!(
        parse(&ColumnType::Date, "0001-12-31 BC"),
        Value::Date(-719_163)
    );
    assert_eq!(
        parse(&ColumnType::Date, "0001-02-29 BC"),
        Value::Date(-719_163 - 306)
    );
    // PostgreSQL's earliest date: Julian day 0.
    assert_eq!(
        parse(&ColumnType::Date, "4714-11-24 BC"),
        Value::Date(-2_440_588)
    );
    // And its latest.
    assert_eq!(
        parse(&ColumnType::Date, "5874897-12-31"),
        Value::Date(2_145_042_905)
    );
}

#[test]
fn date_errors_and_out_of_range() {
    for bad in [
        "2023-02-29",
        "1900-02-29",
        "2024-13-01",
        "2024-00-10",
        "2024-04-31",
        "2024-01-00",
        "24-01-01",
        "2024-1-01",
        "0000-01-01 BC",
        "2024-01-01 AD",
        "2024-01-01 00:00:00",
        "1234567890-01-01",
    ] {
        assert!(
            error(&ColumnType::Date, bad).contains("is not a valid date"),
            "{bad}"
        );
    }
    assert_eq!(parse(&ColumnType::Date, "infinity"), Value::Date(i32::MAX));
    assert_eq!(parse(&ColumnType::Date, "-infinity"), Value::Date(i32::MIN));
    assert_eq!(
        parse(&ColumnType::Date, "999999999-01-01"),
        Value::OutOfRange("date `999999999-01-01` is outside the Avro date range".into())
    );
}

#[test]
fn timestamps() {
    assert_eq!(
        parse(&ColumnType::Timestamp, "1970-01-01 00:00:00"),
        Value::Timestamp(0)
    );
    assert_eq!(
        parse(&ColumnType::Timestamp, "2024-01-02 03:04:05"),
        Value::Timestamp(1_704_164_645_000_000)
    );
    assert_eq!(
        parse(&ColumnType::Timestamp, "2024-01-02 03:04:05.678901"),
        Value::Timestamp(1_704_164_645_678_901)
    );
    assert_eq!(
        parse(&ColumnType::Timestamp, "2024-01-02 03:04:05.5"),
        Value::Timestamp(1_704_164_645_500_000)
    );
    assert_eq!(
        parse(&ColumnType::Timestamp, "1969-12-31 23:59:59.999999"),
        Value::Timestamp(-1)
    );
    assert_eq!(
        parse(&ColumnType::Timestamp, "2024-02-29 12:00:00"),
        Value::Timestamp(1_709_208_000_000_000)
    );
    assert_eq!(
        parse(&ColumnType::Timestamp, "0001-12-31 23:00:00 BC"),
        Value::Timestamp(-719_162 * MICROS_PER_DAY - 3_600 * MICROS_PER_SECOND)
    );
    assert_eq!(
        parse(&ColumnType::Timestamp, "10000-01-01 00:00:00"),
        Value::Timestamp(2_932_897 * MICROS_PER_DAY)
    );
}

#[test]
fn timestamps_with_zones() {
    let base = 1_704_164_645_000_000;
    assert_eq!(
        parse(&ColumnType::TimestampTz, "2024-01-02 03:04:05+00"),
        Value::TimestampTz(base)
    );
    let fraction = parse(&ColumnType::TimestampTz, "2024-01-02 03:04:05.25+00");
    assert_eq!(fraction, Value::TimestampTz(base + 250_000));
    let india = parse(&ColumnType::TimestampTz, "2024-01-02 08:34:05+05:30");
    assert_eq!(india, Value::TimestampTz(base));
    let pacific = parse(&ColumnType::TimestampTz, "2024-01-01 19:04:05-08");
    assert_eq!(pacific, Value::TimestampTz(base));
    let seconds = parse(&ColumnType::TimestampTz, "2024-01-02 03:04:05+00:00:10");
    assert_eq!(seconds, Value::TimestampTz(base - 10 * MICROS_PER_SECOND));
    let bc = parse(&ColumnType::TimestampTz, "0001-12-31 23:00:00+00 BC");
    assert_eq!(
        bc,
        Value::TimestampTz(-719_162 * MICROS_PER_DAY - 3_600 * MICROS_PER_SECOND)
    );
}

#[test]
fn timestamp_errors() {
    for bad in [
        "2024-01-02",
        "2024-01-02T03:04:05",
        "2024-01-02 24:00:00",
        "2024-01-02 03:60:00",
        "2024-01-02 03:04:60",
        "2024-01-02 03:04:05.",
        "2024-01-02 03:04:05.1234567",
        "2024-01-02 3:04:05",
        "2024-01-02 03:04:05+00",
        "2023-02-29 00:00:00",
    ] {
        assert!(
            error(&ColumnType::Timestamp, bad).contains("is not a valid timestamp"),
            "{bad}"
        );
    }
    for bad in [
        "2024-01-02 03:04:05",
        "2024-01-02 03:04:05+5",
        "2024-01-02 03:04:05+05:",
        "2024-01-02 03:04:05+05:30:",
        "2024-01-02 03:04:05 +00",
        "2024-01-02 03:04:05Z",
    ] {
        assert!(
            error(&ColumnType::TimestampTz, bad).contains("is not a valid timestamptz"),
            "{bad}"
        );
    }
}

#[test]
fn timestamps_beyond_avro() {
    assert_eq!(
        parse(&ColumnType::Timestamp, "infinity"),
        Value::Timestamp(i64::MAX)
    );
    assert_eq!(
        parse(&ColumnType::TimestampTz, "-infinity"),
        Value::TimestampTz(i64::MIN)
    );
    // PostgreSQL's last timestamp is past i64 microseconds counted from 1970.
    assert_eq!(
        parse(&ColumnType::TimestampTz, "294276-12-31 23:59:59.999999+00"),
        Value::OutOfRange(
            "timestamptz `294276-12-31 23:59:59.999999+00` is outside the Avro timestamp range"
                .into()
        )
    );
    assert!(matches!(
        parse(&ColumnType::Timestamp, "294247-01-01 00:00:00"),
        Value::Timestamp(_)
    ));
    // The last finite microsecond, and the one after it, which would read as `infinity`.
    assert_eq!(
        parse(&ColumnType::Timestamp, "294247-01-10 04:00:54.775806"),
        Value::Timestamp(i64::MAX - 1)
    );
    assert!(matches!(
        parse(&ColumnType::Timestamp, "294247-01-10 04:00:54.775807"),
        Value::OutOfRange(_)
    ));
}

#[test]
fn values_print_back_as_the_text_they_were_read_from() {
    use crate::types_temporal::{date_text, time_text, timestamp_text};
    for text in [
        "1970-01-01",
        "2024-02-29",
        "1900-03-01",
        "0001-01-01",
        "0001-12-31 BC",
        "0044-03-15 BC",
        "4713-01-01 BC",
        "5874897-12-31",
        "infinity",
        "-infinity",
    ] {
        let Value::Date(days) = parse(&ColumnType::Date, text) else {
            panic!("{text}")
        };
        assert_eq!(date_text(days), text);
    }
    for text in [
        "1970-01-01 00:00:00.000000",
        "2038-01-19 03:14:08.000001",
        "1969-12-31 23:59:59.999999",
        "0044-03-15 12:30:00.500000 BC",
        "294247-01-10 04:00:54.775806",
    ] {
        let Value::Timestamp(micros) = parse(&ColumnType::Timestamp, text) else {
            panic!("{text}")
        };
        assert_eq!(timestamp_text(micros, ""), text);
    }
    assert_eq!(timestamp_text(0, "+00"), "1970-01-01 00:00:00.000000+00");
    assert_eq!(time_text(86_399_999_999), "23:59:59.999999");
    assert_eq!(time_text(86_400_000_000), "24:00:00.000000");
}
