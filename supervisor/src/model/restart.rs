//! Restart policies, with Kubernetes semantics.
//!
//! - `Never`: an ended agent stays ended.
//! - `OnFailure`: restart when it exited non-zero, was killed by a signal
//!   nobody asked for, or failed a liveness or startup probe.
//! - `Always`: restart whenever it ends, also after exiting 0.
//!
//! A stop asked for by a person or a budget is never followed by a restart
//! (a deadline beats retries). Back-off starts at `backoff` (10 s) and
//! doubles up to `max_backoff` (300 s); a run that lasted `reset_after`
//! (10 min) resets it. The restart count only grows. `limit` caps the
//! number of restarts.
//!
//! Pure logic: the caller measures time and sleeps; tests pass durations.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Spelled as in Kubernetes; `--restart` also takes `never`, `on-failure`,
/// `onfailure` and `always`, as [`FromStr`](std::str::FromStr) does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
pub enum RestartPolicy {
    #[default]
    #[value(name = "Never", alias = "never")]
    Never,
    #[value(name = "OnFailure", aliases = ["on-failure", "onfailure"])]
    OnFailure,
    #[value(name = "Always", alias = "always")]
    Always,
}

impl std::str::FromStr for RestartPolicy {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "Never" | "never" => Ok(RestartPolicy::Never),
            "OnFailure" | "on-failure" | "onfailure" => Ok(RestartPolicy::OnFailure),
            "Always" | "always" => Ok(RestartPolicy::Always),
            other => Err(format!("unknown restart policy {other:?} (Never, OnFailure, Always)")),
        }
    }
}

/// A restart policy with its timings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RestartSpec {
    pub policy: RestartPolicy,
    /// Most restarts; `None` for no limit.
    pub limit: Option<u32>,
    pub backoff_secs: f64,
    pub max_backoff_secs: f64,
    pub reset_after_secs: f64,
}

impl Default for RestartSpec {
    fn default() -> Self {
        RestartSpec {
            policy: RestartPolicy::Never,
            limit: None,
            backoff_secs: 10.0,
            max_backoff_secs: 300.0,
            reset_after_secs: 600.0,
        }
    }
}

/// How a run of the agent ended, as far as restarting goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// Exited 0.
    Success,
    /// Exited non-zero, or killed by a signal nobody asked for.
    Failure,
    /// Stopped because a liveness or startup probe failed.
    ProbeFailure,
    /// Stopped by a person or a budget: never restarted.
    Stopped,
}

/// Where the restart sequence stands.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RestartState {
    /// Restarts so far; only grows.
    pub count: u32,
    /// The back-off the next restart waits, once it has been used.
    pub next_backoff_secs: Option<f64>,
}

impl RestartSpec {
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("backoff", self.backoff_secs),
            ("max_backoff", self.max_backoff_secs),
            ("reset_after", self.reset_after_secs),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(format!("restart {name} must be zero or more seconds, not {value}"));
            }
        }
        if self.max_backoff_secs < self.backoff_secs {
            return Err(format!(
                "restart max_backoff ({}) is shorter than backoff ({})",
                self.max_backoff_secs, self.backoff_secs
            ));
        }
        Ok(())
    }

    /// Whether to restart after a run that ended as `end` and lasted
    /// `ran`; if so, how long to wait first. Updates `state`.
    pub fn decide(&self, state: &mut RestartState, end: RunEnd, ran: Duration) -> Option<Duration> {
        let wanted = match (self.policy, end) {
            (_, RunEnd::Stopped) | (RestartPolicy::Never, _) => false,
            (RestartPolicy::OnFailure, RunEnd::Success) => false,
            (RestartPolicy::OnFailure, _) | (RestartPolicy::Always, _) => true,
        };
        if !wanted || self.limit.is_some_and(|limit| state.count >= limit) {
            return None;
        }
        let wait = match state.next_backoff_secs {
            Some(_) if ran.as_secs_f64() >= self.reset_after_secs => self.backoff_secs,
            Some(next) => next,
            None => self.backoff_secs,
        };
        state.count += 1;
        state.next_backoff_secs = Some((wait * 2.0).min(self.max_backoff_secs).max(self.backoff_secs));
        Some(Duration::from_secs_f64(wait))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(policy: RestartPolicy) -> RestartSpec {
        RestartSpec { policy, ..RestartSpec::default() }
    }

    const SHORT: Duration = Duration::from_secs(1);

    #[test]
    fn policies_decide_by_how_the_run_ended() {
        let mut state = RestartState::default();
        assert_eq!(spec(RestartPolicy::Never).decide(&mut state, RunEnd::Failure, SHORT), None);
        assert_eq!(spec(RestartPolicy::OnFailure).decide(&mut state, RunEnd::Success, SHORT), None);
        assert!(spec(RestartPolicy::OnFailure).decide(&mut state, RunEnd::ProbeFailure, SHORT).is_some());
        let mut state = RestartState::default();
        assert!(spec(RestartPolicy::Always).decide(&mut state, RunEnd::Success, SHORT).is_some());
        for policy in [RestartPolicy::Never, RestartPolicy::OnFailure, RestartPolicy::Always] {
            assert_eq!(spec(policy).decide(&mut RestartState::default(), RunEnd::Stopped, SHORT), None);
        }
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets_after_a_long_run() {
        let spec = spec(RestartPolicy::Always);
        let mut state = RestartState::default();
        let waits: Vec<u64> =
            (0..8).map(|_| spec.decide(&mut state, RunEnd::Failure, SHORT).unwrap().as_secs()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(state.count, 8);
        // Ten minutes of running resets the back-off, not the count.
        let wait = spec.decide(&mut state, RunEnd::Failure, Duration::from_secs(600)).unwrap();
        assert_eq!(wait.as_secs(), 10);
        assert_eq!(state.count, 9);
    }

    #[test]
    fn the_limit_caps_restarts() {
        let spec = RestartSpec { limit: Some(2), ..spec(RestartPolicy::OnFailure) };
        let mut state = RestartState::default();
        assert!(spec.decide(&mut state, RunEnd::Failure, SHORT).is_some());
        assert!(spec.decide(&mut state, RunEnd::Failure, SHORT).is_some());
        assert_eq!(spec.decide(&mut state, RunEnd::Failure, SHORT), None);
        assert_eq!(state.count, 2);
    }

    #[test]
    fn refuses_bad_timings() {
        assert!(RestartSpec { backoff_secs: -1.0, ..RestartSpec::default() }.validate().is_err());
        assert!(RestartSpec { backoff_secs: 20.0, max_backoff_secs: 10.0, ..RestartSpec::default() }
            .validate()
            .is_err());
        assert!("Sometimes".parse::<RestartPolicy>().is_err());
        assert_eq!("OnFailure".parse::<RestartPolicy>(), Ok(RestartPolicy::OnFailure));
    }
}
