//! The run's driver: `corral run-driver --id ID`, the command of the agent
//! at `/root/<run id>` (hidden; `corral run` spawns it).
//!
//! It is a supervised agent like any other, so it outlives the client
//! that started it, and a daemon killed mid-run loses nothing: its monitor
//! keeps it running, and every request below reconnects (starting a new
//! daemon) when the daemon goes away. Its budget is the run's, so every
//! agent of the run spends from it, and its wall budget is the run's
//! `timeout`, which stops the whole subtree.
//!
//! What it does, in order: take the lock of the run's name for its life
//! (`skip`: at once or record `skipped` and exit 31; `wait`: when free);
//! then, until every agent of the plan is done or not run, spawn each
//! agent whose `after` agents all succeeded (and merged, when they merge),
//! mark `skipped` each agent one of whose `after` agents did not (recorded
//! in the run's record, never spawned), and wait (one `Wait` request per
//! running agent, so any end wakes it); then write the report into the
//! record and exit with the run's code.
//!
//! It starts from what the daemon already has: agents of this run that
//! exist are waited for, never spawned again. So `corral run --resume ID`
//! (which `assign`s the ended driver its next task: the same command in
//! the same worktree) finishes a run whose driver was killed.
//!
//! SIGTERM (a stop of the run, its timeout, its budget), SIGINT or SIGHUP:
//! it spawns nothing more, stops what of the run still runs (each agent
//! with its own grace), waits for it, and writes the report.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use chrono::Utc;

use super::file::{Overlap, RunAgent};
use super::record::{NotRun, RunRecord, RunState, Runs};
use super::report::{self, RUN_SKIPPED};
use super::{ask, caller};
use crate::model::address::Address;
use crate::model::error::{Error, ErrorKind, Result};
use crate::model::lifecycle::{AgentRecord, AgentState};
use crate::sys::paths::StateDir;
use crate::wire::protocol::{Request, Response, SpawnRequest};

/// How often the driver looks again when nothing woke it (a signal, a
/// request it must retry).
const LOOK_AGAIN: Duration = Duration::from_millis(200);

/// A line at least this often, so an idle budget from `[defaults]` never
/// takes a driver that is only waiting for its agents.
const HEARTBEAT: Duration = Duration::from_secs(60);

