//! The foundation's figures, measured on the built `corral` binary:
//!
//! 1. spawn latency on a 20,000-file repository, cold and with a warm
//!    worktree pool (`worktree_pool = 2`): `corral spawn` (client
//!    command to agent running) against `git worktree add` on the same
//!    repository, with a breakdown of where a spawn's time goes;
//! 2. what 100 idle agents cost: resident memory (RSS, PSS, private) and
//!    CPU of the daemon and the monitors, and of the agents apart.
//!
//! Run: `cargo bench -p corral --bench foundation` (cargo builds the
//! `corral` binary of the package first). `CORRAL_BIN` overrides the
//! binary; `FOUNDATION_BENCH_QUICK=1` shrinks every size for a smoke run.
//! Without `--bench` (`cargo test --all-targets` runs it so) it measures
//! nothing. A full run takes 2 to 4 minutes, a minute of which is removing
//! the 32 worktrees (some 640,000 files) at the end.
//!
//! Everything happens in one temporary folder. Every command the bench
//! runs carries `FOUNDATION_BENCH_ID=<unique>` in its environment; the
//! daemon, the monitors and the agents inherit it (the daemon passes the
//! client's environment to agents minus `CORRAL_*` names, which is why the
//! marker is not called `CORRAL_...`). At the end, on a panic, or on
//! SIGINT/SIGTERM/SIGHUP, every live process carrying the marker is
//! killed and the folder removed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

mod common;
use common::{
    corral_bin, corral_command, expect_json, git, install_interrupt_cleanup, kill_marked, left_behind, load_average,
    load_is_busy, machine_ticks, percentile, remove_scratch, scratch_folder,
};

const MARKER: &str = "FOUNDATION_BENCH_ID";

/// The sizes of one run.
struct Sizes {
    folders: usize,
    files_per_folder: usize,
    spawns: usize,
    idle_agents: usize,
    window: Duration,
}

