//! What the sandbox costs a spawn (issue 11's figure): `corral spawn` of a
//! trivial agent (`corral fake-agent "exit 0"`), client command to agent
//! running, without a sandbox, under `--sandbox workspace-write`, and under
//! `workspace-write --network none --max-memory 1G --max-open-files 1024`,
//! on one repository and one warm daemon. The three alternate within each
//! round; it prints the median and the 90th percentile of each and the
//! difference.
//!
//! Run: `cargo bench -p corral --bench sandbox`. `CORRAL_BIN` overrides the
//! binary; `SANDBOX_BENCH_SPAWNS` the spawns of each kind (20).
//!
//! Every command carries `SANDBOX_BENCH_ID=<unique>` in its environment;
//! the daemon, the monitors and the agents inherit it. At the end, on a
//! panic, or on SIGINT/SIGTERM/SIGHUP, every live process with the marker
//! is killed and the scratch folder removed.

mod common;
use common::{
    corral_bin, corral_command, describe, env_number, git, kill_marked, load_average, percentile, scratch_folder,
};

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
    let cleanup = Cleanup { id: id.clone() };
    eprintln!("sandbox bench: scratch folder {} (marker {MARKER}={id})", path.display());
    let load_start = load_average();

    let repo = path.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"], MARKER, &id);
    std::fs::write(repo.join("README.md"), "# bench\n").unwrap();
    git(&repo, &["add", "-A"], MARKER, &id);
    git(&repo, &["commit", "-q", "-m", "first"], MARKER, &id);
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
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    for i in 0..spawns {
        for (k, (_, flags)) in kinds.iter().enumerate() {
            let name = format!("k{k}-{i}");
            let mut args = vec!["spawn", name.as_str(), "--grace", "0"];
            args.extend_from_slice(flags);
            args.extend_from_slice(&["--", &bin_text, "fake-agent", "exit 0"]);
            let started = Instant::now();
            let out = corral(&args);
            let took = started.elapsed();
            assert!(out.status.success(), "corral {args:?}: {}", describe(&out));
            times[k].push(took.as_secs_f64() * 1000.0);
        }
    }
    println!("sandbox: {spawns} spawns of each kind, client command to agent running (load at start {load_start})");
    let mut medians = Vec::new();
    for ((label, _), values) in kinds.iter().zip(times.iter_mut()) {
        values.sort_by(f64::total_cmp);
        let (median, p90) = (percentile(values, 50.0), percentile(values, 90.0));
        println!("  {label:<40} median {median:7.1} ms   p90 {p90:7.1} ms");
        medians.push(median);
    }
    for (k, (label, _)) in kinds.iter().enumerate().skip(1) {
        println!("  {label}: {:+.1} ms a spawn against no sandbox", medians[k] - medians[0]);
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

/// Kills what the bench started, also when it panics.
struct Cleanup {
    id: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        kill_marked(MARKER, &self.id);
    }
}
