//! What a long history costs the daemon (issue 16's history rows): a
//! journal of many finished agents, and what starting the daemon, its
//! memory, `corral ps`, `ps --all` and `events --since` near the end cost
//! with it behind them.
//!
//! One real agent (`corral fake-agent "exit 0"`) runs first; its events
//! are the template. The daemon is stopped, and the journal is grown
//! through the journal module itself (`Journal::append`, batched) with
//! copies of those events for agents `/root/h1` ... `/root/hN` (each with
//! its own id, branch and worktree), so the file is exactly what a daemon
//! would have written. Each case then times, on that journal:
//!
//! - start: from running `corral daemon` to its first answered `Hello`;
//! - RSS: the daemon's VmRSS after start, and its VmHWM (peak) at the end;
//! - `corral ps --json`, `corral ps --all --json` (the whole history), and
//!   `corral events --since <last - 100> --json`: wall time, exit, bytes.
//!
//! Cases (`HISTORY_BENCH_CASES`, default `50000x3,100000x3,10000x100`):
//! `AGENTSxEVENTS`, where EVENTS is about how many events each agent has
//! (3 is the real agent's spawned, started, exited; more adds output
//! lines between started and exited). `10000x100` is a million events.
//! There is no anchor to compare with: the figures are absolute, next to
//! the targets the issue sets (start 200 ms with a million events, 50 MB
//! RSS with 100,000 finished agents).
//!
//! Run: `cargo bench -p corral --bench history`. `CORRAL_BIN` overrides
//! the binary. Every command carries `HISTORY_BENCH_ID=<unique>`; at the
//! end, on a panic or on a signal, every process with it is killed and the
//! scratch folder removed.

mod common;
use common::{corral_bin, corral_command, describe, load_average, scratch_folder};

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use corral::daemon::journal::{Draft, Journal};
use corral::model::address::Address;
use corral::model::event::{Event, EventBody};
use corral::wire::protocol::{read_frame, write_frame, Request, Response, PROTOCOL_VERSION};

const MARKER: &str = "HISTORY_BENCH_ID";

/// Agents written per append (one fsync each).
const BATCH: usize = 5_000;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("history bench: not run by `cargo bench` (no --bench argument); nothing measured");
        return;
    }
    let cases = std::env::var("HISTORY_BENCH_CASES").unwrap_or_else(|_| "50000x3,100000x3,10000x100".into());
    let cases: Vec<(usize, usize)> = cases
        .split(',')
        .map(|case| {
            let (agents, events) = case.split_once('x').unwrap_or((case, "3"));
            (agents.trim().parse().expect("AGENTS a number"), events.trim().parse().expect("EVENTS a number"))
        })
        .collect();
    let bin = corral_bin();
    println!("history bench: corral {}; load average at start {}", bin.display(), load_average());
    for (agents, events) in cases {
        run_case(&bin, agents, events);
    }
    println!("history bench: load average at end {}", load_average());
}

fn run_case(bin: &Path, agents: usize, events_each: usize) {
    let (root, path, id) = scratch_folder("corral-history-bench-");
    let mut root = Some(root);
    common::install_interrupt_cleanup("history", MARKER, id.clone(), path.clone(), || {});
    let _cleanup = common::KillMarked { marker: MARKER, id: id.clone() };
    let repo = common::one_commit_repo(&path, MARKER, &id);
    let corral = |args: &[&str]| corral_command(bin, &repo, args, &path, MARKER, &id).output().unwrap();

    // The template: one real agent's events.
    let out = corral(&["spawn", "h", "--", bin.to_str().unwrap(), "fake-agent", "exit 0"]);
    assert!(out.status.success(), "spawn: {}", describe(&out));
    assert!(corral(&["wait", "h"]).status.success());
    let out = corral(&["shutdown"]);
    assert!(out.status.success(), "shutdown: {}", describe(&out));
    let state = repo.join(".git").join("corral");
    let journal_path = state.join("events.jsonl");
    wait_unlocked(&state);

    let grown = Instant::now();
    let (total_events, bytes) = grow_journal(&journal_path, agents, events_each);
    let grow_took = grown.elapsed();
    println!(
        "\n{agents} agents x ~{events_each} events: journal of {total_events} events, {:.1} MB (written in {:.1} s)",
        bytes as f64 / 1e6,
        grow_took.as_secs_f64()
    );

    // Start, three times; the daemon of the last start serves the reads.
    let mut starts = Vec::new();
    let mut daemon = None;
    for round in 0..3 {
        if let Some((mut child, _)) = daemon.take() {
            stop_daemon(&corral, &mut child, &state);
        }
        let (child, took) = start_daemon(bin, &repo, &path, &id, &state);
        starts.push(took);
        println!("  start {}: {:.0} ms", round + 1, took.as_secs_f64() * 1e3);
        daemon = Some((child, took));
    }
    let (mut child, _) = daemon.unwrap();
    let pid = child.id();
    starts.sort();
    let rss_started = status_kb(pid, "VmRSS");

    let timed = |args: &[&str]| {
        let started = Instant::now();
        let out = corral(args);
        (started.elapsed(), out)
    };
    let (ps_took, ps) = timed(&["ps", "--json"]);
    let (all_took, all) = timed(&["ps", "--all", "--json"]);
    let since = (total_events as u64).saturating_sub(100).to_string();
    let (events_took, events) = timed(&["events", "--since", &since, "--json"]);
    let peak = status_kb(pid, "VmHWM");
    let rss_end = status_kb(pid, "VmRSS");

    let show = |what: &str, took: Duration, out: &std::process::Output, unit: &str| {
        let count = count_items(&out.stdout, unit);
        let verdict = if out.status.success() {
            format!("ok, {count} {unit}, {:.1} MB", out.stdout.len() as f64 / 1e6)
        } else {
            format!("FAILED: {}", String::from_utf8_lossy(&out.stderr).trim())
        };
        println!("  {what:<34} {:>8.0} ms  {verdict}", took.as_secs_f64() * 1e3);
    };
    println!(
        "  start median {:.0} ms (min {:.0}, max {:.0}); target at most 200 ms with a million events",
        starts[1].as_secs_f64() * 1e3,
        starts[0].as_secs_f64() * 1e3,
        starts[2].as_secs_f64() * 1e3
    );
    println!(
        "  daemon RSS after start {:.1} MB, peak (VmHWM) {:.1} MB, at the end {:.1} MB; target at most 50 MB with 100,000 finished agents",
        rss_started as f64 / 1e3,
        peak as f64 / 1e3,
        rss_end as f64 / 1e3
    );
    show("corral ps --json", ps_took, &ps, "agents");
    show("corral ps --all --json", all_took, &all, "agents");
    show(&format!("corral events --since {since} --json"), events_took, &events, "events");
    stop_daemon(&corral, &mut child, &state);
    common::remove_scratch("history", &mut root, &path);
}

