//! Regression tests for the bugs the redesign issue found, one test per
//! bug, each named after what must hold now. Every test runs the built
//! `corral` binary on its own scratch repository.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use corral_e2e::{alive, corral_bin, poll_until, TestRepo, PATIENCE};
use serde_json::Value;

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Spawns the fake agent with `flags` before `--`.
fn spawn_with(repo: &TestRepo, name: &str, flags: &[&str], script: &str) -> Value {
    let bin = corral_bin();
    let mut args = vec!["spawn", name, "--task", "regression", "--json"];
    args.extend_from_slice(flags);
    args.extend(["--", bin.to_str().unwrap(), "fake-agent", script]);
    repo.corral_json(&args)
}

fn events(repo: &TestRepo, agent: &str) -> Vec<Value> {
    repo.corral_ok(&["events", "--agent", agent])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event line {l:?}: {e}")))
        .collect()
}

fn log_has(repo: &TestRepo, address: &str, needle: &str) -> bool {
    String::from_utf8_lossy(&repo.log(address)).contains(needle)
}

/// The journal, line by line: every line whole JSON, seqs 1, 2, 3...
fn assert_journal_whole(repo: &TestRepo) -> u64 {
    let bytes = std::fs::read(repo.state_dir().join("events.jsonl")).unwrap();
    assert!(bytes.is_empty() || bytes.ends_with(b"\n"), "the journal ends in a torn line");
    let mut expected = 1;
    for (n, line) in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()).enumerate() {
        let event: Value = serde_json::from_slice(line).unwrap_or_else(|e| {
            panic!("journal line {} is not whole JSON ({e}): {}", n + 1, String::from_utf8_lossy(line))
        });
        assert_eq!(event["seq"], expected, "journal line {}", n + 1);
        expected += 1;
    }
    expected - 1
}

// ---- 1. stop uses the agent's own grace --------------------------------------------

#[test]
fn stop_without_grace_uses_the_agents_own_grace() {
    let repo = TestRepo::new();
    spawn_with(&repo, "stubborn", &["--grace", "1"], "ignore-sigterm; print armed; hang");
    poll_until("the agent to ignore SIGTERM", PATIENCE, || log_has(&repo, "/root/stubborn", "armed"));
    let started = Instant::now();
    let out = repo.corral(&["stop", "stubborn"]);
    let took = started.elapsed();
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let asked: Vec<Value> =
        events(&repo, "/root/stubborn").into_iter().filter(|e| e["type"] == "stop_requested").collect();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0]["grace_secs"].as_f64(), Some(1.0), "{}", asked[0]);
    // The default grace is 10 s; its own is 1 s (then SIGKILL).
    assert!(took < Duration::from_secs(9), "stop took {took:?}: the default grace, not the agent's");
    assert_eq!(repo.agent("/root/stubborn")["state"], "stopped");
    assert!(repo.agent_processes("/root/stubborn").is_empty());
}

// ---- 2. spawns, stops and reads never wait for a gate -------------------------------

