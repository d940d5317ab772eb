//! Gemini CLI, opencode and Aider, real, under corral (issue 14): each
//! pinned CLI runs headless as an agent (`corral spawn --harness
//! gemini|opencode|aider`) against corral's scripted model server (`corral
//! mock-llm`, the Gemini API for Gemini CLI, OpenAI Chat Completions for
//! the other two), writes a file in its worktree through its own editing
//! tool (Aider through its edit format), and corral reads its live output
//! into events and usage equal to the script's; a runaway of each is
//! stopped on its token budget by its metering proxy (the default meter
//! for all three), no call reaching the server after the crossing;
//! messages reach the ones that take them (Aider, one input a turn;
//! opencode, a follow-up run each).
//!
//! The real binaries come from `CORRAL_GEMINI_BIN`, `CORRAL_OPENCODE_BIN`,
//! `CORRAL_AIDER_BIN`, else from the cache folder
//! `tests/install-agent-clis.sh` installs into. A missing binary FAILS the
//! test: these tests never pass by skipping. How each CLI is pointed at the
//! server is in corral_e2e::real_cli (`gemini_env`, `opencode_env`,
//! `aider_env`) and docs/agents/.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use corral_e2e::real_cli::{
    aider_env, assert_usage_everywhere, corral_ok, describe, diagnostics, events, figures, find_named, gemini_env,
    model_requests, of_type, opencode_env, ps_record, run_deadline, spawn_harness, wait_end, MockLlm, AIDER_MODEL,
    OPENCODE_MODEL, RUN_DEADLINE,
};
use corral_e2e::{TestRepo, PATIENCE};
use serde_json::{json, Value};

/// The file is in the agent's worktree with `content`, and nowhere else in
/// the test's folders.
fn assert_written_only_in_worktree(
    repo: &TestRepo,
    worktree: &Path,
    name: &str,
    content: &str,
    why: &dyn Fn() -> String,
) {
    let target = worktree.join(name);
    let written = std::fs::read_to_string(&target).unwrap_or_else(|e| panic!("{}: {e}\n{}", target.display(), why()));
    assert_eq!(written, content, "{}", why());
    let mut found = Vec::new();
    find_named(repo.root.path(), name, &mut found);
    let found: Vec<PathBuf> = found.iter().map(|p| p.canonicalize().unwrap()).collect();
    assert_eq!(found, vec![target.canonicalize().unwrap()], "the file must exist only in the agent's worktree");
}

/// The tool_use named `name` and its tool_result, which succeeded, in order.
fn assert_tool_ran(events: &[Value], name: &str, file: &str, why: &dyn Fn() -> String) {
    let uses = of_type(events, "tool_use");
    let used = uses.iter().find(|e| e["name"] == name).unwrap_or_else(|| panic!("no {name} tool_use\n{}", why()));
    assert!(used["summary"].as_str().is_some_and(|s| s.contains(file)), "the {name} summary names {file}: {used}");
    let results = of_type(events, "tool_result");
    let result = results
        .iter()
        .find(|e| e["id"] == used["id"])
        .unwrap_or_else(|| panic!("no tool_result for {}\n{}", used["id"], why()));
    assert_eq!(result["is_error"], false, "{result}");
    assert!(used["seq"].as_u64() < result["seq"].as_u64(), "the result comes after the use");
}

// ---------------------------------------------------------------------------
// 1. Each writes a file in its worktree; usage equals the script's

