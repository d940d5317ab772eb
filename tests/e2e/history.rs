//! A long history: `corral ps`, `ps --all`, `events --since` and a daemon
//! restart with 200,000 events in the journal, and a daemon killed while
//! it writes a snapshot of the table.
//!
//! The history is written the way a daemon writes it, through the journal
//! module (`Journal::append`), from one real agent's events copied for
//! many agents, while no daemon runs.

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use corral::daemon::journal::{Draft, Journal};
use corral::model::address::Address;
use corral::model::event::{Event, EventBody};
use corral_e2e::{poll_until, TestRepo, PATIENCE};
use serde_json::Value;

/// Runs one real agent (`/root/h`), stops the daemon; its events are the
/// template for the copies.
fn repo_with_one_agent() -> TestRepo {
    let repo = TestRepo::new();
    repo.spawn_fake("h", "exit 0");
    repo.corral_ok(&["wait", "h"]);
    shut_down(&repo);
    repo
}

fn shut_down(repo: &TestRepo) {
    let daemon = repo.daemon_pid();
    repo.corral_ok(&["shutdown"]);
    if let Some(pid) = daemon {
        poll_until("the daemon to exit", PATIENCE, || !corral_e2e::alive(pid));
    }
}

/// Appends copies of `/root/h`'s events for agents `/root/h<from>` ... on,
/// until the journal holds at least `until` events; returns the journal's
/// last seq and the number of the last agent.
fn grow(repo: &TestRepo, from: usize, until: u64) -> (u64, usize) {
    let path = repo.state_dir().join("events.jsonl");
    let (mut journal, events) = Journal::open(&path).unwrap();
    let template: Vec<Event> =
        events.into_iter().filter(|e| e.agent.as_ref().is_some_and(|a| a.to_string() == "/root/h")).collect();
    assert!(template.len() >= 3, "the template agent's events: {}", template.len());
    let mut i = from;
    while journal.last_seq() < until {
        let mut drafts = Vec::new();
        for _ in 0..2_000 {
            let address = Address::parse(&format!("/root/h{i}")).unwrap();
            for event in &template {
                let mut body = event.body.clone();
                if let EventBody::Spawned { id, branch, .. } = &mut body {
                    *id = 1_000 + i as u64;
                    *branch = format!("corral/h{i}");
                }
                let task = Some(format!("t-h{i}"));
                drafts.push(Draft { agent: Some(address.clone()), parent: event.parent.clone(), task, body });
            }
            i += 1;
        }
        journal.append(drafts).unwrap();
    }
    (journal.last_seq(), i - 1)
}

fn ps_all(repo: &TestRepo) -> Vec<Value> {
    repo.corral_json(&["ps", "--all", "--json"]).as_array().cloned().expect("an array")
}

/// The journal's last seq, read from its last line.
fn last_seq(repo: &TestRepo) -> u64 {
    let text = std::fs::read_to_string(repo.state_dir().join("events.jsonl")).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    last["seq"].as_u64().unwrap()
}

