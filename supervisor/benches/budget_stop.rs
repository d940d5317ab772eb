//! Budget stop latency: from the usage line that crosses a token budget to
//! the agent's last process gone, with grace 0, measured on the built
//! `corral` (issue 4's first figure).
//!
//! No real agent CLI is needed: `CORRAL_CLAUDE_BIN` (in the spawn's
//! environment, which the agent inherits) names a small shell script in the
//! scratch folder that execs `corral fake-agent "$SCRIPT"`, so `corral spawn
//! --harness claude` runs the fake agent and corral parses its output as
//! Claude Code's stream-json, metered from those lines (`--meter stream`:
//! the fake makes no model calls for the proxy to count). The script prints an `init` line and two
//! `assistant` lines of 400 input tokens each (distinct message ids; the
//! second reaches the 80% warning of `--max-tokens 1000`), then
//! `stamp 1 1` (one line `stamp 1 NANOS`, NANOS the wall-clock time of its
//! write) and at once the crossing `assistant` line (400 more: 1200 >=
//! 1000), then hangs. The crossing line is written microseconds after the
//! stamp, so the stamp is its write time.
//!
//! The end: right after `corral spawn --json` returns, the bench polls
//! `/proc/PID/stat` of the agent's pid every millisecond; the first time
//! it is gone (or a zombie) the bench takes the wall clock. The agent is one
//! process (the shell script execs the fake agent), and the bench checks
//! that no process with the agent's address is left. Latency = end - stamp.
//! The `budget_exceeded` and `exited` events' `ts` split it: stamp ->
//! `budget_exceeded` (the monitor writes the log, the daemon reads and
//! parses it, counts usage, checks budgets), `budget_exceeded` -> gone
//! (journal write + fsync, the stop command to the monitor, SIGTERM, grace
//! 0, SIGKILL), gone -> `exited` (reaping, exit record, the journal). Every
//! run also checks that `corral wait` exits 23 and the `budget_exceeded`
//! event says `tokens`, 1200 of 1000.
//!
//! Then, when the real Claude Code CLI is installed (`CORRAL_CLAUDE_BIN`,
//! else the cache tests/install-agent-clis.sh fills), 10 runs of it against
//! `corral mock-llm` (a Bash call forever, 1050 tokens a call,
//! `--max-tokens 5000 --grace 0`). Claude's lines carry no write time, so
//! these runs measure from the `budget_exceeded` event's ts to the last
//! process gone: every descendant of the agent's monitor (a child
//! subreaper) and every process with the agent's address in its
//! environment, scanned about every millisecond (a scan takes a few ms on
//! a loaded machine, which bounds the resolution). They also count the
//! model calls the server got after the crossing one.
//!
//! Run: `cargo bench -p corral --bench budget_stop`. `CORRAL_BIN` overrides
//! the binary; `BUDGET_STOP_RUNS` the number of runs (50);
//! `BUDGET_STOP_CLAUDE_RUNS` the real-Claude runs (10; 0 skips them). All
//! runs use one scratch repository and one daemon, one agent each, one
//! after another.
//!
//! Every command carries `BUDGET_STOP_BENCH_ID=<unique>` in its
//! environment; the daemon, the monitors and the agents inherit it. At the
//! end, on a panic, or on SIGINT/SIGTERM/SIGHUP, every live process with
//! the marker is killed and the scratch folder removed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

mod common;
use common::{
    alive, corral_bin, corral_command, describe, env_number, expect_json, expect_ok, git, install_interrupt_cleanup,
    kill_marked, load_average, percentile, processes_with, remove_scratch, scratch_folder,
};

