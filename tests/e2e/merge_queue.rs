//! Merge back (issue 6): agents' branches onto their target through one
//! merge queue, with gates and strategies, and never a lost commit.
//!
//! Each test runs the built `corral` binary on its own scratch repository
//! (`TestRepo`), whose main checkout has `main` checked out: the person's
//! checkout, which corral must leave exactly as after a `git merge`, or
//! not touch at all when it holds uncommitted changes. Agents are the
//! scripted fake agent; they hold on a `wait-file` after their work so the
//! test can record their commits before anything is merged, then release
//! them together so the merges really queue.
//!
//! Every test ends with the invariant of the issue: every commit any agent
//! made (recorded from the branches and their reflogs before and after the
//! merges) is reachable from the target or from a branch corral kept, and
//! again after `corral gc`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use corral_e2e::{alive, corral_bin, poll_until, TestRepo, PATIENCE};
use serde_json::Value;

/// For the runs with many agents on a loaded 2-core machine.
const LONG: Duration = Duration::from_secs(300);

/// States where an auto merge has settled (`corral wait` returns).
const SETTLED: [&str; 5] = ["merged", "conflict", "gate_failed", "waiting", "refused"];
/// Events of the merge queue.
const MERGE_EVENTS: [&str; 7] =
    ["merge_queued", "merge_started", "merged", "conflict", "gate_failed", "merge_waiting", "merge_refused"];

// ---- helpers ------------------------------------------------------------------

fn task_of(name: &str) -> String {
    format!("the work of {name}")
}

/// Spawns the fake agent `name` with `flags` (`--merge auto`,
/// `--strategy ...`, `--gate ...`) before `--`; returns the spawn's JSON.
fn spawn(repo: &TestRepo, name: &str, flags: &[&str], script: &str) -> Value {
    let bin = corral_bin();
    let task = task_of(name);
    let mut args = vec!["spawn", name, "--task", &task, "--json"];
    args.extend_from_slice(flags);
    args.extend(["--", bin.to_str().unwrap(), "fake-agent", script]);
    repo.corral_json(&args)
}

/// git in any folder; `None` when it fails.
fn git_in(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(["-c", "user.name=corral test", "-c", "user.email=test@corral.invalid"])
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("git runs");
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn rev(repo: &TestRepo, name: &str) -> String {
    repo.git(&["rev-parse", "--verify", &format!("{name}^{{commit}}")]).trim().to_string()
}

fn try_rev(repo: &TestRepo, name: &str) -> Option<String> {
    git_in(&repo.repo, &["rev-parse", "--verify", "-q", &format!("{name}^{{commit}}")]).map(|s| s.trim().to_string())
}

/// The file at `path` in commit `rev`, or `None`.
fn show(repo: &TestRepo, rev: &str, path: &str) -> Option<String> {
    git_in(&repo.repo, &["show", &format!("{rev}:{path}")])
}

fn parents(repo: &TestRepo, rev: &str) -> Vec<String> {
    let line = repo.git(&["rev-list", "--parents", "-n", "1", rev]);
    line.split_whitespace().skip(1).map(str::to_string).collect()
}

fn is_ancestor(repo: &TestRepo, ancestor: &str, of: &str) -> bool {
    git_in(&repo.repo, &["merge-base", "--is-ancestor", ancestor, of]).is_some()
}

/// The person's checkout: `git status --porcelain` (untracked included).
fn status(repo: &TestRepo) -> String {
    repo.git(&["status", "--porcelain", "--untracked-files=all"])
}

fn branches(repo: &TestRepo) -> BTreeSet<String> {
    repo.git(&["for-each-ref", "--format=%(refname:short)", "refs/heads/"]).lines().map(str::to_string).collect()
}

fn all_events(repo: &TestRepo) -> Vec<Value> {
    repo.corral_ok(&["events"])
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn merge_events(repo: &TestRepo) -> Vec<Value> {
    all_events(repo).into_iter().filter(|e| MERGE_EVENTS.contains(&e["type"].as_str().unwrap_or(""))).collect()
}

fn events_of(repo: &TestRepo, address: &str, kind: &str) -> Vec<Value> {
    all_events(repo).into_iter().filter(|e| e["agent"] == address && e["type"] == kind).collect()
}

/// The agent's `merge_state.state`, if any.
fn merge_state(agent: &Value) -> Option<String> {
    agent["merge_state"]["state"].as_str().map(str::to_string)
}

/// What a failing assertion should show: every agent's state and merge
/// state, and the merge events.
fn diagnose(repo: &TestRepo) -> String {
    let mut out = String::from("agents:\n");
    for agent in repo.agents() {
        out.push_str(&format!(
            "  {} state={} merge={} merge_state={}\n",
            agent["address"], agent["state"], agent["merge"], agent["merge_state"]
        ));
    }
    let mut waiting = 0;
    out.push_str("merge events:\n");
    for event in merge_events(repo) {
        // A waiting merge journals one event per retry: show the first few.
        if event["type"] == "merge_waiting" {
            waiting += 1;
            if waiting > 3 {
                continue;
            }
        }
        out.push_str(&format!("  {event}\n"));
    }
    if waiting > 3 {
        out.push_str(&format!("  ... {waiting} merge_waiting events in all\n"));
    }
    out.push_str(&format!("main: {:?}\n", try_rev(repo, "main")));
    let status = git_in(&repo.repo, &["status", "--porcelain", "--untracked-files=all"]);
    let status = status.unwrap_or_else(|| "(git status failed)".to_string());
    let lines: Vec<&str> = status.lines().collect();
    out.push_str(&format!("git status ({} lines): {:?}\n", lines.len(), &lines[..lines.len().min(50)]));
    out.push_str(&format!("lock files in .git: {:?}\n", lock_files(&repo.repo.join(".git"))));
    out
}

/// Every `*.lock` file under `dir`.
fn lock_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(lock_files(&path));
        } else if path.extension().is_some_and(|e| e == "lock") {
            found.push(path);
        }
    }
    found
}

/// Polls `corral ps` every 100 ms until `condition` holds for the agents;
/// on timeout panics with what it was waiting for and the diagnosis.
fn poll_agents(repo: &TestRepo, what: &str, timeout: Duration, mut condition: impl FnMut(&[Value]) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let agents = repo.agents();
        if condition(&agents) {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}\n{}", diagnose(repo));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn poll_merge_state(repo: &TestRepo, address: &str, want: &str, timeout: Duration) {
    poll_agents(repo, &format!("{address} to reach merge state {want}"), timeout, |agents| {
        agents.iter().any(|a| a["address"] == address && merge_state(a).as_deref() == Some(want))
    });
}

