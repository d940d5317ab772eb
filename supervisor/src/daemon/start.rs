//! The one start path, and the seam behind it.
//!
//! Spawn, the dispatch of pending agents, and assign all start an agent
//! through [`start_or_queue`] (or, for a pending agent whose slot came
//! free, [`launch`]): over `max_threads` it waits in Pending; else the
//! [`Runtime`] brings its process to life, `started` is journaled, and the
//! agent's task takes over. A restart after a crash or a failed probe
//! happens behind the seam: the monitor applies the restart policy and
//! reports it, so the lifecycle never knows which runtime it has.
//!
//! [`Runtime`] is the place where an agent's process comes to life: today
//! [`LocalMonitors`] (a monitor process per agent on this machine); a test
//! double or another runtime (a Kubernetes Job) plugs in the same way. It
//! reads the agent's spec from its folder and hands back a [`Link`] to the
//! live agent.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use super::{agent, Daemon};
use crate::model::budget::Meter;
use crate::model::error::{Error, ErrorKind, Result};
use crate::model::event::EventBody;
use crate::model::lifecycle::{AgentRecord, AgentState};
use crate::monitor;
use crate::sys::paths::AgentDir;
use crate::wire::monitor::{ExitRecord, MonitorMessage, ProxyKeys};

/// How long a new monitor may take to come up.
const MONITOR_START_TIMEOUT: Duration = Duration::from_secs(20);

/// The daemon's connection to one live agent (its monitor): lines of
/// `MonitorMessage` JSON one way, `MonitorCommand` lines the other.
pub(super) type Link = UnixStream;

/// A boxed future, for the object-safe [`Runtime`].
pub(super) type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where an agent's process comes to life.
pub(crate) trait Runtime: Send + Sync + 'static {
    /// Starts the agent whose spec is written in `dir` and waits until it
    /// runs (or has already ended); a metered agent's monitor gets `keys`.
    fn start<'a>(
        &'a self,
        dir: &'a AgentDir,
        record: &'a AgentRecord,
        keys: Option<ProxyKeys>,
    ) -> Boxed<'a, Result<Launched>>;
    /// Reconnects to the agent after a daemon restart: its link, pid and
    /// monitor pid, if it still runs.
    fn connect<'a>(&'a self, dir: &'a AgentDir) -> Boxed<'a, Option<(Link, u32, u32)>>;
    /// How an agent that no longer runs ended, if it said.
    fn exit_record(&self, dir: &AgentDir) -> Option<ExitRecord>;
}

/// A monitor process per agent, on this machine.
pub(crate) struct LocalMonitors {
    /// The corral binary, which runs `corral monitor DIR`.
    exe: PathBuf,
    /// The state folder: the monitors' working folder.
    state_dir: PathBuf,
}

impl LocalMonitors {
    pub(crate) fn new(exe: PathBuf, state_dir: PathBuf) -> LocalMonitors {
        LocalMonitors { exe, state_dir }
    }
}

impl Runtime for LocalMonitors {
    fn start<'a>(
        &'a self,
        dir: &'a AgentDir,
        record: &'a AgentRecord,
        keys: Option<ProxyKeys>,
    ) -> Boxed<'a, Result<Launched>> {
        Box::pin(start_monitor(&self.exe, &self.state_dir, dir, record, keys))
    }

    fn connect<'a>(&'a self, dir: &'a AgentDir) -> Boxed<'a, Option<(Link, u32, u32)>> {
        Box::pin(async move {
            let stream = UnixStream::connect(dir.socket()).await.ok()?;
            match hello_monitor(stream).await {
                Ok((stream, MonitorMessage::Status { pid, monitor_pid, exit: None, .. })) if pid != 0 => {
                    Some((stream, pid, monitor_pid))
                }
                _ => None,
            }
        })
    }

    fn exit_record(&self, dir: &AgentDir) -> Option<ExitRecord> {
        // A monitor that could not write exit.json yet (a full disk) still
        // holds the record and answers with it.
        monitor::read_exit_record(dir).or_else(|| ask_for_exit_record(dir))
    }
}

/// The exit record a live monitor holds, from its status line.
fn ask_for_exit_record(dir: &AgentDir) -> Option<ExitRecord> {
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(dir.socket()).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(b"{\"role\":\"daemon\"}\n").ok()?;
    let mut line = String::new();
    std::io::BufReader::new(stream).read_line(&mut line).ok()?;
    match serde_json::from_str(&line).ok()? {
        MonitorMessage::Status { exit, .. } => exit,
        _ => None,
    }
}

/// How a start went.
pub(super) enum Start {
    /// It runs (or ran and ended already) under this pid.
    Running { pid: u32 },
    /// Over `max_threads`: it waits in Pending for a slot.
    Queued,
}

