//! `corral mcp`, end to end.
//!
//! 1. Protocol level: `corral mcp` as a subprocess in a scratch repository,
//!    spoken to in JSON-RPC over its stdin and stdout: the handshake, the
//!    eight tools, spawning, listing, viewing, messaging and stopping agents,
//!    and bad calls (unknown role, missing task, unknown address or task id,
//!    wrong JSON types) that come back as tool errors while the server goes
//!    on serving.
//! 2. Real Claude Code as the orchestrator (issue 5, test 1), driven by
//!    `corral mock-llm`: it calls `run_background_agent`, then
//!    `list_background_agents`, then `view_background_agent` over MCP; the
//!    child lives at `/root/orch/worker-1` in its own worktree, runs to
//!    completion, and its result comes back in the tool's answer (read from
//!    the requests Claude sent the model server).
//!
//! The real `claude` comes from `CORRAL_CLAUDE_BIN`, else from the cache
//! folder `tests/install-agent-clis.sh` installs into; a missing binary
//! FAILS the test. Every process a test starts is killed when its
//! `TestRepo` drops.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use corral_e2e::real_cli::{claude_env, is_messages_request, ps_record, run_deadline, MockLlm, RUN_DEADLINE};
use corral_e2e::{corral_bin, fake_claude, poll_until, TestRepo, PATIENCE};
use serde_json::{json, Value};

const TOOLS: [&str; 10] = [
    "run_background_agent",
    "spawn_agent",
    "list_background_agents",
    "list_agents",
    "view_background_agent",
    "wait_background_agent",
    "stop_background_agent",
    "send_message",
    "assign_task",
    "raise_budget",
];

// ---------------------------------------------------------------------------
// An MCP client over a `corral mcp` subprocess

/// A running `corral mcp`, spoken to line by line; killed on drop.
pub(crate) struct McpServer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    next_id: u64,
}

impl McpServer {
    pub(crate) fn start(mut command: Command) -> McpServer {
        command.arg("mcp").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = command.spawn().expect("corral mcp starts");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        McpServer { child, stdin, lines, next_id: 1 }
    }

    fn write(&mut self, message: &Value) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{message}").and_then(|()| stdin.flush()).expect("write to corral mcp");
    }

    /// Sends a request; returns its response (notifications in between are skipped).
    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.write(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no answer to {method} (id {id}) within {PATIENCE:?}: {e}"));
            let message: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("corral mcp printed a non-JSON line ({e}): {line}"));
            assert_eq!(message["jsonrpc"], "2.0", "{message}");
            if message["id"] == id {
                return message;
            }
        }
    }

    pub(crate) fn initialize(&mut self) -> Value {
        let answer = self.request(
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "corral-test", "version": "0"}}),
        );
        self.write(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        answer
    }

    /// `tools/call`; returns `(is_error, text)`.
    fn call(&mut self, tool: &str, arguments: Value) -> (bool, String) {
        let answer = self.request("tools/call", json!({"name": tool, "arguments": arguments}));
        let result = answer.get("result").unwrap_or_else(|| panic!("{tool}: no result: {answer}"));
        let content = result["content"].as_array().unwrap_or_else(|| panic!("{tool}: no content: {answer}"));
        assert_eq!(content.len(), 1, "{tool}: one content block: {answer}");
        assert_eq!(content[0]["type"], "text", "{answer}");
        let text = content[0]["text"].as_str().unwrap().to_string();
        (result["isError"] == true, text)
    }

    /// A call that must succeed; returns its JSON answer.
    pub(crate) fn ok(&mut self, tool: &str, arguments: Value) -> Value {
        let (is_error, text) = self.call(tool, arguments.clone());
        assert!(!is_error, "{tool} {arguments} failed: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{tool} answered no JSON ({e}): {text}"))
    }

    /// A call that must fail; returns the error text.
    pub(crate) fn error(&mut self, tool: &str, arguments: Value) -> String {
        let (is_error, text) = self.call(tool, arguments.clone());
        assert!(is_error, "{tool} {arguments} should have failed, answered: {text}");
        text
    }

    /// Polls `view_background_agent` until the agent ended.
    fn view_until_ended(&mut self, address: &str) -> Value {
        let mut view = Value::Null;
        poll_until(&format!("{address} to end (view_background_agent)"), PATIENCE, || {
            view = self.ok("view_background_agent", json!({"address": address}));
            view["ended"] == true
        });
        view
    }

    /// Closes stdin; the server must exit 0 by itself.
    pub(crate) fn close(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "corral mcp exited {status} once its input closed");
                return;
            }
            assert!(Instant::now() < deadline, "corral mcp still runs {PATIENCE:?} after its input closed");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for McpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn addresses(list: &Value) -> Vec<String> {
    list["agents"].as_array().unwrap().iter().map(|a| a["address"].as_str().unwrap().to_string()).collect()
}

