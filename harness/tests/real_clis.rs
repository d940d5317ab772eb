//! The real Claude Code, Codex, Gemini CLI, opencode and Aider driven
//! against the scripted model server (`mock_llm::MockServer`) on loopback:
//! proof that the server speaks their APIs (Anthropic Messages, OpenAI
//! Responses, Gemini, OpenAI Chat Completions) well enough for the real
//! binaries, and a record of how those binaries report usage, take
//! follow-up messages and resume.
//!
//! The binaries come from `CORRAL_CLAUDE_BIN`, `CORRAL_CODEX_BIN`,
//! `CORRAL_GEMINI_BIN`, `CORRAL_OPENCODE_BIN`, `CORRAL_AIDER_BIN`, else from
//! the cache folder `tests/install-agent-clis.sh` installs into. A missing
//! binary FAILS the test with a message saying to run that script: these
//! tests never pass by skipping.
//!
//! Each CLI runs with a cleared environment (PATH, a temporary HOME, the
//! provider variables), in a temporary folder, in its own process group,
//! under a deadline; a guard kills the group whatever happens.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use corral_harness::mock_llm::{MockServer, RecordedRequest, Script};
use serde_json::{json, Value};

/// Versions checked; must match tests/install-agent-clis.sh.
const CLAUDE_PACKAGE_DIR: &str = "@anthropic-ai+claude-code@2.1.328";
const CODEX_PACKAGE_DIR: &str = "@openai+codex@0.169.0";
const GEMINI_PACKAGE_DIR: &str = "@google+gemini-cli@0.61.0";
const OPENCODE_PACKAGE_DIR: &str = "opencode-ai@1.18.33";
const AIDER_PACKAGE_DIR: &str = "aider-chat@0.86.2";

/// How long one CLI run may take on a loaded machine (they take about a
/// second when idle).
const RUN_DEADLINE: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------
// Finding the binaries

fn non_empty_env(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

/// The install script's cache folder, by the same rule as the script.
fn agent_cli_cache() -> PathBuf {
    let root = non_empty_env("CORRAL_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| non_empty_env("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("corral")))
        .unwrap_or_else(|| PathBuf::from(non_empty_env("HOME").expect("HOME is set")).join(".cache").join("corral"));
    root.join("agent-clis")
}

fn agent_bin(env_var: &str, package_dir: &str, bin: &str) -> PathBuf {
    agent_bin_in(env_var, &Path::new(package_dir).join("node_modules/.bin"), bin)
}

/// `bin` in `folder` of the cache, unless `env_var` names it.
fn agent_bin_in(env_var: &str, folder: &Path, bin: &str) -> PathBuf {
    let path = match non_empty_env(env_var) {
        Some(path) => PathBuf::from(path),
        None => agent_cli_cache().join(folder).join(bin),
    };
    assert!(
        path.exists(),
        "the real `{bin}` CLI is missing at {}: run tests/install-agent-clis.sh \
         (it installs the pinned versions into the cache), or set {env_var}",
        path.display()
    );
    path
}

fn claude_bin() -> PathBuf {
    agent_bin("CORRAL_CLAUDE_BIN", CLAUDE_PACKAGE_DIR, "claude")
}

fn codex_bin() -> PathBuf {
    agent_bin("CORRAL_CODEX_BIN", CODEX_PACKAGE_DIR, "codex")
}

fn gemini_bin() -> PathBuf {
    agent_bin("CORRAL_GEMINI_BIN", GEMINI_PACKAGE_DIR, "gemini")
}

fn opencode_bin() -> PathBuf {
    agent_bin("CORRAL_OPENCODE_BIN", OPENCODE_PACKAGE_DIR, "opencode")
}

fn aider_bin() -> PathBuf {
    agent_bin_in("CORRAL_AIDER_BIN", &Path::new(AIDER_PACKAGE_DIR).join("venv/bin"), "aider")
}

// ---------------------------------------------------------------------------
// The server, on a runtime of its own so the test thread can block on the CLI

struct Mock {
    // Dropped before the runtime it runs on.
    server: MockServer,
    _runtime: tokio::runtime::Runtime,
}

impl Mock {
    fn start(script: Value) -> Mock {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let script = Script::from_json(&script.to_string()).unwrap();
        let server = runtime.block_on(MockServer::start(script, ([127, 0, 0, 1], 0).into())).unwrap();
        Mock { server, _runtime: runtime }
    }

