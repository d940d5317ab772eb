//! The foundation: agents in their own worktrees and PTYs, stop, daemon
//! crash and re-adoption, the event stream, concurrent spawns, bad input.
//! Each test runs the built `corral` binary on its own scratch repository.

use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use corral_e2e::{alive, corral_bin, poll_until, TestRepo, PATIENCE};
use serde_json::Value;

fn log_text(repo: &TestRepo, address: &str) -> String {
    String::from_utf8_lossy(&repo.log(address)).into_owned()
}

fn branches(repo: &TestRepo) -> BTreeSet<String> {
    repo.git(&["branch", "--list", "corral/*", "--format=%(refname:short)"]).lines().map(str::to_string).collect()
}

#[test]
fn five_agents_each_in_own_worktree_with_a_tty() {
    let repo = TestRepo::new();
    let go = repo.path("go");
    let script =
        format!("pwd; tty; env CORRAL_ADDRESS; env CORRAL_TASK_ID; env PWD; wait-file {}; exit 0", go.display());
    let names = ["a1", "a2", "a3", "a4", "a5"];
    let spawned: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = names.iter().map(|n| s.spawn(|| repo.spawn_fake(n, &script))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    // All five visible and running at once.
    poll_until("five running agents", PATIENCE, || {
        repo.agents().iter().filter(|a| a["state"] == "running").count() == 5
    });
    let ps = repo.corral_ok(&["ps"]);
    for name in names {
        assert!(ps.contains(&format!("/root/{name}")), "{ps}");
    }
    std::fs::write(&go, "").unwrap();
    let out = repo.corral(&["wait", "a1", "a2", "a3", "a4", "a5", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));

    let mut worktrees = HashSet::new();
    for spawn in &spawned {
        let address = spawn["address"].as_str().unwrap();
        let worktree = spawn["worktree"].as_str().unwrap();
        let branch = spawn["branch"].as_str().unwrap();
        assert!(worktrees.insert(worktree.to_string()), "worktree shared: {worktree}");
        assert!(!worktree.starts_with(repo.repo.to_str().unwrap()), "worktree inside the repository: {worktree}");
        let log = log_text(&repo, address);
        assert!(log.contains(&format!("pwd {worktree}")), "{address} did not run in {worktree}: {log}");
        // Not the spawner's PWD: opencode wrote files there.
        assert!(log.contains(&format!("PWD={worktree}")), "{address} has another PWD: {log}");
        assert!(log.contains("isatty true true"), "{address} had no TTY: {log}");
        assert!(log.contains(&format!("CORRAL_ADDRESS={address}")), "{log}");
        assert!(log.contains(&format!("CORRAL_TASK_ID={}", spawn["task_id"].as_str().unwrap())), "{log}");
        let head = std::process::Command::new("git")
            .args(["rev-parse", "--abbrev-ref", "HEAD"])
            .current_dir(worktree)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&head.stdout).trim(), branch);
        assert_eq!(repo.agent(address)["exit_code"], 0);
        assert_eq!(repo.agent(address)["state"], "succeeded");
    }
    assert_eq!(branches(&repo).len(), 5);
}

#[test]
fn stop_kills_a_sigterm_ignoring_agent_and_its_setsid_grandchild() {
    let repo = TestRepo::new();
    let pid_file = repo.path("grandchild.pid");
    let script = format!("ignore-sigterm; grandchild {}; print ready; hang", pid_file.display());
    let spawn = repo.spawn_fake("stubborn", &script);
    let agent_pid = spawn["pid"].as_u64().unwrap() as u32;
    poll_until("the agent to be ready", PATIENCE, || log_text(&repo, "/root/stubborn").contains("ready"));
    let grandchild: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    assert!(alive(agent_pid) && alive(grandchild));
    // The grandchild left the agent's session and process group.
    let sid = |pid: u32| nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid as i32))).unwrap();
    assert_ne!(sid(grandchild), sid(agent_pid));

    let grace = 2.0;
    let started = Instant::now();
    let stopped = repo.corral_json(&["stop", "stubborn", "--grace", "2", "--json"]);
    let took = started.elapsed();
    assert_eq!(stopped[0]["state"], "stopped", "{stopped}");
    assert!(!alive(agent_pid), "agent {agent_pid} survived stop");
    assert!(!alive(grandchild), "setsid grandchild {grandchild} survived stop");
    assert!(
        repo.agent_processes("/root/stubborn").is_empty(),
        "processes left: {:?}",
        repo.agent_processes("/root/stubborn")
    );
    assert!(took < Duration::from_secs_f64(grace + 1.0), "stop took {took:?} with a {grace} s grace");
    assert!(
        took >= Duration::from_secs_f64(grace),
        "SIGTERM was ignored, so stop must have waited the grace: {took:?}"
    );

    let wait = repo.corral(&["wait", "stubborn"]);
    assert_eq!(wait.status.code(), Some(21), "wait on a stopped agent exits 21");
}

