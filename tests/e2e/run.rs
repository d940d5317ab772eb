//! `corral run FILE`: batches of agents in dependency order, with a lock,
//! a report and an exit code; `corral runs`; `gc --older-than`; the cron
//! example as cron runs it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use corral_e2e::real_cli::wait_deadline;
use corral_e2e::{alive, corral_bin, poll_until, processes_with_env, TestRepo, PATIENCE};
use serde_json::Value;

/// A run file in the scratch folder (outside the repository, so the
/// checkout stays clean for merges).
fn run_file(repo: &TestRepo, name: &str, text: &str) -> PathBuf {
    let path = repo.path(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `command = [...]` for the scripted agent.
fn fake(script: &str) -> String {
    format!("command = [{:?}, \"fake-agent\", {script:?}]", corral_bin().display().to_string())
}

fn corral_run(repo: &TestRepo, file: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["run", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    repo.corral(&args)
}

/// The JSON report a `--json` run printed.
fn report(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("no JSON report ({e}):\nstdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr))
    })
}

fn row<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["agents"].as_array().unwrap().iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("no {name}"))
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A `corral run` in the background, its output kept.
fn start_run(repo: &TestRepo, file: &Path, extra: &[&str]) -> Child {
    repo.command()
        .arg("run")
        .arg(file)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("corral run starts")
}

/// The runs `corral runs --json` lists.
fn runs(repo: &TestRepo) -> Vec<Value> {
    repo.corral_json(&["runs", "--json"]).as_array().cloned().unwrap_or_default()
}

/// The address of the one agent named `name` of a run of this repository
/// (`/root/<run id>/<name>`), once it is in `ps` in `state`.
fn wait_for_agent(repo: &TestRepo, name: &str, state: &str) -> Value {
    let mut found = None;
    poll_until(&format!("a run's {name} to be {state}"), PATIENCE, || {
        found = repo.agents().into_iter().find(|a| {
            a["address"].as_str().is_some_and(|s| s.ends_with(&format!("/{name}")) && s.matches('/').count() == 3)
                && a["state"] == state
        });
        found.is_some()
    });
    found.unwrap()
}

fn events(repo: &TestRepo) -> Vec<Value> {
    repo.corral_ok(&["events"]).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The seq of the first event of `kind` for `agent`.
fn seq_of(events: &[Value], agent: &str, kind: &str) -> u64 {
    events
        .iter()
        .find(|e| e["agent"] == agent && e["type"] == kind)
        .and_then(|e| e["seq"].as_u64())
        .unwrap_or_else(|| panic!("no {kind} event for {agent}"))
}

fn kill(pid: u32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
}

#[test]
fn four_agents_the_two_that_work_merge_the_one_after_a_failure_is_skipped() {
    let repo = TestRepo::new();
    let bin = corral_bin().display().to_string();
    let file = run_file(
        &repo,
        "nightly.toml",
        &format!(
            r#"
name = "nightly"
merge = {{ policy = "auto" }}

[[agent]]
name = "writer"
task = "write the notes"
{}

[[agent]]
name = "reader"
after = ["writer"]
command = ["sh", "-c", "test -f notes.md && exec {bin} fake-agent 'write seen.md yes; commit seen'"]

[[agent]]
name = "broken"
{}

[[agent]]
name = "after-broken"
after = ["broken"]
{}
"#,
            fake("write notes.md hello; commit 'add notes'"),
            fake("sleep 0.2; exit 3"),
            fake("write never.md no; commit never"),
        ),
    );
    let out = corral_run(&repo, &file, &["--json"]);
    assert_eq!(out.status.code(), Some(20), "the largest wait code: a failed agent\n{}", describe(&out));
    let report = report(&out);
    assert_eq!(report["v"], 1);
    assert_eq!(report["state"], "failed");
    let id = report["run"].as_str().unwrap();
    assert!(id.starts_with("nightly-") && id.ends_with('Z'), "{id}");
    assert_eq!(report["file"], file.to_str().unwrap());
    for name in ["writer", "reader"] {
        let row = row(&report, name);
        assert_eq!((row["state"].as_str(), row["merge"].as_str()), (Some("succeeded"), Some("merged")), "{row}");
        assert_eq!(row["exit"], 0);
        assert_eq!(row["address"], format!("/root/{id}/{name}"));
        assert_eq!(row["branch"], format!("corral/root/{id}.{name}"));
    }
    let broken = row(&report, "broken");
    assert_eq!((broken["state"].as_str(), broken["exit"].as_i64()), (Some("failed"), Some(3)));
    let skipped = row(&report, "after-broken");
    assert_eq!(skipped["state"], "skipped");
    assert!(skipped["reason"].as_str().unwrap().contains("after broken, which failed"), "{skipped}");
    let totals = &report["totals"];
    assert_eq!(
        (&totals["agents"], &totals["succeeded"], &totals["failed"], &totals["skipped"]),
        (&4.into(), &2.into(), &1.into(), &1.into())
    );
    // Both merged onto main; the skipped agent never ran.
    assert_eq!(repo.git(&["show", "main:notes.md"]), "hello\n");
    assert_eq!(repo.git(&["show", "main:seen.md"]), "yes\n");
    let addresses: Vec<String> = repo.agents().iter().map(|a| a["address"].as_str().unwrap().to_owned()).collect();
    assert!(!addresses.contains(&format!("/root/{id}/after-broken")), "{addresses:?}");
    assert!(addresses.contains(&format!("/root/{id}")), "the driver is an agent: {addresses:?}");
    // Every command reads the run's agents.
    let view = repo.corral_ok(&["view", &format!("/root/{id}/writer")]);
    assert!(view.contains("succeeded"), "{view}");
    let own = repo.corral_ok(&["events", "--agent", &format!("/root/{id}")]);
    assert!(own.lines().count() > 4 && own.lines().all(|l| l.contains(&format!("/root/{id}"))), "{own}");
}

#[test]
fn the_same_file_twice_in_a_row_gives_two_runs_with_their_own_ids() {
    let repo = TestRepo::new();
    let file =
        run_file(&repo, "twice.toml", &format!("name = \"twice\"\n[[agent]]\nname = \"a\"\n{}\n", fake("exit 0")));
    let first = corral_run(&repo, &file, &[]);
    assert_eq!(first.status.code(), Some(0), "{}", describe(&first));
    let second = corral_run(&repo, &file, &[]);
    assert_eq!(second.status.code(), Some(0), "{}", describe(&second));
    // The report for a person: a row per agent and the totals.
    let text = String::from_utf8_lossy(&second.stdout);
    assert!(text.starts_with("run twice-") && text.contains("succeeded  exit 0"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("a ") && l.contains("succeeded")), "{text}");
    assert!(text.contains("total: 1 agents, 1 succeeded, 0 failed, 0 skipped"), "{text}");
    assert!(!text.contains('\u{1b}'), "no escape codes off a terminal: {text:?}");
    let listed = runs(&repo);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_ne!(listed[0]["run"], listed[1]["run"]);
    for run in &listed {
        assert_eq!((run["state"].as_str(), run["code"].as_i64()), (Some("succeeded"), Some(0)), "{run}");
        let address = format!("/root/{}/a", run["run"].as_str().unwrap());
        assert_eq!(repo.agent(&address)["state"], "succeeded");
    }
    let table = repo.corral_ok(&["runs"]);
    assert!(table.starts_with("RUN") && table.lines().count() == 3, "{table}");
}

#[test]
fn a_second_run_while_one_goes_skips_at_once_or_waits_for_it() {
    let repo = TestRepo::new();
    let go = repo.path("go");
    let hold = |overlap: &str| {
        format!(
            "name = \"held\"\noverlap = \"{overlap}\"\n[[agent]]\nname = \"a\"\n{}\n",
            fake(&format!("wait-file {}; exit 0", go.display()))
        )
    };
    // skip: the second exits with the skip code at once; the first completes.
    let file = run_file(&repo, "skip.toml", &hold("skip"));
    let first = start_run(&repo, &file, &[]);
    wait_for_agent(&repo, "a", "running");
    let started = Instant::now();
    let second = corral_run(&repo, &file, &[]);
    let took = started.elapsed();
    assert_eq!(second.status.code(), Some(31), "{}", describe(&second));
    assert!(took < Duration::from_secs(2), "the skip took {took:?}");
    assert!(String::from_utf8_lossy(&second.stderr).contains("a run named held is still going"));
    std::fs::write(&go, "").unwrap();
    let first_out = first.wait_with_output().unwrap();
    assert_eq!(first_out.status.code(), Some(0), "{}", describe(&first_out));
    let skipped: Vec<Value> = runs(&repo).into_iter().filter(|r| r["state"] == "skipped").collect();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0]["code"], 31);

    // wait: the second starts once the first has ended.
    std::fs::remove_file(&go).unwrap();
    let file = run_file(&repo, "wait.toml", &hold("wait"));
    let first = start_run(&repo, &file, &["--json"]);
    let first_agent = wait_for_agent(&repo, "a", "running");
    let mut second = start_run(&repo, &file, &["--json"]);
    // It waits: no second run's agent appears while the first holds the lock.
    std::thread::sleep(Duration::from_millis(500));
    assert!(second.try_wait().unwrap().is_none(), "the second run waits");
    let running = repo.agents().into_iter().filter(|a| a["state"] == "running").count();
    assert_eq!(running, 2, "the first run's driver and agent only");
    std::fs::write(&go, "").unwrap();
    let (first, second) = (first.wait_with_output().unwrap(), second.wait_with_output().unwrap());
    assert_eq!(first.status.code(), Some(0), "{}", describe(&first));
    assert_eq!(second.status.code(), Some(0), "{}", describe(&second));
    let (first, second) = (report(&first), report(&second));
    assert_ne!(first["run"], second["run"]);
    let events = events(&repo);
    let first_driver = first["address"].as_str().unwrap();
    let second_driver = second["address"].as_str().unwrap();
    assert_eq!(first_agent["address"], format!("{first_driver}/a"));
    // The first run's agents had ended, and were journaled so, before the
    // second run began. (Its driver lets go of the lock as it exits, and
    // its own exit is journaled a moment after: the second driver may be
    // spawned in between.)
    let first_agent = first_agent["address"].as_str().unwrap();
    assert!(
        seq_of(&events, first_agent, "exited") < seq_of(&events, second_driver, "spawned"),
        "the second run started before the first run's agent ended"
    );
}