    fn url(&self) -> String {
        self.server.url()
    }

    fn model_requests(&self) -> Vec<RecordedRequest> {
        self.server.requests().into_iter().filter(RecordedRequest::is_model_request).collect()
    }
}

// ---------------------------------------------------------------------------
// A CLI process under a deadline

/// A running CLI: its JSON output lines, its stderr, and a guard that kills
/// its process group when dropped.
struct Agent {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Option<JoinHandle<String>>,
    seen: Vec<String>,
}

impl Agent {
    fn spawn(name: &'static str, mut command: Command, stdin: Stdio) -> Agent {
        command.stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Agent { name, stdin: child.stdin.take(), child, lines, stderr: Some(stderr), seen: Vec::new() }
    }

    /// What the CLI printed so far, for failure messages.
    fn transcript(&self) -> String {
        format!("{} stdout so far:\n{}", self.name, self.seen.join("\n"))
    }

    /// The next stdout line as JSON; `None` at end of output.
    fn next_json(&mut self, deadline: Instant) -> Option<Value> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(line) => {
                self.seen.push(line.clone());
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("{}: not a JSON line ({e}): {line}", self.name));
                Some(value)
            }
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                panic!("{} timed out; {}", self.name, self.transcript())
            }
        }
    }

    /// Reads lines until one satisfies `wanted`, returning every line read.
    fn read_until(&mut self, deadline: Instant, wanted: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut read = Vec::new();
        loop {
            let Some(value) = self.next_json(deadline) else {
                panic!("{} ended before the awaited line; {}", self.name, self.transcript());
            };
            let done = wanted(&value);
            read.push(value);
            if done {
                return read;
            }
        }
    }

    fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is piped");
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    /// Closes stdin, reads the rest of the output, waits for the exit.
    fn finish(&mut self, deadline: Instant) -> (ExitStatus, Vec<Value>) {
        self.stdin = None;
        let mut rest = Vec::new();
        while let Some(value) = self.next_json(deadline) {
            rest.push(value);
        }
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, rest);
            }
            assert!(
                Instant::now() < deadline,
                "{} closed its output but did not exit; {}",
                self.name,
                self.transcript()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr(&mut self) -> String {
        self.stderr.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // The group, so that tools the CLI started go too.
        let pgid = self.child.id() as libc::pid_t;
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a CLI with stdin closed to the end, and checks it exited 0.
fn run_to_end(name: &'static str, command: Command) -> Vec<Value> {
    let deadline = Instant::now() + RUN_DEADLINE;
    let mut agent = Agent::spawn(name, command, Stdio::null());
    let (status, lines) = agent.finish(deadline);
    let stderr = agent.stderr();
    assert!(status.success(), "{name} exited with {status}; stderr:\n{stderr}\n{}", agent.transcript());
    lines
}

fn base_env(command: &mut Command, home: &Path) {
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("LANG", "C.UTF-8");
}

fn claude_command(mock: &Mock, home: &Path, work: &Path) -> Command {
    let mut command = Command::new(claude_bin());
    base_env(&mut command, home);
    command
        .env("ANTHROPIC_BASE_URL", mock.url())
        .env("ANTHROPIC_API_KEY", "mock-key")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .current_dir(work)
        .args(["-p", "--output-format", "stream-json", "--verbose", "--permission-mode", "acceptEdits"]);
    command
}

/// `codex exec --json` pointed at the mock; `args` go after the options
/// (the prompt, or `resume <thread id> <prompt>`).
fn codex_command(mock: &Mock, home: &Path, codex_home: &Path, work: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(codex_bin());
    base_env(&mut command, home);
    let provider = format!(
        r#"model_providers.mock={{name="mock",base_url="{}/v1",wire_api="responses",env_key="MOCK_KEY"}}"#,
        mock.url()
    );
    command
        .env("CODEX_HOME", codex_home)
        .env("MOCK_KEY", "mock-key")
        .current_dir(work)
        .args([
            "exec",
            "--json",
            "--skip-git-repo-check",
            "--sandbox",
            "workspace-write",
            "-c",
            "model_provider=mock",
            "-c",
            &provider,
            "-c",
            "model=gpt-mock",
        ])
        .args(args);
    command
}

/// A folder outside /tmp for CODEX_HOME (Codex warns about one under /tmp).
fn codex_home() -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(base).unwrap();
    tempfile::Builder::new().prefix("codex-home-").tempdir_in(base).unwrap()
}

fn of_type<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["type"] == kind).collect()
}

