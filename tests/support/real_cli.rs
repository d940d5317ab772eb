//! Running the real agent CLIs (Claude Code, Codex, Gemini CLI, opencode,
//! Aider) under corral against corral's own scripted model server: finding
//! the pinned binaries, the environment that points each at the server,
//! commands under a deadline, reading events, usage and `ps` records, and
//! the `corral mock-llm` subprocess guard. Used by tests/harness.rs,
//! tests/other_clis.rs, tests/budget_runaway.rs and tests/mcp.rs.
//!
//! The real binaries come from `CORRAL_CLAUDE_BIN`, `CORRAL_CODEX_BIN`,
//! `CORRAL_GEMINI_BIN`, `CORRAL_OPENCODE_BIN`, `CORRAL_AIDER_BIN`, else from
//! the cache folder `tests/install-agent-clis.sh` installs into (the same
//! rule as harness/tests/real_clis.rs). A missing binary FAILS the test:
//! these tests never pass by skipping.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{TestRepo, PATIENCE};

/// Versions checked; must match tests/install-agent-clis.sh.
pub const CLAUDE_PACKAGE_DIR: &str = "@anthropic-ai+claude-code@2.1.328";
pub const CODEX_PACKAGE_DIR: &str = "@openai+codex@0.169.0";
pub const GEMINI_PACKAGE_DIR: &str = "@google+gemini-cli@0.61.0";
pub const OPENCODE_PACKAGE_DIR: &str = "opencode-ai@1.18.33";
/// Aider's virtualenv folder in the cache (`venv/bin/aider` inside).
pub const AIDER_PACKAGE_DIR: &str = "aider-chat@0.86.2";

/// How long a real CLI run may take under corral on a loaded 2-core machine
/// (a few seconds when idle; these tests run in parallel with each other).
pub const RUN_DEADLINE: Duration = Duration::from_secs(240);

// ---------------------------------------------------------------------------
// Finding the real binaries (the same rule as harness/tests/real_clis.rs)

pub fn non_empty_env(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

pub fn agent_cli_cache() -> PathBuf {
    let root = non_empty_env("CORRAL_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| non_empty_env("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("corral")))
        .unwrap_or_else(|| PathBuf::from(non_empty_env("HOME").expect("HOME is set")).join(".cache").join("corral"));
    root.join("agent-clis")
}

