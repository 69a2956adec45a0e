//! The stream decoder fed pgoutput messages built with the real [`super::super::pgoutput`] types, the way
//! the reader feeds it: Relation messages come back and are described (here without a catalog), a lost
//! connection is followed by the server replaying from the acknowledged position.

use bytes::Bytes;

use super::*;
use crate::config::ColumnPattern;
use crate::pgoutput::{
    Begin, Commit, Delete, Insert, LogicalMessage, Origin, RelationColumn, Truncate, TypeMessage,
    Update,
};
use sluice_core::event::ColumnType;

#[path = "decoder_edge_tests.rs"]
mod edge;

const ITEMS: u32 = 16_384;
const TAGS: u32 = 16_390;
const SKIPPED: u32 = 16_400;

/// The decoder as the reader drives it, describing tables from the Relation message alone.
struct Stream {
    decoder: StreamDecoder,
    selection: Selection,
}

impl Stream {
    fn new(resume: u64) -> Stream {
        Stream::with(resume, None)
    }

    fn with(resume: u64, overlap: Option<Overlap>) -> Stream {
        Stream {
            decoder: StreamDecoder::new("shop", Lsn(resume), overlap),
            selection: Selection::default(),
        }
    }

    /// Every message at `lsn`, the events they gave in order.
    fn feed(
        &mut self,
        lsn: u64,
        messages: impl IntoIterator<Item = Message>,
    ) -> Result<Vec<SourceEvent>, StreamError> {
        let mut out = Vec::new();
        for message in messages {
            if let Some(relation) = self.decoder.apply(message, Lsn(lsn), &mut out)? {
                let captured = self.describe(&relation);
                self.decoder.described(relation.id, captured);
            }
        }
        Ok(out)
    }

    /// What the reader's catalog lookup gives: int8 and text columns, the key columns as primary key.
    fn describe(&self, relation: &Relation) -> Option<Captured> {
        if relation.name == "skipped" {
            return None;
        }
        let resolved = relation
            .columns
            .iter()
            .map(|column| match column.type_oid {
                20 => ResolvedColumn {
                    column_type: ColumnType::Int64,
                    source_type: "int8".into(),
                    precision: None,
                    not_null: false,
                },
                _ => ResolvedColumn {
                    column_type: ColumnType::String,
                    source_type: "text".into(),
                    precision: None,
                    not_null: false,
                },
            })
            .collect();
        let key: Vec<String> = relation
            .columns
            .iter()
            .filter(|column| column.key)
            .map(|column| column.name.clone())
            .collect();
        Some(Captured::new(relation, &key, resolved, &self.selection))
    }
}

/// `id int8` (the key), `qty int8`, `note text`, and any `extra` text columns.
fn relation(id: u32, name: &str, extra: &[&str]) -> Message {
    let column = |name: &str, key, type_oid| RelationColumn {
        key,
        name: name.into(),
        type_oid,
        type_modifier: -1,
    };
    let mut columns = vec![
        column("id", true, 20),
        column("qty", false, 20),
        column("note", false, 25),
    ];
    columns.extend(extra.iter().map(|name| column(name, false, 25)));
    Message::Relation(Relation {
        id,
        namespace: "public".into(),
        name: name.into(),
        replica_identity: b'd',
        columns,
    })
}

fn begin(xid: u32, final_lsn: u64) -> Message {
    Message::Begin(Begin {
        final_lsn: Lsn(final_lsn),
        commit_time_us: 1_700_000_000_000_000 + i64::from(xid),
        xid,
    })
}

/// The commit of the transaction whose commit record is at `commit_lsn`; it ends 0x28 later.
fn commit(commit_lsn: u64) -> Message {
    Message::Commit(Commit {
        flags: 0,
        commit_lsn: Lsn(commit_lsn),
        end_lsn: Lsn(commit_lsn + 0x28),
        commit_time_us: 0,
    })
}

