//! The monitor: one small process per agent, like conmon beside CRI-O.
//!
//! Owns: the agent's PTY master; its output log (`output.log`: everything
//! the agent prints, byte for byte, and the monitor's own notes of a
//! restart or a failed start); the exit record (`exit.json`, written once,
//! before the monitor goes); and the agent's process group: it starts the
//! agent, reaps it and its descendants, stops it when told, and starts it
//! again as the restart spec says (and runs the daemon's follow-ups). It
//! takes input and commands on `monitor.sock` (the protocol's types are in
//! [`crate::wire::monitor`]). Never does: journal (the daemon does, from
//! what the monitor reports), or talk to other agents or their monitors.
//!
//! It runs in its own session and does not depend on the daemon: when the
//! daemon dies, the agent keeps running, its output keeps reaching the
//! log, and its real exit status waits in `exit.json` for the next daemon.
//!
//! The monitor is a child subreaper, so descendants that escape the agent's
//! process group with `setsid` become its children when their parent dies;
//! `process::descendants` finds the rest. The agent has ended when none of
//! its processes is left, never before.
//!
//! The PTY starts at the spec's size (`rows`, `cols`); a restart or a
//! follow-up gets the latest size set by a client.
//!
//! Rooms: `pty` starts the agent in its PTY (and `corral exec-agent`, the
//! shim that gives it another stdin) and writes its input; `output` copies
//! what it prints into its log; `serve` answers the connections on
//! `monitor.sock`; `meter` runs its metering proxy; this file runs the
//! agent's life.
//! The monitor's own log lines go to its stderr, `monitor.log`, through
//! `tracing` (levels from `RUST_LOG`, `info` by default).
//!
//! Plain threads, no async runtime: a monitor is idle almost always, and a
//! hundred of them should cost little memory.

mod meter;
mod output;
mod pty;
mod serve;

pub use meter::{read_admitted, read_calls, record_call, AdmittedCall};
pub use pty::exec_agent;
pub(crate) use pty::{confining_shim, OWN_BINARY};

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::model::lifecycle::DEFAULT_GRACE_SECS;
use crate::model::restart::{RestartState, RunEnd};
use crate::sys::paths::AgentDir;
use crate::sys::process;
use crate::wire::monitor::{ExitRecord, InputMode, MonitorMessage, MonitorSpec};
use output::spawn_output_pump;
use pty::{resize_master, spawn_input_writer, start_agent, InputOp};

/// The agent's PTY master, kept where connections can resize it, and the
/// size it has (or the next one gets).
struct PtyControl {
    master: Option<Box<dyn portable_pty::MasterPty + Send>>,
    rows: u16,
    cols: u16,
}

/// What the monitor's threads share: the agent's state, a condition
/// variable told of every change, and the PTY's size control.
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    pty: Mutex<PtyControl>,
}

impl Shared {
    /// A fresh start: nothing running, the log `log_len` bytes long, the
    /// PTY to open at `rows` x `cols`.
    fn new(log_len: u64, rows: u16, cols: u16) -> Shared {
        Shared {
            state: Mutex::new(State {
                pid: 0,
                log_len,
                output_waiters: 0,
                output_closed: false,
                stop_requested: false,
                exit: None,
                peers: 0,
                generation: 0,
                tag: None,
                follow_ups: std::collections::VecDeque::new(),
                tags_seen: std::collections::HashSet::new(),
                accepting: true,
                held: false,
                between: false,
                inputs_seen: std::collections::HashSet::new(),
                probe_failed: false,
                stopping: 0,
                stop_grace: None,
                restart_note: None,
                restart_generation: 0,
                log_bytes_lost: 0,
                asks: Default::default(),
                asks_generation: 0,
                admission_waiters: Default::default(),
                calls: Vec::new(),
                admitted: Default::default(),
                calls_in_flight: 0,
                held_calls: Default::default(),
                frozen: false,
            }),
            changed: Condvar::new(),
            pty: Mutex::new(PtyControl { master: None, rows, cols }),
        }
    }

    /// Waits on `changed` while `waiting` holds, counted as a waiter for
    /// output (see `State::output_waiters`).
    fn wait_for_output<'a>(
        &self,
        mut state: std::sync::MutexGuard<'a, State>,
        waiting: impl FnMut(&mut State) -> bool,
    ) -> std::sync::MutexGuard<'a, State> {
        state.output_waiters += 1;
        let mut state = self.changed.wait_while(state, waiting).unwrap();
        state.output_waiters -= 1;
        state
    }
}