const MARKER: &str = "BUDGET_STOP_BENCH_ID";
const LIMIT: u64 = 1000;
const PER_LINE: u64 = 400;

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
    // too, without it, and should not spend a minute.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("budget_stop bench: not run by `cargo bench` (no --bench argument); nothing measured");
        return;
    }
    let runs: usize = env_number("BUDGET_STOP_RUNS", 50);
    let bin = corral_bin();
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let load_start = load_average();

    let mut scratch = Scratch::new();
    install_interrupt_cleanup("budget_stop", MARKER, scratch.id.clone(), scratch.path.clone(), || {});
    eprintln!("budget_stop bench: scratch folder {} (marker {MARKER}={})", scratch.path.display(), scratch.id);

    let samples = measure(&mut scratch, &bin, runs);
    let claude_runs: usize = env_number("BUDGET_STOP_CLAUDE_RUNS", 10);
    let claude = match (claude_runs, claude_bin()) {
        (0, _) => Err("BUDGET_STOP_CLAUDE_RUNS=0".to_string()),
        (_, Err(why)) => Err(why),
        (n, Ok(claude)) => Ok(measure_claude(&mut scratch, &bin, &claude, n)),
    };
    let load_end = load_average();
    let cleanup = scratch.cleanup(&bin);

    let mut out = String::new();
    let line = "=".repeat(78);
    out.push_str(&format!(
        "\n{line}\ncorral budget stop: crossing usage line -> the agent's last process gone (grace 0)\n{line}\n"
    ));
    out.push_str(&format!("binary            {}\n", bin.display()));
    out.push_str(&format!("machine           {cores} cores\n"));
    out.push_str(&format!("load average      at start {load_start}; at end {load_end}\n"));
    out.push_str(&format!(
        "runs              {} measured of {runs} (agent: fake Claude stream-json, --max-tokens {LIMIT}, \
         crossing line {PER_LINE} tokens -> {} of {LIMIT}, --grace 0)\n",
        samples.len(),
        3 * PER_LINE
    ));
    let column = |f: fn(&Sample) -> f64| Stats::of(samples.iter().map(f).collect());
    out.push_str(&format!(
        "{:<44}{:>7} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
        "ms", "count", "min", "p50", "p90", "p99", "max"
    ));
    for (name, stats) in [
        ("crossing line -> last process gone", column(|s| s.total)),
        ("  line -> budget_exceeded event ts", column(|s| s.to_exceeded)),
        ("  budget_exceeded ts -> process gone", column(|s| s.exceeded_to_gone)),
        ("  process gone -> exited event ts", column(|s| s.gone_to_exited)),
        ("spawn returned -> crossing line (script)", column(|s| s.spawn_to_line)),
    ] {
        out.push_str(&format!(
            "{name:<44}{:>7} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}\n",
            stats.count, stats.min, stats.p50, stats.p90, stats.p99, stats.max
        ));
    }
    out.push_str(&format!(
        "(percentiles by nearest rank: with {} runs p99 is rank {}, p90 rank {})\n",
        samples.len(),
        ((0.99 * samples.len() as f64).ceil() as usize).max(1),
        ((0.9 * samples.len() as f64).ceil() as usize).max(1)
    ));
    let mut exits: Vec<String> =
        samples.iter().map(|s| s.wait_code.map_or("signal".to_string(), |c| c.to_string())).collect();
    exits.sort();
    exits.dedup();
    out.push_str(&format!("corral wait exit  {}\n", exits.join(", ")));
    match &claude {
        Err(why) => out.push_str(&format!("real Claude Code  not run: {why}\n")),
        Ok(claude) => {
            out.push_str(&format!(
                "real Claude Code  {} runs ({}; mock-llm: a Bash call forever, 1050 tokens a call, \
                 --max-tokens 5000, --grace 0); its lines carry no write time, so from the event on:\n",
                claude.len(),
                CLAUDE_PACKAGE_DIR
            ));
            let column = |f: fn(&ClaudeSample) -> f64| Stats::of(claude.iter().map(f).collect());
            for (name, stats) in [
                ("  budget_exceeded ts -> last process gone", column(|s| s.exceeded_to_gone)),
                ("  budget_exceeded ts -> exited event ts", column(|s| s.exceeded_to_exited)),
                ("  processes of the agent seen", column(|s| s.processes as f64)),
                ("  ... of them without CORRAL_ADDRESS", column(|s| s.without_address as f64)),
                ("  model calls after the crossing one", column(|s| s.calls_after as f64)),
            ] {
                out.push_str(&format!(
                    "{name:<44}{:>7} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}\n",
                    stats.count, stats.min, stats.p50, stats.p90, stats.p99, stats.max
                ));
            }
        }
    }
    for process in &cleanup.lingering {
        out.push_str(&format!("still running 3 s after `corral shutdown` (then killed): {process}\n"));
    }
    out.push_str(&format!(
        "cleanup           killed {} marked processes; {} marked left; scratch folder {}\n",
        cleanup.killed,
        cleanup.left,
        if cleanup.scratch_exists { "STILL THERE" } else { "removed" }
    ));
    out.push_str(&format!("{line}\n"));
    print!("{out}");
    if cleanup.left > 0 || samples.len() != runs {
        std::process::exit(1);
    }
}

