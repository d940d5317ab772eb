//! The daemon in-process, with a test double of the monitors: lifecycle
//! rules tested in milliseconds, with no agent process (in the manner of
//! pueue's and watchexec's tests). A real git repository in a temporary
//! folder, the real journal and store, the real request handling; only
//! the [`Runtime`] is fake: each start hands the test a [`FakeAgent`], the
//! other end of the link, which the test drives as the monitor would
//! (output, exit) and reads what the daemon tells it (stop, input).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::start::{Boxed, Launched, Link, Runtime};
use super::{requests, Daemon};
use crate::model::address::Address;
use crate::model::error::{ErrorKind, Result};
use crate::model::lifecycle::{AgentRecord, AgentState};
use crate::sys::paths::{AgentDir, StateDir};
use crate::wire::monitor::ProxyKeys;
use crate::wire::monitor::{ExitRecord, MonitorCommand, MonitorMessage};
use crate::wire::protocol::{Request, Response, SpawnRequest};

/// How long a test waits for what should happen at once.
const SOON: Duration = Duration::from_secs(10);

/// The runtime's double: every start gives the test a [`FakeAgent`].
struct FakeMonitors {
    started: mpsc::UnboundedSender<FakeAgent>,
    exits: Arc<Mutex<HashMap<PathBuf, ExitRecord>>>,
    next_pid: Mutex<u32>,
    /// While set, a start never comes back: the daemon is caught in the
    /// middle of starting an agent (as when it is killed there).
    hold_starts: Arc<std::sync::atomic::AtomicBool>,
}

impl Runtime for FakeMonitors {
    fn start<'a>(
        &'a self,
        dir: &'a AgentDir,
        record: &'a AgentRecord,
        keys: Option<ProxyKeys>,
    ) -> Boxed<'a, Result<Launched>> {
        // No monitor runs here, so no proxy takes the keys.
        drop(keys);
        Box::pin(async move {
            if self.hold_starts.load(std::sync::atomic::Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            let (daemon_side, agent_side) = UnixStream::pair().expect("a socket pair");
            let pid = {
                let mut next = self.next_pid.lock().unwrap();
                *next += 1;
                *next
            };
            let (read, write) = agent_side.into_split();
            let agent = FakeAgent {
                address: record.address.to_string(),
                pid,
                dir: dir.clone(),
                commands: BufReader::new(read).lines(),
                out: write,
                exits: self.exits.clone(),
            };
            self.started.send(agent).expect("the test listens");
            Ok(Launched::Running { stream: daemon_side, pid, monitor_pid: pid + 100_000 })
        })
    }

    fn connect<'a>(&'a self, _dir: &'a AgentDir) -> Boxed<'a, Option<(Link, u32, u32)>> {
        Box::pin(async { None })
    }

    fn exit_record(&self, dir: &AgentDir) -> Option<ExitRecord> {
        self.exits.lock().unwrap().get(&dir.dir).cloned()
    }
}

/// The monitor's end of one agent's link.
struct FakeAgent {
    address: String,
    pid: u32,
    dir: AgentDir,
    commands: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    out: tokio::net::unix::OwnedWriteHalf,
    exits: Arc<Mutex<HashMap<PathBuf, ExitRecord>>>,
}

impl FakeAgent {
    async fn send(&mut self, message: &MonitorMessage) {
        let mut line = serde_json::to_vec(message).unwrap();
        line.push(b'\n');
        self.out.write_all(&line).await.expect("the daemon listens");
    }

    /// The next command the daemon sends this agent's monitor.
    async fn command(&mut self) -> MonitorCommand {
        let line = tokio::time::timeout(SOON, self.commands.next_line()).await.expect("a command in time");
        serde_json::from_str(&line.unwrap().expect("a line")).unwrap()
    }

    /// Prints a line, as the monitor reports it: appended to the log, then
    /// an `output` notice.
    async fn print(&mut self, text: &str) {
        use std::io::Write;
        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.log()).unwrap();
        writeln!(log, "{text}").unwrap();
        let log_len = log.metadata().unwrap().len();
        self.send(&MonitorMessage::Output { log_len }).await;
    }

    /// Ends the agent, as the monitor does: the exit record, then `exit`.
    async fn exit(mut self, code: Option<i32>, signal: Option<i32>, stop_requested: bool) {
        let record = ExitRecord {
            pid: self.pid,
            code,
            signal,
            stop_requested,
            error: None,
            ended_at: chrono::Utc::now(),
            log_bytes_lost: 0,
            limit: None,
        };
        self.exits.lock().unwrap().insert(self.dir.dir.clone(), record.clone());
        self.send(&MonitorMessage::Exit { record }).await;
    }
}