/// A row of `id`, `qty` and `note` (None: null), then `extra` text values.
fn row(id: i64, note: Option<&str>, extra: &[&str]) -> TupleData {
    let text = |s: &str| TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()));
    let mut values = vec![
        text(&id.to_string()),
        text("1"),
        note.map_or(TupleValue::Null, text),
    ];
    values.extend(extra.iter().map(|s| text(s)));
    TupleData(values)
}

fn insert(relation_id: u32, id: i64) -> Message {
    Message::Insert(Insert {
        relation_id,
        new: row(id, Some("n"), &[]),
    })
}

fn update(relation_id: u32, old: Option<OldTuple>, new: TupleData) -> Message {
    Message::Update(Update {
        relation_id,
        old,
        new,
    })
}

fn delete(relation_id: u32, id: i64) -> Message {
    Message::Delete(Delete {
        relation_id,
        old: OldTuple::Key(TupleData(vec![
            TupleValue::Text(Bytes::from(id.to_string())),
            TupleValue::Null,
            TupleValue::Null,
        ])),
    })
}

fn logical(prefix: &str, transactional: bool) -> Message {
    Message::LogicalMessage(LogicalMessage {
        transactional,
        lsn: Lsn(0x150),
        prefix: prefix.into(),
        content: Bytes::from_static(b"hi"),
    })
}

/// Each event in one line: `create items 1 #2/1` (op, table, key, order in transaction and in table),
/// `commit 0/228`, `commit 0/228 overlap`, `idle 0/300`, `message audit`.
fn lines(events: &[SourceEvent]) -> Vec<String> {
    events
        .iter()
        .map(|event| match event {
            SourceEvent::Change(change) => {
                let key = change
                    .key_row()
                    .map_or("-".into(), |row| format!("{:?}", row[0]));
                let order = change.source.order.expect("stream changes are numbered");
                format!(
                    "{} {} {} #{}/{}",
                    format!("{:?}", change.op).to_lowercase(),
                    change.table.name,
                    key.trim_start_matches("Int64(").trim_end_matches(')'),
                    order.total,
                    order.in_table
                )
            }
            SourceEvent::Commit { position, .. } => format!("commit {}", position_line(position)),
            SourceEvent::Idle { position } => format!("idle {}", position_line(position)),
            SourceEvent::Message(message) => format!("message {}", message.prefix),
            other => panic!("the stream decoder made {other:?}"),
        })
        .collect()
}

fn position_line(position: &Position) -> String {
    match position {
        Position::Postgres { lsn } => lsn.to_string(),
        Position::PostgresSnapshot(snapshot) => format!("{} overlap", snapshot.lsn),
        other => panic!("not a PostgreSQL position: {other:?}"),
    }
}

fn change(event: &SourceEvent) -> &ChangeEvent {
    match event {
        SourceEvent::Change(change) => change,
        other => panic!("not a change: {other:?}"),
    }
}

#[test]
fn a_transaction_becomes_its_changes_then_a_commit_with_its_position() {
    let mut stream = Stream::new(0x100);
    let mut events = stream
        .feed(0x180, [relation(ITEMS, "items", &[]), begin(7, 0x200)])
        .unwrap();
    assert!(events.is_empty());
    assert!(stream.decoder.in_transaction());
    events.extend(stream.feed(0x1a0, [insert(ITEMS, 1)]).unwrap());
    events.extend(
        stream
            .feed(0x1b0, [update(ITEMS, None, row(1, Some("m"), &[]))])
            .unwrap(),
    );
    events.extend(
        stream
            .feed(0x1c0, [delete(ITEMS, 1), commit(0x200)])
            .unwrap(),
    );
    assert!(!stream.decoder.in_transaction());
    assert_eq!(
        lines(&events),
        [
            "create items 1 #1/1",
            "update items 1 #2/2",
            "delete items 1 #3/3",
            "commit 0/228"
        ]
    );
    let created = change(&events[0]);
    assert_eq!(created.source.txid, Some(7));
    assert_eq!(created.source.lsn, Lsn(0x1a0));
    assert_eq!(created.source.commit_lsn, Lsn(0x200));
    assert_eq!(created.source.commit_time_us, 1_700_000_000_000_007);
    assert_eq!(&*created.source.database, "shop");
    assert_eq!(
        created.after.as_deref(),
        Some(&[Value::Int64(1), Value::Int64(1), Value::String("n".into())][..])
    );
    assert_eq!(change(&events[2]).source.lsn, Lsn(0x1c0));
    let SourceEvent::Commit { commit_time_us, .. } = events[3] else {
        panic!("the transaction ends in a commit");
    };
    assert_eq!(commit_time_us, Some(1_700_000_000_000_007));
}