fn usage_fields(usage: &Value, fields: &[&str]) -> BTreeMap<String, Value> {
    fields.iter().map(|f| (f.to_string(), usage[*f].clone())).collect()
}

fn expect_fields(pairs: &[(&str, u64)]) -> BTreeMap<String, Value> {
    pairs.iter().map(|(k, v)| (k.to_string(), json!(v))).collect()
}

const CLAUDE_USAGE_FIELDS: &[&str] =
    &["input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"];

const CODEX_USAGE_FIELDS: &[&str] =
    &["input_tokens", "cached_input_tokens", "cache_write_input_tokens", "output_tokens", "reasoning_output_tokens"];

// ---------------------------------------------------------------------------
// Claude Code

#[test]
fn claude_writes_a_file_and_its_result_usage_is_the_script_sum() {
    let work = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let target = work.path().join("hello.txt");
    let mock = Mock::start(json!({"steps": [
        {"tool": {"name": "Write", "input": {"file_path": target, "content": "hello from the mock\n"}},
         "usage": {"input": 1200, "output": 40, "cache_read": 5000, "cache_write": 300}},
        {"text": "Wrote hello.txt.",
         "usage": {"input": 1500, "output": 12, "cache_read": 6000, "cache_write": 20}}
    ]}));
    let mut command = claude_command(&mock, home.path(), work.path());
    command.arg("Create hello.txt");
    let lines = run_to_end("claude", command);

    assert_eq!(std::fs::read_to_string(&target).unwrap(), "hello from the mock\n");

    let init = lines.iter().find(|l| l["type"] == "system" && l["subtype"] == "init").expect("a system/init line");
    assert!(init["tools"].as_array().unwrap().contains(&json!("Write")));
    let session = init["session_id"].clone();

    let assistants = of_type(&lines, "assistant");
    let tool_use = assistants
        .iter()
        .flat_map(|a| a["message"]["content"].as_array().unwrap())
        .find(|c| c["type"] == "tool_use")
        .expect("an assistant line with the tool use");
    assert_eq!(tool_use["name"], "Write");
    assert_eq!(tool_use["input"]["file_path"], json!(target));
    // Each assistant line repeats message_start's usage: exact input and
    // cache figures, output 1 (a start-of-message snapshot).
    let first_usage = &assistants[0]["message"]["usage"];
    assert_eq!(
        usage_fields(first_usage, CLAUDE_USAGE_FIELDS),
        expect_fields(&[
            ("input_tokens", 1200),
            ("output_tokens", 1),
            ("cache_read_input_tokens", 5000),
            ("cache_creation_input_tokens", 300)
        ])
    );

    let tool_result = of_type(&lines, "user")
        .into_iter()
        .flat_map(|u| u["message"]["content"].as_array().unwrap())
        .find(|c| c["type"] == "tool_result")
        .expect("a user line with the tool result");
    assert_eq!(tool_result["tool_use_id"], tool_use["id"]);
    assert_ne!(tool_result["is_error"], json!(true));

    let result = lines.last().unwrap();
    assert_eq!(result["type"], "result", "the last line is the result");
    assert_eq!(result["subtype"], "success");
    assert_eq!(result["is_error"], false);
    assert_eq!(result["result"], "Wrote hello.txt.");
    assert_eq!(result["num_turns"], 2);
    assert_eq!(result["session_id"], session);
    // The result sums every call's figures, cache fields included.
    assert_eq!(
        usage_fields(&result["usage"], CLAUDE_USAGE_FIELDS),
        expect_fields(&[
            ("input_tokens", 2700),
            ("output_tokens", 52),
            ("cache_read_input_tokens", 11000),
            ("cache_creation_input_tokens", 320)
        ])
    );
    let model_usage = result["modelUsage"].as_object().unwrap();
    assert_eq!(model_usage.len(), 1);
    let per_model = model_usage.values().next().unwrap();
    assert_eq!(per_model["inputTokens"], 2700);
    assert_eq!(per_model["outputTokens"], 52);
    assert_eq!(per_model["cacheReadInputTokens"], 11000);
    assert_eq!(per_model["cacheCreationInputTokens"], 320);
    assert!(result["total_cost_usd"].as_f64().unwrap() > 0.0);

    let requests = mock.model_requests();
    assert_eq!(requests.len(), 2, "one model request per step");
    assert_eq!(requests[0].path, "/v1/messages?beta=true");
    assert_eq!(requests[0].body["stream"], true);
    assert!(requests[0].body_contains("Create hello.txt"));
    let last_message = requests[1].body["messages"].as_array().unwrap().last().unwrap();
    assert_eq!(last_message["role"], "user");
    assert_eq!(last_message["content"][0]["type"], "tool_result");
    assert_eq!(last_message["content"][0]["tool_use_id"], tool_use["id"]);
}

