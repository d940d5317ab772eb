//! PTY throughput (issue 16's figure): an agent that `cat`s a large file,
//! under corral, beside `script -qec "cat FILE" /dev/null` (util-linux's
//! PTY recorder, its output to /dev/null) on the same file.
//!
//! corral's time runs from `corral spawn` to `corral wait` returning: the
//! whole file went through the agent's PTY into its log, the daemon read
//! the log to its end and journaled the exit. The rounds alternate the two,
//! and every corral run is checked: the agent succeeded and its log holds
//! at least the file's bytes (a PTY turns each `\n` into `\r\n`). Each
//! run starts on a clean disk (`sync`, untimed): the write-back of one
//! round's 200 MB log would otherwise land in whichever run comes next.
//! Besides the two medians, the median of each round's own ratio is shown
//! (the two runs of a round are side by side in time, so a slow patch of
//! the machine slows both).
//!
//! Run: `cargo bench -p corral --bench pty_throughput`. `CORRAL_BIN`
//! overrides the binary; `PTY_BENCH_MB` the file's size (200);
//! `PTY_BENCH_ROUNDS` the rounds (3).
//!
//! Every command carries `PTY_BENCH_ID=<unique>`; at the end, on a panic,
//! or on SIGINT/SIGTERM/SIGHUP, every live process with the marker is
//! killed and the scratch folder removed.

mod common;
use common::{corral_bin, corral_command, describe, env_number, load_average, percentile, scratch_folder};

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

const MARKER: &str = "PTY_BENCH_ID";

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("pty_throughput bench: not run by `cargo bench` (no --bench argument); nothing measured");
        return;
    }
    let megabytes: usize = env_number("PTY_BENCH_MB", 200);
    let rounds: usize = env_number("PTY_BENCH_ROUNDS", 3);
    let bin = corral_bin();
    let (root, path, id) = scratch_folder("corral-pty-bench-");
    let mut root = Some(root);
    common::install_interrupt_cleanup("pty_throughput", MARKER, id.clone(), path.clone(), || {});
    let cleanup = common::KillMarked { marker: MARKER, id: id.clone() };
    eprintln!("pty_throughput bench: scratch folder {} (marker {MARKER}={id})", path.display());
    let load_start = load_average();

    // Lines of 100 printable bytes, as a build log would be.
    let file = path.join("flood.txt");
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        let line: Vec<u8> = (0..99).map(|i| b'a' + (i % 26) as u8).chain([b'\n']).collect();
        for _ in 0..megabytes * 10_486 {
            out.write_all(&line).unwrap();
        }
    }
    let bytes = std::fs::metadata(&file).unwrap().len();
    let file_text = file.display().to_string();

    let repo = common::one_commit_repo(&path, MARKER, &id);
    let corral = |args: &[&str]| corral_command(&bin, &repo, args, &path, MARKER, &id).output().unwrap();
    let warm = corral(&["spawn", "warm", "--", "true"]);
    assert!(warm.status.success(), "{}", describe(&warm));

    let mut script_secs = Vec::new();
    let mut corral_secs = Vec::new();
    for round in 0..rounds {
        settle_disk();
        let started = Instant::now();
        let status = Command::new("script")
            .args(["-qec", &format!("cat {file_text}"), "/dev/null"])
            .env(MARKER, &id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .expect("script runs (util-linux)");
        assert!(status.success(), "script -qec cat: {status}");
        script_secs.push(started.elapsed().as_secs_f64());

        let name = format!("flood{round}");
        settle_disk();
        let started = Instant::now();
        let spawned = corral(&["spawn", &name, "--json", "--", "cat", &file_text]);
        assert!(spawned.status.success(), "{}", describe(&spawned));
        let address = format!("/root/{name}");
        let waited = corral(&["wait", &address, "--timeout", "600"]);
        corral_secs.push(started.elapsed().as_secs_f64());
        assert!(waited.status.success(), "corral wait {address}: {}", describe(&waited));
        // Its task id is `t-<agent id>`, the name of its state folder.
        let spawned: serde_json::Value = serde_json::from_slice(&spawned.stdout).unwrap();
        let agent_id = spawned["task_id"].as_str().and_then(|t| t.strip_prefix("t-")).expect("a task id");
        let log = repo.join(format!(".git/corral/agents/{agent_id}/output.log"));
        let logged = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        assert!(logged >= bytes, "{address}'s log holds {logged} bytes of {bytes}");
    }
    let mb = bytes as f64 / 1e6;
    let mut ratios: Vec<f64> = script_secs.iter().zip(&corral_secs).map(|(s, c)| s / c).collect();
    ratios.sort_by(f64::total_cmp);
    let rounds_shown: Vec<String> =
        script_secs.iter().zip(&corral_secs).map(|(s, c)| format!("{s:.2}/{c:.2} s")).collect();
    script_secs.sort_by(f64::total_cmp);
    corral_secs.sort_by(f64::total_cmp);
    let (script_median, corral_median) = (percentile(&script_secs, 50.0), percentile(&corral_secs, 50.0));
    println!(
        "pty_throughput: {mb:.0} MB of 100-byte lines through a PTY, {rounds} rounds (load at start {load_start})"
    );
    println!("  script -qec cat (anchor)          median {:6.2} s  {:6.1} MB/s", script_median, mb / script_median);
    println!(
        "  corral spawn -- cat, until wait   median {:6.2} s  {:6.1} MB/s   (log written, output read, exit journaled)",
        corral_median,
        mb / corral_median
    );
    println!("  throughput ratio corral / script: {:.2}x (goal: at least 0.90x)", script_median / corral_median);
    println!(
        "  each round's ratio: median {:.2}x, {:.2}x to {:.2}x (script/corral: {})",
        percentile(&ratios, 50.0),
        ratios[0],
        ratios[ratios.len() - 1],
        rounds_shown.join(", ")
    );
    println!("  load average at end {}", load_average());
    drop(cleanup);
    if let Some(root) = root.take() {
        let _ = root.close();
    }
}

/// Writes every dirty page out and waits for it, so the next run starts on
/// a clean disk.
fn settle_disk() {
    let status = Command::new("sync").status().expect("sync runs");
    assert!(status.success(), "sync: {status}");
}
