//! Issue 4, test 1: a runaway real Claude Code agent is stopped on its
//! token budget.
//!
//! The scripted model server (`corral mock-llm`) answers every model request
//! with one more Bash call, forever, each with the same known usage; the
//! real Claude Code CLI, run by corral (`corral spawn --harness claude
//! --max-tokens N --grace 0`), would call the model for ever. corral must
//! stop it on its budget: a `budget_warning` first, then `budget_exceeded`
//! with the script's figures, state `budget_exceeded`, `corral wait` exit
//! 23, no process of the agent left, and at most one model call past the
//! one whose usage crossed the budget.
//!
//! The real binary comes from `CORRAL_CLAUDE_BIN`, else from the cache
//! folder `tests/install-agent-clis.sh` installs into; a missing binary
//! FAILS the test (it never passes by skipping). The helpers are
//! corral_e2e::real_cli's, shared with tests/harness.rs.
//! `CORRAL_TEST_VERBOSE=1` prints the agent's events and the server's
//! requests even when the test passes.

use corral_e2e::real_cli::{
    claude_env, describe, diagnostics, events, is_messages_request, of_type, ps_record, run_deadline, MockLlm,
    RUN_DEADLINE,
};
use corral_e2e::{alive, TestRepo, PATIENCE};
use serde_json::{json, Value};

/// One model call's usage in the script. The message_start snapshot of a
/// call (everything but output, plus 1 output token) is 751; the call's
/// final figure (message_delta) is 1050.
const INPUT: u64 = 20;
const OUTPUT: u64 = 300;
const CACHE_READ: u64 = 600;
const CACHE_WRITE: u64 = 130;
const PER_CALL: u64 = INPUT + OUTPUT + CACHE_READ + CACHE_WRITE;
/// The snapshot a call's `message_start` carries (output counted as 1).
const START_SNAPSHOT: u64 = INPUT + CACHE_READ + CACHE_WRITE + 1;
/// The budget. Four calls spend 4200 (past the 80% warning at 4000); the
/// fifth call's start snapshot makes 4951 (still under), its final usage
/// 5250: the budget is crossed by exactly the fifth call's message_delta,
/// so the figure in `budget_exceeded` does not depend on how the daemon
/// batches the lines it reads.
const LIMIT: u64 = 5000;
/// The model call (1-based) whose usage crosses the budget.
const CROSSING_CALL: u64 = 5;

// ---------------------------------------------------------------------------

