//! corral-probes: startup, readiness and liveness probes for agents, with
//! Kubernetes semantics.
//!
//! This crate owns what a probe is (its spec and serde shape), what a series
//! of probe results means (the tracker), how one run of each kind is done
//! (the runners) and the loop that runs them on time (the driver). It
//! depends on no other corral crate and knows nothing of agents beyond what
//! a [`ProbeContext`] tells it. It never stops an agent: it says "kill"
//! and the supervisor does the stopping and applies the restart policy.
//!
//! | module | owns |
//! |---|---|
//! | [`spec`] | [`ProbeSpec`], [`ProbeKind`], [`ProbeSet`]: serde shape, defaults, validation |
//! | [`clock`] | [`Clock`]: [`SystemClock`] and [`ManualClock`] for tests |
//! | [`tracker`] | [`ProbeTracker`]: every rule, fed results, no processes, no real time |
//! | [`context`] | [`ProbeContext`], and [`AgentObservations`] that implements it |
//! | [`runner`] | [`run_probe`]: one run of any kind, with its timeout |
//! | [`driver`] | [`run_probes`]: the schedule on tokio, events to a channel |
//!
//! # Driving it from the supervisor
//!
//! ```no_run
//! # async fn example(probes: corral_probes::ProbeSet, worktree: std::path::PathBuf,
//! #                 env: Vec<(std::ffi::OsString, std::ffi::OsString)>) {
//! use std::sync::Arc;
//! use corral_probes::*;
//!
//! let clock: Arc<dyn Clock> = Arc::new(SystemClock);
//! let started_at = clock.now(); // when the agent's process started
//! let observations = Arc::new(AgentObservations::new(worktree, env, &probes, started_at));
//! let tracker = ProbeTracker::new(&probes, started_at).expect("validated with the config");
//! let ready_from_the_start = tracker.is_ready();
//! let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
//! let _driver = tokio::spawn(run_probes(tracker, observations.clone(), clock.clone(), tx));
//! // As the agent runs, from the output reader and the harness parser:
//! observations.record_line("Listening on 127.0.0.1:8080", clock.now());
//! observations.record_event("init", clock.now());
//! // Journal each ProbeEvent; on a Kill, stop the agent.
//! while let Some(event) = events.recv().await {
//!     if event.verdict().is_some() { /* stop the agent, then the restart policy */ }
//! }
//! # }
//! ```
//!
//! A restarted agent gets a new tracker, new observations and a new driver.

pub mod clock;
pub mod context;
pub mod driver;
pub mod runner;
pub mod spec;
pub mod tracker;

pub use clock::{Clock, ManualClock, Sleep, SystemClock};
pub use context::{AgentObservations, ProbeContext};
pub use driver::{run_probes, DriverExit};
pub use runner::{run_probe, Outcome, ProbeResult};
pub use spec::{
    ExecAction, HttpGetAction, HttpHeader, IdleAction, Pattern, ProbeKind, ProbeSet, ProbeSpec, SpecError,
    TcpSocketAction, DEFAULT_FAILURE_THRESHOLD, DEFAULT_HOST, DEFAULT_INITIAL_DELAY_SECONDS, DEFAULT_PERIOD_SECONDS,
    DEFAULT_SUCCESS_THRESHOLD, DEFAULT_TIMEOUT_SECONDS,
};
pub use tracker::{KillVerdict, ProbeChange, ProbeEvent, ProbeName, ProbeTracker};
