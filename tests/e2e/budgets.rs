//! Budgets: cost, wall time, idle time and subtree budgets each stop
//! agents with their own reason and `corral wait` exit code; a spawn that
//! asks for more than its parent has left is refused; nonsense is refused.
//!
//! Token and cost figures come from a fake Claude CLI (a script set as
//! `CORRAL_CLAUDE_BIN`) that prints stream-json lines with known usage, so
//! the figures in the events can be checked exactly. The real CLI's
//! runaway case is in `budget_runaway.rs`.

use std::process::Output;

use corral_e2e::{assistant, corral_bin, fake_claude, poll_until, TestRepo, PATIENCE};
use serde_json::Value;

fn spawn_claude(repo: &TestRepo, name: &str, script: &str, flags: &[&str]) -> Output {
    let bin = fake_claude(repo, name, script);
    // The fake CLI prints usage and calls no model: its lines are the meter.
    let mut args =
        vec!["spawn", name, "--harness", "claude", "--meter", "stream", "--task", "spend", "--grace", "0", "--json"];
    args.extend_from_slice(flags);
    repo.command().env("CORRAL_CLAUDE_BIN", bin).args(&args).output().unwrap()
}

fn events_of(repo: &TestRepo, address: &str, kind: &str) -> Vec<Value> {
    repo.corral_ok(&["events", "--agent", address])
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["type"] == kind && e["agent"] == address)
        .collect()
}

fn wait_code(repo: &TestRepo, address: &str) -> i32 {
    repo.corral(&["wait", address, "--timeout", "120"]).status.code().unwrap()
}

