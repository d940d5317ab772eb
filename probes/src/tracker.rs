//! The probe state machine: Kubernetes semantics with no processes and no
//! real time.
//!
//! [`ProbeTracker`] owns every rule about what probe results mean and when
//! each probe runs next; nothing else in the crate decides either. It is fed
//! results with the instant they arrived and answers with [`ProbeEvent`]s. It
//! guarantees:
//!
//! - startup gates the others: readiness and liveness are never due before
//!   startup has passed, and startup is never due again once it has;
//! - startup failing `failure_threshold` times in a row gives the verdict
//!   [`KillVerdict::StartupFailed`], liveness doing so gives
//!   [`KillVerdict::LivenessFailed`]; readiness never gives a verdict;
//! - the agent starts not ready; it becomes ready after readiness passes
//!   `success_threshold` times in a row, and not ready again after
//!   `failure_threshold` failures in a row; without a readiness probe it is
//!   ready once startup has passed (at once without a startup probe);
//! - counts are of consecutive results: any success resets the failure
//!   count and any failure the success count; a timeout is a failure;
//! - each probe first runs `initial_delay_seconds` after the agent's start,
//!   and readiness and liveness also not before startup passed; later runs
//!   follow every `period_seconds`, skipping ticks missed by a slow run;
//! - only changes are reported: a probe's first result and each flip between
//!   pass and fail, each flip of ready, and the kill verdict; after a
//!   verdict nothing is due and results are ignored.

use std::fmt;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::runner::{Outcome, ProbeResult};
use crate::spec::{ProbeSet, ProbeSpec, SpecError};

/// Which of an agent's three probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeName {
    /// Gates the others; kills when it keeps failing.
    Startup,
    /// Marks the agent ready or not; never kills.
    Readiness,
    /// Kills when it keeps failing.
    Liveness,
}

impl ProbeName {
    /// All three, in the order they gate each other.
    pub const ALL: [ProbeName; 3] = [ProbeName::Startup, ProbeName::Readiness, ProbeName::Liveness];

    /// `startup`, `readiness` or `liveness`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeName::Startup => "startup",
            ProbeName::Readiness => "readiness",
            ProbeName::Liveness => "liveness",
        }
    }
}

impl fmt::Display for ProbeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The probes' word that the agent must be stopped; the restart policy then
/// applies (outside this crate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KillVerdict {
    /// Startup failed `failure_threshold` times in a row.
    StartupFailed,
    /// Liveness failed `failure_threshold` times in a row.
    LivenessFailed,
}

impl fmt::Display for KillVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KillVerdict::StartupFailed => "kill (startup failed)",
            KillVerdict::LivenessFailed => "kill (liveness failed)",
        })
    }
}

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeChange {
    /// The probe passed, and its previous result (if any) was a failure.
    Passed,
    /// The probe failed (a timeout included), and its previous result (if
    /// any) was a success.
    Failed,
    /// The agent became ready.
    Ready,
    /// The agent stopped being ready.
    NotReady,
    /// The agent must be stopped; see [`ProbeEvent::verdict`].
    Kill(KillVerdict),
}

/// One reported change. `message` is the result message of the run that
/// caused it (exit code and stderr tail, HTTP status, the matched line...).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeEvent {
    /// The probe whose run caused the change. A `Ready` caused by startup
    /// passing when there is no readiness probe names `startup`.
    pub probe: ProbeName,
    /// The probe's kind as written in `corral.toml`, e.g. `exec`.
    pub kind: &'static str,
    /// What changed.
    pub change: ProbeChange,
    /// Whether the run timed out (it then counts as a failure).
    pub timed_out: bool,
    /// The run's result message.
    pub message: String,
    /// Consecutive successes of this probe, this run included.
    pub consecutive_successes: u32,
    /// Consecutive failures of this probe, this run included.
    pub consecutive_failures: u32,
    /// When the result was recorded, by the clock that fed it.
    #[serde(skip)]
    pub at: Instant,
}

