//! Starting the agent in its PTY, and writing its input.
//!
//! Owns: opening the PTY (raw mode for JSON-line harnesses) and spawning
//! the agent on its slave side; the stdin FIFO of `InputMode::Pipe`;
//! `corral exec-agent`, the shim that puts another stdin in place inside
//! the PTY, applies the agent's sandbox (`crate::sys::sandbox::apply`) and
//! then execs the agent (same pid); and the one thread that
//! writes the agent's input, in order. Never reaps or signals the agent
//! (the monitor's run loop and `sys::process` do).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::sys::paths::AgentDir;
use crate::wire::monitor::{InputMode, MonitorSpec};

/// What the input thread does next, in order.
pub(super) enum InputOp {
    Write(Vec<u8>),
    Close,
    /// A restarted agent's new stdin FIFO.
    Replace(File),
}

/// A started agent's PTY: the master, its two directions, and the FIFO.
pub(super) struct Pty {
    pub(super) master: Box<dyn portable_pty::MasterPty + Send>,
    /// The master again, for the output pump (its `FIONREAD` too).
    pub(super) reader: File,
    pub(super) writer: Box<dyn Write + Send>,
    /// The write end of the agent's stdin FIFO, in `InputMode::Pipe`.
    pub(super) fifo: Option<File>,
}

/// Starts `command` in a new PTY of the given size, with the spec's
/// folder and environment and stdin from `input`; returns the PTY and the
/// agent's pid.
pub(super) fn start_agent(
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
    if let Some(plan) = &spec.sandbox {
        prepare_sandbox(agent, plan)?;
    }
    // Stdin other than the PTY, and a sandbox, go through `corral
    // exec-agent`, which puts the stdin in place and applies the sandbox,
    // then execs the agent (same pid).
    let sandbox = spec.sandbox.as_ref().map(|_| sandbox_plan_path(agent));
    let (stdin, fifo) = match input {
        InputMode::Pty => (None, None),
        InputMode::Null => (Some(std::path::PathBuf::from("/dev/null")), None),
        InputMode::Pipe => {
            let path = agent.dir.join("stdin.fifo");
            let _ = std::fs::remove_file(&path);
            nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR)?;
            // Read and write: opening does not wait for the reader, and the
            // agent sees end-of-file only when the monitor closes it.
            let fifo = OpenOptions::new().read(true).write(true).open(&path)?;
            (Some(path), Some(fifo))
        }
    };
    let argv = match (&stdin, &sandbox) {
        (None, None) => command.to_vec(),
        _ => shim_argv(stdin.as_deref(), sandbox.as_deref(), command),
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
    let master_fd = pair.master.as_raw_fd().ok_or_else(|| anyhow::anyhow!("the PTY master has no descriptor"))?;
    // SAFETY: the descriptor is the master's, open while `pair.master`
    // lives (here); the clone is the reader's own (close-on-exec).
    let reader = File::from(unsafe { std::os::fd::BorrowedFd::borrow_raw(master_fd) }.try_clone_to_owned()?);
    let writer = pair.master.take_writer()?;
    Ok((Pty { master: pair.master, reader, writer, fifo }, pid))
}

/// Writes the plan where the shim reads it and makes the agent's cgroups
/// (with their limits), before each run.
fn prepare_sandbox(agent: &AgentDir, plan: &crate::sys::sandbox::Plan) -> anyhow::Result<()> {
    let path = sandbox_plan_path(agent);
    std::fs::write(&path, serde_json::to_vec(plan)?)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    for cgroup in &plan.cgroups {
        cgroup.make().map_err(|e| anyhow::anyhow!("cannot make the cgroup {}: {e}", cgroup.path.display()))?;
    }
    Ok(())
}

/// This process's own binary, as a child it forks can exec it.
pub(crate) const OWN_BINARY: &str = "/proc/self/exe";

/// Where the monitor keeps the sandbox plan the shim applies.
pub(super) fn sandbox_plan_path(agent: &AgentDir) -> std::path::PathBuf {
    agent.dir.join("sandbox.json")
}

/// The words that run a command of the daemon's for the agent in `agent`
/// (its merge gate, its exec probes: they run the agent's code) as
/// confined as the agent: none for an agent without a sandbox, else the
/// shim with the agent's plan, less its cgroups (they belong to its runs),
/// kept as `<what>-sandbox.json`. If that copy cannot be made, the plan
/// itself: the shim then applies it or, unreadable, runs nothing (exit
/// 126, saying why): never the command unconfined.
pub(crate) fn confining_shim(agent: &AgentDir, restricts: bool, what: &str) -> Vec<String> {
    let plan_path = sandbox_plan_path(agent);
    if !restricts && !plan_path.exists() {
        return Vec::new();
    }
    let own_plan = agent.dir.join(format!("{what}-sandbox.json"));
    let copied = std::fs::read(&plan_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<crate::sys::sandbox::Plan>(&bytes).ok())
        .and_then(|mut plan| {
            plan.cgroups.clear();
            std::fs::write(&own_plan, serde_json::to_vec(&plan).ok()?).ok()
        });
    let plan = if copied.is_some() { own_plan } else { plan_path };
    shim_argv(None, Some(&plan), &[])
}

