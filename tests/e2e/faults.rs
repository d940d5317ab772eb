//! Faults: a full disk, a damaged journal and a daemon killed in the
//! middle of an append never damage the journal (a read-only state folder
//! and injected short writes: `regressions`): it
//! stays a run of whole lines with contiguous seqs, changes are refused
//! with the cause while it cannot be written, and the daemon takes them
//! again by itself once it can.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use corral_e2e::{corral_bin, poll_until, TestRepo, PATIENCE};
use serde_json::Value;

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The journal's events; panics unless it is whole lines with seqs 1, 2, ...
fn whole_journal(repo: &TestRepo) -> Vec<Value> {
    let bytes = std::fs::read(repo.state_dir().join("events.jsonl")).unwrap();
    assert!(bytes.is_empty() || bytes.ends_with(b"\n"), "the journal ends in a torn line");
    let mut events = Vec::new();
    for (n, line) in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()).enumerate() {
        let event: Value = serde_json::from_slice(line)
            .unwrap_or_else(|e| panic!("journal line {} is not whole ({e}): {}", n + 1, String::from_utf8_lossy(line)));
        assert_eq!(event["seq"], n as u64 + 1, "journal line {}", n + 1);
        events.push(event);
    }
    events
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

fn spawn_args<'a>(name: &'a str, script: &'a str, bin: &'a str) -> Vec<&'a str> {
    vec!["spawn", name, "--", bin, "fake-agent", script]
}

/// A small tmpfs mounted on the repository's state folder, unmounted
/// (lazily, so a process still holding a file cannot keep it) on drop.
struct SmallDisk {
    at: PathBuf,
}