struct State {
    pid: u32,
    log_len: u64,
    /// Threads waiting for `log_len` to change ([`Shared::wait_for_output`]):
    /// the output pump wakes the others only when one waits, so a flood
    /// read while the daemon's next `output` message is held back (see
    /// `serve::OutputPace`) wakes no thread for each write of the log.
    output_waiters: usize,
    output_closed: bool,
    stop_requested: bool,
    exit: Option<ExitRecord>,
    /// Peers being served; the monitor waits for them before it exits.
    peers: usize,
    /// Counts the agent's processes; the daemon hears of each new one.
    generation: u64,
    /// The follow-up the current process runs for, if any.
    tag: Option<String>,
    /// Commands to run, in order, after the current process ends.
    follow_ups: std::collections::VecDeque<(Vec<String>, String)>,
    /// Tags queued before: a daemon that restarts may send one again.
    tags_seen: std::collections::HashSet<String>,
    /// False once the monitor has decided to finish.
    accepting: bool,
    /// Told to wait for follow-ups after a clean end (`Hold`).
    held: bool,
    /// Held between processes: the last pid is gone (its number may be
    /// reused), so a stop signals no process group by it.
    between: bool,
    /// Ids of the messages written to the agent's input.
    inputs_seen: std::collections::HashSet<String>,
    /// The current run is being stopped because a probe failed.
    probe_failed: bool,
    /// Stop sequences still running; a new run waits for them, so no
    /// stop meant for one run can reach the next.
    stopping: usize,
    /// The grace of the last stop asked for.
    stop_grace: Option<f64>,
    /// The latest restart, and how many so far (the daemon is told of each).
    restart_note: Option<MonitorMessage>,
    restart_generation: u64,
    /// Output bytes the log could not keep (a full disk), so far.
    log_bytes_lost: u64,
    /// The proxy's calls not yet admitted, and who waits for each answer.
    asks: std::collections::BTreeMap<u64, crate::proxy::Ask>,
    asks_generation: u64,
    admission_waiters: std::collections::HashMap<u64, tokio::sync::oneshot::Sender<crate::proxy::Decision>>,
    /// Every call the proxy has recorded, in order.
    calls: Vec<crate::proxy::CallRecord>,
    /// Calls admitted and not yet recorded, with the output cap each was
    /// allowed: told to each daemon that connects, which holds them under
    /// the budgets (and charges them if the monitor vanishes).
    admitted: std::collections::BTreeMap<u64, AdmittedCall>,
    /// Calls admitted and not yet recorded.
    calls_in_flight: usize,
    /// Calls the daemon holds (a paused budget): they wait past
    /// `meter::ADMISSION_WAIT` for their answer.
    held_calls: std::collections::HashSet<u64>,
    /// The agent is frozen (a paused budget): no new process of it (a
    /// follow-up, a restart) starts until it is thawed or stopped.
    frozen: bool,
}

/// Puts the files of an ended run (its exit record, calls and
/// admissions) away under `task`'s name, so that the next run's monitor
/// starts them afresh and no daemon takes the last run's for its.
pub fn put_away_run(agent: &AgentDir, task: &str) {
    let files = [
        (agent.exit(), format!("exit-{task}.json")),
        (meter::calls_file(agent), format!("calls-{task}.jsonl")),
        (meter::admitted_file(agent), format!("admitted-{task}.jsonl")),
    ];
    for (from, to) in files {
        let _ = std::fs::rename(from, agent.dir.join(to));
    }
}

/// The file in an agent's folder that lists, a line each, the tags of the
/// follow-ups that started.
pub fn started_follow_ups_file(agent: &AgentDir) -> std::path::PathBuf {
    agent.dir.join("follow-ups-started")
}

fn record_started_follow_up(agent: &AgentDir, tag: &str) -> std::io::Result<()> {
    let mut file = OpenOptions::new().create(true).append(true).open(started_follow_ups_file(agent))?;
    file.write_all(format!("{tag}\n").as_bytes())?;
    file.sync_data()
}

