//! What the benches share (`mod common;` in each): the built `corral`,
//! the marker each bench puts in the environment of everything it starts
//! and the cleanup that finds and kills those processes, a scratch folder,
//! the load on the machine, percentiles, and a signal handler that cleans
//! up on Ctrl-C. Not a bench target itself (cargo takes only the files
//! directly in benches/ for those).

// Every bench uses a different part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

// ---- the built corral ------------------------------------------------------------

/// The built `corral`: `target/<profile>/deps/<bench>-<hash>` ->
/// `target/<profile>/corral`, or `CORRAL_BIN`.
pub fn corral_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("CORRAL_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("the bench's own path");
    let bin = exe.parent().and_then(Path::parent).expect("target/<profile>").join("corral");
    if bin.exists() {
        return bin;
    }
    let cargo_built = PathBuf::from(env!("CARGO_BIN_EXE_corral"));
    assert!(
        cargo_built.exists(),
        "{} is missing: build it with `cargo build --release -p corral` (`cargo bench -p corral` does)",
        bin.display()
    );
    cargo_built
}

/// A corral command for the repository at `repo`, marked with
/// `marker=id`, with its worktrees under `scratch`.
pub fn corral_command(bin: &Path, repo: &Path, args: &[&str], scratch: &Path, marker: &str, id: &str) -> Command {
    let mut command = Command::new(bin);
    command
        .args(args)
        .current_dir(repo)
        .env("CORRAL_WORKTREE_ROOT", scratch.join("corral-worktrees"))
        .env(marker, id)
        .env_remove("CORRAL_ADDRESS")
        .env_remove("CORRAL_SOCKET")
        .env_remove("CORRAL_PARENT")
        .stdin(Stdio::null());
    command
}

/// Runs git in `repo`, marked with `marker=id`; panics on failure.
pub fn git(repo: &Path, args: &[&str], marker: &str, id: &str) {
    let out = Command::new("git")
        .args(["-c", "user.name=corral bench", "-c", "user.email=bench@corral.invalid"])
        .args(args)
        .current_dir(repo)
        .env(marker, id)
        .stdin(Stdio::null())
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A fresh scratch folder named `<prefix>…`, its path, and the id that
/// marks what the bench starts (this process's pid and the folder's name).
pub fn scratch_folder(prefix: &str) -> (tempfile::TempDir, PathBuf, String) {
    let root = tempfile::Builder::new().prefix(prefix).tempdir().expect("a temporary folder");
    let path = root.path().to_path_buf();
    let id = format!("{}-{}", std::process::id(), path.file_name().unwrap().to_string_lossy());
    (root, path, id)
}

/// Removes the scratch folder (if not yet removed), saying so when it
/// cannot; returns how long that took.
pub fn remove_scratch(bench: &str, root: &mut Option<tempfile::TempDir>, path: &Path) -> Duration {
    let start = Instant::now();
    if let Some(root) = root.take() {
        if let Err(err) = root.close() {
            eprintln!("{bench} bench: cannot remove {}: {err}", path.display());
        }
    }
    start.elapsed()
}

/// What is left after cleanup: (processes marked `marker=id`, `ps` lines
/// naming the scratch folder); names each of the latter.
pub fn left_behind(bench: &str, marker: &str, id: &str, path: &Path) -> (usize, usize) {
    let left_marked = marked_processes(marker, id).len();
    let in_ps = ps_lines_naming(path);
    for line in &in_ps {
        eprintln!("{bench} bench: left behind: {line}");
    }
    (left_marked, in_ps.len())
}

pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) if !text.is_empty() => text.parse().unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
        _ => default,
    }
}

pub fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn expect_ok(out: &Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}", describe(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn expect_json(out: &Output, what: &str) -> Value {
    let stdout = expect_ok(out, what);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{what} printed no JSON ({e}): {stdout}"))
}

// ---- processes -------------------------------------------------------------------

pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
        Err(_) => false,
    }
}

/// Live processes (not this one) whose environment holds every one of `needles`.
pub fn processes_with(needles: &[&str]) -> Vec<u32> {
    let me = std::process::id();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return found };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if pid == me || !alive(pid) {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        if needles.iter().all(|needle| environ.split(|&b| b == 0).any(|kv| kv == needle.as_bytes())) {
            found.push(pid);
        }
    }
    found
}

/// Live processes (not this one) whose environment holds `marker=id`.
pub fn marked_processes(marker: &str, id: &str) -> Vec<u32> {
    processes_with(&[&format!("{marker}={id}")])
}

/// SIGKILLs every process marked `marker=id` until none is left (a
/// process may fork while we look); returns how many distinct processes
/// were killed.
pub fn kill_marked(marker: &str, id: &str) -> usize {
    let mut killed = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = marked_processes(marker, id);
        if left.is_empty() || Instant::now() > deadline {
            break;
        }
        for pid in left {
            // SAFETY: kill with a pid we just found and a constant signal.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            killed.insert(pid);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    killed.len()
}

/// `ps` lines (not this process, not zombies) that name `path`: daemons
/// and monitors carry the scratch folder in their arguments.
pub fn ps_lines_naming(path: &Path) -> Vec<String> {
    let Ok(out) = Command::new("ps").args(["-eo", "pid,stat,args"]).output() else { return Vec::new() };
    let needle = path.to_string_lossy().into_owned();
    let me = std::process::id().to_string();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&needle) && l.split_whitespace().next() != Some(me.as_str()))
        .filter(|l| !l.split_whitespace().nth(1).is_some_and(|s| s.starts_with('Z')))
        .map(str::to_string)
        .collect()
}

/// On SIGINT, SIGTERM or SIGHUP: kill what the bench started (marked
/// `marker=id`), run `after_kill`, remove the scratch folder `root`, exit.
/// `bench` names the bench in what it prints.
pub fn install_interrupt_cleanup(
    bench: &'static str,
    marker: &'static str,
    id: String,
    root: PathBuf,
    after_kill: fn(),
) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else { return };
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            eprintln!("{bench} bench: signal {signal}: killing what it started and removing {}", root.display());
            kill_marked(marker, &id);
            after_kill();
            let _ = std::fs::remove_dir_all(&root);
            std::process::exit(128 + signal);
        }
    });
}

// ---- the machine -----------------------------------------------------------------

/// (busy, total) jiffies of the whole machine, from /proc/stat.
pub fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let values: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3)? + values.get(4).unwrap_or(&0);
    Some((total - idle, total))
}

pub fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

pub fn load_is_busy(load: &str, cores: usize) -> bool {
    load.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()).is_some_and(|l| l >= cores as f64 / 2.0)
}

// ---- figures ---------------------------------------------------------------------

/// Nearest rank, on sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// The median of `values`, in any order.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile(&sorted, 50.0)
}

/// A repository with one commit at `scratch/repo`, for a bench's agents.
pub fn one_commit_repo(scratch: &Path, marker: &str, id: &str) -> PathBuf {
    let repo = scratch.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"], marker, id);
    std::fs::write(repo.join("README.md"), "# bench\n").unwrap();
    git(&repo, &["add", "-A"], marker, id);
    git(&repo, &["commit", "-q", "-m", "first"], marker, id);
    repo
}

/// Kills every process carrying the bench's marker when dropped (a panic
/// included).
pub struct KillMarked {
    pub marker: &'static str,
    pub id: String,
}

impl Drop for KillMarked {
    fn drop(&mut self) {
        kill_marked(self.marker, &self.id);
    }
}
