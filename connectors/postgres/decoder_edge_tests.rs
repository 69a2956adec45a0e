//! The overlap after a carried-on snapshot, and input the protocol does not allow: typed errors, never
//! a panic.

use bytes::Bytes;

use super::*;
use crate::overlap::parse_snapshot;
use sluice_core::event::{PgRangeRead, PgSnapshotPosition, PgTableRead};

/// Rows of `items` with ids 101..=200 read in a later snapshot that saw transactions below 60 but 55,
/// taken when the WAL was at 0x500.
fn overlap() -> Overlap {
    Overlap::new(PgSnapshotPosition {
        lsn: Lsn(0x100),
        complete: true,
        tables: vec![PgTableRead {
            schema: "public".into(),
            name: "items".into(),
            done: true,
            key: Some("id".into()),
            ranges: vec![
                PgRangeRead {
                    low: 1,
                    high: 100,
                    read_in: None,
                },
                PgRangeRead {
                    low: 101,
                    high: 200,
                    read_in: Some(0),
                },
            ],
            ..PgTableRead::default()
        }],
        later: vec![parse_snapshot("50:60:55", Lsn(0x500)).unwrap()],
    })
    .expect("a range was read later")
}

#[test]
fn the_overlap_leaves_out_what_a_carried_on_snapshot_saw() {
    let mut stream = Stream::with(0x100, Some(overlap()));
    stream
        .feed(
            0x100,
            [relation(ITEMS, "items", &[]), relation(TAGS, "tags", &[])],
        )
        .unwrap();
    // Transaction 52 committed before the later snapshot: its change to row 150 is in the row read.
    let seen = stream
        .feed(
            0x180,
            [
                begin(52, 0x200),
                insert(ITEMS, 150),
                insert(ITEMS, 5),
                insert(TAGS, 150),
                commit(0x200),
            ],
        )
        .unwrap();
    assert_eq!(
        lines(&seen),
        [
            "create items 5 #1/1",
            "create tags 150 #2/1",
            "commit 0/228 overlap"
        ],
        "what is left out takes no number"
    );
    // Transaction 55 was still running when the later snapshot was taken: the row lacks its change.
    let unseen = stream
        .feed(0x280, [begin(55, 0x300), insert(ITEMS, 150), commit(0x300)])
        .unwrap();
    assert_eq!(
        lines(&unseen),
        ["create items 150 #1/1", "commit 0/328 overlap"]
    );
    let mut idle = Vec::new();
    stream.decoder.idle(Lsn(0x400), &mut idle);
    assert_eq!(lines(&idle), ["idle 0/400 overlap"]);
    // Past the WAL position of the later snapshot, the overlap ends and positions are plain again.
    let past = stream
        .feed(0x480, [begin(52, 0x500), insert(ITEMS, 150), commit(0x500)])
        .unwrap();
    assert_eq!(lines(&past), ["create items 150 #1/1", "commit 0/528"]);
}

#[test]
fn a_replay_inside_the_overlap_leaves_out_the_same_changes() {
    let mut stream = Stream::with(0x100, Some(overlap()));
    stream.feed(0x100, [relation(ITEMS, "items", &[])]).unwrap();
    let first = stream
        .feed(
            0x180,
            [begin(52, 0x200), insert(ITEMS, 150), insert(ITEMS, 5)],
        )
        .unwrap();
    stream.decoder.connection_lost();
    let replay = stream
        .feed(
            0x180,
            [
                begin(52, 0x200),
                insert(ITEMS, 150),
                insert(ITEMS, 5),
                insert(ITEMS, 6),
                commit(0x200),
            ],
        )
        .unwrap();
    assert_eq!(lines(&first), ["create items 5 #1/1"]);
    assert_eq!(
        lines(&replay),
        ["create items 6 #2/2", "commit 0/228 overlap"]
    );
}

#[test]
fn a_change_before_its_relation_message_is_an_error() {
    let mut stream = Stream::new(0);
    stream.feed(0x100, [begin(7, 0x200)]).unwrap();
    for message in [
        insert(ITEMS, 1),
        update(ITEMS, None, row(1, None, &[])),
        delete(ITEMS, 1),
        Message::Truncate(Truncate {
            cascade: false,
            restart_identity: false,
            relation_ids: vec![ITEMS],
        }),
    ] {
        let err = stream.feed(0x100, [message]).unwrap_err();
        assert_eq!(err, StreamError::UnknownRelation { relation_id: ITEMS });
    }
    assert_eq!(
        StreamError::UnknownRelation { relation_id: ITEMS }.to_string(),
        "replication stream out of order: change for relation 16384 before its Relation message"
    );
}

#[test]
fn messages_out_of_order_are_errors() {
    let mut stream = Stream::new(0);
    stream.feed(0x100, [relation(ITEMS, "items", &[])]).unwrap();
    assert_eq!(
        stream.feed(0x100, [commit(0x200)]).unwrap_err(),
        StreamError::CommitWithoutBegin
    );
    assert_eq!(
        stream.feed(0x100, [insert(ITEMS, 1)]).unwrap_err(),
        StreamError::ChangeOutsideTransaction
    );
    assert_eq!(
        stream
            .feed(0x100, [begin(7, 0x200), begin(8, 0x300)])
            .unwrap_err(),
        StreamError::BeginInTransaction
    );
}

#[test]
fn a_row_of_the_wrong_width_is_an_error() {
    let mut stream = Stream::new(0);
    stream
        .feed(0x100, [relation(ITEMS, "items", &[]), begin(7, 0x200)])
        .unwrap();
    let short = Message::Insert(Insert {
        relation_id: ITEMS,
        new: TupleData(vec![TupleValue::Null]),
    });
    let old_too_long = Message::Delete(Delete {
        relation_id: ITEMS,
        old: OldTuple::Full(row(1, None, &["extra"])),
    });
    for (message, values) in [(short, 1), (old_too_long, 4)] {
        let err = stream.feed(0x100, [message]).unwrap_err();
        assert_eq!(
            err,
            StreamError::RowWidth {
                table: "public.items".into(),
                columns: 3,
                values
            }
        );
    }
}

#[test]
fn values_that_do_not_parse_reach_the_event_as_out_of_range() {
    let mut stream = Stream::new(0);
    let bad = Message::Insert(Insert {
        relation_id: ITEMS,
        new: TupleData(vec![
            TupleValue::Text(Bytes::from_static(b"1")),
            TupleValue::Text(Bytes::from_static(b"not a number")),
            TupleValue::Binary(Bytes::from_static(b"\x00")),
        ]),
    });
    let events = stream
        .feed(
            0x100,
            [
                relation(ITEMS, "items", &[]),
                begin(7, 0x200),
                bad,
                commit(0x200),
            ],
        )
        .unwrap();
    let after = change(&events[0]).after.clone().unwrap();
    assert_eq!(after[0], Value::Int64(1));
    assert!(matches!(after[1], Value::OutOfRange(_)), "{:?}", after[1]);
    assert_eq!(
        after[2],
        Value::OutOfRange("unexpected binary-format value".into())
    );
}