impl Sizes {
    fn from_env() -> Sizes {
        if std::env::var_os("FOUNDATION_BENCH_QUICK").is_some_and(|v| !v.is_empty() && v != "0") {
            Sizes { folders: 20, files_per_folder: 100, spawns: 3, idle_agents: 10, window: Duration::from_secs(2) }
        } else {
            Sizes { folders: 200, files_per_folder: 100, spawns: 15, idle_agents: 100, window: Duration::from_secs(10) }
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
    // too, without it, and should not spend two minutes and 100 agents.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("foundation bench: not run by `cargo bench` (no --bench argument); nothing measured");
        return;
    }
    let sizes = Sizes::from_env();
    let bin = corral_bin();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load_start = load_average();

    // Orphans (the daemon once its client exits, monitors and agents once
    // killed) become this process's children, so cleanup can reap them
    // rather than leave zombies to an init that may never reap.
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes one integer argument.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let mut scratch = Scratch::new();
    install_interrupt_cleanup("foundation", MARKER, scratch.id.clone(), scratch.path().to_path_buf(), || {
        reap_children();
    });
    eprintln!("foundation bench: scratch folder {} (marker {MARKER}={})", scratch.path().display(), scratch.id);

    let spawn = spawn_latency(&scratch, &bin, &sizes);
    // Part 1's daemon, monitors and agents go before part 2 measures.
    let between = kill_marked(MARKER, &scratch.id);
    reap_children();
    let idle = idle_agents(&scratch, &bin, &sizes);

    let load_end = load_average();
    let cleanup = scratch.cleanup();

    let mut out = String::new();
    let line = "=".repeat(78);
    out.push_str(&format!("\n{line}\ncorral foundation figures\n{line}\n"));
    out.push_str(&format!("binary            {}\n", bin.display()));
    out.push_str(&format!("machine           {cores} cores; load average at start {load_start}\n"));
    if load_is_busy(&load_start, cores) {
        out.push_str("                  (the machine was busy at start: figures include contention)\n");
    }
    out.push('\n');
    spawn.print(&mut out, &sizes);
    out.push('\n');
    idle.print(&mut out);
    out.push('\n');
    out.push_str(&format!("load average      at start {load_start}; at end {load_end}\n"));
    if load_is_busy(&load_start, cores) || load_is_busy(&load_end, cores) {
        out.push_str(
            "                  (load is at or above half the cores: other builds shared the machine; \
             latencies are upper bounds)\n",
        );
    }
    out.push_str(&format!(
        "cleanup           killed {} processes between the parts and {} at the end; removed the scratch folder in {:.1} s\n",
        between,
        cleanup.killed,
        cleanup.removal.as_secs_f64()
    ));
    out.push_str(&format!(
        "left behind       {} processes with the marker, {} in `ps` naming the scratch folder, {} unreaped children{}\n",
        cleanup.left_marked,
        cleanup.left_in_ps,
        cleanup.zombies,
        if cleanup.scratch_exists { "; THE SCRATCH FOLDER IS STILL THERE" } else { "" }
    ));
    out.push_str(&format!("{line}\n"));
    print!("{out}");
    if cleanup.left_marked > 0 || cleanup.left_in_ps > 0 || cleanup.zombies > 0 {
        std::process::exit(1);
    }
}

// ---- part 1: spawn latency ---------------------------------------------------

struct SpawnFigures {
    files: usize,
    repo_setup: Duration,
    first_corral: Duration,
    first_git: Duration,
    corral: Vec<Duration>,
    git: Vec<Duration>,
    /// With `worktree_pool = 2`, and the anchor timed beside it.
    pooled: Vec<Duration>,
    pooled_git: Vec<Duration>,
    ps_round_trip: Vec<Duration>,
    fsync: Vec<Duration>,
    /// Per phase, one duration in ms per warm spawn (may be missing).
    phases: Vec<(&'static str, Vec<f64>)>,
    cpu: CpuPerCall,
    /// How busy the whole machine was during the interleaved runs, %.
    machine_busy: f64,
    filesystem: String,
}

fn spawn_latency(scratch: &Scratch, bin: &Path, sizes: &Sizes) -> SpawnFigures {
    let repo = scratch.path().join("big");
    let setup = Instant::now();
    let files = make_big_repo(scratch, &repo, sizes);
    let repo_setup = setup.elapsed();
    let git_trees = scratch.path().join("git-worktrees");
    std::fs::create_dir_all(&git_trees).unwrap();
    let bin_text = bin.to_str().expect("utf-8 binary path");

    let corral_spawn = |name: &str| -> (Duration, SystemTime, SystemTime, Value) {
        let wall_start = SystemTime::now();
        let start = Instant::now();
        let out = scratch.corral(bin, &repo, &["spawn", name, "--json", "--", bin_text, "fake-agent", "hang"]);
        let took = start.elapsed();
        let wall_end = SystemTime::now();
        let json = expect_json(&out, &format!("corral spawn {name}"));
        (took, wall_start, wall_end, json)
    };
    let git_add = |name: &str| -> Duration {
        let dir = git_trees.join(name);
        let dir = dir.to_str().unwrap();
        let start = Instant::now();
        scratch.git(&repo, &["worktree", "add", "-q", "-b", name, dir, "HEAD"]);
        start.elapsed()
    };

    // The very first spawn starts the daemon as well.
    let (first_corral, ..) = corral_spawn("b00");
    let first_git = git_add("w00");

    let mut ps_round_trip = Vec::new();
    for _ in 0..sizes.spawns {
        let start = Instant::now();
        let out = scratch.corral(bin, &repo, &["ps", "--json"]);
        ps_round_trip.push(start.elapsed());
        expect_json(&out, "corral ps");
    }

    // Interleaved, so a change in the machine's load hits both alike. CPU
    // per call: the daemon's from /proc (it is not our child), the client's
    // and git's from this process's waited-for children.
    let daemon_pid = read_pid(&repo.join(".git/corral/daemon.pid"));
    let mut corral = Vec::new();
    let mut git = Vec::new();
    let mut runs = Vec::new();
    let mut cpu = CpuPerCall::default();
    let machine_before = machine_ticks();
    for i in 1..=sizes.spawns {
        // Which goes first alternates: a checkout leaves tens of MB of
        // dirty pages that the kernel writes back while the next one runs.
        let git_first = i % 2 == 0;
        let mut git_side = || {
            let git_before = children_cpu();
            git.push(git_add(&format!("w{i:02}")));
            cpu.git.push(diff(git_before, children_cpu()));
        };
        if git_first {
            git_side();
        }
        let (daemon_before, client_before) = (proc_cpu(daemon_pid), children_cpu());
        let (took, wall_start, wall_end, json) = corral_spawn(&format!("b{i:02}"));
        let (daemon_after, client_after) = (proc_cpu(daemon_pid), children_cpu());
        cpu.daemon.push(diff(daemon_before, daemon_after));
        cpu.client.push(diff(client_before, client_after));
        corral.push(took);
        runs.push((wall_start, wall_end, json));
        if !git_first {
            git_side();
        }
    }
    let machine_busy = busy_percent(machine_before, machine_ticks());

    // The same with a warm pool (`[supervisor] worktree_pool = 2`, read at
    // the next spawn): each timed call starts with the pool refilled and
    // nothing else running, so neither side pays for the refill of the
    // other.
    std::fs::write(repo.join("corral.toml"), "[supervisor]\nworktree_pool = 2\n").unwrap();
    let (_, _, _, json) = corral_spawn("p00");
    let pool = PathBuf::from(json["worktree"].as_str().expect("spawn names its worktree")).with_file_name(".pool");
    let head = git_output(&repo, &["rev-parse", "HEAD"]);
    let pool_ready = || {
        let deadline = Instant::now() + Duration::from_secs(600);
        while pool_entries(&pool, &head) < 2 {
            assert!(Instant::now() < deadline, "the worktree pool did not refill in 10 minutes");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut pooled = Vec::new();
    let mut pooled_git = Vec::new();
    for i in 1..=sizes.spawns {
        pool_ready();
        let (took, _, _, json) = corral_spawn(&format!("p{i:02}"));
        let gitdir = std::fs::read_to_string(Path::new(json["worktree"].as_str().unwrap()).join(".git")).unwrap();
        assert!(gitdir.contains(&head), "spawn p{i:02} did not get a pooled worktree: {gitdir}");
        pooled.push(took);
        pool_ready();
        pooled_git.push(git_add(&format!("q{i:02}")));
    }

    let fsync = fsync_probe(scratch.path(), sizes.spawns);
    let phases = spawn_phases(&repo, &runs);
    SpawnFigures {
        files,
        repo_setup,
        first_corral,
        first_git,
        corral,
        git,
        pooled,
        pooled_git,
        ps_round_trip,
        fsync,
        phases,
        cpu,
        machine_busy,
        filesystem: filesystem_of(scratch.path()),
    }
}

/// (user, system) CPU seconds of each call.
#[derive(Default)]
struct CpuPerCall {
    daemon: Vec<(f64, f64)>,
    client: Vec<(f64, f64)>,
    git: Vec<(f64, f64)>,
}

fn diff(a: (f64, f64), b: (f64, f64)) -> (f64, f64) {
    (b.0 - a.0, b.1 - a.1)
}

/// Ready entries of the worktree pool at `commit`.
fn pool_entries(pool: &Path, commit: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(pool) else { return 0 };
    entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(commit) && n.ends_with(".ready")))
        .count()
}

fn git_output(repo: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git").arg("-C").arg(repo).args(args).output().expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn read_pid(path: &Path) -> u32 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// (user, system) CPU seconds of one process, from /proc/PID/stat.
fn proc_cpu(pid: u32) -> (f64, f64) {
    let hz = clock_ticks() as f64;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_default();
    match fields[..] {
        [user, system] => (user as f64 / hz, system as f64 / hz),
        _ => (f64::NAN, f64::NAN),
    }
}

/// (user, system) CPU seconds of this process's waited-for children.
fn children_cpu() -> (f64, f64) {
    // SAFETY: getrusage fills the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(usage.ru_utime), secs(usage.ru_stime))
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf only reads a constant.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64
}

/// The file system type of `path`, by its statfs magic number.
fn filesystem_of(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return "?".into() };
    // SAFETY: statfs fills the struct we pass; the path is NUL-terminated.
    let mut info: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut info) } != 0 {
        return "?".into();
    }
    match info.f_type as u64 {
        0xEF53 => "ext2/3/4".into(),
        0x0102_1994 => "tmpfs".into(),
        0x9123_683E => "btrfs".into(),
        0x5846_5342 => "xfs".into(),
        0x794C_7630 => "overlayfs".into(),
        0x2FC1_2FC1 => "zfs".into(),
        other => format!("0x{other:x}"),
    }
}

