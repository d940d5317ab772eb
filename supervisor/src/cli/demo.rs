//! `corral demo`: scripted agents working in parallel on a scratch
//! repository, with no API key and no network, in well under a minute.
//!
//! It does what a person would do by hand: make a repository, `corral
//! spawn` agents (the built-in fake agent, each with its own script),
//! follow the event stream, and print a summary. It talks to the daemon
//! through the same client as the CLI, so what it shows is what the
//! commands show. On the way it shows what makes corral worth having:
//!
//! - a runaway: a scripted Claude Code (the fake agent printing Claude's
//!   stream-json, set as `CORRAL_CLAUDE_BIN`) that spends tokens until its
//!   token budget stops it;
//! - a message sent to a running agent, which answers it;
//! - four agents' work going back through the merge queue one at a time:
//!   three merge, and the fourth, which changed the same line as one of
//!   them, is a conflict: nothing changes and its branch is kept.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use corral_harness::Harness;

use crate::cli::client::Client;
use crate::cli::commands::{human_count, human_secs};
use crate::cli::human;
use crate::cli::top::board::Board;
use crate::cli::top::feed::{self, Feed};
use crate::config::{AgentConfig, MergeConfig, MergePolicy};
use crate::model::budget::Budget;
use crate::model::error::{Error, Result};
use crate::model::event::{Event, EventBody};
use crate::model::lifecycle::{AgentRecord, AgentState, MergeState};
use crate::sys::paths::StateDir;
use crate::wire::protocol::{Request, Response, SpawnRequest};

/// `println!` that never ends the demo: with its output gone (`| head`)
/// it still stops its agents and removes its scratch folder.
macro_rules! show {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// The longest the demo waits for its agents before it gives up.
const DEADLINE: Duration = Duration::from_secs(120);

/// The runaway's token budget; each of its model calls spends 400.
const RUNAWAY_TOKENS: u64 = 2000;

/// What the demo asks the chatty agent while it runs.
const QUESTION: &str = "is the health endpoint in yet?";

/// The agents whose work merges back by itself: name, task, script.
const MERGING: &[(&str, &str, &str)] = &[
    (
        "docs",
        "write the contributor notes",
        "progress 6 4; write docs/CONTRIBUTING.md 'Run corral demo first.'; commit 'docs: contributor notes'; print done",
    ),
    (
        "api",
        "greet from the api",
        "progress 8 5; write src/lib.rs 'pub fn hello() -> &'\"'\"'static str { \"hello from the api\" }'; commit 'api: greeting'; print done",
    ),
    (
        "tests",
        "write the smoke tests",
        "progress 10 6; write tests/smoke.sh 'test -f README.md'; commit 'tests: smoke test'; print done",
    ),
    // Changes the line `api` changes, and finishes after it: a conflict.
    (
        "hotfix",
        "fix the greeting",
        "progress 14 4; write src/lib.rs 'pub fn hello() -> &'\"'\"'static str { \"hello, fixed\" }'; commit 'hotfix: greeting'; print done",
    ),
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
    let claude = fake_claude(scratch.path(), &exe)?;

    show!("corral demo: {} scripted agents on a scratch repository {}", MERGING.len() + 2, repo.display());
    show!("  (no API key, no network: the agents are `corral fake-agent` scripts)\n");
    let started = Instant::now();
    let mut client = Client::connect(&state)?;
    let fake = |script: &str| vec![exe.display().to_string(), "fake-agent".into(), script.into()];
    let auto = AgentConfig {
        merge: Some(MergeConfig { policy: Some(MergePolicy::Auto), ..Default::default() }),
        ..Default::default()
    };
    for (name, task, script) in MERGING {
        spawn(&mut client, name, task, auto.clone(), fake(script), BTreeMap::new())?;
    }
    let runaway = AgentConfig {
        harness: Some(Harness::Claude),
        // The scripted agent prints its usage and calls no model: its own
        // lines are the meter.
        meter: Some(crate::model::budget::Meter::Stream),
        budget: Some(Budget { tokens: Some(RUNAWAY_TOKENS), ..Default::default() }),
        ..Default::default()
    };
    let env = BTreeMap::from([("CORRAL_CLAUDE_BIN".to_string(), claude.display().to_string())]);
    spawn(&mut client, "runaway", "refactor everything, for ever", runaway, Vec::new(), env)?;
    let chat = "print 'chat: ready for questions'; echo-input 1; print 'chat: back to work'; sleep 0.5";
    spawn(&mut client, "chat", "answer questions while working", AgentConfig::default(), fake(chat), BTreeMap::new())?;
    show!();

    let story = follow(&state, &mut client, started)?;

    let (agents, _) = client.list(true, false, None)?;
    show!();
    print_table(&agents);
    show!();
    print_story(&story, &agents);

    let _ = client.request(&Request::Shutdown);
    if keep {
        let kept = scratch.keep();
        show!("\nkept the scratch folder: {}", kept.display());
        show!("try: cd {} && corral top", kept.join("repo").display());
    } else {
        // The worktrees go with the scratch folder; git's entries with the repo.
        drop(scratch);
    }
    Ok(if story.timed_out { 1 } else { 0 })
}

fn spawn(
    client: &mut Client,
    name: &str,
    task: &str,
    settings: AgentConfig,
    command: Vec<String>,
    extra_env: BTreeMap<String, String>,
) -> Result<()> {
    let mut env = crate::cli::client::environment();
    env.extend(extra_env);
    let request = SpawnRequest {
        name: name.into(),
        parent: None,
        task: task.into(),
        role: None,
        settings,
        fork_session: false,
        command,
        grace_secs: Some(1.0),
        base: None,
        env,
    };
    let Response::Spawned(spawned) = client.request(&Request::Spawn(Box::new(request)))? else {
        return Err(Error::other("unexpected answer to spawn"));
    };
    show!("  spawned {:<14} pid {:<7} branch {}", spawned.address, spawned.pid, spawned.branch);
    Ok(())
}

/// A fake `claude` for the runaway: the fake agent printing Claude Code's
/// stream-json, one model call of 400 tokens every 0.3 s, far past any
/// budget (Claude's own flags are ignored).
fn fake_claude(scratch: &Path, exe: &Path) -> Result<PathBuf> {
    let steps: Vec<String> = (1..=60)
        .flat_map(|i| {
            [
                format!(
                    r#"print '{{"type":"assistant","message":{{"id":"m{i}","role":"assistant","model":"claude-sonnet-4-5","content":[{{"type":"text","text":"refactoring, pass {i}"}}],"usage":{{"input_tokens":300,"output_tokens":100,"cache_read_input_tokens":0,"cache_creation_input_tokens":0}}}},"parent_tool_use_id":null,"session_id":"demo"}}'"#
                ),
                "sleep 0.3".to_string(),
            ]
        })
        .collect();
    let steps_file = scratch.join("runaway.steps");
    let bin = scratch.join("claude");
    let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
    std::fs::write(&steps_file, steps.join("; "))
        .and_then(|()| {
            std::fs::write(
                &bin,
                format!("#!/bin/sh\nexec {} fake-agent \"$(cat {})\"\n", quote(exe), quote(&steps_file)),
            )
        })
        .and_then(|()| std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)))
        .map_err(|e| Error::io("cannot write into", scratch, e))?;
    Ok(bin)
}