#[test]
fn a_token_budget_warns_then_stops_with_the_figures() {
    let repo = TestRepo::new();
    let script = [
        assistant("m1", 400),
        "sleep 0.2".into(),
        assistant("m2", 400),
        "sleep 0.2".into(),
        assistant("m3", 400),
        "hang".into(),
    ]
    .join("; ");
    let out = spawn_claude(&repo, "spender", &script, &["--max-tokens", "1000"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(wait_code(&repo, "/root/spender"), 23, "token budgets exit 23");

    let agent = repo.agent("/root/spender");
    assert_eq!(agent["state"], "budget_exceeded", "{agent}");
    assert_eq!(agent["reason"], "budget exceeded: tokens 1200 of 1000", "{agent}");
    let warnings = events_of(&repo, "/root/spender", "budget_warning");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!((warnings[0]["kind"].as_str(), warnings[0]["used"].as_f64()), (Some("tokens"), Some(800.0)));
    let exceeded = events_of(&repo, "/root/spender", "budget_exceeded");
    assert_eq!(exceeded.len(), 1);
    assert_eq!(exceeded[0]["used"], 1200.0);
    assert_eq!(exceeded[0]["limit"], 1000.0);
    assert!(warnings[0]["seq"].as_u64() < exceeded[0]["seq"].as_u64());
    assert!(repo.agent_processes("/root/spender").is_empty());
    // Its worktree is kept.
    assert!(std::path::Path::new(agent["worktree"].as_str().unwrap()).exists());
}

#[test]
fn a_cost_budget_stops_with_its_own_reason_and_exit_code() {
    let repo = TestRepo::new();
    let result = r#"print '{"type":"result","subtype":"success","is_error":false,"total_cost_usd":0.75,"usage":{"input_tokens":100,"output_tokens":10},"session_id":"s-1","result":"done"}'"#;
    let script = [assistant("m1", 100), result.to_string(), "hang".into()].join("; ");
    let out = spawn_claude(&repo, "pricey", &script, &["--max-cost", "0.5"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(wait_code(&repo, "/root/pricey"), 24, "cost budgets exit 24");
    let agent = repo.agent("/root/pricey");
    assert_eq!(agent["state"], "budget_exceeded", "{agent}");
    assert_eq!(agent["reason"], "budget exceeded: cost $0.7500 of $0.5000", "{agent}");
}

#[test]
fn a_wall_budget_times_the_agent_out() {
    let repo = TestRepo::new();
    let bin = corral_bin();
    let out = repo.corral(&[
        "spawn",
        "slow",
        "--timeout",
        "1",
        "--grace",
        "0",
        "--",
        bin.to_str().unwrap(),
        "fake-agent",
        "ignore-sigterm; hang",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(wait_code(&repo, "/root/slow"), 25, "wall budgets exit 25");
    let agent = repo.agent("/root/slow");
    assert_eq!(agent["state"], "timed_out", "{agent}");
    let reason = agent["reason"].as_str().unwrap();
    assert!(reason.starts_with("budget exceeded: wall ") && reason.ends_with("of 1.0s"), "{reason}");
    assert!(repo.agent_processes("/root/slow").is_empty());
}

#[test]
fn an_idle_budget_stops_an_agent_that_went_quiet() {
    let repo = TestRepo::new();
    let bin = corral_bin();
    // Busy for a while (output every 0.1 s, well within the idle limit), then quiet.
    let out = repo.corral(&[
        "spawn",
        "quiet",
        "--idle-timeout",
        "1",
        "--grace",
        "0",
        "--",
        bin.to_str().unwrap(),
        "fake-agent",
        "progress 20 10; hang",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(wait_code(&repo, "/root/quiet"), 26, "idle budgets exit 26");
    let agent = repo.agent("/root/quiet");
    assert_eq!(agent["state"], "budget_exceeded", "{agent}");
    assert!(agent["reason"].as_str().unwrap().starts_with("budget exceeded: idle "), "{agent}");
    // It was not stopped while it kept printing.
    let log = String::from_utf8_lossy(&repo.log("/root/quiet")).into_owned();
    assert!(log.contains("progress 20/20"), "{log}");
}

#[test]
fn a_subtree_budget_stops_children_that_cross_it_together() {
    let repo = TestRepo::new();
    let bin = corral_bin();
    let bin = bin.to_str().unwrap();
    repo.corral_ok(&["spawn", "boss", "--max-tokens", "1000", "--grace", "0", "--", bin, "fake-agent", "hang"]);

    // Asking for more than the parent has is refused, and creates nothing.
    let greedy =
        repo.corral(&["spawn", "greedy", "--parent", "/root/boss", "--max-tokens", "5000", "--", bin, "fake-agent"]);
    assert_eq!(greedy.status.code(), Some(11), "{}", String::from_utf8_lossy(&greedy.stderr));
    let stderr = String::from_utf8_lossy(&greedy.stderr);
    assert!(
        stderr.contains("asks for 5000 tokens but its parent has 1000 left (the budget of /root/boss)"),
        "{stderr}"
    );
    assert!(repo.agents().iter().all(|a| a["address"] != "/root/boss/greedy"));

    // Two children, 500 tokens each: neither alone reaches 1000, together they do.
    let go = repo.path("go");
    for child in ["left", "right"] {
        let script = format!(
            "{}; {}; wait-file {}; {}; hang",
            assistant(&format!("{child}-1"), 300),
            assistant(&format!("{child}-2"), 100),
            go.display(),
            assistant(&format!("{child}-3"), 100)
        );
        let out = spawn_claude(&repo, child, &script, &["--parent", "/root/boss"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    poll_until("both children to have spent 400", PATIENCE, || {
        ["/root/boss/left", "/root/boss/right"].iter().all(|a| repo.agent(a)["usage"]["input"] == 400)
    });
    assert_eq!(repo.agent("/root/boss/left")["state"], "running", "800 of 1000: not spent yet");
    let warned = events_of(&repo, "/root/boss", "budget_warning");
    assert_eq!(warned.len(), 1, "the parent's budget warns at 80%: {warned:?}");
    std::fs::write(&go, "").unwrap();

    for address in ["/root/boss/left", "/root/boss/right", "/root/boss"] {
        assert_eq!(wait_code(&repo, address), 23, "{address}");
        let agent = repo.agent(address);
        assert_eq!(agent["state"], "budget_exceeded", "{agent}");
        assert!(repo.agent_processes(address).is_empty(), "{address} left processes");
    }
    let exceeded = events_of(&repo, "/root/boss", "budget_exceeded");
    assert_eq!(exceeded.len(), 1, "{exceeded:?}");
    assert_eq!(exceeded[0]["limit"], 1000.0);
    assert!(exceeded[0]["used"].as_f64().unwrap() >= 1000.0);
}

#[test]
fn nonsense_budgets_are_refused() {
    let repo = TestRepo::new();
    for (flag, value, words) in [
        ("--max-cost", "-1", "the cost budget must be a positive number"),
        ("--max-tokens", "0", "the tokens budget must be a positive number"),
        ("--timeout", "0", "the wall time budget must be a positive number"),
    ] {
        let out = repo.corral(&["spawn", "x", flag, value, "--", "true"]);
        assert_eq!(out.status.code(), Some(13), "{flag} {value}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains(words), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(repo.agents().is_empty());
}
