//! `corral doctor`: what this machine lets corral do, and what it will not.
//!
//! It looks and changes nothing: the git version (worktrees are made with
//! git, libgit2 when there is none), the kernel's Landlock ABI (asked with
//! `landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)`,
//! which creates no ruleset) and cgroup v2, whether a PTY can be had,
//! which agent CLIs are found (`CORRAL_<NAME>_BIN`, else `PATH`) and
//! their versions, and whether the repository's state folder and the
//! daemon's socket are the caller's own with safe modes. It starts no
//! daemon. Exit 0 when corral can run here; 8 when the state folder or
//! socket is another user's; 1 for anything else that stops it.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corral_harness::Harness;
use serde::Serialize;

use crate::cli::human;
use crate::model::error::{ErrorKind, Result};
use crate::sys::paths::StateDir;

/// How long an agent CLI may take to say its version (a Node.js CLI
/// starting cold on a loaded machine takes a few seconds).
const VERSION_TIMEOUT: Duration = Duration::from_secs(20);

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Works.
    Ok,
    /// Works, or not needed, with less than corral could do.
    Warn,
    /// Absent and optional (an agent CLI not installed).
    Missing,
    /// Stops corral from running.
    Fail,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Missing => "--",
            Status::Fail => "FAIL",
        }
    }
}

/// One thing looked at.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    /// What was found, and what follows from it.
    pub summary: String,
    /// A found program's path, a found version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Extra figures: the Landlock ABI, the cgroup version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
}

impl Check {
    fn new(name: &str, status: Status, summary: impl Into<String>) -> Check {
        Check { name: name.into(), status, summary: summary.into(), path: None, version: None, value: None }
    }
}

/// Runs the checks for the repository around `start` (if any) and prints
/// them; returns the exit code.
pub fn run(start: &Path, json: bool) -> Result<i32> {
    let clis = agent_clis();
    let mut checks = vec![corral_itself(), git(), landlock(), cgroup(), pty()];
    checks.extend(clis);
    let state_checks = state(start);
    let not_owner = state_checks.iter().any(|c| c.status == Status::Fail && c.summary.contains("not yours"));
    checks.extend(state_checks);
    let can_run = checks.iter().all(|c| c.status != Status::Fail);
    let verdict = verdict(&checks, can_run);
    if json {
        let value = serde_json::json!({ "v": 1, "ok": can_run, "checks": checks, "verdict": verdict });
        say!("{}", serde_json::to_string_pretty(&value).expect("serializes"));
    } else {
        crate::cli::out::write_bytes(render(&checks, &verdict).as_bytes());
    }
    Ok(match (can_run, not_owner) {
        (true, _) => 0,
        (false, true) => ErrorKind::NotOwner.exit_code(),
        (false, false) => 1,
    })
}