#[test]
fn ps_ps_all_events_since_and_a_restart_with_200_000_events_behind_them() {
    let repo = repo_with_one_agent();
    let (_, last_agent) = grow(&repo, 1, 200_000);
    let agents = last_agent + 1;

    // `ps`: the recent view, and a word about the rest; never the frame limit.
    let recent = repo.corral_json(&["ps", "--json"]);
    let recent = recent.as_array().unwrap();
    assert_eq!(recent.len(), 100, "the recent view holds the hundred that ended last");
    let human = repo.corral_ok(&["ps"]);
    let older = format!("({} older agents not shown: `corral ps --all` lists every agent)", agents - 100);
    assert!(human.contains(&older), "{human}");

    // `ps --all`: every agent, once, in page after page.
    let all = ps_all(&repo);
    assert_eq!(all.len(), agents);
    let mut addresses: Vec<&str> = all.iter().map(|a| a["address"].as_str().unwrap()).collect();
    addresses.dedup();
    assert_eq!(addresses.len(), agents, "an agent came twice");
    assert!(all.iter().all(|a| a["state"] == "succeeded"));

    // `events --since` near the end: exactly what follows.
    let last = last_seq(&repo);
    let out = repo.corral_ok(&["events", "--since", &(last - 5).to_string(), "--json"]);
    let seqs: Vec<u64> =
        out.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (last - 4..=last).collect::<Vec<_>>());
    let out = repo.corral_ok(&["events", "--since", "199990", "--agent", &format!("/root/h{last_agent}"), "--json"]);
    assert!(out.lines().count() >= 1, "the last agent's events: {out}");

    // A restart starts from the snapshot the first daemon wrote, and folds
    // to the same table.
    shut_down(&repo);
    let snapshot = repo.state_dir().join("snapshot.jsonl");
    assert!(snapshot.exists(), "no snapshot after 200,000 events");
    let started = Instant::now();
    let again = ps_all(&repo);
    println!("a restart and `ps --all` took {:?} (a debug build)", started.elapsed());
    assert_eq!(again, all, "the table after a restart is not the one before it");
    // New ids go on after the history's.
    let spawned = repo.spawn_fake("after", "exit 0");
    let id = repo.agent("/root/after")["id"].as_u64().unwrap();
    assert!(id > 1_000 + last_agent as u64, "id {id} of {spawned} reuses one of the history's");
}

#[test]
fn a_daemon_killed_while_writing_a_snapshot_loses_nothing_and_uses_no_half_made_one() {
    let repo = repo_with_one_agent();
    let state = repo.state_dir();
    let (snapshot, tmp, fault) =
        (state.join("snapshot.jsonl"), state.join("snapshot.jsonl.tmp"), state.join("snapshot.fault"));
    let mut next = 1;
    for point in ["kill:mid", "kill:before-rename", "kill:after-rename"] {
        // Enough new events that the next daemon snapshots at its first commit.
        let (seq, last_agent) = grow(&repo, next, last_seq(&repo) + 25_000);
        next = last_agent + 1;
        let before = std::fs::read(&snapshot).ok();
        std::fs::write(&fault, point).unwrap();
        let mut daemon = repo.command().env("CORRAL_FAULT_INJECTION", "1").arg("daemon").spawn().unwrap();
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = daemon.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "{point}: the daemon did not kill itself while snapshotting");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.signal(), Some(9), "{point}: the daemon ended otherwise: {status:?}");
        std::fs::remove_file(&fault).unwrap();
        match point {
            // The old snapshot (or none) stays in use, byte for byte.
            "kill:mid" | "kill:before-rename" => {
                assert_eq!(std::fs::read(&snapshot).ok(), before, "{point}: the snapshot in use changed")
            }
            _ => assert_ne!(std::fs::read(&snapshot).ok(), before, "{point}: the new snapshot is not in place"),
        }

        // The next daemon loses nothing, whichever snapshot it starts from,
        // and never reads what the crash left half-made.
        let all = ps_all(&repo);
        assert!(!tmp.exists(), "{point}: the half-made snapshot is still there");
        assert_eq!(all.len(), last_agent + 1, "{point}: agents lost");
        assert!(all.iter().all(|a| a["state"] == "succeeded"), "{point}");
        assert!(last_seq(&repo) > seq, "{point}: the journal lost events");
        shut_down(&repo);
        assert!(snapshot.exists(), "{point}: the restarted daemon wrote no snapshot");
        assert_eq!(ps_all(&repo), all, "{point}: the new snapshot folds to another table");
        shut_down(&repo);
    }
}

#[test]
fn a_snapshot_the_journal_does_not_hold_is_set_aside_and_the_journal_folded() {
    let repo = repo_with_one_agent();
    grow(&repo, 1, 20_001);
    let all = ps_all(&repo);
    shut_down(&repo);
    let state = repo.state_dir();
    assert!(state.join("snapshot.jsonl").exists());
    // The journal replaced by hand with an older copy of itself: the
    // snapshot names a seq it no longer holds.
    let journal = state.join("events.jsonl");
    let text = std::fs::read_to_string(&journal).unwrap();
    let kept: Vec<&str> = text.lines().take(10_000).collect();
    std::fs::write(&journal, kept.join("\n") + "\n").unwrap();
    let fewer = ps_all(&repo);
    assert!(fewer.len() < all.len() && !fewer.is_empty(), "{} of {}", fewer.len(), all.len());
    let aside = std::fs::read_dir(&state).unwrap().flatten();
    assert_eq!(aside.filter(|e| e.file_name().to_string_lossy().starts_with("snapshot.jsonl.unused-")).count(), 1);
}