#[test]
fn claude_takes_a_second_stdin_message_as_a_new_turn_sent_to_the_server() {
    let work = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let mock = Mock::start(json!({"steps": [
        {"text": "first answer", "usage": {"input": 100, "output": 10, "cache_read": 7, "cache_write": 3}},
        {"text": "second answer", "usage": {"input": 200, "output": 20, "cache_read": 70, "cache_write": 30}}
    ]}));
    let mut command = claude_command(&mock, home.path(), work.path());
    command.args(["--input-format", "stream-json"]);
    let deadline = Instant::now() + RUN_DEADLINE;
    let mut agent = Agent::spawn("claude", command, Stdio::piped());
    let user = |text: &str| {
        json!({"type": "user", "message": {"role": "user", "content": text},
               "parent_tool_use_id": null, "session_id": "default"})
        .to_string()
    };

    agent.send_line(&user("first message alpha"));
    let turn1 = agent.read_until(deadline, |l| l["type"] == "result");
    let result1 = turn1.last().unwrap().clone();
    assert_eq!(result1["result"], "first answer");
    assert_eq!(mock.model_requests().len(), 1);

    agent.send_line(&user("second message beta"));
    let turn2 = agent.read_until(deadline, |l| l["type"] == "result");
    let result2 = turn2.last().unwrap().clone();
    assert_eq!(result2["result"], "second answer");

    let (status, rest) = agent.finish(deadline);
    assert!(status.success(), "claude exited with {status}: {rest:?}");
    assert!(rest.is_empty(), "nothing after the last result: {rest:?}");

    // The second turn's request carries the second message, with the first
    // exchange as history.
    let requests = mock.model_requests();
    assert_eq!(requests.len(), 2);
    assert!(!requests[0].body_contains("second message beta"));
    assert!(requests[1].body_contains("second message beta"));
    assert!(requests[1].body_contains("first message alpha"));
    assert!(requests[1].body_contains("first answer"));

    // Each turn starts with its own system/init line, same session.
    for turn in [&turn1, &turn2] {
        assert_eq!(turn[0]["type"], "system");
        assert_eq!(turn[0]["subtype"], "init");
        assert_eq!(turn[0]["session_id"], result1["session_id"]);
    }
    assert_eq!(result2["session_id"], result1["session_id"]);

    // `usage` is per turn; `modelUsage` and `total_cost_usd` add up over the
    // process's turns; `model_usage_since_last_result` is per turn.
    let turn_usage = |pairs: [u64; 4]| {
        expect_fields(&[
            ("input_tokens", pairs[0]),
            ("output_tokens", pairs[1]),
            ("cache_read_input_tokens", pairs[2]),
            ("cache_creation_input_tokens", pairs[3]),
        ])
    };
    assert_eq!(usage_fields(&result1["usage"], CLAUDE_USAGE_FIELDS), turn_usage([100, 10, 7, 3]));
    assert_eq!(usage_fields(&result2["usage"], CLAUDE_USAGE_FIELDS), turn_usage([200, 20, 70, 30]));
    let model_totals = |result: &Value, key: &str| {
        let per_model = result[key].as_object().unwrap().values().next().unwrap().clone();
        [
            per_model["inputTokens"].as_u64().unwrap(),
            per_model["outputTokens"].as_u64().unwrap(),
            per_model["cacheReadInputTokens"].as_u64().unwrap(),
            per_model["cacheCreationInputTokens"].as_u64().unwrap(),
        ]
    };
    assert_eq!(model_totals(&result1, "modelUsage"), [100, 10, 7, 3]);
    assert_eq!(model_totals(&result2, "modelUsage"), [300, 30, 77, 33]);
    assert_eq!(model_totals(&result2, "model_usage_since_last_result"), [200, 20, 70, 30]);
    assert!(result2["total_cost_usd"].as_f64() > result1["total_cost_usd"].as_f64());
}