// ---------------------------------------------------------------------------
// 1. Protocol level

#[test]
fn mcp_serves_the_eight_tools_over_json_rpc_and_survives_bad_calls() {
    let repo = TestRepo::new();
    let bin = corral_bin();
    let bin = bin.to_str().unwrap();
    std::fs::write(
        repo.repo.join("corral.toml"),
        format!(
            "[agents.worker]\ndescription = \"writes a file\"\nargs = [\"{bin}\", \"fake-agent\", \"write out.txt done; print finished; exit 0\"]\n"
        ),
    )
    .unwrap();
    // A fake Claude Code whose last turn reports a result text.
    let result = r#"print '{"type":"result","subtype":"success","is_error":false,"total_cost_usd":0.01,"usage":{"input_tokens":10,"output_tokens":2},"session_id":"s-1","result":"the answer is 42"}'"#;
    let claude = fake_claude(&repo, "answerer", &format!("{result}; exit 0"));
    let mut command = repo.command();
    command.env("CORRAL_CLAUDE_BIN", &claude);
    let mut mcp = McpServer::start(command);

    let hello = mcp.initialize();
    assert_eq!(hello["result"]["serverInfo"]["name"], "corral", "{hello}");
    assert!(hello["result"]["capabilities"]["tools"].is_object(), "{hello}");

    let list = mcp.request("tools/list", json!({}));
    let tools = list["result"]["tools"].as_array().unwrap_or_else(|| panic!("{list}"));
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, TOOLS, "{list}");
    for tool in tools {
        assert_eq!(tool["inputSchema"]["type"], "object", "{tool}");
        assert!(tool["description"].as_str().is_some_and(|d| !d.is_empty()), "{tool}");
    }
    let run = &tools[0];
    assert_eq!(run["inputSchema"]["required"], json!(["role", "task"]), "{run}");
    assert!(run["description"].as_str().unwrap().contains("worker (writes a file)"), "roles are listed: {run}");

    // spawn_agent with a command: it runs, ends, and its view says how.
    let spawned = mcp.ok(
        "spawn_agent",
        json!({"name": "hello", "task": "say hi", "command": [bin, "fake-agent", "print hi; exit 0"]}),
    );
    assert_eq!(spawned["address"], "/root/hello", "{spawned}");
    let task_id = spawned["task_id"].as_str().expect("a task id").to_string();
    assert!(mcp.ok("list_agents", json!({}))["agents"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["address"] == "/root/hello"));
    let view = mcp.view_until_ended("hello");
    assert_eq!((view["state"].as_str(), view["exit_code"].as_i64()), (Some("succeeded"), Some(0)), "{view}");
    assert_eq!(view["task"], "say hi");
    assert!(view["output"].as_array().unwrap().iter().any(|l| l == "hi"), "{view}");
    // By task id, too.
    assert_eq!(mcp.ok("view_background_agent", json!({"address": task_id}))["address"], "/root/hello");
    // assign_task: the ended agent runs again with its next task.
    let assigned = mcp.ok("assign_task", json!({"address": "hello", "task": "say hi again"}));
    assert_eq!(assigned["address"], "/root/hello", "{assigned}");
    let next_task = assigned["task_id"].as_str().expect("a task id").to_string();
    assert_ne!(next_task, task_id, "{assigned}");
    let mut view = Value::Null;
    poll_until("hello to end its assigned task", PATIENCE, || {
        view = mcp.ok("view_background_agent", json!({"address": "hello"}));
        view["task_id"] == next_task.as_str() && view["ended"] == true
    });
    assert_eq!((view["state"].as_str(), view["task"].as_str()), (Some("succeeded"), Some("say hi again")), "{view}");

    // run_background_agent: a role, names counted per role, the expected output in the task.
    let first = mcp.ok("run_background_agent", json!({"role": "worker", "task": "write out.txt"}));
    assert_eq!(first["address"], "/root/worker-1", "{first}");
    let second = mcp.ok(
        "run_background_agent",
        json!({"role": "worker", "task": "write it again", "expected_output": "a file named out.txt"}),
    );
    assert_eq!(second["address"], "/root/worker-2", "{second}");
    let view = mcp.view_until_ended("/root/worker-2");
    assert_eq!(view["state"], "succeeded", "{view}");
    assert_eq!(view["task"], "write it again\n\nExpected output: a file named out.txt");
    assert!(view["output"].as_array().unwrap().iter().any(|l| l == "finished"), "{view}");
    let worktree = repo.worktree_of("worker-2");
    assert_eq!(std::fs::read_to_string(worktree.join("out.txt")).unwrap(), "done\n");

    // A structured agent's final result text comes back in the view.
    let answerer = mcp.ok("spawn_agent", json!({"name": "answerer", "task": "what is it?", "harness": "claude"}));
    assert_eq!(answerer["address"], "/root/answerer");
    let view = mcp.view_until_ended("answerer");
    assert_eq!(view["state"], "succeeded", "{view}");
    assert_eq!(view["result"]["text"], "the answer is 42", "{view}");
    assert_eq!(view["result"]["success"], true, "{view}");
    let below = mcp.ok("list_background_agents", json!({}));
    let mut found = addresses(&below);
    found.sort();
    assert_eq!(found, ["/root/answerer", "/root/hello", "/root/worker-1", "/root/worker-2"], "{below}");
    let listed = below["agents"].as_array().unwrap().iter().find(|a| a["address"] == "/root/answerer").unwrap();
    assert_eq!(listed["result"]["text"], "the answer is 42", "{listed}");
    assert_eq!(listed["exit_code"], 0, "{listed}");

    // send_message types into a plain agent's terminal; stop ends it.
    mcp.ok(
        "spawn_agent",
        json!({"name": "listener", "task": "listen", "command": [bin, "fake-agent", "echo-input 1; hang"]}),
    );
    let sent = mcp.ok("send_message", json!({"to": "listener", "text": "hello there"}));
    assert!(sent["message_id"].as_str().is_some_and(|m| !m.is_empty()), "{sent}");
    assert_eq!(sent["from"], "/root");
    poll_until("the message to reach the listener", PATIENCE, || {
        let view = mcp.ok("view_background_agent", json!({"address": "/root/listener", "lines": 50}));
        view["output"].as_array().unwrap().iter().any(|l| l.as_str().is_some_and(|l| l.contains("got hello there")))
    });
    let err = mcp.error("assign_task", json!({"address": "listener", "task": "next"}));
    assert!(err.contains("busy"), "{err}");
    let stopped = mcp.ok("stop_background_agent", json!({"address": "listener", "grace_seconds": 0}));
    assert_eq!(stopped["stopped"][0]["address"], "/root/listener", "{stopped}");
    assert_eq!(mcp.view_until_ended("listener")["state"], "stopped");

    // Bad calls: tool errors with clear text, and the server keeps serving.
    let err = mcp.error("run_background_agent", json!({"role": "nope", "task": "x"}));
    assert!(err.contains("unknown role \"nope\"") && err.contains("worker"), "names the known roles: {err}");
    let err = mcp.error("run_background_agent", json!({"role": "worker"}));
    assert!(err.contains("missing field `task`"), "{err}");
    let err = mcp.error("run_background_agent", json!({"role": "worker", "task": "  "}));
    assert!(err.contains("task is empty"), "{err}");
    let err = mcp.error("spawn_agent", json!({"name": "x"}));
    assert!(err.contains("missing field `task`"), "{err}");
    let err = mcp.error("view_background_agent", json!({"address": "nobody"}));
    assert!(err.contains("no agent at /root/nobody"), "{err}");
    let err = mcp.error("view_background_agent", json!({"address": "t-999"}));
    assert!(err.contains("no task with id \"t-999\""), "{err}");
    let err = mcp.error("stop_background_agent", json!({"address": "/root/ghost"}));
    assert!(err.contains("no agent at /root/ghost"), "{err}");
    let err = mcp.error("send_message", json!({"to": "ghost", "text": "hi"}));
    assert!(err.contains("no agent at /root/ghost"), "{err}");
    let err = mcp.error("view_background_agent", json!({"address": 5}));
    assert!(err.contains("invalid type: integer `5`, expected a string"), "{err}");
    let err = mcp.error("spawn_agent", json!({"name": "bad name", "task": "x"}));
    assert!(err.contains("invalid agent name"), "{err}");
    let err = mcp.error("spawn_agent", json!({"name": "x", "task": "x", "max_tokens": "lots"}));
    assert!(err.contains("invalid type"), "{err}");
    let err = mcp.error("list_agents", json!({"verbose": true}));
    assert!(err.contains("unknown field `verbose`"), "{err}");
    let err = mcp.error("assign_task", json!({"address": "/root", "task": "x"}));
    assert!(err.contains("/root") && err.contains("takes no tasks"), "{err}");
    let err = mcp.error("raise_budget", json!({"address": "hello", "add_tokens": 0}));
    assert!(err.contains("greater than 0"), "{err}");
    let err = mcp.error("raise_budget", json!({"address": "hello"}));
    assert!(err.contains("add_tokens or add_cost"), "{err}");
    let err = mcp.error("raise_budget", json!({"address": "hello", "add_tokens": 10}));
    assert!(err.contains("only a live agent"), "{err}");
    let err = mcp.error("raise_budget", json!({"address": "ghost", "add_cost": 1.0}));
    assert!(err.contains("no agent at /root/ghost"), "{err}");
    let unknown = mcp.request("tools/call", json!({"name": "no_such_tool", "arguments": {}}));
    assert!(unknown["error"]["message"].as_str().is_some_and(|m| m.contains("no_such_tool")), "{unknown}");
    // Nothing was spawned by the bad calls, and the server still answers.
    assert_eq!(addresses(&mcp.ok("list_agents", json!({}))).len(), 5);
    mcp.close();
}

