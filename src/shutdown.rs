//! The bound on a stop (`sink.shutdown_timeout_secs`): one deadline, set when the stop is requested, that
//! every stage waiting on the broker checks, so the stop as a whole stays within it.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Clone, Debug, Default)]
pub struct StopDeadline(Arc<OnceLock<Instant>>);

impl StopDeadline {
    /// A deadline that is set `timeout` after `stop` becomes true.
    pub fn follow(mut stop: watch::Receiver<bool>, timeout: Duration) -> StopDeadline {
        let deadline = StopDeadline::default();
        let set = deadline.clone();
        tokio::spawn(async move {
            while !*stop.borrow_and_update() {
                if stop.changed().await.is_err() {
                    return;
                }
            }
            let _ = set.0.set(Instant::now() + timeout);
        });
        deadline
    }

    /// None until a stop is requested.
    pub fn get(&self) -> Option<Instant> {
        self.0.get().copied()
    }

    pub fn passed(&self) -> bool {
        self.get()
            .is_some_and(|deadline| Instant::now() >= deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_deadline_starts_with_the_stop() {
        let timeout = Duration::from_millis(200);
        let (stop_tx, stop) = watch::channel(false);
        let deadline = StopDeadline::follow(stop, timeout);
        tokio::time::sleep(timeout * 2).await;
        assert_eq!(deadline.get(), None, "no stop, no deadline");
        let requested = Instant::now();
        stop_tx.send(true).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let set = deadline.get().expect("set by the stop");
        assert!(
            set >= requested + timeout && set <= requested + timeout + Duration::from_millis(20)
        );
        assert!(!deadline.passed());
        tokio::time::sleep_until(set).await;
        assert!(deadline.passed());
    }
}
