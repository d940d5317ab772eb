//! `[proxy]` in corral.toml end to end: a proxy-metered agent whose
//! spawning environment sets no base URL and no key gets its upstream and
//! its key from the file, and the key never reaches the agent; a key file
//! others can read is refused at spawn with what to do about it.

use std::os::unix::fs::PermissionsExt;

use corral_e2e::real_cli::{describe, diagnostics, files_holding, model_requests, run_deadline, MockLlm};
use corral_e2e::{poll_until, TestRepo, PATIENCE};
use serde_json::json;

const FILE_KEY: &str = "sk-from-the-key-file-9c1d";

#[test]
fn an_upstream_and_a_key_file_in_corral_toml_serve_an_agent_whose_environment_has_neither() {
    let repo = TestRepo::new();
    let mock = MockLlm::start(
        &repo,
        "configured",
        &json!({"steps": [{"text": "hello", "usage": {"input": 40, "output": 20}, "repeat": "forever"}]}),
    );
    let key_file = repo.path("anthropic.key");
    std::fs::write(&key_file, format!("{FILE_KEY}\n")).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(
        repo.repo.join("corral.toml"),
        format!("[proxy.anthropic]\nupstream = \"{}\"\nkey_file = \"{}\"\n", mock.url, key_file.display()),
    )
    .unwrap();
    // One Anthropic call to $ANTHROPIC_BASE_URL with $ANTHROPIC_API_KEY,
    // then what it was given, then it waits to be read.
    let client = repo.path("client.py");
    std::fs::write(
        &client,
        r#"import json, os, time, urllib.request
body = json.dumps({"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}).encode()
req = urllib.request.Request(os.environ["ANTHROPIC_BASE_URL"] + "/v1/messages", data=body,
    headers={"x-api-key": os.environ["ANTHROPIC_API_KEY"], "content-type": "application/json"})
with urllib.request.urlopen(req) as r:
    print("call", r.status, flush=True)
print("key", os.environ["ANTHROPIC_API_KEY"][:7], flush=True)
time.sleep(600)
"#,
    )
    .unwrap();
    let spawn = |name: &str| {
        let mut command = repo.command();
        for variable in ["ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"] {
            command.env_remove(variable);
        }
        let client = client.display().to_string();
        command.args(["spawn", name, "--meter", "proxy", "--grace", "0", "--", "python3", &client]);
        run_deadline(command, PATIENCE, "corral spawn")
    };
    let out = spawn("configured");
    assert!(out.status.success(), "{}", describe(&out));
    let address = "/root/configured";
    let why = || diagnostics(&repo, address, Some(&mock));
    poll_until("the call through the proxy", PATIENCE, || {
        String::from_utf8_lossy(&repo.log(address)).contains("key corral-")
    });
    let log = String::from_utf8_lossy(&repo.log(address)).to_string();
    assert!(log.contains("call 200"), "{log}\n{}", why());
    let requests = model_requests(&mock.requests());
    assert_eq!(requests.len(), 1, "{}", why());
    assert_eq!(requests[0]["headers"]["x-api-key"], "<redacted>", "a key went upstream: {}", requests[0]);
    // The agent holds its own token, never the file's key.
    let processes = repo.agent_processes(address);
    assert!(!processes.is_empty(), "{}", why());
    for pid in processes {
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        assert!(!String::from_utf8_lossy(&env).contains(FILE_KEY), "process {pid} holds the file's key");
    }
    let holding = files_holding(&repo.state_dir(), FILE_KEY);
    assert!(holding.is_empty(), "the file's key was written to {holding:?}");
    let stop = {
        let mut command = repo.command();
        command.args(["stop", address, "--grace", "0"]);
        run_deadline(command, PATIENCE, "corral stop")
    };
    assert!(stop.status.success(), "{}", describe(&stop));

    // Readable by others: refused, naming the file, its mode and the fix.
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = spawn("exposed");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(14), "{}", describe(&out));
    assert!(stderr.contains("[proxy.anthropic] key_file"), "{stderr}");
    assert!(stderr.contains(&key_file.display().to_string()) && stderr.contains("mode 0644"), "{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");
    assert_eq!(model_requests(&mock.requests()).len(), 1, "{}", why());
}

#[test]
fn a_key_an_earlier_daemon_held_comes_from_its_key_file_or_the_next_start_is_refused() {
    let repo = TestRepo::new();
    let mock = MockLlm::start(
        &repo,
        "rekeyed",
        &json!({"steps": [{"text": "hello", "usage": {"input": 40, "output": 20}, "repeat": "forever"}]}),
    );
    // One Anthropic call, then it ends.
    let client = repo.path("client.py");
    std::fs::write(
        &client,
        r#"import json, os, urllib.request
body = json.dumps({"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}).encode()
req = urllib.request.Request(os.environ["ANTHROPIC_BASE_URL"] + "/v1/messages", data=body,
    headers={"x-api-key": os.environ["ANTHROPIC_API_KEY"], "content-type": "application/json"})
with urllib.request.urlopen(req) as r:
    print("call", r.status, flush=True)
"#,
    )
    .unwrap();
    let address = "/root/rekeyed";
    let why = || diagnostics(&repo, address, Some(&mock));
    let corral = |args: &[&str]| {
        let mut command = repo.command();
        command.args(args);
        run_deadline(command, PATIENCE, &format!("corral {args:?}"))
    };
    let waited = |expected: i32| {
        let out = corral(&["wait", address, "--timeout", "60"]);
        assert_eq!(out.status.code(), Some(expected), "{}\n{}", describe(&out), why());
    };
    let mut command = repo.command();
    command.env("ANTHROPIC_BASE_URL", &mock.url).env("ANTHROPIC_API_KEY", "sk-from-the-environment-77");
    command.args(["spawn", "rekeyed", "--meter", "proxy", "--", "python3", &client.display().to_string()]);
    let out = run_deadline(command, PATIENCE, "corral spawn");
    assert!(out.status.success(), "{}", describe(&out));
    waited(0);

    // The key from the environment went with the daemon: the next task is
    // refused, saying where a key can be kept, and nothing goes upstream.
    repo.kill_daemon();
    let out = corral(&["assign", address, "again"]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(stderr.contains("[proxy.anthropic]") && stderr.contains("key_file"), "{stderr}");
    assert_eq!(model_requests(&mock.requests()).len(), 1, "{}", why());

    // With the key in a file, the next daemon gives it to the proxy.
    let key_file = repo.path("anthropic.key");
    std::fs::write(&key_file, format!("{FILE_KEY}\n")).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(
        repo.repo.join("corral.toml"),
        format!("[proxy.anthropic]\nkey_file = \"{}\"\n", key_file.display()),
    )
    .unwrap();
    repo.kill_daemon();
    let out = corral(&["assign", address, "once more"]);
    assert!(out.status.success(), "{}\n{}", describe(&out), why());
    waited(0);
    let requests = model_requests(&mock.requests());
    assert_eq!(requests.len(), 2, "{}", why());
    assert_eq!(requests[1]["headers"]["x-api-key"], "<redacted>", "the call went with no key: {}", requests[1]);
}
