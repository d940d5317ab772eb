//! Regressions of the daemon's start and of spawn's checks: two daemons
//! started at once leave exactly one serving; two copies of one build share
//! a daemon while another build replaces it; a probe whose host is not
//! loopback is refused at spawn.

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use corral_e2e::{alive, corral_bin, poll_until, TestRepo, PATIENCE};
use serde_json::Value;

/// Runs `command`, retrying while its program is "text file busy": a copy
/// of the binary just written can be held open for writing for a moment by
/// a child that another test thread forked meanwhile.
fn run_retrying(mut command: std::process::Command) -> Output {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match command.output() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other.expect("the command runs"),
        }
    }
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} exited {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `corral ps --json` run with the binary `bin`.
fn ps_with(repo: &TestRepo, bin: &Path) -> Vec<Value> {
    let mut command = repo.command_with(bin);
    command.args(["ps", "--all", "--json"]);
    let stdout = ok(run_retrying(command), &format!("{} ps", bin.display()));
    serde_json::from_str::<Value>(&stdout).expect("ps prints JSON").as_array().cloned().unwrap_or_default()
}

/// A copy of the built corral binary at `path`, its modification time set
/// to `mtime`.
fn copy_corral(path: &Path, mtime: std::time::SystemTime) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::copy(corral_bin(), path).unwrap();
    std::fs::File::options().write(true).open(path).unwrap().set_modified(mtime).unwrap();
    path.to_path_buf()
}

/// A copy of the built corral binary at `path` that is another build: one
/// byte more (an ELF runs with trailing bytes), its modification time set
/// to `mtime`.
fn another_build(path: &Path, mtime: std::time::SystemTime) -> PathBuf {
    let path = copy_corral(path, mtime);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"\0"))
        .unwrap();
    std::fs::File::options().write(true).open(&path).unwrap().set_modified(mtime).unwrap();
    path
}

/// An upgrade of the binary at `installed`: another build renamed over it.
fn upgrade(repo: &TestRepo, installed: &Path) {
    let next = another_build(&repo.path("bin/corral.next"), std::time::SystemTime::now());
    std::fs::rename(&next, installed).unwrap();
}

/// The binary a process runs.
fn exe_of(pid: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap()
}

#[test]
fn the_daemon_lock_is_taken_once_so_two_daemons_started_at_once_leave_one_serving() {
    for round in 0..10 {
        let repo = Arc::new(TestRepo::new());
        let barrier = Arc::new(Barrier::new(2));
        let starters: Vec<_> = (0..2)
            .map(|i| {
                let (repo, barrier) = (repo.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let stderr = std::fs::File::create(repo.path(&format!("daemon-{i}.stderr"))).unwrap();
                    let mut command = repo.command();
                    command.arg("daemon").stdout(Stdio::null()).stderr(stderr);
                    barrier.wait();
                    command.spawn().expect("corral daemon starts")
                })
            })
            .collect();
        let mut daemons: Vec<Child> = starters.into_iter().map(|t| t.join().unwrap()).collect();

        // One of them gives up at once; the other serves on.
        let mut exited = None;
        poll_until(&format!("round {round}: one of two daemons to exit"), PATIENCE, || {
            for (i, daemon) in daemons.iter_mut().enumerate() {
                if let Some(status) = daemon.try_wait().unwrap() {
                    exited = Some((i, status));
                    return true;
                }
            }
            false
        });
        let (loser, status) = exited.unwrap();
        let winner = 1 - loser;
        let said = std::fs::read_to_string(repo.path(&format!("daemon-{loser}.stderr"))).unwrap();
        assert!(status.success(), "round {round}: the losing daemon exited {status}: {said}");
        assert!(said.contains("a daemon already runs for this repository"), "round {round}: {said}");

        let winner_pid = daemons[winner].id();
        poll_until(&format!("round {round}: the pid file to name the serving daemon"), PATIENCE, || {
            repo.daemon_pid() == Some(winner_pid)
        });
        assert!(ps_with(&repo, &corral_bin()).is_empty());
        assert_eq!(daemons[winner].try_wait().unwrap(), None, "round {round}: the winner stopped serving");
        assert_eq!(repo.daemon_pid(), Some(winner_pid), "round {round}: another daemon took over");

        daemons[winner].kill().unwrap();
        daemons[winner].wait().unwrap();
    }
}

