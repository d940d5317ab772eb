//! Probes and restart policies, with Kubernetes semantics, on real agents:
//! readiness never restarts, startup gates liveness, a timed-out exec probe
//! is a failure, success_threshold is honoured, and a liveness failure
//! restarts with a doubling back-off and a count that only grows.
//!
//! Probe commands write to files in the agent's worktree, so a test can
//! count how often each ran without racing the daemon.

use std::path::{Path, PathBuf};

use corral_e2e::{corral_bin, poll_until, TestRepo, PATIENCE};
use serde_json::Value;

fn spawn(repo: &TestRepo, name: &str, flags: &[&str], script: &str) -> PathBuf {
    let bin = corral_bin();
    let mut args = vec!["spawn", name, "--json", "--grace", "0"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--", bin.to_str().unwrap(), "fake-agent", script]);
    let spawned = repo.corral_json(&args);
    PathBuf::from(spawned["worktree"].as_str().unwrap())
}

fn events(repo: &TestRepo, address: &str, kind: &str) -> Vec<Value> {
    repo.corral_ok(&["events", "--agent", address])
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["type"] == kind)
        .collect()
}

fn lines_in(path: &Path) -> usize {
    std::fs::read_to_string(path).map(|t| t.lines().count()).unwrap_or(0)
}

#[test]
fn a_failing_readiness_probe_never_restarts_or_stops_the_agent() {
    let repo = TestRepo::new();
    let probe = r#"{ exec = { command = ["sh", "-c", "echo run >> readiness-runs; exit 1"] }, period_seconds = 0.1, failure_threshold = 1 }"#;
    let worktree = spawn(&repo, "shy", &["--readiness", probe, "--restart", "Always", "--backoff", "0.1"], "hang");
    poll_until("ten readiness runs", PATIENCE, || lines_in(&worktree.join("readiness-runs")) >= 10);
    let agent = repo.agent("/root/shy");
    assert_eq!(agent["state"], "running", "{agent}");
    assert_eq!(agent["ready"], false, "{agent}");
    assert_eq!(agent["restarts"], 0, "{agent}");
    assert!(events(&repo, "/root/shy", "restarted").is_empty());
    assert!(repo.corral_ok(&["ps"]).contains("running (not ready)"));
    let probes = events(&repo, "/root/shy", "probe");
    assert!(probes.iter().all(|p| p["change"] != "kill"), "{probes:?}");
}

#[test]
fn a_startup_probe_holds_back_liveness_until_it_passes() {
    let repo = TestRepo::new();
    let startup = r#"{ file_exists = "started", period_seconds = 0.1, failure_threshold = 100 }"#;
    let liveness = r#"{ exec = { command = ["sh", "-c", "if test -f started; then echo ok >> live-ok; else echo early >> live-early; fi"] }, period_seconds = 0.1 }"#;
    let worktree =
        spawn(&repo, "slowstart", &["--startup", startup, "--liveness", liveness], "sleep 1; write started yes; hang");
    poll_until("liveness to run after startup", PATIENCE, || lines_in(&worktree.join("live-ok")) >= 3);
    assert_eq!(lines_in(&worktree.join("live-early")), 0, "liveness ran before startup passed");
    // The probe's verdict is journaled by the daemon, which may come a
    // little after liveness began: wait for it rather than race it.
    poll_until("startup passing with no readiness probe to make it ready", PATIENCE, || {
        repo.agent("/root/slowstart")["ready"] == true
    });
}

#[test]
fn an_exec_probe_that_times_out_is_a_failure() {
    let repo = TestRepo::new();
    let liveness = r#"{ exec = { command = ["sleep", "30"] }, timeout_seconds = 0.2, period_seconds = 0.2, failure_threshold = 2 }"#;
    spawn(&repo, "stuck", &["--liveness", liveness], "hang");
    let out = repo.corral(&["wait", "stuck", "--timeout", "60"]);
    assert_eq!(out.status.code(), Some(20), "a liveness kill with restart Never ends the agent failed");
    let agent = repo.agent("/root/stuck");
    assert_eq!(agent["state"], "failed", "{agent}");
    assert!(agent["reason"].as_str().unwrap().starts_with("liveness probe failed"), "{agent}");
    let kill = events(&repo, "/root/stuck", "probe").into_iter().find(|p| p["change"] == "kill").unwrap();
    assert_eq!(kill["verdict"], "liveness_failed");
    assert_eq!(kill["timed_out"], true, "{kill}");
    assert_eq!(kill["consecutive_failures"], 2, "{kill}");
    // The probe's own process did not outlive its timeout.
    assert!(repo.agent_processes("/root/stuck").is_empty());
}

