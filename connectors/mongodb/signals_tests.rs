use mongodb::bson::{doc, Document};
use mongodb::options::ClientOptions;
use sluice_core::event::{DocumentSource, SnapshotMarker};
use sluice_core::incremental::Chunk;
use sluice_core::metrics::NoMetrics;

use super::*;
use crate::change::canonical_json;
use crate::config::CollectionPattern;
use crate::signal_collection::watermark_document;

/// A relay whose client would connect only when used (no test here makes it read).
async fn relay() -> Incremental {
    let options = ClientOptions::parse("mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=100")
        .await
        .unwrap();
    let reader = ReaderSettings {
        client: mongodb::Client::with_options(options).unwrap(),
        replica_set: None,
        signal_collection: "shop.sluice_signals".into(),
        chunk_rows: 10,
    };
    let selection = CollectionSelection {
        include: vec![CollectionPattern::parse("shop.*").unwrap()],
        exclude: vec![CollectionPattern::parse("shop.sluice_signals").unwrap()],
    };
    Incremental::new(selection, reader, None, std::sync::Arc::new(NoMetrics))
}

fn change(collection: &str, op: Op, id: i32, document: Option<Document>) -> DocumentChange {
    DocumentChange {
        database: "shop".into(),
        collection: collection.into(),
        op,
        key: canonical_json(&Bson::Int32(id)),
        before: None,
        after: document.map(|d| canonical_json(&Bson::Document(d))),
        update: None,
        source: DocumentSource {
            replica_set: None,
            cluster_time: (1, 1),
            wall_time_ms: None,
            txn_number: None,
            lsid: None,
            resume_token: None,
            snapshot: SnapshotMarker::False,
        },
    }
}

/// An insert into the signal collection.
fn inserted(document: Document) -> SourceEvent {
    SourceEvent::Document(change("sluice_signals", Op::Create, 0, Some(document)))
}

fn commit(n: u8) -> SourceEvent {
    SourceEvent::Commit {
        position: token(n),
        commit_time_us: None,
    }
}

