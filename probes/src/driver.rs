//! The probe driver: runs one agent's probes on tokio, on the tracker's
//! schedule, until a kill verdict.
//!
//! [`run_probes`] owns the running of probes: it asks the tracker what is
//! due, runs each due probe in a task of its own (so a slow readiness check
//! never delays liveness), records each result as it lands, and sends the
//! tracker's events on. It guarantees that every event is sent in the order
//! the tracker produced it, that it returns right after sending a kill
//! verdict, and that returning or being dropped cancels the runs in flight
//! (an `exec` command's process group is killed).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::clock::Clock;
use crate::context::ProbeContext;
use crate::runner::{run_probe, ProbeResult};
use crate::tracker::{KillVerdict, ProbeEvent, ProbeName, ProbeTracker};

/// Why [`run_probes`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverExit {
    /// A probe gave a kill verdict (it was sent as an event too): stop the
    /// agent and apply the restart policy.
    Killed(KillVerdict),
    /// The receiver of the events is gone, so nobody is listening.
    EventsClosed,
}

/// Runs the probes of `tracker` against the agent in `ctx`, timed by
/// `clock`, sending every [`ProbeEvent`] to `events`, until a kill verdict
/// or until `events`' receiver is dropped. To stop it otherwise, drop the
/// future (for example from a `tokio::select!`).
///
/// The tracker's state when handed over is the starting point: read
/// [`ProbeTracker::is_ready`] first (an agent with neither a startup nor a
/// readiness probe is ready from the start, and no event says so). With no
/// probes at all this waits forever.
pub async fn run_probes(
    mut tracker: ProbeTracker,
    ctx: Arc<dyn ProbeContext>,
    clock: Arc<dyn Clock>,
    events: mpsc::UnboundedSender<ProbeEvent>,
) -> DriverExit {
    // Dropping the set (on return or cancellation) aborts the runs in it.
    let mut running: JoinSet<ProbeResult> = JoinSet::new();
    let mut probe_of_task: HashMap<tokio::task::Id, ProbeName> = HashMap::new();
    loop {
        for probe in tracker.take_due(clock.now()) {
            let spec = tracker.spec(probe).expect("the tracker only schedules probes it has").clone();
            let (ctx, clock) = (ctx.clone(), clock.clone());
            let task = running.spawn(async move { run_probe(&spec.kind, spec.timeout(), &*ctx, &*clock).await });
            probe_of_task.insert(task.id(), probe);
        }
        let next_due = tracker.next_due();
        let wait_for_next = async {
            match next_due {
                Some(at) => clock.sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(joined) = running.join_next_with_id() => {
                let (task, result) = match joined {
                    Ok((task, result)) => (task, result),
                    // A runner that panicked is a failed run, not a dead driver.
                    Err(err) => (err.id(), ProbeResult::failure(format!("probe runner failed: {err}"))),
                };
                let probe = probe_of_task
                    .remove(&task)
                    .expect("every task was spawned with its probe");
                for event in tracker.record(probe, &result, clock.now()) {
                    let verdict = event.verdict();
                    if events.send(event).is_err() {
                        return DriverExit::EventsClosed;
                    }
                    if let Some(verdict) = verdict {
                        return DriverExit::Killed(verdict);
                    }
                }
            }
            () = wait_for_next => {}
            () = events.closed() => return DriverExit::EventsClosed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ManualClock, SystemClock};
    use crate::context::AgentObservations;
    use crate::runner::tests::test_env;
    use crate::spec::{ExecAction, IdleAction, ProbeKind, ProbeSet, ProbeSpec};
    use crate::tracker::ProbeChange;
    use std::time::Duration;
    use tokio::task::JoinHandle;

    fn spec(kind: ProbeKind, period: f64, failure_threshold: u32) -> ProbeSpec {
        ProbeSpec { period_seconds: period, failure_threshold, ..ProbeSpec::new(kind) }
    }

    struct Harness {
        clock: Arc<ManualClock>,
        ctx: Arc<AgentObservations>,
        events: mpsc::UnboundedReceiver<ProbeEvent>,
        driver: JoinHandle<DriverExit>,
        dir: tempfile::TempDir,
    }

    fn start(set: ProbeSet) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new());
        let ctx = Arc::new(AgentObservations::new(dir.path(), test_env(), &set, clock.now()));
        let tracker = ProbeTracker::new(&set, clock.now()).unwrap();
        let (tx, events) = mpsc::unbounded_channel();
        let driver = tokio::spawn(run_probes(tracker, ctx.clone(), clock.clone(), tx));
        Harness { clock, ctx, events, driver, dir }
    }

    impl Harness {
        /// Advances the clock `step_secs` at a time until an event matching
        /// `wanted` arrives, returning every event seen on the way. Ticks
        /// the driver had no time for are skipped by the tracker, so this
        /// holds however loaded the machine is.
        async fn advance_until(&mut self, step_secs: f64, wanted: impl Fn(&ProbeEvent) -> bool) -> Vec<ProbeEvent> {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            let mut seen = Vec::new();
            loop {
                while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(50), self.events.recv()).await {
                    let done = wanted(&event);
                    seen.push(event);
                    if done {
                        return seen;
                    }
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the wanted event never came; seen: {:#?}",
                    seen.iter().map(|e| (e.probe, e.change)).collect::<Vec<_>>()
                );
                self.clock.advance_secs(step_secs);
            }
        }

        async fn exit(self) -> DriverExit {
            tokio::time::timeout(Duration::from_secs(20), self.driver).await.expect("the driver returns").unwrap()
        }
    }

    fn is(probe: ProbeName, change: ProbeChange) -> impl Fn(&ProbeEvent) -> bool {
        move |event| event.probe == probe && event.change == change
    }

    #[tokio::test]
    async fn startup_then_readiness_then_an_idle_liveness_kill() {
        let mut h = start(ProbeSet {
            startup: Some(spec(ProbeKind::Event("init".into()), 1.0, 1000)),
            // file_exists stats on tokio's blocking pool: a timeout far
            // beyond the clock's jumps keeps a slow stat from timing out.
            readiness: Some(ProbeSpec { timeout_seconds: 1e6, ..spec(ProbeKind::FileExists("ready".into()), 1.0, 1) }),
            liveness: Some(spec(ProbeKind::Idle(IdleAction { seconds: 100.0 }), 1.0, 2)),
        });
        let first = h.advance_until(1.0, is(ProbeName::Startup, ProbeChange::Failed)).await;
        assert_eq!(first.len(), 1);

        h.ctx.record_event("init", h.clock.now());
        let started = h.advance_until(1.0, is(ProbeName::Startup, ProbeChange::Passed)).await;
        assert!(
            started.iter().all(|e| e.probe == ProbeName::Startup),
            "nothing else ran before startup passed: {started:#?}"
        );
        // Readiness (file missing) and liveness (not idle) run once startup passed.
        let mut after = h.advance_until(1.0, is(ProbeName::Readiness, ProbeChange::Failed)).await;
        if !after.iter().any(is(ProbeName::Liveness, ProbeChange::Passed)) {
            after.extend(h.advance_until(1.0, is(ProbeName::Liveness, ProbeChange::Passed)).await);
        }
        assert!(after.iter().all(|e| e.change != ProbeChange::Ready));

        std::fs::write(h.dir.path().join("ready"), "").unwrap();
        let ready = h.advance_until(1.0, is(ProbeName::Readiness, ProbeChange::Ready)).await;
        assert!(ready.iter().any(is(ProbeName::Readiness, ProbeChange::Passed)));

        // No activity from here on: idle fails, twice in a row kills.
        let killed = h.advance_until(10.0, |e| e.change == ProbeChange::Kill(KillVerdict::LivenessFailed)).await;
        let kill = killed.last().unwrap();
        assert_eq!(kill.kind, "idle");
        assert_eq!(kill.consecutive_failures, 2);
        assert!(kill.message.starts_with("no output or progress for"), "{}", kill.message);
        assert!(killed.iter().any(is(ProbeName::Liveness, ProbeChange::Failed)));
        assert!(killed.iter().all(|e| e.probe == ProbeName::Liveness), "{killed:#?}");
        assert_eq!(h.exit().await, DriverExit::Killed(KillVerdict::LivenessFailed));
    }

    #[tokio::test]
    async fn a_failing_startup_kills_and_liveness_never_runs() {
        let mut h = start(ProbeSet {
            startup: Some(spec(ProbeKind::FileExists("never".into()), 1.0, 3)),
            liveness: Some(spec(ProbeKind::FileExists("never".into()), 1.0, 3)),
            ..ProbeSet::default()
        });
        let seen = h.advance_until(1.0, |e| e.change == ProbeChange::Kill(KillVerdict::StartupFailed)).await;
        assert!(seen.iter().all(|e| e.probe == ProbeName::Startup), "{seen:#?}");
        assert_eq!(seen.last().unwrap().consecutive_failures, 3);
        assert_eq!(h.exit().await, DriverExit::Killed(KillVerdict::StartupFailed));
    }

    #[tokio::test]
    async fn the_driver_returns_when_nobody_listens() {
        let h =
            start(ProbeSet { readiness: Some(spec(ProbeKind::Event("init".into()), 1.0, 3)), ..ProbeSet::default() });
        let Harness { events, driver, .. } = h;
        drop(events);
        let exit = tokio::time::timeout(Duration::from_secs(20), driver).await.expect("the driver returns").unwrap();
        assert_eq!(exit, DriverExit::EventsClosed);
    }

    async fn next_event(events: &mut mpsc::UnboundedReceiver<ProbeEvent>) -> ProbeEvent {
        tokio::time::timeout(Duration::from_secs(20), events.recv())
            .await
            .expect("an event comes")
            .expect("the driver is running")
    }

    #[tokio::test]
    async fn a_liveness_exec_probe_kills_in_real_time() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("alive"), "").unwrap();
        let set = ProbeSet {
            liveness: Some(ProbeSpec {
                timeout_seconds: 10.0,
                ..spec(
                    ProbeKind::Exec(ExecAction { command: vec!["test".into(), "-f".into(), "alive".into()] }),
                    0.05,
                    2,
                )
            }),
            ..ProbeSet::default()
        };
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let ctx = Arc::new(AgentObservations::new(dir.path(), test_env(), &set, clock.now()));
        let tracker = ProbeTracker::new(&set, clock.now()).unwrap();
        let (tx, mut events) = mpsc::unbounded_channel();
        let driver = tokio::spawn(run_probes(tracker, ctx, clock, tx));
        let passed = next_event(&mut events).await;
        assert_eq!((passed.probe, passed.change), (ProbeName::Liveness, ProbeChange::Passed));
        assert_eq!(passed.message, "exit code 0");
        std::fs::remove_file(dir.path().join("alive")).unwrap();
        let failed = next_event(&mut events).await;
        assert_eq!(failed.change, ProbeChange::Failed);
        assert_eq!(failed.message, "exit code 1");
        let kill = next_event(&mut events).await;
        assert_eq!(kill.change, ProbeChange::Kill(KillVerdict::LivenessFailed));
        let exit = tokio::time::timeout(Duration::from_secs(20), driver)
            .await
            .expect("the driver returns after a kill")
            .unwrap();
        assert_eq!(exit, DriverExit::Killed(KillVerdict::LivenessFailed));
    }
}
