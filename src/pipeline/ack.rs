//! Acknowledgement tracking: [`AckTracker`] follows every produced message until the broker acknowledges
//! it and works out the newest source position whose events — and all events before them — are on the
//! broker. Only that position is stored and committed to the source.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::metrics::histogram::Histogram;
use sluice_core::event::Position;
use sluice_core::positions::now_us;

/// Groups messages by the source position that acknowledges them (a transaction, or an idle point).
///
/// Messages are registered under the currently open group; [`AckTracker::close_group`] seals it with its
/// position. Deliveries may come back in any order (partitions are independent); a position becomes
/// acknowledged only when its group and every earlier group have no message outstanding.
#[derive(Default)]
pub struct AckTracker {
    state: Mutex<TrackerState>,
    changed: Notify,
    commit_to_ack: Histogram,
}

#[derive(Default)]
struct TrackerState {
    /// Ordinal of `groups[0]`.
    first: u64,
    groups: VecDeque<Group>,
    acknowledged: Option<Position>,
    outstanding: u64,
}

#[derive(Default)]
struct Group {
    outstanding: u64,
    /// Whether any message was registered: an empty group's acknowledgement says nothing about latency.
    carries_messages: bool,
    /// Set when the group is sealed.
    position: Option<Position>,
    /// The source's commit time of a streamed transaction (microseconds since the epoch).
    commit_time_us: Option<i64>,
}

impl AckTracker {
    pub fn new() -> AckTracker {
        AckTracker::default()
    }

    /// Registers one message under the open group and returns the group's ordinal, which the delivery report
    /// hands back to [`AckTracker::delivered`].
    pub fn register(&self) -> u64 {
        let mut state = self.lock();
        if state.groups.back().is_none_or(|g| g.position.is_some()) {
            state.groups.push_back(Group::default());
        }
        let ordinal = state.first + state.groups.len() as u64 - 1;
        if let Some(group) = state.groups.back_mut() {
            group.outstanding += 1;
            group.carries_messages = true;
        }
        state.outstanding += 1;
        ordinal
    }

    /// Seals the open group (creating an empty one if nothing is open) with the position that acknowledges
    /// it and, for a streamed transaction, its commit time.
    pub fn close_group(&self, position: Position, commit_time_us: Option<i64>) {
        let mut state = self.lock();
        match state.groups.back_mut() {
            Some(group) if group.position.is_none() => {
                group.position = Some(position);
                group.commit_time_us = commit_time_us;
            }
            _ => state.groups.push_back(Group {
                position: Some(position),
                commit_time_us,
                ..Group::default()
            }),
        }
        if state.advance(&self.commit_to_ack) {
            self.changed.notify_waiters();
        }
    }

    /// One message of group `ordinal` is on the broker.
    pub fn delivered(&self, ordinal: u64) {
        let mut state = self.lock();
        let index = ordinal.checked_sub(state.first).map(|i| i as usize);
        let Some(group) = index.and_then(|i| state.groups.get_mut(i)) else {
            tracing::error!(ordinal, "delivery report for an unknown message group");
            return;
        };
        group.outstanding = group.outstanding.saturating_sub(1);
        state.outstanding = state.outstanding.saturating_sub(1);
        if state.advance(&self.commit_to_ack) || state.outstanding == 0 {
            self.changed.notify_waiters();
        }
    }

    /// The newest position all of whose events are on the broker.
    pub fn acknowledged(&self) -> Option<Position> {
        self.lock().acknowledged.clone()
    }

    /// Messages produced and not yet acknowledged.
    pub fn outstanding(&self) -> u64 {
        self.lock().outstanding
    }

    /// A future that completes when the acknowledged position or the outstanding count may have changed.
    /// Create it before reading the state, so that a change in between is not missed.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Commit-to-acknowledgement latency of every streamed transaction that carried events.
    pub fn commit_to_ack(&self) -> &Histogram {
        &self.commit_to_ack
    }

    /// Wakes every waiter (used at shutdown).
    pub fn wake(&self) {
        self.changed.notify_waiters();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TrackerState> {
        // A panic elsewhere while holding the lock leaves counters that are still consistent enough to read.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl TrackerState {
    /// Pops every complete group at the front, timing the transactions among them; true when the
    /// acknowledged position moved.
    fn advance(&mut self, commit_to_ack: &Histogram) -> bool {
        let mut moved = false;
        while let Some(front) = self.groups.front() {
            match front.position {
                Some(_) if front.outstanding == 0 => {
                    if let (true, Some(committed)) = (front.carries_messages, front.commit_time_us)
                    {
                        commit_to_ack.observe_us(now_us().saturating_sub(committed).max(0) as u64);
                    }
                    self.acknowledged = self.groups.pop_front().and_then(|group| group.position);
                    self.first += 1;
                    moved = true;
                }
                _ => break,
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::event::Lsn;

    fn at(lsn: u64) -> Position {
        Position::Postgres { lsn: Lsn(lsn) }
    }

    #[test]
    fn a_position_waits_for_every_earlier_delivery() {
        let tracker = AckTracker::new();
        let first = tracker.register();
        let _ = tracker.register();
        tracker.close_group(at(10), None);
        let second = tracker.register();
        tracker.close_group(at(20), None);
        assert_ne!(first, second);

        // The second transaction is delivered first: nothing is acknowledged yet.
        tracker.delivered(second);
        assert_eq!(tracker.acknowledged(), None);
        tracker.delivered(first);
        assert_eq!(
            tracker.acknowledged(),
            None,
            "one message of the first transaction is still out"
        );
        tracker.delivered(first);
        assert_eq!(tracker.acknowledged(), Some(at(20)));
        assert_eq!(tracker.outstanding(), 0);
    }

    #[test]
    fn an_open_transaction_holds_back_later_idle_points() {
        let tracker = AckTracker::new();
        tracker.close_group(at(5), None);
        assert_eq!(
            tracker.acknowledged(),
            Some(at(5)),
            "an empty group is acknowledged at once"
        );
        let open = tracker.register();
        tracker.delivered(open);
        assert_eq!(tracker.acknowledged(), Some(at(5)), "not sealed yet");
        tracker.close_group(at(9), None);
        assert_eq!(tracker.acknowledged(), Some(at(9)));
    }

    #[test]
    fn each_transaction_with_events_is_timed_from_its_commit_to_its_last_acknowledgement() {
        let tracker = AckTracker::new();
        let committed = now_us() - 2_000_000;
        let message = tracker.register();
        tracker.close_group(at(10), Some(committed));
        // Transactions without events (filtered out) and idle points are not timed.
        tracker.close_group(at(11), Some(committed));
        tracker.close_group(at(12), None);
        assert_eq!(tracker.commit_to_ack().count(), 0, "not acknowledged yet");
        tracker.delivered(message);
        assert_eq!(tracker.acknowledged(), Some(at(12)));
        assert_eq!(tracker.commit_to_ack().count(), 1);
        assert!(tracker.commit_to_ack().sum_us() >= 2_000_000);
    }

    #[test]
    fn unknown_ordinals_are_ignored() {
        let tracker = AckTracker::new();
        tracker.delivered(42);
        assert_eq!(tracker.acknowledged(), None);
    }
}