/// Runs the monitor for the agent in `dir` until the agent has ended.
pub fn run(dir: &Path) -> anyhow::Result<()> {
    crate::sys::logging::init();
    let agent = AgentDir { dir: dir.to_path_buf() };
    let mut spec: MonitorSpec = serde_json::from_slice(
        &std::fs::read(agent.spec()).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", agent.spec().display()))?,
    )?;
    process::become_subreaper()?;
    let me = std::process::id();
    std::fs::write(agent.monitor_pid(), me.to_string())?;

    let _ = std::fs::remove_file(agent.socket());
    let listener = UnixListener::bind(agent.socket())?;
    let mut log = std::os::unix::fs::OpenOptionsExt::mode(OpenOptions::new().create(true).append(true), 0o600)
        .open(agent.log())?;
    let initial_len = log.seek(SeekFrom::End(0))?;

    let shared = Arc::new(Shared::new(initial_len, spec.rows, spec.cols));

    // The metering proxy comes up before the agent, which is pointed at it;
    // an agent whose proxy cannot start does not start (fail closed).
    let mut proxy_url: Option<String> = None;
    let mut proxy_calls = None;
    if let Some(meter) = spec.meter.clone() {
        let started = meter::read_keys().and_then(|keys| meter::start(&meter, keys, shared.clone(), &agent));
        match started {
            Ok((addr, calls)) => {
                tracing::info!("metering proxy on {addr}");
                meter::point_at(&mut spec, addr);
                proxy_url = Some(format!("http://{addr}"));
                proxy_calls = Some(calls);
            }
            Err(err) => {
                tracing::error!("{err}");
                note(&shared, &mut log, &format!("corral: {err}"));
                let record = ExitRecord {
                    pid: 0,
                    code: Some(127),
                    signal: None,
                    stop_requested: false,
                    error: Some(err.to_string()),
                    ended_at: Utc::now(),
                    log_bytes_lost: 0,
                    limit: None,
                };
                keep_exit_record(&shared, &agent, &record);
                finish(&shared, &agent, listener, record, Duration::from_millis(500));
                return Ok(());
            }
        }
    }

    // The agent may be a sequence of processes: the first runs the spec's
    // command; follow-ups queued by the daemon (`Then`, for CLIs that take
    // a message as a new process, like `codex exec resume`) run after it,
    // one at a time, in the same worktree, writing to the same log.
    let mut argv = spec.command.clone();
    let mut input_mode = spec.input;
    let mut tag: Option<String> = None;
    let writer: Arc<Mutex<Box<dyn Write + Send>>> = Arc::new(Mutex::new(Box::new(std::io::sink())));
    let mut first = true;
    let mut restarts = RestartState::default();
    let mut input: Option<std::sync::mpsc::Sender<InputOp>> = None;
    let mut last_limit: Option<crate::sys::sandbox::LimitHit> = None;
    // How the last run ended, for a stop that comes before the next starts.
    let mut last_run: (u32, Option<i32>, Option<i32>) = (0, None, None);
    let (pid, code, signal) = loop {
        if !first {
            // A stop asked for since the last check ends the agent here:
            // nothing new starts after a stop. From here to the new pid,
            // a stop or a freeze is left for the launch to apply.
            let state = shared.state.lock().unwrap();
            let mut state = shared.changed.wait_while(state, |s| s.stopping > 0).unwrap();
            if state.stop_requested {
                state.accepting = false;
                break last_run;
            }
        }
        let run_started = Instant::now();
        let counted_before = limit_counters(&spec);
        let size = {
            let control = shared.pty.lock().unwrap();
            (control.rows, control.cols)
        };
        let (pty, pid) = match start_agent(&spec, &agent, &argv, input_mode, size) {
            Ok(started) => started,
            Err(err) => {
                // Nothing ran: record why, in the log too, so `corral view` shows it.
                tracing::error!("cannot start {argv:?}: {err}");
                note(&shared, &mut log, &format!("corral: cannot start {argv:?}: {err}"));
                let record = ExitRecord {
                    pid: 0,
                    code: Some(127),
                    signal: None,
                    stop_requested: false,
                    error: first.then(|| err.to_string()),
                    ended_at: Utc::now(),
                    log_bytes_lost: shared.state.lock().unwrap().log_bytes_lost,
                    limit: None,
                };
                keep_exit_record(&shared, &agent, &record);
                finish(&shared, &agent, listener, record, Duration::from_millis(500));
                return Ok(());
            }
        };
        // A follow-up's start is noted in the agent's folder first (synced,
        // outside the lock): a daemon that was away when it started learns
        // from there that its message was delivered.
        if let Some(tag) = &tag {
            if let Err(err) = record_started_follow_up(&agent, tag) {
                tracing::warn!("cannot note that follow-up {tag} started: {err}");
            }
        }
        let (stop_now, freeze_now) = {
            let mut state = shared.state.lock().unwrap();
            state.pid = pid;
            state.output_closed = false;
            state.generation += 1;
            state.tag = tag.take();
            shared.changed.notify_all();
            match &state.tag {
                Some(tag) => tracing::info!("agent started: pid {pid}, follow-up {tag}"),
                None => tracing::info!("agent started: pid {pid}"),
            }
            (state.stop_requested.then(|| state.stop_grace.unwrap_or(DEFAULT_GRACE_SECS)), state.frozen)
        };
        // A stop or a freeze that came while it was starting reaches it.
        if let Some(grace) = stop_now {
            tracing::info!("a stop came while process {pid} started: it is stopped too");
            request_stop(&shared, grace, false);
        } else if freeze_now {
            freeze(&shared, true);
        }
        *writer.lock().unwrap() = pty.writer;
        {
            // A resize that came while this PTY opened applies now.
            let mut control = shared.pty.lock().unwrap();
            if (control.rows, control.cols) != size {
                let _ = resize_master(pty.master.as_ref(), control.rows, control.cols);
            }
            control.master = Some(pty.master);
        }
        if first {
            let sender = spawn_input_writer(writer.clone(), pty.fifo);
            serve::spawn_acceptor(listener.try_clone()?, agent.clone(), shared.clone(), writer.clone(), sender.clone());
            spawn_signal_watcher(shared.clone(), spec.grace_secs.unwrap_or(DEFAULT_GRACE_SECS));
            input = Some(sender);
            first = false;
        } else if let (Some(fifo), Some(sender)) = (pty.fifo, &input) {
            let _ = sender.send(InputOp::Replace(fifo));
        }
        // A run of the spec's own command (first or restarted) gets the task.
        if let (Some(text), Some(sender), true) = (&spec.first_input, &input, argv == spec.command) {
            let _ = sender.send(InputOp::Write(text.clone().into_bytes()));
        }
        spawn_output_pump(pty.reader, log.try_clone()?, shared.clone(), agent.dir.clone());

        // Reap until every descendant is gone. When the agent itself exits,
        // whatever it left behind is stopped too.
        let mut status: Option<(Option<i32>, Option<i32>)> = None;
        loop {
            match nix::sys::wait::waitpid(None, None) {
                Ok(nix::sys::wait::WaitStatus::Exited(p, code)) if p.as_raw() as u32 == pid => {
                    status = Some((Some(code), None));
                    stop_leftovers();
                }
                Ok(nix::sys::wait::WaitStatus::Signaled(p, signal, _)) if p.as_raw() as u32 == pid => {
                    status = Some((None, Some(signal as i32)));
                    stop_leftovers();
                }
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => break, // ECHILD: nothing of the agent is left.
            }
        }
        drop(shared.pty.lock().unwrap().master.take());
        // All writers of the PTY are gone; wait for the pump to drain it.
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut state = shared.state.lock().unwrap();
        while !state.output_closed && Instant::now() < deadline {
            state = shared.changed.wait_timeout(state, Duration::from_millis(50)).unwrap().0;
        }
        let (code, signal) = status.unwrap_or((None, None));
        last_limit = run_limit(&spec, &agent, counted_before, code, signal);
        if let Some(hit) = &last_limit {
            tracing::info!("a limit ended the agent's process {pid}: {}", hit.describe());
        }
        match (code, signal) {
            (_, Some(signal)) => tracing::info!("agent's process {pid} was killed by signal {signal}"),
            (Some(code), _) => tracing::info!("agent's process {pid} exited with code {code}"),
            _ => tracing::info!("agent's process {pid} ended"),
        }
        // A process that ended cleanly while the agent is held (children
        // still to report) leaves the agent waiting, with no process, for
        // its next follow-up.
        if state.held && state.follow_ups.is_empty() && !state.stop_requested && (code, signal) == (Some(0), None) {
            tracing::info!("agent's process {pid} ended; held for a follow-up");
            // The pid stays what `status` says: a daemon that connects
            // meanwhile adopts the agent, which is alive though idle.
            state.between = true;
            state =
                shared.changed.wait_while(state, |s| s.held && s.follow_ups.is_empty() && !s.stop_requested).unwrap();
            state.between = false;
        }
        // Frozen, nothing new of the agent starts: a follow-up or a restart
        // waits for the thaw (or a stop).
        state = shared.changed.wait_while(state, |s| s.frozen && !s.stop_requested).unwrap();
        // A follow-up runs unless a stop was asked for, or a probe failed
        // (the restart policy decides first; the follow-up waits for the
        // next run's end); once the monitor decides to finish, it takes no
        // more.
        let probe_failed = std::mem::take(&mut state.probe_failed);
        if !state.stop_requested && !probe_failed {
            if let Some((command, next_tag)) = state.follow_ups.pop_front() {
                // A follow-up made from the agent's command line (Codex's
                // `exec resume`) names the proxy as the first run did.
                argv = match &proxy_url {
                    Some(url) => {
                        command.into_iter().map(|a| a.replace(crate::wire::monitor::PROXY_URL_MARK, url)).collect()
                    }
                    None => command,
                };
                input_mode = InputMode::Null;
                tag = Some(next_tag);
                last_run = (pid, code, signal);
                continue;
            }
        }
        // Then the restart policy.
        let end = if probe_failed {
            RunEnd::ProbeFailure
        } else if state.stop_requested {
            RunEnd::Stopped
        } else if code == Some(0) {
            RunEnd::Success
        } else {
            RunEnd::Failure
        };
        let Some(backoff) = spec.restart.decide(&mut restarts, end, run_started.elapsed()) else {
            state.accepting = false;
            break (pid, code, signal);
        };
        let reason = match (end, code, signal) {
            (RunEnd::ProbeFailure, _, _) => "a liveness or startup probe failed".to_string(),
            (_, _, Some(signal)) => format!("killed by signal {signal}"),
            (_, Some(code), _) => format!("exited with code {code}"),
            _ => "ended".to_string(),
        };
        drop(state);
        tracing::info!("{reason}; restart {} in {:.1}s", restarts.count, backoff.as_secs_f64());
        note(
            &shared,
            &mut log,
            &format!("corral: {reason}; restart {} in {:.1}s", restarts.count, backoff.as_secs_f64()),
        );
        let mut state = shared.state.lock().unwrap();
        state.restart_note = Some(MonitorMessage::Restarting {
            count: restarts.count,
            reason,
            backoff_secs: backoff.as_secs_f64(),
            code,
            signal,
        });
        state.restart_generation += 1;
        shared.changed.notify_all();
        // Wait out the back-off; a stop ends the agent instead.
        let until = Instant::now() + backoff;
        while !state.stop_requested && Instant::now() < until {
            state = shared.changed.wait_timeout(state, until.saturating_duration_since(Instant::now())).unwrap().0;
        }
        state = shared.changed.wait_while(state, |s| s.frozen && !s.stop_requested).unwrap();
        if state.stop_requested {
            state.accepting = false;
            break (pid, code, signal);
        }
        argv = spec.command.clone();
        input_mode = spec.input;
        last_run = (pid, code, signal);
    };
    // Both read under one lock (two guards in one statement would
    // deadlock: a temporary guard lives to the statement's end).
    let (stop_requested, log_bytes_lost) = {
        let state = shared.state.lock().unwrap();
        (state.stop_requested, state.log_bytes_lost)
    };
    let limit = last_limit.filter(|_| !stop_requested);
    // Calls still under way when the agent ended are read to their end
    // (the answer says what the upstream charged), for a while; any still
    // open then are charged their estimate. Their records come before the
    // exit's.
    {
        let deadline = Instant::now() + meter::CALLS_SETTLE_WAIT;
        let mut state = shared.state.lock().unwrap();
        while state.calls_in_flight > 0 && Instant::now() < deadline {
            state = shared.changed.wait_timeout(state, Duration::from_millis(20)).unwrap().0;
        }
    }
    if let Some(calls) = &proxy_calls {
        let why = format!(
            "the agent ended and the answer had not within {} s: charged its estimate",
            meter::CALLS_SETTLE_WAIT.as_secs()
        );
        match calls.close(&why) {
            0 => {}
            open => tracing::warn!("{open} call(s) still open at the agent's end were charged their estimate"),
        }
    }
    let record =
        ExitRecord { pid, code, signal, stop_requested, error: None, ended_at: Utc::now(), log_bytes_lost, limit };
    keep_exit_record(&shared, &agent, &record);
    for cgroup in spec.sandbox.iter().flat_map(|plan| &plan.cgroups) {
        cgroup.remove();
    }
    tracing::info!("the agent has ended; exit record written");
    finish(&shared, &agent, listener, record, Duration::from_secs(2));
    Ok(())
}

