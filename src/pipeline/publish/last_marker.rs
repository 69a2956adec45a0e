//! The snapshot's `last` marker when its last row is not published (a contract, a key value without an
//! encoding or a transform sends it to the dead-letter topic instead): the last snapshot row that was
//! published goes out again, marked `last`, so that a consumer waiting for the end of the snapshot sees it.
//! A copy of each published snapshot row's record is kept for that; the markers `true` and `last` have the
//! same length, so the copy is marked in place. When no snapshot row was published at all, the encoder
//! publishes an end record instead.

use sluice_core::event::{Lsn, SnapshotMarker};

use super::super::error::PipelineError;
use super::core::{Core, Delivery};
use crate::sink::{MessageKind, Outgoing};

/// The record of the last snapshot row published, and whether the snapshot's end is on the broker.
#[derive(Default)]
pub(super) struct LastMarker {
    held: Option<Held>,
    /// The row just published carried `last` itself.
    published: bool,
}

struct Held {
    topic: String,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    /// Where in `value` the text of `source.snapshot` starts.
    marker_at: usize,
    /// The row's `sluice.lsn` (PostgreSQL; a document snapshot read has no position of its own).
    lsn: Option<Lsn>,
}

/// A published record: its topic, and its key and value each as framing header and body (a body alone
/// when it is framed already), the value's `source.snapshot` text at `marker_at` within the whole value.
pub(super) struct Record<'a> {
    pub topic: &'a str,
    pub key: Option<[&'a [u8]; 2]>,
    pub value: [&'a [u8]; 2],
    pub marker_at: usize,
    pub lsn: Option<Lsn>,
}

impl LastMarker {
    /// A change marked `marker` was published as `record`: a snapshot row is held, the last one noted.
    pub fn note(&mut self, marker: SnapshotMarker, record: Record<'_>) {
        match marker {
            SnapshotMarker::True => self.hold(record),
            SnapshotMarker::Last => self.published = true,
            SnapshotMarker::False | SnapshotMarker::Incremental => {}
        }
    }

    fn hold(&mut self, record: Record<'_>) {
        let held = self.held.get_or_insert_with(|| Held {
            topic: String::new(),
            key: None,
            value: Vec::new(),
            marker_at: 0,
            lsn: None,
        });
        if held.topic != record.topic {
            record.topic.clone_into(&mut held.topic);
        }
        match record.key {
            Some(parts) => {
                let key = held.key.get_or_insert_with(Vec::new);
                key.clear();
                parts.iter().for_each(|part| key.extend_from_slice(part));
            }
            None => held.key = None,
        }
        held.value.clear();
        record
            .value
            .iter()
            .for_each(|part| held.value.extend_from_slice(part));
        held.marker_at = record.marker_at;
        held.lsn = record.lsn;
    }

    /// The snapshot's last row has been handled: unless it reached the broker marked `last`, the last row
    /// published goes out again marked so. False when no snapshot row was published at all: the caller
    /// publishes an end record.
    pub async fn ensure(&mut self, core: &mut Core) -> Result<bool, PipelineError> {
        if std::mem::take(&mut self.published) {
            self.held = None;
            return Ok(true);
        }
        let Some(mut held) = self.held.take() else {
            return Ok(false);
        };
        let marker = held.marker_at..held.marker_at + 4;
        match held.value.get_mut(marker) {
            Some(text) if text == b"true" => text.copy_from_slice(b"last"),
            _ => return Ok(true),
        }
        let lsn = held.lsn.map(|lsn| lsn.to_string());
        let headers: Vec<(&str, &[u8])> = match &lsn {
            Some(lsn) => vec![
                ("sluice.lsn", lsn.as_bytes()),
                ("sluice.commit_lsn", lsn.as_bytes()),
            ],
            None => Vec::new(),
        };
        let message = Outgoing {
            topic: &held.topic,
            key: held.key.as_deref(),
            payload: Some(&held.value),
            headers: &headers,
        };
        tracing::info!(topic = %held.topic, "the snapshot's last row went to the dead-letter topic: the row before it is published again, marked last");
        if let Delivery::Refused { reason, .. } = core.send(&message, MessageKind::Event).await? {
            tracing::warn!(reason, "the broker refused the snapshot's end marker");
        }
        Ok(true)
    }

    /// The end record went out: it carried `last` itself.
    pub fn ended(&mut self) {
        self.published = false;
        self.held = None;
    }
}