#[test]
fn changes_are_numbered_in_the_transaction_and_in_their_table() {
    let mut stream = Stream::new(0);
    let events = stream
        .feed(
            0x100,
            [
                relation(ITEMS, "items", &[]),
                relation(TAGS, "tags", &[]),
                begin(7, 0x200),
                insert(ITEMS, 1),
                insert(TAGS, 1),
                insert(ITEMS, 2),
                commit(0x200),
                begin(8, 0x300),
                insert(TAGS, 2),
                commit(0x300),
            ],
        )
        .unwrap();
    assert_eq!(
        lines(&events),
        [
            "create items 1 #1/1",
            "create tags 1 #2/1",
            "create items 2 #3/2",
            "commit 0/228",
            "create tags 2 #1/1",
            "commit 0/328"
        ]
    );
}

#[test]
fn an_update_of_the_key_is_a_delete_of_the_old_key_and_a_create_of_the_new() {
    let mut stream = Stream::new(0);
    let old = OldTuple::Key(row(1, None, &[]));
    let events = stream
        .feed(
            0x100,
            [
                relation(ITEMS, "items", &[]),
                begin(7, 0x200),
                update(ITEMS, Some(old), row(2, Some("n"), &[])),
                update(
                    ITEMS,
                    Some(OldTuple::Key(row(2, None, &[]))),
                    row(2, None, &[]),
                ),
                commit(0x200),
            ],
        )
        .unwrap();
    assert_eq!(
        lines(&events),
        [
            "delete items 1 #1/1",
            "create items 2 #2/2",
            "update items 2 #3/3",
            "commit 0/228"
        ]
    );
}

#[test]
fn a_replay_after_a_lost_connection_skips_what_was_handed_on() {
    let mut stream = Stream::new(0x100);
    let first = stream
        .feed(
            0x180,
            [
                relation(ITEMS, "items", &[]),
                begin(7, 0x200),
                insert(ITEMS, 1),
                insert(ITEMS, 2),
            ],
        )
        .unwrap();
    assert_eq!(
        lines(&first),
        ["create items 1 #1/1", "create items 2 #2/2"]
    );
    stream.decoder.connection_lost();
    assert!(!stream.decoder.in_transaction());
    // The server starts again at the acknowledged position, before the transaction, and sends the
    // relation again in the new session.
    let replay = [
        relation(ITEMS, "items", &[]),
        begin(7, 0x200),
        insert(ITEMS, 1),
        insert(ITEMS, 2),
        insert(ITEMS, 3),
        commit(0x200),
    ];
    let events = stream.feed(0x180, replay).unwrap();
    assert_eq!(
        lines(&events),
        ["create items 3 #3/3", "commit 0/228"],
        "the replayed part is dropped, the rest keeps its numbers"
    );
}

#[test]
fn a_transaction_cut_off_twice_hands_on_each_change_once() {
    let mut stream = Stream::new(0x100);
    stream.feed(0x180, [relation(ITEMS, "items", &[])]).unwrap();
    let first = stream
        .feed(0x180, [begin(7, 0x200), insert(ITEMS, 1)])
        .unwrap();
    stream.decoder.connection_lost();
    let second = stream
        .feed(0x180, [begin(7, 0x200), insert(ITEMS, 1), insert(ITEMS, 2)])
        .unwrap();
    stream.decoder.connection_lost();
    let third = stream
        .feed(
            0x180,
            [
                begin(7, 0x200),
                insert(ITEMS, 1),
                insert(ITEMS, 2),
                logical("audit", true),
                commit(0x200),
            ],
        )
        .unwrap();
    assert_eq!(lines(&first), ["create items 1 #1/1"]);
    assert_eq!(lines(&second), ["create items 2 #2/2"]);
    assert_eq!(lines(&third), ["message audit", "commit 0/228"]);
}

