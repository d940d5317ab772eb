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
//! Two types, on purpose: [`RestartSpec`] is the policy as the monitor
//! applies it, every timing filled in (the `spawned` event, `AgentRecord`
//! and the monitor's spec.json keep it, with timings as numbers of seconds:
//! `"backoff_secs": 10.0`). [`RestartPartial`] is one layer of settings
//! (`[defaults]`, a policy, a role, the `--restart`/`--backoff`/... flags):
//! the same fields, each optional, so that layers merge field by field, as
//! corral.toml writes it (`backoff = "10s"`). The two cannot be one type:
//! in a layer an unset `limit` means "as the layer below says", in the spec
//! it means "no limit". [`RestartPartial::resolve`] is the one step between
//! them, and [`RestartSpec::default`] holds the only default timings.
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
    /// First delay before a restart; doubles each time.
    #[serde(rename = "backoff_secs", with = "crate::model::duration::secs")]
    pub backoff: Duration,
    /// Longest delay.
    #[serde(rename = "max_backoff_secs", with = "crate::model::duration::secs")]
    pub max_backoff: Duration,
    /// Running this long resets the delay (not the count: it only grows).
    #[serde(rename = "reset_after_secs", with = "crate::model::duration::secs")]
    pub reset_after: Duration,
}

impl Default for RestartSpec {
    fn default() -> Self {
        RestartSpec {
            policy: RestartPolicy::Never,
            limit: None,
            backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }
}

/// `restart = { ... }`: one layer of a [`RestartSpec`], each field unset
/// unless the layer sets it; durations as corral.toml writes them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartPartial {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<RestartPolicy>,
    /// Most restarts; then the agent stays ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default, with = "crate::model::duration::opt_text", skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Duration>,
    #[serde(default, with = "crate::model::duration::opt_text", skip_serializing_if = "Option::is_none")]
    pub max_backoff: Option<Duration>,
    #[serde(default, with = "crate::model::duration::opt_text", skip_serializing_if = "Option::is_none")]
    pub reset_after: Option<Duration>,
}

impl RestartPartial {
    /// Lays `other` on top of `self`, field by field.
    pub fn overlay(&mut self, other: &RestartPartial) {
        self.policy = other.policy.or(self.policy);
        self.limit = other.limit.or(self.limit);
        self.backoff = other.backoff.or(self.backoff);
        self.max_backoff = other.max_backoff.or(self.max_backoff);
        self.reset_after = other.reset_after.or(self.reset_after);
    }

    /// The spec, with [`RestartSpec::default`]'s for what no layer set.
    pub fn resolve(&self) -> RestartSpec {
        let default = RestartSpec::default();
        RestartSpec {
            policy: self.policy.unwrap_or(default.policy),
            limit: self.limit.or(default.limit),
            backoff: self.backoff.unwrap_or(default.backoff),
            max_backoff: self.max_backoff.unwrap_or(default.max_backoff),
            reset_after: self.reset_after.unwrap_or(default.reset_after),
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
    pub next_backoff: Option<Duration>,
}

impl RestartSpec {
    /// Refuses a longest back-off shorter than the first. (A timing below
    /// zero or past what corral can represent is refused where it is read.)
    pub fn validate(&self) -> Result<(), String> {
        if self.max_backoff < self.backoff {
            return Err(format!(
                "restart max_backoff ({}) is shorter than backoff ({})",
                self.max_backoff.as_secs_f64(),
                self.backoff.as_secs_f64()
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
        let wait = match state.next_backoff {
            Some(_) if ran >= self.reset_after => self.backoff,
            Some(next) => next,
            None => self.backoff,
        };
        state.count += 1;
        state.next_backoff = Some(wait.saturating_mul(2).min(self.max_backoff).max(self.backoff));
        Some(wait)
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
        let negative =
            r#"{"policy":"Never","limit":null,"backoff_secs":-1.0,"max_backoff_secs":300.0,"reset_after_secs":600.0}"#;
        assert!(serde_json::from_str::<RestartSpec>(negative).is_err());
        let err = RestartSpec {
            backoff: Duration::from_secs(20),
            max_backoff: Duration::from_secs(10),
            ..RestartSpec::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(err, "restart max_backoff (10) is shorter than backoff (20)");
        assert!("Sometimes".parse::<RestartPolicy>().is_err());
        assert_eq!("OnFailure".parse::<RestartPolicy>(), Ok(RestartPolicy::OnFailure));
    }

    #[test]
    fn the_spec_keeps_its_record_form_and_a_layer_resolves_to_it() {
        let text =
            r#"{"policy":"OnFailure","limit":3,"backoff_secs":0.1,"max_backoff_secs":300.0,"reset_after_secs":600.0}"#;
        let spec: RestartSpec = serde_json::from_str(text).unwrap();
        assert_eq!(spec.backoff, Duration::from_millis(100));
        assert_eq!(serde_json::to_string(&spec).unwrap(), text);
        let default =
            r#"{"policy":"Never","limit":null,"backoff_secs":10.0,"max_backoff_secs":300.0,"reset_after_secs":600.0}"#;
        assert_eq!(serde_json::to_string(&RestartPartial::default().resolve()).unwrap(), default);

        let mut layer = RestartPartial { policy: Some(RestartPolicy::OnFailure), limit: Some(3), ..Default::default() };
        layer.overlay(&RestartPartial { backoff: Some(Duration::from_millis(100)), ..Default::default() });
        assert_eq!(layer.resolve(), spec);
    }
}
