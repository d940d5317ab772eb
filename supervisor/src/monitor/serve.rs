//! The connections on `monitor.sock`: the daemon's (JSON lines of
//! `MonitorMessage` out, `MonitorCommand` in), an attached terminal's (raw
//! bytes both ways), and a resize. The protocol is described, as types, in
//! [`crate::wire::monitor`].
//!
//! Who may connect is the kernel's word (`SO_PEERCRED`), not the hello's:
//! the daemon role only from the daemon whose pid the state folder names
//! (it holds the daemon lock), a terminal (attach, resize) only from a
//! process outside every sandboxed agent. A sandboxed agent can reach this
//! socket (Landlock does not cover connecting), so without that it could
//! stop, thaw or admit calls for any agent, or type into its terminal.
//!
//! Owns: one thread per connection, and the PTY's size as clients set it.
//! Never starts, reaps or signals the agent: a stop goes to the monitor's
//! stop sequence, input to the input writer.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::pty::{resize_master, InputOp};
use super::{request_stop, Shared};
use crate::sys::paths::AgentDir;
use crate::wire::monitor::{Hello, MonitorCommand, MonitorMessage};

/// Accepts connections on `monitor.sock` for the monitor's life, each
/// served on its own thread and counted as a peer.
pub(super) fn spawn_acceptor(
    listener: UnixListener,
    agent: AgentDir,
    shared: Arc<Shared>,
    writer: Arc<Mutex<Box<dyn Write + Send>>>,
    input: std::sync::mpsc::Sender<InputOp>,
) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (agent, shared, writer, input) = (agent.clone(), shared.clone(), writer.clone(), input.clone());
            shared.state.lock().unwrap().peers += 1;
            std::thread::spawn(move || {
                if let Err(err) = serve_connection(stream, &agent, &shared, &writer, input) {
                    if err.kind() != std::io::ErrorKind::BrokenPipe {
                        tracing::warn!("connection ended: {err}");
                    }
                }
                shared.state.lock().unwrap().peers -= 1;
                shared.changed.notify_all();
            });
        }
    });
}

fn serve_connection(
    stream: UnixStream,
    agent: &AgentDir,
    shared: &Arc<Shared>,
    writer: &Arc<Mutex<Box<dyn Write + Send>>>,
    input: std::sync::mpsc::Sender<InputOp>,
) -> std::io::Result<()> {
    let mut lines = BufReader::new(stream.try_clone()?);
    let mut first = String::new();
    lines.read_line(&mut first)?;
    let hello: Hello = serde_json::from_str(&first).map_err(std::io::Error::other)?;
    let peer =
        nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials).ok().map(|c| c.pid() as u32);
    if let Err(why) = admit_peer(&hello.role, peer, agent) {
        tracing::warn!("refused a {} connection: {why}", hello.role);
        return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, why));
    }
    match hello.role.as_str() {
        "daemon" => serve_daemon(stream, lines, shared, input),
        "attach" => {
            if let (Some(rows), Some(cols)) = (hello.rows, hello.cols) {
                resize(shared, rows, cols);
            }
            serve_attach(stream, lines, agent, shared, writer, hello.replay)
        }
        "resize" => match (hello.rows, hello.cols) {
            (Some(rows), Some(cols)) => {
                resize(shared, rows, cols);
                Ok(())
            }
            _ => Err(std::io::Error::other("a resize needs rows and cols")),
        },
        other => Err(std::io::Error::other(format!("unknown role {other:?}"))),
    }
}

/// Whether the process `peer` may take `role` on this monitor's socket.
fn admit_peer(role: &str, peer: Option<u32>, agent: &AgentDir) -> Result<(), String> {
    let Some(peer) = peer else { return Err("the kernel does not say who connected".into()) };
    match role {
        "daemon" => {
            // `<state>/agents/<id>`: the daemon's pid file is in `<state>`.
            let pid_file = agent.dir.parent().and_then(std::path::Path::parent).map(|s| s.join("daemon.pid"));
            let daemon = pid_file.and_then(|f| std::fs::read_to_string(f).ok()).and_then(|p| p.trim().parse().ok());
            match daemon == Some(peer) {
                true => Ok(()),
                false => Err(format!("process {peer} is not the daemon ({daemon:?})")),
            }
        }
        _ => match sandboxed_ancestor(peer) {
            None => Ok(()),
            Some(why) => Err(why),
        },
    }
}

