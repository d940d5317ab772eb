//! Event latency: how long from a line an agent writes to its `output`
//! event arriving on `corral events -f`, measured on the built `corral`.
//!
//! In a scratch repository (one commit) the bench starts `corral events -f`
//! as a child and reads its stdout line by line, then spawns one agent
//! running `corral fake-agent "sleep 1; stamp N RATE"`: N lines
//! `stamp <i> <unix_nanos>` at a steady RATE a second, each carrying the
//! wall-clock time it was written. For each `output` event of a stamp line,
//! latency = (wall-clock time the bench read the event line) - (the stamp).
//! Both clocks are `SystemTime` on the same machine. The event's own `ts`
//! (taken by the daemon just before it writes and fsyncs the batch) splits
//! each latency in two: agent write -> journal append, and journal append ->
//! the bench reading it (fsync, waking the follower, `corral events`).
//!
//! RATE is 10 a second, half the output limiter's 20 a second average (and
//! far below its burst of 100), so no line is ever left out: the bench
//! checks that every stamp arrives and that no event says `skipped`.
//!
//! Run: `cargo bench -p corral --bench event_latency`. `CORRAL_BIN`
//! overrides the binary; `EVENT_LATENCY_N` and `EVENT_LATENCY_RATE`
//! override N (500) and RATE (10).
//!
//! Every command carries `EVENT_LATENCY_BENCH_ID=<unique>` in its
//! environment; the daemon, the monitor and the agent inherit it. At the
//! end, on a panic, or on SIGINT/SIGTERM/SIGHUP, the agent is stopped, the
//! daemon shut down, every live process with the marker killed and the
//! scratch folder removed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

mod common;
use common::{
    corral_bin, corral_command, env_number, expect_json, git, install_interrupt_cleanup, kill_marked, left_behind,
    load_average, load_is_busy, machine_ticks, percentile, remove_scratch, scratch_folder,
};

const MARKER: &str = "EVENT_LATENCY_BENCH_ID";
const AGENT: &str = "lat";

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
    // too, without it, and should not spend a minute.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("event_latency bench: not run by `cargo bench` (no --bench argument); nothing measured");
        return;
    }
    let n: usize = env_number("EVENT_LATENCY_N", 500);
    let rate: f64 = env_number("EVENT_LATENCY_RATE", 10.0);
    let bin = corral_bin();
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let load_start = load_average();

    let mut scratch = Scratch::new();
    install_interrupt_cleanup("event_latency", MARKER, scratch.id.clone(), scratch.path().to_path_buf(), || {});
    eprintln!("event_latency bench: scratch folder {} (marker {MARKER}={})", scratch.path().display(), scratch.id);

    let run = measure(&mut scratch, &bin, n, rate);
    let load_end = load_average();
    let cleanup = scratch.cleanup();

    let mut out = String::new();
    let line = "=".repeat(78);
    out.push_str(&format!("\n{line}\ncorral event latency: agent line -> `corral events -f`\n{line}\n"));
    out.push_str(&format!("binary            {}\n", bin.display()));
    out.push_str(&format!("machine           {cores} cores\n"));
    out.push_str(&format!(
        "load average      at start {load_start}; at end {load_end}{}\n",
        if load_is_busy(&load_start, cores) || load_is_busy(&load_end, cores) {
            "\n                  (the machine was busy: load at or above half the cores, other work shared it;\n\
             \x20                 the figures include that contention and are upper bounds)"
        } else {
            ""
        }
    ));
    run.print(&mut out, n, rate);
    out.push_str(&format!(
        "cleanup           stop + shutdown: {}; killed {} marked processes; removed the scratch folder in {:.1} s\n",
        run.teardown,
        cleanup.killed,
        cleanup.removal.as_secs_f64()
    ));
    out.push_str(&format!(
        "left behind       {} processes with the marker, {} in `ps` naming the scratch folder{}\n",
        cleanup.left_marked,
        cleanup.left_in_ps,
        if cleanup.scratch_exists { "; THE SCRATCH FOLDER IS STILL THERE" } else { "" }
    ));
    out.push_str(&format!("{line}\n"));
    print!("{out}");
    if cleanup.left_marked > 0 || cleanup.left_in_ps > 0 || run.received != n {
        std::process::exit(1);
    }
}

// ---- the measurement -----------------------------------------------------------

