//! The client side of the protocol: finding, starting and talking to the
//! repository's daemon.
//!
//! Any command starts the daemon when none answers: it runs `corral daemon`
//! in a new session with its output in `daemon.log`, and waits for the
//! socket. Two clients racing to start it are fine: the daemon lock lets
//! one win and the other exits at once.

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::model::error::{Error, ErrorKind, Result};
use crate::model::lifecycle::AgentRecord;
use crate::sys::paths::StateDir;
use crate::wire::protocol::{read_frame, write_frame, Request, Response, PROTOCOL_VERSION};

const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Client {
    stream: UnixStream,
}

/// Refuses a state folder or socket that belongs to another user: talking
/// to someone else's daemon would run agents with their rights.
pub fn check_owner(state: &StateDir) -> Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    for path in [state.dir.clone(), state.socket()] {
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            if meta.uid() != me {
                return Err(Error::new(
                    ErrorKind::NotOwner,
                    format!(
                        "{} is owned by uid {}, not by you (uid {me}); corral will not use another user's daemon",
                        path.display(),
                        meta.uid()
                    ),
                ));
            }
        }
    }
    Ok(())
}

impl Client {
    /// Connects to the daemon, starting it if none runs.
    pub fn connect(state: &StateDir) -> Result<Client> {
        check_owner(state)?;
        if let Ok((mut client, (build, stamp))) = Client::try_connect(state) {
            // The same binary file is the same build; else compare builds.
            let same_file = !stamp.is_empty() && stamp == crate::wire::protocol::binary_stamp();
            if same_file || build == crate::wire::protocol::build_id() {
                return Ok(client);
            }
            // This process runs a binary that was replaced since it started
            // (a long `corral mcp` or run driver across an upgrade): the
            // daemon is likely the newer build, and it speaks our protocol
            // (the hello passed). Replacing it would start the old build
            // again, or nothing, once for every request.
            if replaced_since_started() {
                return Ok(client);
            }
            // A daemon of another build (corral was upgraded or rebuilt):
            // replace it. Agents keep running and the new daemon adopts them.
            let old = std::fs::read_to_string(state.pid_file()).ok().and_then(|p| p.trim().parse::<i32>().ok());
            let _ = client.request(&Request::Shutdown);
            drop(client);
            let deadline = Instant::now() + DAEMON_START_TIMEOUT;
            while Client::try_connect(state).is_ok() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            // It holds the daemon lock until it has exited, a little after
            // its socket goes: a daemon started before then would lose the
            // lock and leave none serving.
            let exited = |pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err();
            while old.is_some_and(|pid| pid > 0 && !exited(pid)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        state.create()?;
        check_owner(state)?;
        start_daemon(state)?;
        let deadline = Instant::now() + DAEMON_START_TIMEOUT;
        loop {
            match Client::try_connect(state) {
                Ok((client, _)) => return Ok(client),
                Err(err) if err.kind == ErrorKind::Other && err.message.starts_with("this daemon speaks") => {
                    return Err(err)
                }
                Err(err) if Instant::now() > deadline => {
                    let log = std::fs::read_to_string(state.daemon_log()).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(5).collect();
                    return Err(Error::new(
                        ErrorKind::DaemonUnavailable,
                        format!(
                            "the daemon did not answer on {} within {} s ({err}); its log says: {}",
                            state.socket().display(),
                            DAEMON_START_TIMEOUT.as_secs(),
                            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                        ),
                    ));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// Connects to a running daemon; never starts one.
    pub fn connect_existing(state: &StateDir) -> Result<Client> {
        check_owner(state)?;
        Client::try_connect(state).map(|(client, _)| client)
    }

    /// Connects and says hello; returns the daemon's build and stamp.
    fn try_connect(state: &StateDir) -> Result<(Client, (String, String))> {
        let stream = UnixStream::connect(state.socket())
            .map_err(|e| Error::new(ErrorKind::DaemonUnavailable, format!("{}: {e}", state.socket().display())))?;
        let mut client = Client { stream };
        match client.request(&Request::Hello { version: PROTOCOL_VERSION })? {
            Response::Hello { build, stamp, .. } => Ok((client, (build, stamp))),
            other => Err(Error::other(format!("unexpected answer to hello: {other:?}"))),
        }
    }

    /// Sends a request and reads one response; a `Response::Error` becomes `Err`.
    pub fn request(&mut self, request: &Request) -> Result<Response> {
        write_frame(&mut self.stream, request).map_err(not_sent)?;
        self.receive()?.ok_or_else(|| lost(&"the daemon closed the connection"))
    }

    /// Every agent a list names, page after page (see [`list_with`]).
    pub fn list(&mut self, all: bool, recent: bool, under: Option<String>) -> Result<(Vec<AgentRecord>, usize)> {
        list_with(|request| self.request(request), all, recent, under)
    }

    /// Reads the next response of a stream; `None` when the daemon hung up.
    pub fn receive(&mut self) -> Result<Option<Response>> {
        match read_frame::<Response>(&mut self.stream).map_err(|e| lost(&e))? {
            Some(Response::Error(err)) => Err(err),
            other => Ok(other),
        }
    }

    /// Sends a request without reading (for streams).
    pub fn send(&mut self, request: &Request) -> Result<()> {
        write_frame(&mut self.stream, request).map_err(not_sent)
    }
}

/// How long a send is tried again after the daemon was lost (see
/// [`send_message`]).
const SEND_PATIENCE: Duration = Duration::from_secs(60);

/// Sends a message through the daemon, once: the request carries a key of
/// its own, and one whose connection was lost (the daemon killed before it
/// answered, the message journaled or not) is sent again with that key
/// until a daemon answers, for up to [`SEND_PATIENCE`]. A daemon that has
/// the key already answers with the message it queued: a script never
/// sees exit 9 for a message that went, nor sends it twice by retrying.
pub fn send_message(state: &StateDir, to: String, from: String, text: String) -> Result<String> {
    let request = Request::Send { to, from, text, key: Some(message_key()) };
    let started = Instant::now();
    loop {
        match Client::connect(state).and_then(|mut client| client.request(&request)) {
            Ok(Response::Sent { message_id }) => return Ok(message_id),
            Ok(_) => return Err(Error::other("the daemon gave an unexpected answer")),
            Err(err) if err.kind == ErrorKind::DaemonUnavailable && started.elapsed() < SEND_PATIENCE => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(err) => return Err(err),
        }
    }
}

/// A key no other send has: this process, the time, and 64 random bits.
fn message_key() -> String {
    use std::io::Read;
    let mut random = [0u8; 8];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut random));
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{}-{nanos:x}-{:x}", std::process::id(), u64::from_le_bytes(random))
}

/// The client's environment, for a spawn (`SpawnRequest::env`): every
/// variable whose name and value are UTF-8. One that is not is left out
/// (the wire carries text; `std::env::vars` would panic on it).
pub fn environment() -> std::collections::BTreeMap<String, String> {
    std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .collect()
}

/// Every agent a `List` names, asking through `ask` page after page:
/// the agents in address order, and how many the recent view left out.
pub fn list_with(
    ask: impl FnMut(&Request) -> Result<Response>,
    all: bool,
    recent: bool,
    under: Option<String>,
) -> Result<(Vec<AgentRecord>, usize)> {
    let mut agents = Vec::new();
    let older = list_pages(ask, all, recent, under, |page| {
        agents.extend(page);
        Ok(())
    })?;
    Ok((agents, older))
}

/// [`list_with`] a page at a time: hands each page to `each` as it
/// comes (so a long history is never held whole); returns how many
/// agents the recent view left out.
pub fn list_pages(
    mut ask: impl FnMut(&Request) -> Result<Response>,
    all: bool,
    recent: bool,
    under: Option<String>,
    mut each: impl FnMut(Vec<AgentRecord>) -> Result<()>,
) -> Result<usize> {
    let mut after = None;
    loop {
        match ask(&Request::List { all, recent, under: under.clone(), after: after.take() })? {
            Response::Agents { agents: page, next, older } => {
                each(page)?;
                match next {
                    Some(next) => after = Some(next),
                    None => return Ok(older),
                }
            }
            other => {
                let what = serde_json::to_value(&other).ok().and_then(|v| v["response"].as_str().map(str::to_string));
                return Err(Error::other(format!("the daemon answered a list with {}", what.unwrap_or_default())));
            }
        }
    }
}

/// Why a request could not be sent. One over the wire's size limit is the
/// request's fault, not the daemon's ([`ErrorKind::BadConfig`], exit 14):
/// trying again would fail the same way, so nothing retries it.
fn not_sent(err: std::io::Error) -> Error {
    match err.kind() {
        std::io::ErrorKind::InvalidInput => Error::new(
            ErrorKind::BadConfig,
            format!("the request was not sent: {err} (a task, command or environment that large cannot be)"),
        ),
        _ => lost(&err),
    }
}

fn lost(why: &dyn std::fmt::Display) -> Error {
    Error::new(ErrorKind::DaemonUnavailable, format!("lost the daemon connection: {why}"))
}

/// Whether the file this process was started from is no longer the one
/// at its path (deleted, or another file renamed over it).
fn replaced_since_started() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(running) = std::fs::metadata("/proc/self/exe") else { return false };
    match installed_path().map(std::fs::metadata) {
        Ok(Ok(on_disk)) => (running.dev(), running.ino()) != (on_disk.dev(), on_disk.ino()),
        Ok(Err(_)) => true,
        Err(_) => false,
    }
}

/// The path this process's binary was started from, whatever is there now
/// (the kernel marks a replaced one `... (deleted)`).
fn installed_path() -> std::io::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(match exe.to_string_lossy().strip_suffix(" (deleted)") {
        Some(path) => std::path::PathBuf::from(path),
        None => exe,
    })
}

fn start_daemon(state: &StateDir) -> Result<()> {
    // Replaced since this process started (an upgrade): the daemon is the
    // build now at that path.
    let exe = installed_path().map_err(|e| Error::other(format!("cannot find the corral binary: {e}")))?;
    let log = std::os::unix::fs::OpenOptionsExt::mode(std::fs::OpenOptions::new().create(true).append(true), 0o600)
        .open(state.daemon_log())
        .map_err(|e| Error::io("cannot open", &state.daemon_log(), e))?;
    let mut command = Command::new(exe);
    command
        .arg("-C")
        .arg(&state.repo_root)
        .arg("daemon")
        .current_dir(&state.dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| Error::other(e.to_string()))?)
        .stderr(log);
    // SAFETY: `new_session` calls only async-signal-safe functions.
    unsafe {
        command.pre_exec(crate::sys::process::new_session);
    }
    let child = command
        .spawn()
        .map_err(|e| Error::new(ErrorKind::DaemonUnavailable, format!("cannot start the daemon: {e}")))?;
    // Reap it in the background if it exits while we run (it lost the lock
    // race, say); once we exit, init adopts it.
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    Ok(())
}