/// What the demo saw happen, for the summary.
#[derive(Debug, Default)]
struct Story {
    /// The runaway's budget stop: used, limit.
    budget_stop: Option<(f64, f64)>,
    asked_at: Option<f64>,
    delivered_at: Option<f64>,
    answer: Option<(f64, String)>,
    /// Agents merged, in the order the queue merged them.
    merged: Vec<String>,
    timed_out: bool,
}

/// Prints the events as they come, sends the chat agent its question once
/// it is ready, until every agent is done (its merge settled too).
fn follow(state: &StateDir, client: &mut Client, started: Instant) -> Result<Story> {
    let feed = feed::start(state.clone());
    let mut board = Board::default();
    let mut story = Story::default();
    let mut out = std::io::stdout().lock();
    let deadline = started + DEADLINE;
    loop {
        let now = Instant::now();
        if now > deadline {
            story.timed_out = true;
            let _ = writeln!(out, "the demo took over {} s; stopping its agents", DEADLINE.as_secs());
            let _ = client.request(&Request::Stop { address: "/root".into(), grace_secs: Some(0.0) });
            return Ok(story);
        }
        let events = match feed.recv_timeout(Duration::from_millis(200)) {
            Ok(Feed::Events(events)) => events,
            Ok(message) => {
                board.take(message);
                continue;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(Error::other("the event stream ended early"))
            }
        };
        for event in &events {
            board.apply(event);
            let at = started.elapsed().as_secs_f64();
            if let Some(line) = tell(event, at, &mut story) {
                let agent = event.agent.as_ref().map_or_else(|| "corral".into(), |a| a.to_string());
                let _ = writeln!(out, "{at:>5.1}s  {agent:<14} {line}");
            }
            let is_chat = event.agent.as_ref().is_some_and(|a| a.to_string() == "/root/chat");
            if let (true, EventBody::Output { text, .. }) = (is_chat, &event.body) {
                if text.contains("ready for questions") && story.asked_at.is_none() {
                    story.asked_at = Some(at);
                    let request = Request::Send {
                        to: "/root/chat".into(),
                        from: "/root".into(),
                        text: QUESTION.into(),
                        key: None,
                    };
                    client.request(&request)?;
                }
            }
        }
        let agents = board.agents();
        if agents.len() == MERGING.len() + 2 && agents.iter().all(|a| a.is_done()) {
            return Ok(story);
        }
    }
}

