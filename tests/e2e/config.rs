//! corral.toml through the command line: errors that name the file, line
//! and key; roles; the repository's daily budget, which survives a daemon
//! restart; and the price table for CLIs that report no cost.

use corral_e2e::{alive, assistant, corral_bin, fake_claude, poll_until, TestRepo, PATIENCE};
use serde_json::Value;

fn write_config(repo: &TestRepo, text: &str) {
    std::fs::write(repo.repo.join("corral.toml"), text).unwrap();
}

fn spawn_fails_with(repo: &TestRepo, code: i32, words: &[&str]) {
    let out = repo.corral(&["spawn", "x", "--", "true"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    for word in words {
        assert!(stderr.contains(word), "expected {word:?} in {stderr:?}");
    }
}

#[test]
fn a_bad_config_file_names_the_line_and_the_key() {
    let repo = TestRepo::new();
    write_config(&repo, "[supervisor]\nmax_threads = 4\n\n[agents.reviewer]\nbudget = { tokns = 5 }\n");
    spawn_fails_with(&repo, 14, &["corral.toml:5:", "agents.reviewer.budget", "unknown key \"tokns\""]);
    write_config(&repo, "[supervisor]\nmax_threads = \"six\"\n");
    spawn_fails_with(&repo, 14, &["corral.toml:2:", "supervisor.max_threads", "expected a positive integer"]);
    write_config(&repo, "[budget]\n\ndaily_cost = -3\n");
    spawn_fails_with(&repo, 14, &["corral.toml:3:", "budget.daily_cost", "must be greater than 0"]);
    write_config(&repo, "[agents.a]\nreadiness = { exec = { command = [\"true\"] }, period_seconds = 0 }\n");
    spawn_fails_with(&repo, 14, &["corral.toml:2:", "agents.a.readiness.period_seconds"]);
    // Nothing was made by any of those.
    assert!(repo.agents().is_empty());
}

#[test]
fn a_role_gives_an_agent_its_command_and_budget_and_flags_override_it() {
    let repo = TestRepo::new();
    let bin = corral_bin();
    write_config(
        &repo,
        &format!(
            "[agents.sleeper]\ndescription = \"waits\"\nargs = [\"{}\", \"fake-agent\", \"hang\"]\nbudget = {{ wall = \"1s\" }}\n",
            bin.display()
        ),
    );
    repo.corral_ok(&["spawn", "nap", "--role", "sleeper", "--grace", "0"]);
    assert_eq!(repo.corral(&["wait", "nap", "--timeout", "60"]).status.code(), Some(25), "the role's wall budget");
    // A flag beats the role: a longer timeout keeps it running.
    repo.corral_ok(&["spawn", "long", "--role", "sleeper", "--timeout", "600", "--grace", "0"]);
    let out = repo.corral(&["wait", "long", "--timeout", "2"]);
    assert_eq!(out.status.code(), Some(124), "still running after 2 s");
    repo.corral_ok(&["stop", "long", "--grace", "0"]);

    let out = repo.corral(&["spawn", "who", "--role", "nobody", "--", "true"]);
    assert_eq!(out.status.code(), Some(14));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nobody"), "{}", String::from_utf8_lossy(&out.stderr));
}

fn spend(repo: &TestRepo, name: &str, id: &str, tokens: u64) {
    let go = repo.path(&format!("{name}.go"));
    let script = format!("wait-file {}; {}; hang", go.display(), assistant(id, tokens));
    let bin = fake_claude(repo, name, &script);
    let out = repo
        .command()
        .env("CORRAL_CLAUDE_BIN", bin)
        .args(["spawn", name, "--harness", "claude", "--meter", "stream", "--task", "spend", "--grace", "0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(go, "").unwrap();
}

#[test]
fn the_daily_budget_survives_a_daemon_restart() {
    let repo = TestRepo::new();
    write_config(&repo, "[budget]\ndaily_tokens = 1000\n");
    spend(&repo, "morning", "m-1", 600);
    poll_until("600 tokens spent", PATIENCE, || repo.agent("/root/morning")["usage"]["input"] == 600);

    // The daemon dies; the day's spend is in the journal.
    let daemon = repo.daemon_pid().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    poll_until("the daemon to die", PATIENCE, || !alive(daemon));

    // A new daemon (the next command starts it) counts on from 600.
    spend(&repo, "evening", "e-1", 600);
    for address in ["/root/evening", "/root/morning"] {
        assert_eq!(repo.corral(&["wait", address, "--timeout", "60"]).status.code(), Some(23), "{address}");
        assert_eq!(repo.agent(address)["state"], "budget_exceeded");
    }
    let events: Vec<Value> = repo.corral_ok(&["events"]).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let exceeded: Vec<&Value> = events.iter().filter(|e| e["type"] == "budget_exceeded").collect();
    assert_eq!(exceeded.len(), 1, "{exceeded:?}");
    assert_eq!((exceeded[0]["kind"].as_str(), exceeded[0]["used"].as_f64()), (Some("daily_tokens"), Some(1200.0)));
    assert!(exceeded[0].get("agent").is_none(), "the daily budget is the repository's: {}", exceeded[0]);

    // Spent for today, also for the next daemon.
    repo.corral_ok(&["shutdown"]);
    let out = repo.corral(&["spawn", "late", "--", "true"]);
    assert_eq!(out.status.code(), Some(11));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("daily_tokens budget for") && stderr.contains("is spent (1200 of 1000)"), "{stderr}");
}

#[test]
fn the_price_table_gives_a_cost_to_clis_that_report_none() {
    let repo = TestRepo::new();
    write_config(&repo, "[prices.\"claude-sonnet-4-5\"]\ninput = 3.0\noutput = 15.0\n");
    let bin = fake_claude(&repo, "priced", &format!("{}; hang", assistant("p-1", 400_000)));
    let out = repo
        .command()
        .env("CORRAL_CLAUDE_BIN", bin)
        .args([
            "spawn",
            "priced",
            "--harness",
            "claude",
            "--meter",
            "stream",
            "--model",
            "claude-sonnet-4-5",
            "--task",
            "t",
            "--grace",
            "0",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    poll_until("a priced usage", PATIENCE, || repo.agent("/root/priced")["cost_usd"].is_number());
    // 400,000 input tokens at $3 a million.
    let cost = repo.agent("/root/priced")["cost_usd"].as_f64().unwrap();
    assert!((cost - 1.2).abs() < 1e-9, "{cost}");
    repo.corral_ok(&["stop", "priced", "--grace", "0"]);
}

#[test]
fn the_price_table_raises_a_cost_the_cli_reports_below_its_tokens() {
    // Regression: a CLI's own cost was kept whatever the table said, so a
    // cost that lags the tokens (the last turn's, on the next turn's live
    // usage) or says nothing in a number (opencode's 0) left a cost
    // budget blind.
    let repo = TestRepo::new();
    write_config(&repo, "[prices.\"claude-sonnet-4-5\"]\ninput = 3.0\noutput = 15.0\n");
    let result = r#"print '{"type":"result","subtype":"success","is_error":false,"result":"ok","session_id":"s-1","total_cost_usd":0.01,"usage":{"input_tokens":400000,"output_tokens":0}}'"#;
    let script = format!("{}; {result}; {}; hang", assistant("p-1", 400_000), assistant("p-2", 400_000));
    let bin = fake_claude(&repo, "lagging", &script);
    let out = repo
        .command()
        .env("CORRAL_CLAUDE_BIN", bin)
        .args(["spawn", "lagging", "--harness", "claude", "--meter", "stream", "--model", "claude-sonnet-4-5"])
        .args(["--task", "t", "--grace", "0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The second turn's 400,000 live tokens too, at $3 a million: $2.40,
    // not the $0.01 the first turn's result said.
    poll_until("the second turn priced", PATIENCE, || {
        repo.agent("/root/lagging")["cost_usd"].as_f64().is_some_and(|cost| (cost - 2.4).abs() < 1e-9)
    });
    repo.corral_ok(&["stop", "lagging", "--grace", "0"]);
}

#[test]
fn worktree_root_in_the_config_places_the_worktrees() {
    let repo = TestRepo::new();
    let root = repo.path("elsewhere");
    write_config(&repo, &format!("[supervisor]\nworktree_root = \"{}\"\n", root.display()));
    let spawned = repo.spawn_fake("placed", "exit 0");
    let worktree = spawned["worktree"].as_str().unwrap();
    assert!(worktree.starts_with(root.to_str().unwrap()), "{worktree}");
    assert!(std::path::Path::new(worktree).join("README.md").exists());
}