/// Why `pid` counts as inside a sandboxed agent, if it does: one of its
/// ancestors (itself included) is the monitor (`corral monitor DIR`) of an
/// agent with a sandbox plan in DIR, or the chain up cannot be followed (a
/// guard fails closed). A process that only looks like a monitor makes its
/// descendants more confined, never less.
fn sandboxed_ancestor(pid: u32) -> Option<String> {
    let sandboxed_monitor = |at: u32| {
        let cmdline = std::fs::read(format!("/proc/{at}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let [_, b"monitor", dir, ..] = args.as_slice() else { return None };
        let dir = AgentDir { dir: std::path::PathBuf::from(std::ffi::OsStr::from_bytes(dir)) };
        super::pty::sandbox_plan_path(&dir).exists().then_some(dir)
    };
    match crate::sys::sandbox::confine::first_ancestor(pid, sandboxed_monitor) {
        Ok(None) => None,
        Ok(Some(dir)) => Some(format!("process {pid} runs inside the sandboxed agent of {}", dir.dir.display())),
        Err(why) => Some(why),
    }
}

fn serve_daemon(
    mut stream: UnixStream,
    lines: BufReader<UnixStream>,
    shared: &Arc<Shared>,
    input: std::sync::mpsc::Sender<InputOp>,
) -> std::io::Result<()> {
    // Commands arrive on their own thread; this one reports.
    let shared_in = shared.clone();
    std::thread::spawn(move || {
        for line in lines.lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<MonitorCommand>(&line) {
                Ok(MonitorCommand::Stop { grace_secs, probe_failed }) => {
                    request_stop(&shared_in, grace_secs, probe_failed)
                }
                Ok(MonitorCommand::Input { data, id }) => {
                    let fresh = id.is_none_or(|id| shared_in.state.lock().unwrap().inputs_seen.insert(id));
                    if fresh {
                        let _ = input.send(InputOp::Write(data.into_bytes()));
                    }
                }
                Ok(MonitorCommand::CloseInput) => {
                    let _ = input.send(InputOp::Close);
                }
                Ok(MonitorCommand::Admission { call, decision: crate::proxy::Decision::Hold { message } }) => {
                    // The ask stays: a daemon that connects meanwhile decides it again.
                    tracing::info!("call {call} held: {message}");
                    shared_in.state.lock().unwrap().held_calls.insert(call);
                }
                Ok(MonitorCommand::Freeze) => super::freeze(&shared_in, true),
                Ok(MonitorCommand::Thaw) => super::freeze(&shared_in, false),
                Ok(MonitorCommand::Admission { call, decision }) => {
                    let mut state = shared_in.state.lock().unwrap();
                    state.held_calls.remove(&call);
                    let ask = state.asks.remove(&call);
                    if let (Some(ask), crate::proxy::Decision::Allow { max_output }) = (ask, &decision) {
                        state.admitted.insert(call, super::AdmittedCall { ask, max_output: *max_output });
                    }
                    if let Some(waiter) = state.admission_waiters.remove(&call) {
                        let _ = waiter.send(decision);
                    }
                }
                Ok(MonitorCommand::Then { command, tag }) => {
                    let mut state = shared_in.state.lock().unwrap();
                    if !state.accepting {
                        tracing::warn!("the agent has ended; follow-up {tag} not run");
                    } else if state.tags_seen.insert(tag.clone()) {
                        state.follow_ups.push_back((command, tag));
                    }
                }
                Ok(MonitorCommand::Hold { hold }) => {
                    let mut state = shared_in.state.lock().unwrap();
                    state.held = hold;
                    shared_in.changed.notify_all();
                }
                Err(err) => tracing::warn!("bad command {line:?}: {err}"),
            }
        }
    });
    let mut sent_len;
    let mut sent_generation;
    let mut sent_restart;
    // Every call recorded so far goes to each daemon that connects (it
    // journals each once), and every ask still unanswered.
    let mut sent_calls = 0;
    let mut sent_asks = 0;
    let mut asked: std::collections::HashSet<u64> = std::collections::HashSet::new();
    {
        let state = shared.state.lock().unwrap();
        sent_len = state.log_len;
        sent_generation = state.generation;
        sent_restart = state.restart_generation;
        let status = MonitorMessage::Status {
            pid: state.pid,
            monitor_pid: std::process::id(),
            log_len: state.log_len,
            exit: state.exit.clone(),
        };
        let admitted: Vec<_> = state.admitted.values().cloned().collect();
        drop(state);
        send(&mut stream, &status)?;
        // Calls an earlier daemon admitted that are still under way.
        for super::AdmittedCall { ask, max_output } in admitted {
            send(&mut stream, &MonitorMessage::Admitted { ask, max_output })?;
        }
    }
    let mut pace = OutputPace::new();
    loop {
        let state = shared.state.lock().unwrap();
        let state = shared.wait_for_output(state, |s| {
            s.log_len == sent_len
                && s.exit.is_none()
                && s.generation == sent_generation
                && s.restart_generation == sent_restart
                && s.calls.len() == sent_calls
                && s.asks_generation == sent_asks
        });
        // A flood of output is told in batches (see `OutputPace`), so the
        // daemon reads the log in large pieces rather than waking for
        // every read of the PTY. A model call's admission, its record and
        // the exit are never held back by it.
        let wait = pace.wait(Instant::now());
        let state = if state.log_len != sent_len && !wait.is_zero() {
            shared
                .changed
                .wait_timeout_while(state, wait, |s| {
                    s.exit.is_none() && s.calls.len() == sent_calls && s.asks_generation == sent_asks
                })
                .unwrap()
                .0
        } else {
            state
        };
        let calls: Vec<_> = state.calls[sent_calls..].to_vec();
        sent_calls = state.calls.len();
        let asks: Vec<_> = state.asks.values().filter(|a| !asked.contains(&a.call)).cloned().collect();
        sent_asks = state.asks_generation;
        let (log_len, exit) = (state.log_len, state.exit.clone());
        let started = (state.generation != sent_generation).then(|| (state.pid, state.tag.clone()));
        let restarting = (state.restart_generation != sent_restart).then(|| state.restart_note.clone()).flatten();
        sent_generation = state.generation;
        sent_restart = state.restart_generation;
        drop(state);
        // Output first: it was written before the restart or the new run.
        if log_len != sent_len {
            sent_len = log_len;
            pace.sent(Instant::now());
            send(&mut stream, &MonitorMessage::Output { log_len })?;
        }
        if let Some(note) = restarting {
            send(&mut stream, &note)?;
        }
        if let Some((pid, tag)) = started {
            send(&mut stream, &MonitorMessage::Started { pid, tag })?;
        }
        for record in calls {
            send(&mut stream, &MonitorMessage::ModelCall { record })?;
        }
        for ask in asks {
            asked.insert(ask.call);
            send(&mut stream, &MonitorMessage::Admit { ask })?;
        }
        if let Some(record) = exit {
            send(&mut stream, &MonitorMessage::Exit { record })?;
            return Ok(());
        }
    }
}

/// Sets the PTY's size, now and for any PTY a restart opens. A zero size
/// (a client that could not read its terminal's) is ignored.
fn resize(shared: &Shared, rows: u16, cols: u16) {
    if rows == 0 || cols == 0 {
        return;
    }
    let mut control = shared.pty.lock().unwrap();
    control.rows = rows;
    control.cols = cols;
    if let Some(master) = &control.master {
        if let Err(err) = resize_master(master.as_ref(), rows, cols) {
            tracing::warn!("cannot resize the PTY to {rows}x{cols}: {err}");
        }
    }
}

/// When the next `output` message may go to the daemon. The first after
/// a quiet spell goes at once, so an agent's line reaches its event in a
/// millisecond or two. While output keeps coming, the gap doubles, up to
/// [`FLOOD_OUTPUT_EVERY`]: a flood is told about 40 times a second, not
/// a thousand. Each message wakes this thread and the daemon, and on two
/// cores those wake-ups slowed an agent's flood through its PTY by about
/// a tenth.
struct OutputPace {
    /// When the last message went (none yet: the first goes at once).
    last: Option<Instant>,
    gap: Duration,
}

/// The shortest time between two `output` messages to the daemon.
const OUTPUT_EVERY: Duration = Duration::from_millis(1);
/// The longest, in a flood.
const FLOOD_OUTPUT_EVERY: Duration = Duration::from_millis(25);

impl OutputPace {
    fn new() -> OutputPace {
        OutputPace { last: None, gap: OUTPUT_EVERY }
    }

    /// How long output that came at `now` waits before it is told.
    fn wait(&self, now: Instant) -> Duration {
        self.last.map_or(Duration::ZERO, |last| self.gap.saturating_sub(now.saturating_duration_since(last)))
    }

    /// An `output` message went at `now`: output that kept coming within
    /// twice the gap is a flood, and the gap doubles; after a longer quiet
    /// spell it starts again at [`OUTPUT_EVERY`].
    fn sent(&mut self, now: Instant) {
        let flood = self.last.is_some_and(|last| now.saturating_duration_since(last) <= 2 * self.gap);
        self.gap = if flood { (2 * self.gap).min(FLOOD_OUTPUT_EVERY) } else { OUTPUT_EVERY };
        self.last = Some(now);
    }
}

fn send(stream: &mut UnixStream, message: &MonitorMessage) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)
}