/// `folders` x `files_per_folder` small files with distinct contents, one
/// commit, packed (as a cloned repository would be).
fn make_big_repo(scratch: &Scratch, repo: &Path, sizes: &Sizes) -> usize {
    let mut count = 0;
    for d in 0..sizes.folders {
        let dir = repo.join(format!("src/mod{d:03}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..sizes.files_per_folder {
            let mut text = format!("// module {d}, file {f}\n");
            let mut x = (d * 1_000_003 + f * 7919 + 12345) as u64;
            while text.len() < 300 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                text.push_str(&format!("pub const C{:x}: u64 = {};\n", x >> 40, x >> 20));
            }
            std::fs::write(dir.join(format!("file{f:03}.rs")), text).unwrap();
            count += 1;
        }
    }
    scratch.git(repo, &["init", "-q", "-b", "main"]);
    scratch.git(repo, &["add", "-A"]);
    scratch.git(repo, &["commit", "-q", "-m", "20,000 files"]);
    scratch.git(repo, &["repack", "-a", "-d", "-q"]);
    scratch.git(repo, &["prune-packed"]);
    count
}

/// Write 300 bytes and fdatasync, `n` times, in the scratch folder (the
/// same file system as the journal).
fn fsync_probe(dir: &Path, n: usize) -> Vec<Duration> {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
    (0..n)
        .map(|_| {
            let start = Instant::now();
            file.write_all(&[b'x'; 300]).unwrap();
            file.sync_data().unwrap();
            start.elapsed()
        })
        .collect()
}