#[test]
fn a_killed_run_leaves_no_lock_and_resume_finishes_it() {
    let repo = TestRepo::new();
    let file = run_file(
        &repo,
        "resume.toml",
        &format!(
            "name = \"resumable\"\n[[agent]]\nname = \"a\"\n{}\n[[agent]]\nname = \"b\"\nafter = [\"a\"]\n{}\n",
            fake("wait-file {{go}}; exit 0"),
            fake("exit 0")
        ),
    );
    // Its client killed, a run goes on by itself and ends.
    let go = repo.path("go-0");
    std::fs::write(&go, "").unwrap();
    let hold = repo.path("hold");
    let held = run_file(
        &repo,
        "held.toml",
        &format!("name = \"alone\"\n[[agent]]\nname = \"a\"\n{}\n", fake(&format!("wait-file {}", hold.display()))),
    );
    let mut client = start_run(&repo, &held, &[]);
    let agent = wait_for_agent(&repo, "a", "running");
    kill(client.id(), nix::sys::signal::Signal::SIGKILL);
    let _ = client.wait();
    std::fs::write(&hold, "").unwrap();
    let driver = agent["parent"].as_str().unwrap().to_owned();
    poll_until("the clientless run to end", PATIENCE, || {
        runs(&repo).iter().any(|r| r["address"] == driver.as_str() && r["state"] == "succeeded")
    });

    // Its client and its driver killed: the lock goes with the driver.
    let go1 = repo.path("go-1");
    let mut client = start_run(&repo, &file, &["--var", &format!("go={}", go1.display())]);
    let agent = wait_for_agent(&repo, "a", "running");
    let driver = agent["parent"].as_str().unwrap().to_owned();
    let id = driver.trim_start_matches("/root/").to_owned();
    kill(client.id(), nix::sys::signal::Signal::SIGKILL);
    let _ = client.wait();
    let driver_pid = repo.agent(&driver)["pid"].as_u64().unwrap() as u32;
    kill(driver_pid, nix::sys::signal::Signal::SIGKILL);
    poll_until("the driver to end", PATIENCE, || repo.agent(&driver)["state"] == "failed");
    assert_eq!(repo.agent(agent["address"].as_str().unwrap())["state"], "running", "its agent goes on");
    let listed = runs(&repo);
    let interrupted = listed.iter().find(|r| r["run"] == id.as_str()).unwrap();
    assert_eq!(interrupted["state"], "interrupted");

    // Its lock went with its driver, but its agent still works: the run
    // is still going, and the next run of the file (overlap "skip") does
    // not do that work a second time.
    let next = corral_run(&repo, &file, &["--json", "--var", &format!("go={}", go.display())]);
    assert_eq!(next.status.code(), Some(31), "{}", describe(&next));
    assert_eq!(report(&next)["state"], "skipped", "{}", describe(&next));
    let drivers: Vec<Value> = repo
        .agents()
        .into_iter()
        .filter(|a| {
            a["address"].as_str().is_some_and(|x| x.starts_with("/root/resumable-") && x.matches('/').count() == 2)
        })
        .collect();
    assert_eq!(drivers.len(), 1, "the skipped run started a driver: {drivers:?}");

    // --resume waits for the agent already running and starts the rest.
    std::fs::write(&go1, "").unwrap();
    let resumed = repo.corral(&["run", "--resume", &id, "--json"]);
    assert_eq!(resumed.status.code(), Some(0), "{}", describe(&resumed));
    let report = report(&resumed);
    assert_eq!(report["run"], id.as_str());
    assert_eq!(report["state"], "succeeded");
    for name in ["a", "b"] {
        assert_eq!(row(&report, name)["state"], "succeeded");
    }
    let spawns = events(&repo).iter().filter(|e| e["type"] == "spawned" && e["agent"] == format!("{driver}/a")).count();
    assert_eq!(spawns, 1, "a was not spawned again");
    // Resuming a run that has ended reports it again.
    let again = repo.corral(&["run", "--resume", &id]);
    assert_eq!(again.status.code(), Some(0), "{}", describe(&again));
    assert!(String::from_utf8_lossy(&again.stderr).contains("nothing to resume"));
}

