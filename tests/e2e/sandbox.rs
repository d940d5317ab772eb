//! The sandbox, end to end: what an agent may write (`--sandbox
//! workspace-write`, `read-only`), which TCP it may open (`--network`),
//! its resource limits (`--max-memory` and the others), inheritance down
//! the tree and the refusals, the fail-closed path on a kernel without the
//! Landlock it needs (simulated with `CORRAL_TEST_LANDLOCK_ABI`), and the
//! real Claude Code and Codex under `workspace-write`.
//!
//! The agents are the scripted fake agent (`try-write`, `run`, `connect`,
//! `alloc`, `fds`, `forks` steps) and the real CLIs against
//! `corral mock-llm`. Every test has its own scratch repository, whose
//! guard kills whatever it started, and waits with deadlines.

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Output;

use corral_e2e::real_cli::{
    claude_env, codex_bin, codex_mock_provider, describe, diagnostics, events, of_type, ps_record, run_deadline,
    MockLlm, RUN_DEADLINE,
};
use corral_e2e::{corral_bin, poll_until, TestRepo, PATIENCE};
use serde_json::{json, Value};

/// `corral spawn NAME FLAGS... --json -- corral fake-agent SCRIPT`, with
/// extra environment.
fn spawn(repo: &TestRepo, name: &str, flags: &[&str], env: &[(&str, &str)], script: &str) -> Output {
    let bin = corral_bin();
    let mut command = repo.command();
    command.args(["spawn", name, "--task", "sandbox test", "--json"]).args(flags);
    command.args(["--", bin.to_str().unwrap(), "fake-agent", script]);
    for (key, value) in env {
        command.env(key, value);
    }
    run_deadline(command, PATIENCE, &format!("corral spawn {name}"))
}

fn spawned(repo: &TestRepo, name: &str, flags: &[&str], env: &[(&str, &str)], script: &str) -> Value {
    let out = spawn(repo, name, flags, env, script);
    assert!(out.status.success(), "corral spawn {name} {flags:?}: {}", describe(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("spawn printed no JSON ({e}): {}", describe(&out)))
}

/// Waits for the agent to end; returns its `corral wait` exit code and record.
fn wait(repo: &TestRepo, address: &str) -> (Option<i32>, Value) {
    let mut command = repo.command();
    command.args(["wait", address, "--timeout", "120"]);
    let out = run_deadline(command, PATIENCE * 3, &format!("corral wait {address}"));
    assert_ne!(out.status.code(), Some(124), "{address} did not end\n{}", diagnostics(repo, address, None));
    (out.status.code(), repo.agent(address))
}

fn log(repo: &TestRepo, address: &str) -> String {
    String::from_utf8_lossy(&repo.log(address)).replace('\r', "")
}

/// The line of `log` that starts with `prefix`, or a panic showing the log.
fn line<'a>(log: &'a str, prefix: &str) -> &'a str {
    log.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{log}"))
}