/// One stamp line's journey, in ms.
struct Sample {
    index: u64,
    /// Stamp -> the bench read the event.
    total: f64,
    /// Stamp -> the event's `ts` (the daemon read the log and is about to
    /// write the batch).
    to_journal: f64,
    /// `ts` -> the bench read the event (write + fsync, follower wake-up,
    /// `corral events` printing, the pipe).
    from_journal: f64,
    /// The event's `ts`, to count journal batches.
    ts: String,
}

struct Run {
    samples: Vec<Sample>,
    received: usize,
    duplicates: usize,
    skipped: u64,
    exited: Option<String>,
    timed_out: bool,
    run_time: Duration,
    /// Share of the machine's CPU time that was busy during the run, %.
    machine_busy: f64,
    fsync: Vec<f64>,
    teardown: String,
}

fn measure(scratch: &mut Scratch, bin: &Path, n: usize, rate: f64) -> Run {
    let repo = scratch.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    scratch.git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README.md"), "# event latency\n").unwrap();
    scratch.git(&repo, &["add", "-A"]);
    scratch.git(&repo, &["commit", "-q", "-m", "first"]);

    // The follower. It starts the daemon, whose `daemon_started` event is
    // the first line: then the stream is live.
    let stderr = std::fs::File::create(scratch.path().join("events.stderr")).unwrap();
    let mut follower = scratch
        .command(bin, &repo, &["events", "-f"])
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("corral events -f starts");
    let stdout = follower.stdout.take().unwrap();
    scratch.follower = Some(follower);
    let (tx, rx) = mpsc::channel::<(String, SystemTime)>();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            match lines.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    // The moment the line is in hand, before parsing it.
                    let now = SystemTime::now();
                    if tx.send((std::mem::take(&mut line), now)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let (first, _) = rx.recv_timeout(Duration::from_secs(30)).expect("`corral events -f` printed nothing in 30 s");
    let first: Value = serde_json::from_str(&first).expect("events are JSON");
    assert_eq!(first["type"], "daemon_started", "the first event: {first}");

    // For scale: the journal fsyncs every batch, on this file system.
    let fsync = fsync_probe(&repo.join(".git"), 50);

    let script = format!("sleep 1; stamp {n} {rate}");
    let bin_text = bin.to_str().expect("a UTF-8 binary path");
    let spawned = scratch.corral(bin, &repo, &["spawn", AGENT, "--json", "--", bin_text, "fake-agent", &script]);
    expect_json(&spawned, "corral spawn");
    scratch.spawned = true;

    let machine_before = machine_ticks();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(n as f64 / rate.max(0.1) + 60.0);
    let mut seen = vec![false; n + 1];
    let mut run = Run {
        samples: Vec::with_capacity(n),
        received: 0,
        duplicates: 0,
        skipped: 0,
        exited: None,
        timed_out: false,
        run_time: Duration::ZERO,
        machine_busy: f64::NAN,
        fsync,
        teardown: String::new(),
    };
    let agent = format!("/root/{AGENT}");
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok((line, read_at)) = rx.recv_timeout(left) else {
            run.timed_out = Instant::now() >= deadline;
            break;
        };
        let Ok(event) = serde_json::from_str::<Value>(&line) else { continue };
        if event["agent"] != agent.as_str() {
            continue;
        }
        match event["type"].as_str() {
            Some("output") => {
                run.skipped += event["skipped"].as_u64().unwrap_or(0);
                let text = event["text"].as_str().unwrap_or_default();
                let Some(rest) = text.strip_prefix("stamp ") else { continue };
                let mut words = rest.split_whitespace();
                let (Some(Ok(index)), Some(Ok(nanos))) =
                    (words.next().map(str::parse::<u64>), words.next().map(str::parse::<u128>))
                else {
                    continue;
                };
                if (index as usize) < seen.len() && std::mem::replace(&mut seen[index as usize], true) {
                    run.duplicates += 1;
                    continue;
                }
                let read_nanos = read_at.duration_since(UNIX_EPOCH).unwrap().as_nanos();
                let ts = event["ts"].as_str().unwrap_or_default().to_string();
                let ts_nanos = chrono::DateTime::parse_from_rfc3339(&ts)
                    .ok()
                    .and_then(|t| t.timestamp_nanos_opt())
                    .map_or(f64::NAN, |t| t as f64);
                let ms = |a: f64, b: f64| (a - b) / 1e6;
                run.samples.push(Sample {
                    index,
                    total: ms(read_nanos as f64, nanos as f64),
                    to_journal: ms(ts_nanos, nanos as f64),
                    from_journal: ms(read_nanos as f64, ts_nanos),
                    ts,
                });
                run.received += 1;
            }
            Some("exited") => {
                run.exited = Some(format!(
                    "{} (code {})",
                    event["state"].as_str().unwrap_or("?"),
                    event["code"].as_i64().map_or("none".to_string(), |c| c.to_string())
                ));
                // Nothing left to stop.
                scratch.spawned = false;
                break;
            }
            _ => {}
        }
    }
    run.run_time = started.elapsed();
    if let (Some((busy_a, all_a)), Some((busy_b, all_b))) = (machine_before, machine_ticks()) {
        if all_b > all_a {
            run.machine_busy = (busy_b - busy_a) as f64 / (all_b - all_a) as f64 * 100.0;
        }
    }
    run.teardown = scratch.teardown(bin, &repo);
    run
}

