//! Harnesses, end to end: the real Claude Code and Codex CLIs run under
//! corral (`corral spawn --harness claude|codex`), driven by corral's own
//! scripted model server (`corral mock-llm`) on loopback; what corral makes
//! of their output (events, usage, the agent's end); `corral send` to a
//! structured agent and to a plain CLI; and output no parser can make sense
//! of.
//!
//! The real binaries come from `CORRAL_CLAUDE_BIN` / `CORRAL_CODEX_BIN`, else
//! from the cache folder `tests/install-agent-clis.sh` installs into. A
//! missing binary FAILS the test: these tests never pass by skipping.
//!
//! Each test has its own scratch repository (`TestRepo`, which kills every
//! process it started on drop), its own model server (a `corral mock-llm`
//! subprocess killed by a guard), and deadlines on everything.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use corral_e2e::real_cli::{
    assert_usage_everywhere, claude_env, codex_bin, codex_home, codex_mock_provider, corral_json, corral_ok, describe,
    diagnostics, events, figures, find_named, json_lines, model_requests, of_type, output_log, run_deadline,
    script_sum, spawn_harness, wait_end, MockLlm, RUN_DEADLINE,
};
use corral_e2e::{alive, corral_bin, poll_until, TestRepo, PATIENCE};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// 1. Real Claude Code under corral

