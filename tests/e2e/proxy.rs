//! The metering proxy end to end: real Claude Code, Codex, Gemini CLI,
//! opencode and Aider under corral against corral's scripted model server
//! (`corral mock-llm`), with the proxy in each agent's monitor between
//! them (`--meter proxy`, the default for all five), and a plain command
//! that honours a base-URL variable.
//!
//! What must hold: the agent never holds the real key (no process of its
//! tree has it in `/proc/PID/environ`, and no file in the state folder has
//! it); its tokens are the script's, one `model_call` event a call; a call
//! over budget never reaches the model server, and the agent stops as for
//! any budget (`budget_exceeded`, `corral wait` exits 23).

use std::ffi::OsString;

use corral_e2e::real_cli::{
    aider_env, claude_env, codex_bin, codex_mock_provider, describe, diagnostics, events, files_holding, gemini_bin,
    gemini_env, model_requests, of_type, opencode_env, ps_record, run_deadline, spawn_harness, MockLlm, AIDER_MODEL,
    OPENCODE_MODEL, RUN_DEADLINE,
};
use corral_e2e::{poll_until, sigkill, TestRepo, PATIENCE};
use serde_json::{json, Value};

const REAL_KEY: &str = "sk-real-key-that-must-stay-with-corral-7f3a";

fn spawn(repo: &TestRepo, args: &[&str], env: &[(&str, OsString)]) -> Value {
    let mut command = repo.command();
    // `--json` before a plain command's `--`.
    let split = args.iter().position(|a| *a == "--").unwrap_or(args.len());
    command.arg("spawn").args(&args[..split]).arg("--json").args(&args[split..]);
    for (key, value) in env {
        command.env(key, value);
    }
    let out = run_deadline(command, PATIENCE, "corral spawn");
    assert!(out.status.success(), "corral spawn {args:?} failed: {}", describe(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("spawn printed no JSON ({e}): {}", describe(&out)))
}

fn wait_code(repo: &TestRepo, address: &str) -> Option<i32> {
    let timeout = RUN_DEADLINE.as_secs().to_string();
    let mut command = repo.command();
    command.args(["wait", address, "--timeout", &timeout]);
    run_deadline(command, RUN_DEADLINE + PATIENCE, &format!("corral wait {address}")).status.code()
}

fn environ(pid: u32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default()).replace('\0', "\n")
}

/// The `model_call` events' usage, summed field by field.
fn call_totals(events: &[Value]) -> (u64, u64, u64, u64, usize) {
    let calls: Vec<&Value> = of_type(events, "model_call").into_iter().filter(|c| c["refused"].is_null()).collect();
    let sum = |f: &str| calls.iter().map(|c| c["usage"][f].as_u64().unwrap_or(0)).sum::<u64>();
    (sum("input"), sum("output"), sum("cache_read"), sum("cache_write"), calls.len())
}

#[test]
fn real_claude_through_the_proxy_is_counted_from_the_wire_and_never_holds_the_key() {
    let repo = TestRepo::new();
    let target = repo.worktree_of("keyless").join("hello.txt");
    let steps = json!([
        // The first answer waits, so the agent's processes can be read.
        {"tool": {"name": "Write", "input": {"file_path": target.display().to_string(), "content": "hi\n"}},
         "usage": {"input": 120, "output": 30, "cache_read": 1000, "cache_write": 50}, "delay_ms": 1500},
        {"text": "Wrote hello.txt.", "usage": {"input": 160, "output": 8, "cache_read": 1100}},
    ]);
    let mock = MockLlm::start(&repo, "keyless", &json!({"steps": steps}));
    let mut env = claude_env(&repo, &mock);
    env.retain(|(k, _)| *k != "ANTHROPIC_API_KEY");
    env.push(("ANTHROPIC_API_KEY", REAL_KEY.into()));
    env.push(("A_COPY_OF_THE_KEY", REAL_KEY.into()));
    let spawned = spawn(&repo, &["keyless", "--harness", "claude", "--task", "write hello.txt"], &env);
    let address = spawned["address"].as_str().unwrap().to_string();
    let why = || diagnostics(&repo, &address, Some(&mock));

    // While it runs: every process of its tree is free of the real key,
    // holds its own token, and is pointed at its proxy, not the server.
    poll_until("the agent's first model call", PATIENCE, || !model_requests(&mock.requests()).is_empty());
    let processes = repo.agent_processes(&address);
    assert!(!processes.is_empty(), "no process of {address} found\n{}", why());
    for pid in &processes {
        let env = environ(*pid);
        assert!(!env.contains(REAL_KEY), "process {pid} of {address} holds the real key:\n{env}");
        assert!(!env.contains(&mock.url), "process {pid} is pointed at the model server itself:\n{env}");
    }
    // The CLI itself holds its token (its tools' shells may not inherit it).
    let with_token = processes.iter().filter(|p| environ(**p).contains("ANTHROPIC_API_KEY=corral-")).count();
    assert!(with_token > 0, "no process of {address} holds its corral token\n{}", why());

    assert_eq!(wait_code(&repo, &address), Some(0), "{}", why());
    assert_eq!(std::fs::read_to_string(&target).unwrap_or_default(), "hi\n", "{}", why());
    let record = ps_record(&repo, &address);
    assert_eq!(record["meter"], "proxy", "{record}");
    let events = events(&repo, &address);
    assert_eq!(of_type(&events, "spawned")[0]["meter"], "proxy");
    let (input, output, cache_read, cache_write, calls) = call_totals(&events);
    assert_eq!(calls, model_requests(&mock.requests()).len(), "one model_call a call\n{}", why());
    assert_eq!((input, output, cache_read, cache_write), (280, 38, 2100, 50), "the script's usage\n{}", why());
    let usage = &record["usage"];
    assert_eq!(
        (
            usage["input"].as_u64(),
            usage["output"].as_u64(),
            usage["cache_read"].as_u64(),
            usage["cache_write"].as_u64()
        ),
        (Some(280), Some(38), Some(2100), Some(50)),
        "ps counts the proxy's figures, once: {record}"
    );
    let holding = files_holding(&repo.state_dir(), REAL_KEY);
    assert!(holding.is_empty(), "the real key was written to {holding:?}");
}