/// The checks as a person reads them.
pub fn render(checks: &[Check], verdict: &[String]) -> String {
    let color = human::color_allowed(human::stdout_is_terminal());
    let mut out = String::from("corral doctor: what this machine lets corral do\n\n");
    for check in checks {
        let word = format!("{:<4}", check.status.word());
        let word = match (color, check.status) {
            (true, Status::Ok) => format!("\x1b[32m{word}\x1b[0m"),
            (true, Status::Warn) => format!("\x1b[33m{word}\x1b[0m"),
            (true, Status::Fail) => format!("\x1b[31m{word}\x1b[0m"),
            _ => word,
        };
        out.push_str(&format!("  {word}  {:<9} {}\n", check.name, check.summary));
    }
    out.push('\n');
    for line in verdict {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// What will and will not work, from the checks.
fn verdict(checks: &[Check], can_run: bool) -> Vec<String> {
    let mut lines = Vec::new();
    let found: Vec<&str> = checks
        .iter()
        .filter(|c| c.path.is_some() && c.status == Status::Ok && c.name != "corral" && c.name != "git")
        .map(|c| c.name.as_str())
        .collect();
    let missing: Vec<&str> = checks.iter().filter(|c| c.status == Status::Missing).map(|c| c.name.as_str()).collect();
    lines.push(match can_run {
        true => "corral can run here.".to_string(),
        false => "corral cannot run here until the FAIL lines above are fixed.".to_string(),
    });
    let mut agents = "- agents: any command runs as a generic agent".to_string();
    if !found.is_empty() {
        agents.push_str(&format!("; --harness {} will start", found.join(", ")));
    }
    if !missing.is_empty() {
        agents.push_str(&format!("; --harness {} will not (not found: exit 10)", missing.join(", ")));
    }
    lines.push(agents);
    use crate::sys::sandbox::{FS_MIN_ABI, NET_MIN_ABI};
    let abi = checks.iter().find(|c| c.name == "landlock").and_then(|c| c.value.as_ref()).and_then(|v| v.as_u64());
    let abi = abi.unwrap_or(0) as u32;
    lines.push(match abi {
        abi if abi >= NET_MIN_ABI => "- sandbox: read-only and workspace-write are enforced by the kernel (Landlock), \
             and so is --network none or model"
            .to_string(),
        abi if abi >= FS_MIN_ABI => format!(
            "- sandbox: read-only and workspace-write are enforced (Landlock); --network none or model is not \
             (it needs ABI {NET_MIN_ABI}): such a spawn is refused"
        ),
        _ => format!(
            "- sandbox: nothing can be enforced (Landlock ABI {FS_MIN_ABI} is needed): a spawn asking for a sandbox \
             is refused, unless sandbox_fallback = \"warn\" runs it without"
        ),
    });
    let cgroup = checks.iter().find(|c| c.name == "cgroup").and_then(|c| c.value.clone()).unwrap_or_default();
    lines.push(format!(
        "- limits: max_open_files always (RLIMIT_NOFILE); max_processes {}; max_memory {}",
        match cgroup["pids"].as_u64() {
            Some(v) => format!("through a cgroup v{v}"),
            None => "is refused (no pids cgroup corral can make)".to_string(),
        },
        match cgroup["memory"].as_u64() {
            Some(_) => "through cgroup v2",
            None => "through RLIMIT_AS only",
        }
    ));
    lines.push(
        "- stopping: SIGTERM, the grace, SIGKILL to the process group; the subreaper finds what left the group"
            .to_string(),
    );
    lines
}

fn corral_itself() -> Check {
    let exe = std::env::current_exe().ok();
    let mut check = Check::new(
        "corral",
        Status::Ok,
        format!(
            "{} at {}",
            env!("CARGO_PKG_VERSION"),
            exe.as_ref().map_or_else(|| "?".to_string(), |p| p.display().to_string())
        ),
    );
    check.path = exe;
    check.version = Some(env!("CARGO_PKG_VERSION").into());
    check
}

fn git() -> Check {
    let Some(path) = find_on_path("git") else {
        return Check::new("git", Status::Warn, "not found on PATH: worktrees are made with libgit2 instead");
    };
    let mut check = match version_of(&path) {
        Ok(version) => {
            let mut check = Check::new("git", Status::Ok, format!("{version} at {}", path.display()));
            check.version = Some(version);
            check
        }
        Err(why) => {
            Check::new("git", Status::Warn, format!("{} does not run ({why}): libgit2 is used", path.display()))
        }
    };
    check.path = Some(path);
    check
}

/// What each Landlock ABI added, by version (the sandbox uses up to
/// `sys::sandbox::MAX_ABI`).
const LANDLOCK_ABIS: &[(i64, &str)] = &[
    (1, "file system access"),
    (2, "moving files between folders"),
    (3, "truncating files"),
    (4, "TCP bind and connect"),
    (5, "device ioctl"),
    (6, "signals and abstract sockets"),
    (7, "audit logs"),
];

/// The kernel's Landlock ABI: a positive version, or why there is none
/// (the sandbox's own question, so doctor says what spawn will find).
pub fn landlock_abi() -> std::result::Result<i64, String> {
    crate::sys::sandbox::landlock_abi_or_why().map(i64::from)
}

fn landlock() -> Check {
    match landlock_abi() {
        Ok(abi) => {
            let can: Vec<&str> = LANDLOCK_ABIS.iter().filter(|(v, _)| *v <= abi).map(|(_, what)| *what).collect();
            let mut check =
                Check::new("landlock", Status::Ok, format!("ABI {abi}: the kernel confines {}", can.join(", ")));
            check.value = Some(abi.into());
            check
        }
        Err(why) => Check::new("landlock", Status::Warn, format!("not available: {why}")),
    }
}

/// Where the sandbox can make an agent's cgroups: asked the way a spawn
/// asks (`sys::sandbox::cgroup`), so what doctor says is what spawn does.
fn cgroup() -> Check {
    use crate::sys::sandbox::cgroup::Hierarchy;
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let v2 = mounts.lines().find_map(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        (fields.get(2) == Some(&"cgroup2")).then(|| fields[1].to_string())
    });
    let pids = Hierarchy::find("pids");
    let memory = Hierarchy::find_v2("memory");
    let mut parts = vec![match &v2 {
        Some(at) => format!("v2 at {at}"),
        None => "no cgroup v2".to_string(),
    }];
    parts.push(match &pids {
        Ok(found) => format!("max_processes: a pids cgroup v{} in {}", found.version, found.parent.display()),
        Err(why) => format!("max_processes is refused ({why})"),
    });
    parts.push(match &memory {
        Ok(found) => format!("max_memory: cgroup v2 memory.max in {}", found.parent.display()),
        Err(why) => format!("max_memory: RLIMIT_AS per process ({why})"),
    });
    let status = match (&pids, &memory) {
        (Ok(_), Ok(_)) => Status::Ok,
        _ => Status::Warn,
    };
    let mut check = Check::new("cgroup", status, parts.join("; "));
    check.value = Some(serde_json::json!({
        "v2": v2,
        "pids": pids.as_ref().ok().map(|h| h.version),
        "memory": memory.as_ref().ok().map(|h| h.version),
    }));
    check
}

/// True when this user may write into `path` (access(2), W_OK).
fn writable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: `c` is a valid NUL-terminated path for the call's duration.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

fn pty() -> Check {
    match nix::pty::posix_openpt(nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY) {
        Ok(_master) => Check::new("pty", Status::Ok, "a PTY can be had (/dev/ptmx): each agent gets a terminal"),
        Err(e) => Check::new("pty", Status::Fail, format!("no PTY can be had ({e}): agents cannot be started")),
    }
}

/// The five agent CLIs, looked at in parallel (each `--version` may take
/// a few seconds).
fn agent_clis() -> Vec<Check> {
    let harnesses: Vec<Harness> = Harness::ALL.into_iter().filter(|h| *h != Harness::Generic).collect();
    let threads: Vec<_> = harnesses.into_iter().map(|h| std::thread::spawn(move || agent_cli(h))).collect();
    threads.into_iter().map(|t| t.join().expect("a check does not panic")).collect()
}

fn agent_cli(harness: Harness) -> Check {
    let name = harness.as_str();
    let variable = harness.program_variable().expect("not generic");
    let (path, from) = match std::env::var_os(variable).filter(|v| !v.is_empty()) {
        Some(value) => (Some(PathBuf::from(&value)).filter(|p| is_executable(p)), variable.to_string()),
        None => (find_on_path(name), "PATH".to_string()),
    };
    let Some(path) = path else {
        let summary = match from.as_str() {
            "PATH" => format!("not found (neither {variable} nor `{name}` on PATH)"),
            _ => format!(
                "{variable} names no program that can run: {:?}",
                std::env::var_os(variable).unwrap_or_default()
            ),
        };
        return Check::new(name, Status::Missing, summary);
    };
    let mut check = match version_of(&path) {
        Ok(version) => {
            let mut check = Check::new(name, Status::Ok, format!("{version} at {} ({from})", path.display()));
            check.version = Some(version);
            check
        }
        Err(why) => {
            Check::new(name, Status::Warn, format!("{} ({from}) does not say its version: {why}", path.display()))
        }
    };
    check.path = Some(path);
    check
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| is_executable(p))
}