#[test]
fn agents_survive_a_daemon_sigkill_and_are_readopted() {
    let repo = TestRepo::new();
    let (first, second) = (repo.path("first"), repo.path("second"));
    let agents = [("zero", 0), ("three", 3), ("seven", 7)];
    for (name, code) in agents {
        let script = format!(
            "print started; wait-file {}; print while-daemon-down-{name}; wait-file {}; exit {code}",
            first.display(),
            second.display()
        );
        repo.spawn_fake(name, &script);
    }
    poll_until("three agents started", PATIENCE, || {
        agents.iter().all(|(n, _)| log_text(&repo, &format!("/root/{n}")).contains("started"))
    });
    let before: Vec<Value> = repo.agents();
    let id_of =
        |name: &str| before.iter().find(|a| a["address"] == format!("/root/{name}")).unwrap()["id"].as_u64().unwrap();

    let daemon = repo.daemon_pid().expect("daemon pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    poll_until("the daemon to die", PATIENCE, || !alive(daemon));

    // With no daemon: the agents run on and their output reaches the logs.
    std::fs::write(&first, "").unwrap();
    poll_until("output written while no daemon ran", PATIENCE, || {
        agents.iter().all(|(name, _)| {
            String::from_utf8_lossy(&repo.log_by_id(id_of(name))).contains(&format!("while-daemon-down-{name}"))
        })
    });
    for agent in &before {
        assert!(alive(agent["pid"].as_u64().unwrap() as u32), "{} died with the daemon", agent["address"]);
    }
    assert!(!alive(daemon));

    // The next command starts a daemon that shows them running, same pids.
    let after = repo.agents();
    assert_ne!(repo.daemon_pid(), Some(daemon));
    for old in &before {
        let new = after.iter().find(|a| a["address"] == old["address"]).unwrap();
        assert_eq!(new["state"], "running", "{new}");
        assert_eq!(new["pid"], old["pid"], "{new}");
    }

    std::fs::write(&second, "").unwrap();
    let out = repo.corral(&["wait", "zero", "three", "seven", "--json"]);
    let waited: Value = serde_json::from_slice(&out.stdout).unwrap();
    for (name, code) in agents {
        let agent = waited.as_array().unwrap().iter().find(|a| a["address"] == format!("/root/{name}")).unwrap();
        assert_eq!(agent["exit_code"], code, "{agent}");
    }
    assert_eq!(out.status.code(), Some(20), "a failed agent makes wait exit 20");
    let logs = repo.corral_ok(&["logs", "three"]);
    assert!(logs.contains("while-daemon-down-three"), "{logs}");
}

#[test]
fn an_agent_that_ends_while_no_daemon_runs_keeps_its_real_exit_code() {
    let repo = TestRepo::new();
    let go = repo.path("go");
    repo.spawn_fake("late", &format!("wait-file {}; print bye; exit 42", go.display()));
    let id = repo.agent("/root/late")["id"].as_u64().unwrap();
    let daemon = repo.daemon_pid().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    poll_until("the daemon to die", PATIENCE, || !alive(daemon));
    std::fs::write(&go, "").unwrap();
    poll_until("the exit record", PATIENCE, || repo.state_dir().join(format!("agents/{id}/exit.json")).exists());

    let agent = repo.agent("/root/late");
    assert_eq!(agent["state"], "failed", "{agent}");
    assert_eq!(agent["exit_code"], 42, "{agent}");
    assert!(log_text(&repo, "/root/late").contains("bye"));
}

/// Reads event lines from a running `corral events -f` until `stop` says so.
fn read_events(child: &mut std::process::Child, mut stop: impl FnMut(&Value) -> bool) -> Vec<Value> {
    let stdout = child.stdout.as_mut().unwrap();
    let mut reader = BufReader::new(stdout);
    let mut events = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "event stream ended");
        let event: Value = serde_json::from_str(&line).unwrap();
        let done = stop(&event);
        events.push(event);
        if done {
            return events;
        }
    }
}