#[test]
fn a_codex_follow_up_that_starts_while_the_daemon_is_down_is_delivered_once() {
    // The message is handed to the monitor as `codex exec resume`; the
    // daemon is killed before that process starts, and the next daemon,
    // which never heard it start, hands it again.
    let repo = TestRepo::new();
    let steps = json!([
        {"text": "Nothing to change.", "usage": {"input": 70, "output": 4}, "delay_ms": 1500},
        {"text": "Still nothing.", "usage": {"input": 90, "output": 1}},
    ]);
    let mock = MockLlm::start(&repo, "codex-resume", &json!({"steps": steps}));
    let codex_home = tempfile::Builder::new().prefix("codex-home-").tempdir_in(repo.path("")).unwrap();
    let provider = codex_mock_provider(&mock);
    let mut command = repo.command();
    command
        .args(["spawn", "coder", "--harness", "codex", "--model", "gpt-mock", "--meter", "stream"])
        .args(["--task=-v: look around", "--json", "--", "-c", "model_provider=mock", "-c", &provider])
        .env("CORRAL_CODEX_BIN", codex_bin())
        .env("CODEX_HOME", codex_home.path())
        .env("MOCK_KEY", REAL_KEY);
    let out = run_deadline(command, PATIENCE, "corral spawn coder");
    assert!(out.status.success(), "{}", describe(&out));
    let address = "/root/coder";
    poll_until("codex's session id", PATIENCE, || ps_record(&repo, address)["session_id"].is_string());
    // A task and a message that start with `-` are prompts, not flags.
    repo.corral_ok(&["send", address, "--", "--look again"]);
    sigkill(repo.daemon_pid().expect("a daemon"));
    // The follow-up runs with no daemon: its model call reaches the server.
    poll_until("the follow-up's model call", PATIENCE, || model_requests(&mock.requests()).len() == 2);
    assert_eq!(wait_code(&repo, address), Some(0), "{}", diagnostics(&repo, address, Some(&mock)));
    let delivered = of_type(&events(&repo, address), "message_delivered").len();
    assert_eq!(delivered, 1, "{}", diagnostics(&repo, address, Some(&mock)));
    let record = ps_record(&repo, address);
    assert_eq!(record["pending_messages"], json!([]), "{record}");
}

#[test]
fn real_codex_and_its_follow_up_through_the_proxy_are_counted_from_the_wire_and_never_hold_the_key() {
    let repo = TestRepo::new();
    let steps = json!([
        {"text": "Nothing to change.", "usage": {"input": 700, "output": 40, "cache_read": 200}, "delay_ms": 1500},
        {"text": "Still nothing.", "usage": {"input": 900, "output": 10, "cache_read": 100}},
    ]);
    let mock = MockLlm::start(&repo, "codex-keyless", &json!({"steps": steps}));
    let codex_home = tempfile::Builder::new().prefix("codex-home-").tempdir_in(repo.path("")).unwrap();
    let provider = codex_mock_provider(&mock);
    let env = [
        ("CORRAL_CODEX_BIN", codex_bin().into_os_string()),
        ("CODEX_HOME", codex_home.path().as_os_str().to_owned()),
        ("MOCK_KEY", REAL_KEY.into()),
    ];
    let args = ["coder", "--harness", "codex", "--model", "gpt-mock", "--task", "look around", "--"];
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-c", "model_provider=mock", "-c", &provider]);
    let mut command = repo.command();
    command.arg("spawn").args(&all[..7]).arg("--json").args(&all[7..]);
    for (key, value) in &env {
        command.env(key, value);
    }
    let out = run_deadline(command, PATIENCE, "corral spawn coder");
    assert!(out.status.success(), "{}", describe(&out));
    let address = "/root/coder".to_string();
    let why = || diagnostics(&repo, &address, Some(&mock));
    poll_until("codex's first model call", PATIENCE, || !model_requests(&mock.requests()).is_empty());
    for pid in repo.agent_processes(&address) {
        let env = environ(pid);
        assert!(!env.contains(REAL_KEY), "process {pid} of {address} holds the real key:\n{env}");
    }
    // A message becomes `codex exec resume`, a new process: it goes
    // through the same proxy.
    poll_until("codex's session id", PATIENCE, || ps_record(&repo, &address)["session_id"].is_string());
    repo.corral_ok(&["send", &address, "look again"]);
    assert_eq!(wait_code(&repo, &address), Some(0), "{}", why());
    let events = events(&repo, &address);
    let (input, output, cache_read, _, calls) = call_totals(&events);
    assert_eq!(calls, 2, "{}", why());
    assert_eq!(model_requests(&mock.requests()).len(), 2, "{}", why());
    // OpenAI's input_tokens include the cached ones.
    assert_eq!((input, output, cache_read), (500 + 800, 50, 300), "{}", why());
    let holding = files_holding(&repo.state_dir(), REAL_KEY);
    assert!(holding.is_empty(), "the real key was written to {holding:?}");
}