// ---- the measurement -----------------------------------------------------------

/// One run, in ms.
struct Sample {
    /// The stamp (the crossing line's write) -> the agent's pid gone.
    total: f64,
    to_exceeded: f64,
    exceeded_to_gone: f64,
    gone_to_exited: f64,
    spawn_to_line: f64,
    wait_code: Option<i32>,
}

/// The fake agent's script: Claude Code stream-json with known usage.
fn agent_script() -> String {
    let assistant = |id: &str| {
        format!(
            r#"print '{{"type":"assistant","message":{{"id":"{id}","type":"message","role":"assistant","model":"fake","content":[{{"type":"text","text":"working"}}],"usage":{{"input_tokens":{PER_LINE},"output_tokens":0,"cache_read_input_tokens":0,"cache_creation_input_tokens":0}}}},"parent_tool_use_id":null,"session_id":"bench"}}'"#
        )
    };
    let init = r#"print '{"type":"system","subtype":"init","session_id":"bench","model":"fake","tools":[],"cwd":"."}'"#;
    format!(
        "{init}; {}; sleep 0.15; {}; sleep 0.15; stamp 1 1; {}; hang",
        assistant("msg_1"),
        assistant("msg_2"),
        assistant("msg_3")
    )
}

fn measure(scratch: &mut Scratch, bin: &Path, runs: usize) -> Vec<Sample> {
    let repo = scratch.path.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    scratch.git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README.md"), "# budget stop\n").unwrap();
    scratch.git(&repo, &["add", "-A"]);
    scratch.git(&repo, &["commit", "-q", "-m", "first"]);
    scratch.repo = Some(repo.clone());

    // The fake Claude CLI: ignores Claude's arguments, runs the script.
    let fake = scratch.path.join("fake-claude.sh");
    let quoted = format!("'{}'", bin.to_str().expect("a UTF-8 binary path").replace('\'', r"'\''"));
    std::fs::write(&fake, format!("#!/bin/sh\nexec {quoted} fake-agent \"$BUDGET_STOP_SCRIPT\"\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = agent_script();

    // Start the daemon before the first run, so no run pays for it.
    expect_ok(&scratch.corral(bin, &repo, &["ps", "--json"]), "corral ps");

    let mut samples = Vec::with_capacity(runs);
    for run in 0..runs {
        let name = format!("b{run}");
        let address = format!("/root/{name}");
        let spawned = scratch
            .command(bin, &repo, &["spawn", &name, "--harness", "claude", "--max-tokens", &LIMIT.to_string()])
            // The fake CLI makes no model calls: its usage lines are the meter.
            .args(["--meter", "stream", "--grace", "0", "--task", "spend", "--json"])
            .env("CORRAL_CLAUDE_BIN", &fake)
            .env("BUDGET_STOP_SCRIPT", &script)
            .output()
            .expect("corral spawn runs");
        let spawn_returned = SystemTime::now();
        let spawned = expect_json(&spawned, "corral spawn");
        let pid = spawned["pid"].as_u64().expect("a pid in spawn --json") as u32;

        // Poll until the agent's process is gone (or a zombie).
        let deadline = Instant::now() + Duration::from_secs(60);
        let gone = loop {
            if !alive(pid) {
                break SystemTime::now();
            }
            assert!(Instant::now() < deadline, "run {run}: {address} (pid {pid}) still alive after 60 s");
            std::thread::sleep(Duration::from_millis(1));
        };
        let left = scratch.agent_processes(&address);
        assert!(left.is_empty(), "run {run}: processes of {address} left after its pid ended: {left:?}");

        let waited = scratch.corral(bin, &repo, &["wait", &name, "--timeout", "60"]);
        let events = scratch.corral(bin, &repo, &["events", "--agent", &address]);
        let events = expect_ok(&events, "corral events");
        let events: Vec<Value> = events.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let find = |kind: &str| {
            events
                .iter()
                .find(|e| e["type"] == kind)
                .unwrap_or_else(|| panic!("run {run}: no {kind} event for {address}: {events:?}"))
        };
        let exceeded = find("budget_exceeded");
        assert_eq!(
            (exceeded["kind"].as_str(), exceeded["used"].as_f64(), exceeded["limit"].as_f64()),
            (Some("tokens"), Some((3 * PER_LINE) as f64), Some(LIMIT as f64)),
            "run {run}: {exceeded}"
        );
        let exited = find("exited");
        assert_eq!(exited["state"], "budget_exceeded", "run {run}: {exited}");
        assert_eq!(waited.status.code(), Some(23), "run {run}: corral wait: {}", describe(&waited));

        // The stamp: from the agent's log (the output event may be shortened).
        let ps = expect_json(&scratch.corral(bin, &repo, &["ps", "--all", "--json"]), "corral ps");
        let id = ps
            .as_array()
            .and_then(|a| a.iter().find(|a| a["address"] == address.as_str()))
            .and_then(|a| a["id"].as_u64())
            .unwrap_or_else(|| panic!("run {run}: no id for {address} in ps: {ps}"));
        let log = std::fs::read(repo.join(format!(".git/corral/agents/{id}/output.log"))).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        let stamp = log
            .lines()
            .find_map(|l| l.trim().strip_prefix("stamp 1 ").and_then(|n| n.trim().parse::<u128>().ok()))
            .unwrap_or_else(|| panic!("run {run}: no stamp line in {address}'s log:\n{log}"));

        let nanos = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as f64;
        let ts = |e: &Value| {
            let text = e["ts"].as_str().unwrap_or_default();
            chrono::DateTime::parse_from_rfc3339(text)
                .ok()
                .and_then(|t| t.timestamp_nanos_opt())
                .unwrap_or_else(|| panic!("run {run}: an event without a ts: {e}")) as f64
        };
        let (stamp, gone, exceeded_at, exited_at) = (stamp as f64, nanos(gone), ts(exceeded), ts(exited));
        let ms = |a: f64, b: f64| (a - b) / 1e6;
        let sample = Sample {
            total: ms(gone, stamp),
            to_exceeded: ms(exceeded_at, stamp),
            exceeded_to_gone: ms(gone, exceeded_at),
            gone_to_exited: ms(exited_at, gone),
            spawn_to_line: ms(stamp, nanos(spawn_returned)),
            wait_code: waited.status.code(),
        };
        eprintln!(
            "budget_stop bench: run {:>2}: {:>7.2} ms (line -> exceeded {:>6.2}, -> gone {:>6.2}, -> exited {:>6.2})",
            run, sample.total, sample.to_exceeded, sample.exceeded_to_gone, sample.gone_to_exited
        );
        samples.push(sample);
    }
    samples
}

struct Stats {
    count: usize,
    min: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Stats {
    fn of(mut v: Vec<f64>) -> Stats {
        v.sort_by(|a, b| a.total_cmp(b));
        if v.is_empty() {
            return Stats { count: 0, min: f64::NAN, p50: f64::NAN, p90: f64::NAN, p99: f64::NAN, max: f64::NAN };
        }
        Stats {
            count: v.len(),
            min: v[0],
            p50: percentile(&v, 50.0),
            p90: percentile(&v, 90.0),
            p99: percentile(&v, 99.0),
            max: v[v.len() - 1],
        }
    }
}

// ---- the same with the real Claude Code CLI (optional) ----------------------------

/// Must match tests/install-agent-clis.sh.
const CLAUDE_PACKAGE_DIR: &str = "@anthropic-ai+claude-code@2.1.328";

/// One real-Claude run, in ms.
struct ClaudeSample {
    exceeded_to_gone: f64,
    exceeded_to_exited: f64,
    /// Distinct processes of the agent the bench saw.
    processes: usize,
    /// Of those, processes below the monitor without the agent's address
    /// in their environment.
    without_address: usize,
    calls_after: u64,
}

/// `CORRAL_CLAUDE_BIN`, else the cache `tests/install-agent-clis.sh` fills.
fn claude_bin() -> Result<PathBuf, String> {
    let non_empty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let path = match non_empty("CORRAL_CLAUDE_BIN") {
        Some(path) => PathBuf::from(path),
        None => non_empty("CORRAL_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| non_empty("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("corral")))
            .or_else(|| non_empty("HOME").map(|h| PathBuf::from(h).join(".cache").join("corral")))
            .ok_or("no HOME")?
            .join("agent-clis")
            .join(CLAUDE_PACKAGE_DIR)
            .join("node_modules/.bin/claude"),
    };
    if path.exists() {
        Ok(path)
    } else {
        Err(format!("no Claude Code CLI at {} (tests/install-agent-clis.sh installs it)", path.display()))
    }
}

/// Real Claude Code against `corral mock-llm` (a Bash call forever, 1050
/// tokens a call), `--max-tokens 5000 --grace 0`: from the
/// `budget_exceeded` event's ts to the last process with the agent's
/// address gone (the bench scans /proc every millisecond).
fn measure_claude(scratch: &mut Scratch, bin: &Path, claude: &Path, runs: usize) -> Vec<ClaudeSample> {
    let repo = scratch.repo.clone().expect("the repository");
    let script = scratch.path.join("mock-script.json");
    let record = scratch.path.join("mock-requests.jsonl");
    let step = serde_json::json!({"shell": "true", "repeat": "forever",
        "usage": {"input": 20, "output": 300, "cache_read": 600, "cache_write": 130}});
    std::fs::write(&script, serde_json::json!({"steps": [step]}).to_string()).unwrap();
    let mut mock = scratch
        .command(bin, &repo, &["mock-llm", "--script"])
        .arg(&script)
        .arg("--record")
        .arg(&record)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("corral mock-llm starts");
    let mut first = String::new();
    use std::io::BufRead;
    let mut reader = std::io::BufReader::new(mock.stdout.take().unwrap());
    let _ = reader.read_line(&mut first);
    let url = first.trim().strip_prefix("mock-llm listening on ").expect("mock-llm prints its URL").to_string();
    let home = scratch.path.join("home");
    std::fs::create_dir_all(&home).unwrap();

    let model_requests = || {
        std::fs::read_to_string(&record)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|r| {
                r["method"] == "POST"
                    && r["path"].as_str().is_some_and(|p| p.contains("/messages?") || p.ends_with("/messages"))
            })
            .count() as u64
    };
    let mut samples = Vec::with_capacity(runs);
    for run in 0..runs {
        let name = format!("c{run}");
        let address = format!("/root/{name}");
        let before = model_requests();
        let spawned = scratch
            .command(bin, &repo, &["spawn", &name, "--harness", "claude", "--max-tokens", "5000", "--grace", "0"])
            .args(["--task", "Run true for ever.", "--json"])
            .env("CORRAL_CLAUDE_BIN", claude)
            .env("ANTHROPIC_BASE_URL", &url)
            .env("ANTHROPIC_API_KEY", "mock-key")
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .env("HOME", &home)
            .output()
            .expect("corral spawn runs");
        let spawned = expect_json(&spawned, "corral spawn (claude)");
        let pid = spawned["pid"].as_u64().expect("a pid in spawn --json") as u32;
        // The agent's processes: every live descendant of its monitor (the
        // agent's parent, a child subreaper, so orphans stay below it), and
        // anything with its address in the environment.
        let monitor = parent_of(pid).expect("the agent's monitor");
        let mut seen = std::collections::HashSet::from([pid]);
        let mut without_address = std::collections::HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        let gone = loop {
            let below = descendants(monitor);
            let by_address = scratch.agent_processes(&address);
            let at = SystemTime::now();
            if below.is_empty() && by_address.is_empty() && !alive(pid) {
                break at;
            }
            // A process below the monitor whose environment is readable and
            // has no address (one that just forked or already ended reads as
            // empty, and is no evidence either way).
            let needle = format!("CORRAL_ADDRESS={address}");
            for &other in below.iter().filter(|p| !by_address.contains(p)) {
                let environ = std::fs::read(format!("/proc/{other}/environ")).unwrap_or_default();
                if environ.is_empty() || environ.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()) {
                    continue;
                }
                if without_address.insert(other) {
                    let cmdline = std::fs::read(format!("/proc/{other}/cmdline")).unwrap_or_default();
                    eprintln!(
                        "budget_stop bench: claude run {run}: {other} is below the monitor without \
                         CORRAL_ADDRESS: {}",
                        String::from_utf8_lossy(&cmdline).replace('\0', " ")
                    );
                }
            }
            seen.extend(below);
            seen.extend(by_address);
            assert!(Instant::now() < deadline, "claude run {run}: {address} still has processes after 120 s");
            std::thread::sleep(Duration::from_millis(1));
        };
        let waited = scratch.corral(bin, &repo, &["wait", &name, "--timeout", "60"]);
        assert_eq!(waited.status.code(), Some(23), "claude run {run}: corral wait: {}", describe(&waited));
        let events = expect_ok(&scratch.corral(bin, &repo, &["events", "--agent", &address]), "corral events");
        let events: Vec<Value> = events.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let ts = |kind: &str| {
            let event = events
                .iter()
                .find(|e| e["type"] == kind)
                .unwrap_or_else(|| panic!("claude run {run}: no {kind} event: {events:?}"));
            chrono::DateTime::parse_from_rfc3339(event["ts"].as_str().unwrap_or_default())
                .ok()
                .and_then(|t| t.timestamp_nanos_opt())
                .expect("an event ts") as f64
        };
        let (exceeded, exited) = (ts("budget_exceeded"), ts("exited"));
        let gone = gone.duration_since(UNIX_EPOCH).unwrap().as_nanos() as f64;
        let calls = model_requests() - before;
        let sample = ClaudeSample {
            exceeded_to_gone: (gone - exceeded) / 1e6,
            exceeded_to_exited: (exited - exceeded) / 1e6,
            processes: seen.len(),
            without_address: without_address.len(),
            calls_after: calls.saturating_sub(5),
        };
        eprintln!(
            "budget_stop bench: claude run {run}: exceeded -> gone {:.2} ms, -> exited {:.2} ms; {} processes \
             ({} without the address); {calls} model calls",
            sample.exceeded_to_gone, sample.exceeded_to_exited, sample.processes, sample.without_address
        );
        samples.push(sample);
    }
    let _ = mock.kill();
    let _ = mock.wait();
    samples
}