#[test]
fn the_build_id_hashes_the_binary_so_two_copies_of_one_build_share_a_daemon() {
    let repo = TestRepo::new();
    let now = std::time::SystemTime::now();
    let a = copy_corral(&repo.path("copy-a/corral"), now - Duration::from_secs(3600));
    let b = copy_corral(&repo.path("copy-b/corral"), now);

    assert!(ps_with(&repo, &a).is_empty());
    let daemon = repo.daemon_pid().expect("copy A started a daemon");
    assert_eq!(exe_of(daemon), a, "the daemon runs copy A");

    // Copy B: same bytes, another path and mtime. It uses A's daemon.
    for _ in 0..3 {
        assert!(ps_with(&repo, &b).is_empty());
        assert_eq!(repo.daemon_pid(), Some(daemon), "copy B replaced copy A's daemon");
        assert!(alive(daemon), "copy A's daemon is gone");
    }
    assert!(ps_with(&repo, &a).is_empty());
    assert_eq!(repo.daemon_pid(), Some(daemon));

    // A different build (one byte more: an ELF runs with trailing bytes)
    // still replaces the daemon.
    let c = another_build(&repo.path("copy-c/corral"), now - Duration::from_secs(3600));
    assert!(ps_with(&repo, &c).is_empty());
    let replaced = repo.daemon_pid().expect("a daemon pid");
    assert_ne!(replaced, daemon, "a daemon of another build was kept");
    poll_until("the old daemon to exit", PATIENCE, || !alive(daemon));
    assert_eq!(exe_of(replaced), c, "the new daemon runs copy C");
}

#[test]
fn a_probe_host_that_is_not_loopback_is_refused_at_spawn() {
    // 192.0.2.1 (TEST-NET-1) is never contacted: the spawn is refused first.
    let repo = TestRepo::new();
    let bin = corral_bin();
    let bin = bin.to_str().unwrap();
    let spawn_fails = |name: &str, flags: &[&str], words: &[&str]| {
        let mut args = vec!["spawn", name];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--", bin, "fake-agent", "hang"]);
        let out = repo.corral(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(14), "corral {args:?}: {stderr}");
        for word in words {
            assert!(stderr.contains(word), "corral {args:?}: expected {word:?} in {stderr:?}");
        }
    };

    // On the command line, as TOML or JSON.
    spawn_fails(
        "flag",
        &["--liveness", r#"{ tcp_socket = { port = 5432, host = "192.0.2.1" } }"#],
        &["--liveness", "tcp_socket.host", "\"192.0.2.1\" is not a loopback host", "allow_remote = true"],
    );
    spawn_fails(
        "json",
        &["--readiness", r#"{"http_get": {"port": 8080, "host": "192.0.2.1"}}"#],
        &["--readiness", "http_get.host", "\"192.0.2.1\""],
    );

    // In corral.toml: the daemon refuses it at spawn.
    std::fs::write(
        repo.repo.join("corral.toml"),
        "[agents.web]\nreadiness = { http_get = { port = 8080, host = \"192.0.2.1\" }, period_seconds = 0.1 }\n",
    )
    .unwrap();
    spawn_fails("toml", &["--role", "web"], &["corral.toml", "agents.web.readiness.http_get.host", "\"192.0.2.1\""]);

    // Nothing was started.
    assert!(repo.agents().is_empty(), "{:?}", repo.agents());
    let out = repo.corral_ok(&["ps", "--json"]);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), serde_json::json!([]), "{out}");
    assert_eq!(repo.processes().len(), 1, "only the daemon runs");

    // A loopback host is accepted as before (nothing listens: the probe
    // only fails, on loopback).
    std::fs::write(repo.repo.join("corral.toml"), "").unwrap();
    repo.corral_ok(&[
        "spawn",
        "near",
        "--readiness",
        "{ tcp_socket = { port = 9, host = \"localhost\" } }",
        "--",
        bin,
        "fake-agent",
        "hang",
    ]);
    assert_eq!(repo.agent("/root/near")["state"], "running");
}

