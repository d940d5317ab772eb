//! `on_exceeded = "pause"` end to end: a spent budget freezes the agent
//! instead of stopping it (its call held at the proxy, never sent; every
//! process of it stopped), `corral budget` raises it and the agent goes on
//! where it was, and a stop of a paused agent leaves no process.
//!
//! What must hold: while paused, the model server receives no call and
//! each process of the agent is in state T; after the raise the held call
//! goes on and the agent ends as it would have; `corral budget` refuses
//! what it cannot do with an exit code a script can read, and over MCP an
//! agent raises only the budgets below it.

use std::ffi::OsString;

use corral_e2e::real_cli::{
    claude_env, diagnostics, events, model_requests, of_type, ps_record, run_deadline, MockLlm,
};
use corral_e2e::{poll_until, TestRepo, PATIENCE};
use serde_json::{json, Value};

fn spawn(repo: &TestRepo, args: &[&str], env: &[(&str, OsString)]) -> String {
    let mut command = repo.command();
    let split = args.iter().position(|a| *a == "--").unwrap_or(args.len());
    command.arg("spawn").args(&args[..split]).arg("--json").args(&args[split..]);
    command.envs(env.iter().map(|(k, v)| (k, v)));
    let out = run_deadline(command, PATIENCE, "corral spawn");
    assert!(out.status.success(), "corral spawn {args:?} failed: {}", corral_e2e::real_cli::describe(&out));
    let spawned: Value = serde_json::from_slice(&out.stdout).expect("spawn prints JSON");
    spawned["address"].as_str().expect("an address").to_string()
}

fn corral(repo: &TestRepo, args: &[&str]) -> std::process::Output {
    let mut command = repo.command();
    command.args(args);
    run_deadline(command, PATIENCE, &format!("corral {args:?}"))
}

/// The agent's processes (its monitor left out), each with its state letter.
fn agent_states(repo: &TestRepo, address: &str) -> Vec<(u32, char)> {
    let monitor = ps_record(repo, address)["monitor_pid"].as_u64().map(|p| p as u32);
    repo.agent_processes(address)
        .into_iter()
        .filter(|pid| Some(*pid) != monitor)
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
            Some((pid, state))
        })
        .collect()
}

/// Paused and frozen: the `paused` event is journaled and every process
/// of the agent is stopped.
fn wait_frozen(repo: &TestRepo, address: &str, why: &dyn Fn() -> String) -> Vec<(u32, char)> {
    poll_until("the agent paused and frozen", PATIENCE, || {
        let states = agent_states(repo, address);
        ps_record(repo, address)["paused"].is_object() && !states.is_empty() && states.iter().all(|(_, s)| *s == 'T')
    });
    let states = agent_states(repo, address);
    assert!(states.iter().all(|(_, s)| *s == 'T'), "not all stopped: {states:?}\n{}", why());
    states
}