// ---- processes -------------------------------------------------------------------

/// The parent pid, from /proc/PID/stat.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Live (not zombie) descendants of `root`, not `root` itself.
fn descendants(root: u32) -> Vec<u32> {
    let mut children: std::collections::HashMap<u32, Vec<u32>> = std::collections::HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if let Some(parent) = parent_of(pid) {
            children.entry(parent).or_default().push(pid);
        }
    }
    let mut found = Vec::new();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        for &child in children.get(&pid).map_or(&[][..], Vec::as_slice) {
            stack.push(child);
            if alive(child) {
                found.push(child);
            }
        }
    }
    found
}

// ---- the scratch folder ------------------------------------------------------------

struct Scratch {
    id: String,
    root: Option<tempfile::TempDir>,
    path: PathBuf,
    repo: Option<PathBuf>,
}

struct Cleanup {
    killed: usize,
    /// Marked processes still there 3 s after `corral shutdown` (then killed).
    lingering: Vec<String>,
    left: usize,
    scratch_exists: bool,
}

impl Scratch {
    fn new() -> Scratch {
        let (root, path, id) = scratch_folder("corral-budget-bench-");
        Scratch { id, root: Some(root), path, repo: None }
    }

    /// A corral command for the repository at `repo`, marked, with its
    /// worktrees in the scratch folder.
    fn command(&self, bin: &Path, repo: &Path, args: &[&str]) -> Command {
        corral_command(bin, repo, args, &self.path, MARKER, &self.id)
    }