fn shim_argv(stdin: Option<&Path>, sandbox: Option<&Path>, command: &[String]) -> Vec<String> {
    // The monitor's own binary, even once an upgrade has replaced the file
    // it started from (a monitor outlives daemons and upgrades, and its
    // restarts and follow-ups run the shim of its own build): the child
    // resolves the link at exec, and it is still the monitor's image then.
    let mut argv = vec![OWN_BINARY.to_string(), "exec-agent".into()];
    if let Some(stdin) = stdin {
        argv.extend(["--stdin".into(), stdin.display().to_string()]);
    }
    if let Some(sandbox) = sandbox {
        argv.extend(["--sandbox".into(), sandbox.display().to_string()]);
    }
    argv.push("--".into());
    argv.extend(command.iter().cloned());
    argv
}

/// `corral exec-agent [--stdin PATH] [--sandbox PLAN] -- COMMAND...`: runs
/// inside the PTY, opens PATH as standard input, applies the sandbox plan
/// (a JSON [`crate::sys::sandbox::Plan`]), then execs the agent in its
/// place; a sandbox it cannot apply stops it there (exit 126: the agent
/// never runs unconfined). What it says goes to the PTY, so into the
/// agent's output log, where `corral view` shows it (not to `monitor.log`).
pub fn exec_agent(stdin: Option<&Path>, sandbox: Option<&Path>, command: &[String]) -> i32 {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let Some(program) = command.first() else {
        eprintln!("corral exec-agent: no command");
        return 127;
    };
    match stdin.map(|path| (path, File::open(path))) {
        // SAFETY: dup2 onto fd 0 of this single-threaded process.
        Some((path, Ok(file))) if unsafe { libc::dup2(file.as_raw_fd(), 0) } < 0 => {
            eprintln!("corral exec-agent: cannot use {} as stdin: {}", path.display(), std::io::Error::last_os_error());
            return 127;
        }
        Some((_, Ok(_))) => {}
        Some((path, Err(err))) => {
            eprintln!("corral exec-agent: cannot open {}: {err}", path.display());
            return 127;
        }
        None => {}
    }
    if let Some(path) = sandbox {
        let plan = std::fs::read(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
            .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display())));
        if let Err(why) = plan.and_then(|plan| crate::sys::sandbox::apply(&plan)) {
            eprintln!("corral exec-agent: the sandbox cannot be applied, so the agent does not run: {why}");
            return 126;
        }
    }
    let err = std::process::Command::new(program).args(&command[1..]).exec();
    eprintln!("corral exec-agent: cannot run {program}: {err}");
    127
}

/// One thread writes the agent's input, in order, so a slow reader never
/// holds up the monitor (a stop command, say).
pub(super) fn spawn_input_writer(
    pty: Arc<Mutex<Box<dyn Write + Send>>>,
    fifo: Option<File>,
) -> std::sync::mpsc::Sender<InputOp> {
    let (tx, rx) = std::sync::mpsc::channel::<InputOp>();
    std::thread::spawn(move || {
        let mut fifo = fifo;
        let piped = fifo.is_some();
        for op in rx {
            match op {
                InputOp::Write(bytes) if piped => {
                    let Some(file) = fifo.as_mut() else {
                        tracing::warn!("input already closed; {} bytes not written", bytes.len());
                        continue;
                    };
                    if let Err(err) = file.write_all(&bytes).and_then(|()| file.flush()) {
                        tracing::warn!("cannot write the agent's input: {err}");
                    }
                }
                InputOp::Write(bytes) => {
                    let mut w = pty.lock().unwrap();
                    if let Err(err) = w.write_all(&bytes).and_then(|()| w.flush()) {
                        tracing::warn!("cannot type into the PTY: {err}");
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

/// Sets a PTY's size; the kernel tells its foreground process group.
pub(super) fn resize_master(master: &(dyn portable_pty::MasterPty + Send), rows: u16, cols: u16) -> anyhow::Result<()> {
    master.resize(portable_pty::PtySize { rows, cols, pixel_width: 0, pixel_height: 0 })
}
