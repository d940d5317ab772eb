//! Fifty ready branches merged through corral's merge queue, beside a shell
//! loop of `git merge --no-edit` over the same branches in a clone of the
//! same starting repository (issue 6's figure), measured on the built
//! `corral`.
//!
//! The branches are real agents' branches, so the queue is the real one:
//! 50 fake agents (`corral fake-agent`), merge policy manual (the
//! default), each writes one file of its own (`agents/bNN.txt`) and
//! commits, then exits. Once all have ended, their branches are ready and
//! nothing is merged yet. The starting repository has a tree of some size
//! (`MERGE_QUEUE_BENCH_FILES`, 2,000 files in 40 folders) and `main`
//! checked out and clean in its main checkout, so every merge also brings
//! that checkout along, as `git merge` does in the clone.
//!
//! Three timings, each over the same 50 branches from the same start:
//!
//! 1. git: in a clone of the repository (local branches fetched as
//!    `corral/root/bNN`), one `sh -c 'for b in ...; do git merge --no-edit
//!    -q $b; done'`: the first merge fast-forwards, the 49 others make
//!    merge commits (git's default, like corral's default strategy).
//! 2. corral, one after another: `corral merge bNN` for each branch in
//!    turn, each command waiting for its outcome (a client process, a
//!    request to the daemon, the queue, the journal's fsyncs).
//! 3. corral, all at once: a second repository and 50 more agents, then 50
//!    `corral merge` started together; the queue takes them one at a time.
//!    Wall time from the first start to the last exit.
//!
//! Each corral run is checked: every command exits 0, `main` holds every
//! agent's file, and its tree equals the tree the git loop made. The
//! daemon's share is read from the events: `merge_started` -> `merged`
//! (moving the ref and the checkout) per merge.
//!
//! Run: `cargo bench -p corral --bench merge_queue`. `CORRAL_BIN` overrides
//! the binary; `MERGE_QUEUE_BENCH_BRANCHES` the number of branches (50);
//! `MERGE_QUEUE_BENCH_FILES` the size of the starting tree (2000);
//! `MERGE_QUEUE_BENCH_CONCURRENT=0` skips the third timing.
//!
//! Every command carries `MERGE_QUEUE_BENCH_ID=<unique>` in its
//! environment; the daemons, the monitors and the agents inherit it. At the
//! end, on a panic, or on SIGINT/SIGTERM/SIGHUP, every live process with
//! the marker is killed and the scratch folder removed.

