//! `corral demo`: scripted agents working in parallel on a scratch
//! repository, with no API key and no network.
//!
//! It does what a person would do by hand: make a repository, `corral
//! spawn` a few agents (the built-in fake agent, each with its own script),
//! follow `corral events`, and print a summary. It talks to the daemon
//! through the same client as the CLI, so what it shows is what the
//! commands show.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use crate::cli::client::Client;
use crate::cli::commands::human_secs;
use crate::model::error::{Error, Result};
use crate::model::event::EventBody;
use crate::model::lifecycle::AgentRecord;
use crate::sys::paths::StateDir;
use crate::wire::protocol::{Request, Response, SpawnRequest};

/// The demo's agents: name, task, script for the fake agent.
const AGENTS: &[(&str, &str, &str)] = &[
    (
        "docs",
        "write the contributor notes",
        "progress 6 4; write docs/CONTRIBUTING.md 'Run corral demo first.'; commit 'docs: contributor notes'; print done",
    ),
    (
        "api",
        "add the health endpoint",
        "progress 8 5; write src/health.rs 'pub fn health() -> &'\"'\"'static str { \"ok\" }'; commit 'api: health endpoint'; print done",
    ),
    (
        "tests",
        "write the smoke tests",
        "progress 10 6; write tests/smoke.sh 'test -f README.md'; commit 'tests: smoke test'; print done",
    ),
    ("flaky", "try the migration (fails on purpose)", "progress 4 4; print 'error: migration 0042 failed'; exit 3"),
];

pub fn run(keep: bool) -> Result<i32> {
    let scratch = tempfile::Builder::new()
        .prefix("corral-demo-")
        .tempdir()
        .map_err(|e| Error::other(format!("cannot make a scratch folder: {e}")))?;
    let repo = scratch.path().join("repo");
    make_repository(&repo)?;
    // The demo's worktrees stay inside its scratch folder.
    std::env::set_var("CORRAL_WORKTREE_ROOT", scratch.path().join("worktrees"));
    let state = StateDir::discover(&repo)?;
    let exe = std::env::current_exe().map_err(|e| Error::other(e.to_string()))?;

    println!("corral demo: {} scripted agents on a scratch repository {}", AGENTS.len(), repo.display());
    let started = Instant::now();
    let mut client = Client::connect(&state)?;
    for (name, task, script) in AGENTS {
        let request = SpawnRequest {
            name: (*name).into(),
            parent: None,
            task: (*task).into(),
            role: None,
            settings: Default::default(),
            fork_session: false,
            command: vec![exe.display().to_string(), "fake-agent".into(), (*script).into()],
            grace_secs: None,
            base: None,
            env: std::env::vars().collect(),
        };
        let Response::Spawned(spawned) = client.request(&Request::Spawn(Box::new(request)))? else {
            return Err(Error::other("unexpected answer to spawn"));
        };
        println!("  spawned {:<12} pid {:<7} worktree {}", spawned.address, spawned.pid, spawned.worktree.display());
    }
    println!();

    follow_until_done(&state, started)?;

    let Response::Agents { agents } = client.request(&Request::List { all: true })? else {
        return Err(Error::other("unexpected answer to ps"));
    };
    println!();
    print_summary(&repo, &agents);

    let _ = client.request(&Request::Shutdown);
    if keep {
        let kept = scratch.keep();
        println!("\nkept the scratch folder: {}", kept.display());
        println!("try: cd {} && corral ps && corral view /root/docs", kept.join("repo").display());
    } else {
        // The worktrees go with the scratch folder; git's entries with the repo.
        drop(scratch);
    }
    Ok(0)
}

/// Prints each agent's progress as its events arrive, until all have ended.
fn follow_until_done(state: &StateDir, started: Instant) -> Result<()> {
    let mut client = Client::connect(state)?;
    client.send(&Request::Events { since: 0, follow: true, agent: None })?;
    let mut running: BTreeMap<String, bool> = AGENTS.iter().map(|(n, _, _)| (format!("/root/{n}"), true)).collect();
    let mut out = std::io::stdout().lock();
    while running.values().any(|r| *r) {
        let Some(Response::Event { event }) = client.receive()? else {
            return Err(Error::other("the event stream ended early"));
        };
        let Some(agent) = event.agent.as_ref().map(|a| a.to_string()) else { continue };
        let at = format!("{:>5.1}s", started.elapsed().as_secs_f64());
        let line = match &event.body {
            EventBody::Started { pid, .. } => format!("started (pid {pid})"),
            EventBody::Output { text, .. } => text.clone(),
            EventBody::Exited { state, code, reason, .. } => {
                running.insert(agent.clone(), false);
                match (code, reason) {
                    (_, Some(reason)) => format!("{} ({reason})", state.as_str()),
                    (Some(code), None) => format!("{} (exit {code})", state.as_str()),
                    _ => state.as_str().to_string(),
                }
            }
            _ => continue,
        };
        let _ = writeln!(out, "{at}  {agent:<12} {line}");
    }
    Ok(())
}

fn print_summary(repo: &Path, agents: &[AgentRecord]) {
    println!("{:<12} {:<10} {:>4} {:>8} {:>8}  BRANCH", "AGENT", "STATE", "EXIT", "RUNTIME", "COMMITS");
    for agent in agents {
        let commits =
            crate::git::worktree::commits_ahead(repo, &agent.branch, &agent.base).map_or("?".into(), |n| n.to_string());
        println!(
            "{:<12} {:<10} {:>4} {:>8} {:>8}  {}",
            agent.address.to_string(),
            agent.state.as_str(),
            agent.exit_code.map_or("-".into(), |c| c.to_string()),
            agent.runtime_secs(chrono::Utc::now()).map_or("-".into(), human_secs),
            commits,
            agent.branch
        );
    }
    let ok = agents.iter().filter(|a| a.state == crate::model::lifecycle::AgentState::Succeeded).count();
    println!("\n{ok} of {} agents succeeded; each worked in its own worktree on its own branch.", agents.len());
}

/// A small repository with one commit, made with git2 (no git identity
/// needed).
fn make_repository(path: &Path) -> Result<()> {
    let fail = |e: git2::Error| Error::other(format!("cannot make the demo repository: {}", e.message()));
    std::fs::create_dir_all(path.join("src")).map_err(|e| Error::io("cannot create", path, e))?;
    std::fs::write(path.join("README.md"), "# demo\n\nA scratch repository for `corral demo`.\n")
        .and_then(|()| std::fs::write(path.join("src/lib.rs"), "pub fn hello() -> &'static str { \"hello\" }\n"))
        .map_err(|e| Error::io("cannot write into", path, e))?;
    let repo = git2::Repository::init(path).map_err(fail)?;
    let mut index = repo.index().map_err(fail)?;
    index.add_all(["*"], git2::IndexAddOption::DEFAULT, None).map_err(fail)?;
    index.write().map_err(fail)?;
    let tree = repo.find_tree(index.write_tree().map_err(fail)?).map_err(fail)?;
    let signature = git2::Signature::now("corral demo", "demo@corral.invalid").map_err(fail)?;
    repo.commit(Some("HEAD"), &signature, &signature, "first commit", &tree, &[]).map_err(fail)?;
    Ok(())
}