/// Starts an agent whose spec is written, or queues it for a slot. On an
/// error nothing runs and nothing about the failure is journaled: the
/// caller knows what failing means there (a spawn takes its worktree
/// back; an assigned task fails).
pub(super) async fn start_or_queue(daemon: &Arc<Daemon>, record: &AgentRecord) -> Result<Start> {
    let _slots = daemon.slots.lock().await;
    if record.holds_slot() && !slot_free(daemon) {
        daemon.commit(vec![daemon.draft(record, EventBody::Queued {})]).await?;
        return Ok(Start::Queued);
    }
    launch(daemon, record).await.map(|pid| Start::Running { pid })
}

/// Brings the agent's process to life through the runtime, journals
/// `started` and hands it to its task. Callers hold `Daemon::slots`.
pub(super) async fn launch(daemon: &Arc<Daemon>, record: &AgentRecord) -> Result<u32> {
    let dir = daemon.agent_dir(record);
    // Kept for the agent's life: an assigned task starts a new monitor.
    let kept = daemon.keys.lock().unwrap_or_else(|e| e.into_inner()).get(&record.id).cloned();
    let keys = match kept {
        Some(keys) => Some(keys),
        None => recover_keys(daemon, record, &dir)?,
    };
    let launched = daemon.runtime.start(&dir, record, keys).await?;
    let (pid, monitor_pid) = launched.pids();
    // It runs: that it started is recorded before its task takes over,
    // waiting for the journal if it cannot be written just now.
    daemon.commit_retrying(vec![daemon.draft(record, EventBody::Started { pid, monitor_pid })]).await;
    let record = daemon.record(&record.address).unwrap_or_else(|| record.clone());
    agent::supervise(daemon, record, launched.link());
    Ok(pid)
}

/// The real keys of a metered agent this daemon was never given (it was
/// spawned under an earlier daemon, which held them in memory only): each
/// from corral.toml's `key_file`, or the start is refused, saying which
/// is missing and where to put it. A proxy without a key it had would send
/// the agent's calls with no key at all.
fn recover_keys(daemon: &Daemon, record: &AgentRecord, dir: &AgentDir) -> Result<Option<ProxyKeys>> {
    let spec: Option<crate::wire::monitor::MonitorSpec> =
        std::fs::read(dir.spec()).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let Some(meter) = spec.and_then(|spec| spec.meter).filter(|meter| !meter.keyed.is_empty()) else {
        return Ok(None);
    };
    let proxy = daemon.config().proxy.clone();
    let mut keys = ProxyKeys::default();
    for (family, bearer) in meter.keyed {
        let name = family.name();
        let file = proxy.providers().into_iter().find(|(n, ..)| *n == name).and_then(|(_, p, ..)| p?.key_file.clone());
        let why = match file.map(|file| super::upstream::read_key_file(&file)) {
            Some(Ok(key)) => {
                keys.0.insert(family, crate::wire::monitor::ProxyKey { key, bearer });
                continue;
            }
            Some(Err(why)) => format!("corral.toml [proxy.{name}] key_file: {why}"),
            None => format!(
                "its real {name} key was held only in the memory of the daemon that spawned it, which has \
                 stopped since; set `key_file` under `[proxy.{name}]` in corral.toml (the key stays in that \
                 file), or spawn the agent again with the key in its environment"
            ),
        };
        return Err(Error::new(ErrorKind::Refused, format!("{} cannot start: {why}", record.address)));
    }
    daemon.keys.lock().unwrap_or_else(|e| e.into_inner()).insert(record.id, keys.clone());
    Ok(Some(keys))
}

/// The `exited` of an agent whose start failed.
pub(super) fn could_not_start(err: &Error) -> EventBody {
    EventBody::Exited {
        state: AgentState::Failed,
        code: None,
        signal: None,
        reason: Some(format!("could not be started: {}", err.message)),
    }
}