#[test]
fn a_runaway_claude_gets_no_call_upstream_after_its_budget_is_spent() {
    const LIMIT: u64 = 5000;
    let repo = TestRepo::new();
    let step = json!({"shell": "true", "usage": {"input": 20, "output": 300, "cache_read": 600, "cache_write": 130},
                      "repeat": "forever"});
    let mock = MockLlm::start(&repo, "runaway-proxy", &json!({"steps": [step]}));
    let limit = LIMIT.to_string();
    let args =
        ["runaway", "--harness", "claude", "--max-tokens", &limit, "--grace", "0", "--task", "run true for ever"];
    let spawned = spawn(&repo, &args, &claude_env(&repo, &mock));
    let address = spawned["address"].as_str().unwrap().to_string();
    let why = || diagnostics(&repo, &address, Some(&mock));
    assert_eq!(wait_code(&repo, &address), Some(23), "{}", why());

    let events = events(&repo, &address);
    let calls = of_type(&events, "model_call");
    let sent: Vec<&&Value> = calls.iter().filter(|c| c["refused"].is_null()).collect();
    let upstream = model_requests(&mock.requests()).len();
    assert_eq!(upstream, sent.len(), "every call upstream was admitted and metered\n{}", why());
    // Calls were sent only while the budget had tokens left: the spend
    // before the last sent call was under the limit.
    let charged: Vec<u64> = sent
        .iter()
        .map(|c| ["input", "output", "cache_read", "cache_write"].iter().map(|f| c["usage"][f].as_u64().unwrap()).sum())
        .collect();
    let total: u64 = charged.iter().sum();
    let before_last = total - charged.last().copied().unwrap_or(0);
    assert!(before_last < LIMIT, "a call went upstream after the budget was spent: {charged:?}\n{}", why());
    let record = ps_record(&repo, &address);
    assert_eq!(record["state"], "budget_exceeded", "{record}");
    let overshoot = total.saturating_sub(LIMIT);
    let after_crossing = charged.iter().scan(0, |sum, c| {
        let before = *sum;
        *sum += c;
        Some(before >= LIMIT)
    });
    assert_eq!(after_crossing.filter(|x| *x).count(), 0);
    // The crossing call went with its output capped to what was left.
    let capped = sent.last().and_then(|c| c["output_cap"].as_u64());
    println!(
        "runaway through the proxy: {} calls upstream, {total} tokens on a {LIMIT}-token budget: overshoot {overshoot} \
         tokens, 0 calls after the crossing; the last call went with max_tokens {capped:?}; refused: {}",
        sent.len(),
        calls.len() - sent.len()
    );
}

/// A small HTTP client (python3) that makes `calls` Anthropic calls (0:
/// until one is refused) to `$ANTHROPIC_BASE_URL` with `$ANTHROPIC_API_KEY`,
/// printing each status.
fn client_script(repo: &TestRepo, name: &str, calls: u32) -> String {
    client_script_after(repo, name, calls, None)
}