#[test]
fn a_paused_claude_holds_its_call_until_its_budget_is_raised_then_finishes_its_task() {
    let repo = TestRepo::new();
    let target = repo.worktree_of("pausing").join("hello.txt");
    // The first call spends 1700 of 2000 tokens; the second (about as
    // large) cannot fit: it is held and the agent paused. Raised, the
    // held call goes on: it writes the file, and the third call ends the task.
    let steps = json!([
        {"shell": "true", "usage": {"input": 100, "output": 50, "cache_read": 1500, "cache_write": 50}},
        {"tool": {"name": "Write", "input": {"file_path": target.display().to_string(), "content": "hi\n"}},
         "usage": {"input": 120, "output": 40, "cache_read": 1600}},
        {"text": "Wrote hello.txt.", "usage": {"input": 140, "output": 8, "cache_read": 1700}},
    ]);
    let mock = MockLlm::start(&repo, "pausing", &json!({"steps": steps}));
    let args = [
        "pausing",
        "--harness",
        "claude",
        "--max-tokens",
        "2000",
        "--on-exceeded",
        "pause",
        "--grace",
        "0",
        "--task",
        "run true, then write hello.txt",
    ];
    let address = spawn(&repo, &args, &claude_env(&repo, &mock));
    let why = || diagnostics(&repo, &address, Some(&mock));

    let frozen = wait_frozen(&repo, &address, &why);
    assert!(!frozen.is_empty());
    // Frozen: one call went upstream, the held one did not, and nothing
    // of the task after it happened.
    assert_eq!(model_requests(&mock.requests()).len(), 1, "{}", why());
    assert!(!target.exists(), "the agent went on while paused\n{}", why());
    let ps = String::from_utf8_lossy(&corral(&repo, &["ps"]).stdout).to_string();
    assert!(ps.lines().any(|l| l.contains("/root/pausing") && l.contains("paused")), "{ps}");
    let before = events(&repo, &address);
    let paused = of_type(&before, "paused");
    assert_eq!(paused.len(), 1, "{}", why());
    assert_eq!((paused[0]["kind"].as_str(), paused[0]["used"].as_f64()), (Some("tokens"), Some(1700.0)));
    assert_eq!(paused[0]["limit"].as_f64(), Some(2000.0));
    // Still none after the frozen state was seen: nothing runs to make one.
    assert_eq!(model_requests(&mock.requests()).len(), 1, "{}", why());

    let raising = std::time::Instant::now();
    let raised = corral(&repo, &["budget", &address, "--add-tokens", "20000"]);
    assert!(raised.status.success(), "corral budget failed: {}", corral_e2e::real_cli::describe(&raised));
    let code = {
        let mut command = repo.command();
        command.args(["wait", &address, "--timeout", "120"]);
        run_deadline(command, std::time::Duration::from_secs(150), "corral wait").status.code()
    };
    assert_eq!(code, Some(0), "{}", why());
    println!(
        "paused claude: {} processes frozen (state T) with 1 call upstream and 1 held; from `corral budget` to \
         its task done: {:.0} ms",
        frozen.len(),
        raising.elapsed().as_secs_f64() * 1000.0
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap_or_default(), "hi\n", "{}", why());
    // The same processes went on: thawed, not restarted.
    let events = events(&repo, &address);
    assert_eq!(of_type(&events, "started").len(), 1, "{}", why());
    let raise = of_type(&events, "budget_raised");
    assert_eq!(raise.len(), 1, "{}", why());
    assert_eq!((raise[0]["added"].as_f64(), raise[0]["limit"].as_f64()), (Some(20000.0), Some(22000.0)));
    assert_eq!(raise[0]["by"], "/root");
    assert_eq!(of_type(&events, "resumed").len(), 1, "{}", why());
    assert_eq!(model_requests(&mock.requests()).len(), 3, "{}", why());
    let record = ps_record(&repo, &address);
    assert_eq!(record["state"], "succeeded", "{record}");
    assert_eq!(record["budget"]["tokens"], 22000, "{record}");
}