#[test]
fn claude_runaway_tool_loop_on_a_forever_step_is_cut_by_max_turns() {
    let work = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let mock = Mock::start(json!({"steps": [
        {"text": "once more", "shell": "echo again >> loop.txt", "usage": {"input": 10, "output": 2},
         "repeat": "forever"}
    ]}));
    let mut command = claude_command(&mock, home.path(), work.path());
    command.args(["--max-turns", "3", "loop"]);
    let deadline = Instant::now() + RUN_DEADLINE;
    let mut agent = Agent::spawn("claude", command, Stdio::null());
    let (status, lines) = agent.finish(deadline);
    assert!(!status.success(), "a max-turns stop exits non-zero");
    let result = lines.last().unwrap();
    assert_eq!(result["subtype"], "error_max_turns");
    assert_eq!(result["is_error"], true);
    let requests = mock.model_requests();
    assert_eq!(requests.len(), 3);
    assert!(requests.iter().all(|r| r.step == Some(0)));
    let looped = std::fs::read_to_string(work.path().join("loop.txt")).unwrap();
    assert_eq!(looped, "again\n".repeat(3));
    assert_eq!(result["usage"]["input_tokens"], 30);
    assert_eq!(result["usage"]["output_tokens"], 6);
}

#[test]
fn claude_reports_an_exhausted_script_as_an_api_error() {
    let work = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let mock = Mock::start(json!([{"shell": "true", "usage": {"input": 10, "output": 2}}]));
    let mut command = claude_command(&mock, home.path(), work.path());
    command.arg("go");
    let deadline = Instant::now() + RUN_DEADLINE;
    let mut agent = Agent::spawn("claude", command, Stdio::null());
    let (status, lines) = agent.finish(deadline);
    assert!(!status.success());
    let result = lines.last().unwrap();
    assert_eq!(result["type"], "result");
    assert_eq!(result["is_error"], true);
    assert_eq!(result["api_error_status"], 400);
    let text = result["result"].as_str().unwrap();
    assert!(text.contains("script is exhausted"), "{text}");
    // No step answered the requests after the first.
    let requests = mock.model_requests();
    assert!(requests.len() >= 2);
    assert_eq!(requests[0].step, Some(0));
    assert!(requests[1..].iter().all(|r| r.step.is_none()));
}

// ---------------------------------------------------------------------------
// Codex

#[test]
fn codex_runs_a_shell_command_and_its_usage_is_the_script_sum() {
    let work = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let codex_home = codex_home();
    let mock = Mock::start(json!({"steps": [
        {"shell": "printf 'made by codex\\n' > made.txt && echo wrote-it",
         "usage": {"input": 1000, "output": 20, "cache_read": 600, "reasoning": 3}},
        {"text": "All done.",
         "usage": {"input": 1500, "output": 7, "cache_read": 1200, "cache_write": 4, "reasoning": 2}}
    ]}));
    let command = codex_command(&mock, home.path(), codex_home.path(), work.path(), &["make the file"]);
    let lines = run_to_end("codex", command);

    assert_eq!(std::fs::read_to_string(work.path().join("made.txt")).unwrap(), "made by codex\n");
    assert_eq!(lines[0]["type"], "thread.started");
    let completed: Vec<&Value> = of_type(&lines, "item.completed").into_iter().map(|l| &l["item"]).collect();
    let command_item = completed.iter().find(|i| i["type"] == "command_execution").expect("a command_execution item");
    assert!(command_item["command"].as_str().unwrap().contains("made.txt"));
    assert_eq!(command_item["exit_code"], 0);
    assert_eq!(command_item["status"], "completed");
    assert!(command_item["aggregated_output"].as_str().unwrap().contains("wrote-it"));
    let message = completed.iter().find(|i| i["type"] == "agent_message").expect("an agent_message item");
    assert_eq!(message["text"], "All done.");

    let turn = of_type(&lines, "turn.completed");
    assert_eq!(turn.len(), 1);
    // Summed over the turn's two calls, each figure as the server sent it
    // (input_tokens is not reduced by the cached ones).
    assert_eq!(
        usage_fields(&turn[0]["usage"], CODEX_USAGE_FIELDS),
        expect_fields(&[
            ("input_tokens", 2500),
            ("cached_input_tokens", 1800),
            ("cache_write_input_tokens", 4),
            ("output_tokens", 27),
            ("reasoning_output_tokens", 5)
        ])
    );

    let requests = mock.model_requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].path, "/v1/responses");
    assert_eq!(requests[0].body["stream"], true);
    assert!(requests[0].body_contains("make the file"));
    let offered: Vec<&str> =
        requests[0].body["tools"].as_array().unwrap().iter().filter_map(|t| t["name"].as_str()).collect();
    assert!(offered.contains(&"exec_command"), "tools: {offered:?}");
    // The call's output goes back as a function_call_output item.
    let output = requests[1].body["input"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "function_call_output")
        .expect("a function_call_output in the second request")
        .clone();
    assert!(output.to_string().contains("wrote-it"), "{output}");
}

