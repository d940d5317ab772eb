//! The daemon's memory follows what it reads at a time, not how much its
//! agents printed: a daemon that comes back to a backlog of floods reads
//! them slice by slice. The bound is generous (a debug build, a loaded
//! machine); `cargo bench -p corral --bench flood_memory` gives the figure.

use std::time::{Duration, Instant};

use corral_e2e::{poll_until, TestRepo, PATIENCE};

const AGENTS: usize = 4;
const BYTES: u64 = 24 << 20;
/// VmHWM the daemon stays under, in kB: twice what a debug daemon takes
/// reading slices (23 MB); holding each backlog's lines whole took 68 MB
/// even in a release build.
const BOUND_KB: u64 = 48_000;

fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_daemon_reading_a_backlog_of_floods_stays_small() {
    let repo = TestRepo::new();
    let go = repo.path("go");
    let flood = format!(
        "while [ ! -e {} ]; do sleep 0.05; done; yes 'a line from a flooding agent, say a compiler' | head -c {BYTES}",
        go.display()
    );
    let names: Vec<String> = (1..=AGENTS).map(|i| format!("flood{i}")).collect();
    for name in &names {
        repo.corral_ok(&["spawn", name, "--", "sh", "-c", &flood]);
    }
    let logs: Vec<_> = names
        .iter()
        .map(|n| repo.state_dir().join(format!("agents/{}/output.log", repo.agent(&format!("/root/{n}"))["id"])))
        .collect();
    // The floods happen while no daemon runs: the next one finds them all.
    let daemon = repo.daemon_pid().unwrap();
    repo.corral_ok(&["shutdown"]);
    poll_until("the daemon to exit", PATIENCE, || !corral_e2e::alive(daemon));
    std::fs::write(&go, "").unwrap();
    let flooded = || logs.iter().all(|log| std::fs::metadata(log).is_ok_and(|m| m.len() >= BYTES));
    poll_until("every agent to print its flood", PATIENCE * 2, flooded);

    repo.corral_ok(&["ps"]);
    let daemon = repo.daemon_pid().unwrap();
    let deadline = Instant::now() + PATIENCE * 3;
    let mut highest = 0;
    loop {
        highest = highest.max(status_kb(daemon, "VmRSS"));
        let agents = repo.agents();
        if agents.iter().all(|a| a["state"] == "succeeded") {
            break;
        }
        assert!(Instant::now() < deadline, "the floods were not read: {agents:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let peak = status_kb(daemon, "VmHWM");
    println!("daemon RSS while reading {AGENTS} x {} MB: sampled {highest} kB, peak {peak} kB", BYTES >> 20);
    assert!(peak > 0, "no VmHWM for the daemon {daemon}");
    assert!(peak < BOUND_KB, "the daemon peaked at {peak} kB reading the floods (bound {BOUND_KB} kB)");
    // And it read them to the end: each agent's last event is past its flood.
    for name in &names {
        let out = repo.corral_ok(&["events", "--agent", &format!("/root/{name}"), "--json"]);
        let last_offset = out
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["type"] == "output")
            .filter_map(|e| e["offset"].as_u64())
            .max()
            .unwrap_or(0);
        assert!(last_offset >= BYTES - 100, "{name}: output read only to {last_offset}");
    }
}