#[test]
fn real_gemini_writes_in_its_worktree_and_corral_counts_its_usage_exactly() {
    let repo = TestRepo::new();
    let worktree = repo.worktree_of("gem");
    let (name, content) = ("hello-from-gemini.txt", "hello from the mock, via gemini\n");
    let steps = [
        json!({"text": "I'll create the file.",
               "tool": {"name": "write_file", "input": {"file_path": name, "content": content}},
               "usage": {"input": 2000, "output": 20}}),
        json!({"text": "Wrote hello-from-gemini.txt.",
               "usage": {"input": 2100, "output": 5, "cache_read": 1500, "reasoning": 3}}),
    ];
    let mock = MockLlm::start(&repo, "gemini", &json!({"steps": steps}));
    let task = "Create hello-from-gemini.txt";
    let extra = ["--approval-mode", "auto_edit"];
    let spawn =
        spawn_harness(&repo, "gem", "gemini", Some("gemini-2.5-flash"), task, &gemini_env(&repo, &mock), &extra);
    let address = spawn["address"].as_str().unwrap_or("/root/gem").to_string();

    let record = wait_end(&repo, &address, Some(&mock));
    let why = || diagnostics(&repo, &address, Some(&mock));
    assert_eq!(record["state"], "succeeded", "{record}\n{}", why());
    assert_written_only_in_worktree(&repo, &worktree, name, content, &why);

    let events = events(&repo, &address);
    let started = of_type(&events, "session_started");
    assert_eq!(started.len(), 1, "{started:?}\n{}", why());
    assert_eq!(started[0]["model"], "gemini-2.5-flash");
    assert_tool_ran(&events, "write_file", name, &why);
    let results = of_type(&events, "result");
    assert_eq!(results.len(), 1, "{results:?}\n{}", why());
    assert_eq!(results[0]["success"], true);
    assert!(results[0]["text"].as_str().is_some_and(|t| t.ends_with("Wrote hello-from-gemini.txt.")), "{}", results[0]);
    assert_eq!(results[0]["session_id"], started[0]["session_id"]);

    // Gemini's counts hold the cached tokens in the prompt and the thinking
    // in the total: corral's input is 4100 - 1500, its output 25 + 3.
    assert_usage_everywhere(&repo, &address, "gemini", &figures(2600, 28, 1500, 0));
    let requests = model_requests(&mock.requests());
    assert_eq!(requests.len(), 2, "one model request per step: {requests:?}");
    assert!(requests[0]["path"].as_str().unwrap().ends_with("/models/gemini-2.5-flash:streamGenerateContent?alt=sse"));
    assert!(requests[0]["body"].to_string().contains(task), "the task reached the model");
    assert!(requests[1]["body"].to_string().contains("functionResponse"), "the tool's result went back");
}

#[test]
fn real_opencode_writes_in_its_worktree_and_corral_counts_its_usage_exactly() {
    let repo = TestRepo::new();
    let worktree = repo.worktree_of("oc");
    let (name, content) = ("hello-from-opencode.txt", "hello from the mock, via opencode\n");
    let steps = [
        json!({"tool": {"name": "write", "input": {"filePath": name, "content": content}},
               "usage": {"input": 3000, "output": 40}}),
        json!({"text": "Created hello-from-opencode.txt.", "usage": {"input": 3100, "output": 6, "cache_read": 2900}}),
    ];
    let mock = MockLlm::start(&repo, "opencode", &json!({"steps": steps}));
    // It starts with `-`, as a list item does: it is the message, not a flag.
    let task = "- Create hello-from-opencode.txt";
    let spawn = spawn_harness(&repo, "oc", "opencode", Some(OPENCODE_MODEL), task, &opencode_env(&repo, &mock), &[]);
    let address = spawn["address"].as_str().unwrap_or("/root/oc").to_string();

    let record = wait_end(&repo, &address, Some(&mock));
    let why = || diagnostics(&repo, &address, Some(&mock));
    assert_eq!(record["state"], "succeeded", "{record}\n{}", why());
    assert_written_only_in_worktree(&repo, &worktree, name, content, &why);

    let events = events(&repo, &address);
    let started = of_type(&events, "session_started");
    assert_eq!(started.len(), 1, "{started:?}\n{}", why());
    assert_tool_ran(&events, "write", name, &why);
    let results = of_type(&events, "result");
    assert_eq!(results.len(), 1, "{results:?}\n{}", why());
    assert_eq!(results[0]["success"], true);
    assert_eq!(results[0]["text"], "Created hello-from-opencode.txt.");

    // opencode's input leaves the cached tokens out: 3000 + (3100 - 2900).
    assert_usage_everywhere(&repo, &address, "opencode", &figures(3200, 46, 2900, 0));
    // corral titled the session, so there was no title call: every model
    // request the server got is one opencode reported.
    let requests = model_requests(&mock.requests());
    assert_eq!(requests.len(), 2, "one model request per step, no title call: {requests:?}");
    assert!(requests.iter().all(|r| r["path"] == "/v1/chat/completions"), "{requests:?}");
    assert!(requests[0]["body"].to_string().contains(task), "the task reached the model");
}