#[test]
fn real_claude_writes_in_its_worktree_and_corral_counts_its_usage_exactly() {
    let repo = TestRepo::new();
    let worktree = repo.worktree_of("writer");
    let target = worktree.join("hello-from-claude.txt");
    let content = "hello from the mock, via claude\n";
    let steps = [
        json!({"tool": {"name": "Write", "input": {"file_path": target, "content": content}},
               "usage": {"input": 1200, "output": 40, "cache_read": 5000, "cache_write": 300}}),
        json!({"text": "Wrote hello-from-claude.txt.",
               "usage": {"input": 1500, "output": 12, "cache_read": 6000, "cache_write": 20}}),
    ];
    let mock = MockLlm::start(&repo, "claude", &json!({"steps": steps}));
    let task = "Create hello-from-claude.txt";
    let spawn = spawn_harness(&repo, "writer", "claude", None, task, &claude_env(&repo, &mock), &[]);
    let address = spawn["address"].as_str().unwrap_or("/root/writer").to_string();
    assert_eq!(address, "/root/writer", "{spawn}");
    assert_eq!(
        Path::new(spawn["worktree"].as_str().expect("the spawn's worktree")).canonicalize().unwrap(),
        worktree,
        "repo.worktree_of() must predict the worktree: {spawn}"
    );

    let record = wait_end(&repo, &address, Some(&mock));
    let why = || diagnostics(&repo, &address, Some(&mock));
    assert_eq!(record["state"], "succeeded", "{record}\n{}", why());
    assert_eq!(record["exit_code"], 0, "{record}");

    // The file is in the agent's worktree, and nowhere else in the test's
    // folders (not in the main checkout, not in HOME).
    assert_eq!(
        std::fs::read_to_string(&target).unwrap_or_else(|e| panic!("{}: {e}\n{}", target.display(), why())),
        content
    );
    assert!(!repo.repo.join("hello-from-claude.txt").exists(), "the file leaked into the main checkout");
    assert!(!Path::new("hello-from-claude.txt").exists(), "the file leaked into the test's own folder");
    let mut found = Vec::new();
    find_named(repo.root.path(), "hello-from-claude.txt", &mut found);
    let found: Vec<PathBuf> = found.iter().map(|p| p.canonicalize().unwrap()).collect();
    assert_eq!(found, vec![target.clone()], "the file must exist only in the agent's worktree");

    // The events corral made of Claude's output.
    let events = events(&repo, &address);
    assert!(events.iter().all(|e| e["agent"] == address.as_str()), "events of another agent: {events:?}");
    let started = of_type(&events, "session_started");
    assert_eq!(started.len(), 1, "one session_started: {started:?}\n{}", why());
    let session_id = started[0]["session_id"].as_str().filter(|s| !s.is_empty()).expect("a session id").to_string();
    assert!(started[0]["model"].as_str().is_some_and(|m| !m.is_empty()), "session_started has a model: {:?}", started);
    let tool_uses = of_type(&events, "tool_use");
    let write =
        tool_uses.iter().find(|e| e["name"] == "Write").unwrap_or_else(|| panic!("no Write tool_use\n{}", why()));
    let write_id = write["id"].as_str().expect("tool_use id");
    assert!(
        write["summary"].as_str().is_some_and(|s| s.contains("hello-from-claude.txt")),
        "the Write's summary names the file: {write}"
    );
    let results = of_type(&events, "tool_result");
    let write_result = results
        .iter()
        .find(|e| e["id"] == write_id)
        .unwrap_or_else(|| panic!("no tool_result for {write_id}\n{}", why()));
    assert_eq!(write_result["is_error"], false, "{write_result}");
    let results = of_type(&events, "result");
    assert_eq!(results.len(), 1, "one result: {results:?}");
    let result = results[0];
    assert_eq!(result["success"], true, "{result}");
    assert_eq!(result["text"], "Wrote hello-from-claude.txt.", "{result}");
    assert_eq!(result["session_id"], session_id.as_str(), "{result}");
    let exited = of_type(&events, "exited");
    assert_eq!(exited.len(), 1, "{exited:?}");
    assert_eq!(exited[0]["state"], "succeeded");
    assert_eq!(exited[0]["code"], 0);
    // Order: started, tool use, its result, the result, the exit.
    let seq = |e: &Value| e["seq"].as_u64().unwrap();
    assert!(seq(started[0]) < seq(write) && seq(write) < seq(write_result) && seq(write_result) < seq(result));
    assert!(seq(result) < seq(exited[0]));

    // Usage: Claude's result sums every call exactly.
    let expected = script_sum(&steps.iter().collect::<Vec<_>>());
    assert_eq!(expected, figures(2700, 52, 11000, 320));
    let cost = assert_usage_everywhere(&repo, &address, "claude", &expected);
    // Claude reports its cost; corral passes it on.
    let (_, log) = output_log(&repo, &address);
    let claude_result = json_lines(&log)
        .into_iter()
        .rfind(|l| l["type"] == "result")
        .unwrap_or_else(|| panic!("no result line in the log\n{}", why()));
    let reported = claude_result["total_cost_usd"].as_f64().expect("claude reports total_cost_usd");
    let cost = cost.as_f64().unwrap_or_else(|| panic!("ps cost_usd is {cost}, Claude reported {reported}"));
    assert!((cost - reported).abs() < 1e-9, "ps cost_usd {cost} != Claude's total_cost_usd {reported}");

    // The server saw the task, then the tool's result; and recorded it all.
    let requests = model_requests(&mock.requests());
    assert_eq!(requests.len(), 2, "one model request per step: {requests:?}");
    assert!(requests[0]["body"].to_string().contains(task), "the task reached the model");
    assert_eq!(requests[0]["step"], 0);
    assert_eq!(requests[1]["step"], 1);
    assert!(requests[1]["body"].to_string().contains("tool_result"));
    let recorded = mock.recorded();
    assert_eq!(recorded.len(), mock.requests().len(), "the --record file has every request");
    for line in &recorded {
        for key in ["seq", "method", "path", "headers", "body", "step"] {
            assert!(line.get(key).is_some(), "record line without {key:?}: {line}");
        }
        let headers = line["headers"].to_string();
        assert!(!headers.contains("mock-key"), "the API key must be redacted in the record: {headers}");
    }
}

// ---------------------------------------------------------------------------
// 2. Real Codex under corral

