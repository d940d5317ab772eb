//! Real orchestrators hear their children without polling (issue 13):
//! real Claude Code that starts a child with `corral spawn` from its Bash
//! tool, and real Codex, whose process ends with its turn: corral holds it
//! (no process, no tokens) until the child's completion arrives as a
//! resumed turn, then lets it end. Both against the scripted model server;
//! each model request is checked for the child's notice.

use std::ffi::OsString;
use std::path::Path;

use corral_e2e::real_cli::{
    claude_env, codex_bin, codex_home, codex_mock_provider, diagnostics, model_requests, ps_record, run_deadline,
    wait_end, MockLlm, RUN_DEADLINE,
};
use corral_e2e::{corral_bin, poll_until, TestRepo, PATIENCE};
use serde_json::{json, Value};

/// The child both orchestrators start from their shell tool: a plain
/// command that waits for `go`, then says its result.
fn spawn_child_command(go: &Path) -> String {
    let bin = corral_bin();
    let bin = bin.display();
    format!("{bin} spawn worker --task 'say hi' -- {bin} fake-agent 'wait-file {}; print worker-says-hi'", go.display())
}

/// `corral spawn NAME ...` with extra environment, checked.
fn spawn(repo: &TestRepo, args: &[&str], env: &[(&str, OsString)]) {
    let mut command = repo.command();
    command.args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    let out = run_deadline(command, PATIENCE, "corral spawn orch");
    assert!(out.status.success(), "spawn orch: {}", String::from_utf8_lossy(&out.stderr));
}

/// The orchestrator's first turn ended (its second model request was
/// answered and the CLI reported a result) while its child still waits:
/// it must still be there, then the child may go.
fn first_turn_ends_with_the_orchestrator_held(repo: &TestRepo, mock: &MockLlm, go: &Path) {
    poll_until("the orchestrator's first turn to end", RUN_DEADLINE, || {
        model_requests(&mock.requests()).len() >= 2
            && ps_record(repo, "/root/orch")["results"].as_u64().unwrap_or(0) >= 1
    });
    let why = || diagnostics(repo, "/root/orch", Some(mock));
    assert_eq!(ps_record(repo, "/root/orch/worker")["state"], "running", "{}", why());
    assert_eq!(ps_record(repo, "/root/orch")["state"], "running", "the orchestrator ended before its child\n{}", why());
    std::fs::write(go, "").unwrap();
}

/// Its third model request carries the child's completion; the second
/// (sent before the child ended) does not.
fn third_request_carries_the_notice(repo: &TestRepo, mock: &MockLlm) {
    let why = || diagnostics(repo, "/root/orch", Some(mock));
    let requests = model_requests(&mock.requests());
    assert_eq!(requests.len(), 3, "{}", why());
    let third = requests[2]["body"].to_string();
    assert!(third.contains("[corral] /root/orch/worker ended: succeeded (exit 0)"), "{}", why());
    assert!(third.contains("worker-says-hi"), "the child's result\n{}", why());
    assert!(!requests[1]["body"].to_string().contains("ended: succeeded"), "the notice came before the child ended");
}

#[test]
fn real_claude_hears_a_child_it_spawned_from_its_bash_tool() {
    let repo = TestRepo::new();
    let go = repo.path("go");
    let steps = json!([
        {"shell": spawn_child_command(&go)},
        {"text": "I started worker and will hear when it is done."},
        {"text": "worker is done: it said hi."},
    ]);
    let mock = MockLlm::start(&repo, "orch", &json!({"steps": steps}));
    let args = ["spawn", "orch", "--harness", "claude", "--task", "Delegate saying hi", "--json"];
    spawn(&repo, &[&args[..], &["--", "--allowedTools", "Bash"]].concat(), &claude_env(&repo, &mock));

    first_turn_ends_with_the_orchestrator_held(&repo, &mock, &go);
    let orch = wait_end(&repo, "/root/orch", Some(&mock));
    let why = || diagnostics(&repo, "/root/orch", Some(&mock));
    assert_eq!(orch["state"], "succeeded", "{orch}\n{}", why());
    assert_eq!(ps_record(&repo, "/root/orch/worker")["parent"], "/root/orch");
    third_request_carries_the_notice(&repo, &mock);
}