#[test]
fn a_paused_agent_stops_leaving_no_process_and_corral_budget_refuses_what_it_cannot_do() {
    let repo = TestRepo::new();
    let mock = MockLlm::start(
        &repo,
        "frozen",
        &json!({"steps": [{"text": "hello", "usage": {"input": 400, "output": 200}, "repeat": "forever"}]}),
    );
    // A small HTTP client that calls until it is refused, with a child
    // that sleeps: a tree of two processes to freeze and to stop.
    let client = repo.path("client.py");
    std::fs::write(
        &client,
        r#"import json, os, subprocess, urllib.request, urllib.error
subprocess.Popen(["sleep", "600"])
while True:
    body = json.dumps({"model": "m", "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = urllib.request.Request(os.environ["ANTHROPIC_BASE_URL"] + "/v1/messages", data=body,
        headers={"x-api-key": os.environ["ANTHROPIC_API_KEY"], "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            r.read()
            print("call", r.status, flush=True)
    except urllib.error.HTTPError as e:
        print("refused", e.code, flush=True)
        break
"#,
    )
    .unwrap();
    let env = [("ANTHROPIC_BASE_URL", OsString::from(&mock.url)), ("ANTHROPIC_API_KEY", "sk-test".into())];
    let client = client.display().to_string();
    let args =
        ["frozen", "--meter", "proxy", "--max-tokens", "900", "--on-exceeded", "pause", "--", "python3", &client];
    let address = spawn(&repo, &args, &env);
    let why = || diagnostics(&repo, &address, Some(&mock));
    let frozen = wait_frozen(&repo, &address, &why);
    assert!(frozen.len() >= 2, "the client and its child: {frozen:?}\n{}", why());
    assert_eq!(model_requests(&mock.requests()).len(), 1, "{}", why());

    // What `corral budget` refuses, and how it says so.
    let refusals: [(&[&str], i32, &str); 5] = [
        (&["budget", &address, "--add-tokens", "-5"], 13, "greater than 0"),
        (&["budget", &address, "--add-tokens", "lots"], 13, "greater than 0"),
        (&["budget", &address, "--add-cost", "0"], 13, "greater than 0"),
        (&["budget", "/root/nobody", "--add-tokens", "5"], 4, "nobody"),
        (&["budget", &address, "--add-cost", "1.5"], 11, "no cost budget"),
    ];
    for (args, code, says) in refusals {
        let out = corral(&repo, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "corral {args:?}: {stderr}");
        assert!(stderr.contains(says), "corral {args:?} should say {says:?}: {stderr}");
    }
    assert!(of_type(&events(&repo, &address), "budget_raised").is_empty(), "{}", why());
    // 600 of 900 spent, and the held call would read about 400: a raise
    // of 50 is journaled but lifts nothing, and says so.
    let out = corral(&repo, &["budget", &address, "--add-tokens", "50"]);
    let said = corral_e2e::real_cli::describe(&out);
    assert!(out.status.success() && said.contains("still paused"), "{said}");
    assert_eq!(of_type(&events(&repo, &address), "budget_raised").len(), 1, "{}", why());
    assert!(of_type(&events(&repo, &address), "resumed").is_empty(), "{}", why());
    assert!(agent_states(&repo, &address).iter().all(|(_, s)| *s == 'T'), "{}", why());
    // The same over MCP, with who asked; an agent below may not raise the
    // budget it runs under (its own), only those below it.
    let mut mcp = crate::mcp::McpServer::start(repo.command());
    mcp.initialize();
    let raised = mcp.ok("raise_budget", json!({"address": address, "add_tokens": 10}));
    assert_eq!((raised["tokens_limit"].as_u64(), raised["paused"].as_bool()), (Some(960), Some(true)), "{raised}");
    mcp.close();
    let mut inside = repo.command();
    inside.env("CORRAL_ADDRESS", &address);
    let mut mcp = crate::mcp::McpServer::start(inside);
    mcp.initialize();
    let err = mcp.error("raise_budget", json!({"address": address, "add_tokens": 10}));
    assert!(err.contains("only the budgets of agents below it"), "{err}");
    mcp.close();
    assert_eq!(of_type(&events(&repo, &address), "budget_raised").len(), 2, "{}", why());

    let stop = corral(&repo, &["stop", &address, "--grace", "1"]);
    assert!(stop.status.success(), "{}", corral_e2e::real_cli::describe(&stop));
    poll_until("no process of the paused agent left", PATIENCE, || repo.agent_processes(&address).is_empty());
    for (pid, _) in &frozen {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "process {pid} was left");
    }
    let record = ps_record(&repo, &address);
    assert_eq!(record["state"], "stopped", "{record}");
    assert!(record["paused"].is_null(), "{record}");
    assert_eq!(model_requests(&mock.requests()).len(), 1, "the held call never went upstream\n{}", why());
}

#[test]
fn under_a_paused_budget_no_process_of_the_subtree_starts_again_not_even_a_restart() {
    let repo = TestRepo::new();
    let bin = corral_e2e::corral_bin().display().to_string();
    let mock = MockLlm::start(
        &repo,
        "subtree",
        &json!({"steps": [{"text": "hello", "usage": {"input": 400, "output": 200}, "repeat": "forever"}]}),
    );
    let client = repo.path("client.py");
    std::fs::write(
        &client,
        r#"import json, os, urllib.request
while True:
    body = json.dumps({"model": "m", "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = urllib.request.Request(os.environ["ANTHROPIC_BASE_URL"] + "/v1/messages", data=body,
        headers={"x-api-key": os.environ["ANTHROPIC_API_KEY"], "content-type": "application/json"})
    with urllib.request.urlopen(req) as r:
        r.read()
"#,
    )
    .unwrap();
    let lead =
        spawn(&repo, &["lead", "--max-tokens", "900", "--on-exceeded", "pause", "--", &bin, "fake-agent", "hang"], &[]);
    // A child that ends and is restarted again and again, each run a line.
    let restarting = spawn(
        &repo,
        &[
            "restarting",
            "--parent",
            &lead,
            "--restart",
            "Always",
            "--backoff",
            "0.5",
            "--max-backoff",
            "0.5",
            "--",
            "sh",
            "-c",
            "echo run >> runs; exit 1",
        ],
        &[],
    );
    let runs = || {
        std::fs::read_to_string(repo.worktree_of("lead.restarting").join("runs")).unwrap_or_default().lines().count()
    };
    poll_until("the child restarting", PATIENCE, || runs() >= 2);
    let env = [("ANTHROPIC_BASE_URL", OsString::from(&mock.url)), ("ANTHROPIC_API_KEY", "sk-test".into())];
    let client = client.display().to_string();
    let caller = spawn(&repo, &["caller", "--parent", &lead, "--meter", "proxy", "--", "python3", &client], &env);
    let why = || diagnostics(&repo, &caller, Some(&mock));
    // The caller's second call does not fit under the lead's budget: the
    // whole subtree pauses, the restarting child with it.
    poll_until("the subtree paused", PATIENCE, || {
        [&lead, &restarting, &caller].iter().all(|a| ps_record(&repo, a)["paused"].is_object())
    });
    assert_eq!(ps_record(&repo, &restarting)["paused"]["owner"], lead.as_str(), "{}", why());
    // The child is mostly between runs (each run is instant, each back-off
    // half a second): paused, no new run starts. Watched for a window of
    // six back-offs: the count must not move and nothing of it may run.
    poll_until("the restarting child frozen or between runs", PATIENCE, || {
        agent_states(&repo, &restarting).iter().all(|(_, s)| *s == 'T')
    });
    let at_pause = runs();
    let window = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::time::Instant::now() < window {
        assert_eq!(runs(), at_pause, "the paused child ran again\n{}", why());
        let running: Vec<(u32, char)> =
            agent_states(&repo, &restarting).into_iter().filter(|(_, s)| *s != 'T').collect();
        assert!(running.is_empty(), "a process of the paused child runs: {running:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(model_requests(&mock.requests()).len(), 1, "{}", why());
    // Raised, it runs again.
    let out = corral(&repo, &["budget", &lead, "--add-tokens", "100000"]);
    assert!(out.status.success(), "{}", corral_e2e::real_cli::describe(&out));
    poll_until("the child restarting again", PATIENCE, || runs() > at_pause);
    let stop = corral(&repo, &["stop", &lead, "--grace", "0"]);
    assert!(stop.status.success(), "{}", corral_e2e::real_cli::describe(&stop));
    for address in [&lead, &restarting, &caller] {
        poll_until("nothing of the subtree left", PATIENCE, || repo.agent_processes(address).is_empty());
    }
}