#[test]
fn inside_an_agent_mcp_acts_at_its_address() {
    let repo = TestRepo::new();
    let bin = corral_bin();
    let bin = bin.to_str().unwrap();
    repo.spawn_fake("lead", "hang");
    repo.spawn_fake("other", "hang");
    let mut command = repo.command();
    command.env("CORRAL_ADDRESS", "/root/lead");
    let mut mcp = McpServer::start(command);
    mcp.initialize();
    let spawned = mcp.ok("spawn_agent", json!({"name": "kid", "task": "t", "command": [bin, "fake-agent", "exit 0"]}));
    assert_eq!(spawned["address"], "/root/lead/kid", "{spawned}");
    // Relative and absolute addresses; the caller's children only in list_background_agents.
    assert_eq!(mcp.view_until_ended("kid")["address"], "/root/lead/kid");
    assert_eq!(mcp.ok("view_background_agent", json!({"address": "/root/other"}))["address"], "/root/other");
    assert_eq!(addresses(&mcp.ok("list_background_agents", json!({}))), ["/root/lead/kid"]);
    let mut all = addresses(&mcp.ok("list_agents", json!({})));
    all.sort();
    assert_eq!(all, ["/root/lead", "/root/lead/kid", "/root/other"]);
    let sent = mcp.ok("send_message", json!({"to": "/root/other", "text": "from the lead"}));
    assert_eq!(sent["from"], "/root/lead", "{sent}");
    mcp.close();
}