#[test]
fn real_codex_runs_in_its_worktree_and_corral_counts_its_usage_exactly() {
    let repo = TestRepo::new();
    let worktree = repo.worktree_of("coder");
    let codex_home = codex_home();
    let home = repo.path("home");
    std::fs::create_dir_all(&home).unwrap();
    let steps = [
        json!({"shell": "printf 'made by codex\\n' > made-by-codex.txt && echo wrote-it",
               "usage": {"input": 1000, "output": 20, "cache_read": 600, "reasoning": 3}}),
        json!({"text": "All done, codex here.",
               "usage": {"input": 1500, "output": 7, "cache_read": 1200, "reasoning": 2}}),
    ];
    let mock = MockLlm::start(&repo, "codex", &json!({"steps": steps}));
    let provider = codex_mock_provider(&mock);
    let env = [
        ("CORRAL_CODEX_BIN", codex_bin().into_os_string()),
        ("CODEX_HOME", codex_home.path().as_os_str().to_owned()),
        ("MOCK_KEY", "mock-key".into()),
        ("HOME", home.into_os_string()),
    ];
    let extra = ["--sandbox", "workspace-write", "-c", "model_provider=mock", "-c", &provider];
    let task = "make the file made-by-codex.txt";
    let spawn = spawn_harness(&repo, "coder", "codex", Some("gpt-mock"), task, &env, &extra);
    let address = spawn["address"].as_str().unwrap_or("/root/coder").to_string();

    let record = wait_end(&repo, &address, Some(&mock));
    let why = || diagnostics(&repo, &address, Some(&mock));
    assert_eq!(record["state"], "succeeded", "{record}\n{}", why());
    assert_eq!(record["exit_code"], 0, "{record}");

    // Codex ran the command in the agent's worktree.
    let made = worktree.join("made-by-codex.txt");
    assert_eq!(
        std::fs::read_to_string(&made).unwrap_or_else(|e| panic!("{}: {e}\n{}", made.display(), why())),
        "made by codex\n"
    );
    assert!(!repo.repo.join("made-by-codex.txt").exists(), "the file leaked into the main checkout");

    let events = events(&repo, &address);
    let started = of_type(&events, "session_started");
    assert!(!started.is_empty(), "a session_started\n{}", why());
    assert!(started[0]["session_id"].as_str().is_some_and(|s| !s.is_empty()), "{:?}", started[0]);
    let tool_use = of_type(&events, "tool_use");
    let tool_use = tool_use.first().unwrap_or_else(|| panic!("a tool_use for the command\n{}", why()));
    assert!(tool_use["summary"].as_str().is_some_and(|s| s.contains("made-by-codex.txt")), "{tool_use}");
    let tool_result = of_type(&events, "tool_result");
    let tool_result = tool_result
        .iter()
        .find(|e| e["id"] == tool_use["id"])
        .unwrap_or_else(|| panic!("a tool_result for {}\n{}", tool_use["id"], why()));
    assert_eq!(tool_result["is_error"], false, "{tool_result}");
    let said = "All done, codex here.";
    let in_progress = of_type(&events, "progress").iter().any(|e| e["text"].as_str().is_some_and(|t| t.contains(said)));
    let results = of_type(&events, "result");
    let result = results.last().unwrap_or_else(|| panic!("a result event\n{}", why()));
    assert_eq!(result["success"], true, "{result}");
    let in_result = result["text"].as_str().is_some_and(|t| t.contains(said));
    assert!(in_progress || in_result, "the agent's message {said:?} is in no progress or result event\n{}", why());

    // Usage: Codex's input_tokens include the cached ones; corral's input
    // does not. The script's figures go to the wire as they are.
    let sum = script_sum(&steps.iter().collect::<Vec<_>>());
    let expected = figures(sum["input"] - sum["cache_read"], sum["output"], sum["cache_read"], 0);
    assert_eq!(expected, figures(700, 27, 1800, 0));
    assert_usage_everywhere(&repo, &address, "codex", &expected);

    let requests = model_requests(&mock.requests());
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(requests[0]["path"].as_str().unwrap().ends_with("/responses"));
    assert!(requests[0]["body"].to_string().contains(task), "the task reached the model");
    assert_eq!(requests[0]["body"]["model"], "gpt-mock", "--model reached codex");
}

// ---------------------------------------------------------------------------
// 3. corral send to a running Claude Code agent

