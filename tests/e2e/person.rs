//! A person at the keyboard: `events -f` and `wait` read as lines on a
//! terminal and stay JSON (or quiet) for scripts, `view` of a structured
//! agent is text, every `--json` carries `"v":1`, the shell completions
//! and the man page work, `corral doctor` tells what this machine allows,
//! and the demo shows a budget stop, a message and the merge queue.

use std::process::Command;
use std::time::{Duration, Instant};

use corral_e2e::real_cli::{claude_bin, codex_bin, run_deadline};
use corral_e2e::{assistant, fake_claude, poll_until, TestRepo, PATIENCE};
use serde_json::Value;

use crate::top::{corral_script, Tmux};

#[test]
fn events_follow_prints_lines_on_a_terminal_and_json_otherwise() {
    let repo = TestRepo::new();
    repo.spawn_fake("talker", "print hello-person; exit 0");
    poll_until("talker to end", PATIENCE, || repo.agent("/root/talker")["state"] == "succeeded");

    // Piped: JSON lines, each versioned.
    let piped = repo.corral_ok(&["events"]);
    let events: Vec<Value> = piped.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert!(events.iter().all(|e| e["v"] == 1), "{piped}");
    assert!(events.iter().any(|e| e["type"] == "output" && e["text"] == "hello-person"), "{piped}");

    let Some(tmux) = Tmux::new(&repo) else { return };
    tmux.start_shell("events", 120, 30);
    let follow = corral_script(&repo, "events.sh", "events -f");
    tmux.type_line("events", &format!("sh '{}'", follow.display()));
    let screen = tmux.wait_for("events", "human lines", |s| {
        s.lines().any(|l| l.contains("/root/talker") && l.contains("hello-person"))
            && s.lines().any(|l| l.contains("/root/talker") && l.contains("ended: succeeded (exit 0)"))
    });
    assert!(!screen.contains("{\"v\""), "no JSON on a terminal:\n{screen}");
    assert!(screen.lines().any(|l| l.contains("/root/talker") && l.contains("spawned (generic)")), "{screen}");
    // It follows: a new agent's lines arrive while it runs.
    repo.spawn_fake("later", "print late-line; exit 0");
    tmux.wait_for("events", "the later agent", |s| {
        s.lines().any(|l| l.contains("/root/later") && l.contains("late-line"))
    });
    tmux.keys("events", &["C-c"]);
    tmux.wait_for("events", "the prompt", |s| s.lines().rev().any(|l| l.trim() == crate::top::PROMPT.trim_end()));

    // `--json` on a terminal: JSON lines.
    let json = corral_script(&repo, "events-json.sh", "events --json");
    tmux.type_line("events", &format!("clear; sh '{}'", json.display()));
    tmux.wait_for("events", "JSON lines on the terminal", |s| s.lines().any(|l| l.starts_with("{\"v\":1,")));
}