mod common;
use common::{alive, corral_bin, describe, env_number, expect_json, expect_ok, load_average, percentile};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const MARKER: &str = "MERGE_QUEUE_BENCH_ID";

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
    // too, without it, and should not spawn a hundred agents.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("merge_queue bench: not run by `cargo bench` (no --bench argument); nothing measured");
        return;
    }
    let branches: usize = env_number("MERGE_QUEUE_BENCH_BRANCHES", 50);
    let files: usize = env_number("MERGE_QUEUE_BENCH_FILES", 2000);
    let concurrent = std::env::var("MERGE_QUEUE_BENCH_CONCURRENT").map_or(true, |v| v != "0");
    let bin = corral_bin();
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let load_start = load_average();

    // Orphans (daemons once their client exits) become this process's
    // children, so cleanup can reap them.
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes one integer argument.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let mut scratch = Scratch::new();
    install_interrupt_cleanup(scratch.id.clone(), scratch.path.clone());
    eprintln!("merge_queue bench: scratch folder {} (marker {MARKER}={})", scratch.path.display(), scratch.id);

    // ---- the sequential run, and git on a clone of the same start ----
    let repo = scratch.path.join("repo");
    let setup = Instant::now();
    make_repo(&scratch, &repo, files);
    let start = git_out(&scratch, &repo, &["rev-parse", "main"]);
    let names = ready_branches(&scratch, &bin, &repo, branches);
    let setup = setup.elapsed();
    eprintln!("merge_queue bench: {branches} ready branches in {:.1} s", setup.as_secs_f64());

    let clone = scratch.path.join("clone");
    let cloned = Command::new("git")
        .args(["clone", "-q", "--no-local"])
        .arg(&repo)
        .arg(&clone)
        .env(MARKER, &scratch.id)
        .output()
        .expect("git clone runs");
    assert!(cloned.status.success(), "git clone: {}", describe(&cloned));
    scratch.git(&clone, &["fetch", "-q", "origin", "refs/heads/corral/*:refs/heads/corral/*"]);
    assert_eq!(git_out(&scratch, &clone, &["rev-parse", "main"]), start);
    let list: Vec<String> = names.iter().map(|n| format!("corral/root/{n}")).collect();
    let script = format!(
        "for b in {}; do git -c user.name=bench -c user.email=bench@corral.invalid merge --no-edit -q \"$b\" || exit 1; done",
        list.join(" ")
    );
    let git_started = Instant::now();
    let out = Command::new("sh")
        .args(["-c", &script])
        .current_dir(&clone)
        .env(MARKER, &scratch.id)
        .stdin(Stdio::null())
        .output()
        .expect("sh runs");
    let git_wall = git_started.elapsed();
    assert!(out.status.success(), "the git merge loop: {}", describe(&out));
    let git_tree = git_out(&scratch, &clone, &["rev-parse", "main^{tree}"]);
    let git_commits = git_out(&scratch, &clone, &["rev-list", "--count", &format!("{start}..main")]);

    let mut per_merge = Vec::new();
    let corral_started = Instant::now();
    for name in &names {
        let one = Instant::now();
        let out = scratch.corral(&bin, &repo, &["merge", name]);
        per_merge.push(one.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(out.status.code(), Some(0), "corral merge {name}: {}", describe(&out));
    }
    let corral_wall = corral_started.elapsed();
    check_result(&scratch, &repo, &start, &names, &git_tree);
    let sequential_daemon = daemon_share(&scratch, &bin, &repo);

    // ---- all at once, on a second repository with the same start ----
    let concurrent_run = concurrent.then(|| {
        let repo2 = scratch.path.join("repo2");
        make_repo(&scratch, &repo2, files);
        let start2 = git_out(&scratch, &repo2, &["rev-parse", "main"]);
        let names2 = ready_branches(&scratch, &bin, &repo2, branches);
        let started = Instant::now();
        let children: Vec<(String, Child)> = names2
            .iter()
            .map(|name| {
                let child = scratch
                    .command(&bin, &repo2, &["merge", name])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("corral runs");
                (name.clone(), child)
            })
            .collect();
        for (name, child) in children {
            let out = child.wait_with_output().expect("corral merge ends");
            assert_eq!(out.status.code(), Some(0), "corral merge {name} (all at once): {}", describe(&out));
        }
        let wall = started.elapsed();
        // Same files, merged in another order: the same tree.
        check_result(&scratch, &repo2, &start2, &names2, &git_tree);
        (wall, daemon_share(&scratch, &bin, &repo2))
    });

    let load_end = load_average();
    let cleanup = scratch.cleanup(&bin);

    let mut out = String::new();
    let line = "=".repeat(78);
    out.push_str(&format!("\n{line}\ncorral merge queue: {branches} ready branches onto main\n{line}\n"));
    out.push_str(&format!("binary            {}\n", bin.display()));
    out.push_str(&format!("machine           {cores} cores; load average at start {load_start}; at end {load_end}\n"));
    out.push_str(&format!(
        "repository        {files} files in 40 folders + README; main checked out and clean; \
         each branch one agent commit adding one file ({:.1} s to make them)\n",
        setup.as_secs_f64()
    ));
    out.push_str(&format!(
        "git merge loop    {:>9.1} ms   ({:.1} ms a merge; {} new commits on main)\n",
        ms(git_wall),
        ms(git_wall) / branches as f64,
        git_commits
    ));
    out.push_str(&format!(
        "corral, in turn   {:>9.1} ms   ({:.1} ms a merge; ratio to git {:.2}x)\n",
        ms(corral_wall),
        ms(corral_wall) / branches as f64,
        ms(corral_wall) / ms(git_wall)
    ));
    let mut sorted = per_merge.clone();
    sorted.sort_by(f64::total_cmp);
    out.push_str(&format!(
        "  one corral merge command: min {:.1}  p50 {:.1}  p90 {:.1}  max {:.1} ms\n",
        sorted[0],
        percentile(&sorted, 50.0),
        percentile(&sorted, 90.0),
        sorted[sorted.len() - 1]
    ));
    sequential_daemon.print(&mut out);
    match &concurrent_run {
        None => out.push_str("corral, at once   not run (MERGE_QUEUE_BENCH_CONCURRENT=0)\n"),
        Some((wall, share)) => {
            out.push_str(&format!(
                "corral, at once   {:>9.1} ms   ({:.1} ms a merge; ratio to git {:.2}x; {branches} `corral merge` started together)\n",
                ms(*wall),
                ms(*wall) / branches as f64,
                ms(*wall) / ms(git_wall)
            ));
            share.print(&mut out);
        }
    }
    out.push_str("checked           every command exited 0; main holds every agent's file; its tree equals git's\n");
    out.push_str(&format!(
        "cleanup           killed {} marked processes; {} marked left; scratch folder {}\n",
        cleanup.killed,
        cleanup.left,
        if cleanup.scratch_exists { "STILL THERE" } else { "removed" }
    ));
    out.push_str(&format!("{line}\n"));
    print!("{out}");
    if cleanup.left > 0 || cleanup.scratch_exists {
        std::process::exit(1);
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A repository with `files` files in 40 folders, `main` checked out.
fn make_repo(scratch: &Scratch, repo: &Path, files: usize) {
    std::fs::create_dir_all(repo).unwrap();
    scratch.git(repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README.md"), "# merge queue bench\n").unwrap();
    for i in 0..files {
        let folder = repo.join(format!("src/m{:02}", i % 40));
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join(format!("f{i:05}.rs")), format!("// file {i}\npub fn f{i}() -> usize {{ {i} }}\n"))
            .unwrap();
    }
    scratch.git(repo, &["add", "-A"]);
    scratch.git(repo, &["commit", "-q", "-m", "the starting tree"]);
}

/// Spawns `n` fake agents that each commit one file and exit; waits for
/// them; returns their names.
fn ready_branches(scratch: &Scratch, bin: &Path, repo: &Path, n: usize) -> Vec<String> {
    let names: Vec<String> = (0..n).map(|i| format!("b{i:02}")).collect();
    let bin_text = bin.to_str().expect("a UTF-8 path");
    for name in &names {
        let script = format!("write agents/{name}.txt 'the work of {name}'; commit 'work of {name}'");
        let out = scratch.corral(bin, repo, &["spawn", name, "--json", "--", bin_text, "fake-agent", &script]);
        expect_ok(&out, &format!("corral spawn {name}"));
    }
    let mut args = vec!["wait", "--timeout", "600"];
    args.extend(names.iter().map(String::as_str));
    let out = scratch.corral(bin, repo, &args);
    expect_ok(&out, "corral wait for the agents");
    let ps = expect_json(&scratch.corral(bin, repo, &["ps", "--json"]), "corral ps");
    for agent in ps.as_array().into_iter().flatten() {
        assert_eq!(agent["state"], "succeeded", "{agent}");
        assert!(agent["merge_state"].is_null(), "merged before `corral merge`: {agent}");
    }
    names
}

fn check_result(scratch: &Scratch, repo: &Path, start: &str, names: &[String], git_tree: &str) {
    for name in names {
        let shown = Command::new("git")
            .args(["show", &format!("main:agents/{name}.txt")])
            .current_dir(repo)
            .output()
            .expect("git runs");
        assert!(shown.status.success(), "agents/{name}.txt is not on main");
    }
    assert_ne!(git_out(scratch, repo, &["rev-parse", "main"]), start);
    let tree = git_out(scratch, repo, &["rev-parse", "main^{tree}"]);
    assert_eq!(tree, git_tree, "corral's main differs from git's");
    let status = git_out(scratch, repo, &["status", "--porcelain"]);
    assert_eq!(status, "", "the checkout is not clean after the merges");
}

/// The daemon's share of the merges, from the events.
struct DaemonShare {
    /// `merge_started` -> `merged`, ms, per merge.
    apply: Vec<f64>,
    /// `merge_queued` -> `merged`, ms, per merge.
    queued: Vec<f64>,
}

impl DaemonShare {
    fn print(&self, out: &mut String) {
        for (name, values) in [("merge_started -> merged", &self.apply), ("merge_queued -> merged", &self.queued)] {
            if values.is_empty() {
                out.push_str(&format!("  {name}: no events\n"));
                continue;
            }
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            out.push_str(&format!(
                "  {name:<24} (events' ts) p50 {:.1}  p90 {:.1}  max {:.1} ms; sum {:.1} ms\n",
                percentile(&sorted, 50.0),
                percentile(&sorted, 90.0),
                sorted[sorted.len() - 1],
                sorted.iter().sum::<f64>()
            ));
        }
    }
}

fn daemon_share(scratch: &Scratch, bin: &Path, repo: &Path) -> DaemonShare {
    let out = scratch.corral(bin, repo, &["events"]);
    let text = expect_ok(&out, "corral events");
    let events: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let ts = |e: &Value| {
        e["ts"].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()).map(|t| t.timestamp_micros())
    };
    let mut share = DaemonShare { apply: Vec::new(), queued: Vec::new() };
    let mut started = std::collections::HashMap::new();
    let mut queued = std::collections::HashMap::new();
    for event in &events {
        let agent = event["agent"].as_str().unwrap_or("").to_string();
        match event["type"].as_str().unwrap_or("") {
            "merge_queued" => {
                queued.insert(agent, ts(event));
            }
            "merge_started" => {
                started.insert(agent, ts(event));
            }
            "merged" => {
                let end = ts(event);
                if let (Some(Some(a)), Some(b)) = (started.get(&agent), end) {
                    share.apply.push((b - a) as f64 / 1000.0);
                }
                if let (Some(Some(a)), Some(b)) = (queued.get(&agent), end) {
                    share.queued.push((b - a) as f64 / 1000.0);
                }
            }
            _ => {}
        }
    }
    share
}

// ---- processes -------------------------------------------------------------------

/// Live processes (not this one) whose environment holds `needle`.
fn processes_with(needle: &str) -> Vec<u32> {
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

/// SIGKILLs every marked process until none is left; returns how many.
fn kill_marked(id: &str) -> usize {
    let needle = format!("{MARKER}={id}");
    let mut killed = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = processes_with(&needle);
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
    reap_children();
    killed.len()
}

/// Reaps whatever children (adopted orphans included) have exited.
fn reap_children() {
    loop {
        // SAFETY: waitpid with WNOHANG on any child; no memory is shared.
        let pid = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if pid <= 0 {
            break;
        }
    }
}

/// On SIGINT, SIGTERM or SIGHUP: kill what the bench started, remove the
/// scratch folder, exit.
fn install_interrupt_cleanup(id: String, root: PathBuf) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else { return };
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            eprintln!("merge_queue bench: signal {signal}: killing what it started and removing {}", root.display());
            kill_marked(&id);
            let _ = std::fs::remove_dir_all(&root);
            std::process::exit(128 + signal);
        }
    });
}

