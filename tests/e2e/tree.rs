//! The agent tree: max_threads (more wait in Pending, in order), max_depth,
//! sandboxes that never widen down the tree, and messages between agents
//! that arrive complete and in order, also across a daemon restart.

use corral_e2e::{alive, corral_bin, poll_until, TestRepo, PATIENCE};
use serde_json::Value;

fn fake(repo: &TestRepo, name: &str, flags: &[&str], script: &str) -> std::process::Output {
    let bin = corral_bin();
    let mut args = vec!["spawn", name, "--grace", "0"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--", bin.to_str().unwrap(), "fake-agent", script]);
    repo.corral(&args)
}

fn events(repo: &TestRepo) -> Vec<Value> {
    repo.corral_ok(&["events"]).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn max_threads_keeps_the_rest_pending_and_starts_them_in_order() {
    let repo = TestRepo::new();
    std::fs::write(repo.repo.join("corral.toml"), "[supervisor]\nmax_threads = 2\n").unwrap();
    let go = repo.path("go");
    let names = ["w1", "w2", "w3", "w4", "w5"];
    for name in names {
        let out = fake(&repo, name, &[], &format!("wait-file {}; sleep 0.2; exit 0", go.display()));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let agents = repo.agents();
    let running = agents.iter().filter(|a| a["state"] == "running").count();
    let pending = agents.iter().filter(|a| a["state"] == "pending").count();
    assert_eq!((running, pending), (2, 3), "{agents:?}");
    assert!(repo.corral_ok(&["ps"]).contains("pending"));

    std::fs::write(&go, "").unwrap();
    let out = repo.corral(&["wait", "w1", "w2", "w3", "w4", "w5", "--timeout", "120"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));

    // Never more than two at once, and started in the order they were asked for.
    let mut running = 0i32;
    let mut most = 0;
    let mut started = Vec::new();
    for event in events(&repo) {
        match event["type"].as_str() {
            Some("started") => {
                running += 1;
                started.push(event["agent"].as_str().unwrap().to_string());
            }
            Some("exited") => running -= 1,
            _ => {}
        }
        most = most.max(running);
    }
    assert_eq!(most, 2);
    let expected: Vec<String> = names.iter().map(|n| format!("/root/{n}")).collect();
    assert_eq!(started, expected);
}

#[test]
fn max_depth_refuses_a_level_too_deep() {
    let repo = TestRepo::new();
    std::fs::write(repo.repo.join("corral.toml"), "[supervisor]\nmax_depth = 2\n").unwrap();
    assert!(fake(&repo, "a", &[], "hang").status.success());
    assert!(fake(&repo, "b", &["--parent", "/root/a"], "hang").status.success());
    let out = fake(&repo, "c", &["--parent", "/root/a/b"], "hang");
    assert_eq!(out.status.code(), Some(11));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/root/a/b/c would be 3 levels below /root; max_depth is 2"), "{stderr}");
    assert!(repo.agents().iter().all(|a| a["address"] != "/root/a/b/c"));
    // The tree shows the children under their parents.
    let ps = repo.corral_ok(&["ps"]);
    assert!(ps.contains("\n  /root/a/b"), "{ps}");
    repo.corral_ok(&["stop", "a", "--grace", "0"]);
    assert_eq!(repo.agent("/root/a/b")["state"], "stopped", "stopping a parent stops its subtree");
}

#[test]
fn a_child_never_gets_a_wider_sandbox_than_its_parent() {
    let repo = TestRepo::new();
    assert!(fake(&repo, "reviewer", &["--sandbox", "read-only"], "hang").status.success());
    let out = fake(&repo, "writer", &["--parent", "/root/reviewer", "--sandbox", "workspace-write"], "exit 0");
    assert_eq!(out.status.code(), Some(11));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("asks for a workspace-write sandbox but its parent /root/reviewer is read-only"),
        "{stderr}"
    );
    // Without asking, a child gets its parent's sandbox.
    assert!(fake(&repo, "reader", &["--parent", "/root/reviewer"], "exit 0").status.success());
    assert_eq!(repo.agent("/root/reviewer/reader")["sandbox"], "read-only");
    repo.corral_ok(&["stop", "reviewer", "--grace", "0"]);
}

#[test]
fn messages_from_two_senders_arrive_complete_and_in_order_across_a_daemon_restart() {
    let repo = TestRepo::new();
    assert!(fake(&repo, "inbox", &[], "echo-input 100; exit 0").status.success());
    let send_batch = |range: std::ops::Range<u32>| {
        std::thread::scope(|s| {
            for sender in ["alice", "bob"] {
                let repo = &repo;
                let range = range.clone();
                s.spawn(move || {
                    for i in range {
                        let text = format!("{sender}-{i}");
                        let from = format!("/root/{sender}");
                        repo.corral_ok(&["send", "inbox", &text, "--from", &from]);
                    }
                });
            }
        });
    };
    send_batch(0..25);
    let daemon = repo.daemon_pid().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    poll_until("the daemon to die", PATIENCE, || !alive(daemon));
    send_batch(25..50);
    assert_eq!(repo.corral(&["wait", "inbox", "--timeout", "120"]).status.code(), Some(0));

    let log = String::from_utf8_lossy(&repo.log("/root/inbox")).into_owned();
    let got: Vec<&str> = log.lines().filter_map(|l| l.trim_end().strip_prefix("got ")).collect();
    assert_eq!(got.len(), 100, "every message once: {got:?}");
    for sender in ["alice", "bob"] {
        let mine: Vec<u32> =
            got.iter().filter_map(|m| m.strip_prefix(&format!("{sender}-"))).map(|n| n.parse().unwrap()).collect();
        assert_eq!(mine, (0..50).collect::<Vec<u32>>(), "{sender}'s messages in order");
    }
    let all = events(&repo);
    let sent = all.iter().filter(|e| e["type"] == "message_sent").count();
    let delivered = all.iter().filter(|e| e["type"] == "message_delivered").count();
    assert_eq!((sent, delivered), (100, 100));
    assert!(all.iter().any(|e| e["type"] == "message_sent" && e["from"] == "/root/alice" && e["to"] == "/root/inbox"));
}

#[test]
fn assign_gives_an_idle_agent_its_next_task_and_queues_for_a_busy_one() {
    let repo = TestRepo::new();
    let bin = corral_bin();
    let bin = bin.to_str().unwrap();
    repo.corral_ok(&["spawn", "worker", "--task", "first", "--", bin, "fake-agent", "env CORRAL_TASK; exit 0"]);
    repo.corral_ok(&["wait", "worker"]);
    let first_id = repo.agent("/root/worker")["task_id"].as_str().unwrap().to_string();

    let assigned = repo.corral_json(&["assign", "worker", "second", "--json"]);
    assert_ne!(assigned["task_id"].as_str().unwrap(), first_id);
    assert_eq!(repo.corral(&["wait", "worker", "--timeout", "60"]).status.code(), Some(0));
    let agent = repo.agent("/root/worker");
    assert_eq!((agent["task"].as_str(), agent["state"].as_str()), (Some("second"), Some("succeeded")), "{agent}");
    let log = String::from_utf8_lossy(&repo.log("/root/worker")).into_owned();
    assert!(log.contains("CORRAL_TASK=first") && log.contains("CORRAL_TASK=second"), "{log}");

    // Never to /root.
    let out = repo.corral(&["assign", "/root", "anything"]);
    assert_eq!(out.status.code(), Some(11));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/root is the caller"));

    // A busy agent only with --queue, and then when it finishes.
    let go = repo.path("go");
    let script = format!("wait-file {}; env CORRAL_TASK; exit 0", go.display());
    repo.corral_ok(&["spawn", "busy", "--task", "now", "--", bin, "fake-agent", &script]);
    let out = repo.corral(&["assign", "busy", "later"]);
    assert_eq!(out.status.code(), Some(11));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is busy (running)"));
    repo.corral_ok(&["assign", "busy", "later", "--queue"]);
    std::fs::write(&go, "").unwrap();
    poll_until("the queued task to run", PATIENCE, || {
        let agent = repo.agent("/root/busy");
        agent["task"] == "later" && agent["state"] == "succeeded"
    });
    let log = String::from_utf8_lossy(&repo.log("/root/busy")).into_owned();
    assert!(log.contains("CORRAL_TASK=now") && log.contains("CORRAL_TASK=later"), "{log}");
    let assigned: Vec<Value> = events(&repo).into_iter().filter(|e| e["type"] == "assigned").collect();
    assert_eq!(assigned.len(), 2, "{assigned:?}");
}

#[test]
fn a_roles_sandbox_and_reasoning_effort_reach_the_codex_command_line() {
    let repo = TestRepo::new();
    std::fs::write(
        repo.repo.join("corral.toml"),
        "[agents.auditor]\nharness = \"codex\"\nsandbox = \"read-only\"\nreasoning_effort = \"high\"\n",
    )
    .unwrap();
    // A stand-in for codex that prints the arguments it was given.
    let codex = repo.path("codex.sh");
    std::fs::write(&codex, "#!/bin/sh\necho \"ARGS $*\"\n").unwrap();
    std::fs::set_permissions(&codex, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = repo
        .command()
        .env("CORRAL_CODEX_BIN", &codex)
        .args(["spawn", "audit", "--role", "auditor", "--task", "look around"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    repo.corral(&["wait", "audit", "--timeout", "60"]);
    let log = String::from_utf8_lossy(&repo.log("/root/audit")).into_owned();
    let args = log.lines().find(|l| l.starts_with("ARGS ")).unwrap_or_else(|| panic!("{log}"));
    assert!(args.contains("--sandbox read-only"), "{args}");
    assert!(args.contains("-c model_reasoning_effort=high"), "{args}");
    assert!(args.ends_with("look around"), "{args}");
}