#[test]
fn a_replayed_message_is_skipped_like_a_change() {
    let mut stream = Stream::new(0x100);
    let first = stream
        .feed(0x180, [begin(7, 0x200), logical("audit", true)])
        .unwrap();
    assert_eq!(lines(&first), ["message audit"]);
    stream.decoder.connection_lost();
    let replay = stream
        .feed(
            0x180,
            [begin(7, 0x200), logical("audit", true), commit(0x200)],
        )
        .unwrap();
    assert_eq!(lines(&replay), ["commit 0/228"]);
}

#[test]
fn another_transaction_after_a_lost_connection_is_not_skipped() {
    // The cut-off transaction never comes again (it was rolled back, its changes were never committed):
    // the next one is a different transaction and is handed on whole.
    let mut stream = Stream::new(0x100);
    stream
        .feed(
            0x180,
            [
                relation(ITEMS, "items", &[]),
                begin(7, 0x200),
                insert(ITEMS, 1),
            ],
        )
        .unwrap();
    stream.decoder.connection_lost();
    let events = stream
        .feed(0x180, [begin(8, 0x300), insert(ITEMS, 5), commit(0x300)])
        .unwrap();
    assert_eq!(lines(&events), ["create items 5 #1/1", "commit 0/328"]);
}

#[test]
fn transactions_committed_before_the_resume_position_are_skipped_whole() {
    // Resuming at the end of the transaction committed at 0x200: the server may send it again.
    let mut stream = Stream::new(0x228);
    let events = stream
        .feed(
            0x180,
            [
                relation(ITEMS, "items", &[]),
                begin(7, 0x200),
                insert(ITEMS, 1),
                logical("audit", true),
                commit(0x200),
                begin(8, 0x228),
                insert(ITEMS, 2),
                commit(0x228),
            ],
        )
        .unwrap();
    assert_eq!(
        lines(&events),
        ["create items 2 #1/1", "commit 0/250"],
        "a commit record at the resume position itself comes after it"
    );
}

#[test]
fn a_transaction_handed_on_whole_before_a_lost_connection_is_skipped_on_replay() {
    let mut stream = Stream::new(0x100);
    let tx = |id| [begin(7, 0x200), insert(ITEMS, id), commit(0x200)];
    stream.feed(0x180, [relation(ITEMS, "items", &[])]).unwrap();
    assert_eq!(
        lines(&stream.feed(0x180, tx(1)).unwrap()),
        ["create items 1 #1/1", "commit 0/228"]
    );
    // Lost before the pipeline acknowledged it: the server sends it again from the older position.
    stream.decoder.connection_lost();
    assert!(stream.feed(0x180, tx(1)).unwrap().is_empty());
    let next = stream
        .feed(0x240, [begin(8, 0x300), insert(ITEMS, 2), commit(0x300)])
        .unwrap();
    assert_eq!(lines(&next), ["create items 2 #1/1", "commit 0/328"]);
}

#[test]
fn a_relation_message_mid_stream_changes_the_table_model() {
    let mut stream = Stream::new(0);
    let before = stream
        .feed(
            0x100,
            [
                relation(ITEMS, "items", &[]),
                begin(7, 0x200),
                insert(ITEMS, 1),
            ],
        )
        .unwrap();
    // ALTER TABLE items ADD COLUMN colour text, then a row with it, in the same transaction.
    let widened = Message::Insert(Insert {
        relation_id: ITEMS,
        new: row(2, None, &["red"]),
    });
    let after = stream
        .feed(
            0x180,
            [
                relation(ITEMS, "items", &["colour"]),
                widened,
                commit(0x200),
            ],
        )
        .unwrap();
    assert_eq!(change(&before[0]).table.columns.len(), 3);
    assert_eq!(lines(&after), ["create items 2 #2/2", "commit 0/228"]);
    let added = change(&after[0]);
    assert_eq!(added.table.columns.len(), 4);
    assert_eq!(
        added.after.as_ref().unwrap()[3],
        Value::String("red".into())
    );
    // A row of the old shape no longer fits.
    stream.feed(0x300, [begin(8, 0x400)]).unwrap();
    let err = stream.feed(0x300, [insert(ITEMS, 3)]).unwrap_err();
    assert_eq!(
        err,
        StreamError::RowWidth {
            table: "public.items".into(),
            columns: 4,
            values: 3
        }
    );
    assert_eq!(
        err.to_string(),
        "replication stream out of order: public.items has 4 columns but a row arrived with 3"
    );
}