impl Run {
    fn print(&self, out: &mut String, n: usize, rate: f64) {
        out.push_str(&format!(
            "workload          one agent: `corral fake-agent \"sleep 1; stamp {n} {rate}\"` (generic harness), \
             {rate}/s, below the\n                  output limit (20/s average, bursts of 100); run took {:.1} s, during which\n\
             \x20                 the machine's CPUs were {:.0}% busy (all processes, /proc/stat)\n",
            self.run_time.as_secs_f64(),
            self.machine_busy
        ));
        let batches = {
            let mut ts: Vec<&str> = self.samples.iter().map(|s| s.ts.as_str()).collect();
            ts.dedup();
            ts.len()
        };
        out.push_str(&format!(
            "events            {} of {n} stamp lines arrived; {} duplicates; skipped {}; agent ended: {}{}\n",
            self.received,
            self.duplicates,
            self.skipped,
            self.exited.as_deref().unwrap_or("NOT SEEN"),
            if self.timed_out { "; TIMED OUT" } else { "" }
        ));
        out.push_str(&format!(
            "                  in {batches} journal batches (one fsync each; events of a batch share their ts)\n"
        ));
        out.push('\n');
        out.push_str("LATENCY, ms (wall clock, SystemTime on both ends; nearest-rank percentiles)\n");
        out.push_str(&format!(
            "  {:<44} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
            "", "count", "min", "p50", "p90", "p99", "max", "mean"
        ));
        let row = |label: &str, values: Vec<f64>| {
            let s = Stats::of(values);
            format!(
                "  {label:<44} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}\n",
                s.count, s.min, s.p50, s.p90, s.p99, s.max, s.mean
            )
        };
        out.push_str(&row("TOTAL: agent write -> read on `events -f`", self.samples.iter().map(|s| s.total).collect()));
        out.push_str(&row("  a: agent write -> event ts", self.samples.iter().map(|s| s.to_journal).collect()));
        out.push_str(&row(
            "  b: event ts -> read on `events -f`",
            self.samples.iter().map(|s| s.from_journal).collect(),
        ));
        out.push_str(&row("for scale: 300 B append + fdatasync in .git", self.fsync.clone()));
        out.push_str(
            "  a = PTY -> monitor pump -> log append -> monitor notifies the daemon -> daemon reads the log,\n\
             \x20     hands the batch to the journal thread (ts is taken there, before the write);\n\
             \x20 b = journal write + fdatasync -> followers woken -> journal re-read, framed to the client ->\n\
             \x20     `corral events` prints the line -> pipe -> this bench.\n",
        );
        out.push('\n');
        let buckets = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, f64::INFINITY];
        let mut counts = vec![0usize; buckets.len()];
        for s in &self.samples {
            counts[buckets.iter().position(|&b| s.total < b).unwrap()] += 1;
        }
        out.push_str("  TOTAL histogram: ");
        let mut lower = 0.0;
        let parts: Vec<String> = buckets
            .iter()
            .zip(&counts)
            .map(|(&upper, &c)| {
                let label = if upper.is_infinite() { format!(">={lower}") } else { format!("{lower}-{upper}") };
                lower = upper;
                format!("{label}: {c}")
            })
            .collect();
        out.push_str(&parts.join(", "));
        out.push('\n');
        let mut worst: Vec<&Sample> = self.samples.iter().collect();
        worst.sort_by(|a, b| b.total.total_cmp(&a.total));
        out.push_str("  slowest 5 (line: total = to ts + from ts): ");
        let parts: Vec<String> = worst
            .iter()
            .take(5)
            .map(|s| format!("#{}: {:.1} = {:.1} + {:.1}", s.index, s.total, s.to_journal, s.from_journal))
            .collect();
        out.push_str(&parts.join("; "));
        out.push_str("\n\n");
    }
}