// ---- the scratch folder ------------------------------------------------------------

struct Scratch {
    id: String,
    root: Option<tempfile::TempDir>,
    path: PathBuf,
}

struct Cleanup {
    killed: usize,
    left: usize,
    scratch_exists: bool,
}

impl Scratch {
    fn new() -> Scratch {
        let root = tempfile::Builder::new().prefix("corral-merge-bench-").tempdir().expect("a temporary folder");
        let path = root.path().to_path_buf();
        let id = format!("{}-{}", std::process::id(), path.file_name().unwrap().to_string_lossy());
        Scratch { id, root: Some(root), path }
    }

    /// A corral command for `repo`, marked, with its worktrees in the scratch folder.
    fn command(&self, bin: &Path, repo: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(bin);
        command
            .args(args)
            .current_dir(repo)
            .env("CORRAL_WORKTREE_ROOT", self.path.join("corral-worktrees"))
            .env(MARKER, &self.id)
            .env_remove("CORRAL_ADDRESS")
            .env_remove("CORRAL_SOCKET")
            .env_remove("CORRAL_PARENT")
            .stdin(Stdio::null());
        command
    }

    fn corral(&self, bin: &Path, repo: &Path, args: &[&str]) -> Output {
        self.command(bin, repo, args).output().expect("corral runs")
    }