#[test]
fn a_table_the_selection_leaves_out_gives_no_events_and_no_numbers() {
    let mut stream = Stream::new(0);
    let events = stream
        .feed(
            0x100,
            [
                relation(SKIPPED, "skipped", &[]),
                relation(ITEMS, "items", &[]),
                begin(7, 0x200),
                insert(SKIPPED, 1),
                delete(SKIPPED, 1),
                insert(ITEMS, 1),
                commit(0x200),
            ],
        )
        .unwrap();
    assert_eq!(lines(&events), ["create items 1 #1/1", "commit 0/228"]);
}

#[test]
fn excluded_columns_are_left_out_of_the_rows() {
    let mut stream = Stream::new(0);
    stream.selection.exclude_columns = vec![ColumnPattern::parse("public.items.note").unwrap()];
    let events = stream
        .feed(
            0x100,
            [
                relation(ITEMS, "items", &[]),
                begin(7, 0x200),
                insert(ITEMS, 1),
                commit(0x200),
            ],
        )
        .unwrap();
    let created = change(&events[0]);
    let names: Vec<&str> = created
        .table
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["id", "qty"]);
    assert_eq!(
        created.after.as_deref(),
        Some(&[Value::Int64(1), Value::Int64(1)][..])
    );
}

#[test]
fn unchanged_toast_is_restored_from_a_full_old_row() {
    let toast = |id: i64| {
        let mut tuple = row(id, None, &[]);
        tuple.0[2] = TupleValue::UnchangedToast;
        tuple
    };
    let mut stream = Stream::new(0);
    let events = stream
        .feed(
            0x100,
            [
                relation(ITEMS, "items", &[]),
                begin(7, 0x200),
                // REPLICA IDENTITY FULL: the old row has the value.
                update(
                    ITEMS,
                    Some(OldTuple::Full(row(1, Some("long"), &[]))),
                    toast(1),
                ),
                // The old row's value was not sent either: nothing to restore it from.
                update(ITEMS, Some(OldTuple::Full(toast(2))), toast(2)),
                // Only the key: the event says the value is unchanged.
                update(ITEMS, Some(OldTuple::Key(row(3, None, &[]))), toast(3)),
                update(ITEMS, None, toast(4)),
                commit(0x200),
            ],
        )
        .unwrap();
    let note = |i: usize| change(&events[i]).after.as_ref().unwrap()[2].clone();
    assert_eq!(note(0), Value::String("long".into()));
    assert_eq!(note(1), Value::UnchangedToast);
    assert_eq!(note(2), Value::UnchangedToast);
    assert_eq!(note(3), Value::UnchangedToast);
    assert_eq!(
        change(&events[0]).before.as_ref().unwrap()[2],
        Value::String("long".into())
    );
}

#[test]
fn restore_unchanged_toast_leaves_changed_values_alone() {
    let mut after = vec![
        Value::UnchangedToast,
        Value::Int64(2),
        Value::UnchangedToast,
    ];
    let before = vec![Value::Int64(1), Value::Int64(9), Value::UnchangedToast];
    restore_unchanged_toast(&mut after, &before);
    assert_eq!(
        after,
        [Value::Int64(1), Value::Int64(2), Value::UnchangedToast]
    );
}

