//! The daemon's memory while agents flood their terminals (issue 16's
//! "daemon peak memory" row; the goal is at most 30 MB with 10 agents).
//!
//! On a fresh repository and daemon: the daemon's RSS once it is up, then
//! AGENTS agents at once, each printing MB megabytes of short lines
//! (`sh -c 'yes <line> | head -c ...'`), and the daemon's VmRSS sampled
//! every 10 ms until every agent ended and its last output was read, then
//! its VmHWM (the peak of its whole life). Printed with the log bytes the
//! agents wrote and the load average.
//!
//! Run: `cargo bench -p corral --bench flood_memory`. `CORRAL_BIN`
//! overrides the binary; `FLOOD_BENCH_AGENTS` the agents (10);
//! `FLOOD_BENCH_MB` what each prints (100). Every process carries
//! `FLOOD_BENCH_ID=<unique>`; at the end, on a panic or a signal, every
//! one with it is killed and the scratch folder removed.

mod common;
use common::{corral_bin, corral_command, describe, env_number, expect_json, load_average, scratch_folder};

use std::time::{Duration, Instant};

const MARKER: &str = "FLOOD_BENCH_ID";

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("flood_memory bench: not run by `cargo bench` (no --bench argument); nothing measured");
        return;
    }
    let agents: usize = env_number("FLOOD_BENCH_AGENTS", 10);
    let megabytes: u64 = env_number("FLOOD_BENCH_MB", 100);
    let bin = corral_bin();
    let (root, path, id) = scratch_folder("corral-flood-bench-");
    let mut root = Some(root);
    common::install_interrupt_cleanup("flood_memory", MARKER, id.clone(), path.clone(), || {});
    let _cleanup = common::KillMarked { marker: MARKER, id: id.clone() };
    println!("flood_memory bench: corral {}; load average at start {}", bin.display(), load_average());
    let repo = common::one_commit_repo(&path, MARKER, &id);
    let corral = |args: &[&str]| corral_command(&bin, &repo, args, &path, MARKER, &id).output().unwrap();
    let out = corral(&["ps"]);
    assert!(out.status.success(), "ps: {}", describe(&out));
    let state = repo.join(".git").join("corral");
    let pid: u32 = std::fs::read_to_string(state.join("daemon.pid")).unwrap().trim().parse().unwrap();
    let idle = status_kb(pid, "VmRSS");

    let flood = format!("yes 'a line of output from a flooding agent, {MARKER}' | head -c {}", megabytes << 20);
    let started = Instant::now();
    let names: Vec<String> = (1..=agents).map(|i| format!("flood{i}")).collect();
    for name in &names {
        let out = corral(&["spawn", name, "--", "sh", "-c", &flood]);
        assert!(out.status.success(), "spawn {name}: {}", describe(&out));
    }
    // Sample while the agents run and the daemon reads their output.
    let mut highest = 0;
    let deadline = started + Duration::from_secs(600);
    loop {
        highest = highest.max(status_kb(pid, "VmRSS"));
        let ps = expect_json(&corral(&["ps", "--json"]), "ps");
        let all_ended = ps.as_array().unwrap().iter().all(|a| a["state"] != "running" && a["state"] != "starting");
        if all_ended {
            break;
        }
        assert!(Instant::now() < deadline, "the floods did not end within 600 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = started.elapsed();
    let peak = status_kb(pid, "VmHWM");
    let end = status_kb(pid, "VmRSS");
    let logs: u64 = std::fs::read_dir(state.join("agents"))
        .unwrap()
        .flatten()
        .filter_map(|dir| std::fs::metadata(dir.path().join("output.log")).ok())
        .map(|m| m.len())
        .sum();
    println!(
        "{agents} agents x {megabytes} MB of output ({:.0} MB of logs in {:.1} s):",
        logs as f64 / 1e6,
        took.as_secs_f64()
    );
    println!(
        "  daemon RSS idle {:.1} MB; while flooding, sampled, at most {:.1} MB; peak (VmHWM) {:.1} MB; at the end {:.1} MB",
        idle as f64 / 1e3,
        highest as f64 / 1e3,
        peak as f64 / 1e3,
        end as f64 / 1e3
    );
    println!("  target: at most 30 MB at the peak with 10 agents flooding");
    println!("flood_memory bench: load average at end {}", load_average());
    let _ = corral(&["shutdown"]);
    common::remove_scratch("flood_memory", &mut root, &path);
}

/// A `/proc/PID/status` figure, in kB.
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or(0)
}