#[test]
fn success_threshold_is_honoured() {
    let repo = TestRepo::new();
    let readiness = r#"{ exec = { command = ["sh", "-c", "echo run >> ready-runs"] }, period_seconds = 0.1, success_threshold = 3 }"#;
    let worktree = spawn(&repo, "careful", &["--readiness", readiness], "hang");
    poll_until("the agent to become ready", PATIENCE, || repo.agent("/root/careful")["ready"] == true);
    assert!(lines_in(&worktree.join("ready-runs")) >= 3);
    let ready = events(&repo, "/root/careful", "probe").into_iter().find(|p| p["change"] == "ready").unwrap();
    assert_eq!(ready["consecutive_successes"], 3, "{ready}");
}

#[test]
fn liveness_failures_restart_with_a_doubling_backoff_and_a_growing_count() {
    let repo = TestRepo::new();
    // Each run says "up" (so startup passes), then fails liveness at once.
    let startup = r#"{ log_line = "^up$", period_seconds = 0.05, failure_threshold = 1000 }"#;
    let liveness = r#"{ exec = { command = ["false"] }, period_seconds = 0.1, failure_threshold = 1 }"#;
    spawn(
        &repo,
        "flaky",
        &[
            "--startup",
            startup,
            "--liveness",
            liveness,
            "--restart",
            "Always",
            "--backoff",
            "0.2",
            "--max-backoff",
            "0.8",
            "--restart-limit",
            "4",
        ],
        "stamp 1 1; print up; hang",
    );
    let out = repo.corral(&["wait", "flaky", "--timeout", "120"]);
    assert_eq!(out.status.code(), Some(20), "after the last allowed restart, the next kill is final");
    let restarted = events(&repo, "/root/flaky", "restarted");
    let counts: Vec<u64> = restarted.iter().map(|e| e["count"].as_u64().unwrap()).collect();
    assert_eq!(counts, [1, 2, 3, 4], "{restarted:?}");
    let backoffs: Vec<f64> = restarted.iter().map(|e| e["backoff_secs"].as_f64().unwrap()).collect();
    assert_eq!(backoffs, [0.2, 0.4, 0.8, 0.8]);
    assert!(restarted.iter().all(|e| e["reason"] == "a liveness or startup probe failed"), "{restarted:?}");
    // Each restart waited its back-off before the agent started again: the
    // runs' own clock (each prints `stamp 1 <ns>` first) says so, whatever
    // the daemon's delay in journaling what the monitor told it.
    let all: Vec<Value> = repo
        .corral_ok(&["events", "--agent", "/root/flaky"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let log = String::from_utf8_lossy(&repo.log("/root/flaky")).into_owned();
    let starts: Vec<i128> =
        log.lines().filter_map(|l| l.trim_end().strip_prefix("stamp 1 ")).map(|n| n.parse().unwrap()).collect();
    assert_eq!(starts.len(), 5, "a stamp from every run\n{log}");
    for (i, event) in restarted.iter().enumerate() {
        let gap_ms = (starts[i + 1] - starts[i]) / 1_000_000;
        let backoff_ms = (event["backoff_secs"].as_f64().unwrap() * 1000.0) as i128;
        assert!(
            gap_ms >= backoff_ms,
            "run {} started {gap_ms} ms after run {}, back-off {backoff_ms} ms",
            i + 2,
            i + 1
        );
    }
    let agent = repo.agent("/root/flaky");
    assert_eq!(agent["restarts"], 4);
    assert_eq!(agent["state"], "failed", "{agent}");
    // Every run printed, in the one log.
    let brief: Vec<String> =
        all.iter().map(|e| format!("{} {} {} {}", e["seq"], e["type"], e["change"], e["probe"])).collect();
    assert_eq!(log.lines().filter(|l| l.trim_end() == "up").count(), 5, "{log}\n{}", brief.join("\n"));
}

#[test]
fn on_failure_restarts_a_crashing_agent_but_not_a_stopped_one() {
    let repo = TestRepo::new();
    spawn(
        &repo,
        "crasher",
        &["--restart", "OnFailure", "--backoff", "0.1", "--restart-limit", "2"],
        "print try; exit 3",
    );
    let out = repo.corral(&["wait", "crasher", "--timeout", "60"]);
    assert_eq!(out.status.code(), Some(20));
    let agent = repo.agent("/root/crasher");
    assert_eq!((agent["restarts"].as_u64(), agent["exit_code"].as_i64()), (Some(2), Some(3)), "{agent}");

    spawn(&repo, "fine", &["--restart", "OnFailure", "--backoff", "0.1"], "exit 0");
    assert_eq!(repo.corral(&["wait", "fine", "--timeout", "60"]).status.code(), Some(0));
    assert_eq!(repo.agent("/root/fine")["restarts"], 0);

    spawn(&repo, "forever", &["--restart", "Always", "--backoff", "0.1"], "hang");
    repo.corral_ok(&["stop", "forever", "--grace", "0"]);
    let agent = repo.agent("/root/forever");
    assert_eq!((agent["state"].as_str(), agent["restarts"].as_u64()), (Some("stopped"), Some(0)), "{agent}");
}

#[test]
fn a_message_sent_during_a_restarts_back_off_reaches_the_next_run() {
    // The first run fails at once; the message comes while the agent waits
    // to start again, and the next run reads it.
    let repo = TestRepo::new();
    let command = "if [ -f ran ]; then read line; echo \"got $line\"; sleep 30; else touch ran; exit 1; fi";
    let args =
        ["spawn", "again", "--restart", "OnFailure", "--backoff", "3", "--grace", "0", "--", "sh", "-c", command];
    repo.corral_ok(&args);
    poll_until("the restart's back-off", PATIENCE, || !events(&repo, "/root/again", "restarted").is_empty());
    repo.corral_ok(&["send", "/root/again", "hello from the back-off"]);
    poll_until("the next run to read the message", PATIENCE, || {
        String::from_utf8_lossy(&repo.log("/root/again")).contains("got hello from the back-off")
    });
    let delivered = events(&repo, "/root/again", "message_delivered");
    let started = events(&repo, "/root/again", "started");
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert!(delivered[0]["seq"].as_u64() > started.last().unwrap()["seq"].as_u64(), "delivered before the run began");
    repo.corral_ok(&["stop", "/root/again"]);
}

#[test]
fn a_stop_of_an_agent_that_restarts_without_pause_leaves_nothing_running_and_starts_nothing() {
    // A crash loop with no back-off: a stop lands at any point of it,
    // also between a run's end and the next's start.
    let repo = TestRepo::new();
    for round in 0..15 {
        let name = format!("loop{round}");
        let address = format!("/root/{name}");
        let args =
            ["spawn", &name, "--restart", "Always", "--backoff", "0", "--grace", "0", "--", "sh", "-c", "exit 1"];
        repo.corral_ok(&args);
        poll_until("a few restarts", PATIENCE, || events(&repo, &address, "restarted").len() >= 2);
        repo.corral_ok(&["stop", &address]);
        let agent = repo.agent(&address);
        assert_eq!(agent["state"], "stopped", "round {round}: {agent}");
        assert!(repo.agent_processes(&address).is_empty(), "round {round}: a process was left");
        let all = repo.corral_ok(&["events", "--agent", &address]);
        let kinds: Vec<String> = all
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["type"].as_str().unwrap_or("").to_string())
            .collect();
        // Runs the monitor started before the stop reached it are stopped
        // too (their events may come after `stop_requested`); none starts
        // once the agent has ended.
        assert!(kinds.contains(&"stop_requested".to_string()), "{kinds:?}");
        assert_eq!(kinds.last().map(String::as_str), Some("exited"), "round {round}: {kinds:?}");
    }
}