#[test]
fn a_client_whose_binary_was_replaced_uses_the_newer_daemon_and_never_shuts_it_down() {
    // A long-lived client of the old build (an MCP server, as Claude Code
    // keeps one) outlives an upgrade: the binary at its path is replaced
    // by another build, whose first command replaces the daemon. The old
    // client's next call must use that daemon, not shut it down.
    let repo = TestRepo::new();
    let now = std::time::SystemTime::now();
    let installed = copy_corral(&repo.path("bin/corral"), now);
    assert!(ps_with(&repo, &installed).is_empty());
    let old_daemon = repo.daemon_pid().expect("the old build started a daemon");
    let mut mcp = crate::mcp::McpServer::start(repo.command_with(&installed));
    mcp.initialize();
    mcp.ok("list_agents", serde_json::json!({}));

    upgrade(&repo, &installed);
    assert!(ps_with(&repo, &installed).is_empty());
    let new_daemon = repo.daemon_pid().expect("the new build started a daemon");
    assert_ne!(new_daemon, old_daemon);
    poll_until("the old daemon to exit", PATIENCE, || !alive(old_daemon));

    for _ in 0..3 {
        mcp.ok("list_agents", serde_json::json!({}));
        assert_eq!(repo.daemon_pid(), Some(new_daemon), "the old client replaced the newer daemon");
        assert!(alive(new_daemon), "the old client shut the newer daemon down");
    }
    // With no daemon running, the old client starts the build now at its
    // path (its own file is gone).
    repo.corral_ok(&["shutdown"]);
    poll_until("the new daemon to exit", PATIENCE, || !alive(new_daemon));
    mcp.ok("list_agents", serde_json::json!({}));
    let started = repo.daemon_pid().expect("the old client started a daemon");
    assert_eq!(exe_of(started), installed, "the daemon runs the build at the path");
    mcp.close();
}

#[test]
fn a_monitor_that_outlived_an_upgrade_still_restarts_its_agent() {
    // The monitor (and its daemon) run a binary an upgrade then replaces;
    // the restart runs the sandbox shim of the monitor's own build.
    let repo = TestRepo::new();
    let installed = copy_corral(&repo.path("bin/corral"), std::time::SystemTime::now());
    let go = repo.path("go");
    let script = format!("print run; wait-file {}; exit 3", go.display());
    let mut command = repo.command_with(&installed);
    command.args(["spawn", "upgraded", "--sandbox", "workspace-write", "--restart", "OnFailure"]);
    command.args(["--restart-limit", "1", "--", installed.to_str().unwrap(), "fake-agent", &script]);
    let out = command.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    poll_until("the first run", PATIENCE, || repo.corral_ok(&["logs", "/root/upgraded"]).contains("run"));

    upgrade(&repo, &installed);
    std::fs::write(&go, "").unwrap();

    let mut wait = repo.command();
    wait.args(["wait", "/root/upgraded", "--timeout", "120"]);
    let waited = wait.output().unwrap();
    let agent = repo.agent("/root/upgraded");
    let log = repo.corral_ok(&["logs", "/root/upgraded"]);
    assert_eq!(log.matches("run").count(), 2, "the restart did not run: {agent} {log:?}");
    assert_eq!(agent["restarts"], 1, "{agent}");
    assert_eq!(agent["exit_code"], 3, "{agent} (wait: {:?})", waited.status.code());
}
