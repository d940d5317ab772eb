//! What the sandbox costs a spawn (issue 11's figure): `corral spawn` of a
//! trivial agent (`corral fake-agent "stamp 1 1"`) without a sandbox, under
//! `--sandbox workspace-write`, and under `workspace-write --network none
//! --max-memory 1G --max-open-files 1024`, on one repository and one warm
//! daemon, timed twice: until the client's command returns (the monitor
//! reports the agent's pid), and until the agent's first instruction (its
//! `stamp` line, written after the sandbox was applied and the command
//! execed). The three alternate within each round; it prints the medians
//! and 90th percentiles and the differences.
//!
//! Run: `cargo bench -p corral --bench sandbox`. `CORRAL_BIN` overrides the
//! binary; `SANDBOX_BENCH_SPAWNS` the spawns of each kind (20).
//!
//! Every command carries `SANDBOX_BENCH_ID=<unique>` in its environment;
//! the daemon, the monitors and the agents inherit it. At the end, on a
//! panic, or on SIGINT/SIGTERM/SIGHUP, every live process with the marker
//! is killed and the scratch folder removed.

mod common;
use common::{corral_bin, corral_command, describe, env_number, load_average, percentile, scratch_folder};

use std::time::Instant;

const MARKER: &str = "SANDBOX_BENCH_ID";

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
    // too, without it, and should not start sixty agents.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("sandbox bench: not run by `cargo bench` (no --bench argument); nothing measured");
        return;
    }
    let spawns: usize = env_number("SANDBOX_BENCH_SPAWNS", 20);
    let bin = corral_bin();
    let (root, path, id) = scratch_folder("corral-sandbox-bench-");
    let mut root = Some(root);
    common::install_interrupt_cleanup("sandbox", MARKER, id.clone(), path.clone(), || {});
    let cleanup = common::KillMarked { marker: MARKER, id: id.clone() };
    eprintln!("sandbox bench: scratch folder {} (marker {MARKER}={id})", path.display());
    let load_start = load_average();

    let repo = common::one_commit_repo(&path, MARKER, &id);
    let bin_text = bin.display().to_string();
    let corral = |args: &[&str]| corral_command(&bin, &repo, args, &path, MARKER, &id).output().unwrap();
    let warm = corral(&["spawn", "warm", "--", &bin_text, "fake-agent", "exit 0"]);
    assert!(warm.status.success(), "{}", describe(&warm));

    let kinds: [(&str, &[&str]); 3] = [
        ("no sandbox", &[]),
        ("workspace-write", &["--sandbox", "workspace-write"]),
        (
            "workspace-write, network none, limits",
            &["--sandbox", "workspace-write", "--network", "none", "--max-memory", "1G", "--max-open-files", "1024"],
        ),
    ];
    // Two figures a spawn: the client's command (it returns once the
    // monitor reports the agent's pid), and the agent's first instruction
    // (its `stamp` line, after the sandbox was applied and the CLI execed).
    let mut returned: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    let mut first: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    let state = repo.join(".git/corral/agents");
    for i in 0..spawns {
        for (k, (_, flags)) in kinds.iter().enumerate() {
            let name = format!("k{k}-{i}");
            let mut args = vec!["spawn", name.as_str(), "--grace", "0", "--json"];
            args.extend_from_slice(flags);
            args.extend_from_slice(&["--", &bin_text, "fake-agent", "stamp 1 1"]);
            let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
            let started = Instant::now();
            let out = corral(&args);
            let took = started.elapsed();
            assert!(out.status.success(), "corral {args:?}: {}", describe(&out));
            returned[k].push(took.as_secs_f64() * 1000.0);
            let pid = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["pid"].as_u64().unwrap();
            let stamp = wait_for_stamp(&state, pid);
            first[k].push((stamp.saturating_sub(wall)) as f64 / 1e6);
        }
    }
    println!("sandbox: {spawns} spawns of each kind (load at start {load_start})");
    let mut medians = Vec::new();
    for (k, (label, _)) in kinds.iter().enumerate() {
        returned[k].sort_by(f64::total_cmp);
        first[k].sort_by(f64::total_cmp);
        let (r50, r90) = (percentile(&returned[k], 50.0), percentile(&returned[k], 90.0));
        let (f50, f90) = (percentile(&first[k], 50.0), percentile(&first[k], 90.0));
        println!(
            "  {label:<40} spawn returns: median {r50:6.1} ms p90 {r90:6.1} ms; agent's first instruction: median {f50:6.1} ms p90 {f90:6.1} ms"
        );
        medians.push((r50, f50));
    }
    for (k, (label, _)) in kinds.iter().enumerate().skip(1) {
        println!(
            "  {label}: {:+.1} ms to the spawn's return, {:+.1} ms to the agent's first instruction, against no sandbox",
            medians[k].0 - medians[0].0,
            medians[k].1 - medians[0].1
        );
    }
    let out = corral(&["ps", "--json"]);
    let ps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let failed = ps.as_array().map_or(0, |a| a.iter().filter(|a| a["state"] != "succeeded").count());
    if failed > 0 {
        eprintln!("sandbox bench: {failed} agents did not succeed");
    }
    drop(cleanup);
    if let Some(root) = root.take() {
        let _ = root.close();
    }
}

/// The wall-clock nanoseconds of the `stamp 1` line of the agent whose pid
/// is `pid`, from its output log (found by its monitor's status).
fn wait_for_stamp(agents: &std::path::Path, pid: u64) -> u128 {
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    loop {
        for entry in std::fs::read_dir(agents).into_iter().flatten().flatten() {
            let exit = std::fs::read_to_string(entry.path().join("exit.json")).unwrap_or_default();
            if !exit.contains(&format!("\"pid\":{pid},")) {
                continue;
            }
            let log = std::fs::read_to_string(entry.path().join("output.log")).unwrap_or_default();
            if let Some(nanos) = log.lines().find_map(|l| l.trim().strip_prefix("stamp 1 ")) {
                return nanos.trim().parse().expect("nanoseconds");
            }
        }
        assert!(Instant::now() < deadline, "no stamp from the agent with pid {pid}");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}