/// [`client_script`] that makes its first call only once the file `go`
/// exists, when one is given.
fn client_script_after(repo: &TestRepo, name: &str, calls: u32, go: Option<&std::path::Path>) -> String {
    let path = repo.path(&format!("{name}.py"));
    let wait = go.map_or(String::new(), |go| {
        format!("while not os.path.exists({:?}):\n    time.sleep(0.02)\n", go.display().to_string())
    });
    std::fs::write(
        &path,
        format!(
            r#"import json, os, time, urllib.request, urllib.error
{wait}i = 0
while {calls} == 0 or i < {calls}:
    body = json.dumps({{"model": "m", "max_tokens": 1000, "messages": [{{"role": "user", "content": "hi"}}]}}).encode()
    req = urllib.request.Request(os.environ["ANTHROPIC_BASE_URL"] + "/v1/messages", data=body,
        headers={{"x-api-key": os.environ["ANTHROPIC_API_KEY"], "content-type": "application/json"}})
    try:
        with urllib.request.urlopen(req) as r:
            r.read()
            print("call", i, r.status, flush=True)
    except urllib.error.HTTPError as e:
        print("call", i, e.code, json.loads(e.read())["error"]["type"], flush=True)
        break
    i += 1
"#
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// Spawns `name`, metered by the proxy, running the Python `client`
/// against `mock` with a real-looking key; returns its address.
fn spawn_client(repo: &TestRepo, mock: &MockLlm, name: &str, client: &str) -> String {
    let env = [("ANTHROPIC_BASE_URL", OsString::from(&mock.url)), ("ANTHROPIC_API_KEY", REAL_KEY.into())];
    let spawned = spawn(repo, &[name, "--meter", "proxy", "--", "python3", client], &env);
    spawned["address"].as_str().unwrap().to_string()
}

/// An agent `name` whose one call (max_tokens 1000) is upstream and
/// answered only after a minute: the model server, its address and its
/// monitor's pid.
fn slow_call_upstream(repo: &TestRepo, name: &str) -> (MockLlm, String, u32) {
    let mock = MockLlm::start(
        repo,
        name,
        &json!({"steps": [{"text": "slow", "usage": {"input": 100, "output": 10}, "delay_ms": 60000}]}),
    );
    let client = client_script(repo, "one", 1);
    let address = spawn_client(repo, &mock, name, &client);
    let monitor = ps_record(repo, &address)["monitor_pid"].as_u64().expect("a monitor pid") as u32;
    poll_until("the call upstream", PATIENCE, || model_requests(&mock.requests()).len() == 1);
    (mock, address, monitor)
}

/// Whether the agent has ended (whatever its end).
fn ended(repo: &TestRepo, address: &str) -> bool {
    let state = ps_record(repo, address)["state"].clone();
    !["running", "starting", "pending"].contains(&state.as_str().unwrap_or(""))
}

fn charged(call: &Value) -> u64 {
    ["input", "output", "cache_read", "cache_write"].iter().map(|f| call["usage"][f].as_u64().unwrap_or(0)).sum()
}

#[test]
fn five_agents_calling_at_once_under_one_subtree_budget_stay_within_it() {
    const LIMIT: u64 = 3000;
    let repo = TestRepo::new();
    let mock = MockLlm::start(
        &repo,
        "five",
        &json!({"steps": [{"text": "ok", "usage": {"input": 300, "output": 100}, "repeat": "forever"}]}),
    );
    let bin = corral_e2e::corral_bin().display().to_string();
    let limit = LIMIT.to_string();
    repo.corral_ok(&["spawn", "boss", "--max-tokens", &limit, "--grace", "0", "--", &bin, "fake-agent", "hang"]);
    let client = client_script(&repo, "forever", 0);
    let env = [("ANTHROPIC_BASE_URL", OsString::from(&mock.url)), ("ANTHROPIC_API_KEY", REAL_KEY.into())];
    for i in 0..5 {
        let name = format!("c{i}");
        let args = [&name, "--parent", "/root/boss", "--meter", "proxy", "--grace", "0", "--", "python3", &client];
        spawn(&repo, &args, &env);
    }
    assert_eq!(wait_code(&repo, "/root/boss"), Some(23), "{}", diagnostics(&repo, "/root/boss", Some(&mock)));
    // Each child's calls are journaled before its end: once all have
    // ended, every call is there, including one whose agent was stopped
    // while it was upstream.
    for i in 0..5 {
        let child = format!("/root/boss/c{i}");
        wait_code(&repo, &child);
        assert!(ended(&repo, &child), "{child} is {}", ps_record(&repo, &child)["state"]);
    }

    let mut sent = Vec::new();
    for i in 0..5 {
        let events = events(&repo, &format!("/root/boss/c{i}"));
        sent.extend(of_type(&events, "model_call").into_iter().filter(|c| c["refused"].is_null()).cloned());
    }
    let upstream = model_requests(&mock.requests()).len();
    assert_eq!(upstream, sent.len(), "every call upstream was admitted and metered");
    let total: u64 = sent.iter().map(charged).sum();
    // The mock server does not honour max_tokens, so a call's output may
    // pass its cap: at most one call's input and output over.
    assert!(total <= LIMIT + 400, "the subtree spent {total} of {LIMIT}: {sent:?}");
    let boss = ps_record(&repo, "/root/boss");
    assert_eq!(boss["state"], "budget_exceeded", "{boss}");
    println!(
        "five agents under a {LIMIT}-token subtree budget: {} calls upstream, {total} tokens (overshoot {})",
        sent.len(),
        total.saturating_sub(LIMIT)
    );
}

#[test]
fn a_daemon_killed_mid_call_loses_no_call_and_lets_none_through_unmetered() {
    let repo = TestRepo::new();
    let mock = MockLlm::start(
        &repo,
        "sigkill",
        &json!({"steps": [
            {"text": "slow", "usage": {"input": 100, "output": 10}, "delay_ms": 2000},
            {"text": "ok", "usage": {"input": 200, "output": 20}, "repeat": "forever"},
        ]}),
    );
    let client = client_script(&repo, "three", 3);
    let address = spawn_client(&repo, &mock, "three", &client);
    let id = ps_record(&repo, &address)["id"].as_u64().unwrap();
    let calls_file = repo.state_dir().join(format!("agents/{id}/calls.jsonl"));
    poll_until("the first call upstream", PATIENCE, || model_requests(&mock.requests()).len() == 1);

    // The daemon dies while the first call streams; the call ends, its
    // record is kept by the monitor, and the next call waits for a daemon.
    repo.kill_daemon();
    poll_until("the first call's record", PATIENCE, || {
        std::fs::read_to_string(&calls_file).unwrap_or_default().lines().count() == 1
    });
    assert_eq!(model_requests(&mock.requests()).len(), 1, "a call went upstream with no daemon to admit it");

    // A new daemon adopts the agent: the call made meanwhile reaches the
    // journal once, the waiting call is admitted, and the run completes.
    repo.corral_ok(&["ps"]);
    assert_eq!(wait_code(&repo, &address), Some(0), "{}", diagnostics(&repo, &address, Some(&mock)));
    let events = events(&repo, &address);
    let calls = of_type(&events, "model_call");
    let numbers: Vec<u64> = calls.iter().map(|c| c["call"].as_u64().unwrap()).collect();
    assert_eq!(numbers, vec![1, 2, 3], "each call journaled once: {calls:?}");
    assert_eq!(calls.iter().map(|c| charged(c)).collect::<Vec<_>>(), vec![110, 220, 220]);
    assert_eq!(model_requests(&mock.requests()).len(), 3);
    let record = ps_record(&repo, &address);
    assert_eq!(record["usage"]["input"].as_u64(), Some(500), "{record}");
}

#[test]
fn two_calls_at_once_that_end_out_of_order_are_both_journaled_once_across_a_daemon_restart() {
    let repo = TestRepo::new();
    let mock = MockLlm::start(
        &repo,
        "overlap",
        &json!({"steps": [
            {"text": "slow", "usage": {"input": 100, "output": 10}, "delay_ms": 5000},
            {"text": "quick", "usage": {"input": 200, "output": 20}, "repeat": "forever"},
        ]}),
    );
    // The agent starts a slow call, then (once the test says the slow one
    // is upstream) a quick one beside it, and exits when told.
    let (go, done) = (repo.path("go"), repo.path("done"));
    let client = repo.path("overlap.py");
    std::fs::write(
        &client,
        format!(
            r#"import json, os, threading, time, urllib.request
def call():
    body = json.dumps({{"model": "m", "max_tokens": 100, "messages": [{{"role": "user", "content": "hi"}}]}}).encode()
    req = urllib.request.Request(os.environ["ANTHROPIC_BASE_URL"] + "/v1/messages", data=body,
        headers={{"x-api-key": os.environ["ANTHROPIC_API_KEY"], "content-type": "application/json"}})
    with urllib.request.urlopen(req) as r:
        r.read()
def wait_for(path):
    while not os.path.exists(path):
        time.sleep(0.01)
slow = threading.Thread(target=call)
slow.start()
wait_for({go:?})
call()
slow.join()
wait_for({done:?})
"#
        ),
    )
    .unwrap();
    let env = [("ANTHROPIC_BASE_URL", OsString::from(&mock.url)), ("ANTHROPIC_API_KEY", REAL_KEY.into())];
    let client = client.display().to_string();
    let spawned = spawn(&repo, &["overlap", "--meter", "proxy", "--", "python3", &client], &env);
    let address = spawned["address"].as_str().unwrap().to_string();
    poll_until("the slow call upstream", PATIENCE, || model_requests(&mock.requests()).len() == 1);
    std::fs::write(&go, "").unwrap();
    // The quick call (the second) ends first, then the slow one.
    let journaled = || {
        let numbers: Vec<u64> =
            of_type(&events(&repo, &address), "model_call").iter().map(|c| c["call"].as_u64().unwrap()).collect();
        numbers
    };
    poll_until("both calls journaled", PATIENCE, || journaled().len() >= 2);
    assert_eq!(journaled(), vec![2, 1], "each call journaled once, in the order they ended");

    // A new daemon is told both calls again and journals neither twice.
    repo.kill_daemon();
    std::fs::write(&done, "").unwrap();
    assert_eq!(wait_code(&repo, &address), Some(0), "{}", diagnostics(&repo, &address, Some(&mock)));
    let events = events(&repo, &address);
    let calls = of_type(&events, "model_call");
    assert_eq!(calls.iter().map(|c| charged(c)).collect::<Vec<_>>(), vec![220, 110], "{calls:?}");
    let record = ps_record(&repo, &address);
    assert_eq!(record["usage"]["input"].as_u64(), Some(300), "{record}");
}

#[test]
fn a_call_recorded_while_no_daemon_listened_is_journaled_after_its_agent_ended() {
    let repo = TestRepo::new();
    let mock = MockLlm::start(
        &repo,
        "unheard",
        &json!({"steps": [{"text": "slow", "usage": {"input": 100, "output": 10}, "delay_ms": 2000}]}),
    );
    let client = client_script(&repo, "one", 1);
    let address = spawn_client(&repo, &mock, "one", &client);
    let monitor = ps_record(&repo, &address)["monitor_pid"].as_u64().expect("a monitor pid") as u32;
    poll_until("the call upstream", PATIENCE, || model_requests(&mock.requests()).len() == 1);
    // The daemon dies while the call is upstream; the call ends, the agent
    // exits and its monitor ends with no daemon to tell.
    repo.kill_daemon();
    poll_until("the monitor's end", PATIENCE, || !corral_e2e::alive(monitor));

    // The next daemon finds the agent ended, and its call in the calls file.
    assert_eq!(wait_code(&repo, &address), Some(0), "{}", diagnostics(&repo, &address, Some(&mock)));
    let events = events(&repo, &address);
    let calls = of_type(&events, "model_call");
    assert_eq!(calls.iter().map(|c| charged(c)).collect::<Vec<_>>(), vec![110], "{calls:?}");
    assert_eq!(ps_record(&repo, &address)["usage"]["input"].as_u64(), Some(100));
}

#[test]
fn a_monitor_killed_mid_call_leaves_the_call_charged_what_it_was_admitted_for() {
    let repo = TestRepo::new();
    let (_mock, address, monitor) = slow_call_upstream(&repo, "orphan");
    // The monitor dies with the call upstream: nobody will ever read its
    // answer, but the model server may charge for it all the same.
    sigkill(monitor);
    poll_until("the agent's end", PATIENCE, || ended(&repo, &address));
    let events = events(&repo, &address);
    let calls = of_type(&events, "model_call");
    assert_eq!(calls.len(), 1, "{calls:?}");
    let call = calls[0];
    // Charged its output cap (the request's max_tokens) and, as a first
    // call, its body's bytes as input.
    assert_eq!(call["usage"]["output"].as_u64(), Some(1000), "{call}");
    assert!(call["usage"]["input"].as_u64().unwrap() > 50, "{call}");
    assert!(call["flag"].as_str().unwrap().contains("monitor"), "{call}");
    let record = ps_record(&repo, &address);
    assert_eq!(record["usage"]["output"].as_u64(), Some(1000), "{record}");
}

#[test]
fn an_assigned_task_s_calls_are_journaled_beside_the_first_task_s() {
    let repo = TestRepo::new();
    let mock = MockLlm::start(
        &repo,
        "again",
        &json!({"steps": [{"text": "ok", "usage": {"input": 100, "output": 10}, "repeat": "forever"}]}),
    );
    // Two calls for the first task, three for the next.
    let client = client_script(&repo, "two", 2);
    let script = std::fs::read_to_string(&client).unwrap();
    let script = script.replace("i = 0\n", "i = 0\nif os.environ.get('CORRAL_TASK') == 'three':\n    i = -1\n");
    std::fs::write(&client, script).unwrap();
    let address = spawn_client(&repo, &mock, "again", &client);
    assert_eq!(wait_code(&repo, &address), Some(0), "{}", diagnostics(&repo, &address, Some(&mock)));
    // The next task is a new run, with a new monitor and proxy: its
    // calls count from 1 again, and are journaled all the same.
    repo.corral_ok(&["assign", &address, "three"]);
    assert_eq!(ps_record(&repo, &address)["task"], "three", "{}", diagnostics(&repo, &address, Some(&mock)));
    assert_eq!(wait_code(&repo, &address), Some(0), "{}", diagnostics(&repo, &address, Some(&mock)));
    assert_eq!(model_requests(&mock.requests()).len(), 5, "{}", diagnostics(&repo, &address, Some(&mock)));
    // A daemon restart tells nothing twice.
    repo.kill_daemon();
    repo.corral_ok(&["ps"]);
    let events = events(&repo, &address);
    let calls = of_type(&events, "model_call");
    let numbers: Vec<u64> = calls.iter().map(|c| c["call"].as_u64().unwrap()).collect();
    let kinds: Vec<String> = events
        .iter()
        .map(|e| format!("{} {}", e["task"].as_str().unwrap_or(""), e["type"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(numbers, vec![1, 2, 1, 2, 3], "{kinds:?}\n{}", diagnostics(&repo, &address, Some(&mock)));
    assert_eq!(ps_record(&repo, &address)["usage"]["input"].as_u64(), Some(500));
}

#[test]
fn a_call_admitted_before_a_daemon_restart_is_still_charged_when_its_monitor_dies() {
    let repo = TestRepo::new();
    let (_mock, address, monitor) = slow_call_upstream(&repo, "readmit");
    // The daemon that admitted the call dies; the next adopts the agent and
    // is told of the call under way.
    repo.kill_daemon();
    poll_until("the agent adopted", PATIENCE, || !of_type(&events(&repo, &address), "adopted").is_empty());
    // Then the monitor dies with the call still upstream.
    sigkill(monitor);
    poll_until("the agent's end", PATIENCE, || ended(&repo, &address));
    let events = events(&repo, &address);
    let calls = of_type(&events, "model_call");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["usage"]["output"].as_u64(), Some(1000), "{}", calls[0]);
    assert!(calls[0]["flag"].as_str().unwrap().contains("monitor"), "{}", calls[0]);
}

#[test]
fn a_call_admitted_by_a_daemon_that_died_is_charged_when_its_monitor_dies_before_the_next_daemon() {
    let repo = TestRepo::new();
    let (_mock, address, monitor) = slow_call_upstream(&repo, "unheard");
    // The daemon that admitted the call dies, and the monitor with it
    // before any daemon comes back: no daemon holds the admission, and the
    // call was never recorded.
    repo.kill_daemon();
    sigkill(monitor);
    poll_until("the agent's end", PATIENCE, || ended(&repo, &address));
    let journal = events(&repo, &address);
    let calls = of_type(&journal, "model_call");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["usage"]["output"].as_u64(), Some(1000), "{}", calls[0]);
    assert!(calls[0]["usage"]["input"].as_u64().unwrap() > 50, "{}", calls[0]);
    assert!(calls[0]["flag"].as_str().unwrap().contains("monitor"), "{}", calls[0]);
    assert_eq!(of_type(&journal, "exited")[0]["state"], "lost", "{journal:?}");
    // A daemon restart charges it no second time.
    repo.kill_daemon();
    repo.corral_ok(&["ps"]);
    assert_eq!(of_type(&events(&repo, &address), "model_call").len(), 1);
}

#[test]
fn a_call_whose_admission_cannot_be_kept_is_refused_and_never_sent() {
    let repo = TestRepo::new();
    let mock =
        MockLlm::start(&repo, "unkept", &json!({"steps": [{"text": "ok", "usage": {"input": 100, "output": 10}}]}));
    // The agent calls once the test says go.
    let go = repo.path("go");
    let client = client_script_after(&repo, "after-go", 1, Some(&go));
    let address = spawn_client(&repo, &mock, "unkept", &client);
    let dir = repo.state_dir().join(format!("agents/{}", repo.agent(&address)["id"]));
    let admitted = dir.join("admitted.jsonl");
    poll_until("the admissions file", PATIENCE, || admitted.is_file());
    // Where the admission goes, nothing can be appended.
    std::fs::remove_file(&admitted).unwrap();
    std::fs::create_dir(&admitted).unwrap();
    std::fs::write(&go, "").unwrap();
    poll_until("the agent's end", PATIENCE, || ended(&repo, &address));
    assert!(model_requests(&mock.requests()).is_empty(), "a call went upstream: {:?}", mock.requests());
    let log = String::from_utf8_lossy(&repo.log(&address)).to_string();
    assert!(log.contains("call 0 ") && !log.contains("call 0 200"), "the call was not refused: {log}");
    let journal = events(&repo, &address);
    let calls = of_type(&journal, "model_call");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(calls[0]["refused"].as_str().unwrap_or("").contains("admission could not be kept"), "{}", calls[0]);
    assert_eq!(charged(calls[0]), 0, "{}", calls[0]);
}

#[test]
fn under_network_model_a_metered_agent_reaches_its_proxy_and_nothing_else() {
    let repo = TestRepo::new();
    let mock =
        MockLlm::start(&repo, "model-net", &json!({"steps": [{"text": "ok", "usage": {"input": 5, "output": 5}}]}));
    let client = repo.path("net.py");
    std::fs::write(
        &client,
        format!(
            r#"import os, socket, subprocess, sys
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=5).close()
    print("direct ok", flush=True)
except OSError as e:
    print("direct refused", e.errno, flush=True)
subprocess.run([sys.executable, {calls:?}], check=False)
"#,
            port = mock.port(),
            calls = client_script(&repo, "one", 1),
        ),
    )
    .unwrap();
    let env = [("ANTHROPIC_BASE_URL", OsString::from(&mock.url)), ("ANTHROPIC_API_KEY", REAL_KEY.into())];
    let client = client.display().to_string();
    let args = ["netted", "--meter", "proxy", "--network", "model", "--", "python3", &client];
    let spawned = spawn(&repo, &args, &env);
    let address = spawned["address"].as_str().unwrap().to_string();
    assert_eq!(wait_code(&repo, &address), Some(0), "{}", diagnostics(&repo, &address, Some(&mock)));
    let log = String::from_utf8_lossy(&repo.log(&address)).to_string();
    assert!(log.contains("direct refused 13"), "the model server itself was reachable: {log}");
    assert!(log.contains("call 0 200"), "its proxy was not reachable: {log}");
    assert_eq!(call_totals(&events(&repo, &address)).4, 1);
}

#[test]
fn a_plain_command_honouring_a_base_url_is_metered_and_refused() {
    let repo = TestRepo::new();
    let mock = MockLlm::start(
        &repo,
        "plain",
        &json!({"steps": [{"text": "hello", "usage": {"input": 400, "output": 200}, "repeat": "forever"}]}),
    );
    // A small HTTP client: three Anthropic calls to $ANTHROPIC_BASE_URL with
    // $ANTHROPIC_API_KEY, each status printed; no token of its own.
    let client = repo.path("client.py");
    std::fs::write(
        &client,
        r#"import json, os, urllib.request, urllib.error
for i in range(3):
    body = json.dumps({"model": "m", "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = urllib.request.Request(os.environ["ANTHROPIC_BASE_URL"] + "/v1/messages", data=body,
        headers={"x-api-key": os.environ["ANTHROPIC_API_KEY"], "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            print("call", i, r.status, flush=True)
    except urllib.error.HTTPError as e:
        print("call", i, e.code, json.loads(e.read())["error"]["type"], flush=True)
print("key", os.environ.get("ANTHROPIC_API_KEY", "")[:7], flush=True)
"#,
    )
    .unwrap();
    let env = [("ANTHROPIC_BASE_URL", OsString::from(&mock.url)), ("ANTHROPIC_API_KEY", REAL_KEY.into())];
    let client = client.display().to_string();
    let args = ["plain", "--meter", "proxy", "--max-tokens", "1000", "--grace", "0", "--", "python3", &client];
    let spawned = spawn(&repo, &args, &env);
    let address = spawned["address"].as_str().unwrap().to_string();
    let why = || diagnostics(&repo, &address, Some(&mock));
    // The first call fits (600 of 1000); the second would not (its input
    // alone is estimated at 400 of the 400 left): refused with the
    // billing error that ends a turn, and nothing more goes upstream; the
    // budget is spent, and the agent stops for it.
    assert_eq!(wait_code(&repo, &address), Some(23), "{}", why());
    let log = String::from_utf8_lossy(&repo.log(&address)).to_string();
    assert!(log.contains("call 0 200"), "{log}\n{}", why());
    assert_eq!(model_requests(&mock.requests()).len(), 1, "{}", why());
    let events = events(&repo, &address);
    let (input, output, _, _, sent) = call_totals(&events);
    assert_eq!((input, output, sent), (400, 200, 1), "{}", why());
    let refused: Vec<&Value> =
        of_type(&events, "model_call").into_iter().filter(|c| c["refused"].is_string()).collect();
    assert!(!refused.is_empty(), "{}", why());
    assert_eq!(refused[0]["status"], 402, "{}", refused[0]);
    let exceeded = of_type(&events, "budget_exceeded");
    assert_eq!(exceeded.len(), 1, "{}", why());
    assert_eq!((exceeded[0]["kind"].as_str(), exceeded[0]["used"].as_f64()), (Some("tokens"), Some(600.0)));
}

// ---------------------------------------------------------------------------
// Gemini CLI, opencode and Aider through the proxy

/// `env` with its key variable `key` holding the real key instead.
fn with_real_key(mut env: Vec<(&'static str, OsString)>, key: &'static str) -> Vec<(&'static str, OsString)> {
    env.retain(|(k, _)| *k != key);
    env.push((key, REAL_KEY.into()));
    env.push(("A_COPY_OF_THE_KEY", REAL_KEY.into()));
    env
}

/// Spawns `harness` against `mock` (whose first answer waits), and checks
/// that while it runs no process of its tree holds the real key or the
/// server's address and the CLI holds its token (`token_mark`, how its
/// environment shows it); that it succeeds through its proxy; and that
/// its `model_call` events, one a request the server got, add up to
/// `expected` (input, output, cache read, cache write), as `ps` does.
#[allow(clippy::too_many_arguments)]
fn metered_through_the_proxy(
    repo: &TestRepo,
    mock: &MockLlm,
    name: &str,
    harness: &str,
    model: &str,
    env: &[(&str, OsString)],
    extra: &[&str],
    token_mark: &str,
    expected: (u64, u64, u64, u64),
) {
    let spawned = spawn_harness(repo, name, harness, Some(model), &format!("Create the file, {name}"), env, extra);
    let address = spawned["address"].as_str().unwrap().to_string();
    let why = || diagnostics(repo, &address, Some(mock));
    poll_until("the agent's first model call", PATIENCE, || !model_requests(&mock.requests()).is_empty());
    let processes = repo.agent_processes(&address);
    assert!(!processes.is_empty(), "no process of {address} found\n{}", why());
    for pid in &processes {
        let env = environ(*pid);
        assert!(!env.contains(REAL_KEY), "process {pid} of {address} holds the real key:\n{env}");
        assert!(!env.contains(&mock.url), "process {pid} is pointed at the model server itself:\n{env}");
    }
    let with_token = processes.iter().filter(|p| environ(**p).contains(token_mark)).count();
    assert!(with_token > 0, "no process of {address} holds its corral token ({token_mark})\n{}", why());

    assert_eq!(wait_code(repo, &address), Some(0), "{}", why());
    let record = ps_record(repo, &address);
    assert_eq!(record["state"], "succeeded", "{record}\n{}", why());
    assert_eq!(record["meter"], "proxy", "{record}");
    let events = events(repo, &address);
    assert_eq!(of_type(&events, "spawned")[0]["meter"], "proxy");
    let (input, output, cache_read, cache_write, calls) = call_totals(&events);
    assert_eq!(calls, model_requests(&mock.requests()).len(), "one model_call a call\n{}", why());
    assert_eq!((input, output, cache_read, cache_write), expected, "the script's usage, from the wire\n{}", why());
    let usage = &record["usage"];
    let ps = ["input", "output", "cache_read", "cache_write"].map(|f| usage[f].as_u64().unwrap_or(u64::MAX));
    assert_eq!(ps, [expected.0, expected.1, expected.2, expected.3], "ps counts the proxy's figures: {record}");
    let holding = files_holding(&repo.state_dir(), REAL_KEY);
    assert!(holding.is_empty(), "the real key was written to {holding:?}");
}

#[test]
fn real_gemini_through_the_proxy_is_counted_from_the_wire_and_never_holds_the_key() {
    let repo = TestRepo::new();
    let steps = json!([
        {"tool": {"name": "write_file", "input": {"file_path": "g.txt", "content": "g\n"}},
         "usage": {"input": 2000, "output": 20}, "delay_ms": 1500},
        {"text": "Wrote g.txt.", "usage": {"input": 2100, "output": 5, "cache_read": 1500, "reasoning": 3}},
    ]);
    let mock = MockLlm::start(&repo, "gemini-keyless", &json!({"steps": steps}));
    let env = with_real_key(gemini_env(&repo, &mock), "GEMINI_API_KEY");
    let extra = ["--approval-mode", "auto_edit"];
    // Gemini's prompt counts hold the cached tokens, corral's input does
    // not; the thinking is output: 2000 + 600 in, 20 + 5 + 3 out.
    let expected = (2600, 28, 1500, 0);
    let mark = "GEMINI_API_KEY=corral-";
    metered_through_the_proxy(&repo, &mock, "gem", "gemini", "gemini-2.5-flash", &env, &extra, mark, expected);
    assert_eq!(std::fs::read_to_string(repo.worktree_of("gem").join("g.txt")).unwrap_or_default(), "g\n");
}

#[test]
fn real_opencode_through_the_proxy_is_counted_from_the_wire_and_never_holds_the_key() {
    let repo = TestRepo::new();
    let steps = json!([
        {"tool": {"name": "write", "input": {"filePath": "o.txt", "content": "o\n"}},
         "usage": {"input": 3000, "output": 40}, "delay_ms": 1500},
        {"text": "Created o.txt.", "usage": {"input": 3100, "output": 6, "cache_read": 2900}},
    ]);
    let mock = MockLlm::start(&repo, "opencode-keyless", &json!({"steps": steps}));
    let mut env = opencode_env(&repo, &mock);
    // The person's provider reads its key from the environment, as
    // opencode's `{env:NAME}` lets it.
    let config_path = repo.path("opencode.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config["provider"]["mock"]["options"]["apiKey"] = json!("{env:MOCK_PROVIDER_KEY}");
    std::fs::write(&config_path, config.to_string()).unwrap();
    env.push(("MOCK_PROVIDER_KEY", REAL_KEY.into()));
    env.push(("A_COPY_OF_THE_KEY", REAL_KEY.into()));
    let mark = r#""apiKey":"corral-"#;
    let expected = (3000 + 200, 46, 2900, 0);
    metered_through_the_proxy(&repo, &mock, "oc", "opencode", OPENCODE_MODEL, &env, &[], mark, expected);
    assert_eq!(std::fs::read_to_string(repo.worktree_of("oc").join("o.txt")).unwrap_or_default(), "o\n");
}

#[test]
fn real_aider_through_the_proxy_is_counted_from_the_wire_and_never_holds_the_key() {
    let repo = TestRepo::new();
    let steps = json!([{"text": "a.txt\n```\na\n```\n", "usage": {"input": 600, "output": 40}, "delay_ms": 1500}]);
    let mock = MockLlm::start(&repo, "aider-keyless", &json!({"steps": steps}));
    let env = with_real_key(aider_env(&repo, &mock), "OPENAI_API_KEY");
    let mark = "OPENAI_API_KEY=corral-";
    metered_through_the_proxy(&repo, &mock, "aid", "aider", AIDER_MODEL, &env, &[], mark, (600, 40, 0, 0));
    assert_eq!(std::fs::read_to_string(repo.worktree_of("aid").join("a.txt")).unwrap_or_default(), "a\n");
}

#[test]
fn a_gemini_whose_settings_would_refuse_its_proxy_is_refused_at_spawn_with_the_way_out() {
    // Pointed at a base URL, Gemini CLI 0.61 picks its `gateway` auth and
    // then refuses it (exit 41) unless its settings pick API-key auth.
    let repo = TestRepo::new();
    let home = repo.path("bare-home");
    std::fs::create_dir_all(&home).unwrap();
    let mut command = repo.command();
    command.args(["spawn", "bare", "--harness", "gemini", "--model", "gemini-2.5-flash", "--task", "hi"]);
    command.env("CORRAL_GEMINI_BIN", gemini_bin()).env("HOME", &home).env("GEMINI_API_KEY", REAL_KEY);
    command.env_remove("GEMINI_CLI_HOME");
    let out = run_deadline(command, PATIENCE, "corral spawn bare");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a Gemini CLI that would fail its auth was spawned: {}", describe(&out));
    assert!(err.contains("selectedType") && err.contains("--meter stream"), "{err}");
    assert!(!err.contains(REAL_KEY), "{err}");
    assert!(repo.agent_processes("/root/bare").is_empty());
}

#[test]
fn under_a_cost_budget_a_call_for_a_model_with_no_price_is_refused_and_never_sent() {
    let repo = TestRepo::new();
    // A price for another model only: the client's model `m` has none.
    std::fs::write(repo.repo.join("corral.toml"), "[prices.\"other\"]\ninput = 3.0\noutput = 15.0\n").unwrap();
    let mock = MockLlm::start(
        &repo,
        "unpriced",
        &json!({"steps": [{"text": "ok", "usage": {"input": 300, "output": 100}, "repeat": "forever"}]}),
    );
    let client = client_script(&repo, "forever", 0);
    let env = [("ANTHROPIC_BASE_URL", OsString::from(&mock.url)), ("ANTHROPIC_API_KEY", REAL_KEY.into())];
    let args = ["spender", "--meter", "proxy", "--max-cost", "5", "--grace", "0", "--", "python3", &client];
    let address = spawn(&repo, &args, &env)["address"].as_str().unwrap().to_string();
    wait_code(&repo, &address);
    assert!(model_requests(&mock.requests()).is_empty(), "a call no price covers went upstream");
    let events = events(&repo, &address);
    let calls = of_type(&events, "model_call");
    assert_eq!(calls.len(), 1, "{calls:?}");
    let refused = calls[0]["refused"].as_str().unwrap_or_default();
    assert!(refused.contains("\"m\"") && refused.contains("[prices"), "{refused}");
    let log = repo.corral_ok(&["logs", &address]);
    assert!(log.contains("call 0 402 billing_error"), "{log}");
}