#[test]
fn real_aider_edits_in_its_worktree_and_corral_counts_its_usage_exactly() {
    let repo = TestRepo::new();
    let worktree = repo.worktree_of("aid");
    let (name, content) = ("hello-from-aider.txt", "hello from the mock, via aider\n");
    // Aider has no tools: it edits through its "whole" edit format, a file
    // name then the file in a fence. Figures under 1000 print exactly.
    let reply = format!("I will create the file.\n\n{name}\n```\n{content}```\n");
    let steps = [json!({"text": reply, "usage": {"input": 600, "output": 40}})];
    let mock = MockLlm::start(&repo, "aider", &json!({"steps": steps}));
    let task = "Create hello-from-aider.txt";
    let spawn = spawn_harness(&repo, "aid", "aider", Some(AIDER_MODEL), task, &aider_env(&repo, &mock), &[]);
    let address = spawn["address"].as_str().unwrap_or("/root/aid").to_string();

    let record = wait_end(&repo, &address, Some(&mock));
    let why = || diagnostics(&repo, &address, Some(&mock));
    assert_eq!(record["state"], "succeeded", "{record}\n{}", why());
    assert_eq!(record["exit_code"], 0, "{record}");
    assert_written_only_in_worktree(&repo, &worktree, name, content, &why);

    let events = events(&repo, &address);
    let progress: Vec<&str> = of_type(&events, "progress").iter().filter_map(|e| e["text"].as_str()).collect();
    assert!(progress.iter().any(|t| *t == format!("Applied edit to {name}")), "{progress:?}\n{}", why());
    // Aider prints the server's figures, and the price from its metadata:
    // 600 * $0.000002 + 40 * $0.00001.
    let cost = assert_usage_everywhere(&repo, &address, "aider", &figures(600, 40, 0, 0));
    assert_eq!(cost.as_f64(), Some(0.0016), "{}", why());
    // One call: no commit-message call (corral runs it --no-auto-commits).
    let requests = model_requests(&mock.requests());
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(requests[0]["body"].to_string().contains(task), "the task reached the model");
    assert!(requests[0]["body"].get("stream").is_none_or(|s| s == false), "Aider runs --no-stream");
}

// ---------------------------------------------------------------------------
// 2. A runaway of each is stopped on its token budget

/// What a runaway's end showed: the model calls the server got, and the
/// `budget_exceeded` event.
struct Runaway {
    calls: u64,
    exceeded: Value,
    record: Value,
}

