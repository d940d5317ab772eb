//! Starting the agent in its PTY, and writing its input.
//!
//! Owns: opening the PTY (raw mode for JSON-line harnesses) and spawning
//! the agent on its slave side; the stdin FIFO of `InputMode::Pipe`;
//! `corral exec-agent`, the shim that puts another stdin in place inside
//! the PTY and then execs the agent (same pid); and the one thread that
//! writes the agent's input, in order. Never reaps or signals the agent
//! (the monitor's run loop and `sys::process` do).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
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
    pub(super) reader: Box<dyn Read + Send>,
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
/// What it says goes to the PTY, so into the agent's output log, where
/// `corral view` shows it (not to `monitor.log`).
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