#[test]
fn spawns_stops_and_reads_never_wait_for_a_merge_gate() {
    let repo = TestRepo::new();
    let (started, release) = (repo.path("gate-started"), repo.path("gate-release"));
    // A gate of up to 30 s, held until the test releases it.
    let gate = format!(
        "touch {}; i=0; while [ ! -e {} ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; true",
        started.display(),
        release.display()
    );
    spawn_with(&repo, "gated", &["--merge", "auto", "--gate", &gate], "write g.txt gated; commit 'gated work'");
    poll_until("the gate to run", PATIENCE, || started.exists());

    let hang = "print up; hang";
    let slowest = std::thread::scope(|s| {
        let spawns: Vec<_> = (0..20)
            .map(|i| {
                let repo = &repo;
                s.spawn(move || {
                    let began = Instant::now();
                    spawn_with(repo, &format!("w{i}"), &[], hang);
                    began.elapsed()
                })
            })
            .collect();
        let reads: Vec<_> = (0..4)
            .map(|_| {
                let repo = &repo;
                s.spawn(move || {
                    for _ in 0..25 {
                        repo.corral_ok(&["ps", "--json"]);
                    }
                })
            })
            .collect();
        let times: Vec<Duration> = spawns.into_iter().map(|h| h.join().unwrap()).collect();
        for read in reads {
            read.join().unwrap();
        }
        times.into_iter().max().unwrap()
    });
    assert!(slowest < Duration::from_secs(5), "the slowest of 20 spawns during a gate took {slowest:?}");
    // Twenty stops, while the gate still runs.
    std::thread::scope(|s| {
        for i in 0..20 {
            let repo = &repo;
            s.spawn(move || repo.corral_ok(&["stop", &format!("w{i}"), "--grace", "0"]));
        }
    });
    assert!(!release.exists());
    assert_eq!(repo.agent("/root/gated")["merge_state"]["state"], "queued", "the gate is still running");
    std::fs::write(&release, "").unwrap();
    let out = repo.corral(&["wait", "gated"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert_eq!(repo.agent("/root/gated")["merge_state"]["state"], "merged");
}

// ---- 3. a gate fails closed ---------------------------------------------------------

#[test]
fn a_gate_whose_runner_fails_fails_closed() {
    let repo = TestRepo::new();
    // The daemon starts with the switch that makes its gate runner panic.
    let out = repo.command().env("CORRAL_TEST_GATE_RUNNER_PANICS", "1").args(["ps"]).output().unwrap();
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let main_before = repo.git(&["rev-parse", "main"]);
    spawn_with(&repo, "gated", &["--merge", "auto", "--gate", "true"], "write g.txt x; commit 'gated work'");
    let out = repo.corral(&["wait", "gated"]);
    assert_eq!(code(&out), Some(28), "gate_failed is 28: {}", stderr(&out));
    let agent = repo.agent("/root/gated");
    assert_eq!(agent["merge_state"]["state"], "gate_failed", "{agent}");
    assert!(agent["merge_state"]["output"].as_str().unwrap_or("").contains("gate runner failed"), "{agent}");
    assert_eq!(repo.git(&["rev-parse", "main"]), main_before, "main moved on a gate nobody saw pass");
}

// ---- 4. no lock inversion -----------------------------------------------------------

#[test]
fn daily_budget_checks_and_pricing_never_deadlock() {
    // The daily-budget check once took the table then the config, and
    // pricing the config then the table: agents reporting usage while
    // others spawned could hang the daemon. Many of both at once must end.
    let repo = TestRepo::new();
    std::fs::write(
        repo.repo.join("corral.toml"),
        "[budget]\ndaily_tokens = 100000000\n\n[prices.\"fake-model\"]\ninput = 1.0\noutput = 2.0\n",
    )
    .unwrap();
    let mut script = String::new();
    for i in 0..40 {
        script.push_str(&format!("{}; ", corral_e2e::assistant(&format!("msg-{i}"), 10)));
    }
    script.push_str("exit 0");
    let claude = corral_e2e::fake_claude(&repo, "usage", &script);
    let claude = claude.to_str().unwrap();
    std::thread::scope(|s| {
        for i in 0..8 {
            let repo = &repo;
            s.spawn(move || {
                let out = repo
                    .command()
                    .env("CORRAL_CLAUDE_BIN", claude)
                    .args([
                        "spawn",
                        &format!("c{i}"),
                        "--harness",
                        "claude",
                        "--meter",
                        "stream",
                        "--model",
                        "fake-model",
                        "--task",
                        "t",
                    ])
                    .output()
                    .unwrap();
                assert_eq!(code(&out), Some(0), "{}", stderr(&out));
            });
        }
    });
    let names: Vec<String> = (0..8).map(|i| format!("c{i}")).collect();
    let mut args = vec!["wait", "--timeout", "120"];
    args.extend(names.iter().map(String::as_str));
    let out = repo.corral(&args);
    assert_ne!(code(&out), Some(124), "agents never ended: the daemon hung");
    let priced = repo.agents().iter().filter(|a| a["cost_usd"].as_f64().is_some_and(|c| c > 0.0)).count();
    assert_eq!(priced, 8, "every agent's usage was priced: {:?}", repo.agents());
}

// ---- 5. a journal that cannot be written ---------------------------------------------

#[test]
fn a_journal_that_cannot_be_written_refuses_changes_and_recovers() {
    let repo = TestRepo::new();
    let out = repo.command().env("CORRAL_FAULT_INJECTION", "1").args(["ps"]).output().unwrap();
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    spawn_with(&repo, "before", &[], "print up; hang");
    let fault = repo.state_dir().join("journal.fault");
    for how in ["ENOSPC", "ENOSPC short", "EIO short", "EROFS"] {
        std::fs::write(&fault, how).unwrap();
        let seq_before = assert_journal_whole(&repo);
        let bin = corral_bin();
        let out = repo.corral(&["spawn", "during", "--", bin.to_str().unwrap(), "fake-agent", "hang"]);
        assert_eq!(code(&out), Some(15), "{how}: {}", stderr(&out));
        let message = stderr(&out);
        assert!(message.contains(".git/corral"), "{how}: names the folder: {message}");
        assert!(message.contains("nothing was started"), "{how}: {message}");
        if how.starts_with("ENOSPC") {
            assert!(message.contains("is full"), "{message}");
        }
        if how == "EROFS" {
            assert!(message.contains("is on a read-only filesystem"), "{message}");
        }
        // Reads still answer; changes are refused.
        assert_eq!(repo.agent("/root/before")["state"], "running");
        let out = repo.corral(&["stop", "before", "--grace", "0"]);
        assert_eq!(code(&out), Some(15), "{how}: {}", stderr(&out));
        assert_eq!(assert_journal_whole(&repo), seq_before, "{how}: a failed append left a line or used a seq");
        assert!(repo.agents().iter().all(|a| a["address"] != "/root/during"), "{how}: the table moved");
    }
    std::fs::remove_file(&fault).unwrap();
    spawn_with(&repo, "after", &[], "print up; exit 0");
    repo.corral_ok(&["stop", "before", "--grace", "0"]);
    assert_eq!(repo.agent("/root/before")["state"], "stopped");
    assert_journal_whole(&repo);
}

// ---- 6. an unknown harness ----------------------------------------------------------

#[test]
fn an_unknown_harness_exits_12_with_the_harness_message() {
    let repo = TestRepo::new();
    let out = repo.corral(&["spawn", "x", "--harness", "nosuch", "--", "true"]);
    assert_eq!(code(&out), Some(12), "{}", stderr(&out));
    assert!(stderr(&out).contains("unknown harness \"nosuch\""), "{}", stderr(&out));
    assert!(!stderr(&out).contains("lost the daemon"), "{}", stderr(&out));
    // The daemon (if one started) is fine and nothing was made.
    assert!(repo.agents().is_empty());
}

// ---- 7. durations out of range --------------------------------------------------------

#[test]
fn durations_out_of_range_are_refused_with_exit_13_and_stop_still_works() {
    let repo = TestRepo::new();
    spawn_with(&repo, "victim", &[], "ignore-sigterm; print armed; hang");
    poll_until("the agent to start", PATIENCE, || log_has(&repo, "/root/victim", "armed"));
    let daemon = repo.daemon_pid().unwrap();
    for args in [
        vec!["stop", "victim", "--grace", "1e20"],
        vec!["stop", "victim", "--grace", "-1"],
        vec!["stop", "victim", "--grace", "NaN"],
        vec!["wait", "victim", "--timeout", "1e20"],
        vec!["spawn", "other", "--grace", "1e20", "--", "true"],
        vec!["spawn", "other", "--timeout", "-1", "--", "true"],
        vec!["spawn", "other", "--backoff", "1e300", "--", "true"],
    ] {
        let out = repo.corral(&args);
        assert_eq!(code(&out), Some(13), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("duration") || stderr(&out).contains("seconds"), "{args:?}: {}", stderr(&out));
    }
    // Durations with units work wherever seconds do.
    let out = repo.corral(&["wait", "victim", "--timeout", "100ms"]);
    assert_eq!(code(&out), Some(124), "{}", stderr(&out));
    assert_eq!(repo.daemon_pid(), Some(daemon));
    assert!(alive(daemon), "the daemon died");
    repo.corral_ok(&["stop", "victim", "--grace", "0"]);
    assert_eq!(repo.agent("/root/victim")["state"], "stopped");
    assert!(repo.agent_processes("/root/victim").is_empty());
}

// ---- 8. stop /root and stop --all ---------------------------------------------------

#[test]
fn stop_root_and_stop_all_stop_every_agent() {
    let repo = TestRepo::new();
    for name in ["a", "b"] {
        spawn_with(&repo, name, &[], "print up; hang");
    }
    spawn_with(&repo, "child", &["--parent", "a"], "print up; hang");
    poll_until("three running agents", PATIENCE, || {
        repo.agents().iter().filter(|a| a["state"] == "running").count() == 3
    });
    let stopped = repo.corral_json(&["stop", "/root", "--grace", "0", "--json"]);
    assert_eq!(stopped.as_array().map(Vec::len), Some(3), "{stopped}");
    assert!(repo.agents().iter().all(|a| a["state"] == "stopped"), "{:?}", repo.agents());

    for name in ["c", "d"] {
        spawn_with(&repo, name, &[], "print up; hang");
    }
    repo.corral_ok(&["stop", "--all", "--grace", "0"]);
    assert!(repo.agents().iter().all(|a| a["state"] == "stopped"), "{:?}", repo.agents());
    for name in ["/root/a", "/root/b", "/root/a/child", "/root/c", "/root/d"] {
        assert!(repo.agent_processes(name).is_empty(), "{name} still runs");
    }
    // With nothing running, stopping everything is not an error.
    repo.corral_ok(&["stop", "--all"]);
}

// ---- 9. a gc'ed name can be spawned again ---------------------------------------------

#[test]
fn a_gc_ed_agents_name_can_be_spawned_again() {
    let repo = TestRepo::new();
    let first = spawn_with(&repo, "nightly", &[], "print first night");
    repo.corral_ok(&["wait", "nightly"]);
    // Still there (ended, not removed): the name is taken.
    let bin = corral_bin();
    let again = ["spawn", "nightly", "--", bin.to_str().unwrap(), "fake-agent", "print x"];
    assert_eq!(code(&repo.corral(&again)), Some(7));
    let gc = repo.corral_ok(&["gc"]);
    assert!(gc.contains("/root/nightly"), "{gc}");
    let second = spawn_with(&repo, "nightly", &[], "print second night");
    repo.corral_ok(&["wait", "nightly"]);
    assert_ne!(first["task_id"], second["task_id"]);
    assert!(log_has(&repo, "/root/nightly", "second night"));
    // Both histories stay in the journal, each under its own id.
    let ids: Vec<u64> = events(&repo, "/root/nightly")
        .iter()
        .filter(|e| e["type"] == "spawned")
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_ne!(ids[0], ids[1]);
    assert!(Path::new(second["worktree"].as_str().unwrap()).is_dir());
}

// ---- a variable that is not UTF-8 in the client's environment -----------------------

#[test]
fn a_non_utf8_environment_variable_is_left_out_of_spawns_not_a_panic() {
    use std::os::unix::ffi::OsStringExt;
    let repo = TestRepo::new();
    let bad = std::ffi::OsString::from_vec(b"\xff".to_vec());
    let shows = "printf 'bad=%s good=%s\\n' \"${TEST_NOT_UTF8-unset}\" \"${TEST_UTF8-unset}\"";
    // corral spawn.
    let out = repo
        .command()
        .env("TEST_NOT_UTF8", &bad)
        .env("TEST_UTF8", "fine")
        .args(["spawn", "env", "--task", "show the environment", "--", "sh", "-c", shows])
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    repo.corral_ok(&["wait", "env"]);
    assert!(log_has(&repo, "/root/env", "bad=unset good=fine"), "{}", String::from_utf8_lossy(&repo.log("/root/env")));
    // corral run (the client spawns the driver, the driver its agents).
    let file = repo.path("env.toml");
    std::fs::write(&file, format!("name = \"env\"\n[[agent]]\nname = \"a\"\ncommand = [\"sh\", \"-c\", {shows:?}]\n"))
        .unwrap();
    let out = repo.command().env("TEST_NOT_UTF8", &bad).arg("run").arg(&file).output().unwrap();
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    // corral mcp's spawn_agent.
    let mut command = repo.command();
    command.env("TEST_NOT_UTF8", &bad);
    let mut mcp = crate::mcp::McpServer::start(command);
    mcp.initialize();
    let spawned =
        mcp.ok("spawn_agent", serde_json::json!({"name": "mcp-env", "task": "show", "command": ["sh", "-c", shows]}));
    assert_eq!(spawned["address"], "/root/mcp-env", "{spawned}");
    mcp.close();
    repo.corral_ok(&["wait", "mcp-env"]);
    assert!(log_has(&repo, "/root/mcp-env", "bad=unset"));
}

#[test]
fn a_command_whose_reader_went_away_ends_quietly_and_a_full_disk_behind_it_is_said() {
    // Regression: println! panicked on EPIPE, so `corral ps --all | head -1`
    // with a long history ended with 101 and a panic on stderr.
    let repo = TestRepo::new();
    repo.spawn_fake("done", "exit 0");
    repo.corral_ok(&["wait", "done"]);
    let closed = || {
        let (read, write) = nix::unistd::pipe().unwrap();
        drop(read);
        std::process::Stdio::from(write)
    };
    let commands: [&[&str]; 12] = [
        &["ps"],
        &["ps", "--all"],
        &["ps", "--json"],
        &["view", "done"],
        &["view", "done", "--json"],
        &["wait", "done"],
        &["events"],
        &["logs", "done"],
        &["diff", "done"],
        &["gc", "--older-than", "7d"],
        &["completions", "bash"],
        &["man"],
    ];
    for args in commands {
        let child = repo.command().args(args).stdout(closed()).stderr(std::process::Stdio::piped()).spawn();
        let out = corral_e2e::real_cli::wait_deadline(child.unwrap(), PATIENCE, "a command with its stdout closed");
        assert_eq!(code(&out), Some(0), "corral {args:?} with its stdout closed: {}", stderr(&out));
        assert!(stderr(&out).is_empty(), "corral {args:?} with its stdout closed: {}", stderr(&out));
    }
    // A code that says how an agent ended is kept, whatever the output.
    let failed = repo.spawn_fake("failed", "exit 3");
    assert_eq!(failed["address"], "/root/failed", "{failed}");
    for json in [&[][..], &["--json"][..]] {
        let child = repo.command().args(["wait", "failed"]).args(json).stdout(closed()).spawn();
        let out = corral_e2e::real_cli::wait_deadline(child.unwrap(), PATIENCE, "wait with its stdout closed");
        assert_eq!(code(&out), Some(20), "corral wait {json:?} of a failed agent, stdout closed");
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let out = repo.command().args(["wait", "failed"]).args(json).stdout(full).output().unwrap();
        assert_eq!(code(&out), Some(20), "corral wait {json:?} to /dev/full: {}", stderr(&out));
        assert!(stderr(&out).contains("cannot write to standard output"), "{}", stderr(&out));
    }
    // Any other failure to write is an error that says so.
    for args in [&["ps"][..], &["view", "done"][..], &["man"][..]] {
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let out = repo.command().args(args).stdout(full).output().unwrap();
        assert_eq!(code(&out), Some(1), "corral {args:?} to /dev/full: {}", stderr(&out));
        assert!(
            stderr(&out).contains("cannot write to standard output: No space left on device"),
            "corral {args:?} to /dev/full: {}",
            stderr(&out)
        );
    }
}

#[test]
fn the_daemon_and_monitors_keep_no_descriptor_of_the_command_that_started_them() {
    // Regression: the daemon (and each monitor) inherited every descriptor
    // its client was handed, so a cron wrapper's `flock -n LOCK corral ...`
    // found its lock taken on every later run, for as long as the daemon
    // lived.
    use std::os::fd::AsRawFd;
    let repo = TestRepo::new();
    let lock_path = repo.path("cron.lock");
    let lock = std::fs::File::create(&lock_path).unwrap();
    // SAFETY: flock takes a descriptor open for the call and integers.
    let locked = |fd: std::os::fd::RawFd| unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0;
    assert!(locked(lock.as_raw_fd()), "the test takes its lock");
    // Handed down as a cron wrapper hands it: open across exec, in that
    // one child only (in this process it stays close-on-exec, so the
    // commands other tests start meanwhile do not hold it too).
    let fd = lock.as_raw_fd();
    let bin = corral_bin();
    let mut spawn = repo.command();
    spawn.args(["spawn", "held", "--", bin.to_str().unwrap(), "fake-agent", "hang"]);
    // SAFETY: fcntl is async-signal-safe and touches only the flags of a
    // descriptor open in the child.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut spawn, move || match libc::fcntl(fd, libc::F_SETFD, 0) {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        });
    }
    let out = spawn.output().unwrap();
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    drop(lock);
    let daemon = repo.daemon_pid().expect("a daemon runs");
    let agent = repo.agent("/root/held");
    let monitor = agent["monitor_pid"].as_u64().expect("a monitor pid") as u32;
    for (what, pid) in [("daemon", daemon), ("monitor", monitor)] {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap();
        for fd in fds.flatten() {
            let to = std::fs::read_link(fd.path()).unwrap_or_default();
            assert_ne!(to, lock_path, "the {what} holds the caller's lock file on fd {:?}", fd.file_name());
        }
    }
    // The next cron run takes the lock.
    let again = std::fs::File::open(&lock_path).unwrap();
    poll_until("the lock to be free once the command that held it ended", PATIENCE, || locked(again.as_raw_fd()));
    repo.corral_ok(&["stop", "held", "--grace", "0"]);
}

#[test]
fn nothing_new_starts_below_an_agent_being_stopped_or_stopped() {
    // Regression: a child spawned below an agent during its stop's grace
    // was left running once the stop returned, and a stopped agent took
    // new children.
    let repo = TestRepo::new();
    spawn_with(&repo, "lead", &["--grace", "3"], "ignore-sigterm; print armed; hang");
    poll_until("the lead to ignore SIGTERM", PATIENCE, || log_has(&repo, "/root/lead", "armed"));
    let stopping = repo.command().args(["stop", "lead"]).spawn().unwrap();
    poll_until("the stop to be journaled", PATIENCE, || {
        events(&repo, "/root/lead").iter().any(|e| e["type"] == "stop_requested")
    });
    let bin = corral_bin();
    let child = ["spawn", "helper", "--parent", "/root/lead", "--", bin.to_str().unwrap(), "fake-agent", "hang"];
    let out = repo.corral(&child);
    assert_eq!(code(&out), Some(11), "a spawn below a stopping agent: {}", stderr(&out));
    assert!(stderr(&out).contains("/root/lead is being stopped"), "{}", stderr(&out));
    let stopped = corral_e2e::real_cli::wait_deadline(stopping, PATIENCE, "the stop");
    assert_eq!(code(&stopped), Some(0));
    let out = repo.corral(&child);
    assert_eq!(code(&out), Some(11), "a spawn below a stopped agent: {}", stderr(&out));
    assert!(stderr(&out).contains("/root/lead was stopped"), "{}", stderr(&out));
    assert!(repo.agents().iter().all(|a| a["address"] != "/root/lead/helper"), "{:?}", repo.agents());
    assert!(repo.agent_processes("/root/lead").is_empty());
}

#[test]
fn an_agents_folder_and_logs_are_private_whatever_the_umask() {
    // Regression: under umask 022 the agent's folder was 0755 and its
    // output log 0644 (the state folder above them is 0700; these are a
    // second wall).
    use std::os::unix::fs::PermissionsExt;
    let repo = TestRepo::new();
    let bin = corral_bin();
    let script = format!(
        "umask 022; exec '{}' spawn open --json -- '{}' fake-agent 'print hi; exit 0'",
        bin.display(),
        bin.display()
    );
    let out = repo.command().arg("ps").output().unwrap(); // the daemon starts under the test's umask
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    repo.corral_ok(&["shutdown"]);
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .current_dir(&repo.repo)
        .envs(repo.command().get_envs().filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))))
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    repo.corral_ok(&["wait", "open"]);
    let id = repo.agent("/root/open")["id"].as_u64().unwrap();
    let agent_dir = repo.state_dir().join("agents").join(id.to_string());
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&agent_dir), 0o700, "{}", agent_dir.display());
    for file in ["output.log", "monitor.log"] {
        assert_eq!(mode(&agent_dir.join(file)), 0o600, "{file}");
    }
    assert_eq!(mode(&repo.state_dir().join("daemon.log")), 0o600, "daemon.log");
}
