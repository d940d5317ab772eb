//! The monitor: one small process per agent, like conmon beside CRI-O.
//!
//! It owns the agent's PTY master, appends everything the agent prints to
//! `output.log`, takes input and commands on `monitor.sock`, reaps the
//! agent, and writes the exit record (`exit.json`) before it goes. It runs
//! in its own session and does not depend on the daemon: when the daemon
//! dies, the agent keeps running, its output keeps reaching the log, and
//! its real exit status waits in `exit.json` for the next daemon.
//!
//! The monitor is a child subreaper, so descendants that escape the agent's
//! process group with `setsid` become its children when their parent dies;
//! `process::descendants` finds the rest. The agent has ended when none of
//! its processes is left, never before.
//!
//! Socket protocol: the peer sends one JSON line saying what it is:
//! - `{"role":"daemon"}`: the monitor sends JSON lines `status` (at once),
//!   `output` (the log grew) and `exit` (the agent's last process is gone);
//!   the daemon may send `{"t":"stop","grace_secs":N}` and
//!   `{"t":"input","data":"text"}`.
//! - `{"role":"attach","replay":BYTES,"rows":R,"cols":C}`: raw bytes both
//!   ways: the last BYTES of the log then everything new, and keystrokes
//!   into the PTY. `rows` and `cols` (optional, both or neither) are the
//!   client's terminal size, applied to the PTY before anything else.
//! - `{"role":"resize","rows":R,"cols":C}`: sets the PTY's size (the
//!   kernel sends SIGWINCH to the agent's foreground process group), then
//!   the monitor closes the connection. The attach stream is raw bytes
//!   with no framing, so an attached client opens one of these on each
//!   change of its terminal's size, one at a time, waiting for the close.
//!
//! The PTY starts at the spec's size (`rows`, `cols`); a restart or a
//! follow-up gets the latest size set by a client.
//!
//! Plain threads, no async runtime: a monitor is idle almost always, and a
//! hundred of them should cost little memory.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::restart::{RestartSpec, RestartState, RunEnd};
use crate::sys::paths::AgentDir;
use crate::sys::process;

/// What the monitor runs. Written by the daemon to `spec.json` (mode 0600:
/// the environment may hold API keys).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MonitorSpec {
    pub command: Vec<String>,
    pub cwd: PathBuf,
    pub env: BTreeMap<String, String>,
    /// Raw mode, no echo: for harnesses that speak JSON lines over the PTY.
    #[serde(default)]
    pub raw: bool,
    /// Where the agent's standard input comes from.
    #[serde(default)]
    pub input: InputMode,
    /// Written to the agent's input as soon as it starts (a task given as
    /// the first message).
    #[serde(default)]
    pub first_input: Option<String>,
    /// What to do when the agent's process ends.
    #[serde(default)]
    pub restart: RestartSpec,
    pub rows: u16,
    pub cols: u16,
}

/// Where an agent's standard input comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputMode {
    /// The PTY, like a terminal.
    #[default]
    Pty,
    /// A FIFO (`stdin.fifo`) the monitor writes to and can close, so the
    /// agent sees the end of its input.
    Pipe,
    /// `/dev/null`.
    Null,
}

impl From<corral_harness::launch::Input> for InputMode {
    fn from(input: corral_harness::launch::Input) -> InputMode {
        match input {
            corral_harness::launch::Input::Pty => InputMode::Pty,
            corral_harness::launch::Input::Pipe => InputMode::Pipe,
            corral_harness::launch::Input::Null => InputMode::Null,
        }
    }
}

/// How the agent ended. Written once, atomically, to `exit.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub pid: u32,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stop_requested: bool,
    /// Set when the agent could not be started at all.
    pub error: Option<String>,
    pub ended_at: DateTime<Utc>,
}

/// Messages from the monitor to the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum MonitorMessage {
    Status {
        pid: u32,
        monitor_pid: u32,
        log_len: u64,
        exit: Option<ExitRecord>,
    },
    Output {
        log_len: u64,
    },
    /// The agent ended and will run again after `backoff_secs`.
    Restarting {
        count: u32,
        reason: String,
        backoff_secs: f64,
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// A new process of the agent started (a follow-up, with its tag).
    Started {
        pid: u32,
        tag: Option<String>,
    },
    Exit {
        record: ExitRecord,
    },
}

