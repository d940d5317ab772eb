//! Progress flows upward: a parent agent hears its children's completion
//! (and, when asked, progress digests) through its own input, journaled,
//! in order, once each, across a daemon SIGKILL; a stopped parent gets
//! nothing and nothing waits for it.

use corral_e2e::{corral_bin, poll_until, TestRepo, PATIENCE};
use serde_json::Value;

fn spawn(repo: &TestRepo, name: &str, flags: &[&str], script: &str) -> Value {
    let bin = corral_bin();
    let mut args = vec!["spawn", name, "--task", "a notify test", "--json"];
    args.extend_from_slice(flags);
    args.extend(["--", bin.to_str().unwrap(), "fake-agent", script]);
    repo.corral_json(&args)
}

fn events(repo: &TestRepo, agent: &str) -> Vec<Value> {
    repo.corral_ok(&["events", "--agent", agent]).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

fn log(repo: &TestRepo, address: &str) -> String {
    String::from_utf8_lossy(&repo.log(address)).into_owned()
}

/// The lines the parent read, as the scripted agent's `echo-input` prints
/// them (`got LINE`): what reached its input, not the terminal's echo.
fn heard(repo: &TestRepo, address: &str) -> Vec<String> {
    log(repo, address)
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("got ").map(str::to_string))
        .collect()
}

#[test]
fn a_plain_parent_hears_its_childs_completion_typed_into_its_terminal() {
    let repo = TestRepo::new();
    spawn(&repo, "lead", &[], "echo-input 1; print lead done");
    spawn(&repo, "child", &["--parent", "lead"], "print working; print the answer is 42");
    let out = repo.corral(&["wait", "lead", "--timeout", "60"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let heard = heard(&repo, "/root/lead");
    assert_eq!(heard.len(), 1, "{heard:?}");
    let notice = &heard[0];
    assert!(notice.starts_with("[corral] /root/lead/child ended: succeeded (exit 0)."), "{notice}");
    assert!(notice.contains("the answer is 42"), "the child's result: {notice}");

    // The subtree's conversation is in its events: sent by the child,
    // delivered to the parent, once each.
    let all = events(&repo, "/root/lead");
    let sent = of_type(&all, "notice_sent");
    let delivered = of_type(&all, "notice_delivered");
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!((sent[0]["agent"].as_str(), sent[0]["to"].as_str()), (Some("/root/lead/child"), Some("/root/lead")));
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(
        (delivered[0]["agent"].as_str(), delivered[0]["from"].as_str()),
        (Some("/root/lead"), Some("/root/lead/child"))
    );
    assert_eq!(sent[0]["message_id"], delivered[0]["message_id"]);
    // A child of /root tells nobody.
    spawn(&repo, "alone", &[], "print hi");
    repo.corral_ok(&["wait", "alone"]);
    assert!(of_type(&events(&repo, "/root/alone"), "notice_sent").is_empty());
}

#[test]
fn progress_digests_are_coalesced_in_order_and_survive_a_daemon_kill() {
    let repo = TestRepo::new();
    std::fs::write(repo.repo.join("corral.toml"), "[supervisor]\nprogress_interval = \"1s\"\n").unwrap();
    spawn(&repo, "lead", &[], "echo-input");
    let go = repo.path("go");
    let children: Vec<String> = (0..5).map(|i| format!("c{i}")).collect();
    for name in &children {
        // About four seconds of fast output, then done.
        let script = format!("progress 20 10; wait-file {}; progress 20 10", go.display());
        spawn(&repo, name, &["--parent", "lead", "--notify", "progress"], &script);
    }
    poll_until("a first digest", PATIENCE, || !of_type(&events(&repo, "/root/lead"), "notice_sent").is_empty());
    // The daemon dies mid-way; the next one goes on from the journal.
    let daemon = repo.daemon_pid().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    poll_until("the daemon to die", PATIENCE, || !corral_e2e::alive(daemon));
    std::fs::write(&go, "").unwrap();
    let addresses: Vec<String> = children.iter().map(|n| format!("/root/lead/{n}")).collect();
    let mut wait = vec!["wait", "--timeout", "120"];
    wait.extend(addresses.iter().map(String::as_str));
    repo.corral_ok(&wait);
    poll_until("every notice delivered", PATIENCE, || {
        let all = events(&repo, "/root/lead");
        of_type(&all, "notice_sent").len() == of_type(&all, "notice_delivered").len()
    });

    let all = events(&repo, "/root/lead");
    let heard = heard(&repo, "/root/lead");
    for name in &children {
        let address = format!("/root/lead/{name}");
        let sent: Vec<&Value> = of_type(&all, "notice_sent").into_iter().filter(|e| e["agent"] == address).collect();
        let digests: Vec<&str> =
            sent.iter().filter(|e| e["kind"] == "progress").map(|e| e["message_id"].as_str().unwrap()).collect();
        assert!(!digests.is_empty(), "{address} sent no digest");
        // In order, numbered from 1, none repeated.
        for (i, id) in digests.iter().enumerate() {
            assert!(id.ends_with(&format!("-p{}", i + 1)), "{address}: {digests:?}");
        }
        // Coalesced: at most one a second, for a few seconds of work.
        let ran = repo.agent(&address)["runtime_secs"].as_f64().unwrap_or(60.0);
        assert!(digests.len() as f64 <= ran + 2.0, "{address}: {} digests in {ran:.1}s", digests.len());
        assert_eq!(sent.iter().filter(|e| e["kind"] == "completion").count(), 1, "{address}");
        // Each reached the parent's input exactly once.
        let prefix = format!("[corral] {address} ");
        let reached = heard.iter().filter(|h| h.starts_with(&prefix)).count();
        assert_eq!(reached, sent.len(), "{address}: heard {reached} of {} notices", sent.len());
    }
    repo.corral_ok(&["stop", "lead", "--grace", "0"]);
}

#[test]
fn a_stopped_parent_gets_no_notice_and_nothing_waits_for_it() {
    let repo = TestRepo::new();
    spawn(&repo, "lead", &[], "echo-input");
    for name in ["a", "b"] {
        spawn(&repo, name, &["--parent", "lead"], "print up; hang");
    }
    poll_until("the children to run", PATIENCE, || {
        ["/root/lead/a", "/root/lead/b"].iter().all(|a| repo.agent(a)["state"] == "running")
    });
    let out = repo.corral(&["stop", "lead", "--grace", "0"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    for address in ["/root/lead", "/root/lead/a", "/root/lead/b"] {
        assert_eq!(repo.agent(address)["state"], "stopped", "{address}");
        assert!(repo.agent_processes(address).is_empty(), "{address} left processes");
    }
    assert!(of_type(&events(&repo, "/root/lead"), "notice_sent").is_empty(), "a notice went to a stopped parent");
}