/// The first line `PROGRAM --version` prints, within [`VERSION_TIMEOUT`].
fn version_of(program: &Path) -> std::result::Result<String, String> {
    let mut child = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + VERSION_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {} s", VERSION_TIMEOUT.as_secs()));
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    let first = |text: &str| text.lines().map(str::trim).find(|l| !l.is_empty()).map(str::to_string);
    match (status.success(), first(&out).or_else(|| first(&err))) {
        (true, Some(line)) => Ok(human::truncate(&line, 80)),
        (true, None) => Err("it printed nothing".into()),
        (false, line) => Err(format!("{status}{}", line.map_or(String::new(), |l| format!(": {l}")))),
    }
}

/// The state folder and the socket of the repository around `start`.
fn state(start: &Path) -> Vec<Check> {
    let state = match StateDir::discover(start) {
        Ok(state) => state,
        Err(_) => {
            return vec![Check::new(
                "state",
                Status::Warn,
                format!("{} is in no git repository: run doctor in one to check its state folder", start.display()),
            )]
        }
    };
    let me = nix::unistd::geteuid().as_raw();
    let mut checks = vec![owned_check("state", &state.dir, me, true)];
    checks.push(owned_check("socket", &state.socket(), me, false));
    if let Some(check) = checks.last_mut().filter(|c| c.status == Status::Ok && c.path.is_some()) {
        match crate::cli::client::Client::connect_existing(&state) {
            Ok(_) => check.summary.push_str("; a daemon answers on it"),
            Err(_) => check.summary.push_str("; no daemon answers on it (the next command starts one)"),
        }
    }
    checks.push(worktrees(&state.worktrees));
    checks
}