/// Runs the driver of run `id`; returns the run's exit code.
pub fn drive(start: &Path, id: &str) -> Result<i32> {
    let state = StateDir::discover(start)?;
    let runs = Runs::new(&state);
    let mut record = runs.load(id)?;
    let me = caller();
    if me.to_string() != record.address {
        return Err(Error::other(format!(
            "run-driver: run {id} is driven by {}, not by {me}; use `corral run --resume {id}`",
            record.address
        )));
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT, signal_hook::consts::SIGHUP] {
        signal_hook::flag::register(signal, stop.clone()).map_err(|e| Error::other(format!("signals: {e}")))?;
    }
    say(&format!(
        "run {id}: {} agents from {} (overlap {})",
        record.plan.agents.len(),
        record.file.display(),
        record.overlap().as_str()
    ));

    let name = record.plan.name.clone();
    let overlap = record.overlap();
    let _lock = match runs.try_lock(&name, overlap)? {
        Some(lock) => lock,
        None if overlap == Overlap::Skip => {
            say(&format!("skipped: a run named {name} is still going"));
            record.state = RunState::Skipped;
            return finish(&state, &runs, record, &me);
        }
        None => {
            say(&format!("waiting: a run named {name} is still going"));
            record.state = RunState::Waiting;
            runs.save(&record)?;
            match runs.lock(&name, overlap, || stop.load(Ordering::Relaxed))? {
                Some(lock) => lock,
                None => {
                    record.state = RunState::Stopped;
                    return finish(&state, &runs, record, &me);
                }
            }
        }
    };
    // An earlier run of the name whose driver was killed holds no lock,
    // but its agents may still be at work: that run is still going.
    if overlap != Overlap::Allow {
        let mut said = false;
        while let Some(earlier) = interrupted_and_still_going(&state, &runs, &record.plan.name, Some(&record.run))? {
            if overlap == Overlap::Skip {
                say(&format!("skipped: run {earlier} of {name} lost its driver and its agents still run"));
                record.state = RunState::Skipped;
                return finish(&state, &runs, record, &me);
            }
            if !std::mem::replace(&mut said, true) {
                say(&format!("waiting: run {earlier} of {name} lost its driver and its agents still run"));
                record.state = RunState::Waiting;
                runs.save(&record)?;
            }
            if stop.load(Ordering::Relaxed) {
                record.state = RunState::Stopped;
                return finish(&state, &runs, record, &me);
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    record.state = RunState::Running;
    runs.save(&record)?;
    let (woken, wake) = mpsc::channel();
    let driver = Driver { state, runs, record, me, stop, watched: HashSet::new(), woken, wake, said: HashMap::new() };
    driver.run()
}

/// A run named `name` (other than `except`) that is not final, whose
/// driver has ended (killed), with an agent of its own still live: its id.
pub(super) fn interrupted_and_still_going(
    state: &StateDir,
    runs: &Runs,
    name: &str,
    except: Option<&str>,
) -> Result<Option<String>> {
    let earlier: Vec<RunRecord> = runs
        .all()
        .into_iter()
        .filter(|r| r.plan.name == name && Some(r.run.as_str()) != except && !r.state.is_final())
        .collect();
    for run in earlier {
        let (agents, _) =
            crate::cli::client::list_with(|request| ask(state, request), true, false, Some(run.address.clone()))?;
        let driver_ended = agents.iter().any(|a| a.address.to_string() == run.address && a.is_done());
        let below = |a: &&AgentRecord| a.address.parent().is_some_and(|p| p.to_string() == run.address);
        if driver_ended && agents.iter().filter(below).any(|a| !a.is_done()) {
            return Ok(Some(run.run));
        }
    }
    Ok(None)
}

struct Driver {
    state: StateDir,
    runs: Runs,
    record: RunRecord,
    /// The driver's own address; the run's agents are its children.
    me: Address,
    stop: Arc<AtomicBool>,
    /// Agents a waiter thread waits for.
    watched: HashSet<Address>,
    woken: mpsc::Sender<()>,
    wake: mpsc::Receiver<()>,
    /// The last line said about each agent (state, exit, merge).
    said: HashMap<String, String>,
}

/// Whether an agent's `after` agents let it start.
enum Deps {
    Ready,
    Waiting,
    Failed(String),
}

impl Driver {
    fn run(mut self) -> Result<i32> {
        let mut last_said = Instant::now();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return self.stop_all();
            }
            let agents = self.agents()?;
            // A stop of the run reaches its agents and the driver at once
            // (all marked before any is signalled): an agent it stopped is
            // not one whose followers are to be skipped, and the driver may
            // see it stopped before its own SIGTERM lands.
            if agents.iter().any(|a| a.address == self.me && a.stop_requested) {
                return self.stop_all();
            }
            let mut changed = false;
            let mut settled = true;
            for planned in self.record.plan.agents.clone() {
                let address = self.me.child(&planned.name)?;
                if let Some(agent) = agents.iter().find(|a| a.address == address) {
                    if !agent.is_done() {
                        settled = false;
                        self.watch(&address);
                    }
                    continue;
                }
                if self.record.not_run.contains_key(&planned.name) {
                    continue;
                }
                settled = false;
                match self.deps(&planned, &agents) {
                    Deps::Waiting => {}
                    Deps::Failed(why) => {
                        self.record.not_run.insert(planned.name.clone(), NotRun::Skipped { why });
                        changed = true;
                    }
                    Deps::Ready => {
                        if self.stop.load(Ordering::Relaxed) {
                            break;
                        }
                        match self.spawn(&planned) {
                            Ok(()) => changed = true,
                            // Spawned already (a request retried across a
                            // daemon restart): it is waited for like the others.
                            Err(err) if err.kind == ErrorKind::Duplicate => changed = true,
                            Err(err) if err.kind == ErrorKind::DaemonUnavailable => {}
                            Err(err) => {
                                let refused = NotRun::Refused { why: err.message, code: err.kind.exit_code() };
                                self.record.not_run.insert(planned.name.clone(), refused);
                                changed = true;
                            }
                        }
                    }
                }
            }
            if self.tell(&agents) {
                last_said = Instant::now();
            }
            if changed {
                self.runs.save(&self.record)?;
                continue;
            }
            if settled {
                return self.finish();
            }
            if last_said.elapsed() > HEARTBEAT {
                say("still waiting for the run's agents");
                last_said = Instant::now();
            }
            let _ = self.wake.recv_timeout(LOOK_AGAIN);
            while self.wake.try_recv().is_ok() {}
        }
    }

    /// The daemon's records of this run: the driver and its children.
    fn agents(&self) -> Result<Vec<AgentRecord>> {
        run_agents(&self.state, &self.me)
    }

    fn deps(&self, planned: &RunAgent, agents: &[AgentRecord]) -> Deps {
        for dep in &planned.after {
            match self.record.not_run.get(dep) {
                Some(NotRun::Skipped { .. }) => return Deps::Failed(format!("after {dep}, which was skipped")),
                Some(NotRun::Refused { .. }) => return Deps::Failed(format!("after {dep}, which could not start")),
                None => {}
            }
            let Ok(address) = self.me.child(dep) else { return Deps::Failed(format!("after {dep}: a bad name")) };
            match agents.iter().find(|a| a.address == address) {
                None => return Deps::Waiting,
                Some(agent) if !agent.is_done() => return Deps::Waiting,
                Some(agent) if agent.wait_code() == 0 => {}
                Some(agent) => {
                    let how = match (&agent.merge_state, agent.state) {
                        (Some(merge), AgentState::Succeeded) => format!("did not merge ({})", merge.as_str()),
                        (_, state) => state.as_str().to_owned(),
                    };
                    return Deps::Failed(format!("after {dep}, which {how}"));
                }
            }
        }
        Deps::Ready
    }

    fn spawn(&mut self, planned: &RunAgent) -> Result<()> {
        let request = SpawnRequest {
            name: planned.name.clone(),
            parent: Some(self.me.to_string()),
            task: planned.task.clone(),
            role: planned.role.clone(),
            settings: planned.settings.clone(),
            fork_session: false,
            command: planned.command.clone(),
            grace_secs: planned.grace_secs,
            base: None,
            env: crate::cli::client::environment(),
        };
        match ask(&self.state, &Request::Spawn(Box::new(request)))? {
            Response::Spawned(spawned) => {
                let address = Address::parse(&spawned.address)?;
                self.watch(&address);
                Ok(())
            }
            other => Err(Error::other(format!("the daemon answered a spawn with {other:?}"))),
        }
    }

    /// Wakes the loop when the agent is done: one thread per agent, each
    /// holding a `Wait` request (reconnecting across a daemon restart).
    fn watch(&mut self, address: &Address) {
        if !self.watched.insert(address.clone()) {
            return;
        }
        let (state, woken, address) = (self.state.clone(), self.woken.clone(), address.to_string());
        std::thread::spawn(move || {
            let _ = ask(&state, &Request::Wait { addresses: vec![address], timeout_secs: None });
            let _ = woken.send(());
        });
    }

    /// Says what changed for each agent; true if it said anything.
    fn tell(&mut self, agents: &[AgentRecord]) -> bool {
        let report = report::build(&self.record, agents, Utc::now());
        let mut said = false;
        for row in &report.agents {
            // Runtime left out: a line when the state, exit or merge moves.
            let key = format!("{} {:?} {:?} {:?}", row.state, row.exit, row.merge, row.reason);
            if self.said.get(&row.name) != Some(&key) {
                if row.state != "waiting" || self.said.contains_key(&row.name) {
                    say(&format!("{}: {}", row.name, report::row_line(row)));
                    said = true;
                }
                self.said.insert(row.name.clone(), key);
            }
        }
        said
    }

    /// Stops what of the run still runs, each agent with its own grace,
    /// and waits for it; then the report.
    fn stop_all(mut self) -> Result<i32> {
        say("stopping: the run's agents get their grace; their worktrees are kept");
        let agents = self.agents()?;
        let live: Vec<String> = agents
            .iter()
            .filter(|a| a.address != self.me && !a.state.is_terminal())
            .map(|a| a.address.to_string())
            .collect();
        let stops: Vec<_> = live
            .into_iter()
            .map(|address| {
                let state = self.state.clone();
                std::thread::spawn(move || ask(&state, &Request::Stop { address, grace_secs: None }))
            })
            .collect();
        for stop in stops {
            let _ = stop.join();
        }
        let agents = self.agents()?;
        let me = agents.iter().find(|a| a.address == self.me);
        self.record.state = match me.and_then(|a| a.stopped_for) {
            Some(crate::model::budget::BudgetKind::Wall) => RunState::TimedOut,
            Some(_) => RunState::BudgetExceeded,
            None => RunState::Stopped,
        };
        self.tell(&agents);
        finish(&self.state, &self.runs, self.record, &self.me)
    }

    fn finish(mut self) -> Result<i32> {
        self.record.state = RunState::Succeeded; // finish() says failed if the code is not 0
        finish(&self.state, &self.runs, self.record, &self.me)
    }
}

/// Writes the final record (state, code, report) and says the report.
fn finish(state: &StateDir, runs: &Runs, mut record: RunRecord, me: &Address) -> Result<i32> {
    let agents = run_agents(state, me).unwrap_or_default();
    record.ended = Some(Utc::now());
    let mut built = report::build(&record, &agents, Utc::now());
    if record.state == RunState::Succeeded && built.code != 0 {
        record.state = RunState::Failed;
        built = report::build(&record, &agents, Utc::now());
    }
    let code = match record.state {
        RunState::Skipped => RUN_SKIPPED,
        _ => built.code,
    };
    record.code = Some(code);
    built.code = code;
    built.state = record.state;
    super::follow::out(&report::render(&built));
    record.report = Some(built);
    runs.save(&record)?;
    Ok(code)
}

/// The daemon's records of the run at `driver`: the driver and every
/// agent below it (those gc removed included).
pub(super) fn run_agents(state: &StateDir, driver: &Address) -> Result<Vec<AgentRecord>> {
    let (agents, _) =
        crate::cli::client::list_with(|request| ask(state, request), true, false, Some(driver.to_string()))?;
    Ok(agents)
}

/// One line of the driver's output (its log; `corral logs /root/<run id>`).
/// A terminal gone (its monitor killed) loses the line, not the run: the
/// report still goes into the record.
fn say(line: &str) {
    super::follow::out(&format!("{} {line}\n", chrono::Local::now().format("%H:%M:%S")));
}
