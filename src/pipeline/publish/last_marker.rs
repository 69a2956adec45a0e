//! The snapshot's `last` marker when its last row is not published (a contract, a key value without an
//! encoding or a transform sends it to the dead-letter topic instead): the last snapshot row that was
//! published goes out again, marked `last`, so that a consumer waiting for the end of the snapshot sees it.
//! A copy of each published snapshot row's record is kept for that; the markers `true` and `last` have the
//! same length, so the copy is marked in place.

use sluice_core::event::{ChangeEvent, Lsn, SnapshotMarker};

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
    lsn: Lsn,
}

impl LastMarker {
    /// A change was published as this record (its `source.snapshot` at `marker_at`): a snapshot row is
    /// held, the last one noted.
    pub fn note(
        &mut self,
        event: &ChangeEvent,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        marker_at: usize,
    ) {
        match event.source.snapshot {
            SnapshotMarker::True => self.hold(topic, key, value, marker_at, event.source.lsn),
            SnapshotMarker::Last => self.published = true,
            SnapshotMarker::False | SnapshotMarker::Incremental => {}
        }
    }

    fn hold(&mut self, topic: &str, key: Option<&[u8]>, value: &[u8], marker_at: usize, lsn: Lsn) {
        let held = self.held.get_or_insert_with(|| Held {
            topic: String::new(),
            key: None,
            value: Vec::with_capacity(value.len()),
            marker_at,
            lsn,
        });
        if held.topic != topic {
            topic.clone_into(&mut held.topic);
        }
        match (&mut held.key, key) {
            (Some(held_key), Some(key)) => {
                held_key.clear();
                held_key.extend_from_slice(key);
            }
            (held_key, key) => *held_key = key.map(<[u8]>::to_vec),
        }
        held.value.clear();
        held.value.extend_from_slice(value);
        held.marker_at = marker_at;
        held.lsn = lsn;
    }

    /// The snapshot's last row has been handled: unless it reached the broker marked `last`, the last row
    /// published goes out again marked so.
    pub async fn ensure(&mut self, core: &mut Core) -> Result<(), PipelineError> {
        if std::mem::take(&mut self.published) {
            self.held = None;
            return Ok(());
        }
        let Some(mut held) = self.held.take() else {
            tracing::warn!("the snapshot's last row did not reach its topic and no row before it did: no event carries source.snapshot = \"last\"");
            return Ok(());
        };
        let marker = held.marker_at..held.marker_at + 4;
        match held.value.get_mut(marker) {
            Some(text) if text == b"true" => text.copy_from_slice(b"last"),
            _ => return Ok(()),
        }
        let lsn = held.lsn.to_string();
        let headers = [
            ("sluice.lsn", lsn.as_bytes()),
            ("sluice.commit_lsn", lsn.as_bytes()),
        ];
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
        Ok(())
    }
}
