//! What `corral run` costs beside a shell loop of `corral spawn` and one
//! `corral wait` (issue 12's figure): twenty trivial agents
//! (`corral fake-agent "exit 0"`), measured on the built `corral`.
//!
//! Each round times, on one repository and one warm daemon:
//!
//! 1. shell: `sh -c 'for i in 1..N; do corral spawn ... ; done; corral wait ...'`;
//! 2. run: `corral run` of a file with the same N agents (no `after`, no
//!    merge), which adds the run's driver (an agent of its own, with a
//!    worktree), its record and lock, the client's polling and the report.
//!
//! The order of the two alternates between rounds. It prints each round,
//! the medians, the ratio and the overhead per agent.
//!
//! Run: `cargo bench -p corral --bench run_overhead`. `CORRAL_BIN`
//! overrides the binary; `RUN_BENCH_AGENTS` the number of agents (20);
//! `RUN_BENCH_ROUNDS` the rounds (5).
//!
//! Every command carries `RUN_BENCH_ID=<unique>` in its environment; the
//! daemon, the monitors and the agents inherit it. At the end, on a panic,
//! or on SIGINT/SIGTERM/SIGHUP, every live process with the marker is
//! killed and the scratch folder removed.

mod common;
use common::{corral_bin, corral_command, describe, env_number, load_average, scratch_folder};

use std::path::Path;
use std::time::{Duration, Instant};

const MARKER: &str = "RUN_BENCH_ID";

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
    // too, without it, and should not start forty agents.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("run_overhead bench: not run by `cargo bench` (no --bench argument); nothing measured");
        return;
    }
    let agents: usize = env_number("RUN_BENCH_AGENTS", 20);
    let rounds: usize = env_number("RUN_BENCH_ROUNDS", 5);
    let bin = corral_bin();
    let (root, path, id) = scratch_folder("corral-run-bench-");
    let mut root = Some(root);
    common::install_interrupt_cleanup("run_overhead", MARKER, id.clone(), path.clone(), || {});
    let cleanup = common::KillMarked { marker: MARKER, id: id.clone() };
    eprintln!("run_overhead bench: scratch folder {} (marker {MARKER}={id})", path.display());
    let load_start = load_average();

    let repo = common::one_commit_repo(&path, MARKER, &id);
    let corral = |args: &[&str]| corral_command(&bin, &repo, args, &path, MARKER, &id).output().unwrap();
    // A warm daemon for both.
    let warm = corral(&["spawn", "warm", "--", bin.to_str().unwrap(), "fake-agent", "exit 0"]);
    assert!(warm.status.success(), "{}", describe(&warm));
    assert!(corral(&["wait", "warm"]).status.success());

    let run_file = path.join("bench.toml");
    let mut text = String::from("name = \"bench\"\noverlap = \"allow\"\n");
    for i in 1..=agents {
        text.push_str(&format!(
            "[[agent]]\nname = \"a{i}\"\ncommand = [{:?}, \"fake-agent\", \"exit 0\"]\n",
            bin.display().to_string()
        ));
    }
    std::fs::write(&run_file, text).unwrap();

    let (mut shell, mut run) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let time_shell = || shell_loop(&bin, &repo, &path, &id, round, agents);
        let time_run = || {
            let started = Instant::now();
            let out = corral(&["run", run_file.to_str().unwrap()]);
            assert_eq!(out.status.code(), Some(0), "corral run: {}", describe(&out));
            started.elapsed()
        };
        let (s, r) = if round % 2 == 1 {
            let s = time_shell();
            (s, time_run())
        } else {
            let r = time_run();
            (time_shell(), r)
        };
        eprintln!("round {round}: shell loop {:.3} s, corral run {:.3} s", s.as_secs_f64(), r.as_secs_f64());
        shell.push(s.as_secs_f64());
        run.push(r.as_secs_f64());
    }
    let (shell_median, run_median) = (median(&mut shell), median(&mut run));
    println!("run_overhead: {agents} trivial agents, median of {rounds} rounds (load at start {load_start})");
    println!("  shell loop of spawn + wait: {shell_median:.3} s");
    println!("  corral run:                 {run_median:.3} s");
    println!(
        "  ratio {:.2}; overhead {:.0} ms per run, {:.1} ms per agent",
        run_median / shell_median,
        (run_median - shell_median) * 1000.0,
        (run_median - shell_median) * 1000.0 / agents as f64
    );
    drop(cleanup);
    if let Some(root) = root.take() {
        let _ = root.close();
    }
}

/// One `sh` that spawns the agents one after another, then waits for all.
fn shell_loop(bin: &Path, repo: &Path, scratch: &Path, id: &str, round: usize, agents: usize) -> Duration {
    let corral = bin.display().to_string();
    let names: Vec<String> = (1..=agents).map(|i| format!("s{round}-{i}")).collect();
    let script = format!(
        "for name in {names}; do \"$CORRAL\" spawn \"$name\" --grace 0 -- \"$CORRAL\" fake-agent 'exit 0' >/dev/null || exit 1; done; \"$CORRAL\" wait {names} >/dev/null",
        names = names.join(" ")
    );
    let mut command = std::process::Command::new("sh");
    command
        .args(["-c", &script])
        .current_dir(repo)
        .env("CORRAL", &corral)
        .env("CORRAL_WORKTREE_ROOT", scratch.join("corral-worktrees"))
        .env(MARKER, id)
        .env_remove("CORRAL_ADDRESS")
        .env_remove("CORRAL_SOCKET");
    let started = Instant::now();
    let out = command.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "the shell loop: {}", describe(&out));
    started.elapsed()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