    fn corral(&self, bin: &Path, repo: &Path, args: &[&str]) -> Output {
        self.command(bin, repo, args).output().expect("corral runs")
    }

    /// Live processes of one agent (its address and this bench's marker).
    fn agent_processes(&self, address: &str) -> Vec<u32> {
        processes_with(&[&format!("{MARKER}={}", self.id), &format!("CORRAL_ADDRESS={address}")])
    }

    /// Runs git in `repo`; panics on failure.
    fn git(&self, repo: &Path, args: &[&str]) {
        git(repo, args, MARKER, &self.id)
    }

    /// Shuts the daemon down, kills everything marked, removes the folder.
    fn cleanup(&mut self, bin: &Path) -> Cleanup {
        let marker = format!("{MARKER}={}", self.id);
        let mut lingering = Vec::new();
        if let Some(repo) = self.repo.take() {
            let _ = self.command(bin, &repo, &["shutdown"]).output();
            // Every agent ended, so nothing should outlive the daemon: give
            // it a moment to exit, then name whatever is still there.
            let deadline = Instant::now() + Duration::from_secs(3);
            while !processes_with(&[&marker]).is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            for pid in processes_with(&[&marker]) {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                lingering.push(format!("{pid} {}", cmdline.trim_end()));
            }
        }
        let killed = kill_marked(MARKER, &self.id);
        remove_scratch("budget_stop", &mut self.root, &self.path);
        let left = processes_with(&[&format!("{MARKER}={}", self.id)]).len();
        Cleanup { killed, lingering, left, scratch_exists: self.path.exists() }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.root.is_some() {
            eprintln!("budget_stop bench: cleaning up {}", self.path.display());
            let bin = corral_bin();
            self.cleanup(&bin);
        }
    }
}