// ---------------------------------------------------------------------------
// 2. Real Claude Code as the orchestrator

/// The text of the `tool_result` for `tool_use_id` in a model request, and
/// whether it was an error.
fn tool_result(request: &Value, tool_use_id: &str) -> Option<(bool, String)> {
    for message in request["body"]["messages"].as_array()? {
        for block in message["content"].as_array().into_iter().flatten() {
            if block["type"] == "tool_result" && block["tool_use_id"] == tool_use_id {
                let text = match &block["content"] {
                    Value::String(text) => text.clone(),
                    Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join(""),
                    other => other.to_string(),
                };
                return Some((block["is_error"] == true, text));
            }
        }
    }
    None
}

/// Everything a failing assertion should show.
fn diagnostics(repo: &TestRepo, mock: &MockLlm) -> String {
    let mut text = String::new();
    let mut command = repo.command();
    command.args(["events"]);
    let out = run_deadline(command, PATIENCE, "corral events (diagnostics)");
    text.push_str("--- events:\n");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        text.push_str(&line.chars().take(600).collect::<String>());
        text.push('\n');
    }
    if let Some(orch) = repo.agents().into_iter().find(|a| a["address"] == "/root/orch") {
        let log = repo.log_by_id(orch["id"].as_u64().unwrap());
        let tail = &log[log.len().saturating_sub(6000)..];
        text.push_str(&format!("--- orch output.log tail:\n{}\n", String::from_utf8_lossy(tail)));
    }
    text.push_str(&format!("--- mock-llm stderr:\n{}\n", mock.stderr()));
    text
}