/// Starts the monitor of an agent whose spec is written, in its own
/// session, and waits until it reports the agent running.
async fn start_monitor(
    exe: &Path,
    state_dir: &Path,
    agent_dir: &AgentDir,
    record: &AgentRecord,
    keys: Option<ProxyKeys>,
) -> Result<Launched> {
    // An exit record older than this start is an earlier run's (an
    // assigned task's monitor may still be writing the last one's).
    let launched_at = chrono::Utc::now();
    let log = std::os::unix::fs::OpenOptionsExt::mode(std::fs::OpenOptions::new().create(true).append(true), 0o600)
        .open(agent_dir.monitor_log())
        .map_err(|e| Error::io("cannot open", &agent_dir.monitor_log(), e))?;

    // The daemon's own binary, even once an upgrade replaced the file it
    // started from: its monitors speak its protocol. (The path stays the
    // name the monitor shows in `ps`.)
    let mut command = tokio::process::Command::new(crate::monitor::OWN_BINARY);
    command
        .arg0(exe)
        .arg("monitor")
        .arg(&agent_dir.dir)
        .current_dir(state_dir)
        // A metered agent's monitor reads the real keys from a pipe: they
        // are never in a file, an environment or an argument list.
        .stdin(if record.meter == Meter::Proxy { std::process::Stdio::piped() } else { std::process::Stdio::null() })
        .stdout(log.try_clone().map_err(|e| Error::other(e.to_string()))?)
        .stderr(log);
    // The daemon's own environment may hold the person's keys: a monitor
    // gets its agent's keys on its standard input, or none.
    for name in crate::proxy::plan::KEY_VARIABLES {
        command.env_remove(name);
    }
    // SAFETY: `new_session` calls only async-signal-safe functions.
    unsafe {
        command.pre_exec(crate::sys::process::new_session);
    }
    let mut child = command.spawn().map_err(|e| Error::other(format!("cannot start the monitor: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        let bytes = serde_json::to_vec(&keys.unwrap_or_default()).expect("keys serialize");
        // Small enough for the pipe's buffer; dropping the end closes it.
        if let Err(err) = stdin.write_all(&bytes).await {
            let _ = child.start_kill();
            return Err(Error::other(format!("cannot hand the monitor its keys: {err}")));
        }
    }

    let deadline = Instant::now() + MONITOR_START_TIMEOUT;
    let outcome = loop {
        if let Ok(stream) = UnixStream::connect(agent_dir.socket()).await {
            match tokio::time::timeout(Duration::from_secs(5), hello_monitor(stream)).await {
                Ok(Ok((stream, MonitorMessage::Status { pid, monitor_pid, exit: None, .. }))) if pid != 0 => {
                    break Ok(Launched::Running { stream, pid, monitor_pid });
                }
                // Not started yet, or ended already: look again below.
                _ => {}
            }
        }
        if let Some(exit) = monitor::read_exit_record(agent_dir).filter(|exit| exit.ended_at >= launched_at) {
            if exit.error.is_some() {
                break Err(start_error(&record.command, &exit));
            }
            // It ran, and ended before the first connect.
            let monitor_pid =
                std::fs::read_to_string(agent_dir.monitor_pid()).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
            break Ok(Launched::Ended { pid: exit.pid, monitor_pid });
        }
        if let Ok(Some(status)) = child.try_wait() {
            if monitor::read_exit_record(agent_dir).is_none() {
                let tail = std::fs::read_to_string(agent_dir.monitor_log()).unwrap_or_default();
                break Err(Error::other(format!(
                    "the monitor exited ({status}) before the agent started: {}",
                    tail.trim()
                )));
            }
            continue;
        }
        if Instant::now() > deadline {
            let _ = child.start_kill();
            break Err(Error::other("the monitor did not come up within 20 s"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // The daemon reaps the monitors it started; adopted ones belong to init.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    outcome
}

/// What starting an agent gave.
pub(crate) enum Launched {
    /// The agent runs; the stream is the daemon's connection to its monitor.
    Running { stream: UnixStream, pid: u32, monitor_pid: u32 },
    /// The agent ran and ended before the daemon could connect.
    Ended { pid: u32, monitor_pid: u32 },
}

impl Launched {
    fn pids(&self) -> (u32, u32) {
        match self {
            Launched::Running { pid, monitor_pid, .. } | Launched::Ended { pid, monitor_pid } => (*pid, *monitor_pid),
        }
    }

    fn link(self) -> Option<Link> {
        match self {
            Launched::Running { stream, .. } => Some(stream),
            Launched::Ended { .. } => None,
        }
    }
}

fn start_error(command: &[String], record: &ExitRecord) -> Error {
    Error::new(
        ErrorKind::CommandNotFound,
        format!("cannot start {:?}: {}", command.join(" "), record.error.clone().unwrap_or_default()),
    )
}

/// Says hello to a monitor as the daemon and reads its status line.
pub(super) async fn hello_monitor(mut stream: UnixStream) -> std::io::Result<(UnixStream, MonitorMessage)> {
    stream.write_all(b"{\"role\":\"daemon\"}\n").await?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    // Read exactly one line, byte by byte, so nothing after it is consumed.
    loop {
        use tokio::io::AsyncReadExt;
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    let message = serde_json::from_slice(&line).map_err(std::io::Error::other)?;
    Ok((stream, message))
}

/// True when fewer agents run than `[supervisor] max_threads` allows (or
/// there is no limit); a run's driver does not count. Callers hold
/// `Daemon::slots`.
pub(super) fn slot_free(daemon: &Daemon) -> bool {
    let Some(max) = daemon.config().supervisor.max_threads else { return true };
    let holds_slot = |a: &&AgentRecord| a.state == AgentState::Running && a.holds_slot();
    let running = daemon.store.read(|table| table.agents.values().filter(holds_slot).count());
    running < max as usize
}

/// Starts pending agents, oldest first, while slots are free.
pub(super) async fn dispatch_pending(daemon: &Arc<Daemon>) {
    let _slots = daemon.slots.lock().await;
    while slot_free(daemon) {
        let next = daemon.store.read(|table| {
            table.agents.values().filter(|a| a.state == AgentState::Pending).min_by_key(|a| a.id).cloned()
        });
        let Some(record) = next else { return };
        if let Err(err) = launch(daemon, &record).await {
            daemon.commit_logged(vec![daemon.draft(&record, could_not_start(&err))]).await;
        }
    }
}