/// What the agent's cgroups have counted so far (memory kills, refused
/// forks).
fn limit_counters(spec: &MonitorSpec) -> crate::sys::sandbox::Counters {
    let mut counters = crate::sys::sandbox::Counters::default();
    for cgroup in spec.sandbox.iter().flat_map(|plan| &plan.cgroups) {
        match cgroup.controller.as_str() {
            "memory" => counters.oom_kills += cgroup.count(),
            _ => counters.pids_refused += cgroup.count(),
        }
    }
    counters
}

/// The limit that ended a run, if one did: what the cgroups counted during
/// it, its end, and the last of its output (see `sandbox::limit_hit`).
fn run_limit(
    spec: &MonitorSpec,
    agent: &AgentDir,
    before: crate::sys::sandbox::Counters,
    code: Option<i32>,
    signal: Option<i32>,
) -> Option<crate::sys::sandbox::LimitHit> {
    let plan = spec.sandbox.as_ref()?;
    let now = limit_counters(spec);
    let during = crate::sys::sandbox::Counters {
        oom_kills: now.oom_kills.saturating_sub(before.oom_kills),
        pids_refused: now.pids_refused.saturating_sub(before.pids_refused),
    };
    let mut tail = Vec::new();
    if let Ok(mut log) = File::open(agent.log()) {
        let len = log.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = log.seek(SeekFrom::Start(len.saturating_sub(8192)));
        let _ = log.read_to_end(&mut tail);
    }
    crate::sys::sandbox::limit_hit(plan, code, signal, during, &tail)
}