/// Where each warm spawn's time went, from the journal's timestamps and
/// the mtimes of the files the daemon, git and the monitor write.
fn spawn_phases(repo: &Path, runs: &[(SystemTime, SystemTime, Value)]) -> Vec<(&'static str, Vec<f64>)> {
    let state = repo.join(".git/corral");
    let journal = std::fs::read_to_string(state.join("events.jsonl")).unwrap_or_default();
    let mut spawned: HashMap<String, (SystemTime, u64)> = HashMap::new();
    let mut started: HashMap<String, SystemTime> = HashMap::new();
    for line in journal.lines() {
        let Ok(event) = serde_json::from_str::<Value>(line) else { continue };
        let (Some(agent), Some(ts)) = (event["agent"].as_str(), event["ts"].as_str()) else { continue };
        let Ok(ts) = chrono::DateTime::parse_from_rfc3339(ts) else { continue };
        let ts = SystemTime::from(ts.with_timezone(&chrono::Utc));
        match event["type"].as_str() {
            Some("spawned") => {
                spawned.insert(agent.to_string(), (ts, event["id"].as_u64().unwrap_or(0)));
            }
            Some("started") => {
                started.insert(agent.to_string(), ts);
            }
            _ => {}
        }
    }
    let names = [
        "client start, connect, validate (until `spawned` stamped)",
        "`spawned` journaled + fsynced, branch + worktree admin files",
        "checkout of the files + index write (`git worktree add`)",
        "daemon: after checkout until monitor spec written",
        "monitor process start (exec, read spec)",
        "PTY + agent exec + daemon connect/hello",
        "`started` journaled + fsynced, reply, client exit",
    ];
    let mut phases: Vec<(&'static str, Vec<f64>)> = names.iter().map(|n| (*n, Vec::new())).collect();
    let mtime = |path: PathBuf| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    for (wall_start, wall_end, json) in runs {
        let Some(address) = json["address"].as_str() else { continue };
        let (Some((t_spawned, id)), Some(t_started)) = (spawned.get(address), started.get(address)) else { continue };
        let worktree = PathBuf::from(json["worktree"].as_str().unwrap_or_default());
        // The worktree's `.git` file names its admin folder.
        let admin = std::fs::read_to_string(worktree.join(".git"))
            .ok()
            .and_then(|s| s.strip_prefix("gitdir:").map(|p| PathBuf::from(p.trim())));
        let Some(admin) = admin else { continue };
        let agent_dir = state.join("agents").join(id.to_string());
        let points = [
            Some(*wall_start),
            Some(*t_spawned),
            mtime(admin.join("HEAD")),
            mtime(admin.join("index")),
            mtime(agent_dir.join("spec.json")),
            mtime(agent_dir.join("monitor.pid")),
            Some(*t_started),
            Some(*wall_end),
        ];
        for (i, pair) in points.windows(2).enumerate() {
            if let [Some(a), Some(b)] = pair {
                let ms = match b.duration_since(*a) {
                    Ok(d) => d.as_secs_f64() * 1e3,
                    Err(e) => -e.duration().as_secs_f64() * 1e3,
                };
                phases[i].1.push(ms);
            }
        }
    }
    phases
}

impl SpawnFigures {
    fn print(&self, out: &mut String, sizes: &Sizes) {
        let n = self.corral.len();
        out.push_str(&format!(
            "1. SPAWN LATENCY on a {}-file repository ({} folders x {} files of ~300 B, one commit, packed; made in {:.1} s)\n",
            self.files,
            sizes.folders,
            sizes.files_per_folder,
            self.repo_setup.as_secs_f64()
        ));
        out.push_str(&format!(
            "   N={n} each, interleaved; scratch folder on {}; the machine was {:.0}% busy (all cores) meanwhile\n",
            self.filesystem, self.machine_busy
        ));
        out.push_str("   wall time of the command, ms:\n");
        out.push_str(&format!("   {:<52} {:>8} {:>8} {:>8}\n", "", "min", "median", "p90"));
        let row = |label: &str, v: &[Duration]| {
            let s = stats(v);
            format!("   {label:<52} {:>8.1} {:>8.1} {:>8.1}\n", s.0, s.1, s.2)
        };
        out.push_str(&row("corral spawn --json -- corral fake-agent hang", &self.corral));
        out.push_str(&row("git worktree add -b wNN DIR HEAD", &self.git));
        let ratio = stats(&self.corral).1 / stats(&self.git).1;
        out.push_str(&format!("   ratio of medians corral / git: {ratio:.2}x\n"));
        out.push_str(&row("corral spawn, worktree_pool = 2 (a ready worktree)", &self.pooled));
        out.push_str(&row("git worktree add -b qNN DIR HEAD (beside it)", &self.pooled_git));
        let ratio = stats(&self.pooled).1 / stats(&self.pooled_git).1;
        out.push_str(&format!("   ratio of medians pooled corral / git: {ratio:.2}x (goal: at most 0.10x)\n"));
        out.push_str(&format!(
            "   first corral spawn, daemon start included: {:.1} ms (first git worktree add: {:.1} ms)\n",
            ms(self.first_corral),
            ms(self.first_git)
        ));
        out.push_str(&row("for scale: `corral ps --json`, daemon running", &self.ps_round_trip));
        out.push_str(&row("for scale: write 300 B + fdatasync on this disk", &self.fsync));
        let cpu_row = |label: &str, v: &[(f64, f64)]| {
            let user: Vec<f64> = v.iter().map(|c| c.0 * 1e3).collect();
            let system: Vec<f64> = v.iter().map(|c| c.1 * 1e3).collect();
            format!("     {label:<46} user {:>7.0}  system {:>7.0}\n", median_f64(&user), median_f64(&system))
        };
        out.push_str("   CPU per call, median ms (daemon from /proc in 10 ms ticks; client and git from rusage):\n");
        out.push_str(&cpu_row("corral daemon (validation, libgit2, journal)", &self.cpu.daemon));
        out.push_str(&cpu_row("corral client", &self.cpu.client));
        out.push_str(&cpu_row("git worktree add", &self.cpu.git));
        out.push_str("   where a corral spawn's time goes (median of each phase over the N warm spawns, ms;\n");
        out.push_str("   journal timestamps (exact) and file mtimes (rounded down to a kernel tick, a few ms)):\n");
        let mut total = 0.0;
        for (name, values) in &self.phases {
            let median = median_f64(values);
            total += median;
            out.push_str(&format!("     {name:<62} {median:>8.1}  (n={})\n", values.len()));
        }
        out.push_str(&format!("     {:<62} {total:>8.1}\n", "sum of medians"));
    }
}

// ---- part 2: idle agents -----------------------------------------------------

struct IdleFigures {
    agents: usize,
    daemon_start: Duration,
    spawn_all: Duration,
    window: Duration,
    hz: u64,
    daemon: Proc,
    monitors: Vec<Proc>,
    agent_procs: Vec<Proc>,
    machine_busy: f64,
}

/// Memory (kB, from smaps_rollup) and CPU ticks over the window of one process.
#[derive(Default, Clone)]
struct Proc {
    rss: u64,
    pss: u64,
    private: u64,
    threads: u64,
    ticks: u64,
    ok: bool,
}

fn idle_agents(scratch: &Scratch, bin: &Path, sizes: &Sizes) -> IdleFigures {
    let repo = scratch.path().join("small");
    std::fs::create_dir_all(&repo).unwrap();
    scratch.git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README.md"), "# idle agents\n").unwrap();
    scratch.git(&repo, &["add", "-A"]);
    scratch.git(&repo, &["commit", "-q", "-m", "first"]);
    let bin_text = bin.to_str().unwrap();

    let start = Instant::now();
    expect_json(&scratch.corral(bin, &repo, &["ps", "--json"]), "corral ps");
    let daemon_start = start.elapsed();

    let start = Instant::now();
    for i in 0..sizes.idle_agents {
        let name = format!("a{i:03}");
        let out = scratch.corral(bin, &repo, &["spawn", &name, "--json", "--", bin_text, "fake-agent", "hang"]);
        expect_json(&out, &format!("corral spawn {name}"));
    }
    let spawn_all = start.elapsed();

    let deadline = Instant::now() + Duration::from_secs(120);
    let agents = loop {
        let list = expect_json(&scratch.corral(bin, &repo, &["ps", "--all", "--json"]), "corral ps --all");
        let agents = list.as_array().cloned().unwrap_or_default();
        let running = agents.iter().filter(|a| a["state"] == "running").count();
        if running == sizes.idle_agents {
            break agents;
        }
        assert!(Instant::now() < deadline, "only {running} of {} agents running after 120 s", sizes.idle_agents);
        std::thread::sleep(Duration::from_millis(100));
    };
    let daemon_pid = read_pid(&repo.join(".git/corral/daemon.pid"));
    let monitor_pids: Vec<u32> = agents.iter().filter_map(|a| a["monitor_pid"].as_u64()).map(|p| p as u32).collect();
    let agent_pids: Vec<u32> = agents.iter().filter_map(|a| a["pid"].as_u64()).map(|p| p as u32).collect();
    assert_eq!(monitor_pids.len(), sizes.idle_agents, "every agent has a monitor pid");

    // Let the spawn burst settle, then measure with no client talking.
    std::thread::sleep(Duration::from_secs(1));
    let all: Vec<u32> =
        std::iter::once(daemon_pid).chain(monitor_pids.iter().copied()).chain(agent_pids.iter().copied()).collect();
    let before: Vec<Option<u64>> = all.iter().map(|&p| cpu_ticks(p)).collect();
    let machine_before = machine_ticks();
    let window_start = Instant::now();
    std::thread::sleep(sizes.window);
    let after: Vec<Option<u64>> = all.iter().map(|&p| cpu_ticks(p)).collect();
    let machine_after = machine_ticks();
    let window = window_start.elapsed();

    let procs: Vec<Proc> = all
        .iter()
        .enumerate()
        .map(|(i, &pid)| {
            let mem = smaps_rollup(pid);
            let ticks = match (before[i], after[i]) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a)),
                _ => None,
            };
            Proc {
                rss: mem.get("Rss").copied().unwrap_or(0),
                pss: mem.get("Pss").copied().unwrap_or(0),
                private: mem.get("Private_Clean").copied().unwrap_or(0)
                    + mem.get("Private_Dirty").copied().unwrap_or(0),
                threads: threads(pid).unwrap_or(0),
                ticks: ticks.unwrap_or(0),
                ok: ticks.is_some() && !mem.is_empty(),
            }
        })
        .collect();
    let machine_busy = busy_percent(machine_before, machine_after);
    let hz = clock_ticks();
    let m = monitor_pids.len();
    IdleFigures {
        agents: sizes.idle_agents,
        daemon_start,
        spawn_all,
        window,
        hz,
        daemon: procs[0].clone(),
        monitors: procs[1..=m].to_vec(),
        agent_procs: procs[m + 1..].to_vec(),
        machine_busy,
    }
}