fn token(n: u8) -> Position {
    Position::Mongodb {
        resume_token: format!(r#"{{"_data":"8{n}"}}"#),
    }
}

fn run(relay: &mut Incremental, events: Vec<SourceEvent>) -> Vec<SourceEvent> {
    let mut out = Vec::new();
    for event in events {
        relay.process(event, &mut out);
    }
    out
}

#[tokio::test]
async fn signal_documents_are_acted_on_never_passed_on_and_positions_carry_the_progress() {
    let mut relay = relay().await;
    let execute = doc! { "_id": "s1", "type": "execute-snapshot", "data": "{\"data-collections\": [\"shop.orders\"]}" };
    let out = run(&mut relay, vec![inserted(execute), commit(1)]);
    assert_eq!(out.len(), 1, "{out:?}");
    let SourceEvent::Commit { position, .. } = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(position.stream(), &token(1));
    let progress = position.incremental().expect("the progress rides along");
    assert_eq!(progress.tables[0].name, "shop.orders");

    // Changes of captured collections pass; the signal collection's updates and deletes do not.
    let out = run(
        &mut relay,
        vec![
            SourceEvent::Document(change("orders", Op::Update, 4, Some(doc! { "_id": 4 }))),
            SourceEvent::Document(change("sluice_signals", Op::Delete, 0, None)),
        ],
    );
    assert!(
        matches!(&out[..], [SourceEvent::Document(c)] if c.collection == "orders"),
        "{out:?}"
    );
}

#[tokio::test]
async fn malformed_and_refused_signals_are_dead_letters_of_the_signal_collection() {
    let mut relay = relay().await;
    let out = run(
        &mut relay,
        vec![
            inserted(doc! { "_id": "b1", "data": "{}" }),
            inserted(
                doc! { "_id": "b2", "type": "execute-snapshot", "data": "{\"data-collections\": 7}" },
            ),
            // The signal collection itself, and a collection the stream does not capture.
            inserted(
                doc! { "_id": "b3", "type": "execute-snapshot", "data": "{\"data-collections\": [\"shop.sluice_signals\", \"other.x\"]}" },
            ),
        ],
    );
    let reasons: Vec<&str> = out
        .iter()
        .map(|event| match event {
            SourceEvent::BadSignal(letter) => {
                assert_eq!(letter.connector, "mongodb");
                assert_eq!(letter.namespace.as_deref(), Some("shop.sluice_signals"));
                assert!(letter.raw.contains("\"_id\":\"b"), "{}", letter.raw);
                letter.reason.as_str()
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(reasons.len(), 3);
    assert!(reasons[0].contains("no `type`"), "{reasons:?}");
    assert!(reasons[1].contains("data-collections"), "{reasons:?}");
    assert!(reasons[2].contains("not captured"), "{reasons:?}");
    assert!(relay.reading.progress.tables.is_empty());
}

/// A relay reading `tables`, its reader's deliveries sent by the test.
async fn reading(
    tables: &[&str],
) -> (Incremental, mpsc::Sender<crate::incremental::Delivery>, u64) {
    let mut relay = relay().await;
    let names: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
    relay.reading.progress.request(&names, &[]);
    let (reading, tx) = relay.reading.feed();
    (relay, tx, reading)
}

fn mark(relay: &Incremental, reading: u64, number: u64, high: bool) -> SourceEvent {
    inserted(watermark_document(&Watermark {
        run: relay.reading.windows.run().to_string(),
        reading,
        number,
        high,
    }))
}

#[tokio::test]
async fn a_chunk_is_published_at_its_high_watermark_without_what_the_stream_changed_inside_it() {
    let (mut relay, tx, reading) = reading(&["shop.orders"]).await;
    let low = mark(&relay, reading, 1, false);
    let changed = SourceEvent::Document(change(
        "orders",
        Op::Update,
        2,
        Some(doc! { "_id": 2, "v": "new" }),
    ));
    let out = run(&mut relay, vec![low, changed, commit(1)]);
    assert_eq!(out.len(), 2, "the change and the position: {out:?}");
    let rows: Vec<(String, DocumentChange)> = [1, 2, 3]
        .into_iter()
        .map(|id| {
            let mut row = change("orders", Op::Read, id, Some(doc! { "_id": id, "v": "old" }));
            row.source.snapshot = SnapshotMarker::Incremental;
            (row.key.clone(), row)
        })
        .collect();
    tx.send(crate::incremental::Delivery::Chunk {
        model: (),
        chunk: Chunk {
            reading,
            number: 1,
            table: "shop.orders".into(),
            rows,
            last_key: Some(vec![canonical_json(&Bson::Int32(3))]),
            until_key: Some(vec![canonical_json(&Bson::Int32(3))]),
            estimated: Some(3),
            table_done: true,
        },
    })
    .await
    .unwrap();
    let high = mark(&relay, reading, 1, true);
    let out = run(&mut relay, vec![high, commit(2)]);
    let published: Vec<&str> = out
        .iter()
        .filter_map(|event| match event {
            SourceEvent::Document(row) => Some(row.key.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        published,
        [r#"{"$numberInt":"1"}"#, r#"{"$numberInt":"3"}"#]
    );
    // The only collection is done: the position after the chunk carries the finished snapshot once, so
    // that what it read is on record; the next one none.
    let Some(SourceEvent::Commit { position, .. }) = out.last() else {
        panic!("{out:?}")
    };
    let finished = position.incremental().expect("carried once");
    assert!(
        finished.finished() && finished.tables[0].rows == 3,
        "{finished:?}"
    );
    let out = run(&mut relay, vec![commit(3)]);
    assert!(
        matches!(&out[..], [SourceEvent::Commit { position, .. }] if *position == token(3)),
        "{out:?}"
    );
}

#[tokio::test]
async fn a_refusal_is_stored_with_an_idle_point_at_the_last_position() {
    let (mut relay, tx, reading) = reading(&["shop.orders", "shop.items"]).await;
    run(&mut relay, vec![commit(7)]);
    tx.send(crate::incremental::Delivery::Refused {
        reading,
        table: "shop.orders".into(),
        reason: "the filter is not JSON".into(),
    })
    .await
    .unwrap();
    let mut out = Vec::new();
    relay.poll(&mut out);
    assert!(
        matches!(&out[0], SourceEvent::BadSignal(letter) if letter.reason.contains("shop.orders: the filter")),
        "{out:?}"
    );
    let Some(SourceEvent::Idle { position }) = out.get(1) else {
        panic!("{out:?}")
    };
    assert_eq!(position.stream(), &token(7));
    let names: Vec<&str> = position
        .incremental()
        .unwrap()
        .tables
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(names, ["shop.items"]);
    // A refusal of an earlier reading is forgotten.
    tx.send(crate::incremental::Delivery::Refused {
        reading: reading - 1,
        table: "shop.items".into(),
        reason: "old".into(),
    })
    .await
    .unwrap();
    let mut out = Vec::new();
    relay.poll(&mut out);
    assert!(out.is_empty(), "{out:?}");
}

#[tokio::test]
async fn a_stored_snapshot_of_collections_no_longer_captured_is_not_read_on() {
    let mut stored = Progress::default();
    stored.request(&["elsewhere.gone".into()], &[]);
    let mut relay = relay().await;
    relay.stored = Some(stored);
    relay.carry_on_stored();
    assert!(
        relay.reading.progress.tables.is_empty(),
        "{:?}",
        relay.reading.progress
    );
    assert!(!relay.reading.is_reading(), "nothing to read");
}