/// Writes a line of the monitor's own into the agent's log (a restart, a
/// failed start), counted like output so readers see everything up to it.
fn note(shared: &Shared, log: &mut File, line: &str) {
    let line = format!("{line}\r\n");
    if log.write_all(line.as_bytes()).is_ok() {
        output::tell(shared, (line.len() as u64, 0));
    }
}

/// Freezes (SIGSTOP) or thaws (SIGCONT) every process of the agent's
/// tree: its group and every descendant of the monitor, found through
/// `/proc` as a stop finds them. Freezing walks the tree again until a
/// walk finds no process left running, so a child forked meanwhile is
/// caught. Stopped processes still take SIGKILL, and a stop thaws them
/// after its SIGTERM, so a stop of a frozen agent leaves no process. While
/// frozen, no new process of the agent starts (see `State::frozen`).
fn freeze(shared: &Arc<Shared>, frozen: bool) {
    let pid = {
        let mut state = shared.state.lock().unwrap();
        state.frozen = frozen;
        shared.changed.notify_all();
        state.pid
    };
    let me = std::process::id();
    let signal = if frozen { nix::sys::signal::Signal::SIGSTOP } else { nix::sys::signal::Signal::SIGCONT };
    tracing::info!("{} the agent's processes", if frozen { "freezing" } else { "thawing" });
    if pid != 0 {
        process::signal_group(pid, signal);
    }
    for _ in 0..100 {
        let running: Vec<u32> =
            process::descendants(me).into_iter().filter(|p| process::is_stopped(*p) != frozen).collect();
        if running.is_empty() {
            return;
        }
        for pid in running {
            process::signal_pid(pid, signal);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    tracing::warn!("the agent's processes did not all {} within 100 rounds", if frozen { "stop" } else { "go on" });
}

/// Runs the stop sequence on its own thread: SIGTERM, grace, SIGKILL, for
/// the agent's group and every descendant that left it. A stop for a
/// failed probe leaves the restart policy to decide what follows; any
/// other stop is final.
fn request_stop(shared: &Arc<Shared>, grace_secs: f64, probe_failed: bool) {
    let pid = {
        let mut state = shared.state.lock().unwrap();
        if state.exit.is_some() {
            return;
        }
        if probe_failed {
            state.probe_failed = true;
        } else {
            state.stop_requested = true;
            state.stop_grace = Some(grace_secs);
        }
        state.stopping += 1;
        shared.changed.notify_all();
        // Between processes of a held agent nothing runs under its pid.
        if state.between {
            0
        } else {
            state.pid
        }
    };
    // Whatever the daemon sent, never panic here: a stop that cannot run is
    // an agent nobody can stop. Out of range means "as long as allowed".
    let grace = Duration::try_from_secs_f64(grace_secs.max(0.0))
        .unwrap_or(Duration::from_secs(crate::model::duration::MAX_DURATION_SECS))
        .min(Duration::from_secs(crate::model::duration::MAX_DURATION_SECS));
    tracing::info!("stopping the agent (pid {pid}, grace {grace:?}, probe failed: {probe_failed})");
    let shared = shared.clone();
    std::thread::spawn(move || {
        // pid 0: no process runs (held between follow-ups), only what it
        // may have left behind, which stop_tree finds as descendants.
        process::stop_tree(std::process::id(), (pid != 0).then_some(pid), grace, Duration::from_secs(10));
        shared.state.lock().unwrap().stopping -= 1;
        shared.changed.notify_all();
    });
}

fn spawn_signal_watcher(shared: Arc<Shared>, grace_secs: f64) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) else { return };
    std::thread::spawn(move || {
        // A monitor told to go stops its agent first, with the agent's grace.
        if let Some(signal) = signals.forever().next() {
            tracing::info!("signal {signal}: stopping the agent first");
            request_stop(&shared, grace_secs, false);
        }
    });
}