impl IdleFigures {
    fn print(&self, out: &mut String) {
        let secs = self.window.as_secs_f64();
        let cpu = |ticks: u64| ticks as f64 / self.hz as f64 / secs * 100.0;
        let mb = |kb: u64| kb as f64 / 1024.0;
        out.push_str(&format!(
            "2. {} IDLE AGENTS (`corral fake-agent hang`, one-file repository; measured over {:.1} s, nothing else talking to the daemon)\n",
            self.agents, secs
        ));
        out.push_str(&format!(
            "   daemon start (cold `corral ps`): {:.1} ms; {} spawns one after another: {:.1} s ({:.1} ms each)\n",
            ms(self.daemon_start),
            self.agents,
            self.spawn_all.as_secs_f64(),
            ms(self.spawn_all) / self.agents as f64
        ));
        out.push_str(&format!(
            "   {:<34} {:>10} {:>10} {:>10} {:>8} {:>10}\n",
            "memory in MiB, CPU in % of one core", "RSS", "PSS", "private", "threads", "CPU"
        ));
        let row = |label: &str, procs: &[Proc]| {
            let (rss, pss, private, ticks) = procs
                .iter()
                .fold((0, 0, 0, 0), |acc, p| (acc.0 + p.rss, acc.1 + p.pss, acc.2 + p.private, acc.3 + p.ticks));
            let threads: u64 = procs.iter().map(|p| p.threads).sum();
            format!(
                "   {label:<34} {:>10.1} {:>10.1} {:>10.1} {:>8} {:>9.2}%\n",
                mb(rss),
                mb(pss),
                mb(private),
                threads,
                cpu(ticks)
            )
        };
        let per = |label: &str, procs: &[Proc]| {
            let n = procs.len().max(1) as u64;
            let (rss, pss, private, ticks, threads) = procs.iter().fold((0, 0, 0, 0, 0), |acc, p| {
                (acc.0 + p.rss, acc.1 + p.pss, acc.2 + p.private, acc.3 + p.ticks, acc.4 + p.threads)
            });
            format!(
                "   {label:<34} {:>10.2} {:>10.2} {:>10.2} {:>8.1} {:>9.3}%\n",
                mb(rss) / n as f64,
                mb(pss) / n as f64,
                mb(private) / n as f64,
                threads as f64 / n as f64,
                cpu(ticks) / n as f64
            )
        };
        let supervision: Vec<Proc> =
            std::iter::once(self.daemon.clone()).chain(self.monitors.iter().cloned()).collect();
        out.push_str(&row("daemon", std::slice::from_ref(&self.daemon)));
        out.push_str(&row(&format!("monitors, all {}", self.monitors.len()), &self.monitors));
        out.push_str(&per("monitors, mean per monitor", &self.monitors));
        if let (Some(lo), Some(hi)) =
            (self.monitors.iter().map(|p| p.pss).min(), self.monitors.iter().map(|p| p.pss).max())
        {
            out.push_str(&format!(
                "   {:<34} {:>10} {:>10.2}..{:.2}\n",
                "  (PSS range per monitor)",
                "",
                mb(lo),
                mb(hi)
            ));
        }
        out.push_str(&row("SUPERVISION (daemon + monitors)", &supervision));
        out.push_str(&row(&format!("agents themselves, all {}", self.agent_procs.len()), &self.agent_procs));
        out.push_str(&per("agents, mean per agent", &self.agent_procs));
        let missing = supervision.iter().chain(&self.agent_procs).filter(|p| !p.ok).count();
        out.push_str(&format!(
            "   (RSS counts shared pages of the corral binary in every process; PSS splits them among the {} processes\n\
             \x20   that map them, so PSS sums are the fair total; private = pages only that process has.\n\
             \x20   CPU = utime+stime ticks at {} Hz over the window; the machine as a whole was {:.0}% busy meanwhile{})\n",
            supervision.len() + self.agent_procs.len(),
            self.hz,
            self.machine_busy,
            if missing > 0 { format!("; {missing} processes vanished during the window") } else { String::new() }
        ));
    }
}