/// Real Codex as `/root/orch`, its model scripted to start the worker and
/// end its turn, then answer the worker's notice.
fn spawn_codex_orchestrator(repo: &TestRepo, go: &Path) -> (MockLlm, tempfile::TempDir) {
    let codex_home = codex_home();
    let home = repo.path("home");
    std::fs::create_dir_all(&home).unwrap();
    let steps = json!([
        {"shell": spawn_child_command(go)},
        {"text": "I started worker and will hear when it is done."},
        {"text": "worker is done: it said hi."},
    ]);
    let mock = MockLlm::start(repo, "orch", &json!({"steps": steps}));
    let provider = codex_mock_provider(&mock);
    let env = [
        ("CORRAL_CODEX_BIN", codex_bin().into_os_string()),
        ("CODEX_HOME", codex_home.path().as_os_str().to_owned()),
        ("MOCK_KEY", "mock-key".into()),
        ("HOME", home.into_os_string()),
    ];
    let args = ["spawn", "orch", "--harness", "codex", "--model", "gpt-mock", "--task", "Delegate saying hi", "--json"];
    let codex = ["--", "--sandbox", "danger-full-access", "-c", "model_provider=mock", "-c", &provider];
    spawn(repo, &[&args[..], &codex[..]].concat(), &env);
    (mock, codex_home)
}

#[test]
fn real_codex_hears_its_childs_completion_as_a_resumed_turn() {
    let repo = TestRepo::new();
    let go = repo.path("go");
    let (mock, _codex_home) = spawn_codex_orchestrator(&repo, &go);

    first_turn_ends_with_the_orchestrator_held(&repo, &mock, &go);
    let orch = wait_end(&repo, "/root/orch", Some(&mock));
    let why = || diagnostics(&repo, "/root/orch", Some(&mock));
    assert_eq!(orch["state"], "succeeded", "{orch}\n{}", why());
    assert_eq!(orch["exit_code"], 0, "{orch}");
    third_request_carries_the_notice(&repo, &mock);

    // The notice went in as a resumed turn of the same thread, and was
    // journaled as delivered once.
    let events: Vec<Value> = repo
        .corral_ok(&["events", "--agent", "/root/orch"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let delivered: Vec<&Value> = events.iter().filter(|e| e["type"] == "notice_delivered").collect();
    assert_eq!(delivered.len(), 1, "{delivered:?}\n{}", why());
    let started = events.iter().filter(|e| e["type"] == "started" && e["agent"] == "/root/orch").count();
    assert_eq!(started, 2, "the first process and one resumed turn\n{}", why());
}

#[test]
fn a_held_codex_is_stopped_at_once_with_its_subtree() {
    let repo = TestRepo::new();
    let go = repo.path("never");
    let (mock, _codex_home) = spawn_codex_orchestrator(&repo, &go);
    poll_until("the orchestrator's first turn to end", RUN_DEADLINE, || {
        model_requests(&mock.requests()).len() >= 2
            && ps_record(&repo, "/root/orch")["results"].as_u64().unwrap_or(0) >= 1
    });
    let why = || diagnostics(&repo, "/root/orch", Some(&mock));
    assert_eq!(ps_record(&repo, "/root/orch")["state"], "running", "{}", why());

    repo.corral_ok(&["stop", "/root/orch"]);
    for address in ["/root/orch", "/root/orch/worker"] {
        let record = wait_end(&repo, address, Some(&mock));
        assert_eq!(record["state"], "stopped", "{address}: {record}\n{}", why());
    }
    // Nothing resumed it: no notice reached a stopped parent.
    assert_eq!(model_requests(&mock.requests()).len(), 2, "{}", why());
}

#[test]
fn a_held_codex_is_adopted_by_a_restarted_daemon_and_still_hears_its_child() {
    let repo = TestRepo::new();
    let go = repo.path("go");
    let (mock, _codex_home) = spawn_codex_orchestrator(&repo, &go);
    poll_until("the orchestrator's first turn to end", RUN_DEADLINE, || {
        model_requests(&mock.requests()).len() >= 2
            && ps_record(&repo, "/root/orch")["results"].as_u64().unwrap_or(0) >= 1
    });
    // Held, with no process: the daemon dies and a new one adopts it.
    let daemon = repo.daemon_pid().expect("a daemon runs");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    poll_until("the daemon to die", PATIENCE, || !corral_e2e::alive(daemon));
    let why = || diagnostics(&repo, "/root/orch", Some(&mock));
    assert_eq!(ps_record(&repo, "/root/orch")["state"], "running", "not adopted\n{}", why());
    std::fs::write(&go, "").unwrap();
    let orch = wait_end(&repo, "/root/orch", Some(&mock));
    assert_eq!(orch["state"], "succeeded", "{orch}\n{}", why());
    third_request_carries_the_notice(&repo, &mock);
}