/// A daemon in this process on a fresh repository, with fake monitors.
struct TestDaemon {
    daemon: Arc<Daemon>,
    started: mpsc::UnboundedReceiver<FakeAgent>,
    hold_starts: Arc<std::sync::atomic::AtomicBool>,
    _root: tempfile::TempDir,
}

impl TestDaemon {
    async fn new() -> TestDaemon {
        let root = tempfile::tempdir().unwrap();
        let repo = root.path().join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        let git = |args: &[&str]| {
            let out = std::process::Command::new("git")
                .args(["-c", "user.name=t", "-c", "user.email=t@t.invalid"])
                .args(args)
                .current_dir(&repo)
                .output()
                .unwrap();
            assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        git(&["init", "-q", "-b", "main"]);
        std::fs::write(repo.join("README.md"), "test\n").unwrap();
        git(&["add", "-A"]);
        git(&["commit", "-q", "-m", "first"]);
        let mut state = StateDir::new(repo.clone(), repo.join(".git/corral"));
        state.worktrees = root.path().join("worktrees");
        state.create().unwrap();
        let (daemon, started, hold_starts) = TestDaemon::daemon_on(state).await;
        TestDaemon { daemon, started, hold_starts, _root: root }
    }

    /// A daemon (with new fake monitors) on the repository of `state`.
    async fn daemon_on(
        state: StateDir,
    ) -> (Arc<Daemon>, mpsc::UnboundedReceiver<FakeAgent>, Arc<std::sync::atomic::AtomicBool>) {
        let (started_tx, started) = mpsc::unbounded_channel();
        let hold_starts = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let runtime = FakeMonitors {
            started: started_tx,
            exits: Arc::default(),
            next_pid: Mutex::new(1000),
            hold_starts: hold_starts.clone(),
        };
        let daemon = Daemon::start(state, Arc::new(runtime), false).await.unwrap();
        (daemon, started, hold_starts)
    }

    /// A new daemon on the same repository, as after the old one was
    /// killed (the old one's tasks may linger, idle, in this process).
    async fn restart(&mut self) {
        let (daemon, started, hold_starts) = TestDaemon::daemon_on(self.daemon.state.clone()).await;
        (self.daemon, self.started, self.hold_starts) = (daemon, started, hold_starts);
    }

    async fn request(&self, request: Request) -> Result<Response> {
        requests::handle(&self.daemon, request).await
    }

    /// Spawns a plain agent named `name` with `grace` and waits for its
    /// fake monitor.
    async fn spawn(&mut self, name: &str, grace_secs: Option<f64>) -> FakeAgent {
        match self.request(Request::Spawn(Box::new(spawn_request(name, grace_secs)))).await {
            Ok(Response::Spawned(_)) => {}
            other => panic!("spawn of {name}: {other:?}"),
        }
        let agent = tokio::time::timeout(SOON, self.started.recv()).await.expect("started in time").unwrap();
        assert_eq!(agent.address, format!("/root/{name}"));
        agent
    }

    fn record(&self, address: &str) -> AgentRecord {
        self.daemon.record(&Address::parse(address).unwrap()).unwrap_or_else(|| panic!("no agent at {address}"))
    }

    /// Waits until the agent at `address` satisfies `condition`.
    async fn until(&self, address: &str, what: &str, condition: impl Fn(&AgentRecord) -> bool) -> AgentRecord {
        let mut seq = self.daemon.store.subscribe();
        let deadline = tokio::time::Instant::now() + SOON;
        loop {
            let record = self.record(address);
            if condition(&record) {
                return record;
            }
            if tokio::time::timeout_at(deadline, seq.changed()).await.is_err() {
                panic!("timed out waiting for {address} to be {what}: {record:?}");
            }
        }
    }
}

/// A plain agent's spawn, as `corral spawn NAME -- true` sends it.
fn spawn_request(name: &str, grace_secs: Option<f64>) -> SpawnRequest {
    SpawnRequest {
        name: name.into(),
        parent: None,
        task: "a test task".into(),
        role: None,
        settings: Default::default(),
        fork_session: false,
        command: vec!["true".into()],
        grace_secs,
        base: None,
        env: [("PATH".to_string(), std::env::var("PATH").unwrap_or_default())].into(),
    }
}

fn stop(address: &str, grace_secs: Option<f64>) -> Request {
    Request::Stop { address: address.into(), grace_secs }
}

#[tokio::test]
async fn a_stop_without_grace_gives_each_agent_its_own() {
    let mut test = TestDaemon::new().await;
    let mut own = test.spawn("own", Some(2.0)).await;
    let mut default = test.spawn("default", None).await;
    let daemon = test.daemon.clone();
    let stopping = tokio::spawn(async move { requests::handle(&daemon, stop("/root", None)).await });
    for (agent, grace) in [(&mut own, 2.0), (&mut default, 10.0)] {
        match agent.command().await {
            MonitorCommand::Stop { grace_secs, probe_failed: false } => {
                assert_eq!(grace_secs, grace, "{}", agent.address)
            }
            other => panic!("{}: {other:?}", agent.address),
        }
    }
    own.exit(None, Some(15), true).await;
    default.exit(None, Some(15), true).await;
    match stopping.await.unwrap() {
        Ok(Response::Stopped { agents }) => assert_eq!(agents.len(), 2),
        other => panic!("{other:?}"),
    }
    assert_eq!(test.record("/root/own").state, AgentState::Stopped);
    assert_eq!(test.record("/root/default").state, AgentState::Stopped);
}

#[tokio::test]
async fn output_becomes_events_and_an_exit_settles_the_agent() {
    let mut test = TestDaemon::new().await;
    let mut agent = test.spawn("worker", None).await;
    assert_eq!(test.record("/root/worker").state, AgentState::Running);
    agent.print("hello from the fake").await;
    test.until("/root/worker", "caught up", |r| r.log_offset > 0).await;
    agent.exit(Some(3), None, false).await;
    let ended = test.until("/root/worker", "ended", |r| r.state.is_terminal()).await;
    assert_eq!(ended.state, AgentState::Failed);
    assert_eq!(ended.exit_code, Some(3));
    assert_eq!(ended.wait_code(), 20);
}

#[tokio::test]
async fn a_message_to_a_plain_agent_is_typed_into_its_terminal_once() {
    let mut test = TestDaemon::new().await;
    let mut agent = test.spawn("listener", None).await;
    let sent =
        Request::Send { to: "/root/listener".into(), from: "/root".into(), text: "hello there".into(), key: None };
    let Ok(Response::Sent { message_id }) = test.request(sent).await else { panic!("not sent") };
    match agent.command().await {
        MonitorCommand::Input { data, id } => {
            assert_eq!(data, "hello there\r");
            assert_eq!(id.as_deref(), Some(message_id.as_str()));
        }
        other => panic!("{other:?}"),
    }
    let record = test.until("/root/listener", "delivered", |r| r.pending_messages.is_empty()).await;
    assert_eq!(record.messages_sent, 1);
    agent.exit(Some(0), None, false).await;
    test.until("/root/listener", "ended", |r| r.state.is_terminal()).await;
    let late = Request::Send { to: "/root/listener".into(), from: "/root".into(), text: "too late".into(), key: None };
    assert_eq!(test.request(late).await.unwrap_err().kind, ErrorKind::Refused);
}

#[tokio::test]
async fn a_message_sent_again_with_its_key_is_queued_once() {
    // Regression: a `corral send` that lost the daemon after its message
    // was journaled exited 9, and a script retrying it sent it twice.
    let mut test = TestDaemon::new().await;
    let mut agent = test.spawn("listener", None).await;
    let keyed = |text: &str| Request::Send {
        to: "/root/listener".into(),
        from: "/root".into(),
        text: text.into(),
        key: Some("k-1".into()),
    };
    let Ok(Response::Sent { message_id: first }) = test.request(keyed("once")).await else { panic!("not sent") };
    let Ok(Response::Sent { message_id: again }) = test.request(keyed("once")).await else { panic!("not sent") };
    assert_eq!(first, again);
    let MonitorCommand::Input { data, .. } = agent.command().await else { panic!("no input") };
    assert_eq!(data, "once\r");
    let record = test.until("/root/listener", "delivered", |r| r.pending_messages.is_empty()).await;
    assert_eq!(record.messages_sent, 1);
    // Another key is another message.
    let other = Request::Send {
        to: "/root/listener".into(),
        from: "/root".into(),
        text: "twice".into(),
        key: Some("k-2".into()),
    };
    let Ok(Response::Sent { message_id: second }) = test.request(other).await else { panic!("not sent") };
    assert_ne!(second, first);
    agent.exit(Some(0), None, false).await;
}

#[tokio::test]
async fn max_threads_queues_and_a_freed_slot_starts_the_next() {
    let mut test = TestDaemon::new().await;
    let toml = "[supervisor]\nmax_threads = 1\n";
    std::fs::write(test.daemon.state.repo_root.join("corral.toml"), toml).unwrap();
    let first = test.spawn("first", None).await;
    // The second waits for a slot: no monitor starts for it yet.
    let request = spawn_request("second", None);
    let Ok(Response::Spawned(spawned)) = test.request(Request::Spawn(Box::new(request))).await else {
        panic!("spawn refused")
    };
    assert_eq!(spawned.pid, 0, "pending");
    assert_eq!(test.record("/root/second").state, AgentState::Pending);
    assert!(test.started.try_recv().is_err());
    first.exit(Some(0), None, false).await;
    let second = tokio::time::timeout(SOON, test.started.recv()).await.expect("the next starts").unwrap();
    assert_eq!(second.address, "/root/second");
    test.until("/root/second", "running", |r| r.state == AgentState::Running).await;
}

#[tokio::test]
async fn durations_the_daemon_cannot_represent_are_refused_not_panicked_on() {
    let mut test = TestDaemon::new().await;
    let _agent = test.spawn("victim", None).await;
    for grace in [1e20, -1.0, f64::NAN, f64::INFINITY] {
        let err = test.request(stop("/root/victim", Some(grace))).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadBudget, "{grace}: {err}");
    }
    let wait = Request::Wait { addresses: vec!["/root/victim".into()], timeout_secs: Some(1e300) };
    assert_eq!(test.request(wait).await.unwrap_err().kind, ErrorKind::BadBudget);
    assert_eq!(test.record("/root/victim").state, AgentState::Running);
}