/// VmHWM (peak RSS) in kB of a live process.
fn peak_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?.trim().parse().ok()).unwrap_or(0)
}

#[test]
fn a_restarted_daemon_with_many_done_agents_answers_ps_all_view_and_assign_to_an_old_one() {
    let repo = repo_with_one_agent();
    let view = repo.corral_ok(&["view", "h"]);
    shut_down(&repo);
    let (_, last_agent) = grow(&repo, 1, 30_000);
    let all = ps_all(&repo);
    assert_eq!(all.len(), last_agent + 1);
    shut_down(&repo);
    // The done agents' records were put away, written once beside the
    // snapshot, which holds only their summaries.
    let state = repo.state_dir();
    let (snapshot, done) = (state.join("snapshot.jsonl"), state.join("done.jsonl"));
    let (snapshot_len, done_len) =
        (std::fs::metadata(&snapshot).unwrap().len(), std::fs::metadata(&done).unwrap().len());
    assert!(snapshot_len * 4 < done_len, "snapshot {snapshot_len} bytes, done.jsonl {done_len}");

    // A new daemon, from that snapshot: the same list, the old agent's
    // record and output, whole.
    assert_eq!(ps_all(&repo), all, "the table after a restart is not the one before it");
    assert_eq!(repo.corral_ok(&["view", "h"]), view);
    let old = repo.agent("/root/h");
    assert_eq!((old["state"].as_str(), old["task"].as_str()), (Some("succeeded"), Some("test task")), "{old}");
    let copy = repo.agent(&format!("/root/h{last_agent}"));
    assert_eq!(copy["branch"], format!("corral/h{last_agent}"), "{copy}");

    // An old agent takes a new task: its record comes back, runs, ends.
    repo.corral_ok(&["assign", "h", "second"]);
    assert_eq!(repo.corral(&["wait", "h", "--timeout", "60"]).status.code(), Some(0));
    let again = repo.agent("/root/h");
    assert_eq!((again["state"].as_str(), again["task"].as_str()), (Some("succeeded"), Some("second")), "{again}");
    assert_eq!(again["id"], old["id"]);
    assert!(again["runs"].as_u64() > old["runs"].as_u64(), "{again}");
    // And a restart after that folds the new run too.
    shut_down(&repo);
    assert_eq!(repo.agent("/root/h")["task"], "second");
    assert_eq!(ps_all(&repo).len(), all.len());
}

/// VmHWM the daemon stays under with 100,000 done agents, in kB: generous
/// (a debug build, a loaded machine). Holding every record took about
/// 340 MB; `cargo bench -p corral --bench history` gives the figure.
const HISTORY_BOUND_KB: u64 = 120_000;

#[test]
fn a_daemon_with_100_000_done_agents_stays_small() {
    let repo = repo_with_one_agent();
    let (_, last_agent) = grow(&repo, 1, 300_000);
    assert!(last_agent >= 100_000, "{last_agent} agents");
    // The first daemon folds the whole journal, putting away as it goes;
    // the second starts from the snapshot it left.
    for start in ["from the journal", "from the snapshot"] {
        let recent = repo.corral_json(&["ps", "--json"]);
        assert_eq!(recent.as_array().map(Vec::len), Some(100), "{start}");
        let daemon = repo.daemon_pid().unwrap();
        let peak = peak_kb(daemon);
        println!("{start}: the daemon's peak RSS is {peak} kB");
        assert!(peak > 0 && peak < HISTORY_BOUND_KB, "{start}: peak RSS {peak} kB, over {HISTORY_BOUND_KB}");
        shut_down(&repo);
    }
}