fn serve_attach(
    mut stream: UnixStream,
    mut input: BufReader<UnixStream>,
    agent: &AgentDir,
    shared: &Arc<Shared>,
    writer: &Arc<Mutex<Box<dyn Write + Send>>>,
    replay: u64,
) -> std::io::Result<()> {
    let writer = writer.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match input.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut w = writer.lock().unwrap();
                    if w.write_all(&buf[..n]).and_then(|()| w.flush()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut log = File::open(agent.log())?;
    let mut offset = shared.state.lock().unwrap().log_len.saturating_sub(replay);
    log.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let (len, done) = {
            let state = shared.state.lock().unwrap();
            let state = shared.wait_for_output(state, |s| s.log_len == offset && s.exit.is_none());
            (state.log_len, state.exit.is_some())
        };
        while offset < len {
            let want = ((len - offset) as usize).min(buf.len());
            let n = log.read(&mut buf[..want])?;
            if n == 0 {
                break;
            }
            stream.write_all(&buf[..n])?;
            offset += n as u64;
        }
        if done && offset >= len {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_after_a_quiet_spell_is_told_at_once_and_a_flood_in_ever_fewer_messages() {
        let start = Instant::now();
        let ms = |n: u64| start + Duration::from_millis(n);
        let mut pace = OutputPace::new();
        assert_eq!(pace.wait(start), Duration::ZERO, "the first output waits");

        // Output that never stops: each message goes when its gap is over.
        let mut at = 0;
        let mut gaps = Vec::new();
        pace.sent(ms(at));
        for _ in 0..8 {
            let wait = pace.wait(ms(at));
            gaps.push(wait.as_millis() as u64);
            at += wait.as_millis() as u64;
            pace.sent(ms(at));
        }
        assert_eq!(gaps, [1, 2, 4, 8, 16, 25, 25, 25], "the gaps in a flood");

        // A line after a quiet spell goes at once, and so does the next one
        // after another quiet spell: the gap starts again at a millisecond.
        at += 200;
        assert_eq!(pace.wait(ms(at)), Duration::ZERO);
        pace.sent(ms(at));
        at += 100;
        assert_eq!(pace.wait(ms(at)), Duration::ZERO);
        pace.sent(ms(at));
        assert_eq!(pace.wait(ms(at)), OUTPUT_EVERY, "the gap did not start again");
    }
}