impl SmallDisk {
    /// None (with the reason printed) where the test cannot mount.
    fn mount(at: &Path, size: &str) -> Option<SmallDisk> {
        if !nix::unistd::Uid::effective().is_root() {
            println!("skipped: mounting a tmpfs needs root");
            return None;
        }
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(at).output();
        match out {
            Ok(out) if out.status.success() => Some(SmallDisk { at: at.to_path_buf() }),
            Ok(out) => {
                println!("skipped: cannot mount a tmpfs here: {}", stderr(&out).trim());
                None
            }
            Err(err) => {
                println!("skipped: no mount command: {err}");
                None
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).output();
    }
}

#[test]
fn a_full_disk_refuses_changes_keeps_reads_and_recovers_by_itself() {
    let repo = TestRepo::new();
    let state = repo.state_dir();
    let Some(disk) = SmallDisk::mount(&state, "2m") else { return };
    let bin = corral_bin();
    let bin = bin.to_str().unwrap();
    // Room to give back later.
    let ballast = state.join("ballast");
    std::fs::write(&ballast, vec![0u8; 512 * 1024]).unwrap();
    repo.corral_ok(&spawn_args("before", "print up; hang", bin));
    // An agent that prints far more than the disk holds: it must not block.
    repo.corral_ok(&spawn_args("flood", "flood 6000000; print flood done", bin));
    poll_until("the flood to end", PATIENCE, || repo.agent_processes("/root/flood").is_empty());

    // A spawn whose event needs a new page of the full disk: the journal
    // itself cannot take it.
    let long_task = "x".repeat(20_000);
    let out = repo.corral(&["spawn", "during", "--task", &long_task, "--", bin, "fake-agent", "print x"]);
    assert_eq!(code(&out), Some(15), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(message.contains("is full") && message.contains("nothing was started"), "{message}");
    assert!(message.contains(state.to_str().unwrap()), "names the folder: {message}");
    // Reads answer.
    assert_eq!(repo.agent("/root/before")["state"], "running");

    // Space comes back: the daemon takes changes again without a restart.
    std::fs::remove_file(&ballast).unwrap();
    let daemon = repo.daemon_pid();
    poll_until("a spawn to go through", PATIENCE, || {
        code(&repo.corral(&spawn_args("after", "print ok", bin))) == Some(0)
    });
    assert_eq!(repo.daemon_pid(), daemon, "the daemon was restarted");
    poll_until("the flood's exit to be recorded", PATIENCE, || repo.agent("/root/flood")["state"] != "running");
    repo.corral_ok(&["stop", "before", "--grace", "0"]);

    let events = whole_journal(&repo);
    let resumed = of_type(&events, "journal_resumed");
    assert_eq!(resumed.len(), 1, "{resumed:?}");
    assert!(resumed[0]["failed"].as_u64().unwrap() >= 1, "{}", resumed[0]);
    assert!(resumed[0]["error"].as_str().unwrap().contains("No space left"), "{}", resumed[0]);
    assert!(of_type(&events, "spawned").iter().all(|e| e["agent"] != "/root/during"), "a refused spawn was journaled");
    // The monitor told the daemon at once, and keeps its exit record as
    // soon as the disk lets it.
    let exit_file = state.join(format!("agents/{}/exit.json", repo.agent("/root/flood")["id"]));
    poll_until("the flood's exit record", PATIENCE, || exit_file.exists());
    let exit: Value = serde_json::from_slice(&std::fs::read(&exit_file).unwrap()).unwrap();
    assert!(exit["log_bytes_lost"].as_u64().unwrap_or(0) > 0, "the log's loss is recorded: {exit}");
    drop(disk);
}

#[test]
fn a_damaged_line_in_the_middle_is_reported_and_the_daemon_starts_from_the_whole_prefix() {
    let repo = TestRepo::new();
    let bin = corral_bin();
    let bin = bin.to_str().unwrap();
    for name in ["a", "b"] {
        repo.corral_ok(&spawn_args(name, "print hello", bin));
    }
    repo.corral_ok(&["wait", "a", "b"]);
    repo.corral_ok(&["shutdown"]);
    poll_until("the daemon to go", PATIENCE, || !repo.state_dir().join("daemon.sock").exists());
    let path = repo.state_dir().join("events.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let total = lines.len();
    let broken = total / 2;
    let cut = &lines[broken][..lines[broken].len() / 2].to_string();
    lines[broken] = cut;
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();

    // The next command starts a daemon, which repairs and says so.
    repo.corral_ok(&["ps"]);
    let events = whole_journal(&repo);
    assert_eq!(events[broken - 1]["seq"], broken as u64, "the prefix is kept");
    let repaired = of_type(&events, "journal_repaired");
    assert_eq!(repaired.len(), 1, "{repaired:?}");
    assert_eq!(repaired[0]["line"], broken as u64 + 1);
    let kept = std::fs::read_to_string(repaired[0]["moved_to"].as_str().unwrap()).unwrap();
    assert_eq!(kept.lines().count(), total - broken, "the damaged part is kept aside");
    // A subscriber resuming anywhere misses and repeats nothing.
    let since = broken as u64 - 2;
    let out = repo.corral_ok(&["events", "--since", &since.to_string()]);
    let seqs: Vec<u64> =
        out.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["seq"].as_u64().unwrap()).collect();
    let expected: Vec<u64> = (since + 1..=events.len() as u64).collect();
    assert_eq!(seqs, expected);
    // And it goes on.
    repo.corral_ok(&spawn_args("c", "print again", bin));
    repo.corral_ok(&["wait", "c"]);
    whole_journal(&repo);
}

#[test]
fn a_daemon_killed_at_any_point_of_an_append_leaves_at_most_a_torn_last_line() {
    let repo = TestRepo::new();
    let bin = corral_bin();
    let bin = bin.to_str().unwrap();
    let start = repo.command().env("CORRAL_FAULT_INJECTION", "1").args(["ps"]).output().unwrap();
    assert_eq!(code(&start), Some(0), "{}", stderr(&start));
    let fault = repo.state_dir().join("journal.fault");
    for (i, point) in ["kill:before", "kill:mid", "kill:after-write", "kill:after-sync"].iter().enumerate() {
        let daemon = repo.daemon_pid().unwrap();
        std::fs::write(&fault, point).unwrap();
        let name = format!("victim{i}");
        let out = repo.corral(&spawn_args(&name, "print hi", bin));
        assert_ne!(code(&out), Some(0), "{point}: the spawn went through a killed daemon");
        poll_until("the daemon to die", PATIENCE, || !corral_e2e::alive(daemon));
        std::fs::remove_file(&fault).unwrap();
        // The next daemon (with the seam still on) cuts a torn last line.
        let out = repo.command().env("CORRAL_FAULT_INJECTION", "1").args(["ps", "--json"]).output().unwrap();
        assert_eq!(code(&out), Some(0), "{point}: {}", stderr(&out));
        let events = whole_journal(&repo);
        let spawned = of_type(&events, "spawned").iter().any(|e| e["agent"] == format!("/root/{name}"));
        // Only a write that was made durable may be there; never half of one.
        match *point {
            "kill:before" | "kill:mid" => assert!(!spawned, "{point}: an unwritten spawn is in the journal"),
            _ => {}
        }
    }
    // Whatever was kept settles: nothing is left half-made and running.
    repo.corral_ok(&spawn_args("last", "print done", bin));
    repo.corral_ok(&["wait", "last"]);
    whole_journal(&repo);
}

#[test]
fn a_merge_whose_start_cannot_be_journaled_moves_nothing_and_goes_in_once_it_can() {
    let repo = TestRepo::new();
    let bin = corral_bin();
    let bin = bin.to_str().unwrap();
    let start = repo.command().env("CORRAL_FAULT_INJECTION", "1").args(["ps"]).output().unwrap();
    assert_eq!(code(&start), Some(0), "{}", stderr(&start));
    repo.corral_ok(&spawn_args("w", "write made.txt hi; commit work; exit 0", bin));
    poll_until("w to succeed", PATIENCE, || repo.agent("/root/w")["state"] == "succeeded");
    let before = repo.git(&["rev-parse", "main"]);

    // The journal refuses every write: the merge must not move main, since
    // a restarted daemon could not know a merge was under way.
    let fault = repo.state_dir().join("journal.fault");
    std::fs::write(&fault, "ENOSPC").unwrap();
    let mut merge = ChildGuard(repo.command().args(["merge", "w"]).spawn().unwrap());
    let waited = std::time::Instant::now();
    while waited.elapsed() < std::time::Duration::from_secs(3) {
        assert_eq!(repo.git(&["rev-parse", "main"]), before, "main moved with no merge_started journaled");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::fs::remove_file(&fault).unwrap();
    // main moves first, then `merged` is journaled: wait for both.
    let merged_journaled = || whole_journal(&repo).iter().any(|e| e["agent"] == "/root/w" && e["type"] == "merged");
    poll_until("the merge to go in", PATIENCE, || repo.git(&["rev-parse", "main"]) != before && merged_journaled());
    assert!(repo.repo.join("made.txt").exists(), "the checkout followed");
    let _ = merge.0.wait();
    let events = whole_journal(&repo);
    let w: Vec<&Value> = events.iter().filter(|e| e["agent"] == "/root/w").collect();
    let started = w.iter().position(|e| e["type"] == "merge_started").expect("merge_started journaled");
    let merged = w.iter().position(|e| e["type"] == "merged").expect("merged journaled");
    assert!(started < merged, "merged before merge_started");
    assert_eq!(of_type(&events, "merged").len(), 1, "merged once");
}

/// Kills the child when dropped (a failing assertion included).
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