#[tokio::test]
async fn an_assigned_task_cut_short_by_a_daemon_crash_keeps_the_agents_work() {
    let mut test = TestDaemon::new().await;
    let agent = test.spawn("worker", None).await;
    agent.exit(Some(0), None, false).await;
    let done = test.until("/root/worker", "succeeded", |r| r.state == AgentState::Succeeded).await;
    // Its first task's work, committed on its branch.
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t.invalid"])
            .args(args)
            .current_dir(&done.worktree)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    std::fs::write(done.worktree.join("work.txt"), "the first task's work\n").unwrap();
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "first task"]);

    // The next task is journaled, and the daemon dies before it starts.
    test.hold_starts.store(true, std::sync::atomic::Ordering::SeqCst);
    let daemon = test.daemon.clone();
    let assign = Request::Assign { address: "/root/worker".into(), task: "the second task".into(), queue: false };
    let _stuck = tokio::spawn(async move { requests::handle(&daemon, assign).await });
    test.until("/root/worker", "assigned", |r| r.state == AgentState::Starting && r.task == "the second task").await;
    test.restart().await;

    let after = test.until("/root/worker", "settled", |r| r.state.is_terminal()).await;
    assert_eq!(after.state, AgentState::Failed, "{after:?}");
    assert!(after.reason.as_deref().unwrap_or("").contains("did not start"), "{after:?}");
    assert!(after.worktree.join("work.txt").exists(), "the worktree was discarded");
    assert!(git(&["log", "--format=%s", &after.branch]).contains("first task"), "the branch lost its commit");
}

