//! One run's probes: the driver task from `corral-probes`, fed the
//! agent's output lines and events through the output reader. Owned by
//! the agent's task; a restart of the agent starts a new run.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::reader::OutputReader;
use super::Daemon;
use crate::model::event::EventBody;
use crate::model::lifecycle::AgentRecord;
use crate::wire::monitor::MonitorSpec;
use corral_probes::ProbeEvent;

/// One run's probes: their driver, and the observations fed to it.
pub(super) struct ProbeRun {
    events: mpsc::UnboundedReceiver<ProbeEvent>,
    driver: tokio::task::JoinHandle<corral_probes::DriverExit>,
}

impl Drop for ProbeRun {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl ProbeRun {
    /// Starts the probes of the agent's current run (none if it has none)
    /// and has `reader` feed them its output lines and events.
    pub(super) fn start(daemon: &Arc<Daemon>, record: &AgentRecord, reader: &mut OutputReader) -> Option<ProbeRun> {
        if record.probes.is_empty() {
            return None;
        }
        let spec: Option<MonitorSpec> =
            std::fs::read(daemon.state.agent(record.id).spec()).ok().and_then(|b| serde_json::from_slice(&b).ok());
        let env = spec.map(|s| s.env.into_iter().map(|(k, v)| (k.into(), v.into())).collect()).unwrap_or_default();
        let clock: Arc<dyn corral_probes::Clock> = Arc::new(corral_probes::SystemClock);
        let started = clock.now();
        // A sandboxed agent's exec probes run in its sandbox, as its gate does.
        let restricts = record.enforced.as_ref().is_some_and(|e| e.restricts());
        let prefix = crate::monitor::confining_shim(&daemon.state.agent(record.id), restricts, "probe");
        let observations = Arc::new(
            corral_probes::AgentObservations::new(record.worktree.clone(), env, &record.probes, started)
                .with_exec_prefix(prefix),
        );
        let tracker = match corral_probes::ProbeTracker::new(&record.probes, started) {
            Ok(tracker) => tracker,
            Err(err) => {
                tracing::warn!("{}: probes not run: {err}", record.address);
                return None;
            }
        };
        let (tx, events) = mpsc::unbounded_channel();
        let context: Arc<dyn corral_probes::ProbeContext> = observations.clone();
        let driver = tokio::spawn(corral_probes::run_probes(tracker, context, clock, tx));
        reader.observations = Some(observations);
        Some(ProbeRun { events, driver })
    }
}

/// The next probe event; never, while no probes run.
pub(super) async fn next_probe_event(run: &mut Option<ProbeRun>) -> ProbeEvent {
    match run.as_mut() {
        Some(run) => match run.events.recv().await {
            Some(event) => event,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

pub(super) fn probe_body(event: &ProbeEvent) -> EventBody {
    use corral_probes::{KillVerdict, ProbeChange};
    let (change, verdict) = match event.change {
        ProbeChange::Passed => ("passed", None),
        ProbeChange::Failed => ("failed", None),
        ProbeChange::Ready => ("ready", None),
        ProbeChange::NotReady => ("not_ready", None),
        ProbeChange::Kill(KillVerdict::StartupFailed) => ("kill", Some("startup_failed")),
        ProbeChange::Kill(KillVerdict::LivenessFailed) => ("kill", Some("liveness_failed")),
    };
    EventBody::Probe {
        probe: event.probe.as_str().to_string(),
        kind: event.kind.to_string(),
        change: change.to_string(),
        verdict: verdict.map(str::to_string),
        timed_out: event.timed_out,
        message: event.message.clone(),
        consecutive_successes: event.consecutive_successes,
        consecutive_failures: event.consecutive_failures,
    }
}