#[test]
fn a_truncate_is_one_event_per_captured_table() {
    let mut stream = Stream::new(0);
    let truncate = Message::Truncate(Truncate {
        cascade: true,
        restart_identity: false,
        relation_ids: vec![ITEMS, SKIPPED, TAGS],
    });
    let events = stream
        .feed(
            0x100,
            [
                relation(ITEMS, "items", &[]),
                relation(TAGS, "tags", &[]),
                relation(SKIPPED, "skipped", &[]),
                begin(7, 0x200),
                insert(ITEMS, 1),
                truncate,
                commit(0x200),
            ],
        )
        .unwrap();
    assert_eq!(
        lines(&events),
        [
            "create items 1 #1/1",
            "truncate items - #2/2",
            "truncate tags - #3/1",
            "commit 0/228"
        ]
    );
}

#[test]
fn logical_decoding_messages_become_events_and_heartbeats_do_not() {
    let mut stream = Stream::new(0);
    let outside = stream
        .feed(
            0x100,
            [logical("audit", false), logical(HEARTBEAT_PREFIX, false)],
        )
        .unwrap();
    let inside = stream
        .feed(
            0x180,
            [
                begin(7, 0x200),
                logical("audit", true),
                logical(HEARTBEAT_PREFIX, true),
                commit(0x200),
            ],
        )
        .unwrap();
    assert_eq!(lines(&outside), ["message audit"]);
    assert_eq!(lines(&inside), ["message audit", "commit 0/228"]);
    let SourceEvent::Message(alone) = &outside[0] else {
        unreachable!()
    };
    assert_eq!((alone.txid, alone.commit_time_us), (None, None));
    assert_eq!(
        (alone.database.as_str(), &alone.content[..]),
        ("shop", &b"hi"[..])
    );
    assert_eq!(alone.lsn, Lsn(0x150));
    let SourceEvent::Message(in_tx) = &inside[0] else {
        unreachable!()
    };
    assert!(in_tx.transactional);
    assert_eq!(in_tx.txid, Some(7));
    assert_eq!(in_tx.commit_time_us, Some(1_700_000_000_000_007));
}

#[test]
fn without_capture_messages_only_watermarks_pass() {
    let mut stream = Stream::new(0);
    stream.decoder = StreamDecoder::new("shop", Lsn(0), None).with_user_messages(false);
    let events = stream
        .feed(
            0x100,
            [
                logical("audit", false),
                logical(sluice_core::incremental::Watermark::PREFIX, false),
                logical(HEARTBEAT_PREFIX, false),
            ],
        )
        .unwrap();
    assert_eq!(lines(&events), ["message sluice.watermark"]);
}

#[test]
fn origin_and_type_messages_give_nothing() {
    let mut stream = Stream::new(0);
    let events = stream
        .feed(
            0x100,
            [
                begin(7, 0x200),
                Message::Origin(Origin {
                    commit_lsn: Lsn(0x200),
                    name: "upstream".into(),
                }),
                Message::Type(TypeMessage {
                    id: 90_000,
                    namespace: "public".into(),
                    name: "mood".into(),
                }),
                commit(0x200),
            ],
        )
        .unwrap();
    assert_eq!(lines(&events), ["commit 0/228"]);
}

#[test]
fn a_keepalive_outside_a_transaction_is_an_idle_position() {
    let mut stream = Stream::new(0x100);
    let mut out = Vec::new();
    stream.decoder.idle(Lsn(0x100), &mut out);
    assert!(out.is_empty(), "nothing past the resume position");
    stream.decoder.idle(Lsn(0x180), &mut out);
    stream.feed(0x180, [begin(7, 0x200)]).unwrap();
    stream.decoder.idle(Lsn(0x300), &mut out);
    assert_eq!(lines(&out), ["idle 0/180"], "not inside a transaction");
    stream.feed(0x200, [commit(0x200)]).unwrap();
    stream.decoder.idle(Lsn(0x210), &mut out);
    assert_eq!(
        lines(&out),
        ["idle 0/180"],
        "not behind the commit handed on"
    );
}