#[test]
fn real_claude_orchestrates_a_background_agent_over_mcp() {
    let repo = TestRepo::new();
    let bin = corral_bin();
    let bin = bin.to_str().unwrap();
    // The worker: a fake Claude Code (so it reports a result text) that
    // writes out.txt in its worktree.
    let result = r#"print '{"type":"result","subtype":"success","is_error":false,"total_cost_usd":0.02,"usage":{"input_tokens":20,"output_tokens":4},"session_id":"w-1","result":"worker wrote out.txt"}'"#;
    let worker_claude = fake_claude(&repo, "worker", &format!("write out.txt done; print finished; {result}; exit 0"));
    std::fs::write(
        repo.repo.join("corral.toml"),
        format!(
            // This orchestrator polls; notices upward have their own test.
            "[agents.worker]\ndescription = \"writes out.txt\"\nharness = \"claude\"\nnotify = \"none\"\nenv = {{ CORRAL_CLAUDE_BIN = \"{}\" }}\n",
            worker_claude.display()
        ),
    )
    .unwrap();
    let mcp_config = repo.path("mcp.json");
    std::fs::write(&mcp_config, json!({"mcpServers": {"corral": {"command": bin, "args": ["mcp"]}}}).to_string())
        .unwrap();

    let steps = json!([
        {"tool": {"name": "mcp__corral__run_background_agent", "id": "toolu_run",
                  "input": {"role": "worker", "task": "Write out.txt", "expected_output": "out.txt"}}},
        {"tool": {"name": "mcp__corral__list_background_agents", "id": "toolu_list", "input": {}}},
        // The worker is quick; the delays make sure it ended before the last view.
        {"tool": {"name": "mcp__corral__view_background_agent", "id": "toolu_view1",
                  "input": {"address": "worker-1"}}, "delay_ms": 1000},
        {"tool": {"name": "mcp__corral__view_background_agent", "id": "toolu_view2",
                  "input": {"address": "/root/orch/worker-1"}}, "delay_ms": 3000},
        {"text": "worker-1 finished: it wrote out.txt."},
    ]);
    let mock = MockLlm::start(&repo, "orch", &json!({"steps": steps}));
    let mut command = repo.command();
    command.envs(claude_env(&repo, &mock));
    command
        .args(["spawn", "orch", "--harness", "claude", "--task", "Delegate writing out.txt to a worker", "--json"])
        .args(["--", "--strict-mcp-config", "--mcp-config"])
        .arg(&mcp_config)
        .args([
            "--allowedTools",
            "mcp__corral__run_background_agent,mcp__corral__list_background_agents,mcp__corral__view_background_agent",
        ]);
    let out = run_deadline(command, PATIENCE, "corral spawn orch");
    assert!(out.status.success(), "spawn orch: {}", String::from_utf8_lossy(&out.stderr));

    let timeout = RUN_DEADLINE.as_secs().to_string();
    let mut command = repo.command();
    command.args(["wait", "/root/orch", "--timeout", &timeout]);
    let waited = run_deadline(command, RUN_DEADLINE + PATIENCE, "corral wait /root/orch");
    let why = || diagnostics(&repo, &mock);
    assert_ne!(waited.status.code(), Some(124), "orch did not end within {RUN_DEADLINE:?}\n{}", why());
    let orch = ps_record(&repo, "/root/orch");
    assert_eq!(orch["state"], "succeeded", "{orch}\n{}", why());

    // The child: under the orchestrator, in its own worktree, run to completion.
    let child = ps_record(&repo, "/root/orch/worker-1");
    assert_eq!(child["parent"], "/root/orch", "{child}");
    assert_eq!(child["state"], "succeeded", "{child}\n{}", why());
    assert_eq!(child["exit_code"], 0, "{child}");
    let worktree = repo.worktree_of("orch.worker-1");
    assert_eq!(Path::new(child["worktree"].as_str().unwrap()).canonicalize().unwrap(), worktree, "{child}");
    assert_eq!(std::fs::read_to_string(worktree.join("out.txt")).unwrap(), "done\n");
    assert!(!repo.worktree_of("orch").join("out.txt").exists(), "out.txt leaked into the orchestrator's worktree");
    assert!(child["task"].as_str().unwrap().starts_with("Write out.txt\n\nExpected output: out.txt"), "{child}");

    // What the tools answered, as Claude passed it back to the model.
    let requests: Vec<Value> = mock.requests().into_iter().filter(is_messages_request).collect();
    assert_eq!(requests.len(), 5, "one model request per step\n{}", why());
    // Claude Code 2.1.328 defers MCP tools (its ToolSearch loads them), so
    // their names reach the model in the request, not always as tools.
    let first = requests[0]["body"].to_string();
    for tool in TOOLS {
        assert!(first.contains(&format!("mcp__corral__{tool}")), "Claude tells the model of mcp__corral__{tool}");
    }
    let last = requests.last().unwrap();
    let answer = |id: &str| {
        let (is_error, text) = tool_result(last, id).unwrap_or_else(|| panic!("no tool_result for {id}\n{}", why()));
        assert!(!is_error, "{id} failed: {text}");
        serde_json::from_str::<Value>(&text).unwrap_or_else(|e| panic!("{id} answered no JSON ({e}): {text}"))
    };
    let run = answer("toolu_run");
    assert_eq!(run["address"], "/root/orch/worker-1", "{run}");
    assert_eq!(run["task_id"], child["task_id"], "{run}");
    let list = answer("toolu_list");
    assert_eq!(addresses(&list), ["/root/orch/worker-1"], "{list}");
    let view = answer("toolu_view2");
    assert_eq!(view["address"], "/root/orch/worker-1", "{view}");
    assert_eq!(view["ended"], true, "{view}");
    assert_eq!(view["state"], "succeeded", "{view}");
    assert_eq!(view["exit_code"], 0, "{view}");
    assert_eq!(view["result"]["text"], "worker wrote out.txt", "{view}");
    assert!(view["output"].as_array().unwrap().iter().any(|l| l == "finished"), "{view}");
}