/// Commands from the daemon to the monitor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum MonitorCommand {
    /// Stop the agent. With `probe_failed`, the stop counts as a failure
    /// for the restart policy (a liveness or startup probe failed);
    /// otherwise it is final.
    Stop {
        grace_secs: f64,
        #[serde(default)]
        probe_failed: bool,
    },
    /// Write to the agent's input. A message carries its id: one the
    /// monitor has written before (a restarted daemon redelivering what it
    /// had not yet journaled as delivered) is dropped, so each message
    /// arrives once.
    Input {
        data: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
    /// Close the agent's input (a FIFO): it will read end-of-file.
    CloseInput,
    /// Run this command after the agent's current process ends (stdin from
    /// `/dev/null`); `tag` comes back in the `started` message. A tag seen
    /// before is ignored, and nothing is queued once the monitor finishes.
    Then { command: Vec<String>, tag: String },
}

/// What the input thread does next, in order.
enum InputOp {
    Write(Vec<u8>),
    Close,
    /// A restarted agent's new stdin FIFO.
    Replace(File),
}

#[derive(Debug, Deserialize)]
struct Hello {
    role: String,
    #[serde(default)]
    replay: u64,
    #[serde(default)]
    rows: Option<u16>,
    #[serde(default)]
    cols: Option<u16>,
}

/// The agent's PTY master, kept where connections can resize it, and the
/// size it has (or the next one gets).
struct PtyControl {
    master: Option<Box<dyn portable_pty::MasterPty + Send>>,
    rows: u16,
    cols: u16,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    pty: Mutex<PtyControl>,
}

struct State {
    pid: u32,
    log_len: u64,
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
    /// Ids of the messages written to the agent's input.
    inputs_seen: std::collections::HashSet<String>,
    /// The current run is being stopped because a probe failed.
    probe_failed: bool,
    /// Stop sequences still running; a new run waits for them, so no
    /// stop meant for one run can reach the next.
    stopping: usize,
    /// The latest restart, and how many so far (the daemon is told of each).
    restart_note: Option<MonitorMessage>,
    restart_generation: u64,
}

