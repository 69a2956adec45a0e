//! The stream's side of signals: signal rows never pass, each acts or becomes a dead letter, and every
//! position handed on carries the progress. (The windows themselves are tested in sluice-core.)

use std::sync::Arc;
use std::time::Duration;

use sluice_core::config::SnapshotMode;
use sluice_core::event::{
    Column, ColumnType, Lsn, Op, Position, SourceEvent, SourceInfo, Table, Value,
};
use sluice_core::metrics::NoMetrics;

use super::*;
use crate::config::{DecimalHandling, TablePattern};
use crate::connection::PgConnection;
use crate::replication::SlotLifetime;

fn settings() -> PostgresSettings {
    PostgresSettings {
        // Nothing listens there: a chunk reader started by a test fails to connect and says so.
        connection: PgConnection::parse("postgres://sluice@127.0.0.1:1/shop").unwrap(),
        database: "shop".into(),
        slot: "sluice".into(),
        slot_lifetime: SlotLifetime::Permanent,
        publication: "sluice".into(),
        selection: Selection {
            tables: vec![TablePattern::parse("public.*").unwrap()],
            ..Selection::default()
        },
        status_interval: Duration::from_secs(10),
        snapshot: SnapshotMode::Never,
        capture_messages: false,
        snapshot_connections: 1,
        snapshot_chunk_rows: 1000,
        decimal_handling: DecimalHandling::Precise,
        heartbeat_interval: None,
        signal_table: Some("public.sluice_signals".into()),
        incremental_chunk_rows: 100,
        snapshot_new_tables: true,
        reselect_unchanged_toast: false,
    }
}

fn signal_row(kind: &str, data: &str) -> SourceEvent {
    let text = |name: &str| Column {
        name: name.into(),
        column_type: ColumnType::String,
        key: name == "id",
        source_type: "text".into(),
        not_null: false,
        precision: None,
    };
    let table = Arc::new(Table {
        id: 1,
        schema: "public".into(),
        name: "sluice_signals".into(),
        columns: vec![text("id"), text("type"), text("data")],
    });
    SourceEvent::Change(ChangeEvent {
        table,
        op: Op::Create,
        before: None,
        after: Some(vec![
            Value::String("s-1".into()),
            Value::String(kind.into()),
            Value::String(data.into()),
        ]),
        source: SourceInfo {
            database: "shop".into(),
            txid: Some(7),
            lsn: Lsn(0x10),
            commit_lsn: Lsn(0x20),
            commit_time_us: 0,
            snapshot: SnapshotMarker::False,
            order: None,
        },
    })
}

fn commit(lsn: u64) -> SourceEvent {
    SourceEvent::Commit {
        position: Position::Postgres { lsn: Lsn(lsn) },
        commit_time_us: Some(0),
    }
}

fn process(incremental: &mut Incremental, events: Vec<SourceEvent>) -> Vec<SourceEvent> {
    let mut decoder = StreamDecoder::new("shop", Lsn(0), None);
    let mut events = events;
    incremental.process(&mut events, &mut decoder);
    events
}

#[tokio::test]
async fn a_snapshot_signal_is_taken_out_and_its_progress_rides_on_the_commit() {
    let mut incremental = Incremental::new(&settings(), None, Arc::new(NoMetrics));
    let out = process(
        &mut incremental,
        vec![
            signal_row(
                "execute-snapshot",
                r#"{"data-collections": ["public.items"]}"#,
            ),
            commit(0x30),
        ],
    );
    assert_eq!(out.len(), 1, "{out:?}");
    let SourceEvent::Commit { position, .. } = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(position.postgres_lsn(), Some(Lsn(0x30)));
    let progress = position
        .incremental()
        .expect("the commit carries the progress");
    assert_eq!(progress.tables[0].name, "public.items");
    assert!(!progress.tables[0].done);

    // Paused, then stopped: the positions say so, and once nothing is left they are plain again.
    let out = process(
        &mut incremental,
        vec![signal_row("pause-snapshot", ""), commit(0x40)],
    );
    let SourceEvent::Commit { position, .. } = &out[0] else {
        panic!("{out:?}")
    };
    assert!(position.incremental().unwrap().paused);
    let out = process(
        &mut incremental,
        vec![signal_row("stop-snapshot", ""), commit(0x50)],
    );
    let SourceEvent::Commit { position, .. } = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(*position, Position::Postgres { lsn: Lsn(0x50) });
}

#[tokio::test]
async fn signals_that_cannot_be_acted_on_become_dead_letters() {
    let mut incremental = Incremental::new(&settings(), None, Arc::new(NoMetrics));
    let out = process(
        &mut incremental,
        vec![
            signal_row("execute-snapshot", "{not json"),
            signal_row(
                "execute-snapshot",
                r#"{"data-collections": ["other.items"]}"#,
            ),
            signal_row(
                "execute-snapshot",
                r#"{"data-collections": ["public.sluice_signals"]}"#,
            ),
            signal_row("reboot", ""),
            commit(0x30),
        ],
    );
    let reasons: Vec<&str> = out
        .iter()
        .filter_map(|e| match e {
            SourceEvent::BadSignal(bad) => Some(bad.reason.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(reasons.len(), 4, "{out:?}");
    assert!(reasons[0].contains("not a JSON object"), "{}", reasons[0]);
    assert!(reasons[1].contains("not captured"), "{}", reasons[1]);
    assert!(reasons[2].contains("not captured"), "{}", reasons[2]);
    assert!(reasons[3].contains("unknown signal type"), "{}", reasons[3]);
    let SourceEvent::BadSignal(bad) = &out[0] else {
        panic!()
    };
    assert_eq!(bad.namespace.as_deref(), Some("public.sluice_signals"));
    assert!(bad.raw.contains("\"id\":\"s-1\""), "{}", bad.raw);
    // Nothing was requested: the commit is plain.
    assert!(matches!(
        out.last(),
        Some(SourceEvent::Commit {
            position: Position::Postgres { .. },
            ..
        })
    ));
}

#[tokio::test]
async fn a_stored_snapshot_is_carried_on_and_other_changes_pass() {
    let mut progress = sluice_core::incremental::Progress::default();
    progress.request(&["public.items".into()], &[]);
    let mut incremental = Incremental::new(&settings(), Some(progress), Arc::new(NoMetrics));
    let SourceEvent::Change(mut change) = signal_row("x", "") else {
        unreachable!()
    };
    change.table = Arc::new(Table {
        name: "items".into(),
        ..(*change.table).clone()
    });
    let out = process(
        &mut incremental,
        vec![SourceEvent::Change(change), commit(0x30)],
    );
    assert!(matches!(out[0], SourceEvent::Change(_)), "{out:?}");
    let SourceEvent::Commit { position, .. } = &out[1] else {
        panic!("{out:?}")
    };
    assert_eq!(
        position.incremental().unwrap().tables[0].name,
        "public.items"
    );
}