/// Owner and mode of the state folder (`dir`) or the socket: the caller's
/// own, and nobody else may write (or, for the folder, read) it.
fn owned_check(name: &str, path: &Path, me: u32, dir: bool) -> Check {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(_) => {
            let summary = match dir {
                true => format!("{} does not exist yet (the first command makes it, mode 0700)", path.display()),
                false => format!("{} does not exist yet: no daemon has run (it is made mode 0600)", path.display()),
            };
            return Check::new(name, Status::Ok, summary);
        }
    };
    let mode = meta.mode() & 0o7777;
    let mut check = if meta.uid() != me {
        Check::new(
            name,
            Status::Fail,
            format!("{} is not yours (uid {}, you are {me}): corral refuses it (exit 8)", path.display(), meta.uid()),
        )
    } else if meta.file_type().is_symlink() {
        Check::new(name, Status::Fail, format!("{} is a symbolic link: corral expects its own file", path.display()))
    } else if mode & 0o022 != 0 {
        Check::new(
            name,
            Status::Fail,
            format!("{} is writable by others (mode {mode:04o}): chmod go-w it", path.display()),
        )
    } else if mode & 0o077 != 0 {
        Check::new(
            name,
            Status::Warn,
            format!("{} is yours but others may read it (mode {mode:04o}): chmod go-rwx it", path.display()),
        )
    } else {
        Check::new(name, Status::Ok, format!("{} is yours, mode {mode:04o}", path.display()))
    };
    check.path = Some(path.to_path_buf());
    check
}

/// Whether the worktrees can be made where they go.
fn worktrees(root: &Path) -> Check {
    let existing = root.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    match writable(existing) {
        true => Check::new("worktree", Status::Ok, format!("worktrees go under {}", root.display())),
        false => Check::new(
            "worktree",
            Status::Fail,
            format!(
                "worktrees go under {}, but {} is not writable (set CORRAL_WORKTREE_ROOT)",
                root.display(),
                existing.display()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_landlock_question_gets_an_answer() {
        // Either an ABI or a reason; never a panic or a bogus zero.
        match landlock_abi() {
            Ok(abi) => assert!(abi >= 1),
            Err(why) => assert!(!why.is_empty()),
        }
    }

    #[test]
    fn modes_and_owners_are_judged() {
        let dir = tempfile::tempdir().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let path = dir.path().join("state");
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(owned_check("state", &path, me, true).status, Status::Ok);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o750)).unwrap();
        assert_eq!(owned_check("state", &path, me, true).status, Status::Warn);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(owned_check("state", &path, me, true).status, Status::Fail);
        let other = owned_check("state", &path, me + 1, true);
        assert_eq!(other.status, Status::Fail);
        assert!(other.summary.contains("not yours"), "{}", other.summary);
    }

    #[test]
    fn a_version_is_the_first_line_it_prints() {
        let version = version_of(Path::new("/bin/echo")).unwrap();
        assert!(!version.is_empty() && !version.contains('\n'), "{version}");
    }
}