#[test]
fn codex_resume_reports_usage_cumulative_over_the_thread() {
    let work = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let codex_home = codex_home();
    let mock = Mock::start(json!({"steps": [
        {"text": "first answer", "usage": {"input": 1000, "output": 20, "cache_read": 600, "reasoning": 1}},
        {"text": "second answer", "usage": {"input": 50, "output": 3, "cache_read": 10}},
        {"text": "third answer", "usage": {"input": 7, "output": 1, "cache_read": 0, "cache_write": 2}}
    ]}));
    let run =
        |args: &[&str]| run_to_end("codex", codex_command(&mock, home.path(), codex_home.path(), work.path(), args));
    let turn_usage = |lines: &[Value]| {
        let turns = of_type(lines, "turn.completed");
        assert_eq!(turns.len(), 1, "{lines:?}");
        usage_fields(&turns[0]["usage"], CODEX_USAGE_FIELDS)
    };
    let answer = |lines: &[Value]| {
        of_type(lines, "item.completed")
            .iter()
            .find(|l| l["item"]["type"] == "agent_message")
            .map(|l| l["item"]["text"].clone())
    };

    let first = run(&["first question"]);
    let thread = first[0]["thread_id"].as_str().unwrap().to_string();
    assert_eq!(answer(&first), Some(json!("first answer")));
    let usage = |v: [u64; 5]| {
        expect_fields(&[
            ("input_tokens", v[0]),
            ("cached_input_tokens", v[1]),
            ("cache_write_input_tokens", v[2]),
            ("output_tokens", v[3]),
            ("reasoning_output_tokens", v[4]),
        ])
    };
    assert_eq!(turn_usage(&first), usage([1000, 600, 0, 20, 1]));

    let second = run(&["resume", &thread, "follow-up one"]);
    assert_eq!(second[0]["thread_id"], json!(thread), "same thread");
    assert_eq!(answer(&second), Some(json!("second answer")));
    // Not the turn's own 50/10/0/3/0: the thread's running total.
    assert_eq!(turn_usage(&second), usage([1050, 610, 0, 23, 1]));

    let third = run(&["resume", &thread, "follow-up two"]);
    assert_eq!(answer(&third), Some(json!("third answer")));
    assert_eq!(turn_usage(&third), usage([1057, 610, 2, 24, 1]));

    let requests = mock.model_requests();
    assert_eq!(requests.len(), 3);
    assert!(requests[1].body_contains("follow-up one"));
    assert!(requests[1].body_contains("first question"));
    assert!(requests[1].body_contains("first answer"));
    assert!(requests[2].body_contains("follow-up two"));
    assert!(requests[2].body_contains("second answer"));
}

// ---------------------------------------------------------------------------
// Gemini CLI (the Gemini API), opencode and Aider (OpenAI Chat Completions)

/// `gemini -p TASK -o stream-json` pointed at the mock, with the settings a
/// base URL needs (docs/agents/gemini-cli.md §0); `args` before `-p`.
fn gemini_command(mock: &Mock, home: &Path, work: &Path, args: &[&str], task: &str) -> Command {
    std::fs::create_dir_all(home.join(".gemini")).unwrap();
    let settings =
        r#"{"security": {"auth": {"selectedType": "gemini-api-key"}}, "privacy": {"usageStatisticsEnabled": false}}"#;
    std::fs::write(home.join(".gemini/settings.json"), settings).unwrap();
    let mut command = Command::new(gemini_bin());
    base_env(&mut command, home);
    command
        .env("GOOGLE_GEMINI_BASE_URL", mock.url())
        .env("GEMINI_API_KEY", "mock-key")
        .env("GEMINI_CLI_NO_RELAUNCH", "true")
        .env("TMPDIR", home)
        .current_dir(work)
        .args(["-o", "stream-json", "-m", "gemini-2.5-flash", "--skip-trust"])
        .args(args)
        .args(["-p", task]);
    command
}