/// Appends copies of the template agent's events for `agents` agents,
/// with `events_each - 3` output lines each between started and exited.
/// Returns the journal's events and bytes.
fn grow_journal(path: &Path, agents: usize, events_each: usize) -> (usize, u64) {
    let (mut journal, events) = Journal::open(path).expect("the journal opens");
    let template: Vec<Event> =
        events.into_iter().filter(|e| e.agent.as_ref().is_some_and(|a| a.name() == "h")).collect();
    assert!(
        template.iter().any(|e| matches!(e.body, EventBody::Spawned { .. })),
        "the template agent has a spawned event"
    );
    let outputs = events_each.saturating_sub(template.len());
    let mut drafts = Vec::new();
    for i in 1..=agents {
        let address = Address::parse(&format!("/root/h{i}")).unwrap();
        for event in &template {
            if matches!(event.body, EventBody::Exited { .. }) {
                for line in 0..outputs {
                    drafts.push(Draft {
                        agent: Some(address.clone()),
                        parent: event.parent.clone(),
                        task: Some(format!("t-h{i}")),
                        body: EventBody::Output {
                            text: format!("line {line} of agent h{i}: compiling, testing, done"),
                            offset: 48 * (line as u64 + 1),
                            skipped: 0,
                        },
                    });
                }
            }
            let mut body = event.body.clone();
            if let EventBody::Spawned { id, branch, worktree, .. } = &mut body {
                *id = 1_000 + i as u64;
                *branch = format!("corral/h{i}");
                *worktree = worktree.with_file_name(format!("h{i}-{}", 1_000 + i));
            }
            drafts.push(Draft {
                agent: Some(address.clone()),
                parent: event.parent.clone(),
                task: Some(format!("t-h{i}")),
                body,
            });
        }
        if i % BATCH == 0 || i == agents {
            journal.append(std::mem::take(&mut drafts)).expect("the journal takes the batch");
        }
    }
    let total = journal.last_seq() as usize;
    (total, journal.durable_len())
}

/// Runs `corral daemon` and waits for its first answered `Hello`.
fn start_daemon(bin: &Path, repo: &Path, scratch: &Path, id: &str, state: &Path) -> (Child, Duration) {
    let socket = state.join("daemon.sock");
    let _ = std::fs::remove_file(&socket);
    let started = Instant::now();
    let mut child = corral_command(bin, repo, &["daemon"], scratch, MARKER, id)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("corral daemon runs");
    let deadline = started + Duration::from_secs(120);
    loop {
        if hello(&socket) {
            return (child, started.elapsed());
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("corral daemon exited before answering: {status}");
        }
        assert!(Instant::now() < deadline, "corral daemon did not answer within 120 s");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn hello(socket: &PathBuf) -> bool {
    let Ok(mut stream) = UnixStream::connect(socket) else { return false };
    if write_frame(&mut stream, &Request::Hello { version: PROTOCOL_VERSION }).is_err() {
        return false;
    }
    matches!(read_frame::<Response>(&mut stream), Ok(Some(Response::Hello { .. })))
}

fn stop_daemon(corral: &dyn Fn(&[&str]) -> std::process::Output, child: &mut Child, state: &Path) {
    let out = corral(&["shutdown"]);
    assert!(out.status.success(), "shutdown: {}", describe(&out));
    let _ = child.wait();
    wait_unlocked(state);
}

/// Waits until no daemon holds the repository's lock.
fn wait_unlocked(state: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let file = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(state.join("daemon.lock"));
        if let Ok(file) = file {
            if nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the daemon did not let go of its lock within 30 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A `/proc/PID/status` figure, in kB.
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or(0)
}

/// Agents in a `ps --json` array, or event lines.
fn count_items(stdout: &[u8], unit: &str) -> usize {
    if unit == "events" {
        return stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count();
    }
    serde_json::from_slice::<serde_json::Value>(stdout).ok().and_then(|v| v.as_array().map(Vec::len)).unwrap_or(0)
}