// ---- processes and /proc -----------------------------------------------------

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After `(comm)`: state is field 3 of the line, utime 14 and stime 15.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// The share of all cores' time that was busy between two `machine_ticks`.
fn busy_percent(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> f64 {
    match (before, after) {
        (Some((busy_a, all_a)), Some((busy_b, all_b))) if all_b > all_a => {
            (busy_b - busy_a) as f64 / (all_b - all_a) as f64 * 100.0
        }
        _ => f64::NAN,
    }
}

/// The kB fields of /proc/PID/smaps_rollup.
fn smaps_rollup(pid: u32) -> HashMap<String, u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (key, rest) = line.split_once(':')?;
            let value = rest.split_whitespace().next()?.parse().ok()?;
            Some((key.trim().to_string(), value))
        })
        .collect()
}

fn threads(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|v| v.trim().parse().ok())
}

/// Reaps every child that has ended (killed processes reparented to this
/// subreaper included; a reaped monitor hands its own dead children over),
/// until none is left or nothing more ends for 200 ms. Returns how many
/// children are still there (should be 0 after `kill_marked`).
fn reap_children() -> usize {
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_millis(200) {
        let mut status = 0;
        // SAFETY: waitpid with a valid out pointer.
        match unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } {
            pid if pid > 0 => quiet_since = Instant::now(),
            0 => std::thread::sleep(Duration::from_millis(10)),
            _ => return 0, // ECHILD: no children at all.
        }
    }
    children_of(std::process::id()).len()
}

fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse::<u32>().ok())
                == Some(parent)
        })
        .collect()
}

// ---- the scratch folder --------------------------------------------------------

struct Scratch {
    id: String,
    root: Option<tempfile::TempDir>,
    path: PathBuf,
}

struct Cleanup {
    killed: usize,
    removal: Duration,
    left_marked: usize,
    left_in_ps: usize,
    /// Children of this process still unreaped (zombies) after cleanup.
    zombies: usize,
    scratch_exists: bool,
}

impl Scratch {
    fn new() -> Scratch {
        let (root, path, id) = scratch_folder("corral-bench-");
        Scratch { id, root: Some(root), path }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// A corral command for the repository at `repo`, marked, with its
    /// worktrees in the scratch folder.
    fn corral(&self, bin: &Path, repo: &Path, args: &[&str]) -> Output {
        corral_command(bin, repo, args, &self.path, MARKER, &self.id).output().expect("corral runs")
    }

    /// Runs git in `repo`; panics on failure.
    fn git(&self, repo: &Path, args: &[&str]) {
        git(repo, args, MARKER, &self.id)
    }

    /// Kills everything marked, removes the folder, and says what is left.
    fn cleanup(&mut self) -> Cleanup {
        let killed = kill_marked(MARKER, &self.id);
        reap_children();
        let removal = remove_scratch("foundation", &mut self.root, &self.path);
        let (left_marked, left_in_ps) = left_behind("foundation", MARKER, &self.id, &self.path);
        let zombies = reap_children();
        Cleanup { killed, removal, left_marked, left_in_ps, zombies, scratch_exists: self.path.exists() }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.root.is_some() {
            eprintln!("foundation bench: cleaning up {}", self.path.display());
            self.cleanup();
        }
    }
}

// ---- helpers -------------------------------------------------------------------

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// (min, median, p90) in ms; nearest-rank percentiles.
fn stats(values: &[Duration]) -> (f64, f64, f64) {
    let mut v: Vec<f64> = values.iter().map(|d| ms(*d)).collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    (v[0], percentile(&v, 50.0), percentile(&v, 90.0))
}

fn median_f64(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        percentile(&v, 50.0)
    }
}