/// Once the agent's main process has exited, whatever it left running is
/// part of it no longer: stop it (a short grace, then SIGKILL). This runs
/// in the reaping thread, before the next run can start, so it can never
/// touch a restarted agent. Leftovers that die become zombies, which
/// `descendants` skips and the reaping loop then collects.
fn stop_leftovers() {
    process::stop_tree(std::process::id(), None, Duration::from_secs(1), Duration::from_secs(10));
}

/// Tells the daemon how the agent ended, then writes `exit.json`; on a
/// full disk it tries again every half second until the record is kept
/// (the monitor stays, small, meanwhile: how an agent ended is never lost,
/// and a new daemon can ask the monitor itself).
fn keep_exit_record(shared: &Arc<Shared>, agent: &AgentDir, record: &ExitRecord) {
    {
        let mut state = shared.state.lock().unwrap();
        state.exit = Some(record.clone());
        shared.changed.notify_all();
    }
    let mut warned = false;
    while let Err(err) = write_exit_record(agent, record) {
        if !warned {
            tracing::warn!("cannot write the exit record ({err}); trying again until it can");
            warned = true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn write_exit_record(agent: &AgentDir, record: &ExitRecord) -> std::io::Result<()> {
    let tmp = agent.dir.join("exit.json.tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(&serde_json::to_vec(record).map_err(std::io::Error::other)?)?;
    file.sync_all()?;
    std::fs::rename(&tmp, agent.exit())?;
    File::open(&agent.dir)?.sync_all()
}

/// Publishes the exit record to connected peers, removes the socket, and
/// waits (at most `linger`) until every peer has been sent the end.
fn finish(shared: &Arc<Shared>, agent: &AgentDir, listener: UnixListener, record: ExitRecord, linger: Duration) {
    let _ = std::fs::remove_file(agent.socket());
    drop(listener);
    let deadline = Instant::now() + linger;
    let mut state = shared.state.lock().unwrap();
    state.exit = Some(record);
    shared.changed.notify_all();
    while state.peers > 0 && Instant::now() < deadline {
        state = shared.changed.wait_timeout(state, Duration::from_millis(50)).unwrap().0;
    }
}

/// Reads an exit record, if the monitor wrote one.
pub fn read_exit_record(agent: &AgentDir) -> Option<ExitRecord> {
    serde_json::from_slice(&std::fs::read(agent.exit()).ok()?).ok()
}