/// Runs the monitor for the agent in `dir` until the agent has ended.
pub fn run(dir: &Path) -> anyhow::Result<()> {
    let agent = AgentDir { dir: dir.to_path_buf() };
    let spec: MonitorSpec = serde_json::from_slice(
        &std::fs::read(agent.spec()).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", agent.spec().display()))?,
    )?;
    process::become_subreaper()?;
    let me = std::process::id();
    std::fs::write(agent.monitor_pid(), me.to_string())?;

    let _ = std::fs::remove_file(agent.socket());
    let listener = UnixListener::bind(agent.socket())?;
    let mut log = OpenOptions::new().create(true).append(true).open(agent.log())?;
    let initial_len = log.seek(SeekFrom::End(0))?;

    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            pid: 0,
            log_len: initial_len,
            output_closed: false,
            stop_requested: false,
            exit: None,
            peers: 0,
            generation: 0,
            tag: None,
            follow_ups: std::collections::VecDeque::new(),
            tags_seen: std::collections::HashSet::new(),
            accepting: true,
            inputs_seen: std::collections::HashSet::new(),
            probe_failed: false,
            stopping: 0,
            restart_note: None,
            restart_generation: 0,
        }),
        changed: Condvar::new(),
        pty: Mutex::new(PtyControl { master: None, rows: spec.rows, cols: spec.cols }),
    });

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
    let (pid, code, signal) = loop {
        if !first {
            let state = shared.state.lock().unwrap();
            drop(shared.changed.wait_while(state, |s| s.stopping > 0).unwrap());
        }
        let run_started = Instant::now();
        let size = {
            let control = shared.pty.lock().unwrap();
            (control.rows, control.cols)
        };
        let (pty, pid) = match start_agent(&spec, &agent, &argv, input_mode, size) {
            Ok(started) => started,
            Err(err) => {
                // Nothing ran: record why, in the log too, so `corral view` shows it.
                note(&shared, &mut log, &format!("corral: cannot start {argv:?}: {err}"));
                let record = ExitRecord {
                    pid: 0,
                    code: Some(127),
                    signal: None,
                    stop_requested: false,
                    error: first.then(|| err.to_string()),
                    ended_at: Utc::now(),
                };
                write_exit_record(&agent, &record)?;
                finish(&shared, &agent, listener, record, Duration::from_millis(500));
                return Ok(());
            }
        };
        {
            let mut state = shared.state.lock().unwrap();
            state.pid = pid;
            state.output_closed = false;
            state.generation += 1;
            state.tag = tag.take();
            shared.changed.notify_all();
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
            spawn_acceptor(listener.try_clone()?, agent.clone(), shared.clone(), writer.clone(), sender.clone());
            spawn_signal_watcher(shared.clone());
            input = Some(sender);
            first = false;
        } else if let (Some(fifo), Some(sender)) = (pty.fifo, &input) {
            let _ = sender.send(InputOp::Replace(fifo));
        }
        // A run of the spec's own command (first or restarted) gets the task.
        if let (Some(text), Some(sender), true) = (&spec.first_input, &input, argv == spec.command) {
            let _ = sender.send(InputOp::Write(text.clone().into_bytes()));
        }
        spawn_output_pump(pty.reader, log.try_clone()?, shared.clone());

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
        // A follow-up runs unless a stop was asked for; once the monitor
        // decides to finish, it takes no more.
        if !state.stop_requested {
            if let Some((command, next_tag)) = state.follow_ups.pop_front() {
                argv = command;
                input_mode = InputMode::Null;
                tag = Some(next_tag);
                continue;
            }
        }
        // Then the restart policy.
        let end = if std::mem::take(&mut state.probe_failed) {
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
        if state.stop_requested {
            state.accepting = false;
            break (pid, code, signal);
        }
        argv = spec.command.clone();
        input_mode = spec.input;
    };
    let record = ExitRecord {
        pid,
        code,
        signal,
        stop_requested: shared.state.lock().unwrap().stop_requested,
        error: None,
        ended_at: Utc::now(),
    };
    write_exit_record(&agent, &record)?;
    finish(&shared, &agent, listener, record, Duration::from_secs(2));
    Ok(())
}

struct Pty {
    master: Box<dyn portable_pty::MasterPty + Send>,
    reader: Box<dyn Read + Send>,
    writer: Box<dyn Write + Send>,
    /// The write end of the agent's stdin FIFO, in `InputMode::Pipe`.
    fifo: Option<File>,
}

fn start_agent(
    spec: &MonitorSpec,
    agent: &AgentDir,
    command: &[String],
    input: InputMode,
    (rows, cols): (u16, u16),
) -> anyhow::Result<(Pty, u32)> {
    use portable_pty::{CommandBuilder, PtySize};
    if command.is_empty() {
        anyhow::bail!("empty command");
    }
    // Stdin other than the PTY goes through `corral exec-agent`, which puts
    // it in place and then execs the agent (same pid).
    let (argv, fifo) = match input {
        InputMode::Pty => (command.to_vec(), None),
        InputMode::Null => (shim_argv(Path::new("/dev/null"), command)?, None),
        InputMode::Pipe => {
            let path = agent.dir.join("stdin.fifo");
            let _ = std::fs::remove_file(&path);
            nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR)?;
            // Read and write: opening does not wait for the reader, and the
            // agent sees end-of-file only when the monitor closes it.
            let fifo = OpenOptions::new().read(true).write(true).open(&path)?;
            (shim_argv(&path, command)?, Some(fifo))
        }
    };
    let program = &argv[0];
    let pair = portable_pty::native_pty_system().openpty(PtySize { rows, cols, pixel_width: 0, pixel_height: 0 })?;
    if spec.raw {
        if let Some(fd) = pair.master.as_raw_fd() {
            make_raw(fd)?;
        }
    }
    let mut command = CommandBuilder::new(program);
    command.args(&argv[1..]);
    command.cwd(&spec.cwd);
    command.env_clear();
    for (key, value) in &spec.env {
        command.env(key, value);
    }
    let child = pair.slave.spawn_command(command)?;
    let pid = child.process_id().ok_or_else(|| anyhow::anyhow!("the agent has no pid"))?;
    // The monitor reaps with waitpid(-1); the handle must not wait too.
    std::mem::forget(child);
    drop(pair.slave);
    let reader = pair.master.try_clone_reader()?;
    let writer = pair.master.take_writer()?;
    Ok((Pty { master: pair.master, reader, writer, fifo }, pid))
}