#[test]
fn send_reaches_a_claude_agent_mid_turn_in_order_and_it_then_ends() {
    let repo = TestRepo::new();
    let first_step = json!({"text": "Working on the task.", "delay_ms": 4000,
                            "usage": {"input": 100, "output": 10, "cache_read": 7, "cache_write": 3}});
    // Claude 2.1.328 runs messages queued during a turn as one next turn
    // (joined by a newline); this script works for one turn or several.
    let later_steps = json!({"text": "Read your messages.", "repeat": "forever",
                             "usage": {"input": 200, "output": 20, "cache_read": 70, "cache_write": 30}});
    let mock = MockLlm::start(&repo, "steer", &json!({"steps": [first_step, later_steps]}));
    let model = "claude-sonnet-4-5";
    let spawn = spawn_harness(&repo, "steer", "claude", Some(model), "Start the job", &claude_env(&repo, &mock), &[]);
    let address = spawn["address"].as_str().unwrap_or("/root/steer").to_string();

    // Mid-turn: the server holds its first answer for 4 s.
    poll_until("Claude's first model request", RUN_DEADLINE, || !model_requests(&mock.requests()).is_empty());
    let first_text = "first-msg-XYZ";
    let second_text = "second-msg-XYZ";
    let first_id = corral_ok(&repo, &["send", &address, first_text]).trim().to_string();
    let second = corral_json(&repo, &["send", &address, second_text, "--json"]);
    let second_id = second["message_id"].as_str().unwrap_or_else(|| panic!("send --json: {second}")).to_string();
    assert!(!first_id.is_empty() && !second_id.is_empty(), "send prints the message id");
    assert_ne!(first_id, second_id);
    let requests_by_then = model_requests(&mock.requests()).len();
    eprintln!("sent {first_id} and {second_id} with {requests_by_then} model request(s) made (1 = mid-turn)");

    let record = wait_end(&repo, &address, Some(&mock));
    let why = || diagnostics(&repo, &address, Some(&mock));
    assert_eq!(record["state"], "succeeded", "{record}\n{}", why());
    assert_eq!(record["exit_code"], 0, "{record}");

    // The server saw the messages after the first request, first before second.
    let requests = model_requests(&mock.requests());
    assert!(requests.len() >= 2, "a turn after the messages: {requests:?}\n{}", why());
    let body = |r: &Value| r["body"]["messages"].to_string();
    assert!(!body(&requests[0]).contains(first_text), "the first request predates the messages");
    assert!(requests.iter().all(|r| r["body"]["model"] == model), "--model {model} reached claude: {requests:?}");
    let with_first = requests
        .iter()
        .position(|r| body(r).contains(first_text))
        .unwrap_or_else(|| panic!("no request carries {first_text:?}\n{}", why()));
    assert!(with_first >= 1);
    let with_second = requests
        .iter()
        .position(|r| body(r).contains(second_text))
        .unwrap_or_else(|| panic!("no request carries {second_text:?}\n{}", why()));
    assert!(with_first <= with_second, "the first message reached the model after the second");
    let last = body(requests.last().unwrap());
    let (a, b) = (last.find(first_text).unwrap(), last.find(second_text).unwrap());
    assert!(a < b, "in the conversation the first message comes before the second: {last}");

    // Events: message_sent and message_delivered for both, ids matching,
    // in order.
    let events = events(&repo, &address);
    let id_text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let seq = |e: &Value| e["seq"].as_u64().unwrap();
    let find = |kind: &str, id: &str| -> Value {
        events
            .iter()
            .find(|e| e["type"] == kind && id_text(&e["message_id"]) == id)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} event for message {id}\n{}", why()))
    };
    let (sent1, sent2) = (find("message_sent", &first_id), find("message_sent", &second_id));
    let (delivered1, delivered2) = (find("message_delivered", &first_id), find("message_delivered", &second_id));
    assert_eq!(sent1["text"], first_text, "{sent1}");
    assert_eq!(sent2["text"], second_text, "{sent2}");
    assert_eq!(sent1["to"], address.as_str(), "{sent1}");
    assert_eq!(sent1["from"], "/root", "a person or script is /root: {sent1}");
    assert!(seq(&sent1) < seq(&sent2), "sent in order");
    assert!(seq(&sent1) < seq(&delivered1) && seq(&sent2) < seq(&delivered2), "delivered after sent");
    assert!(seq(&delivered1) < seq(&delivered2), "delivered in order");
    let started = of_type(&events, "session_started");
    assert!(started.first().is_some_and(|s| s["model"] == model), "session_started names {model}: {started:?}");
    let result = of_type(&events, "result");
    assert!(result.len() >= 2, "a result for the task and one after the messages: {result:?}");
    assert!(result.iter().all(|r| r["success"] == true), "{result:?}");

    eprintln!("Claude made {} model requests; results: {}", requests.len(), result.len());
    // Usage follows however many turns Claude made.
    let turns_after = (requests.len() - 1) as u64;
    let expected = figures(100 + 200 * turns_after, 10 + 20 * turns_after, 7 + 70 * turns_after, 3 + 30 * turns_after);
    assert_usage_everywhere(&repo, &address, "claude", &expected);
}