#[test]
fn sigterm_stops_the_runs_agents_within_their_grace_prints_the_report_and_keeps_the_worktrees() {
    let repo = TestRepo::new();
    let file = run_file(
        &repo,
        "term.toml",
        &format!(
            "name = \"term\"\n\
             [[agent]]\nname = \"quick\"\ngrace = \"5s\"\n{}\n\
             [[agent]]\nname = \"stubborn\"\ngrace = \"1s\"\n{}\n\
             [[agent]]\nname = \"later\"\nafter = [\"quick\"]\n{}\n",
            fake("write work.txt half; hang"),
            fake("ignore-sigterm; hang"),
            fake("exit 0"),
        ),
    );
    let client = start_run(&repo, &file, &[]);
    let quick = wait_for_agent(&repo, "quick", "running");
    let stubborn = wait_for_agent(&repo, "stubborn", "running");
    let started = Instant::now();
    kill(client.id(), nix::sys::signal::Signal::SIGTERM);
    let out = client.wait_with_output().unwrap();
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(21), "stopped on request\n{}", describe(&out));
    assert!(took < Duration::from_secs(15), "stopping took {took:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("stopped"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("later") && l.contains("not_started")), "{text}");
    for agent in [&quick, &stubborn] {
        let address = agent["address"].as_str().unwrap();
        let now = repo.agent(address);
        assert_eq!(now["state"], "stopped", "{now}");
        assert!(repo.agent_processes(address).is_empty(), "{address} left processes");
        let worktree = PathBuf::from(now["worktree"].as_str().unwrap());
        assert!(worktree.is_dir(), "{} was kept", worktree.display());
    }
    let worktree = PathBuf::from(repo.agent(quick["address"].as_str().unwrap())["worktree"].as_str().unwrap());
    assert_eq!(std::fs::read_to_string(worktree.join("work.txt")).unwrap(), "half\n");
    let listed = runs(&repo);
    assert_eq!((listed[0]["state"].as_str(), listed[0]["code"].as_i64()), (Some("stopped"), Some(21)));
}