fn shim_argv(stdin: &Path, command: &[String]) -> anyhow::Result<Vec<String>> {
    let exe = std::env::current_exe()?;
    let mut argv = vec![exe.display().to_string(), "exec-agent".into(), "--stdin".into(), stdin.display().to_string()];
    argv.push("--".into());
    argv.extend(command.iter().cloned());
    Ok(argv)
}

/// `corral exec-agent --stdin PATH -- COMMAND...`: runs inside the PTY,
/// opens PATH as standard input, then execs the agent in its place.
pub fn exec_agent(stdin: &Path, command: &[String]) -> i32 {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let Some(program) = command.first() else {
        eprintln!("corral exec-agent: no command");
        return 127;
    };
    match File::open(stdin) {
        Ok(file) => {
            // SAFETY: dup2 onto fd 0 of this single-threaded process.
            if unsafe { libc::dup2(file.as_raw_fd(), 0) } < 0 {
                eprintln!(
                    "corral exec-agent: cannot use {} as stdin: {}",
                    stdin.display(),
                    std::io::Error::last_os_error()
                );
                return 127;
            }
        }
        Err(err) => {
            eprintln!("corral exec-agent: cannot open {}: {err}", stdin.display());
            return 127;
        }
    }
    let err = std::process::Command::new(program).args(&command[1..]).exec();
    eprintln!("corral exec-agent: cannot run {program}: {err}");
    127
}

/// One thread writes the agent's input, in order, so a slow reader never
/// holds up the monitor (a stop command, say).
fn spawn_input_writer(pty: Arc<Mutex<Box<dyn Write + Send>>>, fifo: Option<File>) -> std::sync::mpsc::Sender<InputOp> {
    let (tx, rx) = std::sync::mpsc::channel::<InputOp>();
    std::thread::spawn(move || {
        let mut fifo = fifo;
        let piped = fifo.is_some();
        for op in rx {
            match op {
                InputOp::Write(bytes) if piped => {
                    let Some(file) = fifo.as_mut() else {
                        eprintln!("corral monitor: input already closed; {} bytes not written", bytes.len());
                        continue;
                    };
                    if let Err(err) = file.write_all(&bytes).and_then(|()| file.flush()) {
                        eprintln!("corral monitor: cannot write the agent's input: {err}");
                    }
                }
                InputOp::Write(bytes) => {
                    let mut w = pty.lock().unwrap();
                    if let Err(err) = w.write_all(&bytes).and_then(|()| w.flush()) {
                        eprintln!("corral monitor: cannot type into the PTY: {err}");
                    }
                }
                InputOp::Close => fifo = None,
                InputOp::Replace(file) => fifo = Some(file),
            }
        }
    });
    tx
}

/// Raw mode without echo, so JSON lines pass through the PTY unchanged in
/// both directions and input lines are not capped at 4095 bytes.
fn make_raw(fd: std::os::fd::RawFd) -> anyhow::Result<()> {
    use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
    // SAFETY: the fd belongs to the PTY master, open for the monitor's life.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let mut termios = tcgetattr(fd)?;
    cfmakeraw(&mut termios);
    tcsetattr(fd, SetArg::TCSANOW, &termios)?;
    Ok(())
}

/// Writes a line of the monitor's own into the agent's log (a restart, a
/// failed start), counted like output so readers see everything up to it.
fn note(shared: &Shared, log: &mut File, line: &str) {
    let line = format!("{line}\r\n");
    if log.write_all(line.as_bytes()).is_ok() {
        shared.state.lock().unwrap().log_len += line.len() as u64;
        shared.changed.notify_all();
    }
}