pub fn agent_bin(env_var: &str, package_dir: &str, bin: &str) -> PathBuf {
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

pub fn claude_bin() -> PathBuf {
    agent_bin("CORRAL_CLAUDE_BIN", CLAUDE_PACKAGE_DIR, "claude")
}

pub fn codex_bin() -> PathBuf {
    agent_bin("CORRAL_CODEX_BIN", CODEX_PACKAGE_DIR, "codex")
}

pub fn gemini_bin() -> PathBuf {
    agent_bin("CORRAL_GEMINI_BIN", GEMINI_PACKAGE_DIR, "gemini")
}

pub fn opencode_bin() -> PathBuf {
    agent_bin("CORRAL_OPENCODE_BIN", OPENCODE_PACKAGE_DIR, "opencode")
}

pub fn aider_bin() -> PathBuf {
    agent_bin_in("CORRAL_AIDER_BIN", &Path::new(AIDER_PACKAGE_DIR).join("venv/bin"), "aider")
}

// ---------------------------------------------------------------------------
// Commands under a deadline

/// Runs `command` to its end, killing it and panicking when `timeout` runs
/// out first (a hung client or daemon must not hang the test).
pub fn run_deadline(mut command: Command, timeout: Duration, what: &str) -> Output {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = command.spawn().unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    wait_deadline(child, timeout, what)
}

/// Waits for `child` to end within `timeout`, reading its piped output
/// meanwhile (a pipe it was not given reads as nothing); kills it and
/// panics, showing its stderr, when it does not end.
pub fn wait_deadline(mut child: Child, timeout: Duration, what: &str) -> Output {
    fn reader(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    }
    let out_reader = reader(child.stdout.take());
    let err_reader = reader(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = String::from_utf8_lossy(&err_reader.join().unwrap()).into_owned();
            panic!("{what}: still running after {timeout:?}; killed\nstderr: {stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: out_reader.join().unwrap(), stderr: err_reader.join().unwrap() }
}

pub fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `corral ARGS` with a deadline; panics unless it exits 0; returns stdout.
pub fn corral_ok(repo: &TestRepo, args: &[&str]) -> String {
    let mut command = repo.command();
    command.args(args);
    let out = run_deadline(command, PATIENCE, &format!("corral {args:?}"));
    assert!(out.status.success(), "corral {args:?} failed: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn corral_json(repo: &TestRepo, args: &[&str]) -> Value {
    let stdout = corral_ok(repo, args);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("corral {args:?} printed no JSON ({e}): {stdout}"))
}

/// Every event of one agent, from `corral events --agent ADDRESS`.
pub fn events(repo: &TestRepo, address: &str) -> Vec<Value> {
    corral_ok(repo, &["events", "--agent", address])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON event ({e}): {l}")))
        .collect()
}

pub fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

/// The agent's record from `ps --json`, by address.
pub fn ps_record(repo: &TestRepo, address: &str) -> Value {
    let ps = corral_json(repo, &["ps", "--all", "--json"]);
    ps.as_array()
        .and_then(|agents| agents.iter().find(|a| a["address"] == address).cloned())
        .unwrap_or_else(|| panic!("no agent {address} in ps --json: {ps}"))
}

/// What a failing assertion should show: the agent's events, the end of
/// its log, and what the model server saw.
pub fn diagnostics(repo: &TestRepo, address: &str, mock: Option<&MockLlm>) -> String {
    let mut text = String::new();
    let mut command = repo.command();
    command.args(["events", "--agent", address]);
    let out = run_deadline(command, PATIENCE, "corral events (diagnostics)");
    text.push_str("--- events:\n");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut line = line.to_string();
        if line.len() > 600 {
            let mut cut = 600;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push_str("...");
        }
        text.push_str(&line);
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
    if let Some(mock) = mock {
        text.push_str(&format!("--- mock-llm stderr:\n{}\n", mock.stderr()));
    }
    text
}

// ---------------------------------------------------------------------------
// The agent's log and end, spawning under a harness, and usage figures

pub fn output_log(repo: &TestRepo, address: &str) -> (PathBuf, Vec<u8>) {
    let id = ps_record(repo, address)["id"].as_u64().expect("an agent id in ps --json");
    let path = repo.state_dir().join(format!("agents/{id}/output.log"));
    let bytes = std::fs::read(&path).unwrap_or_default();
    (path, bytes)
}

/// Waits for the agent to end (`corral wait` under a deadline) and returns
/// its `ps --json` record.
pub fn wait_end(repo: &TestRepo, address: &str, mock: Option<&MockLlm>) -> Value {
    let timeout = RUN_DEADLINE.as_secs().to_string();
    let mut command = repo.command();
    command.args(["wait", address, "--timeout", &timeout]);
    let out = run_deadline(command, RUN_DEADLINE + PATIENCE, &format!("corral wait {address}"));
    assert_ne!(
        out.status.code(),
        Some(124),
        "{address} did not end within {RUN_DEADLINE:?}\n{}",
        diagnostics(repo, address, mock)
    );
    ps_record(repo, address)
}

/// `corral spawn NAME --harness H [--model M] --task TASK --json [-- EXTRA]`
/// with extra environment; returns the spawn's JSON.
pub fn spawn_harness(
    repo: &TestRepo,
    name: &str,
    harness: &str,
    model: Option<&str>,
    task: &str,
    env: &[(&str, OsString)],
    extra: &[&str],
) -> Value {
    let mut command = repo.command();
    command.args(["spawn", name, "--harness", harness]);
    if let Some(model) = model {
        command.args(["--model", model]);
    }
    // One word: a task that starts with `-` is not read as a flag.
    command.arg(format!("--task={task}")).arg("--json");
    if !extra.is_empty() {
        command.arg("--").args(extra);
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let out = run_deadline(command, PATIENCE, &format!("corral spawn {name} --harness {harness}"));
    assert!(out.status.success(), "corral spawn {name} --harness {harness} failed: {}", describe(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("spawn printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

// ---------------------------------------------------------------------------
// Usage figures

pub type Figures = BTreeMap<String, u64>;

pub fn figures(input: u64, output: u64, cache_read: u64, cache_write: u64) -> Figures {
    [("input", input), ("output", output), ("cache_read", cache_read), ("cache_write", cache_write)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// The four token figures of a usage object; panics on a missing one.
pub fn figures_of(usage: &Value, what: &str) -> Figures {
    ["input", "output", "cache_read", "cache_write"]
        .into_iter()
        .map(|k| {
            let v = usage[k].as_u64().unwrap_or_else(|| panic!("{what}: no integer {k:?} in {usage}"));
            (k.to_string(), v)
        })
        .collect()
}

/// The script's figures summed over `steps` (a step answering n requests
/// counted n times is the caller's business).
pub fn script_sum(steps: &[&Value]) -> Figures {
    let mut sum = figures(0, 0, 0, 0);
    for step in steps {
        for key in ["input", "output", "cache_read", "cache_write"] {
            *sum.get_mut(key).unwrap() += step["usage"][key].as_u64().unwrap_or(0);
        }
    }
    sum
}

/// The JSON lines of a structured agent's log (raw PTY: lines end in `\n`).
pub fn json_lines(log: &[u8]) -> Vec<Value> {
    log.split(|&b| b == b'\n').filter_map(|line| serde_json::from_slice::<Value>(line.trim_ascii()).ok()).collect()
}

/// Checks the usage corral reports for a finished structured agent: the
/// `ps --json` record, the last `usage` event (settled), and
/// `corral usage --harness H <output.log> --json`; returns the ps cost.
pub fn assert_usage_everywhere(repo: &TestRepo, address: &str, harness: &str, expected: &Figures) -> Value {
    let why = || diagnostics(repo, address, None);
    let record = ps_record(repo, address);
    assert_eq!(record["harness"], harness, "ps --json record: {record}");
    assert_eq!(&figures_of(&record["usage"], "ps --json usage"), expected, "ps --json usage: {record}\n{}", why());
    assert!(record.as_object().is_some_and(|r| r.contains_key("cost_usd")), "ps --json has no cost_usd: {record}");

    let events = events(repo, address);
    let usage = of_type(&events, "usage");
    let last = usage.last().unwrap_or_else(|| panic!("no usage event for {address}\n{}", why()));
    assert_eq!(&figures_of(&last["total"], "last usage event's total"), expected, "last usage event: {last}");
    assert_eq!(last["settled"], true, "the last usage event must be settled: {last}");
    // The deltas add up to the total.
    let mut sum = figures(0, 0, 0, 0);
    for event in &usage {
        for (key, value) in figures_of(&event["delta"], "usage event's delta") {
            *sum.get_mut(&key).unwrap() += value;
        }
    }
    assert_eq!(&sum, expected, "the usage events' deltas do not add up to the total: {usage:?}");

    let (log_path, _) = output_log(repo, address);
    let log_arg = log_path.to_str().unwrap();
    let from_file = corral_json(repo, &["usage", "--harness", harness, log_arg, "--json"]);
    assert_eq!(
        &figures_of(&from_file, "corral usage --json"),
        expected,
        "corral usage --harness {harness} {log_arg} --json: {from_file}"
    );
    assert!(
        from_file.as_object().is_some_and(|r| r.contains_key("cost_usd")),
        "corral usage --json has no cost_usd: {from_file}"
    );
    match (record["cost_usd"].as_f64(), from_file["cost_usd"].as_f64()) {
        (Some(a), Some(b)) => assert!((a - b).abs() < 1e-9, "ps cost {a} != usage-file cost {b}"),
        (None, None) => {}
        (a, b) => panic!("ps cost_usd {a:?} and `corral usage` cost_usd {b:?} disagree"),
    }
    record["cost_usd"].clone()
}

/// Files named `name` anywhere under `dir` (symlinks not followed).
pub fn find_named(dir: &Path, name: &str, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_dir() {
            find_named(&path, name, found);
        } else if entry.file_name() == name {
            found.push(path);
        }
    }
}

// ---------------------------------------------------------------------------
// The model server: `corral mock-llm` as a subprocess

/// A running `corral mock-llm --script FILE --record FILE`, killed on drop.
pub struct MockLlm {
    child: Child,
    pub url: String,
    record: PathBuf,
    stderr_path: PathBuf,
}

impl MockLlm {
    pub fn start(repo: &TestRepo, label: &str, script: &Value) -> MockLlm {
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

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().trim_end_matches('/').parse().expect("a port in the URL")
    }

    /// `GET /_mock/requests`: every request so far, as recorded.
    pub fn requests(&self) -> Vec<Value> {
        let body = http_get(self.port(), "/_mock/requests");
        let value: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("/_mock/requests is not JSON ({e}): {}", String::from_utf8_lossy(&body)));
        value.as_array().cloned().unwrap_or_else(|| panic!("/_mock/requests is not an array: {value}"))
    }

    /// The `--record` file: one JSON object a line.
    pub fn recorded(&self) -> Vec<Value> {
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

/// The path of a recorded POST request, without its query.
fn post_path(request: &Value) -> Option<&str> {
    let path = request["path"].as_str().unwrap_or("");
    (request["method"] == "POST").then(|| path.split('?').next().unwrap_or(""))
}

/// A request that asks a model for an answer (not `count_tokens` and such):
/// Anthropic's `/messages`, OpenAI's `/responses` or `/chat/completions`,
/// Gemini's `:generateContent` or `:streamGenerateContent`.
pub fn is_model_request(request: &Value) -> bool {
    post_path(request).is_some_and(|path| {
        ["/messages", "/responses", "/chat/completions", ":generateContent", ":streamGenerateContent"]
            .iter()
            .any(|end| path.ends_with(end))
    })
}

/// A model request on Anthropic's `/messages` only (Claude Code's).
pub fn is_messages_request(request: &Value) -> bool {
    post_path(request).is_some_and(|path| path.ends_with("/messages"))
}

pub fn model_requests(requests: &[Value]) -> Vec<Value> {
    requests.iter().filter(|r| is_model_request(r)).cloned().collect()
}

/// A plain HTTP/1.1 GET on loopback; returns the body.
pub fn http_get(port: u16, path: &str) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to mock-llm");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read the answer");
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP header");
    let head = String::from_utf8_lossy(&response[..split]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "GET {path}: {head}");
    let body = response[split + 4..].to_vec();
    if !head.contains("transfer-encoding: chunked") {
        return body;
    }
    let mut out = Vec::new();
    let mut rest = &body[..];
    loop {
        let end = rest.windows(2).position(|w| w == b"\r\n").expect("a chunk size line");
        let size_text = String::from_utf8_lossy(&rest[..end]).to_string();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).expect("a chunk size");
        rest = &rest[end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// The environment that points the real Claude Code at `mock`, with a
/// scratch HOME of its own.
pub fn claude_env(repo: &TestRepo, mock: &MockLlm) -> Vec<(&'static str, OsString)> {
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

/// A scratch HOME for one test's CLI.
fn scratch_home(repo: &TestRepo) -> PathBuf {
    let home = repo.path("home");
    std::fs::create_dir_all(&home).unwrap();
    home
}

/// The environment that points the real Gemini CLI at `mock`
/// (docs/agents/gemini-cli.md §0): the base URL and key, and in a scratch
/// HOME the settings it needs with a base URL set (API-key auth; no usage
/// statistics, its only traffic besides the model's).
pub fn gemini_env(repo: &TestRepo, mock: &MockLlm) -> Vec<(&'static str, OsString)> {
    let home = scratch_home(repo);
    std::fs::create_dir_all(home.join(".gemini")).unwrap();
    let settings =
        r#"{"security": {"auth": {"selectedType": "gemini-api-key"}}, "privacy": {"usageStatisticsEnabled": false}}"#;
    std::fs::write(home.join(".gemini/settings.json"), settings).unwrap();
    vec![
        ("CORRAL_GEMINI_BIN", gemini_bin().into_os_string()),
        ("GOOGLE_GEMINI_BASE_URL", mock.url.clone().into()),
        ("GEMINI_API_KEY", "mock-key".into()),
        ("HOME", home.into_os_string()),
    ]
}

/// The model of the opencode provider [`opencode_env`] configures.
pub const OPENCODE_MODEL: &str = "mock/mock-coder";

/// The environment that points the real opencode at `mock` through its
/// openai-compatible provider (docs/agents/opencode-cli.md): a config file
/// with the provider's `baseURL`, no models catalogue or update check, and
/// a scratch HOME whose plugin folder is seeded so no npm install is tried.
pub fn opencode_env(repo: &TestRepo, mock: &MockLlm) -> Vec<(&'static str, OsString)> {
    let home = scratch_home(repo);
    let plugins = home.join(".config/opencode");
    std::fs::create_dir_all(plugins.join("node_modules")).unwrap();
    std::fs::write(plugins.join("package.json"), r#"{"dependencies":{"@opencode-ai/plugin":"1.18.33"}}"#).unwrap();
    std::fs::write(
        plugins.join("package-lock.json"),
        r#"{"lockfileVersion":3,"packages":{"":{"dependencies":{"@opencode-ai/plugin":"1.18.33"}}}}"#,
    )
    .unwrap();
    let config = serde_json::json!({
        "$schema": "https://opencode.ai/config.json",
        "autoupdate": false,
        "share": "disabled",
        "provider": {"mock": {
            "npm": "@ai-sdk/openai-compatible",
            "name": "Mock",
            "options": {"baseURL": format!("{}/v1", mock.url), "apiKey": "mock-key"},
            "models": {"mock-coder": {"name": "Mock Coder", "limit": {"context": 128000, "output": 4096}}},
        }},
    });
    let config_path = repo.path("opencode.json");
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    vec![
        ("CORRAL_OPENCODE_BIN", opencode_bin().into_os_string()),
        ("OPENCODE_CONFIG", config_path.into_os_string()),
        ("OPENCODE_DISABLE_MODELS_FETCH", "1".into()),
        ("OPENCODE_DISABLE_AUTOUPDATE", "1".into()),
        ("HOME", home.into_os_string()),
    ]
}

/// The model Aider is given (litellm's `openai/` provider).
pub const AIDER_MODEL: &str = "openai/gpt-mock";

/// The environment that points the real Aider at `mock`
/// (docs/agents/aider-cli.md): `OPENAI_API_BASE` and key, litellm's price
/// table from its own package rather than the network, a model metadata
/// file for the mock model (else Aider fetches one), a dumb terminal, and a
/// scratch HOME.
pub fn aider_env(repo: &TestRepo, mock: &MockLlm) -> Vec<(&'static str, OsString)> {
    let home = scratch_home(repo);
    let metadata = repo.path("aider-model-metadata.json");
    let entry = serde_json::json!({AIDER_MODEL: {
        "max_input_tokens": 128000, "max_output_tokens": 4096, "max_tokens": 4096,
        "input_cost_per_token": 0.000002, "output_cost_per_token": 0.00001,
        "litellm_provider": "openai", "mode": "chat",
    }});
    std::fs::write(&metadata, entry.to_string()).unwrap();
    vec![
        ("CORRAL_AIDER_BIN", aider_bin().into_os_string()),
        ("OPENAI_API_BASE", format!("{}/v1", mock.url).into()),
        ("OPENAI_API_KEY", "mock-key".into()),
        ("LITELLM_LOCAL_MODEL_COST_MAP", "True".into()),
        ("AIDER_MODEL_METADATA_FILE", metadata.into_os_string()),
        ("TERM", "dumb".into()),
        ("HOME", home.into_os_string()),
    ]
}

/// A folder outside /tmp for CODEX_HOME (Codex warns about one under
/// /tmp): in `target/tmp`, beside the binary under test.
pub fn codex_home() -> tempfile::TempDir {
    let bin = crate::corral_bin();
    let base = bin.parent().and_then(std::path::Path::parent).expect("target/<profile>/corral").join("tmp");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::Builder::new().prefix("codex-home-").tempdir_in(base).unwrap()
}

/// The `-c` value that makes Codex talk to `mock` as provider `mock`
/// (with `-c model_provider=mock`), its key in `MOCK_KEY`.
pub fn codex_mock_provider(mock: &MockLlm) -> String {
    format!(
        r#"model_providers.mock={{name="mock",base_url="{}/v1",wire_api="responses",env_key="MOCK_KEY"}}"#,
        mock.url
    )
}

/// Every file under `dir` that holds `needle`.
pub fn files_holding(dir: &std::path::Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_dir() {
            found.extend(files_holding(&path, needle));
        } else if kind.is_file()
            && std::fs::read(&path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        {
            found.push(path.display().to_string());
        }
    }
    found
}