#[test]
fn gemini_writes_a_file_and_runs_a_shell_step_and_its_stats_are_the_script_sum() {
    let mock = Mock::start(json!({"steps": [
        {"text": "Writing.", "tool": {"name": "write_file", "input": {"file_path": "g.txt", "content": "from gemini\n"}},
         "usage": {"input": 2000, "output": 20}},
        {"shell": "printf 'from the shell\\n' > shell.txt", "usage": {"input": 2100, "output": 5, "cache_read": 1500, "reasoning": 3}},
        {"text": "Both done.", "usage": {"input": 2200, "output": 4}},
    ]}));
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let lines = run_to_end("gemini", gemini_command(&mock, home.path(), work.path(), &["--yolo"], "make two files"));
    assert_eq!(std::fs::read_to_string(work.path().join("g.txt")).unwrap(), "from gemini\n");
    assert_eq!(std::fs::read_to_string(work.path().join("shell.txt")).unwrap(), "from the shell\n");
    let tools: Vec<&Value> = of_type(&lines, "tool_use").into_iter().map(|l| &l["tool_name"]).collect();
    assert_eq!(tools, [&json!("write_file"), &json!("run_shell_command")]);
    let result = of_type(&lines, "result");
    assert_eq!(result.len(), 1, "{lines:?}");
    assert_eq!(result[0]["status"], "success");
    // Summed over the calls: prompt 6300 (1500 of it cached), candidates
    // 29; the total holds the 3 thinking tokens.
    let stats = &result[0]["stats"];
    let figures = usage_fields(stats, &["input_tokens", "output_tokens", "cached", "input", "total_tokens"]);
    assert_eq!(
        figures,
        expect_fields(&[
            ("input_tokens", 6300),
            ("output_tokens", 29),
            ("cached", 1500),
            ("input", 4800),
            ("total_tokens", 6332)
        ])
    );
    let requests = mock.model_requests();
    assert_eq!(requests.len(), 3);
    assert!(requests.iter().all(|r| r.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"));
    // The shell's result went back as the run_shell_command's response.
    let answered = requests[2].body["contents"].as_array().and_then(|c| c.last()).cloned().unwrap_or_default();
    assert_eq!(answered["parts"][0]["functionResponse"]["name"], "run_shell_command", "{answered}");
}

/// `opencode run --format json` pointed at the mock through its
/// openai-compatible provider (docs/agents/opencode-cli.md).
fn opencode_command(mock: &Mock, home: &Path, work: &Path, task: &str) -> Command {
    let plugins = home.join(".config/opencode");
    std::fs::create_dir_all(plugins.join("node_modules")).unwrap();
    std::fs::write(plugins.join("package.json"), r#"{"dependencies":{"@opencode-ai/plugin":"1.18.33"}}"#).unwrap();
    std::fs::write(
        plugins.join("package-lock.json"),
        r#"{"lockfileVersion":3,"packages":{"":{"dependencies":{"@opencode-ai/plugin":"1.18.33"}}}}"#,
    )
    .unwrap();
    let config = json!({"autoupdate": false, "share": "disabled", "provider": {"mock": {
        "npm": "@ai-sdk/openai-compatible", "name": "Mock",
        "options": {"baseURL": format!("{}/v1", mock.url()), "apiKey": "mock-key"},
        "models": {"mock-coder": {"name": "Mock Coder", "limit": {"context": 128000, "output": 4096}}}}}});
    let config_path = home.join("opencode.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let mut command = Command::new(opencode_bin());
    base_env(&mut command, home);
    command
        .env("OPENCODE_CONFIG", &config_path)
        .env("OPENCODE_DISABLE_MODELS_FETCH", "1")
        .env("OPENCODE_DISABLE_AUTOUPDATE", "1")
        .env("PWD", work)
        .current_dir(work)
        .args(["run", "--format", "json", "--title", "t", "-m", "mock/mock-coder", task]);
    command
}

#[test]
fn opencode_writes_a_file_and_runs_a_shell_step_and_its_steps_carry_the_script_usage() {
    let mock = Mock::start(json!({"steps": [
        {"tool": {"name": "write", "input": {"filePath": "o.txt", "content": "from opencode\n"}}, "usage": {"input": 3000, "output": 40}},
        {"shell": "printf 'from bash\\n' > bash.txt", "usage": {"input": 3100, "output": 6, "cache_read": 2900}},
        {"text": "Both done.", "usage": {"input": 3200, "output": 2}},
    ]}));
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let lines = run_to_end("opencode", opencode_command(&mock, home.path(), work.path(), "make two files"));
    assert_eq!(std::fs::read_to_string(work.path().join("o.txt")).unwrap(), "from opencode\n");
    assert_eq!(std::fs::read_to_string(work.path().join("bash.txt")).unwrap(), "from bash\n");
    let tools: Vec<&Value> = of_type(&lines, "tool_use").into_iter().map(|l| &l["part"]["tool"]).collect();
    assert_eq!(tools, [&json!("write"), &json!("bash")]);
    // One step_finish per call; opencode's input leaves the cached out.
    let steps: Vec<(u64, u64, u64)> = of_type(&lines, "step_finish")
        .iter()
        .map(|l| {
            let t = &l["part"]["tokens"];
            (t["input"].as_u64().unwrap(), t["output"].as_u64().unwrap(), t["cache"]["read"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(steps, [(3000, 40, 0), (200, 6, 2900), (3200, 2, 0)]);
    let requests = mock.model_requests();
    assert_eq!(requests.len(), 3, "no title call with --title");
    assert!(requests
        .iter()
        .all(|r| r.path == "/v1/chat/completions" && r.body["stream_options"]["include_usage"] == true));
}

#[test]
fn aider_edits_through_its_whole_format_and_prints_the_script_usage() {
    let mock = Mock::start(json!({"steps": [
        {"text": "Here it is.\n\na.txt\n```\nfrom aider\n```\n", "usage": {"input": 600, "output": 40}},
    ]}));
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git").args(args).current_dir(work.path()).output().unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    git(&["init", "-q"]);
    git(&["config", "user.name", "Tester"]);
    git(&["config", "user.email", "tester@example.invalid"]);
    let metadata = home.path().join("metadata.json");
    std::fs::write(
        &metadata,
        json!({"openai/gpt-mock": {"max_input_tokens": 128000, "max_output_tokens": 4096, "max_tokens": 4096,
            "input_cost_per_token": 0.000002, "output_cost_per_token": 0.00001, "litellm_provider": "openai", "mode": "chat"}})
        .to_string(),
    )
    .unwrap();
    let mut command = Command::new(aider_bin());
    base_env(&mut command, home.path());
    command
        .env("OPENAI_API_BASE", format!("{}/v1", mock.url()))
        .env("OPENAI_API_KEY", "mock-key")
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .env("TERM", "dumb")
        .current_dir(work.path())
        .arg("--model-metadata-file")
        .arg(&metadata)
        .args(["--model", "openai/gpt-mock", "--yes-always", "--no-pretty", "--no-stream", "--no-auto-commits"])
        .args(["--no-check-update", "--no-analytics", "--no-show-release-notes", "--no-show-model-warnings"])
        .args(["--no-gitignore", "--message", "create a.txt"])
        .stdin(Stdio::null())
        .process_group(0);
    let deadline = Instant::now() + RUN_DEADLINE;
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("aider starts");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            panic!("aider still running after {RUN_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = reader.join().unwrap();
    assert!(status.success(), "aider exited with {status}: {stdout}");
    assert_eq!(std::fs::read_to_string(work.path().join("a.txt")).unwrap(), "from aider\n", "{stdout}");
    // Not streamed, Aider prints the server's figures and prices them.
    assert!(stdout.contains("Tokens: 600 sent, 40 received. Cost: $0.0016 message, $0.0016 session."), "{stdout}");
    let requests = mock.model_requests();
    assert_eq!(requests.len(), 1, "no commit-message call with --no-auto-commits");
    assert_eq!(requests[0].path, "/v1/chat/completions");
    assert!(requests[0].body.get("stream").is_none(), "{}", requests[0].body);
}