struct Stats {
    count: usize,
    min: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

impl Stats {
    fn of(mut v: Vec<f64>) -> Stats {
        v.retain(|x| x.is_finite());
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return Stats {
                count: 0,
                min: f64::NAN,
                p50: f64::NAN,
                p90: f64::NAN,
                p99: f64::NAN,
                max: f64::NAN,
                mean: f64::NAN,
            };
        }
        Stats {
            count: v.len(),
            min: v[0],
            p50: percentile(&v, 50.0),
            p90: percentile(&v, 90.0),
            p99: percentile(&v, 99.0),
            max: v[v.len() - 1],
            mean: v.iter().sum::<f64>() / v.len() as f64,
        }
    }
}

/// Append 300 bytes and fdatasync, `n` times, in `dir`; ms each.
fn fsync_probe(dir: &Path, n: usize) -> Vec<f64> {
    use std::io::Write;
    let path = dir.join("event-latency-fsync-probe");
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
    let times = (0..n)
        .map(|_| {
            let start = Instant::now();
            file.write_all(&[b'x'; 300]).unwrap();
            file.sync_data().unwrap();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    let _ = std::fs::remove_file(&path);
    times
}

// ---- processes -------------------------------------------------------------------

// ---- the scratch folder ------------------------------------------------------------

struct Scratch {
    id: String,
    root: Option<tempfile::TempDir>,
    path: PathBuf,
    follower: Option<Child>,
    spawned: bool,
    repo: Option<PathBuf>,
    bin: Option<PathBuf>,
}

struct Cleanup {
    killed: usize,
    removal: Duration,
    left_marked: usize,
    left_in_ps: usize,
    scratch_exists: bool,
}

impl Scratch {
    fn new() -> Scratch {
        let (root, path, id) = scratch_folder("corral-latency-bench-");
        Scratch { id, root: Some(root), path, follower: None, spawned: false, repo: None, bin: None }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// A corral command for the repository at `repo`, marked, with its
    /// worktrees in the scratch folder.
    fn command(&mut self, bin: &Path, repo: &Path, args: &[&str]) -> Command {
        self.repo = Some(repo.to_path_buf());
        self.bin = Some(bin.to_path_buf());
        corral_command(bin, repo, args, &self.path, MARKER, &self.id)
    }

    fn corral(&mut self, bin: &Path, repo: &Path, args: &[&str]) -> Output {
        self.command(bin, repo, args).output().expect("corral runs")
    }

    /// Runs git in `repo`; panics on failure.
    fn git(&self, repo: &Path, args: &[&str]) {
        git(repo, args, MARKER, &self.id)
    }

    /// The orderly end: stop the agent (if it still runs), shut the daemon
    /// down, end the follower. Says how each went.
    fn teardown(&mut self, bin: &Path, repo: &Path) -> String {
        let mut said = Vec::new();
        if std::mem::take(&mut self.spawned) {
            let out = self.corral(bin, repo, &["stop", AGENT, "--grace", "1"]);
            said.push(format!("stop exit {}", out.status.code().map_or("signal".into(), |c| c.to_string())));
        }
        let out = self.corral(bin, repo, &["shutdown"]);
        said.push(format!("shutdown exit {}", out.status.code().map_or("signal".into(), |c| c.to_string())));
        if let Some(mut follower) = self.follower.take() {
            // The daemon's end closes the stream; give it a moment, then kill.
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(follower.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            match follower.try_wait() {
                Ok(Some(status)) => said.push(format!("follower ended ({status}; the daemon closed its stream)")),
                _ => {
                    let _ = follower.kill();
                    let _ = follower.wait();
                    said.push("follower killed".into());
                }
            }
        }
        said.join(", ")
    }

    /// Kills everything marked, removes the folder, and says what is left.
    fn cleanup(&mut self) -> Cleanup {
        if let (Some(bin), Some(repo)) = (self.bin.clone(), self.repo.clone()) {
            if self.follower.is_some() || self.spawned {
                self.teardown(&bin, &repo);
            }
        }
        let killed = kill_marked(MARKER, &self.id);
        let removal = remove_scratch("event_latency", &mut self.root, &self.path);
        let (left_marked, left_in_ps) = left_behind("event_latency", MARKER, &self.id, &self.path);
        Cleanup { killed, removal, left_marked, left_in_ps, scratch_exists: self.path.exists() }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.root.is_some() {
            eprintln!("event_latency bench: cleaning up {}", self.path.display());
            self.cleanup();
        }
    }
}
