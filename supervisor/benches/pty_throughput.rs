//! PTY throughput (issue 16's figure): an agent that `cat`s a large file,
//! under corral, beside util-linux's PTY recorder `script` on the same
//! file, twice: `script -qec "cat FILE" TYPESCRIPT`, which keeps every
//! byte in a file as corral keeps its log (the anchor of the goal: the
//! same relay, the same bytes kept), and `script -qec "cat FILE"
//! /dev/null`, which keeps nothing (the relay alone: what the PTY itself
//! allows on this machine).
//!
//! corral's time runs from `corral spawn` to `corral wait` returning: the
//! whole file went through the agent's PTY into its log, the log was
//! synced, the daemon read the log to its end and journaled the exit.
//! `script`'s typescript is not synced; its time ends when `script` does.
//! The rounds alternate the three, and every corral run is checked: the
//! agent succeeded and its log holds at least the file's bytes (a PTY
//! turns each `\n` into `\r\n`), as does each typescript. Each run starts on
//! a clean disk (`sync`, untimed): the write-back of one run's 200 MB
//! would otherwise land in whichever run comes next. Besides the medians,
//! the median of each round's own ratio is shown (the runs of a round are
//! side by side in time, so a slow patch of the machine slows all three).
//!
//! Run: `cargo bench -p corral --bench pty_throughput`. `CORRAL_BIN`
//! overrides the binary; `PTY_BENCH_MB` the file's size (200);
//! `PTY_BENCH_ROUNDS` the rounds (7: on two cores a run of the same
//! relay swings between about 1.6 and 2.8 s, and three rounds gave
//! medians that moved by a tenth from one bench run to the next).
//!
//! Every command carries `PTY_BENCH_ID=<unique>`; at the end, on a panic,
//! or on SIGINT/SIGTERM/SIGHUP, every live process with the marker is
//! killed and the scratch folder removed.

mod common;
use common::{corral_bin, corral_command, describe, env_number, load_average, median, scratch_folder};

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
    let rounds: usize = env_number("PTY_BENCH_ROUNDS", 7);
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
    let mut kept_secs = Vec::new();
    let mut corral_secs = Vec::new();
    for round in 0..rounds {
        settle_disk();
        script_secs.push(script_cat(&file_text, "/dev/null", &id));
        let typescript = path.join(format!("typescript{round}"));
        settle_disk();
        kept_secs.push(script_cat(&file_text, &typescript.display().to_string(), &id));
        let kept = std::fs::metadata(&typescript).map(|m| m.len()).unwrap_or(0);
        assert!(kept >= bytes, "{}'s typescript holds {kept} bytes of {bytes}", typescript.display());

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
    let (script_median, kept_median, corral_median) = (median(&script_secs), median(&kept_secs), median(&corral_secs));
    println!(
        "pty_throughput: {mb:.0} MB of 100-byte lines through a PTY, {rounds} rounds (load at start {load_start})"
    );
    println!(
        "  script -qec cat, typescript kept    median {:6.2} s  {:6.1} MB/s   (anchor: every byte kept in a file)",
        kept_median,
        mb / kept_median
    );
    println!(
        "  script -qec cat, to /dev/null       median {:6.2} s  {:6.1} MB/s   (nothing kept: the relay alone)",
        script_median,
        mb / script_median
    );
    println!(
        "  corral spawn -- cat, until wait     median {:6.2} s  {:6.1} MB/s   (log written and synced, output read, exit journaled)",
        corral_median,
        mb / corral_median
    );
    println!(
        "  throughput ratio corral / script keeping its typescript: {:.2}x (goal: at least 0.90x); each round's: {}",
        kept_median / corral_median,
        round_ratios(&kept_secs, &corral_secs)
    );
    println!(
        "  throughput ratio corral / script to /dev/null:           {:.2}x; each round's: {}",
        script_median / corral_median,
        round_ratios(&script_secs, &corral_secs)
    );
    let shown: Vec<String> =
        (0..rounds).map(|r| format!("{:.2}/{:.2}/{:.2} s", kept_secs[r], script_secs[r], corral_secs[r])).collect();
    println!("  rounds (typescript/dev-null/corral): {}", shown.join(", "));
    println!("  load average at end {}", load_average());
    drop(cleanup);
    if let Some(root) = root.take() {
        let _ = root.close();
    }
}

/// Seconds `script -qec "cat FILE" TYPESCRIPT` takes, its own output
/// discarded.
fn script_cat(file: &str, typescript: &str, id: &str) -> f64 {
    let started = Instant::now();
    let status = Command::new("script")
        .args(["-qec", &format!("cat {file}"), typescript])
        .env(MARKER, id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("script runs (util-linux)");
    assert!(status.success(), "script -qec cat to {typescript}: {status}");
    started.elapsed().as_secs_f64()
}

/// The median of each round's own ratio (anchor / corral), and its range.
fn round_ratios(anchor: &[f64], corral: &[f64]) -> String {
    let mut ratios: Vec<f64> = anchor.iter().zip(corral).map(|(a, c)| a / c).collect();
    ratios.sort_by(f64::total_cmp);
    format!("median {:.2}x, {:.2}x to {:.2}x", median(&ratios), ratios[0], ratios[ratios.len() - 1])
}

/// Writes every dirty page out and waits for it, so the next run starts on
/// a clean disk.
fn settle_disk() {
    let status = Command::new("sync").status().expect("sync runs");
    assert!(status.success(), "sync: {status}");
}
