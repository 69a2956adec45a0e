use std::time::Duration;

use bytes::Bytes;

use super::super::pgoutput::{TupleData, TupleValue};
use super::super::snapshot_copy::Lines;
use super::super::snapshot_plan::key_ranges;
use super::*;

fn text(value: &TupleValue) -> Option<&[u8]> {
    match value {
        TupleValue::Text(bytes) => Some(bytes),
        _ => None,
    }
}

#[tokio::test]
async fn an_idle_reader_waits_while_a_table_is_being_split() {
    let table = |name: &str| TableName {
        schema: "public".into(),
        name: name.into(),
    };
    let queue = Arc::new(WorkQueue::new([table("a")].into_iter()));
    let Some(Next::Table(name, splitting)) = queue.next().await else {
        panic!("the table comes first");
    };
    assert_eq!(name, table("a"));
    let waiting = tokio::spawn({
        let queue = queue.clone();
        async move { queue.next().await.is_none() }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !waiting.is_finished(),
        "the queue is empty but ranges may still come"
    );
    // The splitting reader is done (here: it failed, so no ranges): the other one may stop.
    drop(splitting);
    assert!(waiting.await.unwrap());
    assert!(queue.next().await.is_none());
}

#[test]
fn key_ranges_cover_every_key_once() {
    let bounds = |ranges: Vec<KeyRange>| -> Vec<(i64, i64)> {
        ranges.iter().map(|r| (r.low, r.high)).collect()
    };
    assert_eq!(
        bounds(key_ranges("id", -5, 94, 4, &[])),
        [(-5, 19), (20, 44), (45, 69), (70, 94)]
    );
    // An uneven span: the last range is the short one.
    assert_eq!(
        bounds(key_ranges("id", 1, 10, 3, &[])),
        [(1, 4), (5, 8), (9, 10)]
    );
    // Fewer keys than pieces, and the whole i64 range without overflow.
    assert_eq!(key_ranges("id", 7, 8, 10, &[]).len(), 2);
    let whole = key_ranges("id", i64::MIN, i64::MAX, 3, &[]);
    assert_eq!(whole.first().map(|r| r.low), Some(i64::MIN));
    assert_eq!(whole.last().map(|r| r.high), Some(i64::MAX));
    for pair in whole.windows(2) {
        assert_eq!(pair[0].high + 1, pair[1].low);
    }
}

#[test]
fn key_ranges_follow_the_histogram_past_outliers() {
    // 10,000 keys packed at the start and one far outlier: an even split would put them all in the
    // first range; the histogram's bounds share them out.
    let histogram: Vec<i64> = (0..=100).map(|i| 1 + i * 100).chain([10_000_000]).collect();
    let ranges = key_ranges("id", 1, 10_000_000, 4, &histogram);
    assert_eq!(
        ranges.iter().map(|r| (r.low, r.high)).collect::<Vec<_>>(),
        [
            (1, 2_500),
            (2_501, 5_000),
            (5_001, 7_500),
            (7_501, 10_000_000)
        ]
    );
    // Bounds outside the extent (a stale histogram) or repeated are skipped; coverage stays whole.
    let ranges = key_ranges("id", 50, 60, 4, &[0, 10, 55, 55, 55, 90]);
    assert_eq!(
        ranges.iter().map(|r| (r.low, r.high)).collect::<Vec<_>>(),
        [(50, 54), (55, 60)]
    );
}

#[test]
fn fields_nulls_and_escapes() {
    let line = Bytes::from_static(b"1\t\\N\tplain\ta\\tb\\nc\\\\d\t\\101\\x41\\q\t");
    let TupleData(values) = parse_copy_line(&line, 6).unwrap();
    assert_eq!(text(&values[0]), Some(&b"1"[..]));
    assert_eq!(values[1], TupleValue::Null);
    assert_eq!(text(&values[2]), Some(&b"plain"[..]));
    assert_eq!(text(&values[3]), Some(&b"a\tb\nc\\d"[..]));
    assert_eq!(text(&values[4]), Some(&b"AAq"[..]));
    assert_eq!(text(&values[5]), Some(&b""[..]), "an empty last field");
}

#[test]
fn an_escaped_n_is_text_not_null() {
    let line = Bytes::from_static(b"\\\\N");
    let TupleData(values) = parse_copy_line(&line, 1).unwrap();
    assert_eq!(text(&values[0]), Some(&b"\\N"[..]));
}

#[test]
fn wrong_field_counts_and_lone_backslashes_are_errors() {
    let err = parse_copy_line(&Bytes::from_static(b"1\t2"), 3).unwrap_err();
    assert!(
        err.contains("2 fields where the table has 3 columns"),
        "{err}"
    );
    let err = parse_copy_line(&Bytes::from_static(b"abc\\"), 1).unwrap_err();
    assert!(err.contains("lone backslash"), "{err}");
    assert!(parse_copy_line(&Bytes::from_static(b""), 0).is_ok());
    assert!(parse_copy_line(&Bytes::from_static(b"x"), 0).is_err());
}

#[test]
fn lines_are_put_back_together_across_chunks() {
    let mut lines = Lines::default();
    let mut out = Vec::new();
    lines.split(Bytes::from_static(b"1\ta\n"), &mut out);
    lines.split(Bytes::from_static(b"2\tb"), &mut out);
    assert!(!lines.is_empty());
    lines.split(Bytes::from_static(b"b\n3\tc\n"), &mut out);
    assert!(lines.is_empty());
    let got: Vec<&[u8]> = out.iter().map(|l| &l[..]).collect();
    assert_eq!(got, vec![&b"1\ta"[..], b"2\tbb", b"3\tc"]);
}