#[test]
fn events_resume_after_a_disconnect_with_nothing_missed_or_repeated() {
    let repo = TestRepo::new();
    let go = repo.path("go");
    repo.spawn_fake("talker", &format!("progress 20 50; wait-file {}; progress 20 50; exit 0", go.display()));

    let mut first = repo.command().args(["events", "-f"]).stdout(Stdio::piped()).spawn().unwrap();
    let seen = read_events(&mut first, |e| e["text"] == "progress 10/20");
    first.kill().unwrap();
    first.wait().unwrap();
    let last = seen.last().unwrap()["seq"].as_u64().unwrap();

    // Events go on while nobody listens.
    std::fs::write(&go, "").unwrap();
    repo.corral_ok(&["wait", "talker"]);

    let mut second =
        repo.command().args(["events", "-f", "--since", &last.to_string()]).stdout(Stdio::piped()).spawn().unwrap();
    let rest = read_events(&mut second, |e| e["type"] == "exited");
    second.kill().unwrap();
    second.wait().unwrap();

    let seqs: Vec<u64> = seen.iter().chain(&rest).map(|e| e["seq"].as_u64().unwrap()).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "seqs must be contiguous, from 1, with no repeats");
    let progress = seen.iter().chain(&rest).filter(|e| e["type"] == "output").count();
    assert_eq!(progress, 40, "every progress line is an event");
    for event in seen.iter().chain(&rest).filter(|e| e["agent"].is_string()) {
        assert_eq!(event["agent"], "/root/talker");
        assert_eq!(event["parent"], "/root");
        assert_eq!(event["v"], 1);
    }

    // The stream without -f gives the same events, and --agent filters.
    let all = repo.corral_ok(&["events"]);
    assert_eq!(all.lines().count(), seqs.len());
    let none = repo.corral_ok(&["events", "--agent", "/root/other"]);
    assert_eq!(none.lines().count(), 0);
}

#[test]
fn two_clients_spawning_twenty_agents_each_do_not_clash() {
    let repo = TestRepo::new();
    let bin = corral_bin();
    let bin = bin.to_str().unwrap();
    std::thread::scope(|s| {
        for client in ["x", "y"] {
            let repo = &repo;
            s.spawn(move || {
                // Twenty spawn commands at once from each client.
                let children: Vec<_> = (0..20)
                    .map(|i| {
                        repo.command()
                            .args(["spawn", &format!("{client}{i}"), "--json", "--", bin, "fake-agent", "exit 0"])
                            .stdout(Stdio::piped())
                            .stderr(Stdio::piped())
                            .spawn()
                            .unwrap()
                    })
                    .collect();
                for child in children {
                    let out = child.wait_with_output().unwrap();
                    assert!(out.status.success(), "spawn failed: {}", String::from_utf8_lossy(&out.stderr));
                }
            });
        }
    });
    let agents = repo.agents();
    assert_eq!(agents.len(), 40);
    let addresses: Vec<String> = agents.iter().map(|a| a["address"].as_str().unwrap().to_string()).collect();
    repo.corral_ok(&[&["wait"], &addresses.iter().map(String::as_str).collect::<Vec<_>>()[..]].concat());
    let agents = repo.agents();
    assert!(agents.iter().all(|a| a["state"] == "succeeded"), "{agents:?}");
    let worktrees: HashSet<&str> = agents.iter().map(|a| a["worktree"].as_str().unwrap()).collect();
    assert_eq!(worktrees.len(), 40);
    assert!(worktrees.iter().all(|w| std::path::Path::new(w).join("README.md").exists()));
    assert_eq!(branches(&repo).len(), 40);
    let listed = repo.git(&["worktree", "list"]).lines().count();
    assert_eq!(listed, 41, "the main checkout and forty agent worktrees");
}