// ---------------------------------------------------------------------------
// 4. Garbage output, under a structured harness and a plain one

#[test]
fn garbage_output_crashes_nothing_and_reaches_the_log_byte_for_byte() {
    let repo = TestRepo::new();
    let bin = corral_bin();
    let bin_text = bin.to_str().unwrap();
    // What the scripted agent prints, run directly (stdout a pipe).
    let direct = run_deadline(
        {
            let mut command = Command::new(&bin);
            command.args(["fake-agent", "garbage; exit 0"]).stdin(Stdio::null());
            command
        },
        PATIENCE,
        "corral fake-agent garbage",
    );
    assert!(direct.status.success(), "{}", describe(&direct));
    let expected = direct.stdout;
    assert!(expected.len() > 1024 * 1024, "garbage prints a 1 MB line");

    // A daemon already up, with the test's own environment: the spawn's
    // CORRAL_CLAUDE_BIN must still win.
    corral_ok(&repo, &["ps"]);
    let daemon = repo.daemon_pid().expect("a daemon pid");

    // `claude` is a script that ignores claude's flags and prints garbage.
    let fake_claude = repo.path("fake-claude.sh");
    std::fs::write(&fake_claude, format!("#!/bin/sh\nexec '{bin_text}' fake-agent 'garbage; exit 0'\n")).unwrap();
    std::fs::set_permissions(&fake_claude, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let env = [("CORRAL_CLAUDE_BIN", fake_claude.clone().into_os_string())];
    spawn_harness(&repo, "junk-claude", "claude", None, "make a mess", &env, &[]);
    spawn_harness(
        &repo,
        "junk-plain",
        "generic",
        None,
        "make a mess",
        &[],
        &[bin_text, "fake-agent", "garbage; exit 0"],
    );

    for (address, harness) in [("/root/junk-claude", "claude"), ("/root/junk-plain", "generic")] {
        let record = wait_end(&repo, address, None);
        let why = || diagnostics(&repo, address, None);
        assert_eq!(record["exit_code"], 0, "{record}\n{}", why());
        assert_eq!(record["harness"], harness, "{record}");
        // Exited 0: a plain CLI succeeded; a structured one that never
        // reported a result failed, and says why.
        if harness == "generic" {
            assert_eq!(record["state"], "succeeded", "{record}\n{}", why());
        } else {
            assert_eq!(record["state"], "failed", "{record}\n{}", why());
            assert_eq!(record["reason"], "it exited without reporting a result", "{record}");
        }

        let (path, log) = output_log(&repo, address);
        let wanted = if harness == "generic" {
            // The PTY in its default mode turns \n into \r\n.
            let mut translated = Vec::with_capacity(expected.len() + 16);
            for &b in &expected {
                if b == b'\n' {
                    translated.push(b'\r');
                }
                translated.push(b);
            }
            translated
        } else {
            // A structured harness runs in a raw PTY: no translation.
            expected.clone()
        };
        if log != wanted {
            let at = log.iter().zip(&wanted).position(|(a, b)| a != b).unwrap_or(log.len().min(wanted.len()));
            let show = |bytes: &[u8]| {
                String::from_utf8_lossy(&bytes[at.saturating_sub(40)..(at + 40).min(bytes.len())]).into_owned()
            };
            panic!(
                "{address} ({harness}): {} holds {} bytes, expected {}; first difference at byte {at}: \
                 log {:?} vs expected {:?}",
                path.display(),
                log.len(),
                wanted.len(),
                show(&log),
                show(&wanted)
            );
        }
        let exited = of_type(&events(&repo, address), "exited").into_iter().cloned().collect::<Vec<_>>();
        assert_eq!(exited.len(), 1, "{exited:?}");
        assert_eq!(exited[0]["code"], 0, "{exited:?}");
    }

    // The daemon lived through it and still answers.
    assert_eq!(repo.daemon_pid(), Some(daemon), "the daemon restarted");
    assert!(alive(daemon), "the daemon died");
    let ps = corral_json(&repo, &["ps", "--all", "--json"]);
    assert_eq!(ps.as_array().map(Vec::len), Some(2), "{ps}");
}

// ---------------------------------------------------------------------------
// 5. corral send to a plain CLI agent

#[test]
fn send_types_into_a_plain_cli_agents_terminal() {
    let repo = TestRepo::new();
    let bin = corral_bin();
    let bin = bin.to_str().unwrap();
    let spawn = spawn_harness(
        &repo,
        "plain",
        "generic",
        None,
        "read a line",
        &[],
        &[bin, "fake-agent", "print ready; echo-input 1; exit 0"],
    );
    let address = spawn["address"].as_str().unwrap_or("/root/plain").to_string();
    poll_until("the agent to be ready", PATIENCE, || String::from_utf8_lossy(&repo.log(&address)).contains("ready"));
    let text = "hello-plain-XYZ";
    let id = corral_ok(&repo, &["send", &address, text]).trim().to_string();
    assert!(!id.is_empty(), "send prints the message id");

    let record = wait_end(&repo, &address, None);
    let why = || diagnostics(&repo, &address, None);
    let log = String::from_utf8_lossy(&repo.log(&address)).into_owned();
    assert!(log.contains(&format!("got {text}")), "the text did not arrive: {log:?}\n{}", why());
    assert_eq!(record["state"], "succeeded", "{record}\n{}", why());
    assert_eq!(record["exit_code"], 0);
    assert_eq!(record["harness"], "generic", "{record}");

    let events = events(&repo, &address);
    let id_text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let sent = events
        .iter()
        .find(|e| e["type"] == "message_sent" && id_text(&e["message_id"]) == id)
        .unwrap_or_else(|| panic!("no message_sent for {id}\n{}", why()));
    assert_eq!(sent["text"], text, "{sent}");
    let delivered = events
        .iter()
        .find(|e| e["type"] == "message_delivered" && id_text(&e["message_id"]) == id)
        .unwrap_or_else(|| panic!("no message_delivered for {id}\n{}", why()));
    assert!(sent["seq"].as_u64() < delivered["seq"].as_u64());
}

#[test]
fn a_child_forks_its_claude_parents_session() {
    let repo = TestRepo::new();
    // One scripted answer for every request, parent's and child's alike.
    let mock = MockLlm::start(&repo, "fork", &json!({"steps": [{"text": "Noted.", "repeat": "forever"}]}));
    let env = claude_env(&repo, &mock);
    spawn_harness(&repo, "parent", "claude", None, "Remember the word PINEAPPLE-7731.", &env, &[]);
    let parent = wait_end(&repo, "/root/parent", Some(&mock));
    assert_eq!(parent["state"], "succeeded", "{parent}\n{}", diagnostics(&repo, "/root/parent", Some(&mock)));
    let parent_session = parent["session_id"].as_str().unwrap().to_string();

    let mut command = repo.command();
    command.args(["spawn", "child", "--parent", "/root/parent", "--fork-session", "--harness", "claude"]);
    command.args(["--task", "What was the word?", "--json"]);
    for (key, value) in &env {
        command.env(key, value);
    }
    let out = run_deadline(command, PATIENCE, "corral spawn child --fork-session");
    assert!(out.status.success(), "{}", describe(&out));
    let child = wait_end(&repo, "/root/parent/child", Some(&mock));
    assert_eq!(child["state"], "succeeded", "{child}\n{}", diagnostics(&repo, "/root/parent/child", Some(&mock)));
    // A session of its own...
    assert_ne!(child["session_id"].as_str().unwrap(), parent_session);
    // ...that starts from the parent's history: the child's request to the
    // model carries the parent's conversation.
    let requests = model_requests(&mock.recorded());
    let last = requests.last().expect("the child asked the model");
    let body = last["body"].to_string();
    assert!(body.contains("What was the word?"), "{body}");
    assert!(body.contains("PINEAPPLE-7731"), "the parent's history is missing: {body}");
}
