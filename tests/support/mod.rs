//! Support for corral's end-to-end tests: a scratch git repository per
//! test, the built `corral` binary run against it, polling with deadlines,
//! and cleanup that kills every process the test started, even when the
//! test fails.
//!
//! Every command a test runs carries `CORRAL_TEST_ID=<unique>` in its
//! environment; the daemon, the monitors and the agents inherit it, so on
//! drop the repository finds and kills all of them by scanning `/proc`.

pub mod real_cli;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a test waits for something that should happen "soon", on a
/// loaded 2-core machine.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The `corral` binary built by cargo for this test run.
pub fn corral_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("CORRAL_BIN") {
        return PathBuf::from(bin);
    }
    // target/debug/deps/<test>-<hash> -> target/debug/corral
    let exe = std::env::current_exe().expect("test exe");
    let bin = exe.parent().and_then(Path::parent).expect("target dir").join("corral");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p corral` (cargo test --workspace does)",
        bin.display()
    );
    bin
}

/// The repository's root, read when the test runs (cargo sets
/// CARGO_MANIFEST_DIR): a test binary reused from a target folder shared
/// with another checkout must read this checkout's files.
pub fn source_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// Waits until `condition` holds, checking every 10 ms, or panics naming `what`.
pub fn poll_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends SIGKILL to `pid`.
pub fn sigkill(pid: u32) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
}

/// True when the process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
        Err(_) => false,
    }
}

/// Live processes whose environment contains `needle` (as `KEY=value`).
pub fn processes_with_env(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return found };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if pid == me || !alive(pid) {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        if environ.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

/// A scratch repository with one commit, and everything corral makes for it.
pub struct TestRepo {
    pub root: tempfile::TempDir,
    pub repo: PathBuf,
    pub worktrees: PathBuf,
    pub test_id: String,
}

impl Default for TestRepo {
    fn default() -> Self {
        Self::new()
    }
}

impl TestRepo {
    pub fn new() -> TestRepo {
        let root = tempfile::Builder::new().prefix("corral-test-").tempdir().expect("tempdir");
        let repo = root.path().join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        let test_id = format!("{}-{}", std::process::id(), root.path().file_name().unwrap().to_string_lossy());
        let this = TestRepo { worktrees: root.path().join("worktrees"), root, repo, test_id };
        this.git(&["init", "-q", "-b", "main"]);
        std::fs::write(this.repo.join("README.md"), "# test repository\n").unwrap();
        this.git(&["add", "-A"]);
        this.git(&["commit", "-q", "-m", "first commit"]);
        this
    }

    /// Runs git in the repository; panics on failure.
    pub fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(["-c", "user.name=corral test", "-c", "user.email=test@corral.invalid"])
            .args(args)
            .current_dir(&self.repo)
            .output()
            .expect("git runs");
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Where the agent at `/root/<flat>` gets its worktree (flat: `a.b`
    /// for `/root/a/b`), known before it is spawned.
    pub fn worktree_of(&self, flat: &str) -> PathBuf {
        let repo = self.repo.canonicalize().unwrap();
        let root = self.worktrees.canonicalize().unwrap_or_else(|_| {
            std::fs::create_dir_all(&self.worktrees).unwrap();
            self.worktrees.canonicalize().unwrap()
        });
        corral::sys::paths::worktrees_for(&root, &repo).join(flat)
    }

    /// The state folder corral uses for this repository.
    pub fn state_dir(&self) -> PathBuf {
        self.repo.join(".git/corral")
    }

    /// A `corral` command set up for this repository.
    pub fn command(&self) -> Command {
        self.command_with(&corral_bin())
    }

    /// A command set up for this repository that runs `bin` (a copy of
    /// the corral binary, say) instead of the built one.
    pub fn command_with(&self, bin: &Path) -> Command {
        let mut command = Command::new(bin);
        command
            .current_dir(&self.repo)
            .env("CORRAL_WORKTREE_ROOT", &self.worktrees)
            .env("CORRAL_TEST_ID", &self.test_id)
            .env_remove("CORRAL_ADDRESS")
            .env_remove("CORRAL_SOCKET")
            .stdin(Stdio::null());
        command
    }

    pub fn corral(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("corral runs")
    }

    /// Runs corral and returns stdout; panics with stderr if it failed.
    pub fn corral_ok(&self, args: &[&str]) -> String {
        let out = self.corral(args);
        assert!(
            out.status.success(),
            "corral {args:?} exited {:?}\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn corral_json(&self, args: &[&str]) -> Value {
        let stdout = self.corral_ok(args);
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("corral {args:?} printed no JSON ({e}): {stdout}"))
    }

    /// Spawns the scripted fake agent; returns the spawn's JSON.
    pub fn spawn_fake(&self, name: &str, script: &str) -> Value {
        let bin = corral_bin();
        let bin = bin.to_str().unwrap();
        self.corral_json(&["spawn", name, "--task", "test task", "--json", "--", bin, "fake-agent", script])
    }

    /// All agents, from `corral ps --all --json`.
    pub fn agents(&self) -> Vec<Value> {
        self.corral_json(&["ps", "--all", "--json"]).as_array().cloned().unwrap_or_default()
    }

    pub fn agent(&self, address: &str) -> Value {
        self.agents()
            .into_iter()
            .find(|a| a["address"] == address)
            .unwrap_or_else(|| panic!("no agent {address} in ps"))
    }

    /// The agent's output log, read straight from the state folder.
    pub fn log(&self, address: &str) -> Vec<u8> {
        let id = self.agent(address)["id"].as_u64().expect("id");
        self.log_by_id(id)
    }

    pub fn log_by_id(&self, id: u64) -> Vec<u8> {
        std::fs::read(self.state_dir().join(format!("agents/{id}/output.log"))).unwrap_or_default()
    }

    pub fn daemon_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.state_dir().join("daemon.pid")).ok()?.trim().parse().ok()
    }

    /// SIGKILLs the daemon and waits until it is gone; returns its pid.
    pub fn kill_daemon(&self) -> u32 {
        let daemon = self.daemon_pid().expect("a daemon pid");
        sigkill(daemon);
        poll_until(&format!("daemon {daemon} to die of SIGKILL"), PATIENCE, || !alive(daemon));
        daemon
    }

    /// A path in the scratch folder (outside the repository).
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    /// Live processes started for this test (daemon, monitors, agents).
    pub fn processes(&self) -> Vec<u32> {
        processes_with_env(&format!("CORRAL_TEST_ID={}", self.test_id))
    }

    /// Live processes of one agent (anything with its address in its
    /// environment), grandchildren that called setsid included.
    pub fn agent_processes(&self, address: &str) -> Vec<u32> {
        let mine = self.processes();
        processes_with_env(&format!("CORRAL_ADDRESS={address}")).into_iter().filter(|p| mine.contains(p)).collect()
    }
}

impl Drop for TestRepo {
    fn drop(&mut self) {
        // Kill everything this test started, repeatedly, until nothing is
        // left (a process may fork while we look).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = self.processes();
            if left.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in left {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A fake `claude` CLI (for `CORRAL_CLAUDE_BIN`) that runs the scripted
/// agent with `script` and ignores Claude's own flags: for stream-json
/// lines with known usage and cost.
pub fn fake_claude(repo: &TestRepo, name: &str, script: &str) -> PathBuf {
    let script_file = repo.path(&format!("{name}.steps"));
    std::fs::write(&script_file, script).unwrap();
    let bin = repo.path(&format!("{name}-claude.sh"));
    let body =
        format!("#!/bin/sh\nexec '{}' fake-agent \"$(cat '{}')\"\n", corral_bin().display(), script_file.display());
    std::fs::write(&bin, body).unwrap();
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    bin
}

/// A fake-agent step printing a Claude Code stream-json assistant line
/// with `input` input tokens (and no others).
pub fn assistant(id: &str, input: u64) -> String {
    format!(
        r#"print '{{"type":"assistant","message":{{"id":"{id}","role":"assistant","model":"claude-sonnet-4-5","content":[{{"type":"text","text":"working"}}],"usage":{{"input_tokens":{input},"output_tokens":0,"cache_read_input_tokens":0,"cache_creation_input_tokens":0}}}},"parent_tool_use_id":null,"session_id":"s-1"}}'"#
    )
}