#[test]
fn bad_run_files_are_refused_with_file_line_and_key_and_nothing_starts() {
    let repo = TestRepo::new();
    let cmd = fake("exit 0");
    let bad: Vec<(String, Vec<&str>)> = vec![
        (format!("name = \"n\"\novrlap = \"skip\"\n[[agent]]\nname = \"a\"\n{cmd}\n"), vec![":2:", "unknown key \"ovrlap\""]),
        (format!("name = \"n\"\n[[agent]]\nname = \"a\"\n{cmd}\ntsk = \"x\"\n"), vec![":5:", "agent[0]", "unknown key \"tsk\""]),
        (
            format!("name = \"n\"\n[[agent]]\nname = \"a\"\n{cmd}\nafter = [\"b\"]\n[[agent]]\nname = \"b\"\n{cmd}\nafter = [\"a\"]\n"),
            vec![":5:", "agent[0].after", "cycle: a -> b -> a"],
        ),
        (format!("name = \"n\"\n[[agent]]\nname = \"a\"\n{cmd}\nafter = [\"zz\"]\n"), vec![":5:", "agent[0].after", "unknown agent \"zz\""]),
        (
            format!("name = \"n\"\n[[agent]]\nname = \"a\"\n{cmd}\n[[agent]]\nname = \"a\"\n{cmd}\n"),
            vec![":6:", "agent[1].name", "duplicate agent name \"a\""],
        ),
        (format!("name = \"n\"\ntimeout = \"soon\"\n[[agent]]\nname = \"a\"\n{cmd}\n"), vec![":2:", "timeout", "bad duration"]),
        ("name = \"n\"\n[[agent]]\nname = \"a\"\n".into(), vec![":3:", "agent[0]", "no task and no command"]),
        (format!("name = \"n\"\n[[agent]]\nname = \"a b\"\n{cmd}\n"), vec![":3:", "agent[0].name", "invalid agent name"]),
        (format!("name = \"n\"\noverlap = \"maybe\"\n[[agent]]\nname = \"a\"\n{cmd}\n"), vec![":2:", "overlap", "unknown value \"maybe\""]),
        (format!("name = \"n\"\n[[agent]]\nname = \"a\"\n{cmd}\ntask = \"on {{{{day}}}}\"\n"), vec![":5:", "agent[0].task", "unknown variable {{day}}"]),
        (format!("name = \"n\"\n[[agent]]\nname = \"a\"\nrole = \"ghost\"\n{cmd}\n"), vec![":4:", "agent[0].role", "unknown role \"ghost\""]),
        (format!("name = \"n\"\n\n[[agent]]\nname = \"a\"\n{cmd}\nbudget = {{ tokens = 0 }}\n"), vec![":6:", "agent[0].budget.tokens", "greater than 0"]),
    ];
    for (index, (text, words)) in bad.iter().enumerate() {
        let file = run_file(&repo, &format!("bad{index}.toml"), text);
        let out = corral_run(&repo, &file, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(14), "bad{index}: {stderr}");
        assert!(stderr.contains(&format!("{}:", file.display())), "bad{index} names the file: {stderr}");
        for word in words {
            assert!(stderr.contains(word), "bad{index}: expected {word:?} in {stderr}");
        }
        // --dry-run checks the same.
        assert_eq!(corral_run(&repo, &file, &["--dry-run"]).status.code(), Some(14));
    }
    // A file that is not UTF-8 is a bad run file too, named with its line.
    let latin1 = repo.path("latin1.toml");
    std::fs::write(&latin1, b"name = \"n\"\n[[agent]]\nname = \"a\"\ntask = \"caf\xe9\"\n").unwrap();
    let out = corral_run(&repo, &latin1, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(14), "{stderr}");
    assert!(stderr.contains(&format!("{}:4:", latin1.display())) && stderr.contains("UTF-8"), "{stderr}");
    // --resume takes a run id, not a path.
    for id in ["../x", "a/b", ""] {
        let out = repo.corral(&["run", "--resume", id]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(5), "--resume {id:?}: {stderr}");
        assert!(stderr.contains("not a run id"), "--resume {id:?}: {stderr}");
    }
    // Nothing started: no daemon, no run, no agent.
    assert!(!repo.state_dir().join("daemon.sock").exists(), "no daemon was started");
    assert!(
        !repo.state_dir().join("runs").exists()
            || std::fs::read_dir(repo.state_dir().join("runs")).unwrap().count() == 0
    );
    // A bad --var is a bad command line.
    let good = run_file(&repo, "good.toml", &format!("name = \"n\"\n[[agent]]\nname = \"a\"\n{cmd}\n"));
    assert_eq!(corral_run(&repo, &good, &["--var", "novalue"]).status.code(), Some(2));
    // A dry run shows the plan and starts nothing either.
    let out = corral_run(&repo, &good, &["--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("/root/n-"), "{}", describe(&out));
    assert!(!repo.state_dir().join("daemon.sock").exists());
}

#[test]
fn a_task_over_the_wire_limit_fails_that_agent_at_once_and_the_run_goes_on() {
    // Regression: the spawn was cut off mid-frame, taken for a daemon gone
    // away, and retried for ever.
    let repo = TestRepo::new();
    let task = "x".repeat(corral::wire::protocol::MAX_FRAME + 1);
    let file = run_file(
        &repo,
        "big.toml",
        &format!(
            "name = \"big\"\n[[agent]]\nname = \"huge\"\ntask = \"{task}\"\n{}\n[[agent]]\nname = \"small\"\n{}\n",
            fake("exit 0"),
            fake("exit 0")
        ),
    );
    drop(task);
    let out = wait_deadline(start_run(&repo, &file, &["--json"]), PATIENCE, "a run with a 16 MiB task");
    assert_eq!(out.status.code(), Some(20), "an agent that could not start counts as failed\n{}", describe(&out));
    let report = report(&out);
    let huge = row(&report, "huge");
    assert_eq!(huge["state"], "refused", "{huge}");
    let reason = huge["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("16 MiB") && reason.contains("bytes"), "the reason names the size and the limit: {reason}");
    assert_eq!(row(&report, "small")["state"], "succeeded", "the run's other agents still run");
}

#[test]
fn a_reader_that_goes_away_never_panics_the_run_client() {
    // Regression: print! and eprintln! panicked on EPIPE, so `corral run
    // ... | head -1` ended the client with 101.
    let repo = TestRepo::new();
    let file = run_file(&repo, "pipe.toml", &format!("name = \"pipe\"\n[[agent]]\nname = \"a\"\n{}\n", fake("exit 0")));
    // A pipe whose read end is already closed: every write gets EPIPE.
    let closed = || {
        let (read, write) = nix::unistd::pipe().unwrap();
        drop(read);
        Stdio::from(write)
    };
    for extra in [&["--json"][..], &[][..], &["--dry-run"][..]] {
        let child = repo.command().arg("run").arg(&file).args(extra).stdout(closed()).stderr(Stdio::piped()).spawn();
        let out = wait_deadline(child.unwrap(), PATIENCE, "a run with its stdout closed");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{extra:?}: the run's own code\n{}", describe(&out));
        assert!(!stderr.contains("panicked"), "{extra:?}: {stderr}");
    }
    // Its stderr gone too (progress lines are written there).
    let child = repo.command().arg("run").arg(&file).stdout(closed()).stderr(closed()).spawn();
    let out = wait_deadline(child.unwrap(), PATIENCE, "a run with stdout and stderr closed");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let child = repo.command().args(["runs"]).stdout(closed()).stderr(Stdio::piped()).spawn();
    let out = wait_deadline(child.unwrap(), PATIENCE, "corral runs with its stdout closed");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

#[test]
fn a_driver_spawn_retried_across_a_daemon_killed_after_it_started_keeps_the_run() {
    // Regression: the daemon died once the driver ran, before it answered
    // the spawn; the retried spawn was refused as a duplicate, and the
    // client deleted the live run's record and exited 7.
    let repo = TestRepo::new();
    // A daemon with the fault seam on; the run's client, without it,
    // starts the next daemon with none.
    let start = repo.command().env("CORRAL_FAULT_INJECTION", "1").args(["ps"]).output().unwrap();
    assert_eq!(start.status.code(), Some(0), "{}", describe(&start));
    let daemon = repo.daemon_pid().unwrap();
    let fault = repo.state_dir().join("journal.fault");
    std::fs::write(&fault, "kill:after-sync started").unwrap();
    let file =
        run_file(&repo, "retry.toml", &format!("name = \"retry\"\n[[agent]]\nname = \"a\"\n{}\n", fake("exit 0")));
    let client = start_run(&repo, &file, &["--json"]);
    poll_until("the daemon to die once the driver started", PATIENCE, || !alive(daemon));
    std::fs::remove_file(&fault).unwrap();
    let out = wait_deadline(client, PATIENCE, "a run whose driver spawn was retried");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let report = report(&out);
    assert_eq!((report["state"].as_str(), row(&report, "a")["state"].as_str()), (Some("succeeded"), Some("succeeded")));
    let runs = runs(&repo);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["state"], "succeeded", "the run's record is kept: {runs:?}");
}

#[test]
fn a_run_survives_a_daemon_killed_mid_run() {
    let repo = TestRepo::new();
    let go = repo.path("go");
    let file = run_file(
        &repo,
        "crash.toml",
        &format!(
            "name = \"crash\"\n[[agent]]\nname = \"a\"\n{}\n[[agent]]\nname = \"b\"\nafter = [\"a\"]\n{}\n",
            fake(&format!("wait-file {}; exit 0", go.display())),
            fake("exit 0")
        ),
    );
    let client = start_run(&repo, &file, &["--json"]);
    wait_for_agent(&repo, "a", "running");
    let daemon = repo.daemon_pid().unwrap();
    kill(daemon, nix::sys::signal::Signal::SIGKILL);
    poll_until("the daemon to die", PATIENCE, || !alive(daemon));
    std::fs::write(&go, "").unwrap();
    let out = client.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let report = report(&out);
    assert_eq!(
        (row(&report, "a")["state"].as_str(), row(&report, "b")["state"].as_str()),
        (Some("succeeded"), Some("succeeded"))
    );
    assert_ne!(repo.daemon_pid(), Some(daemon), "a new daemon took over");
}

#[test]
fn the_run_timeout_stops_the_whole_run_and_max_threads_one_still_runs() {
    let repo = TestRepo::new();
    std::fs::write(repo.repo.join("corral.toml"), "[supervisor]\nmax_threads = 1\n").unwrap();
    repo.git(&["add", "corral.toml"]);
    repo.git(&["commit", "-q", "-m", "config"]);
    // max_threads = 1: the driver takes no slot, its agents run one at a time.
    let file = run_file(
        &repo,
        "one.toml",
        &format!(
            "name = \"one\"\n[[agent]]\nname = \"a\"\n{}\n[[agent]]\nname = \"b\"\n{}\n",
            fake("sleep 0.2"),
            fake("sleep 0.2")
        ),
    );
    let out = corral_run(&repo, &file, &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    let file = run_file(
        &repo,
        "slow.toml",
        &format!("name = \"slow\"\ntimeout = \"1s\"\n[[agent]]\nname = \"a\"\ngrace = \"0s\"\n{}\n", fake("hang")),
    );
    let started = Instant::now();
    let out = corral_run(&repo, &file, &["--json"]);
    assert_eq!(out.status.code(), Some(25), "timed out\n{}", describe(&out));
    assert!(started.elapsed() < Duration::from_secs(30));
    let report = report(&out);
    assert_eq!(report["state"], "timed_out");
    assert_eq!(row(&report, "a")["state"], "timed_out");
}

#[test]
fn gc_older_than_removes_only_runs_that_ended_long_enough_ago() {
    let repo = TestRepo::new();
    let file = run_file(
        &repo,
        "gc.toml",
        &format!("name = \"gc\"\nmerge = \"auto\"\n[[agent]]\nname = \"a\"\n{}\n", fake("write a.txt a; commit a")),
    );
    let out = corral_run(&repo, &file, &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let address = row(&report(&out), "a")["address"].as_str().unwrap().to_owned();
    let worktree = PathBuf::from(repo.agent(&address)["worktree"].as_str().unwrap());
    assert!(worktree.is_dir());
    let kept = repo.corral_json(&["gc", "--older-than", "7d", "--json"]);
    assert!(kept["removed"].as_array().unwrap().is_empty(), "{kept}");
    assert!(worktree.is_dir());
    let gone = repo.corral_json(&["gc", "--older-than", "0s", "--json"]);
    let removed = gone["removed"].as_array().unwrap();
    assert_eq!(removed.len(), 2, "the agent and the driver: {gone}");
    assert!(!worktree.exists());
    let branches = repo.git(&["branch", "--list", "corral/*"]);
    assert!(branches.trim().is_empty(), "merged branches deleted: {branches}");
    // The run is still listed.
    assert_eq!(runs(&repo).len(), 1);
}

/// Kills, when dropped, every process whose environment has `HOME=home`
/// (the cron test's environment has no CORRAL_TEST_ID to find them by).
struct KillByHome(String);

impl Drop for KillByHome {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = processes_with_env(&format!("HOME={}", self.0));
            if left.is_empty() || Instant::now() > deadline {
                return;
            }
            for pid in left {
                kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn the_cron_example_runs_as_cron_runs_it() {
    let repo = TestRepo::new();
    let home = repo.path("home");
    std::fs::create_dir_all(&home).unwrap();
    let _cleanup = KillByHome(home.display().to_string());
    let examples = corral_e2e::source_root().join("examples/cron");
    let crontab = std::fs::read_to_string(examples.join("crontab")).unwrap();
    assert!(crontab.lines().any(|l| l.contains("corral-nightly.sh") && !l.starts_with('#')), "{crontab}");
    let file = run_file(
        &repo,
        "cron.toml",
        &format!(
            "name = \"cron\"\n[[agent]]\nname = \"first\"\ntask = \"on {{{{date}}}}\"\n{}\n[[agent]]\nname = \"second\"\nafter = [\"first\"]\n{}\n",
            fake("print done"),
            fake("env HOME")
        ),
    );
    let bin_dir = corral_bin().parent().unwrap().to_path_buf();
    let path = format!("{}:/usr/local/bin:/usr/bin:/bin", bin_dir.display());
    // What cron gives a job: PATH and HOME, no terminal, no stdin, and the
    // working folder is HOME (the script sets its own).
    let out = Command::new("/bin/sh")
        .arg(examples.join("corral-nightly.sh"))
        .arg(&repo.repo)
        .arg(&file)
        .env_clear()
        .env("PATH", &path)
        .env("HOME", &home)
        .current_dir(&home)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!all.contains('\u{1b}'), "no escape codes in a cron mail: {all:?}");
    assert!(all.contains("run cron-") && all.contains("total: 2 agents, 2 succeeded"), "{all}");
    let listed = runs_in(&repo, &home, &path);
    assert_eq!(listed[0]["state"], "succeeded");
    let driver = listed[0]["address"].as_str().unwrap().to_owned();
    let logs = Command::new(corral_bin())
        .args(["logs", &format!("{driver}/first")])
        .env_clear()
        .env("PATH", &path)
        .env("HOME", &home)
        .current_dir(&repo.repo)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert!(logs.contains("done"), "{logs}");
}

fn runs_in(repo: &TestRepo, home: &Path, path: &str) -> Vec<Value> {
    let out = Command::new(corral_bin())
        .args(["runs", "--json"])
        .env_clear()
        .env("PATH", path)
        .env("HOME", home)
        .current_dir(&repo.repo)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().cloned().unwrap()
}

#[test]
fn the_driver_gets_grace_enough_to_stop_an_agent_with_a_long_one_and_report() {
    // The driver stops its agents one grace each (and the daemon allows
    // 30 s more): killed before that, it would leave no report.
    let repo = TestRepo::new();
    let file = run_file(
        &repo,
        "slow.toml",
        &format!("name = \"slow\"\n[[agent]]\nname = \"patient\"\ngrace = \"90s\"\n{}\n", fake("hang")),
    );
    let mut client = start_run(&repo, &file, &[]);
    let agent = wait_for_agent(&repo, "patient", "running");
    let driver = repo.agent(agent["parent"].as_str().unwrap());
    assert!(driver["grace_secs"].as_f64().unwrap() >= 90.0 + 30.0, "{driver}");
    repo.corral_ok(&["stop", driver["address"].as_str().unwrap(), "--grace", "0"]);
    let _ = client.wait();
}

#[test]
fn a_run_whose_driver_is_killed_exits_interrupted_and_its_running_agents_have_not_failed() {
    // Regression: the client exited 124 (a wait that timed out) and
    // counted the agent still at work as failed.
    let repo = TestRepo::new();
    let hold = repo.path("hold");
    let file = run_file(
        &repo,
        "cut.toml",
        &format!("name = \"cut\"\n[[agent]]\nname = \"a\"\n{}\n", fake(&format!("wait-file {}", hold.display()))),
    );
    let client = start_run(&repo, &file, &["--json"]);
    let agent = wait_for_agent(&repo, "a", "running");
    let driver = agent["parent"].as_str().unwrap().to_owned();
    let driver_pid = repo.agent(&driver)["pid"].as_u64().unwrap() as u32;
    kill(driver_pid, nix::sys::signal::Signal::SIGKILL);
    let out = corral_e2e::real_cli::wait_deadline(client, PATIENCE, "the run's client");
    assert_eq!(out.status.code(), Some(22), "{}", describe(&out));
    let report = report(&out);
    assert_eq!(report["state"], "interrupted");
    assert_eq!(row(&report, "a")["code"], 22, "{report}");
    assert_eq!(report["totals"]["failed"], 0, "{report}");
    std::fs::write(&hold, "").unwrap();
    repo.corral_ok(&["wait", agent["address"].as_str().unwrap()]);
}
