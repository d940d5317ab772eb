//! Time for probes: the only place this crate reads the time or waits for it.
//!
//! [`Clock`] is what the tracker, the runners and the driver see.
//! [`SystemClock`] is tokio's time (so tokio's paused test time works with
//! it); [`ManualClock`] only moves when a test calls
//! [`ManualClock::advance`], and wakes every sleeper whose deadline it
//! passed. Both guarantee that a sleep whose deadline is already past
//! returns at once, so a wake-up can never be lost between reading `now()`
//! and sleeping.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// A future returned by [`Clock::sleep_until`].
pub type Sleep<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// A source of time that can be replaced in tests.
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> Instant;

    /// Completes once `now() >= deadline`.
    fn sleep_until(&self, deadline: Instant) -> Sleep<'_>;
}

/// Real time, through tokio's timer.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn sleep_until(&self, deadline: Instant) -> Sleep<'_> {
        Box::pin(tokio::time::sleep_until(deadline.into()))
    }
}

/// A clock that stands still until told to move, for tests.
#[derive(Debug)]
pub struct ManualClock {
    now: watch::Sender<Instant>,
}

impl ManualClock {
    /// A clock standing at the current real instant.
    pub fn new() -> Self {
        ManualClock::starting_at(Instant::now())
    }

    /// A clock standing at `start`.
    pub fn starting_at(start: Instant) -> Self {
        ManualClock { now: watch::Sender::new(start) }
    }

    /// Moves the clock forward by `by` and wakes the sleepers it passed.
    pub fn advance(&self, by: Duration) {
        self.now.send_modify(|now| *now += by);
    }

    /// Moves the clock forward by `seconds` (fractional allowed).
    pub fn advance_secs(&self, seconds: f64) {
        self.advance(Duration::from_secs_f64(seconds));
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.now.borrow()
    }

    fn sleep_until(&self, deadline: Instant) -> Sleep<'_> {
        let mut now = self.now.subscribe();
        Box::pin(async move {
            // `wait_for` checks the current value first, so an advance made
            // before this future was polled is not missed. It fails only if
            // the sender is gone, which cannot happen while `self` is
            // borrowed.
            let _ = now.wait_for(|now| *now >= deadline).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_sleep_wakes_only_when_advanced_past_the_deadline() {
        let clock = ManualClock::new();
        let deadline = clock.now() + Duration::from_secs(5);
        let mut sleep = clock.sleep_until(deadline);
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        clock.advance_secs(4.0);
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        clock.advance_secs(1.0);
        tokio::time::timeout(Duration::from_secs(10), sleep)
            .await
            .expect("the sleep ends once the clock reaches its deadline");
    }

    #[tokio::test]
    async fn sleeping_until_a_past_instant_returns_at_once() {
        let clock = ManualClock::new();
        let past = clock.now();
        clock.advance_secs(1.0);
        tokio::time::timeout(Duration::from_secs(10), clock.sleep_until(past))
            .await
            .expect("a past deadline does not wait");
        let system = SystemClock;
        let before = system.now();
        tokio::time::timeout(Duration::from_secs(10), system.sleep_until(before))
            .await
            .expect("a past deadline does not wait");
        assert!(system.now() >= before);
    }

    #[tokio::test]
    async fn a_sleeper_in_another_task_is_woken_by_advance() {
        let clock = std::sync::Arc::new(ManualClock::new());
        let deadline = clock.now() + Duration::from_millis(1500);
        let sleeper = {
            let clock = clock.clone();
            tokio::spawn(async move { clock.sleep_until(deadline).await })
        };
        clock.advance_secs(2.0);
        tokio::time::timeout(Duration::from_secs(10), sleeper).await.expect("woken").unwrap();
    }
}