/// `corral wait NAMES... --timeout T --json`: the exit code and stdout.
fn wait(repo: &TestRepo, names: &[&str], timeout: Duration) -> (Option<i32>, String) {
    let secs = timeout.as_secs().to_string();
    let mut args = vec!["wait"];
    args.extend_from_slice(names);
    args.extend(["--timeout", &secs, "--json"]);
    let out = repo.corral(&args);
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn assert_wait(repo: &TestRepo, names: &[&str], timeout: Duration, code: i32) {
    let (got, out) = wait(repo, names, timeout);
    assert_eq!(got, Some(code), "corral wait {names:?}: expected exit {code}\n{out}\n{}", diagnose(repo));
}

/// Waits until the agent printed `what` (its log, from the state folder).
fn poll_log(repo: &TestRepo, address: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !String::from_utf8_lossy(&repo.log(address)).contains(what) {
        let state = repo.agent(address)["state"].as_str().unwrap_or("").to_string();
        assert!(
            state == "running" || state == "pending" || String::from_utf8_lossy(&repo.log(address)).contains(what),
            "{address} ended ({state}) without printing {what:?}; its log: {:?}",
            String::from_utf8_lossy(&repo.log(address))
        );
        assert!(
            Instant::now() < deadline,
            "{address} never printed {what:?}; its log: {:?}\n{}",
            String::from_utf8_lossy(&repo.log(address)),
            diagnose(repo)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every commit on corral's branches now: the commits of each branch that
/// the first commit lacks, and every tip its reflog remembers.
fn agent_commits(repo: &TestRepo, first: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for branch in branches(repo).into_iter().filter(|b| b.starts_with("corral/")) {
        let full = format!("refs/heads/{branch}");
        if let Some(list) = git_in(&repo.repo, &["rev-list", &format!("{first}..{full}")]) {
            found.extend(list.lines().map(str::to_string));
        }
        if let Some(log) = git_in(&repo.repo, &["log", "-g", "--format=%H", &full]) {
            for tip in log.lines() {
                if let Some(list) = git_in(&repo.repo, &["rev-list", &format!("{first}..{tip}")]) {
                    found.extend(list.lines().map(str::to_string));
                }
            }
        }
    }
    found
}

/// The issue's invariant: every recorded commit is reachable from a
/// branch (the target, or a branch corral kept).
fn assert_nothing_lost(repo: &TestRepo, recorded: &BTreeSet<String>, when: &str) {
    let reachable: BTreeSet<String> = repo.git(&["rev-list", "--branches"]).lines().map(str::to_string).collect();
    let lost: Vec<&String> = recorded.iter().filter(|c| !reachable.contains(*c)).collect();
    assert!(
        lost.is_empty(),
        "{when}: {} agent commit(s) reachable from no branch: {lost:?}\nbranches: {:?}\n{}",
        lost.len(),
        branches(repo),
        diagnose(repo)
    );
}

/// Branch names in a `gc --json` list (strings, or objects naming a branch).
fn names_in(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| match item {
                    Value::String(s) => Some(s.clone()),
                    other => other["branch"].as_str().or(other["name"].as_str()).map(str::to_string),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every branch a `gc --json` says it deleted: a top-level
/// `deleted_branches`, or `deleted_branch` on its entries.
fn deleted_by(gc: &Value) -> Vec<String> {
    let mut deleted = names_in(&gc["deleted_branches"]);
    for list in [&gc["removed"], &gc["kept"]] {
        for entry in list.as_array().into_iter().flatten() {
            if let Some(branch) = entry["deleted_branch"].as_str() {
                deleted.push(branch.to_string());
            }
            deleted.extend(names_in(&entry["deleted_branches"]));
        }
    }
    deleted
}

fn addresses_in(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|items| items.iter().filter_map(|i| i["address"].as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// Asserts merge start/end events never interleave: between an agent's
/// `merge_started` and the end of that merge, no other merge starts or
/// ends. (A conflict or refusal found before anything moves may come
/// without a `merge_started`; a gate runs before the queue.)
fn assert_one_at_a_time(events: &[Value]) {
    let mut open: Option<&Value> = None;
    for event in events {
        let agent = &event["agent"];
        match event["type"].as_str().unwrap_or("") {
            "merge_started" => {
                assert!(open.is_none(), "{event}\nstarted while this merge had not ended: {}", open.unwrap());
                open = Some(event);
            }
            "merged" | "conflict" | "merge_waiting" | "merge_refused" => {
                if let Some(started) = open {
                    assert_eq!(&started["agent"], agent, "{event}\nended while this merge was in progress: {started}");
                    open = None;
                }
            }
            _ => {}
        }
    }
}

/// Files of the person's checkout, byte for byte.
fn read_files(repo: &TestRepo, names: &[&str]) -> BTreeMap<String, Vec<u8>> {
    names.iter().map(|n| (n.to_string(), std::fs::read(repo.repo.join(n)).unwrap_or_default())).collect()
}

/// The main checkout holds exactly the tree of `main`: clean status (bar
/// the untracked files listed) and every tracked file's bytes as in main.
fn assert_checkout_matches_main(repo: &TestRepo, untracked: &[&str]) {
    let head = repo.git(&["symbolic-ref", "HEAD"]);
    assert_eq!(head.trim(), "refs/heads/main", "HEAD no longer follows main");
    let expected: String = untracked.iter().map(|u| format!("?? {u}\n")).collect();
    assert_eq!(status(repo), expected, "the person's checkout is not as after a git merge");
    for path in repo.git(&["ls-tree", "-r", "--name-only", "main"]).lines() {
        let on_disk = std::fs::read(repo.repo.join(path)).unwrap_or_default();
        let in_main = git_in(&repo.repo, &["show", &format!("main:{path}")]).unwrap_or_default();
        assert_eq!(String::from_utf8_lossy(&on_disk), in_main, "{path} in the checkout differs from main");
    }
}

fn commit_file(repo: &TestRepo, path: &str, text: &str, message: &str) -> String {
    std::fs::write(repo.repo.join(path), text).unwrap();
    repo.git(&["add", path]);
    repo.git(&["commit", "-q", "-m", message]);
    rev(repo, "HEAD")
}

fn touch(path: &Path) {
    std::fs::write(path, "").unwrap();
}

// ---- 1. twenty agents, different files ----------------------------------------

#[test]
fn twenty_agents_on_different_files_all_merge_one_at_a_time() {
    let repo = TestRepo::new();
    let first = rev(&repo, "main");
    let go = repo.path("go");
    let names: Vec<String> = (1..=20).map(|i| format!("w{i:02}")).collect();
    let leaves_uncommitted = |i: usize| i.rem_euclid(3) == 0;
    for (i, name) in names.iter().enumerate() {
        let file = format!("file-{i:02}.txt");
        let script = if leaves_uncommitted(i) {
            format!("write {file} 'change of {name}'; print done; wait-file {}; exit 0", go.display())
        } else {
            format!(
                "write {file} 'change of {name}'; commit 'add {file}'; print done; wait-file {}; exit 0",
                go.display()
            )
        };
        let spawned = spawn(&repo, name, &["--merge", "auto"], &script);
        assert_eq!(spawned["address"], format!("/root/{name}"));
    }
    for name in &names {
        poll_log(&repo, &format!("/root/{name}"), "done");
    }
    let mut recorded = agent_commits(&repo, &first);
    assert_eq!(recorded.len(), names.len() - (0..names.len()).filter(|i| leaves_uncommitted(*i)).count());
    for agent in repo.agents() {
        assert_eq!(agent["merge"]["policy"], "auto", "{agent}");
        assert_eq!(agent["merge"]["target"], "main", "{agent}");
        assert_eq!(agent["merge"]["strategy"], "merge", "{agent}");
        assert!(agent["merge_state"].is_null(), "a merge state before the agent ended: {agent}");
    }
    assert_eq!(rev(&repo, "main"), first, "main moved before any agent ended");

    touch(&go);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_wait(&repo, &refs, LONG, 0);

    let agents = repo.agents();
    for (i, name) in names.iter().enumerate() {
        let address = format!("/root/{name}");
        let agent = agents.iter().find(|a| a["address"] == address.as_str()).unwrap();
        assert_eq!(agent["state"], "succeeded", "{agent}");
        assert_eq!(merge_state(agent).as_deref(), Some("merged"), "{agent}\n{}", diagnose(&repo));
        let file = format!("file-{i:02}.txt");
        assert_eq!(show(&repo, "main", &file).as_deref(), Some(format!("change of {name}\n").as_str()), "{file}");
        let commit = agent["merge_state"]["commit"].as_str().unwrap_or_else(|| panic!("no commit: {agent}"));
        assert!(is_ancestor(&repo, commit, "main"), "{address}'s merge commit {commit} is not on main");
        if leaves_uncommitted(i) {
            // The leftover commit on the agent's branch names the agent and its task.
            let message = repo.git(&["log", "-1", "--format=%B", &format!("corral/root/{name}")]);
            assert!(message.contains(name.as_str()), "leftover commit message does not name {name}: {message:?}");
            assert!(message.contains(&task_of(name)), "leftover commit message does not name the task: {message:?}");
            let worktree = PathBuf::from(agent["worktree"].as_str().unwrap());
            assert_eq!(git_in(&worktree, &["status", "--porcelain"]).as_deref(), Some(""), "{address} left dirty");
        }
    }
    assert_checkout_matches_main(&repo, &[]);

    // One merge at a time, each agent queued, started and merged once.
    let events = merge_events(&repo);
    assert_one_at_a_time(&events);
    for name in &names {
        let address = format!("/root/{name}");
        for kind in ["merge_queued", "merge_started", "merged"] {
            let n = events.iter().filter(|e| e["agent"] == address.as_str() && e["type"] == kind).count();
            assert_eq!(n, 1, "{address}: {n} {kind} events\n{}", diagnose(&repo));
        }
    }
    for started in events.iter().filter(|e| e["type"] == "merge_started") {
        assert_eq!(started["target"], "main", "{started}");
        assert_eq!(started["strategy"], "merge", "{started}");
        assert!(started["old"].is_string() && started["new"].is_string(), "{started}");
    }
    // Each merge began where the previous one left the target.
    let mut at = first.clone();
    for event in events.iter().filter(|e| e["type"] == "merge_started" || e["type"] == "merged") {
        if event["type"] == "merge_started" {
            assert_eq!(event["old"].as_str(), Some(at.as_str()), "{event}");
        } else {
            at = event["commit"].as_str().unwrap().to_string();
        }
    }
    assert_eq!(at, rev(&repo, "main"));

    recorded.extend(agent_commits(&repo, &first));
    assert_nothing_lost(&repo, &recorded, "after the merges");
    let gc = repo.corral_json(&["gc", "--json"]);
    assert_nothing_lost(&repo, &recorded, "after gc");
    // Every branch is merged (its tip is on main): gc may delete them all.
    assert!(addresses_in(&gc["kept"]).is_empty(), "{gc}");
}

// ---- 2. ten agents, the same line ---------------------------------------------

#[test]
fn ten_agents_on_the_same_line_one_merges_the_others_conflict_intact() {
    let repo = TestRepo::new();
    commit_file(&repo, "shared.txt", "the shared line\n", "shared");
    let first = rev(&repo, "main");
    let go = repo.path("go");
    let names: Vec<String> = (1..=10).map(|i| format!("s{i:02}")).collect();
    let mut spawned = BTreeMap::new();
    for name in &names {
        let script = format!(
            "write shared.txt 'line of {name}'; commit 'edit of {name}'; print done; wait-file {}",
            go.display()
        );
        spawned.insert(name.clone(), spawn(&repo, name, &["--merge", "auto"], &script));
    }
    for name in &names {
        poll_log(&repo, &format!("/root/{name}"), "done");
    }
    let tips: BTreeMap<String, String> =
        names.iter().map(|n| (n.clone(), rev(&repo, &format!("corral/root/{n}")))).collect();
    let recorded = agent_commits(&repo, &first);

    touch(&go);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_wait(&repo, &refs, LONG, 27);

    let agents = repo.agents();
    let state_of = |name: &str| {
        let agent = agents.iter().find(|a| a["address"] == format!("/root/{name}")).unwrap();
        (merge_state(agent), agent.clone())
    };
    let merged: Vec<&String> = names.iter().filter(|n| state_of(n).0.as_deref() == Some("merged")).collect();
    assert_eq!(merged.len(), 1, "exactly one merges\n{}", diagnose(&repo));
    let winner = merged[0];
    // The first merge to end is the one that merged.
    let events = merge_events(&repo);
    assert_one_at_a_time(&events);
    let first_end = events.iter().find(|e| ["merged", "conflict"].contains(&e["type"].as_str().unwrap())).unwrap();
    assert_eq!(first_end["type"], "merged", "the first merge to end did not merge: {first_end}");
    assert_eq!(first_end["agent"], format!("/root/{winner}"));
    assert_eq!(show(&repo, "main", "shared.txt"), Some(format!("line of {winner}\n")));
    assert_checkout_matches_main(&repo, &[]);

    for name in names.iter().filter(|n| *n != winner) {
        let (state, agent) = state_of(name);
        assert_eq!(state.as_deref(), Some("conflict"), "{agent}");
        assert_eq!(agent["merge_state"]["files"], serde_json::json!(["shared.txt"]), "{agent}");
        let conflict = events_of(&repo, &format!("/root/{name}"), "conflict");
        assert_eq!(conflict.len(), 1, "{conflict:?}");
        assert_eq!(conflict[0]["files"], serde_json::json!(["shared.txt"]), "{}", conflict[0]);
        // Branch and worktree intact.
        assert_eq!(rev(&repo, &format!("corral/root/{name}")), tips[name], "{name}'s branch moved");
        let worktree = PathBuf::from(spawned[name]["worktree"].as_str().unwrap());
        assert!(worktree.is_dir(), "{name}'s worktree is gone");
        assert_eq!(std::fs::read_to_string(worktree.join("shared.txt")).unwrap(), format!("line of {name}\n"));
        assert_eq!(git_in(&worktree, &["status", "--porcelain"]).as_deref(), Some(""), "{name}'s worktree changed");
        assert_eq!(git_in(&worktree, &["rev-parse", "HEAD"]).unwrap().trim(), tips[name]);
    }
    // main moved exactly once, by the winner.
    assert_eq!(repo.git(&["rev-list", "--count", &format!("{first}..main")]).trim(), "1");

    // `corral ps` shows the merge state in STATE.
    let ps = repo.corral_ok(&["ps"]);
    let line = ps.lines().find(|l| l.contains(&format!("/root/{}", names.iter().find(|n| *n != winner).unwrap())));
    assert!(line.is_some_and(|l| l.contains("conflict")), "ps does not show the conflict:\n{ps}");

    assert_nothing_lost(&repo, &recorded, "after the merges");
    let gc = repo.corral_json(&["gc", "--json"]);
    assert_nothing_lost(&repo, &recorded, "after gc");
    let deleted = deleted_by(&gc);
    for name in names.iter().filter(|n| *n != winner) {
        let branch = format!("corral/root/{name}");
        assert!(!deleted.contains(&branch), "gc deleted the unmerged {branch}: {gc}");
        assert!(branches(&repo).contains(&branch), "gc deleted the unmerged {branch}: {gc}");
    }

    // --force deletes the unmerged branches, naming each.
    let out = repo.corral_ok(&["gc", "--force"]);
    for name in names.iter().filter(|n| *n != winner) {
        let branch = format!("corral/root/{name}");
        if !branches(&repo).contains(&branch) {
            assert!(out.contains(&branch), "gc --force deleted {branch} without naming it:\n{out}");
        }
    }
}

// ---- 3. the person's checkout with uncommitted changes -----------------------

#[test]
fn a_dirty_target_checkout_is_left_byte_for_byte_and_the_merge_waits() {
    let repo = TestRepo::new();
    std::fs::write(repo.repo.join("a.txt"), "a as committed\n").unwrap();
    std::fs::write(repo.repo.join("b.txt"), "b as committed\n").unwrap();
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", "-m", "a and b"]);
    let first = rev(&repo, "main");
    let go = repo.path("go");
    spawn(
        &repo,
        "editor",
        &["--merge", "auto"],
        &format!(
            "write a.txt 'a by the agent'; write c.txt 'c by the agent'; commit 'agent edits'; wait-file {}",
            go.display()
        ),
    );
    poll_agents(&repo, "the agent's commit", PATIENCE, |_| try_rev(&repo, "corral/root/editor") != Some(first.clone()));
    let recorded = agent_commits(&repo, &first);

    // The person edits a.txt (the agent changes it too) and b.txt (it does
    // not), stages part of it, and keeps an untracked note.
    std::fs::write(repo.repo.join("a.txt"), "a: the person's unsaved work\r\nno newline at the end").unwrap();
    std::fs::write(repo.repo.join("b.txt"), "b: staged\n").unwrap();
    repo.git(&["add", "b.txt"]);
    std::fs::write(repo.repo.join("b.txt"), "b: staged, then edited again\n").unwrap();
    std::fs::write(repo.repo.join("notes.txt"), "the person's notes\n").unwrap();
    let files = ["a.txt", "b.txt", "notes.txt", "README.md"];
    let before = read_files(&repo, &files);
    let status_before = status(&repo);
    let index_before = repo.git(&["ls-files", "-s"]);

    touch(&go);
    poll_merge_state(&repo, "/root/editor", "waiting", LONG);
    let agent = repo.agent("/root/editor");
    assert_eq!(agent["state"], "succeeded", "{agent}");
    let waiting = events_of(&repo, "/root/editor", "merge_waiting");
    assert!(!waiting.is_empty());
    let named = waiting[0]["files"].as_array().map(|f| f.iter().filter_map(Value::as_str).collect::<Vec<_>>());
    assert!(named.as_ref().is_some_and(|f| f.contains(&"a.txt")), "merge_waiting does not name a.txt: {}", waiting[0]);
    assert!(waiting[0]["why"].as_str().is_some_and(|w| !w.is_empty()), "{}", waiting[0]);
    assert_eq!(agent["merge_state"]["files"], waiting[0]["files"], "{agent}");
    assert_wait(&repo, &["editor"], PATIENCE, 29);
    let ps = repo.corral_ok(&["ps"]);
    assert!(ps.lines().any(|l| l.contains("/root/editor") && l.contains("waiting")), "{ps}");

    // Several retries later (every 2 s), nothing of the person's changed.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(read_files(&repo, &files), before, "the person's files changed");
    assert_eq!(status(&repo), status_before);
    assert_eq!(repo.git(&["ls-files", "-s"]), index_before, "the person's index changed");
    assert_eq!(rev(&repo, "main"), first, "main moved under a dirty checkout");
    assert_eq!(merge_state(&repo.agent("/root/editor")).as_deref(), Some("waiting"));

    // The person commits b.txt: a.txt is still dirty, so it still waits.
    repo.git(&["add", "b.txt"]);
    repo.git(&["commit", "-q", "-m", "the person's b"]);
    let person = rev(&repo, "main");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(rev(&repo, "main"), person);
    assert_eq!(std::fs::read(repo.repo.join("a.txt")).unwrap(), before["a.txt"]);
    assert_eq!(merge_state(&repo.agent("/root/editor")).as_deref(), Some("waiting"), "{}", diagnose(&repo));

    // The person reverts a.txt: the merge goes through by itself.
    repo.git(&["checkout", "--", "a.txt"]);
    poll_merge_state(&repo, "/root/editor", "merged", LONG);
    assert_wait(&repo, &["editor"], PATIENCE, 0);
    assert_eq!(parents(&repo, "main"), vec![person.clone(), rev(&repo, "corral/root/editor")]);
    assert_eq!(show(&repo, "main", "a.txt").as_deref(), Some("a by the agent\n"));
    assert_eq!(show(&repo, "main", "b.txt").as_deref(), Some("b: staged, then edited again\n"));
    assert_eq!(show(&repo, "main", "c.txt").as_deref(), Some("c by the agent\n"));
    assert_checkout_matches_main(&repo, &["notes.txt"]);
    assert_eq!(std::fs::read(repo.repo.join("notes.txt")).unwrap(), before["notes.txt"]);
    assert_nothing_lost(&repo, &recorded, "after the merge");
}

// ---- 4. a failing gate ----------------------------------------------------------

#[test]
fn a_failing_gate_gives_gate_failed_with_its_output_and_merges_nothing() {
    let repo = TestRepo::new();
    let first = rev(&repo, "main");
    spawn(
        &repo,
        "gated",
        &["--merge", "auto", "--gate", "echo gate ran in $(pwd); echo 'tests: 3 failed' >&2; exit 3"],
        "write g.txt gated; commit 'gated change'",
    );
    assert_wait(&repo, &["gated"], PATIENCE, 28);
    let agent = repo.agent("/root/gated");
    assert_eq!(agent["state"], "succeeded", "{agent}");
    assert_eq!(merge_state(&agent).as_deref(), Some("gate_failed"), "{agent}");
    let output = agent["merge_state"]["output"].as_str().unwrap_or_else(|| panic!("no output: {agent}"));
    assert!(output.contains("tests: 3 failed"), "{output:?}");
    // The gate ran in the agent's worktree.
    let ran_in = output.lines().find_map(|l| l.strip_prefix("gate ran in ")).unwrap_or_else(|| panic!("{output:?}"));
    let worktree = PathBuf::from(agent["worktree"].as_str().unwrap());
    assert_eq!(Path::new(ran_in).canonicalize().unwrap(), worktree.canonicalize().unwrap());
    let events = events_of(&repo, "/root/gated", "gate_failed");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["code"], 3, "{}", events[0]);
    assert!(events[0]["output"].as_str().is_some_and(|o| o.contains("tests: 3 failed")), "{}", events[0]);
    assert!(events_of(&repo, "/root/gated", "merged").is_empty());
    assert!(events_of(&repo, "/root/gated", "merge_started").is_empty(), "a merge started after a failed gate");
    // Nothing merged.
    assert_eq!(rev(&repo, "main"), first);
    assert_eq!(show(&repo, "main", "g.txt"), None);
    assert_checkout_matches_main(&repo, &[]);
    assert!(repo.git(&["log", "--format=%s", "corral/root/gated"]).contains("gated change"));
    assert!(worktree.is_dir());
    assert_nothing_lost(&repo, &agent_commits(&repo, &first), "after the failed gate");

    // A passing gate sees the leftovers already committed.
    spawn(
        &repo,
        "passes",
        &["--merge", "auto", "--gate", "test -z \"$(git status --porcelain)\" && git cat-file -e HEAD:left.txt"],
        "write left.txt 'left uncommitted'",
    );
    assert_wait(&repo, &["passes"], PATIENCE, 0);
    assert_eq!(merge_state(&repo.agent("/root/passes")).as_deref(), Some("merged"), "{}", diagnose(&repo));
    assert_eq!(show(&repo, "main", "left.txt").as_deref(), Some("left uncommitted\n"));
}

#[test]
fn a_gate_runs_in_the_agent_s_environment_not_the_daemon_s() {
    // The daemon starts first, from an environment without the setting
    // (as a daemon a cron job started has cron's PATH); the agent is
    // spawned from one with it, and its gate needs it.
    let repo = TestRepo::new();
    repo.corral_ok(&["ps"]);
    let bin = corral_bin();
    let task = task_of("envgate");
    let out = repo
        .command()
        .env("MERGE_GATE_SETTING", "from the spawner")
        .args(["spawn", "envgate", "--task", &task, "--merge", "auto", "--gate"])
        .arg("test \"$MERGE_GATE_SETTING\" = 'from the spawner'")
        .args(["--", bin.to_str().unwrap(), "fake-agent", "write e.txt env; commit 'env change'"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_wait(&repo, &["envgate"], PATIENCE, 0);
    assert_eq!(merge_state(&repo.agent("/root/envgate")).as_deref(), Some("merged"), "{}", diagnose(&repo));
    assert_eq!(show(&repo, "main", "e.txt").as_deref(), Some("env\n"));
}

// ---- 5. each strategy's history -----------------------------------------------

#[test]
fn ff_only_fast_forwards_and_is_refused_when_the_target_moved_on() {
    let repo = TestRepo::new();
    let first = rev(&repo, "main");
    let (go_a, go_b) = (repo.path("go-a"), repo.path("go-b"));
    let flags = ["--merge", "auto", "--strategy", "ff-only"];
    spawn(&repo, "ffa", &flags, &format!("write a.txt a; commit 'ff a'; wait-file {}", go_a.display()));
    spawn(&repo, "ffb", &flags, &format!("write b.txt b; commit 'ff b'; wait-file {}", go_b.display()));
    poll_log(&repo, "/root/ffa", "commit ok");
    poll_log(&repo, "/root/ffb", "commit ok");
    let recorded = agent_commits(&repo, &first);
    assert_eq!(repo.agent("/root/ffa")["merge"]["strategy"], "ff-only");

    touch(&go_a);
    assert_wait(&repo, &["ffa"], PATIENCE, 0);
    assert_eq!(rev(&repo, "main"), rev(&repo, "corral/root/ffa"), "ff-only did not fast-forward");
    assert_eq!(parents(&repo, "main"), vec![first.clone()]);
    assert_checkout_matches_main(&repo, &[]);

    let moved = rev(&repo, "main");
    let tip_b = rev(&repo, "corral/root/ffb");
    touch(&go_b);
    assert_wait(&repo, &["ffb"], PATIENCE, 30);
    let agent = repo.agent("/root/ffb");
    assert_eq!(merge_state(&agent).as_deref(), Some("refused"), "{agent}");
    assert!(agent["merge_state"]["why"].as_str().is_some_and(|w| !w.is_empty()), "{agent}");
    let refused = events_of(&repo, "/root/ffb", "merge_refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0]["why"].as_str().is_some_and(|w| !w.is_empty()), "{}", refused[0]);
    assert_eq!(rev(&repo, "main"), moved, "a refused merge moved main");
    assert_eq!(rev(&repo, "corral/root/ffb"), tip_b);
    assert_nothing_lost(&repo, &recorded, "after ff-only");
    repo.corral_json(&["gc", "--json"]);
    assert_nothing_lost(&repo, &recorded, "after gc");
    assert!(branches(&repo).contains("corral/root/ffb"), "gc deleted the refused branch");
}

#[test]
fn merge_fast_forwards_when_it_can_and_else_makes_a_two_parent_merge_commit() {
    let repo = TestRepo::new();
    let first = rev(&repo, "main");
    let (go_a, go_b) = (repo.path("go-a"), repo.path("go-b"));
    let flags = ["--merge", "auto", "--strategy", "merge"];
    spawn(&repo, "ma", &flags, &format!("write a.txt a; commit 'merge a'; wait-file {}", go_a.display()));
    spawn(&repo, "mb", &flags, &format!("write b.txt b; commit 'merge b'; wait-file {}", go_b.display()));
    poll_log(&repo, "/root/ma", "commit ok");
    poll_log(&repo, "/root/mb", "commit ok");
    let recorded = agent_commits(&repo, &first);

    touch(&go_a);
    assert_wait(&repo, &["ma"], PATIENCE, 0);
    assert_eq!(rev(&repo, "main"), rev(&repo, "corral/root/ma"), "no fast-forward");

    let old = commit_file(&repo, "p.txt", "the person's\n", "the person's commit");
    touch(&go_b);
    assert_wait(&repo, &["mb"], PATIENCE, 0);
    let main = rev(&repo, "main");
    assert_eq!(parents(&repo, &main), vec![old.clone(), rev(&repo, "corral/root/mb")], "not a two-parent merge");
    let merged = events_of(&repo, "/root/mb", "merged");
    assert_eq!(merged[0]["commit"].as_str(), Some(main.as_str()), "{}", merged[0]);
    let started = events_of(&repo, "/root/mb", "merge_started");
    assert_eq!(started[0]["old"].as_str(), Some(old.as_str()), "{}", started[0]);
    assert_eq!(started[0]["new"].as_str(), Some(main.as_str()), "{}", started[0]);
    for file in ["a.txt", "b.txt", "p.txt"] {
        assert!(show(&repo, "main", file).is_some(), "{file} missing on main");
    }
    assert_checkout_matches_main(&repo, &[]);
    assert_nothing_lost(&repo, &recorded, "after merge");
    repo.corral_json(&["gc", "--json"]);
    assert_nothing_lost(&repo, &recorded, "after gc");
}

#[test]
fn rebase_gives_linear_history_with_the_agents_messages() {
    let repo = TestRepo::new();
    let first = rev(&repo, "main");
    let go = repo.path("go");
    spawn(
        &repo,
        "rb",
        &["--merge", "auto", "--strategy", "rebase"],
        &format!(
            "write r1.txt one; commit 'rebase one'; write r2.txt two; commit 'rebase two'; print holding; wait-file {}",
            go.display()
        ),
    );
    poll_log(&repo, "/root/rb", "holding");
    let recorded = agent_commits(&repo, &first);
    let tip = rev(&repo, "corral/root/rb");
    let old = commit_file(&repo, "p.txt", "the person's\n", "the person's commit");
    touch(&go);
    assert_wait(&repo, &["rb"], PATIENCE, 0);

    assert_eq!(repo.git(&["rev-list", "--merges", &format!("{old}..main")]), "", "merge commits after a rebase");
    assert_eq!(repo.git(&["log", "--format=%s", &format!("{old}..main")]), "rebase two\nrebase one\n");
    assert_eq!(rev(&repo, "main~2"), old, "not replayed on top of the target");
    assert_eq!(repo.git(&["log", "-1", "--format=%an", "main"]).trim(), "corral fake agent", "author not kept");
    for file in ["r1.txt", "r2.txt", "p.txt"] {
        assert!(show(&repo, "main", file).is_some(), "{file} missing on main");
    }
    assert_eq!(rev(&repo, "corral/root/rb"), tip, "the agent's branch moved");
    assert_checkout_matches_main(&repo, &[]);
    assert_nothing_lost(&repo, &recorded, "after rebase");
    let gc = repo.corral_json(&["gc", "--json"]);
    assert_nothing_lost(&repo, &recorded, "after gc");
    assert!(branches(&repo).contains("corral/root/rb"), "gc deleted a rebased branch: {gc}");
}

#[test]
fn squash_gives_exactly_one_new_commit() {
    let repo = TestRepo::new();
    let first = rev(&repo, "main");
    let go = repo.path("go");
    spawn(
        &repo,
        "sq",
        &["--merge", "auto", "--strategy", "squash"],
        &format!(
            "write s1.txt one; commit 'squash one'; write s2.txt two; commit 'squash two'; \
             write s3.txt three; commit 'squash three'; print holding; wait-file {}",
            go.display()
        ),
    );
    poll_log(&repo, "/root/sq", "holding");
    let recorded = agent_commits(&repo, &first);
    let old = commit_file(&repo, "p.txt", "the person's\n", "the person's commit");
    touch(&go);
    assert_wait(&repo, &["sq"], PATIENCE, 0);

    assert_eq!(repo.git(&["rev-list", "--count", &format!("{old}..main")]).trim(), "1", "squash made more than one");
    assert_eq!(parents(&repo, "main"), vec![old.clone()]);
    for file in ["s1.txt", "s2.txt", "s3.txt", "p.txt"] {
        assert!(show(&repo, "main", file).is_some(), "{file} missing on main");
    }
    let merged = events_of(&repo, "/root/sq", "merged");
    assert_eq!(merged[0]["commits"], 3, "{}", merged[0]);
    assert_checkout_matches_main(&repo, &[]);
    assert_nothing_lost(&repo, &recorded, "after squash");
    let gc = repo.corral_json(&["gc", "--json"]);
    assert_nothing_lost(&repo, &recorded, "after gc");
    assert!(branches(&repo).contains("corral/root/sq"), "gc deleted a squashed branch: {gc}");
    assert!(!deleted_by(&gc).contains(&"corral/root/sq".to_string()), "{gc}");
}

// ---- 6. the invariant over every outcome, and gc -------------------------------

#[test]
fn no_agent_commit_is_lost_whatever_the_outcome_and_gc_force_names_what_it_deletes() {
    let repo = TestRepo::new();
    commit_file(&repo, "shared.txt", "the shared line\n", "shared");
    let first = rev(&repo, "main");
    let go = repo.path("go");
    let hold = format!("wait-file {}", go.display());
    let auto = ["--merge", "auto"];
    let agents: Vec<(&str, Vec<&str>, String)> = vec![
        ("merged", auto.to_vec(), String::from("write m.txt m; commit 'merged one'")),
        (
            "squashed",
            vec!["--merge", "auto", "--strategy", "squash"],
            String::from("write s1.txt 1; commit s1; write s2.txt 2; commit s2"),
        ),
        ("rebased", vec!["--merge", "auto", "--strategy", "rebase"], String::from("write r.txt r; commit rebased")),
        ("conflicted", auto.to_vec(), String::from("write shared.txt 'the agent side'; commit conflicted")),
        ("gated", vec!["--merge", "auto", "--gate", "exit 1"], String::from("write g.txt g; commit gated")),
        ("refused", vec!["--merge", "auto", "--strategy", "ff-only"], String::from("write f.txt f; commit refused")),
        ("leftover", auto.to_vec(), String::from("write left.txt left")),
        ("manual", vec![], String::from("write man.txt man; commit manual")),
        ("never", vec!["--merge", "never"], String::from("write nv.txt nv; commit never")),
        ("dirty", vec!["--merge", "never"], String::from("write d1.txt d; commit d1; write d2.txt unsaved")),
    ];
    for (name, flags, script) in &agents {
        spawn(&repo, name, flags, &format!("{script}; print holding; {hold}"));
    }
    for (name, _, _) in &agents {
        poll_log(&repo, &format!("/root/{name}"), "holding");
    }
    let mut recorded = agent_commits(&repo, &first);
    // The target moves on: the conflict, the refusal, real rebase and squash.
    commit_file(&repo, "shared.txt", "the person's side\n", "the person's commit");
    touch(&go);
    let names: Vec<&str> = agents.iter().map(|(n, _, _)| *n).collect();
    assert_wait(&repo, &names, LONG, 30);

    let expect = [
        ("merged", Some("merged")),
        ("squashed", Some("merged")),
        ("rebased", Some("merged")),
        ("conflicted", Some("conflict")),
        ("gated", Some("gate_failed")),
        ("refused", Some("refused")),
        ("leftover", Some("merged")),
        ("manual", None),
        ("never", None),
        ("dirty", None),
    ];
    let ps = repo.agents();
    for (name, want) in expect {
        let agent = ps.iter().find(|a| a["address"] == format!("/root/{name}")).unwrap();
        assert_eq!(agent["state"], "succeeded", "{agent}");
        assert_eq!(merge_state(agent).as_deref(), want, "{agent}\n{}", diagnose(&repo));
    }
    assert_eq!(ps.iter().find(|a| a["address"] == "/root/manual").unwrap()["merge"]["policy"], "manual");
    assert_eq!(ps.iter().find(|a| a["address"] == "/root/never").unwrap()["merge"]["policy"], "never");
    assert_one_at_a_time(&merge_events(&repo));
    recorded.extend(agent_commits(&repo, &first));
    assert_nothing_lost(&repo, &recorded, "after the merges");
    assert_checkout_matches_main(&repo, &[]);

    let gc = repo.corral_json(&["gc", "--json"]);
    assert_nothing_lost(&repo, &recorded, "after gc");
    let deleted = deleted_by(&gc);
    let left = branches(&repo);
    for name in ["squashed", "rebased", "conflicted", "gated", "refused", "manual", "never", "dirty"] {
        let branch = format!("corral/root/{name}");
        assert!(left.contains(&branch) && !deleted.contains(&branch), "gc deleted the unmerged {branch}: {gc}");
    }
    assert!(addresses_in(&gc["kept"]).contains(&"/root/dirty".to_string()), "dirty worktree not kept: {gc}");
    for name in ["merged", "leftover"] {
        let branch = format!("corral/root/{name}");
        if !left.contains(&branch) {
            assert!(deleted.contains(&branch), "gc deleted {branch} without naming it: {gc}");
        }
    }

    let forced = repo.corral_json(&["gc", "--force", "--json"]);
    let deleted = deleted_by(&forced);
    let left = branches(&repo);
    for branch in branches_before_minus(&branches_of_names(&names), &left) {
        assert!(
            deleted.contains(&branch) || deleted_by(&gc).contains(&branch),
            "gc --force deleted {branch} without naming it: {forced}"
        );
    }
    assert!(addresses_in(&forced["removed"]).contains(&"/root/dirty".to_string()), "{forced}");
    // What was merged stays on main whatever gc did.
    for file in ["m.txt", "s1.txt", "s2.txt", "r.txt", "left.txt"] {
        assert!(show(&repo, "main", file).is_some(), "{file} lost from main");
    }
}

fn branches_of_names(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| format!("corral/root/{n}")).collect()
}

fn branches_before_minus(before: &BTreeSet<String>, left: &BTreeSet<String>) -> Vec<String> {
    before.difference(left).cloned().collect()
}

// ---- 7. the daemon killed in the middle of merges -------------------------------

/// `corral events -f --since N`, read on a thread.
struct Follow {
    child: Child,
    events: Receiver<Value>,
}

impl Follow {
    fn start(repo: &TestRepo, since: u64) -> Follow {
        let mut child = repo
            .command()
            .args(["events", "-f", "--since", &since.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(event) = serde_json::from_str::<Value>(&line) else { continue };
                if tx.send(event).is_err() {
                    break;
                }
            }
        });
        Follow { child, events }
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The journal, read straight from the state folder (a torn last line skipped).
fn journal(repo: &TestRepo) -> Vec<Value> {
    let text = std::fs::read_to_string(repo.state_dir().join("events.jsonl")).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Where the journal allows the target to be: the last merge started and
/// not ended may have moved it or not; else it is where the last merge left it.
fn allowed_targets(journal: &[Value], first: &str) -> Vec<String> {
    let mut allowed = vec![first.to_string()];
    let mut open: Option<&Value> = None;
    for event in journal {
        match event["type"].as_str().unwrap_or("") {
            "merge_started" => {
                open = Some(event);
                allowed = vec![
                    event["old"].as_str().unwrap_or("").to_string(),
                    event["new"].as_str().unwrap_or("").to_string(),
                ];
            }
            "merged" if open.is_some_and(|o| o["agent"] == event["agent"]) => {
                allowed = vec![event["commit"].as_str().unwrap_or("").to_string()];
                open = None;
            }
            _ => {}
        }
    }
    allowed
}

/// Each step of main's first-parent chain since `first` adds exactly one
/// agent's files, whole, and every agent's files arrive exactly once.
fn assert_each_step_is_one_whole_merge(
    repo: &TestRepo,
    first: &str,
    expected: &BTreeMap<String, BTreeMap<String, String>>,
) {
    let chain: Vec<String> = repo
        .git(&["rev-list", "--first-parent", "--reverse", &format!("{first}..main")])
        .lines()
        .map(str::to_string)
        .collect();
    let mut seen = BTreeSet::new();
    let mut previous = first.to_string();
    for commit in &chain {
        let changed: BTreeSet<String> =
            repo.git(&["diff", "--name-only", &previous, commit]).lines().map(str::to_string).collect();
        let owner = expected
            .iter()
            .find(|(_, files)| files.keys().cloned().collect::<BTreeSet<_>>() == changed)
            .map(|(name, _)| name.clone())
            .unwrap_or_else(|| {
                panic!("{commit} on main's first-parent chain is no one agent's whole change: {changed:?}")
            });
        for (path, text) in &expected[&owner] {
            assert_eq!(show(repo, commit, path).as_deref(), Some(text.as_str()), "{path} at {commit}");
        }
        assert!(seen.insert(owner.clone()), "{owner}'s change arrived twice on main (again at {commit})");
        previous = commit.clone();
    }
    let missing: Vec<&String> = expected.keys().filter(|n| !seen.contains(*n)).collect();
    assert!(missing.is_empty(), "never arrived on main: {missing:?}");
}

#[test]
fn a_daemon_killed_in_the_middle_of_merges_leaves_the_target_whole_and_the_queue_goes_on() {
    let repo = TestRepo::new();
    let first = rev(&repo, "main");
    let go = repo.path("go");
    let n = 10;
    let files_each = 40;
    let names: Vec<String> = (1..=n).map(|i| format!("k{i:02}")).collect();
    let mut expected = BTreeMap::new();
    for name in &names {
        // Many files per agent: the checkout takes a while to follow, so a
        // kill lands inside a merge more often.
        let mut files = BTreeMap::new();
        let mut script = String::new();
        for f in 0..files_each {
            let path = format!("{name}/f{f:02}.txt");
            let text = format!("{name} file {f}");
            script.push_str(&format!("write {path} '{text}'; "));
            files.insert(path, format!("{text}\n"));
        }
        script.push_str(&format!("commit 'work of {name}'; print holding; wait-file {}", go.display()));
        spawn(&repo, name, &["--merge", "auto"], &script);
        expected.insert(name.clone(), files);
    }
    for name in &names {
        poll_log(&repo, &format!("/root/{name}"), "holding");
    }
    let recorded = agent_commits(&repo, &first);

    // Kill points (the nth merge_started in the journal, counting merges
    // redone after a restart) and a delay after seeing it, to sweep the
    // merge's window. A merge takes a few milliseconds, so by the time a
    // kill lands the queue may have gone on: the count is read back from
    // the journal after each kill, and a kill point already passed is
    // taken at the next merge_started seen. The sweep ends early only if
    // every merge is done; it must have killed at least three times.
    let kill_at = [1usize, 3, 5, 7, 9];
    let delays_ms = [0u64, 2, 0, 5, 1];
    let mut follow = Follow::start(&repo, all_events(&repo).last().map_or(0, |e| e["seq"].as_u64().unwrap()));
    touch(&go);
    let mut started = 0;
    let mut kills = Vec::new();
    let deadline = Instant::now() + LONG;
    let all_merged = || {
        let merged: BTreeSet<String> = journal(&repo)
            .iter()
            .filter(|e| e["type"] == "merged")
            .filter_map(|e| e["agent"].as_str().map(str::to_string))
            .collect();
        names.iter().all(|n| merged.contains(&format!("/root/{n}")))
    };
    while kills.len() < kill_at.len() {
        assert!(Instant::now() < deadline, "only {} merges started\n{}", started, diagnose(&repo));
        let Ok(event) = follow.events.recv_timeout(Duration::from_millis(200)) else {
            if all_merged() {
                break;
            }
            continue;
        };
        if event["type"] != "merge_started" {
            continue;
        }
        started += 1;
        if started < kill_at[kills.len()] {
            continue;
        }
        let delay = delays_ms[kills.len()];
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        repo.kill_daemon();
        // With no daemon running: the target is before or after the merge
        // in flight, never in between.
        let at = rev(&repo, "main");
        let allowed = allowed_targets(&journal(&repo), &first);
        assert!(allowed.contains(&at), "after a SIGKILL main is at {at}, the journal allows only {allowed:?}");
        let where_ = if at == event["old"] {
            "before"
        } else if at == event["new"] {
            "after"
        } else {
            "past"
        };
        let line = format!(
            "kill {} at merge_started #{started} of {}: main {where_} it; lock files {:?}",
            kills.len() + 1,
            event["agent"],
            lock_files(&repo.repo.join(".git"))
        );
        eprintln!("{line}");
        kills.push(line);
        drop(follow);
        // What the killed daemon started before the kill landed counts too.
        let journaled = journal(&repo);
        started = journaled.iter().filter(|e| e["type"] == "merge_started").count();
        // `corral ps` starts a new daemon, which recovers and goes on.
        let since = journaled.last().map_or(0, |e| e["seq"].as_u64().unwrap());
        repo.agents();
        follow = Follow::start(&repo, since);
    }
    drop(follow);
    eprintln!("{}", kills.join("\n"));
    assert!(kills.len() >= 3, "the merges were done after {} kills: {kills:?}", kills.len());

    poll_agents(&repo, "every agent's merge to settle after the kills", LONG, |agents| {
        names.iter().all(|n| {
            agents.iter().any(|a| {
                a["address"] == format!("/root/{n}") && merge_state(a).is_some_and(|s| SETTLED.contains(&s.as_str()))
            })
        })
    });
    for agent in repo.agents() {
        assert_eq!(merge_state(&agent).as_deref(), Some("merged"), "{agent}\n{}", diagnose(&repo));
    }
    for merged in merge_events(&repo).iter().filter(|e| e["type"] == "merged") {
        let commit = merged["commit"].as_str().unwrap();
        assert!(is_ancestor(&repo, commit, "main"), "merged commit {commit} is not on main: {merged}");
    }
    assert_each_step_is_one_whole_merge(&repo, &first, &expected);
    assert_checkout_matches_main(&repo, &[]);
    assert_nothing_lost(&repo, &recorded, "after the kills");
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_wait(&repo, &refs, PATIENCE, 0);
}

#[test]
fn a_daemon_killed_while_slow_gates_run_merges_everything_after_restart() {
    let repo = TestRepo::new();
    let first = rev(&repo, "main");
    let go = repo.path("go");
    let names = ["g1", "g2", "g3", "g4"];
    let mut expected = BTreeMap::new();
    for name in names {
        let script = format!(
            "write {name}.txt 'from {name}'; commit 'work of {name}'; print holding; wait-file {}",
            go.display()
        );
        spawn(&repo, name, &["--merge", "auto", "--gate", "sleep 1"], &script);
        expected.insert(name.to_string(), BTreeMap::from([(format!("{name}.txt"), format!("from {name}\n"))]));
    }
    for name in names {
        poll_log(&repo, &format!("/root/{name}"), "holding");
    }
    let recorded = agent_commits(&repo, &first);
    let follow = Follow::start(&repo, all_events(&repo).last().map_or(0, |e| e["seq"].as_u64().unwrap()));
    touch(&go);
    let deadline = Instant::now() + LONG;
    loop {
        assert!(Instant::now() < deadline, "no merge_queued\n{}", diagnose(&repo));
        if let Ok(event) = follow.events.recv_timeout(Duration::from_millis(200)) {
            if event["type"] == "merge_queued" {
                break;
            }
        }
    }
    // The gates are running (a second each).
    std::thread::sleep(Duration::from_millis(300));
    drop(follow);
    repo.kill_daemon();
    let at = rev(&repo, "main");
    let allowed = allowed_targets(&journal(&repo), &first);
    assert!(allowed.contains(&at), "after a SIGKILL main is at {at}, the journal allows only {allowed:?}");

    repo.agents();
    poll_agents(&repo, "every merge to settle after the restart", LONG, |agents| {
        names.iter().all(|n| {
            agents.iter().any(|a| {
                a["address"] == format!("/root/{n}") && merge_state(a).is_some_and(|s| SETTLED.contains(&s.as_str()))
            })
        })
    });
    for agent in repo.agents() {
        assert_eq!(merge_state(&agent).as_deref(), Some("merged"), "{agent}\n{}", diagnose(&repo));
    }
    assert_each_step_is_one_whole_merge(&repo, &first, &expected);
    assert_checkout_matches_main(&repo, &[]);
    assert_nothing_lost(&repo, &recorded, "after the kill");
    assert_wait(&repo, &names, PATIENCE, 0);
}

// ---- corral diff, corral merge ------------------------------------------------------

#[test]
fn a_manual_agent_is_merged_by_corral_merge_and_diff_shows_only_its_change() {
    let repo = TestRepo::new();
    let first = rev(&repo, "main");
    // No --merge: the default policy is manual.
    spawn(&repo, "man", &[], "write m.txt 'manual change'; commit 'manual change'");
    spawn(&repo, "sqm", &[], "write n1.txt one; commit 'n one'; write n2.txt two; commit 'n two'");
    assert_wait(&repo, &["man", "sqm"], PATIENCE, 0);
    let recorded = agent_commits(&repo, &first);
    let agent = repo.agent("/root/man");
    assert_eq!(agent["merge"]["policy"], "manual", "{agent}");
    assert_eq!(agent["merge"]["target"], "main", "{agent}");
    assert_eq!(agent["merge"]["strategy"], "merge", "{agent}");
    assert!(agent["merge_state"].is_null(), "{agent}");
    assert!(merge_events(&repo).is_empty(), "merge events for manual agents: {:?}", merge_events(&repo));
    assert_eq!(rev(&repo, "main"), first);

    // main moves on; diff shows the agent's change, not main's.
    let old = commit_file(&repo, "other.txt", "the person's\n", "the person's commit");
    let patch = repo.corral_ok(&["diff", "man"]);
    assert!(patch.contains("m.txt") && patch.contains("+manual change"), "{patch}");
    assert!(!patch.contains("other.txt"), "diff shows the target's own change: {patch}");
    let git_files = repo.git(&["diff", "--name-only", "main...corral/root/man"]);
    assert_eq!(git_files, "m.txt\n");
    let mut apply = Command::new("git")
        .args(["apply", "--check", "-"])
        .current_dir(&repo.repo)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(apply.stdin.as_mut().unwrap(), patch.as_bytes()).unwrap();
    drop(apply.stdin.take());
    assert!(apply.wait().unwrap().success(), "the diff does not apply to main: {patch}");

    let out = repo.corral(&["merge", "man", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("merge --json: {e}"));
    assert!(printed.to_string().contains("merged"), "{printed}");
    assert_eq!(parents(&repo, "main"), vec![old.clone(), rev(&repo, "corral/root/man")]);
    assert_eq!(show(&repo, "main", "m.txt").as_deref(), Some("manual change\n"));
    assert_eq!(merge_state(&repo.agent("/root/man")).as_deref(), Some("merged"));

    let before = rev(&repo, "main");
    let out = repo.corral(&["merge", "sqm", "--strategy", "squash"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(parents(&repo, "main"), vec![before.clone()], "--strategy squash did not make one commit");
    assert!(show(&repo, "main", "n1.txt").is_some() && show(&repo, "main", "n2.txt").is_some());
    assert_checkout_matches_main(&repo, &[]);
    assert_one_at_a_time(&merge_events(&repo));
    assert_nothing_lost(&repo, &recorded, "after corral merge");
    repo.corral_json(&["gc", "--json"]);
    assert_nothing_lost(&repo, &recorded, "after gc");
}

#[test]
fn a_conflict_is_retried_with_corral_merge_once_resolved_on_the_target() {
    let repo = TestRepo::new();
    let base = commit_file(&repo, "shared.txt", "the shared line\n", "shared");
    let go = repo.path("go");
    spawn(
        &repo,
        "clash",
        &["--merge", "auto"],
        &format!("write shared.txt 'the agent side'; commit clash; wait-file {}", go.display()),
    );
    poll_log(&repo, "/root/clash", "commit ok");
    let recorded = agent_commits(&repo, &base);
    let theirs = commit_file(&repo, "shared.txt", "the person's side\n", "the person's side");
    touch(&go);
    assert_wait(&repo, &["clash"], PATIENCE, 27);
    assert_eq!(repo.agent("/root/clash")["merge_state"]["files"], serde_json::json!(["shared.txt"]));
    assert_eq!(rev(&repo, "main"), theirs);

    // Retried unresolved: still a conflict, nothing moves.
    let out = repo.corral(&["merge", "clash"]);
    assert_eq!(out.status.code(), Some(27), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(rev(&repo, "main"), theirs);
    assert_checkout_matches_main(&repo, &[]);

    // The person resolves it on the target (drops their side); the retry merges.
    let resolved = commit_file(&repo, "shared.txt", "the shared line\n", "give way to the agent");
    let out = repo.corral(&["merge", "clash", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(parents(&repo, "main"), vec![resolved, rev(&repo, "corral/root/clash")]);
    assert_eq!(show(&repo, "main", "shared.txt").as_deref(), Some("the agent side\n"));
    assert_eq!(merge_state(&repo.agent("/root/clash")).as_deref(), Some("merged"));
    assert_checkout_matches_main(&repo, &[]);
    assert_nothing_lost(&repo, &recorded, "after the retry");
}

// ---- where the spec comes from ------------------------------------------------------

#[test]
fn the_merge_spec_comes_from_the_role_the_flags_and_the_branch_checked_out_at_spawn() {
    let repo = TestRepo::new();
    let first = rev(&repo, "main");
    // Default target: the branch checked out when the agent was spawned.
    repo.git(&["checkout", "-q", "-b", "dev"]);
    let go = repo.path("go");
    spawn(&repo, "ondev", &["--merge", "auto"], &format!("write d.txt d; commit d; wait-file {}", go.display()));
    repo.git(&["checkout", "-q", "main"]);
    assert_eq!(repo.agent("/root/ondev")["merge"]["target"], "dev");
    touch(&go);
    assert_wait(&repo, &["ondev"], PATIENCE, 0);
    assert_eq!(rev(&repo, "dev"), rev(&repo, "corral/root/ondev"));
    assert_eq!(rev(&repo, "main"), first, "merged into the branch checked out now, not at spawn");

    // A role's merge table, [supervisor] target_branch, flags over both.
    repo.git(&["branch", "integration", "main"]);
    std::fs::write(
        repo.repo.join("corral.toml"),
        "[supervisor]\ntarget_branch = \"integration\"\n\n[agents.merger]\nmerge = { policy = \"auto\", strategy = \"squash\", gate = \"true\" }\n",
    )
    .unwrap();
    let bin = corral_bin();
    let bin = bin.to_str().unwrap();
    repo.corral_ok(&[
        "spawn",
        "byrole",
        "--role",
        "merger",
        "--",
        bin,
        "fake-agent",
        "write r1.txt 1; commit r1; write r2.txt 2; commit r2",
    ]);
    repo.corral_ok(&[
        "spawn",
        "flags",
        "--role",
        "merger",
        "--strategy",
        "merge",
        "--target",
        "main",
        "--",
        bin,
        "fake-agent",
        "write f.txt f; commit f",
    ]);
    assert_wait(&repo, &["byrole", "flags"], PATIENCE, 0);
    let role = repo.agent("/root/byrole");
    assert_eq!(role["merge"]["policy"], "auto", "{role}");
    assert_eq!(role["merge"]["target"], "integration", "{role}");
    assert_eq!(role["merge"]["strategy"], "squash", "{role}");
    // The gate as a shell command: a string, or `{"shell": "..."}`.
    let gate = &role["merge"]["gate"];
    assert!(gate == "true" || gate["shell"] == "true", "{role}");
    assert_eq!(merge_state(&role).as_deref(), Some("merged"), "{role}");
    assert_eq!(repo.git(&["rev-list", "--count", &format!("{first}..integration")]).trim(), "1");
    let flags = repo.agent("/root/flags");
    assert_eq!(flags["merge"]["target"], "main", "{flags}");
    assert_eq!(flags["merge"]["strategy"], "merge", "{flags}");
    assert_eq!(merge_state(&flags).as_deref(), Some("merged"), "{flags}");
    assert_eq!(show(&repo, "main", "f.txt").as_deref(), Some("f\n"));
    assert_checkout_matches_main(&repo, &["corral.toml"]);
}

// ---- recovery, made deterministic ---------------------------------------------------

/// Shuts the daemon down and waits until it is gone.
fn shutdown(repo: &TestRepo) {
    let daemon = repo.daemon_pid();
    repo.corral_ok(&["shutdown"]);
    if let Some(pid) = daemon {
        let deadline = Instant::now() + PATIENCE;
        while alive(pid) {
            assert!(Instant::now() < deadline, "the daemon {pid} did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Appends to the journal the `merge_started` a daemon writes before it
/// moves the target, as if it then died (no daemon may run).
fn journal_merge_started(repo: &TestRepo, agent: &Value, old: &str, new: &str) {
    let last = journal(repo).last().map_or(0, |e| e["seq"].as_u64().unwrap());
    let event = serde_json::json!({
        "v": 1, "seq": last + 1, "ts": "2026-01-01T00:00:00.000000000Z",
        "agent": agent["address"], "parent": "/root", "task": agent["task_id"],
        "type": "merge_started", "target": "main", "old": old, "new": new, "strategy": "merge",
    });
    let path = repo.state_dir().join("events.jsonl");
    let mut text = std::fs::read_to_string(&path).unwrap();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!("{event}\n"));
    std::fs::write(&path, text).unwrap();
}

/// A SIGKILL after the target moved and before the person's checkout
/// followed leaves the ref at the merge and the files as before. This
/// makes that state on purpose (the kill test hits it only sometimes):
/// the journal says `merge_started`, the ref is at `new`, the checkout at
/// `old`. The next daemon must finish the checkout (as `git merge` would
/// have left it), not call the merge done with the person's checkout
/// showing the merge's files as deleted.
#[test]
fn a_merge_cut_between_the_ref_and_the_checkout_is_finished_on_restart() {
    let repo = TestRepo::new();
    let old = rev(&repo, "main");
    spawn(&repo, "cut", &[], "write k/f0.txt zero; write k/f1.txt one; write README.md changed; commit 'cut work'");
    assert_wait(&repo, &["cut"], PATIENCE, 0);
    let agent = repo.agent("/root/cut");
    let new = rev(&repo, "corral/root/cut"); // a fast-forward
    shutdown(&repo);
    journal_merge_started(&repo, &agent, &old, &new);
    repo.git(&["update-ref", "refs/heads/main", &new, &old]);
    let cut = status(&repo);
    assert!(cut.contains("D  k/f0.txt"), "{cut}");

    repo.agents(); // a new daemon recovers
    poll_merge_state(&repo, "/root/cut", "merged", PATIENCE);
    assert_eq!(rev(&repo, "main"), new);
    assert_checkout_matches_main(&repo, &[]);
}

/// A recovery as slow as a large checkout's: the restarted daemon answers
/// meanwhile, and finishes the merge.
#[test]
fn a_restarted_daemon_answers_while_it_finishes_a_merge_a_crash_cut_short() {
    // Regression: the daemon finished the merge before it listened, and
    // every command meanwhile gave up after 30 s with exit 9.
    let repo = TestRepo::new();
    let old = rev(&repo, "main");
    spawn(&repo, "slow", &[], "write s.txt s; commit 'slow work'");
    assert_wait(&repo, &["slow"], PATIENCE, 0);
    let agent = repo.agent("/root/slow");
    let new = rev(&repo, "corral/root/slow");
    shutdown(&repo);
    journal_merge_started(&repo, &agent, &old, &new);
    repo.git(&["update-ref", "refs/heads/main", &new, &old]);

    let started = Instant::now();
    let out = repo.command().env("CORRAL_TEST_RECOVERY_DELAY_MS", "20000").args(["ps", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(15), "ps answered after {:?}", started.elapsed());
    // Nothing else merges before it: a merge asked for now waits its turn.
    assert_eq!(merge_state(&repo.agent("/root/slow")).as_deref(), Some("merging"));
    poll_merge_state(&repo, "/root/slow", "merged", Duration::from_secs(120));
    assert_checkout_matches_main(&repo, &[]);
}

/// The same cut before the ref moved: the next daemon merges again.
#[test]
fn a_merge_cut_before_the_ref_moved_is_done_again_on_restart() {
    let repo = TestRepo::new();
    let old = rev(&repo, "main");
    spawn(&repo, "early", &[], "write e.txt e; commit 'early work'");
    assert_wait(&repo, &["early"], PATIENCE, 0);
    let agent = repo.agent("/root/early");
    let new = rev(&repo, "corral/root/early");
    shutdown(&repo);
    journal_merge_started(&repo, &agent, &old, &new);

    repo.agents();
    poll_merge_state(&repo, "/root/early", "merged", PATIENCE);
    assert_eq!(rev(&repo, "main"), new);
    assert_checkout_matches_main(&repo, &[]);
}

/// As above, with the checkout half followed (one new file written, the
/// index as before) and another agent's merge queued behind it: the
/// recovery must finish before the queue goes on.
#[test]
fn a_half_followed_checkout_is_finished_before_the_queue_goes_on() {
    let repo = TestRepo::new();
    let old = rev(&repo, "main");
    spawn(&repo, "next", &[], "write n.txt next; commit 'next work'");
    spawn(&repo, "cut", &[], "write k/f0.txt zero; write k/f1.txt one; write README.md changed; commit 'cut work'");
    assert_wait(&repo, &["next", "cut"], PATIENCE, 0);
    let (next, cut) = (repo.agent("/root/next"), repo.agent("/root/cut"));
    let new = rev(&repo, "corral/root/cut");
    shutdown(&repo);
    // `next` queued, then `cut` started; the ref moved, one file written.
    let last = journal(&repo).last().map_or(0, |e| e["seq"].as_u64().unwrap());
    let queued = serde_json::json!({
        "v": 1, "seq": last + 1, "ts": "2026-01-01T00:00:00.000000000Z",
        "agent": next["address"], "parent": "/root", "task": next["task_id"], "type": "merge_queued",
    });
    let path = repo.state_dir().join("events.jsonl");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!("{queued}\n"));
    std::fs::write(&path, text).unwrap();
    journal_merge_started(&repo, &cut, &old, &new);
    repo.git(&["update-ref", "refs/heads/main", &new, &old]);
    std::fs::create_dir_all(repo.repo.join("k")).unwrap();
    std::fs::write(repo.repo.join("k/f0.txt"), "zero\n").unwrap();

    repo.agents();
    poll_agents(&repo, "both merges to settle", PATIENCE, |agents| {
        ["/root/next", "/root/cut"].iter().all(|a| {
            agents.iter().any(|x| x["address"] == *a && merge_state(x).is_some_and(|s| SETTLED.contains(&s.as_str())))
        })
    });
    for address in ["/root/next", "/root/cut"] {
        assert_eq!(merge_state(&repo.agent(address)).as_deref(), Some("merged"), "{}", diagnose(&repo));
    }
    // The person never touched the checkout: nothing had to wait for it.
    let waited: Vec<Value> = merge_events(&repo).into_iter().filter(|e| e["type"] == "merge_waiting").collect();
    assert!(waited.is_empty(), "a merge waited on corral's own unfinished merge: {waited:?}");
    assert!(is_ancestor(&repo, &new, "main"));
    assert!(show(&repo, "main", "n.txt").is_some());
    assert_checkout_matches_main(&repo, &[]);
}

/// The kill lands inside the checkout's write of one file: that file is
/// on disk cut short (here empty), the index as before, the ref at the
/// merge. corral may finish the checkout, or say it cannot and wait,
/// naming the file; it must not call the merge done and leave the
/// person's checkout showing the merge's files as staged deletions.
#[test]
fn a_checkout_cut_inside_a_file_is_never_called_merged_while_inconsistent() {
    let repo = TestRepo::new();
    let old = rev(&repo, "main");
    spawn(&repo, "cut", &[], "write k/f0.txt zero; write k/f1.txt one; write k/f2.txt two; commit 'cut work'");
    assert_wait(&repo, &["cut"], PATIENCE, 0);
    let cut = repo.agent("/root/cut");
    let new = rev(&repo, "corral/root/cut");
    shutdown(&repo);
    journal_merge_started(&repo, &cut, &old, &new);
    repo.git(&["update-ref", "refs/heads/main", &new, &old]);
    std::fs::create_dir_all(repo.repo.join("k")).unwrap();
    std::fs::write(repo.repo.join("k/f0.txt"), "zero\n").unwrap();
    std::fs::write(repo.repo.join("k/f1.txt"), "o").unwrap(); // cut short

    repo.agents();
    poll_merge_state_in(&repo, "/root/cut", &SETTLED, PATIENCE);
    let agent = repo.agent("/root/cut");
    match merge_state(&agent).as_deref() {
        Some("merged") => {
            assert_checkout_matches_main(&repo, &[]);
            // The cut-short file was kept before the checkout was finished.
            let merged = repo
                .corral_ok(&["events", "--agent", "/root/cut"])
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .rfind(|e| e["type"] == "merged")
                .unwrap();
            let rescued = merged["rescued"].as_array().cloned().unwrap_or_default();
            assert_eq!(rescued.len(), 1, "{merged}");
            let copy = std::path::PathBuf::from(rescued[0].as_str().unwrap());
            assert!(copy.ends_with("k/f1.txt"), "{copy:?}");
            assert_eq!(std::fs::read_to_string(&copy).unwrap(), "o", "the copy holds what the file held");
        }
        Some("waiting") => assert!(agent["merge_state"]["files"].to_string().contains("k/f1.txt"), "{agent}"),
        other => panic!("{other:?}: {agent}"),
    }
}

/// The kill lands after the ref moved and before the checkout was written;
/// the person then edits a file the merge changes and makes one where the
/// merge adds one. The restart finishes the merge over everything else
/// and leaves both of theirs exactly as they are.
#[test]
fn a_merge_finished_after_a_crash_keeps_what_the_person_changed_meanwhile() {
    // Regression: every file in the way was taken for one the crash cut
    // short, copied aside and overwritten with the merge's version.
    let repo = TestRepo::new();
    let old = rev(&repo, "main");
    spawn(&repo, "late", &[], "write README.md merged; write k/f0.txt zero; write k/f1.txt one; commit 'late work'");
    assert_wait(&repo, &["late"], PATIENCE, 0);
    let late = repo.agent("/root/late");
    let new = rev(&repo, "corral/root/late");
    shutdown(&repo);
    journal_merge_started(&repo, &late, &old, &new);
    repo.git(&["update-ref", "refs/heads/main", &new, &old]);
    // The person, before the next corral command: an edit, a new file.
    std::fs::write(repo.repo.join("README.md"), "the person's edit\n").unwrap();
    std::fs::create_dir_all(repo.repo.join("k")).unwrap();
    std::fs::write(repo.repo.join("k/f0.txt"), "the person's own file\n").unwrap();

    repo.agents();
    poll_merge_state_in(&repo, "/root/late", &SETTLED, PATIENCE);
    assert_eq!(merge_state(&repo.agent("/root/late")).as_deref(), Some("merged"), "{}", diagnose(&repo));
    assert_eq!(std::fs::read_to_string(repo.repo.join("README.md")).unwrap(), "the person's edit\n");
    assert_eq!(std::fs::read_to_string(repo.repo.join("k/f0.txt")).unwrap(), "the person's own file\n");
    // The rest is the merge's, and the person's changes show against it.
    assert_eq!(std::fs::read_to_string(repo.repo.join("k/f1.txt")).unwrap(), "one\n");
    assert_eq!(status(&repo), " M README.md\n M k/f0.txt\n", "{}", diagnose(&repo));
    let merged = merge_events(&repo).into_iter().rfind(|e| e["type"] == "merged").unwrap();
    assert_eq!(merged["kept"], serde_json::json!(["README.md", "k/f0.txt"]), "{merged}");
    assert!(merged.get("rescued").is_none(), "nothing was cut short: {merged}");
}

/// The kill lands while corral commits an agent's leftovers: its worktree's
/// index lock stays behind. The next daemon removes it and merges.
#[test]
fn an_index_lock_a_killed_daemon_left_in_an_agents_worktree_does_not_block_its_merge() {
    // Regression: every later merge was refused ("the index is locked"),
    // exit 30, until the lock was removed by hand.
    let repo = TestRepo::new();
    spawn(&repo, "lo", &[], "write left.txt leftover");
    assert_wait(&repo, &["lo"], PATIENCE, 0);
    let worktree = std::path::PathBuf::from(repo.agent("/root/lo")["worktree"].as_str().unwrap().to_owned());
    shutdown(&repo);
    let dot_git = std::fs::read_to_string(worktree.join(".git")).unwrap();
    let gitdir = std::path::PathBuf::from(dot_git.trim().strip_prefix("gitdir: ").unwrap());
    let lock = gitdir.join("index.lock");
    let file = std::fs::File::create(&lock).unwrap();
    file.set_modified(std::time::SystemTime::now() - Duration::from_secs(60)).unwrap();
    drop(file);

    let out = repo.corral(&["merge", "lo"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", String::from_utf8_lossy(&out.stderr), diagnose(&repo));
    assert!(!lock.exists(), "the stale lock is still there");
    assert_eq!(show(&repo, "main", "left.txt").as_deref(), Some("leftover\n"));
}

/// The kill lands while a merge gate runs: the next daemon kills what is
/// left of it before it runs the gate again.
#[test]
fn a_gate_a_killed_daemon_left_running_is_killed_before_it_runs_again() {
    // Regression: the orphaned gate ran on beside the one the next daemon
    // started, two at once in one worktree.
    let repo = TestRepo::new();
    let log = repo.path("gate.log");
    let gate = format!("echo start $$ >> {0}; sleep 4; echo end $$ >> {0}", log.display());
    spawn(&repo, "gated", &["--merge", "auto", "--gate", &gate], "write g.txt g; commit gated");
    poll_until("the gate to start", PATIENCE, || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("start")));
    let first: u32 = std::fs::read_to_string(&log).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    repo.kill_daemon();
    repo.agents();
    poll_until("the orphaned gate to be killed", PATIENCE, || !alive(first));
    poll_merge_state(&repo, "/root/gated", "merged", PATIENCE);
    let ran = std::fs::read_to_string(&log).unwrap();
    assert!(!ran.contains(&format!("end {first}")), "the orphaned gate ran to its end:\n{ran}");
    assert_eq!(ran.matches("end ").count(), 1, "{ran}");
}

fn poll_merge_state_in(repo: &TestRepo, address: &str, states: &[&str], timeout: Duration) {
    poll_agents(repo, &format!("{address} to reach one of {states:?}"), timeout, |agents| {
        agents.iter().any(|a| a["address"] == address && merge_state(a).is_some_and(|s| states.contains(&s.as_str())))
    });
}

// ---- a merge resumed after a crash keeps its strategy ------------------------------

#[test]
fn a_merge_resumed_after_the_daemon_was_killed_keeps_the_strategy_it_was_asked_for() {
    // Regression: `merge_queued` did not say the strategy of `corral merge
    // --strategy`, so a restarted daemon merged with the agent's own.
    let repo = TestRepo::new();
    let first = rev(&repo, "main");
    let (gating, go) = (repo.path("gating"), repo.path("go"));
    let gate = format!("touch {}; while [ ! -e {} ]; do sleep 0.05; done", gating.display(), go.display());
    spawn(
        &repo,
        "sq",
        &["--merge", "manual", "--gate", &gate],
        "write s1.txt one; commit one; write s2.txt two; commit two",
    );
    assert_wait(&repo, &["sq"], PATIENCE, 0);
    let tip = rev(&repo, "corral/root/sq");
    // Its own strategy is merge, which would fast-forward main to its tip.
    let mut merge = repo.command().args(["merge", "sq", "--strategy", "squash"]).spawn().unwrap();
    corral_e2e::poll_until("the merge's gate to run", PATIENCE, || gating.exists());
    repo.kill_daemon();
    let _ = merge.wait();
    touch(&go);
    // A new daemon resumes the queued merge.
    poll_merge_state(&repo, "/root/sq", "merged", PATIENCE);
    assert_ne!(rev(&repo, "main"), tip, "main was fast-forwarded: the merge forgot --strategy squash");
    assert_eq!(parents(&repo, "main"), vec![first.clone()], "one squashed commit on the old main");
    assert_eq!(repo.git(&["rev-list", "--count", &format!("{first}..main")]).trim(), "1");
    for file in ["s1.txt", "s2.txt"] {
        assert!(show(&repo, "main", file).is_some(), "{file} missing on main");
    }
}