impl ProbeEvent {
    /// The kill verdict this event carries, if it is one.
    pub fn verdict(&self) -> Option<KillVerdict> {
        match self.change {
            ProbeChange::Kill(verdict) => Some(verdict),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Slot {
    spec: ProbeSpec,
    next_due: Instant,
    in_flight: bool,
    last_passed: Option<bool>,
    successes: u32,
    failures: u32,
}

impl Slot {
    fn new(spec: &ProbeSpec, started_at: Instant) -> Self {
        Slot {
            spec: spec.clone(),
            next_due: started_at + spec.initial_delay(),
            in_flight: false,
            last_passed: None,
            successes: 0,
            failures: 0,
        }
    }

    /// The first tick after the one just run that is not already past.
    fn schedule_after(&mut self, at: Instant) {
        let period = self.spec.period();
        let late = at.saturating_duration_since(self.next_due);
        let ticks = (late.as_secs_f64() / period.as_secs_f64()).ceil().max(1.0);
        self.next_due += Duration::from_secs_f64(period.as_secs_f64() * ticks);
    }
}

/// The state of one agent's probes. See the module documentation for the
/// rules it keeps.
#[derive(Debug, Clone)]
pub struct ProbeTracker {
    slots: [Option<Slot>; 3],
    startup_passed: bool,
    ready: bool,
    verdict: Option<KillVerdict>,
}

impl ProbeTracker {
    /// Tracks `set` for an agent that started at `started_at` (initial
    /// delays count from it). Fails when the set does not validate.
    pub fn new(set: &ProbeSet, started_at: Instant) -> Result<Self, SpecError> {
        set.validate()?;
        let slot = |spec: &Option<ProbeSpec>| spec.as_ref().map(|spec| Slot::new(spec, started_at));
        let startup_passed = set.startup.is_none();
        Ok(ProbeTracker {
            slots: [slot(&set.startup), slot(&set.readiness), slot(&set.liveness)],
            startup_passed,
            ready: startup_passed && set.readiness.is_none(),
            verdict: None,
        })
    }

    fn slot(&self, probe: ProbeName) -> Option<&Slot> {
        self.slots[probe as usize].as_ref()
    }

    fn slot_mut(&mut self, probe: ProbeName) -> Option<&mut Slot> {
        self.slots[probe as usize].as_mut()
    }

    /// The spec of `probe`, if the set has one.
    pub fn spec(&self, probe: ProbeName) -> Option<&ProbeSpec> {
        self.slot(probe).map(|slot| &slot.spec)
    }

    /// Whether `probe` may run at all now (ignoring when it is due).
    fn scheduled(&self, probe: ProbeName) -> bool {
        self.verdict.is_none()
            && self.slot(probe).is_some()
            && match probe {
                ProbeName::Startup => !self.startup_passed,
                ProbeName::Readiness | ProbeName::Liveness => self.startup_passed,
            }
    }

    /// The probes due at `now` that are not already running; each is marked
    /// running until its result is recorded.
    pub fn take_due(&mut self, now: Instant) -> Vec<ProbeName> {
        let due: Vec<ProbeName> = ProbeName::ALL
            .into_iter()
            .filter(|&probe| self.scheduled(probe))
            .filter(|&probe| {
                let slot = self.slot(probe).expect("scheduled probes have a slot");
                !slot.in_flight && slot.next_due <= now
            })
            .collect();
        for &probe in &due {
            self.slot_mut(probe).expect("due probes have a slot").in_flight = true;
        }
        due
    }

    /// When the next probe that is not running falls due; `None` when
    /// nothing is waiting (no probes, all running, or a verdict reached).
    pub fn next_due(&self) -> Option<Instant> {
        ProbeName::ALL
            .into_iter()
            .filter(|&probe| self.scheduled(probe))
            .filter_map(|probe| self.slot(probe))
            .filter(|slot| !slot.in_flight)
            .map(|slot| slot.next_due)
            .min()
    }

    /// Whether the agent is ready.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Whether startup has passed (true when there is no startup probe).
    pub fn startup_passed(&self) -> bool {
        self.startup_passed
    }

    /// The kill verdict, once reached.
    pub fn verdict(&self) -> Option<KillVerdict> {
        self.verdict
    }

    /// Records the result of one run of `probe`, which ended at `at`, and
    /// returns what changed. Results for a probe that is not scheduled (no
    /// such probe, startup after it passed, the others before it, anything
    /// after a verdict) are ignored.
    pub fn record(&mut self, probe: ProbeName, result: &ProbeResult, at: Instant) -> Vec<ProbeEvent> {
        if !self.scheduled(probe) {
            return Vec::new();
        }
        let passed = result.outcome == Outcome::Success;
        let slot = self.slot_mut(probe).expect("scheduled probes have a slot");
        slot.in_flight = false;
        if passed {
            slot.successes = slot.successes.saturating_add(1);
            slot.failures = 0;
        } else {
            slot.failures = slot.failures.saturating_add(1);
            slot.successes = 0;
        }
        slot.schedule_after(at);
        let result_changed = slot.last_passed != Some(passed);
        slot.last_passed = Some(passed);
        let (successes, failures) = (slot.successes, slot.failures);
        let (success_threshold, failure_threshold) = (slot.spec.success_threshold, slot.spec.failure_threshold);
        let kind = slot.spec.kind.name();

        let event = |change| ProbeEvent {
            probe,
            kind,
            change,
            timed_out: result.outcome == Outcome::Timeout,
            message: result.message.clone(),
            consecutive_successes: successes,
            consecutive_failures: failures,
            at,
        };
        let mut events = Vec::new();
        if result_changed {
            events.push(event(if passed { ProbeChange::Passed } else { ProbeChange::Failed }));
        }
        match probe {
            ProbeName::Startup => {
                if passed && successes >= success_threshold {
                    self.startup_passed = true;
                    for gated in [ProbeName::Readiness, ProbeName::Liveness] {
                        if let Some(slot) = self.slot_mut(gated) {
                            slot.next_due = slot.next_due.max(at);
                        }
                    }
                    if self.slot(ProbeName::Readiness).is_none() {
                        self.ready = true;
                        events.push(event(ProbeChange::Ready));
                    }
                } else if failures >= failure_threshold {
                    self.verdict = Some(KillVerdict::StartupFailed);
                    events.push(event(ProbeChange::Kill(KillVerdict::StartupFailed)));
                }
            }
            ProbeName::Readiness => {
                if !self.ready && passed && successes >= success_threshold {
                    self.ready = true;
                    events.push(event(ProbeChange::Ready));
                } else if self.ready && !passed && failures >= failure_threshold {
                    self.ready = false;
                    events.push(event(ProbeChange::NotReady));
                }
            }
            ProbeName::Liveness => {
                if !passed && failures >= failure_threshold {
                    self.verdict = Some(KillVerdict::LivenessFailed);
                    events.push(event(ProbeChange::Kill(KillVerdict::LivenessFailed)));
                }
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::spec::ProbeKind;

    fn probe(period: f64) -> ProbeSpec {
        ProbeSpec { period_seconds: period, ..ProbeSpec::new(ProbeKind::Event("init".into())) }
    }

    fn pass() -> ProbeResult {
        ProbeResult::success("ok")
    }

    fn fail() -> ProbeResult {
        ProbeResult::failure("exit code 1: boom")
    }

    fn changes(events: &[ProbeEvent]) -> Vec<(ProbeName, ProbeChange)> {
        events.iter().map(|e| (e.probe, e.change)).collect()
    }

    /// Runs `probe` now: it must be due, and `result` is recorded at once.
    fn run(tracker: &mut ProbeTracker, clock: &ManualClock, probe: ProbeName, result: ProbeResult) -> Vec<ProbeEvent> {
        let due = tracker.take_due(clock.now());
        assert!(due.contains(&probe), "{probe} is not due at this time; due: {due:?}");
        tracker.record(probe, &result, clock.now())
    }

    #[test]
    fn startup_gates_readiness_and_liveness_until_it_passes() {
        let clock = ManualClock::new();
        let set = ProbeSet { startup: Some(probe(1.0)), readiness: Some(probe(1.0)), liveness: Some(probe(1.0)) };
        let mut tracker = ProbeTracker::new(&set, clock.now()).unwrap();
        assert!(!tracker.is_ready());
        for _ in 0..2 {
            assert_eq!(tracker.take_due(clock.now()), vec![ProbeName::Startup]);
            tracker.record(ProbeName::Startup, &fail(), clock.now());
            clock.advance_secs(1.0);
        }
        // Results for gated probes are ignored before startup passed.
        assert!(tracker.record(ProbeName::Liveness, &fail(), clock.now()).is_empty());
        assert!(tracker.record(ProbeName::Readiness, &pass(), clock.now()).is_empty());
        assert!(!tracker.is_ready());

        let events = run(&mut tracker, &clock, ProbeName::Startup, pass());
        assert_eq!(changes(&events), vec![(ProbeName::Startup, ProbeChange::Passed)]);
        assert!(tracker.startup_passed());
        // The gated probes are due at once, startup never again.
        assert_eq!(tracker.take_due(clock.now()), vec![ProbeName::Readiness, ProbeName::Liveness]);
        tracker.record(ProbeName::Readiness, &pass(), clock.now());
        tracker.record(ProbeName::Liveness, &pass(), clock.now());
        for _ in 0..5 {
            clock.advance_secs(1.0);
            let due = tracker.take_due(clock.now());
            assert!(!due.contains(&ProbeName::Startup), "startup ran again: {due:?}");
            for probe in due {
                tracker.record(probe, &pass(), clock.now());
            }
        }
        assert!(tracker.record(ProbeName::Startup, &fail(), clock.now()).is_empty());
    }

    #[test]
    fn startup_failing_failure_threshold_times_in_a_row_kills() {
        let clock = ManualClock::new();
        let set = ProbeSet {
            startup: Some(ProbeSpec { failure_threshold: 3, ..probe(1.0) }),
            liveness: Some(probe(1.0)),
            ..ProbeSet::default()
        };
        let mut tracker = ProbeTracker::new(&set, clock.now()).unwrap();
        let first = run(&mut tracker, &clock, ProbeName::Startup, fail());
        assert_eq!(changes(&first), vec![(ProbeName::Startup, ProbeChange::Failed)]);
        clock.advance_secs(1.0);
        assert!(run(&mut tracker, &clock, ProbeName::Startup, fail()).is_empty());
        clock.advance_secs(1.0);
        let last = run(&mut tracker, &clock, ProbeName::Startup, fail());
        assert_eq!(changes(&last), vec![(ProbeName::Startup, ProbeChange::Kill(KillVerdict::StartupFailed))]);
        assert_eq!(last[0].consecutive_failures, 3);
        assert_eq!(last[0].verdict(), Some(KillVerdict::StartupFailed));
        assert_eq!(last[0].verdict().unwrap().to_string(), "kill (startup failed)");
        assert_eq!(tracker.verdict(), Some(KillVerdict::StartupFailed));
        // After a verdict nothing is due and nothing is reported.
        assert_eq!(tracker.next_due(), None);
        clock.advance_secs(100.0);
        assert!(tracker.take_due(clock.now()).is_empty());
        assert!(tracker.record(ProbeName::Startup, &pass(), clock.now()).is_empty());
    }

    #[test]
    fn readiness_failures_never_kill() {
        let clock = ManualClock::new();
        let set = ProbeSet { readiness: Some(ProbeSpec { failure_threshold: 1, ..probe(1.0) }), ..ProbeSet::default() };
        let mut tracker = ProbeTracker::new(&set, clock.now()).unwrap();
        run(&mut tracker, &clock, ProbeName::Readiness, pass());
        assert!(tracker.is_ready());
        let mut all = Vec::new();
        for _ in 0..50 {
            clock.advance_secs(1.0);
            all.extend(run(&mut tracker, &clock, ProbeName::Readiness, fail()));
        }
        assert_eq!(
            changes(&all),
            vec![(ProbeName::Readiness, ProbeChange::Failed), (ProbeName::Readiness, ProbeChange::NotReady)]
        );
        assert_eq!(tracker.verdict(), None);
        assert!(tracker.next_due().is_some(), "readiness keeps running");
    }

    #[test]
    fn readiness_needs_success_threshold_successes_in_a_row() {
        let clock = ManualClock::new();
        let set = ProbeSet { readiness: Some(ProbeSpec { success_threshold: 3, ..probe(1.0) }), ..ProbeSet::default() };
        let mut tracker = ProbeTracker::new(&set, clock.now()).unwrap();
        assert!(!tracker.is_ready(), "an agent with a readiness probe starts not ready");
        let mut step = |result| {
            let events = run(&mut tracker, &clock, ProbeName::Readiness, result);
            clock.advance_secs(1.0);
            events
        };
        assert_eq!(changes(&step(pass())), vec![(ProbeName::Readiness, ProbeChange::Passed)]);
        assert!(step(pass()).is_empty());
        // A failure resets the count of successes.
        assert_eq!(changes(&step(fail())), vec![(ProbeName::Readiness, ProbeChange::Failed)]);
        assert_eq!(changes(&step(pass())), vec![(ProbeName::Readiness, ProbeChange::Passed)]);
        assert!(step(pass()).is_empty());
        let events = step(pass());
        assert_eq!(changes(&events), vec![(ProbeName::Readiness, ProbeChange::Ready)]);
        assert_eq!(events[0].consecutive_successes, 3);
        assert!(tracker.is_ready());
    }

    #[test]
    fn readiness_turns_not_ready_after_failure_threshold_failures_in_a_row() {
        let clock = ManualClock::new();
        let set = ProbeSet { readiness: Some(probe(1.0)), ..ProbeSet::default() };
        let mut tracker = ProbeTracker::new(&set, clock.now()).unwrap();
        let mut step = |result| {
            let events = run(&mut tracker, &clock, ProbeName::Readiness, result);
            clock.advance_secs(1.0);
            changes(&events)
        };
        use ProbeChange::*;
        use ProbeName::Readiness as R;
        assert_eq!(step(pass()), vec![(R, Passed), (R, Ready)]);
        assert_eq!(step(fail()), vec![(R, Failed)]);
        assert_eq!(step(fail()), vec![]);
        // A success resets the count of failures.
        assert_eq!(step(pass()), vec![(R, Passed)]);
        assert_eq!(step(fail()), vec![(R, Failed)]);
        assert_eq!(step(fail()), vec![]);
        assert_eq!(step(fail()), vec![(R, NotReady)]);
        assert_eq!(step(fail()), vec![]);
        assert_eq!(step(pass()), vec![(R, Passed), (R, Ready)]);
    }

    #[test]
    fn without_readiness_probe_the_agent_is_ready_once_startup_passed() {
        let clock = ManualClock::new();
        let no_probes = ProbeTracker::new(&ProbeSet::default(), clock.now()).unwrap();
        assert!(no_probes.is_ready());
        assert_eq!(no_probes.next_due(), None);

        let set = ProbeSet { startup: Some(probe(1.0)), liveness: Some(probe(1.0)), ..ProbeSet::default() };
        let mut tracker = ProbeTracker::new(&set, clock.now()).unwrap();
        assert!(!tracker.is_ready());
        run(&mut tracker, &clock, ProbeName::Startup, fail());
        assert!(!tracker.is_ready());
        clock.advance_secs(1.0);
        let events = run(&mut tracker, &clock, ProbeName::Startup, pass());
        assert_eq!(
            changes(&events),
            vec![(ProbeName::Startup, ProbeChange::Passed), (ProbeName::Startup, ProbeChange::Ready)]
        );
        assert!(tracker.is_ready());
    }

    #[test]
    fn liveness_kills_after_failure_threshold_failures_in_a_row() {
        let clock = ManualClock::new();
        let set = ProbeSet { liveness: Some(probe(1.0)), ..ProbeSet::default() };
        let mut tracker = ProbeTracker::new(&set, clock.now()).unwrap();
        let mut step = |result| {
            let events = run(&mut tracker, &clock, ProbeName::Liveness, result);
            clock.advance_secs(1.0);
            changes(&events)
        };
        use ProbeChange::*;
        use ProbeName::Liveness as L;
        assert_eq!(step(pass()), vec![(L, Passed)]);
        assert_eq!(step(pass()), vec![]);
        assert_eq!(step(fail()), vec![(L, Failed)]);
        assert_eq!(step(fail()), vec![]);
        assert_eq!(step(pass()), vec![(L, Passed)]);
        assert_eq!(step(fail()), vec![(L, Failed)]);
        assert_eq!(step(fail()), vec![]);
        assert_eq!(step(fail()), vec![(L, Kill(KillVerdict::LivenessFailed))]);
        assert_eq!(tracker.verdict(), Some(KillVerdict::LivenessFailed));
        assert_eq!(KillVerdict::LivenessFailed.to_string(), "kill (liveness failed)");
    }

    #[test]
    fn a_timeout_counts_as_a_failure() {
        let clock = ManualClock::new();
        let set = ProbeSet { liveness: Some(ProbeSpec { failure_threshold: 2, ..probe(1.0) }), ..ProbeSet::default() };
        let mut tracker = ProbeTracker::new(&set, clock.now()).unwrap();
        let timeout = || ProbeResult::timeout("timed out after 1s");
        let first = run(&mut tracker, &clock, ProbeName::Liveness, timeout());
        assert_eq!(first[0].change, ProbeChange::Failed);
        assert!(first[0].timed_out);
        assert_eq!(first[0].message, "timed out after 1s");
        clock.advance_secs(1.0);
        let second = run(&mut tracker, &clock, ProbeName::Liveness, timeout());
        assert_eq!(changes(&second), vec![(ProbeName::Liveness, ProbeChange::Kill(KillVerdict::LivenessFailed))]);
    }

    #[test]
    fn initial_delay_postpones_the_first_run() {
        let clock = ManualClock::new();
        let start = clock.now();
        let set = ProbeSet {
            startup: Some(ProbeSpec { initial_delay_seconds: 2.0, ..probe(1.0) }),
            liveness: Some(ProbeSpec { initial_delay_seconds: 5.0, ..probe(1.0) }),
            ..ProbeSet::default()
        };
        let mut tracker = ProbeTracker::new(&set, start).unwrap();
        assert_eq!(tracker.next_due(), Some(start + Duration::from_secs(2)));
        clock.advance_secs(1.9);
        assert!(tracker.take_due(clock.now()).is_empty());
        clock.advance_secs(0.1);
        // Startup passes at 2 s; liveness still waits for its own delay,
        // which counts from the agent's start.
        run(&mut tracker, &clock, ProbeName::Startup, pass());
        assert_eq!(tracker.next_due(), Some(start + Duration::from_secs(5)));
        clock.advance_secs(2.9);
        assert!(tracker.take_due(clock.now()).is_empty());
        clock.advance_secs(0.1);
        assert_eq!(tracker.take_due(clock.now()), vec![ProbeName::Liveness]);
    }

    #[test]
    fn a_late_startup_delays_liveness_past_its_initial_delay() {
        let clock = ManualClock::new();
        let start = clock.now();
        let set = ProbeSet {
            startup: Some(probe(4.0)),
            liveness: Some(ProbeSpec { initial_delay_seconds: 1.0, ..probe(1.0) }),
            ..ProbeSet::default()
        };
        let mut tracker = ProbeTracker::new(&set, start).unwrap();
        run(&mut tracker, &clock, ProbeName::Startup, fail());
        clock.advance_secs(2.0);
        assert!(tracker.take_due(clock.now()).is_empty(), "liveness's delay is over but startup has not passed");
        assert_eq!(tracker.next_due(), Some(start + Duration::from_secs(4)));
        clock.advance_secs(2.0);
        run(&mut tracker, &clock, ProbeName::Startup, pass());
        assert_eq!(tracker.take_due(clock.now()), vec![ProbeName::Liveness]);
    }

    #[test]
    fn runs_follow_the_period_and_skip_ticks_missed_by_a_slow_run() {
        let clock = ManualClock::new();
        let start = clock.now();
        let set = ProbeSet { liveness: Some(probe(2.0)), ..ProbeSet::default() };
        let mut tracker = ProbeTracker::new(&set, start).unwrap();
        assert_eq!(tracker.take_due(clock.now()), vec![ProbeName::Liveness]);
        // While a run is in flight the probe is neither due nor waiting.
        assert_eq!(tracker.next_due(), None);
        assert!(tracker.take_due(clock.now()).is_empty());
        clock.advance_secs(0.5);
        tracker.record(ProbeName::Liveness, &pass(), clock.now());
        assert_eq!(tracker.next_due(), Some(start + Duration::from_secs(2)));
        clock.advance_secs(1.5);
        assert_eq!(tracker.take_due(clock.now()), vec![ProbeName::Liveness]);
        // This run ends at 7 s: the ticks at 4 s and 6 s are skipped.
        clock.advance_secs(5.0);
        tracker.record(ProbeName::Liveness, &pass(), clock.now());
        assert_eq!(tracker.next_due(), Some(start + Duration::from_secs(8)));
    }

    #[test]
    fn events_carry_probe_kind_message_and_counts() {
        let clock = ManualClock::new();
        let set = ProbeSet {
            liveness: Some(ProbeSpec::new(ProbeKind::Exec(crate::spec::ExecAction { command: vec!["true".into()] }))),
            ..ProbeSet::default()
        };
        let mut tracker = ProbeTracker::new(&set, clock.now()).unwrap();
        let events = run(&mut tracker, &clock, ProbeName::Liveness, fail());
        let event = &events[0];
        assert_eq!(event.probe, ProbeName::Liveness);
        assert_eq!(event.kind, "exec");
        assert_eq!(event.message, "exit code 1: boom");
        assert_eq!((event.consecutive_successes, event.consecutive_failures), (0, 1));
        assert_eq!(event.at, clock.now());
        let json = serde_json::to_value(event).unwrap();
        assert_eq!(json["probe"], "liveness");
        assert_eq!(json["change"], "failed");
        assert_eq!(json["kind"], "exec");
    }

    #[test]
    fn an_invalid_set_is_refused() {
        let set = ProbeSet { startup: Some(ProbeSpec { success_threshold: 2, ..probe(1.0) }), ..ProbeSet::default() };
        let err = ProbeTracker::new(&set, Instant::now()).unwrap_err();
        assert_eq!(err.field, "startup.success_threshold");
    }
}
