//! The one reconnect policy every source uses: wait, doubling from half a second up to a bound, and start
//! again from half a second once a connection has lasted a while.

use std::time::Duration;

use tokio::time::Instant;

/// The first wait after a lost connection.
pub const FIRST_DELAY: Duration = Duration::from_millis(500);

/// Waits between attempts to reopen a lost connection.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
    /// When the current connection was opened (or the last attempt made).
    since: Instant,
}

impl Backoff {
    pub fn new(max: Duration) -> Backoff {
        Backoff {
            next: FIRST_DELAY,
            max,
            since: Instant::now(),
        }
    }

    /// The wait before the next attempt. A connection that lasted more than twice the bound since it was
    /// opened (or since the last failure) was a success: the waits start over.
    pub fn next_delay(&mut self) -> Duration {
        if self.since.elapsed() > self.max * 2 {
            self.next = FIRST_DELAY;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        self.since = Instant::now();
        delay
    }

    /// The last attempt succeeded: the next failure waits the shortest time again.
    pub fn reset(&mut self) {
        self.next = FIRST_DELAY;
    }

    /// A connection (or attempt) begins now.
    pub fn connecting(&mut self) {
        self.since = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_double_up_to_the_bound_and_start_over_after_a_long_connection() {
        let mut backoff = Backoff::new(Duration::from_secs(4));
        let waits: Vec<_> = (0..5).map(|_| backoff.next_delay()).collect();
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [500, 1000, 2000, 4000, 4000]);
        backoff.connecting();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(backoff.next_delay(), FIRST_DELAY);
    }
}