// ---------------------------------------------------------------------------
// The examples in examples/mcp

#[test]
fn the_example_configs_parse() {
    let dir = corral_e2e::source_root().join("examples/mcp");
    let path = dir.join("corral.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let config = corral::config::Config::from_str(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    assert!(config.agents.contains_key("worker") && config.agents.contains_key("reviewer"));
    let claude: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("claude-mcp.json")).unwrap()).unwrap();
    assert_eq!(claude["mcpServers"]["corral"], json!({"command": "corral", "args": ["mcp"]}));
    let codex = std::fs::read_to_string(dir.join("codex-config.toml")).unwrap();
    assert!(codex.contains("[mcp_servers.corral]\ncommand = \"corral\"\nargs = [\"mcp\"]\n"), "{codex}");
}

// ---------------------------------------------------------------------------
// wait_background_agent (issue 13)

#[test]
fn wait_background_agent_waits_for_the_end_times_out_and_refuses_an_unknown_id() {
    let repo = TestRepo::new();
    let go = repo.path("go");
    let bin = corral_bin();
    let role = format!(
        "[agents.sleeper]\nharness = \"generic\"\nargs = [\"{}\", \"fake-agent\", \"wait-file {}; print finished the work\"]\n",
        bin.display(),
        go.display()
    );
    std::fs::write(repo.repo.join("corral.toml"), role).unwrap();
    let mut mcp = McpServer::start(repo.command());
    mcp.initialize();
    let run = mcp.ok(
        "run_background_agent",
        json!({"role": "sleeper", "task": "wait, then finish", "expected_output": "the words finished the work"}),
    );
    let (address, task_id) =
        (run["address"].as_str().unwrap().to_string(), run["task_id"].as_str().unwrap().to_string());

    let early = mcp.ok("wait_background_agent", json!({"address": address, "timeout_seconds": 0.3}));
    assert_eq!((early["timed_out"].as_bool(), early["ended"].as_bool()), (Some(true), Some(false)), "{early}");
    assert_eq!(early["state"], "running", "{early}");

    std::fs::write(&go, "").unwrap();
    // By task id, as an orchestrator holds it.
    let done = mcp.ok("wait_background_agent", json!({"address": task_id, "timeout_seconds": 60}));
    assert_eq!((done["timed_out"].as_bool(), done["ended"].as_bool()), (Some(false), Some(true)), "{done}");
    assert_eq!(done["state"], "succeeded", "{done}");
    let notice = done["notice"].as_str().unwrap_or_else(|| panic!("no notice: {done}"));
    assert!(notice.contains(&format!("{address} ended: succeeded (exit 0)")), "{notice}");
    assert!(notice.contains("finished the work"), "{notice}");
    assert!(done["result"].as_str().unwrap_or("").contains("finished the work"), "{done}");
    assert!(notice.contains("It was asked to hand back: the words finished the work"), "{notice}");
    assert_eq!(done["expected_output"], "the words finished the work", "{done}");

    // Every answer about the child carries the notice's fields.
    let viewed = mcp.ok("view_background_agent", json!({"address": address}));
    assert_eq!(viewed["notice"], done["notice"], "{viewed}");
    assert_eq!(viewed["expected_output"], "the words finished the work", "{viewed}");
    let listed = mcp.ok("list_background_agents", json!({}));
    let listed = &listed["agents"][0];
    assert_eq!(listed["expected_output"], "the words finished the work", "{listed}");
    let listed_notice = listed["notice"].as_str().unwrap_or_else(|| panic!("no notice in the list: {listed}"));
    assert!(listed_notice.contains(&format!("{address} ended: succeeded (exit 0)")), "{listed}");

    let (is_error, text) = mcp.call("wait_background_agent", json!({"address": "t-999"}));
    assert!(is_error, "{text}");
    assert!(text.contains("t-999"), "{text}");
    let (is_error, text) = mcp.call("wait_background_agent", json!({"address": address, "timeout_seconds": -1}));
    assert!(is_error && text.contains("timeout_seconds"), "{text}");
    // The server goes on serving.
    let agents = mcp.ok("list_agents", json!({}));
    assert!(agents.to_string().contains(&address), "{agents}");
}

