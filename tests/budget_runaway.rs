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
//! FAILS the test (it never passes by skipping). The helpers below follow
//! tests/harness.rs. `CORRAL_TEST_VERBOSE=1` prints the agent's events and
//! the server's requests even when the test passes.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use corral_e2e::{alive, TestRepo, PATIENCE};
use serde_json::{json, Value};

/// Must match tests/install-agent-clis.sh (and tests/harness.rs).
const CLAUDE_PACKAGE_DIR: &str = "@anthropic-ai+claude-code@2.1.328";

/// How long the runaway may take to reach its budget and be stopped on a
/// loaded 2-core machine (about ten seconds when idle).
const RUN_DEADLINE: Duration = Duration::from_secs(240);

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
// The real binary (the same rule as tests/harness.rs)

fn non_empty_env(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

fn claude_bin() -> PathBuf {
    let path = match non_empty_env("CORRAL_CLAUDE_BIN") {
        Some(path) => PathBuf::from(path),
        None => {
            let cache = non_empty_env("CORRAL_CACHE_DIR")
                .map(PathBuf::from)
                .or_else(|| non_empty_env("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("corral")))
                .unwrap_or_else(|| {
                    PathBuf::from(non_empty_env("HOME").expect("HOME is set")).join(".cache").join("corral")
                });
            cache.join("agent-clis").join(CLAUDE_PACKAGE_DIR).join("node_modules").join(".bin").join("claude")
        }
    };
    assert!(
        path.exists(),
        "the real `claude` CLI is missing at {}: run tests/install-agent-clis.sh \
         (it installs the pinned version into the cache), or set CORRAL_CLAUDE_BIN",
        path.display()
    );
    path
}

// ---------------------------------------------------------------------------
// Commands under a deadline

/// Runs `command` to its end, killing it and panicking when `timeout` runs
/// out first (a hung client or daemon must not hang the test).
fn run_deadline(mut command: Command, timeout: Duration, what: &str) -> Output {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stdout.read_to_end(&mut bytes);
        bytes
    });
    let err_reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stderr.read_to_end(&mut bytes);
        bytes
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {timeout:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: out_reader.join().unwrap(), stderr: err_reader.join().unwrap() }
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `corral ARGS` with a deadline; panics unless it exits 0; returns stdout.
fn corral_ok(repo: &TestRepo, args: &[&str]) -> String {
    let mut command = repo.command();
    command.args(args);
    let out = run_deadline(command, PATIENCE, &format!("corral {args:?}"));
    assert!(out.status.success(), "corral {args:?} failed: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every event of one agent, from `corral events --agent ADDRESS`.
fn events(repo: &TestRepo, address: &str) -> Vec<Value> {
    corral_ok(repo, &["events", "--agent", address])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON event ({e}): {l}")))
        .collect()
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

/// The agent's record from `ps --all --json`, by address.
fn ps_record(repo: &TestRepo, address: &str) -> Value {
    let stdout = corral_ok(repo, &["ps", "--all", "--json"]);
    let ps: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("ps printed no JSON ({e}): {stdout}"));
    ps.as_array()
        .and_then(|agents| agents.iter().find(|a| a["address"] == address).cloned())
        .unwrap_or_else(|| panic!("no agent {address} in ps --json: {ps}"))
}

/// What a failing assertion should show: the agent's events (shortened),
/// its ps record, the end of its log, and the model server's stderr.
fn diagnostics(repo: &TestRepo, address: &str, mock: &MockLlm) -> String {
    let mut text = String::from("--- events:\n");
    let mut command = repo.command();
    command.args(["events", "--agent", address]);
    let out = run_deadline(command, PATIENCE, "corral events (diagnostics)");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let cut = line.char_indices().nth(400).map_or(line.len(), |(i, _)| i);
        text.push_str(&line[..cut]);
        text.push('\n');
    }
    let mut command = repo.command();
    command.args(["ps", "--all", "--json"]);
    let ps = run_deadline(command, PATIENCE, "corral ps (diagnostics)");
    if let Ok(agents) = serde_json::from_slice::<Value>(&ps.stdout) {
        if let Some(agent) = agents.as_array().and_then(|a| a.iter().find(|a| a["address"] == address)) {
            text.push_str(&format!("--- ps record: {agent}\n"));
            if let Some(id) = agent["id"].as_u64() {
                let log = repo.log_by_id(id);
                let tail = &log[log.len().saturating_sub(4000)..];
                text.push_str(&format!(
                    "--- output.log ({} bytes), tail:\n{}\n",
                    log.len(),
                    String::from_utf8_lossy(tail)
                ));
            }
        }
    }
    text.push_str(&format!("--- mock-llm stderr:\n{}\n", mock.stderr()));
    text
}

// ---------------------------------------------------------------------------
// The model server: `corral mock-llm` as a subprocess

/// A running `corral mock-llm --script FILE --record FILE`, killed on drop.
struct MockLlm {
    child: Child,
    url: String,
    record: PathBuf,
    stderr_path: PathBuf,
}

impl MockLlm {
    fn start(repo: &TestRepo, label: &str, script: &Value) -> MockLlm {
        let script_path = repo.path(&format!("{label}-script.json"));
        let record = repo.path(&format!("{label}-requests.jsonl"));
        let stderr_path = repo.path(&format!("{label}-mock-stderr.txt"));
        std::fs::write(&script_path, serde_json::to_vec_pretty(script).unwrap()).unwrap();
        // repo.command() puts CORRAL_TEST_ID in its environment, so the
        // repository's cleanup kills it too should this guard not run.
        let mut command = repo.command();
        command
            .arg("mock-llm")
            .arg("--script")
            .arg(&script_path)
            .arg("--record")
            .arg(&record)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap());
        let mut child = command.spawn().expect("corral mock-llm starts");
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = sender.send(line);
            // Keep draining so the server never blocks on a full pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let mut guard = MockLlm { child, url: String::new(), record, stderr_path };
        let first = lines.recv_timeout(PATIENCE).unwrap_or_default();
        let prefix = "mock-llm listening on ";
        let Some(url) = first.trim_end().strip_prefix(prefix) else {
            let status = guard.child.try_wait().ok().flatten();
            panic!(
                "`corral mock-llm` did not print {prefix:?} first; it printed {first:?} (exit {status:?}); stderr:\n{}",
                guard.stderr()
            );
        };
        assert!(url.starts_with("http://127.0.0.1:"), "mock-llm must listen on loopback: {url}");
        guard.url = url.to_string();
        guard
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The `--record` file: one JSON object a line, written as each request
    /// arrives and before it is answered.
    fn recorded(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("record line is not JSON ({e}): {l}")))
            .collect()
    }
}

impl Drop for MockLlm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request that asks a model for an answer (not `count_tokens` and such).
fn is_model_request(request: &Value) -> bool {
    let path = request["path"].as_str().unwrap_or("");
    let path = path.split('?').next().unwrap_or("");
    request["method"] == "POST" && path.ends_with("/messages")
}

fn claude_env(repo: &TestRepo, mock: &MockLlm) -> Vec<(&'static str, OsString)> {
    let home = repo.path("home");
    std::fs::create_dir_all(&home).unwrap();
    vec![
        ("CORRAL_CLAUDE_BIN", claude_bin().into_os_string()),
        ("ANTHROPIC_BASE_URL", mock.url.clone().into()),
        ("ANTHROPIC_API_KEY", "mock-key".into()),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".into()),
        ("HOME", home.into_os_string()),
    ]
}

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
    let why = || diagnostics(&repo, &address, &mock);
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
    let model: Vec<&Value> = recorded.iter().filter(|r| is_model_request(r)).collect();
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