#[test]
fn runaway_claude_is_stopped_on_its_token_budget_within_one_model_call() {
    let repo = TestRepo::new();
    let step = json!({
        "shell": "true",
        "usage": {"input": INPUT, "output": OUTPUT, "cache_read": CACHE_READ, "cache_write": CACHE_WRITE},
        "repeat": "forever",
    });
    let mock = MockLlm::start(&repo, "runaway", &json!({"steps": [step]}));

    let limit = LIMIT.to_string();
    let mut command = repo.command();
    command.args(["spawn", "runaway", "--harness", "claude", "--max-tokens", &limit, "--grace", "0"]);
    command.args(["--task", "Run `true` again and again, for ever.", "--json"]);
    for (key, value) in claude_env(&repo, &mock) {
        command.env(key, value);
    }
    let out = run_deadline(command, PATIENCE, "corral spawn runaway --harness claude");
    assert!(out.status.success(), "corral spawn failed: {}", describe(&out));
    let spawn: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("spawn printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    let address = spawn["address"].as_str().unwrap_or("/root/runaway").to_string();
    assert_eq!(address, "/root/runaway", "{spawn}");
    let pid = spawn["pid"].as_u64().map(|p| p as u32);

    // `corral wait` blocks until the agent has ended: exit 23 for a budget.
    let timeout = RUN_DEADLINE.as_secs().to_string();
    let mut command = repo.command();
    command.args(["wait", &address, "--timeout", &timeout]);
    let waited = run_deadline(command, RUN_DEADLINE + PATIENCE, "corral wait /root/runaway");
    let why = || diagnostics(&repo, &address, Some(&mock));
    assert_ne!(waited.status.code(), Some(124), "the runaway was not stopped within {RUN_DEADLINE:?}\n{}", why());
    assert_eq!(waited.status.code(), Some(23), "corral wait: {}\n{}", describe(&waited), why());

    // Nothing of the agent is left once wait says it ended.
    let left = repo.agent_processes(&address);
    assert!(left.is_empty(), "processes of {address} left after it ended: {left:?}\n{}", why());
    if let Some(pid) = pid {
        assert!(!alive(pid), "the agent's main process {pid} is alive after it ended");
    }

    let record = ps_record(&repo, &address);
    assert_eq!(record["state"], "budget_exceeded", "{record}\n{}", why());

    // The events: a warning, then the crossing, with the script's figures.
    let events = events(&repo, &address);
    let exceeded = of_type(&events, "budget_exceeded");
    assert_eq!(exceeded.len(), 1, "one budget_exceeded: {exceeded:?}\n{}", why());
    let exceeded = exceeded[0];
    assert_eq!(exceeded["kind"], "tokens", "{exceeded}");
    let used = exceeded["used"].as_f64().unwrap_or_else(|| panic!("budget_exceeded has no used: {exceeded}"));
    let limit_seen = exceeded["limit"].as_f64().unwrap_or_else(|| panic!("budget_exceeded has no limit: {exceeded}"));
    assert_eq!(limit_seen, LIMIT as f64, "{exceeded}");
    let warnings = of_type(&events, "budget_warning");
    assert_eq!(warnings.len(), 1, "one budget_warning: {warnings:?}\n{}", why());
    let warning = warnings[0];
    assert_eq!(warning["kind"], "tokens", "{warning}");
    assert_eq!(warning["limit"].as_f64(), Some(LIMIT as f64), "{warning}");
    let warned_at = warning["used"].as_f64().unwrap_or_else(|| panic!("budget_warning has no used: {warning}"));
    // Past 80% after call 4 (4200), or at the latest with call 5's start
    // snapshot (4951), never at or over the limit.
    assert!(
        warned_at == ((CROSSING_CALL - 1) * PER_CALL) as f64
            || warned_at == ((CROSSING_CALL - 1) * PER_CALL + START_SNAPSHOT) as f64,
        "budget_warning used: {warning}"
    );
    assert!(
        warning["seq"].as_u64() < exceeded["seq"].as_u64(),
        "the warning must come before the crossing: {warning} / {exceeded}"
    );
    let exited = of_type(&events, "exited");
    assert_eq!(exited.len(), 1, "one exited: {exited:?}\n{}", why());
    assert_eq!(exited[0]["state"], "budget_exceeded", "{}", exited[0]);
    assert!(exited[0]["seq"].as_u64() > exceeded["seq"].as_u64(), "exited after budget_exceeded");

    // Overshoot: model requests the server got after the one whose usage
    // crossed the budget. All were recorded on arrival, and the agent is
    // gone, so none can still come.
    let recorded = mock.recorded();
    let model: Vec<&Value> = recorded.iter().filter(|r| is_messages_request(r)).collect();
    assert!(
        model.iter().all(|r| r["step"] == 0),
        "every model request is answered by the script's one step: {:?}",
        model.iter().map(|r| &r["step"]).collect::<Vec<_>>()
    );
    let calls = model.len() as u64;
    assert!(calls >= CROSSING_CALL, "only {calls} model requests, the budget needs {CROSSING_CALL}\n{}", why());
    let calls_after = calls - CROSSING_CALL;
    // The crossing is call 5's message_delta: used is exactly five whole
    // calls. The one other figure the script allows: the daemon read call
    // 5's last lines together with call 6's message_start (it lagged by a
    // whole tool run), which needs a sixth call to have reached the server.
    let whole = (CROSSING_CALL * PER_CALL) as f64;
    let with_next_start = (CROSSING_CALL * PER_CALL + START_SNAPSHOT) as f64;
    assert!(
        used == whole || (used == with_next_start && calls_after >= 1),
        "used must be {CROSSING_CALL} whole calls of {PER_CALL} tokens ({whole}), or that plus call 6's \
         start snapshot ({with_next_start}) when a sixth call was made ({calls} calls): {exceeded}\n{}",
        why()
    );
    let billed = calls * PER_CALL;
    let counted = ["input", "output", "cache_read", "cache_write"]
        .iter()
        .map(|k| record["usage"][k].as_u64().unwrap_or_else(|| panic!("ps usage has no {k}: {record}")))
        .sum::<u64>();
    eprintln!(
        "budget overshoot: limit {LIMIT} tokens; crossed by model call {CROSSING_CALL} at {used} tokens \
         (+{} over the limit); the server got {calls} model calls in all ({calls_after} after the crossing one); \
         tokens in the server's answers: {billed} (+{} over the limit); corral counted {counted}; warning at {warned_at}",
        used - LIMIT as f64,
        billed.saturating_sub(LIMIT)
    );
    if std::env::var_os("CORRAL_TEST_VERBOSE").is_some() {
        eprintln!("{}", why());
        for request in &recorded {
            eprintln!("request {} {} {} step {}", request["seq"], request["method"], request["path"], request["step"]);
        }
    }
    assert!(
        calls_after <= 1,
        "{calls_after} model calls after the one that crossed the budget (at most 1 allowed)\n{}",
        why()
    );
    // What corral counted covers what crossed, and no more than the server billed.
    assert!(counted >= CROSSING_CALL * PER_CALL && counted <= billed, "counted {counted}, billed {billed}: {record}");
}