/// Spawns a plain agent `name` with the budget `budget`, for its fake
/// monitor to ask admissions of.
async fn spawn_with_budget(daemon: &mut TestDaemon, name: &str, budget: crate::model::budget::Budget) -> FakeAgent {
    let mut request = spawn_request(name, Some(0.0));
    request.settings.budget = Some(budget);
    match daemon.request(Request::Spawn(Box::new(request))).await {
        Ok(Response::Spawned(_)) => {}
        other => panic!("spawn of {name}: {other:?}"),
    }
    tokio::time::timeout(SOON, daemon.started.recv()).await.expect("started in time").unwrap()
}

fn ask(call: u64, model: &str) -> crate::proxy::Ask {
    crate::proxy::Ask {
        call,
        provider: crate::proxy::Provider::Anthropic,
        model: Some(model.into()),
        estimate_input: 0,
        input_floor: 0,
        asked_output: None,
    }
}

/// The daemon's answer to the admission of `ask`, asked by `agent`.
async fn admission(agent: &mut FakeAgent, ask: crate::proxy::Ask) -> crate::proxy::Decision {
    let call = ask.call;
    agent.send(&MonitorMessage::Admit { ask }).await;
    match agent.command().await {
        MonitorCommand::Admission { call: answered, decision } if answered == call => decision,
        other => panic!("expected the admission of call {call}, got {other:?}"),
    }
}