/// Copies PTY output into the log, byte for byte, and tells waiters.
fn spawn_output_pump(mut reader: Box<dyn Read + Send>, mut log: File, shared: Arc<Shared>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if let Err(err) = log.write_all(&buf[..n]) {
                        eprintln!("corral monitor: cannot write the output log: {err}");
                    }
                    let mut state = shared.state.lock().unwrap();
                    state.log_len += n as u64;
                    shared.changed.notify_all();
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break, // EIO: every holder of the PTY's other side is gone.
            }
        }
        let _ = log.sync_data();
        shared.state.lock().unwrap().output_closed = true;
        shared.changed.notify_all();
    });
}

fn spawn_acceptor(
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
                        eprintln!("corral monitor: connection ended: {err}");
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
                Ok(MonitorCommand::Then { command, tag }) => {
                    let mut state = shared_in.state.lock().unwrap();
                    if !state.accepting {
                        eprintln!("corral monitor: the agent has ended; follow-up {tag} not run");
                    } else if state.tags_seen.insert(tag.clone()) {
                        state.follow_ups.push_back((command, tag));
                    }
                }
                Err(err) => eprintln!("corral monitor: bad command {line:?}: {err}"),
            }
        }
    });
    let mut sent_len;
    let mut sent_generation;
    let mut sent_restart;
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
        drop(state);
        send(&mut stream, &status)?;
    }
    loop {
        let state = shared.state.lock().unwrap();
        let state = shared
            .changed
            .wait_while(state, |s| {
                s.log_len == sent_len
                    && s.exit.is_none()
                    && s.generation == sent_generation
                    && s.restart_generation == sent_restart
            })
            .unwrap();
        let (log_len, exit) = (state.log_len, state.exit.clone());
        let started = (state.generation != sent_generation).then(|| (state.pid, state.tag.clone()));
        let restarting = (state.restart_generation != sent_restart).then(|| state.restart_note.clone()).flatten();
        sent_generation = state.generation;
        sent_restart = state.restart_generation;
        drop(state);
        // Output first: it was written before the restart or the new run.
        if log_len != sent_len {
            sent_len = log_len;
            send(&mut stream, &MonitorMessage::Output { log_len })?;
        }
        if let Some(note) = restarting {
            send(&mut stream, &note)?;
        }
        if let Some((pid, tag)) = started {
            send(&mut stream, &MonitorMessage::Started { pid, tag })?;
        }
        if log_len != sent_len {
            sent_len = log_len;
            send(&mut stream, &MonitorMessage::Output { log_len })?;
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
            eprintln!("corral monitor: cannot resize the PTY to {rows}x{cols}: {err}");
        }
    }
}

fn resize_master(master: &(dyn portable_pty::MasterPty + Send), rows: u16, cols: u16) -> anyhow::Result<()> {
    master.resize(portable_pty::PtySize { rows, cols, pixel_width: 0, pixel_height: 0 })
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
            let state = shared.changed.wait_while(state, |s| s.log_len == offset && s.exit.is_none()).unwrap();
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
        }
        state.stopping += 1;
        shared.changed.notify_all();
        state.pid
    };
    // Whatever the daemon sent, never panic here: a stop that cannot run is
    // an agent nobody can stop. Out of range means "as long as allowed".
    let grace = Duration::try_from_secs_f64(grace_secs.max(0.0))
        .unwrap_or(Duration::from_secs(crate::model::duration::MAX_DURATION_SECS))
        .min(Duration::from_secs(crate::model::duration::MAX_DURATION_SECS));
    let shared = shared.clone();
    std::thread::spawn(move || {
        process::stop_tree(std::process::id(), Some(pid), grace, Duration::from_secs(10));
        shared.state.lock().unwrap().stopping -= 1;
        shared.changed.notify_all();
    });
}

fn spawn_signal_watcher(shared: Arc<Shared>) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) else { return };
    std::thread::spawn(move || {
        // A monitor told to go stops its agent first, with the default grace.
        if signals.forever().next().is_some() {
            request_stop(&shared, 10.0, false);
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