#[test]
fn wait_on_a_terminal_says_what_it_waits_for_and_nothing_when_piped() {
    let repo = TestRepo::new();
    let gate = repo.path("go");
    repo.spawn_fake("slow", &format!("print working; wait-file '{}'; exit 0", gate.display()));

    let Some(tmux) = Tmux::new(&repo) else { return };
    tmux.start_shell("wait", 100, 20);
    let wait = corral_script(&repo, "wait.sh", "wait slow; echo WAIT-EXIT=$?");
    tmux.type_line("wait", &format!("sh '{}'", wait.display()));
    tmux.wait_for("wait", "the waiting line", |s| s.contains("waiting for /root/slow: running"));
    std::fs::write(&gate, "").unwrap();
    let screen = tmux.wait_for("wait", "the end of the wait", |s| s.contains("WAIT-EXIT=0"));
    assert!(screen.contains("/root/slow succeeded"), "{screen}");
    assert!(!screen.contains("waiting for /root/slow"), "the live line is cleared:\n{screen}");

    // Piped: the answer only, nothing on stderr.
    let out = repo.corral(&["wait", "slow"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("/root/slow succeeded"));
}

#[test]
fn view_of_a_structured_agent_is_text_and_every_json_output_is_versioned() {
    let repo = TestRepo::new();
    let tool = r#"print '{"type":"assistant","message":{"id":"m2","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Running the tests now."},{"type":"tool_use","id":"tu1","name":"Bash","input":{"command":"cargo test"}}],"usage":{"input_tokens":10,"output_tokens":5}},"session_id":"s-1"}'"#;
    let result = r#"print '{"type":"result","subtype":"success","is_error":false,"result":"All green.","session_id":"s-1","usage":{"input_tokens":10,"output_tokens":5}}'"#;
    let script = [assistant("m1", 100), tool.to_string(), result.to_string(), "exit 0".into()].join("; ");
    let bin = fake_claude(&repo, "viewed", &script);
    let out = repo
        .command()
        .env("CORRAL_CLAUDE_BIN", &bin)
        .args(["spawn", "viewed", "--harness", "claude", "--task", "test", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let spawned: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(spawned["v"], 1, "spawn --json: {spawned}");
    let waited = repo.corral(&["wait", "viewed", "--json"]);
    let waited: Value = serde_json::from_slice(&waited.stdout).unwrap();
    assert!(waited.as_array().is_some_and(|a| a.iter().all(|x| x["v"] == 1)), "wait --json: {waited}");

    let view = repo.corral_ok(&["view", "viewed"]);
    assert!(view.contains("Running the tests now."), "{view}");
    assert!(view.contains("→ Bash: cargo test"), "{view}");
    assert!(view.contains("result: success"), "{view}");
    assert!(!view.contains("\"type\""), "no JSON lines in view:\n{view}");

    let ps = repo.corral_json(&["ps", "--all", "--json"]);
    let agents = ps.as_array().expect("ps --json is an array of agents");
    assert!(!agents.is_empty() && agents.iter().all(|a| a["v"] == 1), "ps --json: {ps}");
    assert_eq!(repo.corral_json(&["view", "viewed", "--json"])["v"], 1);
    assert_eq!(repo.corral_json(&["gc", "--json"])["v"], 1);
    assert_eq!(
        repo.corral_json(&["stop", "viewed", "--json"]).as_array().map(|a| a.iter().all(|x| x["v"] == 1)),
        Some(true)
    );
}

#[test]
fn bash_completions_parse_and_complete_spawn_and_the_man_page_renders() {
    let repo = TestRepo::new();
    let script = repo.path("corral.bash");
    std::fs::write(&script, repo.corral_ok(&["completions", "bash"])).unwrap();
    let parsed = Command::new("bash").arg("-n").arg(&script).output().unwrap();
    assert!(parsed.status.success(), "bash -n: {}", String::from_utf8_lossy(&parsed.stderr));
    let complete = |line: &str| {
        let words: Vec<&str> = line.split(' ').collect();
        let program = format!(
            "source '{}'; COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE='{line}'; COMP_POINT={}; \
             _corral corral '{}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display(),
            words.join(" "),
            words.len() - 1,
            line.len(),
            words[words.len() - 1],
            words[words.len().saturating_sub(2)],
        );
        let out = Command::new("bash").arg("--norc").arg("-c").arg(&program).output().unwrap();
        assert!(out.status.success(), "{program}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect::<Vec<_>>()
    };
    assert_eq!(complete("corral sp"), ["spawn"]);
    assert!(complete("corral spawn --max-t").contains(&"--max-tokens".to_string()));
    for shell in ["zsh", "fish"] {
        let text = repo.corral_ok(&["completions", shell]);
        assert!(text.contains("spawn"), "{shell}: {text}");
    }

    let page = repo.path("corral.1");
    std::fs::write(&page, repo.corral_ok(&["man"])).unwrap();
    if Command::new("man").arg("--version").output().is_err() {
        eprintln!("skipped rendering: man is not installed (apt-get install -y man-db groff-base)");
        return;
    }
    let rendered = Command::new("man")
        .arg("-l")
        .arg(&page)
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .env("MANWIDTH", "80")
        .output()
        .unwrap();
    assert!(rendered.status.success(), "man -l: {}", String::from_utf8_lossy(&rendered.stderr));
    let text = String::from_utf8_lossy(&rendered.stdout);
    for word in ["NAME", "corral", "SYNOPSIS", "spawn", "doctor", "top"] {
        assert!(text.contains(word), "the man page has no {word}:\n{text}");
    }
    let spawn_page = repo.corral_ok(&["man", "spawn"]);
    assert!(spawn_page.contains("corral\\-spawn") && spawn_page.contains("max\\-tokens"), "{spawn_page}");
}

/// The kernel's Landlock ABI, asked as doctor asks it (0: none).
fn landlock_abi() -> i64 {
    // SAFETY: a null attribute, size 0 and the VERSION flag only return the ABI.
    unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<libc::c_void>(), 0usize, 1u32) }
}

#[test]
fn doctor_reports_landlock_the_installed_clis_and_a_safe_state_folder() {
    let repo = TestRepo::new();
    repo.spawn_fake("one", "exit 0"); // makes the state folder and the socket
    let (claude, codex) = (claude_bin(), codex_bin());
    let doctor = |json: bool| {
        let mut command = repo.command();
        command
            .env("CORRAL_CLAUDE_BIN", &claude)
            .env("CORRAL_CODEX_BIN", &codex)
            .env_remove("CORRAL_GEMINI_BIN")
            .arg("doctor");
        if json {
            command.arg("--json");
        }
        run_deadline(command, Duration::from_secs(120), "corral doctor")
    };
    let out = doctor(false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let line = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no {name} line:\n{text}"))
            .to_string()
    };
    let abi = landlock_abi();
    match abi {
        abi if abi > 0 => assert!(line("landlock").contains(&format!("ABI {abi}")), "{text}"),
        _ => assert!(line("landlock").contains("not available"), "{text}"),
    }
    for (name, bin) in [("claude", &claude), ("codex", &codex)] {
        let found = line(name);
        assert!(found.trim_start().starts_with("ok"), "{found}");
        assert!(found.contains(&bin.display().to_string()), "{found}");
    }
    assert!(line("claude").contains("2.1.328"), "the pinned Claude Code: {text}");
    assert!(line("codex").contains("0.169.0"), "the pinned Codex: {text}");
    assert!(line("gemini").trim_start().starts_with("--"), "{text}");
    assert!(line("state").contains("is yours, mode 0700"), "{text}");
    assert!(line("socket").contains("is yours, mode 0600"), "{text}");
    assert!(text.contains("corral can run here."), "{text}");

    let out = doctor(true);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["v"], 1);
    assert_eq!(report["ok"], true);
    let checks = report["checks"].as_array().unwrap();
    let landlock = checks.iter().find(|c| c["name"] == "landlock").unwrap();
    if abi > 0 {
        assert_eq!(landlock["value"], abi, "{landlock}");
    }
    let claude_check = checks.iter().find(|c| c["name"] == "claude").unwrap();
    assert_eq!(claude_check["status"], "ok");
}

#[test]
fn the_demo_shows_a_budget_stop_a_message_and_the_merges_in_under_a_minute() {
    let repo = TestRepo::new(); // the demo makes its own repository; this is for the cleanup
    let started = Instant::now();
    let mut command = repo.command();
    command.env_remove("CORRAL_CLAUDE_BIN").arg("demo");
    let out = run_deadline(command, Duration::from_secs(180), "corral demo");
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let summary = text.split("What happened:").nth(1).unwrap_or_else(|| panic!("no summary:\n{text}"));
    let line = |word: &str| {
        summary
            .lines()
            .find(|l| l.split_whitespace().next() == Some(word))
            .unwrap_or_else(|| panic!("no {word} line in the summary:\n{text}"))
    };
    assert!(line("budget").contains("/root/runaway ran away and was stopped by its token budget"), "{text}");
    assert!(line("message").contains("/root/chat was sent \"is the health endpoint in yet?\""), "{text}");
    assert!(line("message").contains("answered \"got is the health endpoint in yet?\""), "{text}");
    let merges = line("merges");
    assert!(merges.contains("3 agents' work merged into main through the queue"), "{text}");
    for agent in ["/root/docs", "/root/api", "/root/tests"] {
        assert!(merges.contains(agent), "{merges}");
    }
    let conflict = line("conflict");
    assert!(conflict.contains("/root/hotfix") && conflict.contains("src/lib.rs"), "{conflict}");
    assert!(conflict.contains("kept on branch corral/root/hotfix"), "{conflict}");
    assert!(took < Duration::from_secs(60), "the demo took {took:?}");
}