#[tokio::test]
async fn calls_in_flight_hold_an_output_budget_as_they_hold_a_token_budget() {
    use crate::proxy::Decision;
    let mut daemon = TestDaemon::new().await;
    let budget = crate::model::budget::Budget { output_tokens: Some(1000), ..Default::default() };
    let mut agent = spawn_with_budget(&mut daemon, "writer", budget).await;
    assert_eq!(admission(&mut agent, ask(1, "m")).await, Decision::Allow { max_output: Some(1000) });
    // The first call may still write all 1000: the second waits for it.
    agent.send(&MonitorMessage::Admit { ask: ask(2, "m") }).await;
    let usage = corral_harness::TokenUsage { input: 50, output: 300, cache_read: 0, cache_write: 0 };
    let record = crate::proxy::CallRecord {
        call: 1,
        provider: crate::proxy::Provider::Anthropic,
        model: Some("m".into()),
        status: 200,
        usage,
        flag: None,
        refused: None,
        estimate_input: 0,
        output_cap: Some(1000),
        started_at: chrono::Utc::now(),
        index: Some(0),
        ttfb_ms: 1.0,
        duration_ms: 2.0,
    };
    agent.send(&MonitorMessage::ModelCall { record }).await;
    match agent.command().await {
        MonitorCommand::Admission { call: 2, decision } => {
            assert_eq!(decision, Decision::Allow { max_output: Some(700) }, "after the first call wrote 300")
        }
        other => panic!("expected the admission of call 2, got {other:?}"),
    }
}

#[tokio::test]
async fn a_cost_budget_refuses_a_call_whose_model_has_no_price() {
    use crate::proxy::Decision;
    let mut daemon = TestDaemon::new().await;
    let config = "[prices.\"m-priced\"]\ninput = 3.0\noutput = 15.0\n";
    std::fs::write(daemon.daemon.state.repo_root.join("corral.toml"), config).unwrap();
    let budget = crate::model::budget::Budget { cost: Some(1.0), ..Default::default() };
    let mut agent = spawn_with_budget(&mut daemon, "spender", budget).await;
    match admission(&mut agent, ask(1, "m-free")).await {
        Decision::Refuse { message } => {
            assert!(message.contains("\"m-free\"") && message.contains("[prices"), "{message}");
            assert!(message.contains("cost budget of /root/spender"), "{message}");
        }
        other => panic!("a call no price covers went out under a cost budget: {other:?}"),
    }
    // Priced, by its own name or a dated one, it goes.
    assert!(matches!(admission(&mut agent, ask(2, "m-priced")).await, Decision::Allow { .. }));
    assert!(matches!(admission(&mut agent, ask(3, "m-priced-20260101")).await, Decision::Allow { .. }));
    // With no budget of cost over it, an agent's calls need no price.
    let mut free = daemon.spawn("free", Some(0.0)).await;
    assert!(matches!(admission(&mut free, ask(1, "m-free")).await, Decision::Allow { .. }));
}

#[tokio::test]
async fn raises_past_the_largest_number_keep_the_budget_finite_and_the_journal_whole() {
    let mut daemon = TestDaemon::new().await;
    let budget = crate::model::budget::Budget { cost: Some(1.0), ..Default::default() };
    let _agent = spawn_with_budget(&mut daemon, "rich", budget).await;
    for _ in 0..2 {
        let raise = Request::RaiseBudget {
            address: "/root/rich".into(),
            add_tokens: None,
            add_cost: Some(1e308),
            by: "/root".into(),
        };
        daemon.request(raise).await.expect("the raise is taken");
    }
    assert_eq!(daemon.record("/root/rich").budget.cost, Some(f64::MAX));
    // Every event reads back: a restart folds them all, the raises too.
    daemon.restart().await;
    assert_eq!(daemon.record("/root/rich").budget.cost, Some(f64::MAX));
    assert!(daemon
        .daemon
        .state
        .dir
        .read_dir()
        .unwrap()
        .flatten()
        .all(|e| !e.file_name().to_string_lossy().contains("damaged")));
}