    /// Runs git in `repo`; panics on failure.
    fn git(&self, repo: &Path, args: &[&str]) {
        let out = Command::new("git")
            .args(["-c", "user.name=corral bench", "-c", "user.email=bench@corral.invalid"])
            .args(args)
            .current_dir(repo)
            .env(MARKER, &self.id)
            .stdin(Stdio::null())
            .output()
            .expect("git runs");
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Shuts the daemons down, kills everything marked, removes the folder.
    fn cleanup(&mut self, bin: &Path) -> Cleanup {
        for repo in ["repo", "repo2"] {
            let repo = self.path.join(repo);
            if repo.join(".git/corral").exists() {
                let _ = self.command(bin, &repo, &["shutdown"]).output();
            }
        }
        let killed = kill_marked(&self.id);
        if let Some(root) = self.root.take() {
            if let Err(err) = root.close() {
                eprintln!("merge_queue bench: cannot remove {}: {err}", self.path.display());
            }
        }
        let left = processes_with(&format!("{MARKER}={}", self.id)).len();
        Cleanup { killed, left, scratch_exists: self.path.exists() }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.root.is_some() {
            eprintln!("merge_queue bench: cleaning up {}", self.path.display());
            let bin = corral_bin();
            self.cleanup(&bin);
        }
    }
}

// ---- helpers -----------------------------------------------------------------------

fn git_out(scratch: &Scratch, repo: &Path, args: &[&str]) -> String {
    let out = Command::new("git").args(args).current_dir(repo).env(MARKER, &scratch.id).output().expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