fn refused(out: &Output, needle: &str) {
    assert_eq!(out.status.code(), Some(11), "{}", describe(out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(needle), "the refusal should say {needle:?}: {stderr}");
}

// ---------------------------------------------------------------------------
// 1. workspace-write

#[test]
fn workspace_write_confines_a_plain_command_to_its_worktree_and_its_own_branch() {
    let repo = TestRepo::new();
    let home = repo.path("home");
    let outside = repo.path("outside");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let home_env = home.to_str().unwrap();
    // Two other agents: one sandboxed (a branch in a folder of its own),
    // one not (a branch in the shared folder), both kept running.
    spawned(&repo, "sibling", &["--sandbox", "workspace-write"], &[("HOME", home_env)], "hang");
    spawned(&repo, "plain", &[], &[("HOME", home_env)], "hang");
    let main_before = repo.git(&["rev-parse", "main"]);
    let sibling_before = repo.git(&["rev-parse", "corral/root/sibling/work"]);
    let plain_before = repo.git(&["rev-parse", "corral/root/plain"]);

    let checkout = repo.repo.join("leak.txt");
    let sibling_worktree = repo.worktree_of("sibling").join("leak.txt");
    let in_home = home.join("leak.txt");
    let out_there = outside.join("leak.txt");
    let script = [
        "try-write inside.txt".to_string(),
        "commit work of the writer".to_string(),
        format!("try-write {}", checkout.display()),
        format!("try-write {}", sibling_worktree.display()),
        format!("try-write {}", in_home.display()),
        format!("try-write {}", out_there.display()),
        "run git update-ref refs/heads/main HEAD".into(),
        "run git branch -f main HEAD".into(),
        "run git branch -f side HEAD".into(),
        "run git update-ref refs/heads/corral/root/sibling/work HEAD".into(),
        "run git update-ref refs/heads/corral/root/plain HEAD".into(),
    ]
    .join("; ");
    let writer = spawned(&repo, "writer", &["--sandbox", "workspace-write"], &[("HOME", home_env)], &script);
    assert_eq!(writer["branch"], "corral/root/writer/work", "its branch is alone in its ref folder: {writer}");
    let (code, record) = wait(&repo, "/root/writer");
    assert_eq!(code, Some(0), "{record}\n{}", log(&repo, "/root/writer"));
    let log = log(&repo, "/root/writer");

    // Its own worktree and its own branch: yes.
    assert_eq!(line(&log, "try-write inside.txt"), "try-write inside.txt ok");
    assert_eq!(line(&log, "commit"), "commit ok", "{log}");
    let tip = repo.git(&["log", "-1", "--format=%s", "corral/root/writer/work"]);
    assert_eq!(tip.trim(), "work of the writer");
    let committed = repo.git(&["show", "corral/root/writer/work:inside.txt"]);
    assert_eq!(committed, "try-write\n");

    // Anywhere else: EACCES.
    for path in [&checkout, &sibling_worktree, &in_home, &out_there] {
        let said = line(&log, &format!("try-write {}", path.display()));
        assert!(said.ends_with("errno 13 (Permission denied (os error 13))"), "{said}");
        assert!(!path.exists(), "{} was written", path.display());
    }
    // No branch but its own moves: main, a new branch, another agent's.
    for (what, needle) in [
        ("run git update-ref refs/heads/main", "refs/heads/main.lock': Permission denied"),
        ("run git branch -f main", "fatal"),
        ("run git branch -f side", "refs/heads/side.lock': Permission denied"),
        ("run git update-ref refs/heads/corral/root/sibling/work", "sibling/work.lock': Permission denied"),
        ("run git update-ref refs/heads/corral/root/plain", "corral/root/plain.lock': Permission denied"),
    ] {
        let said = line(&log, what);
        assert!(said.contains(": exit 128: ") && said.contains(needle), "{what}: {said}");
    }
    assert_eq!(repo.git(&["rev-parse", "main"]), main_before, "main moved");
    assert_eq!(repo.git(&["rev-parse", "corral/root/sibling/work"]), sibling_before, "the sibling's branch moved");
    assert_eq!(repo.git(&["rev-parse", "corral/root/plain"]), plain_before, "the plain agent's branch moved");
    assert!(repo.git(&["branch", "--list", "side"]).trim().is_empty(), "a branch was made");
    assert_eq!(std::fs::read_dir(&home).unwrap().count(), 0, "something was written in HOME");
    assert_eq!(repo.git(&["status", "--porcelain"]).trim(), "", "the person's checkout changed");

    // What is enforced, in ps --json and in the spawned event.
    let enforced = &record["enforced"];
    assert_eq!(enforced["filesystem"], "workspace-write", "{record}");
    assert!(enforced["landlock_abi"].as_u64().is_some_and(|abi| abi >= 3), "{enforced}");
    let deny: Vec<&str> = enforced["deny_read"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(deny, [home.join(".ssh"), home.join(".aws"), home.join(".gnupg")].map(|p| p.display().to_string()));
    let spawned_event = events(&repo, "/root/writer").into_iter().find(|e| e["type"] == "spawned").unwrap();
    assert_eq!(spawned_event["sandbox"], "workspace-write");
    assert_eq!(spawned_event["enforced"], *enforced);
    let ps = repo.corral_ok(&["ps"]);
    let row = ps.lines().find(|l| l.contains("/root/writer")).unwrap();
    assert!(row.contains("workspace-write"), "ps says what it runs under: {ps}");
    let row = ps.lines().find(|l| l.contains("/root/plain")).unwrap();
    assert!(row.contains(" full"), "an unsandboxed agent is said to be so: {ps}");
    repo.corral_ok(&["stop", "--all", "--grace", "0"]);
}

#[test]
fn a_sandboxed_agent_gets_a_private_tmpdir_and_cannot_read_the_deny_list() {
    let repo = TestRepo::new();
    let home = repo.path("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    std::fs::write(home.join(".ssh/id_ed25519"), "secret\n").unwrap();
    std::fs::write(home.join("notes.txt"), "readable\n").unwrap();
    let script = format!(
        "run sh -c 'echo t > \"$TMPDIR/t\" && cat {}'; run cat {}; env TMPDIR",
        home.join("notes.txt").display(),
        home.join(".ssh/id_ed25519").display()
    );
    let flags = ["--sandbox", "workspace-write"];
    spawned(&repo, "reader", &flags, &[("HOME", home.to_str().unwrap())], &script);
    let (code, record) = wait(&repo, "/root/reader");
    assert_eq!(code, Some(0), "{record}");
    let log = log(&repo, "/root/reader");
    assert!(line(&log, "run sh").ends_with(": exit 0: readable"), "reads outside the deny list work: {log}");
    assert!(!log.contains("secret"), "the deny list was read: {log}");
    assert!(line(&log, "run cat").contains(": exit 1: cat: ") && log.contains("Permission denied"), "{log}");
    let tmpdir = line(&log, "TMPDIR=").trim_start_matches("TMPDIR=");
    let private = repo.state_dir().join(format!("agents/{}/tmp", record["id"]));
    assert_eq!(Path::new(tmpdir).canonicalize().unwrap(), private.canonicalize().unwrap());
}

// ---------------------------------------------------------------------------
// 2. read-only

#[test]
fn read_only_writes_nothing_in_its_worktree() {
    let repo = TestRepo::new();
    let script = "try-write inside.txt; run sh -c 'echo t > \"$TMPDIR/t\" && echo tmp-ok'";
    spawned(&repo, "reviewer", &["--sandbox", "read-only"], &[], script);
    let (code, record) = wait(&repo, "/root/reviewer");
    assert_eq!(code, Some(0), "{record}");
    let log = log(&repo, "/root/reviewer");
    assert!(line(&log, "try-write inside.txt").ends_with("errno 13 (Permission denied (os error 13))"), "{log}");
    assert!(log.contains("tmp-ok"), "its TMPDIR is its own to write: {log}");
    assert!(!repo.worktree_of("reviewer").join("inside.txt").exists());
    assert_eq!(record["branch"], "corral/root/reviewer", "a read-only agent writes no ref");
    assert_eq!(record["enforced"]["filesystem"], "read-only", "{record}");
}

// ---------------------------------------------------------------------------
// 3. network

#[test]
fn network_none_model_and_full_allow_what_they_say() {
    let repo = TestRepo::new();
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let (proxy_port, other_port) = (proxy.local_addr().unwrap().port(), other.local_addr().unwrap().port());
    let script = format!("connect {proxy_port}; connect {other_port}");
    let proxy_env = proxy_port.to_string();
    let env = [("CORRAL_PROXY_PORT", proxy_env.as_str())];
    for (name, network) in [("none", "none"), ("model", "model"), ("full", "full")] {
        spawned(&repo, name, &["--network", network], &env, &script);
    }
    let expect = |name: &str, proxy_ok: bool, other_ok: bool| {
        let address = format!("/root/{name}");
        let (code, record) = wait(&repo, &address);
        assert_eq!(code, Some(0), "{record}");
        let log = log(&repo, &address);
        for (port, ok) in [(proxy_port, proxy_ok), (other_port, other_ok)] {
            let said = line(&log, &format!("connect {port} "));
            let want = if ok { format!("connect {port} ok") } else { format!("connect {port} errno 13") };
            assert!(said.starts_with(&want), "--network {name}: {said}");
        }
        record
    };
    let none = expect("none", false, false);
    assert_eq!(none["enforced"]["network"], "none", "{none}");
    let model = expect("model", true, false);
    assert_eq!(model["enforced"]["connect_ports"], json!([proxy_port]), "{model}");
    expect("full", true, true);
    // Without a proxy, `model` reaches no port at all.
    spawned(&repo, "no-proxy", &["--network", "model"], &[], &script);
    expect("no-proxy", false, false);
}

// ---------------------------------------------------------------------------
// 4. The real CLIs

/// `corral spawn NAME --harness H --sandbox workspace-write --task T --json`.
fn spawn_real(repo: &TestRepo, name: &str, harness: &str, task: &str, env: &[(&str, OsString)], extra: &[&str]) {
    let mut command = repo.command();
    command.args(["spawn", name, "--harness", harness, "--sandbox", "workspace-write", "--task", task, "--json"]);
    if harness == "codex" {
        command.args(["--model", "gpt-mock"]);
    }
    if !extra.is_empty() {
        command.arg("--").args(extra);
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let out = run_deadline(command, PATIENCE, &format!("corral spawn {name} --harness {harness}"));
    assert!(out.status.success(), "corral spawn {name}: {}", describe(&out));
}

fn wait_real(repo: &TestRepo, address: &str, mock: &MockLlm) -> Value {
    let mut command = repo.command();
    command.args(["wait", address, "--timeout", &RUN_DEADLINE.as_secs().to_string()]);
    let out = run_deadline(command, RUN_DEADLINE + PATIENCE, &format!("corral wait {address}"));
    assert_ne!(out.status.code(), Some(124), "{address} did not end\n{}", diagnostics(repo, address, Some(mock)));
    ps_record(repo, address)
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

#[test]
fn real_claude_under_workspace_write_writes_its_worktree_with_a_private_config_folder() {
    let repo = TestRepo::new();
    let worktree = repo.worktree_of("writer");
    let target = worktree.join("sandboxed-claude.txt");
    let content = "written by claude inside the sandbox\n";
    let leak = repo.repo.join("leak-from-claude.txt");
    let steps = [
        json!({"tool": {"name": "Write", "input": {"file_path": target, "content": content}}}),
        json!({"tool": {"name": "Bash", "input": {"command": format!("echo leak > {}", leak.display())}}}),
        json!({"text": "Wrote sandboxed-claude.txt."}),
    ];
    let mock = MockLlm::start(&repo, "claude", &json!({"steps": steps}));
    let env = claude_env(&repo, &mock);
    let home = repo.path("home");
    // The person's settings are seeded into the agent's own folder.
    std::fs::create_dir_all(home.join(".claude")).unwrap();
    std::fs::write(home.join(".claude/settings.json"), "{\"cleanupPeriodDays\": 30}\n").unwrap();
    std::fs::write(home.join(".claude/.credentials.json"), "{\"never\": \"copied\"}\n").unwrap();
    let home_before = files_under(&home);
    spawn_real(&repo, "writer", "claude", "Create sandboxed-claude.txt", &env, &[]);
    let record = wait_real(&repo, "/root/writer", &mock);
    let why = || diagnostics(&repo, "/root/writer", Some(&mock));
    assert_eq!(record["state"], "succeeded", "{record}\n{}", why());
    assert_eq!(std::fs::read_to_string(&target).unwrap_or_else(|e| panic!("{e}\n{}", why())), content);
    assert_eq!(record["enforced"]["filesystem"], "workspace-write", "{record}");
    assert!(!leak.exists(), "Claude Code wrote into the person's checkout\n{}", why());

    // Its state went to its own folder, seeded without credentials; HOME
    // is as it was.
    let state = repo.state_dir().join(format!("agents/{}/home", record["id"]));
    assert!(state.join(".claude.json").exists() || state.join("projects").exists(), "{:?}", files_under(&state));
    assert_eq!(std::fs::read_to_string(state.join("settings.json")).unwrap(), "{\"cleanupPeriodDays\": 30}\n");
    assert!(!state.join(".credentials.json").exists(), "credentials were copied");
    assert_eq!(files_under(&home), home_before, "Claude Code wrote in HOME");
    let results = of_type(&events(&repo, "/root/writer"), "tool_result").into_iter().cloned().collect::<Vec<_>>();
    assert_eq!(results.len(), 2, "{results:?}\n{}", why());
    // The write in its worktree went through; the one outside did not
    // (Claude Code's own permissions stop it before corral's sandbox must).
    assert_eq!((results[0]["is_error"].as_bool(), results[1]["is_error"].as_bool()), (Some(false), Some(true)));
}

#[test]
fn real_codex_under_workspace_write_runs_a_command_in_its_worktree_with_a_private_home() {
    let repo = TestRepo::new();
    let worktree = repo.worktree_of("coder");
    let leak = repo.repo.join("leak-from-codex.txt");
    let steps = [
        json!({"shell": "printf 'made by codex\\n' > sandboxed-codex.txt && echo wrote-it"}),
        json!({"shell": format!("echo leak > {}", leak.display())}),
        json!({"text": "All done, codex here."}),
    ];
    let mock = MockLlm::start(&repo, "codex", &json!({"steps": steps}));
    let provider = codex_mock_provider(&mock);
    // The person's CODEX_HOME: its config is seeded, its auth never.
    let person_home = repo.path("codex-home");
    std::fs::create_dir_all(&person_home).unwrap();
    std::fs::write(person_home.join("config.toml"), "# the person's settings\n").unwrap();
    std::fs::write(person_home.join("auth.json"), "{}\n").unwrap();
    let home = repo.path("home");
    std::fs::create_dir_all(&home).unwrap();
    let env = [
        ("CORRAL_CODEX_BIN", codex_bin().into_os_string()),
        ("CODEX_HOME", person_home.clone().into_os_string()),
        ("MOCK_KEY", "mock-key".into()),
        ("HOME", home.clone().into_os_string()),
    ];
    let extra = ["-c", "model_provider=mock", "-c", &provider];
    spawn_real(&repo, "coder", "codex", "make the file sandboxed-codex.txt", &env, &extra);
    let record = wait_real(&repo, "/root/coder", &mock);
    let why = || diagnostics(&repo, "/root/coder", Some(&mock));
    assert_eq!(record["state"], "succeeded", "{record}\n{}", why());
    let made = worktree.join("sandboxed-codex.txt");
    assert_eq!(std::fs::read_to_string(&made).unwrap_or_else(|e| panic!("{e}\n{}", why())), "made by codex\n");
    // Codex's own sandbox cannot start inside corral's, which holds.
    assert!(!leak.exists(), "Codex wrote into the person's checkout\n{}", why());
    let results = of_type(&events(&repo, "/root/coder"), "tool_result").into_iter().cloned().collect::<Vec<_>>();
    assert!(
        results.iter().any(|r| r["is_error"] == true && r["summary"].to_string().contains("Permission denied")),
        "the write outside its worktree failed with EACCES: {results:?}\n{}",
        why()
    );

    let state = repo.state_dir().join(format!("agents/{}/home", record["id"]));
    assert!(state.join("sessions").is_dir(), "its sessions are in its own CODEX_HOME: {:?}", files_under(&state));
    assert_eq!(std::fs::read_to_string(state.join("config.toml")).unwrap(), "# the person's settings\n");
    assert!(!state.join("auth.json").exists(), "auth.json was copied");
    let person: Vec<PathBuf> = files_under(&person_home);
    assert_eq!(person.len(), 2, "Codex wrote in the person's CODEX_HOME: {person:?}");
    assert_eq!(files_under(&home), Vec::<PathBuf>::new(), "Codex wrote in HOME");
}

// ---------------------------------------------------------------------------
// 5. Inheritance and refusal

#[test]
fn a_child_inherits_its_parents_sandbox_and_is_refused_anything_wider() {
    let repo = TestRepo::new();
    let flags = ["--sandbox", "workspace-write", "--network", "none", "--max-memory", "256M"];
    spawned(&repo, "lead", &flags, &[], "hang");
    let child = |name: &str, flags: &[&str]| {
        let mut all = vec!["--parent", "/root/lead"];
        all.extend_from_slice(flags);
        spawn(&repo, name, &all, &[], "exit 0")
    };
    refused(
        &child("wide", &["--sandbox", "full"]),
        "spawn of /root/lead/wide refused: it asks for a full sandbox but its parent /root/lead is workspace-write",
    );
    refused(
        &child("online", &["--network", "full"]),
        "spawn of /root/lead/online refused: it asks for network full but its parent /root/lead has network none",
    );
    refused(
        &child("big", &["--max-memory", "1G"]),
        "spawn of /root/lead/big refused: it asks for max_memory 1 GiB but its parent's is 256 MiB (/root/lead)",
    );
    let out = child("heir", &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let heir = repo.agent("/root/lead/heir");
    assert_eq!((heir["sandbox"].as_str(), heir["network"].as_str()), (Some("workspace-write"), Some("none")), "{heir}");
    assert_eq!(heir["limits"]["max_memory"], 256 << 20, "{heir}");
    assert_eq!(heir["branch"], "corral/root/lead.heir/work");

    // Arguments that would lift a CLI's own sandbox, named.
    let codex = repo.path("codex.sh");
    std::fs::write(&codex, "#!/bin/sh\necho \"ARGS $*\"\n").unwrap();
    std::fs::set_permissions(&codex, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let harness = |harness: &str, sandbox: &str, extra: &[&str]| {
        let mut command = repo.command();
        command.env("CORRAL_CODEX_BIN", &codex).env("CORRAL_CLAUDE_BIN", &codex);
        command.args(["spawn", "cli", "--harness", harness, "--sandbox", sandbox, "--task", "t", "--"]).args(extra);
        run_deadline(command, PATIENCE, "corral spawn --harness")
    };
    refused(
        &harness("codex", "workspace-write", &["--dangerously-bypass-approvals-and-sandbox"]),
        "`--dangerously-bypass-approvals-and-sandbox` would lift codex's own sandbox, and corral runs it under workspace-write",
    );
    refused(&harness("codex", "read-only", &["--sandbox", "danger-full-access"]), "`--sandbox danger-full-access`");
    refused(
        &harness("codex", "read-only", &["-c", "sandbox_mode=workspace-write"]),
        "`-c sandbox_mode=workspace-write`",
    );
    refused(&harness("claude", "read-only", &["--dangerously-skip-permissions"]), "`--dangerously-skip-permissions`");
    assert!(repo.agents().iter().all(|a| a["address"] != "/root/cli"), "a refused spawn leaves nothing");

    // From inside a sandboxed agent, no agent outside its subtree.
    let bin = corral_bin();
    let bin = bin.to_str().unwrap();
    let script = format!(
        "run {bin} spawn escape --parent /root -- true; run {bin} stop /root/lead --grace 0; run {bin} spawn kid --sandbox full -- true; run {bin} gc"
    );
    spawned(&repo, "jail", &["--sandbox", "workspace-write"], &[], &script);
    let (code, _) = wait(&repo, "/root/jail");
    assert_eq!(code, Some(0));
    let log = log(&repo, "/root/jail");
    let runs: Vec<&str> = log.lines().filter(|l| l.starts_with("run ")).collect();
    assert_eq!(runs.len(), 4, "{log}");
    for (run, said) in runs.iter().zip([
        "/root/jail is sandboxed: it may spawn agents only below itself, not under /root",
        "/root/jail is sandboxed: it may stop only itself and agents below it, not /root/lead",
        "it asks for a full sandbox but its parent /root/jail is workspace-write",
        "/root/jail is sandboxed: it may not remove worktrees (gc)",
    ]) {
        assert!(run.contains(": exit 11: ") && run.contains(said), "{run}");
    }
    assert!(repo.agents().iter().all(|a| a["address"] != "/root/escape"));
    assert_eq!(repo.agent("/root/lead")["state"], "running");
    repo.corral_ok(&["stop", "--all", "--grace", "0"]);
}

// ---------------------------------------------------------------------------
// 6. Limits

#[test]
fn an_agent_past_its_max_memory_ends_as_limit_exceeded_and_the_one_beside_it_runs_on() {
    let repo = TestRepo::new();
    let go = repo.path("go");
    let neighbour = format!("alloc 32; print holding; wait-file {}; exit 0", go.display());
    spawned(&repo, "neighbour", &["--max-memory", "512M"], &[], &neighbour);
    spawned(&repo, "hog", &["--max-memory", "64M"], &[], "print starting; alloc 512; print never");
    let (code, hog) = wait(&repo, "/root/hog");
    assert_eq!(code, Some(32), "limit_exceeded has its own wait code: {hog}");
    assert_eq!(hog["state"], "limit_exceeded", "{hog}\n{}", log(&repo, "/root/hog"));
    let reason = hog["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("limit exceeded: max_memory 64 MiB"), "the reason names the limit: {reason}");
    assert!(!log(&repo, "/root/hog").contains("never"));
    let by = &hog["enforced"]["limits"][0];
    assert_eq!((by["limit"].as_str(), by["value"].as_u64()), (Some("max_memory"), Some(64 << 20)), "{hog}");

    poll_until("the neighbour to hold its memory", PATIENCE, || log(&repo, "/root/neighbour").contains("holding"));
    assert_eq!(repo.agent("/root/neighbour")["state"], "running", "the neighbour was touched");
    std::fs::write(&go, "").unwrap();
    let (code, neighbour) = wait(&repo, "/root/neighbour");
    assert_eq!((code, neighbour["state"].as_str()), (Some(0), Some("succeeded")), "{neighbour}");
    let exited = events(&repo, "/root/hog").into_iter().find(|e| e["type"] == "exited").unwrap();
    assert_eq!(exited["state"], "limit_exceeded");
}

#[test]
fn open_files_and_processes_are_capped() {
    let repo = TestRepo::new();
    spawned(&repo, "files", &["--max-open-files", "32"], &[], "fds 100");
    spawned(&repo, "procs", &["--max-processes", "8"], &[], "forks 50");
    let (code, files) = wait(&repo, "/root/files");
    assert_eq!(code, Some(0), "{files}");
    let opened: usize = line(&log(&repo, "/root/files"), "fds opened ")[11..].trim().parse().unwrap();
    assert!(opened < 32, "opened {opened} files under max_open_files 32");
    let (code, procs) = wait(&repo, "/root/procs");
    assert_eq!(code, Some(0), "{procs}");
    let started: usize = line(&log(&repo, "/root/procs"), "forks started ")[14..].trim().parse().unwrap();
    assert!(started < 8, "started {started} children under max_processes 8");
    assert!(procs["enforced"]["limits"][0]["by"].as_str().unwrap().contains("pids.max"), "{procs}");
}

// ---------------------------------------------------------------------------
// 7. Fail closed

#[test]
fn a_kernel_without_the_landlock_needed_refuses_the_spawn_unless_told_to_warn() {
    let repo = TestRepo::new();
    let old = [("CORRAL_TEST_LANDLOCK_ABI", "0")];
    let out = spawn(&repo, "fs", &["--sandbox", "workspace-write"], &old, "exit 0");
    refused(&out, "the workspace-write sandbox needs Landlock ABI 3 or later, and this kernel has no Landlock");
    let no_net = [("CORRAL_TEST_LANDLOCK_ABI", "3")];
    let out = spawn(&repo, "net", &["--network", "none"], &no_net, "exit 0");
    refused(&out, "--network none needs Landlock ABI 4 or later (TCP rules), and this kernel has Landlock ABI 3");
    assert!(repo.agents().is_empty(), "a refused spawn leaves no agent");
    assert!(!repo.worktree_of("fs").exists(), "a refused spawn leaves no worktree");
    assert!(repo.git(&["branch", "--list", "corral/*"]).trim().is_empty(), "a refused spawn leaves no branch");

    // A role that says so runs without, and says what is not enforced.
    std::fs::write(repo.repo.join("corral.toml"), "[agents.lenient]\nsandbox_fallback = \"warn\"\n").unwrap();
    let out =
        spawn(&repo, "lenient", &["--role", "lenient", "--sandbox", "workspace-write"], &old, "try-write inside.txt");
    assert!(out.status.success(), "{}", describe(&out));
    let (code, record) = wait(&repo, "/root/lenient");
    assert_eq!(code, Some(0));
    let enforced = &record["enforced"];
    assert_eq!(
        (enforced["landlock_abi"].as_u64(), enforced["filesystem"].as_str()),
        (Some(0), Some("full")),
        "{record}"
    );
    assert!(enforced["not_enforced"][0].as_str().unwrap().contains("needs Landlock ABI 3"), "{record}");
    assert!(repo.corral_ok(&["ps"]).contains("full!"), "ps marks what is not enforced");
}

#[test]
fn a_connection_a_sandboxed_process_hands_to_its_child_before_it_exits_is_refused() {
    // The daemon places a caller by its connecting process's ancestors;
    // once that process is gone nobody can say where the connection came
    // from, and a guard fails closed.
    let repo = TestRepo::new();
    spawned(&repo, "sibling", &[], &[], "hang");
    let helper = repo.path("handover.py");
    std::fs::write(
        &helper,
        r#"import json, os, socket, struct, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
def send(m):
    b = json.dumps(m).encode()
    s.sendall(struct.pack(">I", len(b)) + b)
def recv():
    n = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))[0]
    return s.recv(n, socket.MSG_WAITALL).decode()
if os.fork():
    os._exit(0)
# Let go of the output the parent's runner reads, so it reaps the parent.
null = os.open("/dev/null", os.O_WRONLY)
os.dup2(null, 1)
os.dup2(null, 2)
while os.path.exists("/proc/%d" % int(sys.argv[3])):
    time.sleep(0.02)
send({"request": "hello", "version": 1})
recv()
send({"request": "stop", "address": "/root/sibling"})
with open(sys.argv[2], "w") as f:
    f.write(recv())
"#,
    )
    .unwrap();
    // `$$` is the shell's pid, then python's (exec): the connecting process,
    // which exits once it has forked. The answer goes in its worktree.
    let script = format!(
        "run sh -c 'exec python3 {} \"$CORRAL_SOCKET\" answer.json $$'; wait-file answer.json",
        helper.display()
    );
    spawned(&repo, "handover", &["--sandbox", "workspace-write"], &[], &script);
    let answer = repo.worktree_of("handover").join("answer.json");
    poll_until("the handed-over connection's answer", PATIENCE, || {
        std::fs::read_to_string(&answer).is_ok_and(|a| a.contains('}'))
    });
    let text = std::fs::read_to_string(&answer).unwrap();
    assert!(text.contains("refused") && text.contains("is gone"), "{text}");
    assert_eq!(repo.agent("/root/sibling")["state"], "running", "{text}");
}

#[test]
fn the_deny_list_is_placed_without_home_and_an_entry_it_cannot_place_refuses_the_spawn() {
    let repo = TestRepo::new();
    // No HOME (cron, systemd): the user's home from the password database.
    let mut command = repo.command();
    command.env_remove("HOME").args(["spawn", "nohome", "--sandbox", "workspace-write", "--json", "--", "true"]);
    let out = command.output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let home = nix::unistd::User::from_uid(nix::unistd::getuid()).unwrap().unwrap().dir;
    let enforced = repo.agent("/root/nohome")["enforced"].clone();
    let denied: Vec<&str> = enforced["deny_read"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(denied.contains(&home.join(".ssh").to_str().unwrap()), "{enforced}");
    // An entry that names no absolute path is refused, not left out.
    std::fs::write(repo.repo.join("corral.toml"), "[defaults]\nsandbox_deny_read = [\"relative/secrets\"]\n").unwrap();
    let out = spawn(&repo, "relative", &["--sandbox", "workspace-write"], &[], "exit 0");
    refused(&out, "\"relative/secrets\" names no absolute path");
}

#[test]
fn a_sandboxed_agent_cannot_talk_to_another_agents_monitor() {
    // Landlock lets a sandboxed process connect to any socket; the monitor
    // takes the daemon's role only from the daemon, and a terminal only
    // from outside every sandbox.
    let repo = TestRepo::new();
    let sibling = spawned(&repo, "sibling", &[], &[], "hang");
    let id = sibling["task_id"].as_str().and_then(|t| t.strip_prefix("t-")).unwrap().to_string();
    let socket = repo.repo.join(format!(".git/corral/agents/{id}/monitor.sock"));
    let helper = repo.path("monitor_talk.py");
    std::fs::write(
        &helper,
        r#"import socket, sys
said = []
for hello, then in [('{"role":"daemon"}', '{"t":"stop","grace_secs":0,"probe_failed":false}'),
                    ('{"role":"attach","replay":0}', 'echo typed by a sandboxed agent')]:
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    try:
        s.sendall((hello + "\n" + then + "\n").encode())
        s.settimeout(5)
        said.append("got %d bytes" % len(s.recv(65536)))
    except Exception as e:
        said.append("closed: %s" % e)
    s.close()
open("said.txt", "w").write("; ".join(said))
"#,
    )
    .unwrap();
    let script = format!("run python3 {} {}; wait-file said.txt", helper.display(), socket.display());
    spawned(&repo, "intruder", &["--sandbox", "workspace-write"], &[], &script);
    let said = repo.worktree_of("intruder").join("said.txt");
    poll_until("the intruder's attempts", PATIENCE, || said.exists());
    let text = std::fs::read_to_string(&said).unwrap();
    // Each connection is closed at once, unanswered (a status line for a
    // daemon, the terminal for an attach would be bytes, or a wait).
    for attempt in text.split("; ") {
        assert!(attempt == "got 0 bytes" || attempt.contains("reset"), "the monitor answered: {text}");
    }
    assert_eq!(repo.agent("/root/sibling")["state"], "running");
    assert!(!log(&repo, "/root/sibling").contains("typed by a sandboxed agent"));
    // The daemon still reaches it: a stop from a person works.
    repo.corral_ok(&["stop", "/root/sibling", "--grace", "0"]);
    assert_eq!(repo.agent("/root/sibling")["state"], "stopped");
}

#[test]
fn a_sandboxed_agents_merge_gate_runs_in_its_sandbox() {
    // The gate runs the agent's code (its tests, its build scripts): it
    // gets no more than the agent did.
    let repo = TestRepo::new();
    let outside = repo.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let leak = outside.join("leak.txt");
    let gate = format!("touch {}", leak.display());
    let flags = ["--sandbox", "workspace-write", "--merge", "auto", "--gate", gate.as_str()];
    spawned(&repo, "leaky", &flags, &[], "write inside.txt x; commit 'its work'");
    let (code, record) = wait(&repo, "/root/leaky");
    assert_eq!(code, Some(28), "its gate failed: {record}");
    assert_eq!(record["merge_state"]["state"], "gate_failed", "{record}");
    assert!(!leak.exists(), "the gate wrote outside the agent's sandbox");
    // Within the sandbox, the gate passes and the work merges.
    let flags = ["--sandbox", "workspace-write", "--merge", "auto", "--gate", "test -f inside.txt"];
    spawned(&repo, "tidy", &flags, &[], "write inside.txt x; commit 'its work'");
    let (code, record) = wait(&repo, "/root/tidy");
    assert_eq!(code, Some(0), "{record}");
    assert_eq!(record["merge_state"]["state"], "merged", "{record}");
}

#[test]
fn a_sandboxed_agents_exec_probes_run_in_its_sandbox() {
    let repo = TestRepo::new();
    let outside = repo.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let leak = outside.join("probe-leak.txt");
    let probe = format!(
        r#"{{ exec = {{ command = ["sh", "-c", "touch {}; echo ran >> probe-runs"] }}, period_seconds = 0.1 }}"#,
        leak.display()
    );
    spawned(&repo, "probed", &["--sandbox", "workspace-write", "--readiness", &probe], &[], "hang");
    let runs = repo.worktree_of("probed").join("probe-runs");
    poll_until("three probe runs", PATIENCE, || std::fs::read_to_string(&runs).is_ok_and(|t| t.lines().count() >= 3));
    assert!(!leak.exists(), "an exec probe wrote outside the agent's sandbox");
}