/// The line the demo prints for an event (none for chatter), noting what
/// the summary will say.
fn tell(event: &Event, at: f64, story: &mut Story) -> Option<String> {
    let agent = event.agent.as_ref().map(|a| a.to_string()).unwrap_or_default();
    match &event.body {
        EventBody::Output { text, .. } => {
            if agent == "/root/chat" && text.starts_with("got ") && story.answer.is_none() {
                story.answer = Some((at, text.clone()));
            }
            // The PTY echoes the typed question; the agent's answer follows.
            (!text.contains(QUESTION) || text.starts_with("got ")).then(|| text.clone())
        }
        EventBody::BudgetExceeded { used, limit, .. } => {
            story.budget_stop.get_or_insert((*used, *limit));
            Some(human::event_text(&event.body))
        }
        EventBody::MessageDelivered { .. } => {
            story.delivered_at.get_or_insert(at);
            Some(human::event_text(&event.body))
        }
        EventBody::Merged { .. } => {
            story.merged.push(agent);
            Some(human::event_text(&event.body))
        }
        EventBody::Started { .. }
        | EventBody::BudgetWarning { .. }
        | EventBody::MessageSent { .. }
        | EventBody::MergeQueued { .. }
        | EventBody::Conflict { .. }
        | EventBody::GateFailed { .. }
        | EventBody::MergeWaiting { .. }
        | EventBody::Exited { .. } => Some(human::event_text(&event.body)),
        EventBody::Usage { total, .. } if agent == "/root/runaway" => {
            Some(format!("spent {} of its {} tokens", human_count(total.total()), human_count(RUNAWAY_TOKENS)))
        }
        _ => None,
    }
}

fn print_table(agents: &[AgentRecord]) {
    show!("{:<14} {:<16} {:>4} {:>8} {:>7} {:<9}  BRANCH", "AGENT", "STATE", "EXIT", "RUNTIME", "TOKENS", "MERGE");
    for agent in agents {
        show!(
            "{:<14} {:<16} {:>4} {:>8} {:>7} {:<9}  {}",
            agent.address.to_string(),
            agent.state.as_str(),
            agent.exit_code.map_or("-".into(), |c| c.to_string()),
            agent.runtime_secs(chrono::Utc::now()).map_or("-".into(), human_secs),
            match agent.usage.total() {
                0 => "-".into(),
                n => human_count(n),
            },
            agent.merge_state.as_ref().map_or("-", MergeState::as_str),
            agent.branch
        );
    }
}

/// The summary: a line each for the budget stop, the message, the merges
/// and the conflict.
fn print_story(story: &Story, agents: &[AgentRecord]) {
    let find = |name: &str| agents.iter().find(|a| a.address.name() == name);
    show!("What happened:");
    match (find("runaway"), story.budget_stop) {
        (Some(agent), Some((used, limit))) if agent.state == AgentState::BudgetExceeded => show!(
            "  budget    /root/runaway ran away and was stopped by its token budget: {used:.0} of {limit:.0} tokens \
             (state budget_exceeded; `corral wait` exits 23)"
        ),
        (agent, _) => show!(
            "  budget    /root/runaway was not stopped by its budget (it is {})",
            agent.map_or("missing", |a| a.state.as_str())
        ),
    }
    match (&story.answer, story.asked_at, story.delivered_at) {
        (Some((answered, text)), Some(asked), delivered) => show!(
            "  message   /root/chat was sent {QUESTION:?} while it ran (at {asked:.1}s{}) and answered {text:?} at {answered:.1}s",
            delivered.map_or(String::new(), |d| format!(", delivered at {d:.1}s"))
        ),
        _ => show!("  message   /root/chat did not answer its message"),
    }
    let target = find("api").and_then(|a| a.merge.target.clone()).unwrap_or_else(|| "main".into());
    show!(
        "  merges    {} agents' work merged into {target} through the queue, one at a time: {}",
        story.merged.len(),
        story.merged.join(", ")
    );
    for agent in agents {
        if let Some(MergeState::Conflict { files }) = &agent.merge_state {
            show!(
                "  conflict  {} changed the same lines in {}: nothing was changed, its work is kept on branch {}",
                agent.address,
                files.join(", "),
                agent.branch
            );
        }
    }
}

/// A small repository with one commit on `main`, made with git2 (no git
/// identity needed).
fn make_repository(path: &Path) -> Result<()> {
    let fail = |e: git2::Error| Error::other(format!("cannot make the demo repository: {}", e.message()));
    std::fs::create_dir_all(path.join("src")).map_err(|e| Error::io("cannot create", path, e))?;
    std::fs::write(path.join("README.md"), "# demo\n\nA scratch repository for `corral demo`.\n")
        .and_then(|()| std::fs::write(path.join("src/lib.rs"), "pub fn hello() -> &'static str { \"hello\" }\n"))
        .map_err(|e| Error::io("cannot write into", path, e))?;
    let mut options = git2::RepositoryInitOptions::new();
    options.initial_head("main");
    let repo = git2::Repository::init_opts(path, &options).map_err(fail)?;
    let mut index = repo.index().map_err(fail)?;
    index.add_all(["*"], git2::IndexAddOption::DEFAULT, None).map_err(fail)?;
    index.write().map_err(fail)?;
    let tree = repo.find_tree(index.write_tree().map_err(fail)?).map_err(fail)?;
    let signature = git2::Signature::now("corral demo", "demo@corral.invalid").map_err(fail)?;
    repo.commit(Some("HEAD"), &signature, &signature, "first commit", &tree, &[]).map_err(fail)?;
    Ok(())
}