/// Spawns `harness` with `--max-tokens limit --grace 0` against a script
/// that never runs out (its last step repeats for ever), metered by its
/// proxy (the default), and checks corral stopped it on its budget: `corral
/// wait` exits 23, state `budget_exceeded`, one `budget_exceeded` (tokens,
/// the limit) after any warning, nothing of the agent left. The proxy lets
/// a call go upstream only while the budget has room for it (`sent`
/// calls), refuses the next before it leaves, and no call reaches the
/// server after that: every request the server got is one of the metered
/// calls, and the spend before the last of them was under the limit.
/// Prints the calls after the crossing (0), and the refused ones.
#[allow(clippy::too_many_arguments)]
fn run_away(
    name: &str,
    harness: &str,
    model: &str,
    steps: Vec<Value>,
    limit: u64,
    sent: u64,
    env: impl Fn(&TestRepo, &MockLlm) -> Vec<(&'static str, OsString)>,
    extra: &[&str],
) -> Runaway {
    let repo = TestRepo::new();
    let mock = MockLlm::start(&repo, name, &json!({"steps": steps}));
    let limit_text = limit.to_string();
    let mut command = repo.command();
    command.args(["spawn", name, "--harness", harness, "--model", model, "--max-tokens", &limit_text, "--grace", "0"]);
    command.args(["--task", "Look around again and again, for ever.", "--json"]);
    if !extra.is_empty() {
        command.arg("--").args(extra);
    }
    for (key, value) in env(&repo, &mock) {
        command.env(key, value);
    }
    let out = run_deadline(command, PATIENCE, &format!("corral spawn {name} --harness {harness}"));
    assert!(out.status.success(), "corral spawn failed: {}", describe(&out));
    let address = format!("/root/{name}");

    let timeout = RUN_DEADLINE.as_secs().to_string();
    let mut command = repo.command();
    command.args(["wait", &address, "--timeout", &timeout]);
    let waited = run_deadline(command, RUN_DEADLINE + PATIENCE, &format!("corral wait {address}"));
    let why = || diagnostics(&repo, &address, Some(&mock));
    assert_ne!(waited.status.code(), Some(124), "the runaway was not stopped within {RUN_DEADLINE:?}\n{}", why());
    assert_eq!(waited.status.code(), Some(23), "corral wait: {}\n{}", describe(&waited), why());
    let left = repo.agent_processes(&address);
    assert!(left.is_empty(), "processes of {address} left after it ended: {left:?}\n{}", why());
    let record = ps_record(&repo, &address);
    assert_eq!(record["state"], "budget_exceeded", "{record}\n{}", why());

    let events = events(&repo, &address);
    let exceeded = of_type(&events, "budget_exceeded");
    assert_eq!(exceeded.len(), 1, "one budget_exceeded: {exceeded:?}\n{}", why());
    let exceeded = exceeded[0].clone();
    assert_eq!(exceeded["kind"], "tokens", "{exceeded}");
    assert_eq!(exceeded["limit"].as_f64(), Some(limit as f64), "{exceeded}");
    for warning in of_type(&events, "budget_warning") {
        assert!(warning["seq"].as_u64() < exceeded["seq"].as_u64(), "a warning after the crossing: {warning}");
    }
    let exited = of_type(&events, "exited");
    assert_eq!(exited.len(), 1, "{exited:?}\n{}", why());
    assert_eq!(exited[0]["state"], "budget_exceeded");

    let calls = model_requests(&mock.recorded()).len() as u64;
    assert_eq!(record["meter"], "proxy", "{record}");
    let metered = of_type(&events, "model_call");
    let charged: Vec<u64> = metered
        .iter()
        .filter(|c| c["refused"].is_null())
        .map(|c| ["input", "output", "cache_read", "cache_write"].iter().map(|f| c["usage"][f].as_u64().unwrap()).sum())
        .collect();
    let refused = metered.iter().filter(|c| c["refused"].is_string()).count();
    assert_eq!(calls, charged.len() as u64, "every call upstream was admitted and metered\n{}", why());
    assert_eq!(calls, sent, "the budget has room for {sent} calls\n{}", why());
    let before_last: u64 = charged.iter().rev().skip(1).sum();
    assert!(before_last < limit, "a call went upstream after the budget was spent: {charged:?}\n{}", why());
    // The crossing: the first call that spent the budget, or that was
    // refused for want of room; none reached the server after it.
    let crossing = charged.iter().scan(0, |sum, c| {
        *sum += c;
        Some(*sum)
    });
    let crossing = crossing.take_while(|sum| *sum < limit).count() as u64 + 1;
    let after = calls.saturating_sub(crossing);
    let used = exceeded["used"].as_f64().unwrap_or_default();
    eprintln!(
        "{harness} runaway through the proxy: limit {limit} tokens, {used} used; the server got {calls} model calls, \
         {after} after the crossing (call {crossing}); {refused} refused"
    );
    assert_eq!(after, 0, "{after} model calls after the crossing one\n{}", why());
    assert!(refused >= 1 || used >= limit as f64, "the budget was neither spent nor refused a call\n{}", why());
    Runaway { calls, exceeded, record }
}

#[test]
fn runaway_gemini_is_stopped_on_its_token_budget() {
    // Every answer is one more list_directory call: 1000 in (200 of them
    // cached), 50 out, 4 thinking, which the proxy counts from the wire as
    // 800 + 200 + 54 = 1054. After four (4216) the fifth, estimated at
    // about 1000 input, does not fit in the 784 left: refused before it
    // leaves. Each call differs (its `ignore` list): Gemini CLI ends a run
    // by itself after five identical calls in a row ("loop detected").
    let usage = json!({"input": 1000, "output": 50, "cache_read": 200, "reasoning": 4});
    let call =
        |i: usize| json!({"name": "list_directory", "input": {"dir_path": ".", "ignore": [format!("none-{i}")]}});
    let mut steps: Vec<Value> = (0..20).map(|i| json!({"tool": call(i), "usage": usage})).collect();
    steps.push(json!({"tool": call(20), "usage": usage, "repeat": "forever"}));
    let end = run_away("runaway-gem", "gemini", "gemini-2.5-flash", steps, 5000, 4, gemini_env, &[]);
    assert_eq!(end.exceeded["used"].as_f64(), Some(4216.0), "{} after {} calls", end.exceeded, end.calls);
}

#[test]
fn runaway_opencode_is_stopped_on_its_token_budget() {
    // Every answer is one more glob call, 1000 in and 50 out: after four
    // (4200), the fifth, estimated at about 1000 input, does not fit in the
    // 800 left.
    let step = json!({"tool": {"name": "glob", "input": {"pattern": "*.md"}},
                      "usage": {"input": 1000, "output": 50}, "repeat": "forever"});
    let end = run_away("runaway-oc", "opencode", OPENCODE_MODEL, vec![step], 5000, 4, opencode_env, &[]);
    assert_eq!(end.exceeded["used"].as_f64(), Some(4200.0), "{}", end.exceeded);
    let counted = end.record["usage"]["input"].as_u64().unwrap() + end.record["usage"]["output"].as_u64().unwrap();
    assert_eq!(counted, end.calls * 1050, "counted {counted} of {} calls", end.calls);
}

#[test]
fn runaway_aider_is_stopped_on_its_token_budget() {
    // Aider has no tools to call for ever; what it repeats is its own
    // reflection: an edit whose SEARCH part matches nothing is sent back to
    // the model to fix, up to three times (four calls). Each call is 400 in
    // and 50 out: after the first (450), the second, estimated at about 400
    // input, does not fit in the 350 left.
    let reply = "hello.txt\n```\n<<<<<<< SEARCH\nno such line\n=======\nhello\n>>>>>>> REPLACE\n```\n";
    let step = json!({"text": reply, "usage": {"input": 400, "output": 50}, "repeat": "forever"});
    let end = run_away("runaway-aid", "aider", AIDER_MODEL, vec![step], 800, 1, aider_env, &["--edit-format", "diff"]);
    assert_eq!(end.exceeded["used"].as_f64(), Some(450.0), "{}", end.exceeded);
}

// ---------------------------------------------------------------------------
// 3. Messages where the CLI takes them: Aider reads one input a turn

/// The text of the last user message of a Chat Completions request.
fn last_user_text(request: &Value) -> String {
    let messages = request["body"]["messages"].as_array().cloned().unwrap_or_default();
    let last = messages.iter().rev().find(|m| m["role"] == "user").cloned().unwrap_or_default();
    match &last["content"] {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

#[test]
fn ten_messages_reach_a_running_aider_agent_in_order() {
    let repo = TestRepo::new();
    // The task and each message is a turn of its own: eleven answers, the
    // first held back so that every message is sent while it runs.
    let mut steps = vec![json!({"text": "Answer 0.", "delay_ms": 2000, "usage": {"input": 300, "output": 3}})];
    steps.extend((1..=10).map(|i| json!({"text": format!("Answer {i}."), "usage": {"input": 300, "output": 3}})));
    let mock = MockLlm::start(&repo, "aider-messages", &json!({"steps": steps}));
    let task = "Say the word TASK-ZERO back.";
    let spawn = spawn_harness(&repo, "talk", "aider", Some(AIDER_MODEL), task, &aider_env(&repo, &mock), &[]);
    let address = spawn["address"].as_str().unwrap_or("/root/talk").to_string();
    let texts: Vec<String> = (1..=10).map(|i| format!("message number {i}, say it back")).collect();
    let ids: Vec<String> =
        texts.iter().map(|text| corral_ok(&repo, &["send", &address, text]).trim().to_string()).collect();

    let record = wait_end(&repo, &address, Some(&mock));
    let why = || diagnostics(&repo, &address, Some(&mock));
    assert_eq!(record["state"], "succeeded", "{record}\n{}", why());

    // The model got the task, then each message, in order, one turn each.
    let requests = model_requests(&mock.requests());
    assert_eq!(requests.len(), 11, "the task and ten messages, one call each\n{}", why());
    assert!(last_user_text(&requests[0]).contains(task), "{}", last_user_text(&requests[0]));
    for (i, text) in texts.iter().enumerate() {
        let got = last_user_text(&requests[i + 1]);
        assert!(got.contains(text.as_str()), "call {} should carry {text:?}, carries {got:?}", i + 1);
    }

    // Journaled as sent, then delivered, in order; eleven answered calls.
    let events = events(&repo, &address);
    let seq_of = |kind: &str, id: &str| {
        events
            .iter()
            .find(|e| e["type"] == kind && e["message_id"] == id)
            .and_then(|e| e["seq"].as_u64())
            .unwrap_or_else(|| panic!("no {kind} for {id}\n{}", why()))
    };
    let delivered: Vec<u64> = ids.iter().map(|id| seq_of("message_delivered", id)).collect();
    assert!(delivered.windows(2).all(|w| w[0] < w[1]), "delivered out of order: {delivered:?}");
    for id in &ids {
        assert!(seq_of("message_sent", id) < seq_of("message_delivered", id));
    }
    let results = of_type(&events, "result");
    assert_eq!(results.len(), 11, "{results:?}");
    assert!(results.iter().all(|r| r["success"] == true), "{results:?}");
    assert_usage_everywhere(&repo, &address, "aider", &figures(11 * 300, 11 * 3, 0, 0));
}

// ---------------------------------------------------------------------------
// 4. Under corral's sandbox

#[test]
fn the_three_write_in_their_worktrees_under_corrals_workspace_write_sandbox() {
    let repo = TestRepo::new();
    // Aider, finding no git identity, writes a placeholder one into the
    // repository's .git/config, which is outside the worktree: under the
    // sandbox that write is refused and Aider exits 1. A person's git
    // has one; so does this repository.
    repo.git(&["config", "user.name", "Sandboxed Tester"]);
    repo.git(&["config", "user.email", "tester@example.invalid"]);
    // One server, the agents one after another: Gemini's two steps, then
    // opencode's two, then Aider's one.
    let steps = [
        json!({"tool": {"name": "write_file", "input": {"file_path": "g.txt", "content": "g\n"}}, "usage": {"input": 100, "output": 2}}),
        json!({"text": "Done.", "usage": {"input": 110, "output": 1}}),
        json!({"tool": {"name": "write", "input": {"filePath": "o.txt", "content": "o\n"}}, "usage": {"input": 200, "output": 3}}),
        json!({"text": "Done.", "usage": {"input": 210, "output": 1}}),
        json!({"text": "a.txt\n```\na\n```\n", "usage": {"input": 300, "output": 4}}),
    ];
    let mock = MockLlm::start(&repo, "sandboxed", &json!({"steps": steps}));
    /// One agent of the test: name, harness, model, environment, extra
    /// arguments, the file it writes.
    struct Run<'a> {
        name: &'a str,
        harness: &'a str,
        model: &'a str,
        env: Vec<(&'static str, OsString)>,
        extra: &'a [&'a str],
        file: &'a str,
    }
    let runs = [
        Run {
            name: "sgem",
            harness: "gemini",
            model: "gemini-2.5-flash",
            env: gemini_env(&repo, &mock),
            extra: &["--approval-mode", "auto_edit"],
            file: "g.txt",
        },
        Run {
            name: "soc",
            harness: "opencode",
            model: OPENCODE_MODEL,
            env: opencode_env(&repo, &mock),
            extra: &[],
            file: "o.txt",
        },
        Run {
            name: "said",
            harness: "aider",
            model: AIDER_MODEL,
            env: aider_env(&repo, &mock),
            extra: &[],
            file: "a.txt",
        },
    ];
    for Run { name, harness, model, env, extra, file } in runs {
        let mut command = repo.command();
        command.args(["spawn", name, "--harness", harness, "--model", model, "--sandbox", "workspace-write"]);
        command.args(["--task", &format!("Create {file}"), "--json"]);
        if !extra.is_empty() {
            command.arg("--").args(extra);
        }
        command.envs(env);
        let out = run_deadline(command, PATIENCE, &format!("corral spawn {name} --sandbox workspace-write"));
        assert!(out.status.success(), "corral spawn {name} failed: {}", describe(&out));
        let address = format!("/root/{name}");
        let record = wait_end(&repo, &address, Some(&mock));
        let why = || diagnostics(&repo, &address, Some(&mock));
        assert_eq!(record["state"], "succeeded", "{record}\n{}", why());
        assert_eq!(record["sandbox"], "workspace-write", "{record}");
        let written = repo.worktree_of(name).join(file);
        assert!(written.exists(), "{} is missing\n{}", written.display(), why());
    }
    assert_eq!(model_requests(&mock.requests()).len(), 5, "each agent made its calls and no more");
}

// ---------------------------------------------------------------------------
// 5. Messages to opencode: a follow-up run each, continuing the session

#[test]
fn ten_messages_reach_an_opencode_agent_in_order_one_follow_up_run_each() {
    let repo = TestRepo::new();
    // The first answer is held back so that every message is sent while
    // the first run is still going; then one answer per follow-up run.
    let mut steps = vec![json!({"text": "Answer 0.", "delay_ms": 3000, "usage": {"input": 300, "output": 3}})];
    steps.extend((1..=10).map(|i| json!({"text": format!("Answer {i}."), "usage": {"input": 300, "output": 3}})));
    let mock = MockLlm::start(&repo, "opencode-messages", &json!({"steps": steps}));
    let task = "Say the word TASK-ZERO back.";
    let spawn =
        spawn_harness(&repo, "octalk", "opencode", Some(OPENCODE_MODEL), task, &opencode_env(&repo, &mock), &[]);
    let address = spawn["address"].as_str().unwrap_or("/root/octalk").to_string();
    let texts: Vec<String> = (1..=10).map(|i| format!("message number {i}, say it back")).collect();
    let ids: Vec<String> =
        texts.iter().map(|text| corral_ok(&repo, &["send", &address, text]).trim().to_string()).collect();

    let record = wait_end(&repo, &address, Some(&mock));
    let why = || diagnostics(&repo, &address, Some(&mock));
    assert_eq!(record["state"], "succeeded", "{record}\n{}", why());

    // One call per run, each run's last user message the next message, in
    // the same session (each request carries the history before it).
    let requests = model_requests(&mock.requests());
    assert_eq!(requests.len(), 11, "the task and ten messages, one call each\n{}", why());
    assert!(last_user_text(&requests[0]).contains(task), "{}", last_user_text(&requests[0]));
    for (i, text) in texts.iter().enumerate() {
        let got = last_user_text(&requests[i + 1]);
        assert!(got.contains(text.as_str()), "call {} should carry {text:?}, carries {got:?}", i + 1);
        assert!(
            requests[i + 1]["body"].to_string().contains(&format!("Answer {i}.")),
            "call {} has the history",
            i + 1
        );
    }
    let sessions: Vec<&str> = requests.iter().filter_map(|r| r["headers"]["x-session-id"].as_str()).collect::<Vec<_>>();
    assert_eq!(sessions.len(), 11, "opencode names its session in every call");
    assert!(sessions.iter().all(|s| *s == sessions[0]), "one session throughout: {sessions:?}");

    let events = events(&repo, &address);
    let seq_of = |kind: &str, id: &str| {
        events
            .iter()
            .find(|e| e["type"] == kind && e["message_id"] == id)
            .and_then(|e| e["seq"].as_u64())
            .unwrap_or_else(|| panic!("no {kind} for {id}\n{}", why()))
    };
    let delivered: Vec<u64> = ids.iter().map(|id| seq_of("message_delivered", id)).collect();
    assert!(delivered.windows(2).all(|w| w[0] < w[1]), "delivered out of order: {delivered:?}");
    assert_eq!(of_type(&events, "session_started").len(), 1, "one session");
    let results = of_type(&events, "result");
    assert_eq!(results.len(), 11, "{results:?}");
    assert_usage_everywhere(&repo, &address, "opencode", &figures(11 * 300, 11 * 3, 0, 0));
}