fn assert_fails(repo: &TestRepo, args: &[&str], code: i32, message: &str) {
    let out = repo.corral(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "corral {args:?}: {stderr}");
    assert!(stderr.contains(message), "corral {args:?}: expected {message:?} in {stderr:?}");
}

#[test]
fn bad_input_gets_a_clear_message_and_exit_code_and_creates_nothing() {
    let repo = TestRepo::new();
    let bin = corral_bin();
    let bin = bin.to_str().unwrap();
    // `corral spawn NAME [OPTIONS] -- corral fake-agent "exit 0"`
    let spawn = |name: &str, options: &[&str]| {
        let mut args = vec!["spawn".to_string(), name.to_string()];
        args.extend(options.iter().map(|o| o.to_string()));
        args.extend(["--".into(), bin.into(), "fake-agent".into(), "exit 0".into()]);
        args
    };
    let run = |args: Vec<String>, code, message: &str| {
        assert_fails(&repo, &args.iter().map(String::as_str).collect::<Vec<_>>(), code, message);
    };

    run(spawn("..", &[]), 5, "`.` and `..` are not names");
    run(spawn("a/b", &[]), 5, "cannot contain `/`");
    run(spawn("", &[]), 5, "the name is empty");
    run(spawn(&"n".repeat(65), &[]), 5, "65 characters, the limit is 64");
    run(spawn("ok1", &["--base", "no-such-ref"]), 6, "\"no-such-ref\" names no commit");
    assert_fails(&repo, &["spawn", "ok2", "--", "no-such-command-xyz"], 10, "command not found: no-such-command-xyz");
    assert_fails(&repo, &["spawn", "ok3", "--parent", "/root/ghost", "--", "true"], 4, "no agent at /root/ghost");
    assert_fails(&repo, &["view", "/root/nobody"], 4, "no agent at /root/nobody");
    assert_fails(&repo, &["stop", "nobody"], 4, "no agent at /root/nobody");
    assert_fails(&repo, &["wait", "nobody"], 4, "no agent at /root/nobody");
    assert_fails(&repo, &["logs", "/elsewhere/x"], 5, "an address starts with /root");

    // None of that made an agent, a branch or a worktree.
    assert!(repo.agents().is_empty());
    assert!(branches(&repo).is_empty());
    assert!(
        !repo.worktrees.exists()
            || std::fs::read_dir(&repo.worktrees)
                .unwrap()
                .all(|e| { std::fs::read_dir(e.unwrap().path()).unwrap().next().is_none() })
    );

    repo.spawn_fake("twice", "exit 0");
    run(spawn("twice", &[]), 7, "an agent named /root/twice already exists");
    assert_eq!(repo.agents().len(), 1);

    // Outside any repository.
    let plain = tempfile::tempdir().unwrap();
    let out = repo.command().current_dir(plain.path()).args(["ps"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not inside a git repository"));
}

#[test]
fn a_daemon_socket_owned_by_another_user_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: making a socket owned by another user needs root");
        return;
    }
    let repo = TestRepo::new();
    let state = repo.state_dir();
    std::fs::create_dir_all(&state).unwrap();
    let socket = state.join("daemon.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    std::os::unix::fs::chown(&socket, Some(65534), Some(65534)).unwrap();
    assert_fails(&repo, &["ps"], 8, "is owned by uid 65534, not by you");
    assert_fails(&repo, &["spawn", "x", "--", "true"], 8, "is owned by uid 65534");
    assert!(repo.daemon_pid().is_none(), "no daemon may start");
}

#[test]
fn attach_types_into_the_pty_and_detaches_with_ctrl_bracket() {
    let repo = TestRepo::new();
    repo.spawn_fake("echo", "print hello-from-agent; echo-input 1; print after-input; hang");
    poll_until("the agent to greet", PATIENCE, || log_text(&repo, "/root/echo").contains("hello-from-agent"));
    let mut attach =
        repo.command().args(["attach", "echo"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdin = attach.stdin.take().unwrap();
    // What attach shows, read as it comes.
    let shown = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = {
        let (shown, mut stdout) = (shown.clone(), attach.stdout.take().unwrap());
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut chunk) {
                shown.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        })
    };
    let seen = || String::from_utf8_lossy(&shown.lock().unwrap()).into_owned();
    poll_until("the replayed output", PATIENCE, || seen().contains("hello-from-agent"));
    stdin.write_all(b"typed-line\r").unwrap();
    // The agent's answer reaches the terminal live.
    poll_until("the typed line echoed on the terminal", PATIENCE, || seen().contains("got typed-line"));
    assert!(log_text(&repo, "/root/echo").contains("got typed-line"));
    stdin.write_all(&[0x1d]).unwrap();
    let status = attach.wait().unwrap();
    reader.join().unwrap();
    assert!(status.success());
    // Detaching leaves the agent running.
    assert_eq!(repo.agent("/root/echo")["state"], "running");
    repo.corral_ok(&["stop", "echo", "--grace", "0"]);
}

#[test]
fn view_logs_and_gc() {
    let repo = TestRepo::new();
    repo.spawn_fake("worker", "print line-one; write notes.txt kept; commit 'add notes'; print line-two; exit 0");
    repo.spawn_fake("dirty", "write scratch.txt unsaved; exit 0");
    repo.corral_ok(&["wait", "worker", "dirty"]);

    // The daemon's socket is its owner's alone.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(repo.state_dir().join("daemon.sock")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");

    let view = repo.corral_ok(&["view", "worker"]);
    assert!(view.contains("succeeded") && view.contains("exit 0") && view.contains("line-two"), "{view}");
    let logs = repo.corral_ok(&["logs", "worker"]);
    assert!(logs.contains("line-one\r\n") && logs.contains("line-two"), "{logs:?}");

    let worker = repo.agent("/root/worker");
    let gc = repo.corral_json(&["gc", "--json"]);
    assert_eq!(gc["removed"].as_array().unwrap().len(), 1, "{gc}");
    assert_eq!(gc["kept"][0]["address"], "/root/dirty", "{gc}");
    assert!(gc["kept"][0]["why"].as_str().unwrap().contains("scratch.txt"), "{gc}");
    assert!(!std::path::Path::new(worker["worktree"].as_str().unwrap()).exists());
    // The branch, with the agent's commit, stays.
    assert!(repo.git(&["log", "--format=%s", "corral/root/worker"]).contains("add notes"));
    assert!(repo.corral_ok(&["ps"]).contains("/root/dirty"));
    assert!(!repo.corral_ok(&["ps"]).contains("/root/worker"));

    let gc = repo.corral_json(&["gc", "--force", "--json"]);
    assert_eq!(gc["removed"][0]["address"], "/root/dirty", "{gc}");
}

#[test]
fn logs_follow_prints_output_as_it_comes_until_the_agent_ends() {
    let repo = TestRepo::new();
    let go = repo.path("go");
    repo.spawn_fake("chatty", &format!("print first; wait-file {}; print second; exit 0", go.display()));
    let mut follow = repo.command().args(["logs", "chatty", "-f"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut reader = BufReader::new(follow.stdout.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line.trim_end(), "first");
    std::fs::write(&go, "").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
    assert!(rest.contains("second"), "{rest:?}");
    // It returned by itself once the agent ended.
    assert!(follow.wait().unwrap().success());
}

#[test]
fn a_daemon_whose_repository_is_deleted_exits() {
    let repo = TestRepo::new();
    repo.corral_ok(&["ps"]);
    let daemon = repo.daemon_pid().unwrap();
    std::fs::remove_dir_all(repo.repo.join(".git")).unwrap();
    poll_until("the daemon to exit", PATIENCE, || !alive(daemon));
}