#[test]
fn real_claude_hears_its_childs_result_in_its_next_turn_without_polling() {
    let repo = TestRepo::new();
    let bin = corral_bin();
    let bin = bin.to_str().unwrap();
    let go = repo.path("go");
    // The worker finishes only after the orchestrator's first turn ended.
    let result = r#"print '{"type":"result","subtype":"success","is_error":false,"total_cost_usd":0.02,"usage":{"input_tokens":20,"output_tokens":4},"session_id":"w-1","result":"worker wrote out.txt"}'"#;
    let worker_claude =
        fake_claude(&repo, "worker", &format!("wait-file {}; write out.txt done; {result}; exit 0", go.display()));
    std::fs::write(
        repo.repo.join("corral.toml"),
        format!(
            "[agents.worker]\nharness = \"claude\"\nenv = {{ CORRAL_CLAUDE_BIN = \"{}\" }}\n",
            worker_claude.display()
        ),
    )
    .unwrap();
    let mcp_config = repo.path("mcp.json");
    std::fs::write(&mcp_config, json!({"mcpServers": {"corral": {"command": bin, "args": ["mcp"]}}}).to_string())
        .unwrap();
    let steps = json!([
        {"tool": {"name": "mcp__corral__run_background_agent", "id": "toolu_run",
                  "input": {"role": "worker", "task": "Write out.txt", "expected_output": "out.txt"}}},
        {"text": "I started worker-1 and will hear when it is done."},
        {"text": "worker-1 is done: it wrote out.txt."},
    ]);
    let mock = MockLlm::start(&repo, "orch", &json!({"steps": steps}));
    let mut command = repo.command();
    command.envs(claude_env(&repo, &mock));
    command
        .args(["spawn", "orch", "--harness", "claude", "--task", "Delegate writing out.txt", "--json"])
        .args(["--", "--strict-mcp-config", "--mcp-config"])
        .arg(&mcp_config)
        .args(["--allowedTools", "mcp__corral__run_background_agent"]);
    let out = run_deadline(command, PATIENCE, "corral spawn orch");
    assert!(out.status.success(), "spawn orch: {}", String::from_utf8_lossy(&out.stderr));
    let why = || diagnostics(&repo, &mock);

    // Its first turn ends while the child runs: it stays, idle, input open.
    poll_until("the orchestrator's first turn to end", RUN_DEADLINE, || {
        mock.requests().into_iter().filter(is_messages_request).count() >= 2
            && ps_record(&repo, "/root/orch")["results"].as_u64().unwrap_or(0) >= 1
    });
    let orch = ps_record(&repo, "/root/orch");
    assert_eq!(orch["state"], "running", "the orchestrator ended before its child\n{orch}\n{}", why());
    assert_eq!(orch["input_closed"], false, "{orch}");
    std::fs::write(&go, "").unwrap();

    let timeout = RUN_DEADLINE.as_secs().to_string();
    let mut command = repo.command();
    command.args(["wait", "/root/orch", "--timeout", &timeout]);
    let waited = run_deadline(command, RUN_DEADLINE + PATIENCE, "corral wait /root/orch");
    assert_ne!(waited.status.code(), Some(124), "orch did not end\n{}", why());
    assert_eq!(ps_record(&repo, "/root/orch")["state"], "succeeded", "{}", why());
    assert_eq!(ps_record(&repo, "/root/orch/worker-1")["state"], "succeeded", "{}", why());

    // Its next model request carries the child's notice: result and ask.
    let requests: Vec<Value> = mock.requests().into_iter().filter(is_messages_request).collect();
    assert_eq!(requests.len(), 3, "{}", why());
    let third = requests[2]["body"].to_string();
    assert!(third.contains("[corral] /root/orch/worker-1 ended: succeeded"), "{}", why());
    assert!(third.contains("worker wrote out.txt"), "the child's result\n{}", why());
    assert!(third.contains("It was asked to hand back: out.txt"), "{}", why());
    assert!(!requests[1]["body"].to_string().contains("ended: succeeded"), "the notice came before the child ended");
}
